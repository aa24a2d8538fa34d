"""Fit the default HealthiVert grader on a synthetic Genant RHLV feature set (seeded, reproducible).

Writes ``HealthiVertLib/data/grader_default.json`` and its model card ``grader_default.md``.
No real graded CT features exist yet, so the training set is drawn from Genant's definitions:

* grade 0 (80 %): each third's loss = measurement noise only;
* grades 1 / 2 / 3 (10 / 6 / 4 %, as in VerSe19): a fracture of size L ~ U(0.20, 0.25),
  U(0.25, 0.40) or U(0.40, 0.70) with a morphology -- wedge (50 %: anterior L, middle L/2,
  posterior 0), biconcave (30 %: middle L, anterior and posterior L/3) or crush (20 %: all L) --
  plus the same noise;
* noise: independent per third, mean 0, sd 4 percentage points, positively skewed (skew-normal,
  shape 2); values clipped to >= -0.10;
* "subjects" of 10 vertebrae for grouped cross-validation.

Usage (from the repository root): ``python scripts/fit_default_grader.py [--n 4000] [--seed 0] [--C 1.0]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from HealthiVertLib.grading import FEATURES, GRADE_NAMES, SVMGrader, classification_metrics, genant_rule
from HealthiVertLib.io import write_text_atomic

DATA_DIR = Path(__file__).resolve().parents[1] / "HealthiVertLib" / "data"
GRADE_FREQUENCIES = (0.80, 0.10, 0.06, 0.04)
GRADE_RANGES = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.70)}
MORPHOLOGIES = {  # (anterior, middle, posterior) loss as a multiple of L
    "wedge": (1.0, 0.5, 0.0),
    "biconcave": (1.0 / 3.0, 1.0, 1.0 / 3.0),
    "crush": (1.0, 1.0, 1.0),
}
MORPHOLOGY_FREQUENCIES = (0.5, 0.3, 0.2)
NOISE_SD = 0.04
NOISE_SKEW_SHAPE = 2.0
CLIP_MIN = -0.10
SUBJECT_SIZE = 10


def skewed_noise(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Skew-normal noise (shape ``NOISE_SKEW_SHAPE``) standardised to mean 0, sd ``NOISE_SD``."""
    delta = NOISE_SKEW_SHAPE / np.sqrt(1.0 + NOISE_SKEW_SHAPE**2)
    z = delta * np.abs(rng.standard_normal(size)) + np.sqrt(1.0 - delta**2) * rng.standard_normal(size)
    mean = delta * np.sqrt(2.0 / np.pi)
    sd = np.sqrt(1.0 - 2.0 * delta**2 / np.pi)
    return NOISE_SD * (z - mean) / sd


def synthetic_genant_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (n, 3) anterior/middle/posterior RHLV, grades, subject ids) drawn from Genant's grades."""
    rng = np.random.default_rng(seed)
    counts = np.floor(np.asarray(GRADE_FREQUENCIES) * n).astype(int)
    counts[0] += n - counts.sum()
    y = rng.permutation(np.repeat(np.arange(4), counts))
    shape = np.zeros((n, 3))
    for grade, (lo, hi) in GRADE_RANGES.items():
        idx = np.flatnonzero(y == grade)
        size = rng.uniform(lo, hi, len(idx))
        kinds = rng.choice(len(MORPHOLOGIES), size=len(idx), p=MORPHOLOGY_FREQUENCIES)
        pattern = np.asarray(list(MORPHOLOGIES.values()))[kinds]
        shape[idx] = size[:, None] * pattern
    X = np.maximum(shape + skewed_noise(rng, (n, 3)), CLIP_MIN)
    subjects = np.asarray([f"synthetic-{i // SUBJECT_SIZE:04d}" for i in range(n)])
    return X, y, subjects


