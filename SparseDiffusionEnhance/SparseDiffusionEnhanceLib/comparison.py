"""Side-by-side comparison: Red shows the input, Yellow the enhanced volume, both views linked."""

from __future__ import annotations

import numpy as np
import slicer
from sdenhance.io import resample_onto

from .volumes import engineVolume

DIFFERENCE_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
DIFFERENCE_OPACITY = 0.5
#: Node reference from a result to its difference volume, so repeated comparisons reuse one node.
DIFFERENCE_REFERENCE = "SparseDiffusionEnhance.difference"


def matchWindowLevel(referenceNode, volumeNode) -> None:
    """Show ``volumeNode`` with the window/level of ``referenceNode`` so differences are not display artefacts."""
    reference = referenceNode.GetDisplayNode()
    display = volumeNode.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(reference.GetWindow(), reference.GetLevel())
    display.SetAndObserveColorNodeID(reference.GetColorNodeID())


def showComparison(applicationLogic, inputNode, enhancedNode, overlayNode=None) -> None:
    """Switch to the side-by-side layout with linked Red (input) and Yellow (enhanced) views.

    ``overlayNode`` (e.g. from ``differenceVolume``) is blended over the enhanced volume in Yellow.
    """
    scene = inputNode.GetScene()
    for node in (inputNode, enhancedNode, overlayNode):
        if node is not None and node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
    matchWindowLevel(inputNode, enhancedNode)
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    red, yellow = (applicationLogic.GetSliceLogicByLayoutName(name) for name in ("Red", "Yellow"))
    # same orientation in both views, or linked scrolling would move through different planes
    yellow.GetSliceNode().SetOrientation(red.GetSliceNode().GetOrientationString())
    for logic, background in ((red, inputNode), (yellow, enhancedNode)):
        composite = logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLinkedControl(True)
        logic.FitSliceToBackground()
    if overlayNode is not None:
        composite = yellow.GetSliceCompositeNode()
        composite.SetForegroundVolumeID(overlayNode.GetID())
        composite.SetForegroundOpacity(DIFFERENCE_OPACITY)


def differenceVolume(inputNode, enhancedNode):
    """``enhanced - input`` on the enhanced grid, with a symmetric blue-red colour map.

    For super-resolution the input is first brought onto the fine grid with the engine's own interpolation,
    so the difference shows what the model added beyond plain interpolation.
    """
    inputVolume = engineVolume(inputNode).with_array(slicer.util.arrayFromVolume(inputNode))
    enhancedVolume = engineVolume(enhancedNode).with_array(slicer.util.arrayFromVolume(enhancedNode))
    if inputVolume.array.shape != enhancedVolume.array.shape:
        inputVolume = resample_onto(inputVolume, enhancedVolume)
    difference = enhancedVolume.array.astype(np.float32) - inputVolume.array.astype(np.float32)
    differenceNode = enhancedNode.GetNodeReference(DIFFERENCE_REFERENCE)
    if differenceNode is None:
        differenceNode = inputNode.GetScene().AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", f"{enhancedNode.GetName()} difference"
        )
        enhancedNode.SetNodeReferenceID(DIFFERENCE_REFERENCE, differenceNode.GetID())
    slicer.util.updateVolumeFromArray(differenceNode, difference)
    differenceNode.CopyOrientation(enhancedNode)
    differenceNode.SetAndObserveTransformNodeID(enhancedNode.GetTransformNodeID())
    differenceNode.CreateDefaultDisplayNodes()
    display = differenceNode.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    # symmetric around zero so that "no change" is the colour map's centre
    extent = float(np.percentile(np.abs(difference), 99.5)) or 1.0
    display.SetWindowLevel(2 * extent, 0.0)
    if inputNode.GetScene().GetNodeByID(DIFFERENCE_COLOR_NODE_ID):
        display.SetAndObserveColorNodeID(DIFFERENCE_COLOR_NODE_ID)
    return differenceNode
