"""``healthivert batch``: many cases in worker processes or on dask, resumable exactly, one failure never stops the rest.

Every case runs through ``casework.process_case`` (the one code path for a case), into
``OUT/<folder>/`` where ``folder`` is the case name as one safe path component (``io.discover``);
no input may lie inside ``OUT``. Executors: the calling process (one worker), a process pool
(``--workers N``, capped to the number of cases) or dask.distributed (``--dask [ADDRESS]``,
``cluster``). Ctrl-C and SIGTERM stop the workers, write ``cases.csv`` with the unfinished cases
``interrupted`` and end the command (exit 130/143); workers also exit when the batch process dies.
At the end the cohort files are written (``outputs.cohort``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import HealthiVertError
from ..io.discover import CaseFiles, discover_cases
from ..io.files import check_inputs_outside
from ..outputs.cohort import write_cohort
from ..processes import usable_cores
from .casework import (
    engine_for,
    options_provenance,
    prepare_worker,
    process_case,
    remove_leftovers,
    row,
)
from .options import announce_device, engine_options

BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def run_batch(args: argparse.Namespace) -> int:
    """Run a batch from parsed CLI arguments; exit status 0 when no case failed, else 3."""
    from tqdm import tqdm

    cases = [CaseFiles(c.name, c.seg.absolute(), _absolute(c.ct), _absolute(c.subregions), c.folder)
             for c in discover_cases(args.input)]
    out = Path(args.out).absolute()
    dask_address = getattr(args, "dask", None)
    if dask_address is not None:
        from .cluster import check_address

        dask_address = check_address(dask_address)
    options = {"labels": args.labels, "grader": args.grader, "engine": args.engine,
               "engine_options": engine_options(args), "vertebrae": args.vertebra, "figures": not args.no_figures,
               "qc": not getattr(args, "no_qc", False)}
    check_batch_inputs(Path(args.input), cases, out, options)
    options["provenance"] = options_provenance(options)
    announce_device(engine_for(options))  # an engine that cannot be built (missing PyTorch, bad weights, a GPU that
    # cannot work) stops here, in one line; the generator's device line goes to stderr once
    out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    local = dask_address is None or dask_address == "local"
    workers = batch_workers(args.workers, len(cases), local=local)
    if local and workers > 1:  # the cores shared by the workers: several threads each would oversubscribe them
        options["threads"] = max(1, _cores() // workers)

    rows: dict[str, dict] = {}
    bar = tqdm(total=len(cases), desc="cases", unit="case", bar_format=BAR_FORMAT, disable=args.progress == "none")
    on_row = _progress(rows, bar, args.progress)
    try:
        if dask_address is not None:
            from .cluster import run_on_dask

            run_on_dask(cases, out, options, workers, dask_address, on_row)
        elif workers > 1:
            run_on_pool(cases, out, options, workers, on_row)
        else:
            for case in cases:
                on_row(process_case(case, str(out), options))
    except KeyboardInterrupt:  # also SIGTERM (cli): the cases not finished are marked, then the command ends
        bar.close()
        write_cohort(out, [rows.get(c.folder) or row(c, "interrupted") for c in cases])
        raise
    bar.close()
    remove_leftovers(out)  # every task has ended; a worker killed on the way left its temporary folder
    ordered = [rows[c.folder] for c in cases]
    write_cohort(out, ordered)
    _print_summary(ordered, out)
    return 0 if all(r["status"] != "failed" for r in ordered) else 3


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else path.absolute()


def check_batch_inputs(source: Path, cases: Sequence[CaseFiles], out: Path, options: dict) -> None:
    """Refuse an ``out`` that holds an input (a case file, the manifest, the grader, weights or a
    dataset.json) or that lies inside the input folder (its outputs would be read as cases next time)."""
    files = [source, options.get("grader"), (options.get("engine_options") or {}).get("weights")]
    if options.get("labels") and Path(options["labels"]).is_file():
        files.append(options["labels"])
    files += [p for c in cases for p in (c.seg, c.ct, c.subregions)]
    check_inputs_outside(out, files)
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()):
        raise HealthiVertError(
            f"--out '{out}' lies inside the input folder '{source}': its label maps would be read as cases by the "
            "next run. Choose a folder outside it."
        )


def batch_workers(requested: int, n_cases: int, *, local: bool = True) -> int:
    """Worker processes to start: ``requested`` capped to the number of cases; a warning on stderr when
    more than this machine's CPU cores are asked for (``local``)."""
    cores = _cores()
    if local and requested > cores:
        print(f"healthivert: warning: --workers {requested} is more than the {cores} CPU cores of this machine; "
              "the cases will run slower each, not faster together.", file=sys.stderr)
    return max(1, min(requested, n_cases))


