"""Slicer's own slice pipeline without a render window: what the Red, Yellow and Green views show.

``vtkMRMLSliceLogic`` reslices every layer of a view (background CT, foreground height loss) through
its display node (window/level, colour node, threshold) and blends them with the composite node's
opacity in a ``vtkImageBlend``; the application draws that image as a texture. Reading the blend's
output (``GetImageDataConnection()``) gives the same pixels without OpenGL, so tests and scripts can
check and draw the slice views with ``slicer-core``. Segmentations, markups and the slice
annotations are drawn by displayable managers in the application and are not part of this image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import slicer
from vtk.util import numpy_support

SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}  # Slicer's default views


@dataclass
class SliceImage:
    """One composited slice view: ``rgba[y, x]`` (uint8, row 0 at the bottom, as the slice's XY
    coordinates) and the 4x4 XY-to-RAS matrix of the slice node (pixel (x, y) is at
    ``xy_to_ras @ (x, y, 0, 1)``)."""

    view: str
    orientation: str
    rgba: np.ndarray
    xy_to_ras: np.ndarray

    def ras(self, x: float, y: float) -> np.ndarray:
        """RAS millimetres of pixel (x, y)."""
        return (self.xy_to_ras @ np.array([x, y, 0.0, 1.0]))[:3]

    def pixel_grid_ras(self) -> np.ndarray:
        """RAS millimetres of every pixel, shape (height, width, 3), indexed like ``rgba``."""
        height, width = self.rgba.shape[:2]
        y, x = np.mgrid[0:height, 0:width].astype(float)
        xy = np.stack([x.ravel(), y.ravel(), np.zeros(x.size), np.ones(x.size)])
        return (self.xy_to_ras @ xy)[:3].T.reshape(height, width, 3)

    def for_display(self) -> np.ndarray:
        """RGB rows from the top, as an image viewer (or the application) shows the view."""
        return self.rgba[::-1, :, :3]


def slice_logics(logics: Iterable) -> dict[str, object]:
    """The ``vtkMRMLSliceLogic`` objects among ``logics`` (e.g. ``StandaloneScene.logics``), by view name."""
    return {logic.GetSliceNode().GetName(): logic for logic in logics if logic.IsA("vtkMRMLSliceLogic")}


def center_views(logics: Iterable, ras: Iterable[float], field_of_view_mm: float, pixels: int = 256) -> None:
    """Each slice view ``pixels`` x ``pixels`` wide, ``field_of_view_mm`` across, its plane through
    ``ras`` (RAS mm) and centred on it, in its own orientation (Red axial, Yellow sagittal, Green coronal)."""
    point = [float(v) for v in ras]
    for logic in logics:
        node = logic.GetSliceNode()
        was_modified = node.StartModify()
        node.SetDimensions(int(pixels), int(pixels), 1)
        node.SetFieldOfView(float(field_of_view_mm), float(field_of_view_mm), node.GetFieldOfView()[2])
        node.JumpSliceByCentering(*point)
        node.EndModify(was_modified)


def composited_slice(logic) -> SliceImage:
    """The image ``logic``'s view shows (background, foreground at its opacity, label layer), read
    from the slice logic's blend without rendering."""
    connection = logic.GetImageDataConnection()
    if connection is None:
        raise RuntimeError(f"The slice view {logic.GetSliceNode().GetName()} shows no volume.")
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    width, height, _ = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    rgba = np.array(scalars, copy=True).reshape(height, width, -1)
    if rgba.shape[2] == 3:
        rgba = np.concatenate([rgba, np.full((height, width, 1), 255, rgba.dtype)], axis=2)
    node = logic.GetSliceNode()
    matrix = node.GetXYToRAS()
    xy_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return SliceImage(node.GetName(), node.GetOrientation(), rgba.astype(np.uint8), xy_to_ras)


def add_slice_views(scene, app_logic, views: Iterable[str] = tuple(SLICE_VIEWS)) -> list:
    """A ``vtkMRMLSliceLogic`` with its slice and composite nodes for each view name, as the
    application's layout creates them (Red axial, Yellow sagittal, Green coronal); keep the returned
    logics alive as long as the scene."""
    logics = []
    for view in views:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        node = logic.AddSliceNode(view)
        if view in SLICE_VIEWS:  # as the layout does: Red axial, Yellow sagittal, Green coronal
            node.SetDefaultOrientation(SLICE_VIEWS[view])
            node.SetOrientationToDefault()
        logics.append(logic)
    return logics
