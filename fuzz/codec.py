"""Binary form of programs: what the fuzzing engine mutates.

Layout::

    byte 0          number of op records N (taken modulo MAX_OPS + 1)
    N x 8 bytes     records: code u8, dev u8, a u16, b u32 (little endian)
    the rest        payload: bytes that write ops take, by reference

Every byte string decodes to a valid program: codes, devices and arguments are
reduced into range, a record cut short by the end of the input is dropped, and a
write op's ``b`` is a reference ``offset | length << 16`` into the payload.
Records have a fixed width, so flipping a byte changes one op and never shifts
the parse of the ops after it.
"""
from __future__ import annotations

import struct

from .program import MAX_OPS, MAX_PAYLOAD, NDEVICES, OPS, Op, Program, normalize

RECORD = struct.Struct("<BBHI")


def _limits(proto: str) -> tuple:
    """Per op code: (a modulus, b modulus, takes payload, has fields that exist only with others)."""
    out = []
    for spec in OPS[proto]:
        a_lim, b_lim, has_data = 1, 1, False
        conditional = any(f.when for f in spec.fields)
        for f in spec.fields:
            if f.slot == "data":
                has_data = True
            elif f.slot == "a":
                a_lim = 1 << 16 if f.shift >= 0 else f.limit or 1 << 16  # packed fields fill the slot
            else:
                b_lim = 1 << 32 if f.shift >= 0 else f.limit or 1 << 32
        out.append((a_lim, b_lim, has_data, conditional))
    return tuple(out)


LIMITS = {proto: _limits(proto) for proto in OPS}


def record_count(data: bytes) -> int:
    """How many whole op records an input holds (its count byte, capped by its length)."""
    return min(data[0] % (MAX_OPS + 1), (len(data) - 1) // RECORD.size) if data else 0


# record -> op, for the records that take no payload: a campaign decodes every input it runs,
# and most of an input's records are its parent's (a mutation changes one), so an op is
# built once (ops are immutable tuples; cleared when it grows past _MEMO_LIMIT entries).
_OPS_OF_RECORD: dict = {proto: {} for proto in OPS}
_MEMO_LIMIT = 1 << 16


def _op(proto: str, record: tuple, payload: bytes) -> tuple:
    """(op, whether it depends on the record alone)."""
    code, dev, a, b = record
    code %= len(LIMITS[proto])
    a_lim, b_lim, has_data, conditional = LIMITS[proto][code]
    if conditional:  # bits of fields not in use (a mangle's arg or its field change) are dropped
        return normalize(proto, Op(code, dev % NDEVICES, a, b)), True
    if has_data:
        plen = len(payload)
        chunk = payload[(b & 0xFFFF) % plen:(b & 0xFFFF) % plen + (b >> 16)] if plen else b""
        return Op(code, dev % NDEVICES, a % a_lim, 0, chunk), False
    return Op(code, dev % NDEVICES, a % a_lim, b % b_lim, b""), True


def decode(data: bytes, proto: str) -> Program:
    """Bytes -> program (never fails)."""
    if not data:
        return Program(proto, ())
    end = 1 + record_count(data) * RECORD.size
    payload = data[end:end + MAX_PAYLOAD]
    memo = _OPS_OF_RECORD[proto]
    ops = []
    for record in RECORD.iter_unpack(data[1:end]):
        op = memo.get(record)
        if op is None:
            op, alone = _op(proto, record, payload)
            if alone:
                if len(memo) >= _MEMO_LIMIT:
                    memo.clear()
                memo[record] = op
        ops.append(op)
    return Program(proto, tuple(ops))


def encode(prog: Program) -> bytes:
    """Program -> bytes, such that ``decode(encode(p)) == p``."""
    if len(prog.ops) > MAX_OPS:
        raise ValueError(f"at most {MAX_OPS} ops")
    limits = LIMITS[prog.proto]
    payload = bytearray()
    records = [bytes([len(prog.ops)])]
    for op in prog.ops:
        b = op.b
        if limits[op.code][2]:
            data = op.data[:0xFFFF]
            found = payload.find(data) if data else 0
            if found < 0 or found > 0xFFFF or not data:
                found = len(payload) if data else 0
                payload += data
            b = found | len(data) << 16
        records.append(RECORD.pack(op.code, op.dev, op.a, b))
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload larger than {MAX_PAYLOAD} bytes")
    return b"".join(records) + bytes(payload)
