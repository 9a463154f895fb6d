"""Stream field inference (fuzz/layout.py), field changes in transport (harness.runtime.mangle set/add
with a checksum fix-up) and the mutations built on them (fuzz.mutator.FieldEdits, OpGroups)."""
from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest

from fuzz import codec, layout, mutator
from fuzz.executor import Executor
from fuzz.program import OPS, mangle_args, normalize, parse_program
from harness import runtime
from harness.sim import SimTarget, stream, uart

ROOT = Path(__file__).resolve().parent.parent
# where a stop-and-copy stream of the simulator keeps the UART's FIFO indices and its checksum
UART_AT = stream.FULL_SIZE - stream.END_RECORD_SIZE - uart.STATE_SIZE
HEAD_AT = UART_AT + uart.NREGS + uart.FIFO_SIZE
TAIL_AT = HEAD_AT + 1


# ----------------------------------------------------------------------------- harness.runtime.mangle


def test_set_writes_a_little_endian_field_and_wraps_its_value():
    cap = bytearray(8)
    runtime.mangle(cap, "set", 2, 2, 0x1234)
    assert cap == bytes.fromhex("0000341200000000")
    runtime.mangle(cap, "set", 4, 4, -1)  # small negatives: all ones at the field's width
    assert cap == bytes.fromhex("00003412ffffffff")
    runtime.mangle(cap, "set", 9, 1, 0x1AB)  # the offset wraps at the length, the value at the width
    assert cap == bytes.fromhex("00ab3412ffffffff")
    runtime.mangle(cap, "set", 6, 8, 0x0102030405)  # bytes past the end are left out
    assert cap == bytes.fromhex("00ab3412ffff0504") and len(cap) == 8


def test_add_moves_a_field_by_its_value():
    cap = bytearray(b"\x00\xff\x00\x10")
    runtime.mangle(cap, "add", 1, 2, 1)  # 0x00ff + 1, the carry into the next byte
    assert cap == b"\x00\x00\x01\x10"
    runtime.mangle(cap, "add", 3, 1, -0x11)
    assert cap == b"\x00\x00\x01\xff"


def test_fix_recomputes_a_trailing_checksum_after_the_change():
    body = bytes(range(40))
    cap = bytearray(body + struct.pack("<I", zlib.crc32(body)))
    runtime.mangle(cap, "set", 7, 1, 0x80, "crc32", 4)
    assert cap[7] == 0x80 and struct.unpack("<I", cap[-4:])[0] == zlib.crc32(bytes(cap[:-4]))
    big = bytearray(body + b"\0\0")
    runtime.mangle(big, "set", 0, 1, 5, "sum16be", 2)
    assert big[-2:] == (sum(big[:-2]) & 0xFFFF).to_bytes(2, "big")
    small = bytearray(body + b"\0")
    runtime.mangle(small, "add", 3, 1, 1, "sum8", 1)
    assert small[-1] == sum(small[:-1]) & 0xFF


def test_no_fix_when_the_checksum_does_not_fit():
    for fix, at in (("crc32", 3), ("sum32", 2), ("crc32", 41)):  # past the start, or cut by the end
        cap = bytearray(range(40))
        runtime.mangle(cap, "set", 0, 1, 0xAA, fix, at)
        assert cap == bytes([0xAA]) + bytes(range(1, 40)), (fix, at)
    cap = bytearray(range(40))
    runtime.mangle(cap, "set", 0, 1, 0xAA, "none", 4)
    assert cap == bytes([0xAA]) + bytes(range(1, 40))


def test_a_fixed_up_field_change_reaches_the_simulators_loader():
    """Set a UART register in a captured stream: without the fix-up the checksum refuses it, with
    it the stream loads and the register has the value set (the damage reached the loader)."""
    src = SimTarget("v2", 0x7).devices[0]
    _, fd = src.set_state(3)  # STOP_COPY
    _, data = src.read(fd, 4096)
    for fix, loads in (("none", False), ("crc32", True)):
        cap = bytearray(data)
        runtime.mangle(cap, "set", UART_AT + uart.SCR, 1, 0x5A, fix, stream.CHECKSUM_SIZE)
        if loads:
            assert stream.load(bytes(cap))[2][uart.SCR] == 0x5A
        else:
            with pytest.raises(stream.StreamError, match="checksum"):
                stream.load(bytes(cap))


