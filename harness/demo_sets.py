"""The reference demonstration sets the reference teachers are trained on, as recipes.

    actdistill demos --family simpler --out data/simpler        # all (suite, variant) folders
    actdistill demos --family simpler --out data/simpler --scale 0.2
    actdistill demos --family libero --out data/libero --scale 0.5

A family's recipe lists (suite, variant, episodes per task, seed) entries; each becomes the
dataset folder ``OUT/<suite>/<variant>``. SIMPLER-style suites: the default variant gets most
episodes; every other variant a few, each with its own seed so the initial states differ too.
LIBERO (spatial, object, goal, 10): 20 episodes per task on the ``sampled_init`` variant, whose
placements come from LIBERO's own sampler, so no demonstration starts from one of the 50 official
init states that evaluation uses. Finished folders (with a
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


FAMILIES = ("simpler", "libero")
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def recipe(family: str, scale: float = 1.0) -> list[DemoEntry]:
    """The entries of ``family``'s reference set; ``scale`` multiplies the episode counts."""
    import tasks as suites

    if family not in FAMILIES:
        raise ValueError(f"unknown demo family {family!r}; valid families: {', '.join(FAMILIES)}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if family == "libero":
        return [DemoEntry(suite, "sampled_init", max(1, math.ceil(20 * scale)), seed=1) for suite in LIBERO_SUITES]
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
