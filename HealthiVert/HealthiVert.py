"""HealthiVert: grade osteoporotic vertebral compression fractures on CT in 3D Slicer.

The module is thin: it writes the selected CT and vertebra label map to NIfTI, runs the
``HealthiVertLib`` command line (``python -m HealthiVertLib.cli grade``) in a background
``PythonSlicer`` process, shows its progress, and loads the results back (height-loss volume over
the CT, one table row per vertebra). All numerics live in ``HealthiVertLib``, which never imports
Slicer. Research use only, not for diagnosis.
"""

import importlib.util
import json
import logging
import math
import os
import queue
import re
import shutil
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Callable, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

CORE_PACKAGE = "HealthiVertLib"
PROGRESS_PREFIX = "HEALTHIVERT_PROGRESS"  # HealthiVertLib.cli prints "<prefix> <percent> <message>" with --progress lines
ENGINES = ["context"]  # must match the --engine choices of HealthiVertLib.cli
GRADE_NAMES = ("normal", "mild", "moderate", "severe")  # Genant 0-3
LEVEL_PATTERN = re.compile(r"^(T([1-9]|1[0-3])|L[1-6])$")  # gradable levels (HealthiVertLib.labels.GRADABLE_LEVELS)
HEAT_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")
HEIGHT_LOSS_DISPLAY_RANGE = (0.0, 0.5)  # fraction of the healthy height; Genant severe starts at 0.40
HEIGHT_LOSS_DISPLAY_THRESHOLD = 0.01  # below this the map is transparent (healthy bone, background)


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
from its neighbours), measures the Relative Height Loss of the Vertebra (RHLV) in its anterior,
middle and posterior thirds, maps the loss across the vertebral body, and gives a Genant grade
(0 normal, 1 mild, 2 moderate, 3 severe) with a confidence.<br><br>
Inputs: a vertebra label map (one label per vertebra, e.g. from the TotalSegmentator extension) and,
optionally, the CT on the same grid. Results: a height-loss volume shown over the CT and a table
with one row per vertebra; the full report (JSON, CSV, figures) is written to the output folder
named in the log.<br><br>
<b>Research use only. HealthiVert is not a medical device and must not be used for diagnosis.</b><br>
See the <a href="https://github.com/healthivert/SlicerHealthiVert">project page</a> for documentation.
""")
        self.parent.acknowledgementText = _("""
The method follows HealthiVert-GAN: Zhang Q. et al., "HealthiVert-GAN: A Novel Framework of
Pseudo-Healthy Vertebral Image Synthesis for Interpretable Compression Fracture Grading",
IEEE Journal of Biomedical and Health Informatics (JBHI), 2025,
doi:<a href="https://doi.org/10.1109/JBHI.2025.3572458">10.1109/JBHI.2025.3572458</a>,
arXiv:<a href="https://arxiv.org/abs/2503.05990">2503.05990</a>. Please cite it when you use
HealthiVert.<br><br>
Research use only, not for diagnosis.
""")
        # ScriptedLoadableModule takes the icon from Resources/Icons next to this file (built or
        # installed extension). In a source checkout it is in the repository's top-level Resources.
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        if not os.path.isfile(os.path.join(moduleDir, "Resources", "Icons", "HealthiVert.png")):
            iconPath = _resourceFilePath("Icons/HealthiVert.png")
            if iconPath:
                self.parent.icon = qt.QIcon(iconPath)


def _resourceFilePath(relativePath: str) -> Optional[str]:
    """``Resources/<relativePath>`` next to this file (built/installed extension), else in the
    repository root above it (source checkout). None when neither exists."""
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    for base in (moduleDir, os.path.dirname(moduleDir)):
        candidate = os.path.join(base, "Resources", relativePath)
        if os.path.exists(candidate):
            return candidate
    return None


#
# HealthiVertParameterNode
#


@parameterNodeWrapper
class HealthiVertParameterNode:
    """
    ctVolume - CT in Hounsfield units (optional: heights and grades need only the label map).
    labelVolume - vertebra label map, one label per vertebra, on the grid of the CT.
    targetLevel - level(s) to grade, e.g. "L1" or "T12 L1"; empty grades every thoracic and lumbar vertebra.
    engine - how the pseudo-healthy vertebra is predicted.
    heightLossVolume - result of the last run: height loss (fraction) of each body voxel's column.
    resultTable - result of the last run: one row per vertebra.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    labelVolume: vtkMRMLLabelMapVolumeNode
    targetLevel: str = ""
    engine: Annotated[str, Choice(ENGINES)] = "context"
    heightLossVolume: vtkMRMLScalarVolumeNode
    resultTable: vtkMRMLTableNode


