"""``actdistill distill`` end to end on a tiny teacher and a synthetic dataset: two budgets, resume, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_student import SyntheticDemos, tiny_teacher

from distill import load_policy
from distill.checkpoint import save_checkpoint
from distill.loop import STATE
from distill.routed import StudentPolicy
from harness import cli
from harness.commands import distill as distill_cmd


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    teacher_dir = tmp_path / "teacher"
    save_checkpoint(teacher_dir, tiny_teacher())
    data = SyntheticDemos(n=16)
    monkeypatch.setattr(distill_cmd, "_open_dataset", lambda dirs, chunk: data)
    args = ["distill", "--teacher", str(teacher_dir), "--data", str(tmp_path), "--budgets", "0.5,0.25",
            "--out", str(tmp_path / "out"), "--steps", "3", "--stage1-steps", "2", "--batch-size", "4",
            "--save-every", "2", "--no-progress"]
    return tmp_path, args, data


def test_distill_two_budgets_then_resume_skips(setup, capsys):
    tmp_path, args, data = setup
    assert cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "out"
    assert summary["stage1"]["status"] == "trained"
    assert {k: v["status"] for k, v in summary["budgets"].items()} == {"0.25": "trained", "0.5": "trained"}
    assert (out / "encapsulation" / "teacher_cache.safetensors").is_file()
    assert (out / "encapsulation" / "loss.png").is_file()
    for budget, layers in (("0.25", 1), ("0.5", 2)):
        folder = out / f"student-b{budget}"
        assert (folder / "loss.png").is_file()
        config = json.loads((folder / "config.json").read_text())
        assert config["kind"] == "routed_student" and config["student"]["budget"] == float(budget)
        policy = load_policy(folder)
        assert isinstance(policy, StudentPolicy)
        policy.act(data[0])
        assert len(policy.last_info["executed_layers"]) == layers
        assert policy.mean_executed_fraction <= float(budget)
        assert not any(k.startswith(("extractors.", "heads.")) for k in load_file(str(folder / "model.safetensors")))
        assert not (out / f"student-b{budget}.work" / STATE).exists()

    weights = (out / "student-b0.5" / "model.safetensors").read_bytes()
    args3 = [a if a != "0.5,0.25" else "0.5,0.25,0.75" for a in args]
    assert cli.main(args3) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stage1"]["status"] == "skipped"
    assert {k: v["status"] for k, v in summary["budgets"].items()} == \
        {"0.25": "skipped", "0.5": "skipped", "0.75": "trained"}
    assert (out / "student-b0.5" / "model.safetensors").read_bytes() == weights


def test_interrupted_budget_resumes_like_an_uninterrupted_run(setup, capsys, monkeypatch):
    tmp_path, args, _ = setup
    one = [a if a != "0.5,0.25" else "0.5" for a in args]
    one[one.index("--steps") + 1] = "4"  # the resumed step 2 still draws gate noise (annealed to 0 at step 3)

    def with_out(name: str) -> list[str]:
        return [a if a != str(tmp_path / "out") else str(tmp_path / name) for a in one]

    assert cli.main(with_out("a")) == 0
    reference = json.loads((tmp_path / "a" / "student-b0.5" / "history.json").read_text())
    assert len(reference) == 4

    import distill.student as student_mod

    losses, calls = student_mod.student_losses, []

    def crash(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash in step 2")
        return losses(*a, **k)

    monkeypatch.setattr(student_mod, "student_losses", crash)
    shutil.copytree(tmp_path / "a" / "encapsulation", tmp_path / "b" / "encapsulation")  # stage 1 is reused
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(with_out("b"))
    state = torch.load(tmp_path / "b" / "student-b0.5.work" / STATE, weights_only=True)
    assert state["step"] == 2  # the periodic state of step 2 survived the crash
    monkeypatch.setattr(student_mod, "student_losses", losses)
    capsys.readouterr()
    assert cli.main(with_out("b")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stage1"]["status"] == "skipped" and summary["budgets"]["0.5"]["status"] == "trained"
    resumed = json.loads((tmp_path / "b" / "student-b0.5" / "history.json").read_text())
    assert resumed == reference  # exactly: batches, augmentation and gate noise continue as if uninterrupted
    weights = [load_file(str(tmp_path / name / "student-b0.5" / "model.safetensors")) for name in ("a", "b")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_bad_budgets_are_rejected(setup, capsys):
    _, args, _ = setup
    bad = [a if a != "0.5,0.25" else "0.5,1.5" for a in args]
    assert cli.main(bad) == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_method_flags_reach_the_student_config(setup, capsys):
    tmp_path, args, _ = setup
    one = [a if a != "0.5,0.25" else "0.5" for a in args]
    flags = ["--alpha", "0.1", "--beta", "0.2", "--eta", "0.3", "--gamma", "1.0", "--lr", "5e-5",
             "--router-lr", "2e-3", "--shift-pad", "2", "--budget-weight", "4", "--gate-center"]
    assert cli.main(one + flags) == 0
    training = json.loads((tmp_path / "out" / "student-b0.5" / "config.json").read_text())["training"]
    names = ("alpha", "beta", "eta", "gamma", "lr", "router_lr", "shift_pad", "budget_weight", "gate_center")
    assert {k: training[k] for k in names} == {"alpha": 0.1, "beta": 0.2, "eta": 0.3, "gamma": 1.0, "lr": 5e-5,
                                             "router_lr": 2e-3, "shift_pad": 2, "budget_weight": 4.0,
                                             "gate_center": True}
    capsys.readouterr()
    assert cli.main(one[:one.index("--out") + 1] + [str(tmp_path / "bad")] + one[one.index("--out") + 2:]
                    + ["--shift-pad", "-1"]) == 2
    assert "shift_pad" in capsys.readouterr().err


def test_time_boxed_distillation_records_steps(setup, capsys):
    tmp_path, args, _ = setup
    args = [a for a in args]
    args[args.index("--steps") + 1] = "100000"
    assert cli.main([*args, "--minutes-per-budget", "0.03"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["budgets"]) == {"0.25", "0.5"}
    for b in ("0.25", "0.5"):
        config = json.loads((tmp_path / "out" / f"student-b{b}" / "config.json").read_text())
        steps = config["training"]["steps_total"]
        assert 20 < steps < 100_000 and config["training"]["steps_done"] == steps
        assert config["training"]["time_budget_s"] == pytest.approx(1.8)


class ListedDemos(SyntheticDemos):
    """Synthetic demos that list their sample ids, as ``tasks.datasets.DemoDataset`` does."""

    def sample_ids(self):
        return [int(self[i]["sample_id"]) for i in range(len(self))]


def test_stage1_from_reuses_the_extractors_and_caches_only_the_added_samples(setup, capsys, monkeypatch):
    from distill.student import ActDistillConfig, build_encapsulation
    from distill.teacher_cache import TeacherCache, build_teacher_cache

    tmp_path, args, _ = setup
    small, large = ListedDemos(n=16), ListedDemos(n=24)  # the first 16 items of both are the same samples
    monkeypatch.setattr(distill_cmd, "_open_dataset", lambda dirs, chunk: small)
    one = [a if a != "0.5,0.25" else "0.5" for a in args]
    assert cli.main(one) == 0
    capsys.readouterr()
    first = tmp_path / "out" / "encapsulation"

    monkeypatch.setattr(distill_cmd, "_open_dataset", lambda dirs, chunk: large)
    two = [a if a != str(tmp_path / "out") else str(tmp_path / "out2") for a in one] + ["--stage1-from", str(first)]
    assert cli.main(two) == 0
    out = capsys.readouterr().out
    assert "16 of 24 samples cached there, 8 to cache now" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stage1"] == {"status": "reused", "stage1_from": str(first), "cached_here": 8}
    assert summary["budgets"]["0.5"]["status"] == "trained"
    old = TeacherCache.load(first / "teacher_cache.safetensors")
    new = TeacherCache.load(tmp_path / "out2" / "encapsulation" / "teacher_cache.safetensors")
    assert len(new) == 24
    ids = torch.tensor(small.sample_ids())
    for a, b in zip(old.lookup(ids), new.lookup(ids)):
        assert torch.equal(a, b)  # copied, not recomputed
    # the added samples: what the first run's extractors give on them
    config = ActDistillConfig(**json.loads((first / "encapsulation.json").read_text())["graph"])
    teacher = tiny_teacher()
    enc = build_encapsulation(teacher, config).eval()
    enc.load_state_dict(load_file(str(first / "encapsulation.safetensors")))
    added = torch.tensor(large.sample_ids()[16:])
    want = build_teacher_cache(teacher, enc, torch.utils.data.Subset(large, list(range(16, 24))), batch_size=8)
    for a, b in zip(want.lookup(added), new.lookup(added)):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)  # semantics are stored as float16
    # the folder is now a finished stage 1 of the larger data: a rerun skips it
    assert cli.main(two) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stage1"]["status"] == "skipped"
    # other graph settings cannot reuse it
    three = [a if a != str(tmp_path / "out2") else str(tmp_path / "out3") for a in two]
    three[three.index("--stage1-steps") + 1] = "3"
    assert cli.main(three) == 2
    assert "same teacher and graph settings" in capsys.readouterr().err
