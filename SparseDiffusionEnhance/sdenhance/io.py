"""Volume I/O through SimpleITK that keeps origin, spacing and direction exactly.

Arrays are numpy in SimpleITK's index order reversed, i.e. ``(z, y, x)``; ``spacing`` and ``origin`` are in
ITK order ``(x, y, z)`` and ``direction`` is the row-major 3x3 matrix, exactly as SimpleITK reports them.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import VolumeError

#: Axis names accepted on the command line, mapped to the numpy axis of a ``(z, y, x)`` array.
AXIS_TO_NUMPY = {"x": 2, "y": 1, "z": 0}
#: Largest volume we accept (voxels): a 2048^3 float32 volume is 32 GiB, beyond any sane workstation.
MAX_VOXELS = 1024**3
#: Voxel sizes (mm) a scan can have: outside them the header is wrong, whatever the scanner.
PHYSICAL_SPACING_MM = (1e-3, 1000.0)
#: Output file types: single files, so that writing under a temporary name and renaming is atomic.
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image with its physical geometry."""

    array: np.ndarray  # (z, y, x)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def with_array(self, array: np.ndarray) -> Volume:
        """Same geometry, new voxel values (the shape must not change)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return replace(self, array=array)

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Physical (LPS) coordinates of continuous indices given as rows of (i, j, k)."""
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin) + (np.asarray(index_xyz, dtype=float) * self.spacing) @ d.T


def to_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in volume.direction])
    return image


def from_sitk(image: sitk.Image) -> Volume:
    _check_scalar_3d(image)
    _check_spacing(image.GetSpacing())
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(image.GetSpacing()),
        origin=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
    )


def _check_scalar_3d(image: sitk.Image) -> None:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"the image has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or vector); "
            "convert it to a single-channel scalar volume first"
        )
    if image.GetDimension() == 4:
        raise VolumeError(
            "the image is 4D (a time series or multi-volume); extract one 3D frame first, e.g. with "
            "SimpleITK: image[:, :, :, 0]"
        )
    if image.GetDimension() != 3:
        raise VolumeError(f"the image is {image.GetDimension()}D; a 3D volume is needed")
    size = image.GetSize()
    if min(size) < 2:
        raise VolumeError(f"the image has size {size}: a single slice is 2D data; load the whole series as a 3D volume")


def _check_spacing(spacing: Sequence[float]) -> None:
    low, high = PHYSICAL_SPACING_MM
    if not all(low <= s <= high for s in spacing):  # NaN fails too
        raise VolumeError(
            f"voxel spacing {tuple(float(s) for s in spacing)} mm is not physical (each side must be "
            f"{low:g}-{high:g} mm); correct the spacing in the file's header"
        )


def _check_voxel_count(voxels: int) -> None:
    if voxels > MAX_VOXELS:
        raise VolumeError(f"the volume has {voxels:,} voxels, more than the {MAX_VOXELS:,} supported; crop it first")


def read_volume(path: str | os.PathLike) -> Volume:
    """Read NIfTI, NRRD, MHA/MHD or a DICOM series folder; raises VolumeError with advice on failure."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"input not found: {path}")
    try:
        image = _read_dicom_series(path) if path.is_dir() else _read_file(path)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise VolumeError(
            f"cannot read {path}: {first_line}. Supported: NIfTI (.nii/.nii.gz), NRRD, MHA/MHD, DICOM folder"
        ) from exc
    return from_sitk(image)


def _read_file(path: Path) -> sitk.Image:
    """Header first: a file that promises more voxels than we accept, or than it holds, is refused before any
    voxel buffer is allocated."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    _check_voxel_count(math.prod(reader.GetSize()) * reader.GetNumberOfComponents())
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path, reader)
    return reader.Execute()


def _check_nifti_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """ITK fills the voxels missing from a cut-off NIfTI file with zeros: refuse such a file instead."""
    dims = int(reader.GetMetaData("dim[0]"))
    voxels = math.prod(int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, dims + 1))
    needed = int(float(reader.GetMetaData("vox_offset"))) + voxels * int(reader.GetMetaData("bitpix")) // 8
    if not _holds_bytes(path, needed):
        raise VolumeError(
            f"{path} is truncated: its header promises {needed:,} bytes and the file holds fewer; "
            "copy or download it again"
        )


