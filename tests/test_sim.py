"""The simulator (harness/sim) driven directly through its device API (harness/base.py).

Covers: QEMU-like live migrations for v1 and every v2 flag set (the sequences
of QEMU's hw/vfio/migration.c), resume resegmentation and round-trip fidelity,
strict stream validation and no half-loading, data_fd rules, reset (RUNNING,
files disabled), frozen state while stopped, the forbidden STOP_COPY->PRE_COPY
arc (the vfio_mig_get_next_state() hang fixed by a26b499b757c), determinism,
the v1 region rules (include/uapi/linux/vfio.h, 5.8-5.17) with fault
injection, that every bug-zoo variant is really caught by a hand-written
program that the correct device passes, and that the README's zoo table
lists exactly the zoo.
"""
from __future__ import annotations

import errno
import re
import zlib
from pathlib import Path

import pytest

from fuzz import model
from fuzz.executor import Executor
from fuzz.program import parse_program
from harness.sim import BUGS, SimTarget, stream, uart
from harness.sim.bugs import device_class
from harness.sim.core import NPAGES
from harness.sim.v1 import REGION_SIZE, V1SimDevice
from harness.sim.v2 import V2SimDevice
from harness.uapi import FEATURE_GET, FEATURE_PROBE, FEATURE_SET, V1_FIELDS, packer, vfio_device_feature_mig_state

ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P = range(8)
SC, P2P, PRE = 1, 2, 4
FLAG_SETS = (0x1, 0x3, 0x5, 0x7)
SUPPORTED = {0x1: (1, 2, 3, 4), 0x3: (1, 2, 3, 4, 5), 0x5: (1, 2, 3, 4, 6), 0x7: (1, 2, 3, 4, 5, 6, 7)}
EINVAL, EBADF, ENODEV, ESPIPE, ENOTTY, ENOMSG = (errno.EINVAL, errno.EBADF, errno.ENODEV, errno.ESPIPE,
                                                  errno.ENOTTY, errno.ENOMSG)

# =============================================================================
# v2 helpers
# =============================================================================


def ok_set(dev, state, want_fd: bool | None = None) -> int:
    err, fd = dev.set_state(state)
    assert err == 0, f"SET {state} from {dev.state}: {errno.errorcode.get(err, err)}"
    assert dev.get_state() == (0, state)
    if want_fd is True:
        assert fd >= 0
    elif want_fd is False:
        assert fd == -1
    return fd


def read_until_end(dev, fd, n=4096) -> bytes:
    """STOP_COPY: read until read() returns 0 bytes."""
    out = bytearray()
    for _ in range(10_000):
        err, data = dev.read(fd, n)
        assert err == 0, errno.errorcode.get(err, err)
        assert len(data) <= n
        if not data:
            return bytes(out)
        out += data
    raise AssertionError("stream never ends")


def read_precopy(dev, fd, n=4096) -> bytes:
    """PRE_COPY: read until the temporary end of stream (ENOMSG or 0 bytes)."""
    out = bytearray()
    for _ in range(10_000):
        err, data = dev.read(fd, n)
        if err == ENOMSG or (not err and not data):
            return bytes(out)
        assert err == 0, errno.errorcode.get(err, err)
        assert len(data) <= n
        out += data
    raise AssertionError("pre-copy never reaches a temporary end")


def write_all(dev, fd, data: bytes, seg: int | None) -> None:
    pieces = [data] if not seg else [data[i:i + seg] for i in range(0, len(data), seg)]
    for piece in pieces:
        assert dev.write(fd, piece) == (0, len(piece))


def v2_save(flags: int, src, activity=(11, 222, 3333)) -> bytes:
    """The source side of a QEMU v2 migration (vfio_save_setup() to vfio_save_cleanup() in
    hw/vfio/migration.c); returns the stream."""
    captured = bytearray()
    fd = None
    assert src.data_size() == (0, stream.FULL_SIZE)
    if flags & PRE:
        fd = ok_set(src, PRE_COPY, want_fd=True)
        err, initial, dirty = src.precopy_info(fd)
        assert err == 0 and initial > 0 and dirty == 0
        captured += read_precopy(src, fd, 50)
        assert src.precopy_info(fd) == (0, 0, 0)
        for seed in activity:
            src.activity(seed)
        err, initial, dirty = src.precopy_info(fd)
        assert err == 0 and initial == 0 and dirty > 0
        more = read_precopy(src, fd, 7)
        assert len(more) >= dirty
        captured += more
        src.activity(44444)  # dirtied again: sent at STOP_COPY
    else:
        for seed in activity:
            src.activity(seed)
    if flags & P2P:
        ok_set(src, PRE_COPY_P2P if flags & PRE else RUNNING_P2P, want_fd=False)
        src.activity(5)  # P2P states still run
    nfd = ok_set(src, STOP_COPY)
    if fd is None:
        assert nfd >= 0
        fd = nfd
    else:
        assert nfd == -1, "moves inside the saving group keep the fd"
    frozen = src.digest()
    captured += read_until_end(src, fd, 33)
    assert src.read(fd, 64) == (0, b""), "end of stream keeps returning 0"
    ok_set(src, STOP, want_fd=False)
    assert src.digest() == frozen
    assert src.read(fd, 64)[0] == ENODEV
    assert src.close(fd) == 0
    return bytes(captured)


def v2_resume(flags: int, dst, data: bytes, seg: int | None = None) -> None:
    fd = ok_set(dst, RESUMING, want_fd=True)
    write_all(dst, fd, data, seg)
    if flags & P2P:
        ok_set(dst, RUNNING_P2P, want_fd=False)  # RESUMING -> STOP (load) -> RUNNING_P2P
    ok_set(dst, RUNNING, want_fd=False)
    assert dst.write(fd, b"x")[0] == ENODEV
    assert dst.close(fd) == 0


# =============================================================================
# v2: live migration, resegmentation
# =============================================================================


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_v2_live_migration(flags):
    src, dst = V2SimDevice(flags, 1), V2SimDevice(flags, 2)
    assert src.digest() != dst.digest()
    data = v2_save(flags, src)
    assert dst.digest() != src.digest()
    v2_resume(flags, dst, data)
    assert dst.digest() == src.digest()
    assert dst.live_files() == 0 and src.live_files() == 0
    # the destination runs afterwards
    before = dst.digest()
    dst.activity(77)
    assert dst.digest() != before


