"""Child processes that never outlive their parent: :func:`exit_with_parent`.

Used by every process HealthiVert starts to work for another (``app.batch`` pool and dask workers,
``outputs.figures`` drawing processes), so that a parent killed even by SIGKILL leaves nothing running.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(*, use_prctl: bool = True) -> None:
    """End this process when its parent dies (even of SIGKILL): on Linux the kernel sends SIGKILL
    (``prctl(PR_SET_PDEATHSIG)``, with ``use_prctl``: only for a child of the parent's main thread, as the
    signal follows the thread that started the child), and everywhere a daemon thread checks the parent
    process id every second."""
    parent = os.getppid()
    if use_prctl and sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent,), name="healthivert-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


# --- threads: one place decides how many threads this process computes with ------------------

_THREADS: list[int] = []  # the number decided by set_threads (empty: never decided)
_THREAD_LIMITS: list = []  # keeps threadpoolctl's limit in force for the life of the process


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Decide, for this whole process, how many threads SimpleITK filters, BLAS and OpenMP
    (threadpoolctl) and PyTorch compute with; return that number.

    ``None``: every usable core (one case alone on the machine, ``healthivert grade``); a batch worker
    passes its share (``cores // workers``), so the workers together never run more threads than
    there are cores. PyTorch gets the number now when it is imported, else when the generator engine
    is built (:func:`decided_threads`)."""
    import SimpleITK as sitk

    n = max(1, int(threads or usable_cores()))
    _THREADS[:] = [n]
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it BLAS keeps its own threads
        pass
    else:
        _THREAD_LIMITS[:] = [threadpool_limits(limits=n)]
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


def decided_threads() -> int | None:
    """The thread count :func:`set_threads` decided for this process, or None when nothing decided it."""
    return _THREADS[0] if _THREADS else None
