"""The two contracts of the project, in one place: the environment every suite provides (:class:`TaskEnv`)
and the policy every evaluator drives (:class:`Policy`). Both are ``typing.Protocol``s: anything with these
methods fits, without inheriting from them.

The environment (SIMPLER-style and LIBERO suites)
-------------------------------------------------

Observation (a dict, also what a policy's ``act(obs)`` receives)::

    "agentview":   (H, W, 3) uint8   third-person camera, upright
    "wrist":       (H, W, 3) uint8   wrist (eye-in-hand) camera, upright
    "proprio":     (8,) float32      eef position xyz (3), eef orientation as axis-angle (3),
                                     gripper finger positions (2)
    "instruction": str               the task's language instruction

Action: (7,) float in [-1, 1]: end-effector delta position xyz (3), delta rotation as scaled
axis-angle (3), gripper (-1 = open, +1 = close).

Environment attributes: ``suite``, ``task``, ``variant``, ``instruction``, ``max_steps``,
``seed``. ``reset(seed=None, options={"episode_index": i})``: the initial state is a pure
function of (seed, episode index), so the same pair always gives the same state and images.
``step(action, render=True)`` returns ``(obs, reward, terminated, truncated, info)`` with
``info["success"]`` (bool); with ``render=False`` the image entries are ``None`` (used while a
policy executes an action chunk open-loop and needs no frames). ``is_success()`` evaluates the
suite's own success rule on the current state.

The policy (scripted experts, teachers, students, baselines, outside policies)
------------------------------------------------------------------------------
Required: ``reset()``, called once per episode after the environment's reset; ``act(obs) -> (7,) action``,
called once per environment step with the observation above.

Optional: ``needs_obs_next() -> bool``, asked after every ``act``: ``False`` means the next ``act`` will not
look at the camera images (an action chunk is being executed open loop), so the environment steps without
rendering; ``last_info: dict``, read after every ``act``: a *new* dict each time the model runs (e.g.
``{"executed_layers": [0, 2], "layer_mask": [1.0, 0.0, 1.0], "flops": 1.2e9, "model_ms": 4.1}``), which
:func:`harness.rollout.rollout` aggregates over the episode.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

PROPRIO_DIM = 8
ACTION_DIM = 7
IMAGE_KEYS = ("agentview", "wrist")
# privileged quantities recorded with demonstrations (training-time only; see harness.rollout's record):
PRIVILEGED_OBJECTS = 12  # env.privileged_state(): (12, 4) per entity, position minus hand and a valid flag
EXPERT_TARGET_DIM = 5  # expert.last_privileged: its waypoint minus hand (3), gripper command, phase in [0, 1]
PRIVILEGED_SHAPES = {"objects": (PRIVILEGED_OBJECTS, 4), "expert_target": (EXPERT_TARGET_DIM,)}  # per step

Observation = dict[str, Any]  # "agentview", "wrist": (H, W, 3) uint8; "proprio": (8,) float32; "instruction": str


@runtime_checkable
class Policy(Protocol):
    """What every evaluator drives: ``reset()`` per episode, ``act(obs)`` per step (see the module docstring
    for the optional ``needs_obs_next()`` and ``last_info``)."""

    def reset(self) -> None:
        """Start a new episode (forget queued actions and any state of the previous one)."""

    def act(self, obs: Observation) -> np.ndarray:
        """The (7,) action in [-1, 1] for this step."""


@runtime_checkable
class TaskEnv(Protocol):
    """What every suite's environment provides (``tasks.make`` returns one, wrapped as a gymnasium env)."""

    suite: str
    task: str
    variant: str
    instruction: str
    max_steps: int

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        """The initial observation and info; the state is a pure function of (seed, options["episode_index"])."""

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, float, bool, bool, dict]:
        """``(obs, reward, terminated, truncated, info)`` with ``info["success"]``; images ``None`` unless
        ``render``."""

    def is_success(self) -> bool:
        """The suite's own success rule on the current state."""

    def close(self) -> None:
        """Release the simulator."""
