"""The MRML adapter (HealthiVertLib/scene/) against real MRML: the PyPI package slicer-core
(Slicer's MRML, logic and segmentation libraries without the Qt application).

The scene is built as the Slicer application builds it, without Qt: application logic, colour
logic with the default colour nodes, the volumes / segmentations / markups / subject hierarchy /
tables / plots logics and three slice views (Red, Yellow, Green). Independent checks use Slicer's
own file readers (MRML storage nodes) and slicerio for the written .seg.nrrd.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_BODY, SAMPLE_CT, SAMPLE_SEG, TPT_CT, TPT_SEG

SLICER_CORE_WHEELS = (3, 10) <= sys.version_info[:2] <= (3, 13) and (
    (sys.platform == "linux" and platform.machine() == "x86_64")
    or (sys.platform == "win32" and platform.machine() in ("AMD64", "x86_64"))
    or (sys.platform == "darwin" and platform.machine() == "arm64")
)  # slicer-core 5.12.4.0 wheels: cp310-cp313, manylinux_2_28 x86_64, win_amd64, macOS arm64

try:
    import slicer

    if not hasattr(slicer, "vtkMRMLScene"):
        raise ImportError(f"'slicer' at {getattr(slicer, '__file__', '?')} is not slicer-core (the interpretml 'slicer' package?)")
except ImportError as err:
    if SLICER_CORE_WHEELS:
        raise ImportError(f"slicer-core is a test dependency on this platform: pip install -e '.[test]' ({err})") from err
    pytest.skip(
        f"slicer-core 5.12.4.0 has no wheel for Python {platform.python_version()} on {sys.platform}/{platform.machine()}",
        allow_module_level=True,
    )

import slicerio  # noqa: E402
import vtk  # noqa: E402

from HealthiVertLib.app import cli  # noqa: E402
from HealthiVertLib.io import labels  # noqa: E402
from HealthiVertLib import scene  # noqa: E402
from HealthiVertLib.errors import HealthiVertError  # noqa: E402
from HealthiVertLib.measure.heights import GENANT_POINTS  # noqa: E402


class MRML(scene.StandaloneScene):
    """A scene with the logics the Slicer application attaches to it (no Qt), plus test helpers."""

    def in_study(self, node, patient: str = "Patient 1", study: str = "CT study"):
        """Put ``node`` in a patient/study subject hierarchy, as the DICOM module does."""
        patient_item = self.sh.CreateSubjectItem(self.sh.GetSceneItemID(), patient)
        study_item = self.sh.CreateStudyItem(patient_item, study)
        item = self.sh.GetItemByDataNode(node) or self.sh.CreateItem(study_item, node)
        self.sh.SetItemParent(item, study_item)
        return study_item


@pytest.fixture()
def mrml():
    env = MRML()
    yield env
    env.close()


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _oblique(image: sitk.Image) -> sitk.Image:
    """The same voxels with an oblique direction (rotations about two axes) and anisotropic spacing."""
    out = sitk.Image(image)
    a, b = math.radians(17.0), math.radians(-31.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    direction = rz @ rx @ np.array(image.GetDirection()).reshape(3, 3)
    out.SetDirection(direction.ravel().tolist())
    out.SetSpacing([1.5, 0.8, 2.25])
    out.SetOrigin([12.5, -40.25, 101.0])
    return out


def _same_image(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


# --- volumes and geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SAMPLE_CT, TPT_CT], ids=["sample-RAS", "tptbox-PIR"])
def test_scene_volume_geometry_matches_slicers_own_reader(mrml, path):
    """A file read by Slicer's storage node becomes exactly the image SimpleITK reads from it, and back."""
    node = mrml.read_volume(path)
    reference = sitk.ReadImage(str(path))
    image = scene.volume_to_image(node)
    _same_image(image, reference)
    np.testing.assert_allclose(scene.ijk_to_ras(reference), _matrix(node), atol=1e-6)
    # a voxel's world position: Slicer RAS = ITK LPS with x, y negated
    ijk = (5, 7, 9)
    ras = _matrix(node) @ np.array([*ijk, 1.0])
    lps = reference.TransformIndexToPhysicalPoint(ijk)
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)


