"""Outputs on the bundled sample equal the stored reference (scripts/make_output_reference.py).

The reference was computed by the code before the spine-box cropping of ``pipeline.region`` (its
commit is in each JSON file): the per-vertebra numbers and the output volumes must not change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "Testing" / "Data" / "healthivert" / "output_reference"
sys.path.insert(0, str(ROOT / "scripts"))
import make_output_reference as ref  # noqa: E402

TOLERANCE = 1e-4


def _close(a, b, where: str) -> None:
    """Equal structures, numbers within TOLERANCE."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b is not None and abs(a - b) <= TOLERANCE, (where, a, b)
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("config", sorted(ref.CONFIGS))
def test_outputs_equal_the_reference(config):
    if ref.CONFIGS[config][0] == "generator":
        pytest.importorskip("torch")
        pytest.importorskip("safetensors")
    expected = json.loads((REFERENCE / f"{config}.json").read_text(encoding="utf-8"))
    stored = np.load(REFERENCE / f"{config}.npz")
    result, case = ref.grade(config)
    got = ref.vertebra_records(result)
    assert [v["level"] for v in got] == [v["level"] for v in expected["vertebrae"]]
    for g, e in zip(got, expected["vertebrae"]):
        assert (g["status"], g["grade"], g["grade_rule"], g["complete"]) == \
            (e["status"], e["grade"], e["grade_rule"], e["complete"]), g["level"]
        _close(json.loads(json.dumps(g)), e, g["level"])
    arrays = ref.volume_arrays(result, case)
    assert sorted(arrays) == sorted(stored.files)
    for name, array in arrays.items():
        want = stored[name]
        assert array.shape == want.shape and array.dtype == want.dtype, name
        if np.issubdtype(want.dtype, np.integer):
            assert np.array_equal(array, want), f"{name}: {np.count_nonzero(array != want)} voxels differ"
        elif name == "healthy_ct_volume":
            # the sample CT holds whole HU, so the pseudo-healthy CT is now int16: synthesized HU rounded
            assert result.healthy_ct_volume.GetPixelIDTypeAsString() == "16-bit signed integer"
            np.testing.assert_allclose(array, want, rtol=0, atol=0.5 + TOLERANCE, err_msg=name)
            assert not np.any((array != 0) & (want == 0)), "no voxel changed that was not synthesized before"
        else:
            np.testing.assert_allclose(array, want, rtol=0, atol=TOLERANCE, err_msg=name)
