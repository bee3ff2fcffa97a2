"""What the configs call between MONAI's pieces: finding and preparing the slides of a run.

Every function here turns bad input into one line (``error: ...``) instead of a traceback, and
a slide that cannot be used is reported and left out rather than stopping the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ignite.engine import Engine

from .demo import ensure_demo
from .distributed import barrier, is_main_process, rank_share
from .errors import DatasetError, InputError, SlideError, user_errors
from .handlers import MODEL_FILE, read_record
from .layout import CsvRow, HubmapFolder, is_safe_id, report_problems
from .prepare import PreparedSlide, prepare_slide
from .regions import REGION_CODES
from .scale import SlideScale, slide_scale, working_resolution
from .slides import import_cucim_in_background, inspect_slide
from .store import read_regions

__all__ = [
    "SlideSet",
    "evaluation_slides",
    "inference_slides",
    "pseudo_labelled_slides",
    "report_prepared",
    "report_training",
    "run_training",
    "training_slides",
]

logger = logging.getLogger(__name__)

PREPARE_WORKERS = 4  # slides prepared at the same time


@dataclass
class SlideSet:
    """The slides of a run, prepared up front or (inference, evaluation) as a stream.

    A streamed set starts preparing its slides at the first :meth:`ready` call, ``PREPARE_WORKERS``
    at a time, and hands each on in listing order as soon as it is prepared, so a run segments one
    slide while the next ones are prepared. The first call comes from the DataLoader's sampler
    (:meth:`scripts.stitching.TissueWindows.stream`), after its reader processes have started: they
    are forked before any preparing thread exists.

    Attributes:
        prepared: ``{id: PreparedSlide}`` of this process, in listing order (as far as prepared).
        failed: ``{id: reason}`` for listed slides that could not be used.
        truth: ``{id: rle}`` when the slides are labelled (a slide that fails to prepare leaves it).
        listed: every usable id of the run in listing order (all ranks under ``torchrun``).
        ids: this process's slides in listing order; default the prepared ones (and ``listed``'s default).
        prepare: makes the slide of an id (raising :class:`scripts.errors.InputError` for one that
            cannot be used), or None when every slide is already prepared or failed.
    """

    prepared: dict[str, PreparedSlide] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    truth: dict[str, str] | None = None
    listed: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    prepare: Callable[[str], PreparedSlide] | None = None
    _pending: dict[str, Future] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids = self.ids or list(self.prepared)
        self.listed = self.listed or list(self.ids)

    def ready(self) -> Iterator[PreparedSlide]:
        """This process's slides in listing order, each once it is prepared (a slide that cannot be
        used moves to :attr:`failed` and is passed over); starts the preparation on the first call."""
        self._start()
        for slide_id in self.ids:
            if slide_id in self._pending:
                self._settle(slide_id)
            if slide_id in self.prepared:
                yield self.prepared[slide_id]

    def wait(self) -> None:
        """Prepare every slide of this process now (those that cannot be used move to :attr:`failed`)."""
        for _ in self.ready():
            pass

    @property
    def slides(self) -> list[PreparedSlide]:
        """Every prepared slide of this process as a list (waiting for their preparation)."""
        return list(self.ready())

    def _start(self) -> None:
        if self._pending is not None:
            return
        todo = [key for key in self.ids if key not in self.prepared and key not in self.failed]
        if self.prepare is None or not todo:
            self._pending = {}
            return
        # several slides at once: each waits mostly on its cuCIM probe (a child process) and on native code
        import_cucim_in_background()
        pool = ThreadPoolExecutor(min(PREPARE_WORKERS, len(todo)), thread_name_prefix="prepare")
        self._pending = {slide_id: pool.submit(self.prepare, slide_id) for slide_id in todo}
        pool.shutdown(wait=False)  # the queued slides are still prepared; the threads end after the last

    def _settle(self, slide_id: str) -> None:
        """Wait for one slide's preparation and file it as prepared or failed."""
        future = self._pending.pop(slide_id)
        try:
            # the writer's thread looks a slide up once its windows arrive, which is after this insertion
            self.prepared[slide_id] = future.result()
        except InputError as error:
            self.failed[slide_id] = str(error)
            if self.truth is not None:
                self.truth.pop(slide_id, None)


def open_dataset(dataset_dir: str, demo_dir: str) -> HubmapFolder:
    """The dataset folder; the built-in demo is generated first when it is the one asked for (by
    rank 0 alone under ``torchrun``, the others waiting for it)."""
    if Path(dataset_dir).resolve() == Path(demo_dir).resolve():
        if is_main_process():
            ensure_demo(demo_dir)
        barrier()
    return HubmapFolder(Path(dataset_dir))


