"""SIMPLER-style environment on plain MuJoCo: scene assembly, visual variants, the end-effector
delta controller (damped least-squares differential IK onto joint position servos) and cheap
headless rendering.

A task (see :class:`Task`) contributes its objects, initial-state sampler, success rule and
scripted expert; this module owns everything the tasks share. The contract is in
:mod:`tasks.base`.
"""

from __future__ import annotations

import abc
import atexit
import time
import weakref
from dataclasses import dataclass
from typing import ClassVar

import gymnasium
import mujoco
import numpy as np

from tasks.base import ACTION_DIM, PRIVILEGED_OBJECTS, PROPRIO_DIM
from tasks.errors import UserInputError
from tasks.simpler.robots import ARMS, ArmSpec, arm_xml

VARIANTS = (
    "visual_matching",
    "lighting_darker",
    "lighting_brighter",
    "table_texture_1",
    "table_texture_2",
    "background_1",
    "background_2",
    "distractors_1",
    "distractors_2",
    "camera_pose_1",
    "camera_pose_2",
)

# Renderers still open at interpreter exit are closed before the GL backend is torn down (the
# hook is registered after the backend's own, so it runs first).
_LIVE_ENVS: weakref.WeakSet = weakref.WeakSet()


def _close_live_envs() -> None:
    for env in list(_LIVE_ENVS):
        env.close()

TABLE_HALF = (0.45, 0.6)  # table top half extents (x, y); the top surface is z = 0
PHYSICS_DT = 0.002
CONTROL_DT = 0.1  # 10 Hz control


@dataclass(frozen=True)
class Look:
    """Everything a variant changes, as plain numbers the MJCF template reads."""

    light: float = 0.75
    ambient: float = 0.25
    table_rgb1: str = "0.55 0.42 0.3"
    table_rgb2: str = "0.5 0.38 0.27"
    table_builtin: str = "flat"
    wall_rgb1: str = "0.82 0.82 0.8"
    wall_rgb2: str = "0.78 0.78 0.76"
    wall_builtin: str = "flat"
    distractors: int = 0
    distractor_set: int = 0
    camera_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    camera_tilt: float = 0.0


LOOKS = {
    "visual_matching": Look(),
    "lighting_darker": Look(light=0.38, ambient=0.12),
    "lighting_brighter": Look(light=1.1, ambient=0.4),
    "table_texture_1": Look(table_rgb1="0.8 0.8 0.78", table_rgb2="0.35 0.35 0.38", table_builtin="checker"),
    "table_texture_2": Look(table_rgb1="0.32 0.22 0.14", table_rgb2="0.42 0.3 0.2", table_builtin="gradient"),
    "background_1": Look(wall_rgb1="0.35 0.5 0.65", wall_rgb2="0.3 0.45 0.6", wall_builtin="gradient"),
    "background_2": Look(wall_rgb1="0.6 0.55 0.4", wall_rgb2="0.3 0.28 0.22", wall_builtin="checker"),
    "distractors_1": Look(distractors=2, distractor_set=0),
    "distractors_2": Look(distractors=3, distractor_set=1),
    "camera_pose_1": Look(camera_shift=(0.04, 0.06, 0.03), camera_tilt=0.05),
    "camera_pose_2": Look(camera_shift=(-0.05, -0.07, -0.03), camera_tilt=-0.05),
}

# Small primitive objects the distractor variants scatter on free table space.
DISTRACTOR_SETS = (
    (("box", "0.018 0.018 0.018", "0.9 0.9 0.1 1"), ("cylinder", "0.02 0.03", "0.1 0.6 0.9 1"),
     ("sphere", "0.022", "0.9 0.4 0.7 1")),
    (("box", "0.03 0.015 0.012", "0.3 0.8 0.8 1"), ("cylinder", "0.015 0.035", "0.95 0.55 0.1 1"),
     ("ellipsoid", "0.03 0.018 0.015", "0.5 0.3 0.8 1")),
)


class Task(abc.ABC):
    """One task of a suite. Subclasses set ``name``, ``instruction``, ``max_steps``, override
    ``objects_xml`` and ``reset_objects``, and must define ``success`` and ``make_expert``."""

    name: str = ""
    instruction: str = ""
    max_steps: int = 80
    # xy discs (x, y, radius) that distractors must not overlap, besides the task's free objects
    keep_clear: tuple[tuple[float, float, float], ...] = ()

    def objects_xml(self) -> str:
        """Bodies (with free joints or fixtures) added to the world body."""
        return ""

    def assets_xml(self) -> str:
        return ""

    def reset_objects(self, env: SimplerEnv, rng: np.random.Generator) -> None:
        """Place the task's objects for a new episode (write ``env.data.qpos``)."""

    @abc.abstractmethod
    def success(self, env: SimplerEnv) -> bool:
        """The suite's success rule on the current state."""

    @abc.abstractmethod
    def make_expert(self, env: SimplerEnv):
        """The scripted expert (``reset()``, ``act(obs)``) for ``env``."""


