"""LeRobot dataset layout v3.0: write expert rollouts, read them back, read what LeRobot writes, CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from fake_env import FakeEnv, FakeExpert

from distill.data import open_dataset
from harness.cli import main
from harness.rollout import rollout
from tasks.datasets import DatasetError, DemoDataset, DemoWriter
from tasks.lerobot import LeRobotDataset, LeRobotWriter, read_lerobot

FIXTURE = Path(__file__).parent / "data" / "lerobot_v30_av1"  # written by lerobot 0.4.4 (see its README.md)
CAMERAS = {"agentview": "observation.images.image", "wrist": "observation.images.image2"}


@pytest.fixture(scope="module")
def widowx_records():
    """Three episodes of simpler_widowx put_carrot_on_plate by the expert: 60 steps, one cut to 37 steps, and
    the first again under another instruction (a second task)."""
    import tasks

    env = tasks.make("simpler_widowx", "put_carrot_on_plate", seed=1)
    try:
        expert = tasks.expert(env)
        first, second = (rollout(expert, env, episode_index=i, seed=1, record=True).record for i in range(2))
    finally:
        env.close()
    cut = {k: (v[:37] if isinstance(v, np.ndarray) else v) for k, v in second.items()}
    return [first, cut, {**first, "instruction": "put the carrot on the plate again"}]


def write_both(tmp_path: Path, records: list[dict], **kw) -> tuple[dict, dict]:
    """The same episodes through LeRobotWriter (tmp_path/lr) and DemoWriter (tmp_path/ours); both metas."""
    metas = []
    for cls, name in ((LeRobotWriter, "lr"), (DemoWriter, "ours")):
        writer = cls(
            tmp_path / name,
            suite="simpler_widowx",
            variant="visual_matching",
            versions={"git": "x"},
            **(kw if cls is LeRobotWriter else {}),
        )
        for i, rec in enumerate(records):
            writer.add(rec, task="put_carrot_on_plate", seed=1, episode_index=i)
        metas.append(writer.close(extra={"expert_success": {"put_carrot_on_plate": {"rate": 1.0}}}))
    return metas[0], metas[1]


def fake_records(lengths: list[int]) -> list[dict]:
    records = []
    for i, n in enumerate(lengths):
        env = FakeEnv("fake_basic", "reach", "base", seed=0, max_steps=n)
        records.append(rollout(FakeExpert(env), env, episode_index=i, seed=0, record=True).record)
    return records


def frame_times(path: Path) -> list[float]:
    """Presentation time of every frame of ``path`` (FFmpeg's showinfo filter)."""
    import imageio_ffmpeg

    done = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-i",
            str(path),
            "-vf",
            "showinfo",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [float(x) for x in re.findall(r"pts_time:([0-9.]+)", done.stderr)]


def test_round_trip_equals_the_records_and_demo_dataset_items(widowx_records, tmp_path):
    meta, _ = write_both(tmp_path, widowx_records)
    assert meta["episodes"] == 3 and meta["steps"] == 157 and meta["image_codec"]["max_abs_error"] == 0
    assert meta["expert_success"] == {"put_carrot_on_plate": {"rate": 1.0}}
    folder = read_lerobot(tmp_path / "lr")
    assert folder.lengths.tolist() == [60, 37, 60] and folder.starts.tolist() == [0, 60, 97]
    assert folder.tasks == ["put carrot on plate", "put the carrot on the plate again"]
    assert folder.task_index.tolist() == [0] * 97 + [1] * 60
    for e, rec in enumerate(widowx_records):  # bit-exact images, exact low-dim data, per episode
        frames = folder.frames(e)
        assert np.array_equal(frames[:, :, :128], rec["agentview"]) and np.array_equal(
            frames[:, :, 128:], rec["wrist"]
        )
        span = slice(folder.starts[e], folder.starts[e] + folder.lengths[e])
        assert np.array_equal(folder.proprio[span], rec["proprio"]) and np.array_equal(
            folder.actions[span], rec["actions"]
        )
        assert np.array_equal(folder.privileged["objects"][span], rec["objects"])
        assert np.array_equal(folder.privileged["expert_target"][span], rec["expert_target"])
    ours, theirs = LeRobotDataset(tmp_path / "lr", chunk=8), DemoDataset(tmp_path / "ours", chunk=8)
    assert len(ours) == len(theirs) == 157
    for i in range(len(ours)):
        a, b = ours[i], theirs[i]
        assert set(a) == set(b)
        for key in a:
            if key != "sample_id":
                assert (
                    torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
                ), (i, key)
    assert ours[96]["action_mask"].tolist() == [True] + [False] * 7  # last step of the 37-step episode
    assert ours[97]["instruction"] == "put the carrot on the plate again" and ours[97]["action_mask"].all()
    assert ours.instructions() == theirs.instructions()
    assert {k: v.tolist() for k, v in ours.action_stats().items()} == {
        k: v.tolist() for k, v in theirs.action_stats().items()
    }
    ids = {int(ours[i]["sample_id"]) for i in range(len(ours))}
    assert len(ids) == 157


def test_files_carry_what_lerobots_loader_reads(widowx_records, tmp_path):
    write_both(tmp_path, widowx_records[:2])
    root = tmp_path / "lr"
    info = json.loads((root / "meta/info.json").read_text())
    # DatasetInfo's fields (lerobot/datasets/utils.py) and the templates it defaults to
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "widowx" and info["fps"] == 10
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (2, 97, 1)
    assert (
        info["chunks_size"] == 1000
        and info["data_files_size_in_mb"] == 100
        and info["video_files_size_in_mb"] == 200
    )
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:2"}
    features = info["features"]
    for key in CAMERAS.values():
        assert features[key]["dtype"] == "video" and features[key]["shape"] == [128, 128, 3]
        assert features[key]["names"] == ["height", "width", "channels"]
        assert {
            "video.height": 128,
            "video.width": 128,
            "video.codec": "h264",
            "video.fps": 10,
            "video.channels": 3,
            "has_audio": False,
        }.items() <= features[key]["info"].items()
    assert features["observation.state"]["shape"] == [8] and features["action"]["shape"] == [7]
    assert features["privileged.objects"]["shape"] == [12, 4] and features["privileged.expert_target"][
        "shape"
    ] == [5]
    assert not any(k.startswith("observation.privileged") for k in features)  # not a LeRobot policy input
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert features[key]["shape"] == [1] and features[key]["names"] is None
    tasks = pd.read_parquet(root / "meta/tasks.parquet")  # as lerobot's load_tasks reads it
    assert tasks.index.name == "task" and tasks.loc["put carrot on plate", "task_index"] == 0
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [
        (e["episode_index"], e["length"], e["dataset_from_index"], e["dataset_to_index"]) for e in episodes
    ] == [(0, 60, 0, 60), (1, 37, 60, 97)]
    assert episodes[1]["tasks"] == ["put carrot on plate"] and episodes[1]["data/file_index"] == 0
    assert episodes[0]["meta/episodes/chunk_index"] == 0 and len(episodes[0]["stats/action/q99"]) == 7
    for key in CAMERAS.values():
        assert [e[f"videos/{key}/from_timestamp"] for e in episodes] == [0.0, 6.0]
        assert [e[f"videos/{key}/to_timestamp"] for e in episodes] == [6.0, 9.7]
        path = root / f"videos/{key}/chunk-000/file-000.mp4"
        np.testing.assert_allclose(frame_times(path), np.arange(97) / 10, atol=1e-6)  # where LeRobot seeks
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 8)
    assert data.schema.field("action").type == pa.list_(pa.float32(), 7)
    assert (
        data.schema.field("timestamp").type == pa.float32() and data.schema.field("index").type == pa.int64()
    )
    assert pq.ParquetFile(root / "data/chunk-000/file-000.parquet").num_row_groups == 2  # one per episode
    np.testing.assert_allclose(
        data.column("timestamp").to_numpy(), np.r_[np.arange(60), np.arange(37)] / 10, rtol=1e-6
    )
    assert data.column("index").to_pylist() == list(range(97))
    stats = json.loads((root / "meta/stats.json").read_text())
    actions = np.concatenate([r["actions"] for r in widowx_records[:2]]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(actions, 0.99, axis=0))
    assert stats["action"]["count"] == [97] and np.array(stats["privileged.objects"]["max"]).shape == (12, 4)
    image = np.concatenate([r["agentview"] for r in widowx_records[:2]]) / 255.0  # (N, H, W, 3)
    assert np.array(stats[CAMERAS["agentview"]]["mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(
        np.ravel(stats[CAMERAS["agentview"]]["mean"]), image.mean((0, 1, 2)), rtol=1e-9
    )
    np.testing.assert_allclose(
        np.ravel(stats[CAMERAS["agentview"]]["q50"]), np.quantile(image, 0.5, axis=(0, 1, 2))
    )
    ours = json.loads((root / "meta/actdistill.json").read_text())
    assert ours["suite"] == "simpler_widowx" and [e["init_index"] for e in ours["episode_rows"]] == [0, 1]


def test_episodes_span_several_video_and_data_files(tmp_path):
    records = fake_records([5, 7, 4, 6])
    writer = LeRobotWriter(
        tmp_path / "d",
        suite="fake_basic",
        variant="base",
        chunks_size=2,
        video_files_size_in_mb=1e-3,
        data_files_size_in_mb=1e-3,
    )  # a file per episode
    for i, rec in enumerate(records):
        writer.add(rec, task="reach", seed=0, episode_index=i)
    meta = writer.close()
    assert meta["image_codec"]["max_abs_error"] == 0 and len(meta["video_files"]) == 8
    assert sorted(
        p.relative_to(tmp_path / "d").as_posix() for p in (tmp_path / "d/data").rglob("*.parquet")
    ) == [
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/file-001.parquet",
        "data/chunk-001/file-000.parquet",
        "data/chunk-001/file-001.parquet",
    ]
    folder = read_lerobot(tmp_path / "d")
    key = CAMERAS["wrist"]
    assert [
        (e[f"videos/{key}/chunk_index"], e[f"videos/{key}/file_index"], e[f"videos/{key}/from_timestamp"])
        for e in folder.episodes
    ] == [(0, 0, 0.0), (0, 1, 0.0), (1, 0, 0.0), (1, 1, 0.0)]
    for e, rec in enumerate(records):
        assert np.array_equal(folder.camera(e, "wrist"), rec["wrist"])
        assert np.array_equal(
            folder.actions[folder.starts[e] : folder.starts[e] + len(rec["actions"])], rec["actions"]
        )
    assert len(LeRobotDataset(tmp_path / "d", chunk=3)) == 22


def test_reads_a_dataset_written_by_lerobot_itself():
    folder = read_lerobot(FIXTURE)  # AV1 yuv420p CRF 30, cameras image + wrist_image, 20 fps
    assert folder.cameras == {
        "agentview": "observation.images.image",
        "wrist": "observation.images.wrist_image",
    }
    assert folder.fps == 20 and folder.meta["suite"] == "panda" and folder.lengths.tolist() == [12, 9]
    expected = np.load(FIXTURE / "expected_lowdim.npz")
    assert np.array_equal(folder.proprio, expected["state"]) and np.array_equal(
        folder.actions, expected["action"]
    )
    yy, xx = np.mgrid[0:32, 0:32]
    for e, n in enumerate([12, 9]):
        agent = np.stack(
            [np.stack([xx * 4 + t * 4, yy * 4 + 60, np.full_like(xx, 40 + 80 * e)], -1) for t in range(n)]
        )
        wrist = np.stack(
            [np.stack([np.full_like(xx, 200), (xx + yy) * 3, yy * 4 + t * 6], -1) for t in range(n)]
        )
        for cam, truth in (("agentview", agent), ("wrist", wrist)):
            err = np.abs(folder.camera(e, cam).astype(int) - truth)
            assert err.max() <= 16 and err.mean() < 2.5, (
                e,
                cam,
                err.max(),
                err.mean(),
            )  # lossy AV1, right frames
    ds = open_dataset([str(FIXTURE)], chunk=4)
    assert isinstance(ds, LeRobotDataset) and len(ds) == 21
    last, nxt = ds[11], ds[12]
    assert last["instruction"] == "pick up the black bowl" and last["action_mask"].tolist() == [
        True,
        False,
        False,
        False,
    ]
    assert torch.equal(last["actions"][3], torch.from_numpy(expected["action"][11]))
    assert nxt["instruction"] == nxt["task"] == "open the top drawer" and nxt["suite"] == "panda"
    assert nxt["agentview"].shape == (32, 32, 3) and "objects" not in nxt
    assert ds.instructions() == ["open the top drawer", "pick up the black bowl"]
    assert int(ds[0]["sample_id"]) == int(LeRobotDataset(FIXTURE)[0]["sample_id"])  # stable dataset id


def test_folders_of_both_formats_mix_under_one_path(tmp_path):
    records = fake_records([5, 6])
    for cls, name in ((LeRobotWriter, "a"), (DemoWriter, "b")):
        writer = cls(tmp_path / "all" / name, suite="fake_basic", variant="base")
        writer.add(records[0 if name == "a" else 1], task="reach", seed=0, episode_index=0)
        writer.close()
    ds = open_dataset([str(tmp_path / "all")], chunk=2)
    assert isinstance(ds, LeRobotDataset) and ds.dirs == [
        str(tmp_path / "all" / "a"),
        str(tmp_path / "all" / "b"),
    ]
    assert len(ds) == 11 and len({int(ds[i]["sample_id"]) for i in range(11)}) == 11
    assert torch.equal(ds[5]["agentview"], torch.from_numpy(records[1]["agentview"][0]))
    (tmp_path / "all" / "c" / "videos").mkdir(parents=True)  # an interrupted LeRobot recording
    with pytest.raises(DatasetError, match="c holds an unfinished recording"):
        open_dataset([str(tmp_path / "all")], chunk=2)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A small LeRobot folder (two fake-suite episodes), written once per module."""
    root = tmp_path_factory.mktemp("lerobot") / "d"
    writer = LeRobotWriter(root, suite="fake_basic", variant="base")
    for i, rec in enumerate(fake_records([5, 4])):
        writer.add(rec, task="reach", seed=0, episode_index=i)
    writer.close()
    return root


def lerobot_folder(written: Path, tmp_path: Path) -> Path:
    """A copy of ``written`` to damage."""
    return Path(shutil.copytree(written, tmp_path / "d"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, needle",
    [
        (
            lambda d: (d / "meta/info.json").unlink(),
            "d holds an unfinished recording \\(no meta.json or meta/info.json\\)",
        ),
        (lambda d: truncate(d / "meta/info.json"), "meta/info.json is corrupted"),
        (lambda d: truncate(d / "meta/tasks.parquet"), "meta/tasks.parquet is truncated or corrupted"),
        (lambda d: (d / "meta/tasks.parquet").unlink(), "meta/tasks.parquet is missing"),
        (
            lambda d: truncate(d / "meta/episodes/chunk-000/file-000.parquet"),
            "file-000.parquet is truncated or corrupted",
        ),
        (lambda d: shutil.rmtree(d / "data"), "data holds no data parquet file"),
        (
            lambda d: truncate(d / "data/chunk-000/file-000.parquet"),
            "data/chunk-000/file-000.parquet is truncated",
        ),
        (
            lambda d: truncate(d / "videos/observation.images.image/chunk-000/file-000.mp4"),
            "observation.images.image/chunk-000/file-000.mp4 is truncated or corrupted",
        ),
        (
            lambda d: (d / "videos/observation.images.image2/chunk-000/file-000.mp4").unlink(),
            "observation.images.image2/chunk-000/file-000.mp4 is missing",
        ),
        (
            lambda d: (
                (d / "meta/actdistill.json").unlink()
                or truncate(d / "videos/observation.images.image/chunk-000/file-000.mp4")
            ),
            "cannot decode video .*file-000.mp4|file-000.mp4 holds \\d+ frames",
        ),
    ],
)
def test_bad_or_missing_files_give_errors_naming_them(written, tmp_path, damage, needle):
    root = lerobot_folder(written, tmp_path)
    damage(root)
    with pytest.raises(DatasetError, match=needle):
        LeRobotDataset(root)[0]


def test_foreign_info_json_is_checked(written, tmp_path):
    root = lerobot_folder(written, tmp_path)
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match="codebase_version 'v2.1'; this reader takes 'v3.0'"):
        read_lerobot(root)
    features = {
        ("observation.images.front" if k == CAMERAS["wrist"] else k): v for k, v in info["features"].items()
    }
    info_path.write_text(json.dumps({**info, "features": features}))
    with pytest.raises(
        DatasetError,
        match="no wrist camera video: expected one of observation.images.image2, "
        "observation.images.wrist_image.*video features: observation.images.image, "
        "observation.images.front",
    ):
        read_lerobot(root)
    features = {**info["features"], "action": {**info["features"]["action"], "shape": [14]}}
    info_path.write_text(json.dumps({**info, "features": features}))
    with pytest.raises(
        DatasetError, match="feature 'action' has shape \\(14,\\); the models here take \\(7,\\)"
    ):
        read_lerobot(root)


def test_writer_refuses_what_it_cannot_store(written, tmp_path):
    root = lerobot_folder(written, tmp_path)
    with pytest.raises(FileExistsError, match="already holds a dataset.*--overwrite"):
        LeRobotWriter(root, suite="fake_basic", variant="base")
    LeRobotWriter(root, suite="fake_basic", variant="base", overwrite=True)  # removes the dataset's files
    assert not (root / "meta").exists() and (root / ".lerobot-tmp").is_dir()
    with pytest.raises(FileExistsError, match="unfinished recording"):
        LeRobotWriter(root, suite="fake_basic", variant="base")
    with pytest.raises(ValueError, match="codec 'npy' cannot be stored in a LeRobot dataset"):
        LeRobotWriter(tmp_path / "n", suite="fake_basic", variant="base", codec="npy")
    with pytest.raises(ValueError, match="no episodes were added"):
        LeRobotWriter(tmp_path / "e", suite="fake_basic", variant="base").close()
    writer = LeRobotWriter(tmp_path / "p", suite="fake_basic", variant="base")
    rec = fake_records([4])[0]
    writer.add({**rec, "expert_target": np.zeros((4, 5), np.float32)}, task="reach", seed=0, episode_index=0)
    with pytest.raises(
        ValueError, match=r"records privileged fields \[\]; earlier episodes .* \['expert_target'\]"
    ):
        writer.add(rec, task="reach", seed=0, episode_index=1)


def test_cli_records_lerobot_and_train_teacher_reads_it(tmp_path, capsys):
    data, out = str(tmp_path / "data"), str(tmp_path / "teacher")
    assert (
        main(
            [
                "demos",
                "--suite",
                "simpler_widowx",
                "--tasks",
                "0",
                "--episodes",
                "1",
                "--format",
                "lerobot",
                "--out",
                data,
            ]
        )
        == 0
    )
    assert "wrote 1 episodes (60 steps" in capsys.readouterr().out
    assert json.loads((tmp_path / "data/meta/info.json").read_text())["total_frames"] == 60
    assert main(["demos", "--family", "simpler", "--format", "lerobot", "--out", str(tmp_path / "f")]) == 2
    assert "--family records one folder per task in the actdistill format" in capsys.readouterr().err
    assert (
        main(
            [
                "train-teacher",
                "--data",
                data,
                "--out",
                out,
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and np.isfinite(summary["loss"])
    config = json.loads((tmp_path / "teacher/config.json").read_text())
    assert data in json.dumps(config)
