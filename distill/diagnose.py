"""Offline fit of a policy's action chunks on demonstrations, per suite or task, under several layer masks.

    rows = offline_fit(["results/checkpoints/student-libero-b0.50"], ["data/libero"], samples=256)
    print(format_fit(rows))

For each checkpoint and each group of samples (``by="suite"`` or ``"task"``), the error is the mean squared
error of the predicted normalised action chunk against the demonstration's (padding excluded), the loss
the models are trained on. Masks say which decoder layers run:

- ``routed``: the student's own router (a teacher runs every layer);
- ``all``: every layer (the student's weights without routing);
- ``first`` / ``last``: the first / last ``k`` layers, ``k`` the student's layers per input (or ``layers``).

A router that picks worse layers than a static choice shows up as ``routed`` above ``first`` for a group.

``images`` asks whether a policy reads its cameras at all: ``real`` (the recorded frames), ``zero`` (every
camera black) or ``swap`` (each sample's frames replaced by those of another episode of the same task, at
the nearest step: same phase, other layout). A policy that places its actions from what it sees loses fit
under ``zero`` and ``swap``; one that replays a mean trajectory indexed by its proprio does not.
For students the rows also carry how often each layer ran under the router (``layer_freq``) and how varied
the routes are: ``distinct_routes`` (different layer sets over the group's inputs), ``route_entropy_bits``
(entropy of the distribution of routes: 0 when every input takes one route) and ``usage_entropy_bits`` (the
binary entropy of each layer's usage, averaged over layers: 0 when every layer always or never runs). A
router whose routes collapse to one fixed set has the first at 1 and both entropies at 0. This reads
training demonstrations, so it measures fit, not generalisation; closed-loop success comes from
``actdistill eval``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.datasets import split_sample_id
from tasks.errors import UserInputError

MASKS = ("routed", "all", "first", "last")
GROUPS = ("suite", "task")
IMAGES = ("real", "zero", "swap")


def perturb_images(items: Sequence[dict], mode: str) -> list[dict]:
    """``items`` with their camera frames as ``mode`` says (:data:`IMAGES`; see the module docstring).

    ``swap`` pairs each item with the item of another episode of the same task whose step is nearest
    (ties: the next episode in order); a task with a single episode keeps its own frames.
    """
    if mode == "real":
        return list(items)
    cams = [k for k in ("agentview", "wrist") if k in items[0]]
    if mode == "zero":
        return [{**it, **{c: np.zeros_like(np.asarray(it[c])) for c in cams}} for it in items]
    by_task: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_task.setdefault(str(it["task"]), []).append(i)
    out = list(items)
    for members in by_task.values():
        ids = [int(items[i]["sample_id"]) for i in members]
        episode, step = zip(*(split_sample_id(sid) for sid in ids))  # (dataset, episode) key and t
        order = sorted(set(episode))
        for j, i in enumerate(members):
            others = [m for m in range(len(members)) if episode[m] != episode[j]]
            if not others:
                continue
            nxt = order[(order.index(episode[j]) + 1) % len(order)]
            pick = min(others, key=lambda m: (abs(step[m] - step[j]), episode[m] != nxt, episode[m]))
            out[i] = {**items[i], **{c: items[members[pick]][c] for c in cams}}
    return out

def _mask(model, emb, mode: str, k: int | None) -> torch.Tensor:
    batch, num_layers = emb.hidden.shape[0], model.num_layers
    if mode == "routed":
        if hasattr(model, "route"):
            return model.route(emb)
        mode = "all"
    if mode == "all":
        return torch.ones(batch, num_layers, dtype=torch.bool, device=emb.hidden.device)
    mask = torch.zeros(batch, num_layers, dtype=torch.bool, device=emb.hidden.device)
    if mode == "first":
        mask[:, :k] = True
    else:
        mask[:, num_layers - k:] = True
    return mask


def offline_fit(policies: Sequence[str | os.PathLike], data: Sequence[str | os.PathLike] | Dataset, *,
                samples: int = 256,
                by: str = "suite", masks: Sequence[str] = MASKS, layers: int | None = None,
                batch_size: int = 32, images: Sequence[str] = ("real",)) -> list[dict]:
    """Rows ``{policy, group, mask, images, n, mse, mse_ci, episode_err, layer_freq}`` (see the module
    docstring), and for image modes other than ``real`` also ``change`` and ``change_ci``: the MSE minus the
    ``real`` row's. Intervals are 95% percentile bootstraps over episodes (``sample_id`` gives the episode),
    paired by episode for ``change``; ``episode_err`` holds each episode's error sum and step count.

    ``samples`` evenly spaced samples of the demonstrations in ``data`` are read once and shared by every
    policy. ``first``/``last`` are skipped for a teacher unless ``layers`` is given. Raises ``ValueError``
    naming a bad ``by``, mask, ``samples`` or ``layers``.
    """
    from distill import load_policy
    from distill.data import open_dataset

    if by not in GROUPS:
        raise UserInputError(f"by={by!r} is not a grouping; valid: {', '.join(GROUPS)}")
    bad = [m for m in masks if m not in MASKS]
    if bad or not masks:
        raise UserInputError(f"mask(s) {bad or list(masks)!r} not valid; valid: {', '.join(MASKS)}")
    if samples < 1:
        raise UserInputError(f"samples must be >= 1, got {samples}")
    bad = [m for m in images if m not in IMAGES]
    if bad or not images:
        raise UserInputError(f"image mode(s) {bad or list(images)!r} not valid; valid: {', '.join(IMAGES)}")
    loaded = [(str(p), load_policy(p)) for p in policies]
    chunks = {int(pol.model.config.chunk) for _, pol in loaded}
    if len(chunks) != 1:
        raise UserInputError(f"policies predict different chunk lengths {sorted(chunks)}; compare them separately")
    dataset = open_dataset(data, chunks.pop())  # demo folders, or a dataset of their items
    index = np.unique(np.linspace(0, len(dataset) - 1, min(samples, len(dataset))).round().astype(int))
    items = [dataset[int(i)] for i in index]
    rows = []
    for mode in images:
        grouped: dict[str, list[dict]] = {}
        for item in perturb_images(items, mode):
            grouped.setdefault(str(item[by]), []).append(item)
        for path, policy in loaded:
            rows += [{**row, "images": mode} for row in _fit_policy(path, policy, grouped, masks, layers, batch_size)]
    _add_intervals(rows)
    return rows


def _ratio_bootstrap(sums: np.ndarray, counts: np.ndarray, base: tuple[np.ndarray, np.ndarray] | None = None,
                     resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of ``sum(sums) / sum(counts)`` (minus the same ratio of ``base``, paired)
    over episodes drawn with replacement; ``sums``, ``counts`` (E,) per episode."""
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(sums), (resamples, len(sums)))  # (R, E)
    stat = sums[draw].sum(1) / np.maximum(counts[draw].sum(1), 1.0)
    if base is not None:
        stat = stat - base[0][draw].sum(1) / np.maximum(base[1][draw].sum(1), 1.0)
    low, high = np.percentile(stat, [2.5, 97.5])
    return float(low), float(high)


