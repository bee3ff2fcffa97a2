"""MONAI-style transforms that MONAI lacks: label patches from the zarr store."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .prepare import read_window

__all__ = ["LoadLabelPatchd"]


class LoadLabelPatchd(MapTransform):
    """Add the label window that matches an image patch read by :mod:`scripts.datasets`.

    The image metadata names the slide's zarr store, the level-0 location and the patch size at
    the working resolution; the label is read from the store's ``label`` array at that resolution
    (zero outside the slide).

    Args:
        keys: the label key(s) to create.
        image_key: the image whose metadata locates the patch.
    """

    def __init__(self, keys: KeysCollection = "label", image_key: str = "image") -> None:
        super().__init__(keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        meta = d[self.image_key].meta
        downscale = int(meta["downscale"])
        top, left = (int(v) // downscale for v in meta["location"])
        height, width = (int(v) for v in meta["size"])
        window = read_window(meta["store"], "label", top, left, height, width)
        for key in self.keys:
            d[key] = MetaTensor(torch.from_numpy(window[None].astype(np.float32)), meta=dict(meta))
        return d

