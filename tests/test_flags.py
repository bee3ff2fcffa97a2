"""On/off settings (scripts/flags.py): what python-fire hands over from ``--tta false``, read as meant,
in the function and through the configs that use it."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from conftest import BUNDLE
from scripts.flags import as_flag


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("false", False),
        ("False", False),
        (" TRUE ", True),
        ("no", False),
        ("on", True),
        ("0", False),
        ("1", True),
    ],
)
def test_on_off_values_read_as_meant(value, expected):
    assert as_flag(value, "tta") is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, None, 0.5])
def test_anything_else_is_refused_naming_the_setting(value):
    with pytest.raises(SystemExit, match=r"^error: --tta must be true or false, got "):
        as_flag(value, "tta")


@pytest.mark.parametrize("given, passes", [("false", 1), ("true", 4), (False, 1)])
def test_inference_config_turns_tta_off_with_the_word_false(given, passes):
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["tta"] = given  # what `--tta false` puts there
    assert len(parser.get_parsed_content("inferer").flips) == passes
