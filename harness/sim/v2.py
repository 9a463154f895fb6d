"""v2 front end: a simulated device shaped like a real VFIO variant driver.

Where each protocol rule lives:

* ``vfio_mig_get_next_state`` — the kernel core helper: the next-hop table
  (``FSM_NEXT``) and the skip loop over unsupported states.
* ``V2SimDevice.set_state`` — the driver's loop: ask the helper for the next
  hop, run one arc, repeat; return the data_fd of the last hop.
* ``ARC_ACTIONS`` + the ``arc_*`` methods — what each single arc does (open a
  saving or resuming file, stop, finish the stream, load).
* ``MigFile`` + ``read``/``write``/``seek``/``precopy_info``/``close`` — the
  data_fd rules: direction (EBADF), no seeking (ESPIPE), disabled after the
  session ends or reset (ENODEV), temporary end of pre-copy (ENOMSG).
* ``feature`` — VFIO_DEVICE_FEATURE framing checks of the core.
* ``reset`` — back to RUNNING, every file disabled.

Bug variants (``harness/sim/bugs.py``) override exactly one of these methods.
"""
from __future__ import annotations

import errno

from harness.base import bookkeeping
from harness.uapi import (
    FEATURE_GET,
    FEATURE_MASK,
    FEATURE_MIG_DATA_SIZE,
    FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION,
    FEATURE_PROBE,
    FEATURE_SET,
    MigFlag,
    MigState,
    packer,
    vfio_device_feature_mig_state,
    vfio_device_feature_migration,
)

from . import stream
from .core import DeviceCore, Interleaving, StepCounter, state_mutex
from .uart import Uart

ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P = (int(s) for s in MigState)
SC, P2P, PRE = int(MigFlag.STOP_COPY), int(MigFlag.P2P), int(MigFlag.PRE_COPY)

# The kernel's vfio_from_fsm_table: FSM_NEXT[cur][new] is the first hop from
# cur toward new for a device with every optional feature.
FSM_NEXT = (
    # to: ERROR  STOP  RUNNING  STOP_COPY  RESUMING  RUNNING_P2P  PRE_COPY  PRE_COPY_P2P
    (ERROR, ERROR, ERROR, ERROR, ERROR, ERROR, ERROR, ERROR),                          # from ERROR
    (ERROR, STOP, RUNNING_P2P, STOP_COPY, RESUMING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P),  # STOP
    (ERROR, RUNNING_P2P, RUNNING, RUNNING_P2P, RUNNING_P2P, RUNNING_P2P, PRE_COPY, RUNNING_P2P),  # RUNNING
    (ERROR, STOP, STOP, STOP_COPY, STOP, STOP, ERROR, ERROR),                          # STOP_COPY
    (ERROR, STOP, STOP, STOP, RESUMING, STOP, STOP, STOP),                             # RESUMING
    (ERROR, STOP, RUNNING, STOP, STOP, RUNNING_P2P, RUNNING, PRE_COPY_P2P),            # RUNNING_P2P
    (ERROR, RUNNING, RUNNING, PRE_COPY_P2P, RUNNING, RUNNING, PRE_COPY, PRE_COPY_P2P),  # PRE_COPY
    (ERROR, RUNNING_P2P, RUNNING_P2P, STOP_COPY, RUNNING_P2P, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P),  # PRE_COPY_P2P
)
# Flags a state needs; ERROR needs every bit, so it is never "supported".
STATE_FLAGS = (0xFFFFFFFF, SC, SC, SC, SC, SC | P2P, SC | PRE, SC | P2P | PRE)


