"""The executor: run a program on a target. It calls the device; the oracle judges.

``Executor(target).run(program)`` returns the first :class:`~fuzz.findings.Finding` or
None. Per op, the executor makes the device calls (multi-call sequences through the
procedures of ``harness.runtime``, which the reproducers share) and hands every raw
answer to the oracle's ``on_*`` method; it never decides whether an answer is right and
never writes to the oracle's view of a device.

With ``trace=True`` it also records, for every op, what the device answered
(``executor.trace``), which ``repro`` prints; the fuzzing loop runs without it.

Protocol-state feedback (``set_arc_feedback``): a coverage counter for each (op, outcome,
state after), so a never-seen protocol arc counts as new coverage even where code coverage
is flat.
"""
from __future__ import annotations

import errno
import traceback
from functools import partial

from harness.base import FAULT_KINDS, DeviceHang
from harness.runtime import (
    DRAIN_CHUNK,
    DRAIN_LIMIT,
    EINTR_RETRIES,
    RACE_FD_CALLS,
    V1_DONE,
    V1_MORE,
    race_call,
    read_to_end,
    run_race,
    segments,
    v1_save_iteration,
    v1_write_chunk,
)
from harness.uapi import V1_FIELD_NAMES, V1_FIELDS, V1_HEADER_SIZE

from . import model
from .findings import Finding
from .oracles import DeviceView, FindingRaised, RaceSide, V1Oracle, V2Oracle
from .program import OPS, SIZES, Program, format_op, mangle_args, race_args

# Outcomes of an op beyond an errno, for the arc feedback.
OUTCOME_SKIPPED = 255  # nothing to act on: no such data_fd, nothing to transfer
OUTCOME_EMPTY = 64     # a read that succeeded with 0 bytes

_DEVICE_STATE = V1_FIELDS["device_state"]
# What a drain that never ended was doing (made once: a drain's verdict reads it only when it fails)
_V2_UNENDED = f"still sending after {DRAIN_LIMIT} reads"
_V1_UNENDED = f"pending_bytes still non-zero after {DRAIN_LIMIT} iterations"


