"""Programs: sequences of migration ops, and their text form.

A program is a protocol (``v1`` or ``v2``) and a list of :class:`Op`.  Every op
is one fixed-width record ``(code, dev, a, b)`` plus, for the ops that write
raw bytes, a payload.  What ``a`` and ``b`` mean is declared per op in
``V1_OPS`` / ``V2_OPS``; the text form, the binary codec, the mutator and the
executor all read these tables, so an op is described in exactly one place.

Text form (one op per line, ``#`` comments, a version header)::

    migfuzz-program 1 v2
    set 0 state=PRE_COPY
    read 0 fd=0 n=64
    transfer 0 dst=1 seg=16

``dev`` is the device index (0 or 1: a source and a destination).
"""
from __future__ import annotations

import functools
from importlib import resources
from typing import NamedTuple

from harness.base import FAULT_KINDS
from harness.runtime import FIELD_MANGLES, FIX_KINDS, MANGLE_KINDS, RACE_CALLS, RACE_SCHEDS, SEG_RANDOM
from harness.uapi import V1_FIELD_NAMES, MigState

TEXT_MAGIC = "migfuzz-program"
TEXT_VERSION = 1
NDEVICES = 2
MAX_OPS = 48          # ops in one program
MAX_PAYLOAD = 4096    # payload bytes (write data) in one program, all ops together
SLOT_RANGE = {"a": 1 << 16, "b": 1 << 32}  # the record's a (u16) and b (u32) slots
FD_SLOTS = 4  # fd=0 is the newest data_fd of a device, fd=1 the one before, ...


class Op(NamedTuple):
    code: int  # index into the protocol's op table
    dev: int
    a: int = 0
    b: int = 0
    data: bytes = b""


class Field(NamedTuple):
    """One named argument of an op: which record slot holds it and how to show it."""

    name: str
    slot: str  # "a", "b" or "data"
    kind: str  # "int", "hex", "signed", "state", "v1state", "v1field", "fault", "mangle", "fix", "race", "bytes",
    #           "size"
    limit: int = 0  # values are taken modulo limit (0: the slot's full width)
    shift: int = -1  # >= 0: one of several fields packed in the slot, at this bit (limit is then 1 << bits)
    when: tuple = ()  # (name, values): the field exists only while the op's field `name` has one of these values


def _when_chain(fields: tuple, f: Field) -> tuple:
    """What :func:`applies` tests for ``f``, flattened: the (field, values) pairs that must all hold
    (its ``when``, that field's ``when``, ...; a spec's field names are unique)."""
    chain = []
    while f.when:
        name, values = f.when
        f = next(g for g in fields if g.name == name)
        chain.append((f, values))
    return tuple(chain)


def applies(fields: tuple, f: Field, op) -> bool:
    """Whether field ``f`` is in use in ``op`` (an op whose spec has ``fields``): see ``Field.when``."""
    return all(field_value(g, op) in values for g, values in _when_chain(fields, f))


def signed(value: int, limit: int) -> int:
    """A "signed" field's value: two's complement in log2(limit) bits."""
    return value - limit if value >= limit >> 1 else value


def field_value(f: Field, op) -> int | bytes:
    """The value of field ``f`` in ``op`` (a packed field is cut out of its slot)."""
    value = getattr(op, f.slot)
    return (value >> f.shift) % f.limit if f.shift >= 0 else value


def with_field(f: Field, op, value):
    """``op`` with field ``f`` set to ``value`` (the other fields packed in its slot kept)."""
    if f.shift < 0:
        return op._replace(**{f.slot: value})
    slot = getattr(op, f.slot)
    mask = (f.limit - 1) << f.shift
    return op._replace(**{f.slot: (slot & ~mask) | (value % f.limit) << f.shift})


SIZES = (1, 2, 4, 8)  # the widths of a register access; a "size" field holds the index


class OpSpec(NamedTuple):
    name: str
    fields: tuple = ()
    doc: str = ""


