"""The main sweep that ``bash run_all.sh`` runs: a list of stages over a profile, resumable.

    python -m harness.sweep --profile smoke      # minutes: 2 episodes on 2 tasks per suite
    python -m harness.sweep --profile default    # 10 episodes per task + a sample of every variant
    python -m harness.sweep --profile full       # 50 episodes per task on every variant

Stages now: ``expert_eval`` (the scripted experts over the SIMPLER-style suites: the reference
upper bound of every table). Later stages (demos, teacher, students, report) append to
:func:`stages`. Each stage writes under ``runs/<profile>/``; episodes already stored are
skipped, so rerunning after an interruption continues where it stopped. The upfront time
estimate builds one environment per suite, times its reset and a few expert steps, and assumes
every episode runs to the first task's step limit (SIMPLER-style episodes run to their limit;
drawer tasks have longer limits than pick tasks), so it is a rough guide, not a bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Profile:
    """How much of each suite a sweep covers."""

    name: str
    episodes: int  # per task on the default variant ("visual matching")
    tasks_per_suite: int | None  # first N tasks of each suite; None = all
    variant_episodes: int  # per task on each other variant; 0 = default variant only


PROFILES = {
    "smoke": Profile("smoke", episodes=2, tasks_per_suite=2, variant_episodes=0),
    "default": Profile("default", episodes=10, tasks_per_suite=None, variant_episodes=2),
    "full": Profile("full", episodes=50, tasks_per_suite=None, variant_episodes=50),
}


@dataclass
class Context:
    """What stages share: the profile, the run root and the summaries they produce."""

    profile: Profile
    root: Path
    seed: int = 0
    summaries: dict[str, dict] = field(default_factory=dict)


@dataclass
class Stage:
    """A step of the sweep: ``estimate_s(ctx)`` (rough seconds left) and ``run(ctx)``."""

    name: str
    description: str
    estimate_s: Callable[[Context], float]
    run: Callable[[Context], None]


def simpler_suites() -> list[str]:
    """The SIMPLER-style suites in the registry."""
    import tasks as suites

    return [s for s in suites.suites() if s.startswith("simpler_")]


def _plan(profile: Profile, suite: str) -> list[tuple[list[str], str, int]]:
    """(tasks, variant, episodes) evaluations of ``suite`` under ``profile``."""
    import tasks as suites

    task_names = suites.tasks(suite)[: profile.tasks_per_suite]
    variants = suites.variants(suite)
    plan = [(task_names, variants[0], profile.episodes)]
    if profile.variant_episodes:
        plan += [(task_names, v, profile.variant_episodes) for v in variants[1:]]
    return plan


def _episode_cost_s(suite: str, task: str, seed: int, steps: int = 10) -> tuple[float, float]:
    """(seconds to build the env, seconds of one expert episode run to the step limit), from
    building ``task`` once, one reset and ``steps`` rendered steps (median)."""
    import tasks as suites

    t0 = time.perf_counter()
    env = suites.make(suite, task, seed=seed)
    try:
        t1 = time.perf_counter()
        obs, _ = env.reset(seed=seed, options={"episode_index": 0})
        t2 = time.perf_counter()
        expert = suites.expert(env)
        expert.reset()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            obs, *_ = env.step(expert.act(obs))
            times.append(time.perf_counter() - t)
        return t1 - t0, (t2 - t1) + int(env.unwrapped.max_steps) * float(np.median(times))
    finally:
        env.close()


def _expert_dir(ctx: Context) -> Path:
    return ctx.root / "expert"


def _expert_estimate(ctx: Context) -> float:
    from harness.results import ResultsStore

    total = 0.0
    for suite in simpler_suites():
        plan = _plan(ctx.profile, suite)
        stored = ResultsStore(_expert_dir(ctx)).frame()
        done = stored[stored["suite"] == suite]
        left = sum(len(t) * n for t, _, n in plan) - len(done)
        if left > 0:
            build_s, episode_s = _episode_cost_s(suite, plan[0][0][0], ctx.seed)
            total += left * episode_s + sum(len(t) for t, _, _ in plan) * build_s
    return total


def _expert_run(ctx: Context) -> None:
    from harness.evaluate import evaluate

    summary = None
    for suite in simpler_suites():
        for task_names, variant, episodes in _plan(ctx.profile, suite):
            summary = evaluate("expert", suite, tasks=task_names, variant=variant, episodes=episodes,
                               seed=ctx.seed, out=_expert_dir(ctx), table=False)
    if summary is not None:
        ctx.summaries["scripted experts"] = summary


def stages() -> list[Stage]:
    """The sweep's stages in order."""
    return [
        Stage("expert_eval", "scripted experts on the SIMPLER-style suites", _expert_estimate, _expert_run),
    ]


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default")
    parser.add_argument("--out", default="runs", help="root folder (default runs); results go to OUT/<profile>")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation initial states")
    args = parser.parse_args(argv)
    from harness.results import format_table

    ctx = Context(PROFILES[args.profile], Path(args.out) / args.profile, seed=args.seed)
    todo = stages()
    print(f"[sweep] profile {args.profile} -> {ctx.root}; stages: {', '.join(s.name for s in todo)}")
    estimates = {}
    for stage in todo:
        estimates[stage.name] = stage.estimate_s(ctx)
        print(f"[sweep] estimate {stage.name}: ~{_fmt_s(estimates[stage.name])} ({stage.description})")
    print(f"[sweep] estimated total: ~{_fmt_s(sum(estimates.values()))} (rerun to resume)")
    start = time.perf_counter()
    for i, stage in enumerate(todo, 1):
        print(f"[sweep] stage {i}/{len(todo)}: {stage.name}: {stage.description}")
        t0 = time.perf_counter()
        stage.run(ctx)
        print(f"[sweep] stage {stage.name} done in {_fmt_s(time.perf_counter() - t0)}")
    for title, summary in ctx.summaries.items():
        print(f"\n[sweep] {title}\n{format_table(summary)}")
    print(f"\n[sweep] finished in {_fmt_s(time.perf_counter() - start)}; results under {ctx.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
