"""Results store of a run folder: one row per episode, resumable, never counting an episode twice.

    store = ResultsStore("runs/expert")
    store.done_keys()                      # keys already recorded
    store.add([row, ...])                  # skips keys already present; atomic rewrite
    summary = store.write_summary()        # -> runs/expert/summary.json
    print(format_table(summary))

Files in the run folder:

- ``episodes.parquet``: one row per episode with the columns of :data:`COLUMNS`. ``info`` holds
  the policy's aggregated ``last_info`` (see :mod:`harness.rollout`) and ``versions`` the code
  and package versions, both as JSON strings.
- ``episodes.parts/``: rows added since the last compaction, one small parquet file per ``add``.
  ``add`` only writes a part (constant cost, not a rewrite of everything stored); every
  :data:`COMPACT_EVERY` parts, and in ``write_summary``, the parts are merged into
  ``episodes.parquet``. Readers go through :func:`read_episodes` (or ``ResultsStore.frame``),
  which sees both.
- ``summary.json`` (of the current rows, see :func:`current_rows`): ``{"per_task": {"suite/task": entry}, "per_group": {"suite": entry,
  "suite/variant": entry}, "overall": entry}``; an entry is ``{"success_rate", "successes", "n",
  "ci_low", "ci_high", "mean_steps", "mean_policy_ms", "failures"}`` with a 95% Wilson interval;
  per-task entries add ``"per_variant": {variant: entry}``, and the suite and overall entries add
  ``"by_state": {"states", "ci_low", "ci_high"}``, a 95% interval from a bootstrap over initial states
  (suite, task, seed, episode index), which variants share with ``--states shared`` (:func:`harness.stats.clustered`).
  ``"lost"``: episodes whose only stored row was lost to a worker death or a policy server that went away; they
  are in no entry (an infrastructure loss is not a failure of the policy) and a rerun runs them again.

The episode key is (policy hash, suite, task, variant, episode index, render mode). Writes go to
a temporary file then ``os.replace``, so a crash leaves the previous complete files; a crash
between a compaction and the removal of its parts leaves rows twice on disk, which readers
de-duplicate by key (first wins). One process
writes a store at a time (parallel backends send their rows to the driver, which calls ``add``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.stats import by_state, clustered, wilson
from tasks.errors import MissingInputError, UserInputError

COLUMNS = ("key", "policy", "policy_hash", "suite", "task", "variant", "episode_index", "seed",
           "render_mode", "success", "steps", "wall_s", "policy_calls", "policy_ms_mean",
           "policy_ms_median", "failure_reason", "instruction", "info", "versions", "finished_at")


def episode_key(policy_hash: str, suite: str, task: str, variant: str, episode_index: int,
                render_mode: str, seed: int = 0) -> str:
    """The identity of one episode: equal keys are the same episode and are stored once.

    The initial state is a function of (seed, episode index), so the seed is part of the key; seed 0 adds
    nothing, which keeps the keys stored before seeds were part of them.
    """
    return f"{policy_hash}|{suite}|{task}|{variant}|{int(episode_index)}|{render_mode}" + \
        (f"|seed={int(seed)}" if int(seed) else "")


def make_row(result, *, policy: str, policy_hash: str, suite: str, task: str, variant: str,
             episode_index: int, seed: int, render_mode: str, versions: dict) -> dict[str, Any]:
    """One ``episodes.parquet`` row from a :class:`harness.rollout.EpisodeResult`."""
    return {
        "key": episode_key(policy_hash, suite, task, variant, episode_index, render_mode, seed),
        "policy": policy, "policy_hash": policy_hash, "suite": suite, "task": task, "variant": variant,
        "episode_index": int(episode_index), "seed": int(seed), "render_mode": render_mode,
        "success": bool(result.success), "steps": int(result.steps), "wall_s": float(result.wall_s),
        "policy_calls": int(result.policy_calls), "policy_ms_mean": result.policy_ms_mean,
        "policy_ms_median": result.policy_ms_median, "failure_reason": result.failure_reason,
        "instruction": result.instruction, "info": json.dumps(result.info, sort_keys=True),
        "versions": json.dumps(versions, sort_keys=True),
        "finished_at": pd.Timestamp.now(tz="UTC").isoformat(),
    }


COMPACT_EVERY = 64
PARTS = "episodes.parts"


def read_episodes(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every stored episode row of a run folder (compacted file and pending parts, de-duplicated).

    Raises ``FileNotFoundError`` when the folder holds no results at all.
    """
    if not has_results(run_dir):
        raise MissingInputError(f"run folder {str(run_dir)!r} has no episodes.parquet")
    return ResultsStore(run_dir).frame()


def has_results(run_dir: str | os.PathLike) -> bool:
    """True when the run folder holds stored episode rows (compacted or pending)."""
    store = ResultsStore(run_dir)
    return store.path.exists() or bool(store._part_files())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


