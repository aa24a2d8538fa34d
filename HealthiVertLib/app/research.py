"""The research subcommands of ``healthivert``: benchmarks, fracture simulation, training.

``bench`` (simulated truth, or ``--real`` radiologists' grades), ``simulate`` (fractures and phantom
datasets), ``train-grader``, ``train-generator`` and ``train-hgam``. They build ground truth,
evaluate and fit; ``cli`` holds the commands a radiologist's work runs through (grade, demo, batch).
Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import NOTICE
from ..errors import HealthiVertError
from ..progress import make_progress
from .options import DEVICE_HELP, non_negative_int, positive_float


REAL_DATA = "benchmarks/data/verse19"  # bench --real: default data folder (grades + cases)
REAL_OUT = "benchmarks/real.md"  # bench --real: default report (raw JSON next to it)


def _add_train(sub) -> None:
    p = sub.add_parser("train-grader", help="fit the linear SVM grader on RHLV features",
                       description="Fit the grader (standardised RHLV features, linear SVM with balanced class "
                       "weights, calibrated confidence) and write its parameters as JSON. Tables are CSV files with "
                       "columns case, verse_label, rhlv_anterior, rhlv_middle, rhlv_posterior and a grade column, "
                       "or grades from --grades; report.csv and batch summary.csv files qualify.")
    p.add_argument("tables", nargs="+", metavar="TABLE", help="feature tables (CSV).")
    p.add_argument("--grades", default=None, metavar="JSON",
                   help="grade file in the VerSe/HealthiVert vertebra_data.json format: "
                   "{split: {'<subject>_<VerSe label>': grade}} or a flat {key: grade}.")
    p.add_argument("--out", required=True, metavar="JSON", help="where to write the grader parameters.")
    p.add_argument("--C", type=positive_float, default=1.0, help="SVM regularisation, > 0 (default 1.0).")
    p.add_argument("--features", nargs="+", default=None,
                   choices=["rhlv_anterior", "rhlv_middle", "rhlv_posterior", "rhlv_overall", "rhlv_max"],
                   help="features (default: the three thirds and rhlv_max, their largest, as the bundled "
                   "grader; rhlv_max is derived from the thirds when the table has no such column).")
    p.set_defaults(func=_cmd_train)


def _add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="simulate compression fractures with exact ground truth",
                       description="Collapse vertebral bodies of a healthy case into wedge, biconcave or crush "
                       "fractures of a chosen height loss (RHLV of the anterior third, middle third or whole body) "
                       "and write OUT/seg.nii.gz, OUT/ct.nii.gz (with --ct), OUT/body.nii.gz (with --body) on the "
                       "input grid and OUT/truth.json (pre-fracture heights, true RHLV, Genant grade). Synthetic "
                       "data for testing and benchmarking; research use only.")
    p.add_argument("--seg", default=None, metavar="SEG", help="vertebra label map of a healthy case.")
    p.add_argument("--ct", default=None, metavar="CT", help="the CT on the same grid (optional: mask-only works).")
    p.add_argument("--body", default=None, metavar="BODY",
                   help="optional body-subregion map on the same grid (Kirschke 49/50 or TotalSegmentator "
                   "vertebrae_body 1/2); deformed the same way and used to find the body.")
    p.add_argument("--labels", default=None, metavar="NUMBERING", help="label numbering (default: detected).")
    p.add_argument("--vertebra", action="append", default=[], metavar="LEVEL",
                   help="level to fracture, e.g. L2; repeat for several fractures (each pairs with the --type and "
                   "--loss at the same position; a single --type/--loss applies to all).")
    p.add_argument("--type", action="append", default=[], choices=["wedge", "biconcave", "crush"],
                   help="fracture type: wedge (anterior loss), biconcave (middle loss), crush (uniform).")
    p.add_argument("--loss", action="append", default=[], type=float, metavar="FRACTION",
                   help="height loss of the affected region, 0 < loss <= 0.8 (0.35 = 35 %%, Genant grade 2).")
    p.add_argument("--fracture", action="append", default=[], metavar="LEVEL:TYPE:LOSS",
                   help="another way to give one fracture, e.g. --fracture L2:wedge:0.3; repeatable, applied "
                   "after the --vertebra ones, in order.")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed, 0 or more (endplate irregularity, disc noise); the k-th "
                   "fracture uses SEED + k. Default 0.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; files in it are replaced).")
    p.add_argument("--progress", default="bar", choices=["bar", "lines", "none"], help="progress display.")
    ph = p.add_argument_group(
        "phantom datasets", "With --phantom N (no --seg): write N procedural phantom spines (CT, VerSe labels, "
        "Kirschke subregions) in a VerSe-like layout under OUT, with OUT/manifest.csv (for 'healthivert batch'), "
        "OUT/vertebra_data.json (Genant grade of every vertebra, train/val/test split by case) and a truth.json per "
        "case. --seed seeds the whole dataset. Synthetic data; see README 'Phantom spines'.")
    ph.add_argument("--phantom", type=int, default=None, metavar="N", help="number of phantom cases to write.")
    ph.add_argument("--levels", default="T1-L5", metavar="RANGE", help="levels of every phantom (default T1-L5; "
                    "e.g. L1-L5 for small fast cases).")
    ph.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                    help="voxel size: one value, or in-plane, in-plane and slice thickness (e.g. 0.8 0.8 2). "
                    "Default: drawn per case from typical protocols (0.7-1.5 mm in-plane, 1-3 mm slices).")
    ph.add_argument("--orientation", default=None, metavar="CODE",
                    help="axis code of every case (LPS, RAS, PIR, ...; default: drawn per case); every case also "
                    "gets a small random oblique (0-6 degrees).")
    ph.add_argument("--fractures-per-case", default="0-2", metavar="MIN-MAX",
                    help="number of simulated fractures per case, e.g. 0-2 (default) or 1.")
    ph.add_argument("--subregions", default="kirschke", choices=["kirschke", "totalseg"],
                    help="subregion convention: Kirschke/TPTBox 41-50 with 100 = disc (default) or "
                    "TotalSegmentator vertebrae_body (1 body, 2 disc).")
    p.set_defaults(func=_cmd_simulate)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="accuracy benchmark of every engine and baseline on simulated fractures "
                       "(--real: against radiologists' grades)",
                       description="Compress healthy vertebrae (the real cases of Testing/Data and procedural "
                       "phantoms) with the fracture simulator, estimate them with every pseudo-healthy engine and "
                       "the reference-free baselines (minmax, neighbours), and write markdown tables, PNG figures "
                       "and the raw per-vertebra JSON. Anything fitted (the SVM grader) never sees its test "
                       "subjects. Run from the repository root (needs Testing/Data). Synthetic ground truth; "
                       "research use only. With --real: every engine and baseline on real CTs against the "
                       "radiologists' Genant grades of DIR/vertebra_data.json, graded by the Genant rule, the "
                       "default SVM and an SVM refitted leave-one-subject-out (research use, not a clinical "
                       "validation).")
    p.add_argument("--real", action="store_true",
                   help="real benchmark: radiologists' Genant grades instead of simulated fractures.")
    p.add_argument("--stability", action="store_true",
                   help="with --real: also grade every case after eroding, dilating and locally moving each "
                   "vertebra's boundary by one voxel, and report how many grades change.")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="with --real: folder with vertebra_data.json and the label maps (and CTs) "
                   f"(default: {REAL_DATA}).")
    p.add_argument("--out", default=None, metavar="MD",
                   help="markdown report; figures go to its folder's figures/, the raw JSON next to it "
                   f"(default: benchmarks/accuracy.md; with --real {REAL_OUT}, raw JSON real.json).")
    p.add_argument("--phantoms", type=int, default=None, metavar="N",
                   help="number of phantom cases (default 30; 1 with --quick).")
    p.add_argument("--estimators", nargs="+", default=None, metavar="NAME",
                   help="restrict to these engines/baselines (default: all available).")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="parallel worker processes (default 1).")
    p.add_argument("--quick", action="store_true",
                   help="tiny run (one real vertebra, two fractures, one phantom) to check the installation.")
    p.add_argument("--progress", default="bar", choices=["bar", "none"], help="progress display.")
    p.set_defaults(func=_cmd_bench)


def _bench_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (for the report)."""
    if args.real:
        parts = ["healthivert bench --real"] + (["--stability"] if args.stability else [])
        if args.data is not None and args.data != REAL_DATA:
            parts.append(f"--data {args.data}")
        if args.estimators:
            parts.append("--estimators " + " ".join(args.estimators))
        if args.out is not None and args.out != REAL_OUT:
            parts.append(f"--out {args.out}")
        return " ".join(parts)
    parts = ["healthivert bench"]
    if args.quick:
        parts.append("--quick")
    if args.phantoms is not None:
        parts.append(f"--phantoms {args.phantoms}")
    if args.estimators:
        parts.append("--estimators " + " ".join(args.estimators))
    if args.workers != 1:
        parts.append(f"--workers {args.workers}")
    if args.out is not None and args.out != "benchmarks/accuracy.md":
        parts.append(f"--out {args.out}")
    return " ".join(parts)


