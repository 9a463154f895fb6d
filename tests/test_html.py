"""The self-contained HTML pictures: the conformance page and the campaign page.

The pages are classified from the conform records' structured fields only, laid out so that
nothing scrolls sideways (checked in headless Chromium), and a report of a resumed campaign
lays its runs end to end."""
from __future__ import annotations

import copy
import html as htmllib
import json
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fuzz import conform, htmlreport, model
from fuzz.cli import main

SVG_NS = "http://www.w3.org/2000/svg"
SVG = f"{{{SVG_NS}}}"


def svgs(html: str) -> list[ET.Element]:
    """Every inline <svg> parsed as XML (so each is well formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


def text_of(html: str) -> str:
    """The page's text as a reader sees it (tags, including <wbr>, removed; entities decoded)."""
    return htmllib.unescape(re.sub(r"<[^>]+>", "", html))


def assert_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    lowered = html.lower()
    for needle in ("<script", "<link", "@import", " src=", "href=", "<iframe", "<img"):
        assert needle not in lowered, needle
    # the only URL is the SVG namespace name, which is not fetched
    assert set(re.findall(r"https?://[^\s\"')]+", html)) <= {SVG_NS}
    assert "url(" not in lowered.replace("url(#", "")  # only references to patterns/markers inside the page
    for svg in svgs(html):  # every picture scales down to its box
        assert svg.get("viewBox"), svg.get("aria-label")


@pytest.fixture(scope="module")
def hang_page() -> tuple[dict, str]:
    result = conform.sweep("sim:flags=0x7,bug=v2-precopy-arc-hang")
    return result, htmlreport.conform_html(result)


def cell_groups(matrix: ET.Element) -> list[ET.Element]:
    return [g for g in matrix.iter(f"{SVG}g") if g.find(f"{SVG}title") is not None]


def test_conform_page_is_one_self_contained_file_with_svg(hang_page):
    _, html = hang_page
    assert_self_contained(html)
    assert len(svgs(html)) >= 3  # matrix, diagram, groups


def test_failing_cells_are_red_with_expected_and_observed_in_the_tooltip(hang_page):
    _, html = hang_page
    matrix = svgs(html)[0]
    cells = cell_groups(matrix)
    assert len(cells) == 8 * 10  # 7 states + ERROR, to 8 values + 2 out-of-range
    red = [g for g in cells if g.find(f"{SVG}rect").get("fill") == htmlreport.FAIL_FILL]
    tips = sorted(g.find(f"{SVG}title").text for g in red)
    assert len(tips) == 2
    assert tips[0].startswith("STOP_COPY \u2192 PRE_COPY  [FAIL]")
    assert "expected: refused, stays STOP_COPY" in tips[0] and "observed: hang" in tips[0]
    texts = [t.text for g in red for t in g.iter(f"{SVG}text")]
    assert "HANG" in texts


def test_the_page_lists_the_failures_before_the_pictures(hang_page):
    _, html = hang_page
    assert html.index("DOES NOT CONFORM") < html.index("Where the device departs") < html.index("Transition matrix")


@pytest.mark.parametrize("flags", model.FLAG_SETS)
def test_state_diagram_draws_the_arcs_of_the_flag_set(flags):
    result = conform.sweep(f"sim:flags={flags:#x}")
    html = htmlreport.conform_html(result)
    assert_self_contained(html)
    assert "CONFORMS" in html
    diagram = svgs(html)[1]
    shapes = [e for e in diagram.iter() if e.get("marker-end")]
    solid = [e for e in shapes if not e.get("stroke-dasharray")]
    dashed = [e for e in shapes if e.get("stroke-dasharray")]
    blocked = [b for b in model.BLOCKED if model.supported(flags, b[0]) and model.supported(flags, b[1])]
    assert len(solid) == len(model.arcs(flags))
    assert len(dashed) == len(blocked) + 1  # + the reset arrow out of ERROR
    nodes = {t.text for t in diagram.iter(f"{SVG}text")}
    for s in range(1, 8):
        assert (model.STATE_NAMES[s] in nodes) == model.supported(flags, s)
    assert not any(e.get("stroke") == "#c62828" for e in shapes)  # nothing red on a conforming device


