"""Linear probes: can a frozen policy's vision tokens tell where the target is, relative to the hand?

    rows = probe("results/checkpoints/teacher-simpler", ["data/simpler-s1"], samples=3000)
    print(format_probe(rows))

For each demonstration sample the target is a privileged quantity recorded with it (``tasks.datasets``):
``expert_target`` (the expert's current waypoint minus the hand, metres) or ``objects`` (the first scene
entity minus the hand). Features are the frozen model's vision tokens at the embedding (every camera's
tokens, concatenated), the proprio alone, or both. A ridge regression per feature set is fitted and scored
by cross-validation over episodes (no episode is in its own fold's training set), per task. The ridge
penalty is the best of :data:`PENALTIES` on those out-of-fold predictions, chosen for each feature set alike
(a small optimism, the same for every set). If the vision
tokens place the target no better than the proprio, the policy cannot be reading it from its cameras: the
encoder is the gap. Closed-loop success comes from ``actdistill eval``; this measures what the encoder keeps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from tasks.datasets import split_sample_id
from tasks.errors import UserInputError

TARGETS = ("expert_target", "objects")
PENALTIES = (0.1, 1.0, 10.0, 100.0)
FEATURES = ("vision", "proprio", "vision+proprio")


def target_of(item: dict, target: str) -> np.ndarray:
    """(3,) metres: the probe target of one dataset item (``expert_target[:3]`` or ``objects[0, :3]``)."""
    if target not in item:
        raise UserInputError(f"the demonstrations hold no {target!r} field: record them again with this "
                             "version (actdistill demos) to store the privileged state")
    value = np.asarray(item[target], dtype=np.float64)
    return value[:3] if target == "expert_target" else value[0, :3]


def ridge_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5, lam: float = 1.0) -> np.ndarray:
    """Out-of-fold predictions (N, T) of a ridge regression of ``y`` (N, T) on ``x`` (N, F), with folds made
    of whole groups (episodes). Features are standardised on each fold's training part; ``lam`` is the ridge
    penalty on standardised features (scaled by the training size)."""
    unique = np.unique(groups)
    fold_of = {g: i % folds for i, g in enumerate(np.random.default_rng(0).permutation(unique))}
    fold = np.array([fold_of[g] for g in groups])
    pred = np.zeros_like(y)
    for k in range(min(folds, len(unique))):
        train, test = fold != k, fold == k
        if not train.any() or not test.any():
            continue
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        xt = (x[train] - mu) / sd  # (n, F)
        ym = y[train].mean(0)
        n, f = xt.shape
        if f > n:  # dual form: (X X^T + lam n I)^-1 y
            a = np.linalg.solve(xt @ xt.T + lam * n * np.eye(n), y[train] - ym)
            w = xt.T @ a
        else:
            w = np.linalg.solve(xt.T @ xt + lam * n * np.eye(f), xt.T @ (y[train] - ym))
        pred[test] = ((x[test] - mu) / sd) @ w + ym
    return pred


def _features(model, items: list[dict], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Vision tokens (N, V*D) at the embedding and proprio (N, 8) of ``items``, from the frozen ``model``."""
    from distill.data import collate

    vision, proprio = [], []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = collate(model, items[start:start + batch_size])
            emb = model.embed(batch.inputs)
            end = emb.spans[0]  # tokens [0, vision_end) are the vision tokens
            vision.append(emb.hidden[:, :end].flatten(1).float().cpu().numpy())  # (B, V*D)
            proprio.append(batch.inputs["proprio"].float().cpu().numpy())  # (B, 8)
    return np.concatenate(vision), np.concatenate(proprio)


