"""DICOM outputs of one graded case (``grade --dicom``), written with highdicom into ``DIR/dicom/``.

Every object references the source CT series (the :class:`~HealthiVertLib.io.dicom.DicomSeries`
read by ``io.dicom``) and lies in its study and frame of reference:

- ``seg_bodies.dcm`` and ``seg_pseudo_healthy.dcm``: one DICOM SEG series, two instances -- the
  measured vertebral bodies and the pseudo-healthy (predicted pre-fracture) bodies, one segment
  per vertebra, SNOMED CT coded (``io.terminology``), algorithm ``HealthiVert <version>`` with the
  engine and grader as parameters;
- ``sr.dcm``: a Comprehensive 3D SR, TID 1500 Measurement Report, one TID 1411 group per vertebra
  (tracking identifier = the vertebra, linked to its segment in ``seg_bodies.dcm``): heights in mm
  (measured and pseudo-healthy, at the radiologist's three points and as third means), RHLV per third
  and overall (%), abnormality score, confidence; coded Genant grade (grader and rule) and status;
  the status reason and the research-use notice as text;
- ``height_loss_pm.dcm``: a Parametric Map of the height-loss volume (%, float) on the CT grid;
- ``pseudo_healthy_ct_NNNN.dcm``: with an engine that synthesises CT (``generator``), the
  pseudo-healthy CT as a derived CT series, one file per source slice.

Concepts that no standard terminology codes (the three vertebral heights, RHLV, the Genant grade)
use the private coding scheme ``99HLTHVRT``, declared in the SR. :func:`write_dicom` returns the
files written (relative name -> path); :func:`is_dicom_output_name` recognises them;
:func:`result_from_folder` reads a finished result folder back (for ``report.export_dicom``).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import NOTICE, __version__
from ..errors import HealthiVertError
from ..io.dicom import DicomSeries
from ..io.files import atomic_output
from ..io.terminology import SCT_CATEGORY, vertebra_code
from ..pipeline.records import CaseResult, VertebraResult

# volumes of a result folder (outputs.volumes' file names) -> CaseResult attribute, for result_from_folder
RESULT_VOLUMES = {"height_loss.nii.gz": "loss_volume", "original_body_label.nii.gz": "original_body_volume",
                  "pseudo_healthy_body_label.nii.gz": "healthy_label_volume",
                  "pseudo_healthy_ct.nii.gz": "healthy_ct_volume"}

DICOM_DIR = "dicom"
SEG_BODIES = "seg_bodies.dcm"
SEG_HEALTHY = "seg_pseudo_healthy.dcm"
SR_FILE = "sr.dcm"
PM_FILE = "height_loss_pm.dcm"
HEALTHY_CT = "pseudo_healthy_ct_{index:04d}.dcm"
_NAMES = re.compile(r"seg_bodies\.dcm|seg_pseudo_healthy\.dcm|sr\.dcm|height_loss_pm\.dcm|pseudo_healthy_ct_\d{4,}\.dcm")
# series numbers of the objects written (the source CT keeps its own)
SERIES_NUMBERS = {"seg": 9101, "pm": 9102, "sr": 9103, "ct": 9104}
MANUFACTURER = "HealthiVert contributors"
MODEL = "HealthiVert"
SCHEME = "99HLTHVRT"  # private coding scheme (DICOM PS3.16: designators starting with 99 are local)
_THIRDS = ("anterior", "middle", "posterior")


def is_dicom_output_name(name: str) -> bool:
    """True for a file name that :func:`write_dicom` writes into ``dicom/``."""
    return _NAMES.fullmatch(name) is not None


def _code(value: str, meaning: str, scheme: str = SCHEME):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _vertebra_concepts(level: str):
    """(type code, region code or None) of a level as highdicom concepts."""
    kind, region = vertebra_code(level)
    return _code(kind[1], kind[2], kind[0]), (_code(region[1], region[2], region[0]) if region else None)


def _lo(text: str) -> str:
    """``text`` cut to the 64 characters of a DICOM Long String (LO)."""
    return text if len(text) <= 64 else text[:61] + "..."


def _device() -> dict[str, Any]:
    return {"manufacturer": MANUFACTURER, "manufacturer_model_name": MODEL, "software_versions": __version__,
            "device_serial_number": "none"}


def _write_dataset(dataset: Any, path: Path) -> None:
    dataset.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: reasons and names keep every character
    with atomic_output(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)


def _array_on_ct(image: Any, n_slices: int) -> np.ndarray:
    """A volume on the CT grid as an array (slice, row, column), the order of the source files."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    if array.shape[0] != n_slices:
        raise ValueError(f"volume has {array.shape[0]} slices, the CT series {n_slices}")
    return array


