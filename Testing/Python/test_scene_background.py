"""The Slicer module's background run (HealthiVertLib.app.background), without Slicer: the exact child
command the module starts (``python -m HealthiVertLib.app.cli grade ... --progress lines``) on the
sample case, progress parsing, the error message a user sees, and Cancel ending the process tree."""

from __future__ import annotations

import io
import os
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from conftest import SAMPLE_CT, SAMPLE_SEG

from HealthiVertLib.app import background, cli

ROOT = Path(__file__).resolve().parents[2]


def test_scene_background_grades_the_sample_with_progress(tmp_path):
    command = [sys.executable] + background.grade_command(
        str(SAMPLE_SEG), str(tmp_path / "out"), str(SAMPLE_CT), "L1 L2", "context", None, "sample", False
    )
    run = background.BackgroundRun(command, env=background.child_environment(str(ROOT)), cwd=str(ROOT))
    events = run.wait(timeout=120)
    assert run.finished and run.return_code == 0 and not run.cancelled
    assert run.error_message() is None
    progress = [e[1] for e in events if e[0] == "progress"]
    assert progress[0] == 0.0 and progress[-1] == 100.0 and progress == sorted(progress)
    assert any(e[0] == "progress" and e[2].startswith("L1") for e in events)
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "height_loss.nii.gz").is_file()


def test_scene_background_reports_the_cli_error(tmp_path):
    command = [sys.executable] + background.grade_command(str(tmp_path / "missing.nii.gz"), str(tmp_path / "out"))
    run = background.BackgroundRun(command, env=background.child_environment(str(ROOT)), cwd=str(ROOT))
    run.wait(timeout=60)
    assert run.return_code == 2
    message = run.error_message()
    assert message and "missing.nii.gz" in message and not message.startswith("healthivert:")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the grandchild")
def test_scene_background_cancel_ends_the_process_tree(tmp_path):
    """Like PythonSlicer (a launcher starting the real Python), the child starts a grandchild."""
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print('grandchild', child.pid, flush=True)\n"
        "print('HEALTHIVERT_PROGRESS 10 working', flush=True)\n"
        "time.sleep(120)\n"
    )
    run = background.BackgroundRun([sys.executable, "-c", script])
    events, deadline = [], time.monotonic() + 30
    while not any(e[0] == "progress" for e in events) and time.monotonic() < deadline:
        events += run.poll(timeout=0.2)
    grandchild = int(next(e[1] for e in events if e[0] == "log" and e[1].startswith("grandchild")).split()[1])
    assert _alive(grandchild) and _alive(run.process.pid)
    run.cancel()
    run.wait(timeout=30)
    assert run.finished and run.cancelled and run.error_message() == "Cancelled."
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild), "the grandchild survived Cancel"


def test_scene_background_progress_lines_round_trip():
    report, close = cli.make_progress("lines")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        report(0.0, "reading inputs")
        report(0.425, "L1: measuring")
        report(1.0, "done")
        close()
    parsed = [background.parse_progress_line(line) for line in buffer.getvalue().splitlines()]
    assert parsed == [(0.0, "reading inputs"), (42.0, "L1: measuring"), (100.0, "done")]
    assert background.parse_progress_line("healthivert: error: T3 is not in the label map") is None
    assert background.parse_progress_line("HEALTHIVERT_PROGRESS nan x") is None
    assert background.parse_progress_line("HEALTHIVERT_PROGRESS 140") == (100.0, "")


def test_scene_background_environment_and_estimate():
    env = background.child_environment("/opt/ext", base={"PYTHONPATH": "/x"}, device="cpu")
    assert env["PYTHONPATH"] == os.pathsep.join(["/opt/ext", "/x"])
    assert env["CUDA_VISIBLE_DEVICES"] == "-1" and env["PYTHONUNBUFFERED"] == "1" and env["MPLBACKEND"] == "Agg"
    assert "CUDA_VISIBLE_DEVICES" not in background.child_environment("/opt/ext", base={})
    assert background.estimate_seconds("context", 5, figures=False) < background.estimate_seconds("context", 5, figures=True)
    assert background.estimate_seconds("an engine nobody measured", 1) is None
