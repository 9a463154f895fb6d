#!/usr/bin/env python3
"""Baseline searchers for the detection benchmark (``bench/detect.py``).

Two searchers that use the same programs, executor and oracles as the
coverage-guided campaign, but no coverage and no corpus:

  random      loop ``random_program(proto, rng)`` -> ``Executor(target).run``
              until a finding or the deadline.
  hypothesis  a Hypothesis ``RuleBasedStateMachine`` with one rule per op kind
              of the protocol; arguments are drawn with strategies that mirror
              ``fuzz.mutator.random_op``'s biases.  Each rule appends its op to
              the program; an ``@invariant`` re-runs the program so far through
              ``Executor.run`` and stops at the first finding (``--check end``:
              run the whole program once per example, in ``teardown``).
              Generation only: no shrinking, no example database, seeded with
              ``@seed``; the time is taken at the first failure.

An ablation, not one of the benchmark's three searchers:

  seeded      blind op-level mutation of the seed corpus (corpus/seeds), no coverage.

Each searcher runs in-process (``run_random`` / ``run_hypothesis``, returning a
result dict) or as a worker process::

    python bench/baselines.py random|hypothesis|seeded --target SPEC --seed N --budget S [--deadline EPOCH]

which prints the result as one JSON line and exits 1 on a finding, 0 otherwise
(what ``migfuzz fuzz`` does), so every searcher pays the same start-up.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz.crashfile import program_text  # noqa: E402
from fuzz.executor import Executor  # noqa: E402
from fuzz.mutator import (  # noqa: E402
    EDGE_VALUES,
    RACE_PAIRS,
    READ_SIZES,
    REGISTER_VALUES,
    SEGMENTS,
    mutate,
    random_program,
)
from fuzz.program import (  # noqa: E402
    FAULT_KINDS,
    FIELD_MANGLES,
    FIX_KINDS,
    MANGLE_KINDS,
    OPS,
    RACE_CALLS,
    RACE_SCHEDS,
    SIZES,
    Op,
    Program,
    mangle_slots,
    normalize,
    race_slot,
)
from fuzz.program import seed_programs as shipped_seeds  # noqa: E402
from fuzz.targets import open_target, parse_target  # noqa: E402

SEARCHERS = ("random", "hypothesis", "seeded")
STEP_COUNT = 20  # stateful_step_count: about the length of the campaign's programs (engine.MAX_LEN ~ 20 ops)


def _result(searcher: str, spec_text: str, seed: int, t0: float, execs: int, finding=None, prog=None,
            target=None, **extra) -> dict:
    out = {"searcher": searcher, "target": spec_text, "seed": seed, "found": finding is not None,
           "inside_s": round(time.monotonic() - t0, 4), "execs": execs, "kind": None, "crash": None}
    if finding is not None:
        tracer = Executor(target, trace=True)  # what the campaign writes to its crash file, same format
        again = tracer.run(prog)
        out["kind"] = finding.kind
        out["crash"] = program_text(prog, parse_target(spec_text).text(), again or finding, tracer.trace)
        out["replayed"] = again is not None and again.kind == finding.kind
    out.update(extra)
    return out


def _close(target) -> None:
    """Close the target; a zoo device may fail to (v2-errptr-on-alloc-failure keeps an int as its file)."""
    try:
        target.close()
    except Exception as e:  # noqa: BLE001 - the run's result is what matters here
        print(f"baselines: target.close() raised {type(e).__name__}: {e}", file=sys.stderr)


# ----------------------------------------------------------------------------- random


def run_random(spec_text: str, seed: int, deadline: float, max_ops: int = 24) -> dict:
    """Structured random programs until a finding or ``deadline`` (time.time())."""
    t0 = time.monotonic()
    target = open_target(spec_text)
    executor = Executor(target)
    proto = target.proto
    rng = random.Random(seed)
    setup = time.monotonic() - t0
    execs = 0
    try:
        while time.time() < deadline:
            prog = random_program(proto, rng, max_ops)
            finding = executor.run(prog)
            execs += 1
            if finding is not None:
                return _result("random", spec_text, seed, t0, execs, finding, prog, target, setup_s=round(setup, 4))
        return _result("random", spec_text, seed, t0, execs, setup_s=round(setup, 4))
    finally:
        _close(target)


# ----------------------------------------------------------------------------- seeded (an ablation)


def seed_programs(proto: str) -> list:
    return [prog for _name, prog in shipped_seeds(proto)]


def run_seeded(spec_text: str, seed: int, deadline: float) -> dict:
    """Blind mutation of the seed corpus (no coverage, no corpus growth): each seed once, then a random
    seed with 1-4 op-level mutations (fuzz.mutator.mutate, donors from the seeds).  Not one of the
    three searchers of the benchmark: it tells how much of the campaign's lead comes from its seeds."""
    t0 = time.monotonic()
    target = open_target(spec_text)
    executor = Executor(target)
    seeds = seed_programs(target.proto)
    rng = random.Random(seed)
    setup = time.monotonic() - t0
    execs = 0
    try:
        queue = list(seeds)
        while time.time() < deadline:
            if queue:
                prog = queue.pop(0)
            else:
                prog = rng.choice(seeds)
                for _ in range(rng.randint(1, 4)):
                    prog = mutate(prog, rng, rng.choice(seeds))
            finding = executor.run(prog)
            execs += 1
            if finding is not None:
                return _result("seeded", spec_text, seed, t0, execs, finding, prog, target, setup_s=round(setup, 4))
        return _result("seeded", spec_text, seed, t0, execs, setup_s=round(setup, 4))
    finally:
        _close(target)


