"""Ray-parallel evaluation backend: the only module of the harness that imports Ray.

    from harness.evaluate import evaluate
    from harness.ray_backend import register
    backend = register(num_workers=8)                  # local Ray instance, 8 workers
    backend = register(num_workers=64, address="auto")  # or: join an existing cluster
    evaluate("expert", "simpler_google", episodes=50, out="runs/expert", backend=backend)

A :class:`RayBackend` is a backend of :mod:`harness.evaluate`: called with ``(jobs, source,
options)`` it yields ``(job, EpisodeResult)`` pairs as episodes finish, so the driver stores
each row the moment ``ray.wait`` returns it; the episodes themselves run through the plain
:func:`harness.rollout.rollout`, exactly as in the sequential backend, so the same seeds give
the same per-episode outcomes.

- Workers (:class:`EpisodeWorker`) are actors with one CPU each. Thread pools are pinned to one
  thread (``OMP/MKL/OPENBLAS_NUM_THREADS=1`` and Mesa llvmpipe's ``LP_NUM_THREADS=1`` in the
  worker's environment, and ``torch.set_num_threads(1)`` once torch is loaded). The :class:`~harness.evaluate.PolicySource`
  is put in the object store once and every worker loads it once; environments (and their
  renderers) are built inside the worker process, once per (suite, task, variant) in a row. Jobs
  are dispatched one per idle worker, preferring a job whose environment the worker already has.
- A killed worker process is restarted by Ray (``max_restarts``) and its episode retried
  (``max_task_retries``); if Ray gives up, the backend replaces the actor and resubmits the
  episode, and after ``max_attempts`` deaths on the same episode records it as a failure
  (``failure_reason`` says so) instead of crashing the sweep. If an episode reaches ``max_attempts``
  before any episode of the call has finished, the deaths are systematic (a renderer that cannot start,
  a missing library), not one bad episode: the call stops with :class:`~tasks.errors.SetupError` and
  records nothing for it, rather than storing every episode as a failure. Since at most one episode per
  worker is in flight, a killed driver loses at most ``num_workers`` unfinished episodes; the
  results store skips done keys on the rerun and stores each key once.
- :class:`PolicyServer` is a shared policy actor (meant for one GPU) that batches ``act``
  requests arriving within ``max_wait_ms`` from all workers; with ``server=ServerSpec(...)`` the
  workers talk to it through :class:`ServedPolicy` instead of loading the policy themselves.
  Its tests run on the CPU.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from harness import evaluate as _evaluate
from harness.evaluate import EnvSlot, Job, PolicySource, RunOptions, policy_sources
from harness.results import RETRY_PREFIX
from harness.rollout import EpisodeResult
from tasks.errors import SetupError, UserInputError

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "LP_NUM_THREADS": "1",
}


def init_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Start a local Ray instance (``num_cpus`` CPUs, no dashboard) or join ``address``; no-op if up."""
    if ray.is_initialized():
        return
    if address is not None:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def pin_threads() -> None:
    """One thread per worker: environment variables for native pools, and torch if it is loaded."""
    os.environ.update(THREAD_ENV)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


# ----------------------------------------------------------------------------- shared policy server
@dataclass(frozen=True)
class ServerSpec:
    """How to start the shared :class:`PolicyServer`.

    ``factory()`` runs inside the server actor and returns a batched model with
    ``act_batch(obs_list) -> list`` of actions, each ``(7,)`` or an action chunk ``(K, 7)``, and
    optionally ``last_infos: list[dict]`` (one per request) after each call. ``num_gpus``: GPUs
    reserved for the server (0 runs it on CPU). Requests that arrive within ``max_wait_ms`` of the
    first pending one are served together, at most ``max_batch`` at a time.
    """

    factory: Callable[[], Any]
    num_gpus: float = 1.0
    max_batch: int = 32
    max_wait_ms: float = 3.0

    def __post_init__(self):
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise UserInputError(
                f"ServerSpec needs max_batch >= 1 and max_wait_ms >= 0, "
                f"got max_batch={self.max_batch}, max_wait_ms={self.max_wait_ms}"
            )


