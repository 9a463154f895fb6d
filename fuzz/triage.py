"""Crash triage: finding signatures, op-level minimization, grouping crash files.

* :func:`signature` — what makes two findings "the same bug": the finding kind,
  the protocol arc it happened on, the kind of op that exposed it and, for an
  exception escaping the target, the innermost three frames inside
  ``harness/`` (file:function, no line numbers, so edits elsewhere in a file
  keep the signature).
* :class:`Minimizer` — delta debugging over ops (ddmin), dropping any two ops
  at once (what ddmin's aligned chunks miss), then per-op argument
  simplification (smaller reads, unsegmented transfers, shorter payloads,
  commoner states, device 0 ...), repeated to a fixpoint.  A candidate is kept
  only if it still produces a finding with the same signature.  Deterministic:
  no randomness, a run budget instead of a clock.
* :func:`triage_dir` — replays every crash file in a directory, groups them by
  signature and writes one folder per group (syzkaller's ``crashes/<hash>/``
  layout: ``description``, ``repro.txt``/``repro.bin``, ``trace.txt``).

Subcommands registered here: ``minimize`` and ``triage`` (and ``export``, whose
code lives in ``fuzz.export``, when nothing else registered it).

Only the standard library is imported at module load: the CLI imports this
module at startup, and the fuzzing engine must import the simulator, the
executor and the oracles later, inside atheris' instrumentation.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HARNESS_FRAMES = 3  # innermost frames inside harness/ that a target-exception signature keeps
DEFAULT_MAX_RUNS = 20000  # executions one minimization may spend
_FRAME_RE = re.compile(r'^\s*File "([^"]+)", line \d+, in (\S+)', re.M)

# Preference order of state values when simplifying ("commoner" first).
_V2_STATE_RANK = (2, 1, 3, 4, 6, 5, 7, 0)  # RUNNING STOP STOP_COPY RESUMING PRE_COPY RUNNING_P2P PRE_COPY_P2P ERROR
_V1_STATE_RANK = (0b001, 0b000, 0b010, 0b100, 0b011, 0b101, 0b111, 0b110)


# ----------------------------------------------------------------------------- signatures


def harness_frames(detail: str, count: int = HARNESS_FRAMES) -> list[str]:
    """The innermost ``count`` traceback frames inside ``harness/`` as 'harness/x.py:function'."""
    frames = []
    for path, func in _FRAME_RE.findall(detail or ""):
        norm = path.replace("\\", "/")
        at = norm.rfind("/harness/")
        if at >= 0:
            rel = norm[at + 1:]
        elif norm.startswith("harness/"):
            rel = norm
        else:
            continue
        frames.append(f"{rel}:{func}")
    return frames[-count:] if count else []


def op_name(finding, prog=None) -> str:
    """The name of the op the finding happened at ('set', 'read', ...)."""
    if prog is not None and 0 <= finding.step < len(prog.ops):
        from .program import OPS

        return OPS[prog.proto][prog.ops[finding.step].code].name
    return (finding.op or "").split(" ", 1)[0] or "?"


def coarse_arc(arc: str) -> str:
    """The arc without the state it started from ('STOP -set-> ERROR' -> '-set-> ERROR')."""
    at = arc.find(" -")
    return arc[at + 1:] if at >= 0 else arc


def signature_parts(kind: str, arc: str, op: str, detail: str = "", coarse: bool = False) -> str:
    parts = [kind, coarse_arc(arc) if coarse else arc, op]
    if kind == "target-exception":
        parts.append(",".join(harness_frames(detail)) or "no-harness-frame")
    return "|".join(parts)


def signature(finding, prog=None, coarse: bool = False) -> str:
    """The dedup key of a finding: kind|arc|op[|frames] (see the module docstring).

    ``prog`` is the program the finding came from (for the op's name); without
    it the name is read from ``finding.op``.  ``coarse`` drops the state the arc
    started from, so one defect reachable from several states is one signature
    (and the minimizer may pick the shortest way to reach it)."""
    return signature_parts(finding.kind, finding.arc, op_name(finding, prog), finding.detail, coarse)


def short_hash(sig: str) -> str:
    return hashlib.sha1(sig.encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- crash files


@dataclass
class CrashMeta:
    """What the comment header of a crash .txt says (every field may be missing)."""

    kind: str = ""
    target: str = ""
    step: int = -1
    op: str = ""
    arc: str = ""
    expected: str = ""
    observed: str = ""
    signature: str = ""
    trace: list = field(default_factory=list)
    detail: str = ""

    def our_signature(self) -> str:
        return signature_parts(self.kind, self.arc, self.op.split(" ", 1)[0] or "?", self.detail)


def parse_crash_header(text: str) -> CrashMeta:
    meta = CrashMeta()
    section = ""
    detail: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        body = line[1:]
        stripped = body.strip()
        if section == "trace" and body.startswith("   "):
            m = re.match(r"\s*\[(\d+)\]\s?(.*)", body)
            if m:
                meta.trace.append((int(m.group(1)), m.group(2)))
                continue
        if section == "exception" and body.startswith("   "):
            detail.append(body[3:])
            continue
        section = ""
        key, sep, value = stripped.partition(":")
        value = value.strip()
        if not sep:
            continue
        if key == "migfuzz finding":
            meta.kind = value
        elif key == "target":
            meta.target = value
        elif key.startswith("step "):
            try:
                meta.step = int(key[5:])
            except ValueError:
                pass
            meta.op = value
        elif key == "arc":
            meta.arc = value
        elif key == "expected":
            meta.expected = value
        elif key == "observed":
            meta.observed = value
        elif key == "signature":
            meta.signature = value
        elif key == "trace":
            section = "trace"
        elif key == "exception":
            section = "exception"
    meta.detail = "\n".join(detail) + ("\n" if detail else "")
    return meta


def companion_txt(path: Path) -> Path | None:
    """The annotated .txt written next to a binary crash file (or the file itself if it is text)."""
    if path.suffix == ".txt":
        return path
    txt = path.with_name(path.name + ".txt")
    return txt if txt.is_file() else None


def read_meta(path: Path) -> CrashMeta:
    txt = companion_txt(path)
    if txt is None or not txt.is_file():
        return CrashMeta()
    try:
        return parse_crash_header(txt.read_text(errors="replace"))
    except OSError:
        return CrashMeta()


def load_crash(path: Path, proto: str | None):
    """The program in a crash/corpus file (binary or text).

    A binary file's protocol comes from ``proto`` (the target's), else from the
    program header in its companion .txt, else v2.  Raises ProgramError."""
    from .engine import load_program_file
    from .program import ProgramError, is_text, parse_program

    data = path.read_bytes()
    if not proto and not is_text(data):
        txt = companion_txt(path)
        if txt is not None and txt != path:
            try:
                proto = parse_program(txt.read_text(errors="replace")).proto
            except (ProgramError, OSError):
                proto = None
    return load_program_file(path, proto or None)


ARTIFACT_PREFIXES = ("crash-", "libfuzzer-", "timeout-", "oom-", "leak-", "slow-unit-")


def crash_files(directory: Path) -> list[Path]:
    """Crash inputs in a directory: each binary (with or without its .txt) and lone .txt files.

    Only libFuzzer/migfuzz artifact names count (crash-*, libfuzzer-*, timeout-*,
    oom-*, leak-*, slow-unit-*); temporaries (*.tmp) and sub-directories are skipped."""
    out = []
    names = {p.name for p in directory.iterdir()}
    for p in sorted(directory.iterdir()):
        if not p.is_file() or not p.name.startswith(ARTIFACT_PREFIXES) or p.name.endswith(".tmp"):
            continue
        if p.suffix == ".txt" and p.name[:-4] in names:
            continue  # the companion of a binary
        out.append(p)
    return out


# ----------------------------------------------------------------------------- targets


def open_spec(text: str):
    """(spec, target) for a --target string; raises UsageError / TargetUnavailableError."""
    from .cli import UsageError
    from .targets import TargetError, TargetUnavailable, open_target, parse_target

    try:
        spec = parse_target(text)
        return spec, open_target(spec)
    except TargetError as e:
        raise UsageError(str(e)) from None
    except (TargetUnavailable, ImportError, OSError) as e:
        raise TargetUnavailableError(f"{text}: {e}") from None


class TargetUnavailableError(RuntimeError):
    """A target named by the user or a crash file cannot be opened (exit 3)."""


def replay(target, prog, trace: bool = True):
    """(finding or None, trace) of one run."""
    from .executor import Executor

    ex = Executor(target, trace=trace)
    finding = ex.run(prog)
    return finding, list(ex.trace)


def format_trace(prog, finding, trace, target_text: str = "") -> str:
    """The annotated replay (same shape as ``migfuzz repro``)."""
    from .program import format_op

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


# ----------------------------------------------------------------------------- minimization


@dataclass
class MinimizeResult:
    program: object  # fuzz.program.Program
    finding: object  # fuzz.oracles.Finding (of the minimized program)
    signature: str
    original_ops: int
    runs: int


class Minimizer:
    """Shrink a program while it keeps producing a finding with one signature."""

    def __init__(self, target, want: str, max_runs: int = DEFAULT_MAX_RUNS, coarse: bool = False):
        from .executor import Executor
        from .program import OPS

        self.executor = Executor(target)
        self.proto = target.proto
        self.specs = OPS[self.proto]
        self.want = want
        self.coarse = coarse
        self.max_runs = max_runs
        self.runs = 0
        self.cache: dict = {}

    # -- the test -----------------------------------------------------------

    def check(self, ops: tuple):
        """The finding if ``ops`` still shows the wanted signature, else None (cached)."""
        from .program import Program

        ops = tuple(ops)
        if ops in self.cache:
            return self.cache[ops]
        if self.runs >= self.max_runs or not ops:
            return None
        self.runs += 1
        prog = Program(self.proto, ops)
        finding = self.executor.run(prog)
        ok = finding if finding is not None and signature(finding, prog, self.coarse) == self.want else None
        self.cache[ops] = ok
        return ok

    def accept(self, ops: tuple) -> tuple | None:
        """``ops`` cut after the finding step if it still reproduces, else None."""
        finding = self.check(ops)
        if finding is None:
            return None
        return tuple(ops[:finding.step + 1])

    # -- passes ---------------------------------------------------------------

    def ddmin(self, ops: tuple) -> tuple:
        n = 2
        while len(ops) >= 2:
            size = len(ops)
            bounds = [size * i // n for i in range(n + 1)]
            chunks = [ops[bounds[i]:bounds[i + 1]] for i in range(n)]
            reduced = None
            for chunk in chunks:  # one chunk alone
                reduced = self.accept(chunk)
                if reduced is not None:
                    n = 2
                    break
            if reduced is None:
                for i in range(n):  # everything but one chunk
                    reduced = self.accept(ops[:bounds[i]] + ops[bounds[i + 1]:])
                    if reduced is not None:
                        n = max(n - 1, 2)
                        break
            if reduced is not None:
                ops = reduced
                continue
            if n >= size:
                break
            n = min(2 * n, size)
        return ops

    def remove_pairs(self, ops: tuple, limit: int = 32) -> tuple:
        """Try dropping any two ops at once (ddmin only drops aligned chunks): an op that is
        needed only because of another one (a second SET and the close of the fd it opened)."""
        changed = True
        while changed and 2 < len(ops) <= limit:
            changed = False
            n = len(ops)
            for i in range(n - 1):
                for j in range(i + 1, n):
                    got = self.accept(ops[:i] + ops[i + 1:j] + ops[j + 1:])
                    if got is not None:
                        ops, changed = got, True
                        break
                if changed:
                    break
        return ops

    def _candidates(self, fld, value):
        """Simpler values for one field, most preferred first."""
        kind = fld.kind
        if kind == "bytes":
            out = [b""]
            k = 1
            while k < len(value):
                out.append(value[:k])
                k *= 2
            if any(value):
                out.append(bytes(len(value)))
            return [v for v in out if v != value]
        if kind == "state":
            rank = _V2_STATE_RANK
            if 0 <= value < 8:
                return list(rank[:rank.index(value)])
            return list(rank) + ([8] if value != 8 else [])
        if kind == "v1state":
            rank = _V1_STATE_RANK
            if 0 <= value < 8:
                return list(rank[:rank.index(value)])
            out = [value & 7] + [v for v in rank if v != value & 7]
            return out + ([8 | (value & 7)] if value != 8 | (value & 7) else [])
        if kind == "hex":
            out = [0] if value else []
            for bit in reversed(range(value.bit_length())):
                if value >> bit & 1 and value != 1 << bit:
                    out.append(value & ~(1 << bit))
            return out
        # plain integers (counts, sizes, seeds, indices, fd slots, fault/mangle kinds)
        if value <= 0:
            return []
        out = {0, 1, 2, 3, value - 1, value >> 1}
        p = 4
        while p < value:
            out.add(p)
            out.add(p - 1)
            p <<= 1
        return sorted(v for v in out if 0 <= v < value)

    def simplify(self, ops: tuple) -> tuple:
        """One pass over every op's device and arguments; returns the simplified ops."""
        from .program import normalize

        proto = self.proto
        # The device roles are symmetric: prefer a program that starts on device 0.
        if ops and ops[0].dev == 1:
            swapped = []
            for op in ops:
                op = op._replace(dev=1 - op.dev)
                if self.specs[op.code].name == "transfer":
                    op = op._replace(a=1 - op.a)
                swapped.append(op)
            got = self.accept(tuple(swapped))
            if got is not None:
                ops = got
        i = 0
        while i < len(ops):
            op = ops[i]
            if op.dev == 1:
                got = self.accept(ops[:i] + (op._replace(dev=0),) + ops[i + 1:])
                if got is not None and i < len(got):
                    ops = got
                    op = ops[i]
            for fld in self.specs[op.code].fields:
                changed = True
                while changed and i < len(ops):
                    changed = False
                    op = ops[i]
                    value = getattr(op, fld.slot)
                    for cand in self._candidates(fld, value):
                        new = normalize(proto, op._replace(**{fld.slot: cand}))
                        if new == op:
                            continue
                        got = self.accept(ops[:i] + (new,) + ops[i + 1:])
                        if got is not None:
                            ops = got
                            changed = fld.kind in ("bytes", "hex")  # these can shrink again
                            break
            i += 1
        return ops

    def minimize(self, prog) -> MinimizeResult:
        from .program import Program

        ops = self.accept(tuple(prog.ops))
        if ops is None:
            raise ValueError("the program does not reproduce the wanted signature")
        for _ in range(16):
            before = ops
            ops = self.ddmin(ops)
            ops = self.remove_pairs(ops)
            ops = self.simplify(ops)
            if ops == before:
                break
        final = Program(self.proto, ops)
        finding = self.executor.run(final)
        return MinimizeResult(final, finding, self.want, len(prog.ops), self.runs)


