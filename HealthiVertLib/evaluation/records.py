"""The benchmark's fixed protocol constants and its records: truth, items, estimates, results.

The constants (fracture kinds and losses, the SVM's C grid, the phantom set's levels, spacings,
size jitter and loss range, the seed) fix the protocol described in ``simulated``.
:class:`Item`: one evaluated vertebra with its :class:`Truth` (exact pre-fracture heights, RHLV,
Genant grade); :class:`Estimate`: one estimator's measurement and grades of one item;
:class:`BenchResult`: all of them plus notes, metrics and the setup.
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
    point_loss: dict[str, float] | None = None  # loss at the 15/50/85 % points (measure.points)
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
