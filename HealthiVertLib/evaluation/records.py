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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any




KINDS = ("wedge", "biconcave", "crush")
LOSSES = (0.10, 0.22, 0.30, 0.50)  # grade 0, 1, 2, 3 for a crush; wedge/biconcave by their largest third
C_GRID = (0.1, 1.0, 10.0, 100.0)
N_PHANTOMS = 30
PHANTOM_RANGE = "T9-L5"
PHANTOM_LEVELS = ("T11", "T12", "L1", "L2", "L3", "L4")  # fractured levels (two per case)
PHANTOM_SPACINGS = ((1.5, 1.5, 1.5), (2.0, 2.0, 2.0), (1.0, 1.0, 2.0))
PHANTOM_JITTER = 0.03  # independent size variation of each body (fraction, sd)
PHANTOM_LOSS_RANGE = (0.12, 0.55)
MEMORY_RUNS = 3  # items per estimator and dataset re-run under tracemalloc (untimed)
SEED = 0
REPO = Path(__file__).resolve().parents[2]
GRADED = "graded"


# ------------------------------------------------------------------------------------ records


@dataclass
class Truth:
    """Exact truth of one vertebra: pre-fracture heights (mm), RHLV (fractions), Genant grade."""

    heights_mm: dict[str, float]
    rhlv: dict[str, float]
    grade: int


@dataclass
class Item:
    """One vertebra to estimate: which case, which level, its truth and how it was made."""

    dataset: str  # "real" | "phantom"
    subject: str
    case_id: str
    level: str
    kind: str  # "none" (unfractured) | wedge | biconcave | crush
    loss: float  # nominal simulated loss (0 for none)
    truth: Truth
    role: str = "test"  # "train" | "test" (phantoms)


@dataclass
class Estimate:
    """What one estimator said about one item."""

    estimator: str
    status: str
    reason: str | None = None
    rhlv: dict[str, float] | None = None
    healthy_mm: dict[str, float] | None = None  # pseudo-healthy heights; None for baselines
    abnormality: float | None = None
    seconds: float = float("nan")
    peak_mib: float | None = None
    grade_svm: int | None = None
    grade_rule: int | None = None


@dataclass
class BenchResult:
    """Items, estimates (estimator -> list aligned with items), notes and metrics."""

    items: list[Item]
    estimates: dict[str, list[Estimate]]
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # dataset -> estimator -> m
    setup: dict[str, Any] = field(default_factory=dict)
