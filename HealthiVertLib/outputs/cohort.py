"""Outputs of a cohort (``healthivert batch``): case table, per-vertebra and per-level tables, HTML page.

:func:`write_cohort` writes, into the batch's output folder, ``cases.csv`` (one row per case: name,
folder, status, graded vertebrae, seconds, error), ``summary.csv`` (the ``report.csv`` rows of every
finished case), ``summary_by_level.csv`` (per level: vertebrae per Genant grade and those not
graded), ``cohort_grades.png`` (that table as stacked bars) and ``index.html`` (the table and chart,
the cases that failed or were interrupted with their reasons, a link to each case's report). Every
file is written atomically. Research use only, not for diagnosis.
"""

from __future__ import annotations

import csv
import html
import io as _stdio
from collections.abc import Sequence
from pathlib import Path

from .. import NOTICE
from ..errors import HealthiVertError
from ..io.files import write_bytes_atomic, write_text_atomic
from ..io.labels import level_position
from .figures import GRADE_COLOURS, new_figure, png_bytes

CASE_COLUMNS = ("case", "folder", "status", "graded", "seconds", "error")
GRADES = (0, 1, 2, 3)
LEVEL_COLUMNS = ("level", "vertebrae", *(f"grade_{g}" for g in GRADES), "not_graded")
FINISHED = ("done", "skipped (done before)")  # statuses of a case whose folder holds a finished result
CHART = "cohort_grades.png"


def write_cohort(out_dir: str | Path, rows: Sequence[dict]) -> dict[str, Path]:
    """Write the cohort files for the per-case ``rows`` (keys ``CASE_COLUMNS``) into ``out_dir``;
    return file name -> path. ``summary.csv`` and the chart are written only when a case finished."""
    out_dir = Path(out_dir)
    files = {"cases.csv": out_dir / "cases.csv"}
    write_text_atomic(files["cases.csv"], case_table(rows))
    header, vertebrae = read_case_reports(out_dir, [r["folder"] for r in rows if r["status"] in FINISHED])
    if header:
        files["summary.csv"] = out_dir / "summary.csv"
        write_text_atomic(files["summary.csv"], _csv_text(header, vertebrae))
    by_level = level_counts(vertebrae)
    files["summary_by_level.csv"] = out_dir / "summary_by_level.csv"
    write_text_atomic(files["summary_by_level.csv"], _csv_text(list(LEVEL_COLUMNS), by_level))
    if by_level:
        files[CHART] = out_dir / CHART
        write_bytes_atomic(files[CHART], grade_chart(by_level))
    files["index.html"] = out_dir / "index.html"
    write_text_atomic(files["index.html"], cohort_html(rows, by_level, chart=CHART in files))
    return files


def case_table(rows: Sequence[dict]) -> str:
    """``cases.csv`` text: one row per case, seconds with two decimals."""
    shown = [{k: (f"{r[k]:.2f}" if k == "seconds" and isinstance(r[k], float) else r[k]) for k in CASE_COLUMNS}
             for r in rows]
    return _csv_text(list(CASE_COLUMNS), shown)


def read_case_reports(out_dir: Path, folders: Sequence[str]) -> tuple[list[str], list[dict]]:
    """The header and rows of ``report.csv`` in each case folder, in the order given (missing files skipped)."""
    header: list[str] = []
    rows: list[dict] = []
    for folder in folders:
        path = out_dir / folder / "report.csv"
        if not path.is_file():
            continue
        reader = csv.DictReader(_stdio.StringIO(path.read_text(encoding="utf-8")))
        if reader.fieldnames and not header:
            header = list(reader.fieldnames)
        rows.extend(reader)
    return header, rows


