"""Glomerulus copy-paste (scripts/copy_paste.py): the trainer's batches with glomeruli pasted between patches."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines.utils import default_prepare_batch

from conftest import BUNDLE
from scripts.copy_paste import GlomerulusCopyPaste


def _batch() -> dict[str, torch.Tensor]:
    """Three 32-px patches, each a flat colour of its own; only the first holds a glomerulus (a 6 x 8 box)."""
    image = torch.stack([torch.full((3, 32, 32), value) for value in (0.9, 0.2, 0.5)])
    label = torch.zeros(3, 1, 32, 32)
    label[0, :, 10:16, 4:12] = 1.0
    image[0, :, 10:16, 4:12] = 0.7  # the glomerulus's own colour
    return {"image": image, "label": label}


def test_without_pasting_the_batch_is_what_monai_prepares():
    batch = _batch()
    image, label = GlomerulusCopyPaste(prob=0.0)(batch)
    expected_image, expected_label = default_prepare_batch(batch)
    assert torch.equal(image, expected_image) and torch.equal(label, expected_label)


def test_every_drawn_patch_receives_the_donors_glomerulus_moved_with_its_label():
    batch = _batch()
    image, label = GlomerulusCopyPaste(prob=1.0, seed=3)(batch)
    # the only donor receives nothing (no other patch holds a glomerulus) and is left as it was
    assert torch.equal(image[0], batch["image"][0]) and torch.equal(label[0], batch["label"][0])
    for target in (1, 2):
        pasted = label[target, 0] > 0.5
        assert int(pasted.sum()) == 6 * 8  # the whole glomerulus, wrapped around the edge where it crosses it
        assert torch.all(image[target][:, pasted] == 0.7)  # its pixels, not the box around it
        assert torch.all(image[target][:, ~pasted] == batch["image"][target][0, 0, 0])  # the rest untouched
    assert not torch.equal(label[1], batch["label"][0]) or not torch.equal(label[2], batch["label"][0])  # moved
    assert torch.equal(batch["label"][1], torch.zeros(1, 32, 32))  # the incoming batch is not changed


def test_glomeruli_are_pasted_from_the_patches_as_they_came_in():
    batch = _batch()
    batch["label"][1, :, 0:2, 0:2] = 1.0  # a second donor, of 4 pixels
    _, label = GlomerulusCopyPaste(prob=1.0, seed=0)(batch)
    areas = [int((label[k, 0] > 0.5).sum()) for k in range(3)]
    # patch 0 gets patch 1's 4 pixels, patch 1 gets patch 0's 48, patch 2 either: never a pasted-on paste
    assert areas[0] <= 48 + 4 and areas[1] <= 4 + 48 and areas[2] in (4, 48)


def test_the_paste_repeats_with_the_seed_and_a_share_of_patches_receives():
    batch = {
        "image": torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
        "label": torch.zeros(64, 1, 16, 16),
    }
    batch["label"][::2, :, 4:8, 4:8] = 1.0  # every other patch holds a glomerulus
    first, again = GlomerulusCopyPaste(0.5, seed=7)(batch), GlomerulusCopyPaste(0.5, seed=7)(batch)
    other = GlomerulusCopyPaste(0.5, seed=8)(batch)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    changed = (first[1] != batch["label"]).flatten(1).any(1).float().mean()
    assert 0.2 < changed < 0.8  # about half receive (a paste exactly over a patch's own glomerulus changes nothing)


def test_a_batch_without_glomeruli_passes_unchanged():
    batch = {"image": torch.rand(4, 3, 8, 8), "label": torch.zeros(4, 1, 8, 8)}
    image, label = GlomerulusCopyPaste(prob=1.0)(batch)
    assert torch.equal(image, batch["image"]) and torch.equal(label, batch["label"])


@pytest.mark.parametrize("prob", [-0.1, 1.5, "half", float("nan")])
def test_a_probability_outside_zero_to_one_is_refused_in_one_line(prob):
    with pytest.raises(SystemExit, match=r"^error: --copy_paste_prob must be a number from 0 to 1, got "):
        GlomerulusCopyPaste(prob)


def test_the_trainer_prepares_its_batches_with_the_configured_paste():
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.update({"copy_paste_prob": 0.25, "seed": 5})
    prepare = parser.get_parsed_content("train#trainer#prepare_batch")
    assert isinstance(prepare, GlomerulusCopyPaste) and prepare.prob == 0.25
    assert torch.equal(prepare.generator.get_state(), torch.Generator().manual_seed(5).get_state())
