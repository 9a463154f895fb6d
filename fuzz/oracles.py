"""Oracles: judge each step a device takes against the reference model.

The executor calls one ``on_*`` method per op with what the device answered;
the oracle compares it with what ``fuzz.model`` allows, keeps the protocol-side
view of each device (``DeviceView``: expected state, data_fd slots, captured
stream, what was written into a resume session), and raises
:class:`FindingRaised` on the first violation.

Finding kinds (each its own class of defect):

=========================  =====================================================
accepted-invalid           an invalid state, value, arc or request accepted
rejected-valid             a valid arc or request refused
bad-state-after-failure    after a failed request, a state the protocol forbids
state-mismatch             the state read back is not the one the protocol says
fd-misuse-accepted         a data_fd used wrongly (after its session ended or a
                           reset, wrong direction, seek) and it worked
fd-mismatch                a data_fd returned when none is due, or none when due
stream-protocol            stream framing rules broken: ENOMSG in STOP_COPY,
                           data after end of stream, pre-copy sizes under-reported
valid-stream-rejected      a complete, untouched stream refused on resume
resume-corrupted           state after resume differs from the source's state
damaged-stream-accepted    a truncated/extended/flipped/reordered stream loaded
state-changed-while-stopped  device state changed while it was not running
resource-leak              the driver still holds a migration file it must not
region-layout              v1: data window outside the region
hang                       a call that never returns / a stream that never ends
target-exception           an exception escaped from the target
kernel-splat               the kernel logged a WARN, BUG, oops or lockup report
                           while the program ran (real devices)
=========================  =====================================================
"""
from __future__ import annotations

import errno
from typing import NamedTuple

from harness.uapi import V1_ERROR, V1_MASK, V1_RUNNING, V1_STATE_NAMES

from . import model, transport

FINDING_KINDS = (
    "accepted-invalid", "rejected-valid", "bad-state-after-failure", "state-mismatch",
    "fd-misuse-accepted", "fd-mismatch", "stream-protocol", "valid-stream-rejected",
    "resume-corrupted", "damaged-stream-accepted", "state-changed-while-stopped",
    "resource-leak", "region-layout", "hang", "target-exception", "kernel-splat",
)

V2_STOPPED = frozenset({model.STOP, model.STOP_COPY, model.RESUMING})
V2_SESSION_STATES = model.SAVING_GROUP | {model.RESUMING}


class Finding(NamedTuple):
    kind: str
    step: int  # index of the op in the program
    expected: str
    observed: str
    arc: str  # protocol arc, e.g. "STOP_COPY -set-> PRE_COPY"
    op: str = ""  # the op as text (filled in by the executor)
    detail: str = ""  # traceback for target exceptions

    def signature(self) -> str:
        """The dedup key (kind|arc|op[|frames]); defined once, in fuzz.triage."""
        from .triage import signature

        return signature(self)


class FindingRaised(Exception):
    def __init__(self, finding: Finding):
        super().__init__(finding.kind)
        self.finding = finding


def v2_name(state: int) -> str:
    return model.STATE_NAMES[state] if 0 <= state < 8 else str(state)


def v1_name(state: int | None) -> str:
    return V1_STATE_NAMES.get(state & V1_MASK, "?") if state is not None else "?"


def v1_value(value: int) -> str:
    return f"{value:#05b}" if 0 <= value < 8 else hex(value)


def errname(err: int) -> str:
    return errno.errorcode.get(err, str(err)) if err else "success"


class Slot:
    """One data_fd a device returned, as the protocol sees it."""

    __slots__ = ("fd", "saving", "live")

    def __init__(self, fd: int, saving: bool):
        self.fd = fd
        self.saving = saving
        self.live = True  # False: its session ended; None: unknown (after ERROR)


