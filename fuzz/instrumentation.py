"""Code coverage of the simulator: a counter at the basic blocks whose hit nothing else implies.

atheris' instrumentation (``atheris.instrument_bytecode``) puts a call to
``atheris._trace_branch(i)`` at the start of every basic block. Here its bytecode rewriter does
two things differently:

* **fewer counters.** A block all of whose successors it dominates gets no counter: whenever it
  runs, one of them runs next, and none of them runs without it, so it ran exactly when one of
  them did, and their counters (or, for one without, its own successors', further down the
  dominator tree) say so. This is SanitizerCoverage's pruning of the blocks that are full
  dominators. A chain of guard clauses (``if bad: return -EINVAL``) keeps the counters of its
  early returns and of the block after the last guard, not one per guard; an ``if`` without an
  ``else`` keeps its body's and the merge's, not the test's; a loop's ``FOR_ITER`` is no longer
  counted besides its body. On the programs a v2 campaign kept, 323 block hits a program became
  121 (210 when only a block whose successors have it as their only predecessor went
  uncounted), and which programs have the same coverage is unchanged (every program partitioned
  alike, on v1, v2 0x1/0x7 and zoo variants that raise: ``bench/pruning.py``).
* **no call.** The counter's hit is ``HITS[i] = 1`` (``LOAD_CONST 1; LOAD_CONST HITS; LOAD_CONST i;
  STORE_SUBSCR``): a byte stored in :data:`fuzz.feedback.HITS`, which
  :class:`fuzz.feedback.HitTrail` copies into libFuzzer's counters when the program ends.

What is lost: a block that raises before it ends is not counted (its successors never run); the
function it raised in, or the handler, is. The same for a generator's block left at a ``yield``
that is never resumed.

The rewriter subclasses atheris' ``Instrumentor`` and reads its instruction list (``referers``,
``reference``, the exception table). Where this atheris build does not have them,
:func:`patched_code` uses ``atheris.patch_code`` instead (a call per block into
``atheris._trace_branch``, which the trail rebinds to a function marking :data:`~fuzz.feedback.HITS`):
slower, same feedback. :data:`PRUNING` says which one runs.
"""
from __future__ import annotations

import contextlib
import io
import sys
import types

import atheris

from .feedback import HITS, MAP_SIZE

try:
    from atheris import instrument_bytecode as _ib
    from atheris.version_dependent import CONDITIONAL_JUMPS, ENDS_FUNCTION, UNCONDITIONAL_JUMPS
    _BASE = _ib.Instrumentor
    PRUNING = all(hasattr(_BASE, name) for name in ("_insert_at", "_get_counter", "trace_data_flow", "to_code")) \
        and hasattr(_ib, "_generate_instruction") and hasattr(_ib, "INSERT_AFTER_INSTRS")
except ImportError:  # another atheris: its own patch_code
    _BASE, PRUNING = object, False

# Comparisons are traced (atheris' dataflow tracing, for libFuzzer's table of recent compares, which
# its byte mutation copies values from) only in the stream loader, where a compared value is a
# magic, a length or a checksum. Elsewhere the simulator compares states and offsets the op-level
# mutator already enumerates, and each traced comparison cost ~2,200 instructions (callgrind:
# 138 of them in an average v1 program, 0.2 of its instrumented cost).
DATAFLOW_MODULES = ("harness.sim.stream",)
_MARKER = "__ATHERIS_INSTRUMENTED__"  # atheris' own: code carrying it is never instrumented twice


class _Blocks(_BASE):
    """atheris' Instrumentor, with a counter at the blocks :meth:`counted_starts` keeps, each a
    byte stored in :data:`HITS`."""

    def counted_starts(self) -> list:
        """The instructions that get a counter: atheris' block starts (the first instruction, jump
        targets, the instruction after a conditional jump) but those whose block dominates all
        its successors (each of them an atheris start: one with a counter of its own, or one
        left without by this same rule)."""
        code = self.instructions
        n = len(code)
        at = {instr: i for i, instr in enumerate(code)}
        starts = {0} | {i for i, instr in enumerate(code) if instr.referers} \
            | {i + 1 for i, instr in enumerate(code[:-1]) if instr.mnemonic in CONDITIONAL_JUMPS}
        # Exception handlers start blocks of their own: entered from anywhere in their try range,
        # never by a jump, so they are no atheris start, and roots of the dominator tree.
        handlers = {at[entry.target] for entry in self.exceptiontable}
        # The control-flow graph splits after every jump and return too (atheris' starts do not).
        bounds = sorted(starts | handlers | {i + 1 for i, instr in enumerate(code[:-1])
                                             if instr.reference is not None or instr.mnemonic in ENDS_FUNCTION})
        successors: dict[int, list[int]] = {}
        predecessors: dict[int, set[int]] = {b: set() for b in bounds}
        for k, begin in enumerate(bounds):
            end = bounds[k + 1] if k + 1 < len(bounds) else n
            last = code[end - 1]
            out = []
            if last.reference is not None:
                out.append(at[last.reference])
            jumps_away = last.reference is not None and last.mnemonic in UNCONDITIONAL_JUMPS
            if end < n and not jumps_away and last.mnemonic not in ENDS_FUNCTION:
                out.append(end)
            successors[begin] = out
            for block in out:
                predecessors[block].add(begin)

        dominators, bit = _dominators(bounds, predecessors, {0} | handlers)

        def below(block: int, begin: int) -> bool:
            return block != begin and block in starts and dominators[block] & bit[begin]

        kept = []
        for begin in sorted(starts):
            out = successors[begin]
            if out and all(below(block, begin) for block in out):
                continue  # implied by whichever successor runs: it runs only after this block
            i = begin  # where atheris would put it: after the RESUME prologue, past INSERT_AFTER_INSTRS
            while i < n and (code[i].before_resume or code[i].mnemonic in _ib.INSERT_AFTER_INSTRS):
                i += 1 if code[i].before_resume else _ib.INSERT_AFTER_INSTRS[code[i].mnemonic]
            if i < n:
                kept.append(code[i])
        return list(dict.fromkeys(kept))

    def trace_control_flow(self) -> None:
        for instr in self.counted_starts():
            self._insert_at(self._generate_trace_branch_invocation(instr), instr)

    def _generate_trace_branch_invocation(self, copyfrom):
        make = _ib._generate_instruction
        counter = atheris._reserve_counter() % MAP_SIZE
        return [make("LOAD_CONST", self._const_index(1), copyfrom),
                make("LOAD_CONST", self._const_index(HITS), copyfrom),
                make("LOAD_CONST", self._const_index(counter), copyfrom),
                make("STORE_SUBSCR", None, copyfrom)]

    def _const_index(self, obj) -> int:
        """The index of ``obj`` in the constants: the same object for the map (atheris' ``_get_const``
        matches by value), an int of the same value for a number (1 == True)."""
        for i, const in enumerate(self.consts):
            if const is obj or (type(const) is int and type(obj) is int and const == obj):
                return i
        self.consts.append(obj)
        return len(self.consts) - 1


