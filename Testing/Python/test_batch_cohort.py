"""``healthivert batch`` at cohort scale: safe folders, exact resume, signals and orphans, dask, cohort files."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SAMPLE_SEG, TPT_SEG

from HealthiVertLib.app.batch import batch_workers
from HealthiVertLib.app.cli import main
from HealthiVertLib.errors import HealthiVertError
from HealthiVertLib.io.discover import case_folders
from HealthiVertLib.outputs.report import COMPLETE_MARKER, read_complete_marker

QUICK = ("--no-figures", "--progress", "none")


def run(*args) -> int:
    return main([str(a) for a in args])


def _manifest(tmp_path: Path, names: list[str], seg: Path = SAMPLE_SEG) -> Path:
    """A manifest of ``names``, each with its own copy of ``seg`` (so that one can be changed)."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    lines = ["case,seg"]
    for k, name in enumerate(names):
        shutil.copy(seg, data / f"c{k}_seg.nii.gz")
        lines.append(f'"{name}",data/c{k}_seg.nii.gz')
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def _cases(out: Path) -> dict[str, dict]:
    return {r["case"]: r for r in csv.DictReader((out / "cases.csv").open(encoding="utf-8"))}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _assert_same_outputs(a: Path, b: Path) -> None:
    """Case folders of two runs hold the same files; volumes and CSV byte-identical, report.json equal but timing."""
    assert _files(a) == _files(b)
    for name in _files(a):
        if name == "report.json":
            ja, jb = (json.loads((d / name).read_text(encoding="utf-8")) for d in (a, b))
            ja.pop("timing_s"), jb.pop("timing_s")
            assert ja == jb
        elif name.endswith((".nii.gz", ".csv")):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ----------------------------------------------------------------------------- safe names, nothing outside --out


def test_case_names_become_one_safe_folder_each():
    folders = case_folders(["alpha", "../../x", "/abs/evil", "a b", "a_b", "cases.csv", ".hidden", "x" * 300])
    assert folders["alpha"] == "alpha" and folders["a_b"] == "a_b"
    for folder in folders.values():
        assert "/" not in folder and folder not in (".", "..") and not folder.startswith(".") and len(folder) <= 120
    assert folders["a b"] != "a_b" and folders["a b"].startswith("a_b-")  # slug collision: a hash of the name
    assert folders["cases.csv"] != "cases.csv"
    assert len(set(folders.values())) == len(folders)
    for bad in (".", "..", " "):
        with pytest.raises(HealthiVertError, match="cannot name a folder"):
            case_folders(["ok", bad])


