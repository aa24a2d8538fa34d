"""Outputs of one graded case: report.json, report.csv, volumes, figures and index.html.

:func:`write_outputs` is the one entry point; it writes every file atomically
(``io.files.atomic_output``) and returns their paths. Research use only, not for diagnosis.
"""

from __future__ import annotations

from pathlib import Path


from ..io.files import write_text_atomic
from ..pipeline.records import CaseResult
from .figures import render_figures
from .html import index_html
from .tables import csv_text, json_text
from .volumes import write_volumes




# ----------------------------------------------------------------------------- public entry points


def write_outputs(result: CaseResult, out_dir: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write every output of ``result`` into ``out_dir``; return file name (relative path) -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    files["report.json"] = out_dir / "report.json"
    write_text_atomic(files["report.json"], json_text(result))
    files["report.csv"] = out_dir / "report.csv"
    write_text_atomic(files["report.csv"], csv_text(result))
    files.update(write_volumes(result, out_dir))

    figs = render_figures(result, out_dir) if figures else {}
    for paths in figs.values():
        for path in paths.values():
            files[path.relative_to(out_dir).as_posix()] = path

    files["index.html"] = out_dir / "index.html"
    write_text_atomic(files["index.html"], index_html(result, files, figs, out_dir))
    return files
