"""Draw what Slicer's slice views show of HealthiVert's results (docs/slice_views.png), without Slicer.

3D Slicer cannot run here, so this is NOT a screenshot of the application. It builds a real MRML
scene with the PyPI package slicer-core, loads the bundled sample CT with Slicer's own reader, gives
L1 a simulated 35 % wedge fracture (``HealthiVertLib.truth.simulate``), grades T12-L2 with the
``healthivert grade`` command, puts the results into the scene with ``HealthiVertLib.scene.show_results``
(the module's own call) and reads the Red (axial), Yellow (sagittal) and Green (coronal) views through
the centre of L1 from Slicer's slice pipeline: ``vtkMRMLSliceLogic`` reslices the CT and the
height-loss volume through their display nodes and blends them at the overlay opacity; the blended
image (``GetImageDataConnection()``) is drawn here with matplotlib, with the rows of the grade
table node below. Segmentation outlines and markups, which the application draws on top with
OpenGL, are not part of that image. ``Testing/Python/test_scene_slice_view.py`` checks its pixels.

Usage: ``python scripts/render_slice_views.py [--out docs/slice_views.png]`` (needs slicer-core, matplotlib).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
CT_WINDOW, CT_LEVEL = 1800.0, 400.0  # bone window on the CT's display node
FIELD_OF_VIEW_MM, PIXELS = 150.0, 360
VIEW_TITLES = {"Red": "Red: axial", "Yellow": "Yellow: sagittal", "Green": "Green: coronal"}
TABLE_COLUMNS = ("Level", "Status", "Grade", "RHLV anterior", "RHLV middle", "RHLV posterior", "Confidence")


def grade_simulated_case(work: Path) -> tuple[object, object, object]:
    """The sample with a 35 % wedge of L1, graded T12-L2 and shown in a standalone MRML scene."""
    from HealthiVertLib import scene
    from HealthiVertLib.app import cli
    from HealthiVertLib.io.resources import SAMPLE_DIR
    from HealthiVertLib.truth.simulate import simulate_fracture

    case = simulate_fracture(sitk.ReadImage(str(SAMPLE_DIR / "seg.nii.gz")), vertebra="L1", kind="wedge", loss=0.35,
                             ct=sitk.ReadImage(str(SAMPLE_DIR / "ct.nii.gz")))  # fmt: skip
    sitk.WriteImage(case.seg, str(work / "seg.nii.gz"))
    sitk.WriteImage(case.ct, str(work / "ct.nii.gz"))
    out = work / "out"
    assert cli.main(["grade", "--seg", str(work / "seg.nii.gz"), "--ct", str(work / "ct.nii.gz"), "--vertebra",
                     "T12", "L1", "L2", "--out", str(out), "--no-figures", "--progress", "none"]) == 0  # fmt: skip
    env = scene.StandaloneScene()
    ct = env.read_volume(work / "ct.nii.gz", name="Sample CT (L1: simulated 35 % wedge)")
    ct.CreateDefaultDisplayNodes()
    ct.GetDisplayNode().SetAutoWindowLevel(False)
    ct.GetDisplayNode().SetWindowLevel(CT_WINDOW, CT_LEVEL)
    return env, ct, scene.show_results(env.scene, out, ct)


def l1_centre_ras(result, out_body: sitk.Image) -> np.ndarray:
    """Centre of L1's measured body (RAS mm)."""
    label = next(int(v["label"]) for v in result.report["vertebrae"] if v["level"] == "L1")
    k, j, i = np.argwhere(sitk.GetArrayViewFromImage(out_body) == label).mean(axis=0)
    x, y, z = out_body.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
    return np.array([-x, -y, z])


def table_cells(table_node) -> list[list[str]]:
    """The grade table node's rows as text."""
    table = table_node.GetTable()

    def text(name: str, row: int) -> str:
        value = table.GetColumnByName(name).GetValue(row)
        if isinstance(value, str):
            return value
        if name == "Grade":
            return "—" if value < 0 else str(value)
        return "—" if isinstance(value, float) and math.isnan(value) else f"{value:.0f} %"

    return [[text(name, row) for name in TABLE_COLUMNS] for row in range(table.GetNumberOfRows())]


def main(argv: list[str] | None = None) -> int:
    """Render the figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "slice_views.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from HealthiVertLib import scene

    with tempfile.TemporaryDirectory() as tmp:
        env, _ct, result = grade_simulated_case(Path(tmp))
        centre = l1_centre_ras(result, sitk.ReadImage(str(Path(tmp) / "out" / "original_body_label.nii.gz")))
        logics = scene.slice_logics(env.logics)
        scene.center_views(logics.values(), centre, FIELD_OF_VIEW_MM, PIXELS)
        images = {view: scene.composited_slice(logic) for view, logic in logics.items()}
        opacity = logics["Red"].GetSliceCompositeNode().GetForegroundOpacity()
        cells = table_cells(result.table)
        env.close()

    fig = plt.figure(figsize=(12.0, 6.4), dpi=110)
    for index, view in enumerate(("Red", "Yellow", "Green")):
        ax = fig.add_axes([0.01 + index * 0.33, 0.30, 0.31, 0.58])
        ax.imshow(images[view].for_display(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color({"Red": "#c33", "Yellow": "#cb3", "Green": "#3a3"}[view])
            spine.set_linewidth(3)
        ax.set_title(VIEW_TITLES[view] + " through L1", fontsize=10)
    tab = fig.add_axes([0.08, 0.02, 0.84, 0.22])
    tab.set_axis_off()
    tab.table(cellText=cells, colLabels=["Level", "Status", "Genant grade", "RHLV ant.", "RHLV mid.", "RHLV post.",
                                         "Confidence"], loc="center", cellLoc="center").scale(1, 1.25)  # fmt: skip
    fig.suptitle(
        "Slicer's slice pipeline (vtkMRMLSliceLogic from slicer-core) rendered offscreen - not the 3D Slicer application.\n"
        f"Sample CT (window {CT_WINDOW:.0f}, level {CT_LEVEL:.0f} HU) with a simulated 35 % wedge fracture of L1; height loss in "
        f"PET-Heat 0-50 %, opacity {opacity:.1f}, transparent below 1 %. Research use only.",
        fontsize=9.5, y=0.99,
    )  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
