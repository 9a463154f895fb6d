"""An installed migfuzz (`pip install .`, not editable) works from any directory, with its data.

Seeds, the reproducer runtimes and the rig's scripts are package data loaded with
importlib.resources; before, seeds were found through a path relative to the source tree
and a non-editable install fuzzed with zero seeds, silently.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.program import seed_programs

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_non_editable_install_loads_the_same_seeds(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([str(venv / "bin" / "migfuzz"), "fuzz", "--target", "sim", "--max-time", "3"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    m = re.search(r"\((\d+) seeds\)", run.stderr)
    assert m and int(m.group(1)) == len(seed_programs("v2")) > 0, run.stderr[-2000:]
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import harness, fuzz.seeds; from importlib import resources; "
                           "print(resources.files('harness').joinpath('runtime.c').is_file(), "
                           "resources.files('harness.kernel').joinpath('stage2.sh').is_file(), "
                           "harness.__file__)"], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert site.stdout.split()[:2] == ["True", "True"], site.stdout + site.stderr
    assert str(ROOT) not in site.stdout  # the installed copy, not the source tree


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text.split("## Code map")[0])


def test_ci_runs_the_readme_test_command_verbatim():
    setup_and_fuzz, setup_and_test = readme_commands()[:2]
    assert "migfuzz fuzz" in setup_and_fuzz and "pytest" in setup_and_test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n" + setup_and_test + "\n" in ci, "CI must run the README's test command as its own line"
