"""The real-device fuzzing target's logic, on fake and simulated devices (runs anywhere, no VFIO).

Spec handling (sysfs group lookup, two devices required, one-line reasons),
``resave`` (only from STOP/RUNNING/RUNNING_P2P, back to the original state,
nothing left open), ``fresh``, the hang hook (target default and the engine's
``Campaign.on_hang``) and kernel splats as ``kernel-splat`` findings.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fuzz.executor import Executor
from fuzz.program import parse_program
from fuzz.targets import TargetError, TargetUnavailable, open_target, parse_target
from harness.kernel import target as kt
from harness.kernel.kmsg import kernel_reports
from harness.kernel.target import KernelTargetSet, iommu_group, is_mtty, kernel_targets
from harness.kernel.vfio import KernelTarget
from harness.sim.v2 import V2SimDevice
from harness.uapi import MigState as S

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- devices


class SimAsKernel:
    """A simulator device with the extras a KernelDevice has (name, protocol, close_data_fds)."""

    def __init__(self, dev, name: str):
        self._dev = dev
        self.name = name
        self.protocol = 2
        self.region_size = 0
        self.resets = 0

    def __getattr__(self, attr):
        return getattr(self._dev, attr)

    def reset(self) -> int:
        self.resets += 1
        return self._dev.reset()

    def close_data_fds(self) -> None:
        for fd in list(self._dev.fds):
            self._dev.close(fd)

    def close_device(self) -> None:
        self.close_data_fds()
        self._dev.close_device()


class CorruptingLoad(V2SimDevice):
    """Loads a stream, then changes a register: the destination ends up unlike its source."""

    def arc_load(self):
        err, f = super().arc_load()
        if not err:
            self.core.regs[0] ^= 1
        return err, f


def sim_target(cls=V2SimDevice, canonical=True, **kw) -> KernelTargetSet:
    devices = [SimAsKernel(cls(seed=1), "src"), SimAsKernel(cls(seed=2), "dst")]
    return KernelTargetSet("kernel", "kernel:test", devices=devices, canonical_streams=canonical, **kw)


class Recorder:
    """Wraps a device and records the SETs and the fds it hands out."""

    def __init__(self, dev):
        self.dev = dev
        self.sets: list[int] = []

    def __getattr__(self, attr):
        return getattr(self.dev, attr)

    def set_state(self, state):
        self.sets.append(state)
        return self.dev.set_state(state)


# ---------------------------------------------------------------------------- spec handling


def fake_sysfs(tmp_path: Path) -> tuple[str, str]:
    """mdev and PCI bus directories with one device each, bound to IOMMU groups 7 and 12."""
    groups = tmp_path / "kernel" / "iommu_groups"
    for g in ("7", "12"):
        (groups / g).mkdir(parents=True)
    mdev = tmp_path / "virtual" / "mtty" / "mtty" / "1111-aaaa"
    mdev.mkdir(parents=True)
    (mdev / "iommu_group").symlink_to(groups / "7")
    pci = tmp_path / "pci0000:00" / "0000:00:03.0"
    pci.mkdir(parents=True)
    (pci / "iommu_group").symlink_to(groups / "12")
    (tmp_path / "pci0000:00" / "0000:00:04.0").mkdir()  # no IOMMU group
    buses = tmp_path / "bus"
    (buses / "mdev").mkdir(parents=True)
    (buses / "pci").mkdir()
    (buses / "mdev" / "1111-aaaa").symlink_to(mdev)
    (buses / "pci" / "0000:00:03.0").symlink_to(pci)
    (buses / "pci" / "0000:00:04.0").symlink_to(tmp_path / "pci0000:00" / "0000:00:04.0")
    return str(buses / "mdev"), str(buses / "pci")


def test_iommu_group_from_sysfs(tmp_path):
    sysfs = fake_sysfs(tmp_path)
    assert iommu_group("1111-aaaa", sysfs) == 7
    assert iommu_group("0000:00:03.0", sysfs) == 12
    with pytest.raises(TargetUnavailable, match="no device 'nope'"):
        iommu_group("nope", sysfs)
    with pytest.raises(TargetUnavailable, match="has no iommu_group"):
        iommu_group("0000:00:04.0", sysfs)


def test_kernel_spec_to_devices(tmp_path):
    sysfs = fake_sysfs(tmp_path)
    assert kernel_targets({"dev": "1111-aaaa", "dev2": "0000:00:03.0"}, sysfs) == [
        KernelTarget("1111-aaaa", 7), KernelTarget("0000:00:03.0", 12)]
    # An explicit group is used as given (no sysfs lookup).
    assert kernel_targets({"dev": "x", "group": "3", "dev2": "y", "group2": "0x10"}, sysfs) == [
        KernelTarget("x", 3), KernelTarget("y", 16)]
    assert kernel_targets({"cdev": "/dev/vfio/devices/vfio4", "cdev2": "vfio5"}, sysfs) == [
        KernelTarget("vfio4", None), KernelTarget("vfio5", None)]
    assert kernel_targets({"dev": "1111-aaaa"}, sysfs) == [KernelTarget("1111-aaaa", 7)]
    with pytest.raises(TargetError, match="same device"):
        kernel_targets({"dev": "1111-aaaa", "dev2": "1111-aaaa"}, sysfs)
    with pytest.raises(TargetError, match="not a number"):
        kernel_targets({"dev": "x", "group": "seven"}, sysfs)
    with pytest.raises(TargetError, match="needs dev2="):
        kernel_targets({"dev": "x", "group": "1", "group2": "2"}, sysfs)
    with pytest.raises(TargetError, match="either cdev="):
        kernel_targets({"cdev": "vfio1", "dev": "x"}, sysfs)
    assert is_mtty("1111-aaaa", sysfs[0]) and not is_mtty("0000:00:03.0", sysfs[1])


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text
    return text


def test_one_device_is_unavailable(tmp_path, monkeypatch):
    """Programs name device 0 and device 1: a single device cannot be fuzzed."""
    monkeypatch.setattr(kt, "SYSFS_BUSES", fake_sysfs(tmp_path))
    with pytest.raises(TargetUnavailable) as e:
        open_target("kernel:dev=x,group=3")
    assert "needs two devices" in one_line(e) and "dev2=" in str(e.value)
    monkeypatch.setenv("MIGFUZZ_MTTY", "aaaa:4")
    with pytest.raises(TargetUnavailable) as e:
        open_target("mtty")
    assert "needs two devices" in one_line(e)


def test_missing_device_or_group_is_unavailable(tmp_path, monkeypatch):
    sysfs = fake_sysfs(tmp_path)
    with pytest.raises(TargetUnavailable) as e:
        kt._spec_targets(parse_target("kernel:dev=1111-aaaa,dev2=missing"))  # noqa: SLF001
    assert "missing" in one_line(e) or "no device" in str(e.value)
    # Named explicitly but no such group (or no VFIO at all on this machine): unavailable, one line.
    with pytest.raises(TargetUnavailable) as e:
        open_target("kernel:dev=1111-aaaa,group=99999,dev2=0000:00:03.0,group2=99998")
    assert "1111-aaaa" in one_line(e)
    with pytest.raises(TargetUnavailable) as e:
        open_target("kernel:cdev=vfio-does-not-exist,cdev2=vfio-nor-this")
    one_line(e)
    del sysfs


def test_mtty_outside_the_rig_is_unavailable(monkeypatch):
    monkeypatch.delenv("MIGFUZZ_MTTY", raising=False)
    with pytest.raises(TargetUnavailable) as e:
        open_target("mtty")
    assert "MIGFUZZ_MTTY" in one_line(e) and "migfuzz vm" in str(e.value)
    monkeypatch.setenv("MIGFUZZ_MTTY", "garbage")
    with pytest.raises(TargetUnavailable):
        open_target("mtty")
    with pytest.raises(TargetError, match="no options"):
        open_target("mtty:dev=x")


def test_cli_maps_unavailable_to_exit_3(monkeypatch, capsys, tmp_path):
    from fuzz.cli import main

    monkeypatch.delenv("MIGFUZZ_MTTY", raising=False)
    assert main(["fuzz", "--target", "mtty", "--i-know-this-resets-the-device", "--runs", "1", "--no-instrument",
                 "--crashes", str(tmp_path / "crashes"), "--corpus", str(tmp_path / "corpus")]) == 3
    err = capsys.readouterr().err
    assert "target unavailable" in err and "MIGFUZZ_MTTY" in err


def test_target_shape_and_mismatched_devices():
    target = sim_target()
    try:
        assert (target.kind, target.proto, target.flags, len(target.devices)) == ("kernel", "v2", 0x7, 2)
        assert not target.has_digest and not target.validates_stream and not target.supports_faults
        target.arm_fault(0, 1, "nomem")
        assert target.fault_fired(0) is False
        target.clear_fault(0)
    finally:
        target.close()
    a, b = SimAsKernel(V2SimDevice(0x7, 1), "a"), SimAsKernel(V2SimDevice(0x3, 2), "b")
    with pytest.raises(TargetUnavailable, match="differ"):
        KernelTargetSet("kernel", "k", devices=[a, b])
    none = SimAsKernel(V2SimDevice(0x7, 1), "n")
    none.protocol = 0
    with pytest.raises(TargetUnavailable, match="no migration support"):
        KernelTargetSet("kernel", "k", devices=[none, a])


# ---------------------------------------------------------------------------- fresh / resave


def test_fresh_closes_the_previous_programs_fds_and_resets():
    target = sim_target()
    try:
        dev = target.devices[0]
        _, fd = dev.set_state(S.STOP_COPY)
        assert fd >= 0 and fd in dev.fds
        target.fresh()
        assert dev.fds == {} and dev.get_state() == (0, S.RUNNING)
        assert [d.resets for d in target.devices] == [1, 1]
    finally:
        target.close()


@pytest.mark.parametrize("start", [S.RUNNING, S.STOP, S.RUNNING_P2P])
def test_resave_returns_the_stream_and_restores_the_state(start):
    target = sim_target()
    try:
        dev = target.devices[1]
        dev.activity(5)
        assert dev.set_state(start) == (0, -1)
        rec = target.devices[1] = Recorder(dev)
        stream = target.resave(1)
        assert stream and dev.get_state() == (0, start)
        assert dev.fds == {}, "the re-save's data_fd was left open"
        # SET STOP (the kernel walks the path), STOP_COPY, STOP, the original state again.
        assert rec.sets == [S.STOP, S.STOP_COPY, S.STOP, start]
        # A second re-save of an unchanged device gives the same bytes.
        assert target.resave(1) == stream
        assert target.resaves == 2
    finally:
        target.close()


@pytest.mark.parametrize("state", [S.STOP_COPY, S.PRE_COPY, S.PRE_COPY_P2P, S.RESUMING])
def test_resave_refuses_while_a_session_is_open(state):
    target = sim_target()
    try:
        dev = target.devices[0]
        err, fd = dev.set_state(state)
        assert not err and fd >= 0
        rec = target.devices[0] = Recorder(dev)
        assert target.resave(0) is None
        assert rec.sets == [] and dev.get_state() == (0, state) and fd in dev.fds
    finally:
        target.close()


def test_resave_is_off_without_canonical_streams_and_on_error_states():
    target = sim_target(canonical=False)
    try:
        assert target.resave(0) is None
    finally:
        target.close()
    target = sim_target()
    try:
        target.devices[0]._dev.enter_error()  # noqa: SLF001
        assert target.resave(0) is None
    finally:
        target.close()


def test_resave_read_failure_gives_none_and_still_restores():
    target = sim_target()
    try:
        dev = target.devices[0]
        dev.read = lambda fd, n: (errno.EIO, b"")
        assert target.resave(0) is None
        assert dev.get_state() == (0, S.RUNNING) and dev.fds == {}
    finally:
        target.close()


STOP_COPY_MIGRATION = """migfuzz-program 1 v2
activity 0 seed=99
set 0 state=STOP
set 0 state=STOP_COPY
drain 0 fd=0
set 0 state=STOP
set 1 state=RESUMING
transfer 0 dst=1 seg=16
set 1 state=RUNNING
get 1
"""


def test_executor_judges_a_load_through_resave():
    """No digest: the executor re-saves the destination after the load and compares streams."""
    prog = parse_program(STOP_COPY_MIGRATION)
    target = sim_target()
    try:
        assert Executor(target).run(prog) is None
        assert target.resaves == 1
    finally:
        target.close()
    target = sim_target(CorruptingLoad)
    try:
        finding = Executor(target).run(prog)
        assert finding is not None and finding.kind == "resume-corrupted", finding
    finally:
        target.close()
    target = sim_target(CorruptingLoad, canonical=False)  # cannot judge: no finding
    try:
        assert Executor(target).run(prog) is None
    finally:
        target.close()


def test_seed_programs_run_clean_on_a_correct_device():
    """The simulator's streams are not canonical (pre-copy sends pages as they change, a
    stop-copy save sends them all), like most real drivers' - so re-saving must be off."""
    from fuzz.program import seed_programs

    seeds = dict(seed_programs("v2"))
    target = sim_target(canonical=False)
    try:
        ex = Executor(target)
        for name, prog in seeds.items():
            assert ex.run(prog) is None, name
    finally:
        target.close()
    target = sim_target(canonical=True)  # what a byte-for-byte comparison would wrongly say
    try:
        finding = Executor(target).run(seeds["qemu-precopy-p2p.txt"])
        assert finding is not None and finding.kind == "resume-corrupted"
    finally:
        target.close()


