"""Per-task regression check of a run against a stored baseline.

    from harness.regress import save_baseline, check, format_check
    save_baseline("runs/teacher", "results/baselines/teacher.json")
    rows = check("runs/teacher-new", "results/baselines/teacher.json", alpha=0.05)
    print(format_check(rows)); any(r["worse"] for r in rows)

The test (default ``fisher``): for each task, a one-sided Fisher exact test on the 2x2 table
(run successes/failures vs baseline successes/failures) with the alternative "the run's success
probability is lower than the baseline's"; both samples are treated as random, so a small
baseline is not taken as the truth. ``binomial`` instead tests the run's successes against the
baseline *rate* taken as exact (one-sided exact binomial test); it is more sensitive and right
only when the baseline has many more episodes than the run. p-values are Holm-corrected over the
tasks compared (``correction="holm"``, the default; family-wise error rate <= alpha) or left raw
(``"none"``). A task is flagged worse when its (corrected) p-value is below ``alpha``. Tasks of
the baseline that the run lacks are listed as missing and never flagged.

Baseline file (JSON)::

    {"format": 1, "created": ISO time, "run": source folder, "policy": name,
     "policy_hash": hash (a list if the run held several), "versions": {git commit, packages...},
     "per_task": {"suite/task": {"successes": k, "n": n, "rate": k / n}}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from harness.results import current_rows, read_episodes
from harness.stats import wilson
from tasks.errors import MissingInputError, UserInputError

TESTS = ("fisher", "binomial")
CORRECTIONS = ("holm", "none")
BASELINE_FORMAT = 1


def _episodes(run_dir: str | os.PathLike) -> pd.DataFrame:
    try:
        return current_rows(read_episodes(run_dir))  # only the latest weights' rows
    except FileNotFoundError:
        raise MissingInputError(
            f"no results in run folder {run_dir!r} (expected {Path(run_dir) / 'episodes.parquet'})"
        ) from None


def run_counts(run_dir: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``{"suite/task": (successes, n)}`` over all variants of the episodes stored in ``run_dir``."""
    df = _episodes(run_dir)
    out = {}
    for (suite, task), g in df.groupby(["suite", "task"], sort=True):
        out[f"{suite}/{task}"] = (int(g["success"].astype(bool).sum()), len(g))
    return out


