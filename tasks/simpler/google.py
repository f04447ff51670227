"""``simpler_google``: SIMPLER's Google Robot task set on the 7-DoF google-style arm.

Tasks (registry order): pick a coke can lying horizontally / vertically / standing, move one
object near another, open or close the top / middle / bottom drawer of a cabinet, and open the
top drawer and place an apple into it. Episode lengths and success rules follow SIMPLER:
success is judged at the final step (picked: lifted above its resting height and held; move
near: the source rests close to the target, the other objects barely moved, released; drawer:
slide joint beyond the open / closed threshold; place: the apple rests inside the drawer,
released).

Quick check (the expert over a few episodes)::

    python -c "from tasks.simpler.google import expert_rollout; print(expert_rollout('open_top_drawer', 0))"
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import mujoco
import numpy as np

from tasks.simpler.env import SimplerEnv, Task, _quat_mul, _rotvec_to_quat
from tasks.simpler.experts import GRASP_REACH, Waypoint, WaypointExpert, down_quat, either, hand_near, holding

ARM = "google"

# Hand approach axis along world +x, fingers closing along world y (wrist pitched 90 degrees from
# the top-down grasp): used for the cabinet's vertical handles and for pushing drawers shut.
FORWARD_QUAT = _rotvec_to_quat(np.array([0.0, np.pi / 2, 0.0]))


# ----------------------------------------------------------------------------- objects
@dataclass(frozen=True)
class Prop:
    """A graspable object built from primitives. ``kind``: "can" (upright cylinder), "sphere" or
    "box"; ``size``: (radius, half height) / (radius,) / half extents; ``rest_z``: height of the
    body origin when resting upright on the table; ``footprint``: xy radius used for spacing."""

    name: str
    label: str
    kind: str
    size: tuple[float, ...]
    rgba: str
    accent: str
    mass: float = 0.08

    @property
    def rest_z(self) -> float:
        return self.size[-1] if self.kind != "sphere" else self.size[0]

    @property
    def footprint(self) -> float:
        return self.size[0] if self.kind != "box" else math.hypot(self.size[0], self.size[1])

    @property
    def grasp_z(self) -> float:
        """Height of the end effector above the body origin for a top-down grasp: tall objects are
        held 3.5 cm below their top, so the palm (4.5 cm above the end effector) stays clear; low
        ones at their middle."""
        return max(0.0, self.rest_z - 0.035)

    def body_xml(self) -> str:
        n, rgba, acc = self.name, self.rgba, self.accent
        phys = f'mass="{self.mass}" friction="1.2 0.01 0.001" condim="4" priority="1"'
        if self.kind == "can":
            r, h = self.size
            geoms = (f'<geom name="{n}" type="cylinder" size="{r} {h}" rgba="{rgba}" {phys}/>'
                     f'<geom type="cylinder" size="{r * 0.92:.4f} 0.003" pos="0 0 {h:.4f}" rgba="{acc}" '
                     f'contype="0" conaffinity="0" mass="0"/>')
        elif self.kind == "sphere":
            r = self.size[0]
            geoms = (f'<geom name="{n}" type="sphere" size="{r}" rgba="{rgba}" {phys}/>'
                     f'<geom type="cylinder" size="0.004 0.008" pos="0 0 {r:.4f}" rgba="{acc}" '
                     f'contype="0" conaffinity="0" mass="0"/>')
        elif self.kind == "box":
            sx, sy, sz = self.size
            geoms = (f'<geom name="{n}" type="box" size="{sx} {sy} {sz * 0.6:.4f}" pos="0 0 {-sz * 0.4:.4f}" '
                     f'rgba="{rgba}" {phys}/>'
                     f'<geom type="box" size="{sx} {sy} {sz * 0.4:.4f}" pos="0 0 {sz * 0.6:.4f}" rgba="{acc}" '
                     f'friction="1.2 0.01 0.001" condim="4" priority="1" mass="0.005"/>')
        else:
            raise ValueError(f"unknown prop kind {self.kind!r}; valid kinds: can, sphere, box")
        return f'<body name="{n}" pos="0 0 -1"><freejoint name="{n}"/>{geoms}</body>'


SILVER = "0.78 0.78 0.8 1"
PROPS = {p.name: p for p in (
    Prop("coke_can", "coke can", "can", (0.033, 0.061), "0.8 0.05 0.05 1", SILVER),
    Prop("pepsi_can", "pepsi can", "can", (0.033, 0.061), "0.08 0.18 0.7 1", SILVER),
    Prop("7up_can", "7up can", "can", (0.033, 0.061), "0.1 0.62 0.2 1", SILVER),
    Prop("redbull_can", "redbull can", "can", (0.03, 0.066), "0.55 0.6 0.75 1", "0.85 0.7 0.1 1"),
    Prop("blue_plastic_bottle", "blue plastic bottle", "can", (0.03, 0.085), "0.45 0.7 0.95 1", "0.1 0.3 0.8 1"),
    Prop("apple", "apple", "sphere", (0.034,), "0.85 0.12 0.1 1", "0.35 0.22 0.08 1"),
    Prop("orange", "orange", "sphere", (0.035,), "1.0 0.55 0.05 1", "0.2 0.5 0.1 1"),
    Prop("sponge", "sponge", "box", (0.045, 0.03, 0.022), "0.95 0.85 0.2 1", "0.2 0.6 0.25 1"),
)}

# Unused props rest on a hidden shelf inside the (opaque) table leg, out of every camera's view.
SHELF_Z = -0.5


def _park_xml() -> str:
    return (f'<geom name="park_shelf" type="box" size="0.3 0.5 0.01" pos="0 0 {SHELF_Z - 0.01}" '
            f'rgba="0 0 0 0" group="3"/>')


def _park(env: SimplerEnv, names: list[str]) -> None:
    for i, name in enumerate(names):
        env.set_free_body(name, (-0.2 + 0.2 * (i % 3), -0.4 + 0.2 * (i // 3), SHELF_Z + 0.1))


def _planar_dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a[:2] - b[:2]))


def _yaw_quat(yaw: float) -> np.ndarray:
    return _rotvec_to_quat(np.array([0.0, 0.0, yaw]))


# ------------------------------------------------------------------------- pick coke can
# SIMPLER-like position grid (3 x 3 in front of the robot), cell by episode index, jitter by rng.
PICK_GRID_X = (-0.1, 0.0, 0.1)
PICK_GRID_Y = (-0.15, 0.0, 0.15)
PICK_JITTER = 0.02
LIFT_THRESHOLD = 0.02  # SIMPLER: the object is lifted more than 2 cm while grasped


class _PickCan(Task):
    """Pick the coke can; ``orientation``: "horizontal" (lying, axis along y), "vertical" (lying,
    axis along x, pointing away from the robot) or "standing"."""

    orientation = "standing"
    instruction = "pick coke can"
    max_steps = 80

    def __init__(self):
        self.can = PROPS["coke_can"]
        self.rest_z = 0.0

    def objects_xml(self) -> str:
        return self.can.body_xml()

    def _quat(self, yaw: float) -> np.ndarray:
        if self.orientation == "standing":
            return _yaw_quat(yaw)
        # Lie the can down (body z onto world x), then turn it about world z.
        lie = _rotvec_to_quat(np.array([0.0, np.pi / 2, 0.0]))
        base = yaw + (np.pi / 2 if self.orientation == "horizontal" else 0.0)
        out = np.zeros(4)
        mujoco.mju_mulQuat(out, _yaw_quat(base), lie)
        return out

    def reset_objects(self, env: SimplerEnv, rng: np.random.Generator) -> None:
        cell = env.episode_index % (len(PICK_GRID_X) * len(PICK_GRID_Y))
        x = PICK_GRID_X[cell // len(PICK_GRID_Y)] + rng.uniform(-PICK_JITTER, PICK_JITTER)
        y = PICK_GRID_Y[cell % len(PICK_GRID_Y)] + rng.uniform(-PICK_JITTER, PICK_JITTER)
        yaw = rng.uniform(-0.2, 0.2) if self.orientation != "standing" else rng.uniform(-np.pi, np.pi)
        r, h = self.can.size
        self.rest_z = h if self.orientation == "standing" else r
        env.set_free_body(self.can.name, (x, y, self.rest_z + 0.001), self._quat(yaw))
        self.keep_clear = ((x, y, 0.08),)

    def success(self, env: SimplerEnv) -> bool:
        lifted = env.body_pos(self.can.name)[2] - self.rest_z > LIFT_THRESHOLD
        return bool(lifted and env.is_grasped(self.can.name))

    def make_expert(self, env: SimplerEnv) -> WaypointExpert:
        name = self.can.name
        standing = self.orientation == "standing"
        # Lying: eef at the can's axis; standing: below the top so the palm clears it.
        grasp_dz = self.can.grasp_z if standing else 0.0

        def yaw(e: SimplerEnv) -> float:
            if standing:
                return 0.0
            axis = e.data.body(name).xmat.reshape(3, 3)[:, 2]
            a = math.atan2(axis[1], axis[0])
            return (a + np.pi / 2) % np.pi - np.pi / 2

        def plan(e: SimplerEnv) -> list[Waypoint]:
            q = down_quat(yaw(e))
            at = e.body_pos(name) + [0, 0, grasp_dz]
            return [
                Waypoint(at + [0, 0, 0.1], -1, q, tol=0.015, max_steps=25, skip=holding(name)),
                Waypoint(at, -1, q, tol=0.007, max_steps=15, skip=holding(name)),
                Waypoint(at, 1, q, tol=1.0, rot_tol=10, max_steps=4, hold=3,
                         guard=either(holding(name), hand_near(at, GRASP_REACH))),
                Waypoint(at + [0, 0, 0.15], 1, q, tol=0.02, max_steps=80, guard=holding(name)),
            ]

        return WaypointExpert(env, plan)


class PickCokeCanHorizontal(_PickCan):
    name = "pick_coke_can_horizontal"
    orientation = "horizontal"


class PickCokeCanVertical(_PickCan):
    name = "pick_coke_can_vertical"
    orientation = "vertical"


class PickCokeCanStanding(_PickCan):
    name = "pick_coke_can_standing"
    orientation = "standing"


# ----------------------------------------------------------------------------- move near
# SIMPLER's five object triplets; each episode picks a triplet, a triangle layout and an ordered
# (source, target) pair from the episode index, and jitters the positions with the episode rng.
MOVE_NEAR_TRIPLETS = (
    ("blue_plastic_bottle", "pepsi_can", "orange"),
    ("7up_can", "apple", "sponge"),
    ("coke_can", "redbull_can", "apple"),
    ("sponge", "blue_plastic_bottle", "7up_can"),
    ("orange", "pepsi_can", "redbull_can"),
)
MOVE_NEAR_LAYOUTS = (
    ((-0.06, -0.15), (-0.06, 0.15), (0.1, 0.0)),
    ((0.1, -0.15), (0.1, 0.15), (-0.06, 0.0)),
)
MOVE_NEAR_PAIRS = ((0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1))
NEAR_THRESHOLD = 0.12  # centre distance in the table plane
MOVED_THRESHOLD = 0.03  # SIMPLER: an object counts as moved beyond 3 cm


class MoveNear(Task):
    """Move the source object next to the target object without disturbing the third one."""

    name = "move_near"
    instruction = "move blue plastic bottle near pepsi can"
    max_steps = 80

    def __init__(self):
        self.source = self.target = self.other = PROPS["coke_can"]
        self.start: dict[str, np.ndarray] = {}

    def objects_xml(self) -> str:
        return "".join(p.body_xml() for p in PROPS.values()) + _park_xml()

    def reset_objects(self, env: SimplerEnv, rng: np.random.Generator) -> None:
        i = env.episode_index
        triplet = MOVE_NEAR_TRIPLETS[i % len(MOVE_NEAR_TRIPLETS)]
        layout = MOVE_NEAR_LAYOUTS[(i // len(MOVE_NEAR_TRIPLETS)) % len(MOVE_NEAR_LAYOUTS)]
        s, t = MOVE_NEAR_PAIRS[(i // (len(MOVE_NEAR_TRIPLETS) * len(MOVE_NEAR_LAYOUTS))) % len(MOVE_NEAR_PAIRS)]
        props = [PROPS[n] for n in triplet]
        self.source, self.target = props[s], props[t]
        self.other = props[3 - s - t]
        _park(env, [n for n in PROPS if n not in triplet])
        clear = []
        for prop, (x, y) in zip(props, layout):
            x, y = x + rng.uniform(-0.02, 0.02), y + rng.uniform(-0.02, 0.02)
            env.set_free_body(prop.name, (x, y, prop.rest_z + 0.001), _yaw_quat(rng.uniform(-np.pi, np.pi)))
            clear.append((x, y, prop.footprint + 0.02))
            self.start[prop.name] = np.array([x, y])
        self.keep_clear = tuple(clear)
        env.instruction = f"move {self.source.label} near {self.target.label}"

    def success(self, env: SimplerEnv) -> bool:
        src, tgt = env.body_pos(self.source.name), env.body_pos(self.target.name)
        oth = env.body_pos(self.other.name)
        moved = {p.name: _planar_dist(env.body_pos(p.name), self.start[p.name])
                 for p in (self.source, self.target, self.other)}
        near = _planar_dist(src, tgt) < NEAR_THRESHOLD and _planar_dist(src, tgt) < _planar_dist(oth, tgt)
        resting = all(abs(env.body_pos(p.name)[2] - p.rest_z) < 0.02 for p in (self.source, self.target, self.other))
        return bool(near and resting and moved[self.source.name] > MOVED_THRESHOLD
                    and moved[self.target.name] < MOVED_THRESHOLD and moved[self.other.name] < MOVED_THRESHOLD
                    and not env.is_grasped(self.source.name))

    def make_expert(self, env: SimplerEnv) -> WaypointExpert:
        def plan(e: SimplerEnv) -> list[Waypoint]:
            src, tgt = self.source, self.target
            at = e.body_pos(src.name) + [0, 0, src.grasp_z]
            tpos = e.body_pos(tgt.name)
            away = at[:2] - tpos[:2]
            away /= np.linalg.norm(away)
            # Round objects: fingers close across the approach line, so opening them at the release
            # cannot knock the target; the sponge is held across its short side.
            q = down_quat(_body_yaw(e, src.name) if src.kind == "box" else math.atan2(away[1], away[0]))
            gap = src.footprint + tgt.footprint + 0.02
            place = np.array([*(tpos[:2] + gap * away), src.rest_z + src.grasp_z + 0.01])
            carry = max(0.2, src.rest_z + src.grasp_z + 2 * max(p.rest_z for p in (tgt, self.other)) + 0.03)
            held = holding(src.name)

            def near_target(env: SimplerEnv) -> bool:  # after the release: else pick it up again
                return _planar_dist(env.body_pos(src.name), env.body_pos(tgt.name)) < NEAR_THRESHOLD

            return [
                Waypoint(at + [0, 0, 0.1], -1, q, tol=0.015, max_steps=25, skip=held),
                Waypoint(at, -1, q, tol=0.007, max_steps=15, skip=held),
                Waypoint(at, 1, q, tol=1.0, rot_tol=10, max_steps=4, hold=3, guard=either(held, hand_near(at, GRASP_REACH))),
                Waypoint(np.array([at[0], at[1], carry]), 1, q, tol=0.02, max_steps=15, guard=held),
                Waypoint(np.array([place[0], place[1], carry]), 1, q, tol=0.02, max_steps=20, guard=held),
                Waypoint(place, 1, q, tol=0.01, max_steps=12, guard=held),
                Waypoint(place, -1, q, tol=1.0, rot_tol=10, max_steps=3, hold=2),
                Waypoint(place + [0, 0, 0.1], -1, q, tol=0.02, max_steps=15, guard=near_target),
            ]

        return WaypointExpert(env, plan)


def _body_yaw(env: SimplerEnv, name: str) -> float:
    """Grasp yaw that makes the fingers close along the body's y axis, folded into [-pi/2, pi/2)
    (a parallel grasp is symmetric)."""
    xaxis = env.data.body(name).xmat.reshape(3, 3)[:, 0]
    a = math.atan2(xaxis[1], xaxis[0])
    return (a + np.pi / 2) % np.pi - np.pi / 2


# ------------------------------------------------------------------------------- cabinet
# The cabinet stands to the robot's left, its front facing -y (towards the agentview camera, which
# looks across the table from the right), so the drawers slide out sideways into the workspace.
# Cabinet-local frame: x = 0 is the front plane and +x points into the cabinet, z = 0 the table.
# The cabinet is a mocap body whose pose is jittered per episode (SIMPLER varies the robot's pose
# relative to the cabinet instead).
CAB_ORIGIN = np.array([0.0, 0.16, 0.0])  # nominal front-centre point on the table, world frame
CAB_YAW = np.pi / 2  # nominal yaw: local +x -> world +y
CAB_JITTER = (0.03, 0.02, 0.08)  # per-episode x, y (m) and yaw (rad) half ranges
CAB_DEPTH = 0.22
CAB_HALF_W = 0.17
DRAWER_LEVELS = {"bottom": 0.03, "middle": 0.13, "top": 0.23}  # bottom edge of each drawer
DRAWER_H = 0.1
CAB_TOP = 0.33
DRAWER_RANGE = 0.2
HANDLE_OUT = 0.035  # handle bar distance in front of the drawer front
OPEN_THRESHOLD = 0.15  # SIMPLER: drawer joint >= 0.15 m is open
CLOSED_THRESHOLD = 0.05  # SIMPLER: drawer joint <= 0.05 m is closed
PULL_TO = 0.19
HANDLE_REACH = 0.03  # metres: the hand holds the handle while within this of it
# Distractors keep off the cabinet and the strip in front of it where drawers slide out.
CAB_KEEP_CLEAR = ((CAB_ORIGIN[0], CAB_ORIGIN[1] + CAB_DEPTH / 2, 0.26), (CAB_ORIGIN[0], CAB_ORIGIN[1] - 0.12, 0.21))


def _place_cabinet(env: SimplerEnv, rng: np.random.Generator) -> None:
    mocap = env.model.body("cabinet").mocapid[0]
    jx, jy, jyaw = CAB_JITTER
    env.data.mocap_pos[mocap] = CAB_ORIGIN + [rng.uniform(-jx, jx), rng.uniform(-jy, jy), 0.0]
    env.data.mocap_quat[mocap] = _yaw_quat(CAB_YAW + rng.uniform(-jyaw, jyaw))


def _cab_pose(env: SimplerEnv) -> tuple[np.ndarray, np.ndarray]:
    """Cabinet origin (3,) and rotation (3, 3) from the mocap state (valid before ``mj_forward``)."""
    mocap = env.model.body("cabinet").mocapid[0]
    rot = np.zeros(9)
    mujoco.mju_quat2Mat(rot, env.data.mocap_quat[mocap])
    return env.data.mocap_pos[mocap].copy(), rot.reshape(3, 3)


def cab_point(env: SimplerEnv, local) -> np.ndarray:
    """World position of a point given in the cabinet-local frame."""
    origin, rot = _cab_pose(env)
    return origin + rot @ np.asarray(local, dtype=float)


def _approach_quat(env: SimplerEnv) -> np.ndarray:
    """Hand approach axis along the cabinet's inward normal, fingers closing horizontally."""
    return _quat_mul(env.data.mocap_quat[env.model.body("cabinet").mocapid[0]], FORWARD_QUAT)


