"""``--policy py:package.module:factory``: a policy from any importable factory, checked before it runs."""

from __future__ import annotations

import json
import textwrap

import pytest
from fake_env import register

from harness.cli import main
from harness.evaluate import evaluate, policy_source
from harness.results import ResultsStore
from tasks.errors import MissingInputError, UserInputError

MODULE = '''
import numpy as np


class GoalSeeker:
    """Reads the fake env's goal when it has one (factory(env)); else stands still (factory())."""

    def __init__(self, env=None):
        self.env = env

    def reset(self):
        pass

    def act(self, obs):
        action = np.zeros(7, np.float32)
        if self.env is not None:
            action[:2] = np.clip((self.env.goal - self.env.pos) / 0.2, -1, 1)
        return action


def make(env):
    return GoalSeeker(env.unwrapped)


def make_still():
    return GoalSeeker()


def no_act(env):
    return object()


def two_args(env, device):
    return GoalSeeker(env)


NOT_CALLABLE = 3
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package ``my_lab`` with the module ``my_lab.policies`` (see :data:`MODULE`) on the Python path."""
    package = tmp_path / "my_lab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "policies.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return package / "policies.py"


def test_factory_of_env_or_of_nothing_runs_like_any_policy(plugin, monkeypatch, tmp_path, capsys):
    suite = register(monkeypatch)
    run = {"tasks": ["reach"], "episodes": 3, "videos": 0, "progress": False, "table": False}
    seeker = evaluate(policy_source("py:my_lab.policies:make"), suite, out=tmp_path / "seek", **run)
    still = evaluate(policy_source("py:my_lab.policies:make_still"), suite, out=tmp_path / "still", **run)
    assert seeker["overall"]["successes"] == 3 and still["overall"]["successes"] == 0  # env given vs not
    assert still["overall"]["failures"] == 0 and ResultsStore(tmp_path / "still").frame()["steps"].eq(12).all()

    source = policy_source("py:my_lab.policies:make")
    assert source.meta["kind"] == "policy" and source.hash_for(None) == policy_source("py:my_lab.policies:make").hash_for(None)
    assert source.hash_for(None) != policy_source("py:my_lab.policies:make_still").hash_for(None)
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    assert policy_source("py:my_lab.policies:make").hash_for(None) != source.hash_for(None)  # code edits rerun

    out = tmp_path / "cli"
    assert main(["eval", "--policy", "py:my_lab.policies:make", "--suite", suite, "--tasks", "reach",
                 "--episodes", "2", "--out", str(out), "--no-progress", "--videos", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["overall"]["successes"] == 2


@pytest.mark.parametrize("spec, error, needle", [
    ("py:my_lab.policies:no_act", UserInputError,
     "the factory's object has no reset(), act(); a policy needs reset() and act(obs) -> (7,) action"),
    ("py:my_lab.policies:nope", UserInputError,
     "module 'my_lab.policies' has no 'nope'; its callables: GoalSeeker, make, make_still, no_act, two_args"),
    ("py:my_lab.policies:NOT_CALLABLE", UserInputError, "has a non-callable int 'NOT_CALLABLE'"),
    ("py:my_lab.policies:two_args", UserInputError, "two_args(env, device) must take the environment or nothing"),
    ("py:my_lab.nowhere:make", MissingInputError, "no module named 'my_lab.nowhere' on the Python path"),
    ("py:my_lab.policies", UserInputError, "expected py:package.module:factory"),
])
def test_bad_factories_are_clear_errors_before_any_episode(plugin, monkeypatch, tmp_path, spec, error, needle):
    suite = register(monkeypatch)
    with pytest.raises(error) as info:
        evaluate(spec, suite, tasks=["reach"], episodes=1, out=tmp_path / "run", progress=False, quiet=True)
    assert needle in str(info.value)
    assert not (tmp_path / "run" / "episodes.parts").exists()  # not one episode stored
