"""Reference-compatible straightening: reproduces the published HealthiVert-GAN crops bit for bit.

The published pipeline (``straighten/straighten_mask_3d.py::process_mask3d`` with the vendored
neuro-ml ``straighten`` 0.2.0 ``Interpolator``) straightens the spine along a polyline through the
vertebral centroids, removes the posterior elements and cuts a 256x256x64 block around each target
vertebra.  This module re-implements those steps so that, on the same mask and centroids, the
label crops are identical to the reference files.  Method spec: healthivert-method.md §1.5-1.7.

All arrays are in NIfTI index order (``GetArrayFromImage(img).transpose(2, 1, 0)``) of a 1 mm
isotropic volume oriented I-P-L: axis 0 runs cranial -> caudal, axis 1 anterior -> posterior,
axis 2 right -> left.  Centroids are dicts ``{"label", "X", "Y", "Z"}`` whose X/Y/Z are mean voxel
indices along axes 0/1/2.

Floating-point operations follow the reference's order where a different order could move a
sample across a rounding boundary (nearest-neighbour sampling, integer truncation of the crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from ..errors import HealthiVertError

#: Side of the square cross-section sampled at every point of the curve (voxels).
CROSS_SECTION = 128
#: Shape of the crop written per vertebra: (along the curve, AP, LR).
CROP_SIZE = (256, 256, 64)
#: How far the curve is extended beyond the first and last centroid (voxels).
EXTENSION = 20.0
#: Voxel-count thresholds below which the highest / lowest label gets no centroid.
MIN_VOXELS_HIGHEST = 8000
MIN_VOXELS_LOWEST = 6000
#: The orientation and spacing the reference mode requires.
ORIENTATION = "IPL"
SPACING_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- centroids


def reference_centroids(mask: np.ndarray) -> list[dict]:
    """Mean voxel index of every label, sorted by label, as the reference's ``location_json_local.py``.

    The highest label is skipped when it has fewer than 8000 voxels and the lowest when it has
    fewer than 6000 (partially imaged end vertebrae).  Labels are read as ``uint8``, like the
    reference.
    """
    labels_volume = np.asarray(mask).astype(np.uint8)
    labels = np.unique(labels_volume)
    labels = labels[labels != 0]
    centroids = []
    for label in labels:
        voxels = np.nonzero(labels_volume == label)
        count = voxels[0].size
        if label == labels.max() and count < MIN_VOXELS_HIGHEST:
            continue
        if label == labels.min() and count < MIN_VOXELS_LOWEST:
            continue
        center = np.mean(voxels, axis=1)
        centroids.append({"label": int(label), "X": float(center[0]), "Y": float(center[1]),
                          "Z": float(center[2])})
    return centroids


def _centroid_points(centroids: list[dict]) -> np.ndarray:
    """(n, 3) centroid coordinates ordered by ascending label (cranial -> caudal)."""
    ordered = sorted(centroids, key=lambda entry: entry["label"])
    return np.array([[entry["X"], entry["Y"], entry["Z"]] for entry in ordered], dtype=np.float64)


def _target_centroid(centroids: list[dict], target_label: int) -> np.ndarray:
    for entry in centroids:
        if entry["label"] == target_label:
            return np.array([entry["X"], entry["Y"], entry["Z"]], dtype=np.float64)
    known = sorted(entry["label"] for entry in centroids)
    raise HealthiVertError(f"vertebra label {target_label} has no centroid (centroids exist for {known})")


# --------------------------------------------------------------------------- the curve


def _extend_curve(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Prepend/append a point EXTENSION voxels beyond each end, along the end segment.

    Each new point is clamped per axis to [0, shape] (the reference clamps to the shape itself,
    not to shape - 1).
    """
    def beyond(end: np.ndarray, before_end: np.ndarray) -> np.ndarray:
        direction = end - before_end
        new_point = end + direction / np.linalg.norm(direction) * EXTENSION
        return np.array([max(0, min(size, value)) for value, size in zip(new_point, shape)],
                        dtype=np.float64)

    return np.vstack([beyond(points[0], points[1]), points, beyond(points[-1], points[-2])])


def _cumulative_length(points: np.ndarray) -> np.ndarray:
    """Arc length from the first point to every point of a polyline."""
    return np.insert(np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1)), 0, 0)


