"""Baseline routing policies: layer counts, budgets, redundancy ordering, seeded random routing, specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.baselines import (
    BASELINES,
    BaselinePolicy,
    calibrate_exit_threshold,
    calibration_observations,
    exit_depths,
    layer_similarity,
    layers_for_budget,
    make_baseline,
    parse_policy_spec,
    uniform_layers,
)
from distill.checkpoint import save_checkpoint
from distill.flops import flops_for_batch
from distill.tokenizer import WordTokenizer
from distill.vla import VLA, teacher_config
from tasks.datasets import DemoWriter

LAYERS = 6
IDENTITY_LAYER = 3
INSTRUCTIONS = ["pick up the coke can", "open the top drawer"]


def tiny_vla() -> VLA:
    vocab = WordTokenizer.build(INSTRUCTIONS).vocab
    cfg = teacher_config("small", vocab, {"mean": [0.0] * 7, "std": [0.5] * 7}, {"mean": [0.0] * 8, "std": [1.0] * 8},
                         hidden_size=32, num_layers=LAYERS, num_heads=4, num_kv_heads=2, intermediate_size=64,
                         vision_grid=2, stem_channels=4)
    torch.manual_seed(0)
    return VLA(cfg).eval()


def observations(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"agentview": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
             "wrist": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
             "proprio": rng.normal(size=8).astype(np.float32),
             "instruction": INSTRUCTIONS[i % 2]} for i in range(n)]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A two-episode demo folder of random frames, used as the teacher's training data."""
    path = tmp_path_factory.mktemp("demos")
    rng = np.random.default_rng(1)
    writer = DemoWriter(path, suite="fake_basic", variant="base")
    for ep in range(2):
        steps = 4
        writer.add({"agentview": rng.integers(0, 256, (steps, 128, 128, 3), dtype=np.uint8),
                    "wrist": rng.integers(0, 256, (steps, 128, 128, 3), dtype=np.uint8),
                    "proprio": rng.normal(size=(steps, 8)).astype(np.float32),
                    "actions": rng.uniform(-1, 1, size=(steps, 7)).astype(np.float32),
                    "instruction": INSTRUCTIONS[ep]}, task="reach", seed=0, episode_index=ep)
    writer.close()
    return path


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory, demo_dir):
    """A tiny teacher whose layer IDENTITY_LAYER is the identity (attention and MLP outputs zeroed)."""
    model = tiny_vla()
    with torch.no_grad():
        layer = model.layers[IDENTITY_LAYER]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    path = tmp_path_factory.mktemp("teacher")
    save_checkpoint(path, model, {"data": {"dirs": [str(demo_dir)]}})
    return path


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("budget", [0.5, 0.34, 1.0])
def test_each_baseline_runs_k_layers_within_budget(teacher_path, name, budget):
    policy = make_baseline(name, teacher_path, budget, calib=observations(2), seed=1)
    k = int(np.floor(budget * LAYERS + 1e-9))
    policy.reset()
    obs = observations(1)[0]
    for step in range(2 * policy.model.config.chunk):  # two model calls
        action = policy.act(obs)
        assert action.shape == (7,) and np.all(np.abs(action) <= 1.0)
        info = policy.last_info
        assert len(info["executed_layers"]) == k or name == "early_exit_adaptive"
        assert info["executed_layers"] == sorted(set(info["executed_layers"]))
        assert info["executed_fraction"] == pytest.approx(len(info["executed_layers"]) / LAYERS)
    if name != "early_exit_adaptive":  # adaptive holds the budget on its calibration data only (tested below)
        assert policy.mean_executed_fraction == pytest.approx(k / LAYERS)
        assert policy.mean_executed_fraction <= budget + 1e-12
    assert policy.name == name and policy.budget == budget


def test_baseline_flops_match_the_analytic_count(teacher_path):
    full = make_baseline("first_k", teacher_path, 1.0)
    half = make_baseline("uniform", teacher_path, 0.5)
    obs = observations(1)[0]
    for policy in (full, half):
        policy.reset()
        policy.act(obs)
    batch = full.model.prepare([obs])
    mask = torch.zeros(1, LAYERS, dtype=torch.bool)
    mask[0, half.last_info["executed_layers"]] = True
    assert half.last_info["flops"] == int(flops_for_batch(half.model, batch, mask)[0])
    assert full.last_info["flops"] == int(flops_for_batch(full.model, batch)[0])
    assert half.last_info["flops"] < full.last_info["flops"]


def test_full_budget_equals_teacher_and_early_exit_equals_first_k(teacher_path):
    from distill.checkpoint import load_policy

    obs = observations(3)
    teacher = load_policy(teacher_path)
    np.testing.assert_allclose(make_baseline("uniform", teacher_path, 1.0).predict(obs), teacher.predict(obs),
                               atol=1e-6)
    np.testing.assert_array_equal(make_baseline("early_exit", teacher_path, 0.5).predict(obs),
                                  make_baseline("first_k", teacher_path, 0.5).predict(obs))


