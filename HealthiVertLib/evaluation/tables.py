"""The benchmark report: ``benchmarks/accuracy.md``, its raw JSON and its figures.

:func:`write_report` writes the Markdown report (setup, protocol, one section per dataset, the
breakdown by subject, kind and loss, the default grader, the machine), the raw items and
estimates as JSON (:func:`read_raw_json` reads them back) and the figures, all atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import HealthiVertError
from ..measure.heights import THIRDS
from ..io.files import write_bytes_atomic, write_text_atomic
from .records import BenchResult, Estimate, Item, MEMORY_RUNS, PHANTOM_LEVELS, PHANTOM_LOSS_RANGE, PHANTOM_RANGE, Truth
from .scoring import features, mean_finite, metrics_for, rhlv_error_pp


# ------------------------------------------------------------------------------------ outputs

DATASET_TITLES = {
    "real": "Simulated fractures of real healthy vertebrae (leave-one-subject-out)",
    "phantom": "Phantom spines (test half of the cases)",
}


def machine_line() -> str:
    """CPU model, cores used, OS and library versions, for the report header."""
    import scipy
    import SimpleITK
    import sklearn

    from .. import __version__

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {cores} cores usable, {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, SimpleITK "
            f"{SimpleITK.Version.VersionString()}, scikit-learn {sklearn.__version__}, healthivert {__version__}")


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _dataset_section(result: BenchResult, dataset: str) -> str:
    ms = result.metrics[dataset]
    n_items = next(iter(ms.values()))["n"]
    idx = [i for i, it in enumerate(result.items) if it.dataset == dataset and (dataset == "real" or it.role == "test")]
    grades = np.bincount([result.items[i].truth.grade for i in idx], minlength=4)
    parts = [f"## {DATASET_TITLES[dataset]}",
             f"{n_items} vertebrae; true grades 0/1/2/3 = {'/'.join(str(int(g)) for g in grades)}. "
             "Errors and grades over the vertebrae each estimator graded (its coverage).",
             "### Heights and height loss"]
    rows = []
    for name, m in ms.items():
        h = m["height_error_pct"] or {}
        r = m["rhlv_error_pp"]
        rows.append([f"`{name}`", f"{100 * m['coverage']:.0f} %"]
                    + [_f(h.get(k)) for k in (*THIRDS, "overall")]
                    + [_f(r[k]) for k in (*THIRDS, "max")]
                    + [_f(m["auc_rhlv"], 3), _f(m["auc_abnormality"], 3)])
    parts.append(_table(["estimator", "coverage", "height err A %", "M %", "P %", "overall %",
                         "RHLV err A pp", "M pp", "P pp", "max-third pp", "AUC RHLV", "AUC abnormality"], rows))
    parts.append("### Grades")
    rows = []
    for name, m in ms.items():
        row = [f"`{name}`"]
        for key in ("grade_svm", "grade_rule"):
            g = m[key]
            row += ([_f(g["macro_precision"], 3), _f(g["macro_recall"], 3), _f(g["macro_f1"], 3),
                     _f(g["quadratic_weighted_kappa"], 3)] if g else ["n/a"] * 4)
        t, p = m["seconds_per_vertebra"], m["peak_mib_per_vertebra"]
        row += [_f(t["median"] if t else None, 2), _f(p, 0)]
        rows.append(row)
    parts.append(_table(["estimator", "SVM precision", "SVM recall", "SVM macro-F1", "SVM QWK",
                         "rule precision", "rule recall", "rule macro-F1", "rule QWK", "s / vertebra",
                         "peak MiB / vertebra"], rows))
    parts.append("Confusion matrices of the SVM grades (rows true grade 0-3, columns predicted 0-3):")
    rows = []
    for name, m in ms.items():
        g = m["grade_svm"]
        if g:
            rows.append([f"`{name}`"] + [" ".join(f"{v:>3d}" for v in row) for row in g["confusion_matrix"]])
    if rows:
        parts.append(_table(["estimator", "true 0", "true 1", "true 2", "true 3"], rows))
    if dataset == "real":
        parts.append(_by_subject(result))
    parts.append(_breakdown(result, dataset))
    return "\n\n".join(parts)


def _by_subject(result: BenchResult) -> str:
    """The main metrics of every estimator on each real subject separately."""
    rows = []
    for subject in dict.fromkeys(it.subject for it in result.items if it.dataset == "real"):
        idx = [i for i, it in enumerate(result.items) if it.subject == subject]
        items = [result.items[i] for i in idx]
        for name, est in result.estimates.items():
            m = metrics_for(items, [est[i] for i in idx])
            h = (m["height_error_pct"] or {}).get("overall")
            rule, svm = m["grade_rule"], m["grade_svm"]
            rows.append([subject, f"`{name}`", f"{100 * m['coverage']:.0f} %", _f(h), _f(m["rhlv_error_pp"]["max"]),
                         _f(rule["macro_f1"], 3) if rule else "n/a", _f(svm["macro_f1"], 3) if svm else "n/a",
                         _f(m["auc_rhlv"], 3)])
    return ("Per real subject (the SVM of a subject is the one fitted without it):\n\n"
            + _table(["subject", "estimator", "coverage", "height err overall %", "RHLV err max-third pp",
                      "rule macro-F1", "SVM macro-F1", "AUC RHLV"], rows))


def _breakdown(result: BenchResult, dataset: str) -> str:
    """Largest-third RHLV error and coverage of every estimator by subject (real) and by kind."""
    idx = [i for i, it in enumerate(result.items) if it.dataset == dataset and (dataset == "real" or it.role == "test")]
    by_source: dict[str, list[int]] = {}
    by_kind: dict[str, list[int]] = {}
    for i in idx:
        it = result.items[i]
        if dataset == "real":
            by_source.setdefault(f"{it.subject} {it.level}", []).append(i)
        by_kind.setdefault(f"kind: {it.kind}", []).append(i)
    groups = {**by_source, **by_kind}
    names = list(result.estimates)
    rows = []
    for key, members in groups.items():
        row = [key, str(len(members))]
        for name in names:
            pairs = [(result.items[i], result.estimates[name][i]) for i in members]
            ok = [(it, e) for it, e in pairs if features(e) is not None]
            err = mean_finite(rhlv_error_pp(e.rhlv, it.truth.rhlv)["max"] for it, e in ok)
            row.append(f"{_f(err)} ({len(ok)}/{len(pairs)})")
        rows.append(row)
    return ("Largest-third RHLV error in percentage points (graded / vertebrae) by "
            + ("source vertebra and " if dataset == "real" else "") + "fracture kind:\n\n"
            + _table(["group", "n", *[f"`{n}`" for n in names]], rows))


def markdown(result: BenchResult, command: str, seconds: float, figures: dict[str, str]) -> str:
    """The accuracy report (``benchmarks/accuracy.md``)."""
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    setup = result.setup
    subjects = "; ".join(f"{s['subject']} ({', '.join(s['levels']) or 'none'}): {s['note']}"
                         for s in setup["real_subjects"])
    parts = [
        "# Accuracy benchmark: pseudo-healthy engines and reference-free baselines",
        f"Measured {date} by `{command}` in {seconds / 60:.1f} min. Machine: {machine_line()}.",
        "**Simulated ground truth; research use only, not for diagnosis.** Every fracture here is made by "
        "`HealthiVertLib/truth/simulate.py` from a healthy vertebra, whose exact pre-fracture heights are known. "
        "The numbers say how well each estimator recovers a known simulated fracture, not clinical accuracy.",
        "## Protocol",
        f"- Real set: each healthy source vertebra unfractured (grade 0) and compressed as "
        f"{', '.join(setup['kinds'])} with loss {', '.join(f'{x:g}' for x in setup['losses'])} (the simulator's "
        "RHLV of the affected region: anterior third for wedge, middle third for biconcave, all columns for "
        f"crush; the true grade is Genant's rule on the true RHLV). Sources: {subjects}.",
        f"- Phantoms: {setup['n_phantoms']} procedural spines {PHANTOM_RANGE} (`HealthiVertLib/truth/phantom.py`; "
        "spacing 1-2 mm, orientation, obliquity, curvature, bone density and body sizes (3 % sd) drawn per case), "
        f"two fractures each at least two levels apart (levels in {', '.join(PHANTOM_LEVELS)}, kind and loss "
        f"{PHANTOM_LOSS_RANGE[0]:g}-{PHANTOM_LOSS_RANGE[1]:g} drawn with a fixed seed), the other whole vertebrae "
        "as grade-0 examples; first half of the cases for training, second half tested.",
        "- Estimators: every engine of `engines.ENGINES` that starts here, through `pipeline.grade_case` "
        "(one target vertebra per call), and the baselines of `HealthiVertLib/evaluation/baselines.py` (`minmax`: 1 - "
        "height of each third / tallest third of the same vertebra; `neighbours`: 1 - height of each third / "
        "mean of the same third of the nearest usable neighbours). Baselines have no pseudo-healthy shape: "
        "no height error, no abnormality score.",
        "- Grades: *rule* = Genant thresholds (20/25/40 %) on the largest estimated third (nothing fitted); "
        "*SVM* = linear SVM on the estimator's own RHLV thirds and their maximum, C in "
        f"{{{', '.join(f'{c:g}' for c in setup['c_grid'])}}} by grouped CV, fitted only on other subjects "
        "(leave-one-real-subject-out with the phantom training half added; phantom test cases with all real "
        "subjects and the phantom training half).",
        "- Height error: |predicted pseudo-healthy - true pre-fracture| / true, mean per third (%). RHLV "
        "error: |estimated - true| in percentage points, per third and for the largest third (the one that "
        "grades). AUC: fracture (true grade >= 1) vs normal, scored by the largest-third RHLV and by the "
        "abnormality score (0-100, `heights.abnormality_score`). Coverage: share of vertebrae graded "
        "(others: no usable neighbour or cut by the field of view). Time: wall time of one call (curve, "
        "bodies, prediction, measurement) per vertebra, median. Memory: tracemalloc peak of "
        f"{MEMORY_RUNS} untimed runs per estimator and dataset, median.",
    ]
    parts += [_dataset_section(result, d) for d in ("real", "phantom") if d in result.metrics]
    parts.append(_default_grader_section())
    if figures:
        parts.append("## Figures\n\n" + "\n".join(f"![{k}]({v})" for k, v in figures.items()))
    if result.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in result.notes))
    return "\n\n".join(parts) + "\n"


def _default_grader_section() -> str:
    """What the bundled grader was fitted on and its cross-validated numbers (from its JSON)."""
    from ..measure.graders import load_default_grader

    grader = load_default_grader()
    t = grader.training
    cv = t.get("cv", {})
    data = t.get("data", {})
    kind = f"C = {grader.C:g}" if hasattr(grader, "C") else f"thresholds {getattr(grader, 'thresholds', '')}"
    lines = ["## Default grader",
             f"`HealthiVertLib/data/grader_default.json`: {data.get('description', 'see its model card')}; "
             f"features {', '.join(grader.features)}; {kind}; reproduce with "
             f"`{t.get('command', 'scripts/fit_default_grader.py')}`."]
    if cv:
        lines.append(f"Cross-validated by subject ({cv.get('scheme')}): macro-F1 {_f(cv.get('macro_f1'), 3)}, "
                     f"quadratic-weighted kappa {_f(cv.get('quadratic_weighted_kappa'), 3)}, accuracy "
                     f"{_f(cv.get('accuracy'), 3)} on {t.get('n_samples')} vertebrae. The `context` rows above "
                     "(SVM columns) are the same protocol evaluated on held-out subjects; details in "
                     "`HealthiVertLib/data/grader_default.md`.")
    return "\n\n".join(lines)


def _figures(result: BenchResult, out_dir: Path, stem: str) -> dict[str, str]:
    """Scatter plots (estimated vs true largest-third loss) and SVM confusion matrices, as PNG."""
    from ..outputs.figures import new_figure, png_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(result.estimates)
    written = {}
    for dataset in result.metrics:
        idx = [i for i, it in enumerate(result.items) if it.dataset == dataset
               and (dataset == "real" or it.role == "test")]
        fig = new_figure((3.2 * len(names), 3.4))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        colours = {"none": "#2e9d4a", "wedge": "#d62728", "biconcave": "#1f77b4", "crush": "#9467bd"}
        for ax, name in zip(axes, names):
            for kind, colour in colours.items():
                pts = [(max(result.items[i].truth.rhlv[t] for t in THIRDS),
                        max(result.estimates[name][i].rhlv[t] for t in THIRDS))
                       for i in idx if result.items[i].kind == kind and features(result.estimates[name][i]) is not None]
                if pts:
                    x, y = np.array(pts).T * 100
                    ax.scatter(x, y, s=12, c=colour, label=kind, alpha=0.8)
            ax.plot([-10, 80], [-10, 80], color="0.5", lw=0.8)
            for g in (20, 25, 40):
                ax.axhline(g, color="0.85", lw=0.6)
                ax.axvline(g, color="0.85", lw=0.6)
            ax.set(xlim=(-10, 75), ylim=(-10, 75), xlabel="true largest-third loss (%)", title=name)
        axes[0].set_ylabel("estimated (%)")
        axes[0].legend(fontsize=7, loc="upper left")
        path = out_dir / f"{stem}_{dataset}_scatter.png"
        write_bytes_atomic(path, png_bytes(fig))
        written[f"{dataset}: estimated vs true loss"] = path
        fig = new_figure((2.6 * len(names), 2.8))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names):
            g = result.metrics[dataset][name]["grade_svm"]
            cm = np.array(g["confusion_matrix"]) if g else np.zeros((4, 4), int)
            ax.imshow(cm, cmap="Blues")
            for (r, c), v in np.ndenumerate(cm):
                ax.text(c, r, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > cm.max() / 2 else "black")
            ax.set(xticks=range(4), yticks=range(4), xlabel="predicted grade", title=f"{name} (SVM)")
        axes[0].set_ylabel("true grade")
        path = out_dir / f"{stem}_{dataset}_confusion.png"
        write_bytes_atomic(path, png_bytes(fig))
        written[f"{dataset}: SVM confusion matrices"] = path
    return written


def raw_json(result: BenchResult) -> str:
    """Every item with its truth and every estimator's estimate, plus metrics and notes."""
    rows = []
    for i, it in enumerate(result.items):
        rows.append({**asdict(it), "estimates": {n: asdict(e[i]) for n, e in result.estimates.items()}})
    from ..io.jsonable import jsonable

    return json.dumps(jsonable({"setup": result.setup, "notes": result.notes, "metrics": result.metrics,
                                 "vertebrae": rows}), separators=(",", ":")) + "\n"


