"""Every input is untrusted: awkward but real TIFFs are segmented, broken ones get one line each,
ids that look like paths are refused, and nothing stops the other slides or kills the process.
Runs the bundle's inference command in a subprocess on files the test writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE, REPO, disc_slide, patch_dimensions
from scripts.files import write_csv
from scripts.layout import read_csv_rows

pytestmark = pytest.mark.slow  # the integration tier: bundle runs in subprocesses

IMAGE, _ = disc_slide(shape=(512, 640), discs=((200, 250, 60),))
AWKWARD = {  # real layouts cuCIM cannot take as they are: converted, then segmented
    "tiled_zstd": lambda p: tifffile.imwrite(p, IMAGE, photometric="rgb", tile=(256, 256), compression="zstd"),
    "tiled_deflate_predictor": lambda p: tifffile.imwrite(
        p, IMAGE, photometric="rgb", tile=(256, 256), compression="zlib", predictor=True
    ),
    "stripped_deflate": lambda p: tifffile.imwrite(p, IMAGE, photometric="rgb", compression="zlib", rowsperstrip=64),
    "channel_first": lambda p: tifffile.imwrite(
        p, IMAGE.transpose(2, 0, 1), photometric="rgb", planarconfig="separate"
    ),
    "five_d": lambda p: tifffile.imwrite(p, IMAGE.transpose(2, 0, 1)[None, None], photometric="minisblack"),
    "rgba": lambda p: tifffile.imwrite(
        p,
        np.concatenate([IMAGE, np.full((*IMAGE.shape[:2], 1), 255, np.uint8)], -1),
        photometric="rgb",
        tile=(256, 256),
        extrasamples=[2],
    ),
    "rgb16": lambda p: tifffile.imwrite(p, IMAGE.astype(np.uint16) * 257, photometric="rgb", tile=(256, 256)),
    "gray": lambda p: tifffile.imwrite(p, IMAGE[..., 1], tile=(256, 256)),
}


def write_broken(folder):
    """Files that are not slides at all, each with the words its message must contain."""
    good = folder / "source.tiff"
    tifffile.imwrite(good, IMAGE, photometric="rgb", compression="zlib", rowsperstrip=64)
    (folder / "truncated.tiff").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (folder / "not_a_tiff.tiff").write_text("this is a text file\n")
    (folder / "empty.tiff").write_bytes(b"")
    for name, size in (("absurd", 200_000), ("bomb", 60_000)):
        (folder / f"{name}.tiff").write_bytes(good.read_bytes())
        patch_dimensions(folder / f"{name}.tiff", size, size)
    good.unlink()
    return {
        "truncated": "truncated",
        "not_a_tiff": "not a readable TIFF",
        "empty": "empty",
        "absurd": "implausible dimensions",
        "bomb": "decompression bomb",
    }


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    test = root / "data" / "test"
    test.mkdir(parents=True)
    tifffile.imwrite(test / "good.tiff", IMAGE, photometric="rgb", tile=(256, 256))
    for name, write in AWKWARD.items():
        write(test / f"{name}.tiff")
    broken = write_broken(test)
    unsafe = ["../escape", "/etc/passwd", "sub/dir", "..", "a b"]
    ids = ["good", *AWKWARD, *broken, *unsafe]
    write_csv(root / "data" / "sample_submission.csv", ("id", "predicted"), [(i, "") for i in ids])
    torch.manual_seed(0)
    network_def = ConfigParser.load_config_file(str(BUNDLE / "configs" / "inference.yaml"))["network_def"]
    network = ConfigParser({"network_def": network_def}).get_parsed_content("network_def")  # the shipped network
    torch.save(network.state_dict(), root / "model.pt")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        str(BUNDLE / "configs" / "inference.yaml"),
        "--dataset_dir",
        str(root / "data"),
        "--output_dir",
        str(root / "out"),
        "--cache_dir",
        str(root / "cache"),
        "--ckpt_path",
        str(root / "model.pt"),
        "--infer_roi",
        "128",
        "--num_workers",
        "0",
    ]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    return root, result, broken, unsafe


def test_the_run_finishes_without_a_traceback_or_a_signal(hostile_run):
    _, result, _, _ = hostile_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr


def test_awkward_real_layouts_are_segmented(hostile_run):
    root, _, _, _ = hostile_run
    for name in ["good", *AWKWARD]:
        summary = json.loads((root / "out" / "summaries" / f"{name}.json").read_text())
        assert (summary["width"], summary["height"]) == (640, 512), name
        mask = tifffile.imread(root / "out" / "masks" / f"{name}.tiff", level=0)
        assert mask.shape == (512, 640), name


def test_each_broken_file_gets_one_line_naming_it(hostile_run):
    root, result, broken, _ = hostile_run
    lines = result.stdout.splitlines()
    for name, words in broken.items():
        [line] = [line for line in lines if line.startswith(f"FAILED {name}:")]
        assert str(root / "data" / "test" / f"{name}.tiff") in line and words in line, line


def test_ids_that_look_like_paths_are_refused_and_write_nothing_outside(hostile_run):
    root, result, _, unsafe = hostile_run
    refused = [line for line in result.stdout.splitlines() if "is not a plain slide name" in line]
    assert len(refused) == len(unsafe)
    written = {path.relative_to(root) for path in root.rglob("*") if path.is_file()}
    assert all(path.parts[0] in ("data", "out", "cache", "model.pt") for path in written)
    assert not (root.parent / "escape.tiff").exists()


def test_submission_has_a_row_for_every_safe_id_and_none_for_the_unsafe(hostile_run):
    root, _, broken, unsafe = hostile_run
    rows, problems = read_csv_rows(root / "out" / "submission.csv", "predicted")
    assert [row.slide_id for row in rows] == ["good", *AWKWARD, *broken] and not problems
    assert all(row.value == "" for row in rows if row.slide_id in broken)