F_SLOT = Field("fd", "a", "int", FD_SLOTS)
F_N = Field("n", "b", "int", 4097)
F_DATA = Field("data", "data", "bytes")
F_DST = Field("dst", "a", "int", NDEVICES)
F_SEG = Field("seg", "b", "int", 1 << 16)
F_SEED = Field("seed", "b", "int")
F_FAULT = (Field("nth", "a", "int", 16), Field("kind", "b", "fault", len(FAULT_KINDS)))
# mangle: the kind in a's low bits; truncate..swap take arg, set/add a field's offset, width and value
# (17-bit two's complement) and a checksum to fix up after the change: FIX_KINDS, its field `at`
# bytes before the stream's end (harness.runtime.mangle).
_WHOLE = ("kind", tuple(i for i, k in enumerate(MANGLE_KINDS) if k not in FIELD_MANGLES))
_FIELD = ("kind", tuple(MANGLE_KINDS.index(k) for k in FIELD_MANGLES))
F_MANGLE = (Field("kind", "a", "mangle", len(MANGLE_KINDS), 0),
            Field("arg", "b", "int", 1 << 16, 0, _WHOLE),
            Field("off", "b", "int", 1 << 15, 0, _FIELD),
            Field("width", "a", "size", 4, 3, _FIELD),
            Field("value", "b", "signed", 1 << 17, 15, _FIELD),
            Field("fix", "a", "fix", len(FIX_KINDS), 5, _FIELD),
            Field("at", "a", "int", 1 << 8, 8, ("fix", tuple(range(1, len(FIX_KINDS))))))

COMMON_OPS = (
    OpSpec("reset", (), "VFIO_DEVICE_RESET"),
    OpSpec("activity", (F_SEED,), "device work while running (registers, dirty pages)"),
    OpSpec("fault", F_FAULT, "arm an injected failure of the device's nth internal step from now"),
    OpSpec("mangle", F_MANGLE, "damage this device's captured stream in transport"),
    OpSpec("transfer", (F_DST, F_SEG),
           "write this device's captured stream into dst's resume session, in pieces of seg bytes "
           f"(0: one write; >= {SEG_RANDOM}: random splits seeded by seg)"),
)

F_MANGLE_KIND, F_MANGLE_ARG, F_MANGLE_OFF, F_MANGLE_WIDTH, F_MANGLE_VALUE, F_MANGLE_FIX, F_MANGLE_AT = F_MANGLE


def mangle_args(op) -> tuple:
    """A mangle op's arguments as ``harness.runtime.mangle`` takes them:
    (kind, arg or the field's offset, width, value, fix, at)."""
    kind = MANGLE_KINDS[field_value(F_MANGLE_KIND, op)]
    if kind not in FIELD_MANGLES:
        return kind, field_value(F_MANGLE_ARG, op)
    return (kind, field_value(F_MANGLE_OFF, op), SIZES[field_value(F_MANGLE_WIDTH, op)],
            signed(field_value(F_MANGLE_VALUE, op), F_MANGLE_VALUE.limit), FIX_KINDS[field_value(F_MANGLE_FIX, op)],
            field_value(F_MANGLE_AT, op))


def mangle_slots(kind: str, arg: int, width: int = 1, value: int = 0, fix: str = "none", at: int = 0) -> tuple:
    """The record slots (a, b) of a mangle op: the inverse of :func:`mangle_args` (``arg`` is the
    field's offset for set/add; every number is taken modulo its field's range)."""
    code = MANGLE_KINDS.index(kind)
    if kind not in FIELD_MANGLES:
        return code, arg % F_MANGLE_ARG.limit
    fix_code = FIX_KINDS.index(fix)
    a = (code | SIZES.index(width) << F_MANGLE_WIDTH.shift | fix_code << F_MANGLE_FIX.shift
         | (at % F_MANGLE_AT.limit if fix_code else 0) << F_MANGLE_AT.shift)
    return a, arg % F_MANGLE_OFF.limit | (value % F_MANGLE_VALUE.limit) << F_MANGLE_VALUE.shift


V2_OPS = COMMON_OPS + (
    OpSpec("set", (Field("state", "b", "state"),), "SET MIG_DEVICE_STATE (any u32)"),
    OpSpec("get", (), "GET MIG_DEVICE_STATE"),
    OpSpec("read", (F_SLOT, F_N), "read(2) n bytes from a data_fd, appended to the capture"),
    OpSpec("drain", (F_SLOT,), "read a data_fd until (temporary) end of stream"),
    OpSpec("write", (F_SLOT, F_DATA), "write(2) raw bytes to a data_fd"),
    OpSpec("close", (F_SLOT,), "close(2) a data_fd"),
    OpSpec("seek", (F_SLOT,), "lseek(2) a data_fd (must fail: ESPIPE)"),
    OpSpec("precopy", (F_SLOT,), "VFIO_MIG_GET_PRECOPY_INFO on a data_fd"),
    OpSpec("datasize", (), "GET MIG_DATA_SIZE"),
    OpSpec("feature", (Field("argsz", "a", "int"), Field("flags", "b", "hex")),
           "raw VFIO_DEVICE_FEATURE framing (any flags, any argsz)"),
)

