"""Fitting the SVM grader on feature tables (CSV): ``healthivert train-grader``.

:func:`train_from_tables` reads ``report.csv`` tables (e.g. those of ``healthivert batch``), takes
the Genant grade of each row from a ``vertebra_data.json`` grade file (``io.grades``) or the
table's ``grade`` column, fits a ``measure.grading.SVMGrader`` and saves it with a summary of what was
used and skipped. Research use only, not for diagnosis.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import HealthiVertError
from ..io.grades import read_grade_file
from ..measure.grading import (
    ALLOWED_FEATURES, FEATURE_BOUND, FEATURES, GRADES, SVMGrader, THIRD_NAMES, feature_vector, finite_float,
)


# ------------------------------------------------------------------------- training from tables


def _read_table(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except FileNotFoundError:
        raise HealthiVertError(f"feature table {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise HealthiVertError(f"feature table {path} cannot be read as CSV: {exc}") from None
    for required in ("case", "verse_label"):
        if required not in columns:
            raise HealthiVertError(f"feature table {path} has no {required!r} column (columns: {columns})")
    return rows


def _parse_label(text: str | None) -> int | None:
    value = finite_float(text)
    return int(value) if value is not None and value == int(value) else None


def _collect_rows(
    tables: Sequence[str | os.PathLike], grades: Mapping[tuple[str, int], int] | None, features: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, int]]:
    """Features, grades and subjects of the usable rows, and counts of the skipped ones."""
    X, y, subjects = [], [], []
    skipped = Counter({"not_graded_status": 0, "missing_features": 0, "no_grade": 0})
    seen: set[tuple[str, int]] = set()  # (case, VerSe label) already counted: a vertebra counts once
    for table in tables:
        path = Path(table)
        rows = _read_table(path)
        derivable = {"rhlv_max"} if all(f"rhlv_{t}" in (rows[0] if rows else {}) for t in THIRD_NAMES) else set()
        if rows and any(f not in rows[0] and f not in derivable for f in features):
            missing = [f for f in features if f not in rows[0] and f not in derivable]
            raise HealthiVertError(f"feature table {path} lacks the feature column(s) {missing}")
        for n, row in enumerate(rows, start=2):
            if (row.get("status") or "graded").strip() != "graded":
                skipped["not_graded_status"] += 1
                continue
            try:
                values = feature_vector(row, features)
            except HealthiVertError:
                skipped["missing_features"] += 1
                continue
            case, label = (row.get("case") or "").strip(), _parse_label(row.get("verse_label"))
            grade = _row_grade(row, grades, case, label, f"{path.name} line {n}")
            if grade is None:
                skipped["no_grade"] += 1
                continue
            outside = [(f, v) for f, v in zip(features, values) if abs(v) > FEATURE_BOUND]
            if outside:
                raise HealthiVertError(
                    f"feature table {path} line {n}: {outside[0][0]} is {outside[0][1]:g}, not a height loss "
                    f"(a fraction from -{FEATURE_BOUND:g} to {FEATURE_BOUND:g}); fix or remove that row"
                )
            if case and label is not None:
                if (case, label) in seen:  # the same table given twice, or a case in two tables
                    skipped["duplicate"] += 1
                    continue
                seen.add((case, label))
            X.append(values)
            y.append(grade)
            subjects.append(case)
    return np.asarray(X, dtype=float).reshape(-1, len(features)), np.asarray(y, dtype=int), subjects, dict(skipped)


def _row_grade(
    row: Mapping[str, str], grades: Mapping[tuple[str, int], int] | None, case: str, label: int | None, where: str
) -> int | None:
    """Grade of a table row from the grade file (when given) or the ``grade`` column."""
    if grades is not None:
        return grades.get((case, label)) if label is not None else None
    text = (row.get("grade") or "").strip()
    if not text:
        return None
    value = finite_float(text)
    if value is None or value != int(value) or int(value) not in GRADES:
        raise HealthiVertError(f"{where}: grade {text!r} is not a Genant grade 0-3")
    return int(value)


def train_from_tables(
    tables: Sequence[str | os.PathLike],
    grade_file: str | os.PathLike | None,
    out: str | os.PathLike,
    C: float = 1.0,
    features: Sequence[str] = FEATURES,
    command: str | None = None,
) -> dict[str, Any]:
    """Fit an :class:`SVMGrader` on feature tables (CSV), save it to ``out``; return a summary.

    Rows whose ``status`` is not "graded", with empty features, or without a grade are skipped and
    counted; so is a repeat of a vertebra (same ``case`` and ``verse_label``) already counted. A
    feature outside [-1, 1] (not a height loss: a damaged table) is an error naming the row.
    Grades come from ``grade_file`` (keyed by ``case`` and ``verse_label``) when given, else from
    the ``grade`` column. Cross-validation groups vertebrae by ``case`` (the subject).
    """
    features = list(features)
    if not tables:
        raise HealthiVertError("no feature tables given; pass at least one CSV written by the batch run")
    bad = [f for f in features if f not in ALLOWED_FEATURES]
    if bad:
        raise HealthiVertError(f"unknown feature(s) {bad}; choose from {list(ALLOWED_FEATURES)}")
    grades = read_grade_file(grade_file) if grade_file is not None else None
    X, y, subjects, skipped = _collect_rows(tables, grades, features)
    if len(y) < 10:
        raise HealthiVertError(
            f"only {len(y)} usable graded vertebrae in the tables (skipped: {skipped}); "
            "training a grader needs at least 10, of at least two Genant grades"
        )
    grader = SVMGrader(C=C, features=features).fit(X, y, groups=subjects)
    grader.training.update(
        {
            "data": {
                "description": "RHLV feature tables of measured CTs",
                "tables": [Path(t).name for t in tables],
                "grade_source": Path(grade_file).name if grade_file is not None else "grade column",
                "skipped": skipped,
            },
            "command": command or "HealthiVertLib.measure.grading.train_from_tables",
        }
    )
    grader.save(out)
    return {
        "out": str(out),
        "n_used": int(len(y)),
        "n_subjects": grader.training["n_subjects"],
        "n_per_grade": grader.training["n_per_grade"],
        "skipped": skipped,
        "features": features,
        "C": float(C),
        "cv": grader.training["cv"],
    }
