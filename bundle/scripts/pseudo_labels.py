"""Pseudo-labels: confident predictions on unlabelled slides, as a ``train.csv``-style file.

The HuBMAP competition showed gains from training on the test slides' own confident predictions.
After ``run pseudo_labels`` (``pseudo_labels.yaml`` over ``inference.yaml``) has segmented the
slides, every slide whose prediction is confident enough (``confidence`` in its summary, see
:class:`scripts.wsi_inference.ConfidenceCounts`) becomes a row ``id,encoding`` of
``<output_dir>/pseudo_labels.csv``; training takes it with ``--pseudo_label_csv`` and trains on
those slides beside ``train.csv`` (never validating on them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .distributed import is_main_process
from .files import write_csv
from .outputs import RunOutputs

__all__ = ["write_pseudo_labels"]


def write_pseudo_labels(output_dir: str, slide_ids: Sequence[str], min_confidence: float) -> Path | None:
    """Write ``<output_dir>/pseudo_labels.csv`` from the segmented slides (rank 0 only).

    Args:
        output_dir: the inference output folder (``rle/<id>.txt``, ``summaries/<id>.json``).
        slide_ids: the slides of the run, in order.
        min_confidence: the least confidence of a slide kept.

    Returns:
        The CSV (None on other ranks). Slides left out are listed on stdout with their confidence.
    """
    if not is_main_process():
        return None
    outputs = RunOutputs(output_dir)
    rows, left_out = [], []
    for slide_id in slide_ids:
        if not outputs.is_complete(slide_id):
            left_out.append(f"{slide_id} (not segmented)")
            continue
        confidence = outputs.read_summary(slide_id)["confidence"]
        if confidence >= min_confidence:
            rows.append((slide_id, outputs.read_rle(slide_id)))
        else:
            left_out.append(f"{slide_id} (confidence {confidence:.3f} < {min_confidence})")
    path = write_csv(outputs.root / "pseudo_labels.csv", ("id", "encoding"), rows)
    print(f"pseudo-labels for {len(rows)} of {len(slide_ids)} slide(s): {path}")
    for line in left_out:
        print(f"left out: {line}")
    return path
