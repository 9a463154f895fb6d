"""Crash triage: signatures, the minimizer (every zoo variant), `minimize` and `triage`."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from fuzz import cli, crashfile
from fuzz.codec import encode
from fuzz.executor import Executor
from fuzz.findings import Finding, coarse_arc, harness_frames, signature
from fuzz.minimize import minimize_program
from fuzz.mutator import random_op
from fuzz.program import Program, parse_program
from fuzz.targets import open_target, parse_target
from fuzz.triage import triage_dir
from harness.sim.bugs import BUGS

# A short hand-written trigger for every variant of the bug zoo.
TRIGGERS = {
    "v1-accept-101": "set 0 value=0b101",
    "v1-accept-111": "set 0 value=0b111",
    "v1-error-writable": "set 0 value=0b110",
    "v1-resume-no-wipe": "set 0 value=0b010\ndrain 0\nset 1 value=0b100\ntransfer 0 dst=1 seg=0\nset 1 value=0b000\n"
                         "set 1 value=0b100\ntransfer 0 dst=1 seg=0\nset 1 value=0b000",
    "v1-deserialize-early": "set 0 value=0b010\ndrain 0\nset 1 value=0b100\ntransfer 0 dst=1 seg=0",
    "v1-stop-not-frozen": "set 0 value=0b000\nactivity 0 seed=1",
    "v1-pending-never-zero": "set 0 value=0b010\ndrain 0",
    "v1-data-offset-oob": "set 0 value=0b010\nsave 0",
    "v1-failed-write-third-state": "fault 0 nth=1 kind=nomem\nset 0 value=0b011",
    "v2-precopy-arc-hang": "set 0 state=STOP_COPY\nset 0 state=PRE_COPY",
    "v2-fd-after-reset": "set 0 state=STOP_COPY\nreset 0\nread 0 fd=0 n=1",
    "v2-resume-ignores-fpos": "set 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\ntransfer 0 dst=1 seg=16\n"
                              "set 1 state=STOP",
    "v2-save-field-swap": "set 0 state=STOP_COPY\ndrain 0 fd=0\nset 1 state=RESUMING\ntransfer 0 dst=1 seg=0\n"
                          "set 1 state=STOP",
    "v2-precopy-dirty-underreport": "set 0 state=PRE_COPY\ndrain 0 fd=0\nactivity 0 seed=1\nread 0 fd=0 n=1\n"
                                    "precopy 0 fd=0\nread 0 fd=0 n=64",
    "v2-reject-large-state": "set 0 state=PRE_COPY\nactivity 0 seed=1\nset 0 state=STOP_COPY\ndrain 0 fd=0\n"
                             "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0",
    "v2-reset-not-running": "reset 0",
    "v2-failed-arc-wrong-state": "fault 0 nth=1 kind=nomem\nset 0 state=STOP",
    "v2-fd-leak-on-error": "fault 0 nth=2 kind=nomem\nset 0 state=PRE_COPY",
    "v2-p2p-arc-missing": "set 0 state=RUNNING_P2P",
    "v2-stream-length-trusted": "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=extend arg=0\n"
                                "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP",
    "v2-enomsg-in-stopcopy": "set 0 state=STOP_COPY\ndrain 0 fd=0",
    "v2-fd-alive-after-session-end": "set 0 state=STOP_COPY\nset 0 state=STOP\nread 0 fd=0 n=1",
    "v2-precopy-info-in-stopcopy": "set 0 state=STOP_COPY\nprecopy 0 fd=0",
    "v2-error-requestable": "set 0 state=ERROR",
    "v2-errptr-on-alloc-failure": "fault 0 nth=2 kind=nomem\nset 0 state=PRE_COPY",
    "v2-resume-no-validate": "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=flip arg=100\n"
                             "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP",
    "v1-readonly-field-writable": "set 0 value=0b010\nwr 0 field=data_size value=0x5",
    "v1-pending-grows": "set 0 value=0b010\ndrain 0",
    "v2-state-survives-reopen": "set 0 state=STOP\nreopen 0",
    "v2-rx-uninitialized": "rdreg 0 region=0 off=0x0 size=1",
    "v2-config-oob-read": "rdreg 0 region=7 off=0x40 size=8",
    "v2-register-not-migrated": "wrreg 0 region=0 off=0x7 size=1 value=0x5a\nset 0 state=STOP_COPY\ndrain 0 fd=0\n"
                                "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP",
    "v2-failed-write-counted": "set 0 state=STOP_COPY\ndrain 0 fd=0\nmangle 0 kind=flip arg=8\n"
                               "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP",
    "v2-empty-session-loads": "set 1 state=RESUMING\nset 1 state=STOP",
    "v2-uart-tail-trusted": "set 0 state=STOP_COPY\ndrain 0 fd=0\n"
                            "mangle 0 kind=set off=227 width=1 value=0x30 fix=none\n"
                            "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP",
    "v2-uart-tail-trusted-crc": "set 0 state=STOP_COPY\ndrain 0 fd=0\n"
                                "mangle 0 kind=set off=227 width=1 value=0x30 fix=crc32 at=4\n"
                                "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP",
    "v2-fifo-tail-oob-read": "set 0 state=STOP_COPY\ndrain 0 fd=0\n"
                             "mangle 0 kind=set off=227 width=1 value=38 fix=none\n"
                             "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP\n"
                             "rdreg 1 region=0 off=0x0 size=1",
    "v2-fifo-head-oob-write": "set 0 state=STOP_COPY\ndrain 0 fd=0\n"
                              "mangle 0 kind=set off=226 width=1 value=0x7c fix=none\n"
                              "set 1 state=RESUMING\ntransfer 0 dst=1 seg=0\nset 1 state=STOP\n"
                              "wrreg 1 region=0 off=0x0 size=1 value=0x41\nget 1",
    "v2-reset-not-deferred": "set 0 state=PRE_COPY\nrace 0 x=set xarg=7 y=reset sched=4",
}


def bug_target(name: str) -> str:
    return f"sim:proto={BUGS[name].proto},bug={name}"


def trigger(name: str) -> Program:
    return parse_program(f"migfuzz-program 1 {BUGS[name].proto}\n{TRIGGERS[name]}\n")


def plant(prog: Program, target, seed: int, extra: int = 14) -> tuple[Program, str]:
    """The trigger with noise ops inserted anywhere, as long as the finding's signature stays."""
    rng = random.Random(seed)
    ex = Executor(target)
    want = signature(ex.run(prog))
    ops = list(prog.ops)
    for _ in range(600):
        if len(ops) >= len(prog.ops) + extra:
            break
        cand = list(ops)
        cand.insert(rng.randint(0, len(cand)), random_op(prog.proto, rng))
        cprog = Program(prog.proto, tuple(cand))
        got = ex.run(cprog)
        if got is not None and signature(got) == want:
            ops = cand
    return Program(prog.proto, tuple(ops)), want


