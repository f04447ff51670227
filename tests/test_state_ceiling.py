"""The state-input ceiling: a VLA whose vision tokens are privileged scene entities (vision_encoder "state")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_vla import make_obs, tiny_config

import tasks
from distill import load_policy
from distill.checkpoint import save_checkpoint
from distill.flops import forward_flops, seq_len, vision_flops
from distill.vla import VLA
from harness.evaluate import policy_source
from tasks.base import PRIVILEGED_OBJECTS


def state_obs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{**{k: v for k, v in o.items() if k not in ("agentview", "wrist")},
             "objects": rng.normal(size=(PRIVILEGED_OBJECTS, 4)).astype(np.float32)} for o in make_obs(n, seed)]


def test_state_tokens_replace_the_cameras_and_are_counted(tmp_path):
    torch.manual_seed(0)
    model = VLA(tiny_config(vision_encoder="state", cameras=[])).eval()
    batch = model.prepare(state_obs(3))
    assert "agentview" not in batch and batch["objects"].shape == (3, PRIVILEGED_OBJECTS, 4)
    emb = model.embed(batch)
    assert emb.vision_mask.sum(1).tolist() == [PRIVILEGED_OBJECTS] * 3
    assert emb.hidden.shape[1] == seq_len(model, batch)
    d = model.config.hidden_size
    assert vision_flops(model, 2) == 2 * PRIVILEGED_OBJECTS * 2 * (4 * d + d * d)
    assert forward_flops(model, 1, seq_len(model, batch), model.num_layers)["total"] > 0
    moved = [dict(o) for o in state_obs(3)]
    moved[0]["objects"][0, :3] += 0.05  # five centimetres: the actions must see it
    with torch.no_grad():
        assert not torch.equal(model(model.prepare(moved))[0], model(batch)[0])
    save_checkpoint(tmp_path / "s", model)
    policy = load_policy(tmp_path / "s")
    assert np.array_equal(policy.predict(state_obs(2)), policy.predict(state_obs(2)))
    source = policy_source(str(tmp_path / "s"))
    assert source.env_kwargs == {"privileged_obs": True} and "ceiling" in source.meta["method"]


def test_a_state_config_with_cameras_is_refused():
    from distill.vla import VLAConfig

    with pytest.raises(ValueError, match="reads no cameras; give cameras=\\[\\]"):
        VLAConfig.from_dict({**tiny_config().to_dict(), "vision_encoder": "state"})
    assert tiny_config(vision_encoder="state").cameras == []  # teacher_config drops them itself


def test_privileged_obs_env_gives_the_objects_and_a_plain_env_does_not():
    env = tasks.make("simpler_google", "move_near", seed=0, privileged_obs=True)
    plain = tasks.make("simpler_google", "move_near", seed=0)
    try:
        obs, _ = env.reset(seed=0, options={"episode_index": 1})
        np.testing.assert_array_equal(obs["objects"], env.unwrapped.privileged_state())
        obs, *_ = env.step(np.zeros(7), render=False)
        assert obs["objects"].shape == (PRIVILEGED_OBJECTS, 4)
        assert "objects" not in plain.reset(seed=0, options={"episode_index": 1})[0]
    finally:
        env.close()
        plain.close()
