"""The one training loop: teacher training (:mod:`distill.train`) and both ActDistill stages
(:mod:`distill.student`) configure it with their modules, optimiser and step function.

    loop = TrainingLoop("stage1", workdir, fingerprint={"graph": ...})
    result = loop.run(modules={"enc": enc}, optimizer=optimizer, step_fn=step_fn, dataset=dataset,
                      collate_fn=ItemCollate(teacher), settings=LoopSettings(steps=1000, batch_size=32, ...))

Per step: the learning rate of every parameter group is set to its base rate times :func:`lr_factor` (linear
warm-up, cosine to 10%), ``step_fn(batch, step, total)`` returns the loss terms, the gradient of ``"loss"``
is clipped over the parameters of ``modules`` and the optimiser steps; an optional :class:`WeightAverage`
follows. Batches come from :class:`EpisodeGroupedBatches`, a pure function of ``(seed, step)``. Every
``save_every`` steps and at the end ``workdir/training_state.pt`` receives the step, the history, every
module's and the optimiser's state, the average and torch's RNG state (so a resumed run continues exactly as
an uninterrupted one), ``workdir/loss.png`` the loss curve, and the caller's ``on_save`` is called.
A :class:`TimeBudget` can fit the step count to a wall-clock budget.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tasks.errors import UserInputError

STATE = "training_state.pt"
STATE_FORMAT = "distill.loop/1"  # training states of this loop; earlier formats are refused
PLOT = "loss.png"
GROUP_EPISODES = 16  # episodes per shuffling group (DemoDataset keeps 32 decoded episodes per process)


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup`` steps, cosine to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_s(steps_after_first: int, first_done: float | None) -> float:
    """Training rate: the steps after the first one (which carries start-up costs) over the time since it
    finished (``time.perf_counter()`` at ``first_done``); NaN until there is something to time."""
    elapsed = time.perf_counter() - first_done if first_done is not None else 0.0
    return steps_after_first / elapsed if steps_after_first > 0 and elapsed > 0 else float("nan")


class TimeBudget:
    """Fits a run's step count to a wall-clock budget (for time-boxed runs on a lent GPU).

    The run starts with ``steps`` as its total; after ``calibrate`` timed steps (the first step, which
    includes start-up, is not timed) the total becomes the step count that ends at ``seconds`` after the
    start, capped at ``steps``. The learning-rate schedule follows the new total, so the run still ends
    on a full cosine decay; the total actually run is recorded with the checkpoint, and passing it as
    ``steps`` on the same machine reproduces the schedule.
    """

    def __init__(self, seconds: float, calibrate: int = 20):
        if not seconds > 0:
            raise UserInputError(f"time budget must be > 0 seconds, got {seconds}")
        self.seconds, self.calibrate = float(seconds), max(1, int(calibrate))
        self.t_start = time.perf_counter()
        self.t_first: float | None = None
        self.first_step = 0
        self.done = False
        self.rate: float | None = None  # steps/s measured over the calibration steps

    def after_step(self, step: int, total: int) -> int | None:
        """Call after each step with the number of steps done; returns the new total once, else None."""
        if self.done:
            return None
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.first_step = now, step
            return None
        timed = step - self.first_step
        if timed < self.calibrate:
            return None
        self.done = True
        self.rate = rate = timed / (now - self.t_first)
        left = self.seconds - (now - self.t_start)
        return int(min(total, max(step + 1, step + rate * left)))


class EpisodeGroupedBatches(torch.utils.data.Sampler):
    """Batch indices for steps ``start..stop-1``, each item once per epoch, episodes decoded in groups.

    Video-backed datasets decode a whole episode per cache miss, so fully random batches would decode
    an episode for nearly every item. Each epoch shuffles the episodes (seeded by ``(seed, epoch)``),
    cuts them into groups of ``group`` episodes and shuffles the items within each group; batches are
    consecutive slices of that order, so a batch draws from at most two groups. The order is a pure
    function of (seed, step): resuming at a step continues the same stream.
    """

    def __init__(
        self, episode_ids: np.ndarray, batch_size: int, seed: int, start: int, stop: int, group: int
    ):
        self.episode_ids = np.asarray(episode_ids)
        self.batch_size, self.seed, self.start, self.stop, self.group = batch_size, seed, start, stop, group
        order = np.argsort(self.episode_ids, kind="stable")
        uniques, first = np.unique(self.episode_ids[order], return_index=True)
        self.members = np.split(order, first[1:])  # item indices of each episode
        self.num_episodes = len(uniques)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Item indices of ``epoch`` in training order, (N,)."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.num_episodes)
        parts = []
        for g in range(0, self.num_episodes, self.group):
            items = np.concatenate([self.members[e] for e in perm[g : g + self.group]])
            parts.append(rng.permutation(items))
        return np.concatenate(parts)

    def __iter__(self):
        n = len(self.episode_ids)
        epoch, pos = divmod(self.start * self.batch_size, n)
        order = self.epoch_order(epoch)
        i = self.start
        while i < self.stop:  # stop may shrink during the run (TimeBudget)
            i += 1
            batch = []
            while len(batch) < self.batch_size:
                take = order[pos : pos + self.batch_size - len(batch)]
                batch.extend(take.tolist())
                pos += len(take)
                if pos == n:
                    epoch, pos = epoch + 1, 0
                    order = self.epoch_order(epoch)
            yield batch


def episode_ids(dataset: Dataset) -> np.ndarray:
    """(N,) episode key of every item (``dataset.episode_of``), or one key per item without that method."""
    if not hasattr(dataset, "episode_of"):
        return np.arange(len(dataset))
    keys = [dataset.episode_of(i) for i in range(len(dataset))]
    lookup: dict[tuple, int] = {}
    return np.array([lookup.setdefault(k, len(lookup)) for k in keys], dtype=np.int64)


class WeightAverage:
    """Exponential moving average of ``source``'s floating parameters and buffers (Polyak averaging).

    ``update(step)`` after each optimiser step, with decay ``min(decay, (1 + step) / (10 + step))``, so the
    average follows the weights closely at the start and averages over about ``1 / (1 - decay)`` steps
    later. ``model`` holds the averaged weights (a copy, in eval mode; ``source`` is untouched).
    """

    def __init__(self, source: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise UserInputError(f"ema decay must be in (0, 1), e.g. 0.999, got {decay!r}")
        self.decay, self.source = decay, source
        self.model = copy.deepcopy(source).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move :attr:`model` towards ``source``'s weights after optimiser step ``step`` (0-based)."""
        d = min(self.decay, (1 + step) / (10 + step))
        avg = self.model.state_dict()
        for name, value in self.source.state_dict().items():
            if value.is_floating_point():
                avg[name].lerp_(value.detach(), 1.0 - d)
            else:
                avg[name].copy_(value)


