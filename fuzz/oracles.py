"""Oracles: the sole judge. Every verdict on a device's answers is made here.

The executor calls the device and hands each raw answer to one ``on_*`` method; the
oracle compares it with what ``fuzz.model`` allows, keeps the protocol-side view of each
device (:class:`DeviceView`: expected state, data_fd slots, captured stream, what was
written into a resume session) and raises :class:`FindingRaised` at the first violation.
Nothing else writes to a view.

Every verdict names its finding kind (``fuzz.findings.KINDS``) and its claim as data
(:class:`~fuzz.findings.Check`): what the device answered at this step that shows the
defect. The ``expected``/``observed`` strings only render that claim for people.
"""
from __future__ import annotations

import errno
from typing import NamedTuple

from harness.runtime import (
    FIELD_MANGLES,
    RACE_FAILED,
    RACE_FD,
    RACE_OK,
    RACE_READ,
    V1_DATA,
    V1_DONE,
    V1_MORE,
    V1_OFFSET,
    V1_PENDING,
    kernel_addresses,
    race_outcome,
    race_result,
)
from harness.runtime import mangle as transport_mangle
from harness.uapi import V1_ERROR, V1_MASK, V1_RUNNING, V1_SAVING

from . import model
from .findings import UNCHECKABLE, Check, Finding
from .model import errname, v1_name, v1_value, v2_name

OK = Check("ok")
FAILED = Check("failed")
GET_FAILED = Check("get_failed")


def v2_state_check(expected: int, got: int | None) -> Check:
    """A state-mismatch's claim: a state none of the protocol's (a device that wrote over its own
    state, mtty's #8) claims just that, which a fixed device refutes even where the program takes
    another course on it; else the state read back is not the expected one."""
    if got is not None and not 0 <= got < len(model.STATE_NAMES):
        return Check("state_unknown", len(model.STATE_NAMES))
    return Check("state_not", expected)


class FindingRaised(Exception):
    def __init__(self, finding: Finding):
        super().__init__(finding.kind)
        self.finding = finding


class Slot:
    """One data_fd a device returned, as the protocol sees it."""

    __slots__ = ("fd", "saving", "live", "ended_by")

    def __init__(self, fd: int, saving: bool):
        self.fd = fd
        self.saving = saving
        self.live = True  # False: its session ended; None: unknown (after ERROR)
        self.ended_by = ""  # what ended it: "reset" or "session end"

    def end(self, why: str) -> None:
        if self.live:
            self.live = False
            self.ended_by = why

    def copy(self) -> Slot:
        twin = Slot.__new__(Slot)
        twin.fd, twin.saving, twin.live, twin.ended_by = self.fd, self.saving, self.live, self.ended_by
        return twin


class DeviceView:
    """The protocol-side view of one device during a program (written by the oracle only)."""

    __slots__ = ("state", "slots", "capture", "capture_done", "capture_tainted", "mangled", "edited", "original",
                 "resume", "resume_kind", "resume_opaque", "write_failed", "frozen", "pc_expect", "pc_initial",
                 "_entered", "_own", "entering", "pending_last")

    def __init__(self, state: int):
        self.state = state
        self.slots: list[Slot] = []
        self.capture = bytearray()  # bytes read from the current/last saving session
        self.capture_done = False  # the end of that stream was seen
        self.capture_tainted = False  # bytes may be missing (v1 raw field access)
        self.mangled = False  # a transport fault changed the capture after it was complete
        self.edited = False  # a field of that complete capture was set (a valid stream, for all one knows)
        self.original: bytes | None = None  # the complete stream as the device sent it
        self.resume = bytearray()  # bytes written into the current resume session
        # "", "derived" (one transfer of a capture), "derived-damaged", "derived-edited", "mixed"
        self.resume_kind = ""
        self.resume_opaque = False  # the device took bytes the executor cannot know
        self.write_failed = False  # a resume write of this session failed (no injected fault)
        self.frozen: bytes | None = None  # digest when the device last stopped
        self.pc_expect = -1  # pre-copy bytes still announced by PRECOPY_INFO
        self.pc_initial = -1
        self._entered: set = set()  # see entered
        self._own: set = set()  # see own
        # Bytes entered and not yet in those sets: a transfer enters every piece it writes, and
        # most programs never ask which byte values entered, so they are added only when asked.
        self.entering: list[bytes] = []
        self.pending_last = -1  # v1: pending_bytes last read in stop-and-copy

    @property
    def entered(self) -> set:
        """Byte values put into the device (registers, streams), by earlier programs too."""
        if self.entering:
            self._take_entering()
        return self._entered

    @entered.setter
    def entered(self, values: set) -> None:
        if self.entering:
            self._take_entering()  # this program's bytes stay in own
        self._entered = values

    @property
    def own(self) -> set:
        """Byte values this program put into the device."""
        if self.entering:
            self._take_entering()
        return self._own

    def _take_entering(self) -> None:
        data = b"".join(self.entering)
        self.entering.clear()
        self._entered.update(data)
        self._own.update(data)

    def copy(self) -> DeviceView:
        """A copy that shares nothing mutable with this view (what a race replays an order from)."""
        twin = DeviceView.__new__(DeviceView)
        twin.become(self)
        return twin

    def become(self, other: DeviceView) -> None:
        """Take every field of ``other``, sharing nothing mutable with it (a race's snapshot and
        restore). Field by field: a loop of getattr/setattr over __slots__ took twice as long
        (2.3 against 1.1 us, timeit); tests/test_oracles.py checks that every slot is taken."""
        self.state = other.state
        self.slots = [slot.copy() for slot in other.slots]
        self.capture = bytearray(other.capture)
        self.capture_done = other.capture_done
        self.capture_tainted = other.capture_tainted
        self.mangled = other.mangled
        self.edited = other.edited
        self.original = other.original
        self.resume = bytearray(other.resume)
        self.resume_kind = other.resume_kind
        self.resume_opaque = other.resume_opaque
        self.write_failed = other.write_failed
        self.frozen = other.frozen
        self.pc_expect = other.pc_expect
        self.pc_initial = other.pc_initial
        self._entered = set(other._entered)
        self._own = set(other._own)
        self.entering = list(other.entering)
        self.pending_last = other.pending_last

    def enter(self, data) -> None:
        """Bytes the program put into the device."""
        self.entering.append(bytes(data))  # a copy if the caller may change them (bytes are kept as they are)

    def slot(self, index: int) -> Slot | None:
        slots = self.slots
        return slots[-1 - index] if index < len(slots) else None

    def new_capture(self) -> None:
        self.capture = bytearray()
        self.capture_done = self.capture_tainted = self.mangled = self.edited = False
        self.original = None
        self.pc_expect = self.pc_initial = self.pending_last = -1

    def new_resume(self) -> None:
        self.resume = bytearray()
        self.resume_kind = ""
        self.resume_opaque = False
        self.write_failed = False