def minimize_program(target, prog, want: str | None = None, max_runs: int = DEFAULT_MAX_RUNS,
                     coarse: bool = False):
    """Minimize ``prog`` on ``target`` keeping the signature of its finding (or ``want``).

    Returns a MinimizeResult, or None when the program shows no finding (or not ``want``)."""
    from .executor import Executor

    finding = Executor(target).run(prog)
    if finding is None:
        return None
    sig = signature(finding, prog, coarse)
    if want is not None and sig != want:
        return None
    return Minimizer(target, sig, max_runs, coarse).minimize(prog)


def program_with_header(prog, finding, sig: str, target_text: str, note: str = "") -> str:
    from .program import format_program

    lines = [f"# migfuzz minimized reproducer: {finding.kind}",
             f"# target: {target_text}",
             f"# step {finding.step}: {finding.op}",
             f"# arc: {finding.arc}",
             f"# expected: {finding.expected}",
             f"# observed: {finding.observed}",
             f"# signature: {sig}"]
    if note:
        lines.append(f"# {note}")
    return "\n".join(lines) + "\n" + format_program(prog)


# ----------------------------------------------------------------------------- triage


@dataclass
class Member:
    path: Path
    prog: object
    finding: object
    target: str


@dataclass
class Group:
    signature: str
    members: list = field(default_factory=list)
    folder: Path | None = None
    result: MinimizeResult | None = None

    @property
    def representative(self) -> Member:
        from .codec import encode

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
               max_runs: int = DEFAULT_MAX_RUNS, log=None, coarse: bool = False,
               real_devices: bool = False) -> TriageResult:
    """Replay, group, minimize and write one folder per signature under ``out``.

    Crashes recorded on a real device are replayed on it only with ``real_devices``
    (each replay resets the device); otherwise they are listed as skipped."""
    from .program import ProgramError
    from .targets import TargetError, parse_target

    log = log or (lambda text: None)
    targets: dict = {}
    groups: dict = {}
    not_reproduced = []
    unreadable = []

    def target_for(text):
        if text not in targets:
            try:
                targets[text] = open_spec(text)[1]
            except TargetUnavailableError as e:
                targets[text] = e
        return targets[text]

    for path in crash_files(directory):
        meta = read_meta(path)
        ttext = target_text or meta.target
        if not ttext:
            unreadable.append((path, "no '# target:' line next to it; pass --target"))
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
            prog = load_crash(path, spec.proto or target.proto)
        except (ProgramError, UnicodeDecodeError, OSError) as e:
            unreadable.append((path, str(e)))
            continue
        if prog.proto != target.proto:
            unreadable.append((path, f"a {prog.proto} program; target {ttext} speaks {target.proto}"))
            continue
        finding, _ = replay(target, prog, trace=False)
        if finding is None:
            not_reproduced.append((path, ttext, "no finding on replay"))
            continue
        sig = signature(finding, prog, coarse)
        groups.setdefault(sig, Group(sig)).members.append(Member(path, prog, finding, ttext))

    out.mkdir(parents=True, exist_ok=True)
    result = TriageResult(sorted(groups.values(), key=lambda g: (-len(g.members), g.signature)),
                          not_reproduced, unreadable)
    for group in result.groups:
        rep = group.representative
        target = targets[rep.target]
        if minimize:
            log(f"minimizing {rep.path.name} ({len(rep.prog.ops)} ops, {len(group.members)} crash file(s)) ...")
            group.result = Minimizer(target, group.signature, max_runs, coarse).minimize(rep.prog)
        else:
            group.result = MinimizeResult(rep.prog, rep.finding, group.signature, len(rep.prog.ops), 0)
        group.folder = out / f"{short_hash(group.signature)}-{rep.finding.kind}"
        write_group(group, target)
    write_summary(out, result)
    for t in targets.values():
        if not isinstance(t, Exception):
            t.close()
    return result


