from __future__ import annotations  # annotations stay unevaluated: this file must import on every Slicer

import enum
import logging
import tempfile
import time
import unittest
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: The engine needs Python 3.11 or newer: Slicer 5.10 ships 3.12, Slicer 5.8 and older ship 3.9.
MINIMUM_SLICER = (5, 10)
#: Application settings (qt.QSettings) of Advanced -> Process on: per computer and user, never in a scene.
PROCESS_ON_SETTING = "SparseDiffusionEnhance/ProcessOn"
SERVER_URL_SETTING = "SparseDiffusionEnhance/ServerURL"
SERVER_TOKEN_SETTING = "SparseDiffusionEnhance/ServerToken"


def unsupportedSlicerMessage() -> str:
    """Why the module cannot run in this Slicer, or "" when it can."""
    version = (slicer.app.majorVersion, slicer.app.minorVersion)
    if version >= MINIMUM_SLICER:
        return ""
    return _(
        "Sparse Diffusion Enhance needs Slicer {minimum} or newer; this is Slicer {version}. "
        "Install a current Slicer from download.slicer.org to use it."
    ).format(minimum="{}.{}".format(*MINIMUM_SLICER), version="{}.{}".format(*version))


UNSUPPORTED = unsupportedSlicerMessage()

if not UNSUPPORTED:  # the Lib and the engine need the newer Python; importing them on an older Slicer would fail
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from SparseDiffusionEnhanceLib import (
        CLIENT_REQUIREMENTS,
        MAX_SAMPLES,
        SAMPLE_NAME,
        SR_FACTORS,
        Axis,
        Device,
        EnhanceLogic,
        EnhanceSettings,
        Overlay,
        Phase,
        ServerConnection,
        Task,
        ensureDependencies,
        forgetImports,
        formatDuration,
        inputOf,
        launchEngine,
        listGpus,
        loadLowDosePhantom,
        missingRequirements,
        overlayVolume,
        pollUntilFinished,
        previewedSlice,
        provenance,
        readRequirements,
        showComparison,
        shownSlice,
        showSlice,
        uncertaintyOf,
    )

#
# SparseDiffusionEnhance
#


class SparseDiffusionEnhance(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Sparse Diffusion Enhance")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["SparseDiffusionEnhance developers"]
        self.parent.helpText = (f"<p><b>{UNSUPPORTED}</b></p>" if UNSUPPORTED else "") + _("""
Denoise or super-resolve CT, MRI and PET volumes with a sparse-timestep conditional diffusion model.
The model runs in a separate process (CPU or GPU); the panel stays responsive and Enhance turns into Cancel.
Results keep the input's position in the patient and record how they were made (node attributes).
To try it without data of your own, load the low-dose CT phantom from the Sample Data module.
See the <a href="https://github.com/SparseDiffusionEnhance/SparseDiffusionEnhance">documentation</a>.
""")
        self.parent.acknowledgementText = _("""
Built on PyTorch and MONAI. Panel and process handling follow the MONAIAuto3DSeg extension and Slicer's
scripted module template.
""")
        if not UNSUPPORTED:
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """A Sample Data entry that makes the low-dose phantom on the spot: nothing is downloaded."""
    import SampleData

    iconsPath = Path(__file__).parent / "Resources" / "Icons"
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Sparse Diffusion Enhance",
        sampleName=SAMPLE_NAME,
        uris="generated:low-dose-ct-phantom",  # Sample Data needs one; the custom downloader makes the data
        fileNames="low-dose-ct-phantom.nrrd",
        nodeNames=SAMPLE_NAME,
        thumbnailFileName=str(iconsPath / "LowDosePhantom.png"),
        customDownloader=loadSample,
    )


def loadSample(source=None):
    """Make the phantom in a worker process (a few seconds) and show it."""
    with slicer.util.tryWithErrorDisplay(_("Could not make the phantom."), waitCursor=True):
        node = loadLowDosePhantom(slicer.mrmlScene, slicer.app.temporaryPath)
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        return node


#
# SparseDiffusionEnhanceParameterNode
#

