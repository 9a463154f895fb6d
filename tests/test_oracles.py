"""The oracles (fuzz/oracles.py) against a scripted fake device, driven through ``Executor.run``.

Each device of :class:`FakeTarget` is the correct simulator with some answers replaced by a
script (``fn(orig, *args)``: the real method and the call's arguments). For every rule the
oracle enforces there is a test where the device answers wrongly (the finding's kind, its
check and, where it matters, its step and cause are asserted) and one where it answers
rightly in the nearest legal way (no finding). Where the oracle excuses a wrong answer
because an injected fault fired during the op, the same wrong answer is run with a fault
that fired (silent) and without (flagged); where it does not excuse it, with a fault too.

A scripted fault is armed by the program's ``fault`` op and "fires" when a script calls
``target.fire(dev)`` (``real_faults=False``: the simulator's own fault counter stays idle).
"""
from __future__ import annotations

import ast
import dataclasses
import errno

import pytest

import fuzz.oracles
from fuzz import model
from fuzz.executor import Executor
from fuzz.findings import FINDING_KINDS, KIND_CHECKS, Check
from fuzz.program import parse_program
from harness import runtime
from harness.base import DeviceHang
from harness.runtime import RACE_FAILED, RACE_FD, RACE_GOT, RACE_OK, race_outcome
from harness.sim import SimTarget, stream
from harness.uapi import V1_FIELDS, V1_HEADER_SIZE

ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P = range(8)
FLAG_SETS = (0x1, 0x3, 0x5, 0x7)
EINVAL, EIO, ENOMEM, ENODEV, EBADF, ENOMSG, ESPIPE, EINTR = (
    errno.EINVAL, errno.EIO, errno.ENOMEM, errno.ENODEV, errno.EBADF, errno.ENOMSG, errno.ESPIPE, errno.EINTR)
OK, FAILED, GET_FAILED, HANG, NONE = Check("ok"), Check("failed"), Check("get_failed"), Check("hang"), Check()
V1_STOP, V1_RUN, V1_SAVING, V1_PRECOPY, V1_RESUMING, V1_ERROR = 0b000, 0b001, 0b010, 0b011, 0b100, 0b110
OFF = {name: off for name, (off, _size) in V1_FIELDS.items()}


# =============================================================================
# the fake
# =============================================================================


class FakeDevice:
    """The correct simulated device; ``script[name]`` replaces one method's answers.

    Its v1 header fields go through its (scripted) region_read/region_write, as a kernel
    device's do (the runtime's VfioDevice encoding), so a script of the region sees them."""

    field_read = runtime.VfioDevice.field_read
    field_write = runtime.VfioDevice.field_write

    def __init__(self, real):
        self.real = real
        self.script = {}

    def __getattr__(self, name):
        real = self.__dict__["real"]
        orig = getattr(real, name)
        fn = self.__dict__["script"].get(name)
        if fn is None:
            return orig
        return lambda *args: fn(orig, *args)


class FakeTarget:
    """A target over two FakeDevices (see harness/sim/__init__.py SimTarget for the interface)."""

    supports_faults = True

    def __init__(self, proto="v2", flags=0x7, *, has_digest=True, validates_stream=True, real_faults=True,
                 splats=None, resave=None, retains_data=False):
        self.sim = SimTarget(proto, flags)
        self.retains_data = retains_data
        self.proto = proto
        self.flags = self.sim.flags
        self.region_size = self.sim.region_size
        self.has_digest = has_digest
        self.validates_stream = validates_stream
        self.real_faults = real_faults
        self.devices = [FakeDevice(d) for d in self.sim.devices]
        self.fired = [False, False]
        if hasattr(self.sim, "profile"):  # the device profile (registers programs may touch)
            self.profile = self.sim.profile
        if splats is not None:  # a kernel log: what the program logs, a read takes (as /dev/kmsg's does)
            self.kernel_log = list(splats)
            self.kernel_reports = self.read_kernel_log
        if resave is not None:
            self.resave = resave

    def real(self, dev=0):
        return self.sim.devices[dev]

    def read_kernel_log(self) -> list:
        taken, self.kernel_log = self.kernel_log, []
        return taken

    def script(self, name, fn, dev=0) -> FakeTarget:
        self.devices[dev].script[name] = fn
        return self

    def fire(self, dev=0) -> None:
        self.fired[dev] = True

    def fresh(self):
        self.sim.fresh()
        self.fired = [False, False]

    def arm_fault(self, dev, nth, kind):
        if self.real_faults:
            self.sim.arm_fault(dev, nth, kind)

    def fault_fired(self, dev):
        return self.fired[dev] or self.sim.fault_fired(dev)

    def clear_fault(self, dev):
        self.fired[dev] = False
        self.sim.clear_fault(dev)

    def close(self):
        self.sim.close()


def run(target, body: str):
    lines = "\n".join(line.strip() for line in body.strip().splitlines())
    return Executor(target).run(parse_program(f"migfuzz-program 1 {target.proto}\n{lines}\n"))


def rendered(finding) -> None:
    """A finding renders for people: what was expected, what was observed, on which arc, at which op."""
    for text in (finding.expected, finding.observed, finding.arc, finding.op):
        assert isinstance(text, str) and text.strip(), finding
    assert " -" in finding.arc and "->" in finding.arc, finding


def expect(finding, kind, check, step=None, cause=None):
    assert finding is not None, f"expected {kind}, got no finding"
    assert (finding.kind, finding.check) == (kind, check), finding
    assert finding.check.test in KIND_CHECKS[kind], finding  # a check the kind may carry
    rendered(finding)
    if step is not None:
        assert finding.step == step, finding
    if cause is not None:
        assert finding.cause == cause, finding
    return finding


def silent(finding):
    assert finding is None, finding


def v2(flags=0x7, **kw) -> FakeTarget:
    return FakeTarget("v2", flags, **kw)


def v1(**kw) -> FakeTarget:
    return FakeTarget("v1", 0, **kw)


def const(*answer):
    """A script that always gives ``answer`` (one value, or a tuple of several)."""
    value = answer[0] if len(answer) == 1 else answer
    return lambda orig, *args: value


def on_call(n, answer, then=None):
    """A script that answers the ``n``-th call (1-based) with ``answer(orig, *args)``, else the real answer."""
    calls = [0]

    def fn(orig, *args):
        calls[0] += 1
        if calls[0] == n:
            return answer(orig, *args)
        return orig(*args)
    return fn


# A complete v2 migration: 0 saves (STOP_COPY), 1 loads at step 4.
V2_MIGRATE = """
    set 0 state=STOP_COPY
    drain 0 fd=0
    set 1 state=RESUMING
    transfer 0 dst=1 seg=0
    set 1 state=STOP
"""
# The same on v1 (savevm flavour): the load is step 5.
V1_MIGRATE = """
    set 0 value=0b010
    drain 0
    set 0 value=0b000
    set 1 value=0b100
    transfer 0 dst=1 seg=0
    set 1 value=0b001
"""


def test_fake_is_transparent():
    # with no script the fake is the correct simulator: the building blocks run clean
    for flags in FLAG_SETS:
        silent(run(v2(flags), V2_MIGRATE + "set 1 state=RUNNING\nget 1"))
    silent(run(v1(), V1_MIGRATE + "get 1"))


def test_every_kind_is_tested_here():
    # each finding kind is expected by at least one test of this file
    with open(__file__) as f:
        text = f.read()
    assert not [k for k in FINDING_KINDS if f'"{k}", ' not in text]


# =============================================================================
# v2: SET
# =============================================================================


def test_v2_get_after_set_fails():
    t = v2().script("get_state", const(EIO, RUNNING))
    expect(run(t, "set 0 state=STOP"), "rejected-valid", GET_FAILED, step=0)


REFUSED = [
    (0x7, "", ERROR), (0x7, "", 8), (0x7, "", 0xFFFFFFFF), (0x3, "", PRE_COPY), (0x5, "", RUNNING_P2P),
    (0x1, "", PRE_COPY_P2P), (0x1, "", RUNNING_P2P), (0x7, "set 0 state=STOP_COPY", PRE_COPY),
    (0x7, "set 0 state=STOP_COPY", PRE_COPY_P2P), (0x5, "set 0 state=STOP_COPY", PRE_COPY),
]


@pytest.mark.parametrize("flags,prelude,new", REFUSED)
def test_v2_refused_request_accepted(flags, prelude, new):
    t = v2(flags).script("set_state", lambda orig, s: (0, -1) if s == new else orig(s))
    step = 1 if prelude else 0
    expect(run(t, f"{prelude}\nset 0 state={new}"), "accepted-invalid", OK, step=step)
    silent(run(v2(flags), f"{prelude}\nset 0 state={new}\nget 0"))


@pytest.mark.parametrize("flags,prelude,new", REFUSED)
def test_v2_refused_request_moves_the_device(flags, prelude, new):
    cur = STOP_COPY if prelude else RUNNING

    def refuse_but_move(orig, s):
        if s == new:
            orig(STOP if cur == RUNNING else RUNNING)
            return EINVAL, -1
        return orig(s)
    t = v2(flags).script("set_state", refuse_but_move)
    expect(run(t, f"{prelude}\nset 0 state={new}"), "bad-state-after-failure", Check("state_not_in", (cur,)))


def test_v2_set_success_but_state_differs():
    t = v2().script("set_state", lambda orig, s: (0, -1) if s == STOP else orig(s))
    expect(run(t, "set 0 state=STOP"), "state-mismatch", Check("state_not", STOP), step=0)
    # success but stopped at a hop of the path
    t = v2().script("set_state", lambda orig, s: (orig(RUNNING_P2P)[0], -1) if s == STOP else orig(s))
    expect(run(t, "set 0 state=STOP"), "state-mismatch", Check("state_not", STOP))


def test_v2_a_state_none_of_the_protocols_is_claimed_as_such():
    # a device that wrote over its own state (mtty #8: GET read 65): the claim is "no state at all",
    # which a fixed device refutes even where the program takes another course on it
    t = v2().script("get_state", lambda orig: (0, 65))
    expect(run(t, "get 0"), "state-mismatch", Check("state_unknown", 8), step=0)
    expect(run(t, "set 0 state=STOP"), "state-mismatch", Check("state_unknown", 8), step=0)
    t = v2().script("get_state", lambda orig: (0, STOP))
    expect(run(t, "get 0"), "state-mismatch", Check("state_not", RUNNING), step=0)  # a state, the wrong one
    assert runtime.shows(("state_unknown", 8), {"state": 65}) and runtime.shows(("state_unknown", 8), {"state": -2})
    assert not runtime.shows(("state_unknown", 8), {"state": 7})
    assert not runtime.shows(("state_unknown", 8), {"state": 65, "gerr": 5})  # no state was read


def _pairs():
    for flags in FLAG_SETS:
        states = [s for s in range(1, 8) if model.supported(flags, s)]
        for cur in states:
            for new in states:
                if model.path(flags, cur, new) is not None:
                    yield pytest.param(flags, cur, new, id=f"{flags:#x}-{model.v2_name(cur)}-{model.v2_name(new)}")


@pytest.mark.parametrize("flags,cur,new", list(_pairs()))
def test_v2_data_fd_due_exactly_when_the_model_says(flags, cur, new):
    """A new data_fd iff the last hop opens a session; -1 otherwise (also inside the saving group)."""
    if cur == RESUMING:  # a resuming device only leaves RESUMING with a valid stream loaded
        prelude = "set 1 state=STOP_COPY\ndrain 1 fd=0\nset 0 state=RESUMING\ntransfer 1 dst=0 seg=0"
    else:
        prelude = f"set 0 state={cur}" if cur != RUNNING else ""
    body = f"{prelude}\nset 0 state={new}"
    step = prelude.count("\n") + 1 if prelude else 0
    calls = 2 if prelude else 1
    due = model.opens_fd(flags, cur, new)

    def flip(orig, s):
        err, fd = orig(s)
        assert err == 0
        return (0, -1) if fd >= 0 else (0, 1000)
    t = v2(flags).script("set_state", on_call(calls, flip))
    expect(run(t, body), "fd-mismatch", Check("no_fd" if due else "fd"), step=step)
    silent(run(v2(flags), body + "\nget 0"))


def test_v2_data_fd_returned_on_failure_is_flagged_even_with_a_fault():
    def fail_with_fd(orig, s):
        t.fire()
        return ENOMEM, 9
    t = v2(real_faults=False).script("set_state", fail_with_fd)
    expect(run(t, "fault 0 nth=1 kind=nomem\nset 0 state=STOP"), "fd-mismatch", Check("fd"), step=1)
    # the nearest legal answer: the failure without an fd
    t = v2(real_faults=False).script("set_state", lambda orig, s: (t.fire(), (ENOMEM, -1))[1])
    silent(run(t, "fault 0 nth=1 kind=nomem\nset 0 state=STOP\nget 0"))


def failing_set(flags, new, hops, fire, err=ENOMEM):
    """A target whose SET ``new`` walks ``hops`` for real, then fails (a fault fired, if ``fire``)."""
    def fn(orig, s):
        if s != new:
            return orig(s)
        for h in hops:
            orig(h)
        if fire:
            t.fire()
        return err, -1
    t = v2(flags, real_faults=False).script("set_state", fn)
    return t


