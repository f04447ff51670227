"""The Ray backend against the sequential one on the fake suite: parity, resume, killed workers,
a killed driver, failures, and the batching policy server (on CPU: no GPU here).

One Ray instance (2 CPUs) serves the whole module; workers find this module and ``fake_env``
through ``PYTHONPATH`` and register the fake suite with :func:`register_fake`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
from fake_env import FakeExpert, register

from harness.bench_scaling import _counts, scaling
from harness.evaluate import BACKENDS, Job, PolicySource, RunOptions, evaluate
from harness.ray_backend import RayBackend, ServedPolicy, ServerSpec
from harness.ray_backend import register as register_ray

TESTS = str(Path(__file__).resolve().parent)
ROOT = str(Path(__file__).resolve().parents[1])
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": os.pathsep.join([TESTS, ROOT])}}
COMPARED = ["success", "steps", "failure_reason", "seed", "policy_calls"]


def register_fake() -> None:
    """Worker set-up: make the task registry serve only the fake suite (as ``register`` does)."""
    from tasks import registry

    registry._FAMILIES = {"fake": "fake_env"}
    registry._suite_list = lambda: ("fake_basic",)


def backend(**kw) -> RayBackend:
    return RayBackend(2, worker_setup=register_fake, runtime_env=RUNTIME_ENV, **kw)


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def fake(monkeypatch, ray_instance):
    return register(monkeypatch)


def run(suite, out, policy="expert", *, ray_backend=None, monkeypatch=None, **kw) -> pd.DataFrame:
    name = "sequential"
    if ray_backend is not None:
        monkeypatch.setitem(BACKENDS, "ray", ray_backend)
        name = "ray"
    evaluate(policy, suite, out=out, backend=name, progress=False, quiet=True, **kw)
    return pd.read_parquet(Path(out) / "episodes.parquet").set_index("key").sort_index()


class NaNPolicy(FakeExpert):
    def act(self, obs):
        return np.full(7, np.nan)


class KillOncePolicy(FakeExpert):
    """The expert, except that the process dies at its 2nd reset the first time any worker gets there."""

    def __init__(self, env, marker: str):
        super().__init__(env)
        self.marker, self.resets = marker, 0

    def reset(self):
        self.resets += 1
        if self.resets == 2:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
            os._exit(1)


class KillAlwaysPolicy(FakeExpert):
    """The expert, except that the process dies on every episode of the ``unreachable`` task."""

    def reset(self):
        if self.env.task == "unreachable":
            os._exit(1)


class SlowExpert(FakeExpert):
    def act(self, obs):
        time.sleep(0.03)
        return super().act(obs)


def source(name: str, cls) -> PolicySource:
    return PolicySource(name, build=cls, hash_for=lambda env: "h-" + name)


def expert_or_nan(env):
    """The expert, except on ``reach_early`` where the policy returns NaN actions."""
    return NaNPolicy(env) if env.task == "reach_early" else FakeExpert(env)


def test_ray_matches_sequential_resumes_and_records_failures(fake, tmp_path, monkeypatch):
    mixed = PolicySource("mixed", build=expert_or_nan, hash_for=lambda env: "h-mixed")
    kw = {"tasks": ["reach", "reach_early", "unreachable", "crash"], "variant": "all", "episodes": 2}
    seq = run(fake, tmp_path / "seq", mixed, **kw)
    par = run(fake, tmp_path / "ray", mixed, ray_backend=backend(), monkeypatch=monkeypatch, **kw)
    assert len(par) == 4 * 2 * 2 and list(par.index) == list(seq.index)
    pd.testing.assert_frame_equal(par[COMPARED], seq[COMPARED])
    # a raising env and a NaN policy are recorded failures, never successes
    assert par.loc[par["task"] == "crash", "failure_reason"].str.contains("simulated physics").all()
    nan = par[par["task"] == "reach_early"]
    assert (~nan["success"]).all() and nan["failure_reason"].str.contains("non-finite").all()
    assert par.loc[par["task"] == "reach", "success"].all()

    # resume: more episodes run only the missing ones; stored rows stay as they were
    before = par["finished_at"]
    kw["episodes"] = 3
    par2 = run(fake, tmp_path / "ray", mixed, ray_backend=backend(), monkeypatch=monkeypatch, **kw)
    assert len(par2) == 4 * 2 * 3 and par2.index.is_unique
    assert (par2.loc[before.index, "finished_at"] == before).all()
    seq2 = run(fake, tmp_path / "seq", mixed, **kw)
    pd.testing.assert_frame_equal(par2[COMPARED], seq2[COMPARED])


@pytest.mark.parametrize("retries", [2, 0], ids=["ray-retries", "backend-resubmits"])
def test_killed_worker_episode_is_retried_and_stored_once(fake, tmp_path, monkeypatch, retries):
    marker = str(tmp_path / "killed")
    kw = {"tasks": ["reach", "unreachable"], "episodes": 3}
    out = tmp_path / "run"
    kill_once = PolicySource(
        "kill", build=lambda env: KillOncePolicy(env, marker), hash_for=lambda env: "h-kill"
    )
    par = run(
        fake,
        out,
        kill_once,
        ray_backend=backend(max_restarts=retries, max_task_retries=retries),
        monkeypatch=monkeypatch,
        **kw,
    )
    assert Path(marker).exists()  # a worker really died
    seq = run(fake, tmp_path / "seq", source("kill", FakeExpert), **kw)
    assert len(par) == 6 and par.index.is_unique and list(par.index) == list(seq.index)
    pd.testing.assert_frame_equal(par[COMPARED], seq[COMPARED])
    assert not list(out.glob(".*.tmp"))


def test_episode_that_always_kills_its_worker_is_stored_as_lost_and_the_run_fails_loudly(fake, tmp_path, monkeypatch):
    from tasks.errors import SetupError

    with pytest.raises(SetupError, match=r"killer: 2 episode\(s\) lost on fake_basic.*not counted as failures"):
        run(fake, tmp_path, source("killer", KillAlwaysPolicy),
            ray_backend=backend(max_restarts=0, max_task_retries=0, max_attempts=2), monkeypatch=monkeypatch,
            tasks=["reach", "unreachable"], episodes=2)
    par = pd.read_parquet(tmp_path / "episodes.parquet").set_index("key").sort_index()
    assert len(par) == 4
    dead = par[par["task"] == "unreachable"]
    assert (~dead["success"]).all() and dead["failure_reason"].str.contains("worker died 2 time").all()
    assert par.loc[par["task"] == "reach", "success"].all()
    # the summary counts only the episodes the policy finished: 2 of 2, with 2 lost beside them
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["overall"]["n"] == 2 and summary["overall"]["successes"] == 2 and summary["lost"] == 2
    assert "fake_basic/unreachable" not in summary["per_task"]

    # a rerun runs the lost episodes again (same policy name and hash, now healthy) and replaces their rows
    again = run(fake, tmp_path, source("killer", FakeExpert), ray_backend=backend(), monkeypatch=monkeypatch,
                tasks=["reach", "unreachable"], episodes=2)
    assert len(again) == 4 and again.index.is_unique
    assert again["failure_reason"].isna().all()
    assert again.loc[par.index[par["task"] == "reach"], "finished_at"].equals(
        par.loc[par["task"] == "reach", "finished_at"])  # finished episodes were not run again


def test_worker_killed_for_memory_is_retried_like_a_killed_one(fake, tmp_path, monkeypatch):
    """Ray's memory monitor ends an actor task with ``OutOfMemoryError``, which is no ``RayActorError``: the
    episode runs again on a fresh worker (as a killed worker's does), and only every attempt failing stops the run
    with a message about memory."""
    import harness.ray_backend as rb

    real_get, calls = ray.get, []

    def get_once_oom(refs, *a, **k):  # the first episode result the driver collects "was killed for memory"
        calls.append(1)
        if len(calls) == 1:
            raise ray.exceptions.OutOfMemoryError("1 worker(s) were killed due to the node running low on memory")
        return real_get(refs, *a, **k)

    monkeypatch.setattr(rb.ray, "get", get_once_oom)
    kw = {"tasks": ["reach", "unreachable"], "episodes": 2}
    par = run(fake, tmp_path / "run", source("oom", FakeExpert), ray_backend=backend(), monkeypatch=monkeypatch,
              **kw)
    monkeypatch.setattr(rb.ray, "get", real_get)
    seq = run(fake, tmp_path / "seq", source("oom", FakeExpert), **kw)
    assert len(par) == 4 and list(par.index) == list(seq.index)
    pd.testing.assert_frame_equal(par[COMPARED], seq[COMPARED])
    assert len(calls) == 5  # 4 episodes + the one collected again

    def always_oom(refs, *a, **k):
        raise ray.exceptions.OutOfMemoryError("1 worker(s) were killed due to the node running low on memory")

    monkeypatch.setattr(rb.ray, "get", always_oom)
    from tasks.errors import SetupError

    try:
        with pytest.raises(SetupError, match=r"memory monitor killed the workers .*ran out of memory.*--workers"):
            run(fake, tmp_path / "doomed", source("oom2", FakeExpert),
                ray_backend=backend(max_attempts=2), monkeypatch=monkeypatch, **kw)
    finally:
        monkeypatch.setattr(rb.ray, "get", real_get)


class KillEveryPolicy(FakeExpert):
    """A worker that cannot run any episode (as when MuJoCo cannot render): the process dies at every reset."""

    def reset(self):
        os._exit(1)


def test_workers_dying_before_any_episode_finishes_stop_the_run_and_store_nothing(fake, tmp_path, monkeypatch):
    from tasks.errors import SetupError

    out = tmp_path / "run"
    with pytest.raises(SetupError, match=r"died before any episode finished .*MUJOCO_GL=egl"):
        run(fake, out, source("doomed", KillEveryPolicy),
            ray_backend=backend(max_restarts=0, max_task_retries=0, max_attempts=2), monkeypatch=monkeypatch,
            tasks=["reach", "unreachable"], episodes=2)
    from harness.results import has_results

    assert not has_results(out)  # no episode stored as a failure of the policy


DRIVER = textwrap.dedent("""
    import sys
    from fake_env import register as _unused  # noqa: F401  (import check)
    import test_ray_backend as t
    from harness.evaluate import BACKENDS, evaluate
    from harness.ray_backend import RayBackend

    t.register_fake()
    BACKENDS["ray"] = RayBackend(2, address=sys.argv[1], worker_setup=t.register_fake,
                                 runtime_env=t.RUNTIME_ENV)
    evaluate(t.source("slow", t.SlowExpert), "fake_basic", tasks=["reach", "unreachable"], variant="all",
             episodes=4, out=sys.argv[2], backend="ray", progress=False, quiet=True)
""")


def test_killed_driver_loses_only_in_flight_episodes_and_rerun_completes(
    fake, ray_instance, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=RUNTIME_ENV["env_vars"]["PYTHONPATH"])
    proc = subprocess.Popen(
        [sys.executable, str(script), ray_instance, str(out)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    from harness.results import has_results, read_episodes

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if has_results(out) and len(read_episodes(out)) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"driver ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_episodes(out)  # the files a killed driver leaves are complete and readable
    assert 3 <= len(partial) < 16 and partial["key"].is_unique

    full = run(
        fake,
        out,
        source("slow", SlowExpert),
        ray_backend=backend(),
        monkeypatch=monkeypatch,
        tasks=["reach", "unreachable"],
        variant="all",
        episodes=4,
    )
    assert len(full) == 16 and full.index.is_unique
    kept = partial.set_index("key")["finished_at"]
    assert (full.loc[kept.index, "finished_at"] == kept).all()  # nothing stored twice or rewritten
    assert full.loc[full["task"] == "reach", "success"].all()


class ToyBatchModel:
    """A batched model: a 3-step chunk moving proportionally toward the origin; counts batches."""

    def __init__(self):
        self.last_infos: list[dict] = []

    def act_batch(self, obs_list):
        out = []
        for obs in obs_list:
            chunk = np.zeros((3, 7), np.float32)  # (K, 7)
            chunk[:, :2] = -np.clip(obs["proprio"][:2] / 0.2, -1, 1)
            out.append(chunk)
        self.last_infos = [{"flops": 10.0} for _ in obs_list]
        return out


class LocalBatched(ServedPolicy):
    """The same chunking client, calling the model in-process (the sequential reference)."""

    def __init__(self, env):
        super().__init__(server=None)
        self.model = ToyBatchModel()

    def act(self, obs):
        if not self.queue:
            self.queue.extend(self.model.act_batch([obs])[0])
            self.last_info = {"flops": 10.0}
        return self.queue.popleft()


def test_policy_server_batches_and_matches_local_model(fake, tmp_path, monkeypatch):
    kw = {"tasks": ["reach", "unreachable"], "variant": "all", "episodes": 2}
    seq = run(fake, tmp_path / "seq", source("toy", LocalBatched), **kw)
    served = backend(server=ServerSpec(ToyBatchModel, num_gpus=0, max_batch=4, max_wait_ms=5.0))
    par = run(
        fake, tmp_path / "ray", source("toy", LocalBatched), ray_backend=served, monkeypatch=monkeypatch, **kw
    )
    pd.testing.assert_frame_equal(par[COMPARED], seq[COMPARED])
    stats = served.last_server_stats
    assert stats["calls"] == int(np.ceil(par["steps"] / 3).sum())  # one server call per 3-step chunk
    assert 1 <= stats["batches"] <= stats["calls"]
    assert '"batch_size"' in par["info"].iloc[0]


def test_register_puts_a_configured_backend_in_the_registry(monkeypatch):
    import harness.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "BACKENDS", dict(BACKENDS))
    assert register_ray(3, address="auto", max_attempts=5) == "ray"
    registered = evaluate_module.BACKENDS["ray"]
    assert isinstance(registered, RayBackend) and (registered.num_workers, registered.address) == (3, "auto")
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        RayBackend(0)


def test_bench_scaling_prints_a_line_per_worker_count_and_a_summary(fake):
    lines = []
    summary = scaling(
        fake,
        [1, 2],
        episodes=2,
        tasks=["reach", "unreachable"],
        emit=lines.append,
        backend_kwargs={"worker_setup": register_fake, "runtime_env": RUNTIME_ENV},
    )
    rows = [json.loads(line) for line in lines]
    assert [r.get("workers") for r in rows[:2]] == [1, 2] and rows[2]["summary"]
    assert all(r["episodes"] == 4 and r["episodes_per_min"] > 0 for r in rows[:2])
    assert rows[0]["speedup"] == 1.0 and rows[1]["efficiency"] == pytest.approx(
        rows[1]["speedup"] / 2, abs=1e-3
    )
    assert summary["outcomes_match"] and set(summary["scaling_efficiency"]) == {1, 2}
    with pytest.raises(ValueError, match="positive integers, got '0,2'"):
        _counts("0,2")


def test_kept_workers_run_each_calls_policy_and_start_once(fake, tmp_path, monkeypatch):
    """keep_workers: the second and third policies run on the same two actors (started once), each call on its own
    policy (a NaN policy after the expert fails every episode); a worker killed under a kept pool is replaced with
    the current policy, never the one it started with."""
    kept = backend(keep_workers=True)
    kw = {"tasks": ["reach", "unreachable"], "episodes": 3}
    try:
        first = run(fake, tmp_path / "a", source("expert", FakeExpert), ray_backend=kept, monkeypatch=monkeypatch,
                    **kw)
        assert kept.started == 2 and len(kept._pool) == 2
        nan = run(fake, tmp_path / "b", source("nan", NaNPolicy), ray_backend=kept, monkeypatch=monkeypatch, **kw)
        assert kept.started == 2  # the same actors, now running the NaN policy
        assert first.loc[first["task"] == "reach", "success"].all() and not nan["success"].any()
        assert nan["failure_reason"].notna().all()
        marker = str(tmp_path / "killed")
        kill_once = PolicySource("kill", build=lambda env: KillOncePolicy(env, marker), hash_for=lambda env: "h-kill")
        par = run(fake, tmp_path / "c", kill_once, ray_backend=kept, monkeypatch=monkeypatch, **kw)
        assert Path(marker).exists() and kept.started == 3  # one actor died and was replaced
        seq = run(fake, tmp_path / "seq", source("kill", FakeExpert), **kw)
        pd.testing.assert_frame_equal(par[COMPARED], seq[COMPARED])  # nothing ran the NaN policy again
    finally:
        kept.close()
    assert kept._pool == []


def test_several_policies_in_one_call_match_their_sequential_runs(fake, tmp_path, monkeypatch):
    """evaluate_policies on kept Ray workers: each policy's rows equal its own sequential run's, and a backend
    with a shared policy server refuses more than one policy by name."""
    from harness.evaluate import evaluate_policies

    kept = backend(keep_workers=True)
    monkeypatch.setitem(BACKENDS, "ray", kept)
    kw = {"tasks": ["reach", "reach_early", "unreachable"], "variant": "all", "episodes": 2}
    policies = [(source("expert", FakeExpert), tmp_path / "expert"), (source("nan", NaNPolicy), tmp_path / "nan")]
    try:
        evaluate_policies(policies, fake, backend="ray", progress=False, quiet=True, **kw)
    finally:
        kept.close()
    for (policy, out) in policies:
        par = pd.read_parquet(out / "episodes.parquet").set_index("key").sort_index()
        seq = run(fake, tmp_path / f"seq-{policy.name}", policy, **kw)
        assert len(par) == 3 * 2 * 2
        pd.testing.assert_frame_equal(par[COMPARED], seq[COMPARED])
    served = RayBackend(2, server=ServerSpec(factory=lambda: None, num_gpus=0))
    with pytest.raises(ValueError, match="one policy per call, got 2"):
        next(served([Job(fake, "reach", "base", 0, 0)], [p for p, _ in policies], RunOptions()))
