"""Neighbours of a target vertebra: which ones are gathered, and which ones are usable.

:func:`gather_neighbours` collects the vertebrae within ``CONTEXT_LEVELS`` levels of the target
with their bodies; :func:`select_neighbours` keeps the nearest usable one above and below (or one
side only) and rejects, with a reason, those cut by the field of view or that look fractured
(their own min/max height ratio, or a mean height below what the other neighbours' level trend
expects). The ``context`` engine, the pipeline and the benchmark's ``neighbours`` baseline all
choose neighbours here.
"""

from __future__ import annotations


import numpy as np

from ..geometry.body import VertebralBody



from ..io import labels as lab
from .base import Neighbour
from ..geometry.spine import SpineBodies, SpineLevel
from ..measure.heights import own_heights


MAX_LEVEL_DISTANCE = 3.0  # use neighbours at most three levels away
SUSPECT_MIN_MAX = 0.80  # within-body min/max height ratio below which a neighbour looks fractured
SUSPECT_RELATIVE = 0.85  # mean height below this fraction of what the other neighbours' trend expects there
MAX_LEVEL_TREND = 0.03  # caudal growth bound of that expectation: fraction of the median height per level
TREND_CLAMP = (0.92, 1.08)  # bounds of the one-sided level-trend factor


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


def trend_factor(side: list[Neighbour]) -> float:
    """Height ratio to carry the nearest neighbour's map one or more levels towards the target."""
    if len(side) < 2:
        return 1.0
    n1, n2 = side[0], side[1]
    steps = abs(n1.offset) / abs(n2.offset - n1.offset)
    factor = (mean_height(n1.body) / mean_height(n2.body)) ** steps
    return float(np.clip(factor, *TREND_CLAMP))


def body_min_max(body: VertebralBody) -> float:
    """Within-body ratio of the smallest to the largest third's mean height (1 = uniform)."""
    return own_heights(body).min_max_ratio


def mean_height(body: VertebralBody) -> float:
    """Mean column height of the body's central columns (mm)."""
    return own_heights(body).original_mm["overall"]


CONTEXT_LEVELS = 3.0


def gather_neighbours(
    target: SpineLevel, levels: list[SpineLevel], bodies: SpineBodies, max_levels: float = CONTEXT_LEVELS
) -> list[Neighbour]:
    """Bodies of the vertebrae within ``max_levels`` of the target (T1-L6 only; no fragments).

    An engine that reads the whole spine says so with a ``context_levels`` attribute (``spine``: all)."""
    rank = lab.spine_ranks(v.level for v in levels)
    here = rank[target.level]
    found = []
    for v in levels:
        offset = rank[v.level] - here
        if v is target or abs(offset) > max_levels or not lab.is_gradable(v.level) or v.fragment:
            continue
        found.append(Neighbour(level=v.level, offset=offset, body=bodies.get(v)))
    return found
