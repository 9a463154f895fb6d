"""`migfuzz vm`'s host side with the guest faked (runs anywhere, no QEMU).

What comes back from a guest run - stats, crash files, corpus, a kernel panic
(console + flight recorder), a guest that stopped, a rig that cannot be
prepared - and the exit code each gives.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from fuzz import vm
from fuzz.cli import main
from fuzz.codec import encode
from fuzz.crashfile import read_meta
from fuzz.findings import Finding, signature
from fuzz.program import format_op, parse_program
from harness.kernel import debugkernel, flight, rig
from harness.kernel.kmsg import find_splats, kernel_reports

PROGRAM = parse_program("migfuzz-program 1 v2\nset 0 state=STOP_COPY\ndrain 0 fd=0\nset 0 state=STOP\n")
OUTPUT = """migfuzz: fuzzing mtty (protocol v2); corpus /run/migfuzz-results/corpus (8 seeds)
migfuzz: stats: 8.9s execs 256 (29/s, 30/cpu-s) protocol arcs 118 findings 0
migfuzz: stats: 15.1s execs 1024 (68/s) protocol arcs 171 findings 0
migfuzz: stats: 61.3s execs 8192 (134/s, 144/cpu-s) protocol arcs 235 findings 0
"""
SPLAT = "[   42.000001] WARNING: CPU: 0 PID: 231 at samples/vfio-mdev/mtty.c:1220 mtty_step_state+0x1e/0x2a0 [mtty]"
PANIC_CONSOLE = "\n".join(["[    4.9] MIGFUZZ-READY", "[   41.0] mtty_reset: called", SPLAT,
                           "[   42.000002] Modules linked in: mtty vfio_mdev", "[   42.1] Call Trace:",
                           "[   42.2] Kernel panic - not syncing: kernel: panic_on_warn set ..."])


class FakeGuest:
    """Stands in for rig.run_guest: one scripted answer per boot."""

    def __init__(self, *answers, seconds: float = 0.0):
        self.answers = list(answers)
        self.commands: list[str] = []
        self.kernel_args: list[str] = []
        self.seconds = seconds  # what each boot takes on vm.wall_clock (FakeGuest.clock)
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def __call__(self, command, timeout=120, instances=2, results_dir=None, prepared=None, extra_args=""):
        self.now += self.seconds
        self.commands.append(command)
        self.kernel_args.append(extra_args)
        results_dir = Path(results_dir or rig._new_results_dir())
        results_dir.mkdir(parents=True, exist_ok=True)
        answer = self.answers.pop(0)
        return answer(results_dir)


def guest_result(results: Path, *, exit_status=0, output=OUTPUT, console="MIGFUZZ-READY", splats=(),
                 timed_out=False, boot=4.5, setup_failure=None, command=60.0) -> rig.GuestResult:
    return rig.GuestResult(exit_status=exit_status, console=console, output=output, splats=list(splats),
                           results_dir=results, accel="tcg", timed_out=timed_out, setup_failure=setup_failure,
                           mtty=[("u1", 3), ("u2", 4)], boot_seconds=boot, command_seconds=command)


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A prepared rig that is never booted; vm's paths under tmp_path."""
    fake = rig.Rig("6.12.117+deb12-amd64", "6.12.117-1", str(tmp_path), "vmlinuz", "initrd", "mtty.ko", 29.7)
    monkeypatch.setattr(vm, "prepare", lambda kernel="stock": (fake, 0.0))
    monkeypatch.setattr(rig, "load", lambda: fake)
    monkeypatch.setenv("MIGFUZZ_CACHE", str(tmp_path / "cache"))
    return tmp_path


def run_vm(host: Path, guest: FakeGuest, monkeypatch, *extra) -> tuple[int, dict]:
    monkeypatch.setattr(rig, "run_guest", guest)
    monkeypatch.setattr(vm, "wall_clock", guest.clock)
    code = main(["vm", "fuzz", "--max-time", "60", "--crashes", str(host / "crashes"), "--corpus",
                 str(host / "corpus"), "--results", str(host / "results"), *extra])
    summary = host / "results" / vm.SUMMARY_FILE
    return code, (json.loads(summary.read_text()) if summary.exists() else {})


