"""Procedural phantom spines: determinism, anatomy, HU, and the pipeline measuring their designed heights."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from HealthiVertLib.app.cli import main
from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.io.grades import read_grade_file, read_grade_splits
from HealthiVertLib.io.case import Case
from HealthiVertLib.io.labels import VERSE, body_labels
from HealthiVertLib.truth.phantom import HU, KIRSCHKE, direction_from_code, make_phantom, parse_levels
from HealthiVertLib.pipeline.case import grade_case
from HealthiVertLib.pipeline.records import GRADED

LUMBAR = ["L1", "L2", "L3", "L4", "L5"]
THIRDS = ("anterior", "middle", "posterior")


@pytest.fixture(scope="module")
def lumbar():
    return make_phantom("L1-L5", spacing=2.0, seed=11)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _grade(phantom, subregions: bool, ct: bool = True):
    case = Case("phantom", phantom.seg, phantom.ct if ct else None, phantom.body if subregions else None, VERSE)
    return {v.level: v for v in grade_case(case, volumes=False).vertebrae}


def _height_errors(phantom, result) -> dict[str, dict[str, float]]:
    """Measured / designed - 1 per level and region."""
    out = {}
    for level, v in result.items():
        designed = phantom.level(level).heights_mm
        out[level] = {k: v.heights_mm["original"][k] / designed[k] - 1 for k in (*THIRDS, "overall")}
    return out


def test_same_seed_same_phantom_other_seed_other_texture(lumbar):
    again = make_phantom("L1-L5", spacing=2.0, seed=11)
    for a, b in ((lumbar.ct, again.ct), (lumbar.seg, again.seg), (lumbar.body, again.body)):
        assert a.GetSize() == b.GetSize() and a.GetDirection() == b.GetDirection()
        assert np.array_equal(_array(a), _array(b))
    assert lumbar.truth() == again.truth()
    other = make_phantom("L1-L5", spacing=2.0, seed=12)
    assert np.array_equal(_array(other.seg), _array(lumbar.seg))  # geometry does not depend on the seed...
    assert not np.array_equal(_array(other.ct), _array(lumbar.ct))  # ... texture and noise do


def test_every_level_present_connected_and_in_cranio_caudal_order():
    phantom = make_phantom("T9-L5", spacing=(1.5, 1.5, 2.5), seed=2, scoliosis_deg=12)
    seg = _array(phantom.seg)
    assert phantom.ct.GetPixelID() == sitk.sitkInt16 and phantom.seg.GetPixelID() == sitk.sitkUInt16
    levels = ["T9", "T10", "T11", "T12", *LUMBAR]
    assert [t.level for t in phantom.levels] == levels
    assert sorted(np.unique(seg)[1:].tolist()) == [VERSE.label_of(lv) for lv in levels] == list(range(16, 25))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(phantom.seg)
    superior = [stats.GetCentroid(VERSE.label_of(lv))[2] for lv in levels]
    assert all(a > b for a, b in zip(superior, superior[1:]))
    for level in levels:
        _, n = ndimage.label(seg == VERSE.label_of(level), structure=np.ones((3, 3, 3)))
        assert n == 1, f"{level} is in {n} pieces"
    heights = [phantom.level(lv).heights_mm["overall"] for lv in levels]
    depths = [phantom.level(lv).depth_mm for lv in levels]
    assert heights[0] < heights[4] < heights[6] and depths == sorted(depths)


def test_healthy_phantom_grades_zero_and_measures_its_designed_heights(lumbar):
    """Labels only (geometric de-pedicle) and with CT + subregions: every vertebra grade 0, heights within a few %."""
    for subregions in (False, True):
        result = _grade(lumbar, subregions)
        assert sorted(result) == LUMBAR
        for level, v in result.items():
            assert v.status == GRADED and v.grade == 0 and v.grade_rule == 0, (level, v.rhlv)
            assert max(v.rhlv[t] for t in THIRDS) < 0.1
        errors = _height_errors(lumbar, result)
        for level, err in errors.items():
            assert abs(err["overall"]) < 0.03, (level, err)
            assert max(abs(err[t]) for t in THIRDS) < 0.05, (level, err)


def test_orientation_and_spacing_do_not_change_the_measured_heights(lumbar):
    reference = {lv: v.heights_mm["original"]["overall"] for lv, v in _grade(lumbar, False, ct=False).items()}
    for kwargs in ({"spacing": (1.5, 1.5, 2.5), "orientation": "RAS", "oblique_deg": 6.0},
                   {"spacing": (2.5, 1.2, 1.2), "orientation": "PIR"}):
        variant = make_phantom("L1-L5", seed=11, **kwargs)
        assert variant.ct.GetDirection() != lumbar.ct.GetDirection()
        measured = _grade(variant, False, ct=False)
        for level, v in measured.items():
            overall = v.heights_mm["original"]["overall"]
            assert v.grade == 0
            assert abs(overall / reference[level] - 1) < 0.03, (kwargs, level, overall, reference[level])
            assert abs(overall / variant.level(level).heights_mm["overall"] - 1) < 0.03


def test_truth_points_are_where_the_bodies_are_in_world_coordinates():
    phantom = make_phantom("L2-L4", spacing=(2.0, 1.5, 1.5), orientation="PIR", oblique_deg=5.0, seed=4)
    body = _array(phantom.body)
    seg = _array(phantom.seg)
    for truth in phantom.levels:
        mask = (seg == truth.label) & np.isin(body, [KIRSCHKE["corpus"], KIRSCHKE["corpus_border"]])
        k, j, i = np.nonzero(mask)
        world = np.array([phantom.seg.TransformIndexToPhysicalPoint([int(a), int(b), int(c)])
                          for a, b, c in zip(i[::7], j[::7], k[::7])])
        assert np.linalg.norm(world.mean(axis=0) - truth.centre_lps) < 1.5
        s_axis = np.array(truth.axes_lps[0])
        assert s_axis[2] < -0.9  # caudal
        extent = (world - truth.centre_lps) @ s_axis
        assert abs(extent.max() - extent.min() - truth.heights_mm["overall"]) < 3.0


def test_hu_ranges_are_plausible():
    phantom = make_phantom("L2-L4", spacing=1.5, seed=5, trabecular_hu=110, noise_hu=0, texture_hu=0)
    ct, sub = _array(phantom.ct).astype(float), _array(phantom.body)
    border = np.median(ct[sub == KIRSCHKE["corpus_border"]])
    corpus = ct[ndimage.binary_erosion(sub == KIRSCHKE["corpus"], iterations=2)]
    disc = ct[ndimage.binary_erosion(sub == KIRSCHKE["disc"], iterations=1)]
    assert border > np.median(corpus) + 100
    assert 80 < np.median(corpus) < 140
    assert np.median(corpus) > np.median(disc) > HU["fat"]
    assert np.mean(np.abs(ct - HU["fat"]) < 10) > 0.01  # subcutaneous fat is there
    assert ct.min() <= -990  # air behind the back
    core = ndimage.binary_erosion(sub == KIRSCHKE["corpus"], iterations=2)
    noisy = make_phantom("L2-L4", spacing=1.5, seed=5)
    assert np.std(ct[core]) < 5 < 15 < np.std(_array(noisy.ct)[core]) < 80  # texture and noise


def test_totalsegmentator_subregions_and_bad_requests():
    phantom = make_phantom("L4-L5", spacing=3.0, seed=1, subregions="totalseg")
    values = np.unique(_array(phantom.body)).tolist()
    assert values == [0, 1, 2] and body_labels(values) == {1}
    assert parse_levels("t11-l2") == ["T11", "T12", "L1", "L2"] and parse_levels("L3") == ["L3"]
    assert np.allclose(direction_from_code("RAS"), np.diag([-1, -1, 1]))
    for bad in ("L5-L1", "C7-T2", "L1-L6"):
        with pytest.raises(HealthiVertError):
            parse_levels(bad)
    with pytest.raises(HealthiVertError):
        direction_from_code("LLS")
    with pytest.raises(HealthiVertError):
        make_phantom("L1-L2", spacing=(1.0, 0.0, 1.0))


def test_simulated_wedge_on_a_phantom_grades_at_least_moderate(lumbar):
    simulate = pytest.importorskip("HealthiVertLib.truth.simulate")
    sim = simulate.simulate_fracture(lumbar.seg, vertebra="L2", kind="wedge", loss=0.35, ct=lumbar.ct,
                                     body=lumbar.body, labels="verse", seed=1)
    case = Case("wedge", sim.seg, sim.ct, sim.body, VERSE)
    result = {v.level: v for v in grade_case(case, volumes=False).vertebrae}
    assert result["L2"].grade >= 2 and result["L2"].grade_rule >= 2
    assert abs(result["L2"].rhlv["anterior"] - 0.35) < 0.05
    assert all(result[lv].grade == 0 for lv in ("L4", "L5"))


def test_dataset_layout_grade_file_and_batch(tmp_path, capsys):
    out = tmp_path / "phantoms"
    assert main(["simulate", "--phantom", "2", "--out", str(out), "--levels", "L2-L5", "--spacing", "3",
                 "--fractures-per-case", "0-1", "--seed", "4", "--progress", "none"]) == 0
    for case in ("phantom-0000", "phantom-0001"):
        for path in (f"rawdata/{case}/{case}_ct.nii.gz", f"derivatives/{case}/{case}_seg-vert_msk.nii.gz",
                     f"derivatives/{case}/{case}_seg-subreg_msk.nii.gz", f"derivatives/{case}/truth.json"):
            assert (out / path).is_file(), path
    grades = read_grade_file(out / "vertebra_data.json")
    splits = read_grade_splits(out / "vertebra_data.json")
    assert len(grades) == 8 and {label for _, label in grades} == {21, 22, 23, 24}
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["case"] for r in rows] == ["phantom-0000", "phantom-0001"]
    for row in rows:
        truth = json.loads((out / "derivatives" / row["case"] / "truth.json").read_text(encoding="utf-8"))
        assert truth["split"] == row["split"] == splits[(row["case"], 21)]
        for level, grade in truth["grades"].items():
            assert grades[(row["case"], VERSE.label_of(level))] == grade
        fractures = (truth["simulation"] or {}).get("fractures", {})
        assert len(fractures) == len(truth["fracture_plan"]) <= 1
        assert [t["level"] for t in truth["phantom"]["levels"]] == ["L2", "L3", "L4", "L5"]
    ct = sitk.ReadImage(str(out / rows[0]["ct"]))
    assert ct.GetPixelID() == sitk.sitkInt16 and np.allclose(ct.GetSpacing(), 3.0)
    results = tmp_path / "results"
    assert main(["batch", str(out / "manifest.csv"), "--out", str(results), "--no-figures", "--progress", "none"]) == 0
    cases = list(csv.DictReader((results / "cases.csv").open()))
    assert [c["status"] for c in cases] == ["done", "done"]
    report = json.loads((results / "phantom-0000" / "report.json").read_text(encoding="utf-8"))
    assert report["inputs"]["subregions"] and report["inputs"]["ct"]
    assert "phantom" in capsys.readouterr().out
