#!/usr/bin/env python3
"""Programs per CPU second of this tree against another revision, on the same inputs, by turns.

The host's speed drifts by a quarter within minutes (a shared machine), so two runs one after
the other do not compare. Here two worker processes, one per tree, stay loaded and take turns:
each turn runs the same inputs through the campaign's input path (the plain executor, no
instrumentation) for about a second of CPU time, the two turns of a round in alternating order,
and the ratio is taken within each round, where the host's speed is the same for both. The
median over the rounds and its quartiles are printed.

The inputs are the other revision's own fixed workload (``workload()`` of its bench/throughput.py),
so both trees decode every program; this tree is then measured without the op kinds added since.
The other revision is checked out in a temporary git worktree, removed at the end.

``--instrument target`` runs the campaign's input path as a campaign does (the simulator
instrumented, arc feedback into a private counter array), and ``--corpus DIR`` the programs a
campaign kept instead of the fixed workload.

Usage: python bench/compare.py REV [--target sim] [--rounds 30] [--instrument none|target] [--corpus DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TURN_SECONDS = 1.0  # CPU time a worker runs per turn


def campaign_input_path(root: str, spec_text: str, scope: str = "none"):
    """The campaign's per-input function of the tree at ``root`` (its plain executor, or instrumented
    to ``scope`` with arc feedback, as a campaign runs it), and its protocol."""
    sys.path.insert(0, root)
    from fuzz.engine import Campaign
    from fuzz.targets import parse_target

    # (its stats lines are not wanted here: out= has been a Campaign argument since before b74cd46)
    camp = Campaign(parse_target(spec_text), Path(tempfile.gettempdir()), None, None, False, 0, out=io.StringIO())
    camp.load_target(scope)
    if scope != "none":
        camp.private_counters = memoryview(bytearray(1 << 20))  # no libFuzzer here: hits cost what they would
        camp.enable_arc_feedback()
    return camp.test_one_input, camp.proto


def dump_workload(root: str, spec_text: str, out: str) -> None:
    """Write the fixed workload of the tree at ``root`` for ``spec_text`` into ``out``, one program a file."""
    _run, proto = campaign_input_path(root, spec_text)  # (the protocol as that tree parses the spec)
    from bench.throughput import workload  # that tree's: its root is first on sys.path

    for i, data in enumerate(workload(proto)):
        (Path(out) / f"{i:05}").write_bytes(data)


def serve(root: str, spec_text: str, inputs_dir: str, scope: str = "none") -> None:
    """A worker: load the tree at ``root``, warm up, say "ready", then for each line on stdin run the
    inputs for about TURN_SECONDS of CPU time and print the programs per CPU second."""
    run, _proto = campaign_input_path(root, spec_text, scope)
    inputs = [p.read_bytes() for p in sorted(Path(inputs_dir).iterdir()) if p.is_file() and p.suffix != ".json"]
    t0 = time.process_time()
    for _ in range(2):  # warm: the memo tables, the interpreter's specializations
        for data in inputs:
            run(data)
    passes = max(1, round(TURN_SECONDS / max((time.process_time() - t0) / 2, 1e-6)))
    print("ready", flush=True)
    for _line in sys.stdin:
        t0 = time.process_time()
        for _ in range(passes):
            for data in inputs:
                run(data)
        print(passes * len(inputs) / (time.process_time() - t0), flush=True)


def summary(theirs: list, ours: list) -> dict:
    """Rates per round of the other tree and this one -> the medians and the ratio's median and quartiles."""
    ratios = [b / a for a, b in zip(theirs, ours, strict=True)]
    low, _mid, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"theirs": round(statistics.median(theirs)), "ours": round(statistics.median(ours)),
            "ratio": round(statistics.median(ratios), 3), "quartiles": [round(low, 3), round(high, 3)],
            "rounds": len(ratios)}


def compare(other: str, spec_text: str, rounds: int, scope: str = "none", corpus: str = "") -> dict:
    """Take turns between the tree at ``other`` and this one on ``other``'s fixed workload (or ``corpus``)."""
    with tempfile.TemporaryDirectory() as workload_dir:
        inputs = corpus or workload_dir
        if not corpus:
            subprocess.run([sys.executable, __file__, "--dump", other, spec_text, inputs], check=True)
        workers = [subprocess.Popen([sys.executable, __file__, "--serve", root, spec_text, inputs,
                                     "--instrument", scope], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                   for root in (other, str(ROOT))]
        try:
            for w in workers:
                if w.stdout.readline().strip() != "ready":
                    raise SystemExit(f"compare: a worker for {spec_text} did not start (exit {w.wait()})")
            rates: list[list[float]] = [[], []]
            for i in range(rounds):
                for k in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate who goes first
                    workers[k].stdin.write("go\n")
                    workers[k].stdin.flush()
                    answer = workers[k].stdout.readline()
                    if not answer:
                        raise SystemExit(f"compare: a worker for {spec_text} exited (status {workers[k].wait()})")
                    rates[k].append(float(answer))
        finally:
            for w in workers:
                if w.stdin:
                    w.stdin.close()
                w.wait()
    return summary(*rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rev", nargs="?", help="the git revision to compare this tree with")
    ap.add_argument("--target", action="append", help="target spec (repeatable; default sim and sim:proto=v1)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--instrument", choices=("none", "target"), default="none",
                    help="none: the plain executor (default); target: instrumented as in a campaign")
    ap.add_argument("--corpus", default="", help="a campaign's kept programs instead of the fixed workload")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--dump", nargs=3, metavar=("ROOT", "SPEC", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--serve", nargs=3, metavar=("ROOT", "SPEC", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dump:
        dump_workload(*args.dump)
        return
    if args.serve:
        serve(*args.serve, args.instrument)
        return
    if not args.rev or args.rounds < 1:
        ap.error("a revision and --rounds >= 1 are needed")
    with tempfile.TemporaryDirectory() as tmp:
        other = str(Path(tmp) / "tree")
        checkout = ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", other, args.rev]
        if subprocess.run(checkout).returncode:
            raise SystemExit(f"compare: cannot check out {args.rev!r} (git said why, above)")
        try:
            results = {}
            for spec in args.target or ["sim", "sim:proto=v1"]:
                r = results[spec] = compare(other, spec, args.rounds, args.instrument, args.corpus)
                print(f"{spec:14} {args.rev} {r['theirs']:>7}/s  this tree {r['ours']:>7}/s:  {r['ratio']:.3f}x "
                      f"(quartiles {r['quartiles'][0]:.3f}-{r['quartiles'][1]:.3f}, {r['rounds']} rounds)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", other], check=False)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
