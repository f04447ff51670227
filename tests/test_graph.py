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
