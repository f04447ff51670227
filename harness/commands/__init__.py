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


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` for a verb's ``--threads`` (None: torch's choice); refuses < 1."""
    if threads is None:
        return
    from tasks.errors import UserInputError

    if threads < 1:
        raise UserInputError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def write_json(path: str | None, rows) -> None:
    """Write ``rows`` as indented JSON to ``path`` (a verb's ``--json``; nothing when None), folders created."""
    if path is None:
        return
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rows, indent=1))


def out_file(text: str) -> str:
    """argparse type of an output file: refuses an existing folder, or a parent path that is a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file path (e.g. {text.rstrip('/')}/out.json)")
    blocker = _first_file(path.parent)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {str(blocker)!r} is a file, not a folder")
    return text
