"""Streaming RLE vs the plain numpy encoder, on a mask the size of HuBMAP slide aaa6a05cc
(18484 x 13013) rasterised from its real glomerulus polygons and stored on disk as zarr (as the
inference writer stores masks).

Both start from the on-disk mask: the plain encoder loads it whole and encodes it with
``rle_encode``; the streaming one reads it a band of rows at a time (``rle_encode_chunked``, the
runs of each band joined at the end, as inference joins the runs of each band of a slide it makes).
Prints the time ratio (goal: at most 1.0, no slower) and the peak-memory ratio (goal: at most
0.25), peak memory being what numpy and zarr allocate (tracemalloc).

    python bench/rle_stream.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc

import numpy as np
import zarr

from common import SHARED
from scripts.annotations import rasterize, read_annotations
from scripts.rle import rle_encode, rle_encode_chunked


def measure(encode, repeats: int) -> tuple[str, float, float]:
    """``(result, best seconds, peak MiB)`` of ``encode()``."""
    best = float("inf")
    for _ in range(repeats):
        tracemalloc.start()
        started = time.perf_counter()
        result = encode()
        best = min(best, time.perf_counter() - started)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return result, best, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polygons", default=str(SHARED / "data" / "hubmap_format" / "aaa6a05cc.json"))
    parser.add_argument("--band", type=int, default=1024, help="rows per streaming step")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    shape = (18484, 13013)
    mask = rasterize(read_annotations(args.polygons), shape)
    with tempfile.TemporaryDirectory() as folder:
        stored = zarr.create_array(store=f"{folder}/mask.zarr", shape=shape, chunks=(1024, 1024), dtype=np.uint8)
        stored[:] = mask
        del mask
        plain, plain_s, plain_mib = measure(lambda: rle_encode(stored[:]), args.repeats)
        stream, stream_s, stream_mib = measure(lambda: rle_encode_chunked(stored, args.band), args.repeats)
    assert stream == plain, "streaming RLE differs from rle_encode"
    print(f"mask {shape[1]} x {shape[0]} from {args.polygons}, {len(plain.split()) // 2} runs, identical strings")
    print(f"numpy rle_encode (mask loaded whole): {plain_s:.2f} s, peak {plain_mib:.0f} MiB")
    print(f"streaming, {args.band}-row bands:       {stream_s:.2f} s, peak {stream_mib:.0f} MiB")
    print(f"time ratio streaming/numpy: {stream_s / plain_s:.2f} (goal <= 1.0)")
    print(f"peak memory ratio streaming/numpy: {stream_mib / plain_mib:.3f} (goal <= 0.25)")


if __name__ == "__main__":
    main()