def read_raw_json(path: str | os.PathLike) -> BenchResult:
    """The items and estimates of a raw JSON written by :func:`raw_json` (metrics are recomputed)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        items, estimates = [], {}
        for row in data["vertebrae"]:
            t = row["truth"]
            items.append(Item(**{**{k: row[k] for k in Item.__dataclass_fields__ if k != "truth"},
                                 "truth": Truth(t["heights_mm"], t["rhlv"], t["grade"])}))
            for name, e in row["estimates"].items():
                e = {**e, "seconds": float("nan") if e.get("seconds") is None else e["seconds"]}
                estimates.setdefault(name, []).append(Estimate(**e))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HealthiVertError(f"{path} is not a raw benchmark JSON written by 'healthivert bench': {err}") from None
    return BenchResult(items, estimates, list(data.get("notes", [])), {}, dict(data.get("setup", {})))


def write_report(result: BenchResult, markdown_path: Path, command: str, seconds: float,
                 figures_dir: Path | None = None, json_path: Path | None = None) -> dict[str, Path]:
    """Write the markdown tables, the PNG figures and the raw JSON; return what was written."""
    markdown_path = Path(markdown_path)
    figures_dir = Path(figures_dir) if figures_dir else markdown_path.parent / "figures"
    stem = markdown_path.stem
    figs = _figures(result, figures_dir, stem)
    rel = {k: os.path.relpath(v, markdown_path.parent).replace(os.sep, "/") for k, v in figs.items()}
    write_text_atomic(markdown_path, markdown(result, command, seconds, rel))
    json_path = Path(json_path) if json_path else markdown_path.with_suffix(".json")
    write_text_atomic(json_path, raw_json(result))
    return {"markdown": markdown_path, "json": json_path, **{k: Path(v) for k, v in figs.items()}}
