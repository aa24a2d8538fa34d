"""Why the generator reproduces a fractured vertebra's own height on real CT (issue 14, point 1).

Runs the ``generator`` engine (bundled weights, CPU) on every radiologist-graded vertebra of the real
VerSe19 CTs (``benchmarks/data/verse19``: sub-verse005/006/007 have a CT) and on two of the
phantoms the bundled weights were trained on (``training.generator_data.phantom_source`` seeds 0
and 1), with probes on the engine's steps (no change to the engine): the hidden input, the height
head's prediction (SHRM), the restored band, the synthesized label, the 2.5D fusion and the final
pseudo-healthy body. It also re-runs the real vertebrae with the SHRM height replaced by the
``spine`` engine's expected height (an oracle experiment: is the height the only thing missing?).

Writes one PNG per cause into ``docs/generator_diagnosis/`` and the numbers into
``docs/generator_diagnosis/numbers.json``; ``docs/generator_diagnosis.md`` reads them.

    nice -n 10 python scripts/diagnose_generator.py            # about 2 minutes on 2 cores

Research use only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO / "benchmarks" / "data" / "verse19"
OUT = REPO / "docs" / "generator_diagnosis"
PHANTOM_SEEDS = (0, 1)  # among the 12 training phantoms of the bundled weights (seeds 0-11)
from HealthiVertLib.io.labels import VERSE

LEVEL_OF = VERSE.label_to_level  # VerSe label value -> level, as the grade files number them


# ----------------------------------------------------------------------------- probing the engine


class Probe:
    """Records what the generator engine does for each target, by wrapping its steps.

    ``oracle``: level -> factor; when set, the SHRM height of the target pass is replaced by the
    slice's own height times that factor (the spine engine's expected / measured mean height)."""

    def __init__(self, engine: Any):
        from HealthiVertLib.engines.generator import engine as ge
        from HealthiVertLib.engines.generator import slices as gd

        self.engine, self.records, self.current = engine, {}, None
        self.oracle: dict[str, float] | None = None
        self._gd, self._ge = gd, ge
        self._saved = (gd.hide, gd.shrm_compose, ge.largest_component, engine.predict, engine._synthesize, engine.forward)
        predict, synthesize, forward = engine.predict, engine._synthesize, engine.forward
        hide, shrm, largest = gd.hide, gd.shrm_compose, ge.largest_component

        def p_predict(target, neighbours):
            self.current = {"level": target.level, "target": target, "passes": [], "fused": None}
            pred = predict(target, neighbours)
            self.current["prediction"] = pred
            self.records[target.level] = self.current
            return pred

        def p_synthesize(slab, members):
            self.current["view"] = slab.view
            self.current.setdefault("slabs", {})[slab.view] = slab
            self.current["members"] = members
            return synthesize(slab, members)

        def p_hide(hu, labels, index, band_px, spacing, min_area=gd.MIN_TARGET_MM2):
            hid = hide(hu, labels, index, band_px, spacing, min_area)
            self.current["passes"].append({"view": self.current["view"], "index": index, "band_px": band_px,
                                           "valid": hid.valid.copy(), "band": hid.band.copy()})
            return hid

        def p_forward(ct, mask, ratios, attention=None):
            out = forward(ct, mask, ratios, attention)
            self.current["passes"][-1].update(ct=ct.copy(), mask=mask.copy(), ratios=np.asarray(ratios).copy(),
                                              fine_ct=out["fine_ct"], fine_seg=out["fine_seg"],
                                              pred_mm=out["fine_height_mm"].copy())
            return out

        def p_shrm(hu, labels, gen_hu, gen_seg, x1, x2, pred_px, index):
            if self.oracle is not None and index == 1:
                pred_px = (x2 - x1 + 1) * self.oracle[self.current["level"]]
            comp = shrm(hu, labels, gen_hu, gen_seg, x1, x2, pred_px, index)
            band_rows = comp.source == np.arange(hu.shape[1])[None, :]
            seg_rows = ((comp.seg >= 0.5) & band_rows[:, :, None]).sum(axis=1)  # (n, W) synthesized rows per column
            own_cols = (labels == index).any(axis=1)  # (n, W) the vertebra's columns in the slice
            seg_h = np.array([seg_rows[k][own_cols[k]].mean() if own_cols[k].any() else np.nan for k in range(len(x1))])
            own_h = np.array([(labels[k] == index).sum(axis=0)[own_cols[k]].mean() if own_cols[k].any() else np.nan
                              for k in range(len(x1))])
            self.current["passes"][-1].update(x1=x1.copy(), x2=x2.copy(), restored_px=comp.height_px.copy(),
                                              seg_col_px=seg_h, own_col_px=own_h, used_px=np.asarray(pred_px, float),
                                              hu_in=hu.copy(), labels_in=labels.copy(), hu_out=comp.hu.copy(),
                                              seg_out=comp.seg.copy())
            return comp

        def p_largest(occupancy):
            self.current["fused"] = occupancy.copy()
            return largest(occupancy)

        gd.hide, gd.shrm_compose, ge.largest_component = p_hide, p_shrm, p_largest
        engine.predict, engine._synthesize, engine.forward = p_predict, p_synthesize, p_forward

    def close(self) -> None:
        """Put the engine's steps back."""
        gd, ge, e = self._gd, self._ge, self.engine
        gd.hide, gd.shrm_compose, ge.largest_component, e.predict, e._synthesize, e.forward = self._saved


