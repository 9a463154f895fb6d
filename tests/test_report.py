"""Machine-readable output: JSON lines, SARIF 2.1.0, JUnit; and a campaign killed mid-way loses nothing."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fuzz import cli
from fuzz.codec import decode, encode
from fuzz.crashfile import save_finding
from fuzz.executor import Executor
from fuzz.findings import DESCRIPTIONS, FINDING_KINDS, KINDS
from fuzz.program import parse_program, seed_programs
from fuzz.report import JsonlReporter, read_jsonl, sarif_report
from fuzz.targets import open_target, parse_target

ROOT = Path(__file__).resolve().parent.parent
TARGET = "sim:proto=v2,flags=0x7,bug=v2-error-requestable"


def finding_record(kind="accepted-invalid", arc="RUNNING -set-> ERROR", file="crashes/crash-1", sig=None):
    return {"kind": kind, "step": 2, "op": "set 0 state=ERROR", "arc": arc, "expected": "EINVAL",
            "observed": "success, state ERROR", "signature": sig or f"{kind}|{arc}|set", "file": file,
            "target": TARGET}


def check_sarif(doc: dict) -> None:
    """The structure GitHub code scanning and SARIF 2.1.0 require of what we write."""
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    run = doc["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "migfuzz"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert set(FINDING_KINDS) <= set(rule_ids)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"]
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["message"]["text"]
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert "arc" in result["properties"] and "step" in result["properties"]


def check_junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    suite = root.find("testsuite") if root.tag == "testsuites" else root
    assert suite.get("name") == "migfuzz"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases][:len(FINDING_KINDS)] == list(FINDING_KINDS)
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
    return suite


def test_rule_descriptions_come_from_the_kinds_table():
    doc = sarif_report([finding_record()])
    rules = {r["id"]: r["shortDescription"]["text"] for r in doc["runs"][0]["tool"]["driver"]["rules"]}
    assert rules == {k.name: k.description for k in KINDS}
    assert set(DESCRIPTIONS) == set(FINDING_KINDS)


def test_jsonl_reporter_writes_each_line_at_once_and_reports_on_close(tmp_path):
    rep = JsonlReporter(tmp_path / "r", "sim:bug=x")
    rep("stats", {"execs": 10, "elapsed_s": 1.0})
    rep("finding", finding_record())
    rep("finding", finding_record(file="crashes/crash-2"))  # same signature
    rep("finding", finding_record("hang", "STOP_COPY -set-> PRE_COPY", "crashes/crash-3"))
    lines = (tmp_path / "r" / "migfuzz.jsonl").read_text().splitlines()  # before close: already on disk
    assert len(lines) == 4
    first = json.loads(lines[0])
    assert first["type"] == "stats" and first["execs"] == 10 and first["target"] == "sim:bug=x"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", first["time"])
    assert json.loads(lines[1])["type"] == "finding"
    rep.close({"execs": 99, "elapsed_s": 3.5, "findings": 3})
    records = read_jsonl(tmp_path / "r" / "migfuzz.jsonl")
    assert records[-1]["type"] == "stats" and records[-1]["final"] is True
    doc = json.loads((tmp_path / "r" / "migfuzz.sarif").read_text())
    check_sarif(doc)
    results = doc["runs"][0]["results"]
    assert len(results) == 2  # one per distinct signature
    first = next(r for r in results if r["ruleId"] == "accepted-invalid")
    assert first["message"]["text"].startswith("expected EINVAL; observed success, state ERROR")
    assert first["properties"]["count"] == 2 and first["properties"]["arc"] == "RUNNING -set-> ERROR"
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "crashes/crash-1"
    suite = check_junit(tmp_path / "r" / "junit.xml")
    failed = sorted(c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None)
    assert failed == ["accepted-invalid", "hang"]
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["execs"] == "99" and props["target"] == f"sim:bug=x, {TARGET}"
    rep("finding", finding_record())  # after close: ignored, no exception


def test_reports_with_no_findings_and_a_cut_line(tmp_path):
    path = tmp_path / "migfuzz.jsonl"
    path.write_text('{"type": "stats", "execs": 5}\n{"type": "finding", "kind": "ha')  # killed mid-line
    assert cli.main(["report", str(path), "--sarif", str(tmp_path / "o.sarif"),
                     "--junit", str(tmp_path / "o.xml")]) == 0
    doc = json.loads((tmp_path / "o.sarif").read_text())
    check_sarif(doc)
    assert doc["runs"][0]["results"] == []
    suite = check_junit(tmp_path / "o.xml")
    assert suite.get("failures") == "0"


def test_report_command_from_a_crash_directory(tmp_path):
    crashes = tmp_path / "crashes"
    target = open_target(parse_target(TARGET))
    for text in ("set 0 state=ERROR", "set 0 state=STOP\nset 0 state=ERROR", "get 0\nset 0 state=ERROR"):
        prog = parse_program(f"migfuzz-program 1 v2\n{text}\n")
        ex = Executor(target, trace=True)
        save_finding(crashes, encode(prog), prog, ex.run(prog), ex.trace, TARGET)
    assert cli.main(["report", str(crashes)]) == 0  # defaults: next to the input
    doc = json.loads((crashes / "migfuzz.sarif").read_text())
    check_sarif(doc)
    arcs = sorted(r["properties"]["arc"] for r in doc["runs"][0]["results"])
    assert arcs == ["RUNNING -set-> ERROR"]  # one defect (ERROR accepted from any state): one result of three files
    check_junit(crashes / "junit.xml")
    assert cli.main(["report", str(tmp_path / "nothing-here")]) == 2


def test_sarif_artifact_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = sarif_report([dict(finding_record(file=str(tmp_path / "crashes" / "crash-9")), type="finding"),
                        dict(finding_record("hang", file="/elsewhere/crash-8"), type="finding")])
    uris = sorted(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in doc["runs"][0]["results"])
    assert uris == ["crashes/crash-9", "file:///elsewhere/crash-8"]


# ----------------------------------------------------------------------------- interrupted campaigns


def _count_files(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.is_file()) if directory.is_dir() else 0


@pytest.mark.slow
def test_campaign_killed_with_sigkill_loses_nothing_and_resumes_from_its_corpus(tmp_path):
    corpus, crashes, report = tmp_path / "C", tmp_path / "K", tmp_path / "R"
    nseeds = len(seed_programs("v2"))
    cmd = [sys.executable, "-m", "fuzz.cli", "fuzz", "--target", "sim:bug=v2-error-requestable", "--keep-going",
           "--max-time", "30", "--corpus", str(corpus), "--crashes", str(crashes), "--report-dir", str(report)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(tmp_path / "log1", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            crash_txts = list(crashes.glob("crash-*.txt")) if crashes.is_dir() else []
            if crash_txts and _count_files(corpus) > nseeds + 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "log1").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL

    # Every crash file is complete: comment header, then the whole program; the binary matches it.
    # (Each file is written to a temporary name, fsync'ed and renamed, the .txt first: a kill in
    # the middle leaves a *.tmp and at most one .txt whose binary is not there yet, never a
    # binary without its .txt.)
    txts = sorted(crashes.glob("crash-*.txt"))
    assert txts
    binaries = sorted(p for p in crashes.glob("crash-*") if p.suffix not in (".txt", ".tmp"))
    assert all(b.with_name(b.name + ".txt").exists() for b in binaries)
    assert len([t for t in txts if not t.with_suffix("").exists()]) <= 1
    for txt in txts:
        text = txt.read_text()
        assert text.startswith("# migfuzz finding: accepted-invalid")
        prog = parse_program(text)
        assert text.endswith(prog.text()), txt
        if txt.with_suffix("").exists():
            assert decode(txt.with_suffix("").read_bytes(), "v2") == prog
    # The JSON lines written so far are complete, one per saved crash (the crash is written first).
    findings = [r for r in read_jsonl(report / "migfuzz.jsonl") if r["type"] == "finding"]
    reported = {Path(r["file"]).name for r in findings}
    assert reported <= {b.name for b in binaries}
    assert len(binaries) - len(reported) <= 1  # the kill may land between the files and the JSON line
    assert not (report / "migfuzz.sarif").exists()  # close() never ran; `migfuzz report` rebuilds it
    assert cli.main(["report", str(report)]) == 0
    check_sarif(json.loads((report / "migfuzz.sarif").read_text()))

    # Restarted on the same corpus: libFuzzer loads more than the seeds.
    in_corpus = _count_files(corpus)
    assert in_corpus > nseeds
    again = subprocess.run(cmd[:-6] + ["--max-time", "2", "--corpus", str(corpus), "--crashes", str(crashes),
                                       "--verbose"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    m = re.search(r"INFO: seed corpus: files: (\d+)", again.stdout + again.stderr)
    assert m, (again.stdout + again.stderr)[-3000:]
    assert int(m.group(1)) > nseeds


# ----------------------------------------------------------------------------- CI integration


def test_libfuzzer_entry_points_run_and_crash_on_a_planted_bug(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MIGFUZZ_TARGET", None)
    fuzzer = ROOT / "fuzz_targets" / "v2_sim_fuzzer.py"
    clean = subprocess.run([sys.executable, str(fuzzer), "-runs=2000", "-seed=1"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "INFO: seed corpus: files:" in clean.stderr  # the checkout's seeds came in
    for name, proto in (("v2-error-requestable", "v2"), ("v1-accept-101", "v1")):
        out = tmp_path / name
        out.mkdir()
        got = subprocess.run([sys.executable, str(ROOT / "fuzz_targets" / f"{proto}_sim_fuzzer.py"), "-runs=20000",
                              "-seed=1"], cwd=out, capture_output=True, text=True, timeout=300,
                             env=dict(env, MIGFUZZ_TARGET=f"sim:proto={proto},bug={name}"))
        assert got.returncode != 0 and "MigfuzzFinding: accepted-invalid" in got.stdout + got.stderr, (
            got.stdout[-2000:] + got.stderr[-2000:])
        crash = next(out.glob("crash-*"))  # libFuzzer's artifact, replayable by migfuzz
        target = open_target(parse_target(f"sim:proto={proto},bug={name}"))
        assert Executor(target).run(decode(crash.read_bytes(), proto)).kind == "accepted-invalid"


def test_ci_files_are_well_formed():
    yaml = pytest.importorskip("yaml")
    project = yaml.safe_load((ROOT / ".clusterfuzzlite" / "project.yaml").read_text())
    assert project["language"] == "python"
    assert "base-builder-python" in (ROOT / ".clusterfuzzlite" / "Dockerfile").read_text()
    build = (ROOT / ".clusterfuzzlite" / "build.sh").read_text()
    assert "pip3 install ." in build and "compile_python_fuzzer" in build and "_seed_corpus.zip" in build
    assert sorted(p.name for p in (ROOT / "fuzz_targets").glob("*_fuzzer.py")) == ["v1_sim_fuzzer.py",
                                                                                   "v2_sim_fuzzer.py"]
    cflite = yaml.safe_load((ROOT / ".github" / "workflows" / "cflite_pr.yml").read_text())
    run_step = next(s for s in cflite["jobs"]["PR"]["steps"] if s.get("id") == "run")
    assert run_step["with"]["mode"] == "code-change" and run_step["with"]["fuzz-seconds"] == 300
    pr = yaml.safe_load((ROOT / ".github" / "workflows" / "migfuzz-pr.yml").read_text())
    on = pr.get("on", pr.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in on
    job = pr["jobs"]["fuzz"]
    assert job["permissions"]["security-events"] == "write"
    steps = job["steps"]
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)
    runs = " ".join(s.get("run", "") for s in steps)
    assert "pip install -e '.[test]'" in runs
    assert "migfuzz fuzz --target sim --max-time 300 --report-dir report" in runs
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("github/codeql-action/upload-sarif") for u in uses)
    paths = [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/upload-artifact")]
    assert paths == ["crashes/", "report/"]
