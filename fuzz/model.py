"""The reference model: what the VFIO migration protocol allows, as data.

This is the specification the oracles judge a device against.  It is written
independently of the simulator (``harness/sim``): the simulator implements the
kernel's next-hop table and skip loop; the model instead states the arcs a
driver implements (the list in the comment of ``vfio_mig_get_next_state()``,
drivers/vfio/vfio_main.c) and derives every path by a breadth-first search
under the rules of the text above ``enum vfio_device_mig_state``
(include/uapi/linux/vfio.h): the shortest path, no saving-group state as an
interior hop.  If either is wrong, the tests that compare them with each other
and with the path tables of the kernel's ``vfio_from_fsm_table`` disagree.
"""
from __future__ import annotations

import errno as _errno
import functools
from collections import deque
from types import MappingProxyType
from typing import NamedTuple

from harness.runtime import (
    RACE_CALLS,
    RACE_FAILED,
    RACE_FD,
    RACE_FD_CALLS,
    RACE_GOT,
    RACE_OK,
    errname,  # noqa: F401  (the protocol's names live here for the fuzzer)
    race_outcome,
)
from harness.uapi import (  # noqa: F401  (V1_HEADER_SIZE, V1_SAVING, V1_STOPPED_STATES: part of the model)
    FEATURE_GET,
    FEATURE_MASK,
    FEATURE_MIG_DATA_SIZE,
    FEATURE_MIG_DEVICE_STATE,
    FEATURE_MIGRATION,
    FEATURE_PROBE,
    FEATURE_SET,
    V1_ERROR,
    V1_HEADER_SIZE,
    V1_MASK,
    V1_RESUMING,
    V1_RUNNING,
    V1_SAVING,
    V1_SAVING_STATES,
    V1_STATE_NAMES,
    V1_STOPPED_STATES,
    V2_RUNNING_STATES,
    V2_STATE_NAMES,
    V2_STOPPED_STATES,
    MigFlag,
    packer,
    vfio_device_feature_mig_state,
)

# ---------------------------------------------------------------------------
# v2: states, arcs, paths
# ---------------------------------------------------------------------------

ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P = range(8)
STATE_NAMES = V2_STATE_NAMES
SC, P2P, PRE = int(MigFlag.STOP_COPY), int(MigFlag.P2P), int(MigFlag.PRE_COPY)
FLAG_SETS = (SC, SC | P2P, SC | PRE, SC | P2P | PRE)

# Flags a state needs to be supported (ERROR is never requestable).
STATE_NEEDS = {
    STOP: SC, RUNNING: SC, STOP_COPY: SC, RESUMING: SC,
    RUNNING_P2P: SC | P2P, PRE_COPY: SC | PRE, PRE_COPY_P2P: SC | P2P | PRE,
}

# The states that share one saving data session.
SAVING_GROUP = frozenset({PRE_COPY, PRE_COPY_P2P, STOP_COPY})
# States in which the device runs and its internal state may change, and those in which it must not.
RUNNING_STATES = V2_RUNNING_STATES
STOPPED_STATES = V2_STOPPED_STATES
# States with an open data session (a saving or a resuming data_fd).
SESSION_STATES = SAVING_GROUP | {RESUMING}

# The arcs a driver implements (the list in vfio_mig_get_next_state(), drivers/vfio/vfio_main.c):
# (flags that must be set, flags that must be clear) -> arcs.
ARC_RULES = (
    ((SC, 0), ((RESUMING, STOP), (STOP, RESUMING), (STOP, STOP_COPY), (STOP_COPY, STOP))),
    ((SC, P2P), ((RUNNING, STOP), (STOP, RUNNING))),
    ((SC | P2P, 0), ((RUNNING, RUNNING_P2P), (RUNNING_P2P, RUNNING), (RUNNING_P2P, STOP),
                     (STOP, RUNNING_P2P))),
    ((SC | PRE, P2P), ((RUNNING, PRE_COPY), (PRE_COPY, RUNNING), (PRE_COPY, STOP_COPY))),
    ((SC | PRE | P2P, 0), ((RUNNING, PRE_COPY), (PRE_COPY, RUNNING), (PRE_COPY, PRE_COPY_P2P),
                           (PRE_COPY_P2P, PRE_COPY), (PRE_COPY_P2P, RUNNING_P2P),
                           (PRE_COPY_P2P, STOP_COPY), (RUNNING_P2P, PRE_COPY_P2P))),
)

