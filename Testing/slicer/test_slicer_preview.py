"""Preview of one slice against a real scene, the slice the Red view shows, and the estimate in the status text."""

from __future__ import annotations

import numpy as np
import pytest
from sde_slicer_helpers import SLICER_CORE_MISSING, ijkToRAS, obliqueMatrix, syntheticArray

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from SparseDiffusionEnhanceLib import (  # noqa: E402
    Axis,
    EnhanceSettings,
    Progress,
    previewedSlice,
    previewOf,
    provenance,
    shownSlice,
    showSlice,
)


def test_a_preview_asks_the_engine_for_its_slice_along_the_models_axis():
    args = EnhanceSettings(preview=12).workerArguments("in.nrrd", "out.nrrd")
    assert args[args.index("--preview") + 1] == "12"
    assert "--preview" not in EnhanceSettings().workerArguments("in.nrrd", "out.nrrd")
    assert EnhanceSettings().previewAxis == Axis.Z
    assert EnhanceSettings(task="sr", axis="x").previewAxis == Axis.X
    with pytest.raises(ValueError, match="must not be negative"):
        EnhanceSettings(preview=-1)


def test_the_status_tells_the_estimate_until_the_first_step_tells_the_time_left():
    assert Progress(step=0, total=5, estimate=125, device="cpu").describe() == "Step 0 of 5, estimated 2 min 05 s (cpu)"
    assert Progress(step=1, total=5, remaining=40, estimate=125).describe() == "Step 1 of 5, about 40 s left"
    assert Progress(step=0, total=5).describe() == "Step 0 of 5"


@pytest.fixture
def deepVolume(scene):
    """40 slices: several z-windows of the tiny model's 16-slice patch."""
    return slicer.util.addVolumeFromArray(syntheticArray(shape=(40, 14, 12)), obliqueMatrix(), name="CT deep")


def test_a_preview_is_its_slab_in_place_and_its_slice_is_the_whole_runs(logic, deepVolume, scene, tinyCheckpoints):
    from sdenhance.sampler import covering_slab

    options = {"checkpoint": str(tinyCheckpoints["denoise"]), "device": "cpu", "steps": 1, "seed": 2}
    estimates = []
    preview = logic.preview(
        deepVolume,
        17,
        onChange=lambda job: estimates.append(job.progress.estimate if job.progress else None),
        **options,
    )
    start, stop = covering_slab(40, 17, 18, 16, 0.25)
    assert (start, stop) == (12, 28)

    assert preview.GetName() == "CT deep preview" and preview.GetImageData().GetDimensions() == (12, 14, stop - start)
    shifted = np.eye(4)
    shifted[2, 3] = start  # voxel (i, j, 0) of the preview is voxel (i, j, start) of the input
    np.testing.assert_allclose(ijkToRAS(preview), ijkToRAS(deepVolume) @ shifted, atol=1e-9)
    full = logic.enhance(deepVolume, **options)
    previewed = slicer.util.arrayFromVolume(preview)[17 - start]
    np.testing.assert_array_equal(previewed, slicer.util.arrayFromVolume(full)[17])
    assert not np.array_equal(previewed, slicer.util.arrayFromVolume(deepVolume)[17])
    assert provenance(preview)["preview"] == "17" and previewedSlice(preview) == (Axis.Z, 17)
    assert previewedSlice(full) is None
    assert any(estimate is not None and estimate > 0 for estimate in estimates)

    # the next preview of the same input reuses its volume
    nodes = scene.GetNumberOfNodes()
    again = logic.preview(deepVolume, 3, **options)
    assert again.GetID() == preview.GetID() == previewOf(deepVolume).GetID() and scene.GetNumberOfNodes() == nodes
    assert again.GetImageData().GetDimensions() == (12, 14, 16)  # slices 0-15: the one window that holds slice 3
    np.testing.assert_allclose(ijkToRAS(again), ijkToRAS(deepVolume), atol=1e-9)


def test_the_slice_shown_in_red_is_found_and_shown_again(applicationLogic, scene):
    volume = slicer.util.addVolumeFromArray(syntheticArray(shape=(40, 14, 12)), obliqueMatrix(), name="CT deep")
    showSlice(applicationLogic, volume, Axis.Z, 23)
    assert shownSlice(applicationLogic, volume, Axis.Z) == 23
    showSlice(applicationLogic, volume, Axis.X, 5)
    assert shownSlice(applicationLogic, volume, Axis.X) == 5
    red = applicationLogic.GetSliceLogicByLayoutName("Red").GetSliceNode()
    red.JumpSliceByCentering(1e4, 1e4, 1e4)  # far outside the volume: the nearest slice
    assert shownSlice(applicationLogic, volume, Axis.Z) in (0, 39)

    # under a transform the view shows the transformed volume: three slices further along k, three slices less
    showSlice(applicationLogic, volume, Axis.Z, 23)
    matrix = np.eye(4)
    matrix[:3, 3] = 3 * obliqueMatrix()[:3, 2]  # three slice steps along the volume's k axis
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    assert shownSlice(applicationLogic, volume, Axis.Z) == 20
    showSlice(applicationLogic, volume, Axis.Z, 30)
    assert shownSlice(applicationLogic, volume, Axis.Z) == 30
