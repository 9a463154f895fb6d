"""Structure-aware generation and mutation of programs.

``random_op`` draws one op with arguments biased toward values that matter to
the protocol (valid states, small reads, interesting segmentations);
``mutate_bytes`` applies one op-level change (insert, delete, duplicate, swap,
retarget a state, tweak an argument, splice) directly on the binary form, and
``mutate``/``crossover`` wrap it for ``Program`` values.  The engine's custom
mutator, the random baseline and the Hypothesis baseline all draw from here.
"""
from __future__ import annotations

import random
import struct

from harness.runtime import RACE_FD_CALLS

from . import codec
from .codec import decode, encode
from .model import MIGRATIONS
from .program import (
    F_RACE_SCHED,
    FAULT_KINDS,
    FIELD_MANGLES,
    FIX_KINDS,
    MANGLE_KINDS,
    MAX_OPS,
    MAX_PAYLOAD,
    NDEVICES,
    OPCODES,
    OPS,
    RACE_CALLS,
    RACE_SCHEDS,
    SIZES,
    Op,
    Program,
    mangle_slots,
    normalize,
    race_slot,
)

_RECORD = codec.RECORD
RECORD = _RECORD.size
READ_SIZES = (1, 3, 7, 16, 24, 60, 64, 96, 128, 4096)
SEGMENTS = (0, 0, 0, 16, 16, 64, 7, 1, 1024, 1024)  # pieces per write; 1024+: random splits


def _state_value(proto: str, rng: random.Random) -> int:
    r = rng.random()
    if proto == "v2":
        if r < 0.9:
            return rng.randrange(1, 8)
        return rng.choice((0, 8, 9, 0xFFFFFFFF, rng.getrandbits(32)))
    if r < 0.85:
        return rng.randrange(0, 8)
    return rng.choice((8, 0x10, 1 << 31, rng.getrandbits(32))) | rng.randrange(8)


def random_op(proto: str, rng: random.Random, code: int | None = None) -> Op:
    table = OPS[proto]
    if code is None:
        code = rng.randrange(len(table))
    name = table[code].name
    dev = rng.randrange(NDEVICES)
    a = b = 0
    data = b""
    if name == "set":
        b = _state_value(proto, rng)
    elif name in ("read", "rdwin"):
        a = rng.randrange(3) if rng.random() < 0.3 else 0
        b = rng.choice(READ_SIZES)
    elif name in ("drain", "close", "seek", "precopy"):
        a = rng.randrange(3) if rng.random() < 0.3 else 0
    elif name in ("write", "wrwin"):
        a = rng.randrange(2) if rng.random() < 0.3 else 0
        data = rng.randbytes(rng.choice((1, 4, 16, 24, 64)))
    elif name == "transfer":
        a = 1 - dev if rng.random() < 0.85 else dev
        b = rng.choice(SEGMENTS)
        if b == 1024:
            b = 1024 + rng.randrange(1 << 12)
    elif name == "activity":
        b = rng.getrandbits(16)
    elif name == "fault":
        a = rng.randrange(1, 6)
        b = rng.randrange(len(FAULT_KINDS))
    elif name == "mangle":
        kind = rng.choice(MANGLE_KINDS)
        if kind in FIELD_MANGLES:  # a field anywhere, of any width: no idea where the fields are
            fix = FIX_KINDS[0] if rng.random() < 0.7 else rng.choice(FIX_KINDS)
            a, b = mangle_slots(kind, rng.getrandbits(15), rng.choice(SIZES), blind_value(rng), fix,
                                rng.getrandbits(8))
        else:
            a, b = mangle_slots(kind, rng.getrandbits(16))
    elif name == "feature":
        a = rng.choice((0, 4, 8, 12, 16, 24))
        b = rng.choice((1, 2, 9, 3, 6, 0x1234)) | rng.choice((0x10000, 0x20000, 0x40000, 0x30000, 0x50000, 0,
                                                              0x80000))
    elif name in ("rd", "wr"):
        a = rng.randrange(5)
        b = rng.choice((0, 1, 2, 3, 4, 0x1000, rng.getrandbits(32)))
    elif name in ("rdreg", "wrreg"):
        a = register_access(rng)
        b = rng.choice(REGISTER_VALUES) if rng.random() < 0.5 else rng.getrandbits(8 if rng.random() < 0.8 else 32)
    elif name == "race":
        a, data = race_op_args(proto, rng)
    return normalize(proto, Op(code, dev, a, b, data))


