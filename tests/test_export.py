"""Reproducer exports: the simulator script, the stand-alone Python and C reproducers, pytest."""
from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import cli
from fuzz.codec import encode
from fuzz.engine import save_finding
from fuzz.executor import Executor
from fuzz.export import FindingInfo, c_program, finding_check, python_standalone
from fuzz.program import OPS, Program, parse_program
from fuzz.targets import open_target, parse_target
from harness.sim.bugs import BUGS

ROOT = Path(__file__).resolve().parent.parent

# Short triggers (the full table is in test_triage.py).
TRIGGERS = {
    "v1-accept-101": "set 0 value=0b101",
    "v1-resume-no-wipe": "set 0 value=0b010\ndrain 0\nset 1 value=0b100\ntransfer 0 dst=1 seg=0\nset 1 value=0b000\n"
                         "set 1 value=0b100\ntransfer 0 dst=1 seg=0\nset 1 value=0b000",
    "v1-data-offset-oob": "set 0 value=0b010\nsave 0",
    "v1-failed-write-third-state": "fault 0 nth=1 kind=nomem\nset 0 value=0b011",
    "v1-pending-never-zero": "set 0 value=0b010\ndrain 0",
    "v2-precopy-arc-hang": "set 0 state=STOP_COPY\nset 0 state=PRE_COPY",
    "v2-fd-after-reset": "set 0 state=STOP_COPY\nreset 0\nread 0 fd=0 n=1",
    "v2-resume-ignores-fpos": "set 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\ntransfer 0 dst=1 seg=16\n"
                              "set 1 state=STOP",
    "v2-precopy-dirty-underreport": "set 0 state=PRE_COPY\ndrain 0 fd=0\nactivity 0 seed=1\nread 0 fd=0 n=1\n"
                                    "precopy 0 fd=0\nread 0 fd=0 n=64",
    "v2-reset-not-running": "reset 0",
    "v2-failed-arc-wrong-state": "fault 0 nth=1 kind=nomem\nset 0 state=STOP",
    "v2-p2p-arc-missing": "set 0 state=RUNNING_P2P",
    "v2-stream-length-trusted": "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=extend arg=0\n"
                                "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP",
    "v2-enomsg-in-stopcopy": "set 0 state=STOP_COPY\ndrain 0 fd=0",
    "v2-precopy-info-in-stopcopy": "set 0 state=STOP_COPY\nprecopy 0 fd=0",
    "v2-error-requestable": "set 0 state=ERROR",
    "v2-save-field-swap": "set 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\ntransfer 0 dst=1 seg=0\n"
                          "set 1 state=STOP",
}
HANGS = ("v1-pending-never-zero", "v2-precopy-arc-hang")  # the stand-alone script's watchdog exits the process

# Runs a stand-alone reproducer against simulated devices: what a real device would answer.
SIM_RUNNER = r'''
import runpy, sys, time
from fuzz.targets import open_target, parse_target
from harness.sim.core import DeviceHang

class Device:
    """A simulated device behind the reproducer's device interface; a hang blocks like a real one."""
    def __init__(self, target, index):
        self._target, self._index, self._dev = target, index, target.devices[index]
    def arm_fault(self, nth, kind):
        self._target.arm_fault(self._index, nth, kind)
    def __getattr__(self, name):
        attr = getattr(self._dev, name)
        if not callable(attr):
            return attr
        def call(*args):
            try:
                return attr(*args)
            except DeviceHang:
                time.sleep(600)
        return call

target = open_target(parse_target(sys.argv[2]))
target.fresh()
script = runpy.run_path(sys.argv[1])
sys.exit(script["main"](["--timeout", "1"], devices=[Device(target, i) for i in range(2)]))
'''


def bug_target(name: str) -> str:
    return f"sim:proto={BUGS[name].proto},bug={name}"


def trigger(name: str) -> Program:
    return parse_program(f"migfuzz-program 1 {BUGS[name].proto}\n{TRIGGERS[name]}\n")


def info_for(name: str, prog: Program) -> FindingInfo:
    finding = Executor(open_target(parse_target(bug_target(name)))).run(prog)
    return FindingInfo.from_finding(finding, prog)