def write_group(group: Group, target) -> None:
    from .codec import encode

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
        f"target:      {rep.target}",
        f"count:       {len(group.members)}",
        f"duplicates:  {len(group.members) - 1}",
        f"reproducer:  {len(prog.ops)} ops (minimized from {rep.path.name}, {res.original_ops} ops, "
        f"{res.runs} executions)",
        f"replay:      migfuzz repro {folder.name}/repro.txt --target {rep.target}",
    ]
    if finding.detail:
        desc += ["", "exception:"] + ["  " + ln for ln in finding.detail.rstrip().splitlines()]
    desc += ["", "crash files:"] + [f"  {n}" for n in names]
    (folder / "description").write_text("\n".join(desc) + "\n")
    (folder / "repro.txt").write_text(program_with_header(prog, finding, group.signature, rep.target))
    (folder / "repro.bin").write_bytes(encode(prog))
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
    (out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")


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


def _target_text_for(path: Path, explicit: str | None) -> str:
    return explicit or read_meta(path).target or "sim"


def _check_real_device(target_text: str, confirmed: bool) -> None:
    """Replaying on a real device resets it again and again: as `fuzz`, ask for confirmation."""
    from .cli import UsageError

    if not target_text.startswith("sim") and not confirmed:
        raise UsageError(f"{target_text} is a real device and every replay resets it; "
                         "add --i-know-this-resets-the-device to confirm")


def cli_errors(func):
    """Report UsageError (exit 2) and an unavailable target (exit 3) from a subcommand itself.

    ``python3 -m fuzz.cli`` runs the CLI as ``__main__``, whose ``main`` catches
    ``__main__.UsageError``, not the ``fuzz.cli.UsageError`` raised here."""

    def run(args) -> int:
        from .cli import EXIT_UNAVAILABLE, EXIT_USAGE, UsageError

        try:
            return func(args)
        except UsageError as e:
            print(f"migfuzz: {e}", file=sys.stderr)
            return EXIT_USAGE
        except TargetUnavailableError as e:
            print(f"migfuzz: target unavailable: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


def cmd_minimize(args) -> int:
    from .cli import EXIT_FINDING, EXIT_OK, UsageError
    from .codec import encode
    from .program import ProgramError

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    ttext = _target_text_for(path, args.target)
    _check_real_device(ttext, args.i_know_this_resets_the_device)
    spec, target = open_spec(ttext)
    try:
        prog = load_crash(path, spec.proto or target.proto)
    except (ProgramError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: {e}") from None
    if prog.proto != target.proto:
        raise UsageError(f"{path} is a {prog.proto} program; target {ttext} speaks {target.proto}")
    try:
        result = minimize_program(target, prog, max_runs=args.max_runs, coarse=args.coarse)
        if result is None:
            print(f"migfuzz: {path} does not reproduce a finding on {ttext}: nothing to minimize", file=sys.stderr)
            return EXIT_OK
        text = program_with_header(result.program, result.finding, result.signature, ttext,
                                   f"minimized from {path.name}: {result.original_ops} -> "
                                   f"{len(result.program.ops)} ops in {result.runs} executions")
    finally:
        target.close()
    sys.stdout.write(text)
    if args.output:
        out = Path(args.output)
        out.write_bytes(encode(result.program) if out.suffix == ".bin" else text.encode())
    print(f"migfuzz: {result.signature}: {result.original_ops} -> {len(result.program.ops)} ops "
          f"({result.runs} executions)", file=sys.stderr)
    return EXIT_FINDING


def cmd_triage(args) -> int:
    from .cli import EXIT_FINDING, EXIT_OK, UsageError

    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    if args.target:
        from .targets import TargetError, parse_target

        try:
            parse_target(args.target)
        except TargetError as e:
            raise UsageError(str(e)) from None
        _check_real_device(args.target, args.i_know_this_resets_the_device)
    out = Path(args.out) if args.out else directory / "triage"
    result = triage_dir(directory, out, args.target, minimize=not args.no_minimize, max_runs=args.max_runs,
                        log=lambda text: print(f"migfuzz: {text}", file=sys.stderr, flush=True), coarse=args.coarse,
                        real_devices=args.i_know_this_resets_the_device)
    sys.stdout.write(summary_table(result))
    ncrash = sum(len(g.members) for g in result.groups)
    print(f"migfuzz: {ncrash} crash file(s) -> {len(result.groups)} distinct finding(s) in {out}; "
          f"{len(result.not_reproduced)} not reproduced, {len(result.unreadable)} skipped", file=sys.stderr)
    return EXIT_FINDING if result.groups else EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("minimize", help="shrink a crash to a minimal program with the same finding signature",
                       description="Delta-debug a crash or corpus file (binary or text): remove ops, then "
                                   "simplify every op's arguments, keeping the finding's signature "
                                   "(kind|arc|op[|harness frames]). Prints the minimal program as text. "
                                   "Exit 1: reproduced and minimized; 0: does not reproduce; 2: bad input.")
    p.add_argument("file")
    p.add_argument("--target", help="target spec (default: the '# target:' line of the crash .txt, else sim)")
    p.add_argument("-o", "--output", help="also write the minimal program here (text; binary if it ends in .bin)")
    p.add_argument("--max-runs", type=int, default=DEFAULT_MAX_RUNS,
                   help=f"execution budget (default {DEFAULT_MAX_RUNS})")
    p.add_argument("--coarse", action="store_true",
                   help="keep only kind|-op-> target|op: the arc's starting state may change")
    p.add_argument("--i-know-this-resets-the-device", action="store_true",
                   help="required to minimize on a real device")
    p.set_defaults(func=cli_errors(cmd_minimize))

    p = sub.add_parser("triage", help="group crash files by signature, minimize one reproducer per group",
                       description="Replay every crash file in DIR, group them by finding signature and write "
                                   "one folder per group (description, repro.txt, repro.bin, trace.txt, crashes). "
                                   "Exit 1 if any crash reproduces, 0 if none does.")
    p.add_argument("dir")
    p.add_argument("--target", help="target spec for every file (default: each crash's '# target:' line)")
    p.add_argument("--out", help="output directory (default: DIR/triage)")
    p.add_argument("--no-minimize", action="store_true", help="keep the smallest crash of each group as is")
    p.add_argument("--max-runs", type=int, default=DEFAULT_MAX_RUNS,
                   help=f"execution budget per minimization (default {DEFAULT_MAX_RUNS})")
    p.add_argument("--strict", dest="coarse", action="store_false",
                   help="group by the full signature kind|arc|op (by default the state the arc started from "
                        "is ignored, so one defect reached from several states is one folder)")
    p.add_argument("--i-know-this-resets-the-device", action="store_true",
                   help="required to replay crashes recorded on a real device")
    p.set_defaults(func=cli_errors(cmd_triage))

    if "export" not in sub.choices:
        from . import export

        export.add_parser(sub)
