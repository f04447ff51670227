"""Demonstrations in the LeRobot dataset layout (v3.0): written from rollout records, read for training.

Recording (``actdistill demos --format lerobot`` drives this; the same ``add``/``close`` as ``DemoWriter``)::

    writer = LeRobotWriter("data/widowx-lerobot", suite="simpler_widowx", variant="visual_matching")
    writer.add(record, task="put_carrot_on_plate", seed=1, episode_index=7)   # from rollout(..., record=True)
    writer.close(extra={"expert_success": {...}})

Loading (``actdistill train-teacher --data FOLDER`` does this for a folder holding ``meta/info.json``)::

    ds = LeRobotDataset(["data/widowx-lerobot", "data/google"], chunk=8)   # LeRobot and our folders, mixed
    item = ds[0]   # DemoDataset items: agentview/wrist (H,W,3) uint8, proprio (8,), actions (8,7), ...
    folder = read_lerobot("data/widowx-lerobot")   # one folder's arrays, episode table and frames

The layout, as LeRobot's own code reads and writes it (``src/lerobot/datasets/``: ``utils.py`` for the path
templates and ``DatasetInfo``, ``dataset_metadata.py``, ``dataset_writer.py``, ``dataset_reader.py``,
``io_utils.py``, ``compute_stats.py``; ``scripts/convert_dataset_v21_to_v30.py``):

- ``meta/info.json``: ``codebase_version`` "v3.0", ``robot_type``, ``fps``, ``total_episodes``,
  ``total_frames``, ``total_tasks``, ``chunks_size`` (files per chunk folder), ``data_files_size_in_mb``,
  ``video_files_size_in_mb``, ``data_path`` / ``video_path`` templates, ``splits`` and ``features``
  (per key: ``dtype``, ``shape``, ``names``; video features also ``info`` with ``video.*`` fields).
  Written last: a folder without it is an unfinished recording.
- ``meta/tasks.parquet``: one row per task string (the index, named ``task``) with its ``task_index``.
- ``meta/episodes/chunk-000/file-000.parquet``: one row per episode: ``episode_index``, ``tasks``,
  ``length``, ``data/chunk_index``, ``data/file_index``, ``dataset_from_index``, ``dataset_to_index``, per
  camera ``videos/<key>/chunk_index``, ``file_index``, ``from_timestamp``, ``to_timestamp``,
  ``meta/episodes/chunk_index`` / ``file_index`` and the episode's ``stats/<key>/<stat>``.
- ``meta/stats.json``: per feature ``min``, ``max``, ``mean``, ``std``, ``count``, ``q01`` ... ``q99``
  (images per channel in [0, 1], shape (3, 1, 1)); what LeRobot policies normalise with.
- ``data/chunk-CCC/file-FFF.parquet``: one row per frame, one row group per episode: ``observation.state``
  (8 float32), ``action`` (7 float32), ``timestamp`` (frame_index / fps), ``frame_index``,
  ``episode_index``, ``index`` (global frame), ``task_index``; here also the privileged fields (below).
- ``videos/<key>/chunk-CCC/file-FFF.mp4``: one camera, many episodes concatenated; an episode's frame t
  is at ``from_timestamp + timestamp[t]``. A new file starts when one would pass ``video_files_size_in_mb``.

Our keys: ``observation.images.image`` (agentview) and ``observation.images.image2`` (wrist): the names
LeRobot's LIBERO environment and its LIBERO datasets use (``src/lerobot/envs/libero.py``,
``docs/source/libero.mdx``); on reading, ``observation.images.wrist_image`` and ``.wrist`` (other LIBERO
ports) are taken for the wrist too. The privileged fields of SIMPLER-style experts go to
``privileged.objects`` (12, 4) and ``privileged.expert_target`` (5,): outside ``observation.`` on purpose,
since LeRobot's ``dataset_to_policy_features`` makes every ``observation.*`` key a policy input and skips
the others, so a LeRobot policy trained on these files never sees simulator state. Our provenance (suite,
variant, task names, seeds, initial-state indices, measured pixel error, file hashes, versions, what the
recorder adds) is in ``meta/actdistill.json``, which LeRobot ignores.

Where this differs from LeRobot's defaults: videos are H.264 in RGB (``libx264rgb``, stream pix_fmt
``gbrp``), CRF 0 (lossless) with a keyframe every ``fps`` frames, instead of AV1 (``libsvtav1``) yuv420p
CRF 30 with a keyframe every 2 frames: the pixels a policy trains on are exactly those it meets in
evaluation; FFmpeg (torchcodec, PyAV) decodes it. Dataset statistics are exact over all frames (LeRobot
estimates quantiles from histograms and bounds them across episodes). ``--crf`` > 0 gives lossy video;
the largest pixel error is measured on every episode and recorded.

Measured on 10 expert episodes of simpler_widowx put_carrot_on_plate (60 steps, two 128x128 cameras) on the
shared 2-core machine, against ``DemoWriter``/``DemoDataset`` on the same episodes: 244 kB of video per
episode (208 kB side by side with one keyframe per 250 frames), 268 kB per episode with every file;
images bit-exact; writing 0.74-0.87 s per episode (0.40-0.50), most of it encoding and the two decode
checks; reading 0.22-0.26 s per episode, both cameras (0.12-0.16): an FFmpeg process per camera, whose
start dominates (two runs, the machine shared with other jobs).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.base import ACTION_DIM, PRIVILEGED_SHAPES, PROPRIO_DIM
from tasks.datasets import (
    _DS_SHIFT,
    _EP_SHIFT,
    _MAX_DATASET_ID,
    DatasetError,
    DemoDataset,
    _Folder,
    _read_parquet,
    record_arrays,
)
from tasks.errors import ExistingOutputError, UserInputError
from tasks.provenance import file_hash

CODEBASE_VERSION = "v3.0"
FORMAT = "actdistill-lerobot/1"  # of meta/actdistill.json
INFO_PATH, TASKS_PATH, STATS_PATH, OURS_PATH = (
    "meta/info.json",
    "meta/tasks.parquet",
    "meta/stats.json",
    "meta/actdistill.json",
)
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
DATASET_FILES = ("meta", "data", "videos", ".lerobot-tmp")
STATE_KEY, ACTION_KEY = "observation.state", "action"
CAMERA_KEYS = {"agentview": "observation.images.image", "wrist": "observation.images.image2"}  # written
CAMERA_ALIASES = {
    "agentview": ("observation.images.image", "observation.images.agentview"),  # read
    "wrist": ("observation.images.image2", "observation.images.wrist_image", "observation.images.wrist"),
}
PRIVILEGED_KEYS = {"objects": "privileged.objects", "expert_target": "privileged.expert_target"}
STATE_NAMES = [
    "eef_x",
    "eef_y",
    "eef_z",
    "eef_axis_angle_x",
    "eef_axis_angle_y",
    "eef_axis_angle_z",
    "gripper_finger_left",
    "gripper_finger_right",
]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "delta_rot_x", "delta_rot_y", "delta_rot_z", "gripper"]
INDEX_FEATURES = (
    "timestamp",
    "frame_index",
    "episode_index",
    "index",
    "task_index",
)  # LeRobot's DEFAULT_FEATURES
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}  # LeRobot's DEFAULT_QUANTILES
SUITE_FPS = {"simpler": 10, "libero": 20}  # control rates: tasks/simpler/env.py CONTROL_DT, LIBERO's 20 Hz
DEFAULT_FPS = 10
ROBOT_TYPES = {"simpler_widowx": "widowx", "simpler_google": "google_robot", "libero": "panda"}
_MB = 1024**2


def suite_fps(suite: str) -> int:
    """Control rate in Hz of ``suite``'s family (``SUITE_FPS``; :data:`DEFAULT_FPS` for any other)."""
    return SUITE_FPS.get(suite.split("_")[0], DEFAULT_FPS)


