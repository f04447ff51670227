"""The eval, demos and bench env verbs and the sweep, end to end on the fake suite."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fake_env import register

from harness import sweep
from harness.cli import main


@pytest.fixture
def suite(monkeypatch):
    return register(monkeypatch)


def test_eval_cli_end_to_end(suite, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["eval", "--policy", "expert", "--suite", suite, "--tasks", "reach,2", "--episodes", "3",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fake_basic/reach" in printed and "fake_basic/unreachable" in printed and "overall" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["per_task"]["fake_basic/reach"]["success_rate"] == 1.0
    assert summary["overall"]["n"] == 6
    assert main(args) == 0  # resume: nothing left to run, nothing stored twice
    assert "6 already done, 0 to run" in capsys.readouterr().out
    assert len(pd.read_parquet(out / "episodes.parquet")) == 6


@pytest.mark.parametrize("flag, value, needle", [
    ("--suite", "nope_suite", "unknown suite 'nope_suite'; valid suites: fake_basic"),
    ("--tasks", "reach,flyaway", "unknown task 'flyaway' for suite 'fake_basic'; valid tasks: reach, reach_early"),
    ("--tasks", "9", "task index 9 out of range"),
    ("--variant", "night", "unknown variant 'night' for suite 'fake_basic'; valid variants: base, dark"),
    ("--policy", "missing/ckpt", "'missing/ckpt' is neither 'expert' nor a checkpoint folder"),
])
def test_invalid_names_are_clean_cli_errors(suite, tmp_path, capsys, flag, value, needle):
    args = {"--policy": "expert", "--suite": suite, "--out": str(tmp_path), "--episodes": "1"}
    args[flag] = value
    argv = ["eval", "--no-progress"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("actdistill eval: error:") and needle in err


def test_demos_cli_and_overwrite_protection(suite, tmp_path, capsys):
    out = str(tmp_path / "demos")
    argv = ["demos", "--suite", suite, "--tasks", "reach_early", "--episodes", "2", "--out", out]
    assert main(argv) == 0
    assert "wrote 2 episodes" in capsys.readouterr().out
    assert main(argv) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--variant", "dark"]) == 0
    assert json.loads((tmp_path / "demos" / "meta.json").read_text())["variant"] == "dark"
    assert main(["demos", "--suite", suite, "--variant", "night", "--out", out]) == 2
    assert "valid variants: base, dark" in capsys.readouterr().err


def test_bench_env_prints_one_json_line(suite, capsys):
    assert main(["bench", "env", "--suite", suite, "--task", "reach", "--steps", "15"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["suite"] == suite and result["task"] == "reach" and result["steps"] == 15
    assert result["ms_per_step"] > 0 and result["ms_physics"] > 0 and result["ms_render"] >= 0
    assert result["render_split"] == "difference"  # the fake env has no timings()


def test_sweep_smoke_runs_and_resumes(suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "simpler_suites", lambda: [suite])
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "estimate expert_eval" in out and "stage 1/1: expert_eval" in out and "overall" in out
    df = pd.read_parquet(tmp_path / "smoke" / "expert" / "episodes.parquet")
    assert len(df) == 2 * 2 and set(df["task"]) == {"reach", "reach_early"}
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path)]) == 0
    assert "4 already done, 0 to run" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "smoke" / "expert" / "episodes.parquet")) == 4
