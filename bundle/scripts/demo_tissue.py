"""Drawing synthetic PAS-stained kidney sections for the demo dataset.

One slide is a wobbly tissue section on glass, split into cortex and medulla, packed with
tubules, with glomeruli in the cortex (a lobulated tuft full of nuclei, a pale Bowman's space and
a thin capsule) and unannotated look-alikes (artery cross-sections, dense tubule knots).

Rendering works in stain density, not RGB: two ``uint8`` layers (PAS and haematoxylin, ``Q``
levels per unit of optical density) are built at full resolution by stamping pre-rendered tubules
and pasting glomeruli; smooth fields (interstitium, stain intensity, illumination) live at low
resolution; each band of rows is turned into RGB through a per-slide Beer-Lambert lookup table
only when the pyramid writer asks for it. Everything follows from one ``SeedSequence``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .annotations import Annotation

__all__ = ["BAND_ROWS", "SyntheticSlide", "child_streams", "draw_slide"]

BAND_ROWS = 512  # rows per band the pyramid writer asks for (its tile size)
Q = 170.0  # uint8 density levels per unit of optical density (255 levels reach density 1.5)
LOW = 4  # level-0 pixels per pixel of the interstitium field
LIGHT = 16  # level-0 pixels per pixel of the stain-gain and illumination fields (they vary over ~200 px)
GLOMERULUS_AREA = 250_000  # level-0 cortex pixels per glomerulus, about HuBMAP's density

Terms = np.ndarray  # Fourier terms of a closed outline: rows of (k, amplitude, phase)


@dataclass(frozen=True)
class SyntheticSlide:
    """One drawn slide.

    Attributes:
        read_band: ``read_band(y0, y1)`` gives level-0 RGB rows, for :func:`scripts.pyramid.write_pyramid`
            (called once per band, top to bottom, with bands of ``BAND_ROWS`` rows).
        glomeruli: glomerulus outlines (class ``glomerulus``), integer level-0 ``[x, y]``.
        regions: ``Cortex`` (with the medulla as a hole) and ``Medulla`` polygons.
        cortex_fraction: cortex share of the tissue area.
    """

    read_band: Callable[[int, int], np.ndarray]
    glomeruli: list[Annotation]
    regions: list[Annotation]
    cortex_fraction: float


def draw_slide(seed: np.random.SeedSequence, shape: tuple[int, int]) -> SyntheticSlide:
    """Lay out, draw and colour one slide.

    Args:
        seed: the slide's own stream; the same seed gives the same pixels.
        shape: level-0 ``(height, width)``.

    Returns:
        The slide, its RGB produced lazily band by band.
    """
    layout_rng, render_rng, stain_rng, noise_rng = map(np.random.default_rng, child_streams(seed, 4))
    layout = _Layout.draw(layout_rng, shape)
    glomeruli, lookalikes = _place_objects(layout_rng, layout)
    density = _render_density(render_rng, layout, glomeruli, lookalikes)
    reader = _band_reader(density, _smooth_fields(stain_rng, layout), _stain_lut(stain_rng), noise_rng)
    outlines = [Annotation("glomerulus", (g.polygon(),)) for g in glomeruli]
    return SyntheticSlide(reader, outlines, layout.regions(), layout.cortex_fraction())


def child_streams(parent: np.random.SeedSequence, count: int) -> list[np.random.SeedSequence]:
    """The children ``parent.spawn(count)`` would give a fresh parent, without spawn's hidden counter
    (which would make a second call give different streams)."""
    return [np.random.SeedSequence(parent.entropy, spawn_key=(*parent.spawn_key, i)) for i in range(count)]


# -------------------------------------------------------------------------------- slide geometry


def _terms(rng: np.random.Generator, ks: np.ndarray, amplitude: float, decay: float = 0.0) -> Terms:
    """Random Fourier terms: amplitude ``amplitude * k**-decay`` times a random factor, random phase."""
    ks = np.asarray(ks, dtype=np.float64)
    amplitudes = amplitude * ks**-decay * rng.uniform(0.3, 1.0, len(ks))
    return np.stack([ks, amplitudes, rng.uniform(0, 2 * np.pi, len(ks))], axis=1)


def _series(terms: Terms, theta: np.ndarray) -> np.ndarray:
    """Sum of ``a cos(k theta + phase)`` over the terms."""
    total = np.zeros_like(theta, dtype=np.float64)
    for k, amplitude, phase in terms:
        total += amplitude * np.cos(k * theta + phase)
    return total


ANGLES = np.linspace(0, 2 * np.pi, 2048, endpoint=False)  # outlines are tabulated, then interpolated


@dataclass(frozen=True)
class _Layout:
    """Where tissue, cortex and medulla are on one slide.

    Outlines are radius functions of the angle around ``centre`` in coordinates normalised by the
    half-sizes of the slide (so the section follows the slide's aspect ratio), tabulated on ``ANGLES``.

    Attributes:
        shape: level-0 ``(height, width)``.
        centre: level-0 ``(x, y)`` of the section's centre.
        tissue: normalised radius of the outer tissue edge at each of ``ANGLES``.
        medulla: normalised radius of the cortex / medulla boundary at each of ``ANGLES``.
        cortex_min: thinnest cortex, level-0 pixels.
    """

    shape: tuple[int, int]
    centre: tuple[float, float]
    tissue: np.ndarray
    medulla: np.ndarray
    cortex_min: float

    @classmethod
    def draw(cls, rng: np.random.Generator, shape: tuple[int, int]) -> _Layout:
        """A wobbly section covering 40-70 % of the slide with a cortex band a few hundred pixels wide."""
        height, width = shape
        wobble = 1 + _series(_terms(rng, np.arange(2, 25), 0.12, decay=1.3), ANGLES)
        # area in normalised units is 0.5 * integral of r^2; the slide is 4 units
        target = rng.uniform(0.45, 0.62) * 4
        scale = min(math.sqrt(target / (np.pi * np.mean(wobble**2))), 0.96 / wobble.max())
        tissue = scale * wobble
        room = 0.98 - tissue.max()
        centre = (width / 2 * (1 + room * rng.uniform(-1, 1)), height / 2 * (1 + room * rng.uniform(-1, 1)))
        unit = _px_per_unit(ANGLES, shape)
        mean_radius = float(np.mean(tissue * unit))
        thickness = np.clip(rng.uniform(0.34, 0.5) * mean_radius, 260, 0.6 * mean_radius)
        cortex = thickness * (1 + _series(_terms(rng, np.arange(1, 7), 0.06), ANGLES))
        return cls(shape, centre, tissue, tissue - cortex / unit, float(cortex.min()))

    def polar(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(theta, rho, px_per_unit)`` of level-0 points around the centre (normalised radius)."""
        nx = (x - self.centre[0]) / (self.shape[1] / 2)
        ny = (y - self.centre[1]) / (self.shape[0] / 2)
        theta = np.mod(np.arctan2(ny, nx), 2 * np.pi)
        return theta, np.hypot(nx, ny), _px_per_unit(theta, self.shape)

    def depths(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 pixels inside the tissue edge, and outside the medulla (negative inside it)."""
        theta, rho, unit = self.polar(x, y)
        edge = (np.interp(theta, ANGLES, self.tissue, period=2 * np.pi) - rho) * unit
        cortex = (rho - np.interp(theta, ANGLES, self.medulla, period=2 * np.pi)) * unit
        return edge, cortex

    def ring(self, radius: np.ndarray, step: int = 4) -> np.ndarray:
        """Integer level-0 ``[x, y]`` vertices of an outline, as HuBMAP stores them."""
        theta = ANGLES[::step]
        x = self.centre[0] + radius[::step] * np.cos(theta) * self.shape[1] / 2
        y = self.centre[1] + radius[::step] * np.sin(theta) * self.shape[0] / 2
        return np.round(np.stack([x, y], axis=1))

    def regions(self) -> list[Annotation]:
        """Cortex (tissue edge, with the medulla as a hole) and Medulla polygons."""
        inner = self.ring(self.medulla)
        return [Annotation("Cortex", (self.ring(self.tissue), inner)), Annotation("Medulla", (inner,))]

    def cortex_fraction(self) -> float:
        """Cortex share of the tissue area."""
        return 1 - float(np.mean(self.medulla**2) / np.mean(self.tissue**2))

    def cortex_area(self) -> float:
        """Cortex area in level-0 pixels."""
        quarter = self.shape[0] * self.shape[1] / 4  # level-0 pixels per normalised unit of area
        return float(np.pi * np.mean(self.tissue**2 - self.medulla**2)) * quarter


def _px_per_unit(theta: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Level-0 pixels per normalised unit of radius along direction ``theta``."""
    return np.hypot(np.cos(theta) * shape[1] / 2, np.sin(theta) * shape[0] / 2)


@dataclass(frozen=True)
class _Round:
    """A roundish object (glomerulus or look-alike): centre, mean radius and outline wobble."""

    x: float
    y: float
    radius: float
    wobble: Terms

    def radius_at(self, theta: np.ndarray) -> np.ndarray:
        return self.radius * (1 + _series(self.wobble, theta))

    def extent(self) -> float:
        """Largest distance of the outline from the centre."""
        return self.radius * (1 + float(np.abs(self.wobble[:, 1]).sum()))

    def polygon(self, vertices: int = 64) -> np.ndarray:
        """Integer level-0 ``[x, y]`` vertices of the outline."""
        theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
        r = self.radius_at(theta)
        return np.round(np.stack([self.x + r * np.cos(theta), self.y + r * np.sin(theta)], axis=1))

    def window(self) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Image slices of a square patch around the object and its pixels' offsets from the centre."""
        side = 2 * math.ceil(self.extent()) + 6
        x0, y0 = round(self.x) - side // 2, round(self.y) - side // 2
        offsets = np.arange(side, dtype=np.float64)
        return (
            slice(y0, y0 + side),
            slice(x0, x0 + side),
            (y0 + offsets - self.y)[:, None],
            (x0 + offsets - self.x)[None, :],
        )


def _place_objects(rng: np.random.Generator, layout: _Layout) -> tuple[list[_Round], list[_Round]]:
    """Glomeruli in the cortex (count by cortex area), then a third as many look-alikes anywhere in tissue."""
    count = max(1, round(layout.cortex_area() / GLOMERULUS_AREA))
    largest = min(270.0, 0.7 * layout.cortex_min)
    glomeruli = _place_rounds(rng, layout, count, (120.0, max(largest, 121.0)), [], cortex=True)
    if not glomeruli:
        raise RuntimeError(f"no room for a glomerulus on a {layout.shape} demo slide")
    lookalikes = _place_rounds(rng, layout, max(1, count // 3), (90.0, 200.0), glomeruli, cortex=False)
    return glomeruli, lookalikes


def _place_rounds(
    rng: np.random.Generator,
    layout: _Layout,
    count: int,
    diameters: tuple[float, float],
    taken: list[_Round],
    cortex: bool,
) -> list[_Round]:
    """Rejection-sample non-touching objects whose outline stays 25 px inside the region."""
    height, width = layout.shape
    placed: list[_Round] = []
    for _ in range(60 * count + 200):
        if len(placed) == count:
            break
        candidate = _Round(
            rng.uniform(0, width),
            rng.uniform(0, height),
            rng.uniform(*diameters) / 2,
            _terms(rng, np.arange(2, 5), 0.025),
        )
        edge, depth = layout.depths(*candidate.polygon(32).T)
        inside = edge.min() > 25 and (not cortex or depth.min() > 25)
        apart = all(
            math.hypot(candidate.x - o.x, candidate.y - o.y) > candidate.extent() + o.extent() + 30
            for o in taken + placed
        )
        if inside and apart:
            placed.append(candidate)
    return placed


# --------------------------------------------------------------------------- full-resolution density


def _render_density(
    rng: np.random.Generator, layout: _Layout, glomeruli: list[_Round], lookalikes: list[_Round]
) -> np.ndarray:
    """PAS and haematoxylin density of every structure, ``(H, W, 2)`` ``uint8`` (``Q`` levels per unit)."""
    density = np.zeros((*layout.shape, 2), dtype=np.uint8)
    _stamp_tubules(rng, density, layout)
    for thing in lookalikes:
        _paste(density, thing, *(_vessel if rng.random() < 0.5 else _tubule_cluster)(rng, thing))
    for glomerulus in glomeruli:
        _paste(density, glomerulus, *_glomerulus(rng, glomerulus))
    return density


def _quantize(density: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(density * Q), 0, 255).astype(np.uint8)


def _paste(target: np.ndarray, thing: _Round, density: np.ndarray, alpha: np.ndarray) -> None:
    """Blend an object's density over what is there (objects replace the tubules they sit on)."""
    rows, cols, _, _ = thing.window()
    view = target[rows, cols]
    blended = view * (1 - alpha[..., None]) + _quantize(density) * alpha[..., None]
    view[:] = np.rint(blended).astype(np.uint8)


def _soft(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-ness from a signed distance in pixels (positive inside)."""
    return np.clip(distance + 0.5, 0.0, 1.0)


def _blur(density: np.ndarray) -> np.ndarray:
    """The slight optical blur of a scanner, applied per structure (cheaper than on the whole slide)."""
    return ndimage.gaussian_filter(density, sigma=(0.6, 0.6, 0))


def _dots(rng: np.random.Generator, where: np.ndarray, count: int, sigma: float, peak: float) -> np.ndarray:
    """Nuclei: ``count`` soft dots at random pixels of the boolean ``where`` (density about ``peak``)."""
    candidates = np.flatnonzero(where)
    if count < 1 or candidates.size == 0:
        return np.zeros(where.shape)
    points = np.bincount(rng.choice(candidates, count), minlength=where.size).reshape(where.shape)
    # a single unit point filtered with a Gaussian peaks at 1 / (2 pi sigma^2)
    return np.minimum(ndimage.gaussian_filter(points.astype(np.float64), sigma) * 2 * np.pi * sigma**2 * peak, 1.4)


def _tubule(
    rng: np.random.Generator,
    a: float,
    b: float,
    angle: float,
    lumen: float,
    epithelium: float,
    nuclei: int,
    brush: float,
) -> np.ndarray:
    """One tubule cut across: PAS-positive basement membrane, granular epithelium, pale lumen, basal nuclei.

    Args:
        a, b: semi-axes in pixels (``a`` along ``angle``).
        angle: direction of the long axis, radians (image x right, y down).
        lumen: lumen size as a fraction of the outline.
        epithelium: PAS density of the cell layer.
        nuclei: number of nuclei.
        brush: PAS density of the brush border lining the lumen (proximal tubules; 0 for none).

    Returns:
        ``(S, S, 2)`` ``uint8`` density stamp, zero outside the tubule.
    """
    side = 2 * math.ceil(a) + 6
    y, x = np.mgrid[:side, :side] - (side - 1) / 2
    u = (x * np.cos(angle) + y * np.sin(angle)) / a
    v = (-x * np.sin(angle) + y * np.cos(angle)) / b
    rho = np.hypot(u, v) + 1e-6
    r = np.hypot(x, y)
    ragged = lumen * (1 + _series(_terms(rng, np.arange(2, 5), 0.12), np.arctan2(v, u)))
    to_lumen = r * (ragged / rho - 1)  # signed distances along the ray, positive inside
    inside, in_lumen = _soft(r * (1 / rho - 1)), _soft(to_lumen)
    membrane = _soft(1.6 - r * (1 / rho - 1)) * inside
    grain = 1 + 0.25 * _unit_noise(rng, (side, side), 1.0)
    pas = inside * (epithelium * grain * (1 - in_lumen) + 0.04 * in_lumen)
    pas = np.maximum(pas, np.maximum(0.85 * membrane, brush * inside * np.clip(1.5 - np.abs(to_lumen + 1.5), 0, 1)))
    cells = (rho > ragged + 0.15) & (rho < 0.85)
    hem = _dots(rng, cells & (rho > 0.6), nuclei, 1.3, rng.uniform(0.8, 1.1))
    return _quantize(_blur(np.stack([pas, hem], axis=-1)))


def _tubule_bank(rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Pre-rendered tubules: round cortical ones (with their 8 mirror/rotation views) and elongated
    medullary ones grouped by orientation (24 bins over 180 degrees)."""
    cortex = []
    for _ in range(48):
        distal = rng.random() < 0.3  # distal tubules: smaller, paler, wider lumen, no brush border
        a = rng.uniform(18, 24) if distal else rng.uniform(24, 32)
        stamp = _tubule(
            rng,
            a,
            a / rng.uniform(1.0, 1.35),
            rng.uniform(0, np.pi),
            rng.uniform(0.45, 0.6) if distal else rng.uniform(0.25, 0.45),
            rng.uniform(0.25, 0.35) if distal else rng.uniform(0.42, 0.6),
            int(a * rng.uniform(0.5, 0.8)),
            0.0 if distal else rng.uniform(0.6, 0.8),
        )
        for view in (stamp, stamp.transpose(1, 0, 2)):
            cortex += [view, view[::-1], view[:, ::-1], view[::-1, ::-1]]
    medulla = []
    for angle in np.arange(24) * np.pi / 24:
        variants = []
        for _ in range(3):
            a = rng.uniform(30, 75)
            stamp = _tubule(
                rng, a, rng.uniform(10, 18), angle, rng.uniform(0.45, 0.7), rng.uniform(0.22, 0.34), int(a / 4), 0.0
            )
            variants += [stamp, stamp[::-1, ::-1]]  # a half turn keeps the orientation
        medulla.append(variants)
    return cortex, medulla


def _stamp_tubules(rng: np.random.Generator, density: np.ndarray, layout: _Layout) -> None:
    """Fill the tissue with tubules on a jittered hexagonal grid: round and packed in the cortex,
    long and radial (striated) in the medulla; ``max`` keeps walls crisp where neighbours touch."""
    cortex_bank, medulla_bank = _tubule_bank(rng)
    x, y = _hex_grid(rng, layout.shape, spacing=42.0)
    edge, depth = layout.depths(x, y)
    bins = np.rint(_medulla_direction(rng, layout, x, y) / np.pi * 24).astype(int) % 24
    picks = rng.integers(0, 1 << 30, x.size)
    chosen = [
        cortex_bank[p % len(cortex_bank)] if d >= 0 else medulla_bank[b][p % len(medulla_bank[b])]
        for d, b, p in zip(depth.tolist(), bins.tolist(), picks.tolist(), strict=True)
    ]
    # a cortical tubule must end inside the tissue, before the capsule (stamps have a 3 px empty border)
    reach = np.array([stamp.shape[0] / 2 for stamp in chosen]) - 3
    in_cortex = (depth >= 0) & (edge > reach + 8)
    in_medulla = (depth < 0) & (rng.random(x.size) < 0.7)  # long tubules overlap: use fewer
    keep = (in_cortex | in_medulla).tolist()
    # plain Python numbers in the loop: it runs ~10^4 times and numpy scalars are slow
    for stamp, cx, cy, wanted in zip(chosen, x.astype(int).tolist(), y.astype(int).tolist(), keep, strict=True):
        if wanted:
            h, w = stamp.shape[:2]
            view = density[cy - h // 2 : cy - h // 2 + h, cx - w // 2 : cx - w // 2 + w]
            np.maximum(view, stamp, out=view)


def _medulla_direction(rng: np.random.Generator, layout: _Layout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Direction (radians, modulo pi) of medullary tubules: radial like medullary rays, bending
    smoothly, and random near the centre where the rays would otherwise meet in a star."""
    scale = 400.0  # level-0 pixels over which the tubules bend
    bend = _unit_noise(rng, (int(layout.shape[0] / scale) + 2, int(layout.shape[1] / scale) + 2), 1.0)
    radial = np.arctan2(y - layout.centre[1], x - layout.centre[0])
    radial += 0.35 * ndimage.map_coordinates(bend, [y / scale, x / scale], order=1) + rng.normal(0, 0.1, x.size)
    _, rho, _ = layout.polar(x, y)
    core = rho / (0.5 * layout.medulla.min())  # below 1: the middle of the medulla
    return np.where(rng.random(x.size) > core, rng.uniform(0, np.pi, x.size), np.mod(radial, np.pi))


def _hex_grid(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Jittered hexagonal grid points covering the slide (level-0 ``x``, ``y``)."""
    rows = np.arange(spacing, shape[0] - spacing, spacing * math.sqrt(3) / 2)
    cols = np.arange(spacing, shape[1] - spacing, spacing)
    y, x = np.meshgrid(rows, cols, indexing="ij")
    x = x + (np.arange(len(rows)) % 2)[:, None] * spacing / 2
    jitter = rng.uniform(-0.22, 0.22, (2, *x.shape)) * spacing
    return (x + jitter[0]).ravel(), (y + jitter[1]).ravel()


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / (noise.std() + 1e-12)


def _capillary_tuft(
    rng: np.random.Generator, inside: np.ndarray, base: float, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lobulated dense texture: pale capillary (or tubular) lumens with PAS-bright rims, crowded nuclei.

    Returns:
        ``(pas, hem)`` densities over the patch (zero where ``inside`` is 0).
    """
    field = _unit_noise(rng, inside.shape, sigma)
    lumens = np.clip((field - 0.6) * 3, 0, 1)
    rims = np.clip(1 - np.abs(field - 0.45) * 4, 0, 1)
    clefts = np.clip(1 - np.abs(_unit_noise(rng, inside.shape, 3 * sigma)) * 5, 0, 1)  # between lobules
    pas = inside * (base * (1 - 0.8 * lumens) * (1 - 0.35 * clefts) + 0.25 * rims)
    hem = inside * _dots(rng, (inside > 0.5) & (lumens < 0.5), int(inside.sum() / 50), 1.7, 0.85)
    return pas, hem


def _glomerulus(rng: np.random.Generator, g: _Round) -> tuple[np.ndarray, np.ndarray]:
    """A glomerulus: lobulated tuft, pale Bowman's space, thin capsule; its outer edge is the outline.

    Returns:
        ``(density, alpha)``: ``(S, S, 2)`` float densities and ``(S, S)`` coverage over ``g.window()``.
    """
    _, _, dy, dx = g.window()
    from_edge = g.radius_at(np.arctan2(dy, dx)) - np.hypot(dx, dy)
    alpha = _soft(from_edge)
    capsule = _soft(rng.uniform(2.0, 3.0) - from_edge) * alpha
    # the tuft hangs off-centre from the vascular pole and must leave Bowman's space open all round
    shift, pole = rng.uniform(0, 0.07) * g.radius, rng.uniform(0, 2 * np.pi)
    tx, ty = dx - shift * math.cos(pole), dy - shift * math.sin(pole)
    room = g.radius * (1 - np.abs(g.wobble[:, 1]).sum()) - shift - rng.uniform(4, 7)
    tuft_radius = room - rng.uniform(0, 0.03) * g.radius
    # lobules: notches cut inwards only, so the outermost lobule still clears the capsule
    lobes = _terms(rng, rng.choice(np.arange(4, 9), 2, replace=False), 0.09)
    notches = np.abs(lobes[:, 1]).sum() - _series(lobes, np.arctan2(ty, tx))
    tuft = _soft(tuft_radius * (1 - 0.5 * notches) - np.hypot(tx, ty))
    tuft_pas, tuft_hem = _capillary_tuft(rng, tuft, rng.uniform(0.75, 0.95), 1.8)
    space = alpha * (1 - tuft) * (1 - capsule)
    pas = tuft_pas + space * 0.03 + capsule * 0.7
    hem = tuft_hem + _dots(rng, capsule > 0.5, int(g.radius / 8), 1.1, 0.8)
    return _blur(np.stack([pas, hem], axis=-1)), alpha


def _tubule_cluster(rng: np.random.Generator, thing: _Round) -> tuple[np.ndarray, np.ndarray]:
    """Look-alike: a dense round knot of small tubules; like a tuft, but with no Bowman's space or capsule."""
    _, _, dy, dx = thing.window()
    alpha = _soft(thing.radius_at(np.arctan2(dy, dx)) - np.hypot(dx, dy))
    pas, hem = _capillary_tuft(rng, alpha, rng.uniform(0.5, 0.65), 2.6)
    return _blur(np.stack([pas, hem], axis=-1)), alpha


def _vessel(rng: np.random.Generator, thing: _Round) -> tuple[np.ndarray, np.ndarray]:
    """Look-alike: an artery cut across: layered muscular wall, bright elastic lamina, open pale lumen."""
    _, _, dy, dx = thing.window()
    outline = thing.radius_at(np.arctan2(dy, dx))
    r = np.hypot(dx, dy)
    alpha = _soft(outline - r)
    lumen_edge = outline * rng.uniform(0.35, 0.55) - r  # positive inside the lumen
    wall = alpha * (1 - _soft(lumen_edge))
    layers = 0.07 * np.cos(2 * np.pi * r / 5 + rng.uniform(0, 2 * np.pi))
    lamina = np.clip(1.5 - np.abs(lumen_edge + 1.5), 0, 1)
    pas = np.maximum(wall * (0.42 + layers) * (1 + 0.2 * _unit_noise(rng, r.shape, 1.0)), 0.85 * lamina)
    pas += alpha * _soft(lumen_edge) * 0.02
    hem = _dots(rng, wall > 0.5, int(wall.sum() / 70), 1.2, 0.85)
    return _blur(np.stack([pas, hem], axis=-1)), alpha


# -------------------------------------------------------------------------------- smooth fields, RGB


@dataclass(frozen=True)
class _Fields:
    """Smooth per-slide fields, kept at low resolution and enlarged one band at a time.

    Attributes:
        stroma: interstitial PAS density in ``Q`` levels (zero off the tissue), at 1/``LOW``.
        gain: stain intensity factor, at 1/``LIGHT``.
        offset: background / illumination offset in RGB levels, at 1/``LIGHT``.
    """

    stroma: np.ndarray
    gain: np.ndarray
    offset: np.ndarray


def _smooth_fields(rng: np.random.Generator, layout: _Layout) -> _Fields:
    """Interstitium (denser in the cortex, with a fibrous capsule along the edge), stain gain and
    illumination for one slide."""
    height, width = -(-layout.shape[0] // LOW), -(-layout.shape[1] // LOW)
    ys = (np.arange(height) + 0.5) * LOW - 0.5  # level-0 coordinates of the field's pixel centres
    xs = (np.arange(width) + 0.5) * LOW - 0.5
    edge, depth = layout.depths(xs[None, :], ys[:, None])
    tissue = _soft(edge / LOW)
    texture = 1 + 0.25 * _unit_noise(rng, (height, width), 1.5)
    capsule = np.clip(1 - edge / 14, 0, 1) * tissue
    stroma = tissue * (0.09 + 0.06 * _soft(depth / LOW)) * texture + 0.3 * capsule
    light = (-(-layout.shape[0] // LIGHT), -(-layout.shape[1] // LIGHT))
    return _Fields(
        (stroma * Q).astype(np.float32),
        (1 + 0.12 * _coarse_noise(rng, light, 10)).astype(np.float32),
        np.rint(3.0 * _coarse_noise(rng, light, 15)).astype(np.int16),
    )


def _coarse_noise(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Unit-variance noise that varies over about ``scale`` pixels: drawn coarse, then interpolated
    (a Gaussian filter that wide would cost seconds)."""
    coarse = _unit_noise(rng, (shape[0] // scale + 3, shape[1] // scale + 3), 1.0)
    rows = _linear(coarse.shape[0], 0, shape[0], scale)
    cols = _linear(coarse.shape[1], 0, shape[1], scale)
    return _resample(_resample(coarse, rows, axis=0), cols, axis=1)


def _linear(size: int, start: int, stop: int, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights that linearly interpolate outputs ``[start, stop)`` from ``size`` samples
    spaced ``factor`` outputs apart (pixel centres aligned)."""
    position = np.clip((np.arange(start, stop) + 0.5) / factor - 0.5, 0, size - 1)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    return low, high, (position - low).astype(np.float32)


def _resample(values: np.ndarray, plan: tuple[np.ndarray, np.ndarray, np.ndarray], axis: int) -> np.ndarray:
    low, high, weight = plan
    shape = [1] * values.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    return np.take(values, low, axis=axis) * (1 - weight) + np.take(values, high, axis=axis) * weight


def _stain_lut(rng: np.random.Generator) -> np.ndarray:
    """Beer-Lambert colours of every (PAS, haematoxylin) density pair, with this slide's stain shades.

    Returns:
        ``(65536, 3)`` ``int16`` RGB, indexed by ``pas * 256 + hem`` (quantised densities).
    """
    paper = 242 + rng.uniform(-3, 3, 3)
    # optical density per unit of stain in R, G, B: PAS is magenta, haematoxylin blue-purple;
    # per-channel jitter shifts hue and saturation, the common factor the staining strength
    pas = np.array([0.30, 1.00, 0.42]) * rng.uniform(0.85, 1.15, 3) * rng.uniform(0.85, 1.15)
    hem = np.array([1.05, 1.15, 0.55]) * rng.uniform(0.85, 1.15, 3) * rng.uniform(0.85, 1.15)
    levels = np.arange(256) / Q
    optical = levels[:, None, None] * pas + levels[None, :, None] * hem
    return np.rint(paper * np.exp(-optical)).astype(np.int16).reshape(-1, 3)


def _band_reader(
    density: np.ndarray, fields: _Fields, lut: np.ndarray, rng: np.random.Generator
) -> Callable[[int, int], np.ndarray]:
    """``read_band(y0, y1)`` for :func:`write_pyramid`: RGB rows made from the density layers.

    The interstitium is interpolated linearly; gain and offset change so slowly that the nearest
    field pixel does. Pixel noise is drawn once per slide and reused, shifted by a random amount, in
    every band (drawing it afresh cost more than the rest of the band); the writer asks for each
    band once, top to bottom, so the pixels are reproducible.
    """
    width = density.shape[1]
    cols = _linear(fields.stroma.shape[1], 0, width, LOW)
    light_cols = np.arange(width) // LIGHT
    grain = rng.uniform(-0.15, 0.15, (BAND_ROWS, width)).astype(np.float32)  # stain granularity, rides on the gain
    sensor = rng.integers(-3, 4, (BAND_ROWS, width, 3), dtype=np.int16)

    def read_band(y0: int, y1: int) -> np.ndarray:
        rows = _linear(fields.stroma.shape[0], y0, y1, LOW)
        top, bottom = rows[0][0], rows[1][-1] + 1
        stroma = _resample(_resample(fields.stroma[top:bottom], cols, 1), (rows[0] - top, rows[1] - top, rows[2]), 0)
        light_rows = np.arange(y0, y1)[:, None] // LIGHT
        gain, offset = fields.gain[light_rows, light_cols], fields.offset[light_rows, light_cols]
        shift = int(rng.integers(0, BAND_ROWS))
        layers = density[y0:y1]
        pas = (layers[..., 0] + stroma) * (gain + np.roll(grain, shift, axis=0)[: y1 - y0])
        hem = (layers[..., 1] + 0.2 * stroma) * gain
        index = np.clip(pas, 0, 255).astype(np.uint16) * 256 + np.clip(hem, 0, 255).astype(np.uint16)
        rgb = np.take(lut, index, axis=0)
        rgb += offset[..., None]
        rgb += np.roll(sensor, shift, axis=1)[: y1 - y0]
        return np.clip(rgb, 0, 255).astype(np.uint8)

    return read_band
