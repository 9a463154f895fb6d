"""Machine-readable campaign output: JSON lines while fuzzing, SARIF and JUnit at the end.

``JsonlReporter(report_dir, target)`` is the engine's ``report`` callback
(``--report-dir``): every ``report(kind, data)`` call appends one JSON line
``{"type": "finding"|"stats", "time": ..., ...data}`` to
``report_dir/migfuzz.jsonl`` and flushes it at once (findings are also
fsync'ed), so a campaign killed at any moment keeps every line it wrote.
``close(stats)`` appends the final stats and writes ``migfuzz.sarif`` (SARIF
2.1.0, for code-scanning UIs) and ``junit.xml`` (one test case per finding kind,
for CI dashboards) from the whole JSON-lines file, so a resumed campaign's
report covers the earlier runs too.

``migfuzz report DIR_OR_JSONL [--sarif OUT] [--junit OUT]`` rebuilds both from a
JSON-lines file, a report directory, or a crashes directory (from the headers
of the crash .txt files) - e.g. after a campaign was interrupted before it
could write them.

``--jobs N`` writes one report directory per job (``job0``, ``job1``, ...);
:func:`merge_job_reports` merges them into one ``migfuzz.jsonl`` with SARIF and JUnit
at the top, and ``migfuzz report DIR`` does the same for such a directory.

Rule descriptions come from ``fuzz.findings.KINDS``; nothing here reads the
``expected``/``observed`` text to decide anything (they are shown as messages).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.runtime import EXIT_OK

from . import __version__, crashfile
from .errors import UsageError
from .findings import DESCRIPTIONS, FINDING_KINDS, signature

JSONL_NAME = "migfuzz.jsonl"
SARIF_NAME = "migfuzz.sarif"
JUNIT_NAME = "junit.xml"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
INFORMATION_URI = "https://github.com/migfuzz/migfuzz"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonlReporter:
    """The engine's report callback: JSON lines now, SARIF + JUnit on close."""

    def __init__(self, report_dir: Path, target: str):
        self.dir = Path(report_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.path = self.dir / JSONL_NAME
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as we do
        self.closed = False

    def __call__(self, kind: str, data: dict) -> None:
        if self.closed:
            return
        record = {"type": kind, "time": _now()}
        record.update(data)
        record.setdefault("target", self.target)
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()
        if kind == "finding":
            try:
                os.fsync(self._file.fileno())
            except OSError:
                pass

    def release(self) -> None:
        """Stop writing, without the final stats line or SARIF/JUnit: for a line added to a report a
        campaign goes on with (``migfuzz vm``: a kernel panic's finding, between two boots)."""
        if not self.closed:
            self.closed = True
            self._file.close()

    def close(self, stats: dict | None = None) -> None:
        """Final stats line, then migfuzz.sarif and junit.xml (the engine _exits right after)."""
        if self.closed:
            return
        self("stats", dict(stats or {}, final=True))
        self.closed = True
        self._file.close()
        try:
            write_reports(read_jsonl(self.path), self.dir / SARIF_NAME, self.dir / JUNIT_NAME)
        except Exception as e:  # noqa: BLE001 - a report problem must not hide the campaign's result
            print(f"migfuzz: could not write the SARIF/JUnit reports: {e}", file=sys.stderr)


# ----------------------------------------------------------------------------- input


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON object in the file (a line cut short by a kill is skipped)."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def records_from_crashes(directory: Path, target: str | None = None) -> list[dict]:
    """Finding records from the data lines of a crash directory's files (no replay)."""
    out = []
    for path in crashfile.crash_files(directory):
        meta = crashfile.read_meta(path)
        if meta.finding is None:
            continue
        out.append(dict(meta.finding.data(), type="finding", signature=signature(meta.finding, coarse=True),
                        file=str(path), target=target or meta.target))
    return out


def group_findings(records: list[dict]) -> list[dict]:
    """One entry per distinct signature (first record wins; count and files of all)."""
    groups: dict = {}
    for rec in records:
        if rec.get("type") != "finding":
            continue
        sig = rec.get("signature") or f"{rec.get('kind')}|{rec.get('arc')}|{str(rec.get('op', '')).split(' ')[0]}"
        entry = groups.get(sig)
        if entry is None:
            entry = groups[sig] = dict(rec, signature=sig, count=0, files=[])
        entry["count"] += 1
        if rec.get("file") and rec["file"] not in entry["files"]:
            entry["files"].append(rec["file"])
    return list(groups.values())


def last_stats(records: list[dict]) -> dict:
    stats = {}
    for rec in records:
        if rec.get("type") == "stats":
            stats = rec
    return {k: v for k, v in stats.items() if k not in ("type",)}


def _artifact(path_text: str) -> dict:
    path = Path(path_text)
    if path.is_absolute():
        try:
            rel = path.resolve().relative_to(Path.cwd().resolve())
            return {"uri": rel.as_posix(), "uriBaseId": "%SRCROOT%"}
        except ValueError:
            return {"uri": path.as_uri()}
    return {"uri": path.as_posix(), "uriBaseId": "%SRCROOT%"}


def _rule_name(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("-"))


def sarif_report(records: list[dict]) -> dict:
    descriptions = DESCRIPTIONS
    kinds = list(FINDING_KINDS)
    groups = group_findings(records)
    for g in groups:
        if g.get("kind") not in kinds:
            kinds.append(g.get("kind") or "unknown")
    rules = [{
        "id": kind,
        "name": _rule_name(kind),
        "shortDescription": {"text": descriptions.get(kind, kind)},
        "fullDescription": {"text": f"VFIO migration protocol violation: {descriptions.get(kind, kind)}"},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["fuzzing", "vfio", "migration"]},
    } for kind in kinds]
    results = []
    for g in groups:
        kind = g.get("kind") or "unknown"
        message = f"expected {g.get('expected', '?')}; observed {g.get('observed', '?')}"
        if g.get("arc"):
            message += f" (arc {g['arc']}, step {g.get('step', '?')}: {g.get('op', '')})"
        result = {
            "ruleId": kind,
            "ruleIndex": kinds.index(kind),
            "level": "error",
            "message": {"text": message},
            "locations": [{"physicalLocation": {"artifactLocation": _artifact(g["files"][0] if g["files"] else
                                                                              "crashes")}}],
            "partialFingerprints": {"migfuzzSignature/v1": hashlib.sha256(g["signature"].encode()).hexdigest()},
            "properties": {"signature": g["signature"], "arc": g.get("arc", ""), "step": g.get("step"),
                           "op": g.get("op", ""), "target": g.get("target", ""), "count": g["count"],
                           "files": g["files"]},
        }
        results.append(result)
    stats = last_stats(records)
    run = {
        "tool": {"driver": {"name": "migfuzz", "informationUri": INFORMATION_URI, "version": __version__,
                            "rules": rules}},
        "invocations": [{"executionSuccessful": True, "properties": stats}],
        "results": results,
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def junit_report(records: list[dict]) -> ET.ElementTree:
    groups = group_findings(records)
    stats = last_stats(records)
    targets = sorted({str(r.get("target")) for r in records if r.get("target")})
    by_kind: dict = {}
    for g in groups:
        by_kind.setdefault(g.get("kind"), []).append(g)
    kinds = list(FINDING_KINDS) + sorted(k for k in by_kind if k not in FINDING_KINDS)
    failures = sum(1 for k in kinds if by_kind.get(k))
    elapsed = str(stats.get("elapsed_s", 0))
    suites = ET.Element("testsuites", name="migfuzz", tests=str(len(kinds)), failures=str(failures), errors="0",
                        time=elapsed)
    suite = ET.SubElement(suites, "testsuite", name="migfuzz", tests=str(len(kinds)), failures=str(failures),
                          errors="0", skipped="0", time=elapsed, timestamp=str(stats.get("time", _now())))
    props = ET.SubElement(suite, "properties")
    for key, value in [("target", ", ".join(targets))] + sorted((k, v) for k, v in stats.items() if k != "target"):
        ET.SubElement(props, "property", name=str(key), value=str(value))
    descriptions = DESCRIPTIONS
    classname = "migfuzz." + (targets[0] if len(targets) == 1 else "campaign")
    for kind in kinds:
        case = ET.SubElement(suite, "testcase", classname=classname, name=kind, time="0")
        found = by_kind.get(kind)
        if found:
            failure = ET.SubElement(case, "failure", type=kind,
                                    message=f"{len(found)} distinct finding(s): {descriptions.get(kind, kind)}")
            failure.text = "\n\n".join(
                f"signature: {g['signature']}\narc: {g.get('arc', '')}\nstep {g.get('step')}: {g.get('op', '')}\n"
                f"expected: {g.get('expected', '')}\nobserved: {g.get('observed', '')}\n"
                f"target: {g.get('target', '')}\ncrash files: {', '.join(g['files'])}" for g in found)
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_reports(records: list[dict], sarif: Path | None, junit: Path | None) -> None:
    """Write SARIF and/or JUnit atomically (temporary file + rename)."""
    if sarif is not None:
        _atomic_write(Path(sarif), json.dumps(sarif_report(records), indent=2) + "\n")
    if junit is not None:
        tree = junit_report(records)
        _atomic_write(Path(junit), ET.tostring(tree.getroot(), encoding="unicode", xml_declaration=True) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file; an error names ``path``, never the temporary file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        crashfile.write_durably(path, text.encode())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def job_dirs(directory: Path) -> list[Path]:
    """The per-job report directories ``--jobs N`` wrote (job0, job1, ...)."""
    return sorted((p for p in directory.glob("job*") if (p / JSONL_NAME).is_file()),
                  key=lambda p: (len(p.name), p.name))


def merge_job_reports(directory: Path) -> list[dict]:
    """Merge ``job*/migfuzz.jsonl`` into ``directory/migfuzz.jsonl`` (ordered by time) and write
    the campaign's SARIF and JUnit next to it; returns the merged records."""
    records = []
    for job in job_dirs(directory):
        for rec in read_jsonl(job / JSONL_NAME):
            records.append(dict(rec, job=job.name))
    records.sort(key=lambda r: str(r.get("time", "")))
    text = "".join(json.dumps(r, default=str) + "\n" for r in records)
    _atomic_write(directory / JSONL_NAME, text)
    write_reports(records, directory / SARIF_NAME, directory / JUNIT_NAME)
    return records


# ----------------------------------------------------------------------------- command


def load_records(source: Path, target: str | None = None) -> tuple[list[dict], Path]:
    """(records, default output directory) for a JSON-lines file, a report dir (or one with
    job*/ subdirectories), or a crash dir."""
    if source.is_file():
        return read_jsonl(source), source.parent
    if job_dirs(source):
        return merge_job_reports(source), source
    if (source / JSONL_NAME).is_file():
        return read_jsonl(source / JSONL_NAME), source
    return records_from_crashes(source, target), source


def cmd_report(args) -> int:
    source = Path(args.source)
    if not source.exists():
        raise UsageError(f"{source}: no such file or directory")
    records, outdir = load_records(source, args.target)
    sarif = Path(args.sarif) if args.sarif else None
    junit = Path(args.junit) if args.junit else None
    if sarif is None and junit is None:
        sarif, junit = outdir / SARIF_NAME, outdir / JUNIT_NAME
    write_reports(records, sarif, junit)
    groups = group_findings(records)
    kinds = sorted({g.get("kind") for g in groups})
    print(f"migfuzz: {len(groups)} distinct finding(s) ({', '.join(kinds) or 'none'}) -> "
          + ", ".join(str(p) for p in (sarif, junit) if p is not None), file=sys.stderr)
    return EXIT_OK
