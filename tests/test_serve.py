"""openpi's websocket protocol both ways: ``actdistill serve`` and ``actdistill eval --policy ws://...``.

Every test talks to a real server on 127.0.0.1 (a free port): our own, in a thread of this process or as an
``actdistill serve`` subprocess that is killed mid-evaluation.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_env import register

import tasks
from harness.evaluate import PolicySource, evaluate, policy_source
from harness.results import ResultsStore
from harness.serving import wire
from harness.serving.client import ServerLink, WebsocketClientPolicy
from harness.serving.obs_map import ObsMap, load_obs_map, resize_with_pad
from harness.serving.server import WebsocketPolicyServer, describe
from tasks.errors import MissingInputError, UserInputError

ROOT = Path(__file__).resolve().parents[1]
TEACHER = str(ROOT / "results" / "checkpoints" / "teacher-simpler")
SUITE, TASK = "simpler_widowx", "put_carrot_on_plate"
TIMING_KEYS = {"model_ms", "roundtrip_ms", "server_ms", "network_ms"}


@pytest.fixture(scope="module")
def teacher():
    """``(source, policy, metadata)`` of the committed teacher, loaded once."""
    source = policy_source(TEACHER)
    policy = source.build(None)
    return source, policy, describe(source.name, source.meta, source.hash_for(None), policy)


@pytest.fixture(scope="module")
def served(teacher):
    """The teacher served in a thread of this process."""
    _, policy, metadata = teacher
    server = WebsocketPolicyServer(lambda: policy, metadata, port=0).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def observations():
    """Three real observations: the first of episodes 0 and 1, and episode 0 after 5 steps."""
    env = tasks.make(SUITE, TASK)
    try:
        first = [env.reset(seed=0, options={"episode_index": i})[0] for i in (1, 0)]
        obs = first[-1]
        for _ in range(5):
            obs, *_ = env.step(np.array([0.5, 0.0, -0.5, 0.0, 0.0, 0.0, 1.0]))
        return [*first, obs]
    finally:
        env.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_round_trip_gives_exactly_the_in_process_actions(teacher, served, observations):
    _, policy, metadata = teacher
    client = policy_source(served.url).build(None)
    chunk = metadata["chunk"]
    assert chunk == policy.model.config.chunk and metadata["layers"] == policy.model.num_layers
    for obs in observations:
        policy.reset()
        client.reset()
        local, remote = [], []
        for _ in range(chunk + 1):  # one whole chunk and the first action of the next request
            local.append((policy.act(obs), policy.needs_obs_next()))
            remote.append((client.act(obs), client.needs_obs_next()))
        for (a, need_a), (b, need_b) in zip(local, remote):
            assert a.dtype == b.dtype and np.array_equal(a, b) and need_a == need_b
        info = client.last_info
        assert TIMING_KEYS <= set(info) and info["network_ms"] == pytest.approx(info["roundtrip_ms"] - info["server_ms"])
        assert {k: v for k, v in info.items() if k not in TIMING_KEYS} == \
            {k: v for k, v in policy.last_info.items() if k not in TIMING_KEYS}  # layers and FLOPs come along


def test_served_source_describes_the_policy_and_travels_to_ray_workers(teacher, served, observations):
    ws = policy_source(served.url)
    assert ws.meta["kind"] == "teacher" and ws.meta["latency_includes_network"] is True
    assert ws.meta["server_policy"] == TEACHER and ws.hash_for(None).startswith("ws-")
    assert policy_source(served.url).hash_for(None) == ws.hash_for(None)  # the same server, the same identity
    from ray import cloudpickle  # what the Ray backend pickles a PolicySource with

    client = ws.build(None)
    client.reset()
    copy = cloudpickle.loads(cloudpickle.dumps(ws)).build(None)  # a worker's copy opens its own connection
    assert not copy.link.is_open and copy.link is not client.link
    copy.reset()
    assert copy.link.is_open and np.array_equal(copy.act(observations[0]), client.act(observations[0]))
    with pytest.raises(UserInputError, match="expects observation entries"):
        policy_source(served.url, obs_map="openpi-libero")  # our server wants our keys: caught before episodes


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")  # theirs
def test_openpi_client_drives_our_server(served, teacher, observations):
    try:
        from openpi_client import image_tools, msgpack_numpy
        from openpi_client.websocket_client_policy import WebsocketClientPolicy as OpenpiClient
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("openpi-client is not installed; .ci/run installs it with pip install --no-deps openpi-client")
        pytest.skip("openpi-client is not installed (pip install --no-deps openpi-client)")
    _, policy, metadata = teacher
    sample = {"image": observations[0]["agentview"], "state": np.arange(8, dtype=np.float32), "n": np.int64(3),
              "prompt": "put carrot on plate", "nested": {"x": np.zeros((2, 3), np.float16)}}
    for packed in (wire.pack(sample), msgpack_numpy.packb(sample)):  # the same bytes mean the same thing
        for unpacked in (wire.unpack(packed), msgpack_numpy.unpackb(packed)):
            assert np.array_equal(unpacked["image"], sample["image"]) and unpacked["prompt"] == sample["prompt"]
            assert unpacked["state"].dtype == np.float32 and unpacked["nested"]["x"].dtype == np.float16
            assert unpacked["n"] == 3 and isinstance(unpacked["n"], np.int64)
    assert wire.pack(sample) == msgpack_numpy.packb(sample)
    image = observations[0]["wrist"][:, 16:]  # not square: padding matters
    assert np.array_equal(resize_with_pad(image, 224, 224), image_tools.resize_with_pad(image, 224, 224))

    client = OpenpiClient(host="127.0.0.1", port=served.port)
    assert client.get_server_metadata() == metadata | {"accepts_reset": True}
    for obs in observations:
        reply = client.infer({key: obs[key] for key in ("agentview", "wrist", "proprio", "instruction")})
        assert np.array_equal(reply["actions"], policy.predict([obs])[0]) and reply["server_timing"]["infer_ms"] > 0


def test_no_server_is_a_clear_error_before_any_episode(tmp_path, capsys):
    from harness.cli import main

    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(MissingInputError, match=r"no policy server answers there .*actdistill serve"):
        policy_source(url)
    out = tmp_path / "run"
    assert main(["eval", "--policy", url, "--suite", SUITE, "--tasks", "0", "--episodes", "1", "--out", str(out),
                 "--no-progress"]) == 2
    assert f"--policy {url}: no policy server answers there" in capsys.readouterr().err
    assert not out.exists()  # not one episode started
    with pytest.raises(UserInputError, match="expected ws://HOST:PORT"):
        policy_source("ws://127.0.0.1")
    with pytest.raises(UserInputError, match="--obs-map applies to policies served at ws://"):
        policy_source(TEACHER, obs_map="openpi-libero")


def start_serve(port: int = 0) -> tuple[subprocess.Popen, str]:
    """``actdistill serve`` of the teacher in a subprocess; returns it and the URL it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "--policy", TEACHER, "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 180)
    line = proc.stdout.readline() if ready else ""
    if "listening on ws://" not in line:
        proc.kill()
        raise AssertionError(f"actdistill serve did not start: {line!r}")
    return proc, line.split("listening on ")[1].split(";")[0]


