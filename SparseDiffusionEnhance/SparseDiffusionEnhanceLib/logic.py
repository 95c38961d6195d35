"""Running enhancements: one volume node through export, worker and import; or many files straight to files."""

from __future__ import annotations

import enum
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .remote import ServerConnection, makeWorker
from .settings import EnhanceSettings, splitSuffix, uncertaintyPath
from .volumes import (
    UNCERTAINTY_REFERENCE,
    exportVolume,
    importResult,
    placeBesideInput,
    previewOf,
    resultName,
    setProvenance,
    uncertaintyOf,
)
from .worker import WorkerError, WorkerProcess, waitUntilFinished


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    IMPORTING = "importing"
    CANCELLING = "cancelling"  # the worker was asked to stop and has not exited yet
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def isInScene(node) -> bool:
    """False for a node that was removed from its scene (Slicer keeps the Python object alive)."""
    return node is not None and node.GetScene() is not None


class EnhanceJob:
    """One volume node enhanced by a worker process.

    ``start()`` exports the input and launches the worker; ``poll()``, called periodically on the main thread,
    follows its progress and imports the result when it ends; ``onChange(job)`` hears of every change and
    ``onOutput(line)`` of every line of the worker's log. The scene is only modified when a result is
    imported, so a failed or cancelled run leaves it as it was. Removing the input or the output volume from
    the scene while the job runs stops the worker and fails the job.
    """

    def __init__(
        self,
        inputNode,
        settings: EnhanceSettings,
        outputNode=None,
        python: str | None = None,
        tempRoot: str | None = None,
        onChange: Callable[[EnhanceJob], None] | None = None,
        onOutput: Callable[[str], None] | None = None,
        server: ServerConnection | None = None,
    ):
        self.inputNode = inputNode
        self.settings = settings
        self.outputNode = outputNode
        self.python = python
        self.tempRoot = tempRoot
        self.onChange = onChange
        self.onOutput = onOutput
        self.server = server
        self.phase = Phase.STARTING
        self.error: WorkerError | None = None
        self.folder: Path | None = None
        self.worker: WorkerProcess | None = None
        self._stopReason: WorkerError | None = None  # why a stop that the user did not ask for was made

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
            self.worker = makeWorker(
                self.settings.workerArguments(inputPath, self.resultPath),
                self.settings.workerEnvironment(),
                self.python,
                self.server,
                onEvent=lambda event: self._notify(),
                onOutput=self.onOutput,
            )
            self.worker.start()
        except Exception:
            self._removeFolder()
            raise
        self._setPhase(Phase.RUNNING)
        return self

    def poll(self) -> bool:
        """Follow the worker; True while the job is not finished."""
        removed = self._removedNode() if self.phase == Phase.RUNNING else ""
        if removed:  # the result would have nowhere to go: stop the worker, then fail
            self._stopReason = WorkerError("scene", f"{removed} was removed from the scene during the run.")
            self.cancel()
        if self.phase == Phase.CANCELLING:
            if self.worker.poll():
                return True
            self._end(Phase.FAILED if self._stopReason else Phase.CANCELLED, self._stopReason or self.worker.error)
            return False
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
        except Exception as exc:  # whatever went wrong, the job must end and its files go
            logging.exception("Could not load the result")
            self._end(Phase.FAILED, WorkerError("internal", f"Could not load the result: {exc}", self.worker.log()))
        else:
            self._end(Phase.DONE)
        return False

    def wait(self):
        """Block until the job ends (batch mode); the output node, or WorkerError if it failed."""
        waitUntilFinished(self)
        return self.outputNode

    def cancel(self) -> None:
        """Ask the worker to stop and return at once; ``poll()`` ends the job when the worker has exited."""
        if self.finished or self.phase == Phase.CANCELLING:
            return
        if self.worker is None:
            self._end(Phase.CANCELLED, WorkerError.cancelled())
            return
        self.worker.cancel()
        self._setPhase(Phase.CANCELLING)

    def _removedNode(self) -> str:
        """Which of the job's volumes is no longer in the scene ("" when both are)."""
        if not isInScene(self.inputNode):
            return f"The input volume '{self.inputNode.GetName()}'"
        if self.outputNode is not None and not isInScene(self.outputNode):
            return f"The output volume '{self.outputNode.GetName()}'"
        return ""

    def _importResult(self, path: Path) -> None:
        self.settings = self.settings.asRun(self.worker.finished)  # the SR factor may have been the model's
        slab = self.worker.finished.get("preview")  # a preview's slices: chosen by the engine, from its windows
        scene = self.inputNode.GetScene()
        created = []  # removed again if loading fails, so a failed run adds nothing to the scene
        try:
            if self.outputNode is None:
                self.outputNode = scene.AddNewNodeByClass(
                    "vtkMRMLScalarVolumeNode", resultName(self.inputNode, self.settings)
                )
                created.append(self.outputNode)
            importResult(path, self.inputNode, self.outputNode, self.settings, slab)
            imported = [self.outputNode]
            if self.settings.withUncertainty:
                spread = uncertaintyOf(self.outputNode)
                if spread is None:
                    spread = scene.AddNewNodeByClass(
                        "vtkMRMLScalarVolumeNode", f"{self.outputNode.GetName()} uncertainty"
                    )
                    created.append(spread)
                importResult(uncertaintyPath(path), self.inputNode, spread, self.settings, slab)
                self.outputNode.SetNodeReferenceID(UNCERTAINTY_REFERENCE, spread.GetID())
                imported.append(spread)
            else:  # an earlier run's spread does not describe this result
                self.outputNode.RemoveNodeReferenceIDs(UNCERTAINTY_REFERENCE)
        except Exception:
            for node in created:
                scene.RemoveNode(node)
            if self.outputNode in created:
                self.outputNode = None
            raise
        for node in imported:
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            placeBesideInput(node, self.inputNode)
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
    """``<outputDir>/<name>_enhanced_<task><suffix>``, keeping the input's format when the engine writes it
    (other inputs, e.g. a DICOM folder or .mhd, give .nrrd results)."""
    stem, suffix = splitSuffix(inputPath.name)
    return Path(outputDir) / f"{stem}_enhanced_{settings.task.value}{suffix or '.nrrd'}"