@pytest.mark.parametrize("flags", FLAG_SETS)
@pytest.mark.parametrize("seg", [1, 7, None])
def test_v2_resume_resegmented(flags, seg):
    src = V2SimDevice(flags, 10)
    data = v2_save(flags, src)
    dst = V2SimDevice(flags, 20)
    v2_resume(flags, dst, data, seg)
    assert dst.digest() == src.digest()


def test_v2_resume_random_splits():
    import random

    src = V2SimDevice(0x7, 3)
    data = v2_save(0x7, src)
    rng = random.Random(1)
    for _ in range(20):
        dst = V2SimDevice(0x7, 4)
        fd = ok_set(dst, RESUMING, want_fd=True)
        i = 0
        while i < len(data):
            n = rng.randint(1, 40)
            assert dst.write(fd, data[i:i + n]) == (0, len(data[i:i + n]))
            i += n
        ok_set(dst, STOP)
        assert dst.digest() == src.digest()


def test_v2_round_trip_fidelity():
    # a device restored from S and saved again with no activity sends an equivalent stream
    src = V2SimDevice(0x1, 5)
    ok_set(src, STOP)
    fd = ok_set(src, STOP_COPY, want_fd=True)
    s1 = read_until_end(src, fd)
    dst = V2SimDevice(0x1, 6)
    rfd = ok_set(dst, RESUMING, want_fd=True)
    write_all(dst, rfd, s1, None)
    ok_set(dst, STOP)
    fd2 = ok_set(dst, STOP_COPY, want_fd=True)
    assert read_until_end(dst, fd2) == s1


def test_v2_stop_copy_stream_is_the_documented_format():
    dev = V2SimDevice(0x1, 9)
    ok_set(dev, STOP)
    fd = ok_set(dev, STOP_COPY, want_fd=True)
    data = read_until_end(dev, fd)
    assert len(data) == stream.FULL_SIZE == 12 + 8 * (3 + 2 + 16) + (3 + 16) + (3 + 30) + (3 + 9)
    assert data == stream.full_stream(dev.core.regs, dev.core.mem, dev.core.uart.state())
    parsed = stream.Stream.parse(data)
    assert parsed.header.version == stream.VERSION and parsed.header.npages == NPAGES
    tags = [r.head.tag for r in parsed.records]
    assert tags == [stream.TAG_PAGE] * NPAGES + [stream.TAG_REGS, stream.TAG_UART, stream.TAG_END]
    end = stream.EndBody.parse(parsed.records[-1].body)
    assert end.length == len(data) - stream.END_RECORD_SIZE
    assert end.checksum == zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "little")  # CRC-32 of all before it
    assert 0xFF not in data[-4:] and end.salt == min(  # the first salt that leaves no 0xff byte in it
        s for s in range(255) if 0xFF not in zlib.crc32(data[:-5] + bytes((s,))).to_bytes(4, "little"))
    regs, mem, uart_state = stream.load(data)
    assert regs == dev.core.regs and bytes(mem) == bytes(dev.core.mem) and uart_state == dev.core.uart.state()


def test_stream_packers_match_construct():
    assert packer(stream.StreamHeader).pack(b"MGFZ", 1, 0, 8, 16) == stream.StreamHeader.build(
        {"version": 1, "flags": 0, "npages": 8, "page_size": 16})
    assert packer(stream.RegsBody).pack(1, 2, 3, 4) == stream.RegsBody.build({"regs": [1, 2, 3, 4]})
    assert packer(stream.EndBody).pack(7, 1, 0x12345678) == stream.EndBody.build(
        {"length": 7, "salt": 1, "checksum": 0x12345678}) == bytes.fromhex("07000000" "01" "78563412")


# =============================================================================
# v2: the stream refuses every damage and never half-loads
# =============================================================================


def _valid_streams():
    a = V2SimDevice(0x1, 31)
    ok_set(a, STOP)
    fd = ok_set(a, STOP_COPY, want_fd=True)
    stopcopy = read_until_end(a, fd)
    b = V2SimDevice(0x5, 32)
    precopy = v2_save(0x5, b)
    assert len(precopy) > stream.FULL_SIZE  # pages re-sent
    return stopcopy, precopy


def _damaged(data: bytes):
    n = len(data)
    for cut in range(n):
        yield f"truncate {cut}", data[:cut]
    for extra in (b"\0", b"\x03", bytes(15), bytes(range(16)), data[-15:], data):
        yield f"extend {len(extra)}", data + extra
    for i in range(n):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            yield f"flip {i}.{bit}", bytes(flipped)
    chunks = [data[i:i + 16] for i in range(0, n, 16)]
    for k in range(len(chunks)):
        yield f"drop {k}", b"".join(chunks[:k] + chunks[k + 1:])
        yield f"dup {k}", b"".join(chunks[:k + 1] + chunks[k:])
        if k + 1 < len(chunks) and chunks[k] != chunks[k + 1]:
            yield f"swap {k}", b"".join(chunks[:k] + [chunks[k + 1], chunks[k]] + chunks[k + 2:])


def test_stream_load_refuses_every_damage():
    for data in _valid_streams():
        stream.load(data)  # the original is fine
        count = 0
        for what, bad in _damaged(data):
            if bad == data:
                continue
            with pytest.raises(stream.StreamError):
                stream.load(bad)
                pytest.fail(what)
            count += 1
        assert count > 8 * len(data)


def test_device_never_half_loads():
    stopcopy, _ = _valid_streams()
    dev = V2SimDevice(0x7, 40)
    dev.activity(1)
    before = dev.digest()
    for what, bad in _damaged(stopcopy):
        if bad == stopcopy:
            continue
        assert dev.reset() == 0
        fd = ok_set(dev, RESUMING, want_fd=True)
        if bad:
            assert dev.write(fd, bad) == (0, len(bad))
        err, nfd = dev.set_state(STOP)
        assert err != 0 and nfd == -1, what
        assert dev.get_state() == (0, RESUMING), what
        assert dev.digest() == before, what
        # a failed load at RESUMING->STOP inside a longer path stops there too
        assert dev.set_state(RUNNING)[0] != 0
        assert dev.get_state() == (0, RESUMING)
        assert dev.digest() == before, what
    # only a reset leaves the failed session; then a good stream loads
    assert dev.reset() == 0 and dev.get_state() == (0, RUNNING)
    fd = ok_set(dev, RESUMING, want_fd=True)
    write_all(dev, fd, stopcopy, 5)
    ok_set(dev, STOP)
    assert dev.digest() != before


# =============================================================================
# v2: data_fd rules (include/uapi/linux/vfio.h)
# =============================================================================


