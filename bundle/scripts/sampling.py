"""Which patches training sees: sampling units per slide, and the split of slides into folds.

Importance sampling (the default, what made the strongest HuBMAP solutions fast and accurate):
each epoch visits every glomerulus once (its patch centre drawn inside the glomerulus's box by
:class:`scripts.datasets.ImportancePatchDataset`) plus a fixed number of random centres per slide,
drawn from the slide's region map with weights per region (cortex, where glomeruli are, most).
Grid sampling: dense tiles over the slide, background tiles dropped, as the tiled competition
baselines trained. Validation slides are whole slides held out by slide, never by patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, TypeVar

import numpy as np

from .keys import BBOX, CENTRE, GLOMERULUS_UNIT, GRID_UNIT, HARD_UNIT, RANDOM_UNIT, UNIT_KIND, WEIGHTS
from .prepare import PreparedSlide
from .regions import SAMPLING_CLASSES
from .store import read_glomeruli, read_tissue

__all__ = ["DEFAULT_REGION_WEIGHTS", "class_weights", "grid_units", "sampling_units", "split_slides"]

T = TypeVar("T")

DEFAULT_REGION_WEIGHTS = {"cortex": 0.7, "medulla": 0.2, "other": 0.1}


def class_weights(region_weights: Mapping[str, float]) -> dict[str, float]:
    """Sampling weight per region class of :data:`scripts.regions.SAMPLING_CLASSES`.

    ``other`` covers other tissue and glass together; tissue on a slide without a region file
    weighs as cortex and medulla together (unless ``tissue`` is given).

    Args:
        region_weights: ``{"cortex": w, "medulla": w, "other": w}`` (``tissue`` optional).

    Returns:
        ``{"cortex": w, "medulla": w, "other": w, "tissue": w}``.

    Raises:
        ValueError: an unknown region name, a negative weight, or all weights zero.
    """
    unknown = set(region_weights) - set(SAMPLING_CLASSES)
    if unknown or any(w < 0 for w in region_weights.values()) or not any(region_weights.values()):
        raise ValueError(
            f"region_weights must give non-negative weights, not all zero, to cortex, medulla, other "
            f"(and optionally tissue); got {dict(region_weights)}"
        )
    weights = {name: float(region_weights.get(name, 0.0)) for name in ("cortex", "medulla", "other")}
    weights["tissue"] = float(region_weights.get("tissue", weights["cortex"] + weights["medulla"]))
    return weights


def sampling_units(
    slides: Sequence[PreparedSlide],
    random_per_slide: int,
    region_weights: Mapping[str, float] | None = None,
    hard_per_slide: int = 0,
) -> list[dict]:
    """One datalist item per glomerulus plus ``random_per_slide`` random and ``hard_per_slide``
    hard-negative items per slide.

    Args:
        slides: prepared, labelled slides.
        random_per_slide: patches per slide and epoch centred at random points.
        region_weights: how random centres are shared between regions (default
            :data:`DEFAULT_REGION_WEIGHTS`, see :func:`class_weights`).
        hard_per_slide: patches per slide and epoch centred on the network's mined false positives
            (:mod:`scripts.mining`; random centres until a mining found some).

    Returns:
        Items for :class:`scripts.datasets.ImportancePatchDataset`: the slide's fields (``level`` is
        the working level) and ``region``: ``"glomerulus"`` (with ``bbox``, level-0
        ``[y0, x0, y1, x1]``), ``"random"`` or ``"hard"`` (with ``weights``, ``{class: weight}``).
    """
    weights = class_weights(region_weights or DEFAULT_REGION_WEIGHTS)
    units = []
    for slide in slides:
        base = slide.as_dict()
        boxes = read_glomeruli(slide.store)
        units += [{**base, UNIT_KIND: GLOMERULUS_UNIT, BBOX: list(box)} for box in boxes]
        units += [{**base, UNIT_KIND: RANDOM_UNIT, WEIGHTS: weights} for _ in range(random_per_slide)]
        units += [{**base, UNIT_KIND: HARD_UNIT, WEIGHTS: weights} for _ in range(hard_per_slide)]
    return units


def grid_units(slides: Sequence[PreparedSlide], patch_size: int, min_tissue: float = 0.1) -> list[dict]:
    """Dense tiles: one item per ``patch_size`` tile of the working grid holding enough tissue.

    Args:
        slides: prepared, labelled slides.
        patch_size: tile side at the working resolution (tiles do not overlap).
        min_tissue: the least share of a tile's tissue-mask pixels that must be tissue (the
            saturation test of :mod:`scripts.tissue`); emptier tiles are dropped.

    Returns:
        Items with ``region`` ``"grid"`` and ``centre``, the tile's level-0 ``[row, col]`` centre.
    """
    units = []
    for slide in slides:
        tissue, downsample = read_tissue(slide.store)
        side = patch_size * slide.downscale  # level-0 pixels per tile
        for top in range(0, slide.shape[0], side):
            for left in range(0, slide.shape[1], side):
                window = tissue[
                    top // downsample : -(-(top + side) // downsample),
                    left // downsample : -(-(left + side) // downsample),
                ]
                if window.size and window.mean() >= min_tissue:
                    units.append({**slide.as_dict(), UNIT_KIND: GRID_UNIT, CENTRE: [top + side // 2, left + side // 2]})
    return units


class SlideSplit(NamedTuple):
    """Whole slides to train on and to validate on (configs name them: ``@split.train``, ``@split.validation``)."""

    train: list[PreparedSlide]
    validation: list[PreparedSlide]


def split_slides(
    slides: Mapping[str, PreparedSlide], num_folds: int, fold: int, seed: int = 0, hold_out: bool = True
) -> SlideSplit:
    """Split slides into training and validation sets, whole slides only, stratified by glomerulus count.

    Slides are ordered by their number of glomeruli and dealt into ``num_folds`` folds a block of
    ``num_folds`` at a time, shuffled within each block under ``seed``, so every fold gets slides
    with few and many glomeruli. Fold ``fold`` is the validation set. When that fold is empty
    (fewer slides than folds), one slide validates.

    Args:
        slides: ``{id: slide}``; a slide's ``glomeruli`` attribute is its count (0 when absent).
        num_folds: number of folds (at least 2).
        fold: the validation fold, ``0 <= fold < num_folds``.
        seed: shuffling seed.
        hold_out: False: every slide trains and none validates (``train_on_all``).

    Returns:
        ``(train, validation)`` lists of the mapping's values; both non-empty when there are two
        slides or more and ``hold_out``.
    """
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    if len(slides) < 2 or not hold_out:
        return SlideSplit(list(slides.values()), [])
    ordered = sorted(slides, key=lambda key: (getattr(slides[key], "glomeruli", 0), key))
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    for start in range(0, len(ordered), num_folds):
        block = ordered[start : start + num_folds]
        for position, index in enumerate(rng.permutation(len(block))):
            folds[block[index]] = position
    val = [key for key in ordered if folds[key] == fold] or ordered[-1:]
    return SlideSplit([slides[key] for key in ordered if key not in val], [slides[key] for key in val])