def _dominators(blocks: list, predecessors: dict, roots: set) -> tuple[dict, dict]:
    """({block: bitmask of the blocks that dominate it, itself included}, {block: its bit}): every
    path from a root to a block passes through its dominators. The roots are the entry and the
    exception handlers (entered from anywhere in their try range, so nothing dominates them). The
    textbook iteration to a fixed point; a block no root reaches keeps every bit (it never runs)."""
    bit = {b: 1 << k for k, b in enumerate(blocks)}
    every = (1 << len(blocks)) - 1
    dom = {b: bit[b] if b in roots else every for b in blocks}
    changed = True
    while changed:
        changed = False
        for b in blocks:
            if b in roots:
                continue
            meet = every
            for p in predecessors[b]:
                meet &= dom[p]
            if meet | bit[b] != dom[b]:
                dom[b], changed = meet | bit[b], True
    return dom, bit


def _patch(code: types.CodeType, dataflow: bool, nested: bool = False) -> types.CodeType:
    """atheris.patch_code's walk (this code object, then the nested functions and lambdas it holds),
    with :class:`_Blocks`."""
    if any(isinstance(const, str) and const == _MARKER for const in code.co_consts):
        return code
    blocks = _Blocks(code)
    blocks.trace_control_flow()
    if dataflow:
        blocks.trace_data_flow()
    for i, const in enumerate(blocks.consts):
        if isinstance(const, types.CodeType) and (
                const.co_name == "<lambda>" or (not nested and const.co_name == "<module>")
                or not (const.co_name.startswith("<") and const.co_name.endswith(">"))):
            blocks.consts[i] = _patch(const, dataflow, nested=True)
    return blocks.to_code()


def _named(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def patched_code(code: types.CodeType, module: str) -> types.CodeType:
    """``code`` with branch coverage, and comparisons traced when ``module`` is one of
    :data:`DATAFLOW_MODULES`."""
    dataflow = _named(module, DATAFLOW_MODULES)
    if PRUNING:
        return _patch(code, dataflow)
    return atheris.patch_code(code, dataflow, True)


def functions(module: types.ModuleType, skip=frozenset()):
    """Every function defined in ``module``: module-level ones and the methods of its classes
    (but those of the classes in ``skip``)."""
    filename = getattr(module, "__file__", None)
    for obj in list(vars(module).values()):
        candidates = [obj]
        if isinstance(obj, type) and obj.__module__ == module.__name__:
            if obj in skip:
                continue
            candidates = []
            for attr in vars(obj).values():
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                elif isinstance(attr, property):
                    candidates += [f for f in (attr.fget, attr.fset) if f is not None]
                    continue
                candidates.append(attr)
        for f in candidates:  # (record keeping is left alone: harness.base.bookkeeping)
            if isinstance(f, types.FunctionType) and f.__code__.co_filename == filename \
                    and not getattr(f, "__bookkeeping__", False):
                yield f


def instrument(prefixes, skip=frozenset()) -> int:
    """Instrument (in place) every function of the loaded modules named by ``prefixes`` (not the
    methods of the classes in ``skip``); returns how many. The function objects stay the same, so
    references held elsewhere (bound methods in tables, memoized helpers) run the instrumented
    code too."""
    count = 0
    with contextlib.redirect_stderr(io.StringIO()):  # atheris' notes on what it cannot instrument
        for name, module in sorted(sys.modules.items()):
            if module is None or not _named(name, prefixes):
                continue
            for func in functions(module, skip):
                func.__code__ = patched_code(func.__code__, name)
                count += 1
    return count