# ---------------------------------------------------------------------------- kernel splats


class FakeKmsg:
    def __init__(self):
        self.pending: list[str] = []
        self.closed = False

    def new_reports(self):
        out, self.pending = self.pending, []
        return kernel_reports(out)

    def close(self):
        self.closed = True


def test_a_kernel_splat_during_a_program_is_a_finding_for_that_program():
    prog = parse_program(STOP_COPY_MIGRATION)
    target = sim_target()
    kmsg = target.kmsg = FakeKmsg()
    try:
        ex = Executor(target)
        assert ex.run(prog) is None
        line = "WARNING: CPU: 0 PID: 231 at samples/vfio-mdev/mtty.c:1220 mtty_step_state+0x1e/0x2a0 [mtty]"
        original = target.devices[1].set_state

        def splatting_set(state):
            kmsg.pending.append(line)
            return original(state)

        target.devices[1].set_state = splatting_set
        finding = ex.run(prog)
        assert finding is not None and finding.kind == "kernel-splat"
        assert finding.observed == line and line in finding.detail
        assert finding.cause == "WARNING in mtty_step_state|no-frames"  # what its signature groups by
        assert finding.step == len(prog.ops) - 1
        del target.devices[1].set_state
        assert ex.run(prog) is None  # consumed: the next program is judged on its own
    finally:
        target.close()
    assert kmsg.closed


