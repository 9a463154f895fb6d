#!/usr/bin/env python3
"""Throughput of one program execution on the simulator, one core.

Prints programs/s for a fixed, reproducible workload (the seed corpus plus
programs from the structured generator, seeded), in three configurations:

  plain         executor + oracles + simulator, no instrumentation
  instrumented  the simulator imported under atheris.instrument_imports (the
                default `--instrument target`), arc feedback on, no libFuzzer loop
  instr-all     the same with the executor and oracles instrumented too
  campaign      a real `migfuzz fuzz` run for --seconds (libFuzzer loop,
                mutator, arc feedback), programs/s from its final stats line
                (wall clock and CPU time), for both instrumentation levels

Usage: python bench/throughput.py [--target sim] [--seconds 10] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def workload(proto: str, n: int = 1500) -> list:
    from fuzz.codec import encode
    from fuzz.mutator import mutate, random_program
    from fuzz.program import parse_program

    rng = random.Random(1234)
    seeds = [parse_program(p.read_text()) for p in sorted((ROOT / "corpus" / "seeds" / proto).glob("*.txt"))]
    progs = list(seeds)
    while len(progs) < n:
        base = rng.choice(seeds) if rng.random() < 0.6 else random_program(proto, rng, 16)
        for _ in range(rng.randint(1, 4)):
            base = mutate(base, rng)
        progs.append(base)
    return [encode(p) for p in progs]


def measure(spec_text: str, instrument: bool, seconds: float) -> dict:
    """Run in a fresh interpreter so instrumentation applies to fresh imports."""
    code = f"""
import sys, time, json
sys.path.insert(0, {str(ROOT)!r})
sys.argv = ['bench']
from fuzz.targets import parse_target
from fuzz.engine import Campaign
from pathlib import Path
spec = parse_target({spec_text!r})
camp = Campaign(spec, Path('/tmp'), None, None, False, 0)
camp.load_target({instrument!r})
if {instrument!r} != "none":
    camp.enable_arc_feedback()
sys.path.insert(0, {str(ROOT / 'bench')!r})
from throughput import workload
inputs = workload(camp.proto)
run = camp.test_one_input
n = 0
t0 = time.process_time()  # CPU time: other processes on the machine do not count
while time.process_time() - t0 < {seconds!r}:
    for data in inputs:
        run(data)
    n += len(inputs)
dt = time.process_time() - t0
print(json.dumps({{"programs_per_s": round(n / dt), "programs": n, "findings": camp.findings}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def campaign(spec_text: str, seconds: float, instrument: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fuzz.cli", "fuzz", "--target", spec_text, "--corpus", f"{tmp}/corpus",
               "--crashes", f"{tmp}/crashes", "--max-time", str(seconds), "--instrument", instrument]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("migfuzz: stats:")]
        m = re.search(r"execs (\d+) \((\d+)/s, (\d+)/cpu-s\) protocol arcs (\d+) findings (\d+)",
                      lines[-1]) if lines else None
        if not m:
            return {"error": proc.stderr[-500:]}
        return {"programs_per_s": int(m.group(2)), "programs_per_cpu_s": int(m.group(3)), "programs": int(m.group(1)),
                "arcs": int(m.group(4)), "findings": int(m.group(5)), "exit": proc.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", action="append", help="target spec (repeatable; default sim and sim:proto=v1)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-campaign", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    targets = args.target or ["sim", "sim:proto=v1"]
    results = {}
    for spec in targets:
        row = {"plain": measure(spec, "none", args.seconds), "instrumented": measure(spec, "target", args.seconds),
               "instr-all": measure(spec, "all", args.seconds)}
        if not args.no_campaign:
            row["campaign"] = campaign(spec, args.seconds, "target")
            row["campaign-all"] = campaign(spec, args.seconds, "all")
        results[spec] = row
        line = (f"{spec:16} plain {row['plain']['programs_per_s']:>6}/s"
                f"  instrumented {row['instrumented']['programs_per_s']:>6}/s"
                f"  instr-all {row['instr-all']['programs_per_s']:>6}/s")
        for key in ("campaign", "campaign-all"):
            if key in row:
                c = row[key]
                line += (f"  {key} {c.get('programs_per_s', '?'):>6}/s ({c.get('programs_per_cpu_s', '?')}/cpu-s,"
                         f" arcs {c.get('arcs', '?')})")
        print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"({time.time() - t0:.0f} s)")