def test_parse_output_rates():
    stats = vm.parse_output(OUTPUT + "migfuzz: FINDING valid-stream-rejected at step 3 (x) -> y\n")
    assert (stats["execs"], stats["arcs"], stats["findings"], stats["elapsed_s"]) == (8192, 235, 0, 61.3)
    assert stats["programs_per_s"] == round(8192 / 61.3, 1)
    assert stats["steady_programs_per_s"] == round((8192 - 256) / (61.3 - 8.9), 1)
    assert len(stats["findings_lines"]) == 1
    assert vm.parse_output("nothing") == {"findings_lines": []}
    fields = vm.parse_output("migfuzz: stats: 9.0s execs 10 (1/s) protocol arcs 3 findings 0 fields at a boundary 7/43")
    assert (fields["fields_at_boundary"], fields["fields"], fields["execs"]) == (7, 43, 10)
    runs = [dict(fields), dict(fields, fields_at_boundary=43), dict(fields, fields_at_boundary=29)]
    assert vm.merge_runs(runs)["fields_at_boundary"] == 43  # the most one boot reached
    assert vm.merge_jobs([{**runs[0], "programs_per_s": 1.0}, {**runs[1], "programs_per_s": 2.0}])[
        "fields_at_boundary"] == 43


def test_fuzz_command_runs_the_real_cli_against_mtty():
    import argparse

    args = argparse.Namespace(seed=3, max_time=60.0, runs=None, keep_going=True, no_instrument=False,
                              libfuzzer_args=["-max_len=200"], disable_ops=frozenset({"reopen", "reset"}))
    line = vm.fuzz_command(args, report=True)
    assert "--disable-ops reopen,reset" in line
    assert line.startswith('"$MIGFUZZ_PYTHON" -m fuzz.cli fuzz --target mtty --i-know-this-resets-the-device')
    for part in ("--seed 3", "--max-time 60.0", "--keep-going", '--corpus "$MIGFUZZ_RESULTS/corpus"',
                 '--crashes "$MIGFUZZ_RESULTS/crashes"', '--report-dir "$MIGFUZZ_RESULTS/report"',
                 "-- -max_len=200"):
        assert part in line
    assert "--report-dir" not in vm.fuzz_command(args, report=False)


def test_clean_campaign(host, monkeypatch, capsys):
    (host / "corpus").mkdir()
    (host / "corpus" / "old").write_bytes(b"\x01")

    def answer(results):
        assert (results / "corpus" / "old").exists()  # the host corpus went in
        (results / "corpus" / "new").write_bytes(b"\x02")
        return guest_result(results)

    guest = FakeGuest(answer)
    code, summary = run_vm(host, guest, monkeypatch)
    assert code == 0
    assert "--target mtty" in guest.commands[0]
    assert (host / "corpus" / "new").read_bytes() == b"\x02"
    assert summary["execs"] == 8192 and summary["arcs"] == 235 and summary["boot_s"] == 4.5
    assert summary["corpus_in"] == 1 and summary["corpus_new"] == 1 and summary["crash_files"] == []
    out = capsys.readouterr().out
    assert "8192 programs in 61.3 s" in out and "programs/s against mtty" in out and "no findings" in out
    assert (host / "results" / "console.log").exists()


def test_a_finding_in_the_guest_comes_back(host, monkeypatch):
    def answer(results):
        (results / "crashes").mkdir()
        (results / "crashes" / "crash-abc").write_bytes(encode(PROGRAM))
        (results / "crashes" / "crash-abc.txt").write_text("# migfuzz finding: valid-stream-rejected\n")
        return guest_result(results, exit_status=1, output=OUTPUT.replace("findings 0", "findings 1")
                            + "migfuzz: FINDING valid-stream-rejected at step 3\n")

    code, summary = run_vm(host, FakeGuest(answer), monkeypatch)
    assert code == 1
    assert (host / "crashes" / "crash-abc").exists() and (host / "crashes" / "crash-abc.txt").exists()
    assert summary["crash_files"] == [str(host / "crashes" / "crash-abc")]


