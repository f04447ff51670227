"""One registry for every suite; suites are imported lazily so a missing simulator only
matters to the code that needs it."""

from __future__ import annotations

import importlib
from functools import cache

import gymnasium

from tasks.errors import UserInputError

# suite family -> module implementing: suite_names(), task_names(suite), variant_names(suite),
# make_env(suite, task, variant, seed, **kwargs), make_expert(env)
_FAMILIES = {
    "simpler": "tasks.simpler",
    "libero": "tasks.libero",
}


def _family_of(suite: str) -> str:
    for family in _FAMILIES:
        if suite.startswith(family + "_"):
            return family
    raise UserInputError(f"unknown suite {suite!r}; valid suites: {', '.join(suites())}")


def _module(family: str):
    return importlib.import_module(_FAMILIES[family])


@cache
def _family_suites(family: str) -> tuple[str, ...]:
    return tuple(sorted(_module(family).suite_names()))


def _suite_list() -> tuple[str, ...]:
    return tuple(sorted(name for family in _FAMILIES for name in _family_suites(family)))


def suites(family: str | None = None) -> list[str]:
    """All registered suite names, sorted; with ``family`` (``simpler`` or ``libero``) only that family's,
    which imports only that family's simulator."""
    if family is None:
        return list(_suite_list())
    if family not in _FAMILIES:
        raise UserInputError(f"unknown suite family {family!r}; valid families: {', '.join(_FAMILIES)}")
    return list(_family_suites(family))


def _check_suite(suite: str) -> str:
    family = _family_of(suite)
    if suite not in _family_suites(family):
        raise UserInputError(f"unknown suite {suite!r}; valid suites: {', '.join(suites())}")
    return family


def tasks(suite: str) -> list[str]:
    """Task names of ``suite`` in their canonical order (indices refer to this order)."""
    return list(_module(_check_suite(suite)).task_names(suite))


def variants(suite: str) -> list[str]:
    """Visual variant names of ``suite``; the first is the default."""
    return list(_module(_check_suite(suite)).variant_names(suite))


def resolve_task(suite: str, task: str | int) -> str:
    """Map a task name or index (int or digit string) to its name; raise ``ValueError`` listing the valid ones."""
    names = tasks(suite)
    if isinstance(task, int) or (isinstance(task, str) and task.isdigit()):
        idx = int(task)
        if 0 <= idx < len(names):
            return names[idx]
        raise UserInputError(f"task index {idx} out of range for suite {suite!r} (0..{len(names) - 1}); "
                         f"valid tasks: {', '.join(names)}")
    if task not in names:
        raise UserInputError(f"unknown task {task!r} for suite {suite!r}; valid tasks: {', '.join(names)}")
    return task


def resolve_variant(suite: str, variant: str | None) -> str:
    names = variants(suite)
    if variant is None:
        return names[0]
    if variant not in names:
        raise UserInputError(f"unknown variant {variant!r} for suite {suite!r}; valid variants: {', '.join(names)}")
    return variant


def make(suite: str, task: str | int, *, variant: str | None = None, seed: int = 0, **kwargs) -> gymnasium.Env:
    """Build the environment of ``task`` in ``suite`` (see :mod:`tasks.base` for the contract)."""
    family = _check_suite(suite)
    name = resolve_task(suite, task)
    var = resolve_variant(suite, variant)
    return _module(family).make_env(suite, name, var, seed, **kwargs)


def expert(env: gymnasium.Env):
    """Scripted policy for ``env`` with ``reset()`` and ``act(obs) -> (7,) action``; reads privileged state."""
    suite = getattr(env.unwrapped, "suite", None)
    if suite is None:
        raise ValueError(f"{env!r} was not made by tasks.make (it has no 'suite' attribute)")
    return _module(_family_of(suite)).make_expert(env.unwrapped)
