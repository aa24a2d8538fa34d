"""The ``healthivert`` command line: grade, demo and batch, and the research commands of ``research``.

Each subcommand parses its options and calls the package that does the work (``pipeline`` and
``outputs`` for grade and demo, ``app.batch`` for batch; ``research`` adds simulate, bench and
train-*), imported only when that subcommand runs, so torch is loaded only by the commands that
need it. The help, grade and bench print the notice: research use only, not for diagnosis.

Exit status: 0 success, 2 a problem with the input or the request (the message says what to
do, in one line: option errors, ``HealthiVertError`` and ``OSError`` such as a full disk), 1 an
unexpected internal error, 130 interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM): both
print ``healthivert: interrupted`` and leave no completion marker. Output locations are checked
before any computing (``io.files``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from .. import NOTICE, __version__
from ..errors import HealthiVertError
from ..engines import DEFAULT_ENGINE, ENGINES
from .options import DEVICE_HELP, engine_options, make_engine, positive_int
from ..io.resources import SAMPLE_DIR
from ..progress import PROGRESS_PREFIX, make_progress
from .research import add_research_commands




def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``healthivert`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    restore = _interrupt_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except _Terminated:
        print("healthivert: interrupted", file=sys.stderr)
        return 128 + signal.SIGTERM
    except HealthiVertError as err:
        print(f"healthivert: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # full disk, read-only file system, permissions, ...: one line, no traceback
        print(f"healthivert: error: {_os_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("healthivert: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        restore()


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` (temporary files) runs and no marker is written."""


def _interrupt_on_sigterm():
    """Make SIGTERM raise ``_Terminated`` in this process while a command runs; return a function restoring the
    previous handler. Only in the main thread (elsewhere signals cannot be handled); a forked worker that
    inherits the handler dies of SIGTERM as before."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != pid:  # a forked worker process (figures, batch): the default action
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _os_error_text(err: OSError) -> str:
    """One line naming the file and the reason of an OSError (``'out/report.json': No space left on device``)."""
    reason = err.strerror or str(err) or type(err).__name__
    names = [f"'{os.fsdecode(name)}'" for name in (err.filename, err.filename2) if name is not None]
    where = " -> ".join(names)
    return (f"{where}: {reason}" if where else reason) + ". Free space, fix the permissions or choose another path."


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``healthivert: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"healthivert: error: {message} (see '{self.prog} --help').\n")


def unique_levels(levels: Sequence[str] | None) -> list[str] | None:
    """``levels`` without repeats after normalising the spelling (``L1 L1 l1`` -> ``L1``), order kept."""
    if levels is None:
        return None
    seen: set[str] = set()
    unique = []
    for level in levels:
        key = str(level).strip().upper()
        if key not in seen:
            seen.add(key)
            unique.append(level)
    return unique


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command and option documented."""
    parser = _Parser(
        prog="healthivert",
        description="Grade osteoporotic vertebral compression fractures on CT from a pseudo-healthy "
        "vertebra: Relative Height Loss (RHLV) per third, axial height-loss maps, Genant grade 0-3. "
        + NOTICE,
    )
    parser.add_argument("--version", action="version", version=f"healthivert {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_grade(sub)
    _add_demo(sub)
    _add_batch(sub)
    _add_export_dicom(sub)
    add_research_commands(sub)
    return parser


def _add_case_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=sorted(ENGINES),
                   help="pseudo-healthy engine: 'context' predicts the healthy height map from the "
                   "neighbouring vertebrae (no weights, works on labels alone); 'spine' from a robust model of the "
                   "whole spine with a level prior fitted on published morphometry and 16 radiologist-graded healthy "
                   "VerSe19 vertebrae (labels alone; fractured vertebrae elsewhere are down-weighted; best on the "
                   "real benchmark, the default); "
                   "'generator' synthesizes the "
                   "pseudo-healthy vertebra and its CT with the HealthiVert-GAN generator (needs --ct and "
                   "PyTorch; bundled weights trained on simulated data). Default: %(default)s.")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="generator weights: a .safetensors file from 'healthivert train-generator' (with its .json "
                   "model card beside it) or the HealthiVert-GAN authors' latest_net_G.pth. Default: the bundled "
                   "weights (HealthiVertLib/data/weights/generator_default.json says how they were trained).")
    p.add_argument("--device", default=None, metavar="DEVICE", help="generator engine only: " + DEVICE_HELP)
    p.add_argument("--labels", default=None, metavar="NUMBERING",
                   help="label numbering of the vertebra label map: 'verse' (VerSe, TotalSegmentator "
                   "vertebrae_pp: 20 = L1), 'totalseg' (TotalSegmentator v2 total: 31 = L1) or the path "
                   "of an nnU-Net dataset.json. Default: detected from the labels and their order.")
    p.add_argument("--grader", default=None, metavar="JSON",
                   help="grader parameters written by 'healthivert train-grader'. Default: the bundled "
                   "grader (see HealthiVertLib/data/grader_default.md for what it was fitted on).")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures (faster).")
    p.add_argument("--no-qc", action="store_true",
                   help="grade vertebrae whose labels fail the mask quality check (split, box-filled, merged, "
                   "numbering out of order) instead of reporting them as implausible_mask; the report then "
                   "carries a warning. For looking at a doubtful segmentation, not for screening.")
    p.add_argument("--progress", default="bar", choices=["bar", "lines", "none"],
                   help="progress display: a bar on the terminal, machine-readable lines "
                   f"'{PROGRESS_PREFIX} <percent> <message>' on stdout (used by the Slicer module), or none.")


