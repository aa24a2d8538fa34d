"""The real benchmark (`healthivert bench --real`): metrics by hand, leave-one-subject-out, end to end."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from HealthiVertLib.app.cli import main
from HealthiVertLib.evaluation.real import GRADERS, fit_fold_grader, loso_grades, real_metrics
from HealthiVertLib.evaluation.stability import perturb_labels

VERSE19 = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "verse19"


# ------------------------------------------------------------------------------ metrics by hand


def test_metrics_by_hand_with_an_ungraded_vertebra() -> None:
    truth = [0, 0, 0, 1, 2, 3]
    pred = [0, 1, None, 1, 2, 2]  # the third vertebra got no grade
    score = [0.0, 0.22, None, 0.21, 0.30, 0.35]
    m = real_metrics(truth, pred, score)
    assert m["n"] == 6 and m["n_graded"] == 5 and m["coverage"] == pytest.approx(5 / 6)
    assert m["ungraded"] == [2]
    # grade 0: P 1/1, R 1/3; grade 1: P 1/2, R 1/1; grade 2: P 1/2, R 1/1; grade 3: never predicted
    assert m["per_grade"]["0"]["f1"] == pytest.approx(0.5)
    assert m["per_grade"]["1"]["f1"] == pytest.approx(2 / 3)
    assert m["per_grade"]["2"]["f1"] == pytest.approx(2 / 3)
    assert m["per_grade"]["3"]["f1"] == 0.0 and m["per_grade"]["3"]["n_pred"] == 0
    assert m["macro_precision"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx(7 / 12)
    assert m["macro_f1"] == pytest.approx(11 / 24)
    assert m["sens_ge2"] == pytest.approx(1.0)  # both grade 2-3 graded 2-3
    assert m["spec_ge2"] == pytest.approx(3 / 4)  # the ungraded grade 0 is not cleared
    assert m["grade1_recall"] == pytest.approx(1.0)
    assert m["auc"] == pytest.approx(5 / 6) and m["n_auc"] == 5  # 0.21 < 0.22 is the one wrong pair
    # quadratic kappa over the 5 graded vertebrae: 1 - (2/9) / (48/45) = 19/24
    assert m["qwk"] == pytest.approx(19 / 24)
    assert m["qwk"] == pytest.approx(cohen_kappa_score([0, 0, 1, 2, 3], [0, 1, 1, 2, 2], weights="quadratic"))


def test_metrics_with_a_missing_class() -> None:
    m = real_metrics([0, 0, 2, 2], [0, 2, 2, None], None)
    # macro over the grades present in the truth (0 and 2): F1 2/3 and 1/2
    assert m["macro_f1"] == pytest.approx(7 / 12)
    assert m["per_grade"]["1"] is None and m["per_grade"]["3"] is None
    assert m["per_grade"]["2"]["precision"] == pytest.approx(0.5) and m["per_grade"]["2"]["recall"] == pytest.approx(0.5)
    assert m["sens_ge2"] == pytest.approx(0.5) and m["spec_ge2"] == pytest.approx(0.5)
    assert math.isnan(m["grade1_recall"]) and math.isnan(m["auc"])
    assert m["coverage"] == pytest.approx(0.75)


# ------------------------------------------------------------------------------ leave-one-subject-out


def _loso_data():
    """Three subjects; each subject's rows carry its own feature offset so a leak would show."""
    subjects, X, y = [], [], []
    grades = {"A": [0, 0, 0, 1, 2, 2], "B": [0, 0, 1, 1, 2, 2], "C": [0, 0, 1, 3, 3]}
    loss = {0: 0.02, 1: 0.21, 2: 0.30, 3: 0.50}
    for k, (s, gs) in enumerate(grades.items()):
        for j, g in enumerate(gs):
            v = loss[g] + 0.001 * j + k * 1e-4
            subjects.append(s)
            X.append([v, v, v, v])
            y.append(g)
    return np.array(X), np.array(y), subjects


