"""tools.drawer_episodes: the drawer trace of one google episode (one simulator episode per test)."""

from __future__ import annotations

import numpy as np
import pytest

import tasks
from tasks.simpler.google import drawer_qpos
from tools.drawer_episodes import drawer_episode, drawer_level


class CloseAndStay:
    """Zero arm motion with the gripper commanded closed from the first step."""

    def reset(self) -> None:
        pass

    def act(self, obs) -> np.ndarray:
        return np.array([0, 0, 0, 0, 0, 0, 1.0])


def test_the_expert_shuts_a_drawer_that_starts_open():
    env = tasks.make("simpler_google", "close_middle_drawer", seed=0)
    trace = drawer_episode(tasks.expert(env), env, "close_middle_drawer", episode_index=0)
    env.close()
    assert trace.success and trace.episode == 0
    assert trace.opening_final <= 0.05 < trace.opening_start
    assert trace.opening_least <= trace.opening_final <= trace.opening_largest
    assert 0.0 <= trace.gripper_closed <= 1.0 and trace.closest_to_handle < 0.1


def test_a_policy_that_only_closes_its_gripper_leaves_the_drawer_and_is_seen_at_step_0():
    env = tasks.make("simpler_google", "open_top_drawer", seed=0)
    trace = drawer_episode(CloseAndStay(), env, "open_top_drawer", episode_index=1)
    env.reset(seed=0, options={"episode_index": 1})
    sim = env.unwrapped
    start_offset = sim.eef_pose()[0] - sim.data.site("top_handle").xpos
    assert trace.opening_start == pytest.approx(drawer_qpos(sim, "top"))
    env.close()
    assert not trace.success and trace.gripper_closed == 1.0
    assert trace.opening_largest - trace.opening_least < 0.01
    assert trace.first_close.step == 0
    assert trace.first_close.offset == pytest.approx(tuple(start_offset), abs=1e-9)
    assert trace.first_close.distance == pytest.approx(float(np.linalg.norm(start_offset)))
    assert trace.closest_to_handle <= trace.first_close.distance
    assert "first close: step 0" in trace.line()


def test_a_task_without_a_drawer_names_the_valid_tasks():
    assert drawer_level("close_bottom_drawer") == "bottom"
    with pytest.raises(ValueError, match="valid tasks: open_top_drawer"):
        drawer_level("move_near")