# ----------------------------------------------------------------------------- SEG


def _segmentation(result: CaseResult, ct: list, volume: Any, which: str, uids: dict[str, str], instance: int):
    """One SEG instance of ``volume`` (bodies with their label values) and {label value: segment number}."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = _array_on_ct(volume, len(ct))
    present = {int(v) for v in np.unique(labels)} - {0}
    vertebrae = [v for v in result.vertebrae if v.label in present]
    if not vertebrae:  # nothing measured: a SEG needs at least one segment
        return None, {}
    numbers = {v.label: k for k, v in enumerate(vertebrae, start=1)}
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    for label, number in numbers.items():
        lookup[label] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="HealthiVert", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={key: str(value).replace(",", ";").replace("=", ":")  # stored as "key=value,key=value"
                    for key, value in (("engine", result.engine), ("grader", result.grader), ("bodies", which))},
    )
    descriptions = []
    for vertebra in vertebrae:
        kind, region = _vertebra_concepts(vertebra.level)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=numbers[vertebra.label],
            segment_label=_lo(f"{vertebra.level} {which} vertebral body"),
            segmented_property_category=_code(SCT_CATEGORY[1], SCT_CATEGORY[2], SCT_CATEGORY[0]),
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=_lo(f"{vertebra.level} {which} vertebral body"),
            anatomic_regions=[region] if region is not None else None,
        ))
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=lookup[labels], segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=uids["seg"], series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=hd.UID(), instance_number=instance, **_device(),
        series_description="HealthiVert vertebral bodies (research use only)",
        content_label="BODIES" if which == "measured" else "PSEUDOHEALTHY",
        content_description=_lo(f"{which.capitalize()} vertebral bodies, {result.engine} engine"),
        content_creator_name="HealthiVert^",
    )
    return seg, numbers


# ----------------------------------------------------------------------------- parametric map


def _parametric_map(loss_volume: Any, ct: list, uids: dict[str, str]):
    """The height-loss volume (fraction; stored in percent, float32) as a Parametric Map on the CT grid."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    loss = 100.0 * _array_on_ct(loss_volume, len(ct)).astype(np.float32)
    loss = np.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(min(loss.min(), 0.0)), float(max(loss.max(), 1.0))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="HEIGHTLOSS", lut_explanation="Vertebral body height loss per column (%)",
        unit=codes.UCUM.Percent, value_range=(low, high), slope=1, intercept=0,
        quantity_definition=_code("HV-LOSS", "Vertebral body height loss"),
    )
    pm = hd.pm.ParametricMap(
        source_images=ct, pixel_array=loss, series_instance_uid=uids["pm"], series_number=SERIES_NUMBERS["pm"],
        sop_instance_uid=hd.UID(), instance_number=1, **_device(), contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=25.0, window_width=50.0)],
        series_description="HealthiVert height loss % (research use only)",
        content_label="HEIGHTLOSS", content_description="Height loss of each vertebral-body column, percent",
        content_creator_name="HealthiVert^",
    )
    pm.BodyPartExamined = "SPINE"  # an unpaired body part: General Series needs no Laterality (dciodvfy)
    return pm


# ----------------------------------------------------------------------------- structured report

_STATUS_MEANING = {
    "graded": "Graded", "incomplete": "Not graded: vertebral body cut by the field of view",
    "no_context": "Not graded: no usable neighbour", "unsupported": "Not graded: level outside T1-L6",
    "failed": "Not graded: the engine failed on this input",
    "implausible_mask": "Not graded: implausible vertebra mask",
}  # fmt: skip
_GENANT_MEANING = {0: "Genant grade 0 (normal)", 1: "Genant grade 1 (mild)", 2: "Genant grade 2 (moderate)",
                   3: "Genant grade 3 (severe)"}


def _measurements(vertebra: VertebraResult, algorithm) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    items = []

    def add(code: str, meaning: str, value: float | None, unit) -> None:
        if value is not None and np.isfinite(value):
            items.append(hd.sr.Measurement(name=_code(code, meaning), value=float(value), unit=unit,
                                           algorithm_id=algorithm))

    for which, tag in (("original", "measured"), ("pseudo_healthy", "pseudo-healthy")):
        points = (vertebra.point_heights_mm or {}).get(which, {})
        thirds = (vertebra.heights_mm or {}).get(which, {})
        for third in _THIRDS:
            add(f"HV-H{third[0].upper()}{'M' if which == 'original' else 'P'}",
                f"{third.capitalize()} vertebral height, {tag}", points.get(third), codes.UCUM.Millimeter)
            add(f"HV-T{third[0].upper()}{'M' if which == 'original' else 'P'}",
                f"{third.capitalize()} third mean height, {tag}", thirds.get(third), codes.UCUM.Millimeter)
    for region, value in (vertebra.rhlv or {}).items():
        add(f"HV-RHLV-{region[:3].upper()}", f"Relative height loss, {region}",
            None if value is None else 100.0 * value, codes.UCUM.Percent)
    for point, value in (vertebra.point_loss or {}).items():
        add(f"HV-PL-{point[:3].upper()}", f"Height loss at the {point} height",
            None if value is None else 100.0 * value, codes.UCUM.Percent)
    add("HV-ABN", "Vertebral abnormality score", vertebra.abnormality_score, codes.UCUM.Percent)
    add("HV-CONF", "Confidence of the Genant grade", None if vertebra.confidence is None else 100.0 * vertebra.confidence,
        codes.UCUM.Percent)
    return items


