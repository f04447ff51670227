"""ActDistill: graph encapsulation of a frozen teacher, then a routed student derived from it (arXiv 2511.18082).

    from distill.student import ActDistillConfig, distill
    summary = distill("runs/teacher_small", ["data/widowx"], budgets=[0.25, 0.5, 0.75], out="runs/distill",
                      config=ActDistillConfig(steps=3000, stage1_steps=1000))
    policy = distill.load_policy("runs/distill/student-b0.5")     # routed student, like any checkpoint

Stage 1 (Sec. 3.2, graph-structured encapsulation, :func:`train_encapsulation`): the teacher is frozen in
eval mode; per decoder layer a :class:`distill.graph.GraphSemanticExtractor` and a per-layer action head are
trained to predict the action chunk (ground truth and the teacher's own final chunk) from that layer's token
states. Then the teacher's per-layer semantics ``s_l``, per-layer actions and final chunk are cached for
every training sample by ``sample_id`` (:mod:`distill.teacher_cache`).

Stage 2 (Sec. 3.3-3.4, self-derived student, :func:`train_student`): :class:`distill.routed.StudentVLA`
starts as a copy of the teacher's weights plus a router; its extractors and heads start from stage 1.
Training runs exactly the inference computation: each input runs its top-``k`` layers (``k = floor(b L)``,
Gumbel-perturbed scores for exploration, the noise annealed to 0 by the last step) and a skipped layer is the
identity. Gradients reach the router through a straight-through estimator: layer ``l`` outputs
``where(m_l, F_l(h), h) + (g_l - sg(g_l)) (F_l(h) - h)`` with ``g_l = sigmoid(logit_l)``, whose value is the
hard routed output and whose gradient in ``g_l`` is ``<dL/dh_out, F_l(h) - h>``, the first-order benefit of
running the layer. (The reference code instead multiplies the whole residual stream by a soft gate while
training and skips to the identity at inference, a train/test mismatch.) The loss is the hierarchical
supervision of :mod:`distill.losses`, the final head's loss and the budget term ``(mean g - b)^2``.

Both stages run on :class:`distill.loop.TrainingLoop` (batches, schedule, clipping, time budget, exact
resume). Export drops every graph part (:func:`distill.routed.export_student`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from distill.checkpoint import CONFIG, WEIGHTS, check_device, file_hash, load_teacher
from distill.data import Batch, Data, ItemCollate, collate, open_dataset, random_shift, step_generator
from distill.graph import GraphEncapsulation
from distill.loop import STATE, LoopSettings, TrainingLoop, save_loss_plot
from distill.losses import DEPTH_NORMS, budget_loss, hierarchical_loss, layer_weights, masked_mse
from distill.routed import StudentVLA, export_student
from distill.router import centered_gates, layers_for_budget, topk_mask
from distill.teacher_cache import (
    TeacherCache,
    build_teacher_cache,
    cache_dtype,
    stage_autocast,
    teacher_states,
)
from distill.vla import VLA, Embedded
from tasks.errors import UserInputError

STAGE1_DIR = "encapsulation"
ENC_WEIGHTS = "encapsulation.safetensors"
ENC_CONFIG = "encapsulation.json"
CACHE_FILE = "teacher_cache.safetensors"
STAGE1_YLABEL = "masked MSE (normalised action chunk)"
STAGE2_YLABEL = "loss terms (gate_mean: mean soft gate)"


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
    depth_norm: str = "mean"  # depth weights normalised to mean 1 (the reference) or "sum" 1 (students before 2026-12)
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
    lr: float = 3e-4  # student backbone (the reference code uses 1e-4)
    router_lr: float = 1e-3
    graph_lr: float = 3e-4  # student extractors and heads; 0 freezes them at stage 1's weights
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
                raise UserInputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "router_lr", "stage1_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise UserInputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.graph_lr >= 0:
            raise UserInputError(f"graph_lr must be >= 0 (0 freezes the student's extractors), got {self.graph_lr!r}")
        for name in ("k", "semantic_dim", "gat_heads", "gat_layers", "head_hidden", "router_dim", "steps",
                     "stage1_steps", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.depth_norm not in DEPTH_NORMS:
            raise UserInputError(f"unknown depth_norm {self.depth_norm!r}; valid: {', '.join(DEPTH_NORMS)}")
        if self.final_teacher_weight is not None and self.final_teacher_weight < 0:
            raise UserInputError(f"final_teacher_weight must be >= 0, got {self.final_teacher_weight!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise UserInputError(f"time_budget_s must be > 0 seconds, got {self.time_budget_s!r}")
        if self.warmup < 0 or self.num_workers < 0 or self.shift_pad < 0:
            raise UserInputError(f"warmup, num_workers and shift_pad must be >= 0, got {self.warmup}, "
                                 f"{self.num_workers}, {self.shift_pad}")
        if self.graph_dim is not None and self.graph_dim % self.gat_heads:
            raise UserInputError(f"graph_dim {self.graph_dim} must be divisible by gat_heads {self.gat_heads}; "
                                 f"e.g. {self.gat_heads * max(1, self.graph_dim // self.gat_heads)}")

    @classmethod
    def from_dict(cls, data: Mapping) -> ActDistillConfig:
        """The config with the fields of ``data``; unknown keys are refused, naming the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserInputError(f"unknown ActDistill config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(data))

    def graph_settings(self) -> dict:
        """The fields that shape stage 1 (a stage-1 folder is reusable only with the same values)."""
        keys = ("k", "semantic_dim", "graph_dim", "gat_heads", "gat_layers", "head_hidden", "teacher_weight",
                "stage1_steps", "stage1_lr", "batch_size", "seed")
        return {key: getattr(self, key) for key in keys}

    def loop_settings(self, steps: int, seed: int, time_budget_s: float | None = None) -> LoopSettings:
        """The :class:`distill.loop.LoopSettings` of a stage that runs ``steps`` steps with ``seed``."""
        return LoopSettings(steps=steps, batch_size=self.batch_size, warmup=self.warmup, grad_clip=self.grad_clip,
                            save_every=self.save_every, seed=seed, num_workers=self.num_workers,
                            time_budget_s=time_budget_s)


def build_encapsulation(vla: VLA, config: ActDistillConfig) -> GraphEncapsulation:
    """Fresh per-layer extractors and action heads sized for ``vla`` (Sec. 3.2)."""
    return GraphEncapsulation(vla.num_layers, vla.config.hidden_size, vla.config.chunk, vla.config.action_dim,
                              semantic_dim=config.semantic_dim, k=config.k, graph_dim=config.graph_dim,
                              gat_heads=config.gat_heads, gat_layers=config.gat_layers,
                              head_hidden=config.head_hidden)


# -- stage 1 ---------------------------------------------------------------------------------------------------


def train_encapsulation(teacher: VLA, dataset: Dataset, workdir: str | Path, config: ActDistillConfig,
                        fingerprint: Mapping | None = None, progress: bool = True) -> tuple[GraphEncapsulation, dict]:
    """Stage 1 (Sec. 3.2): train per-layer extractors and heads on the frozen clean ``teacher``.

    Each layer head's loss is the masked MSE to the ground-truth chunk plus ``teacher_weight`` times the MSE
    to the teacher's final chunk, averaged over layers. Resumes from ``workdir``'s training state when its
    ``fingerprint`` (default: the graph settings) matches. Returns the encapsulation (eval mode) and the
    :meth:`distill.loop.TrainingLoop.run` result.
    """
    device = teacher.action_mean.device
    teacher.eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    enc = build_encapsulation(teacher, config).to(device).train()
    optimizer = torch.optim.AdamW(enc.parameters(), lr=config.stage1_lr, weight_decay=config.weight_decay)

    def step_fn(items: dict, step: int, total: int) -> dict[str, torch.Tensor]:
        batch = collate(teacher, items)
        with torch.no_grad(), stage_autocast(device):
            emb, states, final = teacher_states(teacher, batch.inputs)
        with stage_autocast(device):
            _, actions = enc([h.float() for h in states], emb.attention_mask)  # (L, B, K, 7)
        actions, final = actions.float(), final.float()
        gt = torch.stack([masked_mse(a, batch.actions, batch.mask) for a in actions]).mean()
        teach = torch.stack([masked_mse(a, final) for a in actions]).mean()
        return {"loss": gt + config.teacher_weight * teach, "gt": gt, "teacher": teach}

    loop = TrainingLoop("stage1", workdir, fingerprint or config.graph_settings(),
                        title="stage 1: graph encapsulation", ylabel=STAGE1_YLABEL)
    result = loop.run(modules={"enc": enc}, optimizer=optimizer, step_fn=step_fn, dataset=dataset,
                      collate_fn=ItemCollate(teacher), settings=config.loop_settings(config.stage1_steps, config.seed),
                      progress=progress)
    return enc.eval(), result


# -- stage 2 ---------------------------------------------------------------------------------------------------


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
    """Stage 2 at ``budget``: derive the student from ``teacher``, train it, return it (eval) and the
    :meth:`distill.loop.TrainingLoop.run` result. Resumes from ``workdir``'s training state when its
    ``fingerprint`` (default :func:`student_fingerprint`) matches.

    ``enc`` (stage 1) is copied as the student's extractors and heads; neither it nor ``teacher`` is modified.
    """
    device = teacher.action_mean.device
    torch.manual_seed(config.student_seed)
    student = StudentVLA.from_teacher(teacher, budget, config.router_dim).train().requires_grad_(True)
    # graph_lr 0: the extractors and heads stay stage 1's (frozen), so the alignment terms can only fall by moving
    # the student's own states, not by the extractors adapting to them
    frozen = config.graph_lr == 0
    student_enc = copy.deepcopy(enc).train().requires_grad_(not frozen)
    weights = layer_weights(student.num_layers, config.gamma, config.depth_norm)
    router_params = list(student.router.parameters())
    router_ids = {id(p) for p in router_params}
    optimizer = torch.optim.AdamW([
        {"params": [p for p in student.parameters() if id(p) not in router_ids], "lr": config.lr},
        {"params": router_params, "lr": config.router_lr},
        *([{"params": list(student_enc.parameters()), "lr": config.graph_lr}]
          if config.graph_supervision and not frozen else []),
    ], weight_decay=config.weight_decay)

    def step_fn(items: dict, step: int, total: int) -> dict[str, torch.Tensor]:
        batch = collate(student, items)
        if config.shift_pad:
            aug = step_generator(config.student_seed, step, 2)
            for cam in student.config.cameras:
                batch.inputs[cam] = random_shift(batch.inputs[cam], config.shift_pad, aug)
        noise = config.gate_noise * max(0.0, 1.0 - step / max(1, total - 1))
        with stage_autocast(device):
            return student_losses(student, student_enc, batch, cache, config, weights, noise)

    loop = TrainingLoop(f"student b={budget:g}", workdir, fingerprint or student_fingerprint(budget, config),
                        title=f"stage 2: student at budget {budget:g}", ylabel=STAGE2_YLABEL)
    result = loop.run(modules={"student": student, "enc": student_enc}, optimizer=optimizer, step_fn=step_fn,
                      dataset=dataset, collate_fn=ItemCollate(student), progress=progress,
                      settings=config.loop_settings(config.steps, config.student_seed, config.time_budget_s))
    return student.eval(), result


def student_fingerprint(budget: float, config: ActDistillConfig) -> dict:
    """Settings a stage-2 resume must share with the interrupted run: all but the step count and I/O knobs."""
    skip = {"steps", "save_every", "num_workers", "time_budget_s"}
    return {"budget": budget, **{k: v for k, v in asdict(config).items() if k not in skip}}


# -- both stages, all budgets ------------------------------------------------------------------------------------


def budget_dir(out: str | Path, budget: float) -> Path:
    """Folder of the student at ``budget`` under ``out``: ``out/student-b0.25`` etc."""
    return Path(out) / f"student-b{budget:g}"


def distill(teacher: str | Path, data: Data, budgets: Sequence[float], out: str | Path, *,
            config: ActDistillConfig | None = None, device: str = "cpu", progress: bool = True,
            stage1_from: str | Path | None = None) -> dict:
    """Run ActDistill: stage 1 once (``out/encapsulation``), then one student per budget (``out/student-bB``).

    ``stage1_from``: a finished stage-1 folder (``OTHER/encapsulation``) of the same teacher and graph settings
    whose extractors are reused although this run's data is larger (e.g. demonstrations plus on-policy data):
    its teacher cache is copied for the samples it holds and computed for the new ones only
    (:func:`_stage1_from`), instead of training stage 1 and caching every sample again.

    Resumable: a finished stage 1 (weights + cache) is reused, a budget whose student checkpoint exists is
    skipped, an unfinished one continues from its last training state. Returns a summary (also written to
    ``out/distill_summary.json``): per budget the folder, ``status`` (``trained`` or ``skipped``), steps/s and
    the final loss terms.
    """
    config = config or ActDistillConfig()
    check_device(device)
    budgets = [float(b) for b in budgets]
    if not budgets:
        raise UserInputError("need at least one budget, e.g. 0.25,0.5,0.75")
    teacher_vla, _ = load_teacher(teacher, device)  # a VLA, or an HF VLA (distill.hf_vla)
    for b in budgets:
        layers_for_budget(b, teacher_vla.num_layers)
    source = {"path": str(teacher), "hash": file_hash(Path(teacher) / WEIGHTS)}
    dataset = open_dataset(data, teacher_vla.config.chunk)
    out = Path(out)
    summary: dict = {"teacher": source["path"], "teacher_hash": source["hash"], "budgets": {}}
    enc, cache, summary["stage1"] = _stage1(teacher_vla, source, dataset, out / STAGE1_DIR, config, progress,
                                            None if stage1_from is None else Path(stage1_from))
    for b in budgets:
        summary["budgets"][f"{b:g}"] = _stage2(teacher_vla, source, enc, cache, dataset, b, out, config, progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _stage1(teacher: VLA, source: dict, dataset: Dataset, folder: Path, config: ActDistillConfig,
            progress: bool, stage1_from: Path | None = None) -> tuple[GraphEncapsulation, TeacherCache, dict]:
    """Stage 1 in ``folder``: reused when finished (with the same teacher, data size and graph settings), else
    made from ``stage1_from`` (:func:`_stage1_from`) when given, else trained and cached. Returns the
    encapsulation (eval), the teacher cache and the stage's summary entry."""
    meta = {"teacher": source["path"], "teacher_hash": source["hash"], "num_samples": len(dataset),
            "graph": config.graph_settings(), "cache_dtype": cache_dtype(teacher.action_mean.device)}
    # the cache's precision is recorded, not matched: extractors and cache are always made together, at one precision
    fingerprint = {k: v for k, v in meta.items() if k not in ("teacher", "cache_dtype")}
    if (folder / ENC_CONFIG).is_file() and (folder / CACHE_FILE).is_file():
        saved = json.loads((folder / ENC_CONFIG).read_text())
        if {k: saved.get(k) for k in fingerprint} != json.loads(json.dumps(fingerprint)):
            raise UserInputError(f"{folder} was built for another teacher, dataset or graph settings "
                                 f"({saved}); use a new --out")
        enc = build_encapsulation(teacher, config).to(teacher.action_mean.device)
        enc.load_state_dict(load_file(str(folder / ENC_WEIGHTS), device=str(teacher.action_mean.device)))
        return enc.eval(), TeacherCache.load(folder / CACHE_FILE), {"status": "skipped"}
    if stage1_from is not None:
        return _stage1_from(teacher, source, dataset, stage1_from, folder, config, meta, progress)
    enc, result = train_encapsulation(teacher, dataset, folder, config, fingerprint, progress)
    cache = build_teacher_cache(teacher, enc, dataset, batch_size=max(4 * config.batch_size, 64),
                                num_workers=config.num_workers, progress=progress)
    cache.save(folder / CACHE_FILE)
    save_file({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}, str(folder / ENC_WEIGHTS))
    (folder / "history.json").write_text(json.dumps(result["history"]))
    (folder / ENC_CONFIG).write_text(json.dumps(meta, indent=2))
    (folder / STATE).unlink(missing_ok=True)
    history = result["history"]
    return enc, cache, {"status": "trained", "steps_per_s": result["steps_per_s"],
                        "last": history[-1] if history else None}


def _stage1_from(teacher: VLA, source: dict, dataset: Dataset, src: Path, folder: Path, config: ActDistillConfig,
                 meta: dict, progress: bool) -> tuple[GraphEncapsulation, TeacherCache, dict]:
    """Stage 1 in ``folder`` from the finished stage 1 in ``src``: its extractors (same teacher and graph
    settings, checked), its cached teacher targets for the samples of ``dataset`` it holds (by sample id), and
    new ones computed for the rest. ``folder`` then records ``stage1_from`` and is a finished stage 1 of this
    dataset (a rerun reuses it)."""
    from torch.utils.data import Subset

    if not ((src / ENC_CONFIG).is_file() and (src / CACHE_FILE).is_file()):
        raise UserInputError(f"--stage1-from {src}: not a finished stage-1 folder (it needs {ENC_CONFIG} and "
                             f"{CACHE_FILE}; give OTHER_OUT/{STAGE1_DIR} of a finished distill run)")
    saved = json.loads((src / ENC_CONFIG).read_text())
    for key in ("teacher_hash", "graph"):
        if json.loads(json.dumps(meta[key])) != saved.get(key):
            raise UserInputError(f"--stage1-from {src} was built with {key}={saved.get(key)!r}, this run has "
                                 f"{meta[key]!r}; stage 1 can only be reused for the same teacher and graph settings")
    if not hasattr(dataset, "sample_ids"):
        raise UserInputError(f"--stage1-from needs a dataset that lists its sample ids ({type(dataset).__name__} "
                             "does not); run stage 1 afresh")
    device = teacher.action_mean.device
    enc = build_encapsulation(teacher, config).to(device)
    enc.load_state_dict(load_file(str(src / ENC_WEIGHTS), device=str(device)))
    enc.eval()
    old = TeacherCache.load(src / CACHE_FILE)
    ids = torch.as_tensor(np.asarray(dataset.sample_ids()), dtype=torch.int64)  # (N,) in item order
    held = torch.isin(ids, old.sample_ids)
    new_items = torch.nonzero(~held).flatten().tolist()
    print(f"[distill] stage 1 from {src}: {int(held.sum())} of {len(ids)} samples cached there, "
          f"{len(new_items)} to cache now")
    keep = torch.isin(old.sample_ids, ids)  # only this dataset's samples
    parts = [(old.sample_ids[keep], old.semantics[keep].float(), old.actions[keep], old.final[keep])]
    if new_items:
        fresh = build_teacher_cache(teacher, enc, Subset(dataset, new_items), batch_size=max(4 * config.batch_size, 64),
                                    num_workers=config.num_workers, progress=progress)
        parts.append((fresh.sample_ids, fresh.semantics.float(), fresh.actions, fresh.final))
    cache = TeacherCache(*(torch.cat([p[i] for p in parts]) for i in range(4)))
    folder.mkdir(parents=True, exist_ok=True)
    cache.save(folder / CACHE_FILE)
    save_file({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}, str(folder / ENC_WEIGHTS))
    if (src / "history.json").is_file():
        (folder / "history.json").write_text((src / "history.json").read_text())
    (folder / ENC_CONFIG).write_text(json.dumps({**meta, "stage1_from": str(src),
                                                 "cached_here": len(new_items)}, indent=2))
    return enc, cache, {"status": "reused", "stage1_from": str(src), "cached_here": len(new_items)}


def _stage2(teacher: VLA, source: dict, enc: GraphEncapsulation, cache: TeacherCache, dataset: Dataset,
            budget: float, out: Path, config: ActDistillConfig, progress: bool) -> dict:
    """The student at ``budget``: skipped when its checkpoint exists, else trained in ``out/student-bB.work``
    (resumable) and exported to ``out/student-bB``. Returns the budget's summary entry."""
    folder = budget_dir(out, budget)
    if (folder / CONFIG).is_file():
        return {"out": str(folder), "status": "skipped"}
    work = out / f"{folder.name}.work"
    student, result = train_student(teacher, enc, cache, dataset, budget, work, config, progress=progress)
    history = result["history"]
    recent = {k: float(np.mean([h[k] for h in history[-50:]])) for k in history[-1]} if history else {}
    meta = {"teacher": source,
            "training": {**asdict(config), "budget": budget, "steps_done": len(history), "steps_total": result["steps"],
                         "recent": recent, "num_samples": len(dataset)}}
    export_student(student, folder, meta)
    save_loss_plot(history, folder / "loss.png", f"stage 2: student at budget {budget:g}", STAGE2_YLABEL)
    (folder / "history.json").write_text(json.dumps(history))
    (work / STATE).unlink(missing_ok=True)
    (work / "loss.png").unlink(missing_ok=True)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    return {"out": str(folder), "status": "trained", "steps_per_s": result["steps_per_s"],
            "layers_per_input": student.layers_per_input, "recent": recent}
