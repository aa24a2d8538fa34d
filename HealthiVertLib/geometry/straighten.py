"""Straightening: a smooth spine curve with a twist-free frame, forward and inverse mapping.

All coordinates are world LPS millimetres (x to the patient's left, y posterior, z superior), so
the result does not depend on how the input volume is oriented or spaced.

The curve is a natural cubic spline through the vertebra centroids (cranial -> caudal), extended
straight beyond the end centroids and resampled every ``step`` mm of arc length. Its frame is
anchored to the patient's posterior direction instead of being propagated (Frenet) along the
curve, so it cannot twist: ``T`` the unit tangent (caudal), ``V = T x P / |T x P|`` towards the
patient's left, ``U = V x T`` towards posterior. Straightened coordinates are ``(s, u, v)``:
arc length, antero-posterior offset (posterior positive), left-right offset (left positive).

Measuring a single vertebra uses :class:`LocalFrame`, the curve frame frozen at the vertebra's
centroid: a rigid frame in which columns stay straight and heights are true millimetres (a fully
straightened grid stretches the convex side of a lordotic spine by up to ~20 %).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import interpolate, ndimage

from ..errors import HealthiVertError

POSTERIOR_LPS = np.array([0.0, 1.0, 0.0])
CAUDAL_LPS = np.array([0.0, 0.0, -1.0])


def _frame_from_tangent(tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior-anchored frame (T, U, V) for unit tangents of shape (..., 3)."""
    left = np.cross(tangent, POSTERIOR_LPS)
    norm = np.linalg.norm(left, axis=-1, keepdims=True)
    if np.any(norm < 0.1):
        raise HealthiVertError(
            "The spine runs almost antero-posteriorly in this image; check the image orientation "
            "(direction cosines) of the label map."
        )
    left = left / norm
    posterior = np.cross(left, tangent)
    return tangent, posterior, left


