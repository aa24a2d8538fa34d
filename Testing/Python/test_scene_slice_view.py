"""What Slicer's slice views show of a graded fracture, through Slicer's own slice pipeline.

The module's result scene is built with ``HealthiVertLib.scene`` on real MRML (slicer-core), with a
``vtkMRMLSliceLogic`` per view (Red axial, Yellow sagittal, Green coronal) through L1 of the sample
CT after a simulated 35 % wedge fracture. The composited image is read from the slice logic's blend
(``GetImageDataConnection()``), without OpenGL, and every pixel is compared with an expectation
computed here from the files on disk, independently of Slicer: the CT value at the pixel's RAS
position (trilinear, as the CT's display node interpolates), mapped by the CT window/level to a
grey byte; where the height-loss volume is >= 1 % (nearest voxel, the overlay is not
interpolated), that grey blended with the PET-Heat colour of the loss at the configured opacity.

test_scene's slicer-core guard applies: the tests fail where slicer-core has wheels and it is missing,
and are skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_CT, SAMPLE_SEG
from scipy import ndimage
from test_scene import MRML  # with its slicer-core guard

from HealthiVertLib import scene
from HealthiVertLib.app import cli
from HealthiVertLib.truth.simulate import simulate_fracture

CT_WINDOW, CT_LEVEL = 1800.0, 400.0  # a bone window set on the CT's display node, as a user would
LOSS_RANGE = (0.0, 0.5)  # the height-loss colour scale of the README (0-50 %)
LOSS_SHOWN_FROM = 0.01  # below 1 % loss the overlay is transparent
HEAT = "vtkMRMLPETProceduralColorNodePET-Heat"
FIELD_OF_VIEW_MM, PIXELS = 110.0, 160
BLEND_TOLERANCE = 1.5  # grey levels: vtkImageBlend blends in 8-bit steps (opacity x alpha, then the colours)


@pytest.fixture(scope="module")
def fractured_run(tmp_path_factory) -> Path:
    """The sample CT with L1 given a 35 % wedge fracture, graded T12-L2 by the CLI (no figures)."""
    work = tmp_path_factory.mktemp("slice_view")
    case = simulate_fracture(sitk.ReadImage(str(SAMPLE_SEG)), vertebra="L1", kind="wedge", loss=0.35,
                             ct=sitk.ReadImage(str(SAMPLE_CT)))  # fmt: skip
    sitk.WriteImage(case.seg, str(work / "seg.nii.gz"))
    sitk.WriteImage(case.ct, str(work / "ct.nii.gz"))
    out = work / "out"
    assert cli.main(["grade", "--seg", str(work / "seg.nii.gz"), "--ct", str(work / "ct.nii.gz"),
                     "--vertebra", "T12", "L1", "L2", "--out", str(out), "--no-figures", "--progress", "none"]) == 0  # fmt: skip
    return work


def _lps_index(image: sitk.Image, ras: np.ndarray) -> np.ndarray:
    """Continuous (i, j, k) index of RAS points (..., 3), from the image's LPS origin, spacing, direction."""
    lps = ras * np.array([-1.0, -1.0, 1.0])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    offset = lps.reshape(-1, 3) - np.array(image.GetOrigin())
    index = (direction.T @ offset.T).T / np.array(image.GetSpacing())
    return index.reshape(ras.shape)


