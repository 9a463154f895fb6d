"""``migfuzz vm``: the fuzzer against the real ``mtty`` driver, in the rig guest, in one command.

::

    migfuzz vm prepare                      # once: host packages, kernel, mtty.ko, initramfs (cached)
    migfuzz vm fuzz --max-time 60 [--crashes DIR] [--corpus DIR] [--keep-going] [-- LIBFUZZER_FLAGS]
    migfuzz vm selfcheck                    # what the driver answers (harness.kernel.selfcheck)
    migfuzz vm conform [-- ARGS]            # `migfuzz conform --target mtty` in the guest (if present)
    migfuzz vm run [--timeout S] -- CMD     # any shell command in the guest

Every action prepares the rig first (``harness.kernel.rig``; a no-op once
cached), boots the Debian 6.12 guest under QEMU, and in it runs this project
from the host's tree (read-only 9p root, same path, same Python:
``sys.executable`` of this process, so a venv works) against the mtty
instances the guest created. Results come back through the writable share,
``--results DIR`` (default: a fresh directory under the rig cache): the
console log (``console.log``), the guest command's output (``output.log``),
the campaign's corpus, crashes and reports, and ``vm-summary.json``.

``vm fuzz`` runs ``migfuzz fuzz --target mtty --i-know-this-resets-the-device``
in the guest, copies ``--corpus`` in and the grown corpus back, copies crash
files into ``--crashes`` and prints setup time, boot time, programs/s against
mtty, protocol arcs and findings. ``--jobs N`` boots N guests side by side, each
with its own campaign (seeds ``--seed`` + i) and results directory (``job-i``
under ``--results``; ``--report-dir``/``job-i`` for reports), sharing
``--corpus`` and ``--crashes``: a TCG guest runs on one host core, so N cores
run N guests.

A kernel WARN/oops panics the guest (``panic_on_warn=1 oops=panic``), which
ends QEMU at once. The host then reports it as a ``kernel-splat`` finding:
the crash file holds the program the flight recorder (``flight.py``) saw
running when the kernel died (a panic in the resets between programs: the
one before them), its report the console excerpt; unless
``--no-confirm``, a boot of its own replays that program to see whether it
panics the kernel again, beside the campaign (whose guest boots again at once
with ``--keep-going``; the replays' answers come at the end). A guest that
stops making progress in the middle of a program is reported the same way as
a ``hang``.

Exit codes: 0 nothing found; 1 a finding (crash files written); 2 usage;
3 the rig is unavailable (packages cannot be installed or downloaded, e.g.
the apt registry is unreachable, or QEMU is missing) or the guest run failed
(setup failure, timeout with no program running, the fuzzer crashed); the
message says which.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from harness.base import TargetUnavailable
from harness.kernel import debugkernel, flight, rig, selfcheck
from harness.kernel.kmsg import first_fatal, kernel_reports
from harness.runtime import EXIT_FINDING, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

from . import layout
from .campaign import check_jobs
from .codec import decode
from .crashfile import read_meta, save_finding
from .errors import UsageError
from .findings import Finding, signature
from .program import format_op
from .report import JSONL_NAME, JUNIT_NAME, SARIF_NAME, JsonlReporter, read_jsonl, write_reports

SUMMARY_FILE = "vm-summary.json"
GUEST_RESULTS = "$MIGFUZZ_RESULTS"
# Boot + Python/atheris start-up under TCG + shutdown, on a loaded host, by --kernel (KASAN and
# lockdep make the debug kernel's boot and every system call slower).
BOOT_ALLOWANCE = {"stock": 180.0, "debug": 420.0}
wall_clock = time.monotonic  # what --max-time is counted on (the tests' guests take no time)
# What a boot costs by the wall clock beyond its guest campaign's own --max-time (boot, interpreter
# and imports, shutdown), by --kernel: each guest is given what is left of --max-time minus this,
# so a campaign ends near --max-time. Measured 2026-12-03: 9.6 s (stock, 60 s campaigns) and ~25 s
# (debug: a 19-20 s boot). The first guest gets at least GUEST_MIN; --keep-going boots again after
# a panic only when a guest would get that much (15 s left on the stock kernel, 30 s on debug).
GUEST_OVERHEAD = {"stock": 10.0, "debug": 25.0}
GUEST_MIN = 5.0
# --keep-going after a panic: the boots that follow report instead of panicking (every KASAN report, not
# just the first), so the program that panicked the guest cannot end every later boot in seconds; their
# sanitizer reports are the in-guest kernel-splat findings of the program that ran (/dev/kmsg).
KEEP_RUNNING_ARGS = "panic_on_warn=0 kasan_multi_shot"
STATS = re.compile(r"migfuzz: stats: ([\d.]+)s execs (\d+) \([^)]*\) protocol arcs (\d+) findings (\d+)"
                   r"(?: kernel PCs (\d+) \(VFIO core (\d+), driver (\d+)\))?"
                   r"(?: fields at a boundary (\d+)/(\d+))?")
EXCERPT_BEFORE, EXCERPT_AFTER = 5, 60
SELFCHECK = '"$MIGFUZZ_PYTHON" -m harness.kernel.selfcheck'
SENSES_FILE = "senses.json"
KASAN_TITLE = "BUG: KASAN: "


class RigUnavailable(TargetUnavailable):
    """The rig cannot be prepared here (exit 3)."""

    what = "vm: rig unavailable"


_job = threading.local()  # ``--jobs``: which guest a thread's lines are about ("[job 2] ")


def say(text: str) -> None:
    print(f"migfuzz vm: {getattr(_job, 'label', '')}{text}", flush=True)


# ---------------------------------------------------------------------------- preparing


# What apt prints when it cannot reach its registry (network down, no DNS, proxy refused).
UNREACHABLE = ("Temporary failure resolving", "Could not resolve", "Failed to fetch", "Could not connect",
               "Connection failed", "Network is unreachable", "Connection timed out", "No route to host")


class RigBroken(Exception):
    """The rig could not be prepared for a reason other than an unreachable registry (exit 1)."""


def registry_unreachable() -> str | None:
    """Why the apt registry cannot be reached (`apt-get update`'s own words), or None if it can."""
    try:
        r = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get update: {e}"
    text = r.stdout + r.stderr
    for line in text.splitlines():
        if any(marker in line for marker in UNREACHABLE):
            return line.strip()
    return None


# --kernel: the module that prepares and loads that kernel's rig (both have prepare() and load()).
KERNELS = {"stock": rig, "debug": debugkernel}


def prepare(kernel: str = "stock") -> tuple[rig.Rig, float]:
    """rig.prepare() (or debugkernel.prepare() for ``--kernel debug``). RigUnavailable (exit 3)
    only when the package registry cannot be reached; any other failure is RigBroken (exit 1),
    with the command that failed and why."""
    try:
        return KERNELS[kernel].prepare()
    except subprocess.CalledProcessError as e:
        words = e.cmd if isinstance(e.cmd, list) else shlex.split(str(e.cmd))
        command = " ".join(map(str, words[:6]))
        tool = os.path.basename(str(words[0])) if words else "?"
        if tool in ("apt-get", "apt-cache"):
            why = registry_unreachable()
            if why:
                raise RigUnavailable(f"`{command}` failed (exit {e.returncode}): the apt registry is "
                                     f"unreachable ({why})") from None
        raise RigBroken(f"`{command}` failed (exit {e.returncode})") from None
    except FileNotFoundError as e:
        raise RigBroken(f"{e.filename or e}: not found (the rig needs a Debian host with apt, dpkg and "
                        f"QEMU)") from None
    except (RuntimeError, OSError) as e:  # e.g. no 6.12 kernel with headers in the apt sources
        raise RigBroken(str(e)) from None


def _boot(args, command: str, timeout: float, console: str = "console.log",
          extra_args: str = "") -> tuple[rig.GuestResult, float]:
    prepared = prepare(args.kernel)
    results = Path(args.results).resolve() if args.results else rig._new_results_dir()
    results.mkdir(parents=True, exist_ok=True)
    result = rig.run_guest(command, timeout=timeout, instances=args.instances, results_dir=results,
                           prepared=prepared, extra_args=extra_args)
    (results / console).write_text(result.console + "\n")
    return result, prepared[1]


def _timings(result: rig.GuestResult, setup: float, kernel: str = "stock") -> dict:
    prepared = KERNELS[kernel].load()
    cold = prepared.setup_seconds if prepared else None
    return {"setup_s": round(setup, 1), "cold_setup_s": cold, "boot_s": result.boot_seconds,
            "command_s": result.command_seconds, "accel": result.accel, "kernel": kernel}


def _say_timings(t: dict) -> None:
    cached = f" (cached; the cold setup took {t['cold_setup_s']} s)" if t["setup_s"] < 1 and t["cold_setup_s"] else ""
    # (no command time: the guest never reported its command finished, e.g. a panic ended it)
    command = "did not finish" if t["command_s"] is None else f"{t['command_s']} s"
    say(f"setup {t['setup_s']} s{cached}; boot {t['boot_s']} s ({t['accel']}); command {command}")


def _excerpt(console: str, marker: str | None) -> str:
    lines = console.splitlines()
    at = next((i for i, line in enumerate(lines) if marker and marker in line), max(len(lines) - EXCERPT_AFTER, 0))
    return "\n".join(line.rstrip("\r") for line in lines[max(at - EXCERPT_BEFORE, 0):at + EXCERPT_AFTER])


def _guest_failure(result: rig.GuestResult) -> str | None:
    """Why the guest run is unusable (setup failure / no boot), or None."""
    if result.setup_failure:
        return result.setup_failure
    if result.boot_seconds is None and not result.splats:
        tail = "\n".join(result.console.splitlines()[-20:])
        return f"the guest did not reach stage 2 (timed out: {result.timed_out})\n{tail}"
    return None


# ---------------------------------------------------------------------------- fuzz


def _copy_new(src: Path, dst: Path) -> int:
    """Copy files of src missing from dst; returns how many."""
    if not src.is_dir():
        return 0
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.endswith(".tmp") and not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)
            n += 1
    return n


