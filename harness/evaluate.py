"""Evaluate a policy on a suite and store one row per episode in a resumable run folder.

    from harness.evaluate import evaluate
    summary = evaluate("expert", "simpler_widowx", episodes=10, out="runs/expert")
    summary = evaluate("ckpt/teacher", "simpler_google", variant="all", episodes=5, out="runs/teacher")

Episodes ``0..episodes-1`` of every (task, variant) are run with the same ``seed``; the
environment's initial state is a pure function of (seed, episode index), so every policy meets
the same initial states. With ``distinct_states`` (what the sweep's plans use) the variants'
episodes take consecutive blocks of indices instead, so no two episodes of a task share an
initial state: the variant effect is then no longer paired, but a draw holds as many initial
states as episodes, and its intervals are not inflated by one state counted under every variant.

Episodes already in the run folder (same key, see :mod:`harness.results`) are skipped, so an
interrupted evaluation resumes where it stopped.

A backend turns a list of :class:`Job` into ``(job, EpisodeResult)`` pairs as episodes
finish; the driver here stores each row as it arrives. ``sequential`` is built in; other
backends (e.g. Ray) register in :data:`BACKENDS` with the same signature.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tasks as suites
from harness.results import ResultsStore, episode_key, format_table, lost_to_server, make_row
from harness.rollout import EpisodeResult, rollout
from harness.videos import write_episode_video
from tasks.errors import MissingInputError, SetupError, UserInputError
from tasks.provenance import files_hash, versions
from tasks.registry import resolve_task, resolve_variant


@dataclass(frozen=True)
class Job:
    """One episode to run: the environment it needs and the episode index within it."""

    suite: str
    task: str
    variant: str
    episode_index: int
    seed: int
    video: bool = False
    policy: int = 0  # index into the call's policy sources (evaluate_policies runs several on one environment)


@dataclass
class PolicySource:
    """Where policies come from: ``build(env)`` returns a policy for ``env`` (see
    :mod:`harness.rollout` for the protocol); ``hash_for(env)`` identifies its weights/code;
    ``meta`` describes it for the report (``kind``, ``budget``, ``method``: see :mod:`harness.report`);
    ``env_kwargs`` are what its environments need (the state-input ceiling: ``privileged_obs=True``)."""

    name: str
    build: Callable[[Any], Any]
    hash_for: Callable[[Any], str]
    meta: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunOptions:
    """Everything a backend needs besides the jobs and the policy."""

    max_steps: int | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)


def weights_hash(folder: Path) -> str:
    """Hash of a checkpoint folder's ``config.json`` and ``*.safetensors`` (not its logs or plots)."""
    files = [p for p in folder.glob("*") if p.is_file() and (p.name == "config.json" or p.suffix == ".safetensors")]
    return files_hash(files, folder)


def _expert_hash(env) -> str:
    """Hash of the Python sources in the expert's package folder (expert and env code)."""
    folder = Path(inspect.getsourcefile(type(suites.expert(env)))).parent
    return "expert-" + files_hash(list(folder.glob("*.py")), folder)


