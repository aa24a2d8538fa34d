"""The fracture simulator on real vertebrae: its truth, its physics, its CLI, and the counterfactuals."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_BODY, SAMPLE_CT, SAMPLE_SEG, TPT_CT, TPT_SEG, TPT_SUB, sha256

from HealthiVertLib.app import cli
from HealthiVertLib.engines.base import HealthyPrediction
from HealthiVertLib.geometry.body import build_body
from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.io.case import load_case
from HealthiVertLib.io.images import read_ct, read_label_map
from HealthiVertLib.pipeline.case import grade_case
from HealthiVertLib.outputs.report import write_outputs
from HealthiVertLib.pipeline.records import GRADED
from HealthiVertLib.measure.fracture_model import AFFECTED_REGION
from HealthiVertLib.measure.counterfactuals import COUNTERFACTUAL_LOSSES
from HealthiVertLib.truth.simulate import genant_grade, simulate_fracture, truth_heights_on, write_simulated

TPT_LABEL, SAMPLE_L3 = 22, 29  # L3 in VerSe (TPTBox) and TotalSegmentator (sample) numbering


class TruthEngine:
    """Pseudo-healthy engine that returns the simulator's stored pre-fracture heights (an oracle)."""

    name = "truth"

    def __init__(self, truth: dict):
        self.by_label = {f["label"]: f for f in truth["fractures"].values()}

    def predict(self, target, neighbours):
        return HealthyPrediction(build_body(target, truth_heights_on(target, self.by_label[target.label])))


@pytest.fixture(scope="module")
def tpt():
    return {"seg": read_label_map(TPT_SEG, "labels"), "ct": read_ct(TPT_CT), "body": read_label_map(TPT_SUB, "sub")}


@pytest.fixture(scope="module")
def sample():
    return {"seg": read_label_map(SAMPLE_SEG, "labels"), "ct": read_ct(SAMPLE_CT), "body": read_label_map(SAMPLE_BODY, "b")}


def _array(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def _measured(sim, tmp_path, level: str, name: str = "sim") -> dict:
    """RHLV of ``level`` measured by the full pipeline on the written files, against the truth."""
    out = tmp_path / name
    write_simulated(sim, out)
    case = load_case(out / "seg.nii.gz", out / "ct.nii.gz" if sim.ct else None,
                     out / "body.nii.gz" if sim.body else None)
    v = grade_case(case, [level], engine=TruthEngine(sim.truth), volumes=False).vertebrae[0]
    assert v.status == GRADED, v.reason
    return v.rhlv


@pytest.mark.parametrize("data", ["tpt", "sample"])
@pytest.mark.parametrize("kind", ["wedge", "biconcave", "crush"])
def test_requested_loss_is_measured_against_the_pre_fracture_shape(data, kind, tpt, sample, tmp_path, request):
    """30 % of the affected region, measured by the pipeline (new frame, re-extracted body) +-2 points."""
    inputs = {"tpt": tpt, "sample": sample}[data]
    sim = simulate_fracture(inputs["seg"], vertebra="L3", kind=kind, loss=0.30, ct=inputs["ct"], body=inputs["body"])
    region = AFFECTED_REGION[kind]
    truth = sim.truth["fractures"]["L3"]
    assert truth["rhlv"][region] == pytest.approx(0.30, abs=0.01)
    assert truth["genant_grade"] == 2 and truth["requested_loss"] == 0.30 and truth["kind"] == kind
    rhlv = _measured(sim, tmp_path, "L3")
    assert rhlv[region] == pytest.approx(0.30, abs=0.02), rhlv
    if kind == "wedge":
        assert rhlv["posterior"] < 0.08 and rhlv["anterior"] > rhlv["middle"] > rhlv["posterior"]
    if kind == "biconcave":
        assert rhlv["middle"] > max(rhlv["anterior"], rhlv["posterior"]) + 0.12
    if kind == "crush":
        assert min(rhlv[t] for t in ("anterior", "middle", "posterior")) > 0.22


def test_context_engine_grades_a_45_percent_crush_severe_and_leaves_neighbours(sample, tmp_path):
    sim = simulate_fracture(sample["seg"], vertebra="L3", kind="crush", loss=0.45, ct=sample["ct"], seed=3)
    write_simulated(sim, tmp_path)
    before = {v.level: v for v in grade_case(load_case(SAMPLE_SEG), engine="context", volumes=False).vertebrae}
    after = {v.level: v for v in grade_case(load_case(tmp_path / "seg.nii.gz", tmp_path / "ct.nii.gz"), engine="context",
                                            volumes=False).vertebrae}
    assert after["L3"].grade == 3 and after["L3"].grade_rule == 3
    assert after["L3"].rhlv["overall"] == pytest.approx(0.45, abs=0.05)
    seg0, seg1 = _array(sample["seg"]), _array(sim.seg)
    for level, label in (("L2", 30), ("L4", 28), ("L5", 27)):
        assert after[level].grade == before[level].grade == 0
        assert np.array_equal(seg1 == label, seg0 == label)  # voxel for voxel
        # their voxels are identical; the measured heights move only with the spine curve, refitted
        # through L3's new centroid (up to ~1 mm on 3 mm voxels)
        for region, mm in before[level].heights_mm["original"].items():
            assert after[level].heights_mm["original"][region] == pytest.approx(mm, rel=0.05)
    assert sim.truth["healthy_levels"] == ["L1", "L2", "L4", "L5"]
    assert sim.truth["incomplete_levels"] == ["T11", "T12"]


def test_ct_of_the_compressed_body_is_denser_and_unchanged_elsewhere(tpt):
    seg0, ct0 = _array(tpt["seg"]), _array(tpt["ct"])
    body0 = np.isin(_array(tpt["body"]), [49, 50]) & (seg0 == TPT_LABEL)
    sim = simulate_fracture(tpt["seg"], vertebra="L3", kind="crush", loss=0.4, ct=tpt["ct"], body=tpt["body"])
    seg1, ct1 = _array(sim.seg), _array(sim.ct)
    body1 = np.isin(_array(sim.body), [49, 50]) & (seg1 == TPT_LABEL)
    assert body1.sum() < 0.75 * body0.sum()
    assert ct1[body1].mean() > ct0[body0].mean() + 50  # compacted trabecular bone
    assert ct1[body1].max() <= np.percentile(ct0[seg0 == TPT_LABEL], 99.5) + 1e-3  # capped
    changed = (ct1 != ct0) | (seg1 != seg0)
    assert not changed[np.isin(seg0, [21, 23])].any()  # neighbours untouched
    ks, js, is_ = np.nonzero(body0)
    far = np.ones_like(changed)
    far[max(ks.min() - 8, 0) : ks.max() + 9, max(js.min() - 8, 0) : js.max() + 9, max(is_.min() - 8, 0) : is_.max() + 9] = False
    assert changed.any() and not changed[far].any()
    vacated = body0 & ~body1  # the disc (background in the vertebra map) fills it; a few pedicle voxels at the rim
    assert (seg1[vacated] == 0).mean() > 0.99
    assert not np.isin(_array(sim.body)[vacated & (seg1 != 0)], [49, 50]).any()  # both maps stay consistent


def test_posterior_elements_are_unchanged(tpt):
    seg0, sub0 = _array(tpt["seg"]), _array(tpt["body"])
    sim = simulate_fracture(tpt["seg"], vertebra="L3", kind="wedge", loss=0.5, body=tpt["body"])
    seg1, sub1 = _array(sim.seg), _array(sim.body)
    arch = (seg0 == TPT_LABEL) & (sub0 >= 41) & (sub0 <= 48)
    assert arch.sum() > 1000 and (seg1[arch] == TPT_LABEL).mean() > 0.98 and (sub1[arch] == sub0[arch]).mean() > 0.98


def test_deterministic_for_a_seed(tpt):
    a = simulate_fracture(tpt["seg"], vertebra="L3", kind="wedge", loss=0.3, ct=tpt["ct"], seed=7)
    b = simulate_fracture(tpt["seg"], vertebra="L3", kind="wedge", loss=0.3, ct=tpt["ct"], seed=7)
    c = simulate_fracture(tpt["seg"], vertebra="L3", kind="wedge", loss=0.3, ct=tpt["ct"], seed=8)
    assert np.array_equal(_array(a.seg), _array(b.seg)) and np.array_equal(_array(a.ct), _array(b.ct))
    assert json.dumps(a.truth) == json.dumps(b.truth)
    assert not np.array_equal(_array(a.ct), _array(c.ct))


def test_two_fractures_keep_both_truths(sample, tmp_path):
    first = simulate_fracture(sample["seg"], vertebra="L1", kind="wedge", loss=0.3, body=sample["body"], seed=1)
    second = simulate_fracture(first.seg, vertebra="L3", kind="biconcave", loss=0.3, body=first.body, seed=2,
                               truth=first.truth)
    assert set(second.truth["fractures"]) == {"L1", "L3"}
    assert second.truth["fractures"]["L1"] == first.truth["fractures"]["L1"]
    assert "L1" not in first.truth["healthy_levels"] and "L3" in first.truth["healthy_levels"]
    assert second.truth["healthy_levels"] == ["L2", "L4", "L5"]
    out = tmp_path / "two"
    write_simulated(second, out)
    case = load_case(out / "seg.nii.gz", subregions_path=out / "body.nii.gz")
    result = {v.level: v for v in grade_case(case, ["L1", "L3"], engine=TruthEngine(second.truth), volumes=False).vertebrae}
    assert result["L1"].rhlv["anterior"] == pytest.approx(0.3, abs=0.02)
    assert result["L3"].rhlv["middle"] == pytest.approx(0.3, abs=0.02)


def test_fracturing_a_level_twice_accumulates_against_the_original(tpt):
    once = simulate_fracture(tpt["seg"], vertebra="L3", kind="crush", loss=0.2)
    twice = simulate_fracture(once.seg, vertebra="L3", kind="crush", loss=0.2, truth=once.truth, seed=1)
    entry = twice.truth["fractures"]["L3"]
    assert len(entry["applied"]) == 2
    assert entry["pre_fracture"] == once.truth["fractures"]["L3"]["pre_fracture"]
    assert entry["rhlv"]["overall"] == pytest.approx(1 - 0.8 * 0.8, abs=0.02)
    assert entry["genant_grade"] == 2


def test_mask_only(sample, tmp_path):
    sim = simulate_fracture(sample["seg"], vertebra="L3", kind="wedge", loss=0.35)
    assert sim.ct is None and sim.body is None
    assert sim.truth["fractures"]["L3"]["genant_grade"] == 2
    write_simulated(sim, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["seg.nii.gz", "truth.json"]
    assert _measured(sim, tmp_path, "L3", "m2")["anterior"] == pytest.approx(0.35, abs=0.02)


def test_inputs_are_not_modified(tpt):
    arrays = {k: _array(v) for k, v in tpt.items()}
    simulate_fracture(tpt["seg"], vertebra="L3", kind="crush", loss=0.3, ct=tpt["ct"], body=tpt["body"])
    assert all(np.array_equal(arrays[k], _array(v)) for k, v in tpt.items())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"vertebra": "X9"}, "not a vertebra level"),
        ({"vertebra": "T5"}, "not in the label map"),
        ({"vertebra": "L2"}, "field of view"),
        ({"loss": 0.0}, "outside (0, 0.8]"),
        ({"loss": 0.85}, "outside (0, 0.8]"),
        ({"loss": float("nan")}, "outside (0, 0.8]"),
        ({"kind": "burst"}, "Unknown fracture type"),
    ],
)
def test_bad_requests_are_refused(tpt, kwargs, message):
    args = {"vertebra": "L3", "kind": "wedge", "loss": 0.3, **kwargs}
    with pytest.raises(HealthiVertError, match=re.escape(message)):
        simulate_fracture(tpt["seg"], ct=tpt["ct"], **args)


