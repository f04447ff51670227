"""Train the reference teacher by behaviour cloning of action chunks.

    actdistill train-teacher --data data/widowx data/google --out runs/teacher_small --profile small
    actdistill train-teacher --data data/* --out runs/teacher_full --profile full --device cuda --steps 60000

    from distill.train import train_teacher
    summary = train_teacher(["data/widowx"], "runs/teacher_small", profile="small", steps=2000)

AdamW (betas 0.9, 0.95) on the masked MSE (or L1) of the normalised K-step chunk, masked where the chunk
runs past the episode end; random-shift image augmentation (replicate padding, then a random crop back to
the original size, per camera and sample). The loop itself (batches, schedule, clipping, time budget, weight
average, resume) is :class:`distill.loop.TrainingLoop`. Every ``ckpt_every`` steps and at the end the folder
``out`` receives the checkpoint (:mod:`distill.checkpoint`), ``training_state.pt``, ``train_log.json`` and
``loss.png``. Running again with the same ``out`` resumes from ``training_state.pt``, exactly: batches and
augmentations are drawn from generators seeded by ``(seed, step)``.

Privileged auxiliary supervision (``aux_targets``, DESIGN.md "The reference teacher"): an aux head on the vision
tokens after the last decoder layer (:class:`distill.vla.AuxHead`) predicts the simulator's ``expert_target``
and/or ``objects`` recorded with the demonstrations, and ``aux_weight`` times :func:`aux_losses` joins the chunk
loss. The head lives in the training state only: every saved ``model.safetensors`` (checkpoint, ``raw``,
snapshots) is :meth:`distill.vla.VLA.export`, a plain VLA. ``proprio_dropout`` sets, per sample and with that
probability, the normalised hand position (proprio dims 0-2) to 0 during training; the model option
``drop_hand_position`` does so always, inference included.

    actdistill train-teacher --data data/simpler --out runs/teacher_aux --aux-targets expert_target,objects
    actdistill train-teacher --data data/simpler --out runs/pg_teacher --init hf:/models/paligemma-3b-pt-224 \
        --device cuda --lr 5e-5   # a real VLM backbone (distill.hf_vla): action head trained, the rest fine-tuned
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from distill.checkpoint import CONFIG, WEIGHTS, check_device, file_hash, load_teacher, save_checkpoint
from distill.data import ItemCollate, collate, dataset_dirs, open_dataset, random_shift, step_generator
from distill.loop import LoopSettings, TrainingLoop, WeightAverage, episode_ids
from distill.tokenizer import WordTokenizer, split_words
from distill.vla import HAND_POSITION, POSITION_SCALE, VLA, VLAConfig, aux_target_names, teacher_config
from tasks.errors import ExistingOutputError, UserInputError

STATS_EPISODES = 64  # episodes read for statistics the dataset does not provide (proprio, ...)
STATS_ITEMS = 8192
SNAPSHOTS = "snapshots"  # out/snapshots/step-N: checkpoints kept along the way (keep_every)
RAW = "raw"  # with an EMA, out/raw (and out/snapshots/step-N/raw) hold the un-averaged weights


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
    # MSE: L1's gradient is a sign, so the many near-zero targets of idle phases outvote the few large ones
    # and an L1 teacher can sit at the per-dimension median (zero motion) long after MSE moves.
    loss: str = "mse"
    ckpt_every: int = 1000
    ema: float = 0.0  # decay of the weight average that is saved as the checkpoint; 0: no average
    aux_weight: float = 0.0  # weight of the aux loss (aux_losses) in the total; > 0 exactly when aux targets
    proprio_dropout: float = 0.0  # per-sample probability of hiding the hand position (proprio dims 0-2)


TRAIN_PROFILES = {
    "small": TrainSettings(batch_size=32, lr=5e-4, steps=20000, warmup=500, ckpt_every=500),
    "full": TrainSettings(batch_size=128, lr=3e-4, steps=60000, warmup=2000, ckpt_every=2500),
}
LOSSES = ("l1", "mse")
AUX_WEIGHT = 0.1  # default aux_weight of a run with aux targets


def chunk_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Masked L1 or MSE between normalised chunks pred/target (B, K, 7); mask (B, K) bool marks real steps."""
    if kind not in LOSSES:
        raise UserInputError(f"unknown loss {kind!r}; valid losses: {', '.join(LOSSES)}")
    diff = pred - target
    err = (diff.abs() if kind == "l1" else diff.square()) * mask[..., None]  # (B, K, 7)
    return err.sum() / (mask.sum() * pred.shape[-1]).clamp_min(1)


