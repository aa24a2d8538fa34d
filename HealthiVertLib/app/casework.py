"""One case of ``healthivert batch``, the same code path for the process pool and for dask workers.

:func:`process_case` grades one case into ``OUT/<folder>/`` and returns its small row for
``cases.csv``; it never raises for a failing case. A case is done only when its folder holds the
completion marker and the marker's provenance (sha256 of the seg, CT and subregion files, and the
options that change results: engine and weights, grader file, label numbering, levels, figures,
the mask quality check) equals this run's: then it is skipped. Anything else is graded again into a temporary sibling folder
``OUT/.partial-<folder>-*`` (marker written last) that is then renamed into place, the previous
folder moved aside first (``OUT/.old-<folder>-*``) and removed after. A process killed at any moment
leaves the previous finished case, or no folder claiming to be finished, plus temporary folders that
:func:`remove_leftovers` clears at the next start. :func:`prepare_worker` readies a worker process:
the engine is built once per process (``engine_for``), figures are drawn in the process itself, and
the worker exits when its parent dies.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path

from ..errors import HealthiVertError
from ..io.discover import CaseFiles
from ..io.files import check_inside, write_text_atomic
from ..processes import exit_with_parent, set_threads

PARTIAL_PREFIX = ".partial-"
OLD_PREFIX = ".old-"
_LEFTOVER = re.compile(r"\.(?:partial|old)-.+")
_ENGINES: dict[tuple, object] = {}  # per process: an engine is built (its weights loaded) once, not per case


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks; of a folder (a DICOM series), the sha256 of
    its files' relative paths and hashes in sorted order."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path).as_posix()}\0{file_sha256(item)}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def options_provenance(options: dict) -> dict:
    """The options of a batch that change its results, files by their content hash (computed once per batch)."""
    engine_options = options.get("engine_options") or {}
    weights = engine_options.get("weights")
    labels = options.get("labels")
    return {
        "engine": options["engine"],
        "weights_sha256": file_sha256(weights) if weights else None,
        "grader_sha256": file_sha256(options["grader"]) if options.get("grader") else None,
        "labels": {"dataset_json_sha256": file_sha256(labels)} if labels and Path(labels).is_file() else labels,
        "vertebrae": list(options["vertebrae"]) if options.get("vertebrae") else None,
        "figures": bool(options["figures"]),
        "qc": bool(options.get("qc", True)),
    }


def case_provenance(case: CaseFiles, options: dict) -> dict:
    """What a case's result is computed from: its input files' sha256 and the batch's ``options_provenance``."""
    return {
        "inputs": {kind: (file_sha256(path) if path is not None else None)
                   for kind, path in (("seg", case.seg), ("ct", case.ct), ("subregions", case.subregions))},
        "options": options["provenance"],
    }


def engine_for(options: dict):
    """The engine of ``options``, built once per process and reused for every case it grades."""
    from ..engines import get_engine

    engine_options = options.get("engine_options") or {}
    key = (options["engine"], tuple(sorted(engine_options.items())))
    if key not in _ENGINES:
        _ENGINES[key] = get_engine(options["engine"], **engine_options)
    return _ENGINES[key]


def row(case: CaseFiles, status: str, graded: int | str = "", seconds: float | str = "", error: str = "") -> dict:
    """A ``cases.csv`` row."""
    return {"case": case.name, "folder": case.folder, "status": status, "graded": graded, "seconds": seconds,
            "error": error}


def process_case(case: CaseFiles, out_dir: str, options: dict) -> dict:
    """Grade one case into ``out_dir/<case.folder>`` unless its finished result matches; return its row.

    Status ``done``, ``skipped (done before)`` or ``failed`` (with the error, also in the folder's
    ``error.txt``). Only ``KeyboardInterrupt`` and the like escape, after removing the temporary folder.
    """
    from ..outputs.report import is_complete

    t0 = time.perf_counter()
    out = Path(out_dir)
    target = check_inside(out, out / case.folder)
    try:
        provenance = case_provenance(case, options)
    except OSError:  # unreadable input: grading it below gives the one-line reason
        provenance = None
    if provenance is not None and is_complete(target, provenance):
        return row(case, "skipped (done before)")
    tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{case.folder}-", dir=out))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; outputs are meant to be shared
        try:
            graded = _grade_into(case, tmp, options, provenance)
            message = ""
        except HealthiVertError as err:
            message = str(err)
        except Exception as err:  # noqa: BLE001 - a batch must go on; the trace is kept for the user
            message = f"internal error: {err!r}"
            write_text_atomic(tmp / "error_trace.txt", traceback.format_exc())
        if message:
            write_text_atomic(tmp / "error.txt", message + "\n")
        replace_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    return row(case, "failed", 0, seconds, message) if message else row(case, "done", graded, seconds)


def _grade_into(case: CaseFiles, folder: Path, options: dict, provenance: dict | None) -> int:
    from ..io.case import load_case
    from ..measure.graders import load_grader
    from ..outputs.report import write_outputs
    from ..pipeline.case import grade_case, spine_case

    engine = engine_for(options)
    loaded = spine_case(load_case(case.seg, case.ct, case.subregions, labels=options["labels"], name=case.name), engine)
    grader = load_grader(options["grader"]) if options["grader"] else None
    result = grade_case(loaded, options["vertebrae"], engine=engine, grader=grader,
                        grader_name=f"SVM from {Path(options['grader']).name}" if grader else None,
                        qc=options.get("qc", True))
    write_outputs(result, folder, figures=options["figures"], provenance=provenance)
    return sum(v.status == "graded" for v in result.vertebrae)


def replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target`` (a sibling): an existing ``target`` is renamed aside first and
    removed after, so ``target`` is at every moment the old folder, absent, or the new one."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise HealthiVertError(f"'{target}' is not a case folder of HealthiVert (a file or link); move it away.")
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{OLD_PREFIX}{target.name}-", dir=target.parent))
        os.replace(target, old / target.name)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(out_dir: str | Path) -> list[Path]:
    """Remove the temporary case folders (``.partial-*``, ``.old-*``) a killed batch left in ``out_dir``."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [p for p in out.iterdir() if _LEFTOVER.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def prepare_worker(options: dict, *, own_signals: bool = True) -> None:
    """Ready this process to grade cases: figures drawn here (no process of its own), the engine built
    once, exit when the parent process dies, at most ``options["threads"]`` threads in SimpleITK, BLAS,
    OpenMP and PyTorch (``processes.set_threads``; when given: the machine's cores shared by its
    workers, not oversubscribed); with
    ``own_signals`` (a process-pool worker) Ctrl-C is left to the parent, which stops the workers, and
    SIGTERM ends the process."""
    from ..outputs.figures import draw_figures_serially

    if own_signals:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_with_parent(use_prctl=own_signals)
    draw_figures_serially()
    engine_for(options)
    if options.get("threads"):
        set_threads(options["threads"])
