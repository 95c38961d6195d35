"""The engine runs in its own process: torch never loads into Slicer, and a crash there cannot take Slicer down.

A reader thread turns the worker's output into a queue; ``poll()`` drains it on the caller's thread (a QTimer
in the GUI, a sleep loop in batch mode), so MRML and Qt are only ever touched from the main thread.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import slicer
from sdenhance.errors import EXIT_KINDS  # torch-free: the table the engine's exit codes come from

LOG_TAIL_LINES = 40
#: Seconds a cancelled worker has to exit on its own (the engine removes partial outputs on SIGTERM).
TERMINATE_GRACE_S = 10.0

ADVICE = {
    "input": "Check that the input is a 3D scalar volume.",
    "checkpoint": "Choose another checkpoint, or check that its .json file sits beside the .safetensors file.",
    "memory": "Out of memory: choose Device: CPU, or a smaller patch size, in the Advanced section.",
    "internal": "This is probably a bug; the worker log below helps to report it.",
}


def moduleDirectory() -> Path:
    """Folder that holds the module and, beside it, the ``sdenhance`` engine package."""
    return Path(__file__).resolve().parents[1]


def insideSlicer() -> bool:
    """True in Slicer's application; False with the slicer-core wheel or in PythonSlicer (no ``slicer.app``)."""
    return hasattr(slicer, "app")


def defaultPythonExecutable() -> str:
    """PythonSlicer inside Slicer (it sets up Slicer's Python paths); the current interpreter elsewhere."""
    if not insideSlicer():
        return sys.executable
    # inside Slicer sys.executable is the application itself: starting it would open a second Slicer
    python = shutil.which("PythonSlicer")
    if python is None:
        raise RuntimeError(
            "PythonSlicer, the Python interpreter that runs the engine, is not on PATH. "
            "Start Slicer with its launcher (Slicer or Slicer.exe), not the SlicerApp-real executable."
        )
    return python


def launchEngine(arguments: list[str], environment: dict[str, str] | None = None, python: str | None = None):
    """Start ``python *arguments`` with the ``sdenhance`` package beside this module importable; output as text
    lines on ``stdout`` (stderr merged into it)."""
    # the engine is imported from beside this module, whatever PYTHONPATH said before
    environment = {**(environment or {}), "PYTHONPATH": str(moduleDirectory()), "PYTHONUNBUFFERED": "1"}
    return slicer.util.launchConsoleProcess(
        [python or defaultPythonExecutable(), *arguments],
        # inside Slicer start from the environment Slicer was launched with: PythonSlicer sets its own paths
        useStartupEnvironment=insideSlicer(),
        updateEnvironment=environment,
    )


