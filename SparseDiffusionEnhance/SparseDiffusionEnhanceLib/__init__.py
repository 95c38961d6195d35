"""Slicer-side logic of the SparseDiffusionEnhance module: no Qt, no torch, testable against a bare MRML scene.

The engine itself (``sdenhance``) runs in a worker process; here only its torch-free ``registry`` and ``errors``
are imported up front, and ``io`` (SimpleITK) when a volume's grid is needed.
"""

import sys

from .comparison import (
    Overlay,
    differenceVolume,
    overlayVolume,
    showComparison,
    shownSlice,
    showSlice,
    uncertaintyVolume,
)
from .dependencies import (
    CLIENT_REQUIREMENTS,
    ensureDependencies,
    installPlan,
    missingRequirements,
    readRequirements,
)
from .logic import EnhanceJob, EnhanceLogic, Phase, outputPathFor
from .remote import RemoteWorker, ServerConnection
from .sampledata import SAMPLE_NAME, loadLowDosePhantom
from .settings import MAX_SAMPLES, SR_FACTORS, Axis, Device, EnhanceSettings, Task, listGpus, parseGpuList
from .volumes import exportVolume, importResult, inputOf, previewedSlice, previewOf, provenance, uncertaintyOf
from .worker import (
    Progress,
    WorkerError,
    WorkerProcess,
    defaultPythonExecutable,
    formatDuration,
    launchEngine,
    parseEvent,
    pollUntilFinished,
)


def forgetImports() -> None:
    """Drop this package and the engine from ``sys.modules``, so that the next import reads them afresh.

    Slicer's Reload re-runs only the module's own file, which would otherwise keep using the old Lib.
    """
    for name in [n for n in sys.modules if n.partition(".")[0] in ("SparseDiffusionEnhanceLib", "sdenhance")]:
        del sys.modules[name]


__all__ = [
    "CLIENT_REQUIREMENTS",
    "MAX_SAMPLES",
    "SAMPLE_NAME",
    "SR_FACTORS",
    "Axis",
    "Device",
    "EnhanceJob",
    "EnhanceLogic",
    "EnhanceSettings",
    "Overlay",
    "Phase",
    "Progress",
    "RemoteWorker",
    "ServerConnection",
    "Task",
    "WorkerError",
    "WorkerProcess",
    "defaultPythonExecutable",
    "differenceVolume",
    "ensureDependencies",
    "exportVolume",
    "forgetImports",
    "formatDuration",
    "importResult",
    "inputOf",
    "installPlan",
    "launchEngine",
    "listGpus",
    "loadLowDosePhantom",
    "missingRequirements",
    "outputPathFor",
    "overlayVolume",
    "parseEvent",
    "parseGpuList",
    "pollUntilFinished",
    "previewOf",
    "previewedSlice",
    "provenance",
    "readRequirements",
    "showComparison",
    "showSlice",
    "shownSlice",
    "uncertaintyOf",
    "uncertaintyVolume",
]