# ----------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def sim_layout():
    target = SimTarget("v2", 0x7)
    return layout.infer(layout.capture(target), "sim:proto=v2,flags=0x7", "v2")


def test_the_simulators_stream_layout(sim_layout):
    lay = sim_layout
    assert lay.size == stream.FULL_SIZE and lay.captures == layout.CAPTURES
    assert lay.constant[0][0] == 0 and lay.constant[0][1] >= stream.HEADER_SIZE  # magic, version, sizes
    fields = {f.off: f for f in lay.fields}
    # the FIFO indices the captures moved (pushes into RX/TX, pops from it)
    assert fields[HEAD_AT].role == "varying" and len(fields[HEAD_AT].values) > 2
    assert fields[TAIL_AT].width == 1 and set(fields[TAIL_AT].values) >= {0, 1}
    # the record lengths of the chain (tag, length u16, body) and the end record's length u32
    lengths = {f.off: f for f in lay.fields if f.role == "length"}
    first = stream.HEADER_SIZE + 1
    assert lengths[first].width == 2 and lengths[first].values == (stream.PAGE_RECORD_SIZE - 3,)
    assert lengths[stream.FULL_SIZE - stream.END_RECORD_SIZE + 3].width == 4
    assert lay.checksums == (layout.Checksum("crc32", stream.CHECKSUM_SIZE),)
    assert stream.FULL_SIZE in lay.dictionary and 0x12 in lay.dictionary
    assert not any(f.off >= stream.FULL_SIZE - stream.CHECKSUM_SIZE for f in lay.fields)  # the CRC is no field


def test_additive_sums_and_widths_are_recognised():
    rng = random.Random(3)
    caps = []
    for i in range(6):  # magic, a u16 counter, a u16 crossing 256, a u32, random bytes, a sum
        body = (b"HDR1" + struct.pack("<HH", 3 * i, 250 + 3 * i) + struct.pack("<I", 100000 + 1000 * i)
                + rng.randbytes(4))
        caps.append(body + struct.pack(">H", sum(body) & 0xFFFF))
    lay = layout.infer(caps, "synthetic", "v2")
    assert lay.checksums == (layout.Checksum("sum16be", 2),)
    widths = {f.off: f.width for f in lay.fields if f.role == "varying"}
    assert widths == {4: 2, 6: 1, 7: 1, 8: 4, 12: 1, 13: 1, 14: 1, 15: 1}
    assert lay.constant[0] == (0, 4)


def test_neighbouring_independent_bytes_are_not_one_number():
    # mtty's serial port keeps head, tail and count in neighbouring bytes (stream offsets 48-50):
    # taken as one 8-byte number their values spanned 2^32, and a boundary value set on it
    # clobbered all three; a real counter in the same place stays one number
    ports = [(0, 0, 0, 0), (1, 0, 1, 0), (2, 0, 2, 0), (4, 1, 3, 0), (6, 1, 5, 0), (1, 1, 0, 1)]
    caps = [b"HDR1HDR2" + bytes(port[:3]) + b"\0" + bytes((port[3],)) + b"\0\0\0" + struct.pack("<Q", 70000 + 9 * i)
            for i, port in enumerate(ports)]
    widths = {f.off: f.width for f in layout.infer(caps, "ports", "v2").fields if f.role == "varying"}
    # head, tail, then count and the next bytes (each with zeros above it, as a small number would be)
    assert widths == {8: 1, 9: 1, 10: 2, 12: 4, 16: 8}


