"""Image-quality metrics with explicitly stated data ranges.

- CT: PSNR/SSIM in the soft-tissue window [-160, 240] HU (both volumes clipped to it, range 400) and on the
  full clipped range [-1024, 3071] HU (range 4095).
- PET and MRI: both volumes divided by the reference's 99.5th percentile and clipped to [0, 1] (range 1), so
  a few hot voxels neither dominate nor set the scale.
- SSIM is 3D with a Gaussian window (sigma 1.5 voxels) and population covariances (Wang et al. 2004).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

CT_WINDOW = (-160.0, 240.0)
CT_FULL = (-1024.0, 3071.0)


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((reference.astype(np.float64) - estimate.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def ssim3d(reference: np.ndarray, estimate: np.ndarray, data_range: float) -> float:
    return float(
        structural_similarity(
            reference.astype(np.float64),
            estimate.astype(np.float64),
            data_range=data_range,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def _scored(reference: np.ndarray, estimate: np.ndarray, low: float, high: float, tag: str) -> dict[str, float]:
    ref, est = np.clip(reference, low, high), np.clip(estimate, low, high)
    return {f"psnr_{tag}": psnr(ref, est, high - low), f"ssim_{tag}": ssim3d(ref, est, high - low)}


def quality(reference: np.ndarray, estimate: np.ndarray, modality: str) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``estimate`` against ``reference`` (native units, same grid)."""
    if reference.shape != estimate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {estimate.shape}")
    if modality == "ct":
        return _scored(reference, estimate, *CT_WINDOW, "window") | _scored(reference, estimate, *CT_FULL, "full")
    scale = float(np.percentile(reference, 99.5)) or 1.0
    return _scored(reference / scale, estimate / scale, 0.0, 1.0, "p995")


def headline(modality: str) -> str:
    """The metric key used to rank methods for a modality."""
    return "psnr_window" if modality == "ct" else "psnr_p995"
