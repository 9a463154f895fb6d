"""The conformance sweep (`migfuzz conform`), tested both ways: each check FAILS on a device that
breaks exactly its rule (scripted devices below, and the bug zoo) and PASSES on the correct
simulator. Also: resilience to devices that hang or throw, the structured records, the formats."""
from __future__ import annotations

import ast
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from fuzz import conform, model
from fuzz.cli import main
from fuzz.targets import parse_target
from harness.profile import load_profile
from harness.runtime import FIELD_MANGLES, MANGLE_KINDS, mangle
from harness.sim import BUGS, SimTarget, stream, uart
from harness.sim.bugs import DEVICE_INTERNAL
from harness.sim.stream import PAGE_RECORD_SIZE
from harness.sim.v1 import WINDOW, V1SimDevice
from harness.sim.v2 import ERROR, RESUMING, STOP_COPY, MigFile, V2SimDevice
from harness.uapi import (
    FEATURE_GET,
    FEATURE_MIGRATION,
    V1_FIELDS,
    V1_RESUMING,
    V1_RUNNING,
    V1_SAVING,
    V1_STATE_NAMES,
    V1_STOP,
    MigState,
)

ROOT = Path(__file__).resolve().parents[1]
CLEAN_TARGETS = ["sim:flags=0x1", "sim:flags=0x3", "sim:flags=0x5", "sim:flags=0x7", "sim:proto=v1"]
V2_STATES = [s.name for s in MigState if s != MigState.ERROR]
V1_VALID_NAMES = [V1_STATE_NAMES[v] for v in (0, 1, 2, 3, 4)]


def fails(result: dict) -> set:
    return {(c["check"], c["from"], c["to"]) for c in result["checks"] if c["verdict"] == "fail"}


def failing(result: dict, check: str) -> list[dict]:
    return [c for c in result["checks"] if c["verdict"] == "fail" and c["check"] == check]


@pytest.fixture(scope="module")
def zoo() -> dict:
    """One sweep per bug variant (each takes milliseconds)."""
    return {name: conform.sweep(f"sim:proto={bug.proto},bug={name}") for name, bug in BUGS.items()}


@pytest.fixture(scope="module")
def clean() -> dict:
    return {t: conform.sweep(t) for t in CLEAN_TARGETS}


# --------------------------------------------------------------------------- the correct simulator


@pytest.mark.parametrize("target", CLEAN_TARGETS)
def test_correct_simulator_conforms(target, clean, capsys):
    assert main(["conform", "--target", target]) == 0
    out = capsys.readouterr().out
    assert "CONFORMS" in out and "FAIL" not in out
    result = clean[target]
    assert result["summary"]["fail"] == 0, sorted(fails(result))
    assert result["summary"]["info"] == 0, [c for c in result["checks"] if c["verdict"] == "info"][:3]
    assert len(result["checks"]) > 80


def test_v2_matrix_covers_every_pair_including_error_and_out_of_range(clean):
    cells = {(c["from"], c["to"]) for c in clean["sim:flags=0x7"]["checks"] if c["check"] == "arc"}
    rows = ["ERROR", *V2_STATES]
    cols = ["ERROR", *V2_STATES, *(model.v2_name(v) for v in conform.OUT_OF_RANGE)]
    assert cells == {(f, t) for f in rows for t in cols}


def test_v2_matrix_only_has_rows_for_advertised_states(clean):
    result = clean["sim:flags=0x1"]
    rows = {c["from"] for c in result["checks"] if c["check"] == "arc"}
    assert rows == {"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING"}
    cols = {c["to"] for c in result["checks"] if c["check"] == "arc"}
    assert {"PRE_COPY", "RUNNING_P2P", model.v2_name(8)} <= cols  # unsupported targets must be refused


def test_v1_matrix_writes_every_value_from_every_state_and_the_error_state(clean):
    result = clean["sim:proto=v1"]
    cells = {(c["from"], c["to"]) for c in result["checks"] if c["check"] == "arc"}
    assert cells == {(f, V1_STATE_NAMES[v]) for f in [*V1_VALID_NAMES, "ERROR"] for v in range(8)}
    groups = {c["check"] for c in result["checks"]}
    assert {"readonly-field", "reserved", "save-sequence", "round-trip", "error-state", "reset"} <= groups


def test_the_sweep_is_deterministic():
    a, b = conform.sweep("sim:flags=0x5"), conform.sweep("sim:flags=0x5")
    assert a["checks"] == b["checks"]


# --------------------------------------------------------------------------- scripted devices, one rule broken each


def broken_target(proto: str, flags: int, mixin: type) -> SimTarget:
    """A simulator target whose devices put ``mixin`` in front of the correct device class."""
    target = SimTarget(proto, flags)
    cls = type("Broken" + mixin.__name__, (mixin, V2SimDevice if proto == "v2" else V1SimDevice), {})
    target.devices = [cls(flags, i + 1) if proto == "v2" else cls(i + 1) for i in range(len(target.devices))]
    return target


class FeatureShortPayloadAccepted:
    """VFIO_DEVICE_FEATURE GET with a payload shorter than the feature's struct is accepted."""

    def feature(self, flags, payload, argsz=None):
        if argsz is not None and 8 <= argsz < 16 and flags & FEATURE_GET:
            argsz = 16
        return super().feature(flags, payload, argsz)


class FeatureWrongErrno:
    """argsz < 8 refused, but with ENOTTY instead of the core's EINVAL."""

    def feature(self, flags, payload, argsz=None):
        if argsz is not None and argsz < 8:
            return errno.ENOTTY, b""
        return super().feature(flags, payload, argsz)


class FlagsUndefinedBit:
    """GET MIGRATION reports a flag bit the uAPI does not define."""

    def feature(self, flags, payload, argsz=None):
        err, out = super().feature(flags, payload, argsz)
        if not err and flags == FEATURE_GET | FEATURE_MIGRATION and len(out) >= 8:
            return err, (int.from_bytes(out[:8], "little") | 0x8).to_bytes(8, "little")
        return err, out


class SeekWorks:
    """lseek on a data_fd succeeds (must be ESPIPE)."""

    def seek(self, fd):
        return 0 if fd in self.fds else errno.EBADF


class NoopSetReturnsFd:
    """A SET of the current state hands out a new data_fd."""

    def set_state(self, new):
        if new == self.state:
            return 0, self.install(MigFile(saving=True))
        return super().set_state(new)


class FdWhenNoneDue:
    """STOP -> RUNNING returns a data_fd although no session opens."""

    def arc_start(self):
        super().arc_start()
        return self.new_file(saving=True)


class ReadAfterSessionEnd:
    """A saving fd stays readable after its session ended (by a SET or a reset)."""

    def read(self, fd, n):
        f = self.fds.get(fd)
        if f is not None and f.saving and f.disabled:
            return self.read_file(f, n)
        return super().read(fd, n)


class WriteOnSavingFd:
    """write(2) on a saving data_fd succeeds (must be EBADF)."""

    def write(self, fd, data):
        f = self.fds.get(fd)
        if f is not None and f.saving and not f.disabled:
            return 0, len(data)
        return super().write(fd, data)


class CloseAfterEndFails:
    """close(2) of a data_fd whose session ended fails."""

    def close(self, fd):
        f = self.fds.get(fd)
        if f is not None and f.disabled:
            return errno.EIO
        return super().close(fd)


class GroupMoveDropsFd:
    """A move inside the saving group (PRE_COPY <-> PRE_COPY_P2P) kills the saving fd."""

    def arc_nop(self):
        if self.save_file is not None:
            self.save_file.disabled = True
        return 0, None