def _bench_progress(desc: str, kind: str, unit: str):
    """(progress callback, close) for the bench commands: a tqdm bar, or nothing with --progress none."""
    bar, close = None, lambda: None
    if kind == "bar":
        from tqdm import tqdm

        bar = tqdm(total=1, desc=desc, unit=unit)
        close = bar.close

    def progress(done: int, total: int, message: str) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(message)
            bar.refresh()

    return progress, close


def _cmd_bench_real(args: argparse.Namespace) -> int:
    from ..evaluation.real_report import run_real

    if args.quick or args.phantoms is not None or args.workers != 1:
        raise HealthiVertError("--real runs every graded vertebra in one process; --quick, --phantoms and "
                               "--workers apply to the simulated benchmark only.")
    from ..io.files import check_output_file

    out = check_output_file(args.out or REAL_OUT)
    progress, close = _bench_progress("bench --real", args.progress, "step")
    try:
        result = run_real(out, Path(args.data or REAL_DATA), estimators=args.estimators,
                          command=_bench_command(args), progress=progress, stability=args.stability)
    finally:
        close()
    print(f"{len(result.vertebrae)} graded vertebrae, {len(result.estimates)} estimators; report written to "
          f"{out} (raw JSON {out.with_suffix('.json')})")
    print(NOTICE)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.real:
        return _cmd_bench_real(args)
    if args.data is not None or args.stability:
        raise HealthiVertError("--data and --stability belong to the real benchmark; use them with --real.")
    from ..evaluation.records import N_PHANTOMS
    from ..evaluation.bench import run
    from ..io.files import check_output_file

    n = args.phantoms if args.phantoms is not None else (1 if args.quick else N_PHANTOMS)
    if n < 0 or args.workers < 1:
        raise HealthiVertError("--phantoms must be 0 or more and --workers at least 1.")
    command = _bench_command(args)
    args.out = args.out or "benchmarks/accuracy.md"
    check_output_file(args.out)
    progress, close = _bench_progress("bench", args.progress, "case")
    result = run(Path(args.out), n_phantoms=n, quick=args.quick, estimators=args.estimators, command=command,
                 progress=progress, workers=args.workers)
    close()
    print(f"{len(result.items)} vertebrae; report written to {args.out}")
    print(NOTICE)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..measure.grading import GRADER_FEATURES
    from ..io.files import check_output_file
    from ..training.grader import train_from_tables

    check_output_file(args.out)
    summary = train_from_tables(args.tables, args.grades, args.out, C=args.C,
                                features=tuple(args.features) if args.features else GRADER_FEATURES,
                                command="healthivert train-grader " + " ".join(sys.argv[2:]))
    cv = summary.get("cv", {})
    print(f"Fitted on {summary['n_used']} vertebrae from {summary['n_subjects']} subjects "
          f"(per grade: {summary['n_per_grade']}); skipped: {summary['skipped']}.")
    if cv:
        print(f"Cross-validated by subject: macro-F1 {cv.get('macro_f1', float('nan')):.3f}, "
              f"quadratic kappa {cv.get('quadratic_weighted_kappa', float('nan')):.3f}.")
    print(f"Grader written to {args.out}")
    return 0



