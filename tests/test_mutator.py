"""Mutation quality of the op-level mutator (fuzz/mutator.py): what kinds of change it makes, counted.

The input programs are built from records whose device byte marks where each record came
from (0x40+i: the input, 0xd0+i: the donor; the codec takes the device modulo 2, so these
are valid records), so every output of ``mutate_bytes`` can be classified by comparing
records: insert, delete, duplicate, swap of neighbours, argument change, device move,
splice. Over a fixed seed every kind must occur often; a mutator that only ever inserts
(or never splices, or never deletes ...) fails. Behaviour is counted, speed is not.
"""
from __future__ import annotations

import random
from collections import Counter

import pytest

from fuzz import codec, mutator
from fuzz.program import MAX_OPS, MAX_PAYLOAD, OPCODES, OPS, Program

CALLS = 4000
KINDS = ("insert", "delete", "duplicate", "swap", "args", "device", "splice")


def records_of(data: bytes) -> list[bytes]:
    n = codec.record_count(data)
    return [data[1 + 8 * i:9 + 8 * i] for i in range(n)]


def payload_of(data: bytes) -> bytes:
    return data[1 + 8 * codec.record_count(data):]


def make(proto: str, names: list[str], mark: int, payload: bytes = b"") -> bytes:
    """A binary program with one record per op name, device byte ``mark + i``, distinct arguments."""
    out = bytearray([len(names)])
    for i, name in enumerate(names):
        code = OPCODES[proto][name]
        out += codec.RECORD.pack(code, mark + i, i, (i + 1) * 3 | (len(payload) and 1 << 16))
    return bytes(out + payload)


V2_NAMES = ["set", "read", "write", "drain", "set", "transfer", "get", "precopy", "fault", "set"]
V1_NAMES = ["set", "save", "wrwin", "drain", "set", "transfer", "rd", "wr", "fault", "set"]
NAMES = {"v2": V2_NAMES, "v1": V1_NAMES}


def classify(before: list[bytes], after: list[bytes]) -> str:
    n, m = len(before), len(after)
    if m > n:
        k = m - n
        for i in range(m - k + 1):
            if after[:i] + after[i + k:] == before:
                added = after[i:i + k]
                if all(r[1] >= 0xD0 for r in added):
                    return "splice"
                if k == 1 and i > 0 and added[0] == after[i - 1] and 0x40 <= added[0][1] < 0x80:
                    return "duplicate"
                if k == 1 and added[0][1] < 2:
                    return "insert"
        return "other-grow"
    if m == n - 1:
        for i in range(n):
            if before[:i] + before[i + 1:] == after:
                return "delete"
        return "other-shrink"
    if m != n:
        return "other-length"
    diff = [i for i in range(n) if before[i] != after[i]]
    if not diff:
        return "same"
    if len(diff) == 2 and diff[1] == diff[0] + 1 and before[diff[0]] == after[diff[1]] \
            and before[diff[1]] == after[diff[0]]:
        return "swap"
    if len(diff) == 1:
        b, a = before[diff[0]], after[diff[0]]
        if a[0] == b[0] and a[2:] == b[2:] and a[1] == b[1] ^ 1:
            return "device"
        if a[:2] == b[:2]:
            return "args"
    return "other"


def check_output(proto: str, out: bytes) -> None:
    """Every output is a well-formed input: decodes, within MAX_OPS records and the payload limit."""
    assert 1 <= len(out) and out[0] <= MAX_OPS
    assert codec.record_count(out) == out[0], "no cut or missing record"
    assert len(payload_of(out)) <= MAX_PAYLOAD
    prog = codec.decode(out, proto)
    assert len(prog.ops) == out[0]
    assert sum(len(op.data) for op in prog.ops) <= MAX_PAYLOAD * MAX_OPS
    assert codec.decode(codec.encode(mutator.trim_payload(prog)), proto) == mutator.trim_payload(prog)


@pytest.mark.parametrize("proto", sorted(OPS))
def test_every_kind_of_change_occurs(proto):
    rng = random.Random(20240611)
    data = make(proto, NAMES[proto], 0x40, b"\x11\x22\x33\x44")
    donor = make(proto, NAMES[proto][::-1], 0xD0, b"\x99")
    before = records_of(data)
    kinds = Counter()
    for _ in range(CALLS):
        out = mutator.mutate_bytes(proto, data, rng, donor)
        check_output(proto, out)
        assert payload_of(out).startswith(payload_of(data)), "the payload area is kept (references stay valid)"
        kinds[classify(before, records_of(out))] += 1
    assert not [k for k in kinds if k.startswith("other")], kinds
    # each kind is drawn about 1/8 of the time (arguments 1/4): require a solid share of each
    for kind in KINDS:
        assert kinds[kind] >= CALLS // 20, (kind, kinds)
    assert kinds["args"] >= CALLS // 8, kinds
    assert kinds["same"] <= CALLS // 10, kinds  # mutations that change nothing are rare


@pytest.mark.parametrize("proto", sorted(OPS))
def test_argument_changes_retarget_states(proto):
    # the set ops' state values change, to many different values, mostly valid states
    rng = random.Random(7)
    data = make(proto, ["set"] * 4, 0x40)
    values = Counter()
    for _ in range(2000):
        out = records_of(mutator.mutate_bytes(proto, data, rng))
        for r in out:
            if r[1] in (0x40, 0x41, 0x42, 0x43) and r[0] == OPCODES[proto]["set"]:
                b = codec.RECORD.unpack(r)[3]
                values[b] += 1
    changed = {v for v in values if v not in (3, 6, 9, 12)}
    assert len(changed) >= 7, values
    valid = sum(n for v, n in values.items() if 0 < v < 8 and v not in (3, 6))
    assert valid > 0