def write_crash(directory: Path, prog: Program, target_text: str) -> Path:
    target = open_target(parse_target(target_text))
    ex = Executor(target, trace=True)
    finding = ex.run(prog)
    return save_finding(directory, encode(prog), prog, finding, ex.trace, target.name)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(kw.pop("env", {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, **kw)


# ----------------------------------------------------------------------------- Python, simulator


def test_python_reproducer_for_a_sim_finding_reproduces(tmp_path):
    crash = write_crash(tmp_path / "crashes", parse_program(
        "migfuzz-program 1 v2\nget 0\nset 0 state=STOP_COPY\nset 0 state=ERROR\nreset 0\n"), bug_target(
        "v2-error-requestable"))
    script = tmp_path / "repro.py"
    assert cli.main(["export", str(crash), "--python", str(script)]) == 0
    assert os.access(script, os.X_OK)
    got = run([sys.executable, str(script), "--migfuzz", str(ROOT)], cwd=tmp_path)
    assert got.returncode == 1, got.stdout + got.stderr
    assert "REPRODUCED: accepted-invalid|STOP_COPY -set-> ERROR|set" in got.stdout
    fixed = run([sys.executable, str(script), "--target", "sim"], cwd=tmp_path,
                env={"MIGFUZZ_SRC": str(ROOT)})
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "not reproduced" in fixed.stdout
    missing = run([sys.executable, "-S", str(script), "--migfuzz", str(tmp_path)], cwd=tmp_path,
                  env={"PYTHONPATH": ""})
    assert missing.returncode in (1, 2)  # without -S site the exported-from checkout is still found


# ----------------------------------------------------------------------------- Python, stand-alone


def test_standalone_python_uses_only_the_standard_library():
    prog = trigger("v2-fd-after-reset")
    text = python_standalone(prog, info_for("v2-fd-after-reset", prog), bug_target("v2-fd-after-reset"))
    imports = {line.split()[1] for line in text.splitlines() if line.startswith("import ")}
    assert imports <= {"argparse", "errno", "fcntl", "os", "random", "struct", "sys", "threading", "time",
                       "traceback"}
    assert "from " not in "\n".join(line for line in text.splitlines() if line.startswith("from "))
    assert "0x3b75" in text  # VFIO_DEVICE_FEATURE, _IO(';', 117), from harness.uapi
    compile(text, "repro.py", "exec")


@pytest.mark.parametrize("name", sorted(n for n in TRIGGERS if n not in HANGS))
def test_standalone_python_against_simulated_devices(name, tmp_path, capsys):
    prog = trigger(name)
    info = info_for(name, prog)
    script = tmp_path / "repro.py"
    script.write_text(python_standalone(prog, info, bug_target(name)))
    test, _ = finding_check(prog.proto, info.kind, info.expected)
    expect = (1, 0) if test is not None else (3, 3)
    for target_text, want in zip((bug_target(name), f"sim:proto={prog.proto}"), expect, strict=True):
        target = open_target(parse_target(target_text))
        target.fresh()
        devices = [_Adapter(target, i) for i in range(2)]
        code = runpy.run_path(str(script))["main"]([], devices=devices)
        out = capsys.readouterr().out
        assert code == want, f"{target_text}:\n{out}"


class _Adapter:
    def __init__(self, target, index):
        self._target, self._index, self._dev = target, index, target.devices[index]

    def arm_fault(self, nth, kind):
        self._target.arm_fault(self._index, nth, kind)

    def __getattr__(self, name):
        return getattr(self._dev, name)


@pytest.mark.parametrize("name", HANGS)
def test_standalone_python_reports_a_hang(name, tmp_path):
    prog = trigger(name)
    script = tmp_path / "repro.py"
    script.write_text(python_standalone(prog, info_for(name, prog), bug_target(name)))
    runner = tmp_path / "runner.py"
    runner.write_text(SIM_RUNNER)
    got = run([sys.executable, str(runner), str(script), bug_target(name)])
    assert got.returncode == 1, got.stdout + got.stderr
    assert "REPRODUCED: hang" in got.stdout
    fixed = run([sys.executable, str(runner), str(script), f"sim:proto={prog.proto}"])
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def test_standalone_python_setup_errors(tmp_path):
    prog = trigger("v2-resume-ignores-fpos")  # two devices
    script = tmp_path / "repro.py"
    script.write_text(python_standalone(prog, info_for("v2-resume-ignores-fpos", prog), "kernel:dev=x"))
    assert run([sys.executable, str(script)]).returncode == 2  # needs two devices
    got = run([sys.executable, str(script), "987654", "nodev", "987654", "nodev2"])
    assert got.returncode == 2 and "cannot open the device" in got.stderr


# ----------------------------------------------------------------------------- C


ARG_TEXT = {"bytes": "00ff", "fault": "nomem", "mangle": "flip", "v1field": "data_size"}


def every_op_program(proto: str) -> Program:
    """One op of every kind (so every generated call form is compiled)."""
    lines = []
    for spec in OPS[proto]:
        args = " ".join(f"{f.name}={ARG_TEXT.get(f.kind, '1')}" for f in spec.fields)
        lines.append(f"{spec.name} 0 {args}".strip())
    lines.append("set 0 state=ERROR" if proto == "v2" else "set 0 value=0b101")
    return parse_program(f"migfuzz-program 1 {proto}\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize("proto,bug", [("v2", "v2-error-requestable"), ("v1", "v1-accept-101")])
def test_standalone_python_runs_every_op(proto, bug, tmp_path, capsys):
    prog = every_op_program(proto)
    finding = Executor(open_target(parse_target(bug_target(bug)))).run(prog)
    script = tmp_path / "repro.py"
    script.write_text(python_standalone(prog, FindingInfo.from_finding(finding, prog), bug_target(bug)))
    for target_text, want in ((bug_target(bug), 1), (f"sim:proto={proto}", 0)):
        target = open_target(parse_target(target_text))
        target.fresh()
        code = runpy.run_path(str(script))["main"]([], devices=[_Adapter(target, i) for i in range(2)])
        out = capsys.readouterr().out
        assert code == want, out
        assert out.count("\n[") == len(prog.ops) - 1  # every op ran and printed its answer


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("proto,bug", [("v2", "v2-error-requestable"), ("v1", "v1-accept-101")])
def test_c_reproducer_compiles_with_wall_werror(proto, bug, tmp_path):
    prog = every_op_program(proto)
    finding = Executor(open_target(parse_target(bug_target(bug)))).run(prog)
    assert finding is not None and finding.step == len(prog.ops) - 1
    source = tmp_path / "repro.c"
    source.write_text(c_program(prog, FindingInfo.from_finding(finding, prog), bug_target(bug)))
    binary = tmp_path / "repro"
    got = subprocess.run(["cc", "-Wall", "-Werror", "-o", str(binary), str(source)], capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert "#include <linux/" not in source.read_text()
    usage = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage" in usage.stderr
    nodev = subprocess.run([str(binary), "987654", "nodev"], capture_output=True, text=True, timeout=30)
    assert nodev.returncode == 2


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_export_command(tmp_path):
    crash = write_crash(tmp_path / "crashes", trigger("v2-precopy-dirty-underreport"),
                        bug_target("v2-precopy-dirty-underreport"))
    source = tmp_path / "r.c"
    assert cli.main(["export", str(crash), "--c", str(source)]) == 0
    text = source.read_text()
    assert "r.precopy_overrun" in text and "FINDING_STEP 5" in text
    got = subprocess.run(["cc", "-Wall", "-Werror", "-fsyntax-only", str(source)], capture_output=True, text=True,
                         timeout=120)
    assert got.returncode == 0, got.stderr


# ----------------------------------------------------------------------------- pytest


def test_pytest_export_fails_on_the_bug_and_passes_when_fixed(tmp_path, monkeypatch):
    crash = write_crash(tmp_path / "crashes", trigger("v2-fd-after-reset"), bug_target("v2-fd-after-reset"))
    test_file = tmp_path / "regress" / "test_fd_after_reset.py"
    assert cli.main(["export", str(crash), "--pytest", str(test_file)]) == 0
    assert "set 0 state=STOP_COPY" in test_file.read_text()  # the program is inline
    buggy = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)], cwd=tmp_path)
    assert buggy.returncode == 1, buggy.stdout  # a real pytest file, failing while the bug is there
    assert "fd-misuse-accepted" in buggy.stdout

    def outcome(path: Path) -> str:
        tests = [f for name, f in runpy.run_path(str(path)).items() if name.startswith("test_")]
        assert len(tests) == 1
        try:
            tests[0]()
        except AssertionError:
            return "failed"
        return "passed"

    assert outcome(test_file) == "failed"
    monkeypatch.setenv("MIGFUZZ_REGRESSION_TARGET", "sim")  # the bug fixed
    assert outcome(test_file) == "passed"
    monkeypatch.delenv("MIGFUZZ_REGRESSION_TARGET")
    correct = tmp_path / "regress" / "test_on_correct.py"
    assert cli.main(["export", str(crash), "--target", "sim", "--pytest", str(correct)]) == 0
    assert outcome(correct) == "passed"


def test_export_usage_errors(tmp_path):
    crash = write_crash(tmp_path / "crashes", trigger("v2-error-requestable"), bug_target("v2-error-requestable"))
    assert cli.main(["export", str(crash)]) == 2  # no output named
    assert cli.main(["export", str(tmp_path / "missing"), "--c", str(tmp_path / "x.c")]) == 2
    assert cli.main(["export", str(crash), "--target", "sim", "--c", str(tmp_path / "x.c")]) == 2  # no finding
    assert cli.main(["export", str(crash), "--minimize", "--python", str(tmp_path / "m.py")]) == 0


def test_a_real_device_crash_is_exported_from_its_header_and_never_replayed(tmp_path, capsys):
    crash = write_crash(tmp_path / "crashes", trigger("v2-enomsg-in-stopcopy"), bug_target("v2-enomsg-in-stopcopy"))
    txt = crash.with_suffix(".txt")
    lines = txt.read_text().splitlines()
    lines = ["# target: kernel:dev=0000:00:01.0,group=7" if ln.startswith("# target:") else ln for ln in lines]
    txt.write_text("\n".join(lines) + "\n")
    script, source = tmp_path / "repro.py", tmp_path / "repro.c"
    assert cli.main(["export", str(crash), "--python", str(script), "--c", str(source)]) == 0
    text = script.read_text()
    assert "import fcntl" in text and "fuzz.executor" not in text  # stand-alone: a kernel target
    assert "'test': 'errno', 'arg': 42" in text  # ENOMSG at the drain
    compile(text, "repro.py", "exec")
    assert "r.err == ENOMSG" in source.read_text()
    capsys.readouterr()
    assert cli.main(["minimize", str(crash)]) == 2  # would reset the device: needs confirmation
    assert "--i-know-this-resets-the-device" in capsys.readouterr().err
    assert cli.main(["triage", str(tmp_path / "crashes")]) == 0
    assert "recorded on a real device" in capsys.readouterr().out
