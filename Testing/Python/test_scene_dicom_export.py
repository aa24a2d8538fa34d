"""The Slicer module's "Export to DICOM" against real MRML (slicer-core).

A CT series is written from the sample (``test_dicom.write_ct_series``) and loaded with Slicer's own reader
into a volume node that carries ``DICOM.instanceUIDs`` as Slicer's DICOMScalarVolumePlugin sets it. The
module's logic grades it in its background process, finds the series' files, exports in the background
(``healthivert export-dicom``) and imports the objects; the SEG, SR and parametric map are read back with
highdicom and must reference that series. slicer-core has no DICOM database and no DICOMLib, so only these
are replaced, by stand-ins named as such: ``CtkDicomDatabaseStandIn`` (the two ctkDICOMDatabase members
HealthiVert uses, ``isOpen`` and ``fileForInstance``, as CTK's ctkDICOMDatabase.h declares them) and
``DICOMUtils.importDicom`` (indexes and copies the folder into that stand-in, returns True as Slicer's does).
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import SAMPLE_CT, SAMPLE_SEG
from test_dicom import UID_ROOT, write_ct_series
from test_scene import MRML, slicer  # noqa: F401  (skips without slicer-core)
from test_scene_module import load_module

from HealthiVertLib import scene
from HealthiVertLib.app.cli import main
from HealthiVertLib.errors import HealthiVertError

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

SERIES = f"{UID_ROOT}.61"
OTHER_SERIES = f"{UID_ROOT}.62"


class CtkDicomDatabaseStandIn:
    """Stands in for Slicer's DICOM database (``slicer.dicomDatabase``, a ctkDICOMDatabase), which slicer-core
    lacks: ``isOpen`` (a Q_PROPERTY, read as an attribute) and ``fileForInstance(sopInstanceUID)`` (the file
    path, '' for an unknown instance), as commontk/CTK Libs/DICOM/Core/ctkDICOMDatabase.h declares them
    (slicer_api_manifest.json). ``store`` is where the DICOMUtils stand-in copies imported files."""

    def __init__(self, store: Path, *folders: Path, is_open: bool = True):
        self.isOpen = is_open
        self.store = store
        self._files: dict[str, str] = {}
        for folder in folders:
            self.index(folder)

    def index(self, folder: Path, copy: bool = False) -> None:
        """Add every DICOM file under ``folder`` (copied into ``store`` first with ``copy``)."""
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            if copy:
                self.store.mkdir(parents=True, exist_ok=True)
                path = Path(shutil.copy2(path, self.store / uid))
            self._files[uid] = str(path)

    def fileForInstance(self, sopInstanceUID: str) -> str:
        return self._files.get(sopInstanceUID, "")


def dicomlib_stand_in(calls: list) -> types.ModuleType:
    """``DICOMLib`` with ``DICOMUtils.importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False)``: the
    signature of Slicer's Modules/Scripted/DICOMLib/DICOMUtils.py; indexes the folder into the database
    stand-in (copying with copyFiles, as ctkDICOMIndexer does) and returns True."""
    package = types.ModuleType("DICOMLib")
    utils = types.ModuleType("DICOMLib.DICOMUtils")

    def importDicom(dicomDataDir, dicomDatabase=None, copyFiles=False):
        calls.append((dicomDataDir, dicomDatabase, copyFiles))
        dicomDatabase.index(Path(dicomDataDir), copy=copyFiles)
        return True

    utils.importDicom = importDicom
    package.DICOMUtils = utils
    return package


def sop_uids(folder: Path) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted(folder.iterdir())]


def ct_from_dicom(env, folder: Path, name: str = "CT from DICOM"):
    """The series read by Slicer's own reader, with the attribute DICOMScalarVolumePlugin sets."""
    node = env.read_volume(min(folder.iterdir()), name=name)
    node.SetAttribute("DICOM.instanceUIDs", " ".join(sop_uids(folder)))
    return node


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """The sample CT as a DICOM series in a database-like folder of its own (study/series/files)."""
    return write_ct_series(sitk.ReadImage(str(SAMPLE_CT)), tmp_path_factory.mktemp("db") / "dicom" / "study" / "series",
                           series=SERIES)  # fmt: skip