def parseLevels(levels) -> list:
    """``"t12, l1"`` or ``["T12", "L1"]`` -> ``["T12", "L1"]`` (upper case, order kept, no duplicates)."""
    if levels is None:
        return []
    if isinstance(levels, str):
        levels = levels.replace(",", " ").replace(";", " ").split()
    result = []
    for level in levels:
        level = str(level).strip().upper()
        if level and level not in result:
            result.append(level)
    return result


def invalidLevels(levels) -> list:
    """The entries of ``levels`` that are not gradable levels (T1-T13, L1-L6)."""
    return [level for level in parseLevels(levels) if not LEVEL_PATTERN.match(level)]


def parseProgressLine(line: str):
    """``"HEALTHIVERT_PROGRESS 42 L1: measuring"`` -> ``(42.0, "L1: measuring")``; None for other lines."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        percent = float(parts[1])
    except ValueError:
        return None
    if not math.isfinite(percent):
        return None
    return min(max(percent, 0.0), 100.0), (parts[2] if len(parts) > 2 else "")


def _percent(value) -> float:
    """A report fraction as a percentage; NaN when missing (the table shows it as empty/nan)."""
    if value is None:
        return float("nan")
    try:
        return 100.0 * float(value)
    except (TypeError, ValueError):
        return float("nan")


def reportTableRows(report: dict) -> list:
    """One row per vertebra of a ``report.json`` (as written by HealthiVertLib.report)."""
    rows = []
    for vertebra in report.get("vertebrae", []):
        grade = vertebra.get("grade")
        rhlv = vertebra.get("rhlv") or {}
        rows.append(
            {
                "Level": str(vertebra.get("level", "")),
                "Grade": "" if grade is None else f"{int(grade)} ({GRADE_NAMES[int(grade)]})",
                "Confidence": _percent(vertebra.get("confidence")),
                "RHLV anterior": _percent(rhlv.get("anterior")),
                "RHLV middle": _percent(rhlv.get("middle")),
                "RHLV posterior": _percent(rhlv.get("posterior")),
                "RHLV overall": _percent(rhlv.get("overall")),
                "Status": str(vertebra.get("status") or ""),
                "Reason": str(vertebra.get("reason") or ""),
            }
        )
    return rows


# (column name, string column?, unit, description)
TABLE_COLUMNS = (
    ("Level", True, "", "Vertebra level"),
    ("Grade", True, "", "Genant grade: 0 normal, 1 mild, 2 moderate, 3 severe (empty: not graded, see Status)"),
    ("Confidence", False, "%", "Confidence of the grade"),
    ("RHLV anterior", False, "%", "Relative height loss of the anterior third (pseudo-healthy vs actual)"),
    ("RHLV middle", False, "%", "Relative height loss of the middle third"),
    ("RHLV posterior", False, "%", "Relative height loss of the posterior third"),
    ("RHLV overall", False, "%", "Relative height loss of the whole vertebral body"),
    ("Status", True, "", "graded, incomplete (cut by the field of view), no_context, unsupported or failed"),
    ("Reason", True, "", "Why a vertebra was not graded"),
)


def fillResultTable(tableNode, rows: list) -> None:
    """Replace the content of ``tableNode`` by ``rows`` (from :func:`reportTableRows`)."""
    table = tableNode.GetTable()
    wasModified = tableNode.StartModify()
    table.Initialize()
    for name, isString, unit, description in TABLE_COLUMNS:
        array = vtk.vtkStringArray() if isString else vtk.vtkDoubleArray()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            array.SetValue(index, row[name])
        table.AddColumn(array)
        tableNode.SetColumnDescription(name, description)
        if unit:
            tableNode.SetColumnUnitLabel(name, unit)
    table.Modified()
    tableNode.Modified()
    tableNode.EndModify(wasModified)


@dataclass
class HealthiVertResults:
    """What one run put in the scene, and where its files are."""

    outputDirectory: str
    report: dict
    heightLossVolume: object  # vtkMRMLScalarVolumeNode
    table: object  # vtkMRMLTableNode


class _Run:
    """One running CLI process: its output is read on a thread and handled on the GUI thread."""

    def __init__(self, proc, inputDirectory, outputDirectory, referenceNode, showResult, callbacks):
        self.proc = proc
        self.inputDirectory = inputDirectory
        self.outputDirectory = outputDirectory
        self.referenceNode = referenceNode
        self.showResult = showResult
        self.progressCallback, self.logCallback, self.completedCallback = callbacks
        self.lines = queue.Queue()
        self.tail = deque(maxlen=40)  # last output lines, for the error message
        self.cancelled = False
        self.returnCode = None
        self.reader = threading.Thread(target=self._read, name="HealthiVert output reader", daemon=True)
        self.reader.start()

    def _read(self):
        while True:
            try:
                line = self.proc.stdout.readline()
            except UnicodeDecodeError:
                continue
            except ValueError:  # stream closed
                break
            if not line:
                break
            self.lines.put(line.rstrip("\r\n"))
        self.lines.put(None)


def _killProcessTree(proc) -> None:
    """Kill ``proc`` and its children (PythonSlicer is a launcher that starts the real Python)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(proc.pid)
            for child in parent.children(recursive=True):
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            parent.kill()
        except psutil.NoSuchProcess:
            pass
    else:
        try:
            proc.kill()
        except OSError:
            pass


