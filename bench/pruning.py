#!/usr/bin/env python3
"""The simulator's pruned instrumentation against a counter on every basic block, on real programs.

For each target, two child processes run the same programs (the fixed workload of
``bench/throughput.py``, or the programs a campaign kept with ``--corpus``): one with atheris'
own instrumentation (a counter at every block), one with ``fuzz.instrumentation`` (a counter at
the blocks whose hit nothing else implies). Each records the counters every program hit. Printed:
block hits a program (what the instrumentation costs: every store into a counter), counters a
program and in all, and whether the two split the programs alike (two programs hit
the same counters under one exactly when they do under the other) and find new coverage at the
same programs, which is what libFuzzer decides with. Any difference is listed.

Usage: python bench/pruning.py [--target sim ...] [--corpus DIR] [--programs N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import campaign_here  # noqa: E402

from fuzz import feedback, instrumentation  # noqa: E402
from fuzz.codec import decode  # noqa: E402

DEFAULT_TARGETS = ("sim", "sim:flags=0x1", "sim:proto=v1", "sim:bug=v2-errptr-on-alloc-failure",
                   "sim:bug=v2-uart-tail-trusted", "sim:proto=v1,bug=v1-data-offset-oob")


class CountingMap(feedback.HitMap):
    """The hit map, counting the stores into the code's counters (those below ``limit``: the
    protocol arcs are above): what the instrumentation costs a program, hit by hit."""

    limit = 0
    stores = 0

    def __setitem__(self, index, value):
        if index < CountingMap.limit:
            CountingMap.stores += 1
        bytearray.__setitem__(self, index, value)


def hit_sets(spec_text: str, every_block: bool, corpus: str, programs: int) -> dict:
    """In this process: the counters each program hit (protocol arcs included, as in a campaign),
    and the block hits a program (stores into the code's counters, each hit counted)."""
    if every_block:
        instrumentation.PRUNING = False
    camp, inputs = campaign_here(spec_text, "target", corpus)
    camp.bind_feedback()
    CountingMap.limit = camp.arc_base
    feedback.HITS.__class__ = CountingMap  # (the same object: instrumented code holds it)
    out = []
    for data in inputs[:programs]:
        camp.executor.run(decode(data, camp.proto))
        out.append(feedback.hit_indices(camp.trail.size))
        camp.trail.discard()
    return {"sets": out, "block_hits_a_program": round(CountingMap.stores / max(len(out), 1), 1)}


def new_coverage(sets) -> list[bool]:
    seen: set = set()
    out = []
    for hits in sets:
        out.append(not set(hits) <= seen)
        seen.update(hits)
    return out


def partition(sets) -> set:
    groups: dict = {}
    for i, hits in enumerate(sets):
        groups.setdefault(tuple(hits), set()).add(i)
    return {frozenset(g) for g in groups.values()}


def compare(full: list, pruned: list) -> dict:
    decisions = new_coverage(full), new_coverage(pruned)
    return {
        "programs": len(full),
        "counters_a_program": [round(sum(map(len, s)) / max(len(s), 1), 1) for s in (full, pruned)],
        "counters_in_all": [len({i for hits in s for i in hits}) for s in (full, pruned)],
        "split_alike": partition(full) == partition(pruned),
        "new_coverage_differs_at": [i for i, (a, b) in enumerate(zip(*decisions, strict=True)) if a != b],
    }


def child(spec_text: str, every_block: bool, corpus: str, programs: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--child", "every-block" if every_block else "pruned", "--target", spec_text,
               "--programs", str(programs), "--child-out", out.name] + (["--corpus", corpus] if corpus else [])
        subprocess.run(cmd, check=True, cwd=ROOT)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", action="append", help="a sim target (repeatable; default: six of them)")
    ap.add_argument("--corpus", default="", help="the programs a campaign kept, instead of the fixed workload")
    ap.add_argument("--programs", type=int, default=1500)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--child", choices=("every-block", "pruned"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sets = hit_sets(args.target[0], args.child == "every-block", args.corpus, args.programs)
        Path(args.child_out).write_text(json.dumps(sets))
        return
    results = {}
    for spec_text in args.target or DEFAULT_TARGETS:
        full, pruned = (child(spec_text, every_block, args.corpus, args.programs) for every_block in (True, False))
        r = compare(full["sets"], pruned["sets"])
        r["block_hits_a_program"] = [full["block_hits_a_program"], pruned["block_hits_a_program"]]
        results[spec_text] = r
        print(f"{spec_text:40} {r['programs']} programs; block hits a program {r['block_hits_a_program'][0]} -> "
              f"{r['block_hits_a_program'][1]}; counters a program {r['counters_a_program'][0]} -> "
              f"{r['counters_a_program'][1]}, in all {r['counters_in_all'][0]} -> {r['counters_in_all'][1]}; "
              f"split alike: {'yes' if r['split_alike'] else 'NO'}; new coverage differs at "
              f"{len(r['new_coverage_differs_at'])} programs", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    sys.exit(0 if all(r["split_alike"] and not r["new_coverage_differs_at"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
