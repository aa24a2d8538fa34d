"""2D samples for the generator: sagittal and coronal slices through a vertebra's neighbourhood.

Everything is in millimetres, in the target vertebra's rigid local frame (``geometry.straighten.LocalFrame``:
s caudal, u posterior, v left), sampled at a fixed pixel spacing. A slice has ``size[0]`` rows along s
(cranial at the top, centred on the target's centroid, or shifted by ``s_centre``) and ``size[1]``
columns along u (sagittal; anterior = low column) or along v (coronal; right = low column),
centred on the body's footprint. The same code builds the training samples and the inference
inputs (method specification section 1.7-1.9, in mm instead of voxels):

* CT: HU windowed to [-300, 800] and mapped linearly to [-1, 1];
* labels: the vertebral bodies (``geometry.body.VertebralBody``, posterior elements removed) of the target
  (value 1) and its neighbours (2, 3, ...), resampled from their own frames;
* slice ratio r = |position - centre| / extent * 2 over the central 4/5 of the body's extent
  (LR for sagittal slices, AP for coronal ones);
* the band: the target's rows [x1, x2] of each slice are removed and the context above and below
  is pushed apart so that every target becomes a gap of ``band`` rows centred on its mid-row;
  ``band`` comes from the target's *expected* healthy height (its usable neighbours' heights),
  never from its own height, and is the same function at training and at inference;
* SHRM: the predicted height restores the band (never shorter than the current vertebra) and the
  context is pushed apart by the difference (:func:`shrm_compose`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ...geometry.body import VertebralBody
from ..base import Neighbour
from ..neighbours import mean_height, select_neighbours
from ...geometry.straighten import LocalFrame, world_to_index_affine
from .networks import hu_to_model
from ...measure.heights import own_heights


HU_WINDOW = (-300.0, 800.0)
AIR_HU = -1024.0
BAND_FACTOR = 1.5  # band height = 1.5 x the expected healthy height (the reference: 40 px ~ 1.3-1.8 x)
BAND_MARGIN_MM = 2.0  # the band is at least this much taller than the vertebra in the slice
SLICE_FRACTION = 0.8  # slices over the central 4/5 of the body's extent (reference)
MIN_TARGET_MM2 = 50.0  # a slice needs this much target area (reference: 50 px at 1 mm)
MIN_NEIGHBOUR_MM2 = 200.0  # a neighbour is re-synthesized in a slice above this area (reference: 200 px)
NEIGHBOUR_LEVELS = 2.0  # nearest neighbour per side within two levels (T12 -> L1 without T13 is 2)
VIEWS = ("sagittal", "coronal")


def window(hu: np.ndarray) -> np.ndarray:
    """HU -> the network's [-1, 1] (window -300..800 HU, clipped; ``networks.hu_to_model``)."""
    return hu_to_model(np.asarray(hu, dtype=np.float32), HU_WINDOW).astype(np.float32)


# --------------------------------------------------------------------------- heights and band


def expected_height_mm(target: VertebralBody, neighbours: list[Neighbour]) -> float:
    """Expected healthy mean height of ``target`` from its usable neighbours (mm).

    Linear interpolation between the nearest usable neighbour above and below at the target's
    level; one side only: that neighbour's height; none: the target's own tallest third.
    """
    usable, _ = select_neighbours(neighbours)
    above = sorted((n for n in usable if n.offset < 0), key=lambda n: -n.offset)
    below = sorted((n for n in usable if n.offset > 0), key=lambda n: n.offset)
    if above and below:
        a, b = above[0], below[0]
        wa = b.offset / (b.offset - a.offset)
        return float(wa * mean_height(a.body) + (1 - wa) * mean_height(b.body))
    if above or below:
        return float(mean_height((above or below)[0].body))
    thirds = own_heights(target).original_mm
    return float(max(thirds["anterior"], thirds["middle"], thirds["posterior"]))