def aux_losses(pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One scalar loss per aux target of ``pred`` (from :meth:`distill.vla.VLA.aux_predict`) against the
    privileged fields ``target`` (``tasks.base.PRIVILEGED_SHAPES``, metres). Positions are compared in
    decimetres (``distill.vla.POSITION_SCALE``: a 1 cm error costs 0.01), where they are O(1) like the
    normalised actions.

    ``expert_target``: pred (B, 5), target (B, 5) = waypoint minus hand (3), gripper command in {-1, +1}, phase
    in [0, 1]; the loss is the MSE of the three positions (mean over them) + the binary cross-entropy of the
    gripper logit against command > 0 + the MSE of the phase. ``objects``: pred (B, 12, 3), target (B, 12, 4) =
    position minus hand (3) and valid flag; the MSE of the positions of the valid entities only.
    """
    losses = {}
    if "expert_target" in pred:
        p, t = pred["expert_target"].float(), target["expert_target"].float()  # (B, 5) each
        position = (p[:, :3] - t[:, :3] * POSITION_SCALE).square().mean()
        grip = F.binary_cross_entropy_with_logits(p[:, 3], (t[:, 3] > 0).float())
        losses["expert_target"] = position + grip + (p[:, 4] - t[:, 4]).square().mean()
    if "objects" in pred:
        p, t = pred["objects"].float(), target["objects"].float()  # (B, E, 3), (B, E, 4)
        valid = (t[..., 3] > 0.5).float()  # (B, E)
        err = (p - t[..., :3] * POSITION_SCALE).square() * valid[..., None]  # (B, E, 3)
        losses["objects"] = err.sum() / (3 * valid.sum()).clamp_min(1)
    return losses


def hide_hand_position(proprio: torch.Tensor, mean: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Proprio dropout: raw ``proprio`` (B, 8) with the hand position (dims 0-2) of each row set, with probability
    ``p`` (drawn from ``generator``, a CPU generator), to the normalisation ``mean`` (8,), so the model's
    normalised input there is exactly 0 (as with ``VLAConfig.drop_hand_position``). Returns a new (B, 8)."""
    drop = (torch.rand(proprio.shape[0], generator=generator) < p).to(proprio.device)  # (B,)
    hand = torch.zeros(proprio.shape[1], dtype=torch.bool, device=proprio.device)
    hand[HAND_POSITION] = True
    return torch.where(drop[:, None] & hand, mean.to(proprio.dtype), proprio)  # (B, 8)


class PrivilegedCollate(ItemCollate):
    """:class:`distill.data.ItemCollate` plus ``"privileged"``: the model's aux-target fields of every item,
    stacked ({"expert_target": (B, 5), "objects": (B, 12, 4)} float32). Raises ``UserInputError`` naming the
    sample and the field for an item without one."""

    def __call__(self, items: list) -> dict:
        cpu = super().__call__(items)
        for it in items:
            missing = [name for name in self.config.aux_targets if it.get(name) is None]
            if missing:
                raise UserInputError(f"sample {int(it['sample_id'])} ({it.get('suite')}/{it.get('task')}) has no "
                                     f"privileged {missing[0]!r}, which aux target {missing[0]!r} needs; train on "
                                     "demonstrations recorded with it or drop that aux target")
        cpu["privileged"] = {name: torch.stack([torch.as_tensor(it[name], dtype=torch.float32) for it in items])
                             for name in self.config.aux_targets}
        return cpu


def check_privileged(dataset: Dataset, targets: Sequence[str]) -> None:
    """Raise ``UserInputError`` naming each demonstration folder of ``dataset`` (a ``DemoDataset``; any other
    dataset: its first item) that lacks a privileged field one of ``targets`` needs."""
    if not targets:
        return
    folders = getattr(dataset, "folders", None)
    if folders is not None:
        lacking = [(f.path, [t for t in targets if t not in f.privileged]) for f in folders]
    else:
        first = dataset[0]
        lacking = [(f"{type(dataset).__name__} (item 0)", [t for t in targets if first.get(t) is None])]
    lacking = [(where, names) for where, names in lacking if names]
    if lacking:
        listed = "; ".join(f"{where} lacks {', '.join(map(repr, names))}" for where, names in lacking)
        raise UserInputError(f"aux targets {list(targets)} need the privileged fields recorded with the "
                             f"demonstrations (SIMPLER-style experts record them): {listed}; record the data again "
                             "or drop --aux-targets")


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
            raise UserInputError(f"unknown model override {key!r}; valid: {sorted({*_BACKBONE_KEYS, *cfg.to_dict()})}")
        if held != asked:
            clash[key] = (held, asked)
    return clash


def _init_from(init: str | Path, info: dict, model_overrides: Mapping | None, chunk: int) -> tuple[VLA, dict]:
    """The model of a fine-tuning run: ``init``'s weights, with its architecture, vocabulary and action /
    proprio normalisation (the weights were fitted to those statistics, so the new data's are not used).
    ``init`` may also be ``hf:PATH``, a raw ``transformers`` VLM folder (:class:`distill.hf_vla.HFVLA`): its
    weights, a fresh action head and the new data's statistics. Raises ``ValueError`` where the new data does not
    fit the checkpoint."""
    if model_overrides:
        raise UserInputError(f"--init takes the architecture of {init}; model overrides {dict(model_overrides)} conflict")
    if str(init).startswith("hf:"):
        from distill.hf_vla import HFVLA, parse_hf_spec

        folder = parse_hf_spec(str(init))
        model = HFVLA.from_pretrained(folder, action_stats=info["action_stats"], proprio_stats=info["proprio_stats"],
                                      instructions=info["instructions"], chunk=chunk)
        return model, {**info, "init": {"path": str(init), "hf_folder": str(folder)}}
    model, config = load_teacher(init)
    if model.config.chunk != chunk:
        raise UserInputError(f"{init} predicts chunks of {model.config.chunk} actions, not {chunk}")
    known = set(model.config.vocab)
    words = {w for text in info["instructions"] for w in split_words(text)}
    unknown = sorted(words - known) if isinstance(model.tokenizer, WordTokenizer) else []
    if unknown:
        raise UserInputError(f"the data's instructions use words {unknown} that {init}'s vocabulary lacks; "
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


def _dataset_meta(dataset: Dataset) -> list[dict] | None:
    """``meta.json`` (ids, suite, variant, counts, versions) of each folder of a ``DemoDataset``."""
    folders = getattr(dataset, "folders", None)
    if folders is None:
        return None
    return [{"path": str(f.path), "meta": json.loads(json.dumps(f.meta, default=str))} for f in folders]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (
            decay if p.ndim >= 2 and "embed" not in name and name not in ("action_queries",) else no_decay
        ).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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
    aux_targets: Sequence[str] | None = None,
    aux_weight: float | None = None,
    proprio_dropout: float | None = None,
) -> dict:
    """Train (or resume training) the reference teacher on ``data``; checkpoints go to the folder ``out``.

    ``data``: demonstration folders (read with ``tasks.datasets.DemoDataset``) or a dataset with the same
    item format. ``steps``, ``batch_size``, ``lr``, ``warmup``, ``ckpt_every``, ``loss`` (``"mse"`` or
    ``"l1"``) and ``ema`` override the profile's :class:`TrainSettings` (on a resume, the run's).
    ``model_overrides`` change the profile's model sizes (see :func:`distill.vla.teacher_config`).
    ``time_budget_s`` fits the step count to that many seconds (:class:`distill.loop.TimeBudget`; the
    profile's or given ``steps`` is then the upper bound). ``init``: start a new run from that checkpoint's
    weights, architecture, vocabulary and normalisation, with a fresh optimiser and schedule (fine-tuning).
    ``keep_every``: also keep every such step's checkpoint (a multiple of ``ckpt_every``) as
    ``out/snapshots/step-N``. ``ema``: a decay in (0, 1) (e.g. 0.999) saves the exponential moving average of
    the weights (:class:`distill.loop.WeightAverage`) as the checkpoint, and the trained weights beside it in
    ``out/raw`` (and ``step-N/raw``); 0 or ``None`` (default) saves the trained weights.
    ``aux_targets``: names of :data:`distill.vla.AUX_TARGETS` (``"expert_target"``, ``"objects"``) to train an
    aux head on (the data must carry those privileged fields); the loss becomes chunk loss + ``aux_weight``
    (default :data:`AUX_WEIGHT`) x the sum of :func:`aux_losses`, and the history logs ``chunk_loss``,
    ``aux_loss`` and each ``aux_<target>`` beside ``loss``. Saved checkpoints never hold the head; a resume keeps
    it (``None``: the run's targets). ``proprio_dropout``: probability in [0, 1] per sample and step of hiding
    the hand position (:func:`hide_hand_position`; 0, the default, changes nothing).
    Returns a summary dict: ``out``, ``step``, ``loss`` (mean chunk loss of the last 50 steps), ``aux_loss``
    (the same mean, with aux targets), ``steps_per_s`` (this run, excluding the first step), ``batch_size``,
    ``num_params`` (of the saved model: without the aux head).
    """
    _check_options(profile, keep_every, ema, aux_targets, aux_weight, proprio_dropout, model_overrides)
    check_device(device)
    out = Path(out)
    dataset, dirs = open_dataset(data, chunk), dataset_dirs(data)
    loop = TrainingLoop(f"teacher[{profile}]", out, {"profile": profile, "dirs": dirs})
    model, settings, info, seed = _start(loop, out, dataset, profile, seed, chunk, model_overrides, init,
                                         aux_targets)
    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "ckpt_every": ckpt_every,
             "loss": loss, "ema": ema, "aux_weight": aux_weight, "proprio_dropout": proprio_dropout}
    for key, value in given.items():
        if value is not None:
            setattr(settings, key, value)
    if settings.loss not in LOSSES:
        raise UserInputError(f"unknown loss {settings.loss!r}; valid losses: {', '.join(LOSSES)}")
    targets = model.config.aux_targets
    if targets and not settings.aux_weight > 0:
        raise UserInputError(f"aux_weight must be > 0 with aux targets {targets}, got {settings.aux_weight}; "
                             f"default {AUX_WEIGHT}")
    if not targets and settings.aux_weight:
        raise UserInputError(f"aux_weight {settings.aux_weight} weighs an aux loss, but the run has no aux targets; "
                             "give aux targets (valid: expert_target, objects) or no aux_weight")
    loop.ylabel = f"{settings.loss.upper()} loss (normalised action chunk)" + (
        f" + {settings.aux_weight:g} x aux loss" if targets else "")
    model.to(device).train()
    average = WeightAverage(model, settings.ema) if settings.ema else None
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.95))
    num_params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("aux_head."))
    meta = _teacher_meta(profile, seed, settings, num_params, time_budget_s, info, dirs, dataset, targets)
    result = loop.run(
        modules={"model": model}, optimizer=optimizer, step_fn=_teacher_step(model, settings, seed, device),
        dataset=dataset, collate_fn=PrivilegedCollate(model) if targets else ItemCollate(model), average=average,
        progress=progress,
        settings=LoopSettings(steps=settings.steps, batch_size=settings.batch_size, warmup=settings.warmup,
                              grad_clip=settings.grad_clip, save_every=settings.ckpt_every, seed=seed,
                              num_workers=num_workers, time_budget_s=time_budget_s),
        on_save=_TeacherOutputs(out, model, average, meta, keep_every),
        extra={"settings": asdict(settings), "data_info": info, "seed": seed, "aux_targets": targets})
    history = result["history"][-50:]
    summary = {"out": str(out), "step": result["step"], "loss": _recent_mean(history, "chunk_loss"),
               "steps_per_s": result["steps_per_s"], "batch_size": settings.batch_size, "num_params": num_params}
    return {**summary, "aux_loss": _recent_mean(history, "aux_loss")} if targets else summary