class DataAfterEnd:
    """STOP_COPY: after read returned 0 (the end), more data comes."""

    def read_file(self, f, n):
        err, data = super().read_file(f, n)
        if not err and not data and self.state == STOP_COPY:
            ended = self.__dict__.setdefault("ended", [])
            if any(x is f for x in ended):
                return 0, bytes(min(n, 8))
            ended.append(f)
        return err, data


class EndlessStream:
    """STOP_COPY: the stream never ends (zeros forever instead of read returning 0)."""

    def read_file(self, f, n):
        err, data = super().read_file(f, n)
        if not err and not data and self.state == STOP_COPY:
            return 0, bytes(min(n, 64))
        return err, data


class PrecopyEndIsEagain:
    """PRE_COPY: the temporary end of the stream is EAGAIN (must be 0 or ENOMSG)."""

    def read_file(self, f, n):
        err, data = super().read_file(f, n)
        return (errno.EAGAIN, b"") if err == errno.ENOMSG else (err, data)


class PrecopyInfoOnResumeFd:
    """VFIO_MIG_GET_PRECOPY_INFO answers on a resuming fd (must be ENOTTY)."""

    def precopy_info(self, fd):
        f = self.fds.get(fd)
        if f is not None and not f.saving:
            return 0, 0, 0
        return super().precopy_info(fd)


class InitialGrows:
    """PRECOPY_INFO counts newly dirtied pages into initial_bytes, which then grows."""

    def precopy_sizes(self, f):
        initial, dirty = super().precopy_sizes(f)
        return initial + self.core.dirty.bit_count() * PAGE_RECORD_SIZE, dirty


class DataSizeRefusedWhileResuming:
    """GET MIG_DATA_SIZE fails in RESUMING (it must work in every state)."""

    def data_size(self):
        return (errno.EINVAL, 0) if self.state == RESUMING else super().data_size()


class ResetKeepsError:
    """VFIO_DEVICE_RESET does not take the device out of ERROR."""

    def reset(self):
        if self.state == ERROR:
            return 0
        return super().reset()


class StopKeepsRunning:
    """RUNNING -> STOP does not stop the device: its state changes while stopped."""

    def arc_stop(self):
        return 0, None


class OneResumeOnly:
    """A second resume session after a successful load is refused."""

    def restore_initial(self):
        super().restore_initial()
        self.__dict__.pop("resumed", None)

    def arc_open_resume(self):
        if self.__dict__.get("resumed"):
            return errno.EBUSY, None
        return super().arc_open_resume()

    def arc_load(self):
        err, f = super().arc_load()
        if not err:
            self.__dict__["resumed"] = True
        return err, f


class ResumeKeepsOldBytes:
    """A new resume session starts with the bytes of the last loaded one (v2 twin of v1-resume-no-wipe)."""

    def restore_initial(self):
        super().restore_initial()
        self.__dict__.pop("loaded", None)

    def arc_open_resume(self):
        err, f = super().arc_open_resume()
        if f is not None and self.__dict__.get("loaded"):
            f.buf[:] = self.__dict__["loaded"]
            f.pos = len(f.buf)
        return err, f

    def arc_load(self):
        data = bytes(self.resume_file.buf)
        err, f = super().arc_load()
        if not err:
            self.__dict__["loaded"] = data
        return err, f


class _V1Field:
    """A v1 region field the device keeps whatever the user writes into (``field`` names it)."""

    field = ""

    def restore_initial(self):
        super().restore_initial()
        self.__dict__.pop("kept", None)

    def field_write(self, offset, size, value):
        if (offset, size) == V1_FIELDS[self.field]:
            self.__dict__["kept"] = value & ((1 << (8 * size)) - 1)
            return 0
        return super().field_write(offset, size, value)

    def field_read(self, offset, size):
        if (offset, size) == V1_FIELDS[self.field] and "kept" in self.__dict__:
            return 0, self.__dict__["kept"]
        return super().field_read(offset, size)


class V1ReadonlyWritable(_V1Field):
    """pending_bytes (read-only) takes a user write."""

    field = "pending_bytes"


class V1ReservedKeepsWrites(_V1Field):
    """reserved reads back what was written (must read 0)."""

    field = "reserved"


class V1NoErrorState:
    """A hardware error during a device_state write leaves the old state instead of 110b."""

    def enter_error(self):
        self.core.running = False


class V1ResetStops:
    """Reset leaves device_state at STOP (000b) instead of RUNNING."""

    def reset(self):
        super().reset()
        self.state = V1_STOP
        self.core.running = False
        return 0


class V1SmallChunksDropped:
    """A resume chunk of fewer than 8 bytes is acknowledged but dropped."""

    def write_data_size(self, size):
        if 0 < size < 8 and self.state == V1_RESUMING:
            return 0
        return super().write_data_size(size)


class V1LoadNoValidate:
    """Clearing RESUMING accepts any stream (one it cannot parse loads nothing, and succeeds)."""

    def load(self):
        err, image = super().load()
        return (0, None) if err else (err, image)


class V1RegsSavedWrong:
    """A register saved with a bit flipped."""

    def saved_regs(self):
        regs = list(self.core.regs)
        regs[0] ^= 1
        return regs


class V1NoPrecopy:
    """device_state 011b (SAVING|RUNNING, a valid value) refused."""

    def set_state(self, value):
        if value == V1_SAVING | V1_RUNNING:
            return errno.EINVAL
        return super().set_state(value)


# --- closing and opening the device again


class ReopenKeepsState:
    """Closing the device leaves the migration state where it was (the files are disabled)."""

    def reopen(self):
        state = self.state
        self.close_device()
        self.state = state
        return 0


class ReopenKeepsFiles:
    """Reopen puts the state back to RUNNING but neither disables nor forgets the data_fds."""

    def reopen(self):
        self.state = MigState.RUNNING
        self.core.running = True
        return 0


class ReopenKeepsResumeBytes:
    """The half-written resume buffer survives close: the next resume session starts with it."""

    def restore_initial(self):
        super().restore_initial()
        self.__dict__.pop("kept", None)

    def reopen(self):
        if self.resume_file is not None:
            self.__dict__["kept"] = bytes(self.resume_file.buf)
        return super().reopen()

    def arc_open_resume(self):
        err, f = super().arc_open_resume()
        kept = self.__dict__.pop("kept", None)
        if f is not None and kept:
            f.buf[:] = kept
            f.pos = len(kept)
        return err, f


class V1ReopenKeepsState:
    """v1: closing the device leaves device_state as it was (the sessions are dropped)."""

    def reopen(self):
        state = self.state
        self.close_device()
        self.state = state
        self.core.running = bool(state & V1_RUNNING)
        return 0


class V1ReopenKeepsResumeBytes:
    """v1: the half-written resume buffer survives close and is not wiped by the next RESUMING."""

    def restore_initial(self):
        super().restore_initial()
        self.__dict__.pop("kept", None)

    def reopen(self):
        if self.state == V1_RESUMING:
            self.__dict__["kept"] = bytes(self.resume_buf)
        return super().reopen()

    def enter_resuming(self):
        super().enter_resuming()
        self.resume_buf += self.__dict__.pop("kept", b"")


# --- device registers


class _ScratchCounts(uart.Uart):
    def read(self, off):
        value = super().read(off)
        if off == uart.SCR:
            self.regs[uart.SCR] = (value + 1) & 0x7F  # a read with a side effect
        return value


class ScratchReadCounts:
    """Reading the scratch register (declared side-effect free) increments it."""

    uart_class = _ScratchCounts


class _RxStale(uart.Uart):
    def empty_read(self):
        return 0x42  # not the idle value 0, and no byte the sweep put in


class RxStaleWhenEmpty:
    """RX with an empty FIFO returns a byte nobody put in."""

    uart_class = _RxStale


