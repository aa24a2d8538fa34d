#!/usr/bin/env python
"""Refit HealthiVert's default grader (``HealthiVertLib/data/grader_default.json``) and its model card.

Protocol (the model card ``grader_default.md`` repeats it with the numbers):

* Data: the evaluation set of the accuracy benchmark (``HealthiVertLib.evaluation``), all of it --
  simulated wedge / biconcave / crush fractures (losses 10, 22, 30, 50 %) of every healthy whole
  vertebra of the real cases in ``Testing/Data`` plus those vertebrae unfractured, and the phantom
  spines (two fractures each, the other vertebrae healthy). True grades: Genant's rule on the
  simulator's exact RHLV.
* Features: the ``context`` engine's RHLV of the anterior, middle and posterior thirds, measured
  by the pipeline exactly as ``healthivert grade`` does (``grading.GRADER_FEATURES``: the thirds and
  their maximum).
* Model: standardisation + linear one-vs-one SVM with balanced class weights and a logistic
  calibration (``grading.SVMGrader``); C in ``C_GRID`` chosen by cross-validation grouped by
  subject (each real case and each phantom is one subject), best macro-F1.

The benchmark (``healthivert bench``) evaluates the same protocol on held-out subjects.

Usage (from the repository root, with ``Testing/Data`` present)::

    python scripts/fit_default_grader.py [--workers 2]       # measures the set again (~10 min)
    python scripts/fit_default_grader.py --from-bench benchmarks/accuracy.json   # same result, seconds

Deterministic: the same code and library versions give the same JSON, byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from HealthiVertLib.evaluation.records import PHANTOM_LEVELS, PHANTOM_LOSS_RANGE, PHANTOM_RANGE, SEED
from HealthiVertLib.evaluation.scoring import features, fit_grader
from HealthiVertLib.evaluation.simulated import collect
from HealthiVertLib.evaluation.tables import read_raw_json
from HealthiVertLib.measure.grading import GRADE_NAMES, GRADER_FEATURES, SVMGrader, classification_metrics, feature_vector, genant_rule
from HealthiVertLib.measure.heights import THIRDS
from HealthiVertLib.io.files import write_text_atomic

DATA_DIR = Path(__file__).resolve().parents[1] / "HealthiVertLib" / "data"
ENGINE = "context"
COMMAND = "python scripts/fit_default_grader.py"
PROTOCOL_DATE = "2026-11-21"  # date the protocol was fixed (not the run date, so the JSON reproduces)


def training_set(workers: int, from_bench: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(features, grades, subjects, description) of the benchmark set measured by the context engine.

    ``from_bench``: read the measurements from a ``healthivert bench`` raw JSON (benchmarks/accuracy.json)
    instead of measuring again; both give the same numbers.
    """
    if from_bench is not None:
        result = read_raw_json(from_bench)
    else:
        result = collect(estimators=[ENGINE], workers=workers,
                               progress=lambda k, n, m: print(f"\r{k}/{n} {m:60.60}", end="", file=sys.stderr))
        print(file=sys.stderr)
    if ENGINE not in result.estimates:
        raise SystemExit(f"{from_bench} has no '{ENGINE}' results")
    rows = [(features(e), it) for it, e in zip(result.items, result.estimates[ENGINE])]
    used = [(x, it) for x, it in rows if x is not None]
    X = np.array([feature_vector(dict(zip(THIRDS, x)), GRADER_FEATURES) for x, _ in used])
    y = np.array([it.truth.grade for _, it in used])
    subjects = np.array([it.subject for _, it in used])
    real = [it for _, it in used if it.dataset == "real"]
    description = {
        "description": (
            "simulated fractures (HealthiVertLib.truth.simulate) of healthy real vertebrae and of procedural phantom "
            "spines, plus the unfractured vertebrae; not real graded CTs"
        ),
        "features_from": f"engine '{ENGINE}' through pipeline.grade_case",
        "generator": "HealthiVertLib.evaluation.simulated.collect (the accuracy benchmark's evaluation set)",
        "real_subjects": result.setup["real_subjects"],
        "kinds": result.setup["kinds"],
        "losses": result.setup["losses"],
        "n_phantoms": result.setup["n_phantoms"],
        "n_real_vertebrae": len(real),
        "n_phantom_vertebrae": len(used) - len(real),
        "not_graded_by_engine": len(rows) - len(used),
        "seed": SEED,
    }
    return X, y, subjects, description


def model_card(grader: SVMGrader, rule: dict, c_scores: dict[float, float]) -> str:
    """Markdown model card of the default grader."""
    t = grader.training
    cv, n, data = t["cv"], t["n_per_grade"], t["data"]
    cm = cv["confusion_matrix"]
    rows = "\n".join(f"| {g} {GRADE_NAMES[g]} | " + " | ".join(str(v) for v in cm[g]) + " |" for g in range(4))
    verdict = ("On these data the transparent Genant rule on the same measurements grades better than the SVM"
               if rule["macro_f1"] > cv["macro_f1"] else "The SVM grades better than the Genant rule on these data")
    c_rows = "\n".join(f"| {c:g} | {f:.3f} |" for c, f in c_scores.items())
    subjects = "\n".join(f"  - {s['subject']}: {', '.join(s['levels']) or 'none'} ({s['note']})"
                         for s in data["real_subjects"])
    return f"""# HealthiVert default grader (`grader_default.json`)

**Research use only -- not for diagnosis.** This model has never seen a real graded CT: it was
fitted on **simulated fractures** with exact ground truth.

## What it is
A Genant grade (0 normal, 1 mild, 2 moderate, 3 severe) from the Relative Height Loss of a vertebra
against its predicted pseudo-healthy shape, RHLV = (H_healthy - H_original) / H_healthy (fractions).
Standardisation + linear one-vs-one SVM (`C = {grader.C:g}`, balanced class weights), as in
HealthiVert's `SVM_grading.py`; confidences from a multinomial logistic regression fitted on the
SVM's cross-validated decision values. The reported grade is the most probable one under that
calibration, so grade and confidence never contradict each other. Stored as plain JSON numbers;
evaluated with numpy only.

## Features
{", ".join(f"`{f}`" for f in grader.features)} (fractions, 0.35 = 35 % height loss), measured by the
`{ENGINE}` engine through the same pipeline as `healthivert grade`.

## Training data
The evaluation set of the accuracy benchmark (`HealthiVertLib/evaluation/`), all of it:
{t["n_samples"]} vertebrae graded by the engine ({data["n_real_vertebrae"]} real, {data["n_phantom_vertebrae"]}
phantom; {data["not_graded_by_engine"]} more had no usable context) in {t["n_subjects"]} subjects; true grades
0/1/2/3 = {n["0"]}/{n["1"]}/{n["2"]}/{n["3"]} (Genant's rule on the simulator's exact RHLV).
- Real vertebrae, each unfractured and compressed by `HealthiVertLib/truth/simulate.py` as
  {", ".join(data["kinds"])} with loss {", ".join(f"{x:g}" for x in data["losses"])} (RHLV of the affected region):
{subjects}
- {data["n_phantoms"]} phantom spines (`HealthiVertLib/truth/phantom.py`, {PHANTOM_RANGE}, spacing, orientation,
  curvature and bone density varied by a fixed seed), two fractures each ({", ".join(PHANTOM_LEVELS)},
  at least two levels apart, random kind, loss {PHANTOM_LOSS_RANGE[0]:g}-{PHANTOM_LOSS_RANGE[1]:g}); the
  other vertebrae healthy.

Reproduce (from the repository root): `{COMMAND} --from-bench benchmarks/accuracy.json` (seconds; the
committed raw results of `healthivert bench --workers 2`), or `{COMMAND} --workers 2` (measures the
set again, about 10 minutes on 2 cores; the same file).

## Choice of C
Cross-validation grouped by subject ({cv["scheme"]}), macro-F1 of the SVM's vote:

| C | macro-F1 |
|---|---|
{c_rows}

## Cross-validated performance (by subject)
These numbers measure how well the model grades **simulated** fractures of subjects it has not
seen, with the context engine's real measurement errors -- **not** clinical accuracy. The accuracy
benchmark (`benchmarks/accuracy.md`) reports the same protocol per held-out real subject.

| metric | value |
|---|---|
| accuracy | {cv["accuracy"]:.3f} |
| balanced accuracy | {cv["balanced_accuracy"]:.3f} |
| macro precision | {cv["macro_precision"]:.3f} |
| macro recall | {cv["macro_recall"]:.3f} |
| macro F1 | {cv["macro_f1"]:.3f} |
| quadratic-weighted Cohen kappa | {cv["quadratic_weighted_kappa"]:.3f} |

Confusion matrix (rows true grade, columns predicted):

| true \\ predicted | 0 | 1 | 2 | 3 |
|---|---|---|---|---|
{rows}

For comparison, the transparent Genant threshold rule (`genant_rule`, largest loss of the thirds)
on the same measurements: accuracy {rule["accuracy"]:.3f}, macro F1 {rule["macro_f1"]:.3f},
quadratic-weighted kappa {rule["quadratic_weighted_kappa"]:.3f}.

## Limitations
- {verdict}
  (macro-F1 {rule["macro_f1"]:.3f} vs {cv["macro_f1"]:.3f}): a linear SVM on the three thirds cannot
  express "the largest of the thirds", and the mild band (20-25 %) is narrower than the measurement
  error. Each report shows the rule's grade (`grade_rule`) beside the SVM's.
- Simulated fractures of few real subjects (three) and of phantoms: real fracture shapes, endplate
  sclerosis, osteophytes, degenerative disc change and reader variability are not modelled.
- The simulator's losses are set per region; real fractures mix morphologies.
- Mild fractures (a 5-point band) are confused with normal and moderate under a few points of
  measurement error (see the confusion matrix).
- The linear SVM with balanced class weights trades specificity for sensitivity to rare grades.
- Calibrated probabilities reflect this simulated data only.
- Refit on graded VerSe cases (`healthivert train-grader`) before drawing any clinical conclusion.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (same result)")
    parser.add_argument("--from-bench", type=Path, default=None, metavar="JSON",
                        help="reuse the context engine's measurements of a full 'healthivert bench' run "
                        "(benchmarks/accuracy.json) instead of measuring again (seconds instead of minutes)")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help="where to write the JSON and model card")
    args = parser.parse_args(argv)

    X, y, subjects, data = training_set(args.workers, args.from_bench)
    grader = fit_grader(X, y, subjects)
    c_scores = {float(c): f for c, f in grader.training["c_selection"]["macro_f1"].items()}
    rule_pred = [genant_rule(dict(zip(("anterior", "middle", "posterior"), row)))[0] for row in X]
    rule = classification_metrics(y, rule_pred)
    grader.training.update(
        {
            "date": PROTOCOL_DATE,
            "data": data,
            "genant_rule_on_same_set": rule,
            "command": COMMAND,
            "intended_use": "research use only, not for diagnosis; fitted on simulated fractures",
        }
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    grader.save(args.out_dir / "grader_default.json")
    write_text_atomic(args.out_dir / "grader_default.md", model_card(grader, rule, c_scores))
    cv = grader.training["cv"]
    print(
        f"wrote {args.out_dir / 'grader_default.json'}: C {grader.C:g}, CV accuracy {cv['accuracy']:.3f}, macro F1 "
        f"{cv['macro_f1']:.3f}, QWK {cv['quadratic_weighted_kappa']:.3f}; Genant rule macro F1 {rule['macro_f1']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