def _add_grade(sub) -> None:
    p = sub.add_parser("grade", help="grade the vertebrae of one case",
                       description="Grade vertebrae of one case and write report.json, report.csv, "
                       "height-loss and pseudo-healthy volumes on the input grid, figures and index.html.")
    p.add_argument("--seg", required=True, metavar="SEG",
                   help="vertebra label map (NIfTI .nii/.nii.gz, NRRD or MHA), e.g. from TotalSegmentator, "
                   "nnU-Net or VerSe, or a DICOM SEG of vertebrae (file or folder; levels from its SNOMED CT codes).")
    p.add_argument("--ct", default=None, metavar="CT",
                   help="the CT on the same grid as SEG: an image file or a folder holding a DICOM CT series "
                   "(optional: heights, RHLV and grades need only the labels; the CT adds the image to the figures).")
    p.add_argument("--series", nargs="+", default=None, metavar="UID",
                   help="SeriesInstanceUID(s) to read when a DICOM folder given as --ct or --seg holds several series "
                   "(the error message lists them).")
    p.add_argument("--dicom", action="store_true",
                   help="also write DICOM objects into OUT/dicom/: a SEG of the measured and pseudo-healthy bodies, a "
                   "TID 1500 structured report, a parametric map of the height loss (and the pseudo-healthy CT with "
                   "--engine generator), all referencing the CT series. Needs --ct to be a DICOM series.")
    p.add_argument("--subregions", default=None, metavar="SUB",
                   help="optional vertebral-body labels on the same grid: Kirschke-lab subregions (body = 49, 50) "
                   "or TotalSegmentator vertebrae_body (body = 1). Without it the posterior elements are "
                   "removed geometrically.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--vertebra", nargs="+", metavar="LEVEL", help="levels to grade, e.g. L1 T12.")
    target.add_argument("--all", action="store_true", help="grade every thoracic and lumbar vertebra in SEG.")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; an earlier run's outputs in it are replaced, other files kept).")
    p.add_argument("--name", default=None, help="case name in the report (default: from the SEG file name).")
    p.add_argument("--counterfactuals", action="store_true",
                   help="also show each graded vertebra as it would look at Genant grade 0-3 (its pseudo-healthy "
                   "body compressed by the fracture simulator: 0, 22, 32, 50 %% loss): counterfactual_grade<G>_label.nii.gz, "
                   "report.json entries and a figure per vertebra.")
    _add_case_options(p)
    p.set_defaults(func=_cmd_grade)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="grade the bundled sample case (no data needed)",
                       description="Grade every vertebra of the bundled sample case: the TotalSegmentator example "
                       "abdomen CT (3 mm, Apache-2.0) with its TotalSegmentator labels.")
    p.add_argument("--out", default="healthivert_demo", metavar="DIR", help="output folder (default: ./healthivert_demo).")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures.")
    p.add_argument("--progress", default="bar", choices=["bar", "lines", "none"], help="progress display.")
    p.set_defaults(func=_cmd_demo)


