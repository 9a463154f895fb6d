"""Minimization: shrink a program while a predicate still holds. Knows nothing of devices.

:class:`Reducer` takes a predicate ``test(ops) -> step or None``: the step at which the
property still shows for these ops (the program is then cut after it), or None. It runs
delta debugging over ops (ddmin), dropping any two ops at once (what ddmin's aligned
chunks miss), then per-op simplification of the device and every argument (smaller
reads, unsegmented transfers, shorter payloads, commoner states, device 0, ...), repeated
to a fixpoint. Deterministic: no randomness, a budget of predicate calls, a cache.

The op that shows the property keeps its evidence: its read length and its payload are
never shrunk to nothing (a 0-byte read that "returned 0 bytes" proves little).

:func:`minimize_program` is the predicate the tools use: the program run by the executor
on a target still produces a finding with the wanted signature.
"""
from __future__ import annotations

from typing import NamedTuple

from .executor import Executor
from .findings import Finding, signature
from .program import OPS, Program, field_value, normalize, with_field

DEFAULT_MAX_RUNS = 20000  # predicate calls one minimization may spend

# Preference order of state values when simplifying ("commoner" first).
_V2_STATE_RANK = (2, 1, 3, 4, 6, 5, 7, 0)  # RUNNING STOP STOP_COPY RESUMING PRE_COPY RUNNING_P2P PRE_COPY_P2P ERROR
_V1_STATE_RANK = (0b001, 0b000, 0b010, 0b100, 0b011, 0b101, 0b111, 0b110)
# Fields whose value at the finding step is its evidence: never shrunk to nothing there.
_EVIDENCE = {"n": 1, "data": 1}


