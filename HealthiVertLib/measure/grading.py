"""Genant grade of a vertebra from its Relative Height Loss (RHLV): a linear SVM and a threshold rule.

RHLV = (H_healthy - H_original) / H_healthy, as a fraction (0.35 = 35 % height loss), measured in the
anterior, middle and posterior thirds of the vertebral body and overall.

* :class:`SVMGrader` -- scaler + linear one-vs-one SVM (as HealthiVert's ``SVM_grading.py``) with a
  multinomial logistic calibration of its cross-validated decision values. Fitting uses scikit-learn;
  predicting uses numpy only, from parameters stored as plain JSON (loading never unpickles).
  ``measure.graders.load_default_grader`` loads the shipped one.
* :func:`genant_rule` -- the transparent Genant threshold rule (20 / 25 / 40 %).
* :func:`feature_vector` -- the grader's features from an RHLV record; :func:`classification_metrics`.

Grade files are read by ``io.grades``; fitting a grader on feature tables (CSV) is
``training.grader``. Research use only, not for diagnosis.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import HealthiVertError
from ..io.files import write_text_atomic
from ..io.grades import GRADES
from ..io.jsonable import jsonable, read_json


FEATURES = ("rhlv_anterior", "rhlv_middle", "rhlv_posterior")
# The default grader's features: the thirds plus rhlv_max (the largest third), which Genant's rule
# thresholds; a linear model cannot form that max itself, and without it the SVM's grouped-CV
# macro-F1 on the benchmark set was 0.60 instead of 0.69 (grader_default.md).
GRADER_FEATURES = (*FEATURES, "rhlv_max")
# Losses at the 15/50/85 % points (measure.points): the heights a radiologist compares.
POINT_FEATURES = ("point_loss_anterior", "point_loss_middle", "point_loss_posterior")
ALLOWED_FEATURES = (
    "rhlv_anterior", "rhlv_middle", "rhlv_posterior", "rhlv_overall", "rhlv_max", *POINT_FEATURES, "point_loss_max",
)  # fmt: skip
THIRD_NAMES = ("anterior", "middle", "posterior")
GRADE_NAMES = ("normal", "mild", "moderate", "severe")
GENANT_THRESHOLDS = (0.20, 0.25, 0.40)  # mild >= 20 %, moderate >= 25 %, severe >= 40 %
RULE_CONFIDENCE_SCALE_PP = 2.5  # logistic scale of genant_rule's confidence, percentage points
# Height losses are fractions of the healthy height: every feature lies in [-1, 1] (real ones in about
# -0.2..0.7). A grader file is checked over this box on load, and train-grader refuses values outside it.
FEATURE_BOUND = 1.0
# Largest |decision value| (SVM and calibration) a grader file may reach over the feature box; fitted
# graders stay below about 1e3. Beyond this the coefficients are damaged, not fitted, and near-infinite
# values would turn the probabilities into NaN (a grade 0 with no confidence).
MAX_DECISION = 1e6
FORMAT = "healthivert-svm-grader"
VERSION = 1
CV_SEED = 0
MAX_CV_SPLITS = 5
CONVENTION = (
    "x_scaled = (x - scaler.mean) / scaler.scale; decision[p] = x_scaled . svm.coef[p] + svm.intercept[p] "
    "for class pair p = svm.pairs[p] = (a, b) in scikit-learn's one-vs-one order; with more than two "
    "classes a decision > 0 votes for a, otherwise for b; with exactly two classes (scikit-learn's sign "
    "flip) a decision >= 0 votes for b, otherwise for a; the grade is the class with most votes, ties "
    "to the lowest grade. probabilities = softmax(decision . calibration.coef^T + calibration.intercept) "
    "(with two calibration classes: P(second) = sigmoid of the single row)."
)


# ----------------------------------------------------------------------------------------- features


def feature_vector(measured: Mapping[str, float], features: Sequence[str] = FEATURES) -> np.ndarray:
    """Feature vector from a mapping of losses (fractions): RHLV keyed ``"rhlv_anterior"`` (or just
    ``"anterior"``), point losses keyed ``"point_loss_anterior"`` (:func:`grading_inputs` makes one).
    ``rhlv_max`` / ``point_loss_max`` is the largest of the three when the mapping does not give it."""
    values = []
    for name in features:
        prefix = "point_loss_" if name.startswith("point_loss_") else "rhlv_"
        short = name.removeprefix(prefix)
        value = measured.get(name, measured.get(short) if prefix == "rhlv_" else None)
        if short == "max" and value in (None, ""):  # not given (or an empty CSV cell): from the three
            value = max(feature_vector(measured, [f"{prefix}{t}" for t in THIRD_NAMES]))
        if finite_float(value) is None:
            what = "RHLV" if prefix == "rhlv_" else "point height loss"
            raise HealthiVertError(
                f"cannot grade: the {short} {what} is missing or not a number ({value!r}); "
                "the vertebra must be measured in all three places before it can be graded"
            )
        values.append(float(value))
    return np.asarray(values, dtype=float)


def grading_inputs(rhlv: Mapping[str, float], point_loss: Mapping[str, float] | None = None) -> dict[str, float]:
    """One vertebra's losses keyed by feature name (``rhlv_anterior`` ..., ``point_loss_anterior`` ...)."""
    out = {f"rhlv_{k}": float(v) for k, v in rhlv.items() if v is not None}
    out.update({f"point_loss_{k}": float(v) for k, v in (point_loss or {}).items() if v is not None})
    return out


