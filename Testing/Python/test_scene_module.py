"""The Slicer module's logic (HealthiVert/HealthiVert.py, class HealthiVertLogic) against real MRML.

The Qt application cannot run here, so only what needs it is replaced: ``qt`` (settings, timer),
``slicer.app`` (temporary folder, event loop), ``slicer.ScriptedLoadableModule`` and
``slicer.parameterNodeWrapper`` (PythonQt-based in Slicer). Everything else is real: the MRML
scene and logics of slicer-core, the module's own code, the background ``python -m
HealthiVertLib.app.cli`` process it starts, and the scene nodes it makes. The widget (GUI) is not
exercised here; ``HealthiVertTest`` does that inside Slicer.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_CT, SAMPLE_SEG
from test_scene import MRML, segmentation_from_file, slicer  # noqa: F401  (skips without slicer-core)

import vtk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class _Settings:
    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value


class _ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self._parameterNode = None

    def getParameterNode(self):
        if self._parameterNode is None:
            self._parameterNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "HealthiVert")
        return self._parameterNode


@pytest.fixture()
def module(tmp_path, monkeypatch):
    """HealthiVert.py loaded with slicer-core's ``slicer`` and minimal stand-ins for the Qt parts."""
    yield from load_module(tmp_path, monkeypatch)


def load_module(tmp_path, monkeypatch):
    """The body of the ``module`` fixture, for other test files (a generator: yields the module)."""
    env = MRML()
    qt = types.ModuleType("qt")
    qt.QSettings = _Settings
    qt.QTimer = types.SimpleNamespace(singleShot=lambda ms, f: None)
    qt.QIcon = lambda path: path
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    scripted.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {"__init__": lambda self, parent: None})
    scripted.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    scripted.ScriptedLoadableModuleWidget = type("ScriptedLoadableModuleWidget", (), {})
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    app = types.SimpleNamespace(temporaryPath=str(tmp_path), processEvents=lambda: None, layoutManager=lambda: None,
                                slicerHome=None, connect=lambda *a: None)  # fmt: skip
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", wrapper)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", env.scene, raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    spec = importlib.util.spec_from_file_location("HealthiVert", ROOT / "HealthiVert" / "HealthiVert.py")
    hv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hv)
    hv.HealthiVertLogic.figuresAvailable = staticmethod(lambda: False)  # as in Slicer without matplotlib; faster
    hv.mrml = env
    yield hv
    env.close()


def _point_on(env, image: sitk.Image, value: int):
    array = sitk.GetArrayViewFromImage(image)
    k, j, i = np.argwhere(array == value).mean(axis=0)
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([float(i), float(j), float(k)])
    node = env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "pick")
    node.AddControlPoint(vtk.vtkVector3d(-x, -y, z))
    return node


def test_scene_module_logic_grades_the_vertebra_under_a_point(module):
    env = module.mrml
    ct = env.read_volume(SAMPLE_CT)
    segmentation = segmentation_from_file(env, SAMPLE_SEG, names={})
    point = _point_on(env, sitk.ReadImage(str(SAMPLE_SEG)), 31)  # L1 in TotalSegmentator numbering
    logic = module.HealthiVertLogic()
    assert logic.availableEngines()[0] == "spine"  # the default first
    assert logic.pythonExecutable() == sys.executable
    progress, log = [], []
    results = logic.process(ct, segmentation, None, module.TargetMode.POINT, point, waitForCompletion=True,
                            progressCallback=lambda p, m: progress.append(p), logCallback=log.append)  # fmt: skip
    assert not logic.isRunning() and progress[-1] == 100.0
    assert [v["level"] for v in results.report["vertebrae"]] == ["L1"]
    assert results.report["vertebrae"][0]["status"] == "graded"
    assert results.report["label_scheme"] == "totalseg"
    assert os.path.isfile(os.path.join(logic.lastOutputDirectory, "report.json"))
    assert not os.path.exists(os.path.join(os.path.dirname(logic.lastOutputDirectory), "input")), "inputs are cleaned up"
    assert any("Grading" in line and "L1" in line for line in log)
    composite = env.scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(0)
    assert composite.GetForegroundVolumeID() == results.height_loss.GetID()
    # Apply again with levels: replaces the outputs, keeps the inputs
    again = logic.process(ct, segmentation, None, module.TargetMode.LEVELS, None, "L2, L3", waitForCompletion=True)
    assert [v["level"] for v in again.report["vertebrae"]] == ["L2", "L3"]
    assert results.height_loss.GetScene() is None and again.height_loss.GetScene() is env.scene
    assert segmentation.GetScene() is env.scene and point.GetScene() is env.scene


