"""What a time-boxed run on a lent GPU machine needs: raw-frame datasets, nested dataset folders, per-task
parallel recording plans and the gpu_run pipeline. (Wall-clock step budgets: ``test_loop.py``; time-boxed
teacher and students: ``test_train.py``, ``test_distill_cli.py``; the augmentation: ``test_data.py``.)"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from test_datasets import record, write

from distill import train as train_mod
from tasks.datasets import DatasetError, DemoDataset, DemoWriter, expand_dataset_dirs
from tasks.errors import UserInputError


def test_npy_codec_round_trip_is_exact_and_corruption_is_named(tmp_path):
    records = [record(0, steps=7), record(1, steps=4)]
    meta = write(tmp_path / "d", records, codec="npy")
    assert meta["image_codec"]["container"] == "npy" and meta["image_codec"]["max_abs_error"] == 0
    ds = DemoDataset(tmp_path / "d", chunk=3)
    assert len(ds) == 11
    for i in range(len(ds)):
        e, t = ds.index[i, 1], ds.index[i, 2]
        assert torch.equal(ds[i]["agentview"], torch.from_numpy(records[e]["agentview"][t]))
        assert torch.equal(ds[i]["wrist"], torch.from_numpy(records[e]["wrist"][t]))
    path = tmp_path / "d" / "videos" / "ep000001.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="ep000001.npy is truncated or corrupted"):
        DemoDataset(tmp_path / "d")[10]
    with pytest.raises(ValueError, match="unknown image codec 'png'; valid codecs: h264, npy"):
        DemoWriter(tmp_path / "x", suite="fake_basic", variant="base", codec="png")


def test_a_parent_folder_stands_for_the_datasets_below_it(tmp_path):
    write(tmp_path / "root" / "suite" / "v1" / "task_a", [record(0, steps=5)], codec="npy")
    write(tmp_path / "root" / "suite" / "v1" / "task_b", [record(1, steps=3)], codec="npy")
    write(tmp_path / "flat", [record(2, steps=2)], codec="npy")
    found = expand_dataset_dirs([tmp_path / "root", tmp_path / "flat"])
    assert found == [tmp_path / "root/suite/v1/task_a", tmp_path / "root/suite/v1/task_b", tmp_path / "flat"]
    ds = DemoDataset([tmp_path / "root", tmp_path / "flat"])
    assert len(ds) == 10 and len(ds.folders) == 3 and ds.dirs[0].endswith("task_a")
    # an unfinished recording below the parent is an error, not silently left out
    (tmp_path / "root" / "suite" / "v2" / "task_c" / "videos").mkdir(parents=True)
    with pytest.raises(DatasetError, match="task_c holds an unfinished recording"):
        DemoDataset(tmp_path / "root")
    with pytest.raises(DatasetError, match="meta.json is missing"):
        DemoDataset(tmp_path / "empty_parent_that_does_not_exist")


def test_family_plan_splits_by_task_and_a_passed_deadline_starts_nothing(tmp_path, capsys):
    import tasks as suites
    from harness.demo_sets import recipe, record_family

    # one google task already recorded: counted as done, not planned again
    done = tmp_path / "simpler_google" / "visual_matching" / suites.tasks("simpler_google")[0]
    write(done, [record(0, steps=2)], codec="npy")
    folders = record_family("simpler", tmp_path, scale=0.02, jobs=2, codec="npy", deadline_s=0.0, progress=False)
    assert folders == [done]
    out = capsys.readouterr().out
    shards = sum(len(suites.tasks(e.suite)) for e in recipe("simpler", 0.02))
    assert f"{shards - 1} folders" in out and out.count("not started (deadline of 0 s passed)") == shards - 1
    with pytest.raises(ValueError, match="unknown image codec 'gif'"):
        record_family("simpler", tmp_path, jobs=2, codec="gif")
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        record_family("simpler", tmp_path, jobs=0)


def test_registry_lists_one_family_without_importing_the_others():
    import tasks as suites

    google = suites.suites("simpler")
    assert "simpler_google" in google and all(s.startswith("simpler_") for s in google)
    with pytest.raises(ValueError, match="unknown suite family 'nope'; valid families: simpler, libero"):
        suites.suites("nope")


def test_gpu_run_packs_each_stage_and_writes_the_manifest(tmp_path, monkeypatch):
    from harness import demo_sets, gpu_run

    data = tmp_path / "data"
    write(data / "simpler_google" / "visual_matching" / "t", [record(0, steps=6), record(1, steps=5)], codec="npy")
    monkeypatch.setattr(demo_sets, "record_family", lambda *a, **k: [data / "simpler_google/visual_matching/t"])

    def fake_train(dataset, out, **kw):
        from test_student import tiny_teacher

        from distill.checkpoint import save_checkpoint

        save_checkpoint(out, tiny_teacher())
        return {"step": 3, "time_budget_s": kw["time_budget_s"]}

    def fake_distill(teacher, dataset, budgets, out, **kw):
        for b in budgets:
            (out / f"student-b{b:g}").mkdir(parents=True)
            (out / f"student-b{b:g}" / "config.json").write_text("{}")
        return {"budgets": {f"{b:g}": {"status": "trained"} for b in budgets}}

    class Proc:
        stdout, stderr = '{"speedup": 1.5, "median_ms": 2.0}\n', ""

    monkeypatch.setattr(train_mod, "train_teacher", fake_train)
    monkeypatch.setattr("distill.student.distill", fake_distill)
    real_run = gpu_run.subprocess.run  # only the latency processes are faked (provenance still asks git)
    monkeypatch.setattr(gpu_run.subprocess, "run", lambda cmd, *a, **k: Proc() if "latency" in cmd else
                        real_run(cmd, *a, **k))
    monkeypatch.setattr(gpu_run, "pick_data_dir", lambda preferred, fallback, need: (preferred, "test"))
    out = tmp_path / "out"
    assert gpu_run.main(["--out", str(out), "--work", str(tmp_path / "w"), "--data", str(data), "--device", "cpu",
                         "--budgets", "0.5,0.25"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    assert manifest["demos"]["samples"] == 11 and manifest["demos"]["episodes"] == 2
    assert manifest["teacher"]["time_budget_s"] == 170.0
    assert manifest["latency_b0.5"]["result"]["speedup"] == 1.5 and "done" in manifest
    with tarfile.open(out / "teacher-simpler.tar") as tar:
        assert {"teacher-simpler/config.json", "teacher-simpler/model.safetensors"} <= set(tar.getnames())
    with tarfile.open(out / "student-simpler-b0.25.tar") as tar:
        assert tar.getnames() == ["student-b0.25/config.json"]
    assert np.isfinite(manifest["render_check"]["mean_pixel"])

    teacher_only = tmp_path / "out2"
    assert gpu_run.main(["--out", str(teacher_only), "--work", str(tmp_path / "w2"), "--data", str(data),
                         "--device", "cpu", "--student-s", "0"]) == 0
    stages = json.loads((teacher_only / "manifest.json").read_text())["stages"]
    assert "teacher" in stages and "students" in stages["done"]["skipped"] and "students" not in stages
    assert sorted(f.name for f in teacher_only.iterdir()) == ["manifest.json", "teacher-simpler.tar"]

    # --demo-noise records the recipe a second time with executed-action noise, into DATA-dart, and the
    # teacher trains on both; --teacher-init reaches train_teacher
    calls, trained = [], {}

    def fake_record(family, out, **kw):
        calls.append((out, kw.get("noise", 0.0), kw.get("noise_hold", 1)))
        if kw.get("noise"):
            writer = DemoWriter(out / "simpler_google" / "visual_matching" / "t", suite="fake_basic",
                                variant="visual_matching", codec="npy")
            writer.add(record(2, steps=4), task="reach", seed=0, episode_index=0)
            writer.close(extra={"action_noise": {"std": kw["noise"], "hold": kw["noise_hold"]}})
        return []

    def fake_train_init(dataset, out, **kw):
        trained.update(kw, samples=len(dataset))
        return fake_train(dataset, out, **kw)

    monkeypatch.setattr(demo_sets, "record_family", fake_record)
    monkeypatch.setattr(train_mod, "train_teacher", fake_train_init)
    noisy_out = tmp_path / "out3"
    assert gpu_run.main(["--out", str(noisy_out), "--work", str(tmp_path / "w3"), "--data", str(data), "--device",
                         "cpu", "--student-s", "0", "--demo-noise", "0.1", "--teacher-init", "some/ckpt",
                         "--teacher-keypoints", "32"]) == 0
    assert calls == [(data, 0.0, 1), (data.with_name("data-dart"), 0.1, 8)]
    stages = json.loads((noisy_out / "manifest.json").read_text())["stages"]
    assert stages["demos"]["per_variant"] == {"fake_basic/base": 2, "fake_basic/visual_matching/noisy": 1}
    assert trained["init"] == "some/ckpt" and trained["samples"] == 15
    assert trained["model_overrides"] == {"vision_keypoints": 32}


def test_a_failing_folder_does_not_stop_the_others_and_is_named(tmp_path, monkeypatch, capsys):
    from concurrent.futures import ThreadPoolExecutor

    from harness import demo_sets

    def fake_shard(suite, variant, task, episodes, seed, folder, codec, noise=0.0, noise_hold=1):
        if task == "move_near" and variant == "visual_matching":
            raise ValueError("the expert never succeeded")
        return {"folder": folder, "episodes": episodes, "expert_success": {}}

    monkeypatch.setattr(demo_sets, "_executor", lambda jobs: ThreadPoolExecutor(jobs))
    monkeypatch.setattr(demo_sets, "_record_shard", fake_shard)
    with pytest.raises(RuntimeError, match=r"1 demo folder\(s\) failed:\n.*move_near: ValueError: the expert never"):
        demo_sets.record_family("simpler", tmp_path, scale=0.02, jobs=3, progress=False)
    folders = demo_sets.record_family("simpler", tmp_path, scale=0.02, jobs=3, progress=False, strict=False)
    import tasks as suites

    total = sum(len(suites.tasks(e.suite)) for e in demo_sets.recipe("simpler", 0.02))
    assert len(folders) == total - 1 and tmp_path / "simpler_google/visual_matching/move_near" not in folders
    assert "move_near: ValueError: the expert never succeeded" in capsys.readouterr().out


def test_pick_data_dir_falls_back_when_the_preferred_file_system_is_too_small(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from harness.gpu_run import pick_data_dir

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100e9, 90e9, 10e9))
    chosen, why = pick_data_dir(tmp_path / "shm" / "data", tmp_path / "disk", need_bytes=5e9)
    assert chosen == tmp_path / "shm" / "data" and "10.0 GB free" in why
    chosen, why = pick_data_dir(tmp_path / "shm" / "data", tmp_path / "disk", need_bytes=30e9)
    assert chosen == tmp_path / "disk" and "30.0 GB are needed" in why


def test_record_family_refuses_bad_noise_before_recording(tmp_path):
    from harness import demo_sets

    with pytest.raises(ValueError, match="--noise must be in"):
        demo_sets.record_family("simpler", tmp_path, scale=0.02, jobs=3, progress=False, noise=2.0)
    assert not any(tmp_path.iterdir())


def test_boost_multiplies_one_tasks_episodes_and_names_unknown_tasks(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from harness import demo_sets

    seen = {}

    def fake_shard(suite, variant, task, episodes, seed, folder, codec, noise=0.0, noise_hold=1):
        seen[(suite, variant, task)] = episodes
        return {"folder": folder, "episodes": episodes, "expert_success": {}}

    monkeypatch.setattr(demo_sets, "_executor", lambda jobs: ThreadPoolExecutor(jobs))
    monkeypatch.setattr(demo_sets, "_record_shard", fake_shard)
    demo_sets.record_family("simpler", tmp_path, scale=0.1, progress=False, boost={"move_near": 3})
    assert seen[("simpler_google", "visual_matching", "move_near")] == 12  # ceil(40 * 0.1) * 3
    assert seen[("simpler_google", "visual_matching", "open_top_drawer")] == 4
    assert seen[("simpler_google", "lighting_darker", "move_near")] == 3  # ceil(ceil(0.6) * 3)
    assert demo_sets.parse_boost("move_near=3, open_top_drawer=1.5") == {"move_near": 3.0, "open_top_drawer": 1.5}
    with pytest.raises(UserInputError, match="unknown task"):
        demo_sets.record_family("simpler", tmp_path, boost={"move_far": 2})
    with pytest.raises(UserInputError, match="TASK=FACTOR"):
        demo_sets.parse_boost("move_near=0")
    from harness.cli import main

    assert main(["demos", "--family", "simpler", "--boost", "move_far=2", "--out", str(tmp_path / "x")]) == 2
    assert main(["demos", "--suite", "simpler_widowx", "--boost", "move_near=2", "--out", str(tmp_path / "y")]) == 2
