"""Result records of one graded case: what the pipeline hands to the report, the CLI and Slicer.

Conventions: heights in millimetres, RHLV as fractions (0.35 = 35 % height loss), world coordinates
in LPS millimetres (ITK/DICOM convention; Slicer's RAS is (-x, -y, z)).

Straightened space (the frame every 2D view below lives in) is 1 mm isotropic with axes
``(s, u, v)``: ``s`` arc length along the spine curve, cranial -> caudal; ``u`` antero-posterior,
increasing towards posterior (so anterior = low index); ``v`` left-right, increasing towards the
patient's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ..io.jsonable import jsonable


# status of a vertebra in a report
GRADED = "graded"
INCOMPLETE = "incomplete"  # cut by the field of view: measured partially, never graded
NO_CONTEXT = "no_context"  # no usable neighbour to predict its healthy shape
UNSUPPORTED = "unsupported"  # level outside T1-L6 (cervical, sacral)
IMPLAUSIBLE_MASK = "implausible_mask"  # its label failed the mask quality check (measure.qc): never graded
FAILED = "failed"


@dataclass
class VertebraViews:
    """Arrays for the figures of one vertebra, all in straightened space (1 mm pixels).

    ``sagittal_*`` are mid-sagittal slices (rows = s, cranial at top; columns = u, anterior left).
    ``loss_map`` is the axial height-loss map (rows = u, anterior at top; columns = v), NaN outside
    the body footprint. ``ap_profile`` is the loss per AP position (mean over the central LR slab).
    """

    sagittal_ct: np.ndarray | None  # HU, or None for a mask-only case
    sagittal_original: np.ndarray  # bool, original vertebral body
    sagittal_healthy: np.ndarray  # bool, pseudo-healthy body
    sagittal_points: dict[str, tuple[float, float]]  # GENANT_POINTS -> (row s, column u)
    loss_map: np.ndarray  # float, fraction, NaN outside the footprint
    ap_positions_mm: np.ndarray  # distance from the anterior edge of the body
    ap_profile: np.ndarray  # fraction per AP position
    third_bounds_mm: tuple[float, float]  # anterior|middle and middle|posterior boundaries, same axis
    sagittal_counterfactuals: dict[int, np.ndarray] | None = None  # grade -> bool slice (grade --counterfactuals)


@dataclass
class VertebraResult:
    """Measurement and grade of one vertebra. ``to_dict`` gives its ``report.json`` entry."""

    level: str  # "L1"
    label: int  # the value in the input label map
    verse_label: int | None = None  # the same level in VerSe numbering (grade files use it)
    status: str = GRADED
    reason: str | None = None  # why it was not graded, or what a grade rests on when the engine fell back
    complete: bool = True
    grade: int | None = None  # Genant 0-3 from the configured grader
    confidence: float | None = None
    probabilities: list[float] | None = None  # P(grade 0..3)
    grade_rule: int | None = None  # transparent Genant threshold rule (20/25/40 %)
    rhlv: dict[str, float] | None = None  # REGIONS -> fraction
    abnormality_score: float | None = None  # 0-100: surplus volume of the pseudo-healthy body (measure.heights)
    heights_mm: dict[str, dict[str, float]] | None = None  # {"original"|"pseudo_healthy": REGIONS -> mm}
    point_heights_mm: dict[str, dict[str, float]] | None = None  # {"original"|"pseudo_healthy": POINTS -> mm}
    point_loss: dict[str, float] | None = None  # POINTS -> 1 - original / pseudo-healthy (measure.points)
    ratios: dict[str, float | None] | None = None  # reference-free: "min_max", "to_neighbours"
    genant_points_lps: dict[str, list[float]] | None = None  # GENANT_POINTS -> [x, y, z] LPS mm
    context: list[dict[str, Any]] = field(default_factory=list)  # neighbours used: level, weight
    warnings: list[str] = field(default_factory=list)  # what a reader must know before trusting the grade
    counterfactuals: dict[str, Any] | None = None  # grade -> file, loss, RHLV (measure.counterfactuals.CounterfactualSeries)
    views: VertebraViews | None = None  # not serialised

    def to_dict(self) -> dict[str, Any]:
        d = {
            "level": self.level,
            "label": self.label,
            "verse_label": self.verse_label,
            "status": self.status,
            "reason": self.reason,
            "complete": self.complete,
            "grade": self.grade,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "grade_rule": self.grade_rule,
            "rhlv": self.rhlv,
            "abnormality_score": self.abnormality_score,
            "heights_mm": self.heights_mm,
            "point_heights_mm": self.point_heights_mm,
            "point_loss": self.point_loss,
            "ratios": self.ratios,
            "genant_points_lps": self.genant_points_lps,
            "ap_profile": _ap_profile(self.views),
            "context": self.context,
            "warnings": self.warnings,
            "counterfactuals": self.counterfactuals,
        }
        return jsonable(d)


def _ap_profile(views: VertebraViews | None) -> dict[str, Any] | None:
    """The antero-posterior loss profile for ``report.json`` (plots in Slicer), or None."""
    if views is None:
        return None
    return {
        "position_mm": views.ap_positions_mm,  # from the anterior edge of the body
        "loss": views.ap_profile,  # fraction; null where no column was measured
        "third_bounds_mm": views.third_bounds_mm,
    }


@dataclass
class CaseResult:
    """All graded vertebrae of one case plus provenance. ``to_dict`` gives ``report.json``."""

    case: str
    engine: str
    grader: str
    label_scheme: str
    vertebrae: list[VertebraResult]
    inputs: dict[str, str | None]
    timing_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # about the whole case (e.g. quality checks skipped)
    engine_notes: list[str] = field(default_factory=list)  # what the engine ran on (generator: device and why, weights)
    # volumes on the input grid (SimpleITK images), written by outputs.report.write_outputs; the pipeline
    # keeps them on the spine's box (place_volumes) and each read puts them on the input grid
    loss_volume: Any = None
    healthy_label_volume: Any = None
    original_body_volume: Any = None
    counterfactual_volumes: dict[str, Any] | None = None  # file name -> label map, one per grade
    healthy_ct_volume: Any = None  # engines that synthesize CT (generator): the pseudo-healthy CT

    def place_volumes(self, region: Any, volumes: dict[str, Any], bases: dict[str, Any] | None = None) -> None:
        """Hold ``volumes`` (attribute name -> image on ``region``'s box, a ``pipeline.region.SpineRegion``)
        without building them on the input grid: each read of the attribute pastes the image there, into
        zeros or into ``bases[name]`` (an image on the input grid). Keep what you read when you need it
        twice: every read builds a new full-grid image."""
        for name, image in volumes.items():
            setattr(self, name, None)
            if image is not None:
                self.__dict__.setdefault("_boxed", {})[name] = (region, image, (bases or {}).get(name))

    def to_dict(self) -> dict[str, Any]:
        from .. import __version__

        return jsonable(
            {
                "healthivert_version": __version__,
                "notice": "Research use only; not for diagnosis.",
                "case": self.case,
                "engine": self.engine,
                "grader": self.grader,
                "label_scheme": self.label_scheme,
                "coordinate_system": "LPS",
                "units": {"heights": "mm", "rhlv": "fraction", "points": "mm"},
                "inputs": self.inputs,
                "warnings": self.warnings,
                "engine_notes": self.engine_notes,
                "vertebrae": [v.to_dict() for v in self.vertebrae],
                "timing_s": self.timing_s,
            }
        )


GRID_VOLUMES = ("loss_volume", "healthy_label_volume", "original_body_volume", "healthy_ct_volume")


def _grid_volume(name: str) -> property:
    """The attribute ``name`` of CaseResult: an image on the input grid, pasted from the spine's box on read."""

    def get(self: CaseResult) -> Any:
        boxed = self.__dict__.get("_boxed", {})
        if name in boxed:
            region, image, base = boxed[name]
            return region.paste(image, base)
        return self.__dict__.get("_" + name)

    def put(self: CaseResult, value: Any) -> None:
        self.__dict__.setdefault("_boxed", {}).pop(name, None)
        self.__dict__["_" + name] = value

    return property(get, put, doc=f"{name}: a SimpleITK image on the input grid, or None")


for _name in GRID_VOLUMES:
    setattr(CaseResult, _name, _grid_volume(_name))
