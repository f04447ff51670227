"""Demonstration datasets: recording round trip, loader items, overwrite protection, corruption errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fake_env import FakeEnv, FakeExpert, register

from harness.demos import record_demos
from harness.rollout import rollout
from tasks.datasets import DatasetError, DemoDataset, DemoWriter


def record(episode_index: int, task: str = "reach", steps: int = 9):
    env = FakeEnv("fake_basic", task, "base", seed=0, max_steps=steps)
    return rollout(FakeExpert(env), env, episode_index=episode_index, seed=0, record=True).record


def write(path, records, crf: int = 0, **kw):
    writer = DemoWriter(path, suite="fake_basic", variant="base", crf=crf, versions={"git_commit": "abc"}, **kw)
    for i, rec in enumerate(records):
        writer.add(rec, task="reach", seed=0, episode_index=i)
    return writer.close()


def test_round_trip_is_exact_with_the_lossless_codec(tmp_path):
    records = [record(0, steps=9), record(1, steps=5)]
    meta = write(tmp_path / "d", records)
    assert meta["episodes"] == 2 and meta["steps"] == 14 and meta["image_codec"]["max_abs_error"] == 0
    ds = DemoDataset(tmp_path / "d", chunk=4)
    assert len(ds) == 14
    for i in range(len(ds)):
        item = ds[i]
        e, t = ds.index[i, 1], ds.index[i, 2]
        rec = records[e]
        assert item["agentview"].dtype == torch.uint8 and item["agentview"].shape == (128, 128, 3)
        assert torch.equal(item["agentview"], torch.from_numpy(rec["agentview"][t]))
        assert torch.equal(item["wrist"], torch.from_numpy(rec["wrist"][t]))
        assert item["proprio"].dtype == torch.float32 and torch.equal(item["proprio"], torch.from_numpy(rec["proprio"][t]))
        n = len(rec["actions"])
        expect = rec["actions"][np.minimum(np.arange(t, t + 4), n - 1)]
        assert item["actions"].shape == (4, 7) and torch.equal(item["actions"], torch.from_numpy(expect))
        assert item["action_mask"].tolist() == [t + k < n for k in range(4)]
        assert item["instruction"] == rec["instruction"] and item["task"] == "reach" and item["suite"] == "fake_basic"
    last = ds[8]  # final step of episode 0: one real action, three repeats of it
    assert last["action_mask"].tolist() == [True, False, False, False]
    assert torch.equal(last["actions"][3], last["actions"][0])
    assert ds.instructions() == [records[0]["instruction"]]
    stats = ds.action_stats()
    allact = np.concatenate([r["actions"] for r in records])
    np.testing.assert_allclose(stats["mean"], allact.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(stats["max"], allact.max(0))


def test_lossy_codec_error_within_the_recorded_bound(tmp_path):
    rec = record(0)
    meta = write(tmp_path / "d", [rec], crf=23)
    bound = meta["image_codec"]["max_abs_error"]
    assert 0 < bound <= 64  # x264 at CRF 23: small errors, recorded honestly
    ds = DemoDataset(tmp_path / "d")
    errors = [np.abs(ds[t]["agentview"].numpy().astype(int) - rec["agentview"][t]).max() for t in range(len(ds))]
    assert max(errors) <= bound
    assert np.mean([np.abs(ds[t]["wrist"].numpy().astype(int) - rec["wrist"][t]).mean() for t in range(len(ds))]) < 2


def test_sample_ids_are_stable_and_unique_across_folders(tmp_path):
    write(tmp_path / "a", [record(0), record(1)])
    write(tmp_path / "b", [record(2)])
    ds = DemoDataset([tmp_path / "a", tmp_path / "b"], preload=True)
    ids = [int(ds[i]["sample_id"]) for i in range(len(ds))]
    assert len(set(ids)) == len(ids) == 27
    assert ds.sample_ids().tolist() == ids  # listed without reading a frame, in item order
    reordered = DemoDataset([tmp_path / "b", tmp_path / "a"])
    assert {int(reordered[i]["sample_id"]) for i in range(len(reordered))} == set(ids)
    with pytest.raises(DatasetError, match="share dataset_id"):
        DemoDataset([tmp_path / "a", tmp_path / "a"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["agentview"].shape == (4, 128, 128, 3) and batch["actions"].shape == (4, 8, 7)


def test_overwrite_protection(tmp_path):
    write(tmp_path / "d", [record(0)])
    with pytest.raises(FileExistsError, match="already holds a dataset.*--overwrite"):
        write(tmp_path / "d", [record(1)])
    (tmp_path / "d" / "notes.txt").write_text("mine")
    write(tmp_path / "d", [record(1), record(2)], overwrite=True)
    assert len(DemoDataset(tmp_path / "d")) == 18 and (tmp_path / "d" / "notes.txt").read_text() == "mine"
    (tmp_path / "u" / "videos").mkdir(parents=True)  # an interrupted recording
    with pytest.raises(FileExistsError, match="unfinished recording"):
        write(tmp_path / "u", [record(0)])


@pytest.mark.parametrize("victim, needle", [
    ("steps.parquet", "steps.parquet is truncated or corrupted"),
    ("episodes.parquet", "episodes.parquet is truncated or corrupted"),
    ("meta.json", "meta.json is corrupted"),
    ("videos/ep000000.mp4", "ep000000.mp4 is truncated or corrupted"),
])
def test_truncated_files_give_errors_naming_them(tmp_path, victim, needle):
    write(tmp_path / "d", [record(0)])
    path = tmp_path / "d" / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=needle):
        ds = DemoDataset(tmp_path / "d")
        ds[0]


def test_missing_meta_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="meta.json is missing"):
        DemoDataset(tmp_path)
    with pytest.raises(ValueError, match="no episodes"):
        DemoWriter(tmp_path / "e", suite="fake_basic", variant="base").close()


def test_record_demos_keeps_successes_and_reports_rate(tmp_path, monkeypatch):
    suite = register(monkeypatch)
    meta = record_demos(suite, str(tmp_path / "d"), tasks=["reach", "unreachable"], episodes=2,
                        max_attempts=3, progress=False)
    assert meta["expert_success"]["reach"] == {"attempts": 2, "successes": 2, "rate": 1.0}
    assert meta["expert_success"]["unreachable"] == {"attempts": 3, "successes": 0, "rate": 0.0}
    assert meta["tasks"] == ["reach"] and meta["versions"]["mujoco"] is not None
    saved = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert saved["dataset_id"] == meta["dataset_id"] and saved["seed"] == 1
    ds = DemoDataset(tmp_path / "d")
    assert len(ds) == 2 * 12


def test_record_demos_with_noise_is_reproducible_and_labels_stay_clean(tmp_path, monkeypatch):
    suite = register(monkeypatch)
    clean = record_demos(suite, str(tmp_path / "c"), tasks=["reach"], episodes=2, progress=False, codec="npy")
    noisy = [record_demos(suite, str(tmp_path / f"n{i}"), tasks=["reach"], episodes=2, progress=False,
                          codec="npy", noise=0.3, noise_hold=3) for i in range(2)]
    assert "action_noise" not in clean and noisy[0]["action_noise"] == {"std": 0.3, "hold": 3}
    a, b, c = (DemoDataset(tmp_path / name) for name in ("n0", "n1", "c"))
    assert len(a) == len(b)
    for i in range(len(a)):  # same seed: the same noise, so the same episodes
        np.testing.assert_array_equal(a[i]["proprio"], b[i]["proprio"])
    assert not all(np.array_equal(a[i]["proprio"], c[i]["proprio"]) for i in range(min(len(a), len(c))))
    # labels are the expert's clean action at each visited state: in [-1, 1] and gripper closed
    acts = np.stack([np.asarray(a[i]["actions"])[0] for i in range(len(a))])
    assert np.all(np.abs(acts) <= 1.0) and np.all(acts[:, 6] == 1.0)
    with pytest.raises(ValueError, match="--noise must be in"):
        record_demos(suite, str(tmp_path / "bad"), tasks=["reach"], episodes=1, progress=False, noise=-0.1)
    with pytest.raises(ValueError, match="--noise-hold must be >= 1"):
        record_demos(suite, str(tmp_path / "bad"), tasks=["reach"], episodes=1, progress=False, noise=0.1,
                     noise_hold=0)