#
# HealthiVertWidget
#


class HealthiVertWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: inputs bound to the parameter node, Apply/Cancel, progress bar and log."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

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

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        self.removeObservers()

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
        # Pre-select inputs to save clicks
        if not self._parameterNode.labelVolume:
            labelNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode")
            if labelNode:
                self._parameterNode.labelVolume = labelNode
        if not self._parameterNode.ctVolume:
            heightLoss = self._parameterNode.heightLossVolume
            for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if node.IsA("vtkMRMLLabelMapVolumeNode") or (heightLoss and node.GetID() == heightLoss.GetID()):
                    continue
                self._parameterNode.ctVolume = node
                break

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
        if self.logic is not None and self.logic.isRunning():
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop grading")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        reason = self._cannotApplyReason()
        self.ui.applyButton.enabled = reason is None
        self.ui.applyButton.toolTip = reason if reason is not None else _("Grade the selected vertebrae.")

    def _cannotApplyReason(self) -> Optional[str]:
        """Why Apply is disabled, or None when the inputs are valid."""
        p = self._parameterNode
        if p is None:
            return _("The module is not initialized.")
        if not p.labelVolume:
            return _("Select the vertebra label map (one label per vertebra).")
        if p.labelVolume.GetImageData() is None:
            return _("The vertebra label map has no image data.")
        bad = invalidLevels(p.targetLevel)
        if bad:
            return _("Unknown vertebra level(s): {levels}. Use T1-T13 or L1-L6, separated by spaces.").format(
                levels=", ".join(bad)
            )
        if p.ctVolume:
            if p.ctVolume.GetImageData() is None:
                return _("The CT volume has no image data.")
            if not HealthiVertLogic.sameGrid(p.ctVolume, p.labelVolume):
                return _(
                    "The CT and the label map are not on the same voxel grid. Resample the label map onto the CT "
                    "(Resample Scalar/Vector/DWI Volume, nearest neighbour) or clear the CT selection."
                )
        return None

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
            self.logic.process(
                p.ctVolume,
                p.labelVolume,
                p.targetLevel,
                engine=p.engine,
                waitForCompletion=False,
                showResult=True,
                progressCallback=self._onProgress,
                logCallback=self._log,
                completedCallback=self._onCompleted,
            )
        self._checkCanApply()

    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _onProgress(self, percent: float, message: str) -> None:
        self.ui.progressBar.setValue(int(round(percent)))
        self.ui.progressBar.setFormat(f"%p% {message}" if message else "%p%")

    def _onCompleted(self, results: Optional[HealthiVertResults], error: Optional[str]) -> None:
        self._checkCanApply()
        if error:
            self.ui.progressBar.setFormat(_("Failed") if not self.logic.lastRunCancelled else _("Cancelled"))
            self._log(error)
            if not self.logic.lastRunCancelled:
                slicer.util.errorDisplay(_("HealthiVert failed. See the log for details."), detailedText=error)
            return
        self.ui.progressBar.setValue(100)
        self.ui.progressBar.setFormat(_("Done"))
        if self._parameterNode:
            self._parameterNode.heightLossVolume = results.heightLossVolume
            self._parameterNode.resultTable = results.table
        for row in reportTableRows(results.report):
            if row["Grade"]:
                message = _("{level}: Genant grade {grade}, height loss anterior {a:.0f}%, middle {m:.0f}%, posterior {p:.0f}%")
                self._log(message.format(
                    level=row["Level"], grade=row["Grade"], a=row["RHLV anterior"], m=row["RHLV middle"], p=row["RHLV posterior"]
                ))
            else:
                self._log(_("{level}: not graded ({status}) {reason}").format(
                    level=row["Level"], status=row["Status"], reason=row["Reason"]))
        self._log(_("Report files: {folder}").format(folder=results.outputDirectory))
        self._log(_("Research use only, not for diagnosis."))
        HealthiVertLogic.showTable(results.table)