def is_lerobot(path: str | os.PathLike) -> bool:
    """True when ``path`` is a LeRobot dataset root (it holds ``meta/info.json``)."""
    return (Path(path) / INFO_PATH).is_file()


def holds_lerobot(path: str | os.PathLike) -> bool:
    """True when ``path`` is, or has below it, a LeRobot dataset root."""
    path = Path(path)
    return is_lerobot(path) or (path.is_dir() and next(path.rglob(INFO_PATH), None) is not None)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _encode(path: Path, frames: np.ndarray, *, fps: int, crf: int, gop: int) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 as RGB H.264: ``libx264rgb`` at ``crf``, keyframe per ``gop``."""
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264rgb",
        pix_fmt_in="rgb24",
        pix_fmt_out="rgb24",
        quality=None,
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=["-crf", str(int(crf)), "-preset", "medium", "-g", str(int(gop))],
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _frames_of(path: Path, *, start_s: float = 0.0, count: int | None = None, fps: int = DEFAULT_FPS):
    """Yield (H, W, 3) uint8 frames of ``path`` from ``start_s`` on (``count`` of them, or all).

    The seek goes half a frame early: FFmpeg's accurate input seek then starts at the first frame at or after
    ``start_s`` whatever the rounding of either timestamp."""
    import imageio_ffmpeg

    if not path.is_file():
        raise DatasetError(f"video {path} is missing")
    seek = ["-ss", f"{start_s - 0.5 / fps:.6f}"] if start_s > 0 else []
    limit = ["-frames:v", str(int(count))] if count is not None else []
    try:
        reader = imageio_ffmpeg.read_frames(
            str(path), pix_fmt="rgb24", input_params=seek, output_params=limit
        )
        width, height = next(reader)["size"]
        for raw in reader:
            yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"cannot decode video {path} ({type(exc).__name__}: {exc})") from exc


def _decode(path: Path, *, start_s: float, count: int, fps: int) -> np.ndarray:
    """``count`` frames (count, H, W, 3) uint8 of ``path`` from ``start_s``; DatasetError if fewer."""
    frames = list(_frames_of(path, start_s=start_s, count=count, fps=fps))
    if len(frames) != count:
        raise DatasetError(
            f"video {path} holds {len(frames)} frames from {start_s:.3f} s; the episode table says "
            f"{count} (truncated or corrupted)"
        )
    return np.stack(frames)


def _concat(segments: list[Path], out: Path) -> None:
    """Join mp4 ``segments`` (same codec and size) into ``out`` without re-encoding (FFmpeg's concat demuxer,
    as LeRobot's ``concatenate_video_files``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(segments) == 1:
        shutil.move(str(segments[0]), str(out))
        return
    listing = segments[0].parent / f"{out.stem}.ffconcat"
    listing.write_text("ffconcat version 1.0\n" + "".join(f"file '{s.resolve()}'\n" for s in segments))
    command = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0"]
    done = subprocess.run(
        [*command, "-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(out)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise DatasetError(
            f"cannot join {len(segments)} episode videos into {out}: {done.stderr.strip()[-400:]}"
        )
    listing.unlink()
    for segment in segments:
        segment.unlink()


def _frames_hash(frames: np.ndarray) -> str:
    return format(zlib.crc32(np.ascontiguousarray(frames).tobytes()), "08x") + f"-{frames.shape}"


def _stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's statistics of ``values`` (N, *shape) over axis 0: each of ``shape``, ``count`` (1,)."""
    values = np.asarray(values, np.float64)
    if values.ndim == 1:  # a scalar per frame: LeRobot keeps a (1,) axis
        values = values[:, None]
    out = {
        "min": values.min(0),
        "max": values.max(0),
        "mean": values.mean(0),
        "std": values.std(0),
        "count": np.array([len(values)]),
    }
    for name, q in QUANTILES.items():
        out[name] = np.quantile(values, q, axis=0)
    return out


def _image_histogram(frames: np.ndarray) -> np.ndarray:
    """(3, 256) int64 counts of each channel's values over the frames (T, H, W, 3) uint8."""
    return np.stack([np.bincount(frames[..., c].ravel(), minlength=256) for c in range(3)])


def _histogram_stats(hist: np.ndarray, frames: int) -> dict[str, np.ndarray]:
    """LeRobot's image statistics from per-channel value counts (3, 256): per channel in [0, 1], each
    (3, 1, 1) (``count`` (1,): ``frames``). Quantiles are order statistics, exact for uint8 pixels."""
    levels = np.arange(256) / 255.0
    total = hist.sum(1)  # (3,)
    mean = (hist * levels).sum(1) / total
    std = np.sqrt(np.maximum((hist * levels**2).sum(1) / total - mean**2, 0.0))
    present = hist > 0
    cum = np.cumsum(hist, 1)  # (3, 256)
    out = {
        "min": np.array([levels[p.argmax()] for p in present]),
        "max": np.array([levels[255 - p[::-1].argmax()] for p in present]),
        "mean": mean,
        "std": std,
    }
    for name, q in QUANTILES.items():
        rank = np.round(q * (total - 1))  # (3,)
        out[name] = np.array([levels[np.searchsorted(cum[c], rank[c] + 1)] for c in range(3)])
    return {**{k: v.reshape(3, 1, 1) for k, v in out.items()}, "count": np.array([frames])}


def _listed(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """LeRobot's ``update_chunk_file_indices``: the next file; a new chunk after ``chunks_size`` files."""
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


class _VideoStream:
    """One camera's video files: episodes go to temporary segments, joined into a file when it is full."""

    def __init__(
        self,
        root: Path,
        key: str,
        tmp: Path,
        *,
        fps: int,
        crf: int,
        gop: int,
        limit_mb: float,
        chunks_size: int,
    ):
        self.root, self.key, self.tmp = root, key, tmp
        self.fps, self.crf, self.gop, self.chunks_size = fps, crf, gop, chunks_size
        self.limit = limit_mb * _MB  # bytes
        self.chunk = self.file = 0
        self.pending: list[tuple[Path, int, str]] = []  # segment, frames, hash of its decoded frames
        self.files: dict[str, dict[str, Any]] = {}  # relative path -> bytes, sha256, episodes

    def add(self, frames: np.ndarray, episode: int) -> tuple[dict[str, Any], int]:
        """Encode one episode's frames (T, H, W, 3); return its episode-table columns and max pixel error."""
        segment = self.tmp / f"{self.key}-{episode:06d}.mp4"
        _encode(segment, frames, fps=self.fps, crf=self.crf, gop=self.gop)
        decoded = _decode(segment, start_s=0.0, count=len(frames), fps=self.fps)
        max_err = int(np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).max())
        size = segment.stat().st_size
        if self.pending and sum(p.stat().st_size for p, _, _ in self.pending) + size >= self.limit:
            self.flush()
            self.chunk, self.file = _next_file(self.chunk, self.file, self.chunks_size)
        start = sum(n for _, n, _ in self.pending)
        self.pending.append((segment, len(frames), _frames_hash(decoded)))
        columns = {
            f"videos/{self.key}/chunk_index": self.chunk,
            f"videos/{self.key}/file_index": self.file,
            f"videos/{self.key}/from_timestamp": start / self.fps,
            f"videos/{self.key}/to_timestamp": (start + len(frames)) / self.fps,
        }
        return columns, max_err

    def flush(self) -> None:
        """Join the pending segments into the current file and check that it decodes to the same frames."""
        if not self.pending:
            return
        rel = VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)
        path = self.root / rel
        _concat([p for p, _, _ in self.pending], path)
        frames = _frames_of(path, fps=self.fps)
        for _, count, expected in self.pending:
            got = [f for _, f in zip(range(count), frames)]
            if len(got) != count or _frames_hash(np.stack(got)) != expected:
                raise DatasetError(
                    f"{path} does not decode to the frames of its episode segments after joining"
                )
        if next(frames, None) is not None:
            raise DatasetError(f"{path} holds more frames than its {len(self.pending)} episodes")
        self.files[rel] = {
            "bytes": path.stat().st_size,
            "sha256": file_hash(path, digits=64),
            "episodes": len(self.pending),
        }
        self.pending = []


class LeRobotWriter:
    """Writes a LeRobot v3.0 dataset folder (see the module docstring) from ``rollout(..., record=True)``
    records; the ``add``/``close`` interface of :class:`tasks.datasets.DemoWriter`.

    ``crf`` 0 (default) keeps images bit-exact; ``fps`` defaults to the suite's control rate
    (:func:`suite_fps`), ``gop`` (frames between keyframes) to ``fps``. ``chunks_size``,
    ``data_files_size_in_mb`` and ``video_files_size_in_mb`` are LeRobot's (defaults 1000, 100, 200).
    Refuses to touch a folder holding a dataset (either format) unless ``overwrite``; then only the dataset
    files are removed first.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        suite: str,
        variant: str,
        crf: int = 0,
        overwrite: bool = False,
        versions: dict[str, Any] | None = None,
        codec: str = "h264",
        fps: int | None = None,
        gop: int | None = None,
        robot_type: str | None = None,
        chunks_size: int = 1000,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
    ):
        if codec != "h264":
            raise UserInputError(
                f"image codec {codec!r} cannot be stored in a LeRobot dataset, which keeps images "
                "as mp4 video; use --codec h264 (the default) with --format lerobot"
            )
        if not 0 <= int(crf) <= 51:
            raise UserInputError(f"--crf must be in [0, 51] (0 = lossless), got {crf}")
        self.fps = int(fps) if fps is not None else suite_fps(suite)
        self.gop = int(gop) if gop is not None else self.fps
        for name, value in (
            ("fps", self.fps),
            ("gop", self.gop),
            ("chunks_size", chunks_size),
            ("data_files_size_in_mb", data_files_size_in_mb),
            ("video_files_size_in_mb", video_files_size_in_mb),
        ):
            if not value > 0:
                raise UserInputError(f"{name} must be > 0, got {value}")
        self.dir = Path(out)
        ours = ("meta.json", "episodes.parquet", "steps.parquet")  # a tasks.datasets folder
        present = [name for name in (*DATASET_FILES, *ours) if (self.dir / name).exists()]
        if present and not overwrite:
            state = (
                "a dataset" if is_lerobot(self.dir) or "meta.json" in present else "an unfinished recording"
            )
            raise ExistingOutputError(
                f"{self.dir} already holds {state} ({', '.join(present)}); "
                f"pass --overwrite to replace it or choose another --out"
            )
        for name in present:
            target = self.dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        self.tmp = self.dir / ".lerobot-tmp"
        self.tmp.mkdir(parents=True)
        self.suite, self.variant, self.crf = suite, variant, int(crf)
        self.robot_type = robot_type or ROBOT_TYPES.get(suite, ROBOT_TYPES.get(suite.split("_")[0], suite))
        self.versions = dict(versions or {})
        self.chunks_size, self.data_mb = int(chunks_size), float(data_files_size_in_mb)
        self.video_mb = float(video_files_size_in_mb)
        self.videos = {
            cam: _VideoStream(
                self.dir,
                key,
                self.tmp,
                fps=self.fps,
                crf=self.crf,
                gop=self.gop,
                limit_mb=video_files_size_in_mb,
                chunks_size=self.chunks_size,
            )
            for cam, key in CAMERA_KEYS.items()
        }
        self.tasks: dict[str, int] = {}  # instruction -> task_index
        self.rows: list[dict[str, Any]] = []  # episode table
        self.ours: list[dict[str, Any]] = []  # our per-episode provenance
        self.arrays: list[dict[str, np.ndarray]] = []  # per episode: proprio, actions, privileged
        self.histograms: dict[str, list[np.ndarray]] = {cam: [] for cam in CAMERA_KEYS}
        self.privileged: tuple[str, ...] | None = None  # fixed by the first episode: shards share one schema
        self.image_shape: tuple[int, ...] | None = None

    def add(self, record: dict[str, Any], *, task: str, seed: int, episode_index: int) -> int:
        """Store one episode from ``rollout(..., record=True).record``; return its ``episode_index`` here."""
        agent, wrist, proprio, actions = record_arrays(record, task, episode_index)
        length = len(actions)
        if self.image_shape is None:
            self.image_shape = tuple(agent.shape[1:])
        elif tuple(agent.shape[1:]) != self.image_shape:
            raise ValueError(f"image shape {agent.shape[1:]} differs from the dataset's {self.image_shape}")
        present = tuple(key for key in PRIVILEGED_SHAPES if record.get(key) is not None)
        if self.privileged is None:
            self.privileged = present
        elif present != self.privileged:
            raise ValueError(
                f"episode {episode_index} of {task!r} records privileged fields {list(present)}; "
                f"earlier episodes of this dataset recorded {list(self.privileged)}"
            )
        arrays = {"proprio": proprio, "actions": actions}
        for key in present:
            value = np.asarray(record[key], np.float32)
            if value.shape != (length, *PRIVILEGED_SHAPES[key]):
                raise ValueError(
                    f"record {key!r} has shape {value.shape}, expected {(length, *PRIVILEGED_SHAPES[key])}"
                )
            arrays[key] = value
        episode = len(self.rows)
        instruction = record["instruction"]
        task_index = self.tasks.setdefault(instruction, len(self.tasks))
        row: dict[str, Any] = {"episode_index": episode, "tasks": [instruction], "length": length}
        max_err = 0
        for cam, frames in (("agentview", agent), ("wrist", wrist)):
            columns, err = self.videos[cam].add(frames, episode)
            row.update(columns)
            max_err = max(max_err, err)
            self.histograms[cam].append(_image_histogram(frames))
        self.rows.append(row)
        self.arrays.append({**arrays, "task_index": np.full(length, task_index, np.int64)})
        self.ours.append(
            {
                "task": task,
                "seed": int(seed),
                "init_index": int(episode_index),
                "instruction": instruction,
                "length": length,
                "image_max_abs_error": max_err,
            }
        )
        return episode

    def _frame_columns(self, e: int, first: int) -> dict[str, np.ndarray]:
        """Episode ``e``'s frame columns (each (T, *shape)); ``first``: its global index of frame 0."""
        arrays, length = self.arrays[e], self.rows[e]["length"]
        columns = {
            STATE_KEY: arrays["proprio"],
            ACTION_KEY: arrays["actions"],
            **{PRIVILEGED_KEYS[k]: arrays[k] for k in self.privileged or ()},
        }
        frame = np.arange(length, dtype=np.int64)
        columns.update(
            {
                "timestamp": (frame / self.fps).astype(np.float32),
                "frame_index": frame,
                "episode_index": np.full(length, e, np.int64),
                "index": first + frame,
                "task_index": arrays["task_index"],
            }
        )
        return columns

    def _features(self) -> dict[str, dict[str, Any]]:
        h, w, c = self.image_shape
        video_info = {
            "video.height": h,
            "video.width": w,
            "video.codec": "h264",
            "video.pix_fmt": "gbrp",
            "video.fps": self.fps,
            "video.channels": c,
            "has_audio": False,
            "is_depth_map": False,
            "video.g": self.gop,
            "video.crf": self.crf,
            "video.preset": "medium",
            "video.encoder": "libx264rgb",
        }
        features: dict[str, dict[str, Any]] = {
            key: {
                "dtype": "video",
                "shape": [h, w, c],
                "names": ["height", "width", "channels"],
                "info": dict(video_info),
            }
            for key in CAMERA_KEYS.values()
        }
        features[STATE_KEY] = {"dtype": "float32", "shape": [PROPRIO_DIM], "names": STATE_NAMES}
        features[ACTION_KEY] = {"dtype": "float32", "shape": [ACTION_DIM], "names": ACTION_NAMES}
        names = {
            "objects": ["entity", "position_minus_hand_xyz_and_valid"],
            "expert_target": [
                "waypoint_minus_hand_x",
                "waypoint_minus_hand_y",
                "waypoint_minus_hand_z",
                "gripper",
                "phase",
            ],
        }
        for key in self.privileged or ():
            features[PRIVILEGED_KEYS[key]] = {
                "dtype": "float32",
                "shape": list(PRIVILEGED_SHAPES[key]),
                "names": names[key],
            }
        for key in INDEX_FEATURES:
            features[key] = {
                "dtype": "float32" if key == "timestamp" else "int64",
                "shape": [1],
                "names": None,
            }
        return features

    def _write_data(self, features: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Write the data parquet files (one row group per episode, a new file past
        ``data_files_size_in_mb``); set each episode row's data columns and stats; return the dataset's
        non-video stats."""

        def arrow(values: np.ndarray) -> pa.Array:
            if values.ndim == 1:
                return pa.array(values)
            flat = pa.array(values.reshape(-1))
            for size in reversed(values.shape[1:]):
                flat = pa.FixedSizeListArray.from_arrays(flat, size)
            return flat

        keys = [k for k, f in features.items() if f["dtype"] != "video"]
        chunk = file = 0
        writer: pq.ParquetWriter | None = None
        first = 0
        everything: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for e, row in enumerate(self.rows):
            columns = self._frame_columns(e, first)
            table = pa.table({k: arrow(columns[k]) for k in keys})
            if (
                writer is not None
                and (self.dir / DATA_PATH.format(chunk_index=chunk, file_index=file)).stat().st_size
                + table.nbytes
                >= self.data_mb * _MB
            ):
                writer.close()
                writer = None
                chunk, file = _next_file(chunk, file, self.chunks_size)
            if writer is None:
                path = self.dir / DATA_PATH.format(chunk_index=chunk, file_index=file)
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table)  # one row group per episode
            row.update(
                {
                    "data/chunk_index": chunk,
                    "data/file_index": file,
                    "dataset_from_index": first,
                    "dataset_to_index": first + row["length"],
                }
            )
            for k in keys:
                row.update({f"stats/{k}/{s}": v for s, v in _listed(_stats(columns[k])).items()})
                everything[k].append(columns[k])
            first += row["length"]
        writer.close()
        return {k: _stats(np.concatenate(v)) for k, v in everything.items()}

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Join the last video files; write the data, episode, task and stats files, ``meta/actdistill.json``
        and finally ``meta/info.json``; return our meta as written (with the ``DemoWriter`` meta's keys)."""
        if not self.rows:
            raise UserInputError(f"no episodes were added to {self.dir}; nothing to write")
        for stream in self.videos.values():
            stream.flush()
        features = self._features()
        stats = {k: _listed(v) for k, v in self._write_data(features).items()}
        for cam, key in CAMERA_KEYS.items():
            for row, hist in zip(self.rows, self.histograms[cam]):
                row.update(
                    {f"stats/{key}/{s}": v for s, v in _listed(_histogram_stats(hist, row["length"])).items()}
                )
            stats[key] = _listed(
                _histogram_stats(sum(self.histograms[cam]), sum(r["length"] for r in self.rows))
            )
        for row in self.rows:
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        (self.dir / "meta").mkdir(exist_ok=True)
        episodes_path = self.dir / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.rows), episodes_path)
        import pandas as pd

        pd.DataFrame(
            {"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task")
        ).to_parquet(self.dir / TASKS_PATH)
        (self.dir / STATS_PATH).write_text(json.dumps(stats, indent=2) + "\n")
        shutil.rmtree(self.tmp)
        total = int(sum(r["length"] for r in self.rows))
        files = {rel: f for stream in self.videos.values() for rel, f in stream.files.items()}
        meta = {
            "format": FORMAT,
            "dataset_id": secrets.randbelow(_MAX_DATASET_ID),
            "suite": self.suite,
            "variant": self.variant,
            "tasks": sorted({e["task"] for e in self.ours}),
            "episodes": len(self.rows),
            "steps": total,
            "image_shape": list(self.image_shape),
            "image_codec": {
                "container": "mp4",
                "codec": "libx264rgb",
                "pix_fmt": "gbrp",
                "crf": self.crf,
                "gop": self.gop,
                "layout": ", ".join(f"{k} = {c}" for c, k in CAMERA_KEYS.items()),
                "max_abs_error": max(e["image_max_abs_error"] for e in self.ours),
            },
            "bytes": int(sum(f["bytes"] for f in files.values())),
            "video_files": files,
            "episode_rows": self.ours,
            "versions": self.versions,
            **(extra or {}),
        }
        (self.dir / OURS_PATH).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.rows),
            "total_frames": total,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_mb,
            "video_files_size_in_mb": self.video_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.rows)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features,
        }
        tmp = self.dir / "meta" / ".info.json.tmp"
        tmp.write_text(json.dumps(info, indent=4) + "\n")
        os.replace(tmp, self.dir / INFO_PATH)
        return meta


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"dataset file {path} is corrupted ({exc})") from exc