# ----------------------------------------------------------------------------- signatures


TRACEBACK = '''Traceback (most recent call last):
  File "/src/migfuzz/fuzz/executor.py", line 96, in run
    outcome = handlers[op.code](op, view, self.devices[op.dev])
  File "/src/migfuzz/fuzz/executor.py", line 212, in v2_set
    err, fd = dev.set_state(new)
  File "/src/migfuzz/harness/sim/v2.py", line 155, in set_state
    err, file = self.step(cur, nxt)
  File "/src/migfuzz/harness/sim/v2.py", line 171, in step
    return getattr(self, "arc_" + action)()
  File "/src/migfuzz/harness/sim/v2.py", line 214, in arc_open_precopy
    f.writer = stream.StreamWriter(stream.FLAG_PRECOPY)
  File "/src/migfuzz/harness/sim/stream.py", line 20, in __init__
    raise ValueError("boom")
ValueError: boom
'''


def test_harness_frames_keeps_the_innermost_three_without_line_numbers():
    assert harness_frames(TRACEBACK) == ["harness/sim/v2.py:step", "harness/sim/v2.py:arc_open_precopy",
                                         "harness/sim/stream.py:__init__"]
    assert harness_frames("no traceback") == []


def test_signature_is_kind_arc_op_and_frames_for_exceptions():
    f = Finding("accepted-invalid", 1, "EINVAL", "success", "RUNNING -set-> ERROR", op="set 0 state=ERROR")
    assert signature(f) == "accepted-invalid|RUNNING -set-> ERROR|set"
    assert signature(f, coarse=True) == "accepted-invalid|-set-> ERROR|set"
    exc = Finding("target-exception", 1, "no exception", "ValueError: boom", "RUNNING -set-> PRE_COPY",
                  op="set 0 state=PRE_COPY", detail=TRACEBACK)
    assert signature(exc) == ("target-exception|RUNNING -set-> PRE_COPY|set|harness/sim/v2.py:step,"
                                    "harness/sim/v2.py:arc_open_precopy,harness/sim/stream.py:__init__")
    moved = exc._replace(detail=TRACEBACK.replace("line 214", "line 999"))
    assert signature(moved) == signature(exc)
    assert coarse_arc("STOP_COPY -transfer->") == "-transfer->"


