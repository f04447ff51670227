"""Policies from any importable factory: ``actdistill eval --policy py:package.module:factory``.

    actdistill eval --policy py:my_lab.policies:make_policy --suite simpler_widowx --episodes 10
    PYTHONPATH=. actdistill eval --policy py:my_policy:MyPolicy --suite libero_spatial --workers 2

``factory`` is any callable of the module (a function or a class). It is called once per environment: with
the environment when it takes one positional argument (``factory(env)``), else with none (``factory()``).
What it returns must follow :class:`tasks.base.Policy`: ``reset()`` and ``act(obs) -> (7,) action``, with the
optional ``needs_obs_next()`` and ``last_info``. The module must be importable wherever episodes run (every
Ray worker imports it). The policy hash covers the spec and the Python files of the module's folder (its own
file for a top-level module), so editing them runs the episodes again.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.evaluate import PolicySource
from tasks.errors import MissingInputError, UserInputError
from tasks.provenance import files_hash

PREFIX = "py:"
REQUIRED = ("reset", "act")  # the methods of the tasks.base.Policy protocol


def parse_spec(spec: str) -> tuple[str, str]:
    """``(module, factory)`` of ``py:package.module:factory``; raises :class:`~tasks.errors.UserInputError`
    naming the expected form."""
    body = spec.removeprefix(PREFIX)
    module, sep, name = body.rpartition(":")
    if not sep or not module or not name.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
        raise UserInputError(f"--policy {spec!r} is not a plug-in spec; expected py:package.module:factory, "
                             "e.g. py:my_lab.policies:make_policy")
    return module, name


def _import(module_name: str, spec: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise MissingInputError(f"--policy {spec!r}: no module named {exc.name!r} on the Python path; install "
                                    "it, or add its folder to PYTHONPATH") from exc
        raise UserInputError(f"--policy {spec!r}: importing {module_name!r} failed: {exc}") from exc


def load_factory(spec: str) -> tuple[Callable[..., Any], ModuleType, bool]:
    """The factory of ``spec``, its module, and whether it takes the environment (one positional argument).

    Raises :class:`~tasks.errors.MissingInputError` when the module cannot be found and
    :class:`~tasks.errors.UserInputError` when the module lacks the name (listing its callables), the name is
    not callable, or its signature takes neither nothing nor one argument.
    """
    module_name, name = parse_spec(spec)
    module = _import(module_name, spec)
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        choices = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        what = "has no" if factory is None else f"has a non-callable {type(factory).__name__}"
        raise UserInputError(f"--policy {spec!r}: module {module_name!r} {what} {name!r}; its callables: "
                             f"{', '.join(choices) or '(none)'}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none: call them without arguments
        return factory, module, False
    for args, takes_env in (((None,), True), ((), False)):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return factory, module, takes_env
    raise UserInputError(f"--policy {spec!r}: {name}{signature} must take the environment or nothing")


def check_policy(policy: Any, spec: str) -> Any:
    """``policy`` itself when it follows :class:`tasks.base.Policy`; else a
    :class:`~tasks.errors.UserInputError` naming what it lacks."""
    missing = [m for m in REQUIRED if not callable(getattr(policy, m, None))]
    if missing:
        raise UserInputError(f"--policy {spec!r}: the factory's {type(policy).__name__} has no "
                             f"{', '.join(f'{m}()' for m in missing)}; a policy needs reset() and "
                             "act(obs) -> (7,) action (tasks.base.Policy)")
    return policy


def _code_hash(module: ModuleType) -> str:
    """Hash of the Python files of the module's package folder, or of its own file for a top-level module."""
    source = inspect.getsourcefile(module) if hasattr(module, "__file__") else None
    if source is None:
        return str(getattr(module, "__version__", ""))
    path = Path(source)
    files = sorted(path.parent.glob("*.py")) if module.__package__ else [path]
    return files_hash(files, path.parent)


def plugin_source(spec: str) -> PolicySource:
    """The :class:`~harness.evaluate.PolicySource` of ``py:package.module:factory`` (see the module docstring).

    The module is imported and the factory checked here, before any episode; what the factory returns is
    checked each time it is called (:func:`check_policy`).
    """
    factory, module, takes_env = load_factory(spec)
    digest = "py-" + hashlib.sha256(f"{spec}|{_code_hash(module)}".encode()).hexdigest()[:16]

    def build(env: Any) -> Any:
        return check_policy(factory(env) if takes_env else factory(), spec)

    meta = {"policy": spec, "kind": "policy", "method": f"plug-in {spec.removeprefix(PREFIX)}"}
    return PolicySource(spec, build=build, hash_for=lambda env: digest, meta=meta)
