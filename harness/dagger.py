"""Expert relabelling (DAgger, Ross et al. 2011): the learner drives, the scripted expert labels.

    from harness.dagger import record_dagger
    meta = record_dagger("results/checkpoints/teacher-simpler", "simpler_google", "data/dagger-r1/simpler_google",
                         episodes=10, seed=101)
    # then train on both:  actdistill train-teacher --data data/simpler-s1 data/dagger-r1 ...

Every step of an episode runs the learner and the expert on the same observation. The environment
executes the learner's action (with probability ``beta`` the expert's, drawn per step), the dataset
records the expert's: the demonstrations then cover the states the learner visits, with the action
that recovers from them. Failed episodes are kept (they are where the labels matter most).

The SIMPLER-style experts read privileged state and replan when a phase's precondition fails
(:class:`tasks.simpler.experts.Waypoint` guards), so their label is correct from states their own plan
never visits. LIBERO's expert plans once from the initial state and is not relabelling-safe: it is
refused here, with that reason.

With ``labeller`` a policy (a teacher checkpoint) labels instead of the scripted expert: on-policy
distillation data (the student drives, the teacher says what it would do), for any suite, LIBERO included,
since a reactive policy answers every state it is shown. The labeller replans at every step (``execute=1``),
so each label is its action for that very state; ``actdistill distill`` recomputes the teacher's targets on
the recorded observations anyway (its teacher cache).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tasks.base import ACTION_DIM
from tasks.errors import UserInputError

RELABEL_SUITES = ("simpler_google", "simpler_widowx")
DEFAULT_SEED = 101  # initial states away from the evaluation draws (seed 0 and the small seeds of reports)


class Relabeller:
    """A :class:`tasks.base.Policy` for :func:`harness.rollout.rollout` that returns the expert's action
    (what the record keeps) while :meth:`executed` gives the env the learner's (``perturb=``).

    ``beta``: per-step probability that the env executes the expert's action instead. ``takeover``: from
    that step on the expert's action is executed (the learner drives the steps before it); used to test
    that an expert recovers from where a learner left it. ``learner_steps`` counts the steps the learner's
    action was executed. The learner's action is checked like a policy's (shape (7,), finite): a bad one
    raises, which ends the episode as a failure with the reason.
    """

    def __init__(self, learner: Any, expert: Any, *, beta: float = 0.0, rng: np.random.Generator | None = None,
                 takeover: int | None = None):
        if not 0.0 <= beta <= 1.0:
            raise UserInputError(f"--beta must be in [0, 1], got {beta}")
        self.learner = learner
        self.expert = expert
        self.beta = beta
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.takeover = takeover
        self.reset()

    def reset(self) -> None:
        self.learner.reset()
        self.expert.reset()
        self.t = 0
        self.learner_steps = 0
        self._executed: np.ndarray | None = None
        self.last_label: np.ndarray | None = None  # the expert's action of the current step
        self.last_privileged = None

    def needs_obs_next(self) -> bool:
        wants = getattr(self.learner, "needs_obs_next", None)
        return bool(wants()) if wants is not None else True

    def act(self, obs) -> np.ndarray:
        label = _as_action(self.expert.act(obs))
        self.last_label = label
        self.last_privileged = getattr(self.expert, "last_privileged", None)
        expert_drives = (self.takeover is not None and self.t >= self.takeover) or \
            (self.beta > 0 and self.rng.random() < self.beta)
        if expert_drives:
            self._executed = label
        else:
            action = _as_action(self.learner.act(obs))
            if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
                raise ValueError(f"learner returned an invalid action {action.tolist()} (expected {ACTION_DIM} "
                                 "finite numbers)")
            self._executed = action
            self.learner_steps += 1
        self.t += 1
        return label

    def executed(self, label: np.ndarray) -> np.ndarray:
        """The action the env executes for the label the rollout records (its ``perturb`` hook)."""
        return label if self._executed is None else self._executed


def _as_action(raw) -> np.ndarray:
    """A policy's action (array or tensor) as a float64 array."""
    return np.asarray(raw.detach().cpu().numpy() if hasattr(raw, "detach") else raw, dtype=np.float64)


def check_suite(suite: str, labeller: str | None = None) -> None:
    """Refuse a suite whose scripted expert cannot label a learner's states (any suite is fine with a policy
    ``labeller``)."""
    if labeller is not None:
        return
    if suite not in RELABEL_SUITES:
        why = (" (LIBERO's scripted expert plans once from the initial state and cannot label a learner's states)"
               if suite.startswith("libero") else "")
        raise UserInputError(f"dagger cannot relabel suite {suite!r} with the scripted expert{why}; valid suites: "
                             f"{', '.join(RELABEL_SUITES)}, or any suite with --labeller TEACHER (a policy labels)")