def _recent_mean(history: Sequence[Mapping], key: str) -> float | None:
    """Mean of ``key`` over ``history`` (``"loss"`` where a step lacks it: runs without aux targets log only the
    chunk loss, as ``loss``); None without history."""
    values = [h.get(key, h["loss"]) for h in history]
    return float(np.mean(values)) if values else None


def _check_options(profile: str, keep_every: int | None, ema: float | None, aux_targets: Sequence[str] | None,
                   aux_weight: float | None, proprio_dropout: float | None, model_overrides: Mapping | None) -> None:
    if profile not in TRAIN_PROFILES:
        raise UserInputError(f"unknown profile {profile!r}; valid profiles: {', '.join(TRAIN_PROFILES)}")
    if keep_every is not None and keep_every < 1:
        raise UserInputError(f"keep_every must be >= 1 step, got {keep_every}")
    if ema is not None and not 0.0 <= ema < 1.0:
        raise UserInputError(f"ema decay must be 0 (off) or in (0, 1), e.g. 0.999; got {ema!r}")
    if aux_targets is not None:
        aux_target_names(aux_targets)
    if "aux_targets" in dict(model_overrides or {}):
        raise UserInputError("give aux targets as train_teacher's aux_targets (--aux-targets), not as a model "
                             "override: they are trained, then dropped from the saved model")
    if aux_weight is not None and not (np.isfinite(aux_weight) and aux_weight > 0):
        raise UserInputError(f"aux_weight must be a finite number > 0 (no aux loss: no aux targets), got {aux_weight!r}")
    if proprio_dropout is not None and not 0.0 <= proprio_dropout <= 1.0:
        raise UserInputError(f"proprio_dropout is a probability in [0, 1] (0: off), got {proprio_dropout!r}")