def test_kernel_splat_is_a_finding_kind():
    from fuzz.findings import FINDING_KINDS

    assert "kernel-splat" in FINDING_KINDS


# ---------------------------------------------------------------------------- hangs


class Stuck(SimAsKernel):
    """get_state blocks (under the watchdog's guard) until released."""

    def __init__(self, dev, name, watchdog_of):
        super().__init__(dev, name)
        self.release = threading.Event()
        self._watchdog_of = watchdog_of

    def get_state(self):
        with self._watchdog_of().watchdog.guard("get_state"):
            self.release.wait(10)
        return self._dev.get_state()


def test_a_stuck_call_reaches_the_installed_hang_hook(monkeypatch):
    """The hook is expected not to return (it exits); if it does, the target exits 1 itself."""
    exits = []
    monkeypatch.setattr(kt.os, "_exit", exits.append)
    holder = {}
    devices = [Stuck(V2SimDevice(seed=1), "a", lambda: holder["t"]), SimAsKernel(V2SimDevice(seed=2), "b")]
    target = KernelTargetSet("kernel", "kernel:test", devices=devices, deadline=0.1)
    holder["t"] = target
    hangs = []
    fired = threading.Event()
    target.on_hang = lambda what, seconds: (hangs.append((what, seconds)), fired.set())
    try:
        worker = threading.Thread(target=devices[0].get_state)
        worker.start()
        assert fired.wait(5)
        devices[0].release.set()
        worker.join()
    finally:
        target.close()
    assert hangs and hangs[0][0] == "get_state" and hangs[0][1] >= 0.1
    assert exits == [1]


