"""Scripted privileged-state expert for LIBERO tasks.

The expert reads the BDDL goal (``parsed_problem["goal_state"]``) and the simulator state, turns
each goal predicate into a short list of motion primitives, and tracks end-effector waypoints
with a proportional controller on OSC_POSE delta actions (position in units of 0.05 m, rotation in
units of 0.5 rad, world frame).

Predicates and primitives:

- ``On(A, B)``, ``In(A, B)``: pick ``A`` (grasp chosen by shape, below) and place it over ``B``
  (an object: its top centre; a region site: the site), then release and retreat. A target
  region inside a closed drawer gets the drawer opened first.
- ``Open(X)``, ``Close(X)`` on drawers (slide joints): open by approaching the handle (the drawer
  geom furthest along the opening direction) horizontally, closing the fingers vertically around
  it and pulling; close by pushing the front with closed fingers. Hinged doors are not handled
  (recorded in ``expert.unsupported``; the expert skips that goal).
- ``TurnOn(X)``, ``TurnOff(X)`` on knobs (hinge about z): push the lever end tangentially with
  closed fingers.

Grasps: wide, low, hollow objects (bowls, mugs wider than the gripper) are taken by the rim
nearest the robot, fingers closing radially; everything else from the top at its horizontal
centre, fingers closing across its narrowest horizontal extent. Goals already satisfied are
skipped. The plan is recomputed from the current state at every primitive boundary.
"""

from __future__ import annotations

import mujoco
import numpy as np

GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
MAX_OPENING = 0.075  # widest object the Panda gripper can close on, m
FINGERTIP_BELOW_SITE = 0.013  # fingertips reach this far below the grip site, m
POS_UNIT, ROT_UNIT = 0.05, 0.5  # OSC_POSE output_max: metres / radians per unit action


def _axis_angle_from_matrix(r: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix -> (3,) axis * angle."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle close to pi
        w, v = np.linalg.eigh((r + r.T) / 2.0)
        return v[:, np.argmax(w)] * angle
    return axis / norm * angle


def _rot_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class _Scene:
    """Geometry queries on a LIBERO robosuite environment (privileged state)."""

    def __init__(self, sim_env) -> None:
        self.env = sim_env
        self.model: mujoco.MjModel = sim_env.sim.model._model
        self.data: mujoco.MjData = sim_env.sim.data._data
        m = self.model
        self.grip_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "gripper0_grip_site")
        self.left = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "gripper0_leftfinger")
        self.right = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "gripper0_rightfinger")
        self._geoms: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ robot
    def eef_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.grip_site].copy()

    def eef_mat(self) -> np.ndarray:
        return self.data.site_xmat[self.grip_site].reshape(3, 3).copy()

    def closing_dir(self) -> np.ndarray:
        """Unit horizontal vector along which the fingers close."""
        d = self.data.xpos[self.right] - self.data.xpos[self.left]
        d[2] = 0.0
        return d / max(np.linalg.norm(d), 1e-9)

    def finger_gap(self) -> float:
        return float(np.linalg.norm(self.data.xpos[self.right] - self.data.xpos[self.left]))

    # ------------------------------------------------------------------ objects
    def body_id(self, name: str) -> int:
        return int(self.env.obj_body_id[name])

    def _subtree_geoms(self, body: int) -> np.ndarray:
        if body not in self._geoms:
            m = self.model
            ids = []
            for g in range(m.ngeom):
                if m.geom_contype[g] == 0 and m.geom_conaffinity[g] == 0:
                    continue
                b = m.geom_bodyid[g]
                while b not in (0, body):
                    b = m.body_parentid[b]
                if b == body:
                    ids.append(g)
            self._geoms[body] = np.array(ids, dtype=int)
        return self._geoms[body]

    def corners(self, body: int) -> np.ndarray:
        """World corners of the collision geoms' bounding boxes under ``body``: (8G, 3)."""
        signs = np.array(
            [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float
        )  # (8, 3)
        pts = []
        for g in self._subtree_geoms(body):
            c, h = self.model.geom_aabb[g, :3], self.model.geom_aabb[g, 3:]
            local = c + signs * h  # (8, 3)
            pts.append(self.data.geom_xpos[g] + local @ self.data.geom_xmat[g].reshape(3, 3).T)
        if not pts:
            return self.data.xpos[body][None].copy()
        return np.concatenate(pts)

    def box(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        pts = self.corners(body)
        return pts.min(axis=0), pts.max(axis=0)

    def obj_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.body_id(name)].copy()

    def site_pos(self, name: str) -> np.ndarray:
        sid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, name)
        return self.data.site_xpos[sid].copy()

    def grasp_direction(self, body: int, grasp_z: float, others: list[int]) -> tuple[np.ndarray, float]:
        """Horizontal finger-closing direction for a top grasp of ``body`` and the object's extent
        along it. Among directions whose extent fits the fingers, prefer those that keep the hand
        (a segment of +-0.11 m along the closing direction) clear of taller neighbours ``others``;
        the narrowest direction wins when nothing is close."""
        pts = self.corners(body)[:, :2]  # (8G, 2)
        centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
        obstacles = [self.corners(o) for o in others]
        obstacles = [c[:, :2] for c in obstacles if c[:, 2].max() > grasp_z + 0.02]
        obstacle_pts = np.concatenate(obstacles) if obstacles else np.zeros((0, 2))
        best, best_score, best_extent = np.array([0.0, 1.0, 0.0]), -np.inf, np.inf
        for theta in np.linspace(0.0, np.pi, 36, endpoint=False):
            d = np.array([np.cos(theta), np.sin(theta)])
            proj = pts @ d
            extent = float(proj.max() - proj.min())
            clearance = 0.06
            if len(obstacle_pts):
                rel = obstacle_pts - centre
                along = np.clip(rel @ d, -0.11, 0.11)
                clearance = min(clearance, float(np.linalg.norm(rel - along[:, None] * d, axis=1).min()))
            fits = extent <= MAX_OPENING - 0.005
            score = (min(clearance, 0.04) - extent) if fits else -1.0 - extent
            if score > best_score:
                best, best_score, best_extent = np.array([d[0], d[1], 0.0]), score, extent
        return best, best_extent