class Reducer:
    """Shrink a tuple of ops while ``test`` still holds (see the module doc)."""

    def __init__(self, proto: str, test, max_runs: int = DEFAULT_MAX_RUNS):
        self.proto = proto
        self.specs = OPS[proto]
        self.test = test
        self.max_runs = max_runs
        self.runs = 0
        self.cache: dict = {}

    def holds(self, ops: tuple) -> int | None:
        """The step the property shows at for ``ops`` (cached), or None."""
        if ops in self.cache:
            return self.cache[ops]
        if self.runs >= self.max_runs or not ops:
            return None
        self.runs += 1
        step = self.cache[ops] = self.test(ops)
        return step

    def accept(self, ops: tuple) -> tuple | None:
        """``ops`` cut after the step that shows the property, if it still holds; else None."""
        step = self.holds(tuple(ops))
        return None if step is None else tuple(ops[:step + 1])

    # -- passes ---------------------------------------------------------------

    def ddmin(self, ops: tuple) -> tuple:
        n = 2
        while len(ops) >= 2:
            size = len(ops)
            bounds = [size * i // n for i in range(n + 1)]
            chunks = [ops[bounds[i]:bounds[i + 1]] for i in range(n)]
            reduced = None
            for chunk in chunks:  # one chunk alone
                reduced = self.accept(chunk)
                if reduced is not None:
                    n = 2
                    break
            if reduced is None:
                for i in range(n):  # everything but one chunk
                    reduced = self.accept(ops[:bounds[i]] + ops[bounds[i + 1]:])
                    if reduced is not None:
                        n = max(n - 1, 2)
                        break
            if reduced is not None:
                ops = reduced
                continue
            if n >= size:
                break
            n = min(2 * n, size)
        return ops

    def remove_pairs(self, ops: tuple, limit: int = 32) -> tuple:
        """Try dropping any two ops at once (ddmin only drops aligned chunks): an op that is
        needed only because of another one (a second SET and the close of the fd it opened)."""
        changed = True
        while changed and 2 < len(ops) <= limit:
            changed = False
            n = len(ops)
            for i in range(n - 1):
                for j in range(i + 1, n):
                    got = self.accept(ops[:i] + ops[i + 1:j] + ops[j + 1:])
                    if got is not None:
                        ops, changed = got, True
                        break
                if changed:
                    break
        return ops

    @staticmethod
    def candidates(fld, value, floor: int = 0):
        """Simpler values for one field, most preferred first (none below ``floor`` in size)."""
        kind = fld.kind
        if kind == "bytes":
            out = [b""]
            k = 1
            while k < len(value):
                out.append(value[:k])
                k *= 2
            if any(value):
                out.append(bytes(len(value)))
            return [v for v in out if v != value and len(v) >= floor]
        if kind == "state":
            rank = _V2_STATE_RANK
            if 0 <= value < 8:
                return list(rank[:rank.index(value)])
            return list(rank) + ([8] if value != 8 else [])
        if kind == "v1state":
            rank = _V1_STATE_RANK
            if 0 <= value < 8:
                return list(rank[:rank.index(value)])
            out = [value & 7] + [v for v in rank if v != value & 7]
            return out + ([8 | (value & 7)] if value != 8 | (value & 7) else [])
        if kind == "hex":
            out = [0] if value else []
            for bit in reversed(range(value.bit_length())):
                if value >> bit & 1 and value != 1 << bit:
                    out.append(value & ~(1 << bit))
            return out
        # plain integers (counts, sizes, seeds, indices, fd slots, fault/mangle kinds)
        if value <= 0:
            return []
        out = {0, 1, 2, 3, value - 1, value >> 1}
        p = 4
        while p < value:
            out.add(p)
            out.add(p - 1)
            p <<= 1
        return sorted(v for v in out if floor <= v < value)

    def simplify(self, ops: tuple) -> tuple:
        """One pass over every op's device and arguments; returns the simplified ops."""
        proto = self.proto
        # The device roles are symmetric: prefer a program that starts on device 0.
        if ops and ops[0].dev == 1:
            swapped = []
            for op in ops:
                op = op._replace(dev=1 - op.dev)
                if self.specs[op.code].name == "transfer":
                    op = op._replace(a=1 - op.a)
                swapped.append(op)
            got = self.accept(tuple(swapped))
            if got is not None:
                ops = got
        i = 0
        while i < len(ops):
            op = ops[i]
            if op.dev == 1:
                got = self.accept(ops[:i] + (op._replace(dev=0),) + ops[i + 1:])
                if got is not None and i < len(got):
                    ops = got
                    op = ops[i]
            for fld in self.specs[op.code].fields:
                changed = True
                while changed and i < len(ops):
                    changed = False
                    op = ops[i]
                    floor = _EVIDENCE.get(fld.name, 0) if i == len(ops) - 1 else 0
                    value = field_value(fld, op)
                    for cand in self.candidates(fld, value, floor):
                        new = normalize(proto, with_field(fld, op, cand))
                        if new == op:
                            continue
                        got = self.accept(ops[:i] + (new,) + ops[i + 1:])
                        if got is not None:
                            ops = got
                            changed = fld.kind in ("bytes", "hex")  # these can shrink again
                            break
            i += 1
        return ops

    def reduce(self, ops: tuple) -> tuple:
        ops = self.accept(tuple(ops))
        if ops is None:
            raise ValueError("the program does not show the property to keep")
        for _ in range(16):
            before = ops
            ops = self.ddmin(ops)
            ops = self.remove_pairs(ops)
            ops = self.simplify(ops)
            if ops == before:
                break
        return ops


class MinimizeResult(NamedTuple):
    program: Program
    finding: Finding  # of the minimized program
    signature: str
    original_ops: int
    runs: int


def minimize_program(target, prog: Program, want: str | None = None, max_runs: int = DEFAULT_MAX_RUNS,
                     coarse: bool = False) -> MinimizeResult | None:
    """Minimize ``prog`` on ``target`` keeping the signature of its finding (or ``want``).

    None when the program shows no finding (or not ``want``)."""
    executor = Executor(target)
    finding = executor.run(prog)
    if finding is None:
        return None
    sig = signature(finding, coarse)
    if want is not None and sig != want:
        return None

    def same_finding(ops):
        found = executor.run(Program(prog.proto, ops))
        return found.step if found is not None and signature(found, coarse) == sig else None

    reducer = Reducer(prog.proto, same_finding, max_runs)
    final = Program(prog.proto, reducer.reduce(prog.ops))
    return MinimizeResult(final, executor.run(final), sig, len(prog.ops), reducer.runs)
