"""Coverage feedback into libFuzzer's counters: a byte store per hit, one copy per program.

Every counter hit of a program is a byte set in :data:`HITS`, a map with one byte per counter: the
simulator's instrumented blocks store it themselves (``HITS[i] = 1`` in their bytecode,
:mod:`fuzz.instrumentation`), protocol arcs write the map directly (``fuzz.executor``), kernel PCs
through :meth:`HitTrail.hit`. When the program ends, :meth:`HitTrail.flush` copies the map's
reserved counters over atheris' 8-bit counter array (libFuzzer cleared it before the input and reads
it after) and clears them: two copies of about 17 KB (16,384 of them protocol arcs). Before this,
every block called ``atheris._trace_branch(i)``: a pybind11 call, about 1,300 machine instructions
each (callgrind; an average v2 program made 225 of them, v1 374); then a set insert per hit and a
store per counter at the end.

What libFuzzer sees is which counters a program hit, not how often: every hit counter reads 1,
where atheris' ``++`` gave libFuzzer a count to bucket (1, 2, 3, 4-7, ...). Keeping the counts
(a list append per hit, a count per program) saved a sixth as much (callgrind, v2: 811k
instructions a program with atheris' calls, 783k with counts, 634k with a set of hits). Without
the counts the detection benchmark (``bench/detect.py``, seeds disabled, 38 variants) found the
zoo sooner, not later: 17.7 s total of medians against 21.3 s, the same afternoon.

The counter array is atheris' own (``atheris::counters`` in the libFuzzer-linked core, the memory
it registered with ``__sanitizer_cov_8bit_counters_init``), found with ctypes once libFuzzer runs.
Nothing else writes it during an input (atheris' comparison tracing feeds libFuzzer's comparison
tables, not the counters). Where it cannot be found (another atheris build), each program's hits
go to atheris' own ``_trace_branch`` at the flush: slower, same counters.
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


class HitMap(bytearray):
    """A bytearray hashed by identity: instrumented bytecode holds it as a constant, and a code
    object's hash covers its constants."""

    __hash__ = object.__hash__


# atheris' default counter count; an index past it wraps, as atheris wraps it.
MAP_SIZE = 1 << 20
HITS = HitMap(MAP_SIZE)  # the counters hit since the last flush, for the whole process (as libFuzzer's are)


def hit_indices(size: int = MAP_SIZE) -> list[int]:
    """The counters marked in :data:`HITS` below ``size`` (tests, benchmarks: not the hot path)."""
    out, i = [], HITS.find(1, 0, size)
    while i >= 0:
        out.append(i)
        i = HITS.find(1, i + 1, size)
    return out


class HitTrail:
    """The counters hit during one program (:data:`HITS`); copied into libFuzzer's at its end.

    :meth:`bind` (once libFuzzer runs, on the first input) learns how many counters are reserved
    and clears the map (the stream layout's inference runs the instrumented simulator too);
    :meth:`flush` ends each program (unbound: nothing). Without libFuzzer (a benchmark),
    :meth:`bind` takes a private array, so the cost is the campaign's."""

    __slots__ = ("counters", "bound", "deliver", "size", "reserved", "zeros")

    def __init__(self):
        self.counters: memoryview | None = None  # libFuzzer's, as many as are reserved
        self.bound = False
        self.deliver = None  # atheris' own hit function, when its counter array cannot be found
        self.size = 0
        self.reserved: memoryview | None = None  # HITS[:size]
        self.zeros = b""

    def bind(self, counters: memoryview | None = None) -> bytearray:
        """Route every hit through the trail; returns the map a feedback source marks counter ``i``
        in with ``map[i] = 1``. ``counters`` stands in for libFuzzer's array (tests, benchmarks)."""
        # The index of a spare counter is how many were reserved before it (blocks, arcs, kernel).
        self.size = min(atheris._reserve_counter(), MAP_SIZE)
        HITS[:] = bytes(MAP_SIZE)
        self.reserved, self.zeros = memoryview(HITS)[:self.size], bytes(self.size)
        if counters is None:
            counters = atheris_counters()
        if counters is None:
            if libfuzzer_running():
                self.deliver = atheris._trace_branch
            return HITS
        self.counters, self.bound = counters[:self.size], True
        atheris._trace_branch = self.hit  # code instrumented by atheris itself (fuzz.instrumentation.PRUNING)
        return HITS

    @staticmethod
    def hit(index: int) -> None:
        """Mark counter ``index`` (for sources that call a function: kernel PCs, atheris' own code)."""
        HITS[index % MAP_SIZE] = 1

    def discard(self) -> None:
        """Forget hits that are no program's coverage (a finding's traced replay, after the flush)."""
        if self.reserved is not None:
            self.reserved[:] = self.zeros

    def flush(self) -> None:
        """Copy the program's hits into libFuzzer's counters (it cleared them all before the input)
        and clear the map."""
        reserved = self.reserved
        if reserved is None:
            return
        counters = self.counters
        if counters is not None:
            counters[:] = reserved
        elif self.deliver is not None:
            for index in hit_indices(self.size):
                self.deliver(index)
        reserved[:] = self.zeros
