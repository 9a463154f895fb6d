"""Programs: text form (fuzz/program.py), binary form (fuzz/codec.py), mutation (fuzz/mutator.py)."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import codec, mutator
from fuzz.program import (
    FAULT_KINDS,
    FIX_KINDS,
    MANGLE_KINDS,
    MAX_OPS,
    MAX_PAYLOAD,
    NDEVICES,
    OPCODES,
    OPS,
    RACE_CALLS,
    SIZES,
    SLOT_RANGE,
    Op,
    Program,
    ProgramError,
    applies,
    field_value,
    format_program,
    mangle_args,
    normalize,
    op_filter,
    parse_program,
    race_args,
    without_ops,
)
from harness.uapi import V1_FIELD_NAMES, MigState

# Canonical texts using every op of each protocol (and every symbolic value).
CANONICAL = {
    "v2": """migfuzz-program 1 v2
reset 0
activity 1 seed=4660
fault 0 nth=3 kind=nomem
fault 1 nth=15 kind=hwerror
fault 0 nth=0 kind=timeout
fault 0 nth=1 kind=eintr
mangle 0 kind=truncate arg=5
mangle 1 kind=extend arg=65535
mangle 0 kind=flip arg=100
mangle 0 kind=drop arg=0
mangle 0 kind=dup arg=2
mangle 0 kind=swap arg=1
mangle 0 kind=set off=227 width=1 value=0x30 fix=crc32 at=4
mangle 1 kind=add off=32767 width=8 value=-65536 fix=sum16be at=255
mangle 0 kind=set off=0 width=2 value=0xffff fix=none
transfer 0 dst=1 seg=16
transfer 1 dst=0 seg=2000
set 0 state=ERROR
set 0 state=STOP
set 0 state=RUNNING
set 0 state=STOP_COPY
set 0 state=RESUMING
set 0 state=RUNNING_P2P
set 0 state=PRE_COPY
set 1 state=PRE_COPY_P2P
set 0 state=8
set 0 state=4294967295
get 1
read 0 fd=0 n=64
read 1 fd=3 n=4096
drain 0 fd=1
write 1 fd=0 data=00ff10
write 1 fd=2 data=
close 0 fd=0
seek 1 fd=2
precopy 0 fd=0
datasize 1
feature 0 argsz=16 flags=0x10001
feature 1 argsz=0 flags=0x0
reopen 1
rdreg 0 region=0 off=0x0 size=1
rdreg 1 region=7 off=0x3ff size=8
wrreg 0 region=0 off=0x3 size=1 value=0x80
wrreg 1 region=15 off=0x10 size=4 value=0xffffffff
race 0 x=reset xarg=0 y=read yarg=0 sched=0 data=
race 1 x=set xarg=3 y=close yarg=1 sched=15 data=
race 0 x=write xarg=0 y=reopen yarg=0 sched=7 data=00ff
race 1 x=get xarg=7 y=precopy yarg=7 sched=8 data=
""",
    "v1": """migfuzz-program 1 v1
