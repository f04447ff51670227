"""Baseline routing policies at a given layer budget, built on a trained teacher checkpoint.

    from distill.baselines import make_baseline, parse_policy_spec
    policy = make_baseline("redundancy", "runs/teacher_small", budget=0.5)   # calib: the teacher's demos
    policy.reset(); action = policy.act(obs)                                  # (7,), like any policy
    policy.last_info        # {"executed_layers": [...], "flops": ..., "executed_fraction": ..., ...}
    policy = parse_policy_spec("baseline:random@0.5,seed=3:runs/teacher_small").build()

The budget ``b`` (0 < b <= 1) is the fraction of the L decoder layers executed per model call. Every
static baseline runs ``k = floor(b * L)`` layers (rounded down, so the executed fraction never exceeds ``b``;
``b < 1/L`` is refused because it would run no layer at all):

- ``first_k``: layers 0..k-1.
- ``uniform``: k evenly spaced layers, first and last included (``round(linspace(0, L-1, k))``).
- ``redundancy``: EfficientVLA-style static pruning (arXiv 2506.10100): on calibration data, the mean
  cosine similarity between each layer's input and output hidden states (over all non-padding tokens)
  measures how little the layer changes the stream; the L - k most similar layers are dropped.
- ``early_exit``: fixed-depth early exit: layers 0..k-1, then the final norm and action head read the
  action-query tokens. In compute and output it is the same model as ``first_k``; it is listed under its
  own name because early exit is a separate family in the literature, and its results are kept apart.
- ``early_exit_adaptive``: per-input early exit. After each layer the relative change of the action-query
  tokens, ``||q_i - q_(i-1)|| / ||q_(i-1)||``, is compared with a threshold; below it the row exits to the
  head (at least one layer runs). The threshold is the smallest one whose mean executed fraction on the
  calibration data is at most ``b``; on other inputs the mean may differ, and ``mean_executed_fraction``
  reports what actually ran. The exit test is elementwise and counts 0 FLOPs (see :mod:`distill.flops`).
- ``random``: each model call runs a random set of k layers per batch row (in depth order), drawn from a
  ``numpy`` generator seeded with ``seed`` and a hash of that row's inputs: the same seed and input give the
  same layers, whatever ran before, so an episode's routes do not depend on the order in which a worker
  runs episodes (a generator that only advanced from call to call gave the same episode other routes in
  another schedule: 27 against 31 successes of 165 on one plan).

Each baseline runs the teacher's own weights with a ``layer_mask`` (skipped layers are not computed, see
:meth:`distill.vla.VLA.run_layers`) through the teacher policy's chunking and post-processing
(:class:`distill.checkpoint.VLAPolicy`, whose ``model_call`` it overrides).

``first_k``, ``uniform`` and ``random`` also accept a distilled student's checkpoint in place of the
teacher: its weights then run on the baseline's route and its router is ignored. That separates what the
router adds from what stage 2 did to the weights (``baseline:first_k@0.5:results/checkpoints/student-simpler-b0.50``).

Policy spec (the ``--policy`` form the harness accepts for baselines)::

    baseline:<name>@<budget>[,seed=<int>][,calib=<demo folder>][,calib_samples=<int>]:<teacher checkpoint>

e.g. ``baseline:uniform@0.5:runs/teacher_small``. The teacher path is everything after the second colon
(so it may contain colons); option values may not contain ``,`` or ``:``. ``calib`` defaults to the
demonstration folders the teacher was trained on (``data.dirs`` of its ``config.json``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.checkpoint import VLAPolicy, load_policy, read_config
from distill.routed import StudentPolicy
from distill.router import layers_for_budget
from distill.vla import VLA
from tasks.errors import UserInputError

BASELINES = ("first_k", "uniform", "redundancy", "early_exit", "early_exit_adaptive", "random")
SPEC_PREFIX = "baseline:"
# Baselines that only pick a fixed (or random) layer set, so they may also run over a distilled student's
# weights, its router ignored: "is the router better than a static route over the same weights?"
STATIC_OVER_STUDENT = ("first_k", "uniform", "random")
CALIB_SAMPLES = 64  # calibration observations drawn (evenly spaced) from a demo dataset
_CALIB_BATCH = 16

Calib = str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Mapping[str, Any]]


def first_k_layers(num_layers: int, k: int) -> list[int]:
    """Layers 0..k-1."""
    return list(range(k))


def uniform_layers(num_layers: int, k: int) -> list[int]:
    """k evenly spaced layer indices of ``num_layers``, first and last included (the first only for k=1)."""
    if k == 1:
        return [0]
    return [int(i) for i in np.round(np.linspace(0, num_layers - 1, k))]


def redundancy_layers(similarity: Sequence[float], k: int) -> list[int]:
    """The k layers with the lowest input/output cosine ``similarity`` (L,), in depth order (ties: shallower)."""
    order = sorted(range(len(similarity)), key=lambda i: (float(similarity[i]), i))
    return sorted(order[:k])


def calibration_observations(calib: Calib | None, teacher_path: str | os.PathLike,
                             samples: int = CALIB_SAMPLES) -> list[Mapping[str, Any]]:
    """Up to ``samples`` calibration observations, evenly spaced over ``calib``.

    ``calib`` is a list of observation dicts (or any indexable of them, e.g. a ``DemoDataset``), a demo
    folder or a list of demo folders (paths relative to the working directory), or None for the teacher's
    training demos (``data.dirs`` of its ``config.json``). Raises ``ValueError`` when none can be found.
    """
    if calib is None:
        dirs = read_config(teacher_path).get("data", {}).get("dirs")
        if not dirs:
            raise UserInputError(f"teacher {str(teacher_path)!r} records no training demo folders (data.dirs in its "
                             "config.json); pass calib= a demo folder or a list of observations")
        calib = dirs
    if isinstance(calib, (str, os.PathLike)) or (
            isinstance(calib, Sequence) and calib and all(isinstance(c, (str, os.PathLike)) for c in calib)):
        from tasks.datasets import DemoDataset  # lazy: parquet/video readers load only when calibrating

        calib = DemoDataset(calib)
    if not (hasattr(calib, "__len__") and hasattr(calib, "__getitem__")) or len(calib) == 0:
        raise UserInputError("calib must be a demo folder, a list of demo folders or a non-empty list of observation "
                         f"dicts; got {type(calib).__name__}")
    picks = np.unique(np.linspace(0, len(calib) - 1, min(samples, len(calib))).round().astype(int))
    obs = [calib[int(i)] for i in picks]
    if not all(isinstance(o, Mapping) for o in obs):
        raise UserInputError(f"calib items must be observation dicts, got {type(obs[0]).__name__}")
    return obs


def layer_similarity(model: VLA, observations: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Mean cosine similarity (L,) between each decoder layer's input and output hidden states.

    Runs the full stack on ``observations``; averages over every non-padding token of every observation.
    A layer with similarity near 1 barely changes the residual stream (EfficientVLA's redundancy measure).
    """
    total = torch.zeros(model.num_layers, dtype=torch.float64)  # (L,)
    count = 0
    with torch.inference_mode():
        for start in range(0, len(observations), _CALIB_BATCH):
            emb = model.embed(model.prepare(observations[start:start + _CALIB_BATCH]))
            real = emb.attention_mask  # (B, N)
            hidden = emb.hidden  # (B, N, D)
            for idx in range(model.num_layers):
                out = model.run_layer(idx, hidden, emb)  # (B, N, D)
                cos = F.cosine_similarity(hidden.float(), out.float(), dim=-1)  # (B, N)
                total[idx] += cos[real].double().sum()
                hidden = out
            count += int(real.sum())
    return (total / count).float()


