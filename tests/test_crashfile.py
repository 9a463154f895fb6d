"""The crash-file format (fuzz/crashfile.py): durable writes, the three program forms, metadata as data."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fuzz import codec, crashfile
from fuzz.executor import Executor
from fuzz.findings import Check, Finding, signature
from fuzz.program import OPS, ProgramError, parse_program
from harness.sim import SimTarget

ROOT = Path(__file__).resolve().parent.parent


def _finding():
    return Finding("accepted-invalid", 0, "EINVAL", "success, state ERROR", "RUNNING -set-> ERROR",
                   op="set 0 state=ERROR", detail="Traceback: line 1\n  line 2\n", check=Check("ok"))


def test_save_finding_writes_both_files(tmp_path):
    prog = parse_program("migfuzz-program 1 v2\nset 0 state=ERROR\nget 0\n")
    data = codec.encode(prog)
    crashes = tmp_path / "deep" / "crashes"
    path, warning = crashfile.save_finding(crashes, data, prog, _finding(), [(0, "SET ERROR -> success")],
                                           "sim:proto=v2,flags=0x7")
    assert not warning
    assert path == crashes / f"crash-{hashlib.sha1(data).hexdigest()}"
    assert path.read_bytes() == data
    text = (crashes / (path.name + ".txt")).read_text()
    assert "# migfuzz finding: accepted-invalid" in text
    assert "#   [0] SET ERROR -> success" in text
    assert "#   Traceback: line 1" in text
    assert parse_program(text) == prog
    assert sorted(p.name for p in crashes.iterdir()) == [path.name, path.name + ".txt"]


def test_metadata_is_one_json_line_read_back_as_data(tmp_path):
    prog = parse_program("migfuzz-program 1 v1\nset 0 value=0b101\n")
    finding = _finding()._replace(check=Check("state_not_in", (1, 6)))
    path, _ = crashfile.save_finding(tmp_path, codec.encode(prog), prog, finding, [], "sim:proto=v1")
    text = (tmp_path / (path.name + ".txt")).read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith(crashfile.DATA_PREFIX)]
    assert len(lines) == 1
    data = json.loads(lines[0][len(crashfile.DATA_PREFIX):])
    # known answer: the fields and their values, written by hand from the documented format
    assert data == {"version": 1, "target": "sim:proto=v1", "proto": "v1", "signature": signature(finding),
                    "finding": {"kind": "accepted-invalid", "step": 0, "op": "set 0 state=ERROR",
                                "arc": "RUNNING -set-> ERROR", "expected": "EINVAL",
                                "observed": "success, state ERROR", "check": ["state_not_in", [1, 6]],
                                "detail": "Traceback: line 1\n  line 2\n"}}
    meta = crashfile.read_meta(path)  # from the binary: through its companion
    assert meta.target == "sim:proto=v1" and meta.proto == "v1"
    assert meta.finding == finding
    # the rendering may be reworded freely: nothing reads it back
    reworded = text.replace("# expected: EINVAL", "# we expected: EINVAL (reworded)")
    (tmp_path / "x.txt").write_text(reworded)
    assert crashfile.read_meta(tmp_path / "x.txt").finding == finding


def test_binary_crash_file_knows_its_protocol(tmp_path):
    """A v1 crash's binary is shown as v1 (its companion says so), not decoded as v2."""
    prog = parse_program("migfuzz-program 1 v1\nset 0 value=0b101\n")
    path, _ = crashfile.save_finding(tmp_path, codec.encode(prog), prog, _finding(), [], "sim:proto=v1")
    assert crashfile.read_program(path)[0] == prog
    with pytest.raises(ProgramError, match="v1 program"):
        crashfile.read_program(path, "v2")


def test_self_describing_binary_known_answer(tmp_path):
    prog = parse_program("migfuzz-program 1 v1\nreset 1\n")
    raw = codec.encode(prog)
    data = crashfile.binary_bytes(prog, "sim:proto=v1", raw)
    assert data == b"#migfuzz-binary 1 v1 sim:proto=v1\n" + raw
    f = tmp_path / "p.bin"
    f.write_bytes(data)
    got, meta = crashfile.read_program(f)
    assert got == prog and meta.proto == "v1" and meta.target == "sim:proto=v1"


def test_raw_binary_without_protocol_is_an_error(tmp_path):
    prog = parse_program("migfuzz-program 1 v2\nget 0\n")
    f = tmp_path / "input.bin"
    f.write_bytes(codec.encode(prog))
    with pytest.raises(ProgramError, match="records no protocol"):
        crashfile.read_program(f)
    assert crashfile.read_program(f, "v2")[0] == prog


@pytest.mark.parametrize("content", [
    "hello world\n",
    "Migfuzz-Program 1 v2\nget 0\n",
    "migfuzz-program 1 v3\nget 0\n",
    "migfuzz-program 1 v2\nget 0\nfrobnicate 1\n",
])
def test_text_that_is_not_a_program_is_an_error_with_the_line(tmp_path, content):
    f = tmp_path / "prog.txt"
    f.write_text(content)
    with pytest.raises(ProgramError, match=r"line \d+: "):
        crashfile.read_program(f)


def test_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffmigfuzz-program 1 v2\nget 0\n".encode())
    assert crashfile.read_program(f)[0] == parse_program("migfuzz-program 1 v2\nget 0\n")


