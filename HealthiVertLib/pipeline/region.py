"""Work where the spine is: the case cropped to the box every per-vertebra step can reach.

A whole-spine CT is mostly not spine: a 400 mm field of view holds the spine in a fifth of its
voxels. :func:`crop_to_spine` finds, once, the index box of the input grid that grading can read
or write -- each vertebra's 1 mm block in its local frame (``geometry.body.body_block``: the
label's box, the room for a taller pseudo-healthy body, the frame's tilt) and, for engines that
read the CT around a vertebra (``ct_reach_mm``), the CT's own, larger box with that reach -- and
returns a :class:`SpineCase`: the same case cropped to them (labels, subregions and the output
volumes to the first box, the CT to the second; physical geometry kept), with the vertebrae found
on the full grid. :func:`~HealthiVertLib.pipeline.case.grade_case` grades inside it and
:class:`SpineRegion` puts the output volumes back on the input grid.

Nothing of the input is lost: the box holds every voxel any step samples (blocks plus two voxels
for interpolation), and a side of the box is either the image's own border or at least two
voxels of background away from every vertebra label, so no label that is whole in the image
touches a border of the crop (``measure.qc`` and ``geometry.body.body_cut_by_border`` see the
same borders).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import HealthiVertError
from ..geometry.body import body_block
from ..geometry.spine import SpineLevel, curve_support, spine_levels
from ..geometry.straighten import LocalFrame, SpineCurve, block_to_index_affine, world_to_index_affine
from ..io.case import Case

PAD_VOXELS = 2  # beyond each block: linear interpolation reads one voxel further, one more for safety


@dataclass(frozen=True)
class SpineRegion:
    """An index box of an input grid (ITK order i, j, k) and that grid, to crop into and paste back."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]
    grid_size: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def whole(cls, image: sitk.Image) -> "SpineRegion":
        """The whole grid of ``image``."""
        return cls.box(image, (0, 0, 0), image.GetSize())

    @classmethod
    def box(cls, image: sitk.Image, start, stop) -> "SpineRegion":
        """The box [start, stop) of ``image``'s grid (clipped to it)."""
        size = np.asarray(image.GetSize())
        lo = np.clip(np.asarray(start, int), 0, size)
        hi = np.clip(np.asarray(stop, int), lo, size)
        return cls(tuple(int(x) for x in lo), tuple(int(x) for x in hi - lo), tuple(int(x) for x in size),
                   image.GetOrigin(), image.GetSpacing(), image.GetDirection())

    @property
    def is_whole(self) -> bool:
        """True when the box is the whole grid (nothing to crop)."""
        return self.start == (0, 0, 0) and self.size == self.grid_size

    @property
    def voxels(self) -> int:
        """Voxels in the box."""
        return int(np.prod(self.size))

    def crop(self, image: sitk.Image | None) -> sitk.Image | None:
        """``image`` (on the input grid) cut to the box, physical geometry kept."""
        if image is None or self.is_whole:
            return image
        return sitk.RegionOfInterest(image, list(self.size), list(self.start))

    def paste(self, image: sitk.Image | None, base: sitk.Image | None = None) -> sitk.Image | None:
        """``image`` (on the box) put back on the input grid: into ``base`` (an image on that grid, not
        modified) or into zeros of ``image``'s pixel type."""
        if image is None or (self.is_whole and base is None):
            return image
        if base is None:  # one full-size allocation (Paste into zeros would need two)
            upper = [int(n - a - b) for n, a, b in zip(self.grid_size, self.start, self.size)]
            full = sitk.ConstantPad(image, list(self.start), upper, 0.0)
            full.SetOrigin(self.origin)  # exactly the input grid's, not recomputed from the box
            full.SetSpacing(self.spacing)
            full.SetDirection(self.direction)
            return full
        full = sitk.Cast(base, image.GetPixelID()) if base.GetPixelID() != image.GetPixelID() else base
        return sitk.Paste(full, image, list(self.size), [0, 0, 0], list(self.start))


@dataclass
class SpineCase(Case):
    """A :class:`~HealthiVertLib.io.case.Case` cropped to its :class:`SpineRegion`.

    ``levels`` are the vertebrae found on the full grid (centroids in world mm, boxes in the crop's
    index space); ``full_ct`` the input CT on the full grid (int16 when it holds whole HU), kept only
    for engines that synthesize CT (the pseudo-healthy CT is the input CT with the vertebrae replaced).
    """

    region: SpineRegion | None = None
    levels: list[SpineLevel] = dataclasses.field(default_factory=list)
    full_ct: sitk.Image | None = None
    ct_reach_mm: float = 0.0
    ct_region: SpineRegion | None = None  # the CT's own box: ``region`` plus the engine's reach (None: ``region``)

    def ct_on_seg_grid(self) -> sitk.Image | None:
        """The CT cut to the labels' box (``region``), where the output volumes are made."""
        if self.ct is None or self.ct_region is None or self.ct_region == self.region:
            return self.ct
        offset = [int(a - b) for a, b in zip(self.region.start, self.ct_region.start)]
        return sitk.RegionOfInterest(self.ct, list(self.region.size), offset)