@pytest.mark.parametrize("path", [SAMPLE_CT, TPT_CT, TPT_SEG], ids=["sample", "tptbox-PIR", "tptbox-labels"])
def test_scene_volume_round_trip_with_oblique_geometry(mrml, path):
    for image in (sitk.ReadImage(str(path)), _oblique(sitk.ReadImage(str(path)))):
        node = scene.image_to_volume(image, mrml.scene, "round trip")
        _same_image(scene.volume_to_image(node), image)


def test_scene_volume_written_by_slicer_reads_back_with_the_same_geometry(mrml, tmp_path):
    image = _oblique(sitk.ReadImage(str(TPT_CT)))
    node = scene.image_to_volume(image, mrml.scene, "oblique CT")
    storage = mrml.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "oblique.nrrd"))
    assert storage.WriteData(node)
    _same_image(sitk.ReadImage(str(tmp_path / "oblique.nrrd")), image)


def test_scene_volume_to_image_never_aliases_the_node(mrml):
    node = scene.image_to_volume(sitk.ReadImage(str(SAMPLE_CT)), mrml.scene, "CT")
    image = scene.volume_to_image(node)
    before = slicer.util.arrayFromVolume(node).copy()
    image[0, 0, 0] = 12345
    assert np.array_equal(slicer.util.arrayFromVolume(node), before)


def test_scene_rejects_volumes_without_data(mrml):
    empty = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(HealthiVertError, match="no image data"):
        scene.volume_to_image(empty)
    with pytest.raises(HealthiVertError, match="Select the vertebra segmentation"):
        scene.vertebra_labels(None)


# --- label inputs ----------------------------------------------------------------------------------------


def test_scene_labelmap_input_keeps_values_and_is_resampled_onto_the_ct(mrml):
    ct = mrml.read_volume(SAMPLE_CT)
    seg = mrml.read_volume(SAMPLE_SEG, labelmap=True)
    result = scene.vertebra_labels(seg, ct)
    assert not result.resampled and result.scheme is None
    assert np.array_equal(sitk.GetArrayViewFromImage(result.image), sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_SEG))))
    assert result.level_of(31) == "L1" and result.level_of(32) == "T12"  # TotalSegmentator numbering detected
    # a label map on another grid (2 mm crop) is moved onto the CT's grid, voxel positions kept
    crop = sitk.ReadImage(str(SAMPLE_SEG))[10:100, 5:95, 20:110]
    other = scene.image_to_volume(crop, mrml.scene, "cropped labels", "vtkMRMLLabelMapVolumeNode")
    moved = scene.vertebra_labels(other, ct)
    assert moved.resampled and moved.image.GetSize() == sitk.ReadImage(str(SAMPLE_CT)).GetSize()
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_SEG)))
    assert np.array_equal(sitk.GetArrayViewFromImage(moved.image)[20:110, 5:95, 10:100], full[20:110, 5:95, 10:100])


def segmentation_from_file(mrml, path: Path, names: dict[int, str] | None = None, terminology: bool = False):
    """A segmentation node as the TotalSegmentator extension leaves it (one segment per label)."""
    labelmap = mrml.read_volume(path, labelmap=True, name="import")
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "TotalSegmentator")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    mrml.scene.RemoveNode(labelmap)
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        level = labels.TOTALSEG.level_of(segment.GetLabelValue())
        if names is not None and level is not None:
            segment.SetName(names.get(segment.GetLabelValue(), f"vertebrae_{level}"))
        if terminology and level in scene.VERTEBRA_SCT:
            segment.SetName(f"Segment_{index + 1}")
            segment.SetTerminology(scene.terminology_string(level))
    return node


