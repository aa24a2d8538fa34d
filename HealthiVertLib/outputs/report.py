"""Outputs of one graded case: report.json, report.csv, volumes, figures and index.html.

:func:`write_outputs` is the one entry point; it writes every file atomically
(``io.files.atomic_output``) and returns their paths; with ``dicom=`` (the source CT series of a DICOM
input) also the DICOM SEG, SR and parametric map of ``outputs.dicom`` into ``dicom/``. The completion marker
(``COMPLETE_MARKER``) is written last: a folder without it is not a finished result (interrupted,
disk full). Before writing, the outputs of an earlier run in the same folder are removed
(:func:`remove_previous_outputs`), only files HealthiVert writes, never a file of the user.
:func:`export_dicom` adds the DICOM objects to a finished result folder afterwards (the Slicer
module's "Export to DICOM"). Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import HealthiVertError
from ..io.dicom import DicomSeries, read_dicom_ct
from ..io.files import write_text_atomic
from ..io.images import check_same_grid
from ..pipeline.records import CaseResult
from .dicom import DICOM_DIR, is_dicom_output_name, result_from_folder, write_dicom
from .figures import FIGURES_DIR, is_figure_name, render_figures
from .html import index_html
from .tables import csv_text, json_text
from .volumes import is_volume_name, write_volumes

COMPLETE_MARKER = "healthivert_complete.json"
MARKER_FORMAT = "healthivert-complete"
TABLE_FILES = ("report.json", "report.csv", "index.html")
# a temporary file of io.files.atomic_output (mkstemp: ".<stem>-" + 8 characters + suffix), left by a killed run
_TEMPORARY = re.compile(r"\.(?P<stem>[^.]+)-[a-z0-9_]{8}(?P<suffix>(?:\.[A-Za-z0-9]+)+)")


# ----------------------------------------------------------------------------- public entry points


def write_outputs(result: CaseResult, out_dir: str | Path, *, figures: bool = True,
                  provenance: dict | None = None, dicom: DicomSeries | None = None) -> dict[str, Path]:
    """Write every output of ``result`` into ``out_dir``; return file name (relative path) -> path.

    With ``dicom`` (the CT series the result was graded on, ``Case.dicom["ct"]``) the DICOM objects of
    ``outputs.dicom`` are written into ``out_dir/dicom/`` too, and listed in the marker.

    The outputs of an earlier run in ``out_dir`` are removed first (its marker before anything
    else), and ``COMPLETE_MARKER`` is written after every other file, with ``provenance`` (what the
    result was computed from: input hashes and options, JSON-able) when given.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_previous_outputs(out_dir)
    files: dict[str, Path] = {}

    files["report.json"] = out_dir / "report.json"
    write_text_atomic(files["report.json"], json_text(result))
    files["report.csv"] = out_dir / "report.csv"
    write_text_atomic(files["report.csv"], csv_text(result))
    files.update(write_volumes(result, out_dir))
    if dicom is not None:
        files.update(write_dicom(result, dicom, out_dir))

    figs = render_figures(result, out_dir) if figures else {}
    for paths in figs.values():
        for path in paths.values():
            files[path.relative_to(out_dir).as_posix()] = path

    files["index.html"] = out_dir / "index.html"
    write_text_atomic(files["index.html"], index_html(result, files, figs, out_dir))
    files[COMPLETE_MARKER] = write_complete_marker(out_dir, files, provenance=provenance)
    return files


def export_dicom(result_dir: str | Path, ct: str | Path, *, series: list[str] | None = None) -> dict[str, Path]:
    """Write the DICOM objects of a finished result folder into ``result_dir/dicom/`` and list them in its
    completion marker (provenance kept); return relative name -> path.

    ``ct`` is the folder of the DICOM CT series the case was graded on (``series``: its SeriesInstanceUID when
    the folder holds several, as Slicer's DICOM database folders can); the result's volumes must lie on its
    grid. This is the "Export to DICOM" of the Slicer module: after a run whose CT came from DICOM, pass the
    folder of the CT's files (``slicer.dicomDatabase.fileForInstance``) and import ``result_dir/dicom`` into
    the DICOM database. A folder without a completion marker is refused (not a finished result).
    """
    result_dir = Path(result_dir)
    marker = read_complete_marker(result_dir)
    if not marker:
        raise HealthiVertError(
            f"'{result_dir}' holds no finished HealthiVert result (no {COMPLETE_MARKER}); grade the case first."
        )
    result = result_from_folder(result_dir)
    image, source = read_dicom_ct(ct, series)
    for attribute in ("original_body_volume", "loss_volume"):
        volume = getattr(result, attribute)
        if volume is not None:
            check_same_grid(image, volume, (f"CT series '{ct}'", f"result volumes of '{result_dir}'"))
    files = {entry["file"]: result_dir / entry["file"] for entry in marker.get("files", [])
             if isinstance(entry, dict) and isinstance(entry.get("file"), str) and _inside(result_dir, entry["file"])}
    written = write_dicom(result, source, result_dir)
    files.update(written)
    write_complete_marker(result_dir, {n: p for n, p in files.items() if p.is_file()},
                          provenance=marker.get("provenance"))
    return written


