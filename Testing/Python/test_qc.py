"""Mask quality control (measure.qc): every real case passes; each broken mask of the hostile-inputs
issue is caught with a status or a refusal; --no-qc grades anyway with warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, SAMPLE_SEG, TPT_SEG

from HealthiVertLib.app.cli import main
from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.geometry.spine import spine_levels
from HealthiVertLib.io.case import load_case
from HealthiVertLib.measure.qc import check_masks
from HealthiVertLib.pipeline.case import grade_case
from HealthiVertLib.truth.simulate import simulate_fracture

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "verse19"
# TotalSegmentator ``total`` values of the sample: 33 T11 ... 31 L1, 30 L2, 29 L3, 28 L4, 27 L5, 26 S1, 25 sacrum
L1, L2, L3, L4, L5 = 31, 30, 29, 28, 27

REAL_CASES = [
    SAMPLE_SEG,  # TotalSegmentator total, 3 mm, with S1 and the sacrum
    DATA / "totalsegmentator" / "example_seg.nii.gz",
    DATA / "totalsegmentator" / "ts_vertebrae_pp_refined.nii.gz",  # body-only labels
    DATA / "healthivert" / "0007_msk.nii.gz",
    TPT_SEG,
    DATA / "kirschke" / "sub-sample001_seg-vert_msk.nii.gz",  # 0.46 x 0.46 x 3 mm, PSR, T1-L5
    *sorted(BENCH.glob("*_msk.nii.gz")),  # VerSe19 crops; sub-verse009 has seven fractured levels
]


def _qc(path):
    case = load_case(path)
    return check_masks(case.seg, spine_levels(case))


@pytest.mark.parametrize("path", REAL_CASES, ids=lambda p: Path(p).name)
def test_no_real_vertebra_is_rejected(path):
    qc = _qc(path)
    assert qc.findings == {} and qc.numbering is None
    assert qc.stats, "nothing was checked"


def test_simulated_severe_fractures_pass(tmp_path):
    seg = sitk.ReadImage(str(SAMPLE_SEG))
    wedge = simulate_fracture(seg, vertebra="L2", kind="wedge", loss=0.6)
    crush = simulate_fracture(wedge.seg, vertebra="L3", kind="crush", loss=0.5, truth=wedge.truth)
    sitk.WriteImage(crush.seg, str(tmp_path / "seg.nii.gz"))
    qc = _qc(tmp_path / "seg.nii.gz")
    assert qc.passed, (qc.findings, qc.numbering)


# ----------------------------------------------------------------------------- broken masks


@pytest.fixture(scope="module")
def sample():
    image = sitk.ReadImage(str(SAMPLE_SEG))
    return image, sitk.GetArrayFromImage(image)


def _write(tmp_path, sample, array, name="seg.nii.gz") -> Path:
    image = sitk.GetImageFromArray(array.astype(sample[1].dtype))
    image.CopyInformation(sample[0])
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def split_by_gap(a: np.ndarray, label: int) -> np.ndarray:
    """Remove one axial slice through the middle of ``label``."""
    b = a.copy()
    z = int(np.median(np.nonzero(b == label)[0]))
    b[z][b[z] == label] = 0
    return b


def fill_box(a: np.ndarray, label: int) -> np.ndarray:
    """``label`` filled to its bounding box (background voxels only)."""
    b = a.copy()
    z, y, x = np.nonzero(b == label)
    box = np.zeros(b.shape, bool)
    box[z.min():z.max() + 1, y.min():y.max() + 1, x.min():x.max() + 1] = True
    b[box & (b == 0)] = label
    return b


def merge(a: np.ndarray, into: int, *others: int) -> np.ndarray:
    b = a.copy()
    b[np.isin(b, others)] = into
    return b


def _grade(path, **kw):
    return {v.level: v for v in grade_case(load_case(path, labels=kw.pop("labels", None)), volumes=False, **kw).vertebrae}


def test_split_vertebra_is_implausible_and_not_used_as_context(tmp_path, sample):
    result = _grade(_write(tmp_path, sample, split_by_gap(sample[1], L3)))
    l3 = result["L3"]
    assert l3.status == "implausible_mask" and l3.grade is None
    assert "2 separate pieces" in l3.reason
    for level in ("L1", "L2", "L4", "L5"):
        assert result[level].status == "graded"
        rejected = {c["level"]: c["rejected"] for c in result[level].context if "rejected" in c}
        assert rejected.get("L3", "").startswith("implausible mask")
        assert not any(c.get("level") == "L3" and "weight" in c for c in result[level].context)


def test_box_filled_neighbour_is_implausible(tmp_path, sample):
    result = _grade(_write(tmp_path, sample, fill_box(sample[1], L2)))
    assert result["L2"].status == "implausible_mask"
    assert result["L1"].status == result["L3"].status == "graded"


def test_merged_labels_are_implausible_and_the_missing_levels_named(tmp_path, sample):
    result = _grade(_write(tmp_path, sample, merge(sample[1], L3, L2, L4)))
    assert result["L3"].status == "implausible_mask"
    assert "L2 and L4, next to it, are missing" in result["L3"].reason
    assert "L2" not in result and "L4" not in result


def test_reversed_numbering_is_refused_naming_the_order(tmp_path, sample, capsys):
    a = sample[1].copy()
    spine = (a >= 26) & (a <= 33)
    a[spine] = 59 - a[spine]
    path = _write(tmp_path, sample, a)
    rc = main(["grade", "--seg", str(path), "--labels", "totalseg", "--all", "--out", str(tmp_path / "out"),
               "--progress", "none", "--no-figures"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "out of anatomical order" in err and "S1 (26), L5 (27)" in err and "--no-qc" in err
    assert not (tmp_path / "out").exists()


def test_no_qc_grades_anyway_with_warnings(tmp_path, sample, capsys):
    a = sample[1].copy()
    spine = (a >= 26) & (a <= 33)
    a[spine] = 59 - a[spine]
    path = _write(tmp_path, sample, a)
    out = tmp_path / "out"
    rc = main(["grade", "--seg", str(path), "--labels", "totalseg", "--all", "--out", str(out),
               "--progress", "none", "--no-figures", "--no-qc"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert any("--no-qc" in w for w in report["warnings"])
    assert any("out of anatomical order" in w for w in report["warnings"])
    assert "Warning: mask quality checks skipped" in capsys.readouterr().out
    assert "Warning: mask quality checks skipped" in (out / "index.html").read_text(encoding="utf-8")


def test_no_qc_keeps_the_finding_on_the_vertebra(tmp_path, sample):
    result = _grade(_write(tmp_path, sample, split_by_gap(sample[1], L3)), qc=False)
    assert result["L3"].status == "graded" and result["L3"].grade is not None
    assert any("2 separate pieces" in w for w in result["L3"].warnings)


def test_numbering_shifted_onto_the_sacrum_is_refused(tmp_path, sample):
    """A dataset.json one level off: the sacrum (25) is called S1, S1 (26) L5, ... (the sacrum graded as L5)."""
    names = {25: "vertebrae_S1", 26: "vertebrae_L5", 27: "vertebrae_L4", 28: "vertebrae_L3", 29: "vertebrae_L2",
             30: "vertebrae_L1", 31: "vertebrae_T12", 32: "vertebrae_T11"}
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {name: value for value, name in names.items()}}), encoding="utf-8")
    case = load_case(_write(tmp_path, sample, sample[1]), labels=dataset)
    with pytest.raises(HealthiVertError, match="size of a sacrum.*shifted by a level"):
        grade_case(case, volumes=False)


def test_numbering_that_skips_a_level_is_refused(tmp_path, sample):
    """L3 missing from the numbering: the real L4 is called L3, L5 L4 (every level below shifted)."""
    a = sample[1].copy()
    shifted = a.copy()
    shifted[a == L3] = 0
    for real, called in ((L4, L3), (L5, L4), (26, L5)):
        shifted[a == real] = called
    case = load_case(_write(tmp_path, sample, shifted))
    with pytest.raises(HealthiVertError, match="L2 and L3 are .* apart.*skips a vertebra"):
        grade_case(case, volumes=False)


MUTATIONS = {
    "gap L1": lambda a: split_by_gap(a, L1),
    "gap L4": lambda a: split_by_gap(a, L4),
    "box L3": lambda a: fill_box(a, L3),
    "box L5": lambda a: fill_box(a, L5),
    "merge L2+L3": lambda a: merge(a, L2, L3),
    "merge L3+L4+L5": lambda a: merge(a, L4, L3, L5),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_no_severe_grade_without_a_warning_on_a_broken_healthy_spine(tmp_path, sample, name):
    """Property: on the healthy sample made implausible in any of these ways, a grade >= 2 never
    appears without a QC status or a warning."""
    try:
        result = _grade(_write(tmp_path, sample, MUTATIONS[name](sample[1])))
    except HealthiVertError:
        return  # refused outright: no grade at all
    assert any(v.status == "implausible_mask" for v in result.values()), "the broken mask was not caught"
    for v in result.values():
        if v.grade is not None and v.grade >= 2:
            assert v.warnings or v.status != "graded", f"{v.level} graded {v.grade} without a warning"


@pytest.mark.parametrize("kind", ["erode", "dilate", "boundary_1"])
def test_real_masks_perturbed_like_other_segmentations_pass(kind):
    """One voxel of difference at the boundary (2 mm slices here) is no reason to reject a vertebra:
    eroding sub-verse009 detaches T6's arch from its body at the pedicles, which is not a split."""
    from HealthiVertLib.evaluation.stability import perturbed_case

    case = perturbed_case(load_case(BENCH / "sub-verse009_seg-vert_msk.nii.gz"), kind)
    qc = check_masks(case.seg, spine_levels(case))
    assert qc.passed, (qc.findings, qc.numbering)
