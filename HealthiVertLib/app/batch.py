"""``healthivert batch``: many cases, worker processes, resumable, one failure never stops the rest."""

from __future__ import annotations

import argparse
import csv
import io as _io
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..errors import HealthiVertError
from ..io.files import write_text_atomic
from ..outputs.figures import draw_figures_serially

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
LABEL_MARKERS = ("_seg", "_msk", "-seg", "_label", "_labels")
CT_MARKERS = ("_ct", "-ct", "_image", "_0000")
CASE_COLUMNS = ("case", "status", "graded", "seconds", "error")
_ENGINES: dict[tuple, object] = {}  # per process: an engine is built (its weights loaded) once, not per case


@dataclass(frozen=True)
class BatchCase:
    """One case of a batch: its name and input files."""

    name: str
    seg: Path
    ct: Path | None = None
    subregions: Path | None = None


def discover_cases(source: str | Path) -> list[BatchCase]:
    """Cases of a CSV manifest or a folder (see ``healthivert batch --help``)."""
    source = Path(source)
    if not source.exists():
        raise HealthiVertError(f"Batch input {source} does not exist.")
    cases = _from_manifest(source) if source.is_file() else _from_folder(source)
    if not cases:
        raise HealthiVertError(
            f"No case found in {source}: expected label maps named <case>_seg.nii.gz or <case>_msk.nii.gz "
            "(one per sub-folder or side by side), or a CSV manifest with columns case, seg[, ct][, subregions]."
        )
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise HealthiVertError(f"Several cases share the name(s) {', '.join(duplicates)}; rename them in the manifest.")
    return cases