def _column(table: pa.Table, key: str, shape: tuple[int, ...], where: Path) -> np.ndarray:
    """Column ``key`` of ``table`` as (N, *shape) float32; DatasetError naming ``where`` if it is not."""
    if key not in table.column_names:
        raise DatasetError(f"{where} has no column {key!r}; columns: {', '.join(table.column_names)}")
    values = table.column(key).combine_chunks()
    while (
        pa.types.is_list(values.type)
        or pa.types.is_fixed_size_list(values.type)
        or pa.types.is_large_list(values.type)
    ):
        values = values.flatten()
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    if flat.size != table.num_rows * int(np.prod(shape)):
        raise DatasetError(
            f"{where} column {key!r} holds {flat.size} values for {table.num_rows} frames; "
            f"expected shape {shape} per frame"
        )
    return flat.reshape(table.num_rows, *shape)


class LeRobotFolder:
    """One LeRobot v3.0 dataset folder, loaded: what :class:`tasks.datasets.DemoDataset` needs of a folder.

    ``info`` (meta/info.json), ``tasks`` (task strings by task_index), ``meta`` (ours from
    meta/actdistill.json less its per-episode ``episode_rows`` and per-file ``video_files``, kept as
    attributes of those names; or one made from info.json: format, dataset_id (stable: a hash of the
    metadata), suite (the robot type), variant, tasks, episodes, steps, image_shape, fps), ``episodes``
    (per episode: instruction, suite, task and LeRobot's episode-table columns), ``lengths`` (E,),
    ``starts`` (E,) (row of each episode's frame 0), ``proprio`` (N, 8), ``actions`` (N, 7), ``task_index``
    (N,), ``privileged`` ({"objects": (N, 12, 4), "expert_target": (N, 5)} where present), ``cameras``
    ({"agentview": key, "wrist": key}). ``frames(e)``: (T, H, 2W, 3), agentview | wrist. Bad or missing
    files raise :class:`DatasetError` naming the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        info_path = self.path / INFO_PATH
        if not info_path.is_file():
            raise DatasetError(
                f"{info_path} is missing: {self.path} is not a LeRobot dataset or its recording "
                "did not finish"
            )
        self.info = _read_json(info_path)
        version = str(self.info.get("codebase_version"))
        if not version.startswith("v3."):
            raise DatasetError(
                f"{info_path} has codebase_version {version!r}; this reader takes {CODEBASE_VERSION!r} "
                "(convert v2.1 with lerobot's convert_dataset_v21_to_v30)"
            )
        missing = [
            k
            for k in ("fps", "features", "data_path", "total_episodes", "total_frames")
            if k not in self.info
        ]
        if missing:
            raise DatasetError(f"{info_path} lacks {', '.join(missing)}")
        features = self.info["features"]
        self.fps = int(self.info["fps"])
        self.cameras = {}
        videos = [k for k, f in features.items() if f.get("dtype") == "video"]
        images = [k for k, f in features.items() if f.get("dtype") == "image"]
        for cam, aliases in CAMERA_ALIASES.items():
            key = next((k for k in aliases if k in videos), None)
            if key is None:
                raise DatasetError(
                    f"{info_path} has no {cam} camera video: expected one of {', '.join(aliases)}; "
                    f"its video features: {', '.join(videos) or 'none'}"
                    + (
                        f" (images stored in parquet, as in {', '.join(images)}, are not read here: use the "
                        "dataset's video version)"
                        if images
                        else ""
                    )
                )
            self.cameras[cam] = key
        shapes = {cam: tuple(features[key]["shape"]) for cam, key in self.cameras.items()}
        if (
            shapes["agentview"] != shapes["wrist"]
            or len(shapes["agentview"]) != 3
            or shapes["agentview"][2] != 3
        ):
            raise DatasetError(
                f"{info_path}: cameras {self.cameras} have shapes {shapes}; both must be the same (H, W, 3)"
            )
        for key, dim in ((STATE_KEY, PROPRIO_DIM), (ACTION_KEY, ACTION_DIM)):
            shape = tuple(features.get(key, {}).get("shape", ()))
            if shape != (dim,):
                raise DatasetError(
                    f"{info_path}: feature {key!r} has shape {shape or 'none'}; the models here take ({dim},)"
                )
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        self.lengths = np.array([e["length"] for e in self.episodes], np.int64)
        self._read_data(features)
        # ours (meta/actdistill.json), where written here: per episode task, seed, init_index, ...
        self.episode_rows: list[dict[str, Any]] = [{}] * len(self.episodes)
        self.video_files: dict[str, dict[str, Any]] = {}  # ours: relative path -> bytes, sha256
        self.meta = self._meta()
        for row, ours in zip(self.episodes, self.episode_rows):
            row.update(
                {
                    "instruction": self.tasks[int(self.task_index[row["start"]])],
                    "suite": self.meta["suite"],
                    "task": ours.get("task", self.tasks[int(self.task_index[row["start"]])]),
                }
            )
        if len(self.lengths) >= 1 << _EP_SHIFT or self.lengths.max() >= 1 << (_DS_SHIFT - _EP_SHIFT):
            raise DatasetError(
                f"{self.path} has {len(self.lengths)} episodes of up to {self.lengths.max()} frames; "
                f"sample ids allow fewer than {1 << _EP_SHIFT} of each"
            )
        self._checked: set[str] = set()

    def _read_tasks(self) -> list[str]:
        table = _read_parquet(self.path / TASKS_PATH)
        name = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if name is None or "task_index" not in table.column_names:
            raise DatasetError(
                f"{self.path / TASKS_PATH} needs columns 'task' and 'task_index'; "
                f"it has {', '.join(table.column_names)}"
            )
        order = np.asarray(table.column("task_index").to_numpy(zero_copy_only=False), np.int64)
        strings = table.column(name).to_pylist()
        if sorted(order.tolist()) != list(range(len(order))):
            raise DatasetError(
                f"{self.path / TASKS_PATH} task_index values {sorted(order.tolist())} are not "
                f"0..{len(order) - 1}"
            )
        tasks = [""] * len(order)
        for i, text in zip(order, strings):
            tasks[int(i)] = text
        return tasks

    def _read_episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.path / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise DatasetError(
                f"{self.path / 'meta' / 'episodes'} holds no episode parquet file "
                "(chunk-000/file-000.parquet)"
            )
        needed = ["episode_index", "length", "dataset_from_index", "dataset_to_index"] + [
            f"videos/{key}/{c}"
            for key in self.cameras.values()
            for c in ("chunk_index", "file_index", "from_timestamp")
        ]
        rows: list[dict[str, Any]] = []
        for path in files:
            table = _read_parquet(path)
            absent = [c for c in needed if c not in table.column_names]
            if absent:
                raise DatasetError(f"{path} lacks episode columns {', '.join(absent)}")
            rows.extend(table.select(needed + [c for c in ("tasks",) if c in table.column_names]).to_pylist())
        rows.sort(key=lambda r: r["episode_index"])
        if len(rows) != int(self.info["total_episodes"]):
            raise DatasetError(
                f"{self.path / 'meta' / 'episodes'} lists {len(rows)} episodes; "
                f"{self.path / INFO_PATH} says {self.info['total_episodes']}"
            )
        return rows

    def _read_data(self, features: dict[str, dict[str, Any]]) -> None:
        files = sorted((self.path / "data").glob("*/*.parquet"))
        if not files:
            raise DatasetError(f"{self.path / 'data'} holds no data parquet file")
        privileged = {name: key for name, key in PRIVILEGED_KEYS.items() if key in features}
        parts: list[dict[str, np.ndarray]] = []
        for path in files:
            table = _read_parquet(path)
            part = {
                "proprio": _column(table, STATE_KEY, (PROPRIO_DIM,), path),
                "actions": _column(table, ACTION_KEY, (ACTION_DIM,), path),
                **{
                    name: _column(table, key, PRIVILEGED_SHAPES[name], path)
                    for name, key in privileged.items()
                },
            }
            for key in ("index", "episode_index", "frame_index", "task_index"):
                if key not in table.column_names:
                    raise DatasetError(
                        f"{path} has no column {key!r}; columns: {', '.join(table.column_names)}"
                    )
                part[key] = np.asarray(table.column(key).to_numpy(zero_copy_only=False), np.int64)
            parts.append(part)
        data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(data["index"], kind="stable")
        data = {k: v[order] for k, v in data.items()}
        if len(data["index"]) != int(self.info["total_frames"]):
            raise DatasetError(
                f"{self.path / 'data'} holds {len(data['index'])} frames; {self.path / INFO_PATH} "
                f"says {self.info['total_frames']}"
            )
        starts = np.searchsorted(data["index"], [e["dataset_from_index"] for e in self.episodes])
        for e, (row, start) in enumerate(zip(self.episodes, starts)):
            length = int(row["length"])
            span = slice(int(start), int(start) + length)
            if (
                row["dataset_to_index"] - row["dataset_from_index"] != length
                or not np.array_equal(
                    data["index"][span], np.arange(row["dataset_from_index"], row["dataset_to_index"])
                )
                or not np.all(data["episode_index"][span] == row["episode_index"])
                or not np.array_equal(data["frame_index"][span], np.arange(length))
            ):
                raise DatasetError(
                    f"{self.path / 'data'}: the frames of episode {row['episode_index']} are not "
                    f"indices {row['dataset_from_index']}..{row['dataset_to_index'] - 1} with frame_index "
                    f"0..{length - 1} (the episode table in {self.path / 'meta' / 'episodes'} disagrees)"
                )
            row["start"] = int(start)
        if data["task_index"].size and (
            data["task_index"].min() < 0 or data["task_index"].max() >= len(self.tasks)
        ):
            raise DatasetError(
                f"{self.path / 'data'} uses task_index up to {data['task_index'].max()}; "
                f"{self.path / TASKS_PATH} has {len(self.tasks)} tasks"
            )
        self.starts = np.array([row["start"] for row in self.episodes], np.int64)
        self.proprio, self.actions, self.task_index = data["proprio"], data["actions"], data["task_index"]
        self.privileged = {name: data[name] for name in privileged}

    def _meta(self) -> dict[str, Any]:
        """Ours from meta/actdistill.json where the folder was written here, else one made from info.json."""
        ours_path = self.path / OURS_PATH
        if ours_path.is_file():
            meta = _read_json(ours_path)
            self.episode_rows, self.video_files = meta.pop("episode_rows", []), meta.pop("video_files", {})
            if meta.get("format") != FORMAT or len(self.episode_rows) != len(self.episodes):
                raise DatasetError(
                    f"{ours_path} has format {meta.get('format')!r} and {len(self.episode_rows)} "
                    f"episodes; expected {FORMAT!r} and {len(self.episodes)} (the folder's episode "
                    "table)"
                )
            return meta
        digest = zlib.crc32((self.path / INFO_PATH).read_bytes())
        for path in sorted((self.path / "meta" / "episodes").glob("*/*.parquet")):
            digest = zlib.crc32(path.read_bytes(), digest)
        shape = list(self.info["features"][self.cameras["agentview"]]["shape"])
        return {
            "format": f"lerobot/{self.info['codebase_version']}",
            "dataset_id": digest % _MAX_DATASET_ID,
            "suite": str(self.info.get("robot_type") or "lerobot"),
            "variant": "",
            "tasks": self.tasks,
            "episodes": len(self.episodes),
            "steps": int(self.lengths.sum()),
            "image_shape": shape,
            "fps": self.fps,
        }

    def video_path(self, e: int, cam: str) -> Path:
        """The mp4 holding camera ``cam`` ("agentview" or "wrist") of episode ``e``."""
        row, key = self.episodes[e], self.cameras[cam]
        return self.path / self.info["video_path"].format(
            video_key=key,
            chunk_index=row[f"videos/{key}/chunk_index"],
            file_index=row[f"videos/{key}/file_index"],
        )

    def camera(self, e: int, cam: str) -> np.ndarray:
        """Camera ``cam`` frames (T, H, W, 3) uint8 of episode ``e``; where the folder was written here, its
        file is first checked against the recorded size and sha256."""
        path = self.video_path(e, cam)
        rel = path.relative_to(self.path).as_posix()
        known = self.video_files.get(rel)
        if known is not None and rel not in self._checked:
            if not path.is_file():
                raise DatasetError(f"video {path} is missing")
            if path.stat().st_size != known["bytes"] or file_hash(path, digits=64) != known["sha256"]:
                raise DatasetError(
                    f"video {path} is truncated or corrupted (size or sha256 differs from "
                    f"{self.path / OURS_PATH})"
                )
            self._checked.add(rel)
        key = self.cameras[cam]
        frames = _decode(
            path,
            start_s=float(self.episodes[e][f"videos/{key}/from_timestamp"]),
            count=int(self.lengths[e]),
            fps=self.fps,
        )
        expected = tuple(self.info["features"][key]["shape"])
        if frames.shape[1:] != expected:
            raise DatasetError(
                f"video {path} decoded to frames of {frames.shape[1:]}; {self.path / INFO_PATH} says "
                f"{expected}"
            )
        return frames

    def frames(self, e: int) -> np.ndarray:
        """Frames (T, H, 2W, 3) uint8 of episode ``e``: agentview | wrist side by side, as DemoDataset reads.
        The two cameras decode in two threads (each an FFmpeg process, whose start is most of the cost)."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            agent, wrist = pool.map(lambda cam: self.camera(e, cam), ("agentview", "wrist"))
        return np.concatenate([agent, wrist], axis=2)