def fuzz_command(args, report: bool) -> str:
    """The shell command the guest runs (cwd = the project root)."""
    words = ["fuzz", "--target", "mtty", "--i-know-this-resets-the-device", "--seed", str(args.seed)]
    if args.max_time is not None:
        words += ["--max-time", str(args.max_time)]
    if args.runs is not None:
        words += ["--runs", str(args.runs)]
    if args.keep_going:
        words.append("--keep-going")
    if args.disable_ops:
        words += ["--disable-ops", ",".join(sorted(args.disable_ops))]
    if args.no_instrument:
        words.append("--no-instrument")
    line = '"$MIGFUZZ_PYTHON" -m fuzz.cli ' + shlex.join(words)
    line += f' --corpus "{GUEST_RESULTS}/corpus" --crashes "{GUEST_RESULTS}/crashes"'
    if report:
        line += f' --report-dir "{GUEST_RESULTS}/report"'
    if args.libfuzzer_args:
        line += " -- " + shlex.join(args.libfuzzer_args)
    return line


def parse_output(output: str) -> dict:
    """Last stats line and the FINDING lines of the campaign's output."""
    lines = list(STATS.finditer(output))
    out: dict = {"findings_lines": [line for line in output.splitlines() if "migfuzz: FINDING" in line]}
    if lines:
        last = lines[-1]
        elapsed, execs = float(last.group(1)), int(last.group(2))
        out.update(elapsed_s=elapsed, execs=execs, arcs=int(last.group(3)), findings=int(last.group(4)),
                   programs_per_s=round(execs / elapsed, 1) if elapsed > 0 else None, steady_programs_per_s=None)
        if last.group(5) is not None:  # a kernel with KCOV: distinct kernel PCs covered, over time
            out.update(kernel_pcs=int(last.group(5)), kernel_pcs_vfio=int(last.group(6)),
                       kernel_pcs_driver=int(last.group(7)),
                       kernel_pcs_over_time=[[float(m.group(1)), int(m.group(5))] for m in lines if m.group(5)])
        if last.group(8) is not None:  # stream fields that took a boundary value (fuzz.layout.BoundaryCoverage)
            out.update(fields_at_boundary=int(last.group(8)), fields=int(last.group(9)))
        # The campaign's clock includes start-up (instrumenting, loading the corpus): the rate
        # between its first and last stats lines (5 s apart at least) is the running speed.
        first = lines[0]
        span = elapsed - float(first.group(1))
        if len(lines) > 1 and span > 0:
            out["steady_programs_per_s"] = round((execs - int(first.group(2))) / span, 1)
    return out