def _add_intervals(rows: list[dict]) -> None:
    """Give each row ``mse_ci`` (a bootstrap over its episodes) and, for image modes other than ``real``,
    ``change`` (its MSE minus the ``real`` row's) with ``change_ci``, paired by episode."""
    real = {(r["policy"], r["group"], r["mask"]): r for r in rows if r["images"] == "real"}
    for r in rows:
        keys = sorted(r["episode_err"])
        sums = np.array([r["episode_err"][k][0] for k in keys])
        counts = np.array([r["episode_err"][k][1] for k in keys])
        r["mse_ci"] = _ratio_bootstrap(sums, counts)
        ref = real.get((r["policy"], r["group"], r["mask"]))
        if r["images"] != "real" and ref is not None:
            base = (np.array([ref["episode_err"][k][0] for k in keys]),
                    np.array([ref["episode_err"][k][1] for k in keys]))
            r["change"] = r["mse"] - ref["mse"]
            r["change_ci"] = _ratio_bootstrap(sums, counts, base)


def _fit_policy(path: str, policy, groups: dict[str, list[dict]], masks: Sequence[str], layers: int | None,
                batch_size: int) -> list[dict]:
    """:func:`offline_fit`'s rows for one loaded policy over prepared groups of items."""
    from distill.data import collate

    rows = []
    model = policy.model.eval()
    num_layers = model.num_layers
    k = layers if layers is not None else getattr(model, "layers_per_input", None)
    if k is not None and not 1 <= k <= num_layers:
        raise UserInputError(f"layers={k} must be between 1 and {num_layers} (the decoder layers of {path})")
    modes = [m for m in masks
             if not (m in ("first", "last") and k is None)  # a teacher has no layer count of its own
             and not (m == "routed" and not hasattr(model, "route") and "all" in masks)]  # = its full run
    for group in sorted(groups):
        err_sum = dict.fromkeys(modes, 0.0)
        used = {m: torch.zeros(num_layers) for m in modes}
        routes: dict[str, dict[tuple[int, ...], int]] = {m: {} for m in modes}
        count = 0.0
        episode_err: dict[str, dict[str, list[float]]] = {m: {} for m in modes}  # episode -> [sum, count]
        with torch.inference_mode():
            for start in range(0, len(groups[group]), batch_size):
                batch = collate(model, groups[group][start:start + batch_size])
                emb = model.embed(batch.inputs)  # once per batch, shared by every mask
                count += float(batch.mask.sum())
                episodes = [str(split_sample_id(i)[0]) for i in batch.sample_ids]
                for mode in modes:
                    mask = _mask(model, emb, mode, k)
                    chunk = model.head(model.run_layers(emb.hidden, emb, mask), emb)
                    err = ((chunk - batch.actions) ** 2).mean(-1) * batch.mask  # (B, K)
                    err_sum[mode] += float(err.sum())
                    used[mode] += mask.float().sum(0).cpu()
                    for row in mask.cpu().tolist():
                        key = tuple(i for i, on in enumerate(row) if on)
                        routes[mode][key] = routes[mode].get(key, 0) + 1
                    for e, row_err, row_n in zip(episodes, err.sum(1).tolist(), batch.mask.sum(1).tolist()):
                        acc = episode_err[mode].setdefault(e, [0.0, 0.0])
                        acc[0] += row_err
                        acc[1] += row_n
        n = len(groups[group])
        rows += [{"policy": path, "group": group, "mask": mode, "n": n,
                  "mse": err_sum[mode] / max(count, 1.0), "episode_err": episode_err[mode],
                  "layer_freq": [round(float(u) / n, 3) for u in used[mode]], **route_diversity(routes[mode], num_layers)}
                 for mode in modes]
    return rows


