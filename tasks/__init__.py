"""Task suites as gymnasium environments, scripted experts and demonstration datasets.

Quick use::

    import tasks
    tasks.suites()                                   # ['libero_10', ..., 'simpler_google', 'simpler_widowx']
    env = tasks.make("simpler_widowx", "put_carrot_on_plate", variant="visual_matching", seed=0)
    obs, info = env.reset(options={"episode_index": 3})
    expert = tasks.expert(env)
    obs, reward, terminated, truncated, info = env.step(expert.act(obs))

The environment contract every suite follows is documented in :mod:`tasks.base`.
"""

from __future__ import annotations

import importlib

__all__ = ["expert", "make", "suites", "tasks", "variants"]


def __getattr__(name: str):
    """The registry's functions, imported on first use: ``tasks.errors`` alone imports no simulator code."""
    if name in __all__:
        return getattr(importlib.import_module("tasks.registry"), name)
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
