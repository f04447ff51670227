"""How far apart two checkpoints' predictions are, offline: normalised-action MSE between their chunks and
the share of predicted steps whose gripper sign differs, on random samples of a demonstration folder.

    python results/teacher_ema/scripts/pair_diff.py CKPT_A CKPT_B [DATA] [SAMPLES]

DATA defaults to data/simpler-s1/simpler_google/visual_matching and SAMPLES to 512 (seeded, so every pair
sees the same samples).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from distill.checkpoint import load_vla
from distill.train import _open_dataset


def main(a_path: str, b_path: str, data: str = "data/simpler-s1/simpler_google/visual_matching",
         samples: int = 512) -> None:
    torch.set_num_threads(2)
    a, _ = load_vla(a_path)
    b, _ = load_vla(b_path)
    a.eval(), b.eval()
    dataset, _ = _open_dataset([data], a.config.chunk)
    index = np.random.default_rng(0).choice(len(dataset), min(samples, len(dataset)), replace=False)
    items = [dataset[int(i)] for i in index]
    sq, flips, n = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(items), 64):
            part = items[start:start + 64]
            pa, pb = a(a.prepare(part)), b(b.prepare(part))
            sq += float(((pa - pb) ** 2).mean()) * len(part)
            grip_a = a.unnormalize_actions(pa)[..., -1] > 0
            grip_b = b.unnormalize_actions(pb)[..., -1] > 0
            flips += float((grip_a != grip_b).float().mean()) * len(part)
            n += len(part)
    print(f"{n} samples: normalised MSE between the two {sq / n:.4f}, gripper sign disagreement {flips / n:.4f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(sys.argv[3:4]), *([int(sys.argv[4])] if len(sys.argv) > 4 else []))
