"""Evaluate a policy served with openpi's websocket protocol: ``actdistill eval --policy ws://HOST:PORT``.

    from harness.serving.client import served_source
    source = served_source("ws://127.0.0.1:8000", load_obs_map("openpi-libero"))   # connects once: metadata
    policy = source.build(env)             # a WebsocketClientPolicy; rollout() drives it like any Policy
    policy.last_info                       # {"roundtrip_ms", "server_ms", "network_ms", ...} per server call

The protocol is described in :mod:`harness.serving`. A returned chunk runs open loop (the first ``execute``
actions of it, see :class:`~harness.serving.obs_map.ObsMap`), as our own policies run theirs, and the
environment skips rendering while it does. Latency: ``roundtrip_ms`` is the wall time of one request
(packing, network both ways, the server's work, unpacking), ``server_ms`` what the server reports
(``server_timing.infer_ms``) and ``network_ms`` the difference; the rollout's ``policy_ms`` include all of it,
and the run's meta says so (``latency_includes_network``). Our own server adds the policy's ``last_info``
(executed layers, FLOPs, ``model_ms``) to each reply, and the client passes it on.

Faults. No server at the address: :func:`served_source` raises :class:`~tasks.errors.MissingInputError`
before any episode. A server that goes away (connection refused, dropped, or silent past ``timeout_s``)
raises :class:`PolicyServerLost`, whose message holds :data:`harness.results.SERVER_LOST`: the episode is
stored as lost, the evaluation stops, and a rerun runs it again (once; see :mod:`harness.results`). A server
that answers with an error, or with actions of the wrong shape, fails that episode for good
(:class:`PolicyServerError`, ``ValueError``), and non-finite actions fail it in the rollout's own check.

Each :class:`PolicySource` holds one :class:`ServerLink`; it pickles without its connection, so every Ray
worker opens its own, and one process reuses its connection across environments and episodes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import numpy as np

from harness.evaluate import PolicySource
from harness.results import SERVER_LOST
from harness.serving import wire
from harness.serving.obs_map import ObsMap, load_obs_map
from tasks.errors import MissingInputError, UserInputError


class PolicyServerLost(ConnectionError):
    """The policy server is not there any more; ``detail`` says how (refused, closed, timed out)."""

    def __init__(self, url: str, detail: str):
        super().__init__(f"{SERVER_LOST} ({url}): {detail}")
        self.url, self.detail = url, detail


class PolicyServerError(RuntimeError):
    """The policy server answered, but with an error (its traceback) or with bytes that are not the protocol."""


def _digest(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (numpy values as lists), 16 hex digits."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray | np.generic):
            return value.tolist()
        return repr(value)

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=plain).encode()).hexdigest()[:16]


class ServerLink:
    """One websocket connection to a policy server, opened by :meth:`open` (which reads the server's metadata)
    and reopened after it drops. The first connection's ``metadata`` is kept: a later connection whose
    metadata differs is a different policy, and counts as the server lost. Pickles without its connection."""

    def __init__(self, url: str, timeout_s: float = 300.0):
        self.url, self.timeout_s = url, float(timeout_s)
        self.metadata: dict[str, Any] | None = None
        self._conn = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "timeout_s": self.timeout_s, "metadata": self.metadata}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def open(self) -> dict[str, Any]:
        """Connect and return the server's metadata. Raises :class:`PolicyServerLost` when nobody answers
        (or the server now serves another policy), :class:`PolicyServerError` when the greeting is not a map."""
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        self.close()
        try:  # entered like a context manager (a bare connect() is deprecated in websockets 17); close() ends it
            conn = connect(self.url, compression=None, max_size=None,
                           open_timeout=min(self.timeout_s, 30.0)).__enter__()
        except (OSError, WebSocketException) as exc:
            raise PolicyServerLost(self.url, f"cannot connect ({type(exc).__name__}: {exc})") from exc
        try:
            greeting = conn.recv(timeout=self.timeout_s)
        except (OSError, WebSocketException) as exc:  # TimeoutError is an OSError
            conn.close()
            raise PolicyServerLost(self.url, f"no metadata after connecting ({type(exc).__name__}: {exc})") from exc
        metadata = self._decode(greeting, conn)
        if self.metadata is not None and _digest(metadata) != _digest(self.metadata):
            conn.close()
            raise PolicyServerLost(self.url, "the server now serves another policy (its metadata changed); "
                                             "rerun to evaluate it under its own hash")
        self.metadata, self._conn = metadata, conn
        return metadata

    def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send ``message``, return the server's reply map. Raises :class:`PolicyServerLost` when the connection
        is closed or drops, or no reply comes within ``timeout_s``; :class:`PolicyServerError` for an error reply."""
        from websockets.exceptions import WebSocketException

        if self._conn is None:
            raise PolicyServerLost(self.url, "not connected (the connection dropped earlier in this episode)")
        conn = self._conn
        try:
            conn.send(wire.pack(dict(message)))
            data = conn.recv(timeout=self.timeout_s)
        except TimeoutError as exc:
            self.close()
            raise PolicyServerLost(self.url, f"no reply within {self.timeout_s:g} s") from exc
        except (OSError, WebSocketException) as exc:
            self.close()
            raise PolicyServerLost(self.url, f"connection closed mid-request ({type(exc).__name__}: {exc})") from exc
        return self._decode(data, conn)

    def _decode(self, data: str | bytes, conn) -> dict[str, Any]:
        """The map in one frame; a text frame is the server's error report (the server then closes)."""
        if isinstance(data, str):
            self.close()
            conn.close()
            last = data.strip().splitlines()[-1] if data.strip() else "(empty)"
            raise PolicyServerError(f"policy server {self.url} failed: {last}")
        try:
            obj = wire.unpack(data)
        except Exception as exc:  # any malformed frame is the server's fault, named here
            self.close()
            conn.close()
            raise PolicyServerError(f"policy server {self.url} sent an undecodable frame ({type(exc).__name__}: "
                                    f"{exc})") from exc
        if not isinstance(obj, dict):
            self.close()
            conn.close()
            raise PolicyServerError(f"policy server {self.url} sent a {type(obj).__name__}; expected a map")
        return obj

    def close(self) -> None:
        """Close the connection (if open); the next :meth:`open` reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class WebsocketClientPolicy:
    """A :class:`tasks.base.Policy` whose actions come from a policy server through ``link``.

    ``reset()`` starts an episode: it (re)connects when the link is closed, a fresh session on the server, or
    else sends ``{"reset": true}`` to a server whose metadata says ``accepts_reset``; it forgets queued
    actions. ``act(obs)`` asks the server when the queue is empty (``obs_map.to_request(obs)``) and queues
    ``obs_map.to_actions(reply)``, ``(N, 7)``; ``last_info`` is a new dict per request (see the module docstring).
    """

    def __init__(self, link: ServerLink, obs_map: ObsMap):
        self.link, self.obs_map = link, obs_map
        self.last_info: dict[str, Any] = {}
        self._queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self._queue.clear()
        self.last_info = {}
        if not self.link.is_open:
            self.link.open()
        elif (self.link.metadata or {}).get("accepts_reset"):
            ack = self.link.request({"reset": True})
            if ack.get("reset") is not True:
                raise PolicyServerError(f"policy server {self.link.url} answered {sorted(ack)} to a reset; "
                                        "expected {'reset': True}")

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The next action (7,) of the queued chunk; asks the server first when the queue is empty."""
        if not self._queue:
            request = self.obs_map.to_request(obs)
            start = time.perf_counter()
            reply = self.link.request(request)
            roundtrip_ms = (time.perf_counter() - start) * 1e3
            self._queue.extend(self.obs_map.to_actions(reply))  # N actions (7,)
            info = dict(reply.get("info") or {})
            info["roundtrip_ms"] = roundtrip_ms
            server_ms = (reply.get("server_timing") or {}).get("infer_ms")
            if server_ms is not None:
                info["server_ms"] = float(server_ms)
                info["network_ms"] = roundtrip_ms - float(server_ms)
            self.last_info = info
        return self._queue.popleft()

    def needs_obs_next(self) -> bool:
        """True when the next ``act`` asks the server (and so needs the camera images)."""
        return not self._queue


def check_url(url: str) -> None:
    """Raise :class:`~tasks.errors.UserInputError` unless ``url`` is ``ws://HOST:PORT`` or ``wss://HOST:PORT``."""
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname or port is None:
        raise UserInputError(f"--policy {url!r} is not a policy server address; expected ws://HOST:PORT "
                             "(or wss://HOST:PORT), e.g. ws://127.0.0.1:8000")


def check_obs_map(url: str, obs_map: ObsMap, metadata: Mapping[str, Any]) -> None:
    """Raise :class:`~tasks.errors.UserInputError` when the server's metadata lists the observation entries it
    expects (``"observation": {key: {"shape": [...]}}``, as ours does) and the obs map does not send them all,
    or resizes images to another size than the server expects."""
    expected = metadata.get("observation")
    if not isinstance(expected, Mapping):
        return  # openpi's servers do not describe their input
    sent = [*obs_map.images, *(k for k in (obs_map.state, obs_map.prompt) if k is not None)]
    missing = sorted(set(expected) - set(sent))
    if missing:
        raise UserInputError(f"the policy server at {url} expects observation entries {sorted(expected)}; the obs "
                             f"map sends {sorted(sent)} (missing {missing}); give an --obs-map that sends them "
                             "(for our own server: --obs-map actdistill, the default)")
    if obs_map.image_size is not None:
        for key in obs_map.images:
            entry = expected.get(key)
            shape = entry.get("shape") if isinstance(entry, Mapping) else None
            if shape is not None and tuple(shape[:2]) != tuple(obs_map.image_size):
                raise UserInputError(f"the policy server at {url} expects {key!r} of shape {list(shape)}; the obs "
                                     f"map resizes it to {list(obs_map.image_size)}")


def served_source(url: str, obs_map: ObsMap | str | None = None) -> PolicySource:
    """The :class:`~harness.evaluate.PolicySource` of the policy served at ``url`` (``ws://HOST:PORT``), mapped
    with ``obs_map`` (an :class:`ObsMap`, a preset name or a JSON file; default our own keys).

    Connects once to read the server's metadata, and raises :class:`~tasks.errors.MissingInputError` when no
    server answers. The policy hash covers the URL, the metadata and the obs map; ``meta`` takes ``kind``,
    ``budget`` and ``method`` from the metadata when the server gives them (ours does), and records that
    latencies include the network.
    """
    from harness.report import KINDS

    check_url(url)
    mapping = obs_map if isinstance(obs_map, ObsMap) else load_obs_map(obs_map)
    link = ServerLink(url, mapping.timeout_s)
    try:
        metadata = link.open()
    except PolicyServerLost as exc:
        raise MissingInputError(f"--policy {url}: no policy server answers there ({exc.detail}); start one first "
                                "(e.g. actdistill serve --policy CKPT --port PORT) or check the address") from exc
    except PolicyServerError as exc:
        raise UserInputError(f"--policy {url}: {exc}; is it a policy server speaking openpi's protocol?") from exc
    finally:
        link.close()
    check_obs_map(url, mapping, metadata)
    mapped = {key: value for key, value in mapping.to_json().items() if key != "timeout_s"}  # not the identity
    digest = "ws-" + _digest({"url": url, "metadata": _digest(metadata), "obs_map": mapped})
    kind = metadata.get("kind")
    meta: dict[str, Any] = {
        "policy": url, "kind": kind if kind in KINDS else "policy",
        "method": str(metadata.get("method") or f"policy served at {url}"),
        "server": url, "server_policy": metadata.get("policy"), "obs_map": mapping.to_json(),
        "latency_includes_network": True,
    }
    if metadata.get("budget") is not None:
        meta["budget"] = metadata["budget"]
    return PolicySource(url, build=lambda env: WebsocketClientPolicy(link, mapping), hash_for=lambda env: digest,
                        meta=meta)
