"""Running enhancements: one volume node through export, worker and import; or many files straight to files."""

from __future__ import annotations

import enum
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .settings import EnhanceSettings
from .volumes import exportVolume, importResult, placeBesideInput, resultName, setProvenance
from .worker import WorkerError, WorkerProcess, defaultPythonExecutable, waitUntilFinished

#: File name endings the engine can write; other inputs (a DICOM folder, .mhd) give .nrrd results.
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    IMPORTING = "importing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EnhanceJob:
    """One volume node enhanced by a worker process.

    ``start()`` exports the input and launches the worker; ``poll()``, called periodically on the main thread,
    follows its progress and imports the result when it ends; ``onChange(job)`` hears of every change.
    The scene is only modified when a result is imported, so a failed or cancelled run leaves it as it was.
    """

    def __init__(
        self,
        inputNode,
        settings: EnhanceSettings,
        outputNode=None,
        python: str | None = None,
        tempRoot: str | None = None,
        onChange: Callable[[EnhanceJob], None] | None = None,
    ):
        self.inputNode = inputNode
        self.settings = settings
        self.outputNode = outputNode
        self.python = python or defaultPythonExecutable()
        self.tempRoot = tempRoot
        self.onChange = onChange
        self.phase = Phase.STARTING
        self.error: WorkerError | None = None
        self.folder: Path | None = None
        self.worker: WorkerProcess | None = None

    @property
    def progress(self):
        return self.worker.progress if self.worker else None

    @property
    def resultPath(self) -> Path:
        return self.folder / "output.nrrd"

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED, Phase.CANCELLED)

    def start(self) -> EnhanceJob:
        if self.inputNode is None or self.inputNode.GetImageData() is None:
            raise ValueError("the input volume has no voxels; load a volume first")
        self.folder = Path(tempfile.mkdtemp(prefix="SparseDiffusionEnhance-", dir=self.tempRoot))
        try:
            inputPath = exportVolume(self.inputNode, self.folder)
            self.worker = WorkerProcess(
                self.settings.workerArguments(inputPath, self.resultPath),
                self.settings.workerEnvironment(),
                self.python,
                onEvent=lambda event: self._notify(),
            )
            self.worker.start()
        except Exception:
            self._removeFolder()
            raise
        self._setPhase(Phase.RUNNING)
        return self

    def poll(self) -> bool:
        """Follow the worker; True while the job is not finished."""
        if self.phase != Phase.RUNNING:
            return not self.finished
        if self.worker.poll():
            return True
        if self.worker.error:
            self._end(Phase.FAILED, self.worker.error)
            return False
        self._setPhase(Phase.IMPORTING)
        try:
            self._importResult(self.resultPath)
        except (OSError, ValueError) as exc:
            self._end(Phase.FAILED, WorkerError("internal", f"Could not load the result: {exc}", self.worker.log()))
        else:
            self._end(Phase.DONE)
        return False

    def wait(self):
        """Block until the job ends (batch mode); the output node, or WorkerError if it failed."""
        waitUntilFinished(self)
        return self.outputNode

    def cancel(self) -> None:
        if self.finished:
            return
        if self.worker:
            self.worker.cancel()
        self._end(Phase.CANCELLED, WorkerError.cancelled())

    def _importResult(self, path: Path) -> None:
        created = self.outputNode is None
        if created:
            scene = self.inputNode.GetScene()
            self.outputNode = scene.AddNewNodeByClass(
                "vtkMRMLScalarVolumeNode", resultName(self.inputNode, self.settings)
            )
        try:
            importResult(path, self.inputNode, self.outputNode, self.settings)
        except (OSError, ValueError):
            if created:
                self.outputNode.GetScene().RemoveNode(self.outputNode)
                self.outputNode = None
            raise
        if self.outputNode.GetDisplayNode() is None:
            self.outputNode.CreateDefaultDisplayNodes()
        placeBesideInput(self.outputNode, self.inputNode)
        setProvenance(self.outputNode, self.inputNode, self.settings, self.worker.finished)

    def _end(self, phase: Phase, error: WorkerError | None = None) -> None:
        self.error = error
        self._removeFolder()
        self._setPhase(phase)

    def _removeFolder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _setPhase(self, phase: Phase) -> None:
        self.phase = phase
        self._notify()

    def _notify(self) -> None:
        if self.onChange:
            self.onChange(self)


def outputPathFor(inputPath: Path, outputDir: Path, settings: EnhanceSettings) -> Path:
    """``<outputDir>/<name>_enhanced_<task><suffix>``, keeping the input's format when the engine writes it."""
    name = inputPath.name
    suffix = next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), "")
    stem = name[: -len(suffix)] if suffix else inputPath.stem
    return Path(outputDir) / f"{stem}_enhanced_{settings.task.value}{suffix or '.nrrd'}"


class EnhanceLogic:
    """Batch entry points; the module's Logic class is a thin Slicer facade over this."""

    def __init__(self, python: str | None = None, tempRoot: str | None = None):
        self.python = python or defaultPythonExecutable()
        self.tempRoot = tempRoot

    def enhance(
        self,
        inputNode,
        task: str = "denoise",
        checkpoint: str = "",
        outputNode=None,
        wait: bool = True,
        onChange: Callable[[EnhanceJob], None] | None = None,
        **settings,
    ):
        """Enhance a volume node. ``settings``: factor, axis, steps, patch, overlap, seed, device.

        With ``wait=True`` returns the output node (a new one unless ``outputNode`` is given); otherwise the
        started EnhanceJob, whose ``poll()`` must then be called periodically (e.g. from a QTimer).
        """
        job = EnhanceJob(
            inputNode,
            EnhanceSettings(task=task, checkpoint=checkpoint, **settings),
            outputNode,
            self.python,
            self.tempRoot,
            onChange,
        ).start()
        return job.wait() if wait else job

    def enhanceFiles(
        self,
        paths,
        outputDir,
        task: str = "denoise",
        checkpoint: str = "",
        onProgress: Callable[[Path, dict], None] | None = None,
        **settings,
    ) -> list[Path]:
        """Enhance image files (or DICOM folders) into ``outputDir``, without touching the scene.

        Every file is attempted; ``onProgress(path, event)`` hears each worker event. Returns the written
        paths, or raises RuntimeError naming every file that failed after trying them all.
        """
        enhanceSettings = EnhanceSettings(task=task, checkpoint=checkpoint, **settings)
        Path(outputDir).mkdir(parents=True, exist_ok=True)
        written, failures = [], []
        for inputPath in map(Path, paths):
            outputPath = outputPathFor(inputPath, Path(outputDir), enhanceSettings)
            worker = WorkerProcess(
                enhanceSettings.workerArguments(inputPath, outputPath),
                enhanceSettings.workerEnvironment(),
                self.python,
                onEvent=(lambda event, p=inputPath: onProgress(p, event)) if onProgress else None,
            )
            worker.start()
            try:
                worker.wait()
            except WorkerError as exc:
                failures.append(f"{inputPath}: {exc.message}")
            else:
                written.append(outputPath)
        if failures:
            raise RuntimeError(
                f"{len(failures)} of {len(failures) + len(written)} files failed:\n" + "\n".join(failures)
            )
        return written