class DeviceView:
    """The protocol-side view of one device during a program."""

    __slots__ = ("state", "slots", "capture", "capture_done", "capture_tainted", "mangled", "original",
                 "resume", "resume_kind", "resume_opaque", "frozen", "pc_expect", "pc_initial")

    def __init__(self, state: int):
        self.state = state
        self.slots: list[Slot] = []
        self.capture = bytearray()  # bytes read from the current/last saving session
        self.capture_done = False  # the end of that stream was seen
        self.capture_tainted = False  # bytes may be missing (v1 raw field access)
        self.mangled = False  # a transport fault changed the capture after it was complete
        self.original: bytes | None = None  # the complete stream as the device sent it
        self.resume = bytearray()  # bytes written into the current resume session
        self.resume_kind = ""  # "", "derived" (one transfer of a capture), "mixed"
        self.resume_opaque = False  # the device took bytes the executor cannot know
        self.frozen: bytes | None = None  # digest when the device last stopped
        self.pc_expect = -1  # pre-copy bytes still announced by PRECOPY_INFO
        self.pc_initial = -1

    def slot(self, index: int) -> Slot | None:
        slots = self.slots
        return slots[-1 - index] if index < len(slots) else None

    def new_capture(self) -> None:
        self.capture = bytearray()
        self.capture_done = self.capture_tainted = self.mangled = False
        self.original = None
        self.pc_expect = self.pc_initial = -1

    def new_resume(self) -> None:
        self.resume = bytearray()
        self.resume_kind = ""
        self.resume_opaque = False


class Oracle:
    """Shared judgement: streams, resume fidelity, frozen state, leaks."""

    def __init__(self, target):
        self.has_digest = target.has_digest
        self.validates_stream = target.validates_stream
        self.known: dict[bytes, bytes | None] = {}  # complete untouched streams -> source digest
        # (state before, op name, requested value or None): formatted only for a finding
        self.arc_at: tuple = (0, "", None)

    def begin(self) -> None:
        self.known.clear()

    @property
    def arc(self) -> str:
        state, name, to = self.arc_at
        text = f"{self.state_name(state)} -{name}->"
        return text if to is None else f"{text} {self.value_name(to)}"

    def fail(self, kind: str, expected: str, observed: str) -> None:
        raise FindingRaised(Finding(kind, -1, expected, observed, self.arc))  # the executor sets the step

    # -- streams ----------------------------------------------------------------

    def stream_complete(self, view: DeviceView, digest: bytes | None) -> None:
        if not view.capture_done and not view.capture_tainted and view.capture:
            view.original = bytes(view.capture)
            self.known[view.original] = digest
        view.capture_done = True

    def stream_data(self, view: DeviceView, data: bytes) -> None:
        if view.capture_done:
            self.fail("stream-protocol", "no data after the end of the stream",
                      f"{len(data)} more bytes")
        view.capture += data

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
        if ok:
            if verdict == "valid" and source is not None and digest is not None and digest != source:
                self.fail("resume-corrupted", "destination state == source state at end of stream",
                          "state differs after a successful resume")
            if verdict == "damaged" and self.validates_stream:
                self.fail("damaged-stream-accepted", "a damaged stream is refused",
                          "load succeeded")
        elif verdict == "valid" and not fault:
            self.fail("valid-stream-rejected", "a complete untouched stream loads",
                      "load refused")

    def check_frozen(self, view: DeviceView, digest: bytes | None) -> None:
        if view.frozen is not None and digest != view.frozen:
            self.fail("state-changed-while-stopped", "device state unchanged while stopped",
                      "digest changed")

    def check_leak(self, expected: int, live: int | None) -> None:
        if live is not None and live != expected:
            self.fail("resource-leak", f"{expected} migration file(s) held by the driver", f"{live}")

    # -- transport -----------------------------------------------------------------

    @staticmethod
    def mangle(view: DeviceView, kind: str, arg: int) -> bool:
        """Apply a transport fault to the capture; True if the bytes changed."""
        cap = view.capture
        if not cap:
            return False
        before = bytes(cap)
        transport.mangle(cap, kind, arg)
        after = bytes(cap)
        if view.capture_done:
            # damaged: a complete stream the device sent, no longer byte for byte what it sent
            view.mangled = view.original is not None and after != view.original
        elif after != before:
            view.capture_tainted = True  # no longer what the device sent: never "complete"
        return after != before