def test_v2_fd_direction_and_seek():
    dev = V2SimDevice(0x7, 1)
    sfd = ok_set(dev, PRE_COPY, want_fd=True)
    assert dev.write(sfd, b"abc")[0] == EBADF
    assert dev.seek(sfd) == ESPIPE
    err, initial, dirty = dev.precopy_info(sfd)
    assert err == 0
    dev2 = V2SimDevice(0x7, 2)
    rfd = ok_set(dev2, RESUMING, want_fd=True)
    assert dev2.read(rfd, 16)[0] == EBADF
    assert dev2.seek(rfd) == ESPIPE
    assert dev2.precopy_info(rfd)[0] == ENOTTY
    # unknown fds
    assert dev.read(999, 1)[0] == EBADF
    assert dev.write(999, b"x")[0] == EBADF
    assert dev.close(999) == EBADF
    assert dev.precopy_info(999)[0] == EBADF


def test_v2_precopy_info_only_in_precopy_states():
    dev = V2SimDevice(0x7, 1)
    fd = ok_set(dev, PRE_COPY, want_fd=True)
    assert dev.precopy_info(fd)[0] == 0
    ok_set(dev, PRE_COPY_P2P, want_fd=False)
    assert dev.precopy_info(fd)[0] == 0
    ok_set(dev, STOP_COPY, want_fd=False)
    assert dev.precopy_info(fd)[0] == EINVAL
    assert dev.read(fd, 16)[0] == 0  # the fd itself is still live
    ok_set(dev, STOP)
    assert dev.precopy_info(fd)[0] in (EINVAL, ENODEV)
    # STOP -> STOP_COPY: a saving fd that never was in pre-copy
    fd2 = ok_set(dev, STOP_COPY, want_fd=True)
    assert dev.precopy_info(fd2)[0] == EINVAL


def test_v2_precopy_info_initial_shrinks():
    dev = V2SimDevice(0x5, 1)
    fd = ok_set(dev, PRE_COPY, want_fd=True)
    last = None
    for _ in range(1000):
        err, initial, dirty = dev.precopy_info(fd)
        assert err == 0
        if last is not None:
            assert initial <= last
        last = initial
        err, data = dev.read(fd, 20)
        if err == ENOMSG:
            break
        assert err == 0 and data
        assert len(data) <= initial + dirty  # readable bytes are announced (struct vfio_precopy_info)
    else:
        pytest.fail("pre-copy never reaches a temporary end")
    assert last == 0


def test_v2_read_enomsg_only_in_precopy():
    dev = V2SimDevice(0x7, 1)
    fd = ok_set(dev, PRE_COPY, want_fd=True)
    read_precopy(dev, fd)
    assert dev.read(fd, 16)[0] == ENOMSG  # temporary end, session lives on
    dev.activity(3)
    err, data = dev.read(fd, 4096)
    assert err == 0 and data
    ok_set(dev, STOP_COPY, want_fd=False)
    rest = read_until_end(dev, fd)
    assert rest
    for _ in range(3):
        assert dev.read(fd, 16) == (0, b"")  # never ENOMSG in STOP_COPY


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_v2_fd_dead_after_session_end(flags):
    dev = V2SimDevice(flags, 1)
    # STOP_COPY -> STOP
    ok_set(dev, STOP)
    fd = ok_set(dev, STOP_COPY, want_fd=True)
    ok_set(dev, STOP, want_fd=False)
    assert dev.read(fd, 16)[0] == ENODEV
    assert dev.write(fd, b"x")[0] in (EBADF, ENODEV)
    assert dev.close(fd) == 0
    ends = []
    if flags & PRE:
        ends.append((RUNNING, PRE_COPY, RUNNING))
    if flags & PRE and flags & P2P:
        ends.append((RUNNING_P2P, PRE_COPY_P2P, RUNNING_P2P))
    for start, into, out in ends:
        ok_set(dev, start)
        fd = ok_set(dev, into, want_fd=True)
        assert dev.read(fd, 8)[0] == 0
        ok_set(dev, out, want_fd=False)
        assert dev.read(fd, 8)[0] == ENODEV
        assert dev.precopy_info(fd)[0] in (EINVAL, ENODEV)
    # RESUMING -> STOP (successful load) ends the resume session
    src = V2SimDevice(flags, 2)
    ok_set(src, STOP)
    sfd = ok_set(src, STOP_COPY, want_fd=True)
    data = read_until_end(src, sfd)
    ok_set(dev, STOP)
    rfd = ok_set(dev, RESUMING, want_fd=True)
    write_all(dev, rfd, data, None)
    ok_set(dev, STOP)
    assert dev.write(rfd, b"x")[0] == ENODEV
    assert dev.live_files() == 0


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_v2_fd_dead_after_reset(flags):
    dev = V2SimDevice(flags, 1)
    ok_set(dev, STOP)
    sfd = ok_set(dev, STOP_COPY, want_fd=True)
    assert dev.reset() == 0
    assert dev.get_state() == (0, RUNNING)
    assert dev.read(sfd, 16)[0] == ENODEV
    assert dev.live_files() == 0
    rfd = ok_set(dev, RESUMING, want_fd=True)
    assert dev.write(rfd, b"abc") == (0, 3)
    assert dev.reset() == 0
    assert dev.write(rfd, b"abc")[0] == ENODEV
    assert dev.close(rfd) == 0 and dev.close(sfd) == 0
    assert dev.live_files() == 0


def test_v2_close_does_not_change_state():
    dev = V2SimDevice(0x7, 1)
    fd = ok_set(dev, PRE_COPY, want_fd=True)
    assert dev.close(fd) == 0
    assert dev.get_state() == (0, PRE_COPY)
    assert dev.close(fd) == EBADF
    ok_set(dev, RUNNING)


# =============================================================================
# v2: reset, frozen state, the forbidden arc, the FSM, faults
# =============================================================================


