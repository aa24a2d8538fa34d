"""Vertebra level names and the label numbering schemes of segmentation tools.

A label map stores each vertebra as an integer; which integer means which level depends on the
tool that made it (VerSe / TotalSegmentator ``vertebrae_pp``, TotalSegmentator ``total``, an
nnU-Net model). :func:`resolve_scheme` picks the numbering, checking it against the anatomy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

from ..errors import HealthiVertError
from .jsonable import read_json

LEVELS: tuple[str, ...] = (
    *(f"C{i}" for i in range(1, 8)),
    *(f"T{i}" for i in range(1, 14)),
    *(f"L{i}" for i in range(1, 7)),
    "S1",
)
"""All levels, cranial to caudal (T13 and L6 are the transitional extra vertebrae)."""

GRADABLE_LEVELS: frozenset[str] = frozenset(
    [f"T{i}" for i in range(1, 14)] + [f"L{i}" for i in range(1, 7)]
)

_POSITION = {level: float(index) for index, level in enumerate(LEVELS)}
TRANSITIONAL = ("T13", "L6")  # present in some spines only

_LABELS_HINT = (
    "Pass the numbering explicitly: --labels verse (VerSe, TotalSegmentator vertebrae_pp), "
    "--labels totalseg (TotalSegmentator total) or --labels path/to/dataset.json (nnU-Net model)."
)


def normalize_level(level: str) -> str:
    """Return the canonical spelling of ``level`` (``" l1 "`` -> ``"L1"``)."""
    canonical = str(level).strip().upper()
    if canonical not in _POSITION:
        raise HealthiVertError(
            f"Unknown vertebra level '{level}'. Valid levels are C1-C7, T1-T13, L1-L6 and S1."
        )
    return canonical


def level_position(level: str) -> float:
    """Cranio-caudal rank of ``level``: larger is more caudal (T12 < T13 < L1, L5 < L6 < S1)."""
    return _POSITION[normalize_level(level)]


def spine_ranks(present: Iterable[str]) -> dict[str, float]:
    """Cranio-caudal rank of every level, counting the transitional T13 and L6 only when ``present``.

    Differences of ranks are level distances: T12 to L1 is one level in a spine without T13 and
    two in one with T13; a level missing from the label map still counts.
    """
    here = {normalize_level(lv) for lv in present}
    kept = [lv for lv in LEVELS if lv not in TRANSITIONAL or lv in here]
    return {lv: float(i) for i, lv in enumerate(kept)}


def is_gradable(level: str) -> bool:
    """True for the levels HealthiVert grades: T1-T13 and L1-L6."""
    return normalize_level(level) in GRADABLE_LEVELS


def verse_label(level: str) -> int | None:
    """VerSe label number of ``level`` (C1-C7 = 1-7, T1-T12 = 8-19, L1-L6 = 20-25, T13 = 28)."""
    return VERSE.label_of(level)


@dataclass(frozen=True)
class LabelScheme:
    """A numbering: which label value is which vertebra level. Other values are not vertebrae."""

    name: str
    label_to_level: Mapping[int, str]

    def __post_init__(self) -> None:
        mapping = {int(label): normalize_level(level) for label, level in self.label_to_level.items()}
        if any(label <= 0 for label in mapping):
            raise ValueError(f"{self.name}: label 0 is background and cannot be a vertebra")
        if len(set(mapping.values())) != len(mapping):
            raise ValueError(f"{self.name}: a level is assigned to more than one label")
        object.__setattr__(self, "label_to_level", MappingProxyType(mapping))
        object.__setattr__(self, "_level_to_label", {lvl: lab for lab, lvl in mapping.items()})

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.label_to_level.items()))))

    def level_of(self, label: int) -> str | None:
        """Level of ``label``, or None when the value is not a vertebra in this scheme."""
        return self.label_to_level.get(int(label))

    def label_of(self, level: str) -> int | None:
        """Label value of ``level``, or None when this scheme has no label for it."""
        return self._level_to_label.get(normalize_level(level))  # type: ignore[attr-defined]

    def verse_label(self, level: str) -> int | None:
        """VerSe label number of ``level`` (None for S1), whatever this scheme's numbering."""
        return verse_label(level)


VERSE = LabelScheme(
    "verse",
    {
        **{i: f"C{i}" for i in range(1, 8)},
        **{7 + i: f"T{i}" for i in range(1, 13)},
        **{19 + i: f"L{i}" for i in range(1, 7)},
        28: "T13",
    },
)
"""VerSe numbering, also TotalSegmentator ``vertebrae_pp``. 26 (sacrum) and 27 (coccyx) are not vertebrae."""