def test_ct_on_another_grid_is_refused(tpt):
    ct = sitk.Image(tpt["ct"])
    ct.SetSpacing((1.0, 1.0, 1.0))
    with pytest.raises(HealthiVertError, match="voxel grid"):
        simulate_fracture(tpt["seg"], vertebra="L3", kind="wedge", loss=0.3, ct=ct)


def test_genant_grade_thresholds():
    assert [genant_grade(x) for x in (0.1, 0.199, 0.2, 0.249, 0.25, 0.35, 0.399, 0.4, 0.8)] == [0, 0, 1, 1, 2, 2, 2, 3, 3]
    with pytest.raises(HealthiVertError):
        genant_grade(math.nan)


def test_cli_simulate_end_to_end(tmp_path, capsys):
    before = {p: sha256(p) for p in (TPT_SEG, TPT_CT, TPT_SUB)}
    out = tmp_path / "sim"
    rc = cli.main(["simulate", "--seg", str(TPT_SEG), "--ct", str(TPT_CT), "--body", str(TPT_SUB),
                   "--vertebra", "L3", "--type", "wedge", "--loss", "0.3", "--seed", "4", "--out", str(out),
                   "--progress", "none"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["body.nii.gz", "ct.nii.gz", "seg.nii.gz", "truth.json"]
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    l3 = truth["fractures"]["L3"]
    assert l3["kind"] == "wedge" and l3["seed"] == 4 and l3["verse_label"] == 22 and l3["genant_grade"] == 2
    assert l3["rhlv"]["anterior"] == pytest.approx(0.3, abs=0.01)
    grid = l3["pre_fracture"]["column_heights"]
    assert np.array(grid["heights_mm"]).shape == tuple(grid["shape"]) and np.max(grid["heights_mm"]) > 20
    assert set(l3["pre_fracture"]["heights_mm"]) == {"anterior", "middle", "posterior", "overall"}
    assert truth["levels_present"] == ["L2", "L3", "L4"] and truth["healthy_levels"] == []
    seg = sitk.ReadImage(str(out / "seg.nii.gz"))
    assert seg.GetSize() == sitk.ReadImage(str(TPT_SEG)).GetSize()
    assert "Genant grade 2" in capsys.readouterr().out
    # the LEVEL:TYPE:LOSS form; a bad request exits 2 and leaves the inputs alone
    assert cli.main(["simulate", "--seg", str(TPT_SEG), "--fracture", "L3:crush:0.2", "--out", str(tmp_path / "f"),
                     "--progress", "none"]) == 0
    assert json.loads((tmp_path / "f" / "truth.json").read_text(encoding="utf-8"))["fractures"]["L3"]["kind"] == "crush"
    for bad in (["--fracture", "L3:crush"], ["--vertebra", "L3", "--type", "crush", "--loss", "0.9"], ["--vertebra", "L4",
                "--type", "crush", "--loss", "0.3"], []):
        assert cli.main(["simulate", "--seg", str(TPT_SEG), *bad, "--out", str(tmp_path / "bad"), "--progress", "none"]) == 2
    assert cli.main(["simulate", "--fracture", "L3:crush:0.2", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert before == {p: sha256(p) for p in before}


def test_counterfactuals(tmp_path):
    result = grade_case(load_case(SAMPLE_SEG, SAMPLE_CT), ["L3"], counterfactuals=True)
    v = result.vertebrae[0]
    series = v.counterfactuals
    assert series["kind"] in AFFECTED_REGION and set(series["grades"]) == {"0", "1", "2", "3"}
    region = series["affected_region"]
    losses = [series["grades"][str(g)]["rhlv"][region] for g in range(4)]
    assert losses == sorted(losses) and losses[0] == pytest.approx(0.0, abs=1e-6)
    for g in (1, 2, 3):
        assert losses[g] == pytest.approx(COUNTERFACTUAL_LOSSES[g], abs=0.01)
        assert genant_grade(losses[g]) == g
    files = write_outputs(result, tmp_path)
    sizes = []
    for g in range(4):
        name = series["grades"][str(g)]["file"]
        img = sitk.ReadImage(str(files[name]))
        sizes.append(int((sitk.GetArrayViewFromImage(img) == SAMPLE_L3).sum()))
    assert sizes == sorted(sizes, reverse=True) and sizes[3] > 0
    assert files["figures/L3_counterfactuals.png"].stat().st_size > 1000
    report = json.loads(files["report.json"].read_text(encoding="utf-8"))
    assert report["vertebrae"][0]["counterfactuals"]["grades"]["3"]["file"] == "counterfactual_grade3_label.nii.gz"