def _reach(dev, state):
    if state != RUNNING:
        dev.set_state(state)
    assert dev.get_state() == (0, state)


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_v2_every_transition_follows_the_model(flags):
    """SET from every supported state to every value: result, fd and state as fuzz.model says."""
    for cur in SUPPORTED[flags]:
        for new in list(range(8)) + [8, 0xFFFFFFFF]:
            dev = V2SimDevice(flags, 1)
            _reach(dev, cur)
            err, fd = dev.set_state(new)
            hops = model.path(flags, cur, new)
            if hops is None:
                assert (err, fd) == (EINVAL, -1), (cur, new)
                assert dev.get_state() == (0, cur)
            elif cur == RESUMING and new != RESUMING:
                assert err == EINVAL and dev.get_state() == (0, RESUMING)  # nothing written: load fails
            else:
                assert err == 0, (cur, new)
                assert dev.get_state() == (0, new)
                assert (fd >= 0) == model.opens_fd(flags, cur, new), (cur, new)


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_v2_reset_returns_to_running_from_every_state(flags):
    for state in SUPPORTED[flags] + (ERROR,):
        dev = V2SimDevice(flags, 1)
        if state == ERROR:
            dev.counter.arm(1, "hwerror")
            assert dev.set_state(STOP)[0] == errno.EIO
        else:
            _reach(dev, state)
        assert dev.get_state() == (0, state)
        assert dev.reset() == 0
        assert dev.get_state() == (0, RUNNING)
        assert dev.live_files() == 0
        before = dev.digest()
        dev.activity(12)
        assert dev.digest() != before, "the device runs after reset"


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_v2_frozen_while_stopped(flags):
    dev = V2SimDevice(flags, 1)
    stopped = []
    ok_set(dev, STOP)
    stopped.append(dev.digest())
    for seed in range(50):
        dev.activity(seed)
    assert dev.digest() == stopped[0]
    fd = ok_set(dev, STOP_COPY, want_fd=True)
    for seed in range(50):
        dev.activity(seed)
    read_until_end(dev, fd)
    assert dev.digest() == stopped[0]
    ok_set(dev, STOP)
    rfd = ok_set(dev, RESUMING, want_fd=True)
    for seed in range(50):
        dev.activity(seed)
        dev.write(rfd, bytes([seed]))
    assert dev.digest() == stopped[0]
    # and ERROR is stopped too
    dev.reset()
    dev.counter.arm(1, "hwerror")
    dev.set_state(STOP)
    assert dev.get_state() == (0, ERROR)
    frozen = dev.digest()
    for seed in range(50):
        dev.activity(seed)
    assert dev.digest() == frozen
    # sanity: the same activity changes a running device, in every running state
    for state in (RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P):
        if state in SUPPORTED[flags]:
            dev.reset()
            _reach(dev, state)
            before = dev.digest()
            dev.activity(1)
            assert dev.digest() != before, state


@pytest.mark.parametrize("flags", (0x5, 0x7))
def test_v2_stop_copy_to_precopy_refused_without_hang(flags):
    dev = V2SimDevice(flags, 1)
    fd = ok_set(dev, PRE_COPY, want_fd=True)
    ok_set(dev, STOP_COPY, want_fd=False)
    targets = (PRE_COPY, PRE_COPY_P2P) if flags & P2P else (PRE_COPY,)
    for new in targets:
        assert dev.set_state(new) == (EINVAL, -1)  # returns (no DeviceHang)
        assert dev.get_state() == (0, STOP_COPY)
    assert read_until_end(dev, fd)  # the session is untouched
    if not flags & P2P:
        assert dev.set_state(PRE_COPY_P2P) == (EINVAL, -1)


@pytest.mark.parametrize("flags", (0x1, 0x3))
def test_v2_precopy_states_unsupported(flags):
    dev = V2SimDevice(flags, 1)
    for new in (PRE_COPY, PRE_COPY_P2P):
        assert dev.set_state(new) == (EINVAL, -1)
        assert dev.get_state() == (0, RUNNING)


def test_v2_error_not_requestable_and_sticky():
    dev = V2SimDevice(0x7, 1)
    assert dev.set_state(ERROR) == (EINVAL, -1)
    assert dev.get_state() == (0, RUNNING)
    dev.counter.arm(1, "hwerror")
    assert dev.set_state(STOP) == (errno.EIO, -1)
    assert dev.get_state() == (0, ERROR)
    for new in range(1, 8):
        assert dev.set_state(new)[0] == EINVAL
        assert dev.get_state() == (0, ERROR)
    assert dev.reset() == 0 and dev.get_state() == (0, RUNNING)


def test_v2_fault_mid_path_leaves_a_state_on_the_path():
    flags = 0x7
    path = model.path(flags, RUNNING, RESUMING)
    assert path == (RUNNING_P2P, STOP, RESUMING)
    reached = []
    for nth in range(1, 6):
        dev = V2SimDevice(flags, 1)
        dev.counter.arm(nth, "nomem")
        err, fd = dev.set_state(RESUMING)
        state = dev.get_state()[1]
        if err:
            assert err == errno.ENOMEM and fd == -1
            assert state in model.allowed_after_failure(flags, RUNNING, RESUMING)
            assert state != ERROR
            assert dev.live_files() == 0
        else:
            assert state == RESUMING and fd >= 0
        reached.append((err, state))
    # hop 1, hop 2, hop 3 and the file allocation each fail in turn; the 5th step is never reached
    assert reached == [(errno.ENOMEM, RUNNING), (errno.ENOMEM, RUNNING_P2P), (errno.ENOMEM, STOP),
                       (errno.ENOMEM, STOP), (0, RESUMING)]


def test_v2_feature_framing():
    dev = V2SimDevice(0x5, 1)
    state_payload = packer(vfio_device_feature_mig_state)
    for flags_word in (FEATURE_GET | 1, FEATURE_GET | 2, FEATURE_SET | 2, FEATURE_GET | 9, FEATURE_SET | 1,
                       FEATURE_GET | FEATURE_SET | 2, FEATURE_PROBE | 1, FEATURE_PROBE | FEATURE_SET | 1,
                       FEATURE_GET | (1 << 19) | 2, FEATURE_GET | 0x1234):
        for argsz in (0, 4, 8, 12, 16, 24):
            want = model.feature_errno(flags_word, argsz, 0x5, RUNNING)
            err, out = dev.feature(flags_word, state_payload.pack(RUNNING, -1), argsz)
            if want is None:
                assert err != 0  # the simulator has no other features
            else:
                assert err == want, (hex(flags_word), argsz)
            assert dev.get_state() == (0, RUNNING)
    err, out = dev.feature(FEATURE_GET | 1, bytes(8))
    assert err == 0 and int.from_bytes(out, "little") == 0x5
    err, out = dev.feature(FEATURE_GET | 9, bytes(8))
    assert err == 0 and int.from_bytes(out, "little") == stream.FULL_SIZE
    err, out = dev.feature(FEATURE_SET | 2, state_payload.pack(PRE_COPY, 0))
    state, fd = state_payload.unpack(out)
    assert err == 0 and state == PRE_COPY and fd >= 0
    err, out = dev.feature(FEATURE_GET | 2, bytes(8))
    assert err == 0 and state_payload.unpack(out) == (PRE_COPY, -1)


# =============================================================================
# determinism, SimTarget
# =============================================================================


