"""fuzz/model.py against the uAPI rules (include/uapi/linux/vfio.h: the v1 device_state bits of
5.8-5.17, VFIO_DEVICE_FEATURE, enum vfio_device_mig_state), against the paths of
vfio_mig_get_next_state() (drivers/vfio/vfio_main.c), and against the simulator's kernel table.

The four path tables (one per flag set, worked out from the kernel's vfio_from_fsm_table and
its skip loop) are written out below as markdown text and parsed here; nothing is derived from
the model under test.
"""
from __future__ import annotations

import errno

import pytest

from fuzz import model
from harness.sim.core import StepCounter
from harness.sim.v2 import vfio_mig_get_next_state
from harness.uapi import FEATURE_GET, FEATURE_PROBE, FEATURE_SET

EINVAL = errno.EINVAL
ERROR, STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P = range(8)
FLAG_SETS = (0x1, 0x3, 0x5, 0x7)

# ---------------------------------------------------------------------------
# vfio_mig_get_next_state() paths per flag set (vfio_from_fsm_table, drivers/vfio/vfio_main.c)
# ---------------------------------------------------------------------------

TABLE_TEXT = {
    0x1: """
| STOP (1) | = | 2 | 3 (fd) | 4 (fd) | EINVAL | EINVAL | EINVAL |
| RUNNING (2) | 1 | = | 1→3 (fd) | 1→4 (fd) | EINVAL | EINVAL | EINVAL |
| STOP_COPY (3) | 1 | 1→2 | = | 1→4 (fd) | EINVAL | EINVAL | EINVAL |
| RESUMING (4) | 1 | 1→2 | 1→3 (fd) | = | EINVAL | EINVAL | EINVAL |
""",
    0x3: """
| STOP (1) | = | 5→2 | 3 (fd) | 4 (fd) | 5 | EINVAL | EINVAL |
| RUNNING (2) | 5→1 | = | 5→1→3 (fd) | 5→1→4 (fd) | 5 | EINVAL | EINVAL |
| STOP_COPY (3) | 1 | 1→5→2 | = | 1→4 (fd) | 1→5 | EINVAL | EINVAL |
| RESUMING (4) | 1 | 1→5→2 | 1→3 (fd) | = | 1→5 | EINVAL | EINVAL |
| RUNNING_P2P (5) | 1 | 2 | 1→3 (fd) | 1→4 (fd) | = | EINVAL | EINVAL |
""",
    0x5: """
| STOP (1) | = | 2 | 3 (fd) | 4 (fd) | EINVAL | 2→6 (fd) | EINVAL |
| RUNNING (2) | 1 | = | 1→3 (fd) | 1→4 (fd) | EINVAL | 6 (fd) | EINVAL |
| STOP_COPY (3) | 1 | 1→2 | = | 1→4 (fd) | EINVAL | EINVAL (**hang before fix**) | EINVAL |
| RESUMING (4) | 1 | 1→2 | 1→3 (fd) | = | EINVAL | 1→2→6 (fd) | EINVAL |
| PRE_COPY (6) | 2→1 | 2 | 3 (same fd) | 2→1→4 (fd) | EINVAL | = | EINVAL |
""",
    0x7: """
| STOP (1) | = | 5→2 | 3 (fd) | 4 (fd) | 5 | 5→2→6 (fd) | 5→7 (fd) |
| RUNNING (2) | 5→1 | = | 5→1→3 (fd) | 5→1→4 (fd) | 5 | 6 (fd) | 5→7 (fd) |
| STOP_COPY (3) | 1 | 1→5→2 | = | 1→4 (fd) | 1→5 | EINVAL (**hang before fix**) | EINVAL (**hang before fix**) |
| RESUMING (4) | 1 | 1→5→2 | 1→3 (fd) | = | 1→5 | 1→5→2→6 (fd) | 1→5→7 (fd) |
| RUNNING_P2P (5) | 1 | 2 | 1→3 (fd) | 1→4 (fd) | = | 2→6 (fd) | 7 (fd) |
| PRE_COPY (6) | 2→5→1 | 2 | 7→3 (same fd) | 2→5→1→4 (fd) | 2→5 | = | 7 |
| PRE_COPY_P2P (7) | 5→1 | 5→2 | 3 (same fd) | 5→1→4 (fd) | 5 | 6 | = |
""",
}
COLUMNS = (STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P)


