"""The one kind of error a user sees as a single line: bad input, named by file or row.

Workflow entry points catch :class:`InputError` and print its message instead of a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["DatasetError", "InputError", "SlideError"]


class InputError(Exception):
    """Bad input that the user can fix; the message names the file or row and says what to do."""


class DatasetError(InputError):
    """A dataset folder or CSV file that does not have the HuBMAP layout."""


class SlideError(InputError):
    """A slide file that cannot be read or converted."""
