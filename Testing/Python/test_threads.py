"""processes.set_threads: the one place that decides a process's threads (SimpleITK, BLAS/OpenMP, PyTorch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (thread settings are process-wide) and return its stdout."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_set_threads_limits_simpleitk_blas_and_torch():
    out = _run("""
        import torch, SimpleITK as sitk
        from threadpoolctl import threadpool_info
        from HealthiVertLib.processes import decided_threads, set_threads
        assert decided_threads() is None
        print(set_threads(1), decided_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
              torch.get_num_threads(), sorted({p["num_threads"] for p in threadpool_info()}))
    """)
    assert out == "1 1 1 1 [1]"


def test_no_number_means_every_usable_core():
    out = _run("""
        import os, SimpleITK as sitk
        from HealthiVertLib.processes import set_threads, usable_cores
        print(set_threads() == usable_cores() == len(os.sched_getaffinity(0)) == sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    """)
    assert out == "True"


def test_the_generator_takes_the_decided_number_when_built_after_it():
    out = _run("""
        from HealthiVertLib.processes import set_threads
        set_threads(1)
        import torch
        torch.set_num_threads(2)  # e.g. a library changed it in between
        from HealthiVertLib.engines import get_engine
        get_engine("generator")
        print(torch.get_num_threads())
    """)
    assert out == "1"
