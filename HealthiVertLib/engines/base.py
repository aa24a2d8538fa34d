"""The engine interface: what every pseudo-healthy engine takes, returns and raises.

An engine predicts the target vertebral body as it was before a fracture. It takes the target body
and its neighbours (:class:`Neighbour`, each in its own local frame) and returns a
:class:`HealthyPrediction`: a pseudo-healthy occupancy on the target's grid (and, for engines that
synthesise one, a pseudo-healthy CT). Heights, RHLV, grading and reports are computed from that
occupancy the same way for every engine, so engines are interchangeable
(:class:`PseudoHealthyEngine`). :class:`NoContextError`: no usable neighbour;
:class:`EngineUnavailable`: the engine cannot work on this input (e.g. it needs the CT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..geometry.body import VertebralBody


@dataclass
class Neighbour:
    """A vertebra near the target: its body and signed level distance (negative = cranial)."""

    level: str
    offset: float
    body: VertebralBody


@dataclass
class HealthyPrediction:
    """The pseudo-healthy target on the target's grid, plus what the engine used."""

    occupancy: np.ndarray  # float32 (S, U, V) in [0, 1]
    context: list[dict[str, Any]] = field(default_factory=list)
    ct: np.ndarray | None = None  # pseudo-healthy HU on the same grid, if the engine makes one


class NoContextError(Exception):
    """No usable neighbour; the message says why each candidate was rejected."""


class EngineUnavailable(Exception):
    """The engine cannot work on this input (e.g. it needs the CT); the message says what to do."""


class PseudoHealthyEngine(Protocol):
    """What every engine provides."""

    name: str

    def predict(self, target: VertebralBody, neighbours: list[Neighbour]) -> HealthyPrediction:
        """Pseudo-healthy occupancy of ``target``; raises NoContextError when it cannot."""
