"""MRML adapter: scene nodes <-> SimpleITK images, and the results of a grading run as scene nodes.

The only file of ``HealthiVertLib`` that imports ``slicer`` (MRML) and ``vtk``; it never imports
Qt, so it runs in the Slicer application and, for the tests, with the PyPI package ``slicer-core``
(real MRML without the application). It uses only what both provide: MRML nodes, storage nodes,
the static segmentation logic functions and the subject hierarchy node; nothing from
``slicer.app``, ``slicer.util`` or ``slicer.modules``.

Coordinates: MRML nodes are in RAS millimetres, SimpleITK images and ``report.json`` in LPS
millimetres: (x, y, z) LPS = (-x, -y, z) RAS. Volumes are read and written in the node's own
coordinates (a parent transform is not applied); result nodes get the parent transform of the
input, so everything lines up in the views.

Every node made here carries the attribute ``HealthiVert.Output`` (its role) and
``HealthiVert.Reference`` (the ID of the input volume it belongs to). :func:`remove_outputs`
removes exactly those, so re-running replaces the module's own results and never a user's node.
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
from vtk.util import numpy_support

import slicer

from . import labels as lab
from .errors import HealthiVertError
from .results import GENANT_POINTS, REGIONS

OUTPUT_ATTRIBUTE = "HealthiVert.Output"
REFERENCE_ATTRIBUTE = "HealthiVert.Reference"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

HEAT_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")
HEIGHT_LOSS_RANGE = (0.0, 0.5)  # fraction of the healthy height shown by the colour scale; severe starts at 0.40
HEIGHT_LOSS_THRESHOLD = 0.01  # below this the map is transparent (no loss, background)
OVERLAY_OPACITY = 0.5
PSEUDO_HEALTHY_CT_FILE = "pseudo_healthy_ct.nii.gz"  # written by HealthiVertLib.report for engines that synthesise CT
GRADE_NAMES = ("normal", "mild", "moderate", "severe")  # Genant 0-3
GRADE_COLORS = ((0.20, 0.70, 0.30), (0.95, 0.85, 0.20), (0.95, 0.55, 0.10), (0.85, 0.10, 0.10))
NOT_GRADED_COLOR = (0.60, 0.60, 0.60)
PSEUDO_HEALTHY_COLOR = (0.35, 0.70, 0.95)
HEIGHT_LINES = (("anterior", "anterior_superior", "anterior_inferior"),
                ("middle", "middle_superior", "middle_inferior"),
                ("posterior", "posterior_superior", "posterior_inferior"))  # fmt: skip

# SNOMED CT codes of the vertebrae, as the TotalSegmentator Slicer extension assigns them
# (lassoan/SlicerTotalSegmentator, TotalSegmentator/Resources/totalsegmentator_snomed_mapping.csv,
# rows vertebrae_C1 ... vertebrae_L5; category SCT 123037004 "Anatomical Structure"). T13 and L6
# have no code of their own: "Vertebra" (SCT 51282000) in the thoracic (122495006) or lumbar
# (122496007) spine, as that file codes vertebrae_thoracic / vertebrae_lumbar.
SCT_CATEGORY = ("SCT", "123037004", "Anatomical Structure")
VERTEBRA_SCT: Mapping[str, str] = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003",
    "C6": "36054005", "C7": "87391001",
    "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006",
    "T6": "45296009", "T7": "62487009", "T8": "11068009", "T9": "82687006", "T10": "7610001",
    "T11": "12989004", "T12": "23215003",
    "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
}  # fmt: skip
SCT_VERTEBRA = "51282000"
SCT_SPINE_REGION = {"T": ("SCT", "122495006", "Thoracic spine"), "L": ("SCT", "122496007", "Lumbar spine")}
# Terminology contexts of Slicer's Terminologies module (DICOM master lists).
TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_LEVEL_BY_SCT = {code: level for level, code in VERTEBRA_SCT.items()}


# --- geometry ----------------------------------------------------------------------------------


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a 3D SimpleITK image (whose geometry is LPS)."""
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), float)
    return matrix


def set_geometry_from_ijk_to_ras(image: sitk.Image, matrix: np.ndarray) -> None:
    """Give ``image`` the origin, spacing and direction (LPS) of a 4x4 IJK-to-RAS matrix."""
    linear = LPS_TO_RAS @ np.asarray(matrix, float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise HealthiVertError("The volume has a degenerate geometry (a voxel size of zero).")
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in (linear / spacing).ravel()])
    image.SetOrigin([float(o) for o in LPS_TO_RAS @ np.asarray(matrix, float)[:3, 3]])


