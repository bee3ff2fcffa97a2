"""MONAI-style transforms that MONAI lacks.

- :func:`label_window` / :class:`LoadLabelPatchd`: the label window of an image window, from the zarr store.
- :class:`RandStainJitter` / :class:`RandStainJitterd`: stain colour augmentation of RGB patches
  (HED jitter, Tellez et al. 2018), run on torch tensors.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import ClassVar

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type
from skimage.color import hed_from_rgb, rgb_from_hed

from .keys import DOWNSCALE, LOCATION, SIZE, STORE
from .store import LABEL, read_window

__all__ = ["HED_FROM_RGB", "RGB_FROM_HED", "LoadLabelPatchd", "RandStainJitter", "RandStainJitterd", "label_window"]

# Stain (optical density) vectors of haematoxylin, eosin and DAB, one per row (Ruifrok & Johnston 2001),
# and the inverse. A row vector of optical densities ``od`` (R, G, B) has stain concentrations
# ``od @ HED_FROM_RGB``, and ``concentrations @ RGB_FROM_HED`` gives it back.
RGB_FROM_HED: np.ndarray = rgb_from_hed
HED_FROM_RGB: np.ndarray = hed_from_rgb


def label_window(meta: Mapping) -> np.ndarray:
    """The label window (``uint8``, zero outside the slide) matching an image window read by
    :mod:`scripts.datasets`, from the metadata of that window (``store``, level-0 ``location``,
    working-resolution ``size``, ``downscale``)."""
    # past the slide's edge the image mirrors the inside while the label stays background: mirroring the
    # label too scored lower on the real tiles (docs/design.md, "Edge effects and blending")
    downscale = int(meta[DOWNSCALE])
    top, left = (int(v) // downscale for v in meta[LOCATION])
    height, width = (int(v) for v in meta[SIZE])
    return read_window(meta[STORE], LABEL, top, left, height, width)


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
        window = label_window(meta)
        for key in self.keys:
            d[key] = MetaTensor(torch.from_numpy(window[None].astype(np.float32)), meta=dict(meta))
        return d


class RandStainJitter(RandomizableTransform):
    """Randomly perturb the stain colours of a channel-first RGB image in [0, 1] (HED jitter).

    The method of Tellez et al. 2018 ("Whole-slide mitosis detection in H&E breast histology using
    PHH3 as a reference to train distilled stain-invariant convolutional networks"): the image goes to
    optical density ``od = -log(clip(I, 1/255, 1))``, to stain concentrations ``c = od @ inv(M)`` with
    the haematoxylin-eosin-DAB matrix ``M`` (:data:`RGB_FROM_HED`), each stain channel becomes
    ``c_i * a_i + b_i`` with ``a_i ~ U(1 - sigma_scale, 1 + sigma_scale)`` and
    ``b_i ~ U(-sigma_bias, sigma_bias)``, and the image comes back as ``exp(-c @ M)`` clipped to [0, 1].
    The whole map is one affine 3x3 step on the optical densities (``od' = A od + t``), so the cost is a
    log, a matrix product and an exp over the image.

    The matrix is the H&E(-DAB) one; in PAS the magenta (periodic acid-Schiff) stain lies close enough to
    eosin, and the haematoxylin counterstain is the same, so jittering these channels gives a plausible
    variation of PAS staining too. Glass stays white up to the bias: a white pixel has ``c = 0``, so with
    ``sigma_bias = 0`` it is returned unchanged; a bias only darkens it (a negative one is clipped at 1),
    by at most ``1 - exp(-sigma_bias * sum(M[:, k]))`` in channel ``k``, the column sums being 0.99, 2.26
    and 1.18 for R, G, B: at the default 0.05 at most 0.05 / 0.11 / 0.06, in half the draws under 0.02.
    ``sigma_bias`` is in natural-log optical density units (scikit-image's ``rgb2hed`` divides the
    optical density by ``-log(1e-6)``, so the same number there is a jitter 13.8 times as strong).

    Args:
        prob: probability of jittering an image.
        sigma_scale: half-width of the uniform range of the multiplicative factor around 1.
        sigma_bias: half-width of the uniform range of the additive shift around 0 (in natural-log
            optical density units of concentration).

    The input is a ``(3, H, W)`` (or ``(3, ...)``) float numpy array, torch Tensor or MetaTensor; the
    output has the same type, dtype and device (and, for a MetaTensor, its metadata). The arithmetic runs
    in float32 (float64 for float64 input). Integer images are refused: scale them to [0, 1] first.
    """

    backend: ClassVar[list[TransformBackends]] = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float = 0.1, sigma_scale: float = 0.05, sigma_bias: float = 0.05) -> None:
        RandomizableTransform.__init__(self, prob)
        if sigma_scale < 0 or sigma_bias < 0:
            raise ValueError(f"sigma_scale and sigma_bias must be >= 0, got {sigma_scale} and {sigma_bias}.")
        self.sigma_scale = float(sigma_scale)
        self.sigma_bias = float(sigma_bias)
        self.scale = np.ones(3)
        self.bias = np.zeros(3)

    def randomize(self, data: NdarrayOrTensor | None = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self.scale = self.R.uniform(1.0 - self.sigma_scale, 1.0 + self.sigma_scale, size=3)
        self.bias = self.R.uniform(-self.sigma_bias, self.sigma_bias, size=3)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Jitter ``img`` (a fresh draw unless ``randomize`` is False); returned as is when not applied."""
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        return self.jitter(img, self.scale, self.bias)

    @staticmethod
    def jitter(img: NdarrayOrTensor, scale, bias) -> NdarrayOrTensor:
        """Apply the HED jitter with the given per-stain ``scale`` and ``bias`` (three values each)."""
        if img.shape[0] != 3:
            raise ValueError(f"expected a channel-first RGB image (3, ...), got shape {tuple(img.shape)}.")
        x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if not x.is_floating_point():
            raise TypeError(f"expected a float image in [0, 1], got dtype {x.dtype}.")
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        # od' = M^T (diag(a) inv(M)^T od + b) for column vectors: one affine map of the optical density.
        matrix = RGB_FROM_HED.T @ (np.asarray(scale, np.float64)[:, None] * HED_FROM_RGB.T)
        shift = RGB_FROM_HED.T @ np.asarray(bias, np.float64)
        matrix_t = torch.as_tensor(matrix, dtype=work, device=x.device)
        shift_t = torch.as_tensor(shift, dtype=work, device=x.device)[:, None]
        od = torch.log(x.reshape(3, -1).to(work).clamp(1.0 / 255.0, 1.0)).neg_()
        out = torch.addmm(shift_t, matrix_t, od).neg_().exp_().clamp_(0.0, 1.0).reshape(x.shape)
        return convert_to_dst_type(out, img)[0]


class RandStainJitterd(RandomizableTransform, MapTransform):
    """Dictionary-based version of :class:`RandStainJitter`: every key gets the same draw.

    Args:
        keys: the RGB image key(s) to jitter (not labels).
        prob: probability of jittering the sample.
        sigma_scale: see :class:`RandStainJitter`.
        sigma_bias: see :class:`RandStainJitter`.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = RandStainJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        sigma_scale: float = 0.05,
        sigma_bias: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.jitter = RandStainJitter(prob=1.0, sigma_scale=sigma_scale, sigma_bias=sigma_bias)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandStainJitterd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        first_key: Hashable = self.first_key(d)
        if first_key == ():
            return d
        self.jitter.randomize(d[first_key])
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d