class EnhanceLogic:
    """Batch entry points; the module's Logic class is a thin Slicer facade over this."""

    def __init__(self, python: str | None = None, tempRoot: str | None = None, server: ServerConnection | None = None):
        self.python = python  # None: PythonSlicer inside Slicer, this interpreter elsewhere (when a worker starts)
        self.tempRoot = tempRoot
        self.server = server  # None: runs on this computer; else on that processing server

    def startJob(self, inputNode, settings: EnhanceSettings, outputNode=None, onChange=None, onOutput=None):
        """Export ``inputNode`` and start the worker; the running EnhanceJob (see its ``poll()``)."""
        job = EnhanceJob(inputNode, settings, outputNode, self.python, self.tempRoot, onChange, onOutput, self.server)
        return job.start()

    def startPreview(self, inputNode, sliceIndex: int, settings: EnhanceSettings, onChange=None, onOutput=None):
        """Start a preview of input slice ``sliceIndex`` (along ``settings.previewAxis``) into the input's preview
        volume ``<input> preview``, made on the first preview and reused by the next; the running EnhanceJob."""
        previewSettings = replace(settings, preview=sliceIndex)
        return self.startJob(inputNode, previewSettings, previewOf(inputNode), onChange, onOutput)

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
        """Enhance a volume node. ``settings``: factor, axis, steps, patch, overlap, seed, device, gpu, samples
        (with 2 or more, ``uncertaintyOf(outputNode)`` is their spread).

        With ``wait=True`` returns the output node (a new one unless ``outputNode`` is given); otherwise the
        started EnhanceJob, whose ``poll()`` must then be called periodically (e.g. from a QTimer).
        """
        job = self.startJob(
            inputNode, EnhanceSettings(task=task, checkpoint=checkpoint, **settings), outputNode, onChange
        )
        return job.wait() if wait else job

    def preview(
        self,
        inputNode,
        sliceIndex: int,
        task: str = "denoise",
        checkpoint: str = "",
        wait: bool = True,
        onChange: Callable[[EnhanceJob], None] | None = None,
        **settings,
    ):
        """Enhance only the patches around input slice ``sliceIndex`` (z, or the SR axis): a volume of that slab,
        in place over the input, in a fraction of a whole run's time. Otherwise as ``enhance``."""
        settings = EnhanceSettings(task=task, checkpoint=checkpoint, **settings)
        job = self.startPreview(inputNode, sliceIndex, settings, onChange)
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

        Every file is attempted; ``onProgress(path, event)`` hears each worker event. With ``samples`` >= 2 an
        ``<name>_uncertainty`` file is written beside each result. Returns the written result paths, or raises
        RuntimeError naming every file that failed after trying them all.
        """
        enhanceSettings = EnhanceSettings(task=task, checkpoint=checkpoint, **settings)
        Path(outputDir).mkdir(parents=True, exist_ok=True)
        written, failures = [], []
        for inputPath in map(Path, paths):
            outputPath = outputPathFor(inputPath, Path(outputDir), enhanceSettings)
            worker = makeWorker(
                enhanceSettings.workerArguments(inputPath, outputPath),
                enhanceSettings.workerEnvironment(),
                self.python,
                self.server,
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