# ----------------------------------------------------------------------------- data


def real_cases() -> tuple[dict[str, Any], dict[tuple[str, int], int]]:
    """The VerSe19 subjects with a CT (loaded) and every subject's grades."""
    from HealthiVertLib.io.case import load_case
    from HealthiVertLib.io.grades import read_grade_file

    grades = read_grade_file(DATA / "vertebra_data.json")
    cases = {}
    for ct in sorted(DATA.glob("sub-verse*_ct.nii.gz")):
        subject = ct.name.split("_")[0]
        cases[subject] = load_case(DATA / f"{subject}_seg-vert_msk.nii.gz", ct, labels="verse", name=subject)
    return cases, grades


def loso_spine(subject: str, grades: dict[tuple[str, int], int]) -> Any:
    """The spine engine with its level prior fitted without ``subject`` (as the real benchmark does)."""
    from HealthiVertLib.evaluation.real import loso_spine_engine
    from HealthiVertLib.io.case import load_case
    from HealthiVertLib.training.spine_prior import healthy_vertebrae

    healthy = {}
    for seg in sorted(DATA.glob("sub-verse*_seg-vert_msk.nii.gz")):
        s = seg.name.split("_")[0]
        case = load_case(seg, None, labels="verse", name=s)
        healthy[s] = healthy_vertebrae(case, {LEVEL_OF[lab]: g for (subj, lab), g in grades.items() if subj == s})
    return loso_spine_engine(subject, healthy)


def phantom_slices(n: int = 256) -> dict[str, np.ndarray]:
    """Training slices of the bundled weights' phantoms, sampled as in training."""
    from HealthiVertLib.training.generator_data import (
        SliceSampler,
        case_records,
        phantom_source,
    )

    records = []
    for seed in PHANTOM_SEEDS:
        src = phantom_source(seed, fractures=0)
        records += case_records(src.case, (96, 64), 1.5, src.healthy, margin=8)
    return SliceSampler(records, (96, 64), 1.5).batch(n, np.random.default_rng(0))


# ----------------------------------------------------------------------------- measuring


def target_passes(rec: dict) -> list[dict]:
    return [p for p in rec["passes"] if p["index"] == 1 and "pred_mm" in p]


def summarise(rec: dict, spacing: float) -> dict[str, float]:
    """Per vertebra: the slice heights the height head saw and predicted, the restored band, the
    synthesized label's height, the fused and the final pseudo-healthy column heights (mm)."""
    own, pred, restored, seg, own_col, used = [], [], [], [], [], []
    for p in target_passes(rec):
        own += list((p["x2"] - p["x1"] + 1) * spacing)
        pred += list(p["pred_mm"])
        used += list(p["used_px"] * spacing)
        restored += list(p["restored_px"] * spacing)
        seg += list(p["seg_col_px"] * spacing)
        own_col += list(p["own_col_px"] * spacing)
    target = rec["target"]
    cols = target.occupancy.sum(axis=0) > 0.5
    orig_col = target.occupancy.sum(axis=0)[cols].mean() * target.block.spacing
    fused = rec["fused"].sum(axis=0)[cols].mean() * target.block.spacing if rec["fused"] is not None else np.nan
    final = rec["prediction"].occupancy.sum(axis=0)[cols].mean() * target.block.spacing
    reset = float((rec["fused"].sum(axis=0)[cols] < target.occupancy.sum(axis=0)[cols]).mean()) if rec["fused"] is not None else np.nan
    band = next(m.band_px * spacing for m in rec["members"] if m.index == 1)
    return {
        "slices": len(own), "slice_extent_mm": float(np.mean(own)), "shrm_pred_mm": float(np.mean(pred)),
        "shrm_used_mm": float(np.mean(used)),
        "pred_over_extent": float(np.mean(np.array(pred) / np.array(own))),
        "slices_pred_taller": float(np.mean(np.array(pred) > np.array(own))),
        "restored_mm": float(np.mean(restored)), "seg_column_mm": float(np.nanmean(seg)),
        "own_column_in_slice_mm": float(np.nanmean(own_col)),
        "original_column_mm": float(orig_col), "fused_column_mm": float(fused), "final_column_mm": float(final),
        "columns_reset_to_original": reset, "band_mm": float(band),
    }