class _RxLifo(uart.Uart):
    def read(self, off):
        if off == uart.RX and not self.dlab and self.count:
            self.head = (self.head - 1) & (uart.FIFO_SIZE - 1)  # pops the newest byte first
            self.count -= 1
            return self.fifo_byte(self.head)
        return super().read(off)


class RxLastInFirstOut:
    """RX hands out the bytes that went in, newest first."""

    uart_class = _RxLifo


class ConfigTailPointers:
    """Config-space reads past its 64 bytes return the kernel pointers stored after it."""

    def reg_read(self, region, off, size):
        if region == uart.CONFIG_REGION and size in (1, 2, 4) and off >= len(uart.CONFIG_SPACE):
            at = (off - len(uart.CONFIG_SPACE)) % len(DEVICE_INTERNAL)
            return 0, (DEVICE_INTERNAL * 2)[at:at + size]
        return super().reg_read(region, off, size)


class IerNotSaved:
    """The interrupt-enable register is left out of the saved state (saved as 0)."""

    def saved_uart(self):
        state = bytearray(super().saved_uart())
        state[uart.IER] = 0
        return bytes(state)


class StopSnapshot:
    """The saved register block is a snapshot taken when the device stopped: writes made while
    stopped are not in the stream."""

    def restore_initial(self):
        super().restore_initial()
        self.__dict__.pop("snapshot", None)

    def arc_stop(self):
        self.__dict__["snapshot"] = self.core.uart.state()
        return super().arc_stop()

    def saved_uart(self):
        return self.__dict__.get("snapshot") or super().saved_uart()


# --- resume sessions


class EmptySessionLoads:
    """RESUMING -> STOP with nothing written succeeds (and loads nothing)."""

    def load_stream(self, data):
        if not data:
            return list(self.core.regs), bytearray(self.core.mem), self.core.uart.state()
        return super().load_stream(data)


class PrefixLoads:
    """A session holding a valid header but only part of a stream loads what it has."""

    def load_stream(self, data):
        try:
            return super().load_stream(data)
        except stream.StreamError:
            if len(data) < stream.HEADER_SIZE or not stream.header_ok(data):
                raise
            return list(self.core.regs), bytearray(self.core.mem), self.core.uart.state()


class OversizedWriteCounted:
    """A write past the resume buffer is refused (ENOMEM, f_pos unmoved), but what fitted of it
    stays in the buffer and counts toward its length."""

    def write_file(self, f, data):
        if f.pos + len(data) > stream.MAX_STREAM:
            f.buf[f.pos:] = data[:stream.MAX_STREAM - f.pos]
            return errno.ENOMEM, 0
        return super().write_file(f, data)


class HeaderCheckedAtWrite:
    """A correct device that refuses a write carrying a bad header (and keeps nothing of it)."""

    def write_file(self, f, data):
        end = f.pos + len(data)
        if f.pos < stream.HEADER_SIZE <= end:
            head = bytes(f.buf[:f.pos]) + bytes(data[:stream.HEADER_SIZE - f.pos])
            if not stream.header_ok(head):
                return errno.EINVAL, 0
        return super().write_file(f, data)


class V1EmptySessionLoads:
    """v1: clearing RESUMING with nothing written succeeds."""

    def load_stream(self, data):
        if not data:
            return list(self.core.regs), bytearray(self.core.mem), self.core.uart.state()
        return super().load_stream(data)


class V1OversizeCounted:
    """v1: a data_size larger than the window is refused, but the window's bytes were taken."""

    def write_data_size(self, size):
        if size > WINDOW and self.state == V1_RESUMING:
            self.resume_buf += self.window[:WINDOW]
            return errno.EINVAL
        return super().write_data_size(size)


class Broken(NamedTuple):
    """A device that breaks one rule: the records it must fail (check, from, to, a part of the
    expected text), facts every such record's outcome must show, and the check groups allowed
    to fail along with them (the same rule seen from another check)."""

    target: str
    mixin: type
    must: tuple
    facts: dict
    also: frozenset = frozenset()


_ANSWERED = {"status": "answered"}
_ALL_V2 = ("ERROR", *V2_STATES)

