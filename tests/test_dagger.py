"""Expert relabelling: experts recover from states a learner leaves them in, and ``actdistill dagger``
records the expert's labels along the learner's path (harness/dagger.py, tasks/simpler/experts.py)."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

import tasks as suites
from harness.dagger import Relabeller, record_dagger
from harness.rollout import rollout
from tasks.errors import UserInputError

TEACHER = "results/checkpoints/teacher-simpler"


class Drift:
    """Executes the expert's label plus Gaussian noise (std 0.7 action units on the arm), each draw held
    5 steps: a learner that wanders off the expert's path."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.relabel: Relabeller | None = None

    def reset(self) -> None:
        self.t = 0

    def needs_obs_next(self) -> bool:
        return False

    def act(self, obs) -> np.ndarray:
        if self.t % 5 == 0:
            self.draw = self.rng.normal(0.0, 0.7, 6)
        self.t += 1
        action = self.relabel.last_label.copy()
        action[:6] = np.clip(action[:6] + self.draw, -1.0, 1.0)
        return action


class Drop:
    """Executes the expert's label, except that it opens the gripper for 6 steps shortly after the
    fingers first close on ``body``: the object falls out of the hand."""

    def __init__(self, env, body: str):
        self.env, self.body = env, body
        self.relabel: Relabeller | None = None

    def reset(self) -> None:
        self.t, self.since = 0, None

    def needs_obs_next(self) -> bool:
        return False

    def act(self, obs) -> np.ndarray:
        action = self.relabel.last_label.copy()
        if self.since is None and self.env.is_grasped(self.body):
            self.since = self.t
        if self.since is not None and 6 <= self.t - self.since < 12:
            action[6] = -1.0
        self.t += 1
        return action


def _relabelled(env, learner, takeover=None):
    expert = suites.expert(env)
    relabel = Relabeller(learner, expert, takeover=takeover)
    learner.relabel = relabel
    return relabel, expert


@pytest.mark.parametrize("suite", ["simpler_google", "simpler_widowx"])
def test_guards_never_fire_on_the_experts_own_episodes(suite):
    # The guards add replanning only: clean expert episodes (what demonstrations record) are unchanged.
    for task in suites.tasks(suite):
        env = suites.make(suite, task, seed=1)
        try:
            expert = suites.expert(env)
            result = rollout(expert, env, episode_index=0, seed=1)
            assert result.success, task
            assert expert.replans == 0 and expert.skips == 0, task
        finally:
            env.close()


@pytest.mark.parametrize("suite,task", [
    ("simpler_google", "pick_coke_can_horizontal"), ("simpler_google", "move_near"),
    ("simpler_google", "open_top_drawer"), ("simpler_google", "close_middle_drawer"),
    ("simpler_google", "place_apple_in_closed_top_drawer"),
    ("simpler_widowx", "put_carrot_on_plate"), ("simpler_widowx", "stack_green_cube_on_yellow_cube"),
])
def test_expert_solves_the_task_from_where_a_drifting_learner_left_it(suite, task):
    # The learner drives the first 20 steps (the expert labelling all along), then the expert takes over.
    env = suites.make(suite, task, seed=3)
    try:
        for episode in (0, 1):
            learner = Drift(seed=episode)
            relabel, _ = _relabelled(env, learner, takeover=20)
            result = rollout(relabel, env, episode_index=episode, seed=3, perturb=relabel.executed)
            assert result.failure_reason is None
            assert relabel.learner_steps == 20
            assert result.success, (task, episode)
    finally:
        env.close()


@pytest.mark.parametrize("suite,task,body", [
    ("simpler_google", "pick_coke_can_vertical", "coke_can"),
    ("simpler_google", "place_apple_in_closed_top_drawer", "apple"),
    ("simpler_widowx", "stack_green_cube_on_yellow_cube", None),
])
def test_expert_picks_a_dropped_object_up_again(suite, task, body):
    env = suites.make(suite, task, seed=3)
    try:
        body = body or env.unwrapped.task_spec.source
        learner = Drop(env.unwrapped, body)
        relabel, expert = _relabelled(env, learner)
        result = rollout(relabel, env, episode_index=0, seed=3, perturb=relabel.executed)
        assert learner.since is not None  # the object was grasped, then dropped
        assert expert.replans >= 1
        assert result.success
    finally:
        env.close()