def run_generator(engine: Any, case: Any, oracle: dict[str, float] | None = None) -> tuple[dict, dict]:
    """Grade every vertebra of ``case`` with the probed generator: (level -> VertebraResult, level -> record)."""
    from HealthiVertLib.pipeline.case import grade_case

    probe = Probe(engine)
    probe.oracle = oracle
    try:
        result = grade_case(case, None, engine=engine, volumes=False)
    finally:
        probe.close()
    return {v.level: v for v in result.vertebrae}, probe.records


# ----------------------------------------------------------------------------- figures


def _save(fig, name: str) -> str:
    path = OUT / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path.relative_to(REPO))


def fig_band(rec: dict, title: str, phantom: dict[str, np.ndarray]) -> str:
    """Cause 1, the mask band: the slice, the network's input (band hidden), its output, the SHRM composite."""
    import matplotlib.pyplot as plt

    p = next(q for q in target_passes(rec) if q["view"] == "sagittal")
    k = len(p["pred_mm"]) // 2
    sel = np.flatnonzero(p["valid"])
    slab = rec["slabs"]["sagittal"]
    fig, ax = plt.subplots(2, 4, figsize=(11, 7.2))
    win = {"cmap": "gray", "vmin": -1, "vmax": 1}
    from HealthiVertLib.engines.generator.slices import window

    ax[0, 0].imshow(window(slab.hu[sel[k]]), **win)
    ax[0, 0].contour(slab.labels[sel[k]] == 1, [0.5], colors="r", linewidths=0.8)
    ax[0, 0].set_title(f"{title}: real CT slice\n(red: the vertebra, {(p['x2'][k] - p['x1'][k] + 1) * 1.5:.0f} mm)")
    ax[0, 1].imshow(p["ct"][k], **win)
    ax[0, 1].contour(p["mask"][k], [0.5], colors="y", linewidths=0.8)
    ax[0, 1].set_title(f"network input: band {p['band'][sel[k]] * 1.5:.0f} mm hidden\n(yellow), context pushed apart")
    ax[0, 2].imshow(p["fine_ct"][k], **win)
    ax[0, 2].set_title(f"generator output\nheight head: {p['pred_mm'][k]:.1f} mm")
    ax[0, 3].imshow(window(p["hu_out"][k]), **win)
    ax[0, 3].contour(p["seg_out"][k] >= 0.5, [0.5], colors="c", linewidths=0.8)
    ax[0, 3].set_title(f"after SHRM: restored band {p['restored_px'][k] * 1.5:.0f} mm\n(cyan: synthesized label)")
    j = int(np.argmin(np.abs(phantom["height_mm"] - np.median(phantom["height_mm"]))))
    ax[1, 0].imshow(phantom["real"][j, 0], **win)
    ax[1, 0].contour(phantom["target"][j, 0], [0.5], colors="r", linewidths=0.8)
    ax[1, 0].set_title("training phantom slice\n(what the weights learned from)")
    ax[1, 1].imshow(phantom["ct"][j, 0], **win)
    ax[1, 1].contour(phantom["mask"][j, 0], [0.5], colors="y", linewidths=0.8)
    ax[1, 1].set_title("its training input (band hidden)")
    real_ctx = p["ct"][k][p["mask"][k] < 0.5]
    ph_ctx = phantom["ct"][j, 0][phantom["mask"][j, 0] < 0.5]
    ax[1, 2].hist(ph_ctx, bins=60, range=(-1, 1), alpha=0.6, density=True, label="phantom input")
    ax[1, 2].hist(real_ctx, bins=60, range=(-1, 1), alpha=0.6, density=True, label="real input")
    ax[1, 2].set_title("context values of these two inputs\n(window -300..800 HU -> -1..1)")
    ax[1, 2].legend(fontsize=8)
    ax[1, 3].plot(p["ratios"], p["pred_mm"], "o-", label="height head")
    ax[1, 3].plot(p["ratios"], (p["x2"] - p["x1"] + 1) * 1.5, "s--", label="vertebra now (slice extent)")
    ax[1, 3].plot(p["ratios"], p["band"][sel] * 1.5, ":", label="band")
    ax[1, 3].set_xlabel("slice ratio r (0 = mid-sagittal)")
    ax[1, 3].set_ylabel("mm")
    ax[1, 3].set_title("per sagittal slice")
    ax[1, 3].legend(fontsize=8)
    for a in ax.flat[:6]:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("Cause 1 - the mask band: what the network is asked to fill", fontsize=12)
    return _save(fig, "1_mask_band.png")


