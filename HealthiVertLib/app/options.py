"""Engine choice on the command line: the chosen engine and its options (weights, device).

Shared by the ``healthivert`` subcommands that grade (``cli``) and by ``batch``, so every command
builds the engine the same way, once: the ``generator`` engine's weights are loaded here.
"""

from __future__ import annotations

import argparse

from ..engines import DEFAULT_ENGINE



def engine_options(args: argparse.Namespace) -> dict:
    """Keyword options of the chosen engine from the command line (weights, device for the generator)."""
    if getattr(args, "engine", DEFAULT_ENGINE) != "generator":
        return {}
    return {"weights": getattr(args, "weights", None), "device": getattr(args, "device", None)}


def make_engine(args: argparse.Namespace):
    """The engine chosen on the command line, built once (weights are loaded here)."""
    from ..engines import get_engine

    return get_engine(getattr(args, "engine", DEFAULT_ENGINE), **engine_options(args))
