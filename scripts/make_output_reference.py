#!/usr/bin/env python
"""Reference outputs of ``grade_case`` on the bundled sample, for Testing/Python/test_output_reference.py.

Grades the sample in the configurations of ``CONFIGS`` and stores, per configuration, every
vertebra's status, grade, RHLV, point losses, heights and Genant points (JSON) and the output volumes
(``npz``, compressed; the pseudo-healthy CT as its difference from the input CT, which is zero
outside the synthesized vertebrae). Run it with the code whose outputs are the reference, e.g. the
commit before a refactoring::

    git worktree add /tmp/hv-ref <commit>
    PYTHONPATH=/tmp/hv-ref python scripts/make_output_reference.py --out Testing/Data/healthivert/output_reference

The test then checks that the current code gives the same numbers and volumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

# name -> (engine, with CT, with body subregions, levels or None for all)
CONFIGS: dict[str, tuple[str, bool, bool, list[str] | None]] = {
    "spine_ct": ("spine", True, False, None),
    "context_ct_subregions": ("context", True, True, None),
    "generator_L1": ("generator", True, False, ["L1"]),
}
VOLUMES = ("loss_volume", "healthy_label_volume", "original_body_volume", "healthy_ct_volume")
VERTEBRA_KEYS = ("level", "label", "status", "complete", "grade", "grade_rule", "confidence", "rhlv",
                 "point_loss", "heights_mm", "point_heights_mm", "abnormality_score", "genant_points_lps")


def grade(config: str):
    """The CaseResult of one configuration, and the case it graded."""
    from HealthiVertLib.io.case import load_case
    from HealthiVertLib.io.resources import SAMPLE_DIR
    from HealthiVertLib.pipeline.case import grade_case

    engine, with_ct, with_body, levels = CONFIGS[config]
    case = load_case(SAMPLE_DIR / "seg.nii.gz", SAMPLE_DIR / "ct.nii.gz" if with_ct else None,
                     SAMPLE_DIR / "vertebrae_body.nii.gz" if with_body else None)
    if engine == "generator":
        import torch

        torch.set_num_threads(1)
    return grade_case(case, levels, engine=engine), case


def vertebra_records(result) -> list[dict]:
    """The per-vertebra numbers the reference keeps."""
    return [{k: v.to_dict()[k] for k in VERTEBRA_KEYS} for v in result.vertebrae]


def volume_arrays(result, case) -> dict[str, np.ndarray]:
    """The output volumes as arrays (the pseudo-healthy CT minus the input CT)."""
    import SimpleITK as sitk

    arrays = {}
    for name in VOLUMES:
        image = getattr(result, name)
        if image is None:
            continue
        array = sitk.GetArrayFromImage(image)
        if name == "healthy_ct_volume":
            array = (array.astype(np.float32) - sitk.GetArrayFromImage(case.ct).astype(np.float32))
        arrays[name] = array
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for <config>.json and <config>.npz")
    parser.add_argument("--config", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import HealthiVertLib

    root = Path(HealthiVertLib.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for config in args.config:
        result, case = grade(config)
        arrays = volume_arrays(result, case)
        np.savez_compressed(args.out / f"{config}.npz", **arrays)
        record = {"config": config, "made_by": "scripts/make_output_reference.py", "code_commit": commit,
                  "engine": result.engine, "vertebrae": vertebra_records(result),
                  "volumes": {k: {"shape": list(a.shape), "dtype": str(a.dtype), "sum": float(a.sum(dtype=np.float64)),
                                  "nonzero": int(np.count_nonzero(a))} for k, a in arrays.items()}}
        (args.out / f"{config}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"{config}: {len(result.vertebrae)} vertebrae, volumes {sorted(arrays)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
