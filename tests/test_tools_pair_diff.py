"""tools.pair_diff: the offline gap between two checkpoints' predicted chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_student import SyntheticDemos, tiny_teacher

from distill.checkpoint import save_checkpoint
from tasks.datasets import DemoWriter
from tools import pair_diff
from tools.pair_diff import prediction_gap


def test_a_checkpoint_has_no_gap_to_itself():
    model = tiny_teacher(seed=0)
    gap = prediction_gap(model, model, SyntheticDemos(n=10), samples=8)
    assert gap == pair_diff.PairGap(samples=8, mse=0.0, gripper_disagreement=0.0)


def test_gap_matches_a_hand_computation_over_every_item():
    a, b, data = tiny_teacher(seed=0), tiny_teacher(seed=1), SyntheticDemos(n=10)
    gap = prediction_gap(a, b, data, samples=100, batch_size=3)  # more samples than items: all 10, in 4 batches
    items = [data[i] for i in range(len(data))]
    with torch.no_grad():
        pa, pb = a(a.prepare(items)), b(b.prepare(items))
    flips = (a.unnormalize_actions(pa)[..., -1] > 0) != (b.unnormalize_actions(pb)[..., -1] > 0)
    assert gap.samples == 10
    assert gap.mse == pytest.approx(float(((pa - pb) ** 2).mean()), rel=1e-5)
    assert gap.gripper_disagreement == pytest.approx(float(flips.float().mean()))
    assert gap.mse > 0


def test_the_draw_is_seeded_and_bad_inputs_are_refused():
    a, b, data = tiny_teacher(seed=0), tiny_teacher(seed=1), SyntheticDemos(n=12)
    assert prediction_gap(a, b, data, samples=5, seed=3) == prediction_gap(a, b, data, samples=5, seed=3)
    with pytest.raises(ValueError, match="chunks of 4 and 2 steps"):
        prediction_gap(a, tiny_teacher(chunk=2), data)
    with pytest.raises(ValueError, match="samples and batch_size must be >= 1"):
        prediction_gap(a, b, data, samples=0)


def test_command_reads_checkpoints_and_a_demonstration_folder(tmp_path, capsys):
    save_checkpoint(tmp_path / "a", tiny_teacher(seed=0))
    save_checkpoint(tmp_path / "b", tiny_teacher(seed=1))
    g = np.random.default_rng(0)
    writer = DemoWriter(tmp_path / "demos", suite="synthetic", variant="base", codec="npy")
    for episode in range(2):
        steps = 5
        writer.add({"agentview": g.integers(0, 256, (steps, 128, 128, 3), dtype=np.uint8),
                    "wrist": g.integers(0, 256, (steps, 128, 128, 3), dtype=np.uint8),
                    "proprio": g.normal(size=(steps, 8)).astype(np.float32),
                    "actions": g.uniform(-1, 1, (steps, 7)).astype(np.float32),
                    "instruction": "pick the block"}, task="task0", seed=0, episode_index=episode)
    writer.close()
    assert pair_diff.main([str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(tmp_path / "demos"),
                           "--samples", "6", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 samples: normalised MSE between the two ") and "gripper sign disagreement" in out
