"""Weight files: our ``.safetensors`` + JSON model card, and the published ``latest_net_G.pth``.

* ``save_weights`` writes ``<name>.safetensors`` (tensors + the architecture config in its
  metadata) and the model card ``<name>.json`` beside it, both atomically.
* ``load_generator`` / ``load_classifier`` rebuild the network from the stored config, check every
  tensor name and shape, and return it in eval mode.
* ``load_reference_checkpoint`` reads the HealthiVert-GAN authors' format (``torch.save`` of the
  generator's state_dict) with ``torch.load(weights_only=True)``: no arbitrary object is ever
  unpickled. Its legacy spectral-norm tensors (``weight_orig``, ``weight_u``, ``weight_v``) load 1:1
  into our legacy-hook convolutions; checkpoints written with the newer
  ``torch.nn.utils.parametrizations.spectral_norm`` names are mapped onto them.

Any missing, damaged, truncated or mismatched file raises ``HealthiVertError`` naming the problem;
nothing ever falls back to random weights.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import HealthiVertError
from ...io.files import write_bytes_atomic, write_text_atomic
from .classifier import ClassifierConfig, FractureClassifier
from .networks import Generator, GeneratorConfig

SIMULATED_DATA_NOTICE = "Trained on simulated data — research use only, not for diagnosis."
KINDS = {"generator": (Generator, GeneratorConfig), "hgam_classifier": (FractureClassifier, ClassifierConfig)}
_LISTED = 8  # names listed per category in mismatch errors


@dataclass
class ModelCard:
    """What a weight file is, how it was made and how good it is (saved as JSON beside it).

    ``kind`` is ``generator`` or ``hgam_classifier``; ``config`` the architecture config
    (``GeneratorConfig.to_dict()`` / ``ClassifierConfig.to_dict()``), which also fixes the input
    size in pixels and the pixel spacing in mm. ``validation_metrics`` maps metric names to numbers.
    """

    kind: str
    config: dict[str, Any]
    training_data: str
    training_command: str
    validation_metrics: dict[str, float] = field(default_factory=dict)
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    notice: str = SIMULATED_DATA_NOTICE
    architecture: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The card as JSON, with input size and spacing spelled out for readers."""
        data = asdict(self)
        if not data["architecture"]:
            data["architecture"] = _ARCHITECTURES.get(self.kind, self.kind)
        data["input_size_px"] = self.config.get("image_size")
        data["spacing_mm"] = self.config.get("spacing_mm")
        data["validation_metrics"] = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None)
                                      for k, v in self.validation_metrics.items()}  # strict JSON: no NaN
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        """Parse a card written by ``to_json``."""
        try:
            data = json.loads(text)
            data.pop("input_size_px", None)
            data.pop("spacing_mm", None)
            return cls(**data)
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise HealthiVertError(f"The {source} is not a valid HealthiVert model card ({_first_line(exc)}). "
                                   "Restore it from the release or re-export the weights.") from None


_ARCHITECTURES = {
    "generator": "HealthiVert-GAN two-stage inpainting generator (coarse + refinement with contextual "
                 "attention, spectral-norm conv + ELU, height heads), HealthiVertLib.engines.generator.networks.Generator",
    "hgam_classifier": "2D SE-ResNet fracture classifier for HGAM Grad-CAM++, "
                       "HealthiVertLib.engines.generator.classifier.FractureClassifier",
}


def card_path(weights_path: str | Path) -> Path:
    """The model card beside ``<name>.safetensors``: ``<name>.json``."""
    return Path(weights_path).with_suffix(".json")


def save_weights(module: nn.Module, path: str | Path, card: ModelCard) -> tuple[Path, Path]:
    """Write ``module``'s state_dict to ``path`` (.safetensors) and ``card`` to ``card_path(path)``.

    The card's config is stored in the safetensors metadata too, so the tensors alone are enough
    to rebuild the network. Returns (weights path, card path).
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise HealthiVertError(f"Weights are saved as .safetensors; got {path.name}.")
    if card.kind not in KINDS:
        raise HealthiVertError(f"Unknown model kind {card.kind!r}; expected one of {sorted(KINDS)}.")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    metadata = {"format": "pt", "kind": card.kind, "config": json.dumps(card.config, sort_keys=True)}
    write_bytes_atomic(path, save(tensors, metadata=metadata))
    write_text_atomic(card_path(path), card.to_json())
    return path, card_path(path)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file; a missing, truncated or damaged file raises."""
    from safetensors.torch import load

    path = Path(path)
    data = _read_bytes(path, "weight file")
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_len])
        metadata = header.get("__metadata__") or {}
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise HealthiVertError(f"The weight file {path.name} is damaged or truncated ({_first_line(exc)}). "
                               "Download or copy it again.") from None
    if not isinstance(metadata, dict):
        raise HealthiVertError(f"The weight file {path.name} has malformed metadata. Download or copy it again.")
    return tensors, metadata


