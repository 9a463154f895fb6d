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
    return t


def instrumented(func):
    """An instrumented copy (the module's own function stays as it is)."""
    return type(func)(instrumentation.patched_code(func.__code__, __name__), func.__globals__, func.__name__)


def test_instrumented_code_reports_through_the_trail_and_reaches_the_counters_at_the_end(trail):
    f = instrumented(branchy)
    assert trail.hits is feedback.HITS and atheris._trace_branch == trail.hits.add
    assert f(5) == 10 and f(5) == 10
    hit = set(trail.hits)
    assert hit and not any(trail.counters)  # nothing reaches libFuzzer before the program ends
    trail.flush()
    assert not trail.hits
    assert {i for i, c in enumerate(trail.counters) if c} == hit
    assert set(trail.counters[i] for i in hit) == {1}  # which counters, not how often
    f(1)  # the other branch: a counter the first calls did not hit
    assert trail.hits - hit


def test_discarded_hits_never_reach_the_counters(trail):
    instrumented(branchy)(7)
    assert trail.hits
    trail.discard()
    trail.flush()
    assert not any(trail.counters)


def test_without_libfuzzer_the_trail_leaves_atheris_alone_and_hits_go_nowhere(monkeypatch):
    monkeypatch.delitem(sys.modules, feedback.CORE_MODULE, raising=False)
    before = atheris._trace_branch
    t = HitTrail()
    assert t.bind() == feedback.HITS.add and atheris._trace_branch is before
    assert not t.bound and feedback.atheris_counters() is None and not feedback.libfuzzer_running()
    instrumented(branchy)(5)
    assert t.hits
    t.flush()  # nowhere to write them: forgotten, so the set never grows past a program
    assert not t.hits


def test_without_the_counter_array_each_hit_goes_to_atheris_at_the_flush(monkeypatch):
    """libFuzzer runs but this atheris build does not export its counters: atheris' own function
    gets every hit of the program, once."""
    monkeypatch.setattr(feedback, "atheris_counters", lambda: None)
    monkeypatch.setattr(feedback, "libfuzzer_running", lambda: True)
    delivered = []
    monkeypatch.setattr(atheris, "_trace_branch", delivered.append)
    t = HitTrail()
    hit = t.bind()
    assert not t.bound
    instrumented(branchy)(5)
    hit(7)
    assert delivered == []  # nothing during the program
    expected = set(t.hits)
    t.flush()
    assert sorted(delivered) == sorted(expected) and 7 in delivered and not t.hits


def test_binding_forgets_the_hits_from_before_the_loop(trail):
    instrumented(branchy)(5)  # e.g. the stream layout's inference, before libFuzzer's first input
    assert trail.hits
    trail.bind(memoryview(bytearray(1 << 20)))
    assert not trail.hits


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
