"""The ``context`` engine: the pseudo-healthy body from the neighbours' height maps.

It needs no weights and no CT: it transfers the column-height maps of the nearest usable
neighbours (chosen by ``neighbours.select_neighbours``) onto the target's footprint, matched by
relative AP/LR position (:func:`transfer_heights`), interpolates them across levels, corrects a
one-sided choice by the level trend of heights, and builds the body from those heights
(``geometry.body.build_body``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry.body import VertebralBody, build_body
from .base import HealthyPrediction, Neighbour, NoContextError
from .neighbours import select_neighbours, trend_factor


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
            factor = trend_factor(side)
            expected = factor * transfer_heights(side[0].body, target)
            used = [(side[0], 1.0)]
        h_ori = target.heights()
        expected = np.where(footprint, np.fmax(np.nan_to_num(expected, nan=0.0), h_ori), 0.0)
        occupancy = build_body(target, expected)
        context = [{"level": n.level, "offset": n.offset, "weight": round(w, 3)} for n, w in used]
        context += [{"level": lvl, "rejected": reason} for lvl, reason in rejected]
        return HealthyPrediction(occupancy=occupancy, context=context)


def transfer_heights(source: VertebralBody, target: VertebralBody) -> np.ndarray:
    """Source column heights sampled at the target's columns, matched by relative AP/LR position."""
    fs, ft = source.footprint, target.footprint
    u_t, v_t = np.meshgrid(target.block.axis(1), target.block.axis(2), indexing="ij")
    a, b = ft.normalise(u_t, v_t)
    u_s, v_s = fs.denormalise(a, b)
    iu = (u_s - source.block.start[1]) / source.block.spacing
    iv = (v_s - source.block.start[2]) / source.block.spacing
    return ndimage.map_coordinates(source.heights(), [iu, iv], order=1, mode="constant", cval=0.0)