# Requests refused even though a path through other states exists.
BLOCKED = frozenset({(STOP_COPY, PRE_COPY), (STOP_COPY, PRE_COPY_P2P)})

# What a single hop does to the data session.
OPENS_SESSION = frozenset({(RUNNING, PRE_COPY), (RUNNING_P2P, PRE_COPY_P2P),
                           (STOP, STOP_COPY), (STOP, RESUMING)})
ENDS_SESSION = frozenset({(STOP_COPY, STOP), (PRE_COPY, RUNNING),
                          (PRE_COPY_P2P, RUNNING_P2P), (RESUMING, STOP)})
# The hop at which a resuming device loads and validates what was written.
LOAD_HOP = (RESUMING, STOP)


def supported(flags: int, state: int) -> bool:
    need = STATE_NEEDS.get(state)
    return need is not None and flags & need == need


def arcs(flags: int) -> frozenset:
    """The single-hop arcs a device with ``flags`` implements."""
    out = set()
    for (must, mustnot), rule_arcs in ARC_RULES:
        if flags & must == must and not flags & mustnot:
            out.update(rule_arcs)
    return frozenset(out)


def _interior_allowed(cur: int, new: int, state: int) -> bool:
    # A path only passes through a saving-group state when it starts and ends
    # inside the group (the session carries on, e.g. PRE_COPY->PRE_COPY_P2P->
    # STOP_COPY); otherwise it would open a session it then abandons.
    return state not in SAVING_GROUP or (cur in SAVING_GROUP and new in SAVING_GROUP)


def _search_path(flags: int, cur: int, new: int) -> tuple | None:
    if not (supported(flags, cur) and supported(flags, new)) or (cur, new) in BLOCKED:
        return None
    if cur == new:
        return ()
    graph = arcs(flags)
    parent = {cur: None}
    todo = deque([cur])
    while todo:
        node = todo.popleft()
        for a, b in sorted(graph):
            if a != node or b in parent:
                continue
            if b != new and not _interior_allowed(cur, new, b):
                continue
            parent[b] = node
            if b == new:
                hops = [b]
                while parent[hops[-1]] != cur:
                    hops.append(parent[hops[-1]])
                return tuple(reversed(hops))
            todo.append(b)
    return None


def _all_paths(flags: int) -> tuple:
    return tuple(tuple(_search_path(flags, c, n) for n in range(8)) for c in range(8))


# PATHS[flags][cur][new] -> tuple of hops after ``cur`` (ending with ``new``),
# () for a no-op, None when the request must fail with EINVAL.
PATHS = {flags: _all_paths(flags) for flags in FLAG_SETS}


def path(flags: int, cur: int, new: int) -> tuple | None:
    """The hops the kernel takes for SET ``new`` from ``cur``, or None if refused."""
    if not (0 <= cur < 8 and 0 <= new < 8):
        return None
    if cur == new:
        return ()  # a SET to the current state is a no-op success, even in ERROR (drivers loop while cur != new)
    table = PATHS.get(flags)
    return table[cur][new] if table is not None else _search_path(flags, cur, new)


def opens_fd(flags: int, cur: int, new: int) -> bool:
    """Whether a successful SET returns a new data_fd (its last hop opens a session)."""
    hops = path(flags, cur, new)
    if not hops:
        return False
    prev = hops[-2] if len(hops) > 1 else cur
    return (prev, hops[-1]) in OPENS_SESSION


def hop_pairs(cur: int, hops: tuple):
    prev = cur
    for h in hops:
        yield prev, h
        prev = h


class Plan(NamedTuple):
    """Everything a successful SET does, derived once per (flags, cur, new)."""

    hops: tuple
    fd: bool  # returns a new data_fd
    ends: bool  # some hop ends a data session
    load: bool  # the path loads what was written (RESUMING -> STOP)
    opens: int  # the state whose session the last hop opens (STOP_COPY/PRE_COPY*/RESUMING), or -1
    runs: bool  # the path passes through or ends in a running state


def _plan(flags: int, cur: int, new: int) -> Plan | None:
    hops = path(flags, cur, new)
    if hops is None:
        return None
    pairs = tuple(hop_pairs(cur, hops))
    last = pairs[-1] if pairs else None
    return Plan(hops, last in OPENS_SESSION, any(p in ENDS_SESSION for p in pairs), LOAD_HOP in pairs,
                last[1] if last in OPENS_SESSION else -1, any(h in RUNNING_STATES for h in hops))


# PLANS[flags][cur][new] for every advertised flag set; plan() for the rest.
PLANS = {flags: tuple(tuple(_plan(flags, c, n) for n in range(8)) for c in range(8)) for flags in FLAG_SETS}


