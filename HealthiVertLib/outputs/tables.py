"""The records of one graded case: ``report.json``, ``report.csv`` and the terminal summary.

Also the value formatting (finite numbers, percentages) that the figures and the HTML page share,
and the research-use notice. Research use only, not for diagnosis.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
from typing import Any

import numpy as np

from ..measure.heights import REGIONS
from ..pipeline.records import IMPLAUSIBLE_MASK, CaseResult, VertebraResult
from ..measure.points import POINTS


NOTICE = "Research use only — not for diagnosis."

CSV_COLUMNS: tuple[str, ...] = (
    "case",
    "level",
    "label",
    "verse_label",
    "status",
    "complete",
    "grade",
    "confidence",
    "grade_rule",
    "rhlv_anterior",
    "rhlv_middle",
    "rhlv_posterior",
    "rhlv_overall",
    "abnormality_score",
    "h_original_anterior_mm",
    "h_original_middle_mm",
    "h_original_posterior_mm",
    "h_original_overall_mm",
    "h_healthy_anterior_mm",
    "h_healthy_middle_mm",
    "h_healthy_posterior_mm",
    "h_healthy_overall_mm",
    "point_loss_anterior",
    "point_loss_middle",
    "point_loss_posterior",
    "h_point_original_anterior_mm",
    "h_point_original_middle_mm",
    "h_point_original_posterior_mm",
    "h_point_healthy_anterior_mm",
    "h_point_healthy_middle_mm",
    "h_point_healthy_posterior_mm",
    "ratio_min_max",
    "ratio_to_neighbours",
    "reason",
    "warnings",
)


# ----------------------------------------------------------------------------- formatting


def finite(x: Any) -> float | None:
    """``x`` as a finite float, or None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fmt_float(x: Any, digits: int = 4) -> str:
    f = finite(x)
    return "" if f is None else f"{f:.{digits}f}"


def fmt_pct(x: Any, digits: int = 1) -> str:
    """A fraction as percent text, ``—`` when missing."""
    f = finite(x)
    return "—" if f is None else f"{round(100.0 * f, digits) + 0.0:.{digits}f} %"  # + 0.0: never "-0.0 %"


def fmt_cell(x: Any) -> str:
    """One CSV cell: empty for None, 4 decimals for floats, true/false for booleans."""
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return fmt_float(x)
    return str(x)


def _grade_text(v: VertebraResult) -> str:
    return "—" if v.grade is None else str(int(v.grade))


def get_path(d: dict | None, *keys: str) -> Any:
    """Nested ``d[k1][k2]...`` or None."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# ----------------------------------------------------------------------------- JSON / CSV


def _vertebra_row(case: str, v: VertebraResult) -> dict[str, Any]:
    row: dict[str, Any] = {
        "case": case,
        "level": v.level,
        "label": v.label,
        "verse_label": v.verse_label,
        "status": v.status,
        "complete": v.complete,
        "grade": v.grade,
        "confidence": finite(v.confidence),
        "grade_rule": v.grade_rule,
        "abnormality_score": finite(v.abnormality_score),
        "ratio_min_max": finite(get_path(v.ratios, "min_max")),
        "ratio_to_neighbours": finite(get_path(v.ratios, "to_neighbours")),
        "reason": v.reason,
        "warnings": "; ".join(v.warnings) or None,
    }
    for r in REGIONS:
        row[f"rhlv_{r}"] = finite(get_path(v.rhlv, r))
        row[f"h_original_{r}_mm"] = finite(get_path(v.heights_mm, "original", r))
        row[f"h_healthy_{r}_mm"] = finite(get_path(v.heights_mm, "pseudo_healthy", r))
    for p in POINTS:
        row[f"point_loss_{p}"] = finite(get_path(v.point_loss, p))
        row[f"h_point_original_{p}_mm"] = finite(get_path(v.point_heights_mm, "original", p))
        row[f"h_point_healthy_{p}_mm"] = finite(get_path(v.point_heights_mm, "pseudo_healthy", p))
    return row


def csv_rows(result: CaseResult) -> list[dict[str, str]]:
    """The rows of ``report.csv`` as formatted strings keyed by ``CSV_COLUMNS``."""
    rows = []
    for v in result.vertebrae:
        raw = _vertebra_row(result.case, v)
        rows.append({c: fmt_cell(raw[c]) for c in CSV_COLUMNS})
    return rows


def csv_text(result: CaseResult) -> str:
    buf = _stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(result))
    return buf.getvalue()


def json_text(result: CaseResult) -> str:
    return json.dumps(result.to_dict(), indent=2) + "\n"


def summary_table(result: CaseResult) -> str:
    """Plain-text table: level, status, grade, confidence, loss at the anterior/middle/posterior points
    (what the grade reads), RHLV A/M/P/overall in %, abnormality 0-100."""
    header = ["Level", "Status", "Grade", "Conf.", "Loss A", "Loss M", "Loss P",
              "RHLV A", "RHLV M", "RHLV P", "RHLV all", "Abn."]
    rows = [header]
    for v in result.vertebrae:
        conf = finite(v.confidence)
        rows.append(
            [str(v.level), str(v.status), _grade_text(v), "—" if conf is None else f"{conf:.2f}"]
            + [fmt_pct(get_path(v.point_loss, p)) for p in POINTS]
            + [fmt_pct(get_path(v.rhlv, r)) for r in REGIONS]
            + [fmt_float(v.abnormality_score, 1) or "—"]
        )
    widths = [max(len(r[j]) for r in rows) for j in range(len(header))]

    def line(r: list[str]) -> str:
        left = [r[j].ljust(widths[j]) for j in range(2)]
        right = [r[j].rjust(widths[j]) for j in range(2, len(r))]
        return "  ".join(left + right).rstrip()

    sep = "  ".join("-" * w for w in widths)
    notes = [f"Warning: {w}" for w in result.warnings]
    notes += [f"{v.level}: {v.reason}" for v in result.vertebrae if v.status == IMPLAUSIBLE_MASK]
    notes += [f"Warning, {v.level}: {w}" for v in result.vertebrae for w in v.warnings]
    return "\n".join([line(rows[0]), sep, *(line(r) for r in rows[1:]), *(["", *notes] if notes else [])])