# The races worth most: reset against a data_fd call or a SET, SET against close, reopen
# against read, two SETs, two writes into one resume session; either way round.
RACE_PAIRS = {
    "v2": (("reset", "read"), ("reset", "write"), ("reset", "set"), ("set", "close"), ("reopen", "read"),
           ("set", "set"), ("set", "get"), ("set", "read"), ("reset", "precopy"), ("close", "read"),
           ("write", "write")),
    "v1": (("reset", "set"), ("set", "set"), ("set", "get"), ("reopen", "set")),
}


def race_op_args(proto: str, rng: random.Random) -> tuple[int, bytes]:
    """Slot a and the payload of a race op: mostly a pair of RACE_PAIRS, any pair sometimes; a SET
    asks for a valid state, a data_fd call mostly uses the newest data_fd; any interleaving."""
    if rng.random() < 0.8:
        x, y = rng.choice(RACE_PAIRS[proto])
        if rng.random() < 0.5:
            x, y = y, x
    else:
        x, y = rng.choice(RACE_CALLS), rng.choice(RACE_CALLS)
    args = []
    for kind in (x, y):
        if kind == "set":
            args.append(rng.randrange(1, 8) if proto == "v2" else rng.randrange(5))
        else:
            args.append(rng.randrange(3) if kind in RACE_FD_CALLS and rng.random() < 0.3 else 0)
    data = rng.randbytes(rng.choice((1, 4, 16, 64))) if "write" in (x, y) else b""
    return race_slot(x, args[0], y, args[1], rng.randrange(RACE_SCHEDS)), data


REGISTER_VALUES = (0x00, 0x01, 0x03, 0x07, 0x0F, 0x41, 0x80, 0x83, 0xFF)  # UART modes: DLAB, FIFO clear, ...
EDGE_VALUES = (0, 1, 2, -1, -2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF)  # a field's usual edges


def blind_value(rng: random.Random) -> int:
    """A value for a field change knowing nothing of the field: an edge value or any 16-bit number."""
    return rng.choice(EDGE_VALUES) if rng.random() < 0.6 else rng.getrandbits(16)


def register_access(rng: random.Random) -> int:
    """Slot a of rdreg/wrreg: mostly one byte of the first UART's registers, sometimes config
    space, sometimes anywhere the 10-bit offset reaches (a profile keeps what it must away)."""
    r = rng.random()
    region = 0 if r < 0.65 else 7 if r < 0.85 else rng.choice((1, 2, 5, 8))
    off = rng.randrange(8) if rng.random() < 0.75 else rng.choice((rng.randrange(0x40), rng.randrange(0x400)))
    size = 0 if rng.random() < 0.7 else rng.randrange(4)
    return region << 12 | size << 10 | off


def random_program(proto: str, rng: random.Random, max_ops: int = 24) -> Program:
    return Program(proto, tuple(random_op(proto, rng) for _ in range(rng.randint(1, max_ops))))


def mutate(prog: Program, rng: random.Random, donor: Program | None = None) -> Program:
    """One op-level mutation of a program (``mutate_bytes`` on its binary form)."""
    donor_bytes = encode(trim_payload(donor)) if donor is not None else None
    return decode(mutate_bytes(prog.proto, encode(trim_payload(prog)), rng, donor_bytes), prog.proto)


