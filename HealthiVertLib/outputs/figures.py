"""PNG figures of one graded case: sagittal, axial height-loss, AP-profile and counterfactual figures.

Figures use ``matplotlib.figure.Figure`` with an Agg canvas (no pyplot, no global state), so
reports can be written from threads or worker processes. :func:`render_figures` draws a case's
figures (in forked worker processes where it can; one by one after :func:`draw_figures_serially`,
as ``app.batch`` workers do) and writes them atomically (``io.files``). Research use only, not
for diagnosis.
"""

from __future__ import annotations

import io as _stdio
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..io.files import write_bytes_atomic
from ..measure.heights import GENANT_POINTS
from ..pipeline.records import CaseResult, VertebraResult, VertebraViews
from ..processes import exit_with_parent
from .tables import finite, fmt_pct, get_path


FIGURE_KINDS = ("sagittal", "axial_loss", "ap_profile")
COUNTERFACTUAL_FIGURE = "counterfactuals"  # only with grade --counterfactuals

GENANT_THRESHOLDS_PCT = ((20.0, "grade 1"), (25.0, "grade 2"), (40.0, "grade 3"))
GRADE_COLOURS = {0: "#2e9d4a", 1: "#f2c200", 2: "#f07f10", 3: "#d62728"}
POINT_ABBREV = {
    "anterior_superior": "AS",
    "anterior_inferior": "AI",
    "middle_superior": "MS",
    "middle_inferior": "MI",
    "posterior_superior": "PS",
    "posterior_inferior": "PI",
}
HEIGHT_PAIRS = (
    ("anterior", "anterior_superior", "anterior_inferior"),
    ("middle", "middle_superior", "middle_inferior"),
    ("posterior", "posterior_superior", "posterior_inferior"),
)

DPI = 110
CT_WINDOW_HU = (-300.0, 1200.0)
COLOUR_ORIGINAL = "#2f7fd8"
COLOUR_HEALTHY = "#ff8c00"
COLOUR_POINTS = "#e8175d"
REGION_SHADES = {"anterior": "#e3eefa", "middle": "#eef7e6", "posterior": "#f8efe1"}


# ----------------------------------------------------------------------------- figures


def new_figure(size: tuple[float, float]):
    """A pyplot-free figure with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = _stdio.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _rhlv_line(v: VertebraResult) -> str:
    thirds = (("A", "anterior"), ("M", "middle"), ("P", "posterior"))
    parts = [f"{lab} {fmt_pct(get_path(v.rhlv, r))}" for lab, r in thirds]
    return "RHLV  " + "   ".join(parts)


def _title_line(v: VertebraResult) -> str:
    if v.grade is not None:
        g = f"Genant grade {int(v.grade)}"
        if finite(v.confidence) is not None:
            g += f" (confidence {finite(v.confidence):.2f})"
    else:
        g = f"not graded ({v.status})"
    return f"{v.level} — {g}"


def _mask_bbox(masks: Sequence[np.ndarray], shape: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) around the union of ``masks`` plus ``margin`` pixels, clipped."""
    union = np.zeros(shape, bool)
    for m in masks:
        if m is not None and m.shape == shape:
            union |= m.astype(bool)
    if not union.any():
        return 0, shape[0] - 1, 0, shape[1] - 1
    rows, cols = np.nonzero(union)
    return (
        max(int(rows.min()) - margin, 0),
        min(int(rows.max()) + margin, shape[0] - 1),
        max(int(cols.min()) - margin, 0),
        min(int(cols.max()) + margin, shape[1] - 1),
    )


def _sagittal_background(ax, views: VertebraViews, extent: tuple[float, float, float, float]) -> bool:
    """Draw the CT slice in a bone window; return True when one was drawn."""
    ct = views.sagittal_ct
    if ct is None or np.asarray(ct).shape != np.asarray(views.sagittal_original).shape:
        ax.set_facecolor("#f4f4f4")
        return False
    ax.imshow(
        np.asarray(ct, float),
        cmap="gray",
        vmin=CT_WINDOW_HU[0],
        vmax=CT_WINDOW_HU[1],
        extent=extent,
        origin="upper",
        interpolation="bilinear",
    )
    return True


