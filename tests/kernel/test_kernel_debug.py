"""The debug kernel's senses in the rig guest: KCOV coverage and KASAN reports as findings.

Skipped unless MIGFUZZ_RIG=1, and unless the debug kernel is already built
(``migfuzz vm prepare --kernel debug``: a build of tens of minutes that these
tests do not start). ``migfuzz vm selfcheck --kernel debug`` is the same check
by hand.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import vm
from fuzz.crashfile import read_meta
from fuzz.findings import signature
from harness.kernel import debugkernel

pytestmark = [
    pytest.mark.rig,
    pytest.mark.skipif(os.environ.get("MIGFUZZ_RIG") != "1", reason="set MIGFUZZ_RIG=1 to boot the rig"),
    pytest.mark.skipif(os.environ.get("MIGFUZZ_RIG") == "1" and debugkernel.load() is None,
                       reason="the debug kernel is not built: run `migfuzz vm prepare --kernel debug` once "
                              "(tens of minutes on 2 cores), then these tests"),
]

ROOT = Path(__file__).resolve().parents[2]
# Room for a second boot: a program that panics the first guest in its first seconds (UBSAN's
# out-of-bounds index in mtty's mdev_access, with panic_on_warn) leaves about 60 s of the 90, and
# --keep-going boots again (panic_on_warn=0) when 30 s would be left (vm.GUEST_OVERHEAD).
CAMPAIGN_SECONDS = 90
LKDTM_TITLE = "BUG: KASAN: slab-out-of-bounds in lkdtm_SLAB_LINEAR_OVERFLOW"


def migfuzz(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def senses(tmp_path_factory):
    results = tmp_path_factory.mktemp("debug-selfcheck")
    proc = migfuzz("vm", "selfcheck", "--kernel", "debug", "--results", str(results), timeout=900)
    print(proc.stdout[-4000:])
    assert (results / vm.SENSES_FILE).exists(), f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, results, json.loads((results / vm.SENSES_FILE).read_text())


def test_the_driver_answers_on_the_debug_kernel_as_on_the_stock_one(senses):
    _, results, _ = senses
    report = json.loads((results / "selfcheck.json").read_text())
    assert report["protocol"] == 2 and report["flags"] == 0x7
    assert report["round_trip"]["src_stream"] == report["round_trip"]["dst_stream"]
    assert report["kmsg_splats"] == []  # no sanitizer report from the self-check's own calls


def test_a_trivial_program_has_kernel_coverage_the_same_in_every_run(senses):
    _, _, found = senses
    kcov = found["kcov"]
    assert kcov["available"], kcov["description"]
    assert min(kcov["pcs"]) > 0 and kcov["same_in_every_run"], kcov
    assert kcov["kernel_pcs_driver"] > 0 and kcov["kernel_pcs_vfio"] > 0  # the split found mtty and vfio


def test_a_deliberate_out_of_bounds_write_is_a_kasan_kernel_splat_finding(senses):
    proc, _, found = senses
    kasan = found["kasan"]
    assert kasan["ok"] and kasan["title"].startswith(LKDTM_TITLE), kasan
    assert kasan["frames"][0] == "lkdtm_SLAB_LINEAR_OVERFLOW"
    crash = Path(kasan["crash_file"])
    finding = read_meta(crash).finding
    assert finding.kind == "kernel-splat" and signature(finding) == kasan["signature"]
    assert signature(finding).startswith(f"kernel-splat|{LKDTM_TITLE}")
    assert "lkdtm_SLAB_LINEAR_OVERFLOW" in finding.cause
    text = crash.with_suffix(".txt").read_text()
    assert "Write of size 4" in text and "Allocated by task" in text  # the whole KASAN report
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_campaign_on_the_debug_kernel_reports_kernel_pcs_over_time(tmp_path, record_property):
    proc = migfuzz("vm", "fuzz", "--kernel", "debug", "--max-time", str(CAMPAIGN_SECONDS), "--keep-going",
                   "--no-confirm", "--crashes", str(tmp_path / "crashes"), "--results", str(tmp_path / "results"),
                   timeout=CAMPAIGN_SECONDS + 900)
    print(proc.stdout[-3000:])
    assert proc.returncode in (0, 1), f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads((tmp_path / "results" / vm.SUMMARY_FILE).read_text())
    output = (tmp_path / "results" / "output.log").read_text()
    assert output.count("kernel coverage: KCOV on") == 1
    assert summary["execs"] > 0 and summary["kernel_pcs"] > 0, output[-3000:]
    series = [pcs for _, pcs in summary["kernel_pcs_over_time"]]
    assert series == sorted(series) and summary["kernel_pcs_driver"] > 0
    for key in ("boot_s", "programs_per_s", "steady_programs_per_s", "kernel_pcs", "kernel_pcs_vfio",
                "kernel_pcs_driver", "findings"):
        record_property(key, summary.get(key))