def fig_height(rows: list[dict]) -> str:
    """Cause 2, the SHRM height source: height head vs the vertebra's own slice extent vs the spine engine."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = {0: "tab:green", 1: "tab:orange", 2: "tab:red", 3: "darkred", None: "tab:blue"}
    for r in rows:
        ax[0].scatter(r["slice_extent_mm"], r["shrm_pred_mm"], c=colours[r["grade"]], marker="o" if r["real"] else "x", s=40)
    lim = [10, 45]
    ax[0].plot(lim, lim, "k--", lw=0.8, label="height head = the vertebra's own height")
    ax[0].set_xlabel("vertebra's own height in the slices (mean extent, mm)")
    ax[0].set_ylabel("SHRM height head (mean over slices, mm)")
    for g, c in colours.items():
        ax[0].scatter([], [], c=c, label=f"real, grade {g}" if g is not None else "training phantom (x)")
    ax[0].legend(fontsize=7)
    ax[0].set_title("The height head predicts less than the vertebra already has")
    real = [r for r in rows if r["real"]]
    x = np.arange(len(real))
    w = 0.2
    ax[1].bar(x - 1.5 * w, [r["original_column_mm"] for r in real], w, label="measured (own columns)")
    ax[1].bar(x - 0.5 * w, [r["final_column_mm"] for r in real], w, label="generator pseudo-healthy")
    ax[1].bar(x + 0.5 * w, [r["spine_healthy_mm"] for r in real], w, label="spine engine pseudo-healthy (LOSO)")
    ax[1].bar(x + 1.5 * w, [r["band_expected_mm"] for r in real], w, label="neighbours' mean (sets the band)")
    ax[1].set_xticks(x, [f"{r['subject'][-3:]} {r['level']}\ng{r['grade']}" for r in real], fontsize=7)
    ax[1].set_ylabel("mean column height (mm)")
    ax[1].set_ylim(15, None)
    ax[1].legend(fontsize=7)
    ax[1].set_title("Per graded real vertebra")
    fig.suptitle("Cause 2 - the SHRM height source", fontsize=12)
    return _save(fig, "2_shrm_height.png")


def fig_intensity(real_ctx: np.ndarray, ph_ctx: np.ndarray, real_body: np.ndarray, ph_body: np.ndarray) -> str:
    """Cause 3, the intensity domain gap: the network's input values and the vertebral body's HU."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].hist(ph_ctx, bins=80, range=(-1, 1), density=True, alpha=0.6, label="training phantoms (seeds 0, 1)")
    ax[0].hist(real_ctx, bins=80, range=(-1, 1), density=True, alpha=0.6, label="real VerSe19 CTs (target passes)")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("network input value (HU window -300..800 -> -1..1), context pixels")
    ax[0].legend(fontsize=8)
    ax[0].set_title("What the network sees around the band")
    ax[1].hist(ph_body, bins=80, range=(-300, 1200), density=True, alpha=0.6, label="phantom vertebral bodies")
    ax[1].hist(real_body, bins=80, range=(-300, 1200), density=True, alpha=0.6, label="real vertebral bodies")
    ax[1].set_xlabel("HU inside the vertebral body (label 1, before hiding)")
    ax[1].legend(fontsize=8)
    ax[1].set_title("The body the network is to synthesize")
    fig.suptitle("Cause 3 - intensity domain gap between the training phantoms and real CT", fontsize=12)
    return _save(fig, "3_intensity_gap.png")


