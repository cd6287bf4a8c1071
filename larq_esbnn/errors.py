"""The package's own error types and argparse value checks.

A :class:`UserError` is a mistake in what the user gave (an argument, a data
folder, a weights file, an output path). The command line prints its message
as one line and exits 2; any other exception is a bug and keeps its traceback.
Each type also derives from the builtin exception that callers of the Python
API already catch (``ValueError`` / ``FileExistsError``).

This module imports nothing from the package, so every module can use it.
"""

import argparse
import pathlib


class UserError(Exception):
    """Base class: the message names the bad value and what is allowed."""


class BadArgument(UserError, ValueError):
    """An argument, option or recipe value outside what is allowed."""


class BadData(UserError, ValueError):
    """A data folder, archive or image that cannot be used."""


class BadWeights(UserError, ValueError):
    """A weights file or checkpoint that cannot be read or does not fit."""


class OutputExists(UserError, FileExistsError):
    """An output that already exists and would be replaced (``--overwrite`` allows it)."""


def _number(kind, low, inclusive, what):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (value == low and not inclusive) or value != value:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    check.__name__ = what  # argparse names the type in some messages
    return check


positive_int = _number(int, 1, True, "an integer >= 1")
non_negative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a number > 0")


def check_new_output(path, overwrite=False):
    """:class:`OutputExists` when ``path`` exists and ``overwrite`` is false."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise OutputExists(f"output {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputExists(f"output {path} already exists; pass --overwrite to replace it or choose "
                           "another name")
