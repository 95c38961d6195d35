"""Fixtures of the headless tests of the Slicer module against a real MRML scene from the ``slicer-core`` wheel.

Modules that need the wheel start with ``pytest.importorskip("slicer")``, so without it they are skipped, not
failed. The wheel has MRML, the MRML logics and ``slicer.util``, but no application, Qt or
``slicer.parameterNodeWrapper``; the parameter node and the panel are covered by the module's self-test.
"""

from __future__ import annotations

import sys

import pytest
from sde_slicer_helpers import SLICER_CORE_MISSING, obliqueMatrix, syntheticArray


@pytest.fixture
def scene():
    """A fresh scene, set as ``slicer.mrmlScene`` as slicer.util expects."""
    slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(True)


@pytest.fixture
def applicationLogic(scene):
    """What Slicer's application sets up for its views: layout, Red/Yellow/Green slice logics, slice linking."""
    import slicer
    import vtk

    appLogic = slicer.vtkMRMLApplicationLogic()
    appLogic.SetMRMLScene(scene)
    layoutLogic = slicer.vtkMRMLLayoutLogic()
    layoutLogic.SetMRMLScene(scene)  # creates the layout node and the standard slice nodes
    logics = vtk.vtkCollection()
    for name in ("Red", "Yellow", "Green"):
        sliceLogic = slicer.vtkMRMLSliceLogic()
        sliceLogic.SetMRMLApplicationLogic(appLogic)
        sliceLogic.SetMRMLScene(scene)
        sliceLogic.SetSliceNode(scene.GetSingletonNode(name, "vtkMRMLSliceNode"))
        logics.AddItem(sliceLogic)
    appLogic.SetSliceLogics(logics)
    linkLogic = slicer.vtkMRMLSliceLinkLogic()
    linkLogic.SetMRMLApplicationLogic(appLogic)
    linkLogic.SetMRMLScene(scene)
    yield appLogic
    # detach before the scene is cleared: logics still observing a scene being emptied keep re-creating nodes
    for logic in (linkLogic, *(logics.GetItemAsObject(i) for i in range(3)), layoutLogic, appLogic):
        logic.SetMRMLScene(None)


@pytest.fixture
def obliqueVolume(scene):
    import slicer

    return slicer.util.addVolumeFromArray(syntheticArray(), obliqueMatrix(), name="CT oblique")


@pytest.fixture
def logic(scene, tmp_path):
    """The batch logic, running the worker with this interpreter and its temporary files in an empty folder."""
    from SparseDiffusionEnhanceLib import EnhanceLogic

    tempRoot = tmp_path / "temp"
    tempRoot.mkdir()
    return EnhanceLogic(python=sys.executable, tempRoot=str(tempRoot))


@pytest.fixture(scope="session")
def tinyCheckpoints(tmp_path_factory):
    """Random-weight checkpoints from the engine (denoise and x2-along-z SR), made once per session."""
    testing = pytest.importorskip("sdenhance.testing", reason="the engine (torch, monai) is not importable")
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "denoise": testing.make_tiny_checkpoint(folder, task="denoise"),
        "sr": testing.make_tiny_checkpoint(folder, task="sr", sr_factor=2, sr_axis="z"),
    }