@dataclass
class SpineCurve:
    """A spine centre line sampled every ``step`` mm of arc length, with its frame.

    ``points``, ``tangents``, ``posterior``, ``left`` have shape (M, 3); sample ``k`` lies at arc
    length ``s = k * step`` from the cranial end of the (extended) curve.
    """

    points: np.ndarray
    tangents: np.ndarray
    posterior: np.ndarray
    left: np.ndarray
    step: float = 1.0

    @classmethod
    def from_centroids(
        cls, centroids: np.ndarray, extend_mm: float = 30.0, step: float = 1.0
    ) -> "SpineCurve":
        """Fit the curve through centroids (N, 3) in LPS mm, ordered cranial -> caudal.

        One centroid gives a straight line along the patient's cranio-caudal axis; two give a
        line; three or more a natural cubic spline parametrised by chord length.
        """
        c = np.asarray(centroids, dtype=float).reshape(-1, 3)
        if len(c) == 0:
            raise HealthiVertError("No vertebra centroid to build the spine curve from.")
        if len(c) == 1:
            dense = c[0] + np.outer(np.array([0.0, 1.0]), CAUDAL_LPS)
        else:
            chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(c, axis=0), axis=1))]
            if np.any(np.diff(chord) < 1e-6):
                raise HealthiVertError("Two vertebrae have the same centroid; the label map is inconsistent.")
            t = np.linspace(0.0, chord[-1], max(int(chord[-1] / 0.25), 2) + 1)
            if len(c) >= 3:
                dense = interpolate.CubicSpline(chord, c, bc_type="natural")(t)
            else:
                dense = c[0] + np.outer(t / chord[-1], c[1] - c[0])
        head = _unit(dense[0] - dense[1])
        tail = _unit(dense[-1] - dense[-2])
        ext = np.arange(extend_mm, 0.0, -0.25)[:, None]
        dense = np.vstack([dense[0] + ext * head, dense, dense[-1] + ext[::-1] * tail])
        return cls._resample(dense, step)

    @classmethod
    def _resample(cls, dense: np.ndarray, step: float) -> "SpineCurve":
        arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))]
        s = np.arange(0.0, arc[-1] + 1e-9, step)
        points = np.stack([np.interp(s, arc, dense[:, k]) for k in range(3)], axis=1)
        tangents = _unit(np.gradient(points, axis=0))
        t, p, left = _frame_from_tangent(tangents)
        return cls(points=points, tangents=t, posterior=p, left=left, step=step)

    @property
    def length(self) -> float:
        """Arc length of the sampled curve in mm."""
        return (len(self.points) - 1) * self.step

    def _at(self, array: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Linear interpolation of a per-sample array at arc lengths ``s`` (clamped to the ends)."""
        x = np.clip(np.asarray(s, dtype=float) / self.step, 0, len(array) - 1)
        k = np.minimum(np.floor(x).astype(int), len(array) - 2)
        w = (x - k)[..., None]
        return array[k] * (1 - w) + array[k + 1] * w

    def frame_at(self, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Point, tangent, posterior and left unit vectors at arc length ``s``."""
        t, p, left = _frame_from_tangent(_unit(self._at(self.tangents, s)))
        return self._at(self.points, s), t, p, left

    def to_world(self, s: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Forward mapping: straightened (s, u, v) -> world LPS (..., 3)."""
        s, u, v = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (s, u, v)))
        return (
            self._at(self.points, s)
            + u[..., None] * self._at(self.posterior, s)
            + v[..., None] * self._at(self.left, s)
        )

    def to_straightened(self, points: np.ndarray, chunk: int = 20000) -> np.ndarray:
        """Inverse mapping: world LPS (N, 3) -> straightened (N, 3) as (s, u, v).

        ``s`` is where the point's normal plane meets the curve (the signed distance to the
        sample planes changes sign; the crossing nearest to the point is taken and refined
        linearly). Points beyond the curve's ends get NaN.
        """
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        out = np.full((len(pts), 3), np.nan)
        for start in range(0, len(pts), chunk):
            out[start : start + chunk] = self._invert_chunk(pts[start : start + chunk])
        return out

    def _invert_chunk(self, pts: np.ndarray) -> np.ndarray:
        rel = pts[:, None, :] - self.points[None, :, :]  # (N, M, 3)
        signed = np.einsum("nmk,mk->nm", rel, self.tangents)
        dist = np.linalg.norm(rel, axis=2)
        crossing = (signed[:, :-1] >= 0) & (signed[:, 1:] < 0)
        score = np.where(crossing, dist[:, :-1], np.inf)
        k = np.argmin(score, axis=1)
        found = np.isfinite(score[np.arange(len(pts)), k])
        d0 = signed[np.arange(len(pts)), k]
        d1 = signed[np.arange(len(pts)), k + 1]
        frac = np.where(found, d0 / np.where(d0 - d1 == 0, 1, d0 - d1), np.nan)
        s = (k + frac) * self.step
        res = np.full((len(pts), 3), np.nan)
        if np.any(found):
            sf = s[found]
            rel_c = pts[found] - self._at(self.points, sf)
            res[found, 0] = sf
            res[found, 1] = np.einsum("nk,nk->n", rel_c, self._at(self.posterior, sf))
            res[found, 2] = np.einsum("nk,nk->n", rel_c, self._at(self.left, sf))
        return res

    def straightened_grid(
        self, s_range: tuple[float, float], half_width: float = 64.0, spacing: float = 1.0
    ) -> np.ndarray:
        """World points (S, U, V, 3) of a straightened block: s in ``s_range``, |u|, |v| <= half_width."""
        s = np.arange(s_range[0], s_range[1] + 1e-9, spacing)
        uv = np.arange(-half_width, half_width + 1e-9, spacing)
        S, U, V = np.meshgrid(s, uv, uv, indexing="ij")
        return self.to_world(S, U, V)


@dataclass
class LocalFrame:
    """A rigid, right-handed frame (s caudal, u posterior, v left) centred on a vertebra."""

    origin: np.ndarray  # LPS mm
    axes: np.ndarray  # (3, 3) rows: s, u, v unit vectors in LPS

    @classmethod
    def on_curve(cls, curve: SpineCurve, origin: np.ndarray) -> "LocalFrame":
        """Frame at ``origin`` with the curve's axes where the origin's plane meets the curve."""
        s = curve.to_straightened(origin[None])[0, 0]
        if not np.isfinite(s):
            s = float(np.clip(np.dot(origin - curve.points[0], curve.tangents[0]), 0, curve.length))
        _, t, p, left = curve.frame_at(s)
        return cls(origin=np.asarray(origin, dtype=float), axes=np.stack([t, p, left]))

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """Local (..., 3) mm -> world LPS (..., 3)."""
        return self.origin + np.asarray(local) @ self.axes

    def to_local(self, world: np.ndarray) -> np.ndarray:
        """World LPS (..., 3) -> local (..., 3) mm."""
        return (np.asarray(world) - self.origin) @ self.axes.T


@dataclass(frozen=True)
class Block:
    """A regular 1 mm grid in a local frame: axis ranges (start, count) per s, u, v."""

    start: tuple[float, float, float]
    shape: tuple[int, int, int]
    spacing: float = 1.0

    def axis(self, k: int) -> np.ndarray:
        """Coordinates (mm) of the grid along local axis ``k``."""
        return self.start[k] + self.spacing * np.arange(self.shape[k])

    def local_points(self) -> np.ndarray:
        """Local coordinates (S, U, V, 3) of every grid node."""
        return np.stack(np.meshgrid(self.axis(0), self.axis(1), self.axis(2), indexing="ij"), axis=-1)

    def index_of(self, local: np.ndarray) -> np.ndarray:
        """Continuous grid index of local coordinates (..., 3)."""
        return (np.asarray(local) - np.asarray(self.start)) / self.spacing


def world_to_index_affine(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with continuous ITK index (i, j, k) = A @ x + b for world LPS x."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    a = np.linalg.inv(direction @ np.diag(spacing))
    return a, -a @ np.array(image.GetOrigin())


def block_to_index_affine(image: sitk.Image, frame: LocalFrame, block: Block) -> tuple[np.ndarray, np.ndarray]:
    """(M, c) with continuous ITK index of ``image`` = M @ block index + c."""
    a, b = world_to_index_affine(image)
    matrix = block.spacing * a @ frame.axes.T
    return matrix, a @ frame.to_world(np.asarray(block.start, dtype=float)) + b


def index_box(image: sitk.Image, matrix: np.ndarray, offset: np.ndarray, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """ITK index box [lo, hi) of ``image`` (clipped to it) that covers the block-index box [lo, hi]
    mapped by ``(matrix, offset)`` of ``block_to_index_affine``."""
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    idx = corners @ matrix.T + offset
    size = np.array(image.GetSize())
    return (np.clip(np.floor(idx.min(axis=0)).astype(int), 0, size),
            np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, 0, size))


def block_resampler(image: sitk.Image, frame: LocalFrame, block: Block, support=None):
    """``(lo, hi, back)``: the ITK index box of ``image`` around ``block`` and ``back(arr, order=1)``,
    which resamples an array on the block into that box (ijk order); None when the box is empty.

    ``support``: the block-index box ``(first, last)`` (inclusive) outside which every array to be
    resampled is zero; the image box then covers only that part of the block (one voxel beyond it,
    where linear interpolation still reads it), so nothing is computed where the result is zero."""
    matrix, offset = block_to_index_affine(image, frame, block)
    inv = np.linalg.inv(matrix)
    if support is None:
        lo, hi = index_box(image, matrix, offset, (0, 0, 0), block.shape)
    else:
        lo, hi = index_box(image, matrix, offset, np.asarray(support[0]) - 1, np.asarray(support[1]) + 1)
    size = tuple(int(x) for x in hi - lo)
    if min(size) <= 0:
        return None

    def back(arr: np.ndarray, order: int = 1) -> np.ndarray:
        return ndimage.affine_transform(arr, inv, inv @ (lo - offset), output_shape=size, order=order, cval=0.0)

    return lo, hi, back


def array_ijk(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image as a numpy view in ITK index order (i, j, k)."""
    return sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1, n)