def test_determinism():
    for flags in FLAG_SETS:
        a, b = V2SimDevice(flags, 99), V2SimDevice(flags, 99)
        assert a.digest() == b.digest()
        assert v2_save(flags, a) == v2_save(flags, b)
        assert a.digest() == b.digest()
    assert V2SimDevice(0x7, 1).digest() != V2SimDevice(0x7, 2).digest()
    assert V1SimDevice(5).digest() == V1SimDevice(5).digest() != V1SimDevice(6).digest()
    a, b = V1SimDevice(7), V1SimDevice(7)
    assert v1_save(a) == v1_save(b) and a.digest() == b.digest()


def test_sim_target_fresh_restores_power_on_state():
    for proto, flags in (("v2", 0x7), ("v1", 0)):
        t = SimTarget(proto, flags)
        assert len(t.devices) == 2
        initial = [d.digest() for d in t.devices]
        assert initial[0] != initial[1]
        for d in t.devices:
            d.activity(3)
            d.counter.arm(1, "hwerror")
            if proto == "v2":
                d.set_state(STOP)
            else:
                d.region_write(0, (2).to_bytes(4, "little"))
        t.fresh()
        assert [d.digest() for d in t.devices] == initial
        for d in t.devices:
            if proto == "v2":
                assert d.get_state() == (0, RUNNING) and d.live_files() == 0
            else:
                assert v1_get(d) == 1
        assert not t.fault_fired(0)
    assert SimTarget("v2", 0x5, "v2-error-requestable").name == "sim:proto=v2,flags=0x5,bug=v2-error-requestable"
    assert SimTarget("v1", 0x7).flags == 0


@pytest.mark.parametrize("bug", [None, *BUGS])
def test_uart_changes_drop_its_packed_state_and_fresh_undoes_them(bug):
    """The UART keeps its packed state until a field changes (uart.Uart.packed) and fresh() skips
    restoring an unchanged one: every register access and load that changes it, a bug variant's
    too, must be seen, and fresh() must bring a changed one back to power-on."""
    proto = BUGS[bug].proto if bug else "v2"
    t = SimTarget(proto, 0x7, bug)
    dev = t.devices[0]
    u = dev.core.uart
    initial, initial_uart = dev.digest(), u.state()

    def from_fields():
        u.packed = None  # packed anew from the fields
        return u.state()

    accesses = [("w", uart.RX, 0x41), ("w", uart.RX, 0x42), ("r", uart.RX), ("w", uart.SCR, 0x33),
                ("w", uart.LCR, uart.LCR_DLAB), ("w", uart.RX, 0x07), ("w", uart.IER, 0x01), ("r", uart.RX),
                ("w", uart.LCR, 0), ("r", uart.RX), ("r", uart.RX), ("w", uart.IIR, uart.FCR_CLEAR)]
    for access in accesses:
        before = u.state()
        if access[0] == "w":
            assert dev.reg_write(uart.UART_REGION, access[1], bytes((access[2],))) == (0, 1)
        else:
            assert dev.reg_read(uart.UART_REGION, access[1], 1)[0] == 0
        now = u.state()
        assert now == from_fields(), access
        assert dev.digest()[-len(now):] == now
        if access[0] == "w" and access[1] != uart.IIR:
            assert now != before, access
    t.fresh()
    assert dev.digest() == initial and from_fields() == initial_uart
    loaded = bytearray(initial_uart)
    loaded[uart.SCR] ^= 0x11
    dev.core.load(list(dev.core.regs), bytes(dev.core.mem), bytes(loaded))
    assert u.state() == from_fields() == loaded
    t.fresh()
    assert dev.digest() == initial and from_fields() == initial_uart


# =============================================================================
# v1 helpers
# =============================================================================

WINDOW_MAX = 0x40


def v1_read(dev, name) -> int:
    off, size = V1_FIELDS[name]
    err, raw = dev.region_read(off, size)
    assert err == 0, (name, err)
    assert len(raw) == size
    return int.from_bytes(raw, "little")


def v1_get(dev) -> int:
    return v1_read(dev, "device_state")


def v1_write(dev, name, value) -> int:
    off, size = V1_FIELDS[name]
    err, n = dev.region_write(off, value.to_bytes(size, "little"))
    assert n == (0 if err else size)
    return err


def v1_set(dev, value) -> int:
    return v1_write(dev, "device_state", value)


def v1_iteration(dev) -> bytes | None:
    """The v1 saving iteration: one chunk, or None when pending_bytes is 0."""
    pending = v1_read(dev, "pending_bytes")
    assert v1_read(dev, "pending_bytes") == pending  # no side effects before staging
    if pending == 0:
        return None
    offset = v1_read(dev, "data_offset")
    size = v1_read(dev, "data_size")
    assert v1_read(dev, "data_offset") == offset and v1_read(dev, "data_size") == size  # stable in an iteration
    assert offset >= 32 and offset + size <= REGION_SIZE
    assert 0 < size <= pending
    err, data = dev.region_read(offset, size)
    assert err == 0 and len(data) == size
    return data


def v1_drain(dev) -> bytes:
    out = bytearray()
    for _ in range(10_000):
        chunk = v1_iteration(dev)
        if chunk is None:
            return bytes(out)
        out += chunk
    raise AssertionError("pending_bytes never reaches 0")


def v1_save(dev, activity=(17, 4242)) -> bytes:
    """QEMU 5.2-7.2 live migration source: 001 -> 011 (iterate, activity) -> 010 (drain) -> 000."""
    assert v1_set(dev, 0b011) == 0
    out = bytearray()
    first = v1_iteration(dev)
    assert first
    out += first
    out += v1_drain(dev)
    for seed in activity:
        dev.activity(seed)
    assert v1_read(dev, "pending_bytes") > 0, "dirty pages are pending while pre-copying"
    out += v1_drain(dev)
    dev.activity(999)
    assert v1_set(dev, 0b010) == 0
    frozen = dev.digest()
    out += v1_drain(dev)
    assert v1_read(dev, "pending_bytes") == 0
    assert v1_set(dev, 0b000) == 0
    assert dev.digest() == frozen
    return bytes(out)


def v1_resume_data(dev, data: bytes, seg: int) -> None:
    """The v1 resuming step: read data_offset, write the chunk, write data_size."""
    for i in range(0, len(data), seg):
        piece = data[i:i + seg]
        offset = v1_read(dev, "data_offset")
        assert dev.region_write(offset, piece) == (0, len(piece))
        assert v1_write(dev, "data_size", len(piece)) == 0


