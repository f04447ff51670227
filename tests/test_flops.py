"""Analytic FLOPs against torch.utils.flop_counter on a tiny teacher, several layer masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from distill.flops import (
    embed_flops,
    flops_for_batch,
    forward_flops,
    head_flops,
    layer_flops,
    measured_flops,
    routed_share,
    seq_len,
    vision_flops,
)
from distill.tokenizer import WordTokenizer
from distill.vla import VLA, VLAConfig, teacher_config

ROOT = Path(__file__).resolve().parents[1]

LAYERS = 4


def tiny_vla(num_kv_heads: int = 2, attn: str = "sdpa", **overrides) -> VLA:
    vocab = WordTokenizer.build(["pick up the coke can", "open the top drawer"]).vocab
    cfg = teacher_config("small", vocab, {"mean": [0.0] * 7, "std": [1.0] * 7}, {"mean": [0.0] * 8, "std": [1.0] * 8},
                         hidden_size=32, num_layers=LAYERS, num_heads=4, num_kv_heads=num_kv_heads,
                         intermediate_size=64, vision_grid=2, stem_channels=4, attn_implementation=attn,
                         **overrides)
    torch.manual_seed(0)
    return VLA(cfg).eval()


def make_batch(model: VLA, instructions: list[str]) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    obs = [{"agentview": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "proprio": rng.normal(size=8).astype(np.float32), "instruction": text} for text in instructions]
    return model.prepare(obs)


MASKS = {
    "all": None,
    "none": torch.zeros(2, LAYERS, dtype=torch.bool),
    "first_two": torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool),
    "per_row": torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.bool),
}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_analytic_matches_flop_counter(attn: str, kv_heads: int, mask_name: str) -> None:
    model = tiny_vla(kv_heads, attn)
    batch = make_batch(model, ["pick up the coke can", "open drawer"])  # padded instruction in row 2
    mask = MASKS[mask_name]
    analytic = flops_for_batch(model, batch, mask)  # (B,)
    measured = measured_flops(model, batch, mask)["total"]
    assert analytic.shape == (2,)
    assert abs(int(analytic.sum()) - measured) <= 0.05 * measured
    # the decoder part alone (embedding convs dominate this tiny model, so check the layers separately)
    base = measured_flops(model, batch, MASKS["none"])["total"]
    analytic_layers = int(analytic.sum()) - 2 * (embed_flops(model, 1) + head_flops(model, 1))
    assert abs(analytic_layers - (measured - base)) <= 0.05 * max(measured - base, 1)


def test_keypoint_stem_flops_and_tokens_are_counted() -> None:
    model = tiny_vla(vision_keypoints=4)
    batch = make_batch(model, ["pick up the coke can", "open drawer"])
    assert seq_len(model, batch) == model.embed(batch).hidden.shape[1]
    measured = measured_flops(model, batch)["total"]
    assert abs(int(flops_for_batch(model, batch).sum()) - measured) <= 0.02 * measured
    assert embed_flops(model, 1) > embed_flops(tiny_vla(), 1)


@pytest.mark.parametrize("keypoints", [0, 4])
@pytest.mark.parametrize("coords", [False, True])
def test_deep_encoder_flops_match_the_counter(keypoints: int, coords: bool) -> None:
    model = tiny_vla(vision_encoder="deep", vision_keypoints=keypoints, vision_coords=coords)
    batch = make_batch(model, ["pick up the coke can", "open drawer"])
    assert seq_len(model, batch) == model.embed(batch).hidden.shape[1]
    measured = measured_flops(model, batch)["total"]
    assert abs(int(flops_for_batch(model, batch).sum()) - measured) <= 0.02 * measured
    images = torch.cat([batch[cam] for cam in model.config.cameras])  # (2B, H, W, 3)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.vision(images)
    assert abs(vision_flops(model, 2) - counter.get_total_flops()) <= 0.02 * counter.get_total_flops()


def test_routed_share_splits_the_call() -> None:
    model = tiny_vla(vision_encoder="deep", vision_keypoints=4)
    batch = make_batch(model, ["pick up the coke can", "open drawer"])
    share = routed_share(model, batch)
    assert share["vision"] + share["embed_other"] + share["head"] + share["routed"] == share["total"]
    assert share["total"] == int(flops_for_batch(model, batch).sum())
    assert share["routed"] == 2 * LAYERS * layer_flops(model, 1, seq_len(model, batch))
    assert share["routed_share"] + share["fixed_share"] == pytest.approx(1.0)


DEEP_WIDEST = {"vision_encoder": "deep", "vision_keypoints": 32, "vision_coords": True}  # the costliest stem


@pytest.mark.parametrize("overrides", [{}, DEEP_WIDEST])
def test_the_small_teacher_spends_at_least_80_percent_in_routed_layers(overrides: dict) -> None:
    from distill.checkpoint import read_config

    config = read_config(Path(__file__).resolve().parent.parent / "results/checkpoints/teacher-simpler")
    model = VLA(VLAConfig.from_dict({**config["vla"], **overrides}))
    words = lambda text: len(model.tokenizer.encode(text, model.config.max_text_len))
    shortest = min(config["data"]["instructions"], key=words)
    batch = make_batch(model, [shortest])  # the fewest decoder tokens: the largest fixed share
    assert routed_share(model, batch)["fixed_share"] <= 0.20


def test_attention_is_counted_by_measured_flops_on_cpu_sdpa() -> None:
    model = tiny_vla(attn="sdpa")
    by_op = measured_flops(model, make_batch(model, ["open drawer", "open drawer"]))["by_op"]
    attention = [v for k, v in by_op.items() if "attention" in k or "bmm" in k]
    assert attention and sum(attention) > 0


def test_seq_len_matches_embedding() -> None:
    model = tiny_vla()
    batch = make_batch(model, ["pick up the coke can", "open"])
    assert seq_len(model, batch) == model.embed(batch).hidden.shape[1]


def test_flops_scale_with_executed_layers() -> None:
    model = tiny_vla()
    totals = [forward_flops(model, 1, 30, k)["total"] for k in range(LAYERS + 1)]
    steps = np.diff(totals)
    assert np.all(steps > 0) and np.allclose(steps, steps[0])
    assert steps[0] == layer_flops(model, 1, 30)
    out = forward_flops(model, 3, 30, [0, 3])
    assert out["per_layer"][1] == 0 and out["per_layer"][0] == out["per_layer"][3] > 0
    assert out["total"] == out["embed"] + out["layers"] + out["head"]
    assert out["total"] == forward_flops(model, 1, 30, [1, 2])["total"] * 3  # linear in batch size


def test_layer_flops_quadratic_in_tokens() -> None:
    model = tiny_vla(num_kv_heads=4)
    d, inter, heads, hd = 32, 64, 4, 8
    n = 10
    expected = 2 * n * d * 4 * d + 3 * 2 * n * d * inter + 4 * heads * n * n * hd
    assert layer_flops(model, 1, n) == expected


def test_bad_layers_name_the_valid_range() -> None:
    model = tiny_vla()
    with pytest.raises(ValueError, match=r"\[7\].*0\.\.3"):
        forward_flops(model, 1, 10, [0, 7])
    with pytest.raises(ValueError, match="shape"):
        flops_for_batch(model, make_batch(model, ["open"]), torch.ones(1, 3, dtype=torch.bool))


def test_bench_flops_prints_the_checkpoint_and_the_variant(capsys) -> None:
    import argparse
    import json

    from distill.checkpoint import read_config
    from harness import bench_flops

    parser = argparse.ArgumentParser()
    bench_flops.add_arguments(parser)
    encoder = VLAConfig.from_dict(read_config(ROOT / bench_flops.DEFAULT_POLICY)["vla"]).vision_encoder
    variant = "patch" if encoder == "deep" else "deep"  # the other encoder, whichever the committed one is
    assert bench_flops.run(parser.parse_args(["--vision-encoder", variant, "--vision-keypoints", "4"])) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["encoder"] for line in lines] == [encoder, variant] and lines[1]["vision_keypoints"] == 4
    for line in lines:
        share = line["routed_share"]
        assert 0.8 <= share["min"] <= share["median"] <= share["max"] < 1.0
        assert line["median_call"]["vision"] > 0
    deep, patch = (lines[0], lines[1]) if encoder == "deep" else (lines[1], lines[0])
    assert deep["median_call"]["vision"] > patch["median_call"]["vision"]


def test_router_flops_are_counted_for_a_student_and_match_the_counter() -> None:
    from distill.flops import forward_flops, router_flops, seq_len
    from distill.routed import StudentVLA

    teacher = tiny_vla(4, "sdpa")
    student = StudentVLA.from_teacher(teacher, 0.5, 16).eval()
    batch = make_batch(student, ["pick up the coke can", "open drawer"])
    n = seq_len(student, batch)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        student.router(student.embed(batch))
        embed_only = FlopCounterMode(display=False)
    with torch.no_grad(), embed_only:
        student.embed(batch)
    measured = counter.get_total_flops() - embed_only.get_total_flops()
    assert router_flops(student, 2, n) == measured > 0
    assert router_flops(teacher, 2, n) == 0  # no router, nothing counted
    full = forward_flops(student, 1, n, 2)
    assert full["router"] == router_flops(student, 1, n)
    assert full["total"] == full["embed"] + full["router"] + full["layers"] + full["head"]