def read_lerobot(path: str | os.PathLike) -> LeRobotFolder:
    """Load the LeRobot v3.0 dataset folder ``path`` (arrays, episode table, tasks; frames on demand)."""
    return LeRobotFolder(path)


def expand_dirs(paths: list[Path]) -> list[Path]:
    """:func:`tasks.datasets.expand_dataset_dirs` for both formats: each of ``paths`` that is a dataset folder
    (``meta.json`` or ``meta/info.json``) as is, any other folder every dataset folder below it (sorted).
    Dataset files below it outside any dataset (an unfinished recording) raise :class:`DatasetError`."""
    out: list[Path] = []
    for path in paths:
        if not path.is_dir() or (path / "meta.json").exists() or is_lerobot(path):
            out.append(path)
            continue
        found = sorted(
            {m.parent for m in path.rglob("meta.json")} | {i.parent.parent for i in path.rglob(INFO_PATH)}
        )
        inside = {p.parent for p in path.rglob("episodes.parquet")} | {
            p.parent for p in path.rglob("videos") if p.is_dir()
        }
        unfinished = sorted(inside - set(found))
        if unfinished:
            raise DatasetError(
                f"{unfinished[0]} holds an unfinished recording (no meta.json or meta/info.json); "
                "record it again or remove it"
            )
        out.extend(found or [path])
    return out


