"""A spine-wide, robust model of healthy vertebral heights (numpy only; used by the ``spine`` engine).

Every vertebra's expected healthy anterior, middle and posterior height (``measure.points``: at
15/50/85 % of the AP depth) is predicted from *all* other vertebrae of the same spine:

    log H[v, p] = c + beta * (rank(v) - centre) + mu[level(v)] + d[level(v), p] + noise

* ``mu[level]``: the normative log size of the level, ``d[level, p]``: its normative log shape
  ``log(H_p / H_posterior)`` -- together the *prior* (:class:`Prior`, plain JSON in
  ``data/spine_prior.json``: published morphometry refined with radiologist-graded grade-0 real
  vertebrae; built by ``training.spine_prior``, sources listed in the file);
* ``c``: the subject's scale, ``beta``: a subject-specific caudal trend (ridge-penalised towards 0,
  fitted only with at least four other vertebrae spanning four levels).

``c`` and ``beta`` are fitted per spine by iteratively reweighted least squares with an asymmetric
weight: heights *above* the model are down-weighted like Huber's loss, heights *below* it by Tukey's
biweight, so fractured vertebrae (which only lose height) stop counting once they are a few
standard deviations short; several fractured levels, adjacent or not, do not lower the estimate.
Each vertebra is predicted leave-one-out: its own heights never enter its own fit.

Fall-backs, always said in :attr:`Expected.note`: one other vertebra gives the scale with the
level prior; none gives the scale from the vertebra's own tallest height (shape prior only). T13
uses T12's prior, L6 uses L5's. Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import HealthiVertError
from ..io.resources import DATA_DIR

POINT_NAMES: tuple[str, str, str] = ("anterior", "middle", "posterior")
LEVELS: tuple[str, ...] = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
ALIASES: dict[str, str] = {"T13": "T12", "L6": "L5"}  # the prior of a transitional level
RANKS: dict[str, float] = {**{lv: float(i) for i, lv in enumerate(LEVELS)}, "T13": 11.5, "L6": 17.0}
DEFAULT_PRIOR = DATA_DIR / "spine_prior.json"
PRIOR_FORMAT = "healthivert-spine-prior/1"

HUBER_K = 1.5  # standardised residual above which taller-than-expected heights are down-weighted
TUKEY_C = 3.0  # standardised shortfall at which a height stops counting (one-sided Tukey biweight)
TREND_SD = 0.01  # prior SD of the subject's own caudal trend (log units per level)
MIN_TREND_LEVELS = 4  # fit the trend only with this many other vertebrae spanning >= 4 levels
INFORMED_WEIGHT = 0.5  # a vertebra with a mean weight below this did not inform the prediction
IRLS_ITERATIONS = 30


@dataclass
class Prior:
    """Normative log size and shape per level, and the SD of one height within a healthy spine."""

    mu: dict[str, float]  # level -> log mean height (only differences between levels matter)
    shape: dict[str, dict[str, float]]  # level -> point -> log(H_point / H_posterior)
    sd: dict[str, float]  # point -> SD (log units)
    sources: list[dict] = field(default_factory=list)
    fitted_on: str = ""

    def expected_log(self, level: str, point: str) -> float:
        """mu + d of ``level`` (T13 and L6 through their aliases)."""
        lv = ALIASES.get(level, level)
        return self.mu[lv] + self.shape[lv][point]

    def to_dict(self) -> dict:
        """The JSON block of this prior."""
        return {
            "mu": {k: round(v, 5) for k, v in self.mu.items()},
            "shape": {lv: {p: round(v, 5) for p, v in d.items()} for lv, d in self.shape.items()},
            "sd": {k: round(v, 4) for k, v in self.sd.items()},
            "expected_mm_at_unit_scale": {lv: {p: round(math.exp(self.expected_log(lv, p)), 2) for p in POINT_NAMES}
                                          for lv in LEVELS},
        }

    @classmethod
    def from_dict(cls, block: Mapping, sources: list[dict] | None = None, fitted_on: str = "") -> "Prior":
        """A prior from its JSON block; HealthiVertError when a level, a point or a number is missing."""
        try:
            mu = {lv: float(block["mu"][lv]) for lv in LEVELS}
            shape = {lv: {p: float(block["shape"][lv][p]) for p in POINT_NAMES} for lv in LEVELS}
            sd = {p: float(block["sd"][p]) for p in POINT_NAMES}
        except (KeyError, TypeError, ValueError) as err:
            raise HealthiVertError(f"The spine prior is incomplete or not numeric ({err!r}).") from None
        values = [*mu.values(), *sd.values(), *(v for d in shape.values() for v in d.values())]
        if not all(math.isfinite(v) for v in values) or min(sd.values()) <= 0:
            raise HealthiVertError("The spine prior holds non-finite values or a non-positive SD.")
        return cls(mu=mu, shape=shape, sd=sd, sources=list(sources or []), fitted_on=fitted_on)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PRIOR) -> "Prior":
        """The fitted prior of a prior file (``training.spine_prior.write_prior`` wrote it)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise HealthiVertError(f"Cannot read the spine prior {path}: {err}") from None
        if not isinstance(data, dict) or data.get("format") != PRIOR_FORMAT:
            raise HealthiVertError(f"{path} is not a HealthiVert spine prior (format {PRIOR_FORMAT!r}).")
        return cls.from_dict(data.get("fitted", {}), data.get("sources"), str(data.get("fitted_on", "")))


