"""Scene volume nodes <-> SimpleITK images, and the height-loss overlay.

Coordinates: MRML nodes are in RAS millimetres, SimpleITK images and ``report.json`` in LPS
millimetres: (x, y, z) LPS = (-x, -y, z) RAS. Volumes are read and written in the node's own
coordinates (a parent transform is not applied). Like the rest of ``scene``, it uses only what
both the Slicer application and ``slicer-core`` provide (MRML nodes, storage nodes; nothing from
``slicer.app``, ``slicer.util`` or ``slicer.modules``), and never Qt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support


from ..errors import HealthiVertError


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

HEAT_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")
HEIGHT_LOSS_RANGE = (0.0, 0.5)  # fraction of the healthy height shown by the colour scale; severe starts at 0.40
HEIGHT_LOSS_THRESHOLD = 0.01  # below this the map is transparent (no loss, background)
OVERLAY_OPACITY = 0.5
PSEUDO_HEALTHY_CT_FILE = "pseudo_healthy_ct.nii.gz"  # written by HealthiVertLib.outputs for engines that synthesise CT


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


def as_label_image(image: sitk.Image, name: str) -> sitk.Image:
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


def read_image_file(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise HealthiVertError(f"Could not read the result file {path}: {err}") from err