def write_guest_finding(crashes: Path, kind: str, data: bytes, proto: str, observed: str, detail: str,
                        notes: list[str], cause: str = "", step: int | None = None) -> Path:
    """A crash file for a finding the guest could not write itself (it died); ``cause``: the kernel
    report's title and top frames (``KernelReport.cause``), what its signature groups by; ``step``:
    the op the flight recorder saw begin last (None: the program's resets were running)."""
    prog = decode(data, proto or "v2")
    expected = ("no kernel WARN, BUG, oops or lockup report" if kind == "kernel-splat"
                else "the guest keeps running programs")
    if step is not None and step < len(prog.ops):
        finding = Finding(kind, step, expected, observed, "unknown (the guest died in this op)",
                          op=format_op(prog.proto, prog.ops[step]), detail=detail, cause=cause)
    else:
        finding = Finding(kind, -1, expected, observed, "unknown (the guest died in this program)",
                          op="unknown: the guest kernel stopped while this program ran", detail=detail, cause=cause)
    path, warning = save_finding(crashes, data, prog, finding, [(-1, note) for note in notes], "mtty")
    if warning:
        say(warning)
    return path


def _flight_finding(result: rig.GuestResult, crashes: Path, kind: str, observed: str,
                    marker: str | None, reports: list | None = None,
                    console: Path | None = None) -> tuple[Path | None, str]:
    """The finding for the program the flight recorder saw running when the guest died. Its detail
    is the kernel reports from the one that ended the guest on (``reports``, whole), else a console
    excerpt around ``marker``; its cause the first report's title and top frames."""
    rec = flight.read_flight(result.results_dir / flight.FILE_NAME)
    excerpt = "\n".join(r.text for r in reports) if reports else _excerpt(result.console, marker)
    if rec is None or rec.last is None:
        return None, excerpt
    seq, data = rec.programs[0]
    notes = [f"flight recorder: program #{seq} of the campaign, the last one started when the guest died"]
    notes += [f"program #{n} before it: {p.hex()}" for n, p in rec.programs[1:4]]
    notes.append(f"console log: {console or result.results_dir / 'console.log'}")
    path = write_guest_finding(crashes, kind, data, rec.proto, observed, excerpt, notes,
                               reports[0].cause if reports else "", rec.last_step)
    return path, excerpt


class Replays:
    """Replays of the programs that panicked the guest, each on a fresh boot of its own, beside the
    campaign: the campaign's guest boots again at once instead of waiting for the replay (one
    TCG guest uses one core; a replay took a boot and a program, 6-8 s of a campaign's
    budget). One at a time; :meth:`results` waits for them."""

    def __init__(self, args):
        self.args = args
        self.label = getattr(_job, "label", "")  # a --jobs guest's replays speak for it
        self.pool: ThreadPoolExecutor | None = None
        self.by_cause: dict[str, Future] = {}

    def start(self, cause: str, crash: Path) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vm-replay")
        self.by_cause[cause] = self.pool.submit(self._replay, crash)

    def _replay(self, crash: Path) -> str:
        _job.label = self.label
        try:
            return _confirm(self.args, crash)
        except (RigBroken, OSError) as e:
            return f"not replayed: {e}"

    def said(self, cause: str) -> str:
        """What the replay of a report's first program showed, or that it is still running."""
        future = self.by_cause[cause]
        return future.result() if future.done() else "its replay is running"

    def results(self) -> dict[str, str]:
        """{report cause: what its replay showed}, once every replay has ended."""
        out = {cause: future.result() for cause, future in self.by_cause.items()}
        if self.pool is not None:
            self.pool.shutdown()
        return out


