import numpy as np
import pytest
import SimpleITK as sitk
from sdenhance.io import Volume, VolumeError, fine_grid, read_volume, validate_intensities, write_volume

OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())


def _volume(shape=(6, 7, 8)):
    array = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return Volume(array, spacing=(0.7, 0.8, 3.0), origin=(-10.0, 20.5, 3.25), direction=OBLIQUE)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_values_and_geometry(tmp_path, suffix):
    volume = _volume()
    back = read_volume(write_volume(volume, tmp_path / f"v{suffix}"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)


def test_existing_output_is_not_overwritten(tmp_path):
    path = write_volume(_volume(), tmp_path / "v.nrrd")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_volume(_volume((3, 3, 3)), path)
    assert path.read_bytes() == before
    write_volume(_volume((3, 3, 3)), path, overwrite=True)
    assert read_volume(path).array.shape == (3, 3, 3)


def test_dicom_series_folder_is_read(tmp_path):
    image = sitk.Cast(sitk.GetImageFromArray(_volume().array), sitk.sitkInt16)
    image.SetSpacing((0.7, 0.8, 3.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0020|0032", "0\\0\\%f" % (3.0 * k))  # image position: slices 3 mm apart
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        s.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(tmp_path / f"{k:03d}.dcm"))
        writer.Execute(s)
    volume = read_volume(tmp_path)
    assert volume.array.shape == (6, 7, 8)
    np.testing.assert_allclose(volume.spacing[2], 3.0, atol=1e-4)


@pytest.mark.parametrize(
    "image, message",
    [
        (sitk.Image([8, 8], sitk.sitkFloat32), "2D"),
        (sitk.Image([8, 8, 8, 3], sitk.sitkFloat32), "4D"),
        (sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), "components"),
        (sitk.Image([8, 8, 1], sitk.sitkFloat32), "single slice"),
    ],
)
def test_non_3d_inputs_are_refused_with_advice(tmp_path, image, message):
    path = tmp_path / "bad.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(VolumeError, match=message):
        read_volume(path)


def test_corrupt_and_missing_files_are_refused(tmp_path):
    with pytest.raises(VolumeError, match="not found"):
        read_volume(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(VolumeError, match="cannot read"):
        read_volume(bad)


def test_empty_and_nan_volumes_are_refused():
    with pytest.raises(VolumeError, match="empty"):
        validate_intensities(np.zeros((4, 4, 4)))
    bad = np.random.default_rng(0).random((4, 4, 4))
    bad[1, 2, 3] = np.nan
    with pytest.raises(VolumeError, match="NaN"):
        validate_intensities(bad)


def _outer_faces(grid: Volume, itk_axis: int, n: int) -> np.ndarray:
    """Physical positions of the outer faces of the first and last voxel along one axis."""
    faces = np.zeros((2, 3))
    faces[:, itk_axis] = (-0.5, n - 0.5)
    return grid.index_to_physical(faces)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
@pytest.mark.parametrize("factor", [2, 4])
def test_fine_grid_covers_the_same_physical_extent(axis, factor):
    low = _volume()
    fine = fine_grid(low, factor, axis)
    itk_axis = "xyz".index(axis)
    n_low = low.array.shape[2 - itk_axis]
    np.testing.assert_allclose(_outer_faces(fine, itk_axis, n_low * factor), _outer_faces(low, itk_axis, n_low))
    assert fine.spacing[itk_axis] == pytest.approx(low.spacing[itk_axis] / factor)
    assert fine.array.shape[2 - itk_axis] == n_low * factor
    assert fine.direction == low.direction
