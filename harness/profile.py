"""Device profiles: which device registers programs may touch, and what each one is.

A profile is data (``harness/profiles/<name>.toml``, package data), one per device kind:
the simulator's (``sim``), mtty's (``mtty``), and ``pci`` for PCI hardware without one of
its own (config-space reads only). For each region (the VFIO region index):

* ``widths`` and ``max_offset``: the accesses ``rdreg``/``wrreg`` may make (others are
  skipped, never sent to the device);
* ``read``/``write`` of the whole region, or per register: ``observe`` (a read without side
  effects: compared across a migration), ``data-out`` (hands out data that must have entered
  the device through the program: a receive FIFO, a data window), ``side-effect`` (a read
  that changes the device), ``probe`` (read for what it leaks, not compared), ``data-in``
  (bytes written enter the device), ``control``, ``none`` (not written);
* a register's ``guard`` (``{offset, mask, equals}``: its role holds only while the
  register at ``offset`` masked with ``mask`` equals ``equals``, e.g. a UART's DLAB) and
  ``idle`` (what a data-out register may return with nothing queued);
* ``same_as``: a region with the registers of another (a second UART port).

``[[init]]`` register writes run before every program on a real device, to start it from a
known state the way the simulator starts from power-on. ``leak_check_stream = false`` for a
device whose migration stream is an opaque blob (compressed, encrypted, checksummed): the
kernel-address search would find shapes in random bytes.

A missing or malformed profile is a :class:`harness.base.TargetError` naming the file and
the problem (a usage error).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .base import TargetError

READ_ROLES = ("observe", "data-out", "side-effect", "probe", "none")
WRITE_ROLES = ("data-in", "control", "none")
WIDTHS = (1, 2, 4, 8)
MAX_OFFSET = 1023  # what rdreg/wrreg can name (fuzz.program's 10-bit offset field)


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    read: str = "observe"
    write: str = "control"
    guard: tuple | None = None  # (offset, mask, equals)
    idle: tuple = ()


@dataclass(frozen=True)
class Region:
    index: int
    name: str
    widths: tuple
    max_offset: int
    read: str = "observe"
    write: str = "control"
    registers: dict = field(default_factory=dict)  # offset -> Register


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    regions: dict  # index -> Region
    init: tuple = ()  # (region, offset, value) writes before every program on a real device
    leak_check_stream: bool = True  # look for kernel addresses in its data_fd streams (not for opaque blobs)

    def access(self, region: int, off: int, size: int) -> Region | None:
        """The region if the profile allows an access of ``size`` bytes at ``off``, else None."""
        r = self.regions.get(region)
        if r is None or size not in r.widths or off < 0 or off + size - 1 > r.max_offset:
            return None
        return r

    def register(self, region: int, off: int) -> Register | None:
        r = self.regions.get(region)
        return r.registers.get(off) if r is not None else None

    def read_role(self, region: int, off: int) -> str:
        r = self.regions.get(region)
        if r is None:
            return "none"
        reg = r.registers.get(off)
        return reg.read if reg is not None else r.read

    def write_role(self, region: int, off: int) -> str:
        r = self.regions.get(region)
        if r is None:
            return "none"
        reg = r.registers.get(off)
        return reg.write if reg is not None else r.write

    def only(self, present) -> Profile:
        """The profile restricted to the regions a device really has (``present``: region indices)."""
        regions = {i: r for i, r in self.regions.items() if i in present}
        return Profile(self.name, self.description, regions, tuple(w for w in self.init if w[0] in regions),
                       self.leak_check_stream)

    def observation_registers(self) -> tuple:
        """(region, offset, name) of every side-effect-free register, in a fixed order."""
        return tuple((r.index, reg.offset, reg.name) for r in sorted(self.regions.values(), key=lambda r: r.index)
                     for reg in sorted(r.registers.values(), key=lambda g: g.offset) if reg.read == "observe")


def _check(cond: bool, where: str, problem: str) -> None:
    if not cond:
        raise TargetError(f"profile {where}: {problem}")


def _register(data: dict, where: str) -> Register:
    _check(isinstance(data.get("name"), str), where, "a register needs a name")
    _check(isinstance(data.get("offset"), int) and 0 <= data["offset"] <= MAX_OFFSET, where,
           f"register {data.get('name')!r} needs an offset 0..{MAX_OFFSET}")
    read, write = data.get("read", "observe"), data.get("write", "control")
    _check(read in READ_ROLES, where, f"register {data['name']}: read must be one of {', '.join(READ_ROLES)}")
    _check(write in WRITE_ROLES, where, f"register {data['name']}: write must be one of {', '.join(WRITE_ROLES)}")
    guard = data.get("guard")
    if guard is not None:
        _check(isinstance(guard, dict) and {"offset", "mask", "equals"} <= set(guard), where,
               f"register {data['name']}: guard needs offset, mask and equals")
        guard = (guard["offset"], guard["mask"], guard["equals"])
    idle = data.get("idle", [])
    _check(isinstance(idle, list) and all(isinstance(v, int) and 0 <= v < 256 for v in idle), where,
           f"register {data['name']}: idle is a list of byte values")
    unknown = set(data) - {"name", "offset", "read", "write", "guard", "idle"}
    _check(not unknown, where, f"register {data['name']}: unknown key(s) {', '.join(sorted(unknown))}")
    return Register(data["name"], data["offset"], read, write, guard, tuple(idle))


def parse_profile(text: str, where: str) -> Profile:
    """A profile from TOML text (``where`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TargetError(f"profile {where}: not valid TOML ({e})") from None
    _check(isinstance(data.get("name"), str), where, "needs a name")
    regions: dict = {}
    for rd in data.get("region", []):
        _check(isinstance(rd.get("index"), int) and 0 <= rd["index"] < 16, where, "a region needs an index 0..15")
        index = rd["index"]
        _check(index not in regions, where, f"region {index} is declared twice")
        widths = tuple(rd.get("widths", [1]))
        _check(widths and all(w in WIDTHS for w in widths), where, f"region {index}: widths are 1, 2, 4 or 8")
        max_offset = rd.get("max_offset", 0)
        _check(isinstance(max_offset, int) and 0 <= max_offset <= MAX_OFFSET, where,
               f"region {index}: max_offset must be 0..{MAX_OFFSET}")
        read, write = rd.get("read", "observe"), rd.get("write", "control")
        _check(read in READ_ROLES and write in WRITE_ROLES, where, f"region {index}: unknown read/write role")
        if "same_as" in rd:
            _check(rd["same_as"] in regions, where, f"region {index}: same_as names no earlier region")
            registers = dict(regions[rd["same_as"]].registers)
        else:
            registers = {}
            for reg in rd.get("register", []):
                r = _register(reg, where)
                _check(r.offset not in registers, where, f"region {index}: two registers at offset {r.offset}")
                registers[r.offset] = r
        unknown = set(rd) - {"index", "name", "widths", "max_offset", "read", "write", "register", "same_as"}
        _check(not unknown, where, f"region {index}: unknown key(s) {', '.join(sorted(unknown))}")
        regions[index] = Region(index, str(rd.get("name", f"region {index}")), widths, max_offset, read, write,
                                registers)
    init = []
    for w in data.get("init", []):
        _check({"region", "offset", "value"} <= set(w) and w["region"] in regions, where,
               "an [[init]] write needs region (a declared one), offset and value")
        init.append((w["region"], w["offset"], w["value"] & 0xFF))
    leak = data.get("leak_check_stream", True)
    _check(isinstance(leak, bool), where, "leak_check_stream is true or false")
    unknown = set(data) - {"name", "description", "region", "init", "leak_check_stream"}
    _check(not unknown, where, f"unknown key(s) {', '.join(sorted(unknown))}")
    return Profile(data["name"], str(data.get("description", "")), regions, tuple(init), leak)


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name (``sim``, ``mtty``, ``pci``) or a profile file by path."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        try:
            text = path.read_text()
        except OSError as e:
            raise TargetError(f"profile {path}: {e.strerror or e}") from None
        return parse_profile(text, str(path))
    entry = resources.files("harness.profiles") / f"{name_or_path}.toml"
    if not entry.is_file():
        known = sorted(e.name[:-5] for e in resources.files("harness.profiles").iterdir() if e.name.endswith(".toml"))
        raise TargetError(f"no device profile {name_or_path!r} (shipped: {', '.join(known)}; or give a .toml path)")
    return parse_profile(entry.read_text(), f"{name_or_path} ({entry.name})")
