"""The bug zoo: simulated devices with one realistic defect each.

Each variant is a small mixin that overrides exactly one seam of the correct
device (``V1SimDevice`` / ``V2SimDevice``); ``device_class(proto, bug)`` puts it
in front of the device class.  Every entry names the real defect it is modelled
on (a kernel commit, a uAPI rule, a mailing-list thread) and the finding kind that should catch it.
"""
from __future__ import annotations

import errno
from typing import NamedTuple

from harness.uapi import V1_ERROR, V1_SAVING

from . import stream, uart
from .core import NPAGES, PAGE_SIZE
from .v1 import REGION_SIZE, WINDOW, V1SimDevice
from .v2 import (
    ERROR,
    FSM_NEXT,
    PRE_COPY,
    PRE_COPY_P2P,
    RESUMING,
    RUNNING,
    RUNNING_P2P,
    STATE_FLAGS,
    STOP,
    STOP_COPY,
    MigFile,
    V2SimDevice,
)

# What lies next to the device's buffers in its memory: kernel pointers (direct map, text, a
# list head pointing at itself), the way a kmalloc neighbour or a stack frame would look. A
# correct device never hands any of it out.
DEVICE_INTERNAL = b"".join(v.to_bytes(8, "little") for v in (
    0xFFFF888003A5C140, 0xFFFF888003A5C140, 0xFFFFFFFF81A2B3C4, 0x0000000000000001,
    0xFFFF88800412E600, 0xFFFFFFFFC0A81F20, 0xFFFF888003A5C180, 0x00000000DEADBEEF))


class Bug(NamedTuple):
    proto: str
    mixin: type
    description: str
    modelled_on: str
    finding: str  # the finding kind expected to catch it


# ----------------------------------------------------------------------------- v1


class V1Accept101:
    def set_state(self, value):
        if value == 0b101 and self.state != V1_ERROR:
            self.state = value
            return 0
        return super().set_state(value)


class V1Accept111:
    def set_state(self, value):
        if value == 0b111 and self.state != V1_ERROR:
            self.state = value
            return 0
        return super().set_state(value)


class V1ErrorWritable:
    def set_state(self, value):
        if value == V1_ERROR:
            self.state = V1_ERROR
            self.core.running = False
            return 0
        return super().set_state(value)


class V1ResumeNoWipe:
    def enter_resuming(self):
        pass  # keeps whatever an earlier resume session wrote


class V1DeserializeEarly:
    def write_data_size(self, size):
        err = super().write_data_size(size)
        if not err:
            _apply_complete_pages(self.core.mem, self.resume_buf)
        return err


def _apply_complete_pages(mem, data) -> None:
    """Load every complete page record found so far (a streaming loader)."""
    pos = stream.HEADER_SIZE
    while pos + 3 <= len(data):
        tag, length = data[pos], int.from_bytes(data[pos + 1:pos + 3], "little")
        body = pos + 3
        if body + length > len(data):
            return
        if tag == stream.TAG_PAGE and length == 2 + PAGE_SIZE:
            index = int.from_bytes(data[body:body + 2], "little") % NPAGES
            mem[index * PAGE_SIZE:(index + 1) * PAGE_SIZE] = data[body + 2:body + length]
        pos = body + length


class V1StopNotFrozen:
    def activity(self, seed):
        self.core.work(seed)  # works even while stopped


class V1PendingNeverZero:
    def pending(self):
        left = super().pending()
        return left if left or self.state != V1_SAVING else 1


class V1DataOffsetOob:
    def data_offset(self):
        return REGION_SIZE - 8  # the window runs past the end of the region


class V1FailedWriteThirdState:
    def set_state(self, value):
        err = super().set_state(value)
        if err and self.state != V1_ERROR:
            self.state = 0b000  # neither the old state nor 110b
            self.core.running = False
        return err


# ----------------------------------------------------------------------------- v2