def crossover(a: Program, b: Program, rng: random.Random) -> Program:
    """The head of one program and the tail of another (``crossover_bytes``)."""
    return decode(crossover_bytes(encode(trim_payload(a)), encode(trim_payload(b)), rng), a.proto)


# Per record count n, a struct of n 8-byte strings: an input's records cut in one C call (a slice
# each cost 1.2 us more a mutation, a tenth of the mutator).
_RECORDS = tuple(struct.Struct(f"{RECORD}s" * n) for n in range(MAX_OPS + 1))


def _split(data: bytes) -> tuple[list, bytes]:
    """Binary program -> (list of 8-byte records, payload), as decode() reads it."""
    n = codec.record_count(data)
    records = list(_RECORDS[n].unpack_from(data, 1)) if n else []  # (unpack_from needs a byte at 1)
    return records, data[1 + n * RECORD:]


def _join(records: list, payload: bytes) -> bytes:
    records = records[:MAX_OPS]
    return bytes([len(records)]) + b"".join(records) + payload


def mutate_bytes(proto: str, data: bytes, rng: random.Random, donor: bytes | None = None) -> bytes:
    """One op-level mutation done on the binary form directly (records are fixed-width,
    payload references stay valid), so the fuzzing loop never decodes to mutate."""
    records, payload = _split(data)
    n = len(records)
    choice = rng.randrange(8)
    if choice == 0 or n == 0:  # insert a fresh op
        if n < MAX_OPS:
            op = random_op(proto, rng)
            if op.data:  # its payload goes at the end of the payload area
                ref = len(payload) | len(op.data) << 16
                payload += op.data
                op = op._replace(b=ref, data=b"")
            records.insert(rng.randint(0, n), _RECORD.pack(op.code, op.dev, op.a, op.b))
    elif choice == 1 and n > 1:  # delete
        del records[rng.randrange(n)]
    elif choice == 2 and n < MAX_OPS:  # duplicate
        i = rng.randrange(n)
        records.insert(i + 1, records[i])
    elif choice == 3 and n > 1:  # swap neighbours
        i = rng.randrange(n - 1)
        records[i], records[i + 1] = records[i + 1], records[i]
    elif choice in (4, 5):  # retarget a state / redraw the arguments of an op of the same kind
        i = rng.randrange(n)
        code = records[i][0] % len(OPS[proto])
        if OPS[proto][code].name in ("write", "wrwin"):
            records[i] = records[i][:4] + rng.randbytes(4)
        elif OPS[proto][code].name == "race":  # another interleaving of the same calls, or other calls
            a = _RECORD.unpack(records[i])[2]
            sched = F_RACE_SCHED
            a = a & ~((sched.limit - 1) << sched.shift) | rng.randrange(sched.limit) << sched.shift \
                if rng.random() < 0.5 else race_op_args(proto, rng)[0]
            records[i] = records[i][:2] + a.to_bytes(2, "little") + records[i][4:]  # the payload stays
        else:
            op = random_op(proto, rng, code)
            records[i] = _RECORD.pack(records[i][0], records[i][1], op.a, op.b)
    elif choice == 6:  # move to the other device
        i = rng.randrange(n)
        r = records[i]
        records[i] = r[:1] + bytes([r[1] ^ 1]) + r[2:]
    else:  # splice a run of ops from a donor (or from itself)
        other, _ = _split(donor) if donor else (records, b"")
        if other:
            j = rng.randrange(len(other))
            records[rng.randint(0, n):0] = other[j:j + rng.randint(1, 6)]
    return _join(records, payload[:MAX_PAYLOAD])


def crossover_bytes(a: bytes, b: bytes, rng: random.Random) -> bytes:
    """A prefix of ``a``'s records, then a suffix of ``b``'s (at most MAX_OPS), with ``a``'s payload.
    Sliced out of the binary forms whole: records are fixed-width."""
    na, nb = codec.record_count(a), codec.record_count(b)
    i, j = rng.randint(0, na), rng.randint(0, nb)
    n = min(i + nb - j, MAX_OPS)
    records = (a[1:1 + i * RECORD] + b[1 + j * RECORD:1 + nb * RECORD])[:n * RECORD]
    return bytes((n,)) + records + a[1 + na * RECORD:]


