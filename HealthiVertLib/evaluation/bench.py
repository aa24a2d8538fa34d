"""Accuracy benchmark (``healthivert bench``): every engine and baseline against exact ground truth.

Real CTs with graded fractures are scarce, so the ground truth is made: healthy vertebrae (real
ones from ``Testing/Data`` and procedural phantoms) are compressed by the fracture simulator
(``simulate.py``) with known morphology and height loss, and the exact pre-fracture heights, RHLV
and Genant grade are kept. Each estimator -- the pseudo-healthy engines of ``engines.ENGINES`` and
the reference-free ``baselines`` -- then measures the fractured vertebra; the unfractured source
vertebrae are the grade-0 examples.

Protocol (fixed; see ``benchmarks/accuracy.md`` for the numbers):

* Real set: every healthy, whole source vertebra x (wedge, biconcave, crush) x LOSSES, plus the
  unfractured source. Subjects: the bundled TotalSegmentator sample (L1-L5, 3 mm), the TPTBox
  case (L3, 1.5 mm; its neighbours are cut by the field of view), the HealthiVert example 0007
  (mask only, 1 mm; sources = whole vertebrae graded 0 in ``vertebra_data.json``).
* Phantom set: ``n_phantoms`` phantom spines T9-L5; per case two fractured vertebrae at least two
  levels apart (levels, kinds and losses drawn from a seeded generator) and the other vertebrae as
  grade-0 examples. Cases are split in halves by case: the first half trains, the second half is
  the phantom test set.
* Grades: the Genant threshold rule on the estimated RHLV (nothing fitted), and a linear SVM
  (``grading.SVMGrader``, C chosen by grouped CV) fitted on the same estimator's RHLV of other
  subjects only -- leave-one-subject-out over the real subjects (training: the other real subjects
  and the phantom training cases), and phantom training cases -> phantom test cases (training also
  holds every real subject).
* Metrics: pseudo-healthy height error vs truth (mean absolute %, per third), RHLV error (mean
  absolute percentage points per third and of the largest third), grade confusion matrix, macro
  precision/recall/F1, quadratic-weighted kappa, ROC AUC of fracture (grade >= 1) vs normal for the
  largest-third RHLV and the abnormality score, coverage (fraction of vertebrae graded), time per
  vertebra, peak traced memory.

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
