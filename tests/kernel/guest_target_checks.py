"""Checks of ``--target mtty`` that run INSIDE the rig guest, against the real driver.

Not collected on the host (the file name does not start with ``test_``):
``test_kernel_campaign.py`` boots the guest and runs
``python -m pytest tests/kernel/guest_target_checks.py`` there, with
``MIGFUZZ_MTTY`` naming two mtty-2 instances.
"""
from __future__ import annotations

import os

import pytest

from fuzz.executor import Executor
from fuzz.program import parse_program
from fuzz.targets import open_target
from harness.kernel.target import KernelTargetSet
from harness.uapi import MigState as S

MTTY_MAGIC = (0x7E9D09898C3E2C4E).to_bytes(8, "little")
STREAM = 96

pytestmark = pytest.mark.skipif(not os.environ.get("MIGFUZZ_MTTY"), reason="runs inside the rig guest")

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


def fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


@pytest.fixture
def target():
    t = open_target("mtty")
    yield t
    t.close()


def test_shape(target: KernelTargetSet):
    assert (target.kind, target.proto, target.flags, len(target.devices)) == ("mtty", "v2", 0x7, 2)
    assert target.canonical_streams and not target.has_digest and not target.validates_stream
    assert target.kmsg is not None, "/dev/kmsg is readable as root in the guest"
    assert target.flight is not None, "the rig's flight recorder is mapped"


@pytest.mark.parametrize("start", [S.RUNNING, S.STOP, S.RUNNING_P2P])
def test_resave_on_the_real_driver(target: KernelTargetSet, start):
    dev = target.devices[1]
    dev.activity(0x33)
    assert dev.set_state(start) == (0, -1)
    before = fds()
    stream = target.resave(1)
    assert stream is not None and len(stream) == STREAM and stream[:8] == MTTY_MAGIC
    assert dev.get_state() == (0, start) and fds() == before
    assert target.resave(1) == stream


@pytest.mark.parametrize("state", [S.STOP_COPY, S.PRE_COPY, S.RESUMING])
def test_no_resave_while_a_session_is_open(target: KernelTargetSet, state):
    dev = target.devices[0]
    err, fd = dev.set_state(state)
    assert not err and fd >= 0
    assert target.resave(0) is None and dev.get_state() == (0, state)


def test_fresh_leaves_no_fd_of_the_previous_program(target: KernelTargetSet):
    before = fds()
    for dev in target.devices:
        assert dev.set_state(S.PRE_COPY)[1] >= 0
    assert len(fds()) == len(before) + 2
    target.fresh()
    assert fds() == before
    assert [d.get_state() for d in target.devices] == [(0, S.RUNNING)] * 2


def test_a_migration_is_judged_by_resaving_the_destination(target: KernelTargetSet):
    ex = Executor(target)
    assert ex.run(parse_program(STOP_COPY_MIGRATION)) is None
    assert target.resaves == 1


def test_seed_programs(target: KernelTargetSet):
    """The seeds against the real driver; any finding is printed (a result, not a failure)."""
    from fuzz.program import seed_programs

    ex = Executor(target)
    for seed_name, seed_prog in seed_programs("v2"):
        finding = ex.run(seed_prog)
        print(f"seed {seed_name}: {finding.kind + ' at step ' + str(finding.step) if finding else 'clean'}")
    assert target.resaves >= 1


def test_a_kernel_log_splat_during_a_program_is_a_finding(target: KernelTargetSet):
    """A splat line in /dev/kmsg while a program runs. Written from user space at KERN_INFO, so
    it neither reaches the console (the host would count it) nor trips panic_on_warn."""
    ex = Executor(target)
    line = "WARNING: migfuzz guest check: a splat logged during the program"
    dev = target.devices[1]

    def set_and_splat(state):
        with open("/dev/kmsg", "w") as log:
            log.write(f"<6>{line}\n")
        return type(dev).set_state(dev, state)

    dev.set_state = set_and_splat
    try:
        finding = ex.run(parse_program(STOP_COPY_MIGRATION))
    finally:
        del dev.set_state
    assert finding is not None and finding.kind == "kernel-splat" and line in finding.observed
    assert ex.run(parse_program(STOP_COPY_MIGRATION)) is None


def test_the_flight_recorder_sees_each_program(target: KernelTargetSet, tmp_path):
    from harness.kernel import flight

    data = bytes([3]) + bytes(20)
    target.current_input = lambda: data
    Executor(target).run(parse_program(STOP_COPY_MIGRATION))
    copy = tmp_path / "flight.bin"
    copy.write_bytes(bytes(target.flight._buf))  # noqa: SLF001 - what the host will read
    assert flight.read_flight(copy).last == data
