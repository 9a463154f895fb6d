#!/usr/bin/env python3
"""False-positive benchmark: the correct simulator must never produce a finding.

Runs the executor and oracles on the correct simulator (no bug variant) for every v2 flag
set (0x1, 0x3, 0x5, 0x7) and for v1, on programs from the fuzzer's own generators: fresh
``fuzz.mutator.random_program`` programs, and the shipped seed programs
(``fuzz.program.seed_programs``) put through chains of ``mutate`` and ``crossover``, a quarter
of them then given the campaign's op groups and field edits (the configuration's stream layout,
inferred first). The generators emit ``fault`` ops, so injected faults (every kind) are part of
the workload.

``--sweep`` runs a fixed neighbourhood of the seeds instead, exhaustively where it is small:
every seed program with one op inserted at every position, the op being every race of two
calls (each call with each argument it takes: every state a SET asks for, the two newest
data_fds) at every interleaving on either device, or one of a few drawn ops of every other
kind. Random programs reach a given race after a given prefix rarely; the sweep reaches each one.
It is one insertion deep: the false positive short campaigns found on 2026-12-03 (a racing write
refused after a close, then a load) also needed a register write while saving, and the sweep of
the tree before its fix ran 1,824,040 programs (flags 0x7) without it. That class is caught where
it starts by tests/test_race.py, which replays both serial orders of every race that fits both.

Prints, per configuration, the programs run, how many armed a fault, the time, programs/s
and the findings (which must be 0). On a finding it prints the program's text and the
finding and exits 1.

``--no-digest`` judges as on a real device: by its streams and registers, without the simulator's
digest of its whole state (``sim:digest=0``).

Usage: python bench/fp.py [--programs 1000000 | --sweep] [--no-digest] [--seed 1] [--jobs 2] [--config v2:0x7 ...]
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz import layout  # noqa: E402
from fuzz.codec import decode, encode  # noqa: E402
from fuzz.executor import Executor  # noqa: E402
from fuzz.mutator import FieldEdits, OpGroups, crossover, mutate, random_op, random_program, trim_payload  # noqa: E402
from fuzz.program import NDEVICES, OPCODES, OPS, Op, Program, normalize, race_slot, seed_programs  # noqa: E402
from harness.runtime import RACE_CALLS, RACE_FD_CALLS, RACE_SCHEDS  # noqa: E402
from harness.sim import SimTarget  # noqa: E402

CONFIGS = (("v2", 0x1), ("v2", 0x3), ("v2", 0x5), ("v2", 0x7), ("v1", 0))


def config_name(proto: str, flags: int) -> str:
    return f"{proto}:{flags:#x}" if proto == "v2" else proto


def programs(proto: str, count: int, seed: int, stream_layout=None):
    """``count`` programs, reproducibly: 1/2 random, 1/2 seeds mutated 1-8 times (some crossed over);
    with a ``stream_layout``, a quarter of them also get the campaign's op groups (migrations) and
    field edits of that layout (fields set to boundary values, checksum fixed up)."""
    rng = random.Random(f"{seed}/{proto}")
    seeds = [prog for _name, prog in seed_programs(proto)]
    groups = OpGroups(proto, SimTarget(proto).profile)
    edits = (FieldEdits(proto, stream_layout, groups)
             if stream_layout is not None and stream_layout.fields else None)
    yield from seeds[:count]
    for _ in range(count - min(count, len(seeds))):
        if rng.random() < 0.5:
            prog = random_program(proto, rng)
        else:
            prog = rng.choice(seeds)
            if rng.random() < 0.2:
                prog = crossover(prog, rng.choice(seeds) if rng.random() < 0.5 else random_program(proto, rng), rng)
            for _ in range(rng.randint(1, 8)):
                prog = mutate(prog, rng, rng.choice(seeds))
        if edits is not None and rng.random() < 0.25:
            data = groups.apply(encode(trim_payload(prog)), rng)
            for _ in range(rng.randint(1, 3)):
                data = edits.apply(data, rng) or data
            prog = decode(data, proto)
        yield prog


SWEEP_DRAWS = 12  # drawn ops of each kind but race (per position of a seed) in --sweep
SWEEP_WRITE = bytes(range(0x10, 0x14))  # what a racing write writes in --sweep
SWEEP_FD_SLOTS = 2  # the data_fds a racing data_fd call uses in --sweep: the newest two


def race_sides(proto: str) -> list:
    """(call, argument) for every racing call the sweep makes: a SET of every state (v1: every
    device_state value of three bits), a data_fd call on each of the newest data_fds (v2 only:
    v1 has none), the others once."""
    sides = []
    for kind in RACE_CALLS:
        if kind == "set":
            sides += [(kind, arg) for arg in range(8)]
        elif kind in RACE_FD_CALLS:
            sides += [(kind, arg) for arg in range(SWEEP_FD_SLOTS)] if proto == "v2" else []
        else:
            sides.append((kind, 0))
    return sides


def sweep_ops(proto: str, seed: int = 1) -> list:
    """The ops ``--sweep`` inserts: every race of two of :func:`race_sides` at every interleaving on
    either device, then SWEEP_DRAWS drawn ops of every other kind (``random_op``: either device)."""
    race = OPCODES[proto]["race"]
    sides = race_sides(proto)
    ops = [normalize(proto, Op(race, dev, race_slot(x, xarg, y, yarg, sched), 0,
                               SWEEP_WRITE if "write" in (x, y) else b""))
           for dev in range(NDEVICES) for x, xarg in sides for y, yarg in sides for sched in range(RACE_SCHEDS)]
    rng = random.Random(f"sweep/{seed}/{proto}")
    ops += [random_op(proto, rng, code) for code in range(len(OPS[proto])) if code != race
            for _ in range(SWEEP_DRAWS)]
    return ops


def sweep_programs(proto: str, seed: int = 1):
    """Every seed program with one of :func:`sweep_ops` inserted at every position (before its first
    op to after its last), in that order."""
    inserted = sweep_ops(proto, seed)
    for _name, prog in seed_programs(proto):
        ops = prog.ops
        for at in range(len(ops) + 1):
            head, tail = ops[:at], ops[at:]
            for op in inserted:
                yield Program(proto, head + (op,) + tail)


def sweep_size(proto: str) -> int:
    """How many programs :func:`sweep_programs` yields."""
    return len(sweep_ops(proto)) * sum(len(prog.ops) + 1 for _name, prog in seed_programs(proto))


def run_config(proto: str, flags: int, count: int | None, seed: int = 1, sweep: bool = False,
               digest: bool = True) -> dict:
    """Run ``count`` programs on the correct simulator (``sweep``: of the seeds' neighbourhood, all of
    it when ``count`` is None); stops at the first finding. ``digest=False``: judged only by what a
    real device shows (its streams and registers), as on the rig."""
    target = SimTarget(proto, flags, digest=digest)
    executor = Executor(target)
    stream_layout = None if sweep else layout.infer(layout.capture(target), config_name(proto, flags), proto)
    fault = OPCODES[proto]["fault"]
    label = config_name(proto, flags) + ("" if target.has_digest else ",digest=0")  # as the target judges
    stats = {"config": label, "programs": 0, "with_faults": 0, "ops": 0, "findings": 0, "seconds": 0.0,
             "program": None, "finding": None}
    start = time.perf_counter()
    if sweep:
        source = itertools.islice(sweep_programs(proto, seed), count)
    else:
        source = programs(proto, count, seed, stream_layout)
    for prog in source:
        stats["programs"] += 1
        stats["ops"] += len(prog.ops)
        stats["with_faults"] += any(op.code == fault for op in prog.ops)
        finding = executor.run(prog)
        if finding is not None:
            stats["findings"] += 1
            stats["program"] = prog.text()
            stats["finding"] = finding
            break
    stats["seconds"] = time.perf_counter() - start
    return stats


def _run(args: tuple) -> dict:
    return run_config(*args)


def report(stats: dict, out=print) -> None:
    rate = stats["programs"] / stats["seconds"] if stats["seconds"] else 0.0
    out(f"{stats['config']:15} programs {stats['programs']:>9}  with faults {stats['with_faults']:>9}  "
        f"ops {stats['ops']:>10}  {stats['seconds']:8.1f} s  {rate:8.0f} programs/s  findings {stats['findings']}")
    if stats["finding"] is not None:
        f = stats["finding"]
        out(f"FALSE POSITIVE on the correct simulator ({stats['config']}): {f.kind} at step {f.step} ({f.op}): "
            f"expected {f.expected}; observed {f.observed}")
        out(stats["program"].rstrip("\n"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, help="programs per configuration (default 1,000,000; with --sweep: "
                                                 "all of it, this many first)")
    ap.add_argument("--sweep", action="store_true",
                    help="every seed with one op inserted at every position (every race at every interleaving)"
                         " instead of generated programs")
    ap.add_argument("--no-digest", action="store_true",
                    help="judge as on a real device: streams and registers only, no digest of the device's state")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="configurations run in parallel processes")
    ap.add_argument("--config", action="append", choices=[config_name(*c) for c in CONFIGS],
                    help="only these configurations (default: all)")
    args = ap.parse_args(argv)
    if args.programs is not None and args.programs <= 0:
        ap.error("--programs must be positive")
    configs = [c for c in CONFIGS if not args.config or config_name(*c) in args.config]
    count = args.programs or (None if args.sweep else 1_000_000)
    work = [(proto, flags, count, args.seed, args.sweep, not args.no_digest) for proto, flags in configs]
    start = time.perf_counter()
    if args.jobs > 1:
        from multiprocessing import Pool
        with Pool(args.jobs) as pool:
            results = []
            for stats in pool.imap(_run, work):
                report(stats)
                results.append(stats)
    else:
        results = []
        for item in work:
            stats = _run(item)
            report(stats)
            results.append(stats)
    total = sum(s["programs"] for s in results)
    findings = sum(s["findings"] for s in results)
    print(f"{'total':15} programs {total:>9}  {time.perf_counter() - start:.1f} s wall  findings {findings}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
