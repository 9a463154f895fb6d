#!/usr/bin/env python3
"""Throughput of one program execution on the simulator, one core.

Prints programs/s for a fixed, reproducible workload (the seed corpus plus
programs from the structured generator, seeded), in three configurations:

  plain         executor + oracles + simulator, no instrumentation
  instrumented  the simulator instrumented (the default `--instrument target`),
                arc feedback on, no libFuzzer loop
  instr-all     the same with the executor and oracles instrumented too
  campaign      a real `migfuzz fuzz` run for --seconds (libFuzzer loop,
                mutator, arc feedback), programs/s from its final stats line
                (wall clock and CPU time since its first program), for both
                instrumentation levels; its ratio is to the plain executor
                measured just before and just after it (the machine's speed
                drifts within a run: a figure taken a minute earlier does not
                compare)
  start-up      `migfuzz fuzz --runs 1`, wall clock from the command to its
                exit (interpreter, imports, instrumentation, stream layout,
                seeds, one program), the median of three
  plain on what it ran
                the plain executor again, and the instrumented one, on every
                16th program that campaign ran (kept as it ran them): a
                campaign's programs are longer than the fixed workload's (it
                keeps the ones that reach deeper, and its mutations insert
                whole migrations), so the loop's own cost (mutator, decoding,
                libFuzzer) is the campaign's rate over the instrumented one on
                these (the same programs both ways). Not the programs it kept:
                libFuzzer keeps the shortest program of a coverage, so those
                are shorter than what runs (v1, 2026-12-04: 8.4 ops kept, 13.5 run)
  in ops        the campaign's ops per CPU second (its programs' mean length, from
                its stats line) over the plain executor's on the fixed workload: a
                campaign keeps and mutates the longer programs, so programs/s alone
                compares unequal work
  op costs      where the difference goes: per op kind, how many a program makes and
                the microseconds each takes (the plain executor, each handler timed), on
                the fixed workload and on the programs that campaign ran; the kinds that
                add the most to a campaign program are printed

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


def corpus_inputs(corpus: Path) -> list:
    """The binary programs in a directory: a campaign's corpus (not its stream layout), or the
    programs a sampled campaign ran."""
    return [p.read_bytes() for p in sorted(Path(corpus).iterdir()) if p.is_file() and p.suffix != ".json"]


def workload(proto: str, n: int = 1500) -> list:
    """A fixed, reproducible list of inputs: the seeds, then mutated seeds and random programs."""
    from fuzz.codec import encode
    from fuzz.mutator import mutate, random_program
    from fuzz.program import seed_programs

    rng = random.Random(1234)
    seeds = [prog for _name, prog in seed_programs(proto)]
    progs = list(seeds)
    while len(progs) < n:
        base = rng.choice(seeds) if rng.random() < 0.6 else random_program(proto, rng, 16)
        for _ in range(rng.randint(1, 4)):
            base = mutate(base, rng)
        progs.append(base)
    return [encode(p) for p in progs]


def campaign_here(spec_text: str, scope: str, corpus: str = ""):
    """A campaign on ``spec_text`` without libFuzzer, instrumented to ``scope``, and its inputs: the
    fixed workload or the programs in the directory ``corpus``."""
    from fuzz.engine import Campaign
    from fuzz.targets import parse_target

    camp = Campaign(parse_target(spec_text), Path(tempfile.gettempdir()), None, None, False, 0)
    camp.load_target(scope)
    if scope != "none":
        camp.private_counters = memoryview(bytearray(1 << 20))  # no libFuzzer here: hits cost what they would
        camp.enable_arc_feedback()
    return camp, corpus_inputs(Path(corpus)) if corpus else workload(camp.proto)


def measure_here(spec_text: str, scope: str, seconds: float, corpus: str = "") -> dict:
    """Programs per CPU second of the campaign's own input path, in this process, on the fixed
    workload or on the programs in the directory ``corpus``."""
    from fuzz.codec import decode

    camp, inputs = campaign_here(spec_text, scope, corpus)
    run = camp.test_one_input
    n = 0
    t0 = time.process_time()  # CPU time: other processes on the machine do not count
    while time.process_time() - t0 < seconds:
        for data in inputs:
            run(data)
        n += len(inputs)
    dt = time.process_time() - t0
    ops = sum(len(decode(d, camp.proto).ops) for d in inputs) / max(len(inputs), 1)
    return {"programs_per_s": round(n / dt), "programs": n, "findings": len(camp.findings),
            "ops_per_program": round(ops, 1)}


def op_costs_here(spec_text: str, corpus: str = "", passes: int = 3) -> dict:
    """Per op kind, on the fixed workload or the programs in ``corpus``: {"ops": {name: [ops a program,
    microseconds an op]}, "program_us": microseconds a program, "handlers_us": of which in handlers}.
    Each handler is timed around its call (the timer adds its own fraction of a microsecond)."""
    camp, inputs = campaign_here(spec_text, "none", corpus)
    executor = camp.executor
    names = [spec.name for spec in executor.specs]
    spent, made = [0] * len(names), [0] * len(names)
    clock = time.perf_counter_ns

    def timed(i, handler):
        def call(op, view, dev):
            t = clock()
            try:
                return handler(op, view, dev)
            finally:
                spent[i] += clock() - t
                made[i] += 1
        return call

    executor.handlers = tuple(timed(i, h) for i, h in enumerate(executor.handlers))
    run = camp.test_one_input
    for data in inputs:  # warm: the memo tables, the interpreter's specializations
        run(data)
    spent[:], made[:] = [0] * len(names), [0] * len(names)
    t0 = clock()
    for _ in range(passes):
        for data in inputs:
            run(data)
    n = passes * max(len(inputs), 1)
    return {"ops": {name: [made[i] / n, spent[i] / made[i] / 1000] for i, name in enumerate(names) if made[i]},
            "program_us": (clock() - t0) / n / 1000, "handlers_us": sum(spent) / n / 1000}


def op_cost_lines(fixed: dict, ran: dict, top: int = 4) -> list[str]:
    """The op kinds that add the most microseconds to a program of the campaign's over one of the fixed
    workload, as lines: ops a program and microseconds an op, both ways."""
    def per_program(costs, name):
        count, each = costs["ops"].get(name, (0, 0))
        return count * each

    names = sorted(set(fixed["ops"]) | set(ran["ops"]), key=lambda k: per_program(fixed, k) - per_program(ran, k))
    lines = [f"a program {fixed['program_us']:.1f} us on the fixed workload, {ran['program_us']:.1f} us on the "
             f"campaign's programs; the op kinds that add most:"]
    for name in names[:top]:
        (c1, u1), (c2, u2) = (costs["ops"].get(name, (0, 0)) for costs in (fixed, ran))
        lines.append(f"  {name:10} {c1:.2f} -> {c2:.2f} a program, {u1:.1f} -> {u2:.1f} us each "
                     f"(+{per_program(ran, name) - per_program(fixed, name):.1f} us a program)")
    return lines


def op_costs(spec_text: str, corpus: str = "") -> dict:
    """``op_costs_here`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--op-costs", spec_text, corpus],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(spec_text: str, scope: str, seconds: float, corpus: str = "") -> dict:
    """``measure_here`` in a fresh interpreter (instrumentation patches the loaded functions for good)."""
    out = subprocess.run([sys.executable, __file__, "--measure", spec_text, scope, str(seconds), corpus],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup(spec_text: str, tries: int = 3) -> float:
    """Seconds from ``migfuzz fuzz --runs 1`` to its exit (median of ``tries``)."""
    times = []
    for _ in range(tries):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "fuzz.cli", "fuzz", "--target", spec_text, "--runs", "1", "--corpus",
                            f"{tmp}/corpus", "--crashes", f"{tmp}/crashes"], capture_output=True, cwd=ROOT, check=True)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


SAMPLE_EVERY = 16  # the campaign keeps every 16th program it runs (a modulo a program: ~20 ns against ~100 us)


def sampled_campaign(out: str, argv: list) -> None:
    """``migfuzz fuzz argv``, keeping every SAMPLE_EVERY-th input it runs, as it ran it, in memory,
    written to the directory ``out`` when the campaign ends (never returns: the campaign exits)."""
    from fuzz import cli, engine

    ran = []
    run, finish = engine.Campaign.test_one_input, engine.Campaign.finish

    def sampling_run(camp, data):
        if camp.execs % SAMPLE_EVERY == 0:
            ran.append(bytes(data))
        return run(camp, data)

    def writing_finish(camp):
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(ran):
            (folder / f"{i:06d}").write_bytes(data)
        return finish(camp)

    engine.Campaign.test_one_input, engine.Campaign.finish = sampling_run, writing_finish
    sys.exit(cli.main(argv))


def campaign(spec_text: str, seconds: float, instrument: str) -> dict:
    """The campaign's figures, the plain executor's rate on the fixed workload just before and just
    after it, and the plain and instrumented rates on a sample of the programs the campaign ran."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--sampled-campaign", f"{tmp}/ran",
               "fuzz", "--target", spec_text, "--corpus", f"{tmp}/corpus",
               "--crashes", f"{tmp}/crashes", "--max-time", str(seconds), "--instrument", instrument]
        before = measure(spec_text, "none", seconds / 2)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        after = measure(spec_text, "none", seconds / 2)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("migfuzz: stats:")]
        m = re.search(r"execs (\d+) \((\d+)/s, (\d+)/cpu-s\) protocol arcs (\d+) findings (\d+)",
                      lines[-1]) if lines else None
        if not m:
            return {"error": proc.stderr[-500:]}
        ran = f"{tmp}/ran"
        plain = measure(spec_text, "none", seconds, ran)
        instrumented = measure(spec_text, instrument, seconds, ran)
        costs = [op_costs(spec_text, corpus) for corpus in ("", ran)]
        ops = re.search(r"ops/program ([\d.]+)", lines[-1])
        return {"programs_per_s": int(m.group(2)), "programs_per_cpu_s": int(m.group(3)), "programs": int(m.group(1)),
                "ops_per_program": float(ops.group(1)) if ops else None,
                "plain_ops_per_program": before["ops_per_program"],
                "arcs": int(m.group(4)), "findings": int(m.group(5)), "exit": proc.returncode,
                "plain_around": [before["programs_per_s"], after["programs_per_s"]], "plain_on_what_it_ran": plain,
                "instrumented_on_what_it_ran": instrumented, "op_costs": {"fixed": costs[0], "ran": costs[1]}}


def main() -> None:
    if sys.argv[1:2] == ["--sampled-campaign"]:  # (the campaign's own arguments follow: no argparse)
        sampled_campaign(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", action="append", help="target spec (repeatable; default sim and sim:proto=v1)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-campaign", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--measure", nargs=4, metavar=("SPEC", "SCOPE", "SECONDS", "CORPUS"), help=argparse.SUPPRESS)
    ap.add_argument("--op-costs", nargs=2, metavar=("SPEC", "CORPUS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.op_costs:
        print(json.dumps(op_costs_here(*args.op_costs)))
        return
    if args.measure:
        spec, scope, seconds, corpus = args.measure
        print(json.dumps(measure_here(spec, scope, float(seconds), corpus)))
        return
    targets = args.target or ["sim", "sim:proto=v1"]
    results = {}
    for spec in targets:
        row = {"plain": measure(spec, "none", args.seconds), "instrumented": measure(spec, "target", args.seconds),
               "instr-all": measure(spec, "all", args.seconds)}
        if not args.no_campaign:
            row["startup_s"] = startup(spec)
            row["campaign"] = campaign(spec, args.seconds, "target")
            row["campaign-all"] = campaign(spec, args.seconds, "all")
        results[spec] = row
        plain = row["plain"]["programs_per_s"]
        print(f"{spec:16} plain {plain:>6}/s ({row['plain']['ops_per_program']} ops/program)"
              f"  instrumented {row['instrumented']['programs_per_s']:>6}/s"
              f" ({row['instrumented']['programs_per_s'] / plain:.2f})"
              f"  instr-all {row['instr-all']['programs_per_s']:>6}/s"
              f" ({row['instr-all']['programs_per_s'] / plain:.2f})"
              + (f"  start-up {row['startup_s']:.2f} s" if "startup_s" in row else ""), flush=True)
        for key in ("campaign", "campaign-all"):
            c = row.get(key)
            if c is None:  # --no-campaign
                continue
            if "error" in c:
                print(f"{'':16} {key}: {c['error']}", flush=True)
                continue
            same, instr = c["plain_on_what_it_ran"], c["instrumented_on_what_it_ran"]
            around = sum(c["plain_around"]) / 2
            rate = c["programs_per_cpu_s"]
            print(f"{'':16} {key} {rate:>6}/cpu-s ({rate / around:.2f} of plain"
                  f" measured around it, {c['plain_around'][0]}/s and {c['plain_around'][1]}/s;"
                  f" arcs {c['arcs']})", flush=True)
            print(f"{'':16} on every {SAMPLE_EVERY}th program it ran ({same['ops_per_program']} ops/program): plain"
                  f" {same['programs_per_s']}/s (a program {around / same['programs_per_s']:.2f}x the fixed"
                  f" workload's), instrumented {instr['programs_per_s']}/s"
                  f" ({instr['programs_per_s'] / same['programs_per_s']:.2f}); the loop at"
                  f" {rate / instr['programs_per_s']:.2f} of the instrumented executor on the same programs,"
                  f" {rate / same['programs_per_s']:.2f} of plain", flush=True)
            if key == "campaign":
                for line in op_cost_lines(c["op_costs"]["fixed"], c["op_costs"]["ran"]):
                    print(f"{'':16} {line}", flush=True)
            if c.get("ops_per_program"):
                print(f"{'':16} {key} in ops: {c['ops_per_program']} ops/program,"
                      f" {c['programs_per_cpu_s'] * c['ops_per_program']:.0f} ops/cpu-s, "
                      f"{c['programs_per_cpu_s'] * c['ops_per_program'] / (around * c['plain_ops_per_program']):.2f}"
                      f" of plain's {around * c['plain_ops_per_program']:.0f} ops/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    t0 = time.time()
    main()
    if "--measure" not in sys.argv and "--op-costs" not in sys.argv:
        print(f"({time.time() - t0:.0f} s)")
