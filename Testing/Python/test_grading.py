"""Tests of HealthiVertLib.measure.grading: numpy SVM vs scikit-learn, grader files, Genant rule, grade files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.measure.graders import load_default_grader, load_grader
from HealthiVertLib.measure.thresholds import ThresholdGrader
from HealthiVertLib.measure.grading import GRADER_FEATURES, SVMGrader, genant_rule
from HealthiVertLib.io.grades import read_grade_file, read_grade_splits
from HealthiVertLib.training.grader import train_from_tables

DATA = Path(__file__).resolve().parents[1] / "Data" / "healthivert"


def _random_set(classes: tuple[int, ...], n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random features with some class signal, labels drawn from ``classes``, 10 rows per subject."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, size=n)
    X = rng.normal(size=(n, 3)) * [0.05, 0.04, 0.03] + 0.08 * y[:, None] * rng.uniform(0.5, 1.5, (n, 1))
    groups = np.asarray([f"s{i // 10}" for i in range(n)])
    return X, y, groups


@pytest.mark.parametrize("classes", [(0, 1, 2, 3), (0, 1, 3), (1, 3)])
def test_numpy_matches_sklearn(classes: tuple[int, ...]) -> None:
    X, y, groups = _random_set(classes)
    grader = SVMGrader(C=0.7).fit(X, y, groups=groups)
    reference = make_pipeline(
        StandardScaler(), SVC(kernel="linear", class_weight="balanced", C=0.7, decision_function_shape="ovo")
    ).fit(X, y)
    X_test = np.random.default_rng(1).normal(size=(2000, 3)) * 0.2 + 0.1
    np.testing.assert_array_equal(grader.predict(X_test), reference.predict(X_test))
    ref_dec = reference.decision_function(X_test).reshape(len(X_test), -1)
    np.testing.assert_allclose(grader.decision_function(X_test), ref_dec, rtol=0, atol=1e-9)
    proba = grader.predict_proba(X_test)
    assert proba.shape == (len(X_test), 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    absent = [g for g in range(4) if g not in classes]
    assert np.all(proba[:, absent] == 0)
    assert set(grader.predict(X_test)) <= set(classes)


def test_calibration_matches_sklearn_logistic() -> None:
    X, y, groups = _random_set((0, 1, 2, 3), seed=3)
    grader = SVMGrader().fit(X, y, groups=groups)
    dec = grader.decision_function(X)
    lr = LogisticRegression()
    lr.classes_ = grader.calibration_classes_
    lr.coef_, lr.intercept_ = grader.calibration_coef_, grader.calibration_intercept_
    np.testing.assert_allclose(grader.predict_proba(X), lr.predict_proba(dec), atol=1e-12)


def test_fit_records_cv_metrics() -> None:
    X, y, groups = _random_set((0, 1, 2, 3), seed=4)
    cv = SVMGrader().fit(X, y, groups=groups).training["cv"]
    assert np.asarray(cv["confusion_matrix"]).sum() == len(y)
    for key in ("macro_precision", "macro_recall", "macro_f1", "quadratic_weighted_kappa", "accuracy"):
        assert -1.0 <= cv[key] <= 1.0
    assert "Group" in cv["scheme"]
    assert "Stratified" in SVMGrader().fit(X, y).training["cv"]["scheme"]


def test_json_round_trip(tmp_path: Path) -> None:
    X, y, groups = _random_set((0, 1, 3), seed=5)
    grader = SVMGrader(C=2.0, features=("rhlv_anterior", "rhlv_middle", "rhlv_overall")).fit(X, y, groups=groups)
    path = tmp_path / "g.json"
    grader.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "healthivert-svm-grader" and data["version"] == 1
    assert data["classes"] == [0, 1, 3] and data["features"][2] == "rhlv_overall"
    loaded = SVMGrader.load(path)
    assert loaded.C == 2.0 and loaded.features == grader.features
    np.testing.assert_array_equal(loaded.predict(X), grader.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), grader.predict_proba(X))
    assert loaded.to_dict() == data


def _damage(data: dict, how: str) -> str:
    if how == "truncated":
        return json.dumps(data)[:200]
    if how == "format":
        data["format"] = "something-else"
    elif how == "shape":
        data["svm"]["coef"] = data["svm"]["coef"][:-1]
    elif how == "nan":
        data["scaler"]["mean"][0] = float("nan")
    elif how == "classes":
        data["classes"] = [0, 7]
    elif how == "list":
        return "[1, 2, 3]"
    return json.dumps(data)


@pytest.fixture(scope="module")
def fitted_dict() -> dict:
    X, y, groups = _random_set((0, 1, 2, 3), seed=6)
    return SVMGrader().fit(X, y, groups=groups).to_dict()


@pytest.mark.parametrize("how", ["truncated", "format", "shape", "nan", "classes", "list"])
def test_damaged_grader_files(tmp_path: Path, how: str, fitted_dict: dict) -> None:
    path = tmp_path / "g.json"
    path.write_text(_damage(json.loads(json.dumps(fitted_dict)), how), encoding="utf-8")
    with pytest.raises(HealthiVertError, match="is damaged or not a HealthiVert grader"):
        SVMGrader.load(path)


def test_missing_grader_file(tmp_path: Path) -> None:
    with pytest.raises(HealthiVertError, match="does not exist"):
        SVMGrader.load(tmp_path / "none.json")


def test_unfitted_and_bad_input() -> None:
    with pytest.raises(HealthiVertError, match="not fitted"):
        SVMGrader().predict([[0.0, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    grader = SVMGrader(C=1.0, features=GRADER_FEATURES).fit(
        np.vstack([rng.uniform(lo, lo + 0.05, (8, 4)) for lo in (0.0, 0.2, 0.3, 0.45)]), np.repeat([0, 1, 2, 3], 8))
    with pytest.raises(HealthiVertError, match="shape"):
        grader.predict([[0.0, 0.0]])
    with pytest.raises(HealthiVertError, match="missing"):
        grader.predict([[0.0, np.nan, 0.0, 0.0]])
    with pytest.raises(HealthiVertError, match="middle"):
        grader.grade({"anterior": 0.1, "posterior": 0.0})
    with pytest.raises(HealthiVertError, match="point height loss"):
        load_default_grader().grade({"point_loss_anterior": 0.1, "point_loss_posterior": 0.0})
    with pytest.raises(HealthiVertError, match="one grade"):
        SVMGrader().fit(np.zeros((20, 3)), np.zeros(20, dtype=int))


@pytest.mark.parametrize(
    "loss, grade",
    [(0.0, 0), (0.199, 0), (0.20, 1), (0.249, 1), (0.25, 2), (0.399, 2), (0.40, 3), (0.9, 3)],
)
def test_genant_rule_boundaries(loss: float, grade: int) -> None:
    assert genant_rule({"anterior": loss, "middle": 0.0, "posterior": 0.0})[0] == grade
    assert genant_rule({"rhlv_anterior": 0.0, "rhlv_middle": loss, "rhlv_posterior": 0.0})[0] == grade


def test_genant_rule_confidence() -> None:
    near = genant_rule({"anterior": 0.399, "middle": 0.1, "posterior": 0.0})[1]
    far = genant_rule({"anterior": 0.02, "middle": 0.01, "posterior": 0.0})[1]
    assert 0.5 <= near < 0.55 and far > 0.99
    assert genant_rule({"anterior": 0.1, "middle": 0.1, "posterior": 0.1, "overall": 0.3})[0] == 2
    assert genant_rule({"anterior": 0.1 + 0.1 + 0.05, "middle": 0.0, "posterior": 0.0})[0] == 2
    with pytest.raises(HealthiVertError):
        genant_rule({"anterior": float("nan")})


def test_default_grader() -> None:
    grader = load_default_grader()
    assert isinstance(grader, ThresholdGrader) and grader.features == ["point_loss_max"]
    # fitted on radiologists' grades of real vertebrae (scripts/fit_default_grader.py), and it says so
    assert "VerSe19" in grader.training["data"]["description"] and "radiologists" in grader.training["data"]["description"]
    assert grader.training["n_samples"] == 30 and "command" in grader.training
    t1, t2, t3 = grader.thresholds
    assert 0.05 < t1 < 0.20 and (t2, t3) == (0.25, 0.40)  # only the grade-1 threshold was fitted
    points = lambda a, m, p: {"point_loss_anterior": a, "point_loss_middle": m, "point_loss_posterior": p}  # noqa: E731
    normal = grader.grade(points(0.02, 0.01, 0.0))
    severe = grader.grade(points(0.55, 0.3, 0.05))
    assert normal[0] == 0 and severe[0] == 3 and 0.5 < severe[1] <= 1
    assert abs(sum(severe[2]) - 1.0) < 1e-9 and abs(sum(normal[2]) - 1.0) < 1e-9
    assert grader.grade(points(0.05, 0.30, 0.05))[0] == 2  # the largest loss decides (biconcave)
    assert grader.grade(points(0.0, t1 + 0.005, 0.0))[0] == 1 and grader.grade(points(0.0, t1 - 0.005, 0.0))[0] == 0


def test_threshold_grader_fits_only_what_the_data_can_support(tmp_path: Path) -> None:
    scores = [0.01, 0.03, 0.05, 0.08, 0.12, 0.14, 0.16, 0.30, 0.33]
    truth = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    g = ThresholdGrader("point_loss_max", fit_grades=(1, 2, 3)).fit(scores, truth)
    assert 0.08 < g.thresholds[0] < 0.12  # between the last grade 0 and the first grade 1
    assert 0.16 < g.thresholds[1] < 0.30 and g.thresholds[2] == 0.40  # no grade 3: Genant's 40 % stays
    assert g.training["thresholds_fitted"] == {"1": True, "2": True, "3": False}
    assert [g.grade({"point_loss_max": s})[0] for s in scores] == truth
    assert g.grade({"point_loss_max": 0.9})[0] == 3  # monotone: a larger loss never gets a lower grade
    g.save(tmp_path / "t.json")
    again = load_grader(tmp_path / "t.json")
    assert isinstance(again, ThresholdGrader) and again.thresholds == pytest.approx(g.thresholds, abs=1e-6)
    for broken in ({"format": "healthivert-threshold-grader", "version": 1, "features": ["point_loss_max"],
                    "thresholds": [0.3, 0.2, 0.4]},
                   {"format": "healthivert-threshold-grader", "version": 1, "features": ["x"],
                    "thresholds": [0.1, 0.2, 0.4]},
                   {"format": "something else"}):
        (tmp_path / "bad.json").write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(HealthiVertError, match="grader"):
            load_grader(tmp_path / "bad.json")
    (tmp_path / "nan.json").write_text('{"format": "healthivert-threshold-grader", "thresholds": [NaN, 0.25, 0.4]}', encoding="utf-8")
    with pytest.raises(HealthiVertError):
        load_grader(tmp_path / "nan.json")


def test_read_real_grade_file() -> None:
    grades = read_grade_file(DATA / "vertebra_data.json")
    assert len(grades) == 1460
    assert len({subject for subject, _ in grades}) == 153
    counts = np.bincount(list(grades.values()), minlength=4)
    assert counts.tolist() == [1172, 141, 96, 51]
    assert grades[("sub-verse004", 16)] == 2
    splits = read_grade_splits(DATA / "vertebra_data.json")
    assert set(splits.values()) == {"train", "val", "test"} and splits[("sub-verse004", 16)] == "train"


def test_read_flat_and_bad_grade_files(tmp_path: Path) -> None:
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"sub-gl_003_a_20": 1, "x_1": 0}), encoding="utf-8")
    assert read_grade_file(flat) == {("sub-gl_003_a", 20): 1, ("x", 1): 0}
    assert read_grade_splits(flat) == {("sub-gl_003_a", 20): "", ("x", 1): ""}
    for content, key in [({"train": {"sub-a_1": 5}}, "sub-a_1"), ({"nounderscore": 1}, "nounderscore"),
                         ({"sub-a_L1": 1}, "sub-a_L1"), ({"sub-b_2": "2"}, "sub-b_2")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(HealthiVertError, match=key):
            read_grade_file(bad)
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(HealthiVertError, match="not readable JSON"):
        read_grade_file(tmp_path / "broken.json")


def _write_table(path: Path, n_subjects: int = 12, seed: int = 0) -> dict[str, int]:
    """A feature CSV of ``n_subjects`` x 6 vertebrae plus skipped rows; returns the VerSe grades."""
    rng = np.random.default_rng(seed)
    grades = {}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "level", "verse_label", "status", "rhlv_anterior", "rhlv_middle", "rhlv_posterior", "rhlv_overall"])
        for s in range(n_subjects):
            for label in range(16, 22):
                grade = int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15]))
                loss = {0: 0.0, 1: 0.22, 2: 0.32, 3: 0.5}[grade]
                ant, mid, post = loss + rng.normal(0, 0.02, 3) * [1, 1, 1] - [0, loss / 2, loss]
                w.writerow([f"sub-verse{s:03d}", f"L{label - 19}", label, "graded", ant, mid, post, (ant + mid + post) / 3])
                grades[f"sub-verse{s:03d}_{label}"] = grade
        w.writerow(["sub-verse000", "L4", 22, "incomplete", 0.1, 0.1, 0.1, 0.1])
        w.writerow(["sub-verse000", "L5", 23, "graded", "", 0.1, 0.1, 0.1])
        w.writerow(["sub-verse999", "L1", 20, "graded", 0.1, 0.1, 0.1, 0.1])  # not in the grade file
    return grades


def test_train_from_tables(tmp_path: Path) -> None:
    table = tmp_path / "features.csv"
    grades = _write_table(table)
    grade_file = tmp_path / "vertebra_data.json"
    keys = sorted(grades)
    grade_file.write_text(json.dumps({"train": {k: grades[k] for k in keys[:50]}, "test": {k: grades[k] for k in keys[50:]}}), encoding="utf-8")
    out = tmp_path / "model" / "grader.json"
    summary = train_from_tables([table], grade_file, out, C=1.0)
    assert summary["n_used"] == 72 and summary["n_subjects"] == 12
    assert summary["skipped"] == {"not_graded_status": 1, "missing_features": 1, "no_grade": 1}
    assert sum(summary["n_per_grade"].values()) == 72
    cv = summary["cv"]
    assert np.asarray(cv["confusion_matrix"]).shape == (4, 4) and np.asarray(cv["confusion_matrix"]).sum() == 72
    assert cv["quadratic_weighted_kappa"] > 0.5
    grader = SVMGrader.load(out)
    assert grader.training["cv"] == cv and grader.training["data"]["tables"] == ["features.csv"]
    assert grader.grade({"anterior": 0.55, "middle": 0.3, "posterior": 0.05})[0] == 3


def test_train_from_tables_grade_column_and_errors(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "verse_label", "grade", "rhlv_anterior", "rhlv_middle", "rhlv_posterior"])
        for i in range(30):
            w.writerow([f"c{i % 6}", 16 + i // 6, 0, 0.01 * (i % 3), 0.0, 0.0])
    with pytest.raises(HealthiVertError, match="at least two Genant grades"):
        train_from_tables([table], None, tmp_path / "g.json")
    with pytest.raises(HealthiVertError, match="only 0 usable"):
        train_from_tables([_empty_table(tmp_path)], None, tmp_path / "g.json")
    bad = tmp_path / "bad.csv"
    bad.write_text(table.read_text(encoding="utf-8").replace("\nc1,16,0,", "\nc1,16,4,", 1), encoding="utf-8")
    with pytest.raises(HealthiVertError, match="bad.csv line 3: grade '4'"):
        train_from_tables([bad], None, tmp_path / "g.json")
    with pytest.raises(HealthiVertError, match="lacks the feature"):
        train_from_tables([table], None, tmp_path / "g.json", features=("rhlv_overall",))
    with pytest.raises(HealthiVertError, match="does not exist"):
        train_from_tables([tmp_path / "none.csv"], None, tmp_path / "g.json")
    assert not (tmp_path / "g.json").exists()


def _empty_table(tmp_path: Path) -> Path:
    path = tmp_path / "empty.csv"
    path.write_text("case,verse_label,grade,rhlv_anterior,rhlv_middle,rhlv_posterior\n", encoding="utf-8")
    return path


def test_train_from_tables_counts_a_vertebra_once(tmp_path: Path) -> None:
    table = tmp_path / "features.csv"
    grades = _write_table(table)
    grade_file = tmp_path / "vertebra_data.json"
    grade_file.write_text(json.dumps(grades), encoding="utf-8")
    once = train_from_tables([table], grade_file, tmp_path / "once.json")
    twice = train_from_tables([table, table], grade_file, tmp_path / "twice.json")  # the same table given twice
    assert twice["n_used"] == once["n_used"] == 72 and twice["n_per_grade"] == once["n_per_grade"]
    assert twice["skipped"]["duplicate"] == 72 and "duplicate" not in once["skipped"]