def _fracture_requests(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """(level, type, loss) of every requested fracture, in order."""
    n = len(args.vertebra)
    for opt, values in (("--type", args.type), ("--loss", args.loss)):
        if n and len(values) not in (1, n):
            raise HealthiVertError(f"Give {opt} once (for all) or once per --vertebra ({n} given, {len(values)} {opt}).")
        if not n and values:
            raise HealthiVertError(f"{opt} needs --vertebra LEVEL (or use --fracture LEVEL:TYPE:LOSS).")
    if n and (not args.type or not args.loss):
        raise HealthiVertError("Each --vertebra needs a --type (wedge, biconcave, crush) and a --loss (e.g. 0.35).")
    requests = [(lv, args.type[k if len(args.type) > 1 else 0], args.loss[k if len(args.loss) > 1 else 0])
                for k, lv in enumerate(args.vertebra)]
    for spec in args.fracture:
        parts = spec.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            requests.append((parts[0], parts[1], float(parts[2])))
        except ValueError:
            raise HealthiVertError(f"--fracture '{spec}' is not LEVEL:TYPE:LOSS (e.g. L2:wedge:0.3).") from None
    if not requests:
        raise HealthiVertError("No fracture requested: give --vertebra L2 --type wedge --loss 0.3 or --fracture L2:wedge:0.3.")
    return requests


def _simulate_phantoms(args: argparse.Namespace) -> int:
    """``simulate --phantom N``: write a phantom dataset with a progress bar."""
    import re

    from ..io.files import check_output_dir
    from ..truth.phantom_dataset import write_dataset

    if args.seg is not None or args.ct is not None or args.body is not None or args.vertebra or args.fracture:
        raise HealthiVertError("--phantom makes its own cases: leave out --seg, --ct, --body, --vertebra and "
                               "--fracture (use --fractures-per-case to choose how many fractures each phantom gets).")
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(args.fractures_per_case))
    if not match:
        raise HealthiVertError(f"--fractures-per-case '{args.fractures_per_case}' is not a count or a range such as 0-2.")
    count = (int(match[1]), int(match[2] if match[2] is not None else match[1]))
    check_output_dir(args.out)
    progress, close = make_progress(args.progress, "phantoms")
    progress(0.0, f"0/{args.phantom}")
    manifest = write_dataset(args.out, args.phantom, seed=args.seed, levels=args.levels, spacing=args.spacing,
                             orientation=args.orientation, fractures_per_case=count, subregions=args.subregions,
                             progress=lambda i, case: progress(i / args.phantom, f"{i}/{args.phantom} {case}"))
    close()
    if args.progress != "lines":
        print(f"{args.phantom} phantom case(s) in {args.out}; grades: {Path(args.out) / 'vertebra_data.json'}")
        print(f"Grade them: healthivert batch {manifest} --out RESULTS")
        print("Synthetic data (procedural phantoms); research use only.")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.phantom is not None:
        return _simulate_phantoms(args)
    if args.seg is None:
        raise HealthiVertError("simulate needs --seg SEG (the vertebra label map of a healthy case).")
    from ..io.files import check_output_dir, check_outputs_apart

    check_output_dir(args.out)  # before any computing
    check_outputs_apart(args.out, [args.seg, args.ct, args.body])
    from ..io.images import read_ct, read_label_map
    from ..truth.simulate import simulate_fracture, write_simulated

    requests = _fracture_requests(args)
    progress, close = make_progress(args.progress, "simulating")
    progress(0.0, "reading inputs")
    seg = read_label_map(args.seg, "vertebra labels")
    ct = read_ct(args.ct) if args.ct else None
    body = read_label_map(args.body, "body-subregion labels") if args.body else None
    truth = None
    for k, (level, kind, loss) in enumerate(requests):
        progress(0.05 + 0.85 * k / len(requests), f"{level}: {kind} {loss:.0%}")
        case = simulate_fracture(seg, vertebra=level, kind=kind, loss=loss, ct=ct, body=body,
                                 labels=args.labels, seed=args.seed + k, truth=truth)
        seg, ct, body, truth = case.seg, case.ct, case.body, case.truth
    progress(0.9, "writing outputs")
    write_simulated(case, args.out)
    progress(1.0, "done")
    close()
    if args.progress != "lines":
        for level, f in case.truth["fractures"].items():
            r = f["rhlv"]
            print(f"{level}: {f['kind']} {f['requested_loss']:.0%} -> RHLV anterior {r['anterior']:.1%}, middle "
                  f"{r['middle']:.1%}, posterior {r['posterior']:.1%}; Genant grade {f['genant_grade']}")
        print(f"Written to {args.out} (seg.nii.gz, truth.json). Simulated data: research use only.")
    return 0


