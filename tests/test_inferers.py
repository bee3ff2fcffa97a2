"""The window inferer (scripts/inferers.py): uint8 windows scaled on the way in, channels-last
layout, and flip TTA as the mean of the flipped-back outputs."""

from __future__ import annotations

import torch
from scripts.inferers import WindowInferer


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3)).eval()


def test_uint8_windows_give_what_their_0_to_1_floats_give():
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    inferer, model = WindowInferer(amp=False), network()
    with torch.no_grad():
        torch.testing.assert_close(inferer(pixels, model), inferer(pixels.float() / 255, model))
        assert inferer(pixels, model).dtype == torch.float32


def test_channels_last_changes_the_layout_not_the_values():
    inputs = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = network()(inputs)
        torch.testing.assert_close(WindowInferer(amp=False)(inputs, network()), expected)
        torch.testing.assert_close(WindowInferer(amp=False, channels_last=False)(inputs, network()), expected)


def test_flip_tta_is_the_mean_of_the_four_flipped_back_outputs():
    inputs, model = torch.rand(1, 3, 16, 20), network()
    with torch.no_grad():
        flipped = [torch.flip(model(torch.flip(inputs, dims)), dims) if dims else model(inputs)
                   for dims in ((), (2,), (3,), (2, 3))]
        tta = WindowInferer(amp=False, tta=True)(inputs, model)
    torch.testing.assert_close(tta, sum(flipped) / 4)
    assert not torch.allclose(tta, flipped[0])  # the flips do change this network's output
