"""The ``migfuzz`` command line: every command's arguments, and the one place errors end.

Exit codes (every command; ``harness.runtime.EXIT_*``):

    0  nothing found / success
    1  a finding (its crash file was written first) / a check failed
    2  usage or input error (one clear line on stderr)
    3  target unavailable (no device, no rig)
  130  interrupted before a campaign started (:func:`fuzz.exit_interrupted`)

Each command is a function ``cmd_*(args) -> exit code`` in its own module, imported only
when that command runs (:data:`COMMANDS`), so ``migfuzz --help`` or ``migfuzz show`` never
load atheris, and a broken tool cannot break the others. Errors raised anywhere below end
here as one line (:func:`main`): ``UsageError``, ``TargetError``, ``ProgramError`` and
``OSError`` on a file the user named are usage errors; ``TargetUnavailable`` is exit 3.
"""
from __future__ import annotations

import signal

if __name__ == "__main__":  # `python -m fuzz.cli`: a Ctrl-C while the modules below load ends quietly
    from fuzz import exit_interrupted

    signal.signal(signal.SIGINT, exit_interrupted)

import argparse
import importlib
import os
import sys

from harness.base import TargetError, TargetUnavailable
from harness.runtime import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

from . import __version__, exit_interrupted
from .errors import UsageError
from .program import ProgramError

# command -> "module:function" (imported when the command runs)
COMMANDS = {
    "fuzz": "fuzz.campaign:cmd_fuzz",
    "repro": "fuzz.commands:cmd_repro",
    "show": "fuzz.commands:cmd_show",
    "compile": "fuzz.commands:cmd_compile",
    "targets": "fuzz.commands:cmd_targets",
    "layout": "fuzz.commands:cmd_layout",
    "minimize": "fuzz.triage:cmd_minimize",
    "triage": "fuzz.triage:cmd_triage",
    "export": "fuzz.export:cmd_export",
    "report": "fuzz.report:cmd_report",
    "report-html": "fuzz.htmlreport:cmd_report_html",
    "conform": "fuzz.conform:cmd_conform",
    "vm": "fuzz.vm:cmd_vm",
}
OPT_IN = "--i-know-this-resets-the-device"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit 2) instead of a usage block."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def op_names(text: str) -> frozenset:
    """``--disable-ops``: a comma list of op or race-call names (checked against the target's
    protocol when the campaign starts: fuzz.program.op_filter)."""
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def _opt_in(p) -> None:
    p.add_argument(OPT_IN, dest="i_know_this_resets_the_device", action="store_true",
                   help="required for a real device: the command resets it, again and again")


def _fuzz_parser(sub) -> None:
    p = sub.add_parser("fuzz", help="run a fuzzing campaign",
                       description="Run a coverage-guided campaign; stops at the first finding unless --keep-going.")
    p.add_argument("--target", default="sim", help="target spec (default: sim); see `migfuzz targets`")
    p.add_argument("--corpus", help="corpus directory (default: corpus/<protocol>)")
    p.add_argument("--crashes", default="crashes", help="where findings are written (default: crashes)")
    p.add_argument("--max-time", type=float, help="stop after this many seconds (> 0)")
    p.add_argument("--runs", type=int, help="stop after this many programs (> 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (default 0); the same seed replays the same campaign")
    p.add_argument("--jobs", type=int, default=1, help="parallel campaigns sharing the corpus (1..cores*4)")
    p.add_argument("--keep-going", action="store_true", help="record every distinct finding instead of stopping")
    p.add_argument("--disable-ops", metavar="OP,...", type=op_names, default=frozenset(),
                   help="never run these ops (and races with one of these calls), e.g. reopen: a defect "
                        "already known that takes the device down")
    p.add_argument("--no-seeds", dest="seeds", action="store_false",
                   help="do not add the shipped seed programs to the corpus")
    p.add_argument("--instrument", choices=("target", "all", "none"), default="target",
                   help="code coverage of: the simulator (target, default), the simulator and the "
                        "executor/oracles (all), nothing (none: protocol arcs only)")
    p.add_argument("--no-instrument", dest="instrument", action="store_const", const="none",
                   help="same as --instrument none")
    p.add_argument("--report-dir", help="write JSON lines, SARIF and JUnit reports here")
    p.add_argument("-v", "--verbose", action="store_true", help="show libFuzzer's own output too")
    _opt_in(p)
    p.add_argument("--job-label", default="", help=argparse.SUPPRESS)
    p.add_argument("libfuzzer_args", nargs="*", metavar="-- LIBFUZZER_FLAGS",
                   help="extra libFuzzer flags after --")


