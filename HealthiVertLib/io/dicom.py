"""DICOM inputs: a CT series from a folder of DICOM files, and a DICOM SEG of vertebrae.

:func:`read_dicom_ct` reads one CT series of a folder (searched recursively) with SimpleITK/GDCM,
its identity (patient, study, series, frame of reference) read with pydicom into a
:class:`DicomSeries` that the DICOM outputs reference. Several series in the folder are refused in
one line listing them (``--series UID`` chooses); so are a gantry tilt, missing slices, irregular
slice spacing, mixed orientations or image sizes, two slices at one position and multi-frame files,
each with what was found: nothing is resampled behind the user's back.
:func:`read_dicom_seg` turns a DICOM SEG (e.g. TotalSegmentator's DICOM output) into a label map
in VerSe numbering, each segment's level read from its SNOMED CT type code or its label.
:func:`is_dicom_input` tells a DICOM input (a folder, or a file with the DICOM preamble) from an
image file. pydicom and highdicom are imported only here, inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import HealthiVertError
from .images import check_geometry
from .labels import level_from_name, verse_label
from .terminology import SCT_VERTEBRA, level_from_code

# modalities that are not images on a grid: never a candidate for --ct
NON_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "OT-SR"})
POSITION_TOLERANCE_MM = 1e-3  # two slices closer than this along the normal lie at one position
SPACING_TOLERANCE = 0.01  # relative deviation of a slice gap from the median gap still called regular
TILT_TOLERANCE_MM = 0.01  # in-plane drift of the slice positions still called untilted
ORIENTATION_TOLERANCE = 1e-4
_HEADER_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "PatientName", "StudyInstanceUID",
    "StudyDescription", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "FrameOfReferenceUID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames",
    "GantryDetectorTilt", "InstanceNumber",
)  # fmt: skip


@dataclass(frozen=True)
class DicomSeries:
    """Identity of one DICOM series and its files (for an image series: in slice order, caudal index 0 first
    along the slice normal, the order of the image's slices)."""

    folder: str
    files: tuple[str, ...]
    modality: str
    series_instance_uid: str
    series_description: str = ""
    series_number: int | None = None
    study_instance_uid: str = ""
    study_description: str = ""
    patient_id: str = ""
    patient_name: str = ""
    frame_of_reference_uid: str = ""

    def describe(self) -> str:
        """``UID (description, CT, 112 files)`` for messages."""
        what = ", ".join(x for x in (self.series_description or "no description", self.modality,
                                     f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}") if x)
        return f"{self.series_instance_uid} ({what})"

    def identity(self) -> dict[str, Any]:
        """Patient, study and series identity as plain values (for reports)."""
        return {
            "patient_id": self.patient_id, "patient_name": self.patient_name,
            "study_instance_uid": self.study_instance_uid, "study_description": self.study_description,
            "series_instance_uid": self.series_instance_uid, "series_description": self.series_description,
            "series_number": self.series_number, "modality": self.modality,
            "frame_of_reference_uid": self.frame_of_reference_uid,
        }  # fmt: skip


# --- finding the series -----------------------------------------------------------------------


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a regular file with the DICOM preamble (``DICM`` at byte 128)."""
    path = Path(path)
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as stream:
            stream.seek(128)
            return stream.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_input(path: str | os.PathLike | None) -> bool:
    """True when ``path`` is read as DICOM: a folder (of DICOM files) or a DICOM file."""
    return path is not None and (Path(path).is_dir() or is_dicom_file(path))


def _headers(path: Path) -> list[tuple[Path, Any]]:
    """(file, header dataset without pixels) of every DICOM file at ``path`` (a file or a folder, recursively)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    candidates = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    )
    found = []
    for file in candidates:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            continue  # not DICOM (a README, a thumbnail) or unreadable: not part of a series
        if "SeriesInstanceUID" in header:
            found.append((file, header))
    return found


def _text(header: Any, keyword: str) -> str:
    value = header.get(keyword, "")
    return "" if value is None else str(value).strip()


def _series_of(folder: Path, files: list[tuple[Path, Any]]) -> DicomSeries:
    first = files[0][1]
    number = first.get("SeriesNumber", None)
    return DicomSeries(
        folder=os.fspath(folder), files=tuple(os.fspath(f) for f, _ in files), modality=_text(first, "Modality"),
        series_instance_uid=_text(first, "SeriesInstanceUID"), series_description=_text(first, "SeriesDescription"),
        series_number=int(number) if number not in (None, "") else None,
        study_instance_uid=_text(first, "StudyInstanceUID"), study_description=_text(first, "StudyDescription"),
        patient_id=_text(first, "PatientID"), patient_name=_text(first, "PatientName"),
        frame_of_reference_uid=_text(first, "FrameOfReferenceUID"),
    )


def list_series(path: str | os.PathLike) -> list[tuple[DicomSeries, list[tuple[Path, Any]]]]:
    """Every DICOM series at ``path`` (a folder, searched recursively, or one file) with its files' headers."""
    path = Path(path)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for file, header in _headers(path):
        groups.setdefault(_text(header, "SeriesInstanceUID"), []).append((file, header))
    return [(_series_of(path if path.is_dir() else path.parent, files), files) for files in groups.values()]


def _select(path: Path, role: str, wanted: Sequence[str] | None, accept) -> tuple[DicomSeries, list]:
    """The one series at ``path`` that ``accept`` takes (or that ``wanted`` names); else a one-line error."""
    what = f"The {role} DICOM folder '{path}'" if path.is_dir() else f"The {role} DICOM file '{path}'"
    if not path.exists():
        raise HealthiVertError(f"{what} does not exist. Check the path.")
    if not os.access(path, os.R_OK):
        raise HealthiVertError(f"{what} cannot be read (permission denied). Check its permissions.")
    every = list_series(path)
    if not every:
        kind = "is a folder that holds" if path.is_dir() else "is"
        raise HealthiVertError(
            f"The {role} '{path}' {kind} no DICOM files. Give a folder holding the DICOM files of one series, or "
            "a NIfTI, NRRD or MetaImage file."
        )
    listing = "; ".join(s.describe() for s, _ in every)
    candidates = [(s, f) for s, f in every if accept(s)]
    if wanted:  # --series names the series of every DICOM folder given: this folder's may not be among them
        named = [(s, f) for s, f in candidates if s.series_instance_uid in set(wanted)]
        chosen = named or (candidates if len(candidates) == 1 else [])
        if not chosen:
            raise HealthiVertError(
                f"{what} holds none of the series given with --series as a {role} series; it holds: {listing}."
            )
    else:
        chosen = candidates
    if len(chosen) > 1:
        raise HealthiVertError(
            f"{what} holds {len(chosen)} {role} series; choose one with --series UID: {listing}."
        )
    if not chosen:
        raise HealthiVertError(f"{what} holds no {role} series; it holds: {listing}.")
    series, files = chosen[0]
    return series, files


# --- CT series ---------------------------------------------------------------------------------


def _vector(header: Any, keyword: str, size: int, file: Path) -> np.ndarray:
    value = header.get(keyword, None)
    try:
        vector = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        vector = np.array([])
    if vector.shape != (size,) or not np.all(np.isfinite(vector)):
        raise HealthiVertError(
            f"The DICOM file '{file}' has no usable {keyword} ({value!r}); HealthiVert cannot place its "
            "slice in space. Export the series again from the scanner or PACS."
        )
    return vector


def _mm(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + " mm"


def _sorted_slices(path: Path, files: list[tuple[Path, Any]]) -> list[Path]:
    """The series' files in slice order after checking they form one regular, untilted stack of slices."""
    what = f"The CT series in '{path}'"
    if len(files) < 2:
        raise HealthiVertError(f"{what} has a single slice; HealthiVert needs a 3D series covering the spine.")
    frames = [int(h.get("NumberOfFrames", 1) or 1) for _, h in files]
    if max(frames) > 1:
        raise HealthiVertError(
            f"{what} is stored as multi-frame (enhanced) DICOM ({max(frames)} frames in one file); HealthiVert reads "
            "classic single-frame CT series. Export the series as classic CT images (e.g. from PACS or with "
            "dcm2niix to NIfTI) and try again."
        )
    sizes = {(int(h.get("Rows", 0) or 0), int(h.get("Columns", 0) or 0)) for _, h in files}
    if len(sizes) > 1:
        shown = ", ".join(f"{r}×{c}" for r, c in sorted(sizes))
        raise HealthiVertError(f"{what} mixes slices of different sizes ({shown} pixels); it is not one volume.")
    orientations = [_vector(h, "ImageOrientationPatient", 6, f) for f, h in files]
    reference = orientations[0]
    if any(np.max(np.abs(o - reference)) > ORIENTATION_TOLERANCE for o in orientations):
        distinct = {tuple(np.round(o, 3)) for o in orientations}
        shown = "; ".join("(" + ", ".join(f"{v:g}" for v in o) + ")" for o in sorted(distinct)[:3])
        raise HealthiVertError(
            f"{what} mixes {len(distinct)} slice orientations (ImageOrientationPatient {shown}): it is not one "
            "volume (a localizer or reformat in the same series?). Export the axial series alone and try again."
        )
    normal = np.cross(reference[:3], reference[3:])
    positions = np.array([_vector(h, "ImagePositionPatient", 3, f) for f, h in files])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    if np.any(gaps < POSITION_TOLERANCE_MM):
        k = int(np.argmax(gaps < POSITION_TOLERANCE_MM))
        raise HealthiVertError(
            f"{what} has two slices at one position ({_mm(along[k])} along the slice normal: files "
            f"'{files[order[k]][0].name}' and '{files[order[k + 1]][0].name}'); it mixes several acquisitions or "
            "phases. Export one volume per series and try again."
        )
    in_plane = positions - np.outer(along, normal)
    drift = np.linalg.norm(in_plane[-1] - in_plane[0])
    if np.max(np.linalg.norm(in_plane - in_plane[0], axis=1)) > TILT_TOLERANCE_MM:
        angle = np.degrees(np.arctan2(drift, along[-1] - along[0]))
        tag = files[0][1].get("GantryDetectorTilt", None)
        said = f", GantryDetectorTilt {float(tag):g}°" if tag not in (None, "") else ""
        raise HealthiVertError(
            f"{what} is acquired with a gantry tilt (slices shifted by {_mm(drift)} in-plane over the stack, "
            f"{angle:.1f}° off the slice normal{said}); its voxel grid is sheared and heights would be measured "
            "on a distorted spine. Load the series in 3D Slicer with acquisition geometry regularization, "
            "harden the transform and save it as .nii.gz, then try again."
        )
    median = float(np.median(gaps))
    irregular = np.abs(gaps - median) > SPACING_TOLERANCE * median
    if np.any(irregular):
        multiples = gaps[irregular] / median
        if np.all(np.abs(multiples - np.round(multiples)) < 0.05) and np.all(np.round(multiples) >= 2):
            missing = int(np.sum(np.round(multiples) - 1))
            k = int(np.argmax(irregular))
            raise HealthiVertError(
                f"{what} misses {missing} slice{'s' if missing != 1 else ''}: the slices are {_mm(median)} apart but "
                f"{_mm(gaps[k])} between {_mm(along[k])} and {_mm(along[k + 1])} along the slice normal "
                f"({len(files)} files). Copy or export the whole series again."
            )
        raise HealthiVertError(
            f"{what} has irregular slice spacing: gaps of {_mm(float(gaps.min()))} to {_mm(float(gaps.max()))} "
            f"(median {_mm(median)}); HealthiVert measures on a regular grid and does not resample silently. "
            "Resample the series to a regular spacing (e.g. in 3D Slicer) and save it as .nii.gz, then try again."
        )
    return [files[i][0] for i in order]


def read_dicom_ct(path: str | os.PathLike, series: Sequence[str] | None = None) -> tuple[sitk.Image, DicomSeries]:
    """Read the CT series of a DICOM folder as float32 (HU) and its identity.

    ``series`` lists SeriesInstanceUIDs to choose from when the folder holds several series. The slices
    must form one regular, untilted stack (checked with pydicom before SimpleITK/GDCM reads them).
    """
    path = Path(path)
    chosen, files = _select(path, "CT", series, lambda s: s.modality not in NON_IMAGE_MODALITIES)
    ordered = _sorted_slices(path, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([os.fspath(f) for f in ordered])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        reason = [line for line in str(error).splitlines() if line.strip()]
        raise HealthiVertError(
            f"The CT series in '{path}' could not be read ({(reason[-1] if reason else 'unknown')[:200]}): a file "
            "is damaged or uses a compression GDCM cannot decode. Export the series again."
        ) from error
    check_geometry(image, f"The CT series in '{path}'")
    values = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) and not np.all(np.isfinite(values)):
        raise HealthiVertError(f"The CT series in '{path}' holds NaN or infinite values. Export it again.")
    source = replace(chosen, files=tuple(os.fspath(f) for f in ordered))
    return sitk.Cast(image, sitk.sitkFloat32), source


# --- DICOM SEG -----------------------------------------------------------------------------------


def _segment_level(description: Any) -> str | None:
    """Vertebra level of a segment: its SNOMED CT type code, else its label (``vertebrae_L1``, ``L1``)."""
    for item in description.get("SegmentedPropertyTypeCodeSequence", []) or []:
        scheme, code = str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeValue", ""))
        level = level_from_code(scheme, code)
        if level:
            return level
        if code == SCT_VERTEBRA:  # "Vertebra" (T13, L6): the level is in the label
            break
    return level_from_name(str(description.get("SegmentLabel", "")))


def _on_grid(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``image`` placed onto ``reference``'s grid when its voxel centres lie on that lattice (a SEG stores only
    the slices its segments reach, possibly in the opposite slice order), else unchanged (the caller's grid
    check then says how they differ)."""
    n = reference.GetDimension()
    to_reference = np.linalg.inv(np.array(reference.GetDirection()).reshape(n, n) @ np.diag(reference.GetSpacing()))
    # one step along each image axis, in reference voxels: a signed permutation on a shared lattice
    steps = to_reference @ np.array(image.GetDirection()).reshape(n, n) @ np.diag(image.GetSpacing())
    offset = np.array(reference.TransformPhysicalPointToContinuousIndex(image.GetOrigin()))
    rounded = np.round(steps)
    on_lattice = (np.allclose(steps, rounded, atol=1e-3) and np.all(np.abs(rounded).sum(axis=0) == 1)
                  and np.all(np.abs(rounded).sum(axis=1) == 1) and np.allclose(offset, np.round(offset), atol=1e-3))
    if not on_lattice:
        return image
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


def read_dicom_seg(
    path: str | os.PathLike, series: Sequence[str] | None = None, reference: sitk.Image | None = None
) -> tuple[sitk.Image, DicomSeries, dict[int, str]]:
    """A DICOM SEG of vertebrae as a label map in VerSe numbering, its identity and {label: level}.

    Each vertebra segment's level comes from its SNOMED CT type code or its label; segments that are not
    vertebrae (organs, ribs) are ignored. With ``reference`` (the CT), a SEG on the CT's lattice that covers
    only some slices is placed onto the CT grid.
    """
    import highdicom as hd

    path = Path(path)
    chosen, files = _select(path, "SEG", series, lambda s: s.modality == "SEG")
    what = f"The DICOM SEG '{files[0][0]}'"
    if len(files) != 1:
        raise HealthiVertError(f"The SEG series {chosen.describe()} in '{path}' has {len(files)} files; give one SEG file.")
    try:
        seg = hd.seg.segread(files[0][0])
    except Exception as error:
        raise HealthiVertError(f"{what} could not be read as a DICOM Segmentation ({str(error)[:200]}).") from error
    levels: dict[int, str] = {}
    others = []
    for description in seg.SegmentSequence:
        number, level = int(description.SegmentNumber), _segment_level(description)
        label = verse_label(level) if level else None
        if label is None:
            others.append(str(description.get("SegmentLabel", number)))
            continue
        if label in {verse_label(lv) for lv in levels.values()}:
            raise HealthiVertError(f"{what} has two segments for {level}; keep one segment per vertebra.")
        levels[number] = level
    if not levels:
        shown = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")
        raise HealthiVertError(
            f"{what} holds no vertebra segment ({len(others)} segments: {shown}); HealthiVert recognises a vertebra "
            "by its SNOMED CT code (e.g. SCT 66794005 'L1 vertebra') or a label such as 'vertebrae_L1'."
        )
    if str(seg.get("SegmentationType", "")) == "FRACTIONAL":
        raise HealthiVertError(f"{what} is a FRACTIONAL (probabilistic) segmentation; HealthiVert needs a BINARY SEG.")
    try:
        volume = seg.get_volume(segment_numbers=sorted(levels), combine_segments=True, relabel=False, dtype=np.uint16)
    except Exception as error:
        raise HealthiVertError(
            f"{what} cannot be made into one label map ({str(error)[:200]}); vertebra segments must not overlap "
            "and its frames must form a regular volume."
        ) from error
    lookup = np.zeros(max(levels) + 1, dtype=np.uint16)
    for number, level in levels.items():
        lookup[number] = verse_label(level)
    image = _volume_image(lookup[np.asarray(volume.array)], np.asarray(volume.affine, dtype=float))
    check_geometry(image, what)
    if reference is not None:
        image = _on_grid(image, reference)
    label_of_level = {verse_label(level): level for level in levels.values()}
    return image, chosen, {int(label): level for label, level in label_of_level.items() if label is not None}


def _volume_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a highdicom volume: ``array`` indexed (slice, row, column), ``affine`` mapping those
    indices to LPS millimetres."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    columns = affine[:3, :3][:, ::-1]  # sitk's (x, y, z) index = (column, row, slice)
    spacing = np.linalg.norm(columns, axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (columns / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    return image