def _cabinet_xml() -> str:
    wood, dark = "0.62 0.5 0.36 1", "0.5 0.4 0.28 1"
    # Static shell: collides with the hand and objects, not with the drawers.
    shell = 'contype="2" conaffinity="1"'
    hw, hd = CAB_HALF_W, CAB_DEPTH / 2
    side_h = CAB_TOP / 2 + 0.01
    parts = [
        f'<body name="cabinet" mocap="true" pos="{CAB_ORIGIN[0]} {CAB_ORIGIN[1]} 0" euler="0 0 {CAB_YAW}">',
        f'<geom type="box" size="{hd} 0.01 {side_h}" pos="{hd} {hw + 0.01} {side_h}" rgba="{wood}" {shell}/>',
        f'<geom type="box" size="{hd} 0.01 {side_h}" pos="{hd} {-hw - 0.01} {side_h}" rgba="{wood}" {shell}/>',
        (f'<geom name="cabinet_top" type="box" size="{hd} {hw + 0.02} 0.01" pos="{hd} 0 {CAB_TOP + 0.01}" '
         f'rgba="{wood}" {shell}/>'),
        (f'<geom type="box" size="0.01 {hw} {CAB_TOP / 2}" pos="{CAB_DEPTH - 0.01} 0 {CAB_TOP / 2}" '
         f'rgba="{dark}" {shell}/>'),
        f'<geom type="box" size="{hd} {hw} 0.015" pos="{hd} 0 0.015" rgba="{dark}" {shell}/>',
    ]
    for level, z0 in DRAWER_LEVELS.items():
        parts.append(_drawer_xml(level, z0 + DRAWER_H / 2))
    parts.append("</body>")
    return "".join(parts)