def test_nothing_is_recognised_where_nothing_is():
    rng = random.Random(4)
    caps = [rng.randbytes(64) for _ in range(6)]
    lay = layout.infer(caps, "noise", "v2")
    assert lay.checksums == () and not [f for f in lay.fields if f.role == "length"]
    assert layout.infer([], "none", "v2").captures == 0
    one = layout.infer([b"abc", b"abcd", b"xy"], "lengths differ", "v2")
    assert one.captures == 1 and not one.fields and "too few" in layout.describe(one)


def test_capture_programs_stimulate_through_the_profile():
    target = SimTarget("v1")
    progs = layout.capture_programs("v1", target.profile, 4)
    names = [[OPS["v1"][op.code].name for op in p.ops] for p in progs]
    assert all(n[-2:] == ["set", "drain"] for n in names)
    assert "wrreg" in names[3] and "activity" in names[1] and "rdreg" not in names[0]
    assert len({bytes(c) for c in layout.capture(target, 4)}) == 4


def test_the_layout_is_kept_in_the_corpus_and_reused(tmp_path, sim_layout):
    path = layout.layout_path(tmp_path, sim_layout.target)
    assert path.parent == tmp_path and path.name.startswith("layout-") and path.suffix == ".json"
    layout.save(path, sim_layout)
    assert layout.load(path) == sim_layout
    target = SimTarget("v2", 0x7)
    assert layout.for_target(target, sim_layout.target, tmp_path) == sim_layout
    path.write_text("{not json")
    assert layout.load(path) is None
    again = layout.for_target(target, sim_layout.target, tmp_path)  # inferred again, and kept
    assert again == sim_layout and layout.load(path) == sim_layout
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    assert layout.load(path) is None