TOTALSEG = LabelScheme(
    "totalseg",
    {
        26: "S1",
        **{32 - i: f"L{i}" for i in range(1, 6)},
        **{44 - i: f"T{i}" for i in range(1, 13)},
        **{51 - i: f"C{i}" for i in range(1, 8)},
    },
)
"""TotalSegmentator v2 ``total``: 26 S1, 27 L5 ... 31 L1, 32 T12 ... 43 T1, 44 C7 ... 50 C1."""

TOTALSEG_MAX_LABEL = 117  # the last class of TotalSegmentator v2 ``total``

_SCHEME_NAMES = {
    "verse": VERSE,
    "vertebrae_pp": VERSE,
    "totalseg": TOTALSEG,
    "totalsegmentator": TOTALSEG,
    "total": TOTALSEG,
}

_NOT_A_VERTEBRA = ("rib", "disc", "disk", "ivd", "cartilage", "canal", "cord", "foramen", "nerve")


def level_from_name(name: str) -> str | None:
    """Level named in a class name (``"vertebrae_L1"``, ``"T13"``), or None for other structures."""
    lowered = str(name).lower()
    if any(word in lowered for word in _NOT_A_VERTEBRA):
        return None
    found = set()
    for token in re.split(r"[^a-z0-9]+", lowered):
        match = re.fullmatch(r"([ctls])(\d{1,2})", token)
        if match and f"{match[1].upper()}{int(match[2])}" in _POSITION:
            found.add(f"{match[1].upper()}{int(match[2])}")
    return found.pop() if len(found) == 1 else None


