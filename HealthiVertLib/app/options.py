"""Engine choice on the command line: the chosen engine and its options (weights, device).

Shared by the ``healthivert`` subcommands that grade (``cli``) and by ``batch``, so every command
builds the engine the same way, once: the ``generator`` engine's weights are loaded here. Also the
``type=`` checks of numeric options (``non_negative_int``, ``positive_int``, ``positive_float``).
"""

from __future__ import annotations

import argparse
import math
import sys

from ..engines import DEFAULT_ENGINE
from ..errors import HealthiVertError

GENERATOR_ONLY = ("weights", "device")  # options only the generator engine uses
DEVICE_HELP = ("where the networks run: auto (default: a CUDA GPU only when this PyTorch build has kernels for it "
               "and a test kernel runs on it, else Apple's mps when it works, else the CPU, with one line on stderr "
               "saying why), cpu, cuda, cuda:N or mps (a GPU that cannot work is an error).")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    value = _parse(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    value = _parse(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _parse(text, float, "a number")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, not {text}")
    return value


def _parse(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {what}") from None



def engine_options(args: argparse.Namespace) -> dict:
    """Keyword options of the chosen engine from the command line (weights, device for the generator).

    ``--weights`` or ``--device`` with another engine is an error: it would be silently ignored.
    """
    if getattr(args, "engine", DEFAULT_ENGINE) != "generator":
        given = [f"--{name}" for name in GENERATOR_ONLY if getattr(args, name, None) is not None]
        if given:
            raise HealthiVertError(
                f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --engine generator only (the {getattr(args, 'engine', DEFAULT_ENGINE)} "
                "engine uses no weights and runs on the CPU). Leave out " + " and ".join(given) + " or add --engine generator."
            )
        return {}
    return {"weights": getattr(args, "weights", None), "device": getattr(args, "device", None)}


def make_engine(args: argparse.Namespace):
    """The engine chosen on the command line, built once (weights are loaded here); its device line on stderr."""
    from ..engines import get_engine

    return announce_device(get_engine(getattr(args, "engine", DEFAULT_ENGINE), **engine_options(args)))


def announce_device(engine):
    """Print the device line of an engine that runs networks on stderr, once, when ``auto`` chose it
    (which device and, on a fall-back, why); a device the user named needs no line. The line is in
    the report's ``engine_notes`` either way. Returns ``engine``."""
    choice = getattr(engine, "device_choice", None)
    if choice is not None and not choice.requested:
        print(f"healthivert: {choice.note}", file=sys.stderr)
    return engine
