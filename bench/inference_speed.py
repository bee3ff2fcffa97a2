"""Whole-slide inference speed and memory, measured side by side in one run on one slide.

Three runs, each in its own process (so peak memory is its own), same network, window, overlap
and batch:

- ``ours``: the bundle's inference (slide preparation, tissue windows read by DataLoader workers,
  band-by-band stitching, level-0 mask, RLE, mask TIFF, GeoJSON, preview) from its config;
- ``network``: the network alone on as many windows as ``ours`` ran, from tensors already in memory;
- ``stock``: MONAI's stock approach: the slide loaded whole at the working resolution, then
  ``sliding_window_inference`` over every window, then upsampled to level 0, thresholded and
  encoded; run once as it comes (float32) and once with the bundle's inferer (mixed precision,
  channels-last), to tell the pipeline's gain from the precision's.

Prints the pipeline/network time ratio (goal: at most 1.25), the stock/ours time ratio (goal:
at least 1.8) with both peak memories, and throughput in level-0 megapixels per second; then the
CPU time of ours (its reader processes and probe included) and of the network alone, and the
pipeline/network floor that ours' CPU time sets on this machine's cores (where the pipeline's own
work, not its overlap with the network, is what keeps the ratio up).

The slide is built from the demo's test slide (``--rows`` x ``--cols`` copies and ``--glass``
copies' width of empty glass: the default is about half tissue). The checkpoint is the bundle's
trained model (train first: the README's first command), so predictions look like real ones.

``--ckpt`` may name an ensemble (a folder of ``fold<k>/model.pt``, as ``ckpt_path`` takes it). Then
ours and the network alone run the whole ensemble, the stock approach its first member, and ours
and the network alone run once more with the first member only, to check that K members cost at
most K times the network time plus the single member's pipeline time (every window read once).

    python bench/inference_speed.py                    # CPU
    python bench/inference_speed.py --tta true         # ours and the network alone with flip TTA (inference's default)
    python bench/inference_speed.py --device cuda --batch 32
    python bench/inference_speed.py --repeats 3        # medians of 3 rounds, on a noisy machine
    python bench/inference_speed.py --ckpt bundle/models   # the shipped fold ensemble against its first member

Folder mode (``--folders N [N ...]``): the slide is cut into N pieces (a grid, as square as N
allows), each a slide of its own, one folder per N; each round runs ours, the network alone and the
stock approach (slide after slide) on every folder. Printed per folder: seconds and megapixels per
second of each, and ours' time to its first window (slide preparation and reader start-up); then each
folder's time against the first folder's (goal: 12 slides within 1.05 times 3 slides of the same pixels).

    python bench/inference_speed.py --rows 3 --cols 1 --glass 0 --folders 3 12   # 3 demo-size slides, cut in 12
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import BUNDLE, cpu_seconds, peak_rss_mib, tiled_slide
from scripts.checkpoints import checkpoint_files
from scripts.outputs import RunOutputs

CONFIG = BUNDLE / "configs" / "inference.yaml"
VARIANTS = ("ours", "network", "stock", "stock_mixed")


def overrides(args: argparse.Namespace, work: Path) -> dict:
    return {
        "dataset_dir": str(work / "data"),
        "output_dir": str(work / "ours"),
        "cache_dir": str(work / "cache"),
        "ckpt_path": args.ckpt,
        "infer_roi": args.roi,
        "overlap": args.overlap,
        "batch_size": args.batch,
        "device": f"$torch.device('{args.device}')",
        "overwrite": True,
        "num_workers": args.workers,
        "tta": args.tta == "true",
    }


def parser_for(args: argparse.Namespace, work: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update(overrides(args, work))
    return parser


def run_ours(args: argparse.Namespace, work: Path) -> dict:
    from ignite.engine import Events

    parser = parser_for(args, work)
    # the network is built on its device before the clock starts, as in the other variants (on a GPU
    # that first call also creates the CUDA context, which is no part of the pipeline)
    parser.get_parsed_content("network")
    started, cpu = time.perf_counter(), cpu_seconds()
    evaluator = parser.get_parsed_content("evaluator")  # the slides are prepared once the run starts
    first: list[float] = []
    evaluator.add_event_handler(Events.GET_BATCH_COMPLETED(once=1), lambda _: first.append(time.perf_counter()))
    parser.get_parsed_content("inference")
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    windows = len(parser.get_parsed_content("windows"))
    first_window = first[0] - started if first else seconds
    return {"seconds": seconds, "cpu_seconds": cpu, "windows": windows, "first_window": first_window}


def run_network(args: argparse.Namespace, work: Path, windows: int) -> dict:
    """The network as the pipeline runs it (its inferer: precision, layout), on in-memory tensors."""
    parser = parser_for(args, work)
    network, inferer = parser.get_parsed_content("network").eval(), parser.get_parsed_content("inferer")
    batch = torch.rand(args.batch, 3, args.roi, args.roi, device=args.device)
    with torch.no_grad():
        inferer(batch, network)  # warm-up
        started, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(-(-windows // args.batch)):
            torch.sigmoid(inferer(batch, network)).cpu()
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu}


def run_stock(args: argparse.Namespace, work: Path, mixed_precision: bool = False) -> dict:
    """MONAI's stock approach; with ``mixed_precision`` the network runs through the bundle's
    inferer (same precision and layout as ours), to separate the pipeline's gain from the precision's."""
    from monai.data import WSIReader
    from monai.inferers import sliding_window_inference

    from scripts.rle import rle_encode
    from scripts.slides import inspect_slide, working_level

    parser = parser_for(args, work)
    network = parser.get_parsed_content("network").eval()  # with the checkpoint's weights
    inferer = parser.get_parsed_content("inferer")
    predictor = (lambda x: inferer(x, network)) if mixed_precision else network
    started = time.perf_counter()
    for slide in sorted((work / "data" / "test").glob("*.tiff")):  # slide after slide, as the stock loop goes
        level = working_level(inspect_slide(slide, 2), 2)
        reader = WSIReader(backend="cucim", level=level)
        image, _ = reader.get_data(reader.read(str(slide)), level=level)
        inputs = torch.from_numpy(np.asarray(image, np.float32) / 255)[None].to(args.device)
        with torch.no_grad():
            logits = sliding_window_inference(
                inputs, args.roi, args.batch, predictor, overlap=args.overlap, mode="gaussian"
            )
            height, width = inspect_slide(slide).shape
            probability = torch.nn.functional.interpolate(torch.sigmoid(logits), scale_factor=2, mode="bilinear")
            mask = (probability[0, 0, :height, :width] > 0.5).cpu().numpy()
        rle_encode(mask)
    return {"seconds": time.perf_counter() - started}


def child(args: argparse.Namespace, variant: str, work: Path, windows: int = 0, ckpt: str | None = None) -> dict:
    """Run one variant in a fresh process (with ``ckpt`` instead of ``--ckpt``); its result plus its peak memory."""
    command = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--work",
        str(work),
        "--windows",
        str(windows),
        "--ckpt",
        ckpt or args.ckpt,
        "--roi",
        str(args.roi),
        "--overlap",
        str(args.overlap),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
        "--workers",
        str(args.workers),
        "--tta",
        args.tta,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def measure_once(args: argparse.Namespace, work: Path) -> dict[str, dict]:
    """One round: every variant once, in turn, ours first (from an empty cache, as a first run);
    for an ensemble, then ours and the network alone with its first member."""
    shutil.rmtree(work / "cache", ignore_errors=True)
    members = checkpoint_files(args.ckpt)
    first = str(members[0])
    ours = child(args, "ours", work)
    results = {
        "ours": ours,
        "network": child(args, "network", work, ours["windows"]),
        "stock": child(args, "stock", work, ckpt=first),
        "stock_mixed": child(args, "stock_mixed", work, ckpt=first),
    }
    if len(members) > 1:
        shutil.rmtree(work / "cache", ignore_errors=True)
        results["ours_single"] = child(args, "ours", work, ckpt=first)
        results["network_single"] = child(args, "network", work, ours["windows"], ckpt=first)
    return results


def median_run(results: list[dict]) -> dict:
    """A variant's rounds as one: the median times, the highest peak memory, the rest as measured."""
    merged = {**results[0], "peak_mib": max(r["peak_mib"] for r in results)}
    for key in ("seconds", "cpu_seconds", "first_window"):
        if key in merged:
            merged[key] = statistics.median(r[key] for r in results)
    return merged