def write_complete_marker(out_dir: Path, files: dict[str, Path], *, provenance: dict | None = None) -> Path:
    """Write ``COMPLETE_MARKER`` (version, UTC time, every file written with its size in bytes, and the
    ``provenance`` when given), atomically."""
    marker = {
        "format": MARKER_FORMAT,
        "healthivert_version": __version__,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": [{"file": name, "bytes": path.stat().st_size} for name, path in files.items()],
    }
    if provenance is not None:
        marker["provenance"] = provenance
    path = out_dir / COMPLETE_MARKER
    write_text_atomic(path, json.dumps(marker, indent=1) + "\n")
    return path


def is_complete(out_dir: str | Path, provenance: dict | None = None) -> bool:
    """True when ``out_dir`` holds the completion marker of a finished :func:`write_outputs`; with
    ``provenance``, only when the marker records that same provenance (inputs and options unchanged)."""
    marker = Path(out_dir) / COMPLETE_MARKER
    if provenance is None:
        return marker.is_file()
    return read_complete_marker(out_dir).get("provenance") == json.loads(json.dumps(provenance))


def read_complete_marker(out_dir: str | Path) -> dict:
    """The completion marker of ``out_dir`` as a dict; empty when it is missing, unreadable or not a marker."""
    try:
        data = json.loads((Path(out_dir) / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else {}


# ----------------------------------------------------------------------------- an earlier run's outputs


def is_output_name(name: str) -> bool:
    """True for a path relative to the output folder (``report.json``, ``figures/L1_sagittal.png``)
    that :func:`write_outputs` writes, or a temporary file of one left by a killed run."""
    parts = PurePosixPath(name).parts
    if len(parts) == 2 and parts[0] == FIGURES_DIR:
        return is_figure_name(parts[1]) or _is_temporary(parts[1], is_figure_name)
    if len(parts) == 2 and parts[0] == DICOM_DIR:
        return is_dicom_output_name(parts[1]) or _is_temporary(parts[1], is_dicom_output_name)
    if len(parts) != 1:
        return False
    return _is_top_level_output(name) or _is_temporary(name, _is_top_level_output)


def _is_top_level_output(name: str) -> bool:
    return name in TABLE_FILES or name == COMPLETE_MARKER or is_volume_name(name)


def _is_temporary(name: str, is_output) -> bool:
    """A temporary file of ``atomic_output`` for a name ``is_output`` recognises (``.report-ab12cd34.json``)."""
    match = _TEMPORARY.fullmatch(name)
    return match is not None and is_output(match["stem"] + match["suffix"])


def _marker_names(marker: Path) -> list[str]:
    """The file names listed in an earlier marker (empty when it is missing or unreadable)."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        names = [entry["file"] for entry in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [n for n in names if isinstance(n, str)]


def _inside(out_dir: Path, name: str) -> Path | None:
    """``out_dir / name`` when ``name`` is a plain relative path in the folder, ``figures/`` or ``dicom/``, else None."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or not rel.parts or any(p in ("", ".", "..") for p in rel.parts) or "\\" in name:
        return None
    if len(rel.parts) > 2 or (len(rel.parts) == 2 and rel.parts[0] not in (FIGURES_DIR, DICOM_DIR)):
        return None
    return out_dir.joinpath(*rel.parts)


def remove_previous_outputs(out_dir: str | Path) -> list[Path]:
    """Remove an earlier run's outputs from ``out_dir``: its marker first, then the files its marker
    lists and every file named as HealthiVert names its outputs (``is_output_name``). Any other
    file of the folder is kept; ``figures/`` and ``dicom/`` are removed only when this leaves them empty.
    Returns the paths removed."""
    out_dir = Path(out_dir)
    marker = out_dir / COMPLETE_MARKER
    listed = _marker_names(marker) if marker.is_file() else []
    removed: list[Path] = []
    if marker.is_file() or marker.is_symlink():
        marker.unlink()  # first: from now on the folder no longer claims to be finished
        removed.append(marker)
    candidates = [p for p in (_inside(out_dir, n) for n in listed) if p is not None]
    if out_dir.is_dir():
        candidates += [p for p in out_dir.iterdir() if is_output_name(p.name)]
    sub_dirs = [out_dir / FIGURES_DIR, out_dir / DICOM_DIR]
    for sub_dir in sub_dirs:
        if sub_dir.is_dir() and not sub_dir.is_symlink():
            candidates += [p for p in sub_dir.iterdir() if is_output_name(f"{sub_dir.name}/{p.name}")]
    for path in dict.fromkeys(candidates):
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    for sub_dir in sub_dirs:
        if removed and sub_dir.is_dir() and not sub_dir.is_symlink() and not any(sub_dir.iterdir()):
            sub_dir.rmdir()
    return removed