def _prepare_all(
    folder: HubmapFolder,
    split: str,
    listed: dict[str, tuple[Path, str | None]],
    cache_dir: str,
    downscale: int,
    tissue: dict | None,
    *,
    labelled: bool,
    share: bool = False,
    stream: bool = False,
    working_mpp: float | None = None,
    slide_mpp: float | None = None,
) -> SlideSet:
    """Prepare every listed slide (this rank's share of them when ``share``), ``PREPARE_WORKERS``
    at a time, keeping going past the ones that fail; now, or as the run asks for them (``stream``).

    Each slide's scale is read (``slide_mpp``, else its CSV row's ``mpp``, else its file) and
    recorded; with ``working_mpp`` it sets how the slide reaches that scale (:func:`scripts.scale.working_resolution`).

    Args:
        folder: the dataset.
        split: the folder of the slides (for their annotation files).
        listed: ``{id: (image, rle or None)}``; a labelled slide without RLE takes its polygons.
        cache_dir: canonical slides and zarr stores.
        downscale: working resolution.
        tissue: tissue-mask settings.
        labelled: whether the slides are labelled (their RLE becomes :attr:`SlideSet.truth`).
        share: prepare only this rank's share.
        stream: return at once; the slides are prepared from the first :meth:`SlideSet.ready` call on.
        working_mpp: the model's microns per working pixel, or None to work at ``downscale``.
        slide_mpp: microns per level-0 pixel of every slide, overriding what CSV and files state.
    """
    ids = rank_share(list(listed)) if share else list(listed)

    def prepare(slide_id: str) -> PreparedSlide:
        image, rle = listed[slide_id]
        polygons = folder.annotation_path(split, slide_id, "glomeruli") if labelled and rle is None else None
        row = folder.mpp_rows.get(slide_id)
        stated = inspect_slide(image).stated_mpp
        try:
            scale = slide_scale(stated, str(image), slide_mpp, row.mpp if row else None, row.where if row else "")
        except SlideError as error:
            if working_mpp is not None:
                raise
            # nothing depends on the scale of this run's slides: a wrong one costs the slide nothing
            logger.warning("%s (the scale is only reported: left unknown)", error)
            scale = SlideScale(None, "none")
        resolution = working_resolution(scale, working_mpp, downscale, slide_id)
        return prepare_slide(
            slide_id,
            image,
            cache_dir,
            resolution.downscale,
            rle,
            tissue,
            polygons,
            folder.annotation_path(split, slide_id, "regions"),
            scale,
            resolution.resample,
        )

    truth = {key: listed[key][1] for key in ids if listed[key][1] is not None} if labelled else None
    result = SlideSet(truth=truth, listed=list(listed), ids=ids, prepare=prepare)
    result.failed.update(folder.problems)
    result.listed += [key for key in folder.problems if is_safe_id(key) and key not in result.listed]
    if not stream:
        result.wait()
    return result


def _with_rle(slides: dict[str, tuple[Path, CsvRow]]) -> dict[str, tuple[Path, str | None]]:
    return {slide_id: (image, row.value) for slide_id, (image, row) in slides.items()}


@user_errors
def training_slides(
    dataset_dir: str,
    demo_dir: str,
    cache_dir: str,
    downscale: int,
    tissue: dict | None = None,
    working_mpp: float | None = None,
    slide_mpp: float | None = None,
) -> SlideSet:
    """Prepare the labelled slides: those of ``train.csv``, and those of ``train/`` with glomerulus
    polygons (``<id>.json``) but no row.

    Args:
        dataset_dir: HuBMAP-layout folder.
        demo_dir: the built-in demo's folder (generated when ``dataset_dir`` is it).
        cache_dir: canonical slides and zarr stores.
        downscale: working resolution (of slides without a stated scale, when ``working_mpp`` is set).
        tissue: tissue-mask settings.
        working_mpp: the model's microns per working pixel (each slide's downscale follows from its
            scale), or None to work at ``downscale``.
        slide_mpp: microns per level-0 pixel of every slide, overriding what CSV and files state.

    Returns:
        The slides; at least two, so that one can validate.
    """
    folder = open_dataset(dataset_dir, demo_dir)
    listed = _with_rle(folder.labelled_slides("train.csv", "train")) if (folder.root / "train.csv").is_file() else {}
    listed.update({key: (image, None) for key, image in folder.polygon_labelled_slides("train", listed).items()})
    if not listed and not folder.problems:
        raise DatasetError(
            f"{folder.root}: no training slides; put them in train/<id>.tiff with their masks in "
            "train.csv (id,encoding) or glomerulus polygons in train/<id>.json"
        )
    slides = _prepare_all(
        folder,
        "train",
        listed,
        cache_dir,
        downscale,
        tissue,
        labelled=True,
        working_mpp=working_mpp,
        slide_mpp=slide_mpp,
    )
    report_problems(slides.failed)
    if len(slides.prepared) < 2:
        raise DatasetError(
            f"{folder.root}: {len(slides.prepared)} usable training slide(s); at least 2 are "
            "needed (training and validation are split by slide)"
        )
    return slides