def cut_into_pieces(slide: Path, folder: Path, count: int) -> None:
    """``slide`` as ``count`` slides (``bench-<i>.tiff``): a grid of pieces as near square as ``count``
    allows, so a window grid over the pieces costs about what it costs over the whole."""
    import math

    from scripts.pyramid import write_pyramid

    image = tifffile.imread(slide, level=0)
    height, width = image.shape[:2]
    grids = [(rows, count // rows) for rows in range(1, count + 1) if count % rows == 0]
    rows, cols = min(grids, key=lambda grid: abs(math.log(height / grid[0] / (width / grid[1]))))
    folder.mkdir(parents=True, exist_ok=True)
    piece_height, piece_width = -(-height // rows), -(-width // cols)
    for index in range(count):
        top, left = index // cols * piece_height, index % cols * piece_width
        piece = image[top : top + piece_height, left : left + piece_width]
        write_pyramid(folder / f"bench-{index:02d}.tiff", lambda y0, y1, p=piece: p[y0:y1], piece.shape[:2],
                      compression="jpeg", quality=90)  # fmt: skip


def folder_rounds(args: argparse.Namespace, work: Path, megapixels: float) -> None:
    """Folder mode: every folder's variants in each round; medians printed per folder, then the time ratios."""
    folders = {count: work / f"folder{count}" for count in args.folders}
    for count, folder in folders.items():
        if not (folder / "data" / "test").is_dir():
            cut_into_pieces(work / "data" / "test" / "bench.tiff", folder / "data" / "test", count)
    rounds = []
    for _ in range(args.repeats):
        round_results = {}
        for count, folder in folders.items():
            shutil.rmtree(folder / "cache", ignore_errors=True)  # a first run: every slide prepared
            ours = child(args, "ours", folder)
            round_results[count] = {
                "ours": ours,
                "network": child(args, "network", folder, ours["windows"]),
                "stock": child(args, "stock", folder),
            }
        rounds.append(round_results)
    results = {
        count: {variant: median_run([r[count][variant] for r in rounds]) for variant in ("ours", "network", "stock")}
        for count in folders
    }
    for count, result in results.items():
        ours, network, stock = result["ours"], result["network"], result["stock"]
        print(
            f"folder of {count} slides: ours {ours['seconds']:.1f} s ({megapixels / ours['seconds']:.1f} MP/s, "
            f"{ours['windows']} windows, first window after {ours['first_window']:.1f} s, peak "
            f"{ours['peak_mib']:.0f} MiB); network alone {network['seconds']:.1f} s "
            f"({megapixels / network['seconds']:.1f} MP/s); stock {stock['seconds']:.1f} s "
            f"({megapixels / stock['seconds']:.1f} MP/s); pipeline/network {ours['seconds'] / network['seconds']:.2f}; "
            f"stock/ours {stock['seconds'] / ours['seconds']:.2f}"
        )
    if args.repeats > 1:
        print(
            "ours' seconds per round: "
            + "; ".join(
                f"{count} slides " + ", ".join(f"{r[count]['ours']['seconds']:.1f}" for r in rounds)
                for count in folders
            )  # fmt: skip
        )
    base = args.folders[0]
    for count in args.folders[1:]:
        ratio = results[count]["ours"]["seconds"] / results[base]["ours"]["seconds"]
        print(f"ours, {count} slides / {base} slides of the same pixels: {ratio:.2f} (goal <= 1.05)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(BUNDLE / "models" / "model.pt"))
    parser.add_argument("--demo", default=str(BUNDLE / "data" / "demo"))
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--cols", type=int, default=2)
    parser.add_argument("--glass", type=int, default=1)
    parser.add_argument("--roi", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of ours")
    parser.add_argument(
        "--tta",
        default="false",
        choices=["true", "false"],
        help="flip TTA in ours and the network-alone run (the stock approach has none)",
    )
    parser.add_argument("--slide-compression", default="jpeg", choices=["jpeg", "zlib"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of all variants; times are their medians (the machine may be shared and noisy)",
    )
    parser.add_argument(
        "--work-dir",
        help="keep the slide and every run's outputs here (default: a temporary folder); "
        "a slide already there is reused, e.g. to profile one variant with --variant ours --work",
    )
    parser.add_argument(
        "--folders", nargs="+", type=int, help="folder mode: the slide cut into this many slides, one folder each"
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant:  # a child: one measurement, printed as JSON
        work = Path(args.work)
        run = {
            "ours": lambda: run_ours(args, work),
            "network": lambda: run_network(args, work, args.windows),
            "stock": lambda: run_stock(args, work),
            "stock_mixed": lambda: run_stock(args, work, True),
        }[args.variant]
        print(json.dumps({**run(), "peak_mib": peak_rss_mib()}))
        return

    if args.repeats < 1:
        sys.exit(f"--repeats must be at least 1, got {args.repeats}")
    if not Path(args.ckpt).exists():
        sys.exit(f"no checkpoint at {args.ckpt}: train first (README's first command) or pass --ckpt")
    members = len(checkpoint_files(args.ckpt))
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        work = Path(args.work_dir or folder)
        slide = work / "data" / "test" / "bench.tiff"
        if slide.is_file():
            with tifffile.TiffFile(slide) as tif:
                height, width = tif.pages[0].shape[:2]
        else:
            slide.parent.mkdir(parents=True, exist_ok=True)
            source = sorted((Path(args.demo) / "test").glob("*.tiff"))[0]
            height, width = tiled_slide(
                slide, source, args.rows, args.cols, args.glass, compression=args.slide_compression
            )
        if args.folders:
            print(f"slide {width} x {height} ({height * width / 1e6:.0f} MP at level 0), cut into folders of slides")
            folder_rounds(args, work, height * width / 1e6)
            return
        runs = [measure_once(args, work) for _ in range(args.repeats)]
        tissue = RunOutputs(work / "ours").read_summary("bench")["tissue_fraction"]
    ours, network, stock, stock_mixed = (median_run([run[variant] for run in runs]) for variant in VARIANTS)
    megapixels = height * width / 1e6
    print(
        f"slide {width} x {height} ({megapixels:.0f} MP at level 0, tissue {tissue:.0%}), roi {args.roi}, "
        f"overlap {args.overlap}, batch {args.batch}, tta {args.tta}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    if args.repeats > 1:
        print(
            f"medians of {args.repeats} rounds (each round runs every variant once, in turn); seconds per round: "
            + "; ".join(
                f"{variant} " + ", ".join(f"{run[variant]['seconds']:.1f}" for run in runs) for variant in VARIANTS
            )
        )
    print(
        f"ours:    {ours['seconds']:.1f} s for {ours['windows']} tissue windows, peak {ours['peak_mib']:.0f} MiB, "
        f"{megapixels / ours['seconds']:.1f} MP/s"
    )
    print(f"network: {network['seconds']:.1f} s for the same windows")
    print(
        f"stock:   {stock['seconds']:.1f} s, peak {stock['peak_mib']:.0f} MiB, {megapixels / stock['seconds']:.1f} MP/s"
    )
    print(
        f"stock with the bundle's precision and layout: {stock_mixed['seconds']:.1f} s, "
        f"peak {stock_mixed['peak_mib']:.0f} MiB"
    )
    print(f"pipeline/network time ratio: {ours['seconds'] / network['seconds']:.2f} (goal <= 1.25)")
    print(
        f"stock/ours time ratio: {stock['seconds'] / ours['seconds']:.2f} (goal >= 1.8); "
        f"peak memory ours {ours['peak_mib']:.0f} MiB vs stock {stock['peak_mib']:.0f} MiB"
    )
    print(f"stock with the same precision/ours time ratio: {stock_mixed['seconds'] / ours['seconds']:.2f}")
    if members > 1:
        ours_single, network_single = (
            median_run([run[variant] for run in runs]) for variant in ("ours_single", "network_single")
        )
        bound = members * network_single["seconds"] + ours_single["seconds"] - network_single["seconds"]
        print(
            f"ensemble of {members}: ours {ours['seconds']:.1f} s, network alone {network['seconds']:.1f} s; "
            f"its first member alone: ours {ours_single['seconds']:.1f} s, "
            f"network alone {network_single['seconds']:.1f} s"
        )
        print(
            f"ensemble/bound time ratio: {ours['seconds'] / bound:.2f} (goal <= 1: at most {members} x the member's "
            f"network time plus its pipeline time, {bound:.1f} s)"
        )
    cores = len(os.sched_getaffinity(0))
    floor = max(ours["cpu_seconds"] / cores, network["seconds"]) / network["seconds"]
    print(
        f"CPU time: ours {ours['cpu_seconds']:.1f} core-seconds, the network alone {network['cpu_seconds']:.1f}; "
        f"on {cores} cores work of ours' CPU time takes at least {ours['cpu_seconds'] / cores:.1f} s: a "
        f"pipeline/network floor of {floor:.2f} on this machine"
    )


if __name__ == "__main__":
    main()
