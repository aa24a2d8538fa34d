"""Fitting the spine model's level prior: published morphometry refined with healthy real vertebrae.

The prior (``engines.spine_model.Prior``) holds, per level T1-L5, the normative log mean height and
the log shape ``log(H_point / H_posterior)`` of the anterior, middle and posterior heights.

**Literature part** (every number from the cited source; derivations in :func:`literature_prior`):

* size T2-T9: Egwu et al. 2019, anterior body height T2 16.93 mm, T9 18.83 mm; posterior T2
  17.59 mm, T9 20.46 mm, linear in between (T1 extrapolated);
* size T9-L1: Palm et al. 2025, height increase 6.63 %/level (women) and 6.48 %/level (men) from T9
  to L1; their mean, 6.55 %/level;
* size L1-L5: Gilad & Nissan 1985, lumbar body height does not differ significantly L1-L5;
* shape T9-L5: Masharawi et al. 2010, Table 1, sagittal wedging angles (women/men), converted to
  Ha/Hp = (1 - k tan w) / (1 + k tan w), k = depth / (2 mean height), depth/height 1.35 (T) and
  1.25 (L); shape T1-T8: Egwu's Ha/Hp at T2 and T9, linear in between;
* middle height: no per-level normative value was found; the literature prior puts it at the
  geometric mean of anterior and posterior (flat endplates) with a wide SD, so healthy real
  vertebrae decide it.

**Fitted part** (:func:`fit_prior`): penalised least squares on the log point heights of grade-0
vertebrae graded by radiologists, ``y = c_spine + mu[level] + d[level, point]``, with Gaussian
priors around the literature values; levels without data keep the literature values. The SD of
one height within a healthy spine is re-estimated from the residuals (floored).

:func:`write_prior` writes ``data/spine_prior.json``; ``scripts/fit_spine_prior.py`` rebuilds the
shipped one from ``benchmarks/data/verse19``; the real benchmark refits it without the test
subject (leave-one-subject-out).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..engines.spine_model import ALIASES, LEVELS, POINT_NAMES, PRIOR_FORMAT, Prior, Vertebra, canonical_level
from ..geometry.spine import SpineBodies, spine_levels
from ..io import labels as lab
from ..io.case import Case
from ..io.files import write_text_atomic
from ..measure.points import point_heights

EGWU = {"T2": (16.93, 17.59), "T9": (18.83, 20.46)}  # (anterior, posterior) body height, mm
PALM_STEP = (6.63 + 6.48) / 2 / 100  # relative height increase per level, T9 -> L1
MASHARAWI_WEDGE = {  # sagittal wedging, degrees, (women, men); positive = ventral
    "T9": (2.8, 4.8), "T10": (2.6, 3.8), "T11": (4.6, 5.4), "T12": (3.5, 4.9), "L1": (2.6, 4.1),
    "L2": (0.7, 2.6), "L3": (-1.1, 1.3), "L4": (-3.1, -0.7), "L5": (-7.8, -4.6),
}  # fmt: skip
DEPTH_OVER_HEIGHT = {"T": 1.35, "L": 1.25}
LITERATURE_SD = {"anterior": 0.06, "middle": 0.06, "posterior": 0.05}
MU_SD = 0.04  # prior SD of a level's log size around the literature
SHAPE_SD = {"anterior": 0.05, "middle": 0.05}  # prior SD of the log shape around the literature
OBSERVATION_SD = 0.05
SD_FLOOR = 0.04  # smallest within-spine SD (log units) reported

SOURCES = [
    {"ref": "Egwu OA et al. Typical thoracic vertebrae morphometry: a cadaveric study in Nigeria. J Anat Soc India "
            "2019;68(2):110-118. doi:10.4103/JASI.JASI_8_19",
     "used": "anterior/posterior body height T2 16.93/17.59 mm, T9 18.83/20.46 mm (size T1-T9, Ha/Hp T1-T8)"},
    {"ref": "Palm V et al. AI-based CT assessment of 3117 vertebrae reveals significant sex-specific vertebral "
            "height differences. Sci Rep 2025. doi:10.1038/s41598-025-05091-0",
     "used": "height increase T9->L1 6.63 %/level (women), 6.48 %/level (men); mean 6.55 %/level"},
    {"ref": "Gilad I, Nissan M. Sagittal evaluation of elemental geometrical dimensions of human vertebrae. "
            "J Anat 1985;143:115-120",
     "used": "lumbar body height does not differ significantly L1-L5 (equal size L1-L5)"},
    {"ref": "Masharawi Y et al. Vertebral body shape variation in the thoracic and lumbar spine (sex differences). "
            "Eur Spine J 2010;19(5):768-773. doi:10.1007/s00586-009-1256-6, Table 1",
     "used": "sagittal wedging angles T9-L5 (women/men), converted to Ha/Hp"},
    {"ref": "Int J Spine Surg, ijssurgery.com article 11003, Table 6 (L5 morphometry, Maori/European adults)",
     "used": "cross-check only: L5 anterior 30.3 mm, posterior 26.3 mm (Ha/Hp 1.15; the conversion gives 1.146)"},
]  # fmt: skip


def literature_prior() -> Prior:
    """The prior from the published sources alone (see the module docstring)."""
    mean_h, ratio = {}, {}
    (a2, p2), (a9, p9) = EGWU["T2"], EGWU["T9"]
    m2, m9, r2, r9 = (a2 + p2) / 2, (a9 + p9) / 2, a2 / p2, a9 / p9
    for i in range(1, 10):  # T1..T9: linear T2 -> T9, T1 extrapolated (size) / equal to T2 (shape)
        f = (i - 2) / 7
        mean_h[f"T{i}"] = m2 + f * (m9 - m2)
        ratio[f"T{i}"] = r2 + max(f, 0.0) * (r9 - r2)
    for k, lv in enumerate(("T10", "T11", "T12", "L1"), start=1):
        mean_h[lv] = m9 * (1 + PALM_STEP) ** k
    for lv in ("L2", "L3", "L4", "L5"):
        mean_h[lv] = mean_h["L1"]
    for lv, (w_f, w_m) in MASHARAWI_WEDGE.items():
        if lv != "T9":  # Egwu's T9 ratio keeps T1-T9 continuous (Masharawi: 0.914, Egwu: 0.920)
            k = DEPTH_OVER_HEIGHT[lv[0]] / 2 * math.tan(math.radians((w_f + w_m) / 2))
            ratio[lv] = (1 - k) / (1 + k)
    mu = {lv: math.log(mean_h[lv]) for lv in LEVELS}
    shape = {lv: {"anterior": math.log(ratio[lv]), "middle": math.log(ratio[lv]) / 2, "posterior": 0.0} for lv in LEVELS}
    return Prior(mu=mu, shape=shape, sd=dict(LITERATURE_SD), sources=list(SOURCES), fitted_on="literature only")


def fit_prior(spines: Iterable[Sequence[Vertebra]], literature: Prior, fitted_on: str = "") -> Prior:
    """Refine ``literature`` with healthy vertebrae (one sequence per spine; see the module docstring)."""
    spines = [list(s) for s in spines if s]
    n_s, n_l = len(spines), len(LEVELS)

    def col_mu(li: int) -> int:
        return n_s + li

    def col_d(point: str, li: int) -> int:
        return n_s + n_l * (1 + ("anterior", "middle").index(point)) + li

    n_par = n_s + 3 * n_l
    rows, rhs, wts, kind = [], [], [], []
    for s, spine in enumerate(spines):
        for v in spine:
            li = LEVELS.index(ALIASES.get(canonical_level(v.level), canonical_level(v.level)))
            for p in POINT_NAMES:
                h = float(v.heights.get(p, float("nan")))
                if not (math.isfinite(h) and h > 0):
                    continue
                row = np.zeros(n_par)
                row[s] = row[col_mu(li)] = 1
                if p != "posterior":
                    row[col_d(p, li)] = 1
                rows.append(row), rhs.append(math.log(h)), wts.append(1 / OBSERVATION_SD), kind.append(p)
    for li, lv in enumerate(LEVELS):
        row = np.zeros(n_par)
        row[col_mu(li)] = 1
        rows.append(row), rhs.append(literature.mu[lv]), wts.append(1 / MU_SD), kind.append("prior")
        for p in ("anterior", "middle"):
            row = np.zeros(n_par)
            row[col_d(p, li)] = 1
            rows.append(row), rhs.append(literature.shape[lv][p]), wts.append(1 / SHAPE_SD[p]), kind.append("prior")
    a, b = np.array(rows), np.array(rhs)
    sol, *_ = np.linalg.lstsq(a * np.array(wts)[:, None], b * np.array(wts), rcond=None)
    mu = {lv: float(sol[col_mu(li)]) for li, lv in enumerate(LEVELS)}
    shape = {lv: {"anterior": float(sol[col_d("anterior", li)]), "middle": float(sol[col_d("middle", li)]),
                  "posterior": 0.0} for li, lv in enumerate(LEVELS)}
    resid = a @ sol - b
    sd = {}
    for p in POINT_NAMES:
        r = resid[np.array(kind) == p]
        spread = math.sqrt(float((r**2).sum()) / max(len(r) - 1, 1)) if len(r) else literature.sd[p]
        sd[p] = float(max(spread, SD_FLOOR))
    return Prior(mu=mu, shape=shape, sd=sd, sources=list(literature.sources), fitted_on=fitted_on)


def healthy_vertebrae(case: Case, grades: Mapping[str, int]) -> list[Vertebra]:
    """The point heights of the whole grade-0 vertebrae of ``case`` (``grades``: level -> Genant grade)."""
    levels = spine_levels(case)
    bodies = SpineBodies(case, levels)
    out = []
    for v in levels:
        if grades.get(v.level) != 0 or not lab.is_gradable(v.level) or v.fragment:
            continue
        body = bodies.get(v)
        if body.footprint is None or not body.complete:
            continue
        out.append(Vertebra(v.level, point_heights(body, body.heights())))
    return out


def write_prior(path: str | Path, prior: Prior, literature: Prior, description: str) -> None:
    """Write a prior file (the fitted prior, the literature prior, the sources) atomically."""
    data = {
        "format": PRIOR_FORMAT,
        "description": description,
        "fitted_on": prior.fitted_on,
        "sources": prior.sources,
        "fitted": prior.to_dict(),
        "literature": literature.to_dict(),
    }
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