def parseEvent(line: str) -> dict | None:
    """The JSON progress event on ``line``, or None for any other output (warnings, log lines)."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def formatDuration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class Progress:
    """Where the worker is: network evaluations done out of the planned total, and time estimates."""

    step: int = 0
    total: int = 0
    elapsed: float = 0.0
    remaining: float | None = None
    device: str = ""
    estimate: float | None = None  # the engine's estimate of the whole run, made before it started

    def describe(self) -> str:
        if not self.total:
            return "Loading the model…"
        text = f"Step {self.step} of {self.total}"
        if self.remaining is not None and self.step:
            text += f", about {formatDuration(self.remaining)} left"
        elif self.estimate is not None:
            text += f", estimated {formatDuration(self.estimate)}"
        return text + (f" ({self.device})" if self.device else "")


class WorkerError(RuntimeError):
    """A failed run: ``kind`` is input, checkpoint, memory, internal or cancelled."""

    def __init__(self, kind: str, message: str, logTail: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.logTail = logTail

    @classmethod
    def cancelled(cls) -> WorkerError:
        return cls("cancelled", "Cancelled by the user.")

    def userMessage(self) -> str:
        advice = ADVICE.get(self.kind, "")
        return f"{self.message}\n\n{advice}".strip()


def pollUntilFinished(task, interval: float = 0.1) -> None:
    """Poll a WorkerProcess or EnhanceJob until it has ended."""
    while task.poll():
        time.sleep(interval)


def waitUntilFinished(task, interval: float = 0.1) -> None:
    """Poll a WorkerProcess or EnhanceJob until it ends; raise its error, if any."""
    try:
        pollUntilFinished(task, interval)
    except BaseException:  # e.g. KeyboardInterrupt: never leave a worker behind
        task.cancel()
        pollUntilFinished(task, interval)
        raise
    if task.error:
        raise task.error


@dataclass
class WorkerProcess:
    """One ``python -m sdenhance enhance`` process with JSON-lines progress.

    ``onEvent`` is called from ``poll()`` with each progress event (start, step, warning, done, error), and
    ``onOutput`` with each other line the worker prints (its log).
    """

    arguments: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    python: str | None = None  # None: defaultPythonExecutable(), resolved when the worker starts
    onEvent: Callable[[dict], None] | None = None
    onOutput: Callable[[str], None] | None = None

    def __post_init__(self):
        self.progress = Progress()
        self.started: dict = {}
        self.finished: dict = {}
        self.error: WorkerError | None = None
        self.returncode: int | None = None
        self.logTail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process = None
        self._reader: threading.Thread | None = None
        self._cancelledAt: float | None = None
        self._tree: list = []  # the processes asked to stop; kept, as the launcher's children outlive it
        self._killed = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def cancelling(self) -> bool:
        return self._cancelledAt is not None and self.returncode is None

    def start(self) -> None:
        self._process = launchEngine(self.arguments, self.environment, self.python)
        self._reader = threading.Thread(target=self._readOutput, name="SparseDiffusionEnhance worker", daemon=True)
        self._reader.start()

    def _readOutput(self) -> None:
        while True:
            try:
                line = self._process.stdout.readline()
            except UnicodeDecodeError:
                continue  # a warning in a non-UTF-8 locale; progress lines are plain ASCII JSON
            if not line:
                break
            self._lines.put(line.rstrip())
        self._lines.put(None)  # end of output: the process is exiting

    def poll(self) -> bool:
        """Handle the output received so far; True while the worker is still running."""
        if self.returncode is not None:
            return False
        if self.cancelling and not self._killed and time.monotonic() - self._cancelledAt > TERMINATE_GRACE_S:
            self._killed = True
            self._signal(self._tree, "kill")
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return True
            if line is None:
                self._finish(self._process.wait())
                return False
            self._handleLine(line)

    def wait(self) -> None:
        """Block (batch mode) until the worker ends; raises WorkerError if it failed."""
        waitUntilFinished(self)

    def cancel(self) -> None:
        """Ask the worker and everything it started to stop, and return at once; ``poll()`` sees it end.

        SIGTERM first, so the engine removes partial outputs; whatever still runs after TERMINATE_GRACE_S is
        killed from ``poll()``. The whole tree, since PythonSlicer is a launcher, not the worker itself.
        """
        if self._process is None or self.returncode is not None or self._cancelledAt is not None:
            return
        import psutil  # only needed here; installed with the module's requirements

        self._cancelledAt = time.monotonic()
        try:
            root = psutil.Process(self._process.pid)
            self._tree = [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            self._tree = []
        self._signal(self._tree, "terminate")

    @staticmethod
    def _signal(processes, action: str) -> None:
        import psutil

        for process in processes:
            try:
                getattr(process, action)()
            except psutil.NoSuchProcess:
                pass

    def _handleLine(self, line: str) -> None:
        event = parseEvent(line)
        if event is None:
            self.logTail.append(line)
            logging.info("[sdenhance] %s", line)
            if self.onOutput:
                self.onOutput(line)
            return
        kind = event["event"]
        if kind == "start":
            self.started = event
            self.progress = Progress(
                total=int(event.get("evaluations", 0)),
                device=str(event.get("device", "")),
                estimate=event.get("estimate_s"),
            )
        elif kind == "step":
            self.progress.step = int(event["step"])
            self.progress.total = int(event.get("total", self.progress.total))
            self.progress.elapsed = float(event.get("elapsed_s", 0.0))
            self.progress.remaining = event.get("eta_s")
        elif kind == "warning":  # the engine doubts the result (input outside the model's range): tell the user
            logging.warning("[sdenhance] %s", event.get("message", ""))
            if self.onOutput:
                self.onOutput(f"Warning: {event.get('message', '')}")
        elif kind == "done":
            self.finished = event
        elif kind == "error":
            self.error = WorkerError(event.get("kind", "internal"), event.get("message", ""), self.log())
        if self.onEvent:
            self.onEvent(event)

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        if self._cancelledAt is not None:
            self.error = WorkerError.cancelled()
            return
        if returncode == 0 and self.finished:
            return
        if self.error is None:
            # died without an error event (crash, killed, argument error): the log tail is all we have
            lastLine = self.logTail[-1] if self.logTail else "no output"
            message = f"The worker stopped with exit code {returncode}: {lastLine}"
            self.error = WorkerError(EXIT_KINDS.get(returncode, "internal"), message, self.log())
        else:
            self.error.logTail = self.log()

    def log(self) -> str:
        """The last lines the worker printed that were not progress events."""
        return "\n".join(self.logTail)