class V2PrecopyArcHang:
    def next_state(self, cur, new):
        flags = self.flags
        if STATE_FLAGS[cur] & flags != STATE_FLAGS[cur] or not 0 <= new < 8 \
                or STATE_FLAGS[new] & flags != STATE_FLAGS[new]:
            return -errno.EINVAL
        nxt = FSM_NEXT[cur][new]
        spins = 0
        while STATE_FLAGS[nxt] & flags != STATE_FLAGS[nxt]:  # before the fix: no ERROR exit
            nxt = FSM_NEXT[nxt][new]
            spins += 1
            self.counter.spin(spins)
        return nxt if nxt != ERROR else -errno.EINVAL


class V2FdAfterReset:
    def reset(self):
        self.save_file = self.resume_file = None  # forgets the files without disabling them
        self.state = RUNNING
        self.core.running = True
        return 0


class V2ResumeIgnoresFpos:
    def write_file(self, f, data):
        f.buf[0:len(data)] = data  # always at offset 0
        f.pos += len(data)
        return 0, len(data)


class V2SaveFieldSwap:
    def saved_regs(self):
        regs = list(self.core.regs)
        r = regs[1]
        regs[1] = (r >> 16 | r << 16) & 0xFFFFFFFF  # halves taken the wrong way round
        return regs


class V2PrecopyDirtyUnderreport:
    def precopy_sizes(self, f):
        initial = max(0, f.initial_end - f.pos)
        return initial, self.core.dirty.bit_count() * stream.PAGE_RECORD_SIZE  # queued bytes ignored


class V2RejectLargeState:
    def write_file(self, f, data):
        if f.pos + len(data) > stream.FULL_SIZE:  # an arbitrary cap at the size estimate
            return errno.ENOMEM, 0
        return super().write_file(f, data)


class V2ResetNotRunning:
    def reset(self):
        super().reset()
        self.state = STOP
        self.core.running = False
        return 0


class V2FailedArcWrongState:
    def set_state(self, new):
        cur = self.state
        err, fd = super().set_state(new)
        if err and self.counter.fired and self.state != ERROR:
            # the error unwind restores a stale cached state: one this SET never visited
            visited = {cur, new, self.state}
            nxt = cur
            while 0 <= new < 8 and nxt != new:
                nxt = self.next_state(nxt, new)
                if nxt < 0:
                    break
                visited.add(nxt)
            stale = [s for s in (STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P)
                     if s not in visited and STATE_FLAGS[s] & self.flags == STATE_FLAGS[s]]
            if stale:
                self.state = stale[0]
        return err, fd


class V2FdLeakOnError:
    def new_file(self, saving):
        f = MigFile(saving)  # allocated before the step that can fail ...
        err = self.counter.step()
        if err:
            self.lost_files.append(f)  # ... and never released on failure
            return self.fail_step(err), None
        return 0, f


class V2P2pArcMissing:
    def step(self, cur, nxt):
        if (cur, nxt) == (RUNNING, RUNNING_P2P):
            return errno.EINVAL, None
        return super().step(cur, nxt)


class V2StreamLengthTrusted:
    def load_stream(self, data):
        pos = stream.HEADER_SIZE
        while pos + 3 <= len(data):  # walk the declared record lengths to the end record
            tag, length = data[pos], int.from_bytes(data[pos + 1:pos + 3], "little")
            if tag == stream.TAG_END:
                return stream.load(data[:pos + 3 + length])  # ignores what follows
            pos += 3 + length
        return stream.load(data)


class V2EnomsgInStopCopy:
    def read_file(self, f, n):
        err, data = super().read_file(f, n)
        if not err and not data and self.state == STOP_COPY:
            return errno.ENOMSG, b""
        return err, data


class V2FdAliveAfterSessionEnd:
    def arc_end_save(self):
        self.save_file = None  # the file is dropped but never disabled
        return 0, None


class V2PrecopyInfoInStopCopy:
    def precopy_info(self, fd):
        f = self.fds.get(fd)
        if f is not None and f.saving and not f.disabled and self.state == STOP_COPY:
            return (0, *self.precopy_sizes(f))
        return super().precopy_info(fd)


class V2ErrorRequestable:
    def set_state(self, new):
        if new == ERROR and self.state != ERROR:
            self.enter_error()
            return 0, -1
        return super().set_state(new)