def policy_source(policy: str, obs_map: str | None = None, device: str = "cpu",
                  execute: int | None = None) -> PolicySource:
    """``"expert"`` (the suite's scripted expert), a checkpoint folder for ``distill.load_policy``, a
    baseline spec ``baseline:<name>@<budget>:<teacher folder>`` (:func:`distill.baselines.parse_policy_spec`),
    a policy server ``ws://HOST:PORT`` (:func:`harness.serving.client.served_source`, with ``obs_map``: a
    preset name or JSON file, :mod:`harness.serving.obs_map`) or a plug-in ``py:package.module:factory``
    (:func:`harness.plugin.plugin_source`). Checkpoints and baselines load on ``device``.

    The expert's hash covers the Python sources of its package folder; a checkpoint's covers its
    ``config.json``, ``*.safetensors`` and the loaded policy's ``checkpoint_hash`` if it has one.
    Raises :class:`~tasks.errors.MissingInputError` naming the path when ``policy`` is none of these, and
    :class:`~tasks.errors.UserInputError` for an ``obs_map`` given with a policy that is not served.

    ``execute``: a checkpoint's or baseline's actions executed per model call (the first K of each chunk;
    :meth:`distill.checkpoint.VLAPolicy.set_execute`); part of the hash and of ``meta["execute"]``.
    """
    if execute is not None and (policy == "expert" or policy.startswith(("ws://", "wss://", "py:"))):
        raise UserInputError(f"--execute applies to checkpoints and baselines, not to --policy {policy!r} "
                             "(a served policy's open-loop count is the obs map's 'execute')")
    if policy.startswith(("ws://", "wss://")):
        from harness.serving.client import served_source  # lazy: websockets loads only here

        return served_source(policy, obs_map)
    if obs_map is not None:
        raise UserInputError(f"--obs-map applies to policies served at ws://HOST:PORT, not to --policy {policy!r}")
    if policy.startswith("py:"):
        from harness.plugin import plugin_source

        return plugin_source(policy)
    if policy == "expert":
        return PolicySource("expert", build=suites.expert, hash_for=_expert_hash,
                            meta={"policy": "expert", "kind": "expert", "method": "scripted expert"})
    if policy.startswith("baseline:"):
        from distill.baselines import parse_policy_spec  # lazy, like load_policy below

        baseline = parse_policy_spec(policy).build(device)
        baseline.set_execute(execute)
        # The baseline's hash covers its teacher's weights, name, budget and seed.
        digest = "baseline-" + str(baseline.checkpoint_hash) + (f"-exec{execute}" if execute else "")
        meta = {"policy": policy, "kind": "baseline", "budget": baseline.budget, "method": baseline.name,
                **({"execute": execute} if execute else {})}
        return PolicySource(policy, build=lambda env: baseline, hash_for=lambda env: digest, meta=meta)
    path = Path(policy)
    if not path.is_dir():
        raise MissingInputError(f"--policy {policy!r} is neither 'expert' nor a checkpoint folder (nor "
                                "baseline:NAME@BUDGET:TEACHER, ws://HOST:PORT or py:package.module:factory)")
    from distill.checkpoint import checkpoint_kind, load_policy, read_config  # lazy: torch loads only here

    loaded = load_policy(path, device=device)
    loaded.set_execute(execute)
    # Weights and config identify the policy; training state, logs and plots do not. A policy that
    # reads weights from elsewhere (e.g. a baseline over a teacher) names them in checkpoint_hash.
    digest = "ckpt-" + hashlib.sha256(
        (weights_hash(path) + str(getattr(loaded, "checkpoint_hash", ""))).encode()).hexdigest()[:16]
    digest += f"-exec{execute}" if execute else ""
    config = read_config(path)
    if checkpoint_kind(config, path / "config.json") == "routed_student":
        meta = {"policy": str(path), "kind": "student", "budget": config["student"]["budget"],
                "method": "ActDistill" if config.get("training", {}).get("graph_supervision", True)
                else "router without graph supervision"}
        if config.get("teacher", {}).get("path"):
            meta["teacher"] = str(config["teacher"]["path"])  # whom it was distilled from (the report says)
    else:
        meta = {"policy": str(path), "kind": "teacher", "method": "teacher"}
    if execute:
        meta["execute"] = execute
    state = config.get("vla", {}).get("vision_encoder") == "state"
    if state:
        meta["method"] = "state-input ceiling (privileged scene state, no cameras)"
    return PolicySource(str(path), build=lambda env: loaded, hash_for=lambda env: digest, meta=meta,
                        env_kwargs={"privileged_obs": True} if state else {})


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    """Merge ``meta`` into ``out/meta.json`` (fields already there, e.g. a measured latency, are kept)."""
    if not meta:
        return
    path = out / "meta.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    merged = {**meta, **current}
    if merged != current:
        out.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=2) + "\n")
        os.replace(tmp, path)


def policy_sources(source: PolicySource | Sequence[PolicySource]) -> list[PolicySource]:
    """The sources of a backend call: one :class:`PolicySource`, or several (``Job.policy`` indexes them)."""
    return [source] if isinstance(source, PolicySource) else list(source)