class Views:
    """The scene, the three composited slice views and what the files on disk say they should show."""

    def __init__(self, run: Path, opacity: float):
        self.env = MRML()
        self.opacity = opacity
        self.ct_node = self.env.read_volume(run / "ct.nii.gz", name="CT")
        self.ct_node.CreateDefaultDisplayNodes()
        display = self.ct_node.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(CT_WINDOW, CT_LEVEL)
        self.result = scene.show_results(self.env.scene, run / "out", self.ct_node, opacity=opacity)
        self.report = self.result.report
        self.ct = sitk.ReadImage(str(run / "ct.nii.gz"))
        self.loss = sitk.ReadImage(str(run / "out" / "height_loss.nii.gz"))
        self.body = sitk.ReadImage(str(run / "out" / "original_body_label.nii.gz"))
        l1 = next(v for v in self.report["vertebrae"] if v["level"] == "L1")
        self.l1 = l1
        body = sitk.GetArrayFromImage(self.body) == int(l1["label"])
        k, j, i = np.argwhere(body).mean(axis=0)
        lps = self.body.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
        self.centre_ras = np.array([-lps[0], -lps[1], lps[2]])
        self.logics = scene.slice_logics(self.env.logics)
        scene.center_views(self.logics.values(), self.centre_ras, FIELD_OF_VIEW_MM, PIXELS)
        self.images = {view: scene.composited_slice(logic) for view, logic in self.logics.items()}
        table = self.env.scene.GetNodeByID(HEAT).GetLookupTable()
        self.heat = np.array([table.GetTableValue(n)[:3] for n in range(table.GetNumberOfTableValues())])

    def expected(self, view: str) -> dict[str, np.ndarray]:
        """Per pixel: the expected RGB, the loss (nearest voxel), overlay shown or not, on L1's body, on
        a graded body, inside the CT, and whether the nearest-voxel choice is unambiguous."""
        ras = self.images[view].pixel_grid_ras()
        index = _lps_index(self.ct, ras)
        size = np.array(self.ct.GetSize())
        inside = np.all((index >= 0) & (index <= size - 1), axis=-1)
        hu = ndimage.map_coordinates(sitk.GetArrayFromImage(self.ct).astype(float),
                                     [index[..., 2], index[..., 1], index[..., 0]], order=1, mode="nearest")  # fmt: skip
        grey = np.clip(np.floor((hu - (CT_LEVEL - CT_WINDOW / 2)) * 255.0 / CT_WINDOW), 0, 255)
        nearest = np.clip(np.floor(index + 0.5).astype(int), 0, size - 1)
        fraction = index - np.floor(index)
        unambiguous = np.all(np.abs(fraction - 0.5) > 0.02, axis=-1)
        loss = sitk.GetArrayFromImage(self.loss)[nearest[..., 2], nearest[..., 1], nearest[..., 0]].astype(float)
        labels = sitk.GetArrayFromImage(self.body)[nearest[..., 2], nearest[..., 1], nearest[..., 0]]
        graded = [int(v["label"]) for v in self.report["vertebrae"] if v["status"] == "graded"]
        shown = inside & (loss >= LOSS_SHOWN_FROM)
        low, high = LOSS_RANGE
        entry = np.clip(np.floor((loss - low) * 255.0 / (high - low)), 0, len(self.heat) - 1).astype(int)
        colour = 255.0 * self.heat[entry]
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        rgb = np.where(shown[..., None], self.opacity * colour + (1.0 - self.opacity) * rgb, rgb)
        return {"rgb": rgb, "loss": loss, "shown": shown, "l1": inside & (labels == int(self.l1["label"])),
                "graded_body": inside & np.isin(labels, graded), "inside": inside, "unambiguous": unambiguous}

    def close(self) -> None:
        self.env.close()


@pytest.fixture(scope="module")
def views(fractured_run):
    env = Views(fractured_run, scene.volumes.OVERLAY_OPACITY)
    yield env
    env.close()


def test_slice_view_scene_is_the_graded_fracture_in_slicers_slice_logic(views):
    l1 = views.l1
    assert l1["status"] == "graded" and l1["grade"] >= 2 and l1["rhlv"]["anterior"] > 0.25, l1
    assert set(views.logics) == {"Red", "Yellow", "Green"}
    for view, orientation, normal in (("Red", "Axial", 2), ("Yellow", "Sagittal", 0), ("Green", "Coronal", 1)):
        logic = views.logics[view]
        assert logic.IsA("vtkMRMLSliceLogic") and logic.GetClassName() == "vtkMRMLSliceLogic"
        assert logic.GetImageDataConnection().GetProducer().IsA("vtkImageBlend")  # Slicer's layer blend
        composite = logic.GetSliceCompositeNode()
        assert composite.GetBackgroundVolumeID() == views.ct_node.GetID()
        assert composite.GetForegroundVolumeID() == views.result.height_loss.GetID()
        image = views.images[view]
        assert image.orientation == orientation and image.rgba.shape == (PIXELS, PIXELS, 4)
        # the view's plane passes through the centre of L1 and its pixels are FIELD_OF_VIEW_MM / PIXELS apart
        np.testing.assert_allclose(image.ras((PIXELS - 1) / 2, (PIXELS - 1) / 2), views.centre_ras, atol=FIELD_OF_VIEW_MM / PIXELS)
        ras = image.pixel_grid_ras()
        np.testing.assert_allclose(ras[..., normal], views.centre_ras[normal], atol=1e-6)
        assert np.linalg.norm(ras[0, 1] - ras[0, 0]) == pytest.approx(FIELD_OF_VIEW_MM / PIXELS)


