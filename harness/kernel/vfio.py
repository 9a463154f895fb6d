"""A real VFIO device as a harness backend (``harness.base.V2Device`` / ``V1Device``).

Opening (``KernelTarget.open()``):

* legacy group/container API: ``/dev/vfio/vfio`` + ``/dev/vfio/<group>``,
  GROUP_SET_CONTAINER, SET_IOMMU (TYPE1v2, else TYPE1), GROUP_GET_DEVICE_FD
  with the device name (mdev UUID or PCI address) - what Debian's 6.12 has;
* iommufd cdev: ``/dev/vfio/devices/vfioN`` + ``/dev/iommu``, BIND_IOMMUFD.
  Implemented from the uAPI but untested: Debian's 6.12 config has no IOMMUFD.

The device is reset on open and before close. The protocol is detected on
open: GET MIGRATION succeeds -> v2; otherwise a region with capability type
(3, 1) -> v1 (no in-tree driver has one, so the v1 path is untested live).

Every device method returns errno values (0 = success) and never raises for a
kernel error. Data-fd methods only touch fds this device handed out (a fuzzed
program naming any other fd gets EBADF without a syscall), and region methods
only reach the migration region, so a program cannot hit the fuzzer's own fds
or a device BAR by accident.

Every layout and ioctl number comes from ``harness.uapi``.
"""
from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from harness import uapi

_FEATURE = uapi.packer(uapi.vfio_device_feature)
_MIGRATION = uapi.packer(uapi.vfio_device_feature_migration)
_MIG_STATE = uapi.packer(uapi.vfio_device_feature_mig_state)
_DATA_SIZE = uapi.packer(uapi.vfio_device_feature_mig_data_size)
_PRECOPY = uapi.packer(uapi.vfio_precopy_info)
_REGION_INFO = uapi.packer(uapi.vfio_region_info)
_CAP_HEADER = uapi.packer(uapi.vfio_info_cap_header)
_CAP_TYPE = uapi.packer(uapi.vfio_region_info_cap_type)
_DEVICE_INFO = uapi.packer(uapi.vfio_device_info)
_GROUP_STATUS = uapi.packer(uapi.vfio_group_status)
_BIND_IOMMUFD = uapi.packer(uapi.vfio_device_bind_iommufd)

# Largest single read(2) a program may ask for; bounds the buffer Python allocates.
MAX_READ = 1 << 20
# Regions at these indices are PCI BARs (VFIO_PCI_BAR0..5_REGION_INDEX).
_BAR_INDICES = range(6)
# 16550 UART register offsets inside an mtty BAR (include/uapi/linux/serial_reg.h).
_UART_TX, _UART_SCR = 0, 7
_RUNNING_STATES = frozenset({uapi.MigState.RUNNING, uapi.MigState.RUNNING_P2P,
                             uapi.MigState.PRE_COPY, uapi.MigState.PRE_COPY_P2P})


def _ioctl(fd: int, request: int, buf: bytearray | int = 0) -> tuple[int, int]:
    """(errno, return value) of one ioctl; a bytearray argument gets the kernel's output."""
    try:
        return 0, fcntl.ioctl(fd, request, buf)
    except OSError as e:
        return e.errno, -1


# ---------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class RegionInfo:
    index: int
    flags: int
    size: int
    offset: int                      # of the region inside the device fd
    types: tuple[tuple[int, int], ...]  # (type, subtype) of every CAP_TYPE capability


def parse_region_info(buf: bytes) -> RegionInfo:
    """Decode a VFIO_DEVICE_GET_REGION_INFO answer, walking its capability chain.

    Capability offsets count from the start of ``vfio_region_info``; the chain
    ends at next == 0. Offsets that point outside the buffer, backwards or at
    an already-visited capability end the walk (a malformed chain must not hang
    or crash the harness)."""
    _argsz, flags, index, cap_offset, size, offset = _REGION_INFO.unpack_from(buf)
    types = []
    seen = set()
    at = cap_offset if flags & uapi.VFIO_REGION_INFO_FLAG_CAPS else 0
    while at and at not in seen and _REGION_INFO.size <= at <= len(buf) - _CAP_HEADER.size:
        seen.add(at)
        cap_id, _version, next_offset = _CAP_HEADER.unpack_from(buf, at)
        if cap_id == uapi.VFIO_REGION_INFO_CAP_TYPE and at + _CAP_TYPE.size <= len(buf):
            _, _, _, cap_type, subtype = _CAP_TYPE.unpack_from(buf, at)
            types.append((cap_type, subtype))
        at = next_offset
    return RegionInfo(index, flags, size, offset, tuple(types))