@dataclass
class Vertebra:
    """One measured vertebra: its level and point heights in mm (NaN: not measurable)."""

    level: str
    heights: Mapping[str, float]


@dataclass
class Expected:
    """The model's answer for one vertebra."""

    level: str
    expected: dict[str, float]  # point -> expected healthy height (mm)
    ratios: dict[str, float]  # point -> measured / expected (NaN when not measured)
    informed_by: list[str]  # levels whose mean weight in this vertebra's leave-one-out fit was >= 0.5
    down_weighted: list[str]  # levels that took part but looked short (possible fractures)
    weights: dict[str, float] = field(default_factory=dict)  # level -> share of the fit's total weight
    note: str = ""


def canonical_level(name: str) -> str:
    """'t12' -> 'T12'; HealthiVertError for levels outside T1-T13, L1-L6."""
    level = name.strip().upper()
    if level not in RANKS:
        raise HealthiVertError(f"{name!r} is not a thoracic or lumbar level (T1-T13, L1-L6).")
    return level


def irls_weights(r: np.ndarray) -> np.ndarray:
    """Asymmetric weights of standardised residuals ``r`` (negative = shorter than the model)."""
    w = np.ones_like(r)
    hi = r > HUBER_K
    w[hi] = HUBER_K / r[hi]
    lo = r < 0
    w[lo] = np.clip(1 - (r[lo] / TUKEY_C) ** 2, 0, None) ** 2
    return w


def _fit_scale(z: np.ndarray, sd: np.ndarray, x: np.ndarray, use_trend: bool) -> tuple[float, float, np.ndarray]:
    """Robust (c, beta, weights) of z ~ c + beta x (z: log height minus the prior's expectation)."""
    c = float(np.median(z[z >= np.median(z)])) if len(z) >= 4 else float(np.median(z))
    beta = 0.0
    w = np.ones_like(z)
    for _ in range(IRLS_ITERATIONS):
        w = irls_weights((z - c - beta * x) / sd)
        if w.sum() < 1e-6:
            break
        ws = w / sd**2
        if use_trend:
            a = np.array([[ws.sum(), (ws * x).sum()], [(ws * x).sum(), (ws * x * x).sum() + 1 / TREND_SD**2]])
            c_new, beta_new = np.linalg.solve(a, np.array([(ws * z).sum(), (ws * x * z).sum()]))
        else:
            c_new, beta_new = float((ws * z).sum() / ws.sum()), 0.0
        done = abs(c_new - c) < 1e-7 and abs(beta_new - beta) < 1e-7
        c, beta = float(c_new), float(beta_new)
        if done:
            break
    return c, beta, w


class SpineModel:
    """The model of one spine: every vertebra's measured point heights and the prior."""

    def __init__(self, vertebrae: Sequence[Vertebra], prior: Prior):
        self.prior = prior
        self.levels = [canonical_level(v.level) for v in vertebrae]
        if len(set(self.levels)) != len(self.levels):
            raise HealthiVertError("Each level may appear once per spine.")
        self.vertebrae = list(vertebrae)
        obs = [(i, p, math.log(h), prior.expected_log(lv, p), prior.sd[p], RANKS[lv])
               for i, (v, lv) in enumerate(zip(vertebrae, self.levels)) for p in POINT_NAMES
               if math.isfinite(h := float(v.heights.get(p, float("nan")))) and h > 0]
        self._index = np.array([o[0] for o in obs], int)
        self._y, self._base, self._sd, self._rank = (np.array([o[k] for o in obs], float) for k in (2, 3, 4, 5))

    def expected(self, index: int) -> Expected:
        """The expected healthy heights of vertebra ``index``, fitted on every other vertebra."""
        level, vertebra = self.levels[index], self.vertebrae[index]
        others = self._index != index
        informed: list[str] = []
        down: list[str] = []
        shares: dict[str, float] = {}
        if others.any():
            ranks = self._rank[others]
            used = self._index[others]
            trend = len(set(used.tolist())) >= MIN_TREND_LEVELS and np.ptp(ranks) >= 4
            centre = float(ranks.mean())
            c, beta, w = _fit_scale(self._y[others] - self._base[others], self._sd[others], ranks - centre, trend)
            scale = c + beta * (RANKS[level] - centre)
            for j in sorted(set(used.tolist()), key=lambda k: RANKS[self.levels[k]]):
                (informed if w[used == j].mean() >= INFORMED_WEIGHT else down).append(self.levels[j])
                shares[self.levels[j]] = round(float(w[used == j].sum() / max(w.sum(), 1e-12)), 3)
            note = "one other vertebra: scale from it and the level prior" if len(set(used.tolist())) == 1 else ""
            if not informed:
                note = "every other vertebra looks short: scale from their down-weighted fit"
        else:
            own = self._index == index
            if not own.any():
                raise HealthiVertError(f"{level}: no height could be measured.")
            scale = float(np.max(self._y[own] - self._base[own]))
            note = "no other measurable vertebra: scale from its own tallest height (level prior only)"
        expected = {p: math.exp(scale + self.prior.expected_log(level, p)) for p in POINT_NAMES}
        ratios = {p: float(vertebra.heights.get(p, float("nan"))) / expected[p] for p in POINT_NAMES}
        return Expected(level, expected, ratios, informed, down, shares, note)

    def all_expected(self) -> list[Expected]:
        """:meth:`expected` of every vertebra, in input order."""
        return [self.expected(i) for i in range(len(self.vertebrae))]