@pytest.mark.parametrize("kind", ["names", "terminology", "unnamed"])
def test_scene_segmentation_input_becomes_numbered_labels(mrml, kind):
    ct = mrml.read_volume(SAMPLE_CT)
    node = segmentation_from_file(mrml, SAMPLE_SEG, names={} if kind == "names" else None, terminology=kind == "terminology")
    result = scene.vertebra_labels(node, ct)
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_SEG)))
    got = sitk.GetArrayViewFromImage(result.image)
    if kind == "unnamed":  # the segments' own label values; the numbering is detected later
        assert result.scheme is None
        assert np.array_equal(got, original)
        assert result.level_of(31) == "L1"
        return
    assert result.scheme == "totalseg"
    expected_levels = {labels.TOTALSEG.level_of(v) for v in np.unique(original)} - {None}
    assert expected_levels == {"T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"}
    if kind == "terminology":  # S1 has no SNOMED code of its own in the mapping, and no name here
        expected_levels.discard("S1")
    assert set(result.levels.values()) == expected_levels
    for value, level in result.levels.items():
        assert value == labels.TOTALSEG.label_of(level)
        assert np.array_equal(got == value, original == value), level
    assert set(np.unique(got)) == {0} | set(result.levels)  # ribs and organs left out


def test_scene_segmentation_with_t13_uses_verse_numbering(mrml):
    ct = mrml.read_volume(SAMPLE_CT)
    node = segmentation_from_file(mrml, SAMPLE_SEG, names={labels.TOTALSEG.label_of("T11"): "T13 (extra thoracic)"})
    result = scene.vertebra_labels(node, ct)
    assert result.scheme == "verse" and labels.VERSE.label_of("T13") in result.levels
    assert "S1" not in result.levels.values()  # no VerSe label for the sacrum


def test_scene_label_under_a_markups_point(mrml):
    ct = mrml.read_volume(SAMPLE_CT)
    seg = mrml.read_volume(SAMPLE_SEG, labelmap=True)
    labels_in = scene.vertebra_labels(seg, ct)
    image = labels_in.image
    array = sitk.GetArrayViewFromImage(image)
    k, j, i = np.argwhere(array == 31)[len(np.argwhere(array == 31)) // 2]
    x, y, z = image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
    point = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pick")
    point.AddControlPoint(vtk.vtkVector3d(-x, -y, z))  # RAS
    ras = scene.markups_point_ras(point)
    assert scene.label_at_point(image, ras) == 31
    assert labels_in.level_of(scene.label_at_point(image, ras)) == "L1"
    # just outside the bone: the nearest vertebra within the search radius
    outside = np.argwhere(array == 0)
    dist = np.abs(outside - np.array([k, j, i])).sum(axis=1)
    near = outside[np.argmin(np.where(dist >= 1, dist, 999))]
    px, py, pz = image.TransformIndexToPhysicalPoint([int(near[2]), int(near[1]), int(near[0])])
    assert scene.label_at_point(image, (-px, -py, pz)) in set(np.unique(array)) - {0}
    assert scene.label_at_point(image, (5000.0, 0.0, 0.0)) == 0
    with pytest.raises(HealthiVertError, match="Place a point"):
        scene.markups_point_ras(mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "empty"))