# =============================================================================
# v1: migrations
# =============================================================================


@pytest.mark.parametrize("seg", [1, 7, WINDOW_MAX])
def test_v1_live_migration(seg):
    src, dst = V1SimDevice(1), V1SimDevice(2)
    assert src.digest() != dst.digest()
    data = v1_save(src)
    assert v1_set(dst, 0b100) == 0
    v1_resume_data(dst, data, seg)
    assert v1_set(dst, 0b001) == 0  # one write: RESUMING cleared, RUNNING set
    assert v1_get(dst) == 1
    assert dst.digest() == src.digest()
    before = dst.digest()
    dst.activity(5)
    assert dst.digest() != before


def test_v1_savevm():
    # savevm: 001 -> 010 directly, resume in 7-byte chunks, 100 -> 000 -> 001
    src, dst = V1SimDevice(3), V1SimDevice(4)
    assert v1_set(src, 0b010) == 0
    data = v1_drain(src)
    assert len(data) == stream.FULL_SIZE
    assert v1_set(src, 0b000) == 0
    assert v1_set(dst, 0b100) == 0
    v1_resume_data(dst, data, 7)
    assert v1_set(dst, 0b000) == 0
    assert dst.digest() == src.digest()
    assert v1_set(dst, 0b001) == 0


def test_v1_resume_twice_starts_clean():
    src = V1SimDevice(3)
    assert v1_set(src, 0b010) == 0
    data = v1_drain(src)
    dst = V1SimDevice(4)
    for seg in (WINDOW_MAX, 16):
        assert v1_set(dst, 0b100) == 0
        v1_resume_data(dst, data, seg)
        assert v1_set(dst, 0b000) == 0
        assert dst.digest() == src.digest()
    # an abandoned partial session does not leak into the next one
    assert v1_set(dst, 0b100) == 0
    v1_resume_data(dst, data[:50], 25)
    assert dst.reset() == 0
    assert v1_set(dst, 0b100) == 0
    v1_resume_data(dst, data, 64)
    assert v1_set(dst, 0b001) == 0


# =============================================================================
# v1: device_state writes vs the model
# =============================================================================


def _v1_stream(seed=50) -> bytes:
    src = V1SimDevice(seed)
    assert v1_set(src, 0b010) == 0
    return v1_drain(src)


def test_v1_every_value_from_every_valid_state():
    data = _v1_stream()
    for cur in (0, 1, 2, 3, 4):
        for value in range(8):
            dev = V1SimDevice(60)
            if cur != 1:
                assert v1_set(dev, cur) == 0
            if cur == 4:
                v1_resume_data(dev, data, WINDOW_MAX)  # so clearing RESUMING can load
            err = v1_set(dev, value)
            got = v1_get(dev)
            if model.v1_write_allowed(cur, value):
                assert err == 0, (cur, value)
                assert got == value
            else:
                assert err != 0, (cur, value)
                assert got in model.v1_states_after_failure(cur)
                assert got == cur  # no fault injected: the old state
            # reserved bits: either ignored or refused without damage
            dev2 = V1SimDevice(60)
            if cur != 1:
                assert v1_set(dev2, cur) == 0
            err = v1_set(dev2, value | 0x100)
            got = v1_get(dev2)
            if err == 0:
                assert model.v1_write_allowed(cur, value) and got == value
            else:
                assert got in model.v1_states_after_failure(cur)


def test_v1_error_state_only_reset_recovers():
    dev = V1SimDevice(1)
    dev.counter.arm(1, "hwerror")
    assert v1_set(dev, 0b010) == errno.EIO
    assert v1_get(dev) == 0b110
    frozen = dev.digest()
    for value in list(range(8)) + [0x9, 0xFFFFFFFF]:
        assert v1_set(dev, value) != 0
        assert v1_get(dev) == 0b110
    for seed in range(20):
        dev.activity(seed)
    assert dev.digest() == frozen
    assert dev.live_files() == 0
    assert dev.reset() == 0
    assert v1_get(dev) == 0b001
    dev.activity(1)
    assert dev.digest() != frozen
    # fully usable again
    data = v1_save(dev)
    assert stream.load(data)


def test_v1_failed_write_leaves_old_state():
    dev = V1SimDevice(1)
    dev.counter.arm(1, "nomem")
    assert v1_set(dev, 0b010) == errno.ENOMEM
    assert v1_get(dev) == 0b001
    assert dev.live_files() == 0
    # the saving-buffer allocation (second step) fails: still the old state
    dev.counter.arm(2, "nomem")
    assert v1_set(dev, 0b011) == errno.ENOMEM
    assert v1_get(dev) in model.v1_states_after_failure(1)
    # a damaged stream: clearing RESUMING fails, state stays 100, nothing loaded
    data = bytearray(_v1_stream())
    data[40] ^= 0x10
    dst = V1SimDevice(2)
    assert v1_set(dst, 0b100) == 0
    before = dst.digest()
    v1_resume_data(dst, bytes(data), WINDOW_MAX)
    assert v1_set(dst, 0b001) != 0
    assert v1_get(dst) == 0b100
    assert dst.digest() == before
    # and a hardware error during the load goes to 110b
    dst2 = V1SimDevice(3)
    assert v1_set(dst2, 0b100) == 0
    v1_resume_data(dst2, _v1_stream(), WINDOW_MAX)
    dst2.counter.arm(2, "hwerror")
    assert v1_set(dst2, 0b000) == errno.EIO
    assert v1_get(dst2) == 0b110


def test_v1_frozen_while_stopped():
    dev = V1SimDevice(1)
    for state in (0b000, 0b010, 0b100):
        dev.reset()
        assert v1_set(dev, state) == 0
        frozen = dev.digest()
        for seed in range(30):
            dev.activity(seed)
        assert dev.digest() == frozen, state
    for state in (0b001, 0b011):
        dev.reset()
        assert v1_set(dev, state) == 0
        before = dev.digest()
        dev.activity(1)
        assert dev.digest() != before


def test_v1_region_fields():
    dev = V1SimDevice(1)
    # reserved: reads 0, writes ignored
    assert v1_read(dev, "reserved") == 0
    assert v1_write(dev, "reserved", 0xDEADBEEF) == 0
    assert v1_read(dev, "reserved") == 0
    # pending_bytes and data_offset are read-only
    assert v1_set(dev, 0b011) == 0
    pending = v1_read(dev, "pending_bytes")
    assert pending > 0
    offset = v1_read(dev, "data_offset")
    assert offset != 0 and offset >= 32
    assert v1_write(dev, "pending_bytes", 5) != 0
    assert v1_write(dev, "data_offset", 0x40) != 0
    assert v1_read(dev, "data_offset") == offset
    # data_size is read while saving, written only while resuming
    assert v1_write(dev, "data_size", 4) != 0
    assert v1_get(dev) == 0b011
    # only native width and alignment
    native = set(V1_FIELDS.values())
    for off in range(32):
        for size in (1, 2, 4, 8):
            if (off, size) in native:
                continue
            assert dev.region_read(off, size)[0] != 0, (off, size)
            assert dev.region_write(off, bytes(size))[0] != 0, (off, size)
    assert v1_get(dev) == 0b011


