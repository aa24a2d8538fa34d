"""The reference straightening mode reproduces the published HealthiVert-GAN label crops exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.geometry.reference import crop_straightened, reference_centroids, reference_crop, reference_crop_from_image, reference_straighten

DATA = Path(__file__).resolve().parents[1] / "Data" / "healthivert"
GOLDEN_LABELS = [18, 19, 20, 21, 22, 23]


def _nifti_order(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


@pytest.fixture(scope="module")
def mask_image() -> sitk.Image:
    return sitk.ReadImage(str(DATA / "0007_msk.nii.gz"))


@pytest.fixture(scope="module")
def mask(mask_image) -> np.ndarray:
    return _nifti_order(mask_image)


@pytest.fixture(scope="module")
def centroids() -> list[dict]:
    return json.loads((DATA / "0007.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def straightened(mask, centroids):
    return reference_straighten(mask, centroids)


def _golden(label: int) -> np.ndarray:
    return _nifti_order(sitk.ReadImage(str(DATA / "straightened_label" / f"0007_{label}.nii.gz")))


def test_centroids_match_reference_json(mask, centroids):
    computed = reference_centroids(mask)
    assert [entry["label"] for entry in computed] == [entry["label"] for entry in centroids]
    for mine, theirs in zip(computed, centroids):
        for axis in "XYZ":
            assert mine[axis] == pytest.approx(theirs[axis], abs=1e-9)


def test_centroids_skip_small_end_labels():
    volume = np.zeros((40, 40, 40), dtype=np.uint8)
    volume[0:2, 0:2, 0:2] = 1  # lowest label, 8 voxels < 6000: skipped
    volume[5:30, 5:30, 5:30] = 2  # 15625 voxels: kept
    volume[30:32, 30:32, 30:32] = 3  # highest label, 8 voxels < 8000: skipped
    computed = reference_centroids(volume)
    assert [entry["label"] for entry in computed] == [2]
    assert computed[0]["X"] == pytest.approx(17.0)


def test_straightened_shape_and_dtype(straightened):
    labels, curve = straightened
    assert labels.dtype == np.float64
    assert labels.shape[1:] == (128, 128)
    assert labels.shape[0] == len(curve.knots)


@pytest.mark.parametrize("label", GOLDEN_LABELS)
def test_crop_matches_golden_bit_for_bit(straightened, centroids, label):
    labels, curve = straightened
    crop = crop_straightened(labels, curve, centroids, label)
    golden = _golden(label)
    assert crop.dtype == golden.dtype == np.float64
    assert crop.shape == golden.shape == (256, 256, 64)
    assert np.array_equal(crop, golden), f"{np.count_nonzero(crop != golden)} voxels differ"


def test_reference_crop_end_to_end(mask, centroids):
    assert np.array_equal(reference_crop(mask, centroids, 20), _golden(20))


def test_crop_from_image_reorients(mask_image, centroids):
    # Same voxels stored R-A-S: DICOMOrient must bring them back to the I-P-L layout.
    stored_ras = sitk.DICOMOrient(mask_image, "RAS")
    assert stored_ras.GetSize() != mask_image.GetSize()
    assert np.array_equal(_nifti_order(sitk.DICOMOrient(stored_ras, "IPL")), _nifti_order(mask_image))
    assert np.array_equal(reference_crop_from_image(stored_ras, centroids, 22), _golden(22))


def test_crop_from_image_rejects_non_1mm_spacing(mask_image, centroids):
    resampled_header = sitk.Image(mask_image)
    resampled_header.SetSpacing((1.0, 1.0, 1.5))
    with pytest.raises(HealthiVertError, match="1 mm isotropic"):
        reference_crop_from_image(resampled_header, centroids, 20)


def test_unknown_target_label_is_reported(mask, centroids):
    with pytest.raises(HealthiVertError, match="label 5"):
        reference_crop(mask, centroids, 5)
