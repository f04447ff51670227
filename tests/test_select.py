"""Checkpoint choice on a validation draw (harness/select.py, ``actdistill select``)."""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest

from harness.select import candidates, copy_checkpoint, select_checkpoint, table
from tasks.errors import ExistingOutputError, MissingInputError, UserInputError

TEACHER = "results/checkpoints/teacher-simpler"


@pytest.fixture
def run(tmp_path):
    """A training run folder: the committed teacher as the final checkpoint and as one snapshot."""
    folder = tmp_path / "run"
    shutil.copytree(TEACHER, folder)
    shutil.copytree(TEACHER, folder / "snapshots" / "step-2000")
    (folder / "snapshots" / "step-99").mkdir()  # no config.json: not a candidate
    return folder


def test_candidates_are_the_snapshots_by_step_then_the_final_checkpoint(run):
    found = candidates(run)
    assert [(name, step) for name, step, _ in found] == [("step-2000", 2000), ("final", 9000)]


def test_select_evaluates_every_candidate_on_the_same_states_and_writes_the_choice(run, tmp_path):
    out = tmp_path / "select"
    result = select_checkpoint(run, ["simpler_widowx"], out=out, episodes=2, tasks=["put_carrot_on_plate"],
                               progress=False)
    rows = {r["name"]: r for r in result["candidates"]}
    assert rows["final"]["n"] == rows["step-2000"]["n"] == 2
    # the same weights on the same states: the same outcomes, so a zero paired gap, and the tie goes
    # to the later step
    assert rows["step-2000"]["k"] == rows["final"]["k"]
    assert rows["step-2000"]["vs_final"][0] == 0.0
    assert result["best"]["name"] == "final"
    assert json.loads((out / "selection.json").read_text())["best"]["path"] == str(run)
    assert "**best**" in table(result)
    dest = copy_checkpoint(result["best"]["path"], tmp_path / "best")
    assert (dest / "config.json").exists() and (dest / "model.safetensors").exists()
    with pytest.raises(ExistingOutputError, match="overwrite"):
        copy_checkpoint(result["best"]["path"], tmp_path / "best")


@pytest.mark.parametrize("kwargs,error,match", [
    ({"seed": 0}, UserInputError, "evaluation draw"),
    ({"episodes": 0}, UserInputError, "episodes"),
    ({"plan": "default", "tasks": ["put_carrot_on_plate"]}, UserInputError, "drop --tasks"),
])
def test_select_refuses_bad_options(run, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        select_checkpoint(run, ["simpler_widowx"], out=tmp_path / "s", progress=False, **kwargs)


def test_select_names_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(MissingInputError, match="not a checkpoint folder"):
        candidates(tmp_path)
