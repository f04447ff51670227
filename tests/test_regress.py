"""Regression check: baseline files, the one-sided tests, Holm, and the verb's exit status."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.cli import main
from harness.regress import check, holm, one_sided_p
from harness.results import ResultsStore, make_row
from harness.rollout import EpisodeResult


def write_run(path, counts: dict[str, tuple[int, int]], policy_hash: str = "h1") -> None:
    """A run folder with ``k`` successes out of ``n`` per task (two variants alternating)."""
    rows = []
    for task, (k, n) in counts.items():
        for i in range(n):
            result = EpisodeResult(success=i < k, steps=5, wall_s=0.1, policy_calls=5, policy_ms=[1.0])
            rows.append(
                make_row(
                    result,
                    policy="p",
                    policy_hash=policy_hash,
                    suite="fake_basic",
                    task=task,
                    variant=("base", "dark")[i % 2],
                    episode_index=i // 2,
                    seed=0,
                    render_mode="default",
                    versions={"git_commit": "abc"},
                )
            )
    ResultsStore(path).add(rows)


def test_holm_and_one_sided_tests_match_hand_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    # Fisher, one-sided: 0/5 vs 5/5 -> hypergeometric P(X <= 0) = 1 / C(10, 5)
    assert one_sided_p(0, 5, 5, 5) == pytest.approx(1 / 252)
    assert one_sided_p(5, 5, 0, 5) == pytest.approx(1.0)
    # binomial against an exact baseline rate of 0.5: P(X <= 1 | n=4) = 5/16
    assert one_sided_p(1, 4, 5, 10, test="binomial") == pytest.approx(5 / 16)
    with pytest.raises(ValueError, match="'chi2'.*valid tests: fisher, binomial"):
        one_sided_p(1, 2, 1, 2, test="chi2")


def test_regress_flags_planted_regression_and_passes_a_copy(tmp_path, capsys):
    base_run, new_run = tmp_path / "base", tmp_path / "new"
    write_run(base_run, {"reach": (20, 20), "reach_early": (18, 20), "unreachable": (0, 20)})
    write_run(new_run, {"reach": (8, 20), "reach_early": (17, 20), "unreachable": (0, 20)}, policy_hash="h2")
    baseline = tmp_path / "baselines" / "b.json"

    assert main(["regress", "--run", str(base_run), "--save-baseline", str(baseline)]) == 0
    data = json.loads(baseline.read_text())
    assert data["policy_hash"] == "h1" and data["versions"] == {"git_commit": "abc"}
    assert data["per_task"]["fake_basic/reach_early"] == {"successes": 18, "n": 20, "rate": 0.9}

    copy = tmp_path / "copy"
    shutil.copytree(base_run, copy)
    capsys.readouterr()
    assert main(["regress", "--run", str(copy), "--baseline", str(baseline)]) == 0
    assert "0 of 3 task(s) significantly worse" in capsys.readouterr().out

    assert main(["regress", "--run", str(new_run), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "1 of 3 task(s) significantly worse" in out and ": fake_basic/reach" in out
    reach_line = next(line for line in out.splitlines() if line.startswith("fake_basic/reach "))
    assert "20/20" in reach_line and "8/20" in reach_line and "40.0%" in reach_line and "WORSE" in reach_line

    rows = {r["task"]: r for r in check(new_run, baseline)}
    assert rows["fake_basic/reach"]["p"] < rows["fake_basic/reach"]["p_adj"] < 0.05
    assert not rows["fake_basic/reach_early"]["worse"]


def test_regress_reports_missing_tasks_and_bad_inputs(tmp_path, capsys):
    base_run, new_run = tmp_path / "base", tmp_path / "new"
    write_run(base_run, {"reach": (4, 4), "crash": (0, 4)})
    write_run(new_run, {"reach": (4, 4)})
    baseline = tmp_path / "b.json"
    main(["regress", "--run", str(base_run), "--save-baseline", str(baseline)])
    capsys.readouterr()
    assert main(["regress", "--run", str(new_run), "--baseline", str(baseline)]) == 0
    assert "missing" in capsys.readouterr().out
    assert main(["regress", "--run", str(tmp_path / "none"), "--baseline", str(baseline)]) == 2
    assert "no results in run folder" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["regress", "--run", str(new_run), "--baseline", str(tmp_path / "bad.json")]) == 2
    with pytest.raises(ValueError, match="alpha must be in"):
        check(new_run, baseline, alpha=1.5)