def band_rows(expected_mm: float, spacing: float) -> int:
    """Band height in pixels for a vertebra whose expected healthy height is ``expected_mm``."""
    return 2 * math.ceil(BAND_FACTOR * expected_mm / spacing / 2)


# --------------------------------------------------------------------------- slab sampling


@dataclass
class Member:
    """A vertebra drawn in the slices: label value ``index`` (1 = the target)."""

    index: int
    level: str
    offset: float  # level distance from the target (negative = cranial)
    body: VertebralBody
    healthy: bool = True  # counts as a healthy neighbour for the segmentation target
    band_px: int = 0  # band height used when this vertebra is synthesized


@dataclass
class Slab:
    """Slices of one view through a vertebra's neighbourhood (rows s, columns u or v)."""

    view: str
    hu: np.ndarray  # float32 (n, H, W) Hounsfield units
    labels: np.ndarray  # uint8 (n, H, W): 0 background, Member.index elsewhere
    positions: np.ndarray  # (n,) slice position (v for sagittal, u for coronal), mm in the target frame
    ratios: np.ndarray  # (n,) slice ratio r
    rows: np.ndarray  # (H,) s of each row, mm
    cols: np.ndarray  # (W,) u (sagittal) or v (coronal) of each column, mm
    members: list[Member] = field(default_factory=list)

    @property
    def spacing(self) -> float:
        return float(self.rows[1] - self.rows[0])


def _grid_coordinates(axes: tuple[np.ndarray, np.ndarray, np.ndarray], order: tuple[int, int, int],
                      linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``linear @ p + offset`` for every point of a separable local grid, shape (3, n, H, W).

    ``axes`` are the coordinates along the grid's (slice, row, column) axes and ``order`` says
    which local axis (0 s, 1 u, 2 v) each of them is.
    """
    out = offset.astype(np.float32)[:, None, None, None]
    for k, (coords, local_axis) in enumerate(zip(axes, order)):
        shape = [3, 1, 1, 1]
        shape[1 + k] = len(coords)
        out = out + (linear[:, local_axis, None] * np.asarray(coords, np.float32)[None, :]).reshape(shape)
    return out


class CTSampler:
    """Linear interpolation of a CT (HU) on local grids; outside the image reads as air."""

    def __init__(self, ct: sitk.Image):
        self.array = sitk.GetArrayViewFromImage(ct)  # (k, j, i), no copy
        self.a, self.b = world_to_index_affine(ct)

    def grid(self, frame: LocalFrame, axes, order) -> np.ndarray:
        """HU on the separable local grid of ``frame`` (see ``_grid_coordinates``), shape (n, H, W)."""
        linear = (self.a @ frame.axes.T)[::-1]  # array index order (k, j, i)
        offset = (self.a @ frame.origin + self.b)[::-1]
        idx = _grid_coordinates(axes, order, linear, offset)
        return ndimage.map_coordinates(self.array, idx, output=np.float32, order=1, mode="constant", cval=AIR_HU)


def _sample_body(body: VertebralBody, frame: LocalFrame, axes, order) -> np.ndarray:
    """Body occupancy of ``body`` (in its own frame) on a separable local grid of ``frame``
    (n, H, W); computed only on the part of the grid the body's block can reach."""
    linear = body.frame.axes @ frame.axes.T / body.block.spacing  # target-local -> body block index
    offset = ((frame.origin - body.frame.origin) @ body.frame.axes.T - np.asarray(body.block.start)) / body.block.spacing
    # the body's block corners in target-local coordinates bound where it can appear
    shape = np.asarray(body.block.shape) - 1
    corners = np.array([[i, j, k] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])], float)
    local = (corners * body.block.spacing + np.asarray(body.block.start)) @ body.frame.axes
    local = local + body.frame.origin - frame.origin
    local = local @ frame.axes.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    keep = [np.flatnonzero((np.asarray(c) >= lo[a] - 1) & (np.asarray(c) <= hi[a] + 1)) for c, a in zip(axes, order)]
    out = np.zeros(tuple(len(c) for c in axes), np.float32)
    if any(len(k) == 0 for k in keep):
        return out
    sub = tuple(np.asarray(c)[k[0]:k[-1] + 1] for c, k in zip(axes, keep))
    idx = _grid_coordinates(sub, order, linear, offset)
    out[tuple(slice(k[0], k[-1] + 1) for k in keep)] = ndimage.map_coordinates(
        body.occupancy, idx, order=1, mode="constant", cval=0.0)
    return out


