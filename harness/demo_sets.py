"""The reference demonstration sets the reference teachers are trained on, as recipes.

    actdistill demos --family simpler --out data/simpler        # all (suite, variant) folders
    actdistill demos --family simpler --out data/simpler --scale 0.2

A family's recipe lists (suite, variant, episodes per task, seed) entries; each becomes the
dataset folder ``OUT/<suite>/<variant>``. The default variant gets most episodes; every other
variant a few, each with its own seed so the initial states differ too. Finished folders (with a
``meta.json``) are skipped, an unfinished one is recorded again, so an interrupted run resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoEntry:
    suite: str
    variant: str
    episodes: int
    seed: int


FAMILIES = ("simpler",)


def recipe(family: str, scale: float = 1.0) -> list[DemoEntry]:
    """The entries of ``family``'s reference set; ``scale`` multiplies the episode counts."""
    import tasks as suites

    if family not in FAMILIES:
        raise ValueError(f"unknown demo family {family!r}; valid families: {', '.join(FAMILIES)}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    entries = []
    for suite in [s for s in suites.suites() if s.startswith(family + "_")]:
        variants = suites.variants(suite)
        entries.append(DemoEntry(suite, variants[0], max(1, math.ceil(40 * scale)), seed=1))
        for k, variant in enumerate(variants[1:], start=2):
            entries.append(DemoEntry(suite, variant, max(1, math.ceil(6 * scale)), seed=k))
    return entries


def record_family(family: str, out: str | Path, *, scale: float = 1.0, progress: bool = True) -> list[Path]:
    """Record every missing folder of ``family``'s recipe under ``out``; return all its folders."""
    from harness.commands.demos import record_demos

    folders = []
    for entry in recipe(family, scale):
        folder = Path(out) / entry.suite / entry.variant
        folders.append(folder)
        if (folder / "meta.json").exists():
            print(f"[demos] {folder}: done already, skipped")
            continue
        record_demos(entry.suite, str(folder), variant=entry.variant, episodes=entry.episodes, seed=entry.seed,
                     overwrite=folder.exists(), progress=progress)
    return folders
