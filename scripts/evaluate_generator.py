"""Evaluate generator weights on held-out phantoms with simulated fractures, beside the context engine.

For each phantom (seeds never used by ``healthivert train-generator``'s training or validation
phantoms) one vertebra is fractured by ``HealthiVertLib.truth.simulate`` (random kind, 20-50 % loss), so
its pre-fracture heights are known exactly. Every complete vertebra is graded with both engines:

* fractured vertebrae: pseudo-healthy height error against the pre-fracture truth (mean absolute
  %, per third and overall) and RHLV error against the true RHLV (percentage points);
* healthy vertebrae: the loss the engine invents (RHLV overall, percentage points; truth 0).

Synthetic data only: the numbers describe agreement with the simulator, not clinical accuracy.
``--update-card`` stores the summary in the weights' model card (``extra.evaluation``).

    python scripts/evaluate_generator.py --phantoms 4 --update-card
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

REGIONS = ("anterior", "middle", "posterior", "overall")
SEED0 = 200_000  # training phantoms use seeds from 0, validation from 100000


def evaluate(weights: str | None, phantoms: int, threads: int) -> dict:
    import torch

    from HealthiVertLib.engines import get_engine
    from HealthiVertLib.training.generator_data import phantom_source
    from HealthiVertLib.pipeline.case import grade_case

    torch.set_num_threads(threads)
    engines = {"context": get_engine("context"), "generator": get_engine("generator", weights=weights, device="cpu")}
    rows = {name: {"fractured": [], "healthy": [], "seconds": 0.0} for name in engines}
    for k in range(phantoms):
        src = phantom_source(SEED0 + k, fractures=1)
        truth = src.truth["fractures"]
        for name, engine in engines.items():
            t = time.perf_counter()
            result = grade_case(src.case, None, engine=engine, volumes=False)
            rows[name]["seconds"] += time.perf_counter() - t
            for v in result.vertebrae:
                if v.status != "graded":
                    continue
                if v.level in truth:
                    pre = truth[v.level]["pre_fracture"]["heights_mm"]
                    syn = v.heights_mm["pseudo_healthy"]
                    rows[name]["fractured"].append({
                        "case": src.case.name, "level": v.level, "kind": truth[v.level]["kind"],
                        "height_error_pct": {r: 100 * abs(syn[r] - pre[r]) / pre[r] for r in REGIONS},
                        "rhlv_error_points": {r: 100 * abs(v.rhlv[r] - truth[v.level]["rhlv"][r]) for r in REGIONS},
                    })
                else:
                    rows[name]["healthy"].append(100 * v.rhlv["overall"])
    summary = {}
    for name, r in rows.items():
        frac = r["fractured"]
        summary[name] = {
            "fractured_vertebrae": len(frac),
            "height_error_pct_mean": {reg: round(statistics.mean(f["height_error_pct"][reg] for f in frac), 2)
                                      for reg in REGIONS} if frac else None,
            "rhlv_error_points_mean": {reg: round(statistics.mean(f["rhlv_error_points"][reg] for f in frac), 2)
                                       for reg in REGIONS} if frac else None,
            "healthy_vertebrae": len(r["healthy"]),
            "healthy_rhlv_overall_points_mean": round(statistics.mean(r["healthy"]), 2) if r["healthy"] else None,
            "healthy_rhlv_overall_points_mean_abs": round(statistics.mean(abs(x) for x in r["healthy"]), 2)
            if r["healthy"] else None,
            "seconds_per_vertebra": round(r["seconds"] / max(len(frac) + len(r["healthy"]), 1), 2),
        }
    return {"phantoms": phantoms, "seeds": f"{SEED0}-{SEED0 + phantoms - 1}", "summary": summary,
            "fractured": {n: r["fractured"] for n, r in rows.items()},
            "notice": "Simulated fractures of procedural phantoms; not clinical accuracy."}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="generator weights (default: the bundled ones)")
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--update-card", action="store_true", help="store the summary in the model card")
    args = parser.parse_args()
    result = evaluate(args.weights, args.phantoms, args.threads)
    print(json.dumps(result["summary"], indent=1))
    if args.update_card:
        from pathlib import Path

        from HealthiVertLib.engines.generator.engine import DEFAULT_WEIGHTS
        from HealthiVertLib.engines.generator.weights import card_path, read_model_card
        from HealthiVertLib.io.files import write_text_atomic

        path = Path(args.weights) if args.weights else DEFAULT_WEIGHTS
        card = read_model_card(path)
        card.extra["evaluation"] = {k: result[k] for k in ("phantoms", "seeds", "summary", "notice")}
        card.extra["evaluation"]["command"] = "python scripts/evaluate_generator.py " + " ".join(
            a for a in ("--phantoms", str(args.phantoms), "--update-card"))
        write_text_atomic(card_path(path), card.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
