"""The ``healthivert`` command line: grade, demo, batch, train-grader, simulate.

Exit status: 0 success, 2 a problem with the input or the request (the message says what to
do), 1 an unexpected internal error.
"""

from __future__ import annotations

import argparse



def engine_options(args: argparse.Namespace) -> dict:
    """Keyword options of the chosen engine from the command line (weights, device for the generator)."""
    if getattr(args, "engine", "context") != "generator":
        return {}
    return {"weights": getattr(args, "weights", None), "device": getattr(args, "device", None)}


def make_engine(args: argparse.Namespace):
    """The engine chosen on the command line, built once (weights are loaded here)."""
    from ..engines import get_engine

    return get_engine(getattr(args, "engine", "context"), **engine_options(args))
