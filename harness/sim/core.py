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

from harness.base import DeviceHang

NREGS = 4
NPAGES = 8
PAGE_SIZE = 16
MEM_SIZE = NPAGES * PAGE_SIZE
_REGS_PACK = struct.Struct(f"<{NREGS}I").pack


# Fault kinds an armed fault can inject, with the errno the failing step returns.
# "short" is no failure: the data_fd call it hits moves only part of the bytes
# (a legal answer every reader and writer must cope with).
FAULT_KINDS = ("nomem", "hwerror", "timeout", "eintr", "short")
FAULT_ERRNO = {"nomem": errno.ENOMEM, "hwerror": errno.EIO, "timeout": errno.ETIMEDOUT,
               "eintr": errno.EINTR, "short": 0}
# Steps per device call before the watchdog fires (a correct call takes < 50).
STEP_BUDGET = 10_000


class DeviceCore:
    """The device function being migrated."""

    __slots__ = ("regs", "mem", "dirty", "running", "_initial")

    def __init__(self, seed: int):
        rng = random.Random(seed)
        self.regs = [rng.getrandbits(32) for _ in range(NREGS)]
        self.mem = bytearray(rng.randbytes(MEM_SIZE))
        self.dirty = 0
        self.running = True
        self._initial = (list(self.regs), bytes(self.mem))

    def restore_initial(self) -> None:
        """Back to the power-on state (a fresh device for the next program)."""
        regs, mem = self._initial
        self.regs[:] = regs
        self.mem[:] = mem
        self.dirty = 0
        self.running = True

    def activity(self, seed: int) -> None:
        """One unit of work: a register update and a memory write, dirtying a page."""
        if not self.running:
            return
        self.work(seed)

    def work(self, seed: int) -> None:
        # Separate from activity() so a bug variant can do work while stopped.
        regs = self.regs
        r = seed % NREGS
        regs[r] = (regs[r] * 0x9E3779B1 + seed + 1) & 0xFFFFFFFF
        page = (seed >> 2) % NPAGES
        off = page * PAGE_SIZE + (seed >> 5) % PAGE_SIZE
        self.mem[off] = (self.mem[off] + (seed >> 9) + 1) & 0xFF
        self.dirty |= 1 << page

    def digest(self) -> bytes:
        """The exact internal state (small enough to be its own digest)."""
        return _REGS_PACK(*self.regs) + self.mem

    def load(self, regs: list, mem: bytes | bytearray) -> None:
        self.regs[:] = regs
        self.mem[:] = mem
        self.dirty = 0


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

    def step(self) -> int:
        """Advance one step; returns the injected errno or 0."""
        self.steps += 1
        if self.steps == self.fault_at:
            self.fault_at = 0
            self.fired = True
            self.short = self.fault_kind == "short"
            return self.fault_errno
        return 0

    def spin(self, calls: int) -> None:
        if calls > self.budget:
            raise DeviceHang(f"no progress after {calls} iterations")