def test_failing_arc_is_red_in_the_diagram():
    result = conform.sweep("sim:flags=0x3,bug=v2-p2p-arc-missing")
    diagram = svgs(htmlreport.conform_html(result))[1]
    red = [g for g in diagram.iter(f"{SVG}g")
           if any(e.get("stroke") == "#c62828" for e in g) and g.find(f"{SVG}title") is not None]
    arc = next(g for g in red if g.find(f"{SVG}title").text.startswith("RUNNING \u2192 RUNNING_P2P"))
    assert "refused!" in [t.text for t in arc.iter(f"{SVG}text")]


def test_v1_page():
    result = conform.sweep("sim:proto=v1,bug=v1-error-writable")
    html = htmlreport.conform_html(result)
    assert_self_contained(html)
    matrix, diagram = svgs(html)[:2]
    assert sum(1 for r in matrix.iter(f"{SVG}rect") if r.get("fill") == htmlreport.FAIL_FILL) == 6
    assert "110b" in "".join(t.text or "" for t in diagram.iter(f"{SVG}text"))
    # the accepted writes into ERROR are drawn as arcs the device took but must not
    took = [g for g in diagram.iter(f"{SVG}g") if (g.findtext(f"{SVG}title") or "").endswith("ERROR")
            and any(e.get("stroke-dasharray") and e.get("stroke") == "#c62828" for e in g)]
    assert len(took) >= 5


def test_conform_cli_writes_html(tmp_path, capsys):
    out = tmp_path / "c.html"
    assert main(["conform", "--target", "sim:proto=v1,bug=v1-accept-101", "--format", "html", "--out", str(out)]) == 1
    html = out.read_text()
    assert_self_contained(html)
    assert "<svg" in html and "DOES NOT CONFORM" in html
    capsys.readouterr()


# --------------------------------------------------------------------------- decided from data, not prose


def drawing(svg: ET.Element) -> list:
    """What a picture shows, without its tooltips: every shape's colour and dash, every label."""
    out = []
    for e in svg.iter():
        if e.tag == f"{SVG}title":
            continue
        out.append((e.tag, e.get("fill"), e.get("stroke"), e.get("stroke-dasharray"), (e.text or "").strip()))
    return out


@pytest.mark.parametrize("target", ["sim:flags=0x7,bug=v2-error-requestable", "sim:flags=0x3,bug=v2-p2p-arc-missing",
                                    "sim:flags=0x7,bug=v2-precopy-arc-hang", "sim:proto=v1,bug=v1-accept-111",
                                    "sim:flags=0x7,bug=v2-fd-after-reset", "sim:flags=0x7,bug=v2-register-not-migrated",
                                    "sim:flags=0x7,bug=v2-state-survives-reopen",
                                    "sim:flags=0x7,bug=v2-config-oob-read", "sim:flags=0x7,bug=v2-rx-uninitialized"])
def test_matrix_and_diagram_ignore_the_expected_and_observed_text(target):
    result = conform.sweep(target)
    scrambled = copy.deepcopy(result)
    for c in scrambled["checks"]:
        c["expected"], c["observed"] = "ok refused no-op new fd hang exception", "ok, GET ERROR, reads STOP"
    before, after = svgs(htmlreport.conform_html(result)), svgs(htmlreport.conform_html(scrambled))
    assert [drawing(s) for s in before] == [drawing(s) for s in after]


def test_matrix_follows_the_structured_outcome():
    """Change only a cell's data and its picture changes accordingly."""
    result = conform.sweep("sim:flags=0x7")
    cell = next(c for c in result["checks"] if (c["check"], c["from"], c["to"]) == ("arc", "STOP", "ERROR"))
    cell["verdict"] = "fail"
    cell["outcome"].update(err=0, accepted=True, state=model.ERROR)
    assert htmlreport.departure(cell) == "accepted"
    fill, _, main_text, small = htmlreport._cell_text("v2", cell)  # noqa: SLF001
    assert (fill, main_text, small) == (htmlreport.FAIL_FILL, "accepted", "\u2192 ERROR")
    diagram = svgs(htmlreport.conform_html(result))[1]
    assert any((g.findtext(f"{SVG}title") or "").startswith("STOP \u2192 ERROR: accepted")
               for g in diagram.iter(f"{SVG}g"))


