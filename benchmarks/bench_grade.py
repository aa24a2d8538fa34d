#!/usr/bin/env python
"""Benchmark of ``healthivert grade --all`` on the bundled sample case (not a test).

Run from the repository root::

    python benchmarks/bench_grade.py                       # print the tables
    python benchmarks/bench_grade.py --markdown benchmarks/results.md

Every configuration runs in its own fresh process (``multiprocessing`` spawn context), so that
its peak resident memory (``ru_maxrss``) is its own.  Inside that process: imports, one warm-up
run (reported as "first run"), ``--repeats`` timed runs (medians reported), the peak RSS, then
one extra run under ``tracemalloc`` (tracing slows the run down, so it is never timed).

Configurations
  (a) CT + labels, figures on: what ``healthivert demo`` / the README's example does.
  (b) labels only (mask-only), no figures.
  (c) baseline: the geometry preprocessing of the published HealthiVert pipeline on the same
      labels (resample to 1 mm with nearest neighbour, reorient to IPL, reference centroids,
      straighten once, one 256x256x64 crop per vertebra that (b) grades), re-implemented
      bit-compatibly in ``HealthiVertLib.geometry.reference``.  It stops before any synthesis (no GAN,
      no RHLV, no grading, no outputs written), so it is a lower bound of the reference's cost.

The cold command (``python -m HealthiVertLib.app.cli grade ... --all``: interpreter start, imports,
grading, outputs) is also timed for (a) and (b), ``--cli-repeats`` times each.

See benchmarks/README.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPRODUCE = "python benchmarks/bench_grade.py --markdown benchmarks/results.md"
TARGET_S = 5.0
TARGET_CORES = 2
CASE_NAME = "sample-totalsegmentator"

#: Stages of ``grade_case`` (its ``CaseResult.timing_s``), in pipeline order.
PIPELINE_STAGES = ("geometry", "bodies", "engine", "heights", "grading", "views", "volumes")
#: Rows of the per-stage table of (a) and (b).
OURS_STAGES = ("load", *PIPELINE_STAGES, "other", "write", "total")
STAGE_NOTES = {
    "load": "read + validate labels (and CT), detect the numbering",
    "geometry": "grader load, vertebra list, spine curve",
    "bodies": "vertebral bodies in their local frames (targets + neighbours)",
    "engine": "pseudo-healthy prediction (the default engine)",
    "heights": "heights, RHLV, loss map",
    "grading": "SVM grade",
    "views": "sagittal CT/mask planes, results mapped back to the input grid",
    "volumes": "output volumes as images",
    "other": "rest of grade_case (CT array, volume buffers)",
    "write": "report.json/.csv, 3 volumes, figures (a), index.html",
    "total": "load -> outputs written",
}
BASELINE_STAGES = ("load", "relabel", "resample", "centroids", "straighten", "crops", "total")
BASELINE_NOTES = {
    "load": "read the label map",
    "relabel": "TotalSegmentator -> VerSe numbering, non-vertebrae -> 0",
    "resample": "to 1 mm isotropic IPL in one nearest-neighbour resample, to array",
    "centroids": "reference centroids (mean voxel index per label)",
    "straighten": "reference_straighten once (float64, posterior elements removed)",
    "crops": "crop_straightened per graded vertebra (256x256x64)",
    "total": "load -> crops",
}
CONFIGS = {
    "a": "(a) CT + labels, figures",
    "b": "(b) labels only, no figures",
    "c": "(c) baseline: reference preprocessing",
}


# --------------------------------------------------------------------------- memory helpers


def _rss_kib() -> int:
    """Current resident set size of this process (KiB), from /proc/self/status."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # best effort off Linux