def test_manifest_names_never_write_outside_out(tmp_path, capsys):
    manifest = _manifest(tmp_path, ["../../escape", "/abs/evil", "sub/dir"])
    out = tmp_path / "work" / "out"
    assert run("batch", manifest, "--out", out, "--vertebra", "L3", *QUICK) == 0
    cases = _cases(out)
    assert {c: r["folder"] for c, r in cases.items()} == {"../../escape": "___.._escape", "/abs/evil": "_abs_evil",
                                                        "sub/dir": "sub_dir"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["___.._escape", "_abs_evil", "sub_dir"]
    assert {p.name for p in tmp_path.iterdir()} == {"data", "manifest.csv", "work"}
    assert not Path("/abs").exists()
    assert json.loads((out / "___.._escape" / "report.json").read_text(encoding="utf-8"))["case"] == "../../escape"
    capsys.readouterr()
    (tmp_path / "bad.csv").write_text(f"case,seg\n..,{SAMPLE_SEG}\n", encoding="utf-8")
    assert run("batch", tmp_path / "bad.csv", "--out", tmp_path / "o2", *QUICK) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot name a folder" in err and not (tmp_path / "o2").exists()


def test_out_holding_an_input_is_refused(tmp_path, capsys):
    manifest = _manifest(tmp_path, ["a"])
    data = tmp_path / "data"
    for out in (data, tmp_path, data / "inner"):
        assert run("batch", manifest if out != data / "inner" else data, "--out", out, *QUICK) == 2
        err = capsys.readouterr().err
        assert err.startswith("healthivert: error:") and err.count("\n") == 1, err
    assert sorted(p.name for p in data.iterdir()) == ["c0_seg.nii.gz"]


def test_workers_are_capped_to_the_cases_with_a_warning_above_the_cores(capsys):
    assert batch_workers(40, 3) == 3 and "more than the" in capsys.readouterr().err
    assert batch_workers(1, 5) == 1 and capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- exact resume


def test_changed_input_or_option_redoes_the_case_and_leftovers_are_ignored(tmp_path):
    manifest = _manifest(tmp_path, ["alpha", "beta"])
    out = tmp_path / "out"
    args = ("batch", manifest, "--out", out, "--vertebra", "L3", *QUICK)
    assert run(*args) == 0
    marker = read_complete_marker(out / "alpha")
    assert set(marker["provenance"]["inputs"]) == {"seg", "ct", "subregions"}
    assert marker["provenance"]["options"]["vertebrae"] == ["L3"]
    assert run(*args) == 0
    assert {r["status"] for r in _cases(out).values()} == {"skipped (done before)"}
    # a killed run's temporary folder holding a marker, and beta's marker from a version without provenance
    shutil.copytree(out / "beta", out / ".partial-beta-abcd1234")
    legacy = json.loads((out / "beta" / COMPLETE_MARKER).read_text(encoding="utf-8"))
    legacy.pop("provenance")
    (out / "beta" / COMPLETE_MARKER).write_text(json.dumps(legacy), encoding="utf-8")
    shutil.copy(TPT_SEG, tmp_path / "data" / "c0_seg.nii.gz")  # alpha's labels changed
    assert run(*args) == 0
    cases = _cases(out)
    assert cases["alpha"]["status"] == cases["beta"]["status"] == "done"
    assert json.loads((out / "alpha" / "report.json").read_text(encoding="utf-8"))["vertebrae"][0]["level"] == "L3"
    assert not any(p.name.startswith(".") for p in out.iterdir())
    assert run("batch", manifest, "--out", out, "--vertebra", "L4", *QUICK) == 0  # another option: redone
    assert {r["status"] for r in _cases(out).values()} == {"done"}
    assert run("batch", manifest, "--out", out, "--vertebra", "L4", "--no-qc", *QUICK) == 0  # so is --no-qc
    assert {r["status"] for r in _cases(out).values()} == {"done"}
    assert read_complete_marker(out / "alpha")["provenance"]["options"]["qc"] is False


def _batch_command(manifest: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "HealthiVertLib.app.cli", "batch", str(manifest), "--out", str(out),
            "--workers", str(workers), "--no-figures", "--progress", "lines"]


def _descendants(pid: int) -> list:
    psutil = pytest.importorskip("psutil")
    return psutil.Process(pid).children(recursive=True)


def _gone(processes, timeout: float = 15.0) -> list:
    """The processes still running (not zombies) after ``timeout`` seconds."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def test_sigkill_then_resume_equals_an_uninterrupted_run_and_leaves_no_worker(tmp_path):
    manifest = _manifest(tmp_path, ["c0", "c1", "c2", "c3"])
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert run("batch", manifest, "--out", reference, *QUICK) == 0
    child = subprocess.Popen(_batch_command(manifest, out, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob(f"c*/{COMPLETE_MARKER}")) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        workers = _descendants(child.pid)
        assert child.poll() is None and workers, "the batch ended before it could be killed"
        child.kill()
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not _gone(workers), "workers outlived their SIGKILLed parent"
    assert not (out / "cases.csv").exists()
    assert run("batch", manifest, "--out", out, *QUICK) == 0
    statuses = [r["status"] for r in _cases(out).values()]
    assert "skipped (done before)" in statuses and "done" in statuses
    for case in ("c0", "c1", "c2", "c3"):
        _assert_same_outputs(reference / case, out / case)
    assert (reference / "summary.csv").read_bytes() == (out / "summary.csv").read_bytes()
    assert (reference / "summary_by_level.csv").read_bytes() == (out / "summary_by_level.csv").read_bytes()
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_a_killed_worker_s_cases_go_to_a_new_pool(tmp_path):
    manifest = _manifest(tmp_path, ["c0", "c1", "c2", "c3"])
    out = tmp_path / "out"
    child = subprocess.Popen(_batch_command(manifest, out, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob(".partial-*"))) < 2 and time.monotonic() < deadline:  # both workers are grading
            time.sleep(0.05)
        workers = [p for p in _descendants(child.pid) if "resource_tracker" not in " ".join(p.cmdline())]
        assert workers
        workers[0].kill()  # as the out-of-memory killer would
        _, err = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert {r["status"] for r in _cases(out).values()} == {"done"}
    assert not any(p.name.startswith(".") for p in out.iterdir())


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_pool_marks_the_rest_interrupted_and_leaves_no_process(tmp_path, signum, status):
    manifest = _manifest(tmp_path, ["c0", "c1", "c2", "c3", "c4"])
    out = tmp_path / "out"
    child = subprocess.Popen(_batch_command(manifest, out, 2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = child.stdout.readline()  # the first case has ended; the workers are busy with the next ones
        assert first.startswith("HEALTHIVERT_PROGRESS"), first
        workers = _descendants(child.pid)
        assert workers
        child.send_signal(signum)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == status, err
    assert "healthivert: interrupted" in err and "Traceback" not in err, err
    assert not _gone(workers, timeout=5), "workers outlived the interrupted batch"
    statuses = [r["status"] for r in _cases(out).values()]
    assert "done" in statuses and "interrupted" in statuses and len(statuses) == 5
    # a terminated worker's temporary folder is removed by the next run, which finishes the cohort
    assert run("batch", manifest, "--out", out, *QUICK) == 0
    assert {r["status"] for r in _cases(out).values()} <= {"done", "skipped (done before)"}
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_sigkilled_grade_leaves_no_figure_process(tmp_path):
    from conftest import SAMPLE_CT

    cmd = [sys.executable, "-m", "HealthiVertLib.app.cli", "grade", "--seg", str(SAMPLE_SEG), "--ct", str(SAMPLE_CT),
           "--all", "--out", str(tmp_path / "out"), "--progress", "none"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, drawing = time.monotonic() + 120, []
        while not drawing and child.poll() is None and time.monotonic() < deadline:
            drawing = [p for p in _descendants(child.pid) if "resource_tracker" not in " ".join(p.cmdline())]
            time.sleep(0.02)
        if not drawing:
            pytest.skip("figures were drawn in the grading process itself (one core or no fork)")
        child.kill()
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not _gone(drawing), "figure-drawing processes outlived their SIGKILLed parent"


# ----------------------------------------------------------------------------- dask and the cohort files


def _cohort_with_a_failure(tmp_path: Path) -> Path:
    src = tmp_path / "cases"
    for name in ("alpha", "beta"):
        (src / name).mkdir(parents=True)
        shutil.copy(SAMPLE_SEG, src / name / f"{name}_seg.nii.gz")
    (src / "gamma").mkdir()
    (src / "gamma" / "gamma_seg.nii.gz").write_bytes(gzip.compress(b"not an image"))
    return src


def test_dask_against_a_real_scheduler_gives_the_process_pool_results(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    src = _cohort_with_a_failure(tmp_path)
    pool_out, dask_out = tmp_path / "pool", tmp_path / "dask"
    assert run("batch", src, "--out", pool_out, "--workers", "2", "--vertebra", "L2", "L3", *QUICK) == 3
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        assert run("batch", src, "--out", dask_out, "--dask", address, "--vertebra", "L2", "L3", *QUICK) == 3
    local_out = tmp_path / "dask_local"  # --dask without an address: a LocalCluster of its own
    assert run("batch", src, "--out", local_out, "--dask", "--workers", "1", "--vertebra", "L2", "L3", *QUICK) == 3
    keep = ("case", "folder", "status", "graded", "error")
    rows = [[{k: r[k] for k in keep} for r in _cases(out).values()] for out in (pool_out, dask_out, local_out)]
    assert rows[0] == rows[1] == rows[2]
    assert [r["status"] for r in rows[0]] == ["done", "done", "failed"]
    for case in ("alpha", "beta"):
        _assert_same_outputs(pool_out / case, dask_out / case)
    for name in ("summary.csv", "summary_by_level.csv"):
        assert (pool_out / name).read_bytes() == (dask_out / name).read_bytes(), name
    by_level = {r["level"]: r for r in csv.DictReader((pool_out / "summary_by_level.csv").open())}
    assert by_level["L2"]["grade_0"] == "2" and by_level["L3"]["vertebrae"] == "2"
    page = (dask_out / "index.html").read_text(encoding="utf-8")
    assert 'href="alpha/index.html"' in page and 'href="gamma/index.html"' not in page
    assert "gamma" in page and html_escaped(rows[0][2]["error"]) in page
    assert (dask_out / "cohort_grades.png").read_bytes().startswith(b"\x89PNG")


def html_escaped(text: str) -> str:
    import html

    return html.escape(text)


def test_dask_case_whose_worker_dies_is_retried(tmp_path):
    import os
    import threading

    distributed = pytest.importorskip("distributed")
    manifest = _manifest(tmp_path, ["c0", "c1"])
    out = tmp_path / "out"
    killed: list[int] = []
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        (pid,) = client.run(os.getpid).values()

        def kill_when_grading() -> None:
            deadline = time.monotonic() + 120
            while not list(out.glob(".partial-*")) and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        killer = threading.Thread(target=kill_when_grading, daemon=True)
        killer.start()
        assert run("batch", manifest, "--out", out, "--dask", cluster.scheduler_address, *QUICK) == 0
        killer.join(5)
    assert killed
    assert {r["status"] for r in _cases(out).values()} == {"done"}
    assert not any(p.name.startswith(".") for p in out.iterdir())
