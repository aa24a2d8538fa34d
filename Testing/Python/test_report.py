"""Tests of HealthiVertLib.outputs: report.json/csv, volumes, figures, index.html, atomic overwrite."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HealthiVertLib.outputs.figures import FIGURE_KINDS, FIGURE_MAKERS, draw_figure, draw_all
from HealthiVertLib.outputs.report import COMPLETE_MARKER, write_outputs
from HealthiVertLib.outputs.tables import CSV_COLUMNS, summary_table
from HealthiVertLib.measure.heights import GENANT_POINTS, REGIONS
from HealthiVertLib.pipeline.records import INCOMPLETE, CaseResult, VertebraResult, VertebraViews

EVIL_CASE = "case<script>alert('x')</script>&1"


# ----------------------------------------------------------------------------- synthetic case


def _wedge_mask(shape: tuple[int, int], s_top: tuple[float, float], s_bot: float, u0: int, u1: int) -> np.ndarray:
    """Body in (s, u): superior endplate linear from s_top[0] (anterior) to s_top[1], flat inferior."""
    s, u = np.mgrid[: shape[0], : shape[1]]
    top = s_top[0] + (s_top[1] - s_top[0]) * (u - u0) / max(u1 - u0, 1)
    return (u >= u0) & (u <= u1) & (s >= top) & (s <= s_bot)


def make_views() -> VertebraViews:
    """A plausible anterior wedge fracture: 30 mm healthy body, anterior height ~18 mm."""
    shape = (80, 64)
    u0, u1, s_bot = 14, 48, 55
    healthy = _wedge_mask(shape, (25, 25), s_bot, u0, u1)
    original = _wedge_mask(shape, (37, 26), s_bot, u0, u1)
    rng = np.random.default_rng(0)
    ct = rng.normal(40.0, 15.0, shape)
    for lo, hi in ((0, 20), (60, 80)):  # neighbours above and below, discs between
        ct[lo:hi, u0:u1 + 1] = 260.0
    ct[original] = 230.0
    interior = original.copy()
    for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
        interior &= np.roll(original, shift, axis)
    edge = original ^ interior
    ct[edge] = 750.0
    ct += rng.normal(0.0, 25.0, shape)
    ct[:, 52:60] = 20.0  # canal

    pts = {
        "anterior_superior": (37.0, 15.0), "anterior_inferior": (55.0, 15.0),
        "middle_superior": (31.5, 31.0), "middle_inferior": (55.0, 31.0),
        "posterior_superior": (26.0, 47.0), "posterior_inferior": (55.0, 47.0),
    }
    # axial map (u rows anterior top, v columns): ellipse footprint, loss falling off posteriorly
    uu, vv = np.mgrid[:40, :44]
    inside = ((uu - 19.5) / 17.5) ** 2 + ((vv - 21.5) / 20.0) ** 2 <= 1.0
    loss = np.where(inside, 0.42 * (1 - (uu - 2) / 35.0).clip(0, 1) + 0.02 * np.cos(vv / 5.0), np.nan)
    ap = np.arange(35, dtype=float)
    profile = 0.42 * (1 - ap / 35.0)
    return VertebraViews(
        sagittal_ct=ct, sagittal_original=original, sagittal_healthy=healthy, sagittal_points=pts,
        loss_map=loss, ap_positions_mm=ap, ap_profile=profile, third_bounds_mm=(11.67, 23.33),
    )


def make_result(case: str = EVIL_CASE, views: VertebraViews | None = None) -> CaseResult:
    graded = VertebraResult(
        level="L1", label=20, verse_label=20, grade=2, confidence=0.8123456, probabilities=[0.05, 0.1, 0.81, 0.04],
        grade_rule=2,
        rhlv={"anterior": 0.3912345, "middle": 0.2166667, "posterior": 0.0333333, "overall": 0.2137448},
        heights_mm={
            "original": {"anterior": 18.0, "middle": 23.5, "posterior": 29.0, "overall": 23.5},
            "pseudo_healthy": {"anterior": 29.57, "middle": 30.0, "posterior": 30.0, "overall": 29.86},
        },
        ratios={"min_max": 0.6206897, "to_neighbours": 0.7833},
        genant_points_lps={p: [1.0 * i, 2.0, 3.5] for i, p in enumerate(GENANT_POINTS)},
        context=[{"level": "T12", "weight": 0.5}, {"level": "L2", "weight": 0.5}],
        views=views if views is not None else make_views(),
    )
    cut = VertebraResult(level="L5", label=24, verse_label=24, status=INCOMPLETE, complete=False,
                         reason="cut by the field of view",
                         rhlv={"anterior": 0.05, "middle": None, "posterior": float("nan"), "overall": None})
    img = sitk.Image(8, 9, 10, sitk.sitkFloat32)
    img.SetSpacing((0.8, 0.8, 1.5))
    arr = np.zeros((10, 9, 8), np.float32)
    arr[3:7, 2:6, 2:6] = 0.25
    loss = sitk.GetImageFromArray(arr)
    loss.CopyInformation(img)
    lab = sitk.GetImageFromArray((arr > 0).astype(np.uint8) * 20)
    lab.CopyInformation(img)
    return CaseResult(
        case=case, engine="test-engine", grader="genant-rule", label_scheme="verse",
        vertebrae=[graded, cut], inputs={"ct": "ct.nii.gz", "seg": "seg.nii.gz", "body": None},
        timing_s={"straighten": 1.25, "predict": 3.5},
        loss_volume=loss, healthy_label_volume=lab, original_body_volume=lab,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, Path], CaseResult]:
    out = tmp_path_factory.mktemp("report") / "out"
    result = make_result()
    files = write_outputs(result, out)
    return out, files, result


# ----------------------------------------------------------------------------- tests

EXPECTED = [
    "report.json", "report.csv", "index.html", "height_loss.nii.gz", "pseudo_healthy_body_label.nii.gz",
    "original_body_label.nii.gz", "figures/L1_sagittal.png", "figures/L1_axial_loss.png", "figures/L1_ap_profile.png",
    COMPLETE_MARKER,
]


def test_all_files_exist(written):
    out, files, _ = written
    assert sorted(files) == sorted(EXPECTED)
    for name in EXPECTED:
        assert files[name] == out / name
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert not list((out / "figures").glob("L5_*")), "no figures for the vertebra without views"


def test_json_round_trip(written):
    out, _, result = written
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["case"] == EVIL_CASE
    l1, l5 = data["vertebrae"]
    assert l1["rhlv"]["anterior"] == pytest.approx(0.3912345)
    assert l1["heights_mm"]["pseudo_healthy"]["overall"] == pytest.approx(29.86)
    assert l1["grade"] == 2 and l1["probabilities"][2] == pytest.approx(0.81)
    assert l5["status"] == "incomplete" and l5["rhlv"]["posterior"] is None


def test_csv(written):
    out, _, _ = written
    with open(out / "report.csv", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    assert tuple(header) == CSV_COLUMNS
    assert len(rows) == 2
    l1, l5 = rows
    assert l1["case"] == EVIL_CASE and l1["level"] == "L1" and l1["label"] == "20"
    assert l1["grade"] == "2" and l1["grade_rule"] == "2" and l1["complete"] == "true"
    assert l1["confidence"] == "0.8123"
    assert l1["rhlv_anterior"] == "0.3912" and l1["rhlv_overall"] == "0.2137"
    assert l1["h_original_anterior_mm"] == "18.0000" and l1["h_healthy_anterior_mm"] == "29.5700"
    assert l1["ratio_min_max"] == "0.6207" and l1["ratio_to_neighbours"] == "0.7833"
    assert l1["reason"] == ""
    assert l5["status"] == "incomplete" and l5["complete"] == "false"
    assert l5["grade"] == "" and l5["confidence"] == "" and l5["rhlv_middle"] == "" and l5["rhlv_posterior"] == ""
    assert l5["rhlv_anterior"] == "0.0500" and l5["h_original_middle_mm"] == ""
    assert l5["reason"] == "cut by the field of view"


def test_volumes(written):
    out, _, result = written
    loss = sitk.ReadImage(str(out / "height_loss.nii.gz"))
    assert loss.GetPixelID() == sitk.sitkFloat32
    assert loss.GetSpacing() == pytest.approx((0.8, 0.8, 1.5))
    np.testing.assert_allclose(sitk.GetArrayFromImage(loss), sitk.GetArrayFromImage(result.loss_volume))
    for name in ("pseudo_healthy_body_label.nii.gz", "original_body_label.nii.gz"):
        lab = sitk.ReadImage(str(out / name))
        assert lab.GetPixelID() == sitk.sitkUInt16
        assert set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 20}


def test_pngs_are_real_images(written):
    import matplotlib.image as mpimg

    out, _, _ = written
    for kind in FIGURE_KINDS:
        img = mpimg.imread(out / "figures" / f"L1_{kind}.png")
        h, w = img.shape[:2]
        assert 300 <= h <= 1400 and 300 <= w <= 1400, (kind, img.shape)
        assert float(np.ptp(img[..., :3])) > 0.5, f"{kind} looks uniform"


def test_index_html(written):
    out, _, _ = written
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Research use only — not for diagnosis." in page
    for kind in FIGURE_KINDS:
        assert f'src="figures/L1_{kind}.png"' in page
    for name in ("report.json", "report.csv", "height_loss.nii.gz", "pseudo_healthy_body_label.nii.gz",
                 "original_body_label.nii.gz"):
        assert f'href="{name}"' in page
    assert "<script" not in page.lower()
    assert "HealthiVert report — case&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;1" in page
    assert "test-engine" in page and "genant-rule" in page
    assert "cut by the field of view" in page
    assert "39.1 %" in page and "straighten" in page
    assert "http://" not in page and "https://" not in page


def test_overwrite_is_atomic_and_clean(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}', encoding="utf-8")
    (out / "report.csv").write_text("old\n", encoding="utf-8")
    write_outputs(make_result(case="case-2"), out)
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["case"] == "case-2"
    assert (out / "report.csv").read_text(encoding="utf-8").startswith("case,level,")
    listing = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert listing == sorted(["figures", *EXPECTED]), "temporary files left behind"


def test_summary_table():
    text = summary_table(make_result(case="c"))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["Level", "Status"]
    assert "L1" in lines[2] and "graded" in lines[2] and "39.1 %" in lines[2] and "0.81" in lines[2]
    assert "L5" in lines[3] and "incomplete" in lines[3] and "—" in lines[3]
    assert len(REGIONS) == 4


def test_degenerate_views_still_render(tmp_path):
    """Empty masks, no points, all-NaN maps and missing bounds must not break the report."""
    views = VertebraViews(
        sagittal_ct=None, sagittal_original=np.zeros((20, 20), bool), sagittal_healthy=np.zeros((20, 20), bool),
        sagittal_points={}, loss_map=np.full((10, 10), np.nan), ap_positions_mm=np.arange(5.0),
        ap_profile=np.full(5, np.nan), third_bounds_mm=(float("nan"), float("nan")),
    )
    result = make_result(case="degenerate", views=views)
    result.vertebrae[0].rhlv = None
    result.vertebrae[0].heights_mm = None
    files = write_outputs(result, tmp_path)
    assert all(files[f"figures/L1_{k}.png"].stat().st_size > 1000 for k in FIGURE_KINDS)


def test_threads_mask_only_and_no_pyplot(tmp_path):
    """Figures render without pyplot, so concurrent reports work; mask-only views; missing volumes."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    mask_only = make_views()
    mask_only.sagittal_ct = None
    results = [make_result(case="ct"), make_result(case="mask-only", views=mask_only)]
    results[1].loss_volume = results[1].healthy_label_volume = results[1].original_body_volume = None
    with ThreadPoolExecutor(2) as pool:
        files = list(pool.map(lambda r: write_outputs(r, tmp_path / r.case), results))
    for r in results:
        assert (tmp_path / r.case / "figures" / "L1_sagittal.png").is_file()
    assert "height_loss.nii.gz" in files[0]
    assert "height_loss.nii.gz" not in files[1] and not (tmp_path / "mask-only" / "height_loss.nii.gz").exists()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_report as t; from HealthiVertLib.outputs.figures import ap_profile_figure;"
        "ap_profile_figure(t.make_result().vertebrae[0]);"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], check=True, timeout=60)


