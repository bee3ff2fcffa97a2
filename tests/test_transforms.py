"""Stain colour augmentation of the bundle (scripts/transforms.py: RandStainJitter, RandStainJitterd).

LoadLabelPatchd is covered with real patches in test_datasets.py and test_real_data.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from conftest import disc_slide
from scripts.transforms import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    RandStainJitter,
    RandStainJitterd,
)


def pas_patch(size: int = 192) -> torch.Tensor:
    """A ``(3, size, size)`` float32 patch in [0, 1]: glass, pink PAS tissue and a purple glomerulus."""
    image, _ = disc_slide(shape=(size, size), discs=((size // 2, size // 2, size // 4),), seed=3)
    image[:12] = 242  # a strip of glass at the top, outside the tissue ellipse anyway
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255.0).contiguous()


def random_image(seed: int = 0, shape=(3, 32, 40)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random(shape, dtype=np.float32))


def reference_jitter(image: np.ndarray, scale, bias) -> np.ndarray:
    """The method written per pixel with row vectors, as in the paper (float64)."""
    pixels = image.reshape(3, -1).T.astype(np.float64)
    od = -np.log(np.clip(pixels, 1 / 255, 1))
    stains = od @ HED_FROM_RGB * np.asarray(scale) + np.asarray(bias)
    return np.clip(np.exp(-stains @ RGB_FROM_HED), 0, 1).T.reshape(image.shape)


def test_prob_zero_returns_the_input_unchanged():
    image = random_image()
    copy = image.clone()
    out = RandStainJitter(prob=0.0, sigma_scale=0.5, sigma_bias=0.5)(image)
    assert out is image
    assert torch.equal(out, copy)
    sample = {"image": image, "label": torch.ones(1, 32, 40)}
    out_d = RandStainJitterd(keys="image", prob=0.0, sigma_scale=0.5, sigma_bias=0.5)(sample)
    assert out_d["image"] is image and out_d["label"] is sample["label"]


def test_no_jitter_reproduces_the_image():
    image = random_image(1)
    out = RandStainJitter(prob=1.0, sigma_scale=0.0, sigma_bias=0.0)(image)
    inside = image > 1 / 255
    assert inside.float().mean() > 0.99
    assert (out - image)[inside].abs().max() < 1 / 255
    assert (out - image).abs().max() <= 1 / 255  # the darkest pixels come back as 1/255


def test_matches_the_per_pixel_reference():
    image = random_image(2)
    scale, bias = [0.9, 1.08, 1.02], [0.04, -0.03, 0.01]
    out = RandStainJitter.jitter(image, scale, bias)
    np.testing.assert_allclose(out.numpy(), reference_jitter(image.numpy(), scale, bias), atol=1e-5)
    jitter = RandStainJitter(prob=1.0).set_random_state(5)
    out = jitter(image)
    expected = reference_jitter(image.numpy(), jitter.scale, jitter.bias)
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["tensor", "meta", "numpy32", "numpy64", "tensor64"])
def test_type_dtype_shape_and_meta_are_kept(kind):
    base = random_image(3)
    if kind == "tensor":
        image = base
    elif kind == "tensor64":
        image = base.double()
    elif kind == "meta":
        image = MetaTensor(
            base,
            affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])),
            meta={"filename_or_obj": "slide.tiff", "location": (64, 128)},
        )
    else:
        image = base.numpy().astype(np.float32 if kind == "numpy32" else np.float64)
    out = RandStainJitter(prob=1.0, sigma_scale=0.3, sigma_bias=0.3).set_random_state(0)(image)
    assert type(out) is type(image)
    assert out.dtype == image.dtype and tuple(out.shape) == tuple(image.shape)
    values = np.asarray(out.as_tensor() if isinstance(out, MetaTensor) else out)
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert np.abs(values - np.asarray(base, dtype=values.dtype)).max() > 1e-3
    if kind == "meta":
        assert out.meta["filename_or_obj"] == "slide.tiff" and tuple(out.meta["location"]) == (64, 128)
        assert torch.equal(out.affine, image.affine)


def test_values_stay_in_unit_range_for_strong_jitter_and_out_of_range_input():
    image = random_image(4) * 1.2 - 0.1  # a little outside [0, 1], as after unclipped intensity scaling
    for seed in range(5):
        out = RandStainJitter(prob=1.0, sigma_scale=0.5, sigma_bias=0.5).set_random_state(seed)(image)
        assert torch.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_same_seed_same_output_different_seed_different_output():
    image = pas_patch(64)
    first = RandStainJitter(prob=1.0).set_random_state(11)(image)
    again = RandStainJitter(prob=1.0).set_random_state(11)(image)
    other = RandStainJitter(prob=1.0).set_random_state(12)(image)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3
    jitter = RandStainJitter(prob=1.0).set_random_state(11)
    assert not torch.equal(jitter(image), jitter(image))  # successive calls draw afresh


def test_white_glass_stays_white_without_bias():
    image = pas_patch(64)
    image[:, :4] = 1.0  # pure white glass rows
    glass = (image >= 1.0).all(0)
    assert glass.sum() > 0
    for seed in range(10):
        out = RandStainJitter(prob=1.0, sigma_scale=0.3, sigma_bias=0.0).set_random_state(seed)(image)
        assert (1.0 - out[:, glass]).abs().max() < 1e-5
    # with the default small bias, white only darkens, by at most 1 - exp(-0.05 * column sum of M)
    bound = torch.from_numpy(1 - np.exp(-0.05 * RGB_FROM_HED.sum(0))).float()[:, None]
    darkening = []
    for seed in range(100):
        out = RandStainJitter(prob=1.0).set_random_state(seed)(image)
        change = 1.0 - out[:, glass]
        assert (change >= 0).all() and (change <= bound + 1e-6).all()
        darkening.append(change.max().item())
    assert max(bound) < 0.12 and np.median(darkening) < 0.05


def test_default_colour_shift_on_a_pas_patch_is_bounded_and_nonzero():
    image = pas_patch()
    shifts = []
    for seed in range(20):
        out = RandStainJitter(prob=1.0).set_random_state(seed)(image)
        shifts.append((out - image).abs().mean(dim=(1, 2)).max().item())  # mean per-channel change
    assert max(shifts) < 0.15
    assert min(shifts) > 2e-3


def test_dict_version_jitters_images_with_one_draw_and_leaves_the_label():
    image = pas_patch(64)
    label = MetaTensor(torch.zeros(1, 64, 64))
    label[0, 16:48, 16:48] = 1
    sample = {"image": image, "image2": image.clone(), "label": label}
    out = RandStainJitterd(keys=["image", "image2"], prob=1.0).set_random_state(7)(sample)
    assert out["label"] is label and label.sum() == 32 * 32
    assert torch.equal(out["image"], out["image2"])
    assert (out["image"] - image).abs().max() > 1e-3
    assert sample["image"] is image  # the input dict is not modified
    # the same draw as the array transform with the same seed
    expected = RandStainJitter(prob=1.0).set_random_state(7)(image)
    assert torch.equal(out["image"], expected)
    only_image = RandStainJitterd(keys="image", prob=1.0).set_random_state(7)({"image": image, "label": label})
    assert torch.equal(only_image["image"], expected) and only_image["label"] is label


def test_dict_version_missing_keys():
    with pytest.raises(KeyError):
        RandStainJitterd(keys="image", prob=1.0)({"label": torch.zeros(1, 4, 4)})
    out = RandStainJitterd(keys="image", prob=1.0, allow_missing_keys=True)({"label": torch.zeros(1, 4, 4)})
    assert set(out) == {"label"}


def test_dict_version_in_a_compose_with_prob():
    from monai.transforms import Compose

    image = pas_patch(32)
    pipeline = Compose([RandStainJitterd(keys="image", prob=0.5)]).set_random_state(0)
    changed = [not torch.equal(pipeline({"image": image})["image"], image) for _ in range(40)]
    assert 5 < sum(changed) < 35


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="RGB"):
        RandStainJitter(prob=1.0)(torch.rand(1, 8, 8))
    with pytest.raises(TypeError, match="float"):
        RandStainJitter(prob=1.0)(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError):
        RandStainJitter(sigma_scale=-0.1)
