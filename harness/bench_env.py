"""Cost of one environment step, split into physics and rendering; prints one JSON line.

    actdistill bench env --suite simpler_google
    actdistill bench env --suite simpler_widowx --task put_carrot_on_plate --steps 200
    actdistill bench env --suite libero_spatial --render fast

SIMPLER-style and other suites: ``--steps`` steps with rendering give ``ms_per_step``, then as
many without rendering give ``ms_physics``. ``ms_render`` comes from the env's own split when it
exposes ``env.unwrapped.timings() -> {"physics_ms", "render_ms"}`` (the wall-clock split of its
last ``step``), else it is ``ms_per_step - ms_physics``. All three are medians over the steps;
resets (when an episode ends) are not timed. Actions are smooth random deltas from a fixed seed
with the gripper toggling, so the arm moves and contacts happen. ``libero_*`` suites are measured
by :func:`harness.bench_env_libero.bench_libero`.
"""

from __future__ import annotations

import json
import time

import numpy as np

from tasks.errors import UserInputError

HELP = "median cost of an env step: total, physics, render"


def add_arguments(parser) -> None:
    parser.add_argument("--suite", required=True, help="suite name")
    parser.add_argument("--task", default="0", help="task name or index (default 0)")
    parser.add_argument("--variant", default=None, help="variant name (default: the suite's first)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per phase (default 100)")
    parser.add_argument("--render", choices=("fast", "faithful"), default="fast",
                        help="rendering settings for libero_* suites (default fast)")


def bench_env(suite: str, task: str = "0", variant: str | None = None, steps: int = 100,
              seed: int = 0) -> dict:
    """Median ms per step with rendering, without, and of rendering; see the module docstring."""
    import tasks as suites
    from tasks.base import ACTION_DIM
    from tasks.registry import resolve_task, resolve_variant

    if steps < 1:
        raise UserInputError(f"--steps must be >= 1, got {steps}")
    name = resolve_task(suite, task)
    env = suites.make(suite, name, variant=variant, seed=seed)
    rng = np.random.default_rng(seed)
    action = np.zeros(ACTION_DIM)
    episode = 0

    def phase(render: bool) -> tuple[list[float], list[float]]:
        nonlocal action, episode
        total, split = [], []
        env.reset(seed=seed, options={"episode_index": episode})
        for t in range(steps):
            action = 0.8 * action + 0.2 * rng.uniform(-1, 1, ACTION_DIM)
            action[6] = 1.0 if (t // 20) % 2 else -1.0
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action, render=render)
            total.append((time.perf_counter() - t0) * 1e3)
            if render and hasattr(env.unwrapped, "timings"):
                split.append(float(env.unwrapped.timings()["render_ms"]))
            if terminated or truncated:
                episode += 1
                env.reset(seed=seed, options={"episode_index": episode})
        return total, split

    try:
        with_render, render_split = phase(True)
        physics, _ = phase(False)
    finally:
        env.close()
    ms_step, ms_physics = float(np.median(with_render)), float(np.median(physics))
    ms_render = float(np.median(render_split)) if render_split else max(0.0, ms_step - ms_physics)
    return {"suite": suite, "task": name, "variant": resolve_variant(suite, variant), "steps": steps,
            "ms_per_step": round(ms_step, 3), "ms_physics": round(ms_physics, 3), "ms_render": round(ms_render, 3),
            "render_split": "env.timings()" if render_split else "difference"}


def run(args) -> int:
    if args.suite.startswith("libero_"):
        from harness.bench_env_libero import bench_libero

        result = bench_libero(args.suite, args.task, args.render, args.steps)
    else:
        result = bench_env(args.suite, args.task, args.variant, args.steps)
    print(json.dumps(result))
    return 0
