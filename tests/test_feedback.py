"""Coverage feedback (fuzz/feedback.py) and the simulator's instrumentation (fuzz/instrumentation.py)."""
from __future__ import annotations

import _ctypes
import sys

import atheris
import pytest

from fuzz import feedback, instrumentation
from fuzz.feedback import HitTrail
from harness.sim import stream, v2


def branchy(x: int) -> int:
    if x > 2:
        return x * 2
    return -x


@pytest.fixture
def trail(monkeypatch):
    """A trail bound to a private counter array; atheris' function is put back afterwards."""
    monkeypatch.setattr(atheris, "_trace_branch", atheris._trace_branch)
    t = HitTrail()
    t.bind(memoryview(bytearray(1 << 20)))
    yield t
    t.discard()


def instrumented(func):
    """An instrumented copy (the module's own function stays as it is)."""
    return type(func)(instrumentation.patched_code(func.__code__, __name__), func.__globals__, func.__name__)


def marked(t: HitTrail) -> set[int]:
    return set(feedback.hit_indices(t.size))


def test_instrumented_code_marks_the_map_and_reaches_the_counters_at_the_end(trail):
    f = instrumented(branchy)  # reserves its counters after the trail's size was taken: bind again
    assert trail.bind(memoryview(bytearray(1 << 20))) is feedback.HITS  # the map sources mark
    assert f(5) == 10 and f(5) == 10
    hit = marked(trail)
    assert hit and not any(trail.counters)  # nothing reaches libFuzzer before the program ends
    trail.flush()
    assert not marked(trail)
    assert {i for i, c in enumerate(trail.counters) if c} == hit
    assert set(trail.counters[i] for i in hit) == {1}  # which counters, not how often
    f(1)  # the other branch: a counter the first calls did not hit
    assert marked(trail) - hit


def test_the_trail_copies_only_the_reserved_counters(trail):
    """The copy covers the counters reserved before the bind: a later reservation is not libFuzzer's yet."""
    assert len(trail.counters) == trail.size == atheris._reserve_counter() - 1
    feedback.HITS[trail.size + 1] = 1  # past the reserved ones
    trail.flush()
    assert not any(trail.counters) and feedback.HITS[trail.size + 1] == 1
    feedback.HITS[trail.size + 1] = 0


def test_a_hit_function_marks_the_map_for_callers_that_need_one(trail):
    trail.hit(3)
    atheris._trace_branch(5)  # code atheris instrumented itself calls this
    assert marked(trail) == {3, 5}
    trail.flush()
    assert trail.counters[3] == trail.counters[5] == 1


def test_discarded_hits_never_reach_the_counters(trail):
    f = instrumented(branchy)
    trail.bind(memoryview(bytearray(1 << 20)))
    f(7)
    assert marked(trail)
    trail.discard()
    trail.flush()
    assert not any(trail.counters)


def test_without_libfuzzer_the_trail_leaves_atheris_alone_and_hits_go_nowhere(monkeypatch):
    monkeypatch.delitem(sys.modules, feedback.CORE_MODULE, raising=False)
    before = atheris._trace_branch
    f = instrumented(branchy)
    t = HitTrail()
    assert t.bind() is feedback.HITS and atheris._trace_branch is before
    assert not t.bound and feedback.atheris_counters() is None and not feedback.libfuzzer_running()
    f(5)
    assert marked(t)
    t.flush()  # nowhere to write them: forgotten
    assert not marked(t)


def test_without_the_counter_array_each_hit_goes_to_atheris_at_the_flush(monkeypatch):
    """libFuzzer runs but this atheris build does not export its counters: atheris' own function
    gets every counter the program hit, once."""
    monkeypatch.setattr(feedback, "atheris_counters", lambda: None)
    monkeypatch.setattr(feedback, "libfuzzer_running", lambda: True)
    delivered = []
    monkeypatch.setattr(atheris, "_trace_branch", delivered.append)
    f = instrumented(branchy)
    t = HitTrail()
    hits = t.bind()
    assert not t.bound
    f(5)
    hits[7] = 1  # an arc
    assert delivered == []  # nothing during the program
    expected = marked(t)
    t.flush()
    assert delivered == sorted(expected) and 7 in delivered and not marked(t)


def test_binding_forgets_the_hits_from_before_the_loop(trail):
    f = instrumented(branchy)
    trail.bind(memoryview(bytearray(1 << 20)))
    f(5)  # e.g. the stream layout's inference, before libFuzzer's first input
    assert marked(trail)
    trail.bind(memoryview(bytearray(1 << 20)))
    assert not marked(trail)


def test_a_core_module_without_the_symbols_is_not_used(monkeypatch):
    """A loaded shared library that is not atheris' core (no ``atheris::counters``): not used."""
    monkeypatch.setitem(sys.modules, feedback.CORE_MODULE, _ctypes)
    assert feedback.atheris_counters() is None
    before = atheris._trace_branch
    t = HitTrail()
    t.bind()
    assert not t.bound and atheris._trace_branch is before


def names(code) -> set:
    out = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            out |= names(const)
    return out


def consts(code) -> list:
    out = list(code.co_consts)
    for const in code.co_consts:
        if hasattr(const, "co_consts"):
            out += consts(const)
    return out


def test_comparisons_are_traced_in_the_stream_loader_only():
    loader = instrumentation.patched_code(stream.load.__code__, stream.__name__)
    fsm = instrumentation.patched_code(v2.V2SimDevice.set_state.__code__, v2.__name__)
    assert "_trace_cmp" in names(loader) and "_trace_cmp" not in names(fsm)
    assert any(c is feedback.HITS for c in consts(loader)) and any(c is feedback.HITS for c in consts(fsm))
