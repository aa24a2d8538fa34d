"""Tests of HealthiVertLib.io.labels: level names, numbering schemes and their detection on real maps."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.io.images import label_centroids, label_voxel_counts
from HealthiVertLib.io.labels import LEVELS, TOTALSEG, VERSE, LabelScheme, body_labels, detect_scheme, is_gradable, level_from_name, level_position, normalize_level, resolve_scheme, scheme_from_dataset_json, verse_label, vertebra_labels_present

from conftest import DATA, TPT_SEG as TPTBOX_VERT, TPT_SUB as TPTBOX_SUBREG
from HealthiVertLib.io.resources import SAMPLE_DIR as SAMPLE
TS_VERTEBRAE_PP = DATA / "totalsegmentator" / "ts_vertebrae_pp_refined.nii.gz"
HV_0007 = DATA / "healthivert" / "0007_msk.nii.gz"


def superior_mm(image: sitk.Image) -> dict[int, float]:
    """Superior (LPS z) coordinate of each label's centroid."""
    return {label: float(c[2]) for label, c in label_centroids(image).items()}


def read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def relabel(image: sitk.Image, mapping: dict[int, int]) -> sitk.Image:
    array = sitk.GetArrayFromImage(image)
    out = array.copy()
    for old, new in mapping.items():
        out[array == old] = new
    result = sitk.GetImageFromArray(out)
    result.CopyInformation(image)
    return result


def levels(scheme: LabelScheme, labels: list[int]) -> list[str]:
    return [scheme.level_of(label) for label in labels]


# --- levels -----------------------------------------------------------------------------------


def test_levels_in_anatomical_order():
    assert LEVELS[:3] == ("C1", "C2", "C3")
    assert LEVELS[-3:] == ("L5", "L6", "S1")
    assert len(LEVELS) == 7 + 13 + 6 + 1
    positions = [level_position(level) for level in LEVELS]
    assert positions == sorted(positions)
    assert level_position("C7") < level_position("T1")
    assert level_position("T12") < level_position("T13") < level_position("L1")
    assert level_position("L5") < level_position("L6") < level_position("S1")
    assert isinstance(level_position("L1"), float)


def test_level_names_are_normalised_and_checked():
    assert normalize_level(" l1 ") == "L1"
    assert level_position("t13") == level_position("T13")
    with pytest.raises(HealthiVertError, match="Unknown vertebra level 'X9'"):
        level_position("X9")
    with pytest.raises(HealthiVertError):
        is_gradable("T14")


@pytest.mark.parametrize("level", ["T1", "T12", "T13", "L1", "L5", "L6"])
def test_gradable_levels(level):
    assert is_gradable(level)


@pytest.mark.parametrize("level", ["C1", "C7", "S1"])
def test_not_gradable_levels(level):
    assert not is_gradable(level)


# --- built-in schemes -------------------------------------------------------------------------


def test_verse_numbering():
    expected = {1: "C1", 7: "C7", 8: "T1", 19: "T12", 20: "L1", 24: "L5", 25: "L6", 28: "T13"}
    for label, level in expected.items():
        assert VERSE.level_of(label) == level
        assert VERSE.label_of(level) == label
    assert VERSE.level_of(26) is None  # sacrum
    assert VERSE.level_of(27) is None  # coccyx
    assert VERSE.level_of(0) is None
    assert VERSE.label_of("S1") is None
    assert len(VERSE.label_to_level) == 26


def test_totalseg_numbering():
    expected = {26: "S1", 27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1"}
    expected.update({32: "T12", 43: "T1", 44: "C7", 50: "C1"})
    for label, level in expected.items():
        assert TOTALSEG.level_of(label) == level
        assert TOTALSEG.label_of(level) == label
    for organ in (1, 5, 24, 25, 51, 52, 117):
        assert TOTALSEG.level_of(organ) is None
    assert TOTALSEG.label_of("L6") is None
    assert TOTALSEG.label_of("T13") is None


def test_verse_label_of_levels():
    assert [verse_label(x) for x in ("C1", "C7", "T1", "T12", "L1", "L6", "T13")] == [1, 7, 8, 19, 20, 25, 28]
    assert verse_label("S1") is None
    assert TOTALSEG.verse_label("L1") == 20
    assert VERSE.verse_label("t13") == 28


def test_scheme_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        VERSE.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        VERSE.label_to_level[99] = "L1"  # type: ignore[index]
    assert {VERSE, TOTALSEG} == {VERSE, TOTALSEG}
    assert LabelScheme("x", {5: "l1"}) == LabelScheme("x", {5: "L1"})


def test_vertebra_labels_present_sorted_cranial_to_caudal():
    assert vertebra_labels_present(TOTALSEG, {0, 1, 26, 27, 31, 32, 90}) == [32, 31, 27, 26]
    assert vertebra_labels_present(VERSE, [24, 28, 19, 26, 20]) == [19, 28, 20, 24]


# --- dataset.json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("L1", "L1"),
        ("vertebrae_L1", "L1"),
        ("vertebra_T12", "T12"),
        ("T13", "T13"),
        ("S1", "S1"),
        ("vertebrae_S1", "S1"),
        ("Vertebra-c7", "C7"),
        ("sacrum", None),
        ("background", None),
        ("rib_left_1", None),
        ("intervertebral_disc_L1_L2", None),
        ("L1_L2", None),
        ("spinal_cord", None),
        ("T14", None),
    ],
)
def test_level_from_name(name, level):
    assert level_from_name(name) == level


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_dataset_json_v2(tmp_path):
    labels = {"background": 0, "vertebrae_L1": 5, "vertebrae_L2": 6, "vertebra_T12": 4, "sacrum": 7}
    labels["liver"] = 1
    path = write_json(tmp_path / "dataset.json", {"labels": labels, "numTraining": 3})
    scheme = scheme_from_dataset_json(path)
    assert dict(scheme.label_to_level) == {4: "T12", 5: "L1", 6: "L2"}
    assert "dataset.json" in scheme.name


