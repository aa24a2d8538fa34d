"""Progress of a long command: a tqdm bar, machine-readable lines, or nothing.

:func:`make_progress` returns a callback ``(fraction, message)`` and a function that closes it.
Mode ``lines`` prints ``HEALTHIVERT_PROGRESS <percent> <message>`` on stdout, which
``app.background`` (the Slicer module's runner) parses; ``none`` is silent; otherwise a tqdm bar.
"""

from __future__ import annotations

from typing import Callable



PROGRESS_PREFIX = "HEALTHIVERT_PROGRESS"


def make_progress(mode: str, total_label: str = "grading") -> tuple[Callable[[float, str], None], Callable[[], None]]:
    """A progress callback for ``mode`` and a function that closes it."""
    if mode == "lines":
        def report(fraction: float, message: str) -> None:
            print(f"{PROGRESS_PREFIX} {100 * fraction:.0f} {message}", flush=True)
        return report, lambda: None
    if mode == "none":
        return (lambda fraction, message: None), lambda: None
    from tqdm import tqdm

    bar = tqdm(total=100, desc=total_label, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message)
        bar.refresh()

    return update, bar.close
