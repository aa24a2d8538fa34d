"""HealthiVert: grade osteoporotic vertebral compression fractures on CT in 3D Slicer.

The module is thin. It turns the selected nodes into images (``HealthiVertLib.scene``), runs the
``HealthiVertLib`` command line (``python -m HealthiVertLib.app.cli grade``, the same entry point as the
``healthivert`` command) in a background ``PythonSlicer`` process with a progress bar, a log and
Cancel (``HealthiVertLib.app.background``), and puts the results into the scene (``HealthiVertLib.scene``):
the height-loss map over the CT, body segmentations with SNOMED CT terminology, a table, the Genant
points and heights, an antero-posterior profile plot. "Export to DICOM" writes the last result's DICOM SEG,
SR and parametric map against the CT series it came from (``healthivert export-dicom`` in the background) and
imports them into Slicer's DICOM database. All numerics live in ``HealthiVertLib``.
Research use only, not for diagnosis.
"""

import enum
import logging
import os
import shutil
import sys
import time
from typing import Callable, Optional, Union

import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer < 5.4 has no translation support

    def _(text):
        return text

    def translate(context, text):
        return text


from slicer.parameterNodeWrapper import parameterNodeWrapper

CORE_PACKAGE = "HealthiVertLib"
TORCH_ENGINES = ("generator",)  # engines that need PyTorch (installed through the PyTorch extension)
ENGINE_REQUIREMENTS = {"generator": ["safetensors>=0.4"]}  # pip packages besides torch, per engine
FIGURE_REQUIREMENTS = ["matplotlib>=3.7"]  # the report figures (Slicer does not bundle matplotlib)
NEVER_INSTALL = ("numpy", "SimpleITK", "requests")  # bundled with Slicer: never reinstall or upgrade
SETTINGS_GROUP = "HealthiVert"
SAMPLE_SHA256 = {  # the bundled sample case (HealthiVertLib/data/sample), registered as SampleData
    "ct.nii.gz": "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1",
    "seg.nii.gz": "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7",
}
SAMPLE_URL = "https://raw.githubusercontent.com/healthivert/SlicerHealthiVert/main/HealthiVertLib/data/sample/"
SAMPLE_NAMES = ("HealthiVertSample", "HealthiVertSampleVertebrae")  # Sample Data: the CT, its vertebra label map


class TargetMode(enum.Enum):
    """Which vertebrae to grade."""

    POINT = "point"
    LEVELS = "levels"
    ALL = "all"

    def label(self):
        return {
            TargetMode.POINT: _("The vertebra under a point"),
            TargetMode.LEVELS: _("Levels from a list"),
            TargetMode.ALL: _("Every vertebra"),
        }[self]


class LabelNumbering(enum.Enum):
    """The label numbering of a label map volume (segmentations are named by their segments)."""

    AUTO = "auto"
    VERSE = "verse"
    TOTALSEG = "totalseg"

    def label(self):
        return {
            LabelNumbering.AUTO: _("Detect from the labels"),
            LabelNumbering.VERSE: _("VerSe / TotalSegmentator vertebrae (L1 = 20)"),
            LabelNumbering.TOTALSEG: _("TotalSegmentator total (L1 = 31)"),
        }[self]


