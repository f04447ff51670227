"""Graph-structured encapsulation of a VLA (ActDistill, arXiv 2511.18082, Sec. 3.2).

Every decoder layer ``l`` gets a :class:`GraphSemanticExtractor` that reads the layer's token states
``H_l`` (B, N, D) as a graph and returns a semantic vector ``s_l`` (B, d_s), and a :class:`LayerActionHead`
that predicts the action chunk (B, K, 7) from ``s_l``. Together (:class:`GraphEncapsulation`) they model
how the action prediction forms layer by layer::

    enc = GraphEncapsulation(num_layers=12, hidden_size=128, chunk=8, semantic_dim=512, k=8)
    semantics, actions = enc(states, node_mask)    # states: L x (B, N, D) -> (L, B, d_s), (L, B, K, 7)

Graph construction (Sec. 3.2, Eq. 1-2): affinity ``A_ij = phi(h_i) . psi(h_j) / sqrt(d)`` between tokens;
each token keeps its top-``k`` neighbours with weights ``softmax_j(A_ij)`` over those ``k``, which is the
paper's ``exp(A_ij) / sum_k exp(A_ik)`` computed stably. The public reference code exponentiates the
unscaled dot product, which overflows for hidden sizes in the thousands; here the logits are scaled by
``1/sqrt(d)`` and normalised with a max-shifted softmax. Padding tokens are not nodes: they are masked out
of the affinity (never a neighbour), of the attention and of the pooling, so a padded batch row gives
the same ``s_l`` as the unpadded one. A token may be its own neighbour (the usual GAT self-loop).

Two graph-attention layers (Sec. 3.2) combine the learned GAT attention with the neighbour weights:
``alpha_ij = softmax_j(e_ij + log w_ij)``, i.e. ``w_ij exp(e_ij)`` normalised over the neighbours, each
with a residual connection and a LayerNorm so deep stacks of extractors train stably. Attention pooling
over the real tokens and a two-layer projection give ``s_l``. There is no dropout: stage 1 encapsulates
the clean teacher.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tasks.errors import UserInputError


def knn_graph(h: torch.Tensor, phi: nn.Linear, psi: nn.Linear, node_mask: torch.Tensor,
              k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` neighbours per token by scaled learned affinity (Sec. 3.2, Eq. 1-2).

    ``h`` (B, N, D); ``node_mask`` (B, N) bool, False for padding tokens. Returns ``index`` (B, N, k) int64
    neighbour positions and ``weight`` (B, N, k) float: the softmax of the affinities over the selected
    neighbours, 0 where fewer than ``k`` real tokens exist (such slots point at an arbitrary token).
    """
    q, key = phi(h), psi(h)  # (B, N, d_a)
    scores = q @ key.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, N, N)
    scores = scores.masked_fill(~node_mask[:, None, :], float("-inf"))
    k = min(k, h.shape[1])
    top, index = scores.topk(k, dim=-1)  # (B, N, k)
    weight = torch.softmax(top, dim=-1)  # (B, N, k); -inf slots get 0
    return index, weight