def route_diversity(counts: dict[tuple[int, ...], int], num_layers: int) -> dict:
    """``distinct_routes``, ``route_entropy_bits`` and ``usage_entropy_bits`` (see the module docstring) of
    ``counts``: how many inputs took each route (a tuple of executed layer indices out of ``num_layers``)."""
    n = sum(counts.values())
    if not n:
        return {"distinct_routes": 0, "route_entropy_bits": 0.0, "usage_entropy_bits": 0.0}
    p = np.array(list(counts.values()), dtype=np.float64) / n
    usage = np.zeros(num_layers)
    for route, c in counts.items():
        usage[list(route)] += c / n
    q = usage[(usage > 0) & (usage < 1)]
    binary = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return {"distinct_routes": len(counts), "route_entropy_bits": float(-(p * np.log2(p)).sum()) + 0.0,  # no -0.0
            "usage_entropy_bits": float(binary.sum() / len(usage))}


def _freq_string(freq: Sequence[float]) -> str:
    """Per layer: ``#`` always runs, ``.`` never, a digit d runs in about d/10 of the inputs."""
    return "".join("#" if f >= 0.995 else "." if f <= 0.005 else str(min(9, int(f * 10))) for f in freq)


def format_fit(rows: Sequence[dict]) -> str:
    """A markdown table: one row per (policy, group), one MSE column per mask (and per image mode other than
    ``real``), and the routed layer usage."""
    columns = [(m, i) for i in IMAGES for m in MASKS if any(r["mask"] == m and r.get("images", "real") == i
                                                             for r in rows)]
    keyed: dict[tuple[str, str], dict] = {}
    for r in rows:
        keyed.setdefault((r["policy"], r["group"]), {"n": r["n"]})[(r["mask"], r.get("images", "real"))] = r
    head = ["policy", "group", "n"] + [f"mse {m}" + ("" if i == "real" else f", images {i}") for m, i in columns]
    head += ["routed layers (# always, . never)", "routes (distinct, entropy bits)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (policy, group), by_col in keyed.items():
        cells = [policy, group, str(by_col["n"])]
        cells += [f"{by_col[c]['mse']:.3f}" if c in by_col else "" for c in columns]
        routed = next((by_col[c] for c in [("routed", i) for i in IMAGES] + [("all", i) for i in IMAGES]
                       if c in by_col), None)
        cells.append(f"`{_freq_string(routed['layer_freq'])}`" if routed else "")
        cells.append(f"{routed['distinct_routes']}, {routed['route_entropy_bits']:.2f}" if routed else "")
        lines.append("| " + " | ".join(cells) + " |")
    changes = [r for r in rows if "change" in r]
    if changes:
        lines += ["", "| policy | group | mask | images | mse change vs real images [95% CI, by episode] |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['policy']} | {r['group']} | {r['mask']} | {r['images']} | {r['change']:+.3f} "
                  f"[{r['change_ci'][0]:+.3f}, {r['change_ci'][1]:+.3f}] |" for r in changes]
    return "\n".join(lines)
