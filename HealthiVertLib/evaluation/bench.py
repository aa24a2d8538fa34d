"""Accuracy benchmark (``healthivert bench``): :func:`run` collects, grades, scores and writes.

Every engine and baseline against exact ground truth on simulated fractures: ``simulated`` builds
the items and runs the estimators (the protocol is described there), ``scoring`` grades and
computes the metrics, ``tables`` writes ``benchmarks/accuracy.md`` with its raw JSON and figures.
Everything trained or measured here is on simulated fractures; research use only, not diagnosis.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence


from .records import BenchResult, N_PHANTOMS
from .scoring import compute_metrics, grade_all
from .simulated import collect
from .tables import write_report




def run(markdown_path: Path, n_phantoms: int = N_PHANTOMS, quick: bool = False,
        estimators: Sequence[str] | None = None, command: str = "healthivert bench",
        progress: Callable[[int, int, str], None] | None = None, workers: int = 1) -> BenchResult:
    """Collect, grade, score and write everything; return the result."""
    t0 = time.perf_counter()
    result = collect(n_phantoms=n_phantoms, quick=quick, estimators=estimators, progress=progress,
                     workers=workers)
    grade_all(result)
    compute_metrics(result)
    write_report(result, Path(markdown_path), command, time.perf_counter() - t0)
    return result