def test_crash_header_round_trip(tmp_path):
    prog = trigger("v2-errptr-on-alloc-failure")
    target = open_target(parse_target(bug_target("v2-errptr-on-alloc-failure")))
    ex = Executor(target, trace=True)
    finding = ex.run(prog)
    path, _ = crashfile.save_finding(tmp_path, encode(prog), prog, finding, ex.trace,
                                     "sim:bug=v2-errptr-on-alloc-failure")
    meta = crashfile.read_meta(path)
    assert meta.finding == finding
    assert meta.target == "sim:bug=v2-errptr-on-alloc-failure"
    assert meta.signature == signature(finding)


# ----------------------------------------------------------------------------- the minimizer


@pytest.mark.parametrize("name", sorted(BUGS))
def test_trigger_catches_its_variant_and_not_the_correct_device(name):
    prog = trigger(name)
    finding = Executor(open_target(parse_target(bug_target(name)))).run(prog)
    assert finding is not None and finding.kind == BUGS[name].finding
    assert Executor(open_target(parse_target(f"sim:proto={BUGS[name].proto}"))).run(prog) is None


@pytest.mark.parametrize("name", sorted(BUGS))
def test_minimizing_a_planted_crash_gets_back_to_the_trigger(name):
    prog = trigger(name)
    target = open_target(parse_target(bug_target(name)))
    planted, want = plant(prog, target, seed=len(name))
    assert len(planted.ops) >= len(prog.ops) + 8
    result = minimize_program(target, planted, want)
    assert signature(result.finding) == want
    assert len(result.program.ops) <= len(prog.ops) + 2, result.program.text()
    again = minimize_program(open_target(parse_target(bug_target(name))), planted, want)
    assert again.program == result.program  # deterministic


def test_minimizer_simplifies_arguments():
    target = open_target(parse_target(bug_target("v2-fd-after-reset")))
    prog = parse_program("migfuzz-program 1 v2\nset 1 state=STOP_COPY\nreset 1\nread 1 fd=0 n=4096\n"
                         "write 1 fd=2 data=00112233445566778899\n")
    want = signature(Executor(target).run(prog))
    result = minimize_program(target, prog, want)
    # the read that shows the defect keeps its evidence: at least one byte asked for, not n=0
    assert result.program.text() == ("migfuzz-program 1 v2\nset 0 state=STOP_COPY\nreset 0\n"
                                     "read 0 fd=0 n=1\n")


# ----------------------------------------------------------------------------- commands


def write_crash(directory: Path, prog: Program, target_text: str) -> Path:
    target = open_target(parse_target(target_text))
    ex = Executor(target, trace=True)
    finding = ex.run(prog)
    assert finding is not None
    return crashfile.save_finding(directory, encode(prog), prog, finding, ex.trace, target.name)[0]