# ----------------------------------------------------------------------------- hypothesis


def _pick(*weighted):
    """One of several strategies, chosen with the given integer weights (like random_op's rng.random() < p)."""
    from hypothesis import strategies as st

    total = sum(w for w, _ in weighted)

    def choose(r):
        for w, s in weighted:
            if r < w:
                return s
            r -= w
        raise AssertionError  # pragma: no cover

    return st.integers(0, total - 1).flatmap(choose)


def op_strategies(proto: str) -> dict:
    """op name -> (dict of argument strategies, build(dev, **args) -> (a, b, data)); mirrors random_op."""
    from hypothesis import strategies as st

    u16, u32 = st.integers(0, (1 << 16) - 1), st.integers(0, (1 << 32) - 1)
    if proto == "v2":
        state = _pick((90, st.integers(1, 7)), (10, st.one_of(st.sampled_from((0, 8, 9, 0xFFFFFFFF)), u32)))
    else:
        state = _pick((85, st.integers(0, 7)),
                      (15, st.tuples(st.one_of(st.sampled_from((8, 0x10, 1 << 31)), u32), st.integers(0, 7))
                       .map(lambda t: t[0] | t[1])))
    slot = _pick((30, st.integers(0, 2)), (70, st.just(0)))
    wslot = _pick((30, st.integers(0, 1)), (70, st.just(0)))
    payload = st.sampled_from((1, 4, 16, 24, 64)).flatmap(lambda n: st.binary(min_size=n, max_size=n))
    segment = st.sampled_from(SEGMENTS).flatmap(lambda s: st.integers(1024, 1024 + 4095) if s == 1024 else st.just(s))
    feature_flags = st.tuples(st.sampled_from((1, 2, 9, 3, 6, 0x1234)),
                              st.sampled_from((0x10000, 0x20000, 0x40000, 0x30000, 0x50000, 0, 0x80000)))
    none = ({}, lambda dev: (0, 0, b""))
    table = {
        "reset": none, "get": none, "datasize": none, "save": none,
        "activity": ({"seed": u16}, lambda dev, seed: (0, seed, b"")),
        "fault": ({"nth": st.integers(1, 5), "kind": st.integers(0, len(FAULT_KINDS) - 1)},
                  lambda dev, nth, kind: (nth, kind, b"")),
        # a field change (set/add): anywhere, any width, an edge or any 16-bit value, mostly no checksum
        "mangle": ({"kind": st.sampled_from(MANGLE_KINDS), "arg": u16, "off": st.integers(0, (1 << 15) - 1),
                    "width": st.sampled_from(SIZES),
                    "value": _pick((6, st.sampled_from(EDGE_VALUES)), (4, st.integers(0, (1 << 16) - 1))),
                    "fix": _pick((7, st.just(FIX_KINDS[0])), (3, st.sampled_from(FIX_KINDS))),
                    "at": st.integers(0, 255)},
                   lambda dev, kind, arg, off, width, value, fix, at: (
                       *(mangle_slots(kind, off, width, value, fix, at) if kind in FIELD_MANGLES
                         else mangle_slots(kind, arg)), b"")),
        "transfer": ({"other": _pick((85, st.just(True)), (15, st.just(False))), "seg": segment},
                     lambda dev, other, seg: (1 - dev if other else dev, seg, b"")),
        "set": ({"state": state}, lambda dev, state: (0, state, b"")),
        "read": ({"fd": slot, "n": st.sampled_from(READ_SIZES)}, lambda dev, fd, n: (fd, n, b"")),
        "rdwin": ({"n": st.sampled_from(READ_SIZES)}, lambda dev, n: (0, n, b"")),
        "write": ({"fd": wslot, "data": payload}, lambda dev, fd, data: (fd, 0, data)),
        "wrwin": ({"data": payload}, lambda dev, data: (0, 0, data)),
        "feature": ({"argsz": st.sampled_from((0, 4, 8, 12, 16, 24)), "flags": feature_flags},
                    lambda dev, argsz, flags: (argsz, flags[0] | flags[1], b"")),
        "rd": ({"field": st.integers(0, 4)}, lambda dev, field: (field, 0, b"")),
        "wr": ({"field": st.integers(0, 4),
                "value": _pick((6, st.sampled_from((0, 1, 2, 3, 4, 0x1000))), (1, u32))},
               lambda dev, field, value: (field, value, b"")),
    }
    # Register ops: the same distributions as fuzz.mutator.register_access / REGISTER_VALUES.
    region = _pick((65, st.just(0)), (20, st.just(7)), (15, st.sampled_from((1, 2, 5, 8))))
    offset = _pick((75, st.integers(0, 7)), (15, st.integers(0, 0x3F)), (10, st.integers(0, 0x3FF)))
    size = _pick((70, st.just(0)), (30, st.integers(0, 3)))
    access = st.tuples(region, offset, size).map(lambda t: t[0] << 12 | t[2] << 10 | t[1])
    value = _pick((50, st.sampled_from(REGISTER_VALUES)), (40, st.integers(0, 255)), (10, u32))
    table["reopen"] = none
    table["rdreg"] = ({"access": access}, lambda dev, access: (access, 0, b""))
    table["wrreg"] = ({"access": access, "value": value}, lambda dev, access, value: (access, value, b""))
    # Races: fuzz.mutator.race_op_args's distribution (a pair of RACE_PAIRS either way round, or any).
    calls = st.sampled_from(RACE_CALLS)
    pair = _pick((80, st.sampled_from(RACE_PAIRS[proto]).flatmap(lambda p: st.sampled_from((p, p[::-1])))),
                 (20, st.tuples(calls, calls)))
    race_arg = _pick((50, st.integers(0, 2)), (50, st.integers(1, 7)))
    table["race"] = ({"pair": pair, "xarg": race_arg, "yarg": race_arg, "sched": st.integers(0, RACE_SCHEDS - 1),
                      "data": payload},
                     lambda dev, pair, xarg, yarg, sched, data: (race_slot(pair[0], xarg, pair[1], yarg, sched), 0,
                                                                 data))
    for name in ("drain", "close", "seek", "precopy"):
        table[name] = ({"fd": slot}, lambda dev, fd: (fd, 0, b"")) if proto == "v2" else none
    missing = {spec.name for spec in OPS[proto]} - set(table)
    if missing:  # a new op kind: the machine must learn it (tests check this)
        raise KeyError(f"no Hypothesis strategy for {proto} op(s) {sorted(missing)}")
    return table


