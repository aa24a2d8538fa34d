"""The ``healthivert`` command: grade, demo, batch, train-grader, and bad input end to end."""

from __future__ import annotations

import csv
import re
import gzip
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, SAMPLE_CT, SAMPLE_SEG, TPT_CT, TPT_SEG, sha256

from HealthiVertLib.progress import PROGRESS_PREFIX
from HealthiVertLib.app.cli import build_parser, main


def run(*args: str) -> int:
    return main([str(a) for a in args])


def test_every_option_is_documented_in_help():
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for opt in action._actions:
            if opt.dest != "help":
                assert opt.help, f"{action.prog} {opt.dest} has no help"


def test_grade_one_vertebra_writes_every_output(tmp_path, capsys):
    out = tmp_path / "out"
    before = {p: sha256(p) for p in (SAMPLE_SEG, SAMPLE_CT)}
    assert run("grade", "--seg", SAMPLE_SEG, "--ct", SAMPLE_CT, "--vertebra", "L3", "--out", out, "--progress", "none") == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["engine"] == "spine" and report["coordinate_system"] == "LPS"
    (l3,) = report["vertebrae"]
    assert l3["level"] == "L3" and l3["label"] == 29 and l3["verse_label"] == 22
    assert l3["grade"] in (0, 1, 2, 3) and 0 < l3["confidence"] <= 1
    assert set(l3["rhlv"]) == {"anterior", "middle", "posterior", "overall"}
    assert set(l3["heights_mm"]) == {"original", "pseudo_healthy"} and l3["complete"] is True
    assert "total" in report["timing_s"]
    for name in ("report.csv", "height_loss.nii.gz", "pseudo_healthy_body_label.nii.gz", "index.html",
                 "figures/L3_sagittal.png", "figures/L3_axial_loss.png", "figures/L3_ap_profile.png"):
        assert (out / name).is_file(), name
    loss = sitk.ReadImage(str(out / "height_loss.nii.gz"))
    assert loss.GetSize() == sitk.ReadImage(str(SAMPLE_SEG)).GetSize()
    assert before == {p: sha256(p) for p in before}, "inputs must never be modified"
    assert "L3" in capsys.readouterr().out


def test_mask_only_grading_and_progress_lines(tmp_path, capsys):
    assert run("grade", "--seg", SAMPLE_SEG, "--all", "--out", tmp_path, "--no-figures", "--progress", "lines") == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith(PROGRESS_PREFIX)]
    assert lines[-1].startswith(f"{PROGRESS_PREFIX} 100")
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    status = {v["level"]: v["status"] for v in report["vertebrae"]}
    assert status["T12"] == "incomplete" and status["L2"] == "graded"
    assert report["inputs"]["ct"] is None and not (tmp_path / "figures").exists()


def test_demo_runs_on_the_bundled_sample(tmp_path):
    assert run("demo", "--out", tmp_path, "--progress", "none", "--no-figures") == 0
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    graded = [v["level"] for v in report["vertebrae"] if v["status"] == "graded"]
    assert graded == ["L1", "L2", "L3", "L4", "L5"]


def test_console_script_entry_point(tmp_path):
    exe = shutil.which("healthivert")
    cmd = [exe] if exe else [sys.executable, "-m", "HealthiVertLib.app.cli"]
    done = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "grade" in done.stdout and "research use only" in done.stdout


def _corrupt_gzip(tmp_path):
    bad = tmp_path / "bad_seg.nii.gz"
    data = SAMPLE_SEG.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    return bad


def _label_200(tmp_path):
    img = sitk.ReadImage(str(TPT_SEG))
    arr = (sitk.GetArrayFromImage(img) > 0).astype(np.uint16) * 200
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    path = tmp_path / "weird_seg.nii.gz"
    sitk.WriteImage(out, str(path))
    return path


