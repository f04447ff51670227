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
import os
from dataclasses import dataclass
from pathlib import Path

from tasks.errors import UserInputError


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
        raise UserInputError(f"unknown demo family {family!r}; valid families: {', '.join(FAMILIES)}")
    if not scale > 0:
        raise UserInputError(f"scale must be > 0, got {scale}")
    if family == "libero":
        return [DemoEntry(suite, "sampled_init", max(1, math.ceil(20 * scale)), seed=1) for suite in LIBERO_SUITES]
    entries = []
    for suite in suites.suites(family):
        variants = suites.variants(suite)
        entries.append(DemoEntry(suite, variants[0], max(1, math.ceil(40 * scale)), seed=1))
        for k, variant in enumerate(variants[1:], start=2):
            entries.append(DemoEntry(suite, variant, max(1, math.ceil(6 * scale)), seed=k))
    return entries


def _executor(jobs: int):
    """The worker pool of a parallel recording (spawned processes: each opens its own GL context)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
                               initargs=(os.getpid(),))


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Worker initializer: end this process once ``parent`` is gone. A recording stopped with ``kill`` (or
    killed for memory) ends its workers too, instead of leaving them recording for minutes as orphans that
    ``pkill -f "actdistill demos"`` does not match."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _record_shard(suite: str, variant: str, task: str, episodes: int, seed: int, folder: str, codec: str,
                  noise: float = 0.0, noise_hold: int = 1) -> dict:
    """One (suite, variant, task) folder, in a worker process."""
    import torch

    from harness.demos import record_demos

    torch.set_num_threads(1)
    meta = record_demos(suite, folder, tasks=[task], variant=variant, episodes=episodes, seed=seed, codec=codec,
                        overwrite=Path(folder).exists(), progress=False, noise=noise,
                        noise_hold=noise_hold)
    return {"folder": folder, "episodes": meta["episodes"], "expert_success": meta["expert_success"]}


def parse_boost(text: str | None) -> dict[str, float]:
    """``"move_near=3,open_top_drawer=2"`` -> ``{"move_near": 3.0, ...}``: per-task episode multipliers."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        task, sep, factor = part.partition("=")
        try:
            value = float(factor)
        except ValueError:
            value = float("nan")
        if not sep or not task.strip() or not value > 0:
            raise UserInputError(f"--boost {text!r}: give TASK=FACTOR pairs with a factor > 0, e.g. move_near=3")
        out[task.strip()] = value
    return out


def record_family(family: str, out: str | Path, *, scale: float = 1.0, progress: bool = True, jobs: int = 1,
                  codec: str = "h264", deadline_s: float | None = None, strict: bool = True,
                  noise: float = 0.0, noise_hold: int = 1, boost: dict[str, float] | None = None) -> list[Path]:
    """Record every missing folder of ``family``'s recipe under ``out``; return the finished folders.

    ``jobs == 1`` records one folder per recipe entry, ``out/<suite>/<variant>``. ``jobs > 1`` splits each
    entry by task, ``out/<suite>/<variant>/<task>``, and records those in ``jobs`` processes, largest first
    (the same episodes: a task's initial states depend on (seed, task, episode index) only). Training
    commands take ``out`` itself (dataset folders are found below it). ``deadline_s``: start no new folder
    after that many seconds (time-boxed runs on a lent machine); folders not started are reported. With
    ``jobs > 1`` a folder that fails does not stop the others: every failure is printed, and at the end
    a ``RuntimeError`` names them all (``strict=False``: printed only, the finished folders returned).
    ``noise``, ``noise_hold``: executed-action noise of every episode (``record_demos``). ``boost``: per-task
    multipliers of the episode counts (``{"move_near": 3}``: the task with the most layouts per demonstration);
    with a boost the folders are always per task, ``out/<suite>/<variant>/<task>``.
    """
    import time

    from harness.demos import check_noise
    from tasks.datasets import CODECS

    check_noise(noise, noise_hold)  # before any worker starts, not once per folder
    if jobs < 1:
        raise UserInputError(f"jobs must be >= 1, got {jobs}")
    if codec not in CODECS:
        raise UserInputError(f"unknown image codec {codec!r}; valid codecs: {', '.join(CODECS)}")
    boost = dict(boost or {})
    if boost:
        import tasks as suites

        known = sorted({t for e in recipe(family, scale) for t in suites.tasks(e.suite)})
        bad = sorted(set(boost) - set(known))
        if bad:
            raise UserInputError(f"--boost names unknown task(s) {', '.join(bad)}; tasks of {family}: {', '.join(known)}")
    t0 = time.monotonic()
    if jobs == 1 and not boost:
        return _record_serial(family, Path(out), scale, progress, codec, deadline_s, noise, noise_hold, t0)
    return _record_parallel(family, Path(out), scale, progress, jobs, codec, deadline_s, strict, noise,
                            noise_hold, t0, boost)