def _quat_to_rotvec(quat: np.ndarray) -> np.ndarray:
    out = np.zeros(3)
    mujoco.mju_quat2Vel(out, quat, 1.0)
    return out


def _rotvec_to_quat(rv: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rv))
    q = np.array([1.0, 0, 0, 0])
    if angle > 1e-12:
        mujoco.mju_axisAngle2Quat(q, rv / angle, angle)
    return q


def _mat_to_quat(mat: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, mat.reshape(9))
    return q


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_mulQuat(q, a, b)
    return q


def quat_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """World-frame rotation vector taking ``current`` to ``target`` (both wxyz quaternions)."""
    conj = current * np.array([1, -1, -1, -1])
    err = _quat_mul(target, conj)
    if err[0] < 0:
        err = -err
    return _quat_to_rotvec(err)


# Top-down grasp orientation: hand +z (approach) along world -z, fingers closing along world y.
DOWN_QUAT = _rotvec_to_quat(np.array([0.0, np.pi, 0.0]))


class SimplerEnv(gymnasium.Env):
    """A SIMPLER-style task on one embodiment. See :mod:`tasks.base` for the contract."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"]}

    def __init__(self, suite: str, task: Task, arm: str, variant: str = "visual_matching", seed: int = 0,
                 image_size: int = 128, privileged_obs: bool = False):
        if variant not in LOOKS:
            raise UserInputError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        if arm not in ARMS:
            raise UserInputError(f"unknown arm {arm!r}; valid arms: {', '.join(ARMS)}")
        self.suite = suite
        self.task_spec = task
        self.task = task.name
        self.variant = variant
        self.seed = int(seed)
        self.instruction = task.instruction
        self.max_steps = task.max_steps
        self.render_mode = "fast"
        self.arm: ArmSpec = ARMS[arm]
        self.look = LOOKS[variant]
        self.image_size = int(image_size)
        self.privileged_obs = bool(privileged_obs)  # obs["objects"] = privileged_state(): the state ceiling only
        self.model = mujoco.MjModel.from_xml_string(self._scene_xml())
        self.data = mujoco.MjData(self.model)
        self._scratch = mujoco.MjData(self.model)
        self._setup_indices()
        self._renderer: mujoco.Renderer | None = None
        self._substeps = round(CONTROL_DT / PHYSICS_DT)
        self.episode_index = 0
        self.steps = 0
        self._timings = {"physics_ms": 0.0, "render_ms": 0.0}
        s = self.image_size
        self.observation_space = gymnasium.spaces.Dict({
            "agentview": gymnasium.spaces.Box(0, 255, (s, s, 3), np.uint8),
            "wrist": gymnasium.spaces.Box(0, 255, (s, s, 3), np.uint8),
            "proprio": gymnasium.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
            "instruction": gymnasium.spaces.Text(max_length=256),
        })
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._home_qpos = self._solve_home()

    # ------------------------------------------------------------------ scene
    def _scene_xml(self) -> str:
        look, arm = self.look, self.arm
        arm_body, arm_act = arm_xml(arm)
        cam_pos, cam_xy = self._agentview_pose()
        tx, ty = TABLE_HALF
        distractors = []
        for i, (kind, size, rgba) in enumerate(DISTRACTOR_SETS[look.distractor_set][: look.distractors]):
            distractors.append(
                f'<body name="distractor{i}" pos="0 0 -1"><freejoint name="distractor{i}"/>'
                f'<geom type="{kind}" size="{size}" rgba="{rgba}" mass="0.05" friction="1 0.01 0.001"/></body>')
        li = look.light
        return f"""
<mujoco model="simpler_{arm.name}_{self.task}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{PHYSICS_DT}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="{look.ambient} {look.ambient} {look.ambient}" diffuse="0.2 0.2 0.2" specular="0 0 0"/>
    <global offwidth="{self.image_size}" offheight="{self.image_size}"/>
    <map znear="0.01"/>
  </visual>
  <asset>
    <texture name="table_tex" type="2d" builtin="{look.table_builtin}" rgb1="{look.table_rgb1}" rgb2="{look.table_rgb2}"
             width="64" height="64"/>
    <material name="table_mat" texture="table_tex" texrepeat="4 4" specular="0" shininess="0" reflectance="0"/>
    <texture name="wall_tex" type="2d" builtin="{look.wall_builtin}" rgb1="{look.wall_rgb1}" rgb2="{look.wall_rgb2}"
             width="64" height="64"/>
    <material name="wall_mat" texture="wall_tex" texrepeat="3 3" specular="0" reflectance="0"/>
    {self.task_spec.assets_xml()}
  </asset>
  <worldbody>
    <light name="key" pos="0.2 -0.3 1.6" dir="-0.1 0.2 -1" diffuse="{li} {li} {li}" specular="0 0 0"
           castshadow="false"/>
    <light name="fill" pos="-0.6 0.5 1.2" dir="0.4 -0.3 -1" diffuse="{li * 0.4} {li * 0.4} {li * 0.4}"
           specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.4 0.4 0.42 1" contype="0" conaffinity="0"/>
    <geom name="wall_back" type="box" size="0.02 2 1.2" pos="1.2 0 0" material="wall_mat" contype="0" conaffinity="0"/>
    <geom name="wall_left" type="box" size="2 0.02 1.2" pos="0 1.4 0" material="wall_mat" contype="0" conaffinity="0"/>
    <geom name="wall_right" type="box" size="2 0.02 1.2" pos="0 -1.4 0" material="wall_mat" contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="{tx} {ty} 0.02" pos="0 0 -0.02" material="table_mat"
          friction="1 0.01 0.001"/>
    <geom name="table_leg" type="box" size="{tx - 0.05} {ty - 0.05} 0.36" pos="0 0 -0.4" rgba="0.3 0.25 0.2 1"
          contype="0" conaffinity="0"/>
    <camera name="agentview" pos="{cam_pos}" xyaxes="{cam_xy}" fovy="55"/>
    {arm_body}
    {self.task_spec.objects_xml()}
    {"".join(distractors)}
  </worldbody>
  <actuator>
    {arm_act}
  </actuator>
</mujoco>"""

    def _agentview_pose(self) -> tuple[str, str]:
        """Camera behind-and-above the robot, looking at the workspace centre."""
        base = np.array([0.22, -0.48, 0.42]) if self.arm.name == "widowx" else np.array([0.3, -0.6, 0.55])
        pos = base + np.array(self.look.camera_shift)
        target = np.array([-0.02, 0.0, 0.0])
        fwd = target - pos
        fwd[2] += self.look.camera_tilt
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        return " ".join(f"{v:.4f}" for v in pos), " ".join(f"{v:.4f}" for v in (*right, *up))

    def _setup_indices(self) -> None:
        m = self.model
        n = len(self.arm.joints)
        self.arm_joint_ids = [m.joint(f"j{i}").id for i in range(n)]
        self.arm_qadr = np.array([m.jnt_qposadr[j] for j in self.arm_joint_ids])
        self.arm_dadr = np.array([m.jnt_dofadr[j] for j in self.arm_joint_ids])
        self.arm_range = m.jnt_range[self.arm_joint_ids].copy()
        self.finger_qadr = np.array([m.jnt_qposadr[m.joint(f"finger_{s}").id] for s in "lr"])
        self.eef_site = m.site("eef").id
        self.finger_geoms = {m.geom("finger_l").id, m.geom("finger_r").id}
        self.act_arm = np.arange(n)
        self.act_fingers = np.array([m.actuator("a_finger_l").id, m.actuator("a_finger_r").id])
        self.distractor_qadr = [m.jnt_qposadr[m.joint(f"distractor{i}").id] for i in range(self.look.distractors)]

    # ---------------------------------------------------------- kinematics
    def _ik(self, q0: np.ndarray, pos: np.ndarray, quat: np.ndarray, iters: int = 8, rot_weight: float = 0.5,
            damping: float = 0.05) -> np.ndarray:
        """Damped least-squares IK for the eef site from joint guess ``q0``."""
        m, d = self.model, self._scratch
        d.qpos[:] = self.data.qpos
        q = q0.copy()
        jacp = np.zeros((3, m.nv))
        jacr = np.zeros((3, m.nv))
        for _ in range(iters):
            d.qpos[self.arm_qadr] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err_p = pos - d.site_xpos[self.eef_site]
            err_r = quat_error(quat, _mat_to_quat(d.site_xmat[self.eef_site]))
            mujoco.mj_jacSite(m, d, jacp, jacr, self.eef_site)
            jac = np.vstack([jacp[:, self.arm_dadr], rot_weight * jacr[:, self.arm_dadr]])  # (6, n)
            err = np.concatenate([err_p, rot_weight * err_r])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(6), err)
            q = np.clip(q + dq, self.arm_range[:, 0], self.arm_range[:, 1])
            if np.linalg.norm(err_p) < 1e-4 and np.linalg.norm(err_r) < 1e-3:
                break
        return q

    def _solve_home(self) -> np.ndarray:
        n = len(self.arm.joints)
        guess = np.zeros(n)
        guess[1], guess[3 if n == 7 else 2] = 0.6, 1.4
        q = guess
        for _ in range(20):
            q = self._ik(q, np.array(self.arm.home_eef), DOWN_QUAT, iters=20)
        return q

    def eef_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Current end-effector position (3,) and wxyz quaternion (4,) in the world frame."""
        return self.data.site_xpos[self.eef_site].copy(), _mat_to_quat(self.data.site_xmat[self.eef_site])

    def gripper_opening(self) -> float:
        """Finger opening in [0, 1] (1 = fully open)."""
        return float(self.data.qpos[self.finger_qadr].mean() / self.arm.finger_open)

    # ------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.seed = int(seed)
        self.episode_index = int((options or {}).get("episode_index", 0))
        rng = np.random.default_rng([self.seed, self.episode_index, 7919])
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self.arm_qadr] = self._home_qpos
        self.data.qpos[self.finger_qadr] = self.arm.finger_open
        self.data.ctrl[self.act_arm] = self._home_qpos
        self.data.ctrl[self.act_fingers] = self.arm.finger_open
        self.task_spec.reset_objects(self, rng)
        self._place_distractors(rng)
        mujoco.mj_forward(self.model, self.data)
        # Let objects settle under the servo hold.
        for _ in range(50):
            mujoco.mj_step(self.model, self.data)
        self.target_pos, self.target_quat = self.eef_pose()
        self.steps = 0
        return self._obs(render=True), {"instruction": self.instruction, "success": False}

    def _place_distractors(self, rng: np.random.Generator) -> None:
        clear = list(self.task_spec.keep_clear)
        for qadr in self.distractor_qadr:
            for _ in range(200):
                x, y = rng.uniform(-0.25, 0.25), rng.uniform(-0.35, 0.35)
                if all((x - cx) ** 2 + (y - cy) ** 2 > (cr + 0.06) ** 2 for cx, cy, cr in clear):
                    break
            clear.append((x, y, 0.04))
            self.data.qpos[qadr: qadr + 7] = [x, y, 0.04, 1, 0, 0, 0]

    def step(self, action, render: bool = True):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action has non-finite values: {action}")
        action = np.clip(action, -1.0, 1.0)
        t0 = time.perf_counter()
        self._apply_action(action)
        for _ in range(self._substeps):
            mujoco.mj_step(self.model, self.data)
        t1 = time.perf_counter()
        self.steps += 1
        obs = self._obs(render=render)
        t2 = time.perf_counter()
        self._timings = {"physics_ms": (t1 - t0) * 1e3, "render_ms": (t2 - t1) * 1e3}
        success = bool(self.task_spec.success(self))
        truncated = self.steps >= self.max_steps
        return obs, float(success), False, truncated, {"success": success, "instruction": self.instruction}

    def _apply_action(self, action: np.ndarray) -> None:
        low, high = np.array(self.arm.workspace_low), np.array(self.arm.workspace_high)
        eef, _ = self.eef_pose()
        # The target may lead the hand by a few centimetres at most, so it cannot wind up
        # against an obstacle or the edge of the reachable space.
        target = np.clip(self.target_pos + action[:3] * self.arm.pos_scale, eef - 0.05, eef + 0.05)
        self.target_pos = np.clip(target, low, high)
        self.target_quat = _quat_mul(_rotvec_to_quat(action[3:6] * self.arm.rot_scale), self.target_quat)
        q_now = self.data.qpos[self.arm_qadr].copy()
        self.data.ctrl[self.act_arm] = self._ik(q_now, self.target_pos, self.target_quat, iters=6)
        opening = (1.0 - action[6]) / 2.0 * self.arm.finger_open
        # Closing commands a target past the closed position so the fingers squeeze what they hold.
        self.data.ctrl[self.act_fingers] = opening if action[6] <= 0 else opening - 0.02 * action[6]

    def timings(self) -> dict[str, float]:
        """Wall-clock split of the last ``step``: ``physics_ms`` and ``render_ms``."""
        return dict(self._timings)

    def is_success(self) -> bool:
        return bool(self.task_spec.success(self))

    # -------------------------------------------------------- observation
    def proprio(self) -> np.ndarray:
        pos, quat = self.eef_pose()
        return np.concatenate([pos, _quat_to_rotvec(quat), self.data.qpos[self.finger_qadr]]).astype(np.float32)

    def _obs(self, render: bool) -> dict:
        obs = {"agentview": None, "wrist": None, "proprio": self.proprio(), "instruction": self.instruction}
        if self.privileged_obs:
            obs["objects"] = self.privileged_state()
        if render:
            obs["agentview"] = self.render_camera("agentview")
            obs["wrist"] = self.render_camera("wrist")
        return obs

    def render_camera(self, camera: str) -> np.ndarray:
        """(H, W, 3) uint8 image of ``camera`` with cheap settings (no shadows, reflections, skybox)."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            if not _LIVE_ENVS:
                atexit.register(_close_live_envs)
            _LIVE_ENVS.add(self)
            self._scene_opt = mujoco.MjvOption()
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self._renderer.update_scene(self.data, camera=camera, scene_option=self._scene_opt)
        return self._renderer.render()

    def render(self):
        return self.render_camera("agentview")

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------ privileged state
    PARKED_Z = -0.2  # world z below which a prop is parked off the table (tasks.simpler.google._park)

    def entities(self) -> list[tuple[str, int]]:
        """The scene's task entities in a fixed order: ``("body", id)`` of every free body that is not a
        distractor (sorted by name), then of every mocap body (placement targets: towel, plate, basket), then
        ``("site", id)`` of every ``*_handle`` site, then the distractors."""
        if getattr(self, "_entity_list", None) is None:
            m = self.model
            free = [m.jnt_bodyid[j] for j in range(m.njnt) if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
            names = {b: m.body(b).name for b in free}
            task = sorted((b for b in free if not names[b].startswith("distractor")), key=names.get)
            distract = sorted((b for b in free if names[b].startswith("distractor")), key=names.get)
            mocap = sorted((b for b in range(m.nbody) if m.body_mocapid[b] >= 0), key=lambda b: m.body(b).name)
            handles = sorted((s for s in range(m.nsite) if m.site(s).name.endswith("_handle")),
                             key=lambda s: m.site(s).name)
            self._entity_list = ([("body", b) for b in task] + [("body", b) for b in mocap]
                                 + [("site", s) for s in handles] + [("body", b) for b in distract])
        return self._entity_list

    def privileged_state(self) -> np.ndarray:
        """(PRIVILEGED_OBJECTS, 4) float32: per task entity (:meth:`entities`, at most
        ``PRIVILEGED_OBJECTS``), its position minus the hand's (world frame, metres) and 1.0; rows past the
        last entity, and of entities parked below the table (props a layout does not use), are zero. What a
        policy must read off its cameras; recorded with demonstrations for training-time supervision and the
        state-input ceiling, never given to an evaluated policy."""
        out = np.zeros((PRIVILEGED_OBJECTS, 4), np.float32)
        eef = self.data.site_xpos[self.eef_site]
        for row, (kind, idx) in enumerate(self.entities()[:PRIVILEGED_OBJECTS]):
            pos = self.data.xpos[idx] if kind == "body" else self.data.site_xpos[idx]
            if pos[2] < self.PARKED_Z:
                continue
            out[row, :3] = pos - eef
            out[row, 3] = 1.0
        return out

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def body_quat(self, name: str) -> np.ndarray:
        return self.data.body(name).xquat.copy()

    def set_free_body(self, joint: str, pos, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
        adr = self.model.jnt_qposadr[self.model.joint(joint).id]
        self.data.qpos[adr: adr + 7] = [*pos, *quat]

    def contacts_between(self, geoms_a: set[int], geoms_b: set[int]) -> bool:
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            if (c.geom1 in geoms_a and c.geom2 in geoms_b) or (c.geom2 in geoms_a and c.geom1 in geoms_b):
                return True
        return False

    def body_geoms(self, body: str) -> set[int]:
        bid = self.model.body(body).id
        return {g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] == bid}

    def is_grasped(self, body: str) -> bool:
        """Both fingers touch ``body``."""
        geoms = self.body_geoms(body)
        m = self.model
        left = {m.geom("finger_l").id}
        right = {m.geom("finger_r").id}
        return self.contacts_between(left, geoms) and self.contacts_between(right, geoms)

    def get_state(self) -> np.ndarray:
        """Full simulator state (for save/restore)."""
        size = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION)
        state = np.zeros(size)
        mujoco.mj_getState(self.model, self.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        return state

    def set_state(self, state: np.ndarray) -> None:
        mujoco.mj_setState(self.model, self.data, np.asarray(state, dtype=np.float64),
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(self.model, self.data)
