"""The HGAM fracture classifier: a small 2D SE-ResNet that tells fractured sagittal slices from healthy ones.

Its weights are a safetensors file with a JSON model card (``weights``); its Grad-CAM++ map is the
attention of HGAM (``hgam``); it is trained by ``training.hgam``. 0.32 M parameters (the
reference's MONAI SE-ResNet50, whose weights were never published, has tens of millions).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HealthiVertError


@dataclass(frozen=True)
class ClassifierConfig:
    """Fracture classifier architecture and the geometry of its input slices (rows, columns)."""

    in_channels: int = 1
    width: int = 16  # channels of the first stage; doubled per stage
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # residual SE blocks per stage
    num_classes: int = 2  # 0 = no fracture, 1 = fracture
    image_size: tuple[int, int] = (256, 256)
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    hu_window: tuple[float, float] = (-300.0, 800.0)  # input normalised like the generator's CT

    def __post_init__(self) -> None:
        for name in ("blocks", "image_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("spacing_mm", "hu_window"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.in_channels < 1 or self.width < 4 or not self.blocks or min(self.blocks) < 1 or self.num_classes < 2:
            raise HealthiVertError("Invalid classifier configuration: in_channels >= 1, width >= 4, "
                                   "at least one stage with >= 1 block, num_classes >= 2 are required.")
        if not all(math.isfinite(s) and s > 0 for s in self.spacing_mm):
            raise HealthiVertError("Invalid classifier configuration: spacing_mm must be positive.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise HealthiVertError(f"Unknown classifier configuration keys {unknown}; "
                                   "the weights belong to another version.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class SEBlock(nn.Module):
    """Residual block: 2× (conv3×3, BatchNorm), squeeze-and-excitation, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, reduction: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        hidden = max(1, out_ch // reduction)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_ch, hidden, 1), nn.ReLU(),
                                nn.Conv2d(hidden, out_ch, 1), nn.Sigmoid())
        self.shortcut = nn.Identity() if stride == 1 and in_ch == out_ch else nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y * self.se(y) + self.shortcut(x))


class FractureClassifier(nn.Module):
    """2D SE-ResNet fracture classifier on straightened sagittal slices.

    Input ``(B, 1, H, W)`` in [-1, 1] (``hu_to_model``, same window as the generator), any size
    ≥ 16 px; output logits ``(B, num_classes)``, class 1 = fracture. ``cam_layer`` is the module
    whose output Grad-CAM++ explains (the last stage, 1/16 of the input resolution).
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ClassifierConfig()
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, cfg.width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(cfg.width), nn.ReLU())
        stages, ch = [], cfg.width
        for i, n in enumerate(cfg.blocks):
            out = cfg.width * 2 ** i
            blocks = [SEBlock(ch, out, 1 if i == 0 else 2)] + [SEBlock(out, out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            ch = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(ch, cfg.num_classes)

    @property
    def cam_layer(self) -> nn.Module:
        """The layer Grad-CAM++ uses by default: the last stage."""
        return self.stages[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))
