"""actdistill compare: pooling draws per policy, VM/VA split, Newcombe differences, and its refusals."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.compare import Rate, clustered, compare, difference, format_compare, parse_spec
from harness.results import ResultsStore, make_row
from harness.rollout import EpisodeResult
from harness.stats import wilson


def write_run(folder, seed: int, outcomes: dict[str, list[bool]], policy_hash: str = "h1",
              suite: str = "simpler_google") -> None:
    """One draw: per variant, the listed episode outcomes (episode index = position)."""
    rows = []
    for variant, results in outcomes.items():
        for i, ok in enumerate(results):
            result = EpisodeResult(success=ok, steps=5, wall_s=0.1, policy_calls=5, policy_ms=[1.0])
            rows.append(make_row(result, policy="p", policy_hash=policy_hash, suite=suite, task="t",
                                 variant=variant, episode_index=i, seed=seed, render_mode="fast", versions={}))
    ResultsStore(folder).add(rows)


def test_newcombe_difference_matches_a_hand_computed_case():
    # 56/70 vs 48/80 (Newcombe 1998, example): difference 0.2, hybrid score interval (0.0524, 0.3339)
    d, lo, hi = difference(Rate(56, 70), Rate(48, 80))
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-3) and hi == pytest.approx(0.3339, abs=1e-3)


def test_compare_pools_draws_and_splits_vm_from_va(tmp_path):
    write_run(tmp_path / "t0", 0, {"visual_matching": [True, True, False, True], "lighting": [True, False]})
    write_run(tmp_path / "t12", 12, {"visual_matching": [True, True, True, True], "lighting": [True, True]})
    write_run(tmp_path / "s0", 0, {"visual_matching": [True, False, False, False], "lighting": [False, False]})
    write_run(tmp_path / "s12", 12, {"visual_matching": [False] * 4, "lighting": [False] * 2}, policy_hash="old")
    write_run(tmp_path / "s12", 12, {"visual_matching": [True, True, False, False], "lighting": [True, False]})
    rows = compare([("teacher", [tmp_path / "t0", tmp_path / "t12"]), parse_spec(f"{tmp_path / 's0'},{tmp_path / 's12'}")])
    teacher, student = rows
    assert [(d.k, d.n) for d in teacher["draws"]] == [(4, 6), (6, 6)]
    assert (teacher["vm"].k, teacher["vm"].n, teacher["va"].k, teacher["va"].n) == (7, 8, 3, 4)
    # s12 holds an older set of weights too (hash "old", all failures): only the current rows count
    assert student["name"] == "s0" and (student["all"].k, student["all"].n) == (4, 12)
    assert student["diff"]["all"][0] == pytest.approx(4 / 12 - 10 / 12)
    table = format_compare(rows, "simpler_google")
    assert "| teacher | 66.7% / 100.0% | 87.5% [53, 98] (7/8)" in table and "reference" in table
    assert table.count("\n| s0 |") == 1 and "-50.0 [" in table


def test_clustered_interval_counts_initial_states_not_episodes(tmp_path):
    # one state per variant index: the variants replay episode 0's state, so 11 episodes are 1 state
    shared = {"visual_matching": [True, False, True, False, True, False, True, False, True, False]}
    shared.update({f"look_{j}": [j % 2 == 0] for j in range(10)})  # all at episode index 0
    write_run(tmp_path / "a", 0, shared)
    write_run(tmp_path / "b", 0, {"visual_matching": [True] * 10, **{f"look_{j}": [True] for j in range(10)}})
    a, b = compare([("a", [tmp_path / "a"]), ("b", [tmp_path / "b"])])
    assert a["states"] == 10 and a["all"].n == 20
    est, lo, hi = a["all_clustered"]
    assert est == pytest.approx(a["all"].rate)
    wilson_lo, wilson_hi = a["all"].interval
    assert hi - lo > wilson_hi - wilson_lo  # 20 episodes but only 10 states: a wider interval
    d, lo, hi = b["diff_clustered"]
    assert d == pytest.approx(1.0 - 10 / 20) and lo <= d <= hi
    same = clustered(a["pooled"], a["pooled"])
    assert same == (0.0, 0.0, 0.0)  # paired: a policy against itself differs by exactly 0 in every resample
    assert clustered(a["pooled"]) == a["all_clustered"]  # seeded: reproducible
    est, lo, hi = clustered(b["pooled"])  # every state a success: the bootstrap alone would give [1, 1]
    assert est == 1.0 and hi == 1.0 and lo == pytest.approx(wilson(10, 10)[0])
    table = format_compare([a, b], "simpler_google")
    assert "| 10 | [" in table and "by state" in table
    write_run(tmp_path / "c", 5, {"visual_matching": [True]})
    with pytest.raises(ValueError, match="'c' and 'a' ran different episodes \\(1 only in 'c', 20 only in 'a', "
                                         "e.g. .*'seed': 5.*same plan and seeds"):
        compare([("a", [tmp_path / "a"]), ("c", [tmp_path / "c"])])
    c = compare([("c", [tmp_path / "c"])])[0]
    with pytest.raises(ValueError, match="share no initial state"):
        clustered(c["pooled"], a["pooled"])


def test_compare_refuses_one_draw_twice_a_missing_suite_and_an_empty_spec(tmp_path):
    write_run(tmp_path / "a", 0, {"visual_matching": [True, False]})
    write_run(tmp_path / "b", 0, {"visual_matching": [True, True]})  # the same draw (seed 0) again
    with pytest.raises(ValueError, match="is in both .* pool different draws"):
        compare([("x", [tmp_path / "a", tmp_path / "b"])])
    with pytest.raises(ValueError, match="has no simpler_widowx episodes; its suites: simpler_google"):
        compare([("x", [tmp_path / "a"])], suite="simpler_widowx")
    with pytest.raises(ValueError, match="names no run folder"):
        parse_spec("name=")
    with pytest.raises(FileNotFoundError, match="no episodes.parquet"):
        compare([("x", [tmp_path / "missing"])])


def test_compare_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    write_run(tmp_path / "t", 0, {"visual_matching": [True, True], "lighting": [True, False]})
    write_run(tmp_path / "s", 0, {"visual_matching": [True, False], "lighting": [False, False]})
    out = tmp_path / "c.json"
    assert main(["compare", "--policy", f"teacher={tmp_path / 't'}", "--policy", f"s={tmp_path / 's'}",
                 "--json", str(out)]) == 0
    assert "| s | 25.0% |" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert rows[1]["diff"]["all"]["diff"] == pytest.approx(-0.5) and rows[0]["vm"]["k"] == 2


def test_compare_by_task_pools_each_task_over_draws(tmp_path, capsys):
    write_run(tmp_path / "t0", 0, {"visual_matching": [True, False], "lighting": [True]})
    write_run(tmp_path / "t12", 12, {"visual_matching": [True, True], "lighting": [False]})
    write_run(tmp_path / "s0", 0, {"visual_matching": [False, False]})
    out = tmp_path / "t.json"
    assert main(["compare", "--by", "task", "--policy", f"teacher={tmp_path / 't0'},{tmp_path / 't12'}",
                 "--policy", f"s={tmp_path / 's0'}", "--json", str(out)]) == 0
    assert "| t | 66.7% [30, 90] (4/6) | 0.0% [0, 66] (0/2) |" in capsys.readouterr().out
    assert json.loads(out.read_text())["t"]["teacher"]["k"] == 4


def test_compare_pools_several_suites_and_keeps_their_states_apart(tmp_path):
    # the same task name "t" in two suites: two distinct initial states per episode index, not one
    for name, first, second in (("teacher", [True, True], [True, False]), ("student", [True, False], [False, False])):
        write_run(tmp_path / name, 0, {"default": first}, suite="libero_spatial")
        write_run(tmp_path / name, 0, {"default": second}, suite="libero_goal")
    teacher, student = compare([("teacher", [tmp_path / "teacher"]), ("student", [tmp_path / "student"])],
                               suite="libero_spatial,libero_goal")
    assert (teacher["all"].k, teacher["all"].n) == (3, 4) and teacher["states"] == 4
    assert (student["all"].k, student["all"].n) == (1, 4)
    assert student["diff"]["all"][0] == pytest.approx(-0.5)
    assert student["diff_clustered"][0] == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="has no libero_object episodes; its suites: libero_goal, libero_spatial"):
        compare([("teacher", [tmp_path / "teacher"])], suite="libero_spatial,libero_object")
    with pytest.raises(ValueError, match="several distinct ones"):
        compare([("teacher", [tmp_path / "teacher"])], suite="libero_goal,libero_goal")