def test_static_layer_choices(teacher_path):
    assert make_baseline("first_k", teacher_path, 0.5).layers == [0, 1, 2]
    assert make_baseline("early_exit", teacher_path, 0.5).layers == [0, 1, 2]
    assert make_baseline("uniform", teacher_path, 0.5).layers == [0, 2, 5]
    assert uniform_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert uniform_layers(12, 1) == [0]


def test_redundancy_drops_the_identity_layer_first(teacher_path):
    policy = make_baseline("redundancy", teacher_path, (LAYERS - 1) / LAYERS, calib=observations(4))
    assert IDENTITY_LAYER not in policy.layers and len(policy.layers) == LAYERS - 1
    sim = layer_similarity(policy.model, observations(4))
    assert sim.shape == (LAYERS,)
    assert sim[IDENTITY_LAYER] == pytest.approx(1.0, abs=1e-5)
    assert torch.all(sim[torch.arange(LAYERS) != IDENTITY_LAYER] < 1.0 - 1e-4)


def test_redundancy_calibrates_on_the_teachers_demos_by_default(teacher_path, demo_dir):
    default = make_baseline("redundancy", teacher_path, 0.5)
    explicit = make_baseline("redundancy", teacher_path, 0.5, calib=str(demo_dir))
    assert IDENTITY_LAYER not in default.layers
    assert default.layers == explicit.layers
    assert default.checkpoint_hash == explicit.checkpoint_hash


