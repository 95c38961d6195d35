"""Scene <-> files: volumes cross the process boundary as uncompressed NRRD in a temporary folder.

The result's geometry is always taken from the input node (for super-resolution through the engine's own
``fine_grid``), never from the worker's file header, so a worker that writes a wrong header cannot misplace
the result in the patient.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import slicer
import vtk

from .settings import Axis, EnhanceSettings, Task

if TYPE_CHECKING:
    from sdenhance.io import Volume

#: Node attribute prefix of the provenance written on each result.
ATTRIBUTE_PREFIX = "SparseDiffusionEnhance."
#: Node reference from a result to the volume it was made from, for "Show comparison".
INPUT_REFERENCE = ATTRIBUTE_PREFIX + "input"
#: Node reference from a result to the spread of its samples (only when it was made from several).
UNCERTAINTY_REFERENCE = ATTRIBUTE_PREFIX + "uncertainty"
#: ITK (LPS) and Slicer (RAS) physical axes differ by the sign of x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def exportVolume(volumeNode, folder: Path, name: str = "input.nrrd") -> Path:
    """Write ``volumeNode`` (its local geometry, parent transforms not applied) without compression."""
    path = Path(folder) / name
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not added to the scene: the scene stays as it was
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # compressing costs more than it saves for a file read once
    if not storage.WriteData(volumeNode):
        raise OSError(f"could not write {volumeNode.GetName()} to {path}")
    return path


def readVolumeFile(path: Path, volumeNode) -> None:
    """Load a file the worker wrote into ``volumeNode`` (no storage node is left in the scene)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(volumeNode):
        raise OSError(f"could not read the worker's file {path}")


def engineVolume(volumeNode) -> Volume:
    """The node's grid as an ``sdenhance`` Volume (LPS, ITK order) without copying voxels."""
    from sdenhance.io import Volume  # imports SimpleITK: only when needed, not at every Slicer start

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(matrix)
    directionsRAS = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    dims = volumeNode.GetImageData().GetDimensions()
    return Volume(
        # a zero-stride placeholder: only the shape matters for geometry
        array=np.broadcast_to(np.float32(0), tuple(reversed(dims))),
        spacing=tuple(volumeNode.GetSpacing()),
        origin=tuple((LPS_TO_RAS @ np.array(volumeNode.GetOrigin())).tolist()),
        direction=tuple((LPS_TO_RAS @ directionsRAS).ravel().tolist()),
    )


def setGeometry(volumeNode, volume: Volume) -> None:
    """Put the grid of an ``sdenhance`` Volume (LPS) on a node (RAS)."""
    directionsRAS = LPS_TO_RAS @ np.asarray(volume.direction, dtype=float).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, directionsRAS[r, c])
    volumeNode.SetIJKToRASDirectionMatrix(matrix)
    volumeNode.SetSpacing(*volume.spacing)
    volumeNode.SetOrigin(*(LPS_TO_RAS @ np.asarray(volume.origin, dtype=float)).tolist())


def expectedGrid(inputNode, settings: EnhanceSettings, slab: dict | None = None) -> Volume:
    """Grid of the result: the input's (denoise), or the engine's finer SR grid over the same extent; for a
    preview only the ``slab`` of it the worker enhanced (its ``preview`` field: axis, start, stop)."""
    grid = engineVolume(inputNode)
    if settings.task == Task.SR:
        from sdenhance.io import fine_grid

        grid = fine_grid(grid, settings.factor, settings.axis.value)
    if slab is not None:
        from sdenhance.io import AXIS_TO_NUMPY, crop

        axis, start, size = AXIS_TO_NUMPY[slab["axis"]], [0, 0, 0], list(grid.array.shape)
        start[axis], size[axis] = slab["start"], slab["stop"] - slab["start"]
        grid = crop(grid, start, size)
    return grid


def importResult(path: Path, inputNode, outputNode, settings: EnhanceSettings, slab: dict | None = None):
    """Load the worker's file into ``outputNode`` and give it the geometry derived from ``inputNode`` (and, for a
    preview, the slab the worker reported)."""
    grid = expectedGrid(inputNode, settings, slab)
    readVolumeFile(path, outputNode)
    received = tuple(reversed(outputNode.GetImageData().GetDimensions()))
    if received != grid.array.shape:
        raise ValueError(f"the worker returned a {received} volume, expected {grid.array.shape}")
    setGeometry(outputNode, grid)
    outputNode.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())
    return outputNode


