"""The simulated device's function: registers, paged memory, dirty tracking.

Both front ends (v1 region, v2 data_fd) migrate the same ``DeviceCore``.  Its
state changes only through :meth:`DeviceCore.activity` while the device runs,
through a successful load, and never otherwise: that is the invariant the
"frozen while stopped" oracle checks through :meth:`digest`.

Also here: the per-device step counter used for fault injection and the
watchdog budget that turns a spinning loop into a hang instead of freezing the
fuzzer.
"""
from __future__ import annotations

import errno
import random
import struct

from harness.base import DeviceHang, bookkeeping

from . import uart

NREGS = 4
NPAGES = 8
PAGE_SIZE = 16
MEM_SIZE = NPAGES * PAGE_SIZE
BYTES_7BIT = 0x7F7F7F7F  # a register value whose every byte has its top bit clear
_REGS_PACK = struct.Struct(f"<{NREGS}I").pack


# The errno the failing step returns for each fault kind (harness.base.FAULT_KINDS).
# "short" is no failure: the data_fd call it hits moves only part of the bytes
# (a legal answer every reader and writer must cope with).
FAULT_ERRNO = {"nomem": errno.ENOMEM, "hwerror": errno.EIO, "timeout": errno.ETIMEDOUT,
               "eintr": errno.EINTR, "short": 0}
# Steps per device call before the watchdog fires (a correct call takes < 50).
STEP_BUDGET = 10_000


# What VFIO_DEVICE_GET_REGION_INFO would report for the device regions (v1's migration region apart).
REGION_SIZES = {uart.UART_REGION: uart.NREGS, uart.CONFIG_REGION: len(uart.CONFIG_SPACE)}

class DeviceCore:
    """The device function being migrated: registers, paged memory, the UART register block."""

    __slots__ = ("regs", "mem", "dirty", "running", "uart", "_initial")

    def __init__(self, seed: int, uart_class=uart.Uart):
        rng = random.Random(seed)
        # Register and memory bytes keep their top bit clear, so device state never has the shape
        # of a kernel address (what the info-leak oracle looks for in what a device hands out).
        self.regs = [rng.getrandbits(32) & BYTES_7BIT for _ in range(NREGS)]
        self.mem = bytearray(b & 0x7F for b in rng.randbytes(MEM_SIZE))
        self.dirty = 0
        self.running = True
        self.uart = uart_class(seed)
        self._initial = (list(self.regs), bytes(self.mem))

    @bookkeeping
    def restore_initial(self) -> None:
        """Back to the power-on state (a fresh device for the next program)."""
        regs, mem = self._initial
        self.regs[:] = regs
        self.mem[:] = mem
        self.dirty = 0
        self.running = True
        self.uart.restore_initial()

    def activity(self, seed: int) -> None:
        """One unit of work: a register update and a memory write, dirtying a page."""
        if not self.running:
            return
        self.work(seed)

    def work(self, seed: int) -> None:
        # Separate from activity() so a bug variant can do work while stopped.
        regs = self.regs
        r = seed % NREGS
        regs[r] = (regs[r] * 0x9E3779B1 + seed + 1) & BYTES_7BIT
        page = (seed >> 2) % NPAGES
        off = page * PAGE_SIZE + (seed >> 5) % PAGE_SIZE
        self.mem[off] = (self.mem[off] + (seed >> 9) + 1) & 0x7F
        self.dirty |= 1 << page

    @bookkeeping
    def digest(self) -> bytes:
        """The exact internal state (small enough to be its own digest)."""
        return _REGS_PACK(*self.regs) + self.mem + self.uart.state()

    def load(self, regs: list, mem: bytes | bytearray, uart_state: bytes) -> None:
        self.regs[:] = regs
        self.mem[:] = mem
        self.uart.restore(uart_state)
        self.dirty = 0

    # -- the register regions (what rdreg/wrreg reach) ---------------------------------

    def pci_region_size(self, region: int) -> int | None:
        return REGION_SIZES.get(region)

    def reg_read(self, region: int, off: int, size: int) -> tuple[int, bytes]:
        """A read of ``size`` bytes at ``off`` of a device region (not the v1 migration region)."""
        if region == uart.UART_REGION:
            if size != 1 or not 0 <= off < uart.NREGS:
                return errno.EINVAL, b""
            return 0, bytes((self.uart.read(off),))
        if region == uart.CONFIG_REGION:
            return self.config_read(off, size)
        return errno.EINVAL, b""

    def config_read(self, off: int, size: int) -> tuple[int, bytes]:
        if size not in (1, 2, 4) or off < 0 or off + size > len(uart.CONFIG_SPACE):
            return errno.EINVAL, b""
        return 0, uart.CONFIG_SPACE[off:off + size]

    def reg_write(self, region: int, off: int, data: bytes) -> tuple[int, int]:
        if region == uart.UART_REGION:
            if len(data) != 1 or not 0 <= off < uart.NREGS:
                return errno.EINVAL, 0
            self.uart.write(off, data[0])
            return 0, 1
        if region == uart.CONFIG_REGION:
            if len(data) not in (1, 2, 4) or off < 0 or off + len(data) > len(uart.CONFIG_SPACE):
                return errno.EINVAL, 0
            return 0, len(data)  # read-only identity bytes: writes are ignored
        return errno.EINVAL, 0


