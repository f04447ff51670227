"""Train the reference teacher by behaviour cloning of action chunks.

    actdistill train-teacher --data data/widowx data/google --out runs/teacher_small --profile small
    actdistill train-teacher --data data/* --out runs/teacher_full --profile full --device cuda --steps 60000

    from distill.train import train_teacher
    summary = train_teacher(["data/widowx"], "runs/teacher_small", profile="small", steps=2000)

AdamW with linear warm-up then cosine decay to 10% of the peak rate; L1 loss on the normalised K-step
chunk, masked where the chunk runs past the episode end; random-shift image augmentation (replicate
padding, then a random crop back to the original size, per camera and sample). Every ``ckpt_every``
steps and at the end the folder ``out`` receives the checkpoint (:mod:`distill.checkpoint`),
``training_state.pt`` (optimizer, scheduler, step, RNG, loss history), ``train_log.json`` and ``loss.png``.
Running again with the same ``out`` resumes from ``training_state.pt``. Batches and augmentations are
drawn from generators seeded by ``(seed, step)``, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from distill.checkpoint import CONFIG, WEIGHTS, check_device, file_hash, load_vla, save_checkpoint
from distill.tokenizer import WordTokenizer, split_words
from distill.vla import VLA, VLAConfig, teacher_config

STATE = "training_state.pt"
STATS_EPISODES = 64  # episodes read for statistics the dataset does not provide (proprio, ...)
STATS_ITEMS = 8192
GROUP_EPISODES = 16  # episodes per shuffling group (DemoDataset keeps 32 decoded episodes per process)


@dataclass
class TrainSettings:
    """Optimisation settings of a profile; any of them can be overridden in :func:`train_teacher`."""

    batch_size: int
    lr: float
    steps: int
    warmup: int
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    shift_pad: int = 6
    loss: str = "l1"
    ckpt_every: int = 1000
    ema: float = 0.0  # decay of the weight average that is saved as the checkpoint; 0: no average


# MSE by default: on the SIMPLER-style demonstrations an L1 teacher sat at the per-dimension median
# (zero motion) for 2,000 steps while MSE learned rotation and translation within 600 (measured,
# see results/checkpoints/README.md). L1's gradient is a sign, so the many near-zero targets of idle
# phases outvote the few large ones until the features can already tell them apart.
SNAPSHOTS = "snapshots"  # out/snapshots/step-N: checkpoints kept along the way (keep_every)
RAW = "raw"  # with an EMA, out/raw (and out/snapshots/step-N/raw) hold the un-averaged weights

TRAIN_PROFILES = {
    "small": TrainSettings(batch_size=32, lr=5e-4, steps=20000, warmup=500, ckpt_every=500, loss="mse"),
    "full": TrainSettings(batch_size=128, lr=3e-4, steps=60000, warmup=2000, ckpt_every=2500, loss="mse"),
}


class WeightAverage:
    """Exponential moving average of a model's floating parameters and buffers (Polyak averaging).

    ``update(step)`` after each optimiser step, with decay ``min(decay, (1 + step) / (10 + step))``, so the
    average follows the weights closely at the start and averages over about ``1 / (1 - decay)`` steps
    later. ``model`` holds the averaged weights (a copy; the trained model is untouched).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), e.g. 0.999, got {decay!r}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        avg = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                avg[name].lerp_(value.detach(), 1.0 - d)
            else:
                avg[name].copy_(value)


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
            raise ValueError(f"time budget must be > 0 seconds, got {seconds}")
        self.seconds, self.calibrate = float(seconds), max(1, int(calibrate))
        self.t_start = time.perf_counter()
        self.t_first: float | None = None
        self.first_step = 0
        self.done = False

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
        rate = timed / (now - self.t_first)
        left = self.seconds - (now - self.t_start)
        return int(min(total, max(step + 1, step + rate * left)))


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4 + stream)


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


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of (B, H, W, 3) uint8 by up to ``pad`` pixels (replicate padding, random crop).

    One gather for the whole batch (a per-image loop cost 512 small copies per batch of 256 on a GPU).
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


_BACKBONE_KEYS = {"num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
                  "intermediate_size": "intermediate_size"}  # teacher_config's size names -> backbone config keys


def _override_clash(cfg: VLAConfig, overrides: Mapping | None) -> dict[str, tuple]:
    """``{key: (held, asked)}`` for each ``teacher_config`` override that ``cfg`` does not already have."""
    clash = {}
    for key, asked in dict(overrides or {}).items():
        if key in _BACKBONE_KEYS:
            held = cfg.backbone.get(_BACKBONE_KEYS[key])
            if key == "num_kv_heads" and asked is None:  # None: one key/value head per attention head
                asked = cfg.backbone.get("num_attention_heads")
        elif hasattr(cfg, key):
            held = getattr(cfg, key)
        else:
            raise ValueError(f"unknown model override {key!r}; valid: {sorted({*_BACKBONE_KEYS, *cfg.to_dict()})}")
        if held != asked:
            clash[key] = (held, asked)
    return clash


