"""Scripted-expert success table of ``simpler_google``: every task x every variant, final-step success.

Each finished (task, variant) cell is appended to ``simpler_google.cells.jsonl`` at once, so an
interrupted run resumes where it stopped (delete that file to start afresh); then
``simpler_google.csv`` (task, variant, episodes, successes, success_rate) and ``simpler_google.md``
are written next to this file from every cell measured so far. Episodes run without rendering
(the experts read privileged state), seed 0, episode indices 0..N-1. Cells run
visual_matching and the distractor variants (the ones that change physics) first.

    .venv/bin/python results/simpler_expert/simpler_google.py --episodes 50 --workers 2
    .venv/bin/python results/simpler_expert/simpler_google.py --episodes 5 --tasks move_near --variants visual_matching
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from tasks.simpler.env import VARIANTS, SimplerEnv
from tasks.simpler.google import ARM, TASKS

HERE = Path(__file__).resolve().parent
SUITE = "simpler_google"


def run_cell(job: tuple[str, str, int, int]) -> tuple[str, str, int, int, list[int], float]:
    """Run ``episodes`` expert episodes of (task, variant); return the counts, failed indices and seconds."""
    task, variant, episodes, seed = job
    t0 = time.perf_counter()
    env = SimplerEnv(SUITE, TASKS[task](), ARM, variant=variant, seed=seed)
    failed = []
    for i in range(episodes):
        env.reset(options={"episode_index": i})
        expert = env.task_spec.make_expert(env)
        info = {"success": False}
        for _ in range(env.max_steps):
            _, _, _, _, info = env.step(expert.act(), render=False)
        if not info["success"]:
            failed.append(i)
    env.close()
    return task, variant, episodes, episodes - len(failed), failed, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    cache = HERE / f"{SUITE}.cells.jsonl"
    rows: dict[tuple[str, str], tuple[int, int]] = {}
    seconds: dict[tuple[str, str], float] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            cell = json.loads(line)
            if cell["episodes"] == args.episodes and cell["seed"] == args.seed:
                rows[cell["task"], cell["variant"]] = (cell["episodes"], cell["successes"])
                seconds[cell["task"], cell["variant"]] = cell["seconds"]
    first = ("visual_matching", "distractors_1", "distractors_2")
    order = [v for v in first if v in args.variants] + [v for v in args.variants if v not in first]
    jobs = [(t, v, args.episodes, args.seed) for v in order for t in args.tasks if (t, v) not in rows]
    with Pool(args.workers) as pool:
        for task, variant, n, ok, failed, secs in pool.imap_unordered(run_cell, jobs):
            rows[task, variant] = (n, ok)
            seconds[task, variant] = secs
            print(f"{task:34s} {variant:18s} {ok}/{n}  failed={failed}  {secs:.0f}s", flush=True)
            with open(cache, "a") as f:
                f.write(json.dumps({"task": task, "variant": variant, "episodes": n, "seed": args.seed,
                                    "successes": ok, "failed": failed, "seconds": round(secs, 1)}) + "\n")
    write_tables(rows, args, sum(seconds.values()))
    return 0


def write_tables(rows: dict[tuple[str, str], tuple[int, int]], args: argparse.Namespace, cell_seconds: float) -> None:
    """Write the csv and markdown tables from the measured cells (missing cells show as '-');
    ``cell_seconds`` is the summed wall time of the cells (worker time, not elapsed time)."""
    with open(HERE / f"{SUITE}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "variant", "episodes", "successes", "success_rate"])
        for t in args.tasks:
            for v in args.variants:
                if (t, v) in rows:
                    n, ok = rows[t, v]
                    w.writerow([t, v, n, ok, f"{ok / n:.3f}"])
    command = "python results/simpler_expert/simpler_google.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Scripted-expert success, `{SUITE}`",
        "",
        f"{args.episodes} episodes per task and variant (seed {args.seed}, episode indices 0..{args.episodes - 1}),",
        "success at the final step, rendering off. Targets: >= 95% on visual_matching, >= 90% on every variant.",
        "",
        f"Produced by `{command.strip()}`: {cell_seconds / 60:.0f} worker-minutes in all (summed per-cell wall time,",
        "2 workers on a shared, heavily loaded 2-core CPU; cells are cached in `simpler_google.cells.jsonl`).",
        "",
        "| task | " + " | ".join(args.variants) + " |",
        "|---|" + "---|" * len(args.variants),
    ]
    for t in args.tasks:
        cells = (f"{rows[t, v][1] / rows[t, v][0]:.0%}" if (t, v) in rows else "-" for v in args.variants)
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    total_ok = sum(ok for _, ok in rows.values())
    total_n = sum(n for n, _ in rows.values())
    lines += ["", f"Overall: {total_ok}/{total_n} = {total_ok / total_n:.1%}.", ""]
    (HERE / f"{SUITE}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
