"""Scene <-> file round trips, compared in physical (RAS) space."""

from __future__ import annotations

import numpy as np
import pytest
from sde_slicer_helpers import SLICER_CORE_MISSING, ijkToRAS, voxelCornersRAS

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)
sitk = pytest.importorskip("SimpleITK")

from SparseDiffusionEnhanceLib import EnhanceSettings, exportVolume, importResult, inputOf, provenance  # noqa: E402
from SparseDiffusionEnhanceLib.volumes import engineVolume, placeBesideInput, setProvenance  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def physicalRAS(image, index) -> np.ndarray:
    """Where SimpleITK (LPS) puts a voxel index, in RAS."""
    return LPS_TO_RAS @ np.array(image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))


def writeWorkerResult(path, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    """A result file as the worker writes it (SimpleITK), here with a deliberately wrong header."""
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def test_export_is_uncompressed_and_places_voxels_where_the_node_does(obliqueVolume, tmp_path):
    path = exportVolume(obliqueVolume, tmp_path)
    assert b"encoding: raw" in path.read_bytes()[:2000]
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slicer.util.arrayFromVolume(obliqueVolume))
    matrix = ijkToRAS(obliqueVolume)
    for index in [(0, 0, 0), (11, 0, 0), (0, 13, 0), (0, 0, 9), (11, 13, 9), (3.5, 7.25, 2)]:
        np.testing.assert_allclose(physicalRAS(image, index), (matrix @ [*index, 1.0])[:3], atol=1e-4)
    # the engine's view of the node (used for the SR grid) is what the worker reads from the file
    grid = engineVolume(obliqueVolume)
    np.testing.assert_allclose(grid.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(grid.direction, image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(grid.spacing, image.GetSpacing(), atol=1e-6)
    assert grid.array.shape == sitk.GetArrayViewFromImage(image).shape


def test_round_trip_keeps_voxels_and_geometry(obliqueVolume, scene, tmp_path):
    path = exportVolume(obliqueVolume, tmp_path)
    nodesBefore = scene.GetNumberOfNodes()
    result = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "result")
    importResult(path, obliqueVolume, result, EnhanceSettings(task="denoise"))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result), slicer.util.arrayFromVolume(obliqueVolume))
    np.testing.assert_allclose(ijkToRAS(result), ijkToRAS(obliqueVolume), atol=1e-9)
    assert scene.GetNumberOfNodes() == nodesBefore + 1  # export and import added no storage or other nodes


def test_result_geometry_comes_from_the_input_not_the_worker_header(obliqueVolume, scene, tmp_path):
    array = slicer.util.arrayFromVolume(obliqueVolume) + 1.0
    path = writeWorkerResult(tmp_path / "out.nrrd", array, spacing=(3, 3, 3), origin=(100, 100, 100))
    result = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    importResult(path, obliqueVolume, result, EnhanceSettings(task="denoise"))
    np.testing.assert_allclose(ijkToRAS(result), ijkToRAS(obliqueVolume), atol=1e-9)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result), array)


@pytest.mark.parametrize(("factor", "axis", "numpyAxis", "ijkAxis"), [(2, "z", 0, 2), (4, "x", 2, 0)])
def test_super_resolution_grid_is_finer_with_the_same_extent(
    obliqueVolume, scene, tmp_path, factor, axis, numpyAxis, ijkAxis
):
    shape = list(slicer.util.arrayFromVolume(obliqueVolume).shape)
    shape[numpyAxis] *= factor
    path = writeWorkerResult(tmp_path / "sr.nrrd", np.zeros(shape))
    result = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    importResult(path, obliqueVolume, result, EnhanceSettings(task="sr", factor=factor, axis=axis))

    coarse, fine = ijkToRAS(obliqueVolume), ijkToRAS(result)
    np.testing.assert_allclose(fine[:3, ijkAxis], coarse[:3, ijkAxis] / factor, atol=1e-9)  # finer along axis
    others = [a for a in range(3) if a != ijkAxis]
    np.testing.assert_allclose(fine[:3, others], coarse[:3, others], atol=1e-9)  # unchanged across
    # the volumes cover exactly the same box in the patient
    np.testing.assert_allclose(voxelCornersRAS(result), voxelCornersRAS(obliqueVolume), atol=1e-6)


def test_result_of_the_wrong_size_is_refused(obliqueVolume, scene, tmp_path):
    path = writeWorkerResult(tmp_path / "bad.nrrd", np.zeros((3, 4, 5)))
    result = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="expected"):
        importResult(path, obliqueVolume, result, EnhanceSettings(task="sr", factor=2, axis="z"))


def test_result_goes_under_the_input_study_and_provenance_survives_scene_save(obliqueVolume, scene):
    shNode = scene.GetSubjectHierarchyNode()
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient 1")
    study = shNode.CreateStudyItem(patient, "CT study")
    shNode.CreateItem(study, obliqueVolume)  # in Slicer the DICOM loader does this
    result = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT oblique enhanced (denoise)")
    settings = EnhanceSettings(task="denoise", checkpoint="ct-denoise", seed=7)
    finished = {
        "checkpoint": "ct-denoise",
        "steps": 4,
        "seed": 7,
        "device": "cpu",
        "seconds": 1.5,
        "engine_version": "0.1.0",
    }

    placeBesideInput(result, obliqueVolume)
    setProvenance(result, obliqueVolume, settings, finished)

    assert shNode.GetItemParent(shNode.GetItemByDataNode(result)) == study
    scene.SetSaveToXMLString(1)
    scene.Commit()
    restored = slicer.vtkMRMLScene()
    restored.SetLoadFromXMLString(1)
    restored.SetSceneXMLString(scene.GetSceneXMLString())
    restored.Import()
    restoredResult = restored.GetFirstNodeByName("CT oblique enhanced (denoise)")
    assert inputOf(restoredResult).GetName() == "CT oblique"
    attributes = provenance(restoredResult)
    assert attributes == {
        "input": "CT oblique",
        "task": "denoise",
        "checkpoint": "ct-denoise",
        "steps": "4",
        "seed": "7",
        "samples": "1",
        "device": "cpu",
        "seconds": "1.5",
        "engineVersion": "0.1.0",
    }
