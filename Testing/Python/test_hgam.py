"""HGAM: the fracture classifier's training data, training, shipped weights, batched attention and
the engine's no-HGAM fallback. Phantoms and fractures are simulated (HealthiVertLib.truth.phantom,
HealthiVertLib.truth.simulate); the shipped classifier was trained on other phantom seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from conftest import SAMPLE_CT, SAMPLE_SEG  # noqa: E402

from HealthiVertLib.errors import HealthiVertError  # noqa: E402
from HealthiVertLib.training.generator_data import phantom_source  # noqa: E402
from HealthiVertLib.engines.generator import hgam  # noqa: E402
from HealthiVertLib.engines.generator.classifier import ClassifierConfig, FractureClassifier  # noqa: E402
from HealthiVertLib.engines.generator.hgam import DEFAULT_CLASSIFIER, hgam_attention  # noqa: E402
from HealthiVertLib.training.hgam import CLEAR_LEVELS, build_dataset, fractured_phantom, sagittal_slices, split_seeds, train_classifier  # noqa: E402
from HealthiVertLib.engines.generator.networks import Generator, GeneratorConfig  # noqa: E402
from HealthiVertLib.engines.generator.weights import ModelCard, load_classifier, read_model_card, save_weights  # noqa: E402
from HealthiVertLib.io.case import Case, load_case  # noqa: E402
from HealthiVertLib.io.labels import level_position  # noqa: E402
from HealthiVertLib.truth.simulate import simulate_fracture  # noqa: E402

SMALL = (48, 32)  # rows, columns at 3 mm: fast slices for the data tests
SMALL_MM = 3.0


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def small_set():
    # seeds 200000 and 200001 hold fractured and healthy vertebrae (checked below)
    return build_dataset([200_000, 200_001], SMALL, SMALL_MM, step_mm=6.0)


def test_dataset_labels_shapes_and_cases(small_set):
    ds = small_set
    n = len(ds.labels)
    assert ds.images.shape == (n, 1, *SMALL) and ds.images.dtype == np.float32
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0 and ds.images.std() > 0.1
    assert set(ds.labels.tolist()) == {0, 1}
    assert np.array_equal(ds.labels, (ds.grades >= 1).astype(np.int64))
    assert set(ds.cases.tolist()) == {0, 1} and len(ds.levels) == n
    assert ds.case_names == ["phantom-200000", "phantom-200001"]
    # every slice of one vertebra carries the same label; healthy slices have no fracture within 2 levels
    levels = np.array(ds.levels)
    for c in (0, 1):
        mine = ds.cases == c
        broken = {level_position(lv) for lv in set(levels[mine & (ds.labels == 1)])}
        assert all(len(set(ds.labels[mine & (levels == lv)].tolist())) == 1 for lv in set(levels[mine]))
        for lv in set(levels[mine & (ds.labels == 0)]):
            assert all(abs(p - level_position(lv)) > CLEAR_LEVELS for p in broken)
    _, grades = fractured_phantom(200_000)
    assert {lv: g for lv, g in zip(levels[ds.cases == 0], ds.grades[ds.cases == 0])}.items() <= grades.items()


def test_dataset_is_deterministic_and_split_by_case(small_set):
    again = build_dataset([200_000], SMALL, SMALL_MM, step_mm=6.0)
    first = small_set.subset(small_set.cases == 0)
    assert np.array_equal(again.images, first.images) and np.array_equal(again.labels, first.labels)
    train, val = split_seeds(40, 10, seed=3)
    assert (train, val) == split_seeds(40, 10, seed=3)
    assert len(train) == 40 and len(val) == 10 and not set(train) & set(val)
    assert split_seeds(40, 10, seed=4)[0][0] != train[0]


def test_a_few_training_epochs_lower_the_loss(small_set):
    torch.manual_seed(0)
    model = FractureClassifier(ClassifierConfig(width=8, image_size=SMALL, spacing_mm=(SMALL_MM, SMALL_MM)))
    x, y = torch.from_numpy(small_set.images), torch.from_numpy(small_set.labels)
    history = train_classifier(model, x, y, epochs=4, batch_size=16, lr=3e-3, seed=0)
    assert len(history) == 4 and history[-1] < 0.7 * history[0]
    assert not model.training


def _held_out_slices():
    """Central sagittal slices of a crushed (40 %) and a healthy vertebra of a phantom the shipped
    classifier never saw, in the shipped geometry."""
    cfg = load_classifier(DEFAULT_CLASSIFIER).config
    src = phantom_source(7, fractures=0, levels="T7-L3")
    sim = simulate_fracture(src.case.seg, vertebra="L1", kind="crush", loss=0.4, ct=src.case.ct, labels="verse", seed=1)
    assert sim.truth["fractures"]["L1"]["genant_grade"] >= 2
    case = Case("held-out", sim.seg, sim.ct, None, src.case.scheme)
    slices = sagittal_slices(case, cfg.image_size, cfg.spacing_mm[0], 3.0)
    central = {lv: s[len(s) // 2] for lv, s in slices.items()}
    return np.stack([central["L1"], central["T8"]])[:, None]


def test_shipped_classifier_tells_a_crush_fracture_from_a_healthy_vertebra():
    assert DEFAULT_CLASSIFIER.exists(), "the HGAM classifier weights are part of the package"
    model = load_classifier(DEFAULT_CLASSIFIER)
    card = read_model_card(DEFAULT_CLASSIFIER)
    assert card.kind == "hgam_classifier" and "simulated" in card.notice
    assert card.validation_metrics["roc_auc"] > 0.5 and card.validation_metrics["accuracy"] > 0.5
    with torch.no_grad():
        p = model(torch.from_numpy(_held_out_slices())).softmax(1)[:, 1].numpy()
    assert p[0] > 0.8 and p[1] < 0.2, p


def test_attention_is_one_batched_pass_and_one_in_the_band():
    torch.manual_seed(0)
    model = FractureClassifier(ClassifierConfig(width=8, image_size=SMALL)).eval()
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.rand(5, 1, *SMALL) * 2 - 1
    band = torch.zeros(5, 1, *SMALL)
    band[:, :, 20:30] = 1
    try:
        with torch.inference_mode():  # the engine's mode: the CAM still gets its gradients
            att = hgam_attention(model, x, band)
    finally:
        handle.remove()
    assert calls == [5]
    assert att.shape == (5, 1, *SMALL) and float(att.min()) >= 0.0 and float(att.max()) <= 1.0
    assert torch.all(att[:, :, 20:30] == 1.0) and float(att[:, :, :20].min()) < 1.0


def _tiny_generator(path):
    cfg = GeneratorConfig(ngf=4, ndf=8, image_size=(48, 32), spacing_mm=(3.0, 3.0), band_mm=45.0,
                          max_height_mm=60.0, local_width_mm=70.0)
    torch.manual_seed(0)
    save_weights(Generator(cfg), path, ModelCard(kind="generator", config=cfg.to_dict(),
                                                  training_data="none: random weights for a plumbing test",
                                                  training_command="(test)"))
    return cfg


def test_engine_uses_hgam_when_weights_fit_and_falls_back_to_uniform_otherwise(tmp_path, monkeypatch):
    from HealthiVertLib.engines.generator.engine import GeneratorEngine
    from HealthiVertLib.geometry.spine import SpineBodies, spine_levels
    from HealthiVertLib.engines.neighbours import gather_neighbours

    gen_path = tmp_path / "gen.safetensors"
    cfg = _tiny_generator(gen_path)
    clf_path = tmp_path / "clf.safetensors"
    ccfg = ClassifierConfig(width=8, image_size=cfg.image_size, spacing_mm=cfg.spacing_mm)
    save_weights(FractureClassifier(ccfg), clf_path,
                 ModelCard(kind="hgam_classifier", config=ccfg.to_dict(), training_data="none", training_command="(test)"))
    case = load_case(SAMPLE_SEG, SAMPLE_CT)
    levels = spine_levels(case)
    bodies = SpineBodies(case, levels)
    target = next(v for v in levels if v.level == "L3")
    body, neighbours = bodies.get(target), gather_neighbours(target, levels, bodies)

    def run(engine):
        seen = []
        original = engine.model.forward

        def spy(ct, mask, ratio, attention=None):
            seen.append(None if attention is None else attention.detach().clone())
            return original(ct, mask, ratio, attention)

        engine.model.forward = spy
        engine.attach(case)
        pred = engine.predict(body, neighbours)
        return pred, seen

    monkeypatch.setattr(hgam, "DEFAULT_CLASSIFIER", tmp_path / "missing.safetensors")
    engine = GeneratorEngine(weights=gen_path, device="cpu")
    assert engine.classifier is None and "no-HGAM" in engine.hgam_status
    pred, seen = run(engine)
    assert seen and all(a is None for a in seen)
    assert pred.context and all(c["hgam"] is False for c in pred.context)

    engine = GeneratorEngine(weights=gen_path, device="cpu", hgam=clf_path)
    assert engine.classifier is not None
    pred, seen = run(engine)
    sagittal = [a for a in seen if a is not None]
    assert sagittal and len(sagittal) < len(seen)  # sagittal passes get HGAM, coronal ones the uniform map
    assert all(float(a.min()) >= 0 and float(a.max()) <= 1 and float(a.min()) < 1 for a in sagittal)
    assert all(c["hgam"] is True for c in pred.context)

    assert GeneratorEngine(weights=gen_path, device="cpu", hgam=False).classifier is None
    wrong = tmp_path / "wrong.safetensors"
    wcfg = ClassifierConfig(width=8, image_size=(64, 64), spacing_mm=(1.0, 1.0))
    save_weights(FractureClassifier(wcfg), wrong,
                 ModelCard(kind="hgam_classifier", config=wcfg.to_dict(), training_data="none", training_command="(test)"))
    with pytest.raises(HealthiVertError, match="train-hgam"):
        GeneratorEngine(weights=gen_path, device="cpu", hgam=wrong)
    monkeypatch.setattr(hgam, "DEFAULT_CLASSIFIER", wrong)
    engine = GeneratorEngine(weights=gen_path, device="cpu")
    assert engine.classifier is None and "no-HGAM" in engine.hgam_status
    json.dumps(pred.context)  # report.json-ready


def test_train_hgam_command_writes_weights_and_an_honest_model_card(tmp_path, capsys):
    from HealthiVertLib.app.cli import main

    out = tmp_path / "hgam"
    assert main(["train-hgam", "--out", str(out), "--cases", "2", "--val-cases", "1", "--epochs", "1",
                 "--size", "48", "32", "--spacing", "3", "--progress", "none"]) == 0
    assert "Validation: accuracy" in capsys.readouterr().out
    model = load_classifier(out / "hgam_classifier.safetensors")
    assert model.config.image_size == (48, 32) and model.config.spacing_mm == (3.0, 3.0)
    card = json.loads((out / "hgam_classifier.json").read_text(encoding="utf-8"))
    assert card["kind"] == "hgam_classifier" and card["input_size_px"] == [48, 32] and card["spacing_mm"] == [3.0, 3.0]
    assert "simulated" in card["notice"] and "research use" in card["notice"]
    assert card["training_command"].startswith("healthivert train-hgam --out hgam --cases 2 --val-cases 1 --epochs 1")
    assert 0.0 <= card["validation_metrics"]["accuracy"] <= 1.0 and card["validation_metrics"]["n"] > 0
    assert "phantom" in card["training_data"] and card["date"].endswith("Z")
    assert main(["train-hgam", "--out", str(out), "--cases", "1", "--progress", "none"]) == 2
    assert "at least 2 training phantoms" in capsys.readouterr().err
