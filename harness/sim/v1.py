"""v1 front end: a simulated device with a migration region (Linux 5.8-5.17 uAPI).

Where each protocol rule lives:

* ``FIELDS`` / ``field_read`` / ``field_write`` — the region header: offsets, native widths,
  who may write what (``region_read``/``region_write`` reach it through them).
* ``set_state`` — device_state writes: reserved bits, the error state, invalid
  values, and the order in which one write's bit changes take effect (load
  when RESUMING clears, end/open/finish the save session, stop/start).
* ``read_pending`` / ``read_data_offset`` / ``read_data_size`` — the saving
  iteration (pending_bytes acknowledges the staged chunk).
* ``write_data_size`` — the resuming iteration (consume the window).
* ``enter_resuming`` — wipes what an earlier resume left behind.
* ``load_stream`` — deserialize and validate when RESUMING is cleared; a
  failed load fails the write and leaves the state as it was.
"""
from __future__ import annotations

import errno
from operator import methodcaller

from harness.base import bookkeeping
from harness.uapi import V1_ERROR, V1_FIELDS, V1_MASK, V1_RESUMING, V1_RUNNING, V1_SAVING

from . import stream
from .core import DeviceCore, Interleaving, StepCounter
from .uart import Uart

DATA_OFFSET = 0x1000
WINDOW = 0x40
REGION_SIZE = DATA_OFFSET + WINDOW
VALID = frozenset({0, 1, 2, 3, 4})

# (offset, width) -> field name; any other header access is refused.
FIELDS = {(off, size): name for name, (off, size) in V1_FIELDS.items()}
STATE_MASK = (1 << 8 * V1_FIELDS["device_state"][1]) - 1  # what the writable fields' widths hold
DATA_SIZE_MASK = (1 << 8 * V1_FIELDS["data_size"][1]) - 1
# (offset, width) -> the read of that field, (errno, value): a method name, so a bug variant's
# override answers (operator.methodcaller looks it up on the device, in C).
FIELD_READS = {V1_FIELDS[name]: methodcaller(method) for name, method in (
    ("device_state", "read_device_state"), ("reserved", "read_reserved"), ("pending_bytes", "read_pending"),
    ("data_offset", "read_data_offset"), ("data_size", "read_data_size"))}


