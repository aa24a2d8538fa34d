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

import datetime as _dt
import json
import math
import os
import platform
import time
import tracemalloc
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import labels as lab
from .baselines import BASELINES
from .engines import ENGINES, NoContextError, get_engine
from .errors import HealthiVertError
from .grading import GRADER_FEATURES, SVMGrader, classification_metrics, feature_vector, genant_rule
from .heights import THIRDS
from .io import Case, load_case, write_bytes_atomic, write_text_atomic

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
REPO = Path(__file__).resolve().parents[1]
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


# ------------------------------------------------------------------------------------ estimators


def available_estimators(notes: list[str]) -> dict[str, Callable[[], Any]]:
    """Every engine of ``engines.ENGINES`` that can start here, then the baselines.

    An engine that cannot start (missing weights or PyTorch) is skipped with a note.
    """
    out: dict[str, Callable[[], Any]] = {}
    for name in ENGINES:
        try:
            engine = get_engine(name)
        except Exception as err:  # noqa: BLE001 -- any failure to start means "skip with a note"
            notes.append(f"engine '{name}' skipped: {err}")
            continue
        out[name] = lambda engine=engine: engine
    for name, cls in BASELINES.items():
        out[name] = cls
    return out


def run_estimator(name: str, estimator: Any, case: Case, levels: Sequence[str]) -> list[Estimate]:
    """Estimate ``levels`` of ``case`` with one engine (the pipeline itself) or baseline.

    The time per vertebra covers everything from the loaded case (curve, bodies, prediction,
    measurement), divided evenly among ``levels``.
    """
    from .pipeline import grade_case

    t0 = time.perf_counter()
    if name in BASELINES:
        out = _run_baseline(name, estimator, case, levels)
    else:
        result = grade_case(case, list(levels), engine=estimator, volumes=False)
        out = [
            Estimate(
                estimator=name,
                status=v.status,
                reason=v.reason,
                rhlv=dict(v.rhlv) if v.rhlv else None,
                healthy_mm=dict(v.heights_mm["pseudo_healthy"]) if v.heights_mm else None,
                abnormality=v.abnormality_score,
            )
            for v in result.vertebrae
        ]
    seconds = (time.perf_counter() - t0) / max(len(levels), 1)
    for e in out:
        e.seconds = seconds
    return out


def _run_baseline(name: str, baseline: Any, case: Case, levels: Sequence[str]) -> list[Estimate]:
    from .pipeline import _Bodies, _neighbours, resolve_targets, spine_levels

    all_levels = spine_levels(case)
    bodies = _Bodies(case, all_levels)
    out = []
    for target in resolve_targets(all_levels, levels):
        body = bodies.get(target) if not target.fragment else None
        if body is None or body.footprint is None or not body.complete:
            out.append(Estimate(name, "incomplete", "cut by the field of view"))
            continue
        try:
            est = baseline.estimate(body, _neighbours(target, all_levels, bodies))
        except NoContextError as err:
            out.append(Estimate(name, "no_context", str(err)))
            continue
        out.append(Estimate(name, GRADED, rhlv=est.rhlv))
    return out


