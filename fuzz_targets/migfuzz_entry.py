"""Shared code of the libFuzzer entry points (``*_fuzzer.py``: ClusterFuzzLite / OSS-Fuzz).

An entry point decodes each input with ``fuzz.codec.decode``, runs it with
``fuzz.executor.Executor`` on the simulator and raises :class:`MigfuzzFinding`
on a finding, so libFuzzer records the input as a crash (``crash-<sha1>``;
``migfuzz triage DIR --target T`` and ``migfuzz repro`` read it).

The simulator, the executor and the oracles are imported inside
``atheris.instrument_imports`` (code coverage); every (state, op, outcome,
state) protocol arc the executor reports also lights a counter of its own.
Mutation is op-level (``fuzz.mutator``), with libFuzzer's byte mutation for
arguments and payloads.

Environment: ``MIGFUZZ_TARGET`` replaces the entry point's target, e.g.
``MIGFUZZ_TARGET=sim:bug=v2-error-requestable`` plants a bug from the zoo.
Run from a checkout without a corpus directory, the text seeds of
``corpus/seeds/<proto>`` are fed in with ``-seed_inputs``.

Imports are static (PyInstaller follows them); nothing here needs migfuzz's CLI.
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if not getattr(sys, "frozen", False) and (_ROOT / "fuzz_targets" / "migfuzz_entry.py").is_file() \
        and (_ROOT / "fuzz" / "__init__.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))  # run from a checkout: use that checkout's migfuzz

import atheris  # noqa: E402

from fuzz import codec, mutator  # noqa: E402
from fuzz.program import format_program, parse_program  # noqa: E402
from fuzz.targets import open_target, parse_target  # noqa: E402

INSTRUMENTED = ["harness.sim", "fuzz.executor", "fuzz.oracles"]
ARC_COUNTERS = 1 << 14
BYTE_MUTATION = 0.2  # share of mutations left to libFuzzer's byte mutator


class MigfuzzFinding(Exception):
    """A VFIO migration protocol violation (raised so libFuzzer saves the input)."""


class EntryPoint:
    def __init__(self, default_target: str):
        self.target_text = os.environ.get("MIGFUZZ_TARGET") or default_target
        self.rng = random.Random(0)
        self.executor = None
        self.target = None
        self.proto = "v2"
        self.arc_base = None
        self.arcs_bound = False

    def load(self) -> None:
        """Import the device model under instrumentation and open the target."""
        from fuzz import model  # noqa: F401  (tables, not target code: uninstrumented, as the engine does)

        with atheris.instrument_imports(include=INSTRUMENTED):
            import fuzz.executor  # noqa: F401
            import fuzz.oracles  # noqa: F401
            import harness.sim  # noqa: F401
        from fuzz.executor import Executor

        self.target = open_target(parse_target(self.target_text))
        self.proto = self.target.proto
        self.executor = Executor(self.target)
        if hasattr(self.executor, "set_arc_feedback"):
            self.arc_base = atheris._reserve_counter()
            for _ in range(ARC_COUNTERS - 1):
                atheris._reserve_counter()

    def test_one_input(self, data: bytes) -> None:
        if not self.arcs_bound:
            # atheris.Fuzz() rebinds atheris._trace_branch: bind the live one, not the pre-fuzz no-op.
            self.arcs_bound = True
            if self.arc_base is not None:
                self.executor.set_arc_feedback(atheris._trace_branch, self.arc_base, ARC_COUNTERS)
        prog = codec.decode(data, self.proto)
        finding = self.executor.run(prog)
        if finding is not None:
            raise MigfuzzFinding(
                f"{finding.kind} at step {finding.step} ({finding.op}): expected {finding.expected}; "
                f"observed {finding.observed} [arc {finding.arc}] on {self.target_text}\n"
                f"{finding.detail}{format_program(prog)}")

    def custom_mutator(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = self.rng
        rng.seed(seed)
        if rng.random() < BYTE_MUTATION:
            return atheris.Mutate(data, max_size)
        if hasattr(mutator, "mutate_bytes"):
            out = data
            for _ in range(1 + (rng.random() < 0.3)):
                out = mutator.mutate_bytes(self.proto, out, rng)
        else:
            prog = mutator.mutate(codec.decode(data, self.proto), rng)
            out = codec.encode(mutator.trim_payload(prog))
        return out[:max_size]

    def custom_crossover(self, data1: bytes, data2: bytes, max_out: int, seed: int) -> bytes:
        rng = self.rng
        rng.seed(seed)
        if hasattr(mutator, "crossover_bytes"):
            return mutator.crossover_bytes(data1, data2, rng)[:max_out]
        prog = mutator.crossover(codec.decode(data1, self.proto), codec.decode(data2, self.proto), rng)
        return codec.encode(mutator.trim_payload(prog))[:max_out]

    def seed_args(self, argv: list) -> list:
        """-seed_inputs with the checkout's text seeds when no corpus directory is given."""
        if any(not a.startswith("-") for a in argv[1:]) or any(a.startswith("-seed_inputs") for a in argv):
            return []
        seeds = sorted((_ROOT / "corpus" / "seeds" / self.proto).glob("*.txt"))
        if not seeds:
            return []
        tmp = Path(tempfile.mkdtemp(prefix="migfuzz-seeds-"))
        files = []
        for seed in seeds:
            try:
                data = codec.encode(parse_program(seed.read_text()))
            except (ValueError, OSError):
                continue
            path = tmp / seed.stem
            path.write_bytes(data)
            files.append(str(path))
        return [f"-seed_inputs={','.join(files)}"] if files else []

    def main(self, argv: list) -> None:
        self.load()
        argv = list(argv) + self.seed_args(argv)
        atheris.Setup(argv, self.test_one_input, custom_mutator=self.custom_mutator,
                      custom_crossover=self.custom_crossover)
        atheris.Fuzz()
