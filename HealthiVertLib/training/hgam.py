"""Training the HGAM fracture classifier (``healthivert train-hgam``): data and training loop.

The classifier (``engines.generator.classifier``) is fitted with :func:`train_classifier` on
straightened sagittal slices (:func:`sagittal_slices`, sampled exactly as the generator engine
samples them) of procedural phantoms with simulated fractures (:func:`build_dataset`), labelled
fractured (the centred vertebra has Genant grade >= 1) or healthy (no fractured vertebra within
``CLEAR_LEVELS`` levels). :func:`train_hgam` writes ``hgam_classifier.safetensors`` with its model
card. The reference's training code was never published. Simulated data only: research use, not
diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HealthiVertError
from ..engines.generator.classifier import ClassifierConfig, FractureClassifier


def train_classifier(model: FractureClassifier, slices: torch.Tensor, labels: torch.Tensor, *, epochs: int = 10,
                     batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 1e-4,
                     seed: int = 0, progress: bool = False) -> list[float]:
    """Fit the fracture classifier on in-memory slices; returns the mean loss of each epoch.

    ``slices`` ``(N, 1, H, W)`` in [-1, 1] on the model's device, ``labels`` ``(N,)`` class indices
    (1 = fracture). Adam, cross-entropy weighted by inverse class frequency (fractures are the
    rarer class), shuffled mini-batches from ``seed``; no augmentation (flipping the AP axis would
    turn anterior wedges into posterior ones). BatchNorm statistics are recomputed over all slices
    with the final weights; the model is left in eval mode.
    """
    if slices.dim() != 4 or labels.dim() != 1 or len(slices) != len(labels) or len(labels) == 0:
        raise ValueError("slices must be (N, C, H, W) and labels (N,) with the same N > 0")
    n_classes = model.config.num_classes
    counts = torch.bincount(labels.long().cpu(), minlength=n_classes).float()
    class_weight = (counts.sum() / (n_classes * counts.clamp_min(1.0))).to(slices.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    from tqdm import tqdm

    bar = tqdm(range(epochs), desc="training HGAM classifier", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(len(labels), generator=generator).to(slices.device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(slices[idx]), labels[idx].long(), weight=class_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(order))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    _recalibrate_batchnorm(model, slices, batch_size)
    return history


@torch.no_grad()
def _recalibrate_batchnorm(model: nn.Module, slices: torch.Tensor, batch_size: int) -> None:
    """Exact BatchNorm statistics of the final weights over all slices (short runs leave them stale)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for start in range(0, len(slices), batch_size):
        model(slices[start:start + batch_size])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


# --------------------------------------------------------------------------- training data and training


FRACTURE_KINDS = ("wedge", "biconcave", "crush")
CLEAR_LEVELS = 2  # a "healthy" slice has no fractured vertebra (grade >= 1) within this many levels
HGAM_SEED_OFFSET = 200_000  # classifier phantoms never share a seed with the generator's phantoms


@dataclass
class HgamDataset:
    """Straightened sagittal slices labelled fractured (1: the centred vertebra has Genant grade
    >= 1) or healthy (0: grade 0, and no fractured vertebra within ``CLEAR_LEVELS`` levels)."""

    images: np.ndarray  # float32 (N, 1, H, W) in [-1, 1]
    labels: np.ndarray  # int64 (N,)
    grades: np.ndarray  # int64 (N,) Genant grade of the centred vertebra (0 also for mild deformities)
    cases: np.ndarray  # int64 (N,) index into ``case_names``
    case_names: list[str]
    levels: list[str]  # the centred vertebra of each slice

    def subset(self, keep: np.ndarray) -> HgamDataset:
        """The slices where the boolean array ``keep`` is true (case names unchanged)."""
        idx = np.flatnonzero(keep)
        return HgamDataset(self.images[idx], self.labels[idx], self.grades[idx], self.cases[idx],
                           self.case_names, [self.levels[i] for i in idx])


def sagittal_slices(case: Any, size: tuple[int, int], spacing: float, step_mm: float) -> dict[str, np.ndarray]:
    """Windowed sagittal slices ``(n, H, W)`` of every complete gradable vertebra of ``case``
    (``io.case.Case`` with a CT), level -> slices, exactly as the generator engine samples them
    (``engines.generator.slices.sample_slab`` in the vertebra's local frame over the central 4/5 of its LR extent)."""
    from ..io.labels import is_gradable
    from ..geometry.spine import SpineBodies, spine_levels
    from ..engines.neighbours import gather_neighbours
    from ..engines.generator.slices import CTSampler, neighbourhood_members, sample_slab, slice_positions, window

    if case.ct is None:
        raise HealthiVertError(f"Case {case.name} has no CT; the fracture classifier is trained on CT slices.")
    levels = spine_levels(case)
    bodies = SpineBodies(case, levels)
    ct = CTSampler(case.ct)
    out = {}
    for v in levels:
        if v.fragment or not is_gradable(v.level):
            continue
        body = bodies.get(v)
        if body.footprint is None or not body.complete:
            continue
        members = neighbourhood_members(body, v.level, gather_neighbours(v, levels, bodies), spacing)
        positions = slice_positions(body, "sagittal", step_mm)
        out[v.level] = window(sample_slab(ct, body, members, "sagittal", positions, size, spacing).hu)
    return out


def fractured_phantom(seed: int, n_levels: int = 8, max_fractures: int = 2, loss_range: tuple[float, float] = (0.06, 0.6)):
    """A phantom spine (``training.generator_data.phantom_source``: random anatomy and acquisition from ``seed``) of
    ``n_levels`` consecutive levels in T4-L5 with 0..``max_fractures`` simulated fractures
    (random kind, RHLV uniform in ``loss_range``: grades 0-3) on non-adjacent levels.
    Returns ``(io.case.Case, {level: Genant grade})`` with the simulator's measured grades."""
    from ..io.case import Case
    from ..truth.simulate import simulate_fracture
    from .generator_data import phantom_source

    rng = np.random.default_rng(seed)
    names = [f"T{k}" for k in range(4, 13)] + [f"L{k}" for k in range(1, 6)]
    start = int(rng.integers(0, len(names) - n_levels + 1))
    src = phantom_source(seed, fractures=0, levels=f"{names[start]}-{names[start + n_levels - 1]}")
    case, truth = src.case, None
    inner = list(range(1, n_levels - 1))  # end levels may be cut by the field of view
    wanted = int(rng.integers(0, max_fractures + 1)) if rng.random() < 0.8 else 0
    chosen: list[int] = []
    for k in rng.permutation(inner):
        if len(chosen) < wanted and all(abs(int(k) - c) > 1 for c in chosen):
            chosen.append(int(k))
    seg, ct = case.seg, case.ct
    for j, k in enumerate(chosen):
        sim = simulate_fracture(seg, vertebra=names[start + k], kind=str(rng.choice(FRACTURE_KINDS)),
                                loss=float(rng.uniform(*loss_range)), ct=ct, labels="verse", seed=seed + j, truth=truth)
        seg, ct, truth = sim.seg, sim.ct, sim.truth
    grades = {lv: 0 for lv in names[start:start + n_levels]}
    for lv, entry in ((truth or {}).get("fractures") or {}).items():
        grades[lv] = int(entry["genant_grade"])
    return Case(case.name, seg, ct, None, case.scheme), grades


def build_dataset(case_seeds: list[int], size: tuple[int, int], spacing: float, step_mm: float = 3.0,
                  progress: bool = False) -> HgamDataset:
    """Labelled slices of the phantoms ``case_seeds`` (``fractured_phantom``); slices of grade-0
    vertebrae next to a fracture (within ``CLEAR_LEVELS``) are left out as ambiguous."""
    from tqdm import tqdm

    from ..io.labels import level_position

    images, labels, grades, cases, levels = [], [], [], [], []
    for ci, seed in enumerate(tqdm(case_seeds, desc="simulating phantoms", unit="case", disable=not progress)):
        case, grade_of = fractured_phantom(seed)
        fractured = [level_position(lv) for lv, g in grade_of.items() if g >= 1]
        for lv, sl in sagittal_slices(case, size, spacing, step_mm).items():
            g = grade_of.get(lv, 0)
            near = any(0 < abs(p - level_position(lv)) <= CLEAR_LEVELS for p in fractured)
            if g == 0 and near:
                continue
            images.append(sl[:, None])
            n = len(sl)
            labels += [int(g >= 1)] * n
            grades += [g] * n
            cases += [ci] * n
            levels += [lv] * n
    if not images:
        raise HealthiVertError("No complete vertebra in the simulated phantoms; cannot build the HGAM training set.")
    return HgamDataset(np.concatenate(images).astype(np.float32), np.asarray(labels, np.int64),
                       np.asarray(grades, np.int64), np.asarray(cases, np.int64),
                       [f"phantom-{s}" for s in case_seeds], levels)


def split_seeds(n_cases: int, val_cases: int, seed: int) -> tuple[list[int], list[int]]:
    """Phantom seeds for training and validation: disjoint cases, deterministic for ``seed``."""
    base = HGAM_SEED_OFFSET + 1000 * seed
    seeds = list(range(base, base + n_cases + val_cases))
    return seeds[:n_cases], seeds[n_cases:]


def evaluate(model: FractureClassifier, images: torch.Tensor, labels: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """Accuracy (threshold p = 0.5), ROC AUC (scikit-learn), sensitivity and specificity on a labelled set."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    with torch.no_grad():
        p = torch.cat([model(images[i:i + batch_size]).softmax(1)[:, 1] for i in range(0, len(images), batch_size)])
    p, y = p.cpu().numpy(), np.asarray(labels)
    pred = p >= 0.5
    both = len(set(y.tolist())) == 2
    return {
        "accuracy": float((pred == y).mean()),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "sensitivity": float(pred[y == 1].mean()) if (y == 1).any() else float("nan"),
        "specificity": float((~pred[y == 0]).mean()) if (y == 0).any() else float("nan"),
        "n": int(len(y)), "n_fractured": int((y == 1).sum()),
    }


def _per_vertebra(model: FractureClassifier, ds: HgamDataset) -> dict[str, float]:
    """Accuracy and ROC AUC per vertebra (mean fracture probability of its slices): slices of one
    vertebra are correlated, so this is the less flattering, more honest count."""
    from sklearn.metrics import roc_auc_score

    device = next(model.parameters()).device
    with torch.no_grad():
        p = model(torch.from_numpy(ds.images).to(device)).softmax(1)[:, 1].cpu().numpy()
    keys = sorted(set(zip(ds.cases.tolist(), ds.levels)))
    levels = np.array(ds.levels)
    mean_p, truth = [], []
    for c, lv in keys:
        sel = (ds.cases == c) & (levels == lv)
        mean_p.append(float(p[sel].mean()))
        truth.append(int(ds.labels[sel][0]))
    mean_p, truth = np.array(mean_p), np.array(truth)
    return {"vertebra_accuracy": float(((mean_p >= 0.5) == truth).mean()),
            "vertebra_roc_auc": float(roc_auc_score(truth, mean_p)) if len(set(truth.tolist())) == 2 else float("nan"),
            "vertebrae": int(len(truth)), "vertebrae_fractured": int(truth.sum())}


def train_hgam(out: str | Path, *, cases: int = 80, val_cases: int = 20, epochs: int = 12, batch_size: int = 32,
               lr: float = 2e-3, seed: int = 0, rows: int = 96, cols: int = 64, spacing: float = 1.5,
               step_mm: float = 3.0, width: int = 16, command: str = "", progress: bool = True,
               device: str | None = None) -> dict[str, float]:
    """Train the HGAM fracture classifier on simulated phantoms and write
    ``OUT/hgam_classifier.safetensors`` + model card; returns the validation metrics.

    The slice geometry (``rows`` × ``cols`` px at ``spacing`` mm) must match the generator's.
    Training and validation phantoms are disjoint cases; everything is deterministic for ``seed``.
    ``device``: ``auto`` (default; a GPU only when a test kernel runs on it), ``cpu``, ``cuda[:N]`` or
    ``mps`` (``engines.generator.devices.choose_device``; the chosen device is printed on stderr).
    """
    import sys
    import time

    from ..engines.generator.devices import choose_device
    from ..engines.generator.weights import SIMULATED_DATA_NOTICE, ModelCard, save_weights

    if cases < 2 or val_cases < 1 or epochs < 1:
        raise HealthiVertError("train-hgam needs at least 2 training phantoms, 1 validation phantom and 1 epoch.")
    choice = choose_device(device)
    print(f"healthivert: {choice.note}", file=sys.stderr)
    dev = choice.device
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    train_seeds, val_seeds = split_seeds(cases, val_cases, seed)
    train_set = build_dataset(train_seeds, (rows, cols), spacing, step_mm, progress)
    val_set = build_dataset(val_seeds, (rows, cols), spacing, step_mm, progress)
    prep_s = time.perf_counter() - t0
    config = ClassifierConfig(width=width, image_size=(rows, cols), spacing_mm=(spacing, spacing))
    model = FractureClassifier(config).to(dev)
    x, y = torch.from_numpy(train_set.images).to(dev), torch.from_numpy(train_set.labels).to(dev)
    history = train_classifier(model, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    metrics = evaluate(model, torch.from_numpy(val_set.images).to(dev), val_set.labels)
    metrics.update(_per_vertebra(model, val_set))
    per_grade = {}
    for g in range(4):
        sel = val_set.grades == g
        if sel.any():
            with torch.no_grad():
                p = model(torch.from_numpy(val_set.images[sel]).to(dev)).softmax(1)[:, 1].cpu().numpy()
            per_grade[str(g)] = {"n": int(sel.sum()), "called_fractured": round(float((p >= 0.5).mean()), 4)}
    wall_s = time.perf_counter() - t0
    card = ModelCard(
        kind="hgam_classifier",
        config=config.to_dict(),
        training_data=(
            f"{cases} training and {val_cases} validation procedural phantom spines (HealthiVertLib.truth.phantom via "
            f"training.generator_data.phantom_source, seeds {train_seeds[0]}-{val_seeds[-1]}, disjoint cases), 8 levels in T4-L5, "
            "0-2 simulated fractures each (HealthiVertLib.truth.simulate: wedge/biconcave/crush, RHLV 6-60 %, Genant 0-3). "
            f"Sagittal slices every {step_mm} mm over the central 4/5 of each vertebra, {rows}x{cols} px at {spacing} mm in "
            "the vertebra's straightened frame, HU window -300..800 -> [-1, 1] (engines.generator.slices). Label 1: the centred "
            f"vertebra has Genant grade >= 1; 0: grade 0 and no fracture within {CLEAR_LEVELS} levels. "
            f"{len(train_set.labels)} training slices ({int(train_set.labels.sum())} fractured), "
            f"{len(val_set.labels)} validation slices ({int(val_set.labels.sum())} fractured)."
        ),
        training_command=command or "healthivert train-hgam",
        validation_metrics={k: round(float(v), 4) for k, v in metrics.items()},
        notice=SIMULATED_DATA_NOTICE,
        extra={"validation_by_grade": per_grade, "loss_history": [round(v, 4) for v in history],
               "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
               "preparation_s": round(prep_s, 1), "wall_s": round(wall_s, 1),
               "parameters": sum(p.numel() for p in model.parameters()),
               "cam_layer": "stages[-1] (1/16 of the slice)", "software": {"torch": torch.__version__},
               "device": choice.note},
    )
    save_weights(model, Path(out) / "hgam_classifier.safetensors", card)
    return metrics
