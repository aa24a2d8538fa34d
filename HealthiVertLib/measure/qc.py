"""Quality control of the vertebra label map, before anything is measured or graded.

A segmentation can be wrong in ways that make a confident, wrong grade: a vertebra split in two
by a gap (only the larger piece would be measured), a label filled to its bounding box, several
vertebrae merged under one value, the sacrum called L5, a numbering given in the wrong order.
:func:`check_masks` measures each vertebra's label (connected pieces, holes, bounding-box fill,
height along the spine, volume) against what a vertebra of its level can be and against its
neighbours, and the centroids of the levels against the anatomical order and spacing;
:class:`MaskQC` says which vertebrae are implausible and why, in plain words, and whether the
numbering itself is implausible.

The bounds are deliberately wide: on every real case the project holds (VerSe crops at 1-3 mm,
TotalSegmentator 3 mm labels, TPTBox, the 0.46 x 0.46 x 3 mm Kirschke sample, sub-verse009 with
seven fractured levels) nothing is rejected (``Testing/Python/test_qc.py``), and each bound is at
least 1.3x beyond the most extreme value seen there. Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise

import numpy as np
import SimpleITK as sitk

from ..geometry.spine import SpineLevel
from ..io import labels as lab
from ..io.resources import DATA_DIR

# A second connected piece this large (fraction of the label) in a vertebra the image does not cut,
# lying above or below the largest one: real labels have at most crumbs (0.1 %); a gap of one slice
# through the body gives ~20-60 %. A piece beside the largest one along the spine (an arch that a
# thinner segmentation detached from its body at the pedicles: 36 % on sub-verse009 T6 eroded by a
# 2 mm voxel) leaves the body's heights intact and is not a split.
MAX_SECOND_PIECE = 0.10
MAX_SPLIT_OVERLAP = 0.5  # pieces whose extents along the spine overlap less than this (of the shorter) are stacked
# Enclosed holes (fraction of the filled label): real labels are solid (at most 0.1 %).
MAX_HOLES = 0.15
# Fraction of its bounding box a label fills: whole vertebrae 0.08-0.28, body-only labels up to 0.56,
# an ideal cylinder 0.785; a box-filled label is ~1.
MAX_BOX_FILL = 0.85
# Height along the spine over the level's healthy body height: whole vertebrae with their
# spinous processes 1.0-2.3 (upper thoracic spines are the tallest), merged vertebrae or a sacrum 3.5+.
MAX_HEIGHT_RATIO = 3.0
# Volume over the cube of the level's healthy body height: body-only 2.0-2.5, whole vertebrae 2.4-5.2.
VOLUME_RATIO_RANGE = (0.6, 12.0)
# Size-normalised volume against the nearest whole neighbours' median: real neighbours 0.7-1.3,
# a crushed (Genant 3) vertebra keeps its arch (~0.6); merged or box-filled labels 2+.
NEIGHBOUR_VOLUME_RANGE = (0.4, 1.8)
NEIGHBOUR_LEVELS = 2.0  # neighbours compared with: at most this many levels away
# Centroid distance per level over the case's median (or 1.25 x the healthy body height with too few
# pairs): real spines 0.8-1.2; a level missing from the numbering gives ~2, two labels on one vertebra < 0.5.
SPACING_RANGE = (0.5, 1.65)
SPACING_PER_HEIGHT = 1.25  # centroid distance of adjacent healthy vertebrae over the body height (1.0-1.5)


@dataclass(frozen=True)
class MaskStats:
    """Measurements of one vertebra's label (volume in mm³, height along the spine in mm)."""

    label: int
    level: str
    volume_mm3: float
    height_mm: float
    second_piece: float  # fraction of the label in its second-largest connected piece, when it lies above or below the largest
    pieces: int
    holes: float  # enclosed holes, fraction of the filled label
    box_fill: float
    touches_border: bool
    centroid: np.ndarray