def make_baseline(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The baseline dictionary of a run folder (see the module docstring for the format)."""
    df = _episodes(run_dir)
    hashes = sorted(set(df["policy_hash"]))
    policies = sorted(set(df["policy"]))
    versions = json.loads(df["versions"].iloc[-1]) if len(df) else {}
    return {
        "format": BASELINE_FORMAT,
        "created": pd.Timestamp.now(tz="UTC").isoformat(),
        "run": str(run_dir),
        "policy": policies[0] if len(policies) == 1 else policies,
        "policy_hash": hashes[0] if len(hashes) == 1 else hashes,
        "versions": versions,
        "per_task": {
            name: {"successes": k, "n": n, "rate": k / n} for name, (k, n) in run_counts(run_dir).items()
        },
    }


def save_baseline(run_dir: str | os.PathLike, path: str | os.PathLike) -> dict[str, Any]:
    """Write the baseline of ``run_dir`` to ``path`` (JSON, atomically) and return it."""
    baseline = make_baseline(run_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(baseline, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return baseline


def load_baseline(path: str | os.PathLike) -> dict[str, Any]:
    """Read a baseline file; raise ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(
            f"baseline file {str(path)!r} does not exist (write one with --save-baseline)"
        )
    data = json.loads(path.read_text())
    if data.get("format") != BASELINE_FORMAT or not isinstance(data.get("per_task"), dict):
        raise UserInputError(
            f"{path} is not a baseline file of format {BASELINE_FORMAT} "
            f"(found format={data.get('format')!r}); write one with --save-baseline"
        )
    return data


def one_sided_p(k_run: int, n_run: int, k_base: int, n_base: int, test: str = "fisher") -> float:
    """p-value of "the run's success probability is lower than the baseline's" (see module doc)."""
    from scipy import stats

    if test == "fisher":
        table = [[k_run, n_run - k_run], [k_base, n_base - k_base]]
        return float(stats.fisher_exact(table, alternative="less").pvalue)
    if test == "binomial":
        return float(stats.binomtest(k_run, n_run, k_base / n_base, alternative="less").pvalue)
    raise UserInputError(f"unknown test {test!r}; valid tests: {', '.join(TESTS)}")


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (monotone, capped at 1), in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def check(
    run_dir: str | os.PathLike,
    baseline: str | os.PathLike | dict,
    *,
    alpha: float = 0.05,
    test: str = "fisher",
    correction: str = "holm",
) -> list[dict[str, Any]]:
    """Compare every baseline task with the run; one row per task, sorted by name.

    A row: ``task, base_k, base_n, run_k, run_n`` (``run_*`` ``None`` when missing),
    ``base_rate, run_rate, base_ci, run_ci`` (95% Wilson), ``p`` (raw one-sided), ``p_adj``
    (after ``correction``) and ``worse`` (``p_adj < alpha``).
    """
    if not 0 < alpha < 1:
        raise UserInputError(f"alpha must be in (0, 1), got {alpha}")
    if test not in TESTS:
        raise UserInputError(f"unknown test {test!r}; valid tests: {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise UserInputError(f"unknown correction {correction!r}; valid corrections: {', '.join(CORRECTIONS)}")
    base = baseline if isinstance(baseline, dict) else load_baseline(baseline)
    counts = run_counts(run_dir)
    rows = []
    for name in sorted(base["per_task"]):
        entry = base["per_task"][name]
        k_base, n_base = int(entry["successes"]), int(entry["n"])
        k_run, n_run = counts.get(name, (None, None))
        row = {
            "task": name,
            "base_k": k_base,
            "base_n": n_base,
            "base_rate": k_base / n_base if n_base else None,
            "base_ci": wilson(k_base, n_base),
            "run_k": k_run,
            "run_n": n_run,
            "run_rate": None,
            "run_ci": None,
            "p": None,
            "p_adj": None,
            "worse": False,
        }
        if n_run and n_base:
            row.update(
                run_rate=k_run / n_run,
                run_ci=wilson(k_run, n_run),
                p=one_sided_p(k_run, n_run, k_base, n_base, test),
            )
        rows.append(row)
    tested = [r for r in rows if r["p"] is not None]
    adjusted = holm([r["p"] for r in tested]) if correction == "holm" else [r["p"] for r in tested]
    for row, p_adj in zip(tested, adjusted):
        row["p_adj"] = p_adj
        row["worse"] = p_adj < alpha
    return rows


def format_check(rows: list[dict[str, Any]], alpha: float = 0.05, correction: str = "holm") -> str:
    """A fixed-width table of :func:`check` rows with a verdict per task and a last summary line."""

    def rate(k, n, ci) -> str:
        if not n:
            return "missing"
        return f"{k:>3}/{n:<3} {100 * k / n:5.1f}% [{100 * ci[0]:4.1f},{100 * ci[1]:5.1f}]"

    p_name = "p_holm" if correction == "holm" else "p"
    header = f"{'task':<44} {'baseline':>28} {'run':>28} {'p':>8} {p_name:>8}  verdict"
    lines = [header, "-" * len(header)]
    for r in rows:
        verdict = "WORSE" if r["worse"] else ("missing" if r["p"] is None else "ok")
        p = "-" if r["p"] is None else f"{r['p']:.4f}"
        p_adj = "-" if r["p_adj"] is None else f"{r['p_adj']:.4f}"
        lines.append(
            f"{r['task'][:44]:<44} {rate(r['base_k'], r['base_n'], r['base_ci']):>28} "
            f"{rate(r['run_k'], r['run_n'], r['run_ci']):>28} {p:>8} {p_adj:>8}  {verdict}"
        )
    worse = [r["task"] for r in rows if r["worse"]]
    lines.append("-" * len(header))
    lines.append(
        f"{len(worse)} of {sum(r['p'] is not None for r in rows)} task(s) significantly worse "
        f"(alpha={alpha}, correction={correction})" + (": " + ", ".join(worse) if worse else "")
    )
    return "\n".join(lines)
