"""distill.probe: out-of-fold ridge regression by episode, and a probe that finds a target painted into the images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_student import SyntheticDemos
from torch.utils.data import Dataset

from distill.checkpoint import save_checkpoint
from distill.probe import PENALTIES, format_probe, probe, ridge_cv, target_of
from harness import cli


def test_ridge_cv_recovers_a_linear_map_out_of_fold_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    y = x @ rng.normal(size=(12, 3))
    groups = np.repeat(np.arange(30), 10)
    pred = ridge_cv(x, y, groups, lam=1e-4)
    assert 1 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum() > 0.999
    noise = rng.normal(size=(300, 3))
    pred = ridge_cv(x, noise, groups, lam=1e-4)
    assert 1 - ((noise - pred) ** 2).sum() / ((noise - noise.mean(0)) ** 2).sum() < 0.05
    wide = rng.normal(size=(60, 500))  # more features than samples: the dual form
    yw = wide[:, :3]
    assert ridge_cv(wide, yw, np.repeat(np.arange(12), 5), lam=1e-3).shape == (60, 3)


class Painted(Dataset):
    """Items whose agentview has a bright square at a position that *is* the target (metres = pixels / 1000),
    and whose proprio is noise: only the images can place the target."""

    def __init__(self, n: int = 160):
        base, g = SyntheticDemos(n=1).items[0], np.random.default_rng(1)
        self.items = []
        for i in range(n):
            r, c = g.integers(8, 112, 2)
            img = np.zeros((128, 128, 3), np.uint8)
            img[r - 8:r + 8, c - 8:c + 8] = 255
            target = np.array([c, r, 0.0], np.float32) / 1000.0
            self.items.append({**base, "agentview": torch.from_numpy(img), "wrist": torch.from_numpy(img),
                               "proprio": torch.from_numpy(g.normal(size=8).astype(np.float32)),
                               "expert_target": torch.from_numpy(np.array([*target, 1.0, 0.5], np.float32)),
                               "sample_id": torch.tensor((i // 4) << 20 | (i % 4)), "task": "painted"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def test_probe_places_a_target_from_the_images_not_the_proprio(tmp_path, teacher):
    save_checkpoint(tmp_path / "t", teacher)
    rows = probe(tmp_path / "t", Painted(), samples=160)
    by = {r["features"]: r for r in rows}
    assert by["vision"]["episodes"] == 40 and by["vision"]["n"] == 160 and by["vision"]["penalty"] in PENALTIES
    assert by["vision"]["r2"] > 0.5 > by["proprio"]["r2"]
    assert by["vision"]["rmse_cm"] < by["proprio"]["rmse_cm"] <= 1.2 * by["proprio"]["baseline_rmse_cm"]
    assert "| painted | 160 | 40 |" in format_probe(rows)


def test_probe_refuses_data_without_privileged_state(tmp_path, teacher, monkeypatch, capsys):
    with pytest.raises(ValueError, match="no 'objects' field: record them again"):
        target_of(SyntheticDemos(n=1).items[0], "objects")
    save_checkpoint(tmp_path / "t", teacher)
    import distill.data

    monkeypatch.setattr(distill.data, "open_dataset", lambda data, chunk: SyntheticDemos(n=12))
    assert cli.main(["probe", "--policy", str(tmp_path / "t"), "--data", str(tmp_path), "--samples", "12"]) == 2
    assert "no 'expert_target' field" in capsys.readouterr().err


def test_rmse_interval_by_episode():
    from distill.probe import _rmse_interval

    same = np.full((6, 3), 0.01)  # every episode off by (1, 1, 1) cm
    low, high = _rmse_interval(same, np.array([0, 0, 1, 1, 2, 2]))
    assert low == pytest.approx(100 * np.sqrt(3e-4)) and high == pytest.approx(low)
    spread = np.array([[0.0, 0, 0], [0.0, 0, 0], [0.02, 0, 0], [0.02, 0, 0]])
    low, high = _rmse_interval(spread, np.array([0, 0, 1, 1]))
    assert low == pytest.approx(0.0) and high == pytest.approx(2.0)
