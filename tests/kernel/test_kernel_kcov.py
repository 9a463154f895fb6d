"""Kernel coverage (KCOV) as feedback, with the kernel faked (runs anywhere).

What a device call's KCOV trace becomes: the program's PCs and comparisons, one
counter per distinct PC, the VFIO-core/driver split, the campaign's stats line and
charts; and a kernel without KCOV, said once.
"""
from __future__ import annotations

import io
import threading
import zlib

import pytest

import fuzz.engine as engine
from fuzz import htmlreport, vm
from fuzz.targets import parse_target
from harness.kernel import kcov
from harness.kernel.vfio import Watchdog

MTTY_BASE, VFIO_BASE = 0xFFFFFFFFC0200000, 0xFFFFFFFFC0100000
MODULES = (f"mtty 45056 0 - Live {MTTY_BASE:#x}\n"
           f"vfio 65536 2 mdev,vfio_iommu_type1, Live {VFIO_BASE:#x}\n"
           "9p 90000 0 - Live 0xffffffffc0300000\n")
DRIVER_PC, VFIO_PC, OTHER_PC = MTTY_BASE + 0x40, VFIO_BASE + 0x80, 0xFFFFFFFF81234567


class FakeKcov:
    """What the kernel does with a KCOV area, done by the test: `covers(...)` writes a call's trace."""

    def __init__(self, size: int = 256) -> None:
        self.words = memoryview(bytearray(size * 8)).cast("Q")
        self.mode = None
        self.modes: list[int] = []
        self.closed = False

    def enable(self, mode: int) -> None:
        self.mode = mode
        self.modes.append(mode)

    def close(self) -> None:
        self.closed = True

    def covers(self, *items: int) -> None:
        """The kernel's side of a call: append PCs (or 4-word comparison records) after word 0."""
        per = kcov.CMP_RECORD_WORDS if self.mode == kcov.KCOV_TRACE_CMP else 1
        n = self.words[0]
        for i, value in enumerate(items):
            self.words[1 + n * per + i] = value
        self.words[0] = n + len(items) // per


@pytest.fixture
def areas(tmp_path):
    (tmp_path / "modules").write_text(MODULES)
    (tmp_path / "kallsyms").write_text("0000000000000000 A fixed_percpu_data\n")
    return kcov.PcAreas({"mtty"}, modules=str(tmp_path / "modules"), kallsyms=str(tmp_path / "kallsyms"))


def program_data(cmp: bool) -> bytes:
    """Program bytes that KernelCoverage traces in comparison mode (cmp) or PC mode."""
    return next(bytes([i]) for i in range(256) if (zlib.crc32(bytes([i])) % kcov.CMP_EVERY == 0) == cmp)


def test_ioctl_numbers_are_the_kernels():
    # include/uapi/linux/kcov.h: _IOR('c', 1, unsigned long), _IO('c', 100), _IO('c', 101)
    assert (kcov.KCOV_INIT_TRACE, kcov.KCOV_ENABLE, kcov.KCOV_DISABLE) == (0x80086301, 0x6364, 0x6365)
    assert kcov.kcov_cmp_record.sizeof() == 32


def test_pcs_are_split_by_module(areas):
    assert (areas.area(DRIVER_PC), areas.area(VFIO_PC), areas.area(OTHER_PC)) == ("driver", "vfio", "")
    assert areas.area(0xFFFFFFFFC0300010) == ""  # a module that is neither


def test_device_calls_become_one_counter_per_distinct_pc(areas):
    fake = FakeKcov()
    coverage = kcov.KernelCoverage(fake, areas)
    traced: list[int] = []
    coverage.bind(traced.append, 1000, 1 << 8, 5000, 1 << 4)
    watchdog = Watchdog(10, lambda what, seconds: None)
    watchdog.cover(coverage)
    try:
        fake.covers(OTHER_PC)                       # a system call outside any device call: not counted
        coverage.begin_program(program_data(cmp=False))
        with watchdog.guard("set_state"):
            fake.covers(OTHER_PC, VFIO_PC, DRIVER_PC, DRIVER_PC)
        with watchdog.guard("get_state"):
            fake.covers(VFIO_PC)
        coverage.end_program()
        assert sorted(traced) == [1000, 1001, 1002]   # three distinct PCs, three counters, once each
        assert coverage.stats() == {"kernel_pcs": 3, "kernel_pcs_vfio": 1, "kernel_pcs_driver": 1}

        traced.clear()
        coverage.begin_program(program_data(cmp=False))
        with watchdog.guard("get_state"):
            fake.covers(VFIO_PC)
        coverage.end_program()
        assert traced == [coverage.slot[VFIO_PC]]
        assert coverage.stats()["kernel_pcs"] == 3     # seen before: no new PC
    finally:
        watchdog.stop()


def test_calls_on_other_threads_are_not_traced(areas):
    fake = FakeKcov()
    coverage = kcov.KernelCoverage(fake, areas)
    coverage.begin_program(None)

    def call():
        coverage.start()
        fake.covers(DRIVER_PC)
        coverage.stop()

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()
    assert coverage.pcs == set()
    call()
    assert coverage.pcs == {DRIVER_PC}


