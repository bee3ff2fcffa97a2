"""On/off settings as they arrive from the command line.

``python -m monai.bundle run ... --tta false`` hands its values to python-fire, which makes
``False`` a boolean but leaves ``false`` the string ``'false'``, and any non-empty string is true.
The configs pass every on/off setting through :func:`as_flag`, so ``--tta false`` turns TTA off.
"""

from __future__ import annotations

from .errors import InputError, user_errors

__all__ = ["as_flag"]

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


@user_errors
def as_flag(value: bool | int | str, name: str) -> bool:
    """The boolean a user meant by an on/off setting.

    Args:
        value: a bool, 0 or 1, or one of ``true/false, yes/no, on/off, 1/0`` in any case.
        name: the setting, named in the error.

    Returns:
        The setting as a bool.

    Raises:
        SystemExit: for any other value, with one line naming the setting and the values it takes.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise InputError(f"--{name} must be true or false, got {value!r}")
