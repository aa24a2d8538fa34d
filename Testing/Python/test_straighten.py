"""The spine curve: smooth, twist-free frame, forward and inverse mapping."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_SEG

from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.geometry.straighten import LocalFrame, SpineCurve


@pytest.fixture(scope="module")
def curve() -> SpineCurve:
    seg = sitk.ReadImage(str(SAMPLE_SEG))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(seg)
    centroids = np.array([stats.GetCentroid(label) for label in range(31, 26, -1)])  # L1 .. L5, the vertebrae not cut by the image edge
    return SpineCurve.from_centroids(centroids)


def test_frame_is_orthonormal_right_handed_and_anatomical(curve):
    t, u, v = curve.tangents, curve.posterior, curve.left
    for a, b in ((t, u), (t, v), (u, v)):
        assert np.abs(np.einsum("nk,nk->n", a, b)).max() < 1e-9
    assert np.allclose(np.cross(t, u), v, atol=1e-9)
    assert np.all(t[:, 2] < 0)  # caudal
    assert np.all(u[:, 1] > 0.7) and np.all(v[:, 0] > 0.9)  # posterior, left in LPS


def test_frame_does_not_twist(curve):
    """Consecutive frames (1 mm apart) rotate by well under a degree about the tangent."""
    twist = np.einsum("nk,nk->n", curve.left[1:], curve.left[:-1])
    assert twist.min() > np.cos(np.radians(1.0))


def test_forward_and_inverse_mapping_round_trip(curve):
    """Exact within the vertebral region (offsets well inside the lumbar radius of curvature)."""
    rng = np.random.default_rng(1)
    s = rng.uniform(20, curve.length - 20, 500)
    u = rng.uniform(-40, 40, 500)
    v = rng.uniform(-40, 40, 500)
    world = curve.to_world(s, u, v)
    back = curve.to_straightened(world)
    assert np.allclose(back, np.stack([s, u, v], axis=1), atol=0.05)


def test_points_beyond_the_curve_map_to_nan(curve):
    far = curve.points[0] - 50 * curve.tangents[0]
    assert np.isnan(curve.to_straightened(far[None])).all()


def test_single_centroid_gives_a_cranio_caudal_line():
    c = SpineCurve.from_centroids(np.array([[1.0, 2.0, 3.0]]), extend_mm=10)
    assert np.allclose(c.tangents, [0, 0, -1]) and c.length == pytest.approx(21, abs=1)


def test_local_frame_round_trip(curve):
    frame = LocalFrame.on_curve(curve, curve.points[40] + np.array([0.0, -20.0, 0.0]))
    p = np.random.default_rng(2).normal(size=(10, 3)) * 30
    assert np.allclose(frame.to_local(frame.to_world(p)), p)
    assert np.allclose(frame.axes @ frame.axes.T, np.eye(3))


def test_duplicate_centroids_are_rejected():
    with pytest.raises(HealthiVertError, match="same centroid"):
        SpineCurve.from_centroids(np.array([[0, 0, 0], [0, 0, 0], [0, 0, -30.0]]))
