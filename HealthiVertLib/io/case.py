"""One case's validated inputs: :class:`Case` and :func:`load_case`.

:func:`load_case` reads the label map (and optionally the CT and a body-subregion map), checks
that the grids agree, that the label numbering is known (VerSe, TotalSegmentator, a
``dataset.json``) and that vertebrae are present; input files are only read, never modified.
The CT may be a folder holding a DICOM series and the labels a DICOM SEG (``io.dicom``); their
identity is kept in :attr:`Case.dicom` for the DICOM outputs, and the same checks apply.
:func:`case_name_from_path` names a case after its label file (or its folder for generic names).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from ..errors import HealthiVertError
from .dicom import DicomSeries, is_dicom_input, read_dicom_ct, read_dicom_seg
from .images import (
    check_same_grid,
    image_extension,
    label_centroids,
    label_voxel_counts,
    read_ct,
    read_label_map,
)
from .labels import LabelScheme, body_labels, resolve_scheme

# --- one case -------------------------------------------------------------------------------

_NAME_SUFFIXES = (
    "_segmentation", "-segmentation", "_labels", "-labels", "_label", "-label",
    "_mask", "-mask", "_msk", "-msk", "_seg", "-seg", ".seg",
)  # fmt: skip
_GENERIC_NAMES = {"seg", "segmentation", "mask", "msk", "labels", "label", "vertebrae", "total"}


def case_name_from_path(path: str | os.PathLike) -> str:
    """Case name from a label file: ``sub-01_seg.nii.gz`` -> ``sub-01``; ``case7/seg.nii.gz`` -> ``case7``."""
    path = Path(path)
    extension = image_extension(path) or path.suffix
    stem = path.name[: len(path.name) - len(extension)] if extension else path.name
    for suffix in _NAME_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem.lower() in _GENERIC_NAMES and path.parent.name:
        return path.parent.name
    return stem


@dataclass
class Case:
    """The validated inputs of one case, all on the grid of ``seg``."""

    name: str
    seg: sitk.Image
    ct: sitk.Image | None
    subregions: sitk.Image | None
    scheme: LabelScheme
    paths: dict[str, str | None] = field(default_factory=dict)
    dicom: dict[str, DicomSeries] = field(default_factory=dict)  # "ct", "seg": the DICOM series read, if any


def load_case(
    seg_path: str | os.PathLike,
    ct_path: str | os.PathLike | None = None,
    subregions_path: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    name: str | None = None,
    series: Sequence[str] | None = None,
) -> Case:
    """Read and check one case: grids agree, the label numbering is known, vertebrae are present.

    ``labels`` is the numbering ("verse", "totalseg", a dataset.json path; None or "auto" detects it).
    ``ct_path`` may be a folder holding a DICOM series and ``seg_path`` a DICOM SEG (file or folder);
    ``series`` lists the SeriesInstanceUIDs to choose when such a folder holds several series.
    Input files are only read, never modified.
    """
    dicom: dict[str, DicomSeries] = {}
    seg_is_dicom = is_dicom_input(seg_path)
    seg = None if seg_is_dicom else read_label_map(seg_path, "vertebra labels")  # first, as before DICOM
    ct = None
    if ct_path is not None and is_dicom_input(ct_path):
        ct, dicom["ct"] = read_dicom_ct(ct_path, series)
    elif ct_path is not None:
        ct = read_ct(ct_path)
    if seg_is_dicom:
        if labels not in (None, "auto", "verse"):
            raise HealthiVertError(
                f"--labels {labels} does not apply to the DICOM SEG '{seg_path}': its segments name their vertebrae "
                "(SNOMED CT codes or labels). Leave out --labels."
            )
        seg, dicom["seg"], _ = read_dicom_seg(seg_path, series, reference=ct)
        labels = "verse"
    seg_name = f"vertebra labels '{seg_path}'"
    if ct is not None:
        check_same_grid(ct, seg, (f"CT '{ct_path}'", seg_name))
    subregions = None
    if subregions_path is not None:
        subregions = read_label_map(subregions_path, "subregion labels")
        check_same_grid(seg, subregions, (seg_name, f"subregion labels '{subregions_path}'"))
        body_labels(label_voxel_counts(subregions), source=os.fspath(subregions_path))
    superior_mm = {label: float(centroid[2]) for label, centroid in label_centroids(seg).items()}
    scheme = resolve_scheme(labels, superior_mm, source=os.fspath(seg_path))
    paths = {
        "seg": os.fspath(seg_path),
        "ct": None if ct_path is None else os.fspath(ct_path),
        "subregions": None if subregions_path is None else os.fspath(subregions_path),
    }
    return Case(name or case_name_from_path(seg_path), seg, ct, subregions, scheme, paths, dicom)