@dataclass
class MaskQC:
    """The outcome of :func:`check_masks`: per-vertebra findings and the numbering's."""

    stats: dict[int, MaskStats] = field(default_factory=dict)
    findings: dict[int, str] = field(default_factory=dict)  # label -> why its mask is implausible
    numbering: str | None = None  # why the numbering is implausible, None when it is plausible

    def reason(self, label: int) -> str | None:
        """Why the label of ``label`` is implausible, or None when it passed."""
        return self.findings.get(label)

    @property
    def passed(self) -> bool:
        """True when every vertebra and the numbering passed."""
        return not self.findings and self.numbering is None


@lru_cache(maxsize=1)
def _healthy_heights() -> dict[str, float]:
    """Healthy mean body height (mm) per level T1-L5, from the spine engine's level prior."""
    data = json.loads((DATA_DIR / "spine_prior.json").read_text(encoding="utf-8"))
    return {level: math.exp(mu) for level, mu in data["fitted"]["mu"].items()}


def healthy_height(level: str) -> float:
    """Expected healthy body height (mm) of ``level``; the nearest level of T1-L5 outside that range."""
    heights = _healthy_heights()
    if level in heights:
        return heights[level]
    rank = lab.level_position(level)
    nearest = min(heights, key=lambda lv: abs(lab.level_position(lv) - rank))
    return heights[nearest]


def check_masks(seg: sitk.Image, levels: list[SpineLevel]) -> MaskQC:
    """Check every vertebra label of ``levels`` (cranial -> caudal, from ``spine_levels``) in ``seg``."""
    qc = MaskQC()
    whole = [v for v in levels if not v.fragment]
    array = sitk.GetArrayViewFromImage(seg)
    tangents = _tangents(whole)
    for v in whole:
        qc.stats[v.label] = _measure(seg, array, v, tangents[v.label])
    present = {v.level for v in levels}
    for v in whole:
        reason = _own_finding(qc.stats[v.label], present)
        if reason:
            qc.findings[v.label] = reason
    for v in whole:
        if v.label not in qc.findings and (reason := _neighbour_finding(v, whole, qc)):
            qc.findings[v.label] = reason
    qc.numbering = _order_finding(whole) or _sacrum_finding(whole, qc) or _spacing_finding(whole, qc)
    return qc


# ----------------------------------------------------------------------------- measurements


def _tangents(levels: list[SpineLevel]) -> dict[int, np.ndarray]:
    """Unit direction of the spine (pointing superior) at each vertebra, from its neighbours' centroids."""
    out = {}
    for i, v in enumerate(levels):
        a, b = levels[max(i - 1, 0)], levels[min(i + 1, len(levels) - 1)]
        t = a.centroid - b.centroid
        norm = float(np.linalg.norm(t))
        t = t / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
        out[v.label] = t if t[2] >= 0 else -t
    return out


def _measure(seg: sitk.Image, array: np.ndarray, v: SpineLevel, tangent: np.ndarray) -> MaskStats:
    from scipy import ndimage

    (i0, j0, k0), (i1, j1, k1) = v.bbox
    crop = array[k0:k1, j0:j1, i0:i1] == v.label
    count = int(crop.sum())
    pieces, n_pieces = ndimage.label(crop, structure=np.ones((3, 3, 3), bool))
    filled = int(ndimage.binary_fill_holes(crop).sum())
    k, j, i = np.nonzero(crop)
    spacing = np.array(seg.GetSpacing())
    direction = np.array(seg.GetDirection()).reshape(3, 3)
    index = np.stack([i + i0, j + j0, k + k0], axis=1) * spacing
    along = index @ (direction.T @ tangent)
    lo, hi = np.percentile(along, [1, 99])
    second = _stacked_second_piece(pieces[k, j, i], along, count)
    step = float(np.abs(direction.T @ tangent) @ spacing)  # one voxel along the spine
    size = np.array(seg.GetSize())
    return MaskStats(
        label=v.label,
        level=v.level,
        volume_mm3=v.volume_mm3,
        height_mm=float(hi - lo) + step,
        second_piece=second,
        pieces=int(n_pieces),
        holes=(filled - count) / filled if filled else 0.0,
        box_fill=count / crop.size if crop.size else 0.0,
        touches_border=bool(np.any(v.bbox[0] <= 0) or np.any(v.bbox[1] >= size)),
        centroid=v.centroid,
    )