def _init_from(init: str | Path, info: dict, model_overrides: Mapping | None, chunk: int) -> tuple[VLA, dict]:
    """The model of a fine-tuning run: ``init``'s weights, with its architecture, vocabulary and action /
    proprio normalisation (the weights were fitted to those statistics, so the new data's are not used).
    Raises ``ValueError`` where the new data does not fit the checkpoint."""
    if model_overrides:
        raise ValueError(f"--init takes the architecture of {init}; model overrides {dict(model_overrides)} conflict")
    model, config = load_vla(init)
    if model.config.chunk != chunk:
        raise ValueError(f"{init} predicts chunks of {model.config.chunk} actions, not {chunk}")
    known = set(model.config.vocab)
    unknown = sorted({w for text in info["instructions"] for w in split_words(text)} - known)
    if unknown:
        raise ValueError(f"the data's instructions use words {unknown} that {init}'s vocabulary lacks; "
                         "train from scratch (no --init) to build a new vocabulary")
    info = {**info, "action_stats": model.config.action_stats, "proprio_stats": model.config.proprio_stats,
            "init": {"path": str(init), "hash": file_hash(Path(init) / WEIGHTS),
                     "step": config.get("training", {}).get("step")}}
    return model, info


def dataset_stats(dataset: Dataset, episodes: np.ndarray, seed: int = 0) -> dict:
    """Instructions, suites, action and proprio statistics of ``dataset`` (a ``DemoDataset`` or same format).

    Uses ``dataset.instructions()``, ``dataset.action_stats()`` and ``dataset.proprio_stats()`` where they
    exist; otherwise reads every item of up to ``STATS_EPISODES`` episodes (chosen with ``seed``; whole
    episodes, so a video-backed dataset decodes each once). ``episodes`` is :func:`episode_ids`.
    """
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(int(episodes.max()) + 1)[:STATS_EPISODES]
    picks = np.flatnonzero(np.isin(episodes, chosen))[:STATS_ITEMS]
    items = [dataset[int(i)] for i in picks]

    def stats(values: torch.Tensor) -> dict[str, list[float]]:
        return {
            "mean": values.mean(0).tolist(),
            "std": values.std(0).tolist(),
            "min": values.min(0).values.tolist(),
            "max": values.max(0).values.tolist(),
        }

    def listed(result: Mapping) -> dict[str, list[float]]:
        return {k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in result.items()}

    if hasattr(dataset, "action_stats"):
        action_stats = listed(dataset.action_stats())
    else:
        action_stats = stats(
            torch.cat([torch.as_tensor(it["actions"])[torch.as_tensor(it["action_mask"])] for it in items])
        )
    if hasattr(dataset, "proprio_stats"):
        proprio_stats = listed(dataset.proprio_stats())
    else:
        proprio_stats = stats(
            torch.stack([torch.as_tensor(it["proprio"], dtype=torch.float32) for it in items])
        )
    if hasattr(dataset, "instructions"):
        instructions = sorted(dataset.instructions())
    else:
        instructions = sorted({it["instruction"] for it in items})
    folders = getattr(dataset, "folders", None)
    if folders is not None:
        suites = sorted({f.meta["suite"] for f in folders})
    else:
        suites = sorted({it["suite"] for it in items})
    return {
        "instructions": instructions,
        "suites": suites,
        "action_stats": action_stats,
        "proprio_stats": proprio_stats,
    }


LOSSES = ("l1", "mse")


def chunk_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Masked L1 or MSE between normalised chunks pred/target (B, K, 7); mask (B, K) bool marks real steps."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; valid losses: {', '.join(LOSSES)}")
    diff = pred - target
    err = (diff.abs() if kind == "l1" else diff.square()) * mask[..., None]  # (B, K, 7)
    return err.sum() / (mask.sum() * pred.shape[-1]).clamp_min(1)


class ItemCollate:
    """DataLoader collate: dataset items -> CPU tensors (model inputs, raw action chunks (B, K, 7), masks
    (B, K), sample ids), built in the loader workers (a GPU run was bound by this in the main process)."""

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


