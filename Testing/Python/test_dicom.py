"""DICOM in and out: a CT series made here from the bundled sample, graded with --dicom, read back with highdicom.

The series is written by SimpleITK/GDCM with the tags a scanner writes (modality, UIDs, position and
orientation of every slice, spacing, thickness, rescale); the bad inputs are copies of a small crop of
it changed with pydicom. ``dciodvfy`` (Debian package dicom3tools) validates the objects where it is
installed (.ci/run installs it when it can).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_CT, SAMPLE_SEG

from HealthiVertLib.app.cli import main
from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.io.case import load_case
from HealthiVertLib.io.dicom import read_dicom_ct
from HealthiVertLib.io.labels import TOTALSEG, verse_label
from HealthiVertLib.io.terminology import SCT_CATEGORY, VERTEBRA_SCT

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498.7741"


def write_ct_series(image: sitk.Image, folder: Path, series: str = f"{UID_ROOT}.1", description: str = "test CT") -> Path:
    """Write ``image`` (HU) as a classic CT series, one file per slice, with the tags a scanner writes."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = [
        ("0010|0010", "Test^Patient"), ("0010|0020", "HV-TEST"), ("0020|000d", f"{UID_ROOT}.2"),
        ("0020|000e", series), ("0008|0060", "CT"), ("0008|0016", CT_SOP_CLASS), ("0020|0052", f"{UID_ROOT}.3"),
        ("0008|103e", description), ("0020|0011", "3"), ("0020|0010", "1"), ("0008|0020", "20260101"),
        ("0008|0030", "120000"), ("0008|1030", "CT abdomen"),
        ("0020|0037", "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))),
        ("0018|0050", f"{image.GetSpacing()[2]:.4f}"), ("0028|1052", "0"), ("0028|1053", "1"), ("0028|1054", "HU"),
    ]  # fmt: skip
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in tags:
            slice_.SetMetaData(tag, value)
        slice_.SetMetaData("0008|0018", f"{series}.{k + 1}")
        slice_.SetMetaData("0020|0013", str(k + 1))
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        writer.SetFileName(str(folder / f"IM{k + 1:04d}.dcm"))
        writer.Execute(slice_)
    return folder


@pytest.fixture(scope="module")
def dicom_ct(tmp_path_factory) -> Path:
    return write_ct_series(sitk.ReadImage(str(SAMPLE_CT)), tmp_path_factory.mktemp("dicom") / "ct")


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    """20 slices of the sample: enough for every input check, which runs before any grading."""
    return write_ct_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 40:60], tmp_path_factory.mktemp("small") / "ct")


@pytest.fixture(scope="module")
def graded(dicom_ct, tmp_path_factory) -> tuple[Path, Path]:
    """(DICOM run, NIfTI run) of grade --all on the same case."""
    root = tmp_path_factory.mktemp("graded")
    common = ["grade", "--seg", str(SAMPLE_SEG), "--all", "--no-figures", "--progress", "none"]
    assert main([*common, "--ct", str(dicom_ct), "--dicom", "--out", str(root / "dicom_run")]) == 0
    assert main([*common, "--ct", str(SAMPLE_CT), "--out", str(root / "nifti_run")]) == 0
    return root / "dicom_run", root / "nifti_run"


# --- reading ------------------------------------------------------------------------------------


def test_dicom_series_reads_as_the_nifti_it_came_from(dicom_ct):
    image, series = read_dicom_ct(dicom_ct)
    nifti = sitk.ReadImage(str(SAMPLE_CT))
    assert image.GetSize() == nifti.GetSize()
    assert np.allclose(image.GetOrigin(), nifti.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetSpacing(), nifti.GetSpacing(), atol=1e-3)
    assert np.allclose(image.GetDirection(), nifti.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(nifti).astype(np.float32))
    assert (series.patient_id, series.series_instance_uid, series.series_description) == (
        "HV-TEST", f"{UID_ROOT}.1", "test CT")
    assert len(series.files) == nifti.GetSize()[2]


