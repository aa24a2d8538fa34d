"""The vertebrae of a case in spine order, and their bodies extracted on demand.

:func:`spine_levels` lists the vertebrae of the case's numbering present in the label map,
cranial to caudal (:class:`SpineLevel`: label, level, centroid, bounding box, volume);
:func:`resolve_targets` picks the requested ones; :func:`curve_support` the vertebrae the spine
curve is fitted through (whole ones when there are enough). :class:`SpineBodies` fits
the curve and extracts each vertebral body in its local frame once, when first needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..io import labels as lab
from .body import VertebralBody, extract_body
from ..errors import HealthiVertError
from ..io.case import Case
from .straighten import LocalFrame, SpineCurve, array_ijk


FRAGMENT_MM3 = 2000.0  # smaller label pieces are fragments, not vertebrae


@dataclass
class SpineLevel:
    """A vertebra present in the label map."""

    label: int
    level: str
    centroid: np.ndarray  # LPS mm
    bbox: tuple[np.ndarray, np.ndarray]  # index (start, stop) on the input grid
    volume_mm3: float

    @property
    def fragment(self) -> bool:
        """Too small to be a vertebra in view (a sliver at the edge of the field of view)."""
        return self.volume_mm3 < FRAGMENT_MM3


def spine_levels(case: Case) -> list[SpineLevel]:
    """Vertebrae of the case's numbering present in the label map, cranial -> caudal."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(case.seg)
    voxel_mm3 = float(np.prod(case.seg.GetSpacing()))
    found = []
    for label in stats.GetLabels():
        level = case.scheme.level_of(label)
        if level is None:
            continue
        box = stats.GetBoundingBox(label)
        start = np.array(box[:3])
        found.append(
            SpineLevel(
                label=int(label),
                level=level,
                centroid=np.array(stats.GetCentroid(label)),
                bbox=(start, start + np.array(box[3:])),
                volume_mm3=stats.GetNumberOfPixels(label) * voxel_mm3,
            )
        )
    if not found:
        raise HealthiVertError(f"No vertebra of the {case.scheme.name} numbering in the label map.")
    return sorted(found, key=lambda v: lab.level_position(v.level))


def resolve_targets(levels: list[SpineLevel], requested: Sequence[str] | None) -> list[SpineLevel]:
    """The vertebrae to grade: the requested levels, or every gradable one (T1-L6) when None."""
    if requested is None:
        return [v for v in levels if lab.is_gradable(v.level)]
    by_level = {v.level: v for v in levels}
    targets = []
    for name in requested:
        try:
            level = lab.normalize_level(name)
        except (ValueError, KeyError, HealthiVertError):
            raise HealthiVertError(f"'{name}' is not a vertebra level (use e.g. T12, L1, L6, T13).") from None
        if level not in by_level:
            present = ", ".join(v.level for v in levels)
            raise HealthiVertError(f"{level} is not in the label map (present: {present}).")
        targets.append(by_level[level])
    return targets


def curve_support(levels: list[SpineLevel], seg: sitk.Image) -> list[SpineLevel]:
    """Vertebrae whose centroids define the spine curve.

    A vertebra cut by the edge of the image has a biased centroid (only part of it is there), so
    the curve uses whole vertebrae when at least three exist, else every non-fragment.
    """
    size = np.array(seg.GetSize())
    whole = [v for v in levels if not v.fragment and np.all(v.bbox[0] > 0) and np.all(v.bbox[1] < size)]
    if len(whole) >= 3:
        return whole
    return [v for v in levels if not v.fragment] or levels


class SpineBodies:
    """Extracts vertebral bodies on demand and keeps them for reuse as neighbours."""

    def __init__(self, case: Case, levels: list[SpineLevel]):
        self.case = case
        self.curve = SpineCurve.from_centroids(np.array([v.centroid for v in curve_support(levels, case.seg)]))
        self.seg_ijk = np.ascontiguousarray(array_ijk(case.seg))
        self.body_ijk = None
        if case.subregions is not None:
            values = np.unique(sitk.GetArrayViewFromImage(case.subregions))
            body_values = lab.body_labels(values.tolist())
            self.body_ijk = np.isin(array_ijk(case.subregions), sorted(body_values))
        self._cache: dict[int, VertebralBody] = {}

    def get(self, v: SpineLevel) -> VertebralBody:
        if v.label not in self._cache:
            frame = LocalFrame.on_curve(self.curve, v.centroid)
            self._cache[v.label] = extract_body(
                v.label, frame, self.case.seg, self.seg_ijk, v.bbox, self.body_ijk, v.level
            )
        return self._cache[v.label]
