"""The vertebral body of one vertebra, sampled in its local frame.

Each vertebra is resampled at 1 mm in a rigid frame centred on its centroid (``straighten.LocalFrame``:
s caudal along the spine curve, u posterior, v left). The body is taken from subregion labels when
given (Kirschke ``seg-subreg`` 49 + 50, TotalSegmentator ``vertebrae_body`` 1); otherwise the
posterior elements are cut off geometrically behind the first gap (the spinal canal) found
posterior to the body on the mid-sagittal band. Both paths work in anatomical directions, so the
input's orientation does not matter.

The body is kept as a fractional occupancy (linear interpolation of the binary label), so column
heights have sub-voxel precision on coarse (e.g. 3 mm) label maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import HealthiVertError
from .straighten import Block, LocalFrame, block_to_index_affine


MARGIN_MM = 4.0
CUT_FRACTION = 0.10  # body cross-section on an image border slice, relative to its largest one, that means "cut"
HEIGHT_MARGIN_MM = 14.0  # room along s for a pseudo-healthy body taller than the fractured one
CENTRAL_SLAB = 0.4  # fraction of the body's LR width used for AP measurements (centred)
# Most voxels of one vertebra's 1 mm block. The largest real vertebra with its margins spans about
# 120 x 160 x 160 mm (3 M voxels); 20 M (a 270 mm cube, 80 MB per float32 copy) leaves room for any
# real label while a wrong spacing or a label spread over the whole image stops here, not at 16 GB.
MAX_BLOCK_VOXELS = 20_000_000


@dataclass
class Footprint:
    """Where the body sits in the axial (u, v) plane of its frame, in mm."""

    u_anterior: float
    u_posterior: float
    v_center: float
    v_half_width: float

    @property
    def depth(self) -> float:
        """Antero-posterior depth of the body (mm)."""
        return self.u_posterior - self.u_anterior

    def normalise(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a, b): a = 0 anterior .. 1 posterior edge, b = -1 right .. +1 left edge."""
        return (u - self.u_anterior) / self.depth, (v - self.v_center) / self.v_half_width

    def denormalise(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`normalise`."""
        return self.u_anterior + a * self.depth, self.v_center + b * self.v_half_width


@dataclass
class VertebralBody:
    """One vertebra's body on a 1 mm grid in its local frame."""

    label: int
    frame: LocalFrame
    block: Block
    occupancy: np.ndarray  # float32 (S, U, V) in [0, 1], body only
    complete: bool  # False if the body is cut by the edge of the field of view (body_cut_by_border)
    footprint: Footprint | None  # None when the body is empty
    level: str = ""  # "L1"; empty when unknown

    # measurements derived from this body by the layers above, computed once (measure.heights.own_heights)
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def mask(self) -> np.ndarray:
        """Binary body (occupancy >= 0.5)."""
        return self.occupancy >= 0.5

    def heights(self) -> np.ndarray:
        """Column heights H(u, v) in mm along the frame's s axis."""
        return self.occupancy.sum(axis=0) * self.block.spacing

    def column_centres(self) -> np.ndarray:
        """Occupancy-weighted s position (mm) of each column; NaN for empty columns."""
        w = self.occupancy.sum(axis=0)
        s = self.block.axis(0)[:, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(w > 0, (self.occupancy * s).sum(axis=0) / np.where(w > 0, w, 1), np.nan)


def extract_body(
    label: int,
    frame: LocalFrame,
    seg: sitk.Image,
    seg_ijk: np.ndarray,
    bbox_ijk: tuple[np.ndarray, np.ndarray],
    body_mask_ijk: np.ndarray | None = None,
    level: str = "",
) -> VertebralBody:
    """Sample vertebra ``label`` (level ``level``) around ``frame`` and keep its body.

    ``bbox_ijk`` is the (start, stop) index box of the label on the input grid; ``body_mask_ijk``
    a boolean array on the same grid marking vertebral-body voxels (from subregion labels), or None
    for the geometric cut.
    """
    lo, hi = _label_box(bbox_ijk, seg_ijk.shape)
    crop = seg_ijk[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] == label
    if body_mask_ijk is not None:
        crop = crop & body_mask_ijk[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    block = _block_around(seg, lo, hi, frame, label)
    matrix, offset = block_to_index_affine(seg, frame, block)
    occupancy = ndimage.affine_transform(
        crop.astype(np.float32), matrix, offset - lo, output_shape=block.shape, order=1, cval=0.0
    )
    occupancy = largest_component(occupancy)
    if body_mask_ijk is None:
        occupancy = _cut_posterior_elements(occupancy, block)
    complete = not body_cut_by_border(occupancy, matrix, offset, seg.GetSize())
    return VertebralBody(label, frame, block, occupancy, complete, footprint_of(occupancy, block), level)


def _label_box(bbox_ijk: tuple[np.ndarray, np.ndarray], size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The label's index box [lo, hi) grown by 2 voxels, clipped to the image (what a body is sampled from)."""
    return np.maximum(np.asarray(bbox_ijk[0]) - 2, 0), np.minimum(np.asarray(bbox_ijk[1]) + 2, size)


def body_block(seg: sitk.Image, bbox_ijk: tuple[np.ndarray, np.ndarray], frame: LocalFrame, label: int) -> Block:
    """The 1 mm local grid :func:`extract_body` samples vertebra ``label`` (index box ``bbox_ijk``) on."""
    lo, hi = _label_box(bbox_ijk, seg.GetSize())
    return _block_around(seg, lo, hi, frame, label)


def _block_around(seg: sitk.Image, lo: np.ndarray, hi: np.ndarray, frame: LocalFrame, label: int) -> Block:
    """The 1 mm local grid covering the index box [lo, hi) of ``label`` plus a margin (capped in size)."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)
    world = np.array([seg.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners - 0.5])
    local = frame.to_local(world)
    margin = np.array([HEIGHT_MARGIN_MM, MARGIN_MM, MARGIN_MM])
    start = np.floor(local.min(axis=0) - margin)
    stop = np.ceil(local.max(axis=0) + margin)
    shape = stop - start + 1
    if float(np.prod(shape)) > MAX_BLOCK_VOXELS:
        extent = " x ".join(f"{x:.0f}" for x in shape)
        raise HealthiVertError(
            f"label {label} spans {extent} mm, far more than one vertebra: resampling it at 1 mm would need "
            f"{np.prod(shape) / 1e6:.0f} million voxels (at most {MAX_BLOCK_VOXELS // 1_000_000} million). Check the "
            "image's voxel spacing and that each vertebra has its own label."
        )
    return Block(start=tuple(start), shape=tuple(shape.astype(int)))


def body_cut_by_border(occupancy: np.ndarray, matrix: np.ndarray, offset: np.ndarray, size: Sequence[int]) -> bool:
    """True when the vertebral *body* is cut by an edge of the image (the field of view).

    Touching is not cutting: a tight crop (e.g. the label map's bounding box) ends exactly at the
    most anterior, cranial or caudal body surface, which then lies on the border slice with nothing
    missing, and transverse processes cut by a crop are not part of the body at all. On each side
    of each image axis the body comes within one voxel of, it counts as cut when its cross-section
    on that border slice (one input voxel thick, samples beyond the image included) is at least
    ``CUT_FRACTION`` of its largest cross-section along that axis: a cut leaves a flat face of
    about the body's full cross-section on the border, a tangent contact only a few voxels.
    ``matrix``/``offset`` map block indices to input indices.
    """
    near = np.argwhere(ndimage.binary_dilation(occupancy >= 0.5))
    if not np.any(_near_border(near @ matrix.T + offset, size)):
        return False
    idx = np.argwhere(occupancy >= 0.5) @ matrix.T + offset
    size = np.asarray(size)
    for axis in range(3):
        slices = np.clip(np.floor(idx[:, axis] + 0.5).astype(int), -1, size[axis])  # input slice of each sample
        counts = np.bincount(slices + 1, minlength=size[axis] + 2)  # [0]: below the image, [-1]: above it
        largest = counts[1:-1].max(initial=0)
        for border, beyond in ((0, counts[0]), (size[axis] - 1, counts[-1])):
            if largest > 0 and counts[border + 1] + beyond >= CUT_FRACTION * largest:
                return True
    return False


def _near_border(idx: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """True for sample positions within one voxel of (or beyond) the edge of the image."""
    size = np.asarray(size)
    return np.any((idx < 0.5) | (idx > size - 1.5), axis=1)


def largest_component(occupancy: np.ndarray) -> np.ndarray:
    """Zero every part of the occupancy outside the largest connected component of its mask."""
    mask = occupancy >= 0.5
    labels, n = ndimage.label(mask)
    if n <= 1:
        return occupancy
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    keep = ndimage.binary_dilation(labels == (1 + int(np.argmax(sizes))))
    return np.where(keep, occupancy, 0.0).astype(np.float32)


def _cut_posterior_elements(occupancy: np.ndarray, block: Block) -> np.ndarray:
    """Remove everything posterior to the spinal canal (pedicles, laminae, processes).

    On a band of +-3 mm around the mid-sagittal plane the AP occupancy profile runs: body, canal
    gap, posterior arch. The first gap after the body marks the posterior wall; all voxels
    posterior to it are removed. A mask without a gap (body-only input) is kept whole.
    """
    mask = occupancy >= 0.5
    if not mask.any():
        return occupancy
    v = block.axis(2)
    lr_profile = mask.any(axis=(0, 1))
    v_center = float(np.average(v, weights=mask.sum(axis=(0, 1)))) if lr_profile.any() else 0.0
    band = np.abs(v - v_center) <= 3.0
    ap = mask[:, :, band].sum(axis=(0, 2))
    present = ap > max(2, 0.02 * ap.max())
    first = int(np.argmax(present))
    gaps = np.flatnonzero(~present[first:])
    if len(gaps) == 0:
        return occupancy
    cut = first + int(gaps[0])
    out = occupancy.copy()
    out[:, cut:, :] = 0.0
    return largest_component(out)


def footprint_of(occupancy: np.ndarray, block: Block) -> Footprint | None:
    """Body extent in the axial plane: AP edges on the central LR slab, LR centre and half width."""
    heights = occupancy.sum(axis=0)
    if heights.max() <= 0:
        return None
    solid = heights >= 0.3 * heights.max()
    u, v = block.axis(1), block.axis(2)
    v_cols = np.flatnonzero(solid.any(axis=0))
    v_lo, v_hi = v[v_cols[0]], v[v_cols[-1]]
    v_center = 0.5 * (v_lo + v_hi)
    v_half = max(0.5 * (v_hi - v_lo), 1.0)
    slab = np.abs(v - v_center) <= CENTRAL_SLAB * v_half
    u_rows = np.flatnonzero(solid[:, slab].any(axis=1))
    if len(u_rows) == 0:
        return None
    u_ant, u_post = u[u_rows[0]] - 0.5, u[u_rows[-1]] + 0.5
    return Footprint(float(u_ant), float(u_post), float(v_center), float(v_half + 0.5))


INTACT_LOSS = 0.10  # columns losing less than this anchor the pseudo-healthy body's mid-plane


def build_body(target: VertebralBody, heights: np.ndarray) -> np.ndarray:
    """A body with the given column heights on the target's grid.

    Each column is a run of ``heights`` mm (fractional end voxels, so its sum is exact) centred
    on a plane fitted to the mid-points of the target's intact columns: the endplates move apart
    symmetrically, as the reference's SHRM does.
    """
    centre = _mid_plane(target, heights)
    s = target.block.axis(0)[:, None, None]
    half = heights[None] / 2
    occ = np.minimum(s - (centre - half) + 0.5, (centre + half) - s + 0.5)
    occ = np.clip(occ, 0.0, 1.0) * (heights[None] > 0)
    return occ.astype(np.float32)


def _mid_plane(target: VertebralBody, heights: np.ndarray) -> np.ndarray:
    """Least-squares plane s = c0 + c1 u + c2 v through the centres of near-intact columns."""
    h_ori = target.heights()
    centres = target.column_centres()
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(heights > 0, 1 - h_ori / np.where(heights > 0, heights, 1), 1)
    good = np.isfinite(centres) & (loss < INTACT_LOSS) & (h_ori > 0)
    if good.sum() < 10:
        good = np.isfinite(centres) & (h_ori > 0)
    u, v = np.meshgrid(target.block.axis(1), target.block.axis(2), indexing="ij")
    design = np.stack([np.ones(good.sum()), u[good], v[good]], axis=1)
    coef, *_ = np.linalg.lstsq(design, centres[good], rcond=None)
    return (coef[0] + coef[1] * u + coef[2] * v)[None]