reset 1
activity 0 seed=17
fault 0 nth=1 kind=hwerror
mangle 1 kind=flip arg=7
transfer 0 dst=1 seg=0
set 0 value=0b000
set 0 value=0b001
set 0 value=0b010
set 0 value=0b011
set 0 value=0b100
set 0 value=0b101
set 0 value=0b110
set 0 value=0b111
set 1 value=0x9
set 1 value=0xffffffff
get 0
rd 0 field=device_state
rd 0 field=reserved
rd 0 field=pending_bytes
rd 0 field=data_offset
rd 0 field=data_size
wr 1 field=pending_bytes value=0x5
wr 1 field=data_size value=0x0
save 0
drain 1
rdwin 0 n=64
wrwin 1 data=deadbeef
reopen 1
rdreg 0 region=0 off=0x0 size=1
rdreg 1 region=7 off=0x3ff size=8
wrreg 0 region=0 off=0x3 size=1 value=0x80
wrreg 1 region=15 off=0x10 size=4 value=0xffffffff
race 0 x=set xarg=4 y=reset yarg=0 sched=2 data=
""",
}


@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_canonical_text_round_trip(proto):
    text = CANONICAL[proto]
    prog = parse_program(text)
    assert prog.proto == proto
    assert format_program(prog) == text
    assert prog.text() == text
    assert parse_program(format_program(prog)) == prog


@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_canonical_text_uses_every_op(proto):
    prog = parse_program(CANONICAL[proto])
    assert {op.code for op in prog.ops} == set(range(len(OPS[proto])))
    assert set(OPCODES[proto]) == {spec.name for spec in OPS[proto]}


def test_canonical_values():
    prog = parse_program(CANONICAL["v2"])
    by_text = dict(zip(CANONICAL["v2"].splitlines()[1:], prog.ops, strict=True))
    assert by_text["set 0 state=PRE_COPY"] == Op(OPCODES["v2"]["set"], 0, 0, int(MigState.PRE_COPY))
    assert by_text["set 0 state=4294967295"].b == 0xFFFFFFFF
    assert by_text["write 1 fd=0 data=00ff10"].data == b"\x00\xff\x10"
    assert by_text["fault 1 nth=15 kind=hwerror"] == Op(OPCODES["v2"]["fault"], 1, 15, FAULT_KINDS.index("hwerror"))
    assert by_text["feature 0 argsz=16 flags=0x10001"] == Op(OPCODES["v2"]["feature"], 0, 16, 0x10001)
    v1 = parse_program(CANONICAL["v1"])
    rd = [op for op in v1.ops if op.code == OPCODES["v1"]["rd"]]
    assert [op.a for op in rd] == list(range(len(V1_FIELD_NAMES)))


@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_random_programs_text_round_trip(proto):
    for seed in range(300):
        prog = mutator.random_program(proto, random.Random(seed), max_ops=MAX_OPS)
        text = format_program(prog)
        assert parse_program(text) == prog, seed
        assert format_program(parse_program(text)) == text


def test_comments_and_blank_lines_ignored():
    text = """

# a leading comment
   migfuzz-program 1 v2   # header comment

set 0 state=STOP   # trailing comment
    # indented comment
get 0

