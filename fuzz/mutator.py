"""Structure-aware generation and mutation of programs.

``random_op`` draws one op with arguments biased toward values that matter to
the protocol (valid states, small reads, interesting segmentations);
``mutate`` applies one op-level change (insert, delete, duplicate, swap,
retarget a state, tweak an argument, splice).  The engine's custom mutator,
the random baseline and the Hypothesis baseline all draw from here.
"""
from __future__ import annotations

import random

from .program import FAULT_KINDS, MANGLE_KINDS, MAX_OPS, MAX_PAYLOAD, NDEVICES, OPCODES, OPS, Op, Program, \
    normalize

READ_SIZES = (1, 3, 7, 16, 24, 60, 64, 96, 128, 4096)
SEGMENTS = (0, 0, 1, 2, 7, 16, 64, 1024)


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
    return normalize(proto, Op(code, dev, a, b, data))


def random_program(proto: str, rng: random.Random, max_ops: int = 24) -> Program:
    return Program(proto, tuple(random_op(proto, rng) for _ in range(rng.randint(1, max_ops))))


def _retarget(proto: str, op: Op, rng: random.Random) -> Op:
    name = OPS[proto][op.code].name
    if name == "set":
        return op._replace(b=_state_value(proto, rng))
    if name == "transfer":
        return op._replace(b=rng.choice(SEGMENTS))
    fresh = random_op(proto, rng, op.code)
    return fresh._replace(dev=op.dev)


def mutate(prog: Program, rng: random.Random, donor: Program | None = None) -> Program:
    """One op-level mutation."""
    proto = prog.proto
    ops = list(prog.ops)
    choice = rng.randrange(8)
    n = len(ops)
    if choice == 0 or n == 0:  # insert
        if n < MAX_OPS:
            ops.insert(rng.randint(0, n), random_op(proto, rng))
    elif choice == 1 and n > 1:  # delete
        del ops[rng.randrange(n)]
    elif choice == 2 and n < MAX_OPS:  # duplicate
        i = rng.randrange(n)
        ops.insert(i + 1, ops[i])
    elif choice == 3 and n > 1:  # swap neighbours
        i = rng.randrange(n - 1)
        ops[i], ops[i + 1] = ops[i + 1], ops[i]
    elif choice in (4, 5):  # retarget a state / tweak an argument
        i = rng.randrange(n)
        ops[i] = _retarget(proto, ops[i], rng)
    elif choice == 6:  # move to the other device
        i = rng.randrange(n)
        ops[i] = ops[i]._replace(dev=1 - ops[i].dev)
    else:  # splice from a donor (or itself)
        other = list((donor or prog).ops)
        if other:
            i, j = rng.randint(0, n), rng.randrange(len(other))
            ops = ops[:i] + other[j:j + rng.randint(1, 6)] + ops[i:]
    return Program(proto, tuple(ops[:MAX_OPS]))


def crossover(a: Program, b: Program, rng: random.Random) -> Program:
    i = rng.randint(0, len(a.ops))
    j = rng.randint(0, len(b.ops))
    return Program(a.proto, (a.ops[:i] + b.ops[j:])[:MAX_OPS])


def trim_payload(prog: Program) -> Program:
    """Keep the total payload within what the binary form can carry."""
    total = 0
    ops = []
    for op in prog.ops:
        total += len(op.data)
        ops.append(op if total <= MAX_PAYLOAD else op._replace(data=b""))
    return Program(prog.proto, tuple(ops))


__all__ = ["OPCODES", "crossover", "mutate", "random_op", "random_program", "trim_payload"]
