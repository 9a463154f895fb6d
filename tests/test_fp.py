"""The false-positive benchmark (bench/fp.py), short: the correct simulator never produces a finding.

20,000 generated programs per configuration (every v2 flag set and v1), with injected faults;
counts are asserted, not time.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fp  # noqa: E402

from fuzz.program import seed_programs  # noqa: E402

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
