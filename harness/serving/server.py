"""Serve any of our policies with openpi's websocket protocol (``actdistill serve``), to any openpi client.

    from harness.serving.server import WebsocketPolicyServer
    server = WebsocketPolicyServer(lambda: policy, metadata, host="127.0.0.1", port=0)  # 0: a free port
    server.start()                      # serves in a background thread; or server.serve_forever()
    server.url                          # "ws://127.0.0.1:PORT"
    server.shutdown()                   # closes the connections (code 1001) and the socket

Per connection (the protocol is in :mod:`harness.serving`): ``make_policy()`` gives the connection its policy,
which is reset; the metadata goes out; then every binary frame is a request. ``{"reset": true}`` resets the
connection's policy and is answered ``{"reset": true}``; any other map is an observation (our keys:
``agentview``, ``wrist``, ``proprio``, ``instruction``) and is answered::

    {"actions": (K, 7) array,              # the policy's whole chunk when it has predict(obs_list) -> (B, K, 7)
                                           #   (every VLAPolicy), else (1, 7): one act(obs)
     "server_timing": {"infer_ms": ...},   # from the decoded request to the chunk, waiting for the model included
     "info": {...}}                        # the policy's last_info (executed layers, FLOPs, model_ms), if any

A chunk from ``predict`` depends on the observation only, so a loaded checkpoint can serve every connection
from one instance (``make_policy=lambda: policy``); a policy with state of its own needs a fresh instance per
connection. One model call runs at a time (a lock), whatever the number of connections. A request that fails
is answered with its traceback as a text frame, and the connection is closed with code 1011, as openpi does.
"""

from __future__ import annotations

import http
import logging
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from harness.serving import wire
from tasks.base import ACTION_DIM, Policy
from tasks.errors import UserInputError

logger = logging.getLogger(__name__)


def policy_chunk(policy: Policy, obs: Mapping[str, Any]) -> np.ndarray:
    """The actions ``policy`` would run from ``obs``: ``predict([obs])[0]`` (K, 7) when it has ``predict``, else
    ``act(obs)`` as a chunk of one (1, 7)."""
    predict = getattr(policy, "predict", None)
    if callable(predict):
        return np.asarray(predict([obs])[0])  # (K, 7)
    return np.asarray(policy.act(obs))[None]  # (1, 7)


def describe(name: str, meta: Mapping[str, Any], policy_hash: str, policy: Policy) -> dict[str, Any]:
    """The metadata a server sends on connect: what the policy is (``policy``, ``policy_hash``, ``kind``,
    ``budget``, ``method``), its decoder ``layers``, the ``observation`` entries it expects (key -> shape and
    dtype), ``action_dim``, ``chunk`` (actions per reply) and ``accepts_reset``."""
    out: dict[str, Any] = {"server": "actdistill", "policy": name, "policy_hash": policy_hash}
    out.update({key: meta[key] for key in ("kind", "budget", "method") if meta.get(key) is not None})
    model = getattr(policy, "model", None)
    config = getattr(model, "config", None)
    if config is not None:
        size = int(config.image_size)
        out["layers"] = int(model.num_layers)
        out["observation"] = {
            **{cam: {"shape": [size, size, 3], "dtype": "uint8"} for cam in config.cameras},
            "proprio": {"shape": [int(config.proprio_dim)], "dtype": "float32"},
            "instruction": {"dtype": "str"},
        }
        out["chunk"] = int(config.chunk) if callable(getattr(policy, "predict", None)) else 1
    out["action_dim"] = ACTION_DIM
    out["accepts_reset"] = True
    return out


def _health_check(connection, request):
    """``GET /healthz`` -> 200 without a websocket (openpi's servers answer it too); anything else goes on."""
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


def _packable(value: Any) -> bool:
    try:
        wire.pack(value)
    except (TypeError, ValueError):
        return False
    return True


class WebsocketPolicyServer:
    """Serves ``make_policy()`` (one call per connection) on ``host:port`` (``port=0``: a free one, read
    :attr:`port` after construction) with ``metadata`` (see :func:`describe`; ``accepts_reset`` is always set).

    Raises :class:`~tasks.errors.UserInputError` naming the address when it cannot listen there.
    """

    def __init__(self, make_policy: Callable[[], Policy], metadata: Mapping[str, Any], *,
                 host: str = "127.0.0.1", port: int = 8000):
        from websockets.sync.server import serve

        self.make_policy = make_policy
        self.metadata = {**metadata, "accepts_reset": True}
        self._greeting = wire.pack(self.metadata)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serving = False  # websockets' shutdown() waits for serve_forever() to have run
        try:
            self._server = serve(self._handle, host, port, compression=None, max_size=None,
                                 process_request=_health_check)
        except OSError as exc:
            raise UserInputError(f"cannot listen on {host}:{port} ({exc}); choose another --port (0 picks a free "
                                 "one) or --host") from exc
        self.host, self.port = self._server.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` of the listening socket."""
        return f"ws://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (from another thread) or ``KeyboardInterrupt``."""
        self._serving = True
        self._server.serve_forever()

    def start(self) -> WebsocketPolicyServer:
        """Serve in a background thread; returns ``self``."""
        self._serving = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"policy-server-{self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop listening, close every connection (code 1001, going away) and wait for their handlers."""
        if not self._serving:
            self._server.socket.close()
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _handle(self, conn) -> None:
        """One connection: a fresh (reset) policy, the metadata, then one reply per request."""
        from websockets.exceptions import ConnectionClosed
        from websockets.frames import CloseCode

        peer = conn.remote_address
        logger.info("connection from %s opened", peer)
        try:
            policy = self.make_policy()
            with self._lock:
                policy.reset()
            conn.send(self._greeting)
            for message in conn:
                try:
                    reply = self._answer(policy, message)
                except Exception:  # the client gets the traceback, the server goes on
                    logger.exception("request from %s failed", peer)
                    conn.send(traceback.format_exc())
                    conn.close(CloseCode.INTERNAL_ERROR, "internal server error; traceback in the previous frame")
                    return
                conn.send(wire.pack(reply))
        except ConnectionClosed:
            pass
        logger.info("connection from %s closed", peer)

    def _answer(self, policy: Policy, message: str | bytes) -> dict[str, Any]:
        """The reply to one frame (see the module docstring)."""
        if isinstance(message, str):
            raise TypeError("expected a binary msgpack frame, got a text frame")
        request = wire.unpack(message)
        if not isinstance(request, dict):
            raise TypeError(f"expected a map (an observation or {{'reset': True}}), got a {type(request).__name__}")
        if set(request) == {"reset"} and request["reset"] is True:
            with self._lock:
                policy.reset()
            return {"reset": True}
        start = time.perf_counter()
        with self._lock:
            chunk = policy_chunk(policy, request)  # (K, 7)
            info = dict(getattr(policy, "last_info", None) or {})
        reply: dict[str, Any] = {"actions": chunk,
                                 "server_timing": {"infer_ms": (time.perf_counter() - start) * 1e3}}
        info = {str(key): value for key, value in info.items() if _packable(value)}
        if info:
            reply["info"] = info
        return reply