def _draw_points_and_heights(ax, v: VertebraResult, y_of) -> bool:
    """Genant markers with short labels and the three height lines; True if any were drawn."""
    pts = v.views.sagittal_points if v.views is not None else {}
    drawn = False
    for region, sup, inf in HEIGHT_PAIRS:
        if sup in pts and inf in pts:
            (s0, u0), (s1, u1) = pts[sup], pts[inf]
            ax.plot([u0, u1], [y_of(s0), y_of(s1)], color=COLOUR_POINTS, lw=1.6, zorder=4)
            h = finite(get_path(v.heights_mm, "original", region))
            if h is not None:
                ax.annotate(
                    f"{h:.1f} mm",
                    xy=((u0 + u1) / 2, (y_of(s0) + y_of(s1)) / 2),
                    xytext=(3, 0),
                    textcoords="offset points",
                    fontsize=7.5,
                    color="#222222",
                    va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
                    zorder=6,
                )
    for name in GENANT_POINTS:
        if name not in pts:
            continue
        s, u = pts[name]
        ax.plot(u, y_of(s), "o", ms=5.5, mfc=COLOUR_POINTS, mec="white", mew=1.0, zorder=5)
        below = name.endswith("inferior")
        ax.annotate(
            POINT_ABBREV.get(name, name),
            xy=(u, y_of(s)),
            xytext=(0, -9 if below else 9),
            textcoords="offset points",
            ha="center",
            va="center",
            fontsize=7,
            fontweight="bold",
            color=COLOUR_POINTS,
            bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.75),
            zorder=6,
        )
        drawn = True
    return drawn


def _sagittal_legend(ax, has_points: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=COLOUR_ORIGINAL, alpha=0.45, edgecolor=COLOUR_ORIGINAL, label="original body"),
        Line2D([], [], color=COLOUR_HEALTHY, lw=2.0, label="pseudo-healthy"),
    ]
    if has_points:
        handles.append(
            Line2D([], [], color=COLOUR_POINTS, lw=1.6, marker="o", mfc=COLOUR_POINTS, mec="white", ms=5.5,
                   label="Genant points / heights")
        )
    ax.legend(handles=handles, loc="lower left", fontsize=7.5, framealpha=0.85, bbox_to_anchor=(0.0, 1.0),
              ncol=len(handles), borderaxespad=0.3, handlelength=1.6, columnspacing=1.0)