def _add_slice_options(p: argparse.ArgumentParser, same_as: str = "") -> None:
    """--size and --spacing of the training slices; the generator and the HGAM classifier must agree."""
    p.add_argument("--size", type=int, nargs=2, default=[96, 64], metavar=("ROWS", "COLS"),
                   help=f"slice size in pixels{same_as} (default 96 64).")
    p.add_argument("--spacing", type=float, default=1.5, help=f"pixel spacing in mm{same_as} (default 1.5).")


def _add_train_generator(sub) -> None:
    p = sub.add_parser("train-generator", help="train the HealthiVert-GAN generator (PyTorch)",
                       description="Train the pseudo-healthy generator on healthy vertebrae of procedural phantoms "
                       "(made on the fly), a phantom dataset and/or real cases, with validation, checkpoints and "
                       "--resume. Runs under torchrun for several processes (DistributedDataParallel). Writes "
                       "OUT/generator.safetensors + OUT/generator.json (model card), OUT/checkpoint.safetensors, "
                       "OUT/scalars.jsonl, OUT/validation.json. Weights trained on simulated data are for research only.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder.")
    p.add_argument("--phantoms", type=int, default=0, metavar="N", help="N phantom spines made on the fly (default 0).")
    p.add_argument("--phantom-levels", default=None, metavar="RANGE",
                   help="levels of the phantoms, e.g. T10-L5 (default: random start T1-T8, down to L5).")
    p.add_argument("--phantom-dir", default=None, metavar="DIR",
                   help="a phantom dataset from 'healthivert simulate --phantom' (manifest.csv + vertebra_data.json).")
    p.add_argument("--cases", default=None, metavar="DIR",
                   help="real cases with CTs (folder or manifest in the 'healthivert batch' layout).")
    p.add_argument("--grades", default=None, metavar="JSON", help="vertebra_data.json grade file for --cases.")
    p.add_argument("--max-grade", type=int, default=1,
                   help="Genant grades up to this count as healthy training targets (default 1, as the reference).")
    p.add_argument("--val-phantoms", type=int, default=2, help="held-out validation phantoms (default 2).")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000).")
    p.add_argument("--batch-size", type=int, default=8, help="slices per step and process (default 8).")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4, betas 0.5/0.999).")
    p.add_argument("--val-every", type=int, default=100, help="validate every N steps (default 100).")
    p.add_argument("--val-samples", type=int, default=48, help="fixed validation slices (default 48).")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N steps (default 100).")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint (file, or a folder holding checkpoint.safetensors).")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed, 0 or more (default 0).")
    p.add_argument("--ngf", type=int, default=8, help="generator width (reference 16; default 8).")
    p.add_argument("--ndf", type=int, default=16, help="discriminator width (reference 64; default 16).")
    _add_slice_options(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: PyTorch's).")
    p.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                   help="stop after MIN minutes of training (checkpoint and weights are written; the model card "
                   "records the steps done).")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA.")
    p.add_argument("--progress", default="bar", choices=["bar", "none"], help="progress display.")
    p.set_defaults(func=_cmd_train_generator)