class EnvSlot:
    """One environment and the policies built for it, reused while jobs need the same environment.

    ``run(job)`` rolls out one episode with policy ``job.policy`` (an index into ``build_policy``: one
    ``build(env)`` function or a list of them); a job for another (suite, task, variant, seed) first closes the
    environment and builds the next one, and each policy is built for it on its first job there. Used by every
    backend.
    """

    def __init__(self, build_policy: Callable[[Any], Any] | Sequence[Callable[[Any], Any]], options: RunOptions):
        self.env, self.key = None, None
        self._use(build_policy, options)

    def _use(self, build_policy: Callable[[Any], Any] | Sequence[Callable[[Any], Any]], options: RunOptions) -> None:
        self.builders = [build_policy] if callable(build_policy) else list(build_policy)
        self.options, self.policies = options, {}

    def run(self, job: Job) -> EpisodeResult:
        """The episode ``job`` in the (possibly new) environment it needs."""
        key = (job.suite, job.task, job.variant, job.seed)
        if key != self.key:
            self.close()
            self.env = suites.make(job.suite, job.task, variant=job.variant, seed=job.seed, **self.options.env_kwargs)
            self.key = key
        if not 0 <= job.policy < len(self.builders):
            raise UserInputError(f"job {job} names policy {job.policy}, but this call has {len(self.builders)}")
        if job.policy not in self.policies:
            self.policies[job.policy] = self.builders[job.policy](self.env)
        return rollout(self.policies[job.policy], self.env, episode_index=job.episode_index, seed=job.seed,
                       max_steps=self.options.max_steps, videos=job.video)

    def switch(self, build_policy: Callable[[Any], Any] | Sequence[Callable[[Any], Any]],
               options: RunOptions) -> None:
        """Run other policies from now on: the environment is kept when ``options`` build the same ones (the
        next job of the same (suite, task, variant, seed) skips the build), the policies are built anew."""
        if options.env_kwargs != self.options.env_kwargs:
            self.close()
        self._use(build_policy, options)

    def close(self) -> None:
        """Close the environment held (if any)."""
        if self.env is not None:
            self.env.close()
        self.env, self.key, self.policies = None, None, {}


def run_sequential(jobs: list[Job], source: PolicySource | Sequence[PolicySource],
                   options: RunOptions) -> Iterator[tuple[Job, EpisodeResult]]:
    """Run ``jobs`` one after another in this process, one environment at a time (:class:`EnvSlot`)."""
    slot = EnvSlot([s.build for s in policy_sources(source)], options)
    try:
        for job in jobs:
            yield job, slot.run(job)
    finally:
        slot.close()


# a backend: (jobs, one source or a list of them (Job.policy indexes it), options) -> (job, result) as they finish
Backend = Callable[[list[Job], Any, RunOptions], Iterator[tuple[Job, EpisodeResult]]]
BACKENDS: dict[str, Backend] = {"sequential": run_sequential}


PROBE_CACHE_SIZE = 4  # probe environments kept per process (one per LIBERO suite of a sweep)
_PROBES: OrderedDict[tuple, Any] = OrderedDict()


def probe_env(suite: str, task: str, variant: str, seed: int, env_kwargs: Mapping[str, Any]):
    """The environment :func:`evaluate` reads before a run's episodes (the policy's hash, the render mode).

    Kept for later calls in this process with the same arguments, since a sweep evaluates many policies on
    one suite and a LIBERO environment takes seconds to build (the workers wait meanwhile); beyond
    :data:`PROBE_CACHE_SIZE` the least recently used one is closed. At exit the environments free their
    renderers themselves (each family's own exit hook), as any environment left open does."""
    key = (suite, task, variant, int(seed), repr(sorted(env_kwargs.items())))
    env = _PROBES.pop(key, None)
    if env is None:
        env = suites.make(suite, task, variant=variant, seed=seed, **env_kwargs)
    _PROBES[key] = env  # most recently used last
    while len(_PROBES) > PROBE_CACHE_SIZE:
        _PROBES.popitem(last=False)[1].close()
    return env


def close_probe_envs() -> None:
    """Close every probe environment kept by :func:`probe_env`."""
    while _PROBES:
        _PROBES.popitem()[1].close()


def resolve_variants(suite: str, variant: str | None) -> list[str]:
    """``None`` -> the default variant, ``"all"`` -> every variant, else the checked name."""
    if variant == "all":
        return suites.variants(suite)
    return [resolve_variant(suite, variant)]


