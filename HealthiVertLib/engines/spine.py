"""The ``spine`` engine: the pseudo-healthy body from a spine-wide model of healthy heights.

Where ``context`` copies the nearest usable neighbours, this engine asks ``spine_model`` what the
target's anterior, middle and posterior heights (``measure.points``) should be, given *every* other
whole vertebra of the spine and a level prior from published morphometry and radiologist-graded
healthy vertebrae. Fractured vertebrae elsewhere in the spine are down-weighted by the robust fit,
so an adjacent fracture (a T12 + L1 pair) or a spine with many fractures does not lower the
estimate, and the physiological shape of each level (thoracic wedging, the taller anterior L5) is
expected instead of being taken for a fracture.

The pseudo-healthy body: on the target's core extent (``measure.points.core_extent``), each column
gets the expected height at its relative antero-posterior position (linear through the three
points, flat beyond them, the same across the width), never less than the column's current height;
columns outside the core keep their height; the endplates move apart
symmetrically around the intact columns' mid-plane (``geometry.body.build_body``). Mask-only, no
weights. Research use only, not for diagnosis.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..geometry.body import VertebralBody, build_body
from ..measure.points import POINTS, core_extent, own_point_heights
from .base import HealthyPrediction, Neighbour, NoContextError
from .spine_model import DEFAULT_PRIOR, Prior, SpineModel, Vertebra


class SpineEngine:
    """Expected healthy heights of the target from the whole spine (robust fit + level prior)."""

    name = "spine"
    context_levels = math.inf  # every vertebra of the spine, not only the nearest ones

    def __init__(self, prior: Prior | str | Path | None = None):
        self.prior = prior if isinstance(prior, Prior) else Prior.load(prior or DEFAULT_PRIOR)

    def predict(self, target: VertebralBody, neighbours: list[Neighbour]) -> HealthyPrediction:
        if target.footprint is None:
            raise NoContextError("no vertebral body found")
        if not target.level:
            raise NoContextError("the level of the vertebra is unknown, so no level prior applies")
        members = [Vertebra(target.level, own_point_heights(target))]
        offsets, rejected = {}, []
        for n in sorted(neighbours, key=lambda n: n.offset):
            if n.body.footprint is None:
                rejected.append({"level": n.level, "rejected": "no vertebral body found"})
            elif not n.body.complete:
                rejected.append({"level": n.level, "rejected": "cut by the field of view"})
            else:
                members.append(Vertebra(n.level, own_point_heights(n.body)))
                offsets[n.level] = n.offset
        expected = SpineModel(members, self.prior).expected(0)
        if not all(math.isfinite(h) and h > 0 for h in expected.expected.values()):
            raise NoContextError("the spine model has no expected height for this vertebra")
        h_ori = target.heights()
        heights = np.where(target.mask.any(axis=0), np.fmax(self._height_map(target, expected.expected, h_ori), h_ori), 0.0)
        context = [{"level": lv, "offset": offsets[lv], "weight": w} for lv, w in expected.weights.items()
                   if lv in expected.informed_by]
        context += [{"level": lv, "rejected": "shorter than the rest of the spine predicts (possible fracture)"}
                    for lv in expected.down_weighted]
        context += rejected
        context.append({"model": "spine", "expected_mm": {p: round(h, 2) for p, h in expected.expected.items()},
                        "note": expected.note or None})
        return HealthyPrediction(occupancy=build_body(target, heights), context=context)

    @staticmethod
    def _height_map(target: VertebralBody, expected: dict[str, float], h_ori: np.ndarray) -> np.ndarray:
        """(U, V) column heights: the expected point heights, linear in the relative AP position on the
        body's core extent; outside the core (thin tissue in front of the cortex) the current heights."""
        u_ant, u_post = core_extent(target)
        a = (target.block.axis(1) - u_ant) / (u_post - u_ant)
        profile = np.interp(a, list(POINTS.values()), [expected[p] for p in POINTS])
        core = (a >= 0) & (a <= 1)
        return np.where(core[:, None], profile[:, None], h_ori)
