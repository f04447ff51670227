"""``simpler_widowx``: SimplerEnv's Bridge/WidowX task set on the widowx-style 6-DoF arm.

Tasks (instruction, episode length as in SimplerEnv):

- ``put_spoon_on_towel``: "put the spoon on the towel", 60 steps
- ``put_carrot_on_plate``: "put carrot on plate", 60 steps
- ``stack_green_cube_on_yellow_cube``: "stack the green block on the yellow block", 60 steps
- ``put_eggplant_in_basket``: "put eggplant into yellow basket", 120 steps

Objects are built from primitives. The source object is a free body; the towel, plate and basket
are mocap fixtures (placed per episode, immovable), the yellow cube is a free body. Every body's
origin is the centre of its bounding box, so the success rule can work on origins and half extents
the way SimplerEnv works on bounding boxes.

Initial states: source and target each take one of four cells of a 2 x 2 grid in front of the arm
(on opposite sides in y), jittered by up to 2 cm; the spoon and carrot get a uniformly random yaw,
the cubes and the eggplant a bounded one, so the expert has to align its grasp.

Success (judged at the final step, as SimplerEnv's ``PutOnInScene`` does): the source's xy offset
from the target is within the target's half-diagonal + 3 mm, the source sits above the target with
at most 2 cm of gap between their bounding boxes, and the source touches the target and nothing
else (so it is released and resting on it). For the basket: the eggplant is inside the walls, below
their top, touching the basket and nothing else.

Quick check::

    python -c "from tasks.simpler import widowx; print(list(widowx.TASKS))"
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from tasks.simpler.env import SimplerEnv, Task
from tasks.simpler.experts import WaypointExpert, pick_and_place_plan

ARM = "widowx"

# 2 x 2 grid of placement cells (x, y) in front of the arm (base at x = -0.36); a source and its
# target always take cells on opposite sides in y.
CELLS_X = (-0.07, 0.07)
CELLS_Y = (-0.12, 0.12)
JITTER = 0.02
# Contact parameters of grasped objects: a stiff contact (time constant 2x the physics step) that
# dominates the mix with the fingers' own, so a light, thin object (the spoon's handle) is not squeezed
# through by the finger force.
OBJ_CONTACT = 'friction="1 0.01 0.001" solref="0.004 1" solmix="10"'


def _yaw_quat(yaw: float) -> np.ndarray:
    """wxyz quaternion of a rotation by ``yaw`` about world z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def _body_yaw(env: SimplerEnv, body: str) -> float:
    """Yaw (about world z) of ``body``'s local x axis."""
    mat = env.data.body(body).xmat.reshape(3, 3)
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def _wrap(angle: float, period: float) -> float:
    """``angle`` folded into [-period / 2, period / 2)."""
    return float((angle + period / 2) % period - period / 2)


