"""Benchmark scoring: grades from each estimator's RHLV, then errors and metrics against truth.

Grades: the Genant threshold rule on the estimated RHLV (nothing fitted), and a linear SVM
(``measure.grading.SVMGrader``, C chosen by grouped CV) fitted on the same estimator's RHLV of
other subjects only -- leave-one-subject-out over the real subjects (training: the other real
subjects and the phantom training cases), and phantom training cases -> phantom test cases
(training also holds every real subject).

Metrics: pseudo-healthy height error vs truth (mean absolute %, per third), RHLV error (mean
absolute percentage points per third and of the largest third), grade confusion matrix, macro
precision/recall/F1, quadratic-weighted kappa, ROC AUC of fracture (grade >= 1) vs normal for the
largest-third RHLV and the abnormality score, coverage (fraction of vertebrae graded).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import HealthiVertError
from ..measure.grading import GRADER_FEATURES, SVMGrader, classification_metrics, feature_vector, genant_rule
from ..measure.heights import THIRDS
from .records import BenchResult, C_GRID, Estimate, GRADED, Item


# ------------------------------------------------------------------------------------ grading


def features(e: Estimate) -> np.ndarray | None:
    """The grader's features (anterior, middle, posterior RHLV) of an estimate, or None."""
    if e.status != GRADED or not e.rhlv:
        return None
    x = np.array([e.rhlv.get(t, np.nan) if e.rhlv.get(t) is not None else np.nan for t in THIRDS], float)
    return x if np.all(np.isfinite(x)) else None


def fit_grader(X: np.ndarray, y: np.ndarray, groups: Sequence[str], c_grid: Sequence[float] = C_GRID) -> SVMGrader:
    """SVMGrader with C chosen by grouped cross-validation (best macro-F1; ties to the smaller C)."""
    best, best_f1, scores = None, -1.0, {}
    for C in c_grid:
        grader = SVMGrader(C=C, features=GRADER_FEATURES).fit(X, y, groups=list(groups))
        f1 = scores[f"{C:g}"] = grader.training["cv"]["macro_f1"]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = grader, f1
    assert best is not None
    best.training["c_selection"] = {"grid": list(c_grid), "criterion": "grouped-CV macro F1", "chosen": best.C,
                                    "macro_f1": scores}
    return best