BOTH_WAYS = {
    "feature framing: short payload accepted": Broken(
        "sim:flags=0x7", FeatureShortPayloadAccepted,
        (("feature", "RUNNING", None, "GET MIGRATION, argsz 12"), ("feature", "RUNNING", None, "argsz 8 (no payload)"),
         ("feature", "RUNNING", None, "MIG_DATA_SIZE, argsz 15")),
        {"status": "answered", "err": 0, "accepted": True}),
    "feature framing: wrong errno": Broken(
        "sim:flags=0x7", FeatureWrongErrno,
        (("feature", "RUNNING", None, "argsz 7"), ("feature", "RUNNING", None, "argsz 0")),
        {"err": errno.ENOTTY, "accepted": False}),
    "flags: undefined bit": Broken("sim:flags=0x7", FlagsUndefinedBit, (("flags", None, None, ""),),
                                   {"flags": 0xF}),
    "lseek succeeds": Broken(
        "sim:flags=0x7", SeekWorks,
        tuple(("fd-seek", s, None, "") for s in ("STOP_COPY", "PRE_COPY", "RESUMING")),
        {"err": 0, "accepted": True}),
    "no-op SET returns an fd": Broken(
        "sim:flags=0x7", NoopSetReturnsFd,
        tuple(("arc", s, s, "no-op") for s in _ALL_V2) + (("feature", "RUNNING", None, "current state"),),
        {"err": 0, "fd": True}),
    "a data_fd when none is due": Broken(
        "sim:flags=0x1", FdWhenNoneDue,
        tuple(("arc", s, "RUNNING", "") for s in ("STOP", "STOP_COPY", "RESUMING")),
        {"err": 0, "state": MigState.RUNNING, "fd": True}),
    "read after session end": Broken(
        "sim:flags=0x7", ReadAfterSessionEnd,
        (("fd-after-session-end", "STOP_COPY", "STOP", ""), ("fd-after-session-end", "PRE_COPY", "RUNNING", ""),
         ("fd-after-session-end", "PRE_COPY_P2P", "RUNNING_P2P", "")),
        {"err": 0, "accepted": True}, frozenset({"fd-after-reset"})),
    "write on a saving fd": Broken(
        "sim:flags=0x7", WriteOnSavingFd,
        (("fd-wrong-direction", "STOP_COPY", None, ""), ("fd-wrong-direction", "PRE_COPY", None, "")),
        {"err": 0, "accepted": True}),
    "close after session end fails": Broken(
        "sim:flags=0x7", CloseAfterEndFails,
        (("fd-close", "STOP_COPY", "STOP", ""), ("fd-close", "RESUMING", "RUNNING", "")),
        {"err": errno.EIO}),
    "a move in the saving group drops the fd": Broken(
        "sim:flags=0x7", GroupMoveDropsFd,
        (("fd-kept-in-group", "PRE_COPY_P2P", None, ""), ("fd-kept-in-group", "PRE_COPY", None, ""),
         ("fd-kept-in-group", "STOP_COPY", None, "(via PRE_COPY)")),
        {"err": errno.ENODEV}, frozenset({"stop-copy-eof", "precopy-info", "round-trip"})),
    "data after end of stream": Broken(
        "sim:flags=0x7", DataAfterEnd, (("stop-copy-eof", "STOP_COPY", None, ""),), {"err": 0, "again": 8}),
    "a stream that never ends": Broken(
        "sim:flags=0x7", EndlessStream,
        (("stop-copy-eof", "STOP_COPY", None, ""), ("save-source", "STOP_COPY", "STOP", "")),
        {"status": "endless"}, frozenset({"round-trip", "reopen-round-trip", "reg-migrated", "reg-while-stopped"})),
    "pre-copy temporary end is EAGAIN": Broken(
        "sim:flags=0x7", PrecopyEndIsEagain,
        (("precopy-eof", "PRE_COPY", None, ""), ("precopy-eof", "PRE_COPY_P2P", None, "")),
        {"err": errno.EAGAIN}, frozenset({"precopy-info-covers", "precopy-info-initial", "round-trip"})),
    "PRECOPY_INFO on a resuming fd": Broken(
        "sim:flags=0x7", PrecopyInfoOnResumeFd, (("precopy-info", "RESUMING", None, ""),),
        {"err": 0, "accepted": True}),
    "PRECOPY_INFO initial_bytes grows": Broken(
        "sim:flags=0x7", InitialGrows,
        (("precopy-info-initial", "PRE_COPY", None, ""), ("precopy-info-initial", "PRE_COPY_P2P", None, "")),
        _ANSWERED),
    "MIG_DATA_SIZE refused in RESUMING": Broken(
        "sim:flags=0x7", DataSizeRefusedWhileResuming, (("data-size", "RESUMING", None, ""),),
        {"err": errno.EINVAL}),
    "wrong state after reset (from ERROR)": Broken(
        "sim:flags=0x7", ResetKeepsError, (("reset", "ERROR", "RUNNING", ""),), {"err": 0, "state": ERROR}),
    "not frozen while stopped": Broken(
        "sim:flags=0x7", StopKeepsRunning,
        tuple(("stopped-frozen", s, None, "") for s in ("STOP", "STOP_COPY", "RESUMING")), {"changed": True}),
    "a second resume refused": Broken(
        "sim:flags=0x7", OneResumeOnly, (("resume-twice", "RESUMING", "STOP", ""),), {"err": errno.EBUSY}),
    "a second resume loads stale bytes": Broken(
        "sim:flags=0x7", ResumeKeepsOldBytes, (("resume-twice", "RESUMING", "STOP", ""),), {"err": errno.EINVAL}),
    "v1: read-only field writable": Broken(
        "sim:proto=v1", V1ReadonlyWritable,
        (("readonly-field", "RUNNING", None, "pending_bytes"), ("readonly-field", "SAVING", None, "pending_bytes")),
        {"err": 0, "changed": True}),
    "v1: reserved keeps writes": Broken(
        "sim:proto=v1", V1ReservedKeepsWrites, tuple(("reserved", s, None, "") for s in V1_VALID_NAMES),
        {"after": 0xDEADBEEF}),
    "v1: no error state": Broken(
        "sim:proto=v1", V1NoErrorState, (("error-state", "RUNNING", "ERROR", ""),), {"state": V1_RUNNING}),
    "v1: wrong state after reset": Broken(
        "sim:proto=v1", V1ResetStops, tuple(("reset", s, "RUNNING", "") for s in V1_VALID_NAMES),
        # the simulator's v1 close runs its reset, so a reopen leaves STOP too
        {"err": 0, "state": V1_STOP}, frozenset({"error-state", "reopen", "reopen-round-trip"})),
    "v1: small resume chunks dropped": Broken(
        "sim:proto=v1", V1SmallChunksDropped, (("resume-segmented", "RESUMING", "RUNNING", "7-byte"),),
        {"err": errno.EINVAL, "state": V1_RESUMING}),
    "v1: damaged streams loaded": Broken(
        "sim:proto=v1", V1LoadNoValidate,
        tuple(("damaged-stream", "RESUMING", "RUNNING", d.label) for d in conform.DAMAGES),
        {"err": 0, "accepted": True}, frozenset({"session-empty", "session-prefix", "session-failed-write"})),
    "v1: a register saved wrong": Broken(
        "sim:proto=v1", V1RegsSavedWrong,
        (("round-trip", "SAVING", "RUNNING", ""), ("round-trip", "SAVING|RUNNING", "RUNNING", "")), {"same": False},
        frozenset({"reopen-round-trip"})),
    # closing and opening the device again
    "reopen keeps the migration state": Broken(
        "sim:flags=0x1", ReopenKeepsState,
        tuple(("reopen", s, "RUNNING", "") for s in ("ERROR", "STOP", "STOP_COPY", "RESUMING")),
        {"status": "answered", "err": 0}, frozenset({"reopen-round-trip"})),
    "reopen keeps the data_fds": Broken(
        "sim:flags=0x7", ReopenKeepsFiles,
        tuple(("reopen", s, "RUNNING", "") for s in ("STOP_COPY", "RESUMING", "PRE_COPY", "PRE_COPY_P2P")),
        {"state": MigState.RUNNING, "live_files": 1, "old_fd_err": [0]}),
    "reopen keeps the half-written resume": Broken(
        "sim:flags=0x5", ReopenKeepsResumeBytes, (("reopen-round-trip", "RESUMING", "STOP", ""),),
        {"failed": "load", "err": errno.EINVAL}),
    "v1: reopen keeps device_state": Broken(
        "sim:proto=v1", V1ReopenKeepsState,
        tuple(("reopen", s, "RUNNING", "") for s in ("STOP", "SAVING", "SAVING|RUNNING", "RESUMING", "ERROR")),
        {"status": "answered", "err": 0}, frozenset({"reopen-round-trip"})),
    "v1: reopen keeps the half-written resume": Broken(
        "sim:proto=v1", V1ReopenKeepsResumeBytes, (("reopen-round-trip", "RESUMING", "RUNNING", ""),),
        {"failed": "load", "err": errno.EINVAL}),
    # device registers
    "a side-effect-free register changes when read": Broken(
        "sim:flags=0x7", ScratchReadCounts, (("reg-observe", "RUNNING", None, "SCR"),),
        {"err": 0, "same": False}, frozenset({"reg-migrated", "reg-while-stopped"})),
    "RX hands out a byte nobody put in": Broken(
        "sim:flags=0x3", RxStaleWhenEmpty,
        (("reg-data-out", "RUNNING", None, "fresh device"), ("reg-data-out", "RUNNING", None, "went in")),
        {"err": 0, "stray": [0x42] * conform.IDLE_READS}),
    "v1: RX hands out its bytes out of order": Broken(
        "sim:proto=v1", RxLastInFirstOut, (("reg-data-out", "RUNNING", None, "went in"),),
        {"err": 0, "stray": []}),
    "config space reads past its end hand out pointers": Broken(
        "sim:flags=0x7", ConfigTailPointers,
        tuple(("reg-leak", "RUNNING", None, f"every {w}-byte read of config space") for w in (1, 2, 4)),
        {"err": 0, "addresses": 91}),
    "a register left out of the stream": Broken(
        "sim:flags=0x7", IerNotSaved,
        (("reg-migrated", "RUNNING", "STOP", ""), ("reg-while-stopped", "STOP", "STOP", "")),
        {"same": False, "differ": ["IER"]}),
    "v1: a register left out of the stream": Broken(
        "sim:proto=v1", IerNotSaved,
        (("reg-migrated", "RUNNING", "RUNNING", ""), ("reg-while-stopped", "STOP", "RUNNING", "")),
        {"same": False, "differ": ["IER"]}),
    "register writes while stopped are not saved": Broken(
        "sim:flags=0x7", StopSnapshot, (("reg-while-stopped", "STOP", "STOP", ""),), {"err": 0, "same": False}),
    # resume sessions
    "an empty session loads": Broken(
        "sim:flags=0x3", EmptySessionLoads, (("session-empty", "RESUMING", "STOP", ""),),
        {"err": 0, "held": "empty"}, frozenset({"damaged-stream"})),
    "a strict prefix loads": Broken(
        "sim:flags=0x7", PrefixLoads,
        (("session-prefix", "RESUMING", "STOP", "first half"), ("session-prefix", "RESUMING", "STOP", "all but")),
        {"err": 0, "held": "prefix"}, frozenset({"damaged-stream", "session-failed-write"})),
    "a refused oversized write still counts": Broken(
        "sim:flags=0x5", OversizedWriteCounted,
        (("session-failed-write", "RESUMING", "STOP", "oversized write, then the rest"),),
        {"err": errno.EINVAL, "held": "stream", "writes": [0, errno.ENOMEM, 0]}),
    "v1: an empty session loads": Broken(
        "sim:proto=v1", V1EmptySessionLoads, (("session-empty", "RESUMING", "RUNNING", ""),),
        {"err": 0, "held": "empty"}, frozenset({"damaged-stream"})),
    "v1: a refused data_size still counts": Broken(
        "sim:proto=v1", V1OversizeCounted,
        (("session-failed-write", "RESUMING", "RUNNING", "oversized write, then the rest"),),
        {"err": errno.EINVAL, "held": "stream", "writes": [0, errno.EINVAL, 0]}),
    "v1: a valid value refused": Broken(
        "sim:proto=v1", V1NoPrecopy,
        (("reach", "RUNNING", "SAVING|RUNNING", ""),
         *(("arc", s, "SAVING|RUNNING", "") for s in ("STOP", "RUNNING", "SAVING", "RESUMING"))),
        {"err": errno.EINVAL, "accepted": False}),
}