class _PutTask(Task):
    """Move the free body ``source`` onto / into the body ``target``.

    Subclasses set the names, the half extents (bounding box, body frame at its centre), the
    XML of both bodies and the grasp parameters; this class samples the layout, judges success and
    builds the expert."""

    max_steps = 60
    source = ""
    target = ""
    src_half = (0.0, 0.0, 0.0)
    tgt_half = (0.0, 0.0, 0.0)
    target_is_mocap = True
    # yaw sampling of the source: uniform in [-yaw_range, yaw_range]; grasp symmetry period
    source_yaw_range = np.pi
    grasp_period = np.pi
    # eef height above the source origin when grasping; how high to carry above the place point
    grasp_height = 0.006
    lift = 0.1
    release_gap = 0.012
    # radius of the disc each object covers, for distractor placement
    src_radius = 0.06
    tgt_radius = 0.08

    def __init__(self) -> None:
        self.keep_clear: tuple[tuple[float, float, float], ...] = ()

    # ----------------------------------------------------------- layout
    def _sample_cells(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        src_cell = int(rng.integers(4))
        tgt_x = int(rng.integers(2))
        src = np.array([CELLS_X[src_cell // 2], CELLS_Y[src_cell % 2]])
        tgt = np.array([CELLS_X[tgt_x], CELLS_Y[1 - src_cell % 2]])
        src = src + rng.uniform(-JITTER, JITTER, 2)
        tgt = tgt + rng.uniform(-JITTER, JITTER, 2)
        return src, tgt

    def reset_objects(self, env: SimplerEnv, rng: np.random.Generator) -> None:
        src, tgt = self._sample_cells(rng)
        yaw = rng.uniform(-self.source_yaw_range, self.source_yaw_range)
        env.set_free_body(self.source, [src[0], src[1], self.src_half[2] + 0.001], _yaw_quat(yaw))
        tgt_pos = [tgt[0], tgt[1], self.tgt_half[2]]
        if self.target_is_mocap:
            mocap = env.model.body(self.target).mocapid[0]
            env.data.mocap_pos[mocap] = tgt_pos
            env.data.mocap_quat[mocap] = [1.0, 0.0, 0.0, 0.0]
        else:
            tgt_yaw = rng.uniform(-np.pi / 8, np.pi / 8)
            tgt_pos[2] += 0.001
            env.set_free_body(self.target, tgt_pos, _yaw_quat(tgt_yaw))
        self.keep_clear = ((src[0], src[1], self.src_radius), (tgt[0], tgt[1], self.tgt_radius))

    # ---------------------------------------------------------- success
    def _touches_only_target(self, env: SimplerEnv) -> bool:
        """The source is in contact with the target and with nothing else (table, fingers, ...)."""
        src = env.body_geoms(self.source)
        tgt = env.body_geoms(self.target)
        touches_target = False
        for i in range(env.data.ncon):
            c = env.data.contact[i]
            if c.geom1 in src:
                other = c.geom2
            elif c.geom2 in src:
                other = c.geom1
            else:
                continue
            if other not in tgt:
                return False
            touches_target = True
        return touches_target

    def _placed(self, env: SimplerEnv) -> bool:
        offset = env.body_pos(self.source) - env.body_pos(self.target)
        xy_ok = np.linalg.norm(offset[:2]) <= np.linalg.norm(self.tgt_half[:2]) + 0.003
        z_ok = offset[2] > 0 and offset[2] - self.tgt_half[2] - self.src_half[2] <= 0.02
        return bool(xy_ok and z_ok)

    def success(self, env: SimplerEnv) -> bool:
        return self._placed(env) and self._touches_only_target(env)

    # ----------------------------------------------------------- expert
    def _support_height(self, env: SimplerEnv) -> float:
        """World z of the surface the source must rest on."""
        return float(env.body_pos(self.target)[2] + self.tgt_half[2])

    def _place_point(self, env: SimplerEnv) -> np.ndarray:
        """Where the eef must be for the held source's origin to sit centred on the target's surface."""
        eef = env.eef_pose()[0]
        src = env.body_pos(self.source)
        tgt = env.body_pos(self.target)
        grip_offset = eef - src  # keeps the object where the fingers hold it, slip included
        return np.array(
            [
                tgt[0] + grip_offset[0],
                tgt[1] + grip_offset[1],
                self._support_height(env) + self.src_half[2] + grip_offset[2],
            ]
        )

    def _grasp_yaw(self, env: SimplerEnv) -> float:
        # Fingers close along the hand's y; a top-down hand at yaw Y has its y axis at angle Y + pi/2,
        # so Y = object yaw puts the fingers across the object's long (x) axis.
        return _wrap(_body_yaw(env, self.source), self.grasp_period)

    def make_expert(self, env: SimplerEnv) -> WaypointExpert:
        plan = pick_and_place_plan(
            self.source,
            self._place_point,
            grasp_height=self.grasp_height,
            yaw=self._grasp_yaw,
            lift=self.lift,
            release_height=self.release_gap,
            placed=self._placed,
        )
        return WaypointExpert(env, plan)


# --------------------------------------------------------------- spoon
class PutSpoonOnTowel(_PutTask):
    name = "put_spoon_on_towel"
    instruction = "put the spoon on the towel"
    source = "spoon"
    target = "towel"
    src_half = (0.076, 0.018, 0.008)
    tgt_half = (0.09, 0.09, 0.003)
    grasp_height = 0.009
    src_radius = 0.08
    tgt_radius = 0.11

    def assets_xml(self) -> str:
        return (
            '<texture name="widowx_towel_tex" type="2d" builtin="checker" rgb1="0.55 0.7 0.88" '
            'rgb2="0.85 0.9 0.95" width="32" height="32"/>'
            '<material name="widowx_towel_mat" texture="widowx_towel_tex" texrepeat="6 6" specular="0" '
            'shininess="0"/>'
        )

    def objects_xml(self) -> str:
        hx, hy, hz = self.tgt_half
        return f"""
<body name="towel" mocap="true" pos="0 0 {hz}">
  <geom name="towel" type="box" size="{hx} {hy} {hz}" material="widowx_towel_mat" friction="1.2 0.01 0.001"/>
</body>
<body name="spoon" pos="0 0 0.008">
  <freejoint name="spoon"/>
  <geom name="spoon_handle" type="capsule" fromto="-0.07 0 -0.002 0.025 0 -0.002" size="0.006"
        rgba="0.78 0.8 0.84 1" mass="0.02" {OBJ_CONTACT}/>
  <geom name="spoon_bowl" type="ellipsoid" size="0.027 0.018 0.008" pos="0.049 0 0" rgba="0.78 0.8 0.84 1"
        mass="0.012" {OBJ_CONTACT}/>
</body>"""


# -------------------------------------------------------------- carrot
class PutCarrotOnPlate(_PutTask):
    name = "put_carrot_on_plate"
    instruction = "put carrot on plate"
    source = "carrot"
    target = "plate"
    src_half = (0.064, 0.013, 0.013)
    tgt_half = (0.078, 0.078, 0.008)
    grasp_height = 0.006
    src_radius = 0.07
    tgt_radius = 0.09

    def objects_xml(self) -> str:
        rim = []
        for k in range(10):
            a = 2 * np.pi * k / 10
            rim.append(
                f'<geom type="box" size="0.004 0.022 0.004" pos="{0.073 * np.cos(a):.4f} '
                f'{0.073 * np.sin(a):.4f} 0.004" euler="0 0 {a:.4f}" rgba="0.9 0.9 0.88 1"/>'
            )
        return f"""
<body name="plate" mocap="true" pos="0 0 0.008">
  <geom name="plate" type="cylinder" size="0.075 0.004" pos="0 0 -0.004" rgba="0.95 0.95 0.93 1"/>
  {"".join(rim)}
</body>
<body name="carrot" pos="0 0 0.013">
  <freejoint name="carrot"/>
  <geom name="carrot_body" type="capsule" fromto="-0.032 0 0 0.018 0 0" size="0.013" rgba="0.95 0.45 0.08 1"
        mass="0.03" condim="6" {OBJ_CONTACT}/>
  <geom name="carrot_tip" type="capsule" fromto="0.018 0 -0.003 0.056 0 -0.006" size="0.007"
        rgba="0.93 0.42 0.07 1" mass="0.008" condim="6" {OBJ_CONTACT}/>
  <geom name="carrot_leaf_a" type="ellipsoid" size="0.02 0.005 0.003" pos="-0.058 0.006 0.002" euler="0 0 0.3"
        rgba="0.2 0.6 0.15 1" mass="0.002"/>
  <geom name="carrot_leaf_b" type="ellipsoid" size="0.02 0.005 0.003" pos="-0.058 -0.006 0.002" euler="0 0 -0.3"
        rgba="0.25 0.65 0.2 1" mass="0.002"/>
</body>"""


# --------------------------------------------------------------- cubes
class StackGreenCubeOnYellowCube(_PutTask):
    name = "stack_green_cube_on_yellow_cube"
    instruction = "stack the green block on the yellow block"
    source = "green_cube"
    target = "yellow_cube"
    src_half = (0.016, 0.016, 0.016)
    tgt_half = (0.02, 0.02, 0.02)
    target_is_mocap = False
    source_yaw_range = np.pi / 4
    grasp_period = np.pi / 2
    grasp_height = 0.004
    src_radius = 0.04
    tgt_radius = 0.05

    def objects_xml(self) -> str:
        g, y = self.src_half[0], self.tgt_half[0]
        return f"""
<body name="green_cube" pos="0 0 {g}">
  <freejoint name="green_cube"/>
  <geom name="green_cube" type="box" size="{g} {g} {g}" rgba="0.15 0.7 0.2 1" mass="0.03" {OBJ_CONTACT}/>
</body>
<body name="yellow_cube" pos="0.1 0 {y}">
  <freejoint name="yellow_cube"/>
  <geom name="yellow_cube" type="box" size="{y} {y} {y}" rgba="0.95 0.85 0.1 1" mass="0.06" {OBJ_CONTACT}/>
</body>"""


# ------------------------------------------------------------ eggplant
class PutEggplantInBasket(_PutTask):
    name = "put_eggplant_in_basket"
    instruction = "put eggplant into yellow basket"
    max_steps = 120
    source = "eggplant"
    target = "basket"
    src_half = (0.058, 0.02, 0.02)
    # basket: floor half thickness, wall half thickness, wall height above the floor's top
    basket_half_xy = 0.08
    floor_half = 0.004
    wall_half = 0.004
    wall_height = 0.045
    tgt_half = (basket_half_xy, basket_half_xy, (2 * floor_half + wall_height) / 2)
    source_yaw_range = np.pi / 3
    grasp_height = 0.008
    lift = 0.12
    src_radius = 0.07
    tgt_radius = 0.11

    def objects_xml(self) -> str:
        h, fh, wh, ht = self.basket_half_xy, self.floor_half, self.wall_half, self.wall_height
        z0 = -self.tgt_half[2]  # body origin at the bbox centre; the floor's bottom touches the table
        wz = z0 + 2 * fh + ht / 2
        col = 'rgba="0.95 0.8 0.2 1"'
        return f"""
<body name="basket" mocap="true" pos="0 0 {self.tgt_half[2]}">
  <geom name="basket_floor" type="box" size="{h} {h} {fh}" pos="0 0 {z0 + fh}" {col}/>
  <geom type="box" size="{wh} {h} {ht / 2}" pos="{h - wh} 0 {wz}" {col}/>
  <geom type="box" size="{wh} {h} {ht / 2}" pos="{-h + wh} 0 {wz}" {col}/>
  <geom type="box" size="{h - 2 * wh} {wh} {ht / 2}" pos="0 {h - wh} {wz}" {col}/>
  <geom type="box" size="{h - 2 * wh} {wh} {ht / 2}" pos="0 {-h + wh} {wz}" {col}/>
</body>
<body name="eggplant" pos="0 0 0.02">
  <freejoint name="eggplant"/>
  <geom name="eggplant_body" type="ellipsoid" size="0.036 0.02 0.02" pos="0.006 0 0" rgba="0.4 0.15 0.45 1"
        mass="0.04" {OBJ_CONTACT}/>
  <geom name="eggplant_neck" type="ellipsoid" size="0.02 0.014 0.014" pos="-0.03 0 0.002"
        rgba="0.38 0.13 0.42 1" mass="0.01" {OBJ_CONTACT}/>
  <geom name="eggplant_cap" type="capsule" fromto="-0.046 0 0.003 -0.056 0 0.004" size="0.005"
        rgba="0.25 0.5 0.2 1" mass="0.003" {OBJ_CONTACT}/>
</body>"""

    def _placed(self, env: SimplerEnv) -> bool:
        offset = env.body_pos(self.source) - env.body_pos(self.target)
        inner = self.basket_half_xy - 2 * self.wall_half
        floor_top = -self.tgt_half[2] + 2 * self.floor_half
        rim = floor_top + self.wall_height
        inside_xy = abs(offset[0]) <= inner and abs(offset[1]) <= inner
        inside_z = floor_top < offset[2] < rim
        return bool(inside_xy and inside_z)

    def _support_height(self, env: SimplerEnv) -> float:
        return float(env.body_pos(self.target)[2] - self.tgt_half[2] + 2 * self.floor_half)


TASKS: OrderedDict[str, type[Task]] = OrderedDict(
    (cls.name, cls)
    for cls in (PutSpoonOnTowel, PutCarrotOnPlate, StackGreenCubeOnYellowCube, PutEggplantInBasket)
)
