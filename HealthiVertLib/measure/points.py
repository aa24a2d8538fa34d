"""What a radiologist measures: the anterior, middle and posterior heights of a vertebral body.

Genant's semi-quantitative reading compares three heights of a vertebra -- anterior, middle and
posterior -- and the *most reduced* one decides the grade (genant-grading.md). Here they are the
column heights at 15 %, 50 % and 85 % of the body's antero-posterior depth (TotalSegmentator's
spine report takes the same three positions): the median column height over the central 40 % of
the left-right width and +-4 % of the depth around each position.

The depth is the body's *core* extent: the contiguous run of AP positions, around the middle of
the body, whose mid-sagittal column height is at least half its median, extended while the height
tapers gradually (a wedge's anterior tip) rather than dropping in a step. Thin tissue in front of
the body that a label map may include (an osteophyte, a leak of the segmentation) would otherwise
move the anterior point forward onto it: on sub-verse007 T10/T11 the footprint starts 9 mm in front
of the cortex, and the anterior height there is 8-10 mm instead of 24 mm.

Unlike RHLV (the mean over a third, as HealthiVert-GAN defines it), these are single heights, so
a focal endplate depression or the tip of a wedge is not averaged away.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry.body import VertebralBody

POINTS = {"anterior": 0.15, "middle": 0.50, "posterior": 0.85}  # fraction of the core AP depth
POINT_HALF_WINDOW = 0.04  # +- this fraction of the depth around each point
POINT_SLAB = 0.2  # |LR| <= this fraction of the half-width (the central 40 %)
CORE_FRACTION = 0.5  # mid-sagittal column height >= this x its median is "core" ...
TAPER_STEP = 0.1  # ... and so is a tapering run beyond it (each mm at most this x the median lower) ...
TAPER_FLOOR = 0.2  # ... down to this x the median
RIM_MM = 2  # columns this close to the edge of the body are partial-volume rim


def core_extent(body: VertebralBody) -> tuple[float, float]:
    """(anterior, posterior) edge of the body's core in local u (mm); see the module docstring."""
    fp = body.footprint
    h = body.heights()
    u = body.block.axis(1)
    _, b = fp.normalise(u[:, None], body.block.axis(2)[None, :])
    mid = np.abs(b[0]) <= POINT_SLAB
    profile = np.array([np.median(row[mid]) if mid.any() else 0.0 for row in h])
    inside = (u >= fp.u_anterior) & (u <= fp.u_posterior)
    filled = inside & (profile > 0)
    if not filled.any():
        return fp.u_anterior, fp.u_posterior
    ok = profile >= CORE_FRACTION * np.median(profile[filled])
    centre = int(np.argmin(np.abs(u - 0.5 * (fp.u_anterior + fp.u_posterior))))
    lo = hi = centre
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < len(u) - 1 and ok[hi + 1]:
        hi += 1
    # a wedge's tip may be lower than half the median, but it slopes; thin tissue in front is a step
    step, floor = TAPER_STEP * np.median(profile[filled]), TAPER_FLOOR * np.median(profile[filled])
    while lo > 0 and profile[lo - 1] >= floor and profile[lo - 1] >= profile[lo] - step:
        lo -= 1
    while hi < len(u) - 1 and profile[hi + 1] >= floor and profile[hi + 1] >= profile[hi] - step:
        hi += 1
    if hi - lo < 2:  # no core around the middle (an empty centre): fall back to the footprint
        return fp.u_anterior, fp.u_posterior
    return float(u[lo] - 0.5 * body.block.spacing), float(u[hi] + 0.5 * body.block.spacing)


def point_heights(body: VertebralBody, heights: np.ndarray) -> dict[str, float]:
    """Column heights (mm) of ``heights`` (a (U, V) map on ``body``'s grid) at the three points.

    The points are placed on ``body``'s own core extent, so the actual body and its pseudo-healthy
    version are measured at the same places. NaN where no column is there.
    """
    fp = body.footprint
    u_ant, u_post = core_extent(body)
    u, v = body.block.axis(1), body.block.axis(2)
    a = np.broadcast_to((u[:, None] - u_ant) / (u_post - u_ant), heights.shape)
    _, b = fp.normalise(u[:, None], v[None, :])
    b = np.broadcast_to(b, heights.shape)
    inside = ndimage.binary_erosion(body.heights() > 0, iterations=RIM_MM) & (heights > 0)
    out = {}
    for name, f in POINTS.items():
        m = inside & (np.abs(b) <= POINT_SLAB) & (np.abs(a - f) <= POINT_HALF_WINDOW)
        out[name] = float(np.median(heights[m])) if m.any() else float("nan")
    return out


def own_point_heights(body: VertebralBody) -> dict[str, float]:
    """The body's own point heights (mm), computed once per body."""
    if "point_heights" not in body.derived:
        body.derived["point_heights"] = point_heights(body, body.heights())
    return body.derived["point_heights"]


def point_losses(original: dict[str, float], healthy: dict[str, float]) -> dict[str, float]:
    """1 - original / healthy at each point (fractions; NaN where either is missing)."""
    out = {}
    for name in POINTS:
        h_o, h_h = original.get(name, float("nan")), healthy.get(name, float("nan"))
        out[name] = float(1.0 - h_o / h_h) if np.isfinite(h_o) and np.isfinite(h_h) and h_h > 0 else float("nan")
    return out