# A libFuzzer input that happens to be printable text with a newline; as binary it is [reset 0],
# which trips sim:bug=v2-reset-not-running (its op byte: the first printable letter that is a multiple
# of the number of v2 op codes, so the op table may grow).
PRINTABLE_CRASH = bytes([ord("!"), next(c for c in range(ord("A"), 127) if c % len(OPS["v2"]) == 0)]) + b"0AAAAAA\n"


def test_printable_libfuzzer_input_is_read_as_binary(tmp_path):
    prog = codec.decode(PRINTABLE_CRASH, "v2")
    assert prog == parse_program("migfuzz-program 1 v2\nreset 0\n")
    finding = Executor(SimTarget("v2", 0x7, "v2-reset-not-running")).run(prog)
    assert finding is not None and finding.kind == "state-mismatch"
    path, _ = crashfile.save_finding(tmp_path, PRINTABLE_CRASH, prog, finding, [], "sim:bug=v2-reset-not-running")
    assert crashfile.read_program(path)[0] == prog
    assert crashfile.read_program(path.with_name(path.name + ".txt"))[0] == prog
    corpus_file = tmp_path / hashlib.sha1(PRINTABLE_CRASH).hexdigest()
    corpus_file.write_bytes(PRINTABLE_CRASH)
    assert crashfile.read_program(corpus_file, "v2")[0] == prog


def test_temporary_names_are_unique(tmp_path, monkeypatch):
    """Two writers of the same crash must not share a temporary file (they did: crash-<sha1>.txt.tmp)."""
    names = []
    real = os.replace

    def spy(src, dst):
        names.append(Path(src).name)
        return real(src, dst)

    monkeypatch.setattr(crashfile.os, "replace", spy)
    prog = parse_program("migfuzz-program 1 v2\nget 0\n")
    for _ in range(2):
        crashfile.save_finding(tmp_path, codec.encode(prog), prog, _finding(), [], "sim")
    assert len(names) == 4 and len(set(names)) == 4
    assert names[0].startswith(f"crash-{hashlib.sha1(codec.encode(prog)).hexdigest()}.txt.")  # .txt first


def test_two_processes_saving_the_same_crash(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from fuzz import codec, crashfile
        from fuzz.findings import Finding
        from fuzz.program import parse_program
        prog = parse_program("migfuzz-program 1 v2\\nget 0\\n")
        f = Finding("hang", 0, "e", "o", "a", op="get 0")
        for _ in range(150):
            crashfile.save_finding(Path({str(tmp_path)!r}), codec.encode(prog), prog, f, [], "sim")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert len(list(tmp_path.iterdir())) == 2


def test_directory_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(crashfile.os, "fsync", spy)
    prog = parse_program("migfuzz-program 1 v2\nget 0\n")
    crashfile.save_finding(tmp_path, codec.encode(prog), prog, _finding(), [], "sim")
    assert synced == [False, False, True]  # the .txt, the binary, then the directory


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(crashfile.os, "fsync", failing_fsync)
    prog = parse_program("migfuzz-program 1 v2\nget 1\n")
    with pytest.raises(OSError):
        crashfile.save_finding(tmp_path / "c", codec.encode(prog), prog, _finding(), [], "sim",
                               fallback=tmp_path / "fallback")
    assert not any((tmp_path / "c").iterdir())
    assert not any((tmp_path / "fallback").iterdir())


def test_unwritable_crash_directory_falls_back_and_says_where(tmp_path):
    if os.geteuid() == 0:
        crashes = tmp_path / "file-not-dir"
        crashes.write_text("in the way")  # root ignores permissions: a file where the directory should be
    else:
        crashes = tmp_path / "ro"
        crashes.mkdir()
        crashes.chmod(0o555)
    prog = parse_program("migfuzz-program 1 v2\nget 0\n")
    path, warning = crashfile.save_finding(crashes, codec.encode(prog), prog, _finding(), [], "sim",
                                           fallback=tmp_path / "fallback")
    assert path.parent == tmp_path / "fallback" and path.is_file()
    assert str(tmp_path / "fallback") in warning and str(crashes) in warning


def test_sigkill_during_a_write_never_leaves_a_torn_file(tmp_path):
    """Kill the writer while it is inside the write of the .txt: the final names hold nothing or
    whole files, never part of one."""
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from fuzz import codec, crashfile
        from fuzz.findings import Finding
        from fuzz.program import parse_program
        real_fsync = os.fsync
        def slow_fsync(fd):
            print("writing", flush=True)
            time.sleep(30)  # killed here, between write and rename
        crashfile.os.fsync = slow_fsync
        prog = parse_program("migfuzz-program 1 v2\\nget 0\\n")
        crashfile.save_finding(Path({str(tmp_path)!r}), codec.encode(prog), prog,
                               Finding("hang", 0, "e", "o", "a", op="get 0"), [], "sim")
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    finals = [f for f in tmp_path.iterdir() if not f.name.endswith(".tmp")]
    assert finals == []  # nothing under a final name; the temporary holds the partial write
    assert len([f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]) == 1


def test_crash_files_lists_binaries_and_lone_texts(tmp_path):
    for name in ("crash-a", "crash-a.txt", "crash-b.txt", "crash-c.tmp", "notes.md", "libfuzzer-x"):
        (tmp_path / name).write_text("x")
    (tmp_path / "crash-dir").mkdir()
    assert [p.name for p in crashfile.crash_files(tmp_path)] == ["crash-a", "crash-b.txt", "libfuzzer-x"]