@dataclass
class LoopSettings:
    """How one run of :class:`TrainingLoop` steps; ``steps`` is the upper bound under ``time_budget_s``."""

    steps: int
    batch_size: int
    warmup: int
    grad_clip: float
    save_every: int  # steps between saves (training state, loss curve, the caller's on_save); also at the end
    seed: int  # of the batch order (EpisodeGroupedBatches)
    num_workers: int = 0
    time_budget_s: float | None = None  # fit the step count to this many seconds (TimeBudget)


StepFn = Callable[[object, int, int], Mapping[str, torch.Tensor]]  # (batch, step, total) -> {"loss": ..., ...}


def _jsonable(value):
    return json.loads(json.dumps(value))


class TrainingLoop:
    """A resumable training run in ``workdir``; :attr:`state` is the training state it resumes from (or None).

    ``fingerprint``: the settings a resume must share with the interrupted run (JSON-like); a state written
    with other values is refused, naming them. ``title`` heads the loss curve, ``ylabel`` names its y axis.
    """

    def __init__(self, name: str, workdir: str | os.PathLike, fingerprint: Mapping, *, title: str | None = None,
                 ylabel: str = "loss"):
        self.name, self.workdir = name, Path(workdir)
        self.fingerprint = _jsonable(dict(fingerprint))
        self.title, self.ylabel = title or name, ylabel
        self.state_file = self.workdir / STATE
        self.state = self._read_state()

    def _read_state(self) -> dict | None:
        if not self.state_file.is_file():
            return None
        state = torch.load(self.state_file, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise UserInputError(f"{self.state_file} was written by an earlier version of the training loop and "
                                 "cannot be resumed; use a new --out (or delete the file to start over)")
        saved = state["fingerprint"]
        if saved != self.fingerprint:
            keys = sorted({*saved, *self.fingerprint})
            diff = ", ".join(f"{k}={saved.get(k)!r} (now {self.fingerprint.get(k)!r})" for k in keys
                             if saved.get(k) != self.fingerprint.get(k))
            raise UserInputError(f"{self.state_file} was written by a run with other settings: {diff}; resume "
                                 "with the same settings or use a new --out")
        return state

    def run(self, *, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer, step_fn: StepFn,
            dataset: Dataset, collate_fn: Callable[[list], object], settings: LoopSettings,
            average: WeightAverage | None = None, on_save: Callable[[int, int, list], None] | None = None,
            extra: Mapping | None = None, progress: bool = True) -> dict:
        """Train from :attr:`state` (or step 0) to ``settings.steps``; returns ``history`` (one dict per step:
        ``step``, the terms of ``step_fn``, ``lr`` of the first parameter group), ``steps_per_s`` (this run,
        excluding the first step), ``steps`` (the total, fitted to the time budget) and ``step`` (reached).

        ``modules`` are saved in the training state and their parameters' gradients clipped; the optimiser's
        parameter-group rates at entry are the base rates of the schedule. ``on_save(step, total, history)`` runs
        after each training state is written; ``extra`` (JSON-like) is stored in it (read back via :attr:`state`).
        """
        run = _Run(self, modules, optimizer, settings, average, on_save, extra)
        loader = DataLoader(dataset, batch_sampler=run.sampler(dataset), collate_fn=collate_fn,
                            num_workers=settings.num_workers, pin_memory=run.device_type == "cuda")
        batches = iter(loader)  # draws a worker base seed from torch's RNG: restore the RNG after it
        if self.state is not None:
            torch.set_rng_state(self.state["torch_rng"])
        from tqdm.auto import tqdm

        bar = tqdm(total=run.total, initial=run.step, desc=self.name, disable=not progress, dynamic_ncols=True)
        budget = TimeBudget(settings.time_budget_s) if settings.time_budget_s is not None else None
        for batch in batches:
            if run.step >= run.total:
                break
            run.train_step(step_fn, batch)
            bar.update(1)
            bar.set_postfix(loss=f"{run.history[-1]['loss']:.4f}")
            if budget is not None and (total := budget.after_step(run.step, run.total)) is not None:
                if total < run.total:  # a changed recipe: say so, not only through the bar's new total
                    bar.write(f"[train] {self.name}: the time budget of {budget.seconds / 60:.0f} min fits {total} "
                              f"of the {run.total} steps asked for (measured {budget.rate:.2f} steps/s); the "
                              f"schedule follows {total} (--steps {total} without the budget reproduces it)")
                run.total = run.batch_sampler.stop = bar.total = total
                bar.refresh()
            if run.step % settings.save_every == 0 or run.step == run.total:
                run.save()
                if not progress:  # a log line instead of the bar
                    print(f"[train] {self.name}: step {run.step}/{run.total}, loss {run.history[-1]['loss']:.4f}, "
                          f"{run.rate():.2f} steps/s", flush=True)
        bar.close()
        if run.step == run.start_step:  # nothing left to train: the outputs still follow this call's settings
            run.save()
        return {"history": run.history, "steps_per_s": run.rate(), "steps": run.total, "step": run.step}


class _Run:
    """The mutable state of one :meth:`TrainingLoop.run` call: step, history, total, timers."""

    def __init__(self, loop: TrainingLoop, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                 settings: LoopSettings, average: WeightAverage | None, on_save, extra: Mapping | None):
        self.loop, self.modules, self.optimizer, self.settings = loop, dict(modules), optimizer, settings
        self.average, self.on_save, self.extra = average, on_save, _jsonable(dict(extra or {}))
        self.params = list(chain.from_iterable(m.parameters() for m in self.modules.values()))
        self.device_type = self.params[0].device.type
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step, self.history, self.total = 0, [], settings.steps
        state = loop.state
        if state is not None:
            self._load(state)
        self.start_step, self.first_done = self.step, None

    def _load(self, state: dict) -> None:
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        self.optimizer.load_state_dict(state["optimizer"])
        saved_average = state.get("average")
        if saved_average is not None and self.average is None:
            raise UserInputError(f"{self.loop.state_file} was trained with a weight average (ema decay "
                                 f"{saved_average['decay']}); resume it with the same --ema or choose a new --out")
        if self.average is not None:  # a run that had none starts its average at the resumed weights
            source = saved_average["weights"] if saved_average is not None else self.average.source.state_dict()
            self.average.model.load_state_dict(source)
        self.step, self.history = state["step"], state["history"]

    def sampler(self, dataset: Dataset) -> EpisodeGroupedBatches:
        group = max(1, min(GROUP_EPISODES, getattr(dataset, "cache_episodes", 2 * GROUP_EPISODES) // 2))
        self.batch_sampler = EpisodeGroupedBatches(episode_ids(dataset), self.settings.batch_size,
                                                   self.settings.seed, self.step, self.total, group)
        return self.batch_sampler

    def train_step(self, step_fn: StepFn, batch) -> None:
        factor = lr_factor(self.step, self.settings.warmup, self.total)
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * factor
        terms = step_fn(batch, self.step, self.total)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.step)
        self.history.append({"step": self.step, **{k: float(v.detach()) for k, v in terms.items()},
                             "lr": self.optimizer.param_groups[0]["lr"]})
        self.step += 1
        if self.first_done is None:
            self.first_done = time.perf_counter()

    def rate(self) -> float:
        return steps_per_s(self.step - self.start_step - 1, self.first_done)

    def save(self) -> None:
        """Write the training state (atomically), then the loss curve, then call ``on_save``."""
        loop = self.loop
        loop.workdir.mkdir(parents=True, exist_ok=True)
        payload = {"format": STATE_FORMAT, "step": self.step, "total": self.total, "fingerprint": loop.fingerprint,
                   "history": self.history, "modules": {k: m.state_dict() for k, m in self.modules.items()},
                   "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                   "average": None if self.average is None else
                   {"decay": self.average.decay, "weights": self.average.model.state_dict()},
                   "extra": self.extra}
        tmp = loop.workdir / (STATE + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, loop.state_file)
        save_loss_plot(self.history, loop.workdir / PLOT, loop.title, loop.ylabel)
        if self.on_save is not None:
            self.on_save(self.step, self.total, self.history)


def save_loss_plot(history: Sequence[Mapping], file: str | os.PathLike, title: str, ylabel: str = "loss") -> None:
    """Plot ``history`` (one dict per step) to ``file`` (PNG, log y): the running mean (over 1/50 of the run) of
    every logged term but ``step`` and ``lr``, and ``loss`` per step, faint, behind its mean. Nothing is written
    without history."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])
    width = max(1, len(history) // 50)
    fig, ax = plt.subplots(figsize=(7, 4))
    if width > 1:
        ax.plot(steps, np.maximum([h["loss"] for h in history], 1e-8), lw=0.6, alpha=0.3, color="C0")
    for i, key in enumerate(k for k in history[0] if k not in ("step", "lr")):
        values = np.array([h[key] for h in history])
        smooth = np.convolve(values, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1:], np.maximum(smooth, 1e-8), lw=1.8 if key == "loss" else 1.0, color=f"C{i}",
                label=key if width == 1 else f"{key} (mean of {width})")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)
