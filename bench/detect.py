#!/usr/bin/env python3
"""Detection benchmark (issue #4): time-to-detect per bug-zoo variant, three searchers.

For every zoo variant (``harness.sim.BUGS``), and for the correct simulator as a
false-positive check, run each searcher once per seed 0..N-1 under the same
wall-clock budget and record how long it takes to report a finding:

  migfuzz     the coverage-guided campaign, ``python -m fuzz.cli fuzz --target T
              --max-time B --seed S`` with a fresh corpus and crash directory;
              the finding kind is read from the crash file's first line.
  random      ``random_program`` -> ``Executor.run`` in a loop (bench/baselines.py).
  hypothesis  a RuleBasedStateMachine over the same executor (bench/baselines.py).

Every run is a fresh process, timed by this script from just before it starts to
its exit (start-up counts: it is what a user waits for).  A run counts as a
detection when the process reports a finding within the budget; a finding of a
kind other than the variant's expected one still counts, but is flagged
(``kind_ok``).  Any finding on the correct simulator is a FALSE POSITIVE and is
printed in full.

Outputs: a markdown table (stdout and OUT_DIR/detect.md), the raw runs
(``--json``), a plot (``--png``), and OUT_DIR/detect-runs.jsonl written as runs
complete.  ``--render FILE.json`` redraws the table and plot from saved results.

Usage: python bench/detect.py [--budget 60] [--seeds 5] [--variants 'v2-*,sim'] \\
           [--searchers migfuzz,random,hypothesis] [--jobs 1] [--json] [--png]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEARCHERS = ("migfuzz", "random", "hypothesis")
# Ablations (opt-in with --searchers): how much of the campaign's lead is its seed corpus?
#   migfuzz-noseeds  the same campaign with no seed programs (`migfuzz fuzz --no-seeds`)
#   seeded           blind op-level mutation of the seed programs, no coverage (bench/baselines.py)
ABLATIONS = ("migfuzz-noseeds", "seeded")
CORRECT = ("sim", "sim:flags=0x1", "sim:flags=0x3", "sim:flags=0x5", "sim:proto=v1")
GRACE = 30.0  # seconds past the budget before a run is killed (it should have stopped itself)
POLL = 0.005


# ----------------------------------------------------------------------------- variants


def all_variants() -> list[dict]:
    """Zoo variants (v1 then v2, by name), then the correct simulator's configurations."""
    from harness.sim import BUGS

    out = [{"variant": name, "target": f"sim:proto={bug.proto},bug={name}", "expected": bug.finding,
            "correct": False} for name, bug in sorted(BUGS.items(), key=lambda kv: (kv[1].proto, kv[0]))]
    out += [{"variant": spec, "target": spec, "expected": None, "correct": True} for spec in CORRECT]
    return out


def select_variants(patterns: str | None) -> list[dict]:
    variants = all_variants()
    if not patterns:
        return variants
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [v for v in variants if any(fnmatch.fnmatchcase(v["variant"], p) for p in pats)]
    unmatched = [p for p in pats if not any(fnmatch.fnmatchcase(v["variant"], p) for v in variants)]
    if unmatched:
        raise SystemExit(f"detect: no variant matches {', '.join(unmatched)} "
                         f"(known: {', '.join(v['variant'] for v in variants)})")
    return chosen


# ----------------------------------------------------------------------------- one run


def _run_child(cmd: list, timeout: float, cwd: Path) -> dict:
    """Run cmd; wall time from just before the fork to its exit, and its CPU time (rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, start_new_session=True)
        killed = False
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                killed = True
                os.killpg(proc.pid, signal.SIGKILL)  # the session this run started, nothing else
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"rc": proc.returncode, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "killed": killed,
                "stdout": out.read().decode("utf-8", "replace"), "stderr": err.read().decode("utf-8", "replace")}


def _last_stats(stderr: str) -> int | None:
    import re

    execs = None
    for line in stderr.splitlines():
        m = re.match(r"migfuzz: stats: .* execs (\d+) ", line)
        if m:
            execs = int(m.group(1))
    return execs


def _error_line(stderr: str) -> str:
    """The most telling line of a failed run's stderr: the exception, else the last line."""
    import re

    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*:", ln) or "Uncaught Python exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


