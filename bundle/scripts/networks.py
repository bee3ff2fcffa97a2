"""Encoders MONAI's ``FlexibleUNet`` lacks: SE-ResNeXt50, the encoder family of the tiled
ResNeXt-UNet baselines of the HuBMAP competition, registered as backbone ``seresnext50``.

Importing this module registers it; ``SERESNEXT50`` is the backbone name for configs
(``backbone: $scripts.networks.SERESNEXT50`` makes sure the module is imported first).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FLEXUNET_BACKBONE, SEResNext50
from torch import nn

__all__ = ["SERESNEXT50", "SEResNeXtEncoder"]

SERESNEXT50 = "seresnext50"


class SEResNeXtEncoder(SEResNext50, BaseEncoder):
    """MONAI's SE-ResNeXt50 as a five-level encoder (strides 2, 4, 8, 16, 32) for ``FlexibleUNet``.

    Pretrained ImageNet weights would be downloaded, which this bundle never does at run time;
    ``pretrained`` must be False.

    Args:
        spatial_dims: 2 for slides.
        in_channels: 3 for RGB.
        pretrained: must be False.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, pretrained: bool = False) -> None:
        if pretrained:
            raise ValueError("pretrained SE-ResNeXt50 weights need a download; train from scratch (pretrained: false)")
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=1)
        *stem, pool = list(self.layer0.children())
        self.stem, self.stem_pool = nn.Sequential(*stem), pool  # the stem's stride-2 output is a skip connection
        del self.layer0, self.adaptive_avg_pool, self.last_linear  # the classification head is not used
        if self.dropout is not None:
            del self.dropout

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.stem(x)
        layer1 = self.layer1(self.stem_pool(stem))
        layer2 = self.layer2(layer1)
        layer3 = self.layer3(layer2)
        return [stem, layer1, layer2, layer3, self.layer4(layer3)]

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"spatial_dims": 2, "in_channels": 3, "pretrained": False}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(64, 256, 512, 1024, 2048)]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return [SERESNEXT50]


FLEXUNET_BACKBONE.register_class(SEResNeXtEncoder)
