"""The HuBMAP Kaggle folder: which slides exist, their CSV rows, and ids that are safe as file names.

Layout::

    <dataset_dir>/train/<id>.tiff          training slides (also .tif, .svs, .ndpi, .mrxs with its
                                           folder <id>/, .scn, .bif)
    <dataset_dir>/train.csv                id,encoding (RLE of the glomerulus mask)
    <dataset_dir>/train/<id>.json          glomerulus polygons (QuPath GeoJSON, optional; the label
                                           of a training slide that has no train.csv row)
    <dataset_dir>/train/<id>-anatomical-structure.json
                                           Cortex / Medulla polygons (optional, for sampling)
    <dataset_dir>/test/<id>.tiff           slides to segment
    <dataset_dir>/sample_submission.csv    id,predicted (which test slides to segment)
    <dataset_dir>/solution.csv             id,encoding (test truth, optional)

Every CSV may have an ``mpp`` column (microns per level-0 pixel of each slide), for slides whose
files state no scale or state a wrong one.

Ids read from CSV files are data, never paths: an id with a folder separator, ``..`` or any
character outside ``[A-Za-z0-9._-]`` is rejected.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError

__all__ = ["CsvRow", "HubmapFolder", "check_slide_id", "is_safe_id", "read_csv_rows", "report_problems"]

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SLIDE_SUFFIXES = (".tiff", ".tif", ".svs", ".ndpi", ".mrxs", ".scn", ".bif")  # TIFF, Aperio, OpenSlide formats
MPP_COLUMN = "mpp"


def is_safe_id(slide_id: str) -> bool:
    """Whether ``slide_id`` is a plain file-name stem (no folders, no ``..``)."""
    return bool(SAFE_ID.fullmatch(slide_id)) and ".." not in slide_id


def check_slide_id(slide_id: str, where: str) -> str:
    """Return ``slide_id`` if it is a plain file name stem, else raise.

    Args:
        slide_id: the id as read.
        where: the file and row, for the message.

    Raises:
        DatasetError: the id could name a path outside the dataset or output folder.
    """
    if not is_safe_id(slide_id):
        raise DatasetError(
            f"{where}: id {slide_id[:60]!r} is not a plain slide name (letters, digits, '.', '_', '-'; "
            "no folders); fix the id"
        )
    return slide_id


@dataclass(frozen=True)
class CsvRow:
    """One data row of a HuBMAP CSV file.

    Attributes:
        slide_id: the checked id.
        value: the second column (RLE, or empty).
        where: ``"<file> row <n>"`` for messages.
        mpp: the optional ``mpp`` column as written (empty where absent), checked by :mod:`scripts.scale`.
    """

    slide_id: str
    value: str
    where: str
    mpp: str = ""


def read_csv_rows(path: Path, value_column: str) -> tuple[list[CsvRow], dict[str, str]]:
    """Read ``id,<value_column>`` rows (and the optional ``mpp`` column); a row with a bad or repeated id
    is set aside, not fatal.

    Args:
        path: the CSV file.
        value_column: ``"encoding"`` or ``"predicted"``.

    Returns:
        ``(rows, problems)``: the usable rows in file order, and ``{row location: message}`` for
        the rows set aside.

    Raises:
        DatasetError: the file is unreadable or lacks the columns.
    """
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # whole-slide RLE strings run to tens of megabytes
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "id" not in reader.fieldnames or value_column not in reader.fieldnames:
                raise DatasetError(f"{path}: expected the header 'id,{value_column}', found {reader.fieldnames}")
            raw = [
                ((r["id"] or "").strip(), (r[value_column] or "").strip(), f"{path.name} row {n}", r.get(MPP_COLUMN))
                for n, r in enumerate(reader, start=2)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{path}: cannot be read as CSV ({error})") from None
    finally:
        csv.field_size_limit(previous_limit)
    rows, problems, seen = [], {}, set()
    for slide_id, value, where, mpp in raw:
        try:
            check_slide_id(slide_id, where)
        except DatasetError as error:
            problems[where] = str(error)
            continue
        if slide_id in seen:
            problems[where] = f"{where}: id {slide_id!r} appears twice; keep one row per slide"
            continue
        seen.add(slide_id)
        rows.append(CsvRow(slide_id, value, where, (mpp or "").strip()))
    return rows, problems


@dataclass
class HubmapFolder:
    """A dataset folder in the HuBMAP Kaggle layout.

    Args:
        root: the folder.

    Attributes:
        problems: ``{id or row location: reason}`` of listed slides left out.
        mpp_rows: ``{id: row}`` of the CSV rows read so far that state the slide's scale (``mpp``).

    Raises:
        DatasetError: ``root`` does not exist.
    """

    root: Path
    problems: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    mpp_rows: dict[str, CsvRow] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise DatasetError(
                f"dataset_dir {self.root} does not exist. Leave dataset_dir at its default to use the built-in "
                "demo, or put HuBMAP data there (train/<id>.tiff, train.csv, test/<id>.tiff, sample_submission.csv)"
            )

    def slide_path(self, split: str, slide_id: str) -> Path | None:
        """``<root>/<split>/<id><suffix>`` for the first of :data:`SLIDE_SUFFIXES` that exists, in lower or
        upper case (files copied from some scanners' systems come as ``.SVS`` or ``.NDPI``)."""
        for suffix in SLIDE_SUFFIXES:
            for cased in (suffix, suffix.upper()):
                path = self.root / split / f"{slide_id}{cased}"
                if path.is_file():
                    return path
        return None

    def annotation_path(self, split: str, slide_id: str, kind: str) -> Path | None:
        """``<split>/<id>.json`` (``kind="glomeruli"``) or ``<split>/<id>-anatomical-structure.json``
        (``kind="regions"``) if it exists."""
        path = (
            self.root / split / (f"{slide_id}.json" if kind == "glomeruli" else f"{slide_id}-anatomical-structure.json")
        )
        return path if path.is_file() else None

    def polygon_labelled_slides(self, split: str = "train", exclude: Collection[str] = ()) -> dict[str, Path]:
        """Slides of ``split`` not in ``exclude`` that have glomerulus polygons (``<id>.json``) and no RLE.

        Args:
            split: the folder.
            exclude: ids already labelled by a CSV row.

        Returns:
            ``{id: image path}`` sorted by id.
        """
        slides = {}
        for path in sorted((self.root / split).glob("*.json")):
            image = self.slide_path(split, path.stem) if is_safe_id(path.stem) else None
            if image is not None and path.stem not in exclude:
                slides[path.stem] = image
        return slides

    def labelled_slides(self, csv_name: str = "train.csv", split: str = "train") -> dict[str, tuple[Path, CsvRow]]:
        """Slides listed in ``csv_name`` with their RLE row, for those whose image exists.

        A listed slide whose image is missing, or a row with a bad id, is left out and its one-line
        reason kept in :attr:`problems` (keyed by id, or by row when the id is unusable), so the
        others still train or score.

        Args:
            csv_name: ``"train.csv"`` or ``"solution.csv"``.
            split: folder holding the images.

        Returns:
            ``{id: (image path, row)}`` in file order; rows left out are described in :attr:`problems`.
        """
        path = self.root / csv_name
        if not path.is_file():
            raise DatasetError(f"{path} not found: it lists the {split} slides and their masks (id,encoding)")
        rows, problems = read_csv_rows(path, "encoding")
        self.problems.update(problems)
        self._note_mpp(rows)
        slides = {}
        for row in rows:
            image = self.slide_path(split, row.slide_id)
            if image is None:
                self.problems[row.slide_id] = _missing(row, split)
                continue
            slides[row.slide_id] = (image, row)
        return slides

    def test_slides(self) -> dict[str, Path]:
        """Slides to segment: those in ``sample_submission.csv``, or every ``test/*.tiff`` without one.

        Returns:
            ``{id: image path}``; listed slides without an image are left out and reported in :attr:`problems`.
        """
        listing = self.root / "sample_submission.csv"
        if not listing.is_file():
            paths = sorted(
                p for p in (self.root / "test").glob("*") if p.suffix.lower() in SLIDE_SUFFIXES and p.is_file()
            )
            for path in paths:
                if not is_safe_id(path.stem):
                    self.problems[str(path)] = f"{path}: file name is not a plain slide id; rename the file"
            return {p.stem: p for p in paths if is_safe_id(p.stem)}
        rows, problems = read_csv_rows(listing, "predicted")
        self.problems.update(problems)
        self._note_mpp(rows)
        slides = {}
        for row in rows:
            image = self.slide_path("test", row.slide_id)
            if image is None:
                self.problems[row.slide_id] = _missing(row, "test")
                continue
            slides[row.slide_id] = image
        return slides

    def _note_mpp(self, rows: list[CsvRow]) -> None:
        """Keep the rows that state a slide's scale (:attr:`mpp_rows`), for :func:`scripts.scale.slide_scale`."""
        self.mpp_rows.update({row.slide_id: row for row in rows if row.mpp})


def _missing(row: CsvRow, split: str) -> str:
    return (
        f"{row.where}: slide {row.slide_id!r} has no image {split}/{row.slide_id}.tiff; add the file or remove the row"
    )


def report_problems(problems: dict[str, str]) -> None:
    """Print one line per slide (``FAILED <id>: ...``) or row (``SKIPPED ...``) that was left out.

    Args:
        problems: ``{id or row location: reason}``, as :attr:`HubmapFolder.problems` holds them.
    """
    for key, reason in problems.items():
        print(f"FAILED {key}: {reason}" if is_safe_id(key) else f"SKIPPED {reason}")
