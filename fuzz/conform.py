"""``migfuzz conform``: a deterministic conformance sweep of one target.

Where the fuzzer searches, the sweep enumerates: every (from, to) request of
the state machine, every data_fd rule, the save/resume round trip, damaged
streams, VFIO_DEVICE_FEATURE framing (v2); every device_state value from every
state, the read-only and reserved fields, the §1.5/§1.6 sequences and the
error state (v1).  It answers "does this device follow the protocol at all?"
in well under a second on the simulator.

Every expectation comes from :mod:`fuzz.model`; the sweep only drives the
device through the :mod:`harness.base` API plus the target's
``has_digest`` / ``validates_stream`` / ``supports_faults`` flags, so a real
device is swept exactly like the simulator.

How it is built:

* the checks are data: :data:`V2_FD_RULES`, :data:`FEATURE_CASES`,
  :data:`DAMAGES`, :data:`V2_SAVE_ROUTES`, ... and :class:`Case` objects built
  from them (one case = one row of the report);
* every case starts from a fresh device (``target.fresh()`` then
  ``dev.reset()``) and drives it to its starting state one model arc at a time
  (:meth:`V2Sweep.reach`), so a case never depends on the one before;
* a case that raises is a failed row, never a failed sweep: a simulator hang
  (``DeviceHang``) or a ``TimeoutError`` is recorded as "hang", any other
  exception with its text; the devices are then reset (the target re-opened if
  a reset fails) and the sweep carries on.

Verdicts: ``pass`` and ``fail`` (exit 1 if any), and ``info`` for what was
observed but is not judged: a case that could not reach its starting state
(the failing step is its own ``reach`` row), a damaged stream accepted by a
target that does not promise to validate streams, a rule that needs fault
injection or a digest the target does not have.

Also registers ``migfuzz report-html`` (campaign charts, :mod:`fuzz.htmlreport`).

Nothing here imports the simulator or the executor at load time: the CLI
imports this module on startup, and the fuzzing engine must import the
simulator later, under instrumentation.
"""
from __future__ import annotations

import errno
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from harness.uapi import (
    FEATURE_GET,
    FEATURE_MIG_DATA_SIZE,
    FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION,
    FEATURE_PROBE,
    FEATURE_SET,
    V1_FIELDS,
    V1_STATE_NAMES,
    MigFlag,
    MigState,
)

from . import model

FORMATS = ("table", "json", "md", "html")
DRAIN_LIMIT = 256  # reads before "the stream never ends"
DRAIN_CHUNK = 4096
V1_ITER_LIMIT = 256  # §1.5 iterations before "pending_bytes never reaches 0"
OUT_OF_RANGE = (8, 0xFFFFFFFF)
ACTIVITY_SEEDS = (0x1234, 0x5a5a5, 0x9e37)

ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P = range(8)
V1_STOP, V1_RUN, V1_SAVE, V1_PRECOPY, V1_RESUME, V1_ERR = 0, 1, 2, 3, 4, 6


def errname(err: int) -> str:
    return errno.errorcode.get(err, str(err)) if err else "success"


def errnames(errs) -> str:
    return "|".join(errname(e) for e in sorted(errs))


def v2name(state: int | None) -> str | None:
    if state is None:
        return None
    if 0 <= state < 8:
        return MigState(state).name
    return str(state) if state < 256 else hex(state)


def v1name(state: int | None) -> str | None:
    return None if state is None else V1_STATE_NAMES.get(state, hex(state))


def flag_names(flags: int) -> str:
    names = [f.name for f in MigFlag if flags & f]
    return "|".join(names) if names else "none"


# --------------------------------------------------------------------------- records


class Unreached(Exception):
    """A case could not reach its starting point (recorded as info)."""


class Step(Exception):
    """A step of a multi-step check failed (recorded as a fail with this text)."""


class ResetFailed(Step):
    """VFIO_DEVICE_RESET failed: a fail, and the target is re-opened before the next case."""


class Case(NamedTuple):
    """One row of the report: what is checked and the function that checks it.

    ``run(sweep)`` returns ``(observed, ok)``; ok True/False = pass/fail,
    None = info."""

    check: str
    frm: str | None
    to: str | None
    expected: str
    path: tuple
    run: Callable


def record(case: Case, observed: str, verdict: str) -> dict:
    return {"check": case.check, "from": case.frm, "to": case.to, "expected": case.expected,
            "observed": observed, "path": list(case.path), "verdict": verdict}


def _hang_types() -> tuple:
    types: list = [TimeoutError]
    try:
        from harness.sim.core import DeviceHang  # imported here, never at module load

        types.append(DeviceHang)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


# --------------------------------------------------------------------------- the sweep runner


