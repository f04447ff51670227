"""Record successful scripted-expert episodes as a demonstration dataset (see tasks/datasets.py).

    actdistill demos --suite simpler_widowx --episodes 50 --out data/widowx
    actdistill demos --suite simpler_google --tasks move_near,0 --episodes 20 --out data/google --overwrite
    actdistill demos --family simpler --out data/simpler    # the reference teacher's set (harness/demo_sets.py)

Per task it runs the expert on episode indices 0, 1, 2, ... (initial states from --seed; the
default seed 1 keeps demonstrations off the evaluation states of seed 0) and keeps successful
episodes until --episodes are stored or --max-attempts were tried, then reports the expert's
success rate. An existing dataset is never overwritten without --overwrite.
"""

from __future__ import annotations

import math

HELP = "record scripted-expert demonstrations into a dataset folder"


def add_arguments(parser) -> None:
    parser.add_argument("--suite", default=None, help="suite name, e.g. simpler_widowx")
    parser.add_argument("--family", default=None,
                        help="record a family's reference set instead of one suite (see harness/demo_sets.py)")
    parser.add_argument("--scale", type=float, default=1.0, help="with --family: scale the episode counts")
    parser.add_argument("--tasks", default=None, help="comma-separated task names or indices (default: all)")
    parser.add_argument("--variant", default=None, help="variant name (default: the suite's first)")
    parser.add_argument("--episodes", type=int, default=50, help="successful episodes per task (default 50)")
    parser.add_argument("--max-attempts", type=int, default=None,
                        help="episodes tried per task before giving up (default 2 x episodes + 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the initial states (default 1)")
    parser.add_argument("--crf", type=int, default=0, help="H.264 constant rate factor; 0 = lossless (default)")
    parser.add_argument("--codec", default="h264", choices=["h264", "npy"],
                        help="image storage: h264 (lossless at --crf 0, needs ffmpeg) or npy (raw uint8; default h264)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="with --family: record that many folders at once, one per task (default 1)")
    parser.add_argument("--noise", type=float, default=0.0,
                        help="std of Gaussian noise added to the executed arm action (not the recorded label), "
                             "in action units; DART-style demonstrations of recoveries (default 0: none)")
    parser.add_argument("--noise-hold", type=int, default=1,
                        help="steps each noise draw is held (a drift like an open-loop action chunk's; default 1)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")


def record_demos(suite: str, out: str, *, tasks: list[str] | None = None, variant: str | None = None,
                 episodes: int = 50, max_attempts: int | None = None, seed: int = 1, crf: int = 0,
                 overwrite: bool = False, progress: bool = True, codec: str = "h264", noise: float = 0.0,
                 noise_hold: int = 1) -> dict:
    """Record ``episodes`` successful expert episodes per task into ``out``; return the dataset meta.

    ``noise`` > 0: the env executes the expert's action plus Gaussian noise of that std on the six arm
    dimensions (clipped to the action range; the gripper is left alone), while the dataset records the
    expert's clean action. The expert closes its loop on the measured hand pose, so the episodes show
    how to recover from drift (DART, Laskey et al. 2017). The noise of episode ``i`` of a task comes
    from a generator seeded by ``(seed, task, i)``, so a recording is reproducible.

    ``meta["expert_success"][task]`` holds ``{"attempts", "successes", "rate"}``; a task where the
    expert never succeeds is reported and contributes no episodes. Raises ``ValueError`` for
    unknown names or when no task yields a successful episode.
    """
    import tasks as suites
    from harness.rollout import rollout
    from harness.versions import versions
    from tasks.datasets import DemoWriter
    from tasks.registry import resolve_task, resolve_variant

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    check_noise(noise, noise_hold)
    attempts_cap = max_attempts if max_attempts is not None else 2 * episodes + 10
    if attempts_cap < episodes:
        raise ValueError(f"--max-attempts {attempts_cap} is below --episodes {episodes}")
    task_names = [resolve_task(suite, t) for t in tasks] if tasks else suites.tasks(suite)
    variant = resolve_variant(suite, variant)
    writer = DemoWriter(out, suite=suite, variant=variant, crf=crf, overwrite=overwrite, versions=versions(),
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
        raise ValueError(f"--noise must be in [0, 1] action units, got {noise}")
    if noise_hold < 1:
        raise ValueError(f"--noise-hold must be >= 1 step, got {noise_hold}")


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


def run(args) -> int:
    import sys

    if (args.suite is None) == (args.family is None):
        raise ValueError("give exactly one of --suite SUITE or --family FAMILY")
    if args.family is not None:
        from harness.demo_sets import record_family

        folders = record_family(args.family, args.out, scale=args.scale, jobs=args.jobs, codec=args.codec,
                                noise=args.noise, noise_hold=args.noise_hold)
        print(f"[demos] {args.family}: {len(folders)} dataset folders under {args.out}")
        return 0
    task_list = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    try:
        meta = record_demos(args.suite, args.out, tasks=task_list, variant=args.variant, episodes=args.episodes,
                            max_attempts=args.max_attempts, seed=args.seed, crf=args.crf,
                            overwrite=args.overwrite, codec=args.codec, noise=args.noise,
                            noise_hold=args.noise_hold)
    except FileExistsError as exc:
        print(f"actdistill demos: error: {exc}", file=sys.stderr)
        return 2
    short = [t for t, s in meta["expert_success"].items() if s["successes"] < args.episodes]
    print(f"[demos] wrote {meta['episodes']} episodes ({meta['steps']} steps, {meta['bytes'] / 1e6:.1f} MB of images, "
          f"max pixel error {meta['image_codec']['max_abs_error']}) to {args.out}")
    if short:
        print(f"[demos] warning: fewer than {args.episodes} demos for {', '.join(short)} (attempt cap reached)")
    return 0