def gather_neighbours(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Node features of the neighbours: ``x`` (B, N, F), ``index`` (B, N, k) -> (B, N, k, F)."""
    b, n, f = x.shape
    offset = (torch.arange(b, device=x.device) * n)[:, None, None]  # (B, 1, 1)
    return x.reshape(b * n, f)[index + offset]  # (B, N, k, F)


class GraphAttentionLayer(nn.Module):
    """Multi-head GAT layer over a fixed top-k neighbourhood, weighted by the affinity prior.

    ``forward(x (B,N,F), index (B,N,k), weight (B,N,k)) -> (B,N,F)``: per head
    ``e_ij = LeakyReLU(a_s . z_i + a_d . z_j)``, ``alpha_ij = softmax_j(e_ij + log w_ij)``,
    ``out_i = sum_j alpha_ij z_j``; heads concatenated, then ``LayerNorm(x + ELU(out))``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise UserInputError(f"graph dim {dim} must be divisible by the number of GAT heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.linear = nn.Linear(dim, dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, self.head_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, self.head_dim))
        self.norm = nn.LayerNorm(dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.normal_(self.att_src, std=self.head_dim ** -0.5)
        nn.init.normal_(self.att_dst, std=self.head_dim ** -0.5)

    def forward(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        z = self.linear(x).view(b, n, self.heads, self.head_dim)  # (B, N, H, F/H)
        e_src = (z * self.att_src).sum(-1)  # (B, N, H)
        e_dst = (z * self.att_dst).sum(-1)  # (B, N, H)
        e_nb = gather_neighbours(e_dst, index)  # (B, N, k, H)
        e = F.leaky_relu(e_src[:, :, None] + e_nb, 0.2)  # (B, N, k, H)
        logits = e + weight.clamp_min(1e-30).log()[..., None]  # (B, N, k, H): prior w_ij * exp(e_ij)
        logits = logits.masked_fill((weight == 0)[..., None], float("-inf"))
        alpha = torch.softmax(logits, dim=2)  # (B, N, k, H)
        z_nb = gather_neighbours(z.reshape(b, n, dim), index).view(b, n, -1, self.heads, self.head_dim)
        out = (alpha[..., None] * z_nb).sum(2).reshape(b, n, dim)  # (B, N, F)
        return self.norm(x + F.elu(out))


class GraphSemanticExtractor(nn.Module):
    """One layer's token states -> semantic vector (Sec. 3.2).

    ``forward(h (B,N,D), node_mask (B,N) bool) -> s (B, semantic_dim)``. Input LayerNorm, projection to
    ``graph_dim``, top-``k`` affinity graph (:func:`knn_graph`), ``gat_layers`` x :class:`GraphAttentionLayer`,
    attention pooling over the real tokens, two-layer projection.
    """

    def __init__(self, hidden_size: int, semantic_dim: int, k: int, graph_dim: int | None = None,
                 gat_heads: int = 4, gat_layers: int = 2):
        super().__init__()
        dim = graph_dim or hidden_size
        self.k = k
        self.in_norm = nn.LayerNorm(hidden_size)
        self.in_proj = nn.Linear(hidden_size, dim)
        self.phi = nn.Linear(dim, dim, bias=False)
        self.psi = nn.Linear(dim, dim, bias=False)
        self.gat = nn.ModuleList([GraphAttentionLayer(dim, gat_heads) for _ in range(gat_layers)])
        self.pool = nn.Linear(dim, 1, bias=False)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, semantic_dim))

    def forward(self, h: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(self.in_norm(h.float()))  # (B, N, F)
        index, weight = knn_graph(x, self.phi, self.psi, node_mask, self.k)  # (B, N, k) each
        for layer in self.gat:
            x = layer(x, index, weight)  # (B, N, F)
        score = self.pool(x).squeeze(-1).masked_fill(~node_mask, float("-inf"))  # (B, N)
        pooled = (torch.softmax(score, dim=1)[..., None] * x).sum(1)  # (B, F)
        return self.proj(pooled)  # (B, d_s)


class LayerActionHead(nn.Module):
    """Semantic vector (B, d_s) -> normalised action chunk (B, K, action_dim) (Sec. 3.2, per-layer head)."""

    def __init__(self, semantic_dim: int, chunk: int, action_dim: int, hidden: int = 256):
        super().__init__()
        self.chunk, self.action_dim = chunk, action_dim
        self.net = nn.Sequential(nn.Linear(semantic_dim, hidden), nn.GELU(), nn.Linear(hidden, chunk * action_dim))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s).view(s.shape[0], self.chunk, self.action_dim)  # (B, K, 7)


class GraphEncapsulation(nn.Module):
    """Per-layer extractors and action heads for an ``num_layers``-layer VLA (Sec. 3.2).

    ``forward(states, node_mask)``: ``states`` is a sequence of L tensors (B, N, D) (the output of each
    decoder layer); returns ``semantics`` (L, B, d_s) and ``actions`` (L, B, K, 7).
    """

    def __init__(self, num_layers: int, hidden_size: int, chunk: int, action_dim: int = 7, *,
                 semantic_dim: int = 512, k: int = 8, graph_dim: int | None = None, gat_heads: int = 4,
                 gat_layers: int = 2, head_hidden: int = 256):
        super().__init__()
        self.num_layers = num_layers
        self.extractors = nn.ModuleList([
            GraphSemanticExtractor(hidden_size, semantic_dim, k, graph_dim, gat_heads, gat_layers)
            for _ in range(num_layers)])
        self.heads = nn.ModuleList([LayerActionHead(semantic_dim, chunk, action_dim, head_hidden)
                                    for _ in range(num_layers)])

    def layer(self, idx: int, h: torch.Tensor, node_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic vector (B, d_s) and action chunk (B, K, 7) of layer ``idx`` from its states ``h`` (B, N, D)."""
        s = self.extractors[idx](h, node_mask)  # (B, d_s)
        return s, self.heads[idx](s)

    def forward(self, states: Sequence[torch.Tensor], node_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(states) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} layer states, got {len(states)}")
        outs = [self.layer(i, h, node_mask) for i, h in enumerate(states)]
        return torch.stack([s for s, _ in outs]), torch.stack([a for _, a in outs])  # (L,B,d_s), (L,B,K,7)
