"""Run ``healthivert grade`` (and ``export-dicom``) in a child process for a GUI: the command line,
progress lines, a log, a CPU time estimate, and a Cancel that ends the whole process tree.

Standard library only, no Qt: the Slicer module polls :meth:`BackgroundRun.poll` from a timer,
so the application never freezes; the tests run the same code in plain Python.
"""

from __future__ import annotations

import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from typing import Iterable, Mapping, Sequence

PROGRESS_PREFIX = "HEALTHIVERT_PROGRESS"  # printed by ``healthivert ... --progress lines``
CORE_PACKAGE = "HealthiVertLib"
LEVEL_PATTERN = re.compile(r"^(T([1-9]|1[0-3])|L[1-6])$")  # the gradable levels, T1-T13 and L1-L6

# Seconds on 2 CPU cores, from benchmarks/results.md (healthivert grade on the sample case, cold
# command): start-up and reading ~1 s, each graded vertebra ~0.2 s with the context engine, its
# three figures ~0.6 s more. Engines without a measurement here get no estimate.
STARTUP_SECONDS = 1.0
SECONDS_PER_VERTEBRA = {"context": 0.2, "generator": 0.8, "spine": 0.2}  # results.md, generator_results.md; spine: as context on the sample
FIGURE_SECONDS_PER_VERTEBRA = 0.6


def parse_levels(levels: str | Iterable[str] | None) -> list[str]:
    """``"t12, l1"`` or ``["T12", "L1"]`` -> ``["T12", "L1"]`` (upper case, order kept, no duplicates)."""
    if levels is None:
        return []
    if isinstance(levels, str):
        levels = levels.replace(",", " ").replace(";", " ").split()
    result: list[str] = []
    for level in levels:
        level = str(level).strip().upper()
        if level and level not in result:
            result.append(level)
    return result


def invalid_levels(levels: str | Iterable[str] | None) -> list[str]:
    """The entries of ``levels`` that are not gradable levels (T1-T13, L1-L6)."""
    return [level for level in parse_levels(levels) if not LEVEL_PATTERN.match(level)]


def parse_progress_line(line: str) -> tuple[float, str] | None:
    """``"HEALTHIVERT_PROGRESS 42 L1: measuring"`` -> ``(42.0, "L1: measuring")``; None for other lines."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        percent = float(parts[1])
    except ValueError:
        return None
    if not math.isfinite(percent):
        return None
    return min(max(percent, 0.0), 100.0), (parts[2] if len(parts) > 2 else "")


def grade_command(
    seg_path: str,
    out_dir: str,
    ct_path: str | None = None,
    levels: str | Iterable[str] | None = None,
    engine: str = "spine",
    label_scheme: str | None = None,
    case_name: str | None = None,
    figures: bool = True,
    subregions_path: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The arguments after the Python executable: ``-m HealthiVertLib.app.cli grade ... --progress lines``.

    ``levels`` empty/None grades every vertebra (``--all``). ``extra``: further options, e.g.
    ``["--device", "cpu"]`` for engines that take them.
    """
    args = ["-m", f"{CORE_PACKAGE}.app.cli", "grade", "--seg", str(seg_path)]
    if ct_path:
        args += ["--ct", str(ct_path)]
    if subregions_path:
        args += ["--subregions", str(subregions_path)]
    parsed = parse_levels(levels)
    args += ["--vertebra", *parsed] if parsed else ["--all"]
    args += ["--out", str(out_dir), "--engine", engine, "--progress", "lines"]
    if label_scheme:
        args += ["--labels", str(label_scheme)]
    if case_name:
        args += ["--name", str(case_name)]
    if not figures:
        args.append("--no-figures")
    return args + [str(a) for a in extra]


def export_dicom_command(result_dir: str, ct_folder: str, series: Sequence[str] = ()) -> list[str]:
    """The arguments after the Python executable: ``-m HealthiVertLib.app.cli export-dicom RESULT --ct FOLDER``
    (the DICOM objects of a finished result, referencing the CT series in ``ct_folder``)."""
    args = ["-m", f"{CORE_PACKAGE}.app.cli", "export-dicom", str(result_dir), "--ct", str(ct_folder)]
    return args + (["--series", *map(str, series)] if series else [])


def grade_options() -> set[str]:
    """The option strings ``healthivert grade`` accepts in this installation (e.g. whether ``--device`` exists)."""
    from .cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {option for action in subparsers.choices["grade"]._actions for option in action.option_strings}


def estimate_seconds(engine: str, vertebrae: int, figures: bool = True) -> float | None:
    """Expected wall time on 2 CPU cores for grading ``vertebrae`` vertebrae; None when not measured."""
    per = SECONDS_PER_VERTEBRA.get(engine)
    if per is None:
        return None
    return STARTUP_SECONDS + vertebrae * (per + (FIGURE_SECONDS_PER_VERTEBRA if figures else 0.0))


def kill_process_tree(process: subprocess.Popen) -> None:
    """End ``process`` and every process it started (PythonSlicer is a launcher that starts Python)."""
    if process.poll() is not None:
        return
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(process.pid)
            for child in parent.children(recursive=True):
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            parent.kill()
        except psutil.NoSuchProcess:
            pass
    elif sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
    else:  # started in its own session: its process group holds the whole tree
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            process.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class BackgroundRun:
    """A child process whose merged stdout/stderr is read on a thread; the GUI polls it.

    ``poll()`` returns the new events, each ``("progress", percent, message)`` or ``("log", line)``;
    ``finished`` is True once the process has ended and all its output was returned.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tail_lines: int = 40,
    ):
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # its own process group, so Cancel can end the tree
        self.command = list(command)
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, text=True, encoding="utf-8", errors="replace",
            bufsize=1, **kwargs,
        )  # fmt: skip
        self.tail: deque[str] = deque(maxlen=tail_lines)  # last log lines, for the error message
        self.cancelled = False
        self.return_code: int | None = None
        self.finished = False
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="HealthiVert output reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stdout
        try:
            for line in iter(stream.readline, ""):
                self._lines.put(line.rstrip("\r\n"))
        except (ValueError, OSError):  # stream closed by a cancel
            pass
        self._lines.put(None)

    def poll(self, timeout: float | None = None) -> list[tuple]:
        """The events since the last call (waits up to ``timeout`` s for the first one)."""
        events: list[tuple] = []
        while not self.finished:
            try:
                line = self._lines.get(timeout=timeout) if timeout and not events else self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self.return_code = self.process.wait()
                self.finished = True
                break
            progress = parse_progress_line(line)
            if progress is not None:
                events.append(("progress", *progress))
            else:
                self.tail.append(line)
                events.append(("log", line))
        return events

    def wait(self, timeout: float | None = None) -> list[tuple]:
        """Block until the process ends (all events returned); ``timeout`` s at most, then cancel."""
        events: list[tuple] = []
        deadline = None if timeout is None else _now() + timeout
        while not self.finished:
            events += self.poll(timeout=0.1)
            if deadline is not None and _now() > deadline and not self.finished:
                self.cancel()
        return events

    def cancel(self) -> None:
        """End the process tree; the run then finishes with ``cancelled`` True."""
        self.cancelled = True
        kill_process_tree(self.process)

    def error_message(self) -> str | None:
        """None for a successful run; else why it failed, with the last output lines."""
        if not self.finished or (self.return_code == 0 and not self.cancelled):
            return None
        if self.cancelled:
            return "Cancelled."
        errors = [line for line in self.tail if line.startswith("healthivert: error:")]
        if errors:
            return errors[-1].removeprefix("healthivert: error:").strip()
        return f"HealthiVert stopped with exit code {self.return_code}:\n" + "\n".join(self.tail)


def _now() -> float:
    import time

    return time.monotonic()


def child_environment(core_parent_dir: str, base: Mapping[str, str] | None = None, device: str | None = None) -> dict[str, str]:
    """Environment of the child: ``HealthiVertLib`` importable, unbuffered UTF-8 output, Agg figures;
    ``device="cpu"`` hides GPUs from torch."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([core_parent_dir] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["MPLBACKEND"] = "Agg"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env
