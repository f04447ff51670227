"""``actdistill fit``: offline action error per group under routed and static layer masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_student import SyntheticDemos, tiny_teacher

from distill.checkpoint import save_checkpoint
from distill.diagnose import format_fit, offline_fit
from distill.routed import StudentVLA, export_student
from harness import cli


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    teacher = tiny_teacher()
    save_checkpoint(root / "teacher", teacher)
    student = StudentVLA.from_teacher(teacher, budget=0.5, router_dim=8).eval()
    export_student(student, root / "student")
    return root, teacher, student


def test_offline_fit_matches_a_hand_computed_error_and_masks(checkpoints):
    root, teacher, _ = checkpoints
    data = SyntheticDemos(n=12)
    rows = offline_fit([root / "teacher", root / "student"], data, samples=12, by="task")
    by = {(r["policy"].split("/")[-1], r["group"], r["mask"]): r for r in rows}
    # teacher: only "all" (no layer count of its own); student: all four masks, 3 tasks each
    assert {m for (p, _, m) in by if p == "teacher"} == {"all"}
    assert {m for (p, _, m) in by if p == "student"} == {"routed", "all", "first", "last"}
    assert {g for (_, g, _) in by} == {"task0", "task1", "task2"}
    # hand computation for the teacher on task0 (items 0, 3, 6, 9)
    from distill.data import collate
    items = [data[i] for i in range(12) if i % 3 == 0]
    with torch.no_grad():
        batch = collate(teacher, items)
        err = ((teacher(batch.inputs) - batch.actions) ** 2).mean(-1) * batch.mask
    assert by[("teacher", "task0", "all")]["mse"] == pytest.approx(float(err.sum() / batch.mask.sum()), rel=1e-5)
    assert by[("teacher", "task0", "all")]["n"] == 4
    # a fresh student is the teacher with all layers on; static masks run exactly k = 2 of 4 layers
    assert by[("student", "task0", "all")]["mse"] == pytest.approx(by[("teacher", "task0", "all")]["mse"], rel=1e-5)
    assert by[("student", "task1", "first")]["layer_freq"] == [1.0, 1.0, 0.0, 0.0]
    assert by[("student", "task1", "last")]["layer_freq"] == [0.0, 0.0, 1.0, 1.0]
    assert sum(by[("student", "task2", "routed")]["layer_freq"]) == pytest.approx(2.0)
    # static masks take one route; a teacher's "all" too
    assert by[("student", "task1", "first")]["distinct_routes"] == 1
    assert by[("student", "task1", "first")]["route_entropy_bits"] == 0.0
    assert by[("teacher", "task0", "all")]["usage_entropy_bits"] == 0.0
    assert 1 <= by[("student", "task2", "routed")]["distinct_routes"] <= 4
    table = format_fit(rows)
    assert table.count("\n") == 2 + 6 - 1 and "mse first" in table and "`####`" in table  # the teacher runs every layer


def test_offline_fit_bad_input_names_the_choices(checkpoints):
    root, _, _ = checkpoints
    data = SyntheticDemos(n=6)
    with pytest.raises(ValueError, match="valid: suite, task"):
        offline_fit([root / "student"], data, by="episode")
    with pytest.raises(ValueError, match="valid: routed, all, first, last"):
        offline_fit([root / "student"], data, masks=["routed", "middle"])
    with pytest.raises(ValueError, match="layers=9"):
        offline_fit([root / "student"], data, layers=9)


def test_fit_command_prints_table_and_writes_json(checkpoints, tmp_path, monkeypatch, capsys):
    root, _, _ = checkpoints
    import distill.data
    monkeypatch.setattr(distill.data, "open_dataset", lambda data, chunk: SyntheticDemos(n=9))
    out = tmp_path / "fit.json"
    assert cli.main(["fit", "--policy", str(root / "student"), "--data", str(tmp_path), "--masks", "routed,first",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| mse routed | mse first |" in printed and "synthetic" in printed
    assert [r["mask"] for r in json.loads(out.read_text())] == ["routed", "first"]
    assert cli.main(["fit", "--policy", str(root / "student"), "--data", str(tmp_path), "--masks", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def _item(task: str, dataset: int, episode: int, t: int, value: int) -> dict:
    sid = (dataset << 40) + (episode << 20) + t
    frame = np.full((4, 4, 3), value, dtype=np.uint8)
    return {"task": task, "sample_id": torch.tensor(sid), "agentview": frame, "wrist": frame + 1, "proprio": t}


def test_images_zero_and_swap_take_frames_of_another_episode_of_the_same_task():
    from distill.diagnose import perturb_images

    items = [_item("a", 0, 0, 0, 10), _item("a", 0, 0, 5, 15), _item("a", 0, 1, 4, 24), _item("a", 1, 0, 1, 31),
             _item("b", 0, 2, 3, 43)]
    zero = perturb_images(items, "zero")
    assert all(not it["agentview"].any() and not it["wrist"].any() for it in zero)
    assert [it["proprio"] for it in zero] == [0, 5, 4, 1, 3]  # only the cameras change
    swapped = perturb_images(items, "swap")
    # each frame comes from the nearest step of another episode of task "a" (dataset 1 counts as its own)
    assert [int(it["agentview"][0, 0, 0]) for it in swapped] == [31, 24, 15, 10, 43]
    assert all(int(s["wrist"][0, 0, 0]) == int(s["agentview"][0, 0, 0]) + 1 for s in swapped)
    assert int(swapped[4]["agentview"][0, 0, 0]) == 43  # a task with one episode keeps its frames
    assert perturb_images(items, "real") == items


def test_offline_fit_with_black_frames_changes_the_error_and_labels_rows(checkpoints):
    root, _, _ = checkpoints
    data = SyntheticDemos(n=6)
    rows = offline_fit([root / "teacher"], data, samples=6, images=["real", "zero"])
    real = [r for r in rows if r["images"] == "real"]
    zero = [r for r in rows if r["images"] == "zero"]
    assert len(real) == len(zero) == 1 and real[0]["mse"] != zero[0]["mse"]
    assert zero[0]["change"] == pytest.approx(zero[0]["mse"] - real[0]["mse"])
    # the synthetic sample ids (< 2**20) all fall in one episode: a bootstrap over one episode has no spread
    assert list(real[0]["episode_err"]) == ["0"]
    assert zero[0]["change_ci"] == pytest.approx((zero[0]["change"],) * 2, rel=1e-4)  # float32 sums
    sums = np.array(list(real[0]["episode_err"].values()))
    assert sums[:, 0].sum() / sums[:, 1].sum() == pytest.approx(real[0]["mse"])
    table = format_fit(rows)
    assert "mse all, images zero" in table and "mse change vs real images" in table
    with pytest.raises(ValueError, match="valid: real, zero, swap"):
        offline_fit([root / "teacher"], data, images=["blurred"])


def test_episode_bootstrap_of_a_ratio_and_of_a_paired_change():
    from distill.diagnose import _ratio_bootstrap

    ones = np.ones(4)
    assert _ratio_bootstrap(2 * ones, ones) == (2.0, 2.0)  # every episode agrees: no spread
    assert _ratio_bootstrap(3 * ones, ones, base=(2 * ones, ones)) == (1.0, 1.0)  # paired: the change is exact
    low, high = _ratio_bootstrap(np.array([0.0, 4.0]), np.array([1.0, 1.0]))
    assert low == 0.0 and high == 4.0  # two episodes: resamples of {0, 4} range over [0, 4]


def test_route_diversity_by_hand():
    from distill.diagnose import route_diversity

    # one fixed route: a collapsed router
    fixed = route_diversity({(0, 2): 10}, 4)
    assert fixed == {"distinct_routes": 1, "route_entropy_bits": 0.0, "usage_entropy_bits": 0.0}
    # two routes, half the inputs each: 1 bit; layers 0 and 3 at p = 1/2 (1 bit each), 1 never, 2 always
    two = route_diversity({(0, 2): 5, (2, 3): 5}, 4)
    assert two["distinct_routes"] == 2
    assert two["route_entropy_bits"] == pytest.approx(1.0)
    assert two["usage_entropy_bits"] == pytest.approx(2 / 4)
