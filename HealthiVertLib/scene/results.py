"""The results of a grading run as scene nodes, and their removal.

:func:`show_results` loads a run's outputs (``report.json`` and the volumes of
``HealthiVertLib.outputs``) as volumes, segmentations, a grade table, Genant markups and the AP
profile plot; :class:`StandaloneScene` is a MRML scene with the application's logics for scripts
and tests with ``slicer-core``.

Every node made here carries the attribute ``HealthiVert.Output`` (its role) and
``HealthiVert.Reference`` (the ID of the input volume it belongs to). :func:`remove_outputs`
removes exactly those, so re-running replaces the module's own results and never a user's node.
Result nodes get the parent transform of the input, so everything lines up in the views.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import SimpleITK as sitk
import vtk

import slicer

from ..errors import HealthiVertError
from ..measure.heights import GENANT_POINTS, REGIONS
from .segmentations import segmentation_from_labels, segments_by_level, set_segment_color
from .slice_views import add_slice_views
from .volumes import OVERLAY_OPACITY, PSEUDO_HEALTHY_CT_FILE, image_to_volume, read_image_file, set_height_loss_display, show_overlay


OUTPUT_ATTRIBUTE = "HealthiVert.Output"
REFERENCE_ATTRIBUTE = "HealthiVert.Reference"
GRADE_NAMES = ("normal", "mild", "moderate", "severe")  # Genant 0-3
GRADE_COLORS = ((0.20, 0.70, 0.30), (0.95, 0.85, 0.20), (0.95, 0.55, 0.10), (0.85, 0.10, 0.10))
NOT_GRADED_COLOR = (0.60, 0.60, 0.60)
PSEUDO_HEALTHY_COLOR = (0.35, 0.70, 0.95)
HEIGHT_LINES = (("anterior", "anterior_superior", "anterior_inferior"),
                ("middle", "middle_superior", "middle_inferior"),
                ("posterior", "posterior_superior", "posterior_inferior"))  # fmt: skip


# --- results in the scene --------------------------------------------------------------------------


@dataclass
class ResultNodes:
    """The nodes one run put into the scene."""

    report: dict[str, Any]
    height_loss: Any = None  # vtkMRMLScalarVolumeNode
    pseudo_healthy_ct: Any = None  # vtkMRMLScalarVolumeNode, when the engine synthesises a CT
    original_body: Any = None  # vtkMRMLSegmentationNode
    pseudo_healthy_body: Any = None  # vtkMRMLSegmentationNode
    table: Any = None  # vtkMRMLTableNode
    points: dict[str, Any] = field(default_factory=dict)  # level -> vtkMRMLMarkupsFiducialNode
    heights: dict[str, list[Any]] = field(default_factory=dict)  # level -> 3 vtkMRMLMarkupsLineNode
    profile_table: Any = None
    plot_chart: Any = None
    plot_series: list[Any] = field(default_factory=list)
    folder_item: int = 0  # subject hierarchy folder of the markups and plots


def output_nodes(scene, reference_node=None) -> list:
    """Nodes made by HealthiVert (for ``reference_node`` only, when given)."""
    found = []
    nodes = scene.GetNodes()
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if node is None or node.GetAttribute(OUTPUT_ATTRIBUTE) is None:
            continue
        if reference_node is None or node.GetAttribute(REFERENCE_ATTRIBUTE) == reference_node.GetID():
            found.append(node)
    return found


def remove_outputs(scene, reference_node=None) -> int:
    """Remove HealthiVert's result nodes (of ``reference_node``'s runs, when given), with their display
    and storage nodes and its subject hierarchy folder. Returns the number of tagged nodes removed."""
    nodes = output_nodes(scene, reference_node)
    for node in nodes:
        if node.GetScene() is None:
            continue
        extra = []
        if node.IsA("vtkMRMLDisplayableNode"):
            extra += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            extra += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        scene.RemoveNode(node)
        for other in extra:
            if other is not None and other.GetScene() is not None:
                scene.RemoveNode(other)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for item in output_folders(scene, reference_node):
        shNode.RemoveItem(item, False, False)
    return len(nodes)


def output_folders(scene, reference_node=None) -> list[int]:
    """Subject hierarchy folders made by HealthiVert (for ``reference_node`` only, when given)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    children = vtk.vtkIdList()
    shNode.GetItemChildren(shNode.GetSceneItemID(), children, True)
    found = []
    for index in range(children.GetNumberOfIds()):
        item = children.GetId(index)
        if shNode.GetItemAttribute(item, OUTPUT_ATTRIBUTE) != "folder":
            continue
        if reference_node is None or shNode.GetItemAttribute(item, REFERENCE_ATTRIBUTE) == reference_node.GetID():
            found.append(item)
    return found


