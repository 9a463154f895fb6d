"""``migfuzz conform``: a deterministic conformance sweep of one target.

Where the fuzzer searches, the sweep enumerates: every (from, to) request of
the state machine, every data_fd rule, the save/resume round trip, damaged
streams, VFIO_DEVICE_FEATURE framing (v2); every device_state value from every
state, the read-only and reserved fields, the saving/resuming sequences and the
error state (v1).  Both protocols also get the device's lifecycle and its
registers: closing and opening the device again from every state (``reopen``,
``reopen-round-trip``), resume sessions that must not load (``session-empty``,
``session-prefix``, ``session-failed-write``), and the registers the target's
device profile (``target.profile``, :mod:`harness.profile`) declares:
side-effect-free reads (``reg-observe``), receive FIFOs that hand out only what
went in (``reg-data-out``), no kernel address in any allowed read (``reg-leak``),
registers carried by a migration (``reg-migrated``, ``reg-while-stopped``).
It answers "does this device follow the protocol at all?" in about a second on
the simulator.

Who owns what: expectations come from :mod:`fuzz.model` (the sweep is the second
judge of a device, next to the oracles) or, for registers, from the target's
device profile; every way of driving the device (``read_stream``, ``write_all``,
``segments``, ``mangle``, the v1 field and save/resume procedures, the drain
limits, ``kernel_addresses``) comes from :mod:`harness.runtime`; names from
:mod:`fuzz.model`.  Only the :mod:`harness.base` API and the target's
``has_digest`` / ``validates_stream`` / ``supports_faults`` flags are used, so a
real device is swept exactly like the simulator.

How it is built:

* the checks are data: :data:`V2_FD_RULES`, :data:`FEATURE_CASES`,
  :data:`DAMAGES`, :data:`V2_SAVE_ROUTES`, ... and :class:`Case` objects built
  from them (one case = one row of the report);
* every case starts from a fresh device (``target.fresh()`` then
  ``dev.reset()``) and drives it to its starting state one model arc at a time
  (:meth:`V2Sweep.reach`), so a case never depends on the one before;
* a case that raises is a failed row, never a failed sweep: a simulator hang
  (``DeviceHang``) or a ``TimeoutError`` is recorded as a hang, any other
  exception with its text; the devices are then reset (the target re-opened if
  a reset fails) and the sweep carries on.

Verdicts: ``pass`` and ``fail`` (exit 1 if any), and ``info`` for what was
observed but is not judged: a case that could not reach its starting state
(the failing step is its own ``reach`` row), a damaged stream accepted by a
target that does not promise to validate streams, a rule that needs fault
injection or a digest the target does not have.

Every record (one per case) carries the text for people and the same facts as data
(:func:`expect`, :func:`outcome`); tools decide from the data only.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from harness.base import DeviceHang
from harness.runtime import (
    DRAIN_CHUNK,
    DRAIN_LIMIT,
    EXIT_FINDING,
    EXIT_OK,
    MANGLE_CHUNK,
    SEG_RANDOM,
    V1_DATA,
    V1_DONE,
    V1_OFFSET,
    V1_PENDING,
    V1_SIZE,
    errname,
    kernel_addresses,
    mangle,
    read_stream,
    segments,
    v1_save_iteration,
    v1_write_chunk,
    write_all,
)
from harness.uapi import (
    FEATURE_GET,
    FEATURE_MASK,
    FEATURE_MIG_DATA_SIZE,
    FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION,
    FEATURE_PROBE,
    FEATURE_SET,
    V1_ERROR,
    V1_FIELDS,
    V1_HEADER_SIZE,
    V1_RESUMING,
    V1_RUNNING,
    V1_SAVING,
    V1_STOP,
)

from . import model
from .htmlreport import conform_html, output_file, write_output
from .model import ERROR, PRE_COPY, PRE_COPY_P2P, RESUMING, RUNNING, RUNNING_P2P, STOP, STOP_COPY, v1_name, v2_name
from .targets import open_target, parse_target, require_opt_in

FORMATS = ("table", "json", "md", "html")
OUT_OF_RANGE = (8, 0xFFFFFFFF)  # device_state values beyond the enum, requested like any other
ACTIVITY_SEEDS = (0x1234, 0x5A5A5, 0x9E37)
PROBE_BYTES = 16  # what a single read or write of a data_fd rule asks to move
V1_PRECOPY = V1_SAVING | V1_RUNNING
# Registers: the bytes sent through a data-in register (none is 0xff, so a kernel-address shape
# read back cannot be the sweep's own doing), and how many reads of an empty receive FIFO follow.
LOOPBACK = bytes((0x31, 0x4C, 0x6B, 0x27))
IDLE_READS = 3
# A resume write larger than any stream (and than MIG_DATA_SIZE, and than the simulator's 1 MiB
# resume buffer), to provoke a refused write; above OVERSIZE_MAX bytes the case is not run.
OVERSIZE = 2 << 20
OVERSIZE_MAX = 64 << 20
FOUND_SHOWN = 8  # kernel-address shapes listed in a reg-leak outcome (``addresses`` counts them all)

# outcome["status"]: how far a case got.
STATUSES = (
    "answered",       # the judged call(s) answered (the verdict judges the answer)
    "step-failed",    # a step the check needs before or around the judged call failed (a fail)
    "reset-failed",   # VFIO_DEVICE_RESET failed (a fail; the target is re-opened)
    "hang",           # a device call did not return (simulator watchdog, TimeoutError, kernel watchdog)
    "endless",        # a stream that never ends: DRAIN_LIMIT reads / saving iterations without its end
    "exception",      # the device raised
    "not-reached",    # the case's starting point could not be reached (info; the cause has its own row)
    "not-run",        # the target was lost before the case (info)
    "unsupported",    # the target cannot do what the check needs: fault injection, a digest (info)
)


def errnames(errs) -> str:
    return "|".join(errname(e) for e in sorted(errs))


def expect(ok: bool | None = None, errnos=None, states=None, fd: bool | None = None, **extra) -> dict:
    """A record's ``expect``: what the model requires.

    A record (one per case; ``--format json`` prints them) is ``check``, ``from``, ``to``,
    ``path`` (what was checked: the check group, the state names it starts from and asks for
    or null, the model's path as state names), ``verdict`` (pass, fail, info), ``expected`` and
    ``observed`` (text, for people), ``expect`` (this) and ``outcome`` (:func:`outcome`).

    ``ok``: the judged call must succeed (true), be refused (false), either (null: the check
    judges something else, see its other keys); ``errnos``: the errnos a refusal may carry
    (null = any); ``states``: the state values GET / device_state may read afterwards (null =
    not judged); ``fd``: a SET must return a new data_fd (true), must not (false), not judged
    (null); check-specific keys: ``noop`` (a SET of the current state), ``flags``,
    ``live_files``, ``unchanged``, ``same``, ``value``, ``field``, ``seg``, ``damage``;
    ``old_fd_dead`` (reopen); ``region``, ``offset``, ``register``, ``width`` (the register or
    access a reg-* check is about), ``sent`` and ``allowed`` (reg-data-out: the byte values put in
    through the data-in register, and the idle values an empty FIFO may give), ``addresses``
    and ``outside`` (reg-leak: kernel-address shapes allowed, 0; reads past the region's end
    answered, 0), ``written`` (reg-migrated/reg-while-stopped: the state the registers were
    written in); ``session`` and ``loads`` (session-*: the session's
    label, and "never" or "if the accepted bytes are the stream")."""
    out = {"ok": ok, "errnos": sorted(errnos) if errnos is not None else None,
           "states": sorted(int(s) for s in states) if states is not None else None, "fd": fd}
    out.update(extra)
    return out


def outcome(status: str = "answered", err: int | None = None, state: int | None = None, fd: bool | None = None,
            **extra) -> dict:
    """A record's ``outcome``: what the device did.

    ``status``: one of :data:`STATUSES`; ``err``: errno of the judged call (0 = success, null =
    none was made); ``accepted``: ``err == 0`` (null when no call was judged); ``state``: the
    state value read afterwards (or null); ``fd``: a SET returned a new data_fd (or null);
    ``exception``: the exception's type (status ``exception``); check-specific keys:
    ``bytes``, ``live_files``, ``changed``, ``same``, ``initial``, ``dirty``, ``again``,
    ``before``, ``after``, ``failed``, ``fired``, ``window``, ``stalled``; ``old_fd_err``
    (reopen: the errno of a read/write on each old data_fd); ``first``, ``second`` (reg-observe:
    the two reads, hex); ``read``, ``stray`` (reg-data-out: the byte values read, those never put
    in); ``reads``, ``refused``, ``addresses``, ``found``, ``outside``, ``size`` (reg-leak: reads made
    and refused, the kernel-address shapes found and the first of them as {offset, value}, the reads
    past the end of the region answered, the region's size from REGION_INFO); ``registers``,
    ``differ`` (reg-migrated/reg-while-stopped: per observation register {register, region,
    offset, source: the values allowed, dest}, and the names that differ); ``held``, ``writes``
    (session-*: what the bytes the device accepted are, "stream", "empty", "prefix", "damaged"
    or "unknown", and each write's errno)."""
    out = {"status": status, "err": err, "accepted": None if err is None else err == 0,
           "state": None if state is None else int(state), "fd": fd}
    out.update(extra)
    return out


class Seen(NamedTuple):
    """What a check saw: the text for people, the verdict (True pass, False fail, None info), the data."""

    text: str
    ok: bool | None
    outcome: dict


def seen(text: str, ok: bool | None, **facts) -> Seen:
    return Seen(text, ok, outcome(**facts))


# --------------------------------------------------------------------------- records


class Stop(Exception):
    """A case ends early: ``str(e)`` is the observation, ``facts`` go into its outcome.
    ``trouble``: the devices may be unusable (reset them, else re-open the target)."""

    status = "step-failed"
    trouble = False

    def __init__(self, text: str, **facts):
        super().__init__(text)
        self.facts = facts


class Unreached(Stop):
    """A case could not reach its starting point (recorded as info)."""

    status = "not-reached"


class Unsupported(Unreached):
    """The target cannot do what a case needs (recorded as info)."""

    status = "unsupported"


class Step(Stop):
    """A step of a multi-step check failed (recorded as a fail with this text)."""


class Endless(Step):
    """A stream that does not end within DRAIN_LIMIT reads or saving iterations (a fail)."""

    status = "endless"


class ResetFailed(Step):
    """VFIO_DEVICE_RESET failed: a fail, and the target is re-opened before the next case."""

    status = "reset-failed"
    trouble = True


class ReopenFailed(Step):
    """Closing and opening a device again failed: a fail; the device may have no fd any more."""

    trouble = True


HANGS = (TimeoutError, DeviceHang)


class Case(NamedTuple):
    """One row of the report: what is checked, what the model expects, and the function that checks it.

    ``run(sweep)`` returns a :class:`Seen`."""

    check: str
    frm: str | None
    to: str | None
    expected: str
    path: tuple
    expect: dict
    run: Callable


def record(case: Case, observed: str, verdict: str, facts: dict) -> dict:
    return {"check": case.check, "from": case.frm, "to": case.to, "expected": case.expected,
            "observed": observed, "path": list(case.path), "verdict": verdict,
            "expect": case.expect, "outcome": facts}


# --------------------------------------------------------------------------- the sweep runner


class Sweep:
    """Shared machinery: run cases in order, isolate them, recover from anything."""

    proto = ""

    def __init__(self, spec, target, open_fn=None):
        self.spec = spec
        self.target = target
        self.open_fn = open_fn
        self.results: list[dict] = []
        self._stream: bytes | None = None
        self._stream_error = ""
        self.lost = ""  # why the target could not be re-opened
        self.current: Case | None = None
        self.aborted = ""
        self.on_abort = None  # callback(sweep) when a kernel hang stops the sweep
        self.reopened = 0
        self.opened: list[tuple] = []  # (device, fd) to close after the current case
        self.flags = 0

    # -- devices -------------------------------------------------------------

    @property
    def devices(self):
        return self.target.devices

    @property
    def dst(self):
        return self.target.devices[0]

    @property
    def src(self):
        devs = self.target.devices
        return devs[1] if len(devs) > 1 else devs[0]

    def fresh(self) -> None:
        """Power-on state between cases (the simulator restores its devices; a real target closes
        every data_fd and resets both devices): the fds tracked so far are gone."""
        fresh = getattr(self.target, "fresh", None)
        if fresh is not None:
            fresh()
        self.opened = []

    def reset(self, dev) -> None:
        err = dev.reset()
        if err:
            raise ResetFailed(f"reset failed: {errname(err)}", err=err)

    def digest(self, dev):
        return dev.digest() if self.target.has_digest else None

    def activity(self, dev) -> None:
        for seed in ACTIVITY_SEEDS:
            dev.activity(seed)

    # -- running -------------------------------------------------------------

    def cases(self) -> list[Case]:
        raise NotImplementedError

    def run(self) -> list[dict]:
        self.install_hang_hook()
        for case in self.cases():
            if self.lost:
                self.results.append(record(case, f"not run: the target was lost ({self.lost})", "info",
                                           outcome("not-run")))
                continue
            self.current = case
            self.results.append(self.run_case(case))
        self.current = None
        return self.results

    def install_hang_hook(self) -> None:
        """A real target's watchdog reports a call stuck in the kernel through ``target.on_hang``.

        Such a call cannot be interrupted, so the sweep cannot go on: record the
        case as a hang, hand the partial result to ``on_abort`` (the CLI writes
        the report) and exit 1."""
        if not hasattr(self.target, "on_hang"):
            return

        def on_hang(what: str, seconds: float) -> None:
            if self.current is not None:
                self.results.append(record(self.current, f"hang: {what} did not return within {seconds:.1f} s",
                                           "fail", outcome("hang", call=what)))
            self.aborted = f"stopped after a hang in {what}: a call stuck in the kernel cannot be interrupted"
            try:
                if self.on_abort is not None:
                    self.on_abort(self)
            finally:
                os._exit(EXIT_FINDING)

        self.target.on_hang = on_hang

    def run_case(self, case: Case) -> dict:
        self.opened = []
        trouble = False
        try:
            self.fresh()
            observed, ok, facts = case.run(self)
            verdict = "info" if ok is None else ("pass" if ok else "fail")
        except Unreached as e:
            observed = f"not reached: {e}" if e.status == "not-reached" else str(e)
            verdict, facts = "info", outcome(e.status, **e.facts)
        except Stop as e:
            observed, verdict, facts = str(e), "fail", outcome(e.status, **e.facts)
            trouble = e.trouble
        except HANGS as e:
            observed, verdict, trouble = f"hang: {e}", "fail", True
            facts = outcome("hang")
        except Exception as e:  # noqa: BLE001 - anything escaping the device is a failed check
            observed, verdict, trouble = f"exception {type(e).__name__}: {e}", "fail", True
            facts = outcome("exception", exception=type(e).__name__)
        self.cleanup(trouble)
        return record(case, observed, verdict, facts)

    def close_fd(self, dev, fd: int) -> None:
        pass

    def track(self, dev, fd: int) -> int:
        if fd is not None and fd >= 0:
            self.opened.append((dev, fd))
        return fd

    def cleanup(self, trouble: bool) -> None:
        for dev, fd in self.opened:
            try:
                self.close_fd(dev, fd)
            except Exception:  # noqa: BLE001
                trouble = True
        self.opened = []
        if not trouble:
            return
        try:
            if all(d.reset() == 0 for d in self.devices):
                return
        except Exception:  # noqa: BLE001 - a device that cannot reset is re-opened
            pass
        self.reopen()

    def reopen(self) -> None:
        try:
            self.target.close()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.target = self.open_fn(self.spec)
        except Exception as e:  # noqa: BLE001
            self.lost = f"{type(e).__name__}: {e}"
            return
        self.reopened += 1
        self._stream, self._stream_error = None, ""
        self.install_hang_hook()

    # -- a valid stream from the source device ------------------------------------

    def stop_copy_route(self) -> tuple:
        raise NotImplementedError

    def save_stream(self, dev, route: tuple, from_reset: bool = True) -> tuple[bytes, object]:
        raise NotImplementedError

    def valid_stream(self) -> bytes:
        """A complete stop-and-copy stream saved from the source (cached; the "save-source" case
        takes it first, so a source that cannot save fails once and the rest is "not reached")."""
        if self._stream is None:
            if self._stream_error:
                raise Unreached(f"no valid stream from the source ({self._stream_error})")
            self.capture_stream()
        return self._stream

    def capture_stream(self) -> bytes:
        self._stream, self._stream_error = None, ""
        try:
            self._stream = self.save_stream(self.src, self.stop_copy_route())[0]
        except HANGS as e:
            self._stream_error = f"hang: {e}"
            raise
        except Exception as e:
            self._stream_error = str(e) if isinstance(e, Stop) else f"{type(e).__name__}: {e}"
            raise
        finally:
            self.fresh()
        return self._stream

    def check_save_source(self) -> Seen:
        data = self.capture_stream()
        return seen(f"{len(data)} bytes", True, err=0, bytes=len(data))

    def save_source_case(self, name, stop: int) -> Case:
        route = tuple(name(s) for s in self.stop_copy_route())
        return Case("save-source", route[-1], name(stop), "a stop-and-copy save of the source completes",
                    route + (name(stop),), expect(True), lambda sw: sw.check_save_source())

    def damaged(self, damage: Damage) -> bytes:
        """The valid stream with ``damage`` done to it; Unreached if the damage changes nothing
        (e.g. two equal chunks swapped), since that stream is not damaged at all."""
        stream = self.valid_stream()
        data = damage.apply(stream)
        if data == stream:
            raise Unreached(f"{damage.label} leaves this {len(stream)}-byte stream unchanged")
        return data

    # -- what the shared checks need from a protocol (the subclasses fill these in) -----------

    initial_state = 0  # after reset and after reopen
    stop_state = 0  # stopped, no session
    stop_copy_state = 0  # saving while stopped
    resuming_state = 0
    loaded_state = 0  # where a successful load leaves the device

    def state_name(self, state) -> str:
        raise NotImplementedError

    def get(self, dev) -> int:
        raise NotImplementedError

    def reach(self, dev, state: int):
        raise NotImplementedError

    def move(self, dev, state: int, what: str = ""):
        """One request to ``state`` from wherever ``dev`` is; Step if it is refused."""
        raise NotImplementedError

    def rows(self) -> list:
        """Every state a case can start from (the error state included)."""
        raise NotImplementedError

    def session_rows(self) -> list:
        """The states with an open data session."""
        raise NotImplementedError

    def resume(self, dev, data: bytes, seg: int = 0, from_reset: bool = True) -> tuple[str, int, int, int]:
        raise NotImplementedError

    def compare_loaded(self, dev, reference_digest, stream: bytes) -> tuple[str, bool]:
        raise NotImplementedError

    # -- closing and opening the device again ---------------------------------------------

    def reopen_device(self, dev) -> None:
        """close(2) the device with its data_fds and open it again (no VFIO_DEVICE_RESET)."""
        err = dev.reopen()
        self.opened = [(d, f) for d, f in self.opened if d is not dev]  # closed with the device
        if err:
            raise ReopenFailed(f"closing and opening the device again failed: {errname(err)}", err=err)

    def session_fds(self, dev, state: int, handle) -> list:
        """(data_fd, "read"|"write") of the session open in ``state`` (v2; v1 has none)."""
        return []

    def old_fd_io(self, dev, fd: int, io: str) -> int:
        return 0

    def mid_session(self, dev, state: int, handle, stream: bytes | None) -> None:
        """Do part of the session ``state`` holds: read some of the stream, or write half of one."""

    def reopen_cases(self) -> list[Case]:
        init = self.state_name(self.initial_state)
        cases = [Case("reopen", self.state_name(s), init,
                      f"close and open again: {init}, no session, the old data_fds dead, no live files",
                      (self.state_name(s), init),
                      expect(True, states=[self.initial_state], live_files=0, old_fd_dead=True),
                      lambda sw, s=s: sw.check_reopen(s)) for s in self.rows()]
        loaded = self.state_name(self.loaded_state)
        for s in self.session_rows():
            path = (self.state_name(s), init, *(self.state_name(x) for x in (
                self.stop_state, self.stop_copy_state, self.stop_state, self.resuming_state, self.loaded_state)))
            cases.append(Case("reopen-round-trip", self.state_name(s), loaded,
                              f"both devices closed and opened again in {self.state_name(s)}: then a save, and a "
                              "resume on the other device, give the same state", path,
                              expect(True, states=[self.loaded_state], same=True),
                              lambda sw, s=s: sw.check_reopen_round_trip(s)))
        return cases

    def check_reopen(self, frm: int) -> Seen:
        dev = self.dst
        handle = self.reach(dev, frm)
        old = self.session_fds(dev, frm, handle)
        self.reopen_device(dev)
        got = self.get(dev)
        live = dev.live_files()
        # The harness closed the old fds; on the simulator its own bookkeeping still answers for them.
        probes = [(io, self.old_fd_io(dev, fd, io)) for fd, io in old]
        alive = [f"{io} on the old data_fd {'worked' if not e else errname(e)}" for io, e in probes
                 if e not in model.FD_IO_AFTER_SESSION_END]
        obs = f"reopen ok; state {self.state_name(got)}" + (f"; {live} live files" if live else "") + \
            "".join(f"; {a}" for a in alive)
        ok = got == self.initial_state and not live and not alive
        return seen(obs, ok, err=0, state=got, live_files=live, old_fd_err=[e for _, e in probes] or None)

    def check_reopen_round_trip(self, state: int) -> Seen:
        stream = self.valid_stream() if state == self.resuming_state else None
        src, dst = self.src, self.dst
        for which, dev in (("source", src), ("destination", dst)):
            handle = self.reach(dev, state)
            self.mid_session(dev, state, handle, stream)
            self.reopen_device(dev)
            got = self.get(dev)
            if got != self.initial_state:
                raise Step(f"{which}: after reopen {self.state_name(got)}, not "
                           f"{self.state_name(self.initial_state)}", state=got)
        self.move(src, self.stop_state, "save: ")
        data, digest = self.save_stream(src, self.stop_copy_route(), from_reset=False)
        failed, err, done, got = self.resume(dst, data, from_reset=False)
        if failed:
            return seen(f"{len(data)}-byte stream: {failed} {errname(err)} after {done} bytes "
                        f"(state {self.state_name(got)})", False, err=err, state=got, bytes=len(data), failed=failed)
        if got != self.loaded_state:
            return seen(f"load ok but state {self.state_name(got)}", False, err=0, state=got, bytes=len(data))
        text, same = self.compare_loaded(dst, digest, data)
        return seen(f"{len(data)} bytes; {text}", same, err=0, state=got, bytes=len(data), same=same)

    # -- resume sessions that must not load -------------------------------------------------

    def open_resume(self, dev):
        """Reset ``dev`` into a new resume session; returns what write_piece needs (v2: the data_fd)."""
        raise NotImplementedError

    def write_piece(self, dev, handle, piece: bytes) -> tuple[int, bytes | None]:
        """Write ``piece`` into the session: (errno, the bytes the device accepted, None if unknown)."""
        raise NotImplementedError

    def write_oversized(self, dev, handle, piece: bytes) -> tuple[int, bytes | None]:
        """``piece`` in a write larger than the device can take: (errno, the bytes accepted or None)."""
        raise NotImplementedError

    def finish_resume(self, dev) -> int:
        """End the session (v2 RESUMING -> STOP, v1 clearing RESUMING): errno."""
        raise NotImplementedError

    def after_load_failure(self) -> frozenset:
        raise NotImplementedError

    def session_cases(self) -> list[Case]:
        cases = []
        res, loaded = self.state_name(self.resuming_state), self.state_name(self.loaded_state)
        finish = f"{res} -> {loaded}"
        for sess in SESSIONS:
            if sess.ok is False:
                text = f"{sess.label}: {finish} fails"
                exp = expect(False, states=self.after_load_failure(), session=sess.label, loads="never")
            else:
                text = f"{sess.label}: loads only if the bytes the device accepted are the stream"
                exp = expect(None, session=sess.label, loads="if the accepted bytes are the stream")
            cases.append(Case(sess.check, res, loaded, text, (res, loaded), exp,
                              lambda sw, s=sess: sw.check_session(s)))
        return cases

    def check_session(self, sess: Session) -> Seen:
        stream = self.valid_stream()
        dev = self.dst
        handle = self.open_resume(dev)
        held, known, errs = bytearray(), True, []
        for kind, piece in sess.steps(stream):
            write = self.write_piece if kind == "data" else self.write_oversized
            err, took = write(dev, handle, piece)
            errs.append(err)
            if took is None:
                known = False
            else:
                held += took
        err = self.finish_resume(dev)
        got = self.get(dev)
        held = bytes(held)
        if not known:
            kind = "unknown"
        elif held == stream:
            kind = "stream"
        else:
            kind = "empty" if not held else "prefix" if stream.startswith(held) else "damaged"
        writes = ", ".join("ok" if not e else errname(e) for e in errs) or "none"
        obs = (f"writes {writes}; accepted {len(held)} bytes ({kind}); {'load ok' if not err else errname(err)}"
               f", state {self.state_name(got)}")
        facts = {"err": err, "state": got, "held": kind, "bytes": len(held), "writes": errs}
        if kind == "unknown":
            return seen(obs + " (it took bytes the sweep cannot know)", None, **facts)
        if kind == "stream":
            ok = not err and got == self.loaded_state
        else:
            ok = bool(err) and got in self.after_load_failure()
        if not ok and kind == "damaged" and not self.target.validates_stream:
            return seen(obs + " (target does not promise to validate streams)", None, **facts)
        return seen(obs, ok, **facts)

    # -- device registers (what target.profile declares) --------------------------------------

    @property
    def profile(self):
        return getattr(self.target, "profile", None)

    def observe(self, dev) -> tuple:
        """The profile's observation registers, read one byte each (hex, or None if refused)."""
        out = []
        for region, off, _name in self.profile.observation_registers():
            err, data = dev.reg_read(region, off, 1)
            out.append(None if err or len(data) != 1 else data.hex())
        return tuple(out)

    def writable_observe(self) -> list:
        p = self.profile
        return [(r, off, name) for r, off, name in p.observation_registers()
                if p.write_role(r, off) != "none" and p.access(r, off, 1) is not None]

    def guard_bits(self) -> dict:
        """(region, offset) -> (mask, value) of the mode bits other registers' roles depend on."""
        out: dict = {}
        for region in self.profile.regions.values():
            for reg in region.registers.values():
                if reg.guard is not None:
                    off, mask, equals = reg.guard
                    m, e = out.get((region.index, off), (0, 0))
                    out[(region.index, off)] = (m | mask, e | (equals & mask))
        return out

    def reg_writes(self, dev, salt: int, avoid: tuple = ()) -> list:
        """Write a distinctive value to every writable observation register of ``dev``: one that
        differs from what it reads now and from ``avoid`` (other devices' values, hex), with the
        guard bits at the value their roles need. Returns [(name, value)]."""
        guards = self.guard_bits()
        regs = self.profile.observation_registers()
        done = []
        for k, (region, off, name) in enumerate(self.writable_observe()):
            index = regs.index((region, off, name))
            err, cur = dev.reg_read(region, off, 1)
            taken = {int(v[index], 16) for v in avoid if v[index] is not None}
            if not err and len(cur) == 1:
                taken.add(cur[0])
            mask, equals = guards.get((region, off), (0, 0))
            value = ((0x25 + 0x1B * k + salt) & 0x7F & ~mask) | equals
            for bit in (b for b in (1, 2, 4, 8, 16, 32, 64) if not b & mask):
                if value not in taken:
                    break
                value ^= bit
            err, _ = dev.reg_write(region, off, bytes((value,)))
            if err:
                raise Step(f"write {value:#04x} to {name} (region {region} +{off:#x}): {errname(err)}", err=err)
            done.append((name, value))
        return done

    def satisfy_guard(self, dev, region: int, reg) -> None:
        """Put the mode bit under which ``reg``'s role holds (e.g. a UART's DLAB clear)."""
        if reg.guard is None:
            return
        off, mask, equals = reg.guard
        for attempt in range(2):
            err, g = dev.reg_read(region, off, 1)
            if err or len(g) != 1:
                raise Unreached(f"{reg.name}: its guard register (+{off:#x}) cannot be read: {errname(err)}", err=err)
            if g[0] & mask == equals:
                return
            if attempt or self.profile.write_role(region, off) == "none":
                break
            dev.reg_write(region, off, bytes(((g[0] & ~mask) | (equals & mask),)))
        raise Unreached(f"{reg.name}: its guard (+{off:#x} & {mask:#x} == {equals:#x}) does not hold")

    def register_cases(self) -> list[Case]:
        profile = self.profile
        if profile is None:
            return []
        run = self.state_name(self.initial_state)
        cases = [Case("reg-observe", run, None, f"{name} (region {r} +{off:#x}) reads the same twice", (run,),
                      expect(True, same=True, region=r, offset=off, register=name),
                      lambda sw, r=r, o=off: sw.check_observe(r, o))
                 for r, off, name in profile.observation_registers()]
        for region in sorted(profile.regions.values(), key=lambda g: g.index):
            r = region.index
            for reg in sorted(region.registers.values(), key=lambda g: g.offset):
                if reg.read != "data-out":
                    continue
                idle = "/".join(f"{v:#04x}" for v in reg.idle) or "none allowed"
                where = f"{reg.name} (region {r} +{reg.offset:#x})"
                cases.append(Case("reg-data-out", run, None, f"{where} on a fresh device: only its idle value ({idle})",
                                  (run,), expect(True, region=r, offset=reg.offset, register=reg.name, sent=[],
                                                 allowed=list(reg.idle)),
                                  lambda sw, r=r, o=reg.offset: sw.check_data_out(r, o, None)))
                inlet = reg.offset if reg.write == "data-in" else next(
                    (g.offset for g in sorted(region.registers.values(), key=lambda g: g.offset)
                     if g.write == "data-in"), None)
                if inlet is not None:
                    sent = [b for b in LOOPBACK if b not in reg.idle]
                    cases.append(Case("reg-data-out", run, None,
                                      f"{where} after {bytes(sent).hex()} went in at +{inlet:#x}: those bytes in order,"
                                      " then idle", (run,),
                                      expect(True, region=r, offset=reg.offset, register=reg.name, sent=sent,
                                             allowed=list(reg.idle)),
                                      lambda sw, r=r, o=reg.offset, i=inlet: sw.check_data_out(r, o, i)))
            for width in region.widths:
                cases.append(Case("reg-leak", run, None,
                                  f"every {width}-byte read of {region.name} (region {r}, +0..+{region.max_offset:#x}):"
                                  " no kernel address; none past the region's end answered", (run,),
                                  expect(True, region=r, width=width, addresses=0, outside=0),
                                  lambda sw, r=r, w=width: sw.check_reg_leak(r, w)))
        name = self.state_name
        tail = tuple(name(s) for s in (self.stop_copy_state, self.stop_state, self.resuming_state, self.loaded_state))
        loaded = name(self.loaded_state)
        exp = expect(True, states=[self.loaded_state], same=True)
        if self.writable_observe():
            cases.append(Case("reg-migrated", run, loaded, "registers written while running: after the migration "
                              "the destination's observation registers read as the source's",
                              (run, name(self.stop_state), *tail), dict(exp, written=run),
                              lambda sw: sw.check_reg_migrated("running")))
        if profile.observation_registers():
            stop, sc = name(self.stop_state), name(self.stop_copy_state)
            cases.append(Case("reg-while-stopped", stop, loaded, f"registers read and written in {stop}: the "
                              f"{sc} stream loads and carries them", (stop, *tail), dict(exp, written=stop),
                              lambda sw: sw.check_reg_migrated("stopped")))
            cases.append(Case("reg-while-stopped", sc, loaded, f"registers read and written in the middle of {sc}: "
                              "the stream loads; each register as before or after the write", (stop, *tail),
                              dict(exp, written=sc), lambda sw: sw.check_reg_migrated("mid-stream")))
        return cases

    def byte_access(self, region: int, off: int) -> None:
        """The checks read and write registers one byte at a time: the profile must allow that."""
        if self.profile.access(region, off, 1) is None:
            raise Unsupported(f"the profile allows no 1-byte access at region {region} +{off:#x}")

    def check_observe(self, region: int, off: int) -> Seen:
        self.byte_access(region, off)
        dev = self.dst
        self.reach(dev, self.initial_state)
        err1, a = dev.reg_read(region, off, 1)
        err2, b = dev.reg_read(region, off, 1)
        if err1 or err2:
            err = err1 or err2
            return seen(f"read {errname(err)}", False, err=err)
        same = a == b
        return seen(f"{a.hex()}, then {b.hex()}", same, err=0, same=same, first=a.hex(), second=b.hex())

    def check_data_out(self, region: int, off: int, inlet: int | None) -> Seen:
        reg = self.profile.register(region, off)
        self.byte_access(region, off)
        dev = self.dst
        self.reach(dev, self.initial_state)
        self.satisfy_guard(dev, region, reg)
        sent = b"" if inlet is None else bytes(b for b in LOOPBACK if b not in reg.idle)
        for b in sent:
            err, _ = dev.reg_write(region, inlet, bytes((b,)))
            if err:
                raise Step(f"write {b:#04x} at +{inlet:#x}: {errname(err)}", err=err)
        got = []
        for _ in range(len(sent) + IDLE_READS):
            err, data = dev.reg_read(region, off, 1)
            if err or len(data) != 1:
                return seen(f"read {len(got) + 1} of {reg.name}: {errname(err)}", False, err=err, read=got)
            got.append(data[0])
        back, tail = bytes(got[:len(sent)]), got[len(sent):]
        stray = [v for v in tail if v not in reg.idle] + [v for v in back if v not in sent]
        obs = (f"read back {back.hex()}, then " if sent else "") + " ".join(f"{v:02x}" for v in tail)
        if stray:
            obs += "; never put in: " + " ".join(f"{v:#04x}" for v in dict.fromkeys(stray))
        elif back != sent:
            obs += " (out of order)"
        return seen(obs, back == sent and not stray, err=0, read=got, stray=stray)

    def check_reg_leak(self, region: int, width: int) -> Seen:
        profile = self.profile
        dev = self.dst
        self.reach(dev, self.initial_state)
        found: dict = {}
        reads = refused = 0
        run, run_at = bytearray(), 0
        size = dev.pci_region_size(region)  # REGION_INFO's; reads past it must be refused
        outside = []  # offsets past the end where a read was answered

        def flush() -> None:
            for at, value in kernel_addresses(bytes(run)):
                found.setdefault(run_at + at, value)
            run.clear()

        for off in range(profile.regions[region].max_offset - width + 2):
            aligned = off % width == 0
            if profile.read_role(region, off) == "none":
                if aligned:
                    flush()
                continue
            err, data = dev.reg_read(region, off, width)
            reads += 1
            if err or len(data) != width:
                refused += 1
                if aligned:
                    flush()
                continue
            if size is not None and off + width > size:
                outside.append(off)
            for at, value in kernel_addresses(data):
                found.setdefault(off + at, value)
            if aligned:  # the region as these reads see it, end to end (an address may straddle two reads)
                if not run or run_at + len(run) != off:
                    flush()
                    run_at = off
                run += data
        flush()
        obs = f"{reads} reads ({refused} refused)"
        if outside:
            obs += f"; {len(outside)} answered past the region's end ({size:#x} bytes), from +{outside[0]:#x}"
        if found:
            at = min(found)
            obs += f"; kernel address {found[at]:#018x} at +{at:#x}" + (f" and {len(found) - 1} more"
                                                                         if len(found) > 1 else "")
        return seen(obs, not found and not outside, err=0, reads=reads, refused=refused, outside=len(outside),
                    size=size, addresses=len(found),
                    found=[{"offset": o, "value": f"{v:#018x}"} for o, v in sorted(found.items())[:FOUND_SHOWN]])

    def check_reg_migrated(self, when: str) -> Seen:
        """Registers written on the source (``when``: "running", "stopped" or "mid-stream"), an untouched
        stream, and the destination's observation registers against the source's."""
        src, dst = self.src, self.dst
        regs = self.profile.observation_registers()
        avoid = (self.observe(dst),)
        if when == "running":
            self.reach(src, self.initial_state)
            self.reg_writes(src, 0, avoid)
            self.move(src, self.stop_state, "save: ")
            allowed = [self.observe(src)]
            data, _ = self.save_stream(src, self.stop_copy_route(), from_reset=False)
        elif when == "stopped":
            self.reach(src, self.stop_state)
            self.observe(src)  # reads while stopped, then writes
            self.reg_writes(src, 0x40, avoid)
            allowed = [self.observe(src)]
            data, _ = self.save_stream(src, self.stop_copy_route(), from_reset=False)
        else:
            self.reach(src, self.stop_state)
            allowed = [self.observe(src)]

            def midway() -> None:
                self.reg_writes(src, 0x40, (*avoid, allowed[0]))
                allowed.append(self.observe(src))

            data, _ = self.save_stream(src, self.stop_copy_route(), from_reset=False, midway=midway)
        failed, err, done, got = self.resume(dst, data)
        if failed:
            return seen(f"the {len(data)}-byte stream: {failed} {errname(err)} after {done} bytes "
                        f"(state {self.state_name(got)})", False, err=err, state=got, bytes=len(data), failed=failed)
        if got != self.loaded_state:
            return seen(f"load ok but state {self.state_name(got)}", False, err=0, state=got, bytes=len(data))
        dest = self.observe(dst)
        rows, differ = [], []
        for i, (region, off, name) in enumerate(regs):
            values = list(dict.fromkeys(a[i] for a in allowed))
            rows.append({"register": name, "region": region, "offset": off, "source": values, "dest": dest[i]})
            if dest[i] is None or None in values or dest[i] not in values:
                differ.append((name, f"{name} {dest[i]} (source {'/'.join(str(v) for v in values)})"))
        obs = f"{len(data)}-byte stream loaded; " + (("differ: " + ", ".join(t for _, t in differ)) if differ else
                                                     f"{len(regs)} registers as on the source")
        return seen(obs, not differ, err=0, state=got, bytes=len(data), same=not differ, registers=rows,
                    differ=[n for n, _ in differ])


# =========================================================================== damaged streams


class Damage(NamedTuple):
    """A damaged stream: ``kind`` of :data:`harness.runtime.MANGLE_KINDS` with the argument
    ``arg(length of the stream)``, done by ``harness.runtime.mangle`` as transport would; or
    kind "replay" (not a transport mangle, see :data:`DAMAGES`)."""

    label: str
    kind: str
    arg: Callable[[int], int]

    def apply(self, stream: bytes) -> bytes:
        if self.kind == "replay":
            return stream + stream
        cap = bytearray(stream)
        mangle(cap, self.kind, self.arg(len(stream)))
        return bytes(cap)


def _flip_at(byte: Callable[[int], int], bit: int) -> Callable[[int], int]:
    return lambda n: byte(n) * 8 + bit  # mangle's flip argument: byte index << 3 | bit


HEADER_FLIP = Damage("bit flipped in the header", "flip", _flip_at(lambda n: 0, 0))

# mangle("truncate", arg) keeps n - 1 - arg % n bytes; "extend" appends 1 + arg % 16 bytes;
# drop/dup/swap act on MANGLE_CHUNK-byte chunk number arg % chunks.
DAMAGES = (
    Damage("empty", "truncate", lambda n: n - 1),
    Damage("truncated by 1 byte", "truncate", lambda n: 0),
    Damage("truncated to half", "truncate", lambda n: n - 1 - n // 2),
    Damage("bit flipped mid-stream", "flip", _flip_at(lambda n: n // 2, 4)),
    HEADER_FLIP,
    Damage("extended by 16 bytes", "extend", lambda n: 15),
    Damage(f"a {MANGLE_CHUNK}-byte chunk dropped mid-stream", "drop", lambda n: n // (2 * MANGLE_CHUNK)),
    Damage(f"a {MANGLE_CHUNK}-byte chunk sent twice", "dup", lambda n: n // (2 * MANGLE_CHUNK)),
    Damage(f"two {MANGLE_CHUNK}-byte chunks swapped", "swap", lambda n: n // (2 * MANGLE_CHUNK)),
    # Not a transport mangle: the whole stream written twice in one session is a sender's
    # mistake (a replayed save), which mangle's chunk-sized "dup" does not express.
    Damage("stream sent twice", "replay", lambda n: 0),
)


# =========================================================================== resume sessions


class Session(NamedTuple):
    """A resume session that writes ``steps(valid stream)`` and then ends (RESUMING -> STOP, or
    RESUMING cleared): each step ``("data", bytes)`` is written as it is, ``("oversized", bytes)``
    in a write larger than any device takes (v2: padded past MIG_DATA_SIZE and OVERSIZE; v1:
    with a data_size past the region's end), to provoke a refused write.

    Whatever was written, the device must load only if the bytes it accepted are the stream: an
    empty session and a strict prefix never load (every driver: a stream has a header and an
    end), a refused write does not count. ``ok``: False when no device answer can make the
    accepted bytes the stream (the load must fail), None when that depends on what the device
    refused."""

    check: str
    label: str
    steps: Callable[[bytes], tuple]
    ok: bool | None


def _half(s: bytes) -> int:
    return len(s) // 2


SESSIONS = (
    Session("session-empty", "nothing written", lambda s: (), False),
    Session("session-prefix", "its first byte", lambda s: (("data", s[:1]),), False),
    Session("session-prefix", "its first half", lambda s: (("data", s[:_half(s)]),), False),
    Session("session-prefix", "all but its last byte", lambda s: (("data", s[:-1]),), False),
    # A device that checks the header at write time refuses this write (the session then holds
    # nothing); one that checks at the load refuses the load.
    Session("session-failed-write", "a stream with a damaged header", lambda s: (("data", HEADER_FLIP.apply(s)),),
            False),
    Session("session-failed-write", "a stream with a damaged header, then the stream",
            lambda s: (("data", HEADER_FLIP.apply(s)), ("data", s)), None),
    Session("session-failed-write", "half a stream, then the rest in an oversized write",
            lambda s: (("data", s[:_half(s)]), ("oversized", s[_half(s):])), None),
    Session("session-failed-write", "half a stream, the rest in an oversized write, then the rest",
            lambda s: (("data", s[:_half(s)]), ("oversized", s[_half(s):]), ("data", s[_half(s):])), None),
)


# =========================================================================== v2


class FdRule(NamedTuple):
    """A data_fd rule: open a session along ``route``, then ``then``, then ``io``.

    ``route[0]`` is reached from reset; each later state is one SET (the fd
    used is the last one returned).  ``then``: None, "reset", or a state to SET
    (leaving RESUMING writes a valid stream first).  ``expect``: None = the
    call must succeed, else the errnos it may fail with."""

    check: str
    route: tuple
    then: object
    io: str
    expect: frozenset | None


_AFTER_END = model.FD_IO_AFTER_SESSION_END
_PRECOPY_OUTSIDE = frozenset({model.EINVAL, model.ENODEV})

V2_FD_RULES = (
    # session end: the driver disables the file (read/write give ENODEV)
    FdRule("fd-after-session-end", (STOP, STOP_COPY), STOP, "read", _AFTER_END),
    FdRule("fd-after-session-end", (RUNNING, PRE_COPY), RUNNING, "read", _AFTER_END),
    FdRule("fd-after-session-end", (RUNNING_P2P, PRE_COPY_P2P), RUNNING_P2P, "read", _AFTER_END),
    FdRule("fd-after-session-end", (STOP, RESUMING), STOP, "write", _AFTER_END),
    # reset ends every session
    FdRule("fd-after-reset", (STOP, STOP_COPY), "reset", "read", _AFTER_END),
    FdRule("fd-after-reset", (RUNNING, PRE_COPY), "reset", "read", _AFTER_END),
    FdRule("fd-after-reset", (RUNNING_P2P, PRE_COPY_P2P), "reset", "read", _AFTER_END),
    FdRule("fd-after-reset", (STOP, RESUMING), "reset", "write", _AFTER_END),
    # direction and seeking (drivers open the file O_RDONLY or O_WRONLY with stream_open())
    FdRule("fd-wrong-direction", (STOP, STOP_COPY), None, "write", model.FD_WRITE_ON_SAVE_FD),
    FdRule("fd-wrong-direction", (RUNNING, PRE_COPY), None, "write", model.FD_WRITE_ON_SAVE_FD),
    FdRule("fd-wrong-direction", (STOP, RESUMING), None, "read", model.FD_READ_ON_RESUME_FD),
    FdRule("fd-seek", (STOP, STOP_COPY), None, "seek", model.FD_SEEK),
    FdRule("fd-seek", (RUNNING, PRE_COPY), None, "seek", model.FD_SEEK),
    FdRule("fd-seek", (STOP, RESUMING), None, "seek", model.FD_SEEK),
    # moves inside the saving group keep the fd
    FdRule("fd-kept-in-group", (RUNNING, PRE_COPY, STOP_COPY), None, "read", None),
    FdRule("fd-kept-in-group", (RUNNING, PRE_COPY, PRE_COPY_P2P), None, "read", None),
    FdRule("fd-kept-in-group", (RUNNING_P2P, PRE_COPY_P2P, STOP_COPY), None, "read", None),
    FdRule("fd-kept-in-group", (RUNNING_P2P, PRE_COPY_P2P, PRE_COPY), None, "read", None),
    # closing is always safe
    FdRule("fd-close", (STOP, STOP_COPY), STOP, "close", None),
    FdRule("fd-close", (STOP, STOP_COPY), None, "close", None),
    FdRule("fd-close", (STOP, RESUMING), "reset", "close", None),
    # end of stream
    FdRule("stop-copy-eof", (STOP, STOP_COPY), None, "drain", None),
    FdRule("stop-copy-eof", (RUNNING, PRE_COPY, STOP_COPY), None, "drain", None),
    FdRule("precopy-eof", (RUNNING, PRE_COPY), None, "drain-precopy", None),
    FdRule("precopy-eof", (RUNNING_P2P, PRE_COPY_P2P), None, "drain-precopy", None),
    # VFIO_MIG_GET_PRECOPY_INFO only in PRE_COPY* on a live saving fd (include/uapi/linux/vfio.h)
    FdRule("precopy-info", (RUNNING, PRE_COPY), None, "precopy", None),
    FdRule("precopy-info", (RUNNING_P2P, PRE_COPY_P2P), None, "precopy", None),
    FdRule("precopy-info", (STOP, STOP_COPY), None, "precopy", frozenset({model.EINVAL})),
    FdRule("precopy-info", (RUNNING, PRE_COPY, STOP_COPY), None, "precopy", frozenset({model.EINVAL})),
    FdRule("precopy-info", (RUNNING, PRE_COPY), RUNNING, "precopy", _PRECOPY_OUTSIDE),
    FdRule("precopy-info", (STOP, RESUMING), None, "precopy", frozenset({model.ENOTTY})),
    FdRule("precopy-info-covers", (RUNNING, PRE_COPY), None, "precopy-cover", None),
    FdRule("precopy-info-covers", (RUNNING_P2P, PRE_COPY_P2P), None, "precopy-cover", None),
    # initial_bytes never grows while the stream is read (struct vfio_precopy_info)
    FdRule("precopy-info-initial", (RUNNING, PRE_COPY), None, "precopy-initial", None),
    FdRule("precopy-info-initial", (RUNNING_P2P, PRE_COPY_P2P), None, "precopy-initial", None),
)

IO_TEXT = {
    "read": "read", "write": "write", "seek": "lseek", "close": "close", "precopy": "PRECOPY_INFO",
    "drain": "reads end with 0, and 0 again", "drain-precopy": "reads reach a temporary end",
    "precopy-cover": "PRECOPY_INFO initial+dirty covers what is readable",
    "precopy-initial": "PRECOPY_INFO initial_bytes never grows while reading",
}
# The io checks that judge a sequence, not one call that succeeds or fails.
SEQUENCE_IO = frozenset({"drain", "drain-precopy", "precopy-cover", "precopy-initial"})

# VFIO_DEVICE_FEATURE framing (vfio_ioctl_device_feature()): (label, flags, argsz); the expected errno is
# model.feature_errno.
_G, _S, _P = FEATURE_GET, FEATURE_SET, FEATURE_PROBE
_MIG, _STATE, _SIZE = FEATURE_MIGRATION, FEATURE_MIG_DEVICE_STATE, FEATURE_MIG_DATA_SIZE
FEATURE_CASES = (
    ("GET MIGRATION", _G | _MIG, 16),
    ("GET MIGRATION, argsz 12 (short payload)", _G | _MIG, 12),
    ("GET MIGRATION, argsz 8 (no payload)", _G | _MIG, 8),
    ("GET MIGRATION, argsz 7", _G | _MIG, 7),
    ("GET MIGRATION, argsz 0", _G | _MIG, 0),
    ("SET MIGRATION (GET-only feature)", _S | _MIG, 16),
    ("PROBE|GET MIGRATION", _P | _G | _MIG, 8),
    ("PROBE|SET MIGRATION", _P | _S | _MIG, 8),
    ("GET MIG_DEVICE_STATE", _G | _STATE, 16),
    ("SET MIG_DEVICE_STATE (current state)", _S | _STATE, 16),
    ("SET MIG_DEVICE_STATE, argsz 12", _S | _STATE, 12),
    ("GET|SET MIG_DEVICE_STATE without PROBE", _G | _S | _STATE, 16),
    ("PROBE|GET|SET MIG_DEVICE_STATE", _P | _G | _S | _STATE, 8),
    ("PROBE MIG_DEVICE_STATE (no op)", _P | _STATE, 8),
    ("MIG_DEVICE_STATE without GET or SET", _STATE, 16),
    ("GET MIG_DEVICE_STATE with an unknown flag bit", _G | _STATE | (1 << 19), 16),
    ("GET MIG_DATA_SIZE", _G | _SIZE, 16),
    ("SET MIG_DATA_SIZE (GET-only feature)", _S | _SIZE, 16),
    ("GET MIG_DATA_SIZE, argsz 15", _G | _SIZE, 15),
)

# Save routes for the round trip: route[0] from reset, then one SET each.
V2_SAVE_ROUTES = (
    ("stop-copy", (STOP, STOP_COPY)),
    ("pre-copy", (RUNNING, PRE_COPY, STOP_COPY)),
    ("pre-copy-p2p", (RUNNING_P2P, PRE_COPY_P2P, STOP_COPY)),
)
# How a resume cuts the stream into writes: name -> harness.runtime.segments' seg.
RESUME_SEGMENTS = (("one write", 0), ("7-byte writes", 7), ("1-byte writes", 1),
                   ("random pieces", SEG_RANDOM + 7))


def _write_text(err: int, done: int, stalled: bool) -> str:
    if stalled:
        return f"a write made no progress after {done} bytes"
    return f"{errname(err)} after {done} bytes"


class V2Sweep(Sweep):
    proto = "v2"
    state_name = staticmethod(v2_name)
    initial_state, stop_state, stop_copy_state, resuming_state, loaded_state = RUNNING, STOP, STOP_COPY, RESUMING, STOP

    def __init__(self, spec, target, open_fn=None):
        super().__init__(spec, target, open_fn)
        self.flags = self.read_flags()

    # -- device helpers --------------------------------------------------------

    def read_flags(self) -> int:
        dev = self.devices[0]
        self.flags_note = ""
        try:
            err, out = dev.feature(FEATURE_GET | FEATURE_MIGRATION, bytes(8))
        except Exception as e:  # noqa: BLE001
            err, out = -1, b""
            self.flags_note = f"GET MIGRATION raised {type(e).__name__}: {e}"
        self.flags_err = err
        if err == 0 and len(out) >= 8:
            self.flags_read = int.from_bytes(out[:8], "little")
        else:
            self.flags_note = self.flags_note or f"GET MIGRATION failed: {errname(err)}"
            self.flags_read = None
        flags = self.flags_read if self.flags_read is not None else getattr(dev, "flags", self.target.flags)
        return (flags & (model.SC | model.P2P | model.PRE)) | model.SC

    def close_fd(self, dev, fd) -> None:
        dev.close(fd)

    def supported(self, *states) -> bool:
        return all(model.supported(self.flags, s) for s in states if s != ERROR)

    def get(self, dev) -> int:
        err, state = dev.get_state()
        if err:
            raise Step(f"GET MIG_DEVICE_STATE failed: {errname(err)}", err=err)
        return state

    def set(self, dev, state: int) -> tuple[int, int]:
        err, fd = dev.set_state(state)
        self.track(dev, fd)
        return err, fd

    def must_set(self, dev, state: int, what: str = "") -> int:
        cur = self.get(dev)
        err, fd = self.set(dev, state)
        if err:
            raise Step(f"{what}SET {v2_name(state)} from {v2_name(cur)}: {errname(err)}", err=err, state=cur)
        return fd

    move = must_set

    def rows(self) -> list:
        return [ERROR] + [s for s in range(1, 8) if model.supported(self.flags, s)]

    def session_rows(self) -> list:
        return [s for s in (STOP_COPY, PRE_COPY, PRE_COPY_P2P, RESUMING) if model.supported(self.flags, s)]

    def session_fds(self, dev, state: int, fd) -> list:
        if fd is None or fd < 0 or state not in model.SESSION_STATES:
            return []
        return [(fd, "read" if state in model.SAVING_GROUP else "write")]

    def old_fd_io(self, dev, fd: int, io: str) -> int:
        return dev.read(fd, PROBE_BYTES)[0] if io == "read" else dev.write(fd, bytes(PROBE_BYTES))[0]

    def mid_session(self, dev, state: int, fd, stream: bytes | None) -> None:
        if fd is None or fd < 0:
            raise Step(f"no data_fd in {v2_name(state)}", fd=False)
        if state in model.SAVING_GROUP:
            err, _ = dev.read(fd, PROBE_BYTES)
            if err not in (0, model.PRECOPY_TEMP_EOF_ERRNO):
                raise Step(f"read in {v2_name(state)}: {errname(err)}", err=err)
        elif stream is not None:
            self.write_valid(dev, fd, stream[:len(stream) // 2])

    def reach(self, dev, state: int) -> int:
        """Reset-fresh ``dev`` to ``state`` one model arc at a time; returns the last data_fd or -1."""
        self.reset(dev)
        if state == ERROR:
            return self.enter_error(dev)
        cur = self.get(dev)
        hops = model.path(self.flags, cur, state)
        if hops is None:
            raise Unreached(f"no path from {v2_name(cur)} to {v2_name(state)}", state=cur)
        fd = -1
        for prev, nxt in model.hop_pairs(cur, hops):
            err, new_fd = self.set(dev, nxt)
            if err:
                raise Unreached(f"{v2_name(prev)} -> {v2_name(nxt)} refused ({errname(err)})", err=err)
            if new_fd >= 0:
                fd = new_fd
        return fd

    def enter_error(self, dev) -> int:
        if not self.target.supports_faults:
            raise Unreached("ERROR needs fault injection, which this target does not support")
        cur = self.get(dev)
        # Any arc out of the current state will do; one that opens no session first.
        out = sorted((pair in model.OPENS_SESSION, pair[1]) for pair in model.arcs(self.flags) if pair[0] == cur)
        if not out:
            raise Unreached(f"no arc out of {v2_name(cur)}")
        self.target.arm_fault(self.devices.index(dev), 1, "hwerror")
        tried = []
        for _, nxt in out:
            err, _ = self.set(dev, nxt)
            got = self.get(dev)
            if got == ERROR:
                return -1
            tried.append(f"{v2_name(cur)} -> {v2_name(nxt)}: {errname(err)}, GET {v2_name(got)}")
            if not err:
                break
        raise Unreached("an injected hardware error did not lead to ERROR (" + "; ".join(tried) + ")")

    def drain(self, dev, fd: int) -> tuple[bytes, int]:
        """Read to the (temporary) end of the stream (``harness.runtime.read_stream``): (bytes, 0 at
        the end, else the errno that ended it, e.g. ENOMSG). Endless if it never ends."""
        err, data, ended = read_stream(dev, fd)
        if not ended:
            raise Endless(f"the stream does not end after {len(data)} bytes ({DRAIN_LIMIT} reads)",
                          bytes=len(data))
        return data, err

    def write_stream(self, dev, fd: int, data: bytes, seg: int = 0) -> tuple[int, int, bool]:
        """``harness.runtime.write_all``: (errno, bytes accepted, stalled)."""
        return write_all(dev, fd, data, seg)

    def write_valid(self, dev, fd: int, stream: bytes) -> None:
        """Write a valid stream a case needs before its judged call; Unreached if it is refused."""
        err, done, stalled = self.write_stream(dev, fd, stream)
        if err or stalled:
            raise Unreached(f"writing a valid stream failed: {_write_text(err, done, stalled)}", err=err)

    def stop_copy_route(self) -> tuple:
        return (STOP, STOP_COPY)

    def save_stream(self, dev, route: tuple, from_reset: bool = True, midway=None) -> tuple[bytes, object]:
        """Save ``dev`` along ``route``; returns (stream, digest at the end of the stream).

        ``from_reset`` False: ``dev`` is already in ``route[0]`` (a re-save must not reset it).
        ``midway()`` runs once in the last state, after the first read of its stream."""
        if from_reset:
            fd = self.reach(dev, route[0])
        elif self.get(dev) != route[0]:
            raise Step(f"save: device not in {v2_name(route[0])}")
        else:
            fd = -1
        data = bytearray()
        for state in route[1:]:
            new_fd = self.must_set(dev, state, "save: ")
            if new_fd >= 0:
                fd = new_fd
            if fd < 0:
                raise Step(f"save: no data_fd after SET {v2_name(state)}", fd=False)
            if state in model.PRECOPY_INFO_STATES:
                for seed in ACTIVITY_SEEDS:
                    chunk, err = self.drain(dev, fd)
                    data += chunk
                    if err not in (0, model.PRECOPY_TEMP_EOF_ERRNO):
                        raise Step(f"save: pre-copy read failed: {errname(err)}", err=err)
                    dev.activity(seed)
            else:
                if midway is not None and state == route[-1]:
                    err, first = dev.read(fd, PROBE_BYTES)
                    if err not in (0, model.PRECOPY_TEMP_EOF_ERRNO):
                        raise Step(f"save: first read in {v2_name(state)}: {errname(err)}", err=err)
                    data += first
                    midway()
                chunk, err = self.drain(dev, fd)
                data += chunk
                if err not in (0, model.PRECOPY_TEMP_EOF_ERRNO):  # ENOMSG in STOP_COPY is judged by stop-copy-eof
                    raise Step(f"save: read in {v2_name(state)} failed: {errname(err)} after {len(data)} bytes",
                               err=err)
        digest = self.digest(dev)
        self.must_set(dev, STOP, "save: ")
        if not data:
            raise Step("save: the stream is empty", bytes=0)
        return bytes(data), digest

    def resume(self, dev, data: bytes, seg: int = 0, from_reset: bool = True) -> tuple[str, int, int, int]:
        """RESUMING, write ``data`` in ``segments(data, seg)``, SET STOP: (what failed or "", errno,
        bytes written, GET). A write that makes no progress fails as "stalled". ``from_reset``
        False: one SET RESUMING from where ``dev`` is, no reset."""
        fd = self.reach(dev, RESUMING) if from_reset else self.must_set(dev, RESUMING, "resume: ")
        if fd < 0:
            raise Unreached("STOP -> RESUMING returned no data_fd", fd=False)
        err, done, stalled = self.write_stream(dev, fd, data, seg)
        if err or stalled:
            return ("stalled" if stalled else "write"), err, done, self.get(dev)
        err, _ = self.set(dev, STOP)
        return ("load" if err else ""), err, done, self.get(dev)

    # -- resume sessions --------------------------------------------------------------

    def open_resume(self, dev) -> int:
        fd = self.reach(dev, RESUMING)
        if fd < 0:
            raise Unreached("STOP -> RESUMING returned no data_fd", fd=False)
        return fd

    def write_piece(self, dev, fd: int, piece: bytes) -> tuple[int, bytes | None]:
        err, done, stalled = self.write_stream(dev, fd, piece)
        if stalled:
            raise Step(f"a write made no progress after {done} bytes", bytes=done, stalled=True)
        return err, piece[:done]

    def write_oversized(self, dev, fd: int, piece: bytes) -> tuple[int, bytes | None]:
        err, size = dev.data_size()
        size = max(OVERSIZE, (size if not err and size > 0 else 0) + 1)
        if size > OVERSIZE_MAX:
            raise Unsupported(f"MIG_DATA_SIZE {size - 1} is too large to write past (limit {OVERSIZE_MAX})")
        return self.write_piece(dev, fd, piece + bytes(size - len(piece)))

    def finish_resume(self, dev) -> int:
        return self.set(dev, STOP)[0]

    def after_load_failure(self) -> frozenset:
        return model.allowed_after_failure(self.flags, RESUMING, STOP)

    # -- the cases ---------------------------------------------------------------

    def cases(self) -> list[Case]:
        flags = self.flags
        states = [s for s in range(1, 8) if model.supported(flags, s)]
        rows = self.rows()
        cases = [self.flags_case(), self.save_source_case(v2_name, STOP)]
        cases += [Case("reset", v2_name(s), v2_name(RUNNING), "reset succeeds, GET RUNNING, no live files",
                       (v2_name(s), v2_name(RUNNING)), expect(True, states=[RUNNING], live_files=0),
                       lambda sw, s=s: sw.check_reset(s)) for s in rows]
        cases += self.reopen_cases()
        cases += [Case("reach", v2_name(RUNNING), v2_name(s), f"reach {v2_name(s)} from reset one arc at a time",
                       tuple(v2_name(x) for x in (RUNNING, *(model.path(flags, RUNNING, s) or ()))),
                       expect(True, states=[s]), lambda sw, s=s: sw.check_reach(s)) for s in states]
        cases += [self.arc_case(f, t) for f in rows for t in (*range(8), *OUT_OF_RANGE)]
        cases += [self.fd_case(rule) for rule in V2_FD_RULES if self.supported(*rule.route)]
        cases += [Case("data-size", v2_name(s), None, "GET MIG_DATA_SIZE succeeds in every state",
                       (v2_name(s),), expect(True), lambda sw, s=s: sw.check_data_size(s)) for s in states]
        cases += [self.feature_case(label, fl, argsz) for label, fl, argsz in FEATURE_CASES]
        cases += [Case("stopped-frozen", v2_name(s), None, "device activity changes nothing while stopped",
                       (v2_name(s),), expect(None, unchanged=True), lambda sw, s=s: sw.check_frozen(s))
                  for s in sorted(model.STOPPED_STATES)]
        for name, route in V2_SAVE_ROUTES:
            if self.supported(*route):
                path = tuple(v2_name(s) for s in route) + tuple(v2_name(s) for s in (STOP, RESUMING, STOP))
                cases.append(Case("round-trip", v2_name(route[1]), v2_name(STOP),
                                  f"{name} save, resume on the other device: same state", path,
                                  expect(True, states=[STOP], same=True),
                                  lambda sw, r=route: sw.check_round_trip(r)))
        cases += [Case("resume-segmented", v2_name(RESUMING), v2_name(STOP), f"a valid stream in {label} loads",
                       (v2_name(RESUMING), v2_name(STOP)), expect(True, states=[STOP], seg=seg),
                       lambda sw, p=seg: sw.check_resume(p))
                  for label, seg in RESUME_SEGMENTS]
        cases.append(Case("resume-twice", v2_name(RESUMING), v2_name(STOP), "two resume sessions in a row both load",
                          tuple(v2_name(s) for s in (RESUMING, STOP, RESUMING, STOP)), expect(True, states=[STOP]),
                          lambda sw: sw.check_resume_twice()))
        after_load_failure = model.allowed_after_failure(flags, RESUMING, STOP)
        cases += [Case("damaged-stream", v2_name(RESUMING), v2_name(STOP), f"{d.label}: refused, device unchanged",
                       (v2_name(RESUMING), v2_name(STOP)),
                       expect(False, states=after_load_failure, unchanged=True, damage=d.kind),
                       lambda sw, d=d: sw.check_damaged(d)) for d in DAMAGES]
        cases += self.session_cases()
        cases += self.register_cases()
        cases += self.fault_cases()
        return cases

    def flags_case(self) -> Case:
        return Case("flags", None, None, "GET MIGRATION: a defined flag set (with STOP_COPY), as declared",
                    (), expect(True, flags=list(model.FLAG_SETS)), lambda sw: sw.check_flags())

    def check_flags(self) -> Seen:
        got = self.flags_read
        if got is None:
            return seen(self.flags_note, False, err=self.flags_err if self.flags_err >= 0 else None)
        declared = getattr(self.devices[0], "flags", None)
        text = f"{got:#x} ({model.flag_names(got)})"
        ok = got in model.FLAG_SETS and (declared is None or declared == got)
        if declared is not None and declared != got:
            text += f"; device object says {declared:#x}"
        return seen(text, ok, err=0, flags=got, declared=declared)

    def check_reset(self, frm: int) -> Seen:
        dev = self.dst
        self.reach(dev, frm)
        err = dev.reset()
        got = self.get(dev)
        live = dev.live_files()
        obs = f"reset {errname(err)}; GET {v2_name(got)}" + (f"; {live} live files" if live else "")
        return seen(obs, err == 0 and got == RUNNING and not live, err=err, state=got, live_files=live)

    def check_reach(self, state: int) -> Seen:
        dev = self.dst
        try:
            self.reach(dev, state)
        except Unreached as e:
            return seen(str(e), False, **e.facts)
        got = self.get(dev)
        return seen(f"GET {v2_name(got)}", got == state, err=0, state=got)

    # arc matrix ---------------------------------------------------------------

    def arc_case(self, frm: int, to: int) -> Case:
        hops = model.path(self.flags, frm, to)
        if hops is None:
            text, path = f"refused, stays {v2_name(frm)}", ()
            exp = expect(False, states=[frm], fd=False, noop=False)
        elif not hops:
            text, path = "ok (no-op), no fd", (v2_name(frm),)
            exp = expect(True, states=[frm], fd=False, noop=True)
        else:
            fd = model.opens_fd(self.flags, frm, to)
            text = f"ok -> {v2_name(to)}" + (", new fd" if fd else ", no fd")
            path = tuple(v2_name(s) for s in (frm, *hops))
            exp = expect(True, states=[to], fd=fd, noop=False)
        return Case("arc", v2_name(frm), v2_name(to), text, path, exp, lambda sw: sw.check_arc(frm, to))

    def check_arc(self, frm: int, to: int) -> Seen:
        flags = self.flags
        plan = model.plan(flags, frm, to)
        stream = self.valid_stream() if plan is not None and plan.load else None
        dev = self.dst
        fd0 = self.reach(dev, frm)
        if stream is not None:
            self.write_valid(dev, fd0, stream)
        err, fd = self.set(dev, to)
        got = self.get(dev)
        new_fd = fd >= 0
        if err:
            obs = f"{errname(err)}, GET {v2_name(got)}" + (f", fd {fd}" if new_fd else "")
        else:
            obs = f"ok, GET {v2_name(got)}" + (", new fd" if new_fd else ", no fd")
        facts = {"err": err, "state": got, "fd": new_fd}
        if plan is None:
            return seen(obs, bool(err) and not new_fd and got == frm, **facts)
        if not plan.hops:
            return seen(obs, not err and not new_fd and got == frm, **facts)
        if err and got not in model.allowed_after_failure(flags, frm, to):
            obs += " (off the path)"
        return seen(obs, not err and got == to and new_fd == plan.fd, **facts)

    # data_fd rules ---------------------------------------------------------------

    def fd_case(self, rule: FdRule) -> Case:
        io = IO_TEXT[rule.io]
        if rule.then == "reset":
            when = " after reset"
        elif rule.then is not None:
            when = f" after SET {v2_name(rule.then)}"
        else:
            when = f" in {v2_name(rule.route[-1])}"
        if len(rule.route) > 2:
            when += " (via " + ", ".join(v2_name(s) for s in rule.route[1:-1]) + ")"
        if rule.expect is None:
            text = f"{io}{when}" if rule.io in SEQUENCE_IO else f"{io}{when} succeeds"
            exp = expect(True)
        else:
            text = f"{io}{when} fails {errnames(rule.expect)}"
            exp = expect(False, errnos=rule.expect)
        end = v2_name(RUNNING) if rule.then == "reset" else (v2_name(rule.then) if rule.then is not None else None)
        path = tuple(v2_name(s) for s in rule.route) + ((end,) if end else ())
        return Case(rule.check, v2_name(rule.route[-1]), end, text, path, exp, lambda sw: sw.check_fd(rule))

    def check_fd(self, rule: FdRule) -> Seen:
        route = rule.route
        stream = self.valid_stream() if route[-1] == RESUMING and rule.then == STOP else None
        dev = self.dst
        fd = self.reach(dev, route[0])
        for state in route[1:]:
            err, new_fd = self.set(dev, state)
            if err:
                raise Unreached(f"SET {v2_name(state)}: {errname(err)}", err=err)
            if new_fd >= 0:
                fd = new_fd
        if fd < 0:
            raise Step(f"no data_fd along {' -> '.join(v2_name(s) for s in route)}", fd=False)
        if rule.then == "reset":
            self.reset(dev)
        elif rule.then is not None:
            if stream is not None:
                self.write_valid(dev, fd, stream)
            err, _ = self.set(dev, rule.then)
            if err:
                raise Unreached(f"SET {v2_name(rule.then)}: {errname(err)}", err=err)
        return getattr(self, "io_" + rule.io.replace("-", "_"))(dev, fd, rule.expect)

    @staticmethod
    def judge(err: int, what: str, errnos, **facts) -> Seen:
        """One call's answer against an FdRule's expectation (None: must succeed)."""
        obs = what if not err else errname(err)
        ok = not err if errnos is None else bool(err) and err in errnos
        return seen(obs, ok, err=err, **facts)

    def io_read(self, dev, fd, errnos) -> Seen:
        err, data = dev.read(fd, PROBE_BYTES)
        return self.judge(err, f"read {len(data)} bytes", errnos, bytes=len(data))

    def io_write(self, dev, fd, errnos) -> Seen:
        err, n = dev.write(fd, bytes(PROBE_BYTES))
        return self.judge(err, f"wrote {n} bytes", errnos, bytes=n)

    def io_seek(self, dev, fd, errnos) -> Seen:
        return self.judge(dev.seek(fd), "success", errnos)

    def io_close(self, dev, fd, errnos) -> Seen:
        err = dev.close(fd)
        self.opened = [(d, f) for d, f in self.opened if f != fd or d is not dev]
        return self.judge(err, "success", errnos)

    def io_precopy(self, dev, fd, errnos) -> Seen:
        err, initial, dirty = dev.precopy_info(fd)
        return self.judge(err, f"success (initial {initial}, dirty {dirty})", errnos, initial=initial, dirty=dirty)

    def io_drain(self, dev, fd, errnos) -> Seen:
        data, err = self.drain(dev, fd)
        if err:
            return seen(f"{errname(err)} after {len(data)} bytes", False, err=err, bytes=len(data))
        err2, more = dev.read(fd, DRAIN_CHUNK)
        obs = f"{len(data)} bytes, then 0; again: " + (errname(err2) if err2 else f"{len(more)} bytes")
        return seen(obs, not err2 and not more and len(data) > 0, err=err2, bytes=len(data), again=len(more))

    def io_drain_precopy(self, dev, fd, errnos) -> Seen:
        data, err = self.drain(dev, fd)
        obs = f"{len(data)} bytes, then {'0' if not err else errname(err)}"
        ok = err in (0, model.PRECOPY_TEMP_EOF_ERRNO)
        perr = None
        if ok:  # the session survives its temporary end
            perr, _, _ = dev.precopy_info(fd)
            if perr:
                obs += f"; PRECOPY_INFO then {errname(perr)}"
                ok = False
        return seen(obs, ok, err=err, bytes=len(data), info_err=perr)

    def _pre_read(self, dev, fd, what: str) -> bytes:
        data, err = self.drain(dev, fd)
        if err not in (0, model.PRECOPY_TEMP_EOF_ERRNO):
            raise Step(f"{what}: {errname(err)}", err=err)
        return data

    def io_precopy_cover(self, dev, fd, errnos) -> Seen:
        self._pre_read(dev, fd, "initial read")
        self.activity(dev)
        err, _ = dev.read(fd, 1)  # stages what the activity dirtied, takes one byte of it
        if err not in (0, model.PRECOPY_TEMP_EOF_ERRNO):
            raise Step(f"read after activity: {errname(err)}", err=err)
        err, initial, dirty = dev.precopy_info(fd)
        if err:
            raise Step(f"PRECOPY_INFO {errname(err)}", err=err)
        data = self._pre_read(dev, fd, "read")
        obs = f"announced {initial}+{dirty}, then read {len(data)} bytes"
        return seen(obs, len(data) <= initial + dirty, err=0, initial=initial, dirty=dirty, bytes=len(data))

    def io_precopy_initial(self, dev, fd, errnos) -> Seen:
        initials: list[int] = []

        def info() -> None:
            err, initial, _ = dev.precopy_info(fd)
            if err:
                raise Step(f"PRECOPY_INFO {errname(err)} (initial_bytes so far {initials})", err=err)
            initials.append(initial)

        info()
        err, _ = dev.read(fd, PROBE_BYTES)  # part of the initial data
        if err not in (0, model.PRECOPY_TEMP_EOF_ERRNO):
            raise Step(f"first read: {errname(err)}", err=err)
        info()
        self.activity(dev)
        info()
        self._pre_read(dev, fd, "read")
        info()
        grew = any(b > a for a, b in zip(initials, initials[1:], strict=False))
        return seen("initial_bytes " + " -> ".join(map(str, initials)), not grew, err=0, initial=initials)

    # other single-shot checks ----------------------------------------------------------

    def check_data_size(self, state: int) -> Seen:
        dev = self.dst
        self.reach(dev, state)
        err, size = dev.data_size()
        return seen(f"{size} bytes" if not err else errname(err), not err, err=err, bytes=size if not err else None)

    def feature_case(self, label: str, flags: int, argsz: int) -> Case:
        e = model.feature_errno(flags, argsz, self.flags, RUNNING)
        text = f"{label} -> {'any' if e is None else errname(e)}"
        exp = expect(None if e is None else e == 0, errnos=[e] if e else None, states=[RUNNING],
                     fd=False if flags & FEATURE_SET else None)
        return Case("feature", v2_name(RUNNING), None, text, (v2_name(RUNNING),), exp,
                    lambda sw: sw.check_feature(flags, argsz))

    def check_feature(self, flags: int, argsz: int) -> Seen:
        """The errno model.feature_errno requires, no state change, and no data_fd from a no-op SET."""
        dev = self.dst
        self.reach(dev, RUNNING)
        state = self.get(dev)
        want = model.feature_errno(flags, argsz, self.flags, state)
        err, payload = dev.feature(flags, model.MIG_STATE_PAYLOAD.pack(state, -1), argsz)
        fd = -1
        if not err and flags & FEATURE_SET and flags & FEATURE_MASK == FEATURE_MIG_DEVICE_STATE \
                and len(payload) >= model.MIG_STATE_PAYLOAD.size:
            fd = self.track(dev, model.MIG_STATE_PAYLOAD.unpack_from(payload)[1])
        after = self.get(dev)
        obs = errname(err) + (f"; state moved to {v2_name(after)}" if after != state else "") + \
            (f"; data_fd {fd} returned" if fd >= 0 else "")
        facts = {"err": err, "state": after, "fd": (fd >= 0) if flags & FEATURE_SET else None}
        if want is None:
            return seen(obs, None, **facts)
        return seen(obs, err == want and after == state and fd < 0, **facts)

    def check_frozen(self, state: int) -> Seen:
        if not self.target.has_digest:
            return seen("no digest on this target", None, status="unsupported")
        stream = self.valid_stream() if state == RESUMING else None
        dev = self.dst
        fd = self.reach(dev, state)
        before = dev.digest()
        self.activity(dev)
        if stream is not None:  # writing a stream must not change the device before the load either
            self.write_stream(dev, fd, stream)
        changed = dev.digest() != before
        return seen("digest changed" if changed else "unchanged", not changed, changed=changed)

    # round trip, resume, damaged streams ---------------------------------------------

    def compare_loaded(self, dev, reference_digest, stream: bytes) -> tuple[str, bool]:
        """After a load: the destination equals the source (digest, else a re-save)."""
        if self.target.has_digest:
            same = dev.digest() == reference_digest
            return ("same digest" if same else "digest differs from the source"), same
        again, _ = self.save_stream(dev, self.stop_copy_route(), from_reset=False)
        same = again == stream
        return ("re-saved stream identical" if same else
                f"re-saved stream differs ({len(again)} vs {len(stream)} bytes)"), same

    def check_round_trip(self, route: tuple) -> Seen:
        src, dst = self.src, self.dst
        data, src_digest = self.save_stream(src, route)
        reference = data
        if not self.target.has_digest and route != self.stop_copy_route():
            # the source's final state in stop-and-copy form, saved without a reset in between
            reference, _ = self.save_stream(src, self.stop_copy_route(), from_reset=False)
        failed, err, done, got = self.resume(dst, data)
        if failed:
            return seen(f"{len(data)}-byte stream: {failed} {_write_text(err, done, failed == 'stalled')} "
                        f"(GET {v2_name(got)})", False, err=err, state=got, bytes=len(data), failed=failed)
        if got != STOP:
            return seen(f"load ok but GET {v2_name(got)}", False, err=0, state=got, bytes=len(data))
        text, ok = self.compare_loaded(dst, src_digest, reference)
        return seen(f"{len(data)} bytes; {text}", ok, err=0, state=got, bytes=len(data), same=ok)

    def check_resume(self, seg: int) -> Seen:
        stream = self.valid_stream()
        failed, err, done, got = self.resume(self.dst, stream, seg)
        if failed:
            return seen(f"{failed} {_write_text(err, done, failed == 'stalled')} of {len(stream)} "
                        f"(GET {v2_name(got)})", False, err=err, state=got, bytes=done, failed=failed)
        return seen(f"loaded {done} bytes, GET {v2_name(got)}", got == STOP, err=0, state=got, bytes=done)

    def check_resume_twice(self) -> Seen:
        stream = self.valid_stream()
        dev = self.dst
        failed, err, done, got = self.resume(dev, stream)
        if failed:
            return seen(f"first: {failed} {errname(err)}", False, err=err, state=got, failed="first " + failed)
        fd = self.must_set(dev, RESUMING)
        err, done, stalled = self.write_stream(dev, fd, stream)
        if err or stalled:
            return seen(f"second: write {_write_text(err, done, stalled)}", False, err=err, failed="second write")
        err, _ = self.set(dev, STOP)
        got = self.get(dev)
        return seen(("second: load " + errname(err)) if err else "both loaded", not err and got == STOP,
                    err=err, state=got)

    def check_damaged(self, damage: Damage) -> Seen:
        data = self.damaged(damage)
        dev = self.dst
        fd = self.reach(dev, RESUMING)
        before = self.digest(dev)
        err, done, stalled = self.write_stream(dev, fd, data)
        if err or stalled:
            got = self.get(dev)
            obs = f"write refused {_write_text(err, done, stalled)}, GET {v2_name(got)}"
            refused, allowed = True, {RESUMING, ERROR, STOP}
        else:
            err, _ = self.set(dev, STOP)
            got = self.get(dev)
            obs = f"load {errname(err)}, GET {v2_name(got)}"
            refused, allowed = bool(err), model.allowed_after_failure(self.flags, RESUMING, STOP)
        ok = refused and got in allowed
        changed = refused and self.target.has_digest and dev.digest() != before
        if changed:
            obs += "; device state changed (half-loaded)"
            ok = False
        facts = {"err": err if not stalled else None, "state": got, "changed": changed, "bytes": len(data),
                 "stalled": stalled}
        if not ok and not self.target.validates_stream:
            return seen(obs + " (target does not promise to validate streams)", None, **facts)
        return seen(obs, ok, **facts)

    # fault injection -----------------------------------------------------------------------

    def fault_cases(self) -> list[Case]:
        out = []
        for prev, nxt in sorted(model.arcs(self.flags)):
            allowed = model.allowed_after_failure(self.flags, prev, nxt)
            for nth in ((1, 2) if (prev, nxt) in model.OPENS_SESSION else (1,)):
                step = "arc" if nth == 1 else "file alloc"
                out.append(Case("fault-in-arc", v2_name(prev), v2_name(nxt),
                                f"ENOMEM ({step}): fails, no fd, GET {v2_name(prev)}|{v2_name(nxt)}|ERROR, no leak",
                                (v2_name(prev), v2_name(nxt)), expect(False, states=allowed, fd=False),
                                lambda sw, a=prev, b=nxt, n=nth: sw.check_fault(a, b, n)))
        return out

    def check_fault(self, prev: int, nxt: int, nth: int) -> Seen:
        if not self.target.supports_faults:
            return seen("no fault injection on this target", None, status="unsupported")
        stream = self.valid_stream() if (prev, nxt) == model.LOAD_HOP else None
        dev = self.dst
        fd0 = self.reach(dev, prev)
        if stream is not None:
            self.write_valid(dev, fd0, stream)
        index = self.devices.index(dev)
        self.target.arm_fault(index, nth, "nomem")
        err, fd = self.set(dev, nxt)
        fired = self.target.fault_fired(index) if hasattr(self.target, "fault_fired") else True
        got = self.get(dev)
        live = dev.live_files()
        obs = f"{errname(err)}, GET {v2_name(got)}" + (", new fd" if fd >= 0 else "") + \
            (f", {live} live files" if live is not None else "")
        facts = {"err": err, "state": got, "fd": fd >= 0, "live_files": live, "fired": fired}
        if not fired:
            return seen(obs + " (the fault was not reached)", not err and got == nxt, **facts)
        ok = bool(err) and fd < 0 and got in model.allowed_after_failure(self.flags, prev, nxt)
        if ok and got != ERROR and live is not None:
            ok = live == int(got in model.SESSION_STATES)
        return seen(obs, ok, **facts)


# =========================================================================== v1


V1_VALID = sorted(model.V1_VALID)
V1_ZERO = tuple(name for name, rule in model.V1_FIELD_ACCESS.items() if rule == "zero")


V1_SAVE_ROUTES = (("stop-and-copy", (V1_SAVING,)), ("pre-copy", (V1_PRECOPY, V1_SAVING)))
V1_RESUME_SEGMENTS = (("full windows", 0), ("7-byte chunks", 7))


class V1Sweep(Sweep):
    proto = "v1"
    state_name = staticmethod(v1_name)
    initial_state, stop_state, stop_copy_state, resuming_state, loaded_state = (
        V1_RUNNING, V1_STOP, V1_SAVING, V1_RESUMING, V1_RUNNING)

    # -- region helpers ------------------------------------------------------

    def rd(self, dev, name: str) -> tuple[int, int | None]:
        return dev.field_read(*V1_FIELDS[name])

    def wr(self, dev, name: str, value: int) -> int:
        return dev.field_write(*V1_FIELDS[name], value)

    def get(self, dev) -> int:
        err, value = self.rd(dev, "device_state")
        if err or value is None:
            raise Step(f"device_state read failed: {errname(err)}", err=err)
        return value

    def reach(self, dev, state: int) -> None:
        self.reset(dev)
        if state == V1_ERROR:
            return self.enter_error(dev)
        cur = self.get(dev)
        if cur != state:
            err = self.wr(dev, "device_state", state)
            if err:
                raise Unreached(f"{v1_name(cur)} -> {v1_name(state)} refused ({errname(err)})", err=err)
            got = self.get(dev)
            if got != state:
                raise Unreached(f"{v1_name(cur)} -> {v1_name(state)} accepted but reads {v1_name(got)}",
                                err=0, state=got)
        return None

    def move(self, dev, state: int, what: str = "") -> None:
        cur = self.get(dev)
        err = self.wr(dev, "device_state", state)
        if err:
            raise Step(f"{what}write {v1_name(state)} in {v1_name(cur)}: {errname(err)}", err=err, state=cur)

    def rows(self) -> list:
        return V1_VALID + [V1_ERROR]

    def session_rows(self) -> list:
        return [V1_SAVING, V1_PRECOPY, V1_RESUMING]

    def mid_session(self, dev, state: int, handle, stream: bytes | None) -> None:
        if model.v1_saving(state):
            self.save_iteration(dev, bytearray())
        elif stream is not None:
            err, done = self.write_stream(dev, stream[:len(stream) // 2])
            if err:
                raise Unreached(f"writing half a valid stream failed: {errname(err)} after {done} bytes", err=err)

    def enter_error(self, dev) -> None:
        if not self.target.supports_faults:
            raise Unreached("110b needs fault injection, which this target does not support")
        self.target.arm_fault(self.devices.index(dev), 1, "hwerror")
        err = self.wr(dev, "device_state", V1_STOP)
        got = self.get(dev)
        if got != V1_ERROR:
            raise Unreached(f"an injected hardware error on RUNNING -> STOP left {v1_name(got)} ({errname(err)})",
                            err=err, state=got)

    def stop_copy_route(self) -> tuple:
        return (V1_SAVING,)

    def save_iteration(self, dev, data: bytearray, pendings: list | None = None, state: int = V1_SAVING) -> bool:
        """One v1 saving iteration (``harness.runtime.v1_save_iteration``); True when pending_bytes is 0.
        ``pendings`` collects (``state``, the pending_bytes read)."""
        stage, err, pending, offset, size, chunk = v1_save_iteration(dev, V1_FIELDS, True)
        if pendings is not None and pending is not None:
            pendings.append((state, pending))
        if stage == V1_DONE:
            return True
        field = {V1_PENDING: "pending_bytes", V1_OFFSET: "data_offset", V1_SIZE: "data_size"}.get(stage)
        if field is not None:
            raise Step(f"save: {field} read {errname(err)}", err=err)
        limit = dev.region_size
        if offset < V1_HEADER_SIZE or offset + size > limit:
            raise Step(f"save: data window [{offset:#x}, {offset + size:#x}) outside the region "
                       f"[{V1_HEADER_SIZE:#x}, {limit:#x})", window=[offset, offset + size])
        if stage == V1_DATA:
            raise Step(f"save: window read {errname(err)}", err=err)
        data += chunk
        return False

    def save_stream(self, dev, route: tuple, from_reset: bool = True, midway=None) -> tuple[bytes, object]:
        """Save along ``route`` (device_state values; the last must be 010b), then 000b.

        ``from_reset`` False: start from the current state (a re-save must not reset the device).
        ``self.pendings``: (state, pending_bytes) of every iteration. ``midway()`` runs once in
        stop-and-copy, after its first iteration."""
        self.pendings: list[tuple] = []
        if from_reset:
            self.reach(dev, route[0])
        data = bytearray()
        for i, state in enumerate(route):
            if i or not from_reset:
                err = self.wr(dev, "device_state", state)
                if err:
                    raise Step(f"save: write {v1_name(state)}: {errname(err)}", err=err)
            if state == V1_PRECOPY:
                for seed in ACTIVITY_SEEDS:
                    for _ in range(DRAIN_LIMIT):  # pre-copy need not reach 0: the device runs
                        if self.save_iteration(dev, data, self.pendings, V1_PRECOPY):
                            break
                    dev.activity(seed)
        for _ in range(DRAIN_LIMIT):
            done = self.save_iteration(dev, data, self.pendings, route[-1])
            if midway is not None:
                midway()
                midway = None
            if done:
                break
        else:
            raise Endless(f"save: pending_bytes never reaches 0 in SAVING ({len(data)} bytes read, "
                          f"{DRAIN_LIMIT} iterations)", bytes=len(data))
        digest = self.digest(dev)
        err = self.wr(dev, "device_state", V1_STOP)
        if err:
            raise Step(f"save: SAVING -> STOP: {errname(err)}", err=err)
        if not data:
            raise Step("save: the stream is empty", bytes=0)
        return bytes(data), digest

    def write_stream(self, dev, data: bytes, seg: int = 0) -> tuple[int, int]:
        """The v1 resuming step for each piece of ``segments(data, seg)`` (``harness.runtime.v1_write_chunk``):
        (errno, bytes accepted)."""
        done = 0
        for piece in segments(data, seg):
            while piece:
                err, offset, taken = v1_write_chunk(dev, V1_FIELDS, piece, V1_HEADER_SIZE)
                if err:
                    return err, done
                if not taken:
                    raise Step(f"resume: data_offset {offset:#x} outside the region", window=[offset, offset])
                done += taken
                piece = piece[taken:]
        return 0, done

    def resume(self, dev, data: bytes, seg: int = 0, from_reset: bool = True) -> tuple[str, int, int, int]:
        """RESUMING (from reset, or ``from_reset`` False: one write from where ``dev`` is), the v1
        resuming steps for ``data``, clear RESUMING: (what failed or "", errno, bytes written, device_state)."""
        if from_reset:
            self.reach(dev, V1_RESUMING)
        else:
            self.move(dev, V1_RESUMING, "resume: ")
        err, done = self.write_stream(dev, data, seg)
        if err:
            return "write", err, done, self.get(dev)
        err = self.wr(dev, "device_state", V1_RUNNING)
        return ("load" if err else ""), err, done, self.get(dev)

    def compare_loaded(self, dev, reference_digest, stream: bytes) -> tuple[str, bool]:
        """After a load: the destination equals the source (digest, else a stop-and-copy re-save)."""
        if self.target.has_digest:
            same = dev.digest() == reference_digest
            return ("same digest" if same else "digest differs from the source"), same
        self.move(dev, V1_STOP, "re-save: ")  # stop before re-saving (running may change it)
        again, _ = self.save_stream(dev, self.stop_copy_route(), from_reset=False)
        same = again == stream
        return ("re-saved stream identical" if same else
                f"re-saved stream differs ({len(again)} vs {len(stream)} bytes)"), same

    # -- resume sessions --------------------------------------------------------------

    def open_resume(self, dev) -> None:
        self.reach(dev, V1_RESUMING)

    def write_piece(self, dev, handle, piece: bytes) -> tuple[int, bytes | None]:
        err, done = self.write_stream(dev, piece)
        return err, piece[:done]

    def write_oversized(self, dev, handle, piece: bytes) -> tuple[int, bytes | None]:
        """The window filled with the start of ``piece``, then a data_size past the region's end."""
        err, offset = self.rd(dev, "data_offset")
        if err or offset is None:
            return err or model.EINVAL, b""
        if not V1_HEADER_SIZE <= offset < dev.region_size:
            raise Step(f"resume: data_offset {offset:#x} outside the region", window=[offset, offset])
        room = dev.region_size - offset
        err, _ = dev.region_write(offset, piece[:room])
        if err:
            return err, b""
        err = self.wr(dev, "data_size", room + 1)
        return err, (b"" if err else None)  # taken: bytes from past the region, unknown to the sweep

    def finish_resume(self, dev) -> int:
        return self.wr(dev, "device_state", V1_RUNNING)

    def after_load_failure(self) -> frozenset:
        return model.v1_states_after_failure(V1_RESUMING)

    # -- cases ----------------------------------------------------------------

    def cases(self) -> list[Case]:
        rows = self.rows()
        run = v1_name(model.V1_RESET_STATE)
        cases = [self.save_source_case(v1_name, V1_STOP)]
        cases += [Case("reset", v1_name(s), run, "reset succeeds; device_state reads RUNNING (001b)",
                       (v1_name(s), run), expect(True, states=[model.V1_RESET_STATE]),
                       lambda sw, s=s: sw.check_reset(s)) for s in rows]
        cases += self.reopen_cases()
        cases += [Case("reach", run, v1_name(s), f"write {v1_name(s)} from RUNNING", (run, v1_name(s)),
                       expect(True, states=[s]), lambda sw, s=s: sw.check_reach(s)) for s in V1_VALID]
        cases += [self.arc_case(f, t) for f in rows for t in range(8)]
        cases += [Case("readonly-field", v1_name(s), None, f"a write to {name} does not change it",
                       (v1_name(s),), expect(None, unchanged=True, field=name),
                       lambda sw, s=s, n=name: sw.check_readonly(s, n))
                  for s in V1_VALID for name in V1_FIELDS if model.v1_read_only(name, s)]
        cases += [Case("reserved", v1_name(s), None, f"{name} reads 0, also after a write",
                       (v1_name(s),), expect(None, value=0, field=name),
                       lambda sw, s=s, n=name: sw.check_reserved(s, n))
                  for s in V1_VALID for name in V1_ZERO]
        cases += [Case("stopped-frozen", v1_name(s), None, "device activity changes nothing while stopped",
                       (v1_name(s),), expect(None, unchanged=True), lambda sw, s=s: sw.check_frozen(s))
                  for s in (V1_STOP, V1_SAVING, V1_RESUMING)]
        cases += [Case("save-sequence", v1_name(route[0]), v1_name(V1_STOP),
                       f"{label}: the saving loop reaches pending_bytes 0, window in region, pending_bytes never "
                       "grows in stop-and-copy",
                       tuple(v1_name(s) for s in (*route, V1_STOP)), expect(True), lambda sw, r=route: sw.check_save(r))
                  for label, route in V1_SAVE_ROUTES]
        cases += [Case("round-trip", v1_name(route[0]), run, f"{label} save, resume on the other device: same state",
                       tuple(v1_name(s) for s in (*route, V1_STOP, V1_RESUMING, V1_RUNNING)),
                       expect(True, states=[V1_RUNNING], same=True), lambda sw, r=route: sw.check_round_trip(r))
                  for label, route in V1_SAVE_ROUTES]
        cases += [Case("resume-segmented", v1_name(V1_RESUMING), run, f"a valid stream in {label} loads",
                       (v1_name(V1_RESUMING), run), expect(True, states=[V1_RUNNING], seg=seg),
                       lambda sw, p=seg: sw.check_resume(p))
                  for label, seg in V1_RESUME_SEGMENTS]
        cases.append(Case("resume-twice", v1_name(V1_RESUMING), run, "two resume sessions in a row both load",
                          (v1_name(V1_RESUMING), run, v1_name(V1_RESUMING), run), expect(True, states=[V1_RUNNING]),
                          lambda sw: sw.check_resume_twice()))
        after = model.v1_states_after_failure(V1_RESUMING)
        cases += [Case("damaged-stream", v1_name(V1_RESUMING), run, f"{d.label}: refused, device unchanged",
                       (v1_name(V1_RESUMING), run), expect(False, states=after, unchanged=True, damage=d.kind),
                       lambda sw, d=d: sw.check_damaged(d))
                  for d in DAMAGES]
        cases += self.session_cases()
        cases += self.register_cases()
        cases.append(Case("error-state", run, v1_name(V1_ERROR), "injected hardware error: reads 110b",
                          (run, v1_name(V1_ERROR)), expect(False, states=[V1_ERROR]),
                          lambda sw: sw.check_error_entry()))
        return cases

    def check_reset(self, frm: int) -> Seen:
        dev = self.dst
        self.reach(dev, frm)
        err = dev.reset()
        got = self.get(dev)
        return seen(f"reset {errname(err)}; reads {v1_name(got)}", err == 0 and got == model.V1_RESET_STATE,
                    err=err, state=got)

    def check_reach(self, state: int) -> Seen:
        dev = self.dst
        try:
            self.reach(dev, state)
        except Unreached as e:
            return seen(str(e), False, **e.facts)
        got = self.get(dev)
        return seen(f"reads {v1_name(got)}", got == state, err=0, state=got)

    def arc_case(self, frm: int, to: int) -> Case:
        if model.v1_write_allowed(frm, to):
            text, path = f"ok -> {v1_name(to)}", (v1_name(frm), v1_name(to))
            exp = expect(True, states=[to])
        else:
            after = model.v1_states_after_failure(frm)
            text, path = f"refused, reads {' or '.join(v1_name(s) for s in sorted(after))}", ()
            exp = expect(False, states=after)
        return Case("arc", v1_name(frm), v1_name(to), text, path, exp, lambda sw: sw.check_arc(frm, to))

    def check_arc(self, frm: int, to: int) -> Seen:
        allowed = model.v1_write_allowed(frm, to)
        stream = self.valid_stream() if allowed and model.v1_is_load(frm, to) else None
        dev = self.dst
        self.reach(dev, frm)
        if stream is not None:
            err, done = self.write_stream(dev, stream)
            if err:
                raise Unreached(f"writing a valid stream failed: {errname(err)} after {done} bytes", err=err)
        err = self.wr(dev, "device_state", to)
        got = self.get(dev)
        obs = f"{'ok' if not err else errname(err)}, reads {v1_name(got)}"
        if allowed:
            return seen(obs, not err and got == to, err=err, state=got)
        return seen(obs, bool(err) and got in model.v1_states_after_failure(frm), err=err, state=got)

    def check_readonly(self, state: int, name: str) -> Seen:
        dev = self.dst
        self.reach(dev, state)
        err, before = self.rd(dev, name)
        if err:
            return seen(f"read {errname(err)}", False, err=err)
        werr = self.wr(dev, name, (before or 0) + 0x1000)
        err, after = self.rd(dev, name)
        if after is None:
            return seen(f"re-read {errname(err)}", False, err=werr, read_err=err)
        obs = f"{before:#x}, write {'accepted' if not werr else errname(werr)}, then {after:#x}"
        return seen(obs, not err and after == before, err=werr, before=before, after=after,
                    changed=after != before)

    def check_reserved(self, state: int, name: str) -> Seen:
        dev = self.dst
        self.reach(dev, state)
        err, first = self.rd(dev, name)
        werr = self.wr(dev, name, 0xDEADBEEF)
        err2, second = self.rd(dev, name)
        obs = f"{errname(err) if err else hex(first)}, after a write {errname(err2) if err2 else hex(second)}"
        return seen(obs, not err and not err2 and first == 0 and second == 0, err=werr, before=first, after=second)

    def check_frozen(self, state: int) -> Seen:
        if not self.target.has_digest:
            return seen("no digest on this target", None, status="unsupported")
        stream = self.valid_stream() if state == V1_RESUMING else None
        dev = self.dst
        self.reach(dev, state)
        before = dev.digest()
        self.activity(dev)
        if stream is not None:
            self.write_stream(dev, stream)
        changed = dev.digest() != before
        return seen("digest changed" if changed else "unchanged", not changed, changed=changed)

    def check_save(self, route: tuple) -> Seen:
        data, _ = self.save_stream(self.dst, route)
        pendings = self.pendings
        # consecutive reads in one state where the model says pending_bytes only shrinks
        grew = next((f"{a:#x} -> {b:#x} in {v1_name(s)}" for (s, a), (t, b) in zip(pendings, pendings[1:],
                                                                                   strict=False)
                     if s == t and b > a and not model.v1_pending_may_grow(s)), "")
        judged = [p for s, p in pendings if not model.v1_pending_may_grow(s)]
        if grew:
            return seen(f"{len(data)} bytes; pending_bytes grew ({grew})", False, err=0, bytes=len(data),
                        pending=judged)
        return seen(f"{len(data)} bytes, pending_bytes reached 0", True, err=0, bytes=len(data), pending=judged)

    def check_round_trip(self, route: tuple) -> Seen:
        src, dst = self.src, self.dst
        data, src_digest = self.save_stream(src, route)
        reference = data
        if not self.target.has_digest and route != self.stop_copy_route():
            reference, _ = self.save_stream(src, self.stop_copy_route(), from_reset=False)
        failed, err, done, got = self.resume(dst, data)
        if failed:
            return seen(f"{len(data)}-byte stream: {failed} {errname(err)} (reads {v1_name(got)})", False,
                        err=err, state=got, bytes=len(data), failed=failed)
        if got != V1_RUNNING:
            return seen(f"load ok but reads {v1_name(got)}", False, err=0, state=got, bytes=len(data))
        if self.target.has_digest:
            same = dst.digest() == src_digest
            return seen(f"{len(data)} bytes; " + ("same digest" if same else "digest differs from the source"),
                        same, err=0, state=got, bytes=len(data), same=same)
        err = self.wr(dst, "device_state", V1_STOP)  # stop before re-saving (running may change it)
        if err:
            return seen(f"{len(data)} bytes; RUNNING -> STOP {errname(err)}", False, err=err, state=got)
        again, _ = self.save_stream(dst, self.stop_copy_route(), from_reset=False)
        same = again == reference
        return seen(f"{len(data)} bytes; re-saved stream " + ("identical" if same else "differs"), same,
                    err=0, state=got, bytes=len(data), same=same)

    def check_resume(self, seg: int) -> Seen:
        stream = self.valid_stream()
        failed, err, done, got = self.resume(self.dst, stream, seg)
        if failed:
            return seen(f"{failed} {errname(err)} after {done} of {len(stream)} bytes (reads {v1_name(got)})",
                        False, err=err, state=got, bytes=done, failed=failed)
        return seen(f"loaded {done} bytes, reads {v1_name(got)}", got == V1_RUNNING, err=0, state=got, bytes=done)

    def check_resume_twice(self) -> Seen:
        stream = self.valid_stream()
        dev = self.dst
        failed, err, done, got = self.resume(dev, stream)
        if failed:
            return seen(f"first: {failed} {errname(err)}", False, err=err, state=got, failed="first " + failed)
        err = self.wr(dev, "device_state", V1_RESUMING)
        if err:
            return seen(f"second: RUNNING -> RESUMING {errname(err)}", False, err=err, failed="second start")
        err, done = self.write_stream(dev, stream)
        if err:
            return seen(f"second: write {errname(err)}", False, err=err, failed="second write")
        err = self.wr(dev, "device_state", V1_RUNNING)
        got = self.get(dev)
        return seen(("second: load " + errname(err)) if err else "both loaded", not err and got == V1_RUNNING,
                    err=err, state=got)

    def check_damaged(self, damage: Damage) -> Seen:
        data = self.damaged(damage)
        dev = self.dst
        self.reach(dev, V1_RESUMING)
        before = self.digest(dev)
        err, done = self.write_stream(dev, data)
        if err:
            got = self.get(dev)
            obs, refused = f"write refused {errname(err)} after {done} bytes, reads {v1_name(got)}", True
        else:
            err = self.wr(dev, "device_state", V1_RUNNING)
            got = self.get(dev)
            obs, refused = f"clearing RESUMING {errname(err)}, reads {v1_name(got)}", bool(err)
        ok = refused and got in model.v1_states_after_failure(V1_RESUMING)
        changed = refused and self.target.has_digest and dev.digest() != before
        if changed:
            obs += "; device state changed (half-loaded)"
            ok = False
        facts = {"err": err, "state": got, "changed": changed, "bytes": len(data)}
        if not ok and not self.target.validates_stream:
            return seen(obs + " (target does not promise to validate streams)", None, **facts)
        return seen(obs, ok, **facts)

    def check_error_entry(self) -> Seen:
        if not self.target.supports_faults:
            return seen("no fault injection on this target", None, status="unsupported")
        dev = self.dst
        self.reset(dev)
        self.target.arm_fault(self.devices.index(dev), 1, "hwerror")
        err = self.wr(dev, "device_state", V1_STOP)
        got = self.get(dev)
        return seen(f"write {errname(err)}, reads {v1_name(got)}", bool(err) and got == V1_ERROR, err=err, state=got)


# =========================================================================== entry points


def sweep(spec, target=None, open_fn=None, on_abort=None) -> dict:
    """Run the conformance sweep; returns the JSON-able result (see the module doc).

    ``spec``: a target spec (text or ``TargetSpec``); ``target``: an already open
    target (else ``open_fn(spec)``, default ``fuzz.targets.open_target``, which
    is also how a target is re-opened after a failed reset); ``on_abort(result)``:
    called with the partial result if a real device hangs in the kernel (the
    process then exits 1)."""
    if isinstance(spec, str):
        spec = parse_target(spec)
    open_fn = open_fn or open_target
    if target is None:
        target = open_fn(spec)
    started = time.monotonic()
    runner = (V2Sweep if target.proto == "v2" else V1Sweep)(spec, target, open_fn)
    if on_abort is not None:
        runner.on_abort = lambda sw: on_abort(_result(spec, sw, started))
    try:
        runner.run()
    finally:
        try:
            runner.target.close()
        except Exception:  # noqa: BLE001
            pass
    return _result(spec, runner, started)


def _result(spec, runner: Sweep, started: float) -> dict:
    results = runner.results
    counts = {v: sum(1 for r in results if r["verdict"] == v) for v in ("pass", "fail", "info")}
    out = {
        "target": spec.text(),
        "protocol": runner.proto,
        "flags": runner.flags,
        "checks": results,
        "summary": counts,
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    if runner.aborted:
        out["aborted"] = runner.aborted
    return out


def failures(result: dict) -> list[dict]:
    return [c for c in result["checks"] if c["verdict"] == "fail"]


_ORDER = {"fail": 0, "info": 1, "pass": 2}
COLUMNS = ("verdict", "check", "from", "to", "expected", "observed")


def _sorted(checks):
    return sorted(checks, key=lambda c: _ORDER[c["verdict"]])  # stable: sweep order within a verdict


def _headline(result: dict) -> str:
    n = result["summary"]
    total = len(result["checks"])
    proto = result["protocol"]
    flags = f", flags {result['flags']:#x} ({model.flag_names(result['flags'])})" if proto == "v2" else ""
    verdict = "CONFORMS" if not n["fail"] else f"DOES NOT CONFORM: {n['fail']} of {total} checks fail"
    text = (f"{result['target']}  protocol {proto}{flags}\n"
            f"{verdict}  ({n['pass']} pass, {n['fail']} fail, {n['info']} info; {result['elapsed_s']:.2f} s)")
    if result.get("aborted"):
        text += f"\nINCOMPLETE: {result['aborted']}"
    return text


def format_table(result: dict, color: bool = False) -> str:
    caps = (7, 22, 24, 24, 80, 0)

    def clip(text: str, cap: int) -> str:
        return text if not cap or len(text) <= cap else text[:cap - 1] + "\u2026"

    rows = [[clip(v, cap) for v, cap in zip(
        (("FAIL" if c["verdict"] == "fail" else c["verdict"]), c["check"], c["from"] or "-", c["to"] or "-",
         c["expected"], c["observed"]), caps, strict=True)] for c in _sorted(result["checks"])]
    head = [h.upper() for h in COLUMNS]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(caps))]
    lines = [_headline(result), ""]

    def fmt(r):
        return "  ".join(v.ljust(w) for v, w in zip(r[:-1], widths[:-1], strict=True)) + "  " + r[-1]

    lines.append(fmt(head))
    for r in rows:
        line = fmt(r)
        if r[0] == "FAIL":
            line = f"\x1b[1;31m{line}\x1b[0m" if color else line
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def format_md(result: dict) -> str:
    def cell(v):
        return (v or "-").replace("|", "\\|")

    n = result["summary"]
    verdict = "**conforms**" if not n["fail"] else f"**does not conform** ({n['fail']} failing checks)"
    proto = result["protocol"]
    flags = f", flags `{result['flags']:#x}` ({model.flag_names(result['flags'])})" if proto == "v2" else ""
    lines = [f"# Conformance: `{result['target']}`", "",
             f"Protocol {proto}{flags}: {verdict}; {n['pass']} pass, {n['fail']} fail, {n['info']} info.", "",
             "| verdict | check | from | to | expected | observed | path |",
             "|---|---|---|---|---|---|---|"]
    for c in _sorted(result["checks"]):
        v = "**FAIL**" if c["verdict"] == "fail" else c["verdict"]
        lines.append(f"| {v} | {cell(c['check'])} | {cell(c['from'])} | {cell(c['to'])} | {cell(c['expected'])} "
                     f"| {cell(c['observed'])} | {cell(' → '.join(c['path']))} |")
    return "\n".join(lines) + "\n"


def format_result(result: dict, fmt: str, color: bool = False) -> str:
    if fmt == "json":
        return json.dumps(result, indent=1) + "\n"
    if fmt == "md":
        return format_md(result)
    if fmt == "html":
        return conform_html(result)
    return format_table(result, color)


# --------------------------------------------------------------------------- CLI


def cmd_conform(args) -> int:
    """``migfuzz conform`` (arguments declared in ``fuzz.cli``). A bad target spec or a missing
    opt-in raise TargetError, a bad --out UsageError, an unavailable target TargetUnavailable:
    the CLI turns them into exit 2, 2 and 3."""
    spec = parse_target(args.target)
    require_opt_in(spec, args.i_know_this_resets_the_device, "the sweep runs hundreds of cases on it")
    out = output_file(args.out) if args.out else None
    color = args.format == "table" and out is None and sys.stdout.isatty()

    def emit(result: dict) -> None:
        text = format_result(result, args.format, color=color)
        if out is not None:
            write_output(out, text)
            print(_headline(result).splitlines()[1] + f"  -> {out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    result = sweep(spec, on_abort=emit)
    emit(result)
    return EXIT_FINDING if failures(result) else EXIT_OK