def test_random_routing_is_reproducible_with_a_seed(teacher_path):
    def draws(seed: int) -> list[list[int]]:
        policy = make_baseline("random", teacher_path, 0.5, seed=seed)
        return [policy.layer_mask(2).nonzero().tolist() for _ in range(5)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
    policy = make_baseline("random", teacher_path, 0.5, seed=0)
    mask = torch.cat([policy.layer_mask(4) for _ in range(25)])  # (100, L)
    assert torch.all(mask.sum(1) == 3)
    assert torch.all(mask.float().mean(0) > 0.25)  # every layer gets drawn


def test_random_layers_depend_on_the_input_and_seed_not_on_the_calls_before(teacher_path):
    """A worker runs episodes in whatever order the scheduler gives: the same input must get the same layers
    either way, or one episode's outcome would depend on the schedule."""
    obs = observations(6)

    def routes(order: list[int], seed: int = 0) -> dict[int, tuple[int, ...]]:
        policy = make_baseline("random", teacher_path, 0.5, seed=seed)
        return {i: tuple(policy.model_call(policy.model.prepare([obs[i]]))[1][0]) for i in order}

    forward = routes([0, 1, 2, 3, 4, 5])
    assert routes([5, 3, 1, 0, 2, 4, 0]) == forward
    assert len(set(forward.values())) > 1  # other inputs, other layers
    assert routes([0, 1, 2, 3, 4, 5], seed=1) != forward
    assert all(len(layers) == 3 for layers in forward.values())


def test_batched_random_rows_pick_their_own_layers(teacher_path):
    policy = make_baseline("random", teacher_path, 0.5, seed=0)
    chunk, executed = policy.model_call(policy.model.prepare(observations(8)))
    assert chunk.shape == (8, 8, 7)
    assert all(len(rows) == 3 for rows in executed)
    assert len({tuple(rows) for rows in executed}) > 1


def test_checkpoint_hash_depends_on_teacher_name_budget_and_seed(teacher_path):
    hashes = {make_baseline(n, teacher_path, b, seed=s).checkpoint_hash
              for n, b, s in [("first_k", 0.5, 0), ("uniform", 0.5, 0), ("first_k", 0.67, 0),
                              ("random", 0.5, 0), ("random", 0.5, 1)]}
    assert len(hashes) == 5
    assert make_baseline("first_k", teacher_path, 0.5).checkpoint_hash == \
        make_baseline("first_k", teacher_path, 0.5).checkpoint_hash


def test_bad_names_and_budgets_list_the_valid_choices(teacher_path):
    with pytest.raises(ValueError, match="unknown baseline 'skip'.*first_k, uniform, redundancy, early_exit, early_exit_adaptive, random"):
        make_baseline("skip", teacher_path, 0.5)
    with pytest.raises(ValueError, match=r"budget 0\.1 out of range.*0\.1667"):
        make_baseline("first_k", teacher_path, 0.1)
    with pytest.raises(ValueError, match="budget 1.5"):
        layers_for_budget(1.5, 6)


def test_policy_spec_round_trip(teacher_path):
    spec = parse_policy_spec(f"baseline:random@0.5,seed=3:{teacher_path}")
    assert (spec.name, spec.budget, spec.seed, spec.teacher_path) == ("random", 0.5, 3, str(teacher_path))
    policy = spec.build()
    assert isinstance(policy, BaselinePolicy) and policy.seed == 3 and policy.k == 3
    assert parse_policy_spec("baseline:uniform@0.25:C:/runs/t").teacher_path == "C:/runs/t"


@pytest.mark.parametrize("spec, needle", [
    ("runs/teacher", "does not start with 'baseline:'"),
    ("baseline:uniform:runs/t", "malformed"),
    ("baseline:uniform@0.5", "malformed"),
    ("baseline:drop@0.5:runs/t", "unknown baseline 'drop'; valid baselines: first_k"),
    ("baseline:uniform@half:runs/t", "budget 'half' is not a number"),
    ("baseline:random@0.5,sed=1:runs/t", "option 'sed=1' not understood; valid options: seed"),
    ("baseline:random@0.5,seed=x:runs/t", "seed needs an integer"),
])
def test_bad_specs_say_what_is_wrong(spec, needle):
    with pytest.raises(ValueError, match=needle):
        parse_policy_spec(spec)


def test_exit_threshold_calibration_on_known_changes():
    changes = torch.tensor([[0.9, 0.5, 0.1, 0.05], [0.9, 0.05, 0.5, 0.5]])  # (S=2, L=4)
    assert exit_depths(changes, 0.0).tolist() == [4, 4]
    assert exit_depths(changes, 0.06).tolist() == [4, 2]
    threshold = calibrate_exit_threshold(changes, 0.75)  # mean depth <= 3: the smallest threshold gives 4 and 2
    assert exit_depths(changes, threshold).tolist() == [4, 2]
    assert 0.05 < threshold <= 0.1
    threshold = calibrate_exit_threshold(changes, 0.6)  # mean depth <= 2.4: 3 and 2 is not enough
    assert exit_depths(changes, threshold).tolist() == [2, 2]
    assert 0.5 < threshold <= 0.9
    assert calibrate_exit_threshold(changes, 1.0) == 0.0


def test_adaptive_early_exit_holds_the_budget_on_its_calibration_data(teacher_path):
    obs = observations(6)
    policy = make_baseline("early_exit_adaptive", teacher_path, 0.5, calib=obs)
    assert policy.mean_executed_fraction <= 0.5  # before any call: the calibration estimate
    policy.predict(obs)
    assert policy.mean_executed_fraction == pytest.approx(policy.calib_fraction)
    assert policy.mean_executed_fraction <= 0.5
    # the identity layer changes nothing, so no row runs past it
    _, executed = policy.model_call(policy.model.prepare(obs))
    assert all(rows == list(range(len(rows))) and 1 <= len(rows) <= IDENTITY_LAYER + 1 for rows in executed)


def test_adaptive_early_exit_batched_equals_one_by_one(teacher_path):
    obs = observations(4)
    policy = make_baseline("early_exit_adaptive", teacher_path, 0.6, calib=obs)
    batched = policy.predict(obs)
    single = np.concatenate([policy.predict([o]) for o in obs])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_calibration_observations_subsample_evenly_and_reject_junk(teacher_path, demo_dir):
    obs = observations(10)
    picked = calibration_observations(obs, teacher_path, samples=4)
    assert [o is obs[i] for i in (0, 3, 6, 9) for o in picked].count(True) == 4
    assert len(calibration_observations(str(demo_dir), teacher_path, samples=3)) == 3  # 8 demo steps
    with pytest.raises(ValueError, match="calib must be"):
        calibration_observations([], teacher_path)
    with pytest.raises(ValueError, match="observation dicts"):
        calibration_observations([1, 2], teacher_path)


def test_static_baselines_run_over_a_students_weights_and_others_refuse(tmp_path, teacher_path):
    """first_k over a student: the student's own weights on a fixed route, its router ignored."""
    from distill.checkpoint import load_policy
    from distill.routed import StudentVLA, export_student

    teacher = load_policy(teacher_path).model
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8).eval()
    with torch.no_grad():  # make the student's weights differ from the teacher's
        student.layers[0].mlp.down_proj.weight.mul_(2.0)
    export_student(student, tmp_path / "student")
    obs = observations(2)
    static = make_baseline("first_k", tmp_path / "student", 0.5)
    assert static.layers == [0, 1, 2]
    batch = static.model.prepare(obs)
    chunk, executed = static.model_call(batch)
    assert executed == [[0, 1, 2], [0, 1, 2]]
    mask = torch.zeros(2, LAYERS, dtype=torch.bool)
    mask[:, :3] = True
    with torch.no_grad():
        expected = student(batch, mask)  # the student's weights, first three layers
        over_teacher, _ = make_baseline("first_k", teacher_path, 0.5).model_call(batch)
    torch.testing.assert_close(chunk, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(chunk, over_teacher, atol=1e-4)
    with pytest.raises(ValueError, match="redundancy"):
        make_baseline("redundancy", tmp_path / "student", 0.5, calib=observations(2))
