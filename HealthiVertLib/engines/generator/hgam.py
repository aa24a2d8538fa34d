"""HGAM (HealthiVert-Guided Attention Module, method §3): the classifier's Grad-CAM++ as attention.

Grad-CAM++ on the last stage of the fracture classifier (``classifier.FractureClassifier``)
highlights the fracture-salient region of straightened sagittal slices, and the generator
receives ``1 − CAM`` (:func:`hgam_attention`) so that it leans less on fractured-looking context.
Our CAM has a finer grid than the reference's (1/16 instead of 1/32 of the slice). The classifier
network lives in ``classifier``; its training in ``training.hgam``.

Shipped weights: ``data/weights/hgam_classifier.safetensors`` (+ model card), trained by
``healthivert train-hgam`` on sagittal slices of procedural phantoms with simulated fractures,
labelled Genant grade >= 1 vs healthy; simulated data only: research use, not diagnosis. The
generator engine loads them through :func:`load_hgam` when they fit its slice geometry.

No-HGAM path: without classifier weights, pass ``attention=None`` to ``Generator.forward`` (or
:func:`uniform_attention`): the attention map is 1 everywhere, the only drop-in fallback (§3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HealthiVertError
from ...io.resources import WEIGHTS_DIR
from .classifier import FractureClassifier


def grad_cam_pp(model: nn.Module, images: torch.Tensor, target_class: int = 1,
                layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM++ maps ``(B, 1, H, W)`` in [0, 1] of ``target_class`` for a batch of slices.

    With activations A and gradients g of the class score S at ``layer`` (default
    ``model.cam_layer``): α = g² / (2g² + Σ_ij A·g³ + 1e−7), w_k = Σ_ij α·ReLU(g),
    CAM = ReLU(Σ_k w_k A_k), min–max normalised per slice (all-zero when flat), bilinearly resized
    to the slice. (The exp(S) factor of the method's formula is a positive per-slice constant that
    the normalisation removes; leaving it out avoids overflow.) The model is used as it is: call
    ``model.eval()`` first for deterministic maps.
    """
    layer = layer if layer is not None else model.cam_layer
    captured: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    try:
        with torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)  # activations need a graph even if weights are frozen
            scores = model(x)[:, target_class]
            acts = captured["a"]
            (grads,) = torch.autograd.grad(scores.sum(), acts)
    finally:
        handle.remove()
    acts, grads = acts.detach(), grads.detach()
    g2 = grads.pow(2)
    alpha = g2 / (2.0 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads + 1e-7)
    weights = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    flat = cam.flatten(1)
    lo, hi = flat.min(dim=1).values.view(-1, 1, 1, 1), flat.max(dim=1).values.view(-1, 1, 1, 1)
    cam = torch.where(hi > lo, (cam - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(cam))
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0.0, 1.0)


def attention_from_cam(cam: torch.Tensor, band: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's attention input: ``1 − CAM``, and 1 inside the band when ``band`` is given.

    Shift the CAM with the context (method §1.9) before calling this, like the CT.
    """
    attention = 1.0 - cam.clamp(0.0, 1.0)
    return attention if band is None else torch.where(band > 0.5, torch.ones_like(attention), attention)


def uniform_attention(like: torch.Tensor) -> torch.Tensor:
    """The no-HGAM attention map: ones shaped ``(B, 1, H, W)`` like ``like``'s batch and grid."""
    return torch.ones(like.shape[0], 1, *like.shape[-2:], dtype=like.dtype, device=like.device)


def hgam_attention(classifier: nn.Module, slices: torch.Tensor, band: torch.Tensor | None = None) -> torch.Tensor:
    """HGAM attention ``(B, 1, H, W)`` for a batch of slices: ``1 − Grad-CAM++`` of the fracture class.

    One forward and one backward pass for the whole batch. ``slices`` ``(B, 1, H, W)`` in [-1, 1]
    (unmasked, as the classifier was trained); ``band`` (same shape, 1 on the band) sets the
    attention to 1 there. Works inside ``torch.inference_mode()`` (the CAM needs gradients).
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = slices.clone() if slices.is_inference() else slices
        cam = grad_cam_pp(classifier, x)
    return attention_from_cam(cam, None if band is None else band.to(cam.dtype))


DEFAULT_CLASSIFIER = WEIGHTS_DIR / "hgam_classifier.safetensors"


def load_hgam(setting: bool | str | Path | None, generator_config: Any, device: str | torch.device = "cpu",
              named: str | Path | None = None) -> tuple[FractureClassifier | None, str]:
    """The HGAM classifier for a generator, or None for the no-HGAM path; and a sentence saying which.

    ``setting``: ``False``/``None`` = no HGAM; ``True`` = ``named`` (the classifier a generator's
    model card names) if given, else the shipped weights (``DEFAULT_CLASSIFIER``) when installed,
    else the no-HGAM path; a path = those weights. The classifier must see the generator's slices
    (same size, spacing and HU window): a named or given file that does not fit raises, the shipped
    one is then skipped. Damaged weights always raise: never random weights.
    """
    from .weights import load_classifier

    if setting is False or setting is None:
        return None, "HGAM off: uniform attention (no-HGAM path)"
    explicit = setting is not True or named is not None
    path = Path(named) if setting is True and named is not None else Path(setting) if explicit else DEFAULT_CLASSIFIER
    if not explicit and not path.exists():
        return None, f"HGAM classifier weights not installed ({path.name}): uniform attention (no-HGAM path)"
    model = load_classifier(path, device=device)
    mine, theirs = model.config, generator_config
    if (tuple(mine.image_size) != tuple(theirs.image_size) or tuple(mine.spacing_mm) != tuple(theirs.spacing_mm)
            or tuple(mine.hu_window) != tuple(theirs.hu_window)):
        why = (f"the HGAM classifier {path.name} was trained on {mine.image_size[0]}x{mine.image_size[1]} px slices at "
               f"{mine.spacing_mm[0]} mm, the generator uses {theirs.image_size[0]}x{theirs.image_size[1]} px at "
               f"{theirs.spacing_mm[0]} mm")
        if explicit:
            raise HealthiVertError(f"Cannot use HGAM: {why}. Train a classifier for this geometry with "
                                   "'healthivert train-hgam --size ROWS COLS --spacing MM'.")
        return None, f"{why}: uniform attention (no-HGAM path)"
    for p in model.parameters():
        p.requires_grad_(False)  # Grad-CAM++ needs gradients of activations only
    return model, f"HGAM: 1 - Grad-CAM++ of {path.name} on sagittal slices"