class Device(enum.Enum):
    """Where an engine with a neural network runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self):
        return {
            Device.AUTO: _("GPU when available, else CPU"),
            Device.CPU: _("CPU"),
            Device.CUDA: _("GPU (CUDA)"),
        }[self]


#
# HealthiVert
#


class HealthiVert(ScriptedLoadableModule):
    """Module description shown in Slicer (Help & Acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("HealthiVert")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["HealthiVert contributors"]
        self.parent.helpText = _("""
Grades osteoporotic vertebral compression fractures on CT the way a radiologist reasons about them:
it predicts how tall each selected vertebra would be if it were healthy (a pseudo-healthy vertebra,
from the rest of the spine), measures the Relative Height Loss of the Vertebra (RHLV) in its anterior,
middle and posterior thirds and the loss of the three heights a radiologist compares, maps the loss
across the vertebral body, and gives a Genant grade (0 normal, 1 mild, 2 moderate, 3 severe) with a
confidence.<br><br>
Inputs: the CT and a vertebra segmentation (segmentation or label map, e.g. from the TotalSegmentator
extension). Place a point on a vertebra, or pick levels, or grade all. Results: the height-loss map
over the CT, the vertebral bodies and their pseudo-healthy shapes as segmentations, a table with one
row per vertebra, the Genant points and heights as markups, and an antero-posterior profile plot.<br><br>
<b>Research use only. HealthiVert is not a medical device and must not be used for diagnosis.</b>
What the defaults learned from: the spine engine's level prior from published morphometry and 16
healthy vertebrae, and the grader's grade-1 threshold from 30 vertebrae graded by radiologists, all of
4 VerSe19 subjects. On those (leave-one-subject-out) it found 5 of 6 moderate/severe and 5 of 8 mild
fractures; 4 subjects are not a clinical validation.<br>
See the <a href="https://github.com/healthivert/SlicerHealthiVert">project page</a> for documentation.
""")
        self.parent.acknowledgementText = _("""
The method follows HealthiVert-GAN: Zhang Q. et al., "HealthiVert-GAN: A Novel Framework of
Pseudo-Healthy Vertebral Image Synthesis for Interpretable Compression Fracture Grading",
IEEE Journal of Biomedical and Health Informatics (JBHI), 2025,
doi:<a href="https://doi.org/10.1109/JBHI.2025.3572458">10.1109/JBHI.2025.3572458</a>,
arXiv:<a href="https://arxiv.org/abs/2503.05990">2503.05990</a>. Please cite it when you use
HealthiVert. The sample data is the TotalSegmentator example CT (Apache-2.0).<br><br>
Research use only, not for diagnosis.
""")
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        if not os.path.isfile(os.path.join(moduleDir, "Resources", "Icons", "HealthiVert.png")):
            iconPath = _resourceFilePath("Icons/HealthiVert.png")
            if iconPath:
                self.parent.icon = qt.QIcon(iconPath)
        slicer.app.connect("startupCompleted()", registerSampleData)


def _resourceFilePath(relativePath: str) -> Optional[str]:
    """``Resources/<relativePath>`` next to this file (built extension), else in the repository root."""
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    for base in (moduleDir, os.path.dirname(moduleDir)):
        candidate = os.path.join(base, "Resources", relativePath)
        if os.path.exists(candidate):
            return candidate
    return None


def coreLibraryParentDirectory() -> str:
    """The folder holding the ``HealthiVertLib`` package: next to this file in a built extension,
    the repository root in a source checkout, else wherever Python finds it."""
    import importlib.util

    moduleDir = os.path.dirname(os.path.abspath(__file__))
    for candidate in (moduleDir, os.path.dirname(moduleDir)):
        if os.path.isfile(os.path.join(candidate, CORE_PACKAGE, "__init__.py")):
            return candidate
    spec = importlib.util.find_spec(CORE_PACKAGE)
    if spec is not None and spec.origin:
        return os.path.dirname(os.path.dirname(spec.origin))
    raise RuntimeError(_("The {package} package was not found next to {file}. Reinstall the HealthiVert extension.").format(
        package=CORE_PACKAGE, file=__file__))


def core(name: str):
    """Import ``HealthiVertLib.<name>`` (lazily: nothing heavy is imported when Slicer starts)."""
    import importlib

    parent = coreLibraryParentDirectory()
    if parent not in sys.path:
        sys.path.insert(0, parent)
    return importlib.import_module(f"{CORE_PACKAGE}.{name}")


def registerSampleData():
    """Register the bundled sample case (TotalSegmentator example CT and its labels) in Sample Data (once)."""
    import SampleData

    if getattr(registerSampleData, "registered", False):
        return

    iconPath = _resourceFilePath("Icons/HealthiVert.png")
    sampleDir = os.path.join(coreLibraryParentDirectory(), CORE_PACKAGE, "data", "sample")
    checksums = [f"SHA256:{SAMPLE_SHA256[name]}" for name in ("ct.nii.gz", "seg.nii.gz")]
    uris = []
    for name in ("ct.nii.gz", "seg.nii.gz"):
        local = os.path.join(sampleDir, name)
        uris.append(qt.QUrl.fromLocalFile(local).toString() if os.path.isfile(local) else SAMPLE_URL + name)
    # One source per file: SampleData applies one loadFileProperties dict to every file of a source
    # (SampleDataLogic.loadNode copies it and sets "fileName"), so the label map needs its own.
    # ``loadFileType`` is accepted by every SampleData version (newer ones call it loadFileTypes).
    for index, (sampleName, nodeName, properties) in enumerate((
        (SAMPLE_NAMES[0], "HealthiVertSample CT", {}),
        (SAMPLE_NAMES[1], "HealthiVertSample vertebrae", {"labelmap": True}),
    )):  # fmt: skip
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category="HealthiVert",
            sampleName=sampleName,
            thumbnailFileName=iconPath,
            uris=uris[index],
            fileNames=f"HealthiVertSample_{('ct', 'seg')[index]}.nii.gz",
            nodeNames=nodeName,
            checksums=checksums[index],
            loadFileType="VolumeFile",
            loadFileProperties=properties,
        )
    registerSampleData.registered = True


#
# HealthiVertParameterNode
#


