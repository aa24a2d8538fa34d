"""Loading a grader file, whatever its kind: the SVM (``grading``) or the threshold grader (``thresholds``).

Both are plain JSON with a ``format`` tag and load without unpickling; both answer
``grade(measured) -> (grade, confidence, P(grade 0..3))`` and name their ``features``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..errors import HealthiVertError
from ..io.resources import DEFAULT_GRADER_PATH
from .grading import FORMAT as SVM_FORMAT
from .grading import SVMGrader, read_grader_json
from .thresholds import FORMAT as THRESHOLD_FORMAT
from .thresholds import ThresholdGrader, read_threshold_grader

Grader = Union[SVMGrader, ThresholdGrader]


def load_grader(path: str | os.PathLike) -> Grader:
    """The grader in ``path`` (its ``format`` tag says which kind); HealthiVertError when unreadable."""
    path = Path(path)
    data = read_grader_json(path)
    kind = data.get("format") if isinstance(data, dict) else None
    if kind == THRESHOLD_FORMAT:
        return read_threshold_grader(data, path)
    if kind == SVM_FORMAT:
        return SVMGrader.from_file_data(data, path)
    raise HealthiVertError(f"grader file {path} is not a HealthiVert grader (format {kind!r}; expected "
                           f"{SVM_FORMAT!r} or {THRESHOLD_FORMAT!r})")


def load_default_grader() -> Grader:
    """The grader shipped with the package (``HealthiVertLib/data/grader_default.json``)."""
    return load_grader(DEFAULT_GRADER_PATH)
