"""The main sweep that ``bash run_all.sh`` runs (``actdistill sweep``): a list of stages over a profile, resumable.

    actdistill sweep --profile smoke      # minutes: 1 episode on 2 tasks per suite, the 0.5 student
    actdistill sweep --profile default    # 5 episodes per task on visual matching + 1 per other variant
    actdistill sweep --profile full       # 50 episodes per task on every variant, every baseline
    actdistill sweep --stages policy_eval,report   # only these stages

Stages: ``expert_eval`` (the scripted experts over the SIMPLER-style suites: the upper bound
of every table), ``models`` (the reference teacher and the students at each budget under
``results/checkpoints/``: used as committed, or recorded, trained and distilled when missing),
``policy_eval`` (teacher, students and the profile's baselines on the SIMPLER-style suites),
``latency`` (every policy's model call in one interleaved round-robin pass, students and baselines against
the teacher), ``libero_expert`` (the LIBERO expert on a subset), ``libero_policies`` (the LIBERO
teacher and students where committed, on the four LIBERO suites) and ``report`` (figures and
tables from the stored results). Each stage writes under ``runs/<profile>/``; episodes and
models already there are skipped, so rerunning after an interruption continues where it stopped. The upfront time
estimate builds one environment per suite, times its reset and a few expert steps, and assumes
every episode runs to the first task's step limit (SIMPLER-style episodes run to their limit;
drawer tasks have longer limits than pick tasks), so it is a rough guide, not a bound.
Within a suite the plan gives every episode of a task its own initial state: the variants take
consecutive blocks of episode indices (``harness.evaluate.episode_indices``), so the variant
episodes are not replays of visual matching's first states.

Before the first stage that builds an environment the simulator check (:mod:`harness.doctor`) runs on the
suite families the stages use (with a Ray worker when the profile evaluates on Ray): a FAIL stops the sweep
with exit status 2 before anything is written; ``--skip-doctor`` goes without it. Every episode records the
check's fingerprint (or ``skipped``) under ``doctor`` in its ``versions``, and the report of each
fingerprint is kept in ``runs/<profile>/doctor/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import UserInputError


@dataclass(frozen=True)
class Profile:
    """How much of each suite a sweep covers."""

    name: str
    episodes: int  # per task on the default variant ("visual matching")
    tasks_per_suite: int | None  # first N tasks of each suite; None = all
    variant_episodes: int  # per task on each other variant; 0 = default variant only
    policy_episodes: int = 2  # teacher/students/baselines: per task on the default variant
    policy_variant_episodes: int = 0  # ... and on each other variant
    budgets: tuple[float, ...] = (0.25, 0.5, 0.75)
    baselines: tuple[str, ...] = ()  # baseline names evaluated at every budget
    libero: tuple[str, int, int] | None = None  # (suite, tasks, episodes) for the LIBERO expert
    libero_policy_episodes: int = 0  # LIBERO teacher/students: per task of every LIBERO suite; 0 = none
    latency_iters: int = 50
    workers: int = 0  # Ray workers for policy evaluation (0 = sequential)
    demo_scale: float = 1.0  # of harness.demo_sets' recipe, when models must be rebuilt
    teacher_steps: int | None = None  # None: the training profile's default
    distill_steps: int | None = None
    # actions executed per model call (the replanning axis): the teacher and students are run again at each
    # K here, beside their default runs (the whole chunk), so FLOPs per environment step can be compared
    execute: tuple[int, ...] = ()


PROFILES = {
    "smoke": Profile("smoke", episodes=1, tasks_per_suite=2, variant_episodes=0, policy_episodes=1,
                     budgets=(0.5,), baselines=("random",), latency_iters=5, demo_scale=0.1,
                     teacher_steps=50, distill_steps=20),
    "default": Profile("default", episodes=10, tasks_per_suite=None, variant_episodes=2, policy_episodes=5,
                       policy_variant_episodes=1, baselines=("random", "first_k"),
                       libero=("libero_spatial", 2, 2), libero_policy_episodes=1, workers=2, demo_scale=0.5),
    "full": Profile("full", episodes=50, tasks_per_suite=None, variant_episodes=50, policy_episodes=50,
                    policy_variant_episodes=50,
                    baselines=("first_k", "uniform", "redundancy", "early_exit", "random"),
                    libero=("libero_spatial", 10, 50), libero_policy_episodes=50, latency_iters=200, workers=2,
                    execute=(1, 2, 4)),
}

CHECKPOINTS = Path("results/checkpoints")  # reference models, relative to the project root
FAMILY = "simpler"


@dataclass
class Context:
    """What stages share: the profile, the run root and the summaries they produce."""

    profile: Profile
    root: Path
    seed: int = 0
    summaries: dict[str, dict] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)  # added to every episode's versions: the doctor
    backend: Any = None  # the Ray backend of the sweep, started on first use and kept (see _backend)


@dataclass
class Stage:
    """A step of the sweep: ``estimate_s(ctx)`` (rough seconds left) and ``run(ctx)``."""

    name: str
    description: str
    estimate_s: Callable[[Context], float]
    run: Callable[[Context], None]


def simpler_suites() -> list[str]:
    """The SIMPLER-style suites in the registry."""
    import tasks as suites

    return [s for s in suites.suites() if s.startswith("simpler_")]


def plan(profile: Profile, suite: str, policies: bool = False) -> tuple[list[str], dict[str, int]]:
    """(tasks, {variant: episodes}) of ``suite`` under ``profile`` (for the expert, or with
    ``policies`` for the teacher, students and baselines): one ``evaluate`` call per suite."""
    import tasks as suites

    task_names = suites.tasks(suite)[: profile.tasks_per_suite]
    variants = suites.variants(suite)
    episodes, variant_episodes = ((profile.policy_episodes, profile.policy_variant_episodes) if policies
                                  else (profile.episodes, profile.variant_episodes))
    counts = {variants[0]: episodes}
    if variant_episodes:
        counts.update({v: variant_episodes for v in variants[1:]})
    return task_names, counts


def _episode_cost_s(suite: str, task: str, seed: int, steps: int = 10, render: bool = True) -> tuple[float, float]:
    """(seconds to build the env, seconds of one expert episode run to the step limit), from
    building ``task`` once, one reset and ``steps`` steps (median), rendered with ``render`` (the expert's own
    episodes render nothing; a policy's read images)."""
    import tasks as suites

    t0 = time.perf_counter()
    env = suites.make(suite, task, seed=seed)
    try:
        t1 = time.perf_counter()
        obs, _ = env.reset(seed=seed, options={"episode_index": 0})
        t2 = time.perf_counter()
        expert = suites.expert(env)
        expert.reset()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            obs, *_ = env.step(expert.act(obs), render=render)
            times.append(time.perf_counter() - t)
        return t1 - t0, (t2 - t1) + int(env.unwrapped.max_steps) * float(np.median(times))
    finally:
        env.close()


def _expert_dir(ctx: Context) -> Path:
    return ctx.root / "expert"


def _expert_estimate(ctx: Context) -> float:
    from harness.results import ResultsStore

    total = 0.0
    stored = ResultsStore(_expert_dir(ctx)).frame()  # read once, not per suite
    for suite in simpler_suites():
        task_names, counts = plan(ctx.profile, suite)
        done = stored[stored["suite"] == suite] if len(stored) else stored
        left = len(task_names) * sum(counts.values()) - len(done)
        if left > 0:
            build_s, episode_s = _episode_cost_s(suite, task_names[0], ctx.seed, render=False)
            total += left * episode_s + len(task_names) * len(counts) * build_s
    return total / max(1, ctx.profile.workers)


def _expert_run(ctx: Context) -> None:
    from harness.evaluate import evaluate

    summary = None
    backend = _backend(ctx)  # the profile's Ray workers: every core, not one process
    for suite in simpler_suites():
        task_names, counts = plan(ctx.profile, suite)
        summary = evaluate("expert", suite, tasks=task_names, episodes_by_variant=counts, distinct_states=True,
                           seed=ctx.seed, out=_expert_dir(ctx), table=False, backend=backend,
                           provenance=ctx.provenance)
    if summary is not None:
        ctx.summaries["scripted experts"] = summary


def teacher_dir() -> Path:
    return CHECKPOINTS / f"teacher-{FAMILY}"


def student_dir(budget: float) -> Path:
    return CHECKPOINTS / f"student-{FAMILY}-b{budget:.2f}"


def _missing_models(ctx: Context) -> list[Path]:
    wanted = [teacher_dir()] + [student_dir(b) for b in ctx.profile.budgets]
    return [p for p in wanted if not (p / "model.safetensors").exists()]


def _models_estimate(ctx: Context) -> float:
    missing = _missing_models(ctx)
    if not missing:
        return 0.0
    # Measured on the 2-core CPU: demos ~2 s per episode, teacher ~1 step/s, distillation ~0.5 step/s.
    demo_s = 2.0 * 1500 * ctx.profile.demo_scale
    teacher_s = (ctx.profile.teacher_steps or 20000) if teacher_dir() in missing else 0
    students_s = 2.0 * (ctx.profile.distill_steps or 3000) * (len(missing) - (teacher_dir() in missing))
    return demo_s + teacher_s + students_s


def _models_run(ctx: Context) -> None:
    missing = _missing_models(ctx)
    if not missing:
        print(f"[sweep] reference models present under {CHECKPOINTS}: teacher and students at budgets "
              f"{', '.join(f'{b:g}' for b in ctx.profile.budgets)}")
        return
    import shutil

    import torch

    from distill.student import ActDistillConfig, budget_dir, distill
    from distill.train import train_teacher
    from harness.demo_sets import record_family

    print(f"[sweep] missing reference models: {', '.join(map(str, missing))}; building them (this is the "
          "long part: see the estimate above)")
    # One thread: on a shared 2-core machine two torch threads ran training 8x slower than one.
    torch.set_num_threads(1)
    data = record_family(FAMILY, ctx.root / "data" / FAMILY, scale=ctx.profile.demo_scale)
    if teacher_dir() in missing:
        train_teacher([str(d) for d in data], teacher_dir(), profile="small", steps=ctx.profile.teacher_steps)
    budgets = [b for b in ctx.profile.budgets if student_dir(b) in missing]
    if budgets:
        work = ctx.root / "distill"
        steps = ctx.profile.distill_steps
        config = ActDistillConfig(**({"steps": steps, "stage1_steps": max(10, steps // 3)} if steps else {}))
        distill(teacher_dir(), [str(d) for d in data], budgets, work, config=config)
        for b in budgets:
            shutil.copytree(budget_dir(work, b), student_dir(b), dirs_exist_ok=True)


def student_teacher(folder: Path) -> Path | None:
    """The teacher a committed student was distilled from (its ``config.json``), when that is not the
    reference teacher of :func:`teacher_dir` and is committed: students of a previous teacher are run beside
    it, so their gap is read against their own teacher. ``None`` otherwise."""
    import json

    config = folder / "config.json"
    if not config.exists():
        return None
    path = json.loads(config.read_text()).get("teacher", {}).get("path")
    if not path:
        return None
    own = Path(path)  # as written by distill: relative to the project root, like CHECKPOINTS
    if own.resolve() == teacher_dir().resolve() or not (own / "model.safetensors").exists():
        return None
    return own


def ablation_dir(budget: float) -> Path:
    """The committed router without graph supervision at ``budget`` (``actdistill distill --no-graph``), run
    by the sweep where present so the report's ablation table shows what the graph part buys."""
    return CHECKPOINTS / f"student-{FAMILY}-b{budget:.2f}-nograph"


def _student_specs(profile: Profile) -> list[tuple[str, str]]:
    """(run name, checkpoint) of the students and of each committed router without graph supervision."""
    students = [(f"student-b{b:.2f}", str(student_dir(b))) for b in profile.budgets]
    return students + [(f"nograph-b{b:.2f}", str(ablation_dir(b))) for b in profile.budgets
                       if (ablation_dir(b) / "model.safetensors").exists()]


def previous_teachers(profile: Profile) -> dict[str, str]:
    """{checkpoint: run name (its folder's name)} of each previous teacher a committed student names."""
    found = (student_teacher(Path(spec)) for _, spec in _student_specs(profile))
    return {str(t): t.name for t in found if t is not None}


def policy_specs(profile: Profile) -> list[tuple[str, str]]:
    """(run name, policy spec for harness.evaluate) of the teacher, students and baselines, of each committed
    router without graph supervision (:func:`ablation_dir`), and of each previous teacher that a committed
    student was distilled from (:func:`previous_teachers`)."""
    specs = [("teacher", str(teacher_dir()))]
    specs += [(name, path) for path, name in previous_teachers(profile).items()]
    specs += _student_specs(profile)
    specs += [(f"{name}-b{b:.2f}", f"baseline:{name}@{b}:{teacher_dir()}")
              for name in profile.baselines for b in profile.budgets]
    return specs


def _policy_estimate(ctx: Context) -> float:
    from harness.results import ResultsStore

    total = 0.0
    workers = max(1, ctx.profile.workers)
    for suite in simpler_suites():
        task_names, counts = plan(ctx.profile, suite, policies=True)
        episodes = len(task_names) * sum(counts.values())
        left = 0
        for name, _ in policy_specs(ctx.profile):
            stored = ResultsStore(ctx.root / name).frame()
            done = int((stored["suite"] == suite).sum()) if len(stored) else 0
            left += max(0, episodes - done)
        if left:
            # one call per suite for every policy (evaluate_policies): each (task, variant) builds its
            # environment about once, and the call's start (policy loads, workers) is a few seconds
            build_s, episode_s = _episode_cost_s(suite, task_names[0], ctx.seed)
            builds = len(task_names) * len(counts)
            # 0.55: a policy's episode against the expert's rendered one run to the step limit (policies render
            # only when they read images; episodes end early): the default sweep's policy_eval took 7.5 min
            # on 2026-12-03 (2-core CPU) against 20.2 estimated with a factor of 1.5
            total += 10.0 + (left * episode_s * 0.55 + builds * build_s) / workers
    return total


def _backend(ctx: Context) -> str:
    """The evaluation backend of the profile: Ray with ``workers`` workers, or sequential. One backend serves
    the whole sweep and keeps its workers between evaluations (``keep_workers``): each of the sweep's many
    (policy, suite) evaluations then skips the workers' start-up; :func:`close_backend` ends them."""
    if not ctx.profile.workers:
        return "sequential"
    from harness.evaluate import BACKENDS
    from harness.ray_backend import register

    if ctx.backend is None or BACKENDS.get("ray") is not ctx.backend:
        register(ctx.profile.workers, keep_workers=True)
        ctx.backend = BACKENDS["ray"]
    return "ray"


def close_backend(ctx: Context) -> None:
    """End the kept Ray workers of the sweep, if any were started."""
    if ctx.backend is not None:
        ctx.backend.close()
        ctx.backend = None


def _evaluate_together(ctx: Context, named: list[tuple[str, Any]], suites: list[str],
                       plan_of: Callable[[str], dict[str, Any]], summarize: bool = True) -> None:
    """Every ``(run name, PolicySource)`` in ``named`` in one :func:`harness.evaluate.evaluate_policies` call per
    suite (each environment runs all of their episodes before the next is built), with the plan
    ``plan_of(suite)`` gives; with ``summarize`` the summaries go to ``ctx.summaries``."""
    from harness.evaluate import evaluate_policies

    pairs = [(source, ctx.root / name) for name, source in named]
    for suite in suites:
        summaries = evaluate_policies(pairs, suite, seed=ctx.seed, table=False, videos=0, backend=_backend(ctx),
                                      provenance=ctx.provenance, **plan_of(suite))
        if summarize:
            ctx.summaries.update({name: summary for (name, _), summary in zip(named, summaries)})


def _simpler_plan(ctx: Context) -> Callable[[str], dict[str, Any]]:
    """The policies' plan of a SIMPLER-style suite under the profile, as :func:`_evaluate_together` takes it."""
    def plan_of(suite: str) -> dict[str, Any]:
        task_names, counts = plan(ctx.profile, suite, policies=True)
        return {"tasks": task_names, "episodes_by_variant": counts, "distinct_states": True}
    return plan_of


def _policy_run(ctx: Context) -> None:
    from harness.evaluate import policy_source, write_meta
    from harness.report import PREVIOUS_TEACHER

    previous = previous_teachers(ctx.profile)
    specs = policy_specs(ctx.profile)
    for name, spec in specs:
        # the short name the report shows; a previous teacher gets a legend entry (and colour) of its own
        write_meta(ctx.root / name, {"policy": name, **({"method": PREVIOUS_TEACHER} if spec in previous else {})})
    named = [(name, policy_source(spec)) for name, spec in specs]  # each loaded once
    _evaluate_together(ctx, named, simpler_suites(), _simpler_plan(ctx))


def replanning_specs(profile: Profile) -> list[tuple[str, str, int]]:
    """(run name, policy spec, K) of the teacher and students at every ``profile.execute`` K."""
    base = [(name, spec) for name, spec in policy_specs(profile)
            if not spec.startswith("baseline:") and not name.startswith("nograph-")]  # ablation: default K only
    return [(f"{name}-exec{k}", spec, k) for k in profile.execute for name, spec in base]


def _replanning_estimate(ctx: Context) -> float:
    if not ctx.profile.execute:
        return 0.0
    episodes = sum(len(t) * sum(c.values()) for t, c in (plan(ctx.profile, s, policies=True) for s in simpler_suites()))
    return 5.0 * episodes * len(replanning_specs(ctx.profile)) / max(1, ctx.profile.workers)


def _replanning_run(ctx: Context) -> None:
    """The teacher and students executing K actions per model call, for success against FLOPs per step."""
    if not ctx.profile.execute:
        print(f"[sweep] replanning: profile {ctx.profile.name!r} has no --execute axis, skipped")
        return
    from harness.evaluate import policy_source, write_meta

    specs = replanning_specs(ctx.profile)
    for name, _, _ in specs:
        write_meta(ctx.root / name, {"policy": name})
    named = [(name, policy_source(spec, execute=k)) for name, spec, k in specs]
    _evaluate_together(ctx, named, simpler_suites(), _simpler_plan(ctx), summarize=False)


def _latency_estimate(ctx: Context) -> float:
    groups = _latency_groups(ctx.profile)
    return 0.1 * ctx.profile.latency_iters * sum(len(specs) for _, specs in groups)


def _latency_hash(spec: str, teacher: Path | None = None) -> str:
    """Hash of the weights behind a policy spec and of the teacher it is timed against."""
    import hashlib

    from harness.evaluate import weights_hash

    folders = [teacher or teacher_dir()] + ([] if spec.startswith("baseline:") else [Path(spec)])
    return hashlib.sha256("|".join([spec, *map(weights_hash, folders)]).encode()).hexdigest()[:16]


def _latency_groups(profile: Profile) -> list[tuple[Path, list[tuple[str, str]]]]:
    """(teacher, [(run name, spec)]) of each latency pass: the SIMPLER-style teacher with its students and
    baselines, and the LIBERO teacher with its students where committed. Every policy of one figure panel is
    timed in the same pass."""
    groups = [(teacher_dir(), policy_specs(profile))]
    libero = [(name, str(folder)) for name, folder in libero_policy_specs(profile)]
    if libero:
        groups.append((Path(libero[0][1]), libero))
    return groups


def _latency_run(ctx: Context) -> None:
    """Every policy's model call timed in one interleaved round-robin pass per teacher (never from rollout
    time; see :func:`distill.latency.measure_latency_group`), so the latency figure compares like with like."""
    import hashlib
    import json

    import torch

    from distill import load_policy
    from distill.baselines import parse_policy_spec
    from distill.latency import busy_warning, measure_latency_group

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    for teacher, specs in _latency_groups(ctx.profile):
        digests = [_latency_hash(spec, teacher) for _, spec in specs]
        # stored figures count only if one pass timed exactly these weights (and this teacher)
        group_hash = hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]
        outs = [ctx.root / name / "latency.json" for name, _ in specs]
        stored = [json.loads(o.read_text()) if o.exists() else {} for o in outs]
        if all(s.get("pass_hash") == group_hash for s in stored):
            print(f"[sweep] latency of {', '.join(n for n, _ in specs)}: stored (one pass), skipped")
            continue
        if any(stored):
            print(f"[sweep] latency: the stored pass of {specs[0][0]} and its policies timed other weights or "
                  "other policies; timing them all again in one pass")
        policies = [parse_policy_spec(spec).build() if spec.startswith("baseline:") else load_policy(spec)
                    for _, spec in specs]
        names = [name for name, _ in specs]
        results = measure_latency_group(policies, names=names, iters=ctx.profile.latency_iters, reference=0)
        for (name, _), out, result, digest in zip(specs, outs, results, digests):
            result["policy_hash"], result["pass_hash"] = digest, group_hash
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            low, high = result["speedup_rounds"]
            print(f"[sweep] latency of {name}: median {result['median_ms']:.2f} ms, {result['speedup']:.2f}x vs "
                  f"{names[0]} (rounds {low:.2f}-{high:.2f}x)")
        warning = busy_warning(results[0])
        if warning:
            print(f"[sweep] warning: {warning}. For figures to report, delete {outs[0]} and rerun the "
                  "sweep's latency stage on a quiet machine.")


def _libero_estimate(ctx: Context) -> float:
    if ctx.profile.libero is None:
        return 0.0
    _, n_tasks, episodes = ctx.profile.libero
    # about 7 s of a worker per expert episode (it renders nothing): 4 episodes in 14 s on 2 workers, 2026-12-03
    return n_tasks * episodes * 7.0 / max(1, ctx.profile.workers)


def _libero_run(ctx: Context) -> None:
    if ctx.profile.libero is None:
        print(f"[sweep] profile {ctx.profile.name} runs no LIBERO episodes")
        return
    from harness.evaluate import evaluate

    suite, n_tasks, episodes = ctx.profile.libero
    ctx.summaries[f"scripted expert on {suite}"] = evaluate(
        "expert", suite, tasks=list(range(n_tasks)), episodes=episodes, seed=ctx.seed,
        out=ctx.root / "libero-expert", table=False, videos=0, backend=_backend(ctx), provenance=ctx.provenance)


LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def libero_policy_specs(profile: Profile) -> list[tuple[str, Path]]:
    """(run name, checkpoint) of the LIBERO teacher and of its students at the profile's budgets that are
    committed under ``results/checkpoints`` (``teacher-libero``, ``student-libero-b0.50``, ...)."""
    wanted = [("libero-teacher", CHECKPOINTS / "teacher-libero")]
    wanted += [(f"libero-student-b{b:.2f}", CHECKPOINTS / f"student-libero-b{b:.2f}") for b in profile.budgets]
    return [(name, folder) for name, folder in wanted if (folder / "model.safetensors").exists()]


def _libero_policy_estimate(ctx: Context) -> float:
    if not ctx.profile.libero_policy_episodes:
        return 0.0
    import tasks as suites
    from harness.results import ResultsStore

    # Measured on the 2-core CPU (2026-12-03, every policy per suite in one call): the default profile's 160
    # episodes took 11.2 min on 2 workers, about 8.5 s of a worker per episode with the environment builds
    # (failed libero_10 episodes run all 520 steps).
    per_policy = sum(len(suites.tasks(s)) for s in LIBERO_SUITES) * ctx.profile.libero_policy_episodes
    left = sum(max(0, per_policy - len(ResultsStore(ctx.root / name).frame()))
               for name, _ in libero_policy_specs(ctx.profile))
    return left * 8.5 / max(1, ctx.profile.workers)


def _libero_policy_run(ctx: Context) -> None:
    episodes = ctx.profile.libero_policy_episodes
    if not episodes:
        print(f"[sweep] profile {ctx.profile.name} evaluates no LIBERO policies")
        return
    specs = libero_policy_specs(ctx.profile)
    if not specs:
        print(f"[sweep] no LIBERO teacher under {CHECKPOINTS / 'teacher-libero'}: nothing to evaluate. Build it "
              "with: actdistill demos --family libero --out data/libero; actdistill train-teacher --data "
              "data/libero --out runs/train/teacher-libero; actdistill convert --policy runs/train/teacher-libero "
              f"--out {CHECKPOINTS / 'teacher-libero'}")
        return
    from harness.evaluate import policy_source, write_meta

    for name, _ in specs:
        write_meta(ctx.root / name, {"policy": name})
    named = [(name, policy_source(str(folder))) for name, folder in specs]
    # each LIBERO scene (seconds to build) is built about once for all of them
    _evaluate_together(ctx, named, list(LIBERO_SUITES), lambda suite: {"episodes": episodes})


def _report_run(ctx: Context) -> None:
    from harness.report import build_report

    runs = [ctx.root / "expert"] + [ctx.root / name for name, _ in policy_specs(ctx.profile)]
    runs += [ctx.root / name for name, _, _ in replanning_specs(ctx.profile)]
    runs += [ctx.root / "libero-expert"] + [ctx.root / name for name, _ in libero_policy_specs(ctx.profile)]
    from harness.results import has_results

    written = build_report([r for r in runs if has_results(r)], ctx.root / "figures")
    print(f"[sweep] report: {len(written)} files under {ctx.root / 'figures'} (start with report.md)")


def stages() -> list[Stage]:
    """The sweep's stages in order."""
    return [
        Stage("expert_eval", "scripted experts on the SIMPLER-style suites", _expert_estimate, _expert_run),
        Stage("models", "reference teacher and students (built only when missing)", _models_estimate,
              _models_run),
        Stage("policy_eval", "teacher, students and baselines on the SIMPLER-style suites", _policy_estimate,
              _policy_run),
        Stage("replanning", "teacher and students executing K actions per model call (profile's execute axis)",
              _replanning_estimate, _replanning_run),
        Stage("latency", "model-call latency of every policy in one interleaved pass per teacher", _latency_estimate,
              _latency_run),
        Stage("libero_expert", "scripted expert on a LIBERO subset", _libero_estimate, _libero_run),
        Stage("libero_policies", "LIBERO teacher and students, where committed, on the four LIBERO suites",
              _libero_policy_estimate, _libero_policy_run),
        Stage("report", "figures and tables from the stored results", lambda ctx: 5.0, _report_run),
    ]


SIMULATOR_STAGES = ("expert_eval", "models", "policy_eval", "replanning", "libero_expert", "libero_policies")


def doctor_plan(ctx: Context, todo: list[Stage]) -> tuple[list[str], int]:
    """(suites, Ray CPUs) of the simulator check before ``todo``: the doctor's suites of the families the
    stages use (SIMPLER-style for the first three stages, LIBERO where the profile runs LIBERO episodes) and
    the profile's workers when a stage evaluates on Ray (0: no Ray check)."""
    from harness import doctor

    names = {stage.name for stage in todo}
    suites = []
    if names & {"expert_eval", "models", "policy_eval", "replanning"}:
        suites += [s for s in simpler_suites() if s in doctor.SUITES]
    libero_policies = ctx.profile.libero_policy_episodes and libero_policy_specs(ctx.profile)
    if ("libero_expert" in names and ctx.profile.libero) or ("libero_policies" in names and libero_policies):
        suites += [s for s in doctor.SUITES if s.startswith("libero_")]
    ray = names & {"expert_eval", "policy_eval", "replanning", "libero_expert", "libero_policies"}
    return suites, ctx.profile.workers if ray else 0


def run_doctor_first(ctx: Context, todo: list[Stage], skip: bool = False) -> dict[str, str]:
    """Run the simulator check (:mod:`harness.doctor`) for the stages in ``todo`` and return what every
    episode records (``{"doctor": fingerprint}``; ``"skipped"`` with ``skip``; nothing when no stage builds an
    environment). Writes the report to ``ROOT/doctor/FINGERPRINT.json``; raises
    :class:`~harness.doctor.DoctorFailed` (exit 2), writing nothing, when a check FAILs."""
    import json

    from harness import doctor

    if not {stage.name for stage in todo} & set(SIMULATOR_STAGES):
        return {}
    if skip:
        print("[sweep] warning: --skip-doctor: the simulator stack is not checked; every result records "
              "doctor=skipped")
        return {"doctor": "skipped"}
    suites, workers = doctor_plan(ctx, todo)
    print(f"[sweep] doctor: {', '.join(suites) or 'versions only'}{' and a Ray worker' if workers else ''} "
          "(actdistill doctor runs every check)")
    report = doctor.run_doctor(suites, ray_workers=workers)
    for line in report.lines():
        print(line)
    if report.failed:
        first = "; ".join(f"{c.name}: {c.reason}" for c in report.failed[:3])
        raise doctor.DoctorFailed(
            f"the simulator check FAILed ({len(report.failed)} of {len(report.checks)} checks): {first}. "
            "Nothing was run. Run actdistill doctor for every check and the differing frames, fix the stack "
            "(or record new references with actdistill doctor --update-references if it changed on purpose), "
            "or pass --skip-doctor to run anyway (recorded as doctor=skipped in every result)")
    out = ctx.root / "doctor" / f"{report.fingerprint}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=1) + "\n")
    return {"doctor": report.fingerprint}


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


HELP = "the whole benchmark, resumable (bash run_all.sh runs it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's options (``actdistill sweep``)."""
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default",
                        help="how much to run: smoke (minutes), default, full (default: default)")
    parser.add_argument("--out", default="runs", help="root folder (default runs); results go to OUT/<profile>")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation initial states")
    parser.add_argument("--stages", default=None,
                        help="comma-separated stages to run (default: all, in order: "
                             f"{', '.join(stage.name for stage in stages())})")
    parser.add_argument("--skip-doctor", action="store_true",
                        help="start without the simulator check (actdistill doctor); every result records "
                             "doctor=skipped")


def select_stages(text: str | None) -> list[Stage]:
    """The stages named in ``text`` (comma-separated; all when empty), in sweep order."""
    todo = stages()
    if not text:
        return todo
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    valid = [stage.name for stage in todo]
    unknown = [name for name in wanted if name not in valid]
    if unknown:
        raise UserInputError(f"unknown stage(s) {', '.join(unknown)}; valid stages: {', '.join(valid)}")
    return [stage for stage in todo if stage.name in wanted]


def run(args: argparse.Namespace) -> int:
    """Run the sweep: print each stage's time estimate, then run the stages in order and print the tables."""
    from harness.results import format_table

    ctx = Context(PROFILES[args.profile], Path(args.out) / args.profile, seed=args.seed)
    todo = select_stages(args.stages)
    print(f"[sweep] profile {args.profile} -> {ctx.root}; stages: {', '.join(s.name for s in todo)}")
    ctx.provenance = run_doctor_first(ctx, todo, skip=args.skip_doctor)
    estimates = {}
    for stage in todo:
        estimates[stage.name] = stage.estimate_s(ctx)
        print(f"[sweep] estimate {stage.name}: ~{_fmt_s(estimates[stage.name])} ({stage.description})")
    print(f"[sweep] estimated total: ~{_fmt_s(sum(estimates.values()))} (rerun to resume)")
    start = time.perf_counter()
    try:
        for i, stage in enumerate(todo, 1):
            print(f"[sweep] stage {i}/{len(todo)}: {stage.name}: {stage.description}")
            t0 = time.perf_counter()
            stage.run(ctx)
            print(f"[sweep] stage {stage.name} done in {_fmt_s(time.perf_counter() - t0)}")
    finally:
        close_backend(ctx)
    for title, summary in ctx.summaries.items():
        print(f"\n[sweep] {title}\n{format_table(summary)}")
    print(f"\n[sweep] finished in {_fmt_s(time.perf_counter() - start)}; results under {ctx.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``actdistill sweep`` with ``argv`` (for scripts and tests)."""
    from harness.cli import main as cli

    return cli(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
