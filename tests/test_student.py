"""ActDistill stages (distill.student): loss terms, stage-2 training forward, config, stage-2 training.

Also provides the tiny teacher and synthetic demo dataset used by the other distill tests
(``test_routed.py``, ``test_teacher_cache.py``, ``test_distill_cli.py``, ...).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from distill.data import collate
from distill.losses import (
    action_consistency,
    budget_loss,
    hierarchical_loss,
    layer_weights,
    masked_mse,
    relational_structure,
    semantic_alignment,
)
from distill.routed import StudentVLA
from distill.student import (
    ActDistillConfig,
    build_encapsulation,
    routed_states,
    student_fingerprint,
    student_losses,
    train_student,
)
from distill.teacher_cache import build_teacher_cache
from distill.tokenizer import WordTokenizer
from distill.vla import VLA, teacher_config

INSTRUCTIONS = ["pick up the red can", "open the drawer", "put the carrot on the plate please"]


class SyntheticDemos(Dataset):
    """Items in ``tasks.datasets.DemoDataset`` format with random images; sample ids are sparse and shuffled."""

    def __init__(self, n: int = 24, chunk: int = 4, seed: int = 0, order: list[int] | None = None):
        g = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            valid = chunk - (i % 3 == 0)  # some chunks run past the episode end
            self.items.append({
                "agentview": torch.from_numpy(g.integers(0, 256, (128, 128, 3), dtype=np.uint8)),
                "wrist": torch.from_numpy(g.integers(0, 256, (128, 128, 3), dtype=np.uint8)),
                "proprio": torch.from_numpy(g.normal(size=8).astype(np.float32)),
                "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
                "actions": torch.from_numpy(g.uniform(-1, 1, (chunk, 7)).astype(np.float32)),
                "action_mask": torch.arange(chunk) < valid,
                "sample_id": torch.tensor(1000 + 7 * i, dtype=torch.int64),
                "suite": "synthetic",
                "task": f"task{i % len(INSTRUCTIONS)}",
            })
        self.order = list(range(n)) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        return self.items[self.order[i]]


def tiny_teacher(num_layers: int = 4, chunk: int = 4, seed: int = 0) -> VLA:
    """A randomly initialised 32-wide teacher (eval mode)."""
    torch.manual_seed(seed)
    stats = {"mean": [0.0] * 7, "std": [0.5] * 7}
    cfg = teacher_config("small", WordTokenizer.build(INSTRUCTIONS).vocab, stats,
                         {"mean": [0.0] * 8, "std": [1.0] * 8}, hidden_size=32, num_layers=num_layers,
                         num_heads=2, intermediate_size=64, vision_grid=2, stem_channels=8, chunk=chunk)
    return VLA(cfg).eval()


def tiny_config(**overrides) -> ActDistillConfig:
    base = {"semantic_dim": 16, "k": 4, "gat_heads": 2, "head_hidden": 32, "router_dim": 8, "batch_size": 6,
            "steps": 3, "stage1_steps": 3, "warmup": 1, "save_every": 2}
    return ActDistillConfig(**{**base, **overrides})


# -- stage-2 training forward -------------------------------------------------------------------------


def test_straight_through_gate_gradient(teacher, data):
    """The gate gradient is <dL/dh_out, F(h) - h> and skipped layers get no weight gradient."""
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8)
    batch = teacher.prepare([data[0], data[1]])
    emb = student.embed(batch)
    gates = torch.full((2, 4), 0.5, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [True, False, True, False]])
    states = routed_states(student, emb, mask, gates)
    states[-1].sum().backward()
    assert student.layers[1].mlp.down_proj.weight.grad is None or \
        student.layers[1].mlp.down_proj.weight.grad.abs().max() == 0
    assert student.layers[2].mlp.down_proj.weight.grad.abs().max() > 0
    with torch.no_grad():  # last layer is skipped: d(sum h_out)/d g_3 = sum(F_3(h) - h)
        h3 = states[2]
        expected = (student.run_layer(3, h3, emb) - h3).sum(dim=(1, 2))
    torch.testing.assert_close(gates.grad[:, 3], expected, atol=1e-4, rtol=1e-4)


def test_gate_center_option_trains_and_is_in_the_fingerprint(tmp_path, teacher, data):
    config = tiny_config(gate_center=True)
    enc = build_encapsulation(teacher, config).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    student = StudentVLA.from_teacher(teacher, budget=0.25, router_dim=8)
    with torch.no_grad():
        student.router.gate.bias.fill_(50.0)  # saturated: sigmoid gates would all be 1
    batch = collate(student, [data[i] for i in range(4)])
    terms = student_losses(student, enc, batch, cache, config, layer_weights(4, 2.0), noise=0.0)
    assert terms["gate_mean"].item() < 0.75  # 1 of 4 layers above the threshold, 3 below
    terms["loss"].backward()
    assert student.router.gate.bias.grad.abs().sum() > 0
    assert student_fingerprint(0.25, config)["gate_center"] is True
    assert student_fingerprint(0.25, tiny_config())["gate_center"] is False  # a resume may not switch it


def test_the_graph_terms_alone_reach_the_routers_parameters(teacher, data):
    """Each graph-informed term (alignment, structure, per-layer action consistency), back-propagated on its
    own, moves the router: the per-layer supervision shapes the route, not only the final head and budget."""
    config = tiny_config()
    enc = build_encapsulation(teacher, config).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    batch = collate(teacher, [data[i] for i in range(4)])
    for term in ("align", "struct", "action"):
        student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8)
        terms = student_losses(student, enc, batch, cache, config, layer_weights(4, 2.0), noise=0.0)
        terms[term].backward()
        grads = [p.grad for p in student.router.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), term


# -- loss terms against hand computation ---------------------------------------------------------------


def test_layer_weights():
    # (l/3)^2 = 0, 1/9, 4/9, 1: sum 14/9, mean 14/36; the reference normalises to mean 1
    torch.testing.assert_close(layer_weights(4, 2.0), torch.tensor([0.0, 4 / 14, 16 / 14, 36 / 14]))
    torch.testing.assert_close(layer_weights(4, 2.0, "sum"), torch.tensor([0.0, 1 / 14, 4 / 14, 9 / 14]))
    assert layer_weights(12, 2.0).mean().item() == pytest.approx(1.0)
    assert layer_weights(1, 2.0).tolist() == [1.0]
    with pytest.raises(ValueError, match="valid: mean, sum"):
        layer_weights(4, 2.0, "max")


def test_semantic_and_structure_losses_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    # cos: row 0 = 1/sqrt(2), row 1 = 1
    assert semantic_alignment(s, t).item() == pytest.approx((1 - 1 / math.sqrt(2)) / 2)
    # student cosine matrix [[1,0],[0,1]], teacher [[1, 1/sqrt2],[1/sqrt2, 1]]: two off-diagonal errors of 1/2
    assert relational_structure(s, t).item() == pytest.approx(2 * 0.5 / 4)


def test_action_and_budget_losses_by_hand():
    a_s = torch.zeros(1, 2, 1)
    gt = torch.tensor([[[1.0], [3.0]]])
    mask = torch.tensor([[True, False]])
    assert masked_mse(a_s, gt, mask).item() == pytest.approx(1.0)
    a_t = torch.full((1, 2, 1), 2.0)
    prev = torch.full((1, 2, 1), -1.0)
    assert action_consistency(a_s, a_t, gt, mask, prev).item() == pytest.approx(1.0 + 4.0 + 1.0)
    assert action_consistency(a_s, a_t, gt, mask, None).item() == pytest.approx(5.0)
    assert budget_loss(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 0.5).item() == pytest.approx(0.0625)


def test_hierarchical_loss_by_hand():
    # two layers, batch of two, semantic dim 2, chunk of one 1-D action; weights (0.5, 2)
    s_s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    s_t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    a_s = torch.tensor([[[[1.0]], [[1.0]]], [[[2.0]], [[0.0]]]])  # (L=2, B=2, K=1, A=1)
    a_t = torch.zeros(2, 2, 1, 1)
    gt = torch.ones(2, 1, 1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    w = torch.tensor([0.5, 2.0])
    out = hierarchical_loss(s_s, s_t, a_s, a_t, gt, mask, w, alpha=2.0, beta=3.0, eta=0.5)
    # align: layer 0 identical (0); layer 1 cos = 0 and 1 -> mean 0.5; weighted 2 * 0.5 = 1
    assert out["align"].item() == pytest.approx(1.0)
    # struct: layer 0 equal matrices (0); layer 1 student [[1,1],[1,1]] vs teacher [[1,0],[0,1]]: mean 2/4
    assert out["struct"].item() == pytest.approx(2.0 * 0.5)
    # action: layer 0 = mse to gt 0 + to teacher 1 = 1 (no previous layer), weighted 0.5;
    # layer 1 = to gt (1 + 1)/2 = 1, to teacher (4 + 0)/2 = 2, to layer 0 (1 + 1)/2 = 1 -> 4, weighted 8
    assert out["action"].item() == pytest.approx(0.5 + 8.0)
    assert out["total"].item() == pytest.approx(2.0 * (1.0 + 0.5 * 1.0) + 3.0 * 8.5)


def test_hierarchical_loss_combines_weighted_terms():
    torch.manual_seed(0)
    s_s, s_t = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    a_s, a_t, gt = torch.randn(3, 4, 2, 7), torch.randn(3, 4, 2, 7), torch.randn(4, 2, 7)
    mask = torch.ones(4, 2, dtype=torch.bool)
    w = layer_weights(3, 2.0)
    out = hierarchical_loss(s_s, s_t, a_s, a_t, gt, mask, w, alpha=2.0, beta=3.0, eta=0.5)
    align = sum(w[i] * (1 - F.cosine_similarity(s_s[i], s_t[i], dim=-1)).mean() for i in range(3))
    action = sum(w[i] * (F.mse_loss(a_s[i], gt) + F.mse_loss(a_s[i], a_t[i])
                         + (F.mse_loss(a_s[i], a_s[i - 1]) if i else 0)) for i in range(3))
    torch.testing.assert_close(out["align"], align)
    torch.testing.assert_close(out["action"], action)
    torch.testing.assert_close(out["total"], 2.0 * (out["align"] + 0.5 * out["struct"]) + 3.0 * action)


def test_config_validation():
    assert (ActDistillConfig().alpha, ActDistillConfig().beta, ActDistillConfig().eta, ActDistillConfig().gamma,
            ActDistillConfig().k, ActDistillConfig().semantic_dim) == (1.0, 1.0, 0.5, 2.0, 8, 512)
    with pytest.raises(ValueError, match="eta"):
        ActDistillConfig(eta=-1)
    with pytest.raises(ValueError, match="semantic_dim"):
        ActDistillConfig(semantic_dim=0)
    with pytest.raises(ValueError, match="unknown ActDistill config keys"):
        ActDistillConfig.from_dict({"alpah": 1.0})


# -- stage 2 ------------------------------------------------------------------------------------------


def test_student_losses_start_at_teacher_and_training_moves_router(tmp_path, teacher, data):
    config = tiny_config()
    enc = build_encapsulation(teacher, config).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    full = StudentVLA.from_teacher(teacher, budget=1.0, router_dim=8)
    batch = collate(full, [data[i] for i in range(6)])
    with torch.no_grad():
        terms = student_losses(full, enc, batch, cache, config, layer_weights(4, 2.0), noise=0.0)
    # at budget 1 the student is the teacher and shares its extractors: semantic terms vanish
    assert terms["align"].item() == pytest.approx(0.0, abs=2e-3)
    assert terms["struct"].item() == pytest.approx(0.0, abs=2e-3)
    student, result = train_student(teacher, enc, cache, data, 0.5, tmp_path / "work", config, progress=False)
    assert len(result["history"]) == config.steps
    assert all(math.isfinite(h["loss"]) for h in result["history"])
    assert not torch.equal(student.router.gate.bias, torch.zeros(4))
    assert (tmp_path / "work" / "training_state.pt").is_file()  # written at step 2 and at the end


def test_graph_lr_zero_freezes_the_students_extractors(tmp_path, teacher, data):
    """--graph-lr 0: stage 2 moves the student (and its router) but leaves the extractors at stage 1's weights;
    the default rate trains them."""
    enc = build_encapsulation(teacher, tiny_config()).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    moved = {}
    for name, lr in (("frozen", 0.0), ("trained", 3e-3)):
        config = tiny_config(graph_lr=lr)
        student, _ = train_student(teacher, enc, cache, data, 0.5, tmp_path / name, config, progress=False)
        saved = torch.load(tmp_path / name / "training_state.pt", weights_only=False)["modules"]["enc"]
        moved[name] = any(not torch.equal(saved[k], v) for k, v in enc.state_dict().items())
        assert not torch.equal(student.router.gate.bias, torch.zeros(4))
    assert moved == {"frozen": False, "trained": True}
    with pytest.raises(ValueError, match="graph_lr must be >= 0"):
        ActDistillConfig(graph_lr=-1.0)


def test_router_only_ablation_has_no_graph_terms(teacher, data):
    config = tiny_config(graph_supervision=False)
    cache = build_teacher_cache(teacher, build_encapsulation(teacher, config).eval(), data, batch_size=12)
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8)
    batch = collate(student, [data[i] for i in range(4)])
    terms = student_losses(student, None, batch, cache, config, layer_weights(4, 2.0), noise=1.0)
    assert terms["align"].item() == terms["action"].item() == 0.0
    assert terms["loss"].item() == pytest.approx(terms["final"].item() + terms["budget"].item())
    terms["loss"].backward()
    assert student.router.gate.weight.grad.abs().sum() > 0


def test_stage2_shift_augmentation_changes_the_inputs_not_the_targets(tmp_path, teacher, data):
    config = tiny_config()
    enc = build_encapsulation(teacher, config).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    plain = train_student(teacher, enc, cache, data, 0.5, tmp_path / "plain", config, progress=False)[1]
    shifted = train_student(teacher, enc, cache, data, 0.5, tmp_path / "shift",
                            tiny_config(shift_pad=3), progress=False)[1]
    again = train_student(teacher, enc, cache, data, 0.5, tmp_path / "again",
                          tiny_config(shift_pad=3), progress=False)[1]
    losses = [[h["loss"] for h in r["history"]] for r in (plain, shifted, again)]
    assert losses[0] != losses[1]  # the student saw shifted images
    assert losses[1] == pytest.approx(losses[2])  # and the shifts are seeded


def test_stage2_seed_changes_stage2_only_and_is_in_the_fingerprint_when_set(tmp_path, teacher, data):
    base, other = tiny_config(), tiny_config(stage2_seed=7)
    assert base.graph_settings() == other.graph_settings()  # one stage-1 folder serves both
    assert (base.student_seed, other.student_seed) == (base.seed, 7)
    assert student_fingerprint(0.5, base)["stage2_seed"] is None
    assert student_fingerprint(0.5, other)["stage2_seed"] == 7
    enc = build_encapsulation(teacher, base).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    runs = [train_student(teacher, enc, cache, data, 0.5, tmp_path / name, config, progress=False)[1]
            for name, config in (("a", base), ("b", other), ("c", tiny_config(stage2_seed=base.seed)))]
    losses = [[h["loss"] for h in r["history"]] for r in runs]
    assert losses[0] != losses[1] and losses[0] == pytest.approx(losses[2])


def test_final_teacher_weight_scales_only_the_final_heads_teacher_term(teacher, data):
    base = tiny_config()
    enc = build_encapsulation(teacher, base).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8)
    batch = collate(student, [data[i] for i in range(6)])
    final = {}
    for w in (None, 0.0, 5.0):
        config = tiny_config(final_teacher_weight=w)
        assert config.graph_settings() == base.graph_settings()  # stage 1 is shared
        with torch.no_grad():
            final[w] = student_losses(student, enc, batch, cache, config, layer_weights(4, 2.0), noise=0.0)["final"]
    gt, teach = final[0.0], final[None] - final[0.0]  # weight 1 (teacher_weight) by default
    assert teach.item() > 0  # half the layers run: the student's chunk is not the teacher's
    torch.testing.assert_close(final[5.0], gt + 5.0 * teach)
    assert student_fingerprint(0.5, base)["final_teacher_weight"] is None
    assert student_fingerprint(0.5, tiny_config(final_teacher_weight=5.0))["final_teacher_weight"] == 5.0
    with pytest.raises(ValueError, match="final_teacher_weight must be >= 0, got -1"):
        tiny_config(final_teacher_weight=-1.0)