def vfio_mig_get_next_state(flags: int, cur: int, new: int, counter: StepCounter) -> int:
    """The next hop from cur toward new, or -EINVAL (the kernel helper, with its 2026 fix)."""
    if not 0 <= cur < 8 or STATE_FLAGS[cur] & flags != STATE_FLAGS[cur]:
        return -errno.EINVAL  # the kernel WARNs here: the driver is in a state it cannot be in
    if not 0 <= new < 8 or STATE_FLAGS[new] & flags != STATE_FLAGS[new]:
        return -errno.EINVAL
    nxt = FSM_NEXT[cur][new]
    spins = 0
    # Skip hops into unsupported states; stop at the ERROR sentinel (blocked arc).
    while nxt != ERROR and STATE_FLAGS[nxt] & flags != STATE_FLAGS[nxt]:
        nxt = FSM_NEXT[nxt][new]
        spins += 1
        counter.spin(spins)
    return nxt if nxt != ERROR else -errno.EINVAL


# What each single arc does (the driver's step function); an arc missing here
# is one the driver does not implement and refuses.
ARC_ACTIONS = {
    (STOP, RUNNING): "start", (STOP, RUNNING_P2P): "start",
    (RUNNING, STOP): "stop", (RUNNING_P2P, STOP): "stop",
    (RUNNING, RUNNING_P2P): "nop", (RUNNING_P2P, RUNNING): "nop",
    (PRE_COPY, PRE_COPY_P2P): "nop", (PRE_COPY_P2P, PRE_COPY): "nop",
    (RUNNING, PRE_COPY): "open_precopy", (RUNNING_P2P, PRE_COPY_P2P): "open_precopy",
    (PRE_COPY, RUNNING): "end_save", (PRE_COPY_P2P, RUNNING_P2P): "end_save",
    (STOP_COPY, STOP): "end_save",
    (PRE_COPY, STOP_COPY): "finish_precopy", (PRE_COPY_P2P, STOP_COPY): "finish_precopy",
    (STOP, STOP_COPY): "open_stopcopy",
    (STOP, RESUMING): "open_resume",
    (RESUMING, STOP): "load",
}

_MIG_STATE = packer(vfio_device_feature_mig_state)
_MIGRATION = packer(vfio_device_feature_migration)
_U64 = _MIGRATION  # one u64 field, same as vfio_device_feature_mig_data_size


class MigFile:
    """A migration file behind a data_fd (saving: read-only; resuming: write-only)."""

    __slots__ = ("saving", "disabled", "writer", "buf", "pos", "initial_end")

    @bookkeeping
    def __init__(self, saving: bool):
        self.saving = saving
        self.disabled = False
        self.writer = None  # saving: stream.StreamWriter
        self.buf = bytearray()  # resuming: what was written
        self.pos = 0
        self.initial_end = 0


