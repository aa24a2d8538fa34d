"""Where the files shipped inside the package are: the sample case, the default grader, the weights."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SAMPLE_DIR = DATA_DIR / "sample"  # TotalSegmentator example abdomen CT and labels (Apache-2.0)
WEIGHTS_DIR = DATA_DIR / "weights"  # safetensors + JSON model cards
DEFAULT_GRADER_PATH = DATA_DIR / "grader_default.json"
