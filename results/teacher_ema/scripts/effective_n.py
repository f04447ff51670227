"""Effective sample size of pooled evaluation draws: episodes vs initial states.

    python results/teacher_ema/scripts/effective_n.py RUN_DIR [RUN_DIR ...]

Pools the run folders' current rows and prints the success rate with its Wilson interval (episodes
counted as independent), the interval of a bootstrap over initial states (task, seed, episode index;
``harness.stats.clustered``), and the effective n: the n whose binomial interval is as wide.
"""

from __future__ import annotations

import sys

import pandas as pd

from harness.results import current_rows, read_episodes
from harness.stats import STATE_KEY, clustered, wilson


def main(folders: list[str]) -> None:
    df = pd.concat([current_rows(read_episodes(d)) for d in folders])
    n, k = len(df), int(df["success"].sum())
    states = len(df.groupby(list(STATE_KEY)))
    p, blo, bhi = clustered(df)
    lo, hi = wilson(k, n)
    effective = p * (1 - p) / ((bhi - blo) / (2 * 1.96)) ** 2  # the n a binomial interval this wide would have
    print(f"{n} episodes from {states} initial states, success {100 * p:.1f}%: Wilson [{100 * lo:.1f}, "
          f"{100 * hi:.1f}], by state [{100 * blo:.1f}, {100 * bhi:.1f}], effective n {effective:.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