def level_counts(vertebrae: Sequence[dict]) -> list[dict]:
    """Per level, cranial to caudal: vertebrae, those graded 0-3 and those not graded (any other status)."""
    table: dict[str, dict] = {}
    for v in vertebrae:
        level = v.get("level") or "?"
        row = table.setdefault(level, {c: 0 for c in LEVEL_COLUMNS} | {"level": level})
        row["vertebrae"] += 1
        grade = v.get("grade") or ""
        if v.get("status") == "graded" and grade.isdigit() and int(grade) in GRADES:
            row[f"grade_{int(grade)}"] += 1
        else:
            row["not_graded"] += 1
    return sorted(table.values(), key=lambda r: (_rank(r["level"]), r["level"]))


def _rank(level: str) -> float:
    try:
        return level_position(level)
    except HealthiVertError:  # an unknown level sorts last
        return float("inf")


def grade_chart(by_level: Sequence[dict]) -> bytes:
    """PNG: vertebrae per level as bars stacked by Genant grade (not graded in grey)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure((max(5.6, 0.45 * len(by_level) + 2.0), 3.4))
    ax = fig.add_subplot()
    x = list(range(len(by_level)))
    bottom = [0] * len(by_level)
    for name, colour, label in [*((f"grade_{g}", GRADE_COLOURS[g], f"grade {g}") for g in GRADES),
                                ("not_graded", "#b0b0b0", "not graded")]:
        heights = [r[name] for r in by_level]
        ax.bar(x, heights, bottom=bottom, color=colour, label=label, width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(x, [r["level"] for r in by_level], rotation=90 if len(by_level) > 12 else 0)
    ax.set_ylabel("vertebrae")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Genant grade by level")
    ax.legend(fontsize=7, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return png_bytes(fig)


def cohort_html(rows: Sequence[dict], by_level: Sequence[dict], *, chart: bool) -> str:
    """``index.html`` of the batch folder: counts, grade by level, failed and interrupted cases, case links."""
    esc = html.escape
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    counts = ", ".join(f"{n} {esc(s)}" for s, n in statuses.items())
    level_rows = "".join("<tr>" + "".join(f"<td>{esc(str(r[c]))}</td>" for c in LEVEL_COLUMNS) + "</tr>\n"
                         for r in by_level)
    problems = [r for r in rows if r["status"] not in FINISHED]
    problem_rows = "".join(f"<tr><td>{esc(r['case'])}</td><td>{esc(r['status'])}</td><td>{esc(str(r['error']))}</td></tr>\n"
                           for r in problems)
    case_rows = "".join(
        f"<tr><td>{_case_link(r)}</td><td>{esc(r['status'])}</td><td>{esc(str(r['graded']))}</td></tr>\n" for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>HealthiVert cohort</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}} .notice{{color:#a00}}</style></head><body>
<h1>HealthiVert cohort</h1>
<p class="notice">{esc(NOTICE)}</p>
<p>{len(rows)} cases: {counts}. Tables: <a href="cases.csv">cases.csv</a>, <a href="summary.csv">summary.csv</a>
(one row per vertebra), <a href="summary_by_level.csv">summary_by_level.csv</a>.</p>
<h2>Genant grade by level</h2>
<table><tr>{"".join(f"<th>{c}</th>" for c in LEVEL_COLUMNS)}</tr>
{level_rows}</table>
{f'<img src="{CHART}" alt="vertebrae per level stacked by Genant grade">' if chart else "<p>No case finished.</p>"}
<h2>Failed or interrupted cases ({len(problems)})</h2>
{"<table><tr><th>case</th><th>status</th><th>reason</th></tr>" + problem_rows + "</table>" if problems else "<p>None.</p>"}
<h2>Cases</h2>
<table><tr><th>case</th><th>status</th><th>graded vertebrae</th></tr>
{case_rows}</table>
</body></html>
"""


def _case_link(row: dict) -> str:
    name = html.escape(row["case"])
    if row["status"] not in FINISHED:
        return name
    return f'<a href="{html.escape(row["folder"])}/index.html">{name}</a>'


def _csv_text(columns: list[str], rows: Sequence[dict]) -> str:
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