def _drawer_xml(level: str, zc: float) -> str:
    """A drawer body (slide joint along local -x) whose front's outer face is flush with x = 0 when shut."""
    hd, hw, hh = CAB_DEPTH / 2 - 0.01, CAB_HALF_W - 0.005, DRAWER_H / 2 - 0.004
    face, inner = "0.72 0.6 0.45 1", "0.55 0.45 0.33 1"
    metal = "0.7 0.7 0.72 1"
    dr = 'contype="4" conaffinity="1"'
    wall = 0.05  # inner wall height
    fx = -hd - 0.01  # front panel centre; its outer face is at -hd - 0.02
    hx = -hd - 0.02 - HANDLE_OUT
    return (
        f'<body name="{level}_drawer" pos="{hd + 0.02} 0 {zc}">'
        f'<joint name="{level}_drawer" type="slide" axis="-1 0 0" range="0 {DRAWER_RANGE}" damping="8" '
        f'frictionloss="0.5" armature="0.05"/>'
        f'<inertial pos="0 0 0" mass="0.8" diaginertia="0.01 0.01 0.01"/>'
        f'<geom type="box" size="0.01 {hw} {hh}" pos="{fx} 0 0" rgba="{face}" {dr}/>'
        f'<geom name="{level}_drawer_bottom" type="box" size="{hd} {hw - 0.01} 0.005" pos="0.01 0 {-hh + 0.005}" '
        f'rgba="{inner}" {dr}/>'
        f'<geom type="box" size="{hd} 0.005 {wall / 2}" pos="0.01 {hw - 0.005} {-hh + wall / 2}" rgba="{inner}" {dr}/>'
        f'<geom type="box" size="{hd} 0.005 {wall / 2}" pos="0.01 {-hw + 0.005} {-hh + wall / 2}" rgba="{inner}" {dr}/>'
        f'<geom type="box" size="0.005 {hw} {wall / 2}" pos="{hd + 0.005} 0 {-hh + wall / 2}" rgba="{inner}" {dr}/>'
        f'<geom name="{level}_handle" type="capsule" size="0.008 0.03" pos="{hx} 0 0" rgba="{metal}" '
        f'friction="1.5 0.02 0.002" {dr}/>'
        f'<geom type="box" size="{HANDLE_OUT / 2} 0.005 0.005" pos="{hx + HANDLE_OUT / 2} 0 0.03" rgba="{metal}" '
        f'contype="0" conaffinity="0"/>'
        f'<geom type="box" size="{HANDLE_OUT / 2} 0.005 0.005" pos="{hx + HANDLE_OUT / 2} 0 -0.03" rgba="{metal}" '
        f'contype="0" conaffinity="0"/>'
        f'<site name="{level}_handle" pos="{hx} 0 0" size="0.005" rgba="0 0 0 0" group="3"/>'
        f'<site name="{level}_inside" pos="0.01 0 0" size="0.005" rgba="0 0 0 0" group="3"/>'
        "</body>"
    )


