"""Simulated osteoporotic compression fractures with exact ground truth (research use only).

``simulate_fracture`` takes a case (vertebra labels, optionally CT and a body-subregion map) and
collapses the vertebral body of one level into a ``wedge``, ``biconcave`` or ``crush`` fracture of
a chosen Relative Height Loss. The pre-fracture shape is kept as truth, so pseudo-healthy engines
and graders can be measured against it column by column.

The compression model (which tissue moves, how, the profiles and the calibration of the loss) is
described in ``measure.fracture_model``; this module applies it on the input grid: backward
mapping of labels (nearest) and CT (linear), denser compacted bone, noise in the stretched disc,
and the truth.

The truth (``SimulatedCase.truth``, written as ``truth.json``) is described in the README section
"Simulating fractures". Simulated data are synthetic; anything fitted on them must say so.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import HealthiVertError
from ..geometry.body import VertebralBody, build_body, extract_body
from ..geometry.straighten import LocalFrame, array_ijk, block_to_index_affine, index_box
from ..io import labels as lab
from ..io.case import Case
from ..io.files import write_image_atomic, write_text_atomic
from ..io.images import check_same_grid, label_centroids
from ..io.jsonable import rounded
from ..measure.fracture_model import (
    AFFECTED_REGION,
    FRACTURE_TYPES,
    MAX_LOSS,
    CompressionField,
    body_columns,
    calibrate,
)
from ..measure.grading import genant_rule
from ..measure.heights import measure, own_heights

MARROW_BASELINE_HU = 30.0
DENSITY_CAP_PERCENTILE = 99.5
TRUTH_FORMAT = "healthivert-simulated-fracture/1"


@dataclass
class SimulatedCase:
    """A case with simulated fracture(s) on the input grid, and its truth.

    ``seg``: vertebra label map, fracture applied. ``ct``: CT, fracture applied (None for mask-only).
    ``body``: body-subregion map (Kirschke 49/50 or TotalSegmentator ``vertebrae_body`` 1/2) deformed
    the same way, or None. ``truth``: JSON-ready truth; it accumulates over repeated fractures.
    """

    seg: sitk.Image
    ct: sitk.Image | None
    body: sitk.Image | None
    truth: dict


def genant_grade(loss: float) -> int:
    """Genant grade of a height loss (fraction): <20 % 0, 20-25 % 1, 25-40 % 2, >=40 % 3."""
    if loss is None or not math.isfinite(float(loss)):
        raise HealthiVertError(f"cannot grade a height loss of {loss!r}: it must be a finite fraction")
    return genant_rule({"overall": max(float(loss), 0.0)})[0]


# ---------------------------------------------------------------------------------- the input grid


def _moving_box(field: CompressionField, image: sitk.Image, matrix: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index box of the input grid around the part of the block that can move."""
    moving = field.travel > 1e-6
    if not moving.any():
        return np.zeros(3, int), np.zeros(3, int)
    cols = field.cols
    s_lo = float((cols.top - cols.disc_up)[moving].min()) - 1.0
    s_hi = float((cols.bot + cols.disc_down)[moving].max()) + 1.0
    k0 = max(int(np.floor(field.block.index_of(np.array([s_lo, 0, 0]))[0])), 0)
    k1 = min(int(np.ceil(field.block.index_of(np.array([s_hi, 0, 0]))[0])), field.block.shape[0] - 1)
    rows, colv = np.flatnonzero(moving.any(axis=1)), np.flatnonzero(moving.any(axis=0))
    lo_b = np.array([k0, max(rows[0] - 1, 0), max(colv[0] - 1, 0)], float)
    hi_b = np.array([k1 + 1, rows[-1] + 2, colv[-1] + 2], float)
    return index_box(image, matrix, offset, lo_b, hi_b)


@dataclass
class _GridMap:
    """Output voxels of the input grid that move, and where each comes from."""

    ijk: np.ndarray  # (N, 3) int, output voxels
    src: np.ndarray  # (N, 3) float, continuous source index
    density: np.ndarray  # (N,)
    stretch: np.ndarray  # (N,)