"""
    prog = parse_program(text)
    assert prog == parse_program("migfuzz-program 1 v2\nset 0 state=STOP\nget 0\n")
    assert len(prog.ops) == 2
    # CRLF line ends too
    assert parse_program("migfuzz-program 1 v2\r\nget 0\r\n") == Program("v2", (Op(OPCODES["v2"]["get"], 0),))


def test_header_only_program_is_empty():
    assert parse_program("migfuzz-program 1 v1\n") == Program("v1", ())


def test_normalize_reduces_values_into_range():
    set_code = OPCODES["v2"]["set"]
    read_code = OPCODES["v2"]["read"]
    assert normalize("v2", Op(read_code, 3, 7, 5000)) == Op(read_code, 1, 3, 5000 % 4097)
    assert normalize("v2", Op(set_code, 0, 99, 1 << 40)) == Op(set_code, 0, 0, 0)
    with pytest.raises(ProgramError, match="out of range"):  # the text form refuses what decode would wrap
        parse_program("migfuzz-program 1 v2\nread 0 fd=5 n=1\n")


def _normalized_by_the_rules(proto: str, op: Op) -> Op:
    """normalize() as Field.when defines it, field by field through applies()."""
    fields = OPS[proto][op.code].fields
    a, b, data = 0, 0, b""
    for f in fields:
        if not applies(fields, f, op):
            continue
        if f.slot == "data":
            data = bytes(op.data[:MAX_PAYLOAD])
        elif f.shift >= 0:
            a |= field_value(f, op) << f.shift if f.slot == "a" else 0
            b |= field_value(f, op) << f.shift if f.slot == "b" else 0
        elif f.slot == "a":
            a = op.a % f.limit if f.limit else op.a & 0xFFFF
        else:
            b = op.b % f.limit if f.limit else op.b & 0xFFFFFFFF
    return Op(op.code, op.dev % NDEVICES, a, b, data)


@given(st.sampled_from(sorted(OPS)), st.data())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_normalize_drops_exactly_the_fields_not_in_use(proto, data):
    code = data.draw(st.integers(0, len(OPS[proto]) - 1) | st.just(OPCODES[proto]["mangle"]))  # mangle: when chains
    a = data.draw(st.integers(0, 0xFFFF) | st.sampled_from(range(0, 0x10000, 0x7F3)))
    op = Op(code, data.draw(st.integers(0, 255)), a, data.draw(st.integers(0, 0xFFFFFFFF)), data.draw(st.binary()))
    assert normalize(proto, op) == _normalized_by_the_rules(proto, op)


BAD_PROGRAMS = [
    ("", "empty"),
    ("# only a comment\n\n", "empty"),
    ("set 0 state=STOP\n", "header"),
    ("migfuzz-program\n", "header"),
    ("migfuzz-program 1\n", "header"),
    ("migfuzz-program 1 v2 extra\n", "header"),
    ("migfuz-program 1 v2\n", "header"),
    ("migfuzz-program 2 v2\n", "version"),
    ("migfuzz-program one v2\n", "version"),
    ("migfuzz-program 1 v3\n", "protocol"),
    ("migfuzz-program 1 v2\nfrobnicate 0\n", "unknown"),
    ("migfuzz-program 1 v2\nrd 0 field=reserved\n", "unknown"),  # a v1 op in a v2 program
    ("migfuzz-program 1 v1\nprecopy 0 fd=0\n", "unknown"),  # a v2 op in a v1 program
    ("migfuzz-program 1 v2\nset\n", "device"),
    ("migfuzz-program 1 v2\nset 2 state=STOP\n", "device"),
    ("migfuzz-program 1 v2\nset x state=STOP\n", "device"),
    ("migfuzz-program 1 v2\nset -1 state=STOP\n", "device"),
    ("migfuzz-program 1 v2\nset state=STOP\n", "device"),
    ("migfuzz-program 1 v2\nset 0 state=BOGUS\n", "state"),
    ("migfuzz-program 1 v2\nset 0 stat=STOP\n", "stat=STOP"),
    ("migfuzz-program 1 v2\nset 0 STOP\n", "STOP"),
    ("migfuzz-program 1 v2\nread 0 fd=abc n=1\n", "fd"),
    ("migfuzz-program 1 v2\nwrite 0 fd=0 data=xyz\n", "data"),
    ("migfuzz-program 1 v2\nwrite 0 fd=0 data=abc\n", "data"),  # odd hex
    ("migfuzz-program 1 v2\nfault 0 nth=1 kind=meltdown\n", "kind"),
    ("migfuzz-program 1 v2\nmangle 0 kind=shred arg=1\n", "kind"),
    ("migfuzz-program 1 v1\nrd 0 field=nonsense\n", "field"),
    ("migfuzz-program 1 v2\nget 0 extra=1\n", "extra=1"),
    ("migfuzz-program 1 v2\n" + "get 0\n" * (MAX_OPS + 1), str(MAX_OPS)),
]


@pytest.mark.parametrize("text,needle", BAD_PROGRAMS)
def test_bad_programs(text, needle):
    with pytest.raises(ProgramError) as info:
        parse_program(text)
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    assert needle.lower() in message.lower(), message


def test_error_names_the_line():
    with pytest.raises(ProgramError, match=r"^line 3: "):
        parse_program("migfuzz-program 1 v2\nget 0\nfrobnicate 0\n")


def test_error_line_number_counts_blank_and_comment_lines():
    text = "migfuzz-program 1 v2\n# comment\nget 0\n\nfrobnicate 0\n"
    with pytest.raises(ProgramError, match=r"^line 5: "):
        parse_program(text)


def test_max_ops_accepted():
    assert len(parse_program("migfuzz-program 1 v2\n" + "get 0\n" * MAX_OPS).ops) == MAX_OPS


def test_text_is_never_read_as_binary():
    from fuzz.crashfile import looks_like_text

    assert looks_like_text(b"migfuzz-program 1 v2\n")
    assert looks_like_text(b"\n  migfuzz-program 1 v1\n")
    assert looks_like_text(b"hello world\n")
    assert looks_like_text("\ufeffmigfuzz-program 1 v2\n".encode())
    assert not looks_like_text(b"\x03\x00\x01")
    assert not looks_like_text(b"")


def test_leading_comments_are_allowed():
    text = "# migfuzz finding: x\n#\nmigfuzz-program 1 v2\nget 0\n"
    assert parse_program(text).ops


@pytest.mark.parametrize("line,limit", [
    ("read 0 fd=0 n=4294967295", "0..4096"),
    ("read 0 fd=0 n=-1", "0..4096"),
    ("read 0 fd=4 n=1", "0..3"),
    ("transfer 0 dst=2 seg=0", "0..1"),
    ("transfer 0 dst=1 seg=65536", "0..65535"),
    ("fault 0 nth=4294967295 kind=nomem", "0..15"),
    ("fault 0 nth=16 kind=nomem", "0..15"),
    ("mangle 0 kind=flip arg=65536", "0..65535"),
    ("feature 0 argsz=65536 flags=0x1", "0..65535"),
    ("set 0 state=4294967296", "0..4294967295"),
])
def test_out_of_range_values_are_errors_naming_the_limit(line, limit):
    with pytest.raises(ProgramError, match=r"^line 2: .*out of range \(" + limit.replace(".", r"\.") + r"\)"):
        parse_program("migfuzz-program 1 v2\n" + line + "\n")


def test_payload_limit_is_an_error():
    big = "00" * (MAX_PAYLOAD + 1)
    with pytest.raises(ProgramError, match=f"at most {MAX_PAYLOAD}"):
        parse_program(f"migfuzz-program 1 v2\nwrite 0 fd=0 data={big}\n")
    half = "00" * (MAX_PAYLOAD // 2 + 1)
    with pytest.raises(ProgramError, match=f"at most {MAX_PAYLOAD}"):
        parse_program(f"migfuzz-program 1 v2\nwrite 0 fd=0 data={half}\nwrite 0 fd=0 data={half}\n")


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_limits() -> dict:
    """The README's limits table (section "## Programs", after "**Limits.**"): (op, argument) -> the
    code spans of its values cell (an op cell without backticks, e.g. "program", is kept as is)."""
    section = README.read_text().split("\n## Programs\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("**Limits.**", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        ops_cell, arg_cell, values_cell = (c.strip() for c in line.strip("|").split(" | "))
        ops = re.findall(r"`([^`]+)`", ops_cell) or [ops_cell]
        args = re.findall(r"`([^`]+)`", arg_cell) or [arg_cell]
        values = [v.replace("\\|", "|") for v in re.findall(r"`([^`]+)`", values_cell)]
        for op in ops:
            for arg in args:
                assert (op, arg) not in rows, f"{op} {arg} twice in the README's limits table"
                rows[op, arg] = values
    return rows


def stated_values(f) -> list:
    """What the README must say about field ``f``, from its definition in fuzz/program.py."""
    names = {"fault": FAULT_KINDS, "mangle": MANGLE_KINDS, "fix": FIX_KINDS, "race": RACE_CALLS,
             "v1field": V1_FIELD_NAMES, "size": [str(s) for s in SIZES]}
    if f.kind in names:
        assert f.limit == len(names[f.kind])
        return ["|".join(names[f.kind])]
    if f.kind == "bytes":
        return [str(MAX_PAYLOAD)]
    top = (f.limit or SLOT_RANGE[f.slot]) - 1
    if f.kind == "signed":
        return [f"{-(f.limit >> 1)}..{(f.limit >> 1) - 1}"]
    if f.kind == "state":
        return [f"0..{top}", "|".join(MigState.__members__)]
    return [f"0..{top}"]


def test_readme_states_every_limit_of_program_py():
    """Every argument of every op, the device index and the program's size limits are in the README
    with the ranges fuzz/program.py defines, and the parser refuses the first value past each."""
    rows = readme_limits()
    expected = {("program", "ops"): [str(MAX_OPS)],
                ("program", "payload bytes, all ops together"): [str(MAX_PAYLOAD)],
                ("every op", "device (after the op name)"): [f"0..{NDEVICES - 1}"]}
    for proto, table in OPS.items():
        for spec in table:
            for f in spec.fields:
                values = stated_values(f)
                assert expected.setdefault((spec.name, f.name), values) == values, (proto, spec.name, f.name)
    assert rows == expected
    # the parser enforces the stated ranges (an error naming them), the top value itself is accepted
    for proto, table in OPS.items():
        for spec in table:
            for f in spec.fields:
                if f.kind not in ("int", "hex", "signed", "state", "v1state"):
                    continue
                lo, hi = map(int, stated_values(f)[0].split(".."))
                for bad in (lo - 1, hi + 1):
                    with pytest.raises(ProgramError, match=rf"out of range \({lo}\.\.{hi}\)"):
                        parse_program(f"migfuzz-program 1 {proto}\n{spec.name} 0 {f.name}={bad}\n")
    with pytest.raises(ProgramError, match=rf"device index 0\.\.{NDEVICES - 1}"):
        parse_program(f"migfuzz-program 1 v2\nget {NDEVICES}\n")
    parse_program("migfuzz-program 1 v2\n" + "get 0\n" * MAX_OPS)
    with pytest.raises(ProgramError, match=f"at most {MAX_OPS}"):
        parse_program("migfuzz-program 1 v2\n" + "get 0\n" * (MAX_OPS + 1))


def test_bad_header_names_the_line():
    for text in ("Migfuzz-Program 1 v2\nget 0\n", "hello world\n", "# c\nmigfuzz-program 2 v2\n"):
        with pytest.raises(ProgramError, match=r"^line \d+: "):
            parse_program(text)


# ---------------------------------------------------------------------------
# binary form
# ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.sampled_from(["v1", "v2"]))
def test_every_byte_string_decodes(data, proto):
    prog = codec.decode(data, proto)
    assert prog.proto == proto
    assert len(prog.ops) <= MAX_OPS
    for op in prog.ops:
        assert 0 <= op.code < len(OPS[proto])
        assert 0 <= op.dev < NDEVICES
        assert normalize(proto, op) == op  # every field already in range
        assert len(op.data) <= MAX_PAYLOAD
    assert parse_program(format_program(prog)) == prog  # and it has a text form


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["v1", "v2"]))
def test_decode_encode_decode_is_stable(data, proto):
    prog = codec.decode(data, proto)
    try:
        again = codec.encode(prog)
    except ValueError:
        return  # payload references can add up past MAX_PAYLOAD; encode refuses, never corrupts
    assert codec.decode(again, proto) == prog


def test_empty_input_is_empty_program():
    assert codec.decode(b"", "v2") == Program("v2", ())
    assert codec.encode(Program("v1", ())) == b"\x00"


@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_encode_decode_round_trip(proto):
    for seed in range(500):
        prog = mutator.random_program(proto, random.Random(seed), max_ops=MAX_OPS if seed % 2 else 24)
        data = codec.encode(prog)
        assert codec.decode(data, proto) == prog, seed
        assert data[0] == len(prog.ops)
        assert len(data) >= 1 + 8 * len(prog.ops)


@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_round_trip_canonical(proto):
    prog = parse_program(CANONICAL[proto])
    assert codec.decode(codec.encode(prog), proto) == prog


def test_encode_refuses_too_much():
    get = OPCODES["v2"]["get"]
    with pytest.raises(ValueError):
        codec.encode(Program("v2", (Op(get, 0),) * (MAX_OPS + 1)))
    write = OPCODES["v2"]["write"]
    big = tuple(Op(write, 0, 0, 0, bytes([i]) * 200) for i in range(30))
    with pytest.raises(ValueError):
        codec.encode(Program("v2", big))


@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_one_byte_flip_changes_at_most_one_op(proto):
    rng = random.Random(7)
    for seed in range(60):
        prog = mutator.random_program(proto, random.Random(seed), max_ops=16)
        data = codec.encode(prog)
        n = len(prog.ops)
        for pos in range(1, 1 + 8 * n):
            for mask in (0x01, 0x80, 0xFF, rng.randrange(1, 256)):
                mutated = bytearray(data)
                mutated[pos] ^= mask
                got = codec.decode(bytes(mutated), proto)
                assert len(got.ops) == n
                changed = [i for i in range(n) if got.ops[i] != prog.ops[i]]
                assert len(changed) <= 1, (seed, pos, mask, changed)
                if changed:
                    assert changed[0] == (pos - 1) // 8


# ---------------------------------------------------------------------------
# mutation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_mutate_keeps_programs_encodable(proto):
    for seed in range(40):
        rng = random.Random(seed)
        prog = mutator.random_program(proto, rng)
        donor = mutator.random_program(proto, rng)
        for _ in range(150):
            prog = mutator.mutate(prog, rng, donor if rng.random() < 0.3 else None)
            assert prog.proto == proto
            assert len(prog.ops) <= MAX_OPS
            data = codec.encode(prog)
            assert codec.decode(data, proto) == prog
            for op in prog.ops:
                assert normalize(proto, op) == op


def test_mutate_reaches_max_ops_and_empty_programs_grow():
    rng = random.Random(3)
    prog = Program("v2", ())
    longest = 0
    for _ in range(3000):
        prog = mutator.mutate(prog, rng)
        longest = max(longest, len(prog.ops))
        assert len(prog.ops) <= MAX_OPS
    assert longest == MAX_OPS
    assert len(mutator.mutate(Program("v1", ()), random.Random(0)).ops) == 1


def test_crossover_and_trim():
    rng = random.Random(1)
    for _ in range(200):
        a = mutator.random_program("v2", rng, max_ops=MAX_OPS)
        b = mutator.random_program("v2", rng, max_ops=MAX_OPS)
        c = mutator.crossover(a, b, rng)
        assert len(c.ops) <= MAX_OPS
        codec.encode(mutator.trim_payload(c))
    write = OPCODES["v2"]["write"]
    big = Program("v2", tuple(Op(write, 0, 0, 0, bytes([i]) * 300) for i in range(20)))
    trimmed = mutator.trim_payload(big)
    assert sum(len(op.data) for op in trimmed.ops) <= MAX_PAYLOAD
    assert codec.decode(codec.encode(trimmed), "v2") == trimmed


def test_random_op_covers_every_op_and_kind():
    rng = random.Random(0)
    for proto in ("v1", "v2"):
        seen = {mutator.random_op(proto, rng).code for _ in range(2000)}
        assert seen == set(range(len(OPS[proto])))
    kinds = {mangle_args(mutator.random_op("v2", rng, OPCODES["v2"]["mangle"]))[0] for _ in range(500)}
    assert kinds == set(MANGLE_KINDS)


# ---------------------------------------------------------------------------
# mutation on the binary form (what the engine's custom mutator uses)
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(mutator, "mutate_bytes"), reason="no binary-form mutator")
@pytest.mark.parametrize("proto", ["v1", "v2"])
def test_mutate_bytes_keeps_inputs_well_formed(proto):
    limit = 1 + 8 * MAX_OPS + MAX_PAYLOAD
    for seed in range(30):
        rng = random.Random(seed)
        data = codec.encode(mutator.random_program(proto, rng))
        donor = codec.encode(mutator.random_program(proto, rng))
        for _ in range(150):
            before = codec.decode(data, proto)
            data = mutator.mutate_bytes(proto, data, rng, donor if rng.random() < 0.3 else None)
            assert isinstance(data, bytes)
            assert len(data) <= limit
            n = data[0]
            assert n <= MAX_OPS and len(data) >= 1 + 8 * n  # the count byte matches the records
            prog = codec.decode(data, proto)
            assert len(prog.ops) == n
            assert abs(len(prog.ops) - len(before.ops)) <= 6
            for op in prog.ops:
                assert normalize(proto, op) == op
        cross = mutator.crossover_bytes(data, donor, rng)
        assert len(codec.decode(cross, proto).ops) == cross[0] <= MAX_OPS


@pytest.mark.skipif(not hasattr(mutator, "mutate_bytes"), reason="no binary-form mutator")
def test_mutate_bytes_grows_empty_input():
    out = mutator.mutate_bytes("v2", b"", random.Random(0))
    assert len(codec.decode(out, "v2").ops) == 1


# ---------------------------------------------------------------------------
# robustness of the text parser: any text either parses or raises ProgramError
# ---------------------------------------------------------------------------

_FIELD_NAMES = sorted({f.name for table in OPS.values() for spec in table for f in spec.fields})
_OP_NAMES = sorted({spec.name for table in OPS.values() for spec in table})
_VALUE = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="#"),
                 max_size=12)
_WORD = st.one_of(st.sampled_from(_OP_NAMES), st.sampled_from(["0", "1", "2", "01", "-1", "x", ""]),
                  st.builds(lambda n, v: f"{n}={v}", st.sampled_from(_FIELD_NAMES), _VALUE), _VALUE)
_LINE = st.lists(_WORD, min_size=1, max_size=5).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["v1", "v2"]), st.lists(_LINE, max_size=8))
def test_text_parser_never_raises_anything_else(proto, lines):
    text = f"migfuzz-program 1 {proto}\n" + "\n".join(lines) + "\n"
    try:
        prog = parse_program(text)
    except ProgramError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert parse_program(format_program(prog)) == prog


def test_superscript_device_index_is_a_program_error():
    with pytest.raises(ProgramError):
        parse_program("migfuzz-program 1 v2\nset \u00b2 state=STOP\n")


def test_disabled_ops_and_the_races_that_call_them_are_dropped():
    prog = parse_program("migfuzz-program 1 v2\nset 0 state=RESUMING\nreopen 0\nrace 0 x=reopen xarg=0 y=set yarg=4 "
                         "sched=5 data=\nrace 0 x=get xarg=0 y=read yarg=0 sched=0 data=\nset 0 state=STOP\n")
    names = frozenset({"reopen"})
    kept = without_ops(prog, op_filter("v2", names), names)
    assert [OPS["v2"][op.code].name for op in kept.ops] == ["set", "race", "set"]
    assert race_args(kept.ops[1])[0][0] == "get"
    assert without_ops(prog, op_filter("v2", ()), frozenset()) is prog  # nothing disabled: the same program
    assert without_ops(kept, op_filter("v2", names), names) is kept  # nothing to drop: no copy
    with pytest.raises(ProgramError, match="no such op or race call: wat"):
        op_filter("v2", {"wat", "reopen"})
    with pytest.raises(ProgramError):
        op_filter("v2", {"rdwin"})  # a v1 op
