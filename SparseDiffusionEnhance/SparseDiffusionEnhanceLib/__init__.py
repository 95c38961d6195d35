"""Slicer-side logic of the SparseDiffusionEnhance module: no Qt, no torch, testable against a bare MRML scene.

The engine itself (``sdenhance``) runs in a worker process; from it only the torch-free ``registry`` and
``io`` modules are imported here.
"""

from .comparison import Overlay, differenceVolume, overlayVolume, showComparison, uncertaintyVolume
from .dependencies import ensureDependencies, missingRequirements, readRequirements
from .logic import EnhanceJob, EnhanceLogic, Phase, outputPathFor
from .settings import MAX_SAMPLES, SR_FACTORS, Axis, Device, EnhanceSettings, Task
from .volumes import exportVolume, importResult, inputOf, provenance, uncertaintyOf
from .worker import Progress, WorkerError, WorkerProcess, formatDuration, parseEvent

__all__ = [
    "MAX_SAMPLES",
    "SR_FACTORS",
    "Axis",
    "Device",
    "EnhanceJob",
    "EnhanceLogic",
    "EnhanceSettings",
    "Overlay",
    "Phase",
    "Progress",
    "Task",
    "WorkerError",
    "WorkerProcess",
    "differenceVolume",
    "ensureDependencies",
    "exportVolume",
    "formatDuration",
    "importResult",
    "inputOf",
    "missingRequirements",
    "outputPathFor",
    "overlayVolume",
    "parseEvent",
    "provenance",
    "readRequirements",
    "showComparison",
    "uncertaintyOf",
    "uncertaintyVolume",
]
