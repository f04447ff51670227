"""Success of several policies pooled over evaluation draws, with intervals and the gap to a reference.

One draw of initial states (``actdistill eval --seed S``) swings a student by many points, so students
are compared on two or more draws pooled. :func:`compare` reads each policy's run folders (one per draw),
keeps each folder's current rows (:func:`harness.results.current_rows`) of one suite, concatenates them,
and gives per draw and pooled success with Wilson 95% intervals. It splits visual matching (VM) from
the other variants (VA) where the suite has both. The first policy is the reference: every other row
gets its pooled difference to it, with Newcombe's hybrid score interval (built from the two Wilson
intervals). The same draw counted twice would inflate n, so an episode (task, variant, episode index,
seed) that appears in two folders of one policy is an error.

Episodes are not always independent: with shared initial states (``--states shared``, and plan runs
stored before plans gave each variant its own indices) the variants of a draw replay the same initial
states (episode ``i`` of a task starts from the same geometry under every look), and a deterministic
policy tends to do the same thing from the same state. So beside the Wilson figures, which count
episodes, :func:`compare` gives a cluster bootstrap over initial states (suite, task, seed, episode index):
``all_clustered`` for the pooled rate and ``diff_clustered`` for the difference to the reference,
resampling the states the two share (paired). On the old default plan a draw held 165 episodes but
55 initial states, and the clustered interval was about twice as wide as Wilson's; with distinct
states the two agree for one rate, and the paired gap is narrower than Newcombe's. Policies that ran
different episodes are refused: their gap would not be paired.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.results import current_rows, read_episodes
from harness.stats import by_state, clustered, wilson
from tasks.errors import UserInputError

EPISODE_KEY = ("suite", "task", "variant", "episode_index", "seed")
VM = "visual_matching"


@dataclass
class Rate:
    """``k`` successes out of ``n`` with its Wilson 95% interval."""

    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def to_json(self) -> dict:
        return {"k": self.k, "n": self.n, "rate": self.rate, "interval": list(self.interval)}

    def cell(self) -> str:
        if not self.n:
            return "-"
        lo, hi = self.interval
        return f"{100 * self.rate:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}] ({self.k}/{self.n})"


def difference(a: Rate, b: Rate) -> tuple[float, float, float]:
    """``a - b`` and its 95% interval (Newcombe's hybrid score method), as fractions."""
    (la, ua), (lb, ub) = a.interval, b.interval
    d = a.rate - b.rate
    return d, d - math.hypot(a.rate - la, ub - b.rate), d + math.hypot(ua - a.rate, b.rate - lb)


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``NAME=DIR[,DIR...]`` or ``DIR[,DIR...]`` (the name is then the first folder's name)."""
    name, sep, dirs = spec.partition("=")
    if not sep:
        name, dirs = "", spec
    folders = [d for d in dirs.split(",") if d]
    if not folders:
        raise UserInputError(f"--policy {spec!r} names no run folder; use NAME=DIR[,DIR...]")
    return name or Path(folders[0]).name, folders


def parse_suites(suite: str) -> list[str]:
    """``"a"`` or ``"a,b,c"`` (suites pooled, e.g. ``libero_spatial,libero_object,libero_goal``) -> names."""
    names = [s.strip() for s in str(suite).split(",") if s.strip()]
    if not names or len(set(names)) != len(names):
        raise UserInputError(f"--suite {suite!r}: give one suite or several distinct ones separated by commas, "
                             "e.g. simpler_google or libero_spatial,libero_object,libero_goal")
    return names


def load_pooled(folders: Sequence[str | os.PathLike], suite: str) -> list[pd.DataFrame]:
    """Each folder's current rows of ``suite`` (one name, or several separated by commas: their episodes
    pooled); raises ValueError when a folder lacks one of the suites or two folders hold the same episode."""
    wanted = parse_suites(suite)
    frames = []
    for folder in folders:
        df = current_rows(read_episodes(folder))
        present = set(df["suite"])
        for name in wanted:
            if name not in present:
                raise UserInputError(f"run folder {str(folder)!r} has no {name} episodes; its suites: "
                                     f"{', '.join(sorted(present)) or 'none'}")
        frames.append(df[df["suite"].isin(wanted)])
    seen: dict[tuple, int] = {}
    for i, rows in enumerate(frames):
        for key in set(rows[list(EPISODE_KEY)].itertuples(index=False, name=None)):
            if key in seen:
                raise UserInputError(f"episode {dict(zip(EPISODE_KEY, key))} is in both {str(folders[seen[key]])!r} "
                                 f"and {str(folders[i])!r}: pool different draws (actdistill eval --seed), "
                                 "not one twice")
            seen[key] = i
    return frames


def _rate(df: pd.DataFrame) -> Rate:
    return Rate(int(df["success"].sum()), len(df))


def _same_episodes(row: dict, ref: dict) -> None:
    """Raise unless ``row`` and ``ref`` ran the same episodes: a gap between different episode sets (another
    plan, other seeds, an unfinished run, variants on shared or distinct initial states) is not paired."""
    mine, theirs = (set(r["pooled"][list(EPISODE_KEY)].itertuples(index=False, name=None)) for r in (row, ref))
    if mine != theirs:
        only = sorted(mine - theirs) or sorted(theirs - mine)
        raise UserInputError(f"{row['name']!r} and {ref['name']!r} ran different episodes ({len(mine - theirs)} only in "
                         f"{row['name']!r}, {len(theirs - mine)} only in {ref['name']!r}, e.g. "
                         f"{dict(zip(EPISODE_KEY, only[0]))}): evaluate both with the same plan and seeds")


def compare(policies: Sequence[tuple[str, Sequence[str]]], suite: str = "simpler_google") -> list[dict]:
    """One dict per policy: name, folders, per-draw Rates, pooled ``all`` / ``vm`` / ``va`` Rates and,
    after the first, ``diff`` (pooled all minus the first policy's, with its interval) per split."""
    if not policies:
        raise UserInputError("compare needs at least one policy")
    rows = []
    for name, folders in policies:
        frames = load_pooled(folders, suite)
        pooled = pd.concat(frames)
        vm = pooled["variant"] == VM
        row = {"name": name, "folders": [str(f) for f in folders], "draws": [_rate(f) for f in frames],
               "all": _rate(pooled), "pooled": pooled, "states": len(by_state(pooled)),
               "all_clustered": clustered(pooled)}
        if vm.any() and (~vm).any():
            row["vm"], row["va"] = _rate(pooled[vm]), _rate(pooled[~vm])
        rows.append(row)
    ref = rows[0]
    for row in rows[1:]:
        _same_episodes(row, ref)
        row["diff"] = {split: difference(row[split], ref[split]) for split in ("all", "vm", "va")
                       if split in row and split in ref}
        row["diff_clustered"] = clustered(row["pooled"], ref["pooled"])
    return rows


def format_compare(rows: Sequence[dict], suite: str) -> str:
    """Markdown table of :func:`compare`'s rows."""
    splits = [s for s in ("vm", "va") if all(s in r for r in rows)]
    head = ["policy", "per draw"] + [f"pooled {s.upper()}" for s in splits] + ["pooled all"]
    head += [f"{s.upper() if s != 'all' else 'all'} vs {rows[0]['name']} (points)" for s in [*splits, "all"]]
    head += ["initial states", "all, by state", f"all vs {rows[0]['name']}, by state"]
    title = (f"{suite}, pooled over each policy's run folders (Wilson 95%; differences: Newcombe 95%; "
             "'by state': bootstrap over initial states, paired for the gap)")
    lines = [title, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["name"], " / ".join(f"{100 * d.rate:.1f}%" for d in row["draws"])]
        cells += [row[s].cell() for s in splits] + [row["all"].cell()]
        for s in [*splits, "all"]:
            if "diff" not in row:
                cells.append("reference")
            else:
                d, lo, hi = row["diff"][s]
                cells.append(f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        _, lo, hi = row["all_clustered"]
        cells += [str(row["states"]), f"[{100 * lo:.0f}, {100 * hi:.0f}]"]
        if "diff_clustered" in row:
            d, lo, hi = row["diff_clustered"]
            cells.append(f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
        else:
            cells.append("reference")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_tasks(policies: Sequence[tuple[str, Sequence[str]]], suite: str = "simpler_google") -> dict:
    """Per task, each policy's pooled :class:`Rate` over its draws (all variants):
    ``{task: {policy name: Rate}}``, tasks sorted. Same reading and refusals as :func:`compare`."""
    if not policies:
        raise UserInputError("compare needs at least one policy")
    table: dict[str, dict[str, Rate]] = {}
    for name, folders in policies:
        pooled = pd.concat(load_pooled(folders, suite))
        for task, rows in pooled.groupby("task"):
            table.setdefault(str(task), {})[name] = _rate(rows)
    return dict(sorted(table.items()))


def format_tasks(table: dict, names: Sequence[str], suite: str) -> str:
    """Markdown table of :func:`compare_tasks`: a row per task, a column per policy."""
    lines = [f"{suite}, per task, pooled over each policy's run folders (Wilson 95%)", "",
             "| task | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for task, rates in table.items():
        lines.append(f"| {task} | " + " | ".join(rates[n].cell() if n in rates else "-" for n in names) + " |")
    return "\n".join(lines)


def to_json(rows: Sequence[dict]) -> list[dict]:
    """JSON-able form of :func:`compare`'s rows (rates as k, n, rate, interval)."""
    out = []
    for row in rows:
        item = {"name": row["name"], "folders": row["folders"], "draws": [d.to_json() for d in row["draws"]],
                **{s: row[s].to_json() for s in ("all", "vm", "va") if s in row}}
        _, lo, hi = row["all_clustered"]
        item["initial_states"], item["all_by_state_interval"] = row["states"], [lo, hi]
        if "diff" in row:
            item["diff"] = {s: {"diff": d, "interval": [lo, hi]} for s, (d, lo, hi) in row["diff"].items()}
            d, lo, hi = row["diff_clustered"]
            item["diff_by_state"] = {"diff": d, "interval": [lo, hi]}
        out.append(item)
    return out
