"""Hostile inputs that once gave a silent wrong grade or a traceback (issue 11): broken voxel geometry, a
label map as the CT, bounded JSON, grader files with runaway coefficients, grid mismatches, and the
research commands' option checks. Each ends in one line on stderr and exit status 2, inputs untouched.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_BODY, SAMPLE_CT, SAMPLE_SEG, TPT_CT, sha256

from HealthiVertLib.app.cli import main
from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.geometry.body import MAX_BLOCK_VOXELS, extract_body
from HealthiVertLib.geometry.straighten import LocalFrame
from HealthiVertLib.io.images import check_looks_like_ct, read_ct, read_label_map
from HealthiVertLib.io.jsonable import MAX_JSON_BYTES, read_json
from HealthiVertLib.measure.grading import SVMGrader


def run(*args) -> int:
    return main([str(a) for a in args])


def fails(capfd, args, *patterns: str) -> str:
    """Run the command; assert exit status 2 and exactly one line on stderr (ITK's own output included)."""
    try:
        status = run(*args)
    except SystemExit as stop:  # option errors stop in argparse
        status = stop.code
    assert status == 2
    err = capfd.readouterr().err
    assert err.startswith("healthivert: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)
    return err


def grade_fails(capfd, tmp_path, inputs, *patterns: str) -> str:
    out = tmp_path / "out"
    before = {p: sha256(p) for p in inputs if isinstance(p, Path) and p.is_file()}
    err = fails(capfd, ["grade", *inputs, "--out", out, "--progress", "none", "--no-figures"], *patterns)
    assert not (out / "report.json").exists()
    assert before == {p: sha256(p) for p in before}, "inputs must never be modified"
    return err


def nifti_with_header(source, path, pixdim=None, sform_code=None, srow=None):
    """A copy of a NIfTI-1 file with ``pixdim`` and sform entries ({index: value}) and the sform code replaced."""
    raw = bytearray(gzip.decompress(source.read_bytes()))
    assert struct.unpack("<i", raw[:4])[0] == 348
    for index, value in (pixdim or {}).items():
        raw[76 + 4 * index : 80 + 4 * index] = struct.pack("<f", value)
    for index, value in (srow or {}).items():  # srow_x, srow_y, srow_z: indices 0-3, 4-7, 8-11
        raw[280 + 4 * index : 284 + 4 * index] = struct.pack("<f", value)
    if sform_code is not None:
        raw[254:256] = struct.pack("<h", sform_code)
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


# --- voxel geometry -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, -3.0, float("nan")])
def test_nifti_pixdim_not_positive_is_refused_naming_what_was_read(tmp_path, capfd, value):
    # the sample's sform says 3 mm on every axis; ITK read 0 or NaN as 1 mm (L4 graded 2) and mirrored -3
    seg = nifti_with_header(SAMPLE_SEG, tmp_path / "seg.nii.gz", pixdim={3: value})
    err = grade_fails(capfd, tmp_path, ["--seg", seg, "--all"], r"seg\.nii\.gz", r"pixdim \(3, 3, (0|-3|nan)\) mm",
                      r"axis 3", r"sform gives \(3, 3, 3\) mm")
    assert ("mirror" in err) == (value < 0)


def test_nifti_pixdim_contradicted_by_its_sform_is_refused(tmp_path, capfd):
    ct = nifti_with_header(SAMPLE_CT, tmp_path / "ct.nii.gz", pixdim={1: 1.0, 2: 1.0, 3: 1.0})
    grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--ct", ct, "--all"], "CT file '.*ct.nii.gz'",
                r"pixdim \(1, 1, 1\) mm, sform \(3, 3, 3\) mm")


@pytest.mark.parametrize("spacing, shown", [(1e6, "1000000"), (0.01, "0.01")])
def test_absurd_spacing_is_refused(tmp_path, capfd, spacing, shown):
    seg = nifti_with_header(SAMPLE_SEG, tmp_path / "seg.nii.gz", pixdim={1: spacing, 2: spacing, 3: spacing},
                            sform_code=0)
    grade_fails(capfd, tmp_path, ["--seg", seg, "--all"], rf"spacing of \({shown}, {shown}, {shown}\) mm",
                r"0\.05 to 20 mm")


def test_clinical_spacings_load(tmp_path):
    for spacing in [(0.3, 0.3, 0.5), (0.46, 0.46, 3.0), (1, 1, 5)]:
        image = sitk.Image(8, 8, 8, sitk.sitkUInt8)
        image.SetSpacing(spacing)
        image[4, 4, 4] = 1
        path = tmp_path / "seg.nii.gz"
        sitk.WriteImage(image, str(path))
        assert read_label_map(path, "vertebra labels").GetSpacing() == pytest.approx(spacing, rel=1e-6)


def test_nifti_with_a_sheared_sform_is_refused(tmp_path, capfd):
    # ITK would drop the sform for the (orthogonal) qform, with only a warning
    seg = nifti_with_header(SAMPLE_SEG, tmp_path / "seg.nii.gz", srow={6: 1.5, 10: 2.598076})
    grade_fails(capfd, tmp_path, ["--seg", seg, "--all"], "sheared sform", "axes 2 and 3 meet at 60.0°")


def sheared_nrrd(source, path):
    """``source`` as NRRD with its third axis tilted 30 degrees towards the second (non-orthogonal)."""
    plain = path.with_name("plain_" + path.name)
    sitk.WriteImage(sitk.ReadImage(str(source)), str(plain), useCompression=False)
    data = plain.read_bytes()
    header, _, _ = data.partition(b"\n\n")
    directions = re.search(rb"space directions: .*", header)[0]
    assert directions == b"space directions: (-3,0,0) (0,-3,0) (0,0,3)"
    path.write_bytes(data.replace(directions, b"space directions: (-3,0,0) (0,-3,0) (0,1.5,2.598076)", 1))
    return path


def test_sheared_grid_is_refused_not_coerced(tmp_path, capfd):
    # graded before, with the written volumes rotated by ITK and 60-80 mm away from the input
    seg, ct = sheared_nrrd(SAMPLE_SEG, tmp_path / "seg.nrrd"), sheared_nrrd(SAMPLE_CT, tmp_path / "ct.nrrd")
    grade_fails(capfd, tmp_path, ["--seg", seg, "--ct", ct, "--all"], "file '.*seg.nrrd' has a sheared",
                "axes 2 and 3 meet at 120.0° instead of 90°", "orthogonal grid")


def test_resampling_a_label_spread_over_a_huge_extent_is_capped():
    seg = sitk.Image(64, 64, 64, sitk.sitkUInt8) + 1  # one label over a 1.28 m cube of 20 mm voxels
    seg.SetSpacing((20.0, 20.0, 20.0))
    frame = LocalFrame(origin=np.array(seg.TransformContinuousIndexToPhysicalPoint((32, 32, 32))), axes=np.eye(3))
    seg_ijk = sitk.GetArrayViewFromImage(seg).transpose(2, 1, 0)
    with pytest.raises(HealthiVertError, match=rf"label 1 spans .* million voxels \(at most {MAX_BLOCK_VOXELS // 10**6}"):
        extract_body(1, frame, seg, seg_ijk, (np.zeros(3, int), np.array([64, 64, 64])))


# --- a CT must look like a CT ------------------------------------------------------------------


def test_a_label_map_is_not_a_ct():
    with pytest.raises(HealthiVertError, match="does not look like a CT in Hounsfield units.*label map"):
        check_looks_like_ct(read_ct(SAMPLE_SEG), SAMPLE_SEG)
    check_looks_like_ct(read_ct(SAMPLE_CT), SAMPLE_CT)
    check_looks_like_ct(read_ct(TPT_CT), TPT_CT)


def test_generator_refuses_a_label_map_as_ct(tmp_path, capfd):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    # graded L4 grade 2 before
    grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--ct", SAMPLE_SEG, "--vertebra", "L4", "--engine", "generator",
                                  "--device", "cpu"], "CT '.*seg.nii.gz' does not look like a CT", "--ct")


