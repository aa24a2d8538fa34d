"""Simulated osteoporotic compression fractures with exact ground truth (research use only).

``simulate_fracture`` takes a case (vertebra labels, optionally CT and a body-subregion map) and
collapses the vertebral body of one level into a ``wedge``, ``biconcave`` or ``crush`` fracture of
a chosen Relative Height Loss. The pre-fracture shape is kept as truth, so pseudo-healthy engines
and graders can be measured against it column by column.

Physics (all in the vertebra's rigid local frame of ``body.py``: s caudal, u posterior, v left, mm)

* **Which tissue moves.** Only the vertebral body (from the subregion map when given, otherwise the
  geometric body of ``body.extract_body``) and the disc(s) touching its collapsing endplate(s).
  Posterior elements, neighbouring vertebrae and everything outside the body's columns are unchanged.
* **How it moves.** Each column (u, v) of the body, between its superior endplate ``top`` and
  inferior endplate ``bot`` (0.5 iso-surface of the label, sub-voxel), shortens by ``D = f(u, v) H``
  with ``H = bot - top``. ``wedge`` and ``crush``: the superior endplate moves caudally towards the
  fixed inferior endplate; ``biconcave``: both endplates move towards the column's mid-plane by D/2.
  Within the body the column is compressed uniformly (factor ``k = 1 - f``).
* **What fills the vacated space.** The adjacent disc stays attached to the neighbour and stretches
  into it: a layer of the disc of thickness T (80 % of the gap to the next labelled structure,
  1-10 mm) is stretched over T + D. The vacated space therefore takes the disc's labels (background
  in a vertebra map, the disc label 2 in a TotalSegmentator ``vertebrae_body`` map) and the disc's
  CT values. Stretching smooths the disc's noise, so seeded Gaussian noise restores its variance:
  sigma = disc noise (1.4826 MAD) * sqrt(1 - T / (T + D)).
* **Compacted bone is denser.** Bone mineral is conserved along a column: CT values of body voxels
  above a 30 HU marrow/soft-tissue baseline are scaled by 1 / k, capped at the 99.5th percentile of
  the vertebra's original HU (bone cannot become denser than its own cortex).
* **Resampling.** Backward mapping: each output voxel of the input grid is mapped to the point it
  came from (sub-voxel, along the frame's s axis). Labels take the label of the nearest input voxel
  (so every map stays consistent), CT is interpolated linearly. Voxels that do not move are copied
  bit for bit.
* **Profiles** f(a, b) (a = 0 anterior .. 1 posterior edge, b = -1 right .. +1 left edge):
  ``wedge`` cos^2(pi a / 2) (maximal anteriorly, smoothly 0 at the posterior wall); ``biconcave``
  sin^2(pi a) cos(pi b / 2) (central cave-in of both endplates, walls intact); ``crush`` uniform.
  Each is multiplied by a seeded, smooth (4 mm) endplate irregularity of +-15 % (less as f nears
  its 90 % limit), tapered to 0 over 3 mm outside the body, and the travel is dithered by +-half an
  input voxel per column where the loss exceeds 5 % (otherwise flat endplates on coarse grids would
  change whole voxel layers at once and some losses could not be reached). The amplitude is
  calibrated so that the RHLV of the affected region - anterior third (wedge), middle third
  (biconcave), all central columns (crush) - measured by ``heights.measure`` on the result,
  resampled on the input grid and extracted again, against the pre-fracture body, equals ``loss``.

Why the earlier test compressor under-measured a 30 % wedge (anterior third 22.3 % on the 3 mm
sample, 22.2 % on the 1.5 mm TPTBox L3, measured against the pre-fracture body in the same frame):
its ``loss`` was the peak of a profile ``1 - 1.5 a``, whose mean over the anterior third is 0.75 of
the peak (22.5 %); the definition, not the measurement, explains 7.5 of the 7.7-7.8 points (deleting
whole voxels adds ~0.2). Here ``loss`` is the measured RHLV itself, so truth and measurement agree.

The truth (``SimulatedCase.truth``, written as ``truth.json``) is described in the README section
"Simulating fractures". Simulated data are synthetic; anything fitted on them must say so.
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
        return VertebralBody(target.label, target.frame, block, occ, True, footprint_of(occ, block) or fp)

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