def _maxrss_kib() -> int:
    """Peak resident set size of this process so far (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------- one run of each kind


def _run_ours(seg: Path, ct: Path | None, out: Path, figures: bool) -> tuple[dict, dict]:
    """What ``healthivert grade`` does (``app.cli``), with the same calls in the same order, timed."""
    from HealthiVertLib.engines import DEFAULT_ENGINE
    from HealthiVertLib.io.case import load_case
    from HealthiVertLib.pipeline.case import grade_case
    from HealthiVertLib.outputs.tables import summary_table
    from HealthiVertLib.outputs.report import write_outputs
    from HealthiVertLib.pipeline.records import GRADED

    t0 = time.perf_counter()
    case = load_case(seg, ct, None, labels=None, name=CASE_NAME)
    load_s = time.perf_counter() - t0
    result = grade_case(case, None, engine=DEFAULT_ENGINE, grader=None, progress=lambda f, m: None)
    t = time.perf_counter()
    write_outputs(result, out, figures=figures)
    summary_table(result)
    write_s = time.perf_counter() - t
    total_s = time.perf_counter() - t0

    timing = result.timing_s
    stages = {"load": load_s, **{k: timing.get(k, 0.0) for k in PIPELINE_STAGES}}
    stages["other"] = timing["total"] - sum(timing.get(k, 0.0) for k in PIPELINE_STAGES)
    stages.update(write=write_s, total=total_s)
    info = {
        "levels": [v.level for v in result.vertebrae],
        "graded": [v.level for v in result.vertebrae if v.status == GRADED],
        "grades": {v.level: v.grade for v in result.vertebrae if v.status == GRADED},
        "n_files": sum(1 for p in out.rglob("*") if p.is_file()),
    }
    return stages, info


def _run_baseline(seg: Path, graded: list[str]) -> tuple[dict, dict]:
    """The reference HealthiVert geometry preprocessing of the same labels, timed per step."""
    import numpy as np
    import SimpleITK as sitk

    from HealthiVertLib.geometry import reference as ref
    from HealthiVertLib.io.labels import TOTALSEG, verse_label

    stages = {}
    t0 = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    image = sitk.ReadImage(str(seg))
    lap("load")

    # The reference reads VerSe-numbered vertebra masks: keep the vertebrae, renumber them.
    array = sitk.GetArrayViewFromImage(image)
    lut = np.zeros(int(array.max()) + 1, np.uint8)
    for label, level in TOTALSEG.label_to_level.items():
        if label < lut.size and verse_label(level) is not None:
            lut[label] = verse_label(level)
    verse = sitk.GetImageFromArray(lut[array])
    verse.CopyInformation(image)
    lap("relabel")

    # 1 mm isotropic over the same physical extent, nearest neighbour, written straight onto the
    # I-P-L grid the reference needs: one resample, the same voxels as Resample + DICOMOrient
    # (checked by _check_orientation) without ITK's slow axis permutation of a 1 mm volume.
    grid = ipl_grid(image)
    oriented = sitk.Resample(verse, grid["size"], sitk.Transform(), sitk.sitkNearestNeighbor, grid["origin"],
                             grid["spacing"], grid["direction"], 0, verse.GetPixelID())
    mask = sitk.GetArrayFromImage(oriented).transpose(2, 1, 0)
    lap("resample")

    centroids = ref.reference_centroids(mask)
    lap("centroids")
    straightened, curve = ref.reference_straighten(mask, centroids)
    lap("straighten")
    targets = [verse_label(level) for level in graded]
    crops = [ref.crop_straightened(straightened, curve, centroids, label) for label in targets]
    lap("crops")
    stages["total"] = time.perf_counter() - t0

    info = {
        "mask_shape": list(mask.shape),
        "straightened_shape": list(straightened.shape),
        "centroid_labels": [c["label"] for c in centroids],
        "crop_target_voxels": {level: int(np.count_nonzero(c == label))
                               for level, label, c in zip(graded, targets, crops)},
    }
    return stages, info


def ipl_grid(image, spacing_mm: float = 1.0) -> dict:
    """The 1 mm grid over ``image``'s extent, oriented I-P-L (axis 0 inferior, 1 posterior, 2 left).

    Voxel centres are those of resampling ``image`` to ``spacing_mm`` in its own orientation and
    then ``sitk.DICOMOrient(..., "IPL")``.
    """
    import numpy as np

    spacing = np.array(image.GetSpacing())
    new_spacing = np.full(3, spacing_mm)
    size = np.array([int(round(n)) for n in np.array(image.GetSize()) * spacing / new_spacing])
    direction = np.array(image.GetDirection()).reshape(3, 3)  # columns: index axes in LPS
    origin = np.array(image.GetOrigin()) + direction @ ((new_spacing - spacing) / 2)
    ipl = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # columns: I, P, L in LPS
    dots = direction.T @ ipl  # [input axis, IPL axis]
    axes = np.abs(dots).argmax(axis=0)
    corner = np.zeros(3)
    for k, j in enumerate(axes):
        if dots[j, k] < 0:
            corner[j] = size[j] - 1
    return {
        "size": [int(size[j]) for j in axes],
        "origin": (origin + direction @ (corner * new_spacing)).tolist(),
        "spacing": new_spacing.tolist(),
        "direction": ipl.flatten().tolist(),
        "own_orientation": {"size": size.tolist(), "origin": origin.tolist(), "spacing": new_spacing.tolist(),
                            "direction": list(image.GetDirection())},
    }


def _check_orientation(seg: Path) -> bool:
    """True when the one-step IPL resample equals SimpleITK's Resample + DICOMOrient (untimed)."""
    import SimpleITK as sitk

    from HealthiVertLib.geometry.reference import ORIENTATION

    image = sitk.ReadImage(str(seg))
    grid = ipl_grid(image)
    own = grid["own_orientation"]
    two_step = sitk.DICOMOrient(
        sitk.Resample(image, own["size"], sitk.Transform(), sitk.sitkNearestNeighbor, own["origin"],
                      own["spacing"], own["direction"], 0, image.GetPixelID()), ORIENTATION)
    one_step = sitk.Resample(image, grid["size"], sitk.Transform(), sitk.sitkNearestNeighbor, grid["origin"],
                             grid["spacing"], grid["direction"], 0, image.GetPixelID())
    same_grid = (two_step.GetSize() == one_step.GetSize()
                 and max(abs(a - b) for a, b in zip(two_step.GetOrigin(), one_step.GetOrigin())) < 1e-6
                 and max(abs(a - b) for a, b in zip(two_step.GetDirection(), one_step.GetDirection())) < 1e-9)
    return bool(same_grid and (sitk.GetArrayViewFromImage(two_step) == sitk.GetArrayViewFromImage(one_step)).all())