def _tag(node, role: str, reference_node) -> None:
    node.SetAttribute(OUTPUT_ATTRIBUTE, role)
    if reference_node is not None:
        node.SetAttribute(REFERENCE_ATTRIBUTE, reference_node.GetID())


class _Placer:
    """Puts result nodes beside the input: same parent transform, same subject hierarchy parent (the
    study of a DICOM series), markups and plots in a folder below it."""

    def __init__(self, scene, reference_node, case: str):
        self.scene = scene
        self.reference = reference_node
        self.shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        self.transform_id = reference_node.GetTransformNodeID() if reference_node is not None else None
        self.parent = self.shNode.GetSceneItemID()
        if reference_node is not None:
            item = self.shNode.GetItemByDataNode(reference_node)
            if item:
                self.parent = self.shNode.GetItemParent(item)
        self._folder = 0
        self.case = case

    def folder(self) -> int:
        if not self._folder:
            self._folder = self.shNode.CreateFolderItem(self.parent, f"HealthiVert {self.case}")
            self.shNode.SetItemAttribute(self._folder, OUTPUT_ATTRIBUTE, "folder")
            if self.reference is not None:
                self.shNode.SetItemAttribute(self._folder, REFERENCE_ATTRIBUTE, self.reference.GetID())
        return self._folder

    def place(self, node, role: str, in_folder: bool = False) -> None:
        _tag(node, role, self.reference)
        if self.transform_id and node.IsA("vtkMRMLTransformableNode"):
            node.SetAndObserveTransformNodeID(self.transform_id)
        parent = self.folder() if in_folder else self.parent
        item = self.shNode.GetItemByDataNode(node)
        if not item:
            item = self.shNode.CreateItem(parent, node)
        else:
            self.shNode.SetItemParent(item, parent)