# --- results in the scene --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    """One grading of the bundled sample (CLI in-process, no figures)."""
    out = tmp_path_factory.mktemp("sample_run")
    assert cli.main(["grade", "--seg", str(SAMPLE_SEG), "--ct", str(SAMPLE_CT), "--subregions", str(SAMPLE_BODY),
                     "--all", "--out", str(out), "--no-figures", "--progress", "none"]) == 0  # fmt: skip
    return out


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_scene_height_loss_overlay_and_colours(mrml, sample_run):
    ct = mrml.read_volume(SAMPLE_CT)
    result = scene.show_results(mrml.scene, sample_run, ct)
    loss = result.height_loss
    assert loss is not None and loss.IsA("vtkMRMLScalarVolumeNode") and not loss.IsA("vtkMRMLLabelMapVolumeNode")
    expected = sitk.ReadImage(str(sample_run / "height_loss.nii.gz"))
    _same_image(scene.volume_to_image(loss), expected)
    display = loss.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"
    assert mrml.scene.GetNodeByID(display.GetColorNodeID()) is not None
    assert not display.GetAutoWindowLevel() and not display.GetAutoThreshold()
    assert display.GetWindowLevelMin() == pytest.approx(0.0) and display.GetWindowLevelMax() == pytest.approx(0.5)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.01)
    composites = mrml.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert composites.GetNumberOfItems() == 3
    for index in range(3):
        composite = composites.GetItemAsObject(index)
        assert composite.GetBackgroundVolumeID() == ct.GetID()
        assert composite.GetForegroundVolumeID() == loss.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    assert result.pseudo_healthy_ct is None  # the context engine synthesises no CT


def test_scene_pseudo_healthy_ct_is_loaded_when_the_engine_writes_one(mrml, sample_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for f in sample_run.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    ct_image = sitk.ReadImage(str(SAMPLE_CT))
    sitk.WriteImage(ct_image + 7, str(out / "pseudo_healthy_ct.nii.gz"))
    ct = mrml.read_volume(SAMPLE_CT)
    ct.CreateDefaultDisplayNodes()
    ct.GetDisplayNode().SetAutoWindowLevel(False)
    ct.GetDisplayNode().SetWindowLevel(400, 40)
    result = scene.show_results(mrml.scene, out, ct)
    assert result.pseudo_healthy_ct is not None
    assert np.array_equal(slicer.util.arrayFromVolume(result.pseudo_healthy_ct), sitk.GetArrayFromImage(ct_image + 7))
    assert result.pseudo_healthy_ct.GetDisplayNode().GetWindow() == pytest.approx(400)
    from HealthiVertLib.outputs.volumes import VOLUME_FILES

    assert scene.PSEUDO_HEALTHY_CT_FILE in VOLUME_FILES, "the file name the report writes"


def test_scene_segmentations_carry_snomed_terminology_in_the_seg_nrrd(mrml, sample_run, tmp_path):
    ct = mrml.read_volume(SAMPLE_CT)
    study = mrml.in_study(ct)
    result = scene.show_results(mrml.scene, sample_run, ct)
    report = _report(sample_run)
    graded = {v["level"]: v for v in report["vertebrae"]}
    for node, filename in ((result.original_body, "original.seg.nrrd"), (result.pseudo_healthy_body, "healthy.seg.nrrd")):
        assert node is not None
        # reference geometry = the CT, and in the CT's study
        assert node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == ct.GetID()
        assert mrml.sh.GetItemParent(mrml.sh.GetItemByDataNode(node)) == study
        assert node.GetSegmentation().ContainsRepresentation("Closed surface")
        storage = node.CreateDefaultStorageNode()
        mrml.scene.AddNode(storage)
        storage.SetFileName(str(tmp_path / filename))
        assert storage.WriteData(node)
        written = slicerio.read_segmentation(str(tmp_path / filename))
        segments = {s["name"]: s for s in written["segments"]}
        assert set(segments) <= set(graded) and segments
        for level, segment in segments.items():
            term = segment["terminology"]
            assert term["contextName"] == scene.TYPE_CONTEXT
            assert term["category"] == ["SCT", "123037004", "Anatomical Structure"]
            assert term["type"] == ["SCT", scene.VERTEBRA_SCT[level], f"{level} vertebra"]
            assert segment["labelValue"] == graded[level]["label"]
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_run / ("original_body_label.nii.gz" if filename.startswith("original") else "pseudo_healthy_body_label.nii.gz"))))
        for level, segment in segments.items():
            voxels = slicerio.segmentation.extract_segments(written, [(level, 1)])
            assert int((voxels["voxels"] > 0).sum()) == int((mask == graded[level]["label"]).sum()), level
    colors = {s.GetName(): s.GetColor() for s in scene.segments_by_level(result.original_body).values()}
    for level, color in colors.items():
        assert color == pytest.approx(scene.GRADE_COLORS[graded[level]["grade"]])


