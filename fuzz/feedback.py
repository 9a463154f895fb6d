"""Coverage feedback into libFuzzer's counters: a set insert per hit, one write per counter per program.

Every basic block atheris instruments calls ``atheris._trace_branch(i)`` (the bytecode looks
the name up on the ``atheris`` module at each call), and so did every protocol arc and kernel
PC: a pybind11 call, about 1,300 machine instructions each (callgrind; an average v2 program
makes 225 of them, v1 374). :class:`HitTrail` rebinds that name to a set's ``add`` (C, no
argument conversion) and, when the program ends, sets the counter of every index in the set in
atheris' 8-bit counter array, which libFuzzer reads after the input (:meth:`HitTrail.flush`).

What libFuzzer sees is which counters a program hit, not how often: every hit counter reads 1,
where atheris' ``++`` gave libFuzzer a count to bucket (1, 2, 3, 4-7, ...). Keeping the counts
(a list append per hit, a count per program) saved a sixth as much (callgrind, v2: 811k
instructions a program with atheris' calls, 783k with counts, 634k with the set). Without the
counts the detection benchmark (``bench/detect.py``, seeds disabled, 38 variants) found the zoo
sooner, not later: 17.7 s total of medians against 21.3 s, the same afternoon.

The counter array is atheris' own (``atheris::counters`` in the libFuzzer-linked core, the memory
it registered with ``__sanitizer_cov_8bit_counters_init``), found with ctypes once libFuzzer runs.
Where it cannot be found (another atheris build), nothing is rebound and atheris' function stays
in use: slower, with counts.
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


class HitTrail:
    """The counters hit during one program; written into libFuzzer's at its end.

    :meth:`bind` (once libFuzzer runs, on the first input) returns the function every feedback
    source calls with a counter index; :meth:`flush` ends each program (nothing to do when
    unbound: the set stays empty).
    Without libFuzzer (a benchmark), :meth:`bind` takes a private array, so the cost is the
    campaign's."""

    __slots__ = ("hits", "counters", "bound")

    def __init__(self):
        self.hits: set[int] = set()
        self.counters: memoryview | None = None
        self.bound = False

    def bind(self, counters: memoryview | None = None):
        """Route atheris' instrumentation through the trail; returns the function to report a hit
        with (atheris' own when the counter array cannot be found). ``counters`` stands in for
        libFuzzer's array (tests, benchmarks)."""
        if counters is None:
            counters = atheris_counters()
        if counters is None:
            return atheris._trace_branch
        self.counters, self.bound = counters, True
        atheris._trace_branch = self.hits.add
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
            for index in hits:
                counters[index] = 1
            hits.clear()