def _grid_map(field: CompressionField, image: sitk.Image, frame: LocalFrame) -> _GridMap:
    block = field.block
    matrix, offset = block_to_index_affine(image, frame, block)
    lo, hi = _moving_box(field, image, matrix, offset)
    if np.any(hi <= lo):
        return _GridMap(np.zeros((0, 3), int), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    grid = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij"), -1).reshape(-1, 3)
    bidx = (grid - offset) @ np.linalg.inv(matrix).T  # continuous block index (s, u, v)
    f = field.sample(bidx[:, 1], bidx[:, 2])
    s_out = block.start[0] + block.spacing * bidx[:, 0]
    src_s, density, stretch = field.backward(s_out, f)
    moved = np.abs(src_s - s_out) > 1e-6
    step = matrix[:, 0] / block.spacing  # index change per mm along s
    src = grid[moved] + (src_s - s_out)[moved, None] * step[None]
    return _GridMap(grid[moved], src, density[moved], stretch[moved])


def _nearest(arr_ijk: np.ndarray, src: np.ndarray) -> np.ndarray:
    idx = np.clip(np.rint(src).astype(int), 0, np.array(arr_ijk.shape) - 1)
    return arr_ijk[idx[:, 0], idx[:, 1], idx[:, 2]]


def _resample_labels(image: sitk.Image, gm: _GridMap) -> sitk.Image:
    arr = sitk.GetArrayFromImage(image)  # (k, j, i) copy
    view = arr.transpose(2, 1, 0)
    src_vals = _nearest(np.ascontiguousarray(array_ijk(image)), gm.src)
    view[gm.ijk[:, 0], gm.ijk[:, 1], gm.ijk[:, 2]] = src_vals
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(image)
    return out


def _resample_ct(ct: sitk.Image, seg: sitk.Image, label: int, gm: _GridMap, seed: int) -> sitk.Image:
    ct_ijk = array_ijk(ct).astype(np.float32)
    seg_ijk = array_ijk(seg)
    values = ndimage.map_coordinates(ct_ijk, gm.src.T, order=1, mode="nearest")
    bone = _nearest(seg_ijk, gm.src) == label
    vert = ct_ijk[seg_ijk == label]
    cap = float(np.percentile(vert, DENSITY_CAP_PERCENTILE)) if vert.size else 1000.0
    dense = bone & (gm.density > 1)
    boosted = values + np.maximum(values - MARROW_BASELINE_HU, 0.0) * (gm.density - 1.0)
    values = np.where(dense, np.maximum(np.minimum(boosted, cap), values), values)
    disc = gm.stretch > 1
    if disc.any():
        orig = ndimage.map_coordinates(ct_ijk, gm.src[disc].T, order=0, mode="nearest")
        sigma = 1.4826 * float(np.median(np.abs(orig - np.median(orig))))
        rng = np.random.default_rng([seed, 1])
        values[disc] += rng.standard_normal(int(disc.sum())) * sigma * np.sqrt(1.0 - 1.0 / gm.stretch[disc])
    arr = sitk.GetArrayFromImage(ct)
    view = arr.transpose(2, 1, 0)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    view[gm.ijk[:, 0], gm.ijk[:, 1], gm.ijk[:, 2]] = values.astype(arr.dtype)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(ct)
    return out


# ---------------------------------------------------------------------------------- truth


def _height_map_truth(body: VertebralBody, heights: np.ndarray) -> dict[str, Any]:
    """The pre-fracture column heights, cropped to the filled columns, with their local grid."""
    filled = heights > 0
    rows, cols = np.flatnonzero(filled.any(axis=1)), np.flatnonzero(filled.any(axis=0))
    crop = heights[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    fp = body.footprint
    return {
        "frame": {"origin_lps": body.frame.origin.tolist(), "axes_lps": body.frame.axes.tolist(),
                  "axes": "rows: s (caudal), u (posterior), v (left), unit vectors in LPS"},
        "u0_mm": float(body.block.axis(1)[rows[0]]),
        "v0_mm": float(body.block.axis(2)[cols[0]]),
        "spacing_mm": float(body.block.spacing),
        "shape": [int(crop.shape[0]), int(crop.shape[1])],
        "footprint": {"u_anterior": fp.u_anterior, "u_posterior": fp.u_posterior,
                      "v_center": fp.v_center, "v_half_width": fp.v_half_width},
        "heights_mm": np.round(crop, 2).tolist(),
    }


def truth_heights_on(body: VertebralBody, entry: Mapping[str, Any]) -> np.ndarray:
    """Pre-fracture column heights of a truth entry (``truth["fractures"][level]``) on ``body``'s columns.

    The stored map is sampled at the positions of ``body``'s column axes through its frame origin,
    mapped into the frame the truth was recorded in (linear interpolation; 0 outside).
    """
    m = entry["pre_fracture"]["column_heights"]
    frame = LocalFrame(np.array(m["frame"]["origin_lps"]), np.array(m["frame"]["axes_lps"]))
    heights = np.array(m["heights_mm"], dtype=float)
    u, v = np.meshgrid(body.block.axis(1), body.block.axis(2), indexing="ij")
    world = body.frame.to_world(np.stack([np.zeros_like(u), u, v], axis=-1))
    local = frame.to_local(world)
    iu = (local[..., 1] - m["u0_mm"]) / m["spacing_mm"]
    iv = (local[..., 2] - m["v0_mm"]) / m["spacing_mm"]
    return ndimage.map_coordinates(heights, [iu, iv], order=1, mode="constant", cval=0.0)


# ---------------------------------------------------------------------------------- public API


def _check_request(kind: str, loss: float) -> tuple[str, float]:
    k = str(kind).strip().lower()
    if k not in FRACTURE_TYPES:
        raise HealthiVertError(f"Unknown fracture type '{kind}'; use one of {', '.join(FRACTURE_TYPES)}.")
    try:
        value = float(loss)
    except (TypeError, ValueError):
        raise HealthiVertError(f"The height loss '{loss}' is not a number; give a fraction such as 0.35.") from None
    if not (math.isfinite(value) and 0 < value <= MAX_LOSS):
        raise HealthiVertError(
            f"The height loss {loss} is outside (0, {MAX_LOSS}]; give a fraction such as 0.35 for 35 %."
        )
    return k, value


def _case(seg: sitk.Image, ct, body, labels) -> Case:
    if ct is not None:
        check_same_grid(seg, ct, ("vertebra labels", "CT"))
    if body is not None:
        check_same_grid(seg, body, ("vertebra labels", "body-subregion labels"))
        values = np.unique(sitk.GetArrayViewFromImage(body)).tolist()
        lab.body_labels(values, source="body-subregion map")
    superior = {k: float(c[2]) for k, c in label_centroids(seg).items()}
    if not superior:
        raise HealthiVertError("The vertebra label map contains no labels.")
    scheme = lab.resolve_scheme(labels, superior)
    return Case("simulation", seg, ct, body, scheme, {})


def _bodies(case: Case):
    from ..geometry.spine import SpineBodies, spine_levels

    levels = spine_levels(case)
    return levels, SpineBodies(case, levels)


def simulate_fracture(
    seg: sitk.Image,
    *,
    vertebra: str,
    kind: str,
    loss: float,
    ct: sitk.Image | None = None,
    body: sitk.Image | None = None,
    labels: str | None = None,
    seed: int = 0,
    truth: dict | None = None,
) -> SimulatedCase:
    """Collapse the vertebral body of ``vertebra`` into a ``kind`` fracture of RHLV ``loss``.

    ``loss`` (0 < loss <= 0.8) is the RHLV of the affected region of the result against the
    pre-fracture body, as ``measure.heights.measure`` defines it: the anterior third for ``wedge``, the
    middle third for ``biconcave``, all central columns for ``crush``. On a level fractured
    before (its entry in ``truth``), ``loss`` is relative to its current shape and the truth keeps
    the original pre-fracture heights. ``labels``: the numbering (None detects it). Inputs are
    not modified; pass the previous ``truth`` to accumulate several fractures.
    """
    from ..geometry.spine import resolve_targets

    kind, loss = _check_request(kind, loss)
    case = _case(seg, ct, body, labels)
    levels, bodies = _bodies(case)
    target = resolve_targets(levels, [vertebra])[0]
    if not lab.is_gradable(target.level):
        raise HealthiVertError(f"{target.level} is outside T1-L6; fractures are simulated on thoracic and lumbar vertebrae only.")
    pre = bodies.get(target) if not target.fragment else None
    if pre is None or pre.footprint is None:
        raise HealthiVertError(f"{target.level} has no measurable vertebral body in the label map (only a fragment is present).")
    if not pre.complete:
        raise HealthiVertError(
            f"{target.level} is cut by the field of view (its body touches the edge of the image); a fracture "
            "needs the whole vertebral body. Choose a level that is entirely in the image."
        )
    truth = json.loads(json.dumps(truth)) if truth else _new_truth(case, levels)
    previous = truth["fractures"].get(target.level)

    seg_ijk = bodies.seg_ijk
    matrix, offset = block_to_index_affine(seg, pre.frame, pre.block)
    sampled = ndimage.affine_transform(seg_ijk, matrix, offset, output_shape=pre.block.shape, order=0, cval=0)
    barrier = (sampled != 0) & (sampled != target.label)
    cols = body_columns(pre.occupancy, pre.block, pre.footprint, barrier, seed, voxel_mm=max(seg.GetSpacing()))
    body_values = sorted(lab.body_labels(np.unique(sitk.GetArrayViewFromImage(body)).tolist())) if body is not None else None

    def deformed(field: CompressionField):
        gm = _grid_map(field, seg, pre.frame)
        new_seg = _resample_labels(seg, gm)
        new_body = _resample_labels(body, gm) if body is not None else None
        return gm, new_seg, new_body

    def post_body(new_seg: sitk.Image, new_body: sitk.Image | None) -> VertebralBody:
        mask = np.isin(array_ijk(new_body), body_values) if new_body is not None else None
        return extract_body(target.label, pre.frame, new_seg, np.ascontiguousarray(array_ijk(new_seg)), target.bbox, mask)

    pre_heights = pre.heights()
    reference_occupancy = pre.occupancy if previous is None else build_body(pre, truth_heights_on(pre, previous))

    def rhlv_of(field: CompressionField) -> dict[str, float]:
        _, new_seg, new_body = deformed(field)
        return measure(post_body(new_seg, new_body), pre.occupancy).rhlv

    field, _, history = calibrate(kind, loss, cols, pre.block, pre_heights, pre.footprint, rhlv_of)
    gm, new_seg, new_body = deformed(field)
    new_ct = _resample_ct(ct, seg, target.label, gm, seed) if ct is not None else None
    after = post_body(new_seg, new_body)
    m_now = measure(after, pre.occupancy)  # against the shape just before this fracture
    m_true = measure(after, reference_occupancy)  # against the original pre-fracture shape
    entry = previous or {
        "level": target.level,
        "label": target.label,
        "verse_label": lab.verse_label(target.level),
        "pre_fracture": {
            "heights_mm": {k: rounded(v) for k, v in own_heights(pre).original_mm.items()},
            "column_heights": _height_map_truth(pre, pre_heights),
        },
        "applied": [],
    }
    entry["applied"].append({
        "kind": kind, "requested_loss": loss, "seed": int(seed),
        "measured_loss_vs_previous_shape": {k: rounded(v) for k, v in m_now.rhlv.items()},
        "amplitude": rounded(field.amplitude),
        "calibration": [[rounded(a), rounded(g)] for a, g in history],
        "max_endplate_travel_mm": rounded(float(field.travel.max()), 2),
    })
    entry.update({
        "kind": kind,
        "requested_loss": loss,
        "affected_region": AFFECTED_REGION[kind],
        "seed": int(seed),
        "rhlv": {k: rounded(v) for k, v in m_true.rhlv.items()},
        "genant_grade": genant_rule(m_true.rhlv)[0],
        "genant_grade_requested": genant_grade(loss),
        "post_fracture": {"heights_mm": {k: rounded(v) for k, v in m_true.original_mm.items()}},
    })
    truth["fractures"][target.level] = entry
    truth["healthy_levels"] = [lv for lv in truth["healthy_levels"] if lv != target.level]
    return SimulatedCase(seg=new_seg, ct=new_ct, body=new_body, truth=truth)


def _new_truth(case: Case, levels) -> dict[str, Any]:
    from .. import __version__

    healthy, incomplete = [], []
    size = np.array(case.seg.GetSize())
    for v in levels:
        if not lab.is_gradable(v.level):
            continue
        cut = v.fragment or np.any(v.bbox[0] <= 0) or np.any(v.bbox[1] >= size)
        (incomplete if cut else healthy).append(v.level)
    return {
        "format": TRUTH_FORMAT,
        "healthivert_version": __version__,
        "notice": "Simulated fractures (synthetic ground truth); research use only, not for diagnosis.",
        "label_scheme": case.scheme.name,
        "coordinate_system": "LPS",
        "units": {"heights": "mm", "rhlv": "fraction"},
        "levels_present": [v.level for v in levels],
        "healthy_levels": healthy,
        "incomplete_levels": incomplete,
        "fractures": {},
    }


def write_simulated(case: SimulatedCase, out_dir: str | os.PathLike) -> None:
    """Write ``seg.nii.gz``, ``ct.nii.gz`` (if CT), ``body.nii.gz`` (if body) and ``truth.json``, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in (("seg.nii.gz", case.seg), ("ct.nii.gz", case.ct), ("body.nii.gz", case.body)):
        if image is not None:
            write_image_atomic(image, out / name)
    text = json.dumps(case.truth, indent=1)
    text = re.sub(r"\[\s*([-0-9.eE,\s]+?)\s*\]", lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text)
    write_text_atomic(out / "truth.json", text + "\n")