def test_v2_failed_set_off_its_path():
    # RUNNING -> STOP_COPY (0x7: 5, 1, 3) stops in RESUMING: off the path, fault or not
    allowed = tuple(sorted(model.allowed_after_failure(0x7, RUNNING, STOP_COPY)))
    assert allowed == (ERROR, STOP, RUNNING, STOP_COPY, RUNNING_P2P)
    for fire in (True, False):
        t = failing_set(0x7, STOP_COPY, (RUNNING_P2P, STOP, RESUMING), fire)
        expect(run(t, "fault 0 nth=1 kind=nomem\nset 0 state=STOP_COPY"), "bad-state-after-failure",
               Check("state_not_in", allowed), step=1)


@pytest.mark.parametrize("hops,reached", [((), RUNNING), ((RUNNING_P2P,), RUNNING_P2P),
                                          ((RUNNING_P2P, STOP), STOP)])
def test_v2_failed_set_on_its_path(hops, reached):
    body = "fault 0 nth=1 kind=nomem\nset 0 state=STOP_COPY\nget 0"
    # with the fault that fired: silent, and the oracle follows the device to the state it reached
    silent(run(failing_set(0x7, STOP_COPY, hops, True), body))
    # without a fault there is no reason to fail a valid request
    expect(run(failing_set(0x7, STOP_COPY, hops, False), body), "rejected-valid", FAILED, step=1)
    # after a partial success the reached state is the one GET must keep reporting
    t = failing_set(0x7, STOP_COPY, hops, True).script("get_state", on_call(
        3, lambda orig: (0, RUNNING if reached != RUNNING else STOP)))
    expect(run(t, body), "state-mismatch", Check("state_not", reached), step=2)


def test_v2_failed_set_that_reached_stop_keeps_it_frozen():
    # the hops that completed (RUNNING -> RUNNING_P2P -> STOP) froze the device
    t = failing_set(0x7, STOP_COPY, (RUNNING_P2P, STOP), True)
    t.script("activity", lambda orig, seed: t.real().core.work(seed))
    expect(run(t, "fault 0 nth=1 kind=nomem\nset 0 state=STOP_COPY\nactivity 0 seed=3"),
           "state-changed-while-stopped", NONE, step=2)


def test_v2_failed_set_into_error():
    def to_error(orig, s):
        if s == STOP:
            t.real().enter_error()
            if fire[0]:
                t.fire()
            return EIO, -1
        return orig(s)
    fire = [False]
    t = v2(real_faults=False).script("set_state", to_error)
    expect(run(t, "fault 0 nth=1 kind=hwerror\nset 0 state=STOP"), "rejected-valid", FAILED, step=1)
    fire[0] = True
    silent(run(t, "fault 0 nth=1 kind=hwerror\nset 0 state=STOP\nget 0"))
    # the simulator's own hardware error: ERROR, then only reset
    silent(run(v2(), "fault 0 nth=1 kind=hwerror\nset 0 state=STOP\nget 0\nset 0 state=RUNNING\nreset 0\nget 0"))


def test_v2_error_state_makes_old_data_fds_unknown():
    # after ERROR the sessions' fate is the driver's: any answer on an old fd is accepted
    body = """
        set 0 state=STOP_COPY
        fault 0 nth=1 kind=hwerror
        set 0 state=STOP
        read 0 fd=0 n=16
        write 0 fd=0 data=00
        precopy 0 fd=0
    """
    t = v2().script("read", const(0, b"x" * 16)).script("write", const(0, 1)).script("precopy_info", const(0, 5, 0))
    silent(run(t, body))
    # without the error the same answers are misuse
    expect(run(t, "set 0 state=STOP_COPY\nset 0 state=STOP\nread 0 fd=0 n=16"), "fd-misuse-accepted", OK, step=2)


def test_v2_failed_arc_wrong_state_through_fault_fired():
    # the executor re-reads the state after a fault fired: a state neither old nor ERROR is flagged
    def read_and_move(orig, fd, n):
        t.fire()
        t.real().state = STOP
        return ENOMEM, b""
    t = v2(real_faults=False).script("read", read_and_move)
    expect(run(t, "set 0 state=PRE_COPY\nfault 0 nth=1 kind=nomem\nread 0 fd=0 n=16"), "bad-state-after-failure",
           NONE, step=2)

    def read_to_error(orig, fd, n):
        t.fire()
        t.real().enter_error()
        return EIO, b""
    t = v2(real_faults=False).script("read", read_to_error)
    silent(run(t, "set 0 state=PRE_COPY\nfault 0 nth=1 kind=hwerror\nread 0 fd=0 n=16\nget 0\nreset 0"))
    # and a fault that fired without changing anything
    silent(run(v2(), "set 0 state=PRE_COPY\nfault 0 nth=1 kind=nomem\nread 0 fd=0 n=16\nget 0"))


# =============================================================================
# v2: loads (RESUMING -> STOP)
# =============================================================================


def refuse_load(t, dev=1, fire=False, err=EINVAL):
    def fn(orig, s):
        if s == STOP and t.real(dev).state == RESUMING:
            if fire:
                t.fire(dev)
            return err, -1
        return orig(s)
    return t.script("set_state", fn, dev)


def test_v2_valid_stream_rejected():
    t = refuse_load(v2(real_faults=False))
    expect(run(t, V2_MIGRATE), "valid-stream-rejected", FAILED, step=4)
    # the same refusal with a fault that fired is excused
    t = refuse_load(v2(real_faults=False), fire=True)
    silent(run(t, "fault 1 nth=1 kind=nomem\n" + V2_MIGRATE))
    # and with the simulator's own fault in the load step
    silent(run(v2(), V2_MIGRATE.replace("set 1 state=STOP", "fault 1 nth=1 kind=nomem\nset 1 state=STOP\nget 1")))


def test_v2_refused_load_of_an_unknown_stream_is_fine():
    silent(run(v2(), "set 1 state=RESUMING\nwrite 1 fd=0 data=00\nset 1 state=STOP\nget 1"))
    # a damaged stream refused
    silent(run(v2(), V2_MIGRATE.replace("set 1 state=RESUMING", "mangle 0 kind=flip arg=100\nset 1 state=RESUMING")))
    # a complete stream written twice: not the stream any more
    silent(run(v2(), V2_MIGRATE.replace("transfer 0 dst=1 seg=0", "transfer 0 dst=1 seg=0\ntransfer 0 dst=1 seg=0")))


def test_v2_failed_load_must_not_half_load():
    def half_load(orig, s):
        if s == STOP and t.real(1).state == RESUMING:
            t.real(1).core.work(7)
        return orig(s)
    t = v2().script("set_state", half_load, dev=1)
    expect(run(t, "set 1 state=RESUMING\nwrite 1 fd=0 data=00\nset 1 state=STOP"), "state-changed-while-stopped",
           NONE, step=2)


def test_v2_resume_corrupted():
    def corrupt(orig, s):
        was = t.real(1).state
        out = orig(s)
        if was == RESUMING and s == STOP:
            t.real(1).core.regs[0] ^= 1
        return out
    t = v2().script("set_state", corrupt, dev=1)
    expect(run(t, V2_MIGRATE), "resume-corrupted", NONE, step=4)


def test_v2_resume_corrupted_without_digest_through_resave():
    t = v2(has_digest=False, resave=lambda i: resave(i))
    resave = resave_by_saving_again(t)
    silent(run(t, V2_MIGRATE))

    def corrupt(orig, s):
        was = t.real(1).state
        out = orig(s)
        if was == RESUMING and s == STOP:
            t.real(1).core.mem[0] ^= 1
        return out
    t.script("set_state", corrupt, dev=1)
    expect(run(t, V2_MIGRATE), "resume-corrupted", NONE, step=4)
    # no way to tell the state (no digest, no resave): nothing to judge
    t = v2(has_digest=False).script("set_state", corrupt, dev=1)
    silent(run(t, V2_MIGRATE))


def power_on_stream(dev: int) -> bytes:
    """The stop-and-copy stream of device ``dev`` of a fresh simulator, through its public API."""
    d = SimTarget("v2", 0x7).devices[dev]
    err, fd = d.set_state(STOP_COPY)
    assert not err
    out = bytearray()
    while True:
        err, data = d.read(fd, 4096)
        if err or not data:
            return bytes(out)
        out += data


def accept_anything(t, dev=1):
    """A device that loads valid streams and "loads" anything else as its power-on state (no validation)."""
    real = t.real(dev)
    load_stream = real.load_stream
    fallback = power_on_stream(dev)

    def load(data):
        try:
            return load_stream(data)
        except stream.StreamError:
            return load_stream(fallback)
    real.load_stream = load
    return t


def resave_by_saving_again(t):
    """``target.resave(i)``: device i's stream, saved again through its own API (a stopped device)."""
    def resave(i):
        real = t.real(i)
        err, fd = real.set_state(STOP_COPY)
        assert not err and fd >= 0
        out = bytearray()
        while True:
            err, data = real.read(fd, 4096)
            if err or not data:
                break
            out += data
        assert real.set_state(STOP) == (0, -1)
        real.close(fd)
        return bytes(out)
    return resave


DAMAGED = V2_MIGRATE.replace("set 1 state=RESUMING", "mangle 0 kind=flip arg=100\nset 1 state=RESUMING")


def test_v2_damaged_stream_accepted():
    expect(run(accept_anything(v2()), DAMAGED), "damaged-stream-accepted", OK, step=5)
    # a target that does not promise validation may load it
    silent(run(accept_anything(v2(validates_stream=False)), DAMAGED))
    # the correct device refuses it
    silent(run(v2(), DAMAGED + "\nget 1"))
    # a mangle that changed nothing (a truncate of an empty capture) leaves a valid stream
    silent(run(accept_anything(v2()), V2_MIGRATE.replace("drain 0 fd=0", "mangle 0 kind=flip arg=3\ndrain 0 fd=0")))


def test_v2_a_field_set_in_a_stream_is_no_damage():
    """A field set to a value (checksum fixed up or not) may make another valid stream: a device that
    loads it is not judged on it; a flip after it does not make it damage again, and a set that
    leaves the bytes as they were leaves the stream untouched (a resume of it must reproduce)."""
    for mangle in ("mangle 0 kind=set off=227 width=1 value=0x30 fix=crc32 at=4",
                   "mangle 0 kind=add off=13 width=2 value=-1 fix=none",
                   "mangle 0 kind=set off=227 width=1 value=0x30 fix=none\nmangle 0 kind=flip arg=100"):
        body = V2_MIGRATE.replace("set 1 state=RESUMING", f"{mangle}\nset 1 state=RESUMING")
        silent(run(accept_anything(v2()), body))
        silent(run(v2(), body + "\nget 1"))
    # the same flip alone is damage
    expect(run(accept_anything(v2()), DAMAGED), "damaged-stream-accepted", OK, step=5)
    # setting a byte to the value it has changes nothing: still the stream the source sent
    same = V2_MIGRATE.replace("set 1 state=RESUMING", "mangle 0 kind=set off=0 width=1 value=0x4d\n"
                              "set 1 state=RESUMING")
    silent(run(v2(), same))
    expect(run(v2().script("write", lambda orig, fd, data: (EIO, 0), dev=1), same), "valid-stream-rejected",
           FAILED, step=4)


@pytest.mark.parametrize("kind", ["truncate", "extend", "flip", "drop", "dup", "swap"])
def test_v2_every_mangle_is_damage(kind):
    body = V2_MIGRATE.replace("set 1 state=RESUMING", f"mangle 0 kind={kind} arg=17\nset 1 state=RESUMING")
    expect(run(accept_anything(v2()), body), "damaged-stream-accepted", OK, step=5)


def test_v2_transfer_write_refused():
    body = V2_MIGRATE

    def refuse(orig, fd, data):
        if fire[0]:
            t.fire(1)
        return EIO, 0
    fire = [False]
    t = v2(real_faults=False).script("write", refuse, dev=1)
    expect(run(t, body), "valid-stream-rejected", FAILED, step=3)
    fire[0] = True
    silent(run(t, body.replace("transfer", "fault 1 nth=1 kind=nomem\ntransfer")))
    # not a complete stream any more (a byte went in first): the device may refuse what follows
    t = v2().script("write", lambda orig, fd, data: orig(fd, data) if len(data) == 1 else (ENOMEM, 0), dev=1)
    silent(run(t, body.replace("transfer", "write 1 fd=0 data=00\ntransfer")))


def test_v2_transfer_write_stalls():
    t = v2().script("write", const(0, 0), dev=1)
    expect(run(t, V2_MIGRATE), "stream-protocol", Check("stalled"), step=3)
    # short writes are legal: the writer goes on with the rest
    t = v2().script("write", lambda orig, fd, data: orig(fd, data[:1]), dev=1)
    silent(run(t, V2_MIGRATE + "\nget 1"))
    # EINTR is retried
    t = v2().script("write", on_call(1, const(EINTR, 0)), dev=1)
    silent(run(t, V2_MIGRATE))


# =============================================================================
# v2: GET, reset, files
# =============================================================================


def test_v2_get():
    expect(run(v2().script("get_state", const(EIO, RUNNING)), "get 0"), "rejected-valid", FAILED, step=0)
    expect(run(v2().script("get_state", const(0, STOP)), "get 0"), "state-mismatch", Check("state_not", RUNNING))
    silent(run(v2(), "get 0\nset 0 state=STOP\nget 0"))