def measure_peak_mib(name: str, estimator: Any, case: Case, levels: Sequence[str]) -> float:
    """Peak traced memory (MiB; numpy buffers and Python objects) of one untimed estimator run."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    run_estimator(name, estimator, case, levels)
    peak = tracemalloc.get_traced_memory()[1] - base
    if started:
        tracemalloc.stop()
    return peak / 2**20 / max(len(levels), 1)


# ------------------------------------------------------------------------------------ truth


def own_truths(case: Case, levels: Sequence[str]) -> dict[str, Truth]:
    """Truth of unfractured vertebrae: their own heights, no loss, grade 0 (whole vertebrae only)."""
    from .pipeline import _Bodies, resolve_targets, spine_levels

    all_levels = spine_levels(case)
    bodies = _Bodies(case, all_levels)
    out = {}
    for target in resolve_targets(all_levels, levels):
        body = bodies.get(target) if not target.fragment else None
        if body is not None and body.footprint is not None and body.complete:
            heights = dict(body.own_heights.original_mm)
            out[target.level] = Truth(heights, {r: 0.0 for r in (*THIRDS, "overall")}, 0)
    return out


# ------------------------------------------------------------------------------------ data sets


@dataclass
class RealSubject:
    """A real case and the healthy source levels to compress."""

    subject: str
    seg: Path
    ct: Path | None
    subregions: Path | None
    levels: tuple[str, ...]
    note: str


def real_subjects(data_dir: Path = REPO / "Testing" / "Data") -> list[RealSubject]:
    """The real cases of the repository and their healthy sources (see the module docstring)."""
    from .cli import SAMPLE_DIR

    subjects = [
        RealSubject("sample-totalsegmentator", SAMPLE_DIR / "seg.nii.gz", SAMPLE_DIR / "ct.nii.gz",
                    SAMPLE_DIR / "vertebrae_body.nii.gz", ("L1", "L2", "L3", "L4", "L5"),
                    "TotalSegmentator example CT, 3 mm, CT + labels + vertebrae_body; T11/T12 cut"),
        RealSubject("tptbox", data_dir / "tptbox" / "sub-ct_seg-vert_label-22_msk.nii.gz",
                    data_dir / "tptbox" / "sub-ct_label-22_ct.nii.gz",
                    data_dir / "tptbox" / "sub-ct_seg-subreg_label-22_msk.nii.gz", ("L3",),
                    "TPTBox sample, 1.5 mm, CT + labels + subregions; L2 and L4 cut by the field of view"),
    ]
    grades_path = data_dir / "healthivert" / "vertebra_data.json"
    seg_0007 = data_dir / "healthivert" / "0007_msk.nii.gz"
    if grades_path.is_file() and seg_0007.is_file():
        from .grading import read_grade_file

        grades = read_grade_file(grades_path)
        healthy = []
        for label in range(18, 24):  # T11-L4: T9/T10 are cut, L5 has no caudal neighbour
            level = lab.VERSE.level_of(label)
            if grades.get(("sub-verse007", label)) == 0:
                healthy.append(level)
        subjects.append(RealSubject("healthivert-0007", seg_0007, None, None, tuple(healthy),
                                    "HealthiVert-GAN example 0007 (VerSe sub-verse007), mask only, 1 mm; "
                                    "sources = levels 18-23 graded 0 in vertebra_data.json"))
    return [s for s in subjects if s.seg.is_file()]


@dataclass(frozen=True)
class Task:
    """One case to build and estimate: a real source vertebra with one fracture, or one phantom."""

    dataset: str  # "real" | "phantom"
    index: int  # real: subject index in ``real_subjects``; phantom: case number
    level: str = ""
    kind: str = "none"
    loss: float = 0.0
    n_phantoms: int = 0
    memory: bool = False  # also measure peak memory (untimed extra run)


def make_tasks(subjects: Sequence[RealSubject], kinds: Sequence[str], losses: Sequence[float],
               n_phantoms: int, memory_runs: int = MEMORY_RUNS) -> list[Task]:
    """Every task of the benchmark in a fixed order; ``memory_runs`` of each set also measure memory."""
    tasks = []
    for k, subj in enumerate(subjects):
        for level in subj.levels:
            tasks.append(Task("real", k, level))
            tasks += [Task("real", k, level, kind, loss) for kind in kinds for loss in losses]
    real = [Task(**{**asdict(t), "memory": k < memory_runs}) for k, t in enumerate(tasks)]
    test_start = n_phantoms // 2  # memory on the phantom test half, whose metrics are reported
    return real + [Task("phantom", k, n_phantoms=n_phantoms, memory=test_start <= k < test_start + memory_runs)
                   for k in range(n_phantoms)]


def build_task(task: Task, subjects: Sequence[RealSubject]) -> tuple[list[Item], Case, list[str]]:
    """The items (with truth) and the case of one task, deterministically; notes on skipped sources."""
    from .simulate import simulate_fracture

    if task.dataset == "phantom":
        return _phantom_case(task.index, task.n_phantoms)
    subj = subjects[task.index]
    case = _load_real(subj)
    truth = own_truths(case, [task.level]).get(task.level)
    if truth is None:
        return [], case, [f"{subj.subject} {task.level}: not whole in the image, not used as a source"]
    if task.kind == "none":
        item = Item("real", subj.subject, f"{subj.subject}/{task.level}/none", task.level, "none", 0.0, truth)
        return [item], case, []
    sim = simulate_fracture(case.seg, vertebra=task.level, kind=task.kind, loss=task.loss, ct=case.ct,
                            body=case.subregions, labels=case.scheme.name, seed=SEED)
    fractured = Case(f"{subj.subject}-{task.level}-{task.kind}-{task.loss:g}", sim.seg, sim.ct, sim.body, case.scheme)
    item = Item("real", subj.subject, f"{subj.subject}/{task.level}/{task.kind}/{task.loss:g}", task.level,
                task.kind, task.loss, truth_from_simulation(sim.truth, task.level))
    return [item], fractured, []


_REAL_CACHE: dict[str, Case] = {}


def _load_real(subj: RealSubject) -> Case:
    if subj.subject not in _REAL_CACHE:
        _REAL_CACHE[subj.subject] = load_case(subj.seg, subj.ct, subj.subregions, name=subj.subject)
    return _REAL_CACHE[subj.subject]


def truth_from_simulation(truth: dict[str, Any], level: str) -> Truth:
    """The simulator's truth of ``level`` (``truth["fractures"][level]``) as a :class:`Truth`."""
    entry = truth["fractures"][level]
    regions = (*THIRDS, "overall")
    heights = {r: float(entry["pre_fracture"]["heights_mm"][r]) for r in regions}
    return Truth(heights, {r: float(entry["rhlv"][r]) for r in regions}, int(entry["genant_grade"]))


