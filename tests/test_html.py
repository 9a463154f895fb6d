"""The self-contained HTML pictures: the conformance page and the campaign page."""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from fuzz import conform, htmlreport, model
from fuzz.cli import main

SVG_NS = "http://www.w3.org/2000/svg"


def svgs(html: str) -> list[ET.Element]:
    """Every inline <svg> parsed as XML (so each is well formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


def assert_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    lowered = html.lower()
    for needle in ("<script", "<link", "@import", " src=", "href=", "<iframe", "<img"):
        assert needle not in lowered, needle
    # the only URL is the SVG namespace name, which is not fetched
    assert set(re.findall(r"https?://[^\s\"')]+", html)) <= {SVG_NS}
    assert "url(" not in lowered.replace("url(#", "")  # only references to patterns/markers inside the page


@pytest.fixture(scope="module")
def hang_page() -> tuple[dict, str]:
    result = conform.sweep("sim:flags=0x7,bug=v2-precopy-arc-hang")
    return result, htmlreport.conform_html(result)


def test_conform_page_is_one_self_contained_file_with_svg(hang_page):
    _, html = hang_page
    assert_self_contained(html)
    assert len(svgs(html)) >= 3  # matrix, diagram, groups


def test_failing_cells_are_red_with_expected_and_observed_in_the_tooltip(hang_page):
    _, html = hang_page
    matrix = svgs(html)[0]
    cells = [g for g in matrix.iter(f"{{{SVG_NS}}}g") if g.find(f"{{{SVG_NS}}}title") is not None]
    assert len(cells) == 8 * 10  # 7 states + ERROR, to 8 values + 2 out-of-range
    red = [g for g in cells if g.find(f"{{{SVG_NS}}}rect").get("fill") == htmlreport.FAIL_FILL]
    tips = sorted(g.find(f"{{{SVG_NS}}}title").text for g in red)
    assert len(tips) == 2
    assert tips[0].startswith("STOP_COPY \u2192 PRE_COPY  [FAIL]")
    assert "expected: refused, stays STOP_COPY" in tips[0] and "observed: hang" in tips[0]
    texts = [t.text for g in red for t in g.iter(f"{{{SVG_NS}}}text")]
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
    nodes = {t.text for t in diagram.iter(f"{{{SVG_NS}}}text")}
    for s in range(1, 8):
        assert (model.STATE_NAMES[s] in nodes) == model.supported(flags, s)
    assert not any(e.get("stroke") == "#c62828" for e in shapes)  # nothing red on a conforming device


def test_failing_arc_is_red_in_the_diagram():
    result = conform.sweep("sim:flags=0x3,bug=v2-p2p-arc-missing")
    diagram = svgs(htmlreport.conform_html(result))[1]
    red = [g for g in diagram.iter(f"{{{SVG_NS}}}g")
           if any(e.get("stroke") == "#c62828" for e in g) and g.find(f"{{{SVG_NS}}}title") is not None]
    assert any(g.find(f"{{{SVG_NS}}}title").text.startswith("RUNNING \u2192 RUNNING_P2P") for g in red)


def test_v1_page():
    result = conform.sweep("sim:proto=v1,bug=v1-error-writable")
    html = htmlreport.conform_html(result)
    assert_self_contained(html)
    matrix, diagram = svgs(html)[:2]
    assert sum(1 for r in matrix.iter(f"{{{SVG_NS}}}rect") if r.get("fill") == htmlreport.FAIL_FILL) == 6
    assert "110b" in "".join(t.text or "" for t in diagram.iter(f"{{{SVG_NS}}}text"))


def test_conform_cli_writes_html(tmp_path, capsys):
    out = tmp_path / "c.html"
    assert main(["conform", "--target", "sim:proto=v1,bug=v1-accept-101", "--format", "html", "--out", str(out)]) == 1
    html = out.read_text()
    assert_self_contained(html)
    assert "<svg" in html and "DOES NOT CONFORM" in html
    capsys.readouterr()


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


def test_campaign_page_from_a_jsonl_file(tmp_path):
    src = tmp_path / "report.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in campaign_lines()) + "\n")
    out = tmp_path / "campaign.html"
    html = htmlreport.campaign_html(src, None, out)
    assert out.read_text() == html
    assert_self_contained(html)
    charts = svgs(html)
    titles = [c.get("aria-label") for c in charts]
    assert {"Executions (total)", "Executions per second", "Protocol arcs covered", "Findings (total)"} <= set(titles)
    for chart in charts:
        assert chart.find(f"{{{SVG_NS}}}polyline") is not None
    # the finding is marked at the time the stats first count it
    assert "finding at 8 s" in html
    assert "STOP_COPY -set-&gt; PRE_COPY" in html and "1 FINDING" in html


def test_campaign_page_from_rows_and_empty():
    rows = [r for r in campaign_lines() if r["type"] == "stats"]
    html = htmlreport.campaign_html(rows, [])
    assert_self_contained(html)
    assert "NO FINDINGS" in html
    empty = htmlreport.campaign_html([], [])
    assert "no data" in empty and len(svgs(empty)) >= 3


def test_report_html_cli(tmp_path, capsys):
    src = tmp_path / "r.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in campaign_lines()))
    out = tmp_path / "r.html"
    assert main(["report-html", "--jsonl", str(src), "--out", str(out)]) == 0
    assert "<svg" in out.read_text()
    # a directory holding the report works too
    assert main(["report-html", "--jsonl", str(tmp_path), "--out", str(out)]) == 0
    src.write_text('{"type": "stats"\n')
    assert main(["report-html", "--jsonl", str(src), "--out", str(out)]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_report_from_the_engine_reporter_format(tmp_path):
    """fuzz.report.JsonlReporter lines: wall-clock "time" on every line, a final stats line, a last
    line cut short by a kill, and a resumed campaign appending a second run."""
    lines = [
        '{"type": "finding", "time": "2026-01-01T00:00:02.500Z", "kind": "hang", "arc": "A", "target": "sim"}',
        '{"type": "stats", "time": "2026-01-01T00:00:05.000Z", "execs": 500, "execs_per_s": 100.0, "arcs": 9, '
        '"findings": 1, "elapsed_s": 5.0}',
        '{"type": "stats", "time": "2026-01-01T00:00:10.000Z", "execs": 900, "execs_per_s": 90.0, "arcs": 12, '
        '"findings": 1, "elapsed_s": 10.0, "final": true}',
        '{"type": "stats", "time": "2026-01-01T01:00:05.000Z", "execs": 400, "execs_per_s": 80.0, "arcs": 12, '
        '"findings": 0, "elapsed_s": 5.0}',
        '{"type": "stats", "time": "2026-01-01T01:00:06.0',
    ]
    src = tmp_path / "migfuzz.jsonl"
    src.write_text("\n".join(lines))
    stats, findings = htmlreport.load_jsonl(tmp_path)
    assert [r["elapsed_s"] for r in stats] == [5.0, 10.0, 15.0]  # the second run continues the first
    assert [r["execs"] for r in stats] == [500, 900, 1300]
    html = htmlreport.campaign_html(src, None)
    assert "finding at 2.5 s" in html  # from the wall-clock time, not the first stats row


def test_a_file_without_any_json_is_an_input_error(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_text("not json\n")
    with pytest.raises(htmlreport.ReportInputError):
        htmlreport.load_jsonl(src)