def plan(flags: int, cur: int, new: int) -> Plan | None:
    table = PLANS.get(flags)
    if table is not None and 0 <= cur < 8 and 0 <= new < 8:
        return table[cur][new]
    return _plan(flags, cur, new) if 0 <= cur < 8 else None


def allowed_after_failure(flags: int, cur: int, new: int) -> frozenset:
    """States GET may report after a failed SET: for a request the model refuses,
    only the old one (``vfio_mig_get_next_state()`` refuses it with EINVAL before any
    hop); for a valid one, the old one, any hop of its path, or ERROR (the text above
    ``struct vfio_device_feature_mig_state`` in include/uapi/linux/vfio.h)."""
    hops = path(flags, cur, new)
    if hops is None:
        return frozenset((cur,))
    return frozenset((cur, ERROR, *hops))


# ---------------------------------------------------------------------------
# v2: data_fd rules (include/uapi/linux/vfio.h: enum vfio_device_mig_state, struct vfio_precopy_info)
# ---------------------------------------------------------------------------

EBADF, ENODEV, ESPIPE, EINVAL, ENOMSG, ENOTTY = (
    _errno.EBADF, _errno.ENODEV, _errno.ESPIPE, _errno.EINVAL, _errno.ENOMSG, _errno.ENOTTY)

# errno a misused data_fd must give; any success is a finding.
FD_READ_ON_RESUME_FD = frozenset({EBADF})
FD_WRITE_ON_SAVE_FD = frozenset({EBADF})
FD_SEEK = frozenset({ESPIPE})
FD_IO_AFTER_SESSION_END = frozenset({ENODEV, EBADF, EINVAL})
PRECOPY_INFO_STATES = frozenset({PRE_COPY, PRE_COPY_P2P})
# "temporary end of stream" in PRE_COPY may be 0 bytes or ENOMSG; never ENOMSG in STOP_COPY.
PRECOPY_TEMP_EOF_ERRNO = ENOMSG

# ---------------------------------------------------------------------------
# v2: VFIO_DEVICE_FEATURE framing (vfio_ioctl_device_feature() in drivers/vfio/vfio_main.c,
# vfio_check_feature() in include/linux/vfio.h)
# ---------------------------------------------------------------------------

# feature index -> (operations it supports, minimum payload size)
MIGRATION_FEATURES = {
    FEATURE_MIGRATION: (FEATURE_GET, 8),
    FEATURE_MIG_DEVICE_STATE: (FEATURE_GET | FEATURE_SET, 8),
    FEATURE_MIG_DATA_SIZE: (FEATURE_GET, 8),
}
FEATURE_KNOWN_BITS = FEATURE_MASK | FEATURE_GET | FEATURE_SET | FEATURE_PROBE
MIG_STATE_PAYLOAD = packer(vfio_device_feature_mig_state)


def feature_errno(flags: int, argsz: int, dev_flags: int, state: int) -> int | None:
    """errno VFIO_DEVICE_FEATURE must give (0 success), or None where drivers may differ.

    A SET of MIG_DEVICE_STATE is judged as carrying ``state`` (a no-op request)."""
    if argsz < 8 or flags & ~FEATURE_KNOWN_BITS:
        return EINVAL
    op = flags & (FEATURE_GET | FEATURE_SET)
    if op == FEATURE_GET | FEATURE_SET and not flags & FEATURE_PROBE:
        return EINVAL
    entry = MIGRATION_FEATURES.get(flags & FEATURE_MASK)
    if entry is None:
        return None  # other features are the driver's business
    ops, minsz = entry
    if op & ~ops:
        return EINVAL
    if flags & FEATURE_PROBE:
        return 0
    if not op or argsz - 8 < minsz:
        return EINVAL
    if op == FEATURE_SET and path(dev_flags, state, state) is None:
        return EINVAL
    return 0


# ---------------------------------------------------------------------------
# v1: the device_state bit field (struct vfio_device_migration_info, include/uapi/linux/vfio.h 5.8-5.17)
# ---------------------------------------------------------------------------

V1_VALID = frozenset({0b000, 0b001, 0b010, 0b011, 0b100})
V1_INVALID = frozenset({0b101, 0b111})
V1_KIND = {v: ("valid" if v in V1_VALID else "error" if v == V1_ERROR else "invalid") for v in range(8)}
V1_RESET_STATE = V1_RUNNING
V1_RESUMING_STATE = V1_RESUMING


