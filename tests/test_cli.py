"""The migfuzz command line (fuzz/cli.py): exit codes, messages, repro/show/compile/targets.

Exit codes: 0 nothing found / success, 1 finding, 2 usage or input error (one
clear line on stderr), 3 target unavailable.  Commands that never exit the
process are called in-process through ``fuzz.cli.main``; ``fuzz`` (which ends
the process itself) runs as a subprocess.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import cli, codec
from fuzz.program import parse_program
from harness.sim import BUGS

ROOT = Path(__file__).resolve().parent.parent
SEEDS_V1 = sorted((ROOT / "corpus" / "seeds" / "v1").glob("*.txt"))
SEEDS_V2 = sorted((ROOT / "corpus" / "seeds" / "v2").glob("*.txt"))


def run_main(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_cli(args, cwd, timeout=60):
    return subprocess.run([sys.executable, "-m", "fuzz.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def one_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("migfuzz: ")


def test_seeds_exist():
    assert len(SEEDS_V1) >= 3 and len(SEEDS_V2) >= 5


# ---------------------------------------------------------------------------
# bad --target
# ---------------------------------------------------------------------------

# (target, a program file of the protocol the spec names, words expected in the message)
BAD_TARGETS = [
    ("bogus", SEEDS_V2[0], "bogus"),
    ("sim:flags=0x2", SEEDS_V2[0], "0x2"),
    ("sim:flags=0x0", SEEDS_V2[0], "flags"),
    ("sim:flags=0x9", SEEDS_V2[0], "flags"),
    ("sim:flags=zz", SEEDS_V2[0], "zz"),
    ("sim:bug=nope", SEEDS_V2[0], "nope"),
    ("sim:bug=v1-accept-101", SEEDS_V2[0], "v1-accept-101"),
    ("sim:proto=v1,bug=v2-error-requestable", SEEDS_V1[0], "v2-error-requestable"),
    ("sim:proto=v3", SEEDS_V2[0], "v3"),
    ("sim:colour=red", SEEDS_V2[0], "colour"),
    ("sim:flags", SEEDS_V2[0], "flags"),
    ("kernel", SEEDS_V2[0], "dev"),
]


@pytest.mark.parametrize("target,prog,word", BAD_TARGETS)
def test_repro_bad_target(target, prog, word, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["repro", prog, "--target", target], capsys)
    assert rc == 2
    assert one_line(err), err
    assert word in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("target", ["bogus", "sim:flags=0x2", "sim:proto=v3", "kernel:dev=0000:00:00.0"])
def test_fuzz_bad_target_in_process(target, capsys, tmp_path, monkeypatch):
    # refused before any campaign starts (kernel: the reset confirmation is missing)
    monkeypatch.chdir(tmp_path)
    rc, _out, err = run_main(["fuzz", "--target", target, "--max-time", "1"], capsys)
    assert rc == 2
    assert one_line(err), err
    assert not (tmp_path / "crashes").exists() or not any((tmp_path / "crashes").iterdir())


@pytest.mark.parametrize("target", ["sim:flags=0x2", "sim:bug=nope", "sim:bug=v1-accept-101",
                                    "sim:proto=v1,bug=v2-error-requestable"])
def test_fuzz_bad_target_exit_code(target, tmp_path):
    r = run_cli(["fuzz", "--target", target, "--max-time", "1", "--corpus", "c", "--crashes", "k"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert any(line.startswith("migfuzz: ") for line in r.stderr.splitlines())
    k = tmp_path / "k"
    assert not k.exists() or not any(k.iterdir())


@pytest.mark.parametrize("target", ["sim:bug=nope", "sim:proto=v1,bug=v2-error-requestable"])
def test_fuzz_bad_bug_one_line_without_instrumentation(target, tmp_path):
    r = run_cli(["fuzz", "--target", target, "--max-time", "1", "--no-instrument", "--corpus", "c",
                 "--crashes", "k"], tmp_path)
    assert r.returncode == 2
    assert one_line(r.stderr), r.stderr


@pytest.mark.parametrize("target", ["sim:bug=nope", "sim:bug=v1-accept-101"])
def test_fuzz_bad_bug_one_line(target, tmp_path):
    r = run_cli(["fuzz", "--target", target, "--max-time", "1", "--corpus", "c", "--crashes", "k"], tmp_path)
    assert r.returncode == 2
    assert one_line(r.stderr), r.stderr


# ---------------------------------------------------------------------------
# bad files, bad programs, bad flags
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["repro"], ["show"], ["compile"], ["repro", "--target", "sim:proto=v1"]])
def test_missing_file(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main([command[0], tmp_path / "nope.bin", *command[1:]], capsys)
    assert rc == 2
    assert one_line(err), err
    assert "nope.bin" in err


def test_directory_is_not_a_program(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _out, err = run_main(["repro", tmp_path], capsys)
    assert rc == 2 and one_line(err)


BAD_TEXTS = [
    "migfuzz-program 1 v2\nset 0 state=BOGUS\n",
    "migfuzz-program 1 v2\nfrobnicate 0\n",
    "migfuzz-program 9 v2\nget 0\n",
    "migfuzz-program 1 v7\nget 0\n",
    "migfuzz-program 1 v2\n" + "get 0\n" * 49,
    "migfuzz-program 1 v2\nwrite 0 fd=0 data=zz\n",
    "migfuzz-program 1 v2\nset 5 state=STOP\n",
    b"migfuzz-program 1 v2\nget 0 \xff\xfe\n",
]


@pytest.mark.parametrize("text", BAD_TEXTS)
@pytest.mark.parametrize("command", ["repro", "show", "compile"])
def test_invalid_text_program(text, command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.txt"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    rc, out, err = run_main([command, path], capsys)
    assert rc == 2
    assert one_line(err), err
    assert "bad.txt" in err
    assert "Traceback" not in err


def test_program_of_the_other_protocol(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _out, err = run_main(["repro", SEEDS_V1[0], "--target", "sim"], capsys)
    assert rc == 2 and one_line(err) and "v1" in err
    rc, _out, err = run_main(["repro", SEEDS_V2[0], "--target", "sim:proto=v1"], capsys)
    assert rc == 2 and one_line(err) and "v2" in err


@pytest.mark.parametrize("argv", [["repro", "--bogus", "x"], ["show", "--proto", "v9", "x"], ["fuzz", "--runs", "many"],
                                  ["frobnicate"], [], ["repro"]])
def test_usage_errors_exit_2(argv, capsys):
    rc, _out, err = run_main(argv, capsys)
    assert rc == 2
    assert err.strip()


def test_unknown_flag_one_line(capsys):
    rc, _out, err = run_main(["repro", "--bogus", "x"], capsys)
    assert rc == 2
    assert one_line(err), err


def test_unknown_flag_subprocess(tmp_path):
    r = run_cli(["repro", "--bogus", "x"], tmp_path)
    assert r.returncode == 2
    assert "--bogus" in r.stderr and "Traceback" not in r.stderr


def test_help_exits_0(capsys):
    rc, out, _err = run_main(["--help"], capsys)
    assert rc == 0 and "repro" in out


# ---------------------------------------------------------------------------
# repro
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS_V2, ids=lambda p: p.name)
def test_repro_v2_seed(seed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prog = parse_program(seed.read_text())
    for target in ("sim", "sim:flags=0x1"):
        rc, out, err = run_main(["repro", seed, "--target", target], capsys)
        assert rc == 0, out + err
        lines = out.splitlines()
        assert lines[0].startswith("# target sim:proto=v2")
        assert lines[-1] == "no finding"
        assert out.count("verdict: ok") == len(prog.ops)
        for i in range(len(prog.ops)):
            assert f"[{i:2}] " in out
    assert "SET " in out or "read" in out or "reset" in out  # annotated with the device's answers


@pytest.mark.parametrize("seed", SEEDS_V1, ids=lambda p: p.name)
def test_repro_v1_seed(seed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prog = parse_program(seed.read_text())
    rc, out, _err = run_main(["repro", seed, "--target", "sim:proto=v1"], capsys)
    assert rc == 0, out
    assert out.count("verdict: ok") == len(prog.ops)
    assert "device_state" in out
    assert out.splitlines()[-1] == "no finding"


def test_repro_finding(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "err.txt"
    path.write_text("migfuzz-program 1 v2\nget 0\nset 0 state=ERROR\nget 0\n")
    rc, out, _err = run_main(["repro", path, "--target", "sim:bug=v2-error-requestable"], capsys)
    assert rc == 1
    assert "FINDING accepted-invalid at step 1" in out
    assert "[ 2]" not in out  # the trace stops at the finding
    # the same program on the correct simulator
    rc, out, _err = run_main(["repro", path, "--target", "sim"], capsys)
    assert rc == 0 and "no finding" in out


def test_repro_binary(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prog = parse_program("migfuzz-program 1 v1\nset 0 value=0b101\n")
    path = tmp_path / "crash-x"
    path.write_bytes(codec.encode(prog))
    rc, out, _err = run_main(["repro", path, "--target", "sim:proto=v1,bug=v1-accept-101"], capsys)
    assert rc == 1 and "FINDING accepted-invalid" in out
    rc, out, _err = run_main(["repro", path, "--target", "sim:proto=v1"], capsys)
    assert rc == 0


def test_repro_subprocess_exit_codes(tmp_path):
    r = run_cli(["repro", SEEDS_V2[0], "--target", "sim"], tmp_path)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "p.txt"
    bad.write_text("migfuzz-program 1 v2\nset 0 state=ERROR\n")
    r = run_cli(["repro", bad, "--target", "sim:bug=v2-error-requestable"], tmp_path)
    assert r.returncode == 1 and "FINDING accepted-invalid" in r.stdout


# ---------------------------------------------------------------------------
# show, compile, targets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS_V1 + SEEDS_V2, ids=lambda p: p.name)
def test_compile_and_show(seed, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prog = parse_program(seed.read_text())
    out_path = tmp_path / "prog.bin"
    rc, _out, _err = run_main(["compile", seed, "-o", out_path], capsys)
    assert rc == 0
    data = out_path.read_bytes()
    header = f"#migfuzz-binary 1 {prog.proto} \n".encode()  # self-describing: no --proto needed to read it
    assert data == header + codec.encode(prog)
    rc, out, _err = run_main(["show", out_path], capsys)
    assert rc == 0
    assert parse_program(out) == prog
    raw_path = tmp_path / "raw.bin"
    rc, _out, _err = run_main(["compile", seed, "--raw", "-o", raw_path], capsys)
    assert rc == 0 and raw_path.read_bytes() == codec.encode(prog)
    rc, out, err = run_main(["show", raw_path], capsys)
    assert rc == 2 and "--proto" in err  # a raw binary records no protocol
    rc, out, _err = run_main(["show", raw_path, "--proto", prog.proto], capsys)
    assert rc == 0 and parse_program(out) == prog


def test_compile_to_stdout(capsysbinary, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["compile", "--raw", str(SEEDS_V2[0])])
    out, _err = capsysbinary.readouterr()
    assert rc == 0
    assert out == codec.encode(parse_program(SEEDS_V2[0].read_text()))


def test_show_text_file_prints_canonical_text(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _err = run_main(["show", SEEDS_V2[0]], capsys)
    assert rc == 0
    assert parse_program(out) == parse_program(SEEDS_V2[0].read_text())


def test_targets_lists_every_bug(capsys):
    rc, out, _err = run_main(["targets"], capsys)
    assert rc == 0
    for name, bug in BUGS.items():
        assert name in out
        assert bug.finding in out
    assert "sim:proto=v1" in out


def test_repro_superscript_device_index_is_a_usage_error(tmp_path):
    path = tmp_path / "sup.txt"
    path.write_text("migfuzz-program 1 v2\nset \u00b2 state=STOP\n", encoding="utf-8")
    r = run_cli(["repro", path], tmp_path)
    assert r.returncode == 2
    assert one_line(r.stderr), r.stderr