def test_minimize_command(tmp_path, capsys):
    name = "v2-save-field-swap"
    planted, want = plant(trigger(name), open_target(parse_target(bug_target(name))), seed=7)
    crash = write_crash(tmp_path / "crashes", planted, bug_target(name))
    out = tmp_path / "min.txt"
    assert cli.main(["minimize", str(crash), "-o", str(out)]) == 1  # target from the crash's .txt
    printed = capsys.readouterr().out
    prog = parse_program(printed)
    assert len(prog.ops) <= len(TRIGGERS[name].splitlines()) + 2
    assert parse_program(out.read_text()) == prog
    assert f"# signature: {want}" in printed
    binary = tmp_path / "min.bin"
    assert cli.main(["minimize", str(out), "--target", bug_target(name), "-o", str(binary)]) == 1
    assert crashfile.read_program(binary)[0] == prog
    capsys.readouterr()
    assert cli.main(["minimize", str(crash), "--target", "sim"]) == 0  # the correct device: nothing to do
    assert "does not reproduce" in capsys.readouterr().err
    assert cli.main(["minimize", str(tmp_path / "missing")]) == 2
    (tmp_path / "bad.txt").write_text("migfuzz-program 1 v2\nfly 0\n")
    assert cli.main(["minimize", str(tmp_path / "bad.txt")]) == 2


def test_triage_groups_many_crashes_of_one_bug_into_one_folder(tmp_path, capsys):
    crashes = tmp_path / "crashes"
    swap, swap_target = "v2-save-field-swap", bug_target("v2-save-field-swap")
    names = set()
    for seed in range(6):  # six different crash files, one defect (one signature)
        planted, want_swap = plant(trigger(swap), open_target(parse_target(swap_target)), seed=seed)
        names.add(write_crash(crashes, planted, swap_target).name)
    assert len(names) == 6
    reset, reset_target = "v2-reset-not-running", bug_target("v2-reset-not-running")
    for seed in range(2):
        planted, _ = plant(trigger(reset), open_target(parse_target(reset_target)), seed=100 + seed)
        write_crash(crashes, planted, reset_target)
    # a libFuzzer artifact (no .txt: needs --target) and a crash that no longer reproduces
    (crashes / "libfuzzer-crash-0001").write_bytes(encode(trigger(swap)))
    fixed = write_crash(crashes, trigger("v2-error-requestable"), bug_target("v2-error-requestable"))
    txt = fixed.with_suffix(".txt")
    txt.write_text(txt.read_text().replace("bug=v2-error-requestable", "bug=v2-p2p-arc-missing"))

    assert cli.main(["triage", str(crashes)]) == 1
    table = capsys.readouterr().out
    folders = sorted(p for p in (crashes / "triage").iterdir() if p.is_dir())
    assert len(folders) == 2, table
    swap_dir = next(p for p in folders if p.name.endswith("resume-corrupted"))
    desc = (swap_dir / "description").read_text()
    assert "count:       6" in desc and "duplicates:  5" in desc
    assert all(n in desc for n in names)
    assert sorted((swap_dir / "crashes").read_text().split()) == sorted(names)
    repro = parse_program((swap_dir / "repro.txt").read_text())
    assert len(repro.ops) <= len(TRIGGERS[swap].splitlines()) + 2
    assert crashfile.read_program(swap_dir / "repro.bin")[0] == repro
    again = Executor(open_target(parse_target(swap_target))).run(repro)
    assert signature(again) == want_swap
    assert "FINDING resume-corrupted" in (swap_dir / "trace.txt").read_text()
    assert "not reproduced: " + fixed.name in table
    assert "skipped: libfuzzer-crash-0001" in table  # no target for it
    assert "resume-corrupted" in table and "state-mismatch" in table

    # with --target every file is replayed on it, the libFuzzer artifact too
    result = triage_dir(crashes, tmp_path / "t2", swap_target, minimize=False)
    counts = sorted(len(g.members) for g in result.groups)
    assert counts == [7]  # six crashes + the artifact; the others show nothing on this variant


