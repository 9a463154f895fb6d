"""What a CI job, a reviewer and a triager hit first: crash files that replay as found, --jobs that
behaves, no lost findings, one line instead of a traceback. Each test runs the real CLI (in a
subprocess where the command ends the process itself) and fails on the behaviour it guards."""
from __future__ import annotations

import json
import os
import re
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
    ["export", "PROG", "--c", "DIR"],
    ["export", "PROG", "--python", "/proc/x/r.py"],
])
def test_unwritable_outputs_are_one_line_and_exit_2(argv, tmp_path):
    prog = tmp_path / "prog.txt"
    prog.write_text("migfuzz-program 1 v2\nset 0 state=ERROR\n")
    (tmp_path / "report").mkdir()
    (tmp_path / "crashes").mkdir()
    (tmp_path / "a-dir").mkdir()
    # the program shows a finding on this target: export gets as far as writing
    target = ["--target", "sim:bug=v2-error-requestable"] if argv[0] in ("minimize", "export") else []
    r = run_cli([{"PROG": prog, "REPORT": tmp_path / "report", "CRASHES": tmp_path / "crashes",
                  "DIR": tmp_path / "a-dir"}.get(a, a) for a in argv] + target, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("migfuzz: "), r.stderr
    if argv[0] == "export":
        assert one_line(r.stderr), r.stderr
        out = str(tmp_path / "a-dir") if "DIR" in argv else "/proc/x"
        assert out in r.stderr, r.stderr


def test_report_error_names_the_path_given(tmp_path):
    """Not the temporary file the report is written through (/proc/x.sarif.wkqrlrz_.tmp)."""
    (tmp_path / "report").mkdir()
    for flag, out in (("--sarif", "/proc/x.sarif"), ("--junit", "/proc/x.xml")):
        r = run_cli(["report", tmp_path / "report", flag, out], tmp_path)
        assert r.returncode == 2 and one_line(r.stderr), r.stderr
        assert r.stderr.startswith(f"migfuzz: {out}: ") and ".tmp" not in r.stderr, r.stderr


def test_version():
    r = run_cli(["--version"], ROOT)
    assert r.returncode == 0 and r.stdout.startswith("migfuzz ")


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.2])
def test_ctrl_c_at_start_is_not_a_traceback(tmp_path, delay):
    """Wherever the Ctrl-C lands (loading, parsing the arguments, opening the target, the
    campaign), one line and exit 130, or 0 once the campaign ends it like its time budget.
    Not -2: CPython re-raises SIGINT at exit after some caught interrupts (CI saw it once)."""
    proc = subprocess.Popen([sys.executable, "-m", "fuzz.cli", "fuzz", "--max-time", "60", "--crashes",
                             str(tmp_path / "k"), "--corpus", str(tmp_path / "c")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert err.splitlines()[-1] == "migfuzz: interrupted", err


# ----------------------------------------------------------------------------- campaigns end cleanly


def test_a_campaign_ends_with_one_summary(tmp_path):
    r = run_cli(["fuzz", "--max-time", "3", "--crashes", tmp_path / "k", "--corpus", tmp_path / "c"], tmp_path)
    assert r.returncode == 0, r.stderr
    stats = [ln for ln in r.stderr.splitlines() if "stats:" in ln]
    assert stats and stats[-1] != stats[-2] if len(stats) > 1 else stats  # the final line is not printed twice
    assert r.stderr.count("migfuzz: done: ") == 1
    assert "#" not in "".join(ln[:1] for ln in r.stderr.splitlines())  # libFuzzer's #N lines are not shown
    assert "WARNING: Failed to find function" not in r.stderr


def test_a_campaign_names_the_stream_fields_it_never_loaded_at_a_boundary(tmp_path):
    r = run_cli(["fuzz", "--runs", "50", "--crashes", tmp_path / "k", "--corpus", tmp_path / "c"], tmp_path)
    assert r.returncode == 0, r.stderr
    last_stats = [ln for ln in r.stderr.splitlines() if "stats:" in ln][-1]
    [stats] = re.findall(r"fields at a boundary (\d+)/(\d+)", last_stats)
    [line] = [ln for ln in r.stderr.splitlines() if "never loaded at a boundary value" in ln]
    offsets = [int(w) for w in line.split(": ")[-1].split()]
    assert len(offsets) == int(stats[1]) - int(stats[0]) > 0 and offsets == sorted(offsets)


def summary_of(err: str, prefix: str = "migfuzz: ") -> list:
    """The lines from the final "done:" line on (the campaign's summary)."""
    lines = err.splitlines()
    [at] = [i for i, ln in enumerate(lines) if ln.startswith(prefix + "done: ")]
    return lines[at:]


def test_a_campaign_summary_names_findings_corpus_and_reports(tmp_path):
    r = run_cli(["fuzz", "--target", "sim:bug=v2-error-requestable", "--runs", "2000", "--keep-going",
                 "--report-dir", "R", "--crashes", "K", "--corpus", "C"], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    crashes = sorted(p for p in (tmp_path / "K").iterdir() if p.name.startswith("crash-") and p.suffix != ".txt")
    assert crashes
    corpus_files = len([p for p in (tmp_path / "C").iterdir() if p.is_file()])
    summary = summary_of(r.stderr)
    assert summary[0] == f"migfuzz: done: 2000 programs, {len(crashes)} finding(s); crash files in K", summary
    expected = [f"-> {p.relative_to(tmp_path)}" for p in crashes]
    expected += [f"migfuzz: corpus: {corpus_files} files in C", "migfuzz: reports: R (",
                 "migfuzz: libFuzzer's output: R/libfuzzer.log"]
    for text in expected:  # each said exactly once in the summary (and it is printed once)
        assert sum(text in ln for ln in summary) == 1, (text, summary)
    assert len(summary) == 1 + len(expected), summary
    assert r.stderr.count("migfuzz: done: ") == 1 and r.stderr.count("migfuzz: corpus: ") == 1
    assert (tmp_path / "R" / "migfuzz.sarif").is_file() and (tmp_path / "R" / "libfuzzer.log").is_file()


def test_jobs_print_one_combined_summary_and_one_report(tmp_path):
    r = run_cli(["fuzz", "--target", "sim:bug=v2-error-requestable", "--runs", "2000", "--keep-going",
                 "--jobs", "2", "--report-dir", "R", "--crashes", "K", "--corpus", "C"], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.count("migfuzz[job0]: done: ") == 1 and r.stderr.count("migfuzz[job1]: done: ") == 1
    crashes = sorted(p for p in (tmp_path / "K").iterdir() if p.name.startswith("crash-") and p.suffix != ".txt")
    summary = summary_of(r.stderr)
    assert summary[0].startswith(f"migfuzz: done: 2 jobs, 4000 programs, {len(crashes)} finding(s)"), summary
    expected = [f"-> {p.relative_to(tmp_path)}" for p in crashes]
    expected += [f"migfuzz: corpus: {len([p for p in (tmp_path / 'C').iterdir() if p.is_file()])} files in C",
                 "migfuzz: reports: R (", "R/job0/libfuzzer.job0.log", "R/job1/libfuzzer.job1.log"]
    for text in expected:
        assert sum(text in ln for ln in r.stderr.splitlines() if ln.startswith("migfuzz: ")) == 1, (text, summary)
    assert len(summary) == 1 + len(expected), summary
    # the jobs' crash lists are not printed again under each job
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith("migfuzz[job") and "corpus: " in ln]
    rep = run_cli(["report", "R"], tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert re.match(r"migfuzz: [1-9]\d* distinct finding\(s\)", rep.stderr), rep.stderr


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
    assert err.count("migfuzz: done: 2 jobs, ") == 1, err[-2000:]  # and one summary for the campaign
    r = run_cli(["report", report], tmp_path)
    assert r.returncode == 0, r.stderr
    distinct = re.match(r"migfuzz: (\d+) distinct finding\(s\)", r.stderr)
    assert distinct and int(distinct.group(1)) > 0, r.stderr


def test_sigint_to_a_backgrounded_jobs_parent_stops_every_job(tmp_path):
    """A shell's background job starts with SIGINT ignored; `kill -INT` to the parent must still end
    every job like its time budget (a "done:" line each, one summary) and leave no worker behind."""
    corpus = tmp_path / "C"
    log = tmp_path / "err.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fuzz.cli", "fuzz", "--target", "sim", "--jobs", "2",
                                 "--max-time", "60", "--crashes", str(tmp_path / "K"), "--corpus", str(corpus)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(f"migfuzz[job{i}]: fuzzing " in log.read_text()
                                                      for i in range(2)):
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.5)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert time.monotonic() - stopped < 10, "the jobs ran on after SIGINT"
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert text.count("migfuzz[job0]: done: ") == 1 and text.count("migfuzz[job1]: done: ") == 1, text[-2000:]
    assert text.count("migfuzz: done: 2 jobs, ") == 1, text[-2000:]
    leftover = subprocess.run(["pgrep", "-f", f"--corpus {corpus}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_jobs_above_the_core_count_warn(tmp_path):
    cores = os.cpu_count() or 1
    r = run_cli(["fuzz", "--jobs", cores + 1, "--runs", "20", "--no-seeds", "--crashes", tmp_path / "K",
                 "--corpus", tmp_path / "C"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count(f"migfuzz: warning: {cores + 1} jobs on {cores} cores") == 1, r.stderr[-2000:]
    r = run_cli(["fuzz", "--jobs", cores, "--runs", "20", "--no-seeds", "--crashes", tmp_path / "K",
                 "--corpus", tmp_path / "C"], tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr[-2000:]


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
    # the real CLI on a directory that exists and refuses files even to root (sysfs)
    readonly = next((Path(d) for d in ("/sys/class/nd", "/sys/class/macvtap", "/sys/kernel/software_nodes",
                                       "/sys/class/devlink", "/sys/class/dma")
                     if Path(d).is_dir() and not any(Path(d).iterdir())), None)
    if readonly is None:
        pytest.skip("no empty sysfs directory here")
    with pytest.raises(UsageError, match="not writable"):
        campaign.writable_dir(readonly, "the corpus")
    r = run_cli(["fuzz", "--no-seeds", "--runs", "10", "--crashes", tmp_path / "K", "--corpus", readonly], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    warning = f"migfuzz: warning: the corpus {readonly} is not writable"
    assert r.stderr.startswith(warning) and r.stderr.count(warning) == 1, r.stderr[-2000:]
    assert "new inputs will not be kept" in r.stderr
    r = run_cli(["fuzz", "--runs", "10", "--crashes", tmp_path / "K", "--corpus", readonly], tmp_path)
    assert r.returncode == 2 and one_line(r.stderr) and "not writable" in r.stderr, r.stderr
    # --no-seeds and a corpus that cannot even be created: nothing to read either, an error
    r = run_cli(["fuzz", "--no-seeds", "--runs", "10", "--crashes", tmp_path / "K", "--corpus",
                 "/proc/migfuzz-corpus"], tmp_path)
    assert r.returncode == 2 and one_line(r.stderr) and "/proc/migfuzz-corpus" in r.stderr, r.stderr