def _dataset_entry(key: object, value: object) -> tuple[int, str] | None:
    """(label, class name) of one ``labels`` entry, in nnU-Net v2 or v1 form."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool):
        return value, str(key)
    if isinstance(key, str) and key.strip().isdigit() and isinstance(value, str):
        return int(key), value
    return None


def scheme_from_dataset_json(path: str | os.PathLike) -> LabelScheme:
    """Numbering of an nnU-Net ``dataset.json`` (v2 ``{"L1": 5}`` or v1 ``{"5": "L1"}`` labels)."""
    path = Path(path)
    what = f"The label description file '{path}'"
    data = read_json(
        path, what, advice="give the path of the model's dataset.json file",
        bad_content=lambda reason: HealthiVertError(
            f"{what} could not be read as JSON ({reason}). Give the dataset.json of the nnU-Net model "
            "that made the segmentation."
        ),
    )  # fmt: skip
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise HealthiVertError(f"{what} has no \"labels\" section; is it an nnU-Net dataset.json?")
    mapping: dict[int, str] = {}
    for key, value in labels.items():
        entry = _dataset_entry(key, value)
        level = level_from_name(entry[1]) if entry else None
        if entry is None or level is None or entry[0] <= 0:
            continue
        label = entry[0]
        other = next((lab for lab, lvl in mapping.items() if lvl == level and lab != label), None)
        if other is not None:
            raise HealthiVertError(
                f"{what} gives level {level} two labels, {other} and {label}. Fix the file."
            )
        if label in mapping and mapping[label] != level:
            raise HealthiVertError(f"{what} gives label {label} two levels, {mapping[label]} and {level}.")
        mapping[label] = level
    if not mapping:
        raise HealthiVertError(
            f"{what} names no vertebra (expected class names such as \"L1\", \"vertebrae_L1\", "
            "\"vertebra_T12\"). Use the dataset.json of the model that segmented the vertebrae."
        )
    return LabelScheme(f"dataset.json:{path}", mapping)


def vertebra_labels_present(scheme: LabelScheme, values: Iterable[int]) -> list[int]:
    """The values that are vertebrae in ``scheme``, sorted cranial to caudal."""
    labels = {int(v) for v in values if scheme.level_of(int(v)) is not None}
    return sorted(labels, key=lambda label: level_position(scheme.label_to_level[label]))


def _order_agreement(scheme: LabelScheme, superior_mm: Mapping[int, float]) -> tuple[int, int]:
    """(labels whose cranio-caudal rank matches their level rank, vertebra labels present)."""
    by_level = vertebra_labels_present(scheme, superior_mm)
    by_position = sorted(by_level, key=lambda label: -superior_mm[label])
    return sum(a == b for a, b in zip(by_level, by_position)), len(by_level)


def _describe(scheme: LabelScheme, superior_mm: Mapping[int, float], title: str) -> str:
    agree, total = _order_agreement(scheme, superior_mm)
    if total == 0:
        return f"{title}: no vertebra label"
    levels = [scheme.label_to_level[lab] for lab in vertebra_labels_present(scheme, superior_mm)]
    span = levels[0] if total == 1 else f"{levels[0]}-{levels[-1]}"
    if total == 1:
        return f"{title}: one vertebra ({span}), too few to check the order"
    if agree == total:
        return f"{title}: {span}, in anatomical order"
    return f"{title}: {span}, only {agree} of {total} in anatomical order"


def _unknown_numbering(superior_mm: Mapping[int, float], where: str) -> HealthiVertError:
    values = sorted(superior_mm)
    shown = ", ".join(map(str, values[:20])) + (", ..." if len(values) > 20 else "")
    checks = "; ".join(
        (_describe(VERSE, superior_mm, "as VerSe"), _describe(TOTALSEG, superior_mm, "as TotalSegmentator"))
    )
    return HealthiVertError(
        f"The label numbering of the vertebra labels{where} is unknown (label values: {shown}; "
        f"read {checks}). " + _LABELS_HINT
    )


def _is_consistent(scheme: LabelScheme, superior_mm: Mapping[int, float], minimum: int) -> bool:
    agree, total = _order_agreement(scheme, superior_mm)
    return total >= minimum and agree == total


def detect_scheme(centroids_superior_mm: Mapping[int, float], source: str | None = None) -> LabelScheme:
    """Guess the numbering from the label values present and their cranio-caudal order.

    Values 29-117 only occur in TotalSegmentator ``total`` (vertebrae 29-50, organs and ribs up to 117);
    otherwise the scheme whose vertebra labels (at least two) lie in anatomical order wins.
    """
    superior_mm = {int(label): float(z) for label, z in centroids_superior_mm.items() if int(label) > 0}
    where = f" '{source}'" if source else ""
    if any(29 <= label <= TOTALSEG_MAX_LABEL for label in superior_mm):
        if _is_consistent(TOTALSEG, superior_mm, minimum=1):
            return TOTALSEG
        raise _unknown_numbering(superior_mm, where)
    consistent = [s for s in (VERSE, TOTALSEG) if _is_consistent(s, superior_mm, minimum=2)]
    if len(consistent) == 1:
        return consistent[0]
    raise _unknown_numbering(superior_mm, where)


def resolve_scheme(
    spec: str | os.PathLike | None,
    centroids_superior_mm: Mapping[int, float],
    source: str | None = None,
) -> LabelScheme:
    """The numbering named by ``spec`` ("verse", "totalseg", a dataset.json path; None/"auto": detect).

    ``centroids_superior_mm`` maps each label value present to the superior coordinate (mm, larger is
    more cranial) of its centroid; ``source`` names the label file in messages.
    """
    if spec is None or str(spec).strip().lower() in ("", "auto"):
        return detect_scheme(centroids_superior_mm, source)
    key = str(spec).strip().lower()
    if key in _SCHEME_NAMES:
        scheme = _SCHEME_NAMES[key]
    elif key.endswith(".json") or Path(spec).exists():
        scheme = scheme_from_dataset_json(spec)
    else:
        raise HealthiVertError(
            f"Unknown label numbering '{spec}'. Use verse, totalseg, auto or the path of an nnU-Net "
            "dataset.json."
        )
    if not vertebra_labels_present(scheme, centroids_superior_mm):
        values = ", ".join(map(str, sorted(centroids_superior_mm)[:20]))
        where = f" '{source}'" if source else ""
        raise HealthiVertError(
            f"The vertebra labels{where} contain no vertebra of the {scheme.name} numbering "
            f"(label values found: {values}). Check the --labels option, or leave it out to detect the "
            "numbering."
        )
    return scheme


KIRSCHKE_BODY_LABELS = frozenset({49, 50})
SPINEPS_SACRUM_LABEL = 26  # the only value below 40 in SPINEPS/TPTBox subregion maps
TOTALSEG_BODY_LABEL = 1


def body_labels(values: Iterable[int], source: str | None = None) -> set[int]:
    """The vertebral-body values of a subregion map present in ``values``.

    Kirschke-lab/TPTBox/SPINEPS subregions (values 40 and above, 26 sacrum; body = 49, 50) or TotalSegmentator
    ``vertebrae_body`` (1 = body, 2 = disc).
    """
    present = {int(v) for v in values} - {0}
    where = f" '{source}'" if source else ""
    subregions = present - {SPINEPS_SACRUM_LABEL}
    if present and present <= {1, 2}:
        body = present & {TOTALSEG_BODY_LABEL}
    elif subregions and min(subregions) >= 40 and subregions & set(range(40, 51)):
        body = present & KIRSCHKE_BODY_LABELS
    else:
        shown = ", ".join(map(str, sorted(present)[:20])) or "none"
        raise HealthiVertError(
            f"Unknown subregion labels in the subregion file{where} (values: {shown}). Expected "
            "TotalSegmentator vertebrae_body (1 = body, 2 = disc) or TPTBox/Kirschke subregions "
            "(49, 50 = body). Check that the file is a subregion map, not the vertebra labels."
        )
    if not body:
        raise HealthiVertError(
            f"The subregion file{where} contains no vertebral body label (values: "
            f"{', '.join(map(str, sorted(present)))}). Check the subregion segmentation."
        )
    return body