def matches(record: dict, pattern: tuple) -> bool:
    check, frm, to, part = pattern
    return (record["check"], record["from"], record["to"]) == (check, frm, to) and part in record["expected"]


def sweep_broken(case: Broken) -> dict:
    spec = parse_target(case.target)

    def open_fn(_spec=None):
        return broken_target(spec.proto, spec.flags, case.mixin)

    return conform.sweep(spec, target=open_fn(), open_fn=open_fn)


@pytest.mark.parametrize("name", sorted(BOTH_WAYS))
def test_check_fails_on_a_device_breaking_its_rule_and_passes_on_the_correct_one(name, clean):
    case = BOTH_WAYS[name]
    result = sweep_broken(case)
    for pattern in case.must:
        hits = [c for c in result["checks"] if matches(c, pattern)]
        assert hits, f"{name}: no record {pattern}"
        for c in hits:
            assert c["verdict"] == "fail", f"{name}: {pattern} went unnoticed: {c['observed']}"
            wrong = {k: c["outcome"].get(k) for k, v in case.facts.items() if c["outcome"].get(k) != v}
            assert not wrong, f"{name}: {pattern}: outcome {c['outcome']} (wanted {case.facts})"
    groups = {c["check"] for c in result["checks"] if c["verdict"] == "fail"}
    assert groups <= {p[0] for p in case.must} | case.also, f"{name}: also failed {groups}"
    # the other direction: on the correct device every one of these records passes
    good = clean[case.target]
    for pattern in case.must:
        hits = [c for c in good["checks"] if matches(c, pattern)]
        assert hits and all(c["verdict"] == "pass" for c in hits), (name, pattern)


def test_every_check_group_is_shown_to_fail_somewhere(clean):
    """Each check group of the sweep has a device above (or in the zoo) that it must fail on."""
    shown = {p[0] for case in BOTH_WAYS.values() for p in case.must}
    shown |= {cell[0] for cells in EXPECTED_CELLS.values() for cell in cells}
    groups = {c["check"] for t in ("sim:flags=0x7", "sim:proto=v1") for c in clean[t]["checks"]}
    assert groups - shown == set()


# --------------------------------------------------------------------------- the bug zoo

# variant -> (check, from, to) cells that must fail
EXPECTED_CELLS = {
    "v2-precopy-arc-hang": {("arc", "STOP_COPY", "PRE_COPY"), ("arc", "STOP_COPY", "PRE_COPY_P2P")},
    "v2-error-requestable": {("arc", s, "ERROR") for s in V2_STATES},
    "v2-p2p-arc-missing": {("arc", "RUNNING", "RUNNING_P2P"), ("reach", "RUNNING", "RUNNING_P2P")},
    "v2-fd-after-reset": {("fd-after-reset", s, "RUNNING") for s in ("STOP_COPY", "PRE_COPY", "RESUMING")},
    "v2-fd-alive-after-session-end": {("fd-after-session-end", "STOP_COPY", "STOP"),
                                      ("fd-after-session-end", "PRE_COPY", "RUNNING")},
    "v2-reset-not-running": {("reset", s, "RUNNING") for s in V2_STATES},
    "v2-precopy-info-in-stopcopy": {("precopy-info", "STOP_COPY", None)},
    "v2-save-field-swap": {("round-trip", "STOP_COPY", "STOP"), ("round-trip", "PRE_COPY", "STOP")},
    "v2-stream-length-trusted": {("damaged-stream", "RESUMING", "STOP")},
    "v2-resume-no-validate": {("damaged-stream", "RESUMING", "STOP")},
    "v2-enomsg-in-stopcopy": {("stop-copy-eof", "STOP_COPY", None)},
    "v2-resume-ignores-fpos": {("resume-segmented", "RESUMING", "STOP")},
    "v2-precopy-dirty-underreport": {("precopy-info-covers", "PRE_COPY", None)},
    "v2-reject-large-state": {("round-trip", "PRE_COPY", "STOP")},
    "v2-fd-leak-on-error": {("fault-in-arc", "STOP", "STOP_COPY")},
    "v2-errptr-on-alloc-failure": {("fault-in-arc", "STOP", "STOP_COPY")},
    "v2-failed-arc-wrong-state": {("fault-in-arc", "STOP", "RUNNING_P2P")},
    "v1-accept-101": {("arc", s, "RESUMING|RUNNING") for s in V1_VALID_NAMES},
    "v1-accept-111": {("arc", s, "RESUMING|SAVING|RUNNING") for s in V1_VALID_NAMES},
    "v1-error-writable": {("arc", s, "ERROR") for s in V1_VALID_NAMES},
    "v1-resume-no-wipe": {("resume-twice", "RESUMING", "RUNNING")},
    "v1-deserialize-early": {("stopped-frozen", "RESUMING", None)},
    "v1-stop-not-frozen": {("stopped-frozen", "STOP", None)},
    "v1-pending-never-zero": {("save-sequence", "SAVING", "STOP"), ("save-source", "SAVING", "STOP")},
    "v1-data-offset-oob": {("save-sequence", "SAVING", "STOP")},
    "v1-failed-write-third-state": {("arc", "RUNNING", "RESUMING|RUNNING")},
    "v1-readonly-field-writable": {("readonly-field", "SAVING", None)},
    "v1-pending-grows": {("save-sequence", "SAVING", "STOP")},
    "v2-empty-session-loads": {("damaged-stream", "RESUMING", "STOP"), ("session-empty", "RESUMING", "STOP")},
    "v2-failed-write-counted": {("damaged-stream", "RESUMING", "STOP"), ("session-failed-write", "RESUMING", "STOP")},
    "v2-register-not-migrated": {("round-trip", s, "STOP") for s in ("STOP_COPY", "PRE_COPY", "PRE_COPY_P2P")}
    | {("reg-migrated", "RUNNING", "STOP"), ("reg-while-stopped", "STOP", "STOP"),
       ("reg-while-stopped", "STOP_COPY", "STOP")},
    "v2-state-survives-reopen": {("reopen", s, "RUNNING") for s in ("ERROR", *V2_STATES) if s != "RUNNING"}
    | {("reopen-round-trip", s, "STOP") for s in ("STOP_COPY", "PRE_COPY", "PRE_COPY_P2P", "RESUMING")},
    "v2-rx-uninitialized": {("reg-data-out", "RUNNING", None)},
    "v2-config-oob-read": {("reg-leak", "RUNNING", None)},
}
# variants whose defect lies outside what the sweep drives, and why (the sweep closes and re-opens
# devices and reads and writes their registers through the target's profile)
NOT_SWEPT: dict = {
    "v2-reset-not-deferred": "a race: the sweep makes one call at a time (the fuzzer's race op finds it)",
    **dict.fromkeys(("v2-uart-tail-trusted", "v2-uart-tail-trusted-crc", "v2-fifo-tail-oob-read",
                     "v2-fifo-head-oob-write"),
                    "a field value inside a loaded stream: the sweep damages streams, it sets no field to a "
                    "value (the fuzzer's field edits find it)"),
}

