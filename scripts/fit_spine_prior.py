"""Rebuild the spine engine's level prior (``HealthiVertLib/data/spine_prior.json``).

Published morphometry (``training.spine_prior.literature_prior``, sources in the file) refined with
the point heights of every whole grade-0 vertebra, graded by radiologists, of a graded dataset
(default: the real VerSe19 benchmark, ``benchmarks/data/verse19``). Deterministic: the same data
give the same file. The real benchmark refits it without the test subject; this file is the prior
users get, fitted on all subjects.

Run from the repository root: ``python scripts/fit_spine_prior.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from HealthiVertLib.io import labels as lab
from HealthiVertLib.io.case import load_case
from HealthiVertLib.io.discover import discover_cases
from HealthiVertLib.io.grades import read_grade_file
from HealthiVertLib.io.resources import DATA_DIR
from HealthiVertLib.training.spine_prior import fit_prior, healthy_vertebrae, literature_prior, write_prior

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "benchmarks" / "data" / "verse19"),
                        help="folder of cases with a vertebra_data.json grade file")
    parser.add_argument("--out", default=str(DATA_DIR / "spine_prior.json"))
    args = parser.parse_args()
    data = Path(args.data)
    grades = read_grade_file(data / "vertebra_data.json")
    spines, counted = [], 0
    cases = discover_cases(data)
    for case_files in cases:
        case = load_case(case_files.seg, None, name=case_files.name)
        by_level = {lab.VERSE.level_of(label): g for (subject, label), g in grades.items() if subject == case_files.name}
        spine = healthy_vertebrae(case, by_level)
        counted += len(spine)
        spines.append(spine)
        print(f"{case_files.name}: {len(spine)} grade-0 vertebrae ({', '.join(v.level for v in spine)})")
    literature = literature_prior()
    fitted_on = (f"{counted} whole grade-0 vertebrae (radiologists' Genant grades) of {len(spines)} VerSe19 subjects "
                 f"({', '.join(c.name for c in cases)}; CC BY-SA 4.0) and the literature")
    prior = fit_prior(spines, literature, fitted_on)
    write_prior(args.out, prior, literature,
                "Level prior of the spine engine (HealthiVertLib/engines/spine_model.py): log mean height mu and log "
                "shape log(H_point/H_posterior) per level T1-L5 for the heights at 15/50/85 % of the AP depth, and "
                "the SD of one height within a healthy spine (log units). 'literature': published morphometry "
                "alone; 'fitted': refined with radiologist-graded healthy vertebrae. Built by "
                "scripts/fit_spine_prior.py.")
    print(f"wrote {args.out}: {prior.fitted_on}; SD {prior.sd}")


if __name__ == "__main__":
    main()