def _cmd_train_generator(args: argparse.Namespace) -> int:
    from ..io.files import check_output_dir

    check_output_dir(args.out)  # before any computing
    try:
        from ..training.generator import TrainOptions, train
    except ImportError as err:
        raise HealthiVertError(f"train-generator needs PyTorch and safetensors ({err}): pip install torch safetensors") from None
    opts = TrainOptions(
        out=args.out, phantoms=args.phantoms, phantom_levels=args.phantom_levels, phantom_dir=args.phantom_dir,
        cases=args.cases, grades=args.grades, max_grade=args.max_grade, val_phantoms=args.val_phantoms,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, val_every=args.val_every, val_samples=args.val_samples,
        checkpoint_every=args.checkpoint_every, resume=args.resume, device=args.device, seed=args.seed,
        ngf=args.ngf, ndf=args.ndf, rows=args.size[0], cols=args.size[1], spacing=args.spacing,
        threads=args.threads, time_limit_min=args.time_limit, amp=not args.no_amp, progress=args.progress == "bar",
        command="healthivert train-generator " + " ".join(sys.argv[2:]),
    )
    _, metrics = train(opts)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return 0
    if metrics:
        print("Validation: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print(f"Weights: {Path(args.out) / 'generator.safetensors'} (model card generator.json). Research use only.")
    return 0


def _add_train_hgam(sub) -> None:
    p = sub.add_parser("train-hgam", help="train the HGAM fracture classifier (PyTorch)",
                       description="Train the HGAM fracture classifier (whose Grad-CAM++ guides the generator) on "
                       "sagittal slices of procedural phantoms with simulated fractures (Genant >= 1 = fractured), "
                       "validated on held-out phantoms. Writes OUT/hgam_classifier.safetensors + OUT/hgam_classifier.json "
                       "(model card). The slice size and spacing must match the generator's. Trained on simulated "
                       "data: research use only.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder.")
    p.add_argument("--cases", type=int, default=80, metavar="N", help="training phantoms (default 80).")
    p.add_argument("--val-cases", type=int, default=20, metavar="N", help="held-out validation phantoms (default 20).")
    p.add_argument("--epochs", type=int, default=12, help="training epochs (default 12).")
    p.add_argument("--batch-size", type=int, default=32, help="slices per step (default 32).")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3).")
    _add_slice_options(p, same_as=", as the generator's")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed, 0 or more (default 0).")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's).")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--progress", default="bar", choices=["bar", "none"], help="progress display.")
    p.set_defaults(func=_cmd_train_hgam)