def slice_positions(body: VertebralBody, view: str, step_mm: float) -> np.ndarray:
    """Slice positions (mm) over the central 4/5 of the body's LR (sagittal) or AP (coronal)
    extent, every ``step_mm``, symmetric about the centre."""
    centre, half = _extent(body, view)
    reach = SLICE_FRACTION * half
    k = np.arange(-math.floor(reach / step_mm + 1e-9), math.floor(reach / step_mm + 1e-9) + 1)
    return centre + k * step_mm


def slice_ratios(body: VertebralBody, view: str, positions: np.ndarray) -> np.ndarray:
    """Slice ratio r = |position - centre| / extent * 2 (0 at the centre, 0.8 at the edge of the
    central 4/5)."""
    centre, half = _extent(body, view)
    return np.abs(np.asarray(positions, float) - centre) / (2 * half) * 2


def _extent(body: VertebralBody, view: str) -> tuple[float, float]:
    fp = body.footprint
    if view == "sagittal":
        return fp.v_center, fp.v_half_width
    return 0.5 * (fp.u_anterior + fp.u_posterior), 0.5 * fp.depth


def sample_slab(
    ct: CTSampler | None,
    target: VertebralBody,
    members: list[Member],
    view: str,
    positions: np.ndarray,
    size: tuple[int, int],
    spacing: float,
    s_centre: float = 0.0,
) -> Slab:
    """Slices of ``view`` at ``positions`` through the target's neighbourhood.

    ``members`` are drawn in order; the target (index 1) wins where bodies overlap. Without a CT
    the HU slices are air (labels only, for tests of the geometry).
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    fp = target.footprint
    positions = np.asarray(positions, float)
    rows = s_centre + (np.arange(size[0]) - (size[0] - 1) / 2) * spacing
    grid = (np.arange(size[1]) - (size[1] - 1) / 2) * spacing
    if view == "sagittal":
        cols = 0.5 * (fp.u_anterior + fp.u_posterior) + grid
        order = (2, 0, 1)  # slices along v, rows along s, columns along u
    else:
        cols = fp.v_center + grid
        order = (1, 0, 2)  # slices along u, rows along s, columns along v
    axes = (positions, rows, cols)
    shape = (len(positions), size[0], size[1])
    hu = ct.grid(target.frame, axes, order) if ct is not None else np.full(shape, AIR_HU, np.float32)
    labels = np.zeros(shape, np.uint8)
    for m in sorted(members, key=lambda m: m.index == 1):
        labels[_sample_body(m.body, target.frame, axes, order) >= 0.5] = m.index
    ratios = slice_ratios(target, view, positions)
    return Slab(view, hu, labels, positions, ratios, rows, cols, members)


def neighbourhood_members(
    target: VertebralBody, level: str, neighbours: list[Neighbour], spacing: float,
    healthy: dict[str, bool] | None = None, fixed_band_px: int | None = None,
) -> list[Member]:
    """The target (index 1), then its nearest neighbour above and below (within two levels, the
    ones synthesized first), then every other neighbour (drawn, never synthesized).

    ``healthy`` marks levels that count as healthy (default: all). Each synthesized member's band
    comes from its expected height given the other vertebrae (``band_rows``), or is
    ``fixed_band_px`` for weights trained with a fixed band (the published checkpoint: 40 mm).
    """
    healthy = healthy or {}

    def band(body: VertebralBody, around: list[Neighbour]) -> int:
        return fixed_band_px if fixed_band_px else band_rows(expected_height_mm(body, around), spacing)

    members = [Member(1, level, 0.0, target, healthy.get(level, True), band(target, neighbours))]
    nearest = []
    for side in (-1, 1):
        cands = [n for n in neighbours if np.sign(n.offset) == side and abs(n.offset) <= NEIGHBOUR_LEVELS
                 and n.body.footprint is not None]
        if cands:
            nearest.append(min(cands, key=lambda n: abs(n.offset)))
    for n in nearest:
        # the neighbour's own neighbours: the target and the others, offsets relative to it
        around = [Neighbour(level, -n.offset, target)] + [
            Neighbour(o.level, o.offset - n.offset, o.body) for o in neighbours if o is not n
        ]
        members.append(Member(len(members) + 1, n.level, n.offset, n.body, healthy.get(n.level, True), band(n.body, around)))
    for n in neighbours:
        if n not in nearest and n.body.footprint is not None:
            members.append(Member(len(members) + 1, n.level, n.offset, n.body, healthy.get(n.level, True), 0))
    return members


# --------------------------------------------------------------------------- band and SHRM


@dataclass
class Hidden:
    """Slices with one vertebra hidden behind its band (all arrays over the n slices)."""

    hu: np.ndarray  # (n, H, W) context pushed apart, band rows = AIR_HU (masked input)
    labels: np.ndarray  # (n, H, W) labels shifted the same way, band rows = 0
    mask: np.ndarray  # (n, H, W) float32, 1 on the band rows
    x1: np.ndarray  # (n,) first row of the vertebra in the original slice
    x2: np.ndarray  # (n,) last row (inclusive)
    top: np.ndarray  # (n,) first band row
    band: np.ndarray  # (n,) band rows
    valid: np.ndarray  # (n,) bool: the vertebra is in the slice and its band fits
    source: np.ndarray  # (n, H) original row shown in each row (-1 in the band): shift other maps with it

    def shift(self, image: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Move another (n, H, W) map (e.g. a CAM) like the CT; ``fill`` in the band."""
        out = take_rows(image, np.maximum(self.source, 0))
        out[self.source < 0] = fill
        return out