def resultName(inputNode, settings: EnhanceSettings) -> str:
    if settings.preview is not None:
        return f"{inputNode.GetName()} preview"
    return f"{inputNode.GetName()} enhanced ({settings.describe()})"


def placeBesideInput(outputNode, inputNode) -> None:
    """Put the result under the input's subject-hierarchy parent (same patient and study)."""
    shNode = inputNode.GetScene().GetSubjectHierarchyNode()
    inputItem = shNode.GetItemByDataNode(inputNode)
    parent = shNode.GetItemParent(inputItem) if inputItem else shNode.GetSceneItemID()
    outputItem = shNode.GetItemByDataNode(outputNode) or shNode.CreateItem(parent, outputNode)
    shNode.SetItemParent(outputItem, parent)


def setProvenance(outputNode, inputNode, settings: EnhanceSettings, finished: dict) -> None:
    """Record how the result was made, as node attributes (saved with the scene), replacing those of any
    earlier run into the same node."""
    for name in outputNode.GetAttributeNames() or ():
        if name.startswith(ATTRIBUTE_PREFIX):
            outputNode.RemoveAttribute(name)
    values = {
        "input": inputNode.GetName(),
        "task": settings.task.value,
        "checkpoint": finished.get("checkpoint", settings.checkpoint),
        "steps": finished.get("steps", settings.steps),
        "seed": finished.get("seed", settings.seed),
        "samples": finished.get("samples", settings.samples),
        "device": finished.get("device", settings.device.value),
        "seconds": finished.get("seconds", ""),
        "engineVersion": finished.get("engine_version", ""),
    }
    if settings.task == Task.SR:
        values.update(factor=settings.factor, axis=settings.axis.value)
    if settings.preview is not None:  # the input slice it previews, along settings.previewAxis
        values["preview"] = settings.preview
    if finished.get("server"):  # made on a processing server (its URL; never the token)
        values["server"] = finished["server"]
    if finished.get("warnings"):  # e.g. noise or spacing outside the model's range: kept with the result
        values["warnings"] = " | ".join(finished["warnings"])
    for key, value in values.items():
        outputNode.SetAttribute(ATTRIBUTE_PREFIX + key, str(value))
    outputNode.SetNodeReferenceID(INPUT_REFERENCE, inputNode.GetID())


def previewOf(inputNode):
    """The preview made earlier from ``inputNode``, which the next one reuses (None if there is none)."""
    volumes = inputNode.GetScene().GetNodesByClass("vtkMRMLScalarVolumeNode")
    for node in (volumes.GetItemAsObject(i) for i in range(volumes.GetNumberOfItems())):
        source = inputOf(node)
        if (
            node.GetAttribute(ATTRIBUTE_PREFIX + "preview") is not None
            and source
            and source.GetID() == inputNode.GetID()
        ):
            return node
    return None


def previewedSlice(resultNode) -> tuple[Axis, int] | None:
    """(axis, index) of the input slice a preview was made around; None for other volumes."""
    values = provenance(resultNode)
    if "preview" not in values:
        return None
    settings = EnhanceSettings(task=values.get("task", "denoise"), axis=values.get("axis", "z"))
    return settings.previewAxis, int(values["preview"])


def inputOf(resultNode):
    """The volume a result was made from (None for other volumes, or if it was deleted)."""
    return resultNode.GetNodeReference(INPUT_REFERENCE)


def uncertaintyOf(resultNode):
    """The spread of the samples a result was averaged from (None for a single-sample result)."""
    return resultNode.GetNodeReference(UNCERTAINTY_REFERENCE)


def provenance(volumeNode) -> dict[str, str]:
    """The provenance attributes of a result (empty for other volumes)."""
    names = volumeNode.GetAttributeNames() or ()
    return {n[len(ATTRIBUTE_PREFIX) :]: volumeNode.GetAttribute(n) for n in names if n.startswith(ATTRIBUTE_PREFIX)}
