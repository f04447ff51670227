"""Dynamic layer router of the ActDistill student (arXiv 2511.18082, Sec. 3.3) and the budget rule.

    router = Router(hidden_size=128, num_layers=12, router_dim=128)
    logits = router(emb)                        # (B, L) one gate logit per decoder layer
    mask = topk_mask(logits, layers_for_budget(0.5, 12))   # (B, L) bool, exactly 6 layers per row

The router reads the embedded input before the first decoder layer (:class:`distill.vla.Embedded`):
vision tokens and real instruction tokens are projected to ``router_dim`` and LayerNorm-ed, each set is
summarised by its mean and its max over tokens, and the four summaries, concatenated, give one logit
per layer through a linear map (the paper's per-layer gate ``g_l = sigma(w_l^T [v; t])``).

Budget rule (this project's addition; the reference code has only a balance loss and no control at
inference): a budget ``b`` in (0, 1] is the fraction of decoder layers run. At inference every input runs
exactly its ``k = floor(b * L)`` highest-scoring layers (``b >= 1/L``), so the executed fraction is
``k / L <= b`` on every input, not only on average. Training uses the same top-k selection (see
:mod:`distill.student`), so the student is trained on exactly the computations it performs at inference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.vla import Embedded
from tasks.errors import UserInputError


def layers_for_budget(budget: float, num_layers: int) -> int:
    """Decoder layers run per input at budget ``budget``: ``floor(b * L)`` (up to float rounding).

    Raises ``ValueError`` naming the valid range when ``budget`` is outside [1/L, 1] (below 1/L no layer
    would run, and running one would exceed the budget).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
            or not 1.0 / num_layers - 1e-9 <= budget <= 1.0:
        raise UserInputError(f"budget {budget!r} out of range for {num_layers} layers; valid: "
                         f"{1.0 / num_layers:.4g} (one layer) to 1.0 (all layers), e.g. 0.25, 0.5 or 0.75")
    return math.floor(budget * num_layers + 1e-9)


def _check_k(k: int, num_layers: int) -> None:
    if not 1 <= k <= num_layers:
        raise UserInputError(f"k={k} layers must be between 1 and the number of layers {num_layers}")


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask (B, L) that is True at the ``k`` largest ``scores`` (B, L) of each row (ties: lowest index)."""
    _check_k(k, scores.shape[-1])
    index = scores.topk(k, dim=-1, sorted=False).indices  # (B, k)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)


def centered_gates(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Soft gates (B, L) ``sigmoid(logit - t)`` with ``t`` each row's (detached) top-k threshold.

    ``t`` is midway between the k-th and (k+1)-th largest logits (the k-th itself when k = L), so the k
    layers the top-k rule picks have gates above 0.5 and the others below. Shifting every logit of a row
    leaves both the selection and these gates unchanged, so the gates cannot all saturate at 1 (or 0) and
    the straight-through gradient keeps reaching the router. Plain ``sigmoid(logit)`` gates do saturate at
    low budgets: the task loss prefers every layer's full update, the budget term ``(mean g - b)^2`` at
    weight 1 does not hold them down, and a saturated sigmoid passes no gradient.
    """
    num_layers = logits.shape[-1]
    _check_k(k, num_layers)
    top = logits.detach().topk(min(k + 1, num_layers), dim=-1).values  # (B, k+1), descending
    threshold = top[:, k - 1] if k == num_layers else 0.5 * (top[:, k - 1] + top[:, k])  # (B,)
    return torch.sigmoid(logits - threshold[:, None])


def masked_mean_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and max over the tokens of ``x`` (B, N, F) where ``mask`` (B, N) is True -> (B, 2F); 0 if none."""
    m = mask[..., None].to(x.dtype)  # (B, N, 1)
    count = m.sum(1)  # (B, 1)
    mean = (x * m).sum(1) / count.clamp_min(1)  # (B, F)
    top = x.masked_fill(~mask[..., None], float("-inf")).amax(1)  # (B, F)
    top = torch.where(count > 0, top, torch.zeros_like(top))
    return torch.cat([mean, top], dim=-1)  # (B, 2F)


class Router(nn.Module):
    """Gate logits (B, L) from pooled vision and language summaries of the embedded input (Sec. 3.3).

    ``init_logit`` is the initial bias of every gate logit (the weights start small, so all layers start
    with nearly equal scores and the order is learned).
    """

    def __init__(self, hidden_size: int, num_layers: int, router_dim: int = 128, init_logit: float = 0.0):
        super().__init__()
        self.num_layers, self.router_dim = num_layers, router_dim
        self.vision_proj = nn.Linear(hidden_size, router_dim, bias=False)  # no bias: the LayerNorm follows, and a
        self.text_proj = nn.Linear(hidden_size, router_dim, bias=False)  # bias would swamp small embeddings
        self.vision_norm = nn.LayerNorm(router_dim)
        self.text_norm = nn.LayerNorm(router_dim)
        self.gate = nn.Linear(4 * router_dim, num_layers)
        nn.init.normal_(self.gate.weight, std=0.01)
        nn.init.constant_(self.gate.bias, init_logit)

    def forward(self, emb: Embedded) -> torch.Tensor:
        h = emb.hidden.to(self.gate.weight.dtype)  # (B, N, D)
        # only the vision and instruction spans are projected: the same values as masking every token
        vision_end, text_start, text_end = emb.spans
        vis = self.vision_norm(self.vision_proj(h[:, :vision_end]))  # (B, V, R), no padding
        vis = torch.cat([vis.mean(1), vis.amax(1)], dim=-1)  # (B, 2R)
        txt = masked_mean_max(self.text_norm(self.text_proj(h[:, text_start:text_end])),
                              emb.text_mask[:, text_start:text_end])  # (B, 2R)
        return self.gate(torch.cat([vis, txt], dim=-1))  # (B, L)


def parse_budgets(text: str) -> list[float]:
    """``"0.25,0.5,0.75"`` -> ``[0.25, 0.5, 0.75]``; each must be a fraction in (0, 1]."""
    try:
        budgets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UserInputError(f"--budgets {text!r} must be comma-separated fractions in (0, 1], e.g. 0.25,0.5,0.75") from exc
    bad = [b for b in budgets if not 0.0 < b <= 1.0]
    if not budgets or bad:
        raise UserInputError(f"--budgets {text!r}: every budget must be a fraction in (0, 1], e.g. 0.25,0.5,0.75")
    return sorted(set(budgets))