class StepCounter:
    """Counts a device's internal steps; fails the armed one, bounds spinning loops.

    ``arm(nth, kind)`` makes the nth step from now fail with the kind's errno.
    Steps are: each hop of a state change, each file allocation, each chunk of
    data moved, each load."""

    __slots__ = ("fault_at", "fault_errno", "fault_kind", "steps", "budget", "fired", "short")

    def __init__(self):
        self.fault_at = 0
        self.fault_errno = 0
        self.fault_kind = ""
        self.steps = 0
        self.budget = STEP_BUDGET
        self.fired = False
        self.short = False  # the step that fired asks for a short transfer

    @bookkeeping
    def clear(self) -> None:
        self.fault_at = 0
        self.fault_kind = ""
        self.steps = 0
        self.fired = self.short = False

    def arm(self, nth: int, kind: str) -> None:
        self.fault_at = self.steps + max(1, nth)
        self.fault_kind = kind
        self.fault_errno = FAULT_ERRNO[kind]
        self.fired = False

    @bookkeeping
    def step(self) -> int:
        """Advance one step; returns the injected errno or 0."""
        self.steps += 1
        if self.steps == self.fault_at:
            self.fault_at = 0
            self.fired = True
            self.short = self.fault_kind == "short"
            return self.fault_errno
        return 0

    @bookkeeping
    def spin(self, calls: int) -> None:
        if calls > self.budget:
            raise DeviceHang(f"no progress after {calls} iterations")


# ----------------------------------------------------------------------------- races
#
# Two calls of one device at once, deterministically (``Interleaving.race``). Real threads leave
# the interleaving to a scheduler; a fuzzer needs a program that reproduces. So a race op names
# its interleaving, ``sched`` (harness.runtime.RACE_SCHEDS of them), and the device runs it on the
# caller's thread:
#
# * ``sched`` even: call A is the outer call, odd: call B; ``k = sched >> 1``;
# * k = 0: the inner call runs first, then the outer one;
# * k >= 1: the outer call runs, and at its k-th preemption point (``race_hook``: where a driver
#   can lose the CPU, e.g. between an arc's action and the new state being recorded) the inner
#   call runs to completion, nested; an outer call with fewer points: the inner one runs after it.
# * Locks are modelled, not taken: a call that needs the state mutex the outer call holds raises
#   ``Blocked`` before it has done anything, and runs when the outer call unlocks, as a blocked
#   thread would; a reset that comes while the mutex is held is deferred to the unlock and applied
#   there by the holder (the deferred_reset pattern of mlx5vf_state_mutex_unlock() in
#   drivers/vfio/pci/mlx5/main.c, of pds/ and of samples/vfio-mdev/mtty.c). So the correct device
#   is linearizable at every interleaving, and a variant without the pattern is not.
# * Injected faults never fire inside a race (its judge knows no failure): the count toward an
#   armed fault stands still while it runs.
#
# Outside a race this costs nothing but a test per preemption point: the ``state_mutex`` calls get
# their locking wrappers (instance attributes) only while a race runs.