def test_v1_field_access_as_integers_is_the_region_access():
    """field_read/field_write (what the runtime's procedures call) answer as region_read/region_write
    do on the same device: two doors to one header, and a value is cut to the field's width."""
    def both(dev_a, dev_b, op, name, *value):
        off, size = V1_FIELDS[name]
        if op == "read":
            err, raw = dev_a.region_read(off, size)
            return (err, int.from_bytes(raw, "little") if not err else None), dev_b.field_read(off, size)
        cut = value[0] & ((1 << (8 * size)) - 1)
        return dev_a.region_write(off, cut.to_bytes(size, "little"))[0], dev_b.field_write(off, size, value[0])

    by_region, by_field = V1SimDevice(3), V1SimDevice(3)
    steps = [("write", "device_state", 0b011 | 1 << 40), ("read", "pending_bytes"), ("read", "data_offset"),
             ("read", "data_size"), ("read", "pending_bytes"), ("write", "data_size", 4), ("write", "reserved", 7),
             ("read", "reserved"), ("write", "pending_bytes", 1), ("write", "device_state", 0b010),
             ("read", "device_state"), ("write", "device_state", 0b100), ("write", "data_size", 1 << 64 | 8),
             ("read", "data_size"), ("write", "device_state", 0b101), ("read", "device_state")]
    for step in steps:
        a, b = both(by_region, by_field, *step)
        assert a == b, step
    assert by_region.digest() == by_field.digest()
    for off, size in ((0, 8), (2, 2), (8, 4), (40, 8)):
        assert by_field.field_read(off, size) == (errno.EINVAL, None)
        assert by_field.field_write(off, size, 0) == errno.EINVAL


def test_v1_window_rules():
    dev = V1SimDevice(1)
    offset = v1_read(dev, "data_offset")
    # not saving: no window to read; not resuming: no window to write
    assert dev.region_read(offset, 8)[0] != 0
    assert dev.region_write(offset, b"abc")[0] != 0
    assert v1_set(dev, 0b100) == 0
    assert dev.region_write(offset, bytes(WINDOW_MAX + 1))[0] != 0  # beyond the region
    assert v1_write(dev, "data_size", WINDOW_MAX + 1) != 0
    assert v1_read(dev, "pending_bytes") == 0


def test_v1_pending_ack_sequence():
    """The v1 saving sequence: pending_bytes, data_offset, data_size, data, pending_bytes again acknowledges."""
    dev = V1SimDevice(1)
    assert v1_set(dev, 0b010) == 0
    total = v1_read(dev, "pending_bytes")
    assert total == stream.FULL_SIZE
    got = bytearray()
    for _ in range(total + 1):
        chunk = v1_iteration(dev)
        if chunk is None:
            break
        got += chunk
        assert v1_read(dev, "pending_bytes") == total - len(got)  # the ack
    assert len(got) == total
    assert stream.load(bytes(got))


# =============================================================================
# The bug zoo: every variant caught by a hand-written program, the correct device passes it
# =============================================================================

