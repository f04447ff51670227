"""Measure the scripted expert of a SIMPLER-style suite per task x variant and write the table.

Regenerate (seed 0, episode indices 0..49, every variant; a few minutes on 2 cores)::

    MUJOCO_GL=egl python results/simpler_expert/expert_table.py --suite simpler_widowx --episodes 50 --workers 2

Writes ``<suite>.csv`` (one row per task x variant) and ``<suite>.md`` next to this file.
Episodes run with ``render=False`` (the expert reads privileged state, not images).
"""

from __future__ import annotations

import argparse
import csv
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent


def run_cell(suite: str, task: str, variant: str, episodes: int, seed: int) -> dict:
    """Run ``episodes`` expert episodes of one (task, variant); return counts and the failed indices."""
    from tasks import registry

    env = registry.make(suite, task, variant=variant, seed=seed)
    expert = registry.expert(env)
    failed = []
    t0 = time.perf_counter()
    for ep in range(episodes):
        env.reset(options={"episode_index": ep})
        expert.reset()
        info = {"success": False}
        for _ in range(env.max_steps):
            _, _, _, _, info = env.step(expert.act(), render=False)
        if not info["success"]:
            failed.append(ep)
    env.close()
    return {
        "task": task,
        "variant": variant,
        "episodes": episodes,
        "successes": episodes - len(failed),
        "failed_episodes": " ".join(map(str, failed)),
        "seconds": time.perf_counter() - t0,
    }


def write_tables(suite: str, rows: list[dict], seed: int, command: str) -> None:
    """Write the per-cell CSV and the task x variant markdown table."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    with open(OUT_DIR / f"{suite}.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=[
                "suite",
                "task",
                "variant",
                "episodes",
                "successes",
                "success_rate",
                "failed_episodes",
            ],
        )
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "suite": suite,
                    "task": r["task"],
                    "variant": r["variant"],
                    "episodes": r["episodes"],
                    "successes": r["successes"],
                    "success_rate": f"{r['successes'] / r['episodes']:.3f}",
                    "failed_episodes": r["failed_episodes"],
                }
            )
    cell = {(r["task"], r["variant"]): r for r in rows}
    lines = [
        f"# Scripted expert success: `{suite}`",
        "",
        (
            f"Success rate (%) over {rows[0]['episodes']} episodes per cell (seed {seed}, episode indices "
            f"0..{rows[0]['episodes'] - 1}), judged at the final step. Targets: >= 95% on visual_matching, "
            ">= 90% on every variant."
        ),
        "",
        "| task | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    for task in tasks:
        vals = [f"{100 * cell[(task, v)]['successes'] / cell[(task, v)]['episodes']:.0f}" for v in variants]
        lines.append(f"| {task} | " + " | ".join(vals) + " |")
    lines += [
        "",
        f"Per-cell counts and failed episode indices: `{suite}.csv`.",
        "",
        "Produced by:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    (OUT_DIR / f"{suite}.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", required=True, choices=["simpler_google", "simpler_widowx"])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from tasks import registry

    cells = [(t, v) for t in registry.tasks(args.suite) for v in registry.variants(args.suite)]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_cell, args.suite, t, v, args.episodes, args.seed) for t, v in cells]
        rows = []
        for fut in futures:
            rows.append(fut.result())
            r = rows[-1]
            print(
                f"{r['task']:34s} {r['variant']:18s} {r['successes']}/{r['episodes']}  ({r['seconds']:.1f} s)",
                flush=True,
            )
    command = (
        f"MUJOCO_GL=egl python results/simpler_expert/expert_table.py --suite {args.suite} --episodes {args.episodes} "
        f"--seed {args.seed} --workers {args.workers}"
    )
    write_tables(args.suite, rows, args.seed, command)


if __name__ == "__main__":
    main()