def _record(exp: dict, out: dict, path=("STOP", "RUNNING")) -> dict:
    return {"check": "arc", "from": "STOP", "to": "RUNNING", "expected": "", "observed": "", "path": list(path),
            "verdict": "fail", "expect": conform.expect(**exp), "outcome": conform.outcome(**out)}


@pytest.mark.parametrize("exp, out, main_text, small", [
    ({"ok": True, "states": [2], "fd": False}, {"err": 0, "state": 2, "fd": True}, "wrong", "+fd"),
    ({"ok": True, "states": [3], "fd": True}, {"err": 0, "state": 3, "fd": False}, "wrong", "no fd"),
    ({"ok": True, "states": [2], "fd": False}, {"err": 0, "state": 1, "fd": False}, "wrong", "\u2192 STOP"),
    ({"ok": True, "states": [2], "fd": False}, {"err": 22, "state": 1, "fd": False}, "refused", "EINVAL \u2192 STOP"),
    ({"ok": False, "states": [1], "fd": False}, {"err": 0, "state": 0, "fd": False}, "accepted", "\u2192 ERROR"),
    ({"ok": False, "states": [1]}, {"status": "hang"}, "HANG", "no return"),
    ({"ok": False, "states": [1]}, {"status": "exception", "exception": "KeyError"}, "EXCEPTION", "KeyError"),
    ({"ok": True}, {"status": "endless"}, "NO END", ""),
])
def test_a_failing_cell_says_how_it_departs(exp, out, main_text, small):
    fill, _, got_main, got_small = htmlreport._cell_text("v2", _record(exp, out))  # noqa: SLF001
    assert (fill, got_main, got_small) == (htmlreport.FAIL_FILL, main_text, small)


# --------------------------------------------------------------------------- lifecycle and registers


def labelled(html: str, label: str) -> ET.Element:
    return next(svg for svg in svgs(html) if svg.get("aria-label") == label)


def red_cells(svg: ET.Element) -> list[str]:
    """The tooltips' first lines of the cells drawn red."""
    return sorted(g.findtext(f"{SVG}title").split("  [")[0] for g in svg.iter(f"{SVG}g")
                  if g.find(f"{SVG}title") is not None and g.find(f"{SVG}rect").get("fill") == htmlreport.FAIL_FILL)


def test_a_conforming_page_draws_lifecycle_and_registers_in_green():
    html = htmlreport.conform_html(conform.sweep("sim:flags=0x7"))
    assert_self_contained(html)
    for label in ("device lifecycle", "device registers", "register reads and kernel addresses"):
        svg = labelled(html, label)
        assert red_cells(svg) == [] and any(r.get("fill") == htmlreport.PASS_OK for r in svg.iter(f"{SVG}rect"))
    assert html.index("Device lifecycle") < html.index("Device registers") < html.index("Checks by group")


def test_a_register_left_out_of_the_stream_is_red_in_its_row_only():
    html = htmlreport.conform_html(conform.sweep("sim:flags=0x7,bug=v2-register-not-migrated"))
    regs = labelled(html, "device registers")
    assert red_cells(regs) == ["SCR: written in RUNNING", "SCR: written in STOP", "SCR: written in STOP_COPY"]
    texts = [t.text for t in regs.iter(f"{SVG}text")]
    assert "differs" in texts and "00 \u2260 11" in texts  # destination vs source, from the outcome's data
    assert red_cells(labelled(html, "device lifecycle")) == [
        f"reopen-round-trip from {s}" for s in ("PRE_COPY", "PRE_COPY_P2P", "RESUMING", "STOP_COPY")]