def _cell(text: str):
    """-> (hops or None, opens_fd)."""
    text = text.strip()
    if text == "=":
        return (), False
    if text.startswith("EINVAL"):
        return None, False
    fd = "(fd)" in text
    hops = tuple(int(h) for h in text.split("(")[0].strip().split("→"))
    return hops, fd


def _parse_table(text: str) -> dict:
    out = {}
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        cur = int(cells[0].split("(")[1].rstrip(")"))
        assert len(cells) == 8
        for new, cell in zip(COLUMNS, cells[1:], strict=True):
            out[cur, new] = _cell(cell)
    return out


TABLES = {flags: _parse_table(text) for flags, text in TABLE_TEXT.items()}
# States each flag set supports (the rows of its table)
SUPPORTED = {flags: sorted({cur for cur, _ in table}) for flags, table in TABLES.items()}


def test_tables_transcribed_completely():
    assert SUPPORTED == {0x1: [1, 2, 3, 4], 0x3: [1, 2, 3, 4, 5], 0x5: [1, 2, 3, 4, 6], 0x7: [1, 2, 3, 4, 5, 6, 7]}
    for flags, table in TABLES.items():
        assert len(table) == len(SUPPORTED[flags]) * 7
        # every hop sequence ends at the column's state
        for (_cur, new), (hops, _fd) in table.items():
            if hops:
                assert hops[-1] == new


def _table_cases():
    for flags, table in TABLES.items():
        for (cur, new), (hops, fd) in sorted(table.items()):
            yield pytest.param(flags, cur, new, hops, fd, id=f"{flags:#x}-{cur}-{new}")


@pytest.mark.parametrize("flags,cur,new,hops,fd", list(_table_cases()))
def test_path_table_entry(flags, cur, new, hops, fd):
    assert model.path(flags, cur, new) == hops
    assert model.opens_fd(flags, cur, new) is fd


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_unsupported_and_error_rows_and_columns(flags):
    supported = SUPPORTED[flags]
    for state in range(8):
        assert model.supported(flags, state) == (state in supported), state
    for cur in range(8):
        for new in range(8):
            if cur == new or (cur in supported and new in supported):
                continue
            # a state outside the table, or ERROR, on either side: refused, no fd
            assert model.path(flags, cur, new) is None, (cur, new)
            assert model.opens_fd(flags, cur, new) is False


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_error_never_requestable(flags):
    for cur in range(1, 8):
        assert model.path(flags, cur, ERROR) is None
        assert not model.opens_fd(flags, cur, ERROR)
    # and nothing walks through ERROR
    for cur in range(8):
        for new in range(8):
            hops = model.path(flags, cur, new)
            if hops:
                assert ERROR not in hops


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_states_at_or_above_8_refused(flags):
    for bad in (8, 9, 15, 16, 255, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, -1):
        for cur in range(8):
            assert model.path(flags, cur, bad) is None, (cur, bad)
            assert model.opens_fd(flags, cur, bad) is False
            assert model.path(flags, bad, cur) is None


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_blocked_arcs(flags):
    # vfio_from_fsm_table: STOP_COPY -> PRE_COPY(_P2P) is forbidden even though a path exists through STOP/RUNNING
    assert model.path(flags, STOP_COPY, PRE_COPY) is None
    assert model.path(flags, STOP_COPY, PRE_COPY_P2P) is None


def test_noop_requests():
    for flags in FLAG_SETS:
        for s in SUPPORTED[flags]:
            assert model.path(flags, s, s) == ()
            assert model.opens_fd(flags, s, s) is False


# ---------------------------------------------------------------------------
# Uniqueness of the shortest constrained path (so BFS tie order cannot matter)
# ---------------------------------------------------------------------------

