"""Scripted privileged-state expert for LIBERO tasks.

The expert reads the BDDL goal (``parsed_problem["goal_state"]``) and the simulator state, turns
each goal predicate into a short list of motion primitives, and tracks end-effector waypoints
with a proportional controller on OSC_POSE delta actions (position in units of 0.05 m, rotation in
units of 0.5 rad, world frame).

Predicates and primitives:

- ``On(A, B)``, ``In(A, B)``: pick ``A`` (grasp chosen by shape, below) and place it over ``B``
  (an object: its top centre; a region site: the site, or where it still has room when other
  objects already stand in it; a drawer region: its part nearest the open end), then release
  and retreat. The hand first rises over whatever stands near its way, and carries ``A`` above
  the neighbours on the way and above the rim of the target's container (a basket, a caddy).
  ``A`` is turned to fit a narrow region (a caddy slot). A target region inside a closed drawer
  gets the drawer opened first; when the open drawer would leave the hand no room to take ``A``
  from above, ``A`` is first set down nearby where it will. A region under its container's roof
  (a microwave) is entered from the side: ``A`` is taken by its handle with the hand leaning out
  from it, the handle turned towards the opening, and ``A`` carried in level just above the floor
  while the hand stays clear of the roof's front edge.
- ``Open(X)``, ``Close(X)`` on drawers (slide joints): open by approaching the handle (the drawer
  geom furthest along the opening direction) horizontally, closing the fingers vertically around
  it and pulling; close by pushing the handle home pointing down, fingers closing sideways and
  leaning towards the cabinet. Closing a container waits for the goals that fill it. A door on a
  vertical hinge is closed by pressing its outer face near the top with closed fingers and
  sweeping along its arc past the closed angle; opening one is not handled (recorded in
  ``expert.unsupported``; the expert skips that goal).
- ``TurnOn(X)``, ``TurnOff(X)`` on knobs (hinge about z): push the lever end tangentially with
  closed fingers.

Grasps: wide, low, hollow objects (bowls, mugs wider than the gripper) are taken by the rim,
fingers closing radially: the rim nearest the robot unless the hand would crowd a neighbour or a
fixture there. Solid objects too wide for the fingers (a moka pot) are taken by a thin part (the
handle) the open fingers can straddle. Everything else is taken from the top, fingers closing
across a horizontal extent that fits them, at its centre or shifted along its long side, scored
by the room the hand's and fingers' footprint leaves to taller neighbours. Hollow objects going
into a roofed region are taken by their handle (above). Of the two yaws that suit the symmetric
gripper, the nearer one is used unless it would turn the wrist past its joint limit. Goals
already satisfied are skipped. The plan is recomputed from the current state at every primitive
boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from tasks.errors import UserInputError

GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0


@dataclass
class Move:
    """Servo the grip site to ``pos`` with the hand closing along ``closing`` (None: level, pointing down),
    the gripper at ``gripper``; done within ``tol`` metres (and turned), on a stall, or after 60 steps.
    ``speed`` caps each translation action component."""

    pos: np.ndarray
    closing: np.ndarray | None
    gripper: float
    tol: float
    speed: float = 1.0


@dataclass
class Grip:
    """Hold the pose and set the gripper to ``gripper`` for ``steps`` steps."""

    gripper: float
    steps: int


@dataclass
class Release:
    """Hold the pose with the gripper open for ``steps`` steps."""

    steps: int


@dataclass
class Carry:
    """After a grasp of ``obj``: expands, when it is reached, into the moves that lift it, carry it over
    ``target``, lower it (``below``: how far the object hangs below the grip site; ``inside``: into a
    container) and release it."""

    obj: str
    target: str
    below: float
    inside: bool


Stage = Move | Grip | Release | Carry
MAX_OPENING = 0.075  # widest object the Panda gripper can close on, m
FINGERTIP_BELOW_SITE = 0.013  # fingertips reach this far below the grip site, m
POS_UNIT, ROT_UNIT = 0.05, 0.5  # OSC_POSE output_max: metres / radians per unit action
# Panda gripper footprint around the grip site (horizontal half sizes along / across the closing
# direction, m) and the hand's bottom above the site, m (from the collision geoms)
HAND_HALF, HAND_BOTTOM = (0.106, 0.037), 0.024
FINGER_HALF = (0.069, 0.014)
GRASP_CLEARANCE = 0.015  # footprint clearance beyond which neighbours no longer matter, m
PUSH_TILT = 0.5  # fingertips lean this far (rad) towards a drawer being pushed shut
RIM_ROOM = 0.005  # footprint clearance below which a rim grasp looks for another side, m
HANDLE_LEAN = 0.75  # a handle is taken with the hand leaning this far (rad) out from the object
HANDLE_REACH = 0.02  # a handle grasp: grip site below the handle's top, m
GRASP_EDGE_MARGIN = 0.014  # finger pads stay this far inside the object's side when shifting, m


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


# gripper parts: (half length along closing, half width across, bottom height above the site),
# and their footprints sampled every cm as (along, across) points
_GRIPPER_PARTS = [(HAND_HALF[0], HAND_HALF[1], HAND_BOTTOM), (FINGER_HALF[0], FINGER_HALF[1], -FINGERTIP_BELOW_SITE)]
_GRIPPER_SAMPLES = [
    np.stack(
        np.meshgrid(
            np.linspace(-a, a, int(np.ceil(2 * a / 0.01)) + 1),
            np.linspace(-c, c, max(int(np.ceil(2 * c / 0.01)) + 1, 2)),
        ),
        axis=-1,
    ).reshape(-1, 2)
    for a, c, _ in _GRIPPER_PARTS
]


def _boxes_overlap(ca, axa, ha, cb, axb, hb) -> bool:
    """Whether two oriented rectangles overlap (separating axis test): centres (2,), unit axes as
    rows (2, 2), half sizes (2,)."""
    delta = cb - ca
    for axis in np.concatenate([axa, axb]):
        ra = np.abs(axa @ axis) @ ha
        rb = np.abs(axb @ axis) @ hb
        if abs(delta @ axis) > ra + rb:
            return False
    return True


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

    def subtree_geoms(self, body: int) -> np.ndarray:
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
        for g in self.subtree_geoms(body):
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

    def geom_footprints(self, body: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per collision geom under ``body``: world-aligned horizontal box centre (G, 2), half sizes
        (G, 2) and top height (G,)."""
        geoms = self.subtree_geoms(body)
        if not len(geoms):
            return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
        c, h = self.model.geom_aabb[geoms, :3], self.model.geom_aabb[geoms, 3:]  # (G, 3)
        local = c[:, None] + signs[None] * h[:, None]  # (G, 8, 3)
        mats = self.data.geom_xmat[geoms].reshape(-1, 3, 3)
        pts = self.data.geom_xpos[geoms][:, None] + np.einsum("gkj,gij->gki", local, mats)
        lo, hi = pts.min(axis=1), pts.max(axis=1)
        return (lo[:, :2] + hi[:, :2]) / 2.0, (hi[:, :2] - lo[:, :2]) / 2.0, hi[:, 2]

    def geom_boxes(
        self, body: int, fixed: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]]:
        """Per collision geom under ``body`` (only those on no jointed part, a door, when ``fixed``):
        horizontal centre (2,), the two horizontal unit axes of its box (2, 2), their half sizes
        (2,), bottom and top heights."""
        out = []
        for g in self.subtree_geoms(body):
            if fixed and self._jointed(self.model.geom_bodyid[g], body):
                continue
            mat = self.data.geom_xmat[g].reshape(3, 3)
            c, h = self.model.geom_aabb[g, :3], self.model.geom_aabb[g, 3:]
            centre = self.data.geom_xpos[g] + mat @ c
            vertical = int(np.argmax(np.abs(mat[2])))  # the local axis nearest world z
            axes = [i for i in range(3) if i != vertical]
            dirs = mat[:2, axes].T  # (2, 2) rows: horizontal projections of the other local axes
            norms = np.linalg.norm(dirs, axis=1, keepdims=True)
            z_half = float(np.abs(mat[2]) @ h)
            out.append((centre[:2], dirs / np.maximum(norms, 1e-9), h[axes], centre[2] - z_half, centre[2] + z_half))
        return out

    def _jointed(self, body: int, root: int) -> bool:
        """Whether a joint moves ``body`` relative to its ancestor ``root``."""
        while body not in (0, root):
            if self.model.body_jntnum[body] > 0:
                return True
            body = self.model.body_parentid[body]
        return False

    def hollow(self, body: int) -> bool:
        """Whether no collision geom of ``body`` fills the middle of its footprint in its upper half
        (a bowl, a mug; not a moka pot)."""
        lo, hi = self.box(body)
        mid = (lo[:2] + hi[:2]) / 2.0
        for c, axes, half, bottom, top in self.geom_boxes(body):
            if top > (lo[2] + hi[2]) / 2.0 and np.all(np.abs(axes @ (mid - c)) <= half):
                return False
        return True

    def part_grasp(self, body: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Top grasp of a thin part (a handle) of a solid object too wide for the fingers: grasp
        point (3,) and closing direction (3,), or None. A part qualifies when it is thin enough
        along its narrow horizontal axis and the open fingers can come down on both sides of it
        without landing on another geom of the object; the highest such part wins."""
        boxes = self.geom_boxes(body)
        best, best_z = None, -np.inf
        for c, axes, half, bottom, top in boxes:
            k = int(np.argmin(half))
            if 2 * half[k] > MAX_OPENING - 0.03:
                continue
            d, p = axes[k], axes[1 - k]
            z = top - 0.02  # pads well on the part; the fingertips reach below it
            if z - bottom < 0.005:
                continue
            tip = z - FINGERTIP_BELOW_SITE
            fingers = [(c + sign * d * 0.045, d, p) for sign in (-1.0, 1.0)]  # landing spots
            blocked = False
            for oc, oaxes, ohalf, obottom, otop in boxes:
                if otop <= tip:
                    continue
                for fc, fd, fp in fingers:
                    if _boxes_overlap(fc, np.stack([fd, fp]), np.array([0.012, 0.014]), oc, oaxes, ohalf):
                        blocked = True
            if not blocked and z > best_z:
                best, best_z = (np.array([c[0], c[1], z]), np.array([d[0], d[1], 0.0])), z
        return best

    def obstacles(self, bodies: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Collision geom footprints of ``bodies``: centres (O, 2), half sizes (O, 2), tops (O,)."""
        boxes = [self.geom_footprints(b) for b in bodies]
        return (
            np.concatenate([b[0] for b in boxes] + [np.zeros((0, 2))]),
            np.concatenate([b[1] for b in boxes] + [np.zeros((0, 2))]),
            np.concatenate([b[2] for b in boxes] + [np.zeros(0)]),
        )

    def clearance(self, xy: np.ndarray, d: np.ndarray, grasp_z: float, obstacles) -> float:
        """Clearance (m, negative when overlapping, at most GRASP_CLEARANCE) between the gripper's
        footprint (hand and fingers, as boxes about the grip site at ``xy`` (2,) and height
        ``grasp_z``, fingers closing along ``d`` (2,)) and the ``obstacles`` tall enough to reach
        each part."""
        obs_c, obs_h, obs_top = obstacles
        p = np.array([-d[1], d[0]])
        clearance = GRASP_CLEARANCE
        for (_, _, bottom), sample in zip(_GRIPPER_PARTS, _GRIPPER_SAMPLES):
            near = obs_top > grasp_z + bottom
            if not near.any():
                continue
            world = xy + sample[:, :1] * d + sample[:, 1:] * p  # (S, 2)
            q = np.abs(world[:, None] - obs_c[near][None]) - obs_h[near][None]  # (S, O, 2)
            outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
            inside = np.minimum(q.max(axis=-1), 0.0)
            clearance = min(clearance, float((outside + inside).min()))
        return clearance

    def grasp_direction(
        self, body: int, grasp_z: float, others: list[int]
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """Top grasp of ``body``: horizontal finger-closing direction (3,), the object's extent
        along it, and the horizontal grasp centre (2,).

        Candidates are closing directions whose extent fits the fingers, centred on the object or
        shifted along the object's long side (keeping the finger pads on it). Each is scored by the
        clearance between the gripper's footprint (hand and fingers, as boxes around the grip
        site) and the collision geoms of neighbours ``others`` tall enough to reach it; the
        narrowest centred grasp wins when nothing is close."""
        pts = self.corners(body)[:, :2]  # (8G, 2)
        centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
        obstacles = self.obstacles(others)
        best, best_score, best_extent, best_xy = np.array([0.0, 1.0, 0.0]), -np.inf, np.inf, centre
        for theta in np.linspace(0.0, np.pi, 36, endpoint=False):
            d = np.array([np.cos(theta), np.sin(theta)])
            p = np.array([-d[1], d[0]])
            proj = pts @ d
            extent = float(proj.max() - proj.min())
            fits = extent <= MAX_OPENING - 0.005
            mid_d = (proj.max() + proj.min()) / 2.0 - centre @ d
            across = pts @ p
            room = max(0.0, (across.max() - across.min()) / 2.0 - GRASP_EDGE_MARGIN)
            mid_p = (across.max() + across.min()) / 2.0 - centre @ p
            shifts = np.unique(np.clip(np.array([0.0, -0.01, 0.01, -0.02, 0.02, -0.03, 0.03]), -room, room))
            for shift in shifts:
                xy = centre + d * mid_d + p * (mid_p + shift)
                clearance = self.clearance(xy, d, grasp_z, obstacles)
                score = (clearance - extent - 0.2 * abs(shift)) if fits else -1.0 - extent
                if score > best_score:
                    best, best_score, best_extent, best_xy = np.array([d[0], d[1], 0.0]), score, extent, xy
        return best, best_extent, best_xy


class LiberoExpert:
    """Privileged scripted policy for a :class:`tasks.libero.env.LiberoEnv`.

    ``reset()`` forgets the plan; ``act(obs) -> (7,)`` float action in [-1, 1]. Call ``reset``
    after every ``env.reset``.
    """

    version = "libero-expert-5"

    def __init__(self, env) -> None:
        self.env = env
        self.reset()

    def needs_obs_next(self) -> bool:
        """False: the expert reads the simulator, never the images, so an evaluation renders none of its
        frames (recording demonstrations and videos still render every step)."""
        return False

    def reset(self) -> None:
        """Forget the current plan (call after ``env.reset``)."""
        self.scene = _Scene(self.env.sim_env)
        self.goals = self._order([tuple(g) for g in self.env.sim_env.parsed_problem["goal_state"]])
        self.down = None
        self.queue: list = []
        self.stage_steps = 0
        self.stage_mat: np.ndarray | None = None
        self.current_goal = None
        self.unsupported: set = set()

    def _order(self, goals: list) -> list:
        """Goals in BDDL order, except that closing a container waits for the goals that put
        something into it (``Close(drawer)`` listed before ``In(bowl, drawer)``)."""
        se = self.env.sim_env

        def owner(name: str) -> str:
            if name in se.object_sites_dict:
                return se.object_states_dict[name].parent_name
            return name

        filled = {owner(g[2]) for g in goals if g[0].lower() in ("on", "in")}
        late = [g for g in goals if g[0].lower() == "close" and owner(g[1]) in filled]
        return [g for g in goals if g not in late] + late

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
        raise UserInputError(
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
                spot = self._spot_clear_of_drawer(goal[1], goal[2])
                if spot is not None:  # the open drawer would crowd the grasp: move the object first
                    self.queue = self._pick_place(goal[1], spot, inside=False)
                else:
                    self.queue = self._articulate(goal[2], open_=True)
            elif kind == "in" and self._entry(goal[2]) is not None:
                self.queue = self._insert(goal[1], goal[2])
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

    def _spot_clear_of_drawer(self, obj: str, region: str) -> np.ndarray | None:
        """Where to set ``obj`` down first, (x, y, surface height), when the drawer holding
        ``region``, once pulled fully open, would leave no room for the hand to take ``obj`` from
        above (the drawer hangs over it); None when there is room, or when no spot is found.

        Spots lie on the object's own surface, on a ring about it; a spot keeps the object clear
        of the other objects and fixtures and leaves the hand room for a grasp with the drawer
        open. The nearest spot wins."""
        sc = self.scene
        se = self.env.sim_env
        jid, open_dir = self._slide(region)
        owner = se.get_object(se.object_states_dict[region].parent_name)
        full = max(abs(v) for v in owner.object_properties["articulation"]["default_open_ranges"])
        extra = max(0.0, full - abs(sc.data.qpos[sc.model.jnt_qposadr[jid]]))
        body = sc.body_id(obj)
        lo, hi = sc.box(body)
        centre, half = (lo[:2] + hi[:2]) / 2.0, (hi[:2] - lo[:2]) / 2.0
        others = [sc.body_id(n) for n in se.objects_dict if n != obj]
        others += [sc.body_id(n) for n in getattr(se, "fixtures_dict", {}) if n in se.obj_body_id]
        oc, oh, otop = sc.obstacles(others)
        dc, dh, dtop = sc.geom_footprints(sc.model.jnt_bodyid[jid])
        opened = (
            np.concatenate([oc, dc + open_dir[:2] * extra]),
            np.concatenate([oh, dh]),
            np.concatenate([otop, dtop]),
        )
        point, closing = self._grasp(obj)
        if sc.hollow(body) and np.ptp(sc.corners(body)[:, :2] @ closing[:2]) > MAX_OPENING:
            reach = float(np.linalg.norm(point[:2] - centre))  # rim grasps: grip site off the centre
            dirs = [np.array([np.cos(a), np.sin(a)]) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
        else:
            reach, dirs = 0.0, [closing[:2]]
        offset = point[:2] - centre

        def room(xy: np.ndarray) -> float:
            if reach:
                return max(sc.clearance(xy + v * reach, v, point[2], opened) for v in dirs)
            return sc.clearance(xy + offset, dirs[0], point[2], opened)

        if room(centre) >= 0.0:
            return None
        radius = float(half.max())
        stand = otop > lo[2] + 0.005  # what stands up from the object's surface
        ring = [(r, a) for r in np.arange(0.04, 0.25, 0.02) for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)]
        base = np.asarray(se.robots[0].base_pos)[:2]
        for r, a in ring:  # nearest first
            xy = centre + r * np.array([np.cos(a), np.sin(a)])
            if not 0.35 < np.linalg.norm(xy - base) < 0.75:
                continue
            q = np.maximum(np.abs(xy - oc[stand]) - oh[stand], 0.0)
            if len(q) and np.linalg.norm(q, axis=1).min() < radius + 0.01:
                continue
            if room(xy) >= 0.0:
                return np.array([xy[0], xy[1], lo[2]])
        return None

    def _grasp(self, obj: str) -> tuple[np.ndarray, np.ndarray]:
        """Grasp point (3,) and finger closing direction (3,) for ``obj``."""
        sc = self.scene
        body = sc.body_id(obj)
        lo, hi = sc.box(body)
        centre = (lo + hi) / 2.0
        height = hi[2] - lo[2]
        grasp_z = max(hi[2] - min(0.035, 0.5 * height), lo[2] + FINGERTIP_BELOW_SITE + 0.005)
        others = [sc.body_id(n) for n in self.env.sim_env.objects_dict if n != obj]
        direction, extent, grasp_xy = sc.grasp_direction(body, grasp_z, others)
        if extent > MAX_OPENING and not sc.hollow(body):  # solid and too wide: a handle
            part = sc.part_grasp(body)
            if part is not None:
                return part
        if extent > MAX_OPENING:  # too wide for the fingers: take the rim nearest the robot
            radius = extent / 2.0
            u = sc.eef_pos() - centre
            u[2] = 0.0
            u = np.array([-1.0, 0.0, 0.0]) if np.linalg.norm(u) < 1e-6 else u / np.linalg.norm(u)
            rim_z = max(hi[2] - min(0.03, 0.6 * height), lo[2] + FINGERTIP_BELOW_SITE + 0.004)
            # the hand lies along the radius, across the object: when that crowds a neighbour or a
            # fixture (an open drawer above a bowl), take the rim where the hand has most room
            se = self.env.sim_env
            fixtures = [sc.body_id(n) for n in getattr(se, "fixtures_dict", {}) if n in se.obj_body_id]
            obstacles = sc.obstacles(others + fixtures)

            def room(v: np.ndarray) -> float:
                return sc.clearance(centre[:2] + v[:2] * (radius - 0.015), v[:2], rim_z, obstacles)

            if room(u) < RIM_ROOM:
                best, best_score = u, room(u)
                for a in np.linspace(0.0, 2 * np.pi, 24, endpoint=False):
                    v = np.array([np.cos(a), np.sin(a), 0.0])
                    score = room(v) - 0.003 * np.arccos(np.clip(v @ u, -1.0, 1.0))
                    if score > best_score + 0.002:
                        best, best_score = v, score
                u = best
            point = centre + u * (radius - 0.015)
            point[2] = rim_z
            return point, u
        point = np.array([grasp_xy[0], grasp_xy[1], grasp_z])
        return point, direction

    def _target_top(self, target: str | np.ndarray, obj: str | None = None) -> tuple[np.ndarray, float, float]:
        """Target point (3,), the surface height to place on and the height to clear when carrying.

        Region sites give their own height as the surface; their parent (a basket, a caddy; not a
        drawer's cabinet) adds its rim as the height to clear. A region inside a drawer gives the point of the region nearest
        the drawer's open end that still takes ``obj`` whole (the back of an open drawer lies
        under the cabinet). Objects give their top."""
        se, sc = self.env.sim_env, self.scene
        if isinstance(target, np.ndarray):  # a spot on a surface: (x, y, surface height)
            return target.copy(), float(target[2]), float(target[2])
        if target in se.object_sites_dict:
            point = sc.site_pos(target)
            parent = se.object_states_dict[target].parent_name
            clear = point[2]
            slide = self._slide(target)
            if parent in se.objects_dict or (
                slide is None and parent in se.obj_body_id and not self._roofed(parent, point)
            ):
                # a basket's or a caddy's rim (a drawer's cabinet top or a microwave's roof is
                # no rim: such regions are entered from the front)
                clear = max(clear, sc.box(sc.body_id(parent))[1][2])
            if slide is not None and obj is not None:
                open_dir = slide[1]
                site = se.object_sites_dict[target]
                sid = mujoco.mj_name2id(sc.model, mujoco.mjtObj.mjOBJ_SITE, target)
                half = np.abs(sc.data.site_xmat[sid].reshape(3, 3) @ np.asarray(site.size)) @ np.abs(open_dir)
                proj = sc.corners(sc.body_id(obj)) @ open_dir
                obj_half = (proj.max() - proj.min()) / 2.0
                point = point + open_dir * float(np.clip(half - obj_half - 0.01, 0.0, 0.8 * half))
            elif obj is not None:
                point = self._free_point(obj, target, point)
            return point, float(point[2]), float(clear)
        hi = sc.box(sc.body_id(target))[1]
        return sc.obj_pos(target), float(hi[2]), float(hi[2])

    def _roofed(self, parent: str, point: np.ndarray) -> bool:
        """Whether a collision geom of ``parent`` covers ``point`` (3,) from above."""
        for c, axes, half, bottom, top in self.scene.geom_boxes(self.scene.body_id(parent)):
            if bottom > point[2] + 0.01 and np.all(np.abs(axes @ (point[:2] - c)) <= half):
                return True
        return False

    def _free_point(self, obj: str, region: str, point: np.ndarray) -> np.ndarray:
        """Where in region site ``region`` to set ``obj`` (its body position) so that it keeps clear
        of the other objects already there (two moka pots on one stove): the site centre
        ``point`` when that is clear, else the point of the region's box with the most room."""
        se, sc = self.env.sim_env, self.scene
        lo, hi = sc.box(sc.body_id(obj))
        pos = sc.obj_pos(obj)[:2]
        radius = float(np.maximum(hi[:2] - pos, pos - lo[:2]).max())  # footprint about the body
        boxes = [sc.geom_footprints(sc.body_id(n)) for n in se.objects_dict if n != obj]
        oc = np.concatenate([b[0] for b in boxes] + [np.zeros((0, 2))])
        oh = np.concatenate([b[1] for b in boxes] + [np.zeros((0, 2))])
        if not len(oc):
            return point

        def room(xy: np.ndarray) -> np.ndarray:
            q = np.maximum(np.abs(xy[:, None] - oc[None]) - oh[None], 0.0)
            return np.linalg.norm(q, axis=-1).min(axis=1) - radius

        if room(point[None, :2])[0] >= 0.01:
            return point
        sid = mujoco.mj_name2id(sc.model, mujoco.mjtObj.mjOBJ_SITE, region)
        mat = sc.data.site_xmat[sid].reshape(3, 3)
        half = np.asarray(se.object_sites_dict[region].size, dtype=float)[:2] - 0.01
        u = np.linspace(-1.0, 1.0, 9)
        grid = np.stack(np.meshgrid(u, u), axis=-1).reshape(-1, 2) * half  # site frame
        xy = point[:2] + grid @ mat[:2, :2].T
        best = xy[np.argmax(room(xy) - 0.1 * np.linalg.norm(grid, axis=1))]
        return np.array([best[0], best[1], point[2]])

    def _fit_yaw(self, obj: str, target: str, hold: np.ndarray) -> np.ndarray | None:
        """Finger closing direction (3,) that turns the held ``obj`` so that its footprint fits the
        region site ``target`` (a narrow slot) when, held as it is, it does not; None when it
        fits already, ``target`` is no region, or turning would not help."""
        se, sc = self.env.sim_env, self.scene
        if isinstance(target, np.ndarray) or target not in se.object_sites_dict:
            return None
        sid = mujoco.mj_name2id(sc.model, mujoco.mjtObj.mjOBJ_SITE, target)
        size = np.asarray(se.object_sites_dict[target].size, dtype=float)
        room = 2.0 * np.abs(sc.data.site_xmat[sid].reshape(3, 3) @ size)[:2]  # world x, y extents
        pts = sc.corners(sc.body_id(obj))[:, :2]
        perp = np.array([-hold[1], hold[0]])
        e_c, e_p = np.ptp(pts @ hold[:2]), np.ptp(pts @ perp)

        def slack(c: np.ndarray) -> float:
            q = np.array([-c[1], c[0]])
            foot = np.abs(c) * e_c + np.abs(q) * e_p  # footprint along world x, y with closing c
            return float((room - foot).min())

        if slack(hold[:2]) >= 0.0:
            return None
        best, best_slack = None, slack(hold[:2])
        for c in (np.array([1.0, 0.0]), np.array([0.0, 1.0])):
            c = c if c @ hold[:2] >= 0 else -c
            if slack(c) > best_slack + 0.005:
                best, best_slack = np.array([c[0], c[1], 0.0]), slack(c)
        return best

    def _pick_place(self, obj: str, target: str, inside: bool) -> list[Stage]:
        point, closing = self._grasp(obj)
        sc = self.scene
        obj_lo = sc.box(sc.body_id(obj))[0][2]
        below = point[2] - obj_lo  # grip site height above the object's bottom
        eef = sc.eef_pos()
        # fingertips clear every neighbour near the way over to the grasp
        safe = self._path_top(eef[:2], point[:2], {obj}, fixtures=True) + FINGERTIP_BELOW_SITE + 0.03
        rise = []
        if eef[2] < safe - 0.01:
            rise = [Move(np.array([eef[0], eef[1], safe]), closing, GRIPPER_OPEN, 0.02)]
        return rise + [
            Move(np.array([point[0], point[1], max(point[2] + 0.12, safe)]), closing, GRIPPER_OPEN, 0.02),
            Move(point - [0, 0, 0.008], closing, GRIPPER_OPEN, 0.01),  # aim low: P control stops short
            Grip(GRIPPER_CLOSE, 12),
            Carry(obj, target, below, inside),
        ]

    def _entry(self, target: str) -> np.ndarray | None:
        """Horizontal unit direction (3,) in which an object is carried into region ``target``
        through its container's side opening (a microwave), for a region roofed by its parent that
        is no drawer; None otherwise. The opening is the side, of the region site's four horizontal
        axes, on which no fixed wall of the parent stands (a door is left out)."""
        se, sc = self.env.sim_env, self.scene
        if target not in se.object_sites_dict or self._slide(target) is not None:
            return None
        parent = se.object_states_dict[target].parent_name
        if parent not in se.obj_body_id:
            return None
        point = sc.site_pos(target)
        if not self._roofed(parent, point):
            return None
        walls = [b for b in sc.geom_boxes(sc.body_id(parent), fixed=True) if b[3] < point[2] < b[4]]
        sid = mujoco.mj_name2id(sc.model, mujoco.mjtObj.mjOBJ_SITE, target)
        mat = sc.data.site_xmat[sid].reshape(3, 3)
        steps = np.arange(0.01, 0.4, 0.01)
        for v in (mat[:2, 0], -mat[:2, 0], mat[:2, 1], -mat[:2, 1]):
            v = v / max(np.linalg.norm(v), 1e-9)
            ray = point[:2] + steps[:, None] * v  # (S, 2)
            inside = [np.all(np.abs((ray - c) @ axes.T) <= half, axis=1) for c, axes, half, _, _ in walls]
            if not any(hit.any() for hit in inside):
                return np.array([-v[0], -v[1], 0.0])
        return None

    def _handle(self, obj: str) -> tuple[np.ndarray, np.ndarray, float] | None:
        """Handle of a hollow object (a mug): grasp point (3,) on its outermost part, the horizontal
        unit direction (3,) from the object's axis out to it and its distance from the axis; None
        when no part stands out of the object's wall."""
        sc = self.scene
        body = sc.body_id(obj)
        if not sc.hollow(body):
            return None
        boxes = sc.geom_boxes(body)
        centres = np.array([b[0] for b in boxes])  # (G, 2)
        axis = centres.mean(axis=0)
        dist = np.linalg.norm(centres - axis, axis=1)
        k = int(np.argmax(dist))
        if dist[k] < np.median(dist) + 0.02:
            return None
        c, top = boxes[k][0], boxes[k][4]
        out = (c - axis) / dist[k]
        return np.array([c[0], c[1], top - HANDLE_REACH]), np.array([out[0], out[1], 0.0]), float(dist[k])

    def _lean(self, out: np.ndarray) -> np.ndarray:
        """Gripper orientation (3, 3) for a handle pointing along horizontal ``out``: fingers closing
        across it, the hand leaning HANDLE_LEAN out from the object (away from a roof over it); of
        the two such poses, the one nearer the current orientation that the wrist can reach."""
        approach = -np.sin(HANDLE_LEAN) * out - np.cos(HANDLE_LEAN) * np.array([0.0, 0.0, 1.0])
        across = np.cross([0.0, 0.0, 1.0], out)
        cur = self.scene.closing_dir()
        best, best_score = None, np.inf
        for sign in (1.0, -1.0):
            mat = np.stack([sign * across, np.cross(approach, sign * across), approach], axis=1)
            yaw = np.arctan2(cur[0] * mat[1, 0] - cur[1] * mat[0, 0], cur[:2] @ mat[:2, 0])
            # the nearer pose, unless it turns the wrist past its limit
            score = np.linalg.norm(_axis_angle_from_matrix(mat @ self.scene.eef_mat().T))
            score += 0.0 if self._wrist_room(yaw) else 10.0
            if score < best_score:
                best, best_score = mat, score
        return best

    def _insert(self, obj: str, target: str) -> list[Stage]:
        """Put ``obj`` into a region entered from the side (a microwave): take it by its handle with
        the hand leaning out, turn the handle towards the opening, carry the object in level just
        above the floor, the hand stopping short of the roof's front edge, set it down and back
        out. Objects without a handle fall back to :meth:`_pick_place`."""
        handle = self._handle(obj)
        if handle is None:
            return self._pick_place(obj, target, inside=True)
        se, sc = self.env.sim_env, self.scene
        grip, out, _ = handle
        entry = self._entry(target)
        point = sc.site_pos(target)
        parent = sc.body_id(se.object_states_dict[target].parent_name)
        walls = sc.geom_boxes(parent, fixed=True)
        covering = [b for b in walls if np.all(np.abs(b[1] @ (point[:2] - b[0])) <= b[2])]
        floor = max(b[4] for b in covering if b[4] <= point[2])
        roof = [b for b in covering if b[3] > point[2]]
        front = min(float(c @ entry[:2] - np.abs(axes @ entry[:2]) @ half) for c, axes, half, _, _ in roof)
        side = np.cross([0.0, 0.0, 1.0], entry)[:2]
        # the free span across the opening just inside it, at the region's height
        offsets = np.arange(-0.3, 0.3, 0.005)
        probe = point[:2] + entry[:2] * (front - point[:2] @ entry[:2] + 0.03) + offsets[:, None] * side
        free = np.ones(len(offsets), dtype=bool)
        for c, axes, half, bottom, top in walls:
            if bottom < point[2] < top:
                free &= ~np.all(np.abs((probe - c) @ axes.T) <= half, axis=1)
        here = int(np.argmin(np.abs(offsets)))
        lo_i = hi_i = here
        while lo_i > 0 and free[lo_i - 1]:
            lo_i -= 1
        while hi_i < len(offsets) - 1 and free[hi_i + 1]:
            hi_i += 1
        lateral = (offsets[lo_i] + offsets[hi_i]) / 2.0
        below = grip[2] - sc.box(sc.body_id(obj))[0][2]  # grip site above the object's bottom
        carry_z = floor + 0.02 + below
        # the leaning hand's parts above the roof's underside stay 2 cm behind the grip site
        put_xy = point[:2] + side * lateral + entry[:2] * (front - point[:2] @ entry[:2] - 0.03)
        put = np.array([put_xy[0], put_xy[1], carry_z])
        take = self._lean(out)
        approach = take[:, 2]
        pre = grip - approach * 0.08
        # over to the handle pointing down, clear of what stands near the way, before leaning
        eef = sc.eef_pos()
        safe = self._path_top(eef[:2], pre[:2], {obj}, fixtures=True) + FINGERTIP_BELOW_SITE + 0.03
        stages = [
            Move(np.array([pre[0], pre[1], max(safe, eef[2], pre[2] + 0.05)]), None, GRIPPER_OPEN, 0.02),
            Move(pre, take, GRIPPER_OPEN, 0.015),
            Move(grip + approach * 0.004, take, GRIPPER_OPEN, 0.008, 0.5),
            Grip(GRIPPER_CLOSE, 12),
            Move(np.array([grip[0], grip[1], max(carry_z, grip[2] + 0.04)]), take, GRIPPER_CLOSE, 0.02),
        ]
        place = self._lean(-entry)
        back = place[:, 2] * -0.08
        return stages + [
            Move(put - entry * 0.12, place, GRIPPER_CLOSE, 0.015),
            Move(put, place, GRIPPER_CLOSE, 0.01, 0.5),
            Move(put - [0, 0, 0.015], place, GRIPPER_CLOSE, 0.008, 0.5),
            Release(10),
            Move(put + back, place, GRIPPER_OPEN, 0.02),
            # point the hand down again before the next primitive
            Move(put + back + [0, 0, 0.06], None, GRIPPER_OPEN, 0.02),
        ]

    def _path_top(
        self, a: np.ndarray, b: np.ndarray, exclude: set, margin: float = 0.07, fixtures: bool = False
    ) -> float:
        """Highest top of the movable objects (and the fixtures, when ``fixtures``; but
        ``exclude``) whose collision geoms come within ``margin`` of the horizontal segment
        ``a`` -> ``b`` (2,); -inf when none does."""
        sc = self.scene
        se = self.env.sim_env
        n = max(int(np.linalg.norm(b - a) / 0.01), 1) + 1
        path = a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)  # (n, 2)
        top = -np.inf
        names = list(se.objects_dict)
        if fixtures:
            names += [f for f in getattr(se, "fixtures_dict", {}) if f in se.obj_body_id]
        for name in names:
            if name in exclude:
                continue
            c, h, z = sc.geom_footprints(sc.body_id(name))
            if not len(z):
                continue
            q = np.maximum(np.abs(path[:, None] - c[None]) - h[None], 0.0)  # (n, G, 2)
            near = np.linalg.norm(q, axis=-1).min(axis=0) < margin  # (G,)
            if near.any():
                top = max(top, float(z[near].max()))
        return top

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

    def _slide(self, name: str) -> tuple[int, np.ndarray] | None:
        """Slide joint moved by ``name`` (a drawer region or object) and the world direction (3,)
        the drawer moves when it opens; None when ``name`` moves no slide joint."""
        sc = self.scene
        se = self.env.sim_env
        if name in se.object_sites_dict and not getattr(se.object_sites_dict[name], "joints", None):
            return None
        ids, owner = self._joints(name)
        if not ids or sc.model.jnt_type[ids[0]] != mujoco.mjtJoint.mjJNT_SLIDE:
            return None
        art = owner.object_properties["articulation"]
        sign = np.sign(np.mean(art["default_open_ranges"]) - np.mean(art["default_close_ranges"]))
        return ids[0], sign * sc.data.xaxis[ids[0]].copy()

    def _articulate(self, name: str, open_: bool) -> list[Stage]:
        """Pull a drawer open by its handle, or push it shut; swing a hinged door shut."""
        sc = self.scene
        m, d = sc.model, sc.data
        ids, owner = self._joints(name)
        if ids and m.jnt_type[ids[0]] == mujoco.mjtJoint.mjJNT_HINGE and not open_:
            return self._swing_shut(ids[0], owner)
        if not ids or m.jnt_type[ids[0]] != mujoco.mjtJoint.mjJNT_SLIDE:
            self.unsupported.add(("opening a hinge door", name))
            return []
        jid = ids[0]
        art = owner.object_properties["articulation"]
        sign = np.sign(np.mean(art["default_open_ranges"]) - np.mean(art["default_close_ranges"]))
        open_dir = sign * d.xaxis[jid].copy()  # world displacement of the drawer when it opens
        body = m.jnt_bodyid[jid]
        geoms = sc.subtree_geoms(body)
        handle = d.geom_xpos[geoms[np.argmax(d.geom_xpos[geoms] @ open_dir)]].copy()
        if open_:  # approach horizontally, fingers closing vertically around the handle bar
            side = self._facing(-open_dir)
            art_open = max(abs(v) for v in art["default_open_ranges"])
            travel = max(0.0, art_open - abs(d.qpos[m.jnt_qposadr[jid]])) + 0.02
            pulled = handle + open_dir * travel  # a little past fully open: P control stops short
            base = np.asarray(self.env.sim_env.robots[0].base_pos)
            homeward = base - pulled
            homeward[2] = 0.0
            homeward /= max(np.linalg.norm(homeward), 1e-9)
            pre = handle + open_dir * 0.12
            # hover over the approach point first, pointing down, clear of what stands near the
            # way (turning to face the drawer swings the hand HAND_HALF[0] below the grip site)
            eef = sc.eef_pos()
            hover = pre + [0, 0, 0.03]
            hover[2] = max(hover[2], self._path_top(eef[:2], pre[:2], set()) + FINGERTIP_BELOW_SITE + 0.03)
            stages = [Move(hover + [0, 0, 0.07], None, GRIPPER_OPEN, 0.03)] if hover[2] > pre[2] + 0.03 else []
            return stages + [
                Move(pre + [0, 0, 0.03], side, GRIPPER_OPEN, 0.02),
                Move(handle + open_dir * 0.12, side, GRIPPER_OPEN, 0.01),
                Move(handle - open_dir * 0.006, side, GRIPPER_OPEN, 0.006),  # pads on the bar, tips off the front
                Grip(GRIPPER_CLOSE, 10),
                Move(pulled, side, GRIPPER_CLOSE, 0.01, 0.6),
                Release(8),
                Move(pulled + open_dir * 0.05, side, GRIPPER_OPEN, 0.02),
                # point the hand down again clear of the drawer before the next primitive, coming
                # back towards the robot (the arm is stretched out after a pull)
                Move(pulled + open_dir * 0.05 + homeward * 0.06 + [0, 0, 0.08], None, GRIPPER_OPEN, 0.02),
            ]
        # push the handle home pointing down, closed fingers just in front of its bar and
        # closing sideways: the hand reaches only HAND_HALF[1] along the push, so it stops short
        # of the cabinet face above the drawer (the handle stands off the front)
        opening = abs(d.qpos[m.jnt_qposadr[jid]])
        lateral = np.cross([0.0, 0.0, 1.0], open_dir)
        front = float((sc.corners(body) @ open_dir).max())  # the handle bar's outer face
        touch = handle + open_dir * (front - handle @ open_dir + FINGER_HALF[1])
        touch[2] = handle[2] + FINGERTIP_BELOW_SITE - 0.004
        home = touch - open_dir * (opening + 0.01)  # aim past home: P control stops short
        # fingertips tilted towards the cabinet so that the forearm stays back from its top
        approach = np.cos(PUSH_TILT) * np.array([0.0, 0.0, -1.0]) - np.sin(PUSH_TILT) * open_dir
        tilted = np.stack([lateral, np.cross(approach, lateral), approach], axis=1)
        if np.linalg.norm(_axis_angle_from_matrix(tilted @ sc.eef_mat().T)) > np.pi / 2:
            tilted = tilted @ np.diag([-1.0, -1.0, 1.0])  # the same grasp, the nearer yaw
        return [
            Grip(GRIPPER_CLOSE, 6),
            Move(touch + open_dir * 0.04 + [0, 0, 0.1], tilted, GRIPPER_CLOSE, 0.02),
            Move(touch + open_dir * 0.04, tilted, GRIPPER_CLOSE, 0.008),
            Move(home, tilted, GRIPPER_CLOSE, 0.006, 0.5),
            Move(home + open_dir * 0.06, tilted, GRIPPER_CLOSE, 0.02),
            Move(home + open_dir * 0.06 + [0, 0, 0.1], None, GRIPPER_CLOSE, 0.02),
        ]

    def _swing_shut(self, jid: int, owner) -> list[Stage]:
        """Push a door on a vertical hinge shut: closed fingers pointing down press its outer face
        near the top at three quarters of its width from the hinge, then sweep along the arc a
        little past the closed angle (the hinge's limit stops the door)."""
        sc = self.scene
        m, d = sc.model, sc.data
        axis = d.xaxis[jid].copy()
        if abs(axis[2]) < 0.9:
            joint = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, jid)
            self.unsupported.add(("door on a tilted hinge", joint))
            return []
        closed = float(np.mean(owner.object_properties["articulation"]["default_close_ranges"]))
        q = float(d.qpos[m.jnt_qposadr[jid]])
        turn = np.sign(closed - q) * np.sign(axis[2])  # world rotation sense about +z
        hinge = d.xanchor[jid].copy()
        boxes = sc.geom_boxes(m.jnt_bodyid[jid])
        c, axes, half, _, top = max(boxes, key=lambda b: b[2].max())  # the door panel
        k = int(np.argmax(half))
        u = axes[k] if axes[k] @ (c - hinge[:2]) >= 0 else -axes[k]  # along the panel, away from the hinge
        t = turn * np.array([-u[1], u[0]])  # the way the panel moves as it closes
        width = float(u @ (c - hinge[:2])) + half[k]
        face = float(t @ (c - hinge[:2])) - half[1 - k]  # the outer face, behind the panel along t
        reach = 0.75 * width
        z = top - 0.03 + FINGERTIP_BELOW_SITE
        total = abs(closed - q) + 0.2
        angles = np.linspace(0.0, total, int(np.ceil(total / 0.25)) + 1)

        def pose(angle: float, off: float) -> tuple[np.ndarray, np.ndarray]:
            r = _rot_z(turn * angle)[:2, :2]
            xy = hinge[:2] + r @ u * reach + r @ t * (face - off)
            return np.array([xy[0], xy[1], z]), np.array([*(r @ u), 0.0])

        start, along = pose(0.0, 0.05)
        eef = sc.eef_pos()
        over = top + FINGERTIP_BELOW_SITE + 0.05  # fingertips clear the door's top edge on the way
        stages = [
            Grip(GRIPPER_CLOSE, 6),
            Move(np.array([eef[0], eef[1], max(eef[2], over)]), None, GRIPPER_CLOSE, 0.02),
            Move(np.array([start[0], start[1], max(eef[2], over)]), along, GRIPPER_CLOSE, 0.02),
            Move(start, along, GRIPPER_CLOSE, 0.01),
        ]
        for angle in angles[1:]:
            target, along = pose(angle, FINGER_HALF[1] + 0.002)
            stages.append(Move(target, along, GRIPPER_CLOSE, 0.01, 0.6))
        end, along = pose(total, 0.06)
        return stages + [
            Move(end, along, GRIPPER_CLOSE, 0.02),
            Move(end + [0, 0, 0.1], None, GRIPPER_CLOSE, 0.02),
        ]

    def _press(self, name: str, on: bool) -> list[Stage]:
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
        geoms = sc.subtree_geoms(m.jnt_bodyid[jid])
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
            Grip(GRIPPER_CLOSE, 6),
            Move(start + [0, 0, 0.08], tangent, GRIPPER_CLOSE, 0.02),
            Move(start, tangent, GRIPPER_CLOSE, 0.008),
            Move(start + tangent * 0.09, tangent, GRIPPER_CLOSE, 0.01),
            Move(start + tangent * 0.09 + [0, 0, 0.08], tangent, GRIPPER_CLOSE, 0.02),
        ]

    # ------------------------------------------------------------------ control
    def _facing(self, approach: np.ndarray, closing_up: bool = True) -> np.ndarray:
        """Gripper orientation (3, 3) pointing along horizontal ``approach`` with the fingers closing
        vertically (or horizontally when not ``closing_up``); of the two such poses, the one nearer
        the current orientation."""
        z = approach / np.linalg.norm(approach)
        side = np.cross(np.array([0.0, 0.0, 1.0]), z)
        side /= max(np.linalg.norm(side), 1e-9)
        best, best_angle = None, np.inf
        for sign in (1.0, -1.0):
            closing = sign * (np.array([0.0, 0.0, 1.0]) if closing_up else side)
            mat = np.stack([closing, np.cross(z, closing), z], axis=1)  # columns: closing, y, approach
            angle = np.linalg.norm(_axis_angle_from_matrix(mat @ self.scene.eef_mat().T))
            if angle < best_angle:
                best, best_angle = mat, angle
        return best

    def _orientation(self, closing: np.ndarray | None) -> np.ndarray:
        """Target gripper orientation: pointing down, fingers closing along ``closing`` (or keeping
        the current yaw when None): of the two such yaws, the nearer one unless it would turn the
        wrist past its limit."""
        sc = self.scene
        current = sc.eef_mat()
        if closing is None:
            return self._level(current)
        if closing.shape == (3, 3):  # an explicit orientation
            return closing
        cur = sc.closing_dir()
        yaw = np.arctan2(cur[0] * closing[1] - cur[1] * closing[0], cur @ closing)
        yaw = (yaw + np.pi / 2) % np.pi - np.pi / 2  # the gripper is symmetric
        if not self._wrist_room(yaw):
            yaw -= np.copysign(np.pi, yaw)
        return self._level(_rot_z(yaw) @ current)

    def _wrist_room(self, yaw: float) -> bool:
        """Whether turning the hand by ``yaw`` (rad, about world z) keeps the last arm joint, which
        turns the hand about its pointing axis (down: the opposite way), 0.2 rad inside its limits."""
        m, d = self.scene.model, self.scene.data
        robot = self.env.sim_env.robots[0]
        jid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, robot.robot_joints[-1])
        lo, hi = m.jnt_range[jid]
        return bool(lo + 0.2 < d.qpos[m.jnt_qposadr[jid]] - yaw < hi - 0.2)

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
        if isinstance(stage, Carry):
            self.queue[0:1] = self._carry(stage.obj, stage.target, stage.below, stage.inside)
            return self._step_stage()
        if self.stage_steps == 0:  # stage start: fix the orientation and the hold position
            if isinstance(stage, Move):
                self.stage_mat = self._orientation(stage.closing)
            elif self.stage_mat is None:
                self.stage_mat = sc.eef_mat()  # grip / release keep the previous stage's orientation
            self.stage_pos = sc.eef_pos()
            self.dists: list[float] = []
        if isinstance(stage, Move):
            dist = float(np.linalg.norm(stage.pos - sc.eef_pos()))
            self.dists.append(dist)
            stalled = len(self.dists) > 12 and self.dists[-6] - dist < 0.002
            # a re-levelling stage (orientation None) also waits for the hand to point down
            turned = stage.closing is not None or np.linalg.norm(
                _axis_angle_from_matrix(self.stage_mat @ sc.eef_mat().T)
            ) < 0.1
            if (dist < stage.tol and turned) or stalled or self.stage_steps > 60:
                return None
            action = self._servo(stage.pos, self.stage_mat, stage.gripper)
            action[:3] = np.clip(action[:3], -stage.speed, stage.speed)
            return action
        grip = stage.gripper if isinstance(stage, Grip) else GRIPPER_OPEN
        if self.stage_steps >= stage.steps:
            return None
        return self._servo(self.stage_pos, self.stage_mat, grip)

    def _carry(self, obj: str, target: str, below: float, inside: bool) -> list[Stage]:
        """Stages after the grasp: lift, move over the target, lower, release, retreat."""
        sc = self.scene
        eef = sc.eef_pos()
        offset = eef - sc.obj_pos(obj)  # keep the grasp offset when placing the object's centre
        point, top, rim = self._target_top(target, obj)
        clear = rim + 0.04 + below  # grip site height that keeps the object's bottom above the target
        hold = sc.closing_dir()
        turned = self._fit_yaw(obj, target, hold)
        if turned is not None:  # turn the held object so that it fits the region
            turn = np.arctan2(hold[0] * turned[1] - hold[1] * turned[0], hold @ turned)
            offset[:2] = _rot_z(turn)[:2, :2] @ offset[:2]
            hold = turned
        goal_xy = point[:2] + offset[:2]
        # the held object's bottom clears every neighbour on the way
        passing = self._path_top(eef[:2], goal_xy, {obj}, margin=0.05) + below + 0.03
        carry = max(eef[2] + 0.10, clear + 0.03, passing)
        place_z = top + (0.03 if inside else 0.015) + below
        return [
            Move(np.array([eef[0], eef[1], carry]), hold, GRIPPER_CLOSE, 0.02),
            Move(np.array([goal_xy[0], goal_xy[1], carry]), hold, GRIPPER_CLOSE, 0.01),
            Move(np.array([goal_xy[0], goal_xy[1], place_z]), hold, GRIPPER_CLOSE, 0.008),
            Release(10),
            Move(np.array([goal_xy[0], goal_xy[1], carry]), hold, GRIPPER_OPEN, 0.02),
        ]
