"""The false-positive benchmark (bench/fp.py), short: the correct simulator never produces a finding.

20,000 generated programs per configuration (every v2 flag set and v1), with injected faults, and
a slice of the seeds' neighbourhood (``--sweep``); counts are asserted, not time.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import itertools  # noqa: E402

import fp  # noqa: E402

from fuzz.executor import Executor  # noqa: E402
from fuzz.program import OPCODES, race_args, seed_programs  # noqa: E402
from harness.runtime import RACE_SCHEDS  # noqa: E402
from harness.sim import SimTarget  # noqa: E402

PROGRAMS = 20_000


@pytest.mark.parametrize("proto,flags", fp.CONFIGS, ids=[fp.config_name(*c) for c in fp.CONFIGS])
def test_correct_simulator_has_no_false_positive(proto, flags):
    stats = fp.run_config(proto, flags, PROGRAMS, seed=1)
    if stats["finding"] is not None:
        lines = []
        fp.report(stats, lines.append)
        pytest.fail("\n".join(lines))
    assert stats["programs"] == PROGRAMS
    assert stats["findings"] == 0
    # the workload has faults in it: a good share of programs arm one
    assert stats["with_faults"] >= PROGRAMS // 5, stats


@pytest.mark.parametrize("proto,flags", [("v2", 0x7), ("v1", 0)])
def test_judged_as_a_real_device_the_correct_simulator_has_no_false_positive(proto, flags):
    # without the digest, as on the rig: streams and registers only
    stats = fp.run_config(proto, flags, PROGRAMS // 4, seed=2, digest=False)
    assert stats["config"].endswith(",digest=0")  # (the target's own: it judged without the digest)
    assert stats["finding"] is None, stats["program"]
    assert stats["programs"] == PROGRAMS // 4


def test_workload_is_reproducible_and_starts_with_the_seeds():
    seeds = [p for _n, p in seed_programs("v2")]
    first = list(fp.programs("v2", 200, seed=3))
    assert first[:len(seeds)] == seeds
    assert first == list(fp.programs("v2", 200, seed=3))
    assert first != list(fp.programs("v2", 200, seed=4))
    assert len({p.text() for p in first}) > 150  # mostly distinct programs


def test_a_finding_is_reported_with_its_program(capsys):
    # the reporting path, with a bug variant standing in for a false positive
    from fuzz.executor import Executor
    from fuzz.program import parse_program
    from harness.sim import SimTarget

    prog = parse_program("migfuzz-program 1 v2\nset 0 state=ERROR\n")
    finding = Executor(SimTarget("v2", 0x7, "v2-error-requestable")).run(prog)
    stats = {"config": "v2:0x7", "programs": 1, "with_faults": 0, "ops": 1, "findings": 1, "seconds": 1.0,
             "program": prog.text(), "finding": finding}
    lines = []
    fp.report(stats, lines.append)
    assert "FALSE POSITIVE" in lines[1] and "accepted-invalid" in lines[1]
    assert "\n".join(lines[2:]).splitlines() == ["migfuzz-program 1 v2", "set 0 state=ERROR"]
    assert fp.main(["--programs", "50", "--config", "v1"]) == 0
    assert "findings 0" in capsys.readouterr().out


SWEEP_STRIDE = 211  # every 211th program of the sweep: ~8,600 (v2), ~1,200 (v1) per configuration


@pytest.mark.parametrize("proto,flags", fp.CONFIGS, ids=[fp.config_name(*c) for c in fp.CONFIGS])
def test_a_slice_of_the_sweep_is_silent_on_the_correct_simulator(proto, flags):
    executor = Executor(SimTarget(proto, flags))
    ran = 0
    for prog in itertools.islice(fp.sweep_programs(proto), 0, None, SWEEP_STRIDE):
        finding = executor.run(prog)
        assert finding is None, f"{finding.kind}: expected {finding.expected}; observed {finding.observed}\n" \
                                f"{prog.text()}"
        ran += 1
    assert ran == -(-fp.sweep_size(proto) // SWEEP_STRIDE)


def test_the_sweep_makes_every_race_at_every_interleaving_on_both_devices():
    race = OPCODES["v2"]["race"]
    sides = fp.race_sides("v2")
    assert ("set", 0) in sides and ("set", 7) in sides and ("close", 1) in sides and ("reopen", 0) in sides
    races = {(op.dev, race_args(op)) for op in fp.sweep_ops("v2") if op.code == race}
    assert len(races) == 2 * len(sides) ** 2 * RACE_SCHEDS
    assert (1, (("write", 0), ("close", 0), 0)) in races  # the false positive of 2026-12-03 (tests/test_race.py)
    assert all(kind not in dict(fp.race_sides("v1")) for kind in ("read", "write", "close", "precopy"))
    # every other op kind is drawn too
    codes = {op.code for op in fp.sweep_ops("v2")}
    assert codes == set(range(len(OPCODES["v2"])))
    # the first seed with each op before its first op, ..., after its last, in that order
    first = seed_programs("v2")[0][1].ops
    inserted = fp.sweep_ops("v2")
    progs = list(itertools.islice(fp.sweep_programs("v2"), len(inserted) * (len(first) + 1)))
    for at in range(len(first) + 1):
        block = progs[at * len(inserted):(at + 1) * len(inserted)]
        assert [p.ops[at] for p in block] == inserted
        assert {p.ops[:at] + p.ops[at + 1:] for p in block} == {first}
    assert fp.sweep_size("v2") == len(fp.sweep_ops("v2")) * sum(len(p.ops) + 1 for _n, p in seed_programs("v2"))


def test_the_sweep_finds_a_defect_only_a_race_shows():
    # the reset that does not wait for the state mutex: no serial program finds it
    executor = Executor(SimTarget("v2", 0x7, "v2-reset-not-deferred"))
    found = next(((prog, finding) for prog in itertools.islice(fp.sweep_programs("v2"), 100_000)
                  if (finding := executor.run(prog)) is not None), None)
    assert found is not None, "not in the sweep's first 100,000 programs"
    prog, finding = found
    assert finding.kind == "race-not-serializable"
    assert any(op.code == OPCODES["v2"]["race"] for op in prog.ops)


def test_sweep_from_the_command_line(capsys):
    assert fp.main(["--sweep", "--programs", "300", "--config", "v1"]) == 0
    assert "programs       300" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        fp.main(["--sweep", "--programs", "-5"])
    assert exit_.value.code == 2 and "--programs must be positive" in capsys.readouterr().err
