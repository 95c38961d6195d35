"""Comparison layout on headless slice logics: side by side, linked, same window/level, difference overlay."""

from __future__ import annotations

import numpy as np
import pytest
from sde_slicer_helpers import SLICER_CORE_MISSING, ijkToRAS

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from sdenhance.io import resample_onto  # noqa: E402
from SparseDiffusionEnhanceLib import EnhanceSettings, Overlay, differenceVolume, overlayVolume, showComparison  # noqa: E402
from SparseDiffusionEnhanceLib.volumes import (  # noqa: E402
    UNCERTAINTY_REFERENCE,
    engineVolume,
    expectedGrid,
    setGeometry,
)


def enhancedCopy(inputNode, offset=5.0):
    """A stand-in result: the input plus a constant, on the input grid."""
    array = slicer.util.arrayFromVolume(inputNode).astype(np.float32) + offset
    node = slicer.util.addVolumeFromArray(array, ijkToRAS(inputNode), name="enhanced")
    return node


def test_side_by_side_views_show_input_and_result_linked(applicationLogic, obliqueVolume, scene):
    obliqueVolume.GetDisplayNode().SetAutoWindowLevel(False)
    obliqueVolume.GetDisplayNode().SetWindowLevel(400, 40)
    enhanced = enhancedCopy(obliqueVolume)

    showComparison(applicationLogic, obliqueVolume, enhanced)

    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    red, yellow = (applicationLogic.GetSliceLogicByLayoutName(n) for n in ("Red", "Yellow"))
    assert red.GetSliceCompositeNode().GetBackgroundVolumeID() == obliqueVolume.GetID()
    assert yellow.GetSliceCompositeNode().GetBackgroundVolumeID() == enhanced.GetID()
    assert (enhanced.GetDisplayNode().GetWindow(), enhanced.GetDisplayNode().GetLevel()) == (400, 40)

    # scroll and zoom in Red as a user would (interaction flags on): Yellow follows
    redNode, yellowNode = red.GetSliceNode(), yellow.GetSliceNode()
    redNode.SetInteractionFlags(redNode.SliceToRASFlag | redNode.FieldOfViewFlag)
    redNode.SetInteracting(True)
    red.SetSliceOffset(red.GetSliceOffset() + 7.5)
    redNode.SetFieldOfView(60, 60, 1)
    redNode.SetInteracting(False)
    assert yellowNode.GetOrientationString() == redNode.GetOrientationString()
    assert yellow.GetSliceOffset() == pytest.approx(red.GetSliceOffset())
    assert yellowNode.GetFieldOfView()[:2] == pytest.approx((60, 60))


def test_difference_overlay_on_the_same_grid(applicationLogic, obliqueVolume, scene):
    enhanced = enhancedCopy(obliqueVolume, offset=5.0)

    difference = differenceVolume(obliqueVolume, enhanced)
    showComparison(applicationLogic, obliqueVolume, enhanced, overlayNode=difference)

    np.testing.assert_allclose(slicer.util.arrayFromVolume(difference), 5.0)
    np.testing.assert_allclose(ijkToRAS(difference), ijkToRAS(enhanced))
    assert difference.GetDisplayNode().GetLevel() == 0.0  # symmetric around "no change"
    yellow = applicationLogic.GetSliceLogicByLayoutName("Yellow").GetSliceCompositeNode()
    assert yellow.GetForegroundVolumeID() == difference.GetID() and yellow.GetForegroundOpacity() == 0.5
    nodes = scene.GetNumberOfNodes()
    assert differenceVolume(obliqueVolume, enhanced).GetID() == difference.GetID()  # reused, not duplicated
    assert scene.GetNumberOfNodes() == nodes


def test_super_resolution_difference_is_taken_on_the_fine_grid(obliqueVolume, scene):
    settings = EnhanceSettings(task="sr", factor=2, axis="z")
    grid = expectedGrid(obliqueVolume, settings)
    interpolated = resample_onto(
        engineVolume(obliqueVolume).with_array(slicer.util.arrayFromVolume(obliqueVolume)), grid
    )
    enhanced = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "enhanced SR")
    slicer.util.updateVolumeFromArray(enhanced, interpolated.array + 3.0)
    setGeometry(enhanced, grid)

    difference = differenceVolume(obliqueVolume, enhanced)

    assert difference.GetImageData().GetDimensions() == enhanced.GetImageData().GetDimensions()
    np.testing.assert_allclose(slicer.util.arrayFromVolume(difference), 3.0, atol=1e-3)


def test_uncertainty_overlay_shows_the_results_spread_from_zero(applicationLogic, obliqueVolume, scene):
    enhanced = enhancedCopy(obliqueVolume)
    with pytest.raises(ValueError, match="set Samples to 2 or more"):
        overlayVolume(obliqueVolume, enhanced, Overlay.UNCERTAINTY)
    spreadValues = np.linspace(0, 20, slicer.util.arrayFromVolume(enhanced).size, dtype=np.float32)
    spread = slicer.util.addVolumeFromArray(
        spreadValues.reshape(slicer.util.arrayFromVolume(enhanced).shape), ijkToRAS(enhanced), name="spread"
    )
    enhanced.SetNodeReferenceID(UNCERTAINTY_REFERENCE, spread.GetID())

    overlay = overlayVolume(obliqueVolume, enhanced, "uncertainty")
    showComparison(applicationLogic, obliqueVolume, enhanced, overlay)

    assert overlay.GetID() == spread.GetID()
    display = overlay.GetDisplayNode()
    top = np.percentile(spreadValues, 99.5)
    assert display.GetWindow() == pytest.approx(top) and display.GetLevel() == pytest.approx(top / 2)
    yellow = applicationLogic.GetSliceLogicByLayoutName("Yellow").GetSliceCompositeNode()
    assert yellow.GetForegroundVolumeID() == spread.GetID()
    assert overlayVolume(obliqueVolume, enhanced, Overlay.NONE) is None


def test_an_oblique_red_view_is_matched_in_yellow_and_they_scroll_together(applicationLogic, obliqueVolume, scene):
    import vtk

    red, yellow = (applicationLogic.GetSliceLogicByLayoutName(n) for n in ("Red", "Yellow"))
    redNode, yellowNode = red.GetSliceNode(), yellow.GetSliceNode()
    rotation = vtk.vtkTransform()  # a reformatted Red view: no orientation preset names this plane
    rotation.RotateX(25)
    rotation.RotateY(-40)
    redNode.GetSliceToRAS().DeepCopy(rotation.GetMatrix())
    redNode.UpdateMatrices()
    assert redNode.GetOrientation() == "Reformat"

    showComparison(applicationLogic, obliqueVolume, enhancedCopy(obliqueVolume))

    np.testing.assert_allclose(
        slicer.util.arrayFromVTKMatrix(yellowNode.GetSliceToRAS()),
        slicer.util.arrayFromVTKMatrix(redNode.GetSliceToRAS()),
    )
    redNode.SetInteractionFlags(redNode.SliceToRASFlag)
    redNode.SetInteracting(True)
    red.SetSliceOffset(red.GetSliceOffset() + 4.0)
    redNode.SetInteracting(False)
    np.testing.assert_allclose(
        slicer.util.arrayFromVTKMatrix(yellowNode.GetSliceToRAS()),
        slicer.util.arrayFromVTKMatrix(redNode.GetSliceToRAS()),
        atol=1e-9,
    )