def region_info(device_fd: int, index: int) -> tuple[int, RegionInfo | None]:
    """GET_REGION_INFO for one index, re-asking with the argsz the kernel wants when
    the capability chain does not fit. -> (errno, info)."""
    argsz = _REGION_INFO.size
    for _ in range(2):
        buf = bytearray(argsz)
        _REGION_INFO.pack_into(buf, 0, argsz, 0, index, 0, 0, 0)
        err, _ = _ioctl(device_fd, uapi.VFIO_DEVICE_GET_REGION_INFO, buf)
        if err:
            return err, None
        wanted = _REGION_INFO.unpack_from(buf)[0]
        if wanted <= argsz:
            return 0, parse_region_info(bytes(buf))
        argsz = wanted
    return 0, parse_region_info(bytes(buf))


def find_migration_region(device_fd: int) -> RegionInfo | None:
    """The v1 migration region: a device-specific region (index >= VFIO_PCI_NUM_REGIONS)
    with capability type VFIO_REGION_TYPE_MIGRATION / SUBTYPE_MIGRATION."""
    info = bytearray(_DEVICE_INFO.size)
    _DEVICE_INFO.pack_into(info, 0, _DEVICE_INFO.size, 0, 0, 0, 0)
    err, _ = _ioctl(device_fd, uapi.VFIO_DEVICE_GET_INFO, info)
    if err:
        return None
    num_regions = _DEVICE_INFO.unpack_from(info)[2]
    wanted = (uapi.VFIO_REGION_TYPE_MIGRATION, uapi.VFIO_REGION_SUBTYPE_MIGRATION)
    for index in range(uapi.VFIO_PCI_NUM_REGIONS, num_regions):
        err, region = region_info(device_fd, index)
        if not err and wanted in region.types:
            return region
    return None


# ---------------------------------------------------------------------------- watchdog


class _Guard:
    """``with watchdog.guard(what):`` - a class, not a generator: it runs on every device call."""

    __slots__ = ("_watchdog", "_what")

    def __init__(self, watchdog: Watchdog, what: str) -> None:
        self._watchdog = watchdog
        self._what = what

    def __enter__(self) -> None:
        self._watchdog._armed = (self._what, time.monotonic())

    def __exit__(self, *exc: object) -> None:
        self._watchdog._armed = None


_UNGUARDED = nullcontext()


class Watchdog:
    """Calls ``on_hang(what, seconds)`` once when one guarded call runs past ``deadline``.

    The fuzzer's callback writes a hang finding and ``os._exit``s: a call stuck
    in the kernel cannot be interrupted from Python. Guarding is a tuple
    assignment, cheap enough for every device call."""

    def __init__(self, deadline: float, on_hang: Callable[[str, float], None]) -> None:
        self.deadline = deadline
        self._on_hang = on_hang
        self._armed: tuple[str, float] | None = None
        self._guards: dict[str, _Guard] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vfio-watchdog", daemon=True)
        self._thread.start()

    def guard(self, what: str) -> _Guard:
        """Context manager arming the watchdog around one call (cached per name: no allocation)."""
        guard = self._guards.get(what)
        if guard is None:
            guard = self._guards[what] = _Guard(self, what)
        return guard

    def _watch(self) -> None:
        poll = min(self.deadline / 4, 0.25)
        while not self._stop.wait(poll):
            armed = self._armed
            if armed is not None and time.monotonic() - armed[1] > self.deadline:
                self._armed = None
                self._on_hang(armed[0], time.monotonic() - armed[1])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- device


