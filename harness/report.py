"""Paper figures and tables from stored run folders; reads result files only.

    from harness.report import build_report
    written = build_report(["runs/teacher", "runs/student_50", "runs/first_k_50"], "runs/report")

This module never imports Ray, a simulator or torch (``tests/test_report.py`` checks it): only
pandas, numpy and matplotlib (Agg).

Run folder
----------
One policy's run: ``episodes.parquet`` (see :mod:`harness.results`; required), optionally
``summary.json`` (not needed: everything is recomputed from the episodes), ``meta.json`` and
``latency.json``. ``meta.json`` fields read here, all optional::

    {"policy": "student_50",        # display name (default: the episodes' policy column, else the folder)
     "kind": "student",             # teacher | student | baseline | expert (default: expert when the
                                    #   policy is "expert", else "policy")
     "budget": 0.5,                 # compute budget (fraction of layers or FLOPs) of students/baselines
     "method": "first_k",           # baseline or variant name, shown in legends
     "flops_per_call": 1.9e9,       # FLOPs per model call (default: mean of the episodes' info["flops"])
     "latency_ms": 11.9,            # median batch-1 latency of a model call from a latency pass
     "latency_p90_ms": 12.4,
     "device": "cuda:0 (H100)"}

Without ``latency_ms`` in meta.json, ``latency.json`` (the JSON printed by ``actdistill latency``:
``median_ms``, ``p90_ms``) is used; latency is never inferred from rollout wall time, so a run with
neither is left out of the latency plot (the report says so). Routing heatmaps use the episodes'
``info["layer_mask"]`` (per call a 0/1 vector over decoder layers; the rollout stores its
mean/sum/n per episode; runs stored before the name changed hold it as ``layer_executed``), pooled over
all model calls of a task.

Outputs (under ``out``)
-----------------------
``success_vs_flops.{png,pdf}``, ``success_vs_latency.{png,pdf}`` (one panel per suite: overall
success with 95% Wilson error bars, teacher/students/baselines, the Pareto front, the expert as a
dashed reference line; latency only of policies timed in one pass, with the spread of its rounds),
``success_vs_speedup.{png,pdf}`` (where latency.json has a speedup against the teacher from the same pass), ``per_task_success.{md,csv}``, ``suite_summary.{md,csv}``,
``variant_aggregation.{md,csv}`` (SIMPLER-style: ``visual_matching`` vs the mean over the other
variants' rates), ``ablation.{md,csv}`` (at each budget of an ActDistill student: every other student
method and baseline of that budget against it, paired by initial state), ``routing_<run>.{png,pdf}`` (task x layer fraction of calls that ran the layer)
and ``report.md`` listing all of them with notes.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.results import current_rows, read_episodes
from harness.stats import clustered, wilson
from tasks.errors import UserInputError

KINDS = ("teacher", "student", "baseline", "expert", "policy")
_STYLE = {  # kind -> (colour, marker)
    "teacher": ("#111111", "*"),
    "student": ("#1f77b4", "o"),
    "baseline": ("#ff7f0e", "s"),
    "policy": ("#7f7f7f", "D"),
    "expert": ("#2ca02c", ""),
}
BASE_VARIANT = "visual_matching"


@dataclass
class Run:
    """One run folder: its episodes and the meta fields read (see the module docstring)."""

    dir: Path
    name: str
    kind: str
    episodes: pd.DataFrame
    budget: float | None = None
    method: str | None = None
    flops_per_call: float | None = None
    latency_ms: float | None = None
    latency_p90_ms: float | None = None
    # the latency pass (latency.json "pass": policies timed together, interleaved) and its spread
    latency_pass: str | None = None
    latency_lo_ms: float | None = None  # lowest and highest median over the pass's rounds
    latency_hi_ms: float | None = None
    speedup: float | None = None  # reference (teacher) median / this median, measured in the same pass
    speedup_lo: float | None = None
    speedup_hi: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise UserInputError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _info(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for text in df["info"]:
        try:
            out.append(json.loads(text) if isinstance(text, str) and text else {})
        except json.JSONDecodeError:
            out.append({})
    return out


def _pooled_mean(infos: list[dict[str, Any]], key: str) -> np.ndarray | None:
    """Mean over all model calls of an aggregated info entry (sum of sums / sum of counts)."""
    total, count = None, 0
    for info in infos:
        entry = info.get(key)
        if not isinstance(entry, dict) or "sum" not in entry or not entry.get("n"):
            continue
        value = np.asarray(entry["sum"], dtype=np.float64)
        if total is not None and value.shape != total.shape:
            continue
        total = value if total is None else total + value
        count += int(entry["n"])
    return None if total is None else total / count


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read one run folder; raise ``FileNotFoundError`` naming it when it has no episodes."""
    path = Path(run_dir)
    df = current_rows(read_episodes(path))  # a policy re-run with new weights counts only its new rows
    meta = _read_json(path / "meta.json")
    latency = _read_json(path / "latency.json")
    policies = sorted(set(df["policy"])) if len(df) else []
    name = str(meta.get("policy") or (policies[0] if len(policies) == 1 else path.name))
    kind = str(meta.get("kind") or ("expert" if policies == ["expert"] else "policy"))
    if kind not in KINDS:
        raise UserInputError(f"{path / 'meta.json'}: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    flops = _float(meta.get("flops_per_call"))
    if flops is None and len(df):
        pooled = _pooled_mean(_info(df), "flops")
        flops = None if pooled is None else float(pooled)
    rounds = [v for v in map(_float, latency.get("round_medians_ms") or []) if v is not None]
    speedups = [v for v in map(_float, latency.get("speedup_rounds") or []) if v is not None]
    timed = "latency_ms" not in meta  # meta.json's own figure overrides the pass and its spread
    pass_info = latency.get("pass") if isinstance(latency.get("pass"), dict) else {}
    return Run(
        dir=path,
        name=name,
        kind=kind,
        episodes=df,
        budget=_float(meta.get("budget")),
        method=meta.get("method"),
        flops_per_call=flops,
        latency_ms=_float(meta.get("latency_ms", latency.get("median_ms"))),
        latency_p90_ms=_float(meta.get("latency_p90_ms", latency.get("p90_ms"))),
        latency_pass=str(pass_info["id"]) if timed and pass_info.get("id") else None,
        latency_lo_ms=min(rounds) if timed and rounds else None,
        latency_hi_ms=max(rounds) if timed and rounds else None,
        speedup=_float(latency.get("speedup")) if timed else None,
        speedup_lo=min(speedups) if timed and speedups else None,
        speedup_hi=max(speedups) if timed and speedups else None,
        meta=meta,
    )


def _rate_row(df: pd.DataFrame) -> dict[str, Any]:
    n = len(df)
    k = int(df["success"].astype(bool).sum())
    low, high = wilson(k, n)
    return {"successes": k, "n": n, "rate": k / n if n else math.nan, "ci_low": low, "ci_high": high}


def per_task_table(runs: list[Run]) -> pd.DataFrame:
    """Long table: one row per (run, suite, task), pooled over variants, with Wilson intervals."""
    rows = []
    for run in runs:
        for (suite, task), g in run.episodes.groupby(["suite", "task"], sort=True):
            rows.append({"run": run.name, "kind": run.kind, "suite": suite, "task": task, **_rate_row(g)})
    return pd.DataFrame(
        rows, columns=["run", "kind", "suite", "task", "successes", "n", "rate", "ci_low", "ci_high"]
    )


def per_step_compute(df: pd.DataFrame) -> dict[str, float]:
    """Compute per environment step of a set of episodes, from the rollouts' aggregated ``info``:
    ``actions_per_call`` (steps per model call: a chunk executed open loop for K steps gives K),
    ``flops_per_step`` (the FLOPs of every model call over every step) and ``model_ms_per_step`` (the
    model time of every call over every step; rollout timing on a shared machine, not a latency pass).
    NaN where the episodes do not record model calls (the scripted expert)."""
    infos = _info(df)
    steps = float(pd.to_numeric(df["steps"], errors="coerce").fillna(0).sum())
    calls = sum(int(i["flops"]["n"]) for i in infos if isinstance(i.get("flops"), dict) and i["flops"].get("n"))
    flops = sum(float(np.sum(i["flops"]["sum"])) for i in infos if isinstance(i.get("flops"), dict) and "sum" in i["flops"])
    model_ms = sum(float(np.sum(i["model_ms"]["sum"])) for i in infos
                   if isinstance(i.get("model_ms"), dict) and "sum" in i["model_ms"])
    if not calls or not steps:
        return {"actions_per_call": math.nan, "flops_per_step": math.nan, "model_ms_per_step": math.nan}
    return {"actions_per_call": steps / calls, "flops_per_step": flops / steps,
            "model_ms_per_step": model_ms / steps if model_ms else math.nan}


def suite_table(runs: list[Run]) -> pd.DataFrame:
    """One row per (run, suite): success with its Wilson interval, FLOPs and latency per model call, and per
    environment step (:func:`per_step_compute`: a policy queried every K steps costs 1/K per step), rollout
    policy time."""
    rows = []
    for run in runs:
        for suite, g in run.episodes.groupby("suite", sort=True):
            ms = pd.to_numeric(g["policy_ms_mean"], errors="coerce").dropna()
            rows.append(
                {
                    "run": run.name,
                    "kind": run.kind,
                    "method": run.method,
                    "budget": run.budget,
                    "suite": suite,
                    **_rate_row(g),
                    "tasks": g["task"].nunique(),
                    "flops_per_call": run.flops_per_call,
                    "latency_ms": run.latency_ms,
                    "latency_p90_ms": run.latency_p90_ms,
                    "latency_lo_ms": run.latency_lo_ms,
                    "latency_hi_ms": run.latency_hi_ms,
                    "latency_pass": run.latency_pass,
                    "speedup": run.speedup,
                    "speedup_lo": run.speedup_lo,
                    "speedup_hi": run.speedup_hi,
                    **per_step_compute(g),
                    "rollout_policy_ms": float(ms.mean()) if len(ms) else math.nan,
                }
            )
    return pd.DataFrame(rows)


def variant_table(runs: list[Run], base_variant: str = BASE_VARIANT) -> pd.DataFrame:
    """SIMPLER-style aggregation per (run, suite, task): ``base_variant`` rate vs the unweighted mean of
    the other variants' rates (and a per-suite ``(mean)`` row averaging the tasks). Suites without
    ``base_variant`` are left out."""
    rows = []
    for run in runs:
        for suite, gs in run.episodes.groupby("suite", sort=True):
            if base_variant not in set(gs["variant"]):
                continue
            suite_rows = []
            for task, g in gs.groupby("task", sort=True):
                per_var = {str(v): gv["success"].astype(bool).mean() for v, gv in g.groupby("variant")}
                others = {v: r for v, r in per_var.items() if v != base_variant}
                base = g[g["variant"] == base_variant]
                suite_rows.append(
                    {
                        "run": run.name,
                        "suite": suite,
                        "task": task,
                        "visual_matching": per_var.get(base_variant, math.nan),
                        "vm_n": len(base),
                        "variant_aggregation": float(np.mean(list(others.values()))) if others else math.nan,
                        "va_variants": len(others),
                        "va_n": int((g["variant"] != base_variant).sum()),
                        **{f"variant:{v}": r for v, r in sorted(per_var.items())},
                    }
                )
            rows.extend(suite_rows)
            mean = pd.DataFrame(suite_rows)
            rows.append(
                {
                    "run": run.name,
                    "suite": suite,
                    "task": "(mean)",
                    "visual_matching": mean["visual_matching"].mean(),
                    "vm_n": int(mean["vm_n"].sum()),
                    "variant_aggregation": mean["variant_aggregation"].mean(),
                    "va_variants": int(mean["va_variants"].max()),
                    "va_n": int(mean["va_n"].sum()),
                }
            )
    return pd.DataFrame(rows)


ACTDISTILL = "ActDistill"
PREVIOUS_TEACHER = "previous teacher"  # the method the sweep gives a teacher that committed students still name


def ablation_table(runs: list[Run]) -> pd.DataFrame:
    """At each (suite, budget) with an ActDistill student: one row per policy of that budget (the student,
    other student methods such as the router without graph supervision, the baselines), with its success and
    Wilson interval and ActDistill's gap over it, paired by initial state (bootstrap over the states both ran;
    NaN where they share none). Empty when no run is an ActDistill student."""
    rows = []
    for ref in (r for r in runs if r.kind == "student" and r.method == ACTDISTILL and r.budget is not None):
        peers = [ref] + [r for r in runs if r is not ref and r.kind in ("student", "baseline")
                         and r.budget is not None and abs(r.budget - ref.budget) < 1e-9]
        for suite, mine in ref.episodes.groupby("suite", sort=True):
            for run in peers:
                theirs = run.episodes[run.episodes["suite"] == suite]
                if theirs.empty:
                    continue
                gap = (math.nan,) * 3
                if run is not ref:
                    try:
                        gap = clustered(mine, theirs)
                    except UserInputError:  # no shared initial state: no paired gap
                        pass
                rows.append({"suite": suite, "budget": ref.budget, "run": run.name, "kind": run.kind,
                             "method": run.method or run.name, **_rate_row(theirs),
                             "actdistill_gap": gap[0], "gap_low": gap[1], "gap_high": gap[2]})
    return pd.DataFrame(rows)


def routing_matrix(run: Run) -> tuple[list[str], np.ndarray] | None:
    """``(task names, (T, L) fraction of model calls that ran each layer)``, or ``None`` without records."""
    tasks, rows = [], []
    for (suite, task), g in run.episodes.groupby(["suite", "task"], sort=True):
        infos = _info(g)
        frac = _pooled_mean(infos, "layer_mask")
        if frac is None:
            frac = _pooled_mean(infos, "layer_executed")  # the name in runs stored before 2026-12
        if frac is not None and frac.ndim == 1:
            tasks.append(f"{suite}/{task}")
            rows.append(frac)
    if not rows or len({len(r) for r in rows}) != 1:
        return None
    return tasks, np.stack(rows)  # (T, L)


def pareto_front(cost: np.ndarray, success: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (cost <= and success >=, one strictly), by cost."""
    order = np.lexsort((-success, cost))
    front, best = [], -np.inf
    for i in order:
        if success[i] > best:
            front.append(i)
            best = success[i]
    return np.asarray(front, dtype=int)


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("-" if math.isnan(value) else f"{value:.4g}")
            else:
                cells.append("-" if value is None else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(rate: float, low: float, high: float) -> str:
    return f"{100 * rate:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    return paths


# label offsets tried in order (points from the marker): close first, then rings further out
_LABEL_OFFSETS = [(dx * r, dy * r) for r in (6, 16, 28, 42, 58)
                  for dx, dy in ((1, 0.6), (1, -1.4), (-1, 0.6), (-1, -1.4), (0, 1.6), (0, -2.2), (1, 2), (-1, 2))]
# then up and away, where a crowded row of points near 0% leaves room (with a leader line)
_LABEL_OFFSETS += [(dx, dy) for dy in range(30, 200, 11) for dx in (10, -10, 30, -30, 55, -55, 0)]


def _label_points(ax, pts: pd.DataFrame, x: str) -> None:
    """Name each point where its label overlaps no other label, no other point and stays inside the panel:
    each label takes the first free place among :data:`_LABEL_OFFSETS` (with a thin leader line when it
    had to move away from its point). Call after the layout is final (positions are in display space)."""
    if pts.empty:
        return
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    rows = list(pts.sort_values([x, "rate"]).iterrows())
    xy = [ax.transData.transform((float(r[x]), float(r["rate"]))) for _, r in rows]
    pad = 4.0  # pixels around a marker that a label must leave free
    taken = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad) for px, py in xy]
    for index, (_, r) in enumerate(rows):
        others = taken[:index] + taken[index + 1:]  # every marker but its own, and the labels placed so far
        chosen = None
        for n, (dx, dy) in enumerate(_LABEL_OFFSETS):
            style = {"textcoords": "offset points", "xytext": (dx, dy), "fontsize": 7, "va": "center",
                     "ha": "left" if dx > 0 else "right" if dx < 0 else "center"}
            text = ax.annotate(r["run"], (r[x], r["rate"]), **style)
            box = text.get_window_extent(renderer)  # the text alone (a leader line would widen it)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(t) for t in others):
                if n >= 8:  # moved away from its point: a leader line says whose it is
                    text.remove()
                    ax.annotate(r["run"], (r[x], r["rate"]), **style,
                                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.55", "shrinkA": 0, "shrinkB": 3})
                chosen = box
                break
            text.remove()
        if chosen is None:  # nowhere free: the closest place, overlapping, rather than no name at all
            text = ax.annotate(r["run"], (r[x], r["rate"]), textcoords="offset points", xytext=_LABEL_OFFSETS[0],
                               fontsize=7, va="center")
            chosen = text.get_window_extent(renderer)
        taken.append(chosen)  # the markers stay at taken[:len(rows)]


_PALETTE = ("#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a")


def policy_group(row: Any) -> str:
    """The legend entry of a point: ``teacher``, the student method (``ActDistill``, ...) or the baseline's
    name (``first_k``, ...), so that budgets of one method share a colour; else the run's name."""
    kind, method = row["kind"], row.get("method")
    if kind == "teacher":  # a teacher with a method of its own (a previous teacher, the state ceiling) stands apart
        return method if isinstance(method, str) and method and method != "teacher" else "teacher"
    if isinstance(method, str) and method:
        return method
    return "student" if kind == "student" else re.sub(r"-b\d+(\.\d+)?$", "", str(row["run"]))


def group_colours(table: pd.DataFrame) -> dict[str, str]:
    """One colour per :func:`policy_group` over every panel of every figure (the teacher black), in order of
    first appearance, so a policy has the same colour wherever it is drawn."""
    colours = {"teacher": _STYLE["teacher"][0]}
    for _, row in table[table["kind"] != "expert"].iterrows():
        group = policy_group(row)
        if group not in colours:
            colours[group] = _PALETTE[(len(colours) - 1) % len(_PALETTE)]
    return colours


def latency_points(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The points of one latency panel that were timed together, and why any others were left out.

    Medians from separate passes are not comparable on a shared machine (a teacher timed at 14 ms in one pass
    and 22 ms in another, minutes apart), so where the runs' ``latency.json`` name more than one pass, only
    the pass holding the teacher (else the most runs) is drawn; the others are left out with a note (their
    speedups, each measured against the teacher in its own pass, are in ``success_vs_speedup``)."""
    pts = rows[(rows["kind"] != "expert") & rows["latency_ms"].notna()]
    passes = pts["latency_pass"].dropna()
    if passes.nunique() <= 1:
        return pts, []
    teacher = pts[(pts["kind"] == "teacher") & pts["latency_pass"].notna()]
    keep = teacher["latency_pass"].iloc[0] if len(teacher) else passes.value_counts().index[0]
    left = pts[pts["latency_pass"] != keep]
    note = (f"{rows['suite'].iloc[0]}: {', '.join(left['run'])} timed in another latency pass than "
            f"{', '.join(pts[pts['latency_pass'] == keep]['run'])}: left out of success_vs_latency (time them "
            "together: actdistill latency --policy A B ... --vs TEACHER, or the sweep's latency stage)")
    return pts[pts["latency_pass"] == keep], [note]


def _tradeoff(table: pd.DataFrame, x: str, xlabel: str, out: Path, stem: str,
              notes: list[str] | None = None) -> list[Path]:
    """Success against ``x``, one panel per suite: error bars are 95% Wilson intervals (and, for latency and
    speedup, the spread of ``x`` over the latency pass's rounds); the expert a dashed line; colours by
    :func:`policy_group`, the same in every panel; markers by kind."""
    import matplotlib.pyplot as plt

    colours = group_colours(table)
    lo_col, hi_col = {"latency_ms": ("latency_lo_ms", "latency_hi_ms"),
                      "speedup": ("speedup_lo", "speedup_hi")}.get(x, (None, None))
    suites = sorted(table["suite"].unique())
    fig, axes = plt.subplots(1, len(suites), figsize=(5.2 * len(suites), 4.2), squeeze=False)
    handles: dict[str, Any] = {}
    labels: list[tuple[Any, pd.DataFrame]] = []
    for ax, suite in zip(axes[0], suites):
        rows = table[table["suite"] == suite]
        for _, r in rows[rows["kind"] == "expert"].iterrows():
            line = ax.axhline(r["rate"], color=_STYLE["expert"][0], ls="--", lw=1)
            handles.setdefault("expert" if r["run"] == "expert" else f"{r['run']} (expert)", line)
        if x == "latency_ms":
            pts, why = latency_points(rows)
            if notes is not None:
                notes.extend(why)
        else:
            pts = rows[(rows["kind"] != "expert") & rows[x].notna()]
        for _, r in pts.iterrows():
            group = policy_group(r)
            marker = _STYLE.get(r["kind"], _STYLE["policy"])[1]
            xerr = None
            if lo_col and pd.notna(r.get(lo_col)) and pd.notna(r.get(hi_col)):
                xerr = [[max(0.0, r[x] - r[lo_col])], [max(0.0, r[hi_col] - r[x])]]
            handle = ax.errorbar([r[x]], [r["rate"]], yerr=[[r["rate"] - r["ci_low"]], [r["ci_high"] - r["rate"]]],
                                 xerr=xerr, fmt=marker, color=colours.get(group, _STYLE["policy"][0]),
                                 ms=9 if marker == "*" else 6, capsize=3)
            handles.setdefault(group, handle)
        labels.append((ax, pts))
        if len(pts) > 1:
            cost = pts[x].to_numpy(float) if x != "speedup" else -pts[x].to_numpy(float)  # higher speedup is better
            front = pareto_front(cost, pts["rate"].to_numpy(float))
            fx, fy = pts[x].to_numpy(float)[front], pts["rate"].to_numpy(float)[front]
            line, = ax.step(fx, fy, where="post" if x != "speedup" else "pre", color="#9467bd", lw=1, alpha=0.6)
            handles.setdefault("Pareto front", line)
        ax.set_title(suite)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    # one legend for the figure, below the panels, so no panel's points are hidden under it
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(6, len(handles)),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(handles) - 1) // 6), 1, 1) if handles else None)
    for ax, pts in labels:  # once the layout is final: the labeler works in display space
        _label_points(ax, pts, x)
    paths = _save(fig, out, stem)
    plt.close(fig)
    return paths


def _heatmap(run: Run, tasks: list[str], matrix: np.ndarray, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * matrix.shape[1], 1.0 + 0.3 * len(tasks)))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")  # (T, L)
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_xlabel("decoder layer")
    ax.set_yticks(range(len(tasks)), labels=tasks, fontsize=7)
    ax.set_title(f"{run.name}: fraction of calls running each layer", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    paths = _save(fig, out, "routing_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", run.name))
    plt.close(fig)
    return paths


def merge_runs(runs: list[Run]) -> list[Run]:
    """One run per name: folders of the same policy (same name and kind) on disjoint suites, e.g. the scripted
    expert on the SIMPLER-style suites in one folder and on LIBERO in another, are pooled into the first one's
    run. Raises ``ValueError`` when same-named folders share a suite or differ in kind."""
    merged: dict[str, Run] = {}
    for run in runs:
        first = merged.get(run.name)
        if first is None:
            merged[run.name] = run
            continue
        shared = sorted(set(first.episodes["suite"]) & set(run.episodes["suite"]))
        if shared or first.kind != run.kind:
            why = f"both hold suite(s) {shared}" if shared else f"kinds {first.kind!r} and {run.kind!r}"
            raise UserInputError(f"run folders {str(first.dir)!r} and {str(run.dir)!r} are both named {run.name!r} "
                             f"and {why}; set distinct 'policy' names in their meta.json")
        first.episodes = pd.concat([first.episodes, run.episodes], ignore_index=True)
    return list(merged.values())


def build_report(
    run_dirs: list[str | os.PathLike], out: str | os.PathLike, base_variant: str = BASE_VARIANT
) -> list[Path]:
    """Write every figure and table of the module docstring under ``out``; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    if not run_dirs:
        raise UserInputError("no run folders given")
    runs = merge_runs([load_run(d) for d in run_dirs])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    written = _per_task_tables(runs, out)
    suites = suite_table(runs)
    written += _suite_tables(suites, out)
    written += _variant_tables(runs, out, base_variant, notes)
    written += _ablation_tables(runs, out)
    written += _tradeoff(suites, "flops_per_call", "FLOPs per model call", out, "success_vs_flops")
    if suites["flops_per_step"].notna().any():  # compute per environment step: per call / actions per call
        written += _tradeoff(suites, "flops_per_step", "FLOPs per environment step", out, "success_vs_flops_per_step")
    written += _tradeoff(suites, "latency_ms", "latency per model call (ms, batch 1; bars: spread over rounds)",
                         out, "success_vs_latency", notes)
    if suites["speedup"].notna().any():  # each measured against the teacher in one pass: comparable anywhere
        written += _tradeoff(suites, "speedup", "model-call speedup vs the teacher (same pass)", out,
                             "success_vs_speedup")
    several_teachers = any(r.kind == "teacher" and r.method == PREVIOUS_TEACHER for r in runs)
    for run in runs:
        if run.kind == "expert":
            continue
        if run.flops_per_call is None:
            notes.append(f"{run.name}: no FLOPs (neither meta.json flops_per_call nor info['flops'])")
        if run.latency_ms is None:
            notes.append(
                f"{run.name}: no measured latency (meta.json latency_ms or latency.json); "
                f"left out of success_vs_latency"
            )
        if run.kind == "student" and run.meta.get("teacher") and several_teachers:
            notes.append(f"{run.name}: distilled from {run.meta['teacher']} (the report holds more than one "
                         "teacher: read a student's gap against its own)")
        routing = routing_matrix(run)
        if routing is None:
            notes.append(f"{run.name}: no info['layer_mask'] records: no routing heatmap")
        else:
            written += _heatmap(run, *routing, out)

    lines = ["# Report", "", "Runs: " + ", ".join(f"`{r.name}` ({r.kind}, {r.dir})" for r in runs), ""]
    lines += ["## Per-suite summary", "", (out / "suite_summary.md").read_text(), "## Files", ""]
    lines += [f"- {p.name}" for p in written]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    written.append(out / "report.md")
    return written


def _per_task_tables(runs: list[Run], out: Path) -> list[Path]:
    """``per_task_success.{csv,md}``: success per (suite, task) and run; returns the paths written."""
    tasks = per_task_table(runs)
    tasks.to_csv(out / "per_task_success.csv", index=False)
    wide = tasks.assign(cell=[f"{_pct(r.rate, r.ci_low, r.ci_high)} n={r.n}" for r in tasks.itertuples()])
    wide = wide.pivot(index=["suite", "task"], columns="run", values="cell").reindex(columns=[r.name for r in runs])
    (out / "per_task_success.md").write_text(_markdown(wide.reset_index().fillna("-")))
    return [out / "per_task_success.csv", out / "per_task_success.md"]


def _suite_tables(suites: pd.DataFrame, out: Path) -> list[Path]:
    """``suite_summary.{csv,md}`` from :func:`suite_table`; returns the paths written."""
    suites.to_csv(out / "suite_summary.csv", index=False)
    shown = suites.assign(success=[_pct(r.rate, r.ci_low, r.ci_high) for r in suites.itertuples()])
    cols = ["suite", "run", "kind", "budget", "success", "n", "tasks", "flops_per_call", "latency_ms", "speedup",
            "actions_per_call", "flops_per_step", "rollout_policy_ms"]
    (out / "suite_summary.md").write_text(_markdown(shown.sort_values(["suite", "run"])[cols]))
    return [out / "suite_summary.csv", out / "suite_summary.md"]


def _ablation_tables(runs: list[Run], out: Path) -> list[Path]:
    """``ablation.{csv,md}`` from :func:`ablation_table` (nothing without an ActDistill student)."""
    table = ablation_table(runs)
    if table.empty:
        return []
    table.to_csv(out / "ablation.csv", index=False)

    def gap(r: Any) -> str:
        if math.isnan(r.actdistill_gap):
            return "reference" if r.method == ACTDISTILL else "-"
        return f"{100 * r.actdistill_gap:+.1f} [{100 * r.gap_low:+.1f}, {100 * r.gap_high:+.1f}]"

    shown = table.assign(success=[_pct(r.rate, r.ci_low, r.ci_high) for r in table.itertuples()],
                         **{"ActDistill minus this (by state)": [gap(r) for r in table.itertuples()]})
    cols = ["suite", "budget", "run", "method", "success", "n", "ActDistill minus this (by state)"]
    (out / "ablation.md").write_text(_markdown(shown[cols]))
    return [out / "ablation.csv", out / "ablation.md"]


def _variant_tables(runs: list[Run], out: Path, base_variant: str, notes: list[str]) -> list[Path]:
    """``variant_aggregation.{csv,md}`` (SIMPLER's visual matching vs the other variants), or a note in
    ``notes`` when no run has the base variant beside others; returns the paths written."""
    variants = variant_table(runs, base_variant)
    if variants.empty:
        notes.append(f"no run has a '{base_variant}' variant next to others: no variant aggregation table")
        return []
    variants.to_csv(out / "variant_aggregation.csv", index=False)
    keep = ["run", "suite", "task", "visual_matching", "vm_n", "variant_aggregation", "va_variants", "va_n"]
    (out / "variant_aggregation.md").write_text(_markdown(variants[keep]))
    return [out / "variant_aggregation.csv", out / "variant_aggregation.md"]
