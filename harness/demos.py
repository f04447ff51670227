"""Record successful scripted-expert episodes as a demonstration dataset (``actdistill demos``).

    from harness.demos import record_demos
    meta = record_demos("simpler_widowx", "data/widowx", episodes=50)
    meta = record_demos("simpler_google", "data/google-dart", noise=0.1, noise_hold=8)   # recoveries (DART)
    meta = record_demos("simpler_widowx", "data/widowx-lerobot", data_format="lerobot")   # LeRobot v3.0 layout
"""

from __future__ import annotations

import math

from tasks.errors import UserInputError

FORMATS = ("actdistill", "lerobot")  # tasks.datasets.DemoWriter, tasks.lerobot.LeRobotWriter


def record_demos(suite: str, out: str, *, tasks: list[str] | None = None, variant: str | None = None,
                 episodes: int = 50, max_attempts: int | None = None, seed: int = 1, crf: int = 0,
                 overwrite: bool = False, progress: bool = True, codec: str = "h264", noise: float = 0.0,
                 noise_hold: int = 1, data_format: str = "actdistill") -> dict:
    """Record ``episodes`` successful expert episodes per task into ``out``; return the dataset meta.

    ``noise`` > 0: the env executes the expert's action plus Gaussian noise of that std on the six arm
    dimensions (clipped to the action range; the gripper is left alone), while the dataset records the
    expert's clean action. The expert closes its loop on the measured hand pose, so the episodes show
    how to recover from drift (DART, Laskey et al. 2017). The noise of episode ``i`` of a task comes
    from a generator seeded by ``(seed, task, i)``, so a recording is reproducible.

    ``data_format``: ``"actdistill"`` (:mod:`tasks.datasets`) or ``"lerobot"`` (the LeRobot v3.0 layout,
    :mod:`tasks.lerobot`; the same meta keys are returned).

    ``meta["expert_success"][task]`` holds ``{"attempts", "successes", "rate"}``; a task where the
    expert never succeeds is reported and contributes no episodes. Raises ``ValueError`` for
    unknown names or when no task yields a successful episode.
    """
    import tasks as suites
    from harness.rollout import rollout
    from tasks.datasets import DemoWriter
    from tasks.lerobot import LeRobotWriter
    from tasks.provenance import versions
    from tasks.registry import resolve_task, resolve_variant

    if data_format not in FORMATS:
        raise UserInputError(f"unknown --format {data_format!r}; valid formats: {', '.join(FORMATS)}")
    if episodes < 1:
        raise UserInputError(f"--episodes must be >= 1, got {episodes}")
    check_noise(noise, noise_hold)
    attempts_cap = max_attempts if max_attempts is not None else 2 * episodes + 10
    if attempts_cap < episodes:
        raise UserInputError(f"--max-attempts {attempts_cap} is below --episodes {episodes}")
    task_names = [resolve_task(suite, t) for t in tasks] if tasks else suites.tasks(suite)
    variant = resolve_variant(suite, variant)
    writer_class = LeRobotWriter if data_format == "lerobot" else DemoWriter
    writer = writer_class(out, suite=suite, variant=variant, crf=crf, overwrite=overwrite, versions=versions(),
                        codec=codec)
    stats: dict[str, dict] = {}
    failures: dict[str, dict[str, int]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes * len(task_names), desc=f"demos {suite}", unit="demo", dynamic_ncols=True)
    for task in task_names:
        env = suites.make(suite, task, variant=variant, seed=seed)
        try:
            expert = suites.expert(env)
            kept = tried = 0
            while kept < episodes and tried < attempts_cap:
                perturb = _noise(noise, noise_hold, seed, task, tried) if noise > 0 else None
                result = rollout(expert, env, episode_index=tried, seed=seed, record=True, perturb=perturb)
                if result.success:
                    writer.add(result.record, task=task, seed=seed, episode_index=tried)
                    kept += 1
                    if bar is not None:
                        bar.update(1)
                elif result.failure_reason:
                    failures.setdefault(task, {}).setdefault(result.failure_reason, 0)
                    failures[task][result.failure_reason] += 1
                tried += 1
        finally:
            env.close()
        stats[task] = {"attempts": tried, "successes": kept, "rate": kept / tried}
        line = f"[demos] {suite}/{task}: expert success {kept}/{tried} ({100 * kept / tried:.0f}%)"
        if failures.get(task):
            line += f"; errors: {failures[task]}"
        (print if bar is None else bar.write)(line)
    if bar is not None:
        bar.close()
    extra = {"expert_success": stats, "seed": seed, "failure_reasons": failures}
    if noise > 0:
        extra["action_noise"] = {"std": noise, "hold": noise_hold}
    return writer.close(extra=extra)


def check_noise(noise: float, noise_hold: int) -> None:
    """Raise ``ValueError`` naming a bad ``--noise`` (outside [0, 1] action units) or ``--noise-hold`` (< 1)."""
    if not (math.isfinite(noise) and 0.0 <= noise <= 1.0):
        raise UserInputError(f"--noise must be in [0, 1] action units, got {noise}")
    if noise_hold < 1:
        raise UserInputError(f"--noise-hold must be >= 1 step, got {noise_hold}")


def _noise(std: float, hold: int, seed: int, task: str, episode: int):
    """The executed-action perturbation of one episode: Gaussian on the arm dimensions, each draw held
    for ``hold`` steps, clipped to the action range."""
    import zlib

    import numpy as np

    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), episode, 0xDA27])
    state = {"t": 0, "draw": np.zeros(6)}

    def perturb(action: np.ndarray) -> np.ndarray:
        if state["t"] % hold == 0:
            state["draw"] = rng.normal(0.0, std, 6)
        state["t"] += 1
        out = np.array(action, dtype=np.float64)
        out[:6] = np.clip(out[:6] + state["draw"], -1.0, 1.0)
        return out

    return perturb
