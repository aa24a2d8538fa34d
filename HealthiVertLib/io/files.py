"""Atomic writes: an output file is either complete or absent, never half written.

:func:`atomic_output` yields a temporary path beside the target and renames it into place on
success; ``write_text_atomic``, ``write_bytes_atomic`` and ``write_image_atomic`` use it. Every
file HealthiVert writes goes through here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import SimpleITK as sitk



@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves any previous file untouched.
    The temporary name keeps the final suffix (``.nii.gz``) so writers pick the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_image_atomic(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write ``image`` to ``path`` (format from the suffix, compressed) atomically."""
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