def test_reopen_failures_are_red_in_the_lifecycle_grid_and_the_diagram():
    result = conform.sweep("sim:flags=0x7,bug=v2-state-survives-reopen")
    html = htmlreport.conform_html(result)
    red = red_cells(labelled(html, "device lifecycle"))
    assert [r for r in red if r.startswith("reopen from")] == sorted(
        f"reopen from {model.STATE_NAMES[s]}" for s in range(8) if s != model.RUNNING)
    diagram = svgs(html)[1]
    nodes = [r for r in diagram.iter(f"{SVG}rect") if r.get("stroke") == "#c62828" and r.get("rx") == "10"]
    assert len(nodes) == 7  # every state the device does not leave on reopen


def test_leaks_and_data_out_cells():
    leak = labelled(htmlreport.conform_html(conform.sweep("sim:flags=0x7,bug=v2-config-oob-read")),
                    "register reads and kernel addresses")
    assert red_cells(leak) == [f"region 7, {w}-byte reads" for w in (1, 2, 4, 8)]
    assert any((t.text or "").endswith(" addr") for t in leak.iter(f"{SVG}text"))
    regs = labelled(htmlreport.conform_html(conform.sweep("sim:flags=0x7,bug=v2-rx-uninitialized")),
                    "device registers")
    assert red_cells(regs) == ["RX/TX: data out"]


def test_register_cells_follow_the_structured_outcome():
    result = conform.sweep("sim:flags=0x7")
    rec = next(c for c in result["checks"] if c["check"] == "reg-migrated")
    row = next(r for r in rec["outcome"]["registers"] if r["register"] == "LCR")
    row["dest"] = "7f"
    assert red_cells(labelled(htmlreport.conform_html(result), "device registers")) == ["LCR: written in RUNNING"]


# --------------------------------------------------------------------------- campaign page


def campaign_lines() -> list[dict]:
    rows = []
    for i in range(1, 21):
        if i == 8:
            rows.append({"type": "finding", "kind": "hang", "step": 2, "op": "set 0 PRE_COPY",
                         "arc": "STOP_COPY -set-> PRE_COPY", "expected": "the call returns",
                         "observed": "no return", "file": "crashes/crash-1", "target": "sim:proto=v2,flags=0x7"})
        rows.append({"type": "stats", "execs": 1000 * i, "execs_per_s": 1000.0, "arcs": 10 + i // 2,
                     "findings": int(i >= 8), "elapsed_s": float(i)})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_campaign_page_from_a_jsonl_file(tmp_path):
    src = write_jsonl(tmp_path / "report.jsonl", campaign_lines())
    out = tmp_path / "campaign.html"
    html = htmlreport.campaign_html(src, None, out)
    assert out.read_text() == html
    assert_self_contained(html)
    charts = svgs(html)
    titles = [c.get("aria-label") for c in charts]
    assert {"Executions (total)", "Executions per second", "Protocol arcs covered", "Findings (total)"} <= set(titles)
    for chart in charts:
        assert chart.find(f"{SVG}polyline") is not None
    # the finding is marked at the time the stats first count it
    assert "finding at 8 s" in html
    assert "STOP_COPY -set-> PRE_COPY" in text_of(html) and "1 FINDING" in html


def test_campaign_page_from_rows_and_empty():
    rows = [r for r in campaign_lines() if r["type"] == "stats"]
    html = htmlreport.campaign_html(rows, [])
    assert_self_contained(html)
    assert "NO FINDINGS" in html
    empty = htmlreport.campaign_html([], [])
    assert "no data" in empty and len(svgs(empty)) >= 3


def test_a_long_op_is_cut_with_its_start_in_the_tooltip(tmp_path):
    op = "write 0 data=" + "ab" * 2000
    rows = campaign_lines()
    rows[7] = dict(rows[7], op=op)
    html = htmlreport.campaign_html(write_jsonl(tmp_path / "r.jsonl", rows), None)
    assert op not in text_of(html)
    shown = re.search(r'<span title="(write 0 data=[ab]+\u2026)">(.*?)</span>', html)
    assert shown and len(shown.group(1)) == htmlreport.TITLE_LIMIT
    assert text_of(shown.group(2)).endswith("\u2026") and len(text_of(shown.group(2))) == htmlreport.CELL_LIMIT


