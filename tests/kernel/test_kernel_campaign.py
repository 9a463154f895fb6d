"""The fuzzer against the real mtty driver in the rig guest (``migfuzz vm``).

Skipped unless MIGFUZZ_RIG=1. A finding against the real driver is a result,
not a failure: the campaign test asserts that the campaign ran and brought
its stats back, prints what it found (``pytest -rA``) and records it as test
properties (JUnit XML); it fails only on infrastructure errors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import vm
from harness.kernel import flight, rig

pytestmark = [pytest.mark.rig,
              pytest.mark.skipif(os.environ.get("MIGFUZZ_RIG") != "1", reason="set MIGFUZZ_RIG=1 to boot the rig")]

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN_SECONDS = 60


def migfuzz(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_fuzz_campaign_against_mtty(tmp_path, record_property):
    proc = migfuzz("vm", "fuzz", "--max-time", str(CAMPAIGN_SECONDS), "--keep-going",
                   "--crashes", str(tmp_path / "crashes"), "--corpus", str(tmp_path / "corpus"),
                   "--results", str(tmp_path / "results"), timeout=CAMPAIGN_SECONDS + 600)
    print(proc.stdout)
    summary_file = tmp_path / "results" / vm.SUMMARY_FILE
    assert proc.returncode in (0, 1), f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert summary_file.exists(), proc.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    assert summary.get("execs", 0) > 0, f"no programs ran\n{(tmp_path / 'results' / 'output.log').read_text()[-3000:]}"
    assert summary["arcs"] > 0 and summary["programs_per_s"] and summary["boot_s"]
    if not summary["splats"]:  # ran to the end of its budget (a kernel panic in the last boot would end it early):
        # --max-time is the wall clock, boots and panics included: each guest is given what is left
        # less a boot's cost (vm.GUEST_OVERHEAD), so the campaign ends near it, on either side
        # (the guest budgets are pinned in test_kernel_vm; here a slow host's boot may add some)
        assert CAMPAIGN_SECONDS - 15 <= summary["wall_s"] <= CAMPAIGN_SECONDS + 30
        assert summary["programs_per_wall_s"] > 0
    assert any((tmp_path / "corpus").iterdir()), "the corpus did not come back"
    output = (tmp_path / "results" / "output.log").read_text()
    assert output.count("kernel coverage: off") == 1 and "kernel_pcs" not in summary  # Debian's kernel: no KCOV

    for key in ("setup_s", "cold_setup_s", "boot_s", "execs", "elapsed_s", "programs_per_s",
                "steady_programs_per_s", "arcs", "findings"):
        record_property(key, summary.get(key))
    reports = sorted((tmp_path / "crashes").glob("crash-*.txt"))
    assert (proc.returncode == 1) == bool(reports or summary["crash_files"])
    print(f"[rig] campaign against mtty: {summary['execs']} programs in {summary['elapsed_s']} s "
          f"({summary['programs_per_s']}/s, {summary['steady_programs_per_s']}/s after start-up), "
          f"{summary['arcs']} protocol arcs, {len(reports)} finding(s)")
    for i, report in enumerate(reports):
        text = report.read_text()
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        print(f"[rig] FINDING against the real mtty driver ({report.name}):\n{header}\n")
        record_property(f"finding_{i}", header.splitlines()[0] if header else report.name)


def test_target_checks_inside_the_guest():
    """tests/kernel/guest_target_checks.py, run by pytest in the guest against the real driver."""
    result = rig.run_guest('"$MIGFUZZ_PYTHON" -m pytest -q -s -p no:cacheprovider '
                           'tests/kernel/guest_target_checks.py', timeout=300)
    print(result.output)
    assert result.setup_failure is None and not result.timed_out, result.console[-3000:]
    assert result.splats == [], result.splats
    assert result.exit_status == 0, result.output[-5000:]
    assert " passed" in result.output and "skipped" not in result.output


# The guest side of the next test: run a program on the mtty target and, inside it, crash the
# kernel the way a driver oops would (panic, QEMU exits) - the flight recorder must name it.
PANIC_SCRIPT = """
import os
from fuzz.codec import encode
from fuzz.executor import Executor
from fuzz.program import parse_program
from fuzz.targets import open_target
prog = parse_program(open(os.environ["MIGFUZZ_RESULTS"] + "/program.txt").read())
target = open_target("mtty")
dev = target.devices[0]
def set_and_crash(state):
    if state == 4:  # RESUMING
        with open("/proc/sysrq-trigger", "w") as trigger:
            trigger.write("c")
    return type(dev).set_state(dev, state)
target.current_input = lambda: b"\\x01earlier program"
Executor(target).run(parse_program("migfuzz-program 1 v2\\nget 0\\n"))
target.current_input = lambda: encode(prog)
dev.set_state = set_and_crash
Executor(target).run(prog)
print("not reached")
"""
PANIC_PROGRAM = "migfuzz-program 1 v2\nset 0 state=STOP\nset 0 state=RESUMING\nget 0\n"


def test_a_kernel_panic_is_blamed_on_the_running_program(tmp_path):
    from fuzz.codec import encode
    from fuzz.program import parse_program

    results = tmp_path / "results"
    results.mkdir()
    (results / "program.txt").write_text(PANIC_PROGRAM)
    (results / "panic.py").write_text(PANIC_SCRIPT)
    result = rig.run_guest('"$MIGFUZZ_PYTHON" "$MIGFUZZ_RESULTS/panic.py"', timeout=120, results_dir=results)
    assert result.exit_status is None and not result.timed_out, result.output
    assert any("sysrq triggered crash" in line for line in result.splats), result.console[-2000:]
    recorded = flight.read_flight(results / flight.FILE_NAME)
    expected = encode(parse_program(PANIC_PROGRAM))
    assert recorded is not None and recorded.state == flight.RUNNING and recorded.seq == 2
    assert recorded.last == expected and recorded.programs[1] == (1, b"\x01earlier program")
    (results / "console.log").write_text(result.console)
    path, excerpt = vm._flight_finding(result, tmp_path / "crashes", "kernel-splat", result.splats[0],  # noqa: SLF001
                                       result.splats[0])
    assert path.read_bytes() == expected
    text = path.with_suffix(".txt").read_text()
    assert "# migfuzz finding: kernel-splat" in text and "sysrq" in text and "set 0 state=RESUMING" in text


def test_conformance_sweep_in_the_guest(tmp_path):
    """`migfuzz vm conform` (when fuzz/conform.py exists): the sweep runs; its verdicts are printed."""
    out = tmp_path / "conform.json"
    proc = migfuzz("vm", "conform", "--format", "json", "--out", str(out), timeout=900)
    print(proc.stdout[-5000:])
    if not (ROOT / "fuzz" / "conform.py").exists():
        assert proc.returncode == 0 and "skipped" in proc.stdout
        return
    assert proc.returncode in (0, 1), f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert out.exists() and out.read_text().strip()