def test_dicom_and_nifti_runs_agree(graded):
    dicom_run, nifti_run = graded
    a = json.loads((dicom_run / "report.json").read_text(encoding="utf-8"))
    b = json.loads((nifti_run / "report.json").read_text(encoding="utf-8"))
    assert [v["grade"] for v in a["vertebrae"]] == [v["grade"] for v in b["vertebrae"]]
    for va, vb in zip(a["vertebrae"], b["vertebrae"]):
        assert va["rhlv"] == pytest.approx(vb["rhlv"], abs=1e-9) if vb["rhlv"] else va["rhlv"] is None
        for point, xyz in (vb["genant_points_lps"] or {}).items():
            assert np.allclose(va["genant_points_lps"][point], xyz, atol=1e-3)
    for name in ("height_loss.nii.gz", "original_body_label.nii.gz"):
        x, y = sitk.ReadImage(str(dicom_run / name)), sitk.ReadImage(str(nifti_run / name))
        assert np.allclose(x.GetOrigin(), y.GetOrigin(), atol=1e-3)
        assert np.allclose(x.GetSpacing(), y.GetSpacing(), atol=1e-3)
        assert np.allclose(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y), atol=1e-6)


# --- writing and reading back -----------------------------------------------------------------------


def test_marker_lists_the_dicom_objects_and_rerun_replaces_them(graded):
    dicom_run, _ = graded
    marker = json.loads((dicom_run / "healthivert_complete.json").read_text(encoding="utf-8"))
    listed = {entry["file"] for entry in marker["files"]}
    on_disk = {f"dicom/{p.name}" for p in (dicom_run / "dicom").iterdir()}
    assert on_disk == {"dicom/seg_bodies.dcm", "dicom/seg_pseudo_healthy.dcm", "dicom/sr.dcm", "dicom/height_loss_pm.dcm"}
    assert on_disk <= listed


def test_seg_reads_back_with_one_coded_segment_per_vertebra(graded, dicom_ct):
    dicom_run, _ = graded
    report = json.loads((dicom_run / "report.json").read_text(encoding="utf-8"))
    bodies = sitk.GetArrayFromImage(sitk.ReadImage(str(dicom_run / "original_body_label.nii.gz")))
    ct = pydicom.dcmread(min(dicom_ct.iterdir()), stop_before_pixels=True)
    seg = hd.seg.segread(dicom_run / "dicom" / "seg_bodies.dcm")
    assert seg.StudyInstanceUID == ct.StudyInstanceUID and seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert seg.PatientID == "HV-TEST"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    label_of = {v["level"]: v["label"] for v in report["vertebrae"]}
    ct_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in sorted(dicom_ct.iterdir())]
    volume = seg.get_pixels_by_source_instance(ct_uids, combine_segments=True, relabel=False, ignore_spatial_locations=False)
    levels = []
    for description in seg.SegmentSequence:
        level = description.SegmentLabel.split()[0]
        levels.append(level)
        code = description.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodingSchemeDesignator, code.CodeValue) == ("SCT", VERTEBRA_SCT[level])
        assert description.SegmentedPropertyCategoryCodeSequence[0].CodeValue == SCT_CATEGORY[1]
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "HealthiVert" and algorithm.AlgorithmVersion
        parameters = hd.AlgorithmIdentificationSequence.from_sequence(
            description.SegmentationAlgorithmIdentificationSequence).parameters
        assert parameters["engine"] == "spine" and parameters["grader"] == report["grader"]
        assert parameters["bodies"] == "measured"
        # the segment holds exactly that vertebra's body voxels, in the CT's slice order
        assert np.array_equal(volume == description.SegmentNumber, bodies == label_of[level]), level
    assert levels == [v["level"] for v in report["vertebrae"] if (bodies == v["label"]).any()]
    healthy = hd.seg.segread(dicom_run / "dicom" / "seg_pseudo_healthy.dcm")
    assert healthy.SeriesInstanceUID == seg.SeriesInstanceUID and healthy.SOPInstanceUID != seg.SOPInstanceUID
    assert all("pseudo-healthy" in d.SegmentLabel for d in healthy.SegmentSequence)