def _evaluations(vertebra: VertebraResult) -> list:
    import highdicom as hd

    items = [hd.sr.QualitativeEvaluation(
        name=_code("HV-STATUS", "HealthiVert status"),
        value=_code(f"HV-ST-{vertebra.status.upper()}"[:16], _STATUS_MEANING.get(vertebra.status, vertebra.status)),
    )]
    for code, meaning, grade in (("HV-GENANT", "Genant grade", vertebra.grade),
                                 ("HV-GENANT-RULE", "Genant grade by the threshold rule", vertebra.grade_rule)):
        if grade is not None:
            items.append(hd.sr.QualitativeEvaluation(name=_code(code, meaning),
                                                     value=_code(f"HV-G{int(grade)}", _GENANT_MEANING[int(grade)])))
    return items


def _texts(vertebra: VertebraResult) -> list:
    """TEXT qualitative evaluations (TID 1411 row "Qualitative Evaluations"): status reason, warnings, notice."""
    import highdicom as hd

    concept = _code("C0034375", "Qualitative Evaluations", "UMLS")
    texts = [t for t in (vertebra.reason, *vertebra.warnings) if t] + [NOTICE]
    return [hd.sr.TextContentItem(name=concept, value=t[:1024], relationship_type="CONTAINS") for t in texts]


def _group(vertebra: VertebraResult, seg: Any, segment: int | None, source: DicomSeries, algorithm) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    kind, region = _vertebra_concepts(vertebra.level)
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{vertebra.level} vertebra"),
        "finding_type": codes.SCT.Vertebra,
        "finding_sites": [hd.sr.FindingSite(anatomic_location=region or kind)] if region else [
            hd.sr.FindingSite(anatomic_location=kind)],
        "algorithm_id": algorithm,
        "measurements": _measurements(vertebra, algorithm),
        "qualitative_evaluations": _evaluations(vertebra),
    }
    if segment is not None:
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=segment,
                source_series=hd.sr.SourceSeriesForSegmentation(source.series_instance_uid)),
            **common)
    else:  # no body segment (not measured): the group without an image region
        group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    group[0].ContentSequence.extend(_texts(vertebra))
    return group


def _structured_report(result: CaseResult, ct: list, seg: Any, segments: dict[int, int], source: DicomSeries,
                       uids: dict[str, str]):
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(
        name="HealthiVert", version=__version__, parameters=[_lo(f"engine={result.engine}"), _lo(f"grader={result.grader}")])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="HealthiVert", manufacturer_name=MANUFACTURER, model_name=f"{MODEL} {__version__}"),
    )
    groups = [_group(v, seg, segments.get(v.label), source, algorithm) for v in result.vertebrae]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*ct, *([seg] if seg is not None else [])], content=report[0], series_instance_uid=uids["sr"], series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        is_final=False, is_verified=False, series_description="HealthiVert measurements (research use only)",
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "HealthiVert local codes"
    scheme.CodingSchemeResponsibleOrganization = "HealthiVert contributors"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


# ----------------------------------------------------------------------------- derived CT


# Type 2 (may be empty) attributes of the CT Image IOD, and an unpaired body part so that General Series needs no
# Laterality: set on the derived CT only when its source slice lacks them.
_DERIVED_CT_DEFAULTS = {"KVP": None, "AcquisitionNumber": None, "PositionReferenceIndicator": None,
                        "PatientPosition": None, "Manufacturer": MANUFACTURER, "BodyPartExamined": "SPINE"}


