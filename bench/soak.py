#!/usr/bin/env python3
"""Soak: a long campaign on the simulator, watched from outside for leaks (RSS, open fds).

Runs ``migfuzz fuzz --runs N --keep-going`` (default one million programs) on each target
and samples the process's resident memory (VmRSS) and its number of open file descriptors
every few seconds from /proc. A leak shows as a trend: the script prints the samples, the
growth between the first and the last quarter of the run, and exits 1 if RSS grew by more
than --rss-slack (MiB) or the fd count by more than --fd-slack.

Usage: python bench/soak.py [--runs 1000000] [--target sim] [--target sim:proto=v1] [--every 10]
Not in CI (a million programs take several minutes per target).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sample(pid: int) -> tuple[float, int] | None:
    """(RSS in MiB, open fds) of a process, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")]
    return (rss[0] / 1024, fds) if rss else None  # a zombie has no VmRSS


def soak(target: str, runs: int, every: float, crashes: Path) -> dict:
    # The corpus is scratch; findings are not: they go to ``crashes`` (a finding on the correct
    # simulator is a false positive to triage, and must outlive the soak).
    with tempfile.TemporaryDirectory(prefix="migfuzz-soak-") as tmp:
        cmd = [sys.executable, "-m", "fuzz.cli", "fuzz", "--target", target, "--runs", str(runs), "--keep-going",
               "--corpus", f"{tmp}/corpus", "--crashes", str(crashes), "--", "-rss_limit_mb=0"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples = []
        while proc.poll() is None:
            time.sleep(every)
            s = sample(proc.pid)
            if s is not None:
                samples.append((round(time.monotonic() - started, 1), *s))
                print(f"  {target:16} t={samples[-1][0]:7.1f}s rss={s[0]:7.1f} MiB fds={s[1]}", flush=True)
        err = proc.stderr.read()
        elapsed = time.monotonic() - started
    done = [ln for ln in err.splitlines() if "done:" in ln]
    for line in err.splitlines():
        if "FINDING" in line:
            print(f"  {target}: {line}", flush=True)
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]

    def avg(rows, i):
        return sum(r[i] for r in rows) / len(rows) if rows else 0.0

    return {"target": target, "exit": proc.returncode, "seconds": round(elapsed, 1), "samples": len(samples),
            "rss_first": round(avg(first, 1), 1), "rss_last": round(avg(last, 1), 1),
            "fds_first": round(avg(first, 2), 1), "fds_last": round(avg(last, 2), 1),
            "summary": done[-1] if done else err[-300:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--target", action="append", help="target spec (repeatable; default sim and sim:proto=v1)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--rss-slack", type=float, default=32.0, help="MiB of RSS growth tolerated")
    ap.add_argument("--fd-slack", type=float, default=2.0, help="open fds of growth tolerated")
    ap.add_argument("--crashes", default=str(ROOT / "crashes" / "soak"), help="where findings are kept")
    args = ap.parse_args()
    worst = 0
    for target in args.target or ["sim", "sim:proto=v1"]:
        r = soak(target, args.runs, args.every, Path(args.crashes))
        grew_rss = r["rss_last"] - r["rss_first"]
        grew_fds = r["fds_last"] - r["fds_first"]
        ok = grew_rss <= args.rss_slack and grew_fds <= args.fd_slack
        worst |= not ok
        print(f"{target}: {args.runs} programs in {r['seconds']} s, exit {r['exit']}; RSS {r['rss_first']} -> "
              f"{r['rss_last']} MiB, open fds {r['fds_first']} -> {r['fds_last']} "
              f"({'flat' if ok else 'GROWING'}); {r['summary']}", flush=True)
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
