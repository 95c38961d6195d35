"""A sample to try the module without data of one's own, generated on the spot (no download)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .volumes import readVolumeFile
from .worker import launchEngine

SAMPLE_NAME = "Low-dose CT phantom"
#: Run by the worker's Python: the phantom and the dose simulation need the engine's numpy/scipy code only.
SCRIPT = Path(__file__).with_name("phantomscript.py")


def writeLowDosePhantom(path: Path, python: str | None = None) -> Path:
    """The engine's torso phantom at 25 % dose (projection-domain noise) as a file; takes a few seconds."""
    process = launchEngine([str(SCRIPT), str(path)], python=python)
    output = process.communicate()[0]
    if process.returncode != 0:
        raise RuntimeError(f"Could not make the phantom (exit code {process.returncode}):\n{output[-2000:]}")
    return path


def loadLowDosePhantom(scene, tempRoot: str | None = None, python: str | None = None):
    """A new volume node holding the low-dose phantom, shown with a soft-tissue window where the noise is."""
    with tempfile.TemporaryDirectory(prefix="SparseDiffusionEnhance-", dir=tempRoot) as folder:
        path = writeLowDosePhantom(Path(folder) / "phantom.nrrd", python)
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", SAMPLE_NAME)
        try:
            readVolumeFile(path, node)
        except OSError:
            scene.RemoveNode(node)
            raise
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(400, 40)
    return node
