"""Pseudo-healthy engines: predict the target vertebral body as it was before a fracture.

Every engine takes the target body and its neighbours (each in its own local frame) and returns
a pseudo-healthy occupancy on the target's grid. Heights, RHLV, grading and reports are computed
from that occupancy the same way for every engine, so engines are interchangeable.

``context`` (this module) needs no weights and no CT: it transfers the column-height maps of the
nearest usable neighbours onto the target's footprint (matched by relative AP/LR position) and
interpolates them across levels. The learned ``generator`` engine plugs into the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
from scipy import ndimage

from .body import VertebralBody

MAX_LEVEL_DISTANCE = 3.0  # use neighbours at most three levels away
SUSPECT_MIN_MAX = 0.80  # within-body min/max height ratio below which a neighbour looks fractured
SUSPECT_RELATIVE = 0.85  # mean height below this fraction of what the other neighbours' trend expects there
MAX_LEVEL_TREND = 0.03  # caudal growth bound of that expectation: fraction of the median height per level
TREND_CLAMP = (0.92, 1.08)  # bounds of the one-sided level-trend factor
INTACT_LOSS = 0.10  # columns losing less than this anchor the pseudo-healthy body's mid-plane


@dataclass
class Neighbour:
    """A vertebra near the target: its body and signed level distance (negative = cranial)."""

    level: str
    offset: float
    body: VertebralBody


@dataclass
class HealthyPrediction:
    """The pseudo-healthy target on the target's grid, plus what the engine used."""

    occupancy: np.ndarray  # float32 (S, U, V) in [0, 1]
    context: list[dict[str, Any]] = field(default_factory=list)
    ct: np.ndarray | None = None  # pseudo-healthy HU on the same grid, if the engine makes one


class NoContextError(Exception):
    """No usable neighbour; the message says why each candidate was rejected."""


class EngineUnavailable(Exception):
    """The engine cannot work on this input (e.g. it needs the CT); the message says what to do."""


class PseudoHealthyEngine(Protocol):
    """What every engine provides."""

    name: str

    def predict(self, target: VertebralBody, neighbours: list[Neighbour]) -> HealthyPrediction:
        """Pseudo-healthy occupancy of ``target``; raises NoContextError when it cannot."""


class ContextEngine:
    """Expected healthy height map of the target from its nearest usable neighbours.

    A neighbour is unusable when it is cut by the field of view, more than three levels away, or
    looks fractured itself (within-body min/max height ratio < 0.8, or mean height < 85 % of what
    the other candidates' level trend expects at its level). With usable neighbours on both sides
    the maps are interpolated linearly at the target's level; with one side only, the nearest map
    is scaled by the level trend of that side (bounded to +-8 %). The result is never shorter than
    the current column.
    """

    name = "context"

    def predict(self, target: VertebralBody, neighbours: list[Neighbour]) -> HealthyPrediction:
        usable, rejected = select_neighbours(neighbours)
        above = sorted((n for n in usable if n.offset < 0), key=lambda n: -n.offset)
        below = sorted((n for n in usable if n.offset > 0), key=lambda n: n.offset)
        if not above and not below:
            why = "; ".join(f"{lvl}: {reason}" for lvl, reason in rejected) or "none in the label map"
            raise NoContextError(f"no usable neighbouring vertebra ({why})")
        footprint = target.mask.any(axis=0)
        if above and below:
            a, b = above[0], below[0]
            wa = b.offset / (b.offset - a.offset)
            expected = wa * transfer_heights(a.body, target) + (1 - wa) * transfer_heights(b.body, target)
            used = [(a, wa), (b, 1 - wa)]
        else:
            side = above or below
            factor = _trend_factor(side)
            expected = factor * transfer_heights(side[0].body, target)
            used = [(side[0], 1.0)]
        h_ori = target.heights()
        expected = np.where(footprint, np.fmax(np.nan_to_num(expected, nan=0.0), h_ori), 0.0)
        occupancy = build_body(target, expected)
        context = [{"level": n.level, "offset": n.offset, "weight": round(w, 3)} for n, w in used]
        context += [{"level": lvl, "rejected": reason} for lvl, reason in rejected]
        return HealthyPrediction(occupancy=occupancy, context=context)


def select_neighbours(neighbours: list[Neighbour]) -> tuple[list[Neighbour], list[tuple[str, str]]]:
    """Split candidates into usable ones and (level, reason) for the rejected."""
    rejected: list[tuple[str, str]] = []
    candidates = []
    for n in neighbours:
        if abs(n.offset) > MAX_LEVEL_DISTANCE:
            continue
        if n.body.footprint is None:
            rejected.append((n.level, "no vertebral body found"))
        elif not n.body.complete:
            rejected.append((n.level, "cut by the field of view"))
        elif (ratio := body_min_max(n.body)) < SUSPECT_MIN_MAX:
            rejected.append((n.level, f"looks fractured (min/max height {ratio:.2f})"))
        else:
            candidates.append(n)
    means = {id(n): mean_height(n.body) for n in candidates}
    usable = []
    for n in candidates:
        others = [(m.offset, means[id(m)]) for m in candidates if m is not n]
        if len(others) >= 2 and means[id(n)] < SUSPECT_RELATIVE * expected_height(n.offset, others):
            rejected.append((n.level, "shorter than its neighbours (possible crush fracture)"))
        else:
            usable.append(n)
    return usable, rejected


