"""Cases of a cohort: a folder of label maps (and CTs beside them) or a CSV manifest, one case each."""

from __future__ import annotations

import csv
import io as _io
from dataclasses import dataclass
from pathlib import Path

from ..errors import HealthiVertError


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
LABEL_MARKERS = ("_seg", "_msk", "-seg", "_label", "_labels")
CT_MARKERS = ("_ct", "-ct", "_image", "_0000")


@dataclass(frozen=True)
class CaseFiles:
    """One case of a batch: its name and input files."""

    name: str
    seg: Path
    ct: Path | None = None
    subregions: Path | None = None


def discover_cases(source: str | Path) -> list[CaseFiles]:
    """Cases of a CSV manifest or a folder (see ``healthivert batch --help``)."""
    source = Path(source)
    if not source.exists():
        raise HealthiVertError(f"Batch input {source} does not exist.")
    cases = _from_manifest(source) if source.is_file() else _from_folder(source)
    if not cases:
        raise HealthiVertError(
            f"No case found in {source}: expected label maps named <case>_seg.nii.gz or <case>_msk.nii.gz "
            "(one per sub-folder or side by side), or a CSV manifest with columns case, seg[, ct][, subregions]."
        )
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise HealthiVertError(f"Several cases share the name(s) {', '.join(duplicates)}; rename them in the manifest.")
    return cases


def _from_manifest(path: Path) -> list[CaseFiles]:
    try:
        rows = list(csv.DictReader(_io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HealthiVertError(f"Cannot read the manifest {path}: {err}") from None
    if not rows or "seg" not in rows[0]:
        raise HealthiVertError(f"The manifest {path} needs a header with at least the columns case and seg.")
    resolve = lambda value: (path.parent / value.strip()) if value and value.strip() else None  # noqa: E731
    cases = []
    for k, row in enumerate(rows, start=2):
        seg = resolve(row.get("seg"))
        if seg is None:
            raise HealthiVertError(f"{path}, line {k}: the seg column is empty.")
        name = (row.get("case") or "").strip() or _strip_image_suffix(seg.name)
        cases.append(CaseFiles(name, seg, resolve(row.get("ct")), resolve(row.get("subregions"))))
    return cases


def _from_folder(folder: Path) -> list[CaseFiles]:
    cases = []
    for seg in sorted(p for p in folder.rglob("*") if p.is_file() and _is_label_file(p.name)):
        stem = _strip_image_suffix(seg.name)
        prefix = next(stem[: stem.index(m)] for m in LABEL_MARKERS if m in stem)
        name = prefix or seg.parent.name
        cases.append(CaseFiles(name, seg, _find_ct(seg.parent, prefix)))
    return cases


def _is_label_file(filename: str) -> bool:
    stem = _strip_image_suffix(filename)
    return stem != filename and any(m in stem for m in LABEL_MARKERS) and "subreg" not in stem


def _find_ct(folder: Path, prefix: str) -> Path | None:
    for marker in ("",) + CT_MARKERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{prefix}{marker}{suffix}"
            if prefix + marker and candidate.is_file():
                return candidate
    return None


def _strip_image_suffix(filename: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename
