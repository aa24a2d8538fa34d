"""Training the generator (``healthivert train-generator``): data, loop, validation, checkpoints.

Data: healthy vertebrae (their own CT is the truth inside the band) from procedural phantoms made
on the fly (``--phantoms N``, some with simulated fractures so that fractured neighbours appear in
the context), from a phantom dataset folder or real cases in the ``healthivert batch`` layout with a
``vertebra_data.json`` grade file (grade <= ``--max-grade`` is healthy; the reference uses 1).

Loop (method section 4): per step one batch of random slices (``generator_data.SliceSampler``), the
generator's forward pass, the SHRM composites of the coarse and fine CT (coarse and fine height
head), one Adam step of the three discriminators, one of the generator; losses from ``losses``.
Mixed precision (float16 autocast + gradient scaling) on CUDA. Under ``torchrun`` the generator
is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPU); the discriminators, which the
losses call one by one, average their gradients over the processes explicitly.

Outputs in ``--out``: ``checkpoint.safetensors`` (generator, discriminators and both optimizers'
state, all tensors, no pickle; ``--resume`` continues from it), ``scalars.jsonl`` (one JSON object
per logged scalar: step, tag, value; TensorBoard is not required), ``validation.json``, and the
final ``generator.safetensors`` with its model card ``generator.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import HealthiVertError
from ..io.files import write_text_atomic
from ..engines.generator.slices import BAND_FACTOR, VIEWS, shrm_rows
from .generator_data import SliceSampler, SourceCase, VertebraRecord, case_records, folder_sources, phantom_source
from .losses import LossTargets, LossWeights, discriminator_loss, generator_loss
from ..engines.generator.networks import Discriminators, Generator, GeneratorConfig
from ..engines.generator.weights import SIMULATED_DATA_NOTICE, ModelCard, save_weights

CHECKPOINT = "checkpoint.safetensors"
VAL_SEED_OFFSET = 100_000  # validation phantoms never share a seed with training phantoms


@dataclass
class TrainOptions:
    """Everything a training run depends on (the CLI fills it; the model card records it)."""

    out: str
    phantoms: int = 0
    phantom_dir: str | None = None
    cases: str | None = None
    grades: str | None = None
    max_grade: int = 1
    phantom_levels: str | None = None  # e.g. "T10-L5"; default: a random start T1-T8 down to L5
    val_phantoms: int = 2
    fracture_fraction: float = 0.5  # share of training phantoms with one simulated fracture
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    val_every: int = 100
    val_samples: int = 48
    checkpoint_every: int = 100
    resume: str | None = None
    device: str | None = None
    seed: int = 0
    ngf: int = 8
    ndf: int = 16
    rows: int = 96
    cols: int = 64
    spacing: float = 1.5
    max_height_mm: float = 60.0
    amp: bool = True
    threads: int | None = None
    time_limit_min: float | None = None  # stop (checkpoint + export) after this much training time
    progress: bool = True
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> GeneratorConfig:
        return GeneratorConfig(ngf=self.ngf, ndf=self.ndf, image_size=(self.rows, self.cols),
                               spacing_mm=(self.spacing, self.spacing), band_mm=BAND_FACTOR * 30.0,
                               max_height_mm=self.max_height_mm, local_width_mm=min(70.0, self.cols * self.spacing))


# --------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """This process's place in a (possibly single-process) run, and the device line for the user."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    device_note: str = ""

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None) -> Dist:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA).

    The device comes from ``engines.generator.devices.choose_device``: ``auto`` uses a GPU only when a
    test kernel runs on it; an explicit GPU that cannot work is a one-line ``HealthiVertError``."""
    from ..engines.generator.devices import choose_device

    choice = choose_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, choice.device, choice.note)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if choice.device.type == "cuda":
        choice = choose_device(f"cuda:{local}")  # this process's own GPU, checked the same way
        torch.cuda.set_device(choice.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if choice.device.type == "cuda" else "gloo")
    return Dist(rank, world, choice.device, choice.note)


def _average_gradients(module: torch.nn.Module, d: Dist) -> None:
    if d.world <= 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= d.world


# --------------------------------------------------------------------------- data


def training_sources(opts: TrainOptions, d: Dist) -> list[SourceCase]:
    """This process's share of the training cases (phantoms are made on the fly from their seeds)."""
    sources: list = []
    for k in range(opts.phantoms):
        sources.append(("phantom", opts.seed + k))
    if opts.phantom_dir:
        manifest = Path(opts.phantom_dir) / "manifest.csv"
        sources.append(("folder", str(manifest) if manifest.is_file() else opts.phantom_dir,
                        os.path.join(opts.phantom_dir, "vertebra_data.json")))
    if opts.cases:
        sources.append(("folder", opts.cases, opts.grades))
    if not sources:
        raise HealthiVertError("No training data: give --phantoms N, --phantom-dir DIR or --cases DIR.")
    mine = [s for k, s in enumerate(sources) if s[0] == "folder" or k % d.world == d.rank] if d.world > 1 else sources
    mine = mine or sources  # more processes than phantoms: every process makes them all
    out = []
    n_fractured = round(opts.fracture_fraction * opts.phantoms)
    for s in mine:
        if s[0] == "phantom":
            fractures = 1 if s[1] - opts.seed < n_fractured else 0
            out.append(phantom_source(s[1], fractures=fractures, levels=opts.phantom_levels))
        else:
            grades = s[2] if s[2] and os.path.exists(s[2]) else None
            out.extend(folder_sources(s[1], grades, opts.max_grade))
    return out