if not UNSUPPORTED:  # its field types come from the Lib

    @parameterNodeWrapper
    class SparseDiffusionEnhanceParameterNode:
        """The panel's state, saved with the scene.

        outputVolume - the volume to overwrite; None creates a new volume for each run.
        resultVolume - the latest result, shown by "Show comparison".
        checkpoint - a shipped model name or a .safetensors path (bound to the model list by hand, since
            that list depends on the task).
        steps, patch - 0 means the checkpoint's own default.
        gpu - nvidia-smi's index of the GPU to use when device is GPU.
        """

        inputVolume: vtkMRMLScalarVolumeNode
        outputVolume: vtkMRMLScalarVolumeNode
        resultVolume: vtkMRMLScalarVolumeNode
        task: Task = Task.DENOISE
        factor: Annotated[int, Choice(list(SR_FACTORS))] = 2
        axis: Axis = Axis.Z
        checkpoint: str = ""
        steps: Annotated[int, WithinRange(0, 1000)] = 0
        patch: Annotated[int, WithinRange(0, 512)] = 0
        overlap: Annotated[float, WithinRange(0.0, 0.75)] = 0.25
        seed: Annotated[int, WithinRange(0, 99999999)] = 0
        device: Device = Device.AUTO
        gpu: Annotated[int, WithinRange(0, 63)] = 0
        samples: Annotated[int, WithinRange(1, MAX_SAMPLES)] = 1
        compareAfterRun: bool = True
        overlay: Overlay = Overlay.NONE

        def settings(self) -> EnhanceSettings:
            return EnhanceSettings(
                task=self.task,
                checkpoint=self.checkpoint,
                factor=self.factor,
                axis=self.axis,
                steps=self.steps,
                patch=self.patch,
                overlap=self.overlap,
                seed=self.seed,
                device=self.device,
                gpu=self.gpu,
                samples=self.samples,
            )


#
# SparseDiffusionEnhanceWidget
#


