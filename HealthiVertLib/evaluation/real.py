"""Real benchmark (``healthivert bench --real``): every estimator against radiologists' Genant grades.

Truth is the radiologists' Genant grade of each vertebra in ``DIR/vertebra_data.json``
(HealthiVert-GAN format, keys ``sub-verseNNN_<VerSe label>``, read by ``io.grades``); the cases are
the label maps (and CTs, when present) of ``DIR`` found by ``io.discover.discover_cases``. Default
``DIR``: ``benchmarks/data/verse19`` (4 VerSe19 subjects, 30 graded vertebrae, CC BY-SA 4.0).

Every estimator of ``simulated.available_estimators`` (each engine of ``engines.ENGINES`` that
starts here, then the baselines ``minmax`` and ``neighbours``) measures every graded vertebra
(each case is loaded once; the ``spine`` engine's level prior is refitted without the subject it
grades, :func:`loso_spine_engine`). Each measurement is graded five ways (``GRADERS``):

* ``rule`` / ``rule_points`` -- Genant's thresholds (20/25/40 %) on the largest third's RHLV / on
  the largest loss at the 15/50/85 % points (``measure.points``); nothing fitted.
* ``default_svm`` -- the shipped grader (``measure.graders.load_default_grader``); its model card
  says what it was fitted on.
* ``loso_svm`` / ``loso_points`` -- a linear SVM (balanced class weights, C = ``LOSO_C``) on the
  RHLV / point-loss features, refitted on the real vertebrae of the *other* subjects,
  leave-one-subject-out (:func:`loso_grades`). A grade with fewer than two training vertebrae is
  left out of that fold's training and said so.

Metrics per estimator x grader (:func:`real_metrics`): 4-class macro precision/recall/F1,
per-grade F1, Genant >= 2 sensitivity/specificity, grade-1 recall, fracture AUC (grade >= 1 vs 0,
largest-third RHLV), quadratic-weighted kappa and coverage. A vertebra without a grade counts as
wrong in every rate and is listed. ``real_report.run_real`` collects, grades, scores and writes the
Markdown report and the raw per-vertebra JSON. Research use only; not a clinical validation.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import HealthiVertError
from ..io import labels as lab
from ..io.discover import CaseFiles, discover_cases
from ..io.grades import GRADES, read_grade_file, read_grade_splits
from ..measure.grading import (
    GRADER_FEATURES,
    POINT_FEATURES,
    SVMGrader,
    classification_metrics,
    feature_vector,
    genant_rule,
    grading_inputs,
)
from ..measure.heights import THIRDS
from ..measure.thresholds import ThresholdGrader
from .records import GRADED, REPO
from .scoring import roc_auc
from .simulated import available_estimators, run_estimator


DEFAULT_DATA = REPO / "benchmarks" / "data" / "verse19"
GRADE_FILE = "vertebra_data.json"
GRADERS = ("rule", "rule_points", "default_svm", "loso_svm", "loso_points", "loso_threshold", "loso_thresholds")
GRADER_TITLES = {
    "rule": "Genant rule on RHLV thirds",
    "rule_points": "Genant rule on point losses",
    "default_svm": "default grader (as shipped)",
    "loso_svm": "SVM on RHLV refitted LOSO",
    "loso_points": "SVM on point losses refitted LOSO",
    "loso_threshold": "grade-1 threshold on point losses refitted LOSO",
    "loso_thresholds": "all thresholds on point losses refitted LOSO",
}
POINT_GRADER_FEATURES = (*POINT_FEATURES, "point_loss_max")
POINT_GRADERS = ("rule_points", "loso_points", "loso_threshold", "loso_thresholds")  # scored (AUC) by the largest point loss, the others by RHLV
LOSO_C = 1.0  # fixed: three training subjects per fold are too few to choose C by nested grouped CV
MISSING = "missing"  # status of a graded vertebra absent from its label map
PAPER_MACRO_F1 = 0.723  # HealthiVert-GAN, VerSe19 validation split


# ------------------------------------------------------------------------------------ records


@dataclass
class RealVertebra:
    """One vertebra graded by the radiologists: subject, level, VerSe label, Genant grade, split."""

    subject: str
    level: str
    verse_label: int
    truth: int
    split: str = ""


@dataclass
class RealEstimate:
    """One estimator's measurement of one vertebra and its grade by each grader (None: no grade)."""

    estimator: str
    status: str
    reason: str | None = None
    rhlv: dict[str, float] | None = None
    point_loss: dict[str, float] | None = None
    seconds: float | None = None
    grades: dict[str, int | None] = field(default_factory=lambda: {g: None for g in GRADERS})


@dataclass
class RealResult:
    """Vertebrae, estimates (estimator -> list aligned with vertebrae), LOSO folds, metrics, notes."""

    vertebrae: list[RealVertebra]
    estimates: dict[str, list[RealEstimate]]
    folds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # estimator -> fold records
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # estimator -> grader -> m
    notes: list[str] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    stability: dict[str, Any] | None = None  # evaluation.stability.grade_flips, with --stability
    cases: dict[str, Any] = field(default_factory=dict, repr=False)  # subject -> loaded Case (not written)


# ------------------------------------------------------------------------------------ data


def load_real_set(data_dir: str | os.PathLike) -> tuple[list[RealVertebra], dict[str, CaseFiles], list[str]]:
    """The graded vertebrae of ``data_dir`` that have a case, the cases by subject, and notes.

    Raises ``HealthiVertError`` (one line) when the grade file or the cases are missing, or when
    no case has a graded vertebra.
    """
    data_dir = Path(data_dir)
    grade_path = data_dir / GRADE_FILE
    if not data_dir.is_dir():
        raise HealthiVertError(f"real benchmark data folder {data_dir} does not exist; pass --data DIR "
                               "(a folder with vertebra_data.json and the label maps)")
    if not grade_path.is_file():
        raise HealthiVertError(f"{data_dir} has no {GRADE_FILE} (the radiologists' Genant grades); "
                               "pass --data DIR with that file and the label maps")
    grades = read_grade_file(grade_path)
    splits = read_grade_splits(grade_path)
    try:
        cases = {c.name: c for c in discover_cases(data_dir)}
    except HealthiVertError as err:
        raise HealthiVertError(f"{data_dir} has {GRADE_FILE} but no case: {err}") from None
    notes = []
    vertebrae = []
    for (subject, label), grade in sorted(grades.items(), key=lambda kv: (kv[0][0], _rank(kv[0][1]))):
        if subject not in cases:
            continue
        level = lab.VERSE.level_of(label) or f"label {label}"
        vertebrae.append(RealVertebra(subject, level, label, grade, splits.get((subject, label), "")))
    no_case = sorted({s for s, _ in grades} - set(cases))
    if no_case:
        notes.append(f"graded subjects without a case in {data_dir} (left out): {', '.join(no_case)}")
    ungraded = sorted(set(cases) - {s for s, _ in grades})
    if ungraded:
        notes.append(f"cases without grades in {GRADE_FILE} (left out): {', '.join(ungraded)}")
    if not vertebrae:
        raise HealthiVertError(f"no case of {data_dir} has a graded vertebra in {GRADE_FILE} "
                               f"(cases: {', '.join(sorted(cases))})")
    used = {v.subject for v in vertebrae}
    return vertebrae, {s: c for s, c in cases.items() if s in used}, notes


def _rank(label: int) -> float:
    """Cranio-caudal order of a VerSe label (T13 = 28 between T12 and L1)."""
    return 19.5 if label == 28 else float(label)


# ------------------------------------------------------------------------------------ running