def _query_change(before: torch.Tensor, after: torch.Tensor, chunk: int) -> torch.Tensor:
    """Relative change (B,) of the K action-query tokens (last K of (B, N, D)) between two hidden states."""
    q0, q1 = before[:, -chunk:].float(), after[:, -chunk:].float()  # (B, K, D)
    return (q1 - q0).flatten(1).norm(dim=1) / q0.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)


def query_changes(model: VLA, observations: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Per observation and layer, the relative change of the action-query tokens made by that layer: (S, L)."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(observations), _CALIB_BATCH):
            emb = model.embed(model.prepare(observations[start:start + _CALIB_BATCH]))
            hidden = emb.hidden  # (B, N, D)
            changes = []
            for idx in range(model.num_layers):
                out = model.run_layer(idx, hidden, emb)  # (B, N, D)
                changes.append(_query_change(hidden, out, model.config.chunk))
                hidden = out
            rows.append(torch.stack(changes, dim=1))  # (B, L)
    return torch.cat(rows)  # (S, L)


def exit_depths(changes: torch.Tensor, threshold: float) -> torch.Tensor:
    """Layers run (S,) per row of ``changes`` (S, L): up to and including the first layer whose change is
    below ``threshold`` (all L when none is)."""
    below = changes < threshold  # (S, L)
    first = below.float().argmax(dim=1)  # (S,) index of the first True (0 when there is none)
    return torch.where(below.any(dim=1), first + 1, torch.full_like(first, changes.shape[1]))


def calibrate_exit_threshold(changes: torch.Tensor, budget: float) -> float:
    """Smallest threshold whose mean executed fraction over ``changes`` (S, L) is at most ``budget``.

    Candidates are 0 (never exit) and each observed change nudged up by one float step (so that change
    itself falls below it). Raises ``ValueError`` when even exiting after the first layer exceeds ``budget``.
    """
    num_layers = changes.shape[1]
    values = torch.unique(changes.flatten().float())  # sorted ascending
    candidates = [0.0] + torch.nextafter(values, torch.full_like(values, math.inf)).tolist()
    for threshold in candidates:
        if float(exit_depths(changes, threshold).float().mean()) / num_layers <= budget + 1e-12:
            return threshold
    raise UserInputError(f"budget {budget} is below 1/{num_layers}: adaptive early exit runs at least one layer")


class BaselinePolicy(VLAPolicy):
    """The teacher run with a routing baseline's layer mask; the policy protocol of :class:`VLAPolicy`.

    ``k`` is the layer count of the budget (``floor(b * L)``); ``layers`` the static layer set (``None`` for
    ``random``, which draws ``k`` layers per row and call, and for the adaptive subclass).
    ``last_info`` has the teacher policy's keys (``flops`` counts the layers the first row ran).
    ``mean_executed_fraction`` averages the executed fraction over every row of
    every model call so far (the planned ``k / L`` before the first call).
    """

    def __init__(self, teacher: VLAPolicy, name: str, budget: float, k: int, layers: list[int] | None,
                 seed: int = 0, extra_hash: str = ""):
        super().__init__(teacher.model, checkpoint_hash=teacher.checkpoint_hash, path=teacher.path)
        self.name, self.budget, self.k, self.layers, self.seed = name, float(budget), k, layers, seed
        self.teacher_hash = teacher.checkpoint_hash
        # ",draw=inputN": random's layers depend on the input (hashed at stride N), not on the calls before
        tag = f"{name}@{budget:g}" + (f",seed={seed},draw=input{DIGEST_STRIDE}" if name == "random" else "") + extra_hash
        self.checkpoint_hash = hashlib.sha256(f"{teacher.checkpoint_hash}|{tag}".encode()).hexdigest()[:16]
        self._rng = np.random.default_rng(seed)
        self._executed_sum, self._rows = 0, 0

    @property
    def spec(self) -> str:
        """The policy spec that names this baseline (``baseline:first_k@0.5:TEACHER``), for outputs that would
        otherwise show only the teacher's folder."""
        seed = f",seed={self.seed}" if self.name == "random" else ""
        return f"{SPEC_PREFIX}{self.name}@{self.budget:g}{seed}:{self.path}"

    @property
    def mean_executed_fraction(self) -> float:
        if self._rows == 0:
            return self.k / self.model.num_layers
        return self._executed_sum / (self._rows * self.model.num_layers)

    def layer_mask(self, batch_size: int, batch: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, L) bool mask of the layers each row runs in the next call. For random, each row's layers come
        from a generator seeded with ``(seed, hash of the row's tensors in batch)``; without ``batch``, from
        the policy's own generator, which advances from call to call."""
        mask = torch.zeros(batch_size, self.model.num_layers, dtype=torch.bool)  # (B, L)
        for row in range(batch_size):
            if self.layers is not None:
                chosen = self.layers
            else:
                rng = self._rng if batch is None else np.random.default_rng([self.seed, _row_digest(batch, row)])
                chosen = rng.choice(self.model.num_layers, size=self.k, replace=False)
            mask[row, list(chosen)] = True
        return mask

    def model_call(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[list[int]]]:
        b = int(batch["proprio"].shape[0])
        mask = self.layer_mask(b, batch)  # (B, L)
        with torch.inference_mode():
            chunk = self.model(batch, mask.to(self.device))  # (B, K, 7)
        self._executed_sum += int(mask.sum())
        self._rows += b
        return chunk, [row.nonzero().squeeze(1).tolist() for row in mask]


DIGEST_STRIDE = 31  # of a large tensor (an image) every 31st element is hashed: the call is timed with it


def _row_digest(batch: Mapping[str, torch.Tensor], row: int) -> int:
    """A 63-bit hash of row ``row`` of every tensor in ``batch`` (keys in sorted order); of a tensor of over 4,096
    elements (a camera image) only every :data:`DIGEST_STRIDE`-th element, since this runs inside every timed
    model call (all of a 128x128 image pair cost 0.13 ms of a 7.7 ms call; the subsample about 0.02 ms)."""
    digest = hashlib.blake2b(digest_size=8)
    for key in sorted(batch):
        value = batch[key]
        if isinstance(value, torch.Tensor):
            flat = value[row].detach().reshape(-1)
            if flat.numel() > 4096:
                flat = flat[::DIGEST_STRIDE]
            digest.update(key.encode())
            digest.update(flat.cpu().contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


class AdaptiveExitPolicy(BaselinePolicy):
    """Per-row early exit: a row stops after the first layer whose action-query change is below ``threshold``.

    Exited rows are dropped from the batch, so their remaining layers are not computed.
    """

    def __init__(self, teacher: VLAPolicy, budget: float, threshold: float, calib_fraction: float):
        k = layers_for_budget(budget, teacher.model.num_layers)
        super().__init__(teacher, "early_exit_adaptive", budget, k=k, layers=None,
                         extra_hash=f",threshold={threshold!r}")
        self.threshold = threshold
        self.calib_fraction = calib_fraction

    @property
    def mean_executed_fraction(self) -> float:
        if self._rows == 0:
            return self.calib_fraction
        return self._executed_sum / (self._rows * self.model.num_layers)

    def model_call(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[list[int]]]:
        model = self.model
        with torch.inference_mode():
            emb = model.embed(batch)
            hidden = emb.hidden  # (B, N, D)
            b = hidden.shape[0]
            depth = torch.full((b,), model.num_layers, dtype=torch.int64)  # (B,)
            active = torch.arange(b, device=hidden.device)  # (R,) rows still running
            for idx in range(model.num_layers):
                before = hidden[active]  # (R, N, D)
                out = model.run_layer(idx, before, emb.select(active))  # (R, N, D)
                hidden = hidden.index_copy(0, active, out)
                done = _query_change(before, out, model.config.chunk) < self.threshold  # (R,)
                depth[active[done].cpu()] = idx + 1
                active = active[~done]
                if active.numel() == 0:
                    break
            chunk = model.head(hidden, emb)  # (B, K, 7)
        mask = torch.arange(model.num_layers)[None, :] < depth[:, None]  # (B, L)
        self._executed_sum += int(mask.sum())
        self._rows += b
        return chunk, [list(range(int(d))) for d in depth]


@dataclass(frozen=True)
class BaselineSpec:
    """A parsed ``baseline:<name>@<budget>[,options]:<teacher>`` policy spec (see the module docstring)."""

    name: str
    budget: float
    teacher_path: str
    seed: int = 0
    calib: str | None = None
    calib_samples: int = CALIB_SAMPLES

    def build(self, device: str | torch.device = "cpu") -> BaselinePolicy:
        """The baseline policy this spec describes, on ``device``."""
        return make_baseline(self.name, self.teacher_path, self.budget, calib=self.calib, seed=self.seed,
                             device=device, calib_samples=self.calib_samples)


def parse_policy_spec(spec: str) -> BaselineSpec:
    """Parse ``baseline:<name>@<budget>[,seed=<int>][,calib=<folder>][,calib_samples=<int>]:<teacher_path>``.

    Raises ``ValueError`` that quotes the spec and shows the expected form, names an unknown baseline (with
    the valid ones) or an unknown option (with the valid ones). The teacher path is not opened here.
    """
    form = f"{SPEC_PREFIX}<name>@<budget>[,seed=<int>][,calib=<folder>][,calib_samples=<int>]:<teacher_path>"
    if not spec.startswith(SPEC_PREFIX):
        raise UserInputError(f"policy spec {spec!r} does not start with {SPEC_PREFIX!r}; expected {form}")
    head, sep, teacher = spec[len(SPEC_PREFIX):].partition(":")
    parts = head.split(",")
    name, at, budget_text = parts[0].partition("@")
    if not sep or not teacher or not at:
        raise UserInputError(f"policy spec {spec!r} is malformed; expected {form}, e.g. baseline:uniform@0.5:runs/teacher")
    _check_name(name)
    try:
        budget = float(budget_text)
    except ValueError:
        raise UserInputError(f"policy spec {spec!r}: budget {budget_text!r} is not a number (e.g. 0.5)") from None
    options: dict[str, Any] = {}
    converters = {"seed": int, "calib": str, "calib_samples": int}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if key not in converters or not eq:
            raise UserInputError(f"policy spec {spec!r}: option {part!r} not understood; valid options: "
                             f"{', '.join(k + '=...' for k in converters)}")
        try:
            options[key] = converters[key](value)
        except ValueError:
            raise UserInputError(f"policy spec {spec!r}: option {key} needs an integer, got {value!r}") from None
    return BaselineSpec(name=name, budget=budget, teacher_path=teacher, **options)


def _check_name(name: str) -> None:
    if name not in BASELINES:
        raise UserInputError(f"unknown baseline {name!r}; valid baselines: {', '.join(BASELINES)}")


def make_baseline(name: str, teacher_path: str | os.PathLike, budget: float, calib: Calib | None = None,
                  seed: int = 0, device: str | torch.device = "cpu",
                  calib_samples: int = CALIB_SAMPLES) -> BaselinePolicy:
    """Baseline policy ``name`` (one of :data:`BASELINES`) at ``budget`` over the teacher in ``teacher_path``.

    ``calib`` (used by ``redundancy`` and ``early_exit_adaptive``): a demo folder, a list of them, or a list of
    observation dicts; None means the teacher's training demos. ``seed`` seeds ``random``'s layer draws.
    """
    _check_name(name)
    teacher = load_policy(teacher_path, device=device)
    if type(teacher) is not VLAPolicy and not (type(teacher) is StudentPolicy and name in STATIC_OVER_STUDENT):
        raise UserInputError(f"baselines wrap a plain VLA teacher checkpoint (or, for {', '.join(STATIC_OVER_STUDENT)}, "
                         f"a student's weights), but {str(teacher_path)!r} loads as {type(teacher).__name__} "
                         f"and {name!r} was asked for")
    num_layers = teacher.model.num_layers
    k = layers_for_budget(budget, num_layers)
    extra = ""
    if name in ("first_k", "early_exit"):
        layers: list[int] | None = first_k_layers(num_layers, k)
    elif name == "uniform":
        layers = uniform_layers(num_layers, k)
    elif name == "redundancy":
        obs = calibration_observations(calib, Path(teacher_path), calib_samples)
        layers = redundancy_layers(layer_similarity(teacher.model, obs).tolist(), k)
        extra = ",layers=" + "-".join(map(str, layers))  # the calibration decides the layers: part of the hash
    elif name == "early_exit_adaptive":
        changes = query_changes(teacher.model, calibration_observations(calib, Path(teacher_path), calib_samples))
        threshold = calibrate_exit_threshold(changes, budget)
        fraction = float(exit_depths(changes, threshold).float().mean()) / num_layers
        return AdaptiveExitPolicy(teacher, budget, threshold, fraction)
    else:
        layers = None
    return BaselinePolicy(teacher, name, budget, k, layers, seed=seed, extra_hash=extra)
