"""Shared fixtures: paths of the real test data (fractures are simulated with HealthiVertLib.truth.simulate)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import SimpleITK as sitk

from HealthiVertLib.io.resources import SAMPLE_DIR

DATA = Path(__file__).resolve().parents[1] / "Data"
SAMPLE_SEG = SAMPLE_DIR / "seg.nii.gz"
SAMPLE_CT = SAMPLE_DIR / "ct.nii.gz"
SAMPLE_BODY = SAMPLE_DIR / "vertebrae_body.nii.gz"
TPT = DATA / "tptbox"
TPT_CT = TPT / "sub-ct_label-22_ct.nii.gz"
TPT_SEG = TPT / "sub-ct_seg-vert_label-22_msk.nii.gz"
TPT_SUB = TPT / "sub-ct_seg-subreg_label-22_msk.nii.gz"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def sample_seg() -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE_SEG))


@pytest.fixture
def torch_one_thread():
    """One PyTorch intra-op thread: small convolutions on a shared CPU run far faster without OpenMP spinning."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
