#!/usr/bin/env python
"""Accuracy benchmark of every engine and baseline on simulated fractures (not a test).

A thin wrapper of ``healthivert bench`` (``HealthiVertLib/evaluation/``, where the protocol is
documented). Run from the repository root::

    python benchmarks/bench_accuracy.py                 # = healthivert bench -> benchmarks/accuracy.md
    python benchmarks/bench_accuracy.py --workers 2     # two processes
    python benchmarks/bench_accuracy.py --quick --out quick/accuracy.md

See benchmarks/README.md for how to read the numbers.
"""

from __future__ import annotations

import sys

from HealthiVertLib.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