def _stacked_second_piece(piece_of: np.ndarray, along: np.ndarray, count: int) -> float:
    """Fraction of the label in its second-largest piece when that piece lies above or below the largest
    along the spine (their extents overlap less than ``MAX_SPLIT_OVERLAP``), else 0."""
    sizes = np.bincount(piece_of)
    sizes[0] = 0
    if np.count_nonzero(sizes) < 2:
        return 0.0
    first, second = np.argsort(sizes)[::-1][:2]
    (a0, a1), (b0, b1) = (np.percentile(along[piece_of == p], [5, 95]) for p in (first, second))
    overlap = max(0.0, min(a1, b1) - max(a0, b0)) / max(min(a1 - a0, b1 - b0), 1e-6)
    return float(sizes[second] / count) if overlap < MAX_SPLIT_OVERLAP else 0.0


# ----------------------------------------------------------------------------- findings


def _own_finding(s: MaskStats, present: set[str]) -> str | None:
    """Why this label cannot be one whole vertebra of its level, judged on its own."""
    h = healthy_height(s.level)
    if s.box_fill > MAX_BOX_FILL:
        return (f"its label fills {s.box_fill:.0%} of its bounding box, a box rather than a vertebra "
                f"(real vertebrae fill less than {MAX_BOX_FILL:.0%})")
    if not s.touches_border and s.second_piece > MAX_SECOND_PIECE:
        return (f"its label is in {s.pieces} separate pieces (the second holds {s.second_piece:.0%} of it): "
                "split by a gap or mixed with another structure, so its heights cannot be measured")
    if s.holes > MAX_HOLES:
        return f"its label has holes inside ({s.holes:.0%} of its volume), so its heights cannot be measured"
    missing = _missing_next_to(s.level, present)
    if s.height_mm > MAX_HEIGHT_RATIO * h:
        return (f"its label is {s.height_mm:.0f} mm tall along the spine, {s.height_mm / h:.1f}x a healthy "
                f"{s.level} body (at most {MAX_HEIGHT_RATIO:.1f}x expected): merged vertebrae or another "
                f"structure under this label{missing}")
    ratio = s.volume_mm3 / h**3
    if ratio > VOLUME_RATIO_RANGE[1]:
        return (f"its label is {s.volume_mm3 / 1000:.0f} cm³, more than a whole {s.level} can be: merged "
                f"vertebrae or another structure under this label{missing}")
    if ratio < VOLUME_RATIO_RANGE[0] and not s.touches_border:
        return (f"its label is only {s.volume_mm3 / 1000:.1f} cm³, too small for a whole {s.level} "
                "although the image does not cut it: a partial label")
    return None


def _missing_next_to(level: str, present: set[str]) -> str:
    """' (L2 and L4, next to it, are missing from the label map)' or ''."""
    rank = lab.spine_ranks(present)
    order = sorted(rank, key=rank.get)
    i = order.index(level)
    around = [order[j] for j in (i - 1, i + 1) if 0 <= j < len(order) and lab.is_gradable(order[j])]
    missing = [lv for lv in around if lv not in present]
    if not missing or not any(lv in present for lv in order[:i]) or not any(lv in present for lv in order[i + 1:]):
        return ""
    return f"; {' and '.join(missing)}, next to it, {'is' if len(missing) == 1 else 'are'} missing from the label map"


def _neighbour_finding(v: SpineLevel, whole: list[SpineLevel], qc: MaskQC) -> str | None:
    """Why this label does not fit its neighbours (size-normalised volume far from theirs)."""
    s = qc.stats[v.label]
    if s.touches_border:
        return None
    rank = lab.spine_ranks(w.level for w in whole)
    near = [w for w in whole if w is not v and abs(rank[w.level] - rank[v.level]) <= NEIGHBOUR_LEVELS
            and w.label not in qc.findings and not qc.stats[w.label].touches_border]
    if not near:
        return None
    own = s.volume_mm3 / healthy_height(v.level) ** 3
    theirs = float(np.median([qc.stats[w.label].volume_mm3 / healthy_height(w.level) ** 3 for w in near]))
    ratio = own / theirs
    if NEIGHBOUR_VOLUME_RANGE[0] <= ratio <= NEIGHBOUR_VOLUME_RANGE[1]:
        return None
    names = ", ".join(w.level for w in near)
    if ratio > 1:
        return (f"its label is {ratio:.1f}x the volume of its neighbours ({names}), size for size: merged "
                f"vertebrae, a filled label or another structure under this label{_missing_next_to(v.level, {w.level for w in whole})}")
    return (f"its label is only {ratio:.0%} of the volume of its neighbours ({names}), size for size: "
            "a partial label")


def _order_finding(whole: list[SpineLevel]) -> str | None:
    """Why the levels are not in anatomical order from head to feet (superior = +z in LPS), or None."""
    if len(whole) < 2:
        return None
    by_height = sorted(whole, key=lambda v: -v.centroid[2])
    if all(a.label == b.label for a, b in zip(by_height, whole)):
        return None
    found = ", ".join(f"{v.level} ({v.label})" for v in by_height)
    return (f"the numbering puts the vertebrae out of anatomical order: from head to feet the label map "
            f"holds {found} (level and label value)")


def _sacrum_finding(whole: list[SpineLevel], qc: MaskQC) -> str | None:
    """The most caudal label too big for one vertebra: the sacrum under a vertebra's name (a shifted numbering)."""
    if len(whole) < 2 or lab.level_position(whole[-1].level) < lab.level_position("L4"):
        return None
    last = qc.stats[whole[-1].label]
    h = healthy_height(last.level)
    if last.height_mm <= MAX_HEIGHT_RATIO * h and last.volume_mm3 <= VOLUME_RATIO_RANGE[1] * h**3:
        return None
    return (f"the most caudal label, {last.level} (label {last.label}), is {last.height_mm:.0f} mm tall and "
            f"{last.volume_mm3 / 1000:.0f} cm³, the size of a sacrum rather than one vertebra: the numbering "
            "seems shifted by a level")


def _spacing_finding(whole: list[SpineLevel], qc: MaskQC) -> str | None:
    """Why the distance between consecutive levels' centroids does not fit the numbering, or None."""
    rank = lab.spine_ranks(w.level for w in whole)
    inside = [w for w in whole if not qc.stats[w.label].touches_border and w.label not in qc.findings]
    pairs = []
    for a, b in pairwise(inside):
        steps = rank[b.level] - rank[a.level]
        distance = float(np.linalg.norm(a.centroid - b.centroid))
        per_height = distance / steps / ((healthy_height(a.level) + healthy_height(b.level)) / 2)
        pairs.append((a, b, distance, per_height))
    if not pairs:
        return None
    typical = float(np.median([p[3] for p in pairs])) if len(pairs) >= 3 else SPACING_PER_HEIGHT
    for a, b, distance, per_height in pairs:
        ratio = per_height / typical
        if ratio > SPACING_RANGE[1]:
            return (f"{a.level} and {b.level} are {distance:.0f} mm apart, {ratio:.1f}x the spacing of "
                    f"{'adjacent' if rank[b.level] - rank[a.level] == 1 else 'such'} levels in this spine: the "
                    "numbering skips a vertebra (or one is missing from the label map)")
        if ratio < SPACING_RANGE[0]:
            return (f"{a.level} and {b.level} are only {distance:.0f} mm apart, {ratio:.1f}x the spacing of "
                    "levels in this spine: two labels on one vertebra")
    return None