class LeRobotDataset(DemoDataset):
    """:class:`tasks.datasets.DemoDataset` over LeRobot v3.0 folders, ours, or both mixed: the same items
    (agentview/wrist (H, W, 3) uint8, proprio (8,), instruction, actions (chunk, 7) with the last action
    repeated past the episode's end, action_mask (chunk,), sample_id, suite, task, and the privileged
    ``objects`` (12, 4) / ``expert_target`` (5,) where recorded), so training takes it unchanged.

    A LeRobot item's instruction is the task string of its own frame (LeRobot allows several per episode);
    its suite is the robot type and its task the task name recorded here (the task string otherwise).
    """

    def __init__(
        self,
        dirs: str | os.PathLike | list[str | os.PathLike],
        chunk: int = 8,
        cache_episodes: int = 32,
        preload: bool = False,
    ):
        if chunk < 1:
            raise UserInputError(f"chunk must be >= 1, got {chunk}")
        paths = [Path(dirs)] if isinstance(dirs, (str, os.PathLike)) else [Path(d) for d in dirs]
        if not paths:
            raise UserInputError("LeRobotDataset needs at least one dataset folder")
        paths = expand_dirs(paths)
        self.dirs = [str(p) for p in paths]
        self.folders = [LeRobotFolder(p) if is_lerobot(p) else _Folder(p) for p in paths]
        ids: dict[int, Path] = {}
        for folder in self.folders:
            ds_id = int(folder.meta["dataset_id"])
            if ds_id in ids:
                raise DatasetError(
                    f"{folder.path} and {ids[ds_id]} share dataset_id {ds_id} "
                    f"(the same dataset twice, or a copy)"
                )
            ids[ds_id] = folder.path
        self.chunk = int(chunk)
        self.index = np.concatenate(
            [
                np.stack(
                    [
                        np.full(f.lengths.sum(), d),
                        np.repeat(np.arange(len(f.lengths)), f.lengths),
                        np.concatenate([np.arange(n) for n in f.lengths]),
                    ],
                    axis=1,
                )
                for d, f in enumerate(self.folders)
            ]
        )  # (N, 3): folder, episode, t
        self.cache_episodes = max(1, int(cache_episodes))
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        if preload:
            self.cache_episodes = sum(len(f.episodes) for f in self.folders)
            for d, folder in enumerate(self.folders):
                for e in range(len(folder.episodes)):
                    self._frames(d, e)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        d, e, t = (int(v) for v in self.index[i])
        folder = self.folders[d]
        if isinstance(folder, LeRobotFolder):
            item["instruction"] = folder.tasks[int(folder.task_index[folder.starts[e] + t])]
        return item

    def instructions(self) -> list[str]:
        """Distinct instruction strings, sorted (a LeRobot folder: every task string its frames use)."""
        out = set()
        for f in self.folders:
            if isinstance(f, LeRobotFolder):
                out |= {f.tasks[i] for i in np.unique(f.task_index)}
            else:
                out |= {row["instruction"] for row in f.episodes}
        return sorted(out)
