"""Cases of a cohort: a folder of label maps (and CTs beside them) or a CSV manifest, one case each.

Each case gets a ``folder``: its name as one safe path component (letters, digits, ``-_.``; not
starting with a dot; not a name the batch writes itself). A name that is not one is slugified
(``../../x`` -> ``___.._x``); a slug that would collide with another case's folder gets a short
hash of the original name. The names ``.``, ``..`` and empty ones are refused. A case's CT may be
a DICOM series: a folder named in the manifest, or a sub-folder ``<case>_ct/``, ``ct/`` or ``dicom/``
beside its labels.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HealthiVertError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
LABEL_MARKERS = ("_seg", "_msk", "-seg", "_label", "_labels")
CT_MARKERS = ("_ct", "-ct", "_image", "_0000")
DICOM_CT_FOLDERS = ("ct", "dicom")  # a sub-folder of a case holding its CT as a DICOM series
# names a batch writes in its output folder itself: no case folder may take them
RESERVED_NAMES = frozenset({"cases.csv", "summary.csv", "summary_by_level.csv", "index.html", "cohort_grades.png"})
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_MAX_FOLDER_BYTES = 120  # room for temporary prefixes and suffixes within 255 bytes


@dataclass(frozen=True)
class CaseFiles:
    """One case of a batch: its name and input files."""

    name: str
    seg: Path
    ct: Path | None = None
    subregions: Path | None = None
    folder: str = ""  # the case's output folder name (one safe path component), set by discover_cases


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
    folders = case_folders(names)
    return [CaseFiles(c.name, c.seg, c.ct, c.subregions, folders[c.name]) for c in cases]


def is_safe_name(name: str) -> bool:
    """True when ``name`` can be a case folder as it is: one path component of letters, digits and ``-_.``,
    not starting with a dot, not longer than 120 bytes, and not a file name the batch writes itself."""
    return (SAFE_NAME.fullmatch(name) is not None and len(name) <= _MAX_FOLDER_BYTES
            and name.lower() not in RESERVED_NAMES)


def slugify(name: str) -> str:
    """``name`` as one safe path component: runs of other characters become ``_``, leading dots ``_``,
    a reserved or over-long name gets a hash of the original."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    slug = "_" * (len(slug) - len(slug.lstrip("."))) + slug.lstrip(".")
    if len(slug) > _MAX_FOLDER_BYTES or slug.lower() in RESERVED_NAMES:
        slug = f"{slug[:_MAX_FOLDER_BYTES - 9]}-{_short_hash(name)}"
    return slug


def case_folders(names: list[str]) -> dict[str, str]:
    """Case name -> output folder name for distinct ``names``: a safe name is its own folder, any other
    is slugified; a slug equal to another case's folder gets ``-<hash of the name>``. ``.``, ``..`` and
    empty names are refused."""
    bad = [n for n in names if n.strip() in ("", ".", "..")]
    if bad:
        raise HealthiVertError(f"The case name {bad[0]!r} cannot name a folder; give the case another name in the manifest.")
    folders = {n: n for n in names if is_safe_name(n)}
    taken = {n.lower() for n in folders}  # case-insensitive file systems (macOS, Windows) count too
    slugs = {n: slugify(n) for n in names if n not in folders}
    counts: dict[str, int] = {}
    for slug in slugs.values():
        counts[slug.lower()] = counts.get(slug.lower(), 0) + 1
    for name, slug in slugs.items():
        if slug.lower() in taken or counts[slug.lower()] > 1:
            slug = f"{slug[:_MAX_FOLDER_BYTES - 9]}-{_short_hash(name)}"
        if slug.lower() in taken:
            raise HealthiVertError(f"The case name {name!r} gives the folder name {slug!r} of another case; rename it.")
        taken.add(slug.lower())
        folders[name] = slug
    return folders


def _short_hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _from_manifest(path: Path) -> list[CaseFiles]:
    try:
        rows = list(csv.DictReader(_io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise HealthiVertError(f"Cannot read the manifest {path}: {err}") from None
    if not rows or "seg" not in rows[0]:
        raise HealthiVertError(f"The manifest {path} needs a header with at least the columns case and seg.")
    resolve = lambda value: (path.parent / value.strip()) if value and value.strip() else None
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
    """The case's CT beside its labels: ``<case>[_ct].nii.gz`` (and the other image suffixes), else a DICOM
    series in a sub-folder ``<case>_ct/``, or ``ct/`` or ``dicom/`` when no other case's labels lie here."""
    for marker in ("",) + CT_MARKERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = folder / f"{prefix}{marker}{suffix}"
            if prefix + marker and candidate.is_file():
                return candidate
    names = [f"{prefix}{marker}" for marker in CT_MARKERS if prefix]
    if sum(1 for p in folder.iterdir() if p.is_file() and _is_label_file(p.name)) == 1:
        names += DICOM_CT_FOLDERS  # ct/ or dicom/ belongs to the case only when its labels are alone here
    return next((folder / name for name in names if (folder / name).is_dir()), None)


def _strip_image_suffix(filename: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename
