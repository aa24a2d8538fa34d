"""The report page of one graded case: ``index.html`` with the summary, measurements and figures.

A single static page (inline CSS, no script) that links the case's figures, volumes and tables,
with the research-use notice. Research use only, not for diagnosis.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterable


from ..measure.heights import REGIONS
from ..pipeline.records import GRADED, CaseResult, VertebraResult
from .figures import COUNTERFACTUAL_FIGURE, FIGURE_KINDS, GRADE_COLOURS
from .tables import NOTICE, finite, fmt_float, fmt_pct, get_path
from .volumes import VOLUME_FILES
from ..measure.points import POINTS


GRADE_TEXT_COLOURS = {0: "#ffffff", 1: "#222222", 2: "#222222", 3: "#ffffff"}


# ----------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;margin-top:32px;border-bottom:1px solid #ddd}
.notice{background:#fff3cd;border:2px solid #d39e00;color:#6b4e00;padding:10px 14px;font-weight:bold;
font-size:1.1em;border-radius:4px;margin:12px 0}
.meta{color:#555;font-size:.95em}
table{border-collapse:collapse;margin:8px 0;font-size:.95em}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.chip{display:inline-block;min-width:1.6em;text-align:center;border-radius:10px;padding:1px 8px;
font-weight:bold}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.figs img{max-width:100%;border:1px solid #ddd}
.muted{color:#777}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _grade_chip(grade: int | None) -> str:
    if grade is None:
        return '<span class="chip" style="background:#ddd;color:#555">—</span>'
    g = int(grade)
    bg, fg = GRADE_COLOURS.get(g, "#999"), GRADE_TEXT_COLOURS.get(g, "#fff")
    return f'<span class="chip" style="background:{bg};color:{fg}">{_e(g)}</span>'


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def summary_html(result: CaseResult) -> str:
    header = ["Level", "Status", "Grade", "Confidence", "RHLV anterior", "RHLV middle", "RHLV posterior",
              "RHLV overall", "Abnormality (0-100)", "Reason"]
    rows = []
    for v in result.vertebrae:
        conf = finite(v.confidence)
        rows.append(
            [_e(v.level), _e(v.status), _grade_chip(v.grade), "—" if conf is None else _e(f"{conf:.2f}")]
            + [_e(fmt_pct(get_path(v.rhlv, r))) for r in REGIONS]
            + [_e(fmt_float(v.abnormality_score, 1) or "—"), _e("; ".join(filter(None, [v.reason, *v.warnings])))]
        )
    return _table(header, rows, numeric={3, 4, 5, 6, 7, 8})


def _measure_html(v: VertebraResult) -> str:
    rows = []
    for r in REGIONS:
        h_o, h_h = get_path(v.heights_mm, "original", r), get_path(v.heights_mm, "pseudo_healthy", r)
        rows.append([_e(r), _e(fmt_float(h_o, 1) or "—"), _e(fmt_float(h_h, 1) or "—"),
                     _e(fmt_pct(get_path(v.rhlv, r)))])
    for point, where in POINTS.items():
        h_o = get_path(v.point_heights_mm, "original", point)
        h_h = get_path(v.point_heights_mm, "pseudo_healthy", point)
        rows.append([_e(f"{point} point ({100 * where:.0f} % of depth)"), _e(fmt_float(h_o, 1) or "—"),
                     _e(fmt_float(h_h, 1) or "—"), _e(fmt_pct(get_path(v.point_loss, point)))])
    table = _table(["Region", "Original height (mm)", "Pseudo-healthy height (mm)", "Height loss"], rows, {1, 2, 3})
    extras = []
    if v.grade_rule is not None:
        extras.append(f"Genant threshold rule (20/25/40 % on the largest point loss): grade {_e(v.grade_rule)}")
    if finite(v.abnormality_score) is not None:
        extras.append(f"abnormality score: {_e(fmt_float(v.abnormality_score, 1))} / 100 "
                      "(surplus volume of the pseudo-healthy body, % of its volume)")
    for key, name in (("min_max", "ratio min/max height"), ("to_neighbours", "ratio to neighbours")):
        val = finite(get_path(v.ratios, key))
        if val is not None:
            extras.append(f"{_e(name)}: {_e(f'{val:.3f}')}")
    used = [c["level"] for c in v.context if isinstance(c, dict) and "weight" in c]
    rejected = [c["level"] for c in v.context if isinstance(c, dict) and "rejected" in c]
    if used:
        extras.append(f"predicted from: {_e(', '.join(used))}")
    if rejected:
        extras.append(f"not used: {_e(', '.join(rejected))}")
    if v.reason:
        extras.append(_e(v.reason))
    extra = f'<p class="meta">{" · ".join(extras)}</p>' if extras else ""
    return table + extra


def _vertebra_section(v: VertebraResult, figs: dict[str, Path] | None, out_dir: Path) -> str:
    conf = finite(v.confidence)
    conf_txt = "" if conf is None else f", confidence {conf:.2f}"
    head = f"<h2>{_e(v.level)} {_grade_chip(v.grade)} <span class=\"meta\">{_e(v.status)}{_e(conf_txt)}</span></h2>"
    parts = [head]
    if v.reason:
        parts.append(f'<p class="meta">{_e(v.reason)}</p>')
    parts.extend(f'<div class="notice">Warning: {_e(w)}</div>' for w in v.warnings)
    parts.append(_measure_html(v))
    if figs:
        imgs = []
        for kind in (*FIGURE_KINDS, COUNTERFACTUAL_FIGURE):
            if kind in figs:
                rel = figs[kind].relative_to(out_dir).as_posix()
                alt = f"{v.level} {kind.replace('_', ' ')}"
                imgs.append(f'<a href="{_e(rel)}"><img src="{_e(rel)}" alt="{_e(alt)}"></a>')
        parts.append(f'<div class="figs">{"".join(imgs)}</div>')
    return "<section>" + "".join(parts) + "</section>"


def _files_html(files: dict[str, Path], out_dir: Path) -> str:
    items = []
    for name in ("report.json", "report.csv", *VOLUME_FILES, *sorted(n for n in files if n.startswith("counterfactual_"))):
        if name in files:
            rel = files[name].relative_to(out_dir).as_posix()
            items.append(f'<li><a href="{_e(rel)}">{_e(name)}</a></li>')
    return f"<ul>{''.join(items)}</ul>"


def _timing_html(timing: dict[str, float]) -> str:
    if not timing:
        return '<p class="muted">no timing recorded</p>'
    rows = [[_e(k), _e(fmt_float(t, 2) or "—")] for k, t in timing.items()]
    return _table(["Step", "Time (s)"], rows, {1})


def index_html(result: CaseResult, files: dict[str, Path], figs: dict[int, dict[str, Path]], out_dir: Path) -> str:
    from .. import __version__

    sections = [
        _vertebra_section(v, figs.get(i), out_dir)
        for i, v in enumerate(result.vertebrae)
        if v.status == GRADED or i in figs
    ]
    inputs = "".join(f"<li>{_e(k)}: {_e(p) if p else '—'}</li>" for k, p in (result.inputs or {}).items())
    title = f"HealthiVert report — {result.case}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<div class="notice">{_e(NOTICE)}</div>
{"".join(f'<div class="notice">Warning: {_e(w)}</div>' for w in result.warnings)}
<p class="meta">Engine: <b>{_e(result.engine)}</b> · Grader: <b>{_e(result.grader)}</b> ·
Label scheme: {_e(result.label_scheme)} · HealthiVert {_e(__version__)}</p>
<p class="meta">RHLV = (H<sub>pseudo-healthy</sub> − H<sub>original</sub>) / H<sub>pseudo-healthy</sub>;
Genant thresholds 20 / 25 / 40 %. Orientation: axial maps in radiological convention (patient right on
the image left).</p>
<h2>Summary</h2>
{summary_html(result)}
{''.join(sections)}
<h2>Files</h2>
{_files_html(files, out_dir)}
<h2>Inputs</h2>
<ul>{inputs}</ul>
<h2>Timing</h2>
{_timing_html(result.timing_s)}
</body>
</html>
"""
