"""The generator engine: band and SHRM geometry, batching, the grade command end to end, refusals.

End-to-end tests use the bundled default weights when they are installed, else a tiny weights
file written here (random weights: only the plumbing is checked, not the synthesis quality).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from conftest import SAMPLE_CT, SAMPLE_SEG  # noqa: E402

from HealthiVertLib.app.cli import main  # noqa: E402
from HealthiVertLib.engines.base import EngineUnavailable  # noqa: E402
from HealthiVertLib.engines import get_engine  # noqa: E402
from HealthiVertLib.errors import HealthiVertError  # noqa: E402
from HealthiVertLib.engines.generator.slices import AIR_HU, VIEWS, band_rows, expected_height_mm, hide, neighbourhood_members, shrm_compose, slice_positions  # noqa: E402
from HealthiVertLib.engines.generator.engine import DEFAULT_WEIGHTS, GeneratorEngine  # noqa: E402
from HealthiVertLib.engines.generator.networks import Generator, GeneratorConfig  # noqa: E402
from HealthiVertLib.engines.generator.weights import ModelCard, save_weights  # noqa: E402
from HealthiVertLib.io.case import Case, load_case  # noqa: E402
from HealthiVertLib.geometry.spine import SpineBodies, spine_levels  # noqa: E402
from HealthiVertLib.engines.neighbours import gather_neighbours  # noqa: E402
from HealthiVertLib.truth.simulate import simulate_fracture  # noqa: E402
from HealthiVertLib.geometry.straighten import block_to_index_affine  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The default weights, or a tiny random generator (48x32 px at 3 mm) while they are missing."""
    if DEFAULT_WEIGHTS.exists():
        return DEFAULT_WEIGHTS
    cfg = GeneratorConfig(ngf=4, ndf=8, image_size=(48, 32), spacing_mm=(3.0, 3.0), band_mm=45.0,
                          max_height_mm=60.0, local_width_mm=70.0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(Generator(cfg), path, ModelCard(kind="generator", config=cfg.to_dict(),
                                                  training_data="none: random weights for a plumbing test",
                                                  training_command="(test)"))
    return path


@pytest.fixture(scope="module")
def sample_case():
    return load_case(SAMPLE_SEG, SAMPLE_CT)


def _target(case: Case, level: str):
    levels = spine_levels(case)
    bodies = SpineBodies(case, levels)
    target = next(v for v in levels if v.level == level)
    return bodies.get(target), gather_neighbours(target, levels, bodies)


# ----------------------------------------------------------------------------- band and SHRM


def _column_slices():
    """One slice (20 rows x 3 columns): neighbour 2 on rows 2-5, target 1 on rows 8-11, neighbour 3 on 14-17."""
    hu = np.tile(np.arange(20, dtype=np.float32)[None, :, None], (1, 1, 3)) * 10
    labels = np.zeros((1, 20, 3), np.uint8)
    labels[0, 2:6], labels[0, 8:12], labels[0, 14:18] = 2, 1, 3
    return hu, labels


def test_hide_replaces_the_target_by_a_centred_band_and_pushes_the_context_apart():
    hu, labels = _column_slices()
    hid = hide(hu, labels, 1, band_px=8, spacing=1.0, min_area_mm2=1)
    assert hid.valid[0] and (hid.x1[0], hid.x2[0], hid.top[0], hid.band[0]) == (8, 11, 6, 8)
    assert np.array_equal(np.flatnonzero(hid.mask[0, :, 0]), np.arange(6, 14))
    assert np.all(hid.hu[0, 6:14] == AIR_HU) and not np.any(hid.labels[0] == 1)
    assert np.array_equal(np.flatnonzero(hid.labels[0, :, 0] == 2), [0, 1, 2, 3])  # up by 2 rows
    assert np.array_equal(np.flatnonzero(hid.labels[0, :, 0] == 3), [16, 17, 18, 19])  # down by 2 rows
    assert hid.hu[0, 5, 0] == hu[0, 7, 0] and hid.hu[0, 14, 0] == hu[0, 12, 0]  # the disc rows follow
    cam = np.broadcast_to(np.arange(20.0)[None, :, None], (1, 20, 3))
    assert np.array_equal(hid.shift(cam)[0, :, 0], np.r_[np.arange(2, 8), np.zeros(8), np.arange(12, 18)])


def test_hide_gives_a_band_at_least_the_vertebra_plus_margin_and_flags_unusable_slices():
    hu, labels = _column_slices()
    hid = hide(hu, labels, 1, band_px=2, spacing=1.0, min_area_mm2=1)
    assert hid.band[0] == 4 + 2  # never shorter than the vertebra + 2 mm
    assert not hide(hu, labels, 5, 8, 1.0, min_area_mm2=1).valid[0]  # absent vertebra
    top = labels.copy()
    top[0, 0:4] = 1
    assert not hide(hu, top, 1, 8, 1.0, min_area_mm2=1).valid[0]  # touches the edge of the slice


def test_shrm_restores_the_predicted_height_and_pushes_neighbours_apart():
    hu, labels = _column_slices()
    gen_hu = np.full_like(hu, 500.0)
    gen_seg = np.zeros_like(hu)
    gen_seg[0, 6:14] = 0.9
    out = shrm_compose(hu, labels, gen_hu, gen_seg, np.array([8]), np.array([11]), np.array([7.3]), 1)
    assert out.height_px[0] == 8  # ceil(7.3) > current 4 rows
    assert np.array_equal(np.flatnonzero(out.labels[0, :, 0] == 1), np.arange(6, 14))  # centred on the old mid-row
    assert np.all(out.hu[0, 6:14] == 500.0) and np.all(out.seg[0, 6:14] == 0.9) and not out.seg[0, :6].any()
    assert np.array_equal(np.flatnonzero(out.labels[0, :, 0] == 2), [0, 1, 2, 3])  # pushed up by floor(d/2) = 2
    assert np.array_equal(np.flatnonzero(out.labels[0, :, 0] == 3), [16, 17, 18, 19])  # pushed down by ceil(d/2) = 2
    assert out.hu[0, 5, 0] == hu[0, 7, 0] and out.hu[0, 14, 0] == hu[0, 12, 0]


def test_shrm_never_makes_the_vertebra_shorter():
    hu, labels = _column_slices()
    out = shrm_compose(hu, labels, np.full_like(hu, 500.0), np.ones_like(hu), np.array([8]), np.array([11]),
                          np.array([1.0]), 1)
    assert out.height_px[0] == 4
    assert np.array_equal(np.flatnonzero(out.moved[0]), np.arange(8, 12))  # only the vertebra's rows change
    assert np.array_equal(out.labels, labels) and np.array_equal(out.hu[0, :8], hu[0, :8])
    assert np.array_equal(out.hu[0, 12:], hu[0, 12:])


def test_band_comes_from_the_neighbours_so_a_fracture_does_not_shrink_it(sample_seg):
    case = load_case(SAMPLE_SEG)
    body, neighbours = _target(case, "L3")
    crushed = simulate_fracture(sample_seg, vertebra="L3", kind="crush", loss=0.4).seg
    fractured = Case("crushed", crushed, None, None, case.scheme)
    body_f, neighbours_f = _target(fractured, "L3")
    assert body_f.heights().max() < 0.8 * body.heights().max()
    before = neighbourhood_members(body, "L3", neighbours, 1.5)[0].band_px
    after = neighbourhood_members(body_f, "L3", neighbours_f, 1.5)[0].band_px
    assert before == after == band_rows(expected_height_mm(body, neighbours), 1.5)


# ----------------------------------------------------------------------------- engine


def test_both_views_are_batched_one_forward_per_view_and_pass(weights, sample_case):
    engine = GeneratorEngine(weights=weights, device="cpu")
    engine.attach(sample_case)
    body, neighbours = _target(sample_case, "L3")
    calls = {"coarse": [], "fine": []}
    hooks = [engine.model.coarse_generator.register_forward_hook(lambda m, i, o: calls["coarse"].append(i[0].shape[0])),
             engine.model.fine_generator.register_forward_hook(lambda m, i, o: calls["fine"].append(i[0].shape[0]))]
    try:
        pred = engine.predict(body, neighbours)
        n_iterative = len(calls["coarse"])
        engine.iterative = False
        engine.predict(body, neighbours)
    finally:
        for h in hooks:
            h.remove()
    n_slices = {v: len(slice_positions(body, v, engine.slice_step)) for v in VIEWS}
    # L2 above, L4 below, then L3: three passes per view, each one batched forward of both stages
    assert n_iterative == 2 * 3 and calls["fine"][:6] == calls["coarse"][:6]
    assert calls["coarse"][6:] == [n_slices["sagittal"], n_slices["coronal"]]
    assert all(n > 1 for n in calls["coarse"])
    assert [c["level"] for c in pred.context] == ["L2", "L4"] and all(c["resynthesized"] for c in pred.context)
    assert pred.occupancy.shape == pred.ct.shape == body.block.shape
    assert np.all(pred.occupancy.sum(axis=0) >= body.occupancy.sum(axis=0) - 1e-4)  # never shorter
    assert np.isfinite(pred.ct).any() and np.nanmin(pred.ct) >= -1024.0


def test_grade_with_the_generator_end_to_end(tmp_path, weights):
    out = tmp_path / "out"
    args = ["grade", "--seg", str(SAMPLE_SEG), "--ct", str(SAMPLE_CT), "--vertebra", "L3", "--engine", "generator",
            "--device", "cpu", "--no-figures", "--progress", "none", "--out", str(out)]
    if weights != DEFAULT_WEIGHTS:
        args += ["--weights", str(weights)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["engine"] == "generator"
    (l3,) = report["vertebrae"]
    assert l3["status"] == "graded" and l3["grade"] in (0, 1, 2, 3)
    h = l3["heights_mm"]
    assert h["pseudo_healthy"]["overall"] >= h["original"]["overall"] - 1e-6
    healthy_files = [p.name for p in out.iterdir() if "healthy" in p.name and "ct" in p.name]
    assert healthy_files == ["pseudo_healthy_ct.nii.gz"]
    ct, syn = sitk.ReadImage(str(SAMPLE_CT)), sitk.ReadImage(str(out / "pseudo_healthy_ct.nii.gz"))
    assert syn.GetSize() == ct.GetSize() and np.allclose(syn.GetSpacing(), ct.GetSpacing())
    assert np.allclose(syn.GetOrigin(), ct.GetOrigin()) and np.allclose(syn.GetDirection(), ct.GetDirection())
    a, b = sitk.GetArrayFromImage(ct).astype(np.float32), sitk.GetArrayFromImage(syn)
    changed = np.argwhere(a != b)
    assert len(changed) > 100
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_SEG)))
    in_l3 = seg[tuple(changed.T)] == l3["label"]
    assert in_l3.sum() > 0.3 * (seg == l3["label"]).sum()  # much of L3 is synthesized
    # nothing changes outside L3's own block (the grid the engine predicts on)
    body, _ = _target(load_case(SAMPLE_SEG), "L3")
    matrix, offset = block_to_index_affine(ct, body.frame, body.block)
    shape = np.array(body.block.shape) - 1
    corners = np.array([[i, j, k] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])]) @ matrix.T + offset
    ijk = changed[:, ::-1]
    assert np.all(ijk >= np.floor(corners.min(axis=0)) - 1) and np.all(ijk <= np.ceil(corners.max(axis=0)) + 1)


