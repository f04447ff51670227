"""Success of the scripted LIBERO expert over official init states (or sampled placements); writes
CSV + markdown tables.

    python -m tasks.libero.evaluate_expert --suites libero_spatial libero_object --episodes 10
    python -m tasks.libero.evaluate_expert --suites libero_goal --tasks 0 3 --episodes 50 --out results/libero_expert
    python -m tasks.libero.evaluate_expert --suites libero_spatial --variant sampled_init --seed 1 \
        --out results/libero_expert/sampled_init

Episodes follow the env protocol (init state i, 10 wait steps, the suite's step budget, success
from the BDDL goal); with ``--variant sampled_init`` episode i starts from placement i drawn with
``--seed`` (as demonstrations are recorded). No frames are rendered: the expert reads the simulator. Rows are appended
per task to ``<out>/per_task.csv`` (one row per suite/task, replaced when re-run) and
``<out>/README.md`` is regenerated from the CSV with the command lines that produced it.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import shlex
import sys
import time
from pathlib import Path

from tasks.errors import UserInputError

FIELDS = [
    "suite",
    "task_index",
    "task",
    "episodes",
    "successes",
    "success_rate",
    "mean_steps",
    "seconds",
    "expert",
    "code",
    "command",
    "variant",
    "seed",
]


def _code_version() -> str:
    """Git commit of this checkout (``-dirty`` when tracked files under tasks/libero differ), or ``unknown``."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], check=False, cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "tasks/libero"], check=False, cwd=root
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.returncode != 0 else "")


def run_task(suite: str, task: str, episodes: list[int], variant: str = "default", seed: int = 0) -> dict:
    """Roll out the expert on ``episodes`` (init-state or placement indices) of one task; returns a table row."""
    import tasks

    env = tasks.make(suite, task, variant=variant, seed=seed)
    expert = tasks.expert(env)
    successes, steps = 0, []
    start = time.perf_counter()
    try:
        for index in episodes:
            obs, _ = env.reset(options={"episode_index": index})
            expert.reset()
            info = {"success": False}
            for t in range(env.max_steps):
                obs, _, terminated, truncated, info = env.step(expert.act(obs), render=False)
                if terminated or truncated:
                    break
            successes += int(info["success"])
            steps.append(t + 1)
    finally:
        env.close()
    return {
        "suite": suite,
        "task": task,
        "episodes": len(episodes),
        "successes": successes,
        "success_rate": round(successes / len(episodes), 4),
        "mean_steps": round(sum(steps) / len(steps), 1),
        "seconds": round(time.perf_counter() - start, 1),
        "variant": variant,
        "seed": seed,
    }


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: list[dict]) -> str:
    """Markdown report: per-suite summary, then per-task table, then the commands used."""
    variants = {r.get("variant") or "default" for r in rows}
    if variants == {"default"}:
        lines = ["# Scripted LIBERO expert: success over official init states", ""]
        lines += [
            "Episodes use the OpenVLA protocol (init state i = episode i, 10 wait steps, suite step budget,",
            "BDDL goal check). `episodes` is how many of the 50 official init states were run (the first n).",
            "",
        ]
    else:
        seeds = ", ".join(sorted({str(r.get("seed") or 0) for r in rows}))
        lines = [f"# Scripted LIBERO expert: success over variant(s) {', '.join(sorted(variants))}", ""]
        lines += [
            "Episodes use the OpenVLA protocol (10 wait steps, suite step budget, BDDL goal check);",
            "`sampled_init` episode i starts from placement i of LIBERO's sampler (the first n),",
            f"drawn with env seed {seeds}, as demonstrations are recorded.",
            "",
        ]
    lines += [
        "## Per suite",
        "",
        "| suite | tasks run | episodes | success rate |",
        "|---|---|---|---|",
    ]
    suites = sorted({r["suite"] for r in rows})
    for suite in suites:
        sub = [r for r in rows if r["suite"] == suite]
        eps = sum(int(r["episodes"]) for r in sub)
        # average of per-task rates, as LIBERO reports suites
        rate = sum(float(r["success_rate"]) for r in sub) / len(sub)
        lines.append(f"| {suite} | {len(sub)} | {eps} | {rate:.3f} |")
    lines += [
        "",
        "## Per task",
        "",
        "| suite | # | task | episodes | success rate | mean steps | expert @ commit |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["suite"], int(r["task_index"]))):
        lines.append(
            f"| {r['suite']} | {r['task_index']} | {r['task']} | {r['episodes']} | {float(r['success_rate']):.3f} |"
            f" {r['mean_steps']} | {r['expert']} @ {r['code']} |"
        )
    lines += ["", "## Code", ""]
    lines += [f"- expert `{e}`, commit `{c}`" for e, c in sorted({(r["expert"], r["code"]) for r in rows})]
    lines += ["", "## Commands", ""]
    lines += [f"    {c}" for c in sorted({r["command"] for r in rows})]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI entry; see the module docstring."""
    import tasks

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suites", nargs="+", required=True, help="LIBERO suite names")
    parser.add_argument("--tasks", nargs="*", type=int, default=None, help="task indices (default: all)")
    parser.add_argument(
        "--episodes", type=int, default=10, help="first n init states / placements (default 10)"
    )
    parser.add_argument(
        "--variant",
        default="default",
        help="default (official init states) or sampled_init (fresh placements)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="env seed (default 0; sampled_init draws from it)"
    )
    parser.add_argument("--out", default="results/libero_expert", help="output folder")
    args = parser.parse_args(argv)
    command = "python -m tasks.libero.evaluate_expert " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    code = _code_version()
    from tasks.libero.expert import LiberoExpert

    out = Path(args.out)
    csv_path = out / "per_task.csv"
    held = {r.get("variant") or "default" for r in _read(csv_path)} - {args.variant}
    if held:
        raise UserInputError(f"{csv_path} holds variant {min(held)!r}, not {args.variant!r}; pass another --out")
    for suite in args.suites:
        names = tasks.tasks(suite)
        indices = args.tasks if args.tasks is not None else range(len(names))
        for i in indices:
            name = tasks.registry.resolve_task(suite, i)
            row = run_task(suite, name, list(range(args.episodes)), args.variant, args.seed)
            row.update(task_index=i, command=command, code=code, expert=LiberoExpert.version)
            print(
                f"{suite} {i:2d} {row['success_rate']:.2f} ({row['successes']}/{row['episodes']}) {name}",
                flush=True,
            )
            out.mkdir(parents=True, exist_ok=True)
            with (out / ".lock").open("w") as lock:  # several runs may share one table
                fcntl.flock(lock, fcntl.LOCK_EX)
                rows = [r for r in _read(csv_path) if not (r["suite"] == suite and r["task"] == name)] + [row]
                _write(csv_path, rows)
                (out / "README.md").write_text(markdown(_read(csv_path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