# --------------------------------------------------------------------------- one configuration


def run_config(config: str, repeats: int, seg: str, ct: str, graded: list[str] | None) -> dict:
    """Run one configuration in this (fresh) process; return timings and memory."""
    rss_start = _rss_kib()
    t = time.perf_counter()
    if config == "c":
        import numpy  # noqa: F401
        import SimpleITK  # noqa: F401

        import HealthiVertLib.io.labels  # noqa: F401
        import HealthiVertLib.geometry.reference  # noqa: F401

        def once(out: Path) -> tuple[dict, dict]:
            return _run_baseline(Path(seg), graded or [])
    else:
        import HealthiVertLib.io  # noqa: F401
        import HealthiVertLib.pipeline  # noqa: F401
        import HealthiVertLib.outputs  # noqa: F401

        def once(out: Path) -> tuple[dict, dict]:
            return _run_ours(Path(seg), Path(ct) if config == "a" else None, out, figures=config == "a")
    import_s = time.perf_counter() - t
    rss_imports = _rss_kib()

    import tracemalloc

    with tempfile.TemporaryDirectory(prefix="hv-bench-") as tmp:
        first, info = once(Path(tmp) / "warmup")
        runs = [once(Path(tmp) / f"run{i}")[0] for i in range(repeats)]
        peak_rss = _maxrss_kib()
        tracemalloc.start()
        once(Path(tmp) / "traced")
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    if config == "c":
        info["orientation_check"] = _check_orientation(Path(seg))

    keys = list(first)
    return {
        "config": config,
        "repeats": repeats,
        "import_s": import_s,
        "first": first,
        "runs": runs,
        "median": {k: statistics.median(r[k] for r in runs) for k in keys},
        "min": {k: min(r[k] for r in runs) for k in keys},
        "max": {k: max(r[k] for r in runs) for k in keys},
        "rss_start_kib": rss_start,
        "rss_imports_kib": rss_imports,
        "peak_rss_kib": peak_rss,
        "tracemalloc_peak_b": traced_peak,
        "info": info,
    }


def in_fresh_process(*args) -> dict:
    """``run_config`` in a new spawned interpreter (nothing inherited, own ru_maxrss)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_config, *args).result()


def cold_cli(seg: Path, ct: Path | None, figures: bool, repeats: int) -> dict:
    """Wall time and peak RSS of the whole command in a new interpreter, ``repeats`` times."""
    walls, rss = [], []
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="hv-bench-cli-") as tmp:
            cmd = [sys.executable, "-m", "HealthiVertLib.app.cli", "grade", "--seg", str(seg), "--all",
                   "--out", tmp, "--progress", "none"]
            if ct is not None:
                cmd += ["--ct", str(ct)]
            if not figures:
                cmd.append("--no-figures")
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            walls.append(time.perf_counter() - t)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
            rss.append(usage.ru_maxrss)
    return {"walls": walls, "median": statistics.median(walls), "peak_rss_kib": max(rss)}


# --------------------------------------------------------------------------- machine


def machine() -> dict:
    import numpy
    import scipy
    import SimpleITK

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        import matplotlib

        mpl = matplotlib.__version__
    except ImportError:
        mpl = "not installed"
    from HealthiVertLib import __version__ as hv

    return {
        "cpu": cpu,
        "cores_used": cores,
        "cpu_count": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "matplotlib": mpl,
        "healthivert": hv,
        "commit": _git_state(),
    }


def _git_state() -> str:
    """Short commit of the checkout, and whether it has uncommitted changes (read-only git calls)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


