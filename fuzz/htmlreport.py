"""Self-contained HTML pictures: the conformance sweep and a fuzzing campaign.

* :func:`conform_html` — one page for a ``migfuzz conform`` result: the
  verdict, the failing checks, the transition matrix as a coloured grid
  (expected vs observed per cell; failing cells red, with a tooltip), the
  state diagram of the advertised flag set (single-hop arcs of
  ``fuzz.model.arcs(flags)`` as arrows, blocked arcs dashed, failing arcs red,
  arcs the device took but must not as red dashed arrows), a bar per check
  group, grids for the device's lifecycle (reset, reopen) and its registers
  (per register and per access width), and every check. Cells and arcs are
  classified from each record's
  structured ``expect`` and ``outcome`` (see :mod:`fuzz.conform`); the
  ``expected``/``observed`` strings are only shown, never read.
* :func:`campaign_html` — one page for a campaign's JSON-lines report
  (``{"type": "stats", ...}`` / ``{"type": "finding", ...}`` lines): line
  charts of executions, speed, protocol arcs, kernel PCs (KCOV) and findings over time, and the
  distinct findings (one per signature). A report appended to by a resumed
  campaign holds several runs, each with its clock starting at 0: they are laid
  end to end (:func:`stitch_runs`).
* :func:`cmd_report_html` — ``migfuzz report-html`` (arguments in ``fuzz.cli``).

Inline CSS and inline SVG only: no scripts, no fonts, no external references,
so the file can be mailed, attached to CI, or opened offline. Every SVG has a
viewBox and scales down to its box (``max-width: 100%``), and long table cells
wrap or are cut with an ellipsis, so no part of a page scrolls sideways.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import sys
from html import escape
from pathlib import Path

from harness.runtime import EXIT_OK, errname
from harness.uapi import V1_STATE_NAMES

from . import model
from .errors import UsageError
from .report import JSONL_NAME, group_findings, job_dirs

# --------------------------------------------------------------------------- shared style

CSS = """
:root { --fail:#c62828; --fail-bg:#ffebee; --pass:#2e7d32; --pass-bg:#e8f5e9; --info:#78909c; --ink:#212121;
        --muted:#607d8b; --line:#cfd8dc; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0; background: #fafafa; overflow-wrap: break-word; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 34px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
p.sub { color: var(--muted); margin: 0 0 14px; }
code, .mono { font-family: "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; font-size: 12.5px; }
.banner { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 18px; padding: 14px 18px; border-radius: 8px;
          margin: 14px 0 8px; border: 1px solid; }
.banner.ok { background: var(--pass-bg); border-color: #a5d6a7; }
.banner.bad { background: var(--fail-bg); border-color: #ef9a9a; }
.banner .big { font-size: 24px; font-weight: 700; letter-spacing: .02em; }
.banner.ok .big { color: var(--pass); } .banner.bad .big { color: var(--fail); }
.counts span { display: inline-block; margin-right: 14px; }
.pill { display: inline-block; min-width: 44px; text-align: center; padding: 1px 8px; border-radius: 10px;
        font-size: 12px; font-weight: 600; }
.pill.fail { background: var(--fail); color: #fff; } .pill.pass { background: #c8e6c9; color: #1b5e20; }
.pill.info { background: #eceff1; color: #455a64; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #eceff1; vertical-align: top; }
th { background: #f5f7f8; font-weight: 600; font-size: 12.5px; color: #455a64; position: sticky; top: 0; }
tr.fail td { background: #fff5f5; }
td.obs { font-weight: 600; }
td.nowrap { white-space: nowrap; }
td.long { overflow-wrap: anywhere; min-width: 8em; }
tr.fail td.obs { color: var(--fail); }
.figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; min-width: 0;
          overflow-x: auto; }
.figure svg { display: block; max-width: 100%; height: auto; }
.legend { color: var(--muted); font-size: 12.5px; margin-top: 6px; }
.legend i { display: inline-block; width: 14px; height: 14px; vertical-align: -2px; margin: 0 4px 0 12px;
            border: 1px solid #b0bec5; border-radius: 3px; }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
.grid2 { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
@media (max-width: 1000px) { .grid2 { grid-template-columns: minmax(0, 1fr); } }
@media (max-width: 700px) { main { padding: 14px 10px 40px; } th, td { padding: 4px 3px; } td.long { min-width: 0; }
                            td.mono { overflow-wrap: anywhere; } .pill { min-width: 0; } }
"""

SVG_FONT = 'font-family="-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"'

ARROW = " \u2192 "
PASS_OK, PASS_REFUSED, PASS_NOOP, FAIL_FILL, INFO_FILL = "#c8e6c9", "#eceff1", "#f7f7f7", "#d32f2f", "#fafafa"


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def _t(x: float, y: float, text: str, size: int = 12, anchor: str = "middle", weight: str = "normal",
       fill: str = "#212121", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="{fill}" {extra}>{escape(text)}</text>')


CELL_LIMIT = 160  # characters of a table cell shown; the rest is in its tooltip
TITLE_LIMIT = 2000  # characters of a tooltip


_BREAK_AFTER = re.compile(r"([|,=/])")


def _breakable(text: str) -> str:
    """Escaped text with a line-break opportunity after | , = / (a list like STOP|RUNNING_P2P|ERROR
    or an op's data=... is one long word to a browser)."""
    return _BREAK_AFTER.sub(r"\1<wbr>", escape(text))


def _cell(text: str, limit: int = CELL_LIMIT) -> str:
    """Table-cell HTML for ``text``: breakable (:func:`_breakable`), and a long one (an op writing
    kilobytes of data) cut with an ellipsis, its start kept in the tooltip."""
    if len(text) <= limit:
        return _breakable(text)
    tip = text if len(text) <= TITLE_LIMIT else text[:TITLE_LIMIT - 1] + "\u2026"
    return f'<span title="{escape(tip)}">{_breakable(text[:limit - 1])}\u2026</span>'


# =========================================================================== conformance page

V2_VALUES = {name: value for value, name in enumerate(model.STATE_NAMES)}
V1_VALUES = {name: value for value, name in V1_STATE_NAMES.items()}


def _abbr(name: str) -> str:
    """A v2 state name short enough for a matrix cell (RUNNING_P2P -> RUN_P2P, PRE_COPY_P2P -> PRE_P2P)."""
    return name.replace("PRE_COPY_P2P", "PRE_P2P").replace("RUNNING", "RUN")


def _bits(value: int) -> str:
    return f"{value:03b}b"


def _state_label(proto: str, name: str | None) -> tuple[str, str]:
    """(main line, small line) for a matrix header (``name``: a record's from/to)."""
    if name is None:
        return "-", ""
    if proto == "v1":
        value = V1_VALUES.get(name)
        return (_bits(value) if value is not None else name), name.replace("RESUMING", "RESUME")
    if name in V2_VALUES:
        return name, f"= {V2_VALUES[name]}"
    return name, "out of range"


def _short_state(proto: str, state: int | None) -> str:
    """A state value (an outcome's ``state``) as a matrix cell shows it."""
    if state is None:
        return "?"
    if proto == "v1":
        return _bits(state) if 0 <= state < 8 else hex(state)
    return _abbr(model.v2_name(state))


# How a failing record departs from the protocol, decided from its structured fields only:
# outcome.status when the judged call never answered, else expect.ok against outcome.accepted.
DEPARTURES = {  # departure -> (matrix cell text, diagram arc label)
    "hang": ("HANG", "HANG"),
    "exception": ("EXCEPTION", "EXCEPTION"),
    "endless": ("NO END", "no end!"),
    "step-failed": ("STEP FAILED", "step failed!"),
    "reset-failed": ("NO RESET", "reset failed!"),
    "not-reached": ("?", "not reached"),
    "not-run": ("?", "not run"),
    "unsupported": ("?", "unsupported"),
    "accepted": ("accepted", "accepted!"),
    "refused": ("refused", "refused!"),
    "wrong": ("wrong", "wrong!"),
}


def departure(c: dict) -> str:
    """A key of :data:`DEPARTURES` for a failing record."""
    exp, out = c["expect"], c["outcome"]
    if out["status"] != "answered":
        return out["status"] if out["status"] in DEPARTURES else "wrong"
    if out["accepted"] and exp["ok"] is False:
        return "accepted"
    if out["accepted"] is False and exp["ok"]:
        return "refused"
    return "wrong"


def _accepted_invalid(c: dict) -> bool:
    return c["verdict"] == "fail" and departure(c) == "accepted"


def _wrong_detail(proto: str, c: dict) -> str:
    """What is wrong in an answer that was neither wrongly accepted nor wrongly refused."""
    exp, out = c["expect"], c["outcome"]
    if exp["states"] is not None and out["state"] is not None and out["state"] not in exp["states"]:
        return f"\u2192 {_short_state(proto, out['state'])}"
    if exp["fd"] is not None and out["fd"] is not None and out["fd"] != exp["fd"]:
        return "+fd" if out["fd"] else "no fd"
    return errname(out["err"]) if out["err"] else ""


def _cell_text(proto: str, c: dict) -> tuple[str, str, str, str]:
    """(fill, text colour, main line, small line) of one matrix cell."""
    exp, out, verdict = c["expect"], c["outcome"], c["verdict"]
    if verdict == "info":
        small = {"not-reached": "not reached", "not-run": "not run", "unsupported": "unsupported"}
        return "url(#hatch)", "#78909c", "?", small.get(out["status"], "info")
    if verdict == "pass":
        if exp["ok"] is False:
            return PASS_REFUSED, "#78909c", "\u2715", "refused"
        if exp.get("noop"):
            return PASS_NOOP, "#90a4ae", "=", "no-op"
        hops = max(len(c["path"]) - 1, 1)
        small = ("+fd" if exp["fd"] else "") + (f" {hops} hops" if hops > 1 else "")
        return PASS_OK, "#1b5e20", "ok", small.strip()
    how = departure(c)
    main = DEPARTURES[how][0]
    got = f"\u2192 {_short_state(proto, out['state'])}" if out["state"] is not None else ""
    if how == "exception":
        small = out.get("exception") or ""
    elif how == "hang":
        small = "no return"
    elif how in ("not-reached", "not-run"):
        small = how.replace("-", " ")
    elif how == "accepted":
        small = got
    elif how == "refused":
        small = f"{errname(out['err'])} {got}".strip()
    else:
        small = _wrong_detail(proto, c)
    return FAIL_FILL, "#ffffff", main, small


def matrix_svg(result: dict) -> str:
    """The arc matrix: rows = from, columns = to, one coloured cell per request."""
    proto = result["protocol"]
    arcs = [c for c in result["checks"] if c["check"] == "arc"]
    if not arcs:
        return "<p>No transition checks.</p>"
    rows: list = []
    cols: list = []
    for c in arcs:
        if c["from"] not in rows:
            rows.append(c["from"])
        if c["to"] not in cols:
            cols.append(c["to"])
    cells = {(c["from"], c["to"]): c for c in arcs}
    cw, ch = (100, 46) if proto == "v2" else (118, 46)
    left, top = 150, 74
    width, height = left + cw * len(cols) + 14, top + ch * len(rows) + 14
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {SVG_FONT} role="img" aria-label="transition matrix">',
           '<defs><pattern id="hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="8" height="8" fill="#fafafa"/>'
           '<line x1="0" y1="0" x2="0" y2="8" stroke="#dfe5e8" stroke-width="4"/></pattern></defs>']
    out.append(_t(left + cw * len(cols) / 2, 16, "requested state (to)", 12, fill="#607d8b", weight="600"))
    out.append(_t(14, top + ch * len(rows) / 2, "current state (from)", 12, fill="#607d8b", weight="600",
                  extra=f'transform="rotate(-90 14 {top + ch * len(rows) / 2:.1f})"'))
    for j, col in enumerate(cols):
        main, small = _state_label(proto, col)
        x = left + cw * j + cw / 2
        out.append(_t(x, top - 30, main, 11.5 if len(main) < 12 else 10.5, weight="600"))
        out.append(_t(x, top - 14, small, 10, fill="#78909c"))
    failing_rows = {c["from"] for c in arcs if c["verdict"] == "fail"}
    unreachable = {c["to"] for c in result["checks"] if c["check"] == "reach" and c["verdict"] == "fail"}
    failing_cols = {c["to"] for c in arcs if c["verdict"] == "fail"}
    for i, row in enumerate(rows):
        main, small = _state_label(proto, row)
        y = top + ch * i
        colour = "#c62828" if row in failing_rows | unreachable else "#212121"
        out.append(_t(left - 10, y + ch / 2 - 2, main, 12, anchor="end", weight="600", fill=colour))
        if row in unreachable:
            small, colour = "unreachable", "#c62828"
        else:
            colour = "#78909c"
        out.append(_t(left - 10, y + ch / 2 + 12, small, 10, anchor="end", fill=colour))
        for j, col in enumerate(cols):
            c = cells.get((row, col))
            x = left + cw * j
            if c is None:
                out.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" fill="#fff" '
                           f'stroke="#eceff1"/>')
                continue
            fill, ink, main_t, small_t = _cell_text(proto, c)
            fail = c["verdict"] == "fail"
            path = ARROW.join(c["path"]) or "(refused)"
            tip = (f"{row} \u2192 {col}  [{c['verdict'].upper()}]\nexpected: {c['expected']}\n"
                   f"observed: {c['observed']}\npath: {path}")
            stroke = 'stroke="#7f0000" stroke-width="3"' if fail else 'stroke="#ffffff" stroke-width="2"'
            out.append(f'<g><title>{escape(tip)}</title>'
                       f'<rect x="{x + 1.5}" y="{y + 1.5}" width="{cw - 3}" height="{ch - 3}" rx="4" fill="{fill}" '
                       f'{stroke}/>')
            out.append(_t(x + cw / 2, y + ch / 2 + (-1 if small_t else 4), main_t, 13 if fail else 14,
                          weight="700" if fail else "600", fill=ink))
            if small_t:
                out.append(_t(x + cw / 2, y + ch / 2 + 14, small_t[:18], 10, fill=ink))
            out.append("</g>")
    # emphasise the headers of failing columns
    for j, col in enumerate(cols):
        if col in failing_cols:
            x = left + cw * j
            out.append(f'<rect x="{x + 3}" y="{top - 6}" width="{cw - 6}" height="3" fill="#c62828"/>')
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- state diagram

V2_POS = {  # (x, y) centres in a 980 x 470 box
    model.PRE_COPY: (250, 70), model.RUNNING: (530, 70), model.ERROR: (820, 70),
    model.PRE_COPY_P2P: (250, 230), model.RUNNING_P2P: (530, 230),
    model.STOP_COPY: (250, 400), model.STOP: (530, 400), model.RESUMING: (820, 400),
}
V1_POS = {
    0b011: (150, 70), 0b001: (430, 70), 0b110: (720, 70),
    0b010: (150, 400), 0b000: (430, 400), 0b100: (720, 400),
    0b101: (960, 170), 0b111: (960, 310),
}
# the save/resume sequences of the v1 header comment (include/uapi/linux/vfio.h, 5.8-5.17)
V1_SEQUENCE_ARCS = ((1, 0), (1, 2), (2, 0), (1, 3), (3, 2), (1, 4), (4, 1))
NODE_W, NODE_H = 150, 46


def _clip(x1, y1, x2, y2, pad: float = 4.0):
    """Move (x1,y1)->(x2,y2) so it starts and ends on the node rectangles' borders."""
    dx, dy = x2 - x1, y2 - y1
    if dx == 0 and dy == 0:
        return x1, y1, x2, y2
    tx = (NODE_W / 2 + pad) / abs(dx) if dx else math.inf
    ty = (NODE_H / 2 + pad) / abs(dy) if dy else math.inf
    t = min(tx, ty)
    return x1 + dx * t, y1 + dy * t, x2 - dx * t, y2 - dy * t


def _arrow(a, b, colour: str, marker: str, dashed: bool = False, offset: float = 0.0, width: float = 1.8,
           label: str = "", label_colour: str = "#37474f", bend: float = 0.0, tip: str = "",
           curve: float = 0.0) -> str:
    (x1, y1), (x2, y2) = a, b
    dx, dy = x2 - x1, y2 - y1
    n = math.hypot(dx, dy) or 1.0
    ox, oy = -dy / n * offset, dx / n * offset
    x1, y1, x2, y2 = _clip(x1 + ox, y1 + oy, x2 + ox, y2 + oy)
    dash = ' stroke-dasharray="7 5"' if dashed else ""
    if bend:
        # leave and enter the nodes on their left sides, curving out by ``bend`` pixels
        (x1, y1), (x2, y2) = (a[0] - NODE_W / 2 - 2, a[1]), (b[0] - NODE_W / 2 - 6, b[1])
        mx, my = min(x1, x2) - bend, (y1 + y2) / 2
        shape = f'<path d="M{x1:.1f},{y1:.1f} Q{mx:.1f},{my:.1f} {x2:.1f},{y2:.1f}" fill="none" '
        lx, ly = (x1 + 2 * mx + x2) / 4 - 10, (y1 + 2 * my + y2) / 4 - 16
    elif curve:
        # a quadratic curve whose control point sits ``curve`` pixels to the side of the midpoint
        mx, my = (x1 + x2) / 2 - dy / n * curve, (y1 + y2) / 2 + dx / n * curve
        shape = f'<path d="M{x1:.1f},{y1:.1f} Q{mx:.1f},{my:.1f} {x2:.1f},{y2:.1f}" fill="none" '
        lx, ly = (x1 + 2 * mx + x2) / 4, (y1 + 2 * my + y2) / 4
    else:
        shape = f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
        lx, ly = (x1 + x2) / 2, (y1 + y2) / 2
    out = [f"<g>{f'<title>{escape(tip)}</title>' if tip else ''}"
           f'{shape}stroke="{colour}" stroke-width="{width}"{dash} marker-end="url(#{marker})"/>']
    if label and not bend:
        # the label sits beside the arrow, on the side of its offset
        side = 1 if offset >= 0 else -1
        lx += -dy / n * 13 * side
        ly += dx / n * 13 * side + 4
    if label:
        out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10.5" text-anchor="middle" fill="{label_colour}" '
                   f'font-weight="600" paint-order="stroke" stroke="#ffffff" stroke-width="3">{escape(label)}</text>')
    out.append("</g>")
    return "".join(out)


def _node(x, y, title: str, sub: str, state: str) -> str:
    styles = {
        "ok": ('fill="#ffffff" stroke="#546e7a" stroke-width="1.6"', "#212121"),
        "fail": ('fill="#ffebee" stroke="#c62828" stroke-width="3"', "#b71c1c"),
        "error": ('fill="#fff8e1" stroke="#8d6e63" stroke-width="1.6" stroke-dasharray="5 4"', "#5d4037"),
        "invalid": ('fill="#f5f5f5" stroke="#b0bec5" stroke-width="1.4" stroke-dasharray="4 4"', "#90a4ae"),
    }
    attrs, ink = styles[state]
    size = 13 if len(title) <= 15 else round(max(9.0, 13 * 15 / len(title)), 1)
    return (f'<rect x="{x - NODE_W / 2:.1f}" y="{y - NODE_H / 2:.1f}" width="{NODE_W}" height="{NODE_H}" rx="10" '
            f'{attrs}/>' + _t(x, y - 2, title, size, weight="700", fill=ink) + _t(x, y + 14, sub, 10, fill="#78909c"))


_MARKERS = (("a-grey", "#546e7a"), ("a-red", "#c62828"), ("a-blue", "#1565c0"), ("a-faint", "#b0bec5"),
            ("a-brown", "#8d6e63"))


def _svg_open(width: int, height: int, label: str) -> list:
    defs = "".join(f'<marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" '
                   f'markerWidth="11" markerHeight="11" orient="auto-start-reverse">'
                   f'<path d="M0,0 L10,5 L0,10 z" fill="{col}"/></marker>'
                   for mid, col in _MARKERS)
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'{SVG_FONT} role="img" aria-label="{escape(label)}"><defs>{defs}</defs>']


def _cell_index(result: dict) -> dict:
    return {(c["from"], c["to"]): c for c in result["checks"] if c["check"] == "arc"}


def _fail_short(c: dict) -> str:
    """The label of a failing arc in the state diagram."""
    return DEPARTURES[departure(c)][1]


def _failing_nodes(result: dict, cells: dict) -> set:
    """States to draw red: wrongly entered (an invalid request accepted into them), or misbehaving
    themselves (a failing request from them other than an accepted invalid one, a failing
    reset/reopen from them, a failing reach into them)."""
    out = set()
    for c in cells.values():
        if c["verdict"] == "fail":
            out.add(c["to"] if _accepted_invalid(c) else c["from"])
    for c in result["checks"]:
        if c["verdict"] == "fail" and c["check"] in ("reset", "reopen"):
            out.add(c["from"])
        if c["verdict"] == "fail" and c["check"] == "reach":
            out.add(c["to"])
    return out


def v2_diagram_svg(result: dict) -> str:
    flags = result["flags"]
    cells = _cell_index(result)
    name = model.STATE_NAMES.__getitem__
    states = [s for s in range(1, 8) if model.supported(flags, s)]
    failing_from = _failing_nodes(result, cells)
    out = _svg_open(980, 470, "state diagram")
    arcs = model.arcs(flags)
    drawn = set()
    for a, b in sorted(arcs):
        c = cells.get((name(a), name(b)))
        fail = c is not None and c["verdict"] == "fail"
        both = (b, a) in arcs or ((b, a) in model.BLOCKED and model.supported(flags, a))
        if (a, b) in model.OPENS_SESSION:
            label, colour, marker = "+fd", "#1565c0", "a-blue"
        elif (a, b) == model.LOAD_HOP:
            label, colour, marker = "load, ends fd", "#546e7a", "a-grey"
        elif (a, b) in model.ENDS_SESSION:
            label, colour, marker = "ends fd", "#546e7a", "a-grey"
        else:
            label, colour, marker = "", "#546e7a", "a-grey"
        if fail:
            label, colour, marker = _fail_short(c), "#c62828", "a-red"
        tip = f"{name(a)} \u2192 {name(b)}" + (f"\nexpected: {c['expected']}\nobserved: {c['observed']}" if c else "")
        out.append(_arrow(V2_POS[a], V2_POS[b], colour, marker, offset=7 if both else 0, width=3 if fail else 1.8,
                          label=label, label_colour=colour, tip=tip))
        drawn.add((a, b))
    for a, b in sorted(model.BLOCKED):
        if not (model.supported(flags, a) and model.supported(flags, b)):
            continue
        c = cells.get((name(a), name(b)))
        fail = c is not None and c["verdict"] == "fail"
        colour, marker = ("#c62828", "a-red") if fail else ("#b0bec5", "a-faint")
        label = (_fail_short(c) if fail else "blocked (EINVAL)")
        # STOP_COPY -> PRE_COPY would cross PRE_COPY_P2P: bend it round the left side
        bend = 150 if (b == model.PRE_COPY and model.supported(flags, model.PRE_COPY_P2P)) else 0
        tip = f"{name(a)} \u2192 {name(b)}: must be refused" + (f"\nobserved: {c['observed']}" if c else "")
        out.append(_arrow(V2_POS[a], V2_POS[b], colour, marker, dashed=True, width=3 if fail else 1.6,
                          offset=0 if bend else 7, bend=bend, label=label, label_colour=colour, tip=tip))
    # arcs a device took although the model refuses them (e.g. SET ERROR accepted)
    for c in cells.values():
        if c["verdict"] != "fail" or not _accepted_invalid(c):
            continue
        a, b = V2_VALUES.get(c["from"]), V2_VALUES.get(c["to"])
        if a is None or b is None:
            continue
        if (a, b) in drawn or a == b or a not in V2_POS or b not in V2_POS:
            continue
        out.append(_arrow(V2_POS[a], V2_POS[b], "#c62828", "a-red", dashed=True, width=2, curve=-70,
                          tip=f"{c['from']} \u2192 {c['to']}: accepted, must be refused"))
    # ERROR: only reset leaves it
    out.append(_arrow(V2_POS[model.ERROR], V2_POS[model.RUNNING], "#8d6e63", "a-brown", dashed=True, width=1.4,
                      label="reset (from any state)", label_colour="#8d6e63", offset=-1))
    for s in [model.ERROR, *states]:
        x, y = V2_POS[s]
        if s == model.ERROR:
            kind = "fail" if "ERROR" in failing_from else "error"
            sub = "0 \u00b7 driver only, never requested"
        else:
            kind = "fail" if name(s) in failing_from else "ok"
            sub = f"{s}" + (" \u00b7 reset state" if s == model.RUNNING else "")
        out.append(_node(x, y, name(s), sub, kind))
    out.append(_t(16, 462, f"flags {flags:#x} ({model.flag_names(flags)}): solid = arcs a driver implements, "
                  "dashed = must be refused; red = the device departs here", 11, anchor="start", fill="#607d8b"))
    out.append("</svg>")
    return "\n".join(out)


def v1_diagram_svg(result: dict) -> str:
    cells = _cell_index(result)
    name = V1_STATE_NAMES.__getitem__
    failing = _failing_nodes(result, cells)
    out = _svg_open(1060, 470, "v1 device_state diagram")
    drawn = set()
    for a, b in V1_SEQUENCE_ARCS:
        c = cells.get((name(a), name(b)))
        fail = c is not None and c["verdict"] == "fail"
        colour, marker = ("#c62828", "a-red") if fail else ("#546e7a", "a-grey")
        both = (b, a) in V1_SEQUENCE_ARCS
        tip = f"{name(a)} \u2192 {name(b)}" + (f"\nexpected: {c['expected']}\nobserved: {c['observed']}" if c else "")
        out.append(_arrow(V1_POS[a], V1_POS[b], colour, marker, offset=7 if both else 0, width=3 if fail else 1.8,
                          label=_fail_short(c) if fail else "", label_colour=colour, tip=tip))
        drawn.add((a, b))
    for c in cells.values():
        if c["verdict"] != "fail":
            continue
        a, b = V1_VALUES.get(c["from"]), V1_VALUES.get(c["to"])
        if a is None or b is None or (a, b) in drawn or a == b:
            continue
        accepted = _accepted_invalid(c)
        out.append(_arrow(V1_POS[a], V1_POS[b], "#c62828", "a-red", dashed=True, width=2, curve=-50,
                          tip=f"{c['from']} \u2192 {c['to']}\nexpected: {c['expected']}\nobserved: {c['observed']}",
                          label="" if accepted else _fail_short(c), label_colour="#c62828"))
    out.append(_arrow(V1_POS[0b110], V1_POS[0b001], "#8d6e63", "a-brown", dashed=True, width=1.4,
                      label="reset", label_colour="#8d6e63", offset=-1))
    for value, (x, y) in V1_POS.items():
        n = name(value)
        if value in model.V1_VALID:
            kind = "fail" if n in failing else "ok"
        elif value == 0b110:
            kind = "fail" if n in failing else "error"
        else:
            kind = "fail" if n in failing else "invalid"
        sub = f"{value:03b}b" + (" \u00b7 invalid" if value in model.V1_INVALID else
                                 " \u00b7 driver only" if value == 0b110 else "")
        out.append(_node(x, y, n, sub, kind))
    out.append(_t(16, 462, "solid = the v1 header's sequences (any valid -> valid write must work); dashed boxes = "
                  "never writable; red = the device departs here", 11, anchor="start", fill="#607d8b"))
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- lifecycle and registers

LIFECYCLE_CHECKS = ("reset", "reopen", "reopen-round-trip")
VERDICT_FILL = {"pass": PASS_OK, "fail": FAIL_FILL, "info": INFO_FILL}
_WORST = {"fail": 0, "info": 1, "pass": 2}
NOT_EQUAL = "\u2260"


def _grid_cell(x: float, y: float, w: float, h: float, verdict: str, main: str, small: str, tip: str) -> str:
    """One cell of a verdict grid (green pass, red fail, grey info) with its tooltip."""
    fail = verdict == "fail"
    ink = "#ffffff" if fail else ("#1b5e20" if verdict == "pass" else "#78909c")
    stroke = 'stroke="#7f0000" stroke-width="2.5"' if fail else 'stroke="#ffffff" stroke-width="2"'
    out = (f'<g><title>{escape(tip)}</title><rect x="{x + 1.5:.1f}" y="{y + 1.5:.1f}" width="{w - 3:.1f}" '
           f'height="{h - 3:.1f}" rx="4" fill="{VERDICT_FILL[verdict]}" {stroke}/>'
           + _t(x + w / 2, y + h / 2 + (-1 if small else 4), main, 12, weight="700" if fail else "600", fill=ink))
    if small:
        out += _t(x + w / 2, y + h / 2 + 13, small[:20], 10, fill=ink)
    return out + "</g>"


def _tip(c: dict, head: str) -> str:
    return f"{head}  [{c['verdict'].upper()}]\nexpected: {c['expected']}\nobserved: {c['observed']}"


def _lifecycle_text(proto: str, c: dict) -> tuple[str, str]:
    """(main, small) of a reset/reopen/reopen-round-trip cell, from the record's structured fields."""
    out, verdict = c["outcome"], c["verdict"]
    if verdict == "info":
        return "?", out["status"].replace("-", " ")
    if out["status"] != "answered":
        return DEPARTURES.get(out["status"], ("wrong",))[0], ""
    notes = []
    if out.get("live_files"):
        notes.append(f"{out['live_files']} live")
    if any(e == 0 for e in out.get("old_fd_err") or ()):
        notes.append("old fd live")
    if out.get("same") is False:
        notes.append("differs")
    if out.get("failed"):
        notes.append(f"{out['failed']} {errname(out['err'])}" if out["err"] else out["failed"])
    got = f"\u2192 {_short_state(proto, out['state'])}" if out["state"] is not None else ""
    if verdict == "pass":
        return "ok", got
    return "wrong", ", ".join(notes) or got


def lifecycle_svg(result: dict) -> str:
    """Reset, close-and-reopen and the round trip after a reopen, one row each, per starting state."""
    proto = result["protocol"]
    recs = [c for c in result["checks"] if c["check"] in LIFECYCLE_CHECKS]
    rows = [g for g in LIFECYCLE_CHECKS if any(c["check"] == g for c in recs)]
    cols: list = []
    for c in recs:
        if c["from"] not in cols:
            cols.append(c["from"])
    cells = {(c["check"], c["from"]): c for c in recs}
    cw, ch, left, top = 100, 44, 150, 46
    width, height = left + cw * len(cols) + 10, top + ch * len(rows) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'{SVG_FONT} role="img" aria-label="device lifecycle">']
    for j, col in enumerate(cols):
        main, small = _state_label(proto, col)
        x = left + cw * j + cw / 2
        out.append(_t(x, top - 24, main, 11.5 if len(main) < 12 else 10, weight="600"))
        out.append(_t(x, top - 9, small, 10, fill="#78909c"))
    for i, row in enumerate(rows):
        y = top + ch * i
        bad = any(c["verdict"] == "fail" for c in recs if c["check"] == row)
        out.append(_t(left - 10, y + ch / 2 + 4, row, 12, anchor="end", weight="600",
                      fill="#c62828" if bad else "#212121"))
        for j, col in enumerate(cols):
            c = cells.get((row, col))
            x = left + cw * j
            if c is None:
                out.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" fill="#fff" '
                           f'stroke="#eceff1"/>')
                continue
            main, small = _lifecycle_text(proto, c)
            out.append(_grid_cell(x, y, cw, ch, c["verdict"], main, small, _tip(c, f"{row} from {col}")))
    out.append("</svg>")
    return "\n".join(out)


def _worst(records: list) -> dict:
    return min(records, key=lambda c: _WORST[c["verdict"]])


def registers_svg(result: dict) -> str:
    """One row per device register the profile declares; columns: reads the same twice
    (reg-observe), hands out only what went in (reg-data-out), and each migration of the
    registers (reg-migrated, reg-while-stopped) compared register by register."""
    checks = result["checks"]
    observe = [c for c in checks if c["check"] == "reg-observe"]
    dataout = [c for c in checks if c["check"] == "reg-data-out"]
    migs = [c for c in checks if c["check"] in ("reg-migrated", "reg-while-stopped")]
    regs: dict = {}  # (region, offset) -> name
    for c in observe + dataout:
        regs.setdefault((c["expect"]["region"], c["expect"]["offset"]), c["expect"]["register"])
    for c in migs:
        for r in c["outcome"].get("registers") or ():
            regs.setdefault((r["region"], r["offset"]), r["register"])
    cols = [("reads twice", None)] * bool(observe) + [("data out", None)] * bool(dataout) + \
        [(f"written in {c['expect'].get('written', '?')}", c) for c in migs]
    cw, ch, left, top = 118, 40, 170, 44
    keys = sorted(regs)
    width, height = left + cw * len(cols) + 10, top + ch * len(keys) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'{SVG_FONT} role="img" aria-label="device registers">']
    for j, (label, _) in enumerate(cols):
        x = left + cw * j + cw / 2
        first, _, rest = label.partition(" in ")
        out.append(_t(x, top - 22 if rest else top - 14, first, 11.5, weight="600"))
        if rest:
            out.append(_t(x, top - 8, "in " + rest, 10, fill="#78909c"))
    for i, key in enumerate(keys):
        region, off = key
        y = top + ch * i
        name = regs[key]
        cells = []
        for label, mig in cols:
            if mig is None:
                group = observe if label == "reads twice" else dataout
                mine = [c for c in group if (c["expect"]["region"], c["expect"]["offset"]) == key]
                if not mine:
                    cells.append(None)
                    continue
                c = _worst(mine)
                out_ = c["outcome"]
                if c["verdict"] == "pass":
                    small = "same" if label == "reads twice" else f"{len(mine)} checks"
                    main = "ok"
                elif c["verdict"] == "info":
                    main, small = "?", out_["status"].replace("-", " ")
                elif out_["status"] != "answered":
                    main, small = DEPARTURES.get(out_["status"], ("wrong",))[0], ""
                elif label == "reads twice":
                    main, small = "changes", f"{out_.get('first')} \u2192 {out_.get('second')}"
                else:
                    stray = out_.get("stray") or []
                    main, small = "wrong", (f"{len(set(stray))} stray byte(s)" if stray else "out of order")
                cells.append((c["verdict"], main, small, _tip(c, f"{name}: {label}")))
                continue
            rows = {(r["region"], r["offset"]): r for r in mig["outcome"].get("registers") or ()}
            r = rows.get(key)
            if r is None:
                if rows:  # compared, but this register is not an observation register
                    cells.append(None)
                    continue
                verdict = mig["verdict"]
                main = "?" if verdict == "info" else ("ok" if verdict == "pass" else
                                                      DEPARTURES.get(mig["outcome"]["status"], ("wrong",))[0])
                cells.append((verdict, main, "", _tip(mig, f"{name}: {label}")))
                continue
            same = r["dest"] is not None and r["dest"] in r["source"]
            src = "/".join(str(v) for v in r["source"])
            cells.append(("pass" if same else "fail", "ok" if same else "differs",
                          f"{r['dest']} {'=' if same else NOT_EQUAL} {src}", _tip(mig, f"{name}: {label}")))
        bad = any(cell is not None and cell[0] == "fail" for cell in cells)
        out.append(_t(left - 10, y + ch / 2 - 1, name, 12, anchor="end", weight="600",
                      fill="#c62828" if bad else "#212121"))
        out.append(_t(left - 10, y + ch / 2 + 12, f"region {region} +{off:#x}", 10, anchor="end", fill="#78909c"))
        for j, cell in enumerate(cells):
            x = left + cw * j
            if cell is None:
                out.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" fill="#fff" '
                           f'stroke="#eceff1"/>')
            else:
                out.append(_grid_cell(x, y, cw, ch, *cell))
    out.append("</svg>")
    return "\n".join(out)


def leaks_svg(result: dict) -> str:
    """Every allowed read of every region, per access width: kernel-address shapes found (reg-leak)."""
    recs = [c for c in result["checks"] if c["check"] == "reg-leak"]
    regions = sorted({c["expect"]["region"] for c in recs})
    widths = sorted({c["expect"]["width"] for c in recs})
    cells = {(c["expect"]["region"], c["expect"]["width"]): c for c in recs}
    cw, ch, left, top = 110, 40, 170, 30
    width, height = left + cw * len(widths) + 10, top + ch * len(regions) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'{SVG_FONT} role="img" aria-label="register reads and kernel addresses">']
    for j, w in enumerate(widths):
        out.append(_t(left + cw * j + cw / 2, top - 10, f"{w}-byte reads", 11.5, weight="600"))
    for i, region in enumerate(regions):
        y = top + ch * i
        bad = any(c["verdict"] == "fail" for c in recs if c["expect"]["region"] == region)
        out.append(_t(left - 10, y + ch / 2 + 4, f"region {region}", 12, anchor="end", weight="600",
                      fill="#c62828" if bad else "#212121"))
        for j, w in enumerate(widths):
            c = cells.get((region, w))
            x = left + cw * j
            if c is None:
                out.append(f'<rect x="{x + 1}" y="{y + 1}" width="{cw - 2}" height="{ch - 2}" fill="#fff" '
                           f'stroke="#eceff1"/>')
                continue
            o = c["outcome"]
            if c["verdict"] == "info" or o["status"] != "answered":
                main, small = ("?" if c["verdict"] == "info" else DEPARTURES.get(o["status"], ("wrong",))[0]), ""
            elif o.get("addresses"):
                main, small = f"{o['addresses']} addr", o["found"][0]["value"] if o.get("found") else ""
            else:
                main, small = "clean", f"{o.get('refused', 0)}/{o.get('reads', 0)} refused"
            out.append(_grid_cell(x, y, cw, ch, c["verdict"], main, small, _tip(c, f"region {region}, {w}-byte reads")))
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- check groups

def groups_svg(result: dict) -> str:
    groups: dict = {}
    for c in result["checks"]:
        g = groups.setdefault(c["check"], {"pass": 0, "fail": 0, "info": 0})
        g[c["verdict"]] += 1
    order = sorted(groups, key=lambda k: (-groups[k]["fail"], list(groups).index(k)))
    bar_w, row_h, left = 560, 22, 190
    height = row_h * len(order) + 10
    width = left + bar_w + 150
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'{SVG_FONT} role="img" aria-label="checks by group">']
    most = max(sum(g.values()) for g in groups.values())
    for i, k in enumerate(order):
        g = groups[k]
        y = 4 + i * row_h
        out.append(_t(left - 10, y + 14, k, 12, anchor="end", weight="600",
                      fill="#c62828" if g["fail"] else "#37474f"))
        x = left
        for verdict, colour in (("fail", "#d32f2f"), ("pass", "#81c784"), ("info", "#cfd8dc")):
            w = bar_w * g[verdict] / most
            if w:
                out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 7}" fill="{colour}">'
                           f'<title>{escape(k)}: {g[verdict]} {verdict}</title></rect>')
                x += w
        text = f"{g['pass']} pass" + (f", {g['fail']} fail" if g["fail"] else "") + \
            (f", {g['info']} info" if g["info"] else "")
        out.append(_t(x + 8, y + 14, text, 11, anchor="start", fill="#c62828" if g["fail"] else "#607d8b"))
    out.append("</svg>")
    return "\n".join(out)