def _node_matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_matrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            result.SetElement(r, c, float(matrix[r][c]))
    return result


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-3) -> bool:
    """True when both images have the same size and IJK-to-world matrix (within ``tolerance`` mm)."""
    return a.GetSize() == b.GetSize() and bool(np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=tolerance))


# --- volumes ---------------------------------------------------------------------------------------


def volume_to_image(node) -> sitk.Image:
    """A copy of a scalar volume node's voxels as a SimpleITK image with the same geometry (LPS).

    The node's own coordinates are used: a parent transform is not applied.
    """
    if node is None:
        raise HealthiVertError("No volume selected.")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise HealthiVertError(f"The volume '{node.GetName()}' has no image data; load it again.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise HealthiVertError(
            f"The volume '{node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components per voxel; "
            "select a single-component (greyscale or label) volume."
        )
    dims = image_data.GetDimensions()
    if min(dims) < 2:
        raise HealthiVertError(f"The volume '{node.GetName()}' is not 3D (size {dims[0]} x {dims[1]} x {dims[2]}).")
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[::-1])
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    set_geometry_from_ijk_to_ras(image, _node_matrix(node))
    return image


def image_to_volume(image: sitk.Image, scene, name: str, node_class: str = "vtkMRMLScalarVolumeNode", node=None):
    """Put a 3D SimpleITK image (LPS geometry) into a new (or the given) volume node of ``scene``."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise HealthiVertError("Only 3D single-component images can be shown as volumes.")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    flat = np.ascontiguousarray(array).ravel()
    vtk_array = numpy_support.numpy_to_vtk(flat, deep=True, array_type=numpy_support.get_vtk_array_type(flat.dtype))
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*image.GetSize())
    image_data.GetPointData().SetScalars(vtk_array)
    if node is None:
        node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras(image)))
    node.SetAndObserveImageData(image_data)
    return node


def _as_label_image(image: sitk.Image, name: str) -> sitk.Image:
    """Integer labels: a float volume with whole numbers is accepted (some tools save labels as float)."""
    pixel = image.GetPixelID()
    if pixel in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(image)
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or values.min() < 0:
            raise HealthiVertError(f"'{name}' is not a label map: its voxels are not whole non-negative numbers.")
        image = sitk.Cast(image, sitk.sitkUInt16 if values.max() <= 65535 else sitk.sitkUInt32)
    elif sitk.GetArrayViewFromImage(image).min() < 0:
        raise HealthiVertError(f"'{name}' is not a label map: it has negative values.")
    return image


def resample_labels_to(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Labels on the voxel grid of ``reference`` (nearest neighbour; the world position is kept)."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


# --- label inputs ----------------------------------------------------------------------------------


@dataclass
class LabelInput:
    """A vertebra label map made from a scene node, ready for the core.

    ``scheme`` is the numbering to pass to the core ("totalseg" or "verse" when the levels came from
    segment names or terminology, else None: the core detects it or the user overrides it).
    ``levels`` maps label values to levels when known; ``segments`` label values to segment IDs.
    """

    image: sitk.Image
    scheme: str | None = None
    levels: dict[int, str] = field(default_factory=dict)
    segments: dict[int, str] = field(default_factory=dict)
    resampled: bool = False  # the labels were moved onto the reference grid

    def level_of(self, label: int, scheme: str | None = None) -> str | None:
        """Level of ``label``: from the segments, else from the numbering (``scheme``, or detected)."""
        if label in self.levels:
            return self.levels[label]
        from .io import label_centroids

        superior = {value: float(c[2]) for value, c in label_centroids(self.image).items()}
        return lab.resolve_scheme(scheme or self.scheme, superior, source="the vertebra segmentation").level_of(label)


def terminology_string(level: str) -> str:
    """Slicer terminology entry (``vtkSegment.SetTerminology``) of a vertebra level, SNOMED CT coded."""
    category = "^".join(SCT_CATEGORY)
    if level in VERTEBRA_SCT:
        kind, region = f"SCT^{VERTEBRA_SCT[level]}^{level} vertebra", "^^"
    else:  # T13, L6: a vertebra of the thoracic / lumbar spine
        kind, region = f"SCT^{SCT_VERTEBRA}^Vertebra", "^".join(SCT_SPINE_REGION.get(level[:1], ("", "", "")))
    return f"{TYPE_CONTEXT}~{category}~{kind}~^^~{ANATOMIC_CONTEXT}~{region}~^^"


def level_from_terminology(terminology: str) -> str | None:
    """Vertebra level coded in a terminology entry string (SNOMED CT type code), or None."""
    parts = (terminology or "").split("~")
    if len(parts) < 3:
        return None
    code = parts[2].split("^")
    return _LEVEL_BY_SCT.get(code[1]) if len(code) >= 2 and code[0] in ("SCT", "SRT") else None


def segment_terminology(segment) -> str:
    """The terminology entry string of a segment ("" when it has none)."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    value = vtk.reference("")
    return str(value) if segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value) else ""