V1_OPS = COMMON_OPS + (
    OpSpec("set", (Field("value", "b", "v1state"),), "write device_state (any u32, reserved bits too)"),
    OpSpec("get", (), "read device_state"),
    OpSpec("rd", (Field("field", "a", "v1field", len(V1_FIELD_NAMES)),), "read a region field"),
    OpSpec("wr", (Field("field", "a", "v1field", len(V1_FIELD_NAMES)), Field("value", "b", "hex")),
           "write a region field (read-only ones too)"),
    OpSpec("save", (), "one saving iteration: pending_bytes, data_offset, data_size, data, ack"),
    OpSpec("drain", (), "saving iterations until pending_bytes is 0"),
    OpSpec("rdwin", (F_N,), "read n bytes of the data window"),
    OpSpec("wrwin", (F_DATA,), "write raw bytes to the data window, then data_size"),
)

# Register ops and reopen, last in both tables (the older ops keep their codes): a region index,
# an offset and a width packed in slot a (4 + 2 + 10 bits), the value written in slot b.
F_REGION = Field("region", "a", "int", 16, 12)
F_OFF = Field("off", "a", "hex", 1024, 0)
F_SIZE = Field("size", "a", "size", 4, 10)
DEVICE_OPS = (
    OpSpec("reopen", (), "close the device and its data_fds and open it again (no VFIO_DEVICE_RESET)"),
    OpSpec("rdreg", (F_REGION, F_OFF, F_SIZE), "pread size bytes at off of a device region (its register)"),
    OpSpec("wrreg", (F_REGION, F_OFF, F_SIZE, Field("value", "b", "hex")),
           "pwrite the low size bytes of value at off of a device region"),
)
# race, last in both tables: two calls x and y (RACE_CALLS) at once, their arguments (the state a set
# asks for, or the data_fd slot of read/write/close/precopy) and the interleaving sched, packed in
# slot a (3 + 3 + 4 + 3 + 3 bits); what a racing write writes is the payload.
F_RACE = (Field("x", "a", "race", len(RACE_CALLS), 0), Field("xarg", "a", "int", 8, 10),
          Field("y", "a", "race", len(RACE_CALLS), 3), Field("yarg", "a", "int", 8, 13),
          Field("sched", "a", "int", RACE_SCHEDS, 6), F_DATA)
RACE_OPS = (
    OpSpec("race", F_RACE, "calls x and y at once, from two threads (the simulator runs interleaving sched of "
                           "them; a real device two threads released by a barrier)"),
)
F_RACE_X, F_RACE_XARG, F_RACE_Y, F_RACE_YARG, F_RACE_SCHED, _ = F_RACE


def race_args(op) -> tuple:
    """A race op's arguments: ((call x, its argument), (call y, its argument), sched)."""
    return _race_args(op.a)


@functools.cache  # all of them live in slot a: a few thousand values, each decoded once
def _race_args(a: int) -> tuple:
    op = Op(0, 0, a)
    return ((RACE_CALLS[field_value(F_RACE_X, op)], field_value(F_RACE_XARG, op)),
            (RACE_CALLS[field_value(F_RACE_Y, op)], field_value(F_RACE_YARG, op)), field_value(F_RACE_SCHED, op))


def race_slot(x: str, xarg: int, y: str, yarg: int, sched: int) -> int:
    """Slot a of a race op: the inverse of :func:`race_args` (numbers taken modulo their ranges)."""
    fields = ((F_RACE_X, RACE_CALLS.index(x)), (F_RACE_XARG, xarg), (F_RACE_Y, RACE_CALLS.index(y)),
              (F_RACE_YARG, yarg), (F_RACE_SCHED, sched))
    return sum((value % f.limit) << f.shift for f, value in fields)
V2_OPS = V2_OPS + DEVICE_OPS + RACE_OPS
V1_OPS = V1_OPS + DEVICE_OPS + RACE_OPS
OPS = {"v1": V1_OPS, "v2": V2_OPS}
OPCODES = {proto: {spec.name: code for code, spec in enumerate(table)} for proto, table in OPS.items()}


class ProgramError(ValueError):
    """A program text or file that cannot be read."""


class Program(NamedTuple):
    proto: str
    ops: tuple

    def text(self) -> str:
        return format_program(self)