def test_scene_module_logic_with_a_label_map_and_numbering_override(module):
    env = module.mrml
    labels = env.read_volume(SAMPLE_SEG, labelmap=True)
    logic = module.HealthiVertLogic()
    results = logic.process(None, labels, None, module.TargetMode.LEVELS, None, "L4",
                            labelNumbering=module.LabelNumbering.TOTALSEG, waitForCompletion=True)  # fmt: skip
    assert results.report["label_scheme"] == "totalseg" and results.report["vertebrae"][0]["level"] == "L4"
    assert results.report["inputs"]["ct"] is None  # mask only
    assert results.height_loss.GetAttribute("HealthiVert.Reference") == labels.GetID()
    composite = env.scene.GetNodesByClass("vtkMRMLSliceCompositeNode").GetItemAsObject(0)
    assert composite.GetForegroundVolumeID() == results.height_loss.GetID()
    assert composite.GetBackgroundVolumeID() != labels.GetID(), "a label map is not shown as the background"


def test_scene_module_logic_refuses_bad_requests(module):
    env = module.mrml
    ct = env.read_volume(SAMPLE_CT)
    labels = env.read_volume(SAMPLE_SEG, labelmap=True)
    logic = module.HealthiVertLogic()
    with pytest.raises(ValueError, match="Q1"):
        logic.process(ct, labels, None, module.TargetMode.LEVELS, None, "L2 Q1")
    far = env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "far away")
    far.AddControlPoint(vtk.vtkVector3d(900.0, 900.0, 900.0))
    with pytest.raises(ValueError, match="not on a vertebra"):
        logic.process(ct, labels, None, module.TargetMode.POINT, far)
    with pytest.raises(ValueError, match="Unknown engine"):
        logic.process(ct, labels, None, module.TargetMode.ALL, engine="no-such-engine")
    assert not logic.isRunning()
    # a failing run reports the core's message (the label T3 is not in the map)
    with pytest.raises(RuntimeError, match="T3"):
        logic.process(ct, labels, None, module.TargetMode.LEVELS, None, "T3", waitForCompletion=True)
    assert not logic.isRunning()


def test_scene_module_dependencies_and_weights_folder(module, tmp_path, monkeypatch):
    logic = module.HealthiVertLogic()
    monkeypatch.setattr(module.HealthiVertLogic, "figuresAvailable", staticmethod(lambda: True))
    assert logic.ensureDependencies("spine", askUser=False) is True  # nothing to install for the spine engine
    assert logic.ensureDependencies("context", askUser=False) is True
    monkeypatch.setattr(module.os.path, "expanduser", lambda p: str(tmp_path / "home") if p == "~" else p)
    folder = Path(logic.weightsCacheDirectory())
    assert folder == tmp_path / "home" / ".healthivert" / "weights"
    folder.mkdir(parents=True)
    (folder / "generator.safetensors").write_bytes(b"x")
    (folder / "generator.json").write_text("{}", encoding="utf-8")
    (folder / "notes.txt").write_text("kept", encoding="utf-8")
    assert [Path(f).name for f in logic.cachedWeights()] == ["generator.json", "generator.safetensors"]
    checkpoint = tmp_path / "latest_net_G.pth"
    checkpoint.write_bytes(b"y")
    logic.setUserCheckpoint(str(checkpoint))
    assert logic.userCheckpoint() == str(checkpoint)
    assert logic.findWeights()[0] == str(checkpoint) and str(folder / "generator.safetensors") in logic.findWeights()
    logic.clearWeightsCache()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
