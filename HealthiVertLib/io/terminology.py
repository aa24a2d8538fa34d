"""SNOMED CT codes of the vertebrae, shared by the DICOM reader and writer (and the Slicer adapter).

``VERTEBRA_SCT`` maps a level to its SNOMED CT code, as the TotalSegmentator Slicer extension
assigns them (lassoan/SlicerTotalSegmentator, ``totalsegmentator_snomed_mapping.csv``, rows
vertebrae_C1 ... vertebrae_L5; category SCT 123037004 "Anatomical Structure"). T13 and L6 have no
code of their own: "Vertebra" (SCT 51282000) in the thoracic (122495006) or lumbar (122496007)
spine, as that file codes vertebrae_thoracic / vertebrae_lumbar. :func:`vertebra_code` gives the
(type, region) codes of a level and :func:`level_from_code` reads a level back from a code.
``scene/segmentations.py`` codes the Slicer segments with the same table.
"""

from __future__ import annotations

from collections.abc import Mapping

SCT_CATEGORY = ("SCT", "123037004", "Anatomical Structure")
VERTEBRA_SCT: Mapping[str, str] = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003",
    "C6": "36054005", "C7": "87391001",
    "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006",
    "T6": "45296009", "T7": "62487009", "T8": "11068009", "T9": "82687006", "T10": "7610001",
    "T11": "12989004", "T12": "23215003",
    "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
}  # fmt: skip
SCT_VERTEBRA = "51282000"
SCT_SPINE_REGION = {"T": ("SCT", "122495006", "Thoracic spine"), "L": ("SCT", "122496007", "Lumbar spine")}
LEVEL_BY_SCT = {code: level for level, code in VERTEBRA_SCT.items()}
CODING_SCHEMES = ("SCT", "SRT")  # SRT: the designator DICOM used for SNOMED CT before 2019


def vertebra_code(level: str) -> tuple[tuple[str, str, str], tuple[str, str, str] | None]:
    """((scheme, code, meaning) of the vertebra type, (scheme, code, meaning) of its spine region or None).

    C1-L5 have a code of their own; T13 and L6 are "Vertebra" in the thoracic or lumbar spine.
    """
    if level in VERTEBRA_SCT:
        return ("SCT", VERTEBRA_SCT[level], f"{level} vertebra"), None
    return ("SCT", SCT_VERTEBRA, "Vertebra"), SCT_SPINE_REGION.get(level[:1])


def level_from_code(scheme: str, code: str) -> str | None:
    """Vertebra level of a SNOMED CT code (``("SCT", "66794005")`` -> ``"L1"``), or None."""
    return LEVEL_BY_SCT.get(str(code)) if str(scheme) in CODING_SCHEMES else None