class V2ErrPtrOnAllocFailure:
    def new_file(self, saving):
        err = self.counter.step()
        if err:
            return 0, -err  # the error pointer is returned as if it were a file
        return 0, MigFile(saving)


class V2ResumeNoValidate:
    def load_stream(self, data):
        try:
            return stream.load(data)
        except stream.StreamError:
            if len(data) < stream.HEADER_SIZE:
                raise
            mem = bytearray(self.core.mem)
            _apply_complete_pages(mem, data)
            return list(self.core.regs), mem, self.core.uart.state()  # loads whatever pages it finds


class V1ReadOnlyFieldWritable:
    def field_write(self, offset, size, value):
        if (offset, size) == (24, 8) and self.state & V1_SAVING and self.save is not None:
            self.staged = value  # data_size while saving: taken, not refused
            return 0
        return super().field_write(offset, size, value)


class V1PendingGrows:
    def pending(self):
        left = super().pending()
        tail = stream.REGS_RECORD_SIZE + stream.UART_RECORD_SIZE + stream.END_RECORD_SIZE + WINDOW
        if self.state == V1_SAVING and left > tail:
            return left - tail  # the estimate leaves the trailing records out until it reaches them
        return left


class V2StateSurvivesReopen:
    def reopen(self):
        state = self.state
        self.close_device()  # the files are disabled ...
        self.state = state  # ... but the migration state stays where the last user left it
        self.core.running = state in (RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P)
        return 0


class UninitializedRx(uart.Uart):
    def empty_read(self):
        # The value the read handler never set: whatever the buffer held before.
        return DEVICE_INTERNAL[(self.head * 5 + self.regs[uart.SCR]) % len(DEVICE_INTERNAL)]


class V2RxUninitialized:
    uart_class = UninitializedRx


class V2ConfigOobRead:
    def reg_read(self, region, off, size):
        if region == uart.CONFIG_REGION and size in (1, 2, 4, 8) and off >= len(uart.CONFIG_SPACE):
            at = off - len(uart.CONFIG_SPACE)  # no bound on the offset: the memory after the config space
            return 0, (DEVICE_INTERNAL * 16)[at:at + size]
        return super().reg_read(region, off, size)


class V2RegisterNotMigrated:
    def saved_uart(self):
        state = bytearray(super().saved_uart())
        state[uart.SCR] = 0  # the scratch register is not part of the saved state
        return bytes(state)


class V2FailedWriteCounted:
    def write_file(self, f, data):
        start = f.pos
        err, n = super().write_file(f, data)
        if not err and start < stream.HEADER_SIZE <= f.pos and not stream.header_ok(f.buf):
            return errno.EFAULT, 0  # the header is refused, but its bytes stay and f_pos moved on
        return err, n

    def load_stream(self, data):
        return stream.load(data, check_header=False)  # "magic and version already tested by the write"


class V2EmptySessionLoads:
    def load_stream(self, data):
        if not data:
            core = self.core
            return list(core.regs), bytearray(core.mem), core.uart.state()  # nothing to load: "success"
        return super().load_stream(data)


def _trusted(_raw) -> None:
    """A loader's UART check that checks nothing: the saved port is copied as it is."""


def _port_memory(u: uart.Uart) -> bytes:
    """The FIFO and what lies after it in the device's memory (the port's other fields, then the
    driver's internals), as far as a u8 index reaches."""
    return bytes(u.fifo) + u.state()[uart.NREGS + uart.FIFO_SIZE:] + DEVICE_INTERNAL * 4


class PrimingUart(uart.Uart):
    __slots__ = ("rhr",)

    def restore(self, raw) -> None:
        super().restore(raw)
        # the receive holding register gets the next queued byte: fifo[tail], the index as loaded
        self.rhr = self.fifo[self.tail] if self.head != self.tail else uart.IDLE


class V2UartTailTrusted:
    # An mtty-like device: its loader checks the header (magic, version, sizes) and nothing after it,
    # no checksum (so a damaged stream is not its defect) and no FIFO index.
    validates_stream = False
    uart_class = PrimingUart

    def load_stream(self, data):
        return stream.load(data, check_uart=_trusted, check_sum=False)


