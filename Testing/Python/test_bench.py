"""The accuracy benchmark: abnormality score, reference-free baselines, metrics, grouping, `healthivert bench`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, precision_score, recall_score, roc_auc_score

from HealthiVertLib.evaluation.records import Item, Truth
from HealthiVertLib.measure.heights import own_heights
from HealthiVertLib.evaluation.scoring import subject_folds, height_error_pct, rhlv_error_pp, roc_auc
from HealthiVertLib.evaluation.baselines import MinMaxBaseline, NeighbourBaseline, minmax_loss, neighbour_loss
from HealthiVertLib.app.cli import main
from HealthiVertLib.engines.base import NoContextError
from HealthiVertLib.measure.grading import classification_metrics
from HealthiVertLib.measure.heights import abnormality_score
from HealthiVertLib.io.case import load_case
from HealthiVertLib.geometry.spine import SpineBodies, resolve_targets, spine_levels
from HealthiVertLib.engines.neighbours import gather_neighbours

from conftest import SAMPLE_SEG, TPT_SEG, TPT_SUB


def _heights(a: float, m: float, p: float, overall: float | None = None) -> dict[str, float]:
    return {"anterior": a, "middle": m, "posterior": p, "overall": (a + m + p) / 3 if overall is None else overall}


# ------------------------------------------------------------------------------ abnormality score


def test_abnormality_score_by_hand() -> None:
    healthy = np.zeros((16, 16))
    healthy[2:14, 2:14] = 20.0  # a 12 x 12 mm footprint; the 2 mm rim leaves the central 8 x 8 columns
    assert abnormality_score(healthy, healthy) == 0.0
    assert abnormality_score(0.7 * healthy, healthy) == pytest.approx(30.0)  # uniform 30 % crush
    original = healthy.copy()
    original[4:8, :] *= 0.7  # 30 % loss in the anterior half of the central columns ...
    original[8:12, :] *= 1.2  # ... and taller posterior columns, which do not offset it
    assert abnormality_score(original, healthy) == pytest.approx(15.0)
    # the rim (outside the central 8 x 8) does not count
    rim_only = healthy.copy()
    rim_only[2:4, :] = 0.0
    assert abnormality_score(rim_only, healthy) == 0.0
    assert np.isnan(abnormality_score(healthy, np.zeros((16, 16))))


def test_abnormality_score_in_the_outputs() -> None:
    from HealthiVertLib.pipeline.case import grade_case
    from HealthiVertLib.outputs.html import summary_html
    from HealthiVertLib.outputs.tables import csv_rows, summary_table

    result = grade_case(load_case(SAMPLE_SEG), ["L2", "L3"], volumes=False)
    for v in result.vertebrae:  # healthy lumbar vertebrae
        assert 0 <= v.abnormality_score < 10 and v.to_dict()["abnormality_score"] == v.abnormality_score
    rows = csv_rows(result)
    assert [float(r["abnormality_score"]) for r in rows] == pytest.approx(
        [v.abnormality_score for v in result.vertebrae], abs=1e-4)
    assert "Abn." in summary_table(result) and "Abnormality (0-100)" in summary_html(result)


# ------------------------------------------------------------------------------ baselines


def test_baseline_losses_by_hand() -> None:
    loss = minmax_loss(_heights(15.0, 20.0, 20.0, 18.0))
    assert loss["anterior"] == pytest.approx(0.25) and loss["middle"] == loss["posterior"] == 0.0
    assert loss["overall"] == pytest.approx(0.10)
    # a uniform crush is invisible to min/max
    assert max(minmax_loss(_heights(14.0, 14.0, 14.0)).values()) == pytest.approx(0.0)
    loss = neighbour_loss(_heights(16.5, 22.0, 22.0, 20.0), [_heights(20.0, 20.0, 20.0), _heights(24.0, 24.0, 24.0)])
    assert loss["anterior"] == pytest.approx(0.25) and loss["middle"] == pytest.approx(0.0)
    assert loss["overall"] == pytest.approx(1 - 20.0 / 22.0)


def _bodies_of(case, level):
    levels = spine_levels(case)
    bodies = SpineBodies(case, levels)
    target = resolve_targets(levels, [level])[0]
    return bodies.get(target), gather_neighbours(target, levels, bodies)


def test_baselines_on_real_vertebrae() -> None:
    case = load_case(SAMPLE_SEG)
    body, neighbours = _bodies_of(case, "L3")
    own = own_heights(body).original_mm
    est = MinMaxBaseline().estimate(body, neighbours)
    tallest = max(own["anterior"], own["middle"], own["posterior"])
    assert est.rhlv["middle"] == pytest.approx(1 - own["middle"] / tallest) and est.used == []
    est = NeighbourBaseline().estimate(body, neighbours)
    assert est.used == ["L2", "L4"]  # the nearest usable neighbour on each side
    ref = {n.level: own_heights(n.body).original_mm for n in neighbours}
    expected = 1 - own["anterior"] / ((ref["L2"]["anterior"] + ref["L4"]["anterior"]) / 2)
    assert est.rhlv["anterior"] == pytest.approx(expected)
    assert max(abs(v) for v in est.rhlv.values()) < 0.15  # healthy lumbar vertebrae of one subject
    # TPTBox L3: both neighbours are cut by the field of view -> no reference, like the context engine
    tpt = load_case(TPT_SEG, subregions_path=TPT_SUB)
    body, neighbours = _bodies_of(tpt, "L3")
    with pytest.raises(NoContextError, match="cut by the field of view"):
        NeighbourBaseline().estimate(body, neighbours)
    assert np.isfinite(MinMaxBaseline().estimate(body, neighbours).rhlv["overall"])


# ------------------------------------------------------------------------------ metrics


def test_grade_metrics_match_scikit_learn() -> None:
    y_true = [0, 0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2, 3, 3, 2, 0, 0, 2]
    m = classification_metrics(y_true, y_pred)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(recall_score(y_true, y_pred, average="macro"))
    assert m["quadratic_weighted_kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred, weights="quadratic"))
    assert np.trace(m["confusion_matrix"]) == 7 and np.sum(m["confusion_matrix"]) == 12


def test_error_and_auc_metrics_by_hand() -> None:
    true, pred = _heights(20.0, 20.0, 25.0, 21.0), _heights(21.0, 19.0, 25.0, 21.0)
    err = height_error_pct(pred, true)
    assert err == pytest.approx({"anterior": 5.0, "middle": 5.0, "posterior": 0.0, "overall": 0.0})
    err = rhlv_error_pp(_heights(0.30, 0.10, 0.0, 0.12), _heights(0.25, 0.12, 0.01, 0.13))
    assert err["anterior"] == pytest.approx(5.0) and err["max"] == pytest.approx(5.0)
    labels, scores = [0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_folds_never_test_on_training_subjects() -> None:
    truth = Truth(_heights(20, 20, 20), _heights(0, 0, 0), 0)
    items = [Item("real", s, f"{s}/{k}", "L1", "none", 0.0, truth) for s in ("a", "b", "c") for k in range(3)]
    items += [Item("phantom", f"p{k}", f"p{k}", "L1", "none", 0.0, truth, "train" if k < 2 else "test")
              for k in range(4)]
    folds = subject_folds(items)
    assert len(folds) == 4  # three real subjects held out in turn, then the phantom test half
    subjects = np.array([it.subject for it in items])
    for train, test, _ in folds:
        assert not set(subjects[train]) & set(subjects[test])
    assert set(subjects[folds[-1][1]]) == {"p2", "p3"} and set(subjects[folds[-1][0]]) >= {"a", "b", "c", "p0", "p1"}


# ------------------------------------------------------------------------------ end to end


def test_bench_quick_writes_the_tables(tmp_path, capsys) -> None:
    out = tmp_path / "accuracy.md"
    # the generator engine (when installed) takes tens of seconds per vertebra on a CPU: not here
    args = ["--quick", "--phantoms", "0", "--estimators", "context", "minmax", "neighbours"]
    assert main(["bench", *args, "--progress", "none", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    for name in ("context", "minmax", "neighbours"):
        assert f"| `{name}` |" in text
    assert "leave-one-subject-out" in text and "healthivert bench --quick" in text
    assert (tmp_path / "figures" / "accuracy_real_scatter.png").stat().st_size > 1000
    raw = json.loads((tmp_path / "accuracy.json").read_text(encoding="utf-8"))
    rows = {r["case_id"]: r for r in raw["vertebrae"]}
    assert set(rows) == {"sample-totalsegmentator/L3/none", "sample-totalsegmentator/L3/wedge/0.4",
                         "sample-totalsegmentator/L3/crush/0.4"}
    crush = rows["sample-totalsegmentator/L3/crush/0.4"]
    assert crush["truth"]["grade"] == 3
    context = crush["estimates"]["context"]
    assert context["status"] == "graded" and context["grade_rule"] == 3
    assert abs(context["rhlv"]["overall"] - crush["truth"]["rhlv"]["overall"]) < 0.06
    assert context["abnormality"] > 25  # most of the pseudo-healthy body is missing its top 40 %
    assert rows["sample-totalsegmentator/L3/none"]["estimates"]["context"]["abnormality"] < 10
    assert crush["estimates"]["minmax"]["grade_rule"] == 0  # the baseline cannot see a uniform crush
    assert raw["metrics"]["real"]["context"]["coverage"] == 1.0
