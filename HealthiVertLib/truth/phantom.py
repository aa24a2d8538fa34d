"""Procedural spine phantoms: CT (HU), VerSe vertebra labels and vertebral-body subregions with exact truth.

A phantom is a healthy thoracolumbar spine (T1-L5 by default, any contiguous range of it) built from
smooth shapes in each vertebra's own frame and sampled on a voxel grid of any spacing and
orientation. It exists to test and benchmark HealthiVert against known geometry; it is not anatomy
for any clinical purpose.

**Geometry.** Per level, from published cadaver morphometry: posterior and anterior body heights,
upper endplate depth and width (Panjabi et al., Spine 1991;16:888-901 for T1-T12 and Spine
1992;17:299-306 for L1-L5), spinal canal width/depth and pedicle width/height (same papers;
Zindrick et al., Spine 1987;12:160-166 for pedicle widths), spinous and transverse processes
(Panjabi 1991/1992), disc heights (mid-disc, in the range of Pooni et al., Spine 1986 and
Kunkel et al., J Anat 2010). **The values in :data:`ANATOMY` are approximate** (rounded means read
from those tables and figures, smoothed across levels so that sizes grow cranio-caudally); they
are plausible adult dimensions, not a reproduction of any table.

Each vertebral body is a superellipse in the axial plane (elliptic anteriorly, flatter
posteriorly) with planar endplates tilted from the anterior to the posterior height, a slight
endplate concavity and rounded rims; around it lie a ~1 mm dense cortical shell and trabecular
bone with seeded band-limited texture (osteoporotic to osteopenic HU). The neural arch (pedicles
and laminae as an elliptic ring around the canal, joined to the back of the body), spinous
process, transverse processes and superior/inferior articular processes are simple smooth shapes.
Discs fill the space between the endplates. The spine centre line is a smooth curve with
thoracic kyphosis, lumbar lordosis and an optional C-shaped scoliosis; each body is square to the
curve at its centre (lordosis comes from wedge-shaped discs, kyphosis partly from the bodies).
Soft tissue: an elliptic torso (muscle / viscera inside a subcutaneous fat layer), lungs beside
the thoracic spine, air outside. The CT is built with partial-volume edges, blurred by a Gaussian
PSF (in-plane and slice profile) and given correlated noise.

Not modelled: ribs, sacrum and pelvis, cervical spine, vessels and organs, the spinal cord,
degenerative change (osteophytes, disc collapse), vertebral rotation in scoliosis, beam hardening
and streaks. Fractures are applied afterwards by :mod:`HealthiVertLib.truth.simulate`.

Coordinates: world LPS millimetres (x to the patient's left, y posterior, z superior). Each
vertebra's frame has ``s`` caudal along the curve, ``u`` posterior, ``v`` left, as in
:mod:`HealthiVertLib.geometry.straighten`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import HealthiVertError
from ..io.labels import VERSE


# --------------------------------------------------------------------------------- anatomy

ANATOMY_COLUMNS = (
    "hp", "ha", "depth", "width", "disc_below",  # body posterior/anterior height, depth, width; disc below (mm)
    "canal_w", "canal_d", "ped_w", "ped_h",  # spinal canal width/depth, pedicle width/height (mm)
    "sp_len", "sp_angle", "sp_r",  # spinous process length (mm), caudal angle (deg), sagittal half-height (mm)
    "tp_len", "tp_angle",  # transverse process length from the pedicle (mm), backward angle (deg)
)  # fmt: skip

ANATOMY: dict[str, tuple[float, ...]] = {
    #       hp    ha    depth width disc  canW  canD  pedW pedH  spL  spA  spR  tpL  tpA
    "T1":  (14.0, 13.4, 15.5, 24.5, 3.6, 18.0, 14.0, 8.0, 10.0, 30.0, 25.0, 3.5, 24.0, 30.0),
    "T2":  (15.3, 14.4, 16.5, 25.0, 3.8, 16.5, 14.5, 7.0, 11.0, 30.0, 30.0, 3.5, 23.0, 32.0),
    "T3":  (16.0, 14.8, 17.5, 25.5, 4.0, 15.5, 14.5, 6.0, 11.5, 29.0, 33.0, 3.5, 22.0, 34.0),
    "T4":  (16.6, 15.2, 18.5, 26.0, 4.2, 15.0, 14.5, 5.5, 12.0, 29.0, 35.0, 3.5, 21.0, 35.0),
    "T5":  (17.2, 15.7, 20.0, 27.0, 4.4, 15.0, 14.5, 5.5, 12.0, 29.0, 36.0, 3.5, 21.0, 35.0),
    "T6":  (17.8, 16.3, 22.0, 28.5, 4.6, 15.0, 14.5, 5.5, 12.5, 28.0, 36.0, 3.5, 20.0, 35.0),
    "T7":  (18.5, 17.0, 24.0, 30.0, 4.8, 15.0, 14.5, 6.0, 13.0, 28.0, 36.0, 3.5, 20.0, 35.0),
    "T8":  (19.2, 17.8, 25.5, 31.5, 5.0, 15.5, 15.0, 6.5, 13.5, 28.0, 34.0, 4.0, 19.0, 34.0),
    "T9":  (19.8, 18.6, 26.5, 33.0, 5.3, 16.0, 15.0, 7.0, 14.0, 27.0, 32.0, 4.0, 18.0, 32.0),
    "T10": (20.6, 19.6, 27.5, 35.0, 5.6, 17.0, 15.0, 7.5, 15.0, 26.0, 26.0, 4.5, 16.0, 28.0),
    "T11": (21.6, 20.7, 28.5, 37.0, 6.0, 18.5, 16.0, 8.0, 16.0, 25.0, 20.0, 5.0, 13.0, 22.0),
    "T12": (22.6, 21.7, 30.0, 39.0, 7.0, 20.0, 17.0, 8.0, 16.0, 24.0, 12.0, 5.5, 10.0, 15.0),
    "L1":  (25.5, 24.5, 32.5, 41.0, 8.5, 21.0, 17.0, 8.5, 15.0, 25.0, 8.0, 6.0, 14.0, 10.0),
    "L2":  (26.0, 25.3, 33.5, 43.0, 9.5, 21.5, 17.0, 9.0, 15.0, 26.0, 6.0, 7.0, 18.0, 8.0),
    "L3":  (26.0, 26.3, 34.5, 45.0, 10.5, 22.0, 16.5, 10.0, 14.5, 26.0, 5.0, 7.0, 22.0, 6.0),
    "L4":  (25.5, 26.8, 35.0, 47.0, 11.0, 22.5, 16.0, 12.0, 14.0, 24.0, 6.0, 6.5, 19.0, 6.0),
    "L5":  (24.5, 27.5, 35.5, 49.0, 10.0, 24.0, 16.0, 15.0, 13.5, 20.0, 10.0, 5.5, 17.0, 8.0),
}  # fmt: skip
"""Approximate adult dimensions per level (see the module docstring for the sources)."""

PHANTOM_LEVELS: tuple[str, ...] = tuple(ANATOMY)

HU = {
    "air": -1000.0, "lung": -850.0, "fat": -100.0, "muscle": 45.0, "canal": 15.0,
    "disc_nucleus": 45.0, "disc_annulus": 75.0, "cortex": 1100.0, "posterior_core": 280.0,
}  # fmt: skip
"""Nominal HU of each tissue before blur and noise (trabecular bone: ``trabecular_hu``)."""

CORTEX_MM = 1.0
BORDER_MM = 2.0  # thickness of the Kirschke "corpus border" (49) subregion
ENDPLATE_CONCAVITY = 0.035  # central endplate depression, fraction of the body height per endplate
RIM_ROUNDING_MM = 1.0
MEASURE_RIM_MM = 2.0  # the pipeline leaves out columns within 2 mm of the footprint's edge
CENTRAL_SLAB = 0.4  # ... and keeps the central 40 % of the LR width (measure.heights, geometry.body)

KIRSCHKE = {"arcus": 41, "spinous": 42, "transverse_left": 43, "transverse_right": 44,
            "sup_articular_left": 45, "sup_articular_right": 46, "inf_articular_left": 47,
            "inf_articular_right": 48, "corpus_border": 49, "corpus": 50, "disc": 100}  # fmt: skip
"""Kirschke-lab / TPTBox subregion values (100 = intervertebral disc, as in SPINEPS)."""

_DIRECTIONS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def parse_levels(spec: str | Sequence[str]) -> list[str]:
    """Levels of a range such as ``"T1-L5"`` or ``"L1-L5"``, or a list of contiguous levels."""
    if isinstance(spec, str):
        parts = [p.strip().upper() for p in re.split(r"\s*[-–:]\s*", spec.strip()) if p.strip()]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or any(p not in ANATOMY for p in parts):
            raise HealthiVertError(f"Unknown phantom level range '{spec}'; use e.g. T1-L5, L1-L5 or T10-L2.")
        i, j = PHANTOM_LEVELS.index(parts[0]), PHANTOM_LEVELS.index(parts[1])
        if j < i:
            raise HealthiVertError(
                f"Phantom level range '{spec}' runs caudal to cranial; write it as {parts[1]}-{parts[0]}.")
        return list(PHANTOM_LEVELS[i : j + 1])
    levels = [str(level).strip().upper() for level in spec]
    idx = [PHANTOM_LEVELS.index(level) if level in ANATOMY else -1 for level in levels]
    if not levels or min(idx) < 0 or idx != list(range(idx[0], idx[0] + len(idx))):
        raise HealthiVertError(f"Phantom levels must be contiguous levels of T1-L5, cranial to caudal (got {levels}).")
    return levels


def direction_from_code(code: str) -> np.ndarray:
    """Direction cosines (columns = index axes in LPS) of an orientation code.

    Each letter names where that index axis points (SimpleITK ``DICOMOrient`` convention):
    ``"LPS"`` is the identity, ``"RAS"`` flips x and y, ``"PIR"`` puts i posterior, j inferior, k right.
    """
    code = str(code).strip().upper()
    if len(code) != 3 or any(c not in _DIRECTIONS for c in code):
        raise HealthiVertError(f"Unknown orientation code '{code}'; use three of L/R, P/A, S/I, e.g. LPS, RAS, PIR.")
    matrix = np.array([_DIRECTIONS[c] for c in code], dtype=float).T
    if abs(round(abs(np.linalg.det(matrix)))) != 1:
        raise HealthiVertError(f"Orientation code '{code}' names an axis twice; use each of L/R, P/A, S/I once.")
    return matrix


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


# ------------------------------------------------------------------------------------ truth


@dataclass
class LevelTruth:
    """Designed geometry of one vertebra (mm, world LPS)."""

    level: str
    label: int  # VerSe label value in the phantom's label map
    heights_mm: dict[str, float]  # designed mean column heights, HealthiVert's regions (anterior ... overall)
    anterior_height_mm: float  # at the anterior rim of the mid-sagittal line (Panjabi VBHa)
    posterior_height_mm: float  # at the posterior rim (VBHp)
    depth_mm: float
    width_mm: float
    centre_lps: list[float]
    superior_endplate_lps: list[float]
    inferior_endplate_lps: list[float]
    axes_lps: list[list[float]]  # rows: s (caudal), u (posterior), v (left)
    disc_below_mm: float | None  # mid-disc height to the next modelled level


@dataclass
class Phantom:
    """A phantom case: images on one grid and the designed truth."""

    ct: sitk.Image  # int16 HU
    seg: sitk.Image  # uint16 VerSe labels (8-19 T1-T12, 20-24 L1-L5)
    body: sitk.Image  # uint8 subregions: Kirschke (41-50, 100 disc) or TotalSegmentator (1 body, 2 disc)
    levels: list[LevelTruth]
    params: dict[str, Any] = field(default_factory=dict)

    def level(self, name: str) -> LevelTruth:
        """Truth of one level."""
        for truth in self.levels:
            if truth.level == name.upper():
                return truth
        raise KeyError(name)

    def truth(self) -> dict[str, Any]:
        """JSON-ready description: parameters and per-level geometry."""
        return {
            "generator": "HealthiVertLib.truth.phantom",
            "coordinate_system": "LPS",
            "units": {"lengths": "mm", "ct": "HU"},
            "params": self.params,
            "levels": [asdict(t) for t in self.levels],
        }


# --------------------------------------------------------------------------- shape helpers


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume occupancy of a voxel whose centre lies at signed distance ``d``."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _superellipse(x: np.ndarray, y: np.ndarray, a: float, b: float, p: np.ndarray | float) -> np.ndarray:
    """Approximate signed distance (mm) to the superellipse |x/a|^p + |y/b|^p = 1 (first order)."""
    ax = np.abs(x) / a + 1e-6
    ay = np.abs(y) / b + 1e-6
    r = (ax**p + ay**p) ** (1.0 / p)
    grad = r ** (1.0 - p) * np.sqrt((ax ** (p - 1) / a) ** 2 + (ay ** (p - 1) / b) ** 2)
    return (r - 1.0) / np.maximum(grad, 1e-6)


def _radius(x: np.ndarray, y: np.ndarray, a: float, b: float, p: np.ndarray | float) -> np.ndarray:
    """Normalised superellipse radius (0 centre, 1 rim)."""
    return ((np.abs(x) / a) ** p + (np.abs(y) / b) ** p) ** (1.0 / p)


def _capsule(
    points: tuple[np.ndarray, ...], a: np.ndarray, b: np.ndarray, radius: float, scale: np.ndarray
) -> np.ndarray:
    """Signed distance to a capsule from ``a`` to ``b`` (coordinates scaled by ``scale`` first)."""
    scale = [float(x) for x in scale]
    p = [points[k] * np.float32(scale[k]) for k in range(3)]
    a = [float(a[k]) * scale[k] for k in range(3)]
    ab = [float(b[k]) * scale[k] - a[k] for k in range(3)]
    t = sum((p[k] - a[k]) * ab[k] for k in range(3)) / sum(x * x for x in ab)
    t = np.clip(t, 0.0, 1.0)
    d2 = sum((p[k] - a[k] - t * ab[k]) ** 2 for k in range(3))
    return np.sqrt(d2) - radius


def _ellipsoid(points: tuple[np.ndarray, ...], centre: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (scaled by the smallest semi-axis)."""
    r = np.sqrt(sum(((points[k] - centre[k]) / semi[k]) ** 2 for k in range(3)))
    return (r - 1.0) * min(semi)