# Per protocol and op code: (field, its when chain) for each field, so that normalize(), which
# decode runs on every op with conditional fields (a mangle), need not walk applies() per field.
_FIELD_CHAINS = {proto: tuple(tuple((f, _when_chain(spec.fields, f)) for f in spec.fields) for spec in table)
                 for proto, table in OPS.items()}


def op_filter(proto: str, names) -> frozenset:
    """The op codes of ``proto`` a campaign with ``names`` disabled runs (``--disable-ops``): every
    op not named; a race op only if neither of its calls is named either (that is checked per op, by
    :func:`without_ops`). Raises ProgramError for a name that is no op and no race call."""
    names = frozenset(names)
    known = {spec.name for spec in OPS[proto]} | set(RACE_CALLS)
    unknown = sorted(names - known)
    if unknown:
        raise ProgramError(f"no such op or race call: {', '.join(unknown)} (ops: "
                           f"{', '.join(spec.name for spec in OPS[proto])})")
    return frozenset(code for code, spec in enumerate(OPS[proto]) if spec.name not in names)


def without_ops(prog: Program, allowed: frozenset, names: frozenset) -> Program:
    """``prog`` without the ops a campaign disabled: those whose code is not ``allowed``, and races
    with a call in ``names`` (a race of ``reopen`` is a ``reopen``)."""
    race = OPCODES[prog.proto]["race"]
    ops = tuple(op for op in prog.ops if op.code in allowed and not (
        op.code == race and {call for call, _arg in race_args(op)[:2]} & names))
    return prog if len(ops) == len(prog.ops) else Program(prog.proto, ops)


def normalize(proto: str, op: Op) -> Op:
    """Bring every field into its declared range (what decode also does)."""
    a, b, data = 0, 0, b""
    for f, chain in _FIELD_CHAINS[proto][op.code]:
        for g, values in chain:
            if field_value(g, op) not in values:
                break  # a field not in use in this op: its bits are dropped
        else:
            slot, shift, limit = f.slot, f.shift, f.limit
            if slot == "data":
                data = bytes(op.data[:MAX_PAYLOAD])
            elif shift >= 0:  # packed fields fill their slot's bits exactly
                if slot == "a":
                    a |= (op.a >> shift) % limit << shift
                else:
                    b |= (op.b >> shift) % limit << shift
            elif slot == "a":
                a = op.a % limit if limit else op.a & 0xFFFF
            else:
                b = op.b % limit if limit else op.b & 0xFFFFFFFF
    return Op(op.code, op.dev % NDEVICES, a, b, data)


# ---------------------------------------------------------------------------
# text form
# ---------------------------------------------------------------------------


def _show(f: Field, op: Op) -> str:
    value = field_value(f, op)
    if f.kind == "size":
        return str(SIZES[value])
    if f.kind == "bytes":
        return value.hex()
    if f.kind == "state":
        return MigState(value).name if 0 <= value < 8 else str(value)
    if f.kind == "v1state":
        return f"0b{value:03b}" if value < 8 else hex(value)
    if f.kind == "v1field":
        return V1_FIELD_NAMES[value]
    if f.kind == "fault":
        return FAULT_KINDS[value]
    if f.kind == "mangle":
        return MANGLE_KINDS[value]
    if f.kind == "fix":
        return FIX_KINDS[value]
    if f.kind == "race":
        return RACE_CALLS[value]
    if f.kind == "signed":
        value = signed(value, f.limit)
        return hex(value) if value >= 0 else str(value)
    if f.kind == "hex":
        return hex(value)
    return str(value)


def _parse_value(f: Field, text: str):
    try:
        if f.kind == "bytes":
            return bytes.fromhex(text)
        if f.kind == "state" and text in MigState.__members__:
            return int(MigState[text])
        if f.kind == "v1field":
            return V1_FIELD_NAMES.index(text)
        if f.kind == "fault":
            return FAULT_KINDS.index(text)
        if f.kind == "mangle":
            return MANGLE_KINDS.index(text)
        if f.kind == "fix":
            return FIX_KINDS.index(text)
        if f.kind == "race":
            return RACE_CALLS.index(text)
        if f.kind == "size":
            return SIZES.index(int(text, 0))
        value = int(text, 0)
    except ValueError:
        raise ProgramError(f"bad value {text!r} for {f.name}") from None
    if f.kind == "signed":
        if not -(f.limit >> 1) <= value < f.limit >> 1:
            raise ProgramError(f"{f.name}={text} is out of range ({-(f.limit >> 1)}..{(f.limit >> 1) - 1})")
        return value % f.limit
    return value


