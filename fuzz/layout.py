"""Stream field inference: where a device's migration stream keeps its fields.

A device's stream is opaque to the protocol, but structured: a header (magic, version,
sizes), then records whose fields change as the device works. :func:`infer` captures the
stop-and-copy stream of one device several times, each after different stimulus (``activity``,
register writes that fill and drain a data-in register, control register values), and
compares the captures byte by byte:

* bytes equal in every capture are **constant** (headers, magic, tags, padding);
* bytes that differ are **fields**: one byte each, or a little-endian number of 2, 4 or 8
  bytes when its low byte changes, its top byte does not, and the values it takes lie closer
  together than its upper half's unit (a counter, not independent bytes or random data: mtty's
  port keeps head, tail and count in neighbouring bytes, and taken as one 8-byte number they
  spanned 2^32);
* a number equal in every capture that counts the bytes after it, before it, or to the
  next one of a chain of records (tag, length, body) is a **length**;
* the constant bytes before the first length or field (at most ``HEADER_SPAN``: magic, version,
  sizes) are **header** fields of one byte each: what a loader checks first;
* a field that always equals a CRC-32 or an additive sum of every byte before it is a
  **checksum**, which a field change can fix up (``mangle ... fix=KIND at=N``);
* the values the fields took, and the stream's size, are the **dictionary**.

The result (:class:`Layout`) is kept per target in the corpus directory as JSON
(:func:`layout_path`), shown by ``migfuzz layout``, and turned into field-aware mutations
by ``fuzz.mutator.FieldEdits``.
"""
from __future__ import annotations

import json
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from harness.runtime import FIX_KINDS, checksum

from .executor import Executor
from .model import STOP_COPY, V1_SAVING
from .program import OPCODES, SIZES, Op, Program

LAYOUT_VERSION = 2  # 2: numbers span less than their upper half's unit (kept layouts are inferred again)
CAPTURES = 8          # captures of the stream compared
MAX_AT = 255          # how far before the end a checksum a field change fixes up may sit (mangle's `at`)
MAX_DICTIONARY = 64   # values kept in the dictionary
CHAIN_LINKS = 3       # records a chain of lengths must have to count
MIN_BEFORE = 16       # a number that counts the bytes before it (an end record's) counts at least this many
HEADER_SPAN = 32      # the header ends here at the latest


class Field(NamedTuple):
    off: int
    width: int
    role: str          # "varying", "length" or "header"
    values: tuple      # the values seen, ascending


class Checksum(NamedTuple):
    fix: str           # a harness.runtime.FIX_KINDS name
    at: int            # its field starts this many bytes before the end; it covers every byte before it


class Layout(NamedTuple):
    target: str
    proto: str
    size: int          # the captures' length (the most common one)
    captures: int      # captures of that length compared
    constant: tuple    # (start, end) byte ranges equal in every capture
    fields: tuple      # Field
    checksums: tuple   # Checksum
    dictionary: tuple  # values seen in the captures

    def data(self) -> dict:
        return {"version": LAYOUT_VERSION, "target": self.target, "proto": self.proto, "size": self.size,
                "captures": self.captures, "constant": [list(r) for r in self.constant],
                "fields": [f._asdict() | {"values": list(f.values)} for f in self.fields],
                "checksums": [c._asdict() for c in self.checksums], "dictionary": list(self.dictionary)}

    @classmethod
    def from_data(cls, data: dict) -> Layout:
        if data.get("version") != LAYOUT_VERSION:
            raise ValueError(f"layout version {data.get('version')!r}, not {LAYOUT_VERSION}")
        fields = tuple(Field(int(f["off"]), int(f["width"]), str(f["role"]), tuple(int(v) for v in f["values"]))
                       for f in data["fields"])
        checks = tuple(Checksum(str(c["fix"]), int(c["at"])) for c in data["checksums"])
        if any(f.width not in SIZES for f in fields) or any(c.fix not in FIX_KINDS[1:] for c in checks):
            raise ValueError("a field width or checksum kind migfuzz does not know")
        return cls(str(data["target"]), str(data["proto"]), int(data["size"]), int(data["captures"]),
                   tuple((int(a), int(b)) for a, b in data["constant"]), fields, checks,
                   tuple(int(v) for v in data["dictionary"]))


