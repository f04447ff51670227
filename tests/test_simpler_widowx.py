"""The ``simpler_widowx`` suite: every task in every variant, determinism, success rule, expert."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tasks import registry
from tasks.base import PROPRIO_DIM
from tasks.simpler import widowx
from tasks.simpler.env import VARIANTS, SimplerEnv

SUITE = "simpler_widowx"
TASK_NAMES = list(widowx.TASKS)


def make(task: str, variant: str = "visual_matching", seed: int = 0) -> SimplerEnv:
    return SimplerEnv(SUITE, widowx.TASKS[task](), widowx.ARM, variant=variant, seed=seed)


def image_hash(obs: dict) -> str:
    return hashlib.sha256(obs["agentview"].tobytes() + obs["wrist"].tobytes()).hexdigest()


def test_suite_is_registered():
    assert SUITE in registry.suites()
    assert registry.tasks(SUITE) == [
        "put_spoon_on_towel",
        "put_carrot_on_plate",
        "stack_green_cube_on_yellow_cube",
        "put_eggplant_in_basket",
    ]
    env = registry.make(SUITE, "put_eggplant_in_basket")
    assert env.max_steps == 120 and env.instruction == "put eggplant into yellow basket"
    assert all(registry.make(SUITE, t).max_steps == 60 for t in TASK_NAMES[:3])
    with pytest.raises(ValueError, match="put_spoon_on_towel"):
        registry.make(SUITE, "put_spoon_in_towel")


@pytest.mark.parametrize("task", TASK_NAMES)
def test_resets_and_steps_in_every_variant(task):
    for variant in VARIANTS:
        env = make(task, variant)
        obs, info = env.reset(options={"episode_index": 2})
        assert info["success"] is False
        for _ in range(2):
            obs, reward, terminated, truncated, info = env.step(np.array([0.3, -0.2, 0.1, 0, 0, 0.2, -1.0]))
        for key in ("agentview", "wrist"):
            assert obs[key].shape == (128, 128, 3) and obs[key].dtype == np.uint8, (task, variant, key)
            assert obs[key].std() > 5, f"{task}/{variant}: {key} image is blank"
        assert obs["proprio"].shape == (PROPRIO_DIM,) and obs["proprio"].dtype == np.float32
        assert obs["instruction"] == widowx.TASKS[task].instruction
        assert not terminated and not truncated and isinstance(info["success"], bool)
        assert reward == float(info["success"])
        # The task's objects are on the table, inside the arm's workspace.
        src = env.body_pos(env.task_spec.source)
        assert -0.15 <= src[0] <= 0.2 and abs(src[1]) <= 0.25 and 0 < src[2] < 0.05, (task, variant, src)
        env.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_initial_state_is_deterministic(task):
    env_a, env_b = make(task, "distractors_2", seed=5), make(task, "distractors_2", seed=5)
    obs_a, _ = env_a.reset(options={"episode_index": 4})
    obs_b, _ = env_b.reset(options={"episode_index": 4})
    np.testing.assert_array_equal(env_a.data.qpos, env_b.data.qpos)
    np.testing.assert_array_equal(env_a.data.mocap_pos, env_b.data.mocap_pos)
    assert image_hash(obs_a) == image_hash(obs_b)
    qpos_4 = env_a.data.qpos.copy()
    obs_c, _ = env_a.reset(options={"episode_index": 5})
    assert not np.allclose(env_a.data.qpos, qpos_4)
    assert image_hash(obs_c) != image_hash(obs_a)
    env_a.close()
    env_b.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_layout_and_distractors_keep_clear(task):
    env = make(task, "distractors_2")
    spec = env.task_spec
    for ep in range(6):
        env.reset(options={"episode_index": ep})
        src, tgt = env.body_pos(spec.source)[:2], env.body_pos(spec.target)[:2]
        assert np.sign(src[1]) != np.sign(tgt[1]), "source and target share a side"
        assert not spec.success(env), f"episode {ep} starts solved"
        assert not env.is_grasped(spec.source)
        for i in range(env.look.distractors):
            d = env.body_pos(f"distractor{i}")[:2]
            for cx, cy, r in spec.keep_clear:
                assert np.hypot(d[0] - cx, d[1] - cy) > r, (ep, i, d, (cx, cy, r))
    env.close()


def settle(env: SimplerEnv, steps: int = 5) -> None:
    for _ in range(steps):
        env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]), render=False)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_success_rule(task):
    """Teleported onto the target and released: success; beside it or hovering above it: failure."""
    env = make(task)
    spec = env.task_spec
    env.reset(options={"episode_index": 1})
    tgt = env.body_pos(spec.target)
    rest_z = spec._support_height(env) + spec.src_half[2] + 0.002
    env.set_free_body(spec.source, [tgt[0], tgt[1], rest_z])
    settle(env)
    assert env.is_success(), f"{task}: source resting on the target is not a success"
    # Beside the target, on the table.
    env.set_free_body(spec.source, [tgt[0], tgt[1] - np.sign(tgt[1]) * 0.2, spec.src_half[2] + 0.002])
    settle(env)
    assert not env.is_success()
    # Floating well above the target: xy matches but it is not resting on it.
    env.set_free_body(spec.source, [tgt[0], tgt[1], rest_z + 0.08])
    env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]), render=False)
    assert not env.is_success()
    env.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_expert_solves_fixed_episodes(task):
    env = registry.make(SUITE, task, seed=0)
    expert = registry.expert(env)
    for ep in range(3):
        env.reset(options={"episode_index": ep})
        expert.reset()
        lifted = False
        for _ in range(env.max_steps):
            _, _, _, truncated, info = env.step(expert.act(), render=False)
            lifted |= bool(env.body_pos(env.task_spec.source)[2] > 0.05)
            if env.is_grasped(env.task_spec.source):
                assert not info["success"], f"{task} episode {ep}: success while the object is held"
        assert truncated
        assert lifted, f"{task} episode {ep}: the expert never lifted the object"
        assert info["success"], f"{task} episode {ep}: expert failed"
    env.close()


def test_expert_acts_on_the_measured_hand_pose_not_the_hidden_controller_target():
    """A cloned policy sees the hand, never the controller's internal target: the expert must not read it."""
    env = registry.make("simpler_widowx", "put_carrot_on_plate", seed=0)
    env.reset(options={"episode_index": 0})
    expert = registry.expert(env)
    for _ in range(2):
        env.step(expert.act(), render=False)
    first = expert.act()
    env.target_pos = env.target_pos + 0.03  # move the hidden target; the observation is unchanged
    again = expert.act()
    np.testing.assert_allclose(first, again, atol=1e-6)
    assert 0 < np.abs(first[:3]).max() <= expert.max_speed + 1e-6
    env.close()