def _add_batch(sub) -> None:
    p = sub.add_parser("batch", help="grade many cases (folder or CSV manifest), resumable",
                       description="Grade every case of a folder or CSV manifest into OUT/<case>/, in worker "
                       "processes or on dask. A case is skipped when OUT/<case>/healthivert_complete.json records the same "
                       "input file hashes and options, so an interrupted run resumes exactly; anything else is graded "
                       "again. A failing case is marked failed and the others go on. Case names become safe folder names "
                       "(others slugified, see cases.csv). Writes OUT/cases.csv (one row per case), OUT/summary.csv (one "
                       "row per vertebra), OUT/summary_by_level.csv and the cohort page OUT/index.html.")
    p.add_argument("input", metavar="INPUT",
                   help="a CSV manifest with columns case, seg[, ct][, subregions] (paths relative to the CSV), "
                   "or a folder: one sub-folder per case, or files named <case>_seg.nii.gz / <case>_msk.nii.gz "
                   "with optional <case>_ct.nii.gz or <case>.nii.gz.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder.")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="worker processes (default 1; never more than the cases; a warning above the CPU cores).")
    p.add_argument("--dask", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cases on dask.distributed (pip install 'healthivert[cluster]'): without ADDRESS a "
                   "local cluster of --workers processes, with tcp://host:port an existing scheduler whose workers "
                   "see INPUT and --out at the same paths. Give it after INPUT.")
    p.add_argument("--vertebra", nargs="+", metavar="LEVEL", default=None,
                   help="levels to grade in every case (default: all thoracic and lumbar).")
    _add_case_options(p)
    p.set_defaults(func=_cmd_batch)


def _add_export_dicom(sub) -> None:
    p = sub.add_parser("export-dicom", help="write the DICOM objects of a finished result (SEG, SR, parametric map)",
                       description="Write the DICOM objects of 'grade --dicom' (SEG, TID 1500 SR, height-loss parametric "
                       "map) into RESULT/dicom/ for a result graded earlier, referencing the DICOM CT series it was graded "
                       "on; the result's volumes must lie on that series' grid. The Slicer module's Export to DICOM runs it.")
    p.add_argument("result", metavar="RESULT", help="a result folder written by 'healthivert grade' (with its completion marker).")
    p.add_argument("--ct", required=True, metavar="DICOM_FOLDER",
                   help="the folder holding the DICOM CT series the case was graded on (searched recursively).")
    p.add_argument("--series", nargs="+", default=None, metavar="UID",
                   help="SeriesInstanceUID(s) to read when DICOM_FOLDER holds several series (the error message lists them).")
    p.set_defaults(func=_cmd_export_dicom)


