"""The one kind of error a user sees as a single line: bad input, named by file or row.

Workflow entry points (wrapped in :func:`user_errors`) catch :class:`InputError` and print its
message instead of a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["DatasetError", "InputError", "SlideError", "user_errors"]


class InputError(Exception):
    """Bad input that the user can fix; the message names the file or row and says what to do."""


class DatasetError(InputError):
    """A dataset folder or CSV file that does not have the HuBMAP layout."""


class SlideError(InputError):
    """A slide file that cannot be read or converted."""


def user_errors(function: Callable) -> Callable:
    """Exit with the one-line message of an :class:`InputError` instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InputError as error:
            raise SystemExit(f"error: {error}") from None

    return wrapper
