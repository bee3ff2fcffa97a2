"""MONAI whole-slide datasets for this bundle: regions that may cross the slide edge, and
training patches whose centres are drawn afresh on every visit.

Both read through MONAI's ``PatchWSIDataset`` and ``WSIReader`` with the cuCIM backend, at the
pyramid level of the working resolution. Datalist items come from :mod:`scripts.sampling` and
:mod:`scripts.stitching`: MONAI's ``location`` (level-0 ``(row, col)`` of the top-left pixel),
``size`` (at the working level) and ``level`` (the working level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from monai.data import PatchWSIDataset
from monai.transforms import Randomizable

from .keys import (
    BBOX,
    CENTRE,
    DOWNSCALE,
    GLOMERULUS_UNIT,
    GRID_UNIT,
    HARD_UNIT,
    IMAGE,
    LOCATION,
    PATH,
    READ_ERROR,
    SHAPE,
    SIZE,
    STORE,
    UNIT_KIND,
    WEIGHTS,
    WINDOW_META_KEYS,
)
from .prepare import working_shape
from .regions import SAMPLING_CLASSES
from .slides import CUCIM_READ_LOCK
from .store import read_regions

__all__ = ["ImportancePatchDataset", "SlideRegionDataset", "StreamedItems"]


class StreamedItems:
    """The ``data`` of a dataset whose DataLoader's sampler yields the items themselves: indexing it
    by an item gives the item.

    MONAI's datasets index a datalist by position, and a DataLoader's reader processes keep the
    datalist they started with; the windows of slides still being prepared when the readers start
    (:meth:`scripts.stitching.TissueWindows.stream`) reach them through the sampler instead.
    """

    def __getitem__(self, item: dict) -> dict:
        return item

    def __len__(self) -> int:
        raise TypeError("a stream of items has no length")


class SlideRegionDataset(PatchWSIDataset):
    """``PatchWSIDataset`` whose regions may reach past the slide: the outside mirrors the inside.

    cuCIM fills out-of-slide pixels with black, which no real slide shows: windows at the slide
    border would see a black (or, filled with a constant, a flat) frame that the network never
    met in training and that shifts its predictions inside the slide. Mirroring the slide's own
    border keeps the texture the network knows.

    Args:
        data: datalist items with ``image``, ``location``, ``size``, ``level`` and
            the keys in :data:`scripts.keys.WINDOW_META_KEYS` (copied into the image metadata for later
            transforms), or :class:`StreamedItems` when the DataLoader's sampler yields the items.
        transform: transforms applied to ``{"image": MetaTensor}``.
        additional_meta_keys: further item keys to copy into the metadata.
        reader: WSIReader backend.
    """

    def __init__(
        self,
        data: Sequence[dict] | StreamedItems,
        transform: Callable | None = None,
        additional_meta_keys: Sequence[str] = (),
        reader: str = "cuCIM",
        **kwargs,
    ) -> None:
        super().__init__(
            data,
            patch_size=None,
            patch_level=None,
            transform=transform,
            include_label=False,
            center_location=False,
            additional_meta_keys=[*WINDOW_META_KEYS, *additional_meta_keys],
            reader=reader,
            **kwargs,
        )

    def _get_data(self, sample: dict):
        image, metadata = self._read(sample)
        downscale = sample[DOWNSCALE]
        top, left = (int(v) // downscale for v in metadata[LOCATION])
        rows, cols = working_shape(sample[SHAPE], downscale)  # the slide at the working level
        r0, c0 = max(-top, 0), max(-left, 0)
        r1, c1 = min(rows - top, image.shape[1]), min(cols - left, image.shape[2])
        if (r0, c0, r1, c1) == (0, 0, *image.shape[1:]):
            return image, metadata
        if r1 <= r0 or c1 <= c0:  # wholly outside: plain glass
            return np.full_like(image, 255), metadata
        inside = np.asarray(image)[:, r0:r1, c0:c1]
        widths = ((0, 0), (r0, image.shape[1] - r1), (c0, image.shape[2] - c1))
        return np.pad(inside, widths, mode="symmetric"), metadata

    def _read(self, sample: dict) -> tuple[np.ndarray, dict]:
        """Read a region, retrying once; a region that still fails reads as glass and its metadata's
        ``read_error`` says why (empty when the read worked), so one bad tile fails its slide, not the run."""
        error = None
        for _ in range(2):
            try:
                # a DataLoader without reader processes reads here while slides are prepared in threads
                with CUCIM_READ_LOCK:
                    image, metadata = super()._get_data(sample)
                return image, {**metadata, READ_ERROR: ""}
            except Exception as caught:  # cuCIM raises RuntimeError, MONAI ValueError; all mean the same here
                error = caught
        size = self._get_size(sample)
        metadata = {
            "backend": self.backend,
            "original_channel_dim": 0,
            "spatial_shape": np.asarray(size),
            "count": 1,
            LOCATION: np.asarray(self._get_location(sample)),
            SIZE: np.asarray(size),
            "level": self._get_level(sample),
            PATH: sample[IMAGE],
            READ_ERROR: f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300],
        }
        return np.full((3, *size), 255, np.uint8), metadata


class ImportancePatchDataset(Randomizable, SlideRegionDataset):
    """Training patches: one item per sampling unit, its centre drawn again at every visit.

    A ``glomerulus`` unit gets a centre uniform in its ``bbox`` (level-0 ``[y0, x0, y1, x1]``); a
    ``random`` unit picks a region class (:data:`scripts.regions.SAMPLING_CLASSES`) with probability
    proportional to its ``weights`` (``{class: weight}``, classes the slide lacks left out), then a
    centre uniform in that class's pixels of the region map; a ``grid`` unit keeps its fixed ``centre``;
    a ``hard`` unit gets a centre uniform in one of its slide's hard-negative boxes
    (:meth:`set_hard_boxes`, from :mod:`scripts.mining`), and is a ``random`` unit while there are none.
    The draw uses this dataset's random state, which MONAI's ``DataLoader`` reseeds per worker and per
    epoch, so every epoch sees new patches and a seeded run repeats exactly.

    Args:
        data: sampling units (see :mod:`scripts.sampling`).
        patch_size: patch side at the working resolution.
        transform: transforms applied to ``{"image": MetaTensor}``.
        seed: initial random state (the DataLoader replaces it in workers).
        reader: WSIReader backend.
    """

    def __init__(
        self,
        data: Sequence[dict],
        patch_size: int,
        transform: Callable | None = None,
        seed: int = 0,
        reader: str = "cuCIM",
        **kwargs,
    ) -> None:
        super().__init__(data, transform=transform, reader=reader, **kwargs)
        self.patch_side = patch_size
        self._regions: dict[str, tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]] = {}
        self.hard_boxes: dict[str, list[list[int]]] = {}
        self.set_random_state(seed)

    def set_hard_boxes(self, boxes: dict[str, list[list[int]]]) -> None:
        """Replace the hard-negative boxes: ``{store: [[y0, x0, y1, x1], ...]}`` (level 0). DataLoader
        workers start afresh each epoch (``persistent_workers`` off), so the next epoch draws from them."""
        self.hard_boxes = {store: list(found) for store, found in boxes.items()}

    def randomize(self, data: dict) -> tuple[int, int]:
        """Draw a level-0 patch centre ``(row, col)`` for a sampling unit."""
        if data[UNIT_KIND] == GRID_UNIT:
            return tuple(data[CENTRE])
        if data[UNIT_KIND] == GLOMERULUS_UNIT:
            return self._centre_in(data[BBOX])
        if data[UNIT_KIND] == HARD_UNIT and self.hard_boxes.get(data[STORE]):
            boxes = self.hard_boxes[data[STORE]]
            return self._centre_in(boxes[self.R.randint(len(boxes))])
        points, downsample = self._region_points(data[STORE])
        names = [name for name, weight in data[WEIGHTS].items() if weight > 0 and name in points]
        if not names:
            return int(self.R.randint(0, data["shape"][0])), int(self.R.randint(0, data["shape"][1]))
        weights = np.array([data[WEIGHTS][name] for name in names], dtype=float)
        rows, cols = points[names[self.R.choice(len(names), p=weights / weights.sum())]]
        pick = self.R.randint(len(rows))
        return int((rows[pick] + self.R.rand()) * downsample), int((cols[pick] + self.R.rand()) * downsample)

    def _centre_in(self, box: Sequence[int]) -> tuple[int, int]:
        """A centre uniform in a level-0 ``[y0, x0, y1, x1]`` box."""
        y0, x0, y1, x1 = box
        return int(self.R.randint(y0, max(y1, y0 + 1))), int(self.R.randint(x0, max(x1, x0 + 1)))

    def _region_points(self, store: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
        """``({class: (rows, cols)}, downsample)`` of the store's region map, for the classes it holds;
        read once per store."""
        if store not in self._regions:
            regions, downsample = read_regions(store)
            points = {}
            for name, codes in SAMPLING_CLASSES.items():
                rows, cols = np.nonzero(np.isin(regions, codes))
                if len(rows):
                    points[name] = (rows.astype(np.int32), cols.astype(np.int32))
            self._regions[store] = (points, downsample)
        return self._regions[store]

    def _get_location(self, sample: dict) -> tuple[int, int]:
        centre = self.randomize(sample)
        half = self.patch_side * sample[DOWNSCALE] // 2
        # a multiple of the downscale maps exactly onto the working level in cuCIM
        return tuple((c - half) // sample[DOWNSCALE] * sample[DOWNSCALE] for c in centre)

    def _get_size(self, sample: dict) -> tuple[int, int]:
        return self.patch_side, self.patch_side
