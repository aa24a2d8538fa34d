"""Pseudo-healthy engines: predict a vertebral body as it was before a fracture.

Every engine takes the target body and its neighbours (each in its own local frame, ``geometry``)
and returns a pseudo-healthy occupancy on the target's grid (``base``: the interface). Heights,
RHLV and grades are then measured the same way for every engine (``measure``), so engines are
interchangeable. ``neighbours`` gathers the vertebrae around a target and rejects those that are
cut or look fractured; ``spine`` (the default) predicts the target's heights from the whole spine
with a robust fit and a level prior (``spine_model``); ``context`` transfers the usable neighbours'
height maps (no weights, no CT); ``generator`` is the learned HealthiVert-GAN engine (PyTorch,
imported only when asked for).
This module is the registry: :func:`get_engine` by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the engines import scipy: only the command that grades pays for it
    from .base import PseudoHealthyEngine


def _spine_engine(**options: Any) -> PseudoHealthyEngine:
    """The default engine (``spine``)."""
    from .spine import SpineEngine

    return SpineEngine(**options)


def _context_engine(**options: Any) -> PseudoHealthyEngine:
    """The nearest-neighbours engine (``context``)."""
    from .context import ContextEngine

    return ContextEngine(**options)


def _generator_engine(**options: Any) -> PseudoHealthyEngine:
    """The learned HealthiVert-GAN engine; imported only when asked for (it needs PyTorch)."""
    from ..errors import HealthiVertError

    try:
        from .generator.engine import GeneratorEngine
    except ImportError as err:
        raise HealthiVertError(
            f"The generator engine needs PyTorch and safetensors ({err}); install them with "
            "'pip install torch safetensors', or use --engine spine (the default) or context."
        ) from None
    return GeneratorEngine(**options)


# The default: best on the real benchmark (radiologists' grades, benchmarks/real.md).
DEFAULT_ENGINE = "spine"
ENGINES: dict[str, Callable[..., PseudoHealthyEngine]] = {  # in the order a user interface lists them
    "spine": _spine_engine,
    "context": _context_engine,
    "generator": _generator_engine,
}


def get_engine(name: str, **options: Any) -> PseudoHealthyEngine:
    """The engine called ``name`` built with ``options`` (e.g. the generator's ``weights``,
    ``device``); HealthiVertError lists the available ones otherwise."""
    from ..errors import HealthiVertError

    if name not in ENGINES:
        raise HealthiVertError(f"Unknown engine {name!r}; available: {', '.join(sorted(ENGINES))}.")
    return ENGINES[name](**options)