def build_records(sources: list[SourceCase], opts: TrainOptions, show: bool) -> list[VertebraRecord]:
    """Slabs of every healthy vertebra of ``sources``, rows extended for the s-shifts."""
    from tqdm import tqdm

    margin = math.ceil(45.0 / opts.spacing)  # windows shifted up to +-45 mm (neighbour passes)
    records = []
    for src in tqdm(sources, desc="preparing slices", disable=not show, unit="case"):
        records += case_records(src.case, (opts.rows, opts.cols), opts.spacing, src.healthy, margin)
    return records


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def shrm_composite(gen: torch.Tensor, real: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                   height_mm: torch.Tensor, spacing: float) -> torch.Tensor:
    """SHRM composite (spec 3) of a generated slice with the original one: the restored band from
    ``gen`` (gradient flows), the context of ``real`` pushed apart. Heights only set the rows."""
    src, inside, _ = shrm_rows(x1.cpu().numpy(), x2.cpu().numpy(),
                                  height_mm.detach().float().cpu().numpy() / spacing, real.shape[2])
    rows = torch.from_numpy(src).to(real.device)[:, None, :, None].expand(-1, real.shape[1], -1, real.shape[3])
    shifted = torch.gather(real, 2, rows)
    band = torch.from_numpy(inside).to(real.device)[:, None, :, None]
    return torch.where(band, gen.to(real.dtype), shifted)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, step: int, model: Generator, discs: Discriminators,
                    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, opts: TrainOptions) -> None:
    """Generator, discriminators and optimizer states as one .safetensors file (tensors only)."""
    from safetensors.torch import save

    from ..io.files import write_bytes_atomic

    tensors = {f"G.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"D.{k}": v for k, v in discs.state_dict().items()})
    groups = {}
    for name, opt in (("optG", opt_g), ("optD", opt_d)):
        state = opt.state_dict()
        for idx, st in state["state"].items():
            for key, value in st.items():
                tensors[f"{name}.{idx}.{key}"] = torch.as_tensor(value)
        groups[name] = state["param_groups"]
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"step": str(step), "config": json.dumps(model.config.to_dict()), "param_groups": json.dumps(groups),
            "options": json.dumps(asdict(opts), default=str)}
    write_bytes_atomic(path, save(tensors, metadata=meta))


def load_checkpoint(path: Path, model: Generator, discs: Discriminators, opt_g: torch.optim.Optimizer,
                    opt_d: torch.optim.Optimizer) -> int:
    """Restore a checkpoint written by ``save_checkpoint``; returns its step."""
    from ..engines.generator.weights import read_safetensors

    tensors, meta = read_safetensors(path)
    try:
        config = GeneratorConfig.from_dict(json.loads(meta["config"]))
        groups = json.loads(meta["param_groups"])
        step = int(meta["step"])
    except (KeyError, ValueError):
        raise HealthiVertError(f"{path} is not a HealthiVert training checkpoint.") from None
    if config != model.config:
        raise HealthiVertError(f"{path} was trained with another architecture ({config}); resume with the same "
                               "options or start a new run.")
    try:
        model.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")})
        discs.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D.")})
        for name, opt in (("optG", opt_g), ("optD", opt_d)):
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith(name + "."):
                    _, idx, sub = key.split(".", 2)
                    state.setdefault(int(idx), {})[sub] = value
            opt.load_state_dict({"state": state, "param_groups": groups[name]})
    except (RuntimeError, KeyError, ValueError) as err:
        raise HealthiVertError(f"The checkpoint {path} does not match this model ({err}).") from None
    return step


# --------------------------------------------------------------------------- validation


