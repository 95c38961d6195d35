"""``enhance --format dicom``: a derived series of the input's patient and study that reads back as the NIfTI output."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from sdenhance.cli import main
from sdenhance.io import Volume, read_volume
from sdenhance.testing import make_tiny_checkpoint

OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())
PATIENT = {"0010|0010": "Test^Patient", "0010|0020": "SDE-0001", "0020|000d": "1.2.826.0.1.3680043.8.498.1"}


def _write_series(folder, volume: Volume, modality: str) -> None:
    """The volume as a DICOM series, slice by slice with SimpleITK (a writer independent of the one tested)."""
    folder.mkdir()
    direction = np.asarray(volume.direction).reshape(3, 3)
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.array.shape[0]):
        image = sitk.GetImageFromArray(volume.array[k])
        image.SetSpacing(volume.spacing[:2])
        position = volume.index_to_physical(np.array([[0.0, 0.0, k]]))[0]
        tags = PATIENT | {
            "0008|0060": modality,
            "0008|103e": "source series",
            "0020|000e": "1.2.826.0.1.3680043.8.498.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0037": orientation,
            "0018|0050": str(volume.spacing[2]),
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(image)


@pytest.fixture
def ct_series(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.normal(40, 30, (6, 20, 18)) + np.linspace(-900, 300, 18)).astype(np.int16)
    volume = Volume(array, (0.75, 0.8, 2.5), (12.0, -7.5, 100.0), OBLIQUE)
    _write_series(tmp_path / "ct", volume, "CT")
    return tmp_path / "ct"


def _enhance(source, output, checkpoint, *extra):
    argv = ["enhance", str(source), "-o", str(output), "--checkpoint", str(checkpoint), "--steps", "2"]
    return main([*argv, "--progress", "none", *extra])


@pytest.mark.parametrize("task, depth", [("denoise", 6), ("sr", 12)])
def test_dicom_output_reads_back_as_the_nifti_output(tmp_path, ct_series, tiny_checkpoints, task, depth):
    checkpoint = tiny_checkpoints[task]
    assert _enhance(ct_series, tmp_path / "out.nii.gz", checkpoint, "--task", task) == 0
    assert _enhance(ct_series, tmp_path / "out", checkpoint, "--task", task, "--format", "dicom") == 0

    nifti, dicom = read_volume(tmp_path / "out.nii.gz"), read_volume(tmp_path / "out")
    assert dicom.array.shape == nifti.array.shape == (depth, 20, 18)
    assert dicom.array.dtype == nifti.array.dtype == np.int16
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_allclose(dicom.origin, nifti.origin, atol=1e-4)
    np.testing.assert_allclose(dicom.spacing, nifti.spacing, atol=1e-5)
    np.testing.assert_allclose(dicom.direction, nifti.direction, atol=1e-6)
    assert not list(tmp_path.glob(".*partial*"))


def test_dicom_output_is_a_new_derived_series_of_the_same_patient_and_study(tmp_path, ct_series, tiny_checkpoints):
    assert _enhance(ct_series, tmp_path / "out", tiny_checkpoints["sr"], "--task", "sr", "--format", "dicom") == 0
    source = [pydicom.dcmread(p) for p in sorted(ct_series.iterdir())]
    written = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").iterdir())]

    assert len(written) == 2 * len(source)
    assert {ds.SeriesInstanceUID for ds in written} == {written[0].SeriesInstanceUID} != {source[0].SeriesInstanceUID}
    uids = {ds.SOPInstanceUID for ds in written}
    assert len(uids) == len(written) and not uids & {ds.SOPInstanceUID for ds in source}
    first = written[0]
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"]
    assert (first.PatientName, first.PatientID, first.StudyInstanceUID) == (
        "Test^Patient",
        "SDE-0001",
        PATIENT["0020|000d"],
    )
    assert first.Modality == "CT" and first.SeriesDescription == "source series [sdenhance tiny-sr-ct]"
    assert "sr with tiny-sr-ct" in first.DerivationDescription
    assert (first.RescaleSlope, first.RescaleIntercept, first.PixelRepresentation) == (1, 0, 1)
    assert float(first.SliceThickness) == pytest.approx(1.25)  # the finer SR grid
    assert [ds.InstanceNumber for ds in written] == list(range(1, len(written) + 1))


def test_float_output_is_rescaled_within_half_a_step(tmp_path):
    rng = np.random.default_rng(1)
    array = (np.linspace(50, 900, 18)[None, None, :] + rng.normal(0, 20, (6, 20, 18))).astype(np.int16)
    _write_series(tmp_path / "mr", Volume(array, (0.9, 0.9, 2.0), (5.0, -3.0, 40.0), OBLIQUE), "MR")
    checkpoint = make_tiny_checkpoint(tmp_path, task="denoise", modality="mri")
    assert _enhance(tmp_path / "mr", tmp_path / "out.nii.gz", checkpoint) == 0
    assert _enhance(tmp_path / "mr", tmp_path / "out", checkpoint, "--format", "dicom") == 0

    nifti, dicom = read_volume(tmp_path / "out.nii.gz"), read_volume(tmp_path / "out")
    slope = float(pydicom.dcmread(next((tmp_path / "out").iterdir())).RescaleSlope)
    assert nifti.array.dtype == np.float32 and 0 < slope < np.ptp(nifti.array) / 60000
    np.testing.assert_allclose(dicom.array, nifti.array, atol=slope / 2 + 1e-4)


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda tmp_path, ct_series: tmp_path / "ct.nrrd", "needs a DICOM series folder as input"),
        (lambda tmp_path, ct_series: ct_series, "is not an empty folder"),
    ],
)
def test_dicom_output_is_refused_before_any_work(tmp_path, ct_series, tiny_checkpoints, capsys, make_input, message):
    sitk.WriteImage(sitk.ReadImage(sorted(str(p) for p in ct_series.iterdir())), str(tmp_path / "ct.nrrd"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    source = make_input(tmp_path, ct_series)
    assert _enhance(source, tmp_path / "out", tiny_checkpoints["denoise"], "--format", "dicom") == 2
    assert message in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