def test_sr_holds_one_group_per_vertebra_linked_to_its_segment(graded, dicom_ct):
    dicom_run, _ = graded
    report = json.loads((dicom_run / "report.json").read_text(encoding="utf-8"))
    seg = hd.seg.segread(dicom_run / "dicom" / "seg_bodies.dcm")
    segment_of = {d.SegmentLabel.split()[0]: int(d.SegmentNumber) for d in seg.SegmentSequence}
    sr = hd.sr.srread(dicom_run / "dicom" / "sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    graded_levels = [v["level"] for v in report["vertebrae"] if v["status"] == "graded"]
    assert graded_levels and all(f"{lv} vertebra" in groups for lv in graded_levels)
    for vertebra in report["vertebrae"]:
        if vertebra["status"] != "graded":
            continue
        group = groups[f"{vertebra['level']} vertebra"]
        reference = group.referenced_segment
        sop = reference[0].ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert sop.ReferencedSegmentNumber == segment_of[vertebra["level"]]
        values = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values["Relative height loss, overall"][0] == pytest.approx(100 * vertebra["rhlv"]["overall"])
        assert values["Relative height loss, overall"][1] == "%"
        for third in ("anterior", "middle", "posterior"):
            mm = vertebra["point_heights_mm"]["original"][third]
            assert values[f"{third.capitalize()} vertebral height, measured"] == (pytest.approx(mm), "mm")
            mm = vertebra["point_heights_mm"]["pseudo_healthy"][third]
            assert values[f"{third.capitalize()} vertebral height, pseudo-healthy"] == (pytest.approx(mm), "mm")
        assert values["Vertebral abnormality score"][0] == pytest.approx(vertebra["abnormality_score"])
        assert values["Confidence of the Genant grade"][0] == pytest.approx(100 * vertebra["confidence"])
        evaluations = {q.name.meaning: q.value for q in group.get_qualitative_evaluations()}
        assert evaluations["Genant grade"].value == f"HV-G{vertebra['grade']}"
        assert evaluations["HealthiVert status"].meaning == "Graded"
    texts = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence[0].ContentSequence
             if item.ValueType == "TEXT"]
    assert any("not for diagnosis" in t for t in texts)
    all_texts = {item.TextValue for group in sr.ContentSequence[-1].ContentSequence
                 for item in group.ContentSequence if item.ValueType == "TEXT"}
    reasons = [v["reason"] for v in report["vertebrae"] if v["reason"]]
    assert reasons and all(reason in all_texts for reason in reasons)  # every character kept (UTF-8)
    evidence = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert evidence == {seg.SeriesInstanceUID, seg.ReferencedSeriesSequence[0].SeriesInstanceUID}


def test_parametric_map_is_the_height_loss_on_the_ct_grid(graded, dicom_ct):
    dicom_run, _ = graded
    pm = pydicom.dcmread(dicom_run / "dicom" / "height_loss_pm.dcm")
    loss = sitk.GetArrayFromImage(sitk.ReadImage(str(dicom_run / "height_loss.nii.gz")))
    frames = pm.pixel_array
    assert frames.dtype == np.float32 and frames.shape == loss.shape
    positions = np.array([pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient
                          for f in sorted(dicom_ct.iterdir())], dtype=float)
    seen = set()
    for frame, groups in zip(frames, pm.PerFrameFunctionalGroupsSequence):  # frames in highdicom's order
        where = np.array(groups.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        k = int(np.argmin(np.linalg.norm(positions - where, axis=1)))
        assert np.allclose(positions[k], where, atol=1e-3)  # each frame lies on a CT slice
        assert np.allclose(frame, 100 * loss[k], atol=1e-4)  # and holds that slice's loss
        seen.add(k)
    assert seen == set(range(len(positions)))
    assert frames.max() > 0  # the graded vertebrae lost some height somewhere
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "%"


def test_dciodvfy_finds_no_error(graded):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    dicom_run, _ = graded
    for path in sorted((dicom_run / "dicom").iterdir()):
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60, check=False)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{path.name}: {errors}"


# --- DICOM SEG in -----------------------------------------------------------------------------------