class V2UartTailTrustedCrc:
    uart_class = PrimingUart

    def load_stream(self, data):
        return stream.load(data, check_uart=_trusted)  # header and checksum checked: the indices are not


class UncheckedTailUart(uart.Uart):
    def read(self, off: int) -> int:
        if off == uart.RX and not self.dlab and self.head != self.tail:  # the FIFO is not empty
            value = _port_memory(self)[self.tail]  # fifo[tail], with tail as loaded
            self.packed = None
            self.tail = (self.tail + 1) & (uart.FIFO_SIZE - 1)
            self.count = (self.count - 1) & 0xFF
            return value
        return super().read(off)


class V2FifoTailOobRead:
    validates_stream = False  # mtty-like, as V2UartTailTrusted
    uart_class = UncheckedTailUart

    def load_stream(self, data):
        return stream.load(data, check_uart=_trusted, check_sum=False)


# mtty's struct mdev_state after s[0].rxtx.fifo (x86-64, 6.12): the migration state, a 4-byte
# enum, starts 0x7c bytes past fifo[0] (and state_mutex 0x80 past it).
STATE_PAST_FIFO = 0x7C


class UncheckedHeadUart(uart.Uart):
    __slots__ = ("spilled",)

    def write(self, off: int, value: int) -> None:
        if off == uart.RX and not self.dlab and self.count < uart.FIFO_SIZE and self.head >= uart.FIFO_SIZE:
            # fifo[head] = value, with head as loaded: past the FIFO, for the device to place
            self.spilled = (self.head, value)
            self.packed = None
            self.head = (self.head + 1) & (uart.FIFO_SIZE - 1)
            self.count += 1
            self.overrun = False
            return
        super().write(off, value)


class V2FifoHeadOobWrite:
    validates_stream = False  # mtty-like, as V2UartTailTrusted
    uart_class = UncheckedHeadUart

    def reg_write(self, region, off, data):
        port = self.core.uart
        port.spilled = None
        result = super().reg_write(region, off, data)
        if port.spilled is not None:
            at, value = port.spilled
            byte = at - STATE_PAST_FIFO
            if 0 <= byte < 4:  # the byte lands in the migration state; elsewhere in what GET cannot see
                self.state = self.state & ~(0xFF << 8 * byte) | value << 8 * byte
        return result

    def load_stream(self, data):
        return stream.load(data, check_uart=_trusted, check_sum=False)


class V2ResetNotDeferred:
    def reset(self):
        # reset_done() without the deferred_reset flag: back to RUNNING and the files disabled at once,
        # even while a SET holds the state mutex - which carries on with the file it holds and then
        # records the state it was heading for
        for f in (self.save_file, self.resume_file):
            if f is not None:
                f.disabled = True
        self.state = RUNNING
        self.core.running = True
        return 0


