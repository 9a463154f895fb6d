"""The fuzzing engine: the one libFuzzer (atheris) driver, for the CLI and for ``fuzz_targets/``.

Feedback is code coverage of the simulator (``fuzz.instrumentation.instrument`` patches the
bytecode of every function of the modules in scope after they were imported, so nothing depends
on import order; which modules is decided here) plus protocol-state coverage: every (op, outcome, state after) the
executor reports lights one of ``ARC_COUNTERS`` counters reserved in libFuzzer's
coverage map, so a new protocol arc keeps an input even on a real device, which gives
no code coverage at all. All of it reaches libFuzzer through ``fuzz.feedback.HitTrail``: a set
insert per hit, the counters written once per program (not a call into atheris per basic block).

The mutator works on ops (``fuzz.mutator``) and falls back to libFuzzer's byte mutation
for arguments and payloads. A finding is written to the crash directory the moment it is
seen (``fuzz.crashfile``), before anything else can go wrong.

Two ways to end a finding: the CLI's campaign (:func:`run_campaign`) writes its own crash
files and exits 1 (or goes on with ``keep_going``); a libFuzzer entry point
(:class:`EntryPoint`, ClusterFuzzLite) raises :class:`MigfuzzFinding` so libFuzzer saves
the input itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import atheris

from harness.runtime import EXIT_FINDING, EXIT_OK

from . import crashfile, layout, mutator
from .codec import decode, encode
from .executor import Executor
from .feedback import HitTrail, libfuzzer_running
from .findings import Finding, signature
from .instrumentation import instrument
from .program import Program, format_op, op_filter, seed_programs, without_ops
from .targets import TargetSpec, open_target, parse_target

ARC_COUNTERS = 1 << 14
# Kernel coverage (KCOV, harness.kernel.kcov): one counter per distinct kernel PC (wrapping after
# this many) and per comparison feature.
KERNEL_PC_COUNTERS = 1 << 16
KERNEL_CMP_COUNTERS = 1 << 14
# Default input size bound: about 16 ops plus some payload.  Protocol bugs need
# short programs, and shorter programs run faster; `-- -max_len=N` overrides.
MAX_LEN = 1 + 16 * 8 + 64
STATS_EVERY = 5.0  # seconds between live stats lines
# The first line comes this soon after the first program: a guest kernel that a program panics in
# the campaign's first seconds (a debug kernel's sanitizers) still reports a rate and its coverage.
FIRST_STATS_AFTER = 1.0
BYTE_MUTATION = 0.2  # share of mutations left to libFuzzer's byte mutator; the others stack 1-3 steps of:
FIELD_EDITS = 0.2  # an inferred stream field set before a transfer (fuzz.layout, mutator.FieldEdits)
OP_GROUPS = 0.15  # a save, a resume or a whole migration inserted (mutator.OpGroups)
# (otherwise an op-level mutation: mutator.mutate_bytes)
GENERATE = 0.1  # share of inputs that are new random programs (what shallow defects fall to first) ...
GENERATE_EARLY = 0.5  # ... and in the first EARLY programs, while the corpus is young
EARLY = 2000
# What atheris instruments for code coverage, by --instrument level.
SIM_ZOO_MODULE = "harness.sim.bugs"
SIM_DEVICE_MODULES = ("harness.sim.v1", "harness.sim.v2")  # one device class per protocol
SIM_PACKAGE = "harness.sim"
INSTRUMENT_SCOPES = {
    "target": (SIM_PACKAGE,),
    "all": (SIM_PACKAGE, "fuzz.executor", "fuzz.oracles"),
    "none": (),
}
# Set by ``migfuzz fuzz --jobs N`` (fuzz.campaign.run_jobs) for each job: a file where the job's
# finish() writes its summary as JSON, for the parent's one combined summary (the job then prints
# only its "done:" line).
JOB_SUMMARY_ENV = "MIGFUZZ_JOB_SUMMARY"


# ----------------------------------------------------------------------------- seeds


def prepare_corpus(corpus: Path, proto: str) -> int:
    """Put the binary form of every seed into the corpus directory; returns how many seeds."""
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = seed_programs(proto)
    for _name, prog in seeds:
        data = encode(prog)
        path = corpus / hashlib.sha1(data).hexdigest()
        if not path.exists():
            path.write_bytes(data)
    return len(seeds)


# ----------------------------------------------------------------------------- instrumentation


def instrumented_modules(scope: str, target) -> tuple:
    """The module prefixes ``--instrument scope`` instruments for ``target``: the simulator only when
    it is the target (a real device runs none of its code; instrumenting it took ~10 s of every
    boot's start-up in the TCG guest)."""
    prefixes = INSTRUMENT_SCOPES[scope]
    if getattr(target, "kind", "") != "sim":
        prefixes = tuple(p for p in prefixes if p != SIM_PACKAGE)
    return prefixes


def unused_classes(target) -> frozenset:
    """The simulator classes a simulated target never runs: the other protocol's device, the bug
    zoo's variants but its own (instrumenting them would only cost start-up time)."""
    devices = getattr(target, "devices", ())
    if getattr(target, "kind", "") != "sim" or not devices:
        return frozenset()
    used = {c for d in devices for c in (*type(d).__mro__, *getattr(d, "uart_class", object).__mro__)}
    own = {c.__module__ for c in used} & set(SIM_DEVICE_MODULES)
    modules = [SIM_ZOO_MODULE] + [m for m in SIM_DEVICE_MODULES if own and m not in own]
    return frozenset(obj for name in modules if name in sys.modules for obj in vars(sys.modules[name]).values()
                     if isinstance(obj, type) and obj.__module__ == name and obj not in used)


# ----------------------------------------------------------------------------- a campaign


class MigfuzzFinding(Exception):
    """A VFIO migration protocol violation (raised in entry-point mode so libFuzzer saves the input)."""


class Campaign:
    """State of one fuzzing process."""

    def __init__(self, spec: TargetSpec, crashes: Path | None = None, max_time: float | None = None,
                 runs: int | None = None, keep_going: bool = False, seed: int = 0, out=sys.stderr, report=None,
                 label: str = "", known: set | None = None, raise_findings: bool = False):
        self.spec = spec
        self.crashes = crashes
        self.deadline = time.monotonic() + max_time if max_time else None
        self.runs = runs
        self.keep_going = keep_going
        self.rng = random.Random(seed)
        self.out = out
        self.report = report  # optional callback(kind, dict) for machine-readable output
        self.raise_findings = raise_findings
        self.execs = 0
        self.ops = 0  # ops of the programs run (their lengths differ: a rate in programs alone misleads)
        self.signatures: set = set()
        self.known = known or set()  # signatures of findings already on disk (a restarted campaign)
        self.findings: list[tuple[Finding, Path | None]] = []
        self.started = time.monotonic()
        self.cpu_started = time.process_time()
        # Rates count from the first program (set when it binds the feedback): start-up (the target,
        # instrumentation, the stream layout, libFuzzer reading the corpus) is not the loop's cost.
        self.loop_started, self.loop_cpu_started = self.started, self.cpu_started
        self.last_stats = self.started
        self.executor: Executor | None = None
        self.target = None
        self.proto = spec.proto
        self.current = b""
        self.label = label  # names this campaign's lines when several run side by side
        self.feedback_unbound = False  # set by enable_arc_feedback, cleared by the first input
        self.arc_base = 0
        self.trail = HitTrail()  # every counter hit of a program, folded into libFuzzer's at its end
        self.private_counters = None  # a benchmark without libFuzzer: counters that cost what libFuzzer's do
        self.kernel_coverage = None  # harness.kernel.kcov.KernelCoverage of a kernel target with KCOV
        self.kernel_base = 0
        self.tick_mask = 255  # look at the clock (budget, stats line) every tick_mask + 1 programs
        self.finished = False
        self.field_edits: mutator.FieldEdits | None = None  # from the target's stream layout
        self.disabled: frozenset = frozenset()  # --disable-ops: op and race-call names never run
        self.allowed: frozenset = frozenset()  # the op codes that do
        self.boundaries: layout.BoundaryCoverage | None = None  # fields loaded at a boundary value
        self.groups = mutator.OpGroups(spec.proto or "v2")
        self.scratch_log: Path | None = None  # libFuzzer's output, removed if nothing was found
        self.libfuzzer_log: Path | None = None  # where libFuzzer's output went (None: the terminal)
        self.corpus: Path | None = None  # for the summary's corpus size
        # libFuzzer's byte mutation; atheris.Fuzz() rebinds atheris.Mutate, so look it up per call
        self.byte_mutate = lambda data, max_size: atheris.Mutate(data, max_size)

    # -- setup ------------------------------------------------------------------

    def load_target(self, scope: str = "target") -> None:
        self.target = open_target(self.spec)
        instrument(instrumented_modules(scope, self.target), unused_classes(self.target))
        self.proto = self.target.proto
        self.executor = Executor(self.target)
        self.groups = mutator.OpGroups(self.proto, self.target.profile)
        if hasattr(self.target, "on_hang"):  # a real device (harness.kernel.target): its watchdog calls this
            self.target.on_hang = self.on_hang
            self.target.current_input = lambda: self.current  # for its flight recorder and KCOV
            self.tick_mask = 0  # a real device's program takes milliseconds: the clock every program

    def disable_ops(self, names) -> None:
        """Never run the ops ``names`` (and races with a call among them): they are dropped from every
        program after decoding (``fuzz.program.without_ops``). Raises ProgramError for an unknown name."""
        self.allowed = op_filter(self.proto, names)
        self.disabled = frozenset(names)

    def load_layout(self, corpus: Path | None) -> None:
        """The target's stream layout (kept in the corpus, else inferred now): field-aware mutations."""
        found = layout.for_target(self.target, self.spec.text(), corpus, oracle=self.executor.oracle)
        if found.fields:
            self.field_edits = mutator.FieldEdits(self.proto, found, self.groups)
            self.boundaries = layout.BoundaryCoverage(found, lambda f: mutator.boundary_values(
                f.width, f.values, found.size, found.dictionary))
        sums = ", ".join(f"{c.fix} at {c.at} from the end" for c in found.checksums) or "no checksum"
        self.say(f"stream layout: {found.size} bytes, {len(found.fields)} fields, {sums}"
                 + ("" if found.fields else " (no field-aware mutation)"))

    def enable_kernel_feedback(self) -> None:
        """Kernel coverage as feedback, when the target is a real device on a kernel with KCOV:
        counters reserved after the protocol arcs' (after enable_arc_feedback; bound with them, on
        the first input). Says once whether the kernel has KCOV."""
        enable = getattr(self.target, "enable_kernel_coverage", None)
        if enable is None:
            return
        description = enable()
        self.kernel_coverage = self.target.coverage
        if self.kernel_coverage is None:
            self.say(f"kernel coverage: off ({description}); feedback is protocol arcs only")
            return
        self.kernel_base = atheris._reserve_counter()
        for _ in range(KERNEL_PC_COUNTERS + KERNEL_CMP_COUNTERS - 1):
            atheris._reserve_counter()
        self.say(f"kernel coverage: {description}")

    def enable_arc_feedback(self) -> None:
        """Reserve one libFuzzer coverage counter per protocol-arc slot.

        The counters are bound to the executor on the first input (:meth:`bind_feedback`):
        atheris.Fuzz() replaces atheris._trace_branch with the live function, and the one
        seen before it starts records nothing."""
        self.arc_base = atheris._reserve_counter()
        for _ in range(ARC_COUNTERS - 1):
            atheris._reserve_counter()
        self.feedback_unbound = True

    def bind_feedback(self) -> None:
        """The first input: instrumented code, protocol arcs and kernel PCs report through the hit
        trail from now on, and the rates count from here."""
        self.loop_started, self.loop_cpu_started = time.monotonic(), time.process_time()
        self.last_stats = self.loop_started - STATS_EVERY + FIRST_STATS_AFTER
        hits = self.trail.bind(self.private_counters)
        if not self.trail.bound and libfuzzer_running():
            self.say("coverage: atheris' counter array not found (another atheris build?): every hit "
                     "is a call into atheris, slower")
        self.executor.set_arc_feedback(hits, self.arc_base, ARC_COUNTERS)
        if self.kernel_coverage is not None:
            self.kernel_coverage.bind(self.trail.hit, self.kernel_base, KERNEL_PC_COUNTERS,
                                      self.kernel_base + KERNEL_PC_COUNTERS, KERNEL_CMP_COUNTERS)
        self.feedback_unbound = False

    # -- one input --------------------------------------------------------------

    def test_one_input(self, data: bytes) -> None:
        if self.feedback_unbound:
            self.bind_feedback()
        prog = decode(data, self.proto)
        if self.disabled and (kept := without_ops(prog, self.allowed, self.disabled)) is not prog:
            prog = kept
            data = encode(kept)  # what ran: the crash file, the flight recorder and a hang say it
        self.current = data
        finding = self.executor.run(prog)
        self.ops += len(prog.ops)
        if self.kernel_coverage is not None:
            self.kernel_coverage.end_program()
        self.trail.flush()
        boundaries = self.boundaries
        if boundaries is not None:
            for stream, given in self.executor.oracle.given_streams:
                boundaries.note(stream, given)
        self.execs += 1
        if finding is not None:
            self.on_finding(data, prog, finding)
        if not self.execs & self.tick_mask or self.execs == self.runs:
            self.tick()

    def on_finding(self, data: bytes, prog: Program, finding: Finding) -> None:
        if self.raise_findings:
            raise MigfuzzFinding(
                f"{finding.kind} at step {finding.step} ({finding.op}): expected {finding.expected}; "
                f"observed {finding.observed} [arc {finding.arc}] on {self.spec.text()}\n"
                f"{finding.detail}{prog.text()}")
        sig = signature(finding, coarse=True)  # one defect, one crash file (triage's default grouping)
        new = sig not in self.signatures
        self.signatures.add(sig)
        if new or not self.keep_going:
            tracer = Executor(self.target, trace=True)  # the same devices: it starts from what they hold
            tracer.oracle.inherit(self.executor.oracle)
            again = tracer.run(prog)
            self.trail.discard()  # the replay's hits are not the next input's coverage
            self.executor.oracle.inherit(tracer.oracle)  # the replay may have gone further, or raced otherwise
            finding = again or finding
            path = self.save(data, prog, finding, tracer.trace)
            known = " (already known from an earlier run)" if sig in self.known else ""
            self.say(f"FINDING {finding.kind} at step {finding.step} ({finding.op}): expected "
                     f"{finding.expected}; observed {finding.observed}{known} -> {path}")
        if not self.keep_going:
            self.finish()

    def save(self, data: bytes, prog: Program, finding: Finding, trace) -> Path:
        path, warning = crashfile.save_finding(self.crashes, data, prog, finding, trace, self.spec.text())
        if warning:
            self.say(warning)
        self.findings.append((finding, path))
        if self.report:
            self.report("finding", dict(finding.data(), signature=signature(finding, coarse=True), file=str(path),
                                        target=self.spec.text(), known=signature(finding, coarse=True) in self.known))
        return path

    def on_hang(self, what: str, seconds: float) -> None:
        """A device call stuck in the kernel (called from the target's watchdog thread): write a
        hang finding for the current input and exit 1. The call cannot be interrupted, so the
        device is not touched again: no traced re-run, no close."""
        prog = decode(self.current, self.proto)
        step = self.executor.step
        op = format_op(self.proto, prog.ops[step]) if 0 <= step < len(prog.ops) else ""
        finding = self.executor.oracle.hang(f"{what} did not return within {seconds:.1f} s")
        finding = finding._replace(step=step, op=op)
        path = self.save(self.current, prog, finding, [])
        self.say(f"FINDING hang at step {finding.step} ({op}): {finding.observed} -> {path}")
        self.target = None  # stuck: finish() must not close it
        self.finish()

    def tick(self) -> None:
        now = time.monotonic()
        if (self.deadline is not None and now >= self.deadline) or (self.runs is not None and self.execs >= self.runs):
            self.finish()  # prints the final stats line itself
        if now - self.last_stats >= STATS_EVERY:
            self.stats_line(now)

    def arcs(self) -> int:
        """Distinct protocol arcs seen (as counter slots)."""
        return self.executor.arcs_seen.count(1) if self.executor is not None else 0

    def stats(self, now: float | None = None) -> dict:
        now = now or time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        looping = max(now - self.loop_started, 1e-9)
        cpu = max(time.process_time() - self.loop_cpu_started, 1e-9)
        out = {"execs": self.execs, "execs_per_s": round(self.execs / looping, 1),
               "execs_per_cpu_s": round(self.execs / cpu, 1), "arcs": self.arcs(),
               "findings": len(self.findings), "elapsed_s": round(elapsed, 1),
               "ops_per_program": round(self.ops / max(self.execs, 1), 1)}
        if self.kernel_coverage is not None:
            out.update(self.kernel_coverage.stats())  # kernel_pcs, kernel_pcs_vfio, kernel_pcs_driver
        if self.boundaries is not None:
            out["fields_at_boundary"], out["fields"] = self.boundaries.counts()
            # which ones, for the report: a campaign of several boots (migfuzz vm) counts their union
            out["fields_reached"] = self.boundaries.offsets(reached=True)
            out["fields_missed"] = self.boundaries.offsets(reached=False)
        return out

    def stats_line(self, now: float | None = None) -> None:
        s = self.stats(now)
        self.last_stats = now or time.monotonic()
        kernel = (f" kernel PCs {s['kernel_pcs']} (VFIO core {s['kernel_pcs_vfio']}, driver "
                  f"{s['kernel_pcs_driver']})" if "kernel_pcs" in s else "")
        fields = f" fields at a boundary {s['fields_at_boundary']}/{s['fields']}" if "fields" in s else ""
        self.say(f"stats: {s['elapsed_s']}s execs {s['execs']} ({s['execs_per_s']:.0f}/s, "
                 f"{s['execs_per_cpu_s']:.0f}/cpu-s) protocol arcs {s['arcs']} findings {s['findings']}{kernel}"
                 f"{fields} ops/program {s['ops_per_program']}")
        if self.report:
            self.report("stats", s)

    def say(self, text: str) -> None:
        print(f"migfuzz{'[' + self.label + ']' if self.label else ''}: {text}", file=self.out, flush=True)

    def finish(self) -> None:
        """End the campaign: final stats, a summary, reports closed, target released; exits."""
        if self.finished:
            os._exit(EXIT_FINDING if self.findings else EXIT_OK)
        self.finished = True
        self.stats_line()
        missed = self.boundaries.missed_line() if self.boundaries is not None else ""
        if missed:
            self.say(missed)
        new = [(f, p) for f, p in self.findings if signature(f, coarse=True) not in self.known]
        self.say(f"done: {self.execs} programs, {len(self.findings)} finding(s)"
                 + (f" ({len(self.findings) - len(new)} already known)" if len(new) < len(self.findings) else "")
                 + (f"; crash files in {self.crashes}" if self.findings else ""))
        if self.report is not None and hasattr(self.report, "close"):
            self.report.close(self.stats())
        log = self.libfuzzer_log
        if log is not None and log == self.scratch_log and not self.findings:
            with contextlib.suppress(OSError):
                log.unlink()  # a scratch log of a campaign that found nothing
            log = None
        job_summary = os.environ.get(JOB_SUMMARY_ENV)
        if job_summary:  # one of --jobs N: the parent prints the combined summary
            with contextlib.suppress(OSError):
                Path(job_summary).write_text(json.dumps(self.summary(log)))
        else:
            for line in summary_lines(self.summary(log)):
                self.say(line)
        if self.target is not None:
            try:
                self.target.close()
            except Exception as e:  # noqa: BLE001 - a broken device must not change the verdict
                self.say(f"closing the target failed: {type(e).__name__}: {e}")
        self.out.flush()
        sys.stdout.flush()
        os._exit(EXIT_FINDING if self.findings else EXIT_OK)

    def summary(self, log: Path | None) -> dict:
        """What the end-of-campaign summary says (:func:`summary_lines`), as plain data."""
        files = None
        if self.corpus is not None:
            with contextlib.suppress(OSError):
                files = sum(1 for p in self.corpus.iterdir() if p.is_file())
        reports = getattr(self.report, "dir", None)
        return {"execs": self.execs, "crashes": str(self.crashes),
                "findings": [{"kind": f.kind, "arc": f.arc, "op": f.op, "file": str(p),
                              "known": signature(f, coarse=True) in self.known} for f, p in self.findings],
                "corpus": str(self.corpus) if self.corpus is not None else None, "corpus_files": files,
                "reports": str(reports) if reports is not None else None,
                "libfuzzer_logs": [str(log)] if log is not None else []}

    # -- mutation -----------------------------------------------------------------

    # libFuzzer's per-call ``seed`` is not used: reseeding a Mersenne Twister costs ~5 us, as much
    # as a crossover itself. One stream, seeded by --seed, is as reproducible: libFuzzer calls the
    # mutators in an order its own -seed fixes.

    def custom_mutator(self, data: bytes, max_size: int, _seed: int) -> bytes:
        rng = self.rng
        if rng.random() < (GENERATE_EARLY if self.execs < EARLY else GENERATE):
            return encode(mutator.trim_payload(mutator.random_program(self.proto, rng)))[:max_size]
        if rng.random() < BYTE_MUTATION:
            return self.byte_mutate(data, max_size)  # arguments and payload bytes
        out = data
        edits = self.field_edits
        for _ in range(1 + (rng.random() < 0.5) + (rng.random() < 0.25)):  # stacked: a migration, then its edit
            r = rng.random()
            if r < FIELD_EDITS and edits is not None:
                out = edits.apply(out, rng) or out  # a program with no transfer is left as it is
            elif r < FIELD_EDITS + OP_GROUPS:
                out = self.groups.apply(out, rng)
            else:
                out = mutator.mutate_bytes(self.proto, out, rng)
        return out[:max_size]

    def custom_crossover(self, data1: bytes, data2: bytes, max_out: int, _seed: int) -> bytes:
        return mutator.crossover_bytes(data1, data2, self.rng)[:max_out]


def summary_lines(s: dict) -> list[str]:
    """The lines after "done:": one per finding (with its crash file), the corpus size, where the
    reports and libFuzzer's output went. ``s`` is :meth:`Campaign.summary` (or several merged)."""
    lines = [f"  {f['kind']}: {f['arc']} ({f['op']}) -> {f['file']}" for f in s["findings"]]
    if s.get("corpus"):
        size = "?" if s.get("corpus_files") is None else s["corpus_files"]
        lines.append(f"corpus: {size} files in {s['corpus']}")
    if s.get("reports"):
        lines.append(f"reports: {s['reports']} (migfuzz.jsonl, migfuzz.sarif, junit.xml)")
    for log in s.get("libfuzzer_logs", ()):
        lines.append(f"libFuzzer's output: {log}")
    return lines


def known_signatures(crashes: Path) -> set:
    """Signatures of the findings already in a crash directory (from their .txt data lines)."""
    out = set()
    if not crashes.is_dir():
        return out
    for path in crashfile.crash_files(crashes):
        meta = crashfile.read_meta(path)
        if meta.finding is not None:
            out.add(signature(meta.finding, coarse=True))
    return out


def libfuzzer_args(corpus: Path, crashes: Path, max_time: float | None, seed: int, extra: list) -> list:
    # libFuzzer takes -seed=0 as "pick one at random": shift by one so every
    # --seed (0 included) names a reproducible campaign.
    args = [sys.argv[0], str(corpus), f"-max_len={MAX_LEN}", f"-seed={seed + 1}",
            f"-artifact_prefix={crashes}/libfuzzer-", "-print_final_stats=0", "-timeout=60",
            "-rss_limit_mb=4096", "-reload=5"]
    if max_time:
        args.append(f"-max_total_time={int(max_time) + 30}")  # backstop; the campaign stops itself
    return args + list(extra)


def divert_libfuzzer_output(log: Path):
    """Send file descriptor 2 (where libFuzzer writes its ``#N NEW ...`` lines and its start-up
    warnings) to ``log``; returns a stream on the original stderr for migfuzz's own lines."""
    sys.stderr.flush()
    ours = os.fdopen(os.dup(2), "w", buffering=1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = ours
    return ours


def run_campaign(spec: TargetSpec, corpus: Path, crashes: Path, max_time: float | None, runs: int | None,
                 seed: int, extra: list, keep_going: bool = False, instrument_scope: str = "target",
                 report=None, label: str = "", seeds: bool = True, verbose: bool = False,
                 disabled_ops: frozenset = frozenset()) -> None:
    """Fuzz until the time or run budget is spent or a finding is made; never returns.

    libFuzzer's own output (its ``#N NEW`` lines and start-up warnings) goes to
    ``libfuzzer.log`` in the report directory, else to a file in the temporary directory that
    is removed when the campaign ends without a finding, unless ``verbose``."""
    crashes.mkdir(parents=True, exist_ok=True)
    camp = Campaign(spec, crashes, max_time, runs, keep_going, seed, report=report, label=label,
                    known=known_signatures(crashes))
    camp.load_target(instrument_scope)  # before libFuzzer's output is diverted: setup errors stay visible
    if disabled_ops:
        camp.disable_ops(disabled_ops)
        camp.say("ops never run (--disable-ops): " + ", ".join(sorted(disabled_ops)))
    log = None
    if not verbose:
        name = f"libfuzzer{'.' + label if label else ''}.log"
        log = Path(report.dir) / name if report is not None else \
            Path(tempfile.gettempdir()) / f"migfuzz-{os.getpid()}-{name}"
        camp.out = divert_libfuzzer_output(log)
    camp.scratch_log = log if report is None else None
    camp.libfuzzer_log = log
    camp.corpus = corpus
    # Ctrl-C / SIGTERM end the campaign like its time budget does: final stats,
    # reports closed, target released, exit 1 if anything was found.  (Python's
    # handlers take precedence over libFuzzer's, which would exit 72.)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: camp.finish())
    camp.enable_arc_feedback()
    camp.enable_kernel_feedback()
    nseeds = prepare_corpus(corpus, camp.proto) if seeds else 0
    corpus.mkdir(parents=True, exist_ok=True)
    camp.load_layout(corpus)
    camp.say(f"fuzzing {spec.text()} (protocol {camp.proto}); corpus {corpus} ({nseeds} seeds); "
             f"crashes -> {crashes}" + (f"; libFuzzer's output -> {log}" if log else ""))
    if camp.known:
        camp.say(f"{len(camp.known)} finding(s) already in {crashes} are known: seen again, they are said so")
    atheris.Setup(libfuzzer_args(corpus, crashes, max_time, seed, extra), camp.test_one_input,
                  custom_mutator=camp.custom_mutator, custom_crossover=camp.custom_crossover)
    atheris.Fuzz()


# ----------------------------------------------------------------------------- libFuzzer entry points


class EntryPoint:
    """A libFuzzer entry script (``fuzz_targets/*_fuzzer.py``): the same campaign, raising on a finding.

    ``MIGFUZZ_TARGET`` replaces the entry point's target; run without a corpus directory,
    the shipped seeds are fed in with ``-seed_inputs``."""

    def __init__(self, default_target: str):
        self.target_text = os.environ.get("MIGFUZZ_TARGET") or default_target
        self.campaign: Campaign | None = None

    def test_one_input(self, data: bytes) -> None:
        self.campaign.test_one_input(data)

    def seed_args(self, argv: list, proto: str) -> list:
        if any(not a.startswith("-") for a in argv[1:]) or any(a.startswith("-seed_inputs") for a in argv):
            return []
        seeds = [(name, encode(prog)) for name, prog in seed_programs(proto)]
        if not seeds:
            return []
        # libFuzzer reads -seed_inputs from files and then never returns to us to remove them: a
        # folder named by the seeds' content is shared by every run of the same seeds instead of
        # one left behind per process.
        digest = hashlib.sha256(repr(seeds).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"migfuzz-seeds-{proto}-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for name, data in seeds:
            path = folder / name
            if not path.is_file() or path.read_bytes() != data:
                tmp = folder / f".{name}.{os.getpid()}"
                tmp.write_bytes(data)
                os.replace(tmp, path)  # a run reading it sees the old file or the new, never a part
            files.append(str(path))
        return [f"-seed_inputs={','.join(files)}"]

    def main(self, argv: list) -> None:
        camp = self.campaign = Campaign(parse_target(self.target_text), raise_findings=True)
        camp.load_target("all")
        camp.enable_arc_feedback()
        camp.enable_kernel_feedback()
        camp.load_layout(None)
        argv = list(argv) + self.seed_args(argv, camp.proto)
        atheris.Setup(argv, camp.test_one_input, custom_mutator=camp.custom_mutator,
                      custom_crossover=camp.custom_crossover)
        atheris.Fuzz()
