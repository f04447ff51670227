"""The routed student (distill.routed): all gates open equals the teacher, routed execution equals the masked
dense reference, one-row and batched calls agree, the budget rule holds, export has no graph parts and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_student import SyntheticDemos, tiny_config

from distill import load_policy
from distill.checkpoint import save_checkpoint
from distill.routed import StudentPolicy, StudentVLA, export_student
from distill.router import centered_gates, layers_for_budget, topk_mask
from distill.student import build_encapsulation, routed_states
from distill.vla import VLA


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