def phantom_parameters(rng: np.random.Generator) -> dict[str, Any]:
    """Acquisition and anatomy of one phantom, drawn from ``rng`` (spacing, orientation, curvature)."""
    return {
        "spacing": PHANTOM_SPACINGS[int(rng.integers(len(PHANTOM_SPACINGS)))],
        "orientation": str(rng.choice(("LPS", "RAS", "PIR", "LAS"))),
        "oblique_deg": float(np.round(rng.uniform(0, 10), 1)),
        "kyphosis_deg": float(np.round(rng.uniform(30, 50), 1)),
        "lordosis_deg": float(np.round(rng.uniform(25, 45), 1)),
        "scoliosis_deg": float(np.round(rng.uniform(0, 15), 1)),
        "size_jitter": PHANTOM_JITTER,
        "trabecular_hu": float(np.round(rng.uniform(80, 160))),
        "subregions": str(rng.choice(("kirschke", "totalseg"))),
    }


def _phantom_case(k: int, n: int) -> tuple[list[Item], Case, list[str]]:
    """Phantom case ``k`` of ``n``: two simulated fractures at least two levels apart, the other
    whole vertebrae as grade 0.

    Everything is drawn from a generator seeded by (SEED, k), so a case does not depend on the others.
    The first half of the cases (by index) is the training half, the rest the test half.
    """
    from .phantom import make_phantom
    from .simulate import simulate_fracture

    rng = np.random.default_rng([SEED, k])
    role = "train" if k < n // 2 else "test"
    subject = f"phantom-{k:03d}"
    params = phantom_parameters(rng)
    first = int(rng.integers(len(PHANTOM_LEVELS)))
    second = int(rng.choice([j for j in range(len(PHANTOM_LEVELS)) if abs(j - first) >= 2]))
    fractures = [(PHANTOM_LEVELS[j], str(rng.choice(KINDS)), float(np.round(rng.uniform(*PHANTOM_LOSS_RANGE), 3)))
                 for j in sorted((first, second))]
    ph = make_phantom(PHANTOM_RANGE, seed=SEED * 1000 + k, **params)
    base = Case(subject, ph.seg, ph.ct, ph.body, lab.VERSE)
    seg, ct, body, truth = base.seg, base.ct, base.subregions, None
    for j, (level, kind, loss) in enumerate(fractures):
        sim = simulate_fracture(seg, vertebra=level, kind=kind, loss=loss, ct=ct, body=body, labels="verse",
                                seed=SEED * 1000 + 10 * k + j, truth=truth)
        seg, ct, body, truth = sim.seg, sim.ct, sim.body, sim.truth
    case = Case(subject, seg, ct, body, base.scheme)
    items = [Item("phantom", subject, f"{subject}/{healthy}/none", healthy, "none", 0.0, t, role)
             for healthy, t in own_truths(base, truth["healthy_levels"]).items()]
    items += [Item("phantom", subject, f"{subject}/{level}/{kind}/{loss:g}", level, kind, loss,
                   truth_from_simulation(truth, level), role) for level, kind, loss in fractures]
    return items, case, []


# ------------------------------------------------------------------------------------ running


_INSTANCES: dict[str, Any] = {}


def _share_cores(workers: int) -> None:
    """Give each worker process its share of the cores (oversubscribed PyTorch threads are ~5x slower)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def run_task(task: Task, subjects: Sequence[RealSubject], names: Sequence[str]
             ) -> tuple[list[Item], dict[str, list[Estimate]], list[str]]:
    """Build one task's case and run every named estimator on its items (in this process)."""
    items, case, notes = build_task(task, subjects)
    estimates: dict[str, list[Estimate]] = {}
    if not items:
        return items, {n: [] for n in names}, notes
    levels = [it.level for it in items]
    for name in names:
        if name not in _INSTANCES:
            _INSTANCES[name] = BASELINES[name]() if name in BASELINES else get_engine(name)
        est = _INSTANCES[name]
        estimates[name] = run_estimator(name, est, case, levels)
        if task.memory:
            peak = measure_peak_mib(name, est, case, levels)
            for e in estimates[name]:
                e.peak_mib = peak
    return items, estimates, notes