def expected_height(offset: float, others: list[tuple[float, float]]) -> float:
    """Mean height (mm) expected at level ``offset`` from (offset, mean height) of other vertebrae.

    A Theil-Sen line of height against level (the line through them for two), so the cranio-caudal
    growth of the bodies is followed instead of being mistaken for a crush. Bodies grow caudally
    (about 4 % per level in the thoracic spine, near 0 from L1 to L5), so the slope is bounded to
    0 .. 3 % of the median height per level: a crushed vertebra among the others cannot tilt it
    far, and extrapolating a steep pair several levels cannot make a healthy vertebra look short.
    The intercept is the median of theirs.
    """
    o, h = np.array(others, dtype=float).T
    i, j = np.triu_indices(len(o), 1)
    bound = MAX_LEVEL_TREND * float(np.median(h))
    slope = float(np.clip(np.median((h[j] - h[i]) / (o[j] - o[i])), 0.0, bound))
    return float(np.median(h - slope * o) + slope * offset)


def transfer_heights(source: VertebralBody, target: VertebralBody) -> np.ndarray:
    """Source column heights sampled at the target's columns, matched by relative AP/LR position."""
    fs, ft = source.footprint, target.footprint
    u_t, v_t = np.meshgrid(target.block.axis(1), target.block.axis(2), indexing="ij")
    a, b = ft.normalise(u_t, v_t)
    u_s, v_s = fs.denormalise(a, b)
    iu = (u_s - source.block.start[1]) / source.block.spacing
    iv = (v_s - source.block.start[2]) / source.block.spacing
    return ndimage.map_coordinates(source.heights(), [iu, iv], order=1, mode="constant", cval=0.0)


def _trend_factor(side: list[Neighbour]) -> float:
    """Height ratio to carry the nearest neighbour's map one or more levels towards the target."""
    if len(side) < 2:
        return 1.0
    n1, n2 = side[0], side[1]
    steps = abs(n1.offset) / abs(n2.offset - n1.offset)
    factor = (mean_height(n1.body) / mean_height(n2.body)) ** steps
    return float(np.clip(factor, *TREND_CLAMP))


def body_min_max(body: VertebralBody) -> float:
    """Within-body ratio of the smallest to the largest third's mean height (1 = uniform)."""
    return body.own_heights.min_max_ratio


def mean_height(body: VertebralBody) -> float:
    """Mean column height of the body's central columns (mm)."""
    return body.own_heights.original_mm["overall"]


def build_body(target: VertebralBody, heights: np.ndarray) -> np.ndarray:
    """A body with the given column heights on the target's grid.

    Each column is a run of ``heights`` mm (fractional end voxels, so its sum is exact) centred
    on a plane fitted to the mid-points of the target's intact columns: the endplates move apart
    symmetrically, as the reference's SHRM does.
    """
    centre = _mid_plane(target, heights)
    s = target.block.axis(0)[:, None, None]
    half = heights[None] / 2
    occ = np.minimum(s - (centre - half) + 0.5, (centre + half) - s + 0.5)
    occ = np.clip(occ, 0.0, 1.0) * (heights[None] > 0)
    return occ.astype(np.float32)


def _mid_plane(target: VertebralBody, heights: np.ndarray) -> np.ndarray:
    """Least-squares plane s = c0 + c1 u + c2 v through the centres of near-intact columns."""
    h_ori = target.heights()
    centres = target.column_centres()
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = np.where(heights > 0, 1 - h_ori / np.where(heights > 0, heights, 1), 1)
    good = np.isfinite(centres) & (loss < INTACT_LOSS) & (h_ori > 0)
    if good.sum() < 10:
        good = np.isfinite(centres) & (h_ori > 0)
    u, v = np.meshgrid(target.block.axis(1), target.block.axis(2), indexing="ij")
    design = np.stack([np.ones(good.sum()), u[good], v[good]], axis=1)
    coef, *_ = np.linalg.lstsq(design, centres[good], rcond=None)
    return (coef[0] + coef[1] * u + coef[2] * v)[None]


def _generator_engine(**options: Any) -> PseudoHealthyEngine:
    """The learned HealthiVert-GAN engine; imported only when asked for (it needs PyTorch)."""
    from .errors import HealthiVertError

    try:
        from .generator.engine import GeneratorEngine
    except ImportError as err:
        raise HealthiVertError(
            f"The generator engine needs PyTorch and safetensors ({err}); install them with "
            "'pip install torch safetensors', or use --engine context."
        ) from None
    return GeneratorEngine(**options)


ENGINES: dict[str, Callable[..., PseudoHealthyEngine]] = {"context": ContextEngine, "generator": _generator_engine}


def get_engine(name: str, **options: Any) -> PseudoHealthyEngine:
    """The engine called ``name`` built with ``options`` (e.g. the generator's ``weights``,
    ``device``); HealthiVertError lists the available ones otherwise."""
    from .errors import HealthiVertError

    if name not in ENGINES:
        raise HealthiVertError(f"Unknown engine {name!r}; available: {', '.join(sorted(ENGINES))}.")
    return ENGINES[name](**options)