def test_record_keeps_the_experts_labels_while_the_env_executes_the_learners_actions():
    env = suites.make("simpler_widowx", "put_carrot_on_plate", seed=3)
    try:
        learner = Drift(seed=0)
        relabel, _ = _relabelled(env, learner)
        executed = []

        def execute(label):
            action = relabel.executed(label)
            executed.append(np.array(action))
            return action

        result = rollout(relabel, env, episode_index=0, seed=3, record=True, perturb=execute)
        labels = result.record["actions"]
        assert labels.shape == (result.steps, 7) and len(executed) == result.steps
        assert np.abs(np.stack(executed)[:, :6] - labels[:, :6]).max() > 0.1  # the noise was executed, not recorded
        assert result.record["expert_target"].shape == (result.steps, 5)
        assert result.record["objects"].shape == (result.steps, 12, 4)
    finally:
        env.close()


def test_a_learner_that_returns_nan_ends_the_episode_as_a_failure():
    class Broken:
        def reset(self):
            pass

        def act(self, obs):
            return np.full(7, np.nan)

    env = suites.make("simpler_widowx", "put_carrot_on_plate", seed=3)
    try:
        relabel = Relabeller(Broken(), suites.expert(env))
        result = rollout(relabel, env, episode_index=0, seed=3, perturb=relabel.executed)
        assert not result.success
        assert "invalid action" in result.failure_reason
    finally:
        env.close()


def test_record_dagger_writes_a_training_dataset_with_failures_kept(tmp_path):
    from tasks.datasets import DemoDataset

    out = tmp_path / "dagger"
    meta = record_dagger(TEACHER, "simpler_google", out, tasks=["open_bottom_drawer"], episodes=2, seed=101,
                         progress=False)
    row = meta["dagger"]["tasks"]["open_bottom_drawer"]
    assert meta["episodes"] == 2 and row["episodes"] == 2  # failed or not, both are kept
    assert row["learner_steps"] == row["steps"] == meta["steps"]  # beta 0: the learner drove every step
    assert meta["dagger"]["policy_hash"].startswith("ckpt-")
    ds = DemoDataset([out], chunk=8)
    item = ds[0]
    assert item["actions"].shape == (8, 7)
    assert "expert_target" in item and "objects" in item
    with pytest.raises(Exception, match="overwrite|exists"):  # never silently replaces a dataset
        record_dagger(TEACHER, "simpler_google", out, tasks=["open_bottom_drawer"], episodes=1, progress=False)


def test_a_teacher_labeller_labels_the_students_states_from_the_given_initial_states(tmp_path):
    """On-policy distillation data: the student drives, the teacher (replanning every step) labels. The first
    label is the teacher's own action on the reset observation of the first initial state asked for."""
    import json

    import pandas as pd

    from harness.evaluate import policy_source

    student = "results/checkpoints/student-simpler-b0.50"
    out = tmp_path / "onpolicy"
    meta = record_dagger(student, "simpler_google", out, tasks=["open_bottom_drawer"], episodes=1, seed=101,
                         first_episode=3, labeller=TEACHER, progress=False)
    d = meta["dagger"]
    assert d["labeller"] == TEACHER and d["labeller_hash"].startswith("ckpt-") and d["first_episode"] == 3
    assert d["labeller_hash"] != d["policy_hash"]
    row = d["tasks"]["open_bottom_drawer"]
    assert row["learner_steps"] == row["steps"] == meta["steps"]  # the student drove every step
    episodes = pd.read_parquet(out / "episodes.parquet")
    assert episodes["episode_index"].tolist() == [3]
    first = np.asarray(pd.read_parquet(out / "steps.parquet")["action"].iloc[0], np.float32)

    env = suites.make("simpler_google", "open_bottom_drawer", seed=101)
    try:
        obs, _ = env.reset(seed=101, options={"episode_index": 3})
        teacher = policy_source(TEACHER, execute=1).build(env)
        teacher.reset()
        want = np.asarray(teacher.act(obs), np.float32)
        expert = suites.expert(env)
        expert.reset()
        scripted = np.asarray(expert.act(obs), np.float32)
    finally:
        env.close()
    np.testing.assert_allclose(first, want, atol=1e-5)
    assert np.abs(first - scripted).max() > 1e-3  # the teacher's label, not the scripted expert's
    assert json.loads((out / "meta.json").read_text())["dagger"]["labeller"] == TEACHER