def test_jobs_are_guests_side_by_side_sharing_corpus_and_crashes(host, monkeypatch, capsys):
    (host / "corpus").mkdir()

    def clean(results):
        (results / "corpus" / f"new-{results.name}").write_bytes(b"\x02")
        return guest_result(results)

    def finding(results):
        (results / "corpus" / f"new-{results.name}").write_bytes(b"\x03")
        (results / "crashes").mkdir()
        (results / "crashes" / "crash-abc").write_bytes(encode(PROGRAM))
        (results / "crashes" / "crash-abc.txt").write_text("# migfuzz finding: valid-stream-rejected\n")
        return guest_result(results, exit_status=1, output=OUTPUT.replace("findings 0", "findings 1"))

    guest = FakeGuest(clean, finding)
    code, summary = run_vm(host, guest, monkeypatch, "--jobs", "2", "--report-dir", str(host / "report"))
    assert code == 1  # one guest found something
    assert sorted(c.split("--seed ")[1].split()[0] for c in guest.commands) == ["0", "1"]  # a seed each
    assert summary["jobs"] == 2 and summary["execs"] == 2 * 8192 and summary["findings"] == 1
    assert summary["programs_per_s"] == round(2 * round(8192 / 61.3, 1), 1)  # side by side: the rates add
    assert summary["crash_files"] == [str(host / "crashes" / "crash-abc")]
    assert (host / "crashes" / "crash-abc.txt").exists()
    assert {p.name for p in (host / "corpus").iterdir()} == {"new-job-1", "new-job-2"}  # both guests' finds
    for job in ("job-1", "job-2"):
        assert (host / "results" / job / vm.SUMMARY_FILE).exists() and (host / "results" / job / "console.log").exists()
    out = capsys.readouterr().out
    assert "[job 1]" in out and "[job 2]" in out and "2 guests side by side" in out
    assert f"wall clock: {summary['wall_s']} s" in out and summary["programs_per_wall_s"] > 0  # as one guest's
    assert main(["vm", "fuzz", "--jobs", "0"]) == 2  # refused before anything boots
    assert "--jobs must be between 1 and" in capsys.readouterr().err


def flight_with(results: Path, *programs: bytes, state=flight.RUNNING, step=None) -> None:
    buf = bytearray(flight.SIZE)
    rec = flight.FlightRecorder(buf, "v2", "mtty")
    for p in programs:
        rec.record(p)
    if step is not None:
        rec.op_started(step)
    if state == flight.CLOSED:
        rec.close()
    (results / flight.FILE_NAME).write_bytes(bytes(buf))


def test_a_kernel_panic_is_a_finding_for_the_program_that_was_running(host, monkeypatch, capsys):
    def panicked(results):
        flight_with(results, b"\x05older", encode(PROGRAM))
        return guest_result(results, exit_status=None, output=OUTPUT[:200], console=PANIC_CONSOLE,
                            splats=[SPLAT, "Kernel panic - not syncing"], command=None)

    def replay(results):
        assert (results / "program").read_bytes() == encode(PROGRAM)
        return guest_result(results, exit_status=None, console=PANIC_CONSOLE, splats=[SPLAT])

    guest = FakeGuest(panicked, replay)
    code, summary = run_vm(host, guest, monkeypatch)
    assert code == 1
    assert "repro" in guest.commands[1] and "--target mtty" in guest.commands[1]
    crash = Path(summary["crash_files"][-1])
    assert crash.read_bytes() == encode(PROGRAM)
    report = crash.with_suffix(".txt").read_text()
    assert "# migfuzz finding: kernel-splat" in report and "mtty_step_state" in report
    assert "Call Trace" in report  # the console excerpt
    assert "set 0 state=STOP_COPY" in report  # the program, as text
    assert "# step -1: unknown" in report  # this recorder saw no op begin: the program's resets ran
    assert summary["confirmed"].startswith("reproduced")
    out = capsys.readouterr().out
    assert "FINDING kernel-splat" in out and SPLAT in out
    assert "boot 4.5 s (tcg); command did not finish" in out  # the panic ended it: no time, no "None"


