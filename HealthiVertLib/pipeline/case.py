"""One case from labels (and CT) to graded vertebrae: the data flow of DESIGN.md in one place.

:func:`grade_case` orders the vertebrae along the spine, fits the spine curve, extracts each needed
vertebral body in its local frame, asks the engine for the pseudo-healthy body, measures heights
and RHLV, grades, and maps the results back onto the input grid (``volumes``); the result is a
:class:`~HealthiVertLib.pipeline.records.CaseResult`.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from ..engines import DEFAULT_ENGINE, get_engine
from ..engines.base import EngineUnavailable, Neighbour, NoContextError, PseudoHealthyEngine
from ..engines.neighbours import CONTEXT_LEVELS, gather_neighbours, mean_height
from ..errors import HealthiVertError
from ..geometry.body import VertebralBody
from ..geometry.spine import SpineBodies, SpineLevel, resolve_targets
from ..geometry.straighten import array_ijk
from ..io import labels as lab
from ..io.case import Case
from ..measure.counterfactuals import CounterfactualSeries
from ..measure.graders import Grader, load_default_grader
from ..measure.grading import genant_rule, grading_inputs
from ..measure.heights import HeightMeasurement, measure
from ..measure.qc import MaskQC, check_masks
from .region import SpineCase, crop_to_spine
from .records import FAILED, IMPLAUSIBLE_MASK, INCOMPLETE, NO_CONTEXT, UNSUPPORTED, CaseResult, VertebraResult
from .volumes import VolumeWriter, vertebra_views

Progress = Callable[[float, str], None]
# Genant's rule is applied to the point losses (the heights a radiologist compares), falling back to
# the RHLV thirds when a point could not be measured: on the real benchmark the rule on point losses
# matches the radiologists better (benchmarks/real.md).
DEFAULT_GRADER_NAME = ("default threshold grader (grade-1 threshold fitted on 30 radiologist-graded vertebrae of "
                       "4 VerSe19 subjects; HealthiVertLib/data/grader_default.md)")


def grade_case(
    case: Case,
    vertebrae: Sequence[str] | None = None,
    engine: str | PseudoHealthyEngine = DEFAULT_ENGINE,
    grader: Grader | None = None,
    progress: Progress | None = None,
    volumes: bool = True,
    grader_name: str | None = None,
    counterfactuals: bool = False,
    qc: bool = True,
) -> CaseResult:
    """Grade the requested vertebrae (all gradable ones when ``vertebrae`` is None).

    Vertebrae cut by the field of view, without usable neighbours, with an implausible label
    (``measure.qc``) or outside T1-L6 are reported with a status and a reason instead of a grade;
    a numbering that does not fit the anatomy is refused (HealthiVertError). ``qc=False`` grades
    them anyway, with warnings in the result. ``counterfactuals``: also each graded vertebra as it
    would look at grade 0-3 (``measure.counterfactuals.CounterfactualSeries``).
    """
    progress = progress or (lambda fraction, message: None)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    engine = get_engine(engine) if isinstance(engine, str) else engine
    case = spine_case(case, engine)  # every step below works inside the spine's box
    if hasattr(engine, "attach"):
        engine.attach(case)  # engines that read the CT (generator) get the case
    if grader is None:
        grader, grader_name = load_default_grader(), DEFAULT_GRADER_NAME
    levels = case.levels
    targets = resolve_targets(levels, vertebrae)
    mask_qc = check_masks(case.seg, levels)
    warnings = _qc_warnings(mask_qc, case, qc)
    trusted = [v for v in levels if not qc or v.label not in mask_qc.findings]
    bodies = SpineBodies(case, trusted or levels)
    timing["geometry"] = time.perf_counter() - t0
    ct_ijk = array_ijk(case.ct) if case.ct is not None else None  # the CT's box may be larger than the labels'
    out = VolumeWriter(case.seg) if volumes else None
    cf = CounterfactualSeries(case.seg, volumes) if counterfactuals else None
    results = []
    for k, target in enumerate(targets):
        progress(k / max(len(targets), 1), f"{target.level}: measuring")
        if qc and (finding := mask_qc.reason(target.label)):
            results.append(_implausible(target, finding))
            continue
        result = _grade_one(target, trusted, bodies, engine, grader, case, ct_ijk, out, timing, cf)
        _note_qc(result, target, levels, mask_qc, qc, getattr(engine, "context_levels", CONTEXT_LEVELS))
        results.append(result)
    progress(1.0, "done")
    result = CaseResult(
        case=case.name,
        engine=engine.name,
        grader=grader_name or "custom SVM grader",
        label_scheme=case.scheme.name,
        vertebrae=results,
        inputs=dict(case.paths),
        timing_s=timing,
        warnings=warnings,
        engine_notes=list(getattr(engine, "notes", ())),
    )
    if out is not None:
        t = time.perf_counter()
        loss, healthy, original = out.images()
        result.place_volumes(case.region, {"loss_volume": loss, "healthy_label_volume": healthy,
                                           "original_body_volume": original, "healthy_ct_volume": out.ct_image()},
                             bases={"healthy_ct_volume": case.full_ct})
        if cf is not None:
            result.counterfactual_volumes = {k: case.region.paste(v) for k, v in cf.images().items()}
        _add(timing, "volumes", time.perf_counter() - t)
    timing["total"] = time.perf_counter() - t0
    return result


def spine_case(case: Case, engine: PseudoHealthyEngine) -> SpineCase:
    """``case`` cropped to the spine's box for ``engine`` (``pipeline.region``): with the CT around each
    vertebra that the engine reads (``ct_reach_mm``) and, for an engine that synthesizes CT, the full CT
    kept for the pseudo-healthy CT on the input grid. Callers may crop first (and drop the full case)."""
    reach = float(getattr(engine, "ct_reach_mm", 0.0))
    if isinstance(case, SpineCase):
        if case.ct is not None and (case.ct_reach_mm < reach or (reach > 0 and case.full_ct is None)):
            raise HealthiVertError(f"The case was cropped for another engine than '{engine.name}'; crop it with "
                                   "spine_case(case, engine).")
        return case
    return crop_to_spine(case, reach, keep_full_ct=reach > 0)


def _qc_warnings(mask_qc: MaskQC, case: Case, qc: bool) -> list[str]:
    """Refuse a numbering that does not fit the anatomy, or (``qc`` off) the case's warnings."""
    if mask_qc.numbering and qc:
        raise HealthiVertError(
            f"The vertebra numbering ({case.scheme.name}) does not fit the label map: {mask_qc.numbering}. "
            "Check --labels (or the segmentation), or pass --no-qc to grade anyway."
        )
    if qc:
        return []
    warnings = ["mask quality checks skipped (--no-qc): grades of vertebrae with implausible labels are shown"]
    if mask_qc.numbering:
        warnings.append(f"the vertebra numbering does not fit the label map: {mask_qc.numbering}")
    return warnings