# The arcs listed in vfio_mig_get_next_state(), transcribed independently of model.ARC_RULES
ALWAYS = {(RESUMING, STOP), (STOP, RESUMING), (STOP, STOP_COPY), (STOP_COPY, STOP)}
NO_P2P = {(RUNNING, STOP), (STOP, RUNNING)}
WITH_P2P = {(RUNNING, RUNNING_P2P), (RUNNING_P2P, RUNNING), (RUNNING_P2P, STOP), (STOP, RUNNING_P2P)}
PRE_NO_P2P = {(RUNNING, PRE_COPY), (PRE_COPY, RUNNING), (PRE_COPY, STOP_COPY)}
PRE_WITH_P2P = {(RUNNING, PRE_COPY), (PRE_COPY, RUNNING), (PRE_COPY, PRE_COPY_P2P), (PRE_COPY_P2P, PRE_COPY),
                (PRE_COPY_P2P, RUNNING_P2P), (PRE_COPY_P2P, STOP_COPY), (RUNNING_P2P, PRE_COPY_P2P)}
SAVING_GROUP = {PRE_COPY, PRE_COPY_P2P, STOP_COPY}
BLOCKED = {(STOP_COPY, PRE_COPY), (STOP_COPY, PRE_COPY_P2P)}


def _arcs(flags: int) -> set:
    out = set(ALWAYS)
    p2p, pre = flags & 2, flags & 4
    out |= WITH_P2P if p2p else NO_P2P
    if pre:
        out |= PRE_WITH_P2P if p2p else PRE_NO_P2P
    return out


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_model_arcs_are_the_kernel_arcs(flags):
    assert model.arcs(flags) == _arcs(flags)


def _shortest_paths(flags: int, cur: int, new: int) -> tuple[int, list]:
    """(length, every shortest path) under the uAPI's path rules, by exhaustive layered BFS."""
    arcs = _arcs(flags)
    supported = SUPPORTED[flags]

    def interior_ok(s):
        return s not in SAVING_GROUP or (cur in SAVING_GROUP and new in SAVING_GROUP)

    layer = [(cur,)]
    for _length in range(1, 8):
        nxt = []
        for p in layer:
            for a, b in arcs:
                if a != p[-1] or b in p or b not in supported:
                    continue
                if b != new and not interior_ok(b):
                    continue
                nxt.append(p + (b,))
        done = [p[1:] for p in nxt if p[-1] == new]
        if done:
            return len(done[0]), done
        layer = [p for p in nxt if p[-1] != new]
        if not layer:
            break
    return -1, []


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_shortest_constrained_path_is_unique(flags):
    supported = SUPPORTED[flags]
    for cur in supported:
        for new in supported:
            if cur == new:
                continue
            _length, paths = _shortest_paths(flags, cur, new)
            if (cur, new) in BLOCKED:
                assert model.path(flags, cur, new) is None
                continue
            assert len(paths) == 1, f"{flags:#x} {cur}->{new}: {len(paths)} shortest paths {paths}"
            assert model.path(flags, cur, new) == paths[0]
            assert TABLES[flags][cur, new][0] == paths[0]


# ---------------------------------------------------------------------------
# The simulator's kernel helper (an independent implementation)
# ---------------------------------------------------------------------------


def _kernel_walk(flags: int, cur: int, new: int):
    counter = StepCounter()
    hops = []
    for _ in range(16):
        if cur == new:
            return tuple(hops)
        nxt = vfio_mig_get_next_state(flags, cur, new, counter)
        if nxt < 0:
            assert nxt == -EINVAL
            return None
        hops.append(nxt)
        cur = nxt
    raise AssertionError("kernel helper walk does not converge")


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_sim_kernel_table_equals_model(flags):
    for cur in SUPPORTED[flags]:
        for new in list(range(8)) + [8, 9, 0xFFFFFFFF]:
            walked = _kernel_walk(flags, cur, new)
            assert walked == model.path(flags, cur, new), (cur, new)
            if cur != new and 0 <= new < 8 and new in SUPPORTED[flags]:
                assert walked == TABLES[flags][cur, new][0]


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_sim_kernel_helper_refuses_from_unsupported_or_error(flags):
    counter = StepCounter()
    for cur in range(8):
        if cur in SUPPORTED[flags]:
            continue
        for new in range(8):
            assert vfio_mig_get_next_state(flags, cur, new, counter) == -EINVAL


