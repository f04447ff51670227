"""How far apart two checkpoints' predictions are, offline, on the same demonstration samples.

    python -m tools.pair_diff runs/train/ema-s0/raw runs/train/ema-s0
    python -m tools.pair_diff CKPT_A CKPT_B --data data/simpler-s1/simpler_google/visual_matching --samples 512

Prints the mean squared difference between the two normalised action chunks and the share of predicted
steps whose gripper sign differs. The samples are drawn with a fixed seed, so every pair of checkpoints
sees the same ones. Both checkpoints must be plain VLA folders (teachers: ``train-teacher`` output).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from distill.vla import VLA

DEFAULT_DATA = "data/simpler-s1/simpler_google/visual_matching"


@dataclass(frozen=True)
class PairGap:
    """``samples`` items compared; ``mse``: mean over items, chunk steps and action dimensions of the squared
    difference of the normalised predictions; ``gripper_disagreement``: share of predicted steps whose
    unnormalised gripper action has a different sign."""

    samples: int
    mse: float
    gripper_disagreement: float


def prediction_gap(a: VLA, b: VLA, dataset: torch.utils.data.Dataset, samples: int = 512, seed: int = 0,
                   batch_size: int = 64) -> PairGap:
    """Compare ``a`` and ``b`` on ``min(samples, len(dataset))`` items drawn without replacement with ``seed``.

    Items are in ``tasks.datasets.DemoDataset`` format. Returns a :class:`PairGap`.
    """
    if a.config.chunk != b.config.chunk:
        raise ValueError(f"the checkpoints predict chunks of {a.config.chunk} and {b.config.chunk} steps; "
                         f"compare checkpoints with equal chunks")
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples} and {batch_size}")
    index = np.random.default_rng(seed).choice(len(dataset), min(samples, len(dataset)), replace=False)
    items = [dataset[int(i)] for i in index]
    squared, flips, steps = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            part = items[start:start + batch_size]
            pa, pb = a(a.prepare(part)), b(b.prepare(part))  # (B, K, 7) normalised
            squared += float(((pa - pb) ** 2).mean(dim=(1, 2)).sum())
            grip_a = a.unnormalize_actions(pa)[..., -1] > 0  # (B, K)
            grip_b = b.unnormalize_actions(pb)[..., -1] > 0
            flips += int((grip_a != grip_b).sum())
            steps += grip_a.numel()
    return PairGap(samples=len(items), mse=squared / len(items), gripper_disagreement=flips / steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="first checkpoint folder")
    parser.add_argument("b", help="second checkpoint folder")
    parser.add_argument("--data", nargs="+", default=[DEFAULT_DATA], help=f"demonstration folders ({DEFAULT_DATA})")
    parser.add_argument("--samples", type=int, default=512, help="items compared (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the item draw (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)

    from distill.checkpoint import load_vla
    from tasks.datasets import DemoDataset

    torch.set_num_threads(args.threads)
    a, _ = load_vla(args.a)
    b, _ = load_vla(args.b)
    gap = prediction_gap(a, b, DemoDataset(args.data, chunk=a.config.chunk), samples=args.samples, seed=args.seed)
    print(f"{gap.samples} samples: normalised MSE between the two {gap.mse:.4f}, "
          f"gripper sign disagreement {gap.gripper_disagreement:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