# ----------------------------------------------------------------------------- op groups


class OpGroups:
    """The op groups a migration is made of (``fuzz.model.MIGRATIONS``), inserted whole into a
    program: a source's save (its states, each followed by reading the stream to the end; in the
    live saving state maybe a pre-copy iteration as QEMU makes it: the device works, a read,
    PRECOPY_INFO, a read), a destination's resume (the resume state, a transfer from the source in
    some segmentation, a state that loads; then, as a guest that runs on would, maybe a read of a
    register the profile names, a data-out one half the time, and maybe a byte written to a
    data-in one, in either order), both in a row, or an iteration
    alone. One op at a time, a search has to find five ops in order on two devices, none of them
    new coverage alone, before a stream reaches a loader."""

    def __init__(self, proto: str, profile=None):
        codes = OPCODES[proto]
        m = MIGRATIONS[proto]
        self.pack = _RECORD.pack
        self.codes = codes
        self.proto = proto
        self.migration = m
        # registers a running guest reads: one byte of a data-out register, or of an observe one
        regions = [r for r in (profile.regions.values() if profile is not None else ()) if 1 in r.widths]
        reads = (tuple(r.index << 12 | reg.offset for r in regions for reg in r.registers.values() if reg.read == role)
                 for role in ("data-out", "observe"))
        self.reads = tuple(group for group in reads if group)
        # and registers it writes: one byte of a data-in register (mtty's TX stores it at the FIFO's
        # head, an index the load took from the stream unchecked)
        self.writes = tuple(r.index << 12 | reg.offset for r in regions for reg in r.registers.values()
                            if reg.write == "data-in")

    def save(self, rng: random.Random, dev: int) -> list:
        codes, pack, out = self.codes, self.pack, []
        for state in rng.choice(self.migration.saves):
            out += [pack(codes["set"], dev, 0, state), pack(codes["drain"], dev, 0, 0)]
            if state == self.migration.live and rng.random() < 0.5:
                out += self._iterate(rng, dev)
        return out

    def resume(self, rng: random.Random, src: int) -> list:
        codes, pack, dst = self.codes, self.pack, 1 - src
        seg = rng.choice(SEGMENTS)
        if seg == 1024:
            seg = 1024 + rng.randrange(1 << 12)
        m = self.migration
        out = [pack(codes["set"], dst, 0, m.resume), pack(codes["transfer"], src, dst, seg),
               pack(codes["set"], dst, 0, rng.choice(m.loads))]
        return out + self.guest_access(rng, dst)

    def guest_access(self, rng: random.Random, dev: int) -> list:
        """What a guest that runs on after a load may do first: maybe a read of a register the profile
        names (a data-out one half the time), maybe a byte written to a data-in one, in either order;
        after a write, the device's migration state read back."""
        codes, pack, out = self.codes, self.pack, []
        if self.reads and rng.random() < 0.5:
            out.append(pack(codes["rdreg"], dev, rng.choice(rng.choice(self.reads)), 0))
        if self.writes and rng.random() < 0.5:
            out.insert(rng.randint(0, len(out)), pack(codes["wrreg"], dev, rng.choice(self.writes),
                                                      rng.getrandbits(8)))
            # A store through an index the load took unchecked lands in the driver's own memory (mtty
            # #8: fifo[rxtx.head] reaches mdev_state->state and state_mutex), where only the driver's
            # next ioctl sees it; the next program's reset rewrites it first.
            out.append(pack(codes["get"], dev, 0, 0))
        return out

    def _iterate(self, rng: random.Random, dev: int) -> list:
        codes, pack = self.codes, self.pack
        work = pack(codes["activity"], dev, 0, rng.getrandbits(16))
        if self.proto != "v2":
            return [work, pack(codes["save"], dev, 0, 0)]
        return [work, pack(codes["read"], dev, 0, rng.choice(READ_SIZES)), pack(codes["precopy"], dev, 0, 0),
                pack(codes["read"], dev, 0, rng.choice(READ_SIZES))]

    def apply(self, data: bytes, rng: random.Random) -> bytes:
        """``data`` with a save, a resume, a whole migration or a pre-copy iteration inserted at a
        random place."""
        records, payload = _split(data)
        src = rng.randrange(NDEVICES)
        r = rng.random()
        if r < 0.2:
            group = self.save(rng, src)
        elif r < 0.4:
            group = self.resume(rng, src)
        elif r < 0.85:
            group = self.save(rng, src) + self.resume(rng, src)
        else:
            group = self._iterate(rng, src)
        i = rng.randint(0, len(records))
        records[i:i] = group
        return _join(records, payload[:MAX_PAYLOAD])