# ---------------------------------------------------------------------------
# Failure semantics (vfio_ioctl_device_feature_mig_device_state(), struct vfio_device_feature_mig_state)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_allowed_after_failure(flags):
    for cur in range(8):
        for new in range(8):
            table = TABLES[flags].get((cur, new))
            hops = table[0] if table else None
            allowed = model.allowed_after_failure(flags, cur, new)
            if hops is None and cur != new:  # refused: the state stays exactly as it was
                assert allowed == frozenset({cur}), (cur, new)
            else:
                assert allowed == frozenset({cur, ERROR, *(hops or ())}), (cur, new)
    # concrete: RUNNING -> RESUMING with P2P may stop at RUNNING_P2P or STOP, or go to ERROR
    assert model.allowed_after_failure(0x7, RUNNING, RESUMING) == {RUNNING, RUNNING_P2P, STOP, RESUMING, ERROR}
    # a refused request can only leave the old state
    assert model.allowed_after_failure(0x7, STOP_COPY, PRE_COPY) == {STOP_COPY}


# ---------------------------------------------------------------------------
# Session bookkeeping (the arcs that open and end a data session, enum vfio_device_mig_state)
# ---------------------------------------------------------------------------


def test_session_arcs():
    assert model.OPENS_SESSION == {(RUNNING, PRE_COPY), (RUNNING_P2P, PRE_COPY_P2P), (STOP, STOP_COPY),
                                   (STOP, RESUMING)}
    assert model.ENDS_SESSION == {(STOP_COPY, STOP), (PRE_COPY, RUNNING), (PRE_COPY_P2P, RUNNING_P2P),
                                  (RESUMING, STOP)}
    assert model.LOAD_HOP == (RESUMING, STOP)
    assert model.SAVING_GROUP == SAVING_GROUP
    assert model.RUNNING_STATES == {RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P}


def test_fd_opening_hop_is_always_last():
    # the fd-opening arc is always the last hop (drivers WARN if an interior step returns a file)
    for flags in FLAG_SETS:
        for cur in range(8):
            for new in range(8):
                hops = model.path(flags, cur, new)
                if not hops:
                    continue
                pairs = list(model.hop_pairs(cur, hops))
                assert pairs[-1] == ((hops[-2] if len(hops) > 1 else cur), new)
                for pair in pairs[:-1]:
                    assert pair not in model.OPENS_SESSION, (flags, cur, new)


# ---------------------------------------------------------------------------
# v1 (device_state bits, include/uapi/linux/vfio.h 5.8-5.17)
# ---------------------------------------------------------------------------


def test_v1_kind():
    assert model.V1_KIND == {0: "valid", 1: "valid", 2: "valid", 3: "valid", 4: "valid",
                             5: "invalid", 6: "error", 7: "invalid"}


def test_v1_write_allowed():
    for cur in range(8):
        for value in range(8):
            want = cur != 6 and value in (0, 1, 2, 3, 4)
            assert model.v1_write_allowed(cur, value) is want, (cur, value)
    # nothing is writable from the error state, whatever the value
    for value in (0, 1, 4, 8, 0xFFFFFFFF):
        assert not model.v1_write_allowed(6, value)
    # reserved bits 3..31 are judged separately: the low three bits decide
    for value in range(8):
        for reserved in (1 << 3, 1 << 31, 0xFFFFFFF8):
            assert model.v1_write_allowed(1, value | reserved) == model.v1_write_allowed(1, value)


def test_v1_states_after_failure():
    for cur in range(8):
        assert model.v1_states_after_failure(cur) == {cur, 6}
    assert model.v1_states_after_failure(0b1000 | 3) == {3, 6}