def test_without_a_hook_a_hang_exits_1_with_a_message():
    script = (
        "import time\n"
        "from harness.kernel.target import KernelTargetSet\n"
        "t = KernelTargetSet('kernel', 'kernel:dev=x', deadline=0.1)\n"
        "with t.watchdog.guard('set_state'):\n"
        "    time.sleep(10)\n"
        "print('not reached')\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "hang: set_state on kernel:dev=x did not return" in proc.stderr
    assert "not reached" not in proc.stdout
    assert time.monotonic() - start < 30


def test_the_engine_writes_a_hang_finding_for_the_current_input(tmp_path, monkeypatch):
    """Campaign.on_hang (installed as target.on_hang): crash file for the current input, exit 1,
    and the stuck device is not touched again (no close, no traced re-run)."""
    import fuzz.engine as engine
    from fuzz.codec import encode

    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(engine.os, "_exit", fake_exit)
    monkeypatch.setattr(engine, "open_target", lambda spec: sim_target())
    camp = engine.Campaign(parse_target("kernel:dev=a,dev2=b"), tmp_path / "crashes", None, None, False, 0,
                           out=open(os.devnull, "w"))
    camp.load_target("none")
    target = camp.target
    assert target.on_hang == camp.on_hang and target.current_input() == b""
    prog = parse_program(STOP_COPY_MIGRATION)
    camp.current = encode(prog)
    assert target.current_input() == camp.current
    camp.executor.step = 2
    closed = []
    target.close = lambda: closed.append(True)
    with pytest.raises(SystemExit):
        target.on_hang("set_state", 10.2)
    assert exits == [1] and closed == []
    texts = list((tmp_path / "crashes").glob("crash-*.txt"))
    assert len(texts) == 1
    report = texts[0].read_text()
    assert "# migfuzz finding: hang" in report and "set_state did not return within 10.2 s" in report
    assert "# step 2: set 0 state=STOP_COPY" in report
    assert (tmp_path / "crashes" / texts[0].stem).read_bytes() == camp.current
    KernelTargetSet.close(target)