def model_card(grader: SVMGrader, rule: dict, command: str) -> str:
    """Markdown model card of the default grader."""
    cv = grader.training["cv"]
    cm = cv["confusion_matrix"]
    rows = "\n".join(
        f"| {g} {GRADE_NAMES[g]} | " + " | ".join(str(v) for v in cm[g]) + " |" for g in range(4)
    )
    n = grader.training["n_per_grade"]
    return f"""# HealthiVert default grader (`grader_default.json`)

**Research use only -- not for diagnosis.** This model has never seen a real graded CT.

## What it is
A Genant grade (0 normal, 1 mild, 2 moderate, 3 severe) from the Relative Height Loss of a vertebra
against its predicted pseudo-healthy shape, RHLV = (H_healthy - H_original) / H_healthy (fractions).
Standardisation + linear one-vs-one SVM (`C = {grader.C:g}`, balanced class weights), as in
HealthiVert's `SVM_grading.py`; confidences from a multinomial logistic regression fitted on the
SVM's cross-validated decision values. The reported grade is the most probable one under that
calibration, so grade and confidence never contradict each other. Stored as plain JSON numbers; evaluated with numpy only.

## Features
{", ".join(f"`{f}`" for f in grader.features)} (fractions, 0.35 = 35 % height loss).

## Training data
Fitted on **synthetic RHLV features drawn from Genant's definitions; not on real graded CTs; to be
refitted on simulated fractures of real vertebrae**. {grader.training["n_samples"]} vertebrae in
{grader.training["n_subjects"]} synthetic subjects of {SUBJECT_SIZE}; grades 0/1/2/3 =
{n["0"]}/{n["1"]}/{n["2"]}/{n["3"]} (VerSe19-like 80/10/6/4 %).
- grade 0: loss = measurement noise in each third;
- grades 1/2/3: fracture size L uniform in 20-25 %, 25-40 %, 40-70 %, with a morphology: wedge
  (50 %; anterior L, middle L/2, posterior 0), biconcave (30 %; middle L, anterior/posterior L/3),
  crush (20 %; all L), plus the noise;
- noise: independent per third, mean 0, sd {NOISE_SD * 100:g} percentage points, positively
  skewed (skew-normal, shape {NOISE_SKEW_SHAPE:g}), clipped to >= {CLIP_MIN:g}.

Reproduce: `{command}` (from the repository root).

## Cross-validated performance on the synthetic set
{cv["scheme"]}. These numbers measure how well the model recovers Genant's own thresholds under
the assumed noise -- **not** clinical accuracy.

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

For comparison, the transparent Genant threshold rule (`genant_rule`, maximum loss of the thirds)
on the same set: accuracy {rule["accuracy"]:.3f}, macro F1 {rule["macro_f1"]:.3f},
quadratic-weighted kappa {rule["quadratic_weighted_kappa"]:.3f}.

## Limitations
- Synthetic training data: real pseudo-healthy predictions have errors whose size and bias are
  unknown here; real fracture shapes, normal wedging of thoracolumbar vertebrae and reader
  variability are not modelled. Mild (a 5-point band) and moderate fractures are often confused
  under 4-point noise (see the confusion matrix).
- The linear SVM with balanced class weights trades specificity for sensitivity to rare grades.
- Calibrated probabilities reflect the synthetic noise model only.
- Refit on simulated fractures of real vertebrae or on graded VerSe cases (`train_from_tables`)
  before drawing any conclusion.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="number of synthetic vertebrae")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--C", type=float, default=1.0, help="SVM regularisation")
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help="where to write the JSON and model card")
    args = parser.parse_args(argv)
    command = f"python scripts/fit_default_grader.py --n {args.n} --seed {args.seed} --C {args.C:g}"

    X, y, subjects = synthetic_genant_set(args.n, args.seed)
    grader = SVMGrader(C=args.C, features=FEATURES).fit(X, y, groups=subjects)
    rule_pred = [genant_rule(dict(zip(("anterior", "middle", "posterior"), row)))[0] for row in X]
    rule = classification_metrics(y, rule_pred)
    grader.training.update(
        {
            "data": {
                "description": (
                    "fitted on synthetic RHLV features drawn from Genant's definitions; not on real graded "
                    "CTs; to be refitted on simulated fractures of real vertebrae"
                ),
                "generator": "scripts/fit_default_grader.py:synthetic_genant_set",
                "seed": args.seed,
                "grade_frequencies": list(GRADE_FREQUENCIES),
                "grade_loss_ranges": {str(k): list(v) for k, v in GRADE_RANGES.items()},
                "morphologies": {k: list(v) for k, v in MORPHOLOGIES.items()},
                "morphology_frequencies": list(MORPHOLOGY_FREQUENCIES),
                "noise": f"skew-normal shape {NOISE_SKEW_SHAPE:g}, mean 0, sd {NOISE_SD:g}, per third; clip >= {CLIP_MIN:g}",
                "subject_size": SUBJECT_SIZE,
            },
            "genant_rule_on_same_set": rule,
            "command": command,
            "intended_use": "research use only, not for diagnosis",
        }
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    grader.save(args.out_dir / "grader_default.json")
    write_text_atomic(args.out_dir / "grader_default.md", model_card(grader, rule, command))
    cv = grader.training["cv"]
    print(
        f"wrote {args.out_dir / 'grader_default.json'}: CV accuracy {cv['accuracy']:.3f}, macro F1 "
        f"{cv['macro_f1']:.3f}, QWK {cv['quadratic_weighted_kappa']:.3f}; Genant rule macro F1 {rule['macro_f1']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
