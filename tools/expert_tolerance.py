"""How far off its targets a scripted expert may be and still succeed: each task's tolerance.

    MUJOCO_GL=egl python -m tools.expert_tolerance --suite simpler_google --bias 0,0.01,0.02,0.03 --episodes 10
    MUJOCO_GL=egl python -m tools.expert_tolerance --suite simpler_widowx --tasks 0,1 --bias 0,0.02

The SIMPLER-style experts (``tasks.simpler.experts.WaypointExpert``) aim every waypoint at ``target +
bias``: a constant horizontal offset of the given length (metres) in a direction drawn per episode from
(seed, episode), the same direction for every bias, so the biases are compared on the same initial states
and directions. Prints one row per task with the success rate and 95% Wilson interval at each bias. A task
whose expert fails at a 1 cm bias needs a policy that places the hand to better than a centimetre.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np


def bias_vector(length: float, seed: int, episode: int) -> np.ndarray:
    """(3,) world-frame offset of ``length`` metres in a horizontal direction drawn from (seed, episode)."""
    angle = np.random.default_rng([seed, episode, 0xB1A5]).uniform(0.0, 2.0 * math.pi)
    return np.array([math.cos(angle), math.sin(angle), 0.0]) * length


def tolerance(suite: str, tasks: Sequence[str], biases: Sequence[float], episodes: int, seed: int = 0,
              variant: str | None = None) -> dict[str, dict[float, list[bool]]]:
    """``{task: {bias: [success of episode 0..episodes-1]}}`` of the biased expert on ``suite``."""
    import tasks as suites
    from harness.rollout import rollout

    out: dict[str, dict[float, list[bool]]] = {}
    for task in tasks:
        env = suites.make(suite, task, variant=variant, seed=seed)
        try:
            expert = suites.expert(env)
            if not hasattr(expert, "target_bias"):
                raise SystemExit(f"the expert of {suite}/{task} takes no target bias (SIMPLER-style suites only)")
            out[task] = {}
            for bias in biases:
                wins = []
                for i in range(episodes):
                    expert.target_bias = bias_vector(bias, seed, i)
                    wins.append(bool(rollout(expert, env, episode_index=i, seed=seed).success))
                out[task][bias] = wins
        finally:
            env.close()
    return out


def format_tolerance(results: dict[str, dict[float, list[bool]]]) -> str:
    """A markdown table: per task, the success rate [95% Wilson interval] at each bias."""
    from harness.stats import wilson

    biases = sorted({b for per in results.values() for b in per})
    lines = ["| task | " + " | ".join(f"bias {100 * b:g} cm" for b in biases) + " |",
             "|---|" + "---|" * len(biases)]
    for task, per in results.items():
        cells = []
        for b in biases:
            wins = per[b]
            lo, hi = wilson(sum(wins), len(wins))
            cells.append(f"{100 * sum(wins) / len(wins):.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tasks as suites
    from tasks.registry import resolve_task

    p = argparse.ArgumentParser(prog="python -m tools.expert_tolerance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", required=True, help="a SIMPLER-style suite, e.g. simpler_google")
    p.add_argument("--tasks", default=None, help="comma-separated task names or indices (default: all)")
    p.add_argument("--bias", default="0,0.01,0.02,0.03", help="comma-separated offsets in metres")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task and bias (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial states and directions")
    p.add_argument("--variant", default=None, help="variant (default: the suite's first)")
    args = p.parse_args(argv)
    names = [resolve_task(args.suite, t.strip()) for t in args.tasks.split(",")] if args.tasks \
        else suites.tasks(args.suite)
    biases = [float(b) for b in args.bias.split(",") if b.strip()]
    print(format_tolerance(tolerance(args.suite, names, biases, args.episodes, args.seed, args.variant)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
