"""Training data for every loop: opening demonstrations, collating items into model batches, augmentation.

    dataset = open_dataset(["data/widowx"], chunk=8)          # or any dataset of DemoDataset-format items
    loader = DataLoader(dataset, batch_size=32, collate_fn=ItemCollate(vla))
    batch = collate(vla, next(iter(loader)))                  # on the model's device, actions normalised
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tasks.errors import MissingInputError

Data = Sequence[str | os.PathLike] | Dataset  # demonstration folders, or a dataset with the same item format


def open_dataset(data: Data, chunk: int) -> Dataset:
    """``data`` itself when it is a dataset, else ``tasks.datasets.DemoDataset`` over the folders ``data``
    with action chunks of ``chunk`` steps (``tasks.lerobot.LeRobotDataset``, the same items, where a folder is
    or holds a LeRobot v3.0 dataset: ``meta/info.json``); raises ``MissingInputError`` naming folders that do
    not exist."""
    if isinstance(data, Dataset):
        return data
    from tasks.datasets import DemoDataset
    from tasks.lerobot import LeRobotDataset, holds_lerobot

    dirs = dataset_dirs(data)
    missing = [d for d in dirs if not Path(d).is_dir()]
    if missing:
        raise MissingInputError(f"demonstration folder(s) not found: {', '.join(missing)}")
    if any(holds_lerobot(d) for d in dirs):
        return LeRobotDataset(dirs, chunk=chunk)
    return DemoDataset(dirs, chunk=chunk)


def dataset_dirs(data: Data) -> list[str]:
    """The folders ``data`` names, as given (a dataset: its ``dirs`` attribute, or none)."""
    if isinstance(data, Dataset):
        return [str(d) for d in getattr(data, "dirs", [])]
    return [str(d) for d in data]


class ItemCollate:
    """DataLoader collate: dataset items -> CPU tensors (model inputs, raw action chunks (B, K, 7), masks
    (B, K), sample ids); it runs in the loader workers, so a GPU run does not wait on the main process for it."""

    def __init__(self, vla):
        self.config, self.tokenizer = vla.config, vla.tokenizer

    def __call__(self, items: list) -> dict:
        from distill.vla import prepare_observations

        return {
            "inputs": prepare_observations(self.config, self.tokenizer, items, "cpu"),
            "actions": torch.stack([torch.as_tensor(it["actions"], dtype=torch.float32) for it in items]),
            "mask": torch.stack([torch.as_tensor(it["action_mask"], dtype=torch.bool) for it in items]),
            "sample_ids": torch.stack([torch.as_tensor(it["sample_id"], dtype=torch.int64) for it in items]),
        }


@dataclass
class Batch:
    """A collated training batch on the model's device."""

    inputs: dict[str, torch.Tensor]  # from VLA.prepare
    actions: torch.Tensor  # (B, K, 7) normalised
    mask: torch.Tensor  # (B, K) bool
    sample_ids: torch.Tensor  # (B,) int64, on the CPU


def collate(vla, items: Sequence[Mapping] | Mapping) -> Batch:
    """Batch dataset items (``DemoDataset`` format), or the output of :class:`ItemCollate`, for ``vla``."""
    device = vla.action_mean.device
    cpu = items if isinstance(items, Mapping) else ItemCollate(vla)(items)
    return Batch(inputs={k: v.to(device, non_blocking=True) for k, v in cpu["inputs"].items()},
                 actions=vla.normalize_actions(cpu["actions"].to(device)), mask=cpu["mask"].to(device),
                 sample_ids=cpu["sample_ids"])


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator seeded by ``(seed, step, stream)``: augmentation that a resumed run draws again exactly
    (stream 1: teacher training, 2: stage 2)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + stream)


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of (B, H, W, 3) uint8 by up to ``pad`` pixels (replicate padding, random crop, DrQ).

    One gather for the whole batch rather than one small copy per image.
    """
    if pad == 0:
        return images
    b, h, w, _ = images.shape
    padded = F.pad(
        images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate"
    ).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, 3)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(images.device)  # (B,) each
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=images.device)  # (B, W)
    index = torch.arange(b, device=images.device)[:, None, None]
    return padded[index, rows[:, :, None], cols[:, None, :]].to(torch.uint8)  # (B, H, W, 3)
