#!/usr/bin/env python
"""Benchmark of ``healthivert grade --all`` on a whole-spine, full-resolution CT (issue 13; not a test).

Run from the repository root, with the previous implementation checked out beside it::

    git worktree add /tmp/hv-base <commit before the change>
    python benchmarks/bench_whole_spine.py --baseline /tmp/hv-base --markdown benchmarks/whole_spine.md

Cases, made by the script (``--work``):

* ``whole``: a T1-L5 phantom (``truth.phantom.make_phantom``, 0.78 x 0.78 x 0.8 mm, labels and an int16
  CT) on 595 slices, padded with air to a 400 mm field of view: 512 x 512 x 595 voxels (156 Mvoxel);
* ``unpadded``: the same spine on its own 207 x 295 x 595 grid (36 Mvoxel): ``whole`` / ``unpadded``
  is what padding the field of view costs;
* ``crop3``: three vertebrae (L1-L3) of ``unpadded``;
* ``sample``: the bundled sample (TotalSegmentator labels, 3 mm).

Each measurement is the cold command (``python -m HealthiVertLib.app.cli grade --seg --ct --all``:
interpreter start, imports, grading, every output written) in its own process, with ``PYTHONPATH``
pointing at the implementation measured. Wall time from the start to the exit; peak RSS: the
largest resident set of the command's process (``wait4`` ``ru_maxrss``) and the peak of the summed
resident sets of its process tree (the figure-drawing processes included), sampled every 20 ms with
psutil (shared pages of forked processes are counted in each, so the sum overstates); stage times
from the ``timing_s`` of its ``report.json``. The previous and the current implementation run
interleaved, one after the other for every configuration in every repeat, so a busy machine slows
both alike; medians over the repeats.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACING = (0.78, 0.78, 0.8)
WHOLE_SIZE = (512, 512, 595)
STAGES = ("load", "geometry", "bodies", "engine", "heights", "views", "volumes", "total")
CASES = ("whole", "unpadded", "crop3", "sample")
TARGETS = {"context_figures_s": 8.0, "generator_figures_s": 20.0, "rss_gb": 1.5, "padding_ratio": 1.3}


# --------------------------------------------------------------------------- cases


def make_cases(work: Path) -> dict[str, dict]:
    """Write the benchmark cases into ``work`` (once; reused when present) and describe them."""
    import numpy as np
    import SimpleITK as sitk

    from HealthiVertLib.io.resources import SAMPLE_DIR

    work.mkdir(parents=True, exist_ok=True)
    files = {c: (work / f"{c}_seg.nii.gz", work / f"{c}_ct.nii.gz") for c in ("whole", "unpadded", "crop3")}
    if not all(p.exists() for pair in files.values() for p in pair):
        from HealthiVertLib.truth.phantom import make_phantom

        ph = make_phantom("T1-L5", spacing=SPACING)
        seg, ct = ph.seg, ph.ct
        labelled = np.flatnonzero(sitk.GetArrayViewFromImage(seg).any(axis=(1, 2)))
        first = int(max(0, (labelled[0] + labelled[-1] + 1) // 2 - WHOLE_SIZE[2] // 2))
        first = min(first, seg.GetSize()[2] - WHOLE_SIZE[2])
        seg, ct = seg[:, :, first:first + WHOLE_SIZE[2]], ct[:, :, first:first + WHOLE_SIZE[2]]
        lower = [(WHOLE_SIZE[k] - seg.GetSize()[k]) // 2 for k in range(2)] + [0]
        upper = [WHOLE_SIZE[k] - seg.GetSize()[k] - lower[k] for k in range(2)] + [0]
        sitk.WriteImage(seg, str(files["unpadded"][0]), True)
        sitk.WriteImage(ct, str(files["unpadded"][1]), True)
        sitk.WriteImage(sitk.ConstantPad(seg, lower, upper, 0), str(files["whole"][0]), True)
        sitk.WriteImage(sitk.ConstantPad(ct, lower, upper, -1024), str(files["whole"][1]), True)
        # three vertebrae: L1-L3 (VerSe 20-22) and 10 mm of what lies around them along the spine
        array = sitk.GetArrayViewFromImage(seg)
        rows = np.flatnonzero(np.isin(array, [20, 21, 22]).any(axis=(1, 2)))
        pad = int(round(10 / SPACING[2]))
        z0, z1 = max(0, rows[0] - pad), min(array.shape[0], rows[-1] + 1 + pad)
        crop = np.where(np.isin(array[z0:z1], [20, 21, 22]), array[z0:z1], 0).astype(np.uint16)
        crop_seg = sitk.GetImageFromArray(crop)
        crop_seg.CopyInformation(seg[:, :, z0:z1])
        sitk.WriteImage(crop_seg, str(files["crop3"][0]), True)
        sitk.WriteImage(ct[:, :, z0:z1], str(files["crop3"][1]), True)
    out = {}
    for case, (seg_path, ct_path) in {**files, "sample": (SAMPLE_DIR / "seg.nii.gz", SAMPLE_DIR / "ct.nii.gz")}.items():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(seg_path))
        reader.ReadImageInformation()
        size = reader.GetSize()
        out[case] = {"seg": str(seg_path), "ct": str(ct_path), "size": list(size),
                     "spacing": [round(s, 3) for s in reader.GetSpacing()], "mvoxel": float(np.prod(size)) / 1e6}
    return out


# --------------------------------------------------------------------------- one measurement


def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of process ``pid`` and its descendants."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(impl: Path, case: dict, engine: str, figures: bool) -> dict:
    """One cold ``grade --all`` of ``case`` with the code at ``impl``: wall s, peak RSS, stages."""
    with tempfile.TemporaryDirectory(prefix="hv-whole-") as tmp:
        cmd = [sys.executable, "-m", "HealthiVertLib.app.cli", "grade", "--seg", case["seg"], "--ct", case["ct"],
               "--all", "--engine", engine, "--out", tmp, "--progress", "none"]
        if not figures:
            cmd.append("--no-figures")
        env = {**os.environ, "PYTHONPATH": str(impl)}
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        done.set()
        sampler.join()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{' '.join(cmd)} (PYTHONPATH={impl}) failed:\n{err[-3000:]}")
        report = json.loads((Path(tmp) / "report.json").read_text(encoding="utf-8"))
    graded = [v for v in report["vertebrae"] if v["status"] == "graded"]
    return {"wall_s": wall, "rss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": peak[0] / 2**20,
            "stages": report["timing_s"], "graded": len(graded), "vertebrae": len(report["vertebrae"]),
            "grades": {v["level"]: v["grade"] for v in graded},
            "rhlv": {v["level"]: v["rhlv"]["overall"] for v in graded}}


# --------------------------------------------------------------------------- the run


def plan(engines: list[str], cases: list[str]) -> list[tuple[str, str, bool]]:
    """(case, engine, figures) of every configuration measured."""
    out = []
    for case in cases:
        for engine in engines:
            for figures in (True, False):
                if engine == "generator" and not figures and case != "whole":
                    continue  # the generator's figures cost what the others' do: measured on the whole spine only
                out.append((case, engine, figures))
    return out


def run(args) -> dict:
    # made in a child process: this one stays small, and so does every command it forks (ru_maxrss of a
    # forked child counts the pages it shared with its parent before exec)
    made = subprocess.run([sys.executable, __file__, "--make-cases", "--work", args.work], capture_output=True, text=True)
    if made.returncode != 0:
        raise RuntimeError(made.stderr)
    cases = json.loads(made.stdout)
    current = Path(args.current).resolve() if args.current else ROOT
    impls = {"new": current}
    if args.baseline:
        impls = {"previous": Path(args.baseline).resolve(), "new": current}
    configs = plan(args.engines, args.cases)
    results: dict[str, list] = {}
    t0 = time.perf_counter()
    for r in range(args.repeats):
        for case, engine, figures in configs:
            for name, impl in impls.items():
                key = f"{case}|{engine}|{int(figures)}|{name}"
                m = measure(impl, cases[case], engine, figures)
                results.setdefault(key, []).append(m)
                print(f"[{time.perf_counter() - t0:6.0f} s] repeat {r + 1} {case:8s} {engine:9s} figures={figures!s:5s} "
                      f"{name:8s} {m['wall_s']:6.2f} s {m['rss_mb']:6.0f} MB (tree {m['tree_rss_mb']:.0f})",
                      file=sys.stderr, flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(portable({"cases": cases, "results": results}), indent=1),
                                               encoding="utf-8")
    return {"cases": cases, "results": results, "impls": {k: str(v) for k, v in impls.items()},
            "elapsed_s": time.perf_counter() - t0, "repeats": args.repeats,
            "measured": [{"engines": args.engines, "commits": {k: _commit(v) for k, v in impls.items()}}]}


# --------------------------------------------------------------------------- report


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _stage(runs: list[dict], stage: str) -> float:
    return statistics.median(r["stages"].get(stage, 0.0) for r in runs)


def _commit(path: Path) -> str:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return done.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def render(data: dict) -> str:
    cases, results, impls = data["cases"], data["results"], data["impls"]
    have_prev = "previous" in impls
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    lines = ["# Benchmark: a whole-spine, full-resolution CT (issue 13)", "",
             f"Measured {now} by `benchmarks/bench_whole_spine.py` on {platform.processor() or platform.machine()}, "
             f"{cores} cores shared with other jobs (timings are noisy: the two implementations ran interleaved, "
             f"medians of up to {data['repeats']} runs per configuration). Code measured: "
             + "; ".join(f"{', '.join(m['engines'])}: " + ", ".join(f"{k} {c}" for k, c in m["commits"].items())
                         for m in data["measured"]) + ".", "",
             "Reproduce: `git worktree add /tmp/hv-base <previous commit>` then "
             "`python benchmarks/bench_whole_spine.py --baseline /tmp/hv-base --markdown benchmarks/whole_spine.md`.", "",
             "Cold command `healthivert grade --seg SEG --ct CT --all --engine E [--no-figures]`, every output written. "
             "Peak RSS: the command's own process (`ru_maxrss`); tree: the summed RSS of the process and its "
             "figure-drawing children, sampled every 20 ms (forked pages counted in each).", "", "## Cases", ""]
    rows = [[c, "×".join(map(str, d["size"])), "×".join(map(str, d["spacing"])), f"{d['mvoxel']:.0f}"]
            for c, d in cases.items()]
    lines += _table(["case", "voxels", "spacing mm", "Mvoxel"], rows) + [""]
    lines += ["`whole`: T1–L5 phantom padded with air to 512×512×595; `unpadded`: the same spine on its own grid; "
              "`crop3`: L1–L3 of it; `sample`: the bundled TotalSegmentator sample (3 mm).", "", "## Wall time and memory", ""]
    header = ["case", "engine", "figures", "graded", "runs"]
    if have_prev:
        header += ["previous s", "new s", "time ratio", "previous RSS MB", "new RSS MB", "RSS ratio",
                   "new tree RSS MB", "new s / vertebra"]
    else:
        header += ["new s", "new RSS MB", "new tree RSS MB", "new s / vertebra"]
    rows = []
    configs = sorted({tuple(k.split("|")[:3]) for k in results}, key=lambda c: (CASES.index(c[0]), c[1], -int(c[2])))
    for case, engine, fig in configs:
        new = results.get(f"{case}|{engine}|{fig}|new", [])
        if not new:
            continue
        n = new[0]["graded"]
        row = [case, engine, "yes" if fig == "1" else "no", str(n), str(len(new))]
        w, m, tree = _median(new, "wall_s"), _median(new, "rss_mb"), _median(new, "tree_rss_mb")
        if have_prev:
            prev = results.get(f"{case}|{engine}|{fig}|previous", [])
            pw, pm = _median(prev, "wall_s"), _median(prev, "rss_mb")
            row += [f"{pw:.1f}", f"{w:.1f}", f"{w / pw:.2f}", f"{pm:.0f}", f"{m:.0f}", f"{m / pm:.2f}", f"{tree:.0f}",
                    f"{w / max(n, 1):.2f}"]
        else:
            row += [f"{w:.1f}", f"{m:.0f}", f"{tree:.0f}", f"{w / max(n, 1):.2f}"]
        rows.append(row)
    lines += _table(header, rows) + [""]

    lines += ["## Stages (medians, s; `whole` case)", ""]
    stage_rows = []
    for case, engine, fig in configs:
        if case != "whole":
            continue
        for name in ("previous", "new") if have_prev else ("new",):
            runs = results.get(f"{case}|{engine}|{fig}|{name}", [])
            if runs:
                rest = statistics.median(r["wall_s"] - r["stages"].get("load", 0.0) - r["stages"].get("total", 0.0)
                                         for r in runs)
                stage_rows.append([engine, "yes" if fig == "1" else "no", name,
                                   *[f"{_stage(runs, s):.2f}" for s in STAGES], f"{rest:.2f}",
                                   f"{_median(runs, 'wall_s'):.2f}"])
    lines += _table(["engine", "figures", "code", *STAGES[:-1], "grade_case", "rest", "wall"], stage_rows) + [""]
    lines += ["`load`: read and check the inputs (and, new, crop them to the spine's box); `geometry` … `volumes`: "
              "stages of `grade_case`, `grade_case` its total; `rest`: wall minus both: interpreter start, imports, "
              "and writing report, volumes on the input grid, figures and HTML.", ""]

    lines += ["## Targets", ""]
    lines += targets(results, cases, have_prev)
    lines += ["", "## Same numbers", ""]
    lines += same_numbers(results)
    lines += ["", f"Benchmark wall time: {data['elapsed_s'] / 60:.0f} min.", ""]
    return "\n".join(lines)


def targets(results: dict, cases: dict, have_prev: bool) -> list[str]:
    """The issue's targets, met or not, with the numbers."""
    out = []

    def med(case, engine, fig, name, key):
        runs = results.get(f"{case}|{engine}|{fig}|{name}")
        return _median(runs, key) if runs else None

    for engine, limit in (("context", TARGETS["context_figures_s"]), ("spine", TARGETS["context_figures_s"]),
                          ("generator", TARGETS["generator_figures_s"])):
        w = med("whole", engine, "1", "new", "wall_s")
        if w is None:
            continue
        rss = med("whole", engine, "1", "new", "rss_mb")
        out.append(f"- `whole`, {engine}, figures: {w:.1f} s (target ≤ {limit:g} s: {'met' if w <= limit else 'NOT met'}); "
                   f"peak RSS {rss / 1024:.2f} GB (target ≤ {TARGETS['rss_gb']} GB: "
                   f"{'met' if rss / 1024 <= TARGETS['rss_gb'] else 'NOT met'}).")
    for engine in ("context", "spine", "generator"):
        for fig in ("1", "0"):
            pairs = {name: (med("whole", engine, fig, name, "wall_s"), med("unpadded", engine, fig, name, "wall_s"),
                            med("whole", engine, fig, name, "rss_mb"), med("unpadded", engine, fig, name, "rss_mb"))
                     for name in (("previous", "new") if have_prev else ("new",))}
            if any(v is None for v in pairs["new"]):
                continue
            text = []
            for name, (wp, wu, mp, mu) in pairs.items():
                if None in (wp, wu, mp, mu):
                    continue
                text.append(f"{name} {wp / wu:.2f}× time, {mp / mu:.2f}× memory")
            wp, wu, mp, mu = pairs["new"]
            met = wp / wu <= TARGETS["padding_ratio"] and mp / mu <= TARGETS["padding_ratio"]
            ratio = cases["whole"]["mvoxel"] / cases["unpadded"]["mvoxel"]
            out.append(f"- padding {cases['unpadded']['mvoxel']:.0f} → {cases['whole']['mvoxel']:.0f} Mvoxel "
                       f"({ratio:.1f}× the voxels), {engine}, figures {'yes' if fig == '1' else 'no'}: "
                       f"{'; '.join(text)} (target ≤ {TARGETS['padding_ratio']}×: {'met' if met else 'NOT met'}).")
    return out