def test_mask_only_case_is_reported_not_crashed(tmp_path, weights, capsys):
    out = tmp_path / "out"
    args = ["grade", "--seg", str(SAMPLE_SEG), "--vertebra", "L2", "L3", "--engine", "generator", "--no-figures",
            "--progress", "none", "--weights", str(weights), "--out", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [v["status"] for v in report["vertebrae"]] == ["failed", "failed"]
    assert all("needs" in v["reason"] and "--ct" in v["reason"] for v in report["vertebrae"])
    assert not (out / "pseudo_healthy_ct.nii.gz").exists()


def test_predict_without_the_ct_raises_engine_unavailable(weights, sample_case):
    engine = GeneratorEngine(weights=weights, device="cpu")
    body, neighbours = _target(sample_case, "L3")
    with pytest.raises(EngineUnavailable, match="needs"):
        engine.predict(body, neighbours)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing", "wrong_suffix"])
def test_unusable_weights_exit_2_with_a_clear_message(tmp_path, weights, capsys, damage):
    bad = tmp_path / "bad.safetensors"
    if damage == "garbage":
        bad.write_bytes(b"\x00\x01 this is not a weight file" * 10)
    elif damage == "truncated":
        bad.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    elif damage == "wrong_suffix":
        bad = tmp_path / "weights.bin"
        bad.write_bytes(weights.read_bytes())
    args = ["grade", "--seg", str(SAMPLE_SEG), "--ct", str(SAMPLE_CT), "--vertebra", "L3", "--engine", "generator",
            "--weights", str(bad), "--no-figures", "--progress", "none", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    expected = {"garbage": "damaged", "truncated": "damaged", "missing": "does not exist", "wrong_suffix": ".safetensors"}
    assert expected[damage] in err and "Traceback" not in err
    assert not (tmp_path / "out" / "report.json").exists()


def test_unavailable_device_is_a_clear_error(weights):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(HealthiVertError, match="--device cuda cannot be used: .*is_available"):
        get_engine("generator", weights=weights, device="cuda")


def test_published_checkpoint_runs_sagittal_with_the_fixed_40_mm_band(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    torch.manual_seed(0)
    torch.save(Generator(GeneratorConfig()).state_dict(), path)
    engine = GeneratorEngine(weights=path, device="cpu")
    assert engine.views == ("sagittal",) and engine.fixed_band_px == 40 and engine.size == (256, 256)


def test_importing_the_core_does_not_import_torch():
    code = ("import sys, HealthiVertLib.engines, HealthiVertLib.pipeline, HealthiVertLib.app.cli; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_hgam_classifier_named_in_the_card_feeds_one_minus_cam_to_the_sagittal_passes(tmp_path, weights, sample_case):
    from HealthiVertLib.engines.generator.classifier import ClassifierConfig, FractureClassifier
    from HealthiVertLib.engines.generator.weights import load_generator, read_model_card

    gen = load_generator(weights)
    card = read_model_card(weights)
    spacing = gen.config.spacing_mm
    torch.manual_seed(1)
    clf_cfg = ClassifierConfig(width=4, blocks=(1, 1), image_size=gen.config.image_size, spacing_mm=spacing)
    save_weights(FractureClassifier(clf_cfg), tmp_path / "hgam.safetensors",
                 ModelCard(kind="hgam_classifier", config=clf_cfg.to_dict(), training_data="none (test)",
                           training_command="(test)"))
    save_weights(gen, tmp_path / "gen.safetensors",
                 ModelCard(kind="generator", config=gen.config.to_dict(), training_data=card.training_data,
                           training_command=card.training_command, extra={"hgam_classifier": "hgam.safetensors"}))
    engine = GeneratorEngine(weights=tmp_path / "gen.safetensors", device="cpu", iterative=False)
    engine.attach(sample_case)
    seen = []
    hook = engine.model.coarse_generator.register_forward_hook(lambda m, i, o: seen.append(i[3].clone()))
    try:
        engine.predict(*_target(sample_case, "L3"))
    finally:
        hook.remove()
    sagittal, coronal = seen
    assert sagittal.min() < 0.99 and sagittal.max() <= 1.0  # 1 - CAM: attention lowered somewhere
    assert torch.all(coronal == 1.0)  # HGAM is sagittal (as the reference); coronal takes the no-HGAM path
