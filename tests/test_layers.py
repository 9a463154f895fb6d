"""The project's structure, checked from the source: layers, cycles, one owner for every fact.

* ``harness`` (device interfaces, layouts, runtime, simulator, kernel access) never imports
  ``fuzz`` (model, programs, executor, oracles, engine, tools, CLI);
* there is no import cycle between modules;
* no project import hides inside a function (the CLI loads command modules with importlib,
  and instrumentation patches functions after import, so nothing needs one);
* no string literal is longer than 50 lines (no program hides in a string);
* state names, errno names, the running and stopped state sets, drain limits, fault kinds
  and exit codes each have exactly one definition.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from fuzz.findings import FINDING_KINDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fuzz", "harness")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


MODULES = modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def resolve(current: str, node: ast.AST) -> set[str]:
    """The project modules an import statement names."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = current.split(".")
            if MODULES[current].name != "__init__.py":
                parts = parts[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    found = set()
    for n in names:
        while n and n not in MODULES:
            n = n.rpartition(".")[0]
        if n and n != current:
            found.add(n)
    return found


def edges() -> dict[str, set[str]]:
    return {m: set().union(*(resolve(m, n) for n in ast.walk(t) if isinstance(n, (ast.Import, ast.ImportFrom))))
            for m, t in TREES.items()}


def test_harness_never_imports_fuzz():
    upward = sorted(f"{m} imports {t}" for m, targets in edges().items() if m.startswith("harness")
                    for t in targets if t.startswith("fuzz"))
    assert upward == []


def test_no_import_cycles():
    graph = edges()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_project_import_inside_a_function():
    hidden = []
    for m, tree in TREES.items():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and resolve(m, node):
                        hidden.append(f"{m}:{node.lineno}")
    assert hidden == []


def test_no_string_literal_longer_than_50_lines():
    long = [f"{m}:{node.lineno} ({node.value.count(chr(10))} lines)" for m, tree in TREES.items()
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count("\n") > 50]
    assert long == []


def definitions(names: set[str]) -> dict[str, list[str]]:
    """Where each of ``names`` is assigned (module or class level) or defined as a function."""
    found: dict[str, list[str]] = {n: [] for n in names}
    for m, tree in TREES.items():
        scopes = [tree.body] + [c.body for c in ast.walk(tree) if isinstance(c, ast.ClassDef)]
        for body in scopes:
            for node in body:
                targets = []
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        targets += [e for e in (t.elts if isinstance(t, ast.Tuple) else [t])]
                elif isinstance(node, ast.AnnAssign):
                    targets = [node.target]
                elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    targets = [node]
                for t in targets:
                    name = getattr(t, "id", None) or getattr(t, "name", None)
                    if name in found:
                        value = getattr(node, "value", None)
                        # a re-export (X = other.X / X = Y) is a use, not a definition
                        if isinstance(value, (ast.Name, ast.Attribute)):
                            continue
                        found[name].append(f"{m}:{node.lineno}")
    return found


SINGLE = {
    "state names": {"V2_STATE_NAMES", "V1_STATE_NAMES", "MigState"},
    "errno names": {"errname"},
    "running and stopped states": {"V2_RUNNING_STATES", "V2_STOPPED_STATES", "V1_SAVING_STATES",
                                   "V1_STOPPED_STATES"},
    "drain limits": {"DRAIN_LIMIT", "DRAIN_CHUNK", "EINTR_RETRIES"},
    "fault kinds": {"FAULT_KINDS", "FAULT_ERRNO"},
    "transport": {"MANGLE_KINDS", "MANGLE_CHUNK", "segments", "mangle"},
    "exit codes": {"EXIT_OK", "EXIT_FINDING", "EXIT_USAGE", "EXIT_UNAVAILABLE", "EXIT_INCONCLUSIVE",
                   "EXIT_INTERRUPTED"},
    "finding kinds": {"KINDS", "FINDING_KINDS"},
}


@pytest.mark.parametrize("concept", sorted(SINGLE))
def test_each_fact_has_one_definition(concept):
    defs = definitions(SINGLE[concept])
    assert {n: len(where) for n, where in defs.items()} == {n: 1 for n in defs}, defs


V2_NAMES = {"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"}


def test_no_second_table_of_state_names():
    """A tuple, list, set or dict of several state names as strings is a second definition
    (harness.uapi holds the one: MigState and V1_STATE_NAMES)."""
    tables = []
    for m, tree in TREES.items():
        if m == "harness.uapi":
            continue
        for node in ast.walk(tree):
            elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else \
                node.values if isinstance(node, ast.Dict) else []
            strings = {e.value for e in elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if len(strings & V2_NAMES) >= 4:
                tables.append(f"{m}:{node.lineno}")
    assert tables == []


def test_the_runtime_is_standalone():
    """harness/runtime.py is written verbatim into reproducers: standard library only."""
    tree = TREES["harness.runtime"]
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"fuzz", "harness", "construct", "atheris"}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))


def test_the_readme_code_map_names_every_module():
    """A newcomer opens the README's code map to know which file to open: every module is in it."""
    text = (ROOT / "README.md").read_text()
    code_map = text[text.index("## Code map"):text.index("## Using it")]
    named = set()
    for cell in re.findall(r"`([^`]+)`", code_map):
        for part in cell.split(", "):
            braces = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", part)
            names = [braces[1] + x + braces[3] for x in braces[2].split(",")] if braces else [part]
            named.update(names)
    missing = [str(p.relative_to(ROOT)) for p in modules().values()
               if p.name != "__init__.py" and str(p.relative_to(ROOT)) not in named
               and f"{p.parent.relative_to(ROOT)}/" not in named]
    assert not missing, f"not in the README's code map: {missing}"


def test_the_readme_lists_every_finding_kind():
    """The README's table of finding kinds (section "## Findings") names exactly fuzz.findings.KINDS."""
    section = (ROOT / "README.md").read_text().split("\n## Findings\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z-]+)` \|", section, re.M)
    assert sorted(listed) == sorted(FINDING_KINDS)


def test_nothing_cites_notes_users_do_not_have():
    """Users get this repository, not the notes it was written from: the product cites kernel
    sources and commits, never PROTOCOL.md, RIG.md, FUZZING.md or their section numbers."""
    cited = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        generated = rel.parts[0] in (".git", ".venv", "build", "crashes") or rel.parts[:2] == ("bench", "results") \
            or rel.parts[0].endswith(".egg-info") or "__pycache__" in rel.parts
        if generated or not path.is_file() or rel.suffix not in (".py", ".c", ".md", ".toml", ".sh", ".txt", ".config"):
            continue
        text = path.read_text(errors="replace")
        for needle in ("PROTOCOL.md", "RIG.md", "FUZZING.md", "PROTOCOL §", "\u00a7"):
            if needle in text and rel != Path("tests/test_layers.py"):
                cited.append(f"{rel}: {needle}")
    assert not cited, cited
