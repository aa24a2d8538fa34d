"""The Slicer module's "Export to DICOM", without Qt: which result can be exported, the files of the CT
series a volume node was loaded from, and the DICOM objects written.

A volume that Slicer's DICOM plugins loaded carries the node attribute ``DICOM.instanceUIDs`` (the SOP
Instance UIDs of its files, space separated; ``DICOMScalarVolumePlugin.setVolumeNodeProperties``);
Slicer's DICOM database (``slicer.dicomDatabase``, a ``ctkDICOMDatabase``) gives each instance's file
(``fileForInstance``). :func:`prepare_dicom_export` collects those files into one folder holding nothing
else (their own folder when it does, else a folder of links), which ``outputs.report.export_dicom``
(``healthivert export-dicom``) reads as the CT series the objects reference. Without a database, the
instances are looked up in a folder the user chooses (:func:`series_files_in_folder`).
:func:`dicom_export_unavailable` says why a result cannot be exported (the button's tooltip).
Research use only, not for diagnosis.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HealthiVertError
from ..outputs.dicom import (
    DICOM_DIR,
    PM_FILE,
    SEG_BODIES,
    SEG_HEALTHY,
    SR_FILE,
    is_dicom_output_name,
)
from ..outputs.report import export_dicom, is_complete, read_complete_marker

DICOM_INSTANCES_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM plugins on the nodes they load
UNKNOWN_INSTANCE = "Unknown"  # what DICOMScalarVolumePlugin records for a file without a SOP Instance UID
_KINDS = {SEG_BODIES: "SEG of the vertebral bodies", SEG_HEALTHY: "SEG of the pseudo-healthy bodies",
          SR_FILE: "TID 1500 SR", PM_FILE: "height-loss parametric map"}  # fmt: skip


@dataclass(frozen=True)
class DicomExportPlan:
    """What one export reads and writes: the result folder, a folder holding exactly the CT series' files
    (``staged``: a temporary folder of links made for it, to remove afterwards) and the number of files."""

    result_dir: Path
    ct_folder: Path
    instances: int
    staged: Path | None = None

    @property
    def dicom_dir(self) -> Path:
        """The folder the objects are written into (``RESULT/dicom``)."""
        return self.result_dir / DICOM_DIR

    def cleanup(self) -> None:
        """Remove the folder of links, if one was made (never the CT's own files)."""
        if self.staged is not None:
            shutil.rmtree(self.staged, ignore_errors=True)


def dicom_instance_uids(node: Any) -> list[str]:
    """The SOP Instance UIDs a volume node was loaded from (its ``DICOM.instanceUIDs``); [] when it was not
    loaded from DICOM."""
    value = node.GetAttribute(DICOM_INSTANCES_ATTRIBUTE) if node is not None else None
    return str(value).split() if value else []


def dicom_export_unavailable(reference_node: Any, result_dir: str | Path | None) -> str | None:
    """Why the result in ``result_dir``, graded on ``reference_node``, cannot be exported to DICOM; None when
    it can: a finished result graded with a CT (scalar volume, not a label map) that is still in the scene and
    was loaded from DICOM."""
    if not result_dir:
        return "Grade a case first: Export to DICOM writes the DICOM objects of the last result."
    if not is_complete(result_dir):
        return f"The last result folder '{result_dir}' holds no finished result; grade the case again."
    if reference_node is None or reference_node.GetScene() is None:
        return "The CT of the last result is no longer in the scene; load it and grade again."
    if not reference_node.IsA("vtkMRMLScalarVolumeNode") or reference_node.IsA("vtkMRMLLabelMapVolumeNode"):
        return ("The last result was graded without a CT; the DICOM objects reference the CT series, so select "
                "a CT loaded from DICOM and grade again.")
    if not dicom_instance_uids(reference_node):
        return (f"The CT '{reference_node.GetName()}' was not loaded from DICOM (it has no {DICOM_INSTANCES_ATTRIBUTE}): "
                "load the CT series through the DICOM module and grade it to export.")
    return None


def database_is_open(database: Any) -> bool:
    """True for a ``ctkDICOMDatabase`` that is open (its ``isOpen`` property)."""
    return database is not None and bool(getattr(database, "isOpen", False))


def series_files(node: Any, database: Any) -> list[Path]:
    """The files of the DICOM instances ``node`` was loaded from, found in Slicer's DICOM database
    (``ctkDICOMDatabase.fileForInstance``), in the node's order. Raises ``HealthiVertError`` when the node was
    not loaded from DICOM, the database is not open, or an instance has no file there."""
    uids = dicom_instance_uids(node)
    name = node.GetName() if node is not None else "?"
    if not uids:
        raise HealthiVertError(f"The CT '{name}' was not loaded from DICOM (it has no {DICOM_INSTANCES_ATTRIBUTE}).")
    if not database_is_open(database):
        raise HealthiVertError("Slicer's DICOM database is not open; open it in the DICOM module, or export to a folder.")
    files, missing = [], []
    for uid in uids:
        path = str(database.fileForInstance(uid) or "") if uid != UNKNOWN_INSTANCE else ""
        if path and os.path.isfile(path):
            files.append(Path(path))
        else:
            missing.append(uid)
    if missing:
        raise HealthiVertError(
            f"{len(missing)} of the {len(uids)} DICOM instances of the CT '{name}' have no file in Slicer's DICOM "
            f"database (first: {missing[0]}); import the CT series into the database again, then export."
        )
    return files


def series_files_in_folder(node: Any, folder: str | Path) -> list[Path]:
    """The files in ``folder`` (searched recursively) of the DICOM instances ``node`` was loaded from, in the
    node's order: the export without a DICOM database. Raises ``HealthiVertError`` when any is missing."""
    from ..io.dicom import list_series

    uids = dicom_instance_uids(node)
    name = node.GetName() if node is not None else "?"
    if not uids:
        raise HealthiVertError(f"The CT '{name}' was not loaded from DICOM (it has no {DICOM_INSTANCES_ATTRIBUTE}).")
    if not Path(folder).is_dir():
        raise HealthiVertError(f"'{folder}' is not a folder; choose the folder of the CT's DICOM series.")
    wanted, found = set(uids), {}
    for _series, files in list_series(folder):
        for path, header in files:
            uid = str(header.get("SOPInstanceUID", "") or "")
            if uid in wanted:
                found.setdefault(uid, Path(path))
    missing = [uid for uid in uids if uid not in found]
    if missing:
        raise HealthiVertError(
            f"'{folder}' holds {len(uids) - len(missing)} of the {len(uids)} DICOM instances the CT '{name}' was loaded "
            f"from (missing: {missing[0]}{' and more' if len(missing) > 1 else ''}); choose the folder of the CT's DICOM series."
        )
    return [found[uid] for uid in uids]


def stage_series(files: Sequence[Path], work_dir: str | Path) -> tuple[Path, Path | None]:
    """A folder holding exactly ``files`` and nothing else (``export_dicom`` reads a folder recursively):
    their own folder when they fill it, else a new folder in ``work_dir`` of symbolic links (copies where the
    system allows no links). Returns ``(folder, made)``; ``made`` is the new folder (to remove), or None."""
    files = [Path(f) for f in files]
    if not files:
        raise HealthiVertError("The CT series has no files to export against.")
    parents = {f.resolve().parent for f in files}
    if len(parents) == 1:
        parent = parents.pop()
        entries = [p for p in parent.iterdir() if not p.name.startswith(".")]
        if all(p.is_file() for p in entries) and {p.resolve() for p in entries} == {f.resolve() for f in files}:
            return parent, None
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix="ct-series-", dir=work_dir))
    try:
        for index, source in enumerate(files):
            target = staged / f"{index + 1:05d}.dcm"  # unique names: database files of two folders may share one
            try:
                target.symlink_to(source.resolve())
            except OSError:  # Windows without the privilege to make links
                shutil.copy2(source, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged, staged


def prepare_dicom_export(result_dir: str | Path, ct_node: Any, database: Any = None, work_dir: str | Path | None = None,
                         ct_folder: str | Path | None = None) -> DicomExportPlan:
    """Check that the result can be exported and collect the CT series' files: from the DICOM database
    (``database``), or, without one, from ``ct_folder``. ``work_dir`` holds the folder of links when one is needed
    (default: the result's parent folder)."""
    reason = dicom_export_unavailable(ct_node, result_dir)
    if reason is not None:
        raise HealthiVertError(reason)
    files = series_files_in_folder(ct_node, ct_folder) if ct_folder is not None else series_files(ct_node, database)
    folder, staged = stage_series(files, work_dir if work_dir is not None else Path(result_dir).parent)
    return DicomExportPlan(result_dir=Path(result_dir), ct_folder=folder, instances=len(files), staged=staged)


def run_dicom_export(plan: DicomExportPlan) -> list[Path]:
    """Write the DICOM objects of ``plan`` in this process (``outputs.report.export_dicom``; the Slicer module
    runs ``healthivert export-dicom`` in the background instead); return the files written. The folder of
    links is removed afterwards."""
    try:
        export_dicom(plan.result_dir, plan.ct_folder)
    finally:
        plan.cleanup()
    return dicom_objects(plan.result_dir)


def dicom_objects(result_dir: str | Path) -> list[Path]:
    """The DICOM objects of a result folder (``dicom/`` files listed in its completion marker), in its order."""
    result_dir = Path(result_dir)
    names = [entry.get("file") for entry in read_complete_marker(result_dir).get("files", []) if isinstance(entry, dict)]
    found = []
    for name in names:
        parts = str(name).split("/") if isinstance(name, str) else []
        if len(parts) == 2 and parts[0] == DICOM_DIR and is_dicom_output_name(parts[1]) and (result_dir / name).is_file():
            found.append(result_dir / DICOM_DIR / parts[1])
    return found


def describe_dicom_objects(files: Sequence[Path]) -> str:
    """One line naming what ``files`` hold, e.g. ``4 DICOM objects (SEG of the vertebral bodies, ..., TID 1500 SR)``."""
    kinds = [_KINDS[f.name] for f in files if f.name in _KINDS]
    derived = sum(1 for f in files if f.name not in _KINDS)
    if derived:
        kinds.append(f"pseudo-healthy CT series of {derived} slice{'s' if derived != 1 else ''}")
    return f"{len(files)} DICOM file{'s' if len(files) != 1 else ''} ({', '.join(kinds)})"


def copy_dicom_objects(files: Sequence[Path], destination: str | Path) -> list[Path]:
    """Copy the written objects into ``destination`` (the export without a DICOM database); an existing file of
    the same name is never replaced (``HealthiVertError`` before anything is copied)."""
    destination = Path(destination)
    if not destination.is_dir():
        raise HealthiVertError(f"'{destination}' is not a folder; choose a folder to save the DICOM objects in.")
    targets = [destination / Path(f).name for f in files]
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing:
        raise HealthiVertError(f"'{existing[0]}' exists already; choose an empty folder for the DICOM objects.")
    for source, target in zip(files, targets):
        shutil.copy2(source, target)
    return targets
