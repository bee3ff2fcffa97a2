"""Pseudo-labels (scripts/pseudo_labels.py) and the slide confidence they rest on
(scripts/wsi_inference.py, counted band by band): confident slides become train.csv-style rows, the others
are left out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts.layout import read_csv_rows
from scripts.pseudo_labels import write_pseudo_labels
from scripts.wsi_inference import ConfidenceCounts


def confidence(values: np.ndarray, band: int = 512) -> float:
    """The confidence of a slide whose probabilities arrive in bands of ``band`` rows."""
    counts = ConfidenceCounts()
    probabilities = np.round(values * 255).astype(np.uint8)
    for row in range(0, len(probabilities), band):
        counts.add(probabilities[row : row + band])
    return counts.value


def test_confidence_is_the_share_of_decided_glomerulus_pixels():
    values = np.zeros((1200, 10))  # more rows than one band
    values[:30] = 0.95  # 300 confident
    values[1100:1110] = 0.5  # 100 undecided
    values[1110:1120] = 0.1  # background, not counted
    assert confidence(values) == pytest.approx(300 / 400)
    assert confidence(np.zeros((8, 8))) == 1.0  # confidently empty


def test_confident_slides_become_rows_and_the_others_are_left_out(tmp_path, capsys):
    for slide_id, confidence in (("a", 0.95), ("b", 0.5), ("c", 0.99)):
        (tmp_path / "summaries").mkdir(exist_ok=True)
        (tmp_path / "rle").mkdir(exist_ok=True)
        (tmp_path / "summaries" / f"{slide_id}.json").write_text(json.dumps({"confidence": confidence}))
        (tmp_path / "rle" / f"{slide_id}.txt").write_text(f"1 {len(slide_id) + 2}")
    path = write_pseudo_labels(str(tmp_path), ["a", "b", "c", "d"], min_confidence=0.9)
    rows, problems = read_csv_rows(path, "encoding")
    assert [(r.slide_id, r.value) for r in rows] == [("a", "1 3"), ("c", "1 3")] and not problems
    out = capsys.readouterr().out
    assert "pseudo-labels for 2 of 4 slide(s)" in out
    assert "left out: b (confidence 0.500 < 0.9)" in out and "left out: d (not segmented)" in out
