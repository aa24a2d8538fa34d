"""The device choice (``engines.generator.devices``): ``auto`` never fails, an explicit GPU that
cannot work is one line and exit status 2.

Every GPU condition is faked with monkeypatch (availability, device count, compute capability, the
build's arch list, the test kernel, Apple's MPS), so these tests run the same with or without a GPU.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from conftest import SAMPLE_CT, SAMPLE_SEG

from HealthiVertLib.app.cli import main
from HealthiVertLib.engines.generator import devices
from HealthiVertLib.engines.generator.devices import arch_supported, choose_device
from HealthiVertLib.errors import HealthiVertError

ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
KERNEL_IMAGE = "CUDA error: no kernel image is available for execution on the device"


@pytest.fixture
def gpu(monkeypatch):
    """Fake a CUDA installation: ``gpu(available=..., count=..., capability=..., archs=..., kernel=...)``.

    ``kernel``: None runs the test kernel (on the CPU, standing in for the GPU); an exception
    instance is raised by it, as a GPU without kernels for its architecture does."""

    def fake(available=True, count=1, capability=(9, 0), archs=ARCHS, kernel=None, mps=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU 9000")
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: bool(mps))
        monkeypatch.setattr(torch.backends.mps, "is_built", lambda: mps is not None)
        monkeypatch.setattr(torch.mps, "synchronize", lambda: None)
        real_ones = torch.ones

        def ones(*size, device=None, **kw):
            kind = torch.device(device).type if device is not None else "cpu"
            failure = kernel if kind == "cuda" else (mps if isinstance(mps, Exception) and kind == "mps" else None)
            if failure is not None:
                raise failure
            return real_ones(*size, **kw)  # the GPU's work, done on the CPU

        monkeypatch.setattr(torch, "ones", ones)

    return fake


def test_auto_uses_a_gpu_that_passes_every_check(gpu):
    gpu(capability=(9, 0))
    choice = choose_device("auto")
    assert choice.device == torch.device("cuda", 0)
    assert choice.note == "device: cuda:0 (Fake GPU 9000, chosen by auto)"
    assert choose_device(None).device == choose_device("").device == torch.device("cuda", 0)


def test_auto_falls_back_to_the_cpu_when_cuda_is_not_available(gpu):
    gpu(available=False)
    choice = choose_device("auto")
    assert choice.device == torch.device("cpu")
    assert choice.note.startswith("device: cpu (CUDA not used: ") and "is_available() is False" in choice.note
    assert "\n" not in choice.note


def test_auto_falls_back_when_the_gpu_architecture_is_not_in_the_build(gpu):
    gpu(capability=(12, 0), archs=ARCHS)  # a new GPU, an old wheel: is_available() is True all the same
    choice = choose_device("auto")
    assert choice.device == torch.device("cpu")
    assert "Fake GPU 9000 is sm_120" in choice.note and "sm_90" in choice.note and "no kernels" in choice.note


def test_auto_falls_back_when_the_test_kernel_raises(gpu):
    gpu(kernel=RuntimeError(KERNEL_IMAGE + "\nCUDA kernel errors might be asynchronously reported"))
    choice = choose_device("auto")
    assert choice.device == torch.device("cpu")
    assert "test kernel failed on Fake GPU 9000" in choice.note and "no kernel image" in choice.note
    assert "\n" not in choice.note and "asynchronously" not in choice.note  # the first line only


def test_auto_falls_back_when_querying_the_gpu_raises(gpu, monkeypatch):
    gpu()

    def broken(index=0):
        raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(torch.cuda, "get_device_capability", broken)
    choice = choose_device("auto")
    assert choice.device.type == "cpu" and "driver version is insufficient" in choice.note


def test_ptx_of_an_older_architecture_counts_and_a_newer_one_does_not():
    assert arch_supported(9, 0, ["sm_80", "sm_90"])
    assert not arch_supported(12, 0, ["sm_80", "sm_90"])
    assert arch_supported(12, 0, ["sm_80", "compute_90"])  # the driver compiles PTX for newer GPUs
    assert not arch_supported(7, 5, ["sm_80", "compute_80"])
    assert arch_supported(9, 0, ["sm_90a"]) and not arch_supported(9, 0, [])


def test_auto_uses_mps_when_available_and_working(gpu):
    gpu(available=False, mps=True)
    choice = choose_device("auto")
    assert choice.device == torch.device("mps")
    assert choice.note.startswith("device: mps (Apple GPU, chosen by auto; CUDA not used")


def test_auto_falls_back_to_the_cpu_when_mps_fails(gpu):
    gpu(available=False, mps=RuntimeError("MPS backend out of memory"))
    choice = choose_device("auto")
    assert choice.device == torch.device("cpu")
    assert "CUDA not used" in choice.note and "MPS not used: a test kernel failed" in choice.note
    assert "out of memory" in choice.note


def test_auto_says_nothing_about_mps_where_torch_has_none(gpu):
    gpu(available=False, mps=None)
    assert "MPS" not in choose_device("auto").note


@pytest.mark.parametrize("requested, conditions, reason", [
    ("cuda", {"available": False}, "is_available() is False"),
    ("cuda:0", {"capability": (12, 0)}, "sm_120"),
    ("cuda", {"kernel": RuntimeError(KERNEL_IMAGE)}, "no kernel image"),
    ("cuda:5", {"count": 2}, "there is no GPU cuda:5 (PyTorch sees 2: cuda:0..cuda:1)"),
    ("mps", {"available": False, "mps": False}, "mps.is_available() is False"),
    ("mps", {"available": False, "mps": RuntimeError("MPS unavailable")}, "MPS unavailable"),
])
def test_an_explicit_device_that_cannot_work_is_a_one_line_error(gpu, requested, conditions, reason):
    gpu(**conditions)
    with pytest.raises(HealthiVertError) as err:
        choose_device(requested)
    text = str(err.value)
    assert text.startswith(f"--device {requested} cannot be used: ") and reason in text
    assert "\n" not in text and "--device auto or cpu" in text


def test_explicit_devices_that_work(gpu):
    gpu(count=2, mps=True)
    assert choose_device("cuda:1").device == torch.device("cuda", 1)
    assert choose_device("cuda").device == torch.device("cuda", 0)
    assert choose_device("mps").device == torch.device("mps")
    assert choose_device("CPU").note == "device: cpu (requested)"


@pytest.mark.parametrize("requested", ["banana", "cuda:x", "xla", "meta"])
def test_unknown_or_unsupported_devices_are_refused(requested):
    with pytest.raises(HealthiVertError, match="auto, cpu, cuda, cuda:N or mps"):
        choose_device(requested)


def _grade(tmp_path, *extra):
    return main(["grade", "--seg", str(SAMPLE_SEG), "--ct", str(SAMPLE_CT), "--vertebra", "L3", "--engine", "generator",
                 "--no-figures", "--progress", "none", "--out", str(tmp_path / "out"), *extra])


def test_grade_with_an_explicit_cuda_that_cannot_work_exits_2_in_one_line(gpu, tmp_path, capsys):
    gpu(capability=(12, 0))
    assert _grade(tmp_path, "--device", "cuda") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("healthivert: error: --device cuda cannot be used: ") and "sm_120" in err[0]
    assert not (tmp_path / "out" / "report.json").exists()


def test_grade_on_auto_falls_back_with_one_line_and_says_so_in_the_report(gpu, tmp_path, capsys, torch_one_thread):
    gpu(kernel=RuntimeError(KERNEL_IMAGE))
    assert _grade(tmp_path) == 0  # no --device: auto
    lines = [x for x in capsys.readouterr().err.splitlines() if "device:" in x]
    assert len(lines) == 1 and lines[0].startswith("healthivert: device: cpu (CUDA not used: a test kernel failed")
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["engine_notes"][0] == lines[0].removeprefix("healthivert: ")
    assert any(n.startswith("weights: ") for n in report["engine_notes"])
    assert report["vertebrae"][0]["status"] == "graded"


def test_other_engines_leave_no_engine_notes(tmp_path):
    assert main(["grade", "--seg", str(SAMPLE_SEG), "--vertebra", "L3", "--no-figures", "--progress", "none",
                 "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["engine_notes"] == []


@pytest.mark.parametrize("command", ["train-generator", "train-hgam"])
def test_training_with_an_explicit_cuda_that_cannot_work_exits_2_before_any_work(gpu, tmp_path, capsys, command):
    gpu(count=1)
    assert main([command, "--out", str(tmp_path / "run"), "--device", "cuda:5", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda:5 cannot be used: there is no GPU cuda:5 (PyTorch sees 1: cuda:0)" in err[0]
    assert not any((tmp_path / "run").glob("*.safetensors"))


def test_training_uses_the_same_choice(gpu):
    from HealthiVertLib.training.generator import setup_distributed

    gpu(capability=(3, 5))
    d = setup_distributed("auto")
    assert d.device == torch.device("cpu") and "sm_35" in d.device_note
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_batch_with_an_explicit_cuda_that_cannot_work_exits_2_before_any_case(gpu, tmp_path, capsys):
    gpu(available=False)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case,seg,ct\nc0,{SAMPLE_SEG},{SAMPLE_CT}\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--engine", "generator", "--device", "cuda",
                 "--no-figures", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda cannot be used: " in err[0] and "is_available() is False" in err[0]
    assert not (out / "c0" / "report.json").exists()
