"""Heights and Relative Height Loss (RHLV) of a vertebral body against its pseudo-healthy version.

Both bodies live on the same 1 mm grid in the vertebra's local frame (s along the spine, u
posterior, v left). A column is one (u, v) position; its height is the body's extent along s
(sum of the fractional occupancy, in mm).

RHLV_region = (H_healthy - H_original) / H_healthy, with H the mean column height of the region.
Regions are the anterior, middle and posterior thirds of the body's AP depth on the central 40 %
of its LR width, and all of those columns ("overall").

Unlike the reference implementation, columns are selected by the *pseudo-healthy* body (columns
within 2 mm of its footprint's edge, or shorter than half its typical height, are partial-volume
rim), never by the original height, so the most compressed columns of a wedge are kept.

The abnormality score summarises the whole body in one number, 0-100:
score = 100 * sum_c max(H_healthy(c) - H_original(c), 0) / sum_c H_healthy(c), over every column c
of the pseudo-healthy footprint at least RIM_MM inside its edge (full LR width, not only the central
slab). It is the volume of the pseudo-healthy body that the actual body no longer fills (column-wise,
so an endplate shifted along the spine does not count), as a percentage of the pseudo-healthy volume:
0 = intact; a uniform 30 % crush scores 30; a 30 % anterior wedge scores less (its loss tapers
posteriorly). Unlike the Genant grade it has no thresholds; it ranks vertebrae (ROC in benchmarks/accuracy.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..geometry.body import CENTRAL_SLAB, Footprint, VertebralBody
from ..geometry.straighten import Block
from .points import point_heights, point_losses

THIRDS = ("anterior", "middle", "posterior")
REGIONS = (*THIRDS, "overall")
GENANT_POINTS = (
    "anterior_superior",
    "anterior_inferior",
    "middle_superior",
    "middle_inferior",
    "posterior_superior",
    "posterior_inferior",
)
POINT_POSITIONS = {"anterior": 0.1, "middle": 0.5, "posterior": 0.9}  # fraction of AP depth
RIM_FRACTION = 0.5
RIM_MM = 2  # columns this close to the edge of the footprint are partial-volume rim


@dataclass
class HeightMeasurement:
    """Everything measured on one vertebra. Heights in mm, losses as fractions."""

    rhlv: dict[str, float]
    original_mm: dict[str, float]
    healthy_mm: dict[str, float]
    loss_map: np.ndarray  # (U, V), NaN outside the footprint
    ap_positions_mm: np.ndarray
    ap_profile: np.ndarray
    third_bounds_mm: tuple[float, float]
    points_local: dict[str, np.ndarray]  # GENANT_POINTS -> local (s, u, v) mm
    min_max_ratio: float
    abnormality_score: float = float("nan")  # 0-100, see the module docstring
    # what a radiologist measures (measure.points): heights at 15/50/85 % of the AP depth and their loss
    point_heights_mm: dict[str, dict[str, float]] = field(default_factory=dict)  # "original"|"healthy" -> point -> mm
    point_loss: dict[str, float] = field(default_factory=dict)  # point -> 1 - original / healthy


def measure(original: VertebralBody, healthy_occupancy: np.ndarray) -> HeightMeasurement:
    """Measure ``original`` against a pseudo-healthy occupancy on the same block."""
    fp = original.footprint
    if fp is None:
        raise ValueError("the vertebral body is empty")
    block = original.block
    h_ori = original.heights()
    h_syn = healthy_occupancy.sum(axis=0) * block.spacing
    regions = column_regions(h_syn, fp, block)
    selected = regions["overall"]
    ori = {k: _mean(h_ori, m) for k, m in regions.items()}
    syn = {k: _mean(h_syn, m) for k, m in regions.items()}
    rhlv = {k: (syn[k] - ori[k]) / syn[k] if syn[k] > 0 else float("nan") for k in regions}
    with np.errstate(invalid="ignore", divide="ignore"):
        loss_map = np.where(h_syn > 0, (h_syn - h_ori) / np.where(h_syn > 0, h_syn, 1), np.nan)
    positions, profile = _ap_profile(h_ori, h_syn, selected, block.axis(1), fp)
    thirds = [ori[t] for t in THIRDS]
    points = {"original": point_heights(original, h_ori), "healthy": point_heights(original, h_syn)}
    return HeightMeasurement(
        rhlv=rhlv,
        original_mm=ori,
        healthy_mm=syn,
        loss_map=loss_map,
        ap_positions_mm=positions,
        ap_profile=profile,
        third_bounds_mm=(fp.depth / 3, 2 * fp.depth / 3),
        points_local=genant_points(original),
        min_max_ratio=min(thirds) / max(thirds) if max(thirds) > 0 else float("nan"),
        abnormality_score=abnormality_score(h_ori, h_syn),
        point_heights_mm=points,
        point_loss=point_losses(points["original"], points["healthy"]),
    )


def own_heights(body: VertebralBody) -> HeightMeasurement:
    """The body measured against itself (its per-third heights, for choosing context); computed once."""
    if "own_heights" not in body.derived:
        body.derived["own_heights"] = measure(body, body.occupancy)
    return body.derived["own_heights"]


def abnormality_score(h_original: np.ndarray, h_healthy: np.ndarray) -> float:
    """Surplus volume of the pseudo-healthy body over the original, % of the pseudo-healthy volume.

    100 * sum max(H_healthy - H_original, 0) / sum H_healthy over the pseudo-healthy footprint's
    columns at least RIM_MM inside its edge (NaN when there are none). Column heights in mm.
    """
    inside = ndimage.binary_erosion(h_healthy > 0, iterations=RIM_MM)
    total = float(h_healthy[inside].sum())
    if total <= 0:
        return float("nan")
    surplus = float(np.maximum(h_healthy[inside] - h_original[inside], 0.0).sum())
    return 100.0 * surplus / total


def column_regions(h_healthy: np.ndarray, footprint: Footprint, block: Block) -> dict[str, np.ndarray]:
    """Column masks (U, V) of the thirds and "overall", selected on the pseudo-healthy heights (mm)."""
    a, b = footprint.normalise(block.axis(1)[:, None], block.axis(2)[None, :])
    a = np.broadcast_to(a, h_healthy.shape)
    selected = _selected_columns(h_healthy, b)
    return {
        "anterior": selected & (a < 1 / 3),
        "middle": selected & (a >= 1 / 3) & (a < 2 / 3),
        "posterior": selected & (a >= 2 / 3),
        "overall": selected,
    }


def _selected_columns(h_syn: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Central-slab columns at least RIM_MM inside the pseudo-healthy footprint and not short rims."""
    slab = np.broadcast_to(np.abs(b) <= CENTRAL_SLAB, h_syn.shape)
    inside = slab & ndimage.binary_erosion(h_syn > 0, iterations=RIM_MM)
    if not inside.any():
        return inside
    typical = np.percentile(h_syn[inside], 90)
    return inside & (h_syn >= RIM_FRACTION * typical)


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def _ap_profile(
    h_ori: np.ndarray, h_syn: np.ndarray, selected: np.ndarray, u: np.ndarray, fp: Footprint
) -> tuple[np.ndarray, np.ndarray]:
    """Loss per AP position over the selected columns: (sum H_syn - sum H_ori) / sum H_syn."""
    rows = np.flatnonzero(selected.any(axis=1))
    syn = np.where(selected, h_syn, 0).sum(axis=1)[rows]
    ori = np.where(selected, h_ori, 0).sum(axis=1)[rows]
    return u[rows] - fp.u_anterior, (syn - ori) / syn


