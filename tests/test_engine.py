"""The fuzzing engine (fuzz/engine.py): campaigns end to end, crash files, seeds, no false positives."""
from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import codec, engine, instrumentation
from fuzz.executor import Executor
from fuzz.oracles import Finding
from fuzz.program import parse_program
from fuzz.targets import parse_target
from harness.sim import SimTarget, bugs, core, uart, v1, v2

ROOT = Path(__file__).resolve().parent.parent
SEEDS = {proto: sorted((ROOT / "corpus" / "seeds" / proto).glob("*.txt")) for proto in ("v1", "v2")}


def run_cli(args, cwd, timeout):
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# campaigns (subprocess; each bounded well under 30 s)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_campaign_finds_v1_accept_101_and_repro_reproduces(tmp_path):
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    r = run_cli(["fuzz", "--target", "sim:proto=v1,bug=v1-accept-101", "--runs", "200000", "--max-time", "25",
                 "--corpus", corpus, "--crashes", crashes], tmp_path, timeout=60)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "FINDING accepted-invalid" in r.stderr
    binaries = [p for p in crashes.iterdir() if p.name.startswith("crash-") and p.suffix != ".txt"]
    assert len(binaries) == 1, list(crashes.iterdir())
    crash = binaries[0]
    data = crash.read_bytes()
    assert crash.name == f"crash-{hashlib.sha1(data).hexdigest()}"
    report = crash.with_name(crash.name + ".txt")
    assert report.exists()
    text = report.read_text()
    assert text.startswith("# migfuzz finding: accepted-invalid")
    assert "# target: sim:proto=v1,bug=v1-accept-101" in text
    assert not list(crashes.glob("*.tmp"))
    # the report's program is the crash input
    assert parse_program(text) == codec.decode(data, "v1")
    # the corpus got the binary seeds
    assert len(list(corpus.iterdir())) >= len(SEEDS["v1"])
    # repro of the binary crash file reproduces it
    rr = run_cli(["repro", crash, "--target", "sim:proto=v1,bug=v1-accept-101"], tmp_path, timeout=60)
    assert rr.returncode == 1, rr.stdout + rr.stderr
    assert "FINDING accepted-invalid" in rr.stdout
    # and the correct simulator does not find anything in it
    rr = run_cli(["repro", crash, "--target", "sim:proto=v1"], tmp_path, timeout=60)
    assert rr.returncode == 0, rr.stdout


