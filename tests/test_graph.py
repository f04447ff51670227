"""Graph semantic extractor: scaled affinity, top-k neighbours, padding is not a node, per-layer heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.graph import GraphEncapsulation, GraphSemanticExtractor, gather_neighbours, knn_graph


def _identity_linear(dim: int) -> nn.Linear:
    lin = nn.Linear(dim, dim, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(dim))
    return lin


def test_knn_graph_by_hand():
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]]])  # (1, 4, 2)
    mask = torch.tensor([[True, True, True, False]])  # last token is padding
    eye = _identity_linear(2)
    index, weight = knn_graph(h, eye, eye, mask, k=2)
    # scores row 0: [1, 0, 1] / sqrt(2) over the real tokens -> neighbours {0, 2} with equal weights
    assert set(index[0, 0].tolist()) == {0, 2}
    torch.testing.assert_close(weight[0, 0], torch.tensor([0.5, 0.5]))
    # row 2: scores [1, 1, 2] / sqrt(2): itself first, then token 0 or 1
    assert index[0, 2, 0].item() == 2
    w = torch.softmax(torch.tensor([2.0, 1.0]) / math.sqrt(2), 0)
    torch.testing.assert_close(weight[0, 2], w)
    assert 3 not in index[0, :3].flatten().tolist(), "a padding token must never be a neighbour"


def test_knn_weights_zero_when_fewer_real_tokens_than_k():
    h = torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, False, False, False]])
    eye = _identity_linear(4)
    _, weight = knn_graph(h, eye, eye, mask, k=4)
    assert (weight[0, :, 2:] == 0).all()
    torch.testing.assert_close(weight.sum(-1), torch.ones(1, 5))


def test_affinity_is_scaled_and_does_not_overflow():
    """Hidden states of large norm in a wide model: exp of the unscaled dot product would overflow."""
    torch.manual_seed(0)
    extractor = GraphSemanticExtractor(hidden_size=256, semantic_dim=8, k=4)
    h = 1e3 * torch.randn(2, 12, 256)
    s = extractor(h, torch.ones(2, 12, dtype=torch.bool))
    assert torch.isfinite(s).all()


def test_gather_neighbours():
    x = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    index = torch.tensor([[[2], [0], [1]], [[1], [1], [0]]])
    assert gather_neighbours(x, index).flatten().tolist() == [2, 0, 1, 4, 4, 3]


def test_padding_tokens_do_not_change_the_semantics():
    torch.manual_seed(0)
    extractor = GraphSemanticExtractor(hidden_size=16, semantic_dim=8, k=3, gat_heads=2).eval()
    h = torch.randn(1, 6, 16)
    padded = torch.cat([h[:, :4], 100 * torch.randn(1, 3, 16), h[:, 4:]], dim=1)  # 3 padding tokens inside
    mask = torch.tensor([[True] * 4 + [False] * 3 + [True] * 2])
    s = extractor(h, torch.ones(1, 6, dtype=torch.bool))
    s_padded = extractor(padded, mask)
    torch.testing.assert_close(s, s_padded, atol=1e-5, rtol=1e-5)


def test_extractor_is_trainable_through_the_affinity():
    torch.manual_seed(0)
    extractor = GraphSemanticExtractor(hidden_size=16, semantic_dim=8, k=3, gat_heads=2)
    s = extractor(torch.randn(3, 7, 16), torch.ones(3, 7, dtype=torch.bool))
    s.pow(2).sum().backward()
    for name in ("phi", "psi", "in_proj", "pool"):
        assert getattr(extractor, name).weight.grad.abs().sum() > 0, name


def test_encapsulation_shapes():
    enc = GraphEncapsulation(num_layers=3, hidden_size=16, chunk=4, semantic_dim=8, k=2, gat_heads=2)
    states = [torch.randn(2, 5, 16) for _ in range(3)]
    semantics, actions = enc(states, torch.ones(2, 5, dtype=torch.bool))
    assert semantics.shape == (3, 2, 8) and actions.shape == (3, 2, 4, 7)


def test_graph_attention_layer_by_hand():
    """One head, identity projection, the pre-norm output: alpha_ij = softmax_j(LeakyReLU(a_s.z_i + a_d.z_j)
    + log w_ij), out_i = x_i + ELU(sum_j alpha_ij z_j)."""
    from distill.graph import GraphAttentionLayer

    layer = GraphAttentionLayer(2, heads=1)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.eye(2))
        layer.att_src.copy_(torch.tensor([[-1.0, 0.0]]))
        layer.att_dst.copy_(torch.tensor([[0.0, 1.0]]))
    layer.norm = nn.Identity()
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    index = torch.tensor([[[0, 1], [0, 1]]])
    weight = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
    out = layer(x, index, weight)
    # e_src = (-1, 0), e_dst = (0, 2). Node 0: LeakyReLU(-1 + 0) = -0.2, LeakyReLU(-1 + 2) = 1, equal priors
    a0 = torch.softmax(torch.tensor([-0.2, 1.0]), 0)
    # node 1: LeakyReLU(0 + 0) = 0, LeakyReLU(0 + 2) = 2, priors 0.25 and 0.75
    a1 = torch.softmax(torch.tensor([0.0, 2.0]) + torch.tensor([0.25, 0.75]).log(), 0)
    expected = torch.stack([x[0, 0] + (a0[0] * x[0, 0] + a0[1] * x[0, 1]),  # ELU is the identity here (> 0)
                            x[0, 1] + (a1[0] * x[0, 0] + a1[1] * x[0, 1])])
    torch.testing.assert_close(out[0], expected)
    # a zero-weight neighbour (fewer real tokens than k) gets no attention at all
    out_masked = layer(x, index, torch.tensor([[[1.0, 0.0], [0.25, 0.75]]]))
    torch.testing.assert_close(out_masked[0, 0], x[0, 0] + x[0, 0])
