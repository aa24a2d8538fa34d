"""Render the scene nodes HealthiVert makes into a figure (docs/scene_render.png), without Slicer.

3D Slicer cannot run here, so this is NOT a Slicer screenshot. It builds a real MRML scene with the
PyPI package slicer-core, loads the bundled sample CT and labels with Slicer's own reader, gives L1
a simulated 35 % wedge fracture (``healthivert simulate``), grades it through the module's path
(nodes -> images -> ``healthivert grade`` -> ``HealthiVertLib.scene.show_results``), and draws what
those nodes hold:

* left, rendered offscreen with VTK: the closed-surface representations of the two segmentation
  nodes (vertebral bodies coloured by Genant grade; pseudo-healthy bodies translucent blue), the
  Genant points and height lines of the markups nodes;
* right: the mid-sagittal CT slice of the CT node with the height-loss volume node over it, coloured
  through its display node (colour node, window, threshold, 0.5 opacity as in the slice views), and
  the rows of the table node.

Usage: ``python scripts/render_scene_figure.py [--out docs/scene_render.png]`` (needs slicer-core,
matplotlib; VTK renders offscreen through EGL or OSMesa).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]


def _grade_simulated_case(work: Path):
    from HealthiVertLib.app import cli
    from HealthiVertLib import scene

    sample = ROOT / "HealthiVertLib" / "data" / "sample"
    fractured = work / "fractured"
    assert cli.main(["simulate", "--seg", str(sample / "seg.nii.gz"), "--ct", str(sample / "ct.nii.gz"),
                     "--vertebra", "L1", "--type", "wedge", "--loss", "0.35", "--out", str(fractured),
                     "--progress", "none"]) == 0  # fmt: skip
    env = scene.StandaloneScene()
    ct = env.read_volume(fractured / "ct.nii.gz", name="Sample CT (L1: simulated 35 % wedge)")
    seg = env.read_volume(fractured / "seg.nii.gz", labelmap=True, name="TotalSegmentator labels")
    labels = scene.vertebra_labels(seg, ct)
    inputs = work / "input"
    inputs.mkdir()
    sitk.WriteImage(labels.image, str(inputs / "seg.nii.gz"))
    sitk.WriteImage(scene.volume_to_image(ct), str(inputs / "ct.nii.gz"))
    out = work / "out"
    assert cli.main(["grade", "--seg", str(inputs / "seg.nii.gz"), "--ct", str(inputs / "ct.nii.gz"),
                     "--vertebra", "T12", "L1", "L2", "L3", "--out", str(out), "--no-figures",
                     "--progress", "none"]) == 0  # fmt: skip
    return env, ct, scene.show_results(env.scene, out, ct)


def _polydata_actor(polydata, color, opacity):
    import vtk

    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(polydata)
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    return actor


def _render_3d(result, size=(620, 760)) -> np.ndarray:
    """Offscreen VTK render of the segmentation surfaces and markups, as an RGB array."""
    import vtk
    from vtk.util import numpy_support

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.10, 0.12, 0.16)
    renderer.SetUseDepthPeeling(1)
    for node, opacity in ((result.original_body, 0.55), (result.pseudo_healthy_body, 0.22)):
        segmentation = node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            polydata = vtk.vtkPolyData()
            node.GetClosedSurfaceRepresentation(segment_id, polydata)
            renderer.AddActor(_polydata_actor(polydata, segmentation.GetSegment(segment_id).GetColor(), opacity))
    for lines in result.heights.values():
        for line in lines:
            a, b = [0.0] * 3, [0.0] * 3
            line.GetNthControlPointPositionWorld(0, a)
            line.GetNthControlPointPositionWorld(1, b)
            source = vtk.vtkLineSource()
            source.SetPoint1(a)
            source.SetPoint2(b)
            tube = vtk.vtkTubeFilter()
            tube.SetInputConnection(source.GetOutputPort())
            tube.SetRadius(1.1)
            tube.SetNumberOfSides(12)
            tube.Update()
            renderer.AddActor(_polydata_actor(tube.GetOutput(), (1.0, 1.0, 1.0), 1.0))
    for points in result.points.values():
        for index in range(points.GetNumberOfControlPoints()):
            position = [0.0] * 3
            points.GetNthControlPointPositionWorld(index, position)
            sphere = vtk.vtkSphereSource()
            sphere.SetCenter(position)
            sphere.SetRadius(1.8)
            sphere.Update()
            renderer.AddActor(_polydata_actor(sphere.GetOutput(), (0.95, 0.95, 0.2), 1.0))
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetAlphaBitPlanes(1)
    window.SetMultiSamples(0)
    window.AddRenderer(renderer)
    window.SetSize(*size)
    camera = renderer.GetActiveCamera()
    renderer.ResetCamera()
    focal = np.array(camera.GetFocalPoint())
    camera.SetPosition(*(focal + np.array([-500.0, 60.0, 30.0])))  # from the patient's left (RAS -x), slightly anterior
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Zoom(1.35)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    rgb = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3]
    return rgb[::-1]


def _lut_colors(display_node, values: np.ndarray) -> np.ndarray:
    """RGBA of ``values`` through the display node's colour node, window and threshold (as the slice views)."""
    lut = display_node.GetColorNode().GetLookupTable()
    low, high = display_node.GetWindowLevelMin(), display_node.GetWindowLevelMax()
    n = lut.GetNumberOfTableValues() if lut.GetNumberOfTableValues() > 1 else 256
    table = np.array([lut.GetTableValue(i) if lut.GetNumberOfTableValues() > 1 else lut.GetColor(i / 255.0) + (1.0,)
                      for i in range(n)])  # fmt: skip
    index = np.clip(((values - low) / (high - low) * (n - 1)).round().astype(int), 0, n - 1)
    rgba = table[index].copy()
    rgba[..., 3] = np.where(values >= display_node.GetLowerThreshold(), 0.5, 0.0)  # threshold + 0.5 opacity
    return rgba


