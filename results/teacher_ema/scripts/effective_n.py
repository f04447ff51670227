"""Effective sample size of pooled evaluation draws: episodes vs initial states.

    python results/teacher_ema/scripts/effective_n.py RUN_DIR [RUN_DIR ...]

Pools the run folders' current rows and prints the success rate with its Wilson interval (episodes
counted as independent), the interval of a bootstrap over initial states (task, seed, episode index;
``harness.compare.clustered``), and the effective n, p(1 - p) / var(bootstrap).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from harness.compare import STATE_KEY
from harness.results import current_rows, read_episodes
from harness.stats import wilson


def main(folders: list[str], resamples: int = 4000) -> None:
    df = pd.concat([current_rows(read_episodes(d)) for d in folders])
    states = df.groupby(list(STATE_KEY))["success"].agg(k="sum", n="count")
    n, k = len(df), int(df["success"].sum())
    p = k / n
    weights = np.random.default_rng(0).multinomial(len(states), np.full(len(states), 1 / len(states)), size=resamples)
    boots = (weights @ states["k"].to_numpy(float)) / (weights @ states["n"].to_numpy(float))
    lo, hi = wilson(k, n)
    blo, bhi = np.percentile(boots, [2.5, 97.5])
    print(f"{n} episodes from {len(states)} initial states, success {100 * p:.1f}%: Wilson [{100 * lo:.1f}, "
          f"{100 * hi:.1f}], by state [{100 * blo:.1f}, {100 * bhi:.1f}], effective n {p * (1 - p) / boots.var():.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
