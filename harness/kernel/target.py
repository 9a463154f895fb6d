"""Real VFIO devices as a fuzzing target (``--target kernel:...`` and ``--target mtty``).

``open_kernel_target(spec)`` returns a :class:`KernelTargetSet`, which has the
shape of ``harness.sim.SimTarget`` (what the fuzzer's executor drives):

* ``kernel:dev=NAME,dev2=NAME[,group=N,group2=N]`` - two devices named
  explicitly (mdev UUID or PCI address), opened through the legacy
  group/container API. A missing group is read from sysfs
  (``/sys/bus/mdev/devices/<uuid>/iommu_group`` or
  ``/sys/bus/pci/devices/<bdf>/iommu_group``).
  ``cdev=vfioN`` / ``cdev2=vfioN`` (or ``/dev/vfio/devices/vfioN``) open
  through iommufd instead.
* ``mtty`` - inside the rig guest (``migfuzz vm``): the first two mtty
  instances of ``$MIGFUZZ_MTTY``.

Anything missing (device, group, /dev/vfio, permission, migration support)
raises ``harness.base.TargetUnavailable`` with a one-line reason.

**Two devices, always.** Programs name device 0 (a source) and device 1 (a
destination); mapping device 1 onto device 0 would
make the model track two views of one device and report mismatches the device
did not cause. So a target with fewer than two devices is unavailable. Both
must be of the same kind (same protocol, flags and stream format), or a
valid stream from one is refused by the other.

What the target can judge: ``has_digest = False`` (no state digest: after a load the
executor compares ``resave(i)``, the destination saved again, with the source's stream;
byte-for-byte comparison needs canonical streams, true of mtty, so ``resave`` answers None
for other drivers); ``validates_stream = False`` (mtty accepts any stream with a good
header); ``supports_faults = False`` (no fault injection into a real driver).

Per program (``fresh()``): close every data_fd the previous program left open
(no fd outlives its program), reset both devices, note the program in the
flight recorder (``flight.py``; inside the rig only).

Hangs: every device call runs under a :class:`~harness.kernel.vfio.Watchdog`
(``CALL_DEADLINE`` seconds). A call that does not return cannot be interrupted
from Python, so the watchdog calls ``target.on_hang(what, seconds)`` - the
fuzzing engine installs a callback that writes a ``hang`` finding for the
current input and exits 1 - or, with no callback installed, prints the hang
and exits 1.

Kernel splats: the target returns the kernel reports logged on ``/dev/kmsg`` since it was
last asked (``kernel_reports``: ``kmsg.KernelReport``s), after every program, and after every
op on a kernel with KCOV (``reports_per_op``); the oracle makes them a ``kernel-splat``
finding at that op, signed by title and top frames. A
report that panics the guest (``panic_on_warn=1 oops=panic``) is reported by the host
from the console and the flight recorder (``fuzz.vm``). Kernel coverage: on a kernel
with KCOV, ``enable_kernel_coverage`` collects every device call's PCs (``kcov.py``).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from harness.base import TargetError, TargetUnavailable
from harness.profile import load_profile
from harness.runtime import read_stream
from harness.uapi import MIG_FLAG_SETS, MigState

from .flight import FlightRecorder
from .kcov import KernelCoverage
from .kmsg import KmsgWatch
from .vfio import KernelTarget, OpenError, Watchdog, mtty_targets

CALL_DEADLINE = float(os.environ.get("MIGFUZZ_CALL_DEADLINE", "10"))  # seconds per device call
SYSFS_BUSES = ("/sys/bus/mdev/devices", "/sys/bus/pci/devices")
NDEVICES = 2
RESAVE_FROM = frozenset({MigState.STOP, MigState.RUNNING, MigState.RUNNING_P2P})
_KNOWN_FLAGS = 0x7           # STOP_COPY | P2P | PRE_COPY
_GROUP_NAME = re.compile(r"^\d+$")


def _unavailable(reason: str) -> Exception:
    return TargetUnavailable(reason)


def _usage(reason: str) -> Exception:
    return TargetError(reason)


def iommu_group(name: str, sysfs: tuple[str, ...] = SYSFS_BUSES) -> int:
    """IOMMU group of an mdev UUID or PCI address, from sysfs (TargetUnavailable if unknown)."""
    for bus in sysfs:
        dev = Path(bus) / name
        if dev.exists():
            link = dev / "iommu_group"
            try:
                group = os.path.basename(os.readlink(link))
            except OSError:
                raise _unavailable(f"{dev} has no iommu_group (not bound to vfio / no IOMMU)") from None
            if not _GROUP_NAME.match(group):
                raise _unavailable(f"{link} -> {group!r} is not a group number")
            return int(group)
    raise _unavailable(f"no device {name!r} in {' or '.join(sysfs)}")


def is_mtty(name: str, mdev_bus: str = SYSFS_BUSES[0]) -> bool:
    """Whether ``name`` is an mdev of the mtty sample driver (its parent device is ``mtty``)."""
    real = os.path.realpath(os.path.join(mdev_bus, name))
    return os.path.basename(os.path.dirname(real)) == "mtty"


def kernel_targets(options: dict, sysfs: tuple[str, ...] = SYSFS_BUSES) -> list[KernelTarget]:
    """The devices a ``kernel:`` spec names, in program order (source, destination)."""
    targets = []
    for suffix in ("", "2"):
        dev, group, cdev = (options.get(k + suffix) for k in ("dev", "group", "cdev"))
        if cdev:
            if dev or group:
                raise _usage(f"give either cdev{suffix}= or dev{suffix}=/group{suffix}=, not both")
            targets.append(KernelTarget(os.path.basename(cdev.rstrip("/")), None))
            continue
        if not dev:
            if group:
                raise _usage(f"group{suffix}= needs dev{suffix}= (the device to open in that group)")
            continue
        if group is None:
            number = iommu_group(dev, sysfs)
        else:
            try:
                number = int(group, 0)
            except ValueError:
                raise _usage(f"group{suffix}={group!r} is not a number") from None
        targets.append(KernelTarget(dev, number))
    if len(targets) == 2 and targets[0].name == targets[1].name:
        raise _usage("dev2 names the same device as dev; a program needs two different devices")
    return targets


def _spec_targets(spec) -> list[KernelTarget]:
    if spec.kind == "mtty":
        if spec.options:
            raise _usage("the mtty target takes no options (it uses the rig's instances, $MIGFUZZ_MTTY)")
        if not os.environ.get("MIGFUZZ_MTTY"):
            raise _unavailable("mtty: $MIGFUZZ_MTTY is not set; this target exists inside the rig guest "
                               "(run `migfuzz vm fuzz`)")
        try:
            targets = mtty_targets()
        except ValueError:
            raise _unavailable(f"mtty: cannot parse $MIGFUZZ_MTTY={os.environ['MIGFUZZ_MTTY']!r}") from None
    else:
        targets = kernel_targets(spec.options)
    if len(targets) < NDEVICES:
        raise _unavailable(f"{spec.text()}: needs two devices (a source and a destination: programs migrate "
                           f"between device 0 and device 1), got {len(targets)}"
                           + ("; add dev2=..." if spec.kind == "kernel" else ""))
    return targets[:NDEVICES]


def open_kernel_target(spec) -> KernelTargetSet:
    """Open the two devices ``spec`` names (a target spec of kind kernel or mtty: ``.kind``,
    ``.options``, ``.text()``)."""
    targets = _spec_targets(spec)
    canonical = spec.kind == "mtty" or all(t.group is not None and is_mtty(t.name) for t in targets)
    profile = load_profile(spec.options.get("profile") or ("mtty" if canonical else "pci"))
    target = KernelTargetSet(spec.kind, spec.text(), canonical_streams=canonical, profile=profile)
    try:
        for t in targets:
            try:
                target.add(t.open(target.watchdog))
            except OpenError as e:
                raise _unavailable(f"{t.name}: {e}") from None
            except OSError as e:
                raise _unavailable(f"{t.name}: {e.strerror or e}") from None
        target.check()
    except BaseException:
        target.close()
        raise
    target.start()
    return target


# ---------------------------------------------------------------------------- the target


class KernelTargetSet:
    """Two real devices as one fuzzing target (see the module doc)."""

    has_digest = False
    validates_stream = False
    supports_faults = False
    # A real device keeps what earlier programs put into it: VFIO_DEVICE_RESET need not clear
    # registers or buffers (mtty_reset() only ends the migration sessions; the UART registers and
    # FIFO bytes stay), so a later program may read them back.
    retains_data = True

    def __init__(self, kind: str, name: str, devices: list | None = None,
                 deadline: float = CALL_DEADLINE, canonical_streams: bool = False, profile=None) -> None:
        self.kind = kind
        self.name = name
        self.profile = profile or load_profile("pci")  # which registers programs may touch
        self.canonical_streams = canonical_streams  # a re-saved stream can be compared byte for byte
        self.devices: list = []
        self.proto = ""
        self.flags = 0
        self.region_size = 0
        # Installed by the fuzzing engine: on_hang(what, seconds) must not return;
        # current_input() -> the bytes of the program about to run (for the flight recorder).
        self.on_hang: Callable[[str, float], None] | None = None
        self.current_input: Callable[[], bytes] | None = None
        self.watchdog = Watchdog(deadline, self._hang)
        self.kmsg: KmsgWatch | None = None
        self.flight = None
        self.coverage: KernelCoverage | None = None  # KCOV, once enable_kernel_coverage() found it
        self.reports_per_op = False  # the executor asks for kernel_reports() after every op, not every program
        self.op_started: Callable[[int], None] | None = None  # called with each op's index as it begins
        self.resaves = 0          # successful re-saves (for stats and tests)
        if devices:
            for dev in devices:
                self.add(dev)
            self.check()

    # -- setup

    def add(self, dev) -> None:
        self.devices.append(dev)

    def check(self) -> None:
        """Both devices migrate, with one protocol and one flag set the model knows."""
        first = self.devices[0]
        for dev in self.devices:
            if dev.protocol not in (1, 2):
                raise _unavailable(f"{dev.name}: no migration support (GET MIGRATION fails and no v1 region)")
            if (dev.protocol, dev.flags, dev.region_size) != (first.protocol, first.flags, first.region_size):
                raise _unavailable(f"{first.name} and {dev.name} differ (protocol v{first.protocol}/v{dev.protocol}, "
                                   f"flags {first.flags:#x}/{dev.flags:#x}): a stream from one would not load "
                                   f"into the other")
        self.proto = f"v{first.protocol}"
        if first.protocol == 2:
            self.flags = first.flags & _KNOWN_FLAGS
            if self.flags not in MIG_FLAG_SETS:
                raise _unavailable(f"{first.name}: migration flags {first.flags:#x} lack STOP_COPY")
        self.region_size = first.region_size
        present = set(first.regions) if hasattr(first, "regions") else set(self.profile.regions)
        for dev in self.devices[1:]:
            present &= set(getattr(dev, "regions", present))
        self.profile = self.profile.only(present)  # a region a device lacks is never touched

    def start(self) -> None:
        """Begin watching the kernel log and recording programs (after the devices opened)."""
        try:
            self.kmsg = KmsgWatch()
        except OSError:
            self.kmsg = None  # not root / no /dev/kmsg: splats are then only seen on a console
        self.flight = FlightRecorder.open(self.proto, self.name)
        if self.flight is not None:  # the executor names each op as it begins (a panic's crash file says which)
            self.op_started = self.flight.op_started

    def enable_kernel_coverage(self) -> str:
        """Collect KCOV coverage of every device call made on this thread from now on
        (``self.coverage``, folded per program; see ``kcov.py``). Returns what it found: how the
        PCs are split, or why there is no kernel coverage (the kernel lacks KCOV, no debugfs)."""
        self.coverage, description = KernelCoverage.open([dev.name for dev in self.devices])
        if self.coverage is not None:
            self.watchdog.cover(self.coverage)
            # A KCOV kernel is a sanitizer build (the rig's debug kernel): its reports are what the
            # campaign is for, and one read per program blamed the last op for a UBSAN report from
            # a register write ten ops earlier. Its calls take milliseconds; a poll of /dev/kmsg with
            # nothing new takes 18 us in the TCG guest (on the stock kernel it would cost ~7%).
            self.reports_per_op = True
        return description

    # -- the SimTarget shape

    def fresh(self) -> None:
        """Between programs: close the previous program's data_fds, reset both devices; then name the
        program about to run in the flight recorder."""
        init = self.profile.init
        for dev in self.devices:
            dev.close_data_fds()
            dev.reset()
            for region, off, value in init:  # start its registers from a known state, as power-on does
                dev.reg_write(region, off, bytes((value,)))
        # After the resets, not before: a panic in them comes from what the previous program left in
        # the driver (mtty #8: a TX byte stored over resuming_migf oopses VFIO_DEVICE_RESET's
        # mtty_disable_files()), so the recorder must still name that program as the one running.
        if self.flight is not None and self.current_input is not None:
            self.flight.record(self.current_input())
        if self.coverage is not None:  # the program's own coverage starts here, after the resets
            self.coverage.begin_program(self.current_input() if self.current_input is not None else None)

    def arm_fault(self, dev: int, nth: int, kind: str) -> None:
        pass  # no fault injection into a real driver (supports_faults = False)

    def fault_fired(self, dev: int) -> bool:
        return False

    def clear_fault(self, dev: int) -> None:
        pass

    def kernel_reports(self) -> list:
        """The kernel reports (``kmsg.KernelReport``: WARN, BUG, oops, lockup, lockdep, KASAN, UBSAN)
        logged since the previous call (none if /dev/kmsg is unreadable)."""
        return self.kmsg.new_reports() if self.kmsg is not None else []

    def close(self) -> None:
        """Close every data_fd, reset and close both devices; stop watching."""
        for dev in self.devices:
            dev.close_device()
        self.devices = []
        self.watchdog.stop()
        if self.coverage is not None:
            self.watchdog.cover(None)
            self.coverage.close()
            self.coverage = None
        if self.kmsg is not None:
            self.kmsg.close()
            self.kmsg = None
        if self.flight is not None:
            self.flight.close()
            self.flight = None

    # -- hangs

    def _hang(self, what: str, seconds: float) -> None:
        hook = self.on_hang
        if hook is not None:
            hook(what, seconds)  # writes a finding and exits
        print(f"migfuzz: hang: {what} on {self.name} did not return within {seconds:.1f} s",
              file=sys.stderr, flush=True)
        os._exit(1)

    # -- re-saving a destination

    def resave(self, index: int) -> bytes | None:
        """Device ``index``'s state as a freshly saved stream, or None if that cannot be had
        without disturbing what the executor tracks.

        Only from STOP, RUNNING or RUNNING_P2P (no session open): SET STOP (the kernel walks
        the path), SET STOP_COPY, read to the end, SET STOP and SET the original state again.
        A device in any other state, protocol v1, or a driver without canonical streams gives
        None ("cannot judge")."""
        if self.proto != "v2" or not self.canonical_streams:
            return None
        dev = self.devices[index]
        err, state = dev.get_state()
        if err or state not in RESAVE_FROM:
            return None
        if dev.set_state(MigState.STOP)[0]:
            return None
        err, fd = dev.set_state(MigState.STOP_COPY)
        if err or fd < 0:
            if fd >= 0:
                dev.close(fd)
            dev.set_state(state)
            return None
        try:
            err, stream, ended = read_stream(dev, fd, chunk=1 << 16)
        finally:
            dev.set_state(MigState.STOP)
            dev.close(fd)
            dev.set_state(state)
        if err or not ended:
            return None
        self.resaves += 1
        return stream
