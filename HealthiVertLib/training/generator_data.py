"""Training data of the generator: records of healthy targets, random slices, and source cases.

:func:`case_records` cuts the sagittal and coronal slabs of each healthy target of a case (with
its band); :class:`SliceSampler` draws random training slices from them (spec 1.8-1.9, in mm);
:func:`phantom_source` makes a procedural phantom (optionally with simulated fractures) and
:func:`folder_sources` reads real or phantom-dataset cases with a grade file. The slices are
sampled by ``engines.generator.slices``, the same code the engine uses at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import HealthiVertError
from ..io.case import Case
from ..io.labels import is_gradable, verse_label
from ..engines.generator.slices import CTSampler, Slab, VIEWS, hide, neighbourhood_members, sample_slab, slice_positions, window


# --------------------------------------------------------------------------- training samples


@dataclass
class VertebraRecord:
    """One healthy target of a training case: its slabs (rows extended by ``margin`` px on each
    side, so windows can be shifted along s) and its band."""

    case: str
    level: str
    slabs: dict[str, Slab]
    band_px: int
    margin: int
    healthy_neighbours: tuple[int, ...]  # member indices that count as healthy neighbours


def case_records(
    case: Case,
    size: tuple[int, int],
    spacing: float,
    healthy: dict[str, bool] | None = None,
    margin: int = 0,
    levels_wanted: set[str] | None = None,
) -> list[VertebraRecord]:
    """Training records of every complete, healthy vertebra of ``case`` (``healthy`` maps level ->
    bool; levels missing from it are healthy when ``healthy`` is None, else not)."""
    from ..geometry.spine import SpineBodies, spine_levels
    from ..engines.neighbours import gather_neighbours

    if case.ct is None:
        raise HealthiVertError(f"Case {case.name} has no CT; the generator is trained on CT slices.")
    levels = spine_levels(case)
    bodies = SpineBodies(case, levels)
    ct = CTSampler(case.ct)
    healthy_map = {v.level: (healthy is None or healthy.get(v.level, False)) for v in levels}
    records = []
    for v in levels:
        if v.fragment or not is_gradable(v.level) or not healthy_map[v.level]:
            continue
        if levels_wanted is not None and v.level not in levels_wanted:
            continue
        body = bodies.get(v)
        if body.footprint is None or not body.complete:
            continue
        neighbours = gather_neighbours(v, levels, bodies)
        members = neighbourhood_members(body, v.level, neighbours, spacing, healthy_map)
        slabs = {}
        for view in VIEWS:
            positions = slice_positions(body, view, spacing)
            slab = sample_slab(ct, body, members, view, positions, (size[0] + 2 * margin, size[1]), spacing)
            slab.hu = slab.hu.astype(np.float16)
            slab.members = []  # the bodies are not needed any more; keep the records small
            slabs[view] = slab
        good = tuple(m.index for m in members if m.index != 1 and m.healthy)
        records.append(VertebraRecord(case.name, v.level, slabs, members[0].band_px, margin, good))
    return records


SAMPLE_KEYS = ("ct", "mask", "ratio", "real", "target", "neighbours", "height_mm", "x1", "x2")


class SliceSampler:
    """Random training slices from records (spec 1.8-1.9 in mm).

    A sample: a record, a view (sagittal or coronal, equally likely), a slice with triangular
    weight over the central 4/5 of the extent, and a window shifted along s: half of the samples
    near the target's centre (+-3 mm), half anywhere within +-``margin`` pixels, so the network
    also learns the off-centre bands of the iterative neighbour passes. Coronal slices are
    mirrored left-right at random. Healthy targets only: the target's own CT is the truth.
    """

    def __init__(self, records: list[VertebraRecord], size: tuple[int, int], spacing: float):
        if not records:
            raise HealthiVertError("No healthy, complete vertebra with a CT to train the generator on.")
        self.records, self.size, self.spacing = records, size, spacing

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One valid sample (arrays (H, W) and scalars), drawn with ``rng``."""
        for _ in range(50):
            rec = self.records[int(rng.integers(len(self.records)))]
            view = VIEWS[int(rng.integers(2))]
            slab = rec.slabs[view]
            n = len(slab.positions)
            weights = 1.0 - np.abs(np.arange(n) - (n - 1) / 2) / ((n + 1) / 2)
            k = int(rng.choice(n, p=weights / weights.sum()))
            near = math.ceil(3.0 / self.spacing)
            shift = int(rng.integers(-near, near + 1)) if rng.random() < 0.5 else int(rng.integers(-rec.margin, rec.margin + 1))
            shift = int(np.clip(shift, -rec.margin, rec.margin))
            r0 = rec.margin + shift
            hu = slab.hu[k : k + 1, r0 : r0 + self.size[0]].astype(np.float32)
            labels = slab.labels[k : k + 1, r0 : r0 + self.size[0]]
            if view == "coronal" and rng.random() < 0.5:
                hu, labels = hu[:, :, ::-1].copy(), labels[:, :, ::-1].copy()
            hid = hide(hu, labels, 1, rec.band_px, self.spacing)
            if not hid.valid[0]:
                continue
            return {
                "ct": window(hid.hu[0]),
                "mask": hid.mask[0],
                "ratio": np.float32(slab.ratios[k]),
                "real": window(hu[0]),
                "target": (labels[0] == 1).astype(np.float32),
                "neighbours": np.isin(hid.labels[0], rec.healthy_neighbours).astype(np.float32),
                "height_mm": np.float32((hid.x2[0] - hid.x1[0] + 1) * self.spacing),
                "x1": np.int64(hid.x1[0]),
                "x2": np.int64(hid.x2[0]),
            }
        raise HealthiVertError("Could not draw a valid training slice; the training vertebrae do not fit the "
                               "input size (increase the rows or the spacing).")

    def batch(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` samples stacked: images (n, 1, H, W), scalars (n,)."""
        samples = [self.sample(rng) for _ in range(n)]
        out = {}
        for key in SAMPLE_KEYS:
            arr = np.stack([s[key] for s in samples])
            out[key] = arr[:, None] if arr.ndim == 3 else arr
        return out


# --------------------------------------------------------------------------- sources


@dataclass
class SourceCase:
    """A training/validation case with the levels that count as healthy, and its fracture truth."""

    case: Case
    healthy: dict[str, bool]
    truth: dict | None = None  # truth.simulate truth (pre-fracture heights) when fractures were simulated


def phantom_source(seed: int, fractures: int = 0, levels: str | None = None) -> SourceCase:
    """A procedural phantom (``truth.phantom.make_phantom``) with random anatomy and acquisition drawn
    from ``seed``, and ``fractures`` simulated fractures (``truth.simulate.simulate_fracture``) at random
    levels; fractured levels are not healthy."""
    from ..io.labels import resolve_scheme
    from ..truth.phantom import make_phantom
    from ..truth.simulate import simulate_fracture

    rng = np.random.default_rng(seed)
    if levels is None:
        start = int(rng.integers(0, 8))  # T1..T8
        levels = f"T{start + 1}-L5"
    spacing = [float(rng.choice([1.0, 1.5, 2.0]))] * 2 + [float(rng.choice([1.0, 1.5, 2.0, 3.0]))]
    ph = make_phantom(
        levels, spacing=spacing, orientation=str(rng.choice(["LPS", "RAS", "LAS"])),
        oblique_deg=float(rng.uniform(0, 6)), kyphosis_deg=float(np.clip(rng.normal(40, 8), 20, 60)),
        lordosis_deg=float(np.clip(rng.normal(35, 7), 15, 55)),
        scoliosis_deg=0.0 if rng.random() < 0.7 else float(rng.choice([-1, 1]) * rng.uniform(5, 20)),
        scale=float(rng.uniform(0.9, 1.1)), size_jitter=0.03, trabecular_hu=float(rng.uniform(70, 160)),
        texture_hu=float(rng.uniform(20, 45)), noise_hu=float(rng.uniform(8, 25)), psf_mm=float(rng.uniform(0.4, 0.8)),
        seed=int(rng.integers(2**31)),
    )
    seg, ct, truth = ph.seg, ph.ct, None
    names = [t.level for t in ph.levels]
    chosen = rng.choice(len(names), size=min(fractures, len(names)), replace=False) if fractures else []
    for j, k in enumerate(sorted(int(c) for c in chosen)):
        sim = simulate_fracture(seg, vertebra=names[k], kind=str(rng.choice(["wedge", "biconcave", "crush"])),
                                loss=float(rng.uniform(0.2, 0.5)), ct=ct, labels="verse", seed=seed + j, truth=truth)
        seg, ct, truth = sim.seg, sim.ct, sim.truth
    fractured = set((truth or {}).get("fractures", {}))
    superior = {t.label: float(t.centre_lps[2]) for t in ph.levels}
    case = Case(f"phantom-{seed}", seg, ct, None, resolve_scheme("verse", superior))
    return SourceCase(case, {lv: lv not in fractured for lv in names}, truth)


def folder_sources(source: str | Path, grades: str | Path | None, max_grade: int = 1) -> list[SourceCase]:
    """Real (or phantom dataset) cases of a folder or manifest in the ``healthivert batch`` layout,
    with Genant grades from a ``vertebra_data.json`` file: grade <= ``max_grade`` is healthy (the
    reference counts grade 1 as healthy). Without a grade file every vertebra counts as healthy."""
    from ..io.discover import discover_cases
    from ..io.grades import read_grade_file
    from ..io.case import load_case

    grade_of = read_grade_file(grades) if grades else None
    out = []
    for bc in discover_cases(source):
        if bc.ct is None:
            continue
        case = load_case(bc.seg, bc.ct, None, name=bc.name)
        healthy = {}
        for label in np.unique(sitk.GetArrayViewFromImage(case.seg)):
            level = case.scheme.level_of(int(label))
            if level is None:
                continue
            if grade_of is None:
                healthy[level] = True
            else:
                grade = grade_of.get((bc.name, verse_label(level)))
                healthy[level] = grade is not None and grade <= max_grade
        out.append(SourceCase(case, healthy))
    if not out:
        raise HealthiVertError(f"No case with a CT found in {source}.")
    return out
