"""HealthiVert-GAN networks: two-stage inpainting generator and three PatchGAN discriminators.

A re-implementation of the published architecture (method specification §2; DeepFill v1 coarse +
refinement generators with spectral-norm convolutions and ELU, contextual attention, height heads),
with the reference defects fixed: contextual attention uses each sample's own mask, and all
geometry (band height, heights, the local discriminator's window) is configured in millimetres.

Image conventions (one 2D slice of a straightened vertebra crop, sagittal or coronal):

* tensors are ``(B, 1, H, W)``; rows = superior→inferior (cranial at row 0); columns = anterior→
  posterior (sagittal, anterior = column 0) or the left-right axis (coronal);
* CT is normalised to ``[-1, 1]`` from the HU window ``GeneratorConfig.hu_window`` (default
  −300…800 HU, method §1.4): ``hu_to_model`` / ``model_to_hu``; −1 is air and the fill value;
* masks and maps are in ``[0, 1]``.

The state_dict of ``Generator(GeneratorConfig())`` has exactly the tensor names and shapes of the
published ``latest_net_G.pth`` (spectral norm through the legacy ``torch.nn.utils.spectral_norm``
hook: ``weight_orig``, ``weight_u``, ``weight_v``), so the authors' weights load 1:1
(``HealthiVertLib.engines.generator.weights.load_reference_checkpoint``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HealthiVertError

SIZE_MULTIPLE = 8  # two stride-2 stages, then attention matching at half that resolution
POWER_ITERATIONS_AT_INIT = 20


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture and geometry of the generator and its discriminators.

    ``image_size`` and ``spacing_mm`` are (rows, columns): rows run superior→inferior. The network
    is fully convolutional and runs on any size (``Generator`` pads internally to a multiple of
    ``SIZE_MULTIPLE``); ``image_size`` is the canvas the data pipeline produces and the weights
    were trained on. Geometry is in millimetres (method §11.10): the band height in pixels follows
    from ``band_mm`` and the row spacing, identically at training and inference (§11.8).
    """

    input_dim: int = 1  # CT channels
    ngf: int = 16  # generator base width (cnum)
    image_size: tuple[int, int] = (256, 256)  # canvas (rows, columns) in pixels
    spacing_mm: tuple[float, float] = (1.0, 1.0)  # pixel spacing (rows, columns) in mm
    band_mm: float = 40.0  # height of the masked band that hides the target vertebra
    max_height_mm: float = 40.0  # height heads predict sigmoid(.) * max_height_mm
    hu_window: tuple[float, float] = (-300.0, 800.0)  # HU mapped to -1 ... 1
    local_width_mm: float = 70.0  # width of the local discriminator's central column window
    ndf: int = 64  # discriminator base width
    n_layers_d: int = 3  # PatchGAN depth (3: 70x70 receptive field)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "spacing_mm", tuple(float(v) for v in self.spacing_mm))
        object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))
        problems = []
        if self.input_dim < 1 or self.ngf < 2 or self.ngf % 2 or self.ndf < 1 or self.n_layers_d < 1:
            problems.append("input_dim >= 1, an even ngf >= 2, ndf >= 1 and n_layers_d >= 1 are required")
        if len(self.image_size) != 2 or min(self.image_size) < SIZE_MULTIPLE:
            problems.append(f"image_size must be (rows, columns), each >= {SIZE_MULTIPLE} px")
        if len(self.spacing_mm) != 2 or not all(math.isfinite(s) and s > 0 for s in self.spacing_mm):
            problems.append("spacing_mm must be two positive numbers (rows, columns)")
        if not (self.band_mm > 0 and self.max_height_mm > 0 and self.local_width_mm > 0):
            problems.append("band_mm, max_height_mm and local_width_mm must be positive")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            problems.append("hu_window must be (low, high) with low < high")
        if not problems and self.band_px >= self.image_size[0]:
            problems.append(f"the {self.band_mm} mm band does not fit into {self.image_size[0]} rows")
        if problems:
            raise HealthiVertError("Invalid generator configuration: " + "; ".join(problems) + ".")

    @property
    def band_px(self) -> int:
        """Height of the masked band in rows (40 at 1 mm)."""
        return max(1, int(round(self.band_mm / self.spacing_mm[0])))

    @property
    def max_height_px(self) -> float:
        """``max_height_mm`` in rows."""
        return self.max_height_mm / self.spacing_mm[0]

    @property
    def local_width_px(self) -> int:
        """Width of the local discriminator's column window in columns (70 at 1 mm)."""
        return max(1, int(round(self.local_width_mm / self.spacing_mm[1])))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Inverse of ``to_dict``; unknown keys are an error (they mean another architecture)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HealthiVertError(f"Unknown generator configuration keys {unknown}; "
                                   "the weights belong to another version.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def hu_to_model(hu: torch.Tensor | np.ndarray, window: tuple[float, float] = (-300.0, 800.0)):
    """HU → network range: ``window`` maps linearly to [-1, 1], values outside are clipped."""
    lo, hi = window
    scaled = (hu - lo) / (hi - lo)
    scaled = scaled.clamp(0.0, 1.0) if isinstance(scaled, torch.Tensor) else np.clip(scaled, 0.0, 1.0)
    return scaled * 2.0 - 1.0


def model_to_hu(x: torch.Tensor | np.ndarray, window: tuple[float, float] = (-300.0, 800.0)):
    """Network range [-1, 1] → HU (inverse of ``hu_to_model`` inside the window)."""
    lo, hi = window
    return (x + 1.0) * 0.5 * (hi - lo) + lo


# --- building blocks ------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Spectral-normalised Conv2d (bias, zero 'same' padding) + activation; no normalisation layer.

    Spectral norm is the legacy ``torch.nn.utils.spectral_norm`` hook (one power iteration per
    training forward, stored ``weight_u``/``weight_v`` in eval mode), as in the published weights.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 activation: str = "elu") -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.utils.spectral_norm(
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding=padding, dilation=dilation, bias=True))
        with torch.no_grad():  # converge u, v now: the hook starts from random vectors, useless in eval mode
            weight = self.conv.weight_orig.reshape(out_ch, -1)
            u, v = self.conv.weight_u, self.conv.weight_v
            for _ in range(POWER_ITERATIONS_AT_INIT):
                v.copy_(F.normalize(weight.t() @ u, dim=0))
                u.copy_(F.normalize(weight @ v, dim=0))
        acts = {"elu": nn.ELU, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "none": nn.Identity}
        if activation not in acts:
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = acts[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'SAME' zero padding (extra pixel at the bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        out = (size + stride - 1) // stride
        total = max(0, (out - 1) * stride + kernel - size)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _patches(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, L, C, k, k)``: 'SAME'-padded k×k patches, row-major over L."""
    b, c = x.shape[:2]
    cols = F.unfold(_same_pad(x, kernel, stride), kernel, stride=stride)  # (B, C*k*k, L)
    return cols.view(b, c, kernel, kernel, -1).permute(0, 4, 1, 2, 3)


class ContextualAttention(nn.Module):
    """DeepFill-v1 contextual attention (method §2.4), batched, with per-sample masks.

    Foreground and background are the same feature map ``x`` (B, C, h, w), h and w divisible by
    ``rate``. Features are matched at 1/``rate`` resolution by cosine similarity of ``ksize``
    patches; background patches that touch the hole (``mask`` nearest-resampled to the matching
    grid) are excluded (score zeroed before and weight after the softmax, as in the reference,
    so the usable patches' weights sum to less than 1); scores are fused (identity kernel over
    both spatial orders), soft-maxed with ``softmax_scale`` and used to paste raw ``2*rate``
    background patches by transposed convolution. Fixes the reference, which used sample 0's mask
    for the whole batch (§11.7). The visualisation-only offset flow is not computed.
    """

    def __init__(self, ksize: int = 3, stride: int = 1, rate: int = 2, fuse_k: int = 3,
                 softmax_scale: float = 10.0, fuse: bool = True) -> None:
        super().__init__()
        self.ksize, self.stride, self.rate = ksize, stride, rate
        self.fuse_k, self.softmax_scale, self.fuse = fuse_k, softmax_scale, fuse
        self.register_buffer("fuse_weight", torch.eye(fuse_k).view(1, 1, fuse_k, fuse_k), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, h, w); ``mask`` (B, 1, H, W), 1 = hole, any H, W (resampled) → (B, C, h, w)."""
        b, c, h, w = x.shape
        r = self.rate
        if h % r or w % r or self.stride != 1:
            raise ValueError("contextual attention needs a stride of 1 and a feature size divisible by rate")
        raw = _patches(x, 2 * r, r * self.stride)  # (B, L, C, 2r, 2r), for pasting
        small = F.interpolate(x, size=(h // r, w // r), mode="nearest")
        hs, ws = small.shape[-2:]
        n_loc = hs * ws
        patches = _patches(small, self.ksize, self.stride)  # (B, L, C, k, k)
        m = F.interpolate(mask.to(x.dtype), size=(hs, ws), mode="nearest")
        valid = (_patches(m, self.ksize, self.stride).mean(dim=(2, 3, 4)) == 0).to(x.dtype)  # (B, L)
        norm = patches.pow(2).sum(dim=(2, 3, 4), keepdim=True).sqrt().clamp_min(1e-4)
        kernels = (patches / norm).reshape(b * n_loc, c, self.ksize, self.ksize)
        scores = F.conv2d(_same_pad(small, self.ksize, 1).reshape(1, b * c, hs + self.ksize - 1, -1),
                          kernels, groups=b).view(b, n_loc, hs, ws)
        if self.fuse:
            k = self.fuse_k
            fw = self.fuse_weight.to(scores.dtype)
            s = F.conv2d(_same_pad(scores.reshape(b, 1, n_loc, n_loc), k, 1), fw)
            s = s.view(b, hs, ws, hs, ws).permute(0, 2, 1, 4, 3).reshape(b, 1, n_loc, n_loc)
            s = F.conv2d(_same_pad(s, k, 1), fw)
            scores = s.view(b, ws, hs, ws, hs).permute(0, 2, 1, 4, 3).reshape(b, n_loc, hs, ws)
        valid = valid.view(b, n_loc, 1, 1)
        attn = F.softmax(scores * valid * self.softmax_scale, dim=1) * valid
        out = F.conv_transpose2d(attn.reshape(1, b * n_loc, hs, ws),
                                 raw.reshape(b * n_loc, c, 2 * r, 2 * r), stride=r, padding=r // 2,
                                 groups=b) / 4.0
        return out.view(b, c, out.shape[-2], out.shape[-1])[..., :h, :w]


# --- generators -----------------------------------------------------------------------------------


class CoarseGenerator(nn.Module):
    """Stage 1 (method §2.2): [masked CT, slice-ratio map, band mask] → coarse CT, neighbour seg, height.

    The (1 − CAM) attention map joins the decoder at 1/2 and full resolution.
    """

    def __init__(self, input_dim: int = 1, cnum: int = 16) -> None:
        super().__init__()
        c = cnum
        self.conv1 = ConvBlock(input_dim + 2, c, 5)
        self.conv2_downsample = ConvBlock(c, 2 * c, 3, 2)
        self.conv3 = ConvBlock(2 * c, 2 * c)
        self.conv4_downsample = ConvBlock(2 * c, 4 * c, 3, 2)
        self.conv5 = ConvBlock(4 * c, 4 * c)
        self.conv6 = ConvBlock(4 * c, 4 * c)
        self.conv7_atrous = ConvBlock(4 * c, 4 * c, dilation=2)
        self.conv8_atrous = ConvBlock(4 * c, 4 * c, dilation=4)
        self.conv9_atrous = ConvBlock(4 * c, 4 * c, dilation=8)
        self.conv10_atrous = ConvBlock(4 * c, 4 * c, dilation=16)
        self.conv11 = ConvBlock(4 * c, 4 * c)
        self.conv12 = ConvBlock(4 * c, 4 * c)
        self.conv20 = ConvBlock(4 * c + 1, 4 * c)
        self.conv13 = ConvBlock(4 * c, 2 * c)
        self.conv14 = ConvBlock(2 * c, 2 * c)
        self.conv19 = ConvBlock(2 * c + 1, 2 * c)
        self.conv15 = ConvBlock(2 * c, c)
        self.conv16 = ConvBlock(c, c // 2)
        self.conv17 = ConvBlock(c // 2, input_dim, activation="none")
        self.conv18 = ConvBlock(c // 2, 1, activation="sigmoid")
        self.fc_height = nn.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor, ratio_map: torch.Tensor, mask: torch.Tensor,
                attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(coarse_ct [-1, 1], coarse_seg (0, 1), height fraction (B,) in (0, 1))``."""
        y = self.conv1(torch.cat([x, ratio_map, mask], dim=1))
        y = self.conv3(self.conv2_downsample(y))
        y = self.conv6(self.conv5(self.conv4_downsample(y)))
        y = self.conv10_atrous(self.conv9_atrous(self.conv8_atrous(self.conv7_atrous(y))))
        height = torch.sigmoid(self.fc_height(y.mean(dim=(2, 3)))).squeeze(1)
        y = self.conv12(self.conv11(y))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = self.conv20(torch.cat([y, F.interpolate(attention, size=y.shape[-2:], mode="nearest")], dim=1))
        y = self.conv14(self.conv13(y))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = self.conv19(torch.cat([y, attention], dim=1))
        y = self.conv16(self.conv15(y))
        return self.conv17(y).clamp(-1.0, 1.0), self.conv18(y), height


class RefinementGenerator(nn.Module):
    """Stage 2 (method §2.3): [masked CT, coarse seg, band mask, slice ratio] → fine CT, target mask, height.

    A dilated-convolution branch and a contextual-attention branch are merged; the coarse CT joins
    just before the two output heads.
    """

    def __init__(self, input_dim: int = 1, cnum: int = 16) -> None:
        super().__init__()
        c = cnum
        self.conv1 = ConvBlock(input_dim + 3, c, 5)
        self.conv2_downsample = ConvBlock(c, c, 3, 2)
        self.conv3 = ConvBlock(c, 2 * c)
        self.conv4_downsample = ConvBlock(2 * c, 2 * c, 3, 2)
        self.conv5 = ConvBlock(2 * c, 4 * c)
        self.conv6 = ConvBlock(4 * c, 4 * c)
        self.conv7_atrous = ConvBlock(4 * c, 4 * c, dilation=2)
        self.conv8_atrous = ConvBlock(4 * c, 4 * c, dilation=4)
        self.conv9_atrous = ConvBlock(4 * c, 4 * c, dilation=8)
        self.conv10_atrous = ConvBlock(4 * c, 4 * c, dilation=16)
        self.pmconv1 = ConvBlock(input_dim + 3, c, 5)
        self.pmconv2_downsample = ConvBlock(c, c, 3, 2)
        self.pmconv3 = ConvBlock(c, 2 * c)
        self.pmconv4_downsample = ConvBlock(2 * c, 4 * c, 3, 2)
        self.pmconv5 = ConvBlock(4 * c, 4 * c)
        self.pmconv6 = ConvBlock(4 * c, 4 * c, activation="relu")
        self.contextual_attention = ContextualAttention(ksize=3, stride=1, rate=2, fuse_k=3,
                                                        softmax_scale=10.0, fuse=True)
        self.pmconv9 = ConvBlock(4 * c, 4 * c)
        self.pmconv10 = ConvBlock(4 * c, 4 * c)
        self.allconv11 = ConvBlock(8 * c, 4 * c)
        self.allconv19 = ConvBlock(4 * c, 4 * c)  # registered before allconv12, applied after it
        self.allconv12 = ConvBlock(4 * c, 4 * c)
        self.allconv13 = ConvBlock(4 * c, 2 * c)
        self.allconv14 = ConvBlock(2 * c, 2 * c)
        self.allconv15 = ConvBlock(2 * c, c)
        self.allconv16 = ConvBlock(c, c // 2)
        self.allconv17 = ConvBlock(c // 2 + input_dim, input_dim, activation="none")
        self.allconv18 = ConvBlock(c // 2 + input_dim, 1, activation="sigmoid")
        self.fc_height = nn.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor, coarse_ct: torch.Tensor, mask: torch.Tensor, coarse_seg: torch.Tensor,
                ratio_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(fine_ct [-1, 1], fine_seg (0, 1), height fraction (B,) in (0, 1))``."""
        xin = torch.cat([x, coarse_seg, mask, ratio_map], dim=1)
        y = self.conv3(self.conv2_downsample(self.conv1(xin)))
        y = self.conv6(self.conv5(self.conv4_downsample(y)))
        hallucinated = self.conv10_atrous(self.conv9_atrous(self.conv8_atrous(self.conv7_atrous(y))))
        p = self.pmconv3(self.pmconv2_downsample(self.pmconv1(xin)))
        p = self.pmconv6(self.pmconv5(self.pmconv4_downsample(p)))
        p = self.pmconv10(self.pmconv9(self.contextual_attention(p, mask)))
        y = self.allconv11(torch.cat([hallucinated, p], dim=1))
        height = torch.sigmoid(self.fc_height(y.mean(dim=(2, 3)))).squeeze(1)
        y = self.allconv19(self.allconv12(y))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = self.allconv14(self.allconv13(y))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = torch.cat([self.allconv16(self.allconv15(y)), coarse_ct], dim=1)
        return self.allconv17(y).clamp(-1.0, 1.0), self.allconv18(y), height


class GeneratorOutput(NamedTuple):
    """What ``Generator.forward`` returns; every image is ``(B, 1, H, W)`` on the input grid.

    * ``coarse_ct``, ``fine_ct``: CT in [-1, 1] over the whole slice (stage 1 and stage 2). Inside
      the band this is the synthesis; outside it approximates the (shifted) context.
    * ``coarse_seg``: in (0, 1), the healthy neighbour vertebrae visible in the context.
    * ``fine_seg``: in (0, 1), the pseudo-healthy target vertebra (threshold 0.5 for a label).
    * ``coarse_height_mm``, ``fine_height_mm``: ``(B,)``, the predicted healthy height of the target
      vertebra in mm, in (0, ``max_height_mm``); SHRM uses the fine head at inference (§3).
    """

    coarse_ct: torch.Tensor
    coarse_seg: torch.Tensor
    fine_ct: torch.Tensor
    fine_seg: torch.Tensor
    coarse_height_mm: torch.Tensor
    fine_height_mm: torch.Tensor


class Generator(nn.Module):
    """The HealthiVert-GAN two-stage generator (coarse + refinement), method §2.

    ``state_dict()`` keys and shapes equal the published ``latest_net_G.pth`` for the default
    configuration. Works on any input size: inputs are padded (CT −1, mask 0, attention 1) to a
    multiple of ``SIZE_MULTIPLE`` and outputs cropped back. In ``eval()`` mode the forward pass is
    deterministic. On CPU, ``generator.to(memory_format=torch.channels_last)`` ran ~30 % faster
    (256×256, batch 8, one thread on a shared machine) with outputs equal to ~1e-7.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        self.coarse_generator = CoarseGenerator(self.config.input_dim, self.config.ngf)
        self.fine_generator = RefinementGenerator(self.config.input_dim, self.config.ngf)

    def forward(self, ct: torch.Tensor, mask: torch.Tensor, slice_ratio: torch.Tensor | float,
                attention: torch.Tensor | None = None) -> GeneratorOutput:
        """Synthesize the hidden band.

        Args:
            ct: ``(B, input_dim, H, W)`` CT slices in [-1, 1] (``hu_to_model``), the context already
                shifted so that the band hides the target vertebra (method §1.9). Values inside
                the band are ignored (set to −1 here).
            mask: ``(B, 1, H, W)``, 1 inside the band to synthesize, 0 elsewhere (per sample).
            slice_ratio: ``(B,)`` or a float, |slice − centre| / extent × 2, ≈0 at the mid-plane,
                up to ≈0.8 laterally (§1.8); fed as a constant channel.
            attention: ``(B, 1, H, W)`` HGAM map 1 − CAM in [0, 1] (``hgam.attention_from_cam``),
                or ``None`` for the no-HGAM path (all ones, method §3).

        Returns:
            ``GeneratorOutput`` (coarse/fine CT, coarse/fine segmentation, heights in mm).
        """
        if ct.dim() != 4 or mask.dim() != 4 or mask.shape[1] != 1 or ct.shape[0] != mask.shape[0] \
                or ct.shape[-2:] != mask.shape[-2:] or ct.shape[1] != self.config.input_dim:
            raise ValueError(f"expected ct (B, {self.config.input_dim}, H, W) and mask (B, 1, H, W) on one grid, "
                             f"got {tuple(ct.shape)} and {tuple(mask.shape)}")
        b, _, h, w = ct.shape
        mask = mask.to(ct.dtype)
        attention = torch.ones_like(mask) if attention is None else attention.to(ct.dtype)
        if attention.shape != mask.shape:
            raise ValueError(f"attention must be (B, 1, H, W) like the mask, got {tuple(attention.shape)}")
        ratio = torch.as_tensor(slice_ratio, dtype=ct.dtype, device=ct.device).reshape(-1)
        ratio = ratio.expand(b) if ratio.numel() == 1 else ratio
        if ratio.numel() != b:
            raise ValueError(f"slice_ratio must have one value per sample ({b}), got {ratio.numel()}")

        pad_h, pad_w = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
        pads = [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]
        if pad_h or pad_w:
            ct = F.pad(ct, pads, value=-1.0)
            mask = F.pad(mask, pads, value=0.0)
            attention = F.pad(attention, pads, value=1.0)
        x = ct * (1.0 - mask) - mask  # the band carries no information: -1 (air)
        ratio_map = ratio.view(b, 1, 1, 1).expand(b, 1, x.shape[-2], x.shape[-1])

        coarse_ct, coarse_seg, h1 = self.coarse_generator(x, ratio_map, mask, attention)
        fine_ct, fine_seg, h2 = self.fine_generator(x, coarse_ct, mask, coarse_seg, ratio_map)
        if pad_h or pad_w:
            rows = slice(pads[2], pads[2] + h)
            cols = slice(pads[0], pads[0] + w)
            coarse_ct, coarse_seg = coarse_ct[..., rows, cols], coarse_seg[..., rows, cols]
            fine_ct, fine_seg = fine_ct[..., rows, cols], fine_seg[..., rows, cols]
        scale = self.config.max_height_mm
        return GeneratorOutput(coarse_ct, coarse_seg, fine_ct, fine_seg, h1 * scale, h2 * scale)


# --- discriminators -------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """pix2pix 70×70 PatchGAN (method §2.5): 1 channel in, BatchNorm, LeakyReLU 0.2, logits out.

    256×256 input → 30×30 logits; any input ≥ 32 px per side works. Weights N(0, 0.02).
    """

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → patch logits ``(B, 1, h, w)``."""
        return self.model(x)


class Discriminators(nn.Module):
    """The three PatchGANs (method §2.5).

    * ``global_d``: whole composited CT slice vs the real slice;
    * ``segmentation_d``: the *soft* target mask (fine_seg) vs the real target mask (fix of §3:
      the reference fed the thresholded mask, which passes no gradient);
    * ``local_d``: CT × band × central column window (``local_view``) vs the same crop of the real slice.

    Called as one module (``forward``), so it can be wrapped in DistributedDataParallel as a whole.
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config or GeneratorConfig()
        cfg = self.config
        self.global_d = PatchDiscriminator(cfg.input_dim, cfg.ndf, cfg.n_layers_d)
        self.segmentation_d = PatchDiscriminator(1, cfg.ndf, cfg.n_layers_d)
        self.local_d = PatchDiscriminator(cfg.input_dim, cfg.ndf, cfg.n_layers_d)

    def forward(self, ct: torch.Tensor, seg: torch.Tensor,
                local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch logits of (global_d(ct), segmentation_d(seg), local_d(local)); inputs (B, 1, H, W)."""
        return self.global_d(ct), self.segmentation_d(seg), self.local_d(local)


def local_window(mask: torch.Tensor, config: GeneratorConfig) -> torch.Tensor:
    """Band ``mask`` (B, 1, H, W) restricted to the central ``local_width_mm`` columns."""
    width = mask.shape[-1]
    half = config.local_width_px // 2
    lo, hi = max(0, width // 2 - half), min(width, width // 2 + half)
    window = torch.zeros_like(mask)
    window[..., lo:hi] = 1.0
    return mask * window


def local_view(image: torch.Tensor, mask: torch.Tensor, config: GeneratorConfig) -> torch.Tensor:
    """What the local discriminator sees: ``image`` inside the band and the central column window, 0 elsewhere."""
    return image * local_window(mask, config)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameter elements (spectral-norm ``weight_u``/``weight_v`` are buffers)."""
    return sum(p.numel() for p in module.parameters())
