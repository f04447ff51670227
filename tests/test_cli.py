"""The eval, demos and bench env verbs and the sweep, end to end on the fake suite."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path), "--stages", "expert_eval,bogus"]) == 2
    assert "unknown stage(s) bogus; valid stages: expert_eval, models" in capsys.readouterr().err
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path), "--stages", "expert_eval"]) == 0
    out = capsys.readouterr().out
    assert "estimate expert_eval" in out and "stage 1/1: expert_eval" in out and "overall" in out
    df = pd.read_parquet(tmp_path / "smoke" / "expert" / "episodes.parquet")
    smoke = sweep.PROFILES["smoke"]
    assert len(df) == 2 * smoke.episodes and set(df["task"]) == {"reach", "reach_early"}
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path), "--stages", "expert_eval"]) == 0
    assert f"{2 * smoke.episodes} already done, 0 to run" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "smoke" / "expert" / "episodes.parquet")) == 2 * smoke.episodes


def test_eval_cli_with_a_checkpoint(suite, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from test_vla import tiny_vla

    from distill.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", tiny_vla(seed=1))
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["eval", "--policy", str(tmp_path / "ckpt"), "--suite", suite, "--tasks", "reach",
                     "--episodes", "2", "--out", str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    df = pd.read_parquet(out / "episodes.parquet")
    assert len(df) == 2 and df["policy_hash"].str.startswith("ckpt-").all()
    assert (df["failure_reason"].isna()).all() and (df["policy_calls"] == df["steps"]).all()
    info = json.loads(df["info"][0])
    chunk_calls = info["executed_fraction"]["n"]
    assert 1 <= chunk_calls < df["steps"][0]  # the chunk runs open-loop: fewer model calls than steps
    assert info["executed_fraction"]["mean"] == 1.0  # a teacher runs every layer


def test_sweep_latency_hash_follows_the_weights(tmp_path, monkeypatch):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    for folder in (teacher, student):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "loss.png").write_bytes(b"plot")
    monkeypatch.setattr(sweep, "teacher_dir", lambda: teacher)
    first = sweep._latency_hash(str(student))
    (student / "loss.png").write_bytes(b"another plot")  # not weights: the stored figure still counts
    assert sweep._latency_hash(str(student)) == first
    (student / "model.safetensors").write_bytes(b"retrained")
    assert sweep._latency_hash(str(student)) != first
    baseline = f"baseline:random@0.5:{teacher}"
    before = sweep._latency_hash(baseline)
    (teacher / "model.safetensors").write_bytes(b"new teacher")  # a new teacher changes every speedup
    assert sweep._latency_hash(baseline) != before


def test_sweep_libero_policies_stage(suite, tmp_path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    import dataclasses

    from test_vla import tiny_vla

    from distill.checkpoint import save_checkpoint

    monkeypatch.setattr(sweep, "CHECKPOINTS", tmp_path / "ckpts")
    monkeypatch.setattr(sweep, "LIBERO_SUITES", (suite,))
    profile = dataclasses.replace(sweep.PROFILES["smoke"], libero_policy_episodes=1, workers=0)
    ctx = sweep.Context(profile, tmp_path / "runs")
    sweep._libero_policy_run(ctx)  # no LIBERO teacher committed: says so and how to build one
    assert "no LIBERO teacher under" in capsys.readouterr().out and not (tmp_path / "runs").exists()
    save_checkpoint(tmp_path / "ckpts" / "teacher-libero", tiny_vla(seed=1))
    assert [name for name, _ in sweep.libero_policy_specs(profile)] == ["libero-teacher"]
    assert sweep._libero_policy_estimate(ctx) > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep._libero_policy_run(ctx)
    finally:
        torch.set_num_threads(threads)
    df = pd.read_parquet(tmp_path / "runs" / "libero-teacher" / "episodes.parquet")
    assert len(df) == 4 and set(df["suite"]) == {suite}  # one episode per task of the (fake) suite
    assert sweep._libero_policy_estimate(ctx) == 0.0  # all done: resumes to nothing
    assert "libero-teacher" in ctx.summaries


def test_eval_plan_runs_the_sweeps_policy_episodes(suite, tmp_path, capsys):
    smoke = sweep.PROFILES["smoke"]
    out = tmp_path / "run"
    assert main(["eval", "--policy", "expert", "--suite", suite, "--plan", "smoke", "--out", str(out),
                 "--no-progress", "--videos", "0"]) == 0
    df = pd.read_parquet(out / "episodes.parquet")
    assert len(df) == smoke.tasks_per_suite * smoke.policy_episodes and set(df["task"]) == {"reach", "reach_early"}
    assert main(["eval", "--policy", "expert", "--suite", suite, "--plan", "huge", "--out", str(out)]) == 2
    assert "unknown plan 'huge'; valid plans: default, full, smoke" in capsys.readouterr().err
    assert main(["eval", "--policy", "expert", "--suite", suite, "--plan", "smoke", "--tasks", "reach",
                 "--out", str(out)]) == 2
    assert "drop --tasks and --variant" in capsys.readouterr().err


def test_eval_plan_gives_each_variant_episode_its_own_initial_state(suite, tmp_path):
    default = sweep.PROFILES["default"]
    out = tmp_path / "plan"
    assert main(["eval", "--policy", "expert", "--suite", suite, "--plan", "default", "--out", str(out),
                 "--no-progress", "--videos", "0"]) == 0
    df = pd.read_parquet(out / "episodes.parquet")
    for _, rows in df.groupby("task"):  # 5 on the first variant (0-4), then 1 on the other (5)
        assert sorted(rows["episode_index"]) == list(range(default.policy_episodes + default.policy_variant_episodes))
        assert set(rows.loc[rows["episode_index"] >= default.policy_episodes, "variant"]) == {"dark"}
    shared, distinct = tmp_path / "shared", tmp_path / "distinct"
    for folder, extra in ((shared, []), (distinct, ["--states", "distinct"])):
        assert main(["eval", "--policy", "expert", "--suite", suite, "--tasks", "reach", "--variant", "all",
                     "--episodes", "2", "--out", str(folder), "--no-progress", "--videos", "0", *extra]) == 0
    assert sorted(pd.read_parquet(shared / "episodes.parquet")["episode_index"]) == [0, 0, 1, 1]
    assert sorted(pd.read_parquet(distinct / "episodes.parquet")["episode_index"]) == [0, 1, 2, 3]


def test_help_lists_every_verb_with_its_help_line_and_examples(capsys):
    import importlib

    from harness.cli import VERBS

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    for verb, module in VERBS.items():
        assert f"{verb} {importlib.import_module(module).HELP}" in text
    assert "examples: actdistill sweep --profile smoke" in text


@pytest.mark.parametrize("verb", ["sweep", "eval", "compare", "report", "regress", "latency", "demos",
                                  "train-teacher", "distill", "convert", "fit", "probe", "gpu-run"])
def test_every_verb_help_keeps_its_examples_on_their_own_lines(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"    actdistill {verb} ") for line in lines), lines[:12]


def test_bench_target_help_keeps_its_examples_on_their_own_lines(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "env", "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert "    actdistill bench env --suite simpler_google" in lines


def test_an_out_path_that_is_a_file_is_one_clear_line(suite, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--policy", "expert", "--suite", suite, "--out", str(blocker / "run")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --out: '{blocker / 'run'}' cannot be a folder: '{blocker}' is a file" in err
    assert "Traceback" not in err and "Errno" not in err


def test_bugs_show_their_traceback_and_user_errors_do_not(monkeypatch, capsys):
    from harness.commands import eval as eval_verb
    from tasks.errors import UserInputError

    def broken(args):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(eval_verb, "run", broken)
    with pytest.raises(ValueError, match="an internal invariant failed"):
        main(["eval", "--policy", "expert", "--suite", "x"])

    def refuses(args):
        raise UserInputError("--suite 'x' is unknown; valid suites: a, b")

    monkeypatch.setattr(eval_verb, "run", refuses)
    assert main(["eval", "--policy", "expert", "--suite", "x"]) == 2
    assert capsys.readouterr().err == "actdistill eval: error: --suite 'x' is unknown; valid suites: a, b\n"


def test_sweep_latency_stage_times_every_policy_in_one_pass(tmp_path, monkeypatch, capsys):
    """One interleaved pass for the teacher, its student and the baselines: one pass id in every latency.json,
    speedups against the teacher of that pass; a rerun skips it; a retrained student re-times them all."""
    torch = pytest.importorskip("torch")
    import dataclasses

    from test_student import tiny_teacher

    from distill.checkpoint import save_checkpoint
    from distill.routed import StudentVLA, export_student

    root = tmp_path / "ckpts"
    teacher = tiny_teacher(num_layers=4)
    save_checkpoint(root / "teacher-simpler", teacher)
    export_student(StudentVLA.from_teacher(teacher, 0.5), root / "student-simpler-b0.50")
    monkeypatch.setattr(sweep, "CHECKPOINTS", root)
    profile = dataclasses.replace(sweep.PROFILES["smoke"], budgets=(0.5,), baselines=("first_k", "random"),
                                  latency_iters=4)
    ctx = sweep.Context(profile=profile, root=tmp_path / "run")
    sweep._latency_run(ctx)
    names = ["teacher", "student-b0.50", "first_k-b0.50", "random-b0.50"]
    results = {n: json.loads((ctx.root / n / "latency.json").read_text()) for n in names}
    assert len({r["pass"]["id"] for r in results.values()}) == 1
    assert results["teacher"]["speedup"] == 1.0 and results["teacher"]["pass"]["names"] == names
    for r in results.values():
        assert r["speedup"] == pytest.approx(results["teacher"]["median_ms"] / r["median_ms"])
    capsys.readouterr()
    sweep._latency_run(ctx)
    assert "stored (one pass), skipped" in capsys.readouterr().out
    student = StudentVLA.from_teacher(teacher, 0.5)
    torch.nn.init.normal_(student.router.gate.weight)
    export_student(student, root / "student-simpler-b0.50")  # retrained: the whole pass is timed again
    sweep._latency_run(ctx)
    assert "timing them all again in one pass" in capsys.readouterr().out
    again = {n: json.loads((ctx.root / n / "latency.json").read_text())["pass"]["id"] for n in names}
    assert len(set(again.values())) == 1 and again["teacher"] != results["teacher"]["pass"]["id"]


def test_students_of_a_previous_teacher_run_beside_it(tmp_path, monkeypatch):
    """A committed student whose config names another committed teacher brings that teacher into the sweep
    (once, under its folder's name), and the report says whom each student was distilled from."""
    from test_report import write_run

    from harness.report import build_report

    ckpts = tmp_path / "results" / "checkpoints"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "CHECKPOINTS", Path("results/checkpoints"))
    profile = sweep.PROFILES["smoke"]
    for name in ["teacher-simpler", "teacher-simpler-v1"] + [f"student-simpler-b{b:.2f}" for b in profile.budgets]:
        (ckpts / name).mkdir(parents=True)
        (ckpts / name / "model.safetensors").write_bytes(b"w")
    for b in profile.budgets:
        (ckpts / f"student-simpler-b{b:.2f}" / "config.json").write_text(
            json.dumps({"teacher": {"path": "results/checkpoints/teacher-simpler-v1", "hash": "x"}}))
    names = [name for name, _ in sweep.policy_specs(profile)]
    assert names.count("teacher-simpler-v1") == 1 and names[:2] == ["teacher", "teacher-simpler-v1"]
    # the students' own teacher is the reference one: nothing added
    for b in profile.budgets:
        (ckpts / f"student-simpler-b{b:.2f}" / "config.json").write_text(
            json.dumps({"teacher": {"path": "results/checkpoints/teacher-simpler", "hash": "x"}}))
    assert "teacher-simpler-v1" not in [name for name, _ in sweep.policy_specs(profile)]
    # a committed router without graph supervision joins at its budget (the report's ablation table)
    b = profile.budgets[0]
    (ckpts / f"student-simpler-b{b:.2f}-nograph").mkdir()
    (ckpts / f"student-simpler-b{b:.2f}-nograph" / "model.safetensors").write_bytes(b"w")
    assert f"nograph-b{b:.2f}" in [name for name, _ in sweep.policy_specs(profile)]

    runs = []
    for name, meta in [("teacher", {"kind": "teacher"}),
                       ("teacher-simpler-v1", {"kind": "teacher", "method": "previous teacher"}),
                       ("student-b0.50", {"kind": "student", "budget": 0.5, "method": "ActDistill",
                                          "teacher": "results/checkpoints/teacher-simpler-v1"})]:
        write_run(tmp_path / "runs" / name, name, {"pick_can": 1.0}, meta={"policy": name, **meta}, flops=1e9)
        runs.append(tmp_path / "runs" / name)
    build_report(runs, tmp_path / "figures")
    report = (tmp_path / "figures" / "report.md").read_text()
    assert "student-b0.50: distilled from results/checkpoints/teacher-simpler-v1" in report


def test_headless_machines_default_to_egl_and_a_users_choice_is_kept(monkeypatch, capsys):
    import os

    from harness.cli import headless_gl_defaults

    env = {}
    assert headless_gl_defaults(env) == {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    assert env == {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}
    env = {"MUJOCO_GL": "osmesa"}
    assert headless_gl_defaults(env) == {"PYOPENGL_PLATFORM": "egl"} and env["MUJOCO_GL"] == "osmesa"
    env = {"DISPLAY": ":0"}
    assert headless_gl_defaults(env) == {} and env == {"DISPLAY": ":0"}  # a display: GLFW works, leave it
    # the command line sets it before any verb runs (Ray workers inherit it): without it every worker aborts
    for name in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    assert main([]) == 2
    assert os.environ["MUJOCO_GL"] == "egl"
