"""MRML adapter: scene nodes <-> SimpleITK images, and a grading run's results as scene nodes.

The only core package that imports ``slicer`` (MRML) and ``vtk``; it never imports Qt, so it runs
in the Slicer application and, for the tests, with the PyPI package ``slicer-core``. ``volumes``:
geometry, volume nodes, the height-loss overlay; ``segmentations``: vertebra labels to and from
segmentation nodes with SNOMED CT terminology; ``results``: the result nodes of a run (volumes,
segmentations, table, Genant markups, AP plot) and their removal; ``dicom_export``: the module's
Export to DICOM (which result can be exported, the files of a CT loaded from DICOM); ``slice_views``: the slice
views' composited image read from Slicer's own slice pipeline (``vtkMRMLSliceLogic``) without
rendering. Coordinates: MRML in RAS, images and ``report.json`` in LPS millimetres.
"""

from .dicom_export import (
    DICOM_INSTANCES_ATTRIBUTE,
    DicomExportPlan,
    copy_dicom_objects,
    database_is_open,
    describe_dicom_objects,
    dicom_export_unavailable,
    dicom_instance_uids,
    dicom_objects,
    prepare_dicom_export,
    run_dicom_export,
    series_files,
    series_files_in_folder,
    stage_series,
)
from .results import (
    GRADE_COLORS,
    GRADE_NAMES,
    OUTPUT_ATTRIBUTE,
    REFERENCE_ATTRIBUTE,
    TABLE_COLUMNS,
    ResultNodes,
    StandaloneScene,
    fill_table,
    grades_summary,
    output_folders,
    output_nodes,
    remove_outputs,
    show_results,
    table_rows,
)
from .segmentations import (
    TYPE_CONTEXT,
    VERTEBRA_SCT,
    LabelInput,
    level_from_terminology,
    segment_level,
    segmentation_to_labels,
    segments_by_level,
    subregion_labels,
    terminology_string,
    vertebra_labels,
)
from .slice_views import SLICE_VIEWS, SliceImage, add_slice_views, center_views, composited_slice, slice_logics
from .volumes import (
    HEAT_COLOR_NODE_IDS,
    PSEUDO_HEALTHY_CT_FILE,
    ijk_to_ras,
    image_to_volume,
    label_at_point,
    markups_point_ras,
    same_geometry,
    set_geometry_from_ijk_to_ras,
    show_overlay,
    volume_to_image,
)

__all__ = [
    "DICOM_INSTANCES_ATTRIBUTE", "DicomExportPlan", "copy_dicom_objects", "database_is_open", "describe_dicom_objects",
    "dicom_export_unavailable", "dicom_instance_uids", "dicom_objects", "prepare_dicom_export", "run_dicom_export",
    "series_files", "series_files_in_folder", "stage_series",
    "GRADE_COLORS", "GRADE_NAMES", "HEAT_COLOR_NODE_IDS", "OUTPUT_ATTRIBUTE", "PSEUDO_HEALTHY_CT_FILE",
    "REFERENCE_ATTRIBUTE", "SLICE_VIEWS", "TABLE_COLUMNS", "TYPE_CONTEXT", "VERTEBRA_SCT", "LabelInput",
    "ResultNodes", "SliceImage", "StandaloneScene", "add_slice_views", "center_views", "composited_slice",
    "fill_table", "grades_summary", "ijk_to_ras", "image_to_volume", "label_at_point",
    "level_from_terminology", "markups_point_ras", "output_folders", "output_nodes", "remove_outputs",
    "same_geometry", "segment_level", "segmentation_to_labels", "segments_by_level", "set_geometry_from_ijk_to_ras",
    "show_overlay", "show_results", "slice_logics", "subregion_labels", "table_rows", "terminology_string",
    "vertebra_labels", "volume_to_image",
]
