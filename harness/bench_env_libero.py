"""Step cost of a LIBERO task in both rendering modes, and how alike their frames are.

    actdistill bench env --suite libero_spatial --render fast
    actdistill bench env --suite libero_object --task 3 --render faithful --steps 50

For each mode, ``steps`` control steps with smooth random actions (fixed seed) are timed as
physics (``env.step(action, render=False)``) plus rendering both cameras (``env.images()``);
``ms_per_step`` is the median of their sum, ``ms_physics`` and ``ms_render`` the medians of the
parts. ``similarity_mad`` is the mean absolute pixel difference (0-255 scale) between fast and
faithful frames of the same states (both cameras, every 10th step of the chosen mode's run).
"""

from __future__ import annotations

import time

import numpy as np

from tasks.base import ACTION_DIM, IMAGE_KEYS
from tasks.errors import UserInputError


def _timed_run(env, steps: int, seed: int, states: list | None) -> dict:
    rng = np.random.default_rng(seed)
    action = np.zeros(ACTION_DIM)
    physics, render = [], []
    env.reset(options={"episode_index": 0})
    for t in range(steps):
        action = 0.8 * action + 0.2 * rng.uniform(-1, 1, ACTION_DIM)
        action[6] = 1.0 if (t // 20) % 2 else -1.0
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action, render=False)
        t1 = time.perf_counter()
        frames = env.images()
        t2 = time.perf_counter()
        physics.append(t1 - t0)
        render.append(t2 - t1)
        if states is not None and t % 10 == 0:
            states.append((env.sim_env.sim.get_state().flatten(), frames))
        if terminated or truncated:
            env.reset(options={"episode_index": (env.episode_index + 1) % env.num_init_states})
    total = np.array(physics) + np.array(render)
    return {
        "ms_per_step": round(float(np.median(total)) * 1e3, 3),
        "ms_physics": round(float(np.median(physics)) * 1e3, 3),
        "ms_render": round(float(np.median(render)) * 1e3, 3),
    }


def bench_libero(suite: str, task: str | int, render: str = "fast", steps: int = 100, seed: int = 0) -> dict:
    """Median ms per step (total, physics, render) in ``render`` mode and in the other mode, plus
    ``similarity_mad``, the mean absolute pixel difference between fast and faithful frames of the
    same states. Returns a flat dict (no printing)."""
    import tasks as suites
    from tasks.libero import RENDER_MODES
    from tasks.registry import resolve_task

    if render not in RENDER_MODES:
        raise UserInputError(f"unknown render mode {render!r}; valid modes: {', '.join(RENDER_MODES)}")
    if steps < 1:
        raise UserInputError(f"steps must be >= 1, got {steps}")
    name = resolve_task(suite, task)
    other = next(m for m in RENDER_MODES if m != render)
    env = suites.make(suite, name, seed=seed, render=render)
    try:
        states: list = []
        chosen = _timed_run(env, steps, seed, states)
        env.set_render_mode(other)
        second = _timed_run(env, steps, seed, None)
        diffs = []
        for flat, frames in states:
            env.sim_env.sim.set_state_from_flattened(flat)
            env.sim_env.sim.forward()
            again = env.images()
            diffs.extend(np.abs(frames[k].astype(np.int16) - again[k]).mean() for k in IMAGE_KEYS)
        result = {
            "suite": suite,
            "task": name,
            "render": render,
            "image_size": env.image_size,
            "steps": steps,
            **chosen,
            **{f"{other}_{k}": v for k, v in second.items()},
            "similarity_mad": round(float(np.mean(diffs)), 3),
            "similarity_frames": len(diffs),
            "versions": env.versions,
        }
    finally:
        env.close()
    return result