def subject_folds(items: Sequence[Item]) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(train mask, test mask, description) over items: leave-one-real-subject-out, phantom halves."""
    dataset = np.array([it.dataset for it in items])
    subject = np.array([it.subject for it in items])
    role = np.array([it.role for it in items])
    phantom_train = (dataset == "phantom") & (role == "train")
    folds = []
    for s in sorted(set(subject[dataset == "real"].tolist())):
        test = subject == s
        folds.append(((dataset == "real") & ~test | phantom_train, test, f"real subject {s} held out"))
    phantom_test = (dataset == "phantom") & (role == "test")
    if phantom_test.any():
        folds.append(((dataset == "real") | phantom_train, phantom_test, "phantom test cases"))
    return folds


def grade_all(result: BenchResult) -> None:
    """Fill ``grade_rule`` and ``grade_svm`` of every estimate (SVM fitted on other subjects only)."""
    items = result.items
    y = np.array([it.truth.grade for it in items])
    subjects = np.array([it.subject for it in items])
    for name, estimates in result.estimates.items():
        feats = [features(e) for e in estimates]
        for e, x in zip(estimates, feats):
            if x is not None:
                e.grade_rule = genant_rule(dict(zip(THIRDS, x)))[0]
        ok = np.array([x is not None for x in feats])
        X = np.array([feature_vector(dict(zip(THIRDS, x)), GRADER_FEATURES) if x is not None
                      else np.zeros(len(GRADER_FEATURES))
                      for x in feats])
        for train, test, what in subject_folds(items):
            tr = train & ok
            try:
                grader = fit_grader(X[tr], y[tr], subjects[tr])
            except HealthiVertError as err:
                result.notes.append(f"{name}: no SVM for fold '{what}': {err}")
                continue
            for i in np.flatnonzero(test & ok):
                estimates[i].grade_svm = grader.grade(dict(zip(GRADER_FEATURES, X[i])))[0]


# ------------------------------------------------------------------------------------ metrics


def height_error_pct(pred: dict[str, float], true: dict[str, float]) -> dict[str, float]:
    """Absolute error of predicted heights, % of the true height, per region."""
    return {r: 100.0 * abs(pred[r] - true[r]) / true[r] for r in true if pred.get(r) is not None and true[r] > 0}


def rhlv_error_pp(pred: dict[str, float], true: dict[str, float]) -> dict[str, float]:
    """Absolute RHLV error in percentage points per third, overall, and of the largest third ("max")."""
    out = {r: 100.0 * abs(pred[r] - true[r]) for r in (*THIRDS, "overall")}
    out["max"] = 100.0 * abs(max(pred[t] for t in THIRDS) - max(true[t] for t in THIRDS))
    return out


def roc_auc(positive: Sequence[bool], score: Sequence[float]) -> float:
    """ROC AUC of ``score`` for ``positive`` (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    positive, score = np.asarray(positive, bool), np.asarray(score, float)
    keep = np.isfinite(score)
    if len(set(positive[keep].tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(positive[keep], score[keep]))


def mean_finite(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def metrics_for(items: Sequence[Item], estimates: Sequence[Estimate]) -> dict[str, Any]:
    """All metrics of one estimator on one set of items (graded ones; coverage over all)."""
    pairs = [(it, e) for it, e in zip(items, estimates) if features(e) is not None]
    m: dict[str, Any] = {"n": len(items), "n_graded": len(pairs),
                         "coverage": len(pairs) / len(items) if items else float("nan")}
    h_err = [height_error_pct(e.healthy_mm, it.truth.heights_mm) for it, e in pairs if e.healthy_mm]
    m["height_error_pct"] = {r: mean_finite(h.get(r) for h in h_err) for r in (*THIRDS, "overall")} if h_err else None
    r_err = [rhlv_error_pp(e.rhlv, it.truth.rhlv) for it, e in pairs]
    m["rhlv_error_pp"] = {r: mean_finite(x[r] for x in r_err) for r in (*THIRDS, "overall", "max")}
    fractured = [it.truth.grade >= 1 for it, _ in pairs]
    m["auc_rhlv"] = roc_auc(fractured, [max(e.rhlv[t] for t in THIRDS) for _, e in pairs])
    m["auc_abnormality"] = (roc_auc(fractured, [e.abnormality if e.abnormality is not None else np.nan
                                                for _, e in pairs])
                            if any(e.abnormality is not None for _, e in pairs) else None)
    for key in ("grade_svm", "grade_rule"):
        graded = [(it.truth.grade, getattr(e, key)) for it, e in pairs if getattr(e, key) is not None]
        with warnings.catch_warnings():  # a grade predicted but absent from the truth is expected
            warnings.simplefilter("ignore", UserWarning)
            m[key] = classification_metrics(*zip(*graded)) if graded else None
        if graded:
            m[key]["n"] = len(graded)
    times = [e.seconds for _, e in zip(items, estimates) if math.isfinite(e.seconds)]
    m["seconds_per_vertebra"] = {"median": float(np.median(times)), "mean": float(np.mean(times))} if times else None
    peaks = [e.peak_mib for e in estimates if e.peak_mib is not None]
    m["peak_mib_per_vertebra"] = float(np.median(peaks)) if peaks else None
    return m


def compute_metrics(result: BenchResult) -> None:
    """Metrics per dataset (real: all real items; phantom: test cases) and estimator."""
    sets = {
        "real": [i for i, it in enumerate(result.items) if it.dataset == "real"],
        "phantom": [i for i, it in enumerate(result.items) if it.dataset == "phantom" and it.role == "test"],
    }
    result.metrics = {}
    for dataset, idx in sets.items():
        if not idx:
            continue
        items = [result.items[i] for i in idx]
        result.metrics[dataset] = {
            name: metrics_for(items, [est[i] for i in idx]) for name, est in result.estimates.items()
        }