def fig_slices(recs: list[tuple[str, dict]]) -> str:
    """Cause 4, slice selection: per slice, where the height head stands relative to the vertebra."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(recs), figsize=(4.2 * len(recs), 3.8), squeeze=False)
    for a, (title, rec) in zip(ax[0], recs):
        for p in target_passes(rec):
            own = (p["x2"] - p["x1"] + 1) * 1.5
            pos = rec["slabs"][p["view"]].positions
            x = pos[np.flatnonzero(p["valid"])] - pos.mean()
            a.plot(x, p["pred_mm"] - own, "o-" if p["view"] == "sagittal" else "s--", label=f"{p['view']}: head - own")
            a.plot(x, p["restored_px"] * 1.5 - own, ":", label=f"{p['view']}: restored - own")
        a.axhline(0, color="k", lw=0.8)
        a.set_xlabel("slice position from the body's centre (mm)")
        a.set_ylabel("mm")
        a.set_title(title, fontsize=9)
        a.legend(fontsize=6)
    fig.suptitle("Cause 4 - slice selection: every slice of the central 4/5 (sagittal: along left-right, coronal: along "
                 "antero-posterior),\nheight head minus the slice's own extent", fontsize=10, y=1.06)
    return _save(fig, "4_slice_selection.png")


def fig_fusion(rows: list[dict], rec: dict, title: str) -> str:
    """Cause 5, the fusion: restored band -> synthesized label -> fused body -> never-shorter rule."""
    import matplotlib.pyplot as plt

    real = [r for r in rows if r["real"]]
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [2, 1]})
    x = np.arange(len(real))
    keys = [("own_column_in_slice_mm", "own columns in the slices"), ("restored_mm", "SHRM restored band (slice extent)"),
            ("seg_column_mm", "synthesized label (seg >= 0.5) per column"), ("fused_column_mm", "fused 2.5D body"),
            ("final_column_mm", "final (never shorter than measured)"), ("original_column_mm", "measured body")]
    w = 0.8 / len(keys)
    for j, (k, lab) in enumerate(keys):
        ax[0].bar(x + (j - len(keys) / 2 + 0.5) * w, [r[k] for r in real], w, label=lab)
    ax[0].set_xticks(x, [f"{r['subject'][-3:]} {r['level']}\ng{r['grade']}" for r in real], fontsize=7)
    ax[0].set_ylim(10, None)
    ax[0].set_ylabel("mean height over the vertebra's columns (mm)")
    ax[0].legend(fontsize=7, ncol=2)
    target = rec["target"]
    mid = target.occupancy.shape[2] // 2
    ax[1].imshow(target.occupancy[:, :, mid], cmap="Greys", alpha=0.5, aspect="auto")
    if rec["fused"] is not None:
        ax[1].contour(rec["fused"][:, :, mid], [0.5], colors="tab:orange")
    ax[1].contour(rec["prediction"].occupancy[:, :, mid], [0.5], colors="tab:blue", linestyles="--")
    rows_, cols_ = np.nonzero(target.occupancy[:, :, mid] > 0.1)
    ax[1].set_xlim(cols_.min() - 8, cols_.max() + 8)
    ax[1].set_ylim(rows_.max() + 8, rows_.min() - 8)
    ax[1].set_title(f"{title}, mid-sagittal plane of its 1 mm block\ngrey: measured; orange: fused; blue dashed: final", fontsize=9)
    ax[1].set_xlabel("u (posterior ->), mm")
    ax[1].set_ylabel("s (caudal ->), mm")
    fig.suptitle("Cause 5 - the fusion: from the restored band to the pseudo-healthy body", fontsize=12)
    return _save(fig, "5_fusion.png")


def fig_oracle(rows: list[dict]) -> str:
    """The oracle experiment: the spine engine's expected height as the SHRM height."""
    import matplotlib.pyplot as plt

    real = [r for r in rows if r["real"]]
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(real))
    w = 0.27
    ax.bar(x - w, [100 * r["loss_generator"] for r in real], w, label="generator (its own height head)")
    ax.bar(x, [100 * r["loss_oracle"] for r in real], w, label="generator, SHRM height = spine engine's")
    ax.bar(x + w, [100 * r["loss_spine"] for r in real], w, label="spine engine (LOSO)")
    ax.set_xticks(x, [f"{r['subject'][-3:]} {r['level']}\ng{r['grade']}" for r in real], fontsize=7)
    ax.set_ylabel("largest point loss (%)")
    ax.axhline(11.2, color="k", ls=":", lw=0.8)
    ax.text(len(real) - 0.5, 11.6, "default grader's grade-1 threshold", ha="right", fontsize=7)
    ax.legend(fontsize=8)
    fig.suptitle("Experiment - give SHRM the right height: does the generator then see the fractures?", fontsize=11)
    return _save(fig, "6_oracle_height.png")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run the probes, write the figures and numbers.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="figure folder (default docs/generator_diagnosis).")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update({"axes.titlesize": 8, "font.size": 8})
    import torch

    from HealthiVertLib.engines.generator.engine import GeneratorEngine
    from HealthiVertLib.engines.generator.slices import expected_height_mm
    from HealthiVertLib.engines.neighbours import gather_neighbours
    from HealthiVertLib.geometry.spine import SpineBodies, spine_levels
    from HealthiVertLib.pipeline.case import grade_case
    from HealthiVertLib.training.generator_data import phantom_source

    global OUT
    OUT = args.out or OUT
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    engine = GeneratorEngine(device="cpu")
    cases, grades = real_cases()
    rows, real_recs, ctx_real, body_real = [], {}, [], []
    for subject, case in cases.items():
        gen, recs = run_generator(engine, case)
        spine = {v.level: v for v in grade_case(case, None, engine=loso_spine(subject, grades), volumes=False).vertebrae}
        levels = spine_levels(case)
        bodies = SpineBodies(case, levels)
        by_level = {v.level: v for v in levels}
        graded = {LEVEL_OF[lab]: g for (s, lab), g in grades.items() if s == subject}
        oracle = {}
        for level, g in graded.items():
            if level not in recs or spine[level].heights_mm is None:
                continue
            rows.append({"subject": subject, "level": level, "grade": g, "real": True,
                         **summarise(recs[level], engine.spacing)})
            r = rows[-1]
            r["spine_healthy_mm"] = spine[level].heights_mm["pseudo_healthy"]["overall"]
            r["measured_overall_mm"] = spine[level].heights_mm["original"]["overall"]
            r["generator_healthy_mm"] = gen[level].heights_mm["pseudo_healthy"]["overall"]
            r["loss_generator"] = max(gen[level].point_loss.values())
            r["loss_spine"] = max(spine[level].point_loss.values())
            v = by_level[level]
            r["band_expected_mm"] = expected_height_mm(bodies.get(v), gather_neighbours(v, levels, bodies))
            oracle[level] = r["spine_healthy_mm"] / r["measured_overall_mm"]
            real_recs[(subject, level)] = recs[level]
            for p in target_passes(recs[level]):
                ctx_real.append(p["ct"][p["mask"] < 0.5])
                body_real.append(p["hu_in"][p["labels_in"] == 1])
        oracle_gen, oracle_recs = run_generator(engine, case, oracle)
        for r in rows:
            if r["subject"] == subject:
                r["loss_oracle"] = max(oracle_gen[r["level"]].point_loss.values())
                r["oracle_healthy_mm"] = oracle_gen[r["level"]].heights_mm["pseudo_healthy"]["overall"]
                o = summarise(oracle_recs[r["level"]], engine.spacing)
                r.update({f"oracle_{k}": o[k] for k in ("shrm_used_mm", "restored_mm", "seg_column_mm", "fused_column_mm")})
    ph = phantom_slices()
    ctx_ph = ph["ct"][ph["mask"] < 0.5]
    body_ph = []
    for seed in PHANTOM_SEEDS:
        src = phantom_source(seed, fractures=0)
        _, recs = run_generator(engine, src.case)
        for level, rec in recs.items():
            rows.append({"subject": f"phantom-{seed}", "level": level, "grade": None, "real": False,
                         **summarise(rec, engine.spacing)})
            for p in target_passes(rec):
                body_ph.append(p["hu_in"][p["labels_in"] == 1])
    ctx_real_all, body_real_all, body_ph_all = np.concatenate(ctx_real), np.concatenate(body_real), np.concatenate(body_ph)

    def share(a: np.ndarray, lo: float, hi: float) -> float:
        return float(((a >= lo) & (a <= hi)).mean())

    stats = {
        "context_at_or_below_-300HU": {"real": share(ctx_real_all, -1, -0.999), "phantom": share(ctx_ph, -1, -0.999)},
        "context_at_or_above_800HU": {"real": share(ctx_real_all, 0.999, 1), "phantom": share(ctx_ph, 0.999, 1)},
        "context_mean": {"real": float(ctx_real_all.mean()), "phantom": float(ctx_ph.mean())},
        "body_hu_median": {"real": float(np.median(body_real_all)), "phantom": float(np.median(body_ph_all))},
        "body_hu_p10_p90": {"real": [float(np.percentile(body_real_all, 10)), float(np.percentile(body_real_all, 90))],
                            "phantom": [float(np.percentile(body_ph_all, 10)), float(np.percentile(body_ph_all, 90))]},
    }
    real_rows = [r for r in rows if r["real"]]
    fractured = [r for r in real_rows if r["grade"] >= 1]
    healthy = [r for r in real_rows if r["grade"] == 0]
    ph_rows = [r for r in rows if not r["real"]]

    def mean(rs: list[dict], k: str) -> float:
        return float(np.mean([r[k] for r in rs])) if rs else float("nan")

    summary = {k: {"real_grade0": mean(healthy, k), "real_fractured": mean(fractured, k), "phantom": mean(ph_rows, k)}
               for k in ("pred_over_extent", "slices_pred_taller", "columns_reset_to_original", "slice_extent_mm",
                         "shrm_pred_mm", "restored_mm", "seg_column_mm", "fused_column_mm", "final_column_mm",
                         "original_column_mm")}
    for k in ("loss_generator", "loss_oracle", "loss_spine", "oracle_shrm_used_mm", "oracle_restored_mm",
              "oracle_seg_column_mm", "oracle_fused_column_mm", "spine_healthy_mm", "band_expected_mm"):
        summary[k] = {"real_grade0": mean(healthy, k), "real_fractured": mean(fractured, k)}
    figures = []
    example = ("sub-verse007", "T12") if ("sub-verse007", "T12") in real_recs else next(iter(real_recs))
    figures.append(fig_band(real_recs[example], f"{example[0][-3:]} {example[1]}", ph))
    figures.append(fig_height(rows))
    figures.append(fig_intensity(ctx_real_all, ctx_ph, body_real_all, body_ph_all))
    frac_recs = [(f"{s[-3:]} {lv} (grade {grades_of(grades, s, lv)})", rec) for (s, lv), rec in real_recs.items()
                 if grades_of(grades, s, lv) >= 2][:2]
    figures.append(fig_slices(frac_recs + [("phantom-0 " + k, v) for k, v in list(recs.items())[2:3]]))
    figures.append(fig_fusion(rows, real_recs[example], f"{example[0][-3:]} {example[1]}"))
    figures.append(fig_oracle(rows))
    numbers = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "wall_s": round(time.perf_counter() - t0, 1),
               "weights": engine.weights_name, "device": engine.device_choice.note, "hgam": engine.hgam_status,
               "intensity": stats, "summary": summary, "figures": figures,
               "vertebrae": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
    (OUT / "numbers.json").write_text(json.dumps(numbers, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"summary": summary, "intensity": stats}, indent=1))
    for r in real_rows:
        print(f"{r['subject']} {r['level']} g{r['grade']}: extent {r['slice_extent_mm']:.1f} head {r['shrm_pred_mm']:.1f} "
              f"restored {r['restored_mm']:.1f} seg {r['seg_column_mm']:.1f} fused {r['fused_column_mm']:.1f} "
              f"final {r['final_column_mm']:.1f} measured {r['original_column_mm']:.1f} | spine {r['spine_healthy_mm']:.1f} "
              f"band-exp {r['band_expected_mm']:.1f} | loss gen {100 * r['loss_generator']:.1f} oracle "
              f"{100 * r['loss_oracle']:.1f} spine {100 * r['loss_spine']:.1f}")
    print(f"{len(rows)} vertebrae in {time.perf_counter() - t0:.0f} s; figures in {OUT}")
    return 0


def grades_of(grades: dict[tuple[str, int], int], subject: str, level: str) -> int:
    """The radiologists' grade of ``level`` of ``subject``."""
    return next(g for (s, lab), g in grades.items() if s == subject and LEVEL_OF[lab] == level)


if __name__ == "__main__":
    sys.exit(main())