def test_comparisons_are_traced_for_the_programs_their_bytes_choose(areas):
    fake = FakeKcov()
    coverage = kcov.KernelCoverage(fake, areas)
    traced: list[int] = []
    coverage.bind(traced.append, 0, 1 << 8, 1 << 8, 1 << 4)
    data = program_data(cmp=True)
    coverage.begin_program(data)
    assert fake.mode == kcov.KCOV_TRACE_CMP
    coverage.start()
    fake.covers(1, 0x1234, 0x1234, DRIVER_PC, 1, 0x1234, 0x1235, DRIVER_PC)  # two comparisons at one site
    coverage.stop()
    coverage.end_program()
    assert len(traced) == 2 and all(t >= 1 << 8 for t in traced)  # two operand distances: two features
    assert coverage.stats()["kernel_pcs"] == 0

    coverage.begin_program(program_data(cmp=False))
    assert fake.mode == kcov.KCOV_TRACE_PC
    coverage.begin_program(data)
    assert fake.mode == kcov.KCOV_TRACE_CMP  # the same input, the same mode
    coverage.begin_program(None)
    assert fake.mode == kcov.KCOV_TRACE_PC  # no input (repro, conform): PCs


def test_without_kcov_there_is_no_coverage_and_a_reason(tmp_path):
    coverage, why = kcov.KernelCoverage.open(["uuid"], path=str(tmp_path / "kcov"))
    assert coverage is None and "missing" in why


class KernelLikeTarget:
    """Just what Campaign.enable_kernel_feedback asks of a kernel target."""

    def __init__(self, coverage, why: str) -> None:
        self.coverage = None
        self._found = coverage
        self._why = why

    def enable_kernel_coverage(self) -> str:
        self.coverage = self._found
        return self._why


def campaign(target) -> engine.Campaign:
    camp = engine.Campaign(parse_target("sim"), out=io.StringIO())
    camp.target = target
    return camp


def test_a_campaign_without_kcov_says_so_once_and_runs_on_arcs():
    camp = campaign(KernelLikeTarget(None, "/sys/kernel/debug/kcov missing: this kernel has no KCOV"))
    camp.enable_kernel_feedback()
    said = camp.out.getvalue()
    assert said.count("kernel coverage: off") == 1 and "protocol arcs only" in said
    assert camp.kernel_coverage is None and "kernel_pcs" not in camp.stats()


def test_a_simulator_campaign_says_nothing_about_kernel_coverage():
    camp = campaign(object())
    camp.enable_kernel_feedback()
    assert camp.out.getvalue() == "" and camp.kernel_coverage is None


def test_kernel_pcs_reach_the_stats_line_and_the_vm_summary(areas):
    coverage = kcov.KernelCoverage(FakeKcov(), areas)
    camp = campaign(KernelLikeTarget(coverage, "KCOV on: driver mtty, VFIO core by module"))
    camp.enable_kernel_feedback()
    assert "kernel coverage: KCOV on" in camp.out.getvalue()
    lines = []
    for pcs in ((OTHER_PC,), (OTHER_PC, VFIO_PC, DRIVER_PC)):
        coverage.begin_program(None)
        coverage.pcs.update(pcs)
        coverage.end_program()
        camp.stats_line()
        lines.append(camp.out.getvalue().splitlines()[-1])
    assert "findings 0 kernel PCs 3 (VFIO core 1, driver 1) " in lines[-1]
    stats = vm.parse_output("\n".join(lines))
    assert (stats["kernel_pcs"], stats["kernel_pcs_vfio"], stats["kernel_pcs_driver"]) == (3, 1, 1)
    assert [pcs for _, pcs in stats["kernel_pcs_over_time"]] == [1, 3]
    assert "kernel_pcs" not in vm.parse_output("migfuzz: stats: 5.0s execs 9 (2/s) protocol arcs 3 findings 0")


def test_the_campaign_page_charts_kernel_pcs_when_the_stats_have_them():
    rows = [{"elapsed_s": t, "execs": 100 * t, "arcs": 10, "findings": 0, "kernel_pcs": pcs,
             "kernel_pcs_vfio": pcs // 3, "kernel_pcs_driver": pcs // 4} for t, pcs in ((5, 400), (10, 520))]
    page = htmlreport.campaign_html(rows, [])
    assert "Kernel PCs covered (KCOV)" in page and "the driver" in page and "520 kernel PCs" in page
    plain = htmlreport.campaign_html([{k: v for k, v in r.items() if not k.startswith("kernel")} for r in rows], [])
    assert "Kernel PCs" not in plain and "kernel PCs" not in plain


def test_forgotten_comparisons_get_the_same_counters_again(areas, monkeypatch):
    """The memo of comparison counters is bounded; past the bound it starts over, and a comparison
    lands on the counter it had before."""
    def run(memo: int) -> list[int]:
        monkeypatch.setattr(kcov, "CMP_MEMO", memo)
        fake = FakeKcov()
        coverage = kcov.KernelCoverage(fake, areas)
        traced: list[int] = []
        coverage.bind(traced.append, 0, 1 << 8, 1 << 8, 1 << 6)
        for args in ((1, 2), (7, 7), (1, 2)):
            coverage.begin_program(program_data(cmp=True))
            coverage.start()
            fake.covers(1, *args, DRIVER_PC, 1, 0xFF, 0, VFIO_PC)
            coverage.stop()
            coverage.end_program()
        return traced

    assert run(1) == run(1 << 18)
