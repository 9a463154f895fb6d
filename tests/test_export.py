"""Reproducer exports: the stand-alone Python and C reproducers run against every bug of the zoo
(buggy devices: reproduced; correct ones: not), the simulator script, the pytest regression, the CLI.

The C reproducers run through the MF_SHIM build of harness/runtime.c: their system calls go to a
simulated kernel (``shim_server.py``) hosting the simulator's devices. What a reproducer must
conclude comes from the finding's structured claim (``finding.check``) and the zoo table, never
from the exporter.
"""
from __future__ import annotations

import functools
import os
import random
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
from shim_server import ReproDevice, run_shimmed

from fuzz import cli, crashfile
from fuzz.codec import encode
from fuzz.engine import seed_programs
from fuzz.executor import Executor
from fuzz.export import (
    Export,
    c_header,
    c_program,
    program_data,
    pytest_regression,
    python_sim,
    python_standalone,
    replay_recorded,
)
from fuzz.findings import KIND_CHECKS, KINDS, Check, Finding, signature
from fuzz.mutator import mutate, random_program
from fuzz.program import OPS, Program, parse_program
from harness import runtime, uapi
from harness.runtime import EXIT_FINDING, EXIT_INCONCLUSIVE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from harness.sim import SimTarget
from harness.sim.bugs import BUGS, device_class
from harness.uapi import V1_SAVING

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_C = ROOT / "harness" / "runtime.c"
CFLAGS = ["-Wall", "-Werror"]
TIMEOUT = "0.5"  # seconds before a reproducer calls a device call hung
SEARCH = 3000  # candidate programs per bug, each also tried without its fault ops
DEVICES = ["7", "sim-dev0", "7", "sim-dev1"]  # the shim's group and device names (shim_server.GROUP)


def sim(name: str | None, proto: str | None = None) -> SimTarget:
    proto = BUGS[name].proto if name else proto
    return SimTarget(proto, 0x7, name)


def target_text(name: str) -> str:
    return f"sim:proto={BUGS[name].proto}" + (",flags=0x7" if BUGS[name].proto == "v2" else "") + f",bug={name}"


def expected_exits(finding: Finding) -> tuple[int, int]:
    """(on the buggy device, on a correct one), from the claim alone."""
    if finding.check.test is None:
        return EXIT_INCONCLUSIVE, EXIT_INCONCLUSIVE
    return EXIT_FINDING, EXIT_OK


def op_names(prog: Program, upto: int | None = None) -> list[str]:
    ops = prog.ops if upto is None else prog.ops[:upto + 1]
    return [OPS[prog.proto][op.code].name for op in ops]


def without_faults(prog: Program) -> Program:
    return Program(prog.proto, tuple(op for op in prog.ops if OPS[prog.proto][op.code].name != "fault"))


# Programs for the register, lifecycle and session variants, so that their search does not hang
# on what random programs happen to reach (corpus/seeds has none of these): config space past its
# end, RX after the FIFO ran empty, reopen of a stopped device, a resume whose header write fails,
# an empty resume session; pre-copy sizes after queued data, and a race at one interleaving.
EXTRA_PROGRAMS = {
    "v2": ("rdreg 0 region=7 off=0x40 size=8",
           "wrreg 0 region=0 off=0x0 size=1 value=0x41\nrdreg 0 region=0 off=0x0 size=1\n"
           "rdreg 0 region=0 off=0x0 size=1",
           "set 0 state=STOP\nreopen 0",
           "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=flip arg=31755\nset 1 state=RESUMING\n"
           "transfer 0 dst=1 seg=32\nset 1 state=RUNNING",
           "set 1 state=RESUMING\nset 1 state=STOP",
           # a stream whose FIFO tail index is set past the FIFO (checksum fixed up), loaded, then RX read
           "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=set off=227 width=1 value=38 fix=crc32 at=4\n"
           "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP\nrdreg 1 region=0 off=0x0 size=1",
           # PRECOPY_INFO after dirty pages were queued, then a read past what it announced
           "set 0 state=PRE_COPY\ndrain 0 fd=0\nactivity 0 seed=1\nread 0 fd=0 n=1\nprecopy 0 fd=0\nread 0 fd=0 n=64",
           # a FIFO head set in the stream, then a TX byte stored at it: the device's state (mtty #8)
           "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=set off=226 width=1 value=0x7c fix=none\n"
           "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP\n"
           "wrreg 1 region=0 off=0x0 size=1 value=0x41\nget 1",
           # a reset landing in a SET between PRE_COPY -> PRE_COPY_P2P and its commit (an interleaving)
           "set 0 state=PRE_COPY\nrace 0 x=set xarg=7 y=reset sched=4"),
    "v1": ("set 0 value=0b010\nreopen 0",),
}


def candidates(proto: str):
    """The seed programs, the extra programs, then mutated seeds and random programs (fixed
    seeds); each also without faults."""
    seeds = [p for _name, p in seed_programs(proto)]
    rng = random.Random(1)
    progs = iter(seeds)
    for prog in progs:
        yield without_faults(prog)
        yield prog
    for text in EXTRA_PROGRAMS[proto]:
        yield parse_program(f"migfuzz-program 1 {proto}\n{text}\n")
    for i in range(SEARCH):
        prog = mutate(rng.choice(seeds), rng, rng.choice(seeds)) if i % 2 else random_program(proto, rng)
        yield without_faults(prog)
        yield prog


@functools.cache
def zoo_case(name: str) -> tuple:
    """((program, finding) showing the bug, (program, finding) with no fault op up to the finding or None)."""
    bug = BUGS[name]
    executor = Executor(sim(name))
    first = None
    for prog in candidates(bug.proto):
        if not prog.ops:
            continue
        finding = executor.run(prog)
        if finding is None or finding.kind != bug.finding:
            continue
        prog = Program(prog.proto, prog.ops[:finding.step + 1])
        first = first or (prog, finding)
        if "fault" not in op_names(prog):
            return first, (prog, finding)
    assert first is not None, f"no program in the search shows {name}"
    return first, None