def take_rows(image: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``out[k, r] = image[k, rows[k, r]]`` for (n, H, W) images and (n, H) row indices."""
    return np.take_along_axis(image, rows[:, :, None].repeat(image.shape[2], axis=2), axis=1)


def target_rows(labels: np.ndarray, index: int, spacing: float, min_area_mm2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x1, x2, present) per slice: first and last row of ``index``; present when its area is enough."""
    is_t = labels == index
    area = is_t.sum(axis=(1, 2)) * spacing**2
    rows = is_t.any(axis=2)
    x1 = np.argmax(rows, axis=1)
    x2 = rows.shape[1] - 1 - np.argmax(rows[:, ::-1], axis=1)
    return x1, x2, area >= min_area_mm2


def hide(hu: np.ndarray, labels: np.ndarray, index: int, band_px: int, spacing: float,
         min_area_mm2: float = MIN_TARGET_MM2) -> Hidden:
    """Remove vertebra ``index`` and push the context apart to a band of ``band_px`` rows
    (at least the vertebra's rows + 2 mm) centred on its mid-row (spec 1.9, in mm).

    Rows above the vertebra move up so that row x1 - 1 lands just above the band, rows below
    move down so that row x2 + 1 lands just below it; rows shifted in from outside the slice
    repeat its edge. A slice is invalid when the vertebra is absent (area below
    ``min_area_mm2``), touches the top or bottom row, or its band does not fit.
    """
    n, H, W = hu.shape
    x1, x2, present = target_rows(labels, index, spacing, min_area_mm2)
    h = x2 - x1 + 1
    band = np.maximum(band_px, h + math.ceil(BAND_MARGIN_MM / spacing))
    top = np.rint((x1 + x2 + 1) / 2 - band / 2).astype(int)
    valid = present & (band <= H) & (x1 > 0) & (x2 < H - 1)
    top = np.clip(top, 0, np.maximum(H - band, 0))
    r = np.arange(H)[None, :]
    above = r < top[:, None]
    below = r >= (top + band)[:, None]
    src = np.where(above, r + (x1 - top)[:, None], r - (top + band - x2 - 1)[:, None])
    src = np.clip(src, 0, H - 1)
    in_band = ~(above | below)
    out_hu = take_rows(hu, src)
    out_lab = take_rows(labels, src)
    out_hu[in_band] = AIR_HU
    out_lab[in_band] = 0
    mask = np.broadcast_to(in_band[:, :, None], (n, H, W)).astype(np.float32)
    return Hidden(out_hu, out_lab, mask, x1, x2, top, band, valid, np.where(in_band, -1, src))


def shrm_rows(x1: np.ndarray, x2: np.ndarray, pred_px: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SHRM geometry per slice: (source row of each output row, in-band flag (n, H), restored height).

    H_new = max(ceil(pred), h) rows with h = x2 - x1 + 1; d = H_new - h; the band is rows
    [x1 - floor(d/2), x1 - floor(d/2) + H_new); context above moves up by floor(d/2), context
    below moves down by ceil(d/2).
    """
    h = x2 - x1 + 1
    height = np.maximum(np.ceil(np.asarray(pred_px, float) - 1e-6).astype(int), h)
    d = height - h
    top = x1 - d // 2
    r = np.arange(H)[None, :]
    above = r < top[:, None]
    below = r >= (top + height)[:, None]
    src = np.clip(np.where(above, r + (d // 2)[:, None], r - (d - d // 2)[:, None]), 0, H - 1)
    return src, ~(above | below), height


@dataclass
class Composed:
    """Slices after SHRM: the synthesized vertebra in its restored band, the context pushed apart."""

    hu: np.ndarray  # (n, H, W)
    labels: np.ndarray  # (n, H, W): the synthesized vertebra carries its index
    seg: np.ndarray  # (n, H, W) float32 soft mask of the synthesized vertebra (0 outside its rows)
    height_px: np.ndarray  # (n,) restored height (rows)
    source: np.ndarray  # (n, H) original row shown in each row (band rows: the row itself)
    moved: np.ndarray  # (n, H) bool: the row is synthesized or shows another row's content


def shrm_compose(
    hu: np.ndarray,
    labels: np.ndarray,
    gen_hu: np.ndarray,
    gen_seg: np.ndarray,
    x1: np.ndarray,
    x2: np.ndarray,
    pred_px: np.ndarray,
    index: int,
) -> Composed:
    """Self-adaptive Height Restoration (spec 3): rebuild each slice around the synthesized vertebra.

    The restored height is H = max(ceil(pred), h), h = x2 - x1 + 1 the current height, d = H - h:
    rows [x1 - floor(d/2), x1 - floor(d/2) + H) come from the generator output (``gen_hu``,
    ``gen_seg`` on the same grid), the original context above moves up by floor(d/2) and the
    context below moves down by ceil(d/2). The vertebra is never shorter than it was, and its
    neighbours are pushed apart. ``hu``/``labels`` are the original (unhidden) slices.
    """
    src, band_rows_, height = shrm_rows(x1, x2, pred_px, hu.shape[1])
    out_hu = take_rows(hu, src)
    out_lab = take_rows(labels, src)
    out_lab[out_lab == index] = 0
    band = np.broadcast_to(band_rows_[:, :, None], hu.shape)
    out_hu = np.where(band, gen_hu, out_hu).astype(np.float32)
    seg = np.where(band, gen_seg, 0.0).astype(np.float32)
    out_lab = np.where(band & (seg >= 0.5), index, np.where(band, 0, out_lab)).astype(labels.dtype)
    moved = band_rows_ | (src != np.arange(hu.shape[1])[None, :])
    return Composed(out_hu, out_lab, seg, height, np.where(band_rows_, np.arange(hu.shape[1])[None, :], src), moved)
