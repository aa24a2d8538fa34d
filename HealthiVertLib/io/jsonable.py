"""Plain JSON: values for reports, model cards and truth files (numpy to Python, NaN/inf to null),
and :func:`read_json`, the bounded reading of the small JSON files users give (grader, grades,
``dataset.json``) with a one-line error naming the file.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import HealthiVertError

# The JSON files users give are settings of a few kilobytes; a larger file is a wrong path (or an attack
# on the parser) and is refused before it is read.
MAX_JSON_BYTES = 16 * 2**20


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


def read_json(
    path: str | os.PathLike,
    what: str,
    advice: str = "",
    bad_content: Callable[[str], HealthiVertError] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
) -> Any:
    """The parsed content of a user-supplied JSON file, or a one-line HealthiVertError.

    ``what`` names the file in messages ("grade file 'g.json'"); ``advice`` ends the messages about a
    missing or wrong path. Refused: a missing file, a folder, a named pipe or device, a file over
    ``MAX_JSON_BYTES``, unreadable bytes, text that is not UTF-8 JSON or is nested too deeply to parse;
    ``bad_content(reason)`` makes the error for the content problems (default: "is not readable JSON").
    """
    path = Path(path)
    tail = f"; {advice}" if advice else ""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise HealthiVertError(f"{what} does not exist{tail}") from None
    except OSError as exc:
        raise HealthiVertError(f"{what} cannot be read ({exc.strerror or exc}){tail}") from None
    if stat.S_ISDIR(info.st_mode):
        raise HealthiVertError(f"{what} is a folder, not a file{tail}")
    if not stat.S_ISREG(info.st_mode):
        raise HealthiVertError(f"{what} is not a regular file (a named pipe, socket or device){tail}")
    if info.st_size > MAX_JSON_BYTES:
        raise HealthiVertError(
            f"{what} is {info.st_size / 2**20:.0f} MB; such files hold a few kilobytes and at most "
            f"{MAX_JSON_BYTES // 2**20} MB are read{tail}"
        )
    try:
        data = path.read_bytes()
    except PermissionError:
        raise HealthiVertError(f"{what} cannot be read (permission denied); check the file's permissions") from None
    except OSError as exc:
        raise HealthiVertError(f"{what} cannot be read ({exc.strerror or exc}){tail}") from None
    try:
        return json.loads(data.decode("utf-8"), parse_constant=parse_constant)
    except RecursionError:
        reason = "it is nested too deeply to be read"
    except UnicodeDecodeError:
        reason = "it is not UTF-8 text"
    except ValueError as exc:
        reason = str(exc)[:200]
    if bad_content is not None:
        raise bad_content(reason)
    raise HealthiVertError(f"{what} is not readable JSON ({reason})")