def test_scene_terminology_strings():
    assert scene.terminology_string("L1") == (
        "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
        "~SCT^66794005^L1 vertebra~^^~Anatomic codes - DICOM master list~^^~^^"
    )
    parsed = slicerio.segmentation.terminology_entry_from_string(scene.terminology_string("T13"))
    assert parsed["type"] == ["SCT", "51282000", "Vertebra"]
    assert parsed["anatomicRegion"] == ["SCT", "122495006", "Thoracic spine"]
    for level in scene.VERTEBRA_SCT:
        assert scene.level_from_terminology(scene.terminology_string(level)) == level
    assert len(set(scene.VERTEBRA_SCT.values())) == len(scene.VERTEBRA_SCT) == 24
    assert scene.level_from_terminology("") is None


def test_scene_table_has_one_row_per_vertebra(mrml, sample_run):
    ct = mrml.read_volume(SAMPLE_CT)
    table = scene.show_results(mrml.scene, sample_run, ct).table
    report = _report(sample_run)
    vtk_table = table.GetTable()
    assert table.GetNumberOfRows() == len(report["vertebrae"]) == 7
    names = [vtk_table.GetColumnName(c) for c in range(vtk_table.GetNumberOfColumns())]
    expected = [c[0] for c in scene.TABLE_COLUMNS]
    if all(v.get("abnormality_score") is None for v in report["vertebrae"]):
        expected.remove("Abnormality score")
    assert names == expected
    column = {name: vtk_table.GetColumnByName(name) for name in names}
    for row, v in enumerate(report["vertebrae"]):
        assert column["Level"].GetValue(row) == v["level"]
        assert column["Status"].GetValue(row) == v["status"]
        assert column["Grade"].GetValue(row) == (-1 if v["grade"] is None else v["grade"])
        for region in ("anterior", "middle", "posterior", "overall"):
            got = column[f"RHLV {region}"].GetValue(row)
            if v["rhlv"] is None:
                assert math.isnan(got)
            else:
                assert got == pytest.approx(100 * v["rhlv"][region])
        if v["heights_mm"]:
            assert column["Height anterior"].GetValue(row) == pytest.approx(v["heights_mm"]["original"]["anterior"])
            assert column["Healthy height posterior"].GetValue(row) == pytest.approx(v["heights_mm"]["pseudo_healthy"]["posterior"])
        if v.get("abnormality_score") is not None:
            assert column["Abnormality score"].GetValue(row) == pytest.approx(v["abnormality_score"])
        if v["confidence"] is not None:
            assert column["Confidence"].GetValue(row) == pytest.approx(100 * v["confidence"])
    assert table.GetColumnUnitLabel("RHLV anterior") == "%" and table.GetColumnUnitLabel("Height middle") == "mm"


def test_scene_markups_are_the_report_points_in_ras(mrml, sample_run):
    ct = mrml.read_volume(SAMPLE_CT)
    result = scene.show_results(mrml.scene, sample_run, ct)
    graded = [v for v in _report(sample_run)["vertebrae"] if v["genant_points_lps"]]
    assert graded and set(result.points) == {v["level"] for v in graded}
    for v in graded:
        fiducials = result.points[v["level"]]
        assert fiducials.GetNumberOfControlPoints() == 6
        for index, name in enumerate(GENANT_POINTS):
            x, y, z = v["genant_points_lps"][name]
            position = [0.0, 0.0, 0.0]
            fiducials.GetNthControlPointPosition(index, position)
            np.testing.assert_allclose(position, [-x, -y, z], atol=1e-9)
            assert fiducials.GetNthControlPointLabel(index) == f"{v['level']} {name.replace('_', ' ')}"
        lines = result.heights[v["level"]]
        assert [line.GetName() for line in lines] == [f"{v['level']} {r} height" for r in ("anterior", "middle", "posterior")]
        for line, region in zip(lines, ("anterior", "middle", "posterior")):
            top, bottom = (np.array(v["genant_points_lps"][f"{region}_{end}"]) for end in ("superior", "inferior"))
            assert line.GetLineLengthWorld() == pytest.approx(float(np.linalg.norm(top - bottom)), abs=1e-6)
    # the three heights are the measured Genant heights (mm), within the measuring columns' spread
    l3 = next(v for v in graded if v["level"] == "L3")
    lengths = [line.GetLineLengthWorld() for line in result.heights["L3"]]
    assert lengths == pytest.approx([l3["heights_mm"]["original"][r] for r in ("anterior", "middle", "posterior")], abs=4.0)


