"""An enhanced volume written as a derived DICOM series beside the series it came from (pydicom, the ``dicom`` extra).

Every slice starts from the input's first slice, so patient, study, frame of reference and the modality's own
attributes are kept; identity (new Series and SOP Instance UIDs, ImageType DERIVED\\SECONDARY, a SeriesDescription
naming the model) and geometry (position, orientation, pixel spacing and thickness of each output slice) are
written anew. Integer volumes within int16 (CT in HU) are stored as they are; others are scaled into uint16 with a
RescaleSlope/Intercept shared by the whole series.
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import InputError, VolumeError
from .io import Volume

#: Attributes of the input slice that describe that one stored image, not the series: never copied.
PER_IMAGE = (
    "PixelData",
    "LargestImagePixelValue",
    "SmallestImagePixelValue",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "SliceLocation",
    "IconImageSequence",
    "SourceImageSequence",
    "ReferencedImageSequence",
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)


def check_dicom_output(source: Path, folder: Path) -> None:
    """Refuse, before any work, a DICOM output that cannot keep the input's patient and study or would mix in
    other files."""
    if not source.is_dir():
        raise InputError("--format dicom needs a DICOM series folder as input (its patient and study are kept)")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder; --format dicom writes a new folder")


def series_files(folder: Path) -> list[str]:
    """The input series' files, ordered along the slice direction (as SimpleITK reads them)."""
    (series,) = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series))


def write_dicom_series(volume: Volume, source: Path, folder: Path, model: str, derivation: str) -> Path:
    """Write ``volume``, enhanced from the series in ``source`` by ``model``, as a new series into ``folder``
    (through a temporary folder, renamed when complete)."""
    import pydicom

    pixels, slope, intercept = _stored_pixels(volume.array)
    series = _series(pydicom.dcmread(series_files(source)[0], stop_before_pixels=True), model, derivation)
    series.RescaleSlope, series.RescaleIntercept = _ds(slope), _ds(intercept)
    series.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for k in range(volume.array.shape[0]):
            _slice(series, volume, k, pixels[k]).save_as(tmp / f"{k + 1:04d}.dcm", enforce_file_format=True)
        if folder.exists():
            folder.rmdir()  # checked empty before the run
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _series(template, model: str, derivation: str):
    """The input slice's patient, study and modality attributes with a new, derived series' identity."""
    import pydicom

    named = f" [sdenhance {model}]"  # SeriesDescription holds 64 characters: the model's name must fit
    description = str(template.get("SeriesDescription", ""))[: max(64 - len(named), 0)] + named

    series = copy.deepcopy(template)
    series.remove_private_tags()
    for keyword in PER_IMAGE:
        if keyword in series:
            delattr(series, keyword)
    now = datetime.datetime.now()
    series.SeriesInstanceUID = pydicom.uid.generate_uid()
    series.SeriesNumber = int(template.get("SeriesNumber") or 0) + 1000
    series.SeriesDescription = description.strip()[:64]
    series.DerivationDescription = derivation[:1024]
    series.ImageType = ["DERIVED", "SECONDARY"]
    series.SoftwareVersions = f"sdenhance {__version__}"
    series.SeriesDate = series.ContentDate = now.strftime("%Y%m%d")
    series.SeriesTime = series.ContentTime = now.strftime("%H%M%S")
    series.SamplesPerPixel, series.PhotometricInterpretation = 1, "MONOCHROME2"
    series.BitsAllocated = series.BitsStored = 16
    series.HighBit = 15
    series.file_meta = pydicom.dataset.FileMetaDataset()
    series.file_meta.MediaStorageSOPClassUID = template.SOPClassUID
    series.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return series


def _slice(series, volume: Volume, k: int, pixels: np.ndarray):
    """Slice ``k`` of ``volume``: the series' attributes with this slice's identity, geometry and pixels."""
    import pydicom

    ds = copy.deepcopy(series)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = k + 1
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    sx, sy, sz = volume.spacing
    ds.ImagePositionPatient = [_ds(v) for v in volume.index_to_physical(np.array([[0.0, 0.0, k]]))[0]]
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]  # along rows, columns
    ds.PixelSpacing = [_ds(sy), _ds(sx)]  # between rows, between columns
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(sz)
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def _stored_pixels(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(stored pixels, RescaleSlope, RescaleIntercept): int16 as it is, anything else scaled into uint16."""
    if np.issubdtype(array.dtype, np.integer) and array.min() >= -(2**15) and array.max() < 2**15:
        return array.astype(np.int16), 1.0, 0.0
    low, high = float(array.min()), float(array.max())
    slope = (high - low) / (2**16 - 1) or 1.0
    stored = np.rint((array.astype(np.float64) - low) / slope)
    return np.clip(stored, 0, 2**16 - 1).astype(np.uint16), slope, low


def _ds(value: float):
    """A decimal string of at most 16 characters, as DICOM allows, as precise as that permits."""
    from pydicom.valuerep import DSfloat

    if not np.isfinite(value):
        raise VolumeError(f"cannot write the non-finite value {value} to DICOM")
    return DSfloat(float(value), auto_format=True)
