"""An inference run's output folder: where each result goes and the one function that writes it,
atomically, in the formats users open.

Per slide: ``rle/<id>.txt`` (Kaggle run-length encoding), ``masks/<id>.tiff`` (pyramidal level-0
mask: QuPath, napari), ``glomeruli/<id>.geojson`` (QuPath polygons), ``previews/<id>.png`` (outlines
over a thumbnail), optionally ``heatmaps/<id>.tiff`` (probabilities), and ``summaries/<id>.json``,
written last: a slide with a summary and an RLE is complete. For the run: ``submission.csv``
(Kaggle ``id,predicted``) and, with a truth, ``metrics.csv``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import imagecodecs
import numpy as np
from scipy import ndimage

from .annotations import Annotation, write_annotations
from .files import atomic_path, write_csv, write_text_atomic
from .pyramid import write_pyramid

__all__ = ["RunOutputs", "outline_overlay", "write_mask_tiff", "write_png"]

PRED_COLOUR, TRUTH_COLOUR = (0, 200, 0), (30, 60, 255)

RowReader = Callable[[int, int], np.ndarray]


class RunOutputs:
    """The output folder of one inference run: each file's path, its writer, and what reruns read.

    Args:
        output_dir: the run's output folder.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.root = Path(output_dir)

    def _slide_file(self, folder: str, slide_id: str, suffix: str) -> Path:
        return self.root / folder / f"{slide_id}{suffix}"

    def rle_path(self, slide_id: str) -> Path:
        """``rle/<id>.txt``: the slide's mask as Kaggle RLE."""
        return self._slide_file("rle", slide_id, ".txt")

    def summary_path(self, slide_id: str) -> Path:
        """``summaries/<id>.json``: counts, Dice, confidence; written last."""
        return self._slide_file("summaries", slide_id, ".json")

    def is_complete(self, slide_id: str) -> bool:
        """Whether the slide's results are all written (its summary is written last, after its RLE)."""
        return self.summary_path(slide_id).is_file() and self.rle_path(slide_id).is_file()

    def read_rle(self, slide_id: str) -> str:
        """The RLE a run (this one on another rank, or an earlier one) wrote."""
        return self.rle_path(slide_id).read_text()

    def read_summary(self, slide_id: str) -> dict:
        """The summary a run (this one on another rank, or an earlier one) wrote."""
        return json.loads(self.summary_path(slide_id).read_text())

    def write_rle(self, slide_id: str, rle: str) -> Path:
        """Write the slide's RLE atomically."""
        return write_text_atomic(self.rle_path(slide_id), rle)

    def write_summary(self, slide_id: str, summary: dict) -> Path:
        """Write the slide's summary atomically (after every other file of the slide: it marks it complete)."""
        return write_text_atomic(self.summary_path(slide_id), json.dumps(summary, indent=1))

    def write_mask(
        self, slide_id: str, read_rows: RowReader, shape: tuple[int, int], resolution_um: float | None = None
    ) -> Path:
        """``masks/<id>.tiff`` (:func:`write_mask_tiff`), rows read top to bottom as they are made; with the
        slide's microns per pixel, where known, so viewers overlay it at the slide's scale."""
        return write_mask_tiff(self._slide_file("masks", slide_id, ".tiff"), read_rows, shape, resolution_um)

    def write_glomeruli(self, slide_id: str, polygons: list[Annotation]) -> Path:
        """``glomeruli/<id>.geojson``: the polygons at level 0 (:func:`scripts.annotations.write_annotations`)."""
        return write_annotations(self._slide_file("glomeruli", slide_id, ".geojson"), polygons)

    def write_heatmap(self, slide_id: str, read_rows: RowReader, shape: tuple[int, int]) -> Path:
        """``heatmaps/<id>.tiff``: ``uint8`` probabilities (255 = 1.0) at the working resolution, pyramidal."""
        path = self._slide_file("heatmaps", slide_id, ".tiff")
        return write_pyramid(path, read_rows, shape, channels=1, compression="zlib")

    def write_preview(
        self, slide_id: str, thumbnail: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None
    ) -> Path:
        """``previews/<id>.png``: the prediction's outlines (and the truth's, when there is one) over a thumbnail.

        Args:
            slide_id: the slide.
            thumbnail: ``(h, w, 3)`` ``uint8``.
            prediction: ``(h, w)`` mask at the thumbnail's scale.
            truth: the true mask at that scale, or None.
        """
        outlines = [(truth, TRUTH_COLOUR)] if truth is not None else []
        overlay = outline_overlay(thumbnail, [*outlines, (prediction > 0, PRED_COLOUR)])
        return write_png(self._slide_file("previews", slide_id, ".png"), overlay)

    def write_submission(self, predictions: dict[str, str]) -> Path:
        """``submission.csv`` (``id,predicted``), one row per slide in order."""
        return write_csv(self.root / "submission.csv", ("id", "predicted"), predictions.items())

    def write_metrics(self, dice: dict[str, float], mean: float) -> Path:
        """``metrics.csv`` (``id,dice``): each slide's Dice, then the ``mean`` row."""
        rows = [(slide_id, f"{value:.4f}") for slide_id, value in dice.items()] + [("mean", f"{mean:.4f}")]
        return write_csv(self.root / "metrics.csv", ("id", "dice"), rows)


def write_mask_tiff(
    path: str | os.PathLike,
    read_rows: RowReader,
    shape: tuple[int, int],
    resolution_um: float | None = None,
) -> Path:
    """Write a level-0 binary mask as a tiled pyramidal 8-bit TIFF (0/255), band by band.

    Args:
        path: output ``.tiff``.
        read_rows: ``read_rows(y0, y1)`` gives rows ``[y0, y1)`` of 0 and 1 (``uint8``); called top to
            bottom, so it may wait for a mask still being made.
        shape: ``(height, width)`` of the mask.
        resolution_um: microns per pixel, when known.

    Returns:
        The path written.
    """
    # deflate level 1: 2.6x faster than the default 6 on a real mask's tiles, for files 2.5x larger (0.9 MB
    # against 0.37 MB for a 137-megapixel slide's level 0): the CPU goes to the network instead
    return write_pyramid(
        path,
        lambda y0, y1: read_rows(y0, y1) * np.uint8(255),
        shape,
        channels=1,
        compression="zlib",
        quality=1,
        reduce="max",
        resolution_um=resolution_um,
    )


def outline_overlay(
    image: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]], width: int = 1
) -> np.ndarray:
    """Draw the outlines of binary masks over an RGB image.

    Args:
        image: ``(h, w, 3)`` ``uint8``.
        masks: ``(mask, rgb colour)`` pairs; each mask ``(h, w)``.
        width: outline width in pixels.

    Returns:
        A copy of ``image`` with the outlines drawn.
    """
    overlay = image.copy()
    for mask, colour in masks:
        mask = mask.astype(bool)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
        overlay[edge] = colour
    return overlay


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(h, w, 3)`` or ``(h, w)`` ``uint8`` image as PNG atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(image)))
    return Path(path)
