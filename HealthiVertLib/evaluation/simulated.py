"""Benchmark items: simulated fractures of real and phantom vertebrae, run through every estimator.

Real CTs with graded fractures are scarce, so the ground truth is made: healthy vertebrae (real
ones from ``Testing/Data`` and procedural phantoms) are compressed by the fracture simulator
(``truth.simulate``) with known morphology and height loss, and the exact pre-fracture heights,
RHLV and Genant grade are kept. Each estimator -- the pseudo-healthy engines of
``engines.ENGINES`` and the reference-free ``baselines`` -- then measures the fractured vertebra;
the unfractured source vertebrae are the grade-0 examples. :func:`collect` builds the set and runs
the estimators (optionally in worker processes), with time per vertebra and peak traced memory.

Protocol (fixed; see ``benchmarks/accuracy.md`` for the numbers; grading and metrics: ``scoring``):

* Real set: every healthy, whole source vertebra x (wedge, biconcave, crush) x LOSSES, plus the
  unfractured source. Subjects: the bundled TotalSegmentator sample (L1-L5, 3 mm), the TPTBox
  case (L3, 1.5 mm; its neighbours are cut by the field of view), the HealthiVert example 0007
  (mask only, 1 mm; sources = whole vertebrae graded 0 in ``vertebra_data.json``).
* Phantom set: ``n_phantoms`` phantom spines T9-L5; per case two fractured vertebrae at least two
  levels apart (levels, kinds and losses drawn from a seeded generator) and the other vertebrae as
  grade-0 examples. Cases are split in halves by case: the first half trains, the second half is
  the phantom test set.

Everything measured here is on simulated fractures; research use only, not diagnosis.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engines import ENGINES, get_engine
from ..engines.base import NoContextError
from ..errors import HealthiVertError
from ..io import labels as lab
from ..io.case import Case, load_case
from ..measure.heights import THIRDS, own_heights
from .baselines import BASELINES
from .records import (
    C_GRID,
    GRADED,
    KINDS,
    LOSSES,
    MEMORY_RUNS,
    N_PHANTOMS,
    PHANTOM_JITTER,
    PHANTOM_LEVELS,
    PHANTOM_LOSS_RANGE,
    PHANTOM_RANGE,
    PHANTOM_SPACINGS,
    REPO,
    SEED,
    BenchResult,
    Estimate,
    Item,
    Truth,
)

REAL_CASES: dict[str, Case] = {}  # loaded real cases, one per subject and process


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
    from ..pipeline.case import grade_case

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
                point_loss=dict(v.point_loss) if v.point_loss else None,
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
    from ..engines.neighbours import gather_neighbours
    from ..geometry.spine import SpineBodies, resolve_targets, spine_levels

    all_levels = spine_levels(case)
    bodies = SpineBodies(case, all_levels)
    out = []
    for target in resolve_targets(all_levels, levels):
        body = bodies.get(target) if not target.fragment else None
        if body is None or body.footprint is None or not body.complete:
            out.append(Estimate(name, "incomplete", "cut by the field of view"))
            continue
        try:
            est = baseline.estimate(body, gather_neighbours(target, all_levels, bodies))
        except NoContextError as err:
            out.append(Estimate(name, "no_context", str(err)))
            continue
        out.append(Estimate(name, GRADED, rhlv=est.rhlv, point_loss=est.point_loss))
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
    from ..geometry.spine import SpineBodies, resolve_targets, spine_levels

    all_levels = spine_levels(case)
    bodies = SpineBodies(case, all_levels)
    out = {}
    for target in resolve_targets(all_levels, levels):
        body = bodies.get(target) if not target.fragment else None
        if body is not None and body.footprint is not None and body.complete:
            heights = dict(own_heights(body).original_mm)
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
    from ..io.resources import SAMPLE_DIR

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
        from ..io.grades import read_grade_file

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
    from ..truth.simulate import simulate_fracture

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


def _load_real(subj: RealSubject) -> Case:
    if subj.subject not in REAL_CASES:
        REAL_CASES[subj.subject] = load_case(subj.seg, subj.ct, subj.subregions, name=subj.subject)
    return REAL_CASES[subj.subject]


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
    from ..truth.phantom import make_phantom
    from ..truth.simulate import simulate_fracture

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
