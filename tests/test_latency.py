"""Latency protocol: JSON fields, --vs adds a speedup, a student's executed fraction is reported."""

from __future__ import annotations

import json

import pytest
import torch
from test_vla import tiny_vla

from distill.checkpoint import VLAPolicy, load_policy, save_checkpoint
from distill.latency import measure_latency, synthetic_observations
from harness.cli import main


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("lat")
    save_checkpoint(
        root / "a",
        tiny_vla(seed=0, num_layers=2),
        meta={"data": {"instructions": ["open the top drawer", "put the spoon on the towel, then stop"]}},
    )
    save_checkpoint(root / "b", tiny_vla(seed=0, num_layers=4))
    return root / "a", root / "b"


FIELDS = {
    "median_ms",
    "p90_ms",
    "mean_ms",
    "breakdown",
    "device",
    "dtype",
    "attention",
    "torch_threads",
    "batch",
    "iters",
    "warmup",
    "timer",
    "capture",
    "tokens",
    "num_layers",
    "checkpoint_hash",
}


def test_cli_prints_one_json_line(ckpts, capsys):
    a, _ = ckpts
    assert main(["latency", "--policy", str(a), "--iters", "3", "--warmup", "1", "--attn", "eager"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert FIELDS <= set(result)
    assert set(result["breakdown"]) == {"embed_ms", "layers_ms", "head_ms"}
    assert result["device"] == "cpu" and result["dtype"] == "float32" and result["attention"] == "eager"
    assert result["batch"] == 1 and result["iters"] == 3 and result["timer"] == "perf_counter"
    assert result["num_layers"] == 2 and result["torch_threads"] == torch.get_num_threads()
    assert 0 < result["median_ms"] <= result["p90_ms"]
    assert "speedup" not in result and "mean_executed_fraction" not in result


def test_vs_alternates_and_reports_speedup(ckpts, capsys):
    a, b = ckpts
    assert (
        main(
            [
                "latency",
                "--policy",
                str(a),
                "--vs",
                str(b),
                "--iters",
                "3",
                "--warmup",
                "1",
                "--batch",
                "2",
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["vs"]["num_layers"] == 4 and result["batch"] == 2 and result["dtype"] == "bfloat16"
    assert result["speedup"] == pytest.approx(result["vs"]["median_ms"] / result["median_ms"])


def test_synthetic_observation_uses_the_longest_training_instruction(ckpts):
    policy = load_policy(ckpts[0])
    obs = synthetic_observations(policy, batch=2)
    assert len(obs) == 2 and obs[0]["instruction"] == "put the spoon on the towel, then stop"
    assert obs[0]["agentview"].shape == (128, 128, 3) and obs[0]["proprio"].shape == (8,)


class HalfDepthPolicy(VLAPolicy):
    """Stands in for a routed student: runs every other layer and tracks the executed fraction."""

    def __init__(self, model):
        super().__init__(model)
        self.fractions: list[float] = []

    def model_call(self, batch):
        b, layers = batch["proprio"].shape[0], self.model.num_layers
        mask = torch.zeros(b, layers, dtype=torch.bool, device=batch["proprio"].device)
        mask[:, ::2] = True
        with torch.inference_mode():
            chunk = self.model(batch, layer_mask=mask)
        self.fractions.append(float(mask.float().mean()))
        return chunk, [list(range(0, layers, 2))] * b

    @property
    def mean_executed_fraction(self) -> float:
        return sum(self.fractions) / len(self.fractions)


def test_mean_executed_fraction_is_reported():
    result = measure_latency(HalfDepthPolicy(tiny_vla(num_layers=4)), iters=2, warmup=1)
    assert result["mean_executed_fraction"] == 0.5
    with pytest.raises(ValueError, match="need iters >= 1"):
        measure_latency(HalfDepthPolicy(tiny_vla()), iters=0)


def test_routed_graph_call_splits_like_model_call_and_caches_routes():
    """The per-route split the CUDA latency path captures, run eagerly: same chunk as ``model_call``."""
    from test_student import tiny_teacher

    from distill.latency import RoutedGraphCall
    from distill.routed import StudentPolicy, StudentVLA

    torch.manual_seed(3)
    student = StudentVLA.from_teacher(tiny_teacher(num_layers=6), 0.5).eval()
    torch.nn.init.normal_(student.router.gate.weight, std=3.0)  # routes that depend on the input
    policy = StudentPolicy(student)
    obs = synthetic_observations(policy, 1, seed=0)
    with torch.inference_mode():
        first = policy.model_call(student.prepare(obs))[1][0]
        other = next(o for o in (synthetic_observations(policy, 1, seed=k) for k in range(1, 30))
                     if policy.model_call(student.prepare(o))[1][0] != first)
    policy = StudentPolicy(student)  # fresh executed-layer counts
    routes = set()
    for o in (obs, other, obs):
        batch = student.prepare(o)
        call = RoutedGraphCall(policy, batch, graphs=False)
        with torch.inference_mode():
            chunk = call()
            expect, executed = policy.model_call(batch)
        assert torch.allclose(chunk, expect, atol=1e-6) and len(call.back) == 1
        assert list(next(iter(call.back))) == executed[0] and len(executed[0]) == 3
        routes.add(tuple(executed[0]))
    assert policy.mean_executed_fraction == 0.5 and len(routes) == 2
    with torch.inference_mode(), pytest.raises(ValueError, match="one route for every row"):
        RoutedGraphCall(policy, student.prepare(obs + other), graphs=False)()


def test_other_cpu_load_subtracts_this_process(monkeypatch):
    """(machine busy seconds - own CPU seconds) / wall seconds, from two readings; None when unreadable."""
    from distill.latency import OtherCpuLoad

    readings = iter([(100.0, 5.0, 10.0), (103.5, 6.0, 11.0)])  # (busy s, own s, wall s)
    monkeypatch.setattr(OtherCpuLoad, "_read", staticmethod(lambda: next(readings)))
    assert OtherCpuLoad().stop() == 2.5  # 3.5 busy core-seconds, 1.0 of them ours, over 1 s
    readings = iter([(100.0, 5.0, 10.0), (100.2, 5.9, 11.0)])  # own time above the machine's: clamp at 0
    assert OtherCpuLoad().stop() == 0.0
    readings = iter([None, (1.0, 1.0, 1.0)])
    assert OtherCpuLoad().stop() is None


def test_latency_json_reports_the_other_cpu_load():
    result = measure_latency(VLAPolicy(tiny_vla(seed=0, num_layers=1)), iters=2, warmup=0)
    assert "other_cpu_load" in result
    assert result["other_cpu_load"] is None or result["other_cpu_load"] >= 0.0


def test_busy_warning_only_above_the_threshold():
    from distill.latency import BUSY_CORES, busy_warning

    assert "1.50 cores" in busy_warning({"other_cpu_load": 1.5})
    assert busy_warning({"other_cpu_load": BUSY_CORES}) is None
    assert busy_warning({"other_cpu_load": None}) is None and busy_warning({}) is None


def test_conditional_graph_call_body_matches_model_call_and_counts_on_device():
    """The one-graph body (an IF node per layer on the route mask), run eagerly: same chunk as ``model_call``,
    executed layers counted on the device and handed to the policy by ``flush``."""
    from test_student import tiny_teacher

    from distill.latency import ConditionalGraphCall
    from distill.routed import StudentPolicy, StudentVLA

    torch.manual_seed(3)
    student = StudentVLA.from_teacher(tiny_teacher(num_layers=6), 0.5).eval()
    torch.nn.init.normal_(student.router.gate.weight, std=3.0)  # routes that depend on the input
    reference = StudentPolicy(student)
    observations = [synthetic_observations(reference, 1, seed=k) for k in range(8)]
    with torch.inference_mode():
        expected = [reference.model_call(student.prepare(o)) for o in observations]
    assert len({tuple(e[1][0]) for e in expected}) > 1  # the check covers more than one route
    policy = StudentPolicy(student)
    for o, (chunk, _) in zip(observations, expected):
        call = ConditionalGraphCall(policy, student.prepare(o), graphs=False)
        with torch.inference_mode():
            got = call()
            got_again = call()
        assert torch.allclose(got, chunk, atol=1e-6) and torch.equal(got, got_again)
        call.flush()
        assert call.calls == 0 and int(call.executed) == 0
    assert policy.mean_executed_fraction == 0.5 and policy._rows == 16
    with pytest.raises(ValueError, match="needs batch 1"):
        ConditionalGraphCall(policy, student.prepare(observations[0] + observations[1]), graphs=False)
    with pytest.raises(ValueError, match="routed_capture must be one of auto, conditional, per_route"):
        measure_latency(policy, iters=1, routed_capture="graph")


def test_auto_capture_falls_back_to_per_route_and_says_why(monkeypatch):
    from distill import latency

    def no_conditional(*args, **kwargs):
        raise RuntimeError("torch 2.11 has no CUDA graph conditional nodes")

    monkeypatch.setattr(latency, "ConditionalGraphCall", no_conditional)
    monkeypatch.setattr(latency, "RoutedGraphCall", lambda policy, batch, warmup: "per-route call")
    monkeypatch.setattr(latency.torch.cuda, "synchronize", lambda: None)
    target = type("T", (), {"policy": None, "batch": {}})()
    assert latency._routed_graph(target, 1, "auto") == ("per-route call", "cuda_graph_per_route")
    assert target.capture_fallback == "RuntimeError: torch 2.11 has no CUDA graph conditional nodes"
    with pytest.raises(RuntimeError, match="no CUDA graph conditional nodes"):
        latency._routed_graph(type("T", (), {"policy": None, "batch": {}})(), 1, "conditional")


class _Logged(VLAPolicy):
    """A policy that appends its name to a shared log at every whole model call."""

    def __init__(self, model, name, log):
        super().__init__(model)
        self.name, self.log = name, log

    def model_call(self, batch):
        self.log.append(self.name)
        return super().model_call(batch)


def test_group_pass_interleaves_every_policy_and_shares_one_pass():
    from distill.latency import measure_latency_group

    log: list[str] = []
    policies = [_Logged(tiny_vla(seed=0, num_layers=n), name, log) for n, name in ((4, "t"), (2, "s"), (1, "b"))]
    results = measure_latency_group(policies, names=["t", "s", "b"], iters=6, warmup=0, rounds=2)
    # round robin: every block of three consecutive timed whole calls holds each policy once, and the first
    # policy of a block rotates (t s b, s b t, b t s, ...), so no policy always follows the same one
    timed = log[-18:]  # the 6 x 3 whole calls (embed and head timings do not call model_call)
    blocks = [timed[i:i + 3] for i in range(0, 18, 3)]
    assert all(sorted(b) == ["b", "s", "t"] for b in blocks)
    assert [b[0] for b in blocks[:3]] == ["t", "s", "b"]
    assert len({r["pass"]["id"] for r in results}) == 1 and results[0]["pass"]["names"] == ["t", "s", "b"]
    assert all(len(r["round_medians_ms"]) == 2 for r in results)
    assert results[0]["speedup"] == 1.0
    for r in results:
        assert r["speedup"] == pytest.approx(results[0]["median_ms"] / r["median_ms"])
        low, high = r["speedup_rounds"]
        assert low <= high
    # two separate passes get different ids: a figure can tell them apart
    again = measure_latency_group(policies[:1], iters=1, warmup=0)
    assert again[0]["pass"]["id"] != results[0]["pass"]["id"]


def test_group_pass_rejects_bad_arguments():
    from distill.latency import measure_latency_group

    policy = VLAPolicy(tiny_vla(seed=0, num_layers=1))
    with pytest.raises(ValueError, match="rounds >= 1"):
        measure_latency_group([policy], iters=2, rounds=0)
    with pytest.raises(ValueError, match="reference must index one of the 1 policies, got 3"):
        measure_latency_group([policy], reference=3)
    with pytest.raises(ValueError, match="no policies"):
        measure_latency_group([])


def test_cli_times_several_policies_in_one_pass(ckpts, capsys):
    a, b = ckpts
    assert main(["latency", "--policy", str(a), str(a), "--vs", str(b), "--iters", "4", "--warmup", "0",
                 "--rounds", "2"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(results) == 3 and len({r["pass"]["id"] for r in results}) == 1
    assert results[0]["pass"]["reference"] == str(b) and results[2]["speedup"] == 1.0
    assert results[0]["num_layers"] == 2 and results[2]["num_layers"] == 4
    assert all(len(r["round_medians_ms"]) == 2 for r in results)


def test_cli_times_a_baseline_spec_against_its_teacher(ckpts, capsys):
    _, b = ckpts  # 4 layers: first_k@0.5 runs the first 2
    assert main(["latency", "--policy", f"baseline:first_k@0.5:{b}", "--vs", str(b), "--iters", "4",
                 "--warmup", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["mean_executed_fraction"] == 0.5 and result["num_layers"] == 4
    assert result["policy"] == f"baseline:first_k@0.5:{b}" and result["vs"]["policy"] == str(b)
    assert result["speedup"] > 0 and result["checkpoint_hash"] != result["vs"]["checkpoint_hash"]
    assert main(["latency", "--policy", f"baseline:first_k@0.5:{b}", "--dtype", "bfloat16"]) == 2
    assert "--dtype bfloat16 applies to checkpoint folders" in capsys.readouterr().err
    assert main(["latency", "--policy", f"baseline:nosuch@0.5:{b}"]) == 2
    assert "unknown baseline 'nosuch'; valid baselines:" in capsys.readouterr().err