def test_v1_helpers():
    assert model.V1_RESET_STATE == 1
    assert model.V1_RESUMING_STATE == 4
    assert model.V1_SAVING_STATES == {2, 3}
    assert model.V1_STOPPED_STATES == {0, 2, 4, 6}
    assert [model.v1_saving(s) for s in range(8)] == [False, False, True, True, False, False, False, False]
    # clearing RESUMING loads; setting it starts a session
    assert model.v1_is_load(4, 1) and model.v1_is_load(4, 0) and not model.v1_is_load(4, 4)
    assert not model.v1_is_load(1, 0)
    assert model.v1_starts_resume(1, 4) and model.v1_starts_resume(0, 4) and not model.v1_starts_resume(4, 4)
    assert model.V1_FIELD_ACCESS == {"device_state": "rw", "reserved": "zero", "pending_bytes": "ro",
                                     "data_offset": "ro", "data_size": "data"}
    assert model.V1_HEADER_SIZE == 32


# ---------------------------------------------------------------------------
# VFIO_DEVICE_FEATURE framing (vfio_ioctl_device_feature(), vfio_check_feature())
# ---------------------------------------------------------------------------

GET, SET, PROBE = FEATURE_GET, FEATURE_SET, FEATURE_PROBE
MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE = 1, 2, 9


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_feature_errno_core_checks(flags):
    for index in (MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE, 0, 6, 0x1234):
        for op in (GET, SET, PROBE, GET | PROBE, 0):
            for argsz in (0, 4, 7):
                assert model.feature_errno(index | op, argsz, flags, RUNNING) == EINVAL, (index, op, argsz)
            for bit in (1 << 19, 1 << 20, 1 << 31):
                assert model.feature_errno(index | op | bit, 16, flags, RUNNING) == EINVAL
        # GET and SET together without PROBE
        assert model.feature_errno(index | GET | SET, 16, flags, RUNNING) == EINVAL


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_feature_errno_per_feature(flags):
    fe = lambda f, argsz=16, state=RUNNING: model.feature_errno(f, argsz, flags, state)
    # MIGRATION: GET only, 8-byte payload
    assert fe(MIGRATION | GET) == 0
    assert fe(MIGRATION | GET, 15) == EINVAL
    assert fe(MIGRATION | SET) == EINVAL
    assert fe(MIGRATION | SET | PROBE) == EINVAL
    assert fe(MIGRATION | GET | SET | PROBE) == EINVAL
    assert fe(MIGRATION | GET | PROBE, 8) == 0  # PROBE needs no data
    assert fe(MIGRATION | PROBE, 8) == 0
    assert fe(MIGRATION, 16) == EINVAL  # neither GET nor SET nor PROBE
    # MIG_DEVICE_STATE: GET and SET, 8-byte payload
    assert fe(MIG_DEVICE_STATE | GET) == 0
    assert fe(MIG_DEVICE_STATE | SET) == 0
    assert fe(MIG_DEVICE_STATE | SET, 15) == EINVAL
    assert fe(MIG_DEVICE_STATE | GET, 12) == EINVAL
    assert fe(MIG_DEVICE_STATE | GET | SET | PROBE, 8) == 0
    assert fe(MIG_DEVICE_STATE | SET | PROBE, 8) == 0
    assert fe(MIG_DEVICE_STATE, 16) == EINVAL
    # MIG_DATA_SIZE: GET only, in every state
    for state in SUPPORTED[flags]:
        assert fe(MIG_DATA_SIZE | GET, 16, state) == 0
        assert fe(MIG_DEVICE_STATE | SET, 16, state) == 0  # a SET to the current state
    assert fe(MIG_DATA_SIZE | SET) == EINVAL
    assert fe(MIG_DATA_SIZE | GET, 8) == EINVAL
    # unknown / other features: the driver's business
    for index in (0, 3, 6, 7, 8, 10, 11, 12, 0x1234, 0xFFFF):
        for op in (GET, SET, PROBE | GET):
            assert fe(index | op) is None, (index, op)