class LiberoExpert:
    """Privileged scripted policy for a :class:`tasks.libero.env.LiberoEnv`.

    ``reset()`` forgets the plan; ``act(obs) -> (7,)`` float action in [-1, 1]. Call ``reset``
    after every ``env.reset``.
    """

    version = "libero-expert-3"

    def __init__(self, env) -> None:
        self.env = env
        self.reset()

    def reset(self) -> None:
        """Forget the current plan (call after ``env.reset``)."""
        self.scene = _Scene(self.env.sim_env)
        self.goals = [tuple(g) for g in self.env.sim_env.parsed_problem["goal_state"]]
        self.down = None
        self.queue: list = []
        self.stage_steps = 0
        self.stage_mat: np.ndarray | None = None
        self.current_goal = None
        self.unsupported: set = set()

    # ------------------------------------------------------------------ predicates
    def _holds(self, goal: tuple) -> bool:
        se = self.env.sim_env
        states = se.object_states_dict
        name = goal[0].lower()
        if name in ("on", "in"):
            a, b = states[goal[1]], states[goal[2]]
            return bool(b.check_ontop(a)) if name == "on" else bool(b.check_contact(a) and b.check_contain(a))
        if name == "open":
            return bool(states[goal[1]].is_open())
        if name == "close":
            return bool(states[goal[1]].is_close())
        if name == "turnon":
            return bool(states[goal[1]].turn_on())
        if name == "turnoff":
            return bool(states[goal[1]].turn_off())
        raise ValueError(
            f"expert has no strategy for predicate {goal!r}; known: On, In, Open, Close, TurnOn, TurnOff"
        )

    # ------------------------------------------------------------------ planning
    def _plan(self) -> None:
        self.queue = []
        for goal in self.goals:
            if self._holds(goal):
                continue
            self.current_goal = goal
            kind = goal[0].lower()
            if kind in ("on", "in") and self._closed_drawer(goal[2]):
                self.queue = self._articulate(goal[2], open_=True)
            elif kind in ("on", "in"):
                self.queue = self._pick_place(goal[1], goal[2], inside=kind == "in")
            elif kind in ("open", "close"):
                self.queue = self._articulate(goal[1], open_=kind == "open")
            else:
                self.queue = self._press(goal[1], on=kind == "turnon")
            if self.queue:
                return
        self.current_goal = None

    def _closed_drawer(self, target: str) -> bool:
        """Whether ``target`` is a region inside a drawer that is not open yet."""
        se = self.env.sim_env
        site = se.object_sites_dict.get(target)
        if site is None or not getattr(site, "joints", None):
            return False
        ids, _ = self._joints(target)
        return (
            self.scene.model.jnt_type[ids[0]] == mujoco.mjtJoint.mjJNT_SLIDE
            and not se.object_states_dict[target].is_open()
        )

    def _grasp(self, obj: str) -> tuple[np.ndarray, np.ndarray]:
        """Grasp point (3,) and finger closing direction (3,) for ``obj``."""
        sc = self.scene
        body = sc.body_id(obj)
        lo, hi = sc.box(body)
        centre = (lo + hi) / 2.0
        height = hi[2] - lo[2]
        grasp_z = max(hi[2] - min(0.035, 0.5 * height), lo[2] + FINGERTIP_BELOW_SITE + 0.005)
        others = [sc.body_id(n) for n in self.env.sim_env.objects_dict if n != obj]
        direction, extent = sc.grasp_direction(body, grasp_z, others)
        if extent > MAX_OPENING:  # too wide for the fingers: take the rim nearest the robot
            radius = extent / 2.0
            u = sc.eef_pos() - centre
            u[2] = 0.0
            u = np.array([-1.0, 0.0, 0.0]) if np.linalg.norm(u) < 1e-6 else u / np.linalg.norm(u)
            point = centre + u * (radius - 0.015)
            point[2] = max(hi[2] - min(0.03, 0.6 * height), lo[2] + FINGERTIP_BELOW_SITE + 0.004)
            return point, u
        point = centre.copy()
        point[2] = grasp_z
        return point, direction

    def _target_top(self, target: str) -> tuple[np.ndarray, float, float]:
        """Target point (3,), the surface height to place on and the height to clear when carrying.

        Region sites give their own height as the surface; a movable parent (a basket) adds its
        rim as the height to clear. Objects give their top."""
        se, sc = self.env.sim_env, self.scene
        if target in se.object_sites_dict:
            point = sc.site_pos(target)
            parent = se.object_states_dict[target].parent_name
            clear = point[2]
            if parent in se.objects_dict:
                clear = max(clear, sc.box(sc.body_id(parent))[1][2])
            return point, float(point[2]), float(clear)
        hi = sc.box(sc.body_id(target))[1]
        return sc.obj_pos(target), float(hi[2]), float(hi[2])

    def _pick_place(self, obj: str, target: str, inside: bool) -> list:
        point, closing = self._grasp(obj)
        sc = self.scene
        obj_lo = sc.box(sc.body_id(obj))[0][2]
        below = point[2] - obj_lo  # grip site height above the object's bottom
        return [
            ("move", point + [0, 0, 0.12], closing, GRIPPER_OPEN, 0.02),
            ("move", point - [0, 0, 0.008], closing, GRIPPER_OPEN, 0.01),  # aim low: P control stops short
            ("grip", GRIPPER_CLOSE, 12),
            ("lift", obj, target, below, inside),
        ]

    def _joints(self, name: str) -> tuple[list[int], object]:
        """Joint ids moved by predicate argument ``name`` (a region site or an object) and the
        articulated object that judges them."""
        se = self.env.sim_env
        if name in se.object_sites_dict:
            joints = se.object_sites_dict[name].joints
            owner = se.get_object(se.object_states_dict[name].parent_name)
        else:
            owner = se.get_object(name)
            joints = owner.joints
        ids = [mujoco.mj_name2id(self.scene.model, mujoco.mjtObj.mjOBJ_JOINT, j) for j in joints]
        return ids, owner

    def _articulate(self, name: str, open_: bool) -> list:
        """Pull a drawer open by its handle, or push it shut. Hinged doors are not handled."""
        sc = self.scene
        m, d = sc.model, sc.data
        ids, owner = self._joints(name)
        if not ids or m.jnt_type[ids[0]] != mujoco.mjtJoint.mjJNT_SLIDE:
            self.unsupported.add(("hinge door", name))
            return []
        jid = ids[0]
        art = owner.object_properties["articulation"]
        sign = np.sign(np.mean(art["default_open_ranges"]) - np.mean(art["default_close_ranges"]))
        open_dir = sign * d.xaxis[jid].copy()  # world displacement of the drawer when it opens
        body = m.jnt_bodyid[jid]
        geoms = sc._subtree_geoms(body)
        handle = d.geom_xpos[geoms[np.argmax(d.geom_xpos[geoms] @ open_dir)]].copy()
        hi = sc.box(body)[1]
        if open_:  # approach horizontally, fingers closing vertically around the handle bar
            side = self._facing(-open_dir)
            pulled = handle + open_dir * 0.2
            return [
                ("move", handle + open_dir * 0.12 + [0, 0, 0.03], side, GRIPPER_OPEN, 0.02),
                ("move", handle + open_dir * 0.12, side, GRIPPER_OPEN, 0.01),
                ("move", handle - open_dir * 0.012, side, GRIPPER_OPEN, 0.006),
                ("grip", GRIPPER_CLOSE, 15),
                ("move", pulled, side, GRIPPER_CLOSE, 0.01, 0.3),
                ("release", 8),
                ("move", pulled + open_dir * 0.08, side, GRIPPER_OPEN, 0.02),
            ]
        qpos = d.qpos[m.jnt_qposadr[jid]]
        opening = abs(qpos)
        start = handle + open_dir * 0.04
        start[2] = max(handle[2], hi[2] - 0.03)
        return [
            ("grip", GRIPPER_CLOSE, 6),
            ("move", start + [0, 0, 0.08], open_dir, GRIPPER_CLOSE, 0.02),
            ("move", start, open_dir, GRIPPER_CLOSE, 0.01),
            ("move", start - open_dir * (opening + 0.06), open_dir, GRIPPER_CLOSE, 0.01),
            ("move", start - open_dir * (opening + 0.06) + [0, 0, 0.08], open_dir, GRIPPER_CLOSE, 0.02),
        ]

    def _press(self, name: str, on: bool) -> list:
        """Turn a knob (hinge about z) by pushing its lever end tangentially with closed fingers."""
        sc = self.scene
        m, d = sc.model, sc.data
        ids, owner = self._joints(name)
        if not ids or m.jnt_type[ids[0]] != mujoco.mjtJoint.mjJNT_HINGE:
            self.unsupported.add(("knob", name))
            return []
        jid = ids[0]
        art = owner.object_properties["articulation"]
        sign = 1.0 if np.mean(art["default_turnon_ranges"]) > np.mean(art["default_turnoff_ranges"]) else -1.0
        sign = sign if on else -sign
        axis, anchor = d.xaxis[jid].copy(), d.xanchor[jid].copy()
        geoms = sc._subtree_geoms(m.jnt_bodyid[jid])
        rel = d.geom_xpos[geoms] - anchor  # (G, 3)
        radial = rel - np.outer(rel @ axis, axis)
        lever = d.geom_xpos[geoms[np.argmax(np.linalg.norm(radial, axis=1))]].copy()
        u = lever - anchor
        u -= (u @ axis) * axis
        u /= max(np.linalg.norm(u), 1e-9)
        tangent = sign * np.cross(axis, u)
        top = sc.box(m.jnt_bodyid[jid])[1][2]
        start = lever - tangent * 0.035
        start[2] = top + FINGERTIP_BELOW_SITE - 0.012
        return [
            ("grip", GRIPPER_CLOSE, 6),
            ("move", start + [0, 0, 0.08], tangent, GRIPPER_CLOSE, 0.02),
            ("move", start, tangent, GRIPPER_CLOSE, 0.008),
            ("move", start + tangent * 0.09, tangent, GRIPPER_CLOSE, 0.01),
            ("move", start + tangent * 0.09 + [0, 0, 0.08], tangent, GRIPPER_CLOSE, 0.02),
        ]

    # ------------------------------------------------------------------ control
    def _facing(self, approach: np.ndarray) -> np.ndarray:
        """Gripper orientation (3, 3) pointing along horizontal ``approach`` with the fingers closing
        vertically; of the two such poses, the one nearer the current orientation."""
        z = approach / np.linalg.norm(approach)
        best, best_angle = None, np.inf
        for up in (np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])):
            mat = np.stack([up, np.cross(z, up), z], axis=1)  # columns: closing, y, approach
            angle = np.linalg.norm(_axis_angle_from_matrix(mat @ self.scene.eef_mat().T))
            if angle < best_angle:
                best, best_angle = mat, angle
        return best

    def _orientation(self, closing: np.ndarray | None) -> np.ndarray:
        """Target gripper orientation: pointing down, fingers closing along ``closing`` (or keeping
        the current yaw when None)."""
        sc = self.scene
        current = sc.eef_mat()
        if closing is None:
            return self._level(current)
        if closing.shape == (3, 3):  # an explicit orientation
            return closing
        cur = sc.closing_dir()
        yaw = np.arctan2(cur[0] * closing[1] - cur[1] * closing[0], cur @ closing)
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2  # the gripper is symmetric
        return self._level(_rot_z(yaw) @ current)

    def _servo(self, pos: np.ndarray, mat: np.ndarray, gripper: float) -> np.ndarray:
        """Proportional OSC_POSE delta action towards position ``pos`` (3,) and orientation ``mat`` (3, 3)."""
        sc = self.scene
        action = np.zeros(7)
        action[:3] = np.clip((pos - sc.eef_pos()) / POS_UNIT * 1.5, -1.0, 1.0)
        err = _axis_angle_from_matrix(mat @ sc.eef_mat().T)
        action[3:6] = np.clip(err / ROT_UNIT * 1.5, -1.0, 1.0)
        action[6] = gripper
        return action

    def _level(self, r: np.ndarray) -> np.ndarray:
        """Rotate ``r`` so the gripper's approach axis points straight down (the reset pose's) again."""
        z = r[:, 2]
        want = self.down[:, 2]
        axis = np.cross(z, want)
        s, c = np.linalg.norm(axis), float(z @ want)
        if s < 1e-9:
            return r
        k = axis / s
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        angle = np.arctan2(s, c)
        return (np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx) @ r

    def act(self, obs: dict) -> np.ndarray:
        """(7,) action for the current state (``obs`` is not needed: the expert reads the simulator)."""
        if self.down is None:
            self.down = self.scene.eef_mat()
        for _ in range(8):
            if not self.queue:
                self._plan()
                self.stage_steps = 0
                if not self.queue:
                    return self._servo(self.scene.eef_pos(), self._level(self.scene.eef_mat()), GRIPPER_OPEN)
            action = self._step_stage()
            if action is not None:
                self.stage_steps += 1
                return action
            self.queue.pop(0)
            self.stage_steps = 0
        return self._servo(self.scene.eef_pos(), self._level(self.scene.eef_mat()), GRIPPER_OPEN)

    def _step_stage(self) -> np.ndarray | None:
        """Action for the head stage of the queue, or None when it is complete."""
        stage = self.queue[0]
        sc = self.scene
        kind = stage[0]
        if kind == "lift":
            _, obj, target, below, inside = stage
            self.queue[0:1] = self._carry(obj, target, below, inside)
            return self._step_stage()
        if self.stage_steps == 0:  # stage start: fix the orientation and the hold position
            if kind == "move":
                self.stage_mat = self._orientation(stage[2])
            elif self.stage_mat is None:
                self.stage_mat = sc.eef_mat()  # grip / release keep the previous stage's orientation
            self.stage_pos = sc.eef_pos()
            self.dists: list[float] = []
        if kind == "move":
            pos, grip, tol = stage[1], stage[3], stage[4]
            speed = stage[5] if len(stage) > 5 else 1.0
            dist = float(np.linalg.norm(pos - sc.eef_pos()))
            self.dists.append(dist)
            stalled = len(self.dists) > 12 and self.dists[-6] - dist < 0.002
            if dist < tol or stalled or self.stage_steps > 60:
                return None
            action = self._servo(pos, self.stage_mat, grip)
            action[:3] = np.clip(action[:3], -speed, speed)
            return action
        if kind in ("grip", "release"):
            grip, steps = (stage[1], stage[2]) if kind == "grip" else (GRIPPER_OPEN, stage[1])
            if self.stage_steps >= steps:
                return None
            return self._servo(self.stage_pos, self.stage_mat, grip)
        raise ValueError(f"unknown stage {kind!r}")

    def _carry(self, obj: str, target: str, below: float, inside: bool) -> list:
        """Stages after the grasp: lift, move over the target, lower, release, retreat."""
        sc = self.scene
        eef = sc.eef_pos()
        offset = eef - sc.obj_pos(obj)  # keep the grasp offset when placing the object's centre
        point, top, rim = self._target_top(target)
        clear = rim + 0.04 + below  # grip site height that keeps the object's bottom above the target
        carry = max(eef[2] + 0.10, clear + 0.03)
        hold = sc.closing_dir()
        goal_xy = point[:2] + offset[:2]
        place_z = top + (0.03 if inside else 0.015) + below
        return [
            ("move", np.array([eef[0], eef[1], carry]), hold, GRIPPER_CLOSE, 0.02),
            ("move", np.array([goal_xy[0], goal_xy[1], carry]), hold, GRIPPER_CLOSE, 0.01),
            ("move", np.array([goal_xy[0], goal_xy[1], place_z]), hold, GRIPPER_CLOSE, 0.008),
            ("release", 10),
            ("move", np.array([goal_xy[0], goal_xy[1], carry]), hold, GRIPPER_OPEN, 0.02),
        ]
