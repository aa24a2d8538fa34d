"""Shared fixtures: paths of the real test data and a minimal label-only fracture maker."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HealthiVertLib.cli import SAMPLE_DIR

DATA = Path(__file__).resolve().parents[1] / "Data"
SAMPLE_SEG = SAMPLE_DIR / "seg.nii.gz"
SAMPLE_CT = SAMPLE_DIR / "ct.nii.gz"
SAMPLE_BODY = SAMPLE_DIR / "vertebrae_body.nii.gz"
TPT = DATA / "tptbox"
TPT_CT = TPT / "sub-ct_label-22_ct.nii.gz"
TPT_SEG = TPT / "sub-ct_seg-vert_label-22_msk.nii.gz"
TPT_SUB = TPT / "sub-ct_seg-subreg_label-22_msk.nii.gz"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compress(seg: sitk.Image, label: int, kind: str, loss: float, scheme: str | None = None) -> sitk.Image:
    """Collapse the superior endplate of vertebra ``label`` (test helper, labels only).

    ``kind``: wedge (anterior loss ``loss``, tapering to none at 2/3 of the depth), biconcave
    (loss in the middle), crush (uniform). The removed voxels become background.
    """
    from HealthiVertLib.io import Case
    from HealthiVertLib.labels import resolve_scheme
    from HealthiVertLib.pipeline import _Bodies, spine_levels

    cents = {lab: 0.0 for lab in np.unique(sitk.GetArrayViewFromImage(seg)) if lab}
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(seg)
    sup = {int(lab): stats.GetCentroid(int(lab))[2] for lab in cents}
    case = Case("sim", seg, None, None, resolve_scheme(scheme, sup))
    levels = spine_levels(case)
    target = next(v for v in levels if v.label == label)
    body = _Bodies(case, levels).get(target)
    arr = sitk.GetArrayFromImage(seg)  # (k, j, i)
    kji = np.argwhere(arr == label)
    world = np.array([seg.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in kji])
    local = body.frame.to_local(world)
    idx = np.rint(body.block.index_of(local)).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(body.block.shape)), axis=1)
    idx = np.clip(idx, 0, np.array(body.block.shape) - 1)
    in_body = inside & (body.occupancy[idx[:, 0], idx[:, 1], idx[:, 2]] >= 0.5)
    h = body.heights()[idx[:, 1], idx[:, 2]]
    c = body.column_centres()[idx[:, 1], idx[:, 2]]
    a, _ = body.footprint.normalise(local[:, 1], local[:, 2])
    profile = {
        "wedge": np.clip(1 - 1.5 * a, 0, 1),
        "biconcave": np.clip(1 - 2 * np.abs(a - 0.5), 0, 1),
        "crush": np.ones_like(a),
    }[kind]
    remove = in_body & (local[:, 0] < c - h / 2 + loss * profile * h)
    out = arr.copy()
    k, j, i = kji[remove].T
    out[k, j, i] = 0
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(seg)
    return img


@pytest.fixture(scope="session")
def sample_seg() -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE_SEG))
