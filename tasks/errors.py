"""The project's error for bad user input: ``actdistill`` prints its message on one line and exits 2.

Raise :class:`UserInputError` (a ``ValueError``) where a value a user gave is wrong, naming the bad value and
the valid choices or what to do; :class:`MissingInputError` (also a ``FileNotFoundError``) where a file or
folder a user named does not exist. Any other exception is a bug and shows its traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A value given by the user is invalid; the message names it and says what to do instead."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder named by the user does not exist (or lacks a file it must hold)."""


class ExistingOutputError(UserInputError, FileExistsError):
    """An output named by the user already holds something that would be replaced; the message says how."""