class Sweep:
    """Shared machinery: run cases in order, isolate them, recover from anything."""

    proto = ""

    def __init__(self, spec, target, open_fn=None):
        self.spec = spec
        self.target = target
        self.open_fn = open_fn
        self.results: list[dict] = []
        self.hangs = _hang_types()
        self._stream: bytes | None = None
        self._stream_error = ""
        self.lost = ""  # why the target could not be re-opened
        self.current: Case | None = None
        self.aborted = ""
        self.on_abort = None  # callback(sweep) when a kernel hang stops the sweep
        self.reopened = 0
        self.opened: list[tuple] = []  # (device, fd) to close after the current case

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
            raise ResetFailed(f"reset failed: {errname(err)}")

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
                self.results.append(record(case, f"not run: the target was lost ({self.lost})", "info"))
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
            import os

            if self.current is not None:
                self.results.append(record(self.current, f"hang: {what} did not return within {seconds:.1f} s",
                                           "fail"))
            self.aborted = f"stopped after a hang in {what}: a call stuck in the kernel cannot be interrupted"
            try:
                if self.on_abort is not None:
                    self.on_abort(self)
            finally:
                os._exit(1)

        self.target.on_hang = on_hang

    def run_case(self, case: Case) -> dict:
        self.opened: list[tuple] = []  # (device, fd) to close after the case
        trouble = False
        try:
            self.fresh()
            observed, ok = case.run(self)
            verdict = "info" if ok is None else ("pass" if ok else "fail")
        except Unreached as e:
            observed, verdict = f"not reached: {e}", "info"
        except ResetFailed as e:
            observed, verdict, trouble = str(e), "fail", True
        except Step as e:
            observed, verdict = str(e), "fail"
        except self.hangs as e:
            observed, verdict, trouble = f"hang: {e}", "fail", True
        except Exception as e:  # noqa: BLE001 - anything escaping the device is a failed check
            observed, verdict, trouble = f"exception {type(e).__name__}: {e}", "fail", True
        self.cleanup(trouble)
        return record(case, observed, verdict)

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
        except self.hangs as e:
            self._stream_error = f"hang: {e}"
            raise
        except Exception as e:
            self._stream_error = str(e) if isinstance(e, (Step, Unreached)) else f"{type(e).__name__}: {e}"
            raise
        finally:
            self.fresh()
        return self._stream

    def check_save_source(self):
        data = self.capture_stream()
        return f"{len(data)} bytes", True

    def save_source_case(self, name, stop: int) -> Case:
        route = tuple(name(s) for s in self.stop_copy_route())
        return Case("save-source", route[-1], name(stop),
                    "a stop-and-copy save of the source completes",
                    route + (name(stop),), lambda sw: sw.check_save_source())


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
    # session end (§2.8, §8.5)
    FdRule("fd-after-session-end", (STOP, STOP_COPY), STOP, "read", _AFTER_END),
    FdRule("fd-after-session-end", (RUNNING, PRE_COPY), RUNNING, "read", _AFTER_END),
    FdRule("fd-after-session-end", (RUNNING_P2P, PRE_COPY_P2P), RUNNING_P2P, "read", _AFTER_END),
    FdRule("fd-after-session-end", (STOP, RESUMING), STOP, "write", _AFTER_END),
    # reset ends every session
    FdRule("fd-after-reset", (STOP, STOP_COPY), "reset", "read", _AFTER_END),
    FdRule("fd-after-reset", (RUNNING, PRE_COPY), "reset", "read", _AFTER_END),
    FdRule("fd-after-reset", (RUNNING_P2P, PRE_COPY_P2P), "reset", "read", _AFTER_END),
    FdRule("fd-after-reset", (STOP, RESUMING), "reset", "write", _AFTER_END),
    # direction and seeking (§8.8)
    FdRule("fd-wrong-direction", (STOP, STOP_COPY), None, "write", model.FD_WRITE_ON_SAVE_FD),
    FdRule("fd-wrong-direction", (RUNNING, PRE_COPY), None, "write", model.FD_WRITE_ON_SAVE_FD),
    FdRule("fd-wrong-direction", (STOP, RESUMING), None, "read", model.FD_READ_ON_RESUME_FD),
    FdRule("fd-seek", (STOP, STOP_COPY), None, "seek", model.FD_SEEK),
    FdRule("fd-seek", (RUNNING, PRE_COPY), None, "seek", model.FD_SEEK),
    FdRule("fd-seek", (STOP, RESUMING), None, "seek", model.FD_SEEK),
    # moves inside the saving group keep the fd (§8.4)
    FdRule("fd-kept-in-group", (RUNNING, PRE_COPY, STOP_COPY), None, "read", None),
    FdRule("fd-kept-in-group", (RUNNING, PRE_COPY, PRE_COPY_P2P), None, "read", None),
    FdRule("fd-kept-in-group", (RUNNING_P2P, PRE_COPY_P2P, STOP_COPY), None, "read", None),
    FdRule("fd-kept-in-group", (RUNNING_P2P, PRE_COPY_P2P, PRE_COPY), None, "read", None),
    # closing is always safe
    FdRule("fd-close", (STOP, STOP_COPY), STOP, "close", None),
    FdRule("fd-close", (STOP, STOP_COPY), None, "close", None),
    FdRule("fd-close", (STOP, RESUMING), "reset", "close", None),
    # end of stream (§8.9)
    FdRule("stop-copy-eof", (STOP, STOP_COPY), None, "drain", None),
    FdRule("stop-copy-eof", (RUNNING, PRE_COPY, STOP_COPY), None, "drain", None),
    FdRule("precopy-eof", (RUNNING, PRE_COPY), None, "drain-precopy", None),
    FdRule("precopy-eof", (RUNNING_P2P, PRE_COPY_P2P), None, "drain-precopy", None),
    # VFIO_MIG_GET_PRECOPY_INFO only in PRE_COPY* on a live saving fd (§2.8, §8.10)
    FdRule("precopy-info", (RUNNING, PRE_COPY), None, "precopy", None),
    FdRule("precopy-info", (RUNNING_P2P, PRE_COPY_P2P), None, "precopy", None),
    FdRule("precopy-info", (STOP, STOP_COPY), None, "precopy", frozenset({model.EINVAL})),
    FdRule("precopy-info", (RUNNING, PRE_COPY, STOP_COPY), None, "precopy", frozenset({model.EINVAL})),
    FdRule("precopy-info", (RUNNING, PRE_COPY), RUNNING, "precopy", _PRECOPY_OUTSIDE),
    FdRule("precopy-info", (STOP, RESUMING), None, "precopy", frozenset({model.ENOTTY})),
    FdRule("precopy-info-covers", (RUNNING, PRE_COPY), None, "precopy-cover", None),
    FdRule("precopy-info-covers", (RUNNING_P2P, PRE_COPY_P2P), None, "precopy-cover", None),
)

IO_TEXT = {
    "read": "read", "write": "write", "seek": "lseek", "close": "close", "precopy": "PRECOPY_INFO",
    "drain": "reads end with 0, and 0 again", "drain-precopy": "reads reach a temporary end",
    "precopy-cover": "PRECOPY_INFO initial+dirty covers what is readable",
}

# VFIO_DEVICE_FEATURE framing (§2.2): (label, flags, argsz); the expected errno is model.feature_errno.
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