def _program_parsers(sub) -> None:
    p = sub.add_parser("repro", help="replay a crash or program file with an annotated trace",
                       description="Replay a program (text or binary) on the target it was found on and print "
                                   "every step with the verdict. Exit 1: a finding; 0: none.")
    p.add_argument("file")
    p.add_argument("--target", help="target spec (default: the one the file records, else sim)")
    p.add_argument("--proto", choices=("v1", "v2"), help="protocol of a raw binary file that records none")
    _opt_in(p)

    p = sub.add_parser("show", help="print a program file (text or binary) as text")
    p.add_argument("file")
    p.add_argument("--proto", choices=("v1", "v2"), help="protocol of a raw binary file that records none")

    p = sub.add_parser("compile", help="turn a text program into its binary form")
    p.add_argument("file")
    p.add_argument("-o", "--output", help="output file (default: stdout)")
    p.add_argument("--raw", action="store_true",
                   help="the bare binary libFuzzer mutates (for a corpus), without the self-describing header")

    sub.add_parser("targets", help="list targets and bug variants")

    p = sub.add_parser("layout", help="infer and show the fields of a target's migration stream",
                       description="Capture the stop-and-copy stream of the target several times, after "
                                   "different device activity and register writes, and show which bytes are "
                                   "constant, which are fields (and their widths), the lengths, the checksums "
                                   "it recognises (CRC-32, additive sums) and the values seen. The layout is "
                                   "kept in the corpus directory (the campaign's field-aware mutations use "
                                   "it) and shown from there unless --refresh.")
    p.add_argument("--target", default="sim", help="target spec (default: sim); see `migfuzz targets`")
    p.add_argument("--corpus", help="corpus directory the layout is kept in (default: corpus/<protocol>)")
    p.add_argument("--refresh", action="store_true", help="infer again even if the corpus keeps a layout")
    p.add_argument("--json", action="store_true", help="print the layout as JSON")
    _opt_in(p)


def _triage_parsers(sub) -> None:
    p = sub.add_parser("minimize", help="shrink a crash to a minimal program with the same finding signature",
                       description="Delta-debug a crash or program file: remove ops, then simplify every op's "
                                   "arguments, keeping the finding's signature (kind|arc|op[|harness frames]). "
                                   "Prints the minimal program as text. Exit 1: reproduced and minimized; "
                                   "0: does not reproduce; 2: bad input.")
    p.add_argument("file")
    p.add_argument("--target", help="target spec (default: the one the file records, else sim)")
    p.add_argument("-o", "--output", help="also write the minimal program here (text; binary if it ends in .bin)")
    p.add_argument("--max-runs", type=int, default=20000, help="execution budget (default 20000)")
    p.add_argument("--coarse", action="store_true",
                   help="keep only kind|-op-> target|op: the arc's starting state may change")
    _opt_in(p)

    p = sub.add_parser("triage", help="group crash files by defect, minimize one reproducer per group",
                       description="Replay every crash file in DIR, group them by finding signature and write "
                                   "one folder per group (description, repro.txt, repro.bin, trace.txt, crashes), "
                                   "replacing what an earlier triage wrote there. Exit 1 if any crash "
                                   "reproduces, 0 if none does.")
    p.add_argument("dir")
    p.add_argument("--target", help="target spec for every file (default: each crash's own)")
    p.add_argument("--out", help="output directory (default: DIR/triage)")
    p.add_argument("--no-minimize", action="store_true", help="keep the smallest crash of each group as is")
    p.add_argument("--max-runs", type=int, default=20000, help="execution budget per minimization (default 20000)")
    p.add_argument("--strict", dest="coarse", action="store_false",
                   help="group by the full signature kind|arc|op (by default the state the arc started from "
                        "is ignored, so one defect reached from several states is one folder)")
    _opt_in(p)

    p = sub.add_parser("export", help="write reproducers: stand-alone Python, C, pytest regression",
                       description="Turn a crash (or any program file) into reproducers a driver developer can "
                                   "run without migfuzz (--python, --c) and a regression test (--pytest).")
    p.add_argument("file")
    p.add_argument("--target", help="target spec (default: the one the file records, else sim)")
    p.add_argument("--python", metavar="OUT.py",
                   help="Python reproducer (sim target: replays on the simulator from an installed migfuzz; "
                        "kernel target: stand-alone, standard library only)")
    p.add_argument("--standalone", action="store_true",
                   help="with --python: the stand-alone real-device script even for a sim finding")
    p.add_argument("--c", metavar="OUT.c", help="C reproducer against a VFIO group device or an iommufd cdev")
    p.add_argument("--pytest", metavar="OUT.py", help="pytest regression test asserting no finding")
    p.add_argument("--minimize", action="store_true", help="minimize the program first (sim targets)")