def _cmd_train_hgam(args: argparse.Namespace) -> int:
    from ..io.files import check_output_dir

    check_output_dir(args.out)  # before any computing
    try:
        import torch

        from ..training.hgam import train_hgam
    except ImportError as err:
        raise HealthiVertError(f"train-hgam needs PyTorch and safetensors ({err}): pip install torch safetensors") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    command = (f"healthivert train-hgam --out {Path(args.out).name} --cases {args.cases} --val-cases {args.val_cases} "
               f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} --size {args.size[0]} {args.size[1]} "
               f"--spacing {args.spacing} --seed {args.seed}" + (f" --threads {args.threads}" if args.threads else "")
               + (f" --device {args.device}" if args.device != "auto" else ""))
    metrics = train_hgam(args.out, cases=args.cases, val_cases=args.val_cases, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, rows=args.size[0], cols=args.size[1],
                         spacing=args.spacing, command=command,
                         progress=args.progress == "bar", device=args.device)
    print(f"Validation: accuracy {metrics['accuracy']:.3f}, ROC AUC {metrics['roc_auc']:.3f} on {metrics['n']} slices.")
    print(f"Weights: {Path(args.out) / 'hgam_classifier.safetensors'} (model card hgam_classifier.json). "
          "Trained on simulated data: research use only.")
    return 0


def add_research_commands(sub) -> None:
    """Add the research subcommands to the ``healthivert`` parser's subparsers."""
    _add_train(sub)
    _add_bench(sub)
    _add_simulate(sub)
    _add_train_generator(sub)
    _add_train_hgam(sub)
