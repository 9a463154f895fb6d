#!/usr/bin/env python3
"""Mutation score of the fuzzer's judging code and of the correct simulator (mutmut 3).

For each module, mutmut mutates that one file and runs only the test files that judge it
(``MODULES``), in a scratch copy of the project (``fuzz``, ``harness``, ``corpus``,
``tests``, ``bench``, ``pyproject.toml``) with its own ``setup.cfg``, so the work tree gets no
``mutants/`` folder or config. Prints, per module, the mutants, how many the tests killed
(a timeout counts as killed), the score, and the surviving mutants (``--diff``: with their
diffs). Mutants that only change what a finding says to people (the expected/observed text of
``self.fail``/``Finding``, a trace note) are counted apart: the score is given with and without
them. Not part of CI: the whole run takes about an hour on 2 cores.

mutmut forks its workers after importing the code once, so module-level tables built at
import time (``fuzz.model.PATHS``) keep the original functions; the tests call the
functions that build them directly, which is what kills their mutants here.

Needs ``pip install mutmut`` (3.x) in the interpreter that runs this script.

Usage: python bench/mutation.py [--module model --module oracles ...] [--jobs 2] [--diff] [--keep]
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SIM_TESTS = ["tests/test_sim.py", "tests/test_oracles.py"]
# module -> (file to mutate, the test files that judge it)
MODULES = {
    "model": ("fuzz/model.py", ["tests/test_model.py", "tests/test_oracles.py"]),
    "oracles": ("fuzz/oracles.py", ["tests/test_oracles.py", "tests/test_sim.py"]),
    "codec": ("fuzz/codec.py", ["tests/test_codec.py", "tests/test_program.py", "tests/test_mutator.py"]),
    "executor": ("fuzz/executor.py", ["tests/test_oracles.py", "tests/test_sim.py"]),
    "conform": ("fuzz/conform.py", ["tests/test_conform.py"]),
    "sim-v1": ("harness/sim/v1.py", SIM_TESTS),
    "sim-v2": ("harness/sim/v2.py", SIM_TESTS),
    "sim-core": ("harness/sim/core.py", SIM_TESTS),
    "sim-stream": ("harness/sim/stream.py", SIM_TESTS),
}
COPY = ("fuzz", "harness", "corpus", "tests", "bench", "pyproject.toml")
DETECTED = ("killed", "timeout", "caught by type check")
RESULT_LINE = re.compile(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$")


def setup_cfg(path: str, tests: list[str]) -> str:
    lines = ["[mutmut]", "source_paths =", "    fuzz", "    harness", "    corpus",
             "only_mutate =", f"    {path}",
             "pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests] + [
             "pytest_add_cli_args =", "    -x", "    -q", "    -p", "    no:cacheprovider"]
    return "\n".join(lines) + "\n"


def scratch_copy(name: str, path: str, tests: list[str]) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f"migfuzz-mutation-{name}-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants", ".pytest_cache")
    for item in COPY:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, work / item, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, work / item)
    # fuzz.seeds is package data from corpus/seeds (an editable install maps it to the work tree):
    # put the copy's seeds where the copy's fuzz package finds them first
    seeds = work / "corpus" / "seeds"
    if seeds.is_dir() and not (work / "fuzz" / "seeds").exists():
        shutil.copytree(seeds, work / "fuzz" / "seeds", ignore=ignore)
    (work / "setup.cfg").write_text(setup_cfg(path, tests))
    return work


def mutmut(work: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, capture_output=True, text=True,
                          timeout=timeout)


DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import find_mutant, get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name, path=find_mutant(name).path)
    except Exception as e:  # noqa: BLE001
        out[name] = f"(no diff: {e})"
print(json.dumps(out))
"""