def _implausible(target: SpineLevel, finding: str) -> VertebraResult:
    return VertebraResult(level=target.level, label=target.label, verse_label=lab.verse_label(target.level),
                          status=IMPLAUSIBLE_MASK, reason=f"implausible mask: {finding}")


def _note_qc(
    res: VertebraResult, target: SpineLevel, levels: list[SpineLevel], mask_qc: MaskQC, qc: bool, reach: float
) -> None:
    """Record the neighbours within ``reach`` levels left out for an implausible label, or (``qc`` off)
    the target's own finding."""
    if not qc:
        if finding := mask_qc.reason(target.label):
            res.warnings.append(f"implausible mask, graded anyway (--no-qc): {finding}")
        return
    rank = lab.spine_ranks(v.level for v in levels)
    for v in levels:
        if (finding := mask_qc.reason(v.label)) and v is not target and abs(rank[v.level] - rank[target.level]) <= reach:
            res.context.append({"level": v.level, "rejected": f"implausible mask: {finding}"})


def _grade_one(
    target: SpineLevel,
    levels: list[SpineLevel],
    bodies: SpineBodies,
    engine: PseudoHealthyEngine,
    grader: Grader,
    case: SpineCase,
    ct_ijk: np.ndarray | None,
    out: "VolumeWriter | None",
    timing: dict[str, float],
    cf: CounterfactualSeries | None = None,
) -> VertebraResult:
    res = VertebraResult(level=target.level, label=target.label, verse_label=lab.verse_label(target.level))
    if not lab.is_gradable(target.level):
        res.status, res.reason = UNSUPPORTED, f"{target.level} is outside T1-L6; only thoracic and lumbar vertebrae are graded"
        return res
    t = time.perf_counter()
    body = bodies.get(target) if not target.fragment else None
    _add(timing, "bodies", time.perf_counter() - t)
    if body is None or body.footprint is None:
        res.status, res.complete = INCOMPLETE, False
        res.reason = "only a fragment of this vertebra is in the label map" if target.fragment else "no vertebral body found"
        return res
    if not body.complete:
        res.status, res.complete = INCOMPLETE, False
        res.reason = "cut by the field of view: its vertebral body is cut by the edge of the image, so its heights cannot be trusted"
        return res
    t = time.perf_counter()
    neighbours = gather_neighbours(target, levels, bodies, getattr(engine, "context_levels", CONTEXT_LEVELS))
    _add(timing, "bodies", time.perf_counter() - t)
    t = time.perf_counter()
    try:
        prediction = engine.predict(body, neighbours)
    except NoContextError as err:
        res.status, res.reason = NO_CONTEXT, f"cannot predict the healthy shape: {err}"
        return res
    except EngineUnavailable as err:
        res.status, res.reason = FAILED, f"the {engine.name} engine cannot grade it: {err}"
        return res
    finally:
        _add(timing, "engine", time.perf_counter() - t)
    t = time.perf_counter()
    m = measure(body, prediction.occupancy)
    res.context = prediction.context
    notes = [c["note"] for c in prediction.context if c.get("note")]
    if notes:  # e.g. the spine engine had no other vertebra and used its level prior alone
        res.reason = "; ".join(notes)
    _fill_measurement(res, m, body, neighbours)
    _add(timing, "heights", time.perf_counter() - t)
    t = time.perf_counter()
    points = [v for v in (m.point_loss or {}).values() if v is not None and np.isfinite(v)]
    try:
        res.grade, res.confidence, res.probabilities = grader.grade(grading_inputs(m.rhlv, m.point_loss))
        res.grade_rule = genant_rule(m.point_loss if len(points) == 3 else m.rhlv)[0]
    except HealthiVertError as err:
        res.grade = res.confidence = res.probabilities = res.grade_rule = None
        res.status, res.reason = FAILED, f"measured, but cannot be graded: {err}"
    _add(timing, "grading", time.perf_counter() - t)
    t = time.perf_counter()
    res.views = vertebra_views(body, prediction.occupancy, m, case, ct_ijk)
    if out is not None:
        out.add(target.label, body, prediction.occupancy, m.loss_map)
        if prediction.ct is not None and case.ct is not None:
            out.add_ct(body, prediction.ct, case.ct_on_seg_grid)
    _add(timing, "views", time.perf_counter() - t)
    if cf is not None:
        t = time.perf_counter()
        res.counterfactuals = cf.add(target.label, body, prediction.occupancy, m.rhlv, res.views)
        _add(timing, "counterfactuals", time.perf_counter() - t)
    return res


