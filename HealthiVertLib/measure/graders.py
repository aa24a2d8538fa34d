"""Loading a grader file, whatever its kind: the SVM (``grading``) or the threshold grader (``thresholds``).

Both are plain JSON with a ``format`` tag and load without unpickling; both answer
``grade(measured) -> (grade, confidence, P(grade 0..3))`` and name their ``features``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from ..errors import HealthiVertError
from ..io.resources import DEFAULT_GRADER_PATH
from .grading import FORMAT as SVM_FORMAT
from .grading import SVMGrader
from .thresholds import FORMAT as THRESHOLD_FORMAT
from .thresholds import ThresholdGrader, read_threshold_grader

Grader = Union[SVMGrader, ThresholdGrader]


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} in the file")


def load_grader(path: str | os.PathLike) -> Grader:
    """The grader in ``path`` (its ``format`` tag says which kind); HealthiVertError when unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except FileNotFoundError:
        raise HealthiVertError(f"grader file {path} does not exist; give the path of a grader JSON file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HealthiVertError(f"grader file {path} cannot be read as JSON: {exc}") from None
    kind = data.get("format") if isinstance(data, dict) else None
    if kind == THRESHOLD_FORMAT:
        return read_threshold_grader(data, path)
    if kind == SVM_FORMAT:
        return SVMGrader.load(path)
    raise HealthiVertError(f"grader file {path} is not a HealthiVert grader (format {kind!r}; expected "
                           f"{SVM_FORMAT!r} or {THRESHOLD_FORMAT!r})")


def load_default_grader() -> Grader:
    """The grader shipped with the package (``HealthiVertLib/data/grader_default.json``)."""
    return load_grader(DEFAULT_GRADER_PATH)
