"""HealthiVert core: grade vertebral compression fractures on CT from a pseudo-healthy vertebra.

Pure Python (numpy, scipy, SimpleITK, scikit-learn); no Slicer import anywhere in this package
except the ``scene`` package. Research use only, not for diagnosis.
"""

from .errors import HealthiVertError

__version__ = "0.1.0"
NOTICE = "HealthiVert is for research use only; it is not a medical device and not for diagnosis."
__all__ = ["NOTICE", "HealthiVertError", "__version__"]
