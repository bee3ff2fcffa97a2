"""Work on untrusted files in a child process (scripts/isolated.py): a native crash there comes
back as one line, and this process lives on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from scripts.isolated import BUNDLE, run_isolated


def test_probe_of_a_good_slide_succeeds(tmp_path):
    path = tmp_path / "good.tiff"
    tifffile.imwrite(path, np.zeros((300, 400, 3), np.uint8), photometric="rgb", tile=(256, 256))
    assert run_isolated("probe", str(path), "0") is None


def test_probe_reads_without_importing_cupy(tmp_path):
    """cuCIM imports CuPy when it can (and on a GPU machine CuPy loads CUDA's solver library): the
    probe reads on the CPU and needs neither."""
    pytest.importorskip("cupy")  # where CuPy is absent there is nothing to keep out
    path = tmp_path / "good.tiff"
    tifffile.imwrite(path, np.zeros((300, 400, 3), np.uint8), photometric="rgb", tile=(256, 256))
    code = (
        f"import sys; from scripts.isolated import _probe; _probe({str(path)!r}, 0); "
        "print(sorted(m for m in sys.modules if m.startswith('cupy') and sys.modules[m]))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=BUNDLE, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cucim_crashing_on_deflate_with_a_predictor_only_kills_the_child(tmp_path):
    """cuCIM ends its process on tiled deflate with a predictor (measured): the probe reports it."""
    path = tmp_path / "predictor.tiff"
    image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8)
    tifffile.imwrite(path, image, photometric="rgb", tile=(256, 256), compression="zlib", predictor=True)
    failure = run_isolated("probe", str(path), "0")
    assert failure is not None and "\n" not in failure
    assert "crashed" in failure or "RuntimeError" in failure  # a signal where cuCIM crashes, else its error


def test_conversion_failure_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "notes.tiff"
    path.write_text("not an image")
    failure = run_isolated("scripts.slides:convert_in_child", str(path), str(tmp_path / "out.tiff"), "2", "")
    assert failure is not None and str(path) in failure and "\n" not in failure
    assert not (tmp_path / "out.tiff").exists()