@parameterNodeWrapper
class HealthiVertParameterNode:
    """
    ctVolume - the CT (any scalar volume; optional: heights and grades need only the segmentation).
    vertebrae - vertebra segmentation (segmentation node or label map volume), one segment/label per vertebra.
    subregions - optional vertebral-body labels (TotalSegmentator vertebrae_body, Kirschke subregions).
    labelNumbering - numbering of a label map volume (segmentations are recognised by segment names).
    targetMode - grade the vertebra under a point, levels from a list, or every vertebra.
    targetPoint - markups point placed on the vertebra to grade.
    targetLevel - level(s) to grade, e.g. "L1" or "T12 L1".
    engine - how the pseudo-healthy vertebra is predicted (filled from HealthiVertLib.engines).
    device - where a neural network engine runs.
    heightLossVolume, resultTable - results of the last run.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    # the None member is required by parameterNodeWrapper for a union of node types
    vertebrae: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    subregions: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    labelNumbering: LabelNumbering = LabelNumbering.AUTO
    targetMode: TargetMode = TargetMode.POINT
    targetPoint: vtkMRMLMarkupsFiducialNode
    targetLevel: str = ""
    engine: str = "spine"
    device: Device = Device.AUTO
    heightLossVolume: vtkMRMLScalarVolumeNode
    resultTable: vtkMRMLTableNode


#
# HealthiVertWidget
#


class HealthiVertWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: inputs bound to the parameter node, Apply/Cancel, progress bar, log, weights folder."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._lastOutputDirectory = None
        self._observedPoint = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = _resourceFilePath("UI/HealthiVert.ui") or self.resourcePath("UI/HealthiVert.ui")
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = HealthiVertLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for engine in self.logic.availableEngines():
            self.ui.engineComboBox.addItem(engine)
        self.ui.engineComboBox.connect("currentIndexChanged(int)", self.onEngineChanged)
        self.ui.targetPointPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.targetPointPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.targetPointSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.targetPointPlaceWidget.setCurrentNode)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.openWeightsFolderButton.connect("clicked(bool)", self.onOpenWeightsFolder)
        self.ui.clearWeightsButton.connect("clicked(bool)", self.onClearWeights)
        self.ui.checkpointPathLineEdit.currentPath = self.logic.userCheckpoint()
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointChanged)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.ui.openReportButton.enabled = False
        self._updateExportButton()
        self._updateWeightsFolder()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        if self.logic is not None and self.logic.isExporting():
            self.logic.cancelExport()
        self.removeObservers()

    def _observeTargetPoint(self, pointNode) -> None:
        """Re-check Apply when a point is placed or removed (that modifies the markups node, not the parameter node)."""
        if pointNode is self._observedPoint:
            return
        if self._observedPoint is not None:
            for event in (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent):
                self.removeObserver(self._observedPoint, event, self._checkCanApply)
        self._observedPoint = pointNode
        if pointNode is not None:
            for event in (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent):
                self.addObserver(pointNode, event, self._checkCanApply)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.vertebrae:  # pre-select to save clicks: a segmentation first (TotalSegmentator), else a label map
            p.vertebrae = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode") or slicer.mrmlScene.GetFirstNodeByClass(
                "vtkMRMLLabelMapVolumeNode")
        if not p.ctVolume:
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetAttribute("HealthiVert.Output") is None:
                    p.ctVolume = node
                    break
        if not p.targetPoint:
            p.targetPoint = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", _("HealthiVert target"))

    def setParameterNode(self, inputParameterNode: Optional[HealthiVertParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Binds the widgets that have a SlicerParameterName property in the .ui file
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is not None:
            index = self.ui.engineComboBox.findText(p.engine)
            if index >= 0 and index != self.ui.engineComboBox.currentIndex:
                self.ui.engineComboBox.currentIndex = index
            mode = p.targetMode
            self.ui.targetPointSelector.visible = self.ui.targetPointPlaceWidget.visible = mode == TargetMode.POINT
            self.ui.targetPointLabel.visible = mode == TargetMode.POINT
            self.ui.levelsLineEdit.visible = self.ui.levelsLabel.visible = mode == TargetMode.LEVELS
            self.ui.targetPointPlaceWidget.setCurrentNode(p.targetPoint)
            self._observeTargetPoint(p.targetPoint)
            needsDevice = p.engine in TORCH_ENGINES
            self.ui.deviceComboBox.enabled = self.ui.weightsCollapsibleButton.enabled = needsDevice
            self.ui.timeEstimateLabel.text = self._timeEstimate()
        self._updateExportButton()
        if self.logic is not None and self.logic.isRunning():
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop grading")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        reason = self._cannotApplyReason()
        self.ui.applyButton.enabled = reason is None
        self.ui.applyButton.toolTip = reason if reason is not None else _("Grade the selected vertebrae.")
        self.ui.statusLabel.text = reason or ""

    def _timeEstimate(self) -> str:
        p = self._parameterNode
        count = 1
        if p.targetMode == TargetMode.LEVELS:
            count = max(1, len(core("app.background").parse_levels(p.targetLevel)))
        elif p.targetMode == TargetMode.ALL:
            count = 10
        seconds = core("app.background").estimate_seconds(p.engine, count, self.logic.figuresAvailable())
        if seconds is None:
            return _("Time on CPU: not measured for the '{engine}' engine.").format(engine=p.engine)
        if p.targetMode == TargetMode.ALL:
            return _("Time on CPU: about {seconds:.0f} s for 10 vertebrae.").format(seconds=seconds)
        return _("Time on CPU: about {seconds:.0f} s.").format(seconds=max(seconds, 1.0))

    def _cannotApplyReason(self) -> Optional[str]:
        """Why Apply is disabled, or None when the inputs are valid."""
        p = self._parameterNode
        if p is None:
            return _("The module is not initialized.")
        if not p.vertebrae:
            return _("Select the vertebra segmentation (e.g. from the TotalSegmentator extension).")
        if p.vertebrae.IsA("vtkMRMLSegmentationNode"):
            if p.vertebrae.GetSegmentation().GetNumberOfSegments() == 0:
                return _("The vertebra segmentation has no segments.")
            if not p.ctVolume:
                return _("Select the CT: a segmentation needs it as the reference grid.")
        elif p.vertebrae.GetImageData() is None:
            return _("The vertebra label map has no image data.")
        if p.ctVolume and p.ctVolume.GetImageData() is None:
            return _("The CT volume has no image data.")
        if p.targetMode == TargetMode.POINT:
            if not p.targetPoint or p.targetPoint.GetNumberOfControlPoints() == 0:
                return _("Place a point on the vertebra to grade (or choose levels, or every vertebra).")
        elif p.targetMode == TargetMode.LEVELS:
            background = core("app.background")
            if not background.parse_levels(p.targetLevel):
                return _("Type the level(s) to grade, e.g. L1 or T12 L1.")
            bad = background.invalid_levels(p.targetLevel)
            if bad:
                return _("Unknown vertebra level(s): {levels}. Use T1-T13 or L1-L6, separated by spaces.").format(
                    levels=", ".join(bad))
        if p.engine not in self.logic.availableEngines():
            return _("The '{engine}' engine is not available in this installation.").format(engine=p.engine)
        return None

    def onEngineChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.engine = self.ui.engineComboBox.itemText(index)

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            self._log(_("Cancelling..."))
            return
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setFormat(_("Starting"))
        with slicer.util.tryWithErrorDisplay(_("Failed to start HealthiVert."), waitCursor=True):
            if not self.logic.ensureDependencies(p.engine, askUser=True):
                self._log(_("Missing packages were not installed; nothing was run."))
                return
            self.logic.process(
                p.ctVolume, p.vertebrae, p.subregions, p.targetMode, p.targetPoint, p.targetLevel,
                labelNumbering=p.labelNumbering, engine=p.engine, device=p.device,
                waitForCompletion=False, showResult=True,
                progressCallback=self._onProgress, logCallback=self._log, completedCallback=self._onCompleted,
            )  # fmt: skip
        self._checkCanApply()

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _onProgress(self, percent: float, message: str) -> None:
        self.ui.progressBar.setValue(int(round(percent)))
        self.ui.progressBar.setFormat(f"%p% {message}" if message else "%p%")

    def _onCompleted(self, results, error: Optional[str]) -> None:
        self._checkCanApply()
        if error:
            self.ui.progressBar.setFormat(_("Cancelled") if self.logic.lastRunCancelled else _("Failed"))
            self._log(error)
            if not self.logic.lastRunCancelled:
                slicer.util.errorDisplay(_("HealthiVert failed: {error}").format(error=error.splitlines()[0]), detailedText=error)
            return
        self.ui.progressBar.setValue(100)
        self.ui.progressBar.setFormat(_("Done"))
        if self._parameterNode:
            self._parameterNode.heightLossVolume = results.height_loss
            self._parameterNode.resultTable = results.table
        for line in core("scene").grades_summary(results.report):
            self._log(line)
        self._lastOutputDirectory = self.logic.lastOutputDirectory
        self.ui.openReportButton.enabled = self._lastOutputDirectory is not None
        self._updateExportButton()
        self._log(_("Report files: {folder}").format(folder=self._lastOutputDirectory))
        self._log(_("Research use only, not for diagnosis."))
        HealthiVertLogic.showResultViews(results)

    # --- DICOM export ----------------------------------------------------------------------------

    def _updateExportButton(self) -> None:
        """Export to DICOM is enabled only for a finished result graded on a CT loaded from DICOM; the tooltip says why not."""
        reason = self.logic.dicomExportUnavailableReason() if self.logic is not None else _("The module is not initialized.")
        self.ui.exportDicomButton.enabled = reason is None
        self.ui.exportDicomButton.toolTip = reason or _(
            "Write the DICOM SEG, structured report (TID 1500) and height-loss parametric map of the last result, "
            "referencing the CT series, and import them into Slicer's DICOM database.")

    def onExportDicom(self) -> None:
        """Export the last result in the background; without an open DICOM database, ask for the folder of the
        CT series and a folder to save the objects in."""
        database = self.logic.dicomDatabase()
        ctFolder = destination = None
        if not core("scene").database_is_open(database):
            ctFolder = qt.QFileDialog.getExistingDirectory(self.parent, _("Slicer's DICOM database is not open: the folder of the CT's DICOM series"))
            if not ctFolder:
                return
            destination = qt.QFileDialog.getExistingDirectory(self.parent, _("Folder to save the DICOM objects in"))
            if not destination:
                return
        try:
            self.logic.exportToDicom(database, ctFolder, destination, waitForCompletion=False, completedCallback=self._onExportCompleted)
        except Exception as error:
            self._onExportCompleted(None, str(error))
            return
        self.ui.dicomStatusLabel.text = _("Writing the DICOM objects...")
        self._updateExportButton()

    def _onExportCompleted(self, summary: Optional[str], error: Optional[str]) -> None:
        self._updateExportButton()
        if error:
            self.ui.dicomStatusLabel.text = _("DICOM export failed.")
            self._log(error)
            slicer.util.errorDisplay(error.splitlines()[0], detailedText=error)
            return
        self.ui.dicomStatusLabel.text = summary
        self._log(summary)

    def onOpenReport(self) -> None:
        if not self._lastOutputDirectory:
            return
        index = os.path.join(self._lastOutputDirectory, "index.html")
        target = index if os.path.isfile(index) else self._lastOutputDirectory
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(target))

    # --- weights ---------------------------------------------------------------------------------

    def _updateWeightsFolder(self) -> None:
        folder = self.logic.weightsCacheDirectory()
        found = self.logic.findWeights()
        self.ui.weightsFolderLabel.text = folder
        self.ui.weightsFolderLabel.toolTip = "\n".join(found) if found else _("No weights found.")
        self.ui.clearWeightsButton.enabled = bool(self.logic.cachedWeights())

    def onOpenWeightsFolder(self) -> None:
        folder = self.logic.weightsCacheDirectory()
        os.makedirs(folder, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

    def onClearWeights(self) -> None:
        files = self.logic.cachedWeights()
        if not files:
            return
        if not slicer.util.confirmOkCancelDisplay(
            _("Delete {count} downloaded weight file(s) from {folder}?").format(count=len(files), folder=self.logic.weightsCacheDirectory())
        ):
            return
        self.logic.clearWeightsCache()
        self._updateWeightsFolder()

    def onCheckpointChanged(self, path: str) -> None:
        self.logic.setUserCheckpoint(path)
        self._updateWeightsFolder()


#
# HealthiVertLogic
#


class HealthiVertLogic(ScriptedLoadableModuleLogic):
    """Turns scene nodes into the HealthiVertLib command line, runs it in the background and puts its
    results into the scene. Works without the GUI (``waitForCompletion=True``)."""

    POLL_INTERVAL_MS = 200

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._run = None
        self.lastRunCancelled = False
        self.lastOutputDirectory = None
        self.lastReferenceNode = None  # the node the last result was graded on (the CT, or the label map)
        self._exportRun = None

    def getParameterNode(self):
        return HealthiVertParameterNode(super().getParameterNode())

    # --- environment -----------------------------------------------------------------------------

    @staticmethod
    def availableEngines() -> list:
        """The pseudo-healthy engines of this installation (HealthiVertLib.engines.ENGINES)."""
        return list(core("engines").ENGINES)

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (PythonSlicer); plain Python when running outside the application."""
        name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
        home = getattr(slicer.app, "slicerHome", None)
        if home and os.path.isfile(os.path.join(home, "bin", name)):
            return os.path.join(home, "bin", name)
        executable = shutil.which("PythonSlicer")
        if executable:
            return executable
        if "python" in os.path.basename(sys.executable).lower():
            return sys.executable
        raise RuntimeError(_("PythonSlicer was not found; it is needed to run HealthiVert in the background."))

    @staticmethod
    def figuresAvailable() -> bool:
        """The report figures need matplotlib, which Slicer does not bundle; without it they are skipped."""
        import importlib.util

        return importlib.util.find_spec("matplotlib") is not None

    def ensureDependencies(self, engine: str, askUser: bool = True) -> bool:
        """Make the packages ``engine`` needs importable: torch through the PyTorch extension, the rest
        through pip (asked once, never numpy/SimpleITK). False when the user declined."""
        import importlib.util

        if engine in TORCH_ENGINES and importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("The '{engine}' engine needs PyTorch: install the PyTorch extension from the "
                                     "Extensions Manager and restart Slicer.").format(engine=engine))
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askUser, torchVersionRequirement=">=2.1") is None:
                return False
        requirements = [r for r in ENGINE_REQUIREMENTS.get(engine, []) if not r.startswith(NEVER_INSTALL)]
        settings = qt.QSettings()
        if not self.figuresAvailable() and settings.value(f"{SETTINGS_GROUP}/askedFigures") != "1":
            settings.setValue(f"{SETTINGS_GROUP}/askedFigures", "1")  # ask once
            if not askUser or slicer.util.confirmYesNoDisplay(
                _("The report figures need matplotlib, which Slicer does not include. Install it now? "
                  "(Without it the grading still works; only the PNG figures are skipped.)")):
                requirements += FIGURE_REQUIREMENTS
        if not requirements:
            return True
        return self._pipInstall(requirements, askUser)

    @staticmethod
    def _pipInstall(requirements: list, askUser: bool) -> bool:
        """Install missing ``requirements`` (>= floors) after asking; False when the user declined.

        Slicer 5.11+ has ``pip_ensure`` (checks, asks, installs, offers a restart): in
        ``slicer.packaging`` (the name Slicer PR #9010 was merged with; it takes strings or
        ``packaging.requirements.Requirement`` objects) or ``slicer.pydeps`` (the same function's name
        during that PR; ``Requirement`` objects only), so it is given ``Requirement`` objects. Older
        Slicer: ``slicer.util.pip_install`` after our own question. See
        Testing/Python/slicer_api_manifest.json for the Slicer source this was read in.
        """
        from packaging.requirements import Requirement

        parsed = [Requirement(r) for r in requirements]
        try:
            import slicer.packaging as slicerPackaging
        except ImportError:
            slicerPackaging = None
        try:
            import slicer.pydeps as slicerPydeps
        except ImportError:
            slicerPydeps = None
        try:
            if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):
                slicerPackaging.pip_ensure(parsed, prompt_install=askUser, requester="HealthiVert")
                return True
            if slicerPydeps is not None and hasattr(slicerPydeps, "pip_ensure"):
                slicerPydeps.pip_ensure(parsed, prompt_install=askUser, requester="HealthiVert")
                return True
        except RuntimeError:  # pip_ensure raises RuntimeError when the user declines
            return False
        missing = [r for r in requirements if not _isInstalled(r)]
        if not missing:
            return True
        if askUser and not slicer.util.confirmOkCancelDisplay(
            _("HealthiVert needs these Python packages: {packages}. Install them now?").format(packages=", ".join(missing))):
            return False
        slicer.util.pip_install(" ".join(f'"{r}"' for r in missing))
        return True

    # --- weights -------------------------------------------------------------------------------

    @staticmethod
    def weightsCacheDirectory() -> str:
        """Per-user folder for downloaded network weights."""
        return os.path.join(os.path.expanduser("~"), ".healthivert", "weights")

    @staticmethod
    def bundledWeights() -> list:
        """Weights shipped with the extension (``*.safetensors`` in HealthiVertLib/data/weights or Resources/)."""
        found = []
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        coreDir = coreLibraryParentDirectory()
        folders = [os.path.join(coreDir, CORE_PACKAGE, "data", "weights")]
        folders += [os.path.join(base, "Resources") for base in dict.fromkeys((moduleDir, os.path.dirname(moduleDir), coreDir))]
        for folder in folders:
            for root, _dirs, files in os.walk(folder):
                found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".safetensors")]
        return sorted(set(found))

    def cachedWeights(self) -> list:
        folder = self.weightsCacheDirectory()
        if not os.path.isdir(folder):
            return []
        return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith((".safetensors", ".pth", ".json")))

    def findWeights(self) -> list:
        """Weight files found: the user's checkpoint, those shipped with the extension, the cache."""
        found = [self.userCheckpoint()] if self.userCheckpoint() else []
        return found + self.bundledWeights() + [f for f in self.cachedWeights() if f.endswith((".safetensors", ".pth"))]

    def clearWeightsCache(self) -> None:
        for path in self.cachedWeights():
            os.remove(path)

    @staticmethod
    def userCheckpoint() -> str:
        path = qt.QSettings().value(f"{SETTINGS_GROUP}/checkpoint") or ""
        return path if path and os.path.isfile(path) else ""

    @staticmethod
    def setUserCheckpoint(path: str) -> None:
        qt.QSettings().setValue(f"{SETTINGS_GROUP}/checkpoint", path or "")

    # --- inputs ----------------------------------------------------------------------------------

    def prepareInputs(self, ctNode, vertebraeNode, subregionsNode, inputDir: str, labelNumbering=LabelNumbering.AUTO):
        """Write the CT, vertebra labels (and subregions) on the CT's grid as NIfTI files for the CLI.
        Returns ``(paths, labelInput, scheme)``."""
        import SimpleITK as sitk

        scene = core("scene")
        labelInput = scene.vertebra_labels(vertebraeNode, ctNode)
        scheme = labelInput.scheme
        if scheme is None and labelNumbering != LabelNumbering.AUTO:
            scheme = labelNumbering.value
        paths = {"seg": os.path.join(inputDir, "vertebrae.nii.gz"), "ct": None, "subregions": None}
        sitk.WriteImage(labelInput.image, paths["seg"], True)
        if ctNode is not None:
            paths["ct"] = os.path.join(inputDir, "ct.nii.gz")
            sitk.WriteImage(scene.volume_to_image(ctNode), paths["ct"], True)
        if subregionsNode is not None:
            reference = ctNode if ctNode is not None else None
            if reference is None and subregionsNode.IsA("vtkMRMLSegmentationNode"):
                raise ValueError(_("Select the CT: a subregion segmentation needs it as the reference grid."))
            image = scene.subregion_labels(subregionsNode, reference) if reference is not None else scene.volume_to_image(subregionsNode)
            paths["subregions"] = os.path.join(inputDir, "subregions.nii.gz")
            sitk.WriteImage(image, paths["subregions"], True)
        return paths, labelInput, scheme

    @staticmethod
    def targetLevels(targetMode, pointNode, levelText: str, labelInput, scheme) -> Optional[list]:
        """The levels to grade (None: all): the vertebra under the point, the typed levels, or all."""
        scene = core("scene")
        if targetMode == TargetMode.ALL:
            return None
        if targetMode == TargetMode.LEVELS:
            return core("app.background").parse_levels(levelText)
        label = scene.label_at_point(labelInput.image, scene.markups_point_ras(pointNode))
        if not label:
            raise ValueError(_("The point is not on a vertebra of the segmentation. Place it inside the vertebral body."))
        level = labelInput.level_of(label, scheme)
        if level is None:
            raise ValueError(_("The point is on label {label}, which is not a vertebra in this numbering.").format(label=label))
        return [level]

    # --- running ---------------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self._run is not None

    def process(
        self,
        ctNode,
        vertebraeNode,
        subregionsNode=None,
        targetMode=TargetMode.ALL,
        pointNode=None,
        levels: str = "",
        labelNumbering=LabelNumbering.AUTO,
        engine: str = "spine",
        device=Device.AUTO,
        outDir: Optional[str] = None,
        waitForCompletion: bool = True,
        showResult: bool = True,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        logCallback: Optional[Callable[[str], None]] = None,
        completedCallback: Optional[Callable] = None,
    ):
        """Grade vertebrae of ``vertebraeNode`` (segmentation or label map) with the optional CT.

        :param targetMode: TargetMode.POINT (the vertebra under ``pointNode``), LEVELS (``levels``,
            e.g. "T12 L1") or ALL.
        :param outDir: folder for report.json, report.csv, volumes and figures (default: a new
            temporary folder).
        :param waitForCompletion: block (keeping the GUI responsive) and return the result nodes
            (``HealthiVertLib.scene.ResultNodes``), raising RuntimeError on failure. Otherwise return
            None at once and call ``completedCallback(results, errorMessage)`` when done.
        """
        if self.isRunning():
            raise RuntimeError(_("HealthiVert is already running."))
        background = core("app.background")
        if engine not in self.availableEngines():
            raise ValueError(_("Unknown engine '{engine}'.").format(engine=engine))
        if targetMode == TargetMode.LEVELS and background.invalid_levels(levels):
            raise ValueError(_("Unknown vertebra level(s): {levels}.").format(levels=", ".join(background.invalid_levels(levels))))

        workDir = os.path.join(slicer.app.temporaryPath, "HealthiVert", time.strftime("%Y%m%d-%H%M%S"))
        inputDir = os.path.join(workDir, "input")
        os.makedirs(inputDir, exist_ok=True)
        outDir = os.path.abspath(outDir) if outDir else os.path.join(workDir, "output")
        referenceNode = ctNode if ctNode is not None else vertebraeNode
        try:
            paths, labelInput, scheme = self.prepareInputs(ctNode, vertebraeNode, subregionsNode, inputDir, labelNumbering)
            targets = self.targetLevels(targetMode, pointNode, levels, labelInput, scheme)
            if labelInput.resampled and logCallback:
                logCallback(_("The label map was resampled onto the CT's voxel grid (nearest neighbour)."))
            extra = []
            options = background.grade_options()
            if engine in TORCH_ENGINES and "--device" in options:
                extra += ["--device", device.value]
            checkpoint = self.userCheckpoint()
            if engine in TORCH_ENGINES and checkpoint and "--weights" in options:
                extra += ["--weights", checkpoint]
            figures = self.figuresAvailable()
            command = [self.pythonExecutable()] + background.grade_command(
                paths["seg"], outDir, paths["ct"], targets, engine, scheme, referenceNode.GetName(), figures,
                paths["subregions"], extra,
            )  # fmt: skip
            coreDir = coreLibraryParentDirectory()
            environment = background.child_environment(
                coreDir, slicer.util.startupEnvironment() if hasattr(slicer.util, "startupEnvironment") else None,
                device.value if engine in TORCH_ENGINES else None,
            )  # fmt: skip
            logging.info("HealthiVert: %s", " ".join(command))
            run = background.BackgroundRun(command, env=environment, cwd=coreDir)
        except Exception:
            shutil.rmtree(inputDir, ignore_errors=True)
            raise
        run.context = (inputDir, outDir, referenceNode, showResult, progressCallback, logCallback, completedCallback)
        self._run = run
        self.lastRunCancelled = False
        if logCallback:
            logCallback(_("Grading {name} ({levels}) with the '{engine}' engine...").format(
                name=referenceNode.GetName(), levels=" ".join(targets) if targets else _("all levels"), engine=engine))
            if not figures:
                logCallback(_("matplotlib is not installed: the report figures are skipped."))
        if not waitForCompletion:
            qt.QTimer.singleShot(self.POLL_INTERVAL_MS, self._poll)
            return None
        while not self._handle(run, run.poll(timeout=0.1)):
            slicer.app.processEvents()
        results, error = self._finish(run)
        if error:
            raise RuntimeError(error)
        return results

    def cancel(self) -> None:
        """Stop the running process tree; the completion callback reports the cancellation."""
        if self._run is not None:
            self._run.cancel()

    def _poll(self) -> None:
        run = self._run
        if run is None:
            return
        if self._handle(run, run.poll()):
            self._finish(run)
        else:
            qt.QTimer.singleShot(self.POLL_INTERVAL_MS, self._poll)

    @staticmethod
    def _handle(run, events) -> bool:
        """Pass progress and log lines to the callbacks; True once the process has ended."""
        progressCallback, logCallback = run.context[4], run.context[5]
        for event in events:
            if event[0] == "progress":
                if progressCallback:
                    progressCallback(event[1], event[2])
                if event[2] and logCallback:
                    logCallback(f"[{event[1]:3.0f}%] {event[2]}")
            elif logCallback:
                logCallback(event[1])
        return run.finished

    def _finish(self, run):
        """Load the results of a finished run; returns ``(results, errorMessage)``."""
        inputDir, outDir, referenceNode, showResult, _progress, _log, completedCallback = run.context
        self._run = None
        self.lastRunCancelled = run.cancelled
        shutil.rmtree(inputDir, ignore_errors=True)
        results, error = None, run.error_message()
        if error is None:
            try:
                results = self.loadResults(outDir, referenceNode, showResult)
                self.lastOutputDirectory = outDir
                self.lastReferenceNode = referenceNode
            except Exception as e:
                logging.exception("HealthiVert: loading the results failed")
                error = _("Could not load the results from {folder}: {error}").format(folder=outDir, error=e)
        if completedCallback:
            completedCallback(results, error)
        return results, error

    # --- DICOM export ----------------------------------------------------------------------------

    @staticmethod
    def dicomDatabase():
        """Slicer's DICOM database (``slicer.dicomDatabase``, a ctkDICOMDatabase the DICOM module sets at
        startup; it may be closed), or None outside the application."""
        return getattr(slicer, "dicomDatabase", None)

    def isExporting(self) -> bool:
        return self._exportRun is not None

    def dicomExportUnavailableReason(self) -> Optional[str]:
        """Why the last result cannot be exported to DICOM now, or None (HealthiVertLib.scene.dicom_export_unavailable)."""
        if self.isRunning():
            return _("Wait for the grading to finish.")
        if self.isExporting():
            return _("The DICOM export is running.")
        if not self.lastOutputDirectory:  # before any result: no need to import the scene adapter yet
            return _("Grade a case first: Export to DICOM writes the DICOM objects of the last result.")
        return core("scene").dicom_export_unavailable(self.lastReferenceNode, self.lastOutputDirectory)

    def exportToDicom(
        self,
        database=None,
        ctFolder: Optional[str] = None,
        destination: Optional[str] = None,
        waitForCompletion: bool = True,
        completedCallback: Optional[Callable[[Optional[str], Optional[str]], None]] = None,
    ) -> Optional[str]:
        """Write the DICOM SEG, SR and parametric map of the last result into its ``dicom/`` folder, referencing
        the CT series it was graded on, in a background ``healthivert export-dicom`` process.

        With ``database`` open (Slicer's DICOM database) the CT's files are found in it and the objects are
        imported into it (copied, so they outlive the temporary result folder); otherwise the CT series is read
        from ``ctFolder`` and the objects are copied into ``destination``. ``waitForCompletion``: block (GUI
        responsive) and return the one-line summary, raising RuntimeError on failure; else return None at once
        and call ``completedCallback(summary, errorMessage)`` when done.
        """
        if self.isExporting():
            raise RuntimeError(_("A DICOM export is already running."))
        scene = core("scene")
        background = core("app.background")
        useDatabase = scene.database_is_open(database)
        if not useDatabase and not (ctFolder and destination):
            raise ValueError(_("Slicer's DICOM database is not open: choose the folder of the CT's DICOM series and a "
                               "folder to save the DICOM objects in."))
        workDir = os.path.join(slicer.app.temporaryPath, "HealthiVert")
        plan = scene.prepare_dicom_export(self.lastOutputDirectory, self.lastReferenceNode, database if useDatabase else None,
                                          workDir, ct_folder=None if useDatabase else ctFolder)  # fmt: skip
        try:
            coreDir = coreLibraryParentDirectory()
            command = [self.pythonExecutable()] + background.export_dicom_command(str(plan.result_dir), str(plan.ct_folder))
            environment = background.child_environment(
                coreDir, slicer.util.startupEnvironment() if hasattr(slicer.util, "startupEnvironment") else None)
            logging.info("HealthiVert: %s", " ".join(command))
            run = background.BackgroundRun(command, env=environment, cwd=coreDir)
        except Exception:
            plan.cleanup()
            raise
        run.context = (plan, database if useDatabase else None, destination, completedCallback)
        self._exportRun = run
        if not waitForCompletion:
            qt.QTimer.singleShot(self.POLL_INTERVAL_MS, self._pollExport)
            return None
        while not run.finished:
            run.poll(timeout=0.1)
            slicer.app.processEvents()
        summary, error = self._finishExport(run)
        if error:
            raise RuntimeError(error)
        return summary

    def cancelExport(self) -> None:
        """Stop a running DICOM export (its completion callback reports the cancellation)."""
        if self._exportRun is not None:
            self._exportRun.cancel()

    def _pollExport(self) -> None:
        run = self._exportRun
        if run is None:
            return
        run.poll()
        if run.finished:
            self._finishExport(run)
        else:
            qt.QTimer.singleShot(self.POLL_INTERVAL_MS, self._pollExport)

    def _finishExport(self, run):
        """Import (or copy) the objects of a finished export; returns ``(summary, errorMessage)``."""
        plan, database, destination, completedCallback = run.context
        self._exportRun = None
        plan.cleanup()
        scene = core("scene")
        summary, error = None, run.error_message()
        if error is None:
            try:
                files = scene.dicom_objects(plan.result_dir)
                what = scene.describe_dicom_objects(files)
                if database is not None:
                    self.importIntoDicomDatabase(str(plan.dicom_dir), database)
                    summary = _("Wrote {what} into {folder} and imported them into Slicer's DICOM database.").format(
                        what=what, folder=plan.dicom_dir)
                else:
                    scene.copy_dicom_objects(files, destination)
                    summary = _("Wrote {what} into {folder}.").format(what=what, folder=destination)
            except Exception as e:
                logging.exception("HealthiVert: the DICOM export failed")
                error = str(e)
        if completedCallback:
            completedCallback(summary, error)
        return summary, error

    @staticmethod
    def importIntoDicomDatabase(folder: str, database) -> None:
        """Add the DICOM files of ``folder`` to ``database`` with Slicer's ``DICOMUtils.importDicom``, copying them
        into the database (the result folder is temporary). Raises RuntimeError when the import fails."""
        from DICOMLib import DICOMUtils

        if not DICOMUtils.importDicom(folder, database, copyFiles=True):
            raise RuntimeError(_("Slicer could not import {folder} into its DICOM database (the Python console says why).").format(
                folder=folder))

    # --- results ---------------------------------------------------------------------------------

    def loadResults(self, outDir: str, referenceNode=None, showResult: bool = True):
        """Put the outputs of a run into the scene (replacing this module's earlier outputs for the
        same input, never other nodes); returns ``HealthiVertLib.scene.ResultNodes``."""
        results = core("scene").show_results(slicer.mrmlScene, outDir, referenceNode, show=showResult)
        if showResult and slicer.app.layoutManager() is not None and referenceNode is not None:
            slicer.util.resetSliceViews()
        return results

    @staticmethod
    def showResultViews(results) -> None:
        """Table and plot in the layout, segmentation surfaces in 3D (GUI only)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or results is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        applicationLogic = slicer.app.applicationLogic()
        selection = applicationLogic.GetSelectionNode()
        selection.SetActiveTableID(results.table.GetID())
        applicationLogic.PropagateTableSelection()
        if results.plot_chart is not None:
            selection.SetActivePlotChartID(results.plot_chart.GetID())
            applicationLogic.PropagatePlotChartSelection()
        layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


def _isInstalled(requirement: str) -> bool:
    """True when an installed distribution satisfies ``requirement`` (no import, no subprocess)."""
    import importlib.metadata

    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    try:
        return parsed.specifier.contains(importlib.metadata.version(parsed.name), prereleases=True)
    except importlib.metadata.PackageNotFoundError:
        return False


#
# HealthiVertTest
#


class HealthiVertTest(ScriptedLoadableModuleTest):
    """Runs the module logic on the registered sample case: background process, results in the scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleCaseFromPoint()
        self.setUp()
        self.test_InputValidation()

    def _loadSample(self):
        import SampleData

        registerSampleData()
        self.delayDisplay("Loading the HealthiVert sample (TotalSegmentator example CT and labels)")
        ctNode = SampleData.downloadSample(SAMPLE_NAMES[0])  # the first (here: only) node a source loads
        labelNode = SampleData.downloadSample(SAMPLE_NAMES[1])
        self.assertIsNotNone(ctNode)
        self.assertTrue(labelNode.IsA("vtkMRMLLabelMapVolumeNode"))
        return ctNode, labelNode

    def test_SampleCaseFromPoint(self):
        import numpy as np

        ctNode, labelNode = self._loadSample()
        scene = core("scene")
        labels = scene.vertebra_labels(labelNode, ctNode)
        l1 = np.argwhere(slicer.util.arrayFromVolume(labelNode) == 31).mean(axis=0)  # TotalSegmentator: 31 = L1
        ras = [0.0, 0.0, 0.0, 1.0]
        matrix = vtk.vtkMatrix4x4()
        labelNode.GetIJKToRASMatrix(matrix)
        matrix.MultiplyPoint([l1[2], l1[1], l1[0], 1.0], ras)
        pointNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "L1 pick")
        pointNode.AddControlPoint(vtk.vtkVector3d(*ras[:3]))
        self.assertEqual(labels.level_of(scene.label_at_point(labels.image, ras[:3])), "L1")

        logic = HealthiVertLogic()
        progress, log = [], []
        self.delayDisplay("Grading the vertebra under the point in the background")
        results = logic.process(
            ctNode, labelNode, None, TargetMode.POINT, pointNode, waitForCompletion=True, showResult=True,
            progressCallback=lambda p, m: progress.append(p), logCallback=log.append,
        )  # fmt: skip
        self.assertFalse(logic.isRunning())
        self.assertTrue(progress and progress[-1] == 100.0, "no progress lines were parsed")
        vertebrae = {v["level"]: v for v in results.report["vertebrae"]}
        self.assertEqual(set(vertebrae), {"L1"})
        self.assertEqual(vertebrae["L1"]["status"], "graded")
        self.assertEqual(vertebrae["L1"]["grade"], 0)  # L1 of the sample is normal
        self.assertLess(vertebrae["L1"]["rhlv"]["overall"], 0.2)
        self.assertIn(results.height_loss.GetDisplayNode().GetColorNodeID(), scene.HEAT_COLOR_NODE_IDS)
        self.assertEqual(results.table.GetNumberOfRows(), 1)
        self.assertEqual(results.points["L1"].GetNumberOfControlPoints(), 6)
        compositeNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceCompositeNode()
        self.assertEqual(compositeNode.GetForegroundVolumeID(), results.height_loss.GetID())

        # Re-running replaces the module's outputs only
        before = len(scene.output_nodes(slicer.mrmlScene))
        logic.process(ctNode, labelNode, None, TargetMode.POINT, pointNode, waitForCompletion=True)
        self.assertEqual(len(scene.output_nodes(slicer.mrmlScene)), before)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(labelNode.GetID()))
        self.delayDisplay("Test passed")

    def test_InputValidation(self):
        ctNode, labelNode = self._loadSample()
        logic = HealthiVertLogic()
        with self.assertRaises(ValueError):
            logic.process(ctNode, labelNode, None, TargetMode.LEVELS, None, "L2 Q1")  # unknown level
        emptyPoint = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        with self.assertRaises(Exception):
            logic.process(ctNode, labelNode, None, TargetMode.POINT, emptyPoint)  # no point placed
        self.assertFalse(logic.isRunning())
        self.delayDisplay("Input validation test passed")
