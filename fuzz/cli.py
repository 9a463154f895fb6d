"""The ``migfuzz`` command line.

Exit codes (every subcommand):

    0  nothing found / success
    1  a finding (its crash file was written first) / a check failed
    2  usage or input error (one clear line on stderr)
    3  target unavailable

Subcommands live in their own modules and register themselves through an
``add_parser(subparsers)`` function listed in ``SUBCOMMAND_MODULES``; each sets
``func`` to a callable taking the parsed arguments and returning an exit code.
Nothing here imports the simulator at load time: ``fuzz`` must import it inside
atheris' instrumentation.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

EXIT_OK, EXIT_FINDING, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

# Modules that add subcommands of their own (add_parser(subparsers)).
SUBCOMMAND_MODULES = ("fuzz.triage", "fuzz.conform", "fuzz.report", "harness.kernel.vm")


class UsageError(Exception):
    """Bad input: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit 2) instead of a usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _target_spec(text: str):
    from .targets import TargetError, parse_target

    try:
        return parse_target(text)
    except TargetError as e:
        raise UsageError(str(e)) from None


def _default_corpus(proto: str) -> Path:
    return Path("corpus") / proto


# --------------------------------------------------------------------------- fuzz


def cmd_fuzz(args) -> int:
    spec = _target_spec(args.target)
    if spec.kind != "sim" and not args.i_know_this_resets_the_device:
        raise UsageError("fuzzing a real device resets it again and again; "
                         "add --i-know-this-resets-the-device to confirm")
    proto = spec.proto or "v2"
    corpus = Path(args.corpus) if args.corpus else _default_corpus(proto)
    crashes = Path(args.crashes)
    if args.jobs > 1:
        return _fuzz_jobs(args, corpus)
    from .engine import run_campaign
    from .program import ProgramError
    from .targets import TargetError, TargetUnavailable

    report = None
    if args.report_dir:
        from .report import JsonlReporter

        report = JsonlReporter(Path(args.report_dir), spec.text())
    try:
        run_campaign(spec, corpus, crashes, args.max_time, args.runs, args.seed, args.libfuzzer_args,
                     keep_going=args.keep_going, instrument=args.instrument, report=report,
                     label=args.job_label, seeds=args.seeds)
    except (TargetError, ProgramError) as e:
        raise UsageError(str(e)) from None
    except TargetUnavailable as e:
        print(f"migfuzz: target unavailable: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OSError as e:
        raise UsageError(f"{e.filename or ''}: {e.strerror}") from None
    return EXIT_OK  # not reached: the campaign exits the process itself


def _fuzz_jobs(args, corpus: Path) -> int:
    """N independent campaigns sharing one corpus directory (libFuzzer -reload picks up peers' finds)."""
    base = [sys.executable, "-m", "fuzz.cli", "fuzz", "--target", args.target, "--corpus", str(corpus),
            "--crashes", args.crashes]
    for flag, value in (("--max-time", args.max_time), ("--runs", args.runs)):
        if value is not None:
            base += [flag, str(value)]
    if args.keep_going:
        base.append("--keep-going")
    if not args.seeds:
        base.append("--no-seeds")
    base += ["--instrument", args.instrument]
    if args.i_know_this_resets_the_device:
        base.append("--i-know-this-resets-the-device")
    procs = []
    for i in range(args.jobs):
        cmd = base + ["--seed", str(args.seed + i), "--job-label", f"job{i}"]
        if args.report_dir:
            cmd += ["--report-dir", str(Path(args.report_dir) / f"job{i}")]
        if args.libfuzzer_args:
            cmd += ["--", *args.libfuzzer_args]
        procs.append(subprocess.Popen(cmd))
    codes = []
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        codes = [p.wait() for p in procs]
    if any(c == EXIT_FINDING for c in codes):
        return EXIT_FINDING
    if any(c == EXIT_UNAVAILABLE for c in codes):
        return EXIT_UNAVAILABLE
    return EXIT_OK if all(c == 0 for c in codes) else max(codes)


# --------------------------------------------------------------------------- repro / show


def _read_program(path_text: str, proto: str | None):
    from .engine import load_program_file
    from .program import ProgramError

    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return load_program_file(path, proto)
    except (ProgramError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: {e}") from None


def cmd_repro(args) -> int:
    from .executor import Executor
    from .program import format_op
    from .targets import TargetError, TargetUnavailable, open_target

    spec = _target_spec(args.target)
    prog = _read_program(args.file, spec.proto or None)
    try:
        target = open_target(spec)
    except TargetError as e:
        raise UsageError(str(e)) from None
    except TargetUnavailable as e:
        print(f"migfuzz: target unavailable: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    ex = Executor(target, trace=True)
    finding = ex.run(prog)
    notes: dict = {}
    for step, text in ex.trace:
        notes.setdefault(step, []).append(text)
    print(f"# target {spec.text()}")
    last = finding.step if finding else len(prog.ops) - 1
    for i, op in enumerate(prog.ops[:last + 1]):
        print(f"[{i:2}] {format_op(prog.proto, op)}")
        for text in notes.get(i, []):
            print(f"       {text}")
        if finding is None or i < finding.step:
            print("       verdict: ok")
    target.close()
    if finding:
        print(f"FINDING {finding.kind} at step {finding.step}: expected {finding.expected}; "
              f"observed {finding.observed}  [arc {finding.arc}]")
        if finding.detail:
            print(finding.detail.rstrip())
        return EXIT_FINDING
    print("no finding")
    return EXIT_OK


def cmd_show(args) -> int:
    prog = _read_program(args.file, args.proto)
    sys.stdout.write(prog.text())
    return EXIT_OK


def cmd_targets(args) -> int:
    from harness.sim.bugs import BUGS

    print("sim                      simulator, protocol v2, flags STOP_COPY|P2P|PRE_COPY (0x7)")
    print("sim:flags=0x1|0x3|0x5|0x7  simulator with that v2 flag set")
    print("sim:proto=v1             simulator, protocol v1 (migration region)")
    print("sim:...,bug=NAME         simulator with one defect from the bug zoo (below)")
    print("kernel:dev=UUID|BDF[,dev2=...]  a real VFIO device (needs --i-know-this-resets-the-device)")
    print("mtty                     inside the rig guest: the real mtty driver (see `migfuzz vm`)")
    print()
    print("bug zoo:")
    for name, bug in BUGS.items():
        print(f"  {name:32} {bug.proto}  {bug.description}")
        print(f"  {'':32}     modelled on: {bug.modelled_on}; caught as: {bug.finding}")
    return EXIT_OK


def cmd_compile(args) -> int:
    """Text program -> binary (for corpus seeds)."""
    from .codec import encode

    prog = _read_program(args.file, None)
    data = encode(prog)
    out = Path(args.output) if args.output else None
    if out:
        out.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="migfuzz",
        description="Coverage-guided, fault-injection fuzzer for the VFIO device-migration protocol.",
        epilog="exit codes: 0 nothing found, 1 finding, 2 usage/input error, 3 target unavailable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("fuzz", help="run a fuzzing campaign",
                       description="Run a coverage-guided campaign; stops at the first finding unless --keep-going.")
    p.add_argument("--target", default="sim", help="target spec (default: sim); see `migfuzz targets`")
    p.add_argument("--corpus", help="corpus directory (default: corpus/<protocol>)")
    p.add_argument("--crashes", default="crashes", help="where findings are written (default: crashes)")
    p.add_argument("--max-time", type=float, help="stop after this many seconds")
    p.add_argument("--runs", type=int, help="stop after this many programs")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (default 0); the same seed replays the same campaign")
    p.add_argument("--jobs", type=int, default=1, help="parallel campaigns sharing the corpus")
    p.add_argument("--keep-going", action="store_true", help="record every distinct finding instead of stopping")
    p.add_argument("--no-seeds", dest="seeds", action="store_false",
                   help="do not add the text seeds of corpus/seeds/<protocol> to the corpus")
    p.add_argument("--instrument", choices=("target", "all", "none"), default="target",
                   help="code coverage of: the simulator (target, default), the simulator and the "
                        "executor/oracles (all), nothing (none: protocol arcs only)")
    p.add_argument("--no-instrument", dest="instrument", action="store_const", const="none",
                   help="same as --instrument none")
    p.add_argument("--report-dir", help="write JSON lines, SARIF and JUnit reports here")
    p.add_argument("--i-know-this-resets-the-device", action="store_true",
                   help="required to fuzz a real device")
    p.add_argument("--job-label", default="", help=argparse.SUPPRESS)
    p.add_argument("libfuzzer_args", nargs="*", metavar="-- LIBFUZZER_FLAGS",
                   help="extra libFuzzer flags after --")
    p.set_defaults(func=cmd_fuzz)

    p = sub.add_parser("repro", help="replay a crash or corpus file with an annotated trace",
                       description="Replay a program (binary or text) and print every step with the verdict.")
    p.add_argument("file")
    p.add_argument("--target", default="sim", help="target spec (default: sim)")
    p.set_defaults(func=cmd_repro)

    p = sub.add_parser("show", help="print a binary program as text")
    p.add_argument("file")
    p.add_argument("--proto", choices=("v1", "v2"), default="v2", help="protocol of a binary file (default v2)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compile", help="turn a text program into its binary form")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("targets", help="list targets and bug variants")
    p.set_defaults(func=cmd_targets)

    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def main(argv: list | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help
        return EXIT_USAGE if e.code else EXIT_OK
    except UsageError as e:
        print(f"migfuzz: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:
        print(f"migfuzz: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        os._exit(EXIT_OK)


if __name__ == "__main__":
    # Run the fuzz.cli module's main, not this __main__ copy's, so that subcommand
    # modules raising fuzz.cli.UsageError are caught as usage errors.
    from fuzz.cli import main as _main

    sys.exit(_main())