class V1SimDevice(Interleaving):
    """A migratable device speaking protocol v1 (implements harness.base.V1Device)."""

    uart_class = Uart  # the register block (a bug variant may bring its own)
    validates_stream = True  # its loader checks the stream's checksum

    region_size = REGION_SIZE

    def __init__(self, seed: int = 0):
        self.core = DeviceCore(seed, self.uart_class)
        self.counter = StepCounter()
        self.window = bytearray(WINDOW)
        self.restore_initial()

    @bookkeeping
    def restore_initial(self) -> None:
        self.core.restore_initial()
        self.counter.clear()
        self.state = V1_RUNNING
        self.save = None  # stream.StreamWriter of the current saving session
        self.save_pos = 0
        self.staged = 0  # bytes of the current chunk in the window, not yet acknowledged
        self.resume_buf = bytearray()

    # -- region access -------------------------------------------------------

    def region_read(self, offset: int, size: int) -> tuple[int, bytes]:
        if offset >= DATA_OFFSET:
            return self.read_window(offset - DATA_OFFSET, size)
        err, value = self.field_read(offset, size)
        return (err, b"") if err else (0, value.to_bytes(size, "little"))

    def region_write(self, offset: int, data: bytes) -> tuple[int, int]:
        if offset >= DATA_OFFSET:
            return self.write_window(offset - DATA_OFFSET, data)
        size = len(data)
        err = self.field_write(offset, size, int.from_bytes(data, "little"))
        return (err, 0) if err else (0, size)

    # The header fields as integers (harness.base.V1Device): the runtime's field procedures call
    # these, so a field access builds and parses no bytes. region_read/region_write reach the
    # header through them too, so a bug variant that changes a field overrides one method.

    @bookkeeping  # a table lookup: the reads it picks decide (and an unknown span's EINVAL is the arc's outcome)
    def field_read(self, offset: int, size: int) -> tuple[int, int | None]:
        read = FIELD_READS.get((offset, size))
        return read(self) if read is not None else (errno.EINVAL, None)

    def field_write(self, offset: int, size: int, value: int) -> int:
        name = FIELDS.get((offset, size))
        if name == "device_state":  # cut to the field's width, as a pwrite of its bytes would
            return self.set_state(value & STATE_MASK)
        if name == "data_size":
            return self.write_data_size(value & DATA_SIZE_MASK)
        if name == "reserved":
            return 0  # writes ignored
        return errno.EINVAL  # pending_bytes and data_offset are read-only, other spans refused

    @bookkeeping  # (as V2SimDevice.get_state)
    def read_device_state(self) -> tuple[int, int]:
        return 0, self.state

    @bookkeeping
    def read_reserved(self) -> tuple[int, int]:
        return 0, 0

    # -- device_state ----------------------------------------------------------

    def set_state(self, value: int) -> int:
        cur = self.state
        if value & ~V1_MASK or cur == V1_ERROR:
            return errno.EINVAL
        new = value & V1_MASK
        if new not in VALID:
            return errno.EINVAL
        if new == cur:
            return 0
        # Every step that can fail runs before anything changes: a failed write
        # leaves the device exactly as it was (or, on a hardware error, in 110b).
        err = self.counter.step()
        if err:
            return self.fail_step(err)
        image = None
        if cur & V1_RESUMING and not new & V1_RESUMING:
            err, image = self.load()
            if err:
                return err
        restart = cur & V1_SAVING and new & V1_SAVING and new & V1_RUNNING and not cur & V1_RUNNING
        ends_save = cur & V1_SAVING and (not new & V1_SAVING or restart)
        opens_save = new & V1_SAVING and (not cur & V1_SAVING or restart)
        if opens_save:
            err = self.counter.step()  # buffer allocation
            if err:
                return self.fail_step(err)
        # commit
        if image is not None:
            self.core.load(*image)
        if ends_save:
            self.end_save()
        self.core.running = bool(new & V1_RUNNING)
        if opens_save:
            self.open_save(precopy=bool(new & V1_RUNNING))
        elif new & V1_SAVING and cur & V1_RUNNING and not new & V1_RUNNING:
            self.finish_precopy()
        if new & V1_RESUMING and not cur & V1_RESUMING:
            self.enter_resuming()
        self.state = new
        return 0

    def fail_step(self, err: int) -> int:
        if self.counter.fault_kind == "hwerror":
            self.enter_error()
        return err

    def enter_error(self) -> None:
        self.state = V1_ERROR
        self.core.running = False
        self.end_save()

    def enter_resuming(self) -> None:
        self.resume_buf = bytearray()

    def load(self) -> tuple[int, tuple | None]:
        """Deserialize what was written: (errno, (regs, mem) to commit)."""
        err = self.counter.step()
        if err:
            return self.fail_step(err), None
        try:
            return 0, self.load_stream(self.resume_buf)
        except stream.StreamError as e:
            return e.errno, None

    def load_stream(self, data):
        return stream.load(data)

    # -- saving ------------------------------------------------------------------

    def open_save(self, precopy: bool) -> None:
        core = self.core
        w = stream.StreamWriter(stream.FLAG_PRECOPY if precopy else 0)
        w.pages(stream.ALL_PAGES, core.mem)
        core.dirty = 0
        if not precopy:
            w.regs(self.saved_regs())
            w.uart(self.saved_uart())
            w.end()
        self.save, self.save_pos, self.staged = w, 0, 0

    def finish_precopy(self) -> None:
        core, w = self.core, self.save
        w.pages(core.dirty, core.mem)
        core.dirty = 0
        w.regs(self.saved_regs())
        w.uart(self.saved_uart())
        w.end()

    def saved_regs(self) -> list:
        return self.core.regs

    def saved_uart(self) -> bytes:
        return self.core.uart.state()

    def end_save(self) -> None:
        self.save, self.save_pos, self.staged = None, 0, 0

    def read_pending(self) -> tuple[int, int]:
        if self.save is None:
            return 0, 0
        self.save_pos += self.staged  # reading pending_bytes acknowledges the chunk
        self.staged = 0
        return 0, self.pending()

    def pending(self) -> int:
        queued = len(self.save.buf) - self.save_pos
        if self.state & V1_RUNNING:
            queued += self.core.dirty.bit_count() * stream.PAGE_RECORD_SIZE
        return queued

    def read_data_offset(self) -> tuple[int, int]:
        if self.save is not None and not self.staged:
            err = self.counter.step()
            if err:
                return self.fail_step(err), 0
            self.stage_chunk()
        return 0, self.data_offset()

    @bookkeeping  # a constant (a variant that moves the window overrides it, instrumented in the zoo)
    def data_offset(self) -> int:
        return DATA_OFFSET

    def stage_chunk(self) -> None:
        w = self.save
        if self.save_pos >= len(w.buf) and self.state & V1_RUNNING and self.core.dirty:
            w.pages(self.core.dirty, self.core.mem)
            self.core.dirty = 0
        chunk = w.buf[self.save_pos:self.save_pos + WINDOW]
        self.window[:len(chunk)] = chunk
        self.staged = len(chunk)

    def read_data_size(self) -> tuple[int, int]:
        return 0, (self.staged if self.save is not None else 0)

    def read_window(self, offset: int, size: int) -> tuple[int, bytes]:
        if self.save is None or offset < 0 or size < 0 or offset + size > WINDOW:
            return errno.EINVAL, b""
        return 0, bytes(self.window[offset:offset + size])

    # -- resuming ----------------------------------------------------------------

    def write_window(self, offset: int, data: bytes) -> tuple[int, int]:
        if self.state != V1_RESUMING or offset < 0 or offset + len(data) > WINDOW:
            return errno.EINVAL, 0
        self.window[offset:offset + len(data)] = data
        return 0, len(data)

    def write_data_size(self, size: int) -> int:
        if self.state != V1_RESUMING or size > WINDOW:
            return errno.EINVAL
        err = self.counter.step()
        if err:
            return self.fail_step(err)
        if len(self.resume_buf) + size > stream.MAX_STREAM:
            return errno.ENOMEM
        self.resume_buf += self.window[:size]
        return 0

    # -- device ------------------------------------------------------------------

    def reset(self) -> int:
        self.end_save()
        self.resume_buf = bytearray()
        self.state = V1_RUNNING
        self.core.running = True
        return 0

    def activity(self, seed: int) -> None:
        self.core.activity(seed)

    @bookkeeping
    def digest(self) -> bytes:
        return self.core.digest()

    def live_files(self) -> int:
        return int(self.save is not None)

    def close_device(self) -> None:
        self.reset()

    def reopen(self) -> int:
        """close(2) and open(2) of the device without a reset: sessions dropped, RUNNING (001b)."""
        self.close_device()
        return 0

    def pci_region_size(self, region: int) -> int | None:
        return self.core.pci_region_size(region)

    def reg_read(self, region: int, off: int, size: int) -> tuple[int, bytes]:
        return self.core.reg_read(region, off, size)

    def reg_write(self, region: int, off: int, data: bytes) -> tuple[int, int]:
        return self.core.reg_write(region, off, data)