def _interp_linear(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of rows of ``y`` at ``x_new``, extrapolating at both ends.

    Same arithmetic as ``scipy.interpolate.interp1d(kind="linear")``: a query that equals a knot
    is computed from the segment to its left, so the result may differ from ``y`` at that knot
    by an ulp, which nearest-neighbour sampling can notice.
    """
    order = np.argsort(x, kind="mergesort")
    x, y = x[order], y[order]
    x_new = np.ravel(x_new)
    hi = np.searchsorted(x, x_new).clip(1, len(x) - 1)
    lo = hi - 1
    slope = (y[hi] - y[lo]) / (x[hi] - x[lo])[:, None]
    return slope * (x_new - x[lo])[:, None] + y[lo]


def _local_basis(tangents: np.ndarray) -> np.ndarray:
    """(n, 3, 3) frames whose columns are t (unit tangent), s and u = s x t.

    s is the unit vector perpendicular to t in the plane of axes 0 and 2 (no axis-1 component).
    The reference orients the in-plane perpendicular by multiplying it with the determinant of
    [t_02 | perpendicular], which is always negative: s = (-t2, 0, t0) / norm.
    """
    t = tangents / np.linalg.norm(tangents, axis=1, keepdims=True)
    in_plane = t[:, [0, 2]]
    perpendicular = in_plane[:, ::-1] * [1, -1]
    det = np.linalg.det(np.stack([in_plane, perpendicular], -1))
    s_in_plane = perpendicular * det[:, None]
    s_in_plane = s_in_plane / np.linalg.norm(s_in_plane, axis=1, keepdims=True)
    s = np.insert(s_in_plane, 1, 0.0, axis=1)
    u = np.cross(s, t)
    return np.stack([t, s, u], -1)


@dataclass(frozen=True)
class ReferenceCurve:
    """The straightening curve: points every 1 voxel of arc length and a local frame at each.

    ``knots[n]`` is the n-th curve point (array indices), ``basis[n]`` has columns t, s, u.
    Slice n of the straightened volume is the cross-section through ``knots[n]`` spanned by u
    (output axis 1) and s (output axis 2).
    """

    knots: np.ndarray
    basis: np.ndarray

    @classmethod
    def through(cls, centroids: list[dict], shape: tuple[int, ...]) -> ReferenceCurve:
        """The reference curve through at least two centroids of a volume of ``shape``."""
        points = _extend_curve(_centroid_points(centroids), shape)
        lengths = _cumulative_length(points)
        arc = np.arange(0, lengths[-1], 1.0)
        knots = _interp_linear(lengths, points, arc)
        tangents = _interp_linear(lengths, np.gradient(points, axis=0), arc)
        return cls(knots=knots, basis=_local_basis(tangents))

    def sampling_coordinates(self, size: int = CROSS_SECTION) -> np.ndarray:
        """(3, n, size, size) array indices sampled by the straightened volume.

        Offsets run from -size/2 to size/2 - 1 along u (output axis 1) and s (output axis 2).
        """
        steps = np.arange(size) - size / 2
        s, u = self.basis[:, :, 1], self.basis[:, :, 2]
        return np.stack([
            self.knots[:, axis, None, None]
            + (s[:, axis, None, None] * steps[None, None, :] + u[:, axis, None, None] * steps[None, :, None])
            for axis in range(3)
        ])

    def straighten(self, volume: np.ndarray, size: int = CROSS_SECTION, order: int = 0) -> np.ndarray:
        """Resample ``volume`` into (n, size, size) cross-sections along the curve (0 outside)."""
        return map_coordinates(volume, self.sampling_coordinates(size), order=order, cval=0)

    def global_to_local(self, point: np.ndarray, size: int = CROSS_SECTION) -> np.ndarray:
        """Array indices of ``point`` -> (arc length, s offset + size/2, u offset + size/2).

        Note the order: the reference returns the s offset second and the u offset third,
        although in the straightened volume u runs along axis 1 and s along axis 2.  The crop
        uses the coordinates in this order, so they are kept.

        The point is projected on the frames of all knots; the result is interpolated between
        the knot planes where the signed distance along t changes sign (closest such change to
        the nearest knot), from up to four planes around it.
        """
        offsets = np.asarray(point, dtype=np.float64) - self.knots
        to_origin = np.linalg.norm(offsets, axis=-1)
        local = np.einsum("nji,nj->ni", self.basis, offsets)
        to_plane = local[:, 0]
        centers = np.zeros_like(self.knots)
        centers[:, 0] = _cumulative_length(self.knots)
        centers[:, 1:] = size / 2
        local = local + centers

        nearest = to_origin.argmin()
        sign_changes, = np.diff(np.sign(to_plane)).nonzero()
        if len(sign_changes) > 0:
            nearest = sign_changes[np.abs(sign_changes - nearest).argmin()]
        window = slice(max(0, nearest - 2), nearest + 2)
        return _interp_linear(to_plane[window], local[window], np.zeros(1))[0]


# --------------------------------------------------------------------------- straightening


def remove_posterior_elements(labels: np.ndarray) -> np.ndarray:
    """Cut each vertebra's posterior elements from a straightened label volume, in place.

    For each label, walk the AP index h from the middle of axis 1 backwards on the mid-LR plane;
    at the first h where the label is absent from the whole cranio-caudal line ``labels[:, h, mid]``,
    every voxel of that label with AP index >= h is set to 0.
    """
    _, height, width = labels.shape
    for label in np.unique(labels[labels != 0]):
        for h in range(height // 2, height):
            if not np.any(labels[:, h, width // 2] == label):
                posterior = labels[:, h:, :]
                posterior[posterior == label] = 0
                break
    return labels


def reference_straighten(mask: np.ndarray, centroids: list[dict]) -> tuple[np.ndarray, ReferenceCurve | None]:
    """Straighten a label mask along the centroid curve and remove the posterior elements.

    Returns the float64 label volume of shape (n, 128, 128) (axis 0 along the curve cranial ->
    caudal, axis 1 posterior-going, axis 2 left-right) and the curve.  With a single centroid the
    reference does not straighten: the mask itself is returned (posterior elements removed) with
    ``None`` as the curve.
    """
    labels = np.asarray(mask, dtype=np.float64)
    if labels.ndim != 3:
        raise HealthiVertError(f"reference mode needs a 3-D mask, got shape {labels.shape}")
    if len(centroids) == 0:
        raise HealthiVertError("reference mode needs at least one vertebra centroid")
    if len(centroids) == 1:
        return remove_posterior_elements(labels.copy()), None
    curve = ReferenceCurve.through(centroids, labels.shape)
    return remove_posterior_elements(curve.straighten(labels, order=0)), curve


# --------------------------------------------------------------------------- crop


def _crop_centered(volume: np.ndarray, center: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Zero-filled block of ``size`` around ``center``, as the reference's ``extract_3d_volume``.

    Bounds are ``int(c -/+ size // 2)`` (truncation) clipped to the volume; the clipped block is
    centred in the output rather than kept at its offset.
    """
    out = np.zeros(size, dtype=volume.dtype)
    source, target = [], []
    for c, extent, length in zip(center, size, volume.shape):
        low = max(0, int(c - extent // 2))
        high = min(length, int(c + extent // 2))
        start = (extent - (high - low)) // 2
        source.append(slice(low, high))
        target.append(slice(start, start + (high - low)))
    out[tuple(target)] = volume[tuple(source)]
    return out


def crop_straightened(straightened: np.ndarray, curve: ReferenceCurve | None, centroids: list[dict],
                      target_label: int) -> np.ndarray:
    """The 256x256x64 crop around ``target_label`` from a :func:`reference_straighten` result.

    Use this to crop several vertebrae from one straightening.
    """
    center = _target_centroid(centroids, target_label)
    if curve is not None:
        center = curve.global_to_local(center)
    return _crop_centered(straightened, center, CROP_SIZE)


def reference_crop(mask: np.ndarray, centroids: list[dict], target_label: int) -> np.ndarray:
    """The reference's 256x256x64 float64 straightened label crop around ``target_label``.

    ``mask``: labels in NIfTI index order, 1 mm isotropic, oriented I-P-L.
    ``centroids``: e.g. from :func:`reference_centroids`; the curve uses all of them.
    All labels inside the block are kept (neighbouring vertebrae included).
    """
    _target_centroid(centroids, target_label)  # fail before the costly straightening
    straightened, curve = reference_straighten(mask, centroids)
    return crop_straightened(straightened, curve, centroids, target_label)


def reference_crop_from_image(image: sitk.Image, centroids: list[dict] | None, target_label: int) -> np.ndarray:
    """:func:`reference_crop` for a SimpleITK label image of any orientation.

    The image must have 1 mm isotropic spacing (tolerance 1e-3); it is reoriented to I-P-L.
    ``centroids`` are indices of the reoriented array; ``None`` computes them with
    :func:`reference_centroids`.
    """
    if image.GetDimension() != 3:
        raise HealthiVertError(f"reference mode needs a 3-D image, got {image.GetDimension()}-D")
    spacing = np.array(image.GetSpacing())
    if np.any(np.abs(spacing - 1.0) > SPACING_TOLERANCE):
        raise HealthiVertError(
            f"reference mode needs 1 mm isotropic input, got spacing {tuple(spacing.round(4))} mm; resample first")
    oriented = sitk.DICOMOrient(image, ORIENTATION)
    mask = sitk.GetArrayFromImage(oriented).transpose(2, 1, 0)
    if centroids is None:
        centroids = reference_centroids(mask)
    return reference_crop(mask, centroids, target_label)
