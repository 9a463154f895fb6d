"""The detection benchmark (bench/detect.py) and its baseline searchers (bench/baselines.py): fast checks."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

pytest.importorskip("hypothesis")

import baselines  # noqa: E402
import compare  # noqa: E402
import detect  # noqa: E402
import pruning  # noqa: E402
import throughput  # noqa: E402

from fuzz.codec import encode  # noqa: E402
from fuzz.program import OPS, normalize, seed_programs  # noqa: E402
from harness.sim import BUGS  # noqa: E402


@pytest.mark.parametrize("proto", sorted(OPS))
def test_machine_has_a_rule_per_op_kind(proto):
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import seed as hseed
    from hypothesis.stateful import run_state_machine_as_test

    strategies = baselines.op_strategies(proto)  # raises if an op kind has no strategy
    assert {spec.name for spec in OPS[proto]} <= set(strategies)
    seen = set()

    def on_program(ops):
        for op in ops:
            assert op == normalize(proto, op)
            seen.add(op.code)

    machine = baselines.machine_class(proto, "end", on_program)
    run_state_machine_as_test(hseed(1)(machine), settings=settings(
        max_examples=60, stateful_step_count=20, deadline=None, database=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck)))
    assert {OPS[proto][code].name for code in seen} == {spec.name for spec in OPS[proto]}


def test_variants_cover_the_zoo_and_the_correct_simulator():
    variants = detect.all_variants()
    zoo = {v["variant"] for v in variants if not v["correct"]}
    assert zoo == set(BUGS)
    assert all(v["expected"] == BUGS[v["variant"]].finding for v in variants if not v["correct"])
    assert {v["target"] for v in variants if v["correct"]} == set(detect.CORRECT)
    assert [v["variant"] for v in detect.select_variants("v2-error-*,sim:proto=v1")] == \
        ["v2-error-requestable", "sim:proto=v1"]
    with pytest.raises(SystemExit):
        detect.select_variants("no-such-variant")


def test_campaign_command_takes_migfuzz_options_and_libfuzzer_flags():
    base = detect.campaign_command("migfuzz-noseeds", "sim", 3, 60, "/t")
    assert base[-2:] == ["/t/crashes", "--no-seeds"] and "--" not in base
    flags = detect.campaign_command("migfuzz", "sim", 3, 60, "/t", ("-use_value_profile=1", "-entropic=0"))
    assert flags[-3:] == ["--", "-use_value_profile=1", "-entropic=0"] and "--no-seeds" not in flags
    both = detect.campaign_command("migfuzz", "sim", 3, 60, "/t", ("--instrument", "none", "--", "-entropic=0"))
    assert both[-4:] == ["--instrument", "none", "--", "-entropic=0"]
    assert detect.campaign_command("migfuzz", "sim", 3, 60, "/t", ("--instrument", "none", "--"))[-2:] == \
        ["--instrument", "none"]


def test_hypothesis_finds_error_requestable_quickly():
    t0 = time.monotonic()
    res = baselines.run_hypothesis("sim:proto=v2,bug=v2-error-requestable", 0, time.time() + 20)
    assert res["found"], res
    assert res["kind"] == BUGS["v2-error-requestable"].finding
    assert res["replayed"]
    assert res["crash"].startswith("# migfuzz finding: accepted-invalid")
    assert time.monotonic() - t0 < 20


def test_random_and_hypothesis_stop_at_the_deadline_on_the_correct_simulator():
    for run in (baselines.run_random, baselines.run_hypothesis):
        t0 = time.monotonic()
        res = run("sim", 0, time.time() + 1.0)
        assert not res["found"], res.get("crash")
        assert res["execs"] > 0
        assert time.monotonic() - t0 < 5


def test_detect_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "bench" / "detect.py"), "--variants", "v2-error-requestable,v1-accept-101",
           "--searchers", "random,hypothesis", "--budget", "10", "--seeds", "1", "--out-dir", str(out),
           "--json", "--png", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "detect.json").read_text())
    assert doc["meta"]["budget"] == 10 and doc["meta"]["seeds"] == 1 and "load average" in doc["meta"]["load_before"]
    runs = doc["runs"]
    assert len(runs) == 4
    keys = {"searcher", "variant", "seed", "found", "seconds", "kind", "kind_ok"}
    for r in runs:
        assert keys <= set(r)
        assert r["searcher"] in ("random", "hypothesis") and r["seed"] == 0
        assert r["found"] and r["kind_ok"] and 0 < r["seconds"] <= 10, r
    lines = (out / "detect.md").read_text().splitlines()
    assert proc.stdout.splitlines() == lines
    table = [ln for ln in lines if ln.startswith("| ")]
    assert table[0] == "| variant | expected kind | random | hypothesis |"
    rows = {ln.split(" | ")[0][2:]: ln for ln in table}
    assert set(rows) >= {"v1-accept-101", "v2-error-requestable", "**total** (sum of medians, miss = budget)"}
    assert "(1/1)" in rows["v1-accept-101"] and "(1/1)" in rows["v2-error-requestable"]
    assert (out / "detect.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "detect-runs.jsonl").read_text().splitlines()) == 4
    # re-rendering the saved JSON gives the same table
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "detect.py"), "--render", str(out / "detect.json"),
                            "--out-dir", str(tmp_path / "again")], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout == proc.stdout


def test_summary_and_false_positive_reporting():
    variants = [v for v in detect.all_variants() if v["variant"] in ("v2-error-requestable", "sim")]

    def run(variant, searcher, seed, found, seconds=None, kind=None, budget=60.0):
        correct = variant == "sim"
        return {"searcher": searcher, "variant": variant, "seed": seed, "budget": budget, "found": found,
                "seconds": seconds, "kind": kind, "expected": None if correct else "accepted-invalid",
                "kind_ok": None if correct or not kind else kind == "accepted-invalid",
                "false_positive": correct and kind is not None, "late": False, "error": None,
                "wall_s": seconds or budget, "execs": 100, "cpu_s": 1.0, "crash": "# migfuzz finding: hang\n"}

    runs = [run("v2-error-requestable", "random", 0, True, 1.0, "accepted-invalid"),
            run("v2-error-requestable", "random", 1, True, 3.0, "state-mismatch"),
            run("v2-error-requestable", "random", 2, False),
            run("sim", "random", 0, False, kind="hang")]
    rows = detect.summarize(runs, variants, ["random"])
    cell = rows[0]["cells"]["random"]
    assert (cell["n"], cell["found"], cell["median_s"], cell["kind_ok"]) == (3, 2, 3.0, 1)
    assert detect._cell(cell, "accepted-invalid") == "3.00 s (2/3) †"
    assert rows[1]["cells"]["random"]["false_positives"] == 1
    meta = {"budget": 60.0, "seeds": 3, "commit": "x", "started": "now", "python": "3", "hypothesis": "6",
            "cpus": 2, "jobs": 1, "hyp_check": "step", "load_before": "load average: 1.0"}
    md = detect.markdown(meta, rows, ["random"], runs)
    assert "FALSE POSITIVE 1/1" in md and "## FALSE POSITIVES" in md and "# migfuzz finding: hang" in md
    assert "state-mismatch×1" in md
    assert "| **total** (sum of medians, miss = budget) | | **3.00 s** (2/3 runs, 1/1 variants) |" in md


def test_op_costs_count_every_op_of_every_program(tmp_path):
    progs = [prog for _name, prog in seed_programs("v2")][:3]
    for i, prog in enumerate(progs):
        (tmp_path / f"{i:02}").write_bytes(encode(prog))
    costs = throughput.op_costs_here("sim", str(tmp_path), passes=2)
    made = sum(count for count, _us in costs["ops"].values())
    assert made == pytest.approx(sum(len(p.ops) for p in progs) / len(progs))  # every handler call, timed once
    assert all(us > 0 for _count, us in costs["ops"].values())
    assert 0 < costs["handlers_us"] < costs["program_us"]


def test_op_cost_lines_rank_kinds_by_what_they_add():
    fixed = {"ops": {"set": [2.0, 5.0], "race": [0.5, 20.0], "get": [1.0, 1.0]}, "program_us": 30, "handlers_us": 21}
    ran = {"ops": {"set": [2.0, 5.0], "race": [1.5, 20.0], "get": [3.0, 1.0]}, "program_us": 52, "handlers_us": 43}
    lines = throughput.op_cost_lines(fixed, ran, top=2)
    assert lines[1].split()[0] == "race" and "+20.0 us" in lines[1]  # 1.0 more a program at 20 us
    assert lines[2].split()[0] == "get" and "+2.0 us" in lines[2]
    assert len(lines) == 3  # set adds nothing and is past the top 2


def test_a_sampled_campaign_keeps_every_16th_program_it_ran(tmp_path):
    # The figures on "what the campaign ran" are only as true as this sample: the programs it ran,
    # as it ran them, not the shorter ones its corpus keeps.
    runs = 20 * throughput.SAMPLE_EVERY
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--sampled-campaign",
                           str(tmp_path / "ran"), "fuzz", "--target", "sim", "--runs", str(runs), "--corpus",
                           str(tmp_path / "corpus"), "--crashes", str(tmp_path / "crashes")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = throughput.corpus_inputs(tmp_path / "ran")
    assert len(ran) == runs // throughput.SAMPLE_EVERY
    kept = set(throughput.corpus_inputs(tmp_path / "corpus"))
    assert not set(ran) <= kept  # mutants that found nothing new ran too


def test_compare_takes_the_ratio_within_each_round():
    # The host slows in round 2; this tree is 0.95x in two rounds of three. The ratio of the medians
    # (700 / 1000) would say 0.7x: the drift, not the trees.
    out = compare.summary([1000.0, 400.0, 1000.0], [950.0, 380.0, 700.0])
    assert out["ratio"] == 0.95 and out["rounds"] == 3
    assert out["theirs"] == 1000 and out["ours"] == 700
    assert out["quartiles"][0] < 0.95 <= out["quartiles"][1]
    assert compare.summary([100.0], [110.0])["ratio"] == 1.1  # one round: no quartiles to take


def test_compare_against_a_revision_end_to_end(tmp_path):
    out = tmp_path / "cmp.json"
    before = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "HEAD", "--target", "sim",
                           "--rounds", "2", "--json", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())["sim"]
    assert figures["rounds"] == 2 and figures["theirs"] > 0 and figures["ours"] > 0
    assert proc.stdout.startswith("sim ") and "2 rounds" in proc.stdout
    after = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == before  # its worktree of HEAD is gone


def test_compare_runs_the_instrumented_input_path_on_a_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, (_name, prog) in enumerate(seed_programs("v2")[:20]):
        (corpus / f"{i:03}").write_bytes(encode(prog))
    (corpus / "layout.json").write_text("{}")  # a campaign's stream layout, not a program
    out = tmp_path / "compare.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "HEAD", "--target", "sim",
                           "--rounds", "1", "--instrument", "target", "--corpus", str(corpus), "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["sim"]["rounds"] == 1


def test_compare_says_which_revision_it_cannot_check_out():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "no-such-revision-here"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "compare: cannot check out 'no-such-revision-here' (git said why, above)"


def test_pruned_instrumentation_decides_as_a_counter_on_every_block_does(tmp_path):
    """bench/pruning.py end to end, on the seeds and generated programs of v2 and v1 (the
    benchmark runs 1,500 programs on six targets)."""
    out = tmp_path / "pruning.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pruning.py"), "--target", "sim", "--target",
                           "sim:proto=v1", "--programs", "300", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in json.loads(out.read_text()).values():
        assert r["programs"] == 300 and r["split_alike"] and r["new_coverage_differs_at"] == []
        full, pruned = r["counters_in_all"]
        assert pruned < full  # fewer counters, the same decisions
        every, fewer = r["block_hits_a_program"]
        assert 0 < fewer < every  # and fewer stores: what the pruning is for


def test_pruning_comparison_reports_a_difference():
    same = [[1, 2], [1, 3], [1, 2]]
    assert pruning.compare(same, same)["split_alike"]
    merged = [[1], [1], [1]]  # a pruning that lost the blocks 2 and 3 tell apart
    r = pruning.compare(same, merged)
    assert not r["split_alike"] and r["new_coverage_differs_at"] == [1]