def test_scene_ap_profile_plot(mrml, sample_run):
    ct = mrml.read_volume(SAMPLE_CT)
    result = scene.show_results(mrml.scene, sample_run, ct)
    graded = [v for v in _report(sample_run)["vertebrae"] if v.get("ap_profile")]
    assert result.plot_chart is not None and len(result.plot_series) == len(graded) == 5
    assert result.plot_chart.GetNumberOfPlotSeriesNodes() == len(graded)
    table = result.profile_table.GetTable()
    for series, v in zip(result.plot_series, graded):
        assert series.GetTableNodeID() == result.profile_table.GetID()
        x = table.GetColumnByName(series.GetXColumnName())
        y = table.GetColumnByName(series.GetYColumnName())
        n = len(v["ap_profile"]["position_mm"])
        assert [x.GetValue(i) for i in range(n)] == pytest.approx(v["ap_profile"]["position_mm"])
        loss = [np.nan if p is None else 100 * p for p in v["ap_profile"]["loss"]]
        np.testing.assert_allclose([y.GetValue(i) for i in range(n)], loss, equal_nan=True)


def test_scene_rerun_replaces_only_its_own_outputs(mrml, sample_run):
    ct = mrml.read_volume(SAMPLE_CT)
    study = mrml.in_study(ct)
    user_nodes = [
        mrml.read_volume(SAMPLE_SEG, labelmap=True, name="my labels"),
        mrml.scene.AddNewNodeByClass("vtkMRMLTableNode", "my table"),
        mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points"),
        mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation"),
    ]
    before = _node_ids(mrml.scene)
    first = scene.show_results(mrml.scene, sample_run, ct)
    made = scene.output_nodes(mrml.scene, ct)
    assert len(made) == 1 + 2 + 1 + 5 * 4 + 1 + 1 + 5  # loss, 2 segmentations, table, 5 x (points + 3 lines), plot
    assert mrml.sh.GetItemParent(first.folder_item) == study
    second = scene.show_results(mrml.scene, sample_run, ct)
    assert all(node.GetScene() is None for node in made), "the first run's nodes must be gone"
    assert len(scene.output_nodes(mrml.scene, ct)) == len(made)
    assert scene.output_folders(mrml.scene, ct) == [second.folder_item]
    assert all(node.GetScene() is mrml.scene for node in user_nodes)
    # another CT's results are not touched by a run on this CT
    other_ct = mrml.read_volume(SAMPLE_CT, name="other CT")
    scene.show_results(mrml.scene, sample_run, other_ct)
    assert all(node.GetScene() is mrml.scene for node in scene.output_nodes(mrml.scene, ct))
    scene.remove_outputs(mrml.scene)
    assert not scene.output_nodes(mrml.scene) and not scene.output_folders(mrml.scene)
    # left: the other CT (+ its storage node) and the CTs' display nodes (made by the slice views)
    expected = {other_ct.GetID(), other_ct.GetStorageNodeID(), ct.GetDisplayNodeID(), other_ct.GetDisplayNodeID()}
    assert _node_ids(mrml.scene) - before == expected, "a display or storage node of ours was left behind"
    assert all(node.GetScene() is mrml.scene for node in user_nodes)