def test_dataset_json_v1(tmp_path):
    labels = {"0": "background", "5": "L1", "6": "L2", "9": "T13", "10": "kidney"}
    scheme = scheme_from_dataset_json(write_json(tmp_path / "dataset.json", {"labels": labels}))
    assert dict(scheme.label_to_level) == {5: "L1", 6: "L2", 9: "T13"}


def test_dataset_json_without_vertebrae(tmp_path):
    path = write_json(tmp_path / "dataset.json", {"labels": {"background": 0, "liver": 1, "sacrum": 2}})
    with pytest.raises(HealthiVertError, match="names no vertebra"):
        scheme_from_dataset_json(path)


def test_dataset_json_unreadable(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": {"L1": 5,', encoding="utf-8")
    with pytest.raises(HealthiVertError, match="could not be read as JSON"):
        scheme_from_dataset_json(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HealthiVertError, match="dataset.json"):
        scheme_from_dataset_json(path)


def test_dataset_json_missing_or_folder_or_no_labels(tmp_path):
    with pytest.raises(HealthiVertError, match="does not exist"):
        scheme_from_dataset_json(tmp_path / "missing.json")
    with pytest.raises(HealthiVertError, match="is a folder"):
        scheme_from_dataset_json(tmp_path)
    with pytest.raises(HealthiVertError, match="no \"labels\" section"):
        scheme_from_dataset_json(write_json(tmp_path / "dataset.json", {"channel_names": {"0": "CT"}}))


def test_dataset_json_level_twice(tmp_path):
    path = write_json(tmp_path / "dataset.json", {"labels": {"background": 0, "L1": 5, "vertebrae_L1": 6}})
    with pytest.raises(HealthiVertError, match="level L1 two labels"):
        scheme_from_dataset_json(path)


# --- resolving and detecting on real label maps -----------------------------------------------


def test_detect_tptbox_verse():
    sup = superior_mm(read(TPTBOX_VERT))
    scheme = resolve_scheme(None, sup)
    assert scheme is VERSE
    assert levels(scheme, vertebra_labels_present(scheme, sup)) == ["L2", "L3", "L4"]


def test_detect_sample_totalseg_with_organs():
    sup = superior_mm(read(SAMPLE / "seg.nii.gz"))
    scheme = resolve_scheme("auto", sup)
    assert scheme is TOTALSEG
    present = vertebra_labels_present(scheme, sup)
    assert present == [33, 32, 31, 30, 29, 28, 27, 26]
    assert levels(scheme, [31, 30, 29, 28, 27]) == ["L1", "L2", "L3", "L4", "L5"]


def test_detect_totalseg_vertebrae_pp_as_verse():
    sup = superior_mm(read(TS_VERTEBRAE_PP))
    scheme = resolve_scheme(None, sup)
    assert scheme is VERSE
    assert levels(scheme, vertebra_labels_present(scheme, sup)) == ["T12", "L1", "L2", "L3", "L4", "L5"]


def test_detect_healthivert_case_verse():
    sup = superior_mm(read(HV_0007))
    assert sorted(sup) == list(range(16, 25))
    scheme = resolve_scheme(None, sup)
    assert scheme is VERSE
    assert levels(scheme, vertebra_labels_present(scheme, sup))[0] == "T9"


def test_anatomically_inconsistent_map_is_rejected():
    swapped = relabel(read(TPTBOX_VERT), {21: 23, 23: 21})  # VerSe numbers now increase cranially
    with pytest.raises(HealthiVertError, match="numbering .* is unknown.*--labels verse") as error:
        resolve_scheme(None, superior_mm(swapped), source="swapped.nii.gz")
    assert "'swapped.nii.gz'" in str(error.value)
    assert "in anatomical order" in str(error.value)


def test_totalseg_map_with_reversed_vertebrae_is_rejected():
    sup = superior_mm(read(SAMPLE / "seg.nii.gz"))
    reversed_sup = dict(sup)
    for label in range(26, 34):
        reversed_sup[label] = -sup[label]
    with pytest.raises(HealthiVertError, match="unknown"):
        resolve_scheme(None, reversed_sup)


def test_explicit_scheme_is_used_even_if_detection_would_differ():
    sup = superior_mm(read(TPTBOX_VERT))
    assert resolve_scheme("verse", sup) is VERSE
    assert resolve_scheme("VerTebrae_PP", sup) is VERSE
    sample = superior_mm(read(SAMPLE / "seg.nii.gz"))
    assert resolve_scheme("totalseg", sample) is TOTALSEG
    assert resolve_scheme("total", sample) is TOTALSEG


def test_explicit_scheme_without_matching_label():
    with pytest.raises(HealthiVertError, match="no vertebra of the totalseg numbering.*21, 22, 23"):
        resolve_scheme("totalseg", superior_mm(read(TPTBOX_VERT)), source="vert.nii.gz")


def test_explicit_dataset_json(tmp_path):
    path = write_json(tmp_path / "dataset.json", {"labels": {"background": 0, "L2": 21, "L3": 22, "L4": 23}})
    scheme = resolve_scheme(str(path), superior_mm(read(TPTBOX_VERT)))
    assert dict(scheme.label_to_level) == {21: "L2", 22: "L3", 23: "L4"}
    with pytest.raises(HealthiVertError, match="does not exist"):
        resolve_scheme(str(tmp_path / "other" / "dataset.json"), {21: 0.0})


def test_unknown_scheme_name():
    with pytest.raises(HealthiVertError, match="Unknown label numbering 'nnunet'"):
        resolve_scheme("nnunet", {20: 1.0, 21: 0.0})


@pytest.mark.parametrize("sup", [{1: 10.0}, {200: 5.0}, {22: 3.0}, {}])
def test_too_little_evidence_is_rejected(sup):
    with pytest.raises(HealthiVertError, match="numbering .* is unknown.*--labels totalseg"):
        detect_scheme(sup)


def test_unknown_extra_values_are_ignored():
    assert detect_scheme({20: 30.0, 21: 0.0, 22: -30.0, 200: 12.0}) is VERSE


def test_lower_lumbar_totalseg_without_evidence_above_28():
    rng = np.random.default_rng(0)
    sup = {organ: float(rng.uniform(-200, 200)) for organ in range(1, 26)}  # organs at any height
    sup.update({28: 40.0, 27: 0.0, 26: -40.0})  # L4, L5, S1
    assert detect_scheme(sup) is TOTALSEG


def test_verse_with_sacrum_and_coccyx():
    sup = {20: 80.0, 21: 40.0, 22: 0.0, 23: -40.0, 24: -80.0, 26: -120.0, 27: -160.0}
    assert detect_scheme(sup) is VERSE


# --- subregions -------------------------------------------------------------------------------


def test_body_labels_tptbox_subregions():
    values = set(label_voxel_counts(read(TPTBOX_SUBREG)))
    assert body_labels(values) == {49, 50}


def test_body_labels_totalseg_vertebrae_body():
    values = set(label_voxel_counts(read(SAMPLE / "vertebrae_body.nii.gz")))
    assert values == {1, 2}
    assert body_labels(values) == {1}
    assert body_labels({0, 1}) == {1}


def test_body_labels_spineps_with_sacrum_and_discs():
    assert body_labels({26, 41, 42, 49, 50, 60, 61, 100}) == {49, 50}
    assert body_labels({41, 50}) == {50}


@pytest.mark.parametrize("values", [{21, 22, 23}, set(range(1, 118)), set(), {7}])
def test_body_labels_unknown(values):
    with pytest.raises(HealthiVertError, match="Unknown subregion labels in the subregion file 'sub.nii.gz'"):
        body_labels(values, source="sub.nii.gz")


@pytest.mark.parametrize("values", [{2}, {41, 42, 43}])
def test_body_labels_without_body(values):
    with pytest.raises(HealthiVertError, match="no vertebral body label"):
        body_labels(values)


def test_spine_ranks_count_transitional_levels_only_when_present():
    from HealthiVertLib.io.labels import spine_ranks

    plain = spine_ranks(["T11", "T12", "L1", "L5", "S1"])
    assert plain["L1"] - plain["T12"] == 1 and plain["S1"] - plain["L5"] == 1
    with_t13 = spine_ranks(["T12", "T13", "L1"])
    assert with_t13["L1"] - with_t13["T12"] == 2 and with_t13["T13"] - with_t13["T12"] == 1
    assert plain["L2"] - plain["T12"] == 2  # a level missing from the label map still counts