def drawer_qpos(env: SimplerEnv, level: str) -> float:
    """Opening of the ``level`` drawer in metres (0 = shut)."""
    return float(env.data.qpos[env.model.jnt_qposadr[env.model.joint(f"{level}_drawer").id]])


def _set_drawer(env: SimplerEnv, level: str, q: float) -> None:
    env.data.qpos[env.model.jnt_qposadr[env.model.joint(f"{level}_drawer").id]] = q


def _site(env: SimplerEnv, name: str) -> np.ndarray:
    return env.data.site(name).xpos.copy()


def _handle_local(env: SimplerEnv, level: str) -> np.ndarray:
    origin, rot = _cab_pose(env)
    return rot.T @ (_site(env, f"{level}_handle") - origin)


def _open_drawer_waypoints(env: SimplerEnv, level: str) -> list[Waypoint]:
    """Grasp the handle with the hand pointing into the cabinet, pull the drawer open, let go, back off."""
    h = _handle_local(env, level)
    q = _approach_quat(env)
    pull = max(PULL_TO - drawer_qpos(env, level), 0.0)
    on_handle = hand_near(lambda e: _site(e, f"{level}_handle"), HANDLE_REACH)

    def opened(e: SimplerEnv) -> bool:
        return drawer_qpos(e, level) >= OPEN_THRESHOLD

    def gripping(e: SimplerEnv) -> bool:  # the fingers closed at the handle: the approach is done
        return on_handle(e) and e.gripper_opening() < 0.5

    def approached(e: SimplerEnv) -> bool:  # in a clean run neither holds before the grasp
        return gripping(e) or opened(e)

    return [
        Waypoint(cab_point(env, [h[0] - 0.1, h[1], max(h[2], 0.15)]), -1, q, tol=0.02, rot_tol=0.1, max_steps=25,
                 skip=approached),
        Waypoint(cab_point(env, h + [-0.1, 0, 0]), -1, q, tol=0.01, max_steps=15, skip=approached),
        Waypoint(cab_point(env, h), -1, q, tol=0.007, max_steps=15, skip=approached),
        Waypoint(cab_point(env, h), 1, q, tol=1.0, rot_tol=10, max_steps=4, hold=3, guard=on_handle, skip=opened),
        Waypoint(cab_point(env, h - [pull / 2, 0, 0]), 1, q, tol=0.015, max_steps=10, guard=on_handle),
        Waypoint(cab_point(env, h - [pull, 0, 0]), 1, q, tol=0.01, max_steps=15, guard=on_handle),
        Waypoint(cab_point(env, h - [pull, 0, 0]), -1, q, tol=1.0, rot_tol=10, max_steps=3, hold=2),
        Waypoint(cab_point(env, h - [pull + 0.08, 0, 0]), -1, q, tol=0.02, max_steps=12, guard=opened),
    ]