def test_figures_drawn_in_worker_processes_equal_one_by_one(monkeypatch):
    """Several vertebrae: the figures are drawn in forked workers where possible, with the same bytes."""
    import multiprocessing

    vertebrae = [make_result().vertebrae[0] for _ in range(3)]
    jobs = [(kind, v) for v in vertebrae for kind in FIGURE_MAKERS]
    one_by_one = [draw_figure(job) for job in jobs]
    assert draw_all(jobs) == one_by_one
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # no fork: sequential
    assert draw_all(jobs) == one_by_one


# ----------------------------------------------------------------------------- completion marker, re-runs


def _record_writes(monkeypatch) -> list[str]:
    """Names of the files the atomic writer finishes, in order."""
    import contextlib

    import HealthiVertLib.io.files as files_mod

    real, order = files_mod.atomic_output, []

    @contextlib.contextmanager
    def recording(path):
        with real(path) as tmp:
            yield tmp
        order.append(Path(path).name)

    monkeypatch.setattr(files_mod, "atomic_output", recording)
    return order


def test_marker_is_written_last_and_lists_every_file(tmp_path, monkeypatch):
    from HealthiVertLib import __version__

    order = _record_writes(monkeypatch)
    files = write_outputs(make_result(case="marker"), tmp_path)
    assert order[-1] == COMPLETE_MARKER and order.count(COMPLETE_MARKER) == 1
    assert len(order) == len(files) == len(EXPECTED)
    marker = json.loads((tmp_path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert marker["healthivert_version"] == __version__ and marker["finished_utc"].endswith("+00:00")
    listed = {entry["file"]: entry["bytes"] for entry in marker["files"]}
    assert sorted(listed) == sorted(n for n in EXPECTED if n != COMPLETE_MARKER)
    for name, size in listed.items():
        assert (tmp_path / name).stat().st_size == size > 0, name


def test_a_write_failing_midway_leaves_no_marker(tmp_path, monkeypatch):
    import HealthiVertLib.outputs.volumes as volumes

    write_outputs(make_result(case="first"), tmp_path)
    assert (tmp_path / COMPLETE_MARKER).is_file()
    real = volumes._write_volume

    def full_disk(img, path, pixel):
        if path.name == "pseudo_healthy_body_label.nii.gz":
            raise OSError(28, "No space left on device", str(path))
        real(img, path, pixel)

    monkeypatch.setattr(volumes, "_write_volume", full_disk)
    with pytest.raises(OSError):
        write_outputs(make_result(case="second"), tmp_path)
    assert not (tmp_path / COMPLETE_MARKER).exists(), "an unfinished folder must not look finished"
    assert not (tmp_path / "index.html").exists() and not (tmp_path / "figures").exists()
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["case"] == "second"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"


def _two_vertebrae_with_figures() -> CaseResult:
    result = make_result(case="two")
    l2 = make_result().vertebrae[0]
    l2.level, l2.label, l2.verse_label = "L2", 21, 21
    result.vertebrae.insert(1, l2)
    result.counterfactual_volumes = {"counterfactual_grade2_label.nii.gz": result.healthy_label_volume}
    return result


def test_rerun_removes_stale_outputs_and_keeps_the_users_files(tmp_path):
    first = write_outputs(_two_vertebrae_with_figures(), tmp_path)
    assert "figures/L2_sagittal.png" in first and "counterfactual_grade2_label.nii.gz" in first
    (tmp_path / "notes.txt").write_text("my notes", encoding="utf-8")
    (tmp_path / "figures" / "my_plot.png").write_bytes(b"mine")
    (tmp_path / "report.json.bak").write_text("mine", encoding="utf-8")
    (tmp_path / ".index-ab12cd_9.html").write_text("left by a killed run", encoding="utf-8")

    write_outputs(make_result(case="one"), tmp_path)  # L1 only, no counterfactuals
    listing = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    user = ["figures/my_plot.png", "notes.txt", "report.json.bak"]
    assert listing == sorted(EXPECTED + user)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "my notes"
    marker = json.loads((tmp_path / COMPLETE_MARKER).read_text(encoding="utf-8"))
    assert not {e["file"] for e in marker["files"]} & set(user)

    (tmp_path / "figures" / "my_plot.png").unlink()
    write_outputs(make_result(case="no figures"), tmp_path, figures=False)
    assert not (tmp_path / "figures").exists(), "an emptied figures/ folder is removed"
    assert (tmp_path / "notes.txt").is_file() and (tmp_path / "report.json.bak").is_file()


def test_rerun_removes_files_listed_in_the_old_marker_only_inside_the_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "extra_from_an_older_version.dat").write_text("old output", encoding="utf-8")
    (out / COMPLETE_MARKER).write_text(json.dumps({"files": [
        {"file": "extra_from_an_older_version.dat", "bytes": 10}, {"file": "../outside.txt", "bytes": 4},
        {"file": str(outside), "bytes": 4}, {"file": "figures/../../outside.txt", "bytes": 4}]}), encoding="utf-8")
    write_outputs(make_result(case="c"), out, figures=False)
    assert not (out / "extra_from_an_older_version.dat").exists()
    assert outside.read_text(encoding="utf-8") == "keep"