def test_an_empty_program_grows():
    rng = random.Random(3)
    for proto in OPS:
        for data in (b"", b"\x00", b"\x05"):
            out = mutator.mutate_bytes(proto, data, rng)
            check_output(proto, out)
            assert out[0] == 1, out  # an insert, whatever was drawn


@pytest.mark.parametrize("proto", sorted(OPS))
def test_chains_of_mutations_stay_within_limits(proto):
    rng = random.Random(11)
    data = make(proto, NAMES[proto], 0x40)
    donor = make(proto, NAMES[proto] * 4, 0xD0)  # 40 records: splices push toward MAX_OPS
    full = shrunk = 0
    for i in range(3000):
        data = mutator.mutate_bytes(proto, data, rng, donor if i % 2 else None)
        check_output(proto, data)
        if data[0] == MAX_OPS:
            full += 1
        elif full:
            shrunk += 1
    assert full, "a long chain reaches the op limit"
    assert shrunk, "and deletes bring a full program back below it"


@pytest.mark.parametrize("proto", sorted(OPS))
def test_payload_never_exceeds_the_limit(proto):
    rng = random.Random(5)
    name = "write" if proto == "v2" else "wrwin"
    data = make(proto, [name] * 3, 0x40, bytes(MAX_PAYLOAD - 8))
    for _ in range(2000):
        data = mutator.mutate_bytes(proto, data, rng)
        check_output(proto, data)


@pytest.mark.parametrize("proto", sorted(OPS))
def test_crossover_mixes_both_parents(proto):
    rng = random.Random(9)
    a = make(proto, NAMES[proto], 0x40, b"\xaa\xbb")
    b = make(proto, NAMES[proto][::-1], 0xD0, b"\xcc")
    ra, rb = records_of(a), records_of(b)
    both = only_a = only_b = 0
    for _ in range(1000):
        out = mutator.crossover_bytes(a, b, rng)
        check_output(proto, out)
        rec = records_of(out)
        head = [r for r in rec if r[1] < 0xD0]
        tail = [r for r in rec if r[1] >= 0xD0]
        # a head of a, then a tail of b, in order
        assert rec == head + tail
        assert head == ra[:len(head)] and (not tail or tail == rb[len(rb) - len(tail):])
        assert payload_of(out) == payload_of(a)
        both += bool(head and tail)
        only_a += bool(head and not tail)
        only_b += bool(tail and not head)
    assert both >= 500, both
    assert only_a and only_b


@pytest.mark.parametrize("proto", sorted(OPS))
def test_crossover_of_two_full_programs_keeps_at_most_max_ops_head_first(proto):
    names = (NAMES[proto] * MAX_OPS)[:MAX_OPS]
    a, b = make(proto, names, 0x10, b"\x01\x02"), make(proto, names, 0x80)
    rng = random.Random(3)
    for _ in range(300):
        out = mutator.crossover_bytes(a, b, rng)
        check_output(proto, out)
        rec = records_of(out)
        head = [r for r in rec if r[1] < 0x80]
        tail, rb = rec[len(head):], records_of(b)
        assert head == records_of(a)[:len(head)]
        assert not tail or any(rb[j:j + len(tail)] == tail for j in range(len(rb)))  # a run of b's, cut at MAX_OPS
        assert payload_of(out) == b"\x01\x02"


def test_program_level_wrappers():
    rng = random.Random(2)
    for proto in OPS:
        a = mutator.random_program(proto, rng)
        while len(a.ops) < 3:  # a one-op program has no neighbours to swap and nothing to delete
            a = mutator.random_program(proto, rng)
        b = mutator.random_program(proto, rng)
        changed = 0
        for _ in range(300):
            m = mutator.mutate(a, rng, b)
            assert isinstance(m, Program) and m.proto == proto and len(m.ops) <= MAX_OPS
            changed += m != a
            c = mutator.crossover(a, b, rng)
            assert c.proto == proto and len(c.ops) <= MAX_OPS
        assert changed >= 240


@pytest.mark.parametrize("proto", sorted(OPS))
def test_random_programs_use_every_op_and_valid_states(proto):
    rng = random.Random(4)
    codes = Counter()
    states = Counter()
    lengths = Counter()
    for _ in range(2000):
        prog = mutator.random_program(proto, rng)
        lengths[len(prog.ops)] += 1
        for op in prog.ops:
            codes[op.code] += 1
            if OPS[proto][op.code].name == "set":
                states[op.b] += 1
    assert set(codes) == set(range(len(OPS[proto])))
    assert min(lengths) == 1 and max(lengths) == 24
    total = sum(states.values())
    top = range(1, 8) if proto == "v2" else range(0, 8)
    assert sum(states[s] for s in top) > total * 0.7  # mostly states that exist
    assert sum(n for s, n in states.items() if s not in top) > total * 0.05  # and some that do not


def test_an_input_is_cut_into_records_and_payload_as_the_codec_reads_it():
    """``mutator._split`` (one struct per record count) against the codec's reading, on inputs of
    every length, empty and short ones included."""
    rng = random.Random(7)
    inputs = [b"", b"\x00", b"\x05", b"\x01" + bytes(7)] + [rng.randbytes(rng.randrange(1, 420)) for _ in range(500)]
    for data in inputs:
        records, payload = mutator._split(data)
        assert records == records_of(data) and payload == payload_of(data)
        assert b"".join(records) + payload == data[1:]  # nothing lost, nothing moved