BUGS = {
    "v1-accept-101": Bug(
        "v1", V1Accept101,
        "device_state 101b (RESUMING|RUNNING) accepted",
        "VFIO_DEVICE_STATE_VALID() in include/uapi/linux/vfio.h (5.8-5.17); A. Williamson, \"vfio: Update/Clarify "
        "migration uAPI\" RFC, Dec 2021",
        "accepted-invalid"),
    "v1-accept-111": Bug(
        "v1", V1Accept111,
        "device_state 111b accepted",
        "VFIO_DEVICE_STATE_VALID() in include/uapi/linux/vfio.h (5.8-5.17)",
        "accepted-invalid"),
    "v1-error-writable": Bug(
        "v1", V1ErrorWritable,
        "the error state 110b accepted from the user",
        "include/uapi/linux/vfio.h (5.8-5.17): 110b is reported by the driver only; libvfio-user's v1 table "
        "accepted it",
        "accepted-invalid"),
    "v1-resume-no-wipe": Bug(
        "v1", V1ResumeNoWipe,
        "entering RESUMING keeps old buffer bytes",
        "kvm@vger thread on the v1 semantics (Dec 2021): the driver enters RESUMING with no preconditions",
        "valid-stream-rejected"),
    "v1-deserialize-early": Bug(
        "v1", V1DeserializeEarly,
        "loads pages on each data_size write, not when RESUMING clears",
        "include/uapi/linux/vfio.h (5.8-5.17) and the Dec 2021 clarification: data is loaded when RESUMING is "
        "cleared",
        "state-changed-while-stopped"),
    "v1-stop-not-frozen": Bug(
        "v1", V1StopNotFrozen,
        "device state changes while not running",
        "enum vfio_device_mig_state in include/uapi/linux/vfio.h: STOP means no internal state change",
        "state-changed-while-stopped"),
    "v1-pending-never-zero": Bug(
        "v1", V1PendingNeverZero,
        "pending_bytes never reaches 0 in stop-and-copy",
        "include/uapi/linux/vfio.h (5.8-5.17): in stop-and-copy, iterate until pending_bytes is 0",
        "hang"),
    "v1-data-offset-oob": Bug(
        "v1", V1DataOffsetOob,
        "data window outside the migration region",
        "struct vfio_device_migration_info in include/uapi/linux/vfio.h (5.8-5.17): the data window lies inside the"
        " region",
        "region-layout"),
    "v1-failed-write-third-state": Bug(
        "v1", V1FailedWriteThirdState,
        "a failed write leaves neither the old state nor 110b",
        "include/uapi/linux/vfio.h (5.8-5.17): after a failed write, the previous state or the error state",
        "bad-state-after-failure"),
    "v2-precopy-arc-hang": Bug(
        "v2", V2PrecopyArcHang,
        "STOP_COPY -> PRE_COPY never returns",
        "vfio_mig_get_next_state() spins on STOP_COPY -> PRE_COPY (drivers/vfio/vfio_main.c; fix a26b499b757c)",
        "hang"),
    "v2-fd-after-reset": Bug(
        "v2", V2FdAfterReset,
        "old data_fd still works after reset",
        "pds_vfio_pci migration file used after reset (fix 457f73082547, \"Make sure migration file isn't accessed "
        "after reset\")",
        "fd-misuse-accepted"),
    "v2-resume-ignores-fpos": Bug(
        "v2", V2ResumeIgnoresFpos,
        "multi-chunk resume overwrites at offset 0",
        "hisi_acc_vfio_pci resume write ignored f_pos (fix be12ad45e15b)",
        "valid-stream-rejected"),
    "v2-save-field-swap": Bug(
        "v2", V2SaveFieldSwap,
        "a register saved from the wrong halves",
        "hisi_acc_vfio_pci EQE/AEQE DMA address halves swapped when saving (008e5e996f42; XQE fix 2025)",
        "resume-corrupted"),
    "v2-precopy-dirty-underreport": Bug(
        "v2", V2PrecopyDirtyUnderreport,
        "PRECOPY_INFO dirty_bytes ignores data already queued",
        "mlx5_vfio_pci PRE_COPY dirty_bytes under-reported (fix 4928f67bc911)",
        "stream-protocol"),
    "v2-reject-large-state": Bug(
        "v2", V2RejectLargeState,
        "a valid stream above an arbitrary cap refused",
        'mlx5_vfio_pci 512 MiB resume image cap ("vfio/mlx5: Allow loading of larger images than 512 MB", 6.3)',
        "valid-stream-rejected"),
    "v2-reset-not-running": Bug(
        "v2", V2ResetNotRunning,
        "reset leaves the device in STOP, not RUNNING",
        "variant drivers' reset_done sets RUNNING (e.g. drivers/vfio/pci/mlx5/main.c); libvfio-user PR #854 diverged",
        "state-mismatch"),
    "v2-failed-arc-wrong-state": Bug(
        "v2", V2FailedArcWrongState,
        "after a failed step GET reports a state off the path",
        "VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE in include/uapi/linux/vfio.h: on failure, the original state, a state"
        " on the path, or ERROR",
        "bad-state-after-failure"),
    "v2-fd-leak-on-error": Bug(
        "v2", V2FdLeakOnError,
        "a failed fd-creating arc leaks its file",
        "mlx5_vfio_pci save/resume error unwind (fixed in 6.13, <20241114095318.16556-3-yishaih@nvidia.com>)",
        "resource-leak"),
    "v2-p2p-arc-missing": Bug(
        "v2", V2P2pArcMissing,
        "P2P advertised, RUNNING -> RUNNING_P2P refused",
        "the arcs drivers implement, listed in vfio_mig_get_next_state() (drivers/vfio/vfio_main.c)",
        "rejected-valid"),
    "v2-stream-length-trusted": Bug(
        "v2", V2StreamLengthTrusted,
        "a length inside the stream used unchecked (trailing bytes ignored)",
        "length and f_pos checks in qat/hisi resume writes (CVE-2026-74306; 9283b7392570)",
        "damaged-stream-accepted"),
    "v2-enomsg-in-stopcopy": Bug(
        "v2", V2EnomsgInStopCopy,
        "end of stream in STOP_COPY reported as ENOMSG",
        "data_fd rules in include/uapi/linux/vfio.h: ENOMSG is the temporary end of PRE_COPY, never of STOP_COPY",
        "stream-protocol"),
    "v2-fd-alive-after-session-end": Bug(
        "v2", V2FdAliveAfterSessionEnd,
        "the saving data_fd keeps working after STOP_COPY -> STOP",
        "drivers disable the file when the session ends (ENODEV; mtty, hisi, qat, pds); rust-vmm/vfio PR #140",
        "fd-misuse-accepted"),
    "v2-precopy-info-in-stopcopy": Bug(
        "v2", V2PrecopyInfoInStopCopy,
        "PRECOPY_INFO answers in STOP_COPY",
        "VFIO_MIG_GET_PRECOPY_INFO in include/uapi/linux/vfio.h: only in PRE_COPY and PRE_COPY_P2P",
        "accepted-invalid"),
    "v2-error-requestable": Bug(
        "v2", V2ErrorRequestable,
        "SET ERROR accepted",
        "vfio_mig_get_next_state() (drivers/vfio/vfio_main.c): ERROR can never be requested",
        "accepted-invalid"),
    "v2-errptr-on-alloc-failure": Bug(
        "v2", V2ErrPtrOnAllocFailure,
        "an allocation failure's error pointer used as the file",
        "pds_vfio_pci anon_inode_getfile() IS_ERR check (fix 2d12d18f14d9)",
        "target-exception"),
    "v2-resume-no-validate": Bug(
        "v2", V2ResumeNoValidate,
        "a corrupted stream half-loaded instead of refused",
        "RESUMING -> STOP in include/uapi/linux/vfio.h: invalid data must fail the SET; hisi's 2025 stream magic",
        "damaged-stream-accepted"),
    "v1-readonly-field-writable": Bug(
        "v1", V1ReadOnlyFieldWritable,
        "data_size written while saving is taken instead of refused",
        "struct vfio_device_migration_info in include/uapi/linux/vfio.h (5.8-5.17): data_size is written only "
        "while resuming",
        "accepted-invalid"),
    "v1-pending-grows": Bug(
        "v1", V1PendingGrows,
        "pending_bytes grows in stop-and-copy (the first estimate leaves a record out)",
        "include/uapi/linux/vfio.h (5.8-5.17) saving sequence; mlx5_vfio_pci under-reported pending data "
        "(fix 4928f67bc911)",
        "stream-protocol"),
    "v2-state-survives-reopen": Bug(
        "v2", V2StateSurvivesReopen,
        "closing the device keeps its migration state: the next open finds it where the last user left it",
        "mtty_close() (samples/vfio-mdev/mtty.c) disables the files but not the state; libvfio-user issue #458",
        "state-mismatch"),
    "v2-rx-uninitialized": Bug(
        "v2", V2RxUninitialized,
        "RX read with an empty FIFO hands out a byte the device never set",
        "mtty_read() (samples/vfio-mdev/mtty.c) copies its u8 val when handle_bar_read() did not set it",
        "info-leak"),
    "v2-config-oob-read": Bug(
        "v2", V2ConfigOobRead,
        "config-space reads past its end return the memory next to it",
        "mdev_access() (samples/vfio-mdev/mtty.c) memcpy()s from vconfig + offset without bounding the offset",
        "out-of-bounds"),
    "v2-register-not-migrated": Bug(
        "v2", V2RegisterNotMigrated,
        "a device register is left out of the saved state",
        "hisi_acc_vfio_pci register state missing from the stream (EQE/AEQE fixes 008e5e996f42, 2025 series)",
        "resume-corrupted"),
    "v2-failed-write-counted": Bug(
        "v2", V2FailedWriteCounted,
        "a resume write refused for its header still counts, and the load trusts the header",
        "mtty_resume_write() (samples/vfio-mdev/mtty.c) fails a bad header with EFAULT after advancing f_pos",
        "damaged-stream-accepted"),
    "v2-empty-session-loads": Bug(
        "v2", V2EmptySessionLoads,
        "RESUMING -> STOP with nothing written succeeds",
        "RESUMING -> STOP in include/uapi/linux/vfio.h: incomplete data must make the SET fail",
        "damaged-stream-accepted"),
    "v2-uart-tail-trusted": Bug(
        "v2", V2UartTailTrusted,
        "an mtty-like device (header checked, no checksum) uses a loaded FIFO index unchecked at load",
        "mtty_load_state() (samples/vfio-mdev/mtty.c) memcpy()s the saved serial ports unchecked (\"magic and "
        "version already tested by resume write fn\"); the rxtx head/tail it loads index fifo[]",
        "target-exception"),
    "v2-uart-tail-trusted-crc": Bug(
        "v2", V2UartTailTrustedCrc,
        "a loaded FIFO index is used unchecked at load (behind a checksum)",
        "mtty_load_state() (samples/vfio-mdev/mtty.c) copies the saved rxtx head/tail without a range check; "
        "an intact stream (checksum) is no valid one",
        "target-exception"),
    "v2-fifo-tail-oob-read": Bug(
        "v2", V2FifoTailOobRead,
        "RX reads fifo[tail] with a tail loaded from the stream: the bytes after the FIFO",
        "handle_bar_read() (samples/vfio-mdev/mtty.c) reads rxtx.fifo[rxtx.tail] with the tail mtty_load_state() "
        "copied from the stream",
        "info-leak"),
    "v2-fifo-head-oob-write": Bug(
        "v2", V2FifoHeadOobWrite,
        "TX stores at fifo[head] with a head loaded from the stream: the byte lands in the device's state",
        "handle_bar_write() (samples/vfio-mdev/mtty.c) stores TX at rxtx.fifo[rxtx.head] with the head "
        "mtty_load_state() copied from the stream; on 6.12 head 0x7c writes mdev_state->state (migfuzz's mtty "
        "finding #8)",
        "state-mismatch"),
    "v2-reset-not-deferred": Bug(
        "v2", V2ResetNotDeferred,
        "a reset during a SET clears the state without the state mutex; the SET then records its own",
        "reset_done() racing the state mutex holder: the deferred_reset flag that mlx5vf_state_mutex_unlock() "
        "(drivers/vfio/pci/mlx5/main.c), pds/ and samples/vfio-mdev/mtty.c apply at unlock exists to close it",
        "race-not-serializable"),
}

_BASE = {"v1": V1SimDevice, "v2": V2SimDevice}
_CLASSES: dict = {}


def device_class(proto: str, bug: str | None):
    """The device class for ``proto``, with ``bug``'s behaviour swapped in."""
    if proto not in _BASE:
        raise ValueError(f"unknown protocol {proto!r} (v1 or v2)")
    if not bug:
        return _BASE[proto]
    entry = BUGS.get(bug)
    if entry is None:
        raise ValueError(f"unknown bug variant {bug!r}")
    if entry.proto != proto:
        raise ValueError(f"bug variant {bug!r} is for protocol {entry.proto}")
    key = (proto, bug)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"{_BASE[proto].__name__}_{bug.replace('-', '_')}", (entry.mixin, _BASE[proto]), {})
    return _CLASSES[key]