def _report_parsers(sub) -> None:
    p = sub.add_parser("report", help="build SARIF, JUnit and JSON-lines reports of a campaign",
                       description="Rebuild migfuzz.sarif (SARIF 2.1.0) and junit.xml from a migfuzz.jsonl file, a "
                                   "--report-dir directory (also one with job*/ subdirectories), or a crashes "
                                   "directory. Without --sarif/--junit both are written next to the input.")
    p.add_argument("source", metavar="DIR_OR_JSONL")
    p.add_argument("--sarif", metavar="OUT", help="SARIF output file")
    p.add_argument("--junit", metavar="OUT", help="JUnit XML output file")
    p.add_argument("--target", help="target to record for crash files that record none")

    p = sub.add_parser("report-html", help="render a campaign's JSON-lines report as one HTML page",
                       description="Charts of coverage, protocol arcs and findings over time from the JSON "
                                   "lines `migfuzz fuzz --report-dir` writes.")
    p.add_argument("--jsonl", required=True, help="the campaign's JSON-lines report (or its directory)")
    p.add_argument("--out", required=True, help="the HTML file to write")

    p = sub.add_parser(
        "conform", help="deterministic protocol conformance sweep of one target",
        description="Sweep every state transition, data_fd rule, round trip, damaged stream and framing "
                    "rule once against the reference model. Exit 0 conforms, 1 something does not, "
                    "2 bad arguments, 3 target unavailable.")
    p.add_argument("--target", default="sim", help="target spec (default: sim); see `migfuzz targets`")
    p.add_argument("--format", choices=("table", "json", "md", "html"), default="table",
                   help="table (default, failures first), json, md (markdown) or html (one self-contained page)")
    p.add_argument("--out", help="write the report here instead of stdout")
    _opt_in(p)