def genant_points(body: VertebralBody) -> dict[str, np.ndarray]:
    """The six Genant points (superior/inferior endplate at anterior, middle, posterior) in local mm.

    Taken on the mid-sagittal column line at 10 %, 50 % and 90 % of the AP depth; each point lies
    at the column's centre -/+ half its height (sub-voxel, from the fractional occupancy).
    """
    fp = body.footprint
    h = body.heights()
    centres = body.column_centres()
    u_axis, v_axis = body.block.axis(1), body.block.axis(2)
    iv = int(np.argmin(np.abs(v_axis - fp.v_center)))
    points = {}
    for where, frac in POINT_POSITIONS.items():
        iu = _nearest_filled(h[:, iv], int(np.argmin(np.abs(u_axis - (fp.u_anterior + frac * fp.depth)))))
        c, half = centres[iu, iv], h[iu, iv] / 2
        points[f"{where}_superior"] = np.array([c - half, u_axis[iu], v_axis[iv]])
        points[f"{where}_inferior"] = np.array([c + half, u_axis[iu], v_axis[iv]])
    return {k: points[k] for k in GENANT_POINTS}


def _nearest_filled(column_heights: np.ndarray, index: int) -> int:
    """The index nearest to ``index`` whose column is not empty."""
    filled = np.flatnonzero(column_heights > 0)
    return int(filled[np.argmin(np.abs(filled - index))])