class KernelDevice:
    """An open VFIO device; implements V2Device, and V1Device when it has a v1 region."""

    def __init__(self, name: str, device_fd: int, owned_fds: list[int],
                 watchdog: Watchdog | None = None) -> None:
        self.name = name
        self._device_fd = device_fd
        self._owned_fds = owned_fds          # container/group/iommufd, closed after the device
        self._data_fds: set[int] = set()     # data_fds handed out and not yet closed
        self._watchdog = watchdog
        self.flags = 0
        self.protocol = 0
        self.region_size = 0
        self._region_offset = 0
        self._bar_offsets: list[int] = []
        self.reset()
        err, payload = self.feature(uapi.FEATURE_GET | uapi.FEATURE_MIGRATION, bytes(_MIGRATION.size))
        if not err:
            self.protocol = 2
            self.flags = _MIGRATION.unpack_from(payload)[0]
        else:
            region = find_migration_region(device_fd)
            if region is not None:
                self.protocol = 1
                self.region_size, self._region_offset = region.size, region.offset
        for index in _BAR_INDICES:
            err, bar = region_info(device_fd, index)
            if not err and bar.size:
                self._bar_offsets.append(bar.offset)

    def _guard(self, what: str):
        return self._watchdog.guard(what) if self._watchdog else _UNGUARDED

    # -- Device

    def reset(self) -> int:
        with self._guard("reset"):
            return _ioctl(self._device_fd, uapi.VFIO_DEVICE_RESET)[0]

    def activity(self, seed: int) -> None:
        """Best effort, for mtty-like UART devices: while the device runs, write a
        seed-derived byte to the scratch register and one to the transmit register
        of every BAR. mtty queues transmitted bytes in its FIFO and keeps the
        scratch register, both part of its migration stream, so the saved state
        changes. Errors are ignored: activity is stimulus, not a protocol step."""
        if self.protocol != 2 or not self._bar_offsets:
            return
        err, state = self.get_state()
        if err or state not in _RUNNING_STATES:
            return
        with self._guard("activity"):
            for port, bar in enumerate(self._bar_offsets):
                value = (seed + port) & 0xFF
                for register, byte in ((_UART_SCR, value), (_UART_TX, value ^ 0x5A)):
                    try:
                        os.pwrite(self._device_fd, bytes([byte]), bar + register)
                    except OSError:
                        pass

    def digest(self) -> bytes | None:
        return None

    def live_files(self) -> int | None:
        # The driver's own references are not visible from user space; counting
        # our open data fds would say nothing about leaks inside the driver.
        return None

    def close_data_fds(self) -> None:
        """Close every data fd this device handed out and the program did not close."""
        for fd in sorted(self._data_fds):
            self.close(fd)

    def close_device(self) -> None:
        """Close every data fd, reset, close the device, then its group/container/iommufd."""
        if self._device_fd < 0:
            return
        self.close_data_fds()
        self.reset()
        for fd in [self._device_fd, *reversed(self._owned_fds)]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._device_fd = -1
        self._owned_fds = []

    # -- V2Device

    def feature(self, flags: int, payload: bytes, argsz: int | None = None) -> tuple[int, bytes]:
        """Raw VFIO_DEVICE_FEATURE. The buffer is large enough for both the payload and
        `argsz`, so a large fuzzed argsz never lets the kernel read or write past it."""
        if argsz is None:
            argsz = _FEATURE.size + len(payload)
        argsz &= 0xFFFFFFFF
        buf = bytearray(max(_FEATURE.size + len(payload), min(argsz, MAX_READ)))
        _FEATURE.pack_into(buf, 0, argsz, flags & 0xFFFFFFFF)
        buf[_FEATURE.size:_FEATURE.size + len(payload)] = payload
        with self._guard("feature"):
            err, _ = _ioctl(self._device_fd, uapi.VFIO_DEVICE_FEATURE, buf)
        return err, bytes(buf[_FEATURE.size:])

    def get_state(self) -> tuple[int, int]:
        buf = bytearray(_FEATURE.size + _MIG_STATE.size)
        _FEATURE.pack_into(buf, 0, len(buf), uapi.FEATURE_GET | uapi.FEATURE_MIG_DEVICE_STATE)
        _MIG_STATE.pack_into(buf, _FEATURE.size, 0, -1)
        with self._guard("get_state"):
            err, _ = _ioctl(self._device_fd, uapi.VFIO_DEVICE_FEATURE, buf)
        if err:
            return err, -1
        return 0, _MIG_STATE.unpack_from(buf, _FEATURE.size)[0]

    def set_state(self, state: int) -> tuple[int, int]:
        buf = bytearray(_FEATURE.size + _MIG_STATE.size)
        _FEATURE.pack_into(buf, 0, len(buf), uapi.FEATURE_SET | uapi.FEATURE_MIG_DEVICE_STATE)
        _MIG_STATE.pack_into(buf, _FEATURE.size, state & 0xFFFFFFFF, -1)
        with self._guard("set_state"):
            err, _ = _ioctl(self._device_fd, uapi.VFIO_DEVICE_FEATURE, buf)
        if err:
            return err, -1
        data_fd = _MIG_STATE.unpack_from(buf, _FEATURE.size)[1]
        if data_fd >= 0:
            self._data_fds.add(data_fd)
        return 0, data_fd

    def data_size(self) -> tuple[int, int]:
        err, payload = self.feature(uapi.FEATURE_GET | uapi.FEATURE_MIG_DATA_SIZE, bytes(_DATA_SIZE.size))
        return (err, -1) if err else (0, _DATA_SIZE.unpack_from(payload)[0])

    def read(self, fd: int, n: int) -> tuple[int, bytes]:
        if fd not in self._data_fds:
            return errno.EBADF, b""
        with self._guard("read"):
            try:
                return 0, os.read(fd, max(0, min(n, MAX_READ)))
            except OSError as e:
                return e.errno, b""

    def write(self, fd: int, data: bytes) -> tuple[int, int]:
        if fd not in self._data_fds:
            return errno.EBADF, 0
        with self._guard("write"):
            try:
                return 0, os.write(fd, data)
            except OSError as e:
                return e.errno, 0

    def seek(self, fd: int) -> int:
        if fd not in self._data_fds:
            return errno.EBADF
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return 0
        except OSError as e:
            return e.errno

    def precopy_info(self, fd: int) -> tuple[int, int, int]:
        if fd not in self._data_fds:
            return errno.EBADF, 0, 0
        buf = bytearray(_PRECOPY.size)
        _PRECOPY.pack_into(buf, 0, _PRECOPY.size, 0, 0, 0)
        with self._guard("precopy_info"):
            err, _ = _ioctl(fd, uapi.VFIO_MIG_GET_PRECOPY_INFO, buf)
        if err:
            return err, 0, 0
        _argsz, _flags, initial, dirty = _PRECOPY.unpack_from(buf)
        return 0, initial, dirty

    def close(self, fd: int) -> int:
        if fd not in self._data_fds:
            return errno.EBADF
        self._data_fds.discard(fd)
        with self._guard("close"):
            try:
                os.close(fd)
                return 0
            except OSError as e:
                return e.errno

    # -- V1Device

    def _region_span_ok(self, offset: int, size: int) -> bool:
        return self.protocol == 1 and 0 <= offset and 0 <= size and offset + size <= self.region_size

    def region_read(self, offset: int, size: int) -> tuple[int, bytes]:
        """pread inside the v1 migration region; spans outside it -> EINVAL without a syscall."""
        if not self._region_span_ok(offset, size):
            return errno.EINVAL, b""
        with self._guard("region_read"):
            try:
                return 0, os.pread(self._device_fd, size, self._region_offset + offset)
            except OSError as e:
                return e.errno, b""

    def region_write(self, offset: int, data: bytes) -> tuple[int, int]:
        """pwrite inside the v1 migration region; spans outside it -> EINVAL without a syscall."""
        if not self._region_span_ok(offset, len(data)):
            return errno.EINVAL, 0
        with self._guard("region_write"):
            try:
                return 0, os.pwrite(self._device_fd, data, self._region_offset + offset)
            except OSError as e:
                return e.errno, 0


