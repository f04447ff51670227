"""The verbs of ``actdistill``: each module has ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``, and imports its heavy dependencies inside ``run`` so that ``--help`` stays fast.

Shared argument types live here: an argparse ``type=`` that rejects a bad path before any work starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _first_file(path: Path) -> Path | None:
    """The first component of ``path`` (itself or a parent) that exists as something other than a folder."""
    for part in [path, *path.parents]:
        if part.exists():
            return None if part.is_dir() else part
    return None


def out_folder(text: str) -> str:
    """argparse type of an output folder: refuses a path where a file stands (itself or a parent)."""
    blocker = _first_file(Path(text))
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be a folder: {str(blocker)!r} is a file; "
                                         "give a folder path")
    return text


def out_file(text: str) -> str:
    """argparse type of an output file: refuses an existing folder, or a parent path that is a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path (e.g. {text.rstrip('/')}/out.json)")
    blocker = _first_file(path.parent)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {str(blocker)!r} is a file, not a folder")
    return text