def _seg_from_labels(labels: sitk.Image, ct_folder: Path, path: Path, extra_spleen: bool = True) -> Path:
    """A DICOM SEG (highdicom) of the sample's TotalSegmentator vertebrae, SNOMED coded, plus the spleen."""
    _, series = read_dicom_ct(ct_folder)
    ct = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    values = sitk.GetArrayFromImage(labels)
    lookup = np.zeros(max(int(values.max()), 1) + 1, dtype=np.uint16)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name="test", family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"), version="1")
    wanted = [(label, TOTALSEG.level_of(label)) for label in np.unique(values) if TOTALSEG.level_of(label) in VERTEBRA_SCT]
    for number, (label, level) in enumerate(wanted, start=1):
        lookup[label] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"vertebrae_{level}",
            segmented_property_category=hd.sr.CodedConcept(SCT_CATEGORY[1], "SCT", SCT_CATEGORY[2]),
            segmented_property_type=hd.sr.CodedConcept(VERTEBRA_SCT[level], "SCT", f"{level} vertebra"),
            algorithm_type="AUTOMATIC", algorithm_identification=algorithm))
    if extra_spleen:
        lookup[1] = len(wanted) + 1  # TotalSegmentator label 1: the spleen, not a vertebra
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(wanted) + 1, segment_label="spleen",
            segmented_property_category=hd.sr.CodedConcept(SCT_CATEGORY[1], "SCT", SCT_CATEGORY[2]),
            segmented_property_type=hd.sr.CodedConcept("78961009", "SCT", "Spleen"),
            algorithm_type="AUTOMATIC", algorithm_identification=algorithm))
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=lookup[values], segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


def test_dicom_seg_in_gives_verse_labels_on_the_ct_grid(dicom_ct, tmp_path):
    labels = sitk.ReadImage(str(SAMPLE_SEG))
    seg_file = _seg_from_labels(labels, dicom_ct, tmp_path / "seg.dcm")
    case = load_case(seg_file, dicom_ct)
    assert case.scheme.name == "verse" and set(case.dicom) == {"ct", "seg"}
    got = sitk.GetArrayFromImage(case.seg)
    values = sitk.GetArrayFromImage(labels)
    expected = np.zeros_like(got)
    for label in np.unique(values):
        level = TOTALSEG.level_of(label)
        if level in VERTEBRA_SCT:
            expected[values == label] = verse_label(level)
    assert np.array_equal(got, expected)  # the spleen segment is left out
    assert np.allclose(case.seg.GetOrigin(), case.ct.GetOrigin(), atol=1e-3)
    # the SEG as a folder, with the CT series beside it: --ct and --seg pick their own series
    both = tmp_path / "both"
    shutil.copytree(dicom_ct, both)
    shutil.copy(seg_file, both / "seg.dcm")
    case = load_case(both, both)
    assert np.array_equal(sitk.GetArrayFromImage(case.seg), expected)
    # --series naming the CT series still lets --seg take the folder's only SEG
    case = load_case(both, both, series=[case.dicom["ct"].series_instance_uid])
    assert case.dicom["seg"].modality == "SEG"


def test_dicom_seg_without_vertebrae_is_refused(dicom_ct, tmp_path):
    labels = sitk.ReadImage(str(SAMPLE_SEG))
    array = sitk.GetArrayFromImage(labels)
    only_spleen = sitk.GetImageFromArray(np.where(array == 1, 1, 0).astype(np.uint8))
    only_spleen.CopyInformation(labels)
    seg_file = _seg_from_labels(only_spleen, dicom_ct, tmp_path / "spleen.dcm")
    with pytest.raises(HealthiVertError, match="no vertebra segment.*spleen"):
        load_case(seg_file, dicom_ct)


# --- bad inputs: one line, exit status 2 -----------------------------------------------------------


def _copy(small_ct: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ct"
    shutil.copytree(small_ct, folder)
    return folder


def _edit(folder: Path, change) -> None:
    for k, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        if change(k, ds) is not False:
            ds.save_as(path)


def _two_series(small_ct, tmp_path):
    folder = _copy(small_ct, tmp_path)
    for k, path in enumerate(sorted(small_ct.iterdir())):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SeriesDescription = f"{UID_ROOT}.9", f"{UID_ROOT}.9.{k}", "bone kernel"
        ds.save_as(folder / f"B{k:04d}.dcm")
    return folder


def _missing_slice(small_ct, tmp_path):
    folder = _copy(small_ct, tmp_path)
    (folder / "IM0010.dcm").unlink()
    return folder


def _irregular(small_ct, tmp_path):
    folder = _copy(small_ct, tmp_path)
    _edit(folder, lambda k, ds: setattr(ds, "ImagePositionPatient",
                                        [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.5 * (k % 2)]))
    return folder


def _tilt(small_ct, tmp_path):
    folder = _copy(small_ct, tmp_path)
    _edit(folder, lambda k, ds: setattr(ds, "ImagePositionPatient",
                                        [ds.ImagePositionPatient[0], float(ds.ImagePositionPatient[1]) + 0.5 * k,
                                         ds.ImagePositionPatient[2]]))
    return folder


def _mixed_orientation(small_ct, tmp_path):
    folder = _copy(small_ct, tmp_path)
    _edit(folder, lambda k, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]) if k == 3 else False)
    return folder