def _start(loop: TrainingLoop, out: Path, dataset: Dataset, profile: str, seed: int, chunk: int,
           model_overrides: Mapping | None, init: str | Path | None,
           aux_targets: Sequence[str] | None) -> tuple[VLA, TrainSettings, dict, int]:
    """The model (float32, on the CPU; a resumed one gets its weights from the loop), settings, data
    statistics and seed of the run: those of the run being resumed (``loop.state``), or new ones. The model has
    the aux head of the run's aux targets (the saved checkpoint has none: a resumed head comes from the state)."""
    if loop.state is not None:
        model, _ = load_teacher(out)
        extra = loop.state["extra"]
        held = extra.get("aux_targets", [])
        clash = _override_clash(model.config, model_overrides)
        asked = held if aux_targets is None else aux_target_names(aux_targets)
        if asked != held:
            clash["aux_targets"] = (held, asked)
        if clash:
            raise UserInputError(f"{out} holds a model with {', '.join(f'{k}={h!r}' for k, (h, _) in clash.items())}; "
                                 f"resume without changing it, or pass a new --out for "
                                 f"{ {k: a for k, (_, a) in clash.items()} }")
        check_privileged(dataset, held)
        settings = TrainSettings(**{**extra["settings"], "steps": loop.state["total"]})
        return (model.with_aux_targets(held) if held else model), settings, extra["data_info"], extra["seed"]
    if (out / WEIGHTS).exists() or (out / CONFIG).exists():
        raise ExistingOutputError(f"{out} holds a checkpoint but no {loop.state_file.name} to resume from; "
                                  "choose a new --out")
    targets = aux_target_names(aux_targets or [])
    check_privileged(dataset, targets)
    settings = TrainSettings(**{**asdict(TRAIN_PROFILES[profile]), "aux_weight": AUX_WEIGHT if targets else 0.0})
    info = dataset_stats(dataset, episode_ids(dataset), seed)
    if init is not None:
        model, info = _init_from(init, info, model_overrides, chunk)
        if targets and not isinstance(model, VLA):
            raise UserInputError(f"aux targets {targets} need the reference VLA's aux head; {init} is an HF VLM "
                                 "backbone: train it without --aux-targets")
        if targets:
            torch.manual_seed(seed)  # the fresh aux head's initialisation
            model = model.with_aux_targets(targets)
        return model, settings, info, seed
    torch.manual_seed(seed)
    config = teacher_config(profile, WordTokenizer.build(info["instructions"]).vocab, info["action_stats"],
                            info["proprio_stats"], chunk=chunk, aux_targets=targets, **dict(model_overrides or {}))
    return VLA(config), settings, info, seed


