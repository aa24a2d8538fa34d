"""Reading and checking images: CT and label maps (NIfTI, NRRD, MetaImage) with SimpleITK.

:func:`read_ct` and :func:`read_label_map` read one 3D volume and refuse, with a message that says
what to do, a missing, truncated or unreadable file (or one that is not a regular file, such as a
named pipe, which is refused before it is opened), non-finite values, or a label map with
negative or fractional values or no label at all. The voxel grid is checked too, never guessed: a
NIfTI spacing of zero, negative or not a number (ITK would read 1 mm) or one that its sform
contradicts, a spacing outside ``MIN_SPACING_MM``-``MAX_SPACING_MM`` and a sheared (non-orthogonal)
grid, which ITK would silently make orthogonal when writing the outputs, are refused.
:func:`check_same_grid` says how two grids differ; :func:`check_looks_like_ct` refuses a CT that
is not in Hounsfield units (a label map given as the CT); ``label_centroids`` and
``label_voxel_counts`` summarise a label map.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np
import SimpleITK as sitk

from ..errors import HealthiVertError


# --- reading images -------------------------------------------------------------------------

_INTEGER_TYPES = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16,
    sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64,
}  # fmt: skip
_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}


SUPPORTED_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_FORMATS = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd)"


def image_extension(path: Path) -> str | None:
    name = path.name.lower()
    return next((ext for ext in SUPPORTED_EXTENSIONS if name.endswith(ext)), None)


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise HealthiVertError(f"{what} does not exist. Check the path.")
    if path.is_dir():
        raise HealthiVertError(
            f"{what} is a folder, not an image file. Give a {_FORMATS} file; convert a DICOM series "
            "first (e.g. load it in 3D Slicer and save it as .nii.gz)."
        )
    if not path.is_file():  # a named pipe, socket or device would block or never end: refused unopened
        raise HealthiVertError(
            f"{what} is not a regular file (a named pipe, socket or device). Give a {_FORMATS} file."
        )
    if not os.access(path, os.R_OK):
        raise HealthiVertError(
            f"{what} cannot be read (permission denied). Check the file's permissions (e.g. chmod a+r) "
            "or copy it somewhere you can read it."
        )
    if image_extension(path) is None:
        raise HealthiVertError(
            f"{what} is not in a supported format. HealthiVert reads {_FORMATS}; convert it first "
            "(e.g. load it in 3D Slicer and save it as .nii.gz)."
        )


def _itk_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    for prefix in ("sitk::ERROR:", "ITK ERROR:"):
        reason = reason.split(prefix, 1)[-1].strip()
    return reason[:200]


@dataclass(frozen=True)
class _NiftiLayout:
    """Where a NIfTI file keeps its voxels."""

    endian: str
    datatype: int
    bitpix: int
    offset: int
    voxels: int

    @property
    def end(self) -> int:
        return self.offset + self.voxels * self.bitpix // 8


def _parse_nifti_header(header: bytes) -> _NiftiLayout | None:
    """Voxel layout from a NIfTI-1 or NIfTI-2 header; None if the header cannot be parsed."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(f"{endian}i", header[:4])[0] == 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            datatype, bitpix = struct.unpack(f"{endian}2h", header[70:74])
            offset = max(int(struct.unpack(f"{endian}f", header[108:112])[0]), 352)
            break
        if len(header) >= 540 and struct.unpack(f"{endian}i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(f"{endian}2h", header[12:16])
            dims = struct.unpack(f"{endian}8q", header[16:80])
            offset = max(struct.unpack(f"{endian}q", header[168:176])[0], 544)
            break
    else:
        return None
    extent = dims[1 : dims[0] + 1] if 1 <= dims[0] <= 7 else ()
    if not extent or min(extent) <= 0 or bitpix <= 0:
        return None
    return _NiftiLayout(endian, datatype, bitpix, offset, int(np.prod(extent, dtype=np.int64)))


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as raw:
        return raw.read(2) == b"\x1f\x8b"


def _open_nifti(path: Path) -> BinaryIO:
    """Open a NIfTI file, compressed or not whatever its name says (as ITK does)."""
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def _gzip_length(path: Path) -> int:
    """Uncompressed length of a gzip file, or -1 when the stream is cut or damaged."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        return -1
    return total


def _nifti_is_truncated(path: Path) -> bool:
    """True when the file holds less voxel data than its header announces.

    ITK's NIfTI reader fills missing data with zeros instead of failing, so this is checked here.
    """
    try:
        with _open_nifti(path) as stream:
            layout = _parse_nifti_header(stream.read(540))
    except (OSError, EOFError, zlib.error):
        return True
    if layout is None:
        return False
    if not _is_gzip(path):
        return path.stat().st_size < layout.end
    with open(path, "rb") as raw:  # the gzip trailer stores the uncompressed length mod 2**32
        raw.seek(-4, os.SEEK_END)
        if struct.unpack("<I", raw.read(4))[0] == layout.end % 2**32:
            return False
    return _gzip_length(path) < layout.end


def _nifti_spacing_problem(path: Path) -> str | None:
    """What is wrong with the voxel spacing a NIfTI header gives, or None.

    ITK reads the spacing from ``pixdim`` and silently takes 1 mm for a zero or NaN value (a
    negative one mirrors the axis); an sform whose scales disagree with ``pixdim`` only gets a
    warning, and a sheared sform is replaced by the qform. Checked here before ITK reads the file.
    """
    try:
        with _open_nifti(path) as stream:
            header = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return None  # damaged: ITK's reader says so
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(f"{endian}i", header[:4])[0] == 348:
            n_dims = struct.unpack(f"{endian}h", header[40:42])[0]
            pixdim = struct.unpack(f"{endian}8f", header[76:108])
            sform_code = struct.unpack(f"{endian}h", header[254:256])[0]
            srow = struct.unpack(f"{endian}12f", header[280:328])
            break
        if len(header) >= 540 and struct.unpack(f"{endian}i", header[:4])[0] == 540:
            n_dims = struct.unpack(f"{endian}q", header[16:24])[0]
            pixdim = struct.unpack(f"{endian}8d", header[104:168])
            sform_code = struct.unpack(f"{endian}i", header[348:352])[0]
            srow = struct.unpack(f"{endian}12d", header[400:496])
            break
    else:
        return None
    n_axes = min(max(int(n_dims), 1), 3)
    spacing = np.array(pixdim[1 : 1 + n_axes], dtype=float)
    sform = np.array(srow, dtype=float).reshape(3, 4)[:, :n_axes]
    sform_spacing = np.linalg.norm(sform, axis=0) if sform_code > 0 and np.all(np.isfinite(sform)) else None
    said = f" (its sform gives {_numbers(sform_spacing)} mm)" if sform_spacing is not None else ""
    bad = [k + 1 for k in range(n_axes) if not (np.isfinite(spacing[k]) and spacing[k] > 0)]
    if bad:
        read_as = "1 mm" if all(not spacing[k - 1] < 0 for k in bad) else "it as positive but mirror the axis"
        return (f"has an invalid voxel spacing in its NIfTI header: pixdim {_numbers(spacing)} mm, not a positive "
                f"number on axis {', '.join(map(str, bad))}{said}; ITK would read {read_as} there and every height "
                "would be wrong. Fix the header (e.g. save the image again from the software that made it)")
    if sform_spacing is not None:
        if np.any(np.abs(sform_spacing - spacing) > SPACING_AGREEMENT * np.maximum(spacing, 1e-6)):
            return (f"gives two different voxel spacings in its NIfTI header: pixdim {_numbers(spacing)} mm, sform "
                    f"{_numbers(sform_spacing)} mm; which one is right cannot be told. Fix the header (e.g. save the "
                    "image again from the software that made it)")
        shear = _shear_degrees(sform / np.where(sform_spacing > 0, sform_spacing, 1.0))
        if shear is not None:
            return f"has a sheared sform in its NIfTI header ({shear}). {_SHEARED_ADVICE}"
    return None


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _nifti_nonfinite_counts(path: Path) -> tuple[int, int]:
    """(NaN, infinite) voxel counts of a float NIfTI file, read from the file itself.

    ITK's NIfTI reader silently turns NaN and infinite voxels into 0, so the image cannot tell.
    """
    with _open_nifti(path) as stream:
        layout = _parse_nifti_header(stream.read(540))
        if layout is None or layout.datatype not in _NIFTI_FLOAT_TYPES:
            return 0, 0
        dtype = np.dtype(layout.endian + _NIFTI_FLOAT_TYPES[layout.datatype])
        stream.seek(layout.offset)
        remaining, n_nan, n_inf = layout.voxels, 0, 0
        while remaining > 0:
            values = np.frombuffer(stream.read(min(remaining, 1 << 23) * dtype.itemsize), dtype)
            if values.size == 0:
                break
            n_nan += int(np.count_nonzero(np.isnan(values)))
            n_inf += int(np.count_nonzero(np.isinf(values)))
            remaining -= values.size
    return n_nan, n_inf


def _nonfinite_counts(image: sitk.Image, path: Path) -> tuple[int, int]:
    """(NaN, infinite) voxel counts of a float image read from ``path``."""
    if image.GetPixelID() not in _FLOAT_TYPES:
        return 0, 0
    if image_extension(path) in (".nii", ".nii.gz"):
        return _nifti_nonfinite_counts(path)
    values = sitk.GetArrayViewFromImage(image)
    return int(np.count_nonzero(np.isnan(values))), int(np.count_nonzero(np.isinf(values)))


def _as_volume(image: sitk.Image, what: str) -> sitk.Image:
    """``image`` as a scalar 3D image (a 4D image with a single volume is reduced to 3D)."""
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        raise HealthiVertError(
            f"{what} has {components} values per voxel (a colour or vector image); HealthiVert needs a "
            "3D image with one value per voxel. Export the volume again as a plain scalar image."
        )
    size = image.GetSize()
    shown = "×".join(map(str, size))
    if 0 in size:
        raise HealthiVertError(f"{what} is empty (size {shown} voxels). Export it again.")
    if image.GetDimension() == 4 and size[3] == 1:
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
        size = image.GetSize()
    if image.GetDimension() == 4:
        raise HealthiVertError(
            f"{what} is 4D with {size[3]} volumes (size {shown}); HealthiVert needs one 3D volume. "
            "Save the volume you want to analyse as its own file."
        )
    if image.GetDimension() != 3 or 1 in size:
        raise HealthiVertError(
            f"{what} is not a 3D volume (size {shown} voxels, {image.GetDimension()}D); HealthiVert needs "
            "a 3D image covering the spine, not a single slice."
        )
    return image


# Bounds of a believable voxel spacing, per axis. Clinical CT voxels are 0.2-10 mm (specimen CT
# down to ~0.05 mm); a value outside these bounds is a header in the wrong unit (metres,
# micrometres) or a broken export, and every height measured on it would be off by that factor.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
SPACING_AGREEMENT = 0.01  # relative difference tolerated between a NIfTI's pixdim and its sform scales
# Largest |cos| between two voxel axes taken as orthogonal (0.06 degrees): rounding in exported
# direction matrices is far below it; above it ITK's writers would move the outputs (0.5 mm at 500 mm).
ORTHOGONALITY_TOLERANCE = 1e-3
_SHEARED_ADVICE = (
    "HealthiVert's outputs would be written on a different, orthogonal grid; resample the image onto an "
    "orthogonal grid first (a CT with gantry tilt: load the DICOM series in 3D Slicer with acquisition geometry "
    "regularization, harden the transform and save it as .nii.gz), then try again"
)


def _shear_degrees(direction: np.ndarray) -> str | None:
    """'axes 2 and 3 meet at 60.0° instead of 90°' for the worst pair of non-orthogonal axes, or None."""
    cosines = np.abs(direction.T @ direction - np.eye(direction.shape[1]))
    if not np.all(np.isfinite(cosines)):
        return "its axes are not finite"
    i, j = np.unravel_index(np.argmax(cosines), cosines.shape)
    if cosines[i, j] <= ORTHOGONALITY_TOLERANCE:
        return None
    if i == j:
        return f"axis {i + 1} has length {np.sqrt(cosines[i, i] + 1):.4g} instead of 1"
    angle = np.degrees(np.arccos(np.clip(direction[:, i] @ direction[:, j], -1.0, 1.0)))
    return f"axes {min(i, j) + 1} and {max(i, j) + 1} meet at {angle:.1f}° instead of 90°"


def check_geometry(image: sitk.Image, what: str) -> None:
    """Refuse a voxel grid HealthiVert cannot measure on faithfully (``what`` names the image).

    The spacing must lie within ``MIN_SPACING_MM``-``MAX_SPACING_MM`` on every axis, origin and
    direction must be finite, and the axes orthogonal: ITK's writers would silently replace a sheared
    grid by an orthogonal one, moving the outputs away from the input.
    """
    spacing = np.array(image.GetSpacing(), dtype=float)
    if not np.all((spacing >= MIN_SPACING_MM) & (spacing <= MAX_SPACING_MM)):
        raise HealthiVertError(
            f"{what} has a voxel spacing of {_numbers(spacing)} mm; HealthiVert accepts {MIN_SPACING_MM:g} to "
            f"{MAX_SPACING_MM:g} mm per axis (clinical CT: 0.2-10 mm). The header's spacing or unit is wrong "
            "(metres or micrometres instead of millimetres?): fix it and try again."
        )
    n = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=float).reshape(n, n)
    if not (np.all(np.isfinite(image.GetOrigin())) and np.all(np.isfinite(direction))):
        raise HealthiVertError(
            f"{what} has an origin or direction that is not a number ({_numbers(image.GetOrigin())}). "
            "Export the image again."
        )
    shear = _shear_degrees(direction)
    if shear is not None:
        raise HealthiVertError(f"{what} has a sheared (non-orthogonal) voxel grid: {shear}. {_SHEARED_ADVICE}.")


def read_image(path: str | os.PathLike, role: str) -> sitk.Image:
    """Read a 3D scalar image; ``role`` ("CT", "vertebra labels", ...) names it in error messages.

    Its voxel grid is checked (:func:`check_geometry`; a NIfTI header's spacing before ITK reads it).
    """
    path = Path(path)
    what = f"The {role} file '{path}'"
    _check_file(path, what)
    if image_extension(path) in (".nii", ".nii.gz"):
        problem = _nifti_spacing_problem(path)
        if problem:
            raise HealthiVertError(f"{what} {problem}.")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise HealthiVertError(
            f"{what} could not be read: it is damaged, incomplete (interrupted download or copy?) or not a "
            f"{_FORMATS} image ({_itk_reason(error)}). Copy or export it again."
        ) from error
    if image_extension(path) in (".nii", ".nii.gz") and _nifti_is_truncated(path):
        raise HealthiVertError(
            f"{what} is incomplete: it holds less image data than its header announces (interrupted "
            "download or copy?). Copy or export it again."
        )
    image = _as_volume(image, what)
    check_geometry(image, what)
    return image


def read_ct(path: str | os.PathLike) -> sitk.Image:
    """Read a CT as float32 (HU); NaN or infinite voxels are an error, never silently replaced."""
    image = read_image(path, "CT")
    n_nan, n_inf = _nonfinite_counts(image, Path(path))
    if n_nan or n_inf:
        raise HealthiVertError(
            f"The CT file '{path}' contains {n_nan} NaN (not-a-number) and {n_inf} infinite voxels. "
            "HealthiVert does not guess HU values: export the CT again from the original DICOM series, "
            "or replace these voxels deliberately (e.g. with -1024 HU) and try again."
        )
    return sitk.Cast(image, sitk.sitkFloat32)


# A CT of the spine holds thousands of grey values spanning at least soft tissue (~0-100 HU) to
# bone (several hundred HU); a label or probability map holds a handful of small values.
CT_MIN_DISTINCT_VALUES = 64
CT_MIN_RANGE_HU = 200.0
_CT_SAMPLE_VOXELS = 2_000_000  # voxels looked at (evenly strided) to count distinct values


def check_looks_like_ct(ct: sitk.Image, source: str | os.PathLike | None = None) -> None:
    """Refuse a "CT" that is not in Hounsfield units: fewer than ``CT_MIN_DISTINCT_VALUES`` distinct
    values or a range under ``CT_MIN_RANGE_HU`` (a label map or mask given as the CT).

    Engines that read the CT's intensities (the generator) check it; ``source`` names the file.
    """
    values = sitk.GetArrayViewFromImage(ct).ravel()
    sample = values[:: max(1, values.size // _CT_SAMPLE_VOXELS)]
    low, high = float(values.min()), float(values.max())
    distinct = np.unique(sample)
    if len(distinct) >= CT_MIN_DISTINCT_VALUES and high - low >= CT_MIN_RANGE_HU:
        return
    shown = ", ".join(f"{v:g}" for v in distinct[:8]) + (", ..." if len(distinct) > 8 else "")
    name = f"The CT '{source}'" if source is not None else "The CT"
    raise HealthiVertError(
        f"{name} does not look like a CT in Hounsfield units: it holds {len(distinct)} distinct values from "
        f"{low:g} to {high:g} ({shown}), like a label map or mask. The generator engine synthesizes from the "
        "CT's intensities: pass the CT image itself as --ct (or use --engine spine, which needs no CT)."
    )


def _label_pixel_type(maximum: int) -> int:
    if maximum <= np.iinfo(np.uint16).max:
        return sitk.sitkUInt16
    return sitk.sitkUInt32 if maximum <= np.iinfo(np.uint32).max else sitk.sitkUInt64


def read_label_map(path: str | os.PathLike, role: str) -> sitk.Image:
    """Read a label map as an unsigned integer image (UInt16, or wider when values need it).

    Float files are accepted when every value is a whole number; negative values and an all-zero
    map are errors.
    """
    image = read_image(path, role)
    what = f"The {role} file '{path}'"
    pixel_type = image.GetPixelID()
    if pixel_type not in _INTEGER_TYPES | _FLOAT_TYPES:
        raise HealthiVertError(
            f"{what} has voxel type '{image.GetPixelIDTypeAsString()}'; a label map needs whole numbers "
            "(0 = background). Export the segmentation again as a label map."
        )
    n_nan, n_inf = _nonfinite_counts(image, Path(path))
    if n_nan or n_inf:
        raise HealthiVertError(
            f"{what} contains {n_nan} NaN (not-a-number) and {n_inf} infinite voxels; labels must be whole "
            "numbers. Export the segmentation again as a label map."
        )
    values = sitk.GetArrayViewFromImage(image)
    if pixel_type in _FLOAT_TYPES:
        fractional = np.mod(values, 1) != 0
        if fractional.any():
            example = values[fractional].flat[0]
            raise HealthiVertError(
                f"{what} contains {int(fractional.sum())} voxels that are not whole numbers "
                f"(e.g. {example:g}): it looks like a probability map or labels resampled with linear "
                "interpolation. Use the label map itself, resampled with nearest-neighbour interpolation "
                "if needed."
            )
    minimum, maximum = values.min(), values.max()
    if minimum < 0:
        raise HealthiVertError(
            f"{what} contains negative values (lowest {minimum:g}); labels must be 0 for background and "
            "positive numbers for structures. Check that this is the segmentation, not the CT."
        )
    if maximum == 0:
        raise HealthiVertError(
            f"{what} contains no labels: every voxel is 0. Check that the segmentation ran and was saved."
        )
    return sitk.Cast(image, _label_pixel_type(int(maximum)))


# --- grids and label statistics -------------------------------------------------------------


def _numbers(values: Iterable[float], decimals: int = 4) -> str:
    texts = (f"{round(v, decimals) + 0.0:.{decimals}f}".rstrip("0").rstrip(".") for v in values)
    return "(" + ", ".join(texts) + ")"


def _grid_differences(reference: sitk.Image, other: sitk.Image) -> list[str]:
    ref_spacing = np.array(reference.GetSpacing())
    spacing_tol = 1e-3 * np.maximum(1.0, np.abs(ref_spacing))
    origin_tol = 1e-3 * max(1.0, float(ref_spacing.max()))
    checks = [
        ("size (voxels)", reference.GetSize(), other.GetSize(), 0.0),
        ("spacing (mm)", reference.GetSpacing(), other.GetSpacing(), spacing_tol),
        ("origin (mm)", reference.GetOrigin(), other.GetOrigin(), origin_tol),
        ("direction", reference.GetDirection(), other.GetDirection(), 1e-4),
    ]
    differences = []
    for what, ref_value, other_value, tolerance in checks:
        a, b = np.array(ref_value, dtype=float), np.array(other_value, dtype=float)
        if a.shape != b.shape or np.any(np.abs(a - b) > tolerance):
            differences.append(f"{what}: {_numbers(ref_value)} vs {_numbers(other_value)}")
    return differences


def check_same_grid(reference: sitk.Image, other: sitk.Image, names: tuple[str, str]) -> None:
    """Raise unless ``other`` lies on the voxel grid of ``reference``.

    ``names`` describe both images in messages, e.g. ``("CT 'ct.nii.gz'", "vertebra labels 'seg.nii.gz'")``.
    The message is one line naming each property that differs, with both values.
    """
    differences = _grid_differences(reference, other)
    if differences:
        raise HealthiVertError(
            f"The {names[1]} are not on the voxel grid of the {names[0]} ({names[0]} first: "
            + "; ".join(differences)
            + f"). Resample the {names[1]} onto the grid of the {names[0]} with nearest-neighbour "
            "interpolation (e.g. in 3D Slicer: Resample Scalar/Vector/DWI Volume, interpolation 'Nearest "
            f"Neighbor', reference volume = the {names[0]}), save it and try again."
        )


def _shape_statistics(label_map: sitk.Image) -> sitk.LabelShapeStatisticsImageFilter:
    if label_map.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkUInt32, sitk.sitkUInt64):
        label_map = sitk.Cast(label_map, sitk.sitkUInt32)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.SetBackgroundValue(0)
    statistics.ComputePerimeterOff()
    statistics.Execute(label_map)
    return statistics


def label_centroids(label_map: sitk.Image) -> dict[int, np.ndarray]:
    """Physical centroid (LPS, mm) of each nonzero label."""
    statistics = _shape_statistics(label_map)
    return {int(label): np.array(statistics.GetCentroid(label)) for label in statistics.GetLabels()}


def label_voxel_counts(label_map: sitk.Image) -> dict[int, int]:
    """Number of voxels of each nonzero label."""
    statistics = _shape_statistics(label_map)
    return {int(label): int(statistics.GetNumberOfPixels(label)) for label in statistics.GetLabels()}