BAD_DICOM = {
    "two series": (_two_series, ["holds 2 CT series; choose one with --series UID", "bone kernel", "test CT"]),
    "missing slice": (_missing_slice, ["misses 1 slice", "6 mm"]),
    "irregular spacing": (_irregular, ["irregular slice spacing"]),
    "gantry tilt": (_tilt, ["gantry tilt"]),
    "mixed orientations": (_mixed_orientation, ["mixes 2 slice orientations"]),
    "no DICOM in the folder": (lambda s, t: (t / "empty").mkdir() or t / "empty", ["holds no DICOM files"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DICOM))
def test_bad_dicom_input_is_one_line_and_exit_2(case, small_ct, tmp_path, capsys):
    make, expected = BAD_DICOM[case]
    folder = make(small_ct, tmp_path)
    rc = main(["grade", "--seg", str(SAMPLE_SEG), "--ct", str(folder), "--all", "--dicom", "--out", str(tmp_path / "out"),
               "--progress", "none"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "out" / "healthivert_complete.json").exists()


def test_series_option_chooses_among_several(small_ct, tmp_path):
    folder = _two_series(small_ct, tmp_path)
    image, series = read_dicom_ct(folder, [f"{UID_ROOT}.9"])
    assert series.series_description == "bone kernel" and image.GetSize()[2] == 20
    with pytest.raises(HealthiVertError, match="none of the series given with --series"):
        read_dicom_ct(folder, ["1.2.3"])
    assert read_dicom_ct(small_ct, ["1.2.3"])[1].series_instance_uid == f"{UID_ROOT}.1"  # --series named another folder's


def test_output_folder_inside_a_dicom_input_folder_is_refused(small_ct, tmp_path, capsys):
    folder = _copy(small_ct, tmp_path)
    rc = main(["grade", "--seg", str(SAMPLE_SEG), "--ct", str(folder), "--all", "--out", str(folder / "results")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "lies inside the DICOM input folder" in err
    assert not (folder / "results").exists()


@pytest.mark.parametrize("ct", ["nifti", "none"])
def test_dicom_output_needs_a_dicom_ct(ct, tmp_path, capsys):
    args = ["grade", "--seg", str(SAMPLE_SEG), "--all", "--dicom", "--out", str(tmp_path / "out")]
    rc = main(args + (["--ct", str(SAMPLE_CT)] if ct == "nifti" else []))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "--dicom writes DICOM objects that reference the source CT series" in err
    assert ("is an image file, not a DICOM series" if ct == "nifti" else "no --ct was given") in err
    assert not (tmp_path / "out").exists()  # refused before anything was computed or written


def test_inputs_are_not_modified(small_ct, tmp_path):
    before = {p.name: p.read_bytes() for p in small_ct.iterdir()}
    read_dicom_ct(small_ct)
    assert {p.name: p.read_bytes() for p in small_ct.iterdir()} == before


def test_batch_grades_a_case_whose_ct_is_a_dicom_folder_and_resumes(dicom_ct, tmp_path, capsys):
    case = tmp_path / "cases" / "case1"
    case.mkdir(parents=True)
    shutil.copy(SAMPLE_SEG, case / "case1_seg.nii.gz")
    shutil.copytree(dicom_ct, case / "ct")
    args = ["batch", str(tmp_path / "cases"), "--out", str(tmp_path / "out"), "--vertebra", "L1", "--no-figures",
            "--progress", "none"]
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "case1" / "report.json").read_text(encoding="utf-8"))
    assert Path(report["inputs"]["ct"]) == case / "ct"
    assert [v["status"] for v in report["vertebrae"]] == ["graded"]
    assert main(args) == 0  # the same DICOM files: skipped; one file changed: graded again
    rows = (tmp_path / "out" / "cases.csv").read_text(encoding="utf-8")
    assert "skipped (done before)" in rows
    ds = pydicom.dcmread(case / "ct" / "IM0001.dcm")
    ds.PatientName = "Changed^Name"
    ds.save_as(case / "ct" / "IM0001.dcm")
    assert main(args) == 0
    assert "skipped" not in (tmp_path / "out" / "cases.csv").read_text(encoding="utf-8")
    capsys.readouterr()


def test_pseudo_healthy_ct_is_written_as_a_derived_ct_series(dicom_ct, tmp_path):
    """What a CT-synthesising engine (generator) returns is stored voxel for voxel as a derived CT series."""
    from HealthiVertLib.outputs.dicom import write_dicom
    from HealthiVertLib.pipeline.case import grade_case

    case = load_case(SAMPLE_SEG, dicom_ct)
    result = grade_case(case, ["L1"])
    result.engine = "generator"  # as the generator engine reports itself (longer texts in the objects)
    healthy = sitk.GetArrayFromImage(case.ct)
    healthy[sitk.GetArrayFromImage(result.original_body_volume) > 0] += 123.0  # stands in for the synthesis
    result.healthy_ct_volume = sitk.GetImageFromArray(healthy)
    result.healthy_ct_volume.CopyInformation(case.ct)
    files = write_dicom(result, case.dicom["ct"], tmp_path)
    derived = sorted(p for name, p in files.items() if "pseudo_healthy_ct_" in name)
    assert len(derived) == len(case.dicom["ct"].files)
    uid = pydicom.dcmread(derived[0], stop_before_pixels=True).SeriesInstanceUID
    image, series = read_dicom_ct(tmp_path / "dicom", [uid])
    assert series.study_instance_uid == case.dicom["ct"].study_instance_uid
    assert np.array_equal(sitk.GetArrayFromImage(image), healthy)
    assert np.allclose(image.GetOrigin(), case.ct.GetOrigin(), atol=1e-3)
    first = pydicom.dcmread(derived[0], stop_before_pixels=True)
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(
        case.dicom["ct"].files[0], stop_before_pixels=True).SOPInstanceUID
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy:
        run = subprocess.run([dciodvfy, str(derived[0])], capture_output=True, text=True, timeout=60, check=False)
        assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_export_dicom_adds_the_objects_to_a_finished_result(graded, dicom_ct, tmp_path):
    """The Slicer module's "Export to DICOM": a result graded from NIfTI, exported against the DICOM CT series
    afterwards, gets the objects --dicom writes, listed in its marker with its provenance kept."""
    from HealthiVertLib.outputs.report import (
        COMPLETE_MARKER,
        export_dicom,
        write_complete_marker,
    )

    dicom_run, nifti_run = graded
    result = tmp_path / "result"
    shutil.copytree(nifti_run, result)
    marker = json.loads((result / COMPLETE_MARKER).read_text(encoding="utf-8"))
    write_complete_marker(result, {e["file"]: result / e["file"] for e in marker["files"]}, provenance={"x": 1})
    written = export_dicom(result, dicom_ct)
    assert set(written) == {f"dicom/{p.name}" for p in (dicom_run / "dicom").iterdir()}
    marker = json.loads((result / COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert set(written) <= {e["file"] for e in marker["files"]} and marker["provenance"] == {"x": 1}

    def measurements(run: Path) -> dict:
        sr = hd.sr.srread(run / "dicom" / "sr.dcm")
        return {g.tracking_identifier: {m.name.meaning: m.value for m in g.get_measurements()}
                for g in sr.content.get_volumetric_roi_measurement_groups()}

    exported, direct = measurements(result), measurements(dicom_run)
    assert exported.keys() == direct.keys()
    for level, values in direct.items():
        assert exported[level] == pytest.approx(values, abs=1e-6)
    other_grid = tmp_path / "other"
    write_ct_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 10:], other_grid, series=f"{UID_ROOT}.5")
    with pytest.raises(HealthiVertError, match="not on the voxel grid"):
        export_dicom(result, other_grid)
    with pytest.raises(HealthiVertError, match="no finished HealthiVert result"):
        export_dicom(tmp_path / "nothing", dicom_ct)