class KillServerAt:
    """A policy that kills the server process just before its ``at``-th ``act`` call (0-based, over episodes)."""

    def __init__(self, inner: WebsocketClientPolicy, proc: subprocess.Popen, at: int):
        self.inner, self.proc, self.at, self.calls = inner, proc, at, 0

    def reset(self) -> None:
        self.inner.reset()

    def act(self, obs):
        if self.calls == self.at:
            self.proc.kill()
            self.proc.wait()
        self.calls += 1
        return self.inner.act(obs)

    def needs_obs_next(self) -> bool:
        return self.inner.needs_obs_next()

    @property
    def last_info(self):
        return self.inner.last_info


def test_server_killed_mid_eval_then_rerun_finishes_the_rest_exactly_once(teacher, tmp_path, capsys):
    source = teacher[0]
    out, steps = tmp_path / "run", 12  # chunk 8: each episode asks at its steps 0 and 8
    run = {"tasks": [TASK], "episodes": 3, "max_steps": steps, "out": out, "videos": 0, "progress": False,
           "table": False}
    proc, url = start_serve()
    try:
        ws = policy_source(url)
        killing = PolicySource(ws.name, build=lambda env: KillServerAt(ws.build(env), proc, at=steps + 8),
                               hash_for=ws.hash_for, meta=ws.meta)
        with pytest.raises(MissingInputError, match=r"stopped after 2 of 3 episode\(s\).*policy server lost.*rerun"):
            evaluate(killing, SUITE, **run)
    finally:
        proc.kill()
        proc.wait()
    store = ResultsStore(out)
    df = store.frame().set_index("episode_index")
    assert sorted(df.index) == [0, 1] and pd.isna(df.loc[0, "failure_reason"])
    assert "policy server lost" in df.loc[1, "failure_reason"] and "connection closed" in df.loc[1, "failure_reason"]
    assert not df.loc[1, "success"] and df.loc[1, "steps"] == 8  # the episode in flight ended failed
    assert store.retry_keys() == {df.loc[1, "key"]}

    proc, url2 = start_serve(int(url.rsplit(":", 1)[1]))  # the server is back, same address
    try:
        assert url2 == url
        capsys.readouterr()
        evaluate(policy_source(url), SUITE, **run)
        assert "1 already done, 2 to run (1 of them again" in capsys.readouterr().out
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops it cleanly
        assert proc.wait(timeout=120) == 0 and "[serve] stopped" in proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
    df = ResultsStore(out).frame()
    assert len(df) == 3 and df["key"].is_unique and df["failure_reason"].isna().all()
    assert json.loads((out / "summary.json").read_text())["overall"]["n"] == 3
    direct = evaluate(source, SUITE, **{**run, "out": tmp_path / "direct"})  # the checkpoint in this process
    here = ResultsStore(tmp_path / "direct").frame().set_index("episode_index").sort_index()
    there = df.set_index("episode_index").sort_index()
    assert direct["overall"]["n"] == 3
    assert there["success"].tolist() == here["success"].tolist() and there["steps"].tolist() == [steps] * 3
    flops = [json.loads(i)["flops"]["sum"] for i in there["info"]]
    assert flops == [json.loads(i)["flops"]["sum"] for i in here["info"]]


