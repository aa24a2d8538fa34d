"""Speed of the ``generator`` engine per vertebra, against the ``context`` engine in the same run.

For every graded vertebra of the bundled sample case (L1-L5) it times, in-process:

* ``engine``: the engine's ``predict`` alone (for the generator: sagittal + coronal slices,
  iterative passes on the upper and lower neighbour then the target, one batched forward pass per
  view and pass, 2.5D fusion, SHRM);
* ``end to end``: ``pipeline.grade_case`` for that one vertebra with the CT, output volumes
  included (bodies, engine, heights, grading, mapping back to the input grid); no figures.

Medians over ``--repeats`` runs after one warm-up, for each number of PyTorch threads asked for
(``--threads 1 2``); the ratio is generator / context measured in the same process. Nothing is
asserted. Usage (repository root)::

    python benchmarks/bench_generator.py --markdown benchmarks/generator_results.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ("L1", "L2", "L3", "L4", "L5")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(repeats: int, threads: int, device: str, weights: str | None) -> dict:
    import torch

    from HealthiVertLib.io.resources import SAMPLE_DIR
    from HealthiVertLib.engines import get_engine
    from HealthiVertLib.io.case import load_case
    from HealthiVertLib.pipeline.case import grade_case

    torch.set_num_threads(threads)
    case = load_case(SAMPLE_DIR / "seg.nii.gz", SAMPLE_DIR / "ct.nii.gz")
    engines = {"context": get_engine("context"),
               "generator": get_engine("generator", weights=weights, device=device)}
    rows = {}
    for name, engine in engines.items():
        grade_case(case, ["L3"], engine=engine)  # warm-up (imports, allocator, first forward)
        eng, total = [], []
        for _ in range(repeats):
            for level in LEVELS:
                t = time.perf_counter()
                result = grade_case(case, [level], engine=engine)
                total.append(time.perf_counter() - t)
                eng.append(result.timing_s["engine"])
        rows[name] = {"engine_s": statistics.median(eng), "total_s": statistics.median(total),
                      "engine_max_s": max(eng), "total_max_s": max(total), "n": len(eng)}
    gen = engines["generator"]
    return {"threads": threads, "device": str(gen.device), "rows": rows, "weights": gen.weights_name,
            "size": gen.size, "spacing": gen.spacing, "slice_step": gen.slice_step}


def markdown(results: list[dict], repeats: int) -> str:
    import numpy
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    r0 = results[0]
    lines = [
        "# Benchmark: the `generator` engine per vertebra, against `context`",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/bench_generator.py` at commit "
        f"{_commit()}. Reproduce: `python benchmarks/bench_generator.py --markdown benchmarks/generator_results.md`.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) when it finished - the cores were "
        f"shared with other jobs, so absolute times are pessimistic; the ratio is measured in the same process. "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}.",
        "",
        f"Case: bundled sample (3 mm CT), each of {', '.join(LEVELS)} graded alone, {repeats} runs each after a "
        f"warm-up: medians over {r0['rows']['context']['n']} vertebra runs. Generator weights `{r0['weights']}`: "
        f"{r0['size'][0]}x{r0['size'][1]} px slices at {r0['spacing']} mm, a slice every {r0['slice_step']} mm over "
        "the central 4/5 of the body, sagittal + coronal, iterative (upper neighbour, lower neighbour, target), "
        "one batched forward pass per view and pass.",
        "",
        "| engine | device | torch threads | engine s / vertebra | end to end s / vertebra | max end to end s | ratio to context (end to end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ctx = r["rows"]["context"]["total_s"]
        for name in ("context", "generator"):
            row = r["rows"][name]
            lines.append(f"| {name} | {r['device'] if name == 'generator' else 'cpu'} | {r['threads']} | "
                         f"{row['engine_s']:.2f} | {row['total_s']:.2f} | {row['total_max_s']:.2f} | "
                         f"{row['total_s'] / ctx:.1f} |")
    best = min(r["rows"]["generator"]["total_s"] for r in results)
    lines += ["", f"**Target: one vertebra (both views, iterative) under 3 s end to end on 2 CPU cores: "
              f"{'MET' if best < 3.0 else 'NOT MET'}** (best median {best:.2f} s).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="generator weights (default: the bundled ones)")
    parser.add_argument("--markdown", default=None, help="also write the results table here")
    args = parser.parse_args()
    results = [measure(args.repeats, t, args.device, args.weights) for t in args.threads]
    text = markdown(results, args.repeats)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
