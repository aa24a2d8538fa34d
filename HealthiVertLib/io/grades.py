"""VerSe grade files (HealthiVert ``vertebra_data.json``): Genant grades and splits per vertebra.

:func:`read_grade_file` returns ``{(case, VerSe label): grade}`` (0 normal, 1 mild, 2 moderate,
3 severe), from a flat file or one with ``train``/``val``/``test`` sections;
:func:`read_grade_splits` returns the section of each vertebra. Malformed keys or grades raise
``HealthiVertError`` naming the entry.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


GRADES = (0, 1, 2, 3)  # Genant: 0 normal, 1 mild, 2 moderate, 3 severe


from ..errors import HealthiVertError
from .jsonable import read_json


# ------------------------------------------------------------------------------ grade files


def _parse_key(key: Any) -> tuple[str, int]:
    """``"sub-verse004_16"`` -> ``("sub-verse004", 16)`` (split on the last underscore)."""
    if not isinstance(key, str) or "_" not in key:
        raise HealthiVertError(f"grade file key {key!r} is not <subject>_<VerSe label>, e.g. 'sub-verse004_16'")
    subject, _, label = key.rpartition("_")
    if not subject or not label.isdigit():
        raise HealthiVertError(f"grade file key {key!r} is not <subject>_<VerSe label>, e.g. 'sub-verse004_16'")
    return subject, int(label)


def _parse_grade(key: str, value: Any) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or int(value) not in GRADES:
        raise HealthiVertError(f"grade file entry {key!r} has grade {value!r}; grades must be Genant 0, 1, 2 or 3")
    return int(value)


def _read_grade_entries(path: str | os.PathLike) -> list[tuple[tuple[str, int], int, str | None]]:
    """((subject, label), grade, split or None) for every entry of a grade file."""
    path = Path(path)
    data = read_json(path, f"grade file {path}")
    if not isinstance(data, dict):
        raise HealthiVertError(f"grade file {path} must hold a JSON object of <subject>_<label>: grade")
    nested = bool(data) and all(isinstance(v, dict) for v in data.values())
    sections = data.items() if nested else [(None, data)]
    entries: list[tuple[tuple[str, int], int, str | None]] = []
    seen: dict[tuple[str, int], int] = {}
    for split, section in sections:
        for key, value in section.items():
            parsed, grade = _parse_key(key), _parse_grade(key, value)
            if parsed in seen and seen[parsed] != grade:
                raise HealthiVertError(f"grade file {path}: {key!r} appears twice with different grades")
            seen[parsed] = grade
            entries.append((parsed, grade, split))
    return entries


def read_grade_file(path: str | os.PathLike) -> dict[tuple[str, int], int]:
    """Genant grades keyed (subject, VerSe label) from a HealthiVert/VerSe grade JSON file.

    Accepts ``{"train": {"sub-verse004_16": 2, ...}, "val": {...}, "test": {...}}`` or a flat
    ``{"sub-verse004_16": 2, ...}``.
    """
    return {key: grade for key, grade, _ in _read_grade_entries(path)}


def read_grade_splits(path: str | os.PathLike) -> dict[tuple[str, int], str]:
    """The split ("train", "val", "test", ...) of every (subject, VerSe label); "" for a flat file."""
    return {key: split or "" for key, _, split in _read_grade_entries(path)}