def test_loso_never_trains_on_the_test_subject() -> None:
    X, y, subjects = _loso_data()
    seen = []

    def spy(X_train, y_train, features):
        seen.append({tuple(r) for r in X_train})
        return fit_fold_grader(X_train, y_train, features)

    pred, folds = loso_grades(X, y, subjects, [True] * len(y), fit=spy)
    assert [f["held_out"] for f in folds] == ["A", "B", "C"] and len(seen) == 3
    for fold, rows in zip(folds, seen):
        held = {tuple(r) for r, s in zip(X, subjects) if s == fold["held_out"]}
        assert not rows & held
        assert fold["held_out"] not in fold["train_subjects"]
    # grade 3 is only in C: C's fold cannot learn it and says so; A and B lack nothing
    assert folds[2]["grades_left_out"] == [3] and "lack grade(s) 3" in folds[2]["note"]
    assert folds[0]["note"] is None and 3 in folds[0]["grades_used"]
    assert all(p is not None for p in pred)
    assert [p for p, s in zip(pred, subjects) if s == "C"][:2] == [0, 0]


def test_loso_fold_without_two_grades_grades_nothing() -> None:
    X = np.array([[0.0] * 4, [0.01] * 4, [0.3] * 4, [0.02] * 4, [0.03] * 4])
    y = [0, 0, 2, 0, 0]
    subjects = ["A", "A", "A", "B", "B"]
    ok = [True, True, True, True, False]  # B's second vertebra was not measured
    pred, folds = loso_grades(X, y, subjects, ok)
    assert pred[:3] == [None, None, None]  # trained on B alone: one grade only
    assert "no SVM" in folds[0]["note"]
    assert folds[1]["grades_left_out"] == [1, 2, 3]  # grade 2 has one training vertebra
    assert "no SVM" in folds[1]["note"] and pred[3:] == [None, None]


# ------------------------------------------------------------------------------ end to end


@pytest.fixture
def small_verse19(tmp_path: Path) -> Path:
    """sub-verse006 and sub-verse007 of benchmarks/data/verse19 with their grades only."""
    assert (VERSE19 / "vertebra_data.json").is_file(), "benchmarks/data/verse19 belongs to the repository"
    data = tmp_path / "verse19"
    data.mkdir()
    shutil.copy(VERSE19 / "README.md", data / "README.md")  # the licence and attribution travel with the data
    for s in ("sub-verse006", "sub-verse007"):
        for f in VERSE19.glob(f"{s}_*.nii.gz"):
            shutil.copy(f, data / f.name)
    grades = json.loads((VERSE19 / "vertebra_data.json").read_text(encoding="utf-8"))["train"]
    small = {k: v for k, v in grades.items() if k.startswith(("sub-verse006_", "sub-verse007_"))}
    (data / "vertebra_data.json").write_text(json.dumps({"train": small}), encoding="utf-8")
    return data


