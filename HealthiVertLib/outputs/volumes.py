"""Volumes of one graded case on the input grid: height loss, pseudo-healthy and original bodies, CT.

``VOLUME_FILES`` names each NIfTI file and its pixel type; :func:`write_volumes` writes those a
result holds (the pseudo-healthy CT only for engines that synthesise one) and the counterfactual
maps, atomically; :func:`is_volume_name` recognises every name it writes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


from ..io.files import write_image_atomic
from ..measure.counterfactuals import COUNTERFACTUAL_FILE
from ..pipeline.records import CaseResult


# output name -> (CaseResult attribute, pixel type)
VOLUME_FILES: dict[str, tuple[str, str]] = {
    "height_loss.nii.gz": ("loss_volume", "float32"),
    "pseudo_healthy_body_label.nii.gz": ("healthy_label_volume", "uint16"),
    "original_body_label.nii.gz": ("original_body_volume", "uint16"),
    "pseudo_healthy_ct.nii.gz": ("healthy_ct_volume", "hu"),  # int16 when the input CT holds whole HU, else float32
}
# counterfactual label maps of grade --counterfactuals, one per grade
COUNTERFACTUAL_NAME = re.compile(re.escape(COUNTERFACTUAL_FILE).replace(r"\{grade\}", r"\d+"))


def is_volume_name(name: str) -> bool:
    """True for a file name that :func:`write_volumes` writes (a volume or a counterfactual map)."""
    return name in VOLUME_FILES or COUNTERFACTUAL_NAME.fullmatch(name) is not None


# ----------------------------------------------------------------------------- volumes


def _write_volume(img: Any, path: Path, pixel: str) -> None:
    import SimpleITK as sitk

    if pixel == "hu":
        ptype = sitk.sitkInt16 if img.GetPixelID() == sitk.sitkInt16 else sitk.sitkFloat32
    else:
        ptype = sitk.sitkFloat32 if pixel == "float32" else sitk.sitkUInt16
    if img.GetPixelID() != ptype:
        img = sitk.Cast(img, ptype)
    write_image_atomic(img, path)


def write_volumes(result: CaseResult, out_dir: Path) -> dict[str, Path]:
    written = {}
    for name, (attr, pixel) in VOLUME_FILES.items():
        img = getattr(result, attr, None)
        if img is None:
            continue
        path = out_dir / name
        _write_volume(img, path, pixel)
        written[name] = path
    for name, img in (result.counterfactual_volumes or {}).items():  # grade --counterfactuals
        written[name] = out_dir / name
        _write_volume(img, written[name], "uint16")
    return written
