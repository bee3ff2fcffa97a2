"""Which patches training sees: sampling units per slide, and the split of slides into folds.

Each epoch visits every glomerulus once (its patch centre drawn inside the glomerulus's box by
:class:`scripts.datasets.ImportancePatchDataset`) plus a fixed number of centres drawn at random
in each slide's tissue, the sampling that made the strongest HuBMAP solutions fast and accurate.
Validation slides are whole slides held out by slide, never by patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np
import zarr

from .prepare import PreparedSlide

__all__ = ["sampling_units", "split_slides"]

T = TypeVar("T")


def sampling_units(slides: Sequence[PreparedSlide], random_per_slide: int, anywhere_fraction: float = 0.0) -> list[dict]:
    """One datalist item per glomerulus plus ``random_per_slide`` random items per slide.

    Args:
        slides: prepared, labelled slides.
        random_per_slide: patches per slide and epoch centred at random points.
        anywhere_fraction: the share of those centred anywhere on the slide (glass and slide
            edges included, so the network learns to leave them empty); the rest fall in tissue.

    Returns:
        Items for :class:`scripts.datasets.ImportancePatchDataset`: the slide's fields (``level`` is
        the working level) and ``region``: ``"glomerulus"`` (with ``bbox``, level-0
        ``[y0, x0, y1, x1]``), ``"tissue"`` or ``"anywhere"``.
    """
    anywhere = round(random_per_slide * anywhere_fraction)
    units = []
    for slide in slides:
        base = slide.as_dict()
        boxes = zarr.open_group(slide.store, mode="r").attrs["glomeruli"]
        units += [{**base, "region": "glomerulus", "bbox": list(box)} for box in boxes]
        units += [{**base, "region": "tissue"} for _ in range(random_per_slide - anywhere)]
        units += [{**base, "region": "anywhere"} for _ in range(anywhere)]
    return units


def split_slides(slides: Mapping[str, T], num_folds: int, fold: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """Split slides into training and validation sets, whole slides only.

    Slides are shuffled under ``seed`` and dealt round-robin into ``num_folds`` folds; fold
    ``fold`` is the validation set. When that fold is empty (fewer slides than folds), one slide
    validates.

    Args:
        slides: ``{id: slide}``.
        num_folds: number of folds (at least 2).
        fold: the validation fold, ``0 <= fold < num_folds``.
        seed: shuffling seed.

    Returns:
        ``(train, val)`` lists of the mapping's values; both non-empty when there are two slides or more.
    """
    ids = sorted(slides)
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    if len(ids) < 2:
        return [slides[i] for i in ids], []
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    val = [s for i, s in enumerate(order) if i % num_folds == fold] or order[-1:]
    return [slides[s] for s in order if s not in val], [slides[s] for s in val]