# ----------------------------------------------------------------------------- field-aware stream edits

# A field change's value is a 17-bit two's complement number (fuzz.program F_MANGLE_VALUE).
SMALL_FIELD = 64  # a varying field whose captures never held more is a counter or an index, likely
SMALL_FIELD_WEIGHT = 4
_VALUE_MIN, _VALUE_MAX = -(1 << 16), (1 << 16) - 1


def boundary_values(width: int, seen: tuple, size: int, dictionary: tuple = ()) -> tuple:
    """Values worth giving a field of ``width`` bytes whose captures showed ``seen`` (in a stream of
    ``size`` bytes): 0, 1, the largest, small negatives, the edges of signed and unsigned bytes and
    half-words, sizes (the next powers of two above what was seen, the stream's size) and one off
    them, the values seen and one off them, the dictionary. Each once, as its own width wraps it."""
    top = max(seen, default=0)
    pow2 = 1 << max(top, 1).bit_length()
    raw = [0, 1, 2, -1, -2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, size, size - 1, size + 1,
           top + 1, top + 2, pow2, pow2 - 1, pow2 + 1, 2 * pow2, 4 * pow2]
    raw += [v + d for v in seen for d in (-1, 0, 1)] + list(dictionary)
    modulus = 1 << (8 * width)
    out = {}
    for v in raw:
        v %= modulus
        shown = v if v <= _VALUE_MAX else v - modulus  # a value the field change can carry
        if _VALUE_MIN <= shown <= _VALUE_MAX:
            out.setdefault(v, shown)
    return tuple(out[k] for k in sorted(out))


# Share of field edits that bring a whole migration of their own (OpGroups.save, the edit,
# OpGroups.resume) rather than edit a transfer the program has: a transfer a corpus program
# already makes often reaches no loader (its destination is not resuming, its source has no
# stream). Measured on 2026-12-02, offline, 200,000 campaign mutations of a rig corpus with mtty's
# layout: an mtty #8 trigger (a harmful head, a transfer, a load, a TX write, a GET) 1 in 50,000
# without, 1 in 4,300 at 0.5, 1 in 7,100 at 0.25. The price: campaign programs 10% longer, more of
# them through the loader (README, Throughput).
OWN_MIGRATION = 0.5