# ---------------------------------------------------------------------------- opening


class OpenError(Exception):
    """The named device could not be opened (setup, not a protocol answer)."""


def _checked(what: str, err: int) -> None:
    if err:
        raise OpenError(f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def open_group_device(name: str, group: int, watchdog: Watchdog | None = None) -> KernelDevice:
    """Open `name` (mdev UUID or PCI address) of IOMMU group `group` via a new container."""
    fds: list[int] = []
    try:
        container = os.open("/dev/vfio/vfio", os.O_RDWR | os.O_CLOEXEC)
        fds.append(container)
        err, version = _ioctl(container, uapi.VFIO_GET_API_VERSION)
        _checked("VFIO_GET_API_VERSION", err)
        if version != uapi.VFIO_API_VERSION:
            raise OpenError(f"VFIO API version {version}, expected {uapi.VFIO_API_VERSION}")
        group_fd = os.open(f"/dev/vfio/{group}", os.O_RDWR | os.O_CLOEXEC)
        fds.append(group_fd)
        status = bytearray(_GROUP_STATUS.size)
        _GROUP_STATUS.pack_into(status, 0, _GROUP_STATUS.size, 0)
        _checked("VFIO_GROUP_GET_STATUS", _ioctl(group_fd, uapi.VFIO_GROUP_GET_STATUS, status)[0])
        if not _GROUP_STATUS.unpack_from(status)[1] & uapi.VFIO_GROUP_FLAGS_VIABLE:
            raise OpenError(f"group {group} is not viable (a device in it is bound to a host driver)")
        container_arg = bytearray(container.to_bytes(4, "little", signed=True))
        _checked("VFIO_GROUP_SET_CONTAINER", _ioctl(group_fd, uapi.VFIO_GROUP_SET_CONTAINER, container_arg)[0])
        # mdev groups are emulated; type1 (v2 first) backs them without a hardware IOMMU.
        err = errno.ENODEV
        for iommu in (uapi.VFIO_TYPE1v2_IOMMU, uapi.VFIO_TYPE1_IOMMU):
            err, _ = _ioctl(container, uapi.VFIO_SET_IOMMU, iommu)
            if not err:
                break
        _checked("VFIO_SET_IOMMU", err)
        err, device_fd = _ioctl(group_fd, uapi.VFIO_GROUP_GET_DEVICE_FD, bytearray(name.encode() + b"\0"))
        _checked(f"VFIO_GROUP_GET_DEVICE_FD {name}", err)
    except (OSError, OpenError) as e:
        for fd in reversed(fds):
            os.close(fd)
        if isinstance(e, OpenError):
            raise
        raise OpenError(f"opening {name} in group {group}: {e}") from e
    return KernelDevice(name, device_fd, fds, watchdog)


def open_cdev_device(cdev: str, watchdog: Watchdog | None = None) -> KernelDevice:
    """Open ``/dev/vfio/devices/<cdev>`` bound to a new iommufd.

    Untested: needs CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV, which Debian's 6.12
    lacks. Binding alone grants access to the device ioctls the migration
    protocol uses; no IOAS is attached because the harness does no DMA."""
    device_fd = iommufd = -1
    try:
        device_fd = os.open(f"/dev/vfio/devices/{cdev}", os.O_RDWR | os.O_CLOEXEC)
        iommufd = os.open("/dev/iommu", os.O_RDWR | os.O_CLOEXEC)
        bind = bytearray(_BIND_IOMMUFD.size)
        _BIND_IOMMUFD.pack_into(bind, 0, _BIND_IOMMUFD.size, 0, iommufd, 0)
        _checked(f"VFIO_DEVICE_BIND_IOMMUFD {cdev}", _ioctl(device_fd, uapi.VFIO_DEVICE_BIND_IOMMUFD, bind)[0])
    except (OSError, OpenError) as e:
        for fd in (device_fd, iommufd):
            if fd >= 0:
                os.close(fd)
        if isinstance(e, OpenError):
            raise
        raise OpenError(f"opening {cdev}: {e}") from e
    return KernelDevice(cdev, device_fd, [iommufd], watchdog)


@dataclass(frozen=True)
class KernelTarget:
    """One explicitly named device: by group (legacy API) or by cdev name (iommufd)."""

    name: str                   # mdev UUID or PCI address (legacy), or "vfioN" (cdev)
    group: int | None = None    # IOMMU group; None -> open the cdev `name`

    def open(self, watchdog: Watchdog | None = None) -> KernelDevice:
        if self.group is None:
            return open_cdev_device(self.name, watchdog)
        return open_group_device(self.name, self.group, watchdog)


def mtty_targets(spec: str | None = None) -> list[KernelTarget]:
    """Targets from the rig's ``MIGFUZZ_MTTY`` ("uuid:group,uuid:group")."""
    spec = os.environ.get("MIGFUZZ_MTTY", "") if spec is None else spec
    targets = []
    for entry in filter(None, spec.split(",")):
        uuid, group = entry.split(":")
        targets.append(KernelTarget(uuid, int(group)))
    return targets