def campaign_command(searcher: str, target: str, seed: int, budget: float, tmp: str, fuzz_args: tuple = ()) -> list:
    """The ``migfuzz fuzz`` command of a campaign run; ``fuzz_args``: extra arguments, migfuzz options
    before a "--" token and libFuzzer flags after it (all libFuzzer flags without one)."""
    cmd = [sys.executable, "-m", "fuzz.cli", "fuzz", "--target", target, "--max-time", str(budget), "--seed",
           str(seed), "--corpus", f"{tmp}/corpus", "--crashes", f"{tmp}/crashes"]
    if searcher == "migfuzz-noseeds":
        cmd.append("--no-seeds")
    opts, flags = (), tuple(fuzz_args)
    if "--" in flags:
        cut = flags.index("--")
        opts, flags = flags[:cut], flags[cut + 1:]
    return cmd + [*opts, *(["--", *flags] if flags else [])]


def run_one(searcher: str, variant: dict, seed: int, budget: float, hyp_check: str = "step",
            fuzz_args: tuple = ()) -> dict:
    """One searcher's run on one variant (``fuzz_args``: see :func:`campaign_command`)."""
    rec = {"searcher": searcher, "variant": variant["variant"], "target": variant["target"], "seed": seed,
           "budget": budget, "expected": variant["expected"], "found": False, "seconds": None, "kind": None,
           "kind_ok": None, "false_positive": False, "late": False, "error": None}
    with tempfile.TemporaryDirectory(prefix="migfuzz-detect-") as tmp:
        campaign = searcher.startswith("migfuzz")
        if campaign:
            cmd = campaign_command(searcher, variant["target"], seed, budget, tmp, fuzz_args)
        else:
            cmd = [sys.executable, str(ROOT / "bench" / "baselines.py"), searcher, "--target", variant["target"],
                   "--seed", str(seed), "--deadline", "DEADLINE"]
            if searcher == "hypothesis":
                cmd += ["--check", hyp_check]
        # the baselines stop at an absolute deadline counted from their launch, like --max-time
        cmd = [str(time.time() + budget) if c == "DEADLINE" else c for c in cmd]
        child = _run_child(cmd, budget + GRACE, ROOT)
        rec.update(wall_s=round(child["wall"], 4), cpu_s=round(child["cpu"], 4), rc=child["rc"],
                   killed=child["killed"])
        kind = crash = None
        if campaign:
            files = sorted(Path(tmp, "crashes").glob("crash-*.txt"))
            if files:
                crash = files[0].read_text(errors="replace")
                first = crash.splitlines()[0] if crash else ""
                kind = first.split("finding:", 1)[1].strip() if "finding:" in first else "?"
            rec["execs"] = _last_stats(child["stderr"])
        else:
            lines = [ln for ln in child["stdout"].splitlines() if ln.startswith("{")]
            if lines:
                res = json.loads(lines[-1])
                kind, crash = res.get("kind"), res.get("crash")
                rec["execs"] = res.get("execs")
                rec["inside_s"] = res.get("inside_s")
                if "examples" in res:
                    rec["examples"] = res["examples"]  # hypothesis: execs are prefix re-runs
        ok_exit = child["rc"] == (1 if kind else 0)
        if not ok_exit or child["killed"]:
            rec["error"] = (f"exit {child['rc']}{' (killed at budget + grace)' if child['killed'] else ''}: "
                            + _error_line(child["stderr"]))
            rec["stderr_tail"] = child["stderr"][-3000:]
        if kind:
            rec["kind"] = kind
            rec["crash"] = crash
            if child["wall"] <= budget:
                rec["found"] = True
                rec["seconds"] = round(child["wall"], 4)
            else:
                rec["late"] = True  # reported after the budget: a miss
            if variant["correct"]:
                rec["false_positive"] = True
            else:
                rec["kind_ok"] = kind == variant["expected"]
    return rec


# ----------------------------------------------------------------------------- summary