class Oracle:
    """Shared judgement: streams, resume fidelity, frozen state, leaks, faults, hangs."""

    initial_state = 0

    def __init__(self, target):
        self.has_digest = target.has_digest
        self.validates_stream = target.validates_stream
        self.profile = target.profile
        self.leak_check_stream = target.profile.leak_check_stream
        # Device-visible state across a migration (no digest): the side-effect-free registers.
        self.observed = () if target.has_digest else target.profile.observation_registers()
        self.ndevices = len(target.devices)
        self.views: list[DeviceView] = []
        # Byte values earlier programs put into devices that keep them (target.retains_data): what
        # a device hands out may be their bytes, not device-internal memory.
        self.retains_data = target.retains_data
        self.entered_before: set = set()
        # A profile's [[init]] writes start every program with its data registers empty (mtty's FCR
        # clears both FIFOs): what a data-out register hands out then entered in this program.
        self.data_regs_reset = bool(target.profile.init)
        self.known: dict[bytes, bytes | None] = {}  # complete untouched streams -> source digest
        self.edited: set = set()  # complete streams with a field set: valid ones, for all one knows
        self.source_registers: dict[bytes, tuple] = {}  # complete streams -> the source's registers then
        # ("source"|"dest", device index, stream): observation registers the executor must read now
        self.observe: tuple | None = None
        # (state before, op name, requested value or None): formatted only for a finding
        self.arc_at: tuple = (0, "", None)
        # (stream, bytes of it a loader was given) of every load and refused transfer of this
        # program, taken or refused: the campaign's boundary-field figure (fuzz.layout.BoundaryCoverage)
        self.given_streams: list = []

    def retained(self) -> set:
        """Byte values a device that keeps what programs put into it (``retains_data``) may hold
        now: those of earlier programs and of this one so far (empty for any other device)."""
        if not self.retains_data:
            return set()
        return set(self.entered_before).union(*(view.entered for view in self.views))

    def inherit(self, other: Oracle) -> None:
        """Judge the next programs on the same devices as ``other`` has so far (what they retain)."""
        self.entered_before = other.retained()

    def begin(self) -> list[DeviceView]:
        """A fresh view of every device (all in the power-on state) for a new program."""
        self.known.clear()
        self.edited.clear()
        self.source_registers.clear()
        self.given_streams.clear()
        self.observe = None
        if self.retains_data:
            for view in self.views:
                self.entered_before |= view.entered
        self.views = [DeviceView(self.initial_state) for _ in range(self.ndevices)]
        if self.entered_before:
            for view in self.views:
                view.entered = set(self.entered_before)
        return self.views

    @property
    def arc(self) -> str:
        state, name, to = self.arc_at
        text = f"{self.state_name(state)} -{name}->"
        return text if to is None else f"{text} {self.value_name(to)}"

    def fail(self, kind: str, expected: str, observed: str, check: Check = UNCHECKABLE, detail: str = "",
             cause: str = "") -> None:
        raise FindingRaised(Finding(kind, -1, expected, observed, self.arc, detail=detail,
                                    check=check, cause=cause))  # the executor sets the step and the op

    # -- what the executor cannot call an answer -----------------------------------

    def hang(self, what: str) -> Finding:
        """A device call that did not return (the simulator's watchdog)."""
        return Finding("hang", -1, "the call returns", f"no return: {what}", self.arc, check=Check("hang"))

    def exception(self, exc: BaseException, tb: str) -> Finding:
        """An exception escaped from the target."""
        return Finding("target-exception", -1, "no exception", f"{type(exc).__name__}: {exc}", self.arc,
                       detail=tb, check=Check("exception"))

    def on_splats(self, reports: list) -> None:
        """Kernel reports logged while the program ran (real devices): ``harness.kernel.kmsg.KernelReport``s
        (their title and top frames become the finding's cause, their whole text its detail) or bare lines."""
        if reports:
            first = reports[0]
            self.fail("kernel-splat", "no kernel WARN, BUG, oops or lockup report", getattr(first, "headline", first),
                      detail="\n".join(getattr(r, "text", r) for r in reports), cause=getattr(first, "cause", ""))

    def on_fault_fired(self, view: DeviceView, got: int, error: int) -> None:
        """An injected fault fired during an op; ``got`` is the state the device reports now.

        Any internal step can fail (the data path too), and a hardware error may put the
        device in its error state; any other change of state is a finding."""
        if got == error and view.state != error:
            view.state = error
            for s in view.slots:
                s.live = None
            view.frozen = None
        elif got != view.state:
            self.fail("bad-state-after-failure", f"{self.state_name(view.state)} or the error state",
                      self.state_name(got))

    # -- streams ----------------------------------------------------------------

    def stream_complete(self, view: DeviceView, digest: bytes | None) -> None:
        if not view.capture_done and not view.capture_tainted and view.capture:
            view.original = bytes(view.capture)
            self.known[view.original] = digest
            if self.observed:
                self.observe = ("source", self.views.index(view), view.original)
        view.capture_done = True

    def stream_data(self, view: DeviceView, data: bytes) -> None:
        if view.capture_done:
            self.fail("stream-protocol", "no data after the end of the stream", f"{len(data)} more bytes",
                      Check("data_after_end"))
        if self.leak_check_stream and 0xFF in data:  # an address's top byte would be in the new bytes
            self.check_addresses(view, bytes(view.capture[-7:]) + data, "the data_fd")
        view.capture += data

    # -- what a device hands out (info leaks) ------------------------------------------

    def check_addresses(self, view: DeviceView, data: bytes, where: str) -> None:
        """Bytes a device handed out must not hold a kernel address the program did not put there.

        Every kernel address has 0xff as its top byte, so callers test ``0xFF in data`` first and
        build ``data`` and ``where`` only then (an int: CPython 3.11 tries a bytes operand of ``in``
        as an index first, and makes and clears a TypeError, 4x the time)."""
        found = kernel_addresses(data, view.entered)
        if found:
            at, value = found[0]
            self.fail("info-leak", "no kernel address in what the device hands out",
                      f"{value:#018x} from {where} (byte {at})", Check("kernel_address"), cause="kernel address")

    def on_reg_read(self, view: DeviceView, region: int, off: int, err: int, data: bytes, guard_ok: bool,
                    limit: int | None) -> None:
        """A register read (rdreg): kernel addresses anywhere in it; inside the region (``limit``: its
        size); every byte of a data-out register (a receive FIFO) must have entered the device through
        the program, or be its idle value."""
        if err:
            return
        self.check_bounds(region, off, len(data), limit, "read")  # the defect a leak past the end comes from
        if 0xFF in data:  # (see check_addresses)
            self.check_addresses(view, data, f"region {region} +{off:#x}")
        if not guard_ok:
            return
        profile = self.profile
        held = view.own if self.data_regs_reset else view.entered
        for i, byte in enumerate(data):
            reg = profile.register(region, off + i)
            if reg is not None and reg.read == "data-out" and byte not in held and byte not in reg.idle:
                self.fail("info-leak", f"{reg.name} hands out only bytes the program put into the device",
                          f"{byte:#04x} (byte {i} of a {len(data)}-byte read at region {region} +{off:#x}), "
                          f"never written", Check("not_entered", (i, reg.idle)), cause=f"{reg.name} data")

    def on_reg_write(self, view: DeviceView, region: int, off: int, data: bytes, err: int,
                     limit: int | None) -> None:
        # Not only a FIFO's bytes enter the device: every register it keeps is device state, which
        # its stream carries (a 10-minute v1 campaign saw an 0xff written to a control register
        # come back inside a kernel-shaped window of the stream); and a wide write that fails may
        # have stored its first bytes (mtty_write() goes byte by byte and fails at the end).
        view.enter(data)
        if err:
            return
        self.check_bounds(region, off, len(data), limit, "write")

    def check_bounds(self, region: int, off: int, size: int, limit: int | None, what: str) -> None:
        """An access past the end of a region must fail: vfio-pci refuses it (vfio_pci_bar_rw(),
        vfio_pci_config_rw()); a driver with its own read/write must bound the offset itself (mtty's
        mdev_access() does not: samples/vfio-mdev/mtty.c)."""
        if limit is not None and off + size > limit:
            self.fail("out-of-bounds", f"a {what} past the end of region {region} ({limit:#x} bytes) is refused",
                      f"a {size}-byte {what} at +{off:#x} succeeded", OK, cause=f"region {region} {what} past its end")

    def device_touched(self, view: DeviceView, digest: bytes | None) -> None:
        """The program changed the device through its registers (a write, a read with side effects):
        legal in every state, so a stopped device's new state is the one to hold; a stream being
        saved from a stopped device may or may not carry the change."""
        if view.state in self.stopped_states and view.state in self.saving_states:
            view.capture_tainted = True
        if digest is not None and view.frozen is not None:
            view.frozen = digest

    def on_observed(self, values: tuple) -> None:
        """The observation registers the executor read for ``self.observe``."""
        what, index, stream = self.observe
        self.observe = None
        if what == "source":
            self.source_registers[stream] = values
            return
        source = self.source_registers.get(stream)
        if source is None:
            return
        for (region, off, name), before, after in zip(self.observed, source, values, strict=True):
            if before is not None and after is not None and before != after:
                self.fail("resume-corrupted", f"{name} after the resume reads as on the source at capture",
                          f"{name} (region {region} +{off:#x}) {after.hex()}, source {before.hex()}",
                          cause=f"register {name}")

    def on_reopen(self, view: DeviceView, err: int, got: int | None, gerr: int, live: int | None) -> None:
        """The device was closed (with its data_fds) and opened again, without a reset: it must come
        back in its initial state with no session (open_device), the old data_fds dead."""
        if err:
            self.fail("rejected-valid", "closing and opening the device again succeeds", errname(err), FAILED)
        if gerr or got is None:
            self.fail("state-mismatch", f"{self.state_name(self.initial_state)} after open", "state unreadable",
                      GET_FAILED)
        for s in view.slots:
            s.end("close")
        view.slots.clear()
        if got != self.initial_state:
            self.fail("state-mismatch", f"{self.state_name(self.initial_state)} after open (no session)",
                      self.state_name(got), Check("state_not", self.initial_state), cause="state survives reopen")
        view.state = self.initial_state
        view.frozen = None
        view.new_resume()
        view.pc_expect = view.pc_initial = view.pending_last = -1
        self.check_leak(0, live)

    def drained(self, view: DeviceView, ended: bool, what: str) -> None:
        """The end of a drain: a stream that never ended is a hang."""
        if not ended:
            self.fail("hang", "the stream ends", f"{what} after {len(view.capture)} bytes", Check("hang"))

    def resume_verdict(self, view: DeviceView) -> tuple[str, bytes | None]:
        """('valid', digest) / ('damaged', None) / ('unknown', None) for what was written."""
        if view.resume_opaque:
            return "unknown", None
        written = bytes(view.resume)
        if written in self.known:
            return "valid", self.known[written]
        if view.resume_kind == "derived-damaged":
            return "damaged", None
        return "unknown", None

    def loaded(self, view: DeviceView, ok: bool, digest: bytes | None, fault: bool) -> None:
        """Judge the end of a resume session (v1: RESUMING cleared; v2: RESUMING->STOP)."""
        verdict, source = self.resume_verdict(view)
        # the loader saw it, taken or not (a copy: a session a load refused goes on growing)
        self.given_streams.append((bytes(view.resume), len(view.resume)))
        if ok:
            self.accepted_bytes(view)
            if verdict == "valid" and self.observed:
                self.observe = ("dest", self.views.index(view), bytes(view.resume))
            if verdict == "valid" and source is not None and digest is not None and digest != source:
                self.fail("resume-corrupted", "destination state == source state at end of stream",
                          "state differs after a successful resume")
            if verdict == "damaged" and self.validates_stream:
                self.fail("damaged-stream-accepted", "a damaged stream is refused", "load succeeded", OK)
        elif verdict == "valid" and not fault:
            self.fail("valid-stream-rejected", "a complete untouched stream loads", "load refused", FAILED)

    def accepted_bytes(self, view: DeviceView) -> None:
        """A load succeeded: what the device accepted must have been a whole stream. A write that
        failed did not count (the user cannot know it did); an empty session and a strict prefix of
        a stream are incomplete for every driver (each stream has a header and an end)."""
        if view.resume_opaque:
            return
        written = bytes(view.resume)
        if written in self.known or written in self.edited:
            # a whole stream: the failed writes did not count (or did not matter); an edited one may be
            # valid (on_mangle), as the v1 simulator's load of one with a register byte set showed
            return
        if not written and not view.resume_kind:
            self.fail("damaged-stream-accepted", "a session into which nothing was written does not load",
                      "load succeeded", OK, cause="empty session")
        if view.write_failed:
            self.fail("damaged-stream-accepted", "a load uses only the bytes of writes that succeeded",
                      f"load succeeded, although a write failed and the {len(written)} bytes accepted are no "
                      f"stream", OK, cause="failed write counted")
        if any(len(k) > len(written) and k.startswith(written) for k in self.known):
            self.fail("damaged-stream-accepted", "a strict prefix of a stream does not load",
                      f"load succeeded from the first {len(written)} bytes of a stream", OK, cause="partial stream")

    def check_frozen(self, view: DeviceView, digest: bytes | None) -> None:
        if view.frozen is not None and digest != view.frozen:
            self.fail("state-changed-while-stopped", "device state unchanged while stopped", "digest changed")

    def check_leak(self, expected: int, live: int | None) -> None:
        if live is not None and live != expected:
            self.fail("resource-leak", f"{expected} migration file(s) held by the driver", f"{live}")

    def check_files(self, view: DeviceView, live: int | None) -> None:
        """The driver holds the files of the view's state (``files_expected``)."""
        expected = self.files_expected(view)
        if expected is not None:
            self.check_leak(expected, live)

    def stopped(self, view: DeviceView) -> bool:
        return view.state in self.stopped_states

    def on_activity(self, view: DeviceView, digest: bytes | None, sent: bytes | None) -> None:
        """``sent``: bytes the activity put through data-in registers (a real UART's TX, looped back)."""
        view.pc_expect = -1
        if sent:
            view.enter(sent)
        if digest is not None and view.state in self.stopped_states:
            self.check_frozen(view, digest)

    # -- transport -----------------------------------------------------------------

    def on_mangle(self, view: DeviceView, args: tuple) -> bool:
        """Apply a transport fault (``harness.runtime.mangle``'s arguments) to the capture; True if
        the bytes changed. A field set to a value (``set``, ``add``, checksum fixed up) may make a
        stream another valid one: a device that loads it is not judged on it (only on what it does
        with it: exceptions, leaks, hangs)."""
        cap = view.capture
        if not cap:
            return False
        before = bytes(cap)
        transport_mangle(cap, *args)
        after = bytes(cap)
        if view.original is not None:
            # damaged: a complete stream the device sent, no longer byte for byte what it sent (also
            # once a racing read left the capture incomplete: a flip back makes it that stream again)
            view.mangled = after != view.original
            view.edited = view.mangled and (view.edited or (args[0] in FIELD_MANGLES and after != before))
        if not view.capture_done and after != before:
            view.capture_tainted = True  # no longer what the device sent: never "complete"
        return after != before

    def transfer_source(self, src: DeviceView, dst: DeviceView) -> bytes | None:
        """The bytes a transfer writes (the source's capture) and the provenance they give the
        destination's resume session; None when there is nothing to transfer."""
        data = bytes(src.capture)
        if not data:
            return None
        if src.edited and len(data) == len(src.original):  # neither cut nor extended
            self.edited.add(data)
        dst.resume_kind = "mixed" if dst.resume or dst.resume_kind else (
            "derived-edited" if src.edited else "derived-damaged" if src.mangled else "derived")
        return data

    def transfer_failed(self, dst: DeviceView, data: bytes, offered: int, err: int, fault: bool,
                        complete: bool) -> None:
        """A write of a transfer failed after ``dst.resume`` was accepted; the first ``offered`` bytes
        of ``data`` were given to the device, the refused write's included."""
        # A loader may judge a stream as it is written: mtty_resume_write() checks the header.
        self.given_streams.append((data, offered))
        dst.enter(data)  # its bytes may be kept all the same (mtty_resume_write())
        if complete and not fault:
            self.fail("valid-stream-rejected", "every write of a complete untouched stream succeeds",
                      f"{errname(err)} after {len(dst.resume)} bytes", FAILED)
        if not fault:
            dst.write_failed = True
        dst.resume_kind = "mixed"

    # -- races -------------------------------------------------------------------------

    def on_race(self, view: DeviceView, sides: tuple, data: bytes, got: int | None, gerr: int, live: int | None,
                load_digest, source_digest, digest_before: bytes | None = None, closed_fd: int = -1) -> None:
        """Two calls raced (``sides``: two :class:`RaceSide`); ``got`` is the state read after both.
        Their results and that state must be those of one serial order of the two (the model's
        ``race_outcomes``); the view then goes through the calls in that order, each judged as it
        would be on its own (a stream read, a load, a misused data_fd ...). Only a load changes
        the device's digest: after the first call of an order it is ``digest_before`` (taken
        before the race) unless that call is the load. ``closed_fd``: see :meth:`race_fits`."""
        if data and (sides[0].kind == "write" or sides[1].kind == "write"):
            # The device may have kept them whatever is judged below: a finding here ends the
            # program before a replay enters them, and a later program must not take them for a leak.
            view.enter(data)
        if gerr or got is None:
            self.fail("rejected-valid", "reading the state after a race succeeds", errname(gerr), GET_FAILED)
        state = got & self.race_mask
        code, orders, fits = self.race_fits(view, sides, state, closed_fd)
        replay = (view, sides, data, state, live, load_digest, source_digest, digest_before)
        if not fits:
            allowed = sorted(set(orders[0]) | set(orders[1]))
            # (an order told by a closed data_fd is no claim a reproducer can check: it sees no fd)
            claim = Check("race_outcome_not_in", tuple(allowed)) if closed_fd < 0 else UNCHECKABLE
            blamed = self.race_blame(replay, orders)
            if blamed is not None:  # one call's answer is wrong whatever the order: that call's defect
                raise FindingRaised(blamed._replace(check=claim))
            names = [s.kind for s in sides]
            order = "one serial order" if closed_fd < 0 else \
                f"the SET first, as the reopen closed data_fd {closed_fd}, which the SET returned"
            self.fail("race-not-serializable", f"the results and state of {order}: "
                      + " or ".join(self.race_text(c, names) for c in allowed), self.race_text(code, names),
                      claim, cause="+".join(sorted(names)))
        saved = self.snapshot(view) if len(fits) > 1 else None
        wrong = []  # per order tried: the finding its replay made, or the files it leaves the driver
        for i, (order, mid) in enumerate(fits):
            if i:
                self.restore(saved)  # the other order, from where the race began
            try:
                self.race_replay(replay, order, mid)
            except FindingRaised as fr:
                wrong.append(fr.finding)
                continue
            files = self.files_expected(view)
            if live is not None and files is not None and live != files:
                wrong.append(files)  # the answers are those of this order, the driver's state is not
                continue
            if len(fits) > 1:
                self.forget_the_order(view, sides, saved[1])
            return
        if isinstance(wrong[0], Finding):  # a call's own claim is no claim on the race's answer
            raise FindingRaised(wrong[0]._replace(check=UNCHECKABLE))
        self.fail("race-not-serializable", f"{wrong[0]} migration file(s) held by the driver, as after the serial "
                  f"order the answers fit", f"{live}", UNCHECKABLE, cause="+".join(sorted(s.kind for s in sides)))

    def race_fits(self, view: DeviceView, sides: tuple, state: int, closed_fd: int = -1) -> tuple:
        """A race's outcome code, the model's outcomes of both serial orders (``model.race_outcomes``)
        and the orders that fit: [(order, the state its first call leaves)], 0 for a then b.
        ``closed_fd`` (else -1): the data_fd a SET returned and the reopen it raced closed, so the
        SET came first and the other order's outcomes are dropped. An open one says nothing: a
        real SET may run on the device fd before the reopen closes it and hand its data_fd over
        after the reopen closed the others."""
        a, b = sides
        mask = self.race_mask
        code = race_outcome(race_result(a.kind, a.answer, mask), race_result(b.kind, b.answer, mask), state)
        # (plain tuples: model.race_outcomes takes them for its RaceSlots and RaceCalls)
        slots = tuple([(s.live, s.saving, True) for s in view.slots])
        orders = model.race_outcomes(self.proto, self.flags, view.state, slots, (a.kind, a.arg, a.index),
                                     (b.kind, b.arg, b.index))
        if closed_fd >= 0:
            orders = (orders[0], {}) if a.kind == "set" else ({}, orders[1])
        # (spelled out: a comprehension is a function call of its own, once per race)
        fits = []
        ab, ba = orders
        if code in ab:
            fits.append((0, ab[code]))
        if code in ba:
            fits.append((1, ba[code]))
        return code, orders, fits

    def forget_the_order(self, view: DeviceView, sides: tuple, before: DeviceView) -> None:
        """Both serial orders fit a race's answers, and the view went through one of them: drop what
        only that order would tell (``before``: the view as the race found it). Whether a load
        happened (to compare the registers it would have loaded), what PRECOPY_INFO's sizes cover;
        whether a failed resume write was the device's refusal; for two reads of one data_fd that
        both got bytes, in which order those bytes come in the stream; for a read that found no
        data, whether it came before a SET (PRE_COPY: no data for now) or after it (STOP_COPY: the
        end of the stream)."""
        self.observe = None
        view.pc_expect = -1
        # A resume write that failed counts against the session's later load only if the device
        # refused it: in the other order a close (or reset, reopen) ended the data_fd first, and
        # EBADF says nothing of the stream. (Found by short campaigns on the correct simulator,
        # flags 0x7: write | close at sched 0 after a complete transfer, then a load.) Nor is the
        # session's content known (empty, or one transfer of a damaged stream): in the order where
        # the device refused the write, it may have kept its bytes (mtty_resume_write() does).
        a, b = sides
        failed = a if a.kind == "write" and a.answer[0] else b if b.kind == "write" and b.answer[0] else None
        if failed is not None:
            view.write_failed = before.write_failed
            slot = before.slots[failed.index]
            if slot.live and not slot.saving:
                view.resume_kind = "mixed"
        if a.kind == "reset" or b.kind == "reset":
            # A session the race ended was ended by the reset in one order and by the SET (or close)
            # in the other: name it after the reset, so the finding a later use of its data_fd makes
            # has one cause (its coarse signature) whichever way round the program wrote the race.
            was_live = {slot.fd for slot in before.slots if slot.live}
            for slot in view.slots:
                if slot.fd in was_live and slot.live is False:
                    slot.ended_by = "reset"
        if a.kind != "read" and b.kind != "read":
            return
        if a.kind == b.kind and a.index == b.index and a.answer[1] and b.answer[1]:
            view.capture_tainted = True
        if (a.kind == "read" and not a.answer[0] and not a.answer[1]) or \
                (b.kind == "read" and not b.answer[0] and not b.answer[1]):
            if view.capture_done and view.original is not None:
                self.known.pop(view.original, None)
            view.capture_done, view.capture_tainted = False, True

    def race_replay(self, replay: tuple, order: int, mid: int) -> None:
        """The view through a race's calls in serial order ``order`` (0: a then b), the first leaving
        ``mid``; each judged as on its own."""
        view, sides, data, state, live, load_digest, source_digest, digest_before = replay
        first, second = sides if order == 0 else (sides[1], sides[0])
        slot1 = view.slots[first.index] if first.index >= 0 else None
        slot2 = view.slots[second.index] if second.index >= 0 else None
        loads = first.kind == "set" and not first.answer[0] and self.race_loads(view.state, first.arg)
        digest = load_digest if digest_before is None or loads else (lambda: digest_before)
        self.race_apply(view, first, slot1, data, mid, digest, source_digest)
        if first.kind == "reopen" and second.kind in model.DEVICE_FD_CALLS and second.answer[0] == model.EBADF:
            return  # it reached the device fd the reopen closed: no call happened (model.race_outcomes)
        self.race_apply(view, second, slot2, data, state, load_digest, source_digest)

    def race_blame(self, replay: tuple, orders: tuple) -> Finding | None:
        """A race whose outcome fits no serial order: one call's own defect if every order's replay
        finds the same call accepting what it must refuse (a SET of ERROR, a read on a dead data_fd:
        no interleaving makes a refused request succeed); else None, the race's. A call refused
        where both orders allow it is the race's: the other call may have run in its middle."""
        view, sides = replay[0], replay[1]
        saved = self.snapshot(view)
        slots = tuple(model.RaceSlot(s.live, s.saving) for s in view.slots)
        blamed = []
        for order in (0, 1):
            first = sides[order]
            result = race_result(first.kind, first.answer, self.race_mask)
            mids = [after for got, after, _ in model.race_step(self.proto, self.flags, view.state, slots,
                                                                 model.RaceCall(first.kind, first.arg, first.index))
                    if got == result]
            try:
                self.race_replay(replay, order, mids[0] if mids else view.state)
                blamed.append(None)
            except FindingRaised as fr:
                blamed.append(fr.finding)
            self.restore(saved)
        kinds = {(f.kind, f.check.test) if f is not None else None for f in blamed}
        return blamed[0] if len(kinds) == 1 and None not in kinds and blamed[0].check.test == "ok" else None

    def snapshot(self, view: DeviceView) -> tuple:
        """What a race's replay may change: the raced device's view (a race is two calls of one
        device; its judgement reads the others' but changes none), the known streams and the
        source registers (restore() puts them back, as often as needed)."""
        return view, view.copy(), dict(self.known), dict(self.source_registers), self.observe

    def restore(self, saved: tuple) -> None:
        view, old, known, registers, self.observe = saved
        view.become(old)  # (copies: the snapshot stays as taken, for another restore)
        self.known.clear()
        self.known.update(known)
        self.source_registers.clear()
        self.source_registers.update(registers)

    def race_text(self, code: int, names: list) -> str:
        """An outcome (harness.runtime.race_outcome) for people."""
        said = []
        for name, result in zip(names, (code >> 8 & 0xFF, code >> 16 & 0xFF), strict=True):
            what = {RACE_OK: "ok", RACE_FD: "ok with a data_fd", RACE_FAILED: "failed"}.get(result)
            said.append(f"{name} {what or 'read ' + self.state_name(result & 0x7F)}")
        return f"({', '.join(said)}, then {self.state_name(code & 0xFF)})"