def _vm_parser(sub) -> None:
    p = sub.add_parser(
        "vm", help="fuzz the real mtty driver in a QEMU guest (prepare, status, fuzz, selfcheck, conform, run)",
        description="The fuzzer against the real mtty driver, in a Debian 6.12 guest under QEMU, in one "
                    "command. The first use downloads and builds the guest (cached).",
        epilog="exit codes: 0 nothing found; 1 a finding (crash files written); 2 usage; 3 the rig is "
               "unavailable (packages cannot be installed or downloaded) or the guest run failed")
    vsub = p.add_subparsers(dest="vm_action", metavar="ACTION", parser_class=_Parser)
    vsub.required = True

    def kernel(q) -> None:
        q.add_argument("--kernel", choices=("stock", "debug"), default="stock",
                       help="the guest kernel: Debian's (default) or the debug build with KASAN, KCOV, lockdep "
                            "and UBSAN (built once from linux-source-6.12 and cached)")

    def common(q) -> None:
        kernel(q)
        q.add_argument("--results", help="host directory shared with the guest (default: new, under the rig cache)")
        q.add_argument("--timeout", type=float, help="bound on the whole guest run, seconds")
        q.add_argument("--instances", type=int, default=2, help="mtty instances to create (default 2)")

    kernel(vsub.add_parser("prepare", help="fill the rig cache (apt packages, kernel, mtty.ko, initramfs)"))
    kernel(vsub.add_parser("status", help="show what the rig cache holds"))
    q = vsub.add_parser("fuzz", help="run a campaign against mtty in the guest, bring findings back")
    q.add_argument("--max-time", type=float,
                   help="campaign length in seconds of wall clock, boots included (default 60 unless --runs)")
    q.add_argument("--runs", type=int, help="stop after this many programs")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--crashes", default="crashes", help="host directory for crash files (default: crashes)")
    q.add_argument("--corpus", help="host corpus directory: copied into the guest, new inputs copied back")
    q.add_argument("--report-dir", help="host directory for the campaign's reports")
    q.add_argument("--keep-going", action="store_true", help="record every distinct finding instead of stopping")
    q.add_argument("--disable-ops", metavar="OP,...", type=op_names, default=frozenset(),
                   help="never run these ops (and races with one of these calls), e.g. reopen: mtty's #1 "
                        "oopses the guest")
    q.add_argument("--no-instrument", action="store_true", help="protocol-arc feedback only")
    q.add_argument("--no-confirm", action="store_true", help="after a kernel panic, do not replay the program")
    q.add_argument("--jobs", type=int, default=1,
                   help="guests side by side, one campaign each (a TCG guest keeps one core busy; default 1)")
    q.add_argument("libfuzzer_args", nargs="*", metavar="-- LIBFUZZER_FLAGS")
    common(q)
    q = vsub.add_parser("selfcheck", help="record what the mtty driver answers (harness.kernel.selfcheck)")
    common(q)
    q = vsub.add_parser("conform", help="run `migfuzz conform --target mtty` in the guest")
    q.add_argument("--format", default="table", help="report format (table, json, md, html; see `migfuzz conform`)")
    q.add_argument("--out", help="host file for the report (default: stdout)")
    q.add_argument("conform_args", nargs=argparse.REMAINDER, metavar="-- ARGS")
    common(q)
    q = vsub.add_parser("run", help="run a shell command in the guest")
    q.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD")
    common(q)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="migfuzz",
        description="Coverage-guided, fault-injection fuzzer for the VFIO device-migration protocol.",
        epilog="exit codes: 0 nothing found, 1 finding, 2 usage/input error, 3 target unavailable",
    )
    parser.add_argument("--version", action="version", version=f"migfuzz {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _fuzz_parser(sub)
    _program_parsers(sub)
    _triage_parsers(sub)
    _report_parsers(sub)
    _vm_parser(sub)
    return parser


def load_command(name: str):
    """The function that runs command ``name`` (its module is imported now, not before)."""
    module, _, func = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), func)


def _fail(text: str, code: int) -> int:
    print(f"migfuzz: {text}", file=sys.stderr, flush=True)
    return code


def main(argv: list | None = None) -> int:
    if signal.getsignal(signal.SIGINT) is exit_interrupted:
        # loaded: a Ctrl-C now raises KeyboardInterrupt, so `finally` blocks below run first
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        exit_interrupted()


def _run(argv: list) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version
        return EXIT_USAGE if e.code else EXIT_OK
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE)
    try:
        return load_command(args.subcommand)(args)
    except (UsageError, TargetError, ProgramError) as e:
        return _fail(str(e), EXIT_USAGE)
    except TargetUnavailable as e:
        return _fail(f"{getattr(e, 'what', 'target unavailable')}: {e}", EXIT_UNAVAILABLE)
    except BrokenPipeError:  # `migfuzz ... | head`: the reader has what it wanted
        os._exit(EXIT_OK)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
