"""Demonstration datasets: compact on-disk storage and a torch ``Dataset`` for training.

Recording (``actdistill demos`` drives this)::

    writer = DemoWriter("data/widowx", suite="simpler_widowx", variant="visual_matching")
    writer.add(record, task="put_carrot_on_plate", seed=1, episode_index=7)   # record from rollout(..., record=True)
    writer.close(extra={"expert_success": {...}})

Loading::

    ds = DemoDataset(["data/widowx", "data/google"], chunk=8)
    item = ds[0]   # agentview/wrist (128,128,3) uint8, proprio (8,), actions (8,7), action_mask (8,), ...

Layout of a dataset folder:

- ``meta.json``: format, dataset id, suite, variant, tasks, episode and step counts, image
  shape, the image codec and its measured error, versions, plus what the recorder adds (e.g.
  the expert's success rate). Written last: a folder without it is an unfinished recording.
- ``episodes.parquet``: one row per episode: episode, suite, task, variant, seed,
  episode_index, instruction, length, video file, its size and sha256, and the largest absolute
  pixel error of its images after decoding (0 for the default lossless codec).
- ``steps.parquet``: one row per step: episode, t, proprio (8 float32), action (7 float32), and where the
  recorder had them (SIMPLER-style experts) the privileged ``objects`` (12 x 4 float32: per scene entity its
  position minus the hand and a valid flag) and ``expert_target`` (5 float32: the expert's waypoint minus
  the hand, gripper command, phase). Training-time supervision only; a policy never sees them.
- ``videos/epNNNNNN.mp4``: the episode's agentview and wrist frames side by side
  ((H, 2W, 3) per frame), H.264 in RGB (``libx264rgb``) at constant rate factor ``crf``
  (0, the default, is lossless). With ``codec="npy"`` the file is ``videos/epNNNNNN.npy`` instead:
  the same frames as a raw uint8 array, for machines without ffmpeg (the GPU machine) or where
  decode time matters more than disk (20-100x larger, no decoding at all).

Why lossless H.264 by default: on one expert episode per SIMPLER-style suite (agentview and
wrist side by side, 128x256 per frame), measured with write_video/read_video and imageio:

=====================  ==========================  ==========================
per episode            simpler_widowx, 60 steps    simpler_google, 80 steps
=====================  ==========================  ==========================
raw uint8              5.9 MB                      7.9 MB
npz (zlib)             642 kB                      539 kB
PNG frames             804 kB                      645 kB
JPEG q95 (lossy)       497 kB, max error 59        424 kB, max error 114
H.264 RGB CRF 18       121 kB, mean error 0.37     53 kB
H.264 RGB CRF 0        292 kB, exact               95 kB, exact
=====================  ==========================  ==========================

CRF 0 keeps the images bit-exact (a policy trains on exactly the pixels it meets in
evaluation) and is still 2-7x smaller than PNG or zlib: 100 such episodes of one task take
10-30 MB. Decoding an episode takes about 0.1-0.15 s on the shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tasks.base import ACTION_DIM, PRIVILEGED_SHAPES, PROPRIO_DIM
from tasks.errors import ExistingOutputError, UserInputError
from tasks.provenance import file_hash

FORMAT = "actdistill-demos/1"
DATASET_FILES = ("meta.json", "episodes.parquet", "steps.parquet", "videos")
CODECS = ("h264", "npy")
# sample_id = dataset_id * 2**40 + episode * 2**20 + t: 22 + 20 + 20 bits fit an int64.
_EP_SHIFT, _DS_SHIFT = 20, 40


def split_sample_id(sample_id: int) -> tuple[int, int]:
    """``(episode key, step t)`` of a ``sample_id``: the key is unique per (dataset, episode)."""
    sample_id = int(sample_id)
    return sample_id >> _EP_SHIFT, sample_id & ((1 << _EP_SHIFT) - 1)
_MAX_DATASET_ID = 1 << 22


class DatasetError(UserInputError):
    """A dataset folder or file is missing, truncated or corrupted; the message names the file."""


def write_video(path: Path, frames: np.ndarray, crf: int = 0, fps: int = 10) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 as RGB H.264 (``libx264rgb``) at ``crf`` (0 = lossless)."""
    import imageio.v2 as imageio

    writer = imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264rgb", pixelformat="rgb24",
                                quality=None, macro_block_size=1, ffmpeg_log_level="error",
                                output_params=["-crf", str(int(crf)), "-preset", "medium"])
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def read_video(path: Path) -> np.ndarray:
    """Decode an mp4 to (T, H, W, 3) uint8; raise :class:`DatasetError` naming ``path`` if it fails."""
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        try:
            frames = [frame for frame in reader]
        finally:
            reader.close()
    except Exception as exc:
        raise DatasetError(f"cannot decode video {path} ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise DatasetError(f"video {path} holds no frames")
    return np.stack(frames)  # (T, H, W, 3)


def read_frames(path: Path) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of an episode file, ``.mp4`` (decoded) or ``.npy`` (raw)."""
    if Path(path).suffix != ".npy":
        return read_video(path)
    try:
        frames = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DatasetError(f"cannot read frames {path} ({type(exc).__name__}: {exc})") from exc
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise DatasetError(f"frames {path} hold {frames.dtype} {frames.shape}; expected (T, H, W, 3) uint8")
    return frames



def record_arrays(record: dict[str, Any], task: str, episode_index: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``agentview``, ``wrist`` (T, H, W, 3), ``proprio`` (T, 8) and ``actions`` (T, 7) float32 of a rollout
    record, checked: raises ``ValueError`` for an empty record or inconsistent shapes (used by every writer)."""
    agent, wrist = record["agentview"], record["wrist"]
    proprio = np.asarray(record["proprio"], np.float32)  # (T, 8)
    actions = np.asarray(record["actions"], np.float32)  # (T, 7)
    length = len(actions)
    if length == 0 or agent is None or wrist is None:
        raise ValueError(f"episode {episode_index} of {task!r} has no recorded steps or images")
    if agent.shape != wrist.shape or agent.shape[0] != length or proprio.shape != (length, PROPRIO_DIM) \
            or actions.shape != (length, ACTION_DIM):
        raise ValueError(f"inconsistent record shapes: agentview {agent.shape}, wrist {wrist.shape}, "
                         f"proprio {proprio.shape}, actions {actions.shape}")
    return agent, wrist, proprio, actions

class DemoWriter:
    """Writes a dataset folder (see the module docstring); refuses to touch an existing dataset
    unless ``overwrite`` (then only the dataset's own files are removed first)."""

    def __init__(self, out: str | os.PathLike, *, suite: str, variant: str, crf: int = 0,
                 overwrite: bool = False, versions: dict[str, Any] | None = None, codec: str = "h264"):
        if codec not in CODECS:
            raise UserInputError(f"unknown image codec {codec!r}; valid codecs: {', '.join(CODECS)}")
        self.codec = codec
        self.dir = Path(out)
        present = [name for name in DATASET_FILES if (self.dir / name).exists()]
        if present and not overwrite:
            state = "a dataset" if "meta.json" in present else "an unfinished recording"
            raise ExistingOutputError(f"{self.dir} already holds {state} ({', '.join(present)}); "
                                  f"pass --overwrite to replace it or choose another --out")
        for name in present:
            target = self.dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        (self.dir / "videos").mkdir(parents=True, exist_ok=True)
        self.suite, self.variant, self.crf = suite, variant, int(crf)
        self.versions = dict(versions or {})
        self.episodes: list[dict[str, Any]] = []
        self.steps: list[tuple[np.ndarray, np.ndarray]] = []
        self.privileged: dict[str, list[np.ndarray]] = {key: [] for key in PRIVILEGED_SHAPES}
        self.image_shape: tuple[int, ...] | None = None

    def add(self, record: dict[str, Any], *, task: str, seed: int, episode_index: int) -> int:
        """Store one episode from ``rollout(..., record=True).record``; return its episode number."""
        agent, wrist, proprio, actions = record_arrays(record, task, episode_index)
        length = len(actions)
        if self.image_shape is None:
            self.image_shape = tuple(agent.shape[1:])
        elif tuple(agent.shape[1:]) != self.image_shape:
            raise ValueError(f"image shape {agent.shape[1:]} differs from the dataset's {self.image_shape}")
        episode = len(self.episodes)
        frames = np.concatenate([agent, wrist], axis=2)  # (T, H, 2W, 3)
        rel = f"videos/ep{episode:06d}.{'mp4' if self.codec == 'h264' else 'npy'}"
        path = self.dir / rel
        if self.codec == "h264":
            write_video(path, frames, crf=self.crf)
            decoded = read_video(path)
        else:
            np.save(path, np.ascontiguousarray(frames))
            decoded = read_frames(path)
        if decoded.shape != frames.shape:
            raise DatasetError(f"video {path} decoded to {decoded.shape}, wrote {frames.shape}")
        max_err = int(np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).max())
        self.episodes.append({
            "episode": episode, "suite": self.suite, "task": task, "variant": self.variant,
            "seed": int(seed), "episode_index": int(episode_index), "instruction": record["instruction"],
            "length": length, "video": rel, "video_bytes": path.stat().st_size,
            "video_sha256": file_hash(path, digits=64), "image_max_abs_error": max_err,
        })
        self.steps.append((proprio, actions))
        for key, shape in PRIVILEGED_SHAPES.items():
            value = record.get(key)
            if value is not None:
                value = np.asarray(value, np.float32)
                if value.shape != (length, *shape):
                    raise ValueError(f"record {key!r} has shape {value.shape}, expected {(length, *shape)}")
                self.privileged[key].append(value.reshape(length, -1))
        return episode

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``episodes.parquet``, ``steps.parquet`` and finally ``meta.json``; return the meta."""
        if not self.episodes:
            raise UserInputError(f"no episodes were added to {self.dir}; nothing to write")
        lengths = [e["length"] for e in self.episodes]
        pq.write_table(pa.Table.from_pylist(self.episodes), self.dir / "episodes.parquet")
        proprio = np.concatenate([p for p, _ in self.steps])  # (N, 8)
        actions = np.concatenate([a for _, a in self.steps])  # (N, 7)
        columns = {
            "episode": pa.array(np.repeat(np.arange(len(lengths)), lengths), pa.int32()),
            "t": pa.array(np.concatenate([np.arange(n) for n in lengths]), pa.int32()),
            "proprio": pa.FixedSizeListArray.from_arrays(pa.array(proprio.ravel(), pa.float32()), PROPRIO_DIM),
            "action": pa.FixedSizeListArray.from_arrays(pa.array(actions.ravel(), pa.float32()), ACTION_DIM),
        }
        for key, shape in PRIVILEGED_SHAPES.items():  # only when every episode has it
            if len(self.privileged[key]) == len(self.episodes):
                flat = np.concatenate(self.privileged[key])  # (N, prod(shape))
                columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.float32()),
                                                                 int(np.prod(shape)))
        steps = pa.table(columns)
        pq.write_table(steps, self.dir / "steps.parquet")
        meta = {
            "format": FORMAT,
            "dataset_id": secrets.randbelow(_MAX_DATASET_ID),
            "suite": self.suite,
            "variant": self.variant,
            "tasks": sorted({e["task"] for e in self.episodes}),
            "episodes": len(self.episodes),
            "steps": int(sum(lengths)),
            "image_shape": list(self.image_shape),
            "image_codec": {**({"container": "mp4", "codec": "libx264rgb", "pix_fmt": "rgb24", "crf": self.crf}
                               if self.codec == "h264" else {"container": "npy", "codec": "raw", "dtype": "uint8"}),
                            "layout": "agentview | wrist side by side along width",
                            "max_abs_error": max(e["image_max_abs_error"] for e in self.episodes)},
            "bytes": int(sum(e["video_bytes"] for e in self.episodes)),
            "versions": self.versions,
            **(extra or {}),
        }
        tmp = self.dir / ".meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.dir / "meta.json")
        return meta


def _read_parquet(path: Path) -> pa.Table:
    if not path.exists():
        raise DatasetError(f"dataset file {path} is missing")
    try:
        return pq.read_table(path)
    except Exception as exc:
        raise DatasetError(f"dataset file {path} is truncated or corrupted ({type(exc).__name__}: {exc})") from exc


class _Folder:
    """One loaded dataset folder: meta, per-episode rows, low-dim arrays and step offsets."""

    def __init__(self, path: Path):
        self.path = path
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise DatasetError(f"{meta_path} is missing: {path} is not a dataset or its recording did not finish")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"dataset file {meta_path} is corrupted ({exc})") from exc
        if self.meta.get("format") != FORMAT:
            raise DatasetError(f"{meta_path} has format {self.meta.get('format')!r}; expected {FORMAT!r}")
        self.episodes = _read_parquet(path / "episodes.parquet").to_pylist()
        steps = _read_parquet(path / "steps.parquet")
        self.lengths = np.array([e["length"] for e in self.episodes], np.int64)
        if len(self.episodes) != self.meta["episodes"] or steps.num_rows != int(self.lengths.sum()):
            raise DatasetError(f"{path / 'steps.parquet'} holds {steps.num_rows} steps of {len(self.episodes)} "
                               f"episodes; meta.json says {self.meta['steps']} steps of {self.meta['episodes']}")
        self.proprio = steps.column("proprio").combine_chunks().flatten().to_numpy().reshape(-1, PROPRIO_DIM)
        self.actions = steps.column("action").combine_chunks().flatten().to_numpy().reshape(-1, ACTION_DIM)
        self.privileged = {key: steps.column(key).combine_chunks().flatten().to_numpy().reshape(-1, *shape)
                           for key, shape in PRIVILEGED_SHAPES.items() if key in steps.column_names}
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])  # first step row of each episode
        if len(self.lengths) >= 1 << _EP_SHIFT or self.lengths.max() >= 1 << (_DS_SHIFT - _EP_SHIFT):
            raise DatasetError(f"{path} has {len(self.lengths)} episodes of up to {self.lengths.max()} steps; "
                               f"sample ids allow fewer than {1 << _EP_SHIFT} of each")

    def frames(self, episode: int) -> np.ndarray:
        """Decoded (T, H, 2W, 3) frames of ``episode``, checked against the stored size and hash."""
        row = self.episodes[episode]
        path = self.path / row["video"]
        if not path.exists():
            raise DatasetError(f"video {path} is missing")
        if path.stat().st_size != row["video_bytes"] or file_hash(path, digits=64) != row["video_sha256"]:
            raise DatasetError(f"video {path} is truncated or corrupted (size or sha256 differs from "
                               f"{self.path / 'episodes.parquet'})")
        frames = read_frames(path)
        expected = (row["length"], *self.meta["image_shape"][:1], 2 * self.meta["image_shape"][1], 3)
        if frames.shape != expected:
            raise DatasetError(f"video {path} decoded to {frames.shape}; expected {expected}")
        return frames


def expand_dataset_dirs(paths: list[Path]) -> list[Path]:
    """Each of ``paths`` that is a dataset folder as is; any other folder becomes every dataset folder
    below it (sorted), so ``data/simpler`` stands for ``data/simpler/<suite>/<variant>[/<task>]``.

    A folder below that holds dataset files but no ``meta.json`` (an unfinished recording) raises
    :class:`DatasetError` rather than being left out silently.
    """
    out: list[Path] = []
    for path in paths:
        if (path / "meta.json").exists() or not path.is_dir():
            out.append(path)
            continue
        found = sorted(m.parent for m in path.rglob("meta.json"))
        unfinished = sorted({p.parent for p in path.rglob("episodes.parquet")} - set(found)
                            | {p.parent for p in path.rglob("videos") if p.is_dir()} - set(found))
        if unfinished:
            raise DatasetError(f"{unfinished[0]} holds an unfinished recording (no meta.json); record it again "
                               f"or remove it")
        out.extend(found or [path])
    return out


class DemoDataset(torch.utils.data.Dataset):
    """Training samples, one per recorded step of every episode of ``dirs``.

    Item ``i`` is a dict: ``agentview``/``wrist`` (H, W, 3) uint8 tensors, ``proprio`` (8,)
    float32, ``instruction`` str, ``actions`` (chunk, 7) float32 (the actions of steps t..t+chunk-1;
    past the episode's end the last action repeats), ``action_mask`` (chunk,) bool (False on that
    padding), ``sample_id`` int64 (``dataset_id * 2**40 + episode * 2**20 + t``: stable under
    shuffling and unique across ``dirs``), ``suite`` and ``task`` str; and, where the folder recorded
    them, the privileged ``objects`` (12, 4) and ``expert_target`` (5,) float32 of step t.

    Images are decoded per episode on first use and kept in an LRU cache of ``cache_episodes``
    episodes (per process, so per ``DataLoader`` worker); ``preload=True`` decodes everything up
    front. Missing, truncated or corrupted files raise :class:`DatasetError` naming the file.
    """

    def __init__(self, dirs: str | os.PathLike | list[str | os.PathLike], chunk: int = 8,
                 cache_episodes: int = 32, preload: bool = False):
        if chunk < 1:
            raise UserInputError(f"chunk must be >= 1, got {chunk}")
        paths = [Path(dirs)] if isinstance(dirs, (str, os.PathLike)) else [Path(d) for d in dirs]
        if not paths:
            raise UserInputError("DemoDataset needs at least one dataset folder")
        paths = expand_dataset_dirs(paths)
        self.dirs = [str(p) for p in paths]
        self.folders = [_Folder(p) for p in paths]
        ids: dict[int, Path] = {}
        for folder in self.folders:
            ds_id = int(folder.meta["dataset_id"])
            if ds_id in ids:
                raise DatasetError(f"{folder.path} and {ids[ds_id]} share dataset_id {ds_id} "
                                   f"(the same dataset twice, or a copy)")
            ids[ds_id] = folder.path
        self.chunk = int(chunk)
        index = [np.stack([np.full(f.lengths.sum(), d), np.repeat(np.arange(len(f.lengths)), f.lengths),
                           np.concatenate([np.arange(n) for n in f.lengths])], axis=1)
                 for d, f in enumerate(self.folders)]
        self.index = np.concatenate(index)  # (N, 3): folder, episode, t
        self.cache_episodes = max(1, int(cache_episodes))
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        if preload:
            self.cache_episodes = sum(len(f.episodes) for f in self.folders)
            for d, folder in enumerate(self.folders):
                for e in range(len(folder.episodes)):
                    self._frames(d, e)

    def __len__(self) -> int:
        return len(self.index)

    def _frames(self, d: int, e: int) -> np.ndarray:
        key = (d, e)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        frames = self.folders[d].frames(e)
        self._cache[key] = frames
        while len(self._cache) > self.cache_episodes:
            self._cache.popitem(last=False)
        return frames

    def sample_ids(self) -> np.ndarray:
        """(N,) int64: the ``sample_id`` of every item, in item order, without reading a frame."""
        ds = np.array([int(f.meta["dataset_id"]) for f in self.folders], np.int64)[self.index[:, 0]]
        return (ds << _DS_SHIFT) + (self.index[:, 1].astype(np.int64) << _EP_SHIFT) + self.index[:, 2]

    def episode_of(self, i: int) -> tuple[int, int]:
        """(folder index, episode) of item ``i``: lets a sampler keep items of one episode together."""
        d, e, _ = self.index[i]
        return int(d), int(e)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} samples")
        d, e, t = (int(v) for v in self.index[i])
        folder = self.folders[d]
        row = folder.episodes[e]
        length, start = int(folder.lengths[e]), int(folder.starts[e])
        frame = self._frames(d, e)[t]  # (H, 2W, 3)
        width = frame.shape[1] // 2
        steps = np.minimum(np.arange(t, t + self.chunk), length - 1)  # (K,)
        return {
            "agentview": torch.from_numpy(np.ascontiguousarray(frame[:, :width])),  # (H, W, 3) uint8
            "wrist": torch.from_numpy(np.ascontiguousarray(frame[:, width:])),  # (H, W, 3) uint8
            "proprio": torch.from_numpy(folder.proprio[start + t].copy()),  # (8,)
            "instruction": row["instruction"],
            "actions": torch.from_numpy(folder.actions[start + steps]),  # (K, 7)
            "action_mask": torch.from_numpy(np.arange(t, t + self.chunk) < length),  # (K,)
            "sample_id": torch.tensor((int(folder.meta["dataset_id"]) << _DS_SHIFT) + (e << _EP_SHIFT) + t,
                                      dtype=torch.int64),
            "suite": row["suite"],
            "task": row["task"],
            **{key: torch.from_numpy(values[start + t].copy()) for key, values in folder.privileged.items()},
        }

    def instructions(self) -> list[str]:
        """Distinct instruction strings, sorted."""
        return sorted({row["instruction"] for f in self.folders for row in f.episodes})

    def action_stats(self) -> dict[str, np.ndarray]:
        """Per-dimension ``mean``, ``std``, ``min``, ``max`` of every recorded action, each (7,) float32."""
        actions = np.concatenate([f.actions for f in self.folders])  # (N, 7)
        return {"mean": actions.mean(0), "std": actions.std(0), "min": actions.min(0), "max": actions.max(0)}
