"""``healthivert batch``: many cases, worker processes, resumable, one failure never stops the rest.

A case is done when its folder holds the completion marker ``outputs.report.COMPLETE_MARKER``
(written last); a case folder without it (interrupted, disk full) is graded again.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..errors import HealthiVertError
from ..io.files import write_text_atomic
from ..outputs.figures import draw_figures_serially
from ..outputs.report import is_complete
from ..io.discover import CaseFiles, discover_cases


CASE_COLUMNS = ("case", "status", "graded", "seconds", "error")
_ENGINES: dict[tuple, object] = {}  # per process: an engine is built (its weights loaded) once, not per case


def _run_case(case: CaseFiles, out_dir: str, options: dict) -> dict:
    """Grade one case in a worker; never raises, returns its row for cases.csv."""
    from ..engines import get_engine
    from ..measure.graders import load_grader
    from ..io.case import load_case
    from ..pipeline.case import grade_case
    from ..outputs.report import write_outputs

    t0 = time.perf_counter()
    target = Path(out_dir) / case.name
    try:
        loaded = load_case(case.seg, case.ct, case.subregions, labels=options["labels"], name=case.name)
        grader = load_grader(options["grader"]) if options["grader"] else None
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
        if is_complete(out / case.name):
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
    _write_vertebra_summary(out / "summary.csv", [out / c.name / "report.csv" for c in cases if is_complete(out / c.name)])
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