def v1_write_allowed(cur: int, value: int) -> bool:
    """Whether a user write of ``value`` to device_state must be accepted.

    Drivers "should attempt to support any transition between valid states"
    (Alex Williamson's clarification); from the error state only reset recovers.
    Reserved bits 3..31 must be zero in a write the device has to accept."""
    return (cur & V1_MASK) != V1_ERROR and (value & V1_MASK) in V1_VALID


def v1_states_after_failure(cur: int) -> frozenset:
    """A failed device_state write leaves the previous state or 110b (the error state)."""
    return frozenset({cur & V1_MASK, V1_ERROR})


def v1_is_load(cur: int, new: int) -> bool:
    """Clearing RESUMING is when the driver deserializes what was written."""
    return bool(cur & V1_RESUMING) and not new & V1_RESUMING


def v1_starts_resume(cur: int, new: int) -> bool:
    return bool(new & V1_RESUMING) and not cur & V1_RESUMING


def v1_saving(state: int) -> bool:
    return (state & V1_MASK) in V1_SAVING_STATES


# ---------------------------------------------------------------------------
# a migration (the sequences QEMU's hw/vfio/migration.c makes): the states a source is set to while it saves (each
# followed by reading its stream to the end, and in a live one by pre-copy iterations), the state a
# destination is set to before the stream is written into it, and the states that end its resume
# session (the load)
# ---------------------------------------------------------------------------


class Migration(NamedTuple):
    saves: tuple    # alternatives, each the states a source passes through in order
    resume: int
    loads: tuple    # alternatives
    live: int       # the saving state in which the device still runs: pre-copy iterations


MIGRATIONS = {
    "v2": Migration(((STOP_COPY,), (PRE_COPY, STOP_COPY), (RUNNING_P2P, STOP, STOP_COPY)), RESUMING,
                    (STOP, RUNNING), PRE_COPY),
    "v1": Migration(((V1_SAVING,), (V1_SAVING | V1_RUNNING, V1_SAVING)), V1_RESUMING, (V1_RUNNING, 0),
                    V1_SAVING | V1_RUNNING),
}


# Region fields: name -> access rule.
#   "rw"   read/write;  "ro" writes must not change it;  "zero" reads 0, writes ignored;
#   "data" read while SAVING, written while RESUMING.
V1_FIELD_ACCESS = {
    "device_state": "rw",
    "reserved": "zero",
    "pending_bytes": "ro",
    "data_offset": "ro",
    "data_size": "data",
}


def v1_read_only(name: str, state: int) -> bool:
    """Whether a region field is read-only in ``state``: a write must be refused or have no effect
    (pending_bytes and data_offset always; data_size while saving, written only while resuming)."""
    access = V1_FIELD_ACCESS[name]
    return access == "ro" or (access == "data" and v1_saving(state))


def v1_pending_may_grow(state: int) -> bool:
    """In stop-and-copy (010b) the device is stopped: pending_bytes only shrinks."""
    return state != V1_SAVING


# Reads that move the v1 saving iteration: a bare read outside the sequence
# makes the user's copy of the stream miss or repeat a chunk.
V1_READ_SIDE_EFFECTS = {
    "pending_bytes": "acknowledges the staged chunk",
    "data_offset": "stages the next chunk",
}


# ---------------------------------------------------------------------------
# races: two calls at once must give the answers and the state of one
# serial order of the two
# ---------------------------------------------------------------------------


# The racing calls made on the device fd itself (the others use a data_fd, or open a new device fd).
DEVICE_FD_CALLS = frozenset(RACE_CALLS) - frozenset(RACE_FD_CALLS) - {"reopen"}


class RaceSlot(NamedTuple):
    """A data_fd as a racing call finds it."""

    live: bool | None  # its session still runs (None: unknown, after ERROR)
    saving: bool
    open: bool = True  # not closed yet (by the other call, or a reopen)


class RaceCall(NamedTuple):
    """One side of a race: a call of harness.runtime.RACE_CALLS."""

    kind: str
    arg: int = 0  # the state a SET asks for (v2), the device_state value written (v1)
    slot: int = -1  # the data_fd it uses: an index into the slots (-1: none)


