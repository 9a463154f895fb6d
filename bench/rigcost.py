#!/usr/bin/env python3
"""Where a program's time goes on a real device: the cost per program, broken down.

Runs the campaign's own input path (``Campaign.test_one_input``: decode, executor, oracles, the
device calls) over the fixed workload of ``bench/throughput.py`` for ``--seconds`` and splits
each program's wall time into:

  between programs   ``fresh()``: the flight recorder's copy of the input, closing the last
                     program's data_fds, VFIO_DEVICE_RESET of both devices, the profile's
                     [[init]] register writes
  device calls       every call of the program's ops into the device (ioctl, read, write,
                     pread, pwrite and their Python wrappers), re-saves included
  kernel log         reading /dev/kmsg for reports after each program
  python             the rest: decoding, the executor, the oracles

Programs with a ``reopen`` are left out: on mtty, SET RESUMING, a reopen and SET STOP oops the
kernel (the NULL dereference in mtty_set_state()), which would end the measurement.

In the rig: ``migfuzz vm run -- python bench/rigcost.py --seconds 30``. On the simulator
(``--target sim``) it runs too, for comparison.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import workload  # noqa: E402

from fuzz.codec import decode  # noqa: E402
from fuzz.engine import Campaign  # noqa: E402
from fuzz.program import OPCODES  # noqa: E402
from fuzz.targets import parse_target  # noqa: E402

spent: Counter = Counter()  # seconds per part
calls: Counter = Counter()  # device calls per method
_depth = [0]  # a device call made inside another timed part is counted once, in the outer one


def timed(part: str, fn, method: str = ""):
    def wrapper(*args, **kwargs):
        if _depth[0]:
            return fn(*args, **kwargs)
        _depth[0] += 1
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - t
            _depth[0] -= 1
            if method:
                calls[method] += 1
    return wrapper


DEVICE_METHODS = ("reset", "activity", "reg_read", "reg_write", "reopen", "close_data_fds", "feature",
                  "get_state", "set_state", "data_size", "read", "write", "seek", "precopy_info", "close",
                  "region_read", "region_write", "digest")


def instrument(camp: Campaign) -> None:
    target = camp.target
    for dev in target.devices:
        for name in DEVICE_METHODS:
            fn = getattr(dev, name, None)
            if fn is not None:
                setattr(dev, name, timed("device calls", fn, name))
    target.fresh = timed("between programs", target.fresh)
    if hasattr(target, "resave"):
        target.resave = timed("device calls", target.resave, "resave")
    executor = camp.executor
    if executor.kernel_reports is not None:
        executor.kernel_reports = timed("kernel log", executor.kernel_reports)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="mtty")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--profile", help="also write a cProfile of the run here (pstats format)")
    args = ap.parse_args()
    camp = Campaign(parse_target(args.target), Path(tempfile.gettempdir()), None, None, True, 0)
    camp.load_target("none")
    reopen = OPCODES[camp.proto]["reopen"]
    programs = [(d, len(decode(d, camp.proto).ops)) for d in workload(camp.proto)]
    inputs = [(d, n) for d, n in programs if all(op.code != reopen for op in decode(d, camp.proto).ops)]
    instrument(camp)
    run = camp.test_one_input
    n, ops = 0, 0
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        for data, length in inputs:
            run(data)
            n += 1
            ops += length
            if time.perf_counter() - t0 >= args.seconds:
                break
    total = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    spent["python"] = total - sum(spent.values())
    per = {part: 1e6 * s / n for part, s in spent.items()}
    out = {"target": args.target, "programs": n, "programs_per_s": round(n / total, 1),
           "ops_per_program": round(ops / n, 1), "us_per_program": round(1e6 * total / n),
           "parts_us": {k: round(v) for k, v in sorted(per.items(), key=lambda kv: -kv[1])},
           "device_calls_per_program": {k: round(v / n, 2) for k, v in calls.most_common()},
           "findings": len(camp.findings)}
    print(f"{args.target}: {n} programs in {total:.1f} s = {n / total:.1f} programs/s, "
          f"{ops / n:.1f} ops/program, {1e6 * total / n:.0f} us/program")
    for part, us in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"  {part:18} {us:8.0f} us/program  {100 * spent[part] / total:5.1f}%")
    print("  device calls per program: " + ", ".join(f"{k} {v / n:.2f}" for k, v in calls.most_common()))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
