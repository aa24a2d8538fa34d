"""Per-vertebra views and the case's volumes on the input grid.

:func:`vertebra_views`: the mid-sagittal slices, the axial loss map and the AP profile of one
vertebra (for the figures); :class:`VolumeWriter`: collects each vertebra's height loss,
pseudo-healthy and original body (and the pseudo-healthy CT, for engines that make one) on the
input grid.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..geometry.body import VertebralBody
from ..measure.heights import HeightMeasurement
from ..io.case import Case
from .records import VertebraViews
from ..geometry.straighten import block_resampler, block_to_index_affine


def vertebra_views(body: VertebralBody, healthy: np.ndarray, m: HeightMeasurement, case: Case, ct_ijk) -> VertebraViews:
    """Mid-sagittal slices, the loss map and the AP profile for the figures."""
    block, fp = body.block, body.footprint
    iv = int(np.argmin(np.abs(block.axis(2) - fp.v_center)))
    ct = None
    if ct_ijk is not None:
        ct = _sample_plane(ct_ijk, case.ct, body, iv)
    to_rc = lambda p: (float(block.index_of(p)[0]), float(block.index_of(p)[1]))  # noqa: E731
    return VertebraViews(
        sagittal_ct=ct,
        sagittal_original=body.mask[:, :, iv],
        sagittal_healthy=healthy[:, :, iv] >= 0.5,
        sagittal_points={k: to_rc(p) for k, p in m.points_local.items()},
        loss_map=m.loss_map,
        ap_positions_mm=m.ap_positions_mm,
        ap_profile=m.ap_profile,
        third_bounds_mm=m.third_bounds_mm,
    )


def _sample_plane(ct_ijk: np.ndarray, ct: sitk.Image, body: VertebralBody, iv: int) -> np.ndarray:
    """CT (HU) on the block's sagittal plane ``v = iv``."""
    block = body.block
    matrix, offset = block_to_index_affine(ct, body.frame, block)
    offset = offset + matrix[:, 2] * iv
    plane = ndimage.affine_transform(  # float32 out of any CT type, without a float copy of the CT
        ct_ijk, matrix, offset, output_shape=(block.shape[0], block.shape[1], 1), order=1, cval=-1024.0,
        output=np.float32,
    )
    return plane[:, :, 0]


def _support(occupancy: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive block-index box (first, last) of the non-zero voxels, or None when there are none."""
    spans = []
    for axis in range(occupancy.ndim):
        other = tuple(k for k in range(occupancy.ndim) if k != axis)
        nz = np.flatnonzero(occupancy.any(axis=other))
        if len(nz) == 0:
            return None
        spans.append((nz[0], nz[-1]))
    return np.array([a for a, _ in spans]), np.array([b for _, b in spans])


class VolumeWriter:
    """Collects per-vertebra results on the input grid."""

    def __init__(self, seg: sitk.Image):
        self.seg = seg
        shape = seg.GetSize()[::-1]
        self.loss = np.zeros(shape, np.float32)
        self.healthy = np.zeros(shape, np.uint16)
        self.original = np.zeros(shape, np.uint16)
        self.healthy_ct: np.ndarray | None = None  # the input CT with pseudo-healthy vertebrae pasted in
        self.ct_is_integer = False  # the input CT holds whole HU values (an int16 file): so does healthy_ct's image

    def add(self, label: int, body: VertebralBody, healthy: np.ndarray, loss_map: np.ndarray) -> None:
        """Paste vertebra ``label``'s measured body, pseudo-healthy body (``healthy``, occupancy on its
        block) and column height loss (``loss_map``) into the volumes; only the part of the input grid
        that the two bodies can reach is resampled."""
        support = _support(np.maximum(body.occupancy, healthy))
        if support is None:
            return
        grid = block_resampler(self.seg, body.frame, body.block, support)
        if grid is None:
            return
        lo, hi, back = grid
        ori = back(body.occupancy, 1) >= 0.5
        syn = back(healthy, 1) >= 0.5
        loss3d = np.broadcast_to(np.nan_to_num(loss_map, nan=0.0)[None], body.block.shape).astype(np.float32)
        loss = back(loss3d, 0)
        view = lambda arr: arr.transpose(2, 1, 0)[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]  # noqa: E731
        view(self.original)[ori] = label
        view(self.healthy)[syn] = label
        view(self.loss)[ori] = loss[ori]

    def images(self) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
        out = []
        for arr in (self.loss, self.healthy, self.original):
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(self.seg)
            out.append(img)
        return tuple(out)

    def add_ct(self, body: VertebralBody, ct_block: np.ndarray, ct: Callable[[], sitk.Image]) -> None:
        """Paste a pseudo-healthy CT (HU on the body's block; NaN = not synthesized) into a copy of the CT;
        ``ct()`` gives the CT on the volumes' grid (asked once)."""
        if self.healthy_ct is None:
            self.healthy_ct = sitk.GetArrayFromImage(ct()).astype(np.float32)
            self.ct_is_integer = _whole_hu(self.healthy_ct)
        covered = np.isfinite(ct_block)
        support = _support(covered)
        grid = None if support is None else block_resampler(self.seg, body.frame, body.block, support)
        if grid is None:
            return
        lo, hi, back = grid
        weight = back(covered.astype(np.float32)).transpose(2, 1, 0)
        values = back(np.where(covered, ct_block, 0.0).astype(np.float32)).transpose(2, 1, 0)
        view = self.healthy_ct[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        paste = weight >= 0.5
        view[paste] = values[paste] / weight[paste]

    def ct_image(self) -> sitk.Image | None:
        """The pseudo-healthy CT on the volumes' grid, or None when no engine produced one: int16 HU
        (synthesized values rounded) when the input CT holds whole HU values, else float32."""
        if self.healthy_ct is None:
            return None
        array = self.healthy_ct
        if self.ct_is_integer:
            array = np.clip(np.rint(array), *INT16_RANGE).astype(np.int16)
        img = sitk.GetImageFromArray(array)
        img.CopyInformation(self.seg)
        return img


INT16_RANGE = (-32768, 32767)


def _whole_hu(array: np.ndarray) -> bool:
    """True when every value is a whole number within int16 (a CT stored as integers, read as float32)."""
    if array.size == 0 or array.min() < INT16_RANGE[0] or array.max() > INT16_RANGE[1]:
        return False
    return bool(np.all(np.mod(array, 1) == 0))