def _close_drawer_waypoints(env: SimplerEnv, level: str) -> list[Waypoint]:
    """Push the drawer front beside the handle with closed fingers until it is shut, then back off."""
    h = _handle_local(env, level)
    q = _approach_quat(env)
    front = h[0] + HANDLE_OUT
    side = 0.09

    def closed(e: SimplerEnv) -> bool:
        return drawer_qpos(e, level) <= CLOSED_THRESHOLD

    return [
        Waypoint(cab_point(env, [front - 0.07, side, max(h[2], 0.15)]), 1, q, tol=0.02, rot_tol=0.1, max_steps=25,
                 skip=closed),
        Waypoint(cab_point(env, [front - 0.07, side, h[2]]), 1, q, tol=0.01, max_steps=15, skip=closed),
        Waypoint(cab_point(env, [-0.01, side, h[2]]), 1, q, tol=0.01, max_steps=30),
        Waypoint(cab_point(env, [-0.1, side, h[2]]), 1, q, tol=0.02, max_steps=15, guard=closed),
    ]


class _DrawerTask(Task):
    level = "top"
    opening = True
    max_steps = 113
    keep_clear = CAB_KEEP_CLEAR

    def __init__(self):
        self.instruction = f"{'open' if self.opening else 'close'} {self.level} drawer"

    def objects_xml(self) -> str:
        return _cabinet_xml()

    def reset_objects(self, env: SimplerEnv, rng: np.random.Generator) -> None:
        _place_cabinet(env, rng)
        for level in DRAWER_LEVELS:
            _set_drawer(env, level, 0.0)
        if not self.opening:
            _set_drawer(env, self.level, rng.uniform(0.16, DRAWER_RANGE))

    def success(self, env: SimplerEnv) -> bool:
        q = drawer_qpos(env, self.level)
        return q >= OPEN_THRESHOLD if self.opening else q <= CLOSED_THRESHOLD

    def make_expert(self, env: SimplerEnv) -> WaypointExpert:
        make = _open_drawer_waypoints if self.opening else _close_drawer_waypoints
        return WaypointExpert(env, lambda e: make(e, self.level))


