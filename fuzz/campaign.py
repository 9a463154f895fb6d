"""``migfuzz fuzz``: check the arguments, then run one campaign (``fuzz.engine``) or ``--jobs N``.

Everything a campaign needs is checked before it starts, so a wrong flag, an unwritable
crash directory or a libFuzzer flag migfuzz cannot honour is one line and exit 2, never
a finding lost later.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.runtime import EXIT_FINDING, EXIT_OK, EXIT_UNAVAILABLE

from .engine import JOB_SUMMARY_ENV, run_campaign, summary_lines
from .errors import UsageError
from .program import op_filter
from .report import JsonlReporter, merge_job_reports
from .targets import default_corpus, parse_target, require_opt_in

# libFuzzer flags migfuzz runs itself (its own --jobs, its own time budget): refused after --.
REFUSED_LIBFUZZER_FLAGS = {
    "-fork": "use --jobs N (migfuzz runs and stops parallel campaigns itself)",
    "-jobs": "use --jobs N", "-workers": "use --jobs N",
    "-max_total_time": "use --max-time", "-runs": "use --runs",
    "-artifact_prefix": "use --crashes", "-exact_artifact_path": "use --crashes",
}
# libFuzzer flags that name a file that must exist.
FILE_LIBFUZZER_FLAGS = ("-dict", "-seed_inputs")


def check_libfuzzer_args(extra: list) -> None:
    for arg in extra:
        name, eq, value = arg.partition("=")
        if name in REFUSED_LIBFUZZER_FLAGS:
            raise UsageError(f"libFuzzer flag {arg!r} is not supported here: {REFUSED_LIBFUZZER_FLAGS[name]}")
        if name in FILE_LIBFUZZER_FLAGS and eq:
            for path in value.split(","):
                if path and not Path(path).exists():
                    raise UsageError(f"{arg}: {path}: no such file")
        if not arg.startswith("-"):
            raise UsageError(f"unexpected argument {arg!r} after -- (libFuzzer flags start with -)")


def writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if needed and make sure files can be written in it (UsageError if not)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".migfuzz-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{what} {path} is not writable: {e.strerror or e}") from None


def check_jobs(jobs: int, what: str) -> None:
    """``--jobs``: between 1 and 4 per core (UsageError), with a warning past one per core (the
    ``what`` share them: campaigns, or guests for ``migfuzz vm fuzz``)."""
    cores = os.cpu_count() or 1
    if not 1 <= jobs <= 4 * cores:
        raise UsageError(f"--jobs must be between 1 and {4 * cores} (4 x the {cores} cores here), not {jobs}")
    if jobs > cores:
        print(f"migfuzz: warning: {jobs} {what} on {cores} cores: they will share the cores", file=sys.stderr)


def cmd_fuzz(args) -> int:
    spec = parse_target(args.target)
    require_opt_in(spec, args.i_know_this_resets_the_device, "a campaign resets it before every program")
    if args.max_time is not None and not args.max_time > 0:
        raise UsageError(f"--max-time must be a positive number of seconds, not {args.max_time:g}")
    if args.runs is not None and args.runs < 1:
        raise UsageError(f"--runs must be at least 1, not {args.runs}")
    check_jobs(args.jobs, "jobs")
    check_libfuzzer_args(args.libfuzzer_args)
    proto = spec.proto or "v2"
    op_filter(proto, args.disable_ops)  # a name that is no op of this protocol: a usage error now
    corpus = Path(args.corpus) if args.corpus else default_corpus(proto)
    crashes = Path(args.crashes)
    writable_dir(crashes, "the crash directory")
    if corpus.exists() and not corpus.is_dir():
        raise UsageError(f"the corpus {corpus} exists and is not a directory")
    if args.report_dir:
        writable_dir(Path(args.report_dir), "the report directory")
    if args.jobs > 1:
        return run_jobs(args, corpus)
    try:
        writable_dir(corpus, "the corpus")
    except UsageError as e:
        if args.seeds or not corpus.is_dir():  # seeds to add, or not even a corpus to read
            raise
        print(f"migfuzz: warning: {e}: new inputs will not be kept", file=sys.stderr)
    report = JsonlReporter(Path(args.report_dir), spec.text()) if args.report_dir else None
    run_campaign(spec, corpus, crashes, args.max_time, args.runs, args.seed, args.libfuzzer_args,
                 keep_going=args.keep_going, instrument_scope=args.instrument, report=report,
                 label=args.job_label, seeds=args.seeds, verbose=args.verbose, disabled_ops=args.disable_ops)
    return EXIT_OK  # not reached: the campaign exits the process itself


def print_jobs_summary(summaries: Path, codes: list) -> None:
    """The campaign's one summary, from the summaries the jobs wrote (``JOB_SUMMARY_ENV``)."""
    jobs = []
    for i, code in enumerate(codes):
        try:
            jobs.append(json.loads((summaries / f"job{i}.json").read_text()))
        except (OSError, ValueError):
            print(f"migfuzz: job{i} ended without a summary (exit {code})", file=sys.stderr)
    if not jobs:
        return
    findings = list({f["file"]: f for s in jobs for f in s["findings"]}.values())  # two jobs, one file: once
    known = sum(f["known"] for f in findings)
    merged = dict(jobs[-1], findings=findings, libfuzzer_logs=[log for s in jobs for log in s["libfuzzer_logs"]])
    if merged.get("corpus"):  # shared by the jobs: its size now
        try:
            merged["corpus_files"] = sum(1 for f in Path(merged["corpus"]).iterdir() if f.is_file())
        except OSError:
            pass
    if merged.get("reports"):
        merged["reports"] = str(Path(merged["reports"]).parent)  # job<i>/ -> the merged reports above
    print(f"migfuzz: done: {len(codes)} jobs, {sum(s['execs'] for s in jobs)} programs, {len(findings)} finding(s)"
          + (f" ({known} already known)" if known else "")
          + (f"; crash files in {merged['crashes']}" if findings else ""), file=sys.stderr)
    for line in summary_lines(merged):
        print(f"migfuzz: {line}", file=sys.stderr)