class RaceSide(NamedTuple):
    """One call of a race, as the executor made it."""

    kind: str  # harness.runtime.RACE_CALLS
    arg: int  # the state a SET asked for
    index: int  # the data_fd it used: its index in the view's slots (-1: none)
    answer: tuple  # (errno, value), as harness.runtime.race_call returns it


class V2Oracle(Oracle):
    """Judgement for protocol v2 (VFIO_DEVICE_FEATURE + data_fd)."""

    initial_state = model.RUNNING
    error_state = model.ERROR
    stopped_states = model.STOPPED_STATES
    saving_states = model.SAVING_GROUP
    state_name = value_name = staticmethod(v2_name)
    proto = "v2"
    race_mask = -1  # a racing GET's value and the state after a race, as read

    def __init__(self, target):
        super().__init__(target)
        self.flags = target.flags

    def race_loads(self, state: int, new: int) -> bool:
        """Whether a SET of ``new`` from ``state`` loads a resume session (when it succeeds)."""
        plan = model.plan(self.flags, state, new)
        return plan is not None and plan.load

    def race_apply(self, view: DeviceView, side: RaceSide, slot: Slot | None, data: bytes, after: int,
                   load_digest, source_digest) -> None:
        """One call of a race in its serial order; ``after``: the state it leaves (the model's, or
        the one read after the race for the second call)."""
        kind, (err, value) = side.kind, side.answer
        if kind == "reset":
            self.on_reset(view, err, after, 0, None)
        elif kind == "reopen":
            self.on_reopen(view, err, after, 0, None)
        elif kind == "set":
            self.on_set(view, view.state, side.arg, err, value, after, 0, False, load_digest)
        elif kind == "get":
            self.on_get(view, err, value)
        elif slot not in view.slots:
            return  # closed by the other call (or a reopen): its failure is all there is to it
        elif kind == "read":
            self.on_read(view, slot, RACE_READ, err, value, False, source_digest)
        elif kind == "write":
            self.on_write(view, slot, err, value, data, False)
        elif kind == "close":
            self.on_close(view, slot, err)
        else:
            self.on_precopy(view, slot, err, *(value or (0, 0)), False)

    def on_set(self, view: DeviceView, cur: int, new: int, err: int, fd: int, got: int,
               gerr: int, fault: bool, digest_fn) -> None:
        flags = self.flags
        plan = model.plan(flags, cur, new)
        if gerr:
            self.fail("rejected-valid", "GET MIG_DEVICE_STATE succeeds", errname(gerr), GET_FAILED)
        if err == 0:
            if plan is None:
                self.fail("accepted-invalid", "EINVAL", f"success, state {v2_name(got)}", OK)
            if got != new:
                self.fail("state-mismatch", v2_name(new), v2_name(got), v2_state_check(new, got))
            if plan.fd != (fd >= 0):
                self.fail("fd-mismatch", "a new data_fd" if plan.fd else "data_fd -1", str(fd),
                          Check("no_fd" if plan.fd else "fd"))
            self.completed(view, cur, plan, fd, fault, digest_fn)
            return
        if fd >= 0:
            self.fail("fd-mismatch", "data_fd -1 on failure", str(fd), Check("fd"))
        if plan is None:
            if got != cur:
                self.fail("bad-state-after-failure", v2_name(cur), v2_name(got), Check("state_not_in", (cur,)))
            return
        self.failed(view, cur, new, plan, err, got, fault, digest_fn)

    def completed(self, view: DeviceView, cur: int, plan, fd: int, fault: bool, digest_fn) -> None:
        """A SET succeeded: sessions ended/opened, load judged, frozen state tracked."""
        if plan.ends:
            for s in view.slots:
                s.end("session end")
        stopped_before = cur in model.STOPPED_STATES
        if plan.load:
            digest = digest_fn()
            self.loaded(view, True, digest, fault)
            view.new_resume()
            stopped_before = False
        if plan.opens >= 0:
            if plan.opens == model.RESUMING:
                view.new_resume()
                view.slots.append(Slot(fd, False))
            else:
                view.new_capture()
                view.slots.append(Slot(fd, True))
        new = plan.hops[-1] if plan.hops else cur
        view.state = new
        view.pc_expect = -1
        if new in model.STOPPED_STATES:
            if self.has_digest:
                digest = digest_fn()
                if stopped_before and not plan.runs:
                    self.check_frozen(view, digest)
                else:
                    view.frozen = digest
        else:
            view.frozen = None

    def failed(self, view: DeviceView, cur: int, new: int, plan, err: int, got: int, fault: bool,
               digest_fn) -> None:
        """A valid SET failed: where it stopped must be allowed, and a reason must exist."""
        flags = self.flags
        allowed = model.allowed_after_failure(flags, cur, new)
        if got not in allowed:
            self.fail("bad-state-after-failure", " or ".join(v2_name(s) for s in sorted(allowed)), v2_name(got),
                      Check("state_not_in", tuple(sorted(allowed))))
        if got == model.ERROR:
            view.state = model.ERROR
            for s in view.slots:
                s.live = None
            view.frozen = None
            if not fault:
                self.fail("rejected-valid", "success", f"{errname(err)}, device in ERROR", FAILED)
            return
        hops = plan.hops
        reached = hops.index(got) + 1 if got in hops else 0
        if reached:
            # the hops that did complete are a shorter, successful transition
            self.completed(view, cur, model.plan(flags, cur, got), -1, fault, digest_fn)
        if plan.load and got == model.RESUMING:  # the load itself failed
            self.loaded(view, False, None, fault)
            if self.has_digest and view.frozen is not None:
                self.check_frozen(view, digest_fn())  # never half-loaded
        elif not fault:
            self.fail("rejected-valid", "success", f"{errname(err)}, state {v2_name(got)}", FAILED)

    def on_get(self, view: DeviceView, err: int, got: int) -> None:
        if err:
            self.fail("rejected-valid", "GET succeeds", errname(err), FAILED)
        if got != view.state:
            self.fail("state-mismatch", v2_name(view.state), v2_name(got), v2_state_check(view.state, got))

    def on_read(self, view: DeviceView, slot: Slot, n: int, err: int, data: bytes, fault: bool,
                digest_fn) -> bool:
        """Judge one read; returns True when the stream (temporarily) ended."""
        if slot.live is None:
            return True
        if not slot.live or not slot.saving:
            if err == 0:
                why = self.misuse(slot, "read")
                self.fail("fd-misuse-accepted", f"read {why} fails", f"returned {len(data)} bytes", OK, cause=why)
            return True
        state = view.state
        if err:
            if err == errno.ENOMSG:
                if state == model.STOP_COPY:
                    self.fail("stream-protocol", "read in STOP_COPY never fails with ENOMSG", "ENOMSG",
                              Check("errno", errno.ENOMSG))
                return True
            if not fault:
                self.fail("rejected-valid", "read on a live saving data_fd succeeds", errname(err), FAILED)
            return True
        if len(data) > n:
            self.fail("stream-protocol", f"at most {n} bytes", f"{len(data)} bytes", Check("longer_than", n))
        if not data:
            if state == model.STOP_COPY and n > 0:  # read(fd, buf, 0) returning 0 is not end of stream
                self.stream_complete(view, digest_fn())
            return n > 0
        self.stream_data(view, data)
        if view.pc_expect >= 0:
            view.pc_expect -= len(data)
            if view.pc_expect < 0:
                self.fail("stream-protocol", "PRECOPY_INFO initial+dirty bytes cover what is readable",
                          f"{-view.pc_expect} bytes more than announced", Check("precopy_overrun"))
        return False

    def on_write(self, view: DeviceView, slot: Slot, err: int, written: int, data: bytes, fault: bool) -> None:
        view.enter(data)  # a driver may keep bytes of a write it fails (mtty_resume_write() does)
        if slot.live is None:
            return
        if not slot.live or slot.saving:
            if err == 0:
                why = self.misuse(slot, "write")
                self.fail("fd-misuse-accepted", f"write {why} fails", f"wrote {written} bytes", OK, cause=why)
            return
        if err == 0:
            view.resume += data[:written]
        elif not fault:
            view.write_failed = True
        view.resume_kind = "mixed"

    def on_transfer_write(self, dst: DeviceView, piece: bytes, n: int) -> None:
        """One successful write of a transfer took ``n`` bytes of ``piece``."""
        if n <= 0:  # a writer looping on it would spin forever (QEMU's load thread does)
            self.fail("stream-protocol", f"write of {len(piece)} bytes makes progress", f"returned {n}",
                      Check("stalled"))
        dst.resume += piece[:n]
        dst.enter(piece)

    @staticmethod
    def misuse(slot: Slot, call: str) -> str:
        """What is wrong with using ``slot`` for ``call``: the cause of an fd-misuse finding."""
        if not slot.live:
            return "after reset" if slot.ended_by == "reset" else "after its session ended"
        return "on a resuming data_fd" if slot.saving is False and call != "write" else "on a saving data_fd"

    def on_seek(self, slot: Slot, err: int) -> None:
        if err == 0:
            self.fail("fd-misuse-accepted", "lseek on a data_fd fails (ESPIPE)", "success", OK, cause="lseek")

    def on_close(self, view: DeviceView, slot: Slot, err: int) -> None:
        if err:
            self.fail("rejected-valid", "close of a data_fd succeeds", errname(err), FAILED)
        view.slots.remove(slot)

    def on_precopy(self, view: DeviceView, slot: Slot, err: int, initial: int, dirty: int,
                   fault: bool) -> None:
        if slot.live is None:
            return
        if not slot.live or not slot.saving:
            if err == 0:
                why = self.misuse(slot, "PRECOPY_INFO")
                self.fail("fd-misuse-accepted", f"PRECOPY_INFO {why} fails", f"success in {v2_name(view.state)}",
                          OK, cause=why)
            return
        if view.state not in model.PRECOPY_INFO_STATES:
            if err == 0:
                self.fail("accepted-invalid", "PRECOPY_INFO fails outside PRE_COPY/PRE_COPY_P2P",
                          f"success in {v2_name(view.state)}", OK)
            return
        if err:
            if not fault:
                self.fail("rejected-valid", "PRECOPY_INFO succeeds in a pre-copy state", errname(err), FAILED)
            return
        if 0 <= view.pc_initial < initial:
            self.fail("stream-protocol", f"initial_bytes <= {view.pc_initial}", str(initial), Check("initial_grew"))
        view.pc_initial = initial
        view.pc_expect = initial + dirty

    def on_datasize(self, err: int) -> None:
        if err:
            self.fail("rejected-valid", "MIG_DATA_SIZE succeeds in every state", errname(err), FAILED)

    def on_feature(self, view: DeviceView, flags: int, argsz: int, err: int) -> None:
        """Raw VFIO_DEVICE_FEATURE framing; a SET carries the current state (a no-op request)."""
        expect = model.feature_errno(flags, argsz, self.flags, view.state)
        if expect is None:
            return  # features other than migration's are the driver's business
        if err and not expect:
            self.fail("rejected-valid", "success", errname(err), FAILED)
        if expect and not err:
            self.fail("accepted-invalid", errname(expect), "success", OK)

    def on_reset(self, view: DeviceView, err: int, got: int, gerr: int, live: int | None) -> None:
        if err:
            self.fail("rejected-valid", "VFIO_DEVICE_RESET succeeds", errname(err), FAILED)
        if gerr:
            self.fail("state-mismatch", "RUNNING after reset", errname(gerr), GET_FAILED)
        if got != model.RUNNING:
            self.fail("state-mismatch", "RUNNING after reset", v2_name(got), Check("state_not", model.RUNNING))
        for s in view.slots:
            s.end("reset")
        view.state = model.RUNNING
        view.frozen = None
        view.new_resume()
        view.pc_expect = view.pc_initial = -1
        self.check_leak(0, live)

    def files_expected(self, view: DeviceView) -> int | None:
        """The migration files the driver holds in the view's state (None: unknown, in ERROR)."""
        return None if view.state == model.ERROR else int(view.state in model.SESSION_STATES)


