"""Grading inside the spine's box (pipeline.region): nothing changes but the work done."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk

from HealthiVertLib.geometry.spine import spine_levels
from HealthiVertLib.io.case import load_case
from HealthiVertLib.measure.qc import check_masks
from HealthiVertLib.pipeline.case import grade_case
from HealthiVertLib.pipeline.region import SpineCase, SpineRegion, crop_to_spine
from conftest import SAMPLE_CT, SAMPLE_SEG


def _uncropped(case) -> SpineCase:
    """The case as graded before cropping existed: the whole grid as the region."""
    values = {f.name: getattr(case, f.name) for f in dataclasses.fields(case)}
    return SpineCase(**values, region=SpineRegion.whole(case.seg), levels=spine_levels(case))


def _write_case(tmp_path, seg: sitk.Image, ct: sitk.Image, name: str):
    sitk.WriteImage(seg, str(tmp_path / f"{name}_seg.nii.gz"))
    sitk.WriteImage(ct, str(tmp_path / f"{name}_ct.nii.gz"))
    return load_case(tmp_path / f"{name}_seg.nii.gz", tmp_path / f"{name}_ct.nii.gz")


def _numbers(result) -> list[tuple]:
    return [(v.level, v.status, v.complete, v.grade, v.reason,
             None if v.rhlv is None else [round(x, 6) for x in v.rhlv.values()]) for v in result.vertebrae]


def _vertebra_box(seg: sitk.Image, labels) -> tuple[np.ndarray, np.ndarray]:
    array = np.isin(sitk.GetArrayFromImage(seg), list(labels)).transpose(2, 1, 0)
    nz = np.argwhere(array)
    return nz.min(axis=0), nz.max(axis=0) + 1


@pytest.mark.parametrize("margin", [0, 1, 3])
@pytest.mark.parametrize("padded_side", ["low", "high"])
def test_crop_never_changes_which_vertebrae_are_whole(tmp_path, margin, padded_side):
    """The sample cut to its vertebrae's box plus ``margin`` voxels (0: the outer vertebrae touch the
    borders) and padded with 30 voxels of air on one side of every axis: cropping to the spine's box
    (which removes the air) changes no border contact (mask check), no ``incomplete``/whole verdict
    and no number."""
    full_seg, full_ct = sitk.ReadImage(str(SAMPLE_SEG)), sitk.ReadImage(str(SAMPLE_CT))
    lo, hi = _vertebra_box(full_seg, [v.label for v in spine_levels(load_case(SAMPLE_SEG))])
    lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, full_seg.GetSize())
    size, start = [int(x) for x in hi - lo], [int(x) for x in lo]
    pads = ([30] * 3, [0] * 3) if padded_side == "low" else ([0] * 3, [30] * 3)
    seg = sitk.ConstantPad(sitk.RegionOfInterest(full_seg, size, start), *pads, 0)
    ct = sitk.ConstantPad(sitk.RegionOfInterest(full_ct, size, start), *pads, -1024)
    case = _write_case(tmp_path, seg, ct, f"m{margin}")
    plain, cropped = _uncropped(case), crop_to_spine(case)
    assert cropped.region.voxels < plain.region.voxels  # the crop is real
    before = check_masks(plain.seg, plain.levels).stats
    after = check_masks(cropped.seg, cropped.levels).stats
    touching = {k: s.touches_border for k, s in before.items()}
    assert touching == {k: s.touches_border for k, s in after.items()}
    assert any(touching.values()) == (margin == 0 or padded_side == "low")  # low: T11, T12 reach the top slice
    graded_plain = grade_case(plain, volumes=False)
    graded = grade_case(case, volumes=False)
    assert _numbers(graded) == _numbers(graded_plain)
    whole = {v.level: v.complete for v in graded.vertebrae}
    assert whole["L1"] is True
    if padded_side == "low":  # T12 is cut by the sample's top slice, still the border (air pads the top otherwise)
        assert whole["T12"] is False


def test_padding_the_field_of_view_changes_nothing(tmp_path):
    """The sample padded with 40 voxels of air left, right, in front and behind (not above: that would
    hide the cut of T11 and T12 by its top slice): the same numbers and volumes."""
    seg, ct = sitk.ReadImage(str(SAMPLE_SEG)), sitk.ReadImage(str(SAMPLE_CT))
    pad = [40, 40, 0]
    case = _write_case(tmp_path, sitk.ConstantPad(seg, pad, pad, 0), sitk.ConstantPad(ct, pad, pad, -1024), "padded")
    small, padded = grade_case(load_case(SAMPLE_SEG, SAMPLE_CT)), grade_case(case)
    assert _numbers(padded) == _numbers(small)
    for name in ("loss_volume", "healthy_label_volume", "original_body_volume"):
        big = getattr(padded, name)
        assert big.GetSize() == tuple(n + 2 * p for n, p in zip(seg.GetSize(), pad))
        inner = sitk.GetArrayFromImage(big)[:, 40:-40, 40:-40]
        np.testing.assert_allclose(inner, sitk.GetArrayFromImage(getattr(small, name)), rtol=0, atol=1e-6)
        assert sitk.GetArrayViewFromImage(big).sum(dtype=np.float64) == pytest.approx(inner.sum(dtype=np.float64))


def test_region_crop_and_paste_keep_the_geometry(sample_seg):
    region = SpineRegion.box(sample_seg, (10, 5, 20), (60, 90, 200))  # stop clipped to the image
    assert region.size == (50, 85, 92)
    box = region.crop(sample_seg)
    assert box.TransformIndexToPhysicalPoint((0, 0, 0)) == pytest.approx(
        sample_seg.TransformIndexToPhysicalPoint((10, 5, 20)))
    back = region.paste(box)
    assert back.GetSize() == sample_seg.GetSize() and back.GetOrigin() == sample_seg.GetOrigin()
    full, pasted = sitk.GetArrayViewFromImage(sample_seg), sitk.GetArrayViewFromImage(back)
    assert np.array_equal(pasted[20:, 5:90, 10:60], full[20:, 5:90, 10:60])
    assert not pasted[:20].any() and not pasted[:, :, :10].any()
    base = sitk.Image(sample_seg.GetSize(), sample_seg.GetPixelID()) + 7
    base.CopyInformation(sample_seg)
    into = sitk.GetArrayFromImage(region.paste(box, base))
    assert np.all(into[:20] == 7) and np.array_equal(into[20:, 5:90, 10:60], full[20:, 5:90, 10:60])