# the zoo's finding kind -> check groups of the sweep that reveal that kind of defect
KIND_TO_CHECKS = {
    "hang": {"arc", "save-sequence", "save-source", "round-trip"},
    "accepted-invalid": {"arc", "precopy-info", "feature", "readonly-field"},
    "rejected-valid": {"arc", "reach"},
    "state-mismatch": {"reset", "arc", "reopen", "reopen-round-trip"},
    "info-leak": {"reg-data-out", "reg-leak"},
    "out-of-bounds": {"reg-leak"},
    "bad-state-after-failure": {"arc", "fault-in-arc"},
    "fd-misuse-accepted": {"fd-after-reset", "fd-after-session-end", "fd-wrong-direction", "fd-seek"},
    "stream-protocol": {"stop-copy-eof", "precopy-eof", "precopy-info-covers", "precopy-info-initial",
                        "save-sequence"},
    "valid-stream-rejected": {"round-trip", "resume-segmented", "resume-twice"},
    "resume-corrupted": {"round-trip", "reg-migrated", "reg-while-stopped"},
    "damaged-stream-accepted": {"damaged-stream", "session-empty", "session-prefix", "session-failed-write"},
    "state-changed-while-stopped": {"stopped-frozen"},
    "resource-leak": {"fault-in-arc"},
    "region-layout": {"save-sequence"},
    "target-exception": {"fault-in-arc"},
}


def test_every_zoo_variant_has_an_expectation():
    assert set(EXPECTED_CELLS) | set(NOT_SWEPT) == set(BUGS) and not set(EXPECTED_CELLS) & set(NOT_SWEPT)


@pytest.mark.parametrize("variant", sorted(EXPECTED_CELLS))
def test_zoo_variant_fails_on_its_cells_which_pass_on_the_correct_simulator(zoo, clean, variant):
    result = zoo[variant]
    assert result["summary"]["fail"] > 0
    missing = EXPECTED_CELLS[variant] - fails(result)
    assert not missing, f"{variant}: expected failures missing: {missing}; got {sorted(fails(result))[:8]}"
    good = clean["sim:proto=v1" if BUGS[variant].proto == "v1" else "sim:flags=0x7"]
    for cell in EXPECTED_CELLS[variant]:
        records = [c for c in good["checks"] if (c["check"], c["from"], c["to"]) == cell]
        assert records and all(c["verdict"] == "pass" for c in records), cell


@pytest.mark.parametrize("variant", sorted(EXPECTED_CELLS))
def test_zoo_variant_fails_in_a_check_group_matching_its_finding_kind(zoo, variant):
    groups = {c["check"] for c in zoo[variant]["checks"] if c["verdict"] == "fail"}
    assert groups & KIND_TO_CHECKS[BUGS[variant].finding], (variant, groups)


def test_hang_is_recorded_in_its_cell_and_only_there(zoo):
    result = zoo["v2-precopy-arc-hang"]
    assert fails(result) == EXPECTED_CELLS["v2-precopy-arc-hang"]
    for c in failing(result, "arc"):
        assert c["observed"].startswith("hang") and c["outcome"]["status"] == "hang", c
    # the sweep carried on: the cells after the hang were checked and pass
    after = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "RESUMING"]
    assert after and all(c["verdict"] == "pass" for c in after)


def test_reset_not_running_is_localised_to_the_reset_rows(zoo):
    result = zoo["v2-reset-not-running"]
    assert {c["check"] for c in result["checks"] if c["verdict"] == "fail"} == {"reset"}


def test_exception_text_and_type_are_recorded(zoo):
    cells = failing(zoo["v2-errptr-on-alloc-failure"], "fault-in-arc")
    assert any(c["observed"].startswith("exception AttributeError") for c in cells)
    assert any(c["outcome"] == dict(c["outcome"], status="exception", exception="AttributeError") for c in cells)


def test_unreachable_rows_are_info_and_their_cause_fails(zoo):
    result = zoo["v2-p2p-arc-missing"]
    stop_row = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "STOP"]
    assert stop_row and all(c["verdict"] == "info" and c["outcome"]["status"] == "not-reached" for c in stop_row)
    reach = failing(result, "reach")
    assert any("RUNNING -> RUNNING_P2P refused" in c["observed"] and c["outcome"]["err"] == errno.EINVAL
               for c in reach)


# --------------------------------------------------------------------------- structured records


def test_every_record_carries_its_expectation_and_outcome_as_data(clean, zoo):
    for result in [*clean.values(), *zoo.values()]:
        for c in result["checks"]:
            exp, out = c["expect"], c["outcome"]
            assert {"ok", "errnos", "states", "fd"} <= set(exp), c
            assert {"status", "err", "accepted", "state", "fd"} <= set(out), c
            assert out["status"] in conform.STATUSES
            assert out["accepted"] == (None if out["err"] is None else out["err"] == 0)
            if c["verdict"] == "info":
                assert out["status"] != "answered" or exp["ok"] is None or "target does not" in c["observed"], c


def test_arc_records_agree_with_the_model(clean):
    """The data of an arc record is the model's answer, and a passing record's outcome meets it."""
    result = clean["sim:flags=0x7"]
    names = {model.v2_name(v): v for v in (*range(8), *conform.OUT_OF_RANGE)}
    for c in (c for c in result["checks"] if c["check"] == "arc"):
        frm, to = names[c["from"]], names[c["to"]]
        plan = model.plan(0x7, frm, to)
        exp, out = c["expect"], c["outcome"]
        assert exp["ok"] == (plan is not None)
        if plan is not None:
            assert exp["fd"] == plan.fd and exp["noop"] == (plan.hops == ())
        assert out["state"] in exp["states"] and out["fd"] == bool(exp["fd"]) and out["accepted"] == exp["ok"]


def test_damages_are_transport_mangles():
    """Every transport damage kind is swept, through harness.runtime.mangle itself."""
    stream = bytes(range(256)) * 2
    kinds = {d.kind for d in conform.DAMAGES}
    damages = set(MANGLE_KINDS) - set(FIELD_MANGLES)  # a field set to a value may make another valid stream
    assert damages <= kinds and kinds - damages == {"replay"}
    for d in conform.DAMAGES:
        if d.kind in MANGLE_KINDS:
            cap = bytearray(stream)
            mangle(cap, d.kind, d.arg(len(stream)))
            assert d.apply(stream) == bytes(cap) != stream, d.label
    by_label = {d.label: d.apply(stream) for d in conform.DAMAGES}
    assert by_label["empty"] == b"" and by_label["truncated by 1 byte"] == stream[:-1]
    assert len(by_label["truncated to half"]) == len(stream) // 2


