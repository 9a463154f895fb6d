"""The kernel backend's pure parts and its safety rules (runs anywhere, no VFIO needed)."""
import errno
import os
import threading

from harness import uapi
from harness.kernel.vfio import ABI, KernelTarget, Watchdog, mtty_targets, parse_region_info
from harness.runtime import VfioDevice

MIGRATION_TYPE = (uapi.VFIO_REGION_TYPE_MIGRATION, uapi.VFIO_REGION_SUBTYPE_MIGRATION)


def region_answer(caps: list[tuple[int, dict]], flags=uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_CAPS,
                  index=9, size=0x1000, offset=9 << 40, cap_offset=None) -> bytes:
    """A GET_REGION_INFO answer with capabilities at the given offsets, chained in list order."""
    end = max((at + 16 for at, _ in caps), default=32)
    buf = bytearray(end)
    first = caps[0][0] if caps else 0
    buf[0:32] = uapi.vfio_region_info.build(dict(argsz=end, flags=flags, index=index,
                                                 cap_offset=first if cap_offset is None else cap_offset,
                                                 size=size, offset=offset))
    for i, (at, cap) in enumerate(caps):
        following = caps[i + 1][0] if i + 1 < len(caps) else 0
        header = dict(id=cap.get("id", uapi.VFIO_REGION_INFO_CAP_TYPE), version=1, next=cap.get("next", following))
        buf[at:at + 16] = uapi.vfio_region_info_cap_type.build(
            dict(header=header, type=cap.get("type", 0), subtype=cap.get("subtype", 0)))
    return bytes(buf)


def test_region_info_fields():
    info = parse_region_info(region_answer([], flags=uapi.VFIO_REGION_INFO_FLAG_READ, size=96, offset=3 << 40))
    assert (info.index, info.size, info.offset, info.types) == (9, 96, 3 << 40, ())


def test_capability_chain_finds_the_migration_type_after_other_caps():
    buf = region_answer([(32, {"id": uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP}),
                         (48, {"type": 1, "subtype": 2}),
                         (64, {"type": MIGRATION_TYPE[0], "subtype": MIGRATION_TYPE[1]})])
    assert parse_region_info(buf).types == ((1, 2), MIGRATION_TYPE)


def test_capability_chain_ignored_without_caps_flag():
    buf = region_answer([(32, {"type": 3, "subtype": 1})], flags=uapi.VFIO_REGION_INFO_FLAG_READ)
    assert parse_region_info(buf).types == ()


def test_malformed_capability_chains_terminate():
    looping = region_answer([(32, {"type": 3, "subtype": 1, "next": 32})])
    assert parse_region_info(looping).types == (MIGRATION_TYPE,)
    past_end = region_answer([(32, {"type": 3, "subtype": 1, "next": 4096})])
    assert parse_region_info(past_end).types == (MIGRATION_TYPE,)
    into_header = region_answer([(32, {"type": 3, "subtype": 1})], cap_offset=8)
    assert parse_region_info(into_header).types == ()


def test_mtty_targets_from_the_rig_environment():
    assert mtty_targets("a-b:3,c-d:14") == [KernelTarget("a-b", 3), KernelTarget("c-d", 14)]
    assert mtty_targets("") == []


def test_device_never_touches_fds_it_did_not_hand_out():
    """On a non-VFIO fd every ioctl fails: the device opens as protocol 0, and a
    program naming the harness's own fds gets EBADF while those fds stay open."""
    null = os.open(os.devnull, os.O_RDWR)
    dev = VfioDevice(ABI, "null", null, [])
    try:
        assert dev.protocol == 0 and dev.flags == 0
        assert dev.get_state()[0] == errno.ENOTTY
        assert dev.feature(uapi.FEATURE_GET | uapi.FEATURE_MIGRATION, b"", argsz=0xFFFFFFFF)[0] == errno.ENOTTY
        for fd in (0, 1, 2, null):
            assert dev.read(fd, 10) == (errno.EBADF, b"")
            assert dev.write(fd, b"x") == (errno.EBADF, 0)
            assert dev.seek(fd) == errno.EBADF
            assert dev.precopy_info(fd)[0] == errno.EBADF
            assert dev.close(fd) == errno.EBADF
        os.fstat(1)  # still open
        assert dev.region_read(0, 4) == (errno.EINVAL, b"")
        assert dev.region_write(0, b"1234") == (errno.EINVAL, 0)
    finally:
        dev.close_device()
    try:
        os.fstat(null)
        raise AssertionError("close_device left the device fd open")
    except OSError as e:
        assert e.errno == errno.EBADF


def test_watchdog_reports_a_call_past_its_deadline_once():
    hangs = []
    fired = threading.Event()

    def on_hang(what, seconds):
        hangs.append((what, seconds))
        fired.set()

    watchdog = Watchdog(0.05, on_hang)
    try:
        with watchdog.guard("quick"):
            pass
        with watchdog.guard("set_state"):
            assert fired.wait(2)
    finally:
        watchdog.stop()
    assert len(hangs) == 1 and hangs[0][0] == "set_state" and hangs[0][1] >= 0.05