def format_op(proto: str, op: Op) -> str:
    spec = OPS[proto][op.code]
    parts = [spec.name, str(op.dev)]
    parts += [f"{f.name}={_show(f, op)}" for f in spec.fields if not f.when or applies(spec.fields, f, op)]
    return " ".join(parts)


def format_program(prog: Program) -> str:
    lines = [f"{TEXT_MAGIC} {TEXT_VERSION} {prog.proto}"]
    lines += [format_op(prog.proto, op) for op in prog.ops]
    return "\n".join(lines) + "\n"


def parse_op(proto: str, line: str) -> Op:
    words = line.split()
    codes = OPCODES[proto]
    if words[0] not in codes:
        raise ProgramError(f"unknown {proto} op {words[0]!r}")
    code = codes[words[0]]
    spec = OPS[proto][code]
    if len(words) < 2 or not (words[1].isascii() and words[1].isdigit()) or int(words[1]) >= NDEVICES:
        raise ProgramError(f"{words[0]}: expected a device index 0..{NDEVICES - 1} after the op name")
    values = {"a": 0, "b": 0, "data": b""}
    by_name = {f.name: f for f in spec.fields}
    given = []
    for word in words[2:]:
        name, eq, text = word.partition("=")
        if not eq or name not in by_name:
            raise ProgramError(f"{words[0]}: unexpected argument {word!r} (takes {', '.join(by_name) or 'none'})")
        f = by_name[name]
        value = _parse_value(f, text)
        if f.slot == "data":
            if len(value) > MAX_PAYLOAD:
                raise ProgramError(f"{words[0]}: {name} is {len(value)} bytes; at most {MAX_PAYLOAD}")
        else:
            top = (f.limit or SLOT_RANGE[f.slot]) - 1
            if not 0 <= value <= top:
                raise ProgramError(f"{words[0]}: {name}={text} is out of range (0..{top})")
        if f.shift >= 0:
            value = values[f.slot] | value << f.shift
        values[f.slot] = value
        given.append(f)
    op = Op(code, int(words[1]), values["a"], values["b"], values["data"])
    for f in given:
        if f.when and not applies(spec.fields, f, op):
            name, allowed = f.when
            shown = "|".join(_show(by_name[name], with_field(by_name[name], Op(code, 0), v)) for v in allowed)
            raise ProgramError(f"{words[0]}: {f.name}= goes with {name}={shown} only")
    return op


def parse_program(text: str) -> Program:
    lines = [(n, ln.split("#", 1)[0].strip()) for n, ln in enumerate(text.splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln]
    if not lines:
        raise ProgramError("empty program")
    n, first = lines[0]
    head = first.split()
    if len(head) != 3 or head[0] != TEXT_MAGIC:
        raise ProgramError(f"line {n}: expected the header '{TEXT_MAGIC} {TEXT_VERSION} v1|v2', found {first[:60]!r}")
    if head[1] != str(TEXT_VERSION):
        raise ProgramError(f"line {n}: unsupported program version {head[1]} (this migfuzz reads {TEXT_VERSION})")
    proto = head[2]
    if proto not in OPS:
        raise ProgramError(f"line {n}: unknown protocol {proto!r} (v1 or v2)")
    ops = []
    for n, line in lines[1:]:
        try:
            ops.append(parse_op(proto, line))
        except ProgramError as e:
            raise ProgramError(f"line {n}: {e}") from None
    if len(ops) > MAX_OPS:
        raise ProgramError(f"{len(ops)} ops; at most {MAX_OPS}")
    payload = sum(len(op.data) for op in ops)
    if payload > MAX_PAYLOAD:
        raise ProgramError(f"the ops carry {payload} payload bytes in all; at most {MAX_PAYLOAD}")
    return Program(proto, tuple(ops))


def seed_programs(proto: str) -> list[tuple[str, Program]]:
    """The shipped seed programs of a protocol, (file name, program) (package data ``fuzz.seeds``,
    i.e. ``corpus/seeds/<proto>/*.txt`` in the source tree)."""
    out = []
    folder = resources.files("fuzz.seeds") / proto
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".txt"):
            try:
                out.append((entry.name, parse_program(entry.read_text())))
            except ProgramError as e:
                raise ProgramError(f"seed {proto}/{entry.name}: {e}") from None
    return out
