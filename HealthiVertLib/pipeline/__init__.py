"""One case from labels (and CT) to graded vertebrae: the data flow of the design in one place.

``case``: :func:`grade_case` orders the vertebrae, fits the spine curve, extracts the bodies,
asks the engine for each pseudo-healthy body, measures, grades, and maps the results back to the
input grid; ``region``: the spine's box of the input grid, where every step works (the case is
cropped to it once and the output volumes pasted back); ``volumes``: the per-vertebra views and the output volumes on the input grid;
``records``: the result records (:class:`CaseResult`, :class:`VertebraResult`) that the outputs,
the CLI and Slicer read.
"""

from .case import grade_case
from .records import CaseResult, VertebraResult

__all__ = ["CaseResult", "VertebraResult", "grade_case"]
