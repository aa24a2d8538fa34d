"""HealthiVert-GAN networks, losses, HGAM and weight files (HealthiVertLib.engines.generator), on CPU.

The published checkpoint format is checked against its tensor manifest (Testing/Data/healthivert/
latest_net_G_manifest.txt, from the MIT HealthiVert-GAN repository); a checkpoint with random
tensors of those names and shapes stands in for the authors' weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402

from HealthiVertLib.errors import HealthiVertError  # noqa: E402
from HealthiVertLib.engines.generator.classifier import ClassifierConfig, FractureClassifier  # noqa: E402
from HealthiVertLib.engines.generator.hgam import attention_from_cam, grad_cam_pp, uniform_attention  # noqa: E402
from HealthiVertLib.engines.generator.networks import ContextualAttention, Discriminators, Generator, GeneratorConfig, count_parameters, hu_to_model, model_to_hu  # noqa: E402
from HealthiVertLib.engines.generator.weights import ModelCard, load_classifier, load_generator, load_reference_checkpoint, read_model_card, save_weights  # noqa: E402
from HealthiVertLib.training.hgam import train_classifier  # noqa: E402
from HealthiVertLib.training.losses import LossTargets, LossWeights, discriminator_loss, generator_loss, sobel_edges  # noqa: E402
from HealthiVertLib.training.losses import band_l1  # noqa: E402
from HealthiVertLib.engines.generator.networks import ConvBlock  # noqa: E402
from HealthiVertLib.engines.generator.weights import effective_conv_weight  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = Path(__file__).resolve().parents[1] / "Data" / "healthivert" / "latest_net_G_manifest.txt"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and steadier than several (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _manifest() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(v) for v in shape.strip("[]").split(",")), dtype))
    return rows


def _batch(b: int = 2, h: int = 64, w: int = 64, seed: int = 0):
    """CT-like slices with a per-sample band (different rows per sample) and matching targets."""
    g = torch.Generator().manual_seed(seed)
    ct = torch.rand(b, 1, h, w, generator=g) * 2 - 1
    mask = torch.zeros(b, 1, h, w)
    target = torch.zeros(b, 1, h, w)
    neighbours = torch.zeros(b, 1, h, w)
    for i in range(b):
        top = h // 4 + 3 * i
        mask[i, :, top:top + h // 4] = 1
        target[i, :, top + 2:top + h // 4 - 2, w // 4:3 * w // 4] = 1
        neighbours[i, :, 1:top - 2, w // 4:3 * w // 4] = 1
    ratio = torch.linspace(0.0, 0.6, b)
    return ct, mask, ratio, target, neighbours


# --- architecture ----------------------------------------------------------------------------------


def test_state_dict_equals_published_manifest():
    gen = Generator(GeneratorConfig(input_dim=1, ngf=16))
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in gen.state_dict().items()]
    assert ours == _manifest()  # names, order, shapes and dtypes, 192 tensors
    assert count_parameters(gen) == 986_888  # method §2.1
    assert count_parameters(gen.coarse_generator) == 409_771
    assert count_parameters(gen.fine_generator) == 577_117
    assert sum(v.numel() for k, v in gen.state_dict().items() if k.endswith(("_u", "_v"))) == 20_299
    assert all(count_parameters(d) == 2_763_585 for d in Discriminators().children())


@pytest.mark.parametrize("size", [(64, 64), (45, 27)])
def test_forward_shapes_and_ranges_for_any_size(size):
    gen = Generator().eval()
    ct, mask, ratio, _, _ = _batch(2, *size)
    with torch.no_grad():
        out = gen(ct, mask, ratio)
    for image in (out.coarse_ct, out.coarse_seg, out.fine_ct, out.fine_seg):
        assert image.shape == (2, 1, *size)
    assert out.fine_ct.min() >= -1 and out.fine_ct.max() <= 1
    assert out.fine_seg.min() > 0 and out.fine_seg.max() < 1
    assert out.fine_height_mm.shape == (2,) and out.coarse_height_mm.shape == (2,)
    assert bool(((out.fine_height_mm > 0) & (out.fine_height_mm < gen.config.max_height_mm)).all())
    d = Discriminators().eval()
    assert d.global_d(out.fine_ct).shape[:2] == (2, 1)
    if size == (45, 27):  # internal padding to 48x32 (rows 1 + 2, columns 2 + 3), outputs cropped back
        pad = [2, 3, 1, 2]
        with torch.no_grad():
            big = gen(torch.nn.functional.pad(ct, pad, value=-1.0), torch.nn.functional.pad(mask, pad), ratio)
        assert torch.equal(big.fine_ct[..., 1:46, 2:29], out.fine_ct)
        assert torch.equal(big.fine_height_mm, out.fine_height_mm)


def test_eval_is_deterministic_and_samples_are_independent():
    gen = Generator().eval()
    ct, mask, ratio, _, _ = _batch(3, 48, 40)
    with torch.no_grad():
        first, second = gen(ct, mask, ratio), gen(ct, mask, ratio)
        alone = gen(ct[1:2], mask[1:2], ratio[1:2])
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # per-sample masks in contextual attention: a sample's output does not depend on its batch mates
    assert all(torch.allclose(a[1:2], b, atol=1e-5) for a, b in zip(first, alone))
    fast = Generator().eval().to(memory_format=torch.channels_last)  # the faster CPU layout, same result
    fast.load_state_dict(gen.state_dict())
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, fast(ct, mask, ratio)))


def test_band_content_and_attention_default():
    gen = Generator().eval()
    ct, mask, ratio, _, _ = _batch(2, 40, 32)
    noisy = ct + mask * torch.randn_like(ct)  # whatever is inside the band is hidden from the network
    with torch.no_grad():
        a = gen(ct, mask, ratio)
        b = gen(noisy, mask, ratio, attention=uniform_attention(ct))
        c = gen(ct, mask, ratio, attention=torch.zeros_like(mask))
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # attention=None is the all-ones no-HGAM map
    assert not torch.equal(a.coarse_ct, c.coarse_ct)  # and the attention map does reach the network
    with pytest.raises(ValueError):
        gen(ct, mask[:1], ratio)


def test_contextual_attention_batches_per_sample_and_pastes_only_background():
    ca = ContextualAttention()
    feats = torch.rand(3, 8, 16, 16) * 2 - 1
    mask = torch.zeros(3, 1, 64, 64)
    for i, top in enumerate((8, 24, 40)):
        mask[i, :, top:top + 16] = 1
    batched = ca(feats, mask)
    single = torch.cat([ca(feats[i:i + 1], mask[i:i + 1]) for i in range(3)])
    assert batched.shape == feats.shape
    assert torch.allclose(batched, single, atol=1e-5)
    # huge features inside sample 0's hole are never pasted: outputs stay within the background's range
    hot = feats.clone()
    hot[0, :, 2:6] = 1e3  # sample 0's hole (mask rows 8..23) at feature scale 1/4
    assert ca(hot, mask)[0].abs().max() <= 1.0 + 1e-5


def test_config_geometry_in_mm_and_json_round_trip():
    cfg = GeneratorConfig(image_size=(128, 96), spacing_mm=(0.5, 0.8))
    assert cfg.band_px == 80 and cfg.local_width_px == 88 and cfg.max_height_px == 80
    assert GeneratorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for bad in ({"spacing_mm": (0.0, 1.0)}, {"ngf": 15}, {"image_size": (32, 32)}, {"hu_window": (800, -300)}):
        with pytest.raises(HealthiVertError):
            GeneratorConfig(**bad)
    with pytest.raises(HealthiVertError, match="Unknown"):
        GeneratorConfig.from_dict({"ngf": 16, "depth": 3})
    hu = torch.tensor([-1000.0, -300.0, 250.0, 800.0, 2000.0])
    assert torch.allclose(hu_to_model(hu), torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(model_to_hu(hu_to_model(hu[1:4])), hu[1:4])


# --- losses ----------------------------------------------------------------------------------------


def _loss_setup(seed: int = 0):
    torch.manual_seed(seed)
    cfg = GeneratorConfig(image_size=(32, 32), band_mm=8.0, ndf=16)  # small: these tests backpropagate often
    gen, discs = Generator(cfg), Discriminators(cfg)
    ct, mask, ratio, target, neighbours = _batch(2, 32, 32, seed)
    targets = LossTargets(real_ct=ct, target_mask=target, neighbour_mask=neighbours, band=mask,
                          height_mm=torch.tensor([12.0, 15.0]))
    return gen, discs, gen(ct, mask, ratio), targets


def test_gradient_reaches_the_generator_through_every_loss_term():
    gen, discs, out, targets = _loss_setup()
    discs.requires_grad_(False)
    total, terms = generator_loss(out, targets, discs)
    assert set(terms) == {"adv_global", "adv_segmentation", "adv_local", "reconstruction", "seg_fine",
                          "seg_coarse", "edge", "height", "total"}
    params = dict(gen.named_parameters())
    for name, term in terms.items():
        grads = torch.autograd.grad(term, list(params.values()), retain_graph=True, allow_unused=True)
        norms = {k: float(g.norm()) for k, g in zip(params, grads) if g is not None}
        assert all(torch.isfinite(torch.tensor(list(norms.values())))), name
        assert sum(norms.values()) > 0, f"{name} gives the generator no gradient"
        if name in ("edge", "adv_segmentation", "seg_fine"):  # the fixed EEM and D_2 reach the mask head
            assert norms.get("fine_generator.allconv18.conv.weight_orig", 0.0) > 0, name
    assert torch.isclose(total, sum(v for k, v in terms.items() if k != "total"))


def test_discriminator_loss_trains_only_the_discriminators():
    gen, discs, out, targets = _loss_setup(1)
    total, terms = discriminator_loss(out, targets, discs)
    assert set(terms) == {"d_global", "d_segmentation", "d_local", "total"}
    total.backward()
    assert all(p.grad is None for p in gen.parameters())
    for d in (discs.global_d, discs.segmentation_d, discs.local_d):
        assert sum(float(p.grad.abs().sum()) for p in d.parameters()) > 0
    lsgan, _ = discriminator_loss(out, targets, discs, LossWeights(gan_mode="lsgan"))
    assert torch.isfinite(lsgan) and not torch.isclose(lsgan, total)


def test_reconstruction_is_independent_of_batch_size():
    ct, mask, _, _, _ = _batch(2, 32, 32)
    fake = torch.rand_like(ct)
    pair = band_l1(fake, ct, mask)
    singles = [band_l1(fake[i:i + 1], ct[i:i + 1], mask[i:i + 1]) for i in range(2)]
    assert torch.isclose(pair, (singles[0] + singles[1]) / 2)
    doubled = band_l1(fake[:1].repeat(8, 1, 1, 1), ct[:1].repeat(8, 1, 1, 1), mask[:1].repeat(8, 1, 1, 1))
    assert torch.isclose(doubled, singles[0])


def test_sobel_edges_of_a_square():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 3:6, 3:6] = 1
    edges = sobel_edges(x)
    assert edges[0, 0, 4, 4] < 1e-5 and edges[0, 0, 0, 0] < 1e-5  # flat inside and outside
    assert torch.isclose(edges[0, 0, 4, 2], torch.tensor(1.0))  # a step of 1 gives 4, clipped to 1


# --- HGAM ------------------------------------------------------------------------------------------


class _Brightness(nn.Module):
    """Class 1 score = mean of ReLU(x): Grad-CAM++ on ``features`` must return the normalised image."""

    def __init__(self):
        super().__init__()
        self.features = nn.ReLU()

    def forward(self, x):
        s = self.features(x).mean(dim=(1, 2, 3))
        return torch.stack([-s, s], dim=1)


def test_grad_cam_pp_on_a_model_with_a_known_answer():
    x = torch.zeros(2, 1, 16, 16)
    x[0, 0, 3:6, 10:14] = 2.0
    x[0, 0, 12, 2] = 1.0
    x[1, 0, 8:10, 8:10] = 5.0
    model = _Brightness()
    cam = grad_cam_pp(model, x, layer=model.features)
    expected = x / x.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
    assert torch.allclose(cam, expected, atol=1e-6)


def test_grad_cam_pp_on_the_classifier_and_attention_map():
    torch.manual_seed(0)
    clf = FractureClassifier(ClassifierConfig(image_size=(64, 64))).eval()
    clf.requires_grad_(False)  # frozen weights still give maps
    slices = torch.rand(3, 1, 64, 48) * 2 - 1
    cam = grad_cam_pp(clf, slices)
    assert cam.shape == (3, 1, 64, 48) and cam.min() >= 0 and cam.max() <= 1
    assert torch.equal(cam, grad_cam_pp(clf, slices))
    assert clf(slices).shape == (3, 2)
    band = torch.zeros_like(cam)
    band[..., 20:30, :] = 1
    att = attention_from_cam(cam, band)
    assert torch.equal(att[..., 20:30, :], torch.ones_like(att[..., 20:30, :]))
    assert torch.allclose(att[..., :20, :], 1 - cam[..., :20, :])


def _blob_slices(n: int, seed: int, size: int = 24):
    """Noise slices; odd-indexed ones carry a bright 6x6 'lesion' (class 1) at a random place."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.4 - 0.8
    y = torch.arange(n) % 2
    boxes = torch.randint(1, size - 7, (n, 2), generator=g)
    for i in range(1, n, 2):
        r, c = boxes[i].tolist()
        x[i, 0, r:r + 6, c:c + 6] = 0.8
    return x, y, boxes


