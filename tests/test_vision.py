"""The deep vision encoder (distill.vla.DeepEncoder): token layout, soft-argmax keypoints, checkpoints, routed
students, old configs, and that it can localise a dot that the patch stem places only to a few pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_vla import TINY, SyntheticDemos, make_obs, tiny_config, tiny_vla

from distill import load_policy
from distill.checkpoint import load_vla, save_checkpoint
from distill.routed import StudentPolicy, StudentVLA, export_student
from distill.train import _override_clash, train_teacher
from distill.vla import VLA, DeepEncoder, PatchEncoder, VLAConfig, soft_argmax
from tasks.errors import UserInputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("keypoints", [0, 3])
def test_deep_encoder_keeps_the_token_layout(keypoints):
    deep = tiny_vla(vision_encoder="deep", vision_keypoints=keypoints)
    patch = tiny_vla(vision_keypoints=keypoints)
    assert isinstance(deep.vision, DeepEncoder) and isinstance(patch.vision, PatchEncoder)
    maps = {}
    deep.vision.stem.register_forward_hook(lambda mod, inp, out: maps.update(deep=out.shape))
    batch = deep.prepare(make_obs(3))
    with torch.no_grad():
        emb, ref = deep.embed(batch), patch.embed(batch)
        actions = deep(batch)
    cells = deep.config.image_size // 8
    assert maps["deep"] == (6, deep.config.stem_channels, cells, cells)  # 2 cameras x 3 rows, 16x16 maps
    assert emb.hidden.shape == ref.hidden.shape and emb.spans == ref.spans
    for name in ("attention_mask", "position_ids", "vision_mask", "text_mask", "query_mask"):
        assert torch.equal(getattr(emb, name), getattr(ref, name)), name
    assert emb.spans[0] == 2 * deep.config.tokens_per_camera
    assert actions.shape == (3, deep.config.chunk, 7) and torch.isfinite(actions).all()


def test_deep_encoder_batch_one_equals_batched():
    model = tiny_vla(vision_encoder="deep", vision_keypoints=3, vision_coords=True)
    obs = make_obs(3)
    with torch.no_grad():
        batched = model(model.prepare(obs))
        single = torch.cat([model(model.prepare([o])) for o in obs])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)  # GroupNorm: no batch statistics


@pytest.mark.parametrize("encoder", ["patch", "deep"])
def test_keypoint_encoders_run_in_bfloat16(encoder):
    model = tiny_vla(vision_encoder=encoder, vision_keypoints=3)
    batch = model.prepare(make_obs(2))
    with torch.no_grad():
        ref = model(batch)
        low = model.to(torch.bfloat16)(batch)  # the keypoint cell centres follow the model to bfloat16
    torch.testing.assert_close(low, ref, atol=0.02, rtol=0.05)


def test_deep_encoder_round_trips_through_a_checkpoint(tmp_path):
    model = tiny_vla(vision_encoder="deep", vision_keypoints=3, vision_coords=True)
    with torch.no_grad():  # move every parameter off its initial value, so a missed load would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path / "deep", model)
    loaded, config = load_vla(tmp_path / "deep")
    assert config["vla"]["vision_encoder"] == "deep" and isinstance(loaded.vision, DeepEncoder)
    batch = model.prepare(make_obs(2))
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    policy = load_policy(tmp_path / "deep")
    assert isinstance(policy.model.vision, DeepEncoder) and policy.act(make_obs(1)[0]).shape == (7,)


def test_soft_argmax_of_a_one_hot_map_is_the_cell_centre():
    cells = 16
    centre = lambda i: (i + 0.5) / cells * 2 - 1
    logits = torch.full((1, 2, cells, cells), -1e4)
    logits[0, 0, 5, 11] = 0.0  # map 0: one hot cell at row 5, column 11
    logits[0, 1, 2, 3] = logits[0, 1, 2, 4] = 0.0  # map 1: two equal cells side by side
    cell_xy = torch.tensor([[centre(col), centre(row)] for row in range(cells) for col in range(cells)])
    xy = soft_argmax(logits, cell_xy)  # (1, 4)
    expected = torch.tensor([centre(11), centre(5), (centre(3) + centre(4)) / 2, centre(2)])
    torch.testing.assert_close(xy[0], expected)


def test_deep_keypoint_token_reads_the_soft_argmax_of_the_deep_map():
    model = tiny_vla(vision_encoder="deep", vision_keypoints=3)
    enc = model.vision
    cells = model.config.image_size // 8
    peak = (9, 2)  # (row, column) of the one hot cell
    hot = torch.zeros(1, model.config.stem_channels, cells, cells)
    hot[0, 0, peak[0], peak[1]] = 1.0
    with torch.no_grad():  # every map reads channel 0 with gain 60: a near one-hot softmax at the peak
        enc.keypoint_maps.weight.zero_()
        enc.keypoint_maps.weight[:, 0] = 60.0
        enc.keypoint_maps.bias.zero_()
    seen = {}
    enc.stem.register_forward_hook(lambda mod, inp, out: hot.expand_as(out))
    enc.keypoint_proj.register_forward_hook(lambda mod, inp, out: seen.update(xy=inp[0]))
    blank = torch.zeros(1, model.config.image_size, model.config.image_size, 3, dtype=torch.uint8)
    with torch.no_grad():
        tokens = enc(blank)
        assert tokens.shape == (1, model.config.vision_grid ** 2 + 1, model.config.hidden_size)
        centre = lambda i: (i + 0.5) / cells * 2 - 1
        expected = torch.tensor([centre(peak[1]), centre(peak[0])] * 3)  # x (column), y (row) per map
        torch.testing.assert_close(seen["xy"][0], expected, atol=1e-3, rtol=0)
        enc.keypoint_log_temperature.fill_(np.log(100.0))  # a hot softmax: 0.6 logit steps, spread out
        enc(blank)
        assert (seen["xy"][0] - expected).abs().max() > 0.05


def test_routed_student_of_a_deep_teacher_with_all_gates_open_equals_it(tmp_path):
    teacher = tiny_vla(vision_encoder="deep", vision_keypoints=2)
    student = StudentVLA.from_teacher(teacher, budget=1.0, router_dim=8).eval()
    batch = teacher.prepare(make_obs(3))
    with torch.no_grad():
        assert torch.equal(student(batch), teacher(batch))
    export_student(student, tmp_path / "s")
    policy = load_policy(tmp_path / "s")
    assert isinstance(policy, StudentPolicy) and isinstance(policy.model.vision, DeepEncoder)
    with torch.no_grad():
        assert torch.equal(policy.model(batch), teacher(batch))


def test_a_config_without_the_field_is_the_patch_encoder(tmp_path):
    old = tiny_config().to_dict()
    del old["vision_encoder"]
    cfg = VLAConfig.from_dict(old)
    assert cfg.vision_encoder == "patch" and isinstance(VLA(cfg).vision, PatchEncoder)
    committed = json.loads((ROOT / "results/checkpoints/teacher-simpler-v1/config.json").read_text())["vla"]
    assert "vision_encoder" not in committed and VLAConfig.from_dict(committed).vision_encoder == "patch"
    with pytest.raises(UserInputError, match="unknown vision_encoder 'resnet'; valid: patch, deep"):
        tiny_config(vision_encoder="resnet")


def test_a_deep_teacher_trains_and_a_resume_may_not_change_the_encoder(tmp_path):
    import argparse

    from harness.commands import train_teacher as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--data", "d", "--out", str(tmp_path / "x"), "--vision-encoder", "deep",
                              "--vision-keypoints", "2"])
    assert command._model_overrides(args) == {"vision_encoder": "deep", "vision_keypoints": 2}
    overrides = {**TINY, **command._model_overrides(args)}
    settings = {"profile": "small", "batch_size": 8, "lr": 3e-3, "warmup": 1, "progress": False}
    train_teacher(SyntheticDemos(n=16), tmp_path / "t", steps=2, model_overrides=overrides, **settings)
    assert isinstance(load_vla(tmp_path / "t")[0].vision, DeepEncoder)
    with pytest.raises(UserInputError, match="holds a model with vision_encoder='deep'; resume without"):
        train_teacher(SyntheticDemos(n=16), tmp_path / "t", steps=3,
                      model_overrides={**overrides, "vision_encoder": "patch"}, **settings)
    assert _override_clash(load_vla(tmp_path / "t")[0].config, {"vision_encoder": "deep"}) == {}


def _dot_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n dim noisy (size, size, 3) uint8 images with one white disc of radius 2 px, and its centre (n, 2)
    as (x, y) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (size - 8) + 4  # (n, 2) pixels, the disc inside the image
    images = torch.randint(0, 60, (n, size, size, 3), generator=g, dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d2 = (xx[None] - xy[:, 0, None, None]) ** 2 + (yy[None] - xy[:, 1, None, None]) ** 2  # (n, size, size)
    images[d2 <= 4.0] = 255
    return images, xy / size * 2 - 1


def _localisation_error(encoder: torch.nn.Module, tokens: int, size: int, steps: int = 200) -> float:
    """Held-out mean absolute error, in pixels, of a linear read-out of ``encoder``'s tokens trained with it
    for ``steps`` Adam steps to regress the dot's position."""
    train, test = _dot_images(512, size, seed=0), _dot_images(256, size, seed=1)
    head = torch.nn.Linear(tokens * 32, 2)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(train[0]), (32,), generator=g)
        loss = (head(encoder(train[0][idx]).flatten(1)) - train[1][idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((head(encoder(test[0]).flatten(1)) - test[1]).abs().mean() * size / 2)


def test_deep_encoder_localises_a_dot_better_than_the_patch_stem():
    # 64 px images, a 2x2 grid and 8 keypoints each; measured: patch ~3.3 px, deep ~0.6 px (seeds 1-3)
    size, grid, keypoints = 64, 2, 8
    errors = {}
    for cls in (PatchEncoder, DeepEncoder):
        torch.manual_seed(0)
        encoder = cls(32, grid, 8, size, keypoints=keypoints)
        errors[cls.__name__] = _localisation_error(encoder, grid * grid + 1, size)
    assert errors["DeepEncoder"] < 1.5, errors
    assert errors["DeepEncoder"] < 0.5 * errors["PatchEncoder"], errors


def test_gpu_run_passes_the_teacher_encoder():
    import argparse

    from harness import gpu_run

    parser = argparse.ArgumentParser()
    gpu_run.add_arguments(parser)
    assert gpu_run._teacher_overrides(parser.parse_args(["--out", "o"])) is None
    args = parser.parse_args(["--out", "o", "--teacher-vision-encoder", "deep", "--teacher-keypoints", "32"])
    assert gpu_run._teacher_overrides(args) == {"vision_encoder": "deep", "vision_keypoints": 32}
