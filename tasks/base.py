"""The environment contract shared by every suite (SIMPLER-style and LIBERO).

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
"""

from __future__ import annotations

PROPRIO_DIM = 8
ACTION_DIM = 7
IMAGE_KEYS = ("agentview", "wrist")
