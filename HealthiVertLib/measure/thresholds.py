"""A Genant threshold grader fitted on radiologists' grades: a few thresholds on one height loss.

Genant's rule grades the largest height loss at 20 / 25 / 40 %. Radiologists grade real vertebrae
against their own mental picture of the healthy vertebra, and on real graded data a measured
loss of 10-18 % is often read as *mild* (grade 1): the rule misses almost every grade 1. This
grader keeps the rule's form -- the grade is the number of thresholds the loss reaches -- and
fits the thresholds named in ``fit_grades`` on radiologists' grades (each one maximises the
balanced accuracy of "grade >= k" vs "grade < k" on the training vertebrae; a threshold without
both sides in the training data, or not asked for, stays at Genant's value). The thresholds stay
ordered. Its confidence is P(the grade is right | distance to the nearest threshold), a logistic
fit on the training vertebrae (Genant rule's fixed scale when they cannot support one).

Three numbers and a logistic curve in plain JSON (``FORMAT``); monotone in the loss, so a larger
loss never gets a lower grade. Fitted by ``scripts/fit_default_grader.py``; evaluated
leave-one-subject-out by the real benchmark. Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import HealthiVertError
from ..io.files import write_text_atomic
from ..io.grades import GRADES
from ..io.jsonable import jsonable
from .grading import (
    ALLOWED_FEATURES,
    GENANT_THRESHOLDS,
    RULE_CONFIDENCE_SCALE_PP,
    damaged_grader,
    feature_vector,
    finite_float,
)

FORMAT = "healthivert-threshold-grader"
VERSION = 1
DEFAULT_FEATURE = "point_loss_max"


class ThresholdGrader:
    """Grade = number of ``thresholds`` that the loss ``feature`` reaches; see the module docstring."""

    def __init__(self, feature: str = DEFAULT_FEATURE, thresholds: Sequence[float] = GENANT_THRESHOLDS,
                 fit_grades: Sequence[int] = (1,)) -> None:
        if feature not in ALLOWED_FEATURES:
            raise HealthiVertError(f"unknown grading feature {feature!r}; use one of {', '.join(ALLOWED_FEATURES)}")
        self.feature = feature
        self.thresholds = [float(t) for t in thresholds]
        self.fit_grades = [int(k) for k in fit_grades]
        self.confidence = {"intercept": 0.0, "slope_per_pp": 1.0 / RULE_CONFIDENCE_SCALE_PP, "fitted": False}
        self.training: dict[str, Any] = {}

    @property
    def features(self) -> list[str]:
        return [self.feature]

    # ------------------------------------------------------------------ fitting

    def fit(self, scores: Sequence[float], y: Sequence[int]) -> "ThresholdGrader":
        """Fit the thresholds of ``fit_grades`` and the confidence on losses ``scores`` with grades ``y``."""
        s, y = np.asarray(scores, float), np.asarray(y, int)
        if s.shape != y.shape or s.ndim != 1 or not len(s) or not np.all(np.isfinite(s)):
            raise HealthiVertError("the threshold grader needs one finite loss per graded vertebra")
        fitted = {}
        for k in sorted(self.fit_grades):
            upper, lower = s[y >= k], s[y < k]
            if len(upper) and len(lower):
                self.thresholds[k - 1] = _best_threshold(s, y >= k, GENANT_THRESHOLDS[k - 1])
                fitted[k] = True
            else:
                fitted[k] = False
        for i in range(1, 3):  # keep them ordered: a fitted lower threshold never passes a higher one
            self.thresholds[i] = max(self.thresholds[i], self.thresholds[i - 1])
        self._fit_confidence(s, y)
        counts = {str(g): int((y == g).sum()) for g in GRADES}
        self.training = {"n_samples": int(len(y)), "n_per_grade": counts,
                         "thresholds_fitted": {str(k): v for k, v in fitted.items()}}
        return self

    def _fit_confidence(self, s: np.ndarray, y: np.ndarray) -> None:
        correct = np.array([self._grade_of(v) for v in s]) == y
        if correct.all() or not correct.any() or len(s) < 6:
            return
        from sklearn.linear_model import LogisticRegression

        d = np.array([self._distance_pp(v) for v in s])[:, None]
        model = LogisticRegression(C=1.0).fit(d, correct.astype(int))
        slope = float(model.coef_[0, 0])
        if slope <= 0:  # farther from a threshold must not mean less sure; keep the rule's curve
            return
        self.confidence = {"intercept": float(model.intercept_[0]), "slope_per_pp": slope, "fitted": True}

    # ------------------------------------------------------------------ grading

    def _grade_of(self, loss: float) -> int:
        return int(sum(round(loss, 9) >= t for t in self.thresholds))

    def _distance_pp(self, loss: float) -> float:
        return 100.0 * min(abs(loss - t) for t in self.thresholds)

    def grade(self, measured: Mapping[str, float]) -> tuple[int, float, list[float]]:
        """(grade, confidence, P(grade 0..3)) of one vertebra's losses (``grading.grading_inputs``).

        The probability not on the grade goes to the grade across the nearest threshold."""
        loss = float(feature_vector(measured, [self.feature])[0])
        grade = self._grade_of(loss)
        c = self.confidence
        conf = 1.0 / (1.0 + math.exp(-(c["intercept"] + c["slope_per_pp"] * self._distance_pp(loss))))
        nearest = int(np.argmin([abs(loss - t) for t in self.thresholds]))  # threshold k+1 separates k and k+1
        other = nearest if grade > nearest else nearest + 1
        proba = [0.0] * len(GRADES)
        proba[grade] = conf
        proba[other] += 1.0 - conf
        return grade, float(conf), proba

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "features": [self.feature],
            "thresholds": [round(t, 6) for t in self.thresholds],
            "fit_grades": self.fit_grades,
            "confidence": {**self.confidence, "form": "P(right) = 1 / (1 + exp(-(intercept + slope_per_pp * d))), "
                           "d = distance of the loss to the nearest threshold in percentage points"},
            "training": jsonable(self.training),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ThresholdGrader":
        """Rebuild from ``to_dict`` data; ValueError on anything malformed."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION} file")
        features = d.get("features")
        if not isinstance(features, list) or len(features) != 1 or features[0] not in ALLOWED_FEATURES:
            raise ValueError(f"features must be one of {list(ALLOWED_FEATURES)}, got {features!r}")
        t = d.get("thresholds")
        if (not isinstance(t, list) or len(t) != 3 or any(finite_float(v) is None for v in t)
                or sorted(t) != t or not 0.0 < t[0] < 1.0 or t[2] >= 1.0):
            raise ValueError(f"thresholds must be three ordered losses in (0, 1), got {t!r}")
        conf = d.get("confidence", {})
        a, b = finite_float(conf.get("intercept")), finite_float(conf.get("slope_per_pp"))
        if a is None or b is None or b <= 0 or abs(a) > 100 or b > 100:
            raise ValueError("confidence needs a finite intercept and a positive slope")
        g = cls(features[0], [float(v) for v in t], [int(k) for k in d.get("fit_grades", [])])
        g.confidence = {"intercept": a, "slope_per_pp": b, "fitted": bool(conf.get("fitted", False))}
        g.training = dict(d.get("training", {})) if isinstance(d.get("training", {}), Mapping) else {}
        return g

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")


def _best_threshold(s: np.ndarray, positive: np.ndarray, prior: float) -> float:
    """The cut between sorted losses that maximises balanced accuracy; ties: the one nearest ``prior``."""
    values = np.unique(s)
    cuts = np.concatenate([[values[0] - 1e-3], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-3]])
    best, best_cut = -1.0, prior
    for cut in cuts:
        pred = s >= cut
        score = 0.5 * ((pred & positive).sum() / positive.sum() + (~pred & ~positive).sum() / (~positive).sum())
        if score > best + 1e-12 or (abs(score - best) <= 1e-12 and abs(cut - prior) < abs(best_cut - prior)):
            best, best_cut = score, float(cut)
    return float(np.clip(best_cut, 0.01, 0.99))


def read_threshold_grader(data: Mapping[str, Any], path: Path) -> ThresholdGrader:
    """A ThresholdGrader from parsed JSON, or HealthiVertError naming ``path``."""
    try:
        return ThresholdGrader.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise damaged_grader(path, exc) from None