def _drawer_task(level: str, opening: bool) -> type[_DrawerTask]:
    verb = "open" if opening else "close"
    cls_name = f"{verb.capitalize()}{level.capitalize()}Drawer"
    return type(cls_name, (_DrawerTask,), {"name": f"{verb}_{level}_drawer", "level": level, "opening": opening,
                                           "__doc__": f"{verb.capitalize()} the {level} drawer of the cabinet."})


# ------------------------------------------------------------------- apple into drawer
class PlaceAppleInClosedTopDrawer(Task):
    """Open the (closed) top drawer, then pick the apple from the cabinet top and drop it in."""

    name = "place_apple_in_closed_top_drawer"
    instruction = "open top drawer; place apple into top drawer"
    max_steps = 200
    keep_clear = CAB_KEEP_CLEAR

    def __init__(self):
        self.apple = PROPS["apple"]

    def objects_xml(self) -> str:
        return _cabinet_xml() + self.apple.body_xml()

    def reset_objects(self, env: SimplerEnv, rng: np.random.Generator) -> None:
        _place_cabinet(env, rng)
        for level in DRAWER_LEVELS:
            _set_drawer(env, level, 0.0)
        local = [0.06 + rng.uniform(-0.015, 0.015), rng.uniform(-0.1, 0.1), CAB_TOP + 0.02 + self.apple.rest_z + 0.001]
        env.set_free_body(self.apple.name, cab_point(env, local))

    def success(self, env: SimplerEnv) -> bool:
        return _inside_drawer(env, self.apple.name, "top") and not env.is_grasped(self.apple.name)

    def make_expert(self, env: SimplerEnv) -> WaypointExpert:
        name = self.apple.name

        def plan(e: SimplerEnv) -> list[Waypoint]:
            down = down_quat(CAB_YAW)
            # replanning with the drawer already open (a learner opened it) skips the opening
            opened = [] if drawer_qpos(e, "top") >= OPEN_THRESHOLD else _open_drawer_waypoints(e, "top")
            back = opened[-1].pos if opened else e.eef_pose()[0]
            at = e.body_pos(name) + [0, 0, self.apple.grasp_z]
            held = holding(name)

            def in_drawer(env: SimplerEnv) -> bool:
                return _inside_drawer(env, name, "top")

            carry_z = CAB_TOP + 0.02 + 0.14
            drop = cab_point(e, [-PULL_TO + 0.09, 0.0, DRAWER_LEVELS["top"] + 0.1])
            return opened + [
                Waypoint(np.array([back[0], back[1], carry_z]), -1, down, tol=0.03, rot_tol=0.15, max_steps=25,
                         skip=held),
                Waypoint(at + [0, 0, 0.1], -1, down, tol=0.015, max_steps=25, skip=held),
                Waypoint(at, -1, down, tol=0.007, max_steps=15, skip=held),
                Waypoint(at, 1, down, tol=1.0, rot_tol=10, max_steps=4, hold=3,
                         guard=either(held, hand_near(at, GRASP_REACH))),
                Waypoint(np.array([at[0], at[1], carry_z]), 1, down, tol=0.02, max_steps=15, guard=held),
                Waypoint(np.array([drop[0], drop[1], carry_z]), 1, down, tol=0.02, max_steps=20, guard=held),
                Waypoint(drop, 1, down, tol=0.015, max_steps=12, guard=held),
                Waypoint(drop, -1, down, tol=1.0, rot_tol=10, max_steps=3, hold=2),
                Waypoint(np.array([drop[0], drop[1], carry_z]), -1, down, tol=0.02, max_steps=15, guard=in_drawer),
            ]

        return WaypointExpert(env, plan)


