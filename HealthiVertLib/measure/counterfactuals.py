"""Ordinal counterfactuals: a pseudo-healthy body shown as it would look at grade 0, 1, 2, 3.

The pseudo-healthy body (the engine's prediction, in the target's local frame) is compressed by
the fracture simulator's model (``fracture_model``) with the fracture type that matches the
observed loss pattern (:func:`counterfactual_kind`) and the losses of ``COUNTERFACTUAL_LOSSES``,
calibrated on the 1 mm local grid (:func:`counterfactuals`). :class:`CounterfactualSeries` puts
them onto the input grid, one label map per grade (``healthivert grade --counterfactuals``).
Research use only, not for diagnosis.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import SimpleITK as sitk

from ..geometry.body import VertebralBody, footprint_of
from .heights import THIRDS, measure
from ..geometry.straighten import block_resampler
from ..io.jsonable import rounded
from .fracture_model import AFFECTED_REGION, body_columns, calibrate


COUNTERFACTUAL_LOSSES = {0: 0.0, 1: 0.22, 2: 0.32, 3: 0.5}


# ---------------------------------------------------------------------------------- counterfactuals


def counterfactual_kind(rhlv: Mapping[str, float]) -> str:
    """The fracture type matching an observed loss pattern: where the loss is largest."""
    thirds = {t: float(rhlv.get(t) or 0.0) for t in THIRDS}
    if max(thirds.values()) - min(thirds.values()) < 0.08:
        return "crush"
    worst = max(thirds, key=thirds.get)
    return {"anterior": "wedge", "middle": "biconcave"}.get(worst, "crush")


def counterfactuals(
    target: VertebralBody, healthy_occupancy: np.ndarray, kind: str, losses: Mapping[int, float] = COUNTERFACTUAL_LOSSES,
    seed: int = 0,
) -> dict[int, tuple[np.ndarray, dict[str, float]]]:
    """The pseudo-healthy body compressed to each grade: {grade: (occupancy, RHLV vs the healthy body)}.

    The same compression model as ``simulate_fracture``, applied on the target's 1 mm local grid
    (no resampling to the input grid), calibrated on the affected region of ``kind``.
    """
    block = target.block
    fp = footprint_of(healthy_occupancy, block) or target.footprint
    cols = body_columns(healthy_occupancy, block, fp, None, seed)
    h_ref = healthy_occupancy.sum(axis=0) * block.spacing

    def as_body(occ: np.ndarray) -> VertebralBody:
        return VertebralBody(target.label, target.frame, block, occ, True, footprint_of(occ, block) or fp, target.level)

    out = {}
    for grade, loss in sorted(losses.items()):
        if loss <= 0:
            occ = healthy_occupancy.astype(np.float32)
            out[grade] = (occ, measure(as_body(occ), healthy_occupancy).rhlv)
            continue
        field, rhlv, _ = calibrate(
            kind, loss, cols, block, h_ref, fp,
            lambda fld: measure(as_body(fld.apply_to_occupancy(healthy_occupancy)), healthy_occupancy).rhlv,
        )
        out[grade] = (field.apply_to_occupancy(healthy_occupancy), rhlv)
    return out


COUNTERFACTUAL_FILE = "counterfactual_grade{grade}_label.nii.gz"


class CounterfactualSeries:
    """Ordinal counterfactuals of graded vertebrae: each one as it would look at grade 0, 1, 2, 3.

    For every vertebra the pseudo-healthy body (the engine's prediction, in the target's local
    frame) is compressed by the simulator's model (``counterfactuals``) with the fracture type that
    matches the observed loss pattern (``counterfactual_kind``) and the losses of
    ``COUNTERFACTUAL_LOSSES``. The bodies go onto the input grid as one label map per grade
    (``COUNTERFACTUAL_FILE``; grade 0 is the pseudo-healthy body), with the vertebra's label
    value; one file per grade because the four bodies of a vertebra overlap.
    """

    def __init__(self, seg: sitk.Image, volumes: bool = True):
        self.seg = seg
        shape = seg.GetSize()[::-1]
        self.arrays = {g: np.zeros(shape, np.uint16) for g in COUNTERFACTUAL_LOSSES} if volumes else None

    def add(self, label: int, body: VertebralBody, healthy: np.ndarray, rhlv: Mapping[str, float], views=None) -> dict:
        """Compute one vertebra's series; store its volumes and mid-sagittal slices (``views``).

        Returns the ``report.json`` entry: {"kind", "grades": {grade: {"loss", "file", "rhlv"}}}.
        """
        kind = counterfactual_kind(rhlv)
        series = counterfactuals(body, healthy, kind)
        iv = int(np.argmin(np.abs(body.block.axis(2) - body.footprint.v_center)))
        if views is not None:
            views.sagittal_counterfactuals = {g: occ[:, :, iv] >= 0.5 for g, (occ, _) in series.items()}
        if self.arrays is not None:
            for g, (occ, _) in series.items():
                self._paint(self.arrays[g], label, body, occ)
        grades = {
            str(g): {"loss": COUNTERFACTUAL_LOSSES[g], "file": COUNTERFACTUAL_FILE.format(grade=g),
                     "rhlv": {k: rounded(v) for k, v in r.items()}}
            for g, (_, r) in series.items()
        }
        return {"kind": kind, "affected_region": AFFECTED_REGION[kind], "grades": grades}

    def _paint(self, array: np.ndarray, label: int, body: VertebralBody, occ: np.ndarray) -> None:
        grid = block_resampler(self.seg, body.frame, body.block)
        if grid is None:
            return
        lo, hi, back = grid
        mask = back(occ) >= 0.5
        view = array.transpose(2, 1, 0)[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        view[mask] = label

    def images(self) -> dict[str, sitk.Image]:
        """File name -> label map on the input grid, one per grade (empty when volumes were off)."""
        out = {}
        for g, arr in (self.arrays or {}).items():
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(self.seg)
            out[COUNTERFACTUAL_FILE.format(grade=g)] = img
        return out