def _checks_table(checks: list, with_path: bool = True) -> str:
    head = "<tr><th>verdict</th><th>check</th><th>from</th><th>to</th><th>expected</th><th>observed</th>" + \
        ("<th>path</th>" if with_path else "") + "</tr>"
    rows = []
    for c in checks:
        v = c["verdict"]
        path = ARROW.join(c["path"]) or "\u2014"
        rows.append(f'<tr class="{v}"><td><span class="pill {v}">{v.upper() if v == "fail" else v}</span></td>'
                    f'<td class="mono">{_cell(c["check"])}</td><td class="mono">{_cell(c["from"] or "-")}</td>'
                    f'<td class="mono">{_cell(c["to"] or "-")}</td><td>{_cell(c["expected"])}</td>'
                    f'<td class="obs">{_cell(c["observed"])}</td>'
                    + (f'<td class="mono">{_cell(path)}</td>' if with_path else "") + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def conform_html(result: dict) -> str:
    """The conformance page for a ``fuzz.conform.sweep`` result, as one HTML string."""
    proto = result["protocol"]
    n = result.get("summary") or {v: sum(1 for c in result["checks"] if c["verdict"] == v)
                                  for v in ("pass", "fail", "info")}
    total = len(result["checks"])
    fails = [c for c in result["checks"] if c["verdict"] == "fail"]
    flags = (f" \u00b7 flags <code>{result['flags']:#x}</code> ({model.flag_names(result['flags'])})"
             if proto == "v2" else "")
    ok = not fails
    body = [f"<h1>Conformance sweep: <code>{escape(result['target'])}</code></h1>",
            f'<p class="sub">protocol {proto}{flags} \u00b7 {total} checks'
            + (f" \u00b7 {result['elapsed_s']:.2f} s" if "elapsed_s" in result else "") + "</p>",
            f'<div class="banner {"ok" if ok else "bad"}"><div class="big">'
            f'{"CONFORMS" if ok else "DOES NOT CONFORM"}</div><div class="counts">'
            f'<span><span class="pill fail">{n["fail"]}</span> fail</span>'
            f'<span><span class="pill pass">{n["pass"]}</span> pass</span>'
            f'<span><span class="pill info">{n["info"]}</span> info (observed, not judged)</span></div></div>']
    if fails:
        body.append(f"<h2>Where the device departs from the protocol ({len(fails)})</h2>")
        body.append(_checks_table(fails))
    body.append("<h2>Transition matrix</h2>")
    body.append('<p class="sub">' + (
        "Every SET MIG_DEVICE_STATE request from every state (reached from a fresh reset along the model's path), "
        "judged against <code>fuzz.model.path / opens_fd</code>. Hover a cell for expected, observed and path."
        if proto == "v2" else
        "Every device_state value written from every state (reached from reset), read back and judged against "
        "<code>fuzz.model.v1_write_allowed</code>. Hover a cell for expected and observed.") + "</p>")
    body.append(f'<div class="figure">{matrix_svg(result)}<div class="legend">'
                f'<i style="background:{PASS_OK}"></i>accepted as required'
                f'<i style="background:{PASS_REFUSED}"></i>refused as required'
                f'<i style="background:{PASS_NOOP}"></i>no-op'
                f'<i style="background:{FAIL_FILL};border-color:#7f0000"></i>departs from the protocol'
                f'<i style="background:repeating-linear-gradient(45deg,#fafafa 0 3px,#dfe5e8 3px 6px)"></i>'
                f'not reached (hover for why; the cause has its own row)</div></div>')
    body.append("<h2>State diagram</h2>")
    body.append(f'<div class="figure">{v2_diagram_svg(result) if proto == "v2" else v1_diagram_svg(result)}</div>')
    if any(c["check"] in ("reopen", "reopen-round-trip") for c in result["checks"]):
        body.append("<h2>Device lifecycle</h2>")
        body.append('<p class="sub">From every state: VFIO_DEVICE_RESET, and closing and opening the device again '
                    "(as QEMU does, no reset): it must come back in its initial state with no session and its old "
                    "data_fds dead; after a reopen in the middle of a session a save and a resume still work.</p>")
        body.append(f'<div class="figure">{lifecycle_svg(result)}</div>')
    if any(c["check"].startswith("reg-") for c in result["checks"]):
        body.append("<h2>Device registers</h2>")
        body.append('<p class="sub">The registers the target\'s device profile declares: side-effect-free reads '
                    "read the same twice, a receive FIFO hands out only the bytes that went in (or its idle value), "
                    "and a migration carries every observation register (destination = source, written while "
                    "running, while stopped, and in the middle of the stop-and-copy stream).</p>")
        if any(c["check"] != "reg-leak" and c["check"].startswith("reg-") for c in result["checks"]):
            body.append(f'<div class="figure">{registers_svg(result)}</div>')
        if any(c["check"] == "reg-leak" for c in result["checks"]):
            body.append('<p class="sub">Every allowed offset read at every allowed width, the reads laid end to end: '
                        "no 8 bytes may have the shape of a kernel address.</p>")
            body.append(f'<div class="figure">{leaks_svg(result)}</div>')
    body.append("<h2>Checks by group</h2>")
    body.append(f'<div class="figure">{groups_svg(result)}</div>')
    body.append("<h2>Every check</h2>")
    seen: list = []
    for c in result["checks"]:
        if c["check"] not in seen:
            seen.append(c["check"])
    for name in sorted(seen, key=lambda k: (not any(c["check"] == k and c["verdict"] == "fail"
                                                    for c in result["checks"]), seen.index(k))):
        group = [c for c in result["checks"] if c["check"] == name]
        nf = sum(1 for c in group if c["verdict"] == "fail")
        badge = f' <span class="pill fail">{nf} fail</span>' if nf else ""
        body.append(f"<details{' open' if nf else ''}><summary><span class=\"mono\">{escape(name)}</span> "
                    f"({len(group)}){badge}</summary>{_checks_table(group)}</details>")
    return _page(f"migfuzz conform {result['target']}", "\n".join(body))


# =========================================================================== campaign page


class ReportInputError(ValueError):
    """The JSON-lines report cannot be read."""


RUN_GAP_S = 2.0  # a stats line whose run started (wall clock - elapsed) this much later starts a new run


def report_file(path) -> Path:
    """The JSON-lines file of ``path``: the file itself, or the report directory's migfuzz.jsonl
    (else its only ``*.jsonl`` file)."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / JSONL_NAME).is_file():
        return path / JSONL_NAME
    files = sorted(path.glob("*.jsonl"))
    if len(files) != 1:
        hint = "; `migfuzz report DIR` merges the job*/ reports of --jobs into one" if job_dirs(path) else ""
        raise ReportInputError((f"no {JSONL_NAME} in this directory" if not files else
                                f"no {JSONL_NAME} and {len(files)} other *.jsonl files in this directory") + hint)
    return files[0]


def read_rows(path) -> list[dict]:
    """The stats and finding lines of a campaign's JSON-lines report, in file order, each a dict
    with its ``type``. A line cut short (a killed campaign) is skipped; a file with no JSON
    object at all is a ReportInputError."""
    path = report_file(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise ReportInputError(e.strerror or str(e)) from None
    rows, bad, good = [], [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {number}: not JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            bad.append(f"line {number}: not a JSON object")
            continue
        good += 1
        kind = row.get("type")
        body = row.get(kind) if isinstance(row.get(kind), dict) else row
        if kind in ("stats", "finding"):
            rows.append(dict(body, type=kind))
    if bad and not good:
        raise ReportInputError(bad[0])
    return rows


def load_jsonl(path) -> tuple[list[dict], list[dict]]:
    """(stats rows, finding rows) of a report, runs laid end to end (:func:`stitch_runs`)."""
    return stitch_runs(read_rows(path))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _timestamp(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _split_runs(rows: list[dict]) -> list[dict]:
    """Number the runs of a report (``run`` on every stats row, file order): a run ends with its
    ``final`` stats line, or where elapsed_s goes back, or where the run's wall-clock start
    (time - elapsed_s) jumps. Returns per run: start (wall clock or None), end (raw elapsed)."""
    runs: list[dict] = []
    last = None
    for row in rows:
        if row["type"] != "stats" or not _number(row.get("elapsed_s")):
            continue
        t = row["elapsed_s"]
        ts = _timestamp(row.get("time"))
        start = ts - t if ts is not None else None
        new = last is None or t < last["elapsed_s"] or bool(last.get("final")) or (
            start is not None and runs[-1]["start"] is not None and abs(start - runs[-1]["start"]) > RUN_GAP_S)
        if new:
            runs.append({"start": start, "end": 0.0})
        elif runs[-1]["start"] is None:
            runs[-1]["start"] = start
        row["run"] = len(runs) - 1
        runs[-1]["end"] = max(runs[-1]["end"], t)
        last = row
    return runs


def _place_findings(rows: list[dict], runs: list[dict]) -> None:
    """Give every finding row its ``run`` and ``run_s`` (seconds into that run) where they can be
    told: from its wall-clock ``time`` (the last run started before it), else its own elapsed
    field (the run it appears in, or the next one if its clock is behind)."""
    current = 0
    last_t = -1.0
    for row in rows:
        if row["type"] == "stats":
            if "run" in row:
                current, last_t = row["run"], row["elapsed_s"]
            continue
        own = next((row[k] for k in ("elapsed_s", "elapsed", "time_s") if _number(row.get(k))), None)
        ts = _timestamp(row.get("time"))
        starts = [(i, r["start"]) for i, r in enumerate(runs) if r["start"] is not None]
        if ts is not None and starts:
            run, start = max(((i, st) for i, st in starts if st <= ts + RUN_GAP_S), default=starts[0],
                             key=lambda p: p[1])
            row["run"], row["run_s"] = run, round(max(ts - start, 0.0), 2)
        elif own is not None:
            run = current + 1 if own < last_t and current + 1 < len(runs) else current
            row["run"], row["run_s"] = run, float(own)
        if "run" in row and runs:
            runs[row["run"]]["end"] = max(runs[row["run"]]["end"], row.get("run_s", 0.0))


def stitch_runs(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """A report appended to by several runs (a resumed campaign) restarts elapsed_s and the
    counters at 0 in each run: lay the runs end to end so time keeps growing and execs add up.

    ``rows``: stats and finding dicts in file order (``type`` "stats"/"finding"). Returns
    (stats, findings), copies: each stats row with ``run``, ``run_start`` (stitched seconds) and
    stitched ``elapsed_s``/``execs``/``findings``; each finding with ``run`` and ``at`` (stitched
    seconds) where known, else the first stats row that counts it gives ``at``."""
    rows = [dict(r) for r in rows]
    runs = _split_runs(rows) or [{"start": None, "end": 0.0}]
    _place_findings(rows, runs)
    offsets, total = [], 0.0
    for r in runs:
        offsets.append(total)
        total += r["end"]
    base: dict = {}
    bases = []
    for i in range(len(runs)):
        bases.append(dict(base))
        last = next((r for r in reversed(rows) if r["type"] == "stats" and r.get("run") == i), {})
        for k in ("execs", "findings"):
            if _number(last.get(k)):
                base[k] = base.get(k, 0) + last[k]
    stats, findings = [], []
    most: dict = {}  # coverage reached so far: a later run replays the corpus from zero
    for row in rows:
        run = row.get("run")
        if row["type"] == "stats":
            if run is not None:
                row["elapsed_s"] = round(row["elapsed_s"] + offsets[run], 3)
                row["run_start"] = offsets[run]
                for k, v in bases[run].items():
                    if _number(row.get(k)):
                        row[k] = row[k] + v
            for k in COVERAGE:
                if _number(row.get(k)):
                    row[k] = most[k] = max(most.get(k, 0), row[k])
            stats.append(row)
        else:
            if run is not None and "run_s" in row:
                row["at"] = round(offsets[run] + row["run_s"], 3)
            findings.append(row)
    ordered = sorted((r for r in stats if _number(r.get("elapsed_s"))), key=lambda r: r["elapsed_s"])
    for i, row in enumerate(findings, 1):
        if "at" not in row:  # no clock of its own: the first stats row that counts it
            at = next((r["elapsed_s"] for r in ordered if _number(r.get("findings")) and r["findings"] >= i), None)
            if at is not None:
                row["at"] = at
    return stats, findings


def _nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1, math.ceil(step))
    first = math.ceil(lo / step) * step
    ticks, v = [], first
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:.4g}"


def line_chart(title: str, xs: list, ys: list, colour: str, width: int = 600, height: int = 240,
               step: bool = False, marks: list | None = None, unit: str = "", runs: list | None = None) -> str:
    """One SVG line chart (x = elapsed seconds); ``marks`` = x positions drawn as red verticals,
    ``runs`` = where the second, third, ... run of a resumed campaign starts (grey verticals)."""
    left, right, top, bottom = 62, 18, 34, 36
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'{SVG_FONT} role="img" aria-label="{escape(title)}">',
           _t(left, 20, title, 13, anchor="start", weight="700")]
    if not xs:
        out.append(_t(width / 2, height / 2, "no data", 13, fill="#90a4ae"))
        out.append("</svg>")
        return "\n".join(out)
    x_hi = max([*xs, *(marks or ()), *(runs or ())])
    x_hi = x_hi if x_hi > 0 else 1
    y_hi = max(max(ys), 1) * 1.08
    xticks = _nice_ticks(0, x_hi)
    yticks = _nice_ticks(0, y_hi, integer=all(float(y).is_integer() for y in ys))
    x_hi, y_hi = max(x_hi, xticks[-1]), max(y_hi, yticks[-1])

    def px(x):
        return left + pw * x / x_hi

    def py(y):
        return top + ph - ph * y / y_hi

    for t in yticks:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eceff1"/>')
        out.append(_t(left - 6, py(t) + 4, _fmt(t), 10.5, anchor="end", fill="#78909c"))
    for t in xticks:
        out.append(_t(px(t), top + ph + 16, _fmt(t), 10.5, fill="#78909c"))
    out.append(_t(left + pw / 2, height - 4, "elapsed (s)", 10.5, fill="#90a4ae"))
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#90a4ae"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#90a4ae"/>')
    for n, r in enumerate(runs or [], 2):
        out.append(f'<line x1="{px(r):.1f}" y1="{top}" x2="{px(r):.1f}" y2="{top + ph}" stroke="#90a4ae" '
                   f'stroke-dasharray="6 3"><title>run {n} starts at {r:g} s</title></line>')
        out.append(_t(px(r) + 3, top + 10, f"run {n}", 10, anchor="start", fill="#90a4ae"))
    for m in marks or []:
        out.append(f'<line x1="{px(m):.1f}" y1="{top}" x2="{px(m):.1f}" y2="{top + ph}" stroke="#e57373" '
                   f'stroke-dasharray="3 3"><title>finding at {m:g} s</title></line>')
    pts = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if step and i:
            pts.append(f"{px(x):.1f},{py(ys[i - 1]):.1f}")
        pts.append(f"{px(x):.1f},{py(y):.1f}")
    area = f"{px(xs[0]):.1f},{py(0):.1f} " + " ".join(pts) + f" {px(xs[-1]):.1f},{py(0):.1f}"
    out.append(f'<polygon points="{area}" fill="{colour}" fill-opacity="0.10"/>')
    out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="2.2" '
               f'stroke-linejoin="round"/>')
    if len(xs) <= 60:
        for x, y in zip(xs, ys, strict=True):
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.6" fill="{colour}">'
                       f'<title>{x:g} s: {y:g}{unit}</title></circle>')
    out.append(_t(left + pw, 20, f"last {_fmt(ys[-1])}{unit}", 12, anchor="end", weight="600", fill=colour))
    out.append("</svg>")
    return "\n".join(out)


CHARTS = (  # stats key, title, colour, step
    ("execs", "Executions (total)", "#1565c0", False),
    ("execs_per_s", "Executions per second", "#6a1b9a", False),
    ("execs_per_cpu_s", "Executions per CPU second", "#4527a0", False),
    ("arcs", "Protocol arcs covered", "#2e7d32", False),
    ("kernel_pcs", "Kernel PCs covered (KCOV)", "#37474f", False),
    ("kernel_pcs_vfio", "Kernel PCs covered: VFIO core", "#5d4037", False),
    ("kernel_pcs_driver", "Kernel PCs covered: the driver", "#ad1457", False),
    ("cov", "Code coverage (edges)", "#00838f", False),
    ("corpus", "Corpus size", "#ef6c00", False),
    ("findings", "Findings (total)", "#c62828", True),
)


# Coverage counters: each run of a resumed campaign (each boot of a rig campaign) counts from zero
# while it replays the corpus; the page shows the most reached so far (a lower bound of the union).
COVERAGE = frozenset({"arcs", "cov", "kernel_pcs", "kernel_pcs_vfio", "kernel_pcs_driver"})
CUMULATIVE = frozenset({"execs", "arcs", "cov", "corpus", "findings", "kernel_pcs", "kernel_pcs_vfio",
                        "kernel_pcs_driver"})


# finding field -> class of its table cell ("long": may be one long token, wraps anywhere)
FINDING_CELL = {"observed": "obs", "kind": "mono", "arc": "mono", "op": "mono long", "file": "mono long"}


def _distinct(findings: list[dict]) -> list[dict]:
    """One entry per finding signature (``fuzz.report.group_findings``: the first report of it,
    with ``count``), in the order they were first made."""
    groups = group_findings([dict(f, type="finding") for f in findings])
    return sorted(groups, key=lambda g: g["at"] if _number(g.get("at")) else math.inf)


def campaign_html(stats_rows, findings, out=None) -> str:
    """The campaign page. ``stats_rows``: a path to the JSON-lines report or its directory (then
    ``findings`` None reads them from it too), or the stats dicts of the report in order, with
    ``findings`` the finding dicts. Writes ``out`` if given; returns the HTML."""
    source = ""
    if isinstance(stats_rows, (str, Path)):
        source = str(stats_rows)
        rows = read_rows(stats_rows)
        if findings is not None:
            rows = [r for r in rows if r["type"] == "stats"] + [dict(f, type="finding") for f in findings]
    else:
        rows = [dict(r, type="stats") for r in stats_rows] + [dict(f, type="finding") for f in findings or ()]
    stats, reports = stitch_runs(rows)
    stats = sorted((r for r in stats if _number(r.get("elapsed_s"))), key=lambda r: r["elapsed_s"])
    found = _distinct(reports)
    marks = [f["at"] for f in found if _number(f.get("at"))]
    nruns = 1 + max((r.get("run", 0) for r in stats), default=0)
    run_starts = sorted({r["run_start"] for r in stats if r.get("run", 0) > 0})
    target = next((f.get("target") for f in found if f.get("target")), "") or \
        next((r.get("target") for r in stats if r.get("target")), "")
    last = stats[-1] if stats else {}
    n = len(found)
    summary = (f"{_fmt(last.get('elapsed_s', 0))} s \u00b7 {_fmt(last.get('execs', 0))} executions \u00b7 "
               f"{last.get('arcs', 0)} protocol arcs \u00b7 "
               + (f"{last['kernel_pcs']} kernel PCs \u00b7 " if _number(last.get("kernel_pcs")) else "")
               + f"{n} distinct finding{'s' if n != 1 else ''}"
               + (f" ({len(reports)} reports)" if len(reports) != n else "")
               + (f" \u00b7 {nruns} runs" if nruns > 1 else "")) if stats else "no stats rows"
    body = [f"<h1>Fuzzing campaign{': <code>' + escape(target) + '</code>' if target else ''}</h1>",
            f'<p class="sub">{escape(summary)}' + (f" \u00b7 from <code>{escape(source)}</code>" if source else "")
            + "</p>",
            f'<div class="banner {"bad" if found else "ok"}"><div class="big">'
            f'{str(n) + " FINDING" + ("S" if n != 1 else "") if found else "NO FINDINGS"}'
            f'</div><div class="counts">red dashed lines in the charts mark when each distinct finding was first made'
            + ("; grey ones where a resumed run starts" if nruns > 1 else "") + "</div></div>"]
    charts = []
    for key, title, colour, step in CHARTS:
        pts = [(r["elapsed_s"], r[key]) for r in stats if _number(r.get(key))]
        if key == "findings" and found and len(marks) == n:
            # exact: one step per distinct finding, at the time it was first made
            end = max([p[0] for p in pts] + marks)
            pts = [(0.0, 0)] + [(t, i) for i, t in enumerate(sorted(marks), 1)] + [(end, n)]
        elif pts and key in CUMULATIVE and pts[0][0] > 0:
            pts.insert(0, (0.0, 0))  # every total starts at 0
        if not pts and key not in ("execs", "arcs", "findings"):
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        charts.append(f'<div class="figure">'
                      f'{line_chart(title, xs, ys, colour, step=step, marks=marks, runs=run_starts)}</div>')
    body.append("<h2>Over time</h2>")
    body.append(f'<div class="grid2">{"".join(charts)}</div>')
    body.append(f"<h2>Findings ({n})</h2>")
    if found:
        keys = ("kind", "arc", "expected", "observed", "op", "step", "file")
        cols = [k for k in keys if any(k in f for f in found)]
        head = "<tr><th>#</th><th>when</th>" + "".join(f"<th>{k}</th>" for k in cols) + "<th>seen</th></tr>"
        rows = []
        for i, f in enumerate(found):
            when = f"{f['at']:g}\u00a0s" if _number(f.get("at")) else "-"
            if nruns > 1 and "run" in f:
                when += f" (run\u00a0{f['run'] + 1})"
            rows.append(f'<tr class="fail"><td>{i + 1}</td><td>{escape(when)}</td>' + "".join(
                f'<td class="{FINDING_CELL.get(k, "")}">{_cell(str(f.get(k, "")))}</td>' for k in cols)
                + f'<td class="nowrap">{f["count"]}\u00d7</td></tr>')
        body.append(f"<table>{head}{''.join(rows)}</table>")
    else:
        body.append("<p>None.</p>")
    html = _page(f"migfuzz campaign {target}", "\n".join(body))
    if out is not None:
        write_output(Path(out), html)
    return html


# =========================================================================== output and the command


def output_file(text: str) -> Path:
    """Where a report goes (``--out``), checked before any work is done: its directory exists and
    is writable, and it is not itself a directory. Problems are UsageErrors (one line)."""
    out = Path(text)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{out}: no such directory: {parent}")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory; give a file name")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"{out}: not writable")
    return out


def write_output(out: Path, text: str) -> None:
    """Write a report; an OSError becomes a UsageError naming the file."""
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{out}: {e.strerror or e}") from None


def cmd_report_html(args) -> int:
    """``migfuzz report-html --jsonl FILE_OR_DIR --out FILE`` (arguments declared in ``fuzz.cli``)."""
    src = Path(args.jsonl)
    if not src.exists():
        raise UsageError(f"{src}: no such file or directory")
    out = output_file(args.out)
    try:
        html = campaign_html(src, None)
    except ReportInputError as e:
        raise UsageError(f"{src}: {e}") from None
    write_output(out, html)
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK
