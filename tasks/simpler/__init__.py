"""SIMPLER-style suites in plain MuJoCo: ``simpler_google`` (google-robot-style 7-DoF arm) and
``simpler_widowx`` (widowx-style 6-DoF arm). Each suite module exposes ``ARM`` and ``TASKS``
(an ordered dict of task name -> :class:`tasks.simpler.env.Task` subclass)."""

from __future__ import annotations

import importlib

from tasks.simpler.env import VARIANTS

_SUITES = {"simpler_google": "tasks.simpler.google", "simpler_widowx": "tasks.simpler.widowx"}


def _suite_module(suite: str):
    return importlib.import_module(_SUITES[suite])


def suite_names() -> list[str]:
    return list(_SUITES)


def task_names(suite: str) -> list[str]:
    return list(_suite_module(suite).TASKS)


def variant_names(suite: str) -> list[str]:
    return list(VARIANTS)


def make_env(suite: str, task: str, variant: str, seed: int, **kwargs):
    from tasks.simpler.env import SimplerEnv

    mod = _suite_module(suite)
    return SimplerEnv(suite, mod.TASKS[task](), mod.ARM, variant=variant, seed=seed, **kwargs)


def make_expert(env):
    return env.task_spec.make_expert(env)