def summarize(runs: list[dict], variants: list[dict], searchers: list[str]) -> list[dict]:
    rows = []
    for v in variants:
        row = {"variant": v["variant"], "expected": v["expected"], "correct": v["correct"], "cells": {}}
        for s in searchers:
            rs = [r for r in runs if r["variant"] == v["variant"] and r["searcher"] == s]
            if not rs:
                continue
            found = [r for r in rs if r["found"]]
            budget = max(r["budget"] for r in rs)
            times = sorted(r["seconds"] if r["found"] else float("inf") for r in rs)
            med = statistics.median(times) if times else float("inf")
            kinds: dict = {}
            for r in rs:
                if r["kind"]:
                    kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
            # steady state: runs that used their whole budget (start-up dominates quick finds)
            rates = [r["execs"] / r["wall_s"] for r in rs if not r["kind"] and r.get("execs") and r.get("wall_s")]
            cpu = [r["cpu_s"] for r in found if r.get("cpu_s") is not None]
            row["cells"][s] = {
                "n": len(rs), "found": len(found), "budget": budget,
                "median_found_cpu_s": round(statistics.median(cpu), 3) if cpu else None,
                "median_s": None if med == float("inf") else round(med, 3),  # misses count as never
                "median_budgeted_s": round(min(med, budget), 3),  # misses count as the budget
                "median_found_s": round(statistics.median([r["seconds"] for r in found]), 3) if found else None,
                "kinds": kinds, "kind_ok": sum(1 for r in found if r["kind_ok"]),
                "false_positives": sum(1 for r in rs if r["false_positive"]),
                "errors": sum(1 for r in rs if r["error"]),
                "runs_per_s": round(statistics.median(rates)) if rates else None,
            }
        rows.append(row)
    return rows


def _fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x < 10 else f"{x:.1f} s" if x < 100 else f"{x:.0f} s"


def _cell(c: dict, expected: str | None) -> str:
    budget = c["budget"]
    if c["found"] == 0:
        text = f"— (0/{c['n']})"
    elif c["median_s"] is None:
        text = f"> {_fmt_s(budget)} ({c['found']}/{c['n']})"
    else:
        text = f"{_fmt_s(c['median_s'])} ({c['found']}/{c['n']})"
    if expected and c["found"] and c["kind_ok"] < c["found"]:
        text += " †"
    if c["errors"]:
        text += " !"
    return text