# --- bounded JSON ------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_dataset_json_is_one_line(tmp_path, capfd):
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": ' + DEEP + "}", encoding="utf-8")
    grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--all", "--labels", path], "dataset.json", "nested too deeply")


def test_deeply_nested_grader_is_one_line(tmp_path, capfd):
    path = tmp_path / "grader.json"
    path.write_text(DEEP, encoding="utf-8")
    grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--all", "--grader", path], "grader file .*grader.json",
                "nested too deeply")


def test_deeply_nested_grade_file_is_one_line(tmp_path, capfd):
    table, grades = _feature_table(tmp_path), tmp_path / "grades.json"
    grades.write_text(DEEP, encoding="utf-8")
    fails(capfd, ["train-grader", table, "--grades", grades, "--out", tmp_path / "g.json"], "grade file .*grades.json",
          "nested too deeply")


def test_huge_json_is_refused_by_size_before_reading(tmp_path, capfd):
    path = tmp_path / "dataset.json"
    with path.open("wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: no data written
    grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--all", "--labels", path], "dataset.json", "at most 16 MB")
    with pytest.raises(HealthiVertError, match="is a folder"):
        read_json(tmp_path, "settings file")


# --- grader files whose decisions run away -------------------------------------------------------


@pytest.fixture(scope="module")
def fitted() -> SVMGrader:
    rng = np.random.default_rng(0)
    y = np.arange(80) % 4
    X = np.clip(np.array([0.05, 0.22, 0.32, 0.5])[y, None] + rng.normal(0, 0.03, (80, 3)), -0.2, 0.9)
    return SVMGrader().fit(X, y, groups=[f"s{i % 20}" for i in range(80)])


@pytest.mark.parametrize("where", ["svm", "scaler", "calibration"])
def test_grader_with_runaway_coefficients_is_refused(tmp_path, capfd, fitted, where):
    data = fitted.to_dict()
    if where == "svm":
        data["svm"]["coef"][0][0] = 1e308  # graded a 35 % wedge 0 with confidence null before
    elif where == "scaler":
        data["scaler"]["scale"][1] = 1e-300
    else:
        data["calibration"]["coef"][0][0] = 1e7
    path = tmp_path / "grader.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--all", "--grader", path], "grader file .*grader.json",
                r"decision values reach .* for losses in \[-1, 1\]")