#
# HealthiVertLogic
#


class HealthiVertLogic(ScriptedLoadableModuleLogic):
    """Runs the HealthiVertLib command line on scene nodes and loads its results. Works without GUI."""

    POLL_INTERVAL_MS = 200

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._run = None
        self.lastRunCancelled = False

    def getParameterNode(self):
        return HealthiVertParameterNode(super().getParameterNode())

    # --- environment ---------------------------------------------------------------------------

    @staticmethod
    def coreLibraryParentDirectory() -> str:
        """The folder that contains the ``HealthiVertLib`` package: next to this file in a built or
        installed extension, the repository root in a source checkout, else wherever Python finds it."""
        moduleDir = os.path.dirname(os.path.abspath(__file__))
        for candidate in (moduleDir, os.path.dirname(moduleDir)):
            if os.path.isfile(os.path.join(candidate, CORE_PACKAGE, "__init__.py")):
                return candidate
        spec = importlib.util.find_spec(CORE_PACKAGE)
        if spec is not None and spec.origin:
            return os.path.dirname(os.path.dirname(spec.origin))
        raise RuntimeError(
            _("The {package} package was not found next to {file}. Reinstall the HealthiVert extension.").format(
                package=CORE_PACKAGE, file=__file__
            )
        )

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (PythonSlicer); plain Python when this runs outside the Slicer application."""
        executable = shutil.which("PythonSlicer")
        if executable:
            return executable
        if "python" in os.path.basename(sys.executable).lower():
            return sys.executable
        raise RuntimeError(_("PythonSlicer was not found; it is needed to run HealthiVert in the background."))

    @staticmethod
    def figuresAvailable() -> bool:
        """The report figures need matplotlib, which Slicer does not bundle; without it they are skipped."""
        return importlib.util.find_spec("matplotlib") is not None

    @staticmethod
    def gradeCommand(segPath, outDir, ctPath=None, levels=None, engine="context", labelScheme=None,
                     caseName=None, figures=True) -> list:
        """The ``HealthiVertLib.cli grade`` command line (without the Python executable)."""
        levels = parseLevels(levels)
        args = ["-m", f"{CORE_PACKAGE}.cli", "grade", "--seg", segPath]
        if ctPath:
            args += ["--ct", ctPath]
        args += ["--vertebra", *levels] if levels else ["--all"]
        args += ["--out", outDir, "--engine", engine, "--progress", "lines"]
        if labelScheme:
            args += ["--labels", labelScheme]
        if caseName:
            args += ["--name", caseName]
        if not figures:
            args.append("--no-figures")
        return args

    # --- geometry ---------------------------------------------------------------------------------

    @staticmethod
    def sameGrid(volumeA, volumeB, tolerance: float = 1e-3) -> bool:
        """True when both volumes have the same dimensions and IJK-to-RAS matrix (within ``tolerance`` mm)."""
        imageA, imageB = volumeA.GetImageData(), volumeB.GetImageData()
        if imageA is None or imageB is None or imageA.GetDimensions() != imageB.GetDimensions():
            return False
        matrixA, matrixB = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volumeA.GetIJKToRASMatrix(matrixA)
        volumeB.GetIJKToRASMatrix(matrixB)
        if any(abs(matrixA.GetElement(r, c) - matrixB.GetElement(r, c)) > tolerance for r in range(3) for c in range(4)):
            return False
        return volumeA.GetTransformNodeID() == volumeB.GetTransformNodeID()

    @staticmethod
    def exportVolume(volumeNode, path: str) -> str:
        """Write ``volumeNode`` (its own coordinates, parent transform not applied) to ``path``
        without changing the node's storage settings."""
        if not slicer.util.exportNode(volumeNode, path, {}):
            raise RuntimeError(_("Could not write {name} to {path}.").format(name=volumeNode.GetName(), path=path))
        return path

    # --- running ----------------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self._run is not None

    def process(
        self,
        ctNode,
        labelNode,
        levels=None,
        outDir: Optional[str] = None,
        engine: str = "context",
        labelScheme: Optional[str] = None,
        waitForCompletion: bool = True,
        showResult: bool = True,
        progressCallback: Optional[Callable[[float, str], None]] = None,
        logCallback: Optional[Callable[[str], None]] = None,
        completedCallback: Optional[Callable[[Optional[HealthiVertResults], Optional[str]], None]] = None,
    ) -> Optional[HealthiVertResults]:
        """Grade vertebrae of ``labelNode`` (and optional ``ctNode`` on the same grid).

        :param levels: level(s) to grade ("L1", "T12 L1" or a list); None/empty grades all.
        :param outDir: output folder for report.json, report.csv, volumes and figures; default: a new
            temporary folder.
        :param labelScheme: label numbering passed to the CLI ("verse", "totalseg", a dataset.json
            path); None detects it.
        :param waitForCompletion: block (keeping the GUI responsive) and return the results; raise
            RuntimeError on failure. Otherwise return None at once and call
            ``completedCallback(results, errorMessage)`` when done.
        :param showResult: show the height-loss map over the CT in the slice views.
        """
        if self.isRunning():
            raise RuntimeError(_("HealthiVert is already running."))
        if labelNode is None or labelNode.GetImageData() is None:
            raise ValueError(_("A vertebra label map with image data is required."))
        bad = invalidLevels(levels)
        if bad:
            raise ValueError(_("Unknown vertebra level(s): {levels}.").format(levels=", ".join(bad)))
        if engine not in ENGINES:
            raise ValueError(_("Unknown engine '{engine}'.").format(engine=engine))
        if ctNode is not None and not self.sameGrid(ctNode, labelNode):
            raise ValueError(_("The CT and the vertebra label map must be on the same voxel grid."))

        workDir = slicer.util.tempDirectory(key="HealthiVert")
        inputDir = os.path.join(workDir, "input")
        os.makedirs(inputDir, exist_ok=True)
        outDir = os.path.abspath(outDir) if outDir else os.path.join(workDir, "output")

        referenceNode = ctNode if ctNode is not None else labelNode
        figures = self.figuresAvailable()
        try:
            segPath = self.exportVolume(labelNode, os.path.join(inputDir, "vertebrae.nii.gz"))
            ctPath = self.exportVolume(ctNode, os.path.join(inputDir, "ct.nii.gz")) if ctNode is not None else None
            command = [self.pythonExecutable()] + self.gradeCommand(
                segPath, outDir, ctPath, levels, engine, labelScheme, referenceNode.GetName(), figures
            )
            coreDir = self.coreLibraryParentDirectory()
            startupPythonPath = slicer.util.startupEnvironment().get("PYTHONPATH")
            environment = {
                "PYTHONPATH": os.pathsep.join([coreDir] + ([startupPythonPath] if startupPythonPath else [])),
                "PYTHONUNBUFFERED": "1",  # progress lines arrive as they are printed
                "PYTHONIOENCODING": "utf-8",
                "MPLBACKEND": "Agg",
            }
            logging.info("HealthiVert: %s", " ".join(command))
            # cwd = the folder holding HealthiVertLib, so "python -m HealthiVertLib.cli" finds it
            # even if the launcher rewrites PYTHONPATH.
            proc = slicer.util.launchConsoleProcess(command, updateEnvironment=environment, cwd=coreDir)
        except Exception:
            shutil.rmtree(inputDir, ignore_errors=True)
            raise

        run = _Run(proc, inputDir, outDir, referenceNode, showResult, (progressCallback, logCallback, completedCallback))
        self._run = run
        self.lastRunCancelled = False
        if logCallback:
            logCallback(_("Grading {name} ({levels}) with the '{engine}' engine...").format(
                name=referenceNode.GetName(), levels=" ".join(parseLevels(levels)) or _("all levels"), engine=engine))
            if not figures:
                logCallback(_("matplotlib is not installed: the report figures are skipped."))

        if not waitForCompletion:
            qt.QTimer.singleShot(self.POLL_INTERVAL_MS, self._poll)
            return None
        while not self._drain(run, timeout=0.1):
            slicer.app.processEvents()
        results, error = self._finish(run)
        if error:
            raise RuntimeError(error)
        return results

    def cancel(self) -> None:
        """Stop the running process (and its children). The completion callback reports the cancellation."""
        run = self._run
        if run is None:
            return
        run.cancelled = True
        _killProcessTree(run.proc)

    def _poll(self) -> None:
        run = self._run
        if run is None:
            return
        if self._drain(run):
            self._finish(run)
        else:
            qt.QTimer.singleShot(self.POLL_INTERVAL_MS, self._poll)

    def _drain(self, run: _Run, timeout: Optional[float] = None) -> bool:
        """Handle the queued output lines; True once the process has ended and all output is handled."""
        while True:
            try:
                line = run.lines.get(timeout=timeout) if timeout else run.lines.get_nowait()
            except queue.Empty:
                return False
            timeout = None
            if line is None:
                run.returnCode = run.proc.wait()
                return True
            progress = parseProgressLine(line)
            if progress is not None:
                percent, message = progress
                if run.progressCallback:
                    run.progressCallback(percent, message)
                if message and run.logCallback:
                    run.logCallback(f"[{percent:3.0f}%] {message}")
                continue
            run.tail.append(line)
            logging.debug("HealthiVert: %s", line)
            if run.logCallback:
                run.logCallback(line)

    def _finish(self, run: _Run):
        """Load the results of a finished run; returns ``(results, errorMessage)`` and calls the
        completion callback."""
        self._run = None
        self.lastRunCancelled = run.cancelled
        shutil.rmtree(run.inputDirectory, ignore_errors=True)
        results, error = None, None
        if run.cancelled:
            error = _("Cancelled.")
        elif run.returnCode != 0:
            error = _("HealthiVert stopped with exit code {code}:").format(code=run.returnCode) + "\n" + "\n".join(run.tail)
        else:
            try:
                results = self.loadResults(run.outputDirectory, run.referenceNode, run.showResult)
            except Exception as e:
                logging.exception("HealthiVert: loading the results failed")
                error = _("Could not load the results from {folder}: {error}").format(folder=run.outputDirectory, error=e)
        if run.completedCallback:
            run.completedCallback(results, error)
        return results, error

    # --- results ----------------------------------------------------------------------------------

    def loadResults(self, outDir: str, referenceNode=None, showResult: bool = True) -> HealthiVertResults:
        """Load ``height_loss.nii.gz`` as a volume and ``report.json`` as a table node."""
        with open(os.path.join(outDir, "report.json"), encoding="utf-8") as f:
            report = json.load(f)
        baseName = referenceNode.GetName() if referenceNode is not None else "HealthiVert"
        lossNode = slicer.util.loadVolume(
            os.path.join(outDir, "height_loss.nii.gz"),
            {"name": slicer.mrmlScene.GenerateUniqueName(f"{baseName} height loss"), "show": False},
        )
        self.setHeightLossDisplay(lossNode)
        tableNode = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(f"{baseName} HealthiVert grades")
        )
        fillResultTable(tableNode, reportTableRows(report))
        if referenceNode is not None:
            # Same parent transform and subject-hierarchy folder (study) as the input
            lossNode.SetAndObserveTransformNodeID(referenceNode.GetTransformNodeID())
            shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
            referenceItem = shNode.GetItemByDataNode(referenceNode) if shNode else 0
            if referenceItem:
                parentItem = shNode.GetItemParent(referenceItem)
                for node in (lossNode, tableNode):
                    item = shNode.GetItemByDataNode(node)
                    if item:
                        shNode.SetItemParent(item, parentItem)
        if showResult and referenceNode is not None:
            slicer.util.setSliceViewerLayers(
                background=referenceNode,
                foreground=lossNode,
                foregroundOpacity=0.5,
                fit=slicer.app.layoutManager() is not None,
            )
        return HealthiVertResults(outputDirectory=outDir, report=report, heightLossVolume=lossNode, table=tableNode)

    @staticmethod
    def setHeightLossDisplay(lossNode) -> None:
        """Heat colours over a fixed 0-50 % range; no-loss voxels transparent."""
        displayNode = lossNode.GetDisplayNode()
        if displayNode is None:
            lossNode.CreateDefaultDisplayNodes()
            displayNode = lossNode.GetDisplayNode()
        for colorNodeID in HEAT_COLOR_NODE_IDS:
            if slicer.mrmlScene.GetNodeByID(colorNodeID) is not None:
                displayNode.SetAndObserveColorNodeID(colorNodeID)
                break
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(*HEIGHT_LOSS_DISPLAY_RANGE)
        displayNode.AutoThresholdOff()
        displayNode.SetLowerThreshold(HEIGHT_LOSS_DISPLAY_THRESHOLD)
        displayNode.SetUpperThreshold(1.0)
        displayNode.ApplyThresholdOn()

    @staticmethod
    def showTable(tableNode) -> None:
        """Show ``tableNode`` in a layout with a table view (GUI only)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        applicationLogic = slicer.app.applicationLogic()
        applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
        applicationLogic.PropagateTableSelection()


#
# HealthiVertTest
#


class HealthiVertTest(ScriptedLoadableModuleTest):
    """Runs the whole module logic (export, background CLI, result loading) on a synthetic spine."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SyntheticWedgeFracture()
        self.setUp()
        self.test_InputValidation()

    @staticmethod
    def _syntheticSpine(wedgeLevel="L2", anteriorLoss=0.4):
        """Five elliptic vertebral bodies T12-L4 (VerSe labels 19-23), 26 mm tall with 8 mm discs,
        1 mm voxels, identity IJK-to-RAS (array axes: superior, anterior, right). ``wedgeLevel`` loses
        ``anteriorLoss`` of its height at the anterior wall, nothing at the posterior wall."""
        import numpy as np

        shape = (190, 64, 64)  # k (S), j (A), i (R)
        levels = ["L4", "L3", "L2", "L1", "T12"]  # caudal to cranial = increasing k
        verse = {"T12": 19, "L1": 20, "L2": 21, "L3": 22, "L4": 23}
        height, disc, bottom = 26, 8, 12
        k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
        footprint = ((i - 32) / 18.0) ** 2 + ((j - 32) / 15.0) ** 2 <= 1.0  # 36 mm LR, 30 mm AP
        posteriorWall, anteriorWall = 17, 47
        labels = np.zeros(shape, dtype=np.uint8)
        ct = np.full(shape, 40, dtype=np.int16)  # soft tissue
        for index, level in enumerate(levels):
            k0 = bottom + index * (height + disc)
            if level == wedgeLevel:
                fraction = np.clip((j - posteriorWall) / float(anteriorWall - posteriorWall), 0.0, 1.0)
                top = k0 + height * (1.0 - anteriorLoss * fraction)
            else:
                top = k0 + height
            body = footprint & (k >= k0) & (k < top)
            labels[body] = verse[level]
            ct[body] = 250
            if index < len(levels) - 1:
                ct[footprint & (k >= k0 + height) & (k < k0 + height + disc)] = 90  # disc
        return ct, labels

    def test_SyntheticWedgeFracture(self):
        import numpy as np

        self.delayDisplay("Building a synthetic spine with a wedge fracture of L2")
        ctArray, labelArray = self._syntheticSpine("L2", anteriorLoss=0.4)
        ctNode = slicer.util.addVolumeFromArray(ctArray, name="SyntheticSpineCT")
        labelNode = slicer.util.addVolumeFromArray(
            labelArray, name="SyntheticSpineVertebrae", nodeClassName="vtkMRMLLabelMapVolumeNode"
        )

        logic = HealthiVertLogic()
        progress, log = [], []
        outDir = slicer.util.tempDirectory(key="HealthiVertTest")
        self.delayDisplay("Grading L2 in the background")
        results = logic.process(
            ctNode, labelNode, "L2", outDir=outDir, labelScheme="verse", waitForCompletion=True,
            showResult=False, progressCallback=lambda p, m: progress.append(p), logCallback=log.append,
        )

        self.assertFalse(logic.isRunning())
        self.assertTrue(progress, "no progress lines were parsed")
        self.assertEqual(progress[-1], 100.0)
        self.assertTrue(os.path.isfile(os.path.join(outDir, "report.json")))

        vertebrae = {v["level"]: v for v in results.report["vertebrae"]}
        self.assertIn("L2", vertebrae)
        l2 = vertebrae["L2"]
        self.assertEqual(l2["status"], "graded", l2.get("reason"))
        rhlv = l2["rhlv"]
        self.assertGreater(rhlv["anterior"], 0.2)
        self.assertLess(rhlv["anterior"], 0.6)
        self.assertGreater(rhlv["anterior"], rhlv["posterior"] + 0.1)
        self.assertGreaterEqual(l2["grade"], 1)

        # Height-loss volume on the input grid, with the wedge's loss in it
        lossNode = results.heightLossVolume
        self.assertTrue(HealthiVertLogic.sameGrid(lossNode, labelNode))
        lossArray = slicer.util.arrayFromVolume(lossNode)
        self.assertGreater(float(np.nanmax(lossArray[labelArray == 21])), 0.2)
        self.assertIn(lossNode.GetDisplayNode().GetColorNodeID(), HEAT_COLOR_NODE_IDS)

        # Table: one row per reported vertebra
        table = results.table
        self.assertEqual(table.GetNumberOfRows(), len(results.report["vertebrae"]))
        levelColumn = table.GetTable().GetColumnByName("Level")
        levelsInTable = [levelColumn.GetValue(r) for r in range(table.GetNumberOfRows())]
        self.assertIn("L2", levelsInTable)
        row = levelsInTable.index("L2")
        anterior = table.GetTable().GetColumnByName("RHLV anterior").GetValue(row)
        self.assertAlmostEqual(anterior, 100.0 * rhlv["anterior"], places=6)
        self.delayDisplay("Test passed")

    def test_InputValidation(self):
        self.assertEqual(parseLevels(" t12, l1 L1"), ["T12", "L1"])
        self.assertEqual(invalidLevels("L1 X9 C3"), ["X9", "C3"])
        self.assertEqual(parseProgressLine("HEALTHIVERT_PROGRESS 42 L1: measuring"), (42.0, "L1: measuring"))
        self.assertIsNone(parseProgressLine("healthivert: error: something"))
        ctArray, labelArray = self._syntheticSpine()
        labelNode = slicer.util.addVolumeFromArray(labelArray, nodeClassName="vtkMRMLLabelMapVolumeNode")
        smallCt = slicer.util.addVolumeFromArray(ctArray[:100])
        logic = HealthiVertLogic()
        with self.assertRaises(ValueError):
            logic.process(smallCt, labelNode, "L2")  # not on the same grid
        with self.assertRaises(ValueError):
            logic.process(None, labelNode, "L2 Q1")  # unknown level
        self.assertFalse(logic.isRunning())
        self.delayDisplay("Input validation test passed")