def markdown(meta: dict, rows: list[dict], searchers: list[str], runs: list[dict]) -> str:
    budget, bbudget = meta["budget"], meta.get("baseline_budget") or meta["budget"]
    budgets = (_fmt_s(budget) if bbudget == budget
               else f"{_fmt_s(budget)} for migfuzz, {_fmt_s(bbudget)} for the baselines")
    out = [f"# Detection benchmark: time-to-detect (median of {meta['seeds']} seeds, budget {budgets})", ""]
    out.append(f"- commit {meta['commit']}, {meta['started']}, Python {meta['python']}, hypothesis "
               f"{meta['hypothesis']}, {meta['cpus']} CPUs, --jobs {meta['jobs']}, hypothesis check "
               f"`{meta['hyp_check']}`")
    if meta.get("note"):
        out.append(f"- {meta['note']}")
    if meta.get("fuzz_args"):
        out.append(f"- migfuzz campaigns ran with the libFuzzer flags `{meta['fuzz_args']}`")
    out.append(f"- load before: `{meta['load_before']}`")
    if meta.get("load_after"):
        out.append(f"- load after: `{meta['load_after']}` (wall time {meta.get('elapsed_s', 0) / 60:.1f} min)")
    if bbudget != budget:
        out.append(f"- **the baselines ran with a smaller budget ({_fmt_s(bbudget)})**: their misses count as "
                   f"{_fmt_s(bbudget)} in the totals, which are therefore lower bounds")
    if meta.get("fp_seeds", meta["seeds"]) != meta["seeds"]:
        out.append(f"- the correct simulator (false-positive check) ran {meta['fp_seeds']} seed(s) per searcher")
    out.append("- cell: median wall-clock seconds from process start to the finding, over all seeds "
               "(a miss counts as never: \"> budget\" when half or more missed), then (found/runs); "
               "— never found; † a finding of another kind than expected (see notes); ! a run errored")
    out.append("")
    zoo = [r for r in rows if not r["correct"]]
    head = "| variant | expected kind | " + " | ".join(searchers) + " |"
    out += [head, "|" + "---|" * (2 + len(searchers))]
    for r in zoo:
        cells = [(_cell(r["cells"][s], r["expected"]) if s in r["cells"] else "") for s in searchers]
        out.append(f"| {r['variant']} | {r['expected']} | " + " | ".join(cells) + " |")
    if zoo:
        tot = []
        for s in searchers:
            cs = [r["cells"][s] for r in zoo if s in r["cells"]]
            total = sum(c["median_budgeted_s"] for c in cs)
            tot.append(f"**{_fmt_s(total)}** ({sum(c['found'] for c in cs)}/{sum(c['n'] for c in cs)} runs, "
                       f"{sum(1 for c in cs if c['found'])}/{len(cs)} variants)")
        out.append("| **total** (sum of medians, miss = budget) | | " + " | ".join(tot) + " |")
        rates = []
        for s in searchers:
            vals = [r["cells"][s]["runs_per_s"] for r in rows if s in r["cells"] and r["cells"][s]["runs_per_s"]]
            rates.append(f"{statistics.median(vals):.0f}" if vals else "")
        out.append("| executor runs/s (median over runs that used their whole budget) | | "
                   + " | ".join(rates) + " |")
        wins = {s: 0 for s in searchers}
        for r in zoo:
            meds = {s: r["cells"][s]["median_budgeted_s"] for s in searchers if s in r["cells"]
                    and r["cells"][s]["found"]}
            if meds:
                best = min(meds.values())
                for s, m in meds.items():
                    if m == best:
                        wins[s] += 1
        out.append("| fastest on (variants, ties count for each) | | "
                   + " | ".join(str(wins[s]) for s in searchers) + " |")
    correct = [r for r in rows if r["correct"]]
    if correct:
        out += ["", "## False-positive check: the correct simulator", "",
                "| target | " + " | ".join(searchers) + " |", "|" + "---|" * (1 + len(searchers))]
        for r in correct:
            cells = []
            for s in searchers:
                c = r["cells"].get(s)
                if c is None:
                    cells.append("")
                elif c["false_positives"]:
                    cells.append(f"**FALSE POSITIVE {c['false_positives']}/{c['n']}**: "
                                 + ", ".join(f"{k}×{n}" for k, n in c["kinds"].items()))
                else:
                    cells.append(f"none (0/{c['n']}){' !' if c['errors'] else ''}")
            out.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    notes = []
    for r in zoo:
        for s in searchers:
            c = r["cells"].get(s)
            if c and r["expected"] and c["found"] and c["kind_ok"] < c["found"]:
                notes.append(f"- † {r['variant']} / {s}: kinds found "
                             + ", ".join(f"{k}×{n}" for k, n in c["kinds"].items()) + f" (expected {r['expected']})")
    late = [r for r in runs if r["late"]]
    for r in late:
        notes.append(f"- {r['variant']} / {r['searcher']} seed {r['seed']}: {r['kind']} reported after the budget "
                     f"({r['wall_s']:.1f} s): counted as a miss")
    errors = [r for r in runs if r["error"]]
    for r in errors:
        notes.append(f"- ! {r['variant']} / {r['searcher']} seed {r['seed']}: {r['error'].splitlines()[0][:200]}")
    if notes:
        out += ["", "## Notes", ""] + notes
    fps = [r for r in runs if r["false_positive"]]
    if fps:
        out += ["", "## FALSE POSITIVES (findings on the correct simulator)", ""]
        for r in fps:
            out += [f"### {r['variant']} / {r['searcher']} seed {r['seed']}: {r['kind']}", "", "```",
                    (r.get("crash") or "").rstrip(), "```", ""]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- plot


