"""simpler_google: every task in every variant resets and steps with the contract's shapes, initial
states are a pure function of (seed, episode index), success rules reject initial states and accept
hand-made goal states, and the scripted experts solve fixed episodes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tasks.base import PROPRIO_DIM
from tasks.simpler.env import VARIANTS, SimplerEnv
from tasks.simpler.google import ARM, DRAWER_LEVELS, PROPS, TASKS, drawer_qpos

SUITE = "simpler_google"
EXPECTED_TASKS = [
    "pick_coke_can_horizontal", "pick_coke_can_vertical", "pick_coke_can_standing", "move_near",
    "open_top_drawer", "open_middle_drawer", "open_bottom_drawer",
    "close_top_drawer", "close_middle_drawer", "close_bottom_drawer",
    "place_apple_in_closed_top_drawer",
]


def make(task: str, variant: str = "visual_matching", seed: int = 0) -> SimplerEnv:
    return SimplerEnv(SUITE, TASKS[task](), ARM, variant=variant, seed=seed)


def image_hash(obs: dict) -> str:
    return hashlib.sha1(obs["agentview"].tobytes() + obs["wrist"].tobytes()).hexdigest()


def test_task_order_and_episode_lengths():
    assert list(TASKS) == EXPECTED_TASKS
    lengths = {t: cls.max_steps for t, cls in TASKS.items()}
    assert {lengths[t] for t in EXPECTED_TASKS[:4]} == {80}
    assert {lengths[t] for t in EXPECTED_TASKS[4:10]} == {113}
    assert lengths["place_apple_in_closed_top_drawer"] == 200


def test_registry_builds_the_suite():
    from tasks import registry

    assert registry.tasks(SUITE) == EXPECTED_TASKS
    env = registry.make(SUITE, "open_top_drawer", variant="lighting_darker", seed=1)
    assert env.instruction == "open top drawer" and env.variant == "lighting_darker"
    env.close()


@pytest.mark.parametrize("task", EXPECTED_TASKS)
def test_every_variant_resets_and_steps(task):
    for variant in VARIANTS:
        env = make(task, variant)
        obs, info = env.reset(options={"episode_index": 1})
        for _ in range(2):
            obs, _, terminated, truncated, info = env.step(np.zeros(7, dtype=np.float32))
        for key in ("agentview", "wrist"):
            assert obs[key].shape == (128, 128, 3) and obs[key].dtype == np.uint8, (task, variant, key)
        assert obs["proprio"].shape == (PROPRIO_DIM,) and obs["proprio"].dtype == np.float32
        assert isinstance(obs["instruction"], str) and obs["instruction"] == env.instruction != ""
        assert isinstance(info["success"], bool) and not terminated and not truncated
        assert obs["agentview"].std() > 5  # a real image, not a blank frame
        env.close()


@pytest.mark.parametrize("task", EXPECTED_TASKS)
def test_initial_state_is_deterministic_and_depends_on_episode(task):
    a, b = make(task, seed=3), make(task, seed=3)
    obs_a, _ = a.reset(options={"episode_index": 4})
    obs_b, _ = b.reset(options={"episode_index": 4})
    np.testing.assert_array_equal(a.get_state(), b.get_state())
    assert image_hash(obs_a) == image_hash(obs_b)
    b.reset(options={"episode_index": 5})
    assert not np.allclose(a.get_state(), b.get_state())
    a.close()
    b.close()


@pytest.mark.parametrize("task", EXPECTED_TASKS)
def test_initial_state_is_not_a_success(task):
    env = make(task, "distractors_2")
    for i in range(3):
        env.reset(options={"episode_index": i})
        assert not env.is_success(), (task, i)
    env.close()


def test_drawer_success_thresholds():
    env = make("open_middle_drawer")
    env.reset()
    joint = env.model.jnt_qposadr[env.model.joint("middle_drawer").id]
    env.data.qpos[joint] = 0.17
    assert env.is_success() and drawer_qpos(env, "middle") == pytest.approx(0.17)
    env.data.qpos[joint] = 0.1
    assert not env.is_success()
    close = make("close_bottom_drawer")
    close.reset(options={"episode_index": 2})
    assert drawer_qpos(close, "bottom") >= 0.15
    assert all(drawer_qpos(close, level) == pytest.approx(0.0, abs=1e-3) for level in DRAWER_LEVELS if level != "bottom")
    close.data.qpos[close.model.jnt_qposadr[close.model.joint("bottom_drawer").id]] = 0.02
    assert close.is_success()
    env.close()
    close.close()


def test_lifted_can_without_grasp_is_not_a_pick():
    env = make("pick_coke_can_standing")
    env.reset()
    env.set_free_body("coke_can", (0.0, 0.0, 0.2))
    env.data.qvel[:] = 0
    import mujoco

    mujoco.mj_forward(env.model, env.data)
    assert env.body_pos("coke_can")[2] > 0.15 and not env.is_success()
    env.close()


def test_move_near_instruction_names_the_episode_objects():
    env = make("move_near")
    seen = set()
    for i in range(0, 60, 7):
        env.reset(options={"episode_index": i})
        spec = env.task_spec
        assert env.instruction == f"move {spec.source.label} near {spec.target.label}"
        assert len({spec.source.name, spec.target.name, spec.other.name}) == 3
        seen.add(env.instruction)
        for prop in PROPS.values():  # unused props are parked out of sight, below the table top
            in_use = prop.name in (spec.source.name, spec.target.name, spec.other.name)
            assert (env.body_pos(prop.name)[2] > 0) == in_use, (i, prop.name)
    assert len(seen) > 5
    env.close()


@pytest.mark.parametrize("task", EXPECTED_TASKS)
def test_expert_solves_fixed_episodes(task):
    env = make(task)
    for i in (0, 4, 8):
        env.reset(options={"episode_index": i})
        expert = env.task_spec.make_expert(env)
        info = {"success": False}
        for _ in range(env.max_steps):
            _, _, _, _, info = env.step(expert.act(), render=False)
        assert info["success"], (task, i)
    env.close()


def test_demonstrations_record_the_privileged_state_of_each_step(tmp_path):
    from harness.demos import record_demos
    from tasks.datasets import DemoDataset

    record_demos("simpler_google", str(tmp_path / "d"), tasks=["move_near"], episodes=1, progress=False,
                 codec="npy")
    ds = DemoDataset([str(tmp_path / "d")], chunk=4)
    first, later = ds[0], ds[len(ds) - 1]
    assert first["objects"].shape == (12, 4) and first["expert_target"].shape == (5,)
    import tasks

    env = tasks.make("simpler_google", "move_near", seed=1)  # record_demos' default seed, episode 0
    env.reset(seed=1, options={"episode_index": 0})
    sim = env.unwrapped
    expected = sim.privileged_state()
    env.close()
    np.testing.assert_allclose(first["objects"].numpy(), expected, atol=1e-6)
    valid = first["objects"][:, 3] == 1
    assert int(valid.sum()) == 3 and not first["objects"][~valid].any()  # the layout's three props; parked: zero
    row = int(valid.nonzero()[0, 0])
    eef = sim.eef_pose()[0]  # the hand at the first observation
    kind, body = sim.entities()[row]
    assert kind == "body"
    np.testing.assert_allclose(first["objects"][row, :3].numpy() + eef, sim.data.xpos[body], atol=1e-6)
    assert first["expert_target"][4] == 0.0 and 0.0 < later["expert_target"][4] <= 1.0  # the plan's phase
    assert float(first["expert_target"][3]) == -1.0  # the first waypoint keeps the gripper open
