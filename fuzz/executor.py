"""The executor: run a program on a target, let the oracle judge every step.

``Executor(target).run(program)`` returns the first :class:`Finding` or None.
With ``trace=True`` it also records, for every op, what the device answered
and the state read back (``executor.trace``), which ``repro`` prints; the
fuzzing loop runs without it.

Per op, the executor calls the device, then the oracle's ``on_*`` judgement.
It also reports protocol-state feedback (``set_arc_feedback``): a coverage
counter for each (state before, op, outcome, state after), so a never-seen
protocol arc counts as new coverage even where code coverage is flat.
"""
from __future__ import annotations

import errno
import traceback

from harness.uapi import V1_FIELD_NAMES, V1_FIELDS, V1_SAVING

from . import model
from .oracles import DeviceView, Finding, FindingRaised, V1Oracle, V2Oracle, errname, v1_name, v2_name
from .program import FAULT_KINDS, MANGLE_KINDS, OPS, Program, format_op
from .transport import segments

DRAIN_LIMIT = 256  # reads per drain before "the stream never ends"
DRAIN_CHUNK = 4096
EINTR_RETRIES = 3

try:  # the simulator's watchdog; a real device's comes from its harness
    from harness.sim.core import DeviceHang
except ImportError:  # pragma: no cover
    class DeviceHang(Exception):
        pass


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
        self.trace_on = trace
        self.trace: list = []
        self.step = 0
        self.arc_trace = None
        self.arc_base = self.arc_mask = 0
        self.arcs_seen = bytearray(1)
        self.after_program = getattr(target, "after_program", None)  # e.g. kernel log splats (harness.kernel)
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

    def set_arc_feedback(self, trace_branch, base: int, size: int) -> None:
        """Report each (state, op, outcome, state) arc to counter ``base + key % size``."""
        self.arc_trace, self.arc_base, self.arc_mask = trace_branch, base, size - 1
        self.arcs_seen = bytearray(size)

    def run(self, prog: Program) -> Finding | None:
        target = self.target
        target.fresh()
        oracle = self.oracle
        oracle.begin()
        initial = model.RUNNING if self.proto == "v2" else model.V1_RESET_STATE
        views = self.views = [DeviceView(initial) for _ in self.devices]
        self.trace = []
        trace_branch, base, mask, seen = self.arc_trace, self.arc_base, self.arc_mask, self.arcs_seen
        handlers = self.handlers
        devices = self.devices
        armed = self.armed = [False] * len(views)
        step = 0
        try:
            for step, op in enumerate(prog.ops):
                self.step = step
                view = views[op.dev]
                before = view.state
                outcome = handlers[op.code](op, view, devices[op.dev])
                if True in armed:  # a fault is armed: resync with the device if it fired
                    self._after_faults()
                if trace_branch is not None:
                    key = (((before * 32 + op.code) * 128 + (outcome & 127)) * 8 + (view.state & 7)) & mask
                    seen[key] = 1
                    trace_branch(base + key)
            if self.after_program is not None:
                self.after_program(oracle)
        except FindingRaised as fr:
            return self._finish(fr.finding, prog, step)
        except DeviceHang as e:
            return self._finish(Finding("hang", step, "the call returns", f"no return: {e}",
                                        oracle.arc), prog, step)
        except Exception as e:  # noqa: BLE001 - anything escaping the target is a finding
            return self._finish(Finding("target-exception", step, "no exception",
                                        f"{type(e).__name__}: {e}", oracle.arc,
                                        detail=traceback.format_exc()), prog, step)
        return None

    def _finish(self, finding: Finding, prog: Program, step: int) -> Finding:
        self.step = step
        op = prog.ops[step] if step < len(prog.ops) else None
        text = format_op(self.proto, op) if op else ""
        if self.trace_on:
            self.note(f"FINDING {finding.kind}: expected {finding.expected}; observed {finding.observed}")
        return finding._replace(op=text, step=step)

    def note(self, text: str) -> None:
        self.trace.append((self.step, text))

    def fault_fired(self, op) -> bool:
        return self.armed[op.dev] and self.target.fault_fired(op.dev)

    def _after_faults(self) -> None:
        """A fault fired during the op: resync with the state the device reports.

        Any internal step can fail (data path too), and a hardware error may put
        the device in its error state; any other state change is a finding."""
        target = self.target
        for i, view in enumerate(self.views):
            if not (self.armed[i] and target.fault_fired(i)):
                continue
            target.clear_fault(i)
            self.armed[i] = False
            dev = self.devices[i]
            if self.proto == "v2":
                _, got = dev.get_state()
                error = model.ERROR
            else:
                got = self._v1_read_field(dev, "device_state")[1]
                error = model.V1_ERROR
            if got == error and view.state != error:
                view.state = error
                for s in view.slots:
                    s.live = None
                view.frozen = None
            elif got != view.state:
                self.oracle.fail("bad-state-after-failure", f"{self.oracle.state_name(view.state)} or the error state",
                                 self.oracle.state_name(got))

    def _arc(self, view: DeviceView, name: str, to: int | None = None) -> None:
        self.oracle.arc_at = (view.state, name, to)

    # -- ops both protocols share -----------------------------------------------

    def _common_activity(self, op, view, dev):
        self._arc(view, "activity")
        dev.activity(op.b)
        view.pc_expect = -1
        if self.has_digest and self._stopped(view):
            self.oracle.check_frozen(view, dev.digest())
        return 0

    def _common_fault(self, op, view, dev):
        if self.supports_faults:
            self.target.clear_fault(op.dev)
            self.target.arm_fault(op.dev, op.a, FAULT_KINDS[op.b])
            self.armed[op.dev] = True
        return 0

    def _common_mangle(self, op, view, dev):
        self.oracle.mangle(view, MANGLE_KINDS[op.a], op.b)
        if self.trace_on:
            self.note(f"capture now {len(view.capture)} bytes")
        return 0

    def _stopped(self, view) -> bool:
        if self.proto == "v2":
            return view.state in (model.STOP, model.STOP_COPY, model.RESUMING)
        return view.state in model.V1_STOPPED_STATES

    def _resume_source(self, src: DeviceView, dst: DeviceView):
        """Bytes to transfer and the provenance they give the resume session."""
        data = bytes(src.capture)
        if not data:
            return None
        dst.resume_kind = "mixed" if dst.resume or dst.resume_kind else (
            "derived-damaged" if src.mangled else "derived")
        return data

    # -- v2 ---------------------------------------------------------------------

    def v2_reset(self, op, view, dev):
        self._arc(view, "reset")
        err = dev.reset()
        gerr, got = dev.get_state()
        if self.trace_on:
            self.note(f"reset -> {errname(err)}; state {v2_name(got)}")
        self.oracle.on_reset(view, err, got, gerr, dev.live_files())
        return err

    v2_activity = _common_activity
    v2_fault = _common_fault
    v2_mangle = _common_mangle

    def v2_transfer(self, op, view, dev):
        dst = self.views[op.a]
        slot = dst.slot(0)
        if slot is None or not slot.live or slot.saving or dst.state != model.RESUMING:
            return 255  # nothing to write into
        data = self._resume_source(view, dst)
        if data is None:
            return 255
        self._arc(dst, "transfer")
        ddev = self.devices[op.a]
        valid = data in self.oracle.known and not dst.resume  # bytes past one stream may be refused (mtty: ENOMEM)
        for piece in segments(data, op.b):
            while piece:
                for _ in range(EINTR_RETRIES):
                    err, n = ddev.write(slot.fd, piece)
                    if err != errno.EINTR:
                        break
                if err:
                    fault = self.fault_fired(op._replace(dev=op.a))
                    if self.trace_on:
                        self.note(f"transfer write of {len(piece)} bytes -> {errname(err)}")
                    if valid and not fault:
                        self.oracle.fail("valid-stream-rejected",
                                         "every write of a complete untouched stream succeeds",
                                         f"{errname(err)} after {len(dst.resume)} bytes")
                    dst.resume_kind = "mixed"
                    return err
                if n <= 0:  # a writer looping on it would spin forever (QEMU's load thread does)
                    self.oracle.fail("stream-protocol", f"write of {len(piece)} bytes makes progress",
                                     f"returned {n}")
                dst.resume += piece[:n]
                piece = piece[n:]
        if self.trace_on:
            self.note(f"transferred {len(data)} bytes{' (a complete stream)' if valid else ''}")
        return 0

    def v2_set(self, op, view, dev):
        cur, new = view.state, op.b
        self._arc(view, "set", new)
        err, fd = dev.set_state(new)
        gerr, got = dev.get_state()
        fault = self.fault_fired(op)
        if self.trace_on:
            self.note(f"SET {v2_name(new)} -> {errname(err)}, data_fd {fd}; GET {v2_name(got)}")
        self.oracle.on_set(view, cur, new, err, fd, got, gerr, fault, dev, self.load_digests[op.dev])
        if err or fd >= 0 or view.state != cur:  # sessions may have opened or ended
            self.oracle.check_files(view, dev.live_files())
        return err

    def v2_get(self, op, view, dev):
        self._arc(view, "get")
        err, got = dev.get_state()
        if self.trace_on:
            self.note(f"GET -> {errname(err)} {v2_name(got)}")
        if err:
            self.oracle.fail("rejected-valid", "GET succeeds", errname(err))
        if got != view.state:
            self.oracle.fail("state-mismatch", v2_name(view.state), v2_name(got))
        return 0

    def v2_read(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return 255
        self._arc(view, "read")
        err, data = dev.read(slot.fd, op.b)
        if self.trace_on:
            self.note(f"read fd {slot.fd} n={op.b} -> {errname(err)}, {len(data)} bytes")
        self.oracle.on_read(view, slot, op.b, err, data, self.fault_fired(op), self.source_digests[op.dev])
        if self.has_digest and self._stopped(view):
            self.oracle.check_frozen(view, dev.digest())
        return err if err else (0 if data else 64)

    def v2_drain(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return 255
        self._arc(view, "drain")
        oracle = self.oracle
        total = 0
        for _ in range(DRAIN_LIMIT):
            err, data = dev.read(slot.fd, DRAIN_CHUNK)
            if err == errno.EINTR and self.fault_fired(op):
                continue
            total += len(data)
            if oracle.on_read(view, slot, DRAIN_CHUNK, err, data, self.fault_fired(op), self.source_digests[op.dev]):
                if self.trace_on:
                    self.note(f"drain fd {slot.fd} -> {total} bytes, then {errname(err) if err else 'end'}")
                return err
        oracle.fail("hang", "the stream ends", f"still sending after {total} bytes")

    def v2_write(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return 255
        self._arc(view, "write")
        err, n = dev.write(slot.fd, op.data)
        if self.trace_on:
            self.note(f"write fd {slot.fd} {len(op.data)} bytes -> {errname(err)}, {n}")
        self.oracle.on_write(view, slot, err, n, op.data)
        if self.has_digest and self._stopped(view):
            self.oracle.check_frozen(view, dev.digest())
        return err

    def v2_close(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return 255
        self._arc(view, "close")
        err = dev.close(slot.fd)
        if self.trace_on:
            self.note(f"close fd {slot.fd} -> {errname(err)}")
        self.oracle.on_close(view, slot, err)
        return err

    def v2_seek(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return 255
        self._arc(view, "seek")
        err = dev.seek(slot.fd)
        if self.trace_on:
            self.note(f"lseek fd {slot.fd} -> {errname(err)}")
        self.oracle.on_seek(slot, err)
        return err

    def v2_precopy(self, op, view, dev):
        slot = view.slot(op.a)
        if slot is None:
            return 255
        self._arc(view, "precopy")
        err, initial, dirty = dev.precopy_info(slot.fd)
        if self.trace_on:
            self.note(f"PRECOPY_INFO fd {slot.fd} -> {errname(err)}, initial {initial}, dirty {dirty}")
        self.oracle.on_precopy(view, slot, err, initial, dirty, self.fault_fired(op))
        return err

    def v2_datasize(self, op, view, dev):
        self._arc(view, "datasize")
        err, size = dev.data_size()
        if self.trace_on:
            self.note(f"MIG_DATA_SIZE -> {errname(err)}, {size}")
        if err:
            self.oracle.fail("rejected-valid", "MIG_DATA_SIZE succeeds in every state", errname(err))
        return 0

    def v2_feature(self, op, view, dev):
        self._arc(view, "feature")
        expect = model.feature_errno(op.b, op.a, self.target.flags, view.state)
        # A SET carries the current state, so a framing test never moves the device.
        payload = model.MIG_STATE_PAYLOAD.pack(view.state, -1)
        err, _out = dev.feature(op.b, payload, op.a)
        if self.trace_on:
            self.note(f"FEATURE flags {op.b:#x} argsz {op.a} -> {errname(err)}"
                      f" (expected {'any' if expect is None else errname(expect)})")
        if expect is None:
            return err
        if err and not expect:
            self.oracle.fail("rejected-valid", "success", errname(err))
        if expect and not err:
            self.oracle.fail("accepted-invalid", errname(expect), "success")
        return err

    # -- v1 ---------------------------------------------------------------------

    def _v1_read_field(self, dev, name: str) -> tuple[int, int | None]:
        off, size = V1_FIELDS[name]
        err, raw = dev.region_read(off, size)
        return err, (int.from_bytes(raw, "little") if not err and len(raw) == size else None)

    def _v1_write_field(self, dev, name: str, value: int) -> int:
        off, size = V1_FIELDS[name]
        return dev.region_write(off, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))[0]

    def v1_reset(self, op, view, dev):
        self._arc(view, "reset")
        err = dev.reset()
        _, got = self._v1_read_field(dev, "device_state")
        if self.trace_on:
            self.note(f"reset -> {errname(err)}; device_state {v1_name(got)}")
        self.oracle.on_reset(view, err, got, dev.live_files())
        return err

    v1_activity = _common_activity
    v1_fault = _common_fault
    v1_mangle = _common_mangle

    def v1_set(self, op, view, dev):
        cur, value = view.state, op.b
        self._arc(view, "set", value)
        err = self._v1_write_field(dev, "device_state", value)
        _, got = self._v1_read_field(dev, "device_state")
        fault = self.fault_fired(op)
        if self.trace_on:
            self.note(f"device_state := {value:#x} -> {errname(err)}; reads {v1_name(got)}")
        self.oracle.on_set(view, cur, value, err, got, fault, self.load_digests[op.dev])
        self.oracle.check_files(view, dev.live_files())
        return err

    def v1_get(self, op, view, dev):
        self._arc(view, "get")
        err, got = self._v1_read_field(dev, "device_state")
        if self.trace_on:
            self.note(f"device_state -> {errname(err)} {v1_name(got)}")
        self.oracle.on_get(view, err, got)
        return 0

    def v1_rd(self, op, view, dev):
        name = V1_FIELD_NAMES[op.a]
        access = model.V1_FIELD_ACCESS[name]
        self._arc(view, f"rd:{name}")
        err, value = self._v1_read_field(dev, name)
        if self.trace_on:
            self.note(f"{name} -> {errname(err)} {value}")
        if access == "rw":
            self.oracle.on_get(view, err, value)
        elif access == "zero" and not err and value:
            self.oracle.fail("accepted-invalid", f"{name} reads 0", hex(value))
        if name in model.V1_READ_SIDE_EFFECTS and model.v1_saving(view.state):
            view.capture_tainted = True  # the read moved the saving iteration outside `save`
        elif name == "data_offset" and value is not None and not err:
            self.oracle.check_window(value, 0)
        return err

    def v1_wr(self, op, view, dev):
        name = V1_FIELD_NAMES[op.a]
        access = model.V1_FIELD_ACCESS[name]
        if access == "rw":
            return self.v1_set(op._replace(b=op.b & 0xFFFFFFFF), view, dev)
        self._arc(view, f"wr:{name}")
        err = self._v1_write_field(dev, name, op.b)
        if self.trace_on:
            self.note(f"{name} := {op.b:#x} -> {errname(err)}")
        if model.v1_saving(view.state):
            view.capture_tainted = True  # a stray write may disturb the saving iteration
        if access == "data":
            view.resume_kind = "mixed"
            if not err and view.state == model.V1_RESUMING_STATE:
                view.resume_opaque = True  # the device consumed window bytes we did not write
        elif access == "zero":
            rerr, value = self._v1_read_field(dev, name)
            if not rerr and value:
                self.oracle.fail("accepted-invalid", f"writes to {name} are ignored", f"reads {value:#x}")
        # "ro" fields cannot be read back without moving the stream (V1_READ_SIDE_EFFECTS): unjudged
        return err

    def _v1_save_iteration(self, op, view, dev) -> bool:
        """One §1.5 iteration; returns True when pending_bytes is 0."""
        oracle = self.oracle
        err, pending = self._v1_read_field(dev, "pending_bytes")
        if err:
            if not self.fault_fired(op):
                oracle.fail("rejected-valid", "pending_bytes can be read", errname(err))
            return True
        if not model.v1_saving(view.state):
            return True
        if pending == 0:
            if view.state == V1_SAVING:
                oracle.stream_complete(view, self.source_digests[op.dev]())
            return True
        err, offset = self._v1_read_field(dev, "data_offset")
        if err:
            if not self.fault_fired(op):
                oracle.fail("rejected-valid", "data_offset can be read while saving", errname(err))
            return True
        err, size = self._v1_read_field(dev, "data_size")
        if err:
            oracle.fail("rejected-valid", "data_size can be read while saving", errname(err))
        oracle.check_window(offset, size)
        if size == 0:
            return False
        err, data = dev.region_read(offset, size)
        if err:
            oracle.fail("rejected-valid", "the staged chunk can be read", errname(err))
        oracle.stream_data(view, data)
        return False

    def v1_save(self, op, view, dev):
        self._arc(view, "save")
        self._v1_save_iteration(op, view, dev)
        if self.trace_on:
            self.note(f"save iteration: captured {len(view.capture)} bytes")
        return 0

    def v1_drain(self, op, view, dev):
        self._arc(view, "drain")
        for _ in range(DRAIN_LIMIT):
            if self._v1_save_iteration(op, view, dev):
                if self.trace_on:
                    self.note(f"drain: captured {len(view.capture)} bytes")
                return 0
        self.oracle.fail("hang", "pending_bytes reaches 0",
                         f"still pending after {DRAIN_LIMIT} iterations ({len(view.capture)} bytes)")

    def v1_rdwin(self, op, view, dev):
        self._arc(view, "rdwin")
        err, offset = self._v1_read_field(dev, "data_offset")
        if model.v1_saving(view.state):
            view.capture_tainted = True  # reading data_offset staged a chunk the capture misses
        if err or offset is None:
            return err or 255
        err, data = dev.region_read(offset, op.b)
        if self.trace_on:
            self.note(f"window read {op.b} bytes -> {errname(err)}")
        return err

    def v1_wrwin(self, op, view, dev):
        self._arc(view, "wrwin")
        err, offset = self._v1_read_field(dev, "data_offset")
        if model.v1_saving(view.state):
            view.capture_tainted = True  # reading data_offset staged a chunk the capture misses
        if err or offset is None:
            return err or 255
        err, _ = dev.region_write(offset, op.data)
        if not err:
            err = self._v1_write_field(dev, "data_size", len(op.data))
            if not err and view.state == model.V1_RESUMING_STATE:
                view.resume += op.data
        view.resume_kind = "mixed"
        if self.trace_on:
            self.note(f"window write {len(op.data)} bytes + data_size -> {errname(err)}")
        if self.has_digest and self._stopped(view):
            self.oracle.check_frozen(view, dev.digest())
        return err

    def v1_transfer(self, op, view, dev):
        dst = self.views[op.a]
        if dst.state != model.V1_RESUMING_STATE:
            return 255
        data = self._resume_source(view, dst)
        if data is None:
            return 255
        self._arc(dst, "transfer")
        ddev = self.devices[op.a]
        oracle = self.oracle
        valid = data in oracle.known
        window = self.target.region_size
        for piece in segments(data, op.b):
            while piece:
                err, offset = self._v1_read_field(ddev, "data_offset")
                if not err:
                    oracle.check_window(offset, 1)  # room for at least one byte
                    room = window - offset
                    chunk = piece[:room]
                    err, _ = ddev.region_write(offset, chunk)
                    if not err:
                        err = self._v1_write_field(ddev, "data_size", len(chunk))
                if err == errno.EINTR and self.fault_fired(op._replace(dev=op.a)):
                    continue
                if err:
                    if valid and not self.fault_fired(op._replace(dev=op.a)):
                        oracle.fail("valid-stream-rejected",
                                    "every chunk of a complete untouched stream is accepted",
                                    f"{errname(err)} after {len(dst.resume)} bytes")
                    dst.resume_kind = "mixed"
                    return err
                dst.resume += chunk
                piece = piece[len(chunk):]
                if self.has_digest:
                    oracle.check_frozen(dst, ddev.digest())
        if self.trace_on:
            self.note(f"transferred {len(data)} bytes{' (a complete stream)' if valid else ''}")
        return 0

