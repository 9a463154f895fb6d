"""Target specifications: what ``--target`` names, and opening it.

Syntax: ``KIND[:key=value,...]``.

* ``sim`` — the in-process simulator. Keys: ``proto=v1|v2`` (default v2),
  ``flags=0x1|0x3|0x5|0x7`` (v2 only, default 0x7), ``bug=NAME`` (a zoo
  variant, see ``migfuzz targets``), ``seed=N`` (device contents), ``digest=0`` (judge the
  simulator only by what a real device shows: streams and registers).
* ``kernel`` — a real VFIO device. Keys: ``dev=NAME`` (mdev UUID or PCI
  address, required), ``dev2=NAME`` (a second device, the destination),
  ``group=N`` / ``group2=N`` (IOMMU group, found from sysfs if omitted),
  ``cdev=/dev/vfio/devices/vfioN`` (iommufd instead of the group API), ``profile=NAME|PATH``
  (the device profile: which registers programs may touch; default mtty for mtty devices,
  else pci).
  Fuzzing a kernel device also needs ``--i-know-this-resets-the-device``.
* ``mtty`` — inside the rig guest: the mtty instances the rig created.

Errors: ``TargetError`` (a bad spec: usage, exit 2) and ``TargetUnavailable`` (well
specified but cannot be opened here: exit 3), both from ``harness.base``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from harness.base import TargetError, TargetUnavailable
from harness.kernel.target import open_kernel_target
from harness.sim import BUGS, SimTarget

__all__ = ["TargetError", "TargetSpec", "TargetUnavailable", "default_corpus", "open_target", "parse_target",
           "require_opt_in"]


class TargetSpec(NamedTuple):
    kind: str
    proto: str
    flags: int
    bug: str | None
    options: dict

    def text(self) -> str:
        if self.kind == "sim":
            parts = [f"proto={self.proto}"]
            if self.proto == "v2":
                parts.append(f"flags={self.flags:#x}")
            if self.bug:
                parts.append(f"bug={self.bug}")
            if self.options.get("seed"):
                parts.append(f"seed={self.options['seed']}")
            if self.options.get("digest") == 0:
                parts.append("digest=0")
            return "sim:" + ",".join(parts)
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return self.kind + (":" + opts if opts else "")


SIM_KEYS = {"proto", "flags", "bug", "seed", "digest"}
KERNEL_KEYS = {"dev", "dev2", "group", "group2", "cdev", "cdev2", "profile"}


def parse_target(text: str) -> TargetSpec:
    kind, _, rest = text.partition(":")
    options: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise TargetError(f"target option {item!r} is not key=value")
        options[key] = value
    if kind == "sim":
        unknown = set(options) - SIM_KEYS
        if unknown:
            raise TargetError(f"unknown sim option(s): {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(SIM_KEYS))})")
        proto = options.pop("proto", "v2")
        if proto not in ("v1", "v2"):
            raise TargetError(f"proto must be v1 or v2, not {proto!r}")
        flags_text = options.pop("flags", None)
        if proto == "v1" and flags_text is not None:
            raise TargetError("flags= is a v2 option (VFIO_MIGRATION_* flags); protocol v1 has none")
        try:
            flags = int(flags_text or "0x7", 0)
            seed = int(options.pop("seed", "0"), 0)
        except ValueError as e:
            raise TargetError(f"bad number in target: {e}") from None
        if proto == "v2" and flags not in (0x1, 0x3, 0x5, 0x7):
            raise TargetError(f"flags must be one of 0x1, 0x3, 0x5, 0x7 (STOP_COPY is mandatory), not {flags:#x}")
        if proto == "v1":
            flags = 0
        bug = options.pop("bug", None) or None  # checked by open_target (the zoo lives in the simulator)
        digest = options.pop("digest", "1")
        if digest not in ("0", "1"):
            raise TargetError(f"digest must be 0 or 1, not {digest!r}")
        extra = {"seed": seed} if seed else {}
        if digest == "0":
            extra["digest"] = 0
        return TargetSpec("sim", proto, flags, bug, extra)
    if kind in ("kernel", "mtty"):
        unknown = set(options) - KERNEL_KEYS
        if unknown:
            raise TargetError(f"unknown kernel option(s): {', '.join(sorted(unknown))}")
        if kind == "kernel" and "dev" not in options and "cdev" not in options:
            raise TargetError("kernel target needs dev=UUID|BDF (or cdev=PATH): "
                              "migfuzz only touches a device named explicitly")
        return TargetSpec(kind, "", 0, None, options)
    raise TargetError(f"unknown target kind {kind!r} (sim, kernel, mtty)")


def open_target(spec: TargetSpec | str):
    """An object with .proto, .flags, .devices, .fresh(), ... (see harness.sim.SimTarget)."""
    if isinstance(spec, str):
        spec = parse_target(spec)
    if spec.kind == "sim":
        bug = BUGS.get(spec.bug) if spec.bug else None
        if spec.bug and bug is None:
            raise TargetError(f"unknown bug variant {spec.bug!r}; `migfuzz targets` lists them")
        if bug is not None and bug.proto != spec.proto:
            raise TargetError(f"bug {spec.bug!r} is a {bug.proto} variant; add proto={bug.proto}")
        return SimTarget(spec.proto, spec.flags, spec.bug, spec.options.get("seed", 0),
                         digest=spec.options.get("digest", 1) != 0)
    return open_kernel_target(spec)


def default_corpus(proto: str) -> Path:
    """The corpus directory a campaign on a ``proto`` target uses unless told otherwise."""
    return Path("corpus") / proto


OPT_IN_FLAG = "--i-know-this-resets-the-device"


def require_opt_in(spec: TargetSpec, confirmed: bool, why: str = "") -> None:
    """Every command that touches a real device needs the user's explicit opt-in (it resets
    the device, again and again); raises TargetError (usage) without it."""
    if spec.kind != "sim" and not confirmed:
        raise TargetError(f"{spec.text()} is a real device{': ' + why if why else ''}, and it gets reset; "
                          f"add {OPT_IN_FLAG} to confirm")
