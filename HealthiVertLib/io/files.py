"""Atomic writes: an output file is either complete or absent, never half written.

:func:`atomic_output` yields a temporary path beside the target and renames it into place on
success; ``write_text_atomic``, ``write_bytes_atomic`` and ``write_image_atomic`` use it. Every
file HealthiVert writes goes through here. :func:`check_output_dir`, :func:`check_output_file` and
:func:`check_outputs_apart` check an output location before any computing (every command uses them);
:func:`check_inputs_outside` and :func:`check_inside` keep a batch inside its output folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk

from ..errors import HealthiVertError


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


# --- output locations, checked before any computing -----------------------------------------

_NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows file systems


def _check_name_lengths(path: Path, flag: str) -> None:
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > _NAME_MAX:
            raise HealthiVertError(
                f"{flag} '{path}': the name '{part[:40]}...' is {size} bytes long; file systems allow at most "
                f"{_NAME_MAX}. Choose a shorter name."
            )


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder HealthiVert can write into, or a HealthiVertError saying why not.

    Checked before any computing, so a long run never ends in a lost result: the path must not
    be a file or lie under one, no part of it may be longer than 255 bytes, and the folder (or the
    nearest existing folder above it, where it will be created) must be writable. Nothing is created.
    """
    path = Path(path)
    _check_name_lengths(path, flag)
    _check_folder(path, path, flag)
    return path


def _check_folder(folder: Path, shown: Path, flag: str) -> None:
    """``folder`` is (or can be created as) a writable folder; errors name ``shown``, the path given."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == shown else f"lies under the file '{existing}'"
        raise HealthiVertError(f"{flag} '{shown}' {where}, not a folder. Choose another {flag} path.")
    if not os.access(existing if existing.exists() else Path.cwd(), os.W_OK | os.X_OK):
        raise HealthiVertError(
            f"{flag} '{shown}' is not writable (no permission to write in '{existing}'). Choose another {flag} path."
        )


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a file HealthiVert can write (its folder checked by :func:`check_output_dir`)."""
    path = Path(path)
    _check_name_lengths(path, flag)
    if path.is_dir():
        raise HealthiVertError(f"{flag} '{path}' is a folder; give a file name (e.g. '{path / 'out.json'}').")
    _check_folder(path.parent, path, flag)
    return path


def check_outputs_apart(out_dir: str | os.PathLike, inputs, flag: str = "--out") -> None:
    """Refuse an output folder that holds one of the ``inputs`` (paths or None): outputs never overwrite inputs."""
    out = Path(out_dir).resolve()
    for item in inputs:
        if item is not None and Path(item).resolve().parent == out:
            raise HealthiVertError(
                f"{flag} '{out_dir}' holds the input file '{item}'; writing the outputs there could overwrite "
                "an input. Choose another folder for the outputs."
            )


def check_inputs_outside(out_dir: str | os.PathLike, inputs, flag: str = "--out") -> None:
    """Refuse an output folder that holds one of the ``inputs`` (paths or None) at any depth, or that is
    one of them: a batch replaces whole case folders, so no input may live anywhere inside its output."""
    out = Path(out_dir).resolve()
    for item in inputs:
        if item is None:
            continue
        path = Path(item).resolve()
        if path == out or path.is_relative_to(out):
            raise HealthiVertError(
                f"{flag} '{out_dir}' holds the input '{item}'; a batch replaces the case folders in {flag}, so it could "
                "overwrite an input. Choose a folder that holds none of the inputs."
            )


def check_inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` when it lies strictly inside the folder ``root`` (symbolic links resolved), else a HealthiVertError."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r == root_r or not path_r.is_relative_to(root_r):
        raise HealthiVertError(f"'{path}' would lie outside the output folder '{root}'; nothing is written there.")
    return Path(path)
