"""Reference-free estimators of height loss: the classic ratios, without any pseudo-healthy shape.

They measure the vertebra's own body the same way as every engine (``measure.heights.measure`` of the body
against itself: anterior, middle and posterior thirds of the AP depth on the central 40 % of the
LR width, rim columns excluded) and turn heights into a loss per third, so that the benchmark can
grade them and score them exactly like the engines' RHLV.

* ``minmax`` -- Genant's semi-quantitative reading: the loss of a third is 1 - h_third / h_max,
  h_max the tallest of the vertebra's own three thirds ("overall": 1 - h_overall / h_max).
  Blind to a crush (all thirds lose alike) and to the normal wedging of T11-L1.
* ``neighbours`` -- loss of a third = 1 - h_third / mean(same third of the neighbours), the
  neighbours chosen as the ``context`` engine chooses them (``engines.neighbours.select_neighbours``; the
  nearest usable one above and below, or one side only). Blind to the level trend of heights.

Research use only, not for diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.base import Neighbour, NoContextError
from ..engines.neighbours import select_neighbours
from ..geometry.body import VertebralBody
from ..measure.heights import THIRDS, own_heights
from ..measure.points import own_point_heights

REGIONS = (*THIRDS, "overall")


@dataclass
class BaselineEstimate:
    """Height loss per region (fractions) and the neighbours used (empty for ``minmax``)."""

    rhlv: dict[str, float]
    used: list[str]
    point_loss: dict[str, float] | None = None  # the same ratio on the 15/50/85 % point heights


def third_heights(body: VertebralBody) -> dict[str, float]:
    """Mean column height (mm) of the body's anterior, middle, posterior thirds and overall."""
    return dict(own_heights(body).original_mm)


def minmax_loss(heights: dict[str, float]) -> dict[str, float]:
    """Loss per region against the tallest third of the same vertebra (fractions)."""
    h_max = max(heights[t] for t in THIRDS)
    if not np.isfinite(h_max) or h_max <= 0:
        return {r: float("nan") for r in REGIONS}
    return {r: 1.0 - heights[r] / h_max for r in REGIONS}


def neighbour_loss(heights: dict[str, float], reference: list[dict[str, float]]) -> dict[str, float]:
    """Loss per region against the mean of the same region of the ``reference`` vertebrae."""
    out = {}
    for r in REGIONS:
        ref = float(np.mean([h[r] for h in reference]))
        out[r] = 1.0 - heights[r] / ref if ref > 0 else float("nan")
    return out


def point_minmax_loss(points: dict[str, float]) -> dict[str, float]:
    """1 - each point height / the tallest of the three (Genant's ratios within one vertebra)."""
    h_max = max(points.values())
    return {p: 1.0 - h / h_max if np.isfinite(h_max) and h_max > 0 else float("nan") for p, h in points.items()}


def point_neighbour_loss(points: dict[str, float], reference: list[dict[str, float]]) -> dict[str, float]:
    """1 - each point height / the mean of the same point of the ``reference`` vertebrae."""
    out = {}
    for p, h in points.items():
        ref = float(np.mean([r[p] for r in reference]))
        out[p] = 1.0 - h / ref if np.isfinite(ref) and ref > 0 else float("nan")
    return out


class MinMaxBaseline:
    """``minmax``: 1 - height of each third / tallest third of the same vertebra."""

    name = "minmax"

    def estimate(self, target: VertebralBody, neighbours: list[Neighbour]) -> BaselineEstimate:
        points = own_point_heights(target)
        return BaselineEstimate(minmax_loss(third_heights(target)), [], point_minmax_loss(points))


class NeighbourBaseline:
    """``neighbours``: 1 - height of each third / mean of the nearest usable neighbours' same third."""

    name = "neighbours"

    def estimate(self, target: VertebralBody, neighbours: list[Neighbour]) -> BaselineEstimate:
        usable, rejected = select_neighbours(neighbours)
        nearest = []
        for side in (-1, 1):
            cands = [n for n in usable if np.sign(n.offset) == side]
            if cands:
                nearest.append(min(cands, key=lambda n: abs(n.offset)))
        if not nearest:
            why = "; ".join(f"{lvl}: {reason}" for lvl, reason in rejected) or "none in the label map"
            raise NoContextError(f"no usable neighbouring vertebra ({why})")
        rhlv = neighbour_loss(third_heights(target), [third_heights(n.body) for n in nearest])
        points = point_neighbour_loss(own_point_heights(target), [own_point_heights(n.body) for n in nearest])
        return BaselineEstimate(rhlv, [n.level for n in nearest], points)


BASELINES: dict[str, type] = {"minmax": MinMaxBaseline, "neighbours": NeighbourBaseline}