def test_report_html_cli(tmp_path, capsys):
    src = write_jsonl(tmp_path / "r.jsonl", campaign_lines())
    out = tmp_path / "r.html"
    assert main(["report-html", "--jsonl", str(src), "--out", str(out)]) == 0
    assert "<svg" in out.read_text()
    # a report directory works too; its migfuzz.jsonl comes first
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    write_jsonl(report_dir / "migfuzz.jsonl", campaign_lines())
    write_jsonl(report_dir / "other.jsonl", ["not json"])
    assert main(["report-html", "--jsonl", str(report_dir), "--out", str(out)]) == 0
    assert "1 FINDING" in out.read_text()
    src.write_text('{"type": "stats"\n')
    assert main(["report-html", "--jsonl", str(src), "--out", str(out)]) == 2
    assert "not JSON" in capsys.readouterr().err


@pytest.mark.parametrize("make_out, why", [
    (lambda tmp: tmp / "no" / "such" / "dir" / "r.html", "no such directory"),
    (lambda tmp: tmp, "is a directory"),
])
def test_report_html_output_problems_are_one_line_usage_errors(tmp_path, capsys, make_out, why):
    src = write_jsonl(tmp_path / "r.jsonl", campaign_lines())
    assert main(["report-html", "--jsonl", str(src), "--out", str(make_out(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_report_html_of_an_empty_directory(tmp_path, capsys):
    assert main(["report-html", "--jsonl", str(tmp_path), "--out", str(tmp_path / "x.html")]) == 2
    assert "no migfuzz.jsonl" in capsys.readouterr().err


def test_a_file_without_any_json_is_an_input_error(tmp_path):
    src = write_jsonl(tmp_path / "x.jsonl", ["not json"])
    with pytest.raises(htmlreport.ReportInputError):
        htmlreport.load_jsonl(src)


# --------------------------------------------------------------------------- resumed campaigns

SIG_HANG = "hang|STOP_COPY -set-> PRE_COPY|set"
SIG_FD = "fd-misuse-accepted|PRE_COPY -set-> RUNNING|read"


def engine_lines() -> list[str]:
    """fuzz.report.JsonlReporter lines of two runs (the second an hour later, each clock from 0):
    the second run finds the first run's defect again and one new one; the last line is cut short."""
    finding = '{{"type": "finding", "time": "{}", "kind": "{}", "arc": "A", "op": "set 0 X", "signature": "{}"{}}}'
    stats = ('{{"type": "stats", "time": "{}", "execs": {}, "execs_per_s": 100.0, "arcs": {}, "findings": {}, '
             '"elapsed_s": {}{}}}')
    return [
        finding.format("2026-01-01T00:00:02.500Z", "hang", SIG_HANG, ', "target": "sim"'),
        stats.format("2026-01-01T00:00:05.000Z", 500, 9, 1, 5.0, ""),
        stats.format("2026-01-01T00:00:10.000Z", 900, 12, 1, 10.0, ', "final": true'),
        finding.format("2026-01-01T01:00:01.000Z", "hang", SIG_HANG, ', "known": true'),
        finding.format("2026-01-01T01:00:03.000Z", "fd-misuse-accepted", SIG_FD, ""),
        stats.format("2026-01-01T01:00:05.000Z", 400, 12, 2, 5.0, ""),
        '{"type": "stats", "time": "2026-01-01T01:00:06.0',
    ]


def test_runs_are_laid_end_to_end(tmp_path):
    src = write_jsonl(tmp_path / "migfuzz.jsonl", engine_lines())
    stats, findings = htmlreport.load_jsonl(tmp_path)
    assert [r["elapsed_s"] for r in stats] == [5.0, 10.0, 15.0]  # the second run continues the first
    assert [r["execs"] for r in stats] == [500, 900, 1300]
    assert [r["run"] for r in stats] == [0, 0, 1]
    assert [(f["run"], f["at"]) for f in findings] == [(0, 2.5), (1, 11.0), (1, 13.0)]
    html = htmlreport.campaign_html(src, None)
    assert "finding at 2.5 s" in html  # from the wall-clock time, not the first stats row
    assert "finding at 13 s" in html and "finding at 11 s" not in html  # the repeat is no new finding
    assert "run 2 starts at 10 s" in html


def test_the_banner_counts_distinct_findings(tmp_path):
    html = htmlreport.campaign_html(write_jsonl(tmp_path / "migfuzz.jsonl", engine_lines()), None)
    assert "2 FINDINGS" in html and "3 FINDINGS" not in html
    assert "2 distinct findings (3 reports)" in html
    table = html[html.index("<h2>Findings (2)</h2>"):]
    assert table.count('<tr class="fail">') == 2 and "2\u00d7" in table


def test_charts_never_go_back_in_time(tmp_path):
    html = htmlreport.campaign_html(write_jsonl(tmp_path / "migfuzz.jsonl", engine_lines()), None)
    for chart in svgs(html):
        line = chart.find(f"{SVG}polyline")
        if line is None:
            continue
        xs = [float(p.split(",")[0]) for p in line.get("points").split()]
        assert xs == sorted(xs), chart.get("aria-label")
        label = chart.get("aria-label")
        if label == "Findings (total)":  # one step per distinct finding, ending at 2
            ys = [float(p.split(",")[1]) for p in line.get("points").split()]
            assert len(set(ys)) == 3


def test_a_killed_run_is_told_apart_by_its_wall_clock(tmp_path):
    """Run 1 is killed at 5 s without a final line; run 2's first line says 8 s, later than 5 s."""
    lines = [
        '{"type": "stats", "time": "2026-01-01T00:00:05.000Z", "execs": 500, "elapsed_s": 5.0}',
        '{"type": "stats", "time": "2026-01-01T02:00:08.000Z", "execs": 800, "elapsed_s": 8.0}',
    ]
    stats, _ = htmlreport.load_jsonl(write_jsonl(tmp_path / "r.jsonl", lines))
    assert [(r["run"], r["elapsed_s"], r["execs"]) for r in stats] == [(0, 5.0, 500), (1, 13.0, 1300)]


def test_rows_without_wall_clock_restart_where_elapsed_goes_back():
    rows = [{"type": "stats", "elapsed_s": t, "execs": 10 * t} for t in (1.0, 2.0, 3.0, 1.0, 2.0)]
    stats, _ = htmlreport.stitch_runs(rows)
    assert [r["elapsed_s"] for r in stats] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r["execs"] for r in stats] == [10.0, 20.0, 30.0, 40.0, 50.0]


def test_coverage_of_a_later_run_does_not_fall_back_to_its_replay():
    # a rig campaign boots again after a kernel panic: the new boot counts kernel PCs and arcs from 0
    rows = [{"type": "stats", "elapsed_s": t, "execs": 10 * t, "arcs": a, "kernel_pcs": k, "execs_per_s": 10}
            for t, a, k in ((1.0, 100, 900), (2.0, 150, 1500), (1.0, 0, 0), (2.0, 160, 1400))]
    stats, _ = htmlreport.stitch_runs(rows)
    assert [r["arcs"] for r in stats] == [100, 150, 150, 160]
    assert [r["kernel_pcs"] for r in stats] == [900, 1500, 1500, 1500]
    assert [r["execs"] for r in stats] == [10.0, 20.0, 30.0, 40.0]  # totals still add up


# --------------------------------------------------------------------------- in a browser

PROBE = """<script>
window.addEventListener('load', function () {
  const out = [];
  for (const frame of document.querySelectorAll('iframe')) {
    const win = frame.contentWindow, doc = frame.contentDocument, root = doc.documentElement;
    const vw = root.clientWidth, bad = [];
    for (const d of doc.querySelectorAll('details')) d.open = true;
    if (root.scrollWidth > vw) bad.push('the page is ' + root.scrollWidth + ' px wide in ' + vw);
    for (const el of doc.body.querySelectorAll('*')) {
      const what = el.tagName + '.' + el.getAttribute('class');
      const r = el.getBoundingClientRect(), p = el.parentElement;
      const pr = p ? p.getBoundingClientRect() : null;
      if (r.width && r.right > vw + 0.5 && !(pr && pr.right > vw + 0.5))
        bad.push(what + ' ends at ' + Math.round(r.right) + ' > ' + vw);
      if (el instanceof win.HTMLElement && el.scrollWidth > el.clientWidth + 1 &&
          (win.getComputedStyle(el).overflowX !== 'visible' || el.tagName === 'TD' || el.tagName === 'TH'))
        bad.push(what + ' scrolls sideways: ' + el.scrollWidth + ' > ' + el.clientWidth);
      if (r.width && pr && p !== doc.body && el.tagName !== 'TD' && r.right > pr.right + 0.5 &&
          (el instanceof win.HTMLElement || el instanceof win.SVGSVGElement))
        bad.push(what + ' sticks out of ' + p.tagName + '.' + p.getAttribute('class'));
    }
    out.push({page: frame.getAttribute('name'), width: vw, bad: bad.slice(0, 10)});
  }
  document.body.setAttribute('data-probe', JSON.stringify(out));
});
</script>"""
WIDTHS = (1920, 1280, 800, 640)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is needed to check the pages' layout and was not found: "
                "install it (Debian: apt-get install -y chromium)")


def overflow_in_chromium(pages: dict, widths=WIDTHS) -> list[dict]:
    """Load every page in an iframe of each width (one Chromium run) and report what sticks out:
    the page wider than its window, any element ending past the window's right edge, a box that
    scrolls sideways, an element wider than its parent (open <details> included)."""
    frames = "".join(f'<iframe name="{name} @ {w} px" width="{w}" height="900" '
                     f'srcdoc="{htmllib.escape(text, quote=True)}"></iframe>' for name, text in pages.items()
                     for w in widths)
    with tempfile.TemporaryDirectory() as tmp:
        host = Path(tmp) / "host.html"
        host.write_text(f"<!DOCTYPE html><html><body>{frames}{PROBE}</body></html>")
        proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", "--dump-dom",
                               host.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<body data-probe="([^"]*)"', proc.stdout)
    assert found, f"chromium exit {proc.returncode}; no probe result\n{proc.stderr[-3000:]}"
    return json.loads(htmllib.unescape(found.group(1)))


