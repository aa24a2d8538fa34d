"""Stability of grades under the mask differences automatic segmentations make.

Users feed label maps from TotalSegmentator or nnU-Net, whose vertebra boundaries differ from a
radiologist's by about a voxel. A grade that flips under such a difference cannot be trusted.
:func:`grade_flips` grades every vertebra of each case with the default engine and grader as a
user gets them, then again after each perturbation of the label map (``PERTURBATIONS``):

* ``erode`` / ``dilate``: every vertebra label shrunk / grown by one voxel (face neighbours; a
  background voxel next to two labels joins the larger value);
* ``boundary_1`` / ``boundary_2``: each boundary voxel of a vertebra flipped (removed from the
  label, or an outside neighbour added) where a smooth random field (Gaussian, 3-voxel scale)
  exceeds a threshold, so about a third of the boundary moves in patches, as segmentations differ
  (two seeds).

It reports the share of vertebrae whose grade did not change, and every flip. Research use only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.case import Case
from .records import GRADED

PERTURBATIONS = ("erode", "dilate", "boundary_1", "boundary_2")
NOISE_SIGMA_VOXELS = 3.0
NOISE_QUANTILE = 0.67  # boundary voxels where the smooth field is above this quantile move


@dataclass
class Flip:
    """A vertebra whose grade changed under a perturbation."""

    subject: str
    level: str
    perturbation: str
    before: int | None
    after: int | None
    loss_before: float | None  # largest point loss (fraction)
    loss_after: float | None


def _faces() -> np.ndarray:
    return ndimage.generate_binary_structure(3, 1)


def perturb_labels(labels: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A perturbed copy of an integer label array (``kind`` in ``PERTURBATIONS``)."""
    out = labels.copy()
    lo = ndimage.minimum_filter(labels, footprint=_faces(), mode="nearest")
    hi = ndimage.maximum_filter(labels, footprint=_faces(), mode="nearest")
    inner = (labels > 0) & ((lo != labels) | (hi != labels))  # a label voxel next to something else
    outer = (labels == 0) & (hi > 0)  # a background voxel next to a label
    if kind == "erode":
        out[inner] = 0
    elif kind == "dilate":
        out[outer] = hi[outer]
    elif kind.startswith("boundary_"):
        rng = np.random.default_rng(seed + int(kind.rsplit("_", 1)[1]))
        field = ndimage.gaussian_filter(rng.standard_normal(labels.shape), NOISE_SIGMA_VOXELS)
        moving = field > np.quantile(field, NOISE_QUANTILE)
        out[inner & moving] = 0
        field2 = ndimage.gaussian_filter(rng.standard_normal(labels.shape), NOISE_SIGMA_VOXELS)
        grow = outer & (field2 > np.quantile(field2, NOISE_QUANTILE))
        out[grow] = hi[grow]
    else:
        raise ValueError(f"unknown perturbation {kind!r}; use one of {PERTURBATIONS}")
    return out


def perturbed_case(case: Case, kind: str, seed: int = 0) -> Case:
    """``case`` with its vertebra label map perturbed (CT and subregions unchanged)."""
    arr = sitk.GetArrayFromImage(case.seg)
    img = sitk.GetImageFromArray(perturb_labels(arr, kind, seed).astype(arr.dtype))
    img.CopyInformation(case.seg)
    return replace(case, seg=img)


def _grades(case: Case, levels: Sequence[str]) -> dict[str, tuple[int | None, float | None]]:
    from ..pipeline.case import grade_case

    out = {}
    for v in grade_case(case, list(levels), volumes=False).vertebrae:
        loss = max(v.point_loss.values()) if v.status == GRADED and v.point_loss else None
        out[v.level] = (v.grade if v.status == GRADED else None, loss)
    return out


def grade_flips(cases: dict[str, Case], levels: dict[str, list[str]], seed: int = 0,
                progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Grades before and after each perturbation; the stable share per perturbation and overall, and the flips.

    ``levels``: subject -> the levels to grade (the radiologist-graded ones)."""
    progress = progress or (lambda k, n, message: None)
    flips: list[Flip] = []
    per_kind = {k: {"n": 0, "stable": 0} for k in PERTURBATIONS}
    steps, done = len(cases) * (1 + len(PERTURBATIONS)), 0
    for subject, case in cases.items():
        base = _grades(case, levels[subject])
        done += 1
        progress(done, steps, f"{subject}: as segmented")
        for kind in PERTURBATIONS:
            after = _grades(perturbed_case(case, kind, seed), levels[subject])
            for level, (grade, loss) in base.items():
                if grade is None:
                    continue
                new, new_loss = after.get(level, (None, None))
                per_kind[kind]["n"] += 1
                if new == grade:
                    per_kind[kind]["stable"] += 1
                else:
                    flips.append(Flip(subject, level, kind, grade, new, loss, new_loss))
            done += 1
            progress(done, steps, f"{subject}: {kind}")
    n = sum(k["n"] for k in per_kind.values())
    stable = sum(k["stable"] for k in per_kind.values())
    for k in per_kind.values():
        k["share_stable"] = k["stable"] / k["n"] if k["n"] else float("nan")
    return {"per_perturbation": per_kind, "n": n, "share_stable": stable / n if n else float("nan"),
            "flips": [f.__dict__ for f in flips], "seed": seed}