def _record_serial(family: str, out: Path, scale: float, progress: bool, codec: str, deadline_s: float | None,
                   noise: float, noise_hold: int, t0: float) -> list[Path]:
    """:func:`record_family` with one job: one folder per recipe entry, in order."""
    import time

    from harness.demos import record_demos

    folders: list[Path] = []
    for entry in recipe(family, scale):
        folder = Path(out) / entry.suite / entry.variant
        if (folder / "meta.json").exists():
            print(f"[demos] {folder}: done already, skipped")
            folders.append(folder)
            continue
        if deadline_s is not None and time.monotonic() - t0 > deadline_s:
            print(f"[demos] {folder}: not started (deadline of {deadline_s:.0f} s passed)")
            continue
        record_demos(entry.suite, str(folder), variant=entry.variant, episodes=entry.episodes, seed=entry.seed,
                     codec=codec, overwrite=folder.exists(), progress=progress, noise=noise,
                     noise_hold=noise_hold)
        folders.append(folder)
    return folders


def _record_parallel(family: str, out: Path, scale: float, progress: bool, jobs: int, codec: str,
                     deadline_s: float | None, strict: bool, noise: float, noise_hold: int, t0: float,
                     boost: dict[str, float] | None = None) -> list[Path]:
    """:func:`record_family` with ``jobs`` processes: one folder per (entry, task), largest first."""
    import time
    from concurrent.futures import FIRST_COMPLETED, wait

    import tasks as suites

    folders: list[Path] = []
    shards = []
    for entry in recipe(family, scale):
        if (Path(out) / entry.suite / entry.variant / "meta.json").exists():  # recorded with jobs=1 before
            folders.append(Path(out) / entry.suite / entry.variant)
            continue
        for task in suites.tasks(entry.suite):
            folder = Path(out) / entry.suite / entry.variant / task
            if (folder / "meta.json").exists():
                folders.append(folder)
            else:
                episodes = max(1, math.ceil(entry.episodes * (boost or {}).get(task, 1.0)))
                shards.append((entry.suite, entry.variant, task, episodes, entry.seed, str(folder), codec, noise,
                               noise_hold))
    shards.sort(key=lambda s: -s[3])
    total = sum(s[3] for s in shards)
    print(f"[demos] {family}: {len(shards)} folders ({total} episodes) to record in {jobs} processes; "
          f"{len(folders)} done already")
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"demos {family}", unit="demo", disable=not progress, dynamic_ncols=True)
    pending, queue, skipped, failed = {}, list(shards), [], []
    with _executor(jobs) as pool:
        while queue or pending:
            while queue and len(pending) < jobs:
                if deadline_s is not None and time.monotonic() - t0 > deadline_s:
                    skipped, queue = queue, []
                    break
                shard = queue.pop(0)
                pending[pool.submit(_record_shard, *shard)] = shard
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                shard = pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001  (named below and raised at the end when strict)
                    failed.append(f"{shard[5]}: {type(exc).__name__}: {exc}")
                    print(f"[demos] {failed[-1]}")
                    continue
                folders.append(Path(result["folder"]))
                bar.update(result["episodes"])
    bar.close()
    for shard in skipped:
        print(f"[demos] {shard[5]}: not started (deadline of {deadline_s:.0f} s passed)")
    if failed and strict:
        raise RuntimeError(f"{len(failed)} demo folder(s) failed:\n" + "\n".join(failed))
    return sorted(folders)