def _sagittal(result, ct_node, level: str):
    from HealthiVertLib import scene

    ct = scene.volume_to_image(ct_node)
    loss = scene.volume_to_image(result.height_loss)
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    assert np.allclose(np.abs(direction), np.eye(3)), "this figure assumes an axis-aligned CT"
    points = result.report["vertebrae"]
    centre = next(v for v in points if v["level"] == level)["genant_points_lps"]["middle_superior"]
    i = int(round(ct.TransformPhysicalPointToContinuousIndex(centre)[0]))
    ct_plane = sitk.GetArrayFromImage(ct)[:, :, i].astype(float)  # (k, j)
    loss_plane = sitk.GetArrayFromImage(loss)[:, :, i].astype(float)
    # world extents: columns = LPS y (anterior = smaller y), rows = z (superior up)
    origin, spacing = np.array(ct.GetOrigin()), np.array(ct.GetSpacing())
    y = origin[1] + direction[1, 1] * spacing[1] * np.arange(ct.GetSize()[1])
    z = origin[2] + direction[2, 2] * spacing[2] * np.arange(ct.GetSize()[2])
    if y[0] > y[-1]:
        ct_plane, loss_plane, y = ct_plane[:, ::-1], loss_plane[:, ::-1], y[::-1]
    if z[0] < z[-1]:
        ct_plane, loss_plane, z = ct_plane[::-1], loss_plane[::-1], z[::-1]
    return ct_plane, loss_plane, (y[0], y[-1], z[-1], z[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "scene_render.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        env, ct_node, result = _grade_simulated_case(Path(tmp))
        render = _render_3d(result)
        ct_plane, loss_plane, extent = _sagittal(result, ct_node, "L1")
        l1 = next(v for v in result.report["vertebrae"] if v["level"] == "L1")["genant_points_lps"]
        y0, z0 = l1["posterior_superior"][1], l1["middle_superior"][2]
        window = (y0 - 110, y0 + 45, z0 - 110, min(z0 + 60, extent[3]))
        rgba = _lut_colors(result.height_loss.GetDisplayNode(), loss_plane)
        table = result.table.GetTable()
        rows = [[table.GetColumnByName(c).GetValue(r) for c in ("Level", "Grade", "RHLV anterior", "RHLV middle", "RHLV posterior")]
                for r in range(table.GetNumberOfRows())]  # fmt: skip

    fig = plt.figure(figsize=(11.5, 7.2), dpi=110)
    ax3d = fig.add_axes([0.0, 0.03, 0.46, 0.86])
    ax3d.imshow(render)
    ax3d.set_axis_off()
    ax3d.set_title("Segmentation surfaces + Genant points/heights (VTK, offscreen)", fontsize=10)
    ax = fig.add_axes([0.50, 0.30, 0.46, 0.59])
    ax.imshow(ct_plane, cmap="gray", vmin=-200, vmax=600, extent=extent, aspect="equal", interpolation="nearest")
    ax.imshow(rgba, extent=extent, aspect="equal", interpolation="nearest")
    ax.set_xlim(window[0], window[1])
    ax.set_ylim(window[2], window[3])
    ax.set_xlabel("anterior  ←  y (mm)  →  posterior")
    ax.set_ylabel("z (mm), superior up")
    ax.set_title("Height-loss volume over the CT (PET-Heat, 0-50 %, opacity 0.5)", fontsize=10)
    def pct(x):
        return "—" if x != x else f"{x:.0f} %"

    cells = [[lvl, "—" if g < 0 else str(g), pct(a), pct(m), pct(p)] for lvl, g, a, m, p in rows]
    tab = fig.add_axes([0.52, 0.05, 0.42, 0.17])
    tab.set_axis_off()
    tab.table(cellText=cells, colLabels=["Level", "Genant grade", "RHLV ant.", "RHLV mid.", "RHLV post."],
              loc="center", cellLoc="center").scale(1, 1.15)  # fmt: skip
    fig.suptitle("HealthiVert results as MRML nodes, rendered offscreen from a slicer-core scene - not a 3D Slicer "
                 "screenshot.\nSample CT (TotalSegmentator example) with a simulated 35 % wedge fracture of L1. "
                 "Research use only.", fontsize=10, y=0.995)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
