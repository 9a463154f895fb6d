"""The device interface every harness backend implements.

The executor drives devices only through these methods.  They return errno
values instead of raising (0 = success) because a refusal is an ordinary,
expected protocol answer; a Python exception escaping one of them is itself a
finding ("exception inside the target").

Backends: ``harness.sim`` (in-process simulator) and ``harness.kernel`` (a real
VFIO device through ioctl/pread/pwrite, :class:`harness.runtime.VfioDevice`).

Also here: the errors every layer shares (a bad target, an unavailable one, a hang).
"""
from __future__ import annotations

from typing import Protocol

# What an injected fault does to the device step it hits (``arm_fault(dev, nth, kind)`` of a
# target that supports faults): fail it with no memory, a hardware error (the device may go to
# its error state), a timeout or an interrupted call, or move only part of the bytes ("short").
FAULT_KINDS = ("nomem", "hwerror", "timeout", "eintr", "short")


class TargetError(ValueError):
    """A target specification that cannot be used: a usage error (exit 2)."""


class TargetUnavailable(RuntimeError):
    """The target is well specified but cannot be opened here: no device, no permission,
    no migration support (exit 3)."""


def bookkeeping(func):
    """Marks a simulator function that only keeps records (step counters, digests, state copies):
    its coverage tells the fuzzer nothing about the protocol, so a campaign leaves it
    uninstrumented (fuzz.instrumentation.instrument); the decisions (the FSM, loaders, fault firing)
    stay instrumented."""
    func.__bookkeeping__ = True
    return func


class DeviceHang(Exception):
    """A device call did not return: the simulator's step budget ran out (its watchdog)."""


class Device(Protocol):
    """What both protocol versions share."""

    def reset(self) -> int:
        """VFIO_DEVICE_RESET. Returns errno."""

    def activity(self, seed: int) -> bytes | None:
        """Make the device do work (only has an effect while it runs).

        The simulator changes registers and dirties pages; a real device does
        what its target profile declares (e.g. UART register writes). Returns the
        bytes it put through data-in registers (they entered the device), if any."""

    def digest(self) -> bytes | None:
        """Exact digest of the device's internal state, or None if unknown."""

    def live_files(self) -> int | None:
        """Number of migration files/buffers the driver still holds, or None."""

    def close_device(self) -> None:
        """Release everything (fds, buffers)."""

    def reopen(self) -> int:
        """Close the device and every data_fd it has, then open it again as QEMU does (no
        VFIO_DEVICE_RESET). Returns errno."""

    def pci_region_size(self, region: int) -> int | None:
        """The size VFIO_DEVICE_GET_REGION_INFO reports for device region ``region`` (0: the driver
        does not implement it), or None if the device has no such region or it is unknown."""

    def reg_read(self, region: int, off: int, size: int) -> tuple[int, bytes]:
        """pread ``size`` bytes at ``off`` of device region ``region`` (VFIO region index, not the v1
        migration region) -> (errno, bytes)."""

    def reg_write(self, region: int, off: int, data: bytes) -> tuple[int, int]:
        """pwrite ``data`` at ``off`` of device region ``region`` -> (errno, bytes written)."""


class V2Device(Device, Protocol):
    """Migration protocol v2: VFIO_DEVICE_FEATURE + data_fd."""

    flags: int  # advertised VFIO_MIGRATION_* flags

    def get_state(self) -> tuple[int, int]:
        """GET MIG_DEVICE_STATE -> (errno, state)."""

    def set_state(self, state: int) -> tuple[int, int]:
        """SET MIG_DEVICE_STATE -> (errno, data_fd or -1)."""

    def feature(self, flags: int, payload: bytes, argsz: int | None = None) -> tuple[int, bytes]:
        """Raw VFIO_DEVICE_FEATURE with any flags/argsz -> (errno, payload read back)."""

    def data_size(self) -> tuple[int, int]:
        """GET MIG_DATA_SIZE -> (errno, stop_copy_length)."""

    def read(self, fd: int, n: int) -> tuple[int, bytes]:
        """read(2) on a data_fd -> (errno, bytes)."""

    def write(self, fd: int, data: bytes) -> tuple[int, int]:
        """write(2) on a data_fd -> (errno, bytes written)."""

    def seek(self, fd: int) -> int:
        """lseek(fd, 0, SEEK_SET) on a data_fd -> errno (ESPIPE expected)."""

    def precopy_info(self, fd: int) -> tuple[int, int, int]:
        """VFIO_MIG_GET_PRECOPY_INFO -> (errno, initial_bytes, dirty_bytes)."""

    def close(self, fd: int) -> int:
        """close(2) a data_fd -> errno."""

    def holds_data_fd(self, fd: int) -> bool:
        """Whether the data_fd ``fd`` this device handed out is still open (not closed by a
        ``close`` or a ``reopen``). After a SET that returned ``fd`` raced a reopen, a closed
        ``fd`` says the SET came first."""


class V1Device(Device, Protocol):
    """Migration protocol v1: the migration region."""

    region_size: int

    def region_read(self, offset: int, size: int) -> tuple[int, bytes]:
        """pread on the migration region -> (errno, bytes)."""

    def region_write(self, offset: int, data: bytes) -> tuple[int, int]:
        """pwrite on the migration region -> (errno, bytes written)."""

    def field_read(self, offset: int, size: int) -> tuple[int, int | None]:
        """A header field (``harness.uapi.V1_FIELDS``: offset, native width) read as an integer ->
        (errno, value; None on failure). The same access as ``region_read``, without the bytes."""

    def field_write(self, offset: int, size: int, value: int) -> int:
        """A header field written as an integer (cut to its width) -> errno."""