def set_segment_terminology(segment, terminology: str) -> None:
    """Set a segment's terminology entry (``SetTerminology`` where it exists, else the tag it stands for)."""
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(terminology)
    else:
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), terminology)


def segment_level(segment) -> str | None:
    """Level of a segment: from its name ("vertebrae_L1", "L1 vertebra", "T12") or its terminology."""
    return lab.level_from_name(segment.GetName()) or level_from_terminology(segment_terminology(segment))


def _segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def segmentation_to_labels(
    segmentation_node, reference_node, values: Mapping[str, int] | None = None
) -> tuple[sitk.Image, dict[int, str]]:
    """Export segments to a label image on the reference volume's grid.

    ``values`` maps segment IDs to label values (default: every segment, its own label value or
    its position + 1). Returns the image and ``{label value: segment ID}``.
    """
    if values is None:
        values = {}
        for index, segment_id in enumerate(_segment_ids(segmentation_node)):
            value = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
            values[segment_id] = int(value) if value > 0 and int(value) not in values.values() else index + 1
    if not values:
        raise HealthiVertError(f"The segmentation '{segmentation_node.GetName()}' has no segments.")
    ids = vtk.vtkStringArray()
    for segment_id in values:
        ids.InsertNextValue(segment_id)
    scene = segmentation_node.GetScene()
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("HealthiVert export"))
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, temporary, reference_node
        )
        if not ok or temporary.GetImageData() is None:
            raise HealthiVertError(f"Could not export the segmentation '{segmentation_node.GetName()}' to labels.")
        exported = volume_to_image(temporary)
    finally:
        for index in range(temporary.GetNumberOfDisplayNodes() - 1, -1, -1):
            display = temporary.GetNthDisplayNode(index)
            if display is not None:
                scene.RemoveNode(display)
        scene.RemoveNode(temporary)
    # The export numbers segments 1..n in the order given; give them the requested values.
    array = sitk.GetArrayViewFromImage(exported)
    target = list(values.values())
    lookup = np.zeros(len(target) + 1, np.uint32)
    lookup[1:] = target
    relabelled = sitk.GetImageFromArray(lookup[array.astype(np.int64)].astype(np.uint16 if max(target) <= 65535 else np.uint32))
    relabelled.CopyInformation(exported)
    return relabelled, {value: segment_id for segment_id, value in values.items()}


