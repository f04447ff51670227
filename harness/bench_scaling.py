"""Ray scaling of evaluation: episodes per minute of the scripted expert for each worker count.

    actdistill bench scaling --suite simpler_google --workers 1,2
    actdistill bench scaling --suite simpler_widowx --workers 1,2,4,8 --episodes 8 --tasks 0,1
    actdistill bench scaling --suite simpler_google --workers 4,8 --address auto   # existing cluster

For each worker count the same episodes run through the full evaluator (Ray backend, results
store, fresh run folder), timed from the call to the last stored row, so actor start-up and
environment construction count. Prints one JSON line per count (``workers``, ``episodes``,
``wall_s``, ``episodes_per_min``, ``speedup`` over the smallest count, ``efficiency`` = speedup /
(workers / smallest count), plus ``first_episode_s`` (start-up until the first stored episode) and
``steady_episodes_per_min`` (rate after the first ``workers`` episodes, i.e. without start-up))
and a summary line, which also says whether every worker count gave
the same per-episode outcomes. With several processes sharing few cores the numbers say as much
about the machine as about the evaluator: ``cpus`` is reported alongside.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from harness.results import read_episodes
from tasks.errors import UserInputError

HELP = "episodes per minute of the Ray evaluator per worker count (scripted expert)"


def add_arguments(parser) -> None:
    parser.add_argument("--suite", required=True, help="suite name, e.g. simpler_google")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task (default 4)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names or indices (default: all)")
    parser.add_argument("--variant", default=None, help="variant (default: the suite's first)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap on steps per episode (default: suite's)"
    )
    parser.add_argument("--address", default=None, help="join this Ray cluster instead of a local instance")


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise UserInputError(f"--workers must be comma-separated positive integers, got {text!r}") from exc
    if not counts or counts[0] < 1:
        raise UserInputError(f"--workers must be comma-separated positive integers, got {text!r}")
    return counts


def scaling(
    suite: str,
    workers: list[int],
    *,
    episodes: int = 4,
    tasks: list[str] | None = None,
    variant: str | None = None,
    max_steps: int | None = None,
    address: str | None = None,
    backend_kwargs: dict[str, Any] | None = None,
    emit=print,
) -> dict[str, Any]:
    """Time the expert's evaluation at each worker count; ``emit`` each JSON line; return the summary.

    ``backend_kwargs`` go to :class:`harness.ray_backend.RayBackend` (e.g. ``worker_setup`` in tests).
    """

    from harness.evaluate import BACKENDS, evaluate
    from harness.ray_backend import RayBackend, init_ray

    init_ray(num_cpus=max(workers), address=address)
    rows, outcomes = [], []
    for count in workers:
        name = f"_bench_ray_{count}"
        backend = RayBackend(count, address=address, **(backend_kwargs or {}))
        marks: list[float] = []

        def timed(jobs, source, options, backend=backend, marks=marks):
            for item in backend(jobs, source, options):
                marks.append(time.perf_counter())
                yield item

        BACKENDS[name] = timed
        try:
            with tempfile.TemporaryDirectory(prefix="bench_scaling_") as out:
                start = time.perf_counter()
                evaluate(
                    "expert",
                    suite,
                    tasks=tasks,
                    variant=variant,
                    episodes=episodes,
                    out=out,
                    max_steps=max_steps,
                    backend=name,
                    progress=False,
                    quiet=True,
                )
                wall = time.perf_counter() - start
                df = read_episodes(out)
        finally:
            del BACKENDS[name]
        outcomes.append(df.set_index("key")[["success", "steps"]].sort_index())
        # after the first `count` episodes every worker is up and has built an environment
        warm = marks[min(count, len(marks)) - 1]
        steady = (len(marks) - min(count, len(marks))) / (marks[-1] - warm) * 60 if marks[-1] > warm else None
        row = {
            "workers": count,
            "episodes": len(df),
            "wall_s": round(wall, 3),
            "episodes_per_min": round(60 * len(df) / wall, 3),
            "first_episode_s": round(marks[0] - start, 3),
            "steady_episodes_per_min": None if steady is None else round(steady, 3),
            "success_rate": float(df["success"].mean()),
        }
        base = rows[0] if rows else row
        row["speedup"] = round(row["episodes_per_min"] / base["episodes_per_min"], 3)
        row["efficiency"] = round(row["speedup"] / (count / base["workers"]), 3)
        rows.append(row)
        emit(json.dumps({"suite": suite, **row}))
    summary = {
        "summary": True,
        "suite": suite,
        "cpus": os.cpu_count(),
        "episodes_per_min": {r["workers"]: r["episodes_per_min"] for r in rows},
        "scaling_efficiency": {r["workers"]: r["efficiency"] for r in rows},
        "outcomes_match": all(o.equals(outcomes[0]) for o in outcomes[1:]),
    }
    emit(json.dumps(summary))
    return summary


def run(args) -> int:
    task_list = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    summary = scaling(
        args.suite,
        _counts(args.workers),
        episodes=args.episodes,
        tasks=task_list,
        variant=args.variant,
        max_steps=args.max_steps,
        address=args.address,
    )
    return 0 if summary["outcomes_match"] else 1