def collect(
    n_phantoms: int = N_PHANTOMS,
    quick: bool = False,
    estimators: Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    data_dir: Path = REPO / "Testing" / "Data",
    workers: int = 1,
) -> BenchResult:
    """Build the evaluation set and run every estimator on it (no grading yet; see ``grade_all``).

    ``quick``: the sample's L3 unfractured and with a 40 % wedge and crush, and at most one
    phantom -- a tiny run for tests. ``workers`` > 1 runs cases in parallel processes (the times
    per vertebra are then measured under that load).
    """
    notes: list[str] = []
    names = list(available_estimators(notes))
    if estimators is not None:
        unknown = sorted(set(estimators) - set(names))
        if unknown:
            raise HealthiVertError(f"unknown or unavailable estimator(s) {unknown}; available: {', '.join(names)}")
        names = [n for n in names if n in estimators]
    subjects = real_subjects(data_dir)
    kinds, losses = KINDS, LOSSES
    if quick:
        subjects = [RealSubject(**{**asdict(s), "levels": ("L3",)}) for s in subjects
                    if s.subject == "sample-totalsegmentator"]
        kinds, losses, n_phantoms = ("wedge", "crush"), (0.40,), min(n_phantoms, 1)
    tasks = make_tasks(subjects, kinds, losses, n_phantoms, 1 if quick else MEMORY_RUNS)
    progress = progress or (lambda k, n, message: None)
    result = BenchResult(items=[], estimates={k: [] for k in names}, notes=notes)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, initializer=_share_cores, initargs=(workers,))
        outputs = pool.map(run_task, tasks, [subjects] * len(tasks), [names] * len(tasks))
    else:
        pool = None
        outputs = (run_task(t, subjects, names) for t in tasks)
    try:
        for k, (task, (items, estimates, task_notes)) in enumerate(zip(tasks, outputs)):
            result.items.extend(items)
            for name in names:
                result.estimates[name].extend(estimates[name])
            notes.extend(task_notes)
            progress(k + 1, len(tasks), items[-1].case_id if items else task.dataset)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result.setup = {
        "quick": quick,
        "kinds": list(kinds),
        "losses": list(losses),
        "n_phantoms": n_phantoms,
        "real_subjects": [{"subject": s.subject, "levels": list(s.levels), "note": s.note} for s in subjects],
        "seed": SEED,
        "c_grid": list(C_GRID),
        "workers": workers,
    }
    return result


# ------------------------------------------------------------------------------------ grading


def features(e: Estimate) -> np.ndarray | None:
    """The grader's features (anterior, middle, posterior RHLV) of an estimate, or None."""
    if e.status != GRADED or not e.rhlv:
        return None
    x = np.array([e.rhlv.get(t, np.nan) if e.rhlv.get(t) is not None else np.nan for t in THIRDS], float)
    return x if np.all(np.isfinite(x)) else None


def fit_grader(X: np.ndarray, y: np.ndarray, groups: Sequence[str], c_grid: Sequence[float] = C_GRID) -> SVMGrader:
    """SVMGrader with C chosen by grouped cross-validation (best macro-F1; ties to the smaller C)."""
    best, best_f1, scores = None, -1.0, {}
    for C in c_grid:
        grader = SVMGrader(C=C, features=GRADER_FEATURES).fit(X, y, groups=list(groups))
        f1 = scores[f"{C:g}"] = grader.training["cv"]["macro_f1"]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = grader, f1
    assert best is not None
    best.training["c_selection"] = {"grid": list(c_grid), "criterion": "grouped-CV macro F1", "chosen": best.C,
                                    "macro_f1": scores}
    return best