def crop_to_spine(case: Case, ct_reach_mm: float = 0.0, keep_full_ct: bool = False) -> SpineCase:
    """``case`` cut to the box its grading can reach (see the module docstring).

    ``ct_reach_mm``: how far from a vertebra's centroid the engine reads the CT (the generator's
    canvas); ``keep_full_ct`` keeps the full CT for a pseudo-healthy CT on the input grid. A case
    that is already a :class:`SpineCase` is returned as it is.
    """
    if isinstance(case, SpineCase):
        return case
    levels = spine_levels(case)
    region = spine_region(case.seg, levels)
    ct_region = region
    if case.ct is not None and ct_reach_mm > 0 and not region.is_whole:
        ct_region = spine_region(case.seg, levels, ct_reach_mm)
    shift = np.asarray(region.start)
    inside = [dataclasses.replace(v, bbox=(v.bbox[0] - shift, v.bbox[1] - shift)) for v in levels]
    values = {f.name: getattr(case, f.name) for f in dataclasses.fields(case)}
    full_ct = compact_ct(case.ct) if keep_full_ct and case.ct is not None else None
    ct = ct_region.crop(full_ct if full_ct is not None else case.ct)  # int16 where whole HU: every reader interpolates to float32
    values.update(seg=region.crop(case.seg), ct=ct, subregions=region.crop(case.subregions))
    return SpineCase(**values, region=region, levels=inside, full_ct=full_ct, ct_reach_mm=ct_reach_mm,
                     ct_region=ct_region)


def compact_ct(ct: sitk.Image) -> sitk.Image:
    """``ct`` as int16 when every value is a whole number of HU within int16 (a CT file's integers,
    read as float32), which halves the memory it takes; else ``ct`` itself. Checked slab by slab."""
    if ct.GetPixelID() == sitk.sitkInt16:
        return ct
    array = sitk.GetArrayViewFromImage(ct)
    for k in range(0, array.shape[0], 16):
        slab = array[k:k + 16]
        if slab.min() < -32768 or slab.max() > 32767 or not np.all(np.mod(slab, 1) == 0):
            return ct
    return sitk.Cast(ct, sitk.sitkInt16)


def spine_region(seg: sitk.Image, levels: list[SpineLevel], ct_reach_mm: float = 0.0) -> SpineRegion:
    """The index box of ``seg``'s grid holding every vertebra's label box and 1 mm block (plus
    ``PAD_VOXELS``) and, with ``ct_reach_mm``, a cube of that half-width around each centroid."""
    size = np.asarray(seg.GetSize())
    try:
        curve = SpineCurve.from_centroids(np.array([v.centroid for v in curve_support(levels, seg)]))
    except HealthiVertError:
        return SpineRegion.whole(seg)  # grading reports it on the full grid, as it always did
    lo, hi = size.copy(), np.zeros(3, int)
    a, b = world_to_index_affine(seg)
    for v in levels:
        lo, hi = np.minimum(lo, v.bbox[0]), np.maximum(hi, v.bbox[1])
        frame = LocalFrame.on_curve(curve, v.centroid)
        try:
            block = body_block(seg, v.bbox, frame, v.label)
        except HealthiVertError:
            return SpineRegion.whole(seg)  # a label far too large for one vertebra: refused later
        matrix, offset = block_to_index_affine(seg, frame, block)
        shape = np.asarray(block.shape)
        corners = np.array([[x, y, z] for x in (0, shape[0]) for y in (0, shape[1]) for z in (0, shape[2])], float)
        idx = corners @ matrix.T + offset
        lo = np.minimum(lo, np.floor(idx.min(axis=0)).astype(int))
        hi = np.maximum(hi, np.ceil(idx.max(axis=0)).astype(int) + 1)
        if ct_reach_mm > 0:
            cube = v.centroid + ct_reach_mm * np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
            idx = cube @ a.T + b
            lo = np.minimum(lo, np.floor(idx.min(axis=0)).astype(int))
            hi = np.maximum(hi, np.ceil(idx.max(axis=0)).astype(int) + 1)
    return SpineRegion.box(seg, lo - PAD_VOXELS, hi + PAD_VOXELS)
