"""Side-by-side comparison: Red shows the input, Yellow the enhanced volume, both views linked."""

from __future__ import annotations

import enum

import numpy as np
import slicer
import vtk

from .settings import Axis
from .volumes import engineVolume, uncertaintyOf

DIFFERENCE_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
UNCERTAINTY_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
OVERLAY_OPACITY = 0.5
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

    ``overlayNode`` (from ``overlayVolume``) is blended over the enhanced volume in Yellow. Fitting the views
    to the volumes is left to the caller (``slicer.util.resetSliceViews()`` in the application).
    """
    scene = inputNode.GetScene()
    for node in (inputNode, enhancedNode, overlayNode):
        if node is not None and node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
    matchWindowLevel(inputNode, enhancedNode)
    layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    layoutNode.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    red, yellow = (applicationLogic.GetSliceLogicByLayoutName(name) for name in ("Red", "Yellow"))
    # the same plane in both views, or linked scrolling would move through different planes; copying the
    # matrix also covers an oblique (reformatted) Red view, which has no orientation preset to name
    yellowNode = yellow.GetSliceNode()
    yellowNode.GetSliceToRAS().DeepCopy(red.GetSliceNode().GetSliceToRAS())
    yellowNode.UpdateMatrices()
    for logic, background in ((red, inputNode), (yellow, enhancedNode)):
        composite = logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLinkedControl(True)
    if overlayNode is not None:
        composite = yellow.GetSliceCompositeNode()
        composite.SetForegroundVolumeID(overlayNode.GetID())
        composite.SetForegroundOpacity(OVERLAY_OPACITY)


#: The IJK index of each image axis.
IJK_COLUMN = {Axis.X: 0, Axis.Y: 1, Axis.Z: 2}


def shownSlice(applicationLogic, volumeNode, axis: Axis) -> int:
    """The slice of ``volumeNode`` along ``axis`` through the centre of the Red view (the nearest slice when the
    centre lies outside the volume)."""
    sliceToRAS = applicationLogic.GetSliceLogicByLayoutName("Red").GetSliceNode().GetSliceToRAS()
    centre = [sliceToRAS.GetElement(row, 3) for row in range(3)]
    worldToLocal = vtk.vtkGeneralTransform()  # the volume may sit under a transform, linear or not
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToLocal)
    rasToIJK = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIJK)
    ijk = rasToIJK.MultiplyPoint([*worldToLocal.TransformPoint(centre), 1.0])
    column = IJK_COLUMN[axis]
    return int(np.clip(round(ijk[column]), 0, volumeNode.GetImageData().GetDimensions()[column] - 1))


def showSlice(applicationLogic, volumeNode, axis: Axis, index: int) -> None:
    """Centre the Red and Yellow views on the centre of slice ``index`` of ``volumeNode`` along ``axis`` (so that
    ``shownSlice`` finds it again, whatever the views' orientation)."""
    ijk = [(size - 1) / 2 for size in volumeNode.GetImageData().GetDimensions()]
    ijk[IJK_COLUMN[axis]] = index
    ijkToRAS = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRAS)
    localToWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volumeNode.GetParentTransformNode(), None, localToWorld)
    point = localToWorld.TransformPoint(ijkToRAS.MultiplyPoint([*ijk, 1.0])[:3])
    for name in ("Red", "Yellow"):
        applicationLogic.GetSliceLogicByLayoutName(name).GetSliceNode().JumpSliceByCentering(*point)


class Overlay(enum.Enum):
    NONE = "none"
    DIFFERENCE = "difference"
    UNCERTAINTY = "uncertainty"

    def label(self) -> str:
        """Text shown in the panel (parameterNodeWrapper's combo box connector calls this)."""
        return {
            "none": "None",
            "difference": "Difference (enhanced − input)",
            "uncertainty": "Uncertainty (spread of the samples)",
        }[self.value]


def overlayVolume(inputNode, enhancedNode, overlay: Overlay | str):
    """The volume to blend over the enhanced view, styled for it; None for ``Overlay.NONE``."""
    overlay = Overlay(overlay)
    if overlay == Overlay.DIFFERENCE:
        return differenceVolume(inputNode, enhancedNode)
    if overlay == Overlay.UNCERTAINTY:
        return uncertaintyVolume(enhancedNode)
    return None


def uncertaintyVolume(enhancedNode):
    """The result's per-voxel spread across samples, shown from 0 (dark) to its 99.5th percentile (bright)."""
    node = uncertaintyOf(enhancedNode)
    if node is None:
        raise ValueError(
            f"'{enhancedNode.GetName()}' was made from one sample, so it has no uncertainty: "
            "set Samples to 2 or more (Advanced) and enhance again"
        )
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    top = float(np.percentile(slicer.util.arrayFromVolume(node), 99.5)) or 1.0
    display.SetWindowLevel(top, top / 2)
    if node.GetScene().GetNodeByID(UNCERTAINTY_COLOR_NODE_ID):
        display.SetAndObserveColorNodeID(UNCERTAINTY_COLOR_NODE_ID)
    return node


def differenceVolume(inputNode, enhancedNode):
    """``enhanced - input`` on the enhanced grid, with a symmetric blue-red colour map.

    For super-resolution the input is first brought onto the fine grid with the engine's own interpolation,
    so the difference shows what the model added beyond plain interpolation.
    """
    from sdenhance.io import resample_onto  # imports SimpleITK: only when a difference is asked for

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