class V2Oracle(Oracle):
    """Judgement for protocol v2 (VFIO_DEVICE_FEATURE + data_fd)."""

    state_name = value_name = staticmethod(v2_name)

    def __init__(self, target):
        super().__init__(target)
        self.flags = target.flags

    def on_set(self, view: DeviceView, cur: int, new: int, err: int, fd: int, got: int,
               gerr: int, fault: bool, dev, digest_fn) -> None:
        flags = self.flags
        plan = model.plan(flags, cur, new)
        if gerr:
            self.fail("rejected-valid", "GET MIG_DEVICE_STATE succeeds", errname(gerr))
        if err == 0:
            if plan is None:
                self.fail("accepted-invalid", "EINVAL", f"success, state {v2_name(got)}")
            if got != new:
                self.fail("state-mismatch", v2_name(new), v2_name(got))
            if plan.fd != (fd >= 0):
                self.fail("fd-mismatch", "a new data_fd" if plan.fd else "data_fd -1", str(fd))
            self.completed(view, cur, plan, fd, fault, digest_fn)
            return
        if fd >= 0:
            self.fail("fd-mismatch", "data_fd -1 on failure", str(fd))
        if plan is None:
            if got != cur:
                self.fail("bad-state-after-failure", v2_name(cur), v2_name(got))
            return
        self.failed(view, cur, new, plan, err, got, fault, digest_fn)

    def completed(self, view: DeviceView, cur: int, plan, fd: int, fault: bool, digest_fn) -> None:
        """A SET succeeded: sessions ended/opened, load judged, frozen state tracked."""
        if plan.ends:
            for s in view.slots:
                if s.live:
                    s.live = False
        stopped_before = cur in V2_STOPPED
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
        if new in V2_STOPPED:
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
            self.fail("bad-state-after-failure", " or ".join(v2_name(s) for s in sorted(allowed)), v2_name(got))
        if got == model.ERROR:
            view.state = model.ERROR
            for s in view.slots:
                s.live = None
            view.frozen = None
            if not fault:
                self.fail("rejected-valid", "success", f"{errname(err)}, device in ERROR")
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
            self.fail("rejected-valid", "success", f"{errname(err)}, state {v2_name(got)}")

    def on_read(self, view: DeviceView, slot: Slot, n: int, err: int, data: bytes, fault: bool,
                digest_fn) -> bool:
        """Judge one read; returns True when the stream (temporarily) ended."""
        if slot.live is None:
            return True
        if not slot.live or not slot.saving:
            if err == 0:
                why = "after its session ended" if not slot.live else "on a resuming data_fd"
                self.fail("fd-misuse-accepted", f"read {why} fails", f"returned {len(data)} bytes")
            return True
        state = view.state
        if err:
            if err == errno.ENOMSG:
                if state == model.STOP_COPY:
                    self.fail("stream-protocol", "read in STOP_COPY never fails with ENOMSG", "ENOMSG")
                return True
            if not fault:
                self.fail("rejected-valid", "read on a live saving data_fd succeeds", errname(err))
            return True
        if len(data) > n:
            self.fail("stream-protocol", f"at most {n} bytes", f"{len(data)} bytes")
        if not data:
            if state == model.STOP_COPY and n > 0:  # read(fd, buf, 0) returning 0 is not end of stream
                self.stream_complete(view, digest_fn())
            return n > 0
        self.stream_data(view, data)
        if view.pc_expect >= 0:
            view.pc_expect -= len(data)
            if view.pc_expect < 0:
                self.fail("stream-protocol", "PRECOPY_INFO initial+dirty bytes cover what is readable",
                          f"{-view.pc_expect} bytes more than announced")
        return False

    def on_write(self, view: DeviceView, slot: Slot, err: int, written: int, data: bytes) -> None:
        if slot.live is None:
            return
        if not slot.live or slot.saving:
            if err == 0:
                why = "after its session ended" if not slot.live else "on a saving data_fd"
                self.fail("fd-misuse-accepted", f"write {why} fails", f"wrote {written} bytes")
            return
        if err == 0:
            view.resume += data[:written]
        view.resume_kind = "mixed"

    def on_seek(self, slot: Slot, err: int) -> None:
        if err == 0:
            self.fail("fd-misuse-accepted", "lseek on a data_fd fails (ESPIPE)", "success")

    def on_close(self, view: DeviceView, slot: Slot, err: int) -> None:
        if err:
            self.fail("rejected-valid", "close of a data_fd succeeds", errname(err))
        view.slots.remove(slot)

    def on_precopy(self, view: DeviceView, slot: Slot, err: int, initial: int, dirty: int,
                   fault: bool) -> None:
        if slot.live is None:
            return
        valid = slot.live and slot.saving and view.state in model.PRECOPY_INFO_STATES
        if not valid:
            if err == 0:
                self.fail("accepted-invalid",
                          "PRECOPY_INFO fails outside PRE_COPY/PRE_COPY_P2P or on a dead/resuming fd",
                          f"success in {v2_name(view.state)}")
            return
        if err:
            if not fault:
                self.fail("rejected-valid", "PRECOPY_INFO succeeds in a pre-copy state", errname(err))
            return
        if 0 <= view.pc_initial < initial:
            self.fail("stream-protocol", f"initial_bytes <= {view.pc_initial}", str(initial))
        view.pc_initial = initial
        view.pc_expect = initial + dirty

    def on_reset(self, view: DeviceView, err: int, got: int, gerr: int, live: int | None) -> None:
        if err:
            self.fail("rejected-valid", "VFIO_DEVICE_RESET succeeds", errname(err))
        if gerr or got != model.RUNNING:
            self.fail("state-mismatch", "RUNNING after reset", v2_name(got) if not gerr else errname(gerr))
        for s in view.slots:
            s.live = False
        view.state = model.RUNNING
        view.frozen = None
        view.new_resume()
        view.pc_expect = view.pc_initial = -1
        self.check_leak(0, live)

    def check_files(self, view: DeviceView, live: int | None) -> None:
        if view.state != model.ERROR:
            self.check_leak(int(view.state in V2_SESSION_STATES), live)