@pytest.fixture(scope="module")
def graded(series, tmp_path_factory) -> Path:
    """A finished result of L1 and L2 on the sample's grid (graded from the NIfTI, as the module writes its inputs)."""
    out = tmp_path_factory.mktemp("graded") / "result"
    assert main(["grade", "--seg", str(SAMPLE_SEG), "--ct", str(SAMPLE_CT), "--vertebra", "L1", "L2", "--no-figures",
                 "--progress", "none", "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture()
def mrml():
    env = MRML()
    yield env
    env.close()


@pytest.fixture()
def hv(tmp_path, monkeypatch):
    """HealthiVert.py loaded as test_scene_module loads it (slicer-core + Qt stand-ins); its scene is ``hv.mrml``."""
    yield from load_module(tmp_path, monkeypatch)


def check_objects_reference(dicom_dir: Path, folder: Path, levels: set[str]) -> None:
    """The SEG, SR and parametric map in ``dicom_dir`` read back with highdicom and reference the series in ``folder``."""
    ct = pydicom.dcmread(min(folder.iterdir()), stop_before_pixels=True)
    instances = set(sop_uids(folder))
    seg = hd.seg.segread(dicom_dir / "seg_bodies.dcm")
    assert seg.StudyInstanceUID == ct.StudyInstanceUID and seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} <= instances
    assert {d.SegmentLabel.split()[0] for d in seg.SegmentSequence} == levels
    sr = hd.sr.srread(dicom_dir / "sr.dcm")
    groups = {g.tracking_identifier for g in sr.content.get_volumetric_roi_measurement_groups()}
    assert groups == {f"{level} vertebra" for level in levels}
    evidence = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert ct.SeriesInstanceUID in evidence and seg.SeriesInstanceUID in evidence
    pm = pydicom.dcmread(dicom_dir / "height_loss_pm.dcm")
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert pm.FrameOfReferenceUID == ct.FrameOfReferenceUID and pm.NumberOfFrames == len(instances)
    assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID


# --- the enabled state ------------------------------------------------------------------------------


def test_scene_dicom_export_is_enabled_only_for_a_finished_result_graded_on_a_ct_from_dicom(mrml, series, graded, tmp_path):
    ct = ct_from_dicom(mrml, series)
    assert scene.dicom_instance_uids(ct) == sop_uids(series)
    assert scene.dicom_export_unavailable(ct, graded) is None
    assert "Grade a case first" in scene.dicom_export_unavailable(ct, None)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(graded, unfinished)
    (unfinished / "healthivert_complete.json").unlink()
    assert "no finished result" in scene.dicom_export_unavailable(ct, unfinished)
    nifti = mrml.read_volume(SAMPLE_CT, name="CT from NIfTI")
    assert "not loaded from DICOM" in scene.dicom_export_unavailable(nifti, graded)
    labels = mrml.read_volume(SAMPLE_SEG, labelmap=True)
    labels.SetAttribute("DICOM.instanceUIDs", "1.2.3")  # a label map from a DICOM SEG carries its own UID
    assert "graded without a CT" in scene.dicom_export_unavailable(labels, graded)
    assert "no longer in the scene" in scene.dicom_export_unavailable(None, graded)
    mrml.scene.RemoveNode(ct)
    assert "no longer in the scene" in scene.dicom_export_unavailable(ct, graded)


def test_scene_dicom_export_button_state_follows_the_module_logic(hv, tmp_path, series):
    logic = hv.HealthiVertLogic()
    assert "Grade a case first" in logic.dicomExportUnavailableReason()
    ct = ct_from_dicom(hv.mrml, series)
    logic.lastOutputDirectory, logic.lastReferenceNode = str(tmp_path), ct
    assert "no finished result" in logic.dicomExportUnavailableReason()
    logic._run = object()  # a grading run in progress
    assert logic.dicomExportUnavailableReason() == "Wait for the grading to finish."
    logic._run = None
    with pytest.raises(HealthiVertError, match="no finished result"):
        logic.exportToDicom(CtkDicomDatabaseStandIn(tmp_path / "store", series))
    with pytest.raises(ValueError, match="database is not open"):
        logic.exportToDicom(CtkDicomDatabaseStandIn(tmp_path / "store", series, is_open=False))
    assert not logic.isExporting()


# --- finding the series' files ----------------------------------------------------------------------


def test_scene_dicom_export_finds_the_series_files_in_the_database(mrml, series, graded, tmp_path):
    ct = ct_from_dicom(mrml, series)
    database = CtkDicomDatabaseStandIn(tmp_path / "store", series)
    files = scene.series_files(ct, database)
    assert files == sorted(series.iterdir())
    plan = scene.prepare_dicom_export(graded, ct, database, tmp_path / "work")
    assert plan.ct_folder == series.resolve() and plan.staged is None  # the files fill their folder: no links
    assert plan.instances == len(files) and plan.dicom_dir == graded / "dicom"
    with pytest.raises(HealthiVertError, match="not open"):
        scene.series_files(ct, CtkDicomDatabaseStandIn(tmp_path / "store", series, is_open=False))
    with pytest.raises(HealthiVertError, match="not open"):
        scene.series_files(ct, None)
    partial = CtkDicomDatabaseStandIn(tmp_path / "store")
    partial.index(series)
    del partial._files[sop_uids(series)[3]]
    with pytest.raises(HealthiVertError, match=r"^1 of the 112 DICOM instances .* no file in Slicer's DICOM database"):
        scene.series_files(ct, partial)


def test_scene_dicom_export_links_the_series_apart_from_other_files_and_exports(mrml, series, graded, tmp_path):
    """Files sharing a folder with another series are linked into a folder of their own; the export reads it,
    writes objects that reference the series, and removes the links (never the CT's files)."""
    shared = tmp_path / "shared"
    shutil.copytree(series, shared)
    write_ct_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 40:50], shared / "other", series=OTHER_SERIES)
    ct = ct_from_dicom(mrml, series)
    database = CtkDicomDatabaseStandIn(tmp_path / "store", shared)
    result = tmp_path / "result"
    shutil.copytree(graded, result)
    plan = scene.prepare_dicom_export(result, ct, database, tmp_path / "work")
    assert plan.staged is not None and plan.ct_folder == plan.staged
    links = sorted(plan.staged.iterdir())
    assert len(links) == 112 and all(p.is_symlink() and p.resolve().parent == shared.resolve() for p in links)
    files = scene.run_dicom_export(plan)
    assert not plan.staged.exists() and len(list(shared.iterdir())) == 113  # links gone, the CT's files kept
    assert sorted(f.name for f in files) == ["height_loss_pm.dcm", "seg_bodies.dcm", "seg_pseudo_healthy.dcm", "sr.dcm"]
    check_objects_reference(result / "dicom", series, {"L1", "L2"})
    assert scene.describe_dicom_objects(files).startswith("4 DICOM files (")
    copied = scene.copy_dicom_objects(files, tmp_path)
    assert [p.name for p in copied] == [f.name for f in files]
    with pytest.raises(HealthiVertError, match="exists already"):
        scene.copy_dicom_objects(files, tmp_path)


