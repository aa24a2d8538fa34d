"""One case from labels (and CT) to graded vertebrae: the data flow of DESIGN.md in one place.

``grade_case`` orders the vertebrae along the spine, fits the spine curve, extracts each needed
vertebral body in its local frame, asks the engine for the pseudo-healthy body, measures heights
and RHLV, grades, and maps the results back onto the input grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import labels as lab
from .body import VertebralBody, extract_body
from .engines import EngineUnavailable, NoContextError, Neighbour, PseudoHealthyEngine, get_engine, mean_height
from .errors import HealthiVertError
from .grading import SVMGrader, genant_rule, load_default_grader
from .heights import HeightMeasurement, measure
from .io import Case
from .results import (
    FAILED,
    INCOMPLETE,
    NO_CONTEXT,
    UNSUPPORTED,
    CaseResult,
    VertebraResult,
    VertebraViews,
)
from .simulate import CounterfactualSeries
from .straighten import LocalFrame, SpineCurve, array_ijk, block_resampler, block_to_index_affine

Progress = Callable[[float, str], None]
FRAGMENT_MM3 = 2000.0  # smaller label pieces are fragments, not vertebrae
CONTEXT_LEVELS = 3.0
DEFAULT_GRADER_NAME = "default SVM (fitted on simulated fractures of real and phantom vertebrae, not on real graded CTs)"


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


def _curve_support(levels: list[SpineLevel], seg: sitk.Image) -> list[SpineLevel]:
    """Vertebrae whose centroids define the spine curve.

    A vertebra cut by the edge of the image has a biased centroid (only part of it is there), so
    the curve uses whole vertebrae when at least three exist, else every non-fragment.
    """
    size = np.array(seg.GetSize())
    whole = [v for v in levels if not v.fragment and np.all(v.bbox[0] > 0) and np.all(v.bbox[1] < size)]
    if len(whole) >= 3:
        return whole
    return [v for v in levels if not v.fragment] or levels


class _Bodies:
    """Extracts vertebral bodies on demand and keeps them for reuse as neighbours."""

    def __init__(self, case: Case, levels: list[SpineLevel]):
        self.case = case
        self.curve = SpineCurve.from_centroids(np.array([v.centroid for v in _curve_support(levels, case.seg)]))
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
            self._cache[v.label] = extract_body(v.label, frame, self.case.seg, self.seg_ijk, v.bbox, self.body_ijk)
        return self._cache[v.label]


def grade_case(
    case: Case,
    vertebrae: Sequence[str] | None = None,
    engine: str | PseudoHealthyEngine = "context",
    grader: SVMGrader | None = None,
    progress: Progress | None = None,
    volumes: bool = True,
    grader_name: str | None = None,
    counterfactuals: bool = False,
) -> CaseResult:
    """Grade the requested vertebrae (all gradable ones when ``vertebrae`` is None).

    Vertebrae cut by the field of view, without usable neighbours, or outside T1-L6 are reported
    with a status and a reason instead of a grade. ``counterfactuals``: also each graded vertebra
    as it would look at grade 0-3 (``simulate.CounterfactualSeries``).
    """
    progress = progress or (lambda fraction, message: None)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    engine = get_engine(engine) if isinstance(engine, str) else engine
    if hasattr(engine, "attach"):
        engine.attach(case)  # engines that read the CT (generator) get the case
    if grader is None:
        grader, grader_name = load_default_grader(), DEFAULT_GRADER_NAME
    levels = spine_levels(case)
    targets = resolve_targets(levels, vertebrae)
    bodies = _Bodies(case, levels)
    timing["geometry"] = time.perf_counter() - t0
    ct_ijk = array_ijk(case.ct) if case.ct is not None else None
    out = _VolumeWriter(case.seg) if volumes else None
    cf = CounterfactualSeries(case.seg, volumes) if counterfactuals else None
    results = []
    for k, target in enumerate(targets):
        progress(k / max(len(targets), 1), f"{target.level}: measuring")
        results.append(_grade_one(target, levels, bodies, engine, grader, case, ct_ijk, out, timing, cf))
    progress(1.0, "done")
    result = CaseResult(
        case=case.name,
        engine=engine.name,
        grader=grader_name or "custom SVM grader",
        label_scheme=case.scheme.name,
        vertebrae=results,
        inputs=dict(case.paths),
        timing_s=timing,
    )
    if out is not None:
        t = time.perf_counter()
        result.loss_volume, result.healthy_label_volume, result.original_body_volume = out.images()
        result.healthy_ct_volume = out.ct_image()
        if cf is not None:
            result.counterfactual_volumes = cf.images()
        _add(timing, "volumes", time.perf_counter() - t)
    timing["total"] = time.perf_counter() - t0
    return result


def _grade_one(
    target: SpineLevel,
    levels: list[SpineLevel],
    bodies: _Bodies,
    engine: PseudoHealthyEngine,
    grader: SVMGrader,
    case: Case,
    ct_ijk: np.ndarray | None,
    out: "_VolumeWriter | None",
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
        res.reason = "cut by the field of view: its body touches the edge of the image, so its heights cannot be trusted"
        return res
    t = time.perf_counter()
    neighbours = _neighbours(target, levels, bodies)
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
    _fill_measurement(res, m, body, neighbours)
    _add(timing, "heights", time.perf_counter() - t)
    t = time.perf_counter()
    res.grade, res.confidence, res.probabilities = grader.grade(m.rhlv)
    res.grade_rule = genant_rule(m.rhlv)[0]
    _add(timing, "grading", time.perf_counter() - t)
    t = time.perf_counter()
    res.views = _views(body, prediction.occupancy, m, case, ct_ijk)
    if out is not None:
        out.add(target.label, body, prediction.occupancy, m.loss_map)
        if prediction.ct is not None and case.ct is not None:
            out.add_ct(body, prediction.ct, case.ct)
    _add(timing, "views", time.perf_counter() - t)
    if cf is not None:
        t = time.perf_counter()
        res.counterfactuals = cf.add(target.label, body, prediction.occupancy, m.rhlv, res.views)
        _add(timing, "counterfactuals", time.perf_counter() - t)
    return res


def _neighbours(target: SpineLevel, levels: list[SpineLevel], bodies: _Bodies) -> list[Neighbour]:
    """Bodies of the vertebrae within three levels of the target (T1-L6 only; no fragments)."""
    rank = lab.spine_ranks(v.level for v in levels)
    here = rank[target.level]
    found = []
    for v in levels:
        offset = rank[v.level] - here
        if v is target or abs(offset) > CONTEXT_LEVELS or not lab.is_gradable(v.level) or v.fragment:
            continue
        found.append(Neighbour(level=v.level, offset=offset, body=bodies.get(v)))
    return found


def _fill_measurement(res: VertebraResult, m: HeightMeasurement, body: VertebralBody, neighbours: list[Neighbour]) -> None:
    res.rhlv = m.rhlv
    res.abnormality_score = m.abnormality_score
    res.heights_mm = {"original": m.original_mm, "pseudo_healthy": m.healthy_mm}
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


def _views(body: VertebralBody, healthy: np.ndarray, m: HeightMeasurement, case: Case, ct_ijk) -> VertebraViews:
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
    plane = ndimage.affine_transform(
        ct_ijk.astype(np.float32, copy=False), matrix, offset,
        output_shape=(block.shape[0], block.shape[1], 1), order=1, cval=-1024.0,
    )
    return plane[:, :, 0]


class _VolumeWriter:
    """Collects per-vertebra results on the input grid."""

    def __init__(self, seg: sitk.Image):
        self.seg = seg
        shape = seg.GetSize()[::-1]
        self.loss = np.zeros(shape, np.float32)
        self.healthy = np.zeros(shape, np.uint16)
        self.original = np.zeros(shape, np.uint16)
        self.healthy_ct: np.ndarray | None = None  # the input CT with pseudo-healthy vertebrae pasted in

    def add(self, label: int, body: VertebralBody, healthy: np.ndarray, loss_map: np.ndarray) -> None:
        grid = block_resampler(self.seg, body.frame, body.block)
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

    def add_ct(self, body: VertebralBody, ct_block: np.ndarray, ct: sitk.Image) -> None:
        """Paste a pseudo-healthy CT (HU on the body's block; NaN = not synthesized) into a copy of the CT."""
        if self.healthy_ct is None:
            self.healthy_ct = sitk.GetArrayFromImage(ct).astype(np.float32)
        grid = block_resampler(self.seg, body.frame, body.block)
        if grid is None:
            return
        lo, hi, back = grid
        covered = np.isfinite(ct_block)
        weight = back(covered.astype(np.float32)).transpose(2, 1, 0)
        values = back(np.where(covered, ct_block, 0.0).astype(np.float32)).transpose(2, 1, 0)
        view = self.healthy_ct[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        paste = weight >= 0.5
        view[paste] = values[paste] / weight[paste]

    def ct_image(self) -> sitk.Image | None:
        """The pseudo-healthy CT on the input grid, or None when no engine produced one."""
        if self.healthy_ct is None:
            return None
        img = sitk.GetImageFromArray(self.healthy_ct)
        img.CopyInformation(self.seg)
        return img


def _add(timing: dict[str, float], key: str, seconds: float) -> None:
    timing[key] = timing.get(key, 0.0) + seconds