class BadPolicy:
    """Served by a live server: actions that are fine for two calls, then ``kind`` (nan, shape, raise)."""

    def __init__(self, kind: str):
        self.kind, self.calls = kind, 0

    def reset(self) -> None:
        self.calls = 0

    def act(self, obs) -> np.ndarray:
        self.calls += 1
        action = np.zeros(7, np.float32)
        if self.calls <= 2:
            return action
        if self.kind == "nan":
            action[3] = np.nan
            return action
        if self.kind == "shape":
            return action[:5]
        raise RuntimeError("boom in the served policy")


@pytest.mark.parametrize("kind, needle", [
    ("nan", "policy returned a non-finite action"),
    ("shape", "policy server returned actions of shape (1, 5): 5 dims per step, expected 7"),
    ("raise", "RuntimeError: boom in the served policy"),
])
def test_bad_actions_from_a_live_server_are_recorded_failures(monkeypatch, tmp_path, capsys, kind, needle):
    suite = register(monkeypatch)
    server = WebsocketPolicyServer(lambda: BadPolicy(kind), {"policy": f"bad-{kind}"}, port=0).start()
    run = {"tasks": ["reach"], "episodes": 2, "out": tmp_path, "videos": 0, "progress": False, "table": False}
    try:
        summary = evaluate(policy_source(server.url), suite, **run)
        df = ResultsStore(tmp_path).frame()
        assert summary["overall"]["successes"] == 0 and summary["overall"]["failures"] == 2
        assert (df["steps"] == 2).all() and df["failure_reason"].str.contains(needle, regex=False).all()
        assert ResultsStore(tmp_path).retry_keys() == set()  # the policy's fault: never run again
        capsys.readouterr()
        evaluate(policy_source(server.url), suite, **run)
        assert "2 already done, 0 to run" in capsys.readouterr().out
    finally:
        server.shutdown()