def test_scene_dicom_export_without_a_database_finds_the_instances_in_a_folder(mrml, series, tmp_path):
    shared = tmp_path / "shared"
    shutil.copytree(series, shared / "a")
    write_ct_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 40:50], shared / "b", series=OTHER_SERIES)
    ct = ct_from_dicom(mrml, series)
    files = scene.series_files_in_folder(ct, shared)
    assert [p.name for p in files] == [p.name for p in sorted(series.iterdir())] and all(p.parent == shared / "a" for p in files)
    with pytest.raises(HealthiVertError, match="holds 0 of the 112 DICOM instances"):
        scene.series_files_in_folder(ct, shared / "b")


# --- the module: grade, export in the background, import --------------------------------------------


def test_scene_dicom_export_module_grades_exports_and_imports_into_the_database(hv, tmp_path, monkeypatch, series):
    env = hv.mrml
    ct = ct_from_dicom(env, series)
    labels = env.read_volume(SAMPLE_SEG, labelmap=True)
    logic = hv.HealthiVertLogic()
    results = logic.process(ct, labels, None, hv.TargetMode.LEVELS, None, "L1 L2",
                            labelNumbering=hv.LabelNumbering.TOTALSEG, waitForCompletion=True)  # fmt: skip
    assert [v["status"] for v in results.report["vertebrae"]] == ["graded", "graded"]
    assert logic.lastReferenceNode is ct and logic.dicomExportUnavailableReason() is None
    database = CtkDicomDatabaseStandIn(tmp_path / "database", series)
    calls: list = []
    monkeypatch.setitem(sys.modules, "DICOMLib", dicomlib_stand_in(calls))
    monkeypatch.setitem(sys.modules, "DICOMLib.DICOMUtils", sys.modules["DICOMLib"].DICOMUtils)
    summary = logic.exportToDicom(database, waitForCompletion=True)
    result = Path(logic.lastOutputDirectory)
    assert summary.startswith("Wrote 4 DICOM files (") and "imported them into Slicer's DICOM database" in summary
    assert calls == [(str(result / "dicom"), database, True)]  # copied into the database: the result folder is temporary
    check_objects_reference(result / "dicom", series, {"L1", "L2"})
    for name in ("seg_bodies.dcm", "sr.dcm", "height_loss_pm.dcm"):
        uid = str(pydicom.dcmread(result / "dicom" / name, stop_before_pixels=True).SOPInstanceUID)
        assert Path(database.fileForInstance(uid)).parent == tmp_path / "database"
    assert not logic.isExporting() and not list((tmp_path / "HealthiVert").glob("ct-series-*"))

    # without an open database: the series from a chosen folder, the objects copied into another
    destination = tmp_path / "saved"
    destination.mkdir()
    closed = CtkDicomDatabaseStandIn(tmp_path / "database", is_open=False)
    summary = logic.exportToDicom(closed, ctFolder=str(series.parent.parent), destination=str(destination))
    assert summary == f"Wrote {scene.describe_dicom_objects(scene.dicom_objects(result))} into {destination}."
    check_objects_reference(destination, series, {"L1", "L2"})

    # a CT whose instances are another series (not the graded grid): the core's one line, as RuntimeError
    other = write_ct_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 10:], tmp_path / "other", series=OTHER_SERIES)
    ct.SetAttribute("DICOM.instanceUIDs", " ".join(sop_uids(other)))
    with pytest.raises(RuntimeError, match="not on the voxel grid") as error:
        logic.exportToDicom(CtkDicomDatabaseStandIn(tmp_path / "database", other), waitForCompletion=True)
    assert "\n" not in str(error.value) and not logic.isExporting()


def test_scene_dicom_export_cli_refuses_an_unfinished_result(series, tmp_path, capsys):
    assert main(["export-dicom", str(tmp_path), "--ct", str(series)]) == 2
    assert "no finished HealthiVert result" in capsys.readouterr().err