def diffs(work: Path, names: list[str]) -> dict[str, str]:
    """Every mutant's diff, in one process (``mutmut show`` is one process per mutant)."""
    if not names:
        return {}
    proc = subprocess.run([sys.executable, "-c", DIFFS], cwd=work, input=json.dumps(names), capture_output=True,
                          text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {n: proc.stderr[-200:] for n in names}


def _function_texts(diff: str) -> tuple[str, str]:
    """(original, mutated) source of the mutated function, from its unified diff."""
    before, after = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++", "@@")):
            continue
        if line.startswith("-"):
            before.append(line[1:])
        elif line.startswith("+"):
            after.append(line[1:])
        else:
            before.append(line[1:])
            after.append(line[1:])
    return textwrap.dedent("\n".join(before)), textwrap.dedent("\n".join(after))


class _Texts(ast.NodeTransformer):
    """Blanks what a finding says to people: the expected/observed arguments of ``self.fail(...)``
    and ``Finding(...)``, and the detail of a trace ``note``."""

    SLOTS = {"fail": (1, 2), "Finding": (2, 3), "note": (0,)}

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        for i in self.SLOTS.get(name, ()):
            if i < len(node.args):
                node.args[i] = ast.Constant("text")
        return node


def message_only(diff: str) -> bool:
    """Whether a mutant changes only the text of a finding (what it says to people, not its verdict)."""
    try:
        before, after = (ast.parse(t) for t in _function_texts(diff))
    except SyntaxError:
        return False
    return ast.dump(_Texts().visit(before)) == ast.dump(_Texts().visit(after))


def results(work: Path) -> dict[str, str]:
    out = mutmut(work, "results", "--all", "true").stdout
    return {m.group(1): m.group(2) for m in map(RESULT_LINE.match, out.splitlines()) if m}


def run_module(name: str, jobs: int, timeout: float, diff: bool, keep: bool, out=print,
               reuse: Path | None = None) -> dict:
    path, tests = MODULES[name]
    work = reuse or scratch_copy(name, path, tests)
    start = time.perf_counter()
    try:
        proc = mutmut(work, "run", "--max-children", str(jobs), timeout=timeout)  # resumes a finished run at once
        status = results(work)
        if not status or all(s == "not checked" for s in status.values()):
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise RuntimeError(f"mutmut produced no results for {path} (exit {proc.returncode}):\n{tail}")
        counts: dict[str, int] = {}
        for s in status.values():
            counts[s] = counts.get(s, 0) + 1
        detected = sum(n for s, n in counts.items() if s in DETECTED)
        total = len(status)
        survivors = sorted(m for m, s in status.items() if s not in DETECTED)
        score = detected / total if total else 1.0
        texts = diffs(work, sorted(status))
        text_only = {m for m, d in texts.items() if message_only(d)}
        verdict_total = total - len(text_only)
        verdict_killed = detected - sum(1 for m in text_only if status[m] in DETECTED)
        verdict_score = verdict_killed / verdict_total if verdict_total else 1.0
        out(f"{name:11} {path:24} mutants {total:5}  killed {detected:5}  score {score:6.1%}  "
            f"({', '.join(f'{s} {n}' for s, n in sorted(counts.items()))})  {time.perf_counter() - start:6.0f} s")
        out(f"{'':11} {'':24} without the {len(text_only)} that only change a finding's text: "
            f"mutants {verdict_total:5}  killed {verdict_killed:5}  score {verdict_score:6.1%}")
        for m in survivors:
            if m in text_only and not diff:
                continue
            out(f"    {status[m]:12} {m}{'  (text only)' if m in text_only else ''}")
            if diff:
                out("\n".join("        " + line for line in texts.get(m, "").splitlines()
                              if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))))
        return {"module": name, "path": path, "total": total, "killed": detected, "score": score,
                "verdict_total": verdict_total, "verdict_killed": verdict_killed, "verdict_score": verdict_score,
                "counts": counts, "survivors": {m: status[m] for m in survivors}, "text_only": sorted(text_only)}
    finally:
        if keep or reuse:
            out(f"    (scratch copy kept: {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", choices=sorted(MODULES),
                    help="only these modules (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="mutmut --max-children")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per module before giving up")
    ap.add_argument("--diff", action="store_true", help="print each surviving mutant's diff")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies (mutmut browse there)")
    ap.add_argument("--reuse", type=Path, help="report on (and finish) the run in this kept scratch copy")
    args = ap.parse_args(argv)
    if args.reuse and (not args.module or len(args.module) != 1):
        ap.error("--reuse needs exactly one --module")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("bench/mutation.py needs mutmut 3.x: pip install mutmut", file=sys.stderr)
        return 2
    names = args.module or list(MODULES)
    rows = []
    for name in names:
        rows.append(run_module(name, args.jobs, args.timeout, args.diff, args.keep, reuse=args.reuse))
    total = sum(r["total"] for r in rows)
    killed = sum(r["killed"] for r in rows)
    vtotal = sum(r["verdict_total"] for r in rows)
    vkilled = sum(r["verdict_killed"] for r in rows)
    print(f"{'all':11} {'':24} mutants {total:5}  killed {killed:5}  score {killed / total if total else 1:6.1%}"
          f"   (without text-only mutants: {vkilled}/{vtotal} = {vkilled / vtotal if vtotal else 1:6.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