def test_feature_errno_larger_argsz_ok():
    assert model.feature_errno(MIG_DEVICE_STATE | GET, 4096, 0x7, RUNNING) == 0
    assert model.feature_errno(MIGRATION | GET, 1 << 31, 0x1, STOP) == 0


# ---------------------------------------------------------------------------
# The functions that build the tables, called directly (the tables are built once at import:
# a defect in the search shows only in a fresh call), and flag sets outside the four
# ---------------------------------------------------------------------------


def _expected_search(flags, cur, new):
    if cur == new:
        return () if cur in SUPPORTED[flags] else None
    entry = TABLES[flags].get((cur, new))
    return entry[0] if entry else None


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_search_path_called_fresh_matches_the_tables(flags):
    for cur in range(8):
        for new in range(8):
            assert model._search_path(flags, cur, new) == _expected_search(flags, cur, new), (cur, new)
    assert model._all_paths(flags) == model.PATHS[flags]
    assert len(model._all_paths(flags)) == 8 and all(len(row) == 8 for row in model._all_paths(flags))


ENDS = {(STOP_COPY, STOP), (PRE_COPY, RUNNING), (PRE_COPY_P2P, RUNNING_P2P), (RESUMING, STOP)}
OPENS = {(RUNNING, PRE_COPY), (RUNNING_P2P, PRE_COPY_P2P), (STOP, STOP_COPY), (STOP, RESUMING)}


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_plans_called_fresh(flags):
    """Every field of a plan, from the arc actions (written out here) and the kernel's path tables."""
    for cur in range(8):
        for new in range(8):
            got = model._plan(flags, cur, new)
            assert got == model.PLANS[flags][cur][new] == model.plan(flags, cur, new), (cur, new)
            hops = model.path(flags, cur, new)
            if hops is None:
                assert got is None
                continue
            pairs = list(zip((cur, *hops), hops, strict=False))
            last = pairs[-1] if pairs else None
            assert got.hops == hops
            assert got.fd is (last in OPENS) is model.opens_fd(flags, cur, new)
            assert got.ends is any(p in ENDS for p in pairs)
            assert got.load is ((RESUMING, STOP) in pairs)
            assert got.opens == (last[1] if last in OPENS else -1)
            assert got.runs is any(h in (RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P) for h in hops)


def test_plan_examples():
    # spelled out: a plan's fields for a few arcs of the full flag set
    p = model.plan(0x7, RESUMING, PRE_COPY)
    assert p == model.Plan((STOP, RUNNING_P2P, RUNNING, PRE_COPY), True, True, True, PRE_COPY, True)
    assert model.plan(0x7, PRE_COPY, STOP_COPY) == model.Plan((PRE_COPY_P2P, STOP_COPY), False, False, False, -1, True)
    assert model.plan(0x1, RUNNING, STOP) == model.Plan((STOP,), False, False, False, -1, False)
    assert model.plan(0x1, STOP_COPY, STOP) == model.Plan((STOP,), False, True, False, -1, False)
    assert model.plan(0x5, STOP, STOP) == model.Plan((), False, False, False, -1, False)


@pytest.mark.parametrize("flags", FLAG_SETS)
def test_unknown_flag_bits_change_nothing(flags):
    # a device may set flag bits the model does not know: the paths are those of the known ones
    for extra in (0x8, 0x80, 1 << 31):
        assert model.arcs(flags | extra) == model.arcs(flags)
        for cur in range(-1, 9):
            for new in range(-1, 9):
                assert model.path(flags | extra, cur, new) == model.path(flags, cur, new), (extra, cur, new)
                assert model.plan(flags | extra, cur, new) == model.plan(flags, cur, new), (extra, cur, new)
                assert model.opens_fd(flags | extra, cur, new) == model.opens_fd(flags, cur, new)


