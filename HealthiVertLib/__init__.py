"""HealthiVert core: grade vertebral compression fractures on CT from a pseudo-healthy vertebra.

Pure Python (numpy, scipy, SimpleITK, scikit-learn); no Slicer import anywhere in this package
except the ``scene`` package. Research use only, not for diagnosis.
"""

from .errors import HealthiVertError

__version__ = "0.1.0"
__all__ = ["HealthiVertError", "__version__"]
