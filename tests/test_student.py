"""Routed student, loss terms, teacher cache, stage-2 training forward, budget rule and export.

Also provides the tiny teacher and synthetic demo dataset used by ``test_distill_cli.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import Dataset

from distill import load_policy
from distill.checkpoint import save_checkpoint
from distill.losses import (
    action_consistency,
    budget_loss,
    hierarchical_loss,
    layer_weights,
    masked_mse,
    relational_structure,
    semantic_alignment,
)
from distill.router import centered_gates, layers_for_budget, topk_mask
from distill.student import (
    ActDistillConfig,
    StudentPolicy,
    StudentVLA,
    TeacherCache,
    build_encapsulation,
    build_teacher_cache,
    collate,
    export_student,
    routed_states,
    student_losses,
    teacher_states,
    train_student,
)
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


@pytest.fixture(scope="module")
def teacher() -> VLA:
    return tiny_teacher()


@pytest.fixture(scope="module")
def data() -> SyntheticDemos:
    return SyntheticDemos()


# -- routed student -------------------------------------------------------------------------------------


def test_all_gates_open_equals_teacher_exactly(teacher, data):
    student = StudentVLA.from_teacher(teacher, budget=1.0, router_dim=8).eval()
    batch = teacher.prepare([data[i] for i in range(5)])
    with torch.no_grad():
        assert torch.equal(student(batch), teacher(batch))
    policy = StudentPolicy(student)
    assert np.array_equal(policy.predict([data[0]]), _teacher_policy(teacher).predict([data[0]]))
    assert policy.last_info["executed_layers"] == [0, 1, 2, 3]


def test_router_span_path_equals_the_masked_path(teacher, data):
    from distill.router import masked_mean_max

    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8).eval()
    torch.nn.init.normal_(student.router.gate.weight, std=3.0)
    batch = teacher.prepare([data[i] for i in range(6)])  # instructions of different lengths: padded text
    with torch.no_grad():
        emb = student.embed(batch)
        assert not bool(emb.text_mask[:, emb.spans[1]:emb.spans[2]].all()), "test needs padded instructions"
        sliced = student.router(emb)
        r = student.router  # reference: project every token, keep the masked ones
        vis = masked_mean_max(r.vision_norm(r.vision_proj(emb.hidden)), emb.vision_mask)
        txt = masked_mean_max(r.text_norm(r.text_proj(emb.hidden)), emb.text_mask)
        masked = r.gate(torch.cat([vis, txt], dim=-1))
    torch.testing.assert_close(sliced, masked, atol=1e-5, rtol=1e-5)
    assert emb.select(torch.tensor([1, 2])).spans == emb.spans


def test_single_row_model_call_equals_the_masked_path(teacher, data):
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8).eval()
    torch.nn.init.normal_(student.router.gate.weight, std=30.0)  # routes differ between inputs
    policy = StudentPolicy(student)
    routes = set()
    for i in range(6):
        batch = teacher.prepare([data[i]])
        chunk, layers = policy.model_call(batch)  # the one-row path: no mask
        with torch.no_grad():
            mask = student.route(student.embed(batch))
            assert torch.equal(chunk, student(batch, mask))
        assert layers == [mask[0].nonzero().flatten().tolist()] and len(layers[0]) == 2
        routes.add(tuple(layers[0]))
    assert len(routes) > 1, "test needs inputs with different routes"
    both = teacher.prepare([data[0], data[1]])  # the batched path agrees row by row
    chunk, layers = policy.model_call(both)
    for row in range(2):
        one, one_layers = policy.model_call(teacher.prepare([data[row]]))
        torch.testing.assert_close(chunk[row], one[0], atol=1e-5, rtol=1e-5)
        assert layers[row] == one_layers[0]
    assert policy.mean_executed_fraction == 0.5


def _teacher_policy(teacher: VLA):
    from distill.checkpoint import VLAPolicy

    return VLAPolicy(teacher)


def test_routed_execution_equals_masked_dense_reference(teacher, data):
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8).eval()
    torch.nn.init.normal_(student.router.gate.weight, std=30.0)  # make the routing differ between rows
    batch = teacher.prepare([data[i] for i in range(6)])
    with torch.no_grad():
        emb = student.embed(batch)
        mask = student.route(emb)  # (B, L)
        assert mask.sum(1).tolist() == [2] * 6
        assert len({tuple(r) for r in mask.tolist()}) > 1, "test needs rows with different routes"
        h = emb.hidden
        for idx in range(student.num_layers):  # dense reference: every layer, then pick per row
            h = torch.where(mask[:, idx, None, None], student.run_layer(idx, h, emb), h)
        dense = student.head(h, emb)
        routed = student(batch)
        # the training forward (straight-through gates) has the same values
        states = routed_states(student, emb, mask, torch.sigmoid(student.router(emb)))
        train_out = student.head(states[-1], emb)
    torch.testing.assert_close(routed, dense, atol=1e-5, rtol=1e-5)
    assert torch.equal(train_out, dense)


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


def test_budget_rule():
    assert [layers_for_budget(b, 12) for b in (0.25, 0.5, 0.75, 1.0, 1 / 12, 0.3)] == [3, 6, 9, 12, 1, 3]
    for bad in (0.0, -0.1, 1.5, 0.08):
        with pytest.raises(ValueError, match="budget"):
            layers_for_budget(bad, 12)
    mask = topk_mask(torch.tensor([[0.1, 0.9, 0.5, -1.0], [3.0, 2.0, 1.0, 0.0]]), 2)
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]


def test_centered_gates_follow_the_topk_threshold_and_do_not_saturate():
    logits = torch.tensor([[0.1, 0.9, 0.5, -1.0], [30.0, 20.0, 10.0, 0.0]], requires_grad=True)
    gates = centered_gates(logits, 2)
    # threshold midway between the 2nd and 3rd largest logits: 0.3 and 15.0
    torch.testing.assert_close(gates.detach(), torch.sigmoid(logits.detach() - torch.tensor([[0.3], [15.0]])))
    assert ((gates > 0.5) == topk_mask(logits.detach(), 2)).all()
    # a row shifted far up (plain sigmoid would give gates of 1 and no gradient) keeps its gates and gradient
    shifted = centered_gates(logits.detach() + 100.0, 2)
    torch.testing.assert_close(shifted, gates.detach())
    gates[:, 1].sum().backward()
    assert logits.grad[0, 1] > 0.2 and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(centered_gates(torch.tensor([[1.0, 2.0]]), 2), torch.sigmoid(torch.tensor([[0.0, 1.0]])))
    with pytest.raises(ValueError, match="k=5 layers"):
        centered_gates(logits, 5)


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
    from distill.student import _student_fingerprint
    assert _student_fingerprint(0.25, config)["gate_center"] is True
    assert "gate_center" not in _student_fingerprint(0.25, tiny_config())  # old runs resume unchanged


def test_inference_budget_holds_on_held_out_inputs(teacher):
    student = StudentVLA.from_teacher(teacher, budget=0.75, router_dim=8).eval()
    torch.nn.init.normal_(student.router.gate.weight, std=30.0)
    policy = StudentPolicy(student)
    held_out = SyntheticDemos(n=9, seed=5)
    for i in range(len(held_out)):
        policy.reset()
        policy.act(held_out[i])
        assert len(policy.last_info["executed_layers"]) == 3
    assert policy.mean_executed_fraction <= 0.75
    assert policy.mean_executed_fraction == pytest.approx(3 / 4)


# -- loss terms against hand computation ---------------------------------------------------------------


def test_layer_weights():
    w = layer_weights(4, 2.0)
    expected = torch.tensor([0.0, 1 / 9, 4 / 9, 1.0])
    torch.testing.assert_close(w, expected / expected.sum())
    assert layer_weights(1, 2.0).tolist() == [1.0]


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


# -- teacher cache -------------------------------------------------------------------------------------


def test_teacher_cache_is_invariant_to_data_order(teacher, data):
    enc = build_encapsulation(teacher, tiny_config()).eval()
    shuffled = SyntheticDemos(order=list(np.random.default_rng(3).permutation(len(data))))
    a = build_teacher_cache(teacher, enc, data, batch_size=5)
    b = build_teacher_cache(teacher, enc, shuffled, batch_size=7)
    assert torch.equal(a.sample_ids, b.sample_ids)
    ids = torch.tensor([it["sample_id"] for it in reversed(data.items)])
    for x, y in zip(a.lookup(ids), b.lookup(ids)):
        torch.testing.assert_close(x, y, atol=2e-3, rtol=2e-3)
    # the looked-up targets are those of the right sample
    item = data.items[5]
    one = collate(teacher, [item])
    with torch.no_grad():
        emb, states, final = teacher_states(teacher, one.inputs)
        s, act = enc(states, emb.attention_mask)
    s_c, a_c, f_c = a.lookup(one.sample_ids)
    torch.testing.assert_close(s_c, s, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(a_c, act, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_c, final, atol=1e-5, rtol=1e-5)
    with pytest.raises(KeyError, match="not in the teacher cache"):
        a.lookup(torch.tensor([1001]))


def test_teacher_cache_roundtrip_and_duplicates(tmp_path, teacher, data):
    enc = build_encapsulation(teacher, tiny_config()).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    cache.save(tmp_path / "c.safetensors")
    loaded = TeacherCache.load(tmp_path / "c.safetensors")
    assert torch.equal(loaded.semantics, cache.semantics) and torch.equal(loaded.final, cache.final)
    with pytest.raises(ValueError, match="unique"):
        TeacherCache(torch.tensor([3, 3]), cache.semantics[:2], cache.actions[:2], cache.final[:2])


# -- stage 2 and export --------------------------------------------------------------------------------


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
    assert (tmp_path / "work" / "training_state.pt").is_file()  # periodic state written at step 2


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


def test_export_has_no_graph_parameters_and_loads(tmp_path, teacher, data):
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8).eval()
    export_student(student, tmp_path / "s", {"note": "test"})
    names = list(load_file(str(tmp_path / "s" / "model.safetensors")))
    teacher_names = set(teacher.state_dict())
    assert set(names) - teacher_names == {n for n in names if n.startswith("router.")}
    graph_names = set(build_encapsulation(teacher, tiny_config()).state_dict())
    assert graph_names and not graph_names & set(names)
    assert not [n for n in names if n.startswith(("extractors.", "heads.")) or ".phi." in n or ".gat." in n]
    policy = load_policy(tmp_path / "s")
    assert isinstance(policy, StudentPolicy)
    assert policy.model.layers_per_input == 2
    action = policy.act(data[0])
    assert action.shape == (7,) and np.all(np.abs(action) <= 1)
    with torch.no_grad():
        assert torch.equal(policy.model(teacher.prepare([data[1]])), student(teacher.prepare([data[1]])))


def test_teacher_checkpoint_still_loads_as_plain_policy(tmp_path, teacher):
    save_checkpoint(tmp_path / "t", teacher)
    assert not isinstance(load_policy(tmp_path / "t"), StudentPolicy)


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
    from distill.student import _student_fingerprint

    base, other = tiny_config(), tiny_config(stage2_seed=7)
    assert base.graph_settings() == other.graph_settings()  # one stage-1 folder serves both
    assert (base.student_seed, other.student_seed) == (base.seed, 7)
    assert "stage2_seed" not in _student_fingerprint(0.5, base)  # old runs resume unchanged
    assert _student_fingerprint(0.5, other)["stage2_seed"] == 7
    enc = build_encapsulation(teacher, base).eval()
    cache = build_teacher_cache(teacher, enc, data, batch_size=8)
    runs = [train_student(teacher, enc, cache, data, 0.5, tmp_path / name, config, progress=False)[1]
            for name, config in (("a", base), ("b", other), ("c", tiny_config(stage2_seed=base.seed)))]
    losses = [[h["loss"] for h in r["history"]] for r in runs]
    assert losses[0] != losses[1] and losses[0] == pytest.approx(losses[2])


def test_final_teacher_weight_scales_only_the_final_heads_teacher_term(teacher, data):
    from distill.student import _student_fingerprint

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
    assert "final_teacher_weight" not in _student_fingerprint(0.5, base)  # old runs resume unchanged
    assert _student_fingerprint(0.5, tiny_config(final_teacher_weight=5.0))["final_teacher_weight"] == 5.0
    with pytest.raises(ValueError, match="final_teacher_weight must be >= 0, got -1"):
        tiny_config(final_teacher_weight=-1.0)