@dataclass
class _Vertebra:
    """One vertebra's design: dimensions and frame."""

    level: str
    label: int
    dims: dict[str, float]
    centre: np.ndarray  # LPS
    axes: np.ndarray  # rows s, u, v

    @property
    def hc(self) -> float:
        """Height at the middle of the AP depth (rims, without concavity)."""
        return 0.5 * (self.dims["hp"] + self.dims["ha"])

    def local(self, world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rel = world - self.centre.astype(np.float32)
        local = rel @ self.axes.T.astype(np.float32)
        return local[..., 0], local[..., 1], local[..., 2]

    # -- body ------------------------------------------------------------------------------
    def _p(self, u: np.ndarray) -> np.ndarray:
        return np.where(u > 0, 4.0, 2.2).astype(np.float32)

    def half_height(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Half column height of the body at (u, v), with endplate concavity."""
        d = self.dims
        a, b = d["depth"] / 2, d["width"] / 2
        frac = np.clip((u + a) / (2 * a), 0.0, 1.0)
        h = 0.5 * (d["ha"] + (d["hp"] - d["ha"]) * frac)
        r = np.minimum(_radius(u, v, a, b, self._p(u)), 1.0)
        return h - ENDPLATE_CONCAVITY * self.hc * (1.0 - r**2)

    def body_sdf(self, s: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = self.dims
        q1 = _superellipse(u, v, d["depth"] / 2, d["width"] / 2, self._p(u)) + RIM_ROUNDING_MM
        q2 = np.abs(s) - self.half_height(u, v) + RIM_ROUNDING_MM
        outside = np.sqrt(np.maximum(q1, 0) ** 2 + np.maximum(q2, 0) ** 2)
        return outside + np.minimum(np.maximum(q1, q2), 0) - RIM_ROUNDING_MM

    def posterior_wall(self, v: np.ndarray) -> np.ndarray:
        a, b = self.dims["depth"] / 2, self.dims["width"] / 2
        return a * np.clip(1.0 - (np.minimum(np.abs(v), 0.98 * b) / b) ** 4, 0, 1) ** 0.25

    # -- posterior elements ----------------------------------------------------------------
    def parts_sdf(self, s: np.ndarray, u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
        d = self.dims
        a, hc = d["depth"] / 2, self.hc
        cw, cd, pw, ph = d["canal_w"], d["canal_d"], d["ped_w"], d["ped_h"]
        lamina = 0.35 * pw + 3.5  # lamina thickness (mm)
        uc = a + cd / 2  # canal centre
        s_arch = -0.15 * hc  # pedicles sit on the upper half of the body
        inner = _superellipse(u - uc, v, cd / 2, cw / 2, 2.5)
        outer = _superellipse(u - uc, v, cd / 2 + lamina, cw / 2 + pw, 2.5)
        s_lo = s_arch - ph / 2
        s_hi = s_arch + ph / 2 + 0.25 * hc * np.clip((u - uc) / (cd / 2), 0, 1)
        front = np.maximum(self.posterior_wall(v) - 2.0, 0.3 * a)
        arch = np.maximum.reduce([outer, -inner, s_lo - s, s - s_hi, front - u])
        pts = (s, u, v)
        base = np.array([s_arch + 0.1 * hc, a + cd + d["sp_r"] - 0.5, 0.0])  # just behind the canal, in the lamina
        ang = math.radians(d["sp_angle"])
        tip = base + d["sp_len"] * np.array([math.sin(ang), math.cos(ang), 0.0])
        spinous = _capsule(pts, base, tip, d["sp_r"], np.array([1.0, 1.0, d["sp_r"] / 3.0]))  # 6 mm thick
        parts = {"arcus": arch, "spinous": spinous}
        tp_ang = math.radians(d["tp_angle"])
        v_ped = cw / 2 + pw / 2
        u_tp = a + 0.75 * cd
        t_r = 3.5 + 0.1 * pw  # transverse process radius
        for side, sign in (("left", 1.0), ("right", -1.0)):
            start = np.array([s_arch, u_tp, sign * (v_ped - 1.0)])
            end = start + np.array([0.0, 0.0, sign * pw / 2])
            end += d["tp_len"] * np.array([0.0, math.sin(tp_ang), sign * math.cos(tp_ang)])
            parts[f"transverse_{side}"] = _capsule(pts, start, end, t_r, np.ones(3))
            parts[f"sup_articular_{side}"] = _ellipsoid(
                pts, (-hc / 2 - 1.0, a + 0.5 * cd, sign * (cw / 2 + 0.8 * pw)), (6.0, 4.0, 2.5))
            parts[f"inf_articular_{side}"] = _ellipsoid(
                pts, (hc / 2 + 2.0, a + cd + 3.0, sign * (cw / 2 + 0.3 * pw)), (6.0, 3.5, 2.5))
        return parts

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Local (s, u, v) box that holds the whole vertebra."""
        d = self.dims
        a, hc = d["depth"] / 2, self.hc
        reach_u = a + d["canal_d"] + 6 + d["sp_len"] + d["sp_r"] + 3
        spinous_drop = d["sp_len"] * math.sin(math.radians(d["sp_angle"]))
        reach_s = max(hc / 2 + 9.0, -0.05 * hc + spinous_drop + d["sp_r"] + 2)
        reach_v = max(d["width"] / 2, d["canal_w"] / 2 + d["ped_w"] + d["tp_len"] + 6) + 2
        return np.array([-hc / 2 - 11.0, -a - 3.0, -reach_v]), np.array([reach_s + 2.0, reach_u, reach_v])

    def designed_heights(self) -> dict[str, float]:
        """Mean column heights on HealthiVert's measurement regions (thirds of the depth, central 40 % of the width)."""
        d = self.dims
        a, b = d["depth"] / 2, d["width"] / 2
        u, v = np.meshgrid(np.arange(-a, a, 0.1) + 0.05, np.arange(-b, b, 0.1) + 0.05, indexing="ij")
        inside = _superellipse(u, v, a, b, self._p(u)) <= -MEASURE_RIM_MM
        keep = inside & (np.abs(v) <= CENTRAL_SLAB * b)
        h = 2 * self.half_height(u, v)
        frac = (u + a) / (2 * a)
        regions = {"anterior": frac < 1 / 3, "middle": (frac >= 1 / 3) & (frac < 2 / 3), "posterior": frac >= 2 / 3}
        out = {k: float(h[keep & m].mean()) for k, m in regions.items()}
        out["overall"] = float(h[keep].mean())
        return out


# ------------------------------------------------------------------------------ the curve


def _frame(tangent: np.ndarray) -> np.ndarray:
    """Posterior-anchored frame rows (s, u, v) for a caudal unit tangent (as geometry.straighten)."""
    left = np.cross(tangent, [0.0, 1.0, 0.0])
    left /= np.linalg.norm(left)
    return np.stack([tangent, np.cross(left, tangent), left])


def _design(levels: list[str], scale: float, jitter: np.ndarray, kyphosis: float, lordosis: float,
            scoliosis: float) -> tuple[list[_Vertebra], np.ndarray]:
    """Vertebrae along the curve, and the dense curve points (cranial -> caudal, LPS)."""
    dims = []
    for k, level in enumerate(levels):
        row = dict(zip(ANATOMY_COLUMNS, ANATOMY[level]))
        for key in ANATOMY_COLUMNS:
            if not key.endswith("angle"):
                row[key] *= scale
        for key, j in (("hp", 0), ("ha", 0), ("depth", 1), ("width", 2)):
            row[key] *= float(jitter[k, j])
        dims.append(row)
    n = len(levels)
    # sagittal bend (deg) between consecutive levels: kyphosis over T1-T12, lordosis over L1-L5
    bends = np.zeros(max(n - 1, 0))
    thoracic = [f"T{i}" for i in range(1, 13)]
    lumbar = [f"L{i}" for i in range(1, 6)]
    for j in range(n - 1):
        up = levels[j]
        if up in thoracic[:-1]:
            i = thoracic.index(up)
            weights = [math.sin(math.pi * (m + 0.5) / 11) for m in range(11)]  # most bend mid-thoracic
            bends[j] = -kyphosis * weights[i] / sum(weights)
        elif up in lumbar[:-1]:
            i = lumbar.index(up)
            bends[j] = lordosis * (i + 1) / 10.0  # 10 %, 20 %, 30 %, 40 % of the L1-L5 lordosis
    alpha = np.r_[0.0, np.cumsum(bends)]
    alpha -= alpha.mean()
    hc = np.array([0.5 * (r["hp"] + r["ha"]) for r in dims])
    gaps = np.array([hc[j] / 2 + dims[j]["disc_below"] + hc[j + 1] / 2 for j in range(n - 1)])
    arc = np.r_[0.0, np.cumsum(gaps)]
    total = max(arc[-1], 1.0)
    # scoliosis: lateral offset A sin(pi t / T); the end tangents differ by the Cobb angle
    amp = total / math.pi * math.tan(math.radians(scoliosis) / 2)
    t = np.linspace(-40.0, total + 40.0, int((total + 80.0) / 0.5) + 1)
    a_t = np.radians(np.interp(t, arc, alpha))
    b_t = np.arctan(amp * math.pi / total * np.cos(math.pi * np.clip(t, 0, total) / total))
    tangent = np.stack([np.tan(b_t), np.tan(a_t), -np.ones_like(t)], axis=1)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    steps = np.diff(t)[:, None] * 0.5 * (tangent[1:] + tangent[:-1])
    points = np.vstack([np.zeros(3), np.cumsum(steps, axis=0)])
    at_zero = np.array([np.interp(0.0, t, points[:, k]) for k in range(3)])
    points -= at_zero
    vertebrae = []
    for j, level in enumerate(levels):
        centre = np.array([np.interp(arc[j], t, points[:, k]) for k in range(3)])
        tan = np.array([np.interp(arc[j], t, tangent[:, k]) for k in range(3)])
        frame = _frame(tan / np.linalg.norm(tan))
        vertebrae.append(_Vertebra(level, int(VERSE.label_of(level)), dims[j], centre, frame))
    return vertebrae, points


# ---------------------------------------------------------------------------------- grid


def _grid(
    vertebrae: list[_Vertebra], spacing: np.ndarray, direction: np.ndarray
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin and size of a grid with ``direction`` covering the spine and its surroundings."""
    corners = []
    for vert in vertebrae:
        lo, hi = vert.extent()
        lo = np.minimum(lo, [-vert.hc / 2 - 20, -vert.dims["depth"] / 2 - 45, -80])
        hi = np.maximum(hi + [0, 40, 0], [vert.hc / 2 + 20, 0, 80])
        box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        corners.append(vert.centre + box @ vert.axes)
    world = np.vstack(corners)
    index = world @ direction  # direction is orthonormal: index * spacing = D^T world
    lo, hi = index.min(axis=0), index.max(axis=0)
    size = np.ceil((hi - lo) / spacing).astype(int) + 1
    origin = direction @ lo
    return origin, tuple(int(x) for x in size)


class _Volume:
    """The arrays being built, in SimpleITK array order (k, j, i)."""

    def __init__(self, origin: np.ndarray, spacing: np.ndarray, direction: np.ndarray, size: tuple[int, int, int]):
        self.origin, self.spacing, self.direction, self.size = origin, spacing, direction, size
        shape = size[::-1]
        self.ct = np.empty(shape, np.float32)
        self.seg = np.zeros(shape, np.uint16)
        self.sub = np.zeros(shape, np.uint8)
        self.owner_d = np.full(shape, np.inf, np.float32)
        self.world_matrix = (direction * spacing).astype(np.float64)  # world = origin + M @ (i, j, k)

    def world(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """World points (K, J, I, 3) float32 of the index box [lo, hi) given as (i, j, k)."""
        i, j, k = (np.arange(lo[a], hi[a], dtype=np.float32) for a in range(3))
        m = self.world_matrix.astype(np.float32)
        o = self.origin.astype(np.float32)
        return (o + k[:, None, None, None] * m[:, 2] + j[None, :, None, None] * m[:, 1]
                + i[None, None, :, None] * m[:, 0])

    def box(
        self, local_lo: np.ndarray, local_hi: np.ndarray, centre: np.ndarray, axes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Index box [lo, hi) (i, j, k) covering a box of a vertebra's local frame, clipped to the image."""
        corners = np.array([[x, y, z] for x in (local_lo[0], local_hi[0]) for y in (local_lo[1], local_hi[1])
                            for z in (local_lo[2], local_hi[2])])
        world = centre + corners @ axes
        index = (world - self.origin) @ np.linalg.inv(self.world_matrix).T
        lo = np.clip(np.floor(index.min(axis=0)).astype(int), 0, self.size)
        hi = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, 0, self.size)
        return lo, hi

    @staticmethod
    def view(array: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return array[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]

    def image(self, array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(x) for x in self.spacing))
        img.SetOrigin(tuple(float(x) for x in self.origin))
        img.SetDirection(tuple(float(x) for x in self.direction.ravel()))
        return img


# ------------------------------------------------------------------------------- builder


def make_phantom(
    levels: str | Sequence[str] = "T1-L5",
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    orientation: str = "LPS",
    oblique_deg: float = 0.0,
    kyphosis_deg: float = 40.0,
    lordosis_deg: float = 35.0,
    scoliosis_deg: float = 0.0,
    scale: float = 1.0,
    size_jitter: float = 0.0,
    trabecular_hu: float = 110.0,
    texture_hu: float = 50.0,
    noise_hu: float = 12.0,
    psf_mm: float = 0.6,
    lungs: bool = True,
    subregions: str = "kirschke",
    seed: int = 0,
) -> Phantom:
    """Build a healthy phantom spine.

    ``spacing`` is per index axis (mm), ``orientation`` the axis code (``LPS``, ``RAS``, ``PIR``, ...;
    see :func:`direction_from_code`), ``oblique_deg`` a rotation of the grid about a random axis.
    ``kyphosis_deg`` is the angle between the T1 and T12 body axes, ``lordosis_deg`` between L1 and
    L5, ``scoliosis_deg`` the Cobb angle of a C-shaped coronal curve over the modelled range
    (positive: convex to the patient's left). ``scale`` multiplies every length; ``size_jitter``
    (e.g. 0.02) perturbs each body's heights, depth and width independently. ``trabecular_hu`` is the
    mean trabecular attenuation (~80-120 HU osteoporotic, 120-160 osteopenic), ``texture_hu`` the
    standard deviation of its texture, ``noise_hu`` of the image noise, ``psf_mm`` the in-plane
    Gaussian PSF sigma (the slice profile adds spacing / 2.355). ``subregions``: ``"kirschke"``
    (41-50, 100 disc) or ``"totalseg"`` (TotalSegmentator vertebrae_body: 1 body, 2 disc).
    The same arguments and seed give the same images.
    """
    names = parse_levels(levels)
    spacing_arr = np.asarray(spacing, dtype=float).reshape(-1)
    if spacing_arr.size == 1:
        spacing_arr = np.repeat(spacing_arr, 3)
    if spacing_arr.size != 3 or np.any(spacing_arr <= 0) or np.any(spacing_arr > 6):
        raise HealthiVertError(
            f"Phantom spacing must be one or three positive values up to 6 mm (got {list(spacing)}).")
    if subregions not in ("kirschke", "totalseg"):
        raise HealthiVertError(f"Unknown subregion convention '{subregions}'; use kirschke or totalseg.")
    if not 0.5 <= scale <= 2.0:
        raise HealthiVertError(f"Phantom scale {scale} is outside 0.5-2.")
    rng = np.random.default_rng(seed)
    direction = direction_from_code(orientation)
    axis = rng.normal(size=3)
    if oblique_deg:
        direction = _rotation(axis, oblique_deg) @ direction
    jitter = 1.0 + size_jitter * np.clip(rng.normal(size=(len(names), 3)), -2, 2)
    vertebrae, curve = _design(names, scale, jitter, kyphosis_deg, lordosis_deg, scoliosis_deg)
    origin, size = _grid(vertebrae, spacing_arr, direction)
    vol = _Volume(origin, spacing_arr, direction, size)
    ramp_w = float(np.exp(np.mean(np.log(spacing_arr))))
    _soft_tissue(vol, vertebrae, curve, lungs, rng)
    for upper, lower in zip(vertebrae[:-1], vertebrae[1:]):
        _disc(vol, upper, lower, ramp_w)
    for vert in vertebrae:
        _vertebra(vol, vert, ramp_w, trabecular_hu, texture_hu, rng)
    ct = _acquire(vol, psf_mm, noise_hu, rng)
    sub = vol.sub
    if subregions == "totalseg":
        sub = np.where((sub == KIRSCHKE["corpus"]) | (sub == KIRSCHKE["corpus_border"]), 1,
                       np.where(sub == KIRSCHKE["disc"], 2, 0)).astype(np.uint8)
    params = {
        "levels": f"{names[0]}-{names[-1]}", "spacing_mm": spacing_arr.tolist(), "orientation": orientation,
        "oblique_deg": oblique_deg, "direction": direction.ravel().tolist(), "kyphosis_deg": kyphosis_deg,
        "lordosis_deg": lordosis_deg, "scoliosis_deg": scoliosis_deg, "scale": scale, "size_jitter": size_jitter,
        "trabecular_hu": trabecular_hu, "texture_hu": texture_hu, "noise_hu": noise_hu, "psf_mm": psf_mm,
        "lungs": lungs, "subregions": subregions, "seed": seed, "label_scheme": "verse",
    }
    truths = []
    for j, vert in enumerate(vertebrae):
        d = vert.dims
        truths.append(LevelTruth(
            level=vert.level, label=vert.label, heights_mm=vert.designed_heights(),
            anterior_height_mm=d["ha"], posterior_height_mm=d["hp"], depth_mm=d["depth"], width_mm=d["width"],
            centre_lps=vert.centre.tolist(),
            superior_endplate_lps=(vert.centre - vert.hc / 2 * vert.axes[0]).tolist(),
            inferior_endplate_lps=(vert.centre + vert.hc / 2 * vert.axes[0]).tolist(),
            axes_lps=vert.axes.tolist(),
            disc_below_mm=d["disc_below"] if j + 1 < len(vertebrae) else None,
        ))
    return Phantom(vol.image(ct), vol.image(vol.seg), vol.image(sub), truths, params)


def _soft_tissue(
    vol: _Volume, vertebrae: list[_Vertebra], curve: np.ndarray, lungs: bool, rng: np.random.Generator
) -> None:
    """Torso (muscle inside subcutaneous fat), lungs beside the thoracic spine, air outside."""
    order = np.argsort(curve[:, 2])
    cz, cx, cy = curve[order, 2], curve[order, 0], curve[order, 1]
    thoracic = [v for v in vertebrae if v.level.startswith("T") and v.level not in ("T11", "T12")]
    lung_z = None
    if thoracic and lungs:
        lung_z = (min(v.centre[2] for v in thoracic) - 5, max(v.centre[2] for v in thoracic) + 15)
    depth = np.interp(cz, [v.centre[2] for v in vertebrae][::-1], [v.dims["depth"] for v in vertebrae][::-1])
    phase = rng.uniform(0, 2 * np.pi, 3)
    step = max(1, int(4e6 // (vol.size[0] * vol.size[1])))
    for k0 in range(0, vol.size[2], step):
        k1 = min(k0 + step, vol.size[2])
        w = vol.world(np.array([0, 0, k0]), np.array([vol.size[0], vol.size[1], k1]))
        x, y, z = w[..., 0], w[..., 1], w[..., 2]
        dx = x - np.interp(z, cz, cx).astype(np.float32)
        dy = y - np.interp(z, cz, cy).astype(np.float32)
        dd = np.interp(z, cz, depth).astype(np.float32)
        torso = _superellipse(dx, dy + 55.0 - 0.5 * dd, 150.0, 105.0 + 0.5 * dd, 2.2)
        hu = np.where(torso > 0, HU["air"], np.where(torso > -16.0, HU["fat"], HU["muscle"])).astype(np.float32)
        shading = 8.0 * np.sin(0.05 * x + phase[0]) * np.sin(0.04 * y + phase[1]) * np.sin(0.03 * z + phase[2])
        hu += np.where(torso <= -16.0, shading, 0)
        if lung_z is not None:
            in_z = (z > lung_z[0]) & (z < lung_z[1])
            for sign in (1.0, -1.0):
                lung = _superellipse(dx - sign * 92.0, dy + 8.0, 58.0, 62.0, 2.0)
                hu = np.where(in_z & (lung < 0), HU["lung"], hu)
        vol.ct[k0:k1] = hu


def _disc(vol: _Volume, upper: _Vertebra, lower: _Vertebra, ramp_w: float) -> None:
    """Intervertebral disc between two bodies (nucleus and annulus), filling the endplate concavities."""
    top = upper.centre + upper.hc / 2 * upper.axes[0]
    bottom = lower.centre - lower.hc / 2 * lower.axes[0]
    mid = 0.5 * (top + bottom)
    axes = _frame((upper.axes[0] + lower.axes[0]) / np.linalg.norm(upper.axes[0] + lower.axes[0]))
    depth = 0.5 * (upper.dims["depth"] + lower.dims["depth"]) + 1.0
    width = 0.5 * (upper.dims["width"] + lower.dims["width"]) + 1.0
    gap = float(np.linalg.norm(bottom - top))
    lo, hi = vol.box(np.array([-gap / 2 - 8, -depth / 2 - 3, -width / 2 - 3]),
                     np.array([gap / 2 + 8, depth / 2 + 3, width / 2 + 3]), mid, axes)
    if np.any(hi <= lo):
        return
    w = vol.world(lo, hi)
    rel = (w - mid.astype(np.float32)) @ axes.T.astype(np.float32)
    _, u, v = rel[..., 0], rel[..., 1], rel[..., 2]
    su, uu, vu = upper.local(w)
    sl, ul, vl = lower.local(w)
    d_axial = _superellipse(u, v, depth / 2, width / 2, np.where(u > 0, 3.0, 2.2))
    d = np.maximum.reduce([d_axial, upper.half_height(uu, vu) - su - 0.6, sl + lower.half_height(ul, vl) - 0.6])
    occ = _ramp(d, ramp_w)
    nucleus = _radius(u, v, depth / 2, width / 2, 2.2) < 0.55
    value = np.where(nucleus, HU["disc_nucleus"], HU["disc_annulus"]).astype(np.float32)
    ct = vol.view(vol.ct, lo, hi)
    ct[...] = ct * (1 - occ) + value * occ
    vol.view(vol.sub, lo, hi)[d <= 0] = KIRSCHKE["disc"]


def _texture(s: np.ndarray, u: np.ndarray, v: np.ndarray, rng: np.random.Generator, n: int = 24) -> np.ndarray:
    """Band-limited unit-variance noise: random plane waves with 2-5 mm wavelengths, mostly axial wave vectors."""
    direction = rng.normal(size=(n, 3)) * np.array([0.5, 1.0, 1.0])
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2 * np.pi / rng.uniform(2.0, 5.0, size=(n, 1)))
    phase = rng.uniform(0, 2 * np.pi, n)
    out = np.zeros_like(s)
    for m in range(n):
        out += np.cos(float(k[m, 0]) * s + float(k[m, 1]) * u + float(k[m, 2]) * v + float(phase[m]))
    return out * np.float32(math.sqrt(2.0 / n))


def _vertebra(vol: _Volume, vert: _Vertebra, ramp_w: float, trabecular_hu: float, texture_hu: float,
              rng: np.random.Generator) -> None:
    """Body, cortex, texture and posterior elements of one vertebra; labels by nearest surface."""
    local_lo, local_hi = vert.extent()
    lo, hi = vol.box(local_lo, local_hi, vert.centre, vert.axes)
    texture_rng = np.random.default_rng(rng.integers(2**63))
    if np.any(hi <= lo):
        return
    s, u, v = vert.local(vol.world(lo, hi))
    d_body = vert.body_sdf(s, u, v)
    parts = vert.parts_sdf(s, u, v)
    names = list(parts)
    stack = np.stack([parts[n] for n in names])
    which = np.argmin(stack, axis=0)
    d_post = np.take_along_axis(stack, which[None], axis=0)[0]
    d = np.minimum(d_body, d_post)
    is_body = d_body <= d_post
    occ_out = _ramp(d, ramp_w)
    occ_in = _ramp(d + CORTEX_MM, ramp_w)
    core = np.where(is_body, trabecular_hu, HU["posterior_core"]).astype(np.float32)
    bone = occ_in > 0
    trabecular = bone & is_body
    if texture_hu and trabecular.any():
        core[trabecular] += texture_hu * _texture(s[trabecular], u[trabecular], v[trabecular], texture_rng)
    ct = vol.view(vol.ct, lo, hi)
    canal = (_superellipse(u - vert.dims["depth"] / 2 - vert.dims["canal_d"] / 2, v, vert.dims["canal_d"] / 2,
                           vert.dims["canal_w"] / 2, 2.5) < 0) & (np.abs(s) < vert.hc / 2 + 3)
    ct[canal] = HU["canal"]
    ct[...] = ct * (1 - occ_out) + HU["cortex"] * (occ_out - occ_in) + core * occ_in
    owner = vol.view(vol.owner_d, lo, hi)
    mine = (d <= 0) & (d < owner)
    owner[mine] = d[mine]
    vol.view(vol.seg, lo, hi)[mine] = vert.label
    codes = np.array([KIRSCHKE[n] for n in names], np.uint8)[which]
    codes = np.where(is_body, np.where(d_body > -BORDER_MM, KIRSCHKE["corpus_border"], KIRSCHKE["corpus"]), codes)
    vol.view(vol.sub, lo, hi)[mine] = codes[mine]


def _acquire(vol: _Volume, psf_mm: float, noise_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Blur by the PSF and slice profile, add correlated noise, round to int16 HU."""
    spacing_kji = vol.spacing[::-1]
    sigma_mm = np.sqrt(psf_mm**2 + (spacing_kji / 2.355) ** 2)
    ct = ndimage.gaussian_filter(vol.ct, sigma_mm / spacing_kji, mode="nearest", truncate=3.0)
    if noise_hu > 0:
        noise = rng.standard_normal(ct.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, 0.7, truncate=2.5)
        noise *= np.float32(noise_hu / max(float(noise.std()), 1e-6))
        ct += noise
    return np.clip(np.rint(ct), -1024, 3071).astype(np.int16)


# ------------------------------------------------------------------------------- datasets

PROTOCOLS: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0), (0.8, 0.8, 2.0), (0.7, 0.7, 3.0), (1.5, 1.5, 1.5), (0.9, 0.9, 1.25), (0.8, 0.8, 2.5),
)  # fmt: skip
"""(in-plane, in-plane, slice) voxel sizes (mm) drawn by :func:`write_dataset` when no spacing is given."""
"""(low, high, probability) of the requested height loss: sub-threshold "grade 0" deformity, Genant 1, 2, 3."""