def _node_ids(mrml_scene) -> set[str]:
    nodes = mrml_scene.GetNodes()
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


def test_scene_outputs_follow_the_input_transform(mrml, sample_run):
    ct = mrml.read_volume(SAMPLE_CT)
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    ct.SetAndObserveTransformNodeID(transform.GetID())
    result = scene.show_results(mrml.scene, sample_run, ct)
    for node in (result.height_loss, result.original_body, result.points["L1"], result.heights["L1"][0]):
        assert node.GetTransformNodeID() == transform.GetID()


def test_scene_missing_report_is_a_clear_error(mrml, tmp_path):
    with pytest.raises(HealthiVertError, match="report.json"):
        scene.show_results(mrml.scene, tmp_path, None)


# --- the whole MRML path -------------------------------------------------------------------------------------


def test_scene_full_grading_of_the_sample_through_mrml(mrml, sample_run, tmp_path):
    """Nodes (as Slicer loads them) -> images -> the CLI (the module's background command, in-process)
    -> scene nodes; the result equals grading the files directly."""
    ct = mrml.read_volume(SAMPLE_CT)
    segmentation = segmentation_from_file(mrml, SAMPLE_SEG, names={})  # TotalSegmentator-style segments
    body = mrml.read_volume(SAMPLE_BODY, labelmap=True, name="bodies")
    study = mrml.in_study(ct)
    point = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "L2 pick")
    labels_in = scene.vertebra_labels(segmentation, ct)
    l2_value = {level: value for value, level in labels_in.levels.items()}["L2"]
    l2 = np.argwhere(sitk.GetArrayViewFromImage(labels_in.image) == l2_value).mean(axis=0)
    x, y, z = labels_in.image.TransformContinuousIndexToPhysicalPoint([float(l2[2]), float(l2[1]), float(l2[0])])
    point.AddControlPoint(vtk.vtkVector3d(-x, -y, z))
    level = labels_in.level_of(scene.label_at_point(labels_in.image, scene.markups_point_ras(point)))
    assert level == "L2"

    inputs = tmp_path / "input"
    inputs.mkdir()
    sitk.WriteImage(labels_in.image, str(inputs / "vertebrae.nii.gz"))
    sitk.WriteImage(scene.volume_to_image(ct), str(inputs / "ct.nii.gz"))
    sitk.WriteImage(scene.subregion_labels(body, ct), str(inputs / "subregions.nii.gz"))
    out = tmp_path / "output"
    assert cli.main(["grade", "--seg", str(inputs / "vertebrae.nii.gz"), "--ct", str(inputs / "ct.nii.gz"),
                     "--subregions", str(inputs / "subregions.nii.gz"), "--labels", labels_in.scheme,
                     "--vertebra", level, "L1", "--out", str(out), "--no-figures", "--progress", "none"]) == 0  # fmt: skip
    result = scene.show_results(mrml.scene, out, ct)

    direct = {v["level"]: v for v in _report(sample_run)["vertebrae"]}
    via_mrml = {v["level"]: v for v in result.report["vertebrae"]}
    assert set(via_mrml) == {"L2", "L1"}
    for lvl, v in via_mrml.items():
        assert v["status"] == direct[lvl]["status"] == "graded"
        assert v["grade"] == direct[lvl]["grade"]
        for region in ("anterior", "middle", "posterior"):
            assert v["rhlv"][region] == pytest.approx(direct[lvl]["rhlv"][region], abs=1e-6)
    assert result.table.GetNumberOfRows() == 2
    assert set(result.points) == {"L1", "L2"}
    assert mrml.sh.GetItemParent(mrml.sh.GetItemByDataNode(result.original_body)) == study
    assert {s.GetName() for s in scene.segments_by_level(result.original_body).values()} == {"L1", "L2"}
    assert any(line.startswith("L2: Genant grade 0") for line in scene.grades_summary(result.report))