def run_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_layout_command_text_json_and_errors(tmp_path):
    r = run_cli(["layout", "--target", "sim", "--corpus", tmp_path / "c"], ROOT)
    assert r.returncode == 0, r.stderr
    assert f"{stream.FULL_SIZE} bytes" in r.stdout and "crc32" in r.stdout and "kept in" in r.stdout
    r = run_cli(["layout", "--target", "sim:proto=v1", "--corpus", tmp_path / "c", "--json"], ROOT)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["proto"] == "v1" and data["checksums"] == [{"fix": "crc32", "at": 4}]
    assert len(list((tmp_path / "c").glob("layout-*.json"))) == 2
    for bad in (["--target", "sim:bug=nope"], ["--target", "kernel:dev=x"], ["--corpus", __file__]):
        r = run_cli(["layout", *bad], tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (bad, r.stderr)


# ----------------------------------------------------------------------------- mutations


def test_boundary_values_of_a_field():
    values = mutator.boundary_values(1, (0, 1, 5), 244)
    assert {v % 256 for v in (0, 1, 0x7F, 0x80, -1, -2, 8, 7, 9, 16, 6, 244, 243, 245)} <= set(values)
    assert len(values) == len({v % 256 for v in values})  # each once, as the width wraps it
    wide = mutator.boundary_values(4, (300,), 244, (0x4A4948, 0x10))
    assert {0xFFFF, 0x8000, -1, 512, 301, 0x10} <= set(wide) and 0x4A4948 not in wide  # too big to carry


def test_boundary_coverage_counts_a_field_only_at_an_unseen_boundary_value_a_loader_was_given():
    lay = layout.Layout("t", "v2", 8, 2, (), (layout.Field(2, 1, "varying", (5, 6)),
                                             layout.Field(4, 2, "length", (8,))), (), ())
    cover = layout.BoundaryCoverage(lay, lambda f: mutator.boundary_values(f.width, f.values, lay.size))
    cover.note(bytes([0, 0, 5, 0, 8, 0, 0, 0]), 8)  # the values the captures showed
    cover.note(bytes([0, 0, 0x80, 0, 9, 0, 0]), 7)  # not the stream's size
    cover.note(bytes([0, 0, 0x80, 0, 9, 0, 0, 0]), 2)  # its fields past what the loader was given
    assert cover.counts() == (0, 2)
    cover.note(bytes([0, 0, 0x80, 0, 9, 0, 0, 0]), 5)  # the loader refused it inside the length
    assert cover.counts() == (1, 2) and cover.reached == [True, False]
    cover.note(bytes([0, 0, 0, 0, 0xFF, 0xFF, 0, 0]), 8)
    assert cover.counts() == (2, 2)


def test_every_stream_given_to_a_loader_is_reported_refused_transfers_too():
    """A load reports what the session held; a transfer refused partway (mtty_resume_write() checks
    the header as it is written) reports the stream and how much of it the device was given."""
    ex = Executor(SimTarget("v2", 0x7))
    migrate = "set 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\n{}transfer 0 dst=1 seg={}\nset 1 state=STOP\n"
    ex.run(parse_program("migfuzz-program 1 v2\n" + migrate.format("", 0)))
    (stream_, given), = ex.oracle.given_streams
    assert given == len(stream_) == stream.FULL_SIZE
    ex.run(parse_program("migfuzz-program 1 v2\n" + migrate.format("fault 1 nth=3 kind=hwerror\n", 16)))
    (refused, offered), (loaded, given) = ex.oracle.given_streams
    assert len(refused) == stream.FULL_SIZE and 16 < offered < stream.FULL_SIZE and offered % 16 == 0
    assert len(loaded) == given < offered
    ex.run(parse_program("migfuzz-program 1 v2\nget 0\n"))
    assert ex.oracle.given_streams == []  # each program's own

MIGRATE_1_TO_0 = ("migfuzz-program 1 v2\nset 1 state=STOP_COPY\ndrain 1 fd=0\nset 0 state=RESUMING\n"
                  "transfer 1 dst=0 seg=0\nset 0 state=STOP\n")


def test_field_edits_go_before_a_transfer_on_its_source(sim_layout):
    edits = mutator.FieldEdits("v2", sim_layout)
    migrate = parse_program(MIGRATE_1_TO_0)
    rng = random.Random(1)
    seen = set()
    for _ in range(300):
        out = codec.decode(edits.apply(codec.encode(migrate), rng), "v2")
        names = [OPS["v2"][op.code].name for op in out.ops]
        assert names == ["set", "drain", "set", "mangle", "transfer", "set"]
        op = out.ops[3]
        assert op.dev == 1 and normalize("v2", op) == op
        args = mangle_args(op)
        seen.add(args[:2])
        if args[0] in ("set", "add"):
            assert args[4:] == ("crc32", stream.CHECKSUM_SIZE)
    assert ("set", TAIL_AT) in seen
    ops = {op for group in edits.groups for op in group}
    for delta in (-1, 1):  # a record length one off
        assert mutator.mangle_slots("add", stream.HEADER_SIZE + 1, 2, delta, "crc32", stream.CHECKSUM_SIZE) in ops
    assert mutator.mangle_slots("truncate", 0) in ops and mutator.mangle_slots("extend", 0) in ops  # one byte off
    assert edits.apply(codec.encode(migrate._replace(ops=migrate.ops[:2])), rng) is None  # no transfer


def test_a_field_edit_may_exercise_what_the_destination_loaded(sim_layout, monkeypatch):
    # the destination's next state change (here the load) is followed, half the time, by what a guest
    # does first: mtty's TX stores at fifo[rxtx.head], a field the load took from the stream (#8)
    monkeypatch.setattr(mutator, "OWN_MIGRATION", 0.0)  # always the program's own transfer
    profile = SimTarget("v2", 0x7).profile
    edits = mutator.FieldEdits("v2", sim_layout, mutator.OpGroups("v2", profile))
    migrate = parse_program(MIGRATE_1_TO_0 + "get 1\n")
    rng = random.Random(4)
    shapes = Counter()
    for _ in range(400):
        out = codec.decode(edits.apply(codec.encode(migrate), rng), "v2")
        names = [OPS["v2"][op.code].name for op in out.ops]
        assert names[:6] == ["set", "drain", "set", "mangle", "transfer", "set"] and names[-1] == "get"
        assert all(op.dev == 0 for op in out.ops[6:-1])  # on the destination, after its load
        shapes[tuple(names[6:-1])] += 1
    assert shapes[()] > 200
    assert shapes[("wrreg", "get")] + shapes[("rdreg", "wrreg", "get")] + shapes[("wrreg", "rdreg", "get")] > 40
    alone = codec.decode(edits.apply(codec.encode(migrate._replace(ops=migrate.ops[:4])), rng), "v2")
    assert len(alone.ops) == 5  # no state change after the transfer: nothing to follow


def test_a_field_edit_may_bring_a_migration_of_its_own(sim_layout):
    # a transfer a corpus program makes often reaches no loader: half the edits (and every edit of a
    # program without a transfer) come inside a whole migration, save, edit, resume, load, guest access
    profile = SimTarget("v2", 0x7).profile
    edits = mutator.FieldEdits("v2", sim_layout, mutator.OpGroups("v2", profile))
    base = parse_program("migfuzz-program 1 v2\nget 0\nget 1\n")
    ex = Executor(SimTarget("v2", 0x7), trace=True)
    rng = random.Random(6)
    loaded = 0
    for _ in range(100):
        out = codec.decode(edits.apply(codec.encode(base), rng), "v2")
        names = [OPS["v2"][op.code].name for op in out.ops]
        m = names.index("mangle")
        src = out.ops[m].dev
        assert names[m + 1:m + 3] == ["set", "transfer"] and out.ops[m + 2].dev == src
        assert out.ops[m + 2].a == 1 - src and names[m - 1] == "drain" and out.ops[m - 1].dev == src
        assert names.count("get") >= 2  # the program's own ops stay
        assert ex.run(out) is None, out.text()
        loaded += any(t.startswith("transferred") for _, t in ex.trace)
    assert loaded > 90  # the edited stream reached the destination whole, on the correct device, silently
    assert edits.apply(codec.encode(parse_program("migfuzz-program 1 v2\n" + "get 0\n" * mutator.MAX_OPS)), rng) is None
    # no room for one; and without op groups, a program with no transfer has nothing to edit
    full = parse_program(MIGRATE_1_TO_0 + "get 1\n" * (mutator.MAX_OPS - 1 - len(parse_program(MIGRATE_1_TO_0).ops)))
    for _ in range(20):  # room for one op, not a migration: the program's own transfer is edited
        out = codec.decode(edits.apply(codec.encode(full), rng), "v2")
        names = [OPS["v2"][op.code].name for op in out.ops]
        assert len(out.ops) <= mutator.MAX_OPS and names[names.index("transfer") - 1] == "mangle"
    assert mutator.FieldEdits("v2", sim_layout).apply(codec.encode(base), rng) is None


def test_a_field_edit_finds_the_tail_variants_where_flips_do_not(sim_layout):
    """The zoo's loaded-index variants: a checksum-fixed field edit before the transfer shows them;
    the correct device refuses the index (or loads a value it validates) and finds nothing."""
    edits = mutator.FieldEdits("v2", sim_layout)
    base = parse_program("migfuzz-program 1 v2\nset 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\n"
                         "transfer 0 dst=1 seg=0\nset 1 state=STOP\nrdreg 1 region=0 off=0x0 size=1\n")
    rng = random.Random(2)
    found = {}
    correct = Executor(SimTarget("v2", 0x7))
    runs = {name: Executor(SimTarget("v2", 0x7, name)) for name in
            ("v2-uart-tail-trusted", "v2-uart-tail-trusted-crc", "v2-fifo-tail-oob-read")}
    for _ in range(400):
        prog = codec.decode(edits.apply(codec.encode(base), rng), "v2")
        assert correct.run(prog) is None, prog.text()
        for name, ex in runs.items():
            f = ex.run(prog)
            if f is not None:
                found.setdefault(name, f.kind)
    assert found == {"v2-uart-tail-trusted": "target-exception", "v2-uart-tail-trusted-crc": "target-exception",
                     "v2-fifo-tail-oob-read": "info-leak"}


def test_op_groups_insert_saves_resumes_and_migrations():
    for proto in ("v2", "v1"):
        groups = mutator.OpGroups(proto)
        rng = random.Random(5)
        shapes = set()
        for _ in range(200):
            out = codec.decode(groups.apply(b"", rng), proto)
            shapes.add(tuple(OPS[proto][op.code].name for op in out.ops))
            for op in out.ops:
                assert normalize(proto, op) == op
                if OPS[proto][op.code].name == "transfer":
                    assert op.a == 1 - op.dev
        assert ("set", "drain") in shapes and ("set", "transfer", "set") in shapes
        assert ("set", "drain", "set", "transfer", "set") in shapes
    # a migration the groups build moves the stream from one device to the other on the simulator
    rng = random.Random(0)
    ex = Executor(SimTarget("v2", 0x1), trace=True)
    for _ in range(50):
        prog = codec.decode(mutator.OpGroups("v2").apply(b"", rng), "v2")
        if len(prog.ops) == 5 and ex.run(prog) is None and any("complete stream" in t for _, t in ex.trace):
            break
    else:
        pytest.fail("no complete migration among 50 groups")


def test_a_resume_is_followed_by_register_reads_and_writes_a_guest_makes():
    # mtty stores a TX byte at fifo[rxtx.head], an index its load takes from the stream unchecked:
    # a write after a load reaches what a read does not (README, mtty finding #8)
    profile = SimTarget("v2", 0x7).profile
    groups = mutator.OpGroups("v2", profile)
    data_in = {(r.index, reg.offset) for r in profile.regions.values() for reg in r.registers.values()
               if reg.write == "data-in"}
    rng = random.Random(3)
    tails = Counter()
    for _ in range(400):
        ops = codec.decode(mutator._join(groups.resume(rng, 0), b""), "v2").ops
        names = [OPS["v2"][op.code].name for op in ops]
        assert names[:3] == ["set", "transfer", "set"] and all(op.dev == 1 for op in ops if op is not ops[1])
        tails[tuple(names[3:])] += 1
        for name, op in zip(names[3:], ops[3:], strict=True):
            if name == "wrreg":
                assert (op.a >> 12, op.a & 0x3FF) in data_in
    # a write is followed by a GET: what it stored past the FIFO, only the driver's next ioctl sees
    assert set(tails) == {(), ("rdreg",), ("wrreg", "get"), ("rdreg", "wrreg", "get"), ("wrreg", "rdreg", "get")}
    writes = sum(n for tail, n in tails.items() if "wrreg" in tail)
    assert 170 < writes < 230  # half the resumes


def test_the_captures_start_from_and_give_back_what_a_device_keeps():
    # a real device keeps what programs put in (mtty's UART): the captures' bytes must count as
    # entered for the campaign after them, and the campaign's so far for the captures
    target = SimTarget("v2", 0x7)
    target.retains_data = True
    dev = target.devices[0]
    real = dev.reg_read
    dev.reg_read = lambda region, off, size: (0, b"\xf3") if (region, off) == (0, 0) else real(region, off, size)
    campaign = Executor(target)
    campaign.run(parse_program("migfuzz-program 1 v2\nwrreg 0 region=0 off=0x7 size=1 value=0xf3\n"))
    caps = layout.capture(target, oracle=campaign.oracle)
    assert len(caps) == layout.CAPTURES  # the captures that read RX got the campaign's 0xf3: no leak
    retained = campaign.oracle.retained()
    assert 0xF3 in retained and len(retained) >= 9  # its own byte, and the captures' register and activity bytes
    assert len(layout.capture(target)) < layout.CAPTURES  # without the campaign's bytes, 0xf3 is a leak