def _fill_measurement(res: VertebraResult, m: HeightMeasurement, body: VertebralBody, neighbours: list[Neighbour]) -> None:
    res.rhlv = m.rhlv
    res.abnormality_score = m.abnormality_score
    res.heights_mm = {"original": m.original_mm, "pseudo_healthy": m.healthy_mm}
    res.point_heights_mm = {"original": m.point_heights_mm["original"], "pseudo_healthy": m.point_heights_mm["healthy"]}
    res.point_loss = m.point_loss
    res.genant_points_lps = {k: body.frame.to_world(p).tolist() for k, p in m.points_local.items()}
    res.ratios = {"min_max": m.min_max_ratio, "to_neighbours": _ratio_to_neighbours(m, neighbours)}


def _ratio_to_neighbours(m: HeightMeasurement, neighbours: list[Neighbour]) -> float | None:
    """Classic reference-free ratio: mean height / mean of the nearest complete neighbours' heights."""
    nearest = []
    for side in (-1, 1):
        cands = [n for n in neighbours if np.sign(n.offset) == side and n.body.complete and n.body.footprint]
        if cands:
            nearest.append(min(cands, key=lambda n: abs(n.offset)))
    if not nearest:
        return None
    return m.original_mm["overall"] / float(np.mean([mean_height(n.body) for n in nearest]))


def _add(timing: dict[str, float], key: str, seconds: float) -> None:
    timing[key] = timing.get(key, 0.0) + seconds
