"""Fine-tune the bundled generator on real vertebrae + phantoms and compare it on a held-out real subject.

Issue 14, point 2, as a short CPU run. The bundled weights (12 phantoms, 24 min) are the phantom
pre-training: they initialise the generator (discriminators and Adam start fresh). Training data: the
real VerSe19 subjects given by ``--train`` (default sub-verse005 and sub-verse006, grade <= 1 as the
reference counts healthy, with their neighbours as context) plus ``--phantoms`` phantoms (seeds 0..N-1,
as in the pre-training). Validation: the held-out subject ``--val`` (default sub-verse007, a different
patient), never seen in training: every centred slice of its grade-0 vertebrae, measured as the model
card's validation (``training.generator.validate``: band PSNR/SSIM, Dice of the drawn label, height
error), for the bundled and the new weights side by side, and the largest point loss the engine reports
on each of its graded vertebrae (grade 0 should read ~0, its grade-2 T12 and L1 high).

    nice -n 10 python scripts/finetune_generator_real.py --out /tmp/gen_real --minutes 20

Writes OUT/generator.safetensors (+ card), OUT/real_validation.json. Nothing is bundled by this script.
Research use only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO / "benchmarks" / "data" / "verse19"
BUNDLED = REPO / "HealthiVertLib" / "data" / "weights" / "generator_default.safetensors"
from HealthiVertLib.io.labels import VERSE

LEVEL_OF = VERSE.label_to_level  # VerSe label value -> level, as the grade files number them


def init_checkpoint(path: Path, opts) -> None:
    """A training checkpoint at step 0 whose generator is the bundled one (fresh discriminators and Adam)."""
    import torch

    from HealthiVertLib.engines.generator.networks import Discriminators
    from HealthiVertLib.engines.generator.weights import load_generator
    from HealthiVertLib.training.generator import save_checkpoint

    torch.manual_seed(opts.seed)
    model = load_generator(BUNDLED).train()
    discs = Discriminators(model.config)
    opt_g = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discs.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    save_checkpoint(path, 0, model, discs, opt_g, opt_d, opts)


def evaluate(weights: Path, subject: str) -> dict:
    """The held-out subject: slice metrics of its grade-0 vertebrae and the engine's largest point loss per graded vertebra."""
    import numpy as np

    from benchmarks.bench_generator_real import SIZE, SPACING, slice_metrics
    from HealthiVertLib.engines.generator.engine import GeneratorEngine
    from HealthiVertLib.io.case import load_case
    from HealthiVertLib.io.grades import read_grade_file
    from HealthiVertLib.pipeline.case import grade_case
    from HealthiVertLib.training.generator_data import case_records

    grades = {LEVEL_OF[lab]: g for (s, lab), g in read_grade_file(DATA / "vertebra_data.json").items() if s == subject}
    case = load_case(DATA / f"{subject}_seg-vert_msk.nii.gz", DATA / f"{subject}_ct.nii.gz", labels="verse", name=subject)
    engine = GeneratorEngine(weights=weights, device="cpu")
    records = case_records(case, SIZE, SPACING, {lv: g == 0 for lv, g in grades.items()})
    per = {r.level: slice_metrics(engine.model, r) for r in records}
    losses = {v.level: round(100 * max(v.point_loss.values()), 1) for v in grade_case(case, None, engine=engine, volumes=False).vertebrae
              if v.level in grades and v.point_loss}
    keys = ("band_psnr_db", "band_ssim", "dice_target", "height_error_mm", "height_error_pct", "height_bias_pct")
    return {"slices": {k: float(np.mean([m[k] for m in per.values()])) for k in keys},
            "per_vertebra": per, "largest_point_loss_pct": losses, "grades": grades}


def main(argv: list[str] | None = None) -> int:
    """Fine-tune, then compare the bundled and the new weights on the held-out subject."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", nargs="+", default=["sub-verse005", "sub-verse006"])
    parser.add_argument("--val", default="sub-verse007")
    parser.add_argument("--phantoms", type=int, default=3)
    parser.add_argument("--max-grade", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from HealthiVertLib.training.generator import TrainOptions, train

    if args.val in args.train:
        raise SystemExit("the validation subject must not be a training subject")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = args.out / "train_cases.csv"
    manifest.write_text("case,seg,ct\n" + "".join(
        f"{s},{DATA / f'{s}_seg-vert_msk.nii.gz'},{DATA / f'{s}_ct.nii.gz'}\n" for s in args.train), encoding="utf-8")
    command = "python scripts/finetune_generator_real.py " + " ".join(argv if argv is not None else sys.argv[1:])
    opts = TrainOptions(out=str(args.out), phantoms=args.phantoms, cases=str(manifest), grades=str(DATA / "vertebra_data.json"),
                        max_grade=args.max_grade, val_phantoms=2, steps=100_000, batch_size=8, lr=args.lr, val_every=200,
                        val_samples=48, checkpoint_every=200, device="cpu", seed=0, threads=args.threads,
                        time_limit_min=args.minutes, progress=False, command=command,
                        extra={"initialised_from": f"{BUNDLED.name} (12 phantoms, 24 min; its generator tensors, "
                               "fresh discriminators and Adam states)",
                               "real_training_subjects": args.train, "real_validation_subject": args.val})
    ckpt = args.out / "init_checkpoint.safetensors"
    init_checkpoint(ckpt, opts)
    opts.resume = str(ckpt)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train(opts)
    train_min = (time.perf_counter() - t0) / 60
    result = {"train_minutes": round(train_min, 1), "bundled": evaluate(BUNDLED, args.val),
              "new": evaluate(args.out / "generator.safetensors", args.val)}
    (args.out / "real_validation.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name in ("bundled", "new"):
        r = result[name]
        print(name, json.dumps(r["slices"]), json.dumps(r["largest_point_loss_pct"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
