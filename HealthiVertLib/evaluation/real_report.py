"""The real benchmark's report: ``benchmarks/real.md`` and its raw JSON, and :func:`run_real`, the whole run.

The Markdown says what the data is (subjects, grades, licence), the protocol, a results table per
estimator and grader, per-grade F1 with confusion matrices, the leave-one-subject-out folds, the
stability section, every miss and one row per vertebra; the raw JSON holds everything measured.
Measuring, grading and scoring live in ``real``. Research use only; not a clinical validation.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..io.files import write_text_atomic
from ..io.grades import GRADES
from ..io.jsonable import jsonable
from ..measure.grading import (
    GRADER_FEATURES,
)
from ..measure.heights import THIRDS
from .records import GRADED
from .real import DEFAULT_DATA, GRADERS, GRADER_TITLES, GRADE_FILE, LOSO_C, PAPER_MACRO_F1, POINT_GRADER_FEATURES, RealEstimate, RealResult, RealVertebra, collect_real, grade_real, points_of, score_real, stability_of, thirds_of


# ------------------------------------------------------------------------------------ report


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.0f} %"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _g(x: int | None) -> str:
    return "–" if x is None else str(x)


def _grade_counts(vertebrae: Sequence[RealVertebra]) -> str:
    counts = np.bincount([v.truth for v in vertebrae], minlength=4)
    return ", ".join(f"grade {g}: {int(counts[g])}" for g in GRADES)


def markdown_real(result: RealResult, command: str, seconds: float, data_readme: str | None = None) -> str:
    """The real benchmark report (``benchmarks/real.md``)."""
    from .tables import machine_line

    verts = result.vertebrae
    subjects = list(dict.fromkeys(v.subject for v in verts))
    splits = sorted({v.split or "(none)" for v in verts})
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    licence = (f"licence CC BY-SA 4.0, attribution and files in [the data README]({data_readme})"
               if data_readme else "licence and attribution: see the data folder's README")
    parts = [
        "# Real benchmark: radiologists' Genant grades",
        f"**Real VerSe19 CT data** ({licence}): {len(subjects)} subjects, {len(verts)} vertebrae graded by the "
        f"VerSe19 radiologists ({_grade_counts(verts)}). **Research use only; this is not a clinical validation** "
        "-- a handful of subjects, every rate below has a wide confidence interval.",
        f"Reproduce: `{command}` (from the repository root). Measured {date} in {seconds / 60:.1f} min. "
        f"Machine: {machine_line()}.",
        "## Protocol",
        f"- Truth: the Genant grade (0 normal, 1 mild, 2 moderate, 3 severe) of each vertebra in "
        f"`{GRADE_FILE}` (HealthiVert-GAN format; split(s): {', '.join(splits)}). Subjects: "
        + "; ".join(f"{s} ({', '.join(v.level for v in verts if v.subject == s)}; "
                    f"{'CT + mask' if result.setup.get('cases', {}).get(s, {}).get('ct') else 'mask only'})"
                    for s in subjects) + ".",
        "- Estimators: every engine of `engines.ENGINES` that starts here, through `pipeline.grade_case`, and the "
        "reference-free baselines `minmax` and `neighbours` (`HealthiVertLib/evaluation/baselines.py`); each case "
        "loaded once, every graded vertebra requested.",
        "- Measures: *RHLV* = relative height loss of the anterior, middle and posterior thirds (mean column "
        "height over each third, HealthiVert-GAN's definition); *point losses* = loss of the heights at 15, 50 "
        "and 85 % of the AP depth (`measure.points`: the three heights a radiologist compares).",
        "- Graders: *Genant rule on RHLV thirds* / *on point losses* = Genant's thresholds 20/25/40 % on the "
        "largest loss (nothing fitted); *default grader* = the shipped `HealthiVertLib/data/grader_default.json` "
        f"({_default_grader_line()}); *SVM ... refitted LOSO* = linear SVM with balanced class weights "
        f"(C = {LOSO_C:g}; RHLV features: {', '.join(GRADER_FEATURES)}; point features: "
        f"{', '.join(POINT_GRADER_FEATURES)}) fitted on the other subjects' real vertebrae and applied to the "
        "held-out subject; a grade with fewer than 2 training vertebrae is left out of that fold (listed under "
        "*LOSO folds*).",
        "- Fitted engines are fitted leave-one-subject-out too: the `spine` engine's level prior is refitted for "
        "each held-out subject without its vertebrae.",
        "- Metrics over all graded vertebrae; a vertebra the estimator could not measure (or the fold could not "
        "grade) counts as **wrong in every rate** (neither found as a fracture nor cleared as normal) and is "
        "listed. Macro precision/recall/F1: 4-class, over the grades present in the truth (the paper's metric). "
        "Genant >= 2: sensitivity = grade 2-3 vertebrae graded 2-3, specificity = grade 0-1 vertebrae graded "
        "0-1. Grade-1 recall: grade-1 vertebrae graded exactly 1. AUC: fracture (grade >= 1) vs grade 0 "
        "by the largest third's RHLV (one value per estimator; measured vertebrae only). QWK: "
        "quadratic-weighted kappa (scikit-learn) over the graded vertebrae.",
        f"- Not comparable with the paper: HealthiVert-GAN reports macro-F1 {PAPER_MACRO_F1} on the VerSe19 "
        f"*validation* split; this set is {len(subjects)} *train-split* subjects ({len(verts)} vertebrae), "
        "other protocol, other pipeline.",
        "## Results",
        _results_table(result),
        _per_grade_table(result),
        _folds_section(result),
        _stability_section(result),
        "## Misses",
        _misses(result),
        "## Per vertebra",
        "RHLV and point losses in % (anterior / middle / posterior); grades in the order "
        + " / ".join(GRADER_TITLES[g] for g in GRADERS) + " (– = no grade); ✗ marks a grade that differs from "
        "the truth.",
        *[_vertebra_table(result, name) for name in result.estimates],
    ]
    if result.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in result.notes))
    return "\n\n".join(p for p in parts if p) + "\n"


def _results_table(result: RealResult) -> str:
    rows = []
    for name, by_grader in result.metrics.items():
        for g in GRADERS:
            m = by_grader[g]
            rows.append([f"`{name}`", GRADER_TITLES[g], f"{m['n_graded']}/{m['n']} ({_pct(m['coverage'])})",
                         _f(m["macro_precision"]), _f(m["macro_recall"]), f"**{_f(m['macro_f1'])}**",
                         _pct(m["sens_ge2"]), _pct(m["spec_ge2"]), _pct(m["grade1_recall"]), _f(m["qwk"]),
                         _f(m["auc"])])
    return _table(["estimator", "grader", "coverage", "macro precision", "macro recall", "macro-F1",
                   "Genant ≥ 2 sensitivity", "Genant ≥ 2 specificity", "grade-1 recall", "QWK",
                   "fracture AUC (by its measure)"], rows)


def _per_grade_table(result: RealResult) -> str:
    rows = []
    for name, by_grader in result.metrics.items():
        for g in GRADERS:
            m = by_grader[g]
            cells = []
            for k in GRADES:
                pg = m["per_grade"][str(k)]
                cells.append("n/a" if pg is None else f"{_f(pg['f1'])} ({pg['n_pred']} pred.)")
            cm = " ".join("[" + ",".join(str(v) for v in row) + "]" for row in m["confusion_matrix"] or [])
            rows.append([f"`{name}`", GRADER_TITLES[g], *cells, f"`{cm}`"])
    counts = result.metrics and next(iter(result.metrics.values()))["rule"]["true_counts"]
    header = [f"F1 grade {k} (n = {counts[str(k)]})" for k in GRADES] if counts else [f"F1 grade {k}" for k in GRADES]
    return ("Per-grade F1 (predictions of that grade in brackets) and confusion matrix (rows true 0-3, columns "
            "predicted 0-3; ungraded vertebrae are not in it):\n\n"
            + _table(["estimator", "grader", *header, "confusion"], rows))


def _folds_section(result: RealResult) -> str:
    lines = ["### LOSO folds",
             "Training grades of each fold (the held-out subject never trains its own SVM):"]
    rows = []
    for name, folds in result.folds.items():
        for f in folds:
            counts = "/".join(str(f["train_counts"][g]) for g in GRADES)
            rows.append([f"`{name}`", GRADER_TITLES.get(f.get("grader", ""), ""), f["held_out"],
                         ", ".join(f["train_subjects"]) or "–", counts,
                         ", ".join(map(str, f["grades_left_out"])) or "–", f["note"] or ""])
    lines.append(_table(["estimator", "grader", "held out", "trained on", "training grades 0/1/2/3",
                         "grades left out", "note"], rows))
    return "\n\n".join(lines)


def _misses(result: RealResult) -> str:
    parts = []
    for name, estimates in result.estimates.items():
        lines = []
        for v, e in zip(result.vertebrae, estimates):
            wrong = [g for g in GRADERS if e.grades[g] != v.truth]
            if not wrong:
                continue
            got = ", ".join(f"{GRADER_TITLES[g]} {_g(e.grades[g])}" for g in wrong)
            status = "" if e.status == GRADED else f" -- {e.status}: {e.reason}"
            lines.append(f"- {v.subject} {v.level} (truth {v.truth}): {got}; RHLV {_rhlv_text(e)}, "
                         f"point losses {_points_text(e)}{status}")
        parts.append(f"**`{name}`** ({len(lines)} of {len(estimates)} vertebrae with at least one wrong grade)"
                     + ("\n\n" + "\n".join(lines) if lines else ": none"))
    return "Every vertebra whose grade by some grader differs from the truth, per estimator:\n\n" + "\n\n".join(parts)


def _rhlv_text(e: RealEstimate) -> str:
    t = thirds_of(e)
    return "–" if t is None else " / ".join(f"{100 * t[k]:.0f}" for k in THIRDS)


def _points_text(e: RealEstimate) -> str:
    p = points_of(e)
    return "–" if p is None else " / ".join(f"{100 * p[k]:.0f}" for k in THIRDS)


def _default_grader_line() -> str:
    from ..measure.graders import load_default_grader

    g = load_default_grader()
    data = g.training.get("data")
    what = data.get("description") if isinstance(data, dict) else data
    return f"features {', '.join(g.features)}; fitted on: {what or 'see its model card'}"


def _vertebra_table(result: RealResult, name: str) -> str:
    rows = []
    for v, e in zip(result.vertebrae, result.estimates[name]):
        grades = " / ".join(_g(e.grades[g]) + (" ✗" if e.grades[g] != v.truth else "") for g in GRADERS)
        status = e.status if e.status == GRADED else f"{e.status}: {e.reason}"
        rows.append([v.subject, v.level, str(v.truth), status, _rhlv_text(e), _points_text(e), grades])
    return f"### `{name}`\n\n" + _table(["subject", "level", "truth", "status", "RHLV a / m / p (%)",
                                          "point losses a / m / p (%)", "grades"], rows)


def _stability_section(result: RealResult) -> str:
    from ..engines import DEFAULT_ENGINE
    from .stability import PERTURBATIONS

    s = result.stability
    if not s:
        return ""
    rows = [[k, str(s["per_perturbation"][k]["n"]), _pct(s["per_perturbation"][k]["share_stable"])]
            for k in PERTURBATIONS]
    flips = "\n".join(
        f"- {f['subject']} {f['level']} ({f['perturbation']}): grade {_g(f['before'])} -> {_g(f['after'])}, largest "
        f"point loss {_pct(f['loss_before'])} -> {_pct(f['loss_after'])}" for f in s["flips"]) or "none"
    return "\n\n".join([
        "## Stability under mask perturbation",
        f"The default engine (`{DEFAULT_ENGINE}`, shipped prior) and the default grader, on every graded vertebra, "
        "before and after each perturbation of the label map (`HealthiVertLib/evaluation/stability.py`: erode or "
        "dilate every vertebra by one voxel; move about a third of the boundary in smooth patches, two seeds). "
        f"**{_pct(s['share_stable'])} of {s['n']} vertebra gradings keep their grade** (target: at least 95 %).",
        _table(["perturbation", "vertebrae", "grade unchanged"], rows),
        "Grade changes:\n\n" + flips,
    ])


def raw_json_real(result: RealResult) -> str:
    """Setup, notes, LOSO folds, metrics and every vertebra with every estimator's estimate and grades."""
    rows = [{**asdict(v), "estimates": {n: asdict(est[i]) for n, est in result.estimates.items()}}
            for i, v in enumerate(result.vertebrae)]
    return json.dumps(jsonable({"setup": result.setup, "notes": result.notes, "folds": result.folds,
                                "metrics": result.metrics, "stability": result.stability, "vertebrae": rows}),
                      indent=1) + "\n"


def run_real(
    markdown_path: str | os.PathLike,
    data_dir: str | os.PathLike = DEFAULT_DATA,
    estimators: Sequence[str] | None = None,
    command: str = "healthivert bench --real",
    progress: Callable[[int, int, str], None] | None = None,
    stability: bool = False,
) -> RealResult:
    """Collect, grade, score and write ``markdown_path`` and its raw JSON (same name, ``.json``).

    ``stability``: also grade every case under the mask perturbations of ``evaluation.stability``."""
    t0 = time.perf_counter()
    result = collect_real(data_dir, estimators=estimators, progress=progress)
    grade_real(result)
    score_real(result)
    if stability:
        result.stability = stability_of(result, progress)
    markdown_path = Path(markdown_path)
    readme = Path(data_dir) / "README.md"
    link = (os.path.relpath(readme.resolve(), markdown_path.resolve().parent).replace(os.sep, "/")
            if readme.is_file() else None)
    write_text_atomic(markdown_path, markdown_real(result, command, time.perf_counter() - t0, link))
    write_text_atomic(markdown_path.with_suffix(".json"), raw_json_real(result))
    return result
