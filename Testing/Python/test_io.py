"""Tests of HealthiVertLib.io: reading and validating images, label statistics, loading a case."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.io.case import Case, case_name_from_path, load_case
from HealthiVertLib.io.images import check_same_grid, label_centroids, label_voxel_counts, read_ct, read_image, read_label_map
from HealthiVertLib.io.files import write_text_atomic
from HealthiVertLib.io.labels import TOTALSEG, VERSE

from conftest import TPT_CT as TPTBOX_CT, TPT_SEG as TPTBOX_VERT, TPT_SUB as TPTBOX_SUBREG
from HealthiVertLib.io.resources import SAMPLE_DIR as SAMPLE


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_image(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


@pytest.fixture(scope="module")
def tptbox_ct() -> sitk.Image:
    return sitk.ReadImage(str(TPTBOX_CT))


# --- read_image -------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", [".nrrd", ".nhdr", ".mha", ".mhd", ".nii"])
def test_round_trip_formats(tmp_path, tptbox_ct, extension):
    path = write(tptbox_ct, tmp_path / f"ct{extension}")
    assert_same_image(read_image(path, "CT"), tptbox_ct)


def test_read_nifti_gz(tptbox_ct):
    image = read_image(TPTBOX_CT, "CT")
    assert image.GetDimension() == 3
    assert_same_image(image, tptbox_ct)


def test_missing_file(tmp_path):
    with pytest.raises(HealthiVertError, match="The CT file '.*nothere.nii.gz' does not exist"):
        read_image(tmp_path / "nothere.nii.gz", "CT")


def test_directory(tmp_path):
    with pytest.raises(HealthiVertError, match="vertebra labels file .* is a folder.*DICOM"):
        read_image(tmp_path, "vertebra labels")


def test_named_pipe_is_refused_unopened(tmp_path):
    fifo = tmp_path / "seg.nii.gz"
    os.mkfifo(fifo)  # opening it would block forever: no writer
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("reading a named pipe blocked"))
    signal.alarm(30)
    try:
        with pytest.raises(HealthiVertError, match="vertebra labels file .* is not a regular file"):
            read_label_map(fifo, "vertebra labels")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_unreadable_file_is_reported_as_permission_denied(tmp_path):
    path = tmp_path / "ct.nii.gz"
    shutil.copy(TPTBOX_CT, path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        with pytest.raises(HealthiVertError, match=r"CT file .* cannot be read \(permission denied\)") as err:
            read_ct(path)
        assert "damaged" not in str(err.value) and "does not exist" not in str(err.value)
    finally:
        path.chmod(0o644)


def test_output_locations_are_checked(tmp_path):
    from HealthiVertLib.io.files import check_output_dir, check_output_file, check_outputs_apart

    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists(), "checking creates nothing"
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(HealthiVertError, match="--out '.*file' is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(HealthiVertError, match="--out '.*file.sub' lies under the file '.*file'"):
        check_output_dir(tmp_path / "file" / "sub")
    with pytest.raises(HealthiVertError, match="300 bytes long.*at most 255"):
        check_output_dir(tmp_path / ("a" * 300))
    with pytest.raises(HealthiVertError, match="is a folder; give a file name"):
        check_output_file(tmp_path)
    with pytest.raises(HealthiVertError, match="--out '.*file.g.json' lies under the file"):
        check_output_file(tmp_path / "file" / "g.json")
    check_outputs_apart(tmp_path / "out", [tmp_path / "seg.nii.gz", None])
    with pytest.raises(HealthiVertError, match="holds the input file .*seg.nii.gz.*Choose another folder"):
        check_outputs_apart(tmp_path, [None, tmp_path / "seg.nii.gz"])


def test_unsupported_extension(tmp_path):
    path = tmp_path / "slice.dcm"
    path.write_bytes(b"\0" * 200)
    with pytest.raises(HealthiVertError, match="not in a supported format.*NIfTI"):
        read_image(path, "CT")


def test_truncated_gzip(tmp_path):
    data = TPTBOX_CT.read_bytes()
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HealthiVertError, match="The CT file .* is incomplete"):
        read_image(path, "CT")


def test_uncompressed_nifti_named_gz(tmp_path, tptbox_ct):
    path = tmp_path / "ct.nii.gz"
    shutil.copy(write(tptbox_ct, tmp_path / "plain.nii"), path)
    assert_same_image(read_image(path, "CT"), tptbox_ct)


def test_truncated_uncompressed_nifti(tmp_path, tptbox_ct):
    path = write(tptbox_ct, tmp_path / "ct.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(HealthiVertError, match="is incomplete"):
        read_image(path, "CT")


def test_truncated_compressed_nrrd(tmp_path, tptbox_ct):
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(tptbox_ct, str(path), useCompression=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HealthiVertError, match="could not be read: it is damaged"):
        read_image(path, "CT")


@pytest.mark.parametrize("name", ["random.nii.gz", "random.nii", "random.nrrd", "random.mha"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(HealthiVertError, match="subregion labels file .* could not be read"):
        read_image(path, "subregion labels")


def test_2d_image(tmp_path, tptbox_ct):
    path = write(tptbox_ct[:, :, 10], tmp_path / "slice.nii.gz")
    with pytest.raises(HealthiVertError, match="not a 3D volume"):
        read_image(path, "CT")


def test_single_slice_volume(tmp_path, tptbox_ct):
    path = write(tptbox_ct[:, :, 10:11], tmp_path / "slice.nii.gz")
    with pytest.raises(HealthiVertError, match="not a 3D volume.*73×47×1"):
        read_image(path, "CT")


def test_4d_with_several_volumes(tmp_path, tptbox_ct):
    path = write(sitk.JoinSeries([tptbox_ct, tptbox_ct, tptbox_ct]), tmp_path / "series.nii.gz")
    with pytest.raises(HealthiVertError, match="is 4D with 3 volumes"):
        read_image(path, "CT")


def test_4d_with_one_volume_is_3d(tmp_path, tptbox_ct):
    path = write(sitk.JoinSeries([tptbox_ct]), tmp_path / "single.nrrd")
    image = read_image(path, "CT")
    assert image.GetSize() == tptbox_ct.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(tptbox_ct))


def test_vector_image(tmp_path):
    path = write(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), tmp_path / "rgb.mha")
    with pytest.raises(HealthiVertError, match="has 3 values per voxel"):
        read_image(path, "CT")


def test_empty_image(tmp_path):
    path = tmp_path / "empty.mha"
    path.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 10 10 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    , encoding="utf-8")
    with pytest.raises(HealthiVertError, match="is empty"):
        read_image(path, "CT")


# --- read_ct ----------------------------------------------------------------------------------


def test_read_ct_is_float32():
    ct = read_ct(SAMPLE / "ct.nii.gz")
    assert ct.GetPixelID() == sitk.sitkFloat32
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "ct.nii.gz")))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), original.astype(np.float32))


def float_ct_with_nan(reference: sitk.Image) -> sitk.Image:
    array = sitk.GetArrayFromImage(reference).astype(np.float32)
    array[0, 0, :3] = np.nan
    array[1, 1, 1] = np.inf
    return like(array, reference)


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_nan_and_inf_ct(tmp_path, tptbox_ct, extension):
    # ITK's NIfTI reader turns NaN into 0 without a word: HealthiVert must still notice
    path = write(float_ct_with_nan(tptbox_ct), tmp_path / f"ct{extension}")
    with pytest.raises(HealthiVertError, match="contains 3 NaN .* and 1 infinite voxels.*does not guess"):
        read_ct(path)


@pytest.mark.parametrize("pixel_type", [sitk.sitkFloat32, sitk.sitkFloat64])
def test_float_ct_without_nan(tmp_path, tptbox_ct, pixel_type):
    path = write(sitk.Cast(tptbox_ct, pixel_type), tmp_path / "ct.nii.gz")
    ct = read_ct(path)
    assert ct.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(tptbox_ct))


# --- read_label_map ---------------------------------------------------------------------------


def test_read_label_map_uint16():
    seg = read_label_map(TPTBOX_VERT, "vertebra labels")
    assert seg.GetPixelID() == sitk.sitkUInt16
    assert set(label_voxel_counts(seg)) == {21, 22, 23}


def test_float_label_map_is_cast(tmp_path):
    original = sitk.ReadImage(str(TPTBOX_VERT))
    path = write(sitk.Cast(original, sitk.sitkFloat32), tmp_path / "seg.nii.gz")
    seg = read_label_map(path, "vertebra labels")
    assert seg.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(seg), sitk.GetArrayViewFromImage(original))


def test_float_label_map_with_fractions(tmp_path):
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(TPTBOX_VERT))).astype(np.float32)
    array[array == 22] = 21.5
    path = write(like(array, sitk.ReadImage(str(TPTBOX_VERT))), tmp_path / "seg.nii.gz")
    with pytest.raises(HealthiVertError, match="not whole numbers \\(e.g. 21.5\\).*nearest-neighbour"):
        read_label_map(path, "vertebra labels")


def test_label_map_with_nan(tmp_path, tptbox_ct):
    with pytest.raises(HealthiVertError, match="vertebra labels file .* contains 3 NaN"):
        read_label_map(write(float_ct_with_nan(tptbox_ct), tmp_path / "seg.nii.gz"), "vertebra labels")


def test_negative_labels(tmp_path):
    with pytest.raises(HealthiVertError, match="negative values \\(lowest -1030\\)"):
        path = write(sitk.ReadImage(str(TPTBOX_CT)), tmp_path / "ct_as_seg.nii.gz")
        read_label_map(path, "vertebra labels")


def test_all_zero_label_map(tmp_path):
    reference = sitk.ReadImage(str(TPTBOX_VERT))
    path = write(reference * 0, tmp_path / "empty_seg.nii.gz")
    with pytest.raises(HealthiVertError, match="vertebra labels file .* contains no labels"):
        read_label_map(path, "vertebra labels")


def test_large_label_values_get_a_wider_type(tmp_path):
    reference = sitk.ReadImage(str(TPTBOX_VERT))
    array = sitk.GetArrayFromImage(reference).astype(np.uint32) * 10000
    seg = read_label_map(write(like(array, reference), tmp_path / "seg.nrrd"), "vertebra labels")
    assert seg.GetPixelID() == sitk.sitkUInt32
    assert set(label_voxel_counts(seg)) == {210000, 220000, 230000}


# --- grids ------------------------------------------------------------------------------------


def test_same_grid_passes(tptbox_ct):
    check_same_grid(tptbox_ct, sitk.ReadImage(str(TPTBOX_VERT)), ("CT", "vertebra labels"))
    nearly = sitk.Image(tptbox_ct)
    nearly.SetOrigin(tuple(o + 1e-5 for o in tptbox_ct.GetOrigin()))
    nearly.SetSpacing(tuple(s * (1 + 1e-6) for s in tptbox_ct.GetSpacing()))
    check_same_grid(tptbox_ct, nearly, ("CT", "vertebra labels"))


def test_different_grids(tptbox_ct):
    sample_seg = sitk.ReadImage(str(SAMPLE / "seg.nii.gz"))
    with pytest.raises(HealthiVertError) as error:
        check_same_grid(tptbox_ct, sample_seg, ("CT 'ct.nii.gz'", "vertebra labels 'seg.nii.gz'"))
    message = str(error.value)
    assert "vertebra labels 'seg.nii.gz' are not on the voxel grid of the CT 'ct.nii.gz'" in message
    assert "size (voxels): (73, 47, 73) vs (122, 101, 112)" in message
    assert "spacing (mm): (1.5, 1.5, 1.5) vs (3, 3, 3)" in message
    assert "origin (mm)" in message and "direction" in message
    assert "Resample Scalar/Vector/DWI Volume" in message and "Nearest" in message


def test_only_the_differing_property_is_listed(tptbox_ct):
    shifted = sitk.Image(tptbox_ct)
    shifted.SetOrigin(tuple(np.add(tptbox_ct.GetOrigin(), (0.0, 0.0, 0.5))))
    with pytest.raises(HealthiVertError) as error:
        check_same_grid(tptbox_ct, shifted, ("CT", "labels"))
    message = str(error.value)
    assert "origin (mm): (78, 135, -34.2) vs (78, 135, -33.7)" in message
    assert "size" not in message and "spacing" not in message and "direction:" not in message


# --- label statistics -------------------------------------------------------------------------


def test_label_centroids_and_counts():
    seg = sitk.ReadImage(str(TPTBOX_VERT))
    array = sitk.GetArrayFromImage(seg)
    centroids = label_centroids(seg)
    counts = label_voxel_counts(seg)
    assert set(centroids) == set(counts) == {21, 22, 23}
    for label in (21, 22, 23):
        zyx = np.argwhere(array == label).mean(axis=0)
        expected = seg.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist())
        np.testing.assert_allclose(centroids[label], expected, atol=1e-6)
        assert counts[label] == int((array == label).sum())
    # L2 (21) lies above L4 (23): LPS z increases cranially
    assert centroids[21][2] > centroids[22][2] > centroids[23][2]


# --- load_case --------------------------------------------------------------------------------


def test_load_sample_case():
    case = load_case(SAMPLE / "seg.nii.gz", SAMPLE / "ct.nii.gz", SAMPLE / "vertebrae_body.nii.gz")
    assert isinstance(case, Case)
    assert case.name == "sample"
    assert case.scheme is TOTALSEG
    assert case.ct.GetPixelID() == sitk.sitkFloat32
    assert case.seg.GetPixelID() == sitk.sitkUInt16
    assert case.subregions is not None
    assert case.paths == {
        "seg": str(SAMPLE / "seg.nii.gz"),
        "ct": str(SAMPLE / "ct.nii.gz"),
        "subregions": str(SAMPLE / "vertebrae_body.nii.gz"),
    }


def test_load_tptbox_case():
    case = load_case(TPTBOX_VERT, TPTBOX_CT, TPTBOX_SUBREG)
    assert case.name == "sub-ct_seg-vert_label-22"
    assert case.scheme is VERSE


def test_load_mask_only_case_with_name_and_scheme():
    case = load_case(TPTBOX_VERT, labels="verse", name="patient 7")
    assert case.name == "patient 7"
    assert case.ct is None and case.subregions is None
    assert case.paths["ct"] is None


def test_load_case_grid_mismatch():
    with pytest.raises(HealthiVertError, match="labels '.*seg.nii.gz' are not on the voxel grid of the CT"):
        load_case(SAMPLE / "seg.nii.gz", TPTBOX_CT)


def test_load_case_subregion_grid_mismatch():
    with pytest.raises(HealthiVertError, match="subregion labels .* are not on the voxel grid of the"):
        load_case(TPTBOX_VERT, subregions_path=SAMPLE / "vertebrae_body.nii.gz")


def test_load_case_unknown_subregions():
    with pytest.raises(HealthiVertError, match="Unknown subregion labels"):
        load_case(TPTBOX_VERT, subregions_path=TPTBOX_VERT)


def test_load_case_scheme_without_vertebrae():
    with pytest.raises(HealthiVertError, match="no vertebra of the totalseg numbering"):
        load_case(TPTBOX_VERT, labels="totalseg")


def test_load_case_unknown_numbering(tmp_path):
    reference = sitk.ReadImage(str(TPTBOX_VERT))
    array = sitk.GetArrayFromImage(reference)
    swapped = np.where(array == 21, 23, np.where(array == 23, 21, array)).astype(np.uint8)
    path = write(like(swapped, reference), tmp_path / "swapped_seg.nii.gz")
    with pytest.raises(HealthiVertError, match="swapped_seg.nii.gz' is unknown"):
        load_case(path)


def test_load_case_does_not_modify_inputs(tmp_path):
    names = ("seg.nii.gz", "ct.nii.gz", "vertebrae_body.nii.gz")
    for name in names:
        shutil.copy2(SAMPLE / name, tmp_path / name)
    write_text_atomic(tmp_path / "dataset.json", '{"labels": {"background": 0, "L1": 31, "L2": 30}}')
    before = {p.name: (sha256(p), os.stat(p).st_mtime_ns) for p in tmp_path.iterdir()}
    case = load_case(
        tmp_path / "seg.nii.gz",
        tmp_path / "ct.nii.gz",
        tmp_path / "vertebrae_body.nii.gz",
        labels=tmp_path / "dataset.json",
    )
    assert dict(case.scheme.label_to_level) == {31: "L1", 30: "L2"}
    after = {p.name: (sha256(p), os.stat(p).st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("cases/sub-01_seg.nii.gz", "sub-01"),
        ("cases/0007_msk.nii.gz", "0007"),
        ("cases/patient-seg.nrrd", "patient"),
        ("cases/case_12.mha", "case_12"),
        ("case7/seg.nii.gz", "case7"),
        ("cases/P3_mask.nii", "P3"),
    ],
)
def test_case_name_from_path(path, name):
    assert case_name_from_path(Path(path)) == name
