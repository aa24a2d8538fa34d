"""The ``healthivert`` command line: grade, demo, batch, train-grader, simulate.

Exit status: 0 success, 2 a problem with the input or the request (the message says what to
do), 1 an unexpected internal error.
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