def test_v2_reset():
    expect(run(v2().script("reset", const(EIO)), "reset 0"), "rejected-valid", FAILED, step=0)
    t = v2().script("get_state", on_call(1, const(EIO, RUNNING)))
    expect(run(t, "reset 0"), "state-mismatch", GET_FAILED)
    t = v2().script("reset", lambda orig: (orig(), setattr(t.real(), "state", STOP))[0])
    expect(run(t, "reset 0"), "state-mismatch", Check("state_not", RUNNING))
    t = v2().script("live_files", const(1))
    expect(run(t, "reset 0"), "resource-leak", NONE)
    silent(run(v2(), "set 0 state=STOP_COPY\nreset 0\nget 0\nset 0 state=RESUMING\nreset 0"))


def test_v2_live_files_after_set():
    # a session state holds exactly one file, any other none
    expect(run(v2().script("live_files", const(2)), "set 0 state=STOP_COPY"), "resource-leak", NONE, step=0)
    expect(run(v2().script("live_files", const(0)), "set 0 state=RESUMING"), "resource-leak", NONE, step=0)
    expect(run(v2().script("live_files", on_call(2, const(1))), "set 0 state=STOP_COPY\nset 0 state=STOP"),
           "resource-leak", NONE, step=1)
    # a failed SET is checked too
    t = failing_set(0x7, STOP_COPY, (), True).script("live_files", const(1))
    expect(run(t, "fault 0 nth=1 kind=nomem\nset 0 state=STOP_COPY"), "resource-leak", NONE, step=1)
    # unknown (None) and ERROR are not judged
    silent(run(v2().script("live_files", const(None)), "set 0 state=STOP_COPY\nset 0 state=STOP"))
    silent(run(v2().script("live_files", const(3)), "fault 0 nth=1 kind=hwerror\nset 0 state=STOP"))


def test_v2_datasize():
    expect(run(v2().script("data_size", const(EIO, 0)), "datasize 0"), "rejected-valid", FAILED)
    silent(run(v2(), "datasize 0\nset 0 state=STOP\ndatasize 0"))


def test_v2_close():
    expect(run(v2().script("close", const(EBADF)), "set 0 state=STOP_COPY\nclose 0 fd=0"), "rejected-valid", FAILED,
           step=1)
    # a closed fd is gone: the ops on it are skipped
    t = v2().script("read", const(0, b"x"))
    silent(run(t, "set 0 state=STOP_COPY\nclose 0 fd=0\nread 0 fd=0 n=1\nset 0 state=STOP"))


# =============================================================================
# v2: data_fd rules
# =============================================================================


def test_v2_lseek_on_a_data_fd_succeeds():
    t = v2().script("seek", const(0))
    expect(run(t, "set 0 state=STOP_COPY\nseek 0 fd=0"), "fd-misuse-accepted", OK, step=1, cause="lseek")
    expect(run(t, "set 0 state=RESUMING\nseek 0 fd=0"), "fd-misuse-accepted", OK, cause="lseek")
    silent(run(v2(), "set 0 state=STOP_COPY\nseek 0 fd=0\nset 0 state=STOP\nseek 0 fd=0"))


def test_v2_write_on_a_saving_data_fd_succeeds():
    t = v2().script("write", lambda orig, fd, data: (0, len(data)))
    for state in ("STOP_COPY", "PRE_COPY", "PRE_COPY_P2P"):
        expect(run(t, f"set 0 state={state}\nwrite 0 fd=0 data=0011"), "fd-misuse-accepted", OK, step=1,
               cause="on a saving data_fd")
    silent(run(v2(), "set 0 state=STOP_COPY\nwrite 0 fd=0 data=0011\ndrain 0 fd=0"))


def test_v2_read_on_a_resuming_data_fd_succeeds():
    t = v2().script("read", const(0, b"ab"))
    expect(run(t, "set 0 state=RESUMING\nread 0 fd=0 n=2"), "fd-misuse-accepted", OK, step=1,
           cause="on a resuming data_fd")
    silent(run(v2(), "set 0 state=RESUMING\nread 0 fd=0 n=2\ndrain 0 fd=0"))
    t = v2().script("precopy_info", const(0, 1, 0))
    expect(run(t, "set 0 state=RESUMING\nprecopy 0 fd=0"), "fd-misuse-accepted", OK, cause="on a resuming data_fd")


@pytest.mark.parametrize("end,cause", [("set 0 state=STOP", "after its session ended"),
                                       ("reset 0", "after reset")])
def test_v2_saving_fd_used_after_its_session(end, cause):
    start = "set 0 state=STOP_COPY"
    t = v2().script("read", const(0, b"x" * 16))
    expect(run(t, f"{start}\n{end}\nread 0 fd=0 n=16"), "fd-misuse-accepted", OK, step=2, cause=cause)
    t = v2().script("read", lambda orig, fd, n: (0, b""))  # 0 bytes is a success too
    expect(run(t, f"{start}\n{end}\ndrain 0 fd=0"), "fd-misuse-accepted", OK, cause=cause)
    silent(run(v2(), f"{start}\n{end}\nread 0 fd=0 n=16\ndrain 0 fd=0\nprecopy 0 fd=0\nwrite 0 fd=0 data=00"))


@pytest.mark.parametrize("end,cause", [("set 0 state=RUNNING", "after its session ended"),
                                       ("reset 0", "after reset")])
def test_v2_precopy_info_after_its_session(end, cause):
    t = v2().script("precopy_info", const(0, 1, 0))
    expect(run(t, f"set 0 state=PRE_COPY\n{end}\nprecopy 0 fd=0"), "fd-misuse-accepted", OK, step=2, cause=cause)


def test_v2_resuming_fd_used_after_its_session():
    write_ok = lambda orig, fd, data: (0, len(data))  # noqa: E731
    t = v2().script("write", write_ok)
    expect(run(t, "set 0 state=RESUMING\nreset 0\nwrite 0 fd=0 data=00"), "fd-misuse-accepted", OK, step=2,
           cause="after reset")
    # a successful load ends the session
    t = v2().script("write", on_call(2, write_ok), dev=1)
    expect(run(t, V2_MIGRATE + "\nwrite 1 fd=0 data=00"), "fd-misuse-accepted", OK, step=5,
           cause="after its session ended")
    # a failed load does not: the fd still takes bytes
    silent(run(v2(), "set 1 state=RESUMING\nwrite 1 fd=0 data=00\nset 1 state=STOP\nwrite 1 fd=0 data=01"))


def test_v2_old_fd_after_a_new_session():
    # fd=1 is the previous session's: reading it must fail even while a new one is live
    t = v2().script("read", lambda orig, fd, n: (0, b"x") if fd == 3 else orig(fd, n))
    body = "set 0 state=STOP_COPY\nset 0 state=STOP\nset 0 state=STOP_COPY\nread 0 fd=0 n=1\nread 0 fd=1 n=1"
    expect(run(t, body), "fd-misuse-accepted", OK, step=4, cause="after its session ended")
    silent(run(v2(), body))


def test_v2_session_kept_inside_the_saving_group():
    # PRE_COPY -> PRE_COPY_P2P -> STOP_COPY keep the fd alive; the stream goes on on it
    silent(run(v2(), """
        set 0 state=PRE_COPY
        read 0 fd=0 n=16
        set 0 state=PRE_COPY_P2P
        read 0 fd=0 n=16
        set 0 state=STOP_COPY
        drain 0 fd=0
        set 1 state=RESUMING
        transfer 0 dst=1 seg=7
        set 1 state=STOP
    """))