class _Stop(BaseException):
    """Ends the Hypothesis run at once (a BaseException: Hypothesis neither catches nor shrinks it)."""


def machine_class(proto: str, check: str, on_program, on_example=None):
    """A RuleBasedStateMachine over ``proto``'s ops; ``on_program(ops_tuple)`` runs a program."""
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    ns: dict = {}
    strategies = op_strategies(proto)
    for code, spec in enumerate(OPS[proto]):
        args, build = strategies[spec.name]

        def make(code=code, build=build, name=spec.name):
            def op_rule(self, dev, **kw):
                a, b, data = build(dev, **kw)
                self.ops.append(normalize(proto, Op(code, dev, a, b, data)))

            op_rule.__name__ = op_rule.__qualname__ = name
            return op_rule

        ns[spec.name] = rule(dev=st.integers(0, 1), **args)(make())

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self.ops = []
        self.checked = 0
        if on_example is not None:
            on_example()

    ns["__init__"] = __init__
    if check == "step":
        def no_finding(self):
            if len(self.ops) != self.checked:
                self.checked = len(self.ops)
                on_program(tuple(self.ops))

        ns["no_finding"] = invariant()(no_finding)
    else:
        def teardown(self):
            if self.ops:
                on_program(tuple(self.ops))

        ns["teardown"] = teardown
    return type(f"Migration{proto.upper()}Machine", (RuleBasedStateMachine,), ns)