def test_obs_maps_presets_files_and_their_errors(tmp_path):
    obs = {"agentview": np.full((128, 128, 3), 7, np.uint8), "wrist": np.full((128, 128, 3), 9, np.uint8),
           "proprio": np.arange(8, dtype=np.float32), "instruction": "put carrot on plate"}
    libero = load_obs_map("openpi-libero")
    request = libero.to_request(obs)
    assert set(request) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
    assert request["observation/image"].shape == (224, 224, 3) and request["observation/image"].dtype == np.uint8
    assert (request["observation/wrist_image"] == 9).all() and np.array_equal(request["observation/state"], obs["proprio"])
    chunk = np.arange(10 * 8, dtype=np.float32).reshape(10, 8)  # (K, D) = (10, 8): pi0-style padding
    assert np.array_equal(libero.to_actions({"actions": chunk}), chunk[:5, :7])
    assert load_obs_map(None) == ObsMap() and load_obs_map("actdistill").to_request(obs).keys() == obs.keys()

    path = tmp_path / "bridge.json"
    path.write_text(json.dumps({"images": {"image": "agentview"}, "image_size": 64, "state": None,
                                "prompt": "task", "action_dims": [1, 2, 3, 4, 5, 6, 0], "gripper": "unit_open"}))
    bridge = load_obs_map(str(path))
    assert bridge.to_request(obs).keys() == {"image", "task"} and bridge.to_request(obs)["image"].shape == (64, 64, 3)
    actions = bridge.to_actions({"actions": np.array([[1.0, 0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 0, 0]])})
    assert actions[:, 6].tolist() == [-1.0, 1.0]  # 1 = open there, -1 = open here
    with pytest.raises(ValueError, match=r"shape \(3, 2\); the obs map takes dims"):
        bridge.to_actions({"actions": np.zeros((3, 2))})
    with pytest.raises(ValueError, match=r"reply has no 'actions' entry \(it has \['error'\]\)"):
        bridge.to_actions({"error": 1})

    for content, needle in [
        ({"preset": "openpi-droid"}, "unknown preset 'openpi-droid'; valid presets: actdistill, openpi-libero"),
        ({"imagez": {}}, "unknown field(s) ['imagez']; valid fields: preset, action_dims"),
        ({"gripper": "binary"}, "gripper 'binary' is unknown; valid conventions: signed_close"),
        ({"images": {"cam": "top"}}, "name unknown cameras; valid cameras: agentview, wrist"),
        ({"execute": 0}, "execute must be >= 1"),
        ({"execute": "five"}, "obs map"),
        ({"action_dims": [0, 1]}, "action_dims must be 7 indices"),
    ]:
        path.write_text(json.dumps(content))
        with pytest.raises(UserInputError, match=None) as info:
            load_obs_map(str(path))
        assert needle in str(info.value)
    with pytest.raises(MissingInputError, match="neither a preset .* nor a JSON file"):
        load_obs_map(str(tmp_path / "missing.json"))


def test_a_server_that_changes_policy_counts_as_lost(teacher, served, observations):
    link = ServerLink(served.url)
    link.open()
    link.metadata = {**link.metadata, "policy_hash": "something-else"}  # as if another policy had been served
    link.close()
    client = WebsocketClientPolicy(link, ObsMap())
    with pytest.raises(ConnectionError, match="policy server lost .*now serves another policy"):
        client.reset()
    with pytest.raises(ConnectionError, match="policy server lost .*not connected"):
        client.act(observations[0])