def run_python(script: Path, target: SimTarget) -> tuple[int, str]:
    """Run a stand-alone Python reproducer's main() on simulated devices, in a forked child (its
    watchdog ends the process on a hang): (exit code, output)."""
    ns = runpy.run_path(str(script), run_name="exported_reproducer")
    devices = [ReproDevice(target, i) for i in range(len(target.devices))]
    with tempfile.TemporaryFile("w+") as out:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 98
            try:
                sys.stdout = sys.stderr = out
                code = ns["main"](ns["ABI_SPEC"], ns["PROGRAM"], ns["CLAIM"], argv=["--timeout", TIMEOUT],
                                  devices=devices)
            except BaseException:  # noqa: BLE001 - reported through the output
                traceback.print_exc(file=out)
            finally:
                out.flush()
                os._exit(code)
        _pid, status = os.waitpid(pid, 0)
        out.seek(0)
        return os.waitstatus_to_exitcode(status), out.read()


def build(jobs: list[tuple[Path, list[str]]]) -> dict:
    """Compile (source, extra flags) pairs in parallel: source -> (returncode, output)."""
    results, running = {}, []
    pending = list(jobs)
    while pending or running:
        while pending and len(running) < (os.cpu_count() or 2) + 1:
            src, flags = pending.pop()
            cmd = ["cc", *CFLAGS, *flags, "-o", str(src.with_suffix("")), str(src)]
            running.append((src, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        src, proc = running.pop(0)
        out = proc.communicate()[0]
        results[src] = (proc.returncode, out)
    return results


@pytest.fixture(scope="module")
def cc():
    """The C compiler: missing is a failure, not a skip (the C reproducers must be checked)."""
    assert shutil.which("cc"), "no C compiler `cc`: the C runtime cannot be checked"
    return "cc"


# ----------------------------------------------------------------------------- the zoo: Python


@pytest.mark.parametrize("name", sorted(BUGS))
def test_python_reproducer_of_every_zoo_bug(name, tmp_path):
    (prog, finding), _ = zoo_case(name)
    assert finding.kind == BUGS[name].finding
    assert finding.check.test in KIND_CHECKS[finding.kind]
    script = tmp_path / "repro.py"
    script.write_text(python_standalone(Export(prog, finding, target_text(name))))
    on_bug, on_fix = expected_exits(finding)
    code, out = run_python(script, sim(name))
    assert code == on_bug, out
    if code == EXIT_FINDING:
        assert f"REPRODUCED: {finding.kind} at step {finding.step}" in out
    code, out = run_python(script, sim(None, BUGS[name].proto))
    assert code == on_fix, out


# ----------------------------------------------------------------------------- the zoo: C


@pytest.fixture(scope="module")
def zoo_c(cc, tmp_path_factory):
    """Every zoo bug's C reproducer built with -DMF_SHIM: name -> (binary, finding) or (None, cli message)."""
    folder = tmp_path_factory.mktemp("zoo-c")
    out, jobs = {}, []
    for name in sorted(BUGS):
        (prog, finding), fault_free = zoo_case(name)
        if fault_free is None:  # only programs with a fault op show it: the exporter must refuse
            crash = folder / f"{name}.txt"
            crash.write_text(crashfile.program_text(prog, target_text(name), finding))
            code, err = run_cli(["export", str(crash), "--c", str(folder / f"{name}.c")])
            out[name] = (None, code, err, prog, finding)
            continue
        prog, finding = fault_free
        src = folder / f"{name}.c"
        src.write_text(c_program(Export(prog, finding, target_text(name))))
        jobs.append((src, ["-DMF_SHIM"]))
        out[name] = (src.with_suffix(""), finding)
    for src, (code, text) in build(jobs).items():
        assert code == 0, f"{src.name} does not build:\n{text}"
    return out


def run_cli(argv) -> tuple[int, str]:
    err = tempfile.TemporaryFile("w+")
    saved, sys.stderr = sys.stderr, err
    try:
        code = cli.main(argv)
    finally:
        sys.stderr = saved
    err.seek(0)
    return code, err.read()


@pytest.mark.parametrize("name", sorted(BUGS))
def test_c_reproducer_of_every_zoo_bug(name, zoo_c):
    entry = zoo_c[name]
    if entry[0] is None:  # refused: which op, and why, in one line
        _, code, err, prog, finding = entry
        assert code == EXIT_USAGE
        step = op_names(prog).index("fault")
        assert err.count("\n") == 1 and f"step {step}" in err and "fault" in err and "simulator" in err, err
        return
    binary, finding = entry
    on_bug, on_fix = expected_exits(finding)
    code, out = run_shimmed(binary, sim(name).devices, ["-t", TIMEOUT, *DEVICES])
    assert code == on_bug, out
    if code == EXIT_FINDING:
        assert f"REPRODUCED: {finding.kind} at step {finding.step}" in out
    code, out = run_shimmed(binary, sim(None, BUGS[name].proto).devices, ["-t", TIMEOUT, *DEVICES])
    assert code == on_fix, out


def test_the_c_reproducers_cover_most_of_the_zoo(zoo_c):
    """Only bugs that need an injected fault (the simulator's) are out of the C runtime's reach."""
    refused = sorted(name for name, entry in zoo_c.items() if entry[0] is None)
    assert len(refused) <= 4, refused


# ----------------------------------------------------------------------------- registers and reopen, both runtimes

# (bug, program, claim): claims the fuzzer makes at steps the zoo's programs do not show, through
# the runtimes' register, reopen and v1 read-only paths.
REGISTER_CASES = [
    ("v1-pending-grows", "set 0 value=0b010\n" + "save 0\nrd 0 field=pending_bytes\n" * 2, "pending_grew"),  # bare read
    ("v1-readonly-field-writable", "set 0 value=0b010\nsave 0\nwr 0 field=data_size value=0x7", "value_changed"),
    ("v2-rx-uninitialized", "activity 0 seed=42\nrdreg 0 region=0 off=0x0 size=1", "not_entered"),  # activity: no RX
    ("v2-state-survives-reopen", "wrreg 0 region=0 off=0x7 size=1 value=0x33\nrdreg 0 region=0 off=0x7 size=1\n"
                                 "set 0 state=PRE_COPY\nread 0 fd=0 n=16\nreopen 0", "state_not"),
]


def _steps(out: str) -> list[str]:
    """A reproducer's output, fd numbers left out (the shim numbers its fds its own way)."""
    return [re.sub(r"fd \d+", "fd N", line) for line in out.splitlines()]


@pytest.mark.parametrize(("name", "text", "test"), REGISTER_CASES, ids=[case[0] for case in REGISTER_CASES])
def test_register_and_reopen_claims_replay_alike_in_python_and_c(name, text, test, cc, tmp_path):
    """Both reproducers of a hand-written program: the claim the fuzzer made, step by step the same
    output in Python and in C, 1 on the buggy device and 0 on a correct one; the C one opened
    through groups and through cdevs (its reopen gets the device fd again the same way)."""
    proto = BUGS[name].proto
    prog = parse_program(f"migfuzz-program 1 {proto}\n{text}\n")
    finding = Executor(sim(name)).run(prog)
    assert finding is not None and finding.kind == BUGS[name].finding and finding.check.test == test, finding
    assert finding.step == len(prog.ops) - 1
    ex = Export(prog, finding, target_text(name))
    script, src = tmp_path / "repro.py", tmp_path / "repro.c"
    script.write_text(python_standalone(ex))
    src.write_text(c_program(ex))
    assert build([(src, ["-DMF_SHIM"])])[src][0] == 0
    for bug, want in ((name, EXIT_FINDING), (None, EXIT_OK)):
        py_code, py_out = run_python(script, sim(bug, proto))
        assert py_code == want, py_out
        for args in (DEVICES, ["--cdev", "vfio0", "--cdev", "vfio1"]):
            c_code, c_out = run_shimmed(src.with_suffix(""), sim(bug, proto).devices, ["-t", TIMEOUT, *args])
            assert c_code == want, c_out
            assert _steps(c_out) == _steps(py_out)


POINTER = (0xFFFF888003A5C140).to_bytes(8, "little")  # a direct-map address


class V2StreamLeak(device_class("v2", None)):
    """Hands out a kernel pointer at bytes 3..10 of every stream it saves."""

    def read_file(self, f, n):
        start = f.pos
        err, chunk = super().read_file(f, n)
        out = bytearray(chunk)
        for i in range(max(0, 3 - start), min(len(out), 11 - start)):
            out[i] = POINTER[start + i - 3]
        return err, bytes(out)


class V1StreamLeak(device_class("v1", None)):
    """Hands out a kernel pointer at bytes 3..10 of every chunk it saves."""

    def read_window(self, at, size):
        err, data = super().read_window(at, size)
        if err or not self.state & V1_SAVING or len(data) < 11:
            return err, data
        return err, data[:3] + POINTER + data[11:]


def stream_leak_target(proto: str) -> SimTarget:
    target = sim(None, proto)
    target.devices = [V2StreamLeak(0x7, i + 1) if proto == "v2" else V1StreamLeak(i + 1) for i in range(2)]
    return target


# (protocol, program): the kernel address comes in the last op's stream bytes; the v2 read takes
# its 0xff top byte after an earlier read took its low bytes (a window across reads).
STREAM_LEAK_CASES = [
    ("v2", "set 0 state=STOP_COPY\nread 0 fd=0 n=5\nread 0 fd=0 n=16"),
    ("v2", "set 0 state=STOP_COPY\ndrain 0 fd=0"),
    ("v1", "set 0 value=0b010\nsave 0"),
    ("v1", "set 0 value=0b010\ndrain 0"),
]


@pytest.mark.parametrize(("proto", "text"), STREAM_LEAK_CASES)
def test_kernel_addresses_in_a_stream_reproduce_in_python_and_c(proto, text, cc, tmp_path):
    """A kernel address in data_fd or v1 window bytes (the oracle's stream check): both reproducers
    flag it where the fuzzer did, and drain on as the fuzzer would where it does not check streams."""
    prog = parse_program(f"migfuzz-program 1 {proto}\n{text}\n")
    finding = Executor(stream_leak_target(proto)).run(prog)
    assert finding is not None and (finding.kind, finding.check.test) == ("info-leak", "kernel_address"), finding
    assert finding.step == len(prog.ops) - 1
    ex = Export(prog, finding, f"sim:proto={proto}")
    script, src = tmp_path / "repro.py", tmp_path / "repro.c"
    script.write_text(python_standalone(ex))
    src.write_text(c_program(ex))
    assert build([(src, ["-DMF_SHIM"])])[src][0] == 0
    drained = set()
    for target, want in ((stream_leak_target(proto), EXIT_FINDING), (sim(None, proto), EXIT_OK)):
        py_code, py_out = run_python(script, target)
        assert py_code == want, py_out
        c_code, c_out = run_shimmed(src.with_suffix(""), target.devices, ["-t", TIMEOUT, *DEVICES])
        assert c_code == want, c_out
        assert _steps(c_out) == _steps(py_out)
        drained |= set(re.findall(r"(?:drain.*|captured) (\d+) bytes", py_out))
    assert len(drained) <= 1  # the leak ends no drain early


class Recording:
    """A simulated device that logs every call made on it: (device, method, arguments, answer)."""

    def __init__(self, dev, log: list, index: int):
        self._dev, self._log, self._index = dev, log, index

    def __getattr__(self, name):
        attr = getattr(self._dev, name)
        # the fuzzer's view of a simulator, and how it interleaves a race (the racing calls are logged)
        if not callable(attr) or name in ("digest", "restore_initial", "race"):
            return attr

        def call(*args):
            out = attr(*args)
            self._log.append((self._index, name, args, out))
            return out
        return call


def executor_calls(prog: Program, bug: str | None) -> tuple[list, Finding | None]:
    """The device calls the executor makes, less the guard-register reads its profile adds (a
    reproducer has no profile)."""
    target = sim(bug, prog.proto)
    log: list = []
    target.devices = [Recording(d, log, i) for i, d in enumerate(target.devices)]
    finding = Executor(target).run(prog)
    profile = target.profile

    def guard(region, off, size):
        regs = [profile.register(region, off + i) for i in range(size)]
        return next((r.guard[0] for r in regs if r is not None and r.read in ("data-out", "side-effect")
                     and r.guard is not None), None)

    def guard_read(c, nxt):
        return c[1] == "reg_read" and nxt[:2] == c[:2] and nxt[2][0] == c[2][0] and c[2][2] == 1 \
            and guard(*nxt[2]) == c[2][1]

    following = [*log[1:], (None, None)]
    # pci_region_size is what the oracle judges a register access by (REGION_INFO, read at open), no call;
    # holds_data_fd is the harness' own record of the data_fds it has open (a raced SET's), no call either
    return [c for i, c in enumerate(log) if c[1] not in ("pci_region_size", "holds_data_fd")
            and not guard_read(c, following[i])], finding


def replay_calls(prog: Program, bug: str | None, profile) -> list:
    """The device calls harness.runtime.Replay makes, less the register accesses the profile keeps
    the fuzzer away from (a reproducer makes them: it has no profile)."""
    target = sim(bug, prog.proto)
    log: list = []
    rep = runtime.Replay(runtime.Abi(uapi.runtime_abi()), prog.proto,
                         [Recording(d, log, i) for i, d in enumerate(target.devices)])
    for name, dev, args, _text in program_data(prog)["ops"]:
        rep.run_op(name, dev, args)

    def allowed(call):
        if call[1] not in ("reg_read", "reg_write"):
            return True
        region, off, what = call[2]
        size, role = (what, profile.read_role) if call[1] == "reg_read" else (len(what), profile.write_role)
        return profile.access(region, off, size) is not None and role(region, off) != "none"

    return [c for c in log if allowed(c)]


def test_the_python_runtime_makes_the_executors_device_calls():
    """Replay (the reproducers' runtime) and the executor call a device alike, op by op: the same
    methods with the same arguments in the same order, up to the finding; register, reopen and v1
    field programs among them."""
    rng = random.Random(3)
    progs = [(parse_program(f"migfuzz-program 1 {BUGS[b].proto}\n{text}\n"), b) for b, text, _ in REGISTER_CASES]
    for proto in ("v1", "v2"):
        progs += [(parse_program(f"migfuzz-program 1 {proto}\n{text}\n"), None) for text in EXTRA_PROGRAMS[proto]]
        progs += [(without_faults(random_program(proto, rng)), None) for _ in range(150)]
    profile = sim(None, "v2").profile
    for prog, bug in progs:
        made, finding = executor_calls(prog, bug)
        upto = Program(prog.proto, prog.ops[:finding.step + 1]) if finding else prog
        assert replay_calls(upto, bug, profile) == made, prog.text()


# ----------------------------------------------------------------------------- the C runtime on its own

SAMPLE_V2 = ("set 0 state=PRE_COPY\nprecopy 0 fd=0\nread 0 fd=0 n=64\nactivity 0 seed=7\ndrain 0 fd=0\n"
             "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=swap arg=3\nset 1 state=RESUMING\n"
             "transfer 0 dst=1 seg=1500\nwrite 1 fd=0 data=00ff\nseek 1 fd=0\nclose 1 fd=0\ndatasize 0\n"
             "feature 0 argsz=16 flags=0x20002\nget 1\nwrreg 0 region=0 off=0x7 size=1 value=0x5a\n"
             "rdreg 0 region=7 off=0x40 size=8\nreopen 1\nreset 0")
SAMPLE_V1 = ("set 0 value=0b011\nsave 0\nrd 0 field=pending_bytes\nset 0 value=0b010\ndrain 0\nrdwin 0 n=16\n"
             "set 1 value=0b100\ntransfer 0 dst=1 seg=7\nwrwin 1 data=0102\nwr 1 field=reserved value=0x1\n"
             "wr 0 field=data_size value=0x9\nset 1 value=0b000\nget 1\nwrreg 1 region=0 off=0x0 size=8 value=0x41\n"
             "rdreg 1 region=0 off=0x5 size=2\nreopen 0\nreset 0")
SAMPLE_ARGS = {"errno": 42, "longer_than": 64, "state_not": 2, "state_not_in": (1, 6), "not_entered": (3, (0, 0xC1))}


def sample(proto: str, kind: str = "accepted-invalid", test: str | None = "ok") -> Export:
    prog = parse_program(f"migfuzz-program 1 {proto}\n" + (SAMPLE_V2 if proto == "v2" else SAMPLE_V1) + "\n")
    step = len(prog.ops) - 1
    finding = Finding(kind, step, 'say "expected" */', "observed \\ text", "RUNNING -reset-> RUNNING", "reset 0",
                      check=Check(test, SAMPLE_ARGS.get(test)))
    return Export(prog, finding, "kernel:dev=sample")


def test_c_reproducers_of_every_finding_kind_build_with_warnings_as_errors(cc, tmp_path):
    """`cc -Wall -Werror -o repro repro.c` for one reproducer of every kind (protocols alternating);
    every other claim test of the kind, on both protocols, through the same front end (-fsyntax-only)."""
    jobs, checks = [], []
    for i, kind in enumerate(KINDS):
        for j, test in enumerate(kind.checks):
            for proto in ("v1", "v2"):
                src = tmp_path / f"{kind.name}-{test}-{proto}.c"
                src.write_text(c_program(sample(proto, kind.name, test)))
                (jobs if j == 0 and proto == ("v1", "v2")[i % 2] else checks).append(src)
    declared = {test for kind in KINDS for test in kind.checks}
    for test in sorted(set(runtime.CHECKS) - declared):  # a claim no kind declares: built all the same
        for proto in ("v1", "v2"):
            src = tmp_path / f"undeclared-{test}-{proto}.c"
            src.write_text(c_program(sample(proto, "info-leak", test)))
            checks.append(src)
    assert {src.name.split("-")[0] for src in jobs} >= {kind.name.split("-")[0] for kind in KINDS}
    for src, (code, out) in build([(src, []) for src in jobs]).items():
        assert code == 0, f"cc {' '.join(CFLAGS)} -o {src.stem} {src.name}:\n{out}"
    got = subprocess.run(["cc", *CFLAGS, "-fsyntax-only", *map(str, checks)], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr


def test_runtime_c_compiles_on_its_own_against_a_generated_header(cc, tmp_path):
    for proto in ("v1", "v2"):
        (tmp_path / "mf_generated.h").write_text(c_header(sample(proto)))
        got = subprocess.run(["cc", *CFLAGS, "-I", str(tmp_path), "-o", str(tmp_path / "rt"), str(RUNTIME_C)],
                             capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        got = subprocess.run([str(tmp_path / "rt"), "--help"], capture_output=True, text=True)
        assert got.returncode == EXIT_OK and "--cdev" in got.stdout


DRIVER = """
#include "mf_generated.h"
#define main mf_reproducer_main
#include "runtime.c"
#undef main

/* hex digits ("-": none) into out; how many bytes */
static size_t unhex(const char *hex, unsigned char *out)
{
	size_t i;

	for (i = 0; hex[0] != '-' && hex[2 * i]; i++) {
		unsigned int v;

		sscanf(hex + 2 * i, "%2x", &v);
		out[i] = (unsigned char)v;
	}
	return i;
}

static unsigned char *entered_set(const char *hex, mf_byteset set)
{
	unsigned char raw[256];
	size_t n = unhex(hex, raw);

	mf_add(set, raw, n);
	return set;
}

int main(void)
{
	char cmd[16], hex[8200], set[1024], idle[1024];
	unsigned long len, a, b, i, width, fix, at;
	long long value;

	while (scanf("%15s", cmd) == 1) {
		if (!strcmp(cmd, "seg") && scanf("%lu %lu", &len, &a) == 2) {
			struct mf_seg s;
			size_t left = len;

			mf_seg_init(&s, (uint32_t)a);
			while (left) {
				size_t n = mf_seg_next(&s, left);

				printf("%zu ", n);
				left -= n;
			}
		} else if (!strcmp(cmd, "mangle") &&
				scanf("%lu %lu %lu %lld %lu %lu %8199s", &a, &b, &width, &value, &fix, &at, hex) == 7) {
			struct mf_buf cap = { 0 };

			for (i = 0; hex[0] != '-' && hex[2 * i]; i++) {
				unsigned int v;
				unsigned char byte;

				sscanf(hex + 2 * i, "%2x", &v);
				byte = (unsigned char)v;
				mf_buf_insert(&cap, cap.len, &byte, 1);
			}
			mf_mangle(&cap, (int)a, (uint32_t)b, (uint32_t)width, value, (int)fix, (uint32_t)at);
			for (i = 0; i < cap.len; i++)
				printf("%02x", cap.p[i]);
			free(cap.p);
		} else if (!strcmp(cmd, "kaddr") && scanf("%8199s %1023s", hex, set) == 2) {
			unsigned char data[4096];
			mf_byteset entered = { 0 };
			size_t at[64], n = unhex(hex, data);
			int found = mf_kernel_addresses(data, n, entered_set(set, entered), at, 64);

			for (i = 0; i < (unsigned long)found && i < 64; i++) {
				uint64_t value = 0;
				int k;

				for (k = 7; k >= 0; k--)
					value = value << 8 | data[at[i] + (size_t)k];
				printf("%zu:%016llx ", at[i], (unsigned long long)value);
			}
		} else if (!strcmp(cmd, "notent") && scanf("%8199s %lu %1023s %1023s", hex, &a, set, idle) == 4) {
			unsigned char data[4096], raw[256];
			mf_byteset entered = { 0 };
			long long values[256];
			size_t n = unhex(hex, data), nidle = unhex(idle, raw);

			for (i = 0; i < nidle; i++)
				values[i] = raw[i];
			printf("%d", mf_not_entered(data, n, entered_set(set, entered), (long long)a, values, (int)nidle));
		}
		printf(".\\n");
	}
	return 0;
}
"""


def test_c_and_python_cut_and_damage_streams_identically(cc, tmp_path):
    """The C transport is the Python one: the same pieces for random segmentations (xorshift32
    seeded by seg), the same bytes after every kind of damage."""
    (tmp_path / "mf_generated.h").write_text(c_header(sample("v2")))
    (tmp_path / "driver.c").write_text(DRIVER)
    got = subprocess.run(["cc", *CFLAGS, "-I", str(tmp_path), "-I", str(RUNTIME_C.parent), "-o",
                          str(tmp_path / "driver"), str(tmp_path / "driver.c")], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    cases, want = [], []
    for seg in (0, 1, 16, 1023, runtime.SEG_RANDOM, 1025, 2000, 4660, 65535):
        for length in (1, 63, 64, 65, 1000):
            cases.append(f"seg {length} {seg}")
            want.append("".join(f"{len(p)} " for p in runtime.segments(bytes(length), seg)) + ".")
    rng = random.Random(5)
    for kind_index, kind in enumerate(runtime.MANGLE_KINDS):
        field = kind in runtime.FIELD_MANGLES
        for length in (0, 1, 15, 16, 17, 40, 100):
            for arg in (0, 1, 7, 255, rng.randrange(1 << 16)):
                for _ in range(12 if field else 1):  # a field change: widths, values, checksums
                    width, value = (rng.choice((1, 2, 4, 8)), rng.choice((0, 1, -1, -65536, 0x7F, 0xFFFF))) \
                        if field else (1, 0)
                    fix = rng.randrange(len(runtime.FIX_KINDS)) if field else 0
                    at = rng.choice((0, 1, 2, 4, 5, length, length + 1, 255)) if field else 0
                    data = bytearray(rng.randbytes(length))
                    cases.append(f"mangle {kind_index} {arg} {width} {value} {fix} {at} {data.hex() or '-'}")
                    runtime.mangle(data, kind, arg, width, value, runtime.FIX_KINDS[fix], at)
                    want.append(data.hex() + ".")
    out = subprocess.run([str(tmp_path / "driver")], input="\n".join(cases) + "\n", capture_output=True, text=True)
    assert out.returncode == 0
    for case, expected, line in zip(cases, want, out.stdout.splitlines(), strict=True):
        assert line == expected, case
    assert [len(p) for p in runtime.segments(bytes(200), 2000)] != [64] * 3 + [8]  # random, not fixed pieces


def kernel_address_cases() -> list[tuple[bytes, frozenset]]:
    """Byte strings around every kernel range's bounds, -errno and -1, windows at odd offsets and
    overlapping, 0xff-heavy random strings; each with no bytes entered, some, and 0xff entered."""
    le = lambda v: v.to_bytes(8, "little")  # noqa: E731
    datas = [b"", b"\xff" * 7, b"\xff" * 8, b"\xff" * 16, le(-22 & (1 << 64) - 1), b"\x01" + le(0xFFFF888003A5C140),
             le(0xFFFFFFFF81A2B3C4) + le(0xFFFF888000000000)[:5], b"\x00\x10\x00\x80\xff\xff\xff\xff\xff"]
    for lo, hi in runtime.KERNEL_RANGES:
        datas += [le(lo), le(hi), le(lo - 1), b"\x7f\x7f\x7f" + le(lo) + le(hi)]
        datas += [le(hi + 1)] if hi + 1 < 1 << 64 else []
    rng = random.Random(11)
    datas += [bytes(rng.choice((0xFF, 0xFF, 0x88, 0xC9, 0x80, rng.randrange(256))) for _ in range(rng.randrange(40)))
              for _ in range(60)]
    sets = (frozenset(), frozenset({0x41, 0x88, 0x00}), frozenset({0xFF}), frozenset(range(256)))
    return [(data, entered) for data in datas for entered in sets]


def test_c_and_python_decide_kernel_addresses_and_bytes_not_entered_alike(cc, tmp_path):
    """The C claim tests are the Python ones: the same kernel-address windows (ranges generated from
    harness.runtime.KERNEL_RANGES) and the same not_entered verdicts, byte string by byte string."""
    (tmp_path / "mf_generated.h").write_text(c_header(sample("v2")))
    (tmp_path / "driver.c").write_text(DRIVER)
    got = subprocess.run(["cc", *CFLAGS, "-I", str(tmp_path), "-I", str(RUNTIME_C.parent), "-o",
                          str(tmp_path / "driver"), str(tmp_path / "driver.c")], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr
    hexes = lambda values: bytes(sorted(values)).hex() or "-"  # noqa: E731
    cases, want = [], []
    for data, entered in kernel_address_cases():
        cases.append(f"kaddr {data.hex() or '-'} {hexes(entered)}")
        want.append("".join(f"{at}:{value:016x} " for at, value in runtime.kernel_addresses(data, entered)) + ".")
    found = sum(1 for w in want if w != ".")
    assert 20 < found < len(want) - 20  # both verdicts are well represented
    rng = random.Random(12)
    for _ in range(300):
        data = bytes(rng.choice((0, 0x41, 0xC1, rng.randrange(256))) for _ in range(rng.randrange(10)))
        entered = frozenset(rng.sample(range(256), rng.choice((0, 1, 3, 200))) + rng.sample(list(data), len(data) // 2))
        idle = tuple(rng.sample((0, 0xC1, 0xFF, rng.randrange(256)), rng.randrange(3)))
        index = rng.randrange(len(data) + 2)
        cases.append(f"notent {data.hex() or '-'} {index} {hexes(entered)} {hexes(idle)}")
        answer = {"err": 0, "data": data, "len": len(data), "entered": entered}
        want.append(f"{int(runtime.shows(('not_entered', (index, idle)), answer))}.")
    assert 30 < sum(w == "1." for w in want) < 270
    out = subprocess.run([str(tmp_path / "driver")], input="\n".join(cases) + "\n", capture_output=True, text=True)
    assert out.returncode == 0
    for case, expected, line in zip(cases, want, out.stdout.splitlines(), strict=True):
        assert line == expected, case


def test_c_reproducer_exit_codes_and_device_opening(cc, tmp_path):
    name = "v2-error-requestable"
    _python, (prog, finding) = zoo_case(name)
    src = tmp_path / "repro.c"
    src.write_text(c_program(Export(prog, finding, target_text(name))))
    assert build([(src, ["-DMF_SHIM"])])[src][0] == 0
    binary = src.with_suffix("")
    devices = sim(name).devices
    assert run_shimmed(binary, devices, [])[0] == EXIT_USAGE
    assert run_shimmed(binary, devices, ["7"])[0] == EXIT_USAGE
    assert run_shimmed(binary, devices, ["-t", "x", *DEVICES])[0] == EXIT_USAGE
    code, out = run_shimmed(binary, devices, ["7", "no-such-device", "7", "sim-dev1"])
    assert code == EXIT_UNAVAILABLE and "no-such-device" in out
    code, out = run_shimmed(binary, devices, ["8", "sim-dev0", "8", "sim-dev1"])
    assert code == EXIT_UNAVAILABLE and "/dev/vfio/8" in out
    assert run_shimmed(binary, sim("v1-accept-101").devices, DEVICES)[0] == EXIT_UNAVAILABLE  # a v1 device
    code, out = run_shimmed(binary, sim(name).devices, ["--cdev", "vfio0", "--cdev", "/dev/vfio/devices/vfio1"])
    assert code == EXIT_FINDING, out


# ----------------------------------------------------------------------------- the Python reproducer's file


def test_python_reproducer_is_the_runtime_plus_data(tmp_path):
    name = "v2-failed-arc-wrong-state"
    (prog, finding), _ = zoo_case(name)
    text = python_standalone(Export(prog, finding, target_text(name)))
    assert text.startswith("#!/usr/bin/env python3\n")
    assert (ROOT / "harness" / "runtime.py").read_text() in text
    script = tmp_path / "repro.py"
    script.write_text(text)
    ns = runpy.run_path(str(script), run_name="exported_reproducer")
    assert ns["ABI_SPEC"] == uapi.runtime_abi()
    assert ns["CLAIM"]["check"] == finding.check.data() and ns["CLAIM"]["step"] == finding.step
    assert ns["PROGRAM"]["proto"] == prog.proto and len(ns["PROGRAM"]["ops"]) == len(prog.ops)
    fault = next(op for op in ns["PROGRAM"]["ops"] if op[0] == "fault")
    assert isinstance(fault[2]["kind"], str) and set(fault[2]) == {"nth", "kind"}
    assert ns["__doc__"].startswith("migfuzz reproducer") and finding.kind in ns["__doc__"]
    assert ns["main"](ns["ABI_SPEC"], ns["PROGRAM"], ns["CLAIM"], argv=[]) == EXIT_USAGE
    assert ns["main"](ns["ABI_SPEC"], ns["PROGRAM"], ns["CLAIM"], argv=["999999", "x", "999999", "y"]) \
        == EXIT_UNAVAILABLE


# ----------------------------------------------------------------------------- the command


def save_crash(directory: Path, prog: Program, target: str) -> tuple[Path, Finding]:
    t = SimTarget(*_sim_args(target))
    executor = Executor(t, trace=True)
    finding = executor.run(prog)
    path, _warning = crashfile.save_finding(directory, encode(prog), prog, finding, executor.trace, target)
    return path, finding


def _sim_args(text: str) -> tuple:
    opts = dict(item.split("=") for item in text.split(":", 1)[1].split(","))
    return opts["proto"], int(opts.get("flags", "0x7"), 0), opts.get("bug")


ERROR_REQUESTABLE = "migfuzz-program 1 v2\nget 0\nset 0 state=STOP_COPY\nset 0 state=ERROR\nreset 0\n"


def test_export_of_a_simulator_crash(tmp_path):
    target = target_text("v2-error-requestable")
    crash, finding = save_crash(tmp_path / "crashes", parse_program(ERROR_REQUESTABLE), target)
    out = tmp_path / "out"
    code, err = run_cli(["export", str(crash), "--python", str(out / "sim.py"), "--c", str(out / "repro.c"),
                         "--pytest", str(out / "test_regression.py")])
    assert code == EXIT_OK, err
    assert "accepted-invalid at step 2" in err and err.count("\n") == 1
    assert os.access(out / "sim.py", os.X_OK)
    text = (out / "sim.py").read_text()
    assert str(ROOT) not in text and len(text.splitlines()) < 80
    ns = runpy.run_path(str(out / "sim.py"), run_name="exported_reproducer")
    assert ns["main"]() == EXIT_FINDING
    assert "#define MF_CLAIM_CHECK MF_CHECK_OK" in (out / "repro.c").read_text()
    # the simulator reproducer's body: same finding 1, none 0, a different one 4
    recorded = signature(finding, coarse=True)
    assert replay_recorded(ns["PROGRAM"], target, recorded, out=lambda text: None) == EXIT_FINDING
    assert replay_recorded(ns["PROGRAM"], "sim:proto=v2", recorded, out=lambda text: None) == EXIT_OK
    assert replay_recorded(ns["PROGRAM"], "sim:proto=v2,bug=v2-reset-not-running", recorded,
                           out=lambda text: None) == EXIT_INCONCLUSIVE
    assert replay_recorded(ns["PROGRAM"], "sim:proto=v3", recorded, out=lambda text: None) == EXIT_USAGE


def test_the_simulator_reproducer_names_a_missing_dependency(tmp_path):
    name = "v2-error-requestable"
    (prog, finding), _ = zoo_case(name)
    script = tmp_path / "sim.py"
    script.write_text(python_sim(Export(prog, finding, target_text(name))))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = "import runpy, sys; sys.modules['construct'] = None; runpy.run_path(sys.argv[1], run_name='__main__')"
    got = subprocess.run([sys.executable, "-c", run, str(script)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert got.returncode == EXIT_USAGE
    assert "construct" in got.stderr and "cannot import migfuzz" not in got.stderr, got.stderr


def test_pytest_regression_fails_while_the_bug_is_there(tmp_path, monkeypatch):
    name = "v2-error-requestable"
    (prog, finding), _ = zoo_case(name)
    path = tmp_path / "test_regression.py"
    path.write_text(pytest_regression(Export(prog, finding, target_text(name))))
    tests = [f for n, f in runpy.run_path(str(path)).items() if n.startswith("test_")]
    assert len(tests) == 1
    with pytest.raises(AssertionError, match="accepted-invalid"):
        tests[0]()
    monkeypatch.setenv("MIGFUZZ_REGRESSION_TARGET", "sim:proto=v2")
    tests[0]()  # fixed: passes
    monkeypatch.setenv("MIGFUZZ_REGRESSION_TARGET", "kernel:dev=00000000-0000-0000-0000-0000000000ff")
    with pytest.raises(pytest.skip.Exception):
        tests[0]()


def test_a_real_device_crash_is_exported_from_its_record_without_opening_the_device(tmp_path):
    """The claim is the recorded check, whatever the expected/observed texts say."""
    prog = parse_program("migfuzz-program 1 v2\nset 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\n")
    finding = Finding("stream-protocol", 1, "zzz", "ENOMSG? no: ENODEV", "STOP_COPY -drain->", "drain 0 fd=0",
                      check=Check("errno", 42))
    crash = tmp_path / "crash.txt"
    crash.write_text(crashfile.program_text(prog, "kernel:dev=00000000-0000-0000-0000-0000000000ff", finding))
    code, err = run_cli(["export", str(crash), "--python", str(tmp_path / "r.py"), "--c", str(tmp_path / "r.c")])
    assert code == EXIT_OK, err
    ns = runpy.run_path(str(tmp_path / "r.py"), run_name="exported_reproducer")
    assert ns["CLAIM"]["check"] == ["errno", 42]
    assert len(ns["PROGRAM"]["ops"]) == 2 and ns["PROGRAM"]["devices"] == 1  # nothing after the finding runs
    c_text = (tmp_path / "r.c").read_text()
    assert "#define MF_CLAIM_CHECK MF_CHECK_ERRNO" in c_text and "#define MF_CLAIM_ARG 42LL" in c_text
    assert "#define MF_NDEVICES 1" in c_text and "#define MF_NOPS 2" in c_text
    assert run_cli(["export", str(crash), "--pytest", str(tmp_path / "t.py"), "--minimize"])[0] == EXIT_USAGE


def test_no_finding_means_no_reproducer(tmp_path):
    path = tmp_path / "prog.txt"
    path.write_text("migfuzz-program 1 v2\nget 0\n")
    code, err = run_cli(["export", str(path), "--python", str(tmp_path / "r.py")])
    assert code == EXIT_USAGE and "no finding" in err
    assert run_cli(["export", str(path), "--c", str(tmp_path / "r.c")])[0] == EXIT_USAGE
    assert run_cli(["export", str(path)])[0] == EXIT_USAGE
    assert run_cli(["export", str(tmp_path / "missing.txt"), "--pytest", str(tmp_path / "t.py")])[0] == EXIT_USAGE
    assert run_cli(["export", str(path), "--pytest", str(tmp_path / "t.py")])[0] == EXIT_OK
    tests = [f for n, f in runpy.run_path(str(tmp_path / "t.py")).items() if n.startswith("test_")]
    tests[0]()
    assert not (tmp_path / "r.py").exists() and not (tmp_path / "r.c").exists()


def test_export_minimizes_on_the_simulator(tmp_path):
    name = "v2-precopy-info-in-stopcopy"
    prog = parse_program("migfuzz-program 1 v2\nget 0\ndatasize 0\nset 0 state=STOP_COPY\nget 1\n"
                         "activity 1 seed=3\nprecopy 0 fd=0\n")
    crash, finding = save_crash(tmp_path, prog, target_text(name))
    code, err = run_cli(["export", str(crash), "--minimize", "--python", str(tmp_path / "r.py"), "--standalone"])
    assert code == EXIT_OK, err
    ns = runpy.run_path(str(tmp_path / "r.py"), run_name="exported_reproducer")
    assert [op[0] for op in ns["PROGRAM"]["ops"]] == ["set", "precopy"]
    assert ns["CLAIM"]["kind"] == finding.kind and ns["CLAIM"]["check"] == ["ok", None]


# ----------------------------------------------------------------------------- races, both runtimes

# Races of every call before the one that shows v2-reset-not-deferred (a reset between an arc and
# its commit); the v1 program races device_state writes against a reset (serial on every device).
RACE_PROGRAMS = {
    "v2": ("set 0 state=STOP_COPY\nrace 0 x=read y=get sched=2\nrace 0 x=set xarg=1 y=close sched=3\n"
           "set 1 state=RESUMING\nrace 1 x=write y=reset sched=2 data=0011\nrace 1 x=reopen y=set yarg=4 sched=1\n"
           "race 1 x=precopy y=set yarg=3 sched=0\nset 0 state=PRE_COPY\nread 0 fd=0 n=16\n"
           "race 0 x=set xarg=7 y=reset sched=4"),
    "v1": "set 0 value=0b011\nrace 0 x=set xarg=2 y=reset sched=1\nrace 0 x=get y=set yarg=4 sched=0",
}


@pytest.mark.parametrize("proto", sorted(RACE_PROGRAMS))
def test_races_replay_alike_in_python_and_c(proto, cc, tmp_path):
    """A race's claim (its outcome fits no serial order) reproduces in both runtimes: the Python one
    on the simulator's interleaving, the C one with two pthreads whose calls the shim pairs at the
    race's schedule; step by step the same output, 1 on the variant and 0 on a correct device."""
    prog = parse_program(f"migfuzz-program 1 {proto}\n{RACE_PROGRAMS[proto]}\n")
    bug = "v2-reset-not-deferred" if proto == "v2" else None
    finding = Executor(sim(bug, proto)).run(prog)
    if bug is None:  # v1: no variant; a claim the last race shows (no outcome is 0) checks the replays alike
        assert finding is None
        finding = Finding("race-not-serializable", len(prog.ops) - 1, "-", "-", "RUNNING -race:get+set->",
                          "race 0", check=Check("race_outcome_not_in", (0,)))
    else:
        assert (finding.kind, finding.step, finding.check.test) == ("race-not-serializable", len(prog.ops) - 1,
                                                                    "race_outcome_not_in"), finding
    ex = Export(prog, finding, target_text(bug) if bug else "sim:proto=v1")
    script, src = tmp_path / "repro.py", tmp_path / "repro.c"
    script.write_text(python_standalone(ex))
    src.write_text(c_program(ex))
    assert build([(src, ["-DMF_SHIM"])])[src][0] == 0
    for variant, want in ((bug, EXIT_FINDING), (None, EXIT_OK)) if bug else ((None, EXIT_FINDING),):
        py_code, py_out = run_python(script, sim(variant, proto))
        assert py_code == want, py_out
        assert py_out.count("race: ") == RACE_PROGRAMS[proto].count("race ")
        for args in (DEVICES, ["--cdev", "vfio0", "--cdev", "vfio1"]):
            c_code, c_out = run_shimmed(src.with_suffix(""), sim(variant, proto).devices, ["-t", TIMEOUT, *args])
            assert c_code == want, c_out
            assert _steps(c_out) == _steps(py_out)
