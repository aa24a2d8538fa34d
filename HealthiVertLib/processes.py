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