class _PolicyServerImpl:
    """Body of :class:`PolicyServer` (an asyncio actor): queue requests, run them as one batch."""

    def __init__(self, spec: ServerSpec):
        if not spec.num_gpus:
            pin_threads()
        self.model = spec.factory()
        self.max_batch, self.max_wait_s = spec.max_batch, spec.max_wait_ms / 1e3
        self.pending: list[tuple[dict, asyncio.Future]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.calls = self.batches = 0

    async def act(self, obs: dict) -> tuple[np.ndarray, dict]:
        """Queue one observation; return ``(action or chunk, info)`` once its batch has run."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((obs, future))
        if len(self.pending) >= self.max_batch:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
        if self.pending:
            self.timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._flush)
        if not batch:
            return
        try:
            actions = self.model.act_batch([obs for obs, _ in batch])
            infos = list(getattr(self.model, "last_infos", None) or [{}] * len(batch))
        except Exception as exc:  # noqa: BLE001 - each waiting client re-raises it in its rollout
            for _, future in batch:
                future.set_exception(exc)
            return
        self.calls += len(batch)
        self.batches += 1
        for (_, future), action, info in zip(batch, actions, infos):
            future.set_result((np.asarray(action), dict(info, batch_size=len(batch))))

    def stats(self) -> dict[str, float]:
        """``{"calls", "batches", "mean_batch"}`` served so far."""
        return {
            "calls": self.calls,
            "batches": self.batches,
            "mean_batch": self.calls / self.batches if self.batches else 0.0,
        }


PolicyServer = ray.remote(_PolicyServerImpl)


class ServedPolicy:
    """Client side of :class:`PolicyServer`, following the policy protocol of :mod:`harness.rollout`.

    A returned chunk ``(K, 7)`` is executed open-loop: the next ``K - 1`` calls pop the queue
    without asking the server (and ``needs_obs_next`` is ``False`` while actions remain).
    """

    def __init__(self, server):
        self.server = server
        self.queue: deque[np.ndarray] = deque()
        self.last_info: dict = {}

    def reset(self) -> None:
        self.queue.clear()
        self.last_info = {}

    def act(self, obs: dict) -> np.ndarray:
        if not self.queue:
            action, info = ray.get(self.server.act.remote(obs))
            self.queue.extend(action.reshape(-1, action.shape[-1]))  # (K, 7) -> K actions
            self.last_info = info
        return self.queue.popleft()

    def needs_obs_next(self) -> bool:
        return not self.queue


# ----------------------------------------------------------------------------- episode workers
class _EpisodeWorkerImpl:
    """Body of :class:`EpisodeWorker`: holds one environment and the policy, runs episodes."""

    def __init__(
        self, source: PolicySource, options: RunOptions, worker_setup: Callable[[], None] | None, server=None
    ):
        pin_threads()
        if worker_setup is not None:
            worker_setup()
        pin_threads()  # again: the source or the set-up may have imported torch
        builders = [s.build for s in policy_sources(source)]
        self.slot = EnvSlot((lambda env: ServedPolicy(server)) if server is not None else builders, options)

    def run(self, job: Job) -> tuple[Job, EpisodeResult]:
        """Run one episode (building the environment first if the job needs another one)."""
        return job, self.slot.run(job)

    def switch(self, source: PolicySource | list[PolicySource], options: RunOptions) -> None:
        """Run ``source``'s policies from the next job on, keeping the environment where it still serves."""
        self.slot.switch([s.build for s in policy_sources(source)], options)

    def pid(self) -> int:
        """The worker's process id (tests kill it)."""
        return os.getpid()


EpisodeWorker = ray.remote(num_cpus=1)(_EpisodeWorkerImpl)


#: what ends an episode because its worker process went away rather than because the episode failed: the actor
#: died (``RayActorError``), Ray's memory monitor killed it (``OutOfMemoryError``, not a ``RayActorError``) or
#: its process crashed (``WorkerCrashedError``). Each is retried on a fresh worker like a killed one.
WORKER_LOST = (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError, ray.exceptions.WorkerCrashedError)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _died(job: Job, attempts: int, exc: Exception) -> EpisodeResult:
    reason = f"{RETRY_PREFIX} {attempts} time(s) running this episode (last: {type(exc).__name__}: {_first_line(exc)})"
    return EpisodeResult(success=False, steps=0, wall_s=0.0, policy_calls=0, failure_reason=reason)


def _systematic(job: Job, attempts: int, exc: Exception) -> str:
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return (
            f"Ray's memory monitor killed the workers before any episode finished ({job.suite}/{job.task} episode "
            f"{job.episode_index}: {attempts} attempt(s)): the machine ran out of memory; nothing was stored for "
            f"these episodes. Run fewer evaluations at once, or fewer workers (--workers), and rerun the same command"
        )
    return (
        f"the Ray workers died before any episode finished ({job.suite}/{job.task} episode {job.episode_index}: "
        f"{attempts} attempt(s), last: {type(exc).__name__}: {_first_line(exc)}); nothing was stored for these episodes. The workers' own "
        f"errors are in the Ray session's logs (a local instance: /tmp/ray/session_latest/logs/worker-*.err). "
        f"Common causes: MuJoCo rendering without a display (export MUJOCO_GL=egl), a worker out of memory; "
        f"`actdistill doctor` checks rendering in a Ray worker. Rerun the same command once fixed"
    )


class RayBackend:
    """An :mod:`harness.evaluate` backend running episodes on ``num_workers`` Ray actors.

    ``num_workers``: default the CPUs of the Ray instance. ``address``: join that cluster
    (``"auto"`` or ``host:port``) instead of starting a local instance with ``num_cpus`` CPUs
    (default ``num_workers``). ``worker_setup``: a picklable function each worker calls before
    anything else (e.g. to register a test suite). ``runtime_env``: extra Ray runtime environment
    for the workers (e.g. ``{"env_vars": {"PYTHONPATH": ...}}``). ``max_restarts`` /
    ``max_task_retries``: Ray's own restart and retry of a worker killed mid-episode;
    ``max_attempts``: deaths on one episode before it is recorded as a failure. ``server``: run
    the policy in one shared batching :class:`PolicyServer` instead of in each worker.
    ``keep_workers``: keep the actors between calls (a sweep evaluates many policies: each call then skips the
    workers' start-up, imports and, where a worker's environment serves the next policy too, its build); the
    next call's policy replaces the last one in every worker. Not with ``server``. :meth:`close` ends them.
    Kept actors are never restarted by Ray (that would bring back the policy they started with): a killed one
    is replaced by the backend, which runs its episode again (``max_attempts``).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        worker_setup: Callable[[], None] | None = None,
        runtime_env: dict | None = None,
        max_restarts: int = 2,
        max_task_retries: int = 2,
        max_attempts: int = 3,
        server: ServerSpec | None = None,
        keep_workers: bool = False,
    ):
        if num_workers is not None and num_workers < 1:
            raise UserInputError(f"num_workers must be >= 1 (or None for all CPUs), got {num_workers}")
        if max_attempts < 1:
            raise UserInputError(f"max_attempts must be >= 1, got {max_attempts}")
        self.num_workers, self.address, self.num_cpus = num_workers, address, num_cpus
        self.worker_setup, self.max_attempts, self.server = worker_setup, max_attempts, server
        env = dict(runtime_env or {})
        env["env_vars"] = {**THREAD_ENV, **env.get("env_vars", {})}
        self.actor_options = {
            "max_restarts": max_restarts,
            "max_task_retries": max_task_retries,
            "runtime_env": env,
        }
        self.last_server_stats: dict[str, float] | None = None
        self.keep_workers = keep_workers and server is None
        self._pool: list = []  # kept actors (keep_workers)
        self._pool_env: dict[int, tuple] = {}  # the environment each kept actor holds
        self.started = 0  # actors started over the backend's life (tests read it)

    def close(self) -> None:
        """End the kept workers (keep_workers); a later call starts new ones."""
        for worker in self._pool:
            ray.kill(worker, no_restart=True)
        self._pool, self._pool_env = [], {}

    def _workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        return max(1, int(ray.cluster_resources().get("CPU", 1)) - (self.server is not None))

    def __call__(
        self, jobs: list[Job], source: PolicySource | list[PolicySource], options: RunOptions
    ) -> Iterator[tuple[Job, EpisodeResult]]:
        """Yield ``(job, EpisodeResult)`` for every job, in the order they finish. ``source``: one policy, or
        several that ``Job.policy`` indexes (each worker holds them all; not with a shared server)."""
        if not jobs:
            return
        n_sources = len(policy_sources(source))
        if self.server is not None and n_sources > 1:
            raise UserInputError(f"a RayBackend with a shared policy server runs one policy per call, got "
                                 f"{n_sources}; evaluate them one at a time")
        init_ray(num_cpus=self.num_cpus or self.num_workers, address=self.address)
        server = None
        if self.server is not None:
            server = PolicyServer.options(
                num_gpus=self.server.num_gpus,
                num_cpus=0,
                max_concurrency=1000,
                runtime_env=self.actor_options["runtime_env"],
            ).remote(self.server)
        source_ref = ray.put(source)
        setup_ref = ray.put(self.worker_setup)
        count = min(self._workers(), len(jobs))

        actor_options = self.actor_options
        if self.keep_workers:  # Ray would restart a kept actor with the policy it was started with: never let it
            actor_options = {**actor_options, "max_restarts": 0, "max_task_retries": 0}

        def spawn():
            self.started += 1
            return EpisodeWorker.options(**actor_options).remote(source_ref, options, setup_ref, server)

        kept = self._pool if self.keep_workers else []
        self._pool, last_env = [], {}
        for slot, worker in enumerate(kept[:count]):
            worker.switch.remote(source_ref, options)  # runs before the worker's next episode (actor order)
            if slot in self._pool_env:
                last_env[slot] = self._pool_env[slot]
        for worker in kept[count:]:
            ray.kill(worker, no_restart=True)
        workers = kept[:count] + [spawn() for _ in range(count - len(kept[:count]))]
        pending = deque(jobs)
        attempts: dict[Job, int] = {}
        in_flight: dict[ray.ObjectRef, tuple[int, Job]] = {}
        finished = 0

        def env_of(job: Job) -> tuple:
            return job.suite, job.task, job.variant, job.seed

        def submit(slot: int) -> None:
            # the worker's own environment first; else one no other worker holds (so that two workers do not
            # build the same scene side by side), else the next job
            want = last_env.get(slot)
            held = {env for other, env in last_env.items() if other != slot}
            job = next((j for j in pending if env_of(j) == want), None)
            if job is None:
                job = next((j for j in pending if env_of(j) not in held), pending[0])
            pending.remove(job)
            last_env[slot] = env_of(job)
            in_flight[workers[slot].run.remote(job)] = (slot, job)

        try:
            for slot in range(count):
                if pending:
                    submit(slot)
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                slot, job = in_flight.pop(ready[0])
                done = None
                try:
                    done = ray.get(ready[0])
                except WORKER_LOST as exc:
                    attempts[job] = attempts.get(job, 0) + 1
                    ray.kill(workers[slot], no_restart=True)
                    workers[slot] = spawn()
                    last_env.pop(slot, None)
                    if attempts[job] >= self.max_attempts and not finished:
                        raise SetupError(_systematic(job, attempts[job], exc)) from None
                    if attempts[job] >= self.max_attempts:
                        done = job, _died(job, attempts[job], exc)
                    else:
                        pending.appendleft(job)
                else:
                    finished += 1
                # the worker's next episode first, then the result: it runs while the caller stores this one
                if pending:
                    submit(slot)
                if done is not None:
                    yield done
        finally:
            if server is not None:
                try:
                    self.last_server_stats = ray.get(server.stats.remote())
                except ray.exceptions.RayError:
                    self.last_server_stats = None
            if self.keep_workers and not in_flight:  # a finished call: the workers wait for the next one
                self._pool, self._pool_env = workers, dict(last_env)
            else:  # stopped early (episodes still running) or not kept: end them
                for worker in workers:
                    ray.kill(worker, no_restart=True)
            if server is not None:
                ray.kill(server, no_restart=True)


def register(num_workers: int | None = None, *, address: str | None = None, **kwargs) -> str:
    """Register ``RayBackend(num_workers, address=address, **kwargs)`` in
    :data:`harness.evaluate.BACKENDS` under ``"ray"`` and return that name (for ``evaluate(backend=...)``)."""
    _evaluate.BACKENDS["ray"] = RayBackend(num_workers, address=address, **kwargs)
    return "ray"
