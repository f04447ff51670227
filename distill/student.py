"""ActDistill: graph encapsulation of a frozen teacher, then a routed student derived from it (arXiv 2511.18082).

    from distill.student import ActDistillConfig, distill
    summary = distill("runs/teacher_small", ["data/widowx"], budgets=[0.25, 0.5, 0.75], out="runs/distill",
                      config=ActDistillConfig(steps=3000, stage1_steps=1000))
    policy = distill.load_policy("runs/distill/student-b0.5")     # routed student, like any checkpoint

Stage 1 (Sec. 3.2, graph-structured encapsulation): the teacher is frozen in eval mode; per decoder layer a
:class:`distill.graph.GraphSemanticExtractor` and a per-layer action head are trained to predict the action
chunk (ground truth and the teacher's own final chunk) from that layer's token states. Then, for every
training sample, the teacher's per-layer semantics ``s_l`` and per-layer actions and its final chunk are
cached (:class:`TeacherCache`) keyed by ``sample_id``: stage 2 looks targets up by id, so it may shuffle,
resume or change batch size freely (the reference code indexes its cache by data order and breaks when
that order changes). The cache stores semantics as float16 to halve its size.

Stage 2 (Sec. 3.3-3.4, self-derived student): :class:`StudentVLA` starts as a copy of the teacher's weights
plus a :class:`distill.router.Router`; its extractors and heads start from stage 1. Training runs exactly
the inference computation: each input runs its top-``k`` layers (``k = floor(b L)``, Gumbel-perturbed
scores for exploration, the noise annealed to 0 by the last step) and a skipped layer is the identity.
Gradients reach the router through a straight-through estimator: layer ``l`` outputs
``where(m_l, F_l(h), h) + (g_l - sg(g_l)) (F_l(h) - h)`` with ``g_l = sigmoid(logit_l)``, whose value is the
hard routed output and whose gradient in ``g_l`` is ``<dL/dh_out, F_l(h) - h>``, the first-order benefit of
running the layer. (The reference code instead multiplies the whole residual stream by a soft gate while
training and skips to the identity at inference, a train/test mismatch.) The loss is the hierarchical
supervision of :mod:`distill.losses`, the final head's loss and the budget term ``(mean g - b)^2``.

Export drops every graph part: the student checkpoint holds the teacher-shaped weights, the router and the
budget rule, and :func:`distill.load_policy` opens it by its kind, ``routed_student`` (:func:`load_student_policy`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill.checkpoint import (
    CONFIG,
    WEIGHTS,
    VLAPolicy,
    check_device,
    check_state_dict,
    checkpoint_kind,
    file_hash,
    load_vla,
    load_weights,
    parse_dtype,
    read_config,
    save_checkpoint,
)
from distill.data import ItemCollate, random_shift, step_generator
from distill.graph import GraphEncapsulation
from distill.loop import (
    GROUP_EPISODES,
    EpisodeGroupedBatches,
    TimeBudget,
    episode_ids,
    lr_factor,
    steps_per_s,
)
from distill.losses import budget_loss, hierarchical_loss, layer_weights, masked_mse
from distill.router import Router, centered_gates, layers_for_budget, topk_mask
from distill.vla import VLA, Embedded, VLAConfig

STUDENT_KIND = "routed_student"  # the registry name of distill.checkpoint.POLICY_KINDS
BUDGET_RULE = "topk"
STAGE1_DIR = "encapsulation"
ENC_WEIGHTS = "encapsulation.safetensors"
ENC_CONFIG = "encapsulation.json"
CACHE_FILE = "teacher_cache.safetensors"
STATE = "training_state.pt"


@dataclass
class ActDistillConfig:
    """Hyperparameters of both stages. Defaults of the method terms follow the reference code:
    alpha (semantic weight), beta (action weight), eta (relational-structure weight inside the semantic term),
    gamma (depth-weight exponent), k (graph neighbours), semantic_dim (d_s) = 1.0, 1.0, 0.5, 2.0, 8, 512.
    """

    alpha: float = 1.0
    beta: float = 1.0
    eta: float = 0.5
    gamma: float = 2.0
    k: int = 8
    semantic_dim: int = 512
    graph_dim: int | None = None  # node feature size inside the extractors; None = the teacher's hidden size
    gat_heads: int = 4
    gat_layers: int = 2
    head_hidden: int = 256
    router_dim: int = 128
    budget_weight: float = 1.0  # lambda_b of the budget term
    teacher_weight: float = 1.0  # final head vs the teacher's final chunk (and stage-1 heads vs it)
    final_teacher_weight: float | None = None  # stage 2 only: final head vs the teacher's chunk; None: teacher_weight
    gate_noise: float = 1.0  # Gumbel scale of the training-time top-k, annealed linearly to 0
    gate_center: bool = False  # soft gates relative to each row's top-k threshold (router.centered_gates)
    graph_supervision: bool = True  # False: the "router without graph supervision" ablation (final + budget)
    steps: int = 3000  # stage-2 steps per budget
    stage1_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4  # student backbone; the reference's 1e-4 gave weaker students here (results/reference)
    router_lr: float = 1e-3
    graph_lr: float = 3e-4  # student extractors and heads
    stage1_lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    shift_pad: int = 0  # stage 2: random-shift image augmentation (pixels), as the teacher's training uses
    save_every: int = 250  # steps between periodic training states (resume points)
    time_budget_s: float | None = None  # stage 2: fit each budget's step count to this many seconds (<= steps)
    num_workers: int = 0
    seed: int = 0
    stage2_seed: int | None = None  # stage 2's own seed (init noise, batches, augmentation); None: ``seed``

    @property
    def final_kd_weight(self) -> float:
        """Stage 2's weight of the final head against the teacher's chunk (beside weight 1 on the ground truth)."""
        return self.teacher_weight if self.final_teacher_weight is None else self.final_teacher_weight

    @property
    def student_seed(self) -> int:
        """The seed of stage 2: ``stage2_seed`` when set, else ``seed`` (stage 1 always uses ``seed``)."""
        return self.seed if self.stage2_seed is None else self.stage2_seed

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "eta", "gamma", "budget_weight", "teacher_weight", "gate_noise",
                     "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "router_lr", "graph_lr", "stage1_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("k", "semantic_dim", "gat_heads", "gat_layers", "head_hidden", "router_dim", "steps",
                     "stage1_steps", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.final_teacher_weight is not None and self.final_teacher_weight < 0:
            raise ValueError(f"final_teacher_weight must be >= 0, got {self.final_teacher_weight!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 seconds, got {self.time_budget_s!r}")
        if self.warmup < 0 or self.num_workers < 0 or self.shift_pad < 0:
            raise ValueError(f"warmup, num_workers and shift_pad must be >= 0, got {self.warmup}, "
                             f"{self.num_workers}, {self.shift_pad}")
        if self.graph_dim is not None and self.graph_dim % self.gat_heads:
            raise ValueError(f"graph_dim {self.graph_dim} must be divisible by gat_heads {self.gat_heads}; "
                             f"e.g. {self.gat_heads * max(1, self.graph_dim // self.gat_heads)}")

    @classmethod
    def from_dict(cls, data: Mapping) -> ActDistillConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ActDistill config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(data))

    def graph_settings(self) -> dict:
        """The fields that shape stage 1 (a stage-1 folder is reusable only with the same values)."""
        keys = ("k", "semantic_dim", "graph_dim", "gat_heads", "gat_layers", "head_hidden", "teacher_weight",
                "stage1_steps", "stage1_lr", "batch_size", "seed")
        return {key: getattr(self, key) for key in keys}


def build_encapsulation(vla: VLA, config: ActDistillConfig) -> GraphEncapsulation:
    """Fresh per-layer extractors and action heads sized for ``vla`` (Sec. 3.2)."""
    return GraphEncapsulation(vla.num_layers, vla.config.hidden_size, vla.config.chunk, vla.config.action_dim,
                              semantic_dim=config.semantic_dim, k=config.k, graph_dim=config.graph_dim,
                              gat_heads=config.gat_heads, gat_layers=config.gat_layers,
                              head_hidden=config.head_hidden)


# -- the routed student ---------------------------------------------------------------------------------


class StudentVLA(VLA):
    """A :class:`VLA` plus a :class:`Router`; every input runs its ``layers_per_input`` best-scored layers.

    ``forward(batch, layer_mask=None)`` routes when no mask is given. ``route(emb) -> (B, L) bool``.
    The state dict is the teacher's plus ``router.*``, so the teacher's weights load directly.
    """

    def __init__(self, config: VLAConfig, budget: float, router_dim: int = 128):
        super().__init__(config)
        self.budget = float(budget)
        self.layers_per_input = layers_for_budget(budget, self.num_layers)
        # soft gates start at the budget, so the budget term starts near 0 (the initial order is random)
        init_logit = math.log(min(budget, 0.99) / (1 - min(budget, 0.99)))
        self.router = Router(config.hidden_size, self.num_layers, router_dim, init_logit)

    @classmethod
    def from_teacher(cls, teacher: VLA, budget: float, router_dim: int = 128) -> StudentVLA:
        """A student whose VLA weights are a copy of ``teacher``'s and whose router is freshly initialised."""
        student = cls(VLAConfig.from_dict(teacher.config.to_dict()), budget, router_dim)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not name.startswith("router.") for name in missing):
            raise ValueError(f"teacher weights do not fit the student: missing {missing}, unexpected {unexpected}")
        return student.to(next(teacher.parameters()).device)

    def route(self, emb: Embedded) -> torch.Tensor:
        """Layers to run (B, L) bool: the top ``layers_per_input`` router scores of each row."""
        return topk_mask(self.router(emb), self.layers_per_input)

    def forward(self, batch: Mapping[str, torch.Tensor], layer_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk (B, K, 7); skipped layers are not computed (see :meth:`VLA.run_layers`)."""
        emb = self.embed(batch)
        mask = self.route(emb) if layer_mask is None else layer_mask
        return self.head(self.run_layers(emb.hidden, emb, mask), emb)


class StudentPolicy(VLAPolicy):
    """Policy of a routed student: ``last_info["executed_layers"]`` lists the layers the last call ran and
    ``mean_executed_fraction`` is the executed fraction of layers averaged over every row of every model call.
    """

    def __init__(self, model: StudentVLA, checkpoint_hash: str = "", path: str | None = None):
        super().__init__(model, checkpoint_hash, path)
        self._rows = 0
        self._executed = 0

    @property
    def mean_executed_fraction(self) -> float:
        """Mean fraction of decoder layers executed per model call and row (nan before the first call)."""
        return self._executed / (self._rows * self.model.num_layers) if self._rows else float("nan")

    def model_call(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[list[int]]]:
        model = self.model
        with torch.inference_mode():
            emb = model.embed(batch)
            logits = model.router(emb)  # (B, L)
            if logits.shape[0] == 1:  # one row: run its layers in order, without building a mask
                layers = [sorted(logits[0].topk(model.layers_per_input, sorted=False).indices.tolist())]
                hidden = emb.hidden
                for idx in layers[0]:
                    hidden = model.run_layer(idx, hidden, emb)
            else:
                mask = topk_mask(logits, model.layers_per_input)  # (B, L) bool
                hidden = model.run_layers(emb.hidden, emb, mask)
                layers = [row.nonzero().flatten().tolist() for row in mask.cpu()]
            chunk = model.head(hidden, emb)  # (B, K, 7)
        self._rows += len(layers)
        self._executed += sum(len(row) for row in layers)
        return chunk, layers


def export_student(student: StudentVLA, path: str | Path, meta: Mapping | None = None) -> Path:
    """Save the inference student (VLA weights, router, budget rule; nothing graph-related) to ``path``."""
    student_meta = {
        "kind": STUDENT_KIND,
        "student": {"budget": student.budget, "rule": BUDGET_RULE, "layers_per_input": student.layers_per_input,
                    "num_layers": student.num_layers, "router": {"router_dim": student.router.router_dim}},
    }
    return save_checkpoint(path, student, {**dict(meta or {}), **student_meta})


def load_student(path: str | Path, device: str | torch.device = "cpu") -> tuple[StudentVLA, dict]:
    """The :class:`StudentVLA` (float32, eval) stored at ``path`` and its config.json."""
    config = read_config(path)
    if checkpoint_kind(config, Path(path) / CONFIG) != STUDENT_KIND or "student" not in config:
        raise ValueError(f"{Path(path) / CONFIG} is not a routed-student checkpoint (kind={config.get('kind')!r}); "
                         "open teachers with distill.load_policy or distill.checkpoint.load_vla")
    spec = config["student"]
    if spec.get("rule") != BUDGET_RULE:
        raise ValueError(f"unknown budget rule {spec.get('rule')!r} in {Path(path) / CONFIG}; valid: {BUDGET_RULE}")
    model = StudentVLA(VLAConfig.from_dict(config["vla"]), spec["budget"], spec["router"]["router_dim"])
    tensors = load_weights(path)
    check_state_dict(model, tensors, str(Path(path) / WEIGHTS))
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def load_student_policy(path: str | Path, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "float32") -> StudentPolicy:
    """:class:`StudentPolicy` for the student checkpoint ``path`` (the loader of kind ``routed_student``)."""
    model, _ = load_student(path, device)
    return StudentPolicy(model.to(parse_dtype(dtype)), checkpoint_hash=file_hash(Path(path) / WEIGHTS),
                         path=str(path))


# -- forward passes used in training ------------------------------------------------------------------


def teacher_states(teacher: VLA, batch: Mapping[str, torch.Tensor]) -> tuple[Embedded, list[torch.Tensor], torch.Tensor]:
    """Embedding, the L per-layer outputs (B, N, D) and the final normalised chunk (B, K, 7) of ``teacher``."""
    emb = teacher.embed(batch)
    h, states = emb.hidden, []
    for idx in range(teacher.num_layers):
        h = teacher.run_layer(idx, h, emb)  # (B, N, D)
        states.append(h)
    return emb, states, teacher.head(h, emb)


def routed_states(student: StudentVLA, emb: Embedded, mask: torch.Tensor,
                  gates: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer outputs (L x (B, N, D)) of the routed stack with straight-through gates.

    ``mask`` (B, L) bool picks the layers; ``gates`` (B, L) soft probabilities carry the gradient. The values
    equal the routed inference computation (a skipped layer is the identity); every layer is computed for
    every row, which the gradient of the gates needs.
    """
    h, states = emb.hidden, []
    straight = gates - gates.detach()  # (B, L): zero valued, gradient of the soft gates
    for idx in range(student.num_layers):
        f = student.run_layer(idx, h, emb)  # (B, N, D)
        h = torch.where(mask[:, idx, None, None], f, h) + straight[:, idx, None, None] * (f - h)
        states.append(h)
    return states


# -- training data --------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A collated training batch on the model's device."""

    inputs: dict[str, torch.Tensor]  # from VLA.prepare
    actions: torch.Tensor  # (B, K, 7) normalised
    mask: torch.Tensor  # (B, K) bool
    sample_ids: torch.Tensor  # (B,) int64, on the CPU


def _identity(items: list) -> list:
    return items


def collate(vla: VLA, items: Sequence[Mapping] | Mapping) -> Batch:
    """Batch dataset items (``DemoDataset`` format), or the output of :class:`ItemCollate`, for ``vla``."""
    device = vla.action_mean.device
    cpu = items if isinstance(items, Mapping) else ItemCollate(vla)(items)
    return Batch(inputs={k: v.to(device, non_blocking=True) for k, v in cpu["inputs"].items()},
                 actions=vla.normalize_actions(cpu["actions"].to(device)), mask=cpu["mask"].to(device),
                 sample_ids=cpu["sample_ids"])


# -- teacher cache ----------------------------------------------------------------------------------------


class TeacherCache:
    """Stage-1 teacher outputs per training sample, looked up by ``sample_id``.

    ``sample_ids`` (M,) sorted int64; ``semantics`` (M, L, d_s) float16; ``actions`` (M, L, K, 7) and
    ``final`` (M, K, 7) float32 (normalised action chunks).
    """

    def __init__(self, sample_ids: torch.Tensor, semantics: torch.Tensor, actions: torch.Tensor, final: torch.Tensor):
        order = sample_ids.argsort()
        self.sample_ids = sample_ids[order].contiguous()
        dupes = self.sample_ids[1:][self.sample_ids[1:] == self.sample_ids[:-1]]
        if len(dupes):
            raise ValueError(f"sample ids must be unique; repeated: {dupes.unique()[:10].tolist()}")
        self.semantics = semantics[order].to(torch.float16).contiguous()
        self.actions = actions[order].float().contiguous()
        self.final = final[order].float().contiguous()

    def __len__(self) -> int:
        return len(self.sample_ids)

    def lookup(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher ``semantics`` (L, B, d_s) float32, ``actions`` (L, B, K, 7), ``final`` (B, K, 7) for ids (B,)."""
        pos = torch.searchsorted(self.sample_ids, sample_ids).clamp_max(len(self) - 1)  # (B,)
        missing = sample_ids[self.sample_ids[pos] != sample_ids]
        if len(missing):
            raise KeyError(f"sample ids {missing[:10].tolist()} are not in the teacher cache "
                           f"({len(self)} samples); was the dataset changed after stage 1?")
        return (self.semantics[pos].float().transpose(0, 1), self.actions[pos].transpose(0, 1), self.final[pos])

    def save(self, file: str | Path) -> None:
        """Write to a safetensors file (atomically)."""
        tmp = Path(str(file) + ".tmp")
        save_file({"sample_ids": self.sample_ids, "semantics": self.semantics, "actions": self.actions,
                   "final": self.final}, str(tmp))
        os.replace(tmp, file)

    @classmethod
    def load(cls, file: str | Path) -> TeacherCache:
        t = load_file(str(file))
        return cls(t["sample_ids"], t["semantics"], t["actions"], t["final"])


@torch.no_grad()
def build_teacher_cache(teacher: VLA, enc: GraphEncapsulation, dataset: Dataset, batch_size: int = 64,
                        num_workers: int = 0, progress: bool = False) -> TeacherCache:
    """Run the frozen teacher and stage-1 encapsulation over every sample of ``dataset`` (any order)."""
    from tqdm.auto import tqdm

    teacher.eval()
    enc.eval()
    ids, sems, acts, finals = [], [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=ItemCollate(teacher),
                        num_workers=num_workers, pin_memory=teacher.action_mean.device.type == "cuda")
    for items in tqdm(loader, desc="teacher cache", disable=not progress, dynamic_ncols=True):
        batch = collate(teacher, items)
        emb, states, final = teacher_states(teacher, batch.inputs)
        s, a = enc(states, emb.attention_mask)  # (L, B, d_s), (L, B, K, 7)
        ids.append(batch.sample_ids)
        sems.append(s.transpose(0, 1).cpu())
        acts.append(a.transpose(0, 1).cpu())
        finals.append(final.cpu())
    return TeacherCache(torch.cat(ids), torch.cat(sems), torch.cat(acts), torch.cat(finals))


# -- training loop ------------------------------------------------------------------------------------------


def _train_loop(*, name: str, modules: Mapping[str, nn.Module], optimizer: torch.optim.Optimizer,
                step_fn: Callable[[list, int, int], dict[str, torch.Tensor]], dataset: Dataset, steps: int,
                config: ActDistillConfig, workdir: Path, fingerprint: Mapping, progress: bool,
                seed: int, time_budget_s: float | None = None,
                collate_fn: Callable[[list], object] = _identity) -> dict:
    """Optimise ``step_fn``'s ``"loss"`` for ``steps`` steps, resuming from ``workdir/training_state.pt``.

    Batches come from :class:`distill.train.EpisodeGroupedBatches` (each sample once per epoch, episodes
    grouped so video decoding is shared, a pure function of (seed, step)), so a resumed run draws the same
    batches as an uninterrupted one. A training state is written every ``config.save_every`` steps.
    Returns ``{"history": [...], "steps_per_s": float}``.
    """
    from tqdm.auto import tqdm

    state_file = workdir / STATE
    params = [p for group in optimizer.param_groups for p in group["params"]]
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step, history = 0, []
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if state["fingerprint"] != json.loads(json.dumps(fingerprint)):
            raise ValueError(f"{state_file} was written by a run with different settings "
                             f"({state['fingerprint']} vs {dict(fingerprint)}); use a new --out")
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        torch.set_rng_state(state["torch_rng"])

    def save_state() -> None:
        payload = {"step": step, "fingerprint": json.loads(json.dumps(fingerprint)), "history": history,
                   "modules": {k: m.state_dict() for k, m in modules.items()},
                   "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        torch.save(payload, workdir / (STATE + ".tmp"))
        os.replace(workdir / (STATE + ".tmp"), state_file)

    workdir.mkdir(parents=True, exist_ok=True)
    group = max(1, min(GROUP_EPISODES, getattr(dataset, "cache_episodes", 2 * GROUP_EPISODES) // 2))
    sampler = EpisodeGroupedBatches(episode_ids(dataset), config.batch_size, seed, step, steps, group)
    device_type = next(next(iter(modules.values())).parameters()).device.type
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=config.num_workers,
                        pin_memory=device_type == "cuda")
    bar = tqdm(total=steps, initial=step, desc=name, disable=not progress, dynamic_ncols=True)
    start_step, t0 = step, None
    budget = TimeBudget(time_budget_s) if time_budget_s is not None else None
    for items in loader:
        if step >= steps:
            break
        factor = lr_factor(step, config.warmup, steps)
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * factor
        terms = step_fn(items, step, steps)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        history.append({"step": step, **{k: float(v.detach()) for k, v in terms.items()}})
        step += 1
        if t0 is None:
            t0 = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
        if budget is not None and (total := budget.after_step(step, steps)) is not None:
            steps = sampler.stop = bar.total = total
            bar.refresh()
        if step % config.save_every == 0 and step < steps:
            save_state()
            save_loss_plot(history, workdir / "loss.png", name)
        if not progress and (step % config.save_every == 0 or step == steps):  # a log line instead of the bar
            print(f"[distill] {name}: step {step}/{steps}, loss {history[-1]['loss']:.4f}, "
                  f"{steps_per_s(step - start_step - 1, t0):.2f} steps/s", flush=True)
    bar.close()
    rate = steps_per_s(step - start_step - 1, t0)
    return {"history": history, "steps_per_s": rate, "steps": steps}


def save_loss_plot(history: Sequence[Mapping], file: Path, title: str) -> None:
    """Plot every logged loss term of ``history`` against the step (log scale) to ``file`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    steps = np.array([h["step"] for h in history])
    fig, ax = plt.subplots(figsize=(7, 4))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
    for key in history[0]:
        if key == "step":
            continue
        values = np.array([h[key] for h in history])
        width = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1:], np.maximum(smooth, 1e-8), lw=1.8 if key == "loss" else 1.0, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (running mean)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(file, dpi=120)
    plt.close(fig)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


# -- stage 1 ---------------------------------------------------------------------------------------------------


def train_encapsulation(teacher: VLA, dataset: Dataset, workdir: str | Path, config: ActDistillConfig,
                        fingerprint: Mapping | None = None, progress: bool = True) -> tuple[GraphEncapsulation, dict]:
    """Stage 1 (Sec. 3.2): train per-layer extractors and heads on the frozen clean ``teacher``.

    Each layer head's loss is the masked MSE to the ground-truth chunk plus ``teacher_weight`` times the MSE
    to the teacher's final chunk, averaged over layers. Returns the encapsulation (eval mode) and the
    :func:`_train_loop` result.
    """
    device = teacher.action_mean.device
    teacher.eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    enc = build_encapsulation(teacher, config).to(device).train()
    optimizer = torch.optim.AdamW(enc.parameters(), lr=config.stage1_lr, weight_decay=config.weight_decay)

    def step_fn(items: list, step: int, total: int) -> dict[str, torch.Tensor]:
        batch = collate(teacher, items)
        with torch.no_grad(), _autocast(device):
            emb, states, final = teacher_states(teacher, batch.inputs)
        with _autocast(device):
            _, actions = enc([h.float() for h in states], emb.attention_mask)  # (L, B, K, 7)
        actions, final = actions.float(), final.float()
        gt = torch.stack([masked_mse(a, batch.actions, batch.mask) for a in actions]).mean()
        teach = torch.stack([masked_mse(a, final) for a in actions]).mean()
        return {"loss": gt + config.teacher_weight * teach, "gt": gt, "teacher": teach}

    result = _train_loop(name="stage1", modules={"enc": enc}, optimizer=optimizer, step_fn=step_fn,
                         dataset=dataset, steps=config.stage1_steps, config=config, workdir=Path(workdir),
                         fingerprint=fingerprint or config.graph_settings(), progress=progress,
                         seed=config.seed, collate_fn=ItemCollate(teacher))
    return enc.eval(), result


# -- stage 2 ---------------------------------------------------------------------------------------------------


def student_losses(student: StudentVLA, enc: GraphEncapsulation | None, batch: Batch, cache: TeacherCache,
                   config: ActDistillConfig, weights: torch.Tensor, noise: float) -> dict[str, torch.Tensor]:
    """One stage-2 forward (Sec. 3.3-3.4): routed student, per-layer graph supervision, final and budget terms.

    ``noise`` is the Gumbel scale of the top-k selection (0 gives exactly the inference routing). Without
    ``config.graph_supervision`` the per-layer terms are 0 and ``enc`` is not run. Returns
    scalar ``loss`` and its terms ``align``, ``struct``, ``action``, ``final``, ``budget`` and the mean soft
    gate ``gate_mean``.
    """
    device = batch.actions.device
    s_t, a_t, final_t = (t.to(device) for t in cache.lookup(batch.sample_ids))
    emb = student.embed(batch.inputs)
    logits = student.router(emb).float()  # (B, L)
    gates = centered_gates(logits, student.layers_per_input) if config.gate_center else torch.sigmoid(logits)
    scores = logits.detach()
    if noise > 0:
        u = torch.rand_like(scores).clamp(1e-9, 1 - 1e-9)
        scores = scores - noise * torch.log(-torch.log(u))  # Gumbel-top-k: sample k layers without replacement
    mask = topk_mask(scores, student.layers_per_input)  # (B, L) bool
    states = routed_states(student, emb, mask, gates.to(emb.hidden.dtype))
    if config.graph_supervision:
        if enc is None:
            raise ValueError("graph supervision needs the student's extractors (enc); got None")
        s_s, a_s = enc([h.float() for h in states], emb.attention_mask)  # (L, B, d_s), (L, B, K, 7)
        terms = hierarchical_loss(s_s.float(), s_t, a_s.float(), a_t, batch.actions, batch.mask,
                                  weights.to(device), alpha=config.alpha, beta=config.beta, eta=config.eta)
    else:
        terms = dict.fromkeys(("align", "struct", "action", "total"), gates.new_zeros(()))
    chunk = student.head(states[-1], emb)  # (B, K, 7)
    final = masked_mse(chunk, batch.actions, batch.mask) + config.final_kd_weight * masked_mse(chunk, final_t)
    budget = budget_loss(gates, student.budget)
    loss = terms["total"] + final + config.budget_weight * budget
    return {"loss": loss, "align": terms["align"], "struct": terms["struct"], "action": terms["action"],
            "final": final, "budget": budget, "gate_mean": gates.mean().detach()}


def train_student(teacher: VLA, enc: GraphEncapsulation, cache: TeacherCache, dataset: Dataset, budget: float,
                  workdir: str | Path, config: ActDistillConfig, fingerprint: Mapping | None = None,
                  progress: bool = True) -> tuple[StudentVLA, dict]:
    """Stage 2 at ``budget``: derive the student from ``teacher``, train it, return it (eval) and the loop result.

    ``enc`` (stage 1) is copied as the student's extractors and heads; neither it nor ``teacher`` is modified.
    """
    device = teacher.action_mean.device
    torch.manual_seed(config.student_seed)
    student = StudentVLA.from_teacher(teacher, budget, config.router_dim).train().requires_grad_(True)
    student_enc = copy.deepcopy(enc).train().requires_grad_(True)
    weights = layer_weights(student.num_layers, config.gamma)
    router_params = list(student.router.parameters())
    router_ids = {id(p) for p in router_params}
    optimizer = torch.optim.AdamW([
        {"params": [p for p in student.parameters() if id(p) not in router_ids], "lr": config.lr},
        {"params": router_params, "lr": config.router_lr},
        *([{"params": list(student_enc.parameters()), "lr": config.graph_lr}] if config.graph_supervision else []),
    ], weight_decay=config.weight_decay)

    def step_fn(items: list, step: int, total: int) -> dict[str, torch.Tensor]:
        batch = collate(student, items)
        if config.shift_pad:
            aug = step_generator(config.student_seed, step, 2)
            for cam in student.config.cameras:
                batch.inputs[cam] = random_shift(batch.inputs[cam], config.shift_pad, aug)
        noise = config.gate_noise * max(0.0, 1.0 - step / max(1, total - 1))
        with _autocast(device):
            return student_losses(student, student_enc, batch, cache, config, weights, noise)

    result = _train_loop(name=f"student b={budget:g}", modules={"student": student, "enc": student_enc},
                         optimizer=optimizer, step_fn=step_fn, dataset=dataset, steps=config.steps, config=config,
                         workdir=Path(workdir), fingerprint=fingerprint or _student_fingerprint(budget, config),
                         progress=progress, time_budget_s=config.time_budget_s, collate_fn=ItemCollate(student),
                         seed=config.student_seed)
    return student.eval(), result


def _student_fingerprint(budget: float, config: ActDistillConfig) -> dict:
    """Settings a stage-2 resume must share with the interrupted run (steps and I/O knobs may change)."""
    skip = {"steps", "save_every", "num_workers", "time_budget_s"}
    if not config.gate_center:
        skip.add("gate_center")  # added later: runs from before it (and without it) resume as they were
    if config.stage2_seed is None:
        skip.add("stage2_seed")  # likewise
    if config.final_teacher_weight is None:
        skip.add("final_teacher_weight")  # likewise
    return {"budget": budget, **{k: v for k, v in asdict(config).items() if k not in skip}}


# -- both stages, all budgets ------------------------------------------------------------------------------------


def budget_dir(out: str | Path, budget: float) -> Path:
    """Folder of the student at ``budget`` under ``out``: ``out/student-b0.25`` etc."""
    return Path(out) / f"student-b{budget:g}"


def open_dataset(data: Sequence[str | os.PathLike] | Dataset, chunk: int) -> Dataset:
    """``data`` itself when it is a dataset, else ``tasks.datasets.DemoDataset`` over the folders ``data``."""
    if isinstance(data, Dataset):
        return data
    from tasks.datasets import DemoDataset

    missing = [str(d) for d in data if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"demonstration folder(s) not found: {', '.join(missing)}")
    return DemoDataset([str(d) for d in data], chunk=chunk)


def distill(teacher: str | Path, data: Sequence[str | os.PathLike] | Dataset, budgets: Sequence[float],
            out: str | Path, *, config: ActDistillConfig | None = None, device: str = "cpu",
            progress: bool = True) -> dict:
    """Run ActDistill: stage 1 once (``out/encapsulation``), then one student per budget (``out/student-bB``).

    Resumable: a finished stage 1 (weights + cache) is reused, a budget whose student checkpoint exists is
    skipped, an unfinished one continues from its last training state. Returns a summary (also written to
    ``out/distill_summary.json``): per budget the folder, ``status`` (``trained`` or ``skipped``), steps/s and
    the final loss terms.
    """
    config = config or ActDistillConfig()
    check_device(device)
    budgets = [float(b) for b in budgets]
    if not budgets:
        raise ValueError("need at least one budget, e.g. 0.25,0.5,0.75")
    teacher_vla, _ = load_vla(teacher, device)
    for b in budgets:
        layers_for_budget(b, teacher_vla.num_layers)
    teacher_hash = file_hash(Path(teacher) / WEIGHTS)
    dataset = open_dataset(data, teacher_vla.config.chunk)
    out = Path(out)
    stage1 = out / STAGE1_DIR
    stage1_meta = {"teacher": str(teacher), "teacher_hash": teacher_hash, "num_samples": len(dataset),
                   "graph": config.graph_settings()}
    enc = build_encapsulation(teacher_vla, config).to(device)
    summary: dict = {"teacher": str(teacher), "teacher_hash": teacher_hash, "budgets": {}}
    if (stage1 / ENC_CONFIG).is_file() and (stage1 / CACHE_FILE).is_file():
        saved = json.loads((stage1 / ENC_CONFIG).read_text())
        if {k: saved.get(k) for k in stage1_meta if k != "teacher"} != \
                {k: v for k, v in json.loads(json.dumps(stage1_meta)).items() if k != "teacher"}:
            raise ValueError(f"{stage1} was built for another teacher, dataset or graph settings "
                             f"({saved}); use a new --out")
        enc.load_state_dict(load_file(str(stage1 / ENC_WEIGHTS), device=str(device)))
        enc.eval()
        cache = TeacherCache.load(stage1 / CACHE_FILE)
        summary["stage1"] = {"status": "skipped"}
    else:
        fingerprint = {k: v for k, v in stage1_meta.items() if k != "teacher"}
        enc, result = train_encapsulation(teacher_vla, dataset, stage1, config, fingerprint, progress)
        cache = build_teacher_cache(teacher_vla, enc, dataset, batch_size=max(4 * config.batch_size, 64),
                                    num_workers=config.num_workers, progress=progress)
        cache.save(stage1 / CACHE_FILE)
        save_file({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}, str(stage1 / ENC_WEIGHTS))
        save_loss_plot(result["history"], stage1 / "loss.png", "stage 1: graph encapsulation")
        (stage1 / "history.json").write_text(json.dumps(result["history"]))
        (stage1 / ENC_CONFIG).write_text(json.dumps(stage1_meta, indent=2))
        (stage1 / STATE).unlink(missing_ok=True)
        summary["stage1"] = {"status": "trained", "steps_per_s": result["steps_per_s"],
                             "last": result["history"][-1] if result["history"] else None}

    for b in budgets:
        folder = budget_dir(out, b)
        if (folder / CONFIG).is_file():
            summary["budgets"][f"{b:g}"] = {"out": str(folder), "status": "skipped"}
            continue
        work = out / f"{folder.name}.work"
        student, result = train_student(teacher_vla, enc, cache, dataset, b, work, config, progress=progress)
        history = result["history"]
        recent = {k: float(np.mean([h[k] for h in history[-50:]])) for k in history[-1]} if history else {}
        meta = {"teacher": {"path": str(teacher), "hash": teacher_hash},
                "training": {**asdict(config), "budget": b, "steps_done": len(history), "steps_total": result["steps"],
                             "recent": recent,
                             "num_samples": len(dataset)}}
        export_student(student, folder, meta)
        save_loss_plot(history, folder / "loss.png", f"stage 2: student at budget {b:g}")
        (folder / "history.json").write_text(json.dumps(history))
        (work / STATE).unlink(missing_ok=True)
        (work / "loss.png").unlink(missing_ok=True)
        if work.is_dir() and not any(work.iterdir()):
            work.rmdir()
        summary["budgets"][f"{b:g}"] = {"out": str(folder), "status": "trained", "steps_per_s": result["steps_per_s"],
                                        "layers_per_input": student.layers_per_input, "recent": recent}
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
