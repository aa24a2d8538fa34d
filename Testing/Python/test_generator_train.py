"""Training the generator: samples, one training step, a tiny run, resume, torchrun with 2 processes.

Tiny configurations (48x32 px slices at 3 mm, ngf 4) on small procedural phantoms keep every test
at a few seconds of CPU; the torchrun test starts two gloo processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("skimage")

from HealthiVertLib.errors import HealthiVertError  # noqa: E402
from HealthiVertLib.engines.generator.slices import band_rows  # noqa: E402
from HealthiVertLib.io.labels import verse_label  # noqa: E402
from HealthiVertLib.training.generator_data import SliceSampler, case_records, folder_sources, phantom_source  # noqa: E402
from HealthiVertLib.training.losses import LossWeights  # noqa: E402
from HealthiVertLib.engines.generator.networks import Discriminators, Generator  # noqa: E402
from HealthiVertLib.training.generator import TrainOptions, load_checkpoint, train, train_step, to_torch  # noqa: E402
from HealthiVertLib.engines.generator.weights import load_generator, read_model_card  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(rows=48, cols=32, spacing=3.0, ngf=4, ndf=8, phantom_levels="L1-L3", batch_size=2, threads=1,
            progress=False, val_samples=4)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def records():
    src = phantom_source(7, levels="L1-L3")
    return case_records(src.case, (48, 32), 3.0, src.healthy, margin=15)


def test_samples_follow_the_band_definition(records):
    sampler = SliceSampler(records, (48, 32), 3.0)
    b = sampler.batch(6, np.random.default_rng(0))
    assert b["ct"].shape == (6, 1, 48, 32) and b["ratio"].shape == (6,)
    for i in range(6):
        band_rows = np.flatnonzero(b["mask"][i, 0, :, 0])
        assert np.all(np.diff(band_rows) == 1)  # one contiguous band over the full width
        assert np.all(b["mask"][i, 0, band_rows] == 1) and b["mask"][i].sum() == len(band_rows) * 32
        assert np.all(b["ct"][i, 0, band_rows] == -1.0)  # the band hides the target (air)
        target_rows = np.flatnonzero(b["target"][i, 0].any(axis=1))
        assert b["height_mm"][i] == pytest.approx(3.0 * (target_rows[-1] - target_rows[0] + 1))
        assert band_rows[0] <= target_rows[0] and band_rows[-1] >= target_rows[-1]  # band covers the target
        assert not np.any(b["neighbours"][i, 0, band_rows])  # neighbour targets only outside the band
    assert b["neighbours"].any()  # healthy neighbours are visible in the context


def test_band_rule_is_in_millimetres():
    # 1.5 x the expected height, rounded up to an even number of rows, at any pixel spacing
    assert band_rows(30.0, 1.0) == 46 and band_rows(30.0, 1.5) == 30 and band_rows(20.0, 1.0) == 30


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = TrainOptions(out="unused", **TINY).config()
    return cfg, Generator(cfg), Discriminators(cfg)


def test_a_tiny_training_run_lowers_the_loss(records):
    cfg, model, discs = _tiny_model()
    opt_g = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discs.parameters(), lr=1e-3, betas=(0.5, 0.999))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batch = to_torch(SliceSampler(records, (48, 32), 3.0).batch(4, np.random.default_rng(1)), torch.device("cpu"))
    losses = []
    for _ in range(25):
        g, _, terms, _ = train_step(model, discs, opt_g, opt_d, scaler, batch, cfg, LossWeights())
        losses.append(terms["reconstruction"] + terms["seg_fine"] + terms["height"])
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_every_generator_loss_term_is_finite_and_reaches_the_generator(records):
    cfg, model, discs = _tiny_model()
    opt_g = torch.optim.Adam(model.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(discs.parameters(), lr=1e-4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = to_torch(SliceSampler(records, (48, 32), 3.0).batch(2, np.random.default_rng(2)), torch.device("cpu"))
    g, d, g_terms, d_terms = train_step(model, discs, opt_g, opt_d, torch.amp.GradScaler("cuda", enabled=False),
                                        batch, cfg, LossWeights())
    assert np.isfinite(g) and np.isfinite(d) and all(np.isfinite(v) for v in {**g_terms, **d_terms}.values())
    changed = [k for k, v in model.state_dict().items() if k.endswith("weight_orig") and not torch.equal(v, before[k])]
    assert any(k.startswith("coarse_generator") for k in changed) and any(k.startswith("fine_generator") for k in changed)


def test_training_writes_weights_card_log_and_resumes_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    opts = TrainOptions(out=str(out), phantoms=1, val_phantoms=1, steps=2, checkpoint_every=1, val_every=2,
                        command="healthivert train-generator (test)", **TINY)
    _, metrics = train(opts)
    assert {"band_psnr_db", "band_ssim", "dice_target", "height_error_mm"} <= set(metrics)
    card = read_model_card(out / "generator.safetensors")
    assert card.extra["steps_done"] == 2 and "simulated" in card.notice.lower() and "research" in card.notice.lower()
    assert card.config["image_size"] == [48, 32] and card.config["spacing_mm"] == [3.0, 3.0]
    first = load_generator(out / "generator.safetensors")
    opts2 = TrainOptions(**{**opts.__dict__, "steps": 4, "resume": str(out), "val_phantoms": 0})
    model, _ = train(opts2)
    card = read_model_card(out / "generator.safetensors")
    assert card.extra["resumed_from_step"] == 2 and card.extra["steps_done"] == 4
    steps = [json.loads(line)["step"] for line in (out / "scalars.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(set(steps)) == [1, 2, 3, 4]  # the resumed run continued at step 3
    cfg, m2, d2 = _tiny_model(seed=5)
    o_g, o_d = torch.optim.Adam(m2.parameters()), torch.optim.Adam(d2.parameters())
    assert load_checkpoint(out / "checkpoint.safetensors", m2, d2, o_g, o_d) == 4
    assert all(torch.equal(a, b) for a, b in zip(m2.state_dict().values(), model.state_dict().values()))
    assert len(o_g.state) > 0  # Adam moments restored
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), model.state_dict().values()))


def test_resume_from_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    out = tmp_path / "run"
    train(TrainOptions(out=str(out), phantoms=1, val_phantoms=0, steps=1, **TINY))
    other = TrainOptions(out=str(tmp_path / "b"), phantoms=1, val_phantoms=0, steps=2, resume=str(out),
                         **{**TINY, "ngf": 6})
    with pytest.raises(HealthiVertError, match="another architecture"):
        train(other)


DRIVER = """
import hashlib, json, os, sys
import torch
from HealthiVertLib.training.generator import TrainOptions, train
opts = TrainOptions(out=sys.argv[1], phantoms=2, val_phantoms=0, steps=3, checkpoint_every=3, rows=48, cols=32,
                    spacing=3.0, ngf=4, ndf=8, phantom_levels="L1-L3", batch_size=2, threads=1, progress=False)