def test_flag_sets_without_stop_copy_support_nothing():
    # STOP_COPY is mandatory: without it no state is supported and only no-op SETs succeed
    for flags in (0, 0x2, 0x4, 0x6):
        assert model.arcs(flags) == frozenset()
        for cur in range(8):
            assert not model.supported(flags, cur)
            for new in range(8):
                assert model.path(flags, cur, new) == (() if cur == new else None)
                assert model.plan(flags, cur, new) == (model.Plan((), False, False, False, -1, False)
                                                        if cur == new else None)


def test_plan_and_path_out_of_range():
    for flags in (0x7, 0x1, 0x9):
        for cur, new in ((8, STOP), (STOP, 8), (-1, STOP), (STOP, -1), (9, 9), (8, 8)):
            assert model.path(flags, cur, new) is None
            assert model.plan(flags, cur, new) is None
            assert not model.opens_fd(flags, cur, new)
        assert model.allowed_after_failure(flags, STOP, 8) == frozenset({STOP})


def test_feature_set_of_a_state_outside_the_table():
    # the executor's SET carries the view's state (0..7, always a no-op); a state the
    # device cannot be in makes the SET invalid, the GET is unaffected
    set_state = FEATURE_SET | 2
    assert model.feature_errno(set_state, 16, 0x7, STOP) == 0
    assert model.feature_errno(set_state, 16, 0x7, ERROR) == 0
    assert model.feature_errno(set_state, 16, 0x7, 8) == EINVAL
    assert model.feature_errno(FEATURE_GET | 2, 16, 0x7, 8) == 0
    assert model.feature_errno(FEATURE_PROBE | FEATURE_SET | 2, 8, 0x7, 8) == 0


def test_v1_predicates_truth_tables():
    for cur in range(8):
        for new in range(8):
            assert model.v1_is_load(cur, new) is (bool(cur & 4) and not new & 4), (cur, new)
            assert model.v1_starts_resume(cur, new) is (bool(new & 4) and not cur & 4), (cur, new)
        assert model.v1_saving(cur) is (cur in (0b010, 0b011))
        assert model.v1_saving(cur | 0x10) is (cur in (0b010, 0b011))  # reserved bits ignored
        assert model.v1_states_after_failure(cur | 0x8) == {cur, 0b110}


def test_names_for_people():
    assert [model.v2_name(s) for s in range(8)] == ["ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING",
                                                    "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"]
    assert model.v2_name(8) == "8" and model.v2_name(None) == "None"
    assert model.v1_name(0b011) == "SAVING|RUNNING" and model.v1_name(0b110) == "ERROR"
    assert model.v1_name(0x9) == "RUNNING" and model.v1_name(0) == "STOP" and model.v1_name(None) == "?"
    assert model.v1_value(0) == "0b000" and model.v1_value(5) == "0b101" and model.v1_value(7) == "0b111"
    assert model.v1_value(8) == "0x8" and model.v1_value(0xFFFFFFFF) == "0xffffffff"
    assert model.flag_names(0x7) == "STOP_COPY|P2P|PRE_COPY"
    assert model.flag_names(0x5) == "STOP_COPY|PRE_COPY" and model.flag_names(0x1) == "STOP_COPY"
    assert model.flag_names(0) == "0" and model.flag_names(0x8) == "0"


def test_v2_names_of_values_outside_the_states():
    assert model.v2_name(0) == "ERROR" and model.v2_name(7) == "PRE_COPY_P2P"
    assert model.v2_name(8) == "8" and model.v2_name(255) == "255"
    # a large value (a u32 from the fuzzer): its number, in decimal or in hex
    for value in (256, 0x1234, 0xFFFFFFFF):
        assert int(model.v2_name(value), 0) == value


@pytest.mark.skipif(not hasattr(model, "v1_read_only"), reason="model without v1_read_only")
def test_v1_read_only_fields():
    for state in range(8):
        saving = state in (0b010, 0b011)
        assert model.v1_read_only("pending_bytes", state) is True
        assert model.v1_read_only("data_offset", state) is True
        assert model.v1_read_only("data_size", state) is saving, state
        assert model.v1_read_only("device_state", state) is False
        assert model.v1_read_only("reserved", state) is False
