"""Binomial statistics for success rates, and a bootstrap over initial states for episodes that share them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tasks.errors import UserInputError

Z95 = 1.959963984540054
# an initial state: the same under every variant of a draw; the suite keeps two suites' same-named tasks apart
STATE_KEY = ("suite", "task", "seed", "episode_index")
BOOTSTRAP = 2000  # resamples of the bootstrap over initial states (seeded: tables are reproducible)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``successes`` out of ``n`` (95% by default).

    With ``n == 0`` nothing is known and the interval is ``(0.0, 1.0)``.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def by_state(df: pd.DataFrame) -> pd.DataFrame:
    """Successes and episodes per initial state (index: ``STATE_KEY``)."""
    return df.groupby(list(STATE_KEY))["success"].agg(k="sum", n="count")


def clustered(a: pd.DataFrame, b: pd.DataFrame | None = None, resamples: int = BOOTSTRAP,
              seed: int = 0) -> tuple[float, float, float]:
    """Rate of ``a`` (or ``a - b``) and its 95% percentile interval from a bootstrap over initial states.

    Each resample draws the states (``STATE_KEY``) with replacement and pools every episode of a drawn
    state; with ``b``, both policies' episodes of the same drawn states (the states they share, so the
    difference is paired). Returns fractions ``(estimate, low, high)``. A single rate's interval is never
    narrower than Wilson's with one observation per state: a percentile bootstrap collapses to a point
    when every state has the same outcome (all successes, say), which says nothing about few states.
    """
    sa = by_state(a)
    sb = None if b is None else by_state(b)
    if sb is not None:
        shared = sa.index.intersection(sb.index)
        if shared.empty:
            raise UserInputError("the two policies share no initial state (suite, task, seed, episode index): "
                             "evaluate them on the same draws to compare them")
        sa, sb = sa.loc[shared], sb.loc[shared]
    weights = np.random.default_rng(seed).multinomial(len(sa), np.full(len(sa), 1.0 / len(sa)), size=resamples)

    def rates(states: pd.DataFrame) -> np.ndarray:
        return (weights @ states["k"].to_numpy(float)) / np.maximum(weights @ states["n"].to_numpy(float), 1.0)

    def point(states: pd.DataFrame) -> float:
        return float(states["k"].sum() / states["n"].sum())

    boots = rates(sa) - (0.0 if sb is None else rates(sb))
    estimate = point(sa) - (0.0 if sb is None else point(sb))
    low, high = np.percentile(boots, [2.5, 97.5])
    if sb is None:
        floor_low, floor_high = wilson(estimate * len(sa), len(sa))
        low, high = min(low, floor_low), max(high, floor_high)
    return estimate, float(low), float(high)
