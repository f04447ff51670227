"""Scripted experts for the SIMPLER-style suites: a phase machine over waypoints computed from
privileged state, driving the same 7-D delta controller a policy drives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.simpler.env import DOWN_QUAT, SimplerEnv, _quat_mul, _rotvec_to_quat, quat_error


def down_quat(yaw: float = 0.0) -> np.ndarray:
    """Top-down grasp orientation rotated by ``yaw`` about the world z axis (wxyz)."""
    return _quat_mul(_rotvec_to_quat(np.array([0.0, 0.0, yaw])), DOWN_QUAT)


@dataclass
class Waypoint:
    """Move the end effector to ``pos`` / ``quat`` with the gripper command ``grip`` (-1 open, +1 close).

    ``pos`` and ``quat`` may be callables of the env, evaluated when the phase starts. The phase
    ends when within ``tol`` metres (and ``rot_tol`` radians), or after ``max_steps``; ``hold``
    extra steps are spent in place once reached (e.g. to let the fingers close).

    ``guard(env) -> bool``: what must hold while this phase runs (the object is in the hand, the drawer
    is open, ...). When it fails on ``WaypointExpert.guard_patience`` consecutive steps the expert
    replans from the current state, so it gives a correct action from states its own plan would
    never reach (a learner's drift, a dropped object): what relabelling (DAgger) needs.

    ``skip(env) -> bool``: this phase is already done in the current state (a learner grasped the object
    while the expert still meant to approach it); the expert moves on to the next phase at once. Without it
    an expert started (or lagging) mid-way labels from its own history, e.g. "open the gripper and approach"
    with the object already in the hand."""

    pos: np.ndarray | Callable[[SimplerEnv], np.ndarray]
    grip: float = -1.0
    quat: np.ndarray | Callable[[SimplerEnv], np.ndarray] | None = None
    tol: float = 0.01
    rot_tol: float = 0.08
    max_steps: int = 30
    hold: int = 0
    guard: Callable[[SimplerEnv], bool] | None = None
    skip: Callable[[SimplerEnv], bool] | None = None


class WaypointExpert:
    """Follows a list of waypoints built by ``plan(env) -> list[Waypoint]`` at reset.

    Each step commands a proportional move from the hand's *measured* pose towards the current
    waypoint: ``gain`` of the remaining distance per step, capped at ``max_speed`` action units per
    axis. The action is therefore a smooth function of what a policy observes (hand pose, scene) and
    the plan phase. An earlier version commanded full-speed jumps relative to the controller's
    internal target and then zeros while the hand caught up; those actions depended on a state no
    observation shows, and a cloned policy could only learn the median (zero) action from them.
    Phases time out after ``timeout_scale * Waypoint.max_steps`` steps.

    ``target_bias`` (metres, world frame, default zero) is added to every waypoint's position: an expert
    that misplaces its targets by a constant offset, to measure how much error each task tolerates.
    ``last_privileged`` (after each ``act``): (EXPERT_TARGET_DIM,) float32, the waypoint acted on minus the
    hand (3), its gripper command and the plan phase ``index / len(waypoints)``, recorded with demonstrations.

    Replanning: a phase whose :attr:`Waypoint.guard` fails ``guard_patience`` steps in a row (contacts
    flicker for a step or two) makes the expert call ``plan(env)`` again from the current state and start
    at its first waypoint; ``replans`` counts them since ``reset``. On the expert's own clean episodes no
    guard fails (tested), so recorded demonstrations do not change.
    """

    def __init__(self, env: SimplerEnv, plan: Callable[[SimplerEnv], list[Waypoint]], gain: float = 0.6,
                 max_speed: float = 0.8, timeout_scale: float = 3.0, guard_patience: int = 3):
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        if not 0.0 < max_speed <= 1.0:
            raise ValueError(f"max_speed must be in (0, 1], got {max_speed}")
        self.env = env
        self.plan = plan
        self.gain = gain
        self.max_speed = max_speed
        self.timeout_scale = timeout_scale
        self.guard_patience = guard_patience
        self.target_bias = np.zeros(3)
        self.reset()

    def needs_obs_next(self) -> bool:
        """False: the expert reads the simulator, never the images, so an evaluation renders none of its
        frames (recording demonstrations and videos still render every step)."""
        return False

    def reset(self) -> None:
        self.waypoints: list[Waypoint] | None = None
        self.index = 0
        self._phase_steps = 0
        self._held = 0
        self._resolved: tuple[np.ndarray, np.ndarray] | None = None
        self._guard_failures = 0
        self.replans = 0
        self.skips = 0
        self.last_privileged: np.ndarray | None = None

    def replan(self) -> None:
        """Plan again from the current state and start at the new plan's first waypoint."""
        self.waypoints = self.plan(self.env)
        self.index = 0
        self._phase_steps = 0
        self._held = 0
        self._resolved = None
        self._guard_failures = 0
        self.replans += 1

    def _check_guard(self) -> None:
        wp = self.waypoints[self.index]
        if wp.guard is None or wp.guard(self.env):
            self._guard_failures = 0
            return
        self._guard_failures += 1
        if self._guard_failures >= self.guard_patience:
            self.replan()

    def _resolve(self, wp: Waypoint) -> tuple[np.ndarray, np.ndarray]:
        env = self.env
        pos = (wp.pos(env) if callable(wp.pos) else np.asarray(wp.pos, dtype=float)) + self.target_bias
        if wp.quat is None:
            quat = env.target_quat.copy()
        else:
            quat = wp.quat(env) if callable(wp.quat) else np.asarray(wp.quat, dtype=float)
        return pos, quat

    def act(self, obs=None) -> np.ndarray:
        env = self.env
        if self.waypoints is None:
            self.waypoints = self.plan(env)
        if self.index < len(self.waypoints):
            self._check_guard()
        while self.index < len(self.waypoints) and self.waypoints[self.index].skip is not None \
                and self.waypoints[self.index].skip(env):
            self.index += 1
            self._phase_steps = self._held = 0
            self._resolved = None
            self.skips += 1
        if self.index >= len(self.waypoints):
            last = self.waypoints[-1] if self.waypoints else Waypoint(pos=env.eef_pose()[0])
            self.last_privileged = np.array([0, 0, 0, last.grip, 1.0], dtype=np.float32)
            return np.array([0, 0, 0, 0, 0, 0, last.grip], dtype=np.float32)
        wp = self.waypoints[self.index]
        if self._resolved is None:
            self._resolved = self._resolve(wp)
        pos, quat = self._resolved
        eef, cur = env.eef_pose()
        dpos = self.gain * (pos - eef) / env.arm.pos_scale
        drot = self.gain * quat_error(quat, cur) / env.arm.rot_scale
        reached = np.linalg.norm(pos - eef) < wp.tol and np.linalg.norm(quat_error(quat, cur)) < wp.rot_tol
        self.last_privileged = np.array([*(pos - eef), wp.grip, self.index / len(self.waypoints)], np.float32)
        self._phase_steps += 1
        if reached:
            self._held += 1
        if (reached and self._held > wp.hold) or self._phase_steps >= self.timeout_scale * wp.max_steps:
            self.index += 1
            self._phase_steps = 0
            self._held = 0
            self._resolved = None
        v = self.max_speed
        action = np.concatenate([np.clip(dpos, -v, v), np.clip(drot, -v, v), [wp.grip]])
        return action.astype(np.float32)


GRASP_REACH = 0.025  # metres: how far from the grasp point the hand may be while the fingers close


def hand_near(point: Callable[[SimplerEnv], np.ndarray] | np.ndarray, reach: float) -> Callable[[SimplerEnv], bool]:
    """Guard: the hand is within ``reach`` metres of ``point`` (a position, or a callable evaluated now)."""
    return lambda env: bool(np.linalg.norm(env.eef_pose()[0] - (point(env) if callable(point) else point)) < reach)


def holding(body: str) -> Callable[[SimplerEnv], bool]:
    """Guard: both fingers touch ``body``."""
    return lambda env: env.is_grasped(body)


def either(*guards: Callable[[SimplerEnv], bool]) -> Callable[[SimplerEnv], bool]:
    """Guard: any of ``guards`` holds (a grasp phase is fine with the hand at the object or the object already
    in the hand, e.g. grasped off-centre by a learner: else skip and replan would cycle)."""
    return lambda env: any(g(env) for g in guards)


def pick_and_place_plan(obj: str, place: Callable[[SimplerEnv], np.ndarray], *, grasp_height: float,
                        yaw: Callable[[SimplerEnv], float] | float = 0.0, lift: float = 0.12,
                        release_height: float = 0.03,
                        placed: Callable[[SimplerEnv], bool] | None = None) -> Callable[[SimplerEnv], list[Waypoint]]:
    """Plan: above ``obj`` -> down to ``grasp_height`` above its origin -> close -> lift -> over the
    place point -> down to ``release_height`` above it -> open -> retreat.

    Guards (see :class:`Waypoint`): closing needs the hand at the object, carrying needs it in the
    hand, and retreating needs ``placed(env)`` (when given); otherwise the expert picks it up again."""

    def plan(env: SimplerEnv) -> list[Waypoint]:
        y = yaw(env) if callable(yaw) else yaw
        q = down_quat(y)

        def above_obj(e):
            return e.body_pos(obj) + [0, 0, grasp_height + 0.08]

        def at_obj(e):
            return e.body_pos(obj) + [0, 0, grasp_height]

        def lifted(e):
            return e.eef_pose()[0] * [1, 1, 0] + [0, 0, lift + grasp_height]

        def over_place(e):
            return place(e) + [0, 0, lift]

        def down_place(e):
            return place(e) + [0, 0, release_height]

        def retreat(e):
            return e.eef_pose()[0] + [0, 0, 0.08]

        held = holding(obj)
        return [
            Waypoint(above_obj, -1, q, tol=0.015, max_steps=25, skip=held),
            Waypoint(at_obj, -1, q, tol=0.008, max_steps=15, skip=held),
            Waypoint(at_obj, 1, q, tol=1.0, rot_tol=10, max_steps=4, hold=3, guard=either(held, hand_near(at_obj, GRASP_REACH))),
            Waypoint(lifted, 1, q, tol=0.02, max_steps=12, guard=held),
            Waypoint(over_place, 1, q, tol=0.02, max_steps=20, guard=held),
            Waypoint(down_place, 1, q, tol=0.015, max_steps=10, guard=held),
            Waypoint(down_place, -1, q, tol=1.0, rot_tol=10, max_steps=3, hold=2),
            Waypoint(retreat, -1, q, tol=0.02, max_steps=10, guard=placed),
        ]

    return plan