def same_numbers(results: dict) -> list[str]:
    """Whether both implementations gave the same grades and RHLV in every run."""
    out = []
    for key in sorted(k for k in results if k.endswith("|new")):
        prev = results.get(key[: -len("new")] + "previous")
        if not prev:
            continue
        new = results[key]
        grades = all(r["grades"] == prev[0]["grades"] for r in new + prev)
        diff = max((abs(r["rhlv"][lv] - prev[0]["rhlv"][lv]) for r in new for lv in r["rhlv"]), default=0.0)
        case, engine, fig, _ = key.split("|")
        out.append(f"- {case}, {engine}, figures {'yes' if fig == '1' else 'no'}: grades "
                   f"{'identical' if grades else 'DIFFERENT'}, largest overall-RHLV difference {diff:.1e}.")
    return out


def portable(data: dict) -> dict:
    """``data`` without this machine's paths: case files relative to the repository (or just their name
    when made in the work folder), checkouts by role (their commits are in ``measured``)."""
    def where(path: str) -> str:
        p = Path(path)
        return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else f"<work>/{p.name}"

    out = dict(data)
    out["cases"] = {name: {**case, "seg": where(case["seg"]), "ct": where(case["ct"])}
                    for name, case in data.get("cases", {}).items()}
    if "impls" in data:
        out["impls"] = {name: f"<{name} checkout>" for name in data["impls"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="DIR", help="a checkout of the previous implementation (git worktree)")
    parser.add_argument("--current", metavar="DIR",
                        help="a checkout of the code to measure (default: this repository's working tree)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "hv-whole-spine"),
                        help="folder for the generated cases (kept and reused)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engines", nargs="+", default=["context", "spine"], choices=["context", "spine", "generator"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", metavar="PATH", help="raw measurements (also written after every run)")
    parser.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                        help="render these raw files (from --json) together instead of measuring")
    parser.add_argument("--markdown", metavar="PATH")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's Notes (repeatable)")
    parser.add_argument("--make-cases", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_cases:
        print(json.dumps(make_cases(Path(args.work))))
        return 0
    if args.merge:
        data = {"cases": {}, "results": {}, "impls": {}, "elapsed_s": 0.0, "repeats": 0, "measured": []}
        for path in args.merge:
            part = json.loads(Path(path).read_text(encoding="utf-8"))
            data["cases"].update(part["cases"])
            data["results"].update(part["results"])
            data["impls"].update(part.get("impls", {}))
            data["elapsed_s"] += part.get("elapsed_s", 0.0)
            data["repeats"] = max(data["repeats"], part.get("repeats", 0))
            data["measured"] += part.get("measured", [])
    else:
        data = run(args)
        if args.json:
            Path(args.json).write_text(json.dumps(portable(data), indent=1), encoding="utf-8")
    text = render(data)
    if args.note:
        text += "\n## Notes\n\n" + "\n".join(f"- {n}" for n in args.note) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
