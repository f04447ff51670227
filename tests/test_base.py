"""The two contracts of tasks.base: every suite's environment is a TaskEnv, every policy kind a Policy."""

from __future__ import annotations

import numpy as np
import pytest
from fake_env import register
from test_vla import tiny_vla

import tasks
from distill.checkpoint import VLAPolicy
from tasks.base import Policy, TaskEnv


@pytest.mark.parametrize("suite, task", [("simpler_widowx", "put_carrot_on_plate"), ("simpler_google", "move_near")])
def test_every_suite_env_fits_the_env_contract(suite, task):
    env = tasks.make(suite, task, seed=0)
    try:
        assert isinstance(env.unwrapped, TaskEnv)
        assert (env.unwrapped.suite, env.unwrapped.task) == (suite, task)
        obs, _ = env.reset(seed=0, options={"episode_index": 0})
        assert isinstance(tasks.expert(env), Policy)
        obs, _, _, _, info = env.step(np.zeros(7), render=False)
        assert obs["agentview"] is None and isinstance(info["success"], bool)
    finally:
        env.close()


def test_policies_fit_the_policy_contract_and_others_do_not(monkeypatch):
    suite = register(monkeypatch)
    env = tasks.make(suite, "reach", seed=0)
    assert isinstance(env.unwrapped, TaskEnv)
    assert isinstance(tasks.expert(env), Policy)
    assert isinstance(VLAPolicy(tiny_vla()), Policy)

    class NoReset:
        def act(self, obs):
            return np.zeros(7)

    assert not isinstance(NoReset(), Policy)
    assert not isinstance(object(), TaskEnv)