#: ``failure_reason`` prefix of an episode lost to the infrastructure (its worker process died every
#: attempt), not to the policy: a rerun runs it again, and the new row replaces the stored one.
RETRY_PREFIX = "worker died"
#: in the ``failure_reason`` of an episode whose policy server went away mid-episode (the message of
#: :class:`harness.serving.client.PolicyServerLost`, however the rollout words the exception): lost to the
#: infrastructure too, and run again like a worker death.
SERVER_LOST = "policy server lost"


def _is_lost(reason: Any) -> bool:
    """True for the ``failure_reason`` of an episode lost to a worker death (see :data:`RETRY_PREFIX`) or to a
    policy server that went away (:data:`SERVER_LOST`)."""
    return isinstance(reason, str) and (reason.startswith(RETRY_PREFIX) or SERVER_LOST in reason)


def lost_to_server(reason: Any) -> bool:
    """True for the ``failure_reason`` of an episode whose policy server went away (:data:`SERVER_LOST`)."""
    return isinstance(reason, str) and SERVER_LOST in reason


def _retryable(df: pd.DataFrame) -> pd.Series:
    """Bool per row: the episode was lost to a worker death or a policy server that went away."""
    return df["failure_reason"].map(_is_lost).astype(bool)


class ResultsStore:
    """Episode rows of one run folder (``episodes.parquet``) and its ``summary.json``.

    One row per episode key: the first stored row wins, except that a row lost to a worker death or a policy
    server that went away (:func:`_is_lost`) is not "done" and gives way to a later row of the same key.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.path = self.dir / "episodes.parquet"
        self.parts_dir = self.dir / PARTS
        self.summary_path = self.dir / "summary.json"
        self._keys: set[str] | None = None  # cache of stored keys (one process writes a store)
        self._lost: set[str] = set()  # keys whose only stored rows were lost to a worker death

    def _part_files(self) -> list[Path]:
        if not self.parts_dir.is_dir():
            return []
        return sorted(p for p in self.parts_dir.glob("*.parquet") if not p.name.startswith("."))

    @staticmethod
    def _read(path: Path) -> pd.DataFrame:
        try:
            return pd.read_parquet(path)
        except Exception as exc:
            raise UserInputError(f"results file {path} is unreadable ({type(exc).__name__}: {exc}); "
                             f"move it away to start this run folder afresh") from exc

    def frame(self) -> pd.DataFrame:
        """All stored rows (an empty frame with :data:`COLUMNS` when nothing is stored yet)."""
        tables = [self._read(self.path)] if self.path.exists() else []
        tables += [self._read(p) for p in self._part_files()]
        tables = [t for t in tables if not t.empty]
        if not tables:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
        table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
        lost = _retryable(table)
        if lost.any():  # a finished row of a key outranks its worker-death rows; order kept otherwise
            table = table.assign(_lost=lost).sort_values("_lost", kind="stable").drop(columns="_lost")
        return table.drop_duplicates("key", keep="first").sort_index().reset_index(drop=True)

    def done_keys(self) -> set[str]:
        """Keys of the episodes already stored (not those lost to a worker death or server loss: they run again)."""
        if self._keys is None:
            df = self.frame()
            lost = _retryable(df)
            self._keys, self._lost = set(df.loc[~lost, "key"]), set(df.loc[lost, "key"])
        return set(self._keys)

    def retry_keys(self) -> set[str]:
        """Keys whose stored row was lost to a worker death or server loss (a rerun runs them again)."""
        done = self.done_keys()  # reads the store once and caches both sets
        return self._lost - done

    def add(self, rows: Iterable[dict[str, Any]]) -> int:
        """Store ``rows`` whose key is not done yet (first one wins); return how many were added."""
        seen = self.done_keys()
        fresh = []
        for row in rows:
            missing = set(COLUMNS) - set(row)
            if missing:
                raise ValueError(f"result row lacks columns {sorted(missing)}; expected {list(COLUMNS)}")
            if row["key"] not in seen:
                if _is_lost(row["failure_reason"]):
                    self._lost.add(row["key"])
                else:
                    seen.add(row["key"])
                fresh.append({c: row[c] for c in COLUMNS})
        if not fresh:
            return 0
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}.parquet"
        tmp = self.parts_dir / f".{name}.tmp"
        pd.DataFrame(fresh, columns=list(COLUMNS)).to_parquet(tmp, index=False)
        os.replace(tmp, self.parts_dir / name)
        self._keys = seen
        if len(self._part_files()) >= COMPACT_EVERY:
            self.compact()
        return len(fresh)

    def compact(self) -> None:
        """Merge the pending parts into ``episodes.parquet`` (atomic), then remove them."""
        parts = self._part_files()
        if not parts:
            return
        table = self.frame()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, self.path)
        for part in parts:
            part.unlink(missing_ok=True)

    def summary(self, policy: str | None = None) -> dict[str, Any]:
        """Summary of the current rows (:func:`current_rows`), only ``policy``'s when given."""
        df = self.frame()
        if policy is not None:
            df = df[df["policy"] == policy]
        current = current_rows(df)
        if current.empty and not df.empty:  # only lost rows: keep the column types of an empty frame
            current = df.iloc[:0]
        summary = summarize(current)
        summary["lost"] = int(_retryable(df).sum()) if not df.empty else 0
        return summary

    def write_summary(self, policy: str | None = None) -> dict[str, Any]:
        """Compact, compute :meth:`summary`, write it to ``summary.json`` atomically and return it."""
        self.compact()
        summary = self.summary(policy)
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return summary