def vertebra_labels(node, reference_node=None) -> LabelInput:
    """The vertebra label map of a segmentation node or a label map volume, on the reference's grid.

    Segmentations: every segment whose level is recognised (name or SNOMED terminology) gets its
    label value in the TotalSegmentator numbering (L1 = 31; VerSe's, L1 = 20, when T13 or L6 is
    present), other segments (ribs, organs) are left out. When no segment names a
    level, the segments' own label values are used and the numbering is detected by the core.
    Label map volumes keep their values; they are resampled (nearest neighbour) onto the reference
    grid when that differs.
    """
    if node is None:
        raise HealthiVertError("Select the vertebra segmentation (a segmentation or a label map volume).")
    reference_image = volume_to_image(reference_node) if reference_node is not None else None
    if node.IsA("vtkMRMLSegmentationNode"):
        if reference_node is None:
            raise HealthiVertError("A segmentation needs a reference volume (the CT) to define its voxel grid.")
        levels = {}
        for segment_id in _segment_ids(node):
            level = segment_level(node.GetSegmentation().GetSegment(segment_id))
            if level is not None and level not in levels.values():
                levels[segment_id] = level
        if levels:
            # TotalSegmentator numbering covers C1-S1; VerSe's covers T13 and L6 but not S1.
            scheme = lab.TOTALSEG if all(lab.TOTALSEG.label_of(v) for v in levels.values()) else lab.VERSE
            levels = {s: level for s, level in levels.items() if scheme.label_of(level) is not None}
            values = {segment_id: scheme.label_of(level) for segment_id, level in levels.items()}
            image, segments = segmentation_to_labels(node, reference_node, values)
            return LabelInput(image, scheme.name, {values[s]: levels[s] for s in levels}, segments)
        image, segments = segmentation_to_labels(node, reference_node)
        return LabelInput(image, None, {}, segments)
    image = _as_label_image(volume_to_image(node), node.GetName())
    resampled = False
    if reference_image is not None and not same_geometry(image, reference_image):
        image, resampled = resample_labels_to(image, reference_image), True
    return LabelInput(image, None, {}, {}, resampled)


def subregion_labels(node, reference_node) -> sitk.Image:
    """Vertebral-body subregion labels on the reference grid. Segments named "...body..." become 1
    and "...disc..." 2 (TotalSegmentator ``vertebrae_body``); label maps keep their values."""
    if node.IsA("vtkMRMLSegmentationNode"):
        values = {}
        for segment_id in _segment_ids(node):
            name = node.GetSegmentation().GetSegment(segment_id).GetName().lower()
            if "body" in name and 1 not in values.values():
                values[segment_id] = 1
            elif ("disc" in name or "disk" in name) and 2 not in values.values():
                values[segment_id] = 2
        if not values:
            image, _ = segmentation_to_labels(node, reference_node)
            return image
        return segmentation_to_labels(node, reference_node, values)[0]
    image = _as_label_image(volume_to_image(node), node.GetName())
    reference = volume_to_image(reference_node)
    return image if same_geometry(image, reference) else resample_labels_to(image, reference)


def label_at_point(image: sitk.Image, point_ras: Iterable[float], search_radius_mm: float = 5.0) -> int:
    """The label under a point (RAS mm); when the point is on background, the most frequent label
    within ``search_radius_mm`` (a click just outside the bone still picks the vertebra). 0: none."""
    x, y, z = (float(v) for v in point_ras)
    index = np.array(image.TransformPhysicalPointToContinuousIndex((-x, -y, z)))
    array = sitk.GetArrayViewFromImage(image)  # (k, j, i)
    nearest = np.round(index).astype(int)
    size = np.array(image.GetSize())
    if np.all(nearest >= 0) and np.all(nearest < size):
        value = int(array[nearest[2], nearest[1], nearest[0]])
        if value:
            return value
    reach = np.ceil(search_radius_mm / np.array(image.GetSpacing())).astype(int)
    lo, hi = np.maximum(nearest - reach, 0), np.minimum(nearest + reach + 1, size)
    if np.any(hi <= lo):
        return 0
    block = array[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    values, counts = np.unique(block[block > 0], return_counts=True)
    return int(values[np.argmax(counts)]) if len(values) else 0


def markups_point_ras(markups_node, index: int = 0) -> tuple[float, float, float]:
    """Position (RAS mm, in the node's own coordinates) of a markups control point."""
    if markups_node is None or markups_node.GetNumberOfControlPoints() <= index:
        raise HealthiVertError("Place a point on the vertebra to grade (or choose a level from the list).")
    position = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPosition(index, position)
    return tuple(float(v) for v in position)


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


def set_height_loss_display(volume_node, scene) -> None:
    """Heat colours over 0-50 % loss, window/level fixed, voxels below 1 % transparent."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    for color_id in HEAT_COLOR_NODE_IDS:
        if scene.GetNodeByID(color_id) is not None:
            display.SetAndObserveColorNodeID(color_id)
            break
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*HEIGHT_LOSS_RANGE)
    display.AutoThresholdOff()
    display.SetLowerThreshold(HEIGHT_LOSS_THRESHOLD)
    display.SetUpperThreshold(1.0)
    display.ApplyThresholdOn()
    display.SetInterpolate(False)


def show_overlay(scene, background_node, foreground_node, opacity: float = OVERLAY_OPACITY) -> int:
    """Show ``foreground_node`` over ``background_node`` (None: keep the background) in every slice
    view; returns the number of views."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if background_node is not None:
            composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID() if foreground_node is not None else None)
        composite.SetForegroundOpacity(opacity)
    return composites.GetNumberOfItems()