def _holds_bytes(path: Path, count: int) -> bool:
    """Whether the file (decompressed, for .gz) is at least ``count`` bytes long."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size >= count
    with gzip.open(path) as stream:
        try:
            stream.seek(count - 1)  # decompresses without keeping what it skips
            return len(stream.read(1)) == 1
        except (EOFError, OSError, zlib.error):  # the compressed stream itself is cut off or damaged
            return False


def _read_dicom_series(folder: Path) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeError(f"no DICOM series found in folder {folder}")
    if len(series) > 1:
        raise VolumeError(f"{folder} holds {len(series)} DICOM series; point to a folder that holds exactly one")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def output_suffix(path: str | os.PathLike) -> str:
    """The file type of an output path (lower case); refuses types that cannot be written atomically."""
    name = Path(path).name.lower()
    for suffix in OUTPUT_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise VolumeError(
        f"cannot write {path}: the output must end in {', '.join(OUTPUT_SUFFIXES)} (or a folder with --format dicom)"
    )


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write atomically (temp file then rename) so a failed write never leaves a half-written output."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another output or pass --overwrite")
    suffix = output_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    try:
        sitk.WriteImage(to_sitk(volume), str(tmp), useCompression=suffix in (".nii.gz", ".mha"))
        os.replace(tmp, path)
    finally:  # after a failure or a SIGTERM, no half-written file is left behind
        tmp.unlink(missing_ok=True)
    return path


def validate_intensities(array: np.ndarray) -> None:
    """Reject volumes that no model can enhance, with a message that says what to do."""
    _check_voxel_count(array.size)
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise VolumeError(f"the volume contains {bad} NaN/Inf voxels; fix or mask them before enhancing")
    if float(array.max()) == float(array.min()):
        raise VolumeError(f"the volume is empty or constant (every voxel is {float(array.min())}); nothing to enhance")


def fine_grid(volume: Volume, factor: int, axis: str) -> Volume:
    """Empty target grid for super-resolution: ``factor``x finer along ``axis``, same physical extent.

    A low-resolution voxel of thickness s centred at c covers [c - s/2, c + s/2]; the ``factor`` fine
    voxels inside it are centred at c - s/2 + s/(2f) + k s/f, so the origin moves by -(s/2)(1 - 1/f)
    along that axis's direction.
    """
    ax = AXIS_TO_NUMPY[axis]
    itk_ax = 2 - ax
    spacing = list(volume.spacing)
    shift = -0.5 * spacing[itk_ax] * (1.0 - 1.0 / factor)
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(volume.origin, dtype=float) + shift * d[:, itk_ax]
    spacing[itk_ax] /= factor
    shape = list(volume.array.shape)
    shape[ax] *= factor
    return Volume(
        array=np.zeros(shape, dtype=np.float32),
        spacing=tuple(spacing),
        origin=tuple(origin.tolist()),
        direction=volume.direction,
    )


def resample_onto(volume: Volume, grid: Volume, interpolator: int = sitk.sitkBSpline) -> Volume:
    """Resample ``volume`` onto ``grid``'s geometry (edges clamp to the nearest voxel, not to zero)."""
    source = to_sitk(volume.with_array(volume.array.astype(np.float32)))
    resampled = sitk.Resample(
        source, to_sitk(grid), sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32, True
    )  # useNearestNeighborExtrapolator: no dark border at the slab ends
    return grid.with_array(sitk.GetArrayFromImage(resampled))


def sr_model_input(low: Volume, factor: int, axis: str) -> Volume:
    """B-spline resampling of ``low`` onto ``fine_grid(low, factor, axis)``: what the SR network sees."""
    return resample_onto(low, fine_grid(low, factor, axis))


def centre_crop(volume: Volume, size: tuple[int, int, int] | list[int]) -> Volume:
    """The central ``size`` (z, y, x) block of ``volume`` (clamped to its shape), geometry kept exact."""
    starts = [max((s - c) // 2, 0) for s, c in zip(volume.array.shape, size, strict=True)]
    return crop(volume, starts, size)


def crop(volume: Volume, start: Sequence[int], size: Sequence[int]) -> Volume:
    """The block of ``size`` (z, y, x) voxels from index ``start`` (clamped to the shape), geometry kept exact."""
    block = tuple(slice(first, first + count) for first, count in zip(start, size, strict=True))
    origin = volume.index_to_physical(np.array([list(start)[::-1]], dtype=float))[0]
    return replace(volume, array=np.ascontiguousarray(volume.array[block]), origin=tuple(origin.tolist()))
