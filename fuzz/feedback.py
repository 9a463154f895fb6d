"""Coverage feedback into libFuzzer's counters: a set insert per hit, one write per counter per program.

Every counter hit of a program lands in :data:`HITS`: the simulator's instrumented blocks add to it
themselves (a ``SET_ADD`` in their bytecode, :mod:`fuzz.instrumentation`), protocol arcs and kernel
PCs through the function :meth:`HitTrail.bind` returns (``HITS.add``). When the program ends,
:meth:`HitTrail.flush` sets the counter of every index in the set in atheris' 8-bit counter array,
which libFuzzer reads after the input. Before this, every block called ``atheris._trace_branch(i)``:
a pybind11 call, about 1,300 machine instructions each (callgrind; an average v2 program made 225
of them, v1 374).

What libFuzzer sees is which counters a program hit, not how often: every hit counter reads 1,
where atheris' ``++`` gave libFuzzer a count to bucket (1, 2, 3, 4-7, ...). Keeping the counts
(a list append per hit, a count per program) saved a sixth as much (callgrind, v2: 811k
instructions a program with atheris' calls, 783k with counts, 634k with the set). Without the
counts the detection benchmark (``bench/detect.py``, seeds disabled, 38 variants) found the zoo
sooner, not later: 17.7 s total of medians against 21.3 s, the same afternoon.

The counter array is atheris' own (``atheris::counters`` in the libFuzzer-linked core, the memory
it registered with ``__sanitizer_cov_8bit_counters_init``), found with ctypes once libFuzzer runs.
Where it cannot be found (another atheris build), each program's hits go to atheris' own
``_trace_branch`` at the flush: slower, same counters.
"""
from __future__ import annotations

import ctypes
import sys

import atheris

CORE_MODULE = "atheris.core_with_libfuzzer"  # loaded by atheris.Fuzz()
COUNTERS_SYMBOL = "_ZN7atheris8countersE"  # unsigned char *atheris::counters
MAX_COUNTERS_SYMBOL = "_ZN7atheris12max_countersE"  # int atheris::max_counters (the array's length)
RESERVED_SYMBOL = "_ZN7atheris13counter_indexE"  # int atheris::counter_index (counters handed out)


def libfuzzer_running() -> bool:
    return CORE_MODULE in sys.modules


def atheris_counters() -> memoryview | None:
    """A writable view of the counter array libFuzzer reads, or None: libFuzzer is not running,
    this atheris build does not export the symbols, or more counters were handed out than the
    array holds (atheris then wraps indices; the trail would not)."""
    core = sys.modules.get(CORE_MODULE)
    path = getattr(core, "__file__", None)
    if not path:
        return None
    try:
        lib = ctypes.CDLL(path)  # the library already loaded: the same handle, no second copy
        address = ctypes.c_void_p.in_dll(lib, COUNTERS_SYMBOL).value
        size = ctypes.c_int.in_dll(lib, MAX_COUNTERS_SYMBOL).value
        reserved = ctypes.c_int.in_dll(lib, RESERVED_SYMBOL).value
    except (OSError, ValueError):  # not this build's symbols
        return None
    if not address or size <= 0 or reserved > size:
        return None
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")


class HitSet(set):
    """A set hashed by identity: instrumented bytecode holds it as a constant, and a code object's
    hash covers its constants."""

    __hash__ = object.__hash__


HITS = HitSet()  # the counters hit since the last flush, for the whole process (as libFuzzer's are)


class HitTrail:
    """The counters hit during one program (:data:`HITS`); written into libFuzzer's at its end.

    :meth:`bind` (once libFuzzer runs, on the first input) returns the function every feedback
    source calls with a counter index and forgets hits from before the loop (the stream layout's
    inference runs the simulator too); :meth:`flush` ends each program (unbound: it forgets them).
    Without libFuzzer (a benchmark), :meth:`bind` takes a private array, so the cost is the
    campaign's."""

    __slots__ = ("hits", "counters", "bound", "deliver")

    def __init__(self):
        self.hits: set[int] = HITS
        self.counters: memoryview | None = None
        self.bound = False
        self.deliver = None  # atheris' own hit function, when its counter array cannot be found

    def bind(self, counters: memoryview | None = None):
        """Route every hit through the trail; returns the function to report one with. ``counters``
        stands in for libFuzzer's array (tests, benchmarks)."""
        self.hits.clear()
        if counters is None:
            counters = atheris_counters()
        if counters is None:
            if libfuzzer_running():
                self.deliver = atheris._trace_branch
            return self.hits.add
        self.counters, self.bound = counters, True
        atheris._trace_branch = self.hits.add  # code instrumented by atheris itself (fuzz.instrumentation.PRUNING)
        return self.hits.add

    def discard(self) -> None:
        """Forget hits that are no program's coverage (a finding's traced replay, after the flush)."""
        self.hits.clear()

    def flush(self) -> None:
        """Mark the program's counters hit (libFuzzer cleared them all before the input)."""
        hits = self.hits
        if hits:
            # A plain loop: each store is one STORE_SUBSCR. map(counters.__setitem__, ...) drained in
            # C went through the slot wrapper's argument tuple and took twice as long (12 against
            # 25 us for 300 hits, timeit, 2026-12-03).
            counters = self.counters
            if counters is not None:
                for index in hits:
                    counters[index] = 1
            elif self.deliver is not None:
                for index in hits:
                    self.deliver(index)
            hits.clear()
