"""What a CI job, a reviewer and a triager hit first: crash files that replay as found, --jobs that
behaves, no lost findings, one line instead of a traceback. Each test runs the real CLI (in a
subprocess where the command ends the process itself) and fails on the behaviour it guards."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz import cli, codec, crashfile
from fuzz.program import parse_program

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args, cwd, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kw)


def one_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("migfuzz: ") and "Traceback" not in err


def campaign_crash(tmp_path, target, seconds=60) -> Path:
    crashes = tmp_path / "crashes"
    r = run_cli(["fuzz", "--target", target, "--max-time", seconds, "--corpus", tmp_path / "corpus",
                 "--crashes", crashes], tmp_path, timeout=seconds * 4)
    assert r.returncode == 1, r.stderr[-2000:]
    [binary] = [p for p in crashes.iterdir() if p.name.startswith("crash-") and p.suffix != ".txt"]
    return binary


# ----------------------------------------------------------------------------- crash files replay as found


def test_repro_uses_the_target_the_crash_was_found_on(tmp_path):
    binary = campaign_crash(tmp_path, "sim:bug=v2-fd-after-reset")
    for path in (binary, binary.with_name(binary.name + ".txt")):
        r = run_cli(["repro", path], tmp_path)
        assert r.returncode == 1, r.stdout[-1500:] + r.stderr[-500:]
        assert "bug=v2-fd-after-reset" in r.stdout and "FINDING fd-misuse-accepted" in r.stdout


def test_show_of_a_v1_crash_is_a_v1_program(tmp_path):
    binary = campaign_crash(tmp_path, "sim:proto=v1,bug=v1-accept-101")
    r = run_cli(["show", binary], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("migfuzz-program 1 v1\n") and "value=0b101" in r.stdout
    out = tmp_path / "m.bin"
    r = run_cli(["minimize", binary, "-o", out], tmp_path)
    assert r.returncode == 1, r.stderr
    r = run_cli(["show", out], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("migfuzz-program 1 v1\n"), r.stdout + r.stderr


def test_a_restarted_campaign_says_which_findings_are_known(tmp_path):
    campaign_crash(tmp_path, "sim:bug=v2-error-requestable")
    r = run_cli(["fuzz", "--target", "sim:bug=v2-error-requestable", "--max-time", "60", "--corpus",
                 tmp_path / "corpus", "--crashes", tmp_path / "crashes"], tmp_path, timeout=240)
    assert r.returncode == 1
    assert "already known" in r.stderr, r.stderr[-2000:]


# ----------------------------------------------------------------------------- usage, one line, exit 2


@pytest.mark.parametrize("argv,word", [
    (["fuzz", "--max-time", "0"], "--max-time"),
    (["fuzz", "--max-time", "-5"], "--max-time"),
    (["fuzz", "--runs", "0"], "--runs"),
    (["fuzz", "--jobs", "0"], "--jobs"),
    (["fuzz", "--jobs", "-1"], "--jobs"),
    (["fuzz", "--jobs", "1000"], "--jobs"),
    (["fuzz", "--target", "sim:proto=v1,flags=0x3"], "flags"),
    (["fuzz", "--", "-fork=2"], "-fork"),
    (["fuzz", "--", "-jobs=2"], "-jobs"),
    (["fuzz", "--", "-dict=/nonexistent/x.dict"], "/nonexistent"),
    (["minimize", "FILE", "--max-runs", "0"], "--max-runs"),
    (["triage", ".", "--max-runs", "0"], "--max-runs"),
    (["repro", "FILE", "--target", "kernel:dev=a,dev2=b"], "--i-know-this-resets-the-device"),
    (["minimize", "FILE", "--target", "kernel:dev=a,dev2=b"], "--i-know-this-resets-the-device"),
    (["triage", ".", "--target", "kernel:dev=a,dev2=b"], "--i-know-this-resets-the-device"),
    (["conform", "--target", "kernel:dev=a,dev2=b"], "--i-know-this-resets-the-device"),
    (["fuzz", "--target", "kernel:dev=a,dev2=b"], "--i-know-this-resets-the-device"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, word, tmp_path):
    prog = tmp_path / "FILE"
    prog.write_text("migfuzz-program 1 v2\nget 0\n")
    dirs = ["--crashes", tmp_path / "k", "--corpus", tmp_path / "c"] if argv[0] == "fuzz" else []
    if "--" in argv:
        at = argv.index("--")
        argv = argv[:at] + dirs + argv[at:]
    else:
        argv = argv + dirs
    r = run_cli(argv, tmp_path)
    assert r.returncode == 2, r.stderr
    assert one_line(r.stderr) and word in r.stderr, r.stderr


def test_messages_name_the_right_cause(tmp_path, capsys):
    assert cli.main(["repro", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli.main(["repro", "/dev/null"]) == 2
    assert "empty" in capsys.readouterr().err
    f = tmp_path / "a-file"
    f.write_text("x")
    assert cli.main(["fuzz", "--corpus", str(f), "--crashes", str(tmp_path / "k")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_unwritable_crash_directory_is_refused_at_start(tmp_path):
    blocker = tmp_path / "crashes"
    blocker.write_text("a file where the crash directory should be")
    r = run_cli(["fuzz", "--max-time", "5", "--crashes", blocker, "--corpus", tmp_path / "c"], tmp_path)
    assert r.returncode == 2 and one_line(r.stderr) and "crash directory" in r.stderr, r.stderr


@pytest.mark.parametrize("argv", [
    ["minimize", "PROG", "-o", "/proc/migfuzz/x.txt"],
    ["compile", "PROG", "-o", "/proc/migfuzz/x.bin"],
    ["report", "REPORT", "--sarif", "/proc/migfuzz/x.sarif"],
    ["triage", "CRASHES", "--out", "/proc/migfuzz/triage"],
    ["fuzz", "--report-dir", "/proc/migfuzz/r", "--max-time", "5"],
])
def test_unwritable_outputs_are_one_line_and_exit_2(argv, tmp_path):
    prog = tmp_path / "prog.txt"
    prog.write_text("migfuzz-program 1 v2\nset 0 state=ERROR\n")
    (tmp_path / "report").mkdir()
    (tmp_path / "crashes").mkdir()
    r = run_cli([{"PROG": prog, "REPORT": tmp_path / "report", "CRASHES": tmp_path / "crashes"}.get(a, a)
                 for a in argv] + (["--target", "sim:bug=v2-error-requestable"] if argv[0] == "minimize" else []),
                tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("migfuzz: "), r.stderr


def test_version():
    r = run_cli(["--version"], ROOT)
    assert r.returncode == 0 and r.stdout.startswith("migfuzz ")


def test_ctrl_c_at_start_is_not_a_traceback(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fuzz.cli", "fuzz", "--max-time", "60", "--crashes",
                             str(tmp_path / "k"), "--corpus", str(tmp_path / "c")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), err


# ----------------------------------------------------------------------------- campaigns end cleanly


def test_a_campaign_ends_with_one_summary(tmp_path):
    r = run_cli(["fuzz", "--max-time", "3", "--crashes", tmp_path / "k", "--corpus", tmp_path / "c"], tmp_path)
    assert r.returncode == 0, r.stderr
    stats = [ln for ln in r.stderr.splitlines() if "stats:" in ln]
    assert stats and stats[-1] != stats[-2] if len(stats) > 1 else stats  # the final line is not printed twice
    assert r.stderr.count("migfuzz: done: ") == 1
    assert "#" not in "".join(ln[:1] for ln in r.stderr.splitlines())  # libFuzzer's #N lines are not shown
    assert "WARNING: Failed to find function" not in r.stderr


def test_runs_stops_at_the_number_given(tmp_path):
    r = run_cli(["fuzz", "--runs", "10", "--no-seeds", "--crashes", tmp_path / "k", "--corpus", tmp_path / "c"],
                tmp_path)
    assert r.returncode == 0, r.stderr
    assert "done: 10 programs" in r.stderr, r.stderr


def test_jobs_end_on_sigterm_and_merge_their_reports(tmp_path):
    report = tmp_path / "R"
    proc = subprocess.Popen([sys.executable, "-m", "fuzz.cli", "fuzz", "--target", "sim:bug=v2-error-requestable",
                             "--keep-going", "--jobs", "2", "--max-time", "300", "--crashes", str(tmp_path / "K"),
                             "--corpus", str(tmp_path / "C"), "--report-dir", str(report)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    logs = [report / f"job{i}" / f"libfuzzer.job{i}.log" for i in range(2)]  # written once a job is fuzzing
    while time.monotonic() < deadline and not (all(log.exists() for log in logs)
                                               and len(list((tmp_path / "K").glob("crash-*.txt"))) >= 2):
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]  # findings were made: exit 1, as at the end of the budget
    assert err.count("migfuzz[job0]: done: ") == 1 and err.count("migfuzz[job1]: done: ") == 1, err[-2000:]
    # no job outlives its parent
    leftover = subprocess.run(["pgrep", "-f", f"--report-dir {report}/job"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
    # one merged report for the campaign, readable by `migfuzz report`
    sarif = json.loads((report / "migfuzz.sarif").read_text())
    assert sarif["runs"][0]["results"]
    assert cli.main(["report", str(report)]) == 0


def test_two_jobs_keep_their_lines_whole(tmp_path):
    r = run_cli(["fuzz", "--jobs", "2", "--max-time", "4", "--crashes", tmp_path / "K", "--corpus", tmp_path / "C"],
                tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in r.stderr.splitlines():
        assert line.startswith("migfuzz"), line  # no libFuzzer output spliced in


def test_the_crash_text_of_a_kept_finding_replays_as_binary_too(tmp_path):
    binary = campaign_crash(tmp_path, "sim:bug=v2-reset-not-running")
    prog, meta = crashfile.read_program(binary)
    text_prog, _ = crashfile.read_program(binary.with_name(binary.name + ".txt"))
    assert prog == text_prog and codec.encode(prog) == binary.read_bytes()
    assert meta.finding is not None and meta.finding.kind == "state-mismatch"
    assert parse_program(prog.text()) == prog


def test_writability_is_probed_by_writing(tmp_path):
    """The start-up check writes a file (permission bits say nothing to root); a read-only corpus
    with --no-seeds is a warning, with seeds an error (the seeds could not be added)."""
    from fuzz import campaign
    from fuzz.errors import UsageError

    campaign.writable_dir(tmp_path / "new" / "dir", "the corpus")  # created, written, fine
    with pytest.raises(UsageError, match="not writable"):
        campaign.writable_dir(Path("/proc/migfuzz-corpus"), "the corpus")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        campaign.writable_dir(tmp_path / "f", "the corpus")