model, _ = train(opts)
digest = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for v in model.parameters())).hexdigest()
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"digest": digest, "world": int(os.environ["WORLD_SIZE"])}, f)
"""


def test_torchrun_two_gloo_processes_keep_identical_parameters(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER, encoding="utf-8")
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # own process group, so a timeout kills the workers too, not only the launcher
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(driver), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail("torchrun with 2 gloo processes did not finish within 240 s: " + stderr[-3000:])
    assert proc.returncode == 0, stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert (out / "generator.safetensors").is_file() and (out / "checkpoint.safetensors").is_file()


def test_dataset_folders_take_healthy_targets_from_the_grade_file(tmp_path):
    from HealthiVertLib.io.grades import read_grade_file
    from HealthiVertLib.truth.phantom_dataset import write_dataset

    manifest = write_dataset(tmp_path / "ds", 1, seed=3, levels="L1-L3", spacing=[2.0], fractures_per_case=(1, 1))
    (src,) = folder_sources(manifest, tmp_path / "ds" / "vertebra_data.json", max_grade=0)
    grades = {lv: g for (case, lv), g in read_grade_file(tmp_path / "ds" / "vertebra_data.json").items()}
    assert src.case.ct is not None and len(grades) == 3
    assert set(src.healthy) == {"L1", "L2", "L3"}
    by_level = {lv: grades[verse_label(lv)] for lv in src.healthy}
    assert src.healthy == {lv: g <= 0 for lv, g in by_level.items()} and not all(src.healthy.values())
    records = case_records(src.case, (48, 32), 3.0, src.healthy)
    assert {r.level for r in records} <= {lv for lv, ok in src.healthy.items() if ok}