def test_a_panics_replay_runs_beside_the_next_boot(host, monkeypatch, capsys):
    """--keep-going: the campaign's guest boots again while the program that panicked it is replayed
    on a boot of its own (the replay is held until that next boot has run: waiting for it would
    deadlock), and the replay's answer reaches the output and the summary."""
    held, boots = threading.Event(), []

    def guest(command, timeout=120, instances=2, results_dir=None, prepared=None, extra_args=""):
        results = Path(results_dir or rig._new_results_dir())
        results.mkdir(parents=True, exist_ok=True)
        if "repro" in command:
            assert held.wait(10), "the campaign waited for the replay"
            return guest_result(results, exit_status=None, console=PANIC_CONSOLE, splats=[SPLAT])
        boots.append(command)
        if len(boots) == 1:
            flight_with(results, encode(PROGRAM))
            return guest_result(results, exit_status=None, output=OUTPUT[:200], console=PANIC_CONSOLE,
                                splats=[SPLAT, "Kernel panic - not syncing"])
        held.set()
        return guest_result(results)

    guest.clock = lambda: 0.0
    code, summary = run_vm(host, guest, monkeypatch, "--keep-going")
    assert code == 1 and len(boots) == 2
    out = capsys.readouterr().out
    assert "replaying it on a fresh boot, beside the campaign" in out
    [(cause, said)] = summary["confirmations"].items()
    assert said.startswith("reproduced") and f"{cause}: {said}" in out


def test_the_wall_rate_counts_what_a_panicked_boot_ran_after_its_last_stats_line(host, monkeypatch, capsys):
    # The guest prints a stats line every 5 s; a panic between two lines ends it at once. Its
    # flight recorder counted 250 programs started, the last line 100.
    def panicked(results):
        flight_with(results, *[encode(PROGRAM)] * 250)
        return guest_result(results, exit_status=None, console=PANIC_CONSOLE, splats=[SPLAT],
                            output="migfuzz: stats: 5.0s execs 100 (20/s) protocol arcs 3 findings 0\n")

    code, summary = run_vm(host, FakeGuest(panicked, seconds=10.0), monkeypatch, "--no-confirm")
    assert code == 1 and summary["execs"] == 100  # the fuzz loop's rate stays the stats line's
    assert (summary["programs_started"], summary["wall_s"], summary["programs_per_wall_s"]) == (250, 10.0, 25.0)
    assert "250 programs started (flight recorder), 25.0 programs/s" in capsys.readouterr().out


def test_a_boot_panicked_before_its_first_stats_line_says_how_many_programs_it_started(host, monkeypatch, capsys):
    def panicked(results):
        flight_with(results, *[encode(PROGRAM)] * 12)
        return guest_result(results, exit_status=None, console=PANIC_CONSOLE, splats=[SPLAT], output="")

    code, summary = run_vm(host, FakeGuest(panicked, seconds=4.0), monkeypatch, "--no-confirm")
    assert code == 1 and "execs" not in summary and summary["programs_started"] == 12
    assert "no stats line in the guest output (12 programs started, by the flight recorder" in capsys.readouterr().out


def test_a_panic_before_any_program_is_reported_without_a_crash_file(host, monkeypatch, capsys):
    def panicked(results):
        return guest_result(results, exit_status=None, output="", console=PANIC_CONSOLE, splats=[SPLAT])

    code, summary = run_vm(host, FakeGuest(panicked), monkeypatch, "--no-confirm")
    assert code == 1 and summary["crash_files"] == []
    assert "no program was running" in capsys.readouterr().out


def test_a_guest_stuck_in_a_program_is_a_hang_finding(host, monkeypatch):
    def stuck(results):
        flight_with(results, encode(PROGRAM))
        return guest_result(results, exit_status=None, output=OUTPUT[:200], timed_out=True)

    code, summary = run_vm(host, FakeGuest(stuck), monkeypatch)
    assert code == 1
    report = Path(summary["crash_files"][0]).with_suffix(".txt").read_text()
    assert "# migfuzz finding: hang" in report