# name -> (flags, program body, finding step)
# where a stop-and-copy stream holds the UART's FIFO tail index (the UART record is the last before the end)
TAIL_AT = stream.FULL_SIZE - stream.END_RECORD_SIZE - uart.STATE_SIZE + uart.NREGS + uart.FIFO_SIZE + 1
BUG_PROGRAMS = {
    "v1-accept-101": (0, "set 0 value=0b101", 0),
    "v1-accept-111": (0, "set 0 value=0b111", 0),
    "v1-error-writable": (0, "set 0 value=0b110", 0),
    "v1-resume-no-wipe": (0, """
        set 0 value=0b010
        drain 0
        set 1 value=0b100
        transfer 0 dst=1 seg=0
        set 1 value=0b000
        set 1 value=0b100
        transfer 0 dst=1 seg=0
        set 1 value=0b001""", 7),
    "v1-deserialize-early": (0, """
        set 0 value=0b010
        drain 0
        set 1 value=0b100
        transfer 0 dst=1 seg=0""", 3),
    "v1-stop-not-frozen": (0, """
        set 0 value=0b000
        activity 0 seed=1""", 1),
    "v1-pending-never-zero": (0, """
        set 0 value=0b010
        drain 0""", 1),
    "v1-data-offset-oob": (0, """
        set 0 value=0b011
        save 0""", 1),
    "v1-failed-write-third-state": (0, "set 0 value=0b101", 0),
    "v2-precopy-arc-hang": (0x7, """
        set 0 state=STOP_COPY
        set 0 state=PRE_COPY""", 1),
    "v2-fd-after-reset": (0x7, """
        set 0 state=STOP_COPY
        reset 0
        read 0 fd=0 n=16""", 2),
    "v2-resume-ignores-fpos": (0x7, """
        set 0 state=STOP_COPY
        drain 0 fd=0
        set 1 state=RESUMING
        transfer 0 dst=1 seg=16
        set 1 state=STOP""", 4),
    "v2-save-field-swap": (0x7, """
        set 0 state=STOP_COPY
        drain 0 fd=0
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 4),
    "v2-precopy-dirty-underreport": (0x7, """
        set 0 state=PRE_COPY
        drain 0 fd=0
        activity 0 seed=5
        read 0 fd=0 n=1
        precopy 0 fd=0
        read 0 fd=0 n=64""", 5),
    "v2-reject-large-state": (0x7, """
        set 0 state=PRE_COPY
        drain 0 fd=0
        activity 0 seed=5
        drain 0 fd=0
        set 0 state=STOP_COPY
        drain 0 fd=0
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 7),
    "v2-reset-not-running": (0x7, "reset 0", 0),
    "v2-failed-arc-wrong-state": (0x7, """
        fault 0 nth=1 kind=nomem
        set 0 state=STOP""", 1),
    "v2-fd-leak-on-error": (0x7, """
        set 0 state=STOP
        fault 0 nth=2 kind=nomem
        set 0 state=STOP_COPY""", 2),
    "v2-p2p-arc-missing": (0x7, "set 0 state=RUNNING_P2P", 0),
    "v2-stream-length-trusted": (0x7, """
        set 0 state=STOP_COPY
        drain 0 fd=0
        mangle 0 kind=extend arg=5
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 5),
    "v2-enomsg-in-stopcopy": (0x7, """
        set 0 state=STOP_COPY
        drain 0 fd=0""", 1),
    "v2-fd-alive-after-session-end": (0x7, """
        set 0 state=STOP_COPY
        set 0 state=STOP
        read 0 fd=0 n=16""", 2),
    "v2-precopy-info-in-stopcopy": (0x7, """
        set 0 state=STOP_COPY
        precopy 0 fd=0""", 1),
    "v2-error-requestable": (0x7, "set 0 state=ERROR", 0),
    "v2-errptr-on-alloc-failure": (0x7, """
        set 0 state=STOP
        fault 0 nth=2 kind=nomem
        set 0 state=STOP_COPY""", 2),
    "v2-resume-no-validate": (0x7, """
        set 0 state=STOP_COPY
        drain 0 fd=0
        mangle 0 kind=flip arg=100
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 5),
    "v1-readonly-field-writable": (0, """
        set 0 value=0b010
        wr 0 field=data_size value=0x5""", 1),
    "v1-pending-grows": (0, """
        set 0 value=0b010
        drain 0""", 1),
    "v2-state-survives-reopen": (0x7, """
        set 0 state=STOP
        reopen 0""", 1),
    "v2-rx-uninitialized": (0x7, "rdreg 0 region=0 off=0x0 size=1", 0),
    "v2-config-oob-read": (0x7, "rdreg 0 region=7 off=0x40 size=8", 0),
    "v2-register-not-migrated": (0x7, """
        wrreg 0 region=0 off=0x7 size=1 value=0x5a
        set 0 state=STOP_COPY
        drain 0 fd=0
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 5),
    "v2-failed-write-counted": (0x7, """
        set 0 state=STOP_COPY
        drain 0 fd=0
        mangle 0 kind=flip arg=8
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 5),
    "v2-empty-session-loads": (0x7, """
        set 1 state=RESUMING
        set 1 state=STOP""", 1),
    "v2-uart-tail-trusted": (0x7, f"""
        set 0 state=STOP_COPY
        drain 0 fd=0
        mangle 0 kind=set off={TAIL_AT} width=1 value=0x30 fix=none
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 5),
    "v2-uart-tail-trusted-crc": (0x7, f"""
        set 0 state=STOP_COPY
        drain 0 fd=0
        mangle 0 kind=set off={TAIL_AT} width=1 value=0x30 fix=crc32 at={stream.CHECKSUM_SIZE}
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP""", 5),
    "v2-fifo-tail-oob-read": (0x7, f"""
        set 0 state=STOP_COPY
        drain 0 fd=0
        mangle 0 kind=set off={TAIL_AT} width=1 value=38 fix=none
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP
        rdreg 1 region=0 off=0x0 size=1""", 6),
    "v2-fifo-head-oob-write": (0x7, f"""
        set 0 state=STOP_COPY
        drain 0 fd=0
        mangle 0 kind=set off={TAIL_AT - 1} width=1 value=0x7c fix=none
        set 1 state=RESUMING
        transfer 0 dst=1 seg=0
        set 1 state=STOP
        wrreg 1 region=0 off=0x0 size=1 value=0x41
        get 1""", 7),
    "v2-reset-not-deferred": (0x7, """
        set 0 state=PRE_COPY
        race 0 x=set xarg=3 y=reset sched=4""", 1),  # the reset lands between PRE_COPY -> PRE_COPY_P2P and its commit
}


def _program(name):
    flags, body, _step = BUG_PROGRAMS[name]
    return parse_program(f"migfuzz-program 1 {BUGS[name].proto}\n{body}\n")


def test_every_bug_variant_has_a_program():
    assert set(BUG_PROGRAMS) == set(BUGS)


README = Path(__file__).resolve().parent.parent / "README.md"
ZOO_HEADER = "| variant | proto | defect | modelled on | caught as |"


def _readme_zoo_rows() -> list[list[str]]:
    """The README's zoo table (the section "## The bug zoo"): one list of cells per variant row,
    backticks and escaped pipes undone."""
    section = README.read_text().split("\n## The bug zoo\n", 1)[1].split("\n## ", 1)[0]
    assert ZOO_HEADER in section.splitlines()
    return [[cell.strip().strip("`").replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in section.splitlines() if line.startswith("| `")]


def test_readme_zoo_table_lists_the_zoo():
    rows = _readme_zoo_rows()
    assert [len(row) for row in rows] == [5] * len(rows), rows
    assert [row[0] for row in rows] == list(BUGS)  # every variant once, in the order `migfuzz targets` lists
    for variant, proto, defect, modelled_on, caught_as in rows:
        bug = BUGS[variant]
        assert (proto, defect, caught_as) == (bug.proto, bug.description, bug.finding), variant
        assert modelled_on and "\u00a7" not in modelled_on, variant  # a public source, no section numbers


@pytest.mark.parametrize("name", sorted(BUGS))
def test_bug_variant_is_caught(name):
    bug = BUGS[name]
    flags, _body, step = BUG_PROGRAMS[name]
    finding = Executor(SimTarget(bug.proto, flags, name)).run(_program(name))
    assert finding is not None, f"{name} not caught"
    assert finding.kind == bug.finding, finding
    assert finding.step == step, finding


@pytest.mark.parametrize("name", sorted(BUGS))
def test_bug_program_passes_on_correct_device(name):
    bug = BUGS[name]
    prog = _program(name)
    for flags in (FLAG_SETS if bug.proto == "v2" else (0,)):
        finding = Executor(SimTarget(bug.proto, flags)).run(prog)
        assert finding is None, (flags, finding)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_bug_variant_differs_from_correct_device(name):
    # the variant's class really overrides something of the correct device
    bug = BUGS[name]
    cls = device_class(bug.proto, name)
    base = device_class(bug.proto, None)
    assert issubclass(cls, base) and cls is not base
    overridden = [k for k in vars(bug.mixin) if not k.startswith("__")]
    assert overridden and all(hasattr(base, k) for k in overridden), overridden


def test_device_class_refuses_bad_names():
    with pytest.raises(ValueError):
        device_class("v3", None)
    with pytest.raises(ValueError):
        device_class("v2", "no-such-bug")
    with pytest.raises(ValueError):
        device_class("v2", "v1-accept-101")