def _open_dataset(data: Sequence[str | os.PathLike] | Dataset, chunk: int) -> tuple[Dataset, list[str]]:
    if isinstance(data, Dataset):
        return data, [str(d) for d in getattr(data, "dirs", [])]
    from tasks.datasets import DemoDataset

    dirs = [str(d) for d in data]
    missing = [d for d in dirs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"demonstration folder(s) not found: {', '.join(missing)}")
    return DemoDataset(dirs, chunk=chunk), dirs


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (
            decay if p.ndim >= 2 and "embed" not in name and name not in ("action_queries",) else no_decay
        ).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_loss_plot(history: list[dict], file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="per step")
    if len(loss) >= 20:
        width = max(5, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1 :], smooth, lw=1.5, label=f"mean of {width}")
    ax.set_xlabel("step")
    ax.set_ylabel("L1 loss (normalised actions)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def train_teacher(
    data: Sequence[str | os.PathLike] | Dataset,
    out: str | os.PathLike,
    *,
    profile: str = "small",
    device: str = "cpu",
    steps: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    ckpt_every: int | None = None,
    loss: str | None = None,
    num_workers: int = 0,
    chunk: int = 8,
    model_overrides: Mapping | None = None,
    progress: bool = True,
    time_budget_s: float | None = None,
    init: str | Path | None = None,
    keep_every: int | None = None,
    ema: float | None = None,
) -> dict:
    """Train (or resume training) the reference teacher on ``data``; checkpoints go to the folder ``out``.

    ``data``: demonstration folders (read with ``tasks.datasets.DemoDataset``) or a dataset with the same
    item format. ``model_overrides`` change the profile's model sizes
    (see :func:`distill.vla.teacher_config`). ``time_budget_s`` fits the step count to that many seconds
    (:class:`TimeBudget`; the profile's or given ``steps`` is then the upper bound). ``init``: start a new
    run from that checkpoint's weights, architecture, vocabulary and normalisation, with a fresh optimiser
    and schedule (fine-tuning). ``keep_every``: also keep every such step's checkpoint (a multiple of
    ``ckpt_every``) as ``out/snapshots/step-N``. ``ema``: a decay in (0, 1) (e.g. 0.999) saves the
    exponential moving average of the weights (:class:`WeightAverage`) as the checkpoint, and the trained
    weights beside it in ``out/raw`` (and ``step-N/raw``); 0 or ``None`` (default) saves the trained weights.
    Returns a summary dict: ``out``, ``step``, ``loss`` (mean of the last 50 steps), ``steps_per_s``
    (this run, excluding the first step), ``batch_size``, ``num_params``.
    """
    if profile not in TRAIN_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(TRAIN_PROFILES)}")
    if keep_every is not None and keep_every < 1:
        raise ValueError(f"keep_every must be >= 1 step, got {keep_every}")
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ValueError(f"ema decay must be 0 (off) or in (0, 1), e.g. 0.999; got {ema!r}")
    check_device(device)
    out = Path(out)
    dataset, dirs = _open_dataset(data, chunk)
    episodes = episode_ids(dataset)
    state_file = out / STATE
    if state_file.is_file():
        model, _ = load_vla(out)
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if state["profile"] != profile:
            raise ValueError(
                f"{out} was trained with profile {state['profile']!r}, not {profile!r}; "
                "pass the same --profile or a new --out"
            )
        if state["dirs"] != dirs:
            raise ValueError(
                f"{out} was trained on {state['dirs']}, not {dirs}; pass the same --data or a new --out"
            )
        clash = _override_clash(model.config, model_overrides)
        if clash:
            raise ValueError(f"{out} holds a model with {', '.join(f'{k}={h!r}' for k, (h, _) in clash.items())}; "
                             f"resume without changing it, or pass a new --out for "
                             f"{ {k: a for k, (_, a) in clash.items()} }")
        settings = TrainSettings(**state["settings"])
        info = state["data_info"]
        seed = state["seed"]
    elif (out / WEIGHTS).exists() or (out / CONFIG).exists():
        raise ValueError(f"{out} holds a checkpoint but no {STATE} to resume from; choose a new --out")
    else:
        state = None
        settings = TrainSettings(**asdict(TRAIN_PROFILES[profile]))
        info = dataset_stats(dataset, episodes, seed)
        if init is not None:
            model, info = _init_from(init, info, model_overrides, chunk)
        else:
            vocab = WordTokenizer.build(info["instructions"]).vocab
            torch.manual_seed(seed)
            model = VLA(
                teacher_config(
                    profile,
                    vocab,
                    info["action_stats"],
                    info["proprio_stats"],
                    chunk=chunk,
                    **dict(model_overrides or {}),
                )
            )
    for key, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("lr", lr),
        ("warmup", warmup),
        ("ckpt_every", ckpt_every),
        ("loss", loss),
        ("ema", ema),
    ):
        if value is not None:
            setattr(settings, key, value)

    if settings.loss not in LOSSES:
        raise ValueError(f"unknown loss {settings.loss!r}; valid losses: {', '.join(LOSSES)}")
    average = None
    if settings.ema:
        average = WeightAverage(model, settings.ema)  # on resume, ``model`` was loaded from the average
        if state is not None and "raw_model" in state:
            model.load_state_dict(state["raw_model"])
        average.model.to(device)
    elif state is not None and "raw_model" in state:
        raise ValueError(f"{out} was trained with an EMA (decay {state['settings'].get('ema')}); "
                         "resume it with the same --ema or choose a new --out")
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        _param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.95)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, settings.warmup, settings.steps)
    )
    step, history = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for group in optimizer.param_groups:  # the schedule follows the (possibly new) total steps
            group["lr"] = settings.lr * lr_factor(state["step"], settings.warmup, settings.steps)
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])

    num_params = sum(p.numel() for p in model.parameters())
    meta = {
        "training": {"profile": profile, "seed": seed, **asdict(settings), "num_params": num_params,
                     **({"time_budget_s": time_budget_s} if time_budget_s is not None else {}),
                     **({"init": info["init"]} if "init" in info else {})},
        "data": {
            "dirs": dirs,
            "suites": info["suites"],
            "instructions": info["instructions"],
            "num_samples": len(dataset),
            "dataset": _dataset_meta(dataset),
        },
    }

    def save_weights(path: Path) -> None:  # the average where there is one, and the trained weights
        save_checkpoint(path, average.model if average else model, meta)
        if average:
            save_checkpoint(path / RAW, model, meta)

    def checkpoint() -> None:
        recent = [h["loss"] for h in history[-50:]]
        meta["training"].update(step=step, loss=float(np.mean(recent)) if recent else None)
        save_weights(out)
        payload = {
            "step": step,
            "profile": profile,
            "seed": seed,
            "dirs": dirs,
            "settings": asdict(settings),
            "data_info": info,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
            "torch_rng": torch.get_rng_state(),
            **({"raw_model": model.state_dict()} if average else {}),
        }
        torch.save(payload, out / (STATE + ".tmp"))
        os.replace(out / (STATE + ".tmp"), state_file)
        (out / "train_log.json").write_text(json.dumps({"meta": meta, "history": history}))
        if history:
            _save_loss_plot(history, out / "loss.png")

    out.mkdir(parents=True, exist_ok=True)
    group = max(1, min(GROUP_EPISODES, getattr(dataset, "cache_episodes", 2 * GROUP_EPISODES) // 2))
    sampler = EpisodeGroupedBatches(episodes, settings.batch_size, seed, step, settings.steps, group)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=ItemCollate(model),
                        num_workers=num_workers, pin_memory=device.startswith("cuda"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    from tqdm.auto import tqdm

    bar = tqdm(
        total=settings.steps,
        initial=step,
        disable=not progress,
        desc=f"teacher[{profile}]",
        dynamic_ncols=True,
    )
    first_done, start_step = None, step
    budget = TimeBudget(time_budget_s) if time_budget_s is not None else None
    for cpu in loader:
        if step >= settings.steps:
            break
        aug = step_generator(seed, step, 1)
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu["inputs"].items()}
        actions, mask = cpu["actions"], cpu["mask"]
        for cam in model.config.cameras:
            batch[cam] = random_shift(batch[cam], settings.shift_pad, aug)
        target = model.normalize_actions(actions.to(device))
        mask = mask.to(device)  # (B, K)
        with autocast:
            pred = model(batch)  # (B, K, 7)
        loss = chunk_loss(pred.float(), target.float(), mask, settings.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        if average:
            average.update(model, step)
        loss_value = loss.item()
        history.append({"step": step, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"]})
        step += 1
        if first_done is None:
            first_done = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if budget is not None and (total := budget.after_step(step, settings.steps)) is not None:
            settings.steps = sampler.stop = total
            meta["training"]["steps"] = total
            bar.total = total
            bar.refresh()
        if step % settings.ckpt_every == 0 or step == settings.steps:
            checkpoint()
            if keep_every and step % keep_every == 0 and step != settings.steps:
                save_weights(out / SNAPSHOTS / f"step-{step}")
            if not progress:  # a log line instead of the bar
                print(f"[teacher] step {step}/{settings.steps}, loss {loss_value:.4f}, "
                      f"{steps_per_s(step - start_step - 1, first_done):.2f} steps/s", flush=True)
    bar.close()
    if step == start_step:
        checkpoint()
    rate = steps_per_s(step - start_step - 1, first_done)
    recent = [h["loss"] for h in history[-50:]]
    return {
        "out": str(out),
        "step": step,
        "loss": float(np.mean(recent)) if recent else None,
        "steps_per_s": rate,
        "batch_size": settings.batch_size,
        "num_params": num_params,
    }


def _dataset_meta(dataset: Dataset) -> list[dict] | None:
    """``meta.json`` (ids, suite, variant, counts, versions) of each folder of a ``DemoDataset``."""
    folders = getattr(dataset, "folders", None)
    if folders is None:
        return None
    return [{"path": str(f.path), "meta": json.loads(json.dumps(f.meta, default=str))} for f in folders]