class V2SimDevice(Interleaving):
    """A migratable device speaking protocol v2 (implements harness.base.V2Device).

    The calls a driver runs under its state mutex are marked ``state_mutex``; ``race_hook`` marks
    where they can be preempted (both only matter while two calls race: harness/sim/core.py)."""

    uart_class = Uart  # the register block (a bug variant may bring its own)
    validates_stream = True  # its loader checks the stream's checksum (an mtty-like variant does not)

    def __init__(self, flags: int = SC | P2P | PRE, seed: int = 0):
        self.flags = flags
        self.core = DeviceCore(seed, self.uart_class)
        self.counter = StepCounter()
        self.state = RUNNING
        self.save_file: MigFile | None = None
        self.resume_file: MigFile | None = None
        self.fds: dict[int, MigFile] = {}
        self.next_fd = 3
        self.lost_files: list[MigFile] = []  # files the driver lost track of (bug seams)
        self.next_hops: dict = {}  # (cur, new) -> vfio_mig_get_next_state(), memoized
        # arc -> bound action, so a bug variant's override of one arc_* method applies
        self.arc_actions = {arc: getattr(self, "arc_" + name) for arc, name in ARC_ACTIONS.items()}

    @bookkeeping
    def restore_initial(self) -> None:
        """Power-on state, for reuse between programs."""
        self.core.restore_initial()
        self.counter.clear()
        self.state = RUNNING
        self.save_file = self.resume_file = None
        self.fds.clear()
        self.next_fd = 3
        self.lost_files.clear()

    # -- the FSM -----------------------------------------------------------

    @bookkeeping
    def next_state(self, cur: int, new: int) -> int:
        # The helper is a pure function of (flags, cur, new): memoized per device so
        # the fuzzer pays for its instrumented branches once per pair, not per call.
        key = (cur, new)
        nxt = self.next_hops.get(key)
        if nxt is None:
            nxt = self.next_hops[key] = vfio_mig_get_next_state(self.flags, cur, new, self.counter)
        return nxt

    @bookkeeping
    @state_mutex
    def get_state(self) -> tuple[int, int]:
        return 0, self.state

    @state_mutex
    def set_state(self, new: int) -> tuple[int, int]:
        if self.state == new:
            return 0, -1  # the driver's loop runs while cur != new
        fd = -1
        hook = self.race_hook
        if hook is not None:
            hook()  # preemption point: the mutex is held, nothing done yet
        while self.state != new:  # re-read every hop, as the drivers' loops do
            cur = self.state
            nxt = self.next_state(cur, new)
            if nxt < 0:
                return -nxt, -1
            if fd != -1:
                return errno.EINVAL, -1  # the kernel WARNs: an fd came before the last hop
            err, file = self.step(cur, nxt)
            if err:
                return err, -1
            if hook is not None:
                hook()  # preemption point: the arc ran, its new state is not recorded yet
            self.state = nxt
            if file is not None:
                fd = self.install(file)
            if hook is not None:
                hook()  # preemption point: between hops
        return 0, fd

    def step(self, cur: int, nxt: int) -> tuple[int, MigFile | None]:
        """Run one arc: (errno, new file or None)."""
        action = self.arc_actions.get((cur, nxt))
        if action is None:
            return errno.EINVAL, None
        err = self.counter.step()
        if err:
            return self.fail_step(err), None
        return action()

    def fail_step(self, err: int) -> int:
        """An internal step failed: a hardware error leaves the device in ERROR."""
        if self.counter.fault_kind == "hwerror":
            self.enter_error()
        return err

    def enter_error(self) -> None:
        self.state = ERROR
        self.core.running = False
        self.disable_files()

    @bookkeeping
    def install(self, file: MigFile) -> int:
        fd = self.next_fd
        self.next_fd += 1
        self.fds[fd] = file
        return fd

    def new_file(self, saving: bool) -> tuple[int, MigFile | None]:
        err = self.counter.step()  # anon_inode_getfile / buffer allocation
        if err:
            return self.fail_step(err), None
        return 0, MigFile(saving)

    # -- arc actions ---------------------------------------------------------

    @bookkeeping
    def arc_nop(self):
        return 0, None

    def arc_start(self):
        self.core.running = True
        return 0, None

    def arc_stop(self):
        self.core.running = False
        return 0, None

    def arc_open_precopy(self):
        err, f = self.new_file(saving=True)
        if err:
            return err, None
        core = self.core
        f.writer = stream.StreamWriter(stream.FLAG_PRECOPY)
        f.writer.pages(stream.ALL_PAGES, core.mem)
        f.initial_end = len(f.writer.buf)
        core.dirty = 0
        self.save_file = f
        return 0, f

    def arc_open_stopcopy(self):
        err, f = self.new_file(saving=True)
        if err:
            return err, None
        core = self.core
        f.writer = stream.StreamWriter()
        f.writer.pages(stream.ALL_PAGES, core.mem)
        f.writer.regs(self.saved_regs())
        f.writer.uart(self.saved_uart())
        f.writer.end()
        f.initial_end = len(f.writer.buf)
        core.dirty = 0
        self.save_file = f
        return 0, f

    def arc_finish_precopy(self):
        core = self.core
        core.running = False
        w = self.save_file.writer
        w.pages(core.dirty, core.mem)
        core.dirty = 0
        w.regs(self.saved_regs())
        w.uart(self.saved_uart())
        w.end()
        return 0, None

    def saved_regs(self) -> list:
        return self.core.regs

    def saved_uart(self) -> bytes:
        return self.core.uart.state()

    def arc_end_save(self):
        if self.save_file is not None:
            self.save_file.disabled = True
            self.save_file = None
        return 0, None

    def arc_open_resume(self):
        err, f = self.new_file(saving=False)
        if err:
            return err, None
        self.resume_file = f
        return 0, f

    def arc_load(self):
        f = self.resume_file
        try:
            image = self.load_stream(f.buf)
        except stream.StreamError as e:
            return e.errno, None  # stays RESUMING: aborting needs a reset
        self.core.load(*image)
        f.disabled = True
        self.resume_file = None
        return 0, None

    def load_stream(self, data):
        return stream.load(data)

    # -- data_fd ---------------------------------------------------------------

    @state_mutex
    def read(self, fd: int, n: int) -> tuple[int, bytes]:
        f = self.fds.get(fd)
        if f is None or not f.saving:
            return errno.EBADF, b""
        if f.disabled:
            return errno.ENODEV, b""
        err = self.counter.step()
        if err:
            return err, b""
        if self.counter.short:
            n = n // 2 if n > 1 else n
        if self.race_hook is not None:
            self.race_hook()  # preemption point: the file checked, its data not copied yet
        return self.read_file(f, n)

    def read_file(self, f: MigFile, n: int) -> tuple[int, bytes]:
        buf = f.writer.buf
        if f.pos >= len(buf):
            if self.state not in (PRE_COPY, PRE_COPY_P2P):
                return 0, b""  # end of stream
            if not self.core.dirty:
                return errno.ENOMSG, b""  # temporary end of pre-copy data
            f.writer.pages(self.core.dirty, self.core.mem)
            self.core.dirty = 0
        chunk = bytes(buf[f.pos:f.pos + n])
        f.pos += len(chunk)
        return 0, chunk

    @state_mutex
    def write(self, fd: int, data: bytes) -> tuple[int, int]:
        f = self.fds.get(fd)
        if f is None or f.saving:
            return errno.EBADF, 0
        if f.disabled:
            return errno.ENODEV, 0
        err = self.counter.step()
        if err:
            return err, 0
        if self.counter.short:
            data = data[:max(1, len(data) // 2)]
        if self.race_hook is not None:
            self.race_hook()  # preemption point: the file checked, the data not taken yet
        return self.write_file(f, data)

    def write_file(self, f: MigFile, data: bytes) -> tuple[int, int]:
        end = f.pos + len(data)
        if end > stream.MAX_STREAM:
            return errno.ENOMEM, 0
        f.buf[f.pos:end] = data
        f.pos = end
        return 0, len(data)

    def seek(self, fd: int) -> int:
        return errno.ESPIPE if fd in self.fds else errno.EBADF

    @state_mutex
    def precopy_info(self, fd: int) -> tuple[int, int, int]:
        f = self.fds.get(fd)
        if f is None:
            return errno.EBADF, 0, 0
        if not f.saving:
            return errno.ENOTTY, 0, 0
        if f.disabled:
            return errno.ENODEV, 0, 0
        if self.state not in (PRE_COPY, PRE_COPY_P2P):
            return errno.EINVAL, 0, 0
        if self.race_hook is not None:
            self.race_hook()  # preemption point: the state checked, the sizes not read yet
        initial, dirty = self.precopy_sizes(f)
        return 0, initial, dirty

    def precopy_sizes(self, f: MigFile) -> tuple[int, int]:
        queued = len(f.writer.buf) - max(f.pos, f.initial_end)
        initial = max(0, f.initial_end - f.pos)
        return initial, queued + self.core.dirty.bit_count() * stream.PAGE_RECORD_SIZE

    def close(self, fd: int) -> int:
        return 0 if self.fds.pop(fd, None) is not None else errno.EBADF

    @bookkeeping
    def holds_data_fd(self, fd: int) -> bool:
        return fd in self.fds

    def data_size(self) -> tuple[int, int]:
        return 0, stream.FULL_SIZE

    # -- device ------------------------------------------------------------------

    def disable_files(self) -> None:
        for f in (self.save_file, self.resume_file):
            if f is not None:
                f.disabled = True
        self.save_file = self.resume_file = None

    def reset(self) -> int:
        """VFIO_DEVICE_RESET (the driver's reset_done): back to RUNNING, every file disabled. While a
        racing call holds the state mutex the reset is deferred: the holder applies it as it
        unlocks (the deferred_reset pattern, ``Interleaving.unlock``)."""
        if self.mutex_held:
            self.deferred_reset = True
            return 0
        self.reset_state()
        return 0

    def reset_state(self) -> None:
        self.disable_files()
        self.state = RUNNING
        self.core.running = True

    def activity(self, seed: int) -> None:
        self.core.activity(seed)

    @bookkeeping
    def digest(self) -> bytes:
        return self.core.digest()

    def live_files(self) -> int:
        live = 0
        if self.save_file is not None and not self.save_file.disabled:
            live += 1
        if self.resume_file is not None and not self.resume_file.disabled:
            live += 1
        for f in self.lost_files:
            live += not f.disabled
        return live

    def close_device(self) -> None:
        self.disable_files()
        self.fds.clear()

    @state_mutex
    def reopen(self) -> int:
        """close(2) the device (and its data_fds) and open it again, without a reset: opening
        puts the migration state back to RUNNING (open_device); the device function keeps its state."""
        self.close_device()
        if self.race_hook is not None:
            self.race_hook()  # preemption point: closed, not open again yet
        self.state = RUNNING
        self.core.running = True
        return 0

    def pci_region_size(self, region: int) -> int | None:
        return self.core.pci_region_size(region)

    def reg_read(self, region: int, off: int, size: int) -> tuple[int, bytes]:
        return self.core.reg_read(region, off, size)

    def reg_write(self, region: int, off: int, data: bytes) -> tuple[int, int]:
        return self.core.reg_write(region, off, data)

    def feature(self, flags: int, payload: bytes, argsz: int | None = None) -> tuple[int, bytes]:
        """VFIO_DEVICE_FEATURE as the core (vfio_ioctl_device_feature) frames it."""
        if argsz is None:
            argsz = 8 + len(payload)
        if argsz < 8 or flags & ~(FEATURE_MASK | FEATURE_GET | FEATURE_SET | FEATURE_PROBE):
            return errno.EINVAL, b""
        op = flags & (FEATURE_GET | FEATURE_SET)
        if op == FEATURE_GET | FEATURE_SET and not flags & FEATURE_PROBE:
            return errno.EINVAL, b""
        index = flags & FEATURE_MASK
        supported_ops = {FEATURE_MIGRATION: FEATURE_GET, FEATURE_MIG_DEVICE_STATE: FEATURE_GET | FEATURE_SET,
                         FEATURE_MIG_DATA_SIZE: FEATURE_GET}.get(index)
        if supported_ops is None:
            return errno.ENOTTY, b""
        # vfio_check_feature()
        if op & ~supported_ops:
            return errno.EINVAL, b""
        if flags & FEATURE_PROBE:
            return 0, b""
        if not op or argsz - 8 < 8:
            return errno.EINVAL, b""
        if index == FEATURE_MIGRATION:
            return 0, _MIGRATION.pack(self.flags)
        if index == FEATURE_MIG_DATA_SIZE:
            return 0, _U64.pack(self.data_size()[1])
        if op == FEATURE_GET:
            return 0, _MIG_STATE.pack(self.get_state()[1], -1)
        requested, _ = _MIG_STATE.unpack_from(payload.ljust(8, b"\0"))
        err, fd = self.set_state(requested)
        return err, _MIG_STATE.pack(requested, fd)
