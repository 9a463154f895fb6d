"""A real VFIO device as a harness backend: :class:`harness.runtime.VfioDevice` with a watchdog.

The device access itself (opening by group or cdev, ioctls, data_fds, the v1 region) is
``harness.runtime``, which the stand-alone reproducers share; this module binds it to
``harness.uapi``'s layouts (:data:`ABI`), guards every call with a :class:`Watchdog`, and
names devices (:class:`KernelTarget`, :func:`mtty_targets`).

Opening (``KernelTarget.open()``):

* legacy group/container API: ``/dev/vfio/vfio`` + ``/dev/vfio/<group>``,
  GROUP_SET_CONTAINER, SET_IOMMU (TYPE1v2, else TYPE1), GROUP_GET_DEVICE_FD
  with the device name (mdev UUID or PCI address) - what Debian's 6.12 has;
* iommufd cdev: ``/dev/vfio/devices/vfioN`` + ``/dev/iommu``, BIND_IOMMUFD.
  Implemented from the uAPI but untested: Debian's 6.12 config has no IOMMUFD.

The device is reset on open and before close. The protocol is detected on
open: GET MIGRATION succeeds -> v2; otherwise a region with capability type
(3, 1) -> v1 (no in-tree driver has one, so the v1 path is untested live).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from harness import runtime, uapi
from harness.runtime import MAX_READ, OpenError, RegionInfo, VfioDevice  # noqa: F401  (this module's API)

ABI = runtime.Abi(uapi.runtime_abi())


def parse_region_info(buf: bytes) -> RegionInfo:
    """Decode a VFIO_DEVICE_GET_REGION_INFO answer (``harness.runtime.parse_region_info``)."""
    return runtime.parse_region_info(ABI, buf)


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


class _CoveredGuard:
    """A guard that also brackets the call for kernel coverage (``kcov.KernelCoverage``): zero
    the trace before the call, collect what it covered after."""

    __slots__ = ("_watchdog", "_what", "_coverage")

    def __init__(self, watchdog: Watchdog, what: str, coverage) -> None:
        self._watchdog = watchdog
        self._what = what
        self._coverage = coverage

    def __enter__(self) -> None:
        self._watchdog._armed = (self._what, time.monotonic())
        self._coverage.start()

    def __exit__(self, *exc: object) -> None:
        self._coverage.stop()
        self._watchdog._armed = None


class Watchdog:
    """Calls ``on_hang(what, seconds)`` once when one guarded call runs past ``deadline``.

    The fuzzer's callback writes a hang finding and ``os._exit``s: a call stuck
    in the kernel cannot be interrupted from Python. Guarding is a tuple
    assignment, cheap enough for every device call."""

    def __init__(self, deadline: float, on_hang: Callable[[str, float], None]) -> None:
        self.deadline = deadline
        self._on_hang = on_hang
        self._armed: tuple[str, float] | None = None
        self._guards: dict[str, _Guard | _CoveredGuard] = {}
        self._coverage = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vfio-watchdog", daemon=True)
        self._thread.start()

    def guard(self, what: str) -> _Guard | _CoveredGuard:
        """Context manager arming the watchdog around one call (cached per name: no allocation)."""
        guard = self._guards.get(what)
        if guard is None:
            coverage = self._coverage
            guard = self._guards[what] = _Guard(self, what) if coverage is None else \
                _CoveredGuard(self, what, coverage)
        return guard

    def cover(self, coverage) -> None:
        """From now on every guarded call also collects kernel coverage into ``coverage``
        (``kcov.KernelCoverage``; None: stop)."""
        self._coverage = coverage
        self._guards = {}

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


# ---------------------------------------------------------------------------- opening


def open_group_device(name: str, group: int, watchdog: Watchdog | None = None) -> VfioDevice:
    """Open `name` (mdev UUID or PCI address) of IOMMU group `group` via a new container."""
    return runtime.open_group_device(ABI, name, group, watchdog.guard if watchdog else None)


def open_cdev_device(cdev: str, watchdog: Watchdog | None = None) -> VfioDevice:
    """Open ``/dev/vfio/devices/<cdev>`` bound to a new iommufd (untested: Debian's 6.12 lacks IOMMUFD)."""
    return runtime.open_cdev_device(ABI, cdev, watchdog.guard if watchdog else None)


@dataclass(frozen=True)
class KernelTarget:
    """One explicitly named device: by group (legacy API) or by cdev name (iommufd)."""

    name: str                   # mdev UUID or PCI address (legacy), or "vfioN" (cdev)
    group: int | None = None    # IOMMU group; None -> open the cdev `name`

    def open(self, watchdog: Watchdog | None = None) -> VfioDevice:
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