class V1Oracle(Oracle):
    """Judgement for protocol v1 (the migration region)."""

    state_name = staticmethod(v1_name)
    value_name = staticmethod(v1_value)

    def __init__(self, target):
        super().__init__(target)
        self.region_size = target.region_size

    def on_set(self, view: DeviceView, cur: int, value: int, err: int, got: int | None,
               fault: bool, digest_fn) -> None:
        new = value & V1_MASK
        reserved = value & ~V1_MASK
        allowed = model.v1_write_allowed(cur, value)
        if got is None:
            self.fail("rejected-valid", "device_state can be read back", "read failed")
        got &= V1_MASK
        if err == 0:
            if not allowed:
                self.fail("accepted-invalid", f"write of {value:#05b} refused in {v1_name(cur)}",
                          f"accepted, state {v1_name(got)}")
            if got != new:
                self.fail("state-mismatch", v1_name(new), v1_name(got))
            self.apply(view, cur, new, digest_fn, fault)
            return
        if got not in model.v1_states_after_failure(cur):
            self.fail("bad-state-after-failure", f"{v1_name(cur)} or ERROR", v1_name(got))
        load = model.v1_is_load(cur, new)
        if got == V1_ERROR:
            view.state = V1_ERROR
            view.frozen = None
            if allowed and not fault and not reserved:
                self.fail("rejected-valid", "success", f"{errname(err)}, device in ERROR (110b)")
            return
        if load and allowed and not reserved:
            self.loaded(view, False, None, fault)
        elif allowed and not fault and not reserved and not load:
            self.fail("rejected-valid", f"{v1_name(cur)} -> {v1_name(new)} succeeds", errname(err))
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
            self.fail("rejected-valid", "device_state read succeeds", errname(err))
        if got != view.state:
            self.fail("state-mismatch", v1_name(view.state), f"{got:#x}")

    def check_window(self, offset: int, size: int) -> None:
        if offset < model.V1_HEADER_SIZE or offset + size > self.region_size:
            self.fail("region-layout",
                      f"data window inside the region [{model.V1_HEADER_SIZE}, {self.region_size})",
                      f"data_offset {offset:#x} data_size {size}")

    def on_reset(self, view: DeviceView, err: int, got: int | None, live: int | None) -> None:
        if err:
            self.fail("rejected-valid", "VFIO_DEVICE_RESET succeeds", errname(err))
        if got is None or got & V1_MASK != model.V1_RESET_STATE:
            self.fail("state-mismatch", "RUNNING (001b) after reset", v1_name(got))
        view.state = model.V1_RESET_STATE
        view.frozen = None
        view.new_resume()
        view.new_capture()
        self.check_leak(0, live)

    def check_files(self, view: DeviceView, live: int | None) -> None:
        if view.state != V1_ERROR:
            self.check_leak(int(model.v1_saving(view.state)), live)