def _cores() -> int:
    return usable_cores()


def run_on_pool(cases: Sequence[CaseFiles], out: Path, options: dict, workers: int,
                on_row: Callable[[dict], None]) -> None:
    """Grade ``cases`` in a pool of ``workers`` processes, ``on_row`` called as each case ends. A worker
    that dies (killed, out of memory) breaks the pool: the cases it left unfinished go to a new pool,
    once; a case left unfinished by a second broken pool is ``failed``. An interruption
    (KeyboardInterrupt, SIGTERM) terminates the workers before it propagates."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # forking a process whose PyTorch has started its thread pools can hang the children: start them clean
    context = multiprocessing.get_context("forkserver") if "torch" in sys.modules else None
    todo = list(cases)
    tries: dict[str, int] = {}
    while todo:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                                   initializer=prepare_worker, initargs=(options,))
        broken: list[tuple[CaseFiles, BaseException]] = []
        try:
            futures = {pool.submit(process_case, c, str(out), options): c for c in todo}
            for future in as_completed(futures):
                try:
                    on_row(future.result())
                except BrokenProcessPool as err:
                    broken.append((futures[future], err))
                except Exception as err:  # noqa: BLE001 - the case could not reach or leave its worker
                    on_row(row(futures[future], "failed", 0, "", f"internal error: {err!r}"))
        except BaseException:
            stop_pool(pool)
            raise
        pool.shutdown()
        if broken:
            remove_leftovers(out)  # every worker of a broken pool has ended: its temporary folders are orphans
        todo = []
        for case, err in broken:
            tries[case.folder] = tries.get(case.folder, 0) + 1
            if tries[case.folder] < 2:
                todo.append(case)
            else:
                on_row(row(case, "failed", 0, "", f"a worker process died while grading it, twice: {err}"))


def stop_pool(pool) -> None:
    """Terminate a ``ProcessPoolExecutor``'s workers now (SIGTERM, then SIGKILL after 5 s) and shut it down."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public handle before Python 3.14
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(1)


def _progress(rows: dict[str, dict], bar, mode: str) -> Callable[[dict], None]:
    start = time.monotonic()
    failed = 0

    def on_row(result: dict) -> None:
        nonlocal failed
        rows[result["folder"]] = result
        failed += result["status"] == "failed"
        minutes = max(time.monotonic() - start, 1e-9) / 60
        bar.set_postfix_str(f"{len(rows) / minutes:.1f} cases/min, {failed} failed", refresh=False)
        bar.update(1)
        if mode == "lines":
            print(f"HEALTHIVERT_PROGRESS {100 * len(rows) / max(bar.total, 1):.0f} {result['case']}: {result['status']}",
                  flush=True)

    return on_row


def _print_summary(rows: list[dict], out: Path) -> None:
    names = [r["case"] if r["case"] == r["folder"] else f"{r['case']} -> {r['folder']}" for r in rows]
    width = max([len(n) for n in names] + [4])
    print(f"\n{'case':<{width}}  {'status':<22} graded  error")
    for name, r in zip(names, rows):
        print(f"{name:<{width}}  {r['status']:<22} {r['graded']!s:>6}  {r['error']}")
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"\n{len(rows) - failed} of {len(rows)} cases done, {failed} failed. Tables: {out / 'cases.csv'}, "
          f"{out / 'summary.csv'}; cohort page: {out / 'index.html'}")