def test_v2_read_errors():
    def failing(err):
        def fn(orig, fd, n):
            if fire[0]:
                t.fire()
            return err, b""
        return fn
    fire = [False]
    t = v2(real_faults=False).script("read", failing(EIO))
    expect(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=16"), "rejected-valid", FAILED, step=1)
    expect(run(t, "set 0 state=PRE_COPY\nfault 0 nth=1 kind=nomem\ndrain 0 fd=0"), "rejected-valid", FAILED, step=2)
    fire[0] = True
    silent(run(t, "set 0 state=STOP_COPY\nfault 0 nth=1 kind=nomem\nread 0 fd=0 n=16"))
    silent(run(t, "set 0 state=STOP_COPY\nfault 0 nth=1 kind=nomem\ndrain 0 fd=0"))
    # the simulator's own fault on a read
    silent(run(v2(), "set 0 state=STOP_COPY\nfault 0 nth=1 kind=timeout\nread 0 fd=0 n=16\ndrain 0 fd=0"))
    # EINTR during a drain with a fault: retried, then the stream goes on
    silent(run(v2(), "set 0 state=STOP_COPY\nfault 0 nth=1 kind=eintr\ndrain 0 fd=0\nset 0 state=STOP"))


@pytest.mark.parametrize("state", ["STOP_COPY", "PRE_COPY", "PRE_COPY_P2P"])
def test_v2_enomsg(state):
    t = v2().script("read", const(ENOMSG, b""))
    body = f"set 0 state={state}\nread 0 fd=0 n=16"
    def enomsg_fault(orig, fd, n):
        t2.fire()
        return ENOMSG, b""
    t2 = v2(real_faults=False).script("read", enomsg_fault)
    if state == "STOP_COPY":
        expect(run(t, body), "stream-protocol", Check("errno", ENOMSG), step=1)
        # ENOMSG is no more excused by a fault than it is legal
        expect(run(t2, f"fault 0 nth=1 kind=nomem\n{body}"), "stream-protocol", Check("errno", ENOMSG))
    else:
        silent(run(t, body))  # the temporary end of pre-copy data
        silent(run(v2(), f"set 0 state={state}\ndrain 0 fd=0\nread 0 fd=0 n=16"))


def test_v2_read_longer_than_asked():
    t = v2().script("read", lambda orig, fd, n: (0, b"x" * (n + 1)))
    expect(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=7"), "stream-protocol", Check("longer_than", 7), step=1)
    t = v2().script("read", lambda orig, fd, n: (0, b"x" * n))
    silent(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=7\nread 0 fd=0 n=1"))


def _after_end(data):
    """A read script: the real stream, then (once it ended) ``data``."""
    ended = [False]

    def fn(orig, fd, n):
        if ended[0]:
            return 0, data
        err, got = orig(fd, n)
        if not err and not got:
            ended[0] = True
        return err, got
    return fn


def test_v2_data_after_the_end_of_the_stream():
    t = v2().script("read", _after_end(b"z"))
    expect(run(t, "set 0 state=STOP_COPY\ndrain 0 fd=0\nread 0 fd=0 n=16"), "stream-protocol",
           Check("data_after_end"), step=2)
    t = v2().script("read", _after_end(b"z"))
    expect(run(t, "set 0 state=STOP_COPY\ndrain 0 fd=0\ndrain 0 fd=0"), "stream-protocol", Check("data_after_end"),
           step=2)
    # the end keeps returning 0 bytes: fine
    silent(run(v2(), "set 0 state=STOP_COPY\ndrain 0 fd=0\nread 0 fd=0 n=16\ndrain 0 fd=0"))
    # read(fd, buf, 0) returning 0 is not the end of the stream
    silent(run(v2(), "set 0 state=STOP_COPY\nread 0 fd=0 n=0\nread 0 fd=0 n=16\ndrain 0 fd=0"))
    # in PRE_COPY 0 bytes is a temporary end: data may follow (after activity)
    t = v2().script("read", lambda orig, fd, n: (lambda r: (0, b"") if r[0] == ENOMSG else r)(orig(fd, n)))
    silent(run(t, "set 0 state=PRE_COPY\ndrain 0 fd=0\nactivity 0 seed=3\nread 0 fd=0 n=64\n"
                  "set 0 state=STOP_COPY\ndrain 0 fd=0"))


def test_v2_drain_never_ends():
    t = v2().script("read", lambda orig, fd, n: (0, b"\0" * 16))
    expect(run(t, "set 0 state=STOP_COPY\ndrain 0 fd=0"), "hang", HANG, step=1)
    expect(run(t, "set 0 state=PRE_COPY\ndrain 0 fd=0"), "hang", HANG, step=1)
    silent(run(v2(), "set 0 state=STOP_COPY\ndrain 0 fd=0\nset 0 state=PRE_COPY\nset 0 state=RUNNING\n"
                     "set 0 state=PRE_COPY\ndrain 0 fd=0"))


# =============================================================================
# v2: PRECOPY_INFO
# =============================================================================


def test_v2_precopy_info_outside_precopy():
    t = v2().script("precopy_info", const(0, 0, 0))
    expect(run(t, "set 0 state=STOP_COPY\nprecopy 0 fd=0"), "accepted-invalid", OK, step=1)
    expect(run(t, "set 0 state=PRE_COPY\nset 0 state=STOP_COPY\nprecopy 0 fd=0"), "accepted-invalid", OK, step=2)
    silent(run(v2(), "set 0 state=STOP_COPY\nprecopy 0 fd=0\nset 0 state=PRE_COPY\nprecopy 0 fd=0"))


def test_v2_precopy_info_refused_in_precopy():
    def refuse(orig, fd):
        if fire[0]:
            t.fire()
        return EIO, 0, 0
    fire = [False]
    t = v2(real_faults=False).script("precopy_info", refuse)
    for state in ("PRE_COPY", "PRE_COPY_P2P"):
        expect(run(t, f"set 0 state={state}\nprecopy 0 fd=0"), "rejected-valid", FAILED, step=1)
    fire[0] = True
    silent(run(t, "set 0 state=PRE_COPY\nfault 0 nth=1 kind=nomem\nprecopy 0 fd=0"))


def test_v2_precopy_initial_bytes_grow():
    def grow(orig, fd):
        err, initial, dirty = orig(fd)
        calls[0] += 1
        return err, initial + (100 if calls[0] == 2 else 0), dirty
    calls = [0]
    t = v2().script("precopy_info", grow)
    body = "set 0 state=PRE_COPY\nprecopy 0 fd=0\nread 0 fd=0 n=16\nprecopy 0 fd=0"
    expect(run(t, body), "stream-protocol", Check("initial_grew"), step=3)
    # initial_bytes that stays the same is legal (non-increasing)
    first = []

    def same(orig, fd):
        err, initial, dirty = orig(fd)
        first.append(initial)
        return err, first[0], dirty
    silent(run(v2().script("precopy_info", same), body))
    silent(run(v2(), body + "\nread 0 fd=0 n=64\nprecopy 0 fd=0"))


def test_v2_precopy_info_under_reports():
    t = v2().script("precopy_info", const(0, 16, 0))
    expect(run(t, "set 0 state=PRE_COPY\nprecopy 0 fd=0\nread 0 fd=0 n=17"), "stream-protocol",
           Check("precopy_overrun"), step=2)
    expect(run(t, "set 0 state=PRE_COPY\nprecopy 0 fd=0\nread 0 fd=0 n=16\nread 0 fd=0 n=1"), "stream-protocol",
           Check("precopy_overrun"), step=3)
    # exactly what was announced
    silent(run(t, "set 0 state=PRE_COPY\nprecopy 0 fd=0\nread 0 fd=0 n=16"))
    # device activity (or a state change) makes the announcement stale
    silent(run(t, "set 0 state=PRE_COPY\nprecopy 0 fd=0\nactivity 0 seed=1\nread 0 fd=0 n=64"))
    silent(run(t, "set 0 state=PRE_COPY\nprecopy 0 fd=0\nset 0 state=PRE_COPY_P2P\nread 0 fd=0 n=64"))
    silent(run(v2(), "set 0 state=PRE_COPY\nprecopy 0 fd=0\ndrain 0 fd=0\nactivity 0 seed=9\nprecopy 0 fd=0\n"
                     "drain 0 fd=0"))


# =============================================================================
# v2: VFIO_DEVICE_FEATURE framing (model.feature_errno, every branch)
# =============================================================================

GET, SET, PROBE = 0x10000, 0x20000, 0x40000
MIGRATION, MIG_STATE, DATA_SIZE = 1, 2, 9

# (flags, argsz, errno the core must give or None), one per branch of model.feature_errno
FEATURE_CASES = [
    (GET | MIGRATION, 7, EINVAL),            # argsz < 8
    (PROBE | GET | MIGRATION, 7, EINVAL),    # argsz < 8, even for a probe
    (PROBE | GET | MIGRATION, 8, 0),         # argsz 8 is enough for a probe
    (GET | MIGRATION | 0x80000, 16, EINVAL),  # an unknown flag bit
    (GET | MIGRATION | 1 << 31, 16, EINVAL),  # the top flag bit
    (GET | SET | MIG_STATE, 16, EINVAL),     # GET and SET without PROBE
    (PROBE | GET | SET | MIG_STATE, 16, 0),  # GET and SET with PROBE
    (SET | MIGRATION, 16, EINVAL),           # an operation the feature lacks
    (PROBE | SET | MIGRATION, 16, EINVAL),   # ... even probed
    (SET | DATA_SIZE, 16, EINVAL),
    (PROBE | MIGRATION, 8, 0),               # a probe of no operation
    (PROBE | GET | DATA_SIZE, 8, 0),
    (MIGRATION, 16, EINVAL),                 # neither GET nor SET nor PROBE
    (GET | MIGRATION, 15, EINVAL),           # payload shorter than the feature's
    (GET | MIGRATION, 16, 0),
    (GET | MIGRATION, 64, 0),
    (GET | MIG_STATE, 16, 0),
    (GET | MIG_STATE, 15, EINVAL),
    (SET | MIG_STATE, 16, 0),                # SET of the current state
    (SET | MIG_STATE, 12, EINVAL),
    (GET | DATA_SIZE, 16, 0),
    (GET | 3, 16, None),                     # other features: the driver's business
    (GET | 0, 16, None),
    (SET | 12, 16, None),
    (GET | 0x1234, 0, EINVAL),               # framing is checked before the feature
]


@pytest.mark.parametrize("flags,argsz,want", FEATURE_CASES, ids=lambda v: hex(v) if isinstance(v, int) else str(v))
def test_v2_feature_framing(flags, argsz, want):
    assert model.feature_errno(flags, argsz, 0x7, RUNNING) == want
    body = f"feature 0 argsz={argsz} flags={flags:#x}"
    wrong = {0: EINVAL, EINVAL: 0}
    if want is None:
        for err in (0, EINVAL, errno.ENOTTY):
            silent(run(v2().script("feature", const(err, b"")), body))
        return
    expect(run(v2().script("feature", const(wrong[want], b"")), body),
           "rejected-valid" if want == 0 else "accepted-invalid", FAILED if want == 0 else OK, step=0)
    silent(run(v2().script("feature", const(want, b"")), body))
    silent(run(v2(), body + "\nget 0"))  # the correct device


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_v2_feature_set_in_every_state(flags):
    # a SET of MIG_DEVICE_STATE carries the current state: success, and the device stays put
    for state in range(1, 8):
        if model.supported(flags, state):
            silent(run(v2(flags), f"set 0 state={state}\nfeature 0 argsz=16 flags={SET | MIG_STATE:#x}\nget 0"))
    silent(run(v2(flags), f"fault 0 nth=1 kind=hwerror\nset 0 state=STOP\nfeature 0 argsz=16 flags={SET | 2:#x}"))


# =============================================================================
# v2: frozen state, hangs, exceptions, splats
# =============================================================================


def test_v2_state_changes_while_stopped():
    t = v2().script("activity", lambda orig, seed: t.real().core.work(seed))
    expect(run(t, "set 0 state=STOP\nactivity 0 seed=5"), "state-changed-while-stopped", NONE, step=1)
    expect(run(t, "set 0 state=STOP_COPY\nactivity 0 seed=5"), "state-changed-while-stopped", NONE, step=1)
    # working while running is what running is for
    silent(run(t, "activity 0 seed=5\nset 0 state=RUNNING_P2P\nactivity 0 seed=6\nset 0 state=PRE_COPY\n"
                  "activity 0 seed=7\nset 0 state=STOP"))
    silent(run(v2(), "set 0 state=STOP\nactivity 0 seed=5\nset 0 state=STOP_COPY\nactivity 0 seed=1"))


def test_v2_state_changes_during_a_stopped_call():
    def busy_read(orig, fd, n):
        t.real().core.work(1)
        return orig(fd, n)
    t = v2().script("read", busy_read)
    expect(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=16"), "state-changed-while-stopped", NONE, step=1)
    silent(run(t, "set 0 state=PRE_COPY\nread 0 fd=0 n=16"))  # running: allowed

    def busy_set(orig, s):
        if s == STOP_COPY:
            t2.real().core.work(1)
        return orig(s)
    t2 = v2().script("set_state", busy_set)
    expect(run(t2, "set 0 state=STOP\nset 0 state=STOP_COPY"), "state-changed-while-stopped", NONE, step=1)
    # a path through a running state may change it
    silent(run(t2, "set 0 state=PRE_COPY\nset 0 state=STOP_COPY"))

    def busy_write(orig, fd, data):
        t3.real().core.work(1)
        return orig(fd, data)
    t3 = v2().script("write", busy_write)
    expect(run(t3, "set 0 state=RESUMING\nwrite 0 fd=0 data=00"), "state-changed-while-stopped", NONE, step=1)

    def busy_resume_write(orig, fd, data):  # the writes of a transfer, into the destination
        t4.real(1).core.work(1)
        return orig(fd, data)
    t4 = v2().script("write", busy_resume_write, dev=1)
    migrate = "set 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\ntransfer 0 dst=1 seg=16"
    expect(run(t4, migrate), "state-changed-while-stopped", NONE, step=3)
    silent(run(v2(), migrate + "\nset 1 state=STOP"))

    def busy_then_refusing(orig, fd, data):  # changes on the first write, refuses the second
        writes.append(fd)
        if len(writes) > 1:
            return errno.EIO, 0
        t5.real(1).core.work(1)
        return orig(fd, data)
    writes = []
    t5 = v2().script("write", busy_then_refusing, dev=1)
    expect(run(t5, migrate), "state-changed-while-stopped", NONE, step=3)

    def failing(orig, fd, data):  # an injected failure that changes the device as it fails the write
        t6.fire(1)
        t6.real(1).core.work(1)
        return errno.EIO, 0
    t6 = v2().script("write", failing, dev=1)
    # the resync after the op takes the state it left
    silent(run(t6, migrate.replace("transfer", "fault 1 nth=1 kind=hwerror\ntransfer")))


def test_v2_device_hang():
    def hang(orig, s):
        raise DeviceHang("spinning")
    f = expect(run(v2().script("set_state", hang), "set 0 state=STOP"), "hang", HANG, step=0)
    assert "spinning" in f.observed
    def hang_read(orig, fd, n):
        raise DeviceHang("read")
    t = v2().script("read", hang_read)
    expect(run(t, "set 0 state=STOP_COPY\ndrain 0 fd=0"), "hang", HANG, step=1)


def test_v2_target_exception():
    def boom(orig, s):
        raise ValueError("driver bug")
    f = expect(run(v2().script("set_state", boom), "get 0\nset 0 state=STOP"), "target-exception",
               Check("exception"), step=1)
    assert "ValueError: driver bug" in f.observed and "Traceback" in f.detail
    expect(run(v2().script("data_size", lambda orig: 1 / 0), "datasize 0"), "target-exception", Check("exception"))


def test_v2_kernel_splat():
    lines = ["WARNING: CPU: 0 PID: 1 at drivers/vfio/vfio_main.c:1 vfio_mig_get_next_state", "second line"]
    f = expect(run(v2(splats=lines), "set 0 state=STOP\nget 0"), "kernel-splat", NONE)
    assert f.observed == lines[0] and f.detail == "\n".join(lines)
    silent(run(v2(splats=[]), "set 0 state=STOP\nget 0"))
    # a finding during the program wins: the splat check runs after it
    t = v2(splats=lines).script("get_state", const(EIO, 0))
    expect(run(t, "get 0"), "rejected-valid", FAILED)


def test_a_kernel_report_is_blamed_on_the_op_that_logged_it_when_read_after_every_op():
    # A KCOV (sanitizer) kernel's log is read after every op: mtty's UBSAN report from a TX write came
    # ten ops before the program ended, and reading once per program blamed the last op.
    def target(per_op, report="UBSAN: array-index-out-of-bounds in mtty.c:383:34", answer=None):
        t = v2(splats=[])
        t.script("reset", lambda orig: (t.kernel_log.append(report), answer if answer is not None else orig())[1])
        t.reports_per_op = per_op
        return t

    program = "set 0 state=STOP\nreset 0\nget 0\nget 1"
    assert expect(run(target(True), program), "kernel-splat", NONE).step == 1
    assert expect(run(target(False), program), "kernel-splat", NONE).step == 3
    silent(run(target(True), "set 0 state=STOP\nget 0"))
    # a program ended by another finding takes the reports its ops logged along (the next program
    # would otherwise be blamed for them)
    t = target(True, "UBSAN: array-index-out-of-bounds in mtty.c:572:20", EIO)
    f = expect(run(t, "set 0 state=STOP\nreset 0\nget 0"), "rejected-valid", FAILED, step=1)
    assert f.detail.endswith("kernel reports logged meanwhile:\nUBSAN: array-index-out-of-bounds in mtty.c:572:20")
    assert t.kernel_log == []
    traced = Executor(target(False), trace=True).run(parse_program(f"migfuzz-program 1 v2\n{program}\n"))
    assert traced.kind == "kernel-splat" and traced.step == 1  # repro and a finding's replay trace every op


# =============================================================================
# v1
# =============================================================================


def v1_state_write(answer):
    """A region_write script for device_state only: ``answer(orig, value)``."""
    def fn(orig, offset, data):
        if offset == OFF["device_state"] and len(data) == 4:
            return answer(orig, int.from_bytes(data, "little"))
        return orig(offset, data)
    return fn


def v1_field_read(name, answer):
    """A region_read script for one field: ``answer(orig)`` -> (errno, value or None)."""
    size = V1_FIELDS[name][1]

    def fn(orig, offset, n):
        if offset == OFF[name] and n == size:
            err, value = answer(orig)
            return err, (b"" if value is None else value.to_bytes(size, "little"))
        return orig(offset, n)
    return fn


def real_field(orig, name):
    """The real device's value of a field (``orig`` is its region_read)."""
    err, raw = orig(*V1_FIELDS[name])
    assert not err
    return int.from_bytes(raw, "little")


def force_state(t, dev=0, only=None):
    """A device_state write that is accepted whatever the value (the low bits become the state);
    with ``only``, just that value."""
    def accept(orig, value):
        if only is not None and value != only:
            return orig(OFF["device_state"], value.to_bytes(4, "little"))
        t.real(dev).state = value & 7
        return 0, 4
    return v1_state_write(accept)


@pytest.mark.parametrize("prelude,value", [
    ("", 0b101), ("", 0b111), ("", V1_ERROR), ("", 0b1101), ("", 0xFFFFFFFF),
    ("set 0 value=0b100", 0b111), ("set 0 value=0b011", 0b101),
])
def test_v1_invalid_value_accepted(prelude, value):
    t = v1()
    t.script("region_write", force_state(t, only=value))
    step = 1 if prelude else 0
    expect(run(t, f"{prelude}\nset 0 value={value:#x}"), "accepted-invalid", OK, step=step)
    silent(run(v1(), f"{prelude}\nset 0 value={value:#x}\nget 0"))


def test_v1_reserved_bits():
    # a write with reserved bits set need not be accepted ...
    silent(run(v1(), "set 0 value=0x9\nget 0\nset 0 value=0xa\nget 0"))
    # ... nor refused (its low bits are a valid state) ...
    t = v1()
    t.script("region_write", force_state(t))
    silent(run(t, "set 0 value=0x9\nget 0\nset 0 value=0x8\nget 0"))
    # ... and a refusal into ERROR is no wrong refusal of a valid request
    def to_error(orig, value):
        t2.real().enter_error()
        return EINVAL, 0
    t2 = v1().script("region_write", v1_state_write(to_error))
    silent(run(t2, "set 0 value=0x9\nget 0\nreset 0"))
    # but with the invalid low bits it must be refused
    expect(run(t, "set 0 value=0xd"), "accepted-invalid", OK)


def test_v1_accepted_from_error():
    # only a reset leaves 110b: an accepted write from ERROR is a finding
    t = v1()
    t.script("region_write", on_call(2, lambda orig, offset, data: (setattr(t.real(), "state", 1), (0, 4))[1]))
    body = "fault 0 nth=1 kind=hwerror\nset 0 value=0b011\nset 0 value=0b001"
    expect(run(t, body), "accepted-invalid", OK, step=2)
    silent(run(v1(), body + "\nget 0\nreset 0\nget 0\nset 0 value=0b011"))


def test_v1_accepted_but_state_differs():
    t = v1().script("region_write", v1_state_write(lambda orig, value: (0, 4)))
    expect(run(t, "set 0 value=0b011"), "state-mismatch", Check("state_not", 0b011), step=0)


def test_v1_device_state_unreadable_after_a_write():
    t = v1().script("region_read", v1_field_read("device_state", lambda orig: (EIO, None)))
    expect(run(t, "set 0 value=0b011"), "rejected-valid", GET_FAILED, step=0)
    expect(run(t, "get 0"), "rejected-valid", FAILED, step=0)


def test_v1_get_mismatch():
    t = v1().script("region_read", v1_field_read("device_state", lambda orig: (0, 0b000)))
    expect(run(t, "get 0"), "state-mismatch", Check("state_not", V1_RUN))
    expect(run(t, "rd 0 field=device_state"), "state-mismatch", Check("state_not", V1_RUN))
    silent(run(v1(), "get 0\nrd 0 field=device_state\nset 0 value=0b000\nget 0"))


def test_v1_reserved_bits_read_back_judged_alike():
    # a device that reports reserved bit 3 in device_state: after a set the oracle ignores it (masks),
    # a plain read of the same value must not then be a state mismatch
    reserved_bit = v1_field_read("device_state", lambda orig: (0, real_field(orig, "device_state") | 0x8))
    t = v1().script("region_read", reserved_bit)
    silent(run(t, "set 0 value=0b011"))
    silent(run(t, "set 0 value=0b011\nget 0"))


@pytest.mark.parametrize("value", [0b000, 0b010, 0b011, 0b100])
def test_v1_valid_write_refused(value):
    def refuse(orig, v):
        if fire[0]:
            t.fire()
        return EIO, 0
    fire = [False]
    t = v1(real_faults=False).script("region_write", v1_state_write(refuse))
    expect(run(t, f"set 0 value={value:#b}"), "rejected-valid", FAILED, step=0)
    fire[0] = True
    silent(run(t, f"fault 0 nth=1 kind=nomem\nset 0 value={value:#b}\nget 0"))
    # the simulator's own fault
    silent(run(v1(), f"fault 0 nth=1 kind=nomem\nset 0 value={value:#b}\nget 0"))


def test_v1_refused_into_error():
    def to_error(orig, value):
        t.real().enter_error()
        if fire[0]:
            t.fire()
        return EIO, 0
    fire = [False]
    t = v1(real_faults=False).script("region_write", v1_state_write(to_error))
    expect(run(t, "set 0 value=0b010"), "rejected-valid", FAILED, step=0)
    fire[0] = True
    silent(run(t, "fault 0 nth=1 kind=hwerror\nset 0 value=0b010\nget 0\nreset 0"))
    fire[0] = False
    # refusing an invalid value by going to ERROR is allowed
    silent(run(t, "set 0 value=0b101\nget 0"))
    silent(run(v1(), "fault 0 nth=1 kind=hwerror\nset 0 value=0b010\nget 0\nreset 0\nget 0"))


@pytest.mark.parametrize("prelude,cur,value,third", [
    ("", V1_RUN, 0b010, 0b000), ("", V1_RUN, 0b101, 0b000), ("set 0 value=0b011", 0b011, 0b010, 0b001),
])
def test_v1_bad_state_after_failure(prelude, cur, value, third):
    def third_state(orig, v):
        t.real().state = third
        t.fire()
        return EIO, 0
    t = v1(real_faults=False).script("region_write", on_call(2 if prelude else 1, lambda orig, o, d: third_state(
        orig, d)))
    step = 2 if prelude else 1
    expect(run(t, f"{prelude}\nfault 0 nth=1 kind=nomem\nset 0 value={value:#b}"), "bad-state-after-failure",
           Check("state_not_in", tuple(sorted({cur, V1_ERROR}))), step=step)


def test_v1_failed_write_changes_a_stopped_device():
    def busy_refuse(orig, value):
        t.real().core.work(3)
        return EINVAL, 0
    t = v1()
    t.script("region_write", on_call(2, lambda orig, o, d: busy_refuse(orig, 0)))
    expect(run(t, "set 0 value=0b000\nset 0 value=0b111"), "state-changed-while-stopped", NONE, step=1)
    silent(run(v1(), "set 0 value=0b000\nset 0 value=0b111\nactivity 0 seed=3\nget 0"))


# ----------------------------------------------------------------------------- v1 loads


def test_v1_valid_stream_rejected():
    def refuse_load(orig, value):
        if t.real(1).state == V1_RESUMING and not value & V1_RESUMING:
            if fire[0]:
                t.fire(1)
            return EINVAL, 0
        return orig(OFF["device_state"], value.to_bytes(4, "little"))
    fire = [False]
    t = v1(real_faults=False).script("region_write", v1_state_write(refuse_load), dev=1)
    expect(run(t, V1_MIGRATE), "valid-stream-rejected", FAILED, step=5)
    fire[0] = True
    silent(run(t, V1_MIGRATE.replace("set 1 value=0b001", "fault 1 nth=1 kind=nomem\nset 1 value=0b001")))


# The regression: a correct simulator, a fault injected into the load. Without the oracle's
# fault excuse for a failed load (V1Oracle.on_set -> Oracle.loaded(..., fault)) this program is
# a false "valid-stream-rejected".
V1_FAULTED_LOAD = """
    set 0 value=0b010
    drain 0
    set 1 value=0b100
    transfer 0 dst=1 seg=0
    fault 1 nth={nth} kind={kind}
    set 1 value=0b001
"""


@pytest.mark.parametrize("nth,kind", [(1, "nomem"), (2, "nomem"), (1, "timeout"), (2, "hwerror")])
def test_v1_failed_load_from_an_injected_fault_is_excused(nth, kind):
    body = V1_FAULTED_LOAD.format(nth=nth, kind=kind)
    silent(run(v1(), body + "\nget 1"))

    # the fault does fire and fails the load: a target that hides the fault from the oracle
    # (the oracle without its excuse) turns the same program into a finding
    class Hidden(FakeTarget):
        def fault_fired(self, dev):
            return False
    expect(run(Hidden("v1", 0), body), "valid-stream-rejected" if kind != "hwerror" else "rejected-valid", FAILED,
           step=5)


def test_v1_faulted_load_then_a_clean_retry():
    # the failed load leaves RESUMING with the bytes still there: the retry loads them
    silent(run(v1(), V1_FAULTED_LOAD.format(nth=2, kind="nomem") + "\nset 1 value=0b001\nget 1"))


def test_v1_resume_corrupted():
    def corrupt(orig, offset, data):
        was = t.real(1).state
        out = orig(offset, data)
        if offset == 0 and was == V1_RESUMING and not out[0]:
            t.real(1).core.regs[2] ^= 4
        return out
    t = v1().script("region_write", corrupt, dev=1)
    expect(run(t, V1_MIGRATE), "resume-corrupted", NONE, step=5)


V1_DAMAGED = V1_MIGRATE.replace("set 1 value=0b100", "mangle 0 kind=drop arg=3\nset 1 value=0b100")


def test_v1_damaged_stream_accepted():
    expect(run(accept_anything(v1()), V1_DAMAGED), "damaged-stream-accepted", OK, step=6)
    silent(run(accept_anything(v1(validates_stream=False)), V1_DAMAGED))
    silent(run(v1(), V1_DAMAGED + "\nget 1"))


def test_v1_transfer_refused():
    def refuse(orig, offset, data):
        if offset == OFF["data_size"]:
            if fire[0]:
                t.fire(1)
            return EIO, 0
        return orig(offset, data)
    fire = [False]
    t = v1(real_faults=False).script("region_write", refuse, dev=1)
    expect(run(t, V1_MIGRATE), "valid-stream-rejected", FAILED, step=4)
    fire[0] = True
    silent(run(t, V1_MIGRATE.replace("transfer", "fault 1 nth=1 kind=nomem\ntransfer")))
    # a window write from the program first: not a complete stream any more
    fire[0] = False
    t2 = v1().script("region_write", on_call(3, lambda orig, offset, data: (EIO, 0)), dev=1)
    silent(run(t2, V1_MIGRATE.replace("transfer", "wrwin 1 data=00\ntransfer")))


# ----------------------------------------------------------------------------- v1 region fields


def test_v1_reserved_field_reads_nonzero():
    t = v1().script("region_read", v1_field_read("reserved", lambda orig: (0, 5)))
    expect(run(t, "rd 0 field=reserved"), "accepted-invalid", Check("value_nonzero"), step=0)
    silent(run(v1(), "rd 0 field=reserved\nset 0 value=0b010\nrd 0 field=reserved"))
    # a failed read is not a non-zero value
    silent(run(v1().script("region_read", v1_field_read("reserved", lambda orig: (EIO, None))), "rd 0 field=reserved"))


def test_v1_reserved_field_writes_stick():
    stuck = [0]

    def write(orig, offset, data):
        if offset == OFF["reserved"]:
            stuck[0] = int.from_bytes(data, "little")
            return 0, 4
        return orig(offset, data)
    t = v1().script("region_write", write).script("region_read", v1_field_read("reserved", lambda orig: (0, stuck[0])))
    expect(run(t, "wr 0 field=reserved value=0x5"), "accepted-invalid", Check("value_nonzero"), step=0)
    silent(run(t, "wr 0 field=reserved value=0x0"))
    silent(run(v1(), "wr 0 field=reserved value=0x5\nrd 0 field=reserved\nwr 0 field=pending_bytes value=0x5"))


@pytest.mark.parametrize("offset,size", [
    (V1_HEADER_SIZE - 1, 0), (0, 0), (V1_HEADER_SIZE, 0), (V1_HEADER_SIZE, 0x1040 - V1_HEADER_SIZE),
    (V1_HEADER_SIZE, 0x1041 - V1_HEADER_SIZE), (0x1030, 0x10), (0x1030, 0x11), (0x1040, 0), (0x1041, 0),
])
def test_v1_region_window(offset, size):
    # the data window [data_offset, data_offset + data_size) lies in [header, region_size)
    assert FakeTarget("v1", 0).region_size == 0x1040
    outside = offset < V1_HEADER_SIZE or offset + size > 0x1040

    def read(orig, off, n):
        if off == OFF["data_offset"]:
            return 0, offset.to_bytes(8, "little")
        if off == OFF["data_size"]:
            return 0, size.to_bytes(8, "little")
        if off >= V1_HEADER_SIZE:
            return 0, b"\0" * n
        return orig(off, n)
    t = v1().script("region_read", read)
    # a save iteration reads data_offset and data_size
    got = run(t, "set 0 value=0b010\nsave 0")
    if outside:
        expect(got, "region-layout", Check("window_outside"), step=1)
    else:
        silent(got)
    # a bare data_offset read (not saving) is checked with no size
    got = run(t, "rd 0 field=data_offset")
    if offset < V1_HEADER_SIZE or offset > 0x1040:
        expect(got, "region-layout", Check("window_outside"), step=0)
    else:
        silent(got)


def test_v1_region_window_in_a_transfer():
    def read(orig, off, n):
        if off == OFF["data_offset"]:
            return 0, (8).to_bytes(8, "little")
        return orig(off, n)
    t = v1().script("region_read", read, dev=1)
    expect(run(t, V1_MIGRATE), "region-layout", Check("window_outside"), step=4)
    silent(run(v1(), "set 0 value=0b010\nsave 0\nrd 0 field=data_offset\nrd 0 field=data_size"))


def test_v1_save_iteration_errors():
    def failing(name):
        def answer(orig):
            if fire[0]:
                t.fire()
            return EIO, None
        return v1_field_read(name, answer)
    fire = [False]
    for name in ("pending_bytes", "data_offset"):
        t = v1(real_faults=False).script("region_read", failing(name))
        fire[0] = False
        expect(run(t, "set 0 value=0b010\nsave 0"), "rejected-valid", FAILED, step=1)
        expect(run(t, "set 0 value=0b010\nfault 0 nth=1 kind=nomem\ndrain 0"), "rejected-valid", FAILED, step=2)
        fire[0] = True
        silent(run(t, "set 0 value=0b010\nfault 0 nth=1 kind=nomem\nsave 0"))
    # data_size and the chunk
    t = v1(real_faults=False).script("region_read", failing("data_size"))
    fire[0] = False
    expect(run(t, "set 0 value=0b010\nsave 0"), "rejected-valid", FAILED, step=1)

    def window_fails(orig, off, n):
        return (EIO, b"") if off >= 0x1000 else orig(off, n)
    expect(run(v1().script("region_read", window_fails), "set 0 value=0b010\nsave 0"), "rejected-valid", FAILED)
    # the simulator's own fault in data_offset (it stages a chunk)
    silent(run(v1(), "set 0 value=0b010\nfault 0 nth=1 kind=nomem\nsave 0\ndrain 0"))


def test_v1_pending_bytes_never_reach_zero():
    never_zero = v1_field_read("pending_bytes", lambda orig: (0, max(1, real_field(orig, "pending_bytes"))))
    t = v1().script("region_read", never_zero)
    expect(run(t, "set 0 value=0b010\ndrain 0"), "hang", HANG, step=1)
    silent(run(v1(), "set 0 value=0b010\ndrain 0\ndrain 0\nset 0 value=0b011\ndrain 0"))


def test_v1_data_after_the_end_of_the_stream():
    ended = [False]

    def pending(orig):
        err, value = 0, real_field(orig, "pending_bytes")
        if value == 0:
            if ended[0]:
                return 0, 4
            ended[0] = True
        return err, value

    def read(orig, off, n):
        if off == OFF["pending_bytes"]:
            err, value = pending(orig)
            return err, value.to_bytes(8, "little")
        if ended[0] and off == OFF["data_size"]:
            return 0, (4).to_bytes(8, "little")
        if ended[0] and off >= 0x1000:
            return 0, b"more"
        return orig(off, n)
    t = v1().script("region_read", read)
    f = run(t, "set 0 value=0b010\ndrain 0\nsave 0")
    # pending_bytes 0 then 4 in stop-and-copy: data after the end (and, where the oracle checks
    # it, pending_bytes growing while stopped, which it sees first)
    assert f is not None and f.kind == "stream-protocol" and f.step == 2, f
    assert f.check in (Check("data_after_end"), Check("pending_grew")), f
    silent(run(v1(), "set 0 value=0b010\ndrain 0\nsave 0\ndrain 0"))
    # in pre-copy (011b) pending_bytes 0 is no end of stream: more may come
    silent(run(v1(), "set 0 value=0b011\ndrain 0\nactivity 0 seed=4\ndrain 0\nset 0 value=0b010\ndrain 0"))


def test_v1_reset():
    expect(run(v1().script("reset", const(EIO)), "reset 0"), "rejected-valid", FAILED)
    t = v1().script("region_read", on_call(1, lambda orig, off, n: (EIO, b"")))
    expect(run(t, "reset 0"), "state-mismatch", GET_FAILED)
    t = v1().script("reset", lambda orig: (orig(), setattr(t.real(), "state", 0))[0])
    expect(run(t, "reset 0"), "state-mismatch", Check("state_not", V1_RUN))
    expect(run(v1().script("live_files", const(1)), "reset 0"), "resource-leak", NONE)
    silent(run(v1(), "set 0 value=0b011\nreset 0\nget 0\nset 0 value=0b100\nreset 0\nget 0"))


def test_v1_live_files():
    expect(run(v1().script("live_files", const(0)), "set 0 value=0b011"), "resource-leak", NONE, step=0)
    expect(run(v1().script("live_files", const(1)), "set 0 value=0b000"), "resource-leak", NONE, step=0)
    expect(run(v1().script("live_files", const(2)), "set 0 value=0b010"), "resource-leak", NONE, step=0)
    silent(run(v1().script("live_files", const(None)), "set 0 value=0b011"))
    silent(run(v1().script("live_files", const(5)), "fault 0 nth=1 kind=hwerror\nset 0 value=0b011"))


def test_v1_state_changes_while_stopped():
    t = v1().script("activity", lambda orig, seed: t.real().core.work(seed))
    for state in ("0b000", "0b010", "0b100"):
        expect(run(t, f"set 0 value={state}\nactivity 0 seed=5"), "state-changed-while-stopped", NONE, step=1)
    silent(run(t, "activity 0 seed=5\nset 0 value=0b011\nactivity 0 seed=6\nset 0 value=0b010"))
    silent(run(v1(), "set 0 value=0b000\nactivity 0 seed=5\nset 0 value=0b010\nactivity 0 seed=6"))

    def busy(orig, offset, data):
        out = orig(offset, data)
        if offset == OFF["device_state"] and int.from_bytes(data, "little") == 0b010 and not out[0]:
            t2.real().core.work(2)
        return out
    t2 = v1().script("region_write", busy)
    expect(run(t2, "set 0 value=0b000\nset 0 value=0b010"), "state-changed-while-stopped", NONE, step=1)


def test_v1_state_changes_while_a_transfer_writes_the_window():
    # RESUMING is stopped: a device that changes on its window writes is caught at the transfer, and
    # before a later write's refusal is judged
    def busy_window(orig, offset, data):
        out = orig(offset, data)
        if offset >= V1_HEADER_SIZE:
            changing.real(1).core.work(1)
        return out
    changing = v1().script("region_write", busy_window, dev=1)
    migrate = "set 0 value=0b010\ndrain 0\nset 1 value=0b100\ntransfer 0 dst=1 seg=16"
    expect(run(changing, migrate), "state-changed-while-stopped", NONE, step=3)

    def busy_then_refusing(orig, offset, data):
        if offset >= V1_HEADER_SIZE:
            writes.append(offset)
            if len(writes) > 1:
                return errno.EIO, None
            refusing.real(1).core.work(1)
        return orig(offset, data)
    writes = []
    refusing = v1().script("region_write", busy_then_refusing, dev=1)
    expect(run(refusing, migrate), "state-changed-while-stopped", NONE, step=3)
    silent(run(v1(), migrate + "\nset 1 value=0b001"))

    def failing(orig, offset, data):  # an injected failure that changes the device as it fails the write
        if offset >= V1_HEADER_SIZE:
            injected.fire(1)
            injected.real(1).core.work(1)
            return errno.EIO, None
        return orig(offset, data)
    injected = v1().script("region_write", failing, dev=1)
    # the resync after the op takes the state it left
    silent(run(injected, migrate.replace("transfer", "fault 1 nth=1 kind=hwerror\ntransfer")))


def test_v1_device_hang_exception_splat():
    def hang(orig):
        raise DeviceHang("reset spins")
    t = v1().script("reset", hang)
    expect(run(t, "reset 0"), "hang", HANG)
    t = v1().script("region_write", lambda orig, off, data: {}["missing"])
    expect(run(t, "set 0 value=0b010"), "target-exception", Check("exception"))
    expect(run(v1(splats=["BUG: kernel NULL pointer dereference"]), "get 0"), "kernel-splat", NONE)
    silent(run(v1(splats=[]), "get 0"))


def test_v1_transfer_after_junk_may_be_refused():
    # The v1 header: a data error is reported on a later write of a field. A device that saw junk first
    # (a wrwin from the program) may refuse every later chunk; the stream it gets is no longer
    # the untouched stream, so the refusal is no "valid-stream-rejected" (as in v2).
    junk = [False]

    def write(orig, offset, data):
        if offset == OFF["data_size"]:
            if junk[0]:
                return EIO, 0
            junk[0] = True
        return orig(offset, data)
    t = v1().script("region_write", write, dev=1)
    silent(run(t, V1_MIGRATE.replace("transfer", "wrwin 1 data=00\ntransfer")))


# =============================================================================
# the rules of the device registers and lifecycle (reopen, rdreg/wrreg, info leaks), of what a
# load may accept, and of the v1 read-only fields and pending_bytes
# =============================================================================


def _oracle_literals() -> tuple[set, set]:
    """The kinds of the oracle's ``self.fail(...)`` calls and the tests of its ``Check(...)``s, read from
    its source (a mutation tool's generated copies of a function are left out)."""
    with open(fuzz.oracles.__file__) as f:
        tree = ast.parse(f.read())
    kinds, checks = set(), set()

    def walk(node):
        if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name:
            return
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "fail":
                kinds.add(node.args[0].value)
            elif isinstance(func, ast.Name) and func.id == "Check":
                checks.add(node.args[0].value)
        for child in ast.iter_child_nodes(node):
            walk(child)
    walk(tree)
    return kinds, checks


def test_every_kind_and_check_the_oracle_raises_is_declared():
    kinds, checks = _oracle_literals()
    declared = {c for cs in KIND_CHECKS.values() for c in cs}
    assert kinds and checks
    assert kinds <= set(FINDING_KINDS), kinds - set(FINDING_KINDS)
    assert checks <= declared, checks - declared


RX_TX, LCR = 0, 3


def test_reopen():
    silent(run(v2(), "set 0 state=STOP_COPY\nreopen 0\nget 0\nset 0 state=STOP_COPY\ndrain 0 fd=0"))
    silent(run(v1(), "set 0 value=0b011\nreopen 0\nget 0\nset 0 value=0b100\nreopen 0\nget 0"))
    # the old data_fds went with the close: ops on them are skipped, whatever they would answer
    silent(run(v2().script("read", const(0, b"x")), "set 0 state=STOP_COPY\nreopen 0\nread 0 fd=0 n=1"))
    expect(run(v2().script("reopen", const(EIO)), "reopen 0"), "rejected-valid", FAILED, step=0)
    t = v2().script("get_state", const(EIO, RUNNING))
    expect(run(t, "reopen 0"), "state-mismatch", GET_FAILED)

    def keeps_state(orig):
        state = t2.real().state
        out = orig()
        t2.real().state = state
        return out
    t2 = v2().script("reopen", keeps_state)
    expect(run(t2, "set 0 state=STOP\nreopen 0"), "state-mismatch", Check("state_not", RUNNING), step=1,
                cause="state survives reopen")
    expect(run(v2().script("live_files", on_call(2, const(1))), "set 0 state=STOP_COPY\nreopen 0"),
                "resource-leak", NONE, step=1)
    t3 = v1().script("region_read", on_call(1, lambda orig, off, n: (0, (0b010).to_bytes(4, "little"))))
    expect(run(t3, "reopen 0"), "state-mismatch", Check("state_not", V1_RUN))


def test_wrreg_on_a_stopped_device_is_its_new_frozen_state():
    # a register write is legal in every state: the stopped device's state to hold is the new one
    silent(run(v2(), f"set 0 state=STOP\nwrreg 0 region=0 off={LCR:#x} size=1 value=0x3\nset 0 state=STOP_COPY\n"
                     "drain 0 fd=0\nset 0 state=STOP"))
    silent(run(v1(), f"set 0 value=0b000\nwrreg 0 region=0 off={LCR:#x} size=1 value=0x3\nset 0 value=0b010"))
    # but a change nobody asked for is still one
    t = v2().script("activity", lambda orig, seed: t.real().core.work(seed))
    expect(run(t, f"set 0 state=STOP\nwrreg 0 region=0 off={LCR:#x} size=1 value=0x3\nactivity 0 seed=1"),
           "state-changed-while-stopped", NONE, step=2)


def test_register_accesses_outside_the_profile_are_never_made():
    def boom(orig, *args):
        raise AssertionError("the profile keeps programs away from this register")
    t = v2().script("reg_read", boom).script("reg_write", boom)
    silent(run(t, "rdreg 0 region=5 off=0x0 size=1\nwrreg 0 region=5 off=0x0 size=1 value=0x1\n"
                  "rdreg 0 region=0 off=0x0 size=4"))


KERNEL_ADDRESS = (0xFFFF888000123450).to_bytes(8, "little")


def test_kernel_address_from_a_data_fd():
    t = v2().script("read", on_call(1, lambda orig, fd, n: (0, b"\x01" + KERNEL_ADDRESS)))
    expect(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=64"), "info-leak", Check("kernel_address"), step=1,
                cause="kernel address")
    # the same bytes split over two reads
    t = v2().script("read", lambda orig, fd, n: (0, KERNEL_ADDRESS[:3] if n == 3 else KERNEL_ADDRESS[3:]))
    expect(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=3\nread 0 fd=0 n=5"), "info-leak",
                Check("kernel_address"), step=2)
    # -1 is no address
    minus = bytes(8) + (-1).to_bytes(8, "little", signed=True) + bytes(8)
    silent(run(v2().script("read", on_call(1, lambda orig, fd, n: (0, minus))), "set 0 state=STOP_COPY\n"
                                                                                  "read 0 fd=0 n=64"))


def test_kernel_address_from_a_register():
    t = v2().script("reg_read", lambda orig, region, off, size: (0, KERNEL_ADDRESS[:size]) if region == 7
                    else orig(region, off, size))
    expect(run(t, "rdreg 0 region=7 off=0x0 size=8"), "info-leak", Check("kernel_address"), step=0)
    silent(run(v2(), "rdreg 0 region=7 off=0x0 size=8\nrdreg 0 region=7 off=0x3f8 size=8"))


def test_data_out_register_hands_out_only_what_entered():
    t = v2().script("reg_read", lambda orig, region, off, size: (0, b"\x5a") if (region, off) == (0, RX_TX)
                    else orig(region, off, size))
    f = expect(run(t, "rdreg 0 region=0 off=0x0 size=1"), "info-leak", Check("not_entered", (0, (0,))), step=0)
    assert f.cause
    # the byte went in through TX first: fine
    silent(run(t, "wrreg 0 region=0 off=0x0 size=1 value=0x5a\nrdreg 0 region=0 off=0x0 size=1"))
    # with DLAB set the register is the divisor latch, not the FIFO: not judged as data-out
    silent(run(t, f"wrreg 0 region=0 off={LCR:#x} size=1 value=0x80\nrdreg 0 region=0 off=0x0 size=1"))
    # the correct device: its idle value, then what was pushed
    silent(run(v2(), "rdreg 0 region=0 off=0x0 size=1\nwrreg 0 region=0 off=0x0 size=1 value=0x41\n"
                     "rdreg 0 region=0 off=0x0 size=1\nrdreg 0 region=0 off=0x0 size=1"))


def test_registers_compared_across_a_migration_without_digest():
    # no digest: the device is judged by its side-effect-free registers after the load
    t = v2(has_digest=False)
    silent(run(t, "wrreg 0 region=0 off=0x7 size=1 value=0x33\n" + V2_MIGRATE))

    def scr_differs(orig, region, off, size):
        err, data = orig(region, off, size)
        return (err, bytes([data[0] ^ 1])) if (region, off) == (0, 7) and not err and t2.real(1).state == STOP \
            else (err, data)
    t2 = v2(has_digest=False).script("reg_read", scr_differs, dev=1)
    f = expect(run(t2, V2_MIGRATE), "resume-corrupted", NONE, step=4)
    assert "SCR" in f.cause


def test_load_of_an_empty_session():
    expect(run(accept_anything(v2()), "set 1 state=RESUMING\nset 1 state=STOP"), "damaged-stream-accepted", OK,
                step=1, cause="empty session")
    expect(run(accept_anything(v1()), "set 1 value=0b100\nset 1 value=0b001"), "damaged-stream-accepted", OK,
                step=1, cause="empty session")
    silent(run(v2(), "set 1 state=RESUMING\nset 1 state=STOP\nget 1"))


def test_load_of_a_strict_prefix():
    body = V2_MIGRATE.replace("set 1 state=RESUMING", "mangle 0 kind=truncate arg=10\nset 1 state=RESUMING")
    # even on a target that does not promise to validate streams: a prefix is incomplete for every driver
    expect(run(accept_anything(v2(validates_stream=False)), body), "damaged-stream-accepted", OK, step=5,
                cause="partial stream")
    silent(run(v2(), body))


def test_load_counting_a_failed_write():
    def fail_second(orig, fd, data):
        calls[0] += 1
        return (EIO, 0) if calls[0] == 2 else orig(fd, data)
    calls = [0]
    t = accept_anything(v2(validates_stream=False)).script("write", fail_second, dev=1)
    body = V2_MIGRATE.replace("transfer 0 dst=1 seg=0", "write 1 fd=0 data=00\ntransfer 0 dst=1 seg=0")
    expect(run(t, body), "damaged-stream-accepted", OK, step=5, cause="failed write counted")
    # a failed write with an injected fault that fired is not held against the load
    silent(run(v2(), V2_MIGRATE.replace("transfer 0 dst=1 seg=0", "fault 1 nth=1 kind=nomem\n"
                                        "write 1 fd=0 data=00\ntransfer 0 dst=1 seg=0")))


def test_v1_pending_bytes_grow_in_stop_and_copy():
    grow = [0]

    def pending(orig):
        grow[0] += 1
        return 0, real_field(orig, "pending_bytes") + grow[0] * 1000
    t = v1().script("region_read", v1_field_read("pending_bytes", pending))
    expect(run(t, "set 0 value=0b010\nsave 0\nsave 0"), "stream-protocol", Check("pending_grew"), step=2)
    grow[0] = 0
    expect(run(t, "set 0 value=0b010\nrd 0 field=pending_bytes\nrd 0 field=pending_bytes"), "stream-protocol",
                Check("pending_grew"), step=2)
    grow[0] = 0
    # pre-copy (011b) may grow: the device runs
    silent(run(t, "set 0 value=0b011\nsave 0\nsave 0\nrd 0 field=pending_bytes"))
    silent(run(v1(), "set 0 value=0b011\nsave 0\nactivity 0 seed=3\nsave 0\nset 0 value=0b010\nsave 0\ndrain 0"))


@pytest.mark.parametrize("prelude,field", [("", "pending_bytes"), ("", "data_offset"),
                                           ("set 0 value=0b010", "data_size"), ("set 0 value=0b011", "data_size")])
def test_v1_read_only_field_written(prelude, field):
    stored = {}

    def write(orig, offset, data):
        if offset == OFF[field]:
            stored[field] = int.from_bytes(data, "little")
            return 0, len(data)
        return orig(offset, data)

    def read(orig, offset, n):
        if offset == OFF[field] and field in stored:
            return 0, stored[field].to_bytes(n, "little")
        return orig(offset, n)
    t = v1().script("region_write", write).script("region_read", read)
    step = 1 if prelude else 0
    expect(run(t, f"{prelude}\nwr 0 field={field} value=0x77"), "accepted-invalid", Check("value_changed"),
           step=step, cause=f"{field} writable")
    silent(run(v1(), f"{prelude}\nwr 0 field={field} value=0x77\nget 0"))
    # data_size is written while resuming (the data window's size)
    silent(run(v1(), "set 0 value=0b100\nwr 0 field=data_size value=0x4\nget 0"))


# =============================================================================
# races: two calls at once, judged against their two serial orders
# =============================================================================

RACE_PRE = "set 0 state=PRE_COPY\nread 0 fd=0 n=16\n"


def race_claim(*outcomes):
    return Check("race_outcome_not_in", tuple(sorted(outcomes)))


def test_race_of_a_serial_order_is_silent():
    # a reset during the SET, deferred to its unlock: the SET's answer (no new data_fd), then RUNNING
    silent(run(v2(), RACE_PRE + "race 0 x=set xarg=3 y=reset sched=4\nget 0\nread 0 fd=0 n=16"))
    # the reset first: the SET opens a new session from RUNNING, its data_fd is live
    silent(run(v2(), RACE_PRE + "race 0 x=set xarg=3 y=reset sched=0\nread 0 fd=0 n=16\nread 0 fd=1 n=16"))
    silent(run(v1(), "set 0 value=0b011\nrace 0 x=set xarg=2 y=reset sched=1\nget 0"))


def test_race_of_no_serial_order():
    # a reset that leaves the state alone: the SET's answer says it came first, the state says the reset did not
    t = v2().script("reset", lambda orig: 0)
    want = race_claim(race_outcome(RACE_OK, RACE_OK, RUNNING), race_outcome(RACE_FD, RACE_OK, STOP_COPY))
    f = expect(run(t, RACE_PRE + "race 0 x=set xarg=3 y=reset sched=4"), "race-not-serializable", want, step=2,
               cause="reset+set")
    assert "STOP_COPY" in f.observed and "RUNNING" in f.expected
    # v1: an invalid value refused, the reset doing nothing: the old state, which neither order leaves
    t = v1().script("reset", lambda orig: 0)
    expect(run(t, "set 0 value=0b011\nrace 0 x=set xarg=7 y=reset sched=1"), "race-not-serializable",
           race_claim(race_outcome(RACE_FAILED, RACE_OK, V1_RUN), race_outcome(RACE_FAILED, RACE_OK, V1_ERROR)),
           step=1)


def test_race_with_a_call_wrong_on_its_own_blames_the_call():
    # SET ERROR accepted: wrong whichever call came first, so the SET's defect, claimed on the race's outcome
    def accept_error(orig, new):
        return (0, -1) if new == ERROR else orig(new)
    t = v2().script("set_state", accept_error)
    f = expect(run(t, "race 0 x=set xarg=0 y=get sched=1"), "accepted-invalid", race_claim(
        race_outcome(RACE_FAILED, RACE_GOT | RUNNING, RUNNING)), step=0)
    assert f.cause == ""
    silent(run(v2(), "race 0 x=set xarg=0 y=get sched=1\nget 0"))


def test_race_fitting_an_order_with_a_wrong_answer_is_no_claim_on_the_race():
    # the read answers a serial order, but hands out more bytes than asked: the read's defect, which the
    # race's answer (what the reproducers judge) cannot show
    t = v2().script("read", lambda orig, fd, n: (0, b"\x01" * (n + 1)))
    expect(run(t, "set 0 state=STOP_COPY\nrace 0 x=read y=get sched=0"), "stream-protocol", NONE, step=1)
    silent(run(v2(), "set 0 state=STOP_COPY\nrace 0 x=read y=get sched=0\ndrain 0 fd=0"))


def test_race_after_which_the_state_cannot_be_read():
    t = v2().script("get_state", on_call(1, const(EIO, RUNNING)))
    expect(run(t, "race 0 x=reset y=reset"), "rejected-valid", GET_FAILED, step=0)
    silent(run(v2(), "race 0 x=reset y=reset\nget 0"))


@pytest.mark.parametrize("digest", [True, False])
def test_race_whose_order_cannot_be_told(digest):
    # v1: a load (RESUMING cleared) and a reset answer alike whether the load came first; the load is
    # then not judged (the first order's load would not match the device)
    prog = V1_MIGRATE + "race 1 x=set xarg=1 y=reset sched={}\nget 1\nrd 1 field=device_state"
    for sched in (0, 1, 2, 3):
        silent(run(v1(has_digest=digest), prog.format(sched)))


def test_access_past_the_end_of_a_region():
    # mtty's mdev_access() does not bound the offset: reads past the config space answer
    def past(orig, region, off, size):
        return (0, bytes(size)) if region == 7 else orig(region, off, size)
    t = v2().script("reg_read", past)
    expect(run(t, "rdreg 0 region=7 off=0x34 size=4\nrdreg 0 region=7 off=0x36 size=4"), "out-of-bounds", OK,
           step=1, cause="region 7 read past its end")
    silent(run(t, "rdreg 0 region=7 off=0x34 size=4\nrdreg 0 region=7 off=0x30 size=8"))  # up to the last byte
    t = v2().script("reg_write", lambda orig, region, off, data: (0, len(data)) if region == 7
                    else orig(region, off, data))
    expect(run(t, "wrreg 0 region=7 off=0x38 size=1 value=0x1"), "out-of-bounds", OK, step=0,
           cause="region 7 write past its end")
    # a region REGION_INFO gives size 0 (not implemented) must refuse every access
    t = v2().script("pci_region_size", lambda orig, region: 0 if region == 0 else orig(region))
    expect(run(t, "rdreg 0 region=0 off=0x7 size=1"), "out-of-bounds", OK, step=0)
    # the correct device refuses them all; an unknown size is not judged
    silent(run(v2(), "rdreg 0 region=7 off=0x36 size=4\nrdreg 0 region=7 off=0x100 size=1\n"
                     "wrreg 0 region=7 off=0x38 size=1 value=0x1"))
    t = v2().script("reg_read", past).script("pci_region_size", lambda orig, region: None)
    silent(run(t, "rdreg 0 region=7 off=0x100 size=4"))


def test_bytes_activity_sent_entered_the_device():
    # a real UART's activity transmits a byte that loops back to RX (mtty): it entered through the program
    def loop_back(orig, seed, report=True):
        orig(seed)
        t.real().core.uart.write(RX_TX, 0x5D)
        return b"\x5d" if report else None
    t = v2().script("activity", loop_back)
    silent(run(t, "activity 0 seed=7\nrdreg 0 region=0 off=0x0 size=1"))
    t = v2().script("activity", lambda orig, seed: loop_back(orig, seed, report=False))
    expect(run(t, "activity 0 seed=7\nrdreg 0 region=0 off=0x0 size=1"), "info-leak", Check("not_entered", (0, (0,))),
           step=1)


def test_bytes_an_earlier_program_wrote_into_a_device_that_keeps_them_entered_it():
    # mtty_reset() leaves the UART's registers and FIFO bytes as they were: on a real device, RX
    # may hand out a byte an earlier program wrote. Bytes a device never got are still leaks.
    stale = lambda orig, region, off, size: (0, b"\x5d") if region == 0 and off == 0 else orig(region, off, size)
    for retains, finding in ((True, None), (False, "info-leak")):
        t = v2(retains_data=retains).script("reg_read", stale)
        executor = Executor(t)
        silent(executor.run(parse_program("migfuzz-program 1 v2\nwrreg 0 region=0 off=0x0 size=1 value=0x5d\n")))
        found = executor.run(parse_program("migfuzz-program 1 v2\nrdreg 0 region=0 off=0x0 size=1\n"))
        if finding is None:
            silent(found)
        else:
            expect(found, finding, Check("not_entered", (0, (0,))), step=0)
    t = v2(retains_data=True).script("reg_read", lambda orig, region, off, size: (0, b"\x77") if region == 0
                                     and off == 0 else orig(region, off, size))
    executor = Executor(t)
    silent(executor.run(parse_program("migfuzz-program 1 v2\nwrreg 0 region=0 off=0x0 size=1 value=0x5d\n")))
    expect(executor.run(parse_program("migfuzz-program 1 v2\nrdreg 0 region=0 off=0x0 size=1\n")), "info-leak",
           Check("not_entered", (0, (0,))), step=0)


def test_a_device_whose_profile_empties_its_fifos_before_each_program_hands_out_only_its_bytes():
    # mtty's profile clears both FIFOs ([[init]] FCR writes) before every program: an earlier
    # program's bytes can no longer come out of RX, while the stream may still carry them
    stale = lambda orig, region, off, size: (0, b"\x5d") if region == 0 and off == 0 else orig(region, off, size)
    t = v2(retains_data=True).script("reg_read", stale)
    t.profile = dataclasses.replace(t.profile, init=((0, 2, 0x07),))
    executor = Executor(t)
    silent(executor.run(parse_program("migfuzz-program 1 v2\nwrreg 0 region=0 off=0x0 size=1 value=0x5d\n")))
    expect(executor.run(parse_program("migfuzz-program 1 v2\nrdreg 0 region=0 off=0x0 size=1\n")), "info-leak",
           Check("not_entered", (0, (0,))), step=0)
    silent(executor.run(parse_program("migfuzz-program 1 v2\nwrreg 0 region=0 off=0x0 size=1 value=0x5d\n"
                                      "rdreg 0 region=0 off=0x0 size=1\n")))  # its own byte


def test_v1_data_size_written_in_resuming_makes_the_session_opaque():
    # a bare data_size write in RESUMING consumes window bytes the executor never wrote: the bytes
    # the device holds are no longer the transferred stream, so its refusal is no rejected valid stream
    body = V1_MIGRATE.replace("transfer 0 dst=1 seg=0", "transfer 0 dst=1 seg=0\nwr 1 field=data_size value=0x4")
    silent(run(v1(), body + "\nget 1"))
    # and a device that loads it anyway is not judged on bytes nobody knows
    silent(run(accept_anything(v1()), body))


def test_failed_writes_do_not_count_toward_a_load():
    # v2: a write op that failed (no fault) and a load that succeeds from what else was written
    def second_fails(orig, fd, data):
        calls[0] += 1
        if calls[0] == 2:
            if fire[0]:
                t.fire(1)
            return EIO, 0
        return orig(fd, data)
    calls, fire = [0], [False]
    t = accept_anything(v2(validates_stream=False, real_faults=False)).script("write", second_fails, dev=1)
    body = ("set 1 state=RESUMING\nwrite 1 fd=0 data=00\nfault 1 nth=1 kind=nomem\nwrite 1 fd=0 data=11\n"
            "set 1 state=STOP")
    expect(run(t, body), "damaged-stream-accepted", OK, step=4, cause="failed write counted")
    calls[0], fire[0] = 0, True
    silent(run(t, body))  # the failure came from an injected fault: the user knows why

    # v1: a window write that failed
    def wrwin_fails(orig, offset, data):
        if offset >= 0x1000 and len(data) == 1 and data == b"\x11":
            return EIO, 0
        return orig(offset, data)
    t1 = accept_anything(v1(validates_stream=False)).script("region_write", wrwin_fails, dev=1)
    expect(run(t1, "set 1 value=0b100\nwrwin 1 data=00\nwrwin 1 data=11\nset 1 value=0b001"),
           "damaged-stream-accepted", OK, step=3, cause="failed write counted")
    silent(run(t1, "set 1 value=0b100\nwrwin 1 data=00\nwrwin 1 data=22\nset 1 value=0b001"))


def test_a_failed_write_before_a_whole_edited_stream_is_not_held_against_its_load():
    # a false positive of a 10-minute v1 campaign on the correct simulator: a window write the device
    # refused (EINVAL), then a complete stream with a register byte set (checksum fixed), which loads
    edited = ("set 1 value=0b100\nwrwin 1 data=" + "ab" * 65 + "\nset 0 value=0b010\ndrain 0\nset 0 value=0b000\n"
              "mangle 0 kind=set off=209 width=1 value=0x43 fix=crc32 at=4\ntransfer 0 dst=1 seg=0\nset 1 value=0b001")
    silent(run(v1(), edited))
    # a prefix of it is no stream: its load still counts the failed write
    t1 = accept_anything(v1(validates_stream=False))
    expect(run(t1, edited.replace("transfer 0 dst=1 seg=0", "mangle 0 kind=truncate arg=40\ntransfer 0 dst=1 seg=0")),
           "damaged-stream-accepted", OK, step=8, cause="failed write counted")


def test_a_flip_undone_after_a_racing_read_is_the_stream_again():
    # a false positive of a 10-minute campaign on flags 0x3 (2.5M programs): a flip, a racing read at
    # the stream's end (which leaves the capture incomplete), the same flip again: the bytes are the
    # stream the device sent, and the correct device loads them
    body = ("set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=flip arg=100\n"
            "race 0 x=get xarg=0 y=read yarg=0 sched=0 data=\n{}set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\n"
            "set 1 state=RUNNING")
    silent(run(v2(0x3), body.format("mangle 0 kind=flip arg=100\n")))
    # flipped once, it is damage: a device that loads it is caught
    expect(run(accept_anything(v2(0x3)), body.format("")), "damaged-stream-accepted", OK, step=6)


def test_race_leaving_the_driver_files_of_no_serial_order():
    # the answers fit (SET STOP_COPY -> STOP first, the GET after it) but the driver still holds its file:
    # the state afterwards is no serial order's (only a simulator shows it: no claim on the race's answer)
    t = v2().script("live_files", const(1))
    expect(run(t, "set 0 state=STOP_COPY\nrace 0 x=set xarg=1 y=get sched=0"), "race-not-serializable", NONE,
           step=1, cause="get+set")
    expect(run(t, "set 0 state=STOP_COPY\nset 0 state=STOP"), "resource-leak", NONE, step=1)  # no race: a leak
    silent(run(v2(), "set 0 state=STOP_COPY\nrace 0 x=set xarg=1 y=get sched=0\nget 0"))


def test_a_view_counts_every_byte_entered_whenever_asked():
    # enter() defers adding the bytes to entered and own until one of them is read
    view = fuzz.oracles.DeviceView(0)
    kept = bytearray(b"\x03")
    view.enter(b"\x01\x02")
    view.enter(kept)
    kept[0] = 0x7E  # the caller's buffer changes after the call: what entered stays
    twin = view.copy()
    view.enter(b"\x04")
    assert view.entered == view.own == {1, 2, 3, 4}
    assert twin.own == {1, 2, 3}
    twin.enter(b"\x05")
    twin.entered = {9}  # what earlier programs put in (Oracle.begin): this program's bytes stay in own
    assert twin.entered == {9} and twin.own == {1, 2, 3, 5}
    twin.enter(b"\x06")
    assert twin.entered == {6, 9} and twin.own == {1, 2, 3, 5, 6} and view.own == {1, 2, 3, 4}


def test_a_view_copy_takes_every_field_and_shares_nothing_mutable():
    # DeviceView.become() names each field: one added to __slots__ and not to it must fail here
    view = fuzz.oracles.DeviceView(3)
    for i, name in enumerate(fuzz.oracles.DeviceView.__slots__):
        old = getattr(view, name)
        value = {bytearray: bytearray([i]), set: {i}, list: [bytes([i])], bool: True, int: 100 + i,
                 str: f"v{i}"}.get(type(old), old if old is not None else bytes([i]))
        setattr(view, name, value)
    view.slots = [fuzz.oracles.Slot(7, True)]
    twin = view.copy()
    for name in fuzz.oracles.DeviceView.__slots__:
        mine, its = getattr(view, name), getattr(twin, name)
        if name == "slots":
            assert [(s.fd, s.saving, s.live, s.ended_by) for s in its] == [(7, True, True, "")]
            assert its[0] is not mine[0]
            continue
        assert its == mine, name
        if isinstance(mine, (bytearray, set, list)):
            assert its is not mine, name
    other = fuzz.oracles.DeviceView(0)
    other.become(twin)
    assert other.state == view.state and other.capture == view.capture and other.capture is not twin.capture


def test_a_byte_written_to_any_register_entered_the_device():
    # a control register's value is device state: the stream carries it, next to other bytes
    pointer = (0xFF83_0000_1E04_4D61).to_bytes(8, "little")
    t = v2().script("read", on_call(1, lambda orig, fd, n: (0, b"\x01" * 3 + pointer)))
    silent(run(t, "wrreg 0 region=0 off=0x1 size=1 value=0xff\nset 0 state=STOP_COPY\nread 0 fd=0 n=64"))
    t = v2().script("read", on_call(1, lambda orig, fd, n: (0, b"\x01" * 3 + pointer)))
    expect(run(t, "wrreg 0 region=0 off=0x1 size=1 value=0x7f\nset 0 state=STOP_COPY\nread 0 fd=0 n=64"),
           "info-leak", Check("kernel_address"), step=2)


def test_an_empty_read_racing_a_set_to_stop_copy_ends_no_stream():
    # mtty answers 0, not ENOMSG, at the temporary end of PRE_COPY data. Raced against SET
    # STOP_COPY, an empty read fits both orders: before the SET (for now) or after it (the end).
    # Seen on mtty: the oracle took the end, and the rest of the stream as data after it.
    def zero_for_now(orig, fd, n):
        err, data = orig(fd, n)
        return (0, b"") if err == errno.ENOMSG else (err, data)
    body = "set 0 state=PRE_COPY\ndrain 0 fd=0\nrace 0 x=set xarg=3 y=read yarg=0 sched={}\ndrain 0 fd=0"
    for sched in range(16):
        silent(run(v2().script("read", zero_for_now), body.format(sched)))
    # a device that really sends data after the end of its stream is still caught
    expect(run(v2().script("read", on_call(3, lambda orig, fd, n: (0, b"\x01"))),
               "set 0 state=STOP_COPY\ndrain 0 fd=0\nread 0 fd=0 n=8"), "stream-protocol", Check("data_after_end"))


def test_a_negative_errno_after_arbitrary_bytes_is_no_kernel_address():
    # an s64 -ENOMEM after 8 arbitrary bytes: the window 3 bytes into it reads 0xfffffffff4010101
    errnos = b"".join(b"\x01" * 8 + (-e).to_bytes(8, "little", signed=True) for e in range(1, 4096, 7))
    t = v2().script("read", on_call(1, lambda orig, fd, n: (0, errnos[:n])))
    silent(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=4096"))
    pointer = (0xFFFFFFFFC0123456).to_bytes(8, "little")
    t = v2().script("read", on_call(1, lambda orig, fd, n: (0, b"\x01" * 3 + pointer)))
    expect(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=64"), "info-leak", Check("kernel_address"), step=1)


def test_bytes_of_a_failed_write_may_have_entered_the_device():
    # mtty_write() stores a wide register write byte by byte and fails at the end; mtty_resume_write()
    # counts a stream write it refuses: either way the device may hold the bytes afterwards
    pointer = (0xFF39_6300_0041_0300).to_bytes(8, "little")
    t = v2().script("reg_write", lambda orig, region, off, data: (errno.EFAULT, 0))
    t.script("read", on_call(1, lambda orig, fd, n: (0, b"\x01" * 3 + pointer)))
    silent(run(t, "wrreg 0 region=0 off=0x7 size=1 value=0xff\nset 0 state=STOP_COPY\nread 0 fd=0 n=64"))
    t = v2().script("read", on_call(1, lambda orig, fd, n: (0, b"\x01" * 3 + pointer)))
    expect(run(t, "set 0 state=STOP_COPY\nread 0 fd=0 n=64"), "info-leak", Check("kernel_address"), step=1)


def test_a_racing_writes_bytes_entered_the_device_even_when_the_race_is_a_finding():
    # The race is judged before its calls are replayed; a finding there ends the program, and the
    # bytes a racing write gave a device that keeps them must still count as entered afterwards.
    for race, kept in (("x=write y=reset", True), ("x=get y=reset", False)):
        t = v2(retains_data=True)
        t.script("get_state", lambda orig, gets=[]: (errno.EIO, -1) if gets.append(1) or len(gets) > 1 else orig(),
                 dev=1)  # the GET after the SET answers, the one after the race fails
        executor = Executor(t)
        found = executor.run(parse_program(f"migfuzz-program 1 v2\nset 1 state=RESUMING\nrace 1 {race} data=fe\n"))
        expect(found, "rejected-valid", GET_FAILED, step=1)
        assert (0xFE in executor.oracle.retained()) is kept
    assert Executor(v2()).oracle.retained() == set()  # a device that keeps nothing
