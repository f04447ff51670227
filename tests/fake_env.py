"""A tiny MuJoCo-free suite family that follows the environment contract of :mod:`tasks.base`.

It implements the family-module interface of :mod:`tasks.registry` (``suite_names``,
``task_names``, ``variant_names``, ``make_env``, ``make_expert``) so tests can register it with
``monkeypatch`` (see :func:`register`) and drive the harness exactly as with the real suites.

State: a point (x, y) in [-1, 1]^2 pushed by the first two action dims (0.2 per step) and a
goal drawn from (seed, episode index). Tasks:

- ``reach``: success judged at the final step (SIMPLER-style), ``max_steps`` = 12.
- ``reach_early``: the episode terminates as soon as the goal is reached (LIBERO-style).
- ``unreachable``: the goal lies outside the workspace, so nobody succeeds.
- ``crash``: ``step`` raises ``RuntimeError`` on step 3.

Variants: ``base`` (default) and ``dark`` (images at half brightness).
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from tasks.base import ACTION_DIM, PROPRIO_DIM

SUITE = "fake_basic"
TASKS = ("reach", "reach_early", "unreachable", "crash")
VARIANTS = ("base", "dark")
IMAGE = 128
STEP = 0.2
TOLERANCE = 0.15


def suite_names() -> list[str]:
    return [SUITE]


def task_names(suite: str) -> list[str]:
    return list(TASKS)


def variant_names(suite: str) -> list[str]:
    return list(VARIANTS)


def make_env(suite: str, task: str, variant: str, seed: int, **kwargs) -> FakeEnv:
    return FakeEnv(suite, task, variant, seed, **kwargs)


def make_expert(env: FakeEnv) -> FakeExpert:
    return FakeExpert(env)


def register(monkeypatch) -> str:
    """Make the registry serve only this family (via ``monkeypatch``); return the suite name."""
    from tasks import registry

    monkeypatch.setattr(registry, "_FAMILIES", {"fake": __name__})
    monkeypatch.setattr(registry, "_suite_list", lambda: (SUITE,))
    return SUITE


class FakeEnv(gymnasium.Env):
    """Point-reaching env with two 128x128 cameras; see the module docstring."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, suite: str, task: str, variant: str, seed: int, max_steps: int = 12):
        self.suite, self.task, self.variant, self.seed = suite, task, variant, seed
        self.max_steps = max_steps
        self.instruction = f"move the dot to the {task} goal"
        self.observation_space = spaces.Dict({
            "agentview": spaces.Box(0, 255, (IMAGE, IMAGE, 3), np.uint8),
            "wrist": spaces.Box(0, 255, (IMAGE, IMAGE, 3), np.uint8),
            "proprio": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.pos = np.zeros(2)
        self.goal = np.zeros(2)
        self.gripper = 0.0
        self.t = 0
        self.render_calls = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        episode = int((options or {}).get("episode_index", 0))
        rng = np.random.default_rng([self.seed if seed is None else seed, episode])
        self.pos = rng.uniform(-0.3, 0.3, 2)
        self.goal = rng.uniform(-0.8, 0.8, 2)
        if self.task == "unreachable":
            self.goal = np.array([3.0, 3.0])
        self.gripper, self.t = 0.0, 0
        return self._obs(True), {"success": False, "instruction": self.instruction}

    def is_success(self) -> bool:
        return bool(np.linalg.norm(self.pos - self.goal) < TOLERANCE)

    def step(self, action, render: bool = True):
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.t += 1
        if self.task == "crash" and self.t == 3:
            raise RuntimeError("simulated physics blow-up")
        self.pos = np.clip(self.pos + STEP * a[:2], -1.0, 1.0)
        self.gripper = float(a[6])
        success = self.is_success()
        terminated = self.task == "reach_early" and success
        truncated = self.t >= self.max_steps
        return self._obs(render), float(success), terminated, truncated, {"success": success}

    def _obs(self, render: bool) -> dict:
        proprio = np.zeros(PROPRIO_DIM, np.float32)
        proprio[:2] = self.pos
        proprio[6:] = self.gripper
        if render:
            self.render_calls += 1
        return {
            "agentview": self._image(self.pos) if render else None,
            "wrist": self._image(self.goal - self.pos) if render else None,
            "proprio": proprio,
            "instruction": self.instruction,
        }

    def _image(self, point: np.ndarray) -> np.ndarray:
        """A smooth gradient with a bright disc at ``point``: compressible like a rendered scene."""
        ys, xs = np.mgrid[0:IMAGE, 0:IMAGE] / (IMAGE - 1)  # (H, W)
        img = np.stack([xs * 160 + 40, ys * 120 + 60, (xs + ys) * 60 + 50], axis=-1)  # (H, W, 3)
        cx, cy = (np.clip(point, -1, 1) + 1) / 2
        disc = ((xs - cx) ** 2 + (ys - cy) ** 2) < 0.01
        img[disc] = (250, 60, 30)
        if self.variant == "dark":
            img = img / 2
        return img.astype(np.uint8)


class FakeExpert:
    """Moves straight to the goal and closes the gripper; reads privileged state."""

    def __init__(self, env: FakeEnv):
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, obs: dict) -> np.ndarray:
        delta = (self.env.goal - self.env.pos) / STEP
        action = np.zeros(ACTION_DIM, np.float32)
        action[:2] = np.clip(delta, -1.0, 1.0)
        action[6] = 1.0
        return action