def collect_real(
    data_dir: str | os.PathLike = DEFAULT_DATA,
    estimators: Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> RealResult:
    """Run every available (or every named) estimator on every graded vertebra; no grading yet."""
    from ..geometry.spine import spine_levels
    from ..io.case import load_case

    vertebrae, cases, notes = load_real_set(data_dir)
    factories = available_estimators(notes)
    names = list(factories)
    if estimators is not None:
        unknown = sorted(set(estimators) - set(names))
        if unknown:
            raise HealthiVertError(f"unknown or unavailable estimator(s) {unknown}; available: {', '.join(names)}")
        names = [n for n in names if n in estimators]
    instances = {n: factories[n]() for n in names}
    loaded = {s: load_case(f.seg, f.ct, f.subregions, name=s) for s, f in cases.items()}
    healthy = healthy_spines(vertebrae, loaded) if "spine" in instances else {}
    if "spine" in instances:
        notes.append("`spine`: its level prior is refitted for each held-out subject on the literature and the other "
                     "subjects' grade-0 vertebrae only (leave-one-subject-out), never on the subject it grades")
    estimates: dict[str, list[RealEstimate | None]] = {n: [None] * len(vertebrae) for n in names}
    progress = progress or (lambda k, n, message: None)
    steps, done = len(cases) * len(names), 0
    for subject, files in cases.items():
        idx = [i for i, v in enumerate(vertebrae) if v.subject == subject]
        case = loaded[subject]
        present = {s.level for s in spine_levels(case)}
        measured = [i for i in idx if vertebrae[i].level in present]
        for i in idx:
            if i not in measured:
                for n in names:
                    estimates[n][i] = RealEstimate(n, MISSING, f"{vertebrae[i].level} is not in the label map")
        for name in names:
            progress(done, steps, f"{subject}: {name}")
            estimator = loso_spine_engine(subject, healthy) if name == "spine" else instances[name]
            try:
                out = run_estimator(name, estimator, case, [vertebrae[i].level for i in measured])
            except HealthiVertError as err:
                for i in measured:
                    estimates[name][i] = RealEstimate(name, "failed", str(err))
            else:
                for i, e in zip(measured, out):
                    estimates[name][i] = RealEstimate(name, e.status, e.reason, e.rhlv, e.point_loss,
                                                      e.seconds if math.isfinite(e.seconds) else None)
            done += 1
            progress(done, steps, f"{subject}: {name}")
    result = RealResult(vertebrae, {n: [e for e in est if e is not None] for n, est in estimates.items()},
                        notes=notes)
    result.cases = loaded
    result.setup = {
        "data": str(data_dir),
        "subjects": sorted(cases),
        "cases": {s: {"seg": c.seg.name, "ct": c.ct.name if c.ct else None} for s, c in cases.items()},
        "estimators": names,
        "graders": list(GRADERS),
        "loso_c": LOSO_C,
        "grader_features": list(GRADER_FEATURES),
    }
    return result


def healthy_spines(vertebrae: Sequence[RealVertebra], cases: dict[str, Any]) -> dict[str, list]:
    """The point heights of each subject's whole grade-0 vertebrae (``training.spine_prior``), measured once."""
    from ..training.spine_prior import healthy_vertebrae

    return {s: healthy_vertebrae(case, {v.level: v.truth for v in vertebrae if v.subject == s})
            for s, case in cases.items()}


def loso_spine_engine(held_out: str, healthy: dict[str, list]) -> Any:
    """The ``spine`` engine with its level prior fitted without ``held_out``: the literature and the
    grade-0 vertebrae of the other subjects (``healthy``: :func:`healthy_spines`)."""
    from ..engines.spine import SpineEngine
    from ..training.spine_prior import fit_prior, literature_prior

    others = [s for s in healthy if s != held_out]
    prior = fit_prior([healthy[s] for s in others], literature_prior(),
                      f"literature + grade-0 vertebrae of {', '.join(others)}")
    return SpineEngine(prior=prior)


# ------------------------------------------------------------------------------------ grading


def _three(e: RealEstimate, losses: dict[str, float] | None) -> dict[str, float] | None:
    """The anterior/middle/posterior values of ``losses`` when ``e`` is graded and all three are finite."""
    if e.status != GRADED or not losses:
        return None
    values = {t: losses.get(t) for t in THIRDS}
    if any(v is None or not math.isfinite(float(v)) for v in values.values()):
        return None
    return {t: float(v) for t, v in values.items()}


def points_of(e: RealEstimate) -> dict[str, float] | None:
    """The anterior/middle/posterior point losses of a graded estimate, or None when not all finite."""
    return _three(e, e.point_loss)


def thirds_of(e: RealEstimate) -> dict[str, float] | None:
    """The anterior/middle/posterior RHLV of a graded estimate, or None when it has no finite thirds."""
    return _three(e, e.rhlv)


def fit_fold_grader(X: np.ndarray, y: np.ndarray, features: Sequence[str] = GRADER_FEATURES) -> SVMGrader:
    """The LOSO fold's SVM: linear, balanced class weights, C = ``LOSO_C``, on ``features``.

    Its calibration is cross-validated by vertebra within the training subjects (too few subjects
    to group by subject); the held-out subject is never in ``X``.
    """
    return SVMGrader(C=LOSO_C, features=features).fit(X, y)


def fit_fold_threshold(grades: Sequence[int]) -> Callable[..., Any]:
    """A fold fitter of the threshold grader (``measure.thresholds``) on one loss, fitting ``grades``."""
    def fit(X: np.ndarray, y: np.ndarray, features: Sequence[str]) -> ThresholdGrader:
        return ThresholdGrader(features[0], fit_grades=grades).fit(X[:, 0], y)

    return fit


def loso_grades(
    X: np.ndarray,
    y: Sequence[int],
    subjects: Sequence[str],
    ok: Sequence[bool],
    fit: Callable[..., SVMGrader] = fit_fold_grader,
    features: Sequence[str] = GRADER_FEATURES,
) -> tuple[list[int | None], list[dict[str, Any]]]:
    """Leave-one-subject-out grades: for each subject, fit on the other subjects' rows, grade its rows.

    ``X`` (n, features) rows count only where ``ok``; ``y`` are the true grades. A grade with fewer
    than two training vertebrae is left out of that fold's training (the fold record says so); a
    fold with fewer than two grades left grades nothing. Returns the grade per row (None: no grade)
    and one record per fold (held-out subject, training subjects, grades used and left out, note).
    """
    X, y = np.asarray(X, float), np.asarray(y, int)
    subjects, ok = np.asarray([str(s) for s in subjects]), np.asarray(ok, bool)
    pred: list[int | None] = [None] * len(y)
    folds = []
    for held_out in dict.fromkeys(subjects.tolist()):
        test = subjects == held_out
        train = ~test & ok
        counts = {g: int((y[train] == g).sum()) for g in GRADES}
        used = [g for g in GRADES if counts[g] >= 2]
        left_out = [g for g in GRADES if counts[g] < 2]
        keep = train & np.isin(y, used)
        record: dict[str, Any] = {
            "held_out": held_out,
            "train_subjects": sorted(set(subjects[keep].tolist())),
            "n_train": int(keep.sum()),
            "train_counts": counts,
            "grades_used": used,
            "grades_left_out": left_out,
            "note": None,
        }
        if left_out:
            record["note"] = (f"training folds lack grade(s) {', '.join(map(str, left_out))} "
                              f"(fewer than 2 vertebrae of the other subjects); the fold's grader learns nothing of them")
        grader = None
        if len(used) < 2:
            record["note"] = f"no SVM: the other subjects hold fewer than two grades with 2+ vertebrae ({counts})"
        else:
            try:
                grader = fit(X[keep], y[keep], features)
            except HealthiVertError as err:
                record["note"] = f"no SVM: {err}"
        if grader is not None:
            for i in np.flatnonzero(test & ok):
                pred[i] = int(grader.grade(dict(zip(features, X[i])))[0])
        folds.append(record)
    return pred, folds


def grade_real(result: RealResult) -> None:
    """Fill every estimate's grades: Genant rule, default SVM and the LOSO-refitted SVM."""
    from ..measure.graders import load_default_grader

    default = load_default_grader()
    y = [v.truth for v in result.vertebrae]
    subjects = [v.subject for v in result.vertebrae]
    for name, estimates in result.estimates.items():
        thirds = [thirds_of(e) for e in estimates]
        points = [points_of(e) for e in estimates]
        for e, t, p in zip(estimates, thirds, points):
            if t is not None:
                e.grades["rule"] = genant_rule(t)[0]
                try:  # a grader on point losses cannot grade where they are missing
                    e.grades["default_svm"] = default.grade(grading_inputs(t, p))[0]
                except HealthiVertError:
                    pass
            if p is not None:
                e.grades["rule_points"] = genant_rule(p)[0]
        result.folds[name] = []
        point_rows = [grading_inputs({}, p) if p else None for p in points]
        for grader, rows, features, fit in (
            ("loso_svm", thirds, GRADER_FEATURES, fit_fold_grader),
            ("loso_points", point_rows, POINT_GRADER_FEATURES, fit_fold_grader),
            ("loso_threshold", point_rows, ("point_loss_max",), fit_fold_threshold(grades=(1,))),
            ("loso_thresholds", point_rows, ("point_loss_max",), fit_fold_threshold(grades=(1, 2, 3))),
        ):
            ok = [r is not None for r in rows]
            X = np.array([feature_vector(r, features) if r is not None else np.zeros(len(features)) for r in rows])
            pred, folds = loso_grades(X, y, subjects, ok, fit=fit, features=features)
            for e, g in zip(estimates, pred):
                e.grades[grader] = g
            result.folds[name] += [{**f, "grader": grader} for f in folds]
            for f in folds:
                if f["note"]:
                    result.notes.append(f"`{name}` {grader}, LOSO fold '{f['held_out']} held out': {f['note']}")


# ------------------------------------------------------------------------------------ metrics


def _rate(hits: int, n: int) -> float:
    return hits / n if n else float("nan")


def real_metrics(truth: Sequence[int], pred: Sequence[int | None],
                 score: Sequence[float | None] | None = None) -> dict[str, Any]:
    """Metrics of predicted grades ``pred`` (None: not graded) against ``truth``.

    * coverage: share of vertebrae with a grade; an ungraded vertebra counts as wrong everywhere
      (as a prediction matching no grade), except in the kappa, which needs a grade.
    * macro precision/recall/F1 over the grades present in the truth (``classification_metrics``);
      per-grade precision/recall/F1 for every grade present in the truth or predicted (None otherwise).
    * ``sens_ge2``: grade 2-3 vertebrae graded 2-3; ``spec_ge2``: grade 0-1 vertebrae graded 0-1;
      ``grade1_recall``: grade-1 vertebrae graded 1 (NaN when the truth has none).
    * ``auc``: fracture (grade >= 1) vs grade 0 by ``score`` (largest-third RHLV), over the
      vertebrae with a finite score; NaN with one class.
    * ``qwk``: quadratic-weighted kappa over the graded vertebrae (scikit-learn).
    """
    from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

    t = np.asarray(truth, int)
    p = np.array([-1 if g is None else int(g) for g in pred], int)  # -1: never a correct grade
    graded = p >= 0
    n = len(t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = classification_metrics(t, p) if n else None
        pp, rr, ff, support = precision_recall_fscore_support(t, p, labels=list(GRADES), average=None,
                                                              zero_division=0)
        qwk = (float(cohen_kappa_score(t[graded], p[graded], labels=list(GRADES), weights="quadratic"))
               if graded.any() else float("nan"))
    per_grade = {}
    for g in GRADES:
        shown = (t == g).any() or (p == g).any()
        per_grade[str(g)] = ({"precision": float(pp[g]), "recall": float(rr[g]), "f1": float(ff[g]),
                              "n_true": int(support[g]), "n_pred": int((p == g).sum())} if shown else None)
    frac, normal = t >= 2, t <= 1
    m: dict[str, Any] = {
        "n": n,
        "n_graded": int(graded.sum()),
        "coverage": _rate(int(graded.sum()), n),
        "ungraded": [int(i) for i in np.flatnonzero(~graded)],
        "true_counts": {str(g): int((t == g).sum()) for g in GRADES},
        "macro_precision": cm["macro_precision"] if cm else float("nan"),
        "macro_recall": cm["macro_recall"] if cm else float("nan"),
        "macro_f1": cm["macro_f1"] if cm else float("nan"),
        "accuracy": cm["accuracy"] if cm else float("nan"),
        "confusion_matrix": cm["confusion_matrix"] if cm else None,
        "per_grade": per_grade,
        "sens_ge2": _rate(int((frac & (p >= 2)).sum()), int(frac.sum())),
        "spec_ge2": _rate(int((normal & graded & (p <= 1)).sum()), int(normal.sum())),
        "grade1_recall": _rate(int(((t == 1) & (p == 1)).sum()), int((t == 1).sum())),
        "qwk": qwk if math.isfinite(qwk) else float("nan"),
        "auc": float("nan"),
        "n_auc": 0,
    }
    if score is not None:
        s = np.array([np.nan if v is None else float(v) for v in score], float)
        m["auc"] = roc_auc(t >= 1, s)
        m["n_auc"] = int(np.isfinite(s).sum())
    return m


def largest_third(e: RealEstimate) -> float | None:
    """The largest of the three thirds' RHLV of an estimate (the fracture score), or None."""
    t = thirds_of(e)
    return max(t.values()) if t else None


def score_real(result: RealResult) -> None:
    """Metrics per estimator and grader over every graded vertebra."""
    truth = [v.truth for v in result.vertebrae]
    result.metrics = {}
    for name, estimates in result.estimates.items():
        by_rhlv = [largest_third(e) for e in estimates]
        by_points = [max(p.values()) if (p := points_of(e)) else None for e in estimates]
        result.metrics[name] = {g: real_metrics(truth, [e.grades[g] for e in estimates],
                                                by_points if g in POINT_GRADERS else by_rhlv) for g in GRADERS}


def stability_of(result: RealResult, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Grade flips of the default engine and grader under ``evaluation.stability.PERTURBATIONS``,
    on the cases ``collect_real`` loaded."""
    from .stability import grade_flips

    levels = {s: [v.level for v in result.vertebrae if v.subject == s] for s in result.cases}
    return grade_flips(result.cases, levels, progress=progress)