def episode_indices(counts: Mapping[str, int], distinct_states: bool = False) -> dict[str, range]:
    """Episode indices per variant for ``{variant: episodes}``: ``0..n-1`` under every variant, or with
    ``distinct_states`` consecutive blocks in the mapping's order (the first variant gets ``0..n-1``,
    the next ``n..n+m-1``, ...), so that no initial state is run twice."""
    out, start = {}, 0
    for v, n in counts.items():
        out[v] = range(start, start + n) if distinct_states else range(n)
        start += n
    return out


def _refuse_other_plans(store: ResultsStore, planned: set[str], policy_hash: str, suite: str, seed: int,
                        task_names: list[str], out) -> None:
    """Raise when ``out`` holds episodes of this policy, suite, seed and tasks outside ``planned``: they
    come from another plan (or from shared initial states), and the summary would pool them with these."""
    prefix = f"{policy_hash}|{suite}|"
    if not any(k.startswith(prefix) and k not in planned for k in store.done_keys() | store.retry_keys()):
        return  # the usual case, from the cached keys: no second read of the store
    df = store.frame()
    mine = df[(df["policy_hash"] == policy_hash) & (df["suite"] == suite) & (df["seed"] == seed)
              & df["task"].isin(task_names)]
    other = mine[~mine["key"].isin(planned)]
    if not other.empty:
        first = other.iloc[0]
        raise UserInputError(f"run folder {str(out)!r} holds {len(other)} episode(s) of this policy on {suite} (seed {seed}) "
                         f"outside this plan, e.g. {first['task']} / {first['variant']} episode "
                         f"{int(first['episode_index'])}: it was made with another plan or with every variant "
                         "on the same initial states; evaluate into a new --out")


def _episode_counts(suite: str, variant: str | None, episodes: int,
                    episodes_by_variant: Mapping[str, int] | None) -> dict[str, int]:
    """``{variant: episodes}`` of an :func:`evaluate` call, names resolved; raises on an empty or bad count."""
    if episodes_by_variant is not None:
        if not episodes_by_variant:
            raise UserInputError("episodes_by_variant is empty; give at least one {variant: episodes}")
        counts = {resolve_variant(suite, v): int(n) for v, n in episodes_by_variant.items()}
    else:
        counts = {v: episodes for v in resolve_variants(suite, variant)}
    for v, n in counts.items():
        if n < 1:
            raise UserInputError(f"episodes must be >= 1, got {n} (variant {v!r})")
    return counts


def _plan_shape(counts: Mapping[str, int], distinct_states: bool) -> str:
    """The plan line's "variants x episodes" part, e.g. ``(visual_matching x 5 + 10 variants x 1) episode(s)``."""
    if len(set(counts.values())) == 1:
        shape = f"{len(counts)} variant(s) x {next(iter(counts.values()))} episode(s)"
    else:
        groups: dict[int, list[str]] = {}
        for v, n in counts.items():
            groups.setdefault(n, []).append(v)
        shape = "(" + " + ".join(f"{names[0] if len(names) == 1 else f'{len(names)} variants'} x {n}"
                                 for n, names in groups.items()) + ") episode(s)"
    if distinct_states and len(counts) > 1:
        shape += f", each on its own initial state (indices 0-{sum(counts.values()) - 1})"
    return shape


