"""Checkpoints: round trip, fp16 storage, load_policy errors, open-loop chunk execution of the policy."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from test_vla import make_obs, tiny_vla

from distill import load_policy
from distill.checkpoint import POLICY_KINDS, VLAPolicy, checkpoint_kind, file_hash, load_vla, save_checkpoint


@pytest.fixture()
def ckpt(tmp_path):
    model = tiny_vla(seed=1)
    save_checkpoint(tmp_path / "ckpt", model, meta={"data": {"instructions": ["pick up the coke can"]}})
    return tmp_path / "ckpt", model


def test_round_trip_gives_identical_actions(ckpt):
    path, model = ckpt
    policy = load_policy(path)
    obs = make_obs(4)
    with torch.no_grad():
        expected = model(model.prepare(obs))
        got = policy.model(policy.model.prepare(obs))
    assert torch.equal(expected, got)
    direct = VLAPolicy(model).predict(obs)
    assert np.array_equal(direct, policy.predict(obs))
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "actdistill-vla" and config["vla"]["vocab"] == model.config.vocab
    assert config["data"]["instructions"] == ["pick up the coke can"]
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]
    assert policy.checkpoint_hash == digest == file_hash(path / "model.safetensors")


def test_float16_storage_loads_as_float32(tmp_path):
    model = tiny_vla(seed=2)
    save_checkpoint(tmp_path / "half", model, dtype=torch.float16)
    loaded, _ = load_vla(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    obs = make_obs(2)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(loaded.prepare(obs)), model(model.prepare(obs)), atol=5e-3, rtol=5e-3
        )


def test_policy_executes_chunks_open_loop(ckpt):
    path, _ = ckpt
    policy = load_policy(path)
    calls = []
    real = policy.model_call
    policy.model_call = lambda batch: calls.append(1) or real(batch)
    obs = make_obs(1)[0]
    chunk = policy.predict([obs])[0]  # (K, 7)
    calls.clear()
    policy.reset()
    actions = []
    for step in range(10):
        assert policy.needs_obs_next() == (step % 8 == 0)
        # between queries the images may be None, as with env.step(render=False)
        actions.append(policy.act(obs if step % 8 == 0 else {**obs, "agentview": None, "wrist": None}))
    assert len(calls) == 2  # steps 0 and 8
    assert np.array_equal(np.stack(actions[:8]), chunk)
    assert np.all(np.abs(chunk) <= 1) and set(np.unique(chunk[:, -1])) <= {-1.0, 1.0}
    info = policy.last_info
    assert info["executed_layers"] == [0, 1, 2] and info["layer_mask"] == [1.0, 1.0, 1.0]
    assert info["executed_fraction"] == 1.0 and info["model_ms"] > 0
    policy.act(obs)
    assert policy.last_info is info  # served from the queue: the dict of the model call stays in place
    policy.reset()
    assert policy.needs_obs_next() and policy.last_info == {}


def test_missing_folder_and_files(tmp_path, ckpt):
    path, _ = ckpt
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*nope.* does not exist"):
        load_policy(tmp_path / "nope")
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_policy(path)
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_policy(path)


def test_truncated_safetensors_names_the_file(ckpt):
    path, _ = ckpt
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt or truncated"):
        load_policy(path)


def test_weights_that_do_not_fit_the_config(ckpt):
    path, _ = ckpt
    config = json.loads((path / "config.json").read_text())
    config["vla"]["backbone"]["intermediate_size"] = 48
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"tensor 'layers\.0\.mlp\.gate_proj\.weight': checkpoint shape "
        r"\(64, 32\), config expects \(48, 32\)",
    ):
        load_policy(path)


def test_wrong_observation_shape(ckpt):
    path, _ = ckpt
    policy = load_policy(path)
    obs = make_obs(1)[0]
    with pytest.raises(ValueError, match=r"'agentview': got shape \(128, 128\), expected \(128, 128, 3\)"):
        policy.act({**obs, "agentview": obs["agentview"][..., 0]})
    with pytest.raises(ValueError, match=r"'proprio': got shape \(7,\), expected \(8,\)"):
        policy.act({**obs, "proprio": obs["proprio"][:7]})


def test_checkpoints_name_their_loader_by_kind(ckpt, monkeypatch):
    path, _ = ckpt
    config = json.loads((path / "config.json").read_text())
    assert config["kind"] == "vla" and "policy_loader" not in config
    config["kind"] = "oracle"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown checkpoint kind 'oracle' .*valid kinds: vla, routed_student"):
        load_policy(path)
    config.pop("kind")  # no kind: a plain VLA
    (path / "config.json").write_text(json.dumps(config))
    assert type(load_policy(path)) is VLAPolicy
    config["policy_loader"] = "os.path:join"  # a module path is never imported
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"policy_loader 'os.path:join' .* is not a known loader"):
        load_policy(path)
    monkeypatch.setitem(POLICY_KINDS, "routed_student", "distill.checkpoint:file_hash")
    for legacy in ({"kind": "student"}, {"policy_loader": "distill.student:load_student_policy"}):
        config = {k: v for k, v in config.items() if k not in ("kind", "policy_loader")} | legacy
        (path / "config.json").write_text(json.dumps(config))
        assert checkpoint_kind(config) == "routed_student"
        monkeypatch.setattr("distill.checkpoint.file_hash", lambda p, device, dtype: ("called", str(p), device))
        assert load_policy(path) == ("called", str(path), "cpu")


def test_reserved_meta_keys(tmp_path):
    with pytest.raises(ValueError, match=r"meta keys \['vla'\] are reserved"):
        save_checkpoint(tmp_path / "x", tiny_vla(), meta={"vla": {}})


def test_convert_checkpoint_to_float16(ckpt, tmp_path, capsys):
    from harness.cli import main

    path, model = ckpt
    (path / "loss.png").write_bytes(b"plot")
    out = tmp_path / "half"
    assert main(["convert", "--policy", str(path), "--out", str(out)]) == 0
    assert "float16" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_size < 0.6 * (path / "model.safetensors").stat().st_size
    assert (out / "loss.png").read_bytes() == b"plot"
    config = json.loads((out / "config.json").read_text())
    assert config["storage"].startswith("float16 copy") and config["data"]["instructions"] == ["pick up the coke can"]
    loaded, _ = load_vla(out)
    obs = make_obs(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(loaded.prepare(obs)), model(model.prepare(obs)), atol=5e-3, rtol=5e-3)
    before = (out / "model.safetensors").read_bytes()
    assert main(["convert", "--policy", str(path), "--out", str(out)]) == 2  # never replaced silently
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["convert", "--policy", str(path), "--out", str(path)]) == 2
    assert "is the source checkpoint itself" in capsys.readouterr().err
    assert main(["convert", "--policy", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_execute_k_runs_the_first_k_actions_of_each_chunk_then_calls_again():
    import numpy as np

    from distill.checkpoint import load_policy
    from tasks.errors import UserInputError

    policy = load_policy("results/checkpoints/teacher-simpler")
    rng = np.random.default_rng(0)
    obs = {"agentview": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
           "wrist": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
           "proprio": np.zeros(8, np.float32), "instruction": "open top drawer"}
    chunk = policy.predict([obs])[0]  # (8, 7)
    calls = []
    predict = policy.predict
    policy.predict = lambda obs_list: calls.append(1) or predict(obs_list)
    policy.set_execute(2)
    policy.reset()
    actions = [policy.act(obs) for _ in range(6)]
    assert len(calls) == 3  # a model call every 2 steps
    np.testing.assert_array_equal(actions[0], chunk[0])
    np.testing.assert_array_equal(actions[1], chunk[1])
    np.testing.assert_array_equal(actions[2], chunk[0])  # the same observation: the same chunk again
    policy.set_execute(None)
    policy.reset()
    calls.clear()
    [policy.act(obs) for _ in range(8)]
    assert len(calls) == 1
    for bad in (0, 9):
        with pytest.raises(UserInputError, match="between 1 and the policy's chunk length 8"):
            policy.set_execute(bad)