def run_hypothesis(spec_text: str, seed: int, deadline: float, check: str = "step",
                   step_count: int = STEP_COUNT) -> dict:
    """The state machine until a finding or ``deadline`` (time.time())."""
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as hseed
    from hypothesis.stateful import run_state_machine_as_test

    t0 = time.monotonic()
    target = open_target(spec_text)
    executor = Executor(target)
    proto = target.proto
    counts = {"execs": 0, "examples": 0}
    stopped: list = []  # the result, kept outside Hypothesis (which may wrap the exception on its way out)

    def on_program(ops: tuple) -> None:
        prog = Program(proto, ops)
        finding = executor.run(prog)
        counts["execs"] += 1
        if finding is not None:
            stopped.append(_result("hypothesis", spec_text, seed, t0, counts["execs"], finding, prog, target,
                                   setup_s=round(setup, 4), check=check, ops=len(ops)))
        elif time.time() >= deadline:
            stopped.append(_result("hypothesis", spec_text, seed, t0, counts["execs"], setup_s=round(setup, 4),
                                   check=check))
        if stopped:
            raise _Stop()

    def on_example() -> None:
        counts["examples"] += 1

    machine = machine_class(proto, check, on_program, on_example)
    conf = settings(max_examples=10**9, stateful_step_count=step_count, deadline=None, database=None,
                    derandomize=False, phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                    print_blob=False)
    setup = time.monotonic() - t0
    run_seed = seed
    try:
        while True:  # max_examples is never reached within a budget; loop anyway, with a fresh seed
            run_state_machine_as_test(hseed(run_seed)(machine), settings=conf)
            run_seed += 1 << 20
    except BaseException:  # noqa: BLE001 - _Stop, or a Hypothesis error raised while it unwinds
        if stopped:  # (an aborted example can look like "inconsistent data generation" to Hypothesis)
            stopped[0]["examples"] = counts["examples"]
            return stopped[0]
        raise
    finally:
        _close(target)


RUNNERS = {"random": run_random, "hypothesis": run_hypothesis, "seeded": run_seeded}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one baseline run of the detection benchmark (a worker)")
    ap.add_argument("searcher", choices=SEARCHERS)
    ap.add_argument("--target", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds from worker start (unless --deadline)")
    ap.add_argument("--deadline", type=float, help="absolute time.time() at which to stop")
    ap.add_argument("--check", choices=("step", "end"), default="step", help="hypothesis: when to run the program")
    args = ap.parse_args(argv)
    deadline = args.deadline if args.deadline is not None else time.time() + args.budget
    if args.searcher == "hypothesis":
        res = run_hypothesis(args.target, args.seed, deadline, check=args.check)
    else:
        res = RUNNERS[args.searcher](args.target, args.seed, deadline)
    print(json.dumps(res), flush=True)
    return 1 if res["found"] else 0


if __name__ == "__main__":
    sys.exit(main())