def test_infrastructure_failures_are_exit_3(host, monkeypatch, capsys):
    def slow(results):  # timed out, no program running: not a finding
        flight_with(results, encode(PROGRAM), state=flight.CLOSED)
        return guest_result(results, exit_status=None, output="", timed_out=True)

    assert run_vm(host, FakeGuest(slow), monkeypatch)[0] == 3
    assert "raise --timeout" in capsys.readouterr().out

    def no_boot(results):
        return guest_result(results, exit_status=None, output="", boot=None, setup_failure="MIGFUZZ-SETUP-FAILED: x")

    assert run_vm(host, FakeGuest(no_boot), monkeypatch)[0] == 3

    def crashed(results):  # the fuzzer died without writing a crash file
        return guest_result(results, exit_status=1, output="Traceback (most recent call last):\nBoom\n")

    assert run_vm(host, FakeGuest(crashed), monkeypatch)[0] == 3
    assert "Boom" in capsys.readouterr().out


def test_rig_skips_only_when_the_registry_is_unreachable(monkeypatch, capsys):
    """CI skips the rig tests on exit 3 only: apt could not reach its registry. Any other failure
    to prepare (a missing package, a kernel without headers, a broken build) is exit 1."""
    def apt_down():
        raise subprocess.CalledProcessError(100, ["apt-get", "install", "-y", "qemu-system-x86"])

    monkeypatch.setattr(rig, "prepare", apt_down)
    monkeypatch.setattr(vm, "registry_unreachable", lambda: "Temporary failure resolving 'deb.debian.org'")
    assert main(["vm", "prepare"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rig unavailable" in err[0] and "apt-get install" in err[0]
    assert "Temporary failure resolving" in err[0]

    monkeypatch.setattr(vm, "registry_unreachable", lambda: None)  # reachable: the package is the problem
    assert main(["vm", "prepare"]) == 1
    assert "preparing the rig failed" in capsys.readouterr().out

    def no_kernel():
        raise RuntimeError("no linux-image-6.12.*+deb12-amd64 with matching headers in apt")

    monkeypatch.setattr(rig, "prepare", no_kernel)
    assert main(["vm", "fuzz"]) == 1

    def build_broken():
        raise subprocess.CalledProcessError(2, ["make", "-C", "headers"])

    monkeypatch.setattr(rig, "prepare", build_broken)
    assert main(["vm", "prepare"]) == 1
    assert "make -C headers" in capsys.readouterr().out


def test_usage_errors_are_exit_2(capsys):
    assert main(["vm"]) == 2
    assert main(["vm", "fuzz", "--max-time", "soon"]) == 2
    assert main(["vm", "run"]) == 2  # no command: refused before anything boots
    capsys.readouterr()


# ---------------------------------------------------------------------------- the debug kernel

DATA = Path(__file__).parent / "data"


def test_a_kasan_panic_is_a_finding_grouped_by_its_report(host, monkeypatch, capsys):
    """The report that panicked the guest (KASAN, not the lockdep report before it) names the finding:
    its signature is the report's title and top frames, its crash text the whole report."""
    console = (DATA / "lockdep-then-kasan.console").read_text()
    asked = []
    monkeypatch.setattr(vm, "prepare", lambda kernel="stock": asked.append(kernel) or (rig.load(), 0.0))

    def panicked(results):
        flight_with(results, encode(PROGRAM))
        return guest_result(results, exit_status=None, output=OUTPUT[:200], console=console,
                            splats=find_splats(console))

    code, summary = run_vm(host, FakeGuest(panicked), monkeypatch, "--no-confirm", "--kernel", "debug")
    assert code == 1 and set(asked) == {"debug"}
    crash = Path(summary["crash_files"][-1])
    meta = read_meta(crash)
    title = "BUG: KASAN: slab-out-of-bounds in mtty_resume_write [mtty]"
    assert meta.finding.kind == "kernel-splat" and meta.finding.observed.startswith("BUG: KASAN: slab-out-of-bounds")
    assert signature(meta.finding) == f"kernel-splat|{title}|mtty_resume_write,vfs_write,ksys_write"
    assert signature(meta.finding, coarse=True) == signature(meta.finding)
    text = crash.with_suffix(".txt").read_text()
    assert "Allocated by task 231:" in text and "end Kernel panic" in text  # the whole report
    assert "circular locking" not in text  # an earlier, non-fatal report is not this finding's
    assert "FINDING kernel-splat: the guest kernel panicked: BUG: KASAN" in capsys.readouterr().out


def test_kernel_reports_of_one_stack_are_one_signature_whatever_the_arc():
    report = kernel_reports((DATA / "ubsan-warn.console").read_text().splitlines())[0]
    a = Finding("kernel-splat", 3, "", report.headline, "STOP -set-> RUNNING", "set 0 state=RUNNING", report.text,
                cause=report.cause)
    b = a._replace(arc="RESUMING -write->", op="write 1 fd=0 data=00", step=7)
    assert signature(a) == signature(b) == f"kernel-splat|{report.cause}"
    plain = a._replace(cause="")  # a bare line (no report): as before, kind|arc|op
    assert signature(plain) == "kernel-splat|STOP -set-> RUNNING|set"


def test_the_debug_kernel_is_unavailable_only_when_apt_is(monkeypatch, capsys):
    def tools_missing():
        raise subprocess.CalledProcessError(100, ["apt-get", "install", "-y", "flex", "bison", "libelf-dev"])

    monkeypatch.setattr(debugkernel, "prepare", tools_missing)
    monkeypatch.setattr(vm, "registry_unreachable", lambda: "Could not resolve 'deb.debian.org'")
    assert main(["vm", "prepare", "--kernel", "debug"]) == 3
    assert "flex" in capsys.readouterr().err
    monkeypatch.setattr(vm, "registry_unreachable", lambda: None)
    assert main(["vm", "prepare", "--kernel", "debug"]) == 1

    def make_failed():
        raise subprocess.CalledProcessError(2, ["nice", "-n", "19", "make", "-C", "src", "-j2", "bzImage"])

    monkeypatch.setattr(debugkernel, "prepare", make_failed)
    assert main(["vm", "prepare", "--kernel", "debug"]) == 1
    assert "nice -n 19 make" in capsys.readouterr().out


def test_keep_going_boots_again_after_a_kernel_panic(host, monkeypatch):
    console = (DATA / "lockdep-then-kasan.console").read_text()
    first = ("migfuzz: stats: 5.0s execs 50 (10/s) protocol arcs 40 findings 0 kernel PCs 900 (VFIO core 200, "
             "driver 90)\n")
    second = ("migfuzz: stats: 5.0s execs 60 (12/s) protocol arcs 45 findings 0 kernel PCs 950 (VFIO core 210, "
              "driver 95)\nmigfuzz: stats: 40.0s execs 400 (10/s) protocol arcs 52 findings 0 kernel PCs 1100 "
              "(VFIO core 260, driver 120)\n")

    def panicked(results):
        flight_with(results, encode(PROGRAM))
        (results / "report").mkdir(exist_ok=True)
        (results / "report" / "migfuzz.jsonl").write_text('{"type": "stats", "elapsed_s": 5.0, "execs": 50}\n')
        return guest_result(results, exit_status=None, output=first, console=console, splats=find_splats(console))

    def clean(results):
        return guest_result(results, output=second)

    guest = FakeGuest(panicked, clean, seconds=5.0)
    code, summary = run_vm(host, guest, monkeypatch, "--no-confirm", "--keep-going", "--max-time", "45",
                           "--report-dir", str(host / "report"))
    assert code == 1 and len(guest.commands) == 2 and summary["boots"] == 2
    # each guest gets the rest of the budget less what a boot costs beside its campaign
    assert "--max-time 35.0" in guest.commands[0] and "--max-time 30.0" in guest.commands[1]
    assert vm.GUEST_OVERHEAD["stock"] == 10.0
    assert guest.kernel_args == ["", vm.KEEP_RUNNING_ARGS]  # the second boot reports without panicking
    assert (host / "results" / "crashes" / Path(summary["crash_files"][0]).name).exists()  # the guest knows it
    records = [json.loads(line) for line in (host / "report" / "migfuzz.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records if r["type"] == "finding"] == ["kernel-splat"]  # in the campaign's report
    assert (host / "report" / "migfuzz.sarif").exists()
    assert (host / "results" / "console.log").exists() and (host / "results" / "console.2.log").exists()
    assert summary["execs"] == 450 and summary["kernel_pcs"] == 1100
    assert [t for t, _ in summary["kernel_pcs_over_time"]] == [5.0, 10.0, 45.0]  # laid end to end
    assert len(summary["crash_files"]) == 1
    assert read_meta(Path(summary["crash_files"][0])).finding.kind == "kernel-splat"

    without = FakeGuest(panicked, clean)
    assert run_vm(host, without, monkeypatch, "--no-confirm", "--max-time", "45")[0] == 1
    assert len(without.commands) == 1  # without --keep-going the first finding ends the campaign


def test_keep_going_counts_the_wall_clock_not_the_guests_own(host, monkeypatch):
    # Seen on mtty: a guest that panics before its first stats line reports no time of its own, and a
    # 150 s campaign booted 26 times in 400 s. Each boot here takes 20 s and never prints a stats line.
    console = (DATA / "lockdep-then-kasan.console").read_text()

    def panicked(results):
        flight_with(results, encode(PROGRAM))
        return guest_result(results, exit_status=None, output="", console=console, splats=find_splats(console))

    guest = FakeGuest(*[panicked] * 10, seconds=20.0)
    code, summary = run_vm(host, guest, monkeypatch, "--no-confirm", "--keep-going", "--max-time", "100")
    # 100 s: boots end at 20, 40, 60, 80 and 100 s; 20 s left is still worth a boot (its guest gets 10 s)
    assert code == 1 and len(guest.commands) == 5 and summary["boots"] == 5
    assert ["--max-time 90.0" in guest.commands[0], "--max-time 10.0" in guest.commands[4]] == [True, True]
    code, summary = run_vm(host, FakeGuest(*[panicked] * 10, seconds=20.0), monkeypatch, "--no-confirm",
                           "--keep-going", "--max-time", "90")
    assert summary["boots"] == 4  # 90 s: 10 s left after the fourth boot is not


def test_stream_fields_at_a_boundary_are_the_union_of_the_boots(host, monkeypatch, capsys):
    # Each boot's guest counts the fields that took a boundary value from zero; its stats records in
    # the report name them, and the campaign counts a field any boot reached.
    console = (DATA / "lockdep-then-kasan.console").read_text()
    line = "migfuzz: stats: 5.0s execs 50 (10/s) protocol arcs 40 findings 0 fields at a boundary {}/4\n"

    def boot(reached, missed, panic):
        def answer(results):
            (results / "report").mkdir(exist_ok=True)
            with open(results / "report" / "migfuzz.jsonl", "a") as f:
                f.write(json.dumps({"type": "stats", "execs": 50, "fields_reached": reached,
                                    "fields_missed": missed}) + "\n")
            if not panic:
                return guest_result(results, output=line.format(len(reached)))
            flight_with(results, encode(PROGRAM))
            return guest_result(results, exit_status=None, output=line.format(len(reached)), console=console,
                                splats=find_splats(console))
        return answer

    guest = FakeGuest(boot([0, 8], [16, 24], True), boot([16], [0, 8, 24], False), seconds=10.0)
    code, summary = run_vm(host, guest, monkeypatch, "--no-confirm", "--keep-going", "--max-time", "60")
    assert len(guest.commands) == 2
    assert (summary["fields_at_boundary"], summary["fields"], summary["fields_missed"]) == (3, 4, [24])
    out = capsys.readouterr().out
    assert "stream fields at a boundary 3/4" in out and "never loaded at a boundary value, by offset: 24" in out
    assert summary["wall_s"] == 20.0 and summary["programs_per_wall_s"] == 5.0  # 100 programs in 20 s

    shutil.rmtree(host / "results")  # a campaign of its own: not the JSON lines above
    alone = FakeGuest(boot([0, 16], [8, 24], False), seconds=10.0)
    summary = run_vm(host, alone, monkeypatch)[1]
    assert (summary["fields_at_boundary"], summary["fields_missed"]) == (2, [8, 24])
    jobs = vm.merge_jobs([dict(summary, fields_missed=[8, 24]), dict(summary, fields_missed=[0, 24], wall_s=12.5)])
    assert (jobs["fields_at_boundary"], jobs["fields_missed"]) == (3, [24])  # what any guest reached
    # by the wall clock: both guests' programs over the longer guest's campaign
    assert (jobs["wall_s"], jobs["programs_per_wall_s"]) == (12.5, round(2 * summary["execs"] / 12.5, 1))
    assert "wall_s" not in vm.merge_jobs([summary, {k: v for k, v in summary.items() if k != "wall_s"}])


def test_kernel_pcs_over_several_boots_never_fall_back_to_the_replay():
    # Each boot's campaign counts kernel PCs from zero while it replays the corpus (seen in a
    # 10-minute debug-kernel campaign: 1537 PCs, then 0 after a panic's reboot): the merged series
    # keeps the most reached so far, and the total is the most any boot reached.
    boot = {"findings_lines": [], "execs": 100, "elapsed_s": 50.0, "findings": 0, "arcs": 10,
            "kernel_pcs_vfio": 10, "kernel_pcs_driver": 20}
    runs = [dict(boot, kernel_pcs=1537, kernel_pcs_over_time=[[10.0, 900], [50.0, 1537]]),
            dict(boot, kernel_pcs=1600, kernel_pcs_over_time=[[5.0, 0], [30.0, 1200], [50.0, 1600]])]
    merged = vm.merge_runs(runs)
    assert merged["kernel_pcs_over_time"] == [[10.0, 900], [50.0, 1537], [55.0, 1537], [80.0, 1537], [100.0, 1600]]
    assert merged["kernel_pcs"] == 1600 and merged["boots"] == 2 and merged["execs"] == 200


def test_the_host_writes_the_bytecode_the_guest_imports(tmp_path):
    # The guest mounts the tree read-only: the host compiles what it imports before each boot.
    for package in rig.GUEST_PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "mod.py").write_text("X = 1\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mod.py").write_text("X = 1\n")
    assert rig.compile_project(tmp_path)
    for package in rig.GUEST_PACKAGES:
        assert [p.name.split(".")[0] for p in (tmp_path / package / "__pycache__").glob("*.pyc")] == ["mod"]
    assert not (tmp_path / "other" / "__pycache__").exists()
    (tmp_path / "fuzz" / "broken.py").write_text("def (:\n")
    assert rig.compile_project(tmp_path) is False  # said, not raised: the guest compiles that one itself


def test_a_panics_crash_file_names_the_op_the_flight_recorder_saw_begin(host, monkeypatch):
    def panicked(results):
        flight_with(results, encode(PROGRAM), step=1)
        return guest_result(results, exit_status=None, output=OUTPUT[:200], console=PANIC_CONSOLE,
                            splats=[SPLAT, "Kernel panic - not syncing"])

    code, summary = run_vm(host, FakeGuest(panicked), monkeypatch, "--no-confirm")
    crash = Path(summary["crash_files"][-1])
    meta = read_meta(crash)
    assert code == 1 and meta.finding.step == 1
    assert meta.finding.op == format_op("v2", PROGRAM.ops[1])
    assert f"# step 1: {format_op('v2', PROGRAM.ops[1])}" in crash.with_suffix(".txt").read_text()


def test_a_guest_is_given_what_is_left_less_a_boots_cost_and_never_less_than_the_minimum():
    assert vm._guest_time(60.0, "stock") == 60.0 - vm.GUEST_OVERHEAD["stock"]
    assert vm._guest_time(600.0, "debug") == 600.0 - vm.GUEST_OVERHEAD["debug"]
    assert vm._guest_time(8.0, "stock") == vm.GUEST_MIN  # a tiny --max-time still fuzzes a little
    # --keep-going boots again only when its guest would get GUEST_MIN: a debug boot costs more
    assert [vm._boot_again(left, "stock") for left in (14.9, 15.0)] == [False, True]
    assert [vm._boot_again(left, "debug") for left in (20.0, 29.9, 30.0)] == [False, False, True]