class V1Oracle(Oracle):
    """Judgement for protocol v1 (the migration region)."""

    initial_state = model.V1_RESET_STATE
    error_state = V1_ERROR
    stopped_states = model.V1_STOPPED_STATES
    saving_states = model.V1_SAVING_STATES
    state_name = staticmethod(v1_name)
    value_name = staticmethod(v1_value)
    proto = "v1"
    flags = 0
    race_mask = V1_MASK  # reserved bits 3-31 are the driver's (the user read-modify-writes them)

    def __init__(self, target):
        super().__init__(target)
        self.region_size = target.region_size

    @staticmethod
    def race_loads(state: int, value: int) -> bool:
        return model.v1_is_load(state, value & V1_MASK)

    def race_apply(self, view: DeviceView, side: RaceSide, slot: Slot | None, data: bytes, after: int,
                   load_digest, source_digest) -> None:
        """One call of a race in its serial order (v1 races no data_fd calls)."""
        kind, (err, value) = side.kind, side.answer
        if kind == "reset":
            self.on_reset(view, err, after, None)
        elif kind == "reopen":
            self.on_reopen(view, err, after, 0, None)
        elif kind == "set":
            self.on_set(view, view.state, side.arg, err, after, False, load_digest)
        else:
            self.on_get(view, err, value)

    def on_set(self, view: DeviceView, cur: int, value: int, err: int, got: int | None,
               fault: bool, digest_fn) -> None:
        new = value & V1_MASK
        reserved = value & ~V1_MASK
        allowed = model.v1_write_allowed(cur, value)
        if got is None:
            self.fail("rejected-valid", "device_state can be read back", "read failed", GET_FAILED)
        got &= V1_MASK
        if err == 0:
            if not allowed:
                self.fail("accepted-invalid", f"write of {value:#05b} refused in {v1_name(cur)}",
                          f"accepted, state {v1_name(got)}", OK)
            if got != new:
                self.fail("state-mismatch", v1_name(new), v1_name(got), Check("state_not", new))
            self.apply(view, cur, new, digest_fn, fault)
            return
        after = model.v1_states_after_failure(cur)
        if got not in after:
            self.fail("bad-state-after-failure", f"{v1_name(cur)} or ERROR", v1_name(got),
                      Check("state_not_in", tuple(sorted(after))))
        load = model.v1_is_load(cur, new)
        if got == V1_ERROR:
            view.state = V1_ERROR
            view.frozen = None
            if allowed and not fault and not reserved:
                self.fail("rejected-valid", "success", f"{errname(err)}, device in ERROR (110b)", FAILED)
            return
        if load and allowed and not reserved:
            self.loaded(view, False, None, fault)
        elif allowed and not fault and not reserved and not load:
            self.fail("rejected-valid", f"{v1_name(cur)} -> {v1_name(new)} succeeds", errname(err), FAILED)
        if self.has_digest and cur in model.V1_STOPPED_STATES:
            self.check_frozen(view, digest_fn())

    def apply(self, view: DeviceView, cur: int, new: int, digest_fn, fault: bool) -> None:
        if model.v1_is_load(cur, new):
            digest = digest_fn()
            self.loaded(view, True, digest, fault)
            view.new_resume()
        saving_was, saving_now = model.v1_saving(cur), model.v1_saving(new)
        if saving_now and (not saving_was or (new & V1_RUNNING and not cur & V1_RUNNING)):
            view.new_capture()
        if model.v1_starts_resume(cur, new):
            view.new_resume()
        if new != cur:
            view.pending_last = -1
        view.state = new
        if new in model.V1_STOPPED_STATES and self.has_digest:
            digest = digest_fn()
            if cur in model.V1_STOPPED_STATES and not model.v1_is_load(cur, new):
                self.check_frozen(view, digest)
            else:
                view.frozen = digest
        elif new not in model.V1_STOPPED_STATES:
            view.frozen = None

    def on_get(self, view: DeviceView, err: int, got: int | None) -> None:
        if err or got is None:
            self.fail("rejected-valid", "device_state read succeeds", errname(err), FAILED)
        if got & V1_MASK != view.state:  # reserved bits are the driver's, as in on_set
            self.fail("state-mismatch", v1_name(view.state), f"{got:#x}", Check("state_not", view.state))

    def on_field_read(self, view: DeviceView, name: str, err: int, value: int | None) -> None:
        """A bare read of a region field (outside the saving sequence)."""
        access = model.V1_FIELD_ACCESS[name]
        if access == "rw":
            self.on_get(view, err, value)
        elif name == "pending_bytes" and not err:
            self.check_pending(view, value)
        elif access == "zero" and not err and value:
            self.fail("accepted-invalid", f"{name} reads 0", hex(value), Check("value_nonzero"))
        if name in model.V1_READ_SIDE_EFFECTS and model.v1_saving(view.state):
            view.capture_tainted = True  # the read moved the saving iteration outside `save`
        elif name == "data_offset" and value is not None and not err:
            self.check_window(value, 0)

    def read_only(self, view: DeviceView, name: str) -> bool:
        """Whether the field is read-only in the device's state (a write must be refused or ignored)."""
        return model.v1_read_only(name, view.state)

    def on_field_write(self, view: DeviceView, name: str, err: int, readback: int | None,
                       before: int | None = None) -> None:
        """A bare write of a region field other than device_state; ``readback`` is the field read
        after it (for "zero" fields and read-only ones), ``before`` read before it (read-only ones)."""
        access = model.V1_FIELD_ACCESS[name]
        if self.read_only(view, name) and not err and before is not None and readback is not None \
                and readback != before:
            self.fail("accepted-invalid", f"a write to read-only {name} is refused or has no effect",
                      f"{name} {before:#x} -> {readback:#x}", Check("value_changed"), cause=f"{name} writable")
        if model.v1_saving(view.state):
            view.capture_tainted = True  # a stray write may disturb the saving iteration
        if access == "data":
            view.resume_kind = "mixed"
            if not err and view.state == model.V1_RESUMING_STATE:
                view.resume_opaque = True  # the device consumed window bytes we did not write
        elif access == "zero" and readback:
            self.fail("accepted-invalid", f"writes to {name} are ignored", f"reads {readback:#x}",
                      Check("value_nonzero"))
        # "ro" fields cannot be read back without moving the stream (V1_READ_SIDE_EFFECTS): unjudged

    def on_window_access(self, view: DeviceView, wrote: bytes | None, err: int, fault: bool = False) -> None:
        """rdwin/wrwin: data_offset was read outside the sequence (and, for a write, bytes given)."""
        if model.v1_saving(view.state):
            view.capture_tainted = True  # reading data_offset staged a chunk the capture misses
        if wrote is not None:
            if not err and view.state == model.V1_RESUMING_STATE:
                view.resume += wrote
                view.enter(wrote)
            elif err and not fault and view.state == model.V1_RESUMING_STATE:
                view.write_failed = True
            view.resume_kind = "mixed"

    def check_pending(self, view: DeviceView, pending: int | None) -> None:
        """In stop-and-copy the device is stopped: pending_bytes only ever shrinks."""
        if pending is None or model.v1_pending_may_grow(view.state):
            return
        if 0 <= view.pending_last < pending:
            self.fail("stream-protocol", f"pending_bytes never grows in stop-and-copy (was {view.pending_last})",
                      str(pending), Check("pending_grew"))
        view.pending_last = pending

    def on_save_iteration(self, view: DeviceView, answer: tuple, fault: bool, digest_fn) -> bool:
        """One v1 saving iteration's raw answers (``harness.runtime.v1_save_iteration``); True when done."""
        stage, err, pending, offset, size, data = answer
        self.check_pending(view, pending)
        if stage == V1_PENDING:
            if not fault:
                self.fail("rejected-valid", "pending_bytes can be read", errname(err), FAILED)
            return True
        if stage == V1_DONE:
            if pending == 0 and view.state == V1_SAVING:
                self.stream_complete(view, digest_fn())
            return True
        if stage == V1_OFFSET:
            if not fault:
                self.fail("rejected-valid", "data_offset can be read while saving", errname(err), FAILED)
            return True
        if stage == V1_MORE or stage == V1_DATA:
            self.check_window(offset, size)
        if stage != V1_MORE:
            what = "data_size can be read while saving" if size is None else "the staged chunk can be read"
            self.fail("rejected-valid", what, errname(err), FAILED)
        if data:
            self.stream_data(view, data)
        return False

    def check_window(self, offset: int, size: int) -> None:
        if offset < model.V1_HEADER_SIZE or offset + size > self.region_size:
            self.fail("region-layout",
                      f"data window inside the region [{model.V1_HEADER_SIZE}, {self.region_size})",
                      f"data_offset {offset:#x} data_size {size}", Check("window_outside"))

    def on_transfer_chunk(self, dst: DeviceView, chunk: bytes, offset: int | None, taken: int) -> None:
        """One v1 resuming step of a transfer succeeded: data_offset was ``offset``, ``taken`` bytes went in."""
        if offset is not None:
            self.check_window(offset, 1)  # room for at least one byte
        taken_bytes = chunk[:taken]
        dst.resume += taken_bytes
        dst.enter(taken_bytes)

    def on_reset(self, view: DeviceView, err: int, got: int | None, live: int | None) -> None:
        if err:
            self.fail("rejected-valid", "VFIO_DEVICE_RESET succeeds", errname(err), FAILED)
        if got is None:
            self.fail("state-mismatch", "RUNNING (001b) after reset", "?", GET_FAILED)
        if got & V1_MASK != model.V1_RESET_STATE:
            self.fail("state-mismatch", "RUNNING (001b) after reset", v1_name(got),
                      Check("state_not", model.V1_RESET_STATE))
        view.state = model.V1_RESET_STATE
        view.frozen = None
        view.new_resume()
        view.new_capture()
        self.check_leak(0, live)

    def files_expected(self, view: DeviceView) -> int | None:
        return None if view.state == V1_ERROR else int(model.v1_saving(view.state))