# ----------------------------------------------------------------------------- captures


def _registers(profile, read: bool) -> list:
    """(register, rdreg/wrreg slot a) of every one-byte register of the profile a stimulus writes
    (data-in, control) or, with ``read``, pops (data-out)."""
    out = []
    for region in sorted(profile.regions.values(), key=lambda r: r.index):
        if 1 not in region.widths:
            continue
        for reg in sorted(region.registers.values(), key=lambda g: g.offset):
            role = reg.read if read else reg.write
            if role in (("data-out",) if read else ("data-in", "control")):
                out.append((reg, region.index << 12 | reg.offset))  # size index 0: one byte
    return out


def capture_programs(proto: str, profile, count: int = CAPTURES) -> list[Program]:
    """``count`` programs, each giving device 0 different stimulus and then saving its stream
    (stop-and-copy, read to the end): activity, control register values, a data-in register
    filled with i bytes and partly drained."""
    codes = OPCODES[proto]
    writes = _registers(profile, read=False)
    pops = _registers(profile, read=True)
    progs = []
    for i in range(count):
        ops = []
        if i % 2:
            ops.append(Op(codes["activity"], 0, 0, (i * 0x9E37) & 0xFFFF))
        for k, (reg, a) in enumerate(writes):
            if reg.write == "control" and (i + k) % 3 == 0:
                ops.append(Op(codes["wrreg"], 0, a, (i * 37 + k) & 0x3F))  # no mode bits (a UART's DLAB)
        for reg, a in writes:
            if reg.write == "data-in":
                ops += [Op(codes["wrreg"], 0, a, 0x41 + (i + j) % 26) for j in range(i % 6)]
        for _reg, a in pops:
            ops += [Op(codes["rdreg"], 0, a, 0)] * (i // 3)
        if proto == "v2":
            ops += [Op(codes["set"], 0, 0, STOP_COPY), Op(codes["drain"], 0, 0, 0)]
        else:
            ops += [Op(codes["set"], 0, 0, V1_SAVING), Op(codes["drain"], 0, 0, 0)]
        progs.append(Program(proto, tuple(ops)))
    return progs


def capture(target, count: int = CAPTURES, oracle=None) -> list[bytes]:
    """The complete streams device 0 of ``target`` sent for :func:`capture_programs` (a program
    that ends in a finding or an incomplete stream gives none). ``oracle``: the campaign's, judging
    the same devices; a device that keeps what programs put in starts the captures from what it
    holds and keeps their bytes after them (``Oracle.inherit``)."""
    executor = Executor(target)
    if oracle is not None:
        executor.oracle.inherit(oracle)
    out = []
    for prog in capture_programs(target.proto, target.profile, count):
        executor.run(prog)
        view = executor.views[0]
        if view.capture_done and not view.capture_tainted and view.capture:
            out.append(bytes(view.capture))
    if oracle is not None:
        oracle.inherit(executor.oracle)
    return out


# ----------------------------------------------------------------------------- inference


def _le(data: bytes, off: int, width: int) -> int:
    return int.from_bytes(data[off:off + width], "little")


def _ranges(flags: list) -> list:
    """(start, end) of every run of True in ``flags``."""
    out, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i))
            start = None
    return out


def _numbers(caps: list, varies: list) -> list:
    """Fields: a little-endian number of 2, 4 or 8 bytes where an aligned window's low byte varies and
    its top byte does not and its values span less than its upper half's unit; else one byte each."""
    n = len(caps[0])
    out, covered = [], [False] * n
    for width in (8, 4, 2):
        for off in range(0, n - width + 1, width):
            if not varies[off] or any(covered[off:off + width]):
                continue
            values = [_le(c, off, width) for c in caps]
            if not varies[off + width - 1] and max(values) - min(values) < 1 << (4 * width):
                out.append((off, width))
                covered[off:off + width] = [True] * width
    out += [(off, 1) for off in range(n) if varies[off] and not covered[off]]
    return sorted(out)