class FieldEdits:
    """Field-aware stream mutations from an inferred layout (``fuzz.layout.Layout``): a mangle op on
    the source of a transfer that sets one inferred field to one of its :func:`boundary_values` (a
    length: also moves it by one), fixing up the checksum the layout recognised, so the change
    reaches the loader; or cuts or extends the stream by one byte. The edit goes before a transfer
    the program makes, or (``OWN_MIGRATION`` of the time, and always in a program without one)
    between the save and the resume of a migration it inserts (``op_groups``: an :class:`OpGroups`).
    Half the time the destination's next state change after an existing transfer (a load, as a
    rule) is followed by what a guest does first (``OpGroups.guest_access``); a resume of its own
    brings that already. Every candidate op is packed once, here; :meth:`apply` only picks one
    and puts it in a program's binary form."""

    def __init__(self, proto: str, layout, op_groups: OpGroups | None = None):
        self.mangle = OPCODES[proto]["mangle"]
        self.transfer = OPCODES[proto]["transfer"]
        self.set = OPCODES[proto]["set"]
        # whole migrations, and what exercises a loaded field through the device (mtty's TX stores
        # at fifo[rxtx.head], a loaded field) after the destination's next state change
        self.op_groups = op_groups
        self.ncodes = len(OPS[proto])
        fix, at = (layout.checksums[0].fix, layout.checksums[0].at) if layout.checksums else ("none", 0)
        groups = []
        for f in layout.fields:
            values = boundary_values(f.width, f.values, layout.size, layout.dictionary)
            ops = tuple(mangle_slots("set", f.off, f.width, v, fix, at) for v in values)
            if f.role == "length":
                ops += tuple(mangle_slots("add", f.off, f.width, d, fix, at) for d in (-1, 1))
            # counters and indices are picked more often than data, header bytes and lengths
            small = f.role == "varying" and max(f.values) < SMALL_FIELD
            groups += [ops] * (SMALL_FIELD_WEIGHT if small else 1)
        # one byte less, one more (its value a multiple of 16: what extend arg=16k appends)
        groups += [(mangle_slots("truncate", 0),) + tuple(mangle_slots("extend", 16 * k) for k in range(16))] \
            * SMALL_FIELD_WEIGHT
        self.groups = tuple(g for g in groups if g)
        self.fields = len(layout.fields)

    def apply(self, data: bytes, rng: random.Random) -> bytes | None:
        """``data`` with one field edit before one of its transfers (replacing the mangle op just
        before it, if there is one), on the transfer's source device, or inside a migration of its
        own inserted at a random place; None if there is neither a transfer nor room for one."""
        if not self.groups:
            return None
        records, payload = _split(data)
        ncodes = self.ncodes
        a, b = rng.choice(rng.choice(self.groups))
        at = [i for i, r in enumerate(records) if r[0] % ncodes == self.transfer]
        op_groups = self.op_groups
        if op_groups is not None and (not at or rng.random() < OWN_MIGRATION):
            src = rng.randrange(NDEVICES)
            migration = (op_groups.save(rng, src) + [_RECORD.pack(self.mangle, src, a, b)]
                         + op_groups.resume(rng, src))
            if len(records) + len(migration) <= MAX_OPS:
                i = rng.randint(0, len(records))
                records[i:i] = migration
                return _join(records, payload)
            # no room for it: edit a transfer the program makes, if it has one
        if not at:
            return None
        i = rng.choice(at)
        record = _RECORD.pack(self.mangle, records[i][1], a, b)
        if i and records[i - 1][0] % ncodes == self.mangle and rng.random() < 0.5:
            records[i - 1] = record
        elif len(records) < MAX_OPS:
            records.insert(i, record)
            i += 1
        else:
            return None
        if op_groups is not None and rng.random() < 0.5:
            dst = _RECORD.unpack(records[i])[2] % NDEVICES
            for j in range(i + 1, len(records)):
                if records[j][0] % ncodes == self.set and records[j][1] % NDEVICES == dst:
                    records[j + 1:j + 1] = op_groups.guest_access(rng, dst)
                    break
        return _join(records, payload)


def trim_payload(prog: Program) -> Program:
    """Keep the total payload within what the binary form can carry."""
    total = 0
    ops = []
    for op in prog.ops:
        total += len(op.data)
        ops.append(op if total <= MAX_PAYLOAD else op._replace(data=b""))
    return Program(prog.proto, tuple(ops))


__all__ = ["OPCODES", "crossover", "crossover_bytes", "mutate", "mutate_bytes", "random_op", "random_program",
           "trim_payload"]