def test_fitted_grader_passes_and_a_non_finite_decision_is_an_error(fitted):
    assert fitted.decision_bound() < 1e3
    assert SVMGrader.from_dict(fitted.to_dict()).grade({"anterior": 0.35, "middle": 0.35, "posterior": 0.35})[0] >= 2
    with pytest.raises(HealthiVertError, match="decision values .* are not finite"):
        fitted.grade({"anterior": 1e308, "middle": -1e308, "posterior": 0.0})


def _feature_table(tmp_path, bad_value=None):
    path = tmp_path / "features.csv"
    rng = np.random.default_rng(1)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "verse_label", "rhlv_anterior", "rhlv_middle", "rhlv_posterior", "grade"])
        for i in range(40):
            grade = i % 4
            losses = np.array([0.05, 0.22, 0.32, 0.5])[grade] + rng.normal(0, 0.03, 3)
            writer.writerow([f"s{i % 10}", 8 + i // 10, *np.round(losses, 4), grade])
        if bad_value is not None:
            writer.writerow(["s99", 20, bad_value, 0.1, 0.1, 3])
    return path


def test_train_grader_refuses_a_feature_that_is_not_a_loss(tmp_path, capfd):
    table = _feature_table(tmp_path, bad_value="1e308")
    fails(capfd, ["train-grader", table, "--out", tmp_path / "g.json"], "features.csv line 42",
          "rhlv_anterior is 1e\\+308, not a height loss")
    assert not (tmp_path / "g.json").exists()


def test_train_grader_prints_the_kappa_it_stores(tmp_path, capfd):
    out = tmp_path / "g.json"
    assert run("train-grader", _feature_table(tmp_path), "--out", out) == 0
    kappa = json.loads(out.read_text(encoding="utf-8"))["training"]["cv"]["quadratic_weighted_kappa"]
    printed = capfd.readouterr().out
    assert "kappa nan" not in printed and f"quadratic kappa {kappa:.3f}." in printed


# --- grids that differ: one line, the property and both values ----------------------------------


def test_ct_on_another_grid_is_one_line_with_both_values(tmp_path, capfd):
    err = grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--ct", TPT_CT, "--all"],
                      "vertebra labels '.*seg.nii.gz' are not on the voxel grid of the CT '.*_ct.nii.gz'",
                      r"size \(voxels\): \(73, 47, 73\) vs \(122, 101, 112\)",
                      r"spacing \(mm\): \(1\.5, 1\.5, 1\.5\) vs \(3, 3, 3\)", r"origin \(mm\)")
    assert "direction" in err


def test_subregions_on_another_grid_is_one_line(tmp_path, capfd):
    shifted = sitk.ReadImage(str(SAMPLE_BODY))
    shifted.SetOrigin(tuple(np.add(shifted.GetOrigin(), (0.0, 0.0, 1.5))))
    path = tmp_path / "body.nii.gz"
    sitk.WriteImage(shifted, str(path))
    err = grade_fails(capfd, tmp_path, ["--seg", SAMPLE_SEG, "--subregions", path, "--all"],
                      r"subregion labels '.*body.nii.gz' are not on the voxel grid",
                      r"origin \(mm\): \(177\.9563, -11\.319, 94\.3018\) vs \(177\.9563, -11\.319, 95\.8018\)")
    assert "size" not in err and "spacing (mm)" not in err


# --- research commands: output checked first, numeric options ------------------------------------


@pytest.mark.parametrize("command", [["train-generator", "--steps", "1"], ["train-hgam", "--epochs", "1"]])
def test_training_commands_check_out_before_computing(tmp_path, capfd, command):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me", encoding="utf-8")
    fails(capfd, [*command, "--out", a_file / "sub"], "--out '.*a_file.sub' lies under the file")
    fails(capfd, [*command, "--out", a_file], "--out '.*a_file' is a file")
    assert a_file.read_text(encoding="utf-8") == "keep me"


def test_negative_seeds_and_weights_without_the_generator_are_refused(tmp_path, capfd):
    fails(capfd, ["simulate", "--seg", SAMPLE_SEG, "--vertebra", "L2", "--type", "wedge", "--loss", "0.3",
                  "--seed", "-5", "--out", tmp_path / "sim"], "--seed: must be 0 or more, not -5")
    fails(capfd, ["train-hgam", "--seed", "-1", "--out", tmp_path / "h"], "--seed: must be 0 or more")
    fails(capfd, ["grade", "--seg", SAMPLE_SEG, "--all", "--engine", "context", "--weights", tmp_path / "w.safetensors",
                  "--out", tmp_path / "o"], "--weights applies to --engine generator only")
    assert not (tmp_path / "sim").exists()