@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_slice_view_ct_unchanged_where_the_loss_is_zero(views, view):
    """Outside the overlay (loss < 1 %, including the rest of the body) each pixel is the CT's grey."""
    rgba = views.images[view].rgba.astype(float)
    e = views.expected(view)
    plain = e["inside"] & ~e["shown"] & e["unambiguous"]
    assert plain.sum() > 0.5 * PIXELS * PIXELS
    assert np.all(rgba[plain][:, 0] == rgba[plain][:, 1]) and np.all(rgba[plain][:, 1] == rgba[plain][:, 2]), "grey"
    difference = np.abs(rgba[..., :3] - e["rgb"])[plain]
    assert difference.max() <= 1.0, f"{(difference > 1).sum()} CT pixels differ from the window/level mapping"
    assert np.std(e["rgb"][plain][:, 0]) > 10, "the view shows anatomy, not a flat colour"
    # transparent over the graded bodies where their loss is 0 (the overlay volume covers them there)
    zero_in_body = plain & e["graded_body"] & (e["loss"] == 0)
    assert zero_in_body.sum() > 50
    assert np.abs(rgba[..., :3] - e["rgb"])[zero_in_body].max() <= 1.0


@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_slice_view_height_loss_in_heat_colours_at_the_opacity_over_the_fractured_body(views, view):
    rgba = views.images[view].rgba.astype(float)
    e = views.expected(view)
    shown = e["shown"] & e["unambiguous"]
    assert shown.sum() > 200, "the overlay must be visible in every view through L1"
    # the overlay lies on the graded vertebral bodies only, and covers most of the fractured L1 in each view
    assert np.all(e["graded_body"][e["shown"]])
    assert np.mean(e["shown"][e["l1"]]) > 0.5
    difference = np.abs(rgba[..., :3] - e["rgb"])[shown]
    assert difference.max() <= BLEND_TOLERANCE, f"{(difference > BLEND_TOLERANCE).sum()} overlay pixels differ from the heat colour blended at the opacity"
    # visibly coloured, not grey: heat runs black -> red -> yellow -> white, so red exceeds blue
    coloured = shown & (e["loss"] > 0.05) & (e["loss"] < 0.45)
    assert coloured.sum() > 50
    assert np.median(rgba[coloured][:, 0] - rgba[coloured][:, 2]) > 20
    # where the wedge is, the loss is large: the anterior third of L1 lost over 25 %
    assert e["loss"][shown].max() > 0.25


def test_slice_view_follows_the_configured_opacity(fractured_run, views):
    """A different overlay opacity changes exactly the overlay pixels, as the blend predicts."""
    views_at_half = views
    env = Views(fractured_run, 0.8)
    try:
        for view in ("Red", "Yellow"):
            rgba = env.images[view].rgba.astype(float)
            e = env.expected(view)
            shown = e["shown"] & e["unambiguous"]
            assert shown.sum() > 200
            assert np.abs(rgba[..., :3] - e["rgb"])[shown].max() <= BLEND_TOLERANCE
            at_half = views_at_half.expected(view)["rgb"]  # the same pixels blended at 0.5 would not match
            assert np.abs(rgba[..., :3] - at_half)[shown].max() > 20
            assert env.logics[view].GetSliceCompositeNode().GetForegroundOpacity() == pytest.approx(0.8)
    finally:
        env.close()
