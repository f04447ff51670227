"""The sweep's replanning axis (harness/sweep.py): the teacher and students at K actions per model call."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pandas as pd

from harness import sweep


def test_the_full_profile_runs_teacher_and_students_at_each_k_and_the_smoke_profile_none():
    names = [name for name, _, _ in sweep.replanning_specs(sweep.PROFILES["full"])]
    previous = [f"{name}-exec1" for name in sweep.previous_teachers(sweep.PROFILES["full"]).values()]
    students = ["student-b0.25-exec1", "student-b0.50-exec1", "student-b0.75-exec1"]
    assert names[:len(previous) + 4] == ["teacher-exec1", *previous, *students]  # a student's own teacher beside it
    assert {k for _, _, k in sweep.replanning_specs(sweep.PROFILES["full"])} == {1, 2, 4}
    assert not any(spec.startswith("baseline:") for _, spec, _ in sweep.replanning_specs(sweep.PROFILES["full"]))
    assert sweep.replanning_specs(sweep.PROFILES["smoke"]) == []


def test_replanning_stage_runs_k_and_the_report_plots_flops_per_step(tmp_path, monkeypatch):
    from harness.report import build_report

    profile = sweep.Profile("tiny", episodes=1, tasks_per_suite=1, variant_episodes=0, policy_episodes=1,
                            budgets=(), execute=(2,))
    monkeypatch.setattr(sweep, "simpler_suites", lambda: ["simpler_widowx"])
    ctx = sweep.Context(profile, tmp_path)
    sweep._replanning_run(ctx)
    run = tmp_path / "teacher-exec2"
    info = json.loads(pd.read_parquet(run / "episodes.parquet")["info"].iloc[0])
    steps = int(pd.read_parquet(run / "episodes.parquet")["steps"].iloc[0])
    assert info["flops"]["n"] == -(-steps // 2)  # a model call every 2 steps
    assert json.loads((run / "meta.json").read_text())["execute"] == 2
    written = {p.name for p in build_report([run], tmp_path / "figures")}
    assert "success_vs_flops_per_step.png" in written
    table = pd.read_csv(tmp_path / "figures" / "suite_summary.csv")
    assert table["actions_per_call"].iloc[0] == steps / -(-steps // 2)