def plot(path: Path, meta: dict, runs: list[dict], rows: list[dict], searchers: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = meta["budget"]
    zoo = [r for r in rows if not r["correct"]]
    if not zoo:
        return
    names = [r["variant"] for r in zoo]
    index = {n: i for i, n in enumerate(names)}
    colors = {"migfuzz": "tab:blue", "random": "tab:orange", "hypothesis": "tab:green",
              "migfuzz-noseeds": "tab:purple", "seeded": "tab:brown"}
    width = 0.8 / max(1, len(searchers))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.5 * len(names) + 2), 6))
    for k, s in enumerate(searchers):
        off = (k - (len(searchers) - 1) / 2) * width
        color = colors.get(s, None)
        fx, fy, mx, my = [], [], [], []
        for r in runs:
            if r["searcher"] != s or r["variant"] not in index:
                continue
            jitter = ((r["seed"] % 5) - 2) * width * 0.12
            x = index[r["variant"]] + off + jitter
            if r["found"]:
                fx.append(x)
                fy.append(max(r["seconds"], 1e-2))
            else:
                mx.append(x)
                my.append(r["budget"])
        ax.scatter(fx, fy, s=14, color=color, alpha=0.45, linewidths=0)
        ax.scatter(mx, my, s=28, color=color, marker="x", alpha=0.8, linewidths=1.2)
        medx = [index[r["variant"]] + off for r in zoo if s in r["cells"] and r["cells"][s]["median_s"] is not None]
        medy = [max(r["cells"][s]["median_s"], 1e-2) for r in zoo
                if s in r["cells"] and r["cells"][s]["median_s"] is not None]
        ax.scatter(medx, medy, s=70, color=color, marker="_", linewidths=2.5,
                   label=f"{s} (bar: median; dots: runs; x: miss at budget)")
    for b in sorted({r["budget"] for r in runs}):
        ax.axhline(b, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.05, top=max(r["budget"] for r in runs) * 1.6)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("time to detect, s (wall clock, log scale)")
    bb = meta.get("baseline_budget") or budget
    fig.suptitle(f"migfuzz detection benchmark: {meta['seeds']} seeds, budget {budget:g} s"
                 + (f" (baselines {bb:g} s)" if bb != budget else "") + ", "
                 f"load {meta['load_before'].split('load average:')[-1].strip()}"
                 + (f" -> {meta['load_after'].split('load average:')[-1].strip()}" if meta.get("load_after") else ""),
                 fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(searchers), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _meta(args, searchers) -> dict:
    import importlib.metadata as md

    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    try:
        hyp = md.version("hypothesis")
    except md.PackageNotFoundError:
        hyp = "?"
    return {"budget": args.budget, "baseline_budget": args.baseline_budget, "seeds": args.seeds,
            "fp_seeds": args.fp_seeds, "jobs": args.jobs, "searchers": searchers,
            "hyp_check": args.hypothesis_check, "commit": commit, "python": platform.python_version(),
            "hypothesis": hyp, "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "load_before": _uptime(), "note": args.note, "fuzz_args": args.fuzz_args}


def render(doc: dict, out_dir: Path, png: Path | None) -> str:
    meta, runs = doc["meta"], doc["runs"]
    searchers = meta["searchers"]
    variants = [v for v in all_variants() if any(r["variant"] == v["variant"] for r in runs)]
    rows = summarize(runs, variants, searchers)
    md = markdown(meta, rows, searchers, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "detect.md").write_text(md)
    if png:
        plot(png, meta, runs, rows, searchers)
    return md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="time-to-detect per bug-zoo variant: migfuzz vs random vs Hypothesis")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per run, wall clock (default 60)")
    ap.add_argument("--seeds", type=int, default=5, help="runs per searcher and variant, seeds 0..N-1 (default 5)")
    ap.add_argument("--baseline-budget", type=float,
                    help="a smaller budget for random and hypothesis, to save time (default: --budget); "
                         "their misses then count as this budget: their totals become lower bounds")
    ap.add_argument("--fp-seeds", type=int, help="seeds for the correct simulator (default: --seeds)")
    ap.add_argument("--variants", help="comma list of names or globs (zoo names; sim, sim:flags=0x1, ... for the "
                                       "correct simulator); default all")
    ap.add_argument("--searchers", default=",".join(SEARCHERS),
                    help=f"comma list (default: all three; ablations: {', '.join(ABLATIONS)})")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1, for clean timings)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--json", nargs="?", const="", help="write all runs as JSON (default OUT_DIR/detect.json)")
    ap.add_argument("--png", nargs="?", const="", help="plot (default OUT_DIR/detect.png)")
    ap.add_argument("--hypothesis-check", choices=("step", "end"), default="step",
                    help="run the program after every rule (step, default) or once per example (end)")
    ap.add_argument("--render", help="redraw the table (and --png) from a saved JSON; runs nothing")
    ap.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    ap.add_argument("--note", help="free text for the header (e.g. which tree was measured)")
    ap.add_argument("--fuzz-args", default="", help="extra arguments of the migfuzz campaigns, space separated: "
                                                     "libFuzzer flags ('-use_value_profile=1 -entropic=0'), "
                                                     "or migfuzz options, then -- and libFuzzer flags "
                                                     "('--instrument none -- -use_value_profile=1')")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    png = Path(args.png or out_dir / "detect.png") if args.png is not None else None
    if args.render:
        print(render(json.loads(Path(args.render).read_text()), out_dir, png), end="")
        return 0
    searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]
    bad = [s for s in searchers if s not in SEARCHERS + ABLATIONS]
    if bad or not searchers:
        ap.error(f"unknown searcher(s) {', '.join(bad)} (known: {', '.join(SEARCHERS + ABLATIONS)})")
    if args.seeds < 1 or args.budget <= 0 or args.jobs < 1 or (args.fp_seeds is not None and args.fp_seeds < 1) \
            or (args.baseline_budget is not None and args.baseline_budget <= 0):
        ap.error("--seeds, --fp-seeds, --budget, --baseline-budget and --jobs must be positive")
    variants = select_variants(args.variants)
    if args.baseline_budget is None:
        args.baseline_budget = args.budget
    if args.fp_seeds is None:
        args.fp_seeds = args.seeds

    def budget_of(searcher: str) -> float:
        return args.budget if searcher.startswith("migfuzz") else args.baseline_budget

    meta = _meta(args, searchers)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "detect-runs.jsonl"
    jsonl.write_text("")
    # variant by variant, seed by seed, searchers interleaved: load changes hit every searcher alike
    plan = [(s, v, seed) for v in variants for seed in range(args.fp_seeds if v["correct"] else args.seeds)
            for s in searchers]
    print(f"detect: {len(plan)} runs ({len(variants)} targets x {len(searchers)} searchers x {args.seeds} seeds), "
          f"budget {args.budget:g} s, jobs {args.jobs}; {meta['load_before']}", file=sys.stderr, flush=True)
    runs: list = [None] * len(plan)
    lock = threading.Lock()
    t_start = time.monotonic()
    done = [0]

    def task(i: int) -> None:
        s, v, seed = plan[i]
        rec = run_one(s, v, seed, budget_of(s), args.hypothesis_check, tuple(args.fuzz_args.split()))
        with lock:
            runs[i] = rec
            done[0] += 1
            with open(jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if not args.quiet:
                what = (f"{rec['kind']} in {rec['seconds']:.2f} s" if rec["found"] else
                        f"miss ({rec['wall_s']:.1f} s{', late ' + rec['kind'] if rec['late'] else ''})")
                flag = "" if rec["kind_ok"] in (None, True) else f"  [expected {rec['expected']}]"
                print(f"[{done[0]}/{len(plan)}] {v['variant']:32} {s:10} seed {seed}: {what}{flag}"
                      f"{'  ERROR' if rec['error'] else ''}", file=sys.stderr, flush=True)
            if rec["false_positive"]:
                bar = "!" * 78
                print(f"{bar}\nFALSE POSITIVE on the correct simulator {v['target']} ({s}, seed {seed}): "
                      f"{rec['kind']}\n{rec.get('crash') or ''}\n{bar}", file=sys.stderr, flush=True)

    if args.jobs == 1:
        for i in range(len(plan)):
            task(i)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for fut in [pool.submit(task, i) for i in range(len(plan))]:
                fut.result()
    meta["load_after"] = _uptime()
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    doc = {"meta": meta, "runs": runs}
    if args.json is not None:
        Path(args.json or out_dir / "detect.json").write_text(json.dumps(doc, indent=1))
    print(render(doc, out_dir, png), end="")
    return 1 if any(r["false_positive"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