def _derived_ct(result: CaseResult, healthy_ct: Any, source: DicomSeries, uids: dict[str, str], out: Path
                ) -> dict[str, Path]:
    """The pseudo-healthy CT (HU) as a derived CT series: each source slice with its synthesised voxels."""
    import highdicom as hd
    import pydicom
    from pydicom.dataset import Dataset

    values = _array_on_ct(healthy_ct, len(source.files)).astype(np.float64)
    written = {}
    now = datetime.now(timezone.utc)
    for k, file in enumerate(source.files):
        ds = pydicom.dcmread(file)
        original = ds.pixel_array
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        info = np.iinfo(original.dtype)
        stored = np.clip(np.round((values[k] - intercept) / slope), info.min, info.max).astype(original.dtype)
        reference = Dataset()
        reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.SourceImageSequence = [reference]
        ds.SOPInstanceUID = hd.UID()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID, ds.SeriesNumber = uids["ct"], SERIES_NUMBERS["ct"]
        ds.SeriesDescription = "HealthiVert pseudo-healthy CT (synthetic, research use only)"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = (f"HealthiVert {__version__} {result.engine} engine: graded vertebrae replaced by "
                                    "their synthesized pre-fracture version")[:1024]
        ds.SeriesDate, ds.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.BurnedInAnnotation = "NO"
        for keyword, value in _DERIVED_CT_DEFAULTS.items():  # what the CT IOD requires and a source may lack
            if keyword not in ds:
                setattr(ds, keyword, value)
        ds.PixelData = stored.tobytes()
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        name = HEALTHY_CT.format(index=k + 1)
        _write_dataset(ds, out / name)
        written[f"{DICOM_DIR}/{name}"] = out / name
    return written


# ----------------------------------------------------------------------------- entry points


def result_from_folder(result_dir: str | Path) -> CaseResult:
    """The :class:`CaseResult` of a result folder written by ``write_outputs``: the records of its report.json
    and its volumes (what :func:`write_dicom` needs; no figure views)."""
    import dataclasses

    from ..io.images import read_image
    from ..io.jsonable import read_json

    result_dir = Path(result_dir)
    report = read_json(result_dir / "report.json", "HealthiVert report")
    fields = {f.name for f in dataclasses.fields(VertebraResult)} - {"views"}
    try:
        vertebrae = [VertebraResult(**{k: v for k, v in entry.items() if k in fields}) for entry in report["vertebrae"]]
        result = CaseResult(case=report["case"], engine=report["engine"], grader=report["grader"],
                            label_scheme=report["label_scheme"], vertebrae=vertebrae, inputs=report["inputs"],
                            warnings=report.get("warnings", []))
    except (KeyError, TypeError) as error:
        raise HealthiVertError(f"'{result_dir / 'report.json'}' is not a HealthiVert report ({error!r}).") from None
    for name, attribute in RESULT_VOLUMES.items():
        if (result_dir / name).is_file():
            setattr(result, attribute, read_image(result_dir / name, f"result volume {name}"))
    return result



def write_dicom(result: CaseResult, source: DicomSeries, out_dir: str | Path) -> dict[str, Path]:
    """Write the DICOM objects of ``result`` into ``out_dir/dicom/``, referencing the CT series ``source``;
    return relative name (``dicom/sr.dcm``) -> path. The result must lie on that CT's grid."""
    import highdicom as hd
    import pydicom

    out = Path(out_dir) / DICOM_DIR
    out.mkdir(parents=True, exist_ok=True)
    ct = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.files]
    uids = {key: hd.UID() for key in SERIES_NUMBERS}
    # each volume read once: a result may build its full-grid images on every read
    bodies, healthy, loss, healthy_ct = (getattr(result, name, None) for name in (
        "original_body_volume", "healthy_label_volume", "loss_volume", "healthy_ct_volume"))
    written: dict[str, Path] = {}
    seg, segments = _segmentation(result, ct, bodies, "measured", uids, 1) if bodies is not None else (None, {})
    if seg is not None:
        _write_dataset(seg, out / SEG_BODIES)
        written[f"{DICOM_DIR}/{SEG_BODIES}"] = out / SEG_BODIES
    healthy_seg = _segmentation(result, ct, healthy, "pseudo-healthy", uids, 2)[0] if healthy is not None else None
    if healthy_seg is not None:
        _write_dataset(healthy_seg, out / SEG_HEALTHY)
        written[f"{DICOM_DIR}/{SEG_HEALTHY}"] = out / SEG_HEALTHY
    if loss is not None:
        _write_dataset(_parametric_map(loss, ct, uids), out / PM_FILE)
        written[f"{DICOM_DIR}/{PM_FILE}"] = out / PM_FILE
    _write_dataset(_structured_report(result, ct, seg, segments, source, uids), out / SR_FILE)
    written[f"{DICOM_DIR}/{SR_FILE}"] = out / SR_FILE
    if healthy_ct is not None:
        written.update(_derived_ct(result, healthy_ct, source, uids, out))
    return written