class Blocked(Exception):
    """A racing call needs the state mutex the other call holds: it runs when that one unlocks."""


def state_mutex(method):
    """Marks a device call the driver runs under its state mutex (modelled while a race runs)."""
    method.state_mutex = True
    return method


_MUTEX_CALLS: dict = {}  # device class -> the names of its state_mutex calls


class Interleaving:
    """Runs two calls of a device at once (see the comment above); the base of both front ends.
    The idle values are class attributes: a device pays nothing for them until it races."""

    race_hook = None        # what the outer call's preemption points call
    mutex_held = False
    deferred_reset = False  # a reset came while the mutex was held: its holder applies it
    waiter = None           # the racing call blocked on the mutex, run when it is released
    _locked_calls = None    # locked_calls(), once made

    def lock(self) -> None:
        if self.mutex_held:
            raise Blocked
        self.mutex_held = True

    def unlock(self) -> None:
        while self.deferred_reset:  # applied by the holder, before anyone else gets the mutex
            self.deferred_reset = False
            self.reset_state()
        self.mutex_held = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None:
            waiter()

    def reset_state(self) -> None:
        raise NotImplementedError  # what a reset does to the migration state (the front end's)

    def race(self, fa, fb, sched: int) -> tuple:
        """Run ``fa`` and ``fb`` (each one call of this device, its method looked up as it runs: the
        locking ones are instance attributes meanwhile) at interleaving ``sched``: their answers."""
        calls, outer, k = (fa, fb), sched & 1, sched >> 1
        out = [None, None]
        points = [0]

        def inner():
            out[1 - outer] = calls[1 - outer]()

        def hook():
            points[0] += 1
            if points[0] == k:
                self.race_hook = None
                try:
                    inner()
                except Blocked:
                    self.waiter = inner

        counter = self.counter
        armed, start = counter.fault_at, counter.steps
        counter.fault_at = 0
        wrappers = self.locked_calls() if k else {}
        try:
            if k == 0:
                inner()
                out[outer] = calls[outer]()
                return out[0], out[1]
            for name, call in wrappers.items():
                setattr(self, name, call)  # (not __dict__.update(): that leaves the instance a plain dict, slower)
            self.race_hook = hook
            out[outer] = calls[outer]()
            if points[0] < k:  # fewer preemption points than k: the inner call runs after
                self.race_hook = None
                inner()
        finally:
            for name in wrappers:
                delattr(self, name)  # (not __dict__.pop(), for the same reason)
            self.mutex_held = self.deferred_reset = False
            self.race_hook = self.waiter = None
            if armed:
                counter.fault_at = armed + counter.steps - start
        return out[0], out[1]

    @bookkeeping
    def mutex_calls(self) -> tuple:
        """The names of this device's ``state_mutex`` calls (whichever class of it marks them)."""
        cls = type(self)
        names = _MUTEX_CALLS.get(cls)
        if names is None:
            names = _MUTEX_CALLS[cls] = tuple(sorted({
                name for klass in cls.__mro__ for name, f in vars(klass).items() if getattr(f, "state_mutex", False)}))
        return names

    @bookkeeping
    def locked_calls(self) -> dict:
        """{name: locking wrapper} for this device's ``state_mutex`` calls, made on its first race
        and kept (a race installs them as instance attributes and removes them after)."""
        calls = self._locked_calls
        if calls is None:
            cls = type(self)
            calls = self._locked_calls = {name: self.locked(getattr(cls, name)) for name in self.mutex_calls()}
        return calls

    @bookkeeping
    def locked(self, method):
        """``method`` (of this device's class) as a call that takes the state mutex first."""

        def call(*args):
            self.lock()
            try:
                return method(self, *args)
            finally:
                self.unlock()

        return call