@pytest.mark.slow
def test_campaign_on_correct_simulator_finds_nothing(tmp_path):
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    r = run_cli(["fuzz", "--target", "sim", "--max-time", "8", "--corpus", corpus, "--crashes", crashes],
                tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FINDING" not in r.stderr
    assert not crashes.exists() or not any(crashes.iterdir()), list(crashes.iterdir())
    assert any(corpus.iterdir())
    assert "execs" in r.stderr  # the stats line


# ---------------------------------------------------------------------------
# crash files
# ---------------------------------------------------------------------------


def _finding():
    return Finding("accepted-invalid", 0, "EINVAL", "success, state ERROR", "RUNNING -set-> ERROR",
                   op="set 0 state=ERROR", detail="Traceback: line 1\n  line 2\n")


def test_prepare_corpus(tmp_path):
    corpus = tmp_path / "c"
    for proto in ("v1", "v2"):
        n = engine.prepare_corpus(corpus / proto, proto)
        assert n == len(SEEDS[proto])
        files = sorted((corpus / proto).iterdir())
        want = sorted(hashlib.sha1(codec.encode(parse_program(s.read_text()))).hexdigest() for s in SEEDS[proto])
        assert [f.name for f in files] == want
        for f in files:
            assert hashlib.sha1(f.read_bytes()).hexdigest() == f.name
        assert engine.prepare_corpus(corpus / proto, proto) == n  # idempotent
        assert len(list((corpus / proto).iterdir())) == n


def test_libfuzzer_args(tmp_path):
    args = engine.libfuzzer_args(tmp_path / "c", tmp_path / "k", 8.0, 3, ["-dict=x"])
    assert str(tmp_path / "c") in args
    # --seed 3 -> libFuzzer -seed=4 (libFuzzer's 0 means random)
    assert f"-max_len={engine.MAX_LEN}" in args and "-seed=4" in args
    assert f"-artifact_prefix={tmp_path / 'k'}/libfuzzer-" in args
    assert any(a.startswith("-max_total_time=") and int(a.split("=")[1]) >= 8 for a in args)
    assert args[-1] == "-dict=x"
    assert not any(a.startswith("-max_total_time") for a in engine.libfuzzer_args(tmp_path, tmp_path, None, 0, []))


def test_entry_point_seeds_share_one_folder_per_seed_set(tmp_path, monkeypatch):
    # libFuzzer never returns to remove the -seed_inputs files: one folder per seed set, not per process
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(engine.tempfile, "tempdir", None)
    entry = engine.EntryPoint("sim")
    first = entry.seed_args(["fuzzer"], "v2")
    assert entry.seed_args(["fuzzer", "-runs=5"], "v2") == first
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("migfuzz-seeds-v2-")
    files = first[0].removeprefix("-seed_inputs=").split(",")
    assert sorted(Path(f).read_bytes() for f in files) == sorted(codec.encode(parse_program(p.read_text()))
                                                                for p in SEEDS["v2"])
    assert not [p for p in folders[0].iterdir() if p.name.startswith(".")]  # no half-written file left
    assert entry.seed_args(["fuzzer", str(tmp_path / "corpus")], "v2") == []  # a corpus directory: its seeds


# ---------------------------------------------------------------------------
# the campaign object in-process (no atheris, no process exit: keep_going and no budget)
# ---------------------------------------------------------------------------


def _campaign(tmp_path, target):
    camp = engine.Campaign(parse_target(target), tmp_path / "crashes", None, None, keep_going=True, seed=1,
                           out=io.StringIO())
    camp.load_target("none")
    # libFuzzer's own byte mutator only works inside atheris.Fuzz(): stand in for it
    camp.byte_mutate = lambda data, max_size: bytes(data[:max_size])
    return camp


def test_campaign_records_each_signature_once(tmp_path):
    camp = _campaign(tmp_path, "sim:bug=v2-error-requestable")
    data = codec.encode(parse_program("migfuzz-program 1 v2\nset 0 state=ERROR\n"))
    camp.test_one_input(data)
    camp.test_one_input(data)
    assert camp.execs == 2 and len(camp.findings) == 1
    files = sorted(p.name for p in (tmp_path / "crashes").iterdir())
    assert files == [f"crash-{hashlib.sha1(data).hexdigest()}", f"crash-{hashlib.sha1(data).hexdigest()}.txt"]
    assert "FINDING accepted-invalid" in camp.out.getvalue()
    camp.test_one_input(codec.encode(parse_program("migfuzz-program 1 v2\nget 0\n")))
    assert len(camp.findings) == 1


def test_stats_count_the_ops_run_not_only_the_programs(tmp_path):
    # programs differ in length (a campaign keeps the longer ones): the stats line says how long
    camp = _campaign(tmp_path, "sim")
    camp.test_one_input(codec.encode(parse_program("migfuzz-program 1 v2\nget 0\n")))
    camp.test_one_input(codec.encode(parse_program("migfuzz-program 1 v2\nset 0 state=STOP\nget 0\nget 1\n")))
    assert camp.stats()["ops_per_program"] == 2.0
    camp.stats_line()
    assert camp.out.getvalue().rstrip().endswith(" ops/program 2.0")


def test_the_first_stats_line_comes_a_second_after_the_first_program_then_every_five(tmp_path, monkeypatch):
    # a guest kernel panicked by a program in the campaign's first seconds must still leave a stats line
    clock = [100.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    camp = _campaign(tmp_path, "sim")
    camp.enable_arc_feedback()
    camp.tick_mask = 0  # look at the clock after every program
    data = codec.encode(parse_program("migfuzz-program 1 v2\nget 0\n"))
    lines = []
    for now in (103.0, 103.9, 104.1, 106.0, 109.0, 109.2):  # start-up took 3 s; the loop starts at 103
        clock[0] = now
        camp.test_one_input(data)
        lines.append(camp.out.getvalue().count(" stats: "))
    assert lines == [0, 0, 1, 1, 1, 2]
    assert " stats: 4.1s execs 3 " in camp.out.getvalue()


def test_campaign_mutators_produce_decodable_inputs(tmp_path):
    camp = _campaign(tmp_path, "sim")
    base = codec.encode(parse_program(SEEDS["v2"][0].read_text()))
    other = codec.encode(parse_program(SEEDS["v2"][1].read_text()))
    data = base
    for seed in range(400):
        data = camp.custom_mutator(data, 4096, seed)
        assert len(data) <= 4096
        camp.test_one_input(data)
        out = camp.custom_crossover(base, other, 200, seed)
        assert len(out) <= 200
        camp.test_one_input(out)
        if seed % 50 == 0:
            data = base
    assert len(camp.findings) == 0, camp.out.getvalue()
    assert camp.execs == 800


def test_campaign_infers_keeps_and_uses_the_stream_layout(tmp_path):
    """The layout is inferred once and kept in the corpus; field edits before a transfer find the
    variant whose loader trusts a FIFO index behind a checksum; the stats count fields loaded at a
    boundary value."""
    camp = _campaign(tmp_path, "sim:bug=v2-uart-tail-trusted-crc")
    camp.load_layout(tmp_path / "corpus")
    assert camp.field_edits is not None and "crc32 at 4 from the end" in camp.out.getvalue()
    assert len(list((tmp_path / "corpus").glob("layout-*.json"))) == 1
    migrate = codec.encode(parse_program("migfuzz-program 1 v2\nset 0 state=STOP_COPY\ndrain 0 fd=0\n"
                                         "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP\n"))
    for seed in range(2000):
        camp.test_one_input(camp.custom_mutator(migrate, 4096, seed))
        # the field edits now find it in the first edited load, which the count may miss: go on
        # (keep_going) until a load was counted too
        if camp.findings and camp.boundaries.counts()[0]:
            break
    assert {f.kind for f, _ in camp.findings} == {"target-exception"}
    reached, fields = camp.boundaries.counts()
    assert 0 < reached <= fields == len(camp.boundaries.fields)
    stats = camp.stats()
    assert stats["fields_at_boundary"] == reached == len(stats["fields_reached"])
    assert sorted(stats["fields_reached"] + stats["fields_missed"]) == [f[0] for f in camp.boundaries.fields]


def test_disabled_ops_never_run_and_a_finding_records_what_ran(tmp_path):
    # v2-state-survives-reopen is found by a reopen: with reopen disabled the same input finds
    # nothing; a finding of an input that had a disabled op records the program that ran
    text = "migfuzz-program 1 v2\nset 0 state=STOP\nreopen 0\nget 0\n"
    camp = _campaign(tmp_path, "sim:bug=v2-state-survives-reopen")
    camp.disable_ops({"reopen"})
    camp.test_one_input(codec.encode(parse_program(text)))
    assert camp.execs == 1 and not camp.findings
    camp = _campaign(tmp_path / "a", "sim:bug=v2-state-survives-reopen")
    camp.test_one_input(codec.encode(parse_program(text)))
    assert [f.kind for f, _ in camp.findings] == ["state-mismatch"]  # the same input, reopen enabled
    camp = _campaign(tmp_path / "b", "sim:bug=v2-error-requestable")
    camp.disable_ops({"reopen"})
    camp.test_one_input(codec.encode(parse_program("migfuzz-program 1 v2\nreopen 0\nset 0 state=ERROR\n")))
    [(finding, path)] = camp.findings
    assert finding.step == 0 and "reopen" not in path.with_name(path.name + ".txt").read_text().split(
        "migfuzz-program")[-1]


def test_a_findings_replay_starts_from_and_adds_to_what_the_devices_kept(tmp_path):
    """A new finding is replayed with a trace on the same devices. On a device that keeps what
    programs put into it (mtty), the replay starts from the bytes earlier programs entered (else an
    earlier program's byte read back is a false info-leak, and the crash file reports that), and
    what the replay puts in counts for the programs after it (a replay may run further)."""
    camp = _campaign(tmp_path, "sim")
    camp.target.retains_data = True
    camp.executor = Executor(camp.target)
    dev = camp.target.devices[0]
    real, reads = dev.reg_read, []

    def kept_and_flaky(region, off, size):
        if (region, off) == (0, 0):
            return 0, b"\x5d"  # RX hands out the byte an earlier program wrote
        if region == 7 and off == 0xFC and not reads:
            reads.append(1)
            return 0, bytes(size)  # past the end of config space: succeeds once only
        return real(region, off, size)

    dev.reg_read = kept_and_flaky
    earlier = "migfuzz-program 1 v2\nwrreg 0 region=0 off=0x0 size=1 value=0x5d\n"
    camp.test_one_input(codec.encode(parse_program(earlier)))
    found = ("migfuzz-program 1 v2\nrdreg 0 region=0 off=0x0 size=1\nrdreg 0 region=7 off=0xfc size=4\n"
             "wrreg 1 region=0 off=0x7 size=1 value=0x6e\n")
    camp.test_one_input(codec.encode(parse_program(found)))
    assert [f.kind for f, _ in camp.findings] == ["out-of-bounds"]  # not the replay's false info-leak
    assert 0x6E in camp.executor.oracle.retained()  # the replay went past the read that failed once


def test_the_simulator_is_instrumented_only_when_it_is_the_target():
    assert engine.instrumented_modules("target", SimTarget("v2")) == ("harness.sim",)
    assert engine.instrumented_modules("target", object()) == ()  # a real device runs none of it
    assert engine.instrumented_modules("all", object()) == ("fuzz.executor", "fuzz.oracles")
    assert engine.instrumented_modules("none", SimTarget("v1")) == ()


def test_only_the_simulator_classes_a_target_runs_are_instrumented():
    skipped = engine.unused_classes(SimTarget("v2", 0x7, "v2-uart-tail-trusted"))
    assert v1.V1SimDevice in skipped and bugs.V1Accept101 in skipped and bugs.UncheckedTailUart in skipped
    assert not {v2.V2SimDevice, v2.MigFile, bugs.V2UartTailTrusted, bugs.PrimingUart} & skipped
    assert v2.V2SimDevice in engine.unused_classes(SimTarget("v1")) and not engine.unused_classes(object())


# ---------------------------------------------------------------------------
# seeds and no false positives
# ---------------------------------------------------------------------------


def _seed_cases():
    for proto, seeds in SEEDS.items():
        for seed in seeds:
            for flags in ((0x1, 0x3, 0x5, 0x7) if proto == "v2" else (0,)):
                yield pytest.param(proto, flags, seed, id=f"{proto}-{flags:#x}-{seed.stem}")


@pytest.mark.parametrize("proto,flags,seed", list(_seed_cases()))
def test_seed_runs_clean_on_correct_simulator(proto, flags, seed):
    prog = parse_program(seed.read_text())
    assert prog.proto == proto
    for sim_seed in (0, 1, 7):
        ex = Executor(SimTarget(proto, flags, seed=sim_seed), trace=True)
        finding = ex.run(prog)
        assert finding is None, (finding, ex.trace)
        assert ex.trace  # every seed does something observable


def test_executor_is_repeatable():
    prog = parse_program(SEEDS["v2"][0].read_text())
    target = SimTarget("v2", 0x7)
    ex = Executor(target, trace=True)
    ex.run(prog)
    first = list(ex.trace)
    ex.run(prog)  # fresh() between programs: the same answers again
    assert ex.trace == first


def test_no_false_positive_v1_data_size_write_before_transfer():
    prog = parse_program("""migfuzz-program 1 v1
set 0 value=0b010
drain 0
set 1 value=0b100
wr 1 field=data_size value=0x4
transfer 0 dst=1 seg=0
set 1 value=0b001
""")
    assert Executor(SimTarget("v1")).run(prog) is None


@pytest.mark.slow
def test_no_seeds_starts_from_an_empty_corpus(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fuzz.cli", "fuzz", "--target", "sim", "--no-seeds", "--runs", "200",
                        "--corpus", str(tmp_path / "c"), "--crashes", str(tmp_path / "k")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(0 seeds)" in r.stderr


def test_v1_field_rules_come_from_the_model():
    """rd/wr judge a field by model.V1_FIELD_ACCESS: a reserved field that reads non-zero is a finding."""
    from harness.sim import SimTarget

    target = SimTarget("v1")
    dev = target.devices[0]
    real_read = dev.field_read
    dev.field_read = lambda off, size: (0, 5) if off == 4 else real_read(off, size)
    for line in ("rd 0 field=reserved", "wr 0 field=reserved value=0x7"):
        finding = Executor(target).run(parse_program(f"migfuzz-program 1 v1\n{line}\n"))
        assert finding is not None and finding.kind == "accepted-invalid", line
    # the correct device passes both, and a bare data_offset read while saving is no finding
    clean = SimTarget("v1")
    text = ("migfuzz-program 1 v1\nrd 0 field=reserved\nwr 0 field=reserved value=0x7\nset 0 value=0b010\n"
            "rd 0 field=data_offset\ndrain 0\nset 1 value=0b100\ntransfer 0 dst=1 seg=0\nset 1 value=0b001\n")
    assert Executor(clean).run(parse_program(text)) is None


def test_record_keeping_is_not_instrumented_and_decisions_are():
    functions = {f for module in (core, uart, v2) for f in instrumentation.functions(module)}
    for kept in (core.StepCounter.step, core.DeviceCore.digest, uart.Uart.state, v2.V2SimDevice.digest,
                 v2.V2SimDevice.next_state, v2.V2SimDevice.get_state, core.DeviceCore.restore_initial,
                 core.Interleaving.locked_calls, v2.V2SimDevice.install, v2.MigFile.__init__):
        assert kept not in functions, kept
    for decision in (core.StepCounter.arm, core.DeviceCore.activity, v2.V2SimDevice.set_state,
                     v2.V2SimDevice.live_files):
        assert decision in functions, decision


@pytest.mark.slow
def test_a_campaign_feeds_libfuzzer_through_the_hit_trail(tmp_path):
    """Under libFuzzer the trail binds to atheris' counters (fuzz/feedback.py): every counter hit
    reads 1, so each covered counter is one feature (atheris' own ++ gives more features than
    counters, from the counts), and there is no fallback warning."""
    r = run_cli(["fuzz", "--target", "sim", "--no-seeds", "--runs", "400", "--verbose", "--corpus", tmp_path / "c",
                 "--crashes", tmp_path / "k"], tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "counter array not found" not in r.stderr
    cov, ft = map(int, re.findall(r" cov: (\d+) ft: (\d+) ", r.stderr)[-1])
    assert cov > 100 and ft == cov