def test_trained_classifier_cam_points_at_the_lesion():
    torch.manual_seed(0)
    clf = FractureClassifier(ClassifierConfig(width=8, image_size=(24, 24)))
    x, y, _ = _blob_slices(32, 0)
    history = train_classifier(clf, x, y, epochs=5, batch_size=16)
    assert not clf.training and history[-1] < 0.5 * history[0]
    xt, yt, boxes = _blob_slices(16, 100)
    with torch.no_grad():
        assert (clf(xt).argmax(dim=1) == yt).float().mean() >= 0.75
    cam = grad_cam_pp(clf, xt)
    inside, outside = [], []
    for i in range(1, 16, 2):
        r, c = boxes[i].tolist()
        lesion = torch.zeros(24, 24, dtype=torch.bool)
        lesion[r:r + 6, c:c + 6] = True
        inside.append(cam[i, 0][lesion].mean())
        outside.append(cam[i, 0][~lesion].mean())
    assert torch.stack(inside).mean() > torch.stack(outside).mean() + 0.15


# --- weights ---------------------------------------------------------------------------------------


def _card(kind: str, config) -> ModelCard:
    return ModelCard(kind=kind, config=config.to_dict(), training_data="unit test (random weights)",
                     training_command="pytest", validation_metrics={"band_psnr_db": 0.0})