def _read_image(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise HealthiVertError(f"Could not read the result file {path}: {err}") from err


def _segmentation_from_labels(scene, image: sitk.Image, name: str, reference_node, level_of: Mapping[int, str]):
    """A segmentation node with one segment per label value: named by level, SNOMED-coded."""
    labelmap = image_to_volume(sitk.Cast(image, sitk.sitkUInt16), scene, name + " labels", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    try:
        if reference_node is not None:
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise HealthiVertError(f"Could not make the segmentation '{name}'.")
    finally:
        scene.RemoveNode(labelmap)
    segments = segmentation.GetSegmentation()
    for segment_id in _segment_ids(segmentation):
        segment = segments.GetSegment(segment_id)
        level = level_of.get(int(segment.GetLabelValue()))
        if level is None:
            continue
        segment.SetName(level)
        segment.SetNameAutoGenerated(False)
        set_segment_terminology(segment, terminology_string(level))
    return segmentation


def _segment_by_level(segmentation) -> dict[str, Any]:
    segments = segmentation.GetSegmentation()
    return {segments.GetSegment(i).GetName(): segments.GetSegment(i) for i in _segment_ids(segmentation)}


def _color(segment, rgb) -> None:
    segment.SetColor(*rgb)
    segment.SetColorAutoGenerated(False)


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
    ("Abnormality score", "float", "", "0-100: surplus volume of the pseudo-healthy body over the actual one"),
    ("Height anterior", "float", "mm", "Measured anterior height"),
    ("Height middle", "float", "mm", "Measured middle height"),
    ("Height posterior", "float", "mm", "Measured posterior height"),
    ("Healthy height anterior", "float", "mm", "Pseudo-healthy (expected) anterior height"),
    ("Healthy height middle", "float", "mm", "Pseudo-healthy (expected) middle height"),
    ("Healthy height posterior", "float", "mm", "Pseudo-healthy (expected) posterior height"),
    ("Genant rule grade", "int", "", "Grade by the transparent threshold rule (<20 % 0, 20-25 % 1, 25-40 % 2, >=40 % 3)"),
    ("Reason", "str", "", "Why a vertebra was not graded"),
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
            "Reason": str(v.get("reason") or ""),
        }
        for region in REGIONS:
            row[f"RHLV {region}"] = 100.0 * _finite(rhlv.get(region))
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
    """Load a run's outputs (``report.json`` and the volumes of ``HealthiVertLib.report``) into ``scene``.

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
        result.height_loss = image_to_volume(_read_image(loss_path), scene, f"{case} height loss")
        set_height_loss_display(result.height_loss, scene)
        placer.place(result.height_loss, "height_loss")

    ct_path = _pseudo_healthy_ct_file(out_dir)
    if ct_path is not None:
        result.pseudo_healthy_ct = image_to_volume(_read_image(ct_path), scene, f"{case} pseudo-healthy CT")
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
        image = _read_image(path)
        if not np.any(sitk.GetArrayViewFromImage(image)):
            continue
        segmentation = _segmentation_from_labels(scene, image, f"{case} {title}", reference_node, level_of)
        segmentation.CreateDefaultDisplayNodes()
        display = segmentation.GetDisplayNode()
        for level, segment in _segment_by_level(segmentation).items():
            grade = by_level.get(level, {}).get("grade")
            if attribute == "original_body":
                _color(segment, NOT_GRADED_COLOR if grade is None else GRADE_COLORS[int(grade)])
            else:
                _color(segment, PSEUDO_HEALTHY_COLOR)
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
    segmentations, markups, subject hierarchy, tables, plots, three slice views), for use without
    the application: scripts and tests with the PyPI package slicer-core. In Slicer, use
    ``slicer.mrmlScene``."""

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
        for view in slice_views:
            slice_logic = slicer.vtkMRMLSliceLogic()
            slice_logic.SetMRMLApplicationLogic(self.app)
            slice_logic.SetMRMLScene(self.scene)
            slice_logic.AddSliceNode(view)
            self.logics.append(slice_logic)
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

