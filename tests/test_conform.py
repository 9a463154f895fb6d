"""The conformance sweep (`migfuzz conform`): clean on the correct simulator, failing on the
matching cells for the bug zoo, resilient to devices that hang or throw, and its output formats."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fuzz import conform
from fuzz.cli import main
from harness.uapi import V1_STATE_NAMES, MigState

CLEAN_TARGETS = ["sim:flags=0x1", "sim:flags=0x3", "sim:flags=0x5", "sim:flags=0x7", "sim:proto=v1"]
V2_STATES = [s.name for s in MigState if s != MigState.ERROR]
V1_VALID_NAMES = [V1_STATE_NAMES[v] for v in (0, 1, 2, 3, 4)]


def fails(result: dict) -> set:
    return {(c["check"], c["from"], c["to"]) for c in result["checks"] if c["verdict"] == "fail"}


def failing(result: dict, check: str) -> list[dict]:
    return [c for c in result["checks"] if c["verdict"] == "fail" and c["check"] == check]


@pytest.fixture(scope="module")
def zoo() -> dict:
    """One sweep per bug variant (each takes milliseconds)."""
    from harness.sim.bugs import BUGS

    return {name: conform.sweep(f"sim:proto={bug.proto},bug={name}") for name, bug in BUGS.items()}


# --------------------------------------------------------------------------- the correct simulator


@pytest.mark.parametrize("target", CLEAN_TARGETS)
def test_correct_simulator_conforms(target, capsys):
    assert main(["conform", "--target", target]) == 0
    out = capsys.readouterr().out
    assert "CONFORMS" in out and "FAIL" not in out
    result = conform.sweep(target)
    assert result["summary"]["fail"] == 0
    assert result["summary"]["info"] == 0, [c for c in result["checks"] if c["verdict"] == "info"][:3]
    assert len(result["checks"]) > 80


def test_v2_matrix_covers_every_pair_including_error_and_out_of_range():
    result = conform.sweep("sim:flags=0x7")
    cells = {(c["from"], c["to"]) for c in result["checks"] if c["check"] == "arc"}
    rows = ["ERROR", *V2_STATES]
    cols = ["ERROR", *V2_STATES, "8", "0xffffffff"]
    assert cells == {(f, t) for f in rows for t in cols}


def test_v2_matrix_only_has_rows_for_advertised_states():
    result = conform.sweep("sim:flags=0x1")
    rows = {c["from"] for c in result["checks"] if c["check"] == "arc"}
    assert rows == {"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING"}
    cols = {c["to"] for c in result["checks"] if c["check"] == "arc"}
    assert {"PRE_COPY", "RUNNING_P2P", "8", "0xffffffff"} <= cols  # unsupported targets must be refused


def test_v1_matrix_writes_every_value_from_every_state_and_the_error_state():
    result = conform.sweep("sim:proto=v1")
    cells = {(c["from"], c["to"]) for c in result["checks"] if c["check"] == "arc"}
    assert cells == {(f, V1_STATE_NAMES[v]) for f in [*V1_VALID_NAMES, "ERROR"] for v in range(8)}
    groups = {c["check"] for c in result["checks"]}
    assert {"readonly-field", "reserved", "save-sequence", "round-trip", "error-state", "reset"} <= groups


def test_the_sweep_is_deterministic():
    a, b = conform.sweep("sim:flags=0x5"), conform.sweep("sim:flags=0x5")
    assert a["checks"] == b["checks"]


# --------------------------------------------------------------------------- the bug zoo

# variant -> (check, from, to) cells that must fail
EXPECTED_CELLS = {
    "v2-precopy-arc-hang": {("arc", "STOP_COPY", "PRE_COPY"), ("arc", "STOP_COPY", "PRE_COPY_P2P")},
    "v2-error-requestable": {("arc", s, "ERROR") for s in V2_STATES},
    "v2-p2p-arc-missing": {("arc", "RUNNING", "RUNNING_P2P"), ("reach", "RUNNING", "RUNNING_P2P")},
    "v2-fd-after-reset": {("fd-after-reset", s, "RUNNING") for s in ("STOP_COPY", "PRE_COPY", "RESUMING")},
    "v2-fd-alive-after-session-end": {("fd-after-session-end", "STOP_COPY", "STOP"),
                                      ("fd-after-session-end", "PRE_COPY", "RUNNING")},
    "v2-reset-not-running": {("reset", s, "RUNNING") for s in V2_STATES},
    "v2-precopy-info-in-stopcopy": {("precopy-info", "STOP_COPY", None)},
    "v2-save-field-swap": {("round-trip", "STOP_COPY", "STOP"), ("round-trip", "PRE_COPY", "STOP")},
    "v2-stream-length-trusted": {("damaged-stream", "RESUMING", "STOP")},
    "v2-resume-no-validate": {("damaged-stream", "RESUMING", "STOP")},
    "v2-enomsg-in-stopcopy": {("stop-copy-eof", "STOP_COPY", None)},
    "v2-resume-ignores-fpos": {("resume-segmented", "RESUMING", "STOP")},
    "v2-precopy-dirty-underreport": {("precopy-info-covers", "PRE_COPY", None)},
    "v2-reject-large-state": {("round-trip", "PRE_COPY", "STOP")},
    "v2-fd-leak-on-error": {("fault-in-arc", "STOP", "STOP_COPY")},
    "v2-errptr-on-alloc-failure": {("fault-in-arc", "STOP", "STOP_COPY")},
    "v2-failed-arc-wrong-state": {("fault-in-arc", "STOP", "RUNNING_P2P")},
    "v1-accept-101": {("arc", s, "RESUMING|RUNNING") for s in V1_VALID_NAMES},
    "v1-accept-111": {("arc", s, "RESUMING|SAVING|RUNNING") for s in V1_VALID_NAMES},
    "v1-error-writable": {("arc", s, "ERROR") for s in V1_VALID_NAMES},
    "v1-resume-no-wipe": {("resume-twice", "RESUMING", "RUNNING")},
    "v1-deserialize-early": {("stopped-frozen", "RESUMING", None)},
    "v1-stop-not-frozen": {("stopped-frozen", "STOP", None)},
    "v1-pending-never-zero": {("save-sequence", "SAVING", "STOP")},
    "v1-data-offset-oob": {("save-sequence", "SAVING", "STOP")},
    "v1-failed-write-third-state": {("arc", "RUNNING", "RESUMING|RUNNING")},
}

# the zoo's finding kind -> check groups of the sweep that reveal that kind of defect
KIND_TO_CHECKS = {
    "hang": {"arc", "save-sequence", "save-source", "round-trip"},
    "accepted-invalid": {"arc", "precopy-info", "feature"},
    "rejected-valid": {"arc", "reach"},
    "state-mismatch": {"reset", "arc"},
    "bad-state-after-failure": {"arc", "fault-in-arc"},
    "fd-misuse-accepted": {"fd-after-reset", "fd-after-session-end", "fd-wrong-direction", "fd-seek"},
    "stream-protocol": {"stop-copy-eof", "precopy-eof", "precopy-info-covers"},
    "valid-stream-rejected": {"round-trip", "resume-segmented", "resume-twice"},
    "resume-corrupted": {"round-trip"},
    "damaged-stream-accepted": {"damaged-stream"},
    "state-changed-while-stopped": {"stopped-frozen"},
    "resource-leak": {"fault-in-arc"},
    "region-layout": {"save-sequence"},
    "target-exception": {"fault-in-arc"},
}


def test_every_zoo_variant_has_an_expectation():
    from harness.sim.bugs import BUGS

    assert set(EXPECTED_CELLS) == set(BUGS)


@pytest.mark.parametrize("variant", sorted(EXPECTED_CELLS))
def test_zoo_variant_fails_on_its_cells(zoo, variant):
    result = zoo[variant]
    assert result["summary"]["fail"] > 0
    missing = EXPECTED_CELLS[variant] - fails(result)
    assert not missing, f"{variant}: expected failures missing: {missing}; got {sorted(fails(result))[:8]}"


@pytest.mark.parametrize("variant", sorted(EXPECTED_CELLS))
def test_zoo_variant_fails_in_a_check_group_matching_its_finding_kind(zoo, variant):
    from harness.sim.bugs import BUGS

    groups = {c["check"] for c in zoo[variant]["checks"] if c["verdict"] == "fail"}
    assert groups & KIND_TO_CHECKS[BUGS[variant].finding], (variant, groups)


def test_hang_is_recorded_in_its_cell_and_only_there(zoo):
    result = zoo["v2-precopy-arc-hang"]
    assert fails(result) == EXPECTED_CELLS["v2-precopy-arc-hang"]
    for c in failing(result, "arc"):
        assert c["observed"].startswith("hang"), c
    # the sweep carried on: the cells after the hang were checked and pass
    after = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "RESUMING"]
    assert after and all(c["verdict"] == "pass" for c in after)


def test_reset_not_running_is_localised_to_the_reset_rows(zoo):
    result = zoo["v2-reset-not-running"]
    assert {c["check"] for c in result["checks"] if c["verdict"] == "fail"} == {"reset"}


def test_exception_text_is_recorded(zoo):
    obs = [c["observed"] for c in failing(zoo["v2-errptr-on-alloc-failure"], "fault-in-arc")]
    assert any(o.startswith("exception AttributeError") for o in obs), obs


def test_unreachable_rows_are_info_and_their_cause_fails(zoo):
    result = zoo["v2-p2p-arc-missing"]
    stop_row = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "STOP"]
    assert stop_row and all(c["verdict"] == "info" and c["observed"].startswith("not reached") for c in stop_row)
    reach = failing(result, "reach")
    assert any("RUNNING -> RUNNING_P2P refused" in c["observed"] for c in reach)


# --------------------------------------------------------------------------- resilience, real-device shape


def _sim_target(cls_attrs: dict | None = None, device_mixin=None, **kw):
    from harness.sim import SimTarget

    target = type("T", (SimTarget,), dict(cls_attrs or {}))(**kw)
    if device_mixin is not None:
        for d in target.devices:
            d.__class__ = type("D", (device_mixin, d.__class__), {})
    return target


class Flaky:
    """A device that throws on one request, and whose next reset then throws too."""

    def set_state(self, new):
        if new == MigState.PRE_COPY_P2P and self.state == MigState.STOP:
            self.broken = True
            raise RuntimeError("driver blew up")
        return super().set_state(new)

    def reset(self):
        if getattr(self, "broken", False):
            raise OSError("reset failed")
        return super().reset()


def test_exceptions_are_fails_and_a_failed_reset_reopens_the_target():
    from fuzz.targets import parse_target

    spec = parse_target("sim:flags=0x7")
    opened = []

    def open_fn(_spec):
        opened.append(1)
        return _sim_target(device_mixin=Flaky, flags=0x7)

    result = conform.sweep(spec, target=open_fn(spec), open_fn=open_fn)
    cell = next(c for c in result["checks"] if (c["check"], c["from"], c["to"]) == ("arc", "STOP", "PRE_COPY_P2P"))
    assert cell["verdict"] == "fail" and "RuntimeError: driver blew up" in cell["observed"]
    assert len(opened) >= 2  # re-opened after the reset raised
    later = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "RUNNING"]
    assert later and all(c["verdict"] == "pass" for c in later)
    assert fails(result) == {("arc", "STOP", "PRE_COPY_P2P")}


def test_without_digest_the_round_trip_compares_a_re_saved_stream():
    result = conform.sweep("sim:flags=0x7", target=_sim_target({"has_digest": False}, flags=0x7))
    assert result["summary"]["fail"] == 0, sorted(fails(result))
    trips = [c for c in result["checks"] if c["check"] == "round-trip"]
    assert trips and all("re-saved stream identical" in c["observed"] for c in trips)
    frozen = [c for c in result["checks"] if c["check"] == "stopped-frozen"]
    assert frozen and all(c["verdict"] == "info" for c in frozen)


def test_v1_without_digest_round_trip_and_no_faults():
    target = _sim_target({"has_digest": False, "supports_faults": False}, proto="v1")
    result = conform.sweep("sim:proto=v1", target=target)
    assert result["summary"]["fail"] == 0, sorted(fails(result))
    assert all("identical" in c["observed"] for c in result["checks"] if c["check"] == "round-trip")
    error_row = [c for c in result["checks"] if c["check"] == "arc" and c["from"] == "ERROR"]
    assert error_row and all(c["verdict"] == "info" for c in error_row)


def test_damaged_stream_accepted_is_info_when_the_target_does_not_validate_streams():
    target = _sim_target({"validates_stream": False}, flags=0x7, bug="v2-resume-no-validate")
    result = conform.sweep("sim:flags=0x7,bug=v2-resume-no-validate", target=target)
    damaged = [c for c in result["checks"] if c["check"] == "damaged-stream"]
    assert damaged and {c["verdict"] for c in damaged} <= {"pass", "info"}
    assert any(c["verdict"] == "info" for c in damaged)


def test_a_kernel_hang_writes_the_partial_report_and_exits(monkeypatch):
    """A real target reports a stuck call through target.on_hang (it cannot be interrupted)."""

    class Exit(BaseException):
        pass

    def fake_exit(code):
        raise Exit(code)

    class Stuck:
        def set_state(self, new):
            if new == MigState.RESUMING and self.state == MigState.STOP:
                hook = self.target_ref.on_hang
                hook("set_state", 10.0)  # the watchdog thread's call; never returns
            return super().set_state(new)

    target = _sim_target({"on_hang": None}, device_mixin=Stuck, flags=0x1)
    for d in target.devices:
        d.target_ref = target
    partial = []
    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(Exit):
        conform.sweep("sim:flags=0x1", target=target, on_abort=partial.append)
    (result,) = partial
    assert result["aborted"]
    last = result["checks"][-1]
    assert last["verdict"] == "fail" and last["observed"].startswith("hang: set_state did not return")


# --------------------------------------------------------------------------- CLI and formats


def test_json_schema(capsys):
    assert main(["conform", "--target", "sim:flags=0x7,bug=v2-p2p-arc-missing", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "sim:proto=v2,flags=0x7,bug=v2-p2p-arc-missing"
    assert data["protocol"] == "v2" and data["flags"] == 7
    names = {s.name for s in MigState} | {"8", "0xffffffff", None}
    for c in data["checks"]:
        assert set(c) == {"check", "from", "to", "expected", "observed", "path", "verdict"}
        assert c["verdict"] in ("pass", "fail", "info")
        assert isinstance(c["path"], list) and all(isinstance(p, str) for p in c["path"])
        assert c["from"] in names and c["to"] in names, c
    arcs = [c for c in data["checks"] if c["check"] == "arc"]
    assert all(p in names for c in arcs for p in c["path"])


def test_json_v1_uses_v1_state_names(capsys):
    assert main(["conform", "--target", "sim:proto=v1", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["protocol"] == "v1" and data["flags"] == 0
    names = set(V1_STATE_NAMES.values()) | {None}
    assert all(c["from"] in names and c["to"] in names for c in data["checks"])


def test_table_puts_failures_first(capsys):
    assert main(["conform", "--target", "sim:proto=v1,bug=v1-accept-111"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "DOES NOT CONFORM" in lines[1]
    body = [ln for ln in lines[3:] if ln.strip()]
    assert body[0].startswith("VERDICT")
    verdicts = [ln.split()[0] for ln in body[1:]]
    assert verdicts[:5] == ["FAIL"] * 5 and "FAIL" not in verdicts[5:]


def test_markdown_and_out_file(tmp_path, capsys):
    out = tmp_path / "r.md"
    assert main(["conform", "--target", "sim:flags=0x3,bug=v2-error-requestable", "--format", "md",
                 "--out", str(out)]) == 1
    text = out.read_text()
    assert text.startswith("# Conformance: `sim:proto=v2,flags=0x3,bug=v2-error-requestable`")
    assert "| verdict | check | from | to | expected | observed | path |" in text
    first_row = text.split("|---|---|---|---|---|---|---|\n")[1].splitlines()[0]
    assert first_row.startswith("| **FAIL** | arc |")


@pytest.mark.parametrize("argv", [
    ["conform", "--target", "sim:flags=0x2"],
    ["conform", "--target", "bogus"],
    ["conform", "--target", "sim:bug=no-such-bug"],
    ["conform", "--target", "sim:bug=v1-accept-101"],  # a v1 variant without proto=v1
    ["conform", "--format", "pdf"],
    ["conform", "--out", "/nonexistent/dir/x.html"],
    ["conform", "--target", "kernel:dev=0000:00:00.0"],  # a real device needs the confirmation flag
    ["report-html", "--jsonl", "/nonexistent.jsonl", "--out", "x.html"],
])
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    capsys.readouterr()


def test_unavailable_target_exits_3(capsys, monkeypatch):
    monkeypatch.delenv("MIGFUZZ_MTTY", raising=False)
    assert main(["conform", "--target", "mtty", "--i-know-this-resets-the-device"]) == 3
    assert "unavailable" in capsys.readouterr().err


def test_cli_import_does_not_load_the_simulator_or_executor():
    code = ("import sys, fuzz.cli; p = fuzz.cli.build_parser(); "
            "p.parse_args(['conform']); p.parse_args(['report-html', '--jsonl', 'a', '--out', 'b']); "
            "bad = [m for m in ('harness.sim', 'fuzz.executor', 'fuzz.oracles') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checks_are_data():
    """The rule tables drive the cases: every data_fd rule and framing case shows up for flags 0x7."""
    result = conform.sweep("sim:flags=0x7")
    fd_checks = {r.check for r in conform.V2_FD_RULES}
    assert fd_checks <= {c["check"] for c in result["checks"]}
    assert sum(c["check"] == "feature" for c in result["checks"]) == len(conform.FEATURE_CASES)
    assert sum(c["check"] == "damaged-stream" for c in result["checks"]) == len(conform.DAMAGES)