def _teacher_meta(profile: str, seed: int, settings: TrainSettings, num_params: int, time_budget_s: float | None,
                  info: dict, dirs: list[str], dataset: Dataset, aux_targets: list[str]) -> dict:
    """The ``training`` and ``data`` sections of the teacher checkpoint's config.json (``training`` records the
    aux targets the run trained with, which the saved model's own config no longer has)."""
    training = {"profile": profile, "seed": seed, **asdict(settings), "num_params": num_params,
                **({"time_budget_s": time_budget_s} if time_budget_s is not None else {}),
                **({"init": info["init"]} if "init" in info else {}),
                **({"aux_targets": aux_targets} if aux_targets else {})}
    data = {"dirs": dirs, "suites": info["suites"], "instructions": info["instructions"],
            "num_samples": len(dataset), "dataset": _dataset_meta(dataset)}
    return {"training": training, "data": data}


def _teacher_step(model: VLA, settings: TrainSettings, seed: int, device: str):
    """The loop's step function: shifted images, proprio dropout, the chunk forward (bfloat16 autocast on CUDA),
    the loss; with aux targets also the aux head's prediction and loss."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))
    targets = model.config.aux_targets

    def step_fn(cpu: dict, step: int, total: int) -> dict[str, torch.Tensor]:
        batch = collate(model, cpu)
        aug = step_generator(seed, step, 1)
        for cam in model.config.cameras:
            batch.inputs[cam] = random_shift(batch.inputs[cam], settings.shift_pad, aug)
        if settings.proprio_dropout:  # drawn after the shifts from the same generator: a resume draws it again
            batch.inputs["proprio"] = hide_hand_position(batch.inputs["proprio"], model.proprio_mean,
                                                         settings.proprio_dropout, aug)
        if not targets:
            with autocast:
                pred = model(batch.inputs)  # (B, K, 7)
            return {"loss": chunk_loss(pred.float(), batch.actions.float(), batch.mask, settings.loss)}
        with autocast:
            pred, aux_pred = model.forward_with_aux(batch.inputs)  # (B, K, 7), {target: (B, ...)}
        chunk = chunk_loss(pred.float(), batch.actions.float(), batch.mask, settings.loss)
        privileged = {k: v.to(batch.actions.device) for k, v in cpu["privileged"].items()}
        terms = aux_losses(aux_pred, privileged)
        aux = sum(terms.values())
        return {"loss": chunk + settings.aux_weight * aux, "chunk_loss": chunk, "aux_loss": aux,
                **{f"aux_{name}": value for name, value in terms.items()}}

    return step_fn


class _TeacherOutputs:
    """The loop's ``on_save``: the checkpoint (the average where there is one, the trained weights in
    ``raw``), ``train_log.json`` and, every ``keep_every`` steps, a snapshot. Every saved model is
    :meth:`distill.vla.VLA.export`: a plain VLA, without the aux head the training state keeps."""

    def __init__(self, out: Path, model: VLA, average: WeightAverage | None, meta: dict, keep_every: int | None):
        self.out, self.model, self.average, self.meta, self.keep_every = out, model, average, meta, keep_every

    def exported(self) -> list[tuple[str, VLA]]:
        """``(sub-folder, model)`` of each saved model: ``""`` the checkpoint, ``RAW`` the trained weights."""
        if self.average is None:
            return [("", self.model.export())]
        return [("", self.average.model.export()), (RAW, self.model.export())]

    def save_weights(self, path: Path, models: list[tuple[str, VLA]]) -> None:
        for sub, model in models:
            save_checkpoint(path / sub, model, self.meta)

    def __call__(self, step: int, total: int, history: list[dict]) -> None:
        self.meta["training"].update(step=step, steps=total, loss=_recent_mean(history[-50:], "chunk_loss"))
        models = self.exported()
        self.save_weights(self.out, models)
        (self.out / "train_log.json").write_text(json.dumps({"meta": self.meta, "history": history}))
        if self.keep_every and step % self.keep_every == 0 and step != total:
            self.save_weights(self.out / SNAPSHOTS / f"step-{step}", models)