def _from_manifest(path: Path) -> list[BatchCase]:
    try:
        rows = list(csv.DictReader(_io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HealthiVertError(f"Cannot read the manifest {path}: {err}") from None
    if not rows or "seg" not in rows[0]:
        raise HealthiVertError(f"The manifest {path} needs a header with at least the columns case and seg.")
    resolve = lambda value: (path.parent / value.strip()) if value and value.strip() else None  # noqa: E731
    cases = []
    for k, row in enumerate(rows, start=2):
        seg = resolve(row.get("seg"))
        if seg is None:
            raise HealthiVertError(f"{path}, line {k}: the seg column is empty.")
        name = (row.get("case") or "").strip() or _strip_image_suffix(seg.name)
        cases.append(BatchCase(name, seg, resolve(row.get("ct")), resolve(row.get("subregions"))))
    return cases


def _from_folder(folder: Path) -> list[BatchCase]:
    cases = []
    for seg in sorted(p for p in folder.rglob("*") if p.is_file() and _is_label_file(p.name)):
        stem = _strip_image_suffix(seg.name)
        prefix = next(stem[: stem.index(m)] for m in LABEL_MARKERS if m in stem)
        name = prefix or seg.parent.name
        cases.append(BatchCase(name, seg, _find_ct(seg.parent, prefix)))
    return cases


def _is_label_file(filename: str) -> bool:
    stem = _strip_image_suffix(filename)
    return stem != filename and any(m in stem for m in LABEL_MARKERS) and "subreg" not in stem


def _find_ct(folder: Path, prefix: str) -> Path | None:
    for marker in ("",) + CT_MARKERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{prefix}{marker}{suffix}"
            if prefix + marker and candidate.is_file():
                return candidate
    return None


def _strip_image_suffix(filename: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def _run_case(case: BatchCase, out_dir: str, options: dict) -> dict:
    """Grade one case in a worker; never raises, returns its row for cases.csv."""
    from ..engines import get_engine
    from ..measure.grading import SVMGrader
    from ..io.case import load_case
    from ..pipeline.case import grade_case
    from ..outputs.report import write_outputs

    t0 = time.perf_counter()
    target = Path(out_dir) / case.name
    try:
        loaded = load_case(case.seg, case.ct, case.subregions, labels=options["labels"], name=case.name)
        grader = SVMGrader.load(options["grader"]) if options["grader"] else None
        engine_options = options.get("engine_options", {})
        key = (options["engine"], tuple(sorted(engine_options.items())))
        if key not in _ENGINES:
            _ENGINES[key] = get_engine(options["engine"], **engine_options)
        engine = _ENGINES[key]
        result = grade_case(loaded, options["vertebrae"], engine=engine, grader=grader,
                            grader_name=f"SVM from {Path(options['grader']).name}" if grader else None)
        write_outputs(result, target, figures=options["figures"])
        graded = sum(v.status == "graded" for v in result.vertebrae)
        (target / "error.txt").unlink(missing_ok=True)
        return {"case": case.name, "status": "done", "graded": graded, "seconds": time.perf_counter() - t0, "error": ""}
    except HealthiVertError as err:
        message = str(err)
    except Exception as err:  # noqa: BLE001 - a batch must go on; the trace is kept for the user
        message = f"internal error: {err!r}"
        write_text_atomic(target / "error_trace.txt", traceback.format_exc())
    write_text_atomic(target / "error.txt", message + "\n")
    return {"case": case.name, "status": "failed", "graded": 0, "seconds": time.perf_counter() - t0, "error": message}


def run_batch(args: argparse.Namespace) -> int:
    """Run a batch from parsed CLI arguments; exit status 0 when every case succeeded, else 3."""
    from tqdm import tqdm

    cases = discover_cases(args.input)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from .options import engine_options

    options = {"labels": args.labels, "grader": args.grader, "engine": args.engine,
               "engine_options": engine_options(args), "vertebrae": args.vertebra, "figures": not args.no_figures}
    rows: dict[str, dict] = {}
    todo = []
    for case in cases:
        if (out / case.name / "report.json").is_file():
            rows[case.name] = {"case": case.name, "status": "skipped (done before)", "graded": "", "seconds": "", "error": ""}
        else:
            todo.append(case)
    bar = tqdm(total=len(todo), desc="cases", unit="case", disable=args.progress == "none")
    if args.workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=args.workers, initializer=draw_figures_serially) as pool:
            futures = {pool.submit(_run_case, c, str(out), options): c for c in todo}
            for future in as_completed(futures):
                rows[futures[future].name] = _progress_row(future.result(), bar, args.progress)
    else:
        for case in todo:
            rows[case.name] = _progress_row(_run_case(case, str(out), options), bar, args.progress)
    bar.close()
    ordered = [rows[c.name] for c in cases]
    _write_case_table(out / "cases.csv", ordered)
    _write_vertebra_summary(out / "summary.csv", [out / c.name / "report.csv" for c in cases])
    _print_summary(ordered, out)
    return 0 if all(r["status"] != "failed" for r in ordered) else 3


def _progress_row(row: dict, bar, mode: str) -> dict:
    bar.update(1)
    if mode == "lines":
        print(f"HEALTHIVERT_PROGRESS {100 * bar.n / max(bar.total, 1):.0f} {row['case']}: {row['status']}", flush=True)
    return row


def _write_case_table(path: Path, rows: list[dict]) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CASE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.2f}" if k == "seconds" and isinstance(row[k], float) else row[k]) for k in CASE_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def _write_vertebra_summary(path: Path, reports: list[Path]) -> None:
    """Concatenate the per-case report.csv files (same header) into one feature table."""
    header, lines = None, []
    for report in reports:
        if not report.is_file():
            continue
        text = report.read_text(encoding="utf-8").splitlines()
        if not text:
            continue
        header = header or text[0]
        lines.extend(text[1:])
    if header:
        write_text_atomic(path, "\n".join([header, *lines]) + "\n")


def _print_summary(rows: list[dict], out: Path) -> None:
    width = max([len(r["case"]) for r in rows] + [4])
    print(f"\n{'case':<{width}}  {'status':<22} graded  error")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['status']:<22} {str(r['graded']):>6}  {r['error']}")
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} cases done, {failed} failed. Tables: {out / 'cases.csv'}, {out / 'summary.csv'}")
