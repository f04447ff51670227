"""The project's error for bad user input: ``actdistill`` prints its message on one line and exits 2.

Raise :class:`UserInputError` (a ``ValueError``) where a value a user gave is wrong, naming the bad value and
the valid choices or what to do; :class:`MissingInputError` (also a ``FileNotFoundError``) where a file or
folder a user named does not exist; :class:`SetupError` where the machine's setup stops the work (every
worker process dying, a renderer that cannot start), saying what to check. Any other exception is a bug and
shows its traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A value given by the user is invalid; the message names it and says what to do instead."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder named by the user does not exist (or lacks a file it must hold)."""


class ExistingOutputError(UserInputError, FileExistsError):
    """An output named by the user already holds something that would be replaced; the message says how."""


class SetupError(UserInputError, RuntimeError):
    """The machine's setup stops the work (e.g. every worker dies before an episode ends); nothing was stored
    for it, and the message says what to check."""