def _finite(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


# (column, kind "str" | "float" | "int", unit, description)
TABLE_COLUMNS = (
    ("Level", "str", "", "Vertebra level"),
    ("Status", "str", "", "graded, incomplete (cut by the field of view), no_context or unsupported"),
    ("Grade", "int", "", "Genant grade 0 normal, 1 mild, 2 moderate, 3 severe (-1: not graded, see Status)"),
    ("Grade name", "str", "", "Genant grade in words"),
    ("Confidence", "float", "%", "Calibrated probability of the grade"),
    ("RHLV anterior", "float", "%", "Relative height loss of the anterior third (pseudo-healthy vs actual)"),
    ("RHLV middle", "float", "%", "Relative height loss of the middle third"),
    ("RHLV posterior", "float", "%", "Relative height loss of the posterior third"),
    ("RHLV overall", "float", "%", "Relative height loss of the whole vertebral body"),
    ("Loss anterior point", "float", "%", "Height loss at 15 % of the depth (what a radiologist compares)"),
    ("Loss middle point", "float", "%", "Height loss at 50 % of the depth"),
    ("Loss posterior point", "float", "%", "Height loss at 85 % of the depth"),
    ("Abnormality score", "float", "", "0-100: surplus volume of the pseudo-healthy body over the actual one"),
    ("Height anterior", "float", "mm", "Measured anterior height"),
    ("Height middle", "float", "mm", "Measured middle height"),
    ("Height posterior", "float", "mm", "Measured posterior height"),
    ("Healthy height anterior", "float", "mm", "Pseudo-healthy (expected) anterior height"),
    ("Healthy height middle", "float", "mm", "Pseudo-healthy (expected) middle height"),
    ("Healthy height posterior", "float", "mm", "Pseudo-healthy (expected) posterior height"),
    ("Genant rule grade", "int", "", "Grade by the transparent threshold rule on the largest point loss (<20 % 0, 20-25 % 1, 25-40 % 2, >=40 % 3)"),
    ("Reason", "str", "", "Why a vertebra was not graded, or what its grade rests on when the engine had to fall back"),
)


def table_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per vertebra of ``report.json``: percentages for fractions, NaN / -1 when missing."""
    rows = []
    for v in report.get("vertebrae", []):
        rhlv = v.get("rhlv") or {}
        heights = v.get("heights_mm") or {}
        original, healthy = heights.get("original") or {}, heights.get("pseudo_healthy") or {}
        grade = v.get("grade")
        rule = v.get("grade_rule")
        row = {
            "Level": str(v.get("level", "")),
            "Status": str(v.get("status") or ""),
            "Grade": -1 if grade is None else int(grade),
            "Grade name": "" if grade is None else GRADE_NAMES[int(grade)],
            "Confidence": 100.0 * _finite(v.get("confidence")),
            "Abnormality score": _finite(v.get("abnormality_score")),
            "Genant rule grade": -1 if rule is None else int(rule),
            "Reason": "; ".join(str(x) for x in [v.get("reason"), *(v.get("warnings") or [])] if x),
        }
        for region in REGIONS:
            row[f"RHLV {region}"] = 100.0 * _finite(rhlv.get(region))
        for point in ("anterior", "middle", "posterior"):
            row[f"Loss {point} point"] = 100.0 * _finite((v.get("point_loss") or {}).get(point))
        for region in REGIONS[:3]:
            row[f"Height {region}"] = _finite(original.get(region))
            row[f"Healthy height {region}"] = _finite(healthy.get(region))
        rows.append(row)
    return rows


def fill_table(table_node, rows: list[dict[str, Any]], include_abnormality: bool = True) -> None:
    """Replace the content of ``table_node`` by ``rows`` (from :func:`table_rows`)."""
    table = table_node.GetTable()
    was_modified = table_node.StartModify()
    table.Initialize()
    for name, kind, unit, description in TABLE_COLUMNS:
        if name == "Abnormality score" and not include_abnormality:
            continue
        array = {"str": vtk.vtkStringArray, "float": vtk.vtkDoubleArray, "int": vtk.vtkIntArray}[kind]()
        array.SetName(name)
        array.SetNumberOfValues(len(rows))
        for index, row in enumerate(rows):
            array.SetValue(index, row[name])
        table.AddColumn(array)
        table_node.SetColumnDescription(name, description)
        if unit:
            table_node.SetColumnUnitLabel(name, unit)
    table.Modified()
    table_node.Modified()
    table_node.EndModify(was_modified)


def _lps_to_ras(point: Iterable[float]) -> list[float]:
    x, y, z = (float(v) for v in point)
    return [-x, -y, z]


def _markups(scene, placer: _Placer, v: Mapping[str, Any], color) -> tuple[Any, list[Any]]:
    points = v.get("genant_points_lps") or {}
    if not all(name in points and points[name] is not None for name in GENANT_POINTS):
        return None, []
    level = v["level"]
    fiducials = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(f"{level} Genant points"))
    for name in GENANT_POINTS:
        index = fiducials.AddControlPoint(vtk.vtkVector3d(*_lps_to_ras(points[name])), f"{level} {name.replace('_', ' ')}")
        fiducials.SetNthControlPointLocked(index, True)
    fiducials.CreateDefaultDisplayNodes()
    fiducials.GetDisplayNode().SetSelectedColor(*color)
    placer.place(fiducials, "genant_points", in_folder=True)
    lines = []
    for region, top, bottom in HEIGHT_LINES:
        line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", scene.GenerateUniqueName(f"{level} {region} height"))
        line.AddControlPoint(vtk.vtkVector3d(*_lps_to_ras(points[top])), f"{level} {region} superior")
        line.AddControlPoint(vtk.vtkVector3d(*_lps_to_ras(points[bottom])), f"{level} {region} inferior")
        line.SetLocked(True)
        line.CreateDefaultDisplayNodes()
        line.GetDisplayNode().SetSelectedColor(*color)
        placer.place(line, "height_line", in_folder=True)
        lines.append(line)
    return fiducials, lines


def _profile_plot(scene, placer: _Placer, vertebrae: list[Mapping[str, Any]], case: str):
    """AP loss profiles: one table (x, y column per vertebra), one plot series per vertebra, one chart."""
    profiles = [(v["level"], v["ap_profile"]) for v in vertebrae if v.get("ap_profile") and v["ap_profile"].get("position_mm")]
    if not profiles:
        return None, None, []
    length = max(len(p["position_mm"]) for _, p in profiles)
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{case} AP height-loss profiles"))
    table = table_node.GetTable()
    for level, profile in profiles:
        for suffix, values, scale in ((" position", profile["position_mm"], 1.0), (" loss", profile["loss"], 100.0)):
            array = vtk.vtkDoubleArray()
            array.SetName(level + suffix)
            array.SetNumberOfValues(length)
            for index in range(length):
                array.SetValue(index, scale * _finite(values[index]) if index < len(values) else math.nan)
            table.AddColumn(array)
        table_node.SetColumnUnitLabel(level + " position", "mm")
        table_node.SetColumnUnitLabel(level + " loss", "%")
    placer.place(table_node, "profile_table", in_folder=True)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{case} AP height-loss profile"))
    chart.SetTitle("Height loss from the anterior to the posterior edge")
    chart.SetXAxisTitle("distance from the anterior edge (mm)")
    chart.SetYAxisTitle("height loss (%)")
    series_nodes = []
    for index, (level, _profile) in enumerate(profiles):
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{level} AP profile"))
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(level + " position")
        series.SetYColumnName(level + " loss")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        series.SetUniqueColor()
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        placer.place(series, "profile_series", in_folder=True)
        series_nodes.append(series)
    placer.place(chart, "profile_chart", in_folder=True)
    return table_node, chart, series_nodes


def _pseudo_healthy_ct_file(out_dir: Path) -> Path | None:
    """The pseudo-healthy CT of an engine that synthesises one (``generator``), else None."""
    path = out_dir / PSEUDO_HEALTHY_CT_FILE
    return path if path.is_file() else None


def show_results(
    scene,
    out_dir: str | Path,
    reference_node=None,
    show: bool = True,
    surfaces: bool = True,
    opacity: float = OVERLAY_OPACITY,
) -> ResultNodes:
    """Load a run's outputs (``report.json`` and the volumes of ``HealthiVertLib.outputs``) into ``scene``.

    Replaces the earlier HealthiVert outputs of ``reference_node`` (the input CT, or the label map
    for a mask-only run), never other nodes. ``show``: height loss over the reference in the slice
    views. ``surfaces``: closed-surface representations for the 3D view.
    """
    out_dir = Path(out_dir)
    try:
        report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HealthiVertError(f"No readable report.json in {out_dir}: {err}") from err
    remove_outputs(scene, reference_node)
    case = reference_node.GetName() if reference_node is not None else str(report.get("case") or "HealthiVert")
    placer = _Placer(scene, reference_node, case)
    result = ResultNodes(report=report)
    vertebrae = list(report.get("vertebrae", []))
    level_of = {int(v["label"]): str(v["level"]) for v in vertebrae if v.get("label") is not None}
    by_level = {str(v["level"]): v for v in vertebrae}

    loss_path = out_dir / "height_loss.nii.gz"
    if loss_path.is_file():
        result.height_loss = image_to_volume(read_image_file(loss_path), scene, f"{case} height loss")
        set_height_loss_display(result.height_loss, scene)
        placer.place(result.height_loss, "height_loss")

    ct_path = _pseudo_healthy_ct_file(out_dir)
    if ct_path is not None:
        result.pseudo_healthy_ct = image_to_volume(read_image_file(ct_path), scene, f"{case} pseudo-healthy CT")
        result.pseudo_healthy_ct.CreateDefaultDisplayNodes()
        reference_display = reference_node.GetDisplayNode() if reference_node is not None else None
        display = result.pseudo_healthy_ct.GetDisplayNode()
        if reference_display is not None and reference_display.IsA("vtkMRMLScalarVolumeDisplayNode"):
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(reference_display.GetWindow(), reference_display.GetLevel())
            if reference_display.GetColorNodeID():
                display.SetAndObserveColorNodeID(reference_display.GetColorNodeID())
        placer.place(result.pseudo_healthy_ct, "pseudo_healthy_ct")

    for attribute, filename, title in (
        ("original_body", "original_body_label.nii.gz", "vertebral bodies"),
        ("pseudo_healthy_body", "pseudo_healthy_body_label.nii.gz", "pseudo-healthy bodies"),
    ):
        path = out_dir / filename
        if not path.is_file():
            continue
        image = read_image_file(path)
        if not np.any(sitk.GetArrayViewFromImage(image)):
            continue
        segmentation = segmentation_from_labels(scene, image, f"{case} {title}", reference_node, level_of)
        segmentation.CreateDefaultDisplayNodes()
        display = segmentation.GetDisplayNode()
        for level, segment in segments_by_level(segmentation).items():
            grade = by_level.get(level, {}).get("grade")
            if attribute == "original_body":
                set_segment_color(segment, NOT_GRADED_COLOR if grade is None else GRADE_COLORS[int(grade)])
            else:
                set_segment_color(segment, PSEUDO_HEALTHY_COLOR)
        if attribute == "pseudo_healthy_body":
            display.SetVisibility2DFill(False)  # outline of the expected shape over the actual body
            display.SetOpacity3D(0.4)
        else:
            display.SetOpacity2DFill(0.3)
        if surfaces:
            segmentation.CreateClosedSurfaceRepresentation()
        placer.place(segmentation, attribute)
        setattr(result, attribute, segmentation)

    result.table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{case} HealthiVert grades"))
    fill_table(result.table, table_rows(report), any(v.get("abnormality_score") is not None for v in vertebrae))
    placer.place(result.table, "table")

    for v in vertebrae:
        grade = v.get("grade")
        color = NOT_GRADED_COLOR if grade is None else GRADE_COLORS[int(grade)]
        fiducials, lines = _markups(scene, placer, v, color)
        if fiducials is not None:
            result.points[str(v["level"])] = fiducials
            result.heights[str(v["level"])] = lines

    result.profile_table, result.plot_chart, result.plot_series = _profile_plot(scene, placer, vertebrae, case)
    result.folder_item = placer._folder
    if show and result.height_loss is not None:
        labels_only = reference_node is None or reference_node.IsA("vtkMRMLLabelMapVolumeNode")
        show_overlay(scene, None if labels_only else reference_node, result.height_loss, opacity)
    return result


def grades_summary(report: Mapping[str, Any]) -> list[str]:
    """One line per vertebra for the module's log, e.g. "L1: Genant grade 2 (moderate) ..."."""
    lines = []
    for row in table_rows(report):
        if row["Grade"] >= 0:
            lines.append(
                f"{row['Level']}: Genant grade {row['Grade']} ({row['Grade name']}), confidence {row['Confidence']:.0f}%; "
                f"height loss anterior {row['RHLV anterior']:.0f}%, middle {row['RHLV middle']:.0f}%, "
                f"posterior {row['RHLV posterior']:.0f}%"
            )
        else:
            lines.append(f"{row['Level']}: not graded ({row['Status']}) {row['Reason']}".rstrip())
    return lines


class StandaloneScene:
    """A MRML scene with the logics the Slicer application attaches to it (colours, volumes,
    segmentations, markups, subject hierarchy, tables, plots, three slice views: Red axial, Yellow
    sagittal, Green coronal), for use without the application: scripts and tests with the PyPI
    package slicer-core. In Slicer, use ``slicer.mrmlScene``."""

    LOGICS = (
        ("Volumes", "vtkSlicerVolumesLogic"),
        ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
        ("Markups", "vtkSlicerMarkupsLogic"),
        ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
        ("Tables", "vtkSlicerTablesLogic"),
        ("Plots", "vtkSlicerPlotsLogic"),
    )

    def __init__(self, slice_views: Iterable[str] = ("Red", "Yellow", "Green")):
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(self.app)
        colors.SetMRMLScene(self.scene)
        colors.AddDefaultColorNodes()
        self.logics = [colors]  # kept alive with the scene
        for name, cls in self.LOGICS:
            logic = getattr(slicer, cls)()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            self.app.SetModuleLogic(name, logic)
            self.logics.append(logic)
        self.logics += add_slice_views(self.scene, self.app, slice_views)
        self.sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    def read_volume(self, path: str | Path, labelmap: bool = False, name: str | None = None):
        """Load a file with Slicer's own reader (``vtkMRMLVolumeArchetypeStorageNode``), as File > Add Data does."""
        cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = self.scene.AddNewNodeByClass(cls, name or Path(path).name.split(".")[0])
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        storage.SetCenterImage(False)
        if not storage.ReadData(node):
            raise HealthiVertError(f"Slicer could not read {path}.")
        node.SetAndObserveStorageNodeID(storage.GetID())
        return node

    def close(self) -> None:
        self.scene.Clear(True)
