"""HealthiVert-GAN training losses (method §3–4) with the reference defects fixed (§11.5, §11.6).

* Reconstruction L1: per sample, the L1 summed over the slice divided by that sample's band area,
  then averaged over the batch, so its weight no longer depends on the batch size (the reference
  divided by the band area of the whole batch).
* Edge loss (EEM) and the segmentation discriminator see the *soft* target mask, so both pass
  gradient to the generator (the reference thresholded at 0.5 first, which blocks it).
* Everything else as in the reference: soft Dice for the fine (target) and coarse (healthy
  neighbour) masks, relative height error of both height heads, adversarial losses of the three
  PatchGANs (vanilla BCE by default, LSGAN optional).

The SHRM composition of the synthesized band with the shifted context (method §3) belongs to the
training loop; pass its composites as ``fake_ct`` / ``coarse_fake_ct``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..engines.generator.networks import Discriminators, GeneratorConfig, GeneratorOutput, local_view

SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator's loss terms (defaults: the reference's, method §4).

    ``reconstruction`` multiplies the mean of the coarse and fine band-normalised L1 (the
    reference's λ_L1 = 200 as intended; its batch-dependent form gave 200/B). ``adversarial``
    multiplies the sum of the three adversarial terms (reference 1/6). ``height`` multiplies each
    head's relative height error (reference 40).
    """

    reconstruction: float = 200.0
    adversarial: float = 1.0 / 6.0
    seg_fine: float = 15.0
    seg_coarse: float = 10.0
    edge: float = 800.0
    height: float = 40.0
    gan_mode: str = "vanilla"  # "vanilla" (BCE with logits, reference) or "lsgan" (MSE)

    def __post_init__(self) -> None:
        if self.gan_mode not in ("vanilla", "lsgan"):
            raise ValueError(f"gan_mode must be 'vanilla' or 'lsgan', not {self.gan_mode!r}")
        if any(v < 0 for k, v in asdict(self).items() if k != "gan_mode"):
            raise ValueError("loss weights must be >= 0")


@dataclass
class LossTargets:
    """Ground truth of one batch; images ``(B, 1, H, W)``.

    * ``real_ct``: the original slice in [-1, 1] (target at its true rows);
    * ``target_mask``: the target vertebral body in the original slice, {0, 1};
    * ``neighbour_mask``: the healthy (grade ≤ 1) neighbour bodies visible in the shifted context, {0, 1};
    * ``band``: the band given to the generator, {0, 1};
    * ``height_mm``: ``(B,)`` true height of the target vertebra, mm (> 0).
    """

    real_ct: torch.Tensor
    target_mask: torch.Tensor
    neighbour_mask: torch.Tensor
    band: torch.Tensor
    height_mm: torch.Tensor


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of ``(B, 1, H, W)`` maps, replicate padding, clipped to ≤ 1 (EEM).

    Differentiable: a tiny epsilon keeps the square root's gradient finite on flat regions.
    """
    x = x.float()  # losses in float32, also under autocast
    kernel = torch.tensor((SOBEL_X, SOBEL_Y), dtype=x.dtype, device=x.device).unsqueeze(1)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)
    return (g.pow(2).sum(dim=1, keepdim=True) + 1e-12).sqrt().clamp(max=1.0)


def band_l1(fake: torch.Tensor, real: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Σ|fake − real| per sample divided by that sample's band area, averaged over the batch."""
    area = band.float().flatten(1).sum(dim=1).clamp_min(1.0)
    return ((fake.float() - real.float()).abs().flatten(1).sum(dim=1) / area).mean()


def soft_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Soft Dice (2Σpg + ε)/(Σp + Σg + ε) per sample, averaged over the batch (reference form)."""
    p, g = pred.float().flatten(1), target.float().flatten(1)
    return ((2.0 * (p * g).sum(dim=1) + eps) / (p.sum(dim=1) + g.sum(dim=1) + eps)).mean()


def relative_height_error(pred_mm: torch.Tensor, true_mm: torch.Tensor) -> torch.Tensor:
    """Mean |pred − true| / true (unitless; true heights must be > 0)."""
    true_mm = true_mm.float()
    return ((pred_mm.float() - true_mm).abs() / true_mm.clamp_min(1e-6)).mean()


def adversarial_loss(logits: torch.Tensor, real: bool, gan_mode: str = "vanilla") -> torch.Tensor:
    """GAN loss of patch logits against the all-real or all-fake target."""
    logits = logits.float()
    target = torch.full_like(logits, 1.0 if real else 0.0)
    if gan_mode == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def _config(discriminators: torch.nn.Module) -> GeneratorConfig:
    return getattr(discriminators, "module", discriminators).config  # unwrap DistributedDataParallel


def generator_loss(out: GeneratorOutput, targets: LossTargets, discriminators: Discriminators,
                   weights: LossWeights | None = None, config: GeneratorConfig | None = None,
                   fake_ct: torch.Tensor | None = None,
                   coarse_fake_ct: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's total loss and its weighted terms (each a scalar tensor with graph).

    ``fake_ct`` / ``coarse_fake_ct`` are the SHRM composites of the fine and coarse CT with the
    context (method §3); by default the raw generator outputs. The discriminators are only read:
    freeze them (``requires_grad_(False)``) during the generator step, and under
    DistributedDataParallel pass the unwrapped module (``ddp.module``), since no discriminator
    gradient is reduced in this step.

    Terms: ``adv_global``, ``adv_segmentation``, ``adv_local``, ``reconstruction``, ``seg_fine``,
    ``seg_coarse``, ``edge``, ``height``; ``total`` is their sum.
    """
    w = weights or LossWeights()
    cfg = config or _config(discriminators)
    fake = out.fine_ct if fake_ct is None else fake_ct
    coarse = out.coarse_ct if coarse_fake_ct is None else coarse_fake_ct
    t = targets
    d_global, d_seg, d_local = discriminators(fake, out.fine_seg, local_view(fake, t.band, cfg))
    l1 = 0.5 * (band_l1(fake, t.real_ct, t.band) + band_l1(coarse, t.real_ct, t.band))
    terms = {
        "adv_global": w.adversarial * adversarial_loss(d_global, True, w.gan_mode),
        "adv_segmentation": w.adversarial * adversarial_loss(d_seg, True, w.gan_mode),
        "adv_local": w.adversarial * adversarial_loss(d_local, True, w.gan_mode),
        "reconstruction": w.reconstruction * l1,
        "seg_fine": w.seg_fine * (1.0 - soft_dice(out.fine_seg, t.target_mask)),
        "seg_coarse": w.seg_coarse * (1.0 - soft_dice(out.coarse_seg, t.neighbour_mask)),
        "edge": w.edge * F.mse_loss(sobel_edges(out.fine_seg), sobel_edges(t.target_mask)),
        "height": w.height * (relative_height_error(out.coarse_height_mm, t.height_mm)
                              + relative_height_error(out.fine_height_mm, t.height_mm)),
    }
    total = torch.stack(list(terms.values())).sum()
    return total, {**terms, "total": total}


def discriminator_loss(out: GeneratorOutput, targets: LossTargets, discriminators: Discriminators,
                       weights: LossWeights | None = None, config: GeneratorConfig | None = None,
                       fake_ct: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of the three discriminators' losses, each 0.5·(L(D(fake), fake) + L(D(real), real)).

    Generator outputs are detached, so one backward pass updates only the discriminators (each has
    its own parameters, so one optimizer over all three equals three separate steps with Adam).
    ``discriminators`` may be wrapped in DistributedDataParallel (called twice, fake then real,
    as in the reference, so BatchNorm sees fake and real batches separately).
    Terms: ``d_global``, ``d_segmentation``, ``d_local``, ``total``.
    """
    w = weights or LossWeights()
    cfg = config or _config(discriminators)
    fake = (out.fine_ct if fake_ct is None else fake_ct).detach()
    t = targets
    on_fake = discriminators(fake, out.fine_seg.detach(), local_view(fake, t.band, cfg))
    on_real = discriminators(t.real_ct, t.target_mask, local_view(t.real_ct, t.band, cfg))
    terms = {
        name: 0.5 * (adversarial_loss(f, False, w.gan_mode) + adversarial_loss(r, True, w.gan_mode))
        for name, f, r in zip(("d_global", "d_segmentation", "d_local"), on_fake, on_real)
    }
    total = torch.stack(list(terms.values())).sum()
    return total, {**terms, "total": total}
