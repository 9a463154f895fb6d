"""The fuzzing engine: atheris (libFuzzer) driving the executor.

Feedback is code coverage of the simulator, executor and oracles (atheris
instruments them as they are imported inside ``instrument_imports``) plus
protocol-state coverage: every (state, op, outcome, state) arc the executor
reports lights one of ``ARC_COUNTERS`` counters reserved in libFuzzer's
coverage map, so a new protocol arc keeps an input even on a real device,
which gives no code coverage at all.

The mutator works on ops (``fuzz.mutator``) and falls back to libFuzzer's byte
mutation for arguments and payloads.  A finding is written to the crash
directory the moment it is seen (bytes + annotated text), before anything else
can go wrong.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import signal
import sys
import time
from pathlib import Path

from .codec import decode, encode
from .program import Program, ProgramError, format_program, is_text, parse_program
from .targets import TargetSpec

ARC_COUNTERS = 1 << 14
# Default input size bound: about 16 ops plus some payload.  Protocol bugs need
# short programs, and shorter programs run faster; `-- -max_len=N` overrides.
MAX_LEN = 1 + 16 * 8 + 64
STATS_EVERY = 5.0  # seconds between live stats lines
# What atheris instruments for code coverage, by --instrument level.
INSTRUMENT_SCOPES = {
    "target": ["harness.sim"],
    "all": ["harness.sim", "fuzz.executor", "fuzz.oracles"],
    "none": [],
}


def seed_dir(proto: str) -> Path:
    return Path(__file__).resolve().parent.parent / "corpus" / "seeds" / proto


def load_program_file(path: Path, proto: str | None) -> Program:
    """A crash or corpus file, text or binary, as a program (ProgramError if unreadable)."""
    data = path.read_bytes()
    if is_text(data):
        prog = parse_program(data.decode("utf-8", "replace"))
        if proto and prog.proto != proto:
            raise ProgramError(f"{path} is a {prog.proto} program; the target speaks {proto}")
        return prog
    return decode(data, proto or "v2")


def prepare_corpus(corpus: Path, proto: str) -> int:
    """Put the binary form of every text seed into the corpus directory."""
    corpus.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in sorted(seed_dir(proto).glob("*.txt")):
        try:
            data = encode(parse_program(seed.read_text()))
        except ProgramError as e:
            raise ProgramError(f"seed {seed}: {e}") from None
        name = corpus / hashlib.sha1(data).hexdigest()
        if not name.exists():
            name.write_bytes(data)
        count += 1
    return count


def crash_report(prog: Program, finding, trace, target_name: str) -> str:
    lines = [
        f"# migfuzz finding: {finding.kind}",
        f"# target: {target_name}",
        f"# step {finding.step}: {finding.op}",
        f"# arc: {finding.arc}",
        f"# expected: {finding.expected}",
        f"# observed: {finding.observed}",
        f"# signature: {finding.signature()}",
        "#",
        "# trace:",
    ]
    lines += [f"#   [{step}] {text}" for step, text in trace]
    if finding.detail:
        lines += ["#", "# exception:"] + [f"#   {ln}" for ln in finding.detail.rstrip().splitlines()]
    return "\n".join(lines) + "\n" + format_program(prog)


def save_finding(crashes: Path, data: bytes, prog: Program, finding, trace, target_name: str) -> Path:
    """Write crash-<sha1> and crash-<sha1>.txt durably; returns the binary's path."""
    crashes.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()
    path = crashes / f"crash-{digest}"
    # The .txt first: it alone holds the target and the whole program, so a kill
    # between the two writes never leaves a binary nobody can interpret.
    for p, content in ((path.with_suffix(".txt"), crash_report(prog, finding, trace, target_name).encode()),
                       (path, data)):
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    dir_fd = os.open(crashes, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the renames themselves survive a power loss
    finally:
        os.close(dir_fd)
    return path


class Campaign:
    """State of one fuzzing process."""

    def __init__(self, spec: TargetSpec, crashes: Path, max_time: float | None, runs: int | None,
                 keep_going: bool, seed: int, out=sys.stderr, report=None):
        self.spec = spec
        self.crashes = crashes
        self.deadline = time.monotonic() + max_time if max_time else None
        self.runs = runs
        self.keep_going = keep_going
        self.rng = random.Random(seed)
        self.out = out
        self.report = report  # optional callback(kind, dict) for machine-readable output
        self.execs = 0
        self.signatures: set = set()
        self.findings = 0
        self.started = time.monotonic()
        self.cpu_started = time.process_time()
        self.last_stats = self.started
        self.executor = None
        self.target = None
        self.proto = spec.proto
        self.current = b""
        self.label = ""  # names this campaign's lines when several run side by side
        self.arc_unbound = False
        self.arc_base = 0

    # -- setup ------------------------------------------------------------------

    def load_target(self, instrument: bool | str) -> None:
        scope = INSTRUMENT_SCOPES["all" if instrument is True else instrument or "none"]
        if scope:
            import atheris

            from . import model  # noqa: F401  (tables, not target code: imported uninstrumented)

            quiet = contextlib.redirect_stderr(io.StringIO())  # atheris names every module it instruments
            with quiet, atheris.instrument_imports(include=scope):
                from harness import sim  # noqa: F401  (instrumented on import)

                from . import executor as executor_mod
        else:
            from . import executor as executor_mod
        from .targets import open_target

        self.target = open_target(self.spec)
        self.proto = self.target.proto
        self.executor = executor_mod.Executor(self.target)
        if hasattr(self.target, "on_hang"):  # a real device (harness.kernel.target): its watchdog calls this
            self.target.on_hang = self.on_hang
            self.target.current_input = lambda: self.current  # for its flight recorder

    def enable_mutator(self) -> None:
        import atheris

        from .mutator import crossover_bytes, mutate_bytes

        self.byte_mutate = lambda data, max_size: atheris.Mutate(data, max_size)  # bound by Fuzz()
        self.mutate_bytes = mutate_bytes
        self.crossover_bytes = crossover_bytes

    def enable_arc_feedback(self) -> None:
        """Reserve one libFuzzer coverage counter per protocol-arc slot.

        The counters are bound to the executor on the first input: atheris.Fuzz()
        replaces atheris._trace_branch with the live function, and the one seen
        before it starts records nothing."""
        import atheris

        self.arc_base = atheris._reserve_counter()
        for _ in range(ARC_COUNTERS - 1):
            atheris._reserve_counter()
        self.arc_unbound = True

    def bind_arc_feedback(self) -> None:
        import atheris

        self.executor.set_arc_feedback(atheris._trace_branch, self.arc_base, ARC_COUNTERS)
        self.arc_unbound = False

    # -- one input --------------------------------------------------------------

    def test_one_input(self, data: bytes) -> None:
        if self.arc_unbound:
            self.bind_arc_feedback()
        self.current = data
        prog = decode(data, self.proto)
        finding = self.executor.run(prog)
        self.execs += 1
        if finding is not None:
            self.on_finding(data, prog, finding)
        if not self.execs & 255:
            self.tick()

    def on_finding(self, data: bytes, prog: Program, finding) -> None:
        sig = finding.signature()
        new = sig not in self.signatures
        self.signatures.add(sig)
        if new or not self.keep_going:
            from .executor import Executor

            tracer = Executor(self.target, trace=True)
            again = tracer.run(prog)
            trace = tracer.trace
            path = save_finding(self.crashes, data, prog, again or finding, trace, self.spec.text())
            self.findings += 1
            self.say(f"FINDING {finding.kind} at step {finding.step} ({finding.op}): expected "
                     f"{finding.expected}; observed {finding.observed} -> {path}")
            if self.report:
                self.report("finding", {"kind": finding.kind, "step": finding.step, "op": finding.op,
                                        "arc": finding.arc, "expected": finding.expected,
                                        "observed": finding.observed, "signature": sig,
                                        "file": str(path), "target": self.spec.text()})
        if not self.keep_going:
            self.finish()

    def on_hang(self, what: str, seconds: float) -> None:
        """A device call stuck in the kernel (called from the target's watchdog thread): write a
        hang finding for the current input and exit 1. The call cannot be interrupted, so the
        device is not touched again: no traced re-run, no close."""
        from .oracles import Finding
        from .program import format_op

        prog = decode(self.current, self.proto)
        step = self.executor.step
        op = format_op(self.proto, prog.ops[step]) if 0 <= step < len(prog.ops) else ""
        finding = Finding("hang", step, "the call returns",
                          f"{what} did not return within {seconds:.1f} s", self.executor.oracle.arc, op=op)
        path = save_finding(self.crashes, self.current, prog, finding, [], self.spec.text())
        self.findings += 1
        self.say(f"FINDING hang at step {finding.step} ({op}): {finding.observed} -> {path}")
        if self.report:
            self.report("finding", {"kind": "hang", "step": finding.step, "op": op, "arc": finding.arc,
                                    "expected": finding.expected, "observed": finding.observed,
                                    "signature": finding.signature(), "file": str(path), "target": self.spec.text()})
        self.target = None  # stuck: finish() must not close it
        self.finish()

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last_stats >= STATS_EVERY:
            self.stats_line(now)
        if (self.deadline is not None and now >= self.deadline) or (self.runs is not None and self.execs >= self.runs):
            self.finish()

    def arcs(self) -> int:
        """Distinct protocol arcs seen (as counter slots)."""
        return self.executor.arcs_seen.count(1) if self.executor is not None else 0

    def stats(self, now: float | None = None) -> dict:
        now = now or time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        cpu = max(time.process_time() - self.cpu_started, 1e-9)
        return {"execs": self.execs, "execs_per_s": round(self.execs / elapsed, 1),
                "execs_per_cpu_s": round(self.execs / cpu, 1), "arcs": self.arcs(),
                "findings": self.findings, "elapsed_s": round(elapsed, 1)}

    def stats_line(self, now: float | None = None) -> None:
        s = self.stats(now)
        self.last_stats = now or time.monotonic()
        self.say(f"stats: {s['elapsed_s']}s execs {s['execs']} ({s['execs_per_s']:.0f}/s, "
                 f"{s['execs_per_cpu_s']:.0f}/cpu-s) protocol arcs {s['arcs']} findings {s['findings']}")
        if self.report:
            self.report("stats", s)

    def say(self, text: str) -> None:
        print(f"migfuzz{'[' + self.label + ']' if self.label else ''}: {text}", file=self.out, flush=True)

    def finish(self) -> None:
        self.stats_line()
        if self.report is not None and hasattr(self.report, "close"):
            self.report.close(self.stats())
        if self.target is not None:
            try:
                self.target.close()
            except Exception as e:  # noqa: BLE001 - a broken device must not change the verdict
                self.say(f"closing the target failed: {type(e).__name__}: {e}")
        self.out.flush()
        os._exit(1 if self.findings else 0)

    # -- mutation -----------------------------------------------------------------

    def custom_mutator(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = self.rng
        rng.seed(seed)
        if rng.random() < 0.2:
            return self.byte_mutate(data, max_size)  # arguments and payload bytes
        out = data
        for _ in range(1 + (rng.random() < 0.3)):
            out = self.mutate_bytes(self.proto, out, rng)
        return out[:max_size]

    def custom_crossover(self, data1: bytes, data2: bytes, max_out: int, seed: int) -> bytes:
        rng = self.rng
        rng.seed(seed)
        return self.crossover_bytes(data1, data2, rng)[:max_out]


def libfuzzer_args(corpus: Path, crashes: Path, max_time: float | None, seed: int, extra: list) -> list:
    # libFuzzer takes -seed=0 as "pick one at random": shift by one so every
    # --seed (0 included) names a reproducible campaign.
    args = [sys.argv[0], str(corpus), f"-max_len={MAX_LEN}", f"-seed={seed + 1}",
            f"-artifact_prefix={crashes}/libfuzzer-", "-print_final_stats=0", "-timeout=60",
            "-rss_limit_mb=4096", "-reload=5"]
    if max_time:
        args.append(f"-max_total_time={int(max_time) + 30}")  # backstop; the campaign stops itself
    return args + list(extra)


def run_campaign(spec: TargetSpec, corpus: Path, crashes: Path, max_time: float | None, runs: int | None,
                 seed: int, extra: list, keep_going: bool = False, instrument: str = "target",
                 report=None, label: str = "", seeds: bool = True) -> None:
    """Fuzz until the time or run budget is spent or a finding is made; never returns."""
    import atheris

    crashes.mkdir(parents=True, exist_ok=True)
    camp = Campaign(spec, crashes, max_time, runs, keep_going, seed, report=report)
    camp.label = label
    camp.load_target(instrument)
    camp.enable_arc_feedback()
    camp.enable_mutator()
    if seeds:
        nseeds = prepare_corpus(corpus, camp.proto)
    else:
        corpus.mkdir(parents=True, exist_ok=True)
        nseeds = 0
    camp.say(f"fuzzing {spec.text()} (protocol {camp.proto}); corpus {corpus} ({nseeds} seeds); "
             f"crashes -> {crashes}")
    atheris.Setup(libfuzzer_args(corpus, crashes, max_time, seed, extra), camp.test_one_input,
                  custom_mutator=camp.custom_mutator, custom_crossover=camp.custom_crossover)
    # Ctrl-C / SIGTERM end the campaign like its time budget does: final stats,
    # reports closed, target released, exit 1 if anything was found.  (Python's
    # handlers take precedence over libFuzzer's, which would exit 72.)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: camp.finish())
    atheris.Fuzz()

