"""Encoders registered for MONAI's FlexibleUNet (scripts/networks.py)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import FLEXUNET_BACKBONE, FlexibleUNet

from scripts.networks import SERESNEXT50, SEResNeXtEncoder


def test_seresnext_encoder_gives_five_levels_at_strides_2_to_32():
    encoder = SEResNeXtEncoder().eval()
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == list(SEResNeXtEncoder.num_channels_per_output()[0])
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]


def test_flexibleunet_builds_on_the_registered_encoder():
    assert SERESNEXT50 in FLEXUNET_BACKBONE.register_dict
    network = FlexibleUNet(3, 1, backbone=SERESNEXT50, pretrained=False, spatial_dims=2).eval()
    with torch.no_grad():
        assert network(torch.rand(2, 3, 96, 64)).shape == (2, 1, 96, 64)


def test_pretrained_weights_are_refused_rather_than_downloaded():
    with pytest.raises(ValueError, match="download"):
        SEResNeXtEncoder(pretrained=True)