def _nan_ct(tmp_path):
    img = sitk.Cast(sitk.ReadImage(str(TPT_CT)), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(img)
    arr[10, 10, 10:20] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    path = tmp_path / "nan_ct.mha"
    sitk.WriteImage(out, str(path))
    return path


def _fifo(tmp_path):
    path = tmp_path / "pipe_seg.nii.gz"
    os.mkfifo(path)  # no writer: opening it would block
    return path


def _folder(tmp_path):
    path = tmp_path / "ct_folder.nii.gz"
    path.mkdir()
    return path


def _bad_grader(tmp_path):
    path = tmp_path / "grader.json"
    path.write_text('{"format": "healthivert-svm-grader", "version": 1, "features": ["rhlv_ant', encoding="utf-8")
    return path


BAD_INPUTS = {
    "missing seg": (lambda t: ["--seg", t / "nope.nii.gz"], "does not exist|not found|No such"),
    "truncated seg": (lambda t: ["--seg", _corrupt_gzip(t)], "incomplete|truncated|damaged|corrupt|cannot be read"),
    "grids differ": (lambda t: ["--seg", SAMPLE_SEG, "--ct", TPT_CT], "grid|size|spacing"),
    "unknown numbering": (lambda t: ["--seg", _label_200(t)], "numbering"),
    "NaN in CT": (lambda t: ["--seg", TPT_SEG, "--ct", _nan_ct(t)], "NaN|not a number"),
    "corrupt grader": (lambda t: ["--seg", TPT_SEG, "--grader", _bad_grader(t)], "grader"),
    "unknown level": (lambda t: ["--seg", TPT_SEG, "--vertebra", "Q7"], "not a vertebra level|unknown"),
    "seg is a named pipe": (lambda t: ["--seg", _fifo(t)], "not a regular file"),
    "CT is a folder": (lambda t: ["--seg", TPT_SEG, "--ct", _folder(t)], "is a folder"),
    "weights with the spine engine": (lambda t: ["--seg", TPT_SEG, "--weights", t / "w.safetensors"],
                                      "--weights applies to --engine generator only"),
    "device with the context engine": (lambda t: ["--seg", TPT_SEG, "--engine", "context", "--device", "cpu"],
                                       "applies to --engine generator only"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_exit_2(tmp_path, capsys, case):
    make_args, pattern = BAD_INPUTS[case]
    args = make_args(tmp_path)
    if "--vertebra" not in args:
        args += ["--all"]
    out = tmp_path / "out"
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked on an input"))
    signal.alarm(60)
    try:
        assert run("grade", *args, "--out", out, "--progress", "none") == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert err.startswith("healthivert: error:") and "Traceback" not in err, err
    assert re.search(pattern, err, re.IGNORECASE), err
    assert not (out / "report.json").exists()


def test_vertebra_cut_by_the_field_of_view_is_reported_not_graded(tmp_path):
    assert run("grade", "--seg", TPT_SEG, "--vertebra", "L2", "L3", "--out", tmp_path, "--progress", "none",
               "--no-figures", "--engine", "context") == 0
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [(r["level"], r["status"], r["grade"]) for r in rows] == [("L2", "incomplete", ""), ("L3", "no_context", "")]
    assert "field of view" in rows[0]["reason"]
    # the default (spine) engine grades L3 from the level prior alone and says so in the reason column
    assert run("grade", "--seg", TPT_SEG, "--vertebra", "L3", "--out", tmp_path / "spine", "--progress", "none",
               "--no-figures") == 0
    (row,) = csv.DictReader((tmp_path / "spine" / "report.csv").open())
    assert row["status"] == "graded" and "level prior only" in row["reason"]


def _batch_folder(tmp_path):
    src = tmp_path / "cases"
    for name in ("alpha", "beta"):
        (src / name).mkdir(parents=True)
        shutil.copy(SAMPLE_SEG, src / name / f"{name}_seg.nii.gz")
    shutil.copy(SAMPLE_CT, src / "alpha" / "alpha_ct.nii.gz")
    (src / "gamma").mkdir()
    (src / "gamma" / "gamma_seg.nii.gz").write_bytes(gzip.compress(b"not an image"))
    return src


def test_batch_marks_failures_goes_on_and_resumes(tmp_path, capsys):
    src, out = _batch_folder(tmp_path), tmp_path / "out"
    assert run("batch", src, "--out", out, "--workers", "2", "--no-figures", "--progress", "none") == 3
    cases = {r["case"]: r for r in csv.DictReader((out / "cases.csv").open())}
    assert cases["alpha"]["status"] == cases["beta"]["status"] == "done"
    assert cases["gamma"]["status"] == "failed" and cases["gamma"]["error"]
    assert (out / "gamma" / "error.txt").is_file()
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert {r["case"] for r in summary} == {"alpha", "beta"} and len(summary) == 14
    alpha = json.loads((out / "alpha" / "report.json").read_text(encoding="utf-8"))
    assert alpha["inputs"]["ct"].endswith("alpha_ct.nii.gz")
    capsys.readouterr()
    assert run("batch", src, "--out", out, "--no-figures", "--progress", "none") == 3
    cases = {r["case"]: r for r in csv.DictReader((out / "cases.csv").open())}
    assert cases["alpha"]["status"].startswith("skipped") and cases["gamma"]["status"] == "failed"


def test_batch_redoes_a_case_folder_without_the_marker(tmp_path, capsys):
    from HealthiVertLib.outputs.report import COMPLETE_MARKER

    src, out = tmp_path / "cases", tmp_path / "out"
    for name in ("alpha", "beta"):
        (src / name).mkdir(parents=True)
        shutil.copy(SAMPLE_SEG, src / name / f"{name}_seg.nii.gz")
    args = ("batch", src, "--out", out, "--vertebra", "L3", "--no-figures", "--progress", "none")
    assert run(*args) == 0
    assert (out / "alpha" / COMPLETE_MARKER).is_file() and (out / "beta" / COMPLETE_MARKER).is_file()
    # alpha was interrupted while writing: a report.json (of another run) but no marker
    (out / "alpha" / COMPLETE_MARKER).unlink()
    (out / "alpha" / "report.json").write_text('{"stale": true}', encoding="utf-8")
    (out / "alpha" / "index.html").unlink()
    assert run(*args) == 0
    cases = {r["case"]: r for r in csv.DictReader((out / "cases.csv").open())}
    assert cases["alpha"]["status"] == "done" and cases["beta"]["status"].startswith("skipped")
    assert (out / "alpha" / COMPLETE_MARKER).is_file() and (out / "alpha" / "index.html").is_file()
    assert json.loads((out / "alpha" / "report.json").read_text(encoding="utf-8"))["case"] == "alpha"
    assert {r["case"] for r in csv.DictReader((out / "summary.csv").open())} == {"alpha", "beta"}


def test_sigterm_during_grade_exits_143_without_a_marker(tmp_path):
    from HealthiVertLib.outputs.report import COMPLETE_MARKER

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "HealthiVertLib.app.cli", "grade", "--seg", str(SAMPLE_SEG), "--ct", str(SAMPLE_CT),
           "--all", "--out", str(out), "--progress", "lines"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline()
        assert first.startswith(PROGRESS_PREFIX), first
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, err
    assert err == "healthivert: interrupted\n", err
    assert not (out / COMPLETE_MARKER).exists()


def test_sigterm_handler_is_restored_after_a_command(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert run("grade", "--seg", SAMPLE_SEG, "--vertebra", "L3", "--out", tmp_path, "--progress", "none",
               "--no-figures") == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_batch_from_manifest(tmp_path):
    manifest = tmp_path / "cases.csv"
    shutil.copy(TPT_SEG, tmp_path / "tpt_msk.nii.gz")
    manifest.write_text("case,seg,ct\nsample,%s,%s\ntpt,tpt_msk.nii.gz,\n" % (SAMPLE_SEG, SAMPLE_CT), encoding="utf-8")
    out = tmp_path / "out"
    assert run("batch", manifest, "--out", out, "--no-figures", "--progress", "none") == 0
    assert (out / "sample" / "report.json").is_file() and (out / "tpt" / "report.json").is_file()


def test_train_grader_from_feature_table_and_grade_file(tmp_path):
    rng = np.random.default_rng(0)
    grades, rows = {}, []
    for s in range(40):
        for label in range(18, 24):
            grade = int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15]))
            loss = [0.02, 0.22, 0.32, 0.5][grade] + rng.normal(0, 0.02)
            rows.append(f"sub-{s:03d},{label},graded,{loss:.4f},{loss / 2:.4f},{rng.normal(0, 0.02):.4f}")
            grades[f"sub-{s:03d}_{label}"] = grade
    table = tmp_path / "features.csv"
    table.write_text("case,verse_label,status,rhlv_anterior,rhlv_middle,rhlv_posterior\n" + "\n".join(rows) + "\n", encoding="utf-8")
    grade_file = tmp_path / "vertebra_data.json"
    grade_file.write_text(json.dumps({"train": grades}), encoding="utf-8")
    out = tmp_path / "grader.json"
    assert run("train-grader", table, "--grades", grade_file, "--out", out) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["format"] == "healthivert-svm-grader"
    assert run("grade", "--seg", SAMPLE_SEG, "--vertebra", "L3", "--grader", out, "--out", tmp_path / "g",
               "--progress", "none", "--no-figures") == 0


def test_real_grade_file_is_accepted_by_train_grader_format(tmp_path):
    from HealthiVertLib.io.grades import read_grade_file

    grades = read_grade_file(DATA / "healthivert" / "vertebra_data.json")
    assert grades[("sub-verse004", 16)] == 2


def _one_line_error(capsys, *patterns: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("healthivert: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)
    return err


def test_repeated_levels_are_graded_once(tmp_path):
    from HealthiVertLib.app.cli import unique_levels

    assert unique_levels(["L1", "T12", " l1", "L1", "t12"]) == ["L1", "T12"] and unique_levels(None) is None
    assert run("grade", "--seg", SAMPLE_SEG, "--vertebra", "L1", "L1", "l1", "--out", tmp_path, "--progress", "none",
               "--no-figures") == 0
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert [v["level"] for v in report["vertebrae"]] == ["L1"]


# every command that writes, with a given --out (a folder, or a file for train-grader and bench)
OUT_COMMANDS = {
    "grade": (["grade", "--seg", str(TPT_SEG), "--all", "--progress", "none"], "dir"),
    "demo": (["demo", "--progress", "none"], "dir"),
    "batch": (["batch", "nothing_here"], "dir"),
    "simulate": (["simulate", "--seg", str(TPT_SEG), "--fracture", "L2:wedge:0.3", "--progress", "none"], "dir"),
    "simulate --phantom": (["simulate", "--phantom", "1", "--progress", "none"], "dir"),
    "train-grader": (["train-grader", "no_table.csv"], "file"),
    "bench": (["bench", "--quick", "--progress", "none"], "file"),
}


def _out(kind: str, folder):
    return folder / "out.md" if kind == "file" else folder


@pytest.mark.parametrize("command", sorted(OUT_COMMANDS))
def test_output_location_is_checked_before_any_computing(tmp_path, capsys, command):
    args, kind = OUT_COMMANDS[command]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    assert run(*args, "--out", _out(kind, blocker / "sub")) == 2
    _one_line_error(capsys, "--out '.*a_file.sub.*' lies under the file '.*a_file'")
    if kind == "dir":
        assert run(*args, "--out", blocker) == 2
        _one_line_error(capsys, "--out '.*a_file' is a file, not a folder")
    long_name = tmp_path / ("x" * 256)
    assert run(*args, "--out", _out(kind, long_name)) == 2
    _one_line_error(capsys, "256 bytes long; file systems allow at most 255")
    assert blocker.read_text(encoding="utf-8") == "not a folder" and list(tmp_path.iterdir()) == [blocker]


def test_read_only_output_folder(tmp_path, capsys):
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a 0o555 folder is writable")
        for args, kind in OUT_COMMANDS.values():
            assert run(*args, "--out", _out(kind, ro / "new")) == 2
            _one_line_error(capsys, "--out '.*read_only.new.*' is not writable")
    finally:
        ro.chmod(0o755)


def test_outputs_never_overwrite_inputs(tmp_path, capsys, monkeypatch):
    r = tmp_path / "r"
    r.mkdir()
    seg = r / "pseudo_healthy_body_label.nii.gz"  # the name of an output of grade
    shutil.copy(TPT_SEG, seg)
    before = sha256(seg)
    assert run("grade", "--seg", seg, "--all", "--out", r, "--progress", "none") == 2
    _one_line_error(capsys, "holds the input file .*pseudo_healthy_body_label.nii.gz", "Choose another folder")
    assert run("simulate", "--seg", seg, "--fracture", "L2:wedge:0.3", "--out", r, "--progress", "none") == 2
    _one_line_error(capsys, "holds the input file")
    assert sha256(seg) == before and sorted(p.name for p in r.iterdir()) == [seg.name]
    sample = tmp_path / "sample"  # demo reads its inputs from the sample folder: never write into it
    sample.mkdir()
    shutil.copy(SAMPLE_SEG, sample / "seg.nii.gz")
    shutil.copy(SAMPLE_CT, sample / "ct.nii.gz")
    monkeypatch.setattr("HealthiVertLib.app.cli.SAMPLE_DIR", sample)
    assert run("demo", "--out", sample, "--progress", "none") == 2
    _one_line_error(capsys, "holds the input file")
    assert sorted(p.name for p in sample.iterdir()) == ["ct.nii.gz", "seg.nii.gz"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_os_errors_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch, code):
    target = tmp_path / "out" / "report.json"

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr("HealthiVertLib.outputs.report.write_outputs", fail)
    assert run("grade", "--seg", TPT_SEG, "--vertebra", "L2", "--engine", "context", "--out", tmp_path / "out",
               "--progress", "none", "--no-figures") == 2
    _one_line_error(capsys, re.escape(f"'{target}': {os.strerror(code)}"))


NUMERIC_OPTIONS = {
    "simulate --seed -1": (["simulate", "--seg", "s.nii.gz", "--fracture", "L2:wedge:0.3", "--seed", "-1"],
                           "argument --seed: must be 0 or more"),
    "train-grader --C 0": (["train-grader", "t.csv", "--C", "0"], "argument --C: must be a finite number greater than 0"),
    "train-grader --C -1": (["train-grader", "t.csv", "--C", "-1"], "argument --C: must be a finite number"),
    "train-grader --C nan": (["train-grader", "t.csv", "--C", "nan"], "argument --C: must be a finite number"),
    "train-grader --C inf": (["train-grader", "t.csv", "--C", "inf"], "argument --C: must be a finite number"),
    "batch --workers 0": (["batch", "cases", "--workers", "0"], "argument --workers: must be 1 or more"),
    "batch --workers two": (["batch", "cases", "--workers", "two"], "argument --workers: 'two' is not a whole number"),
}


@pytest.mark.parametrize("case", sorted(NUMERIC_OPTIONS))
def test_numeric_options_are_checked_by_the_parser(tmp_path, capsys, case):
    args, pattern = NUMERIC_OPTIONS[case]
    with pytest.raises(SystemExit) as exit_:
        run(*args, "--out", tmp_path / "out")
    assert exit_.value.code == 2
    _one_line_error(capsys, pattern)
    assert not (tmp_path / "out").exists()


def test_unreadable_input_is_permission_denied(tmp_path, capsys):
    seg = tmp_path / "seg.nii.gz"
    shutil.copy(TPT_SEG, seg)
    seg.chmod(0)
    try:
        if os.access(seg, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        assert run("grade", "--seg", seg, "--all", "--out", tmp_path / "out", "--progress", "none") == 2
        err = _one_line_error(capsys, r"cannot be read \(permission denied\)")
        assert "damaged" not in err and "does not exist" not in err
    finally:
        seg.chmod(0o644)
