"""Choose a training run's checkpoint on a validation draw (``actdistill select``).

    from harness.select import select_checkpoint
    choice = select_checkpoint("runs/train/teacher", ["simpler_google", "simpler_widowx"], out="runs/select/teacher")
    choice["best"]["path"]      # e.g. runs/train/teacher/snapshots/step-6000

The candidates are the run's snapshots (``RUN/snapshots/step-N``, written with ``train-teacher
--keep-every N``) and its final checkpoint (``RUN``). Each is evaluated on every suite on the same
validation draw: initial states from ``seed`` (default 900), which no reported table uses (reports
and regressions draw from seeds below 100, demonstrations from 1 upwards and relabelling from 101),
so the chosen checkpoint is not fitted to the states it is later reported on. Evaluation runs resume
(``out/<candidate>/<suite>``), so an interrupted selection continues. The best is the highest pooled
success; a tie goes to the later step (more training, same validation evidence). The table gives
each candidate's Wilson 95% interval and its paired difference to the final checkpoint (bootstrap over
the shared initial states), so a reader sees whether the choice is distinguishable from "take the last".
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tasks.errors import ExistingOutputError, MissingInputError, UserInputError

VALIDATION_SEED = 900
_STEP = re.compile(r"step-(\d+)$")


def candidates(run: str | Path) -> list[tuple[str, int | None, Path]]:
    """``(name, step, folder)`` of every snapshot of ``run`` (by step) and of its final checkpoint (last)."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise MissingInputError(f"--run {str(run)!r} is not a checkpoint folder (no config.json)")
    found = []
    for folder in (run / "snapshots").glob("step-*"):
        match = _STEP.search(folder.name)
        if match and (folder / "config.json").exists():
            found.append((folder.name, int(match.group(1)), folder))
    found.sort(key=lambda c: c[1])
    final_step = json.loads((run / "config.json").read_text()).get("training", {}).get("step")
    return found + [("final", final_step, run)]


def select_checkpoint(run: str | Path, suites: list[str], *, out: str | Path, episodes: int = 3,
                      seed: int = VALIDATION_SEED, plan: str | None = None, tasks: list[str] | None = None,
                      progress: bool = True) -> dict:
    """Evaluate every candidate of ``run`` on ``suites`` (``episodes`` per task of the default variant, or the
    sweep profile ``plan``'s tasks and variants; ``tasks`` narrows the tasks) at ``seed``; write and return
    ``out/selection.json``."""
    import pandas as pd

    from harness.evaluate import evaluate
    from harness.results import current_rows, read_episodes
    from harness.stats import clustered, wilson

    if seed < 100:
        raise UserInputError(f"--seed {seed} is an evaluation draw (seeds below 100 are reported); "
                             f"validate on a seed >= 100 (default {VALIDATION_SEED})")
    if episodes < 1:
        raise UserInputError(f"--episodes must be >= 1, got {episodes}")
    if not suites:
        raise UserInputError("give at least one --suite")
    if plan is not None and tasks:
        raise UserInputError("--plan chooses the tasks; drop --tasks")
    found = candidates(run)
    out = Path(out)
    frames: dict[str, pd.DataFrame] = {}
    for name, _step, folder in found:
        parts = []
        for suite in suites:
            task_list, counts = tasks, None
            if plan is not None:
                from harness.sweep import PROFILES
                from harness.sweep import plan as sweep_plan

                if plan not in PROFILES:
                    raise UserInputError(f"unknown plan {plan!r}; valid plans: {', '.join(sorted(PROFILES))}")
                task_list, counts = sweep_plan(PROFILES[plan], suite, policies=True)
            target = out / name / suite
            evaluate(str(folder), suite, tasks=task_list, episodes=episodes, seed=seed, out=target,
                     episodes_by_variant=counts, distinct_states=plan is not None, progress=progress,
                     table=False, quiet=True)
            parts.append(current_rows(read_episodes(target)))
        frames[name] = pd.concat(parts, ignore_index=True)
    final = frames["final"]
    rows = []
    for name, step, folder in found:
        df = frames[name]
        k, n = int(df["success"].sum()), len(df)
        row = {"name": name, "step": step, "path": str(folder), "k": k, "n": n, "rate": k / n,
               "interval": list(wilson(k, n))}
        if name != "final":
            d, lo, hi = clustered(df, final)
            row["vs_final"] = [d, lo, hi]
        rows.append(row)
    best = max(rows, key=lambda r: (r["rate"], r["step"] if r["step"] is not None else float("inf")))
    result = {"run": str(run), "suites": list(suites), "seed": seed, "episodes": episodes, "plan": plan,
              "candidates": rows, "best": best}
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    """The selection as a Markdown table, best marked."""
    lines = ["| checkpoint | step | success (Wilson 95%) | vs final (paired bootstrap) |", "|---|---|---|---|"]
    for row in result["candidates"]:
        lo, hi = row["interval"]
        mark = " **best**" if row["name"] == result["best"]["name"] else ""
        vs = "reference"
        if "vs_final" in row:
            d, dlo, dhi = row["vs_final"]
            vs = f"{100 * d:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}]"
        lines.append(f"| {row['name']}{mark} | {row['step']} | {100 * row['rate']:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}] "
                     f"({row['k']}/{row['n']}) | {vs} |")
    return "\n".join(lines)


def copy_checkpoint(src: str | Path, dest: str | Path, overwrite: bool = False) -> Path:
    """Copy a checkpoint's ``config.json`` and ``*.safetensors`` (what loading needs) to ``dest``."""
    src, dest = Path(src), Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ExistingOutputError(f"--copy-best {str(dest)!r} exists and is not empty; pass --overwrite to replace it")
    dest.mkdir(parents=True, exist_ok=True)
    for path in [src / "config.json", *src.glob("*.safetensors")]:
        shutil.copy2(path, dest / path.name)
    return dest