@user_errors
def pseudo_labelled_slides(
    dataset_dir: str,
    csv_path: str | None,
    cache_dir: str,
    downscale: int,
    tissue: dict | None = None,
    working_mpp: float | None = None,
    slide_mpp: float | None = None,
) -> list[PreparedSlide]:
    """Prepare the slides of a pseudo-label file (``id,encoding``; images in ``test/``) for training.

    Args:
        dataset_dir: HuBMAP-layout folder.
        csv_path: the file written by ``run pseudo_labels``, or None for none.
        cache_dir: canonical slides and zarr stores.
        downscale: working resolution.
        tissue: tissue-mask settings.
        working_mpp: the model's microns per working pixel (each slide's downscale follows from its
            scale), or None to work at ``downscale``.
        slide_mpp: microns per level-0 pixel of every slide, overriding what CSV and files state.

    Returns:
        The prepared slides (empty when ``csv_path`` is None); unusable rows are reported and left out.
    """
    if csv_path is None:
        return []
    folder = HubmapFolder(Path(dataset_dir))
    listed = _with_rle(folder.labelled_slides(str(Path(csv_path).resolve()), "test"))
    slides = _prepare_all(
        folder,
        "test",
        listed,
        cache_dir,
        downscale,
        tissue,
        labelled=True,
        working_mpp=working_mpp,
        slide_mpp=slide_mpp,
    )
    report_problems(slides.failed)
    return slides.slides


@user_errors
def inference_slides(
    dataset_dir: str,
    demo_dir: str,
    cache_dir: str,
    downscale: int,
    tissue: dict | None = None,
    working_mpp: float | None = None,
    slide_mpp: float | None = None,
) -> SlideSet:
    """The slides to segment (``sample_submission.csv``, else ``test/*.tiff``), prepared as the run
    asks for them (:meth:`SlideSet.ready`); the arguments as :func:`training_slides` takes them."""
    folder = open_dataset(dataset_dir, demo_dir)
    listed = {slide_id: (image, None) for slide_id, image in folder.test_slides().items()}
    slides = _prepare_all(
        folder,
        "test",
        listed,
        cache_dir,
        downscale,
        tissue,
        labelled=False,
        share=True,
        stream=True,
        working_mpp=working_mpp,
        slide_mpp=slide_mpp,
    )
    if not slides.listed and not slides.failed:
        raise DatasetError(f"{folder.root}: no slides to segment; put them in test/<id>.tiff")
    return slides


@user_errors
def evaluation_slides(
    dataset_dir: str,
    demo_dir: str,
    cache_dir: str,
    downscale: int,
    split: str = "test",
    tissue: dict | None = None,
    working_mpp: float | None = None,
    slide_mpp: float | None = None,
) -> SlideSet:
    """Labelled slides to score: ``solution.csv`` with ``test/`` or ``train.csv`` with ``train/``, prepared
    as the run asks for them; the other arguments as :func:`training_slides` takes them."""
    if split not in ("test", "train"):
        raise DatasetError(f"eval_split must be 'test' (solution.csv) or 'train' (train.csv), got {split!r}")
    folder = open_dataset(dataset_dir, demo_dir)
    csv_name = "solution.csv" if split == "test" else "train.csv"
    slides = _prepare_all(
        folder,
        split,
        _with_rle(folder.labelled_slides(csv_name, split)),
        cache_dir,
        downscale,
        tissue,
        labelled=True,
        share=True,
        stream=True,
        working_mpp=working_mpp,
        slide_mpp=slide_mpp,
    )
    if not slides.listed:
        raise DatasetError(f"{folder.root / csv_name}: no usable labelled slides to evaluate")
    return slides


def report_prepared(slides: SlideSet) -> None:
    """Print one line per prepared slide: glomeruli, tissue share and region shares, and its store.

    Args:
        slides: the run's slides (this rank's).
    """
    names = {code: name for name, code in REGION_CODES.items()}
    for slide in slides.slides:
        regions, _ = read_regions(slide.store)
        codes, counts = np.unique(regions, return_counts=True)
        shares = ", ".join(f"{names[int(c)]} {n / regions.size:.0%}" for c, n in zip(codes, counts, strict=True))
        print(f"{slide.slide_id}: {slide.glomeruli} glomeruli; {shares}; {slide.store}")
    print(f"{len(slides.prepared)} slide(s) prepared, {len(slides.failed)} left out")


@user_errors
def run_training(trainer: Engine) -> None:
    """Run the trainer; bad input met on the way (such as a ``last.pt`` saved with other settings)
    ends the run with its one-line message."""
    trainer.run()


def report_training(ckpt_dir: str) -> None:
    """Print the best validation Dice (or, without validation, the last epoch) and where the model was saved.

    Args:
        ckpt_dir: the checkpoint folder (``best.json`` says what ``model.pt`` scored).
    """
    if not is_main_process():
        return
    fields, model = read_record(ckpt_dir), Path(ckpt_dir) / MODEL_FILE
    if fields is None or not model.is_file():
        print(f"training ended before any validation; no model saved in {ckpt_dir}")
        return
    if fields["metric"] is None:
        print(
            f"no validation slides (train_on_all): the last epoch's weights (epoch {fields['epoch']}) saved to {model}"
        )
        return
    print(f"best validation Dice {fields['metric']:.4f} (epoch {fields['epoch']}); model saved to {model}")
