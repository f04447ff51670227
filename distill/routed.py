"""The routed student: a teacher-shaped :class:`distill.vla.VLA` plus a :class:`distill.router.Router`, its
inference policy and its checkpoint (arXiv 2511.18082, Sec. 3.3-3.5).

    from distill.routed import StudentVLA, export_student, load_student_policy
    student = StudentVLA.from_teacher(teacher, budget=0.5)          # the teacher's weights, a fresh router
    export_student(student, "runs/student-b0.5")                    # inference weights only
    policy = load_student_policy("runs/student-b0.5")               # = distill.load_policy for this kind

Every input runs its top-``k`` router-scored decoder layers (``k = floor(b L)``, :func:`layers_for_budget`);
a skipped layer is not computed. The checkpoint holds the teacher-shaped weights, the router and the budget
rule, nothing graph-related; its kind is ``routed_student`` (:data:`distill.checkpoint.POLICY_KINDS`).
Training the student is :mod:`distill.student`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from distill.checkpoint import (
    CONFIG,
    WEIGHTS,
    VLAPolicy,
    check_state_dict,
    checkpoint_kind,
    file_hash,
    load_weights,
    parse_dtype,
    read_config,
    save_checkpoint,
)
from distill.router import Router, layers_for_budget, topk_mask
from distill.vla import VLA, Embedded, VLAConfig
from tasks.errors import UserInputError

STUDENT_KIND = "routed_student"  # the registry name of distill.checkpoint.POLICY_KINDS
BUDGET_RULE = "topk"


class RoutedMixin:
    """The router and budget rule of a routed student, over any model with the VLA interface (``embed``,
    ``run_layers``, ``head``, ``num_layers``, ``config.hidden_size``): :class:`StudentVLA` over the reference
    :class:`VLA`, :class:`distill.hf_vla.HFStudentVLA` over a real VLM backbone."""

    def attach_router(self, budget: float, router_dim: int) -> None:
        """Add the :class:`Router` (``self.router``) and the budget (``budget``, ``layers_per_input``)."""
        self.budget = float(budget)
        self.layers_per_input = layers_for_budget(budget, self.num_layers)
        # soft gates start at the budget, so the budget term starts near 0 (the initial order is random)
        init_logit = math.log(min(budget, 0.99) / (1 - min(budget, 0.99)))
        self.router = Router(self.config.hidden_size, self.num_layers, router_dim, init_logit)

    def route(self, emb: Embedded) -> torch.Tensor:
        """Layers to run (B, L) bool: the top ``layers_per_input`` router scores of each row."""
        return topk_mask(self.router(emb), self.layers_per_input)

    def forward(self, batch: Mapping[str, torch.Tensor], layer_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised action chunk (B, K, 7); skipped layers are not computed (see :meth:`VLA.run_layers`)."""
        emb = self.embed(batch)
        mask = self.route(emb) if layer_mask is None else layer_mask
        return self.head(self.run_layers(emb.hidden, emb, mask), emb)


class StudentVLA(RoutedMixin, VLA):
    """A :class:`VLA` plus a :class:`Router`; every input runs its ``layers_per_input`` best-scored layers.

    ``forward(batch, layer_mask=None)`` routes when no mask is given. ``route(emb) -> (B, L) bool``.
    The state dict is the teacher's plus ``router.*``, so the teacher's weights load directly.
    """

    def __init__(self, config: VLAConfig, budget: float, router_dim: int = 128):
        super().__init__(config)
        self.attach_router(budget, router_dim)

    @classmethod
    def from_teacher(cls, teacher: VLA, budget: float, router_dim: int = 128) -> StudentVLA:
        """A student whose VLA weights are a copy of ``teacher``'s and whose router is freshly initialised; for an
        :class:`distill.hf_vla.HFVLA` teacher, an :class:`distill.hf_vla.HFStudentVLA`."""
        if not isinstance(teacher, VLA):
            from distill.hf_vla import HFVLA, HFStudentVLA

            if not isinstance(teacher, HFVLA):
                raise UserInputError(f"cannot route a {type(teacher).__name__}; teachers are VLA or HFVLA models")
            return HFStudentVLA.from_teacher(teacher, budget, router_dim)
        student = cls(VLAConfig.from_dict(teacher.config.to_dict()), budget, router_dim)
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not name.startswith("router.") for name in missing):
            raise ValueError(f"teacher weights do not fit the student: missing {missing}, unexpected {unexpected}")
        return student.to(next(teacher.parameters()).device)


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
        """Normalised chunks (B, K, 7) of the routed forward and, per row, the layers it ran (ascending)."""
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
        "kind": getattr(student, "CHECKPOINT_KIND", STUDENT_KIND),  # hf_routed_student for an HF backbone
        "student": {"budget": student.budget, "rule": BUDGET_RULE, "layers_per_input": student.layers_per_input,
                    "num_layers": student.num_layers, "router": {"router_dim": student.router.router_dim}},
    }
    return save_checkpoint(path, student, {**dict(meta or {}), **student_meta})


def load_student(path: str | Path, device: str | torch.device = "cpu") -> tuple[StudentVLA, dict]:
    """The :class:`StudentVLA` (float32, eval) stored at ``path`` and its config.json."""
    config = read_config(path)
    if checkpoint_kind(config, Path(path) / CONFIG) != STUDENT_KIND or "student" not in config:
        raise UserInputError(f"{Path(path) / CONFIG} is not a routed-student checkpoint (kind={config.get('kind')!r}); "
                         "open teachers with distill.load_policy or distill.checkpoint.load_vla")
    spec = config["student"]
    if spec.get("rule") != BUDGET_RULE:
        raise UserInputError(f"unknown budget rule {spec.get('rule')!r} in {Path(path) / CONFIG}; valid: {BUDGET_RULE}")
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
