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
mtty, protocol arcs and findings.

A kernel WARN/oops panics the guest (``panic_on_warn=1 oops=panic``), which
ends QEMU at once. The host then reports it as a ``kernel-splat`` finding:
the crash file holds the program the flight recorder (``flight.py``) saw
running when the kernel died, its report the console excerpt; unless
``--no-confirm``, a second boot replays that program to see whether it panics
the kernel again. A guest that stops making progress in the middle of a
program is reported the same way as a ``hang``.

Exit codes: 0 nothing found; 1 a finding (crash files written); 2 usage;
3 the rig is unavailable (packages cannot be installed or downloaded, e.g.
the apt registry is unreachable, or QEMU is missing) or the guest run failed
(setup failure, timeout with no program running, the fuzzer crashed); the
message says which.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from harness.base import TargetUnavailable
from harness.kernel import flight, rig
from harness.runtime import EXIT_FINDING, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

from .codec import decode
from .crashfile import save_finding
from .errors import UsageError
from .findings import Finding

SUMMARY_FILE = "vm-summary.json"
GUEST_RESULTS = "$MIGFUZZ_RESULTS"
BOOT_ALLOWANCE = 180.0     # boot + Python/atheris start-up under TCG + shutdown, on a loaded host
STATS = re.compile(r"migfuzz: stats: ([\d.]+)s execs (\d+) \([^)]*\) protocol arcs (\d+) findings (\d+)")
EXCERPT_BEFORE, EXCERPT_AFTER = 5, 60


class RigUnavailable(TargetUnavailable):
    """The rig cannot be prepared here (exit 3)."""

    what = "vm: rig unavailable"


def say(text: str) -> None:
    print(f"migfuzz vm: {text}", flush=True)


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


def prepare() -> tuple[rig.Rig, float]:
    """rig.prepare(). RigUnavailable (exit 3) only when the package registry cannot be reached;
    any other failure is RigBroken (exit 1), with the command that failed and why."""
    try:
        return rig.prepare()
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


def _boot(args, command: str, timeout: float) -> tuple[rig.GuestResult, float]:
    rig_, setup = prepare()
    results = Path(args.results).resolve() if args.results else rig._new_results_dir()
    results.mkdir(parents=True, exist_ok=True)
    result = rig.run_guest(command, timeout=timeout, instances=args.instances, results_dir=results)
    (results / "console.log").write_text(result.console + "\n")
    return result, setup


def _timings(result: rig.GuestResult, setup: float) -> dict:
    prepared = rig.load()
    cold = prepared.setup_seconds if prepared else None
    return {"setup_s": round(setup, 1), "cold_setup_s": cold, "boot_s": result.boot_seconds,
            "command_s": result.command_seconds, "accel": result.accel}


def _say_timings(t: dict) -> None:
    cached = f" (cached; the cold setup took {t['cold_setup_s']} s)" if t["setup_s"] < 1 and t["cold_setup_s"] else ""
    say(f"setup {t['setup_s']} s{cached}; boot {t['boot_s']} s ({t['accel']}); command {t['command_s']} s")


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
        # The campaign's clock includes start-up (instrumenting, loading the corpus): the rate
        # between its first and last stats lines (5 s apart at least) is the running speed.
        first = lines[0]
        span = elapsed - float(first.group(1))
        if len(lines) > 1 and span > 0:
            out["steady_programs_per_s"] = round((execs - int(first.group(2))) / span, 1)
    return out


def write_guest_finding(crashes: Path, kind: str, data: bytes, proto: str, observed: str, detail: str,
                        notes: list[str]) -> Path:
    """A crash file for a finding the guest could not write itself (it died)."""
    prog = decode(data, proto or "v2")
    expected = ("no kernel WARN, BUG, oops or lockup report" if kind == "kernel-splat"
                else "the guest keeps running programs")
    finding = Finding(kind, -1, expected, observed, "unknown (the guest died in this program)",
                      op="unknown: the guest kernel stopped while this program ran", detail=detail)
    path, warning = save_finding(crashes, data, prog, finding, [(-1, note) for note in notes], "mtty")
    if warning:
        say(warning)
    return path


def _flight_finding(result: rig.GuestResult, crashes: Path, kind: str, observed: str,
                    marker: str | None) -> tuple[Path | None, str]:
    rec = flight.read_flight(result.results_dir / flight.FILE_NAME)
    excerpt = _excerpt(result.console, marker)
    if rec is None or rec.last is None:
        return None, excerpt
    seq, data = rec.programs[0]
    notes = [f"flight recorder: program #{seq} of the campaign, the last one started when the guest died"]
    notes += [f"program #{n} before it: {p.hex()}" for n, p in rec.programs[1:4]]
    notes.append(f"console log: {result.results_dir / 'console.log'}")
    path = write_guest_finding(crashes, kind, data, rec.proto, observed, excerpt, notes)
    return path, excerpt


