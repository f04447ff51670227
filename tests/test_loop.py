"""The training loop (distill.loop): exact resume, refused resumes, save cadence, time budget, weight average,
and its pieces (batch order, learning-rate schedule, TimeBudget) on a toy regression."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distill import loop as loop_mod
from distill.loop import (
    STATE,
    EpisodeGroupedBatches,
    LoopSettings,
    TimeBudget,
    TrainingLoop,
    WeightAverage,
    lr_factor,
)
from tasks.errors import UserInputError

X = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
DATA = [{"x": X[i], "y": X[i].sum(0, keepdim=True)} for i in range(10)]


def collate(items: list) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def toy(workdir, steps=7, save_every=3, ema=None, crash_at=None, fingerprint=None, time_budget_s=None,
        on_save=None) -> tuple[dict, nn.Module, WeightAverage | None]:
    """Train a linear model on DATA; the step draws noise from torch's global RNG (like stage 2's gate noise)."""
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    average = WeightAverage(net, ema) if ema else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)

    def step_fn(batch, step, total):
        if step == crash_at:
            raise KeyboardInterrupt("simulated crash")
        noisy = batch["x"] + 0.1 * torch.randn_like(batch["x"])
        loss = (net(noisy) - batch["y"]).square().mean()
        return {"loss": loss, "noise": noisy.sub(batch["x"]).abs().mean()}

    loop = TrainingLoop("toy", workdir, fingerprint or {"lr": 0.1})
    result = loop.run(modules={"net": net}, optimizer=optimizer, step_fn=step_fn, dataset=DATA, collate_fn=collate,
                      settings=LoopSettings(steps=steps, batch_size=4, warmup=2, grad_clip=1.0, save_every=save_every,
                                            seed=1, time_budget_s=time_budget_s),
                      average=average, on_save=on_save, progress=False)
    return result, net, average


def test_a_crashed_run_resumes_exactly_and_writes_its_outputs(tmp_path):
    straight, net, average = toy(tmp_path / "a", ema=0.5)
    with pytest.raises(KeyboardInterrupt):
        toy(tmp_path / "b", ema=0.5, crash_at=5)  # the state of step 3 survives
    assert torch.load(tmp_path / "b" / STATE, weights_only=True)["step"] == 3
    resumed, net_b, average_b = toy(tmp_path / "b", ema=0.5)
    assert resumed["history"] == straight["history"]  # bitwise: the noise after the resume is drawn again
    assert [h["step"] for h in resumed["history"]] == list(range(7)) and resumed["step"] == resumed["steps"] == 7
    for a, b in ((net, net_b), (average.model, average_b.model)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    assert (tmp_path / "a" / "loss.png").is_file()
    assert straight["history"][0]["lr"] == pytest.approx(0.1 * lr_factor(0, 2, 7))  # the rate this step used


def test_a_resume_with_other_settings_or_an_old_state_is_refused(tmp_path):
    toy(tmp_path / "a", steps=2)
    with pytest.raises(UserInputError, match=r"other settings: lr=0.1 \(now 0.2\); resume with the same"):
        toy(tmp_path / "a", fingerprint={"lr": 0.2})
    toy(tmp_path / "b", steps=2, ema=0.5)
    with pytest.raises(UserInputError, match="trained with a weight average .ema decay 0.5.; resume it with the same"):
        toy(tmp_path / "b", steps=3)
    torch.save({"step": 1, "history": []}, tmp_path / "c.pt")
    (tmp_path / "c").mkdir()
    (tmp_path / "c.pt").rename(tmp_path / "c" / STATE)
    with pytest.raises(UserInputError, match="earlier version of the training loop"):
        toy(tmp_path / "c")


def test_saves_every_n_steps_and_at_the_end_and_once_when_nothing_is_left(tmp_path):
    calls = []
    toy(tmp_path / "a", steps=7, save_every=3, on_save=lambda step, total, history: calls.append((step, len(history))))
    assert calls == [(3, 3), (6, 6), (7, 7)]
    calls.clear()
    result = toy(tmp_path / "a", steps=7, on_save=lambda step, total, history: calls.append((step, total)))[0]
    assert calls == [(7, 7)] and result["step"] == 7  # resumed at its end: no step, the outputs written again
    assert toy(tmp_path / "a", steps=9, save_every=100)[0]["step"] == 9  # a resume may extend the run


def test_time_budget_fits_the_total_and_the_schedule_follows_it(tmp_path, monkeypatch, capsys):
    ticks = iter(np.arange(0.0, 1e4, 1.0))  # every clock read is one second later
    monkeypatch.setattr(loop_mod.time, "perf_counter", lambda: float(next(ticks)))
    totals = []
    result = toy(tmp_path / "t", steps=1000, save_every=500, time_budget_s=60.0,
                 on_save=lambda step, total, history: totals.append(total))[0]
    total = result["steps"]
    assert 20 < total < 1000 and result["step"] == total == len(result["history"]) and totals == [total]
    assert result["history"][-1]["lr"] == pytest.approx(0.1 * lr_factor(total - 1, 2, total))
    out = capsys.readouterr()
    assert f"fits {total} of the 1000 steps asked for" in out.out + out.err  # the cut is said, not only drawn


def test_the_weight_average_follows_its_decay(tmp_path):
    weights = []  # the trained weights after each step, read back from each step's training state
    net = toy(tmp_path / "plain", steps=5, save_every=1, on_save=lambda step, total, history: weights.append(
        torch.load(tmp_path / "plain" / STATE, weights_only=True)["modules"]["net"]))[1]
    torch.manual_seed(0)
    expected = nn.Linear(3, 1).state_dict()  # the initial weights
    for step, w in enumerate(weights):
        d = min(0.9, (1 + step) / (10 + step))
        expected = {k: d * v + (1 - d) * w[k] for k, v in expected.items()}
    _, raw, average = toy(tmp_path / "ema", steps=5, ema=0.9)
    for name, value in average.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=1e-6)
        assert torch.equal(raw.state_dict()[name], net.state_dict()[name])  # the average does not change training
    with pytest.raises(UserInputError, match="ema decay must be in"):
        WeightAverage(net, 1.0)


def test_time_budget_sets_the_total_from_the_measured_rate(monkeypatch):
    clock = iter([0.0, 1.0] + [1.0 + 0.5 * k for k in range(1, 40)])  # start, first step, then 0.5 s/step
    monkeypatch.setattr(loop_mod.time, "perf_counter", lambda: next(clock))
    budget = TimeBudget(21.0, calibrate=4)
    assert budget.after_step(1, 1000) is None  # first step: start-up, not timed
    assert [budget.after_step(s, 1000) for s in (2, 3, 4)] == [None, None, None]
    # at step 5: 4 timed steps in 2 s (2 steps/s), 21 - 3 = 18 s left -> 5 + 36 = 41
    assert budget.after_step(5, 1000) == 41
    assert budget.after_step(6, 1000) is None  # set once
    capped = TimeBudget(1e6, calibrate=1)
    capped.after_step(1, 50)
    assert capped.after_step(2, 50) == 50  # never above the given maximum
    with pytest.raises(ValueError, match="time budget must be > 0"):
        TimeBudget(0)


def test_grouped_batches_cover_each_item_once_per_epoch_and_resume():
    episodes = np.repeat(np.arange(10), 7)  # 10 episodes of 7 items
    full = list(EpisodeGroupedBatches(episodes, 5, seed=3, start=0, stop=28, group=3))
    flat = np.concatenate(full)
    assert sorted(flat[:70].tolist()) == list(range(70))  # first epoch: every item once
    for batch in full[:13]:  # within an epoch a batch spans at most two groups = 6 episodes
        assert len(set(episodes[batch])) <= 6
    assert list(EpisodeGroupedBatches(episodes, 5, seed=3, start=17, stop=28, group=3)) == full[17:]


def test_lr_schedule():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, 10, 100) < 1.0
