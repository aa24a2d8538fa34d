"""Vertebra labels to and from segmentation nodes, with SNOMED CT terminology.

:func:`vertebra_labels` makes the core's label map from a label-map volume or a segmentation node
(levels from segment names or terminology when present); :func:`subregion_labels` does the same
for a body-subregion map; :func:`segmentation_from_labels` turns a label image into a segmentation
node whose segments carry their vertebra's SNOMED CT code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
import vtk

import slicer

from ..io import labels as lab
from ..io.terminology import SCT_CATEGORY, SCT_SPINE_REGION, SCT_VERTEBRA, VERTEBRA_SCT, level_from_code
from ..errors import HealthiVertError
from .volumes import as_label_image, image_to_volume, resample_labels_to, same_geometry, volume_to_image


# SNOMED CT codes of the vertebrae: one table for the DICOM objects and the scene (io/terminology.py).
# Terminology contexts of Slicer's Terminologies module (DICOM master lists).
TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


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
        from ..io.images import label_centroids

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
    return level_from_code(code[0], code[1]) if len(code) >= 2 else None


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
    image = as_label_image(volume_to_image(node), node.GetName())
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
    image = as_label_image(volume_to_image(node), node.GetName())
    reference = volume_to_image(reference_node)
    return image if same_geometry(image, reference) else resample_labels_to(image, reference)


def segmentation_from_labels(scene, image: sitk.Image, name: str, reference_node, level_of: Mapping[int, str]):
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


def segments_by_level(segmentation) -> dict[str, Any]:
    segments = segmentation.GetSegmentation()
    return {segments.GetSegment(i).GetName(): segments.GetSegment(i) for i in _segment_ids(segmentation)}


def set_segment_color(segment, rgb) -> None:
    segment.SetColor(*rgb)
    segment.SetColorAutoGenerated(False)