def sagittal_figure(v: VertebraResult) -> bytes:
    """Mid-sagittal view: CT, original body (filled), pseudo-healthy outline, Genant points."""
    views = v.views
    orig = np.asarray(views.sagittal_original, bool)
    healthy = np.asarray(views.sagittal_healthy, bool)
    n_rows, n_cols = orig.shape

    def y_of(s: Any) -> Any:  # cranial up: mm above the lowest row
        return (n_rows - 1) - np.asarray(s, float)

    extent = (-0.5, n_cols - 0.5, -0.5, n_rows - 0.5)

    fig = new_figure((5.6, 6.0))
    ax = fig.add_subplot()
    _actual_body(ax, views, orig, extent)
    if orig.any():
        ax.contour(np.arange(n_cols), y_of(np.arange(n_rows)), orig.astype(float), levels=[0.5],
                   colors=[COLOUR_ORIGINAL], linewidths=0.9, zorder=3)
    if healthy.shape == orig.shape and healthy.any():
        ax.contour(np.arange(n_cols), y_of(np.arange(n_rows)), healthy.astype(float), levels=[0.5],
                   colors=[COLOUR_HEALTHY], linewidths=2.0, zorder=3)
    has_points = _draw_points_and_heights(ax, v, y_of)

    r0, r1, c0, c1 = _mask_bbox([orig, healthy], orig.shape, margin=12)
    ax.set_xlim(c0 - 0.5, c1 + 0.5)
    ax.set_ylim(y_of(r1) - 0.5, y_of(r0) + 0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("anterior ← → posterior (mm)", fontsize=9)
    ax.set_ylabel("cranial ↑ (mm along the spine)", fontsize=9)
    ax.tick_params(labelsize=8)
    _sagittal_legend(ax, has_points)
    ax.set_title(f"{_title_line(v)}\n{_rhlv_line(v)}", fontsize=10, pad=24)
    return png_bytes(fig)


def _actual_body(ax: Any, views: Any, orig: np.ndarray, extent: tuple[float, ...]) -> None:
    """The sagittal CT (when there is one) with the actual body filled over it."""
    from matplotlib.colors import ListedColormap

    has_ct = _sagittal_background(ax, views, extent)
    ax.imshow(np.ma.masked_where(~orig, orig.astype(float)), cmap=ListedColormap([COLOUR_ORIGINAL]),
              alpha=0.35 if has_ct else 0.45, extent=extent, origin="upper", interpolation="nearest", zorder=2)


def counterfactual_figure(v: VertebraResult) -> bytes:
    """Mid-sagittal outlines of the vertebra as it would look at grade 0-3 over the actual body."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    views = v.views
    orig = np.asarray(views.sagittal_original, bool)
    n_rows, n_cols = orig.shape
    extent = (-0.5, n_cols - 0.5, -0.5, n_rows - 0.5)
    fig = new_figure((6.0, 7.0))
    ax = fig.add_subplot()
    _actual_body(ax, views, orig, extent)
    colours = colormaps["plasma"](np.linspace(0.0, 0.8, 4))
    series = (v.counterfactuals or {}).get("grades", {})
    handles = [Patch(color=COLOUR_ORIGINAL, alpha=0.45, label="actual body")]
    y = (n_rows - 1) - np.arange(n_rows)
    for g, mask in sorted(views.sagittal_counterfactuals.items()):
        if mask.shape != orig.shape or not mask.any():
            continue
        ax.contour(np.arange(n_cols), y, mask.astype(float), levels=[0.5], colors=[colours[g]], linewidths=1.6, zorder=3)
        loss = get_path(series.get(str(g)), "loss")
        label = f"grade {g}" + (f" ({fmt_pct(loss, 0)} loss)" if loss else " (pseudo-healthy)")
        handles.append(Line2D([], [], color=colours[g], lw=1.6, label=label))
    r0, r1, c0, c1 = _mask_bbox([orig, *views.sagittal_counterfactuals.values()], orig.shape, margin=10)
    ax.set_xlim(c0 - 0.5, c1 + 0.5)
    ax.set_ylim((n_rows - 1) - r1 - 0.5, (n_rows - 1) - r0 + 0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("anterior ← → posterior (mm)", fontsize=9)
    ax.set_ylabel("cranial ↑ (mm along the spine)", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.legend(handles=handles, loc="outside lower center", fontsize=7.5, framealpha=0.85, ncol=3)
    kind = (v.counterfactuals or {}).get("kind", "")
    ax.set_title(f"{_title_line(v)}\ncounterfactual grades 0-3 ({kind}, simulated)", fontsize=10)
    return png_bytes(fig)


def _footprint_front_row(loss: np.ndarray) -> int | None:
    rows = np.nonzero(np.isfinite(loss).any(axis=1))[0]
    return int(rows[0]) if rows.size else None


def axial_loss_figure(v: VertebraResult) -> bytes:
    """Axial height-loss map in percent, radiological convention (patient right on image left)."""
    import matplotlib

    loss = np.asarray(v.views.loss_map, float) * 100.0
    finite = np.isfinite(loss)
    vmax = max(40.0, float(np.nanmax(loss)) if finite.any() else 0.0)
    cmap = matplotlib.colormaps["inferno_r"].with_extremes(bad=(0, 0, 0, 0))
    n_rows, n_cols = loss.shape

    fig = new_figure((5.6, 5.0))
    ax = fig.add_subplot()
    ax.set_facecolor("#f4f4f4")
    im = ax.imshow(np.ma.masked_invalid(loss), cmap=cmap, vmin=0.0, vmax=vmax, origin="upper",
                   extent=(-0.5, n_cols - 0.5, n_rows - 0.5, -0.5), interpolation="nearest")
    if finite.any():
        ax.contour(np.arange(n_cols), np.arange(n_rows), finite.astype(float), levels=[0.5],
                   colors=["#555555"], linewidths=0.8)
    _axial_third_lines(ax, v.views, loss, n_cols)
    below_zero = bool(finite.any() and np.nanmin(loss) < 0.0)
    cbar = fig.colorbar(im, ax=ax, shrink=0.85, extend="min" if below_zero else "neither")
    cbar.set_label("height loss (%)", fontsize=9)
    cbar.ax.tick_params(labelsize=8)
    for thr, _ in GENANT_THRESHOLDS_PCT:
        if thr <= vmax:
            cbar.ax.axhline(thr, color="white", lw=1.0, ls="--")
    ax.set_aspect("equal")
    ax.set_xlabel("R  ← patient right · patient left →  L   (mm)", fontsize=9)
    ax.set_ylabel("anterior ↑ · posterior ↓ (mm)", fontsize=9)
    ax.tick_params(labelsize=8)
    _orientation_letters(ax)
    ax.set_title(f"Height loss map (axial), {v.level}\n{_rhlv_line(v)}", fontsize=10)
    return png_bytes(fig)


def _axial_third_lines(ax, views: VertebraViews, loss: np.ndarray, n_cols: int) -> None:
    """Dashed lines at the anterior|middle and middle|posterior boundaries (from the front row)."""
    front = _footprint_front_row(loss)
    bounds = [finite(b) for b in (views.third_bounds_mm or ())]
    if front is None:
        return
    for b, name in zip(bounds, ("anterior | middle", "middle | posterior")):
        if b is None:
            continue
        ax.axhline(front + b, color="#1a1a1a", lw=0.9, ls=(0, (4, 3)), alpha=0.8)
        ax.text(n_cols - 1.0, front + b - 0.4, name, fontsize=7, ha="right", va="bottom", color="#222222",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))


def _orientation_letters(ax) -> None:
    style = dict(transform=ax.transAxes, fontsize=11, fontweight="bold", color="#222222", ha="center",
                 va="center", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="#bbbbbb", alpha=0.85))
    ax.text(0.03, 0.5, "R", **style)
    ax.text(0.97, 0.5, "L", **style)
    ax.text(0.5, 0.97, "A", **style)
    ax.text(0.5, 0.03, "P", **style)


def ap_profile_figure(v: VertebraResult) -> bytes:
    """Loss (%) against the distance from the anterior edge, thirds shaded, Genant thresholds."""
    views = v.views
    x = np.asarray(views.ap_positions_mm, float).ravel()
    y = np.asarray(views.ap_profile, float).ravel() * 100.0
    n = min(x.size, y.size)
    x, y = x[:n], y[:n]
    fig = new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    x_lo, x_hi = (float(np.nanmin(x)), float(np.nanmax(x))) if np.isfinite(x).any() else (0.0, 1.0)
    _shade_thirds(ax, views.third_bounds_mm, x_lo, x_hi)
    for thr, name in GENANT_THRESHOLDS_PCT:
        ax.axhline(thr, color="#7a7a7a", lw=1.0, ls="--", zorder=1)
        ax.text(x_hi, thr, f" {thr:.0f} % ({name})", fontsize=7.5, color="#555555", va="center", ha="left",
                clip_on=False)
    ax.axhline(0.0, color="#999999", lw=0.8, zorder=1)
    ax.plot(x, y, color="#b2182b", lw=2.0, zorder=3, label="height loss")
    y_fin = y[np.isfinite(y)]
    y_max = max(45.0, float(y_fin.max()) + 5.0) if y_fin.size else 45.0
    y_min = min(0.0, float(y_fin.min()) - 5.0) if y_fin.size else 0.0
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_min, y_max)
    ax.set_xlabel("distance from the anterior edge (mm)   anterior → posterior", fontsize=9)
    ax.set_ylabel("height loss (%)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#e0e0e0", lw=0.6, zorder=0)
    ax.set_title(f"Antero-posterior height-loss profile, {v.level}\n{_rhlv_line(v)}", fontsize=10)
    return png_bytes(fig)


def _shade_thirds(ax, bounds: Sequence[float] | None, x_lo: float, x_hi: float) -> None:
    b = [finite(t) for t in (bounds or ())]
    if len(b) != 2 or None in b:
        return
    edges = [x_lo, b[0], b[1], x_hi]
    for (name, colour), a, c in zip(REGION_SHADES.items(), edges[:-1], edges[1:]):
        ax.axvspan(a, c, color=colour, zorder=0, lw=0)
        ax.text((a + c) / 2, 0.97, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=8, color="#444444")
    for t in b:
        ax.axvline(t, color="#bdbdbd", lw=0.8, zorder=0)


FIGURE_MAKERS = {
    "sagittal": sagittal_figure,
    "axial_loss": axial_loss_figure,
    "ap_profile": ap_profile_figure,
}


FIGURES_DIR = "figures"
# every name render_figures writes into FIGURES_DIR: <stem>_<kind>.png, the stem from _safe_stem
FIGURE_NAME = re.compile(
    r"[A-Za-z0-9_-]+_(?:%s)\.png" % "|".join(re.escape(k) for k in (*FIGURE_KINDS, COUNTERFACTUAL_FIGURE))
)


def is_figure_name(name: str) -> bool:
    """True for a file name (inside ``figures/``) that :func:`render_figures` writes."""
    return FIGURE_NAME.fullmatch(name) is not None


def _safe_stem(level: str, used: set[str], label: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(level)).strip("_") or f"label{label}"
    if stem in used:
        stem = f"{stem}_{label}"
    used.add(stem)
    return stem


def render_figures(result: CaseResult, out_dir: str | Path) -> dict[int, dict[str, Path]]:
    """Write the three PNGs of every vertebra with views; index in ``result.vertebrae`` -> kind -> path.

    Drawing dominates the run time, so with several figures and cores they are drawn in forked
    worker processes (Linux); elsewhere, in a daemonic process or after ``draw_figures_serially``
    (``app.batch`` workers), one by one.
    """
    fig_dir = Path(out_dir) / FIGURES_DIR
    used: set[str] = set()
    out: dict[int, dict[str, Path]] = {}
    jobs: list[tuple[Path, str, VertebraResult]] = []
    for i, v in enumerate(result.vertebrae):
        if v.views is None:
            continue
        stem = _safe_stem(v.level, used, v.label)
        kinds = list(FIGURE_MAKERS) + ([COUNTERFACTUAL_FIGURE] if v.views.sagittal_counterfactuals else [])
        out[i] = {kind: fig_dir / f"{stem}_{kind}.png" for kind in kinds}
        jobs += [(path, kind, v) for kind, path in out[i].items()]
    for path, png in zip((j[0] for j in jobs), draw_all([(kind, v) for _, kind, v in jobs])):
        write_bytes_atomic(path, png)
    return out


def draw_figure(job: tuple[str, VertebraResult]) -> bytes:
    kind, v = job
    return counterfactual_figure(v) if kind == COUNTERFACTUAL_FIGURE else FIGURE_MAKERS[kind](v)


def draw_figures_serially() -> None:
    """Draw figures in this process only (for processes that are themselves one of several workers)."""
    global _PARALLEL_FIGURES
    _PARALLEL_FIGURES = False


_PARALLEL_FIGURES = True


def draw_all(jobs: list[tuple[str, VertebraResult]]) -> Iterable[bytes]:
    """PNG bytes of every (kind, vertebra), in order."""
    import multiprocessing
    import os

    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, len(jobs) // 3)
    if (workers < 2 or not _PARALLEL_FIGURES or "fork" not in multiprocessing.get_all_start_methods()
            or multiprocessing.current_process().daemon):
        return [draw_figure(job) for job in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=exit_with_parent) as pool:
        return list(pool.map(draw_figure, jobs))
