"""VerSe-like datasets of procedural phantoms with simulated fractures (``healthivert simulate --phantom``).

:func:`write_dataset` writes ``n`` phantom cases (:mod:`HealthiVertLib.truth.phantom`) with drawn
spacing, orientation and anatomy, each with ``fractures_per_case`` simulated fractures
(:mod:`HealthiVertLib.truth.simulate`), a ``manifest.csv`` that ``healthivert batch`` reads, a
``vertebra_data.json`` grade file split by case, a truth file per case and a dataset description.
Synthetic data; research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import HealthiVertError
from .phantom import PROTOCOLS, direction_from_code, make_phantom, parse_levels


ORIENTATIONS = ("LPS", "RAS", "LAS", "RPI", "PIR", "ASL", "LPI", "RPS")
KIND_WEIGHTS = {"wedge": 0.5, "biconcave": 0.25, "crush": 0.25}
LOSS_BINS = ((0.05, 0.18, 0.2), (0.205, 0.245, 0.2), (0.26, 0.39, 0.35), (0.41, 0.6, 0.25))
SPLITS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
DATASET_FORMAT = "healthivert-phantom-dataset/1"
NOTICE = "Synthetic phantom spines (simulated data); research use only, not for diagnosis."


def _spacing_for(code: str, spacing: Sequence[float]) -> list[float]:
    """Per-index-axis spacing for an orientation code: the slice thickness goes on the S/I axis."""
    inplane = [float(spacing[0]), float(spacing[1])]
    out = []
    for letter in code.upper():
        out.append(float(spacing[2]) if letter in "SI" else inplane.pop(0))
    return out


def _case_design(rng: np.random.Generator, spacing: Sequence[float] | None, orientation: str | None) -> dict[str, Any]:
    """Random but plausible acquisition and anatomy parameters of one case."""
    protocol = tuple(spacing) if spacing is not None else PROTOCOLS[int(rng.integers(len(PROTOCOLS)))]
    code = orientation or ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    scoliosis = 0.0 if rng.random() < 0.7 else float(rng.choice([-1, 1]) * rng.uniform(5, 20))
    return {
        "spacing": _spacing_for(code, protocol),
        "orientation": code,
        "oblique_deg": round(float(rng.uniform(0, 6)), 2),
        "kyphosis_deg": round(float(np.clip(rng.normal(40, 8), 20, 60)), 1),
        "lordosis_deg": round(float(np.clip(rng.normal(35, 7), 15, 55)), 1),
        "scoliosis_deg": round(scoliosis, 1),
        "scale": round(float(rng.uniform(0.9, 1.1)), 3),
        "size_jitter": 0.015,
        "trabecular_hu": round(float(rng.uniform(70, 150)), 1),
        "noise_hu": round(float(rng.uniform(8, 25)), 1),
        "psf_mm": round(float(rng.uniform(0.4, 0.8)), 2),
    }


def _fracture_plan(rng: np.random.Generator, levels: list[str], count: tuple[int, int],
                   kinds: dict[str, float]) -> list[tuple[str, str, float]]:
    """(level, kind, requested loss) of the fractures of one case."""
    n = int(rng.integers(count[0], count[1] + 1))
    n = min(n, len(levels))
    chosen = sorted(rng.choice(len(levels), size=n, replace=False).tolist()) if n else []
    names = list(kinds)
    p = np.array([kinds[k] for k in names], float)
    bins = np.array([b[2] for b in LOSS_BINS], float)
    plan = []
    for k in chosen:
        kind = names[int(rng.choice(len(names), p=p / p.sum()))]
        low, high, _ = LOSS_BINS[int(rng.choice(len(LOSS_BINS), p=bins / bins.sum()))]
        plan.append((levels[k], kind, round(float(rng.uniform(low, high)), 3)))
    return plan


def _json(data: Any) -> str:
    return json.dumps(data, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n"


def write_dataset(
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    levels: str | Sequence[str] = "T1-L5",
    spacing: Sequence[float] | None = None,
    orientation: str | None = None,
    fractures_per_case: tuple[int, int] = (0, 2),
    kinds: dict[str, float] | None = None,
    subregions: str = "kirschke",
    progress: Callable[[int, str], None] | None = None,
) -> Path:
    """Write ``n`` phantom cases in a VerSe-like layout; return the manifest path.

    Layout under ``out_dir``: ``rawdata/<case>/<case>_ct.nii.gz``,
    ``derivatives/<case>/<case>_seg-vert_msk.nii.gz`` (VerSe labels),
    ``derivatives/<case>/<case>_seg-subreg_msk.nii.gz`` (subregions), ``derivatives/<case>/truth.json``
    (designed geometry, acquisition parameters, simulated fractures), ``manifest.csv`` (columns
    case, seg, ct, subregions, split: ``healthivert batch manifest.csv`` reads it),
    ``vertebra_data.json`` (Genant grade of every vertebra, ``{"train"|"val"|"test": {"<case>_<VerSe
    label>": grade}}``, split by case) and ``dataset_description.json``.

    ``spacing`` is (in-plane, in-plane, slice thickness) for every case (default: drawn from
    :data:`PROTOCOLS`); ``orientation`` an axis code for every case (default: drawn from
    :data:`ORIENTATIONS`, plus a small oblique). Each case gets between ``fractures_per_case[0]``
    and ``[1]`` fractures at distinct random levels, through :func:`HealthiVertLib.truth.simulate.simulate_fracture`,
    of a kind drawn with ``kinds`` weights (default :data:`KIND_WEIGHTS`) and a height loss drawn from
    :data:`LOSS_BINS`; the grade recorded is the Genant grade of the RHLV the simulator measured
    against the exact pre-fracture body. The same arguments give the same dataset.
    """
    from ..io.files import write_image_atomic, write_text_atomic

    if int(n) < 1:
        raise HealthiVertError(f"The number of phantom cases must be at least 1 (got {n}).")
    low, high = (int(x) for x in fractures_per_case)
    if low < 0 or high < low:
        raise HealthiVertError(f"Fractures per case must be a range such as 0-2 (got {fractures_per_case}).")
    if spacing is not None:
        spacing = [float(x) for x in (list(spacing) * 3 if len(spacing) == 1 else spacing)]
        if len(spacing) != 3:
            raise HealthiVertError("Give the phantom spacing as one value or three (in-plane, in-plane, slice) in mm.")
    if orientation is not None:
        direction_from_code(orientation)
    kinds = dict(kinds or KIND_WEIGHTS)
    names = parse_levels(levels)
    out = Path(out_dir)
    root = np.random.SeedSequence(int(seed))
    case_seeds = root.spawn(int(n))
    order = np.random.default_rng(root.spawn(1)[0]).permutation(int(n))
    split_of, start = {}, 0
    for k, (split, fraction) in enumerate(SPLITS):
        stop = int(n) if k == len(SPLITS) - 1 else start + int(round(fraction * int(n)))
        for idx in order[start:stop]:
            split_of[int(idx)] = split
        start = stop
    grades: dict[str, dict[str, int]] = {split: {} for split, _ in SPLITS}
    rows = ["case,seg,ct,subregions,split"]
    for i in range(int(n)):
        case = f"phantom-{i:04d}"
        rng = np.random.default_rng(case_seeds[i])
        design = _case_design(rng, spacing, orientation)
        phantom_seed = int(rng.integers(2**31))
        phantom = make_phantom(names, seed=phantom_seed, subregions=subregions, **design)
        plan = _fracture_plan(rng, names, (low, high), kinds)
        seg, ct, body, sim_truth = phantom.seg, phantom.ct, phantom.body, None
        if plan:
            from .simulate import simulate_fracture

            for k, (level, kind, loss) in enumerate(plan):
                sim = simulate_fracture(seg, vertebra=level, kind=kind, loss=loss, ct=ct, body=body,
                                        labels="verse", seed=phantom_seed + k, truth=sim_truth)
                seg, ct, body, sim_truth = sim.seg, sim.ct, sim.body, sim.truth
        fractured = (sim_truth or {}).get("fractures", {})
        level_grades = {t.level: int(fractured[t.level]["genant_grade"]) if t.level in fractured else 0
                        for t in phantom.levels}
        split = split_of[i]
        for t in phantom.levels:
            grades[split][f"{case}_{t.label}"] = level_grades[t.level]
        paths = {
            "ct": Path("rawdata") / case / f"{case}_ct.nii.gz",
            "seg": Path("derivatives") / case / f"{case}_seg-vert_msk.nii.gz",
            "subregions": Path("derivatives") / case / f"{case}_seg-subreg_msk.nii.gz",
        }
        write_image_atomic(ct, out / paths["ct"])
        write_image_atomic(seg, out / paths["seg"])
        write_image_atomic(body, out / paths["subregions"])
        truth = {
            "format": "healthivert-phantom-case/1",
            "case": case,
            "notice": NOTICE,
            "split": split,
            "grades": level_grades,
            "fracture_plan": [{"level": lv, "kind": kd, "requested_loss": ls} for lv, kd, ls in plan],
            "phantom": phantom.truth(),
            "simulation": sim_truth,
            "files": {k: p.as_posix() for k, p in paths.items()},
        }
        write_text_atomic(out / "derivatives" / case / "truth.json", _json(truth))
        rows.append(",".join([case, *(paths[k].as_posix() for k in ("seg", "ct", "subregions")), split]))
        if progress is not None:
            progress(i + 1, case)
    write_text_atomic(out / "vertebra_data.json", _json(grades))
    manifest = out / "manifest.csv"
    write_text_atomic(manifest, "\n".join(rows) + "\n")
    from .. import __version__

    description = {
        "format": DATASET_FORMAT, "notice": NOTICE, "healthivert_version": __version__, "cases": int(n),
        "seed": int(seed), "levels": f"{names[0]}-{names[-1]}", "spacing": spacing, "orientation": orientation,
        "fractures_per_case": [low, high], "kind_weights": kinds, "loss_bins": [list(b) for b in LOSS_BINS],
        "subregions": subregions, "label_scheme": "verse",
        "files": {"manifest": "manifest.csv", "grades": "vertebra_data.json",
                  "case": ["rawdata/<case>/<case>_ct.nii.gz", "derivatives/<case>/<case>_seg-vert_msk.nii.gz",
                           "derivatives/<case>/<case>_seg-subreg_msk.nii.gz", "derivatives/<case>/truth.json"]},
    }
    write_text_atomic(out / "dataset_description.json", _json(description))
    return manifest