def _lengths(first: bytes, constant: list) -> list:
    """(off, width) of the constant u16/u32 numbers that count bytes: the stream's size or what lies
    after them or before them, or the body of a record in a chain of (tag, length, body) records."""
    n = len(first)
    found = set()
    for width in (2, 4):
        cands = {off: _le(first, off, width) for off in range(n - width + 1)
                 if all(constant[off:off + width]) and 0 < _le(first, off, width) <= n}
        for off, v in cands.items():
            if v in (n, n - off, n - off - width) or max(off - 8, MIN_BEFORE) <= v <= off:
                found.add((off, width))
        for tag in (1, 2, 4):
            for off in cands:
                chain, at = [], off
                while at in cands and len(chain) < n:
                    chain.append(at)
                    at = at + width + cands[at] + tag
                if len(chain) >= CHAIN_LINKS:
                    found.update((c, width) for c in chain)
    widest = {}
    for off, width in sorted(found):
        widest[off] = width  # a u32 whose top half is 0 is a u16 too: keep the u32
    return sorted(widest.items())


def _checksums(caps: list, varies: list) -> list:
    """Checksums of every byte before them, of a kind a field change can fix up, that vary."""
    n = len(caps[0])
    out = []
    for fix in FIX_KINDS[1:]:
        _, width, big = checksum(b"", fix)
        for pos in range(max(0, n - MAX_AT), n - width + 1):
            if not any(varies[pos:pos + width]):
                continue
            order = "big" if big else "little"
            if all(int.from_bytes(c[pos:pos + width], order) == _prefix(c, pos, fix) for c in caps):
                out.append(Checksum(fix, n - pos))
    return out


def _prefix(data: bytes, pos: int, fix: str) -> int:
    if fix.startswith("crc32"):
        return zlib.crc32(data[:pos])
    return checksum(data[:pos], fix)[0]


def infer(caps: list[bytes], target: str = "", proto: str = "v2") -> Layout:
    """The layout of the captures of the most common length (empty if fewer than two)."""
    if not caps:
        return Layout(target, proto, 0, 0, (), (), (), ())
    size = Counter(len(c) for c in caps).most_common(1)[0][0]
    caps = [c for c in caps if len(c) == size]
    if len(caps) < 2 or not size:
        return Layout(target, proto, size, len(caps), (), (), (), ())
    first = caps[0]
    varies = [len({c[i] for c in caps}) > 1 for i in range(size)]
    constant = [not v for v in varies]
    checks = _checksums(caps, varies)
    in_sum = {p for c in checks for p in range(size - c.at, size - c.at + checksum(b"", c.fix)[1])}
    fields = []
    for off, width in _numbers(caps, [v and i not in in_sum for i, v in enumerate(varies)]):
        fields.append(Field(off, width, "varying", tuple(sorted({_le(c, off, width) for c in caps}))))
    lengths = _lengths(first, constant)
    for off, width in lengths:
        fields.append(Field(off, width, "length", (_le(first, off, width),)))
    header = min([HEADER_SPAN, size] + [off for off, _ in lengths] + [f.off for f in fields])
    fields += [Field(off, 1, "header", (first[off],)) for off in range(header)]
    values = Counter(v for f in fields if f.role != "header" for v in f.values)
    values.update((size, size - 1, size + 1))
    dictionary = tuple(sorted(v for v, _ in values.most_common(MAX_DICTIONARY)))
    return Layout(target, proto, size, len(caps), tuple(_ranges(constant)), tuple(sorted(fields)),
                  tuple(checks), dictionary)


# ----------------------------------------------------------------------------- boundary coverage


