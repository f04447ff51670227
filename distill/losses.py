"""Loss terms of ActDistill's hierarchical graph-informed supervision (arXiv 2511.18082, Sec. 3.4).

Per decoder layer ``l`` with depth weight ``w_l`` (:func:`layer_weights`)::

    L_sem_l = (1 - cos(s_S, s_T)).mean + eta * MSE(C(s_S), C(s_T))     semantic alignment + relational structure
    L_act_l = MSE_m(a_S_l, a_gt) + MSE(a_S_l, a_T_l) + MSE(a_S_l, sg(a_S_{l-1}))     action consistency
    L = sum_l w_l (alpha L_sem_l + beta L_act_l) + L_final + lambda_b * L_budget

``C(s)`` is the batch's pairwise cosine-similarity matrix, ``MSE_m`` is masked by the chunk's valid steps,
``sg`` stops the gradient (the previous layer is the anchor, not pulled towards the current one), and layer 0
has no previous-layer term (the reference code compares it with zeros, which pulls the first layer's
prediction towards the mean action). ``L_final`` is the student's own action head against the ground
truth plus, weighted, against the teacher's final chunk; ``L_budget = (mean gate - b)^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.errors import UserInputError

DEPTH_NORMS = ("mean", "sum")


def layer_weights(num_layers: int, gamma: float, norm: str = "mean") -> torch.Tensor:
    """Depth weights (L,) ``w_l = (l / (L-1))^gamma`` (Sec. 3.4), normalised to mean 1 (``norm="mean"``, as
    the reference code does) or to sum 1 (``"sum"``, what this project used before: with the same alpha and
    beta every graph-informed term is then L times weaker against the final and budget terms); ones for L = 1.
    """
    if num_layers < 1:
        raise UserInputError(f"num_layers must be >= 1, got {num_layers}")
    if norm not in DEPTH_NORMS:
        raise UserInputError(f"unknown depth-weight normalisation {norm!r}; valid: {', '.join(DEPTH_NORMS)}")
    if num_layers == 1:
        return torch.ones(1)
    w = (torch.arange(num_layers, dtype=torch.float64) / (num_layers - 1)) ** gamma  # (L,)
    return (w / (w.mean() if norm == "mean" else w.sum())).float()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of chunks (B, K, A) over the steps where ``mask`` (B, K) is True (all if None)."""
    err = (pred - target).pow(2)  # (B, K, A)
    if mask is None:
        return err.mean()
    m = mask[..., None].to(err.dtype)  # (B, K, 1)
    return (err * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1)


def semantic_alignment(s_student: torch.Tensor, s_teacher: torch.Tensor) -> torch.Tensor:
    """Instance-level alignment ``mean(1 - cos(s_S, s_T))`` of semantic vectors (B, d) (Sec. 3.4)."""
    return (1.0 - F.cosine_similarity(s_student, s_teacher, dim=-1)).mean()


def cosine_matrix(s: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities (B, B) of the rows of ``s`` (B, d)."""
    z = F.normalize(s, dim=-1, eps=1e-8)  # (B, d)
    return z @ z.T  # (B, B)


def relational_structure(s_student: torch.Tensor, s_teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the batch's pairwise cosine matrices of student and teacher semantics (Sec. 3.4)."""
    return F.mse_loss(cosine_matrix(s_student), cosine_matrix(s_teacher))


def action_consistency(a_student: torch.Tensor, a_teacher: torch.Tensor, a_gt: torch.Tensor,
                       mask: torch.Tensor, a_prev: torch.Tensor | None) -> torch.Tensor:
    """Layer action consistency (Sec. 3.4): to ground truth (masked), to the teacher's same-layer chunk, and
    to the student's previous-layer chunk (gradient stopped; skipped when ``a_prev`` is None). Chunks (B, K, 7).
    """
    loss = masked_mse(a_student, a_gt, mask) + masked_mse(a_student, a_teacher)
    if a_prev is not None:
        loss = loss + masked_mse(a_student, a_prev.detach())
    return loss


def budget_loss(gates: torch.Tensor, budget: float) -> torch.Tensor:
    """``(mean(gates) - budget)^2`` for soft gate probabilities (B, L) in [0, 1]."""
    return (gates.mean() - budget) ** 2


def hierarchical_loss(
    s_student: torch.Tensor, s_teacher: torch.Tensor, a_student: torch.Tensor, a_teacher: torch.Tensor,
    a_gt: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, *, alpha: float, beta: float, eta: float,
) -> dict[str, torch.Tensor]:
    """Depth-weighted semantic and action losses over all layers (Sec. 3.4).

    ``s_*`` (L, B, d_s), ``a_*`` (L, B, K, 7), ``a_gt`` (B, K, 7), ``mask`` (B, K) bool, ``weights`` (L,).
    Returns scalars ``align``, ``struct``, ``action`` (each the depth-weighted sum of its per-layer term) and
    ``total = alpha * (align + eta * struct) + beta * action``.
    """
    align = struct = action = s_student.new_zeros(())
    for l in range(s_student.shape[0]):
        w = weights[l]
        align = align + w * semantic_alignment(s_student[l], s_teacher[l])
        struct = struct + w * relational_structure(s_student[l], s_teacher[l])
        prev = a_student[l - 1] if l > 0 else None
        action = action + w * action_consistency(a_student[l], a_teacher[l], a_gt, mask, prev)
    total = alpha * (align + eta * struct) + beta * action
    return {"align": align, "struct": struct, "action": action, "total": total}