def _confirm(args, crash: Path) -> str:
    """Boot again and replay the crash program; whether the kernel splats again."""
    results = rig._new_results_dir()
    shutil.copy2(crash, results / "program")
    command = f'"$MIGFUZZ_PYTHON" -m fuzz.cli repro "{GUEST_RESULTS}/program" --target mtty'
    result = rig.run_guest(command, timeout=BOOT_ALLOWANCE, instances=args.instances, results_dir=results)
    (results / "console.log").write_text(result.console + "\n")
    if result.splats:
        return f"reproduced: replaying the program on a fresh boot splats again ({result.splats[0].strip()})"
    return f"not reproduced on a fresh boot (repro exit {result.exit_status}; log {results})"


def cmd_fuzz(args) -> int:
    report = True
    if args.max_time is None and args.runs is None:
        args.max_time = 60.0
    timeout = args.timeout or (args.max_time + BOOT_ALLOWANCE if args.max_time is not None else 900)
    crashes = Path(args.crashes).resolve()
    results = Path(args.results).resolve() if args.results else rig._new_results_dir()
    args.results = str(results)
    corpus_in = _copy_new(Path(args.corpus), results / "corpus") if args.corpus else 0

    result, setup = _boot(args, fuzz_command(args, report), timeout)
    timings = _timings(result, setup)
    _say_timings(timings)
    failure = _guest_failure(result)
    if failure:
        say(f"guest failed: {failure}")
        return EXIT_UNAVAILABLE
    stats = parse_output(result.output)
    for line in stats["findings_lines"]:
        say(f"guest: {line.removeprefix('migfuzz: ')}")

    crash_files = sorted(p for p in (results / "crashes").glob("*") if p.is_file() and not p.name.endswith(".tmp"))
    _copy_new(results / "crashes", crashes)
    corpus_out = _copy_new(results / "corpus", Path(args.corpus)) if args.corpus else 0
    if args.report_dir and (results / "report").is_dir():
        shutil.copytree(results / "report", args.report_dir, dirs_exist_ok=True)

    summary = {**timings, **stats, "results": str(results), "guest_exit": result.exit_status,
               "timed_out": result.timed_out, "splats": result.splats, "corpus_in": corpus_in,
               "corpus_new": corpus_out, "crash_files": [str(crashes / p.name) for p in crash_files
                                                          if not p.name.endswith(".txt")]}
    code = EXIT_OK
    if result.splats and result.exit_status is None:
        # A WARN/oops panicked the guest: blame the program the flight recorder saw running.
        path, excerpt = _flight_finding(result, crashes, "kernel-splat", result.splats[0].strip(),
                                        result.splats[0])
        say(f"FINDING kernel-splat: the guest kernel panicked: {result.splats[0].strip()}")
        print(excerpt, flush=True)
        if path is None:
            say("no program was running (the splat came before the campaign started)")
        else:
            say(f"the program that was running -> {path} (+ .txt with the console excerpt)")
            summary["crash_files"].append(str(path))
            if not args.no_confirm:
                summary["confirmed"] = _confirm(args, path)
                say(summary["confirmed"])
        code = EXIT_FINDING
    elif result.timed_out and result.exit_status is None:
        rec = flight.read_flight(results / flight.FILE_NAME)
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

    if "execs" in stats:
        steady = stats["steady_programs_per_s"]
        say(f"campaign: {stats['execs']} programs in {stats['elapsed_s']} s = {stats['programs_per_s']} "
            f"programs/s against mtty" + (f" ({steady}/s after start-up)" if steady else "")
            + f"; protocol arcs {stats['arcs']}; findings {stats['findings']}")
    elif code != EXIT_UNAVAILABLE:
        say("campaign: no stats line in the guest output")
    say(f"crash files: {len(summary['crash_files'])} -> {crashes}" if summary["crash_files"] else "no findings")
    say(f"console log {results / 'console.log'}; guest output {results / 'output.log'}")
    summary["exit"] = code
    (results / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return code


# ---------------------------------------------------------------------------- other actions


def _run_simple(args, command: str, timeout: float) -> tuple[int, rig.GuestResult | None]:
    result, setup = _boot(args, command, timeout)
    _say_timings(_timings(result, setup))
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
    r, seconds = prepare()
    say(f"rig ready: kernel {r.kernel_version}, cache {rig.cache_dir()}; this call {seconds:.1f} s "
        f"(the cold setup took {r.setup_seconds} s)")
    return EXIT_OK


def cmd_run(args) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise UsageError("vm run needs a command after --")
    command = words[0] if len(words) == 1 else shlex.join(words)
    return _run_simple(args, command, args.timeout or 300)[0]


def cmd_selfcheck(args) -> int:
    code, result = _run_simple(args, '"$MIGFUZZ_PYTHON" -m harness.kernel.selfcheck', args.timeout or 300)
    if result is None:
        return code
    path = result.results_dir / "selfcheck.json"
    if not path.exists():
        say("selfcheck wrote no report")
        return code or EXIT_UNAVAILABLE
    report = json.loads(path.read_text())
    trip = report.get("round_trip", {})
    say(f"mtty: protocol v{report.get('protocol')}, flags {report.get('flags', 0):#x}, data size "
        f"{report.get('data_size')}, SET latency {report.get('set_latency')}, round trip "
        f"{'identical' if trip.get('src_stream') == trip.get('dst_stream') else 'DIFFERS'}; report {path}")
    if "hang" in report:
        say(f"hang: {report['hang']}")
        return EXIT_FINDING
    return code


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
    prepared = rig.load()
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