def _grade_and_write(seg, ct, subregions, vertebrae, out, args, name=None) -> int:
    from ..io.files import check_output_dir, check_outputs_apart
    from ..measure.graders import load_grader
    from ..io.case import load_case
    from ..pipeline.case import grade_case, spine_case
    from ..processes import set_threads
    from ..outputs.tables import summary_table
    from ..outputs.report import write_outputs

    set_threads()  # one case alone: every core, in SimpleITK, BLAS, OpenMP and PyTorch
    check_output_dir(out)  # before any computing: a long run never ends in an unwritable folder
    check_outputs_apart(out, [seg, ct, subregions])
    check_dicom_request(out, seg, ct, getattr(args, "dicom", False))
    engine_options(args)  # --weights/--device with an engine that ignores them
    t0 = time.perf_counter()
    progress, close = make_progress(args.progress)
    progress(0.0, "reading inputs")
    case = load_case(seg, ct, subregions, labels=getattr(args, "labels", None), name=name,
                     series=getattr(args, "series", None))
    engine = make_engine(args)
    case = spine_case(case, engine)  # keep only the spine's box: the full-grid images are released here
    load_s = time.perf_counter() - t0
    grader = load_grader(args.grader) if getattr(args, "grader", None) else None
    result = grade_case(case, vertebrae, engine=engine, grader=grader,
                        progress=lambda f, m: progress(0.05 + 0.8 * f, m),
                        grader_name=f"SVM from {Path(args.grader).name}" if grader else None,
                        counterfactuals=getattr(args, "counterfactuals", False),
                        qc=not getattr(args, "no_qc", False))
    progress(0.9, "writing outputs")
    t = time.perf_counter()
    result.timing_s = {"load": load_s, **result.timing_s}
    paths = write_outputs(result, out, figures=not args.no_figures,
                          dicom=case.dicom.get("ct") if getattr(args, "dicom", False) else None)
    result.timing_s["write"] = time.perf_counter() - t
    progress(1.0, "done")
    close()
    if args.progress != "lines":
        print(summary_table(result))
        print(f"\nReport: {paths.get('index.html', Path(out) / 'report.json')}")
        print(NOTICE)
    return 0


def check_dicom_request(out, seg, ct, dicom: bool) -> None:
    """Refuse, before any computing, ``--dicom`` without a DICOM CT series, and an output folder inside a DICOM
    input folder (the DICOM outputs would join the input series the next time it is read)."""
    from ..io.dicom import is_dicom_input

    if dicom and not is_dicom_input(ct):
        given = "no --ct was given" if ct is None else f"--ct '{ct}' is an image file, not a DICOM series"
        raise HealthiVertError(
            f"--dicom writes DICOM objects that reference the source CT series, so it needs --ct to be a folder "
            f"holding a DICOM CT series; {given}. Give the DICOM folder as --ct, or leave out --dicom."
        )
    out_path = Path(out).resolve()
    for item in (seg, ct):
        if item is not None and Path(item).is_dir() and out_path.is_relative_to(Path(item).resolve()):
            raise HealthiVertError(
                f"--out '{out}' lies inside the DICOM input folder '{item}'; the outputs would be read as part of it "
                "next time. Choose an output folder outside it."
            )


def _cmd_grade(args: argparse.Namespace) -> int:
    return _grade_and_write(args.seg, args.ct, args.subregions, None if args.all else unique_levels(args.vertebra),
                            args.out, args, name=args.name)


def _cmd_demo(args: argparse.Namespace) -> int:
    seg, ct = SAMPLE_DIR / "seg.nii.gz", SAMPLE_DIR / "ct.nii.gz"
    if not seg.exists() or not ct.exists():
        raise HealthiVertError(f"The bundled sample case is missing from {SAMPLE_DIR}; reinstall healthivert.")
    return _grade_and_write(seg, ct, None, None, args.out, args, name="sample-totalsegmentator")


def _cmd_export_dicom(args: argparse.Namespace) -> int:
    from ..outputs.report import export_dicom

    check_dicom_request(args.result, None, args.ct, True)
    written = export_dicom(args.result, args.ct, series=args.series)
    for path in written.values():
        print(path)
    print(f"Wrote {len(written)} DICOM file(s) into {Path(args.result) / 'dicom'}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from ..io.files import check_output_dir
    from .batch import run_batch

    check_output_dir(args.out)
    engine_options(args)
    args.vertebra = unique_levels(args.vertebra)
    return run_batch(args)


if __name__ == "__main__":
    sys.exit(main())