def test_safetensors_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    gen = Generator(GeneratorConfig(image_size=(40, 40), spacing_mm=(0.8, 0.8), band_mm=16.0))
    ct, mask, ratio, _, _ = _batch(2, 40, 40)
    gen.train()(ct, mask, ratio)  # a training pass moves the spectral-norm vectors off their init
    gen.eval()
    weights, card = save_weights(gen, tmp_path / "gen.safetensors", _card("generator", gen.config))
    loaded = load_generator(weights)
    assert not loaded.training and loaded.config == gen.config
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(gen(ct, mask, ratio), loaded(ct, mask, ratio)))
    text = json.loads(card.read_text(encoding="utf-8"))
    assert text["input_size_px"] == [40, 40] and text["spacing_mm"] == [0.8, 0.8]
    assert "simulated data" in text["notice"] and "not for diagnosis" in text["notice"]
    assert read_model_card(weights).validation_metrics == {"band_psnr_db": 0.0}

    clf = FractureClassifier(ClassifierConfig(width=8)).eval()
    path, _ = save_weights(clf, tmp_path / "hgam.safetensors", _card("hgam_classifier", clf.config))
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(load_classifier(path)(x), clf(x))
    with pytest.raises(HealthiVertError, match="not generator weights"):
        load_generator(path)