def probe(policy: str | os.PathLike, data: Sequence[str | os.PathLike], *, target: str = "expert_target",
          samples: int = 3000, by: str = "task", folds: int = 5, penalties: Sequence[float] = PENALTIES,
          batch_size: int = 64) -> list[dict]:
    """Rows ``{group, features, n, episodes, rmse_cm, r2, penalty, baseline_rmse_cm}`` per group and feature set.

    ``rmse_cm``: root mean squared error of the out-of-fold prediction of the (3,) target in centimetres;
    ``r2``: 1 - SSE / SST over the three axes (0: no better than the group's mean target);
    ``baseline_rmse_cm``: the error of predicting the mean target of the training folds.
    """
    from distill import load_policy
    from distill.data import open_dataset

    if target not in TARGETS:
        raise UserInputError(f"unknown probe target {target!r}; valid: {', '.join(TARGETS)}")
    if by not in ("task", "suite"):
        raise UserInputError(f"by={by!r} is not a grouping; valid: task, suite")
    if samples < 10:
        raise UserInputError(f"samples must be >= 10, got {samples}")
    model = load_policy(policy).model.eval()
    dataset = open_dataset(data, model.config.chunk)
    index = np.unique(np.linspace(0, len(dataset) - 1, min(samples, len(dataset))).round().astype(int))
    items = [dataset[int(i)] for i in index]
    y = np.stack([target_of(it, target) for it in items])  # (N, 3)
    episodes = np.array([split_sample_id(it["sample_id"])[0] for it in items])
    vision, proprio = _features(model, items, batch_size)
    sets = {"vision": vision, "proprio": proprio, "vision+proprio": np.concatenate([vision, proprio], 1)}
    rows = []
    labels = np.array([str(it[by]) for it in items])
    for group in sorted(set(labels)):
        sel = labels == group
        yg, eg = y[sel], episodes[sel]
        zero = ridge_cv(np.zeros((sel.sum(), 1)), yg, eg, folds)  # the training folds' mean
        sst = float(((yg - zero) ** 2).sum())
        for name, x in sets.items():
            fits = {lam: ridge_cv(x[sel], yg, eg, folds, lam) for lam in penalties}
            lam, pred = min(fits.items(), key=lambda kv: float(((yg - kv[1]) ** 2).sum()))
            sse = float(((yg - pred) ** 2).sum())
            rows.append({"group": group, "features": name, "n": int(sel.sum()), "episodes": len(set(eg)),
                         "penalty": lam, "rmse_cm_ci": _rmse_interval(yg - pred, eg),
                         "rmse_cm": 100 * float(np.sqrt(((yg - pred) ** 2).sum(1).mean())),
                         "r2": 1.0 - sse / max(sst, 1e-12),
                         "baseline_rmse_cm": 100 * float(np.sqrt(((yg - zero) ** 2).sum(1).mean()))})
    return rows


def _rmse_interval(residual: np.ndarray, episodes: np.ndarray, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """95% percentile interval (cm) of the RMSE of ``residual`` (N, 3) over episodes drawn with replacement."""
    keys, inverse = np.unique(episodes, return_inverse=True)
    sq = np.bincount(inverse, weights=(residual ** 2).sum(1), minlength=len(keys))  # (E,)
    count = np.bincount(inverse, minlength=len(keys)).astype(float)
    draw = np.random.default_rng(seed).integers(0, len(keys), (resamples, len(keys)))  # (R, E)
    rmse = 100 * np.sqrt(sq[draw].sum(1) / count[draw].sum(1))
    low, high = np.percentile(rmse, [2.5, 97.5])
    return float(low), float(high)


def format_probe(rows: Sequence[dict]) -> str:
    """A markdown table: per group, the out-of-fold error (cm, with its 95% interval by episode) and R^2 of
    each feature set."""
    groups = sorted({r["group"] for r in rows})
    keyed = {(r["group"], r["features"]): r for r in rows}
    head = ["group", "n", "episodes", "mean-target error (cm)"] + [f"{f}: cm [95% CI], R^2" for f in FEATURES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        first = keyed[(g, FEATURES[0])]
        cells = [g, str(first["n"]), str(first["episodes"]), f"{first['baseline_rmse_cm']:.1f}"]
        cells += [f"{keyed[(g, f)]['rmse_cm']:.1f} [{keyed[(g, f)]['rmse_cm_ci'][0]:.1f}, "
                  f"{keyed[(g, f)]['rmse_cm_ci'][1]:.1f}], {keyed[(g, f)]['r2']:.2f}" for f in FEATURES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