def _folds(items: Sequence[Item]) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(train mask, test mask, description) over items: leave-one-real-subject-out, phantom halves."""
    dataset = np.array([it.dataset for it in items])
    subject = np.array([it.subject for it in items])
    role = np.array([it.role for it in items])
    phantom_train = (dataset == "phantom") & (role == "train")
    folds = []
    for s in sorted(set(subject[dataset == "real"].tolist())):
        test = subject == s
        folds.append(((dataset == "real") & ~test | phantom_train, test, f"real subject {s} held out"))
    phantom_test = (dataset == "phantom") & (role == "test")
    if phantom_test.any():
        folds.append(((dataset == "real") | phantom_train, phantom_test, "phantom test cases"))
    return folds


def grade_all(result: BenchResult) -> None:
    """Fill ``grade_rule`` and ``grade_svm`` of every estimate (SVM fitted on other subjects only)."""
    items = result.items
    y = np.array([it.truth.grade for it in items])
    subjects = np.array([it.subject for it in items])
    for name, estimates in result.estimates.items():
        feats = [features(e) for e in estimates]
        for e, x in zip(estimates, feats):
            if x is not None:
                e.grade_rule = genant_rule(dict(zip(THIRDS, x)))[0]
        ok = np.array([x is not None for x in feats])
        X = np.array([feature_vector(dict(zip(THIRDS, x)), GRADER_FEATURES) if x is not None
                      else np.zeros(len(GRADER_FEATURES))
                      for x in feats])
        for train, test, what in _folds(items):
            tr = train & ok
            try:
                grader = fit_grader(X[tr], y[tr], subjects[tr])
            except HealthiVertError as err:
                result.notes.append(f"{name}: no SVM for fold '{what}': {err}")
                continue
            for i in np.flatnonzero(test & ok):
                estimates[i].grade_svm = grader.grade(dict(zip(GRADER_FEATURES, X[i])))[0]


# ------------------------------------------------------------------------------------ metrics


def height_error_pct(pred: dict[str, float], true: dict[str, float]) -> dict[str, float]:
    """Absolute error of predicted heights, % of the true height, per region."""
    return {r: 100.0 * abs(pred[r] - true[r]) / true[r] for r in true if pred.get(r) is not None and true[r] > 0}


def rhlv_error_pp(pred: dict[str, float], true: dict[str, float]) -> dict[str, float]:
    """Absolute RHLV error in percentage points per third, overall, and of the largest third ("max")."""
    out = {r: 100.0 * abs(pred[r] - true[r]) for r in (*THIRDS, "overall")}
    out["max"] = 100.0 * abs(max(pred[t] for t in THIRDS) - max(true[t] for t in THIRDS))
    return out


def roc_auc(positive: Sequence[bool], score: Sequence[float]) -> float:
    """ROC AUC of ``score`` for ``positive`` (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    positive, score = np.asarray(positive, bool), np.asarray(score, float)
    keep = np.isfinite(score)
    if len(set(positive[keep].tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(positive[keep], score[keep]))


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def metrics_for(items: Sequence[Item], estimates: Sequence[Estimate]) -> dict[str, Any]:
    """All metrics of one estimator on one set of items (graded ones; coverage over all)."""
    pairs = [(it, e) for it, e in zip(items, estimates) if features(e) is not None]
    m: dict[str, Any] = {"n": len(items), "n_graded": len(pairs),
                         "coverage": len(pairs) / len(items) if items else float("nan")}
    h_err = [height_error_pct(e.healthy_mm, it.truth.heights_mm) for it, e in pairs if e.healthy_mm]
    m["height_error_pct"] = {r: _mean(h.get(r) for h in h_err) for r in (*THIRDS, "overall")} if h_err else None
    r_err = [rhlv_error_pp(e.rhlv, it.truth.rhlv) for it, e in pairs]
    m["rhlv_error_pp"] = {r: _mean(x[r] for x in r_err) for r in (*THIRDS, "overall", "max")}
    fractured = [it.truth.grade >= 1 for it, _ in pairs]
    m["auc_rhlv"] = roc_auc(fractured, [max(e.rhlv[t] for t in THIRDS) for _, e in pairs])
    m["auc_abnormality"] = (roc_auc(fractured, [e.abnormality if e.abnormality is not None else np.nan
                                                for _, e in pairs])
                            if any(e.abnormality is not None for _, e in pairs) else None)
    for key in ("grade_svm", "grade_rule"):
        graded = [(it.truth.grade, getattr(e, key)) for it, e in pairs if getattr(e, key) is not None]
        with warnings.catch_warnings():  # a grade predicted but absent from the truth is expected
            warnings.simplefilter("ignore", UserWarning)
            m[key] = classification_metrics(*zip(*graded)) if graded else None
        if graded:
            m[key]["n"] = len(graded)
    times = [e.seconds for _, e in zip(items, estimates) if math.isfinite(e.seconds)]
    m["seconds_per_vertebra"] = {"median": float(np.median(times)), "mean": float(np.mean(times))} if times else None
    peaks = [e.peak_mib for e in estimates if e.peak_mib is not None]
    m["peak_mib_per_vertebra"] = float(np.median(peaks)) if peaks else None
    return m


def compute_metrics(result: BenchResult) -> None:
    """Metrics per dataset (real: all real items; phantom: test cases) and estimator."""
    sets = {
        "real": [i for i, it in enumerate(result.items) if it.dataset == "real"],
        "phantom": [i for i, it in enumerate(result.items) if it.dataset == "phantom" and it.role == "test"],
    }
    result.metrics = {}
    for dataset, idx in sets.items():
        if not idx:
            continue
        items = [result.items[i] for i in idx]
        result.metrics[dataset] = {
            name: metrics_for(items, [est[i] for i in idx]) for name, est in result.estimates.items()
        }


# ------------------------------------------------------------------------------------ outputs

DATASET_TITLES = {
    "real": "Simulated fractures of real healthy vertebrae (leave-one-subject-out)",
    "phantom": "Phantom spines (test half of the cases)",
}


def machine_line() -> str:
    """CPU model, cores used, OS and library versions, for the report header."""
    import scipy
    import SimpleITK
    import sklearn

    from . import __version__

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores usable, {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, SimpleITK "
            f"{SimpleITK.Version.VersionString()}, scikit-learn {sklearn.__version__}, healthivert {__version__}")


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _dataset_section(result: BenchResult, dataset: str) -> str:
    ms = result.metrics[dataset]
    n_items = next(iter(ms.values()))["n"]
    idx = [i for i, it in enumerate(result.items) if it.dataset == dataset and (dataset == "real" or it.role == "test")]
    grades = np.bincount([result.items[i].truth.grade for i in idx], minlength=4)
    parts = [f"## {DATASET_TITLES[dataset]}",
             f"{n_items} vertebrae; true grades 0/1/2/3 = {'/'.join(str(int(g)) for g in grades)}. "
             "Errors and grades over the vertebrae each estimator graded (its coverage).",
             "### Heights and height loss"]
    rows = []
    for name, m in ms.items():
        h = m["height_error_pct"] or {}
        r = m["rhlv_error_pp"]
        rows.append([f"`{name}`", f"{100 * m['coverage']:.0f} %"]
                    + [_f(h.get(k)) for k in (*THIRDS, "overall")]
                    + [_f(r[k]) for k in (*THIRDS, "max")]
                    + [_f(m["auc_rhlv"], 3), _f(m["auc_abnormality"], 3)])
    parts.append(_table(["estimator", "coverage", "height err A %", "M %", "P %", "overall %",
                         "RHLV err A pp", "M pp", "P pp", "max-third pp", "AUC RHLV", "AUC abnormality"], rows))
    parts.append("### Grades")
    rows = []
    for name, m in ms.items():
        row = [f"`{name}`"]
        for key in ("grade_svm", "grade_rule"):
            g = m[key]
            row += ([_f(g["macro_precision"], 3), _f(g["macro_recall"], 3), _f(g["macro_f1"], 3),
                     _f(g["quadratic_weighted_kappa"], 3)] if g else ["n/a"] * 4)
        t, p = m["seconds_per_vertebra"], m["peak_mib_per_vertebra"]
        row += [_f(t["median"] if t else None, 2), _f(p, 0)]
        rows.append(row)
    parts.append(_table(["estimator", "SVM precision", "SVM recall", "SVM macro-F1", "SVM QWK",
                         "rule precision", "rule recall", "rule macro-F1", "rule QWK", "s / vertebra",
                         "peak MiB / vertebra"], rows))
    parts.append("Confusion matrices of the SVM grades (rows true grade 0-3, columns predicted 0-3):")
    rows = []
    for name, m in ms.items():
        g = m["grade_svm"]
        if g:
            rows.append([f"`{name}`"] + [" ".join(f"{v:>3d}" for v in row) for row in g["confusion_matrix"]])
    if rows:
        parts.append(_table(["estimator", "true 0", "true 1", "true 2", "true 3"], rows))
    if dataset == "real":
        parts.append(_by_subject(result))
    parts.append(_breakdown(result, dataset))
    return "\n\n".join(parts)


def _by_subject(result: BenchResult) -> str:
    """The main metrics of every estimator on each real subject separately."""
    rows = []
    for subject in dict.fromkeys(it.subject for it in result.items if it.dataset == "real"):
        idx = [i for i, it in enumerate(result.items) if it.subject == subject]
        items = [result.items[i] for i in idx]
        for name, est in result.estimates.items():
            m = metrics_for(items, [est[i] for i in idx])
            h = (m["height_error_pct"] or {}).get("overall")
            rule, svm = m["grade_rule"], m["grade_svm"]
            rows.append([subject, f"`{name}`", f"{100 * m['coverage']:.0f} %", _f(h), _f(m["rhlv_error_pp"]["max"]),
                         _f(rule["macro_f1"], 3) if rule else "n/a", _f(svm["macro_f1"], 3) if svm else "n/a",
                         _f(m["auc_rhlv"], 3)])
    return ("Per real subject (the SVM of a subject is the one fitted without it):\n\n"
            + _table(["subject", "estimator", "coverage", "height err overall %", "RHLV err max-third pp",
                      "rule macro-F1", "SVM macro-F1", "AUC RHLV"], rows))


def _breakdown(result: BenchResult, dataset: str) -> str:
    """Largest-third RHLV error and coverage of every estimator by subject (real) and by kind."""
    idx = [i for i, it in enumerate(result.items) if it.dataset == dataset and (dataset == "real" or it.role == "test")]
    by_source: dict[str, list[int]] = {}
    by_kind: dict[str, list[int]] = {}
    for i in idx:
        it = result.items[i]
        if dataset == "real":
            by_source.setdefault(f"{it.subject} {it.level}", []).append(i)
        by_kind.setdefault(f"kind: {it.kind}", []).append(i)
    groups = {**by_source, **by_kind}
    names = list(result.estimates)
    rows = []
    for key, members in groups.items():
        row = [key, str(len(members))]
        for name in names:
            pairs = [(result.items[i], result.estimates[name][i]) for i in members]
            ok = [(it, e) for it, e in pairs if features(e) is not None]
            err = _mean(rhlv_error_pp(e.rhlv, it.truth.rhlv)["max"] for it, e in ok)
            row.append(f"{_f(err)} ({len(ok)}/{len(pairs)})")
        rows.append(row)
    return ("Largest-third RHLV error in percentage points (graded / vertebrae) by "
            + ("source vertebra and " if dataset == "real" else "") + "fracture kind:\n\n"
            + _table(["group", "n", *[f"`{n}`" for n in names]], rows))


def markdown(result: BenchResult, command: str, seconds: float, figures: dict[str, str]) -> str:
    """The accuracy report (``benchmarks/accuracy.md``)."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    setup = result.setup
    subjects = "; ".join(f"{s['subject']} ({', '.join(s['levels']) or 'none'}): {s['note']}"
                         for s in setup["real_subjects"])
    parts = [
        "# Accuracy benchmark: pseudo-healthy engines and reference-free baselines",
        f"Measured {date} by `{command}` in {seconds / 60:.1f} min. Machine: {machine_line()}.",
        "**Simulated ground truth; research use only, not for diagnosis.** Every fracture here is made by "
        "`HealthiVertLib/simulate.py` from a healthy vertebra, whose exact pre-fracture heights are known. "
        "The numbers say how well each estimator recovers a known simulated fracture, not clinical accuracy.",
        "## Protocol",
        f"- Real set: each healthy source vertebra unfractured (grade 0) and compressed as "
        f"{', '.join(setup['kinds'])} with loss {', '.join(f'{x:g}' for x in setup['losses'])} (the simulator's "
        "RHLV of the affected region: anterior third for wedge, middle third for biconcave, all columns for "
        f"crush; the true grade is Genant's rule on the true RHLV). Sources: {subjects}.",
        f"- Phantoms: {setup['n_phantoms']} procedural spines {PHANTOM_RANGE} (`HealthiVertLib/phantom.py`; "
        "spacing 1-2 mm, orientation, obliquity, curvature, bone density and body sizes (3 % sd) drawn per case), "
        f"two fractures each at least two levels apart (levels in {', '.join(PHANTOM_LEVELS)}, kind and loss "
        f"{PHANTOM_LOSS_RANGE[0]:g}-{PHANTOM_LOSS_RANGE[1]:g} drawn with a fixed seed), the other whole vertebrae "
        "as grade-0 examples; first half of the cases for training, second half tested.",
        "- Estimators: every engine of `engines.ENGINES` that starts here, through `pipeline.grade_case` "
        "(one target vertebra per call), and the baselines of `HealthiVertLib/baselines.py` (`minmax`: 1 - "
        "height of each third / tallest third of the same vertebra; `neighbours`: 1 - height of each third / "
        "mean of the same third of the nearest usable neighbours). Baselines have no pseudo-healthy shape: "
        "no height error, no abnormality score.",
        "- Grades: *rule* = Genant thresholds (20/25/40 %) on the largest estimated third (nothing fitted); "
        "*SVM* = linear SVM on the estimator's own RHLV thirds and their maximum, C in "
        f"{{{', '.join(f'{c:g}' for c in setup['c_grid'])}}} by grouped CV, fitted only on other subjects "
        "(leave-one-real-subject-out with the phantom training half added; phantom test cases with all real "
        "subjects and the phantom training half).",
        "- Height error: |predicted pseudo-healthy - true pre-fracture| / true, mean per third (%). RHLV "
        "error: |estimated - true| in percentage points, per third and for the largest third (the one that "
        "grades). AUC: fracture (true grade >= 1) vs normal, scored by the largest-third RHLV and by the "
        "abnormality score (0-100, `heights.abnormality_score`). Coverage: share of vertebrae graded "
        "(others: no usable neighbour or cut by the field of view). Time: wall time of one call (curve, "
        "bodies, prediction, measurement) per vertebra, median. Memory: tracemalloc peak of "
        f"{MEMORY_RUNS} untimed runs per estimator and dataset, median.",
    ]
    parts += [_dataset_section(result, d) for d in ("real", "phantom") if d in result.metrics]
    parts.append(_default_grader_section())
    if figures:
        parts.append("## Figures\n\n" + "\n".join(f"![{k}]({v})" for k, v in figures.items()))
    if result.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in result.notes))
    return "\n\n".join(parts) + "\n"


def _default_grader_section() -> str:
    """What the bundled grader was fitted on and its cross-validated numbers (from its JSON)."""
    from .grading import load_default_grader

    t = load_default_grader().training
    cv = t.get("cv", {})
    data = t.get("data", {})
    lines = ["## Default grader",
             f"`HealthiVertLib/data/grader_default.json`: {data.get('description', 'see its model card')}; "
             f"C = {load_default_grader().C:g}; reproduce with `{t.get('command', 'scripts/fit_default_grader.py')}`."]
    if cv:
        lines.append(f"Cross-validated by subject ({cv.get('scheme')}): macro-F1 {_f(cv.get('macro_f1'), 3)}, "
                     f"quadratic-weighted kappa {_f(cv.get('quadratic_weighted_kappa'), 3)}, accuracy "
                     f"{_f(cv.get('accuracy'), 3)} on {t.get('n_samples')} vertebrae. The `context` rows above "
                     "(SVM columns) are the same protocol evaluated on held-out subjects; details in "
                     "`HealthiVertLib/data/grader_default.md`.")
    return "\n\n".join(lines)


def _figures(result: BenchResult, out_dir: Path, stem: str) -> dict[str, str]:
    """Scatter plots (estimated vs true largest-third loss) and SVM confusion matrices, as PNG."""
    from .report import _new_figure, _png_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(result.estimates)
    written = {}
    for dataset in result.metrics:
        idx = [i for i, it in enumerate(result.items) if it.dataset == dataset
               and (dataset == "real" or it.role == "test")]
        fig = _new_figure((3.2 * len(names), 3.4))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        colours = {"none": "#2e9d4a", "wedge": "#d62728", "biconcave": "#1f77b4", "crush": "#9467bd"}
        for ax, name in zip(axes, names):
            for kind, colour in colours.items():
                pts = [(max(result.items[i].truth.rhlv[t] for t in THIRDS),
                        max(result.estimates[name][i].rhlv[t] for t in THIRDS))
                       for i in idx if result.items[i].kind == kind and features(result.estimates[name][i]) is not None]
                if pts:
                    x, y = np.array(pts).T * 100
                    ax.scatter(x, y, s=12, c=colour, label=kind, alpha=0.8)
            ax.plot([-10, 80], [-10, 80], color="0.5", lw=0.8)
            for g in (20, 25, 40):
                ax.axhline(g, color="0.85", lw=0.6)
                ax.axvline(g, color="0.85", lw=0.6)
            ax.set(xlim=(-10, 75), ylim=(-10, 75), xlabel="true largest-third loss (%)", title=name)
        axes[0].set_ylabel("estimated (%)")
        axes[0].legend(fontsize=7, loc="upper left")
        path = out_dir / f"{stem}_{dataset}_scatter.png"
        write_bytes_atomic(path, _png_bytes(fig))
        written[f"{dataset}: estimated vs true loss"] = path
        fig = _new_figure((2.6 * len(names), 2.8))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names):
            g = result.metrics[dataset][name]["grade_svm"]
            cm = np.array(g["confusion_matrix"]) if g else np.zeros((4, 4), int)
            ax.imshow(cm, cmap="Blues")
            for (r, c), v in np.ndenumerate(cm):
                ax.text(c, r, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > cm.max() / 2 else "black")
            ax.set(xticks=range(4), yticks=range(4), xlabel="predicted grade", title=f"{name} (SVM)")
        axes[0].set_ylabel("true grade")
        path = out_dir / f"{stem}_{dataset}_confusion.png"
        write_bytes_atomic(path, _png_bytes(fig))
        written[f"{dataset}: SVM confusion matrices"] = path
    return written


def raw_json(result: BenchResult) -> str:
    """Every item with its truth and every estimator's estimate, plus metrics and notes."""
    rows = []
    for i, it in enumerate(result.items):
        rows.append({**asdict(it), "estimates": {n: asdict(e[i]) for n, e in result.estimates.items()}})
    from .results import _jsonable

    return json.dumps(_jsonable({"setup": result.setup, "notes": result.notes, "metrics": result.metrics,
                                 "vertebrae": rows}), separators=(",", ":")) + "\n"


def read_raw_json(path: str | os.PathLike) -> BenchResult:
    """The items and estimates of a raw JSON written by :func:`raw_json` (metrics are recomputed)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        items, estimates = [], {}
        for row in data["vertebrae"]:
            t = row["truth"]
            items.append(Item(**{**{k: row[k] for k in Item.__dataclass_fields__ if k != "truth"},
                                 "truth": Truth(t["heights_mm"], t["rhlv"], t["grade"])}))
            for name, e in row["estimates"].items():
                e = {**e, "seconds": float("nan") if e.get("seconds") is None else e["seconds"]}
                estimates.setdefault(name, []).append(Estimate(**e))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HealthiVertError(f"{path} is not a raw benchmark JSON written by 'healthivert bench': {err}") from None
    return BenchResult(items, estimates, list(data.get("notes", [])), {}, dict(data.get("setup", {})))


def write_report(result: BenchResult, markdown_path: Path, command: str, seconds: float,
                 figures_dir: Path | None = None, json_path: Path | None = None) -> dict[str, Path]:
    """Write the markdown tables, the PNG figures and the raw JSON; return what was written."""
    markdown_path = Path(markdown_path)
    figures_dir = Path(figures_dir) if figures_dir else markdown_path.parent / "figures"
    stem = markdown_path.stem
    figs = _figures(result, figures_dir, stem)
    rel = {k: os.path.relpath(v, markdown_path.parent).replace(os.sep, "/") for k, v in figs.items()}
    write_text_atomic(markdown_path, markdown(result, command, seconds, rel))
    json_path = Path(json_path) if json_path else markdown_path.with_suffix(".json")
    write_text_atomic(json_path, raw_json(result))
    return {"markdown": markdown_path, "json": json_path, **{k: Path(v) for k, v in figs.items()}}


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