def run_jobs(args, corpus: Path) -> int:
    """N campaigns sharing one corpus directory (libFuzzer -reload picks up peers' finds).

    SIGINT/SIGTERM to this process are forwarded to every job, which ends like its time
    budget (stats, reports, exit code); the reports of all jobs are merged at the end."""
    base = [sys.executable, "-m", "fuzz.cli", "fuzz", "--target", args.target, "--corpus", str(corpus),
            "--crashes", args.crashes]
    for flag, value in (("--max-time", args.max_time), ("--runs", args.runs)):
        if value is not None:
            base += [flag, str(value)]
    if args.keep_going:
        base.append("--keep-going")
    if args.disable_ops:
        base += ["--disable-ops", ",".join(sorted(args.disable_ops))]
    if not args.seeds:
        base.append("--no-seeds")
    if args.verbose:
        base.append("--verbose")
    base += ["--instrument", args.instrument]
    if args.i_know_this_resets_the_device:
        base.append("--i-know-this-resets-the-device")
    procs = []
    stop = []  # the signals received: a job started after one gets it too

    def forward(signum, _frame):
        stop.append(signum)
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM if signum == signal.SIGTERM else signal.SIGINT)
                except ProcessLookupError:
                    pass

    # Handlers first: a job then starts with SIGINT/SIGTERM at their defaults even when this
    # process was started with SIGINT ignored (a background job of a shell), so it can be stopped.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    summaries = Path(tempfile.mkdtemp(prefix="migfuzz-jobs-"))
    try:
        for i in range(args.jobs):
            cmd = base + ["--seed", str(args.seed + i), "--job-label", f"job{i}"]
            if args.report_dir:
                cmd += ["--report-dir", str(Path(args.report_dir) / f"job{i}")]
            if args.libfuzzer_args:
                cmd += ["--", *args.libfuzzer_args]
            env = dict(os.environ, **{JOB_SUMMARY_ENV: str(summaries / f"job{i}.json")})
            procs.append(subprocess.Popen(cmd, start_new_session=True, env=env))
        if stop:
            forward(stop[-1], None)
        codes = []
        for p in procs:
            while True:
                try:
                    codes.append(p.wait())
                    break
                except KeyboardInterrupt:
                    forward(signal.SIGINT, None)
        if args.report_dir:
            merge_job_reports(Path(args.report_dir))
        print_jobs_summary(summaries, codes)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        shutil.rmtree(summaries, ignore_errors=True)
    if any(c == EXIT_FINDING for c in codes):
        return EXIT_FINDING
    if any(c == EXIT_UNAVAILABLE for c in codes):
        return EXIT_UNAVAILABLE
    return EXIT_OK if all(c == 0 for c in codes) else max(codes)
