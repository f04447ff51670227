"""Shared test set-up."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op torch thread: on a shared 2-core machine two contending threads run several times slower."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teacher():
    """A tiny random teacher VLA (``test_student.tiny_teacher``), one per test module."""
    from test_student import tiny_teacher

    return tiny_teacher()


@pytest.fixture(scope="module")
def data():
    """Synthetic demonstrations for the tiny teacher (``test_student.SyntheticDemos``), one per test module."""
    from test_student import SyntheticDemos

    return SyntheticDemos()


@pytest.fixture(autouse=True)
def fresh_probe_envs():
    """Close the probe environments ``harness.evaluate`` keeps, after every test: a test's suites (e.g. the
    fake family registered with monkeypatch) must not reach the next test through that cache."""
    yield
    evaluate = sys.modules.get("harness.evaluate")
    if evaluate is not None:
        evaluate.close_probe_envs()