def _confirm(args, crash: Path) -> str:
    """Boot again and replay the crash program; whether the kernel splats again."""
    results = rig._new_results_dir()
    shutil.copy2(crash, results / "program")
    shutil.copy2(crash.with_name(crash.name + ".txt"), results / "program.txt")  # its protocol, for repro
    command = (f'"$MIGFUZZ_PYTHON" -m fuzz.cli repro "{GUEST_RESULTS}/program" --target mtty '
               "--i-know-this-resets-the-device")
    result = rig.run_guest(command, timeout=BOOT_ALLOWANCE[args.kernel], instances=args.instances, results_dir=results,
                           prepared=prepare(args.kernel))
    (results / "console.log").write_text(result.console + "\n")
    if result.splats:
        return f"reproduced: replaying the program on a fresh boot splats again ({result.splats[0].strip()})"
    return f"not reproduced on a fresh boot (repro exit {result.exit_status}; log {results})"


def merge_runs(runs: list[dict]) -> dict:
    """The stats of a campaign that took several boots (``--keep-going`` after kernel panics): totals
    of programs, time and findings; kernel PCs and protocol arcs as the most any boot reached (each
    boot's campaign counts from zero, and replays the corpus first); the series laid end to end."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[-1], findings_lines=[line for r in runs for line in r["findings_lines"]], boots=len(runs),
               programs_started=sum(r.get("programs_started", r.get("execs", 0)) for r in runs))
    timed = [r for r in runs if "execs" in r]
    if not timed:
        return out
    execs, elapsed = sum(r["execs"] for r in timed), sum(r["elapsed_s"] for r in timed)
    out.update(execs=execs, elapsed_s=round(elapsed, 1), programs_per_s=round(execs / elapsed, 1) if elapsed else None,
               findings=sum(r["findings"] for r in timed), arcs=max(r["arcs"] for r in timed),
               steady_programs_per_s=None)
    if any("fields" in r for r in timed):  # each boot counts from zero: the most one reached
        out["fields_at_boundary"] = max(r.get("fields_at_boundary", 0) for r in timed)
    if any("kernel_pcs" in r for r in timed):
        # Each boot counts its PCs from zero while it replays the corpus: the series keeps the most
        # reached so far (a lower bound of the union; boots share module addresses under nokaslr,
        # but not their PC sets), so it shows growth, not the replay's dips.
        series, offset, most = [], 0.0, 0
        for r in timed:
            for t, pcs in r.get("kernel_pcs_over_time", []):
                most = max(most, pcs)
                series.append([round(t + offset, 1), most])
            offset += r["elapsed_s"]
        out["kernel_pcs_over_time"] = series
        for key in ("kernel_pcs", "kernel_pcs_vfio", "kernel_pcs_driver"):
            out[key] = max(r.get(key, 0) for r in timed)
    return out


def _report_finding(report_dir: Path, crash: Path) -> None:
    """Add a finding the host made (a kernel panic's) to the campaign's JSON lines, as the engine
    records its own, so the campaign page and SARIF show it."""
    finding = read_meta(crash).finding
    if finding is None or not report_dir.is_dir():
        return
    reporter = JsonlReporter(report_dir, "mtty")
    reporter("finding", dict(finding.data(), signature=signature(finding), file=str(crash), target="mtty",
                             known=False))
    reporter.release()


def _finish_report(report_dir: Path, out: Path | None) -> None:
    """SARIF and JUnit from the whole JSON lines (a boot that ended in a panic wrote none), then
    the report to ``--report-dir``."""
    if not (report_dir / JSONL_NAME).exists():
        return
    write_reports(read_jsonl(report_dir / JSONL_NAME), report_dir / SARIF_NAME, report_dir / JUNIT_NAME)
    if out is not None:
        shutil.copytree(report_dir, out, dirs_exist_ok=True)


def _console_log(results: Path, boot: int) -> Path:
    return results / ("console.log" if boot == 1 else f"console.{boot}.log")


def _fields_text(stats: dict) -> str:
    """The campaign line's boundary-field figure, if the campaign had a stream layout."""
    return f"; stream fields at a boundary {stats['fields_at_boundary']}/{stats['fields']}" if "fields" in stats else ""


def boundary_union(jsonl: Path, stats: dict) -> dict:
    """The stream fields that took a boundary value in any boot of a campaign (each boot's guest
    counts its own from zero; its stats records in the JSON lines name them), as
    ``fields_at_boundary`` and ``fields_missed``; nothing if the records name none."""
    reached: set = set()
    every: set = set()
    try:
        records = read_jsonl(jsonl) if jsonl.exists() else []
    except (OSError, ValueError):
        return {}
    for record in records:
        if record.get("type") == "stats" and "fields_reached" in record:
            reached.update(record["fields_reached"])
            every.update(record["fields_reached"], record.get("fields_missed", ()))
    if not every:
        return {}
    return {"fields_at_boundary": max(len(reached), stats.get("fields_at_boundary", 0)),
            "fields": len(every), "fields_missed": sorted(every - reached)}


def _wall_text(stats: dict) -> str:
    started = stats.get("programs_started")
    return (f"wall clock: {stats['wall_s']} s from the first boot to the last guest's end, "
            + (f"{started} programs started (flight recorder), " if started else "")
            + f"{stats['programs_per_wall_s']} programs/s (boots, start-up, panics and their replays included)")


def merge_jobs(summaries: list[dict]) -> dict:
    """The figures of guests that fuzzed side by side (``--jobs``): programs and findings summed, the
    rate the sum of the guests' rates (they ran at the same time), protocol arcs the most any reached,
    every crash file once; by the wall clock, all their programs over the longest guest's campaign."""
    timed = [s for s in summaries if "execs" in s]
    out: dict = {"jobs": len(summaries), "boots": sum(s.get("boots", 1) for s in summaries),
                 "crash_files": sorted({f for s in summaries for f in s.get("crash_files", ())}),
                 "job_programs_per_s": [s.get("programs_per_s") for s in summaries]}
    if timed:
        out.update(execs=sum(s["execs"] for s in timed), elapsed_s=max(s["elapsed_s"] for s in timed),
                   programs_per_s=round(sum(s["programs_per_s"] or 0 for s in timed), 1),
                   findings=sum(s["findings"] for s in timed), arcs=max(s["arcs"] for s in timed))
        if all("wall_s" in s for s in timed):
            wall = max(max(s["wall_s"] for s in timed), 1e-9)
            started = sum(s.get("programs_started", s["execs"]) for s in timed)
            out.update(wall_s=wall, programs_per_wall_s=round(started / wall, 1), programs_started=started)
        if any("fields" in s for s in timed):
            out.update(fields_at_boundary=max(s.get("fields_at_boundary", 0) for s in timed),
                       fields=max(s["fields"] for s in timed if "fields" in s))
            named = [set(s["fields_missed"]) for s in timed if "fields_missed" in s]
            if named:  # a field any guest reached counts
                out["fields_missed"] = sorted(set.intersection(*named))
                out["fields_at_boundary"] = max(out["fields_at_boundary"], out["fields"] - len(out["fields_missed"]))
    return out


def _fuzz_jobs(args) -> int:
    """``--jobs N``: N guests, each running :func:`cmd_fuzz` in a thread of its own."""
    prepare(args.kernel)  # once, before the guests boot from the same cache
    results = Path(args.results).resolve() if args.results else rig._new_results_dir()
    codes = [EXIT_UNAVAILABLE] * args.jobs

    def job(i: int) -> None:
        _job.label = f"[job {i + 1}] "
        one = argparse.Namespace(**vars(args))
        one.jobs, one.seed, one.results = 1, args.seed + i, str(results / f"job-{i + 1}")
        one.report_dir = str(Path(args.report_dir) / f"job-{i + 1}") if args.report_dir else None
        try:
            codes[i] = cmd_fuzz(one)
        except (RigBroken, TargetUnavailable, OSError) as e:
            say(f"failed: {e}")

    threads = [threading.Thread(target=job, args=(i,), name=f"vm-job-{i + 1}") for i in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summaries = []
    for i in range(args.jobs):
        path = results / f"job-{i + 1}" / SUMMARY_FILE
        summaries.append(json.loads(path.read_text()) if path.exists() else {})
    merged = merge_jobs(summaries)
    if "execs" in merged:
        say(f"campaign: {merged['execs']} programs in {merged['elapsed_s']} s = {merged['programs_per_s']} "
            f"programs/s against mtty, {args.jobs} guests side by side ("
            + " + ".join(f"{r}/s" for r in merged["job_programs_per_s"]) + f"); protocol arcs {merged['arcs']}; "
            f"findings {merged['findings']}{_fields_text(merged)}")
        if "wall_s" in merged:
            say(_wall_text(merged))
        if merged.get("fields_missed"):
            say(layout.missed_line(merged["fields_missed"]))
    say(f"crash files: {len(merged['crash_files'])} -> {Path(args.crashes).resolve()}"
        if merged["crash_files"] else "no findings")
    code = (EXIT_FINDING if EXIT_FINDING in codes else EXIT_OK if all(c == EXIT_OK for c in codes)
            else max(codes))
    merged["exit"] = code
    (results / SUMMARY_FILE).write_text(json.dumps(merged, indent=1) + "\n")
    return code


def cmd_fuzz(args) -> int:
    """Boot, fuzz, bring back. With ``--keep-going`` a kernel panic (a sanitizer report, a WARN) is
    recorded and the guest booted again for the rest of ``--max-time``: the corpus carries over."""
    check_jobs(args.jobs, "guests")
    if args.jobs > 1:
        return _fuzz_jobs(args)
    report = True
    if args.max_time is None and args.runs is None:
        args.max_time = 60.0
    crashes = Path(args.crashes).resolve()
    results = Path(args.results).resolve() if args.results else rig._new_results_dir()
    args.results = str(results)
    corpus_in = _copy_new(Path(args.corpus), results / "corpus") if args.corpus else 0
    budget = args.max_time
    started = wall_clock()  # --max-time bounds the wall clock: boots, replays, panics included
    runs: list[dict] = []
    crash_paths: list[str] = []
    replays = Replays(args)  # kernel report cause -> the replay of its first program, beside the campaign
    if budget is not None:
        args.max_time = _guest_time(budget, args.kernel)
    while True:
        code, stats, summary, restart = _fuzz_boot(args, report, results, crashes, len(runs) + 1, replays)
        if stats is None:
            _say_replays(replays)
            return code
        runs.append(stats)
        crash_paths += [p for p in summary["crash_files"] if p not in crash_paths]
        left = budget - (wall_clock() - started) if budget is not None else 0.0
        if not (restart and args.keep_going and _boot_again(left, args.kernel)):
            break
        say(f"--keep-going: booting again for the {left:.0f} s left of --max-time (the corpus carries over; "
            f"'{KEEP_RUNNING_ARGS}': later reports are findings without a reboot)")
        if (results / "output.log").exists():  # the next boot writes its own
            (results / "output.log").rename(results / f"output.{len(runs)}.log")
        args.max_time = _guest_time(left, args.kernel)
    confirmations = _say_replays(replays)
    if confirmations:
        summary["confirmations"] = confirmations
        if summary.get("confirmed") in confirmations:  # the last boot's panic: its replay's answer
            summary["confirmed"] = confirmations[summary["confirmed"]]
    stats = merge_runs(runs)
    stats.update(boundary_union(results / "report" / JSONL_NAME, stats))
    wall = max(wall_clock() - started, 1e-9)
    if "execs" in stats:
        stats.update(wall_s=round(wall, 1), programs_per_wall_s=round(stats["programs_started"] / wall, 1))
    corpus_out = _copy_new(results / "corpus", Path(args.corpus)) if args.corpus else 0
    _finish_report(results / "report", Path(args.report_dir) if args.report_dir else None)
    summary.update(stats, corpus_in=corpus_in, corpus_new=corpus_out, crash_files=crash_paths)
    if len(runs) > 1:
        code = EXIT_FINDING  # every boot but the last ended in a kernel panic: a finding each

    if "execs" in stats:
        steady = stats["steady_programs_per_s"]
        say(f"campaign: {stats['execs']} programs in {stats['elapsed_s']} s = {stats['programs_per_s']} "
            f"programs/s against mtty" + (f" ({steady}/s after start-up)" if steady else "")
            + f"; protocol arcs {stats['arcs']}; findings {stats['findings']}"
            + _fields_text(stats)
            + (f"; {len(runs)} boots" if len(runs) > 1 else ""))
        say(_wall_text(stats))
        if stats.get("fields_missed"):
            say(layout.missed_line(stats["fields_missed"]))
    elif code != EXIT_UNAVAILABLE:
        started = stats.get("programs_started", 0)
        say("campaign: no stats line in the guest output" + (f" ({started} programs started, by the flight recorder: "
            "a panic came before the first one)" if started else ""))
    if "kernel_pcs" in stats:
        series = stats["kernel_pcs_over_time"]
        marks = series[::max(len(series) // 6, 1)]
        marks += series[-1:] if marks[-1] != series[-1] else []
        say(f"kernel PCs covered (KCOV): {stats['kernel_pcs']} (VFIO core {stats['kernel_pcs_vfio']}, driver "
            f"{stats['kernel_pcs_driver']}); over time: " + ", ".join(f"{pcs} at {t:g} s" for t, pcs in marks))
    say(f"crash files: {len(summary['crash_files'])} -> {crashes}" if summary["crash_files"] else "no findings")
    say(f"console log {_console_log(results, len(runs))}; guest output {results / 'output.log'}")
    summary["exit"] = code
    (results / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return code


def _guest_time(left: float, kernel: str) -> float:
    """The --max-time a guest is given when ``left`` seconds of the campaign's remain."""
    return round(max(left - GUEST_OVERHEAD[kernel], GUEST_MIN), 1)


def _boot_again(left: float, kernel: str) -> bool:
    """Whether ``left`` seconds of --max-time are worth another boot (after a panic, --keep-going)."""
    return left - GUEST_OVERHEAD[kernel] >= GUEST_MIN


def _say_replays(replays: Replays) -> dict[str, str]:
    """Wait for the replays and say what each showed: {report cause: that}."""
    confirmations = replays.results()
    for cause, said in confirmations.items():
        say(f"{cause}: {said}")
    return confirmations


def _fuzz_boot(args, report: bool, results: Path, crashes: Path, boot: int,
               replays: Replays) -> tuple[int, dict | None, dict, bool]:
    """One boot of a campaign: (exit code, its stats or None if the guest failed, summary, whether the
    guest died in a kernel panic that was recorded as a finding). The first program to panic with a
    report is replayed on a fresh boot beside the campaign (``Replays``); a report seen before is
    not replayed again. ``summary["confirmed"]`` names the report; the caller puts the replay's
    answer in its place."""
    timeout = args.timeout or (args.max_time + BOOT_ALLOWANCE[args.kernel] if args.max_time is not None else 900)
    extra = KEEP_RUNNING_ARGS if boot > 1 else ""
    result, setup = _boot(args, fuzz_command(args, report), timeout, _console_log(results, boot).name, extra)
    timings = _timings(result, setup, args.kernel)
    _say_timings(timings)
    failure = _guest_failure(result)
    if failure:
        say(f"guest failed: {failure}")
        return EXIT_UNAVAILABLE, None, {}, False
    stats = parse_output(result.output)
    # The programs the guest started, by its flight recorder (no cost to the guest): a panic ends it
    # between two stats lines (5 s apart), and the last line's count misses what ran after it. The
    # recorder also counts the few programs that infer the stream layout on a first boot.
    rec = flight.read_flight(results / flight.FILE_NAME)
    stats["programs_started"] = max(stats.get("execs", 0), rec.seq if rec is not None else 0)
    for line in stats["findings_lines"]:
        say(f"guest: {line.removeprefix('migfuzz: ')}")

    crash_files = sorted(p for p in (results / "crashes").glob("*") if p.is_file() and not p.name.endswith(".tmp"))
    _copy_new(results / "crashes", crashes)

    summary = {**timings, **stats, "results": str(results), "guest_exit": result.exit_status,
               "timed_out": result.timed_out, "splats": result.splats,
               "crash_files": [str(crashes / p.name) for p in crash_files if not p.name.endswith(".txt")]}
    code = EXIT_OK
    restart = False
    if result.splats and result.exit_status is None:
        # A WARN/oops/KASAN/UBSAN report panicked the guest: blame the program the flight recorder
        # saw running, with the report that panicked it (lockdep's and might_sleep's do not).
        reports = kernel_reports(result.console.splitlines())
        reports = reports[first_fatal(reports, warnings_panic=not extra):]
        headline = reports[0].headline if reports else result.splats[0].strip()
        # Written where the guest keeps its crashes too: a later boot knows it (a report seen again is
        # "already known"), and the copy below brings it to --crashes.
        path, excerpt = _flight_finding(result, results / "crashes", "kernel-splat", headline, result.splats[0],
                                        reports, _console_log(results, boot))
        _copy_new(results / "crashes", crashes)
        if path is not None:
            _report_finding(results / "report", path)
            path = crashes / path.name
        say(f"FINDING kernel-splat: the guest kernel panicked: {headline}")
        print(excerpt, flush=True)
        if path is None:
            say("no program was running (the splat came before the campaign started)")
        else:
            say(f"the program that was running -> {path} (+ .txt with the kernel report)")
            summary["crash_files"].append(str(path))
            restart = True
            cause = reports[0].cause if reports else headline
            if cause in replays.by_cause:
                say(f"seen in an earlier boot: {replays.said(cause)}")
                summary["confirmed"] = cause
            elif not args.no_confirm:
                replays.start(cause, path)
                say("replaying it on a fresh boot, beside the campaign")
                summary["confirmed"] = cause
        code = EXIT_FINDING
    elif result.timed_out and result.exit_status is None:
        if crash_files:
            code = EXIT_FINDING  # e.g. a hang finding written before the stuck process could exit
        elif rec is not None and rec.state == flight.RUNNING and rec.last is not None:
            path, excerpt = _flight_finding(result, crashes, "hang",
                                            f"the guest stopped making progress (killed after {timeout:.0f} s)", None)
            say(f"FINDING hang: the guest stopped in the middle of a program -> {path}")
            print(excerpt, flush=True)
            summary["crash_files"].append(str(path))
            code = EXIT_FINDING
        else:
            say(f"the guest did not finish within {timeout:.0f} s and no program was running; "
                f"raise --timeout (output: {results / 'output.log'})")
            code = EXIT_UNAVAILABLE
    elif result.exit_status == EXIT_FINDING and crash_files:
        code = EXIT_FINDING
    elif result.exit_status in (EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE) and not crash_files:
        code = result.exit_status
    elif crash_files:
        code = EXIT_FINDING
    else:
        say(f"the fuzzer in the guest failed (exit {result.exit_status}):")
        print("\n".join(result.output.splitlines()[-30:]), flush=True)
        code = EXIT_UNAVAILABLE
    if code in (EXIT_USAGE, EXIT_UNAVAILABLE) and result.exit_status in (EXIT_USAGE, EXIT_UNAVAILABLE):
        print("\n".join(result.output.splitlines()[-10:]), flush=True)
    return code, stats, summary, restart


# ---------------------------------------------------------------------------- other actions


def _run_simple(args, command: str, timeout: float) -> tuple[int, rig.GuestResult | None]:
    result, setup = _boot(args, command, timeout)
    _say_timings(_timings(result, setup, args.kernel))
    failure = _guest_failure(result)
    if failure:
        say(f"guest failed: {failure}")
        return EXIT_UNAVAILABLE, None
    sys.stdout.write(result.output)
    if result.splats:
        say(f"kernel splat: {result.splats[0].strip()}")
        print(_excerpt(result.console, result.splats[0]), flush=True)
        return EXIT_FINDING, result
    if result.exit_status is None:
        say(f"the command did not finish (timed out: {result.timed_out}); console {result.results_dir}/console.log")
        return EXIT_UNAVAILABLE, result
    return result.exit_status, result


def cmd_prepare(args) -> int:
    r, seconds = prepare(args.kernel)
    say(f"rig ready: kernel {r.kernel_version}, cache {Path(r.root).parent}; this call {seconds:.1f} s "
        f"(the cold setup took {r.setup_seconds} s)")
    return EXIT_OK


def cmd_run(args) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise UsageError("vm run needs a command after --")
    command = words[0] if len(words) == 1 else shlex.join(words)
    return _run_simple(args, command, args.timeout or 300)[0]


def _say_selfcheck(report: dict, path: Path) -> None:
    trip = report.get("round_trip", {})
    say(f"mtty: protocol v{report.get('protocol')}, flags {report.get('flags', 0):#x}, data size "
        f"{report.get('data_size')}, SET latency {report.get('set_latency')}, round trip "
        f"{'identical' if trip.get('src_stream') == trip.get('dst_stream') else 'DIFFERS'}; report {path}")


def cmd_selfcheck(args) -> int:
    if args.kernel == "debug":
        return _selfcheck_senses(args)
    code, result = _run_simple(args, SELFCHECK, args.timeout or 300)
    if result is None:
        return code
    path = result.results_dir / selfcheck.RESULT_FILE
    if not path.exists():
        say("selfcheck wrote no report")
        return code or EXIT_UNAVAILABLE
    report = json.loads(path.read_text())
    _say_selfcheck(report, path)
    if "hang" in report:
        say(f"hang: {report['hang']}")
        return EXIT_FINDING
    return code


def kasan_sense(result: rig.GuestResult) -> dict:
    """What became of the self-check's deliberate out-of-bounds write: the kernel-splat finding the
    console gives, made the way a campaign makes it (flight recorder + the report that ended the
    guest), with its title, top frames and signature."""
    reports = kernel_reports(result.console.splitlines())
    if not reports:
        returned = (result.results_dir / "kasan-not-reported").exists()
        return {"ok": False, "why": "no kernel report on the console" + (
            f" ({selfcheck.LKDTM_OOB} returned: no KASAN)" if returned else "")}
    reports = reports[first_fatal(reports):]
    path, _ = _flight_finding(result, result.results_dir / "crashes", "kernel-splat", reports[0].headline, None,
                              reports)
    if path is None:
        return {"ok": False, "why": "the flight recorder named no program", "title": reports[0].title}
    finding = read_meta(path).finding
    title = reports[0].title
    return {"ok": title.startswith(KASAN_TITLE) and finding is not None and finding.kind == "kernel-splat",
            "title": title, "frames": list(reports[0].frames), "signature": signature(finding) if finding else "",
            "crash_file": str(path)}


def _selfcheck_senses(args) -> int:
    """``vm selfcheck --kernel debug``: the driver checks, then the senses: a trivial program's KCOV
    coverage (non-empty, the same in every run) and KASAN's report of a deliberate out-of-bounds
    write as a kernel-splat finding. Exit 0 when both work, 1 when one does not."""
    result, setup = _boot(args, f"{SELFCHECK} {selfcheck.SENSES_FLAG}", args.timeout or 600)
    _say_timings(_timings(result, setup, args.kernel))
    failure = _guest_failure(result)
    if failure:
        say(f"guest failed: {failure}")
        return EXIT_UNAVAILABLE
    sys.stdout.write(result.output)
    path = result.results_dir / selfcheck.RESULT_FILE
    if not path.exists():
        say("selfcheck wrote no report")
        return EXIT_UNAVAILABLE
    report = json.loads(path.read_text())
    _say_selfcheck(report, path)
    kcov = report.get("kcov", {})
    kcov["ok"] = bool(kcov.get("available") and min(kcov.get("pcs") or [0]) > 0 and kcov.get("same_in_every_run"))
    senses = {"kcov": kcov, "kasan": kasan_sense(result)}
    (result.results_dir / SENSES_FILE).write_text(json.dumps(senses, indent=1) + "\n")
    say(f"KCOV: {'OK' if kcov['ok'] else 'FAILED'}: {kcov.get('description')}; a trivial program covers "
        f"{kcov.get('pcs')} kernel PCs in {len(kcov.get('pcs') or [])} runs (VFIO core "
        f"{kcov.get('kernel_pcs_vfio')}, driver {kcov.get('kernel_pcs_driver')}), the same in every run: "
        f"{kcov.get('same_in_every_run')}")
    kasan = senses["kasan"]
    say(f"KASAN: {'OK' if kasan['ok'] else 'FAILED'}: " + (
        f"kernel-splat finding '{kasan['title']}' (frames {', '.join(kasan['frames'])}) -> {kasan['crash_file']}"
        if "crash_file" in kasan else kasan.get("why", "")))
    say(f"senses -> {result.results_dir / SENSES_FILE}")
    return EXIT_OK if kcov["ok"] and kasan["ok"] else EXIT_FINDING


def cmd_conform(args) -> int:
    extra = args.conform_args[1:] if args.conform_args[:1] == ["--"] else args.conform_args
    command = ('"$MIGFUZZ_PYTHON" -m fuzz.cli conform --target mtty --i-know-this-resets-the-device '
               f'--format {shlex.quote(args.format)}')
    if args.out:
        command += f' --out "{GUEST_RESULTS}/conform.out"'
    if extra:
        command += " " + shlex.join(extra)
    code, result = _run_simple(args, command, args.timeout or 600)
    if args.out and result is not None and (result.results_dir / "conform.out").exists():
        shutil.copy2(result.results_dir / "conform.out", args.out)
        say(f"conformance report -> {args.out}")
    return code


# ---------------------------------------------------------------------------- dispatch


def cmd_status(args) -> int:
    prepared = KERNELS[args.kernel].load()
    print(json.dumps({"cache": str(rig.cache_dir()), "prepared": prepared is not None,
                      **(prepared.__dict__ if prepared else {})}, indent=1))
    return EXIT_OK if prepared else EXIT_UNAVAILABLE


ACTIONS = {"prepare": cmd_prepare, "status": cmd_status, "fuzz": cmd_fuzz, "selfcheck": cmd_selfcheck,
           "conform": cmd_conform, "run": cmd_run}


def cmd_vm(args) -> int:
    """``migfuzz vm ACTION``: the action's function (arguments are declared in ``fuzz.cli``)."""
    try:
        return ACTIONS[args.vm_action](args)
    except RigBroken as e:
        say(f"preparing the rig failed: {e}")
        return EXIT_FINDING