def validate(model: Generator, val: dict[str, np.ndarray], spacing: float, device: torch.device,
             chunk: int = 16) -> dict[str, float]:
    """Band PSNR/SSIM (scikit-image), Dice of the target mask, height error (mm) on fixed slices.

    ``height_error_band_prior_mm`` is the baseline measured on the same slices: the height the
    band alone implies (band / 1.5, i.e. the neighbours' expected height), without the network.

    The fine CT is composited by SHRM with the fine height head, as at inference; PSNR and SSIM
    are computed on the rows of the band over the whole width (data range 2: the [-1, 1] window).
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    was_training = model.training
    model.eval()
    psnr, ssim, dice, herr, prior = [], [], [], [], []
    with torch.inference_mode():
        for start in range(0, len(val["ct"]), chunk):
            b = to_torch({k: v[start:start + chunk] for k, v in val.items()}, device)
            out = model(b["ct"], b["mask"], b["ratio"])
            fake = shrm_composite(out.fine_ct, b["real"], b["x1"], b["x2"], out.fine_height_mm, spacing)
            for i in range(len(fake)):
                rows = b["mask"][i, 0, :, 0].cpu().numpy() > 0.5
                f = fake[i, 0].float().cpu().numpy()[rows]
                r = b["real"][i, 0].float().cpu().numpy()[rows]
                psnr.append(peak_signal_noise_ratio(r, f, data_range=2.0))
                ssim.append(structural_similarity(r, f, data_range=2.0, win_size=7))
                p = out.fine_seg[i, 0].float().cpu().numpy() >= 0.5
                g = b["target"][i, 0].cpu().numpy() >= 0.5
                dice.append(2 * (p & g).sum() / max(p.sum() + g.sum(), 1))
            herr += (out.fine_height_mm.float() - b["height_mm"]).abs().cpu().tolist()
            band_mm = b["mask"][:, 0, :, 0].sum(dim=1) * spacing
            prior += (band_mm / BAND_FACTOR - b["height_mm"]).abs().cpu().tolist()
    model.train(was_training)
    return {"band_psnr_db": float(np.mean(psnr)), "band_ssim": float(np.mean(ssim)),
            "dice_target": float(np.mean(dice)), "height_error_mm": float(np.mean(herr)),
            "height_error_band_prior_mm": float(np.mean(prior))}


# --------------------------------------------------------------------------- the run


def train_step(net: torch.nn.Module, discs: Discriminators, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, b: dict[str, torch.Tensor], cfg: GeneratorConfig, weights: LossWeights,
               d: Dist | None = None, use_amp: bool = False) -> tuple[float, float, dict, dict]:
    """One iteration (method 4): forward, SHRM composites, discriminator step, generator step.

    ``net`` is the generator (or its DistributedDataParallel wrapper). Returns the generator and
    discriminator totals and their terms (floats).
    """
    d = d or Dist()
    spacing = cfg.spacing_mm[0]
    dev = b["ct"].device.type
    targets = LossTargets(real_ct=b["real"], target_mask=b["target"], neighbour_mask=b["neighbours"],
                          band=b["mask"], height_mm=b["height_mm"])
    with torch.autocast(dev, dtype=torch.float16, enabled=use_amp):
        out = net(b["ct"], b["mask"], b["ratio"])
        fake = shrm_composite(out.fine_ct, b["real"], b["x1"], b["x2"], out.fine_height_mm, spacing)
        coarse = shrm_composite(out.coarse_ct, b["real"], b["x1"], b["x2"], out.coarse_height_mm, spacing)
        discs.requires_grad_(True)
        d_loss, d_terms = discriminator_loss(out, targets, discs, weights, cfg, fake_ct=fake)
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(d_loss).backward()
    _average_gradients(discs, d)
    scaler.step(opt_d)
    discs.requires_grad_(False)
    with torch.autocast(dev, dtype=torch.float16, enabled=use_amp):
        g_loss, g_terms = generator_loss(out, targets, discs, weights, cfg, fake_ct=fake, coarse_fake_ct=coarse)
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(g_loss).backward()
    scaler.step(opt_g)
    scaler.update()
    as_float = lambda terms: {k: float(v.detach()) for k, v in terms.items()}  # noqa: E731
    return float(g_loss.detach()), float(d_loss.detach()), as_float(g_terms), as_float(d_terms)


def train(opts: TrainOptions) -> tuple[Generator, dict[str, float]]:
    """Run (or resume) a training; returns the generator and the last validation metrics (main process)."""
    from tqdm import tqdm

    d = setup_distributed(opts.device)
    if d.main:
        print(f"healthivert: {d.device_note}", file=sys.stderr)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    out = Path(opts.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)  # identical initial weights on every process
    cfg = opts.config()
    model = Generator(cfg).to(d.device)
    discs = Discriminators(cfg).to(d.device)
    opt_g = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discs.parameters(), lr=opts.lr, betas=(0.5, 0.999))
    start = 0
    resume = Path(opts.resume) if opts.resume else None
    if resume is not None:
        if resume.is_dir():
            resume = resume / CHECKPOINT
        start = load_checkpoint(resume, model, discs, opt_g, opt_d)
    t0 = time.perf_counter()
    records = build_records(training_sources(opts, d), opts, d.main and opts.progress)
    sampler = SliceSampler(records, (opts.rows, opts.cols), opts.spacing)
    val = None
    if d.main and opts.val_phantoms:
        val_sources = [phantom_source(opts.seed + VAL_SEED_OFFSET + k, fractures=1, levels=opts.phantom_levels)
                       for k in range(opts.val_phantoms)]
        val_records = build_records(val_sources, opts, opts.progress)
        val = SliceSampler(val_records, (opts.rows, opts.cols), opts.spacing).batch(
            opts.val_samples, np.random.default_rng(opts.seed + VAL_SEED_OFFSET))
    prep_s = time.perf_counter() - t0
    use_amp = opts.amp and d.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    net = model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    weights = LossWeights()
    log = (out / "scalars.jsonl").open("a", encoding="utf-8") if d.main else None
    metrics: dict[str, float] = {}
    history = []
    if start and d.main and (out / "validation.json").is_file():  # a resumed run keeps its history
        history = [h for h in json.loads((out / "validation.json").read_text(encoding="utf-8")) if h.get("step", 0) <= start]
    bar = tqdm(range(start, opts.steps), initial=start, total=opts.steps, desc="training generator",
               disable=not (d.main and opts.progress))
    model.train()
    discs.train()
    step = done = start
    t_loop = time.perf_counter()
    for step in bar:
        rng = np.random.default_rng([opts.seed, d.rank, step])
        batch = to_torch(sampler.batch(opts.batch_size, rng), d.device)
        g_loss, d_loss, g_terms, d_terms = train_step(net, discs, opt_g, opt_d, scaler, batch, cfg, weights, d, use_amp)
        if not math.isfinite(float(g_loss)):
            raise HealthiVertError(f"Training diverged at step {step + 1} (generator loss {float(g_loss)}); "
                                   "lower --lr or resume from the last checkpoint.")
        done = step + 1
        if d.main:
            scalars = {f"loss/{k}": v for k, v in g_terms.items()}
            scalars.update({f"loss_d/{k}": v for k, v in d_terms.items()})
            for tag, value in scalars.items():
                log.write(json.dumps({"step": done, "tag": tag, "value": round(value, 6)}) + "\n")
            bar.set_postfix_str(f"G {g_loss:.2f}  D {d_loss:.2f}")
            if val is not None and (done % opts.val_every == 0 or done == opts.steps):
                metrics = validate(model, val, opts.spacing, d.device)
                history.append({"step": done, **metrics})
                for tag, value in metrics.items():
                    log.write(json.dumps({"step": done, "tag": f"val/{tag}", "value": round(value, 6)}) + "\n")
                write_text_atomic(out / "validation.json", json.dumps(history, indent=1) + "\n")
            log.flush()
        out_of_time = bool(opts.time_limit_min) and time.perf_counter() - t_loop > 60 * opts.time_limit_min
        if d.world > 1:  # every process stops at the same step
            flag = torch.tensor([float(out_of_time)], device=d.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if d.main:
            if val is not None and out_of_time and done % opts.val_every:
                metrics = validate(model, val, opts.spacing, d.device)
                history.append({"step": done, **metrics})
                write_text_atomic(out / "validation.json", json.dumps(history, indent=1) + "\n")
            if done % opts.checkpoint_every == 0 or done == opts.steps or out_of_time:
                save_checkpoint(out / CHECKPOINT, done, model, discs, opt_g, opt_d, opts)
        if out_of_time:
            break
    bar.close()
    if d.main:
        log.close()
        _export(model, opts, metrics, history, records, prep_s, time.perf_counter() - t0, start, done, d.device_note)
    if d.world > 1:
        dist.barrier()
    return model, metrics


def _export(model: Generator, opts: TrainOptions, metrics: dict[str, float], history: list, records: list,
            prep_s: float, wall_s: float, start: int, done: int, device_note: str = "") -> None:
    """Final weights + model card (architecture, data, command, validation, date, honesty notice)."""
    parts = []
    if opts.phantoms:
        parts.append(f"{opts.phantoms} procedural phantom spines made on the fly (HealthiVertLib.truth.phantom, seeds "
                     f"{opts.seed}-{opts.seed + opts.phantoms - 1}; {round(opts.fracture_fraction * opts.phantoms)} with "
                     "one simulated fracture from HealthiVertLib.truth.simulate, whose fractured vertebra is context only)")
    if opts.phantom_dir:
        parts.append(f"phantom dataset {Path(opts.phantom_dir).name}")
    if opts.cases:
        parts.append(f"cases of {Path(opts.cases).name} with grades <= {opts.max_grade} as healthy targets")
    card = ModelCard(
        kind="generator",
        config=model.config.to_dict(),
        training_data="; ".join(parts) + f". {len(records)} healthy target vertebrae, sagittal and coronal slices. "
        f"Validation: {opts.val_phantoms} held-out phantoms (seeds from {opts.seed + VAL_SEED_OFFSET}), "
        f"{opts.val_samples} fixed slices of healthy vertebrae.",
        training_command=opts.command or "healthivert train-generator (see extra.options)",
        validation_metrics={k: round(v, 4) for k, v in metrics.items()},
        notice=SIMULATED_DATA_NOTICE if not opts.cases else "Research use only, not for diagnosis.",
        extra={
            "views": list(VIEWS),
            "band": f"{BAND_FACTOR} x the expected healthy height from the neighbours (engines.generator.slices.band_rows)",
            "steps_done": done, "steps_planned": opts.steps, "resumed_from_step": start, "batch_size": opts.batch_size,
            "preparation_s": round(prep_s, 1), "wall_s": round(wall_s, 1),
            "validation_history": history,
            "options": {k: v for k, v in asdict(opts).items() if k not in ("command", "extra", "progress")},
            "software": {"torch": torch.__version__, "python": sys.version.split()[0]},
            "device": device_note,
            **opts.extra,
        },
    )
    save_weights(model, Path(opts.out) / "generator.safetensors", card)