def finite_float(text: Any) -> float | None:
    """A finite float from a CSV cell or number; None when empty, not a number or not finite."""
    try:
        value = float(text) if text not in (None, "") and not isinstance(text, bool) else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _as_matrix(X: Any, n_features: int) -> np.ndarray:
    """``X`` as a finite float matrix (n, n_features); a single vector becomes one row."""
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != n_features:
        raise HealthiVertError(f"expected features of shape (n, {n_features}), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise HealthiVertError("cannot grade: some height-loss features are missing (NaN) or infinite")
    return X


# ------------------------------------------------------------------------------------ numpy model


def _pairs(n_classes: int) -> list[tuple[int, int]]:
    """Class-index pairs in scikit-learn's one-vs-one order (0,1), (0,2), ..., (1,2), ..."""
    return [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]


def _ovo_decision(X_scaled: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """One-vs-one decision values (n, n_pairs) of a linear SVM."""
    return X_scaled @ coef.T + intercept


def _ovo_vote(decision: np.ndarray, n_classes: int) -> np.ndarray:
    """Winning class index per row with scikit-learn/libsvm voting (ties to the lowest index)."""
    votes = np.zeros((decision.shape[0], n_classes), dtype=int)
    for p, (i, j) in enumerate(_pairs(n_classes)):
        first = decision[:, p] > 0 if n_classes > 2 else decision[:, p] < 0
        votes[:, i] += first
        votes[:, j] += ~first
    return votes.argmax(axis=1)


def _logistic_proba(decision: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Multinomial (softmax) or binary (sigmoid) logistic probabilities, like scikit-learn."""
    z = decision @ coef.T + intercept
    if coef.shape[0] == 1:
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.column_stack([1.0 - p1, p1])
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------- cross-validation


def _cv_splits(y: np.ndarray, groups: np.ndarray | None, classes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped (by subject) or stratified folds in which every training fold holds every class."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = Counter(y.tolist())
    if groups is not None:
        per_class = {c: len(set(groups[y == c].tolist())) for c in classes}
        limit = min(MAX_CV_SPLITS, len(set(groups.tolist())))
        if min(per_class.values()) < 2:
            few = [int(c) for c, n in per_class.items() if n < 2]
            raise HealthiVertError(
                f"cannot cross-validate the grader: grade(s) {few} occur in fewer than 2 subjects; "
                "add graded vertebrae of these grades from more subjects"
            )
    else:
        limit = min(MAX_CV_SPLITS, min(counts.values()))
        if limit < 2:
            few = [int(c) for c, n in counts.items() if n < 2]
            raise HealthiVertError(
                f"cannot cross-validate the grader: grade(s) {few} have fewer than 2 vertebrae; "
                "add more graded vertebrae of these grades"
            )
    for n_splits in range(limit, 1, -1):
        if groups is not None:
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=CV_SEED)
        else:
            cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=CV_SEED)
        splits = list(cv.split(np.zeros((len(y), 1)), y, groups))
        if all(len(np.unique(y[train])) == len(classes) for train, _ in splits):
            return splits
    raise HealthiVertError(
        "cannot cross-validate the grader: no grouped split keeps every grade in every training fold; "
        "add graded vertebrae of the rare grades from more subjects"
    )


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, Any]:
    """Confusion matrix (rows true, columns predicted, grades 0-3), macro P/R/F1, quadratic kappa."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    present = sorted(set(y_true.tolist()))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro", zero_division=0)
    kappa = cohen_kappa_score(y_true, y_pred, labels=list(GRADES), weights="quadratic")
    return {
        "labels": list(GRADES),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(GRADES)).tolist(),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_precision": float(p),
        "macro_recall": float(r),
        "macro_f1": float(f),
        "quadratic_weighted_kappa": float(kappa),
    }


# --------------------------------------------------------------------------------------- the grader


class SVMGrader:
    """Scaler + linear one-vs-one SVM (balanced class weights) + logistic calibration, in numpy.

    ``fit`` needs scikit-learn; ``predict``, ``predict_proba`` and ``decision_function`` use only the
    stored parameters. Grades absent from training get probability 0 and are never predicted.
    """

    def __init__(self, C: float = 1.0, features: Sequence[str] = FEATURES) -> None:
        self.C = float(C)
        self.features = list(features)
        self.classes_: np.ndarray | None = None
        self.scaler_mean_: np.ndarray | None = None
        self.scaler_scale_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.calibration_classes_: np.ndarray | None = None
        self.calibration_coef_: np.ndarray | None = None
        self.calibration_intercept_: np.ndarray | None = None
        self.training: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting (scikit-learn)

    def fit(self, X: Any, y: Sequence[int], groups: Sequence[Any] | None = None) -> "SVMGrader":
        """Fit on features ``X`` (n, n_features) and Genant grades ``y``; ``groups`` = subject per row."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_predict
        from sklearn.pipeline import make_pipeline

        X = _as_matrix(X, len(self.features))
        y = np.asarray(y, dtype=int)
        _check_training_set(X, y, groups)
        g = None if groups is None else np.asarray([str(s) for s in groups])
        classes = np.unique(y)
        splits = _cv_splits(y, g, classes)
        pipe = make_pipeline(*_scaler_and_svc(self.C))
        cv_decision = cross_val_predict(pipe, X, y, cv=splits, method="decision_function")
        cv_decision = np.asarray(cv_decision, dtype=float).reshape(len(y), -1)
        pipe.fit(X, y)
        scaler, svc = pipe[0], pipe[1]
        calibrator = LogisticRegression(C=1.0, max_iter=10000).fit(cv_decision, y)

        self.classes_ = classes
        self.scaler_mean_ = np.asarray(scaler.mean_, dtype=float)
        self.scaler_scale_ = np.asarray(scaler.scale_, dtype=float)
        self.coef_ = np.asarray(svc.coef_, dtype=float)
        self.intercept_ = np.asarray(svc.intercept_, dtype=float)
        self.calibration_classes_ = np.asarray(calibrator.classes_, dtype=int)
        self.calibration_coef_ = np.asarray(calibrator.coef_, dtype=float)
        self.calibration_intercept_ = np.asarray(calibrator.intercept_, dtype=float)
        cv_pred = classes[_ovo_vote(cv_decision, len(classes))]
        self.training = {
            "n_samples": int(len(y)),
            "n_per_grade": {str(c): int((y == c).sum()) for c in GRADES},
            "n_subjects": None if g is None else int(len(set(g.tolist()))),
            "cv": {
                "scheme": (
                    f"StratifiedGroupKFold({len(splits)}, shuffle, seed {CV_SEED}) grouped by subject"
                    if g is not None
                    else f"StratifiedKFold({len(splits)}, shuffle, seed {CV_SEED})"
                ),
                **classification_metrics(y, cv_pred),
            },
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return self

    # ------------------------------------------------------------------ predicting (numpy only)

    def _check_fitted(self) -> None:
        if self.classes_ is None:
            raise HealthiVertError("the grader is not fitted; fit it or load a grader file first")

    def decision_function(self, X: Any) -> np.ndarray:
        """One-vs-one decision values (n, n_pairs), equal to scikit-learn's ``SVC`` with shape "ovo"."""
        self._check_fitted()
        X = _as_matrix(X, len(self.features))
        return _ovo_decision((X - self.scaler_mean_) / self.scaler_scale_, self.coef_, self.intercept_)

    def predict(self, X: Any) -> np.ndarray:
        """Genant grade (int) per row: the one-vs-one vote, like scikit-learn's ``SVC.predict``."""
        decision = self.decision_function(X)
        return self.classes_[_ovo_vote(decision, len(self.classes_))].astype(int)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities (n, 4) of grades 0-3; 0 for grades absent from training."""
        return self._proba(self.decision_function(X))

    def _proba(self, decision: np.ndarray) -> np.ndarray:
        proba = _logistic_proba(decision, self.calibration_coef_, self.calibration_intercept_)
        out = np.zeros((decision.shape[0], len(GRADES)))
        out[:, self.calibration_classes_] = proba
        return out

    def grade(self, measured: Mapping[str, float]) -> tuple[int, float, list[float]]:
        """(grade, confidence, P(grade 0..3)) of one vertebra's losses (see :func:`feature_vector`).

        The grade is the most probable one under the calibration of the SVM's decision values,
        so the reported grade and its confidence never contradict each other; near a boundary it
        can differ from the raw one-vs-one vote (``predict``). A decision value or probability that
        is not finite raises HealthiVertError instead of a grade.
        """
        x = feature_vector(measured, self.features)
        with np.errstate(over="ignore", invalid="ignore"):
            decision = self.decision_function(x)
            proba = self._proba(decision)[0] if np.all(np.isfinite(decision)) else np.full(len(GRADES), np.nan)
        if not np.all(np.isfinite(proba)):
            raise HealthiVertError(
                f"the grader's decision values for the losses ({', '.join(f'{v:.4g}' for v in x)}) are not finite: its "
                "coefficients are unusable; refit it (healthivert train-grader) or use the default grader"
            )
        grade = int(np.argmax(proba))
        return grade, float(proba[grade]), [float(v) for v in proba]

    def decision_bound(self) -> float:
        """Largest |value| the SVM decisions and their calibration can take for features in
        [-FEATURE_BOUND, FEATURE_BOUND] (linear, so exact per decision: |b| + sum |w_i| max|x_i|); inf on overflow."""
        self._check_fitted()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            reach = np.maximum(np.abs(-FEATURE_BOUND - self.scaler_mean_), np.abs(FEATURE_BOUND - self.scaler_mean_))
            decision = np.abs(self.intercept_) + np.abs(self.coef_) @ (reach / self.scaler_scale_)
            calibrated = np.abs(self.calibration_intercept_) + np.abs(self.calibration_coef_) @ decision
            bound = max(float(decision.max()), float(calibrated.max()))
        return bound if np.isfinite(bound) else float("inf")

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """The grader as plain JSON-able data (see module docstring and ``CONVENTION``)."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "version": VERSION,
            "features": list(self.features),
            "classes": [int(c) for c in self.classes_],
            "scaler": {"mean": _floats(self.scaler_mean_), "scale": _floats(self.scaler_scale_)},
            "svm": {
                "kernel": "linear",
                "C": self.C,
                "class_weight": "balanced",
                "decision": "ovo",
                "pairs": [[int(self.classes_[i]), int(self.classes_[j])] for i, j in _pairs(len(self.classes_))],
                "coef": [_floats(row) for row in self.coef_],
                "intercept": _floats(self.intercept_),
                "convention": CONVENTION,
            },
            "calibration": {
                "method": "multinomial logistic regression on cross-validated one-vs-one decision values",
                "classes": [int(c) for c in self.calibration_classes_],
                "coef": [_floats(row) for row in self.calibration_coef_],
                "intercept": _floats(self.calibration_intercept_),
            },
            "training": jsonable(self.training),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SVMGrader":
        """Rebuild a grader from ``to_dict`` data; raises ``ValueError`` on anything malformed."""
        if not isinstance(d, Mapping):
            raise ValueError("top level is not a JSON object")
        if d.get("format") != FORMAT:
            raise ValueError(f"format tag is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"version {d.get('version')!r} is not supported (expected {VERSION})")
        features = d.get("features")
        if not isinstance(features, list) or not features or any(f not in ALLOWED_FEATURES for f in features):
            raise ValueError(f"features must be a non-empty list of {list(ALLOWED_FEATURES)}, got {features!r}")
        if len(set(features)) != len(features):
            raise ValueError("features are repeated")
        classes = _int_list(d.get("classes"), "classes")
        if len(classes) < 2 or classes != sorted(set(classes)) or any(c not in GRADES for c in classes):
            raise ValueError(f"classes must be >= 2 sorted distinct grades in 0-3, got {classes!r}")
        n_feat, n_cls = len(features), len(classes)
        n_pairs = n_cls * (n_cls - 1) // 2
        scaler, svm, cal = (_section(d, k) for k in ("scaler", "svm", "calibration"))
        if svm.get("kernel", "linear") != "linear":
            raise ValueError(f"svm kernel {svm.get('kernel')!r} is not supported (only linear)")

        g = cls(C=float(svm.get("C", 1.0)), features=features)
        g.classes_ = np.asarray(classes, dtype=int)
        g.scaler_mean_ = _array(scaler.get("mean"), (n_feat,), "scaler.mean")
        g.scaler_scale_ = _array(scaler.get("scale"), (n_feat,), "scaler.scale")
        if np.any(g.scaler_scale_ <= 0):
            raise ValueError("scaler.scale must be positive")
        g.coef_ = _array(svm.get("coef"), (n_pairs, n_feat), "svm.coef")
        g.intercept_ = _array(svm.get("intercept"), (n_pairs,), "svm.intercept")
        cal_classes = _int_list(cal.get("classes"), "calibration.classes")
        if cal_classes != classes:
            raise ValueError(f"calibration.classes {cal_classes!r} differ from classes {classes!r}")
        n_rows = 1 if len(cal_classes) == 2 else len(cal_classes)
        g.calibration_classes_ = np.asarray(cal_classes, dtype=int)
        g.calibration_coef_ = _array(cal.get("coef"), (n_rows, n_pairs), "calibration.coef")
        g.calibration_intercept_ = _array(cal.get("intercept"), (n_rows,), "calibration.intercept")
        reach = g.decision_bound()
        if not reach <= MAX_DECISION:
            raise ValueError(
                f"its decision values reach {reach:.3g} for losses in [-{FEATURE_BOUND:g}, {FEATURE_BOUND:g}] "
                f"(a fitted grader stays far below {MAX_DECISION:g}): the coefficients are not those of a fitted grader"
            )
        training = d.get("training", {})
        g.training = dict(training) if isinstance(training, Mapping) else {}
        return g

    def save(self, path: str | os.PathLike) -> None:
        """Write the grader as JSON (atomically)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        write_text_atomic(path, text + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SVMGrader":
        """Read a grader JSON file written by ``save``; never unpickles."""
        return cls.from_file_data(read_grader_json(path), Path(path))

    @classmethod
    def from_file_data(cls, data: Any, path: Path) -> "SVMGrader":
        """:meth:`from_dict` on the parsed content of ``path``; HealthiVertError naming the file."""
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:
            raise damaged_grader(path, exc) from None


def read_grader_json(path: str | os.PathLike) -> Any:
    """The parsed JSON of a grader file (NaN and infinities refused); HealthiVertError naming the file."""
    path = Path(path)
    return read_json(path, f"grader file {path}", advice="give the path of a grader JSON file",
                     bad_content=lambda reason: damaged_grader(path, reason), parse_constant=_reject_constant)


def damaged_grader(path: Path, exc: Exception | str) -> HealthiVertError:
    """The error for a grader file whose content is not a valid grader (``exc``: what is wrong)."""
    return HealthiVertError(
        f"grader file {path} is damaged or not a HealthiVert grader: {exc}; "
        "refit it (healthivert train-grader / scripts/fit_default_grader.py) or use the default grader"
    )


def _scaler_and_svc(C: float) -> tuple[Any, Any]:
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return StandardScaler(), SVC(kernel="linear", class_weight="balanced", C=C, decision_function_shape="ovo")


def _check_training_set(X: np.ndarray, y: np.ndarray, groups: Sequence[Any] | None) -> None:
    if len(y) != len(X):
        raise HealthiVertError(f"{len(X)} feature rows but {len(y)} grades")
    if groups is not None and len(groups) != len(y):
        raise HealthiVertError(f"{len(groups)} subjects given for {len(y)} vertebrae")
    bad = sorted(set(y.tolist()) - set(GRADES))
    if bad:
        raise HealthiVertError(f"grades must be Genant 0-3, got {bad}")
    if len(np.unique(y)) < 2:
        raise HealthiVertError(
            f"cannot train a grader on one grade only ({int(y[0]) if len(y) else 'none'}); "
            "the training data need vertebrae of at least two Genant grades"
        )


# ------------------------------------------------------------------------- JSON helpers


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} in the file")


def _section(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = d.get(key)
    if not isinstance(value, Mapping):
        raise ValueError(f"section {key!r} is missing or not an object")
    return value


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be a list of integers, got {value!r}")
    return list(value)


def _array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a numeric array") from None
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _floats(a: Iterable[float]) -> list[float]:
    return [float(v) for v in a]


# ------------------------------------------------------------------------------ Genant rule


def genant_rule(rhlv: Mapping[str, float]) -> tuple[int, float]:
    """Genant grade by thresholds on the largest height loss, and a confidence in (0.5, 1).

    The loss is the maximum of the anterior, middle, posterior (and overall, when given) RHLV,
    keys ``"anterior"`` or ``"rhlv_anterior"`` etc., as fractions. Genant (1993):
    loss < 20 % -> 0 (normal); 20 % <= loss < 25 % -> 1 (mild); 25 % <= loss < 40 % -> 2
    (moderate); loss >= 40 % -> 3 (severe). Confidence = logistic(d / 2.5 pp) where d is the
    distance to the nearest threshold in percentage points: 0.5 on a threshold, ~0.98 at 10 pp.
    """
    losses = []
    for region in ("anterior", "middle", "posterior", "overall"):
        value = rhlv.get(region, rhlv.get(f"rhlv_{region}"))
        if value is not None and math.isfinite(float(value)):
            losses.append(float(value))
    if not losses:
        raise HealthiVertError("cannot apply the Genant rule: no finite anterior/middle/posterior height loss")
    loss = round(max(losses), 9)  # 0.1 + 0.1 + 0.05 must count as 25 %
    grade = sum(loss >= t for t in GENANT_THRESHOLDS)
    distance_pp = min(abs(loss - t) for t in GENANT_THRESHOLDS) * 100.0
    confidence = 1.0 / (1.0 + math.exp(-distance_pp / RULE_CONFIDENCE_SCALE_PP))
    return int(grade), float(confidence)