def test_no_page_scrolls_sideways_in_chromium(tmp_path):
    long_op = "write 0 data=" + "5a" * 1500
    rows = campaign_lines()
    rows[7] = dict(rows[7], op=long_op, file="crashes/crash-" + "0123456789abcdef" * 4)
    campaign = htmlreport.campaign_html(write_jsonl(tmp_path / "a.jsonl", rows), None)
    resumed = htmlreport.campaign_html(write_jsonl(tmp_path / "b.jsonl", engine_lines()), None)
    pages = {
        "conform v2": htmlreport.conform_html(conform.sweep("sim:flags=0x7,bug=v2-p2p-arc-missing")),
        "conform v1": htmlreport.conform_html(conform.sweep("sim:proto=v1,bug=v1-error-writable")),
        "conform registers": htmlreport.conform_html(conform.sweep("sim:flags=0x7,bug=v2-register-not-migrated")),
        "campaign": campaign,
        "resumed campaign": resumed,
    }
    results = overflow_in_chromium(pages)
    assert len(results) == len(pages) * len(WIDTHS)
    for r in results:
        assert r["width"] > 0.9 * int(r["page"].split("@ ")[1].split()[0]) - 20, r  # the frame had its width
    assert [r for r in results if r["bad"]] == []


def test_the_probe_sees_a_page_that_scrolls_sideways():
    """The check above is not blind: a 600 px picture in a narrower box and a long unbroken word are caught."""
    page = ('<!DOCTYPE html><html><body><div style="width:598px;overflow-x:auto"><svg width="600" height="10">'
            '</svg></div><table><tr><td>' + "x" * 400 + "</td></tr></table></body></html>")
    (result,) = overflow_in_chromium({"bad": page}, widths=(1920,))
    assert any("scrolls sideways" in b for b in result["bad"]) and any("ends at" in b for b in result["bad"])