# Damaged streams (§8.12): name -> function of a valid stream.
DAMAGES = (
    ("empty", lambda s: b""),
    ("truncated by 1 byte", lambda s: s[:-1]),
    ("truncated to half", lambda s: s[:len(s) // 2]),
    ("bit flipped mid-stream", lambda s: s[:len(s) // 2] + bytes([s[len(s) // 2] ^ 0x10]) + s[len(s) // 2 + 1:]),
    ("bit flipped in the header", lambda s: bytes([s[0] ^ 0x01]) + s[1:]),
    ("extended by 16 bytes", lambda s: s + bytes(range(16))),
    ("stream sent twice", lambda s: s + s),
)

# Save routes for the round trip: route[0] from reset, then one SET each.
V2_SAVE_ROUTES = (
    ("stop-copy", (STOP, STOP_COPY)),
    ("pre-copy", (RUNNING, PRE_COPY, STOP_COPY)),
    ("pre-copy-p2p", (RUNNING_P2P, PRE_COPY_P2P, STOP_COPY)),
)
# How a resume writes the stream: name -> piece size (0 = one write).
RESUME_SEGMENTS = (("one write", 0), ("7-byte writes", 7), ("1-byte writes", 1))


class V2Sweep(Sweep):
    proto = "v2"

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
        if err == 0 and len(out) >= 8:
            self.flags_read = int.from_bytes(out[:8], "little")
        else:
            self.flags_note = self.flags_note or f"GET MIGRATION failed: {errname(err)}"
            self.flags_read = None
        flags = self.flags_read if self.flags_read is not None else getattr(dev, "flags", self.target.flags)
        return (flags & 0x7) | model.SC

    def close_fd(self, dev, fd) -> None:
        dev.close(fd)

    def supported(self, *states) -> bool:
        return all(model.supported(self.flags, s) for s in states if s != ERROR)

    def get(self, dev) -> int:
        err, state = dev.get_state()
        if err:
            raise Step(f"GET MIG_DEVICE_STATE failed: {errname(err)}")
        return state

    def set(self, dev, state: int) -> tuple[int, int]:
        err, fd = dev.set_state(state)
        self.track(dev, fd)
        return err, fd

    def must_set(self, dev, state: int, what: str = "") -> int:
        cur = self.get(dev)
        err, fd = self.set(dev, state)
        if err:
            raise Step(f"{what}SET {v2name(state)} from {v2name(cur)}: {errname(err)}")
        return fd

    def reach(self, dev, state: int) -> int:
        """Reset-fresh ``dev`` to ``state`` one model arc at a time; returns the last data_fd or -1."""
        self.reset(dev)
        if state == ERROR:
            return self.enter_error(dev)
        cur = self.get(dev)
        hops = model.path(self.flags, cur, state)
        if hops is None:
            raise Unreached(f"no path from {v2name(cur)} to {v2name(state)}")
        fd = -1
        for prev, nxt in model.hop_pairs(cur, hops):
            err, new_fd = self.set(dev, nxt)
            if err:
                raise Unreached(f"{v2name(prev)} -> {v2name(nxt)} refused ({errname(err)})")
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
            raise Unreached(f"no arc out of {v2name(cur)}")
        self.target.arm_fault(self.devices.index(dev), 1, "hwerror")
        tried = []
        for _, nxt in out:
            err, _ = self.set(dev, nxt)
            got = self.get(dev)
            if got == ERROR:
                return -1
            tried.append(f"{v2name(cur)} -> {v2name(nxt)}: {errname(err)}, GET {v2name(got)}")
            if not err:
                break
        raise Unreached("an injected hardware error did not lead to ERROR (" + "; ".join(tried) + ")")

    def drain(self, dev, fd: int) -> tuple[bytes, int]:
        """Read until the (temporary) end of the stream: (bytes, 0 at EOF, else the errno, e.g. ENOMSG)."""
        out = bytearray()
        for _ in range(DRAIN_LIMIT):
            err, data = dev.read(fd, DRAIN_CHUNK)
            if err:
                return bytes(out), err
            if not data:
                return bytes(out), 0
            out += data
        raise Step(f"hang: the stream does not end after {len(out)} bytes ({DRAIN_LIMIT} reads)")

    def write_all(self, dev, fd: int, data: bytes, piece: int = 0) -> tuple[int, int]:
        """Write ``data`` in pieces of ``piece`` bytes (0: one write): (errno, bytes accepted)."""
        pieces = [data] if not piece else [data[i:i + piece] for i in range(0, len(data), piece)]
        done = 0
        for p in pieces:
            while p:
                err, n = dev.write(fd, p)
                if err:
                    return err, done
                if n <= 0:
                    return errno.EIO, done
                done += n
                p = p[n:]
        return 0, done

    def stop_copy_route(self) -> tuple:
        return (STOP, STOP_COPY)

    def save_stream(self, dev, route: tuple, from_reset: bool = True) -> tuple[bytes, object]:
        """Save ``dev`` along ``route``; returns (stream, digest at the end of the stream).

        ``from_reset`` False: ``dev`` is already in ``route[0]`` (a re-save must not reset it)."""
        if from_reset:
            fd = self.reach(dev, route[0])
        elif self.get(dev) != route[0]:
            raise Step(f"save: device not in {v2name(route[0])}")
        else:
            fd = -1
        data = bytearray()
        for state in route[1:]:
            new_fd = self.must_set(dev, state, "save: ")
            if new_fd >= 0:
                fd = new_fd
            if fd < 0:
                raise Step(f"save: no data_fd after SET {v2name(state)}")
            if state in (PRE_COPY, PRE_COPY_P2P):
                for seed in ACTIVITY_SEEDS:
                    chunk, err = self.drain(dev, fd)
                    data += chunk
                    if err not in (0, model.ENOMSG):
                        raise Step(f"save: pre-copy read failed: {errname(err)}")
                    dev.activity(seed)
            else:
                chunk, err = self.drain(dev, fd)
                data += chunk
                if err not in (0, model.ENOMSG):  # ENOMSG in STOP_COPY is judged by stop-copy-eof
                    raise Step(f"save: read in {v2name(state)} failed: {errname(err)} after {len(data)} bytes")
        digest = self.digest(dev)
        self.must_set(dev, STOP, "save: ")
        if not data:
            raise Step("save: the stream is empty")
        return bytes(data), digest

    def resume(self, dev, data: bytes, piece: int = 0) -> tuple[str, int, int, int]:
        """RESUMING, write ``data``, SET STOP: (what failed or "", errno, bytes written, GET)."""
        fd = self.reach(dev, RESUMING)
        if fd < 0:
            raise Unreached("STOP -> RESUMING returned no data_fd")
        err, done = self.write_all(dev, fd, data, piece)
        if err:
            return "write", err, done, self.get(dev)
        err, _ = self.set(dev, STOP)
        return ("load" if err else ""), err, done, self.get(dev)

    # -- the cases ---------------------------------------------------------------

    def cases(self) -> list[Case]:
        flags = self.flags
        states = [s for s in range(1, 8) if model.supported(flags, s)]
        rows = [ERROR] + states
        cases = [self.flags_case(), self.save_source_case(v2name, STOP)]
        cases += [Case("reset", v2name(s), "RUNNING", "reset succeeds, GET RUNNING, no live files",
                       (v2name(s), "RUNNING"), lambda sw, s=s: sw.check_reset(s)) for s in rows]
        cases += [Case("reach", "RUNNING", v2name(s), f"reach {v2name(s)} from reset one arc at a time",
                       tuple(v2name(x) for x in (RUNNING, *(model.path(flags, RUNNING, s) or ()))),
                       lambda sw, s=s: sw.check_reach(s)) for s in states]
        cases += [self.arc_case(f, t) for f in rows for t in (*range(8), *OUT_OF_RANGE)]
        cases += [self.fd_case(rule) for rule in V2_FD_RULES if self.supported(*rule.route)]
        cases += [Case("data-size", v2name(s), None, "GET MIG_DATA_SIZE succeeds in every state",
                       (v2name(s),), lambda sw, s=s: sw.check_data_size(s)) for s in states]
        cases += [Case("feature", "RUNNING", None, f"{label} -> {self.feature_expect_text(fl, argsz)}",
                       ("RUNNING",), lambda sw, fl=fl, a=argsz: sw.check_feature(fl, a))
                  for label, fl, argsz in FEATURE_CASES]
        cases += [Case("stopped-frozen", v2name(s), None, "device activity changes nothing while stopped",
                       (v2name(s),), lambda sw, s=s: sw.check_frozen(s)) for s in (STOP, STOP_COPY, RESUMING)]
        for name, route in V2_SAVE_ROUTES:
            if self.supported(*route):
                path = tuple(v2name(s) for s in route) + ("STOP", "RESUMING", "STOP")  # source, then destination
                cases.append(Case("round-trip", v2name(route[1]), "STOP",
                                  f"{name} save, resume on the other device: same state",
                                  path, lambda sw, r=route: sw.check_round_trip(r)))
        cases += [Case("resume-segmented", "RESUMING", "STOP", f"a valid stream in {label} loads",
                       ("RESUMING", "STOP"), lambda sw, p=piece: sw.check_resume(p))
                  for label, piece in RESUME_SEGMENTS]
        cases.append(Case("resume-twice", "RESUMING", "STOP", "two resume sessions in a row both load",
                          ("RESUMING", "STOP", "RESUMING", "STOP"), lambda sw: sw.check_resume_twice()))
        cases += [Case("damaged-stream", "RESUMING", "STOP",
                       f"{label}: refused, device unchanged",
                       ("RESUMING", "STOP"), lambda sw, fn=fn: sw.check_damaged(fn)) for label, fn in DAMAGES]
        cases += self.fault_cases()
        return cases

    def flags_case(self) -> Case:
        return Case("flags", None, None, "GET MIGRATION: a defined flag set (with STOP_COPY), as declared",
                    (), lambda sw: sw.check_flags())

    def check_flags(self):
        got = self.flags_read
        if got is None:
            return self.flags_note, False
        declared = getattr(self.devices[0], "flags", None)
        text = f"{got:#x} ({flag_names(got)})"
        ok = got in model.FLAG_SETS and (declared is None or declared == got)
        if declared is not None and declared != got:
            text += f"; device object says {declared:#x}"
        return text, ok

    def check_reset(self, frm: int):
        dev = self.dst
        self.reach(dev, frm)
        err = dev.reset()
        got = self.get(dev)
        live = dev.live_files()
        obs = f"reset {errname(err)}; GET {v2name(got)}" + (f"; {live} live files" if live else "")
        return obs, err == 0 and got == RUNNING and not live

    def check_reach(self, state: int):
        dev = self.dst
        try:
            self.reach(dev, state)
        except Unreached as e:
            return str(e), False
        got = self.get(dev)
        return f"GET {v2name(got)}", got == state

    # arc matrix ---------------------------------------------------------------

    def arc_expect(self, frm: int, to: int) -> tuple[str, tuple]:
        hops = model.path(self.flags, frm, to)
        if hops is None:
            return f"refused, stays {v2name(frm)}", ()
        if not hops:
            return "ok (no-op), no fd", (v2name(frm),)
        fd = model.opens_fd(self.flags, frm, to)
        return f"ok -> {v2name(to)}" + (", new fd" if fd else ", no fd"), tuple(v2name(s) for s in (frm, *hops))

    def arc_case(self, frm: int, to: int) -> Case:
        expected, path = self.arc_expect(frm, to)
        return Case("arc", v2name(frm), v2name(to), expected, path, lambda sw: sw.check_arc(frm, to))

    def check_arc(self, frm: int, to: int):
        flags = self.flags
        hops = model.path(flags, frm, to)
        loads = hops is not None and model.LOAD_HOP in set(model.hop_pairs(frm, hops))
        stream = self.valid_stream() if loads else None
        dev = self.dst
        fd0 = self.reach(dev, frm)
        if stream is not None:
            err, done = self.write_all(dev, fd0, stream)
            if err:
                raise Unreached(f"writing a valid stream failed: {errname(err)} after {done} bytes")
        err, fd = self.set(dev, to)
        got = self.get(dev)
        if err:
            obs = f"{errname(err)}, GET {v2name(got)}" + (f", fd {fd}" if fd >= 0 else "")
        else:
            obs = f"ok, GET {v2name(got)}" + (", new fd" if fd >= 0 else ", no fd")
        if hops is None:
            return obs, bool(err) and fd < 0 and got == frm
        if not hops:
            return obs, not err and fd < 0 and got == frm
        if err and got not in model.allowed_after_failure(flags, frm, to):
            obs += " (off the path)"
        return obs, not err and got == to and (fd >= 0) == model.opens_fd(flags, frm, to)

    # data_fd rules ---------------------------------------------------------------

    def fd_case(self, rule: FdRule) -> Case:
        io = IO_TEXT[rule.io]
        if rule.then == "reset":
            when = " after reset"
        elif rule.then is not None:
            when = f" after SET {v2name(rule.then)}"
        else:
            when = f" in {v2name(rule.route[-1])}"
        if len(rule.route) > 2:
            when += " (via " + ", ".join(v2name(s) for s in rule.route[1:-1]) + ")"
        if rule.expect is None:
            expected = f"{io}{when} succeeds" if rule.io not in ("drain", "drain-precopy", "precopy-cover") \
                else f"{io}{when}"
        else:
            expected = f"{io}{when} fails {errnames(rule.expect)}"
        end = "RUNNING" if rule.then == "reset" else (v2name(rule.then) if rule.then is not None else None)
        path = tuple(v2name(s) for s in rule.route) + ((end,) if end else ())
        return Case(rule.check, v2name(rule.route[-1]), end, expected, path, lambda sw: sw.check_fd(rule))

    def check_fd(self, rule: FdRule):
        route = rule.route
        stream = self.valid_stream() if route[-1] == RESUMING and rule.then == STOP else None
        dev = self.dst
        fd = self.reach(dev, route[0])
        for state in route[1:]:
            err, new_fd = self.set(dev, state)
            if err:
                raise Unreached(f"SET {v2name(state)}: {errname(err)}")
            if new_fd >= 0:
                fd = new_fd
        if fd < 0:
            raise Step(f"no data_fd along {' -> '.join(v2name(s) for s in route)}")
        if rule.then == "reset":
            err = dev.reset()
            if err:
                raise Step(f"reset failed: {errname(err)}")
        elif rule.then is not None:
            if stream is not None:
                err, _ = self.write_all(dev, fd, stream)
                if err:
                    raise Unreached(f"writing a valid stream failed: {errname(err)}")
            err, _ = self.set(dev, rule.then)
            if err:
                raise Unreached(f"SET {v2name(rule.then)}: {errname(err)}")
        return getattr(self, "io_" + rule.io.replace("-", "_"))(dev, fd, rule.expect)

    @staticmethod
    def judge(err: int, what: str, expect) -> tuple[str, bool]:
        obs = what if not err else errname(err)
        if expect is None:
            return obs, not err
        return obs, bool(err) and err in expect

    def io_read(self, dev, fd, expect):
        err, data = dev.read(fd, 16)
        return self.judge(err, f"read {len(data)} bytes", expect)

    def io_write(self, dev, fd, expect):
        err, n = dev.write(fd, bytes(16))
        return self.judge(err, f"wrote {n} bytes", expect)

    def io_seek(self, dev, fd, expect):
        return self.judge(dev.seek(fd), "success", expect)

    def io_close(self, dev, fd, expect):
        err = dev.close(fd)
        self.opened = [(d, f) for d, f in self.opened if f != fd or d is not dev]
        return self.judge(err, "success", expect)

    def io_precopy(self, dev, fd, expect):
        err, initial, dirty = dev.precopy_info(fd)
        return self.judge(err, f"success (initial {initial}, dirty {dirty})", expect)

    def io_drain(self, dev, fd, expect):
        data, err = self.drain(dev, fd)
        if err:
            return f"{errname(err)} after {len(data)} bytes", False
        err2, more = dev.read(fd, DRAIN_CHUNK)
        obs = f"{len(data)} bytes, then 0; again: " + (errname(err2) if err2 else f"{len(more)} bytes")
        return obs, not err2 and not more and len(data) > 0

    def io_drain_precopy(self, dev, fd, expect):
        data, err = self.drain(dev, fd)
        obs = f"{len(data)} bytes, then {'0' if not err else errname(err)}"
        ok = err in (0, model.PRECOPY_TEMP_EOF_ERRNO)
        if ok:  # the session survives its temporary end
            perr, _, _ = dev.precopy_info(fd)
            if perr:
                obs += f"; PRECOPY_INFO then {errname(perr)}"
                ok = False
        return obs, ok

    def io_precopy_cover(self, dev, fd, expect):
        _, err = self.drain(dev, fd)
        if err not in (0, model.ENOMSG):
            return f"initial read: {errname(err)}", False
        self.activity(dev)
        err, first = dev.read(fd, 1)  # stages what the activity dirtied, takes one byte of it
        if err not in (0, model.ENOMSG):
            return f"read after activity: {errname(err)}", False
        err, initial, dirty = dev.precopy_info(fd)
        if err:
            return f"PRECOPY_INFO {errname(err)}", False
        data, err = self.drain(dev, fd)
        if err not in (0, model.ENOMSG):
            return f"read: {errname(err)}", False
        obs = f"announced {initial}+{dirty}, then read {len(data)} bytes"
        return obs, len(data) <= initial + dirty

    # other single-shot checks ----------------------------------------------------------

    def check_data_size(self, state: int):
        dev = self.dst
        self.reach(dev, state)
        err, size = dev.data_size()
        return (f"{size} bytes" if not err else errname(err)), not err

    def feature_expect_text(self, flags: int, argsz: int) -> str:
        e = model.feature_errno(flags, argsz, self.flags, RUNNING)
        return "any" if e is None else errname(e)

    def check_feature(self, flags: int, argsz: int):
        dev = self.dst
        self.reach(dev, RUNNING)
        state = self.get(dev)
        expect = model.feature_errno(flags, argsz, self.flags, state)
        payload = model.MIG_STATE_PAYLOAD.pack(state, -1)
        err, _ = dev.feature(flags, payload, argsz)
        after = self.get(dev)
        obs = errname(err) + (f"; state moved to {v2name(after)}" if after != state else "")
        if expect is None:
            return obs, None
        return obs, (err == 0) == (expect == 0) and after == state

    def check_frozen(self, state: int):
        if not self.target.has_digest:
            return "no digest on this target", None
        stream = self.valid_stream() if state == RESUMING else None
        dev = self.dst
        fd = self.reach(dev, state)
        before = dev.digest()
        self.activity(dev)
        if stream is not None:  # writing a stream must not change the device before the load either
            self.write_all(dev, fd, stream)
        after = dev.digest()
        return ("unchanged" if after == before else "digest changed"), after == before

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

    def check_round_trip(self, route: tuple):
        src, dst = self.src, self.dst
        data, src_digest = self.save_stream(src, route)
        reference = data
        if not self.target.has_digest and route != self.stop_copy_route():
            # the source's final state in stop-and-copy form, saved without a reset in between
            reference, _ = self.save_stream(src, self.stop_copy_route(), from_reset=False)
        failed, err, done, got = self.resume(dst, data)
        if failed:
            return f"{len(data)}-byte stream: {failed} {errname(err)} (GET {v2name(got)})", False
        if got != STOP:
            return f"load ok but GET {v2name(got)}", False
        text, ok = self.compare_loaded(dst, src_digest, reference)
        return f"{len(data)} bytes; {text}", ok

    def check_resume(self, piece: int):
        stream = self.valid_stream()
        failed, err, done, got = self.resume(self.dst, stream, piece)
        if failed:
            return f"{failed} {errname(err)} after {done} of {len(stream)} bytes (GET {v2name(got)})", False
        return f"loaded {done} bytes, GET {v2name(got)}", got == STOP

    def check_resume_twice(self):
        stream = self.valid_stream()
        dev = self.dst
        failed, err, done, got = self.resume(dev, stream)
        if failed:
            return f"first: {failed} {errname(err)}", False
        fd = self.must_set(dev, RESUMING)
        err, done = self.write_all(dev, fd, stream)
        if err:
            return f"second: write {errname(err)}", False
        err, _ = self.set(dev, STOP)
        return ("second: load " + errname(err)) if err else "both loaded", not err

    def check_damaged(self, damage):
        stream = self.valid_stream()
        data = damage(stream)
        dev = self.dst
        fd = self.reach(dev, RESUMING)
        before = self.digest(dev)
        err, done = self.write_all(dev, fd, data)
        if err:
            got = self.get(dev)
            obs, refused = f"write refused {errname(err)} after {done} bytes, GET {v2name(got)}", True
            allowed = {RESUMING, ERROR, STOP}
        else:
            err, _ = self.set(dev, STOP)
            got = self.get(dev)
            obs = f"load {errname(err)}, GET {v2name(got)}"
            refused = bool(err)
            allowed = model.allowed_after_failure(self.flags, RESUMING, STOP)
        ok = refused and got in allowed
        if refused and self.target.has_digest and dev.digest() != before:
            obs += "; device state changed (half-loaded)"
            ok = False
        if not ok and not self.target.validates_stream:
            return obs + " (target does not promise to validate streams)", None
        return obs, ok

    # fault injection (§8.15) ---------------------------------------------------------------

    def fault_cases(self) -> list[Case]:
        out = []
        for prev, nxt in sorted(model.arcs(self.flags)):
            for nth in ((1, 2) if (prev, nxt) in model.OPENS_SESSION else (1,)):
                step = "arc" if nth == 1 else "file alloc"
                out.append(Case("fault-in-arc", v2name(prev), v2name(nxt),
                                f"ENOMEM ({step}): fails, no fd, GET {v2name(prev)}|{v2name(nxt)}|ERROR, no leak",
                                (v2name(prev), v2name(nxt)), lambda sw, a=prev, b=nxt, n=nth: sw.check_fault(a, b, n)))
        return out

    def check_fault(self, prev: int, nxt: int, nth: int):
        if not self.target.supports_faults:
            return "no fault injection on this target", None
        stream = self.valid_stream() if (prev, nxt) == model.LOAD_HOP else None
        dev = self.dst
        fd0 = self.reach(dev, prev)
        if stream is not None:
            err, _ = self.write_all(dev, fd0, stream)
            if err:
                raise Unreached(f"writing a valid stream failed: {errname(err)}")
        index = self.devices.index(dev)
        self.target.arm_fault(index, nth, "nomem")
        err, fd = self.set(dev, nxt)
        fired = self.target.fault_fired(index) if hasattr(self.target, "fault_fired") else True
        got = self.get(dev)
        live = dev.live_files()
        obs = f"{errname(err)}, GET {v2name(got)}" + (", new fd" if fd >= 0 else "") + \
            (f", {live} live files" if live is not None else "")
        if not fired:
            return obs + " (the fault was not reached)", not err and got == nxt
        ok = bool(err) and fd < 0 and got in model.allowed_after_failure(self.flags, prev, nxt)
        if ok and got != ERROR and live is not None:
            ok = live == int(got in model.SAVING_GROUP or got == RESUMING)
        return obs, ok


# =========================================================================== v1


V1_VALID = sorted(model.V1_VALID)
V1_READONLY = ("pending_bytes", "data_offset")


class V1Sweep(Sweep):
    proto = "v1"

    def __init__(self, spec, target, open_fn=None):
        super().__init__(spec, target, open_fn)
        self.flags = 0

    # -- region helpers ------------------------------------------------------

    def rd(self, dev, name: str) -> tuple[int, int | None]:
        off, size = V1_FIELDS[name]
        err, raw = dev.region_read(off, size)
        return err, (int.from_bytes(raw, "little") if not err and len(raw) == size else None)

    def wr(self, dev, name: str, value: int) -> int:
        off, size = V1_FIELDS[name]
        return dev.region_write(off, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))[0]

    def get(self, dev) -> int:
        err, value = self.rd(dev, "device_state")
        if err or value is None:
            raise Step(f"device_state read failed: {errname(err)}")
        return value

    def region_size(self, dev) -> int:
        return getattr(dev, "region_size", None) or self.target.region_size

    def reach(self, dev, state: int) -> None:
        self.reset(dev)
        if state == V1_ERR:
            return self.enter_error(dev)
        cur = self.get(dev)
        if cur != state:
            err = self.wr(dev, "device_state", state)
            if err:
                raise Unreached(f"{v1name(cur)} -> {v1name(state)} refused ({errname(err)})")
            got = self.get(dev)
            if got != state:
                raise Unreached(f"{v1name(cur)} -> {v1name(state)} accepted but reads {v1name(got)}")

    def enter_error(self, dev) -> None:
        if not self.target.supports_faults:
            raise Unreached("110b needs fault injection, which this target does not support")
        self.target.arm_fault(self.devices.index(dev), 1, "hwerror")
        err = self.wr(dev, "device_state", V1_STOP)
        got = self.get(dev)
        if got != V1_ERR:
            raise Unreached(f"an injected hardware error on RUNNING -> STOP left {v1name(got)} ({errname(err)})")

    def stop_copy_route(self) -> tuple:
        return (V1_SAVE,)

    def save_iteration(self, dev, data: bytearray) -> bool:
        """One §1.5 iteration; True when pending_bytes is 0."""
        err, pending = self.rd(dev, "pending_bytes")
        if err:
            raise Step(f"save: pending_bytes read {errname(err)}")
        if not pending:
            return True
        err, offset = self.rd(dev, "data_offset")
        if err:
            raise Step(f"save: data_offset read {errname(err)}")
        err, size = self.rd(dev, "data_size")
        if err:
            raise Step(f"save: data_size read {errname(err)}")
        limit = self.region_size(dev)
        if offset < model.V1_HEADER_SIZE or offset + size > limit:
            raise Step(f"save: data window [{offset:#x}, {offset + size:#x}) outside the region "
                       f"[{model.V1_HEADER_SIZE:#x}, {limit:#x})")
        if size:
            err, chunk = dev.region_read(offset, size)
            if err:
                raise Step(f"save: window read {errname(err)}")
            data += chunk
        return False

    def save_stream(self, dev, route: tuple, from_reset: bool = True) -> tuple[bytes, object]:
        """Save along ``route`` (device_state values; the last must be 010b), then 000b.

        ``from_reset`` False: start from the current state (a re-save must not reset the device)."""
        if from_reset:
            self.reach(dev, route[0])
        data = bytearray()
        for i, state in enumerate(route):
            if i or not from_reset:
                err = self.wr(dev, "device_state", state)
                if err:
                    raise Step(f"save: write {v1name(state)}: {errname(err)}")
            if state == V1_PRECOPY:
                for seed in ACTIVITY_SEEDS:
                    for _ in range(V1_ITER_LIMIT):
                        if self.save_iteration(dev, data):
                            break
                    dev.activity(seed)
        for _ in range(V1_ITER_LIMIT):
            if self.save_iteration(dev, data):
                break
        else:
            raise Step(f"save: hang: pending_bytes never reaches 0 in SAVING ({len(data)} bytes read)")
        digest = self.digest(dev)
        err = self.wr(dev, "device_state", V1_STOP)
        if err:
            raise Step(f"save: SAVING -> STOP: {errname(err)}")
        if not data:
            raise Step("save: the stream is empty")
        return bytes(data), digest

    def write_stream(self, dev, data: bytes, piece: int = 0) -> tuple[int, int]:
        """§1.6: data_offset, chunk into the window, data_size. (errno, bytes accepted)."""
        done = 0
        while done < len(data):
            err, offset = self.rd(dev, "data_offset")
            if err:
                return err, done
            room = self.region_size(dev) - offset
            if offset < model.V1_HEADER_SIZE or room <= 0:
                raise Step(f"resume: data_offset {offset:#x} outside the region")
            n = min(room, piece or room, len(data) - done)
            err, _ = dev.region_write(offset, data[done:done + n])
            if not err:
                err = self.wr(dev, "data_size", n)
            if err:
                return err, done
            done += n
        return 0, done

    def resume(self, dev, data: bytes, piece: int = 0, end: int = V1_RUN) -> tuple[str, int, int, int]:
        self.reach(dev, V1_RESUME)
        err, done = self.write_stream(dev, data, piece)
        if err:
            return "write", err, done, self.get(dev)
        err = self.wr(dev, "device_state", end)
        return ("load" if err else ""), err, done, self.get(dev)

    # -- cases ----------------------------------------------------------------

    def cases(self) -> list[Case]:
        rows = V1_VALID + [V1_ERR]
        cases = [self.save_source_case(v1name, V1_STOP)]
        cases += [Case("reset", v1name(s), "RUNNING", "reset succeeds; device_state reads RUNNING (001b)",
                      (v1name(s), "RUNNING"), lambda sw, s=s: sw.check_reset(s)) for s in rows]
        cases += [Case("reach", "RUNNING", v1name(s), f"write {v1name(s)} from RUNNING", ("RUNNING", v1name(s)),
                       lambda sw, s=s: sw.check_reach(s)) for s in V1_VALID]
        cases += [self.arc_case(f, t) for f in rows for t in range(8)]
        cases += [Case("readonly-field", v1name(s), None, f"a write to {name} does not change it",
                       (v1name(s),), lambda sw, s=s, n=name: sw.check_readonly(s, n))
                  for s in (V1_RUN, V1_SAVE) for name in V1_READONLY]
        cases += [Case("reserved", v1name(s), None, "reserved reads 0, also after a write",
                       (v1name(s),), lambda sw, s=s: sw.check_reserved(s)) for s in V1_VALID]
        cases += [Case("stopped-frozen", v1name(s), None, "device activity changes nothing while stopped",
                       (v1name(s),), lambda sw, s=s: sw.check_frozen(s)) for s in (V1_STOP, V1_SAVE, V1_RESUME)]
        cases += [Case("save-sequence", v1name(route[0]), "STOP",
                       f"{label}: §1.5 loop reaches pending_bytes 0, window in region",
                       tuple(v1name(s) for s in route) + ("STOP",), lambda sw, r=route: sw.check_save(r))
                  for label, route in (("stop-and-copy", (V1_SAVE,)), ("pre-copy", (V1_PRECOPY, V1_SAVE)))]
        cases += [Case("round-trip", v1name(route[0]), "RUNNING",
                       f"{label} save, resume on the other device: same state",
                       tuple(v1name(s) for s in route) + ("STOP", "RESUMING", "RUNNING"),
                       lambda sw, r=route: sw.check_round_trip(r))
                  for label, route in (("stop-and-copy", (V1_SAVE,)), ("pre-copy", (V1_PRECOPY, V1_SAVE)))]
        cases += [Case("resume-segmented", "RESUMING", "RUNNING", f"a valid stream in {label} loads",
                       ("RESUMING", "RUNNING"), lambda sw, p=piece: sw.check_resume(p))
                  for label, piece in (("full windows", 0), ("7-byte chunks", 7))]
        cases.append(Case("resume-twice", "RESUMING", "RUNNING", "two resume sessions in a row both load",
                          ("RESUMING", "RUNNING", "RESUMING", "RUNNING"), lambda sw: sw.check_resume_twice()))
        cases += [Case("damaged-stream", "RESUMING", "RUNNING",
                       f"{label}: refused, device unchanged",
                       ("RESUMING", "RUNNING"), lambda sw, fn=fn: sw.check_damaged(fn))
                  for label, fn in DAMAGES]
        cases.append(Case("error-state", "RUNNING", "ERROR", "injected hardware error: reads 110b",
                          ("RUNNING", "ERROR"), lambda sw: sw.check_error_entry()))
        return cases

    def check_reset(self, frm: int):
        dev = self.dst
        self.reach(dev, frm)
        err = dev.reset()
        got = self.get(dev)
        return f"reset {errname(err)}; reads {v1name(got)}", err == 0 and got == model.V1_RESET_STATE

    def check_reach(self, state: int):
        dev = self.dst
        try:
            self.reach(dev, state)
        except Unreached as e:
            return str(e), False
        got = self.get(dev)
        return f"reads {v1name(got)}", got == state

    def arc_case(self, frm: int, to: int) -> Case:
        if model.v1_write_allowed(frm, to):
            expected, path = f"ok -> {v1name(to)}", (v1name(frm), v1name(to))
        else:
            stays = " or ".join(v1name(s) for s in sorted(model.v1_states_after_failure(frm)))
            expected, path = f"refused, reads {stays}", ()
        return Case("arc", v1name(frm), v1name(to), expected, path, lambda sw: sw.check_arc(frm, to))

    def check_arc(self, frm: int, to: int):
        allowed = model.v1_write_allowed(frm, to)
        stream = self.valid_stream() if allowed and model.v1_is_load(frm, to) else None
        dev = self.dst
        self.reach(dev, frm)
        if stream is not None:
            err, done = self.write_stream(dev, stream)
            if err:
                raise Unreached(f"writing a valid stream failed: {errname(err)} after {done} bytes")
        err = self.wr(dev, "device_state", to)
        got = self.get(dev)
        obs = f"{'ok' if not err else errname(err)}, reads {v1name(got)}"
        if allowed:
            return obs, not err and got == to
        return obs, bool(err) and got in model.v1_states_after_failure(frm)

    def check_readonly(self, state: int, name: str):
        dev = self.dst
        self.reach(dev, state)
        err, before = self.rd(dev, name)
        if err:
            return f"read {errname(err)}", False
        werr = self.wr(dev, name, (before or 0) + 0x1000)
        err, after = self.rd(dev, name)
        obs = f"{before:#x}, write {'accepted' if not werr else errname(werr)}, then {after:#x}" \
            if after is not None else f"re-read {errname(err)}"
        return obs, not err and after == before

    def check_reserved(self, state: int):
        dev = self.dst
        self.reach(dev, state)
        err, first = self.rd(dev, "reserved")
        self.wr(dev, "reserved", 0xDEADBEEF)
        err2, second = self.rd(dev, "reserved")
        obs = f"{errname(err) if err else hex(first)}, after a write {errname(err2) if err2 else hex(second)}"
        return obs, not err and not err2 and first == 0 and second == 0

    def check_frozen(self, state: int):
        if not self.target.has_digest:
            return "no digest on this target", None
        stream = self.valid_stream() if state == V1_RESUME else None
        dev = self.dst
        self.reach(dev, state)
        before = dev.digest()
        self.activity(dev)
        if stream is not None:
            self.write_stream(dev, stream)
        after = dev.digest()
        return ("unchanged" if after == before else "digest changed"), after == before

    def check_save(self, route: tuple):
        data, _ = self.save_stream(self.dst, route)
        return f"{len(data)} bytes, pending_bytes reached 0", True

    def check_round_trip(self, route: tuple):
        src, dst = self.src, self.dst
        data, src_digest = self.save_stream(src, route)
        reference = data
        if not self.target.has_digest and route != self.stop_copy_route():
            reference, _ = self.save_stream(src, self.stop_copy_route(), from_reset=False)
        failed, err, done, got = self.resume(dst, data)
        if failed:
            return f"{len(data)}-byte stream: {failed} {errname(err)} (reads {v1name(got)})", False
        if got != V1_RUN:
            return f"load ok but reads {v1name(got)}", False
        if self.target.has_digest:
            same = dst.digest() == src_digest
            return f"{len(data)} bytes; " + ("same digest" if same else "digest differs from the source"), same
        err = self.wr(dst, "device_state", V1_STOP)  # stop before re-saving (running may change it)
        if err:
            return f"{len(data)} bytes; RUNNING -> STOP {errname(err)}", False
        again, _ = self.save_stream(dst, self.stop_copy_route(), from_reset=False)
        same = again == reference
        return f"{len(data)} bytes; re-saved stream " + ("identical" if same else "differs"), same

    def check_resume(self, piece: int):
        stream = self.valid_stream()
        failed, err, done, got = self.resume(self.dst, stream, piece)
        if failed:
            return f"{failed} {errname(err)} after {done} of {len(stream)} bytes (reads {v1name(got)})", False
        return f"loaded {done} bytes, reads {v1name(got)}", got == V1_RUN

    def check_resume_twice(self):
        stream = self.valid_stream()
        dev = self.dst
        failed, err, done, got = self.resume(dev, stream)
        if failed:
            return f"first: {failed} {errname(err)}", False
        err = self.wr(dev, "device_state", V1_RESUME)
        if err:
            return f"second: RUNNING -> RESUMING {errname(err)}", False
        err, done = self.write_stream(dev, stream)
        if err:
            return f"second: write {errname(err)}", False
        err = self.wr(dev, "device_state", V1_RUN)
        return ("second: load " + errname(err)) if err else "both loaded", not err

    def check_damaged(self, damage):
        stream = self.valid_stream()
        data = damage(stream)
        dev = self.dst
        self.reach(dev, V1_RESUME)
        before = self.digest(dev)
        err, done = self.write_stream(dev, data)
        if err:
            got = self.get(dev)
            obs, refused = f"write refused {errname(err)} after {done} bytes, reads {v1name(got)}", True
        else:
            err = self.wr(dev, "device_state", V1_RUN)
            got = self.get(dev)
            obs, refused = f"clearing RESUMING {errname(err)}, reads {v1name(got)}", bool(err)
        ok = refused and got in model.v1_states_after_failure(V1_RESUME)
        if refused and self.target.has_digest and dev.digest() != before:
            obs += "; device state changed (half-loaded)"
            ok = False
        if not ok and not self.target.validates_stream:
            return obs + " (target does not promise to validate streams)", None
        return obs, ok

    def check_error_entry(self):
        if not self.target.supports_faults:
            return "no fault injection on this target", None
        dev = self.dst
        self.reset(dev)
        self.target.arm_fault(self.devices.index(dev), 1, "hwerror")
        err = self.wr(dev, "device_state", V1_STOP)
        got = self.get(dev)
        return f"write {errname(err)}, reads {v1name(got)}", bool(err) and got == V1_ERR


# =========================================================================== entry points


def sweep(spec, target=None, open_fn=None, on_abort=None) -> dict:
    """Run the conformance sweep; returns the JSON-able result (see the module doc).

    ``spec``: a target spec (text or ``TargetSpec``); ``target``: an already open
    target (else ``open_fn(spec)``, default ``fuzz.targets.open_target``, which
    is also how a target is re-opened after a failed reset); ``on_abort(result)``:
    called with the partial result if a real device hangs in the kernel (the
    process then exits 1)."""
    from .targets import open_target, parse_target

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
    flags = f", flags {result['flags']:#x} ({flag_names(result['flags'])})" if proto == "v2" else ""
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
    flags = f", flags `{result['flags']:#x}` ({flag_names(result['flags'])})" if proto == "v2" else ""
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
        from .htmlreport import conform_html

        return conform_html(result)
    return format_table(result, color)


# --------------------------------------------------------------------------- CLI


def cmd_conform(args) -> int:
    from .cli import EXIT_FINDING, EXIT_OK, EXIT_UNAVAILABLE, UsageError
    from .targets import TargetError, TargetUnavailable, parse_target

    try:
        spec = parse_target(args.target)
    except TargetError as e:
        raise UsageError(str(e)) from None
    if spec.kind != "sim" and not args.i_know_this_resets_the_device:
        raise UsageError("the sweep resets a real device hundreds of times; "
                         "add --i-know-this-resets-the-device to confirm")
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such directory")
    color = args.format == "table" and out is None and sys.stdout.isatty()

    def emit(result: dict) -> None:
        text = format_result(result, args.format, color=color)
        if out is not None:
            out.write_text(text)
            print(_headline(result).splitlines()[1] + f"  -> {out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    try:
        result = sweep(spec, on_abort=emit)
    except TargetError as e:
        raise UsageError(str(e)) from None
    except (TargetUnavailable, ImportError) as e:
        print(f"migfuzz: target unavailable: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    emit(result)
    return EXIT_FINDING if failures(result) else EXIT_OK


def cmd_report_html(args) -> int:
    from .cli import EXIT_OK, UsageError
    from .htmlreport import ReportInputError, campaign_html

    src = Path(args.jsonl)
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such directory")
    try:
        campaign_html(src, None, out)
    except ReportInputError as e:
        raise UsageError(f"{src}: {e}") from None
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser(
        "conform", help="deterministic protocol conformance sweep of one target",
        description="Sweep every state transition, data_fd rule, round trip, damaged stream and framing "
                    "rule once against the reference model. Exit 0 conforms, 1 something does not, "
                    "2 bad arguments, 3 target unavailable.")
    p.add_argument("--target", default="sim", help="target spec (default: sim); see `migfuzz targets`")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (default, failures first), json, md (markdown) or html (one self-contained page)")
    p.add_argument("--out", help="write the report here instead of stdout")
    p.add_argument("--i-know-this-resets-the-device", action="store_true",
                   help="required to sweep a real device")
    p.set_defaults(func=cmd_conform)

    p = sub.add_parser("report-html", help="render a campaign's JSON-lines report as one HTML page",
                       description="Charts of coverage, protocol arcs and findings over time from the JSON "
                                   "lines `migfuzz fuzz --report-dir` writes.")
    p.add_argument("--jsonl", required=True, help="the campaign's JSON-lines report")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.set_defaults(func=cmd_report_html)