def evaluate(policy: str | PolicySource, suite: str, *, tasks: list[str] | None = None,
             variant: str | None = None, episodes: int = 10, seed: int = 0, out: str | os.PathLike,
             videos: int = 0, max_steps: int | None = None, backend: str = "sequential",
             env_kwargs: dict[str, Any] | None = None, progress: bool = True, table: bool = True,
             quiet: bool = False, episodes_by_variant: Mapping[str, int] | None = None,
             distinct_states: bool = False,
             provenance: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run the missing episodes of ``policy`` on ``suite`` and return the run folder's summary.

    ``tasks``: task names or indices (default: all); ``variant``: a name, ``"all"`` or ``None``
    (the default variant); ``episodes_by_variant``: ``{variant: episodes}``, used instead of
    ``variant``/``episodes`` to run different episode counts per variant in one call (one set of
    workers and one probe environment for the whole plan); ``distinct_states``: give each variant its
    own block of episode indices (:func:`episode_indices`) instead of ``0..n-1`` under every variant;
    ``videos``: save annotated agentview mp4s (:mod:`harness.videos`) of the first ``videos`` episodes
    of each (task, variant) under ``out/videos/``. Writes ``out/episodes.parquet`` as episodes
    finish and ``out/summary.json`` (this policy's current rows) at the end; prints a plan line and
    (with ``table``) the summary table unless ``quiet``. Unknown names raise ``ValueError`` listing the valid ones.
    An episode lost to a policy server that went away (:func:`harness.results.lost_to_server`) is stored as lost
    and stops the run with :class:`~tasks.errors.MissingInputError`: rerunning, once the server is back, runs it
    and the episodes not started. ``provenance``: fields added to every row's ``versions`` (the
    sweep's ``{"doctor": fingerprint}``, :mod:`harness.doctor`). Several policies on the same episodes:
    :func:`evaluate_policies`.
    """
    return evaluate_policies([(policy, out)], suite, tasks=tasks, variant=variant, episodes=episodes, seed=seed,
                             videos=videos, max_steps=max_steps, backend=backend, env_kwargs=env_kwargs,
                             progress=progress, table=table, quiet=quiet, episodes_by_variant=episodes_by_variant,
                             distinct_states=distinct_states, provenance=provenance)[0]


@dataclass
class _Run:
    """One policy of an :func:`evaluate_policies` call: its source, run folder and the jobs it still needs."""

    source: PolicySource
    out: str | os.PathLike
    env_kwargs: dict[str, Any]  # the source's, then the call's
    store: ResultsStore
    policy_hash: str
    render_mode: str
    jobs: list[Job]
    planned: set[str]  # the episode keys of this call's plan (done or not)


def evaluate_policies(policies: Sequence[tuple[str | PolicySource, str | os.PathLike]], suite: str, *,
                      tasks: list[str] | None = None, variant: str | None = None, episodes: int = 10,
                      seed: int = 0, videos: int = 0, max_steps: int | None = None, backend: str = "sequential",
                      env_kwargs: dict[str, Any] | None = None, progress: bool = True, table: bool = True,
                      quiet: bool = False, episodes_by_variant: Mapping[str, int] | None = None,
                      distinct_states: bool = False,
                      provenance: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """:func:`evaluate` of every ``(policy, out)`` in ``policies`` on the same plan, in one backend call: each
    environment, once built, runs its episodes for every policy before the next is built (a sweep's dozen
    policies then build each LIBERO scene about once instead of once per policy, and the workers go idle at
    the end of one call instead of one per policy). Each policy's rows, episodes and summary are exactly what
    its own :func:`evaluate` call would give (the same jobs, seeds and keys; a test checks it). Policies whose
    environments differ (a state-input policy's ``privileged_obs``) run in one call per kind. Returns the
    summaries in the order given; the run folders must differ."""
    if backend not in BACKENDS:
        raise UserInputError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if not policies:
        raise UserInputError("evaluate_policies needs at least one (policy, out) pair")
    outs = [Path(out).resolve() for _, out in policies]
    if len(set(outs)) != len(outs):
        twice = next(str(o) for o in outs if outs.count(o) > 1)
        raise UserInputError(f"evaluate_policies got the run folder {twice!r} for more than one policy; give each "
                             "policy its own out")
    task_names = [resolve_task(suite, t) for t in tasks] if tasks else suites.tasks(suite)
    counts = _episode_counts(suite, variant, episodes, episodes_by_variant)
    variant_names = list(counts)
    indices = episode_indices(counts, distinct_states)
    total = len(task_names) * sum(counts.values())
    runs: list[_Run] = []
    for policy, out in policies:
        source = policy if isinstance(policy, PolicySource) else policy_source(policy)
        kwargs = {**source.env_kwargs, **dict(env_kwargs or {})}
        probe = probe_env(suite, task_names[0], variant_names[0], seed, kwargs)
        policy_hash = source.hash_for(probe)
        render_mode = getattr(probe.unwrapped, "render_mode", None) or "default"
        store = ResultsStore(out)
        write_meta(Path(out), source.meta)
        done, lost = store.done_keys(), store.retry_keys()
        keyed = [(Job(suite, t, v, i, seed, video=j < videos),
                  episode_key(policy_hash, suite, t, v, i, render_mode, seed))
                 for t in task_names for v in variant_names for j, i in enumerate(indices[v])]
        if distinct_states:
            _refuse_other_plans(store, {key for _, key in keyed}, policy_hash, suite, seed, task_names, out)
        jobs = [job for job, key in keyed if key not in done]
        again = sum(key in lost for _, key in keyed)
        if not quiet:
            print(f"[eval] {source.name} on {suite}: {len(task_names)} task(s) x "
                  f"{_plan_shape(counts, distinct_states)}; {total - len(jobs)} already done, {len(jobs)} to run"
                  + (f" ({again} of them again: their worker or policy server died)" if again else "") + f" -> {out}")
        runs.append(_Run(source, out, kwargs, store, policy_hash, render_mode, jobs, {key for _, key in keyed}))
    run_versions = {**versions(), **(provenance or {})}
    groups: dict[str, list[int]] = {}  # policies that share environments: the same env_kwargs
    for n, run in enumerate(runs):
        groups.setdefault(repr(sorted(run.env_kwargs.items())), []).append(n)
    # the plan's order (task, variant, episode), every policy's episode of one initial state next to the others'
    rank = {(t, v, i): n for n, (t, v, i) in enumerate((t, v, i) for t in task_names for v in variant_names
                                                       for i in indices[v])}
    todo = sum(len(run.jobs) for run in runs)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        label = suite if len(runs) == 1 else f"{suite}, {len(runs)} policies"
        bar = tqdm(total=todo, desc=label, unit="ep", dynamic_ncols=True)
    successes, finished = 0, 0
    try:
        for members in groups.values():
            # one backend call per group, in plan order, so a worker keeps its environment for every policy
            jobs = sorted((replace(job, policy=k) for k, n in enumerate(members) for job in runs[n].jobs),
                          key=lambda j: (rank[(j.task, j.variant, j.episode_index)], j.policy))
            if not jobs:
                continue
            sources = [runs[n].source for n in members]
            # a single source is passed as such: backends registered before several existed take one
            results = BACKENDS[backend](jobs, sources[0] if len(sources) == 1 else sources,
                                        RunOptions(max_steps, runs[members[0]].env_kwargs))
            for job, result in results:
                run = runs[members[job.policy]]
                run.store.add([make_row(result, policy=run.source.name, policy_hash=run.policy_hash,
                                        suite=job.suite, task=job.task, variant=job.variant,
                                        episode_index=job.episode_index, seed=job.seed,
                                        render_mode=run.render_mode, versions=run_versions)])
                if job.video and result.frames:
                    write_episode_video(result, Path(run.out) / "videos" / job.suite / job.task / job.variant
                                        / f"ep{job.episode_index:04d}.mp4",
                                        title=f"{Path(run.source.name).name} | {job.task} | ep {job.episode_index}")
                successes += result.success
                finished += 1
                if bar is not None:
                    bar.set_postfix(task=job.task[:24], success=f"{successes}/{finished}")
                    bar.update(1)
                if lost_to_server(result.failure_reason):  # stop: every episode after it would be lost the same way
                    getattr(results, "close", lambda: None)()  # the backend's clean-up (workers, environments)
                    for other in runs:
                        other.store.write_summary(other.source.name)
                    raise MissingInputError(
                        f"{run.source.name}: stopped after {finished} of {todo} episode(s): {result.failure_reason}; "
                        "the episode is stored as lost: start the server again and rerun the same command to run "
                        "it and the rest")
    finally:
        if bar is not None:
            bar.close()
    summaries = []
    for run in runs:
        summary = run.store.write_summary(run.source.name)
        if table and not quiet:
            print(format_table(summary))
        summaries.append(summary)
    lost = [(run, len(run.planned & run.store.retry_keys())) for run in runs]
    if any(n for _, n in lost):
        raise SetupError(
            "; ".join(f"{run.source.name}: {n} episode(s) lost" for run, n in lost if n)
            + f" on {suite}: their worker died every attempt (often the machine running out of memory: Ray's memory "
            "monitor kills workers; see the Ray log above). They are left out of summary.json, not counted as "
            "failures; run fewer evaluations at once or fewer --workers and rerun the same command to run them again")
    return summaries