def current_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Per (policy, suite), only the rows of the hash that finished an episode last, without the episodes lost
    to a worker death or a policy server that went away (:func:`_is_lost`: no outcome of the policy).

    A policy whose code or weights changed gets a new hash and its episodes run again; the rows
    of the old hash stay in the file for the record but no longer count.
    """
    if df.empty:
        return df
    df = df[~_retryable(df)]
    if df.empty:
        return df
    latest = df.sort_values("finished_at").groupby(["policy", "suite"])["policy_hash"].last()
    keep = [latest[(p, s)] == h for p, s, h in zip(df["policy"], df["suite"], df["policy_hash"])]
    return df[keep]


def _entry(df: pd.DataFrame) -> dict[str, Any]:
    n = len(df)
    k = int(df["success"].astype(bool).sum()) if n else 0
    low, high = wilson(k, n)
    ms = pd.to_numeric(df["policy_ms_mean"], errors="coerce").dropna() if n else pd.Series(dtype=float)
    return {
        "success_rate": k / n if n else None,
        "successes": k,
        "n": n,
        "ci_low": low,
        "ci_high": high,
        "mean_steps": float(df["steps"].mean()) if n else None,
        "mean_policy_ms": float(ms.mean()) if len(ms) else None,
        "failures": int(df["failure_reason"].notna().sum()) if n else 0,
    }


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """``{"per_task", "per_group", "overall"}`` of episode rows (see the module docstring)."""
    per_task: dict[str, Any] = {}
    for (suite, task), g in df.groupby(["suite", "task"], sort=True):
        entry = _entry(g)
        entry["per_variant"] = {str(v): _entry(gv) for v, gv in g.groupby("variant", sort=True)}
        per_task[f"{suite}/{task}"] = entry
    per_group: dict[str, Any] = {}
    for suite, g in df.groupby("suite", sort=True):
        per_group[str(suite)] = {**_entry(g), **_by_state_entry(g)}
        for variant, gv in g.groupby("variant", sort=True):
            per_group[f"{suite}/{variant}"] = _entry(gv)
    return {"per_task": per_task, "per_group": per_group, "overall": {**_entry(df), **_by_state_entry(df)}}


def _by_state_entry(df: pd.DataFrame) -> dict[str, Any]:
    """``{"by_state": {"states", "ci_low", "ci_high"}}``: the interval of a bootstrap over initial states
    (:func:`harness.stats.clustered`), since variants may replay the same states; empty for no rows."""
    if df.empty:
        return {}
    _, low, high = clustered(df)
    return {"by_state": {"states": len(by_state(df)), "ci_low": low, "ci_high": high}}


def format_table(summary: dict[str, Any]) -> str:
    """A fixed-width text table of a summary: per task, then per group, then overall."""
    names = [*summary["per_task"], *summary["per_group"], "overall"]
    width = min(110, max(len(n) for n in names))
    header = f"{'':<{width}} {'n':>5} {'success':>8} {'95% CI':>15} {'steps':>7} {'failed':>6}"
    lines = [header, "-" * len(header)]

    def line(name: str, e: dict[str, Any]) -> str:
        rate = "-" if e["n"] == 0 else f"{100 * e['success_rate']:.1f}%"
        ci = f"[{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"
        steps = "-" if e["n"] == 0 else f"{e['mean_steps']:.1f}"
        return f"{name[:width]:<{width}} {e['n']:>5} {rate:>8} {ci:>15} {steps:>7} {e['failures']:>6}"

    lines += [line(name, e) for name, e in summary["per_task"].items()]
    lines.append("-" * len(header))
    lines += [line(name, e) for name, e in summary["per_group"].items()]
    lines.append("-" * len(header))
    lines.append(line("overall", summary["overall"]))
    grouped = [(n, e["by_state"]) for n, e in [*summary["per_group"].items(), ("overall", summary["overall"])]
               if "by_state" in e]
    if grouped:
        lines += ["", "95% CI by initial state (episodes that share one count as one; bootstrap over states):"]
        lines += [f"{name[:width]:<{width}} {b['states']:>5} states  [{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]"
                  for name, b in grouped]
    return "\n".join(lines)
