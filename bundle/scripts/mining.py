"""Hard-negative mining: training patches centred on what the network wrongly calls glomerulus.

Every few epochs the network segments its own training slides, stitched and thresholded as
validation does (:class:`scripts.metrics.SlideDice`, whose small per-slide maps of prediction and
truth are what is mined). Each predicted object that touches no labelled glomerulus (an artery, a
cast, a knot of tubules) becomes a box, and the training dataset's ``hard`` sampling units draw
their centres from those boxes until the next mining, as ``glomerulus`` units draw theirs from the
glomeruli (:class:`scripts.datasets.ImportancePatchDataset`). Random centres rarely land on such
look-alikes, which are a small share of the tissue; mining shows the network its own mistakes.

MONAI's ``RandCropByPosNegLabel`` and ``RandWeightedCrop`` draw from a fixed label or weight map;
here the map is the network's latest errors on whole slides, so it changes as the network learns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from ignite.engine import Engine, Events
from scipy import ndimage

from .datasets import ImportancePatchDataset
from .metrics import SlideDice, SlideMaps

__all__ = ["HardNegativeMining", "false_positive_boxes"]

logger = logging.getLogger(__name__)


def false_positive_boxes(maps: SlideMaps, max_boxes: int) -> list[list[int]]:
    """Boxes of the predicted objects on a slide's maps that touch no labelled pixel.

    Args:
        maps: a slide's pooled prediction and truth (:meth:`scripts.metrics.SlideDice.error_maps`).
        max_boxes: keep at most this many, the largest objects first.

    Returns:
        Level-0 ``[y0, x0, y1, x1]`` boxes of the image the slide's windows were read from (the
        frame of :func:`scripts.store.read_glomeruli`'s boxes).
    """
    objects, count = ndimage.label(maps.prediction)
    if not count:
        return []
    index = np.arange(1, count + 1)
    touches_truth = ndimage.maximum(maps.truth.astype(np.uint8), objects, index) > 0
    sizes = np.bincount(objects.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(objects)
    scale = maps.downsample * maps.downscale  # level-0 pixels per map pixel
    wrong = index[~touches_truth]
    boxes = []
    for label in wrong[np.argsort(-sizes[wrong - 1], kind="stable")][:max_boxes]:
        rows, cols = slices[label - 1]
        boxes.append([rows.start * scale, cols.start * scale, rows.stop * scale, cols.stop * scale])
    return boxes


class HardNegativeMining:
    """Ignite handler: every ``interval`` epochs, run ``evaluator`` over the training slides and hand the
    false-positive boxes of its ``metric`` to the training dataset.

    Args:
        evaluator: a MONAI evaluator over the training slides' tissue windows, with ``metric`` attached.
        metric: its :class:`scripts.metrics.SlideDice` (with maps: ``map_size`` > 0).
        dataset: the training dataset, which takes the boxes (:meth:`ImportancePatchDataset.set_hard_boxes`).
        interval: epochs between minings; 0 disables mining.
        max_per_slide: the most boxes kept per slide (the largest objects).
    """

    def __init__(
        self,
        evaluator: Engine,
        metric: SlideDice,
        dataset: ImportancePatchDataset,
        interval: int,
        max_per_slide: int = 64,
    ) -> None:
        if not metric.map_size:
            raise ValueError("hard-negative mining needs the metric's slide maps (map_size > 0)")
        self.evaluator = evaluator
        self.metric = metric
        self.dataset = dataset
        self.interval = int(interval)
        self.max_per_slide = int(max_per_slide)

    def attach(self, engine: Engine) -> None:
        """Register with the trainer."""
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        self.evaluator.run()
        boxes = self.mine(self.metric.error_maps())
        self.dataset.set_hard_boxes(boxes)
        found = sum(len(b) for b in boxes.values())
        logger.info(f"epoch {engine.state.epoch}: {found} false-positive objects on {len(boxes)} training slides")

    def mine(self, maps: Mapping[str, SlideMaps]) -> dict[str, list[list[int]]]:
        """``{store: boxes}`` of every mined slide (an empty list where the network made no such error)."""
        return {slide.store: false_positive_boxes(slide, self.max_per_slide) for slide in maps.values()}