class ProcessingState(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    IMPORTING = "importing"
    CANCELLING = "cancelling"


#: Button text and whether it can be clicked, per state; while running the button is Cancel.
BUTTON = {
    ProcessingState.IDLE: (_("Enhance"), True),
    ProcessingState.STARTING: (_("Starting…"), False),
    ProcessingState.RUNNING: (_("Cancel"), True),
    ProcessingState.IMPORTING: (_("Loading the result…"), False),
    ProcessingState.CANCELLING: (_("Cancelling…"), False),
}
BROWSE = "browse"
POLL_INTERVAL_MS = 200


class SparseDiffusionEnhanceWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._state = ProcessingState.IDLE
        self._job = None
        self._message = ""
        self._listedModels = None  # (task, factor) the model list was filled for
        self._gpus = []

    @property
    def state(self) -> ProcessingState:
        return self._state

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if UNSUPPORTED:
            label = qt.QLabel(UNSUPPORTED)
            label.wordWrap = True
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SparseDiffusionEnhance.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SparseDiffusionEnhanceLogic()
        self._gpus = listGpus()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._pollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.checkpointComboBox.connect("activated(int)", self.onCheckpointActivated)
        self._loadServerChoice()
        self.ui.processOnComboBox.connect("currentIndexChanged(int)", self._saveServerChoice)
        self.ui.serverUrlLineEdit.connect("textChanged(QString)", self._saveServerChoice)
        self.ui.serverTokenLineEdit.connect("textChanged(QString)", self._saveServerChoice)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None:  # None on an unsupported Slicer: nothing was set up
            self._stopJob()
            self.setParameterNode(None)
        self.removeObservers()

    def onReload(self) -> None:
        if not UNSUPPORTED:
            forgetImports()  # Slicer re-runs this file only; the Lib and the engine must be read afresh too
        super().onReload()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        # a run goes on while another module is shown; only the GUI stops following the parameter node
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._stopJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._listedModels = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """What the parameterNodeWrapper binding cannot do: task-dependent widgets, model and GPU lists."""
        sr = self._parameterNode.task == Task.SR
        self.ui.srLabel.visible = sr
        self.ui.srOptionsWidget.visible = sr
        if self._listedModels != self._modelFilter():
            self._listCheckpoints()
        self._selectCheckpoint(self._parameterNode.checkpoint)
        self._showGpuChoice()
        self._updateControls()

    def _loadServerChoice(self) -> None:
        settings = qt.QSettings()
        self.ui.processOnComboBox.currentIndex = 1 if settings.value(PROCESS_ON_SETTING) == "server" else 0
        self.ui.serverUrlLineEdit.text = settings.value(SERVER_URL_SETTING) or ""
        self.ui.serverTokenLineEdit.text = settings.value(SERVER_TOKEN_SETTING) or ""
        self._showServerFields()

    def _saveServerChoice(self, *unused) -> None:
        """Advanced -> Process on, URL and token go to the application settings (the token never to the scene)."""
        settings = qt.QSettings()
        settings.setValue(PROCESS_ON_SETTING, "server" if self.ui.processOnComboBox.currentIndex == 1 else "local")
        settings.setValue(SERVER_URL_SETTING, self.ui.serverUrlLineEdit.text.strip())
        settings.setValue(SERVER_TOKEN_SETTING, self.ui.serverTokenLineEdit.text.strip())
        self._showServerFields()
        if self._parameterNode:
            self._showGpuChoice()
            self._updateControls()

    def _showServerFields(self) -> None:
        """URL and token only for a server; device and GPU only for this computer (the server has its own)."""
        remote = self.ui.processOnComboBox.currentIndex == 1
        ui = self.ui
        for widget in (ui.serverUrlLabel, ui.serverUrlLineEdit, ui.serverTokenLabel, ui.serverTokenLineEdit):
            widget.visible = remote
        for widget in (ui.deviceLabel, ui.deviceComboBox):
            widget.visible = not remote

    def _showGpuChoice(self) -> None:
        """The GPU index only matters, and is only shown, for Device: GPU on a machine with several."""
        local = self.ui.processOnComboBox.currentIndex == 0
        several = local and self._parameterNode.device == Device.GPU and len(self._gpus) > 1
        self.ui.gpuLabel.visible = several
        self.ui.gpuWidget.visible = several
        if several:
            self.ui.gpuSpinBox.maximum = len(self._gpus) - 1
            self.ui.gpuNameLabel.text = self._gpus[min(self._parameterNode.gpu, len(self._gpus) - 1)]

    # Checkpoint list: shipped models for the task, a browsed file, and "Browse…"

    def _modelFilter(self) -> tuple[Task, int]:
        return self._parameterNode.task, self._parameterNode.factor

    def _listCheckpoints(self) -> None:
        """Fill the model list for the task (and SR factor); keep the choice if it suits them, else the first."""
        self._listedModels = self._modelFilter()
        task, factor = self._listedModels
        combo = self.ui.checkpointComboBox
        combo.blockSignals(True)
        combo.clear()
        for card in self.logic.shippedModels(task, factor):
            combo.addItem(card.describe(), card.name)
        if combo.count == 0:
            combo.addItem(_("No shipped model for this task and factor: browse for one"), "")
        combo.addItem(_("Browse…"), BROWSE)
        combo.blockSignals(False)
        chosen = self._parameterNode.checkpoint
        if not chosen or self.logic.checkpointProblem(chosen, task, factor):
            self._parameterNode.checkpoint = combo.itemData(0)

    def _selectCheckpoint(self, checkpoint: str) -> None:
        combo = self.ui.checkpointComboBox
        index = combo.findData(checkpoint)
        if index < 0:  # a file chosen earlier (e.g. restored with the scene)
            combo.insertItem(combo.count - 1, Path(checkpoint).name, checkpoint)
            index = combo.findData(checkpoint)
        combo.setCurrentIndex(index)
        combo.toolTip = checkpoint
        self.ui.checkpointInfoLabel.text = self.logic.checkpointDescription(checkpoint)

    def onCheckpointActivated(self, index: int) -> None:
        data = self.ui.checkpointComboBox.itemData(index)
        if data == BROWSE:
            data = self._browseCheckpoint()
        if data is not None:
            self._parameterNode.checkpoint = data
        self._selectCheckpoint(self._parameterNode.checkpoint)

    def _browseCheckpoint(self):
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Choose a checkpoint"), "", _("Checkpoints (*.safetensors)")
        )
        if not path:
            return None
        problem = self.logic.checkpointProblem(path, *self._modelFilter())
        if problem:
            slicer.util.errorDisplay(problem, windowTitle=_("Unsuitable checkpoint"))
            return None
        return path

    # Processing state: the one place that sets button, progress and status

    def _setState(self, state: ProcessingState) -> None:
        self._state = state
        self._updateControls()
        # paint now: the steps between states run on this thread without returning to the event loop
        self.ui.applyButton.repaint()
        self.ui.statusLabel.repaint()

    def _updateControls(self) -> None:
        idle = self._state == ProcessingState.IDLE
        text, clickable = BUTTON[self._state]
        reason = self._cannotStart() if idle else ""
        self.ui.applyButton.text = text
        self.ui.applyButton.enabled = clickable and not reason
        self.ui.applyButton.toolTip = reason or (
            _("Run the model on the input volume") if idle else _("Stop the run; the scene is left as it was")
        )
        self.ui.previewButton.enabled = idle and not reason
        self.ui.previewButton.toolTip = reason or _(
            "Enhance only the patches around the slice shown in the Red view, to see the effect before a whole run"
        )
        for section in (
            self.ui.inputsCollapsibleButton,
            self.ui.advancedCollapsibleButton,
            self.ui.outputsCollapsibleButton,
        ):
            section.enabled = idle
        self.ui.compareButton.enabled = idle and self._comparisonPair(self._parameterNode) is not None
        self.ui.progressBar.visible = not idle
        progress = self._job.progress if self._job else None
        if progress:
            self.ui.progressBar.maximum = progress.total  # 0 while the model loads: a busy bar
            self.ui.progressBar.value = progress.step
        self.ui.statusLabel.text = {
            ProcessingState.IDLE: self._message or reason or _("Ready."),
            ProcessingState.STARTING: _("Checking the Python packages the engine needs…"),
            ProcessingState.RUNNING: progress.describe() if progress else "",
            ProcessingState.IMPORTING: _("Loading the result into the scene…"),
            ProcessingState.CANCELLING: _("Stopping the worker…"),
        }[self._state]

    def _showStatus(self, text: str) -> None:
        """A status the state does not tell (e.g. which packages are being installed), painted at once."""
        self.ui.statusLabel.text = text
        self.ui.statusLabel.repaint()
        self._appendLog(text)

    def _appendLog(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def _cannotStart(self) -> str:
        parameters = self._parameterNode
        if not parameters or not parameters.inputVolume:
            return _("Select an input volume.")
        server = SparseDiffusionEnhanceLogic.serverConnection()
        if server is not None and not (server.url and server.token):
            return _("Enter the server's URL and token (Advanced), or choose Process on: This computer.")
        if not parameters.checkpoint:
            return _("Choose a model: Browse… for a .safetensors checkpoint.")
        if parameters.outputVolume == parameters.inputVolume:
            return _("The output must differ from the input: choose another output or Create new volume.")
        if parameters.compareAfterRun and parameters.overlay == Overlay.UNCERTAINTY and parameters.samples < 2:
            return _("The uncertainty overlay needs Samples of 2 or more (Advanced), or choose another overlay.")
        return ""

    @staticmethod
    def _comparisonPair(parameterNode):
        """(input, latest result), or None when there is no result or its input was deleted."""
        result = parameterNode.resultVolume if parameterNode else None
        source = inputOf(result) if result else None
        return (source, result) if source else None

    # Running

    def onApplyButton(self) -> None:
        if self._state == ProcessingState.RUNNING:
            self._job.cancel()  # returns at once; the timer sees the worker exit
            return
        self._startJob(preview=False)

    def onPreviewButton(self) -> None:
        self._startJob(preview=True)

    def _startJob(self, preview: bool) -> None:
        self._message = ""
        self.ui.logTextEdit.clear()
        self.logic.batch.server = self.logic.serverConnection()
        self._setState(ProcessingState.STARTING)
        try:
            if self.logic.ensureDependencies(onStatus=self._showStatus):
                self._showStatus(_("Exporting the input and starting the worker…"))
                self._job = self.logic.start(self._parameterNode, self._onJobChanged, self._appendLog, preview)
            else:
                self._message = _("Not started: the Python packages the engine needs are not installed.")
        except Exception as exc:
            logging.exception("Could not start enhancing")
            self._message = _("Not started: {error}").format(error=exc)
            slicer.util.errorDisplay(self._message)
        if self._job is None:
            self._setState(ProcessingState.IDLE)
            return
        self._timer.start()
        self._setState(ProcessingState.RUNNING)

    def _onJobChanged(self, job) -> None:
        if job.phase == Phase.IMPORTING:
            self._setState(ProcessingState.IMPORTING)
        elif job.phase == Phase.CANCELLING:
            self._setState(ProcessingState.CANCELLING)
        elif self._state == ProcessingState.RUNNING:
            self._updateControls()

    def _pollJob(self) -> None:
        if self._job.poll():
            return
        self._finishJob()

    def _stopJob(self) -> None:
        """Cancel a run and wait for its worker to exit (scene close, module reload: the run cannot go on)."""
        if self._job is None:
            return
        self._job.cancel()
        pollUntilFinished(self._job)
        self._finishJob()

    def _finishJob(self) -> None:
        self._timer.stop()
        job, self._job = self._job, None
        parameterNode = self.logic.getParameterNode()  # the run may end while another module is shown
        if job.phase == Phase.DONE:
            seconds = float(provenance(job.outputNode).get("seconds") or 0)
            self._message = _("Done in {time}: {name}").format(
                time=formatDuration(seconds), name=job.outputNode.GetName()
            )
            if warnings := provenance(job.outputNode).get("warnings"):
                self._message += "\n" + _("Warning: {warnings}").format(warnings=warnings)
            parameterNode.resultVolume = job.outputNode
        elif job.phase == Phase.CANCELLED:
            self._message = _("Cancelled; the scene was left as it was.")
        else:
            self._message = _("Failed: {error}").format(error=job.error.message)
            slicer.util.errorDisplay(job.error.userMessage(), detailedText=job.error.logTail)
        self._appendLog(self._message)
        slicer.util.showStatusMessage(f"Sparse Diffusion Enhance: {self._message}", 10000)
        self._setState(ProcessingState.IDLE)
        # the layout is only switched for a user who is looking at this module, not in the middle of another
        if job.phase == Phase.DONE and parameterNode.compareAfterRun and self.parent.isEntered:
            self.onCompareButton()

    def onCompareButton(self) -> None:
        parameterNode = self.logic.getParameterNode()
        pair = self._comparisonPair(parameterNode)
        if pair is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not show the comparison."), waitCursor=True):
            self.logic.showComparison(*pair, overlay=parameterNode.overlay)


#
# SparseDiffusionEnhanceLogic
#


class SparseDiffusionEnhanceLogic(ScriptedLoadableModuleLogic):
    """Slicer facade over ``SparseDiffusionEnhanceLib.EnhanceLogic``, usable from the Python console:

    logic = slicer.util.getModuleLogic("SparseDiffusionEnhance")
    enhanced = logic.enhance(volumeNode, task="denoise", checkpoint="ct-denoise")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.batch = EnhanceLogic(tempRoot=slicer.app.temporaryPath)

    def getParameterNode(self):
        return SparseDiffusionEnhanceParameterNode(super().getParameterNode())

    @staticmethod
    def serverConnection():
        """The processing server chosen in the panel (Advanced -> Process on: Server), or None for this computer."""
        settings = qt.QSettings()
        if settings.value(PROCESS_ON_SETTING) != "server":
            return None
        return ServerConnection(settings.value(SERVER_URL_SETTING) or "", settings.value(SERVER_TOKEN_SETTING) or "")

    def ensureDependencies(self, onStatus=None) -> bool:
        """Offer to install missing Python packages; True when the worker can run."""
        requirements = list(CLIENT_REQUIREMENTS) if self.batch.server else None  # a server runs the engine itself
        return ensureDependencies(slicer.util.confirmOkCancelDisplay, requirements, onStatus=onStatus)

    def enhance(self, inputNode, *args, **kwargs):
        self._requireDependencies()
        return self.batch.enhance(inputNode, *args, **kwargs)

    def preview(self, inputNode, sliceIndex, *args, **kwargs):
        """``enhance`` for the patches around input slice ``sliceIndex`` only (z, or the SR axis)."""
        self._requireDependencies()
        return self.batch.preview(inputNode, sliceIndex, *args, **kwargs)

    def enhanceFiles(self, paths, outputDir, *args, **kwargs):
        self._requireDependencies()
        return self.batch.enhanceFiles(paths, outputDir, *args, **kwargs)

    def _requireDependencies(self) -> None:
        if not self.ensureDependencies():
            raise RuntimeError("Python packages the engine needs are missing; see the module's requirements.txt")

    def start(self, parameterNode, onChange=None, onOutput=None, preview=False):
        """Start a run from the panel's parameters (dependencies checked by the caller); the running job. A preview
        enhances the slab around the input slice the Red view shows, into ``<input> preview``."""
        inputNode, settings = parameterNode.inputVolume, parameterNode.settings()
        if preview:
            sliceIndex = shownSlice(slicer.app.applicationLogic(), inputNode, settings.previewAxis)
            return self.batch.startPreview(inputNode, sliceIndex, settings, onChange, onOutput)
        return self.batch.startJob(inputNode, settings, parameterNode.outputVolume, onChange, onOutput)

    def showComparison(self, inputNode, enhancedNode, overlay: Overlay | str = "none") -> None:
        """Side by side, linked; ``overlay``: "none", "difference" or "uncertainty" over the enhanced view."""
        overlayNode = overlayVolume(inputNode, enhancedNode, overlay)
        applicationLogic = slicer.app.applicationLogic()
        showComparison(applicationLogic, inputNode, enhancedNode, overlayNode)
        slicer.util.resetSliceViews()
        if previewed := previewedSlice(enhancedNode):  # fitting centred the views: back to the previewed slice
            showSlice(applicationLogic, inputNode, *previewed)

    # Checkpoints, from their JSON cards only (the registry never imports torch)

    @staticmethod
    def shippedModels(task: Task, factor: int):
        from sdenhance import registry

        return registry.list_shipped(task.value, factor=factor if task == Task.SR else None)

    @staticmethod
    def checkpointProblem(nameOrPath: str, task: Task, factor: int) -> str:
        """Why a checkpoint cannot be used for ``task`` (and SR ``factor``), or "" if it can."""
        return EnhanceSettings(task=task, checkpoint=nameOrPath, factor=factor).checkpointProblem()

    @staticmethod
    def checkpointDescription(nameOrPath: str) -> str:
        from sdenhance import registry

        if not nameOrPath:
            return ""
        try:
            return registry.resolve(nameOrPath).describe()
        except registry.CheckpointError as exc:
            return str(exc)


#
# SparseDiffusionEnhanceTest
#


class SparseDiffusionEnhanceTest(ScriptedLoadableModuleTest):
    """Self-test on a synthetic volume with a tiny random-weight checkpoint made on the spot (no download).

    The tests that run the engine are skipped, visibly, where its packages are missing (as on a build
    machine under ctest): a test never installs anything. Install them with a first Enhance, then run the
    self-test again (Reload and Test) to run those too.
    """

    def setUp(self):
        if UNSUPPORTED:
            self.skipTest(UNSUPPORTED)
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Every test, as unittest would run them under ctest, skips included."""
        for test in (
            self.test_ParameterNodeSavedWithScene,
            self.test_PanelWidgetsAreBound,
            self.test_PanelServerChoice,
            self.test_EnhanceAndCompare,
            self.test_PanelEnhanceAndCancel,
            self.test_PanelPreview,
        ):
            try:
                self.setUp()
                test()
            except unittest.SkipTest as skipped:
                self.delayDisplay(f"Skipped {test.__name__}: {skipped}")

    def requireEngine(self):
        missing = missingRequirements(readRequirements())
        if missing:
            names = ", ".join(r.name for r in missing)
            self.skipTest(f"the engine's packages ({names}) are not installed; a first Enhance offers to install them")

    @staticmethod
    def ijkToRAS(volumeNode):
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def syntheticVolume(self, slices=12):
        zz, yy, xx = np.mgrid[-1 : 1 : complex(0, slices), -1:1:20j, -1:1:24j]
        array = 900 * np.exp(-3 * (xx**2 + yy**2 + zz**2)) - 400 + np.random.default_rng(0).normal(0, 30, xx.shape)
        ijkToRAS = np.array([[0.8, 0, 0, -10], [0, 0.7, 0.2, 5], [0, -0.1, 2.5, 30], [0, 0, 0, 1]])
        return slicer.util.addVolumeFromArray(array.astype(np.int16), ijkToRAS, name="Synthetic CT")

    def tinyCheckpoint(self, folder, task):
        """The engine's random-weight test checkpoint, made by the worker's Python (torch stays out of Slicer)."""
        code = "import sys; from sdenhance.testing import make_tiny_checkpoint; "
        code += "print(make_tiny_checkpoint(sys.argv[1], task=sys.argv[2]))"
        process = launchEngine(["-c", code, folder, task])
        output = process.communicate()[0]
        self.assertEqual(process.returncode, 0, output)
        return output.strip().splitlines()[-1]

    def logic(self):
        return SparseDiffusionEnhanceLogic()

    def setUpTinyRun(self, parameters, volume, folder, overlay):
        """Panel parameters for a CPU run of the tiny denoiser on ``volume`` into a new volume, compared after."""
        parameters.inputVolume = volume
        parameters.outputVolume = None
        parameters.task = Task.DENOISE
        parameters.checkpoint = self.tinyCheckpoint(folder, "denoise")
        parameters.device = Device.CPU
        parameters.samples = 1
        parameters.compareAfterRun = True
        parameters.overlay = overlay

    def waitUntilIdle(self, widget, timeoutSeconds=120):
        """Let the event loop run, so that the panel's timer polls the job, until the panel is idle again."""
        deadline = time.monotonic() + timeoutSeconds
        while widget.state != ProcessingState.IDLE:
            self.assertLess(time.monotonic(), deadline, "the run did not end")
            slicer.app.processEvents()
            time.sleep(0.02)

    @staticmethod
    def temporaryFolders():
        return set(Path(slicer.app.temporaryPath).glob("SparseDiffusionEnhance-*"))

    def test_ParameterNodeSavedWithScene(self):
        self.delayDisplay("Parameter node through scene save and load")
        volume = self.syntheticVolume()
        parameters = self.logic().getParameterNode()
        parameters.inputVolume = volume
        parameters.task = Task.SR
        parameters.factor = 4
        parameters.axis = Axis.X
        parameters.steps = 7
        parameters.device = Device.GPU
        parameters.gpu = 1
        parameters.checkpoint = "ct-sr"

        slicer.mrmlScene.SetSaveToXMLString(1)
        slicer.mrmlScene.Commit()
        slicer.mrmlScene.SetSaveToXMLString(0)
        scene = slicer.vtkMRMLScene()
        scene.SetLoadFromXMLString(1)
        scene.SetSceneXMLString(slicer.mrmlScene.GetSceneXMLString())
        scene.Import()

        restored = SparseDiffusionEnhanceParameterNode(
            scene.GetSingletonNode("SparseDiffusionEnhance", "vtkMRMLScriptedModuleNode")
        )
        self.assertEqual(restored.inputVolume.GetName(), "Synthetic CT")
        self.assertEqual((restored.task, restored.factor, restored.axis), (Task.SR, 4, Axis.X))
        self.assertEqual((restored.steps, restored.device, restored.checkpoint), (7, Device.GPU, "ct-sr"))
        self.assertEqual(restored.settings().workerEnvironment()["CUDA_VISIBLE_DEVICES"], "1")

    def test_PanelWidgetsAreBound(self):
        self.delayDisplay("Panel: task switches the options, Enhance needs an input and a usable overlay")
        widget = slicer.util.getModuleWidget("SparseDiffusionEnhance")
        widget.initializeParameterNode()
        parameters = widget.logic.getParameterNode()
        parameters.inputVolume = None
        self.assertFalse(widget.ui.applyButton.enabled)
        parameters.inputVolume = self.syntheticVolume()
        parameters.task = Task.SR
        self.assertFalse(widget.ui.srOptionsWidget.isHidden())
        self.assertEqual(widget.ui.taskComboBox.currentText, Task.SR.label())
        parameters.task = Task.DENOISE
        self.assertTrue(widget.ui.srOptionsWidget.isHidden())
        self.assertEqual(widget.ui.checkpointComboBox.itemText(widget.ui.checkpointComboBox.count - 1), "Browse…")
        self.assertEqual(widget.ui.applyButton.text, "Enhance")
        parameters.compareAfterRun = True
        parameters.overlay = Overlay.UNCERTAINTY
        parameters.samples = 1
        self.assertFalse(widget.ui.applyButton.enabled)  # refused at start, not an error after the run
        self.assertIn("Samples of 2 or more", widget.ui.applyButton.toolTip)
        parameters.samples = 2
        self.assertEqual(widget.ui.applyButton.enabled, bool(parameters.checkpoint))

    def test_PanelServerChoice(self):
        self.delayDisplay("Panel: Process on: Server asks for URL and token and keeps them out of the scene")
        widget = slicer.util.getModuleWidget("SparseDiffusionEnhance")
        widget.initializeParameterNode()
        widget.logic.getParameterNode().inputVolume = self.syntheticVolume()
        settings = qt.QSettings()
        keys = (PROCESS_ON_SETTING, SERVER_URL_SETTING, SERVER_TOKEN_SETTING)
        saved = [settings.value(key) for key in keys]
        token = "self-test-token-0123456789"
        try:
            widget.ui.processOnComboBox.currentIndex = 1
            widget.ui.serverUrlLineEdit.text = ""
            self.assertFalse(widget.ui.serverTokenLineEdit.isHidden())
            self.assertTrue(widget.ui.deviceComboBox.isHidden())
            self.assertFalse(widget.ui.applyButton.enabled)
            self.assertIn("server's URL and token", widget.ui.applyButton.toolTip)
            widget.ui.serverUrlLineEdit.text = "http://127.0.0.1:8765"
            widget.ui.serverTokenLineEdit.text = token
            self.assertEqual(settings.value(SERVER_TOKEN_SETTING), token)
            self.assertEqual(
                SparseDiffusionEnhanceLogic.serverConnection(), ServerConnection("http://127.0.0.1:8765", token)
            )
            slicer.mrmlScene.SetSaveToXMLString(1)
            slicer.mrmlScene.Commit()
            self.assertNotIn(token, slicer.mrmlScene.GetSceneXMLString())
        finally:
            for key, value in zip(keys, saved, strict=True):
                if value is None:
                    settings.remove(key)
                else:
                    settings.setValue(key, value)
            widget._loadServerChoice()
        self.assertEqual(
            widget.ui.deviceComboBox.isHidden(), SparseDiffusionEnhanceLogic.serverConnection() is not None
        )

    def test_EnhanceAndCompare(self):
        self.requireEngine()
        self.delayDisplay("Denoise a synthetic volume with a tiny model (2 samples), then compare with the uncertainty")
        volume = self.syntheticVolume()
        logic = self.logic()
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = self.tinyCheckpoint(folder, "denoise")
            enhanced = logic.enhance(volume, task="denoise", checkpoint=checkpoint, device="cpu", samples=2)
        self.assertEqual(enhanced.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        self.assertTrue(np.allclose(self.ijkToRAS(enhanced), self.ijkToRAS(volume)))
        self.assertEqual(provenance(enhanced)["checkpoint"], "tiny-denoise-ct")
        self.assertEqual(inputOf(enhanced).GetID(), volume.GetID())

        spread = uncertaintyOf(enhanced)
        self.assertEqual(spread.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())

        logic.showComparison(volume, enhanced, overlay=Overlay.UNCERTAINTY)
        layoutManager = slicer.app.layoutManager()
        self.assertEqual(layoutManager.layout, slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        red = layoutManager.sliceWidget("Red").mrmlSliceCompositeNode()
        yellow = layoutManager.sliceWidget("Yellow").mrmlSliceCompositeNode()
        self.assertEqual(red.GetBackgroundVolumeID(), volume.GetID())
        self.assertEqual(yellow.GetBackgroundVolumeID(), enhanced.GetID())
        self.assertTrue(red.GetLinkedControl() and yellow.GetLinkedControl())
        self.assertEqual(yellow.GetForegroundVolumeID(), spread.GetID())
        self.delayDisplay("Test passed")

    def test_PanelEnhanceAndCancel(self):
        self.requireEngine()
        self.delayDisplay("Panel: Enhance runs in the background, the timer brings the result; Cancel stops a run")
        slicer.util.selectModule("SparseDiffusionEnhance")  # shown, so a finished run switches the layout
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        widget = slicer.util.getModuleWidget("SparseDiffusionEnhance")
        parameters = widget.logic.getParameterNode()
        volume = self.syntheticVolume()
        foldersBefore = self.temporaryFolders()
        with tempfile.TemporaryDirectory() as folder:
            self.setUpTinyRun(parameters, volume, folder, Overlay.DIFFERENCE)
            widget.ui.applyButton.click()
            self.assertEqual(widget.state, ProcessingState.RUNNING)
            self.assertEqual(widget.ui.applyButton.text, "Cancel")
            self.waitUntilIdle(widget)

            result = parameters.resultVolume
            self.assertIsNotNone(result, widget.ui.statusLabel.text)
            self.assertEqual(inputOf(result).GetID(), volume.GetID())
            self.assertTrue(widget.ui.statusLabel.text.startswith("Done in"), widget.ui.statusLabel.text)
            layoutManager = slicer.app.layoutManager()
            self.assertEqual(layoutManager.layout, slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)

            # a run that ends while the user works in another module leaves that module's layout alone
            slicer.util.selectModule("Data")
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
            widget.ui.applyButton.click()
            self.waitUntilIdle(widget)
            self.assertNotEqual(parameters.resultVolume.GetID(), result.GetID())
            self.assertEqual(layoutManager.layout, slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
            slicer.util.selectModule("SparseDiffusionEnhance")
            result = parameters.resultVolume

            nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
            widget.ui.applyButton.click()
            widget.ui.applyButton.click()  # Cancel, long before the worker has even loaded the model
            self.assertIn(widget.state, (ProcessingState.CANCELLING, ProcessingState.IDLE))
            self.waitUntilIdle(widget)

        self.assertTrue(widget.ui.statusLabel.text.startswith("Cancelled"), widget.ui.statusLabel.text)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertEqual(parameters.resultVolume.GetID(), result.GetID())
        self.assertEqual(self.temporaryFolders(), foldersBefore)
        self.assertTrue(widget.ui.applyButton.enabled)
        self.delayDisplay("Test passed")

    def test_PanelPreview(self):
        self.requireEngine()
        self.delayDisplay(
            "Panel: Preview slice enhances the patches around the Red view's slice, shown beside the input"
        )
        slicer.util.selectModule("SparseDiffusionEnhance")
        widget = slicer.util.getModuleWidget("SparseDiffusionEnhance")
        parameters = widget.logic.getParameterNode()
        volume = self.syntheticVolume(slices=40)  # deeper than the tiny model's 16-slice patch
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        shown = shownSlice(slicer.app.applicationLogic(), volume, Axis.Z)
        with tempfile.TemporaryDirectory() as folder:
            self.setUpTinyRun(parameters, volume, folder, Overlay.NONE)
            widget.ui.previewButton.click()
            self.assertEqual(widget.ui.applyButton.text, "Cancel")
            self.waitUntilIdle(widget)

        preview = parameters.resultVolume
        self.assertIsNotNone(preview, widget.ui.statusLabel.text)
        self.assertEqual(preview.GetName(), "Synthetic CT preview")
        self.assertEqual(provenance(preview)["preview"], str(shown))
        self.assertLess(preview.GetImageData().GetDimensions()[2], 40)  # a slab, not the whole volume
        yellow = slicer.app.layoutManager().sliceWidget("Yellow").mrmlSliceCompositeNode()
        self.assertEqual(yellow.GetBackgroundVolumeID(), preview.GetID())
        self.assertEqual(shownSlice(slicer.app.applicationLogic(), volume, Axis.Z), shown)  # still that slice
        self.delayDisplay("Test passed")