def test_the_module_owns_no_runtime_procedure_and_imports_only_at_the_top():
    tree = ast.parse((ROOT / "fuzz" / "conform.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node)), node.name
        if isinstance(node, ast.ImportFrom):
            assert node.module not in ("cli", "fuzz.cli"), "conform must not import the CLI"
        if isinstance(node, ast.Assign):
            names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            assert not names & {"DRAIN_LIMIT", "DRAIN_CHUNK", "V1_ITER_LIMIT"}, names
        if isinstance(node, ast.FunctionDef):
            assert node.name not in ("errname", "v2name", "v1name", "flag_names", "add_parser"), node.name


# --------------------------------------------------------------------------- resilience, real-device shape


def _sim_target(attrs: dict | None = None, device_mixin=None, **kw):
    """A simulator target with some of its attributes changed (has_digest, validates_stream, ...)."""
    target = SimTarget(**kw)
    for name, value in (attrs or {}).items():
        setattr(target, name, value)
    if device_mixin is not None:
        for d in target.devices:
            d.__class__ = type("D", (device_mixin, d.__class__), {})
    return target


class Flaky:
    """A device that throws on one request, and whose next reset then throws too."""

    def set_state(self, new):
        if new == MigState.PRE_COPY_P2P and self.state == MigState.STOP:
            self.broken = True
            raise RuntimeError("driver blew up")
        return super().set_state(new)

    def reset(self):
        if getattr(self, "broken", False):
            raise OSError("reset failed")
        return super().reset()


def test_exceptions_are_fails_and_a_failed_reset_reopens_the_target():
    spec = parse_target("sim:flags=0x7")
    opened = []

    def open_fn(_spec):
        opened.append(1)
        return _sim_target(device_mixin=Flaky, flags=0x7)

    result = conform.sweep(spec, target=open_fn(spec), open_fn=open_fn)
    cell = next(c for c in result["checks"] if (c["check"], c["from"], c["to"]) == ("arc", "STOP", "PRE_COPY_P2P"))
    assert cell["verdict"] == "fail" and "RuntimeError: driver blew up" in cell["observed"]
    assert cell["outcome"]["status"] == "exception" and cell["outcome"]["exception"] == "RuntimeError"
    assert len(opened) >= 2  # re-opened after the reset raised
    later = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "RUNNING"]
    assert later and all(c["verdict"] == "pass" for c in later)
    assert fails(result) == {("arc", "STOP", "PRE_COPY_P2P")}


def test_without_digest_the_round_trip_compares_a_re_saved_stream():
    result = conform.sweep("sim:flags=0x7", target=_sim_target({"has_digest": False}, flags=0x7))
    assert result["summary"]["fail"] == 0, sorted(fails(result))
    trips = [c for c in result["checks"] if c["check"] == "round-trip"]
    assert trips and all("re-saved stream identical" in c["observed"] and c["outcome"]["same"] for c in trips)
    frozen = [c for c in result["checks"] if c["check"] == "stopped-frozen"]
    assert frozen and all(c["verdict"] == "info" and c["outcome"]["status"] == "unsupported" for c in frozen)


def test_v1_without_digest_round_trip_and_no_faults():
    target = _sim_target({"has_digest": False, "supports_faults": False}, proto="v1")
    result = conform.sweep("sim:proto=v1", target=target)
    assert result["summary"]["fail"] == 0, sorted(fails(result))
    assert all("identical" in c["observed"] for c in result["checks"] if c["check"] == "round-trip")
    error_row = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "ERROR"]
    assert error_row and all(c["verdict"] == "info" for c in error_row)


def test_damaged_stream_accepted_is_info_when_the_target_does_not_validate_streams():
    target = _sim_target({"validates_stream": False}, flags=0x7, bug="v2-resume-no-validate")
    result = conform.sweep("sim:flags=0x7,bug=v2-resume-no-validate", target=target)
    damaged = [c for c in result["checks"] if c["check"] == "damaged-stream"]
    assert damaged and {c["verdict"] for c in damaged} <= {"pass", "info"}
    assert any(c["verdict"] == "info" and c["outcome"]["accepted"] for c in damaged)


def test_a_kernel_hang_writes_the_partial_report_and_exits(monkeypatch):
    """A real target reports a stuck call through target.on_hang (it cannot be interrupted)."""

    class Exit(BaseException):
        pass

    def fake_exit(code):
        raise Exit(code)

    class Stuck:
        def set_state(self, new):
            if new == MigState.RESUMING and self.state == MigState.STOP:
                hook = self.target_ref.on_hang
                hook("set_state", 10.0)  # the watchdog thread's call; never returns
            return super().set_state(new)

    target = _sim_target({"on_hang": None}, device_mixin=Stuck, flags=0x1)
    for d in target.devices:
        d.target_ref = target
    partial = []
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(Exit):
        conform.sweep("sim:flags=0x1", target=target, on_abort=partial.append)
    (result,) = partial
    assert result["aborted"]
    last = result["checks"][-1]
    assert last["verdict"] == "fail" and last["observed"].startswith("hang: set_state did not return")
    assert last["outcome"]["status"] == "hang"


# --------------------------------------------------------------------------- CLI and formats


