"""Plain-JSON values for reports, model cards and truth files: numpy to Python, NaN/inf to null."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value if value is None or isinstance(value, str) else str(value)


def rounded(x: float, digits: int = 4) -> float | None:
    """``x`` rounded to ``digits`` decimals; None when it is not finite."""
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None