def test_triage_coarse_merges_the_arc_start_states(tmp_path):
    crashes = tmp_path / "crashes"
    target = bug_target("v2-error-requestable")
    for start in ("", "set 0 state=STOP\n", "set 0 state=STOP_COPY\n", "set 0 state=PRE_COPY\n"):
        write_crash(crashes, parse_program(f"migfuzz-program 1 v2\n{start}get 0\nset 0 state=ERROR\n"), target)
    strict = triage_dir(crashes, tmp_path / "strict", coarse=False)
    assert len(strict.groups) == 4
    coarse = triage_dir(crashes, tmp_path / "coarse", coarse=True)
    assert len(coarse.groups) == 1 and len(coarse.groups[0].members) == 4
    assert coarse.groups[0].result.program.text() == "migfuzz-program 1 v2\nset 0 state=ERROR\n"


def test_triage_output_is_replaced_not_merged(tmp_path, capsys):
    """--strict makes one folder per arc start state; a default triage into the same OUT afterwards
    leaves exactly its own folder, none of the strict run's."""
    crashes, out = tmp_path / "crashes", tmp_path / "OUT"
    target = bug_target("v2-error-requestable")
    for start in ("", "set 0 state=STOP\n", "set 0 state=STOP_COPY\n", "set 0 state=PRE_COPY\n"):
        write_crash(crashes, parse_program(f"migfuzz-program 1 v2\n{start}get 0\nset 0 state=ERROR\n"), target)
    assert cli.main(["triage", str(crashes), "--out", str(out), "--strict", "--no-minimize"]) == 1
    strict = sorted(p.name for p in out.iterdir())
    assert len([p for p in out.iterdir() if p.is_dir()]) == 4, strict
    assert cli.main(["triage", str(crashes), "--out", str(out), "--no-minimize"]) == 1
    capsys.readouterr()
    result = triage_dir(crashes, tmp_path / "fresh", minimize=False)  # what the default run alone writes
    fresh = sorted(p.name for p in (tmp_path / "fresh").iterdir())
    assert len(result.groups) == 1 and len([p for p in (tmp_path / "fresh").iterdir() if p.is_dir()]) == 1
    assert sorted(p.name for p in out.iterdir()) == fresh, (strict, fresh)


def test_triage_bad_input(tmp_path):
    assert cli.main(["triage", str(tmp_path / "nope")]) == 2
    assert cli.main(["triage", str(tmp_path), "--target", "bogus"]) == 2
    assert cli.main(["triage", str(tmp_path)]) == 0  # nothing to triage


def test_one_defect_one_folder_whatever_op_shows_it(tmp_path):
    """v2-fd-after-reset shows through read, drain and write on the stale data_fd, after pre-copy,
    stop-copy or resume: the oracle names the cause (a data_fd used after reset), so triage makes
    one folder, not one per op and state."""
    crashes = tmp_path / "crashes"
    target = bug_target("v2-fd-after-reset")
    for state, tail in (("PRE_COPY", "read 0 fd=0 n=16"), ("STOP_COPY", "drain 0 fd=0"),
                        ("STOP_COPY", "read 0 fd=0 n=7")):
        write_crash(crashes, parse_program(f"migfuzz-program 1 v2\nset 0 state={state}\nreset 0\n{tail}\n"), target)
    write_crash(crashes, parse_program("migfuzz-program 1 v2\nset 1 state=RESUMING\nreset 1\n"
                                       "write 1 fd=0 data=00\n"), target)
    first = triage_dir(crashes, tmp_path / "triage")
    assert len(first.groups) == 1 and len(first.groups[0].members) == 4
    assert first.groups[0].signature == "fd-misuse-accepted|after reset"
    # a second triage into the same folder replaces the first, it does not add to it
    (crashes / sorted(p.name for p in crashes.iterdir() if not p.name.endswith(".txt"))[0]).unlink()
    second = triage_dir(crashes, tmp_path / "triage")
    folders = [p for p in (tmp_path / "triage").iterdir() if p.is_dir()]
    assert len(second.groups) == 1 and len(folders) == 1
    # --strict keeps them apart
    assert len(triage_dir(crashes, tmp_path / "strict", coarse=False).groups) >= 3
