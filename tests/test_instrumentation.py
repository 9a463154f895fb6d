"""The simulator's instrumentation (fuzz/instrumentation.py): fewer counters, the same coverage decisions.

Each function below is instrumented twice: by atheris itself (a call into ``atheris._trace_branch``
at every basic block) and by :mod:`fuzz.instrumentation` (a byte stored at the blocks whose hit nothing
else implies). Over the same inputs both must split the inputs alike (two inputs hit the same
counters under one exactly when they do under the other) and find new coverage at the same
inputs, which is all libFuzzer reads from them.
"""
from __future__ import annotations

import contextlib
import dis
import io
import itertools

import atheris
import pytest

from fuzz import feedback, instrumentation


def guards(a: int, b: int, c: int) -> int:
    if a < 0:
        return -1
    if b < 0:
        return -2
    if c < 0:
        return -3
    if a == b:
        return -4
    return a + b + c


def optional_step(a: int, b: int, c: int) -> int:
    if a < 0:
        return -1
    x = b
    if c:  # dominates both its successors (the body and the return after it): no counter
        x += 1
    return x


def shared_exit(a: int, b: int, c: int) -> int:
    if a:
        if b:  # dominates the return below it, not the one it shares with the test above: counted
            return 1
    return 0


def merge(a: int, b: int, c: int) -> int:
    x = 0
    if a:
        x = 1  # its successor is reached from the test above too: this block keeps its counter
    return x


def loops(a: int, b: int, c: int) -> int:
    total = 0
    for i in range(a + 2):
        if i == b:
            continue
        if i > c + 1:
            break
        total += i
    while total > 3:
        total -= abs(b) + 1
        if total == c:
            break
    return total


def exceptions(a: int, b: int, c: int) -> int:
    try:
        if a == 0:
            raise ValueError(b)
        x = b // (c - 1)
    except ZeroDivisionError:
        return -1
    except ValueError:
        if b:
            return -2
        return -3
    else:
        x += 1
    finally:
        a += 1
    return x


def short_circuits(a: int, b: int, c: int) -> int:
    values = [v * 2 for v in (a, b, c) if v]
    if (a and b) or (c and not a):
        return len(values)
    with contextlib.suppress(IndexError):
        return values[a + b]
    return {v: v for v in values if v > 2}.get(4, -1)


def counting(n: int):
    yield from range(n + 1)
    return n


def delegating(a: int, b: int, c: int) -> int:
    def inner():
        # SEND jumps when the generator is done, but atheris starts no block after it
        got = yield from counting(a)
        if got == b:
            yield c
    return sum(inner())


FUNCTIONS = (guards, optional_step, shared_exit, merge, loops, exceptions, short_circuits, delegating)
INPUTS = list(itertools.product((-1, 0, 1, 2), repeat=3))


def every_block(func):
    """A copy of ``func`` instrumented by atheris itself."""
    with contextlib.redirect_stderr(io.StringIO()):
        code = atheris.patch_code(func.__code__, False, True)
    return type(func)(code, func.__globals__, func.__name__)


def pruned(func):
    return type(func)(instrumentation.patched_code(func.__code__, __name__), func.__globals__, func.__name__)


def hit_sets(func, calls_atheris: bool, monkeypatch) -> list[frozenset]:
    out = []
    for args in INPUTS:
        hits = set()
        if calls_atheris:
            monkeypatch.setattr(atheris, "_trace_branch", hits.add)
        try:
            func(*args)
        except Exception:  # a raise counts as where it happened
            pass
        marked = feedback.hit_indices()
        for i in marked:
            feedback.HITS[i] = 0
        out.append(frozenset(hits if calls_atheris else marked))
    return out


def new_coverage(sets: list[frozenset]) -> list[bool]:
    seen: set = set()
    out = []
    for hits in sets:
        out.append(not hits <= seen)
        seen |= hits
    return out


def partition(sets: list[frozenset]) -> set[frozenset]:
    """Which inputs hit the same counters, as a set of groups of input indices."""
    groups: dict = {}
    for i, hits in enumerate(sets):
        groups.setdefault(hits, set()).add(i)
    return {frozenset(g) for g in groups.values()}


def counters(code) -> int:
    """How many counters: atheris' calls, or this module's stores into the map (nested code included)."""
    n = sum(1 for i in dis.get_instructions(code) if i.argval is feedback.HITS or i.argval == "_trace_branch")
    return n + sum(counters(c) for c in code.co_consts if hasattr(c, "co_code"))


@pytest.mark.parametrize("func", FUNCTIONS, ids=lambda f: f.__name__)
def test_pruned_counters_split_the_inputs_as_a_counter_on_every_block_does(func, monkeypatch):
    assert instrumentation.PRUNING, "this atheris build lacks the Instrumentor internals the pruning needs"
    full = hit_sets(every_block(func), True, monkeypatch)
    ours = hit_sets(pruned(func), False, monkeypatch)
    assert partition(ours) == partition(full)
    assert new_coverage(ours) == new_coverage(full)
    assert all(hits for hits in ours)


def test_a_guard_chain_keeps_a_counter_per_early_return_not_per_guard():
    full, ours = counters(every_block(guards).__code__), counters(pruned(guards).__code__)
    # atheris: the entry, each guard's return and each guard's fall-through (9); kept: the four
    # returns and the body after the last guard (the entry and every fall-through but the last
    # are implied by where control goes next).
    assert (full, ours) == (9, 5)


def test_a_test_that_dominates_both_its_successors_has_no_counter():
    full, ours = counters(every_block(optional_step).__code__), counters(pruned(optional_step).__code__)
    # atheris: the entry, the early return, the test of c, its body and the return after it (5);
    # kept: the early return, the body and the return. The entry's successors have it as their
    # only predecessor; the test's do not (the return is reached from the body too), but the test
    # dominates both, so it ran exactly when one of them did.
    assert (full, ours) == (5, 3)


def test_a_block_whose_successor_has_another_predecessor_keeps_its_counter(monkeypatch):
    """Dropping the counter of ``x = 1`` would make merge(0, ...) and merge(1, ...) look alike."""
    ours = hit_sets(pruned(merge), False, monkeypatch)
    with_a = {ours[i] for i, args in enumerate(INPUTS) if args[0]}
    without_a = {ours[i] for i, args in enumerate(INPUTS) if not args[0]}
    assert with_a and without_a and not with_a & without_a


def test_hits_are_stored_in_the_map_without_a_call():
    code = pruned(guards).__code__
    assert "_trace_branch" not in {i.argval for i in dis.get_instructions(code)}
    assert hash(code) == hash(code)  # the map among its constants hashes (by identity)
    assert [i.opname for i in dis.get_instructions(code)].count("STORE_SUBSCR") == 5
    before = feedback.hit_indices()
    pruned(guards)(1, 2, 3)
    hit = [i for i in feedback.hit_indices() if i not in before]
    assert len(hit) == 1  # one counter: the body after the guards (the entry is implied)
    feedback.HITS[hit[0]] = 0


def test_instrumenting_twice_changes_nothing():
    once = instrumentation.patched_code(guards.__code__, __name__)
    assert instrumentation.patched_code(once, __name__) is once