def test_json_schema(capsys):
    assert main(["conform", "--target", "sim:flags=0x7,bug=v2-p2p-arc-missing", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "sim:proto=v2,flags=0x7,bug=v2-p2p-arc-missing"
    assert data["protocol"] == "v2" and data["flags"] == 7
    names = {s.name for s in MigState} | {model.v2_name(v) for v in conform.OUT_OF_RANGE} | {None}
    for c in data["checks"]:
        assert set(c) == {"check", "from", "to", "expected", "observed", "path", "verdict", "expect", "outcome"}
        assert c["verdict"] in ("pass", "fail", "info")
        assert isinstance(c["path"], list) and all(isinstance(p, str) for p in c["path"])
        assert c["from"] in names and c["to"] in names, c
    arcs = [c for c in data["checks"] if c["check"] == "arc"]
    assert all(p in names for c in arcs for p in c["path"])
    refused = next(c for c in arcs if (c["from"], c["to"]) == ("RUNNING", "RUNNING_P2P"))
    assert refused["expect"] == {"ok": True, "errnos": None, "states": [MigState.RUNNING_P2P], "fd": False,
                                 "noop": False}
    assert refused["outcome"] == {"status": "answered", "err": errno.EINVAL, "accepted": False,
                                  "state": MigState.RUNNING, "fd": False}


def test_json_v1_uses_v1_state_names(capsys):
    assert main(["conform", "--target", "sim:proto=v1", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["protocol"] == "v1" and data["flags"] == 0
    names = set(V1_STATE_NAMES.values()) | {None}
    assert all(c["from"] in names and c["to"] in names for c in data["checks"])


def test_table_puts_failures_first(capsys):
    assert main(["conform", "--target", "sim:proto=v1,bug=v1-accept-111"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "DOES NOT CONFORM" in lines[1]
    body = [ln for ln in lines[3:] if ln.strip()]
    assert body[0].startswith("VERDICT")
    verdicts = [ln.split()[0] for ln in body[1:]]
    assert verdicts[:5] == ["FAIL"] * 5 and "FAIL" not in verdicts[5:]


def test_markdown_and_out_file(tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["conform", "--target", "sim:flags=0x3,bug=v2-error-requestable", "--format", "md",
                 "--out", str(out)]) == 1
    text = out.read_text()
    assert text.startswith("# Conformance: `sim:proto=v2,flags=0x3,bug=v2-error-requestable`")
    assert "| verdict | check | from | to | expected | observed | path |" in text
    first_row = text.split("|---|---|---|---|---|---|---|\n")[1].splitlines()[0]
    assert first_row.startswith("| **FAIL** | arc |")
    capsys.readouterr()


@pytest.mark.parametrize("argv", [
    ["conform", "--target", "sim:flags=0x2"],
    ["conform", "--target", "bogus"],
    ["conform", "--target", "sim:bug=no-such-bug"],
    ["conform", "--target", "sim:bug=v1-accept-101"],  # a v1 variant without proto=v1
    ["conform", "--format", "pdf"],
    ["conform", "--out", "/nonexistent/dir/x.html"],
    ["conform", "--out", "/"],  # a directory
    ["conform", "--target", "kernel:dev=0000:00:00.0"],  # a real device needs the confirmation flag
    ["report-html", "--jsonl", "/nonexistent.jsonl", "--out", "x.html"],
])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_an_unwritable_out_file_is_a_usage_error(tmp_path, capsys):
    if os.geteuid() == 0:
        out = tmp_path / "ro.json"
        out.mkdir()  # root can write anywhere: a directory in the way is the failure left to show
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "x.json"
    assert main(["conform", "--format", "json", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and len(err.strip().splitlines()) == 1


def test_unavailable_target_exits_3(capsys, monkeypatch):
    monkeypatch.delenv("MIGFUZZ_MTTY", raising=False)
    assert main(["conform", "--target", "mtty", "--i-know-this-resets-the-device"]) == 3
    assert "unavailable" in capsys.readouterr().err


def test_cli_parses_conform_and_report_html_without_loading_them():
    """The CLI declares both commands' arguments itself and imports the modules only to run them."""
    code = ("import sys, fuzz.cli; p = fuzz.cli.build_parser(); "
            "p.parse_args(['conform']); p.parse_args(['report-html', '--jsonl', 'a', '--out', 'b']); "
            "bad = [m for m in ('fuzz.conform', 'fuzz.htmlreport', 'fuzz.executor', 'fuzz.oracles') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checks_are_data(clean):
    """The rule tables drive the cases: every data_fd rule and framing case shows up for flags 0x7."""
    result = clean["sim:flags=0x7"]
    fd_checks = {r.check for r in conform.V2_FD_RULES}
    assert fd_checks <= {c["check"] for c in result["checks"]}
    assert sum(c["check"] == "feature" for c in result["checks"]) == len(conform.FEATURE_CASES)
    assert sum(c["check"] == "damaged-stream" for c in result["checks"]) == len(conform.DAMAGES)
    segs = [c["expect"]["seg"] for c in result["checks"] if c["check"] == "resume-segmented"]
    assert segs == [seg for _, seg in conform.RESUME_SEGMENTS]


# --------------------------------------------------------------------------- lifecycle, registers, sessions

LIFECYCLE_VARIANTS = ["v2-state-survives-reopen", "v2-rx-uninitialized", "v2-config-oob-read",
                      "v2-register-not-migrated", "v2-empty-session-loads"]


@pytest.mark.parametrize("bug", LIFECYCLE_VARIANTS)
def test_conform_exits_1_on_the_lifecycle_and_register_variants(bug, capsys):
    assert main(["conform", "--target", f"sim:bug={bug}"]) == 1
    assert "DOES NOT CONFORM" in capsys.readouterr().out


@pytest.mark.parametrize("target", CLEAN_TARGETS)
def test_reopen_runs_from_every_state_the_reset_does(clean, target):
    result = clean[target]
    rows = {c["from"] for c in result["checks"] if c["check"] == "reset"}
    assert {c["from"] for c in result["checks"] if c["check"] == "reopen"} == rows
    trips = {c["from"] for c in result["checks"] if c["check"] == "reopen-round-trip"}
    if result["protocol"] == "v2":
        assert trips == {model.v2_name(s) for s in model.SESSION_STATES if model.supported(result["flags"], s)}
    else:
        assert trips == {"SAVING", "SAVING|RUNNING", "RESUMING"}
    sessions = [c["expect"]["session"] for c in result["checks"] if c["check"].startswith("session-")]
    assert sessions == [s.label for s in conform.SESSIONS]


def test_a_device_refusing_a_bad_header_at_write_time_conforms():
    """The refused-write path of the session checks, on a device that takes it correctly."""
    result = sweep_broken(Broken("sim:flags=0x7", HeaderCheckedAtWrite, (), {}))
    assert result["summary"]["fail"] == 0, sorted(fails(result))
    rec = next(c for c in result["checks"] if c["check"] == "session-failed-write"
               and c["expect"]["session"] == "a stream with a damaged header, then the stream")
    assert rec["verdict"] == "pass"
    assert rec["outcome"]["writes"] == [errno.EINVAL, 0] and rec["outcome"]["held"] == "stream"
    assert rec["outcome"]["err"] == 0 and rec["outcome"]["state"] == MigState.STOP


def test_v1_field_and_pending_rules_come_from_the_model(monkeypatch):
    result = conform.sweep("sim:proto=v1")
    cells = {(c["from"], c["expect"]["field"]) for c in result["checks"] if c["check"] == "readonly-field"}
    assert cells == {(V1_STATE_NAMES[s], n) for s in model.V1_VALID for n in V1_FIELDS if model.v1_read_only(n, s)}
    assert failing(conform.sweep("sim:proto=v1,bug=v1-pending-grows"), "save-sequence")
    # change the model's rules and the sweep follows them
    monkeypatch.setattr(model, "v1_pending_may_grow", lambda state: True)
    assert not failing(conform.sweep("sim:proto=v1,bug=v1-pending-grows"), "save-sequence")
    monkeypatch.setattr(model, "v1_read_only", lambda name, state: name == "data_offset")
    result = conform.sweep("sim:proto=v1")
    cells = {(c["from"], c["expect"]["field"]) for c in result["checks"] if c["check"] == "readonly-field"}
    assert cells == {(V1_STATE_NAMES[s], "data_offset") for s in model.V1_VALID}


def test_register_checks_follow_the_target_profile():
    target = SimTarget("v2", 0x7)
    target.profile = load_profile("mtty").only({0, 7})  # the simulator's UART laid out as mtty's
    result = conform.sweep("sim:flags=0x7", target=target)
    count = {g: sum(c["check"] == g for c in result["checks"]) for g in ("reg-observe", "reg-leak", "reg-data-out")}
    profile = target.profile
    assert count == {"reg-observe": len(profile.observation_registers()),
                     "reg-leak": sum(len(r.widths) for r in profile.regions.values()), "reg-data-out": 2}
    # mtty's RX declares no idle value: the simulator's idle 0 from an empty FIFO is a byte nobody put in
    out = failing(result, "reg-data-out")
    assert len(out) == 2 and all(c["outcome"]["stray"] == [0] * conform.IDLE_READS for c in out)
    assert {c["check"] for c in result["checks"] if c["verdict"] == "fail"} == {"reg-data-out"}
    # a profile without registers: config-space reads only
    target = SimTarget("v2", 0x7)
    target.profile = load_profile("pci")
    result = conform.sweep("sim:flags=0x7", target=target)
    regs = [c for c in result["checks"] if c["check"].startswith("reg-")]
    assert {c["check"] for c in regs} == {"reg-leak"} and all(c["verdict"] == "pass" for c in regs)
    # no profile at all: no register checks
    target = SimTarget("v2", 0x7)
    target.profile = None
    assert not [c for c in conform.sweep("sim:flags=0x7", target=target)["checks"] if c["check"].startswith("reg-")]


@pytest.mark.parametrize("proto", ["v2", "v1"])
def test_a_real_device_shaped_target_is_judged_by_what_it_shows(proto):
    """No digest, no promise to validate streams, no fault injection (a kernel target): the new
    checks still pass on the correct simulator, comparing registers and re-saved streams."""
    attrs = {"has_digest": False, "validates_stream": False, "supports_faults": False}
    target = _sim_target(attrs, proto=proto)
    result = conform.sweep(f"sim:proto={proto}", target=target)
    assert result["summary"]["fail"] == 0, sorted(fails(result))
    new = [c for c in result["checks"] if c["check"].startswith(("reopen", "reg-", "session-"))]
    info = [c for c in new if c["verdict"] == "info"]
    assert all(c["from"] == "ERROR" and c["outcome"]["status"] == "not-reached" for c in info), info
    trips = [c for c in new if c["check"] == "reopen-round-trip"]
    assert trips and all("re-saved stream identical" in c["observed"] for c in trips)