def test_a_teacher_labeller_admits_suites_the_scripted_expert_cannot_relabel():
    from harness.dagger import check_suite

    with pytest.raises(UserInputError, match="plans once.*--labeller"):
        check_suite("libero_spatial")
    check_suite("libero_spatial", labeller=TEACHER)  # a reactive policy labels any state


@pytest.mark.parametrize("kwargs,match", [
    ({"suite": "libero_spatial"}, "plans once"),
    ({"first_episode": -1}, "first-episode"),
    ({"suite": "simpler_nope"}, "valid suites"),
    ({"beta": 1.5}, "beta"),
    ({"episodes": 0}, "episodes"),
])
def test_record_dagger_rejects_bad_input_before_any_rollout(tmp_path, kwargs, match):
    args = {"suite": "simpler_google", "episodes": 1} | kwargs
    with pytest.raises(UserInputError, match=match):
        record_dagger(TEACHER, args.pop("suite"), tmp_path / "x", progress=False, **args)
    assert not (tmp_path / "x").exists()


def test_cli_dagger_needs_exactly_one_of_suite_and_family(tmp_path, capsys):
    from harness.cli import main

    assert main(["dagger", "--policy", TEACHER, "--out", str(tmp_path / "d")]) == 2
    assert "exactly one" in capsys.readouterr().err


def _gripping_handle(env) -> bool:
    from tasks.simpler.google import HANDLE_REACH, _site

    hand = env.eef_pose()[0]
    return bool(np.linalg.norm(hand - _site(env, "top_handle")) < HANDLE_REACH and env.gripper_opening() < 0.5)


@pytest.mark.parametrize("suite,task,reached", [
    ("simpler_google", "pick_coke_can_vertical", lambda env: env.is_grasped("coke_can")),
    ("simpler_google", "move_near", lambda env: env.is_grasped(env.task_spec.source.name)),
    ("simpler_google", "open_top_drawer", _gripping_handle),
    ("simpler_widowx", "put_carrot_on_plate", lambda env: env.is_grasped(env.task_spec.source)),
])
def test_a_fresh_expert_started_mid_task_continues_from_the_state_not_from_its_plans_start(suite, task, reached):
    # One expert runs until the object (or the handle) is in the hand, then a new expert takes over: its plan
    # starts at "approach with the gripper open", so without the skip predicates its first label would open
    # the fingers and drop what the first one grasped.
    env = suites.make(suite, task, seed=3)
    try:
        raw = env.unwrapped
        obs, _ = env.reset(seed=3, options={"episode_index": 0})
        first = suites.expert(env)
        held_for, steps, done = 0, 0, False
        while held_for < 3:
            obs, _, terminated, truncated, info = env.step(first.act(obs), render=False)
            steps += 1
            held_for = held_for + 1 if reached(raw) else 0
            assert not (terminated or truncated), "the first expert never got the object in hand"
        second = suites.expert(env)
        second.reset()
        label = second.act(obs)
        assert label[6] == 1.0  # keeps the fingers closed
        assert second.skips >= 1
        while not done:
            obs, _, terminated, truncated, info = env.step(second.act(obs), render=False)
            done = terminated or truncated
        assert info["success"]
    finally:
        env.close()
