"""Privileged auxiliary supervision of the teacher (distill.vla.AuxHead, distill.train aux_targets): names are
checked, the head never touches the inference path, the aux loss is logged and falls, every saved checkpoint is
a plain VLA that acts exactly like the trained model, data without the fields is refused by folder, a resume
keeps the head; proprio dropout and drop_hand_position hide the hand position and change nothing when off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import FAST, crash_on_fifth_step
from test_vla import TINY, SyntheticDemos, make_obs, tiny_config, tiny_vla

from distill import load_policy
from distill.checkpoint import load_vla
from distill.flops import forward_flops, seq_len
from distill.train import PrivilegedCollate, aux_losses, hide_hand_position, train_teacher
from distill.vla import AUX_TARGETS
from tasks.errors import UserInputError

BOTH = ["expert_target", "objects"]


class PrivilegedDemos(SyntheticDemos):
    """:class:`SyntheticDemos` with the privileged fields, an offset plus a function of the proprio:
    ``expert_target`` (5,) and ``objects`` (12, 4) with 3 valid entities (the others hold large values a masked
    loss must ignore)."""

    def __init__(self, n: int = 48, seed: int = 0):
        super().__init__(n=n, seed=seed)
        p = self.proprio
        grip = np.where(p[:, 3:4] > 0, 1.0, -1.0)
        phase = 1.0 / (1.0 + np.exp(-p[:, 4:5]))
        self.expert_target = np.concatenate([0.1 + 0.05 * p[:, :3], grip, phase], 1).astype(np.float32)  # (n, 5)
        objects = np.full((n, 12, 4), 3.0, np.float32)
        objects[..., 3] = 0.0
        objects[:, :3, :3] = 0.1 + 0.03 * p[:, None, 5:8] * np.arange(1, 4)[None, :, None]
        objects[:, :3, 3] = 1.0
        self.objects = objects  # (n, 12, 4)

    def __getitem__(self, i: int) -> dict:
        return {**super().__getitem__(i), "objects": torch.from_numpy(self.objects[i]),
                "expert_target": torch.from_numpy(self.expert_target[i])}


def history(out) -> list[dict]:
    return json.loads((out / "train_log.json").read_text())["history"]


def test_aux_target_names_are_checked_and_canonical():
    with pytest.raises(UserInputError, match="unknown aux target 'gripper'; valid: expert_target, objects"):
        tiny_config(aux_targets=["gripper"])
    with pytest.raises(UserInputError, match="list of names, got the string 'objects'"):
        tiny_config(aux_targets="objects")
    config = tiny_config(aux_targets=["objects", "expert_target", "objects"])
    assert config.aux_targets == BOTH and config.aux_dim == 5 + 36 == sum(AUX_TARGETS.values())
    assert tiny_config().aux_targets == [] and tiny_config().aux_dim == 0
    with pytest.raises(UserInputError, match="unknown aux target 'phase'"):
        train_teacher(SyntheticDemos(n=8), "unused", steps=1, aux_targets=["phase"], **FAST)


def test_the_aux_head_leaves_inference_untouched_and_export_drops_it():
    plain, aux = tiny_vla(seed=3), tiny_vla(seed=3, aux_targets=BOTH)
    aux_weights = {k: v for k, v in aux.state_dict().items() if k.startswith("aux_head.")}
    assert aux_weights and plain.aux_head is None
    assert {k: v for k, v in aux.state_dict().items() if k not in aux_weights}.keys() == plain.state_dict().keys()
    for name, value in plain.state_dict().items():  # the head is built last: the rest initialises as without it
        assert torch.equal(value, aux.state_dict()[name]), name
    batch = plain.prepare(make_obs(3))
    with torch.no_grad():
        chunk = plain(batch)
        assert torch.equal(aux(batch), chunk)
        trained_chunk, pred = aux.forward_with_aux(batch)
        assert torch.equal(trained_chunk, chunk)
        assert pred["expert_target"].shape == (3, 5) and pred["objects"].shape == (3, 12, 3)
        with pytest.raises(UserInputError, match="no aux head"):
            plain.forward_with_aux(batch)

        rng = torch.get_rng_state()
        exported = aux.export()
        assert torch.equal(torch.get_rng_state(), rng)  # exporting draws nothing from torch's RNG
        assert exported.aux_head is None and exported.config.aux_targets == []
        assert exported.config.to_dict() == plain.config.to_dict() and plain.export() is plain
        assert not any(k.startswith("aux_head.") for k in exported.state_dict())
        assert torch.equal(exported(batch), chunk)
    _, pred = aux.forward_with_aux(batch)  # the aux loss reaches the decoder layers and the encoder, not the head
    target = {k: torch.stack([v[k] for v in [PrivilegedDemos(n=3)[i] for i in range(3)]]) for k in BOTH}
    sum(aux_losses(pred, target).values()).backward()
    assert float(aux.layers[0].self_attn.q_proj.weight.grad.abs().sum()) > 0
    assert float(next(aux.vision.parameters()).grad.abs().sum()) > 0 and aux.action_head.weight.grad is None
    n = seq_len(plain, batch)
    assert forward_flops(exported, 1, n, plain.num_layers) == forward_flops(plain, 1, n, plain.num_layers)
    assert sum(p.numel() for p in exported.parameters()) == sum(p.numel() for p in plain.parameters())


def test_aux_losses_by_hand_mask_the_invalid_objects():
    target = {"expert_target": torch.tensor([[0.1, 0.0, -0.2, 1.0, 0.5]]),
              "objects": torch.zeros(1, 12, 4)}
    target["objects"][0, 0] = torch.tensor([0.1, 0.2, 0.0, 1.0])  # one valid entity
    target["objects"][0, 1, :3] = 9.0  # an invalid one with a large position: never compared
    pred = {"expert_target": torch.tensor([[1.0, 1.0, -2.0, 0.0, 0.25]]),  # positions in decimetres
            "objects": torch.zeros(1, 12, 3)}
    pred["objects"][0, 0] = torch.tensor([1.0, 1.0, 0.0])
    losses = aux_losses(pred, target)
    # expert_target: position error (0, 1, 0) dm -> 1/3; BCE of logit 0 = log 2; phase (0.25)^2
    assert float(losses["expert_target"]) == pytest.approx(1 / 3 + np.log(2) + 0.0625, rel=1e-6)
    assert float(losses["objects"]) == pytest.approx((0.0 + 1.0 + 0.0) / 3, rel=1e-6)
    assert set(aux_losses({"objects": pred["objects"]}, target)) == {"objects"}


def test_training_with_aux_logs_it_and_saves_plain_vlas_that_act_like_the_trained_model(tmp_path):
    data = PrivilegedDemos(n=48)
    out = tmp_path / "aux"
    summary = train_teacher(data, out, steps=40, ckpt_every=10, keep_every=20, aux_targets=BOTH, **FAST)
    log = history(out)
    assert {"loss", "chunk_loss", "aux_loss", "aux_expert_target", "aux_objects"} <= set(log[0])
    aux = np.array([h["aux_loss"] for h in log])
    assert np.isfinite(aux).all() and aux[-5:].mean() < 0.7 * aux[:5].mean(), aux  # measured: 2.6 -> 1.4
    for h in log:
        assert h["aux_loss"] == pytest.approx(h["aux_expert_target"] + h["aux_objects"], rel=1e-5)
        assert h["loss"] == pytest.approx(h["chunk_loss"] + 0.1 * h["aux_loss"], rel=1e-5)
    assert summary["loss"] == pytest.approx(np.mean([h["chunk_loss"] for h in log[-50:]]))
    assert summary["aux_loss"] == pytest.approx(aux[-50:].mean())

    state = torch.load(out / "training_state.pt", weights_only=True)
    assert state["extra"]["aux_targets"] == BOTH and state["extra"]["settings"]["aux_weight"] == 0.1
    assert any(k.startswith("aux_head.") for k in state["modules"]["model"])
    loaded, config = load_vla(out)
    trained = loaded.with_aux_targets(BOTH)  # the in-memory model at the end, aux head and all
    trained.load_state_dict(state["modules"]["model"])
    for folder in (out, out / "snapshots" / "step-20"):
        assert not any(k.startswith("aux_head.") for k in load_file(str(folder / "model.safetensors")))
        config = json.loads((folder / "config.json").read_text())
        assert config["kind"] == "vla" and config["vla"]["aux_targets"] == []
        assert config["training"]["aux_targets"] == BOTH and config["training"]["aux_weight"] == 0.1
        assert load_vla(folder)[0].aux_head is None
    assert config["training"]["num_params"] == sum(p.numel() for p in loaded.parameters())
    batch = loaded.prepare(make_obs(4))
    with torch.no_grad():
        assert torch.equal(loaded(batch), trained(batch))
    obs = make_obs(1)[0]
    assert np.array_equal(load_policy(out).act(obs), load_policy(out).act(obs))


def test_aux_targets_on_data_without_the_fields_are_refused_by_folder(tmp_path):
    from tasks.datasets import DemoWriter

    with pytest.raises(UserInputError, match=r"SyntheticDemos \(item 0\) lacks 'expert_target'"):
        train_teacher(SyntheticDemos(n=8), tmp_path / "a", steps=1, aux_targets=["expert_target"], **FAST)
    rng = np.random.default_rng(0)
    folders = []
    for name, privileged in (("with", True), ("without", False)):
        writer = DemoWriter(tmp_path / name, suite="simpler_widowx", variant="visual_matching", codec="npy")
        n = 4
        record = {"agentview": rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
                  "wrist": rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
                  "proprio": rng.normal(size=(n, 8)).astype(np.float32),
                  "actions": rng.uniform(-1, 1, (n, 7)).astype(np.float32), "instruction": "stack the block"}
        if privileged:
            record |= {"objects": np.zeros((n, 12, 4), np.float32), "expert_target": np.zeros((n, 5), np.float32)}
        writer.add(record, task="stack", seed=0, episode_index=0)
        writer.close()
        folders.append(str(tmp_path / name))
    with pytest.raises(UserInputError, match=f"{tmp_path / 'without'} lacks 'expert_target', 'objects'"):
        train_teacher(folders, tmp_path / "b", steps=1, aux_targets=BOTH, **FAST)
    assert not (tmp_path / "b").exists()  # refused before anything was written
    assert train_teacher(folders[:1], tmp_path / "c", steps=1, batch_size=4, aux_targets=BOTH,
                         **{k: v for k, v in FAST.items() if k != "batch_size"})["step"] == 1

    collate = PrivilegedCollate(tiny_vla(aux_targets=["objects"]))
    items = [PrivilegedDemos(n=2)[0], SyntheticDemos(n=2)[1]]
    with pytest.raises(UserInputError, match="sample 1 .* has no privileged 'objects'"):
        collate(items)


def test_bad_aux_and_dropout_settings_are_refused(tmp_path):
    data = PrivilegedDemos(n=8)
    with pytest.raises(UserInputError, match="no aux targets"):
        train_teacher(data, tmp_path / "a", steps=1, aux_weight=0.5, **FAST)
    with pytest.raises(UserInputError, match="aux_weight must be a finite number > 0"):
        train_teacher(data, tmp_path / "b", steps=1, aux_targets=BOTH, aux_weight=0.0, **FAST)
    with pytest.raises(UserInputError, match=r"proprio_dropout is a probability in \[0, 1\]"):
        train_teacher(data, tmp_path / "c", steps=1, proprio_dropout=1.5, **FAST)
    with pytest.raises(UserInputError, match="not as a model override"):
        train_teacher(data, tmp_path / "d", steps=1, **{**FAST, "model_overrides": {**TINY, "aux_targets": BOTH}})


def test_a_resumed_aux_run_with_ema_trains_exactly_like_an_uninterrupted_one(tmp_path, monkeypatch):
    data = PrivilegedDemos(n=40)
    settings = {"steps": 6, "ckpt_every": 3, "aux_targets": ["objects"], "proprio_dropout": 0.5, "ema": 0.5, **FAST}
    train_teacher(data, tmp_path / "straight", **settings)
    crash_on_fifth_step(monkeypatch, lambda: train_teacher(data, tmp_path / "resumed", **settings))
    assert train_teacher(data, tmp_path / "resumed", **{**settings, "aux_targets": None})["step"] == 6
    assert history(tmp_path / "straight") == history(tmp_path / "resumed")
    states = [torch.load(tmp_path / name / "training_state.pt", weights_only=True)["modules"]["model"]
              for name in ("straight", "resumed")]
    assert any(k.startswith("aux_head.") for k in states[1])
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name
    for sub in ("", "raw"):  # the weight average and the trained weights: both plain VLAs
        assert load_vla(tmp_path / "resumed" / sub)[0].aux_head is None
        assert not any(k.startswith("aux_head.") for k in load_file(str(tmp_path / "resumed" / sub / "model.safetensors")))
    with pytest.raises(UserInputError, match=r"holds a model with aux_targets=\['objects'\]; resume without"):
        train_teacher(data, tmp_path / "resumed", **{**settings, "steps": 8, "aux_targets": BOTH})


def test_fine_tuning_a_plain_checkpoint_adds_a_fresh_aux_head(tmp_path):
    data = PrivilegedDemos(n=16)
    train_teacher(data, tmp_path / "base", steps=2, **FAST)
    small = {k: v for k, v in FAST.items() if k != "model_overrides"}
    train_teacher(data, tmp_path / "ft", steps=2, init=tmp_path / "base", aux_targets=["expert_target"], **small)
    assert "aux_expert_target" in history(tmp_path / "ft")[0]
    assert load_vla(tmp_path / "ft")[0].aux_head is None


def test_proprio_dropout_zero_trains_bitwise_like_no_dropout_and_one_hides_the_hand(tmp_path):
    data = SyntheticDemos(n=32)
    train_teacher(data, tmp_path / "plain", steps=4, **FAST)
    train_teacher(data, tmp_path / "zero", steps=4, proprio_dropout=0.0, **FAST)
    train_teacher(data, tmp_path / "one", steps=4, proprio_dropout=1.0, **FAST)
    losses = {name: [h["loss"] for h in history(tmp_path / name)] for name in ("plain", "zero", "one")}
    assert losses["plain"] == losses["zero"] and losses["one"] != losses["plain"]
    assert set(history(tmp_path / "plain")[0]) == {"step", "loss", "lr"}  # no new terms without aux targets

    proprio = torch.randn(64, 8)
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    hidden = (hide_hand_position(proprio, mean, 1.0, torch.Generator().manual_seed(0)) - mean) / std
    assert torch.equal(hidden[:, :3], torch.zeros(64, 3)) and torch.equal(hidden[:, 3:], ((proprio - mean) / std)[:, 3:])
    assert torch.equal(hide_hand_position(proprio, mean, 0.0, torch.Generator().manual_seed(0)), proprio)
    half = hide_hand_position(proprio, mean, 0.5, torch.Generator().manual_seed(0))
    dropped = (half[:, :3] == mean[:3]).all(1)
    assert 0 < int(dropped.sum()) < 64 and torch.equal(half[~dropped], proprio[~dropped])


def test_drop_hand_position_hides_it_at_inference_too():
    model = tiny_vla(drop_hand_position=True)
    obs = make_obs(2)
    moved = [{**o, "proprio": o["proprio"] + np.array([5, -5, 5, 0, 0, 0, 0, 0], np.float32)} for o in obs]
    turned = [{**o, "proprio": o["proprio"] + np.array([0, 0, 0, 1, 0, 0, 0, 0], np.float32)} for o in obs]
    with torch.no_grad():
        chunk = model(model.prepare(obs))
        assert torch.equal(model(model.prepare(moved)), chunk)
        assert not torch.equal(model(model.prepare(turned)), chunk)


def test_cli_aux_and_proprio_flags(tmp_path, capsys):
    from harness.cli import main
    from tasks.datasets import DemoWriter

    rng = np.random.default_rng(0)
    writer = DemoWriter(tmp_path / "demos", suite="simpler_widowx", variant="visual_matching", codec="npy")
    n = 5
    writer.add({"agentview": rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
                "wrist": rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8),
                "proprio": rng.normal(size=(n, 8)).astype(np.float32),
                "actions": rng.uniform(-1, 1, (n, 7)).astype(np.float32), "instruction": "put carrot on plate",
                "objects": rng.normal(size=(n, 12, 4)).astype(np.float32),
                "expert_target": rng.normal(size=(n, 5)).astype(np.float32)},
               task="carrot", seed=0, episode_index=0)
    writer.close()
    out = tmp_path / "teacher"
    base = ["train-teacher", "--data", str(tmp_path / "demos"), "--steps", "2", "--batch-size", "4", "--no-progress"]
    assert main([*base, "--out", str(out), "--aux-targets", "objects,expert_target", "--aux-weight", "0.2",
                 "--proprio-dropout", "0.5", "--drop-hand-position"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vla"]["aux_targets"] == [] and config["vla"]["drop_hand_position"] is True
    assert config["training"]["aux_targets"] == BOTH and config["training"]["aux_weight"] == 0.2
    assert config["training"]["proprio_dropout"] == 0.5
    assert load_policy(out).model.aux_head is None
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--aux-targets", "expert_target,grip"]) == 2
    assert "unknown aux target 'grip'; valid: expert_target, objects" in capsys.readouterr().err
