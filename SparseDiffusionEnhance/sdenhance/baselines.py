"""Classical baselines that ``sdenhance evaluate`` compares the diffusion model against.

Every method is ``name(volume_native, spacing, **params) -> np.ndarray``: a (z, y, x) array in native units
(HU, activity, scanner units) and its (x, y, z) spacing in mm in, a float32 array out, on the same grid for
denoising and on ``fine_grid(volume, factor, axis)`` for through-plane super-resolution.

``BASELINES`` gives each method a small parameter sweep. The evaluator runs every setting and keeps the best
per case on the headline metric, i.e. the baseline is *oracle-tuned* (it is shown the reference), which
flatters it: a fair upper bound for what hand tuning could reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .io import Volume, fine_grid, resample_onto

#: BM4D takes ~100 s per million voxels on one core; larger inputs are skipped (use --crop).
BM4D_MAX_VOXELS = 2_200_000
#: Width (frequency bins) of the box that smooths the noise periodogram into the spectrum BM4D is given.
BM4D_PSD_SMOOTHING = 5

#: 3D non-local means costs about 4 s per million voxels and setting on one core (patch 3^3, search 7^3);
#: above this many voxels it is skipped rather than dominating the run (use --crop).
NLM_MAX_VOXELS = 4_000_000


def _image(volume_native: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(volume_native, dtype=np.float32))
    image.SetSpacing([float(s) for s in spacing])
    return image


def gaussian(volume_native: np.ndarray, spacing, sigma_voxels: float) -> np.ndarray:
    """Gaussian smoothing, isotropic in mm with std ``sigma_voxels`` x the smallest voxel side.

    Isotropic in mm, so thick slices are barely mixed. The discrete (sampled-kernel) filter stays exact
    for sub-voxel sigmas, where the recursive one is not.
    """
    variance = (sigma_voxels * min(spacing)) ** 2
    smoothed = sitk.DiscreteGaussian(_image(volume_native, spacing), [variance] * 3, 64, 0.01, True)
    return sitk.GetArrayFromImage(smoothed)


def curvature_diffusion(volume_native: np.ndarray, spacing, conductance: float, iterations: int) -> np.ndarray:
    """ITK curvature anisotropic diffusion (edge-preserving; Whitaker and Xue 2001).

    The time step is the largest that ITK accepts as stable in 3D: 1/2^4 of the smallest spacing in mm,
    and at most 1/2^4 (it also checks in voxel units). The conductance is relative to the image's mean
    gradient, so it has no units.
    """
    image = _image(volume_native, spacing)
    time_step = min(*spacing, 1.0) / 16.0
    return sitk.GetArrayFromImage(sitk.CurvatureAnisotropicDiffusion(image, time_step, conductance, 1, iterations))


def nlm(volume_native: np.ndarray, spacing, h_per_sigma: float) -> np.ndarray:
    """3D non-local means (scikit-image, fast mode), filtering strength ``h_per_sigma`` x the noise sigma.

    Sigma comes from ``estimate_sigma`` (wavelet MAD over the whole volume). It under-reads the spatially
    correlated noise of reconstructed CT, hence a sweep of h rather than the white-noise rule h = 0.8 sigma;
    for PET it fails outright (the noise-free background sets the median), so NLM is weak there.
    ``spacing`` is unused: patches are in voxels.
    """
    from skimage.restoration import denoise_nl_means, estimate_sigma

    volume = np.asarray(volume_native, dtype=np.float32)
    sigma = float(estimate_sigma(volume))
    denoised = denoise_nl_means(
        volume, patch_size=3, patch_distance=3, h=h_per_sigma * sigma, sigma=sigma, fast_mode=True, channel_axis=None
    )
    return denoised.astype(np.float32)


def bm4d_oracle(volume_native: np.ndarray, spacing, noise: np.ndarray) -> np.ndarray:
    """BM4D (Maekinen et al., IEEE TIP 2020) given the true noise power spectrum: the periodogram of the noise
    that was inserted (degraded minus reference), box-smoothed. An oracle no user has, so an upper bound for
    BM4D; correlated noise (CT kernels, PET) needs the spectrum, a single sigma leaves most of it.
    ``spacing`` is unused: BM4D works in voxels. Needs ``pip install bm4d`` (free for non-commercial use only).
    """
    import bm4d
    from scipy import ndimage

    periodogram = np.abs(np.fft.fftn(np.asarray(noise, dtype=np.float64))) ** 2
    psd = ndimage.uniform_filter(periodogram, BM4D_PSD_SMOOTHING, mode="wrap")
    # bm4d 4.2 calls np.trapz, which NumPy 2 removed; give it the renamed function for the call only
    with _numpy_trapz():
        return np.asarray(bm4d.bm4d(np.asarray(volume_native, dtype=np.float32), psd), dtype=np.float32)


class _numpy_trapz:
    def __enter__(self):
        self.added = not hasattr(np, "trapz")
        if self.added:
            np.trapz = np.trapezoid

    def __exit__(self, *exc):
        if self.added:
            del np.trapz


def _bm4d_missing() -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("bm4d") else "skipped: `pip install bm4d` to include it (non-commercial)"


def _upsample(volume_native: np.ndarray, spacing, factor: int, axis: str, interpolator: int) -> np.ndarray:
    # Only the relative geometry matters, so the default origin and direction stand in for the scan's.
    low = Volume(np.asarray(volume_native, dtype=np.float32), tuple(spacing))
    return resample_onto(low, fine_grid(low, factor, axis), interpolator).array


def bspline(volume_native: np.ndarray, spacing, factor: int, axis: str) -> np.ndarray:
    """Cubic B-spline interpolation of the thick-slice volume onto the fine grid."""
    return _upsample(volume_native, spacing, factor, axis, sitk.sitkBSpline)


def lanczos(volume_native: np.ndarray, spacing, factor: int, axis: str) -> np.ndarray:
    """Lanczos-windowed sinc interpolation of the thick-slice volume onto the fine grid."""
    return _upsample(volume_native, spacing, factor, axis, sitk.sitkLanczosWindowedSinc)


@dataclass(frozen=True)
class Baseline:
    label: str
    task: str  # "denoise" or "sr"
    run: Callable[..., np.ndarray]
    sweep: tuple[dict, ...] = ({},)  # settings tried; the best per case is kept (oracle tuning)
    max_voxels: int | None = None  # larger inputs are skipped, for time
    oracle_noise: bool = False  # run also gets ``noise=`` (degraded minus reference): only the evaluator has it
    unavailable: Callable[[], str | None] = lambda: None  # why it cannot run here (a missing optional package)

    def skip_reason(self, voxels: int) -> str | None:
        missing = self.unavailable()
        if missing:
            return missing
        if self.max_voxels is not None and voxels > self.max_voxels:
            return (
                f"skipped: {voxels:,} voxels exceed its {self.max_voxels:,}-voxel time budget "
                "(use --crop to include it)"
            )
        return None


BASELINES = {
    "gaussian": Baseline("Gaussian", "denoise", gaussian, tuple({"sigma_voxels": s} for s in (0.4, 0.8, 1.6))),
    "curvature": Baseline(
        "curvature diffusion",
        "denoise",
        curvature_diffusion,
        tuple({"conductance": c, "iterations": n} for n in (3, 8, 20) for c in (0.5, 1.5, 4.0)),
    ),
    "nlm": Baseline("NLM", "denoise", nlm, tuple({"h_per_sigma": h} for h in (0.75, 1.5, 3.0)), NLM_MAX_VOXELS),
    "bm4d": Baseline(
        "BM4D (true noise spectrum)",
        "denoise",
        bm4d_oracle,
        max_voxels=BM4D_MAX_VOXELS,
        oracle_noise=True,
        unavailable=_bm4d_missing,
    ),
    "bspline": Baseline("B-spline", "sr", bspline),
    "lanczos": Baseline("Lanczos", "sr", lanczos),
}


def baselines_for(task: str) -> list[str]:
    return [name for name, baseline in BASELINES.items() if baseline.task == task]