def _inside_drawer(env: SimplerEnv, body: str, level: str) -> bool:
    """``body``'s origin lies within the drawer's inner box (drawer frame), above its bottom."""
    pos = env.body_pos(body)
    centre = _site(env, f"{level}_inside")
    local = env.data.site(f"{level}_inside").xmat.reshape(3, 3).T @ (pos - centre)
    hd, hw = CAB_DEPTH / 2 - 0.01, CAB_HALF_W - 0.015
    return bool(abs(local[0]) < hd and abs(local[1]) < hw and -DRAWER_H / 2 < local[2] < DRAWER_H / 2 + 0.03)


# ---------------------------------------------------------------------------- registry
TASKS: OrderedDict[str, type[Task]] = OrderedDict(
    (cls.name, cls) for cls in (
        PickCokeCanHorizontal,
        PickCokeCanVertical,
        PickCokeCanStanding,
        MoveNear,
        *(_drawer_task(level, True) for level in ("top", "middle", "bottom")),
        *(_drawer_task(level, False) for level in ("top", "middle", "bottom")),
        PlaceAppleInClosedTopDrawer,
    )
)


def expert_rollout(task: str, episode_index: int, variant: str = "visual_matching", seed: int = 0) -> bool:
    """Run the scripted expert for one episode without rendering; return the final-step success."""
    env = SimplerEnv("simpler_google", TASKS[task](), ARM, variant=variant, seed=seed)
    env.reset(options={"episode_index": episode_index})
    expert = env.task_spec.make_expert(env)
    info = {"success": False}
    for _ in range(env.max_steps):
        _, _, _, _, info = env.step(expert.act(), render=False)
    env.close()
    return bool(info["success"])
