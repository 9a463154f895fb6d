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

from . import codec
from .codec import decode, encode
from .program import FAULT_KINDS, MANGLE_KINDS, MAX_OPS, MAX_PAYLOAD, NDEVICES, OPCODES, OPS, Op, Program, normalize

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
        a = rng.randrange(len(MANGLE_KINDS))
        b = rng.getrandbits(16)
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
    return normalize(proto, Op(code, dev, a, b, data))


REGISTER_VALUES = (0x00, 0x01, 0x03, 0x07, 0x0F, 0x41, 0x80, 0x83, 0xFF)  # UART modes: DLAB, FIFO clear, ...


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


def _split(data: bytes) -> tuple[list, bytes]:
    """Binary program -> (list of 8-byte records, payload), as decode() reads it."""
    end = 1 + codec.record_count(data) * RECORD
    return [data[i:i + RECORD] for i in range(1, end, RECORD)], data[end:]


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
    ra, pa = _split(a)
    rb, _ = _split(b)
    return _join(ra[:rng.randint(0, len(ra))] + rb[rng.randint(0, len(rb)):], pa)


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