class Executor:
    def __init__(self, target, trace: bool = False):
        self.target = target
        self.proto = target.proto
        self.devices = target.devices
        self.oracle = V2Oracle(target) if self.proto == "v2" else V1Oracle(target)
        self.specs = OPS[self.proto]
        self.handlers = tuple(getattr(self, f"{self.proto}_{spec.name}") for spec in self.specs)
        self.has_digest = target.has_digest
        self.supports_faults = target.supports_faults
        self.profile = target.profile
        self.trace_on = trace
        self.trace: list = []
        self.step = 0
        self.arc_hits: bytearray | None = None
        self.arc_base = self.arc_mask = 0
        self.arcs_seen = bytearray(1)
        self.kernel_reports = getattr(target, "kernel_reports", None)  # kernel log splats (harness.kernel)
        self.op_started = getattr(target, "op_started", None)  # the rig's flight recorder (harness.kernel)
        self.views: list[DeviceView] = []
        self.armed: list[bool] = []
        # State after a load: the device's own digest, or (no digest) a re-save round trip.
        if target.has_digest:
            self.load_digests = [d.digest for d in self.devices]
        else:
            resave = getattr(target, "resave", None)
            self.load_digests = [(lambda i=i: resave(i)) if resave else (lambda: None)
                                 for i in range(len(self.devices))]
        # State of a source at the end of its stream: its digest, or the stream itself.
        if target.has_digest:
            self.source_digests = self.load_digests
        else:
            self.source_digests = [(lambda i=i: bytes(self.views[i].capture)) for i in range(len(self.devices))]

    # -- running ------------------------------------------------------------------

    def set_arc_feedback(self, hits: bytearray, base: int, size: int) -> None:
        """Mark each arc's counter ``base + key % size`` in ``hits`` (fuzz.feedback). The key is built
        from (state before, op, outcome, state after), but with ``size`` 1 << 14 its low bits keep
        only the op code's low 4 bits, the outcome and the state after: the state before is dropped. Measured on
        2026-12-02: hashing the whole key into 1 << 13 counters kept 925 of a v2 corpus' 951
        distinct arcs apart (767 this way), but found the zoo's field-edit variant
        (v2-fifo-tail-oob-read) 2.4x later (median 4.5 s against 1.9 s, 5 seeds; more arcs, a
        larger corpus, fewer mutations of the program that matters). Measure before changing."""
        self.arc_hits, self.arc_base, self.arc_mask = hits, base, size - 1
        self.arcs_seen = bytearray(size)

    def run(self, prog: Program) -> Finding | None:
        target = self.target
        target.fresh()
        oracle = self.oracle
        views = self.views = oracle.begin()
        self.trace = []
        arc_hits, base, mask, seen = self.arc_hits, self.arc_base, self.arc_mask, self.arcs_seen
        handlers = self.handlers
        devices = self.devices
        armed = self.armed = [False] * len(views)
        step = 0
        reports = self.kernel_reports
        # After every op on a sanitizer kernel, and in a traced run (repro, a finding's replay): the
        # report then names its op. Elsewhere once per program (a poll per op would cost ~7%).
        reports_per_op = reports is not None and (self.trace_on or getattr(target, "reports_per_op", False))
        op_started = self.op_started
        try:
            for step, op in enumerate(prog.ops):
                self.step = step
                if op_started is not None:
                    op_started(step)
                dev = op.dev  # (read once: a NamedTuple field is a descriptor, which CPython 3.11 does not specialize)
                view = views[dev]
                before = view.state
                outcome = handlers[op.code](op, view, devices[dev])
                if True in armed:  # a fault is armed: resync with the device if it fired
                    self._after_faults()
                if oracle.observe is not None:  # a stream completed or loaded: its registers, now
                    self._observe()
                if reports_per_op:  # a report logged during this op is this op's finding
                    oracle.on_splats(reports())
                if arc_hits is not None:
                    key = (((before * 32 + op.code) * 128 + (outcome & 127)) * 8 + (view.state & 7)) & mask
                    seen[key] = 1
                    arc_hits[base + key] = 1
            if reports is not None:  # what the log holds after the last op (all of it, read per program)
                oracle.on_splats(reports())
        except FindingRaised as fr:
            return self._finish(fr.finding, prog, step)
        except DeviceHang as e:
            return self._finish(oracle.hang(str(e)), prog, step)
        except Exception as e:  # noqa: BLE001 - anything escaping the target is a finding
            return self._finish(oracle.exception(e, traceback.format_exc()), prog, step)
        return None

    def _finish(self, finding: Finding, prog: Program, step: int) -> Finding:
        self.step = step
        op = prog.ops[step] if step < len(prog.ops) else None
        text = format_op(self.proto, op) if op else ""
        # The kernel's reports of this program go with its finding: left in the log, the next program
        # took them for its own (seen on the debug kernel: UBSAN's report of mtty's BAR2 read, whose
        # out-of-bounds finding ended the program, was blamed on the next program's first op).
        reports = self.kernel_reports() if self.kernel_reports is not None else None
        if reports:
            said = "\n".join(getattr(r, "text", r) for r in reports)
            finding = finding._replace(detail=f"{finding.detail}\n\nkernel reports logged meanwhile:\n{said}"
                                       if finding.detail else f"kernel reports logged meanwhile:\n{said}")
        if self.trace_on:
            self.note(f"FINDING {finding.kind}: expected {finding.expected}; observed {finding.observed}")
        return finding._replace(op=text, step=step)

    def note(self, text: str) -> None:
        self.trace.append((self.step, text))

    def fault_fired(self, dev: int) -> bool:
        return self.armed[dev] and self.target.fault_fired(dev)

    def _after_faults(self) -> None:
        """A fault fired during the op: tell the oracle the state the device reports now."""
        target = self.target
        oracle = self.oracle
        for i, view in enumerate(self.views):
            if not (self.armed[i] and target.fault_fired(i)):
                continue
            target.clear_fault(i)
            self.armed[i] = False
            dev = self.devices[i]
            got = dev.get_state()[1] if self.proto == "v2" else dev.field_read(*_DEVICE_STATE)[1]
            oracle.on_fault_fired(view, got, oracle.error_state)

    def _observe(self) -> None:
        """Read the profile's side-effect-free registers of the device the oracle asked about."""
        dev = self.devices[self.oracle.observe[1]]
        values = []
        for region, off, _name in self.oracle.observed:
            err, data = dev.reg_read(region, off, 1)
            values.append(None if err else data)
        self.oracle.on_observed(tuple(values))

    def _arc(self, view: DeviceView, name: str, to: int | None = None) -> None:
        self.oracle.arc_at = (view.state, name, to)

    # -- ops both protocols share -----------------------------------------------

    def _common_activity(self, op, view, dev):
        self._arc(view, "activity")
        sent = dev.activity(op.b)
        self.oracle.on_activity(view, dev.digest() if self.has_digest else None, sent)
        return 0

    def _common_fault(self, op, view, dev):
        if self.supports_faults:
            self.target.clear_fault(op.dev)
            self.target.arm_fault(op.dev, op.a, FAULT_KINDS[op.b])
            self.armed[op.dev] = True
        return 0

    def _common_mangle(self, op, view, dev):
        self.oracle.on_mangle(view, mangle_args(op))
        if self.trace_on:
            self.note(f"capture now {len(view.capture)} bytes")
        return 0

    def _common_reopen(self, op, view, dev):
        self._arc(view, "reopen")
        err = dev.reopen()
        if self.proto == "v2":
            gerr, got = dev.get_state()
        else:
            gerr, got = dev.field_read(*_DEVICE_STATE)
        if self.trace_on:
            self.note(f"reopen -> {model.errname(err)}; state {self.oracle.state_name(got)}")
        self.oracle.on_reopen(view, err, got, gerr, dev.live_files())
        return err

    def _common_rdreg(self, op, view, dev):
        a = op.a
        region, off, size = a >> 12, a & 0x3FF, SIZES[a >> 10 & 3]
        profile = self.profile
        if profile.access(region, off, size) is None or profile.read_role(region, off) == "none":
            return OUTCOME_SKIPPED  # the profile keeps programs away from it
        self._arc(view, "rdreg")
        guard_ok, effects = True, False
        for i in range(size):
            reg = profile.register(region, off + i)
            if reg is not None and reg.read in ("data-out", "side-effect"):
                effects = True
                if reg.guard is not None:  # its role depends on a mode bit (a UART's DLAB)
                    g_off, mask, equals = reg.guard
                    gerr, g = dev.reg_read(region, g_off, 1)
                    guard_ok = not gerr and bool(g) and g[0] & mask == equals
        err, data = dev.reg_read(region, off, size)
        if self.trace_on:
            self.note(f"region {region} +{off:#x}: read {size} -> {model.errname(err)} {data.hex()}")
        self.oracle.on_reg_read(view, region, off, err, data, guard_ok, dev.pci_region_size(region))
        if effects and not err:
            self.oracle.device_touched(view, dev.digest() if self.has_digest else None)
        return err

    def _common_wrreg(self, op, view, dev):
        a = op.a
        region, off, size = a >> 12, a & 0x3FF, SIZES[a >> 10 & 3]
        profile = self.profile
        if profile.access(region, off, size) is None or profile.write_role(region, off) == "none":
            return OUTCOME_SKIPPED
        self._arc(view, "wrreg")
        data = (op.b & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        err, n = dev.reg_write(region, off, data)
        if self.trace_on:
            self.note(f"region {region} +{off:#x}: write {data.hex()} -> {model.errname(err)}")
        self.oracle.on_reg_write(view, region, off, data, err, dev.pci_region_size(region))
        if not err:
            self.oracle.device_touched(view, dev.digest() if self.has_digest else None)
        return err

    def _common_race(self, op, view, dev):
        """Two calls at once (``harness.runtime.run_race``: the simulator interleaves them as ``sched``
        says; a real device gets two threads and a barrier), then the state read back; the oracle
        judges both answers and the state against the two serial orders. Programs without a race
        never get here: no thread is made, nothing is paid."""
        x, y, sched = race_args(op)
        v2 = self.proto == "v2"
        sides = []
        for kind, arg in (x, y):
            index = fd = -1
            if kind in RACE_FD_CALLS:
                if not v2 or arg >= len(view.slots):
                    return OUTCOME_SKIPPED  # no such data_fd (v1 has none)
                index = len(view.slots) - 1 - arg
                fd = view.slots[index].fd
            sides.append((kind, arg, index, fd))
        (xk, xarg, xi, xfd), (yk, yarg, yi, yfd) = sides
        self._arc(view, f"race:{xk}+{yk}")
        field, data = None if v2 else _DEVICE_STATE, op.data
        # (partial, not a lambda: the call is made in C, one Python frame fewer per side)
        fa = partial(race_call, dev, xk, xarg, xfd, data, field)
        fb = partial(race_call, dev, yk, yarg, yfd, data, field)
        # Only a SET's judgement reads the digest (a load, or a v1 write while stopped), and only a
        # load changes it: without a SET the race leaves the digest as it was.
        before = dev.digest() if self.has_digest and (xk == "set" or yk == "set") else None
        answers = run_race(dev, fa, fb, sched)
        gerr, got = dev.get_state() if v2 else dev.field_read(*_DEVICE_STATE)
        if self.trace_on:
            said = [f"{k}{'(' + str(g) + ')' if k == 'set' else ''}{' fd ' + str(f) if f >= 0 else ''} -> "
                    f"{model.errname(answer[0])}" for (k, g, _, f), answer in zip(sides, answers, strict=True)]
            self.note(f"race sched={sched}: {said[0]} | {said[1]}; state {self.oracle.state_name(got)}")
        race = (RaceSide(xk, xarg, xi, answers[0]), RaceSide(yk, yarg, yi, answers[1]))
        closed = -1  # the data_fd a SET returned, when the reopen it raced closed it (Oracle.race_fits)
        if v2 and {xk, yk} == {"set", "reopen"}:
            err, fd = answers[0] if xk == "set" else answers[1]
            if not err and fd >= 0 and not dev.holds_data_fd(fd):
                closed = fd
        self.oracle.on_race(view, race, data, got, gerr, dev.live_files(), self.load_digests[op.dev],
                            self.source_digests[op.dev], before, closed)
        return (op.a & 0x3F) | (64 if answers[0][0] or answers[1][0] else 0)  # the two calls, and a failure

    def _check_frozen(self, view, dev) -> None:
        if self.has_digest and view.state in self.oracle.stopped_states:
            self.oracle.check_frozen(view, dev.digest())

    def _transfer_refused(self, op, dst, ddev, data, offered, err, complete) -> int:
        """A write of a transfer (either protocol) into ``dst`` was refused. The resuming device is
        stopped, so its state is first checked to be the one it stopped with, as it is after a
        transfer that completes; unless an injected failure fired (the resync after the op takes
        the state it left). Once per transfer, not per write: a device that changed stays changed,
        and a digest per write cost 6% of a v1 campaign's programs (9 writes a transfer). Then the
        refusal is judged."""
        fault = self.fault_fired(op.a)
        if not fault:
            self._check_frozen(dst, ddev)
        self.oracle.transfer_failed(dst, data, offered, err, fault, complete)
        return err

    # -- v2 ---------------------------------------------------------------------

    def v2_reset(self, op, view, dev):
        self._arc(view, "reset")
        err = dev.reset()
        gerr, got = dev.get_state()
        if self.trace_on:
            self.note(f"reset -> {model.errname(err)}; state {model.v2_name(got)}")
        self.oracle.on_reset(view, err, got, gerr, dev.live_files())
        return err

    v2_activity = _common_activity
    v2_fault = _common_fault
    v2_mangle = _common_mangle
    v2_reopen = _common_reopen
    v2_rdreg = _common_rdreg
    v2_wrreg = _common_wrreg
    v2_race = _common_race

    def v2_transfer(self, op, view, dev):
        dst = self.views[op.a]
        slot = dst.slot(0)
        if slot is None or not slot.live or slot.saving or dst.state != model.RESUMING:
            return OUTCOME_SKIPPED
        oracle = self.oracle
        data = oracle.transfer_source(view, dst)
        if data is None:
            return OUTCOME_SKIPPED
        self._arc(dst, "transfer")
        ddev = self.devices[op.a]
        complete = data in oracle.known and not dst.resume  # bytes past one stream may be refused (mtty: ENOMEM)
        write = ddev.write
        sent = 0
        for piece in segments(data, op.b):
            while piece:
                for _ in range(EINTR_RETRIES):
                    err, n = write(slot.fd, piece)
                    if err != errno.EINTR:
                        break
                if err:
                    if self.trace_on:
                        self.note(f"transfer write of {len(piece)} bytes -> {model.errname(err)}")
                    return self._transfer_refused(op, dst, ddev, data, sent + len(piece), err, complete)
                oracle.on_transfer_write(dst, piece, n)
                sent += n
                piece = piece[n:]
        self._check_frozen(dst, ddev)  # once a transfer: see _transfer_refused
        if self.trace_on:
            self.note(f"transferred {len(data)} bytes{' (a complete stream)' if complete else ''}")
        return 0

    def v2_set(self, op, view, dev):
        cur, new = view.state, op.b
        self._arc(view, "set", new)
        err, fd = dev.set_state(new)
        gerr, got = dev.get_state()
        fault = self.fault_fired(op.dev)
        if self.trace_on:
            self.note(f"SET {model.v2_name(new)} -> {model.errname(err)}, data_fd {fd}; GET {model.v2_name(got)}")
        self.oracle.on_set(view, cur, new, err, fd, got, gerr, fault, self.load_digests[op.dev])
        if err or fd >= 0 or view.state != cur:  # sessions may have opened or ended
            self.oracle.check_files(view, dev.live_files())
        return err

    def v2_get(self, op, view, dev):
        self._arc(view, "get")
        err, got = dev.get_state()
        if self.trace_on:
            self.note(f"GET -> {model.errname(err)} {model.v2_name(got)}")
        self.oracle.on_get(view, err, got)
        return 0

    def v2_read(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return OUTCOME_SKIPPED
        self._arc(view, "read")
        err, data = dev.read(slot.fd, op.b)
        if self.trace_on:
            self.note(f"read fd {slot.fd} n={op.b} -> {model.errname(err)}, {len(data)} bytes")
        self.oracle.on_read(view, slot, op.b, err, data, self.fault_fired(op.dev), self.source_digests[op.dev])
        self._check_frozen(view, dev)
        return err if err else (0 if data else OUTCOME_EMPTY)

    def v2_drain(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return OUTCOME_SKIPPED
        self._arc(view, "drain")
        on_read = self.oracle.on_read
        digest = self.source_digests[op.dev]
        last = [0, 0]  # errno of the read that ended it, bytes read

        def judge(err, data):
            last[1] += len(data)
            if err == errno.EINTR and self.fault_fired(op.dev):
                return False
            last[0] = err
            return on_read(view, slot, DRAIN_CHUNK, err, data, self.fault_fired(op.dev), digest)

        ended = read_to_end(dev, slot.fd, judge)
        if self.trace_on:
            self.note(f"drain fd {slot.fd} -> {last[1]} bytes, then "
                      f"{model.errname(last[0]) if last[0] else 'end' if ended else 'no end'}")
        self.oracle.drained(view, ended, _V2_UNENDED)
        return last[0]

    def v2_write(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return OUTCOME_SKIPPED
        self._arc(view, "write")
        err, n = dev.write(slot.fd, op.data)
        if self.trace_on:
            self.note(f"write fd {slot.fd} {len(op.data)} bytes -> {model.errname(err)}, {n}")
        self.oracle.on_write(view, slot, err, n, op.data, self.fault_fired(op.dev))
        self._check_frozen(view, dev)
        return err

    def v2_close(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return OUTCOME_SKIPPED
        self._arc(view, "close")
        err = dev.close(slot.fd)
        if self.trace_on:
            self.note(f"close fd {slot.fd} -> {model.errname(err)}")
        self.oracle.on_close(view, slot, err)
        return err

    def v2_seek(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return OUTCOME_SKIPPED
        self._arc(view, "seek")
        err = dev.seek(slot.fd)
        if self.trace_on:
            self.note(f"lseek fd {slot.fd} -> {model.errname(err)}")
        self.oracle.on_seek(slot, err)
        return err

    def v2_precopy(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return OUTCOME_SKIPPED
        self._arc(view, "precopy")
        err, initial, dirty = dev.precopy_info(slot.fd)
        if self.trace_on:
            self.note(f"PRECOPY_INFO fd {slot.fd} -> {model.errname(err)}, initial {initial}, dirty {dirty}")
        self.oracle.on_precopy(view, slot, err, initial, dirty, self.fault_fired(op.dev))
        return err

    def v2_datasize(self, op, view, dev):
        self._arc(view, "datasize")
        err, size = dev.data_size()
        if self.trace_on:
            self.note(f"MIG_DATA_SIZE -> {model.errname(err)}, {size}")
        self.oracle.on_datasize(err)
        return 0

    def v2_feature(self, op, view, dev):
        self._arc(view, "feature")
        # A SET carries the current state, so a framing test never moves the device.
        payload = model.MIG_STATE_PAYLOAD.pack(view.state, -1)
        err, _out = dev.feature(op.b, payload, op.a)
        if self.trace_on:
            self.note(f"FEATURE flags {op.b:#x} argsz {op.a} -> {model.errname(err)}")
        self.oracle.on_feature(view, op.b, op.a, err)
        return err

    # -- v1 ---------------------------------------------------------------------

    def v1_reset(self, op, view, dev):
        self._arc(view, "reset")
        err = dev.reset()
        _, got = dev.field_read(*_DEVICE_STATE)
        if self.trace_on:
            self.note(f"reset -> {model.errname(err)}; device_state {model.v1_name(got)}")
        self.oracle.on_reset(view, err, got, dev.live_files())
        return err

    v1_activity = _common_activity
    v1_fault = _common_fault
    v1_mangle = _common_mangle
    v1_reopen = _common_reopen
    v1_rdreg = _common_rdreg
    v1_wrreg = _common_wrreg
    v1_race = _common_race

    def v1_set(self, op, view, dev):
        cur, value = view.state, op.b
        self._arc(view, "set", value)
        err = dev.field_write(*_DEVICE_STATE, value)
        _, got = dev.field_read(*_DEVICE_STATE)
        fault = self.fault_fired(op.dev)
        if self.trace_on:
            self.note(f"device_state := {value:#x} -> {model.errname(err)}; reads {model.v1_name(got)}")
        self.oracle.on_set(view, cur, value, err, got, fault, self.load_digests[op.dev])
        self.oracle.check_files(view, dev.live_files())
        return err

    def v1_get(self, op, view, dev):
        self._arc(view, "get")
        err, got = dev.field_read(*_DEVICE_STATE)
        if self.trace_on:
            self.note(f"device_state -> {model.errname(err)} {model.v1_name(got)}")
        self.oracle.on_get(view, err, got)
        return 0

    def v1_rd(self, op, view, dev):
        name = V1_FIELD_NAMES[op.a]
        self._arc(view, f"rd:{name}")
        err, value = dev.field_read(*V1_FIELDS[name])
        if self.trace_on:
            self.note(f"{name} -> {model.errname(err)} {value}")
        self.oracle.on_field_read(view, name, err, value)
        return err

    def v1_wr(self, op, view, dev):
        name = V1_FIELD_NAMES[op.a]
        if model.V1_FIELD_ACCESS[name] == "rw":
            return self.v1_set(op._replace(b=op.b & 0xFFFFFFFF), view, dev)
        self._arc(view, f"wr:{name}")
        read_only = self.oracle.read_only(view, name)
        before = dev.field_read(*V1_FIELDS[name])[1] if read_only else None
        err = dev.field_write(*V1_FIELDS[name], op.b)
        if self.trace_on:
            self.note(f"{name} := {op.b:#x} -> {model.errname(err)}")
        readback = None
        if read_only or model.V1_FIELD_ACCESS[name] == "zero":
            rerr, value = dev.field_read(*V1_FIELDS[name])
            readback = value if not rerr else None
        self.oracle.on_field_write(view, name, err, readback, before)
        return err

    def _v1_save_iteration(self, op, view, dev) -> bool:
        """One v1 saving iteration; returns True when it ends (pending_bytes 0, or an error)."""
        answer = v1_save_iteration(dev, V1_FIELDS, model.v1_saving(view.state))
        return self.oracle.on_save_iteration(view, answer, self.fault_fired(op.dev), self.source_digests[op.dev])

    def v1_save(self, op, view, dev):
        self._arc(view, "save")
        self._v1_save_iteration(op, view, dev)
        if self.trace_on:
            self.note(f"save iteration: captured {len(view.capture)} bytes")
        return 0

    def v1_drain(self, op, view, dev):
        self._arc(view, "drain")
        ended = False
        for _ in range(DRAIN_LIMIT):
            if self._v1_save_iteration(op, view, dev):
                ended = True
                break
        if self.trace_on:
            self.note(f"drain: captured {len(view.capture)} bytes")
        self.oracle.drained(view, ended, _V1_UNENDED)
        return 0

    def v1_rdwin(self, op, view, dev):
        self._arc(view, "rdwin")
        err, offset = dev.field_read(*V1_FIELDS["data_offset"])
        self.oracle.on_window_access(view, None, err)
        if err or offset is None:
            return err or OUTCOME_SKIPPED
        err, data = dev.region_read(offset, op.b)
        if self.trace_on:
            self.note(f"window read {op.b} bytes -> {model.errname(err)}")
        return err

    def v1_wrwin(self, op, view, dev):
        self._arc(view, "wrwin")
        err, offset = dev.field_read(*V1_FIELDS["data_offset"])
        if err or offset is None:
            self.oracle.on_window_access(view, None, err)
            return err or OUTCOME_SKIPPED
        err, _ = dev.region_write(offset, op.data)
        if not err:
            err = dev.field_write(*V1_FIELDS["data_size"], len(op.data))
        self.oracle.on_window_access(view, op.data, err, self.fault_fired(op.dev))
        if self.trace_on:
            self.note(f"window write {len(op.data)} bytes + data_size -> {model.errname(err)}")
        self._check_frozen(view, dev)
        return err

    def v1_transfer(self, op, view, dev):
        dst = self.views[op.a]
        if dst.state != model.V1_RESUMING_STATE:
            return OUTCOME_SKIPPED
        oracle = self.oracle
        data = oracle.transfer_source(view, dst)
        if data is None:
            return OUTCOME_SKIPPED
        self._arc(dst, "transfer")
        ddev = self.devices[op.a]
        complete = data in oracle.known and not dst.resume  # after junk in the session, a refusal is fair
        sent = 0
        for piece in segments(data, op.b):
            while piece:
                err, offset, taken = v1_write_chunk(ddev, V1_FIELDS, piece, V1_HEADER_SIZE)
                if err == errno.EINTR and self.fault_fired(op.a):
                    continue
                if err:
                    return self._transfer_refused(op, dst, ddev, data, sent + len(piece), err, complete)
                oracle.on_transfer_chunk(dst, piece, offset, taken)
                sent += taken
                piece = piece[taken:]
        self._check_frozen(dst, ddev)  # once a transfer: see _transfer_refused
        if self.trace_on:
            self.note(f"transferred {len(data)} bytes{' (a complete stream)' if complete else ''}")
        return 0


__all__ = ["OUTCOME_EMPTY", "OUTCOME_SKIPPED", "V1_DONE", "V1_MORE", "Executor"]