def read_model_card(weights_path: str | Path) -> ModelCard:
    """The model card beside ``weights_path``."""
    path = card_path(weights_path)
    return ModelCard.from_json(_read_bytes(path, "model card").decode("utf-8", "replace"), f"model card {path.name}")


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Our generator weights (.safetensors + config) → ``Generator`` in eval mode on ``device``."""
    return _load_ours(path, "generator", device)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> FractureClassifier:
    """Our HGAM fracture-classifier weights (.safetensors + config) → classifier in eval mode."""
    return _load_ours(path, "hgam_classifier", device)


def _load_ours(path: str | Path, kind: str, device: str | torch.device) -> Any:
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    stored_kind = metadata.get("kind")
    if stored_kind != kind:
        raise HealthiVertError(f"{path.name} holds {stored_kind or 'unlabelled'} weights, not {kind} weights.")
    model_cls, config_cls = KINDS[kind]
    try:
        config = config_cls.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError):
        raise HealthiVertError(f"{path.name} does not record a valid architecture; "
                               "it was not written by this HealthiVert version.") from None
    model = model_cls(config)
    _load_checked(model, tensors, path.name)
    return model.to(device).eval()


def load_reference_checkpoint(path: str | Path, config: GeneratorConfig | None = None,
                              device: str | torch.device = "cpu") -> Generator:
    """The HealthiVert-GAN authors' ``latest_net_G.pth`` → ``Generator`` in eval mode.

    Read with ``torch.load(weights_only=True)``: only tensors and plain containers are accepted. A
    ``module.`` prefix (DataParallel) and a ``{"state_dict": ...}`` wrapper are tolerated. The
    default config (``input_dim=1, ngf=16``, 256×256 slices at 1 mm) is the published one.
    """
    path = Path(path)
    _read_bytes(path, "checkpoint", check_only=True)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "truncated" in str(exc).lower():
            raise HealthiVertError(f"The checkpoint {path.name} is damaged or truncated ({_first_line(exc)}). "
                                   "Download or copy it again.") from None
        raise HealthiVertError(f"{path.name} contains objects other than tensors, which HealthiVert refuses to "
                               f"unpickle for safety ({_first_line(exc)}). Export the generator's "
                               "state_dict only.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, struct.error) as exc:
        raise HealthiVertError(f"The checkpoint {path.name} is damaged or truncated ({_first_line(exc)}). "
                               "Download or copy it again.") from None
    if isinstance(obj, Mapping) and set(obj) <= {"state_dict", "epoch", "iteration"} and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise HealthiVertError(f"{path.name} is not a generator state_dict (found {type(obj).__name__}).")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise HealthiVertError(f"{path.name} is not a plain state_dict: entry {key!r} is a "
                                   f"{type(value).__name__}, not a tensor.")
        state[_reference_key(key[len("module."):] if key.startswith("module.") else key)] = value
    model = Generator(config or GeneratorConfig())
    _load_checked(model, state, path.name)
    return model.to(device).eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _reference_key(key: str) -> str:
    """Map ``torch.nn.utils.parametrizations.spectral_norm`` names onto the legacy-hook names."""
    for new, old in ((".parametrizations.weight.original", ".weight_orig"),
                     (".parametrizations.weight.0._u", ".weight_u"),
                     (".parametrizations.weight.0._v", ".weight_v")):
        if key.endswith(new):
            return key[: -len(new)] + old
    return key


def _load_checked(model: nn.Module, tensors: Mapping[str, torch.Tensor], name: str) -> None:
    """Strict name/shape/finiteness check, then ``load_state_dict(strict=True)``."""
    own = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [f"{k} {tuple(tensors[k].shape)} (expected {expected[k]})"
                  for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k]]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
            problems.append(f"{len(items)} {label}: " + ", ".join(items[:_LISTED]) + more)
    if problems:
        raise HealthiVertError(f"The weights in {name} do not fit this network ({'; '.join(problems)}). "
                               "Use weights made for this HealthiVert version and configuration.")
    floats = [v.reshape(-1) for v in tensors.values() if v.is_floating_point()]
    if floats and not bool(torch.isfinite(torch.cat([v.float() for v in floats])).all()):
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        raise HealthiVertError(f"The weights in {name} contain NaN or infinite values ({', '.join(bad[:_LISTED])}); "
                               "the file is damaged or the training diverged.")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)


def _read_bytes(path: Path, what: str, check_only: bool = False) -> bytes:
    if not path.exists():
        raise HealthiVertError(f"The {what} {path} does not exist. Check the path or download the weights.")
    if not path.is_file():
        raise HealthiVertError(f"The {what} {path} is not a file.")
    if path.stat().st_size == 0:
        raise HealthiVertError(f"The {what} {path.name} is empty. Download or copy it again.")
    return b"" if check_only else path.read_bytes()


def effective_conv_weight(weight_orig: torch.Tensor, weight_u: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """The convolution weight a legacy spectral-norm module uses in eval mode: W / (uᵀ W v)."""
    sigma = torch.dot(weight_u, weight_orig.reshape(weight_orig.shape[0], -1) @ weight_v)
    if not math.isfinite(float(sigma)) or float(sigma) == 0.0:
        raise HealthiVertError("Spectral-norm vectors give a zero or invalid norm; the weights are damaged.")
    return weight_orig / sigma
