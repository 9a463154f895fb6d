"""Crash triage: replay crash files, group them by finding signature, one folder per defect.

:func:`triage_dir` replays every crash file in a directory (``fuzz.crashfile``), groups
them by signature (``fuzz.findings.signature``; by default without the state the arc
started from, so one defect reached from several states is one group), minimizes one
reproducer per group (``fuzz.minimize``) and writes one folder per group, syzkaller's
``crashes/<hash>/`` layout: ``description``, ``repro.txt``/``repro.bin``, ``trace.txt``,
``crashes``. The output directory is replaced, not merged, so it always describes the
crash directory as it is now.

Also here: :func:`replay` and :func:`format_trace`, the annotated replay ``repro`` prints.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from harness.base import TargetError, TargetUnavailable
from harness.runtime import EXIT_FINDING, EXIT_OK

from . import crashfile
from .codec import encode
from .errors import UsageError
from .executor import Executor
from .findings import Finding, op_name, short_hash, signature
from .minimize import DEFAULT_MAX_RUNS, MinimizeResult, minimize_program
from .program import Program, ProgramError, format_op
from .targets import open_target, parse_target, require_opt_in

SUMMARY = "summary.json"


def replay(target, prog: Program, trace: bool = True) -> tuple[Finding | None, list]:
    """(finding or None, trace) of one run."""
    ex = Executor(target, trace=trace)
    finding = ex.run(prog)
    return finding, list(ex.trace)


def format_trace(prog: Program, finding: Finding | None, trace, target_text: str = "") -> str:
    """The annotated replay: every op, what the device answered, the verdict."""
    notes: dict = {}
    for step, text in trace:
        notes.setdefault(step, []).append(text)
    lines = [f"# target {target_text}"] if target_text else []
    last = finding.step if finding else len(prog.ops) - 1
    for i, op in enumerate(prog.ops[:last + 1]):
        lines.append(f"[{i:2}] {format_op(prog.proto, op)}")
        lines += [f"       {text}" for text in notes.get(i, [])]
        if finding is None or i < finding.step:
            lines.append("       verdict: ok")
    if finding:
        lines.append(f"FINDING {finding.kind} at step {finding.step}: expected {finding.expected}; "
                     f"observed {finding.observed}  [arc {finding.arc}]")
        if finding.detail:
            lines.append(finding.detail.rstrip())
    else:
        lines.append("no finding")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- triage


@dataclass
class Member:
    path: Path
    prog: Program
    finding: Finding
    target: str


@dataclass
class Group:
    signature: str
    members: list = field(default_factory=list)
    folder: Path | None = None
    result: MinimizeResult | None = None

    @property
    def representative(self) -> Member:
        def size(m):
            try:
                nbytes = len(encode(m.prog))
            except ValueError:
                nbytes = 1 << 30
            return (len(m.prog.ops), nbytes, m.path.name)

        return min(self.members, key=size)


@dataclass
class TriageResult:
    groups: list
    not_reproduced: list  # (path, target, why)
    unreadable: list  # (path, why)


def triage_dir(directory: Path, out: Path, target_text: str | None = None, minimize: bool = True,
               max_runs: int = DEFAULT_MAX_RUNS, log=None, coarse: bool = True,
               real_devices: bool = False) -> TriageResult:
    """Replay, group, minimize and write one folder per signature under ``out`` (replacing
    what an earlier triage wrote there).

    Crashes recorded on a real device are replayed on it only with ``real_devices``
    (each replay resets the device); otherwise they are listed as skipped."""
    log = log or (lambda text: None)
    targets: dict = {}
    groups: dict = {}
    not_reproduced = []
    unreadable = []

    def target_for(text):
        if text not in targets:
            try:
                targets[text] = open_target(text)
            except (TargetUnavailable, TargetError, OSError) as e:
                targets[text] = e
        return targets[text]

    for path in crashfile.crash_files(directory):
        meta = crashfile.read_meta(path)
        ttext = target_text or meta.target
        if not ttext:
            unreadable.append((path, "records no target; pass --target"))
            continue
        try:
            spec = parse_target(ttext)
        except TargetError as e:
            unreadable.append((path, f"target {ttext!r}: {e}"))
            continue
        if spec.kind != "sim" and not real_devices:
            unreadable.append((path, f"recorded on a real device ({ttext}): replaying resets it; "
                                     "add --i-know-this-resets-the-device"))
            continue
        target = target_for(ttext)
        if isinstance(target, Exception):
            unreadable.append((path, f"target unavailable: {target}"))
            continue
        try:
            prog, _meta = crashfile.read_program(path, target.proto)
        except ProgramError as e:
            unreadable.append((path, str(e)))
            continue
        finding, _ = replay(target, prog, trace=False)
        if finding is None:
            not_reproduced.append((path, ttext, "no finding on replay"))
            continue
        sig = signature(finding, coarse)
        groups.setdefault(sig, Group(sig)).members.append(Member(path, prog, finding, ttext))

    clear_output(out)
    result = TriageResult(sorted(groups.values(), key=lambda g: (-len(g.members), g.signature)),
                          not_reproduced, unreadable)
    for group in result.groups:
        rep = group.representative
        target = targets[rep.target]
        res = None
        if minimize:
            log(f"minimizing {rep.path.name} ({len(rep.prog.ops)} ops, {len(group.members)} crash file(s)) ...")
            res = minimize_program(target, rep.prog, group.signature, max_runs, coarse)
        group.result = res or MinimizeResult(rep.prog, rep.finding, group.signature, len(rep.prog.ops), 0)
        group.folder = out / f"{short_hash(group.signature)}-{rep.finding.kind}"
        write_group(group, target)
    write_summary(out, result)
    for t in targets.values():
        if not isinstance(t, Exception):
            t.close()
    return result


def clear_output(out: Path) -> None:
    """Empty a triage output directory of what an earlier triage wrote (its summary and group
    folders), so the result is replaced, not merged; anything else there is left alone."""
    out.mkdir(parents=True, exist_ok=True)
    summary = out / SUMMARY
    if summary.is_file():
        try:
            old = json.loads(summary.read_text())
            for g in old.get("groups", []):
                folder = out / str(g.get("folder", ""))
                if folder.is_dir() and folder.parent == out:
                    shutil.rmtree(folder)
        except (ValueError, OSError, AttributeError):
            pass
        summary.unlink()


def write_group(group: Group, target) -> None:
    folder = group.folder
    folder.mkdir(parents=True, exist_ok=True)
    res = group.result
    rep = group.representative
    prog = res.program
    finding, trace = replay(target, prog, trace=True)
    finding = finding or res.finding
    names = sorted(m.path.name for m in group.members)
    desc = [
        f"{finding.kind}: {finding.arc} ({finding.op})",
        "",
        f"signature:   {group.signature}",
        f"kind:        {finding.kind}",
        f"arc:         {finding.arc}",
        f"op:          {finding.op} (step {finding.step} of the reproducer)",
        f"expected:    {finding.expected}",
        f"observed:    {finding.observed}",
        f"claim:       {crashfile.claim_text(finding)}",
        f"target:      {rep.target}",
        f"count:       {len(group.members)}",
        f"duplicates:  {len(group.members) - 1}",
        f"reproducer:  {len(prog.ops)} ops (minimized from {rep.path.name}, {res.original_ops} ops, "
        f"{res.runs} executions)",
        f"replay:      migfuzz repro {folder.name}/repro.txt",
    ]
    if finding.detail:
        desc += ["", "detail:"] + ["  " + ln for ln in finding.detail.rstrip().splitlines()]
    desc += ["", "crash files:"] + [f"  {n}" for n in names]
    (folder / "description").write_text("\n".join(desc) + "\n")
    note = f"minimized from {rep.path.name}: {res.original_ops} -> {len(prog.ops)} ops in {res.runs} executions"
    (folder / "repro.txt").write_text(crashfile.program_text(prog, rep.target, finding, title="migfuzz reproducer",
                                                             notes=[note], sig=group.signature))
    (folder / "repro.bin").write_bytes(crashfile.binary_bytes(prog, rep.target, encode(prog)))
    (folder / "trace.txt").write_text(format_trace(prog, finding, trace, rep.target))
    (folder / "crashes").write_text("".join(n + "\n" for n in names))


def write_summary(out: Path, result: TriageResult) -> None:
    data = {
        "groups": [{
            "folder": g.folder.name, "signature": g.signature, "kind": g.representative.finding.kind,
            "arc": (g.result.finding or g.representative.finding).arc, "op": op_name(g.representative.finding),
            "count": len(g.members), "target": g.representative.target,
            "ops": g.result.original_ops, "minimized_ops": len(g.result.program.ops),
            "files": sorted(m.path.name for m in g.members),
        } for g in result.groups],
        "not_reproduced": [{"file": p.name, "target": t, "why": w} for p, t, w in result.not_reproduced],
        "unreadable": [{"file": p.name, "why": w} for p, w in result.unreadable],
    }
    (out / SUMMARY).write_text(json.dumps(data, indent=2) + "\n")


def summary_table(result: TriageResult) -> str:
    rows = [("FOLDER", "KIND", "COUNT", "OPS", "ARC", "OP")]
    for g in result.groups:
        f = g.result.finding or g.representative.finding
        rows.append((g.folder.name, f.kind, str(len(g.members)),
                     f"{g.result.original_ops}->{len(g.result.program.ops)}", f.arc, op_name(f)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for p, t, w in result.not_reproduced:
        lines.append(f"not reproduced: {p.name} on {t} ({w})")
    for p, w in result.unreadable:
        lines.append(f"skipped: {p.name}: {w}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- commands


def cmd_minimize(args) -> int:
    path = Path(args.file)
    meta = crashfile.read_meta(path)
    ttext = args.target or meta.target or "sim"
    spec = parse_target(ttext)
    require_opt_in(spec, args.i_know_this_resets_the_device, "minimizing replays the program again and again")
    if args.max_runs < 1:
        raise UsageError(f"--max-runs must be at least 1, not {args.max_runs}")
    target = open_target(spec)
    try:
        prog, _meta = crashfile.read_program(path, target.proto)
        result = minimize_program(target, prog, max_runs=args.max_runs, coarse=args.coarse)
    finally:
        target.close()
    if result is None:
        print(f"migfuzz: {path} does not reproduce a finding on {ttext}: nothing to minimize", file=sys.stderr)
        return EXIT_OK
    note = (f"minimized from {path.name}: {result.original_ops} -> {len(result.program.ops)} ops in "
            f"{result.runs} executions")
    text = crashfile.program_text(result.program, ttext, result.finding, title="migfuzz minimized reproducer",
                                  notes=[note], sig=result.signature)
    if args.output:
        out = Path(args.output)
        data = (crashfile.binary_bytes(result.program, ttext, encode(result.program)) if out.suffix == ".bin"
                else text.encode())
        out.write_bytes(data)
    sys.stdout.write(text)
    print(f"migfuzz: {result.signature}: {result.original_ops} -> {len(result.program.ops)} ops "
          f"({result.runs} executions)", file=sys.stderr)
    return EXIT_FINDING


def cmd_triage(args) -> int:
    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    if args.max_runs < 1:
        raise UsageError(f"--max-runs must be at least 1, not {args.max_runs}")
    if args.target:
        require_opt_in(parse_target(args.target), args.i_know_this_resets_the_device,
                       "triage replays every crash on it")
    out = Path(args.out) if args.out else directory / "triage"
    result = triage_dir(directory, out, args.target, minimize=not args.no_minimize, max_runs=args.max_runs,
                        log=lambda text: print(f"migfuzz: {text}", file=sys.stderr, flush=True), coarse=args.coarse,
                        real_devices=args.i_know_this_resets_the_device)
    sys.stdout.write(summary_table(result))
    ncrash = sum(len(g.members) for g in result.groups)
    print(f"migfuzz: {ncrash} crash file(s) -> {len(result.groups)} distinct finding(s) in {out}; "
          f"{len(result.not_reproduced)} not reproduced, {len(result.unreadable)} skipped", file=sys.stderr)
    return EXIT_FINDING if result.groups else EXIT_OK