def record_dagger(policy: str, suite: str, out: str | Path, *, tasks: list[str] | None = None,
                  variant: str | None = None, episodes: int = 10, seed: int = DEFAULT_SEED, beta: float = 0.0,
                  overwrite: bool = False, progress: bool = True, codec: str = "h264",
                  labeller: str | None = None, first_episode: int = 0) -> dict:
    """Roll ``policy`` (``harness.evaluate.policy_source`` spec) out on ``episodes`` initial states per task of
    ``suite`` and record every visited state with the expert's action into the dataset folder ``out``.

    ``labeller``: a policy spec (a teacher checkpoint) that labels instead of the scripted expert, replanning
    at every step; with it any suite works. ``first_episode``: the episode index of the first initial state
    (with a suite's official init states, e.g. LIBERO's, the states ``first_episode ..`` are used: keep
    them apart from the ones you evaluate on).

    Returns the dataset meta; ``meta["dagger"]`` holds the policy, its hash, the labeller (``"expert"`` or the
    spec) and its hash, ``beta``, the seed, and per task the episodes' success (of the executed mixture: the
    learner's own when ``beta`` is 0), the steps the learner drove and the expert's replans.
    """
    import tasks as suites
    from harness.evaluate import policy_source
    from harness.rollout import rollout
    from tasks.datasets import DemoWriter
    from tasks.provenance import versions
    from tasks.registry import resolve_task, resolve_variant

    check_suite(suite, labeller)
    if first_episode < 0:
        raise UserInputError(f"--first-episode must be >= 0, got {first_episode}")
    if episodes < 1:
        raise UserInputError(f"--episodes must be >= 1, got {episodes}")
    if not 0.0 <= beta <= 1.0:
        raise UserInputError(f"--beta must be in [0, 1], got {beta}")
    source = policy_source(policy)
    teacher = policy_source(labeller, execute=1) if labeller is not None else None
    task_names = [resolve_task(suite, t) for t in tasks] if tasks else suites.tasks(suite)
    variant = resolve_variant(suite, variant)
    writer = DemoWriter(out, suite=suite, variant=variant, overwrite=overwrite, versions=versions(), codec=codec)
    stats: dict[str, dict] = {}
    failures: dict[str, dict[str, int]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes * len(task_names), desc=f"dagger {suite}", unit="ep", dynamic_ncols=True)
    policy_hash = labeller_hash = None
    for task in task_names:
        env = suites.make(suite, task, variant=variant, seed=seed, **source.env_kwargs)
        try:
            policy_hash = policy_hash or source.hash_for(env)
            labeller_hash = labeller_hash or (teacher.hash_for(env) if teacher is not None else None)
            rng = np.random.default_rng([seed, zlib.crc32(task.encode()), 0xDA66])
            label = teacher.build(env) if teacher is not None else suites.expert(env)
            relabel = Relabeller(source.build(env), label, beta=beta, rng=rng)
            row = {"episodes": 0, "successes": 0, "steps": 0, "learner_steps": 0, "replans": 0}
            for i in range(first_episode, first_episode + episodes):
                result = rollout(relabel, env, episode_index=i, seed=seed, record=True, perturb=relabel.executed)
                if result.failure_reason:
                    failures.setdefault(task, {}).setdefault(result.failure_reason, 0)
                    failures[task][result.failure_reason] += 1
                if result.steps:
                    writer.add(result.record, task=task, seed=seed, episode_index=i)
                    row["episodes"] += 1
                    row["steps"] += result.steps
                row["successes"] += int(result.success)
                row["learner_steps"] += relabel.learner_steps
                row["replans"] += int(getattr(relabel.expert, "replans", 0))
                if bar is not None:
                    bar.update(1)
        finally:
            env.close()
        row["rate"] = row["successes"] / episodes
        stats[task] = row
        line = (f"[dagger] {suite}/{task}: {row['successes']}/{episodes} succeeded, {row['steps']} steps relabelled"
                + ("" if teacher is not None else f", {row['replans']} expert replans"))
        (print if bar is None else bar.write)(line)
    if bar is not None:
        bar.close()
    extra = {"dagger": {"policy": policy, "policy_hash": policy_hash, "labeller": labeller or "expert",
                        "labeller_hash": labeller_hash, "beta": beta, "seed": seed, "first_episode": first_episode,
                        "tasks": stats},
             "seed": seed, "failure_reasons": failures}
    return writer.close(extra=extra)


def record_dagger_family(policy: str, family: str, out: str | Path, *, scale: float = 1.0, seed: int = DEFAULT_SEED,
                         beta: float = 0.0, progress: bool = True, codec: str = "h264",
                         labeller: str | None = None) -> list[Path]:
    """One :func:`record_dagger` folder ``out/<suite>/<variant>`` per entry of the demonstration recipe of
    ``family`` (``harness.demo_sets.recipe``; ``simpler``, or any family with a policy ``labeller``), ``scale`` x a quarter of its episode counts
    (relabelled episodes are denser in information than clean ones), each variant with its own seed
    (``seed`` + the entry's index). Finished folders are skipped, so an interrupted run resumes."""
    import math

    from harness.demo_sets import recipe

    if family != "simpler" and labeller is None:
        raise UserInputError(f"dagger relabels the 'simpler' family only with the scripted expert, got {family!r} "
                             f"(valid suites: {', '.join(RELABEL_SUITES)}; any family with --labeller TEACHER)")
    folders = []
    for k, entry in enumerate(recipe(family, scale)):
        folder = Path(out) / entry.suite / entry.variant
        if (folder / "meta.json").exists():
            print(f"[dagger] {folder}: done already, skipped")
        else:
            record_dagger(policy, entry.suite, folder, variant=entry.variant,
                          episodes=max(1, math.ceil(entry.episodes / 4)), seed=seed + k, beta=beta,
                          overwrite=folder.exists(), progress=progress, codec=codec, labeller=labeller)
        folders.append(folder)
    return folders