# --------------------------------------------------------------------------- report


def _mib(kib: float) -> float:
    return kib / 1024.0


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table (also readable as plain text)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)]


def verdict(results: dict, cli: dict) -> tuple[bool, str, list[str]]:
    """Is every vertebra of the sample graded in under TARGET_S s? Judged on the strictest measure."""
    a = results["a"]
    lines = [f"in-process, CT + figures (a), median: {a['median']['total']:.2f} s",
             f"in-process, labels only (b), median: {results['b']['median']['total']:.2f} s"]
    if "a" in cli:
        judged = cli["a"]["median"]
        how = "the cold `healthivert grade --all` command with CT and figures (a): new interpreter, imports, grading, outputs"
        lines = [f"cold command, {what}, median of {len(cli[k]['walls'])}: {cli[k]['median']:.2f} s "
                 f"(runs: {', '.join(f'{w:.2f}' for w in cli[k]['walls'])})"
                 for k, what in (("a", "CT + figures (a)"), ("b", "labels only (b)"))] + lines
    else:
        judged = a["median"]["total"] + a["import_s"]
        how = "(a) in-process median plus its import time (cold command not timed: --cli-repeats 0)"
    return judged < TARGET_S, f"{judged:.2f} s, judged on {how}", lines


def render(results: dict, cli: dict, mach: dict, args, elapsed: float, markdown: bool) -> str:
    a, b, c = results["a"], results["b"], results["c"]
    base = c["median"]["total"]
    out: list[str] = []
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    graded = a["info"]["graded"]
    met, judged, lines = verdict(results, cli)
    core_note = "" if mach["cores_used"] == TARGET_CORES else \
        f" (measured on {mach['cores_used']} cores, not {TARGET_CORES}: rerun on a 2-core machine to judge the target)"

    if markdown:
        out += ["# Benchmark: `healthivert grade --all` on the bundled sample case", ""]
        out += [f"Measured {now} by `benchmarks/bench_grade.py` (see `benchmarks/README.md`). Reproduce from the "
                "repository root with:", "", "```", REPRODUCE, "```", ""]
    else:
        out += [f"healthivert grade --all on the bundled sample case ({now})", ""]
    out += [f"Machine: {mach['cpu']}, {mach['cores_used']} cores used (of {mach['cpu_count']}), {mach['os']}; "
            f"Python {mach['python']}, numpy {mach['numpy']}, scipy {mach['scipy']}, SimpleITK {mach['SimpleITK']}, "
            f"matplotlib {mach['matplotlib']}, healthivert {mach['healthivert']} at commit {mach['commit']}.", ""]
    out += [f"Case: `HealthiVertLib/data/sample` (122x101x112 voxels at 3 mm, TotalSegmentator labels); "
            f"vertebrae found: {', '.join(a['info']['levels'])}; graded: {', '.join(graded)} "
            f"(grades {', '.join(f'{k} {v}' for k, v in a['info']['grades'].items())}). "
            f"Medians of {args.repeats} run{'s' if args.repeats > 1 else ''} after one warm-up run, each configuration in a fresh process.", ""]

    target = f"**Target: every vertebra of the sample case graded in under {TARGET_S:g} s on {TARGET_CORES} CPU cores: " \
        f"{'MET' if met else 'NOT MET'}** ({judged}){core_note}."
    out += [target if markdown else target.replace("**", ""), ""]
    out += [f"- {line}" for line in lines] + [""]

    if markdown:
        out += ["## Configurations", ""]
    header = ["configuration", "median s", "first run s", "cold command s", "ours / baseline",
              "peak RSS MiB", "RSS after imports MiB", "increment MiB", "tracemalloc peak MiB"]
    rows = []
    for key, r in (("a", a), ("b", b), ("c", c)):
        cold = f"{cli[key]['median']:.2f}" if key in cli else "—"
        rows.append([CONFIGS[key], f"{r['median']['total']:.2f}", f"{r['first']['total']:.2f}", cold,
                     f"{r['median']['total'] / base:.2f}" if key != "c" else "1.00",
                     f"{_mib(r['peak_rss_kib']):.0f}", f"{_mib(r['rss_imports_kib']):.0f}",
                     f"{_mib(r['peak_rss_kib'] - r['rss_imports_kib']):.0f}",
                     f"{r['tracemalloc_peak_b'] / 2**20:.0f}"])
    out += _table(header, rows) + [""]
    cold_rss = ", ".join(f"{k}: {_mib(v['peak_rss_kib']):.0f} MiB" for k, v in cli.items())
    out += ["Peak RSS: `ru_maxrss` of the configuration's own process after the warm-up and timed runs; increment: "
            "peak minus the RSS right after the imports. tracemalloc peak: traced allocations of one extra run "
            "(numpy array buffers, which numpy reports to tracemalloc, plus Python objects; SimpleITK/ITK and "
            "matplotlib Agg buffers are invisible to it). Ratio: median seconds of the row / median of (c); "
            "below 1 means faster than the baseline.", ""]
    out += [f"Import time in the fresh process: (a) {a['import_s']:.2f} s, (b) {b['import_s']:.2f} s, "
            f"(c) {c['import_s']:.2f} s (not in the medians; in the cold command)."
            + (f" Peak RSS of the cold command: {cold_rss}." if cold_rss else ""), ""]

    if markdown:
        out += ["## Per-stage breakdown of (a) and (b)", ""]
    else:
        out += ["Per-stage breakdown (seconds, medians; min-max of (a) in brackets):", ""]
    rows = []
    for stage in OURS_STAGES:
        share = 100 * a["median"][stage] / a["median"]["total"]
        rows.append([stage, f"{a['median'][stage]:.3f}", f"{a['min'][stage]:.3f}-{a['max'][stage]:.3f}",
                     f"{share:.0f} %", f"{b['median'][stage]:.3f}", STAGE_NOTES[stage]])
    out += _table(["stage", "(a) median s", "(a) min-max s", "(a) share", "(b) median s", "what"], rows) + [""]
    out += ["`other` is `grade_case`'s total minus its named stages; stage medians are taken per stage, so they "
            "need not add up exactly to the median total.", ""]

    if markdown:
        out += ["## Baseline (c) per step", ""]
    rows = [[s, f"{c['median'][s]:.3f}", f"{c['min'][s]:.3f}-{c['max'][s]:.3f}", BASELINE_NOTES[s]]
            for s in BASELINE_STAGES]
    out += _table(["step", "median s", "min-max s", "what"], rows) + [""]
    info = c["info"]
    out += [f"1 mm IPL mask {'x'.join(map(str, info['mask_shape']))}, straightened volume "
            f"{'x'.join(map(str, info['straightened_shape']))} (float64); reference centroids for VerSe labels "
            f"{info['centroid_labels']}; target voxels in each crop: "
            f"{', '.join(f'{k} {v}' for k, v in info['crop_target_voxels'].items())}. "
            "The one-step IPL resample gives the same voxels as SimpleITK Resample + DICOMOrient('IPL'): "
            f"{'checked, identical' if info.get('orientation_check') else 'CHECK FAILED'} "
            "(DICOMOrient itself is not timed; see the README). "
            "The baseline is only the reference's geometry preprocessing, before any synthesis: the published "
            "pipeline then runs its generator per vertebra (a GPU model), measures RHLV and grades, none of which "
            "is timed here.", ""]
    out += [f"Benchmark wall time: {elapsed:.0f} s.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (default 5).")
    parser.add_argument("--cli-repeats", type=int, default=3,
                        help="runs of the cold command for (a) and (b) (default 3; 0 skips them).")
    parser.add_argument("--markdown", metavar="PATH", default=None, help="also write the results as markdown.")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    from HealthiVertLib.io.resources import SAMPLE_DIR

    seg, ct = SAMPLE_DIR / "seg.nii.gz", SAMPLE_DIR / "ct.nii.gz"
    if not seg.exists() or not ct.exists():
        parser.error(f"the bundled sample case is missing from {SAMPLE_DIR}")

    t0 = time.perf_counter()
    mach = machine()
    results: dict[str, dict] = {}
    for key in ("a", "b"):
        print(f"running {CONFIGS[key]} ...", file=sys.stderr, flush=True)
        results[key] = in_fresh_process(key, args.repeats, str(seg), str(ct), None)
    graded = results["b"]["info"]["graded"]
    print(f"running {CONFIGS['c']} on {', '.join(graded)} ...", file=sys.stderr, flush=True)
    results["c"] = in_fresh_process("c", args.repeats, str(seg), str(ct), graded)
    cli = {}
    if args.cli_repeats > 0:
        for key in ("a", "b"):
            print(f"running the cold command {CONFIGS[key]} ...", file=sys.stderr, flush=True)
            cli[key] = cold_cli(seg, ct if key == "a" else None, key == "a", args.cli_repeats)
    elapsed = time.perf_counter() - t0

    print(render(results, cli, mach, args, elapsed, markdown=False))
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(results, cli, mach, args, elapsed, markdown=True), encoding="utf-8")
        print(f"written {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