def race_step(proto: str, flags: int, state: int, slots: tuple, call: RaceCall) -> list:
    """What one call may do to a device in ``state`` with data_fds ``slots``: a (result, state after,
    slots after) for every answer a correct device may give (results: harness.runtime.RACE_*)."""
    kind = call.kind
    if kind in ("reset", "reopen"):  # every session ends; a reopen also closes the data_fds
        after = tuple(s._replace(live=False, open=s.open and kind == "reset") for s in slots)
        return [(RACE_OK, RUNNING if proto == "v2" else V1_RESET_STATE, after)]
    if kind == "get":
        return [(RACE_GOT | min(state, 0x7F), state, slots)]
    if kind == "set":
        return _race_set(proto, flags, state, slots, call.arg)
    slot = slots[call.slot]
    same, failed = (state, slots), [(RACE_FAILED, state, slots)]
    either = [(RACE_OK, *same), (RACE_FAILED, *same)]
    if not slot.open:
        return failed
    if kind == "close":
        return [(RACE_OK, state, slots[:call.slot] + (slot._replace(open=False),) + slots[call.slot + 1:])]
    if slot.live is None:
        return either
    if not slot.live:
        return failed
    if kind == "read":  # in pre-copy, ENOMSG is the temporary end of the stream
        return failed if not slot.saving else [(RACE_OK, *same)] if state == STOP_COPY else either
    if kind == "write":  # a resume write may be refused (a bad stream, a full buffer)
        return either if not slot.saving and state == RESUMING else failed
    return [(RACE_OK, *same)] if slot.saving and state in PRECOPY_INFO_STATES else failed


def _race_set(proto: str, flags: int, state: int, slots: tuple, arg: int) -> list:
    if proto == "v1":
        new = arg & V1_MASK
        if not v1_write_allowed(state, arg):  # refused: the old state, or 110b
            return [(RACE_FAILED, state, slots), (RACE_FAILED, V1_ERROR, slots)]
        loads = v1_is_load(state, new)
        return [(RACE_OK, new, slots)] + ([(RACE_FAILED, state, slots)] if loads else [])
    p = plan(flags, state, arg)
    if p is None:
        return [(RACE_FAILED, state, slots)]
    after = tuple(s._replace(live=False) for s in slots) if p.ends else slots
    out = [(RACE_FD if p.fd else RACE_OK, p.hops[-1] if p.hops else state, after)]
    if p.load:  # the load may refuse what was written: the device stays in RESUMING
        out.append((RACE_FAILED, state, slots))
    return out


@functools.lru_cache(maxsize=1 << 12)
def race_outcomes(proto: str, flags: int, state: int, slots: tuple, a: RaceCall, b: RaceCall) -> tuple:
    """The outcomes (harness.runtime.race_outcome) a correct device may give when ``a`` and ``b``
    race from ``state``: ({outcome: state after the first call} for a then b, the same for b then a).
    Memoized (a pure function of its arguments; a campaign's races repeat a few hundred of them),
    so the tables are read-only. ``slots`` may be plain (live, saving, open) tuples and ``a``, ``b``
    plain (kind, arg, slot) ones: they hash as the named ones do, and a caller on the hot path
    (the oracle, once per race) saves building them (~1.8 us a race: a NamedTuple's __new__ is
    Python code); they are made here, on a miss only."""
    slots = tuple(RaceSlot(*s) for s in slots)
    a, b = RaceCall(*a), RaceCall(*b)
    orders = []
    for first, second, a_first in ((a, b, True), (b, a, False)):
        table: dict = {}
        for r1, s1, slots1 in race_step(proto, flags, state, slots, first):
            answers = race_step(proto, flags, s1, slots1, second)
            if first.kind == "reopen" and second.kind in DEVICE_FD_CALLS:
                # The thread of the other call may still hold the device fd the reopen closed: its
                # call then fails (EBADF) and changes nothing, a serial order of user space's own.
                answers = answers + [(RACE_FAILED, s1, slots1)]
            for r2, s2, _ in answers:
                table.setdefault(race_outcome(*((r1, r2) if a_first else (r2, r1)), s2), s1)
        orders.append(MappingProxyType(table))
    return orders[0], orders[1]


# ---------------------------------------------------------------------------
# names, for people
# ---------------------------------------------------------------------------


def v2_name(state: int | None) -> str:
    if state is None or not 0 <= state < 8:
        return str(state) if state is None or 0 <= state < 256 else hex(state)
    return STATE_NAMES[state]


def v1_name(state: int | None) -> str:
    return V1_STATE_NAMES.get(state & V1_MASK, "?") if state is not None else "?"


def v1_value(value: int) -> str:
    return f"{value:#05b}" if 0 <= value < 8 else hex(value)


def flag_names(flags: int) -> str:
    return "|".join(f.name for f in MigFlag if flags & f) or "0"