def test_bench_real_end_to_end(small_verse19: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report" / "real.md"
    rc = main(["bench", "--real", "--data", str(small_verse19), "--out", str(out), "--estimators", "context",
               "minmax", "--progress", "none"])
    assert rc == 0, capsys.readouterr().err
    md = out.read_text(encoding="utf-8")
    raw = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    levels = {"sub-verse006": ["L4", "L5"], "sub-verse007": ["T9", "T10", "T11", "T12", "L1", "L2", "L3"]}
    # the plain statement first, the reproducing command, the machine line
    assert md.startswith("# Real benchmark")
    head = md[:1500]
    assert "Real VerSe19" in head and "CC BY-SA 4.0" in head and "not a clinical validation" in head
    assert "2 subjects, 9 vertebrae" in head and "grade 0: 7, grade 1: 0, grade 2: 2, grade 3: 0" in head
    assert f"`healthivert bench --real --data {small_verse19} --estimators context minmax --out {out}`" in md
    assert "Machine:" in md and "0.723" in md and "(../verse19/README.md)" in head
    # every graded vertebra has a row for each estimator, and is in the JSON
    assert [(v["subject"], v["level"]) for v in raw["vertebrae"]] == [(s, lv) for s, ls in levels.items() for lv in ls]
    for name in ("context", "minmax"):
        table = md[md.index(f"### `{name}`"):]
        for s, ls in levels.items():
            for lv in ls:
                assert f"| {s} | {lv} |" in table
        assert set(raw["metrics"][name]) == set(GRADERS)
        assert f"| `{name}` | Genant rule on RHLV thirds |" in md
    assert raw["setup"]["estimators"] == ["context", "minmax"]
    t12 = next(v for v in raw["vertebrae"] if v["level"] == "T12")
    assert t12["truth"] == 2 and t12["estimates"]["context"]["status"] == "graded"
    assert set(t12["estimates"]["context"]["grades"]) == set(GRADERS)
    # LOSO: with sub-verse007 held out only sub-verse006 (grade 0) trains -- no SVM, said so, counted as missed
    fold = next(f for f in raw["folds"]["context"] if f["held_out"] == "sub-verse007")
    assert "sub-verse007" not in fold["train_subjects"] and "no SVM" in fold["note"]
    assert all(v["estimates"]["context"]["grades"]["loso_svm"] is None
               for v in raw["vertebrae"] if v["subject"] == "sub-verse007")
    assert raw["metrics"]["context"]["loso_svm"]["coverage"] <= 2 / 9
    assert "no SVM" in md and "## Misses" in md
    # every miss of the rule is listed under Misses
    misses = md[md.index("## Misses"):md.index("## Per vertebra")]
    for v in raw["vertebrae"]:
        if v["estimates"]["context"]["grades"]["rule"] != v["truth"]:
            assert f"- {v['subject']} {v['level']} (truth {v['truth']})" in misses


def test_bench_real_errors(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["bench", "--real", "--data", str(empty), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "vertebra_data.json" in err and len(err.strip().splitlines()) == 1
    (empty / "vertebra_data.json").write_text(json.dumps({"sub-verse001_20": 0}), encoding="utf-8")
    assert main(["bench", "--real", "--data", str(empty), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "no case" in err and len(err.strip().splitlines()) == 1
    assert main(["bench", "--real", "--quick", "--data", str(empty)]) == 2
    assert main(["bench", "--data", str(empty)]) == 2


def test_mask_perturbations_move_the_boundary_by_one_voxel() -> None:
    labels = np.zeros((20, 20, 20), np.uint16)
    labels[5:15, 5:15, 5:10] = 20
    labels[5:15, 5:15, 10:15] = 21  # two touching vertebrae
    eroded, dilated = perturb_labels(labels, "erode"), perturb_labels(labels, "dilate")
    assert (eroded == 20).sum() == 8 * 8 * 3 and (eroded == 21).sum() == 8 * 8 * 3  # one voxel off every face
    assert (dilated == 20).sum() == 10 * 10 * 5 + 2 * 10 * 5 + 2 * 10 * 5 + 10 * 10  # grows where it meets background
    noisy = perturb_labels(labels, "boundary_1", seed=0)
    moved = noisy != labels
    assert 0 < moved.sum() < 0.6 * (perturb_labels(labels, "dilate") != perturb_labels(labels, "erode")).sum()
    assert np.array_equal(noisy, perturb_labels(labels, "boundary_1", seed=0))  # seeded
    with pytest.raises(ValueError):
        perturb_labels(labels, "shear")


def test_bench_real_stability_section(small_verse19: Path, tmp_path: Path) -> None:
    out = tmp_path / "stable.md"
    assert main(["bench", "--real", "--stability", "--data", str(small_verse19), "--estimators", "minmax",
                 "--out", str(out), "--progress", "none"]) == 0
    md = out.read_text(encoding="utf-8")
    assert "## Stability under mask perturbation" in md and "healthivert bench --real --stability" in md
    stability = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["stability"]
    assert stability["n"] == 4 * 9 and 0 <= stability["share_stable"] <= 1  # 9 graded vertebrae x 4 perturbations
    assert main(["bench", "--stability", "--progress", "none"]) == 2  # only with --real