class BoundaryCoverage:
    """Which inferred fields a stream given to a loader (taken or refused: the loader read it either
    way; at a load, or as it was written, where a driver checks its header then) held at a boundary
    value its captures never showed
    (``values``: per field, the values to count, e.g. ``fuzz.mutator.boundary_values``)."""

    def __init__(self, layout: Layout, values):
        self.size = layout.size
        self.fields = [(f.off, f.width, frozenset(v % (1 << 8 * f.width) for v in values(f)) - set(f.values))
                       for f in layout.fields]
        self.reached = [False] * len(self.fields)

    def note(self, data, given: int) -> None:
        """A stream whose first ``given`` bytes a loader was given."""
        if len(data) != self.size:
            return
        reached = self.reached
        for i, (off, width, targets) in enumerate(self.fields):
            if not reached[i] and off + width <= given and int.from_bytes(data[off:off + width], "little") in targets:
                reached[i] = True

    def offsets(self, reached: bool) -> list[int]:
        """The offsets of the fields that took a boundary value (``reached``), or of those that never
        did: a field's offset names it (fields never overlap)."""
        return [off for (off, _, _), hit in zip(self.fields, self.reached, strict=True) if hit == reached]

    def missed_line(self) -> str:
        """The campaign's line naming the fields never reached ("" when none)."""
        return missed_line(self.offsets(reached=False))

    def counts(self) -> tuple[int, int]:
        """(fields that took a boundary value in a stream given to a load, fields)."""
        return sum(self.reached), len(self.fields)


def missed_line(offsets) -> str:
    """How a campaign names the stream fields it never loaded at a boundary value ("" for none)."""
    return "stream fields never loaded at a boundary value, by offset: " + " ".join(map(str, offsets)) \
        if offsets else ""


# ----------------------------------------------------------------------------- persistence


def layout_path(corpus: Path, target: str) -> Path:
    """Where the layout of ``target`` is kept in a corpus directory."""
    return Path(corpus) / f"layout-{re.sub(r'[^A-Za-z0-9.=-]+', '_', target)}.json"


def load(path: Path) -> Layout | None:
    """The layout kept at ``path``, or None if there is none or it cannot be read."""
    try:
        return Layout.from_data(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, layout: Layout) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(layout.data(), indent=1) + "\n")
    tmp.replace(path)


def for_target(target, name: str, corpus: Path | None, refresh: bool = False, oracle=None) -> Layout:
    """The layout of an open target: the one kept in ``corpus``, else inferred now (and kept;
    ``oracle``: see :func:`capture`)."""
    path = layout_path(corpus, name) if corpus is not None else None
    if path is not None and not refresh:
        kept = load(path)
        if kept is not None and kept.target == name:
            return kept
    layout = infer(capture(target, oracle=oracle), name, target.proto)
    if path is not None:
        try:
            save(path, layout)
        except OSError:
            pass  # an unwritable corpus: the layout is only not kept
    return layout


# ----------------------------------------------------------------------------- the command


def describe(layout: Layout) -> str:
    lines = [f"stream layout of {layout.target} (protocol {layout.proto}): {layout.size} bytes, "
             f"{layout.captures} captures compared"]
    if layout.captures < 2:
        return lines[0] + "\n  too few complete streams to compare\n"
    lines.append(f"  constant: {len(layout.constant)} ranges, "
                 f"{sum(e - s for s, e in layout.constant)} bytes: "
                 + ", ".join(f"{s}..{e - 1}" if e - s > 1 else str(s) for s, e in layout.constant))
    lines.append(f"  fields ({len(layout.fields)}):")
    for f in layout.fields:
        shown = ", ".join(hex(v) for v in f.values[:8]) + (", ..." if len(f.values) > 8 else "")
        lines.append(f"    @{f.off:<5} u{8 * f.width:<3} {f.role:8} seen {shown}")
    lines.append("  checksums: " + (", ".join(f"{c.fix} of bytes 0..{layout.size - c.at - 1} at "
                                              f"{layout.size - c.at} (at={c.at})" for c in layout.checksums)
                                     or "none recognised"))
    lines.append("  dictionary: " + " ".join(hex(v) for v in layout.dictionary))
    return "\n".join(lines) + "\n"

