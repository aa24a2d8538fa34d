"""Where the learned networks run: a device that works, or a one-line reason why not.

``choose_device`` is the one place that turns ``--device`` into a ``torch.device`` for grading,
batch and training (``train-generator``, ``train-hgam``):

* ``auto`` (the default, also ``None`` or ``""``): CUDA only when ``torch.cuda.is_available()``,
  the GPU's compute capability is one this PyTorch build has kernels for
  (``torch.cuda.get_arch_list()``: ``sm_XY``, or ``compute_XY`` PTX for an older or equal
  architecture) *and* a tiny test kernel (a small matmul and a synchronize) runs; else Apple's
  ``mps`` when ``torch.backends.mps.is_available()`` and the same tiny op works; else the CPU. The
  choice comes with one line (``DeviceChoice.note``) saying which device and, on a fall-back, why.
* an explicit ``cuda``, ``cuda:N`` or ``mps`` that cannot work raises ``HealthiVertError`` with one
  line saying why (no GPU, index beyond the device count, architecture not built, kernel failed).
* ``cpu`` always works.

The checks are run each time (no cache): engines and trainings call this once per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import HealthiVertError

AUTO = ("", "auto")
TEST_SIZE = 8  # the test kernel: an 8 x 8 matrix of ones squared and summed must give 8 ** 3


@dataclass(frozen=True)
class DeviceChoice:
    """The device to run on and one line for the user: which device and, on a fall-back, why."""

    device: torch.device
    note: str
    requested: bool = False  # the user named this device; nothing to explain on the terminal


def choose_device(requested: str | None = None) -> DeviceChoice:
    """``requested`` (``auto``/None, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) -> a device that works.

    ``auto`` falls back to the CPU with the reason in the note; an explicit GPU that cannot work
    raises ``HealthiVertError`` (one line, exit status 2 on the command line)."""
    text = (requested or "").strip().lower()
    if text in AUTO:
        return _auto()
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise HealthiVertError(f"Unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cpu":
        return DeviceChoice(torch.device("cpu"), "device: cpu (requested)", requested=True)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else 0
        problem = cuda_problem(index)
        if problem:
            raise HealthiVertError(f"--device {requested} cannot be used: {problem}; use --device auto or cpu.")
        return DeviceChoice(torch.device("cuda", index), f"device: cuda:{index} ({_gpu_name(index)}, requested)",
                            requested=True)
    if dev.type == "mps":
        problem = mps_problem()
        if problem:
            raise HealthiVertError(f"--device {requested} cannot be used: {problem}; use --device auto or cpu.")
        return DeviceChoice(torch.device("mps"), "device: mps (Apple GPU, requested)", requested=True)
    raise HealthiVertError(f"Device {requested!r} is not supported; use auto, cpu, cuda, cuda:N or mps.")


def resolve_device(requested: str | None = None) -> torch.device:
    """``choose_device(requested).device``: for callers that need no note."""
    return choose_device(requested).device


def _auto() -> DeviceChoice:
    cuda = cuda_problem(0)
    if cuda is None:
        return DeviceChoice(torch.device("cuda", 0), f"device: cuda:0 ({_gpu_name(0)}, chosen by auto)")
    reasons = [f"CUDA not used: {cuda}"]
    if _mps_built():
        mps = mps_problem()
        if mps is None:
            return DeviceChoice(torch.device("mps"), f"device: mps (Apple GPU, chosen by auto; {reasons[0]})")
        reasons.append(f"MPS not used: {mps}")
    return DeviceChoice(torch.device("cpu"), f"device: cpu ({'; '.join(reasons)})")


def cuda_problem(index: int = 0) -> str | None:
    """Why CUDA GPU ``index`` cannot run the networks, or None when it can (a test kernel ran on it)."""
    try:
        if not torch.cuda.is_available():
            build = "this PyTorch build has no CUDA" if torch.version.cuda is None else "PyTorch sees no CUDA GPU"
            return f"{build} (torch.cuda.is_available() is False)"
        count = torch.cuda.device_count()
        if index < 0 or index >= count:
            return f"there is no GPU cuda:{index} (PyTorch sees {count}: cuda:0{'' if count == 1 else f'..cuda:{count - 1}'})"
        major, minor = torch.cuda.get_device_capability(index)
        archs = list(torch.cuda.get_arch_list())
        if not arch_supported(major, minor, archs):
            return (f"the GPU {_gpu_name(index)} is sm_{major}{minor}, which this PyTorch build has no kernels for "
                    f"({', '.join(archs) or 'none listed'}); install a PyTorch build for sm_{major}{minor}")
    except Exception as exc:  # noqa: BLE001  (a broken driver raises anything from any of these)
        return f"querying the GPU failed ({_first_line(exc)})"
    return _kernel_problem(torch.device("cuda", index), _gpu_name(index))


def mps_problem() -> str | None:
    """Why Apple's MPS device cannot run the networks, or None when it can (a test op ran on it)."""
    mps = getattr(torch.backends, "mps", None)
    try:
        available = bool(mps is not None and mps.is_available())
    except Exception as exc:  # noqa: BLE001  (a broken GPU stack raises anything)
        return f"querying MPS failed ({_first_line(exc)})"
    if not available:
        return "PyTorch sees no Apple GPU (torch.backends.mps.is_available() is False)"
    return _kernel_problem(torch.device("mps"), "the Apple GPU")


def arch_supported(major: int, minor: int, archs: list[str]) -> bool:
    """Whether a GPU of compute capability ``major.minor`` has kernels in ``archs``
    (``torch.cuda.get_arch_list()``): its own ``sm_XY``, or ``compute_XY`` PTX of an older or
    equal architecture, which the driver compiles for it."""
    own = major * 10 + minor
    for arch in archs:
        kind, _, digits = arch.partition("_")
        number = int("".join(c for c in digits if c.isdigit()) or -1)
        if kind == "sm" and number == own:
            return True
        if kind == "compute" and 0 <= number <= own:
            return True
    return False


def _kernel_problem(device: torch.device, name: str) -> str | None:
    """Run a tiny matmul on ``device`` and wait for it; the error's first line when it fails."""
    try:
        a = torch.ones(TEST_SIZE, TEST_SIZE, device=device)
        total = float((a @ a).sum().cpu())
        _synchronize(device)
    except Exception as exc:  # noqa: BLE001  (a broken GPU stack raises anything)
        return f"a test kernel failed on {name} ({_first_line(exc)})"
    if total != float(TEST_SIZE ** 3):
        return f"a test kernel on {name} gave a wrong result ({total:g} instead of {TEST_SIZE ** 3})"
    return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def _mps_built() -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and (mps.is_built() or mps.is_available()))
    except Exception:  # noqa: BLE001  (a broken GPU stack raises anything)
        return False


def _gpu_name(index: int) -> str:
    try:
        return str(torch.cuda.get_device_name(index))
    except Exception:  # noqa: BLE001  (a broken GPU stack raises anything)
        return f"cuda:{index}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
