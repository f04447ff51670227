"""One episode of a policy in an environment: plain Python, no Ray.

    from harness.rollout import rollout
    env = tasks.make("simpler_widowx", "put_carrot_on_plate")
    result = rollout(tasks.expert(env), env, episode_index=3, seed=0)
    result.success, result.steps, result.policy_ms_mean

The policy protocol is :class:`tasks.base.Policy` (``reset()``, ``act(obs)``; optional
``needs_obs_next()`` and ``last_info``). Without ``needs_obs_next`` every step renders; recording
(``record=True``) and videos always render. ``last_info`` is aggregated once per distinct dict:
numbers and equal-shaped numeric arrays are averaged over the model calls
(``{"flops": {"mean": ..., "sum": ..., "n": ...}}``, arrays element-wise, e.g. ``layer_mask`` gives
the fraction of calls each layer ran); any other value keeps its last value.

Failures never escape: a policy that raises or returns a non-finite or wrongly shaped action,
or an environment that raises in ``reset`` or ``step``, ends the episode as failed with
``failure_reason`` set; such an episode is never a success.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.base import ACTION_DIM, IMAGE_KEYS, PRIVILEGED_SHAPES, Policy

# recorded when available: env.privileged_state() as "objects", policy.last_privileged as "expert_target"
PRIVILEGED_KEYS = tuple(PRIVILEGED_SHAPES)


@dataclass
class EpisodeResult:
    """Outcome of one episode.

    ``policy_ms`` holds the wall time of every ``act`` call in milliseconds (``policy_calls``
    entries). ``info`` aggregates the policy's ``last_info`` (see the module docstring).
    ``record`` (only with ``record=True``) holds, for the ``steps`` executed steps,
    ``agentview``/``wrist`` (T, H, W, 3) uint8, ``proprio`` (T, 8) float32 and ``actions``
    (T, 7) float32, where observation t is what produced action t, plus ``instruction``; and, where the
    env and the policy provide them (the SIMPLER-style suites and their experts), the privileged
    ``objects`` (T, 12, 4) (``env.privileged_state()`` at observation t) and ``expert_target`` (T, 5)
    (``policy.last_privileged`` after action t).
    ``frames`` (only with ``videos=True``) is the list of agentview frames including the first
    and last observation.
    """

    success: bool
    steps: int
    wall_s: float
    policy_calls: int
    policy_ms: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    failure_reason: str | None = None
    instruction: str = ""
    record: dict[str, Any] | None = None
    frames: list[np.ndarray] | None = None

    @property
    def policy_ms_mean(self) -> float:
        return float(np.mean(self.policy_ms)) if self.policy_ms else math.nan

    @property
    def policy_ms_median(self) -> float:
        return float(np.median(self.policy_ms)) if self.policy_ms else math.nan


class _InfoAggregator:
    """Aggregates each distinct ``last_info`` dict once (see the module docstring)."""

    def __init__(self):
        self._seen_id: int | None = None
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}
        self._other: dict[str, Any] = {}

    def add(self, info: Any) -> None:
        if not isinstance(info, dict) or not info or id(info) == self._seen_id:
            return
        self._seen_id = id(info)
        for key, value in info.items():
            arr = _numeric(value)
            if arr is None or (key in self._sums and self._sums[key].shape != arr.shape):
                self._other[key] = value
                continue
            self._sums[key] = self._sums.get(key, 0.0) + arr
            self._counts[key] = self._counts.get(key, 0) + 1

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, total in self._sums.items():
            n = self._counts[key]
            out[key] = {"mean": (total / n).tolist(), "sum": total.tolist(), "n": n}
        for key, value in self._other.items():
            out.setdefault(key, _jsonable(value))
        return out


def _numeric(value: Any) -> np.ndarray | None:
    if isinstance(value, bool):
        return np.asarray(float(value))
    if isinstance(value, (int, float, np.number, np.ndarray, list, tuple)) or hasattr(value, "numpy"):
        try:
            arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                             dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return arr if np.all(np.isfinite(arr)) else None
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def _check_action(action: Any) -> tuple[np.ndarray | None, str | None]:
    try:
        arr = np.asarray(action.detach().cpu().numpy() if hasattr(action, "detach") else action,
                         dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return None, f"policy returned a non-numeric action ({type(action).__name__}: {exc})"
    if arr.shape != (ACTION_DIM,):
        return None, f"policy returned an action of shape {arr.shape}; expected ({ACTION_DIM},)"
    if not np.all(np.isfinite(arr)):
        return None, f"policy returned a non-finite action {arr.tolist()}"
    return arr, None


def rollout(policy: Policy, env, *, episode_index: int, seed: int, max_steps: int | None = None,
            record: bool = False, videos: bool = False,
            perturb: Callable[[np.ndarray], np.ndarray] | None = None) -> EpisodeResult:
    """Run one episode and return its :class:`EpisodeResult`. (One function of about 80 lines on purpose: the
    step loop reads top to bottom, with rendering, recording and every failure path in the order they happen.)

    Resets ``env`` with ``seed`` and ``options={"episode_index": episode_index}``, calls
    ``policy.reset()``, then alternates ``policy.act(obs)`` and ``env.step`` until the env
    terminates or truncates, or ``max_steps`` (default: ``env.unwrapped.max_steps``) steps ran.
    Success is ``info["success"]`` of the last step, as the env reports it: SIMPLER-style suites
    judge it at the final step, LIBERO-style ones terminate on success.

    ``perturb(action) -> action``: the env executes the perturbed action while the record keeps the
    policy's own (noise injection in the style of DART: demonstrations that visit the states a cloned
    policy drifts into, labelled with the expert's correction).
    """
    limit = int(max_steps if max_steps is not None else env.unwrapped.max_steps)
    always_render = record or videos
    start = time.perf_counter()
    policy_ms: list[float] = []
    infos = _InfoAggregator()
    rec: dict[str, list] = {key: [] for key in (*IMAGE_KEYS, "proprio", "actions", *PRIVILEGED_KEYS)}
    privileged_state = getattr(env.unwrapped, "privileged_state", None) if record else None
    frames: list[np.ndarray] | None = [] if videos else None
    steps, success, reason = 0, False, None
    instruction = getattr(env.unwrapped, "instruction", "")

    def finish() -> EpisodeResult:
        record_out = None
        if record:
            record_out = {key: np.stack(rec[key]) if rec[key] else None for key in IMAGE_KEYS}
            record_out["proprio"] = np.asarray(rec["proprio"], np.float32).reshape(-1, 8)  # (T, 8)
            record_out["actions"] = np.asarray(rec["actions"], np.float32).reshape(-1, ACTION_DIM)  # (T, 7)
            record_out["instruction"] = instruction
            n = len(rec["actions"])
            for key in PRIVILEGED_KEYS:  # present when the env / the policy provide them at every step
                if n and len(rec[key]) >= n:
                    record_out[key] = np.stack(rec[key][:n]).astype(np.float32)
        return EpisodeResult(success=bool(success) and reason is None, steps=steps,
                             wall_s=time.perf_counter() - start, policy_calls=len(policy_ms),
                             policy_ms=policy_ms, info=infos.result(), failure_reason=reason,
                             instruction=instruction, record=record_out, frames=frames)

    try:
        obs, _ = env.reset(seed=seed, options={"episode_index": int(episode_index)})
    except Exception as exc:  # noqa: BLE001 - a broken env must not crash the caller
        reason = f"env.reset raised {type(exc).__name__}: {exc}"
        return finish()
    instruction = obs.get("instruction", instruction)
    try:
        policy.reset()
    except Exception as exc:  # noqa: BLE001
        reason = f"policy.reset raised {type(exc).__name__}: {exc}"
        return finish()
    if frames is not None:
        frames.append(obs["agentview"])

    while steps < limit:
        if privileged_state is not None:
            rec["objects"].append(privileged_state())  # the state observation t shows
        t0 = time.perf_counter()
        try:
            raw = policy.act(obs)
            policy_ms.append((time.perf_counter() - t0) * 1e3)
            wants_images = bool(policy.needs_obs_next()) if hasattr(policy, "needs_obs_next") else True
        except Exception as exc:  # noqa: BLE001
            reason = f"policy raised {type(exc).__name__}: {exc}"
            break
        infos.add(getattr(policy, "last_info", None))
        action, reason = _check_action(raw)
        if reason is not None:
            break
        render = always_render or wants_images
        if record:
            for key in IMAGE_KEYS:
                rec[key].append(obs[key])
            rec["proprio"].append(obs["proprio"])
            rec["actions"].append(action)
            if getattr(policy, "last_privileged", None) is not None:
                rec["expert_target"].append(policy.last_privileged)
        if perturb is not None:
            action = np.asarray(perturb(action), dtype=np.float64)
        try:
            obs, _, terminated, truncated, info = env.step(action, render=render)
        except Exception as exc:  # noqa: BLE001
            reason = f"env.step raised {type(exc).__name__}: {exc}"
            break
        steps += 1
        success = bool(info.get("success", False))
        if frames is not None:
            frames.append(obs["agentview"])
        if terminated or truncated:
            break
    return finish()