def _fake_reference_state(seed: int = 0) -> OrderedDict:
    """Random tensors with the manifest's names/shapes; u, v from power iteration as in training."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape, _ in _manifest():
        state[key] = torch.randn(shape, generator=g) * (0.15 if len(shape) > 1 else 0.05)
    for key in [k for k in state if k.endswith("weight_orig")]:
        w = state[key].reshape(state[key].shape[0], -1)
        u = torch.nn.functional.normalize(torch.randn(w.shape[0], generator=g), dim=0)
        for _ in range(5):
            v = torch.nn.functional.normalize(w.t() @ u, dim=0)
            u = torch.nn.functional.normalize(w @ v, dim=0)
        state[key[:-4] + "u"], state[key[:-4] + "v"] = u, v
    return state


def _direct_generator(state: OrderedDict) -> Generator:
    """The same network without spectral-norm hooks, effective weights computed here from the tensors."""
    gen = Generator()
    for name, block in gen.named_modules():
        if isinstance(block, ConvBlock):
            torch.nn.utils.remove_spectral_norm(block.conv)
            p = f"{name}.conv."
            with torch.no_grad():
                block.conv.weight.copy_(effective_conv_weight(state[p + "weight_orig"], state[p + "weight_u"],
                                                              state[p + "weight_v"]))
                block.conv.bias.copy_(state[p + "bias"])
    with torch.no_grad():
        for head in ("coarse_generator", "fine_generator"):
            getattr(gen, head).fc_height.weight.copy_(state[f"{head}.fc_height.weight"])
            getattr(gen, head).fc_height.bias.copy_(state[f"{head}.fc_height.bias"])
    return gen.eval()


def test_reference_checkpoint_loads_and_matches_a_direct_computation(tmp_path):
    state = _fake_reference_state()
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    loaded = load_reference_checkpoint(path)
    ct, mask, ratio, _, _ = _batch(2, 40, 32)
    attention = 1 - torch.rand(2, 1, 40, 32) * 0.5
    with torch.no_grad():
        ours = loaded(ct, mask, ratio, attention)
        direct = _direct_generator(state)(ct, mask, ratio, attention)
    assert float(ours.fine_ct.std()) > 1e-3  # not saturated: a meaningful comparison
    for a, b in zip(ours, direct):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # a DataParallel prefix and the newer parametrizations names are mapped
    renamed = OrderedDict()
    for k, v in state.items():
        k = k.replace(".conv.weight_orig", ".conv.parametrizations.weight.original")
        k = k.replace(".conv.weight_u", ".conv.parametrizations.weight.0._u")
        renamed["module." + k.replace(".conv.weight_v", ".conv.parametrizations.weight.0._v")] = v
    torch.save(renamed, tmp_path / "renamed.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # pre-1.6 format
    for name in ("renamed.pth", "legacy.pth"):
        with torch.no_grad():
            again = load_reference_checkpoint(tmp_path / name)(ct, mask, ratio, attention)
        assert torch.equal(again.fine_ct, ours.fine_ct), name


class _Opener:
    """An object whose unpickling would create a file: weights_only loading must refuse it."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_bad_weight_files_raise_clear_errors(tmp_path):
    state = _fake_reference_state(1)
    good = tmp_path / "latest_net_G.pth"
    torch.save(state, good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(HealthiVertError, match="damaged or truncated"):
        load_reference_checkpoint(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(HealthiVertError):
        load_reference_checkpoint(garbage)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(HealthiVertError, match="empty"):
        load_reference_checkpoint(tmp_path / "empty.pth")
    with pytest.raises(HealthiVertError, match="does not exist"):
        load_reference_checkpoint(tmp_path / "missing.pth")

    marker = tmp_path / "was_unpickled"
    evil = tmp_path / "evil.pth"
    torch.save({"coarse_generator.conv1.conv.bias": _Opener(str(marker))}, evil)
    with pytest.raises(HealthiVertError, match="refuses to unpickle"):
        load_reference_checkpoint(evil)
    assert not marker.exists()
    torch.save({"epoch": 3}, tmp_path / "not_tensors.pth")
    with pytest.raises(HealthiVertError, match="not a plain state_dict"):
        load_reference_checkpoint(tmp_path / "not_tensors.pth")

    wrong = OrderedDict(state)
    wrong["fine_generator.conv1.conv.weight_orig"] = torch.zeros(16, 5, 5, 5)
    del wrong["coarse_generator.fc_height.bias"]
    wrong["extra.weight"] = torch.zeros(1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(HealthiVertError) as info:
        load_reference_checkpoint(tmp_path / "wrong.pth")
    message = str(info.value)
    assert "1 missing: coarse_generator.fc_height.bias" in message
    assert "1 unexpected: extra.weight" in message
    assert "fine_generator.conv1.conv.weight_orig (16, 5, 5, 5) (expected (16, 4, 5, 5))" in message

    nan = OrderedDict(state)
    nan["fine_generator.fc_height.bias"] = torch.tensor([float("nan")])
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(HealthiVertError, match="NaN"):
        load_reference_checkpoint(tmp_path / "nan.pth")

    gen = Generator()
    weights, _ = save_weights(gen, tmp_path / "gen.safetensors", _card("generator", gen.config))
    blob = weights.read_bytes()
    for name, damaged in (("cut", blob[: len(blob) - 1000]), ("head", blob[:6]), ("noise", b"\x00" * 64)):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(damaged)
        with pytest.raises(HealthiVertError, match="damaged or truncated"):
            load_generator(bad)


def test_core_imports_no_torch():
    code = ("import pkgutil, importlib, sys, HealthiVertLib\n"
            "for m in pkgutil.iter_modules(HealthiVertLib.__path__):\n"
            "    if m.ispkg: continue\n"
            "    try: importlib.import_module('HealthiVertLib.' + m.name)\n"
            "    except ImportError: pass  # the MRML adapter needs Slicer\n"
            "    assert 'torch' not in sys.modules, m.name + ' imports torch at import time'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
