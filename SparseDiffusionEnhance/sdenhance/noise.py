"""The noise level of a scan, estimated from the scan alone, and the check against the range a model was trained on.

A model fed a scan far noisier (or far cleaner) than anything it was trained on may leave most of the noise or
smooth away detail without a sign of it, so ``enhance`` estimates the level first and warns with the numbers.

The estimate is the local standard deviation in small in-plane windows, taken where the scan is locally flat:
windows inside homogeneous tissue (CT: soft tissue and fat by their HU; MRI and PET: the bright foreground) and,
of those, a low percentile, which leaves out the windows that straddle edges. It reads white and kernel-
correlated noise alike to within ~20 % (over-reading slightly where tissue has texture), which is what a range
check needs; it is not a physicist's noise measurement. The unit follows the modality: CT noise std in HU, MRI
signal-to-noise ratio (foreground median over noise std), PET coefficient of variation in %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: In-plane window side (voxels) of the local standard deviation.
WINDOW = 9
#: Percentile of the local standard deviations that stands for the noise (lower ones miss noise, higher ones
#: reach windows across edges).
PERCENTILE = 30
#: Slices looked at, evenly spread: enough for a stable percentile, cheap on any scan.
MAX_SLICES = 12
#: CT windows count when their mean lies in this HU range (fat to soft tissue; no air, lung or bone).
CT_FLAT_HU = (-150.0, 200.0)
#: MRI and PET windows count when their mean exceeds this fraction of the foreground median.
FOREGROUND_SHARE = 0.5
#: The estimate may be this factor outside a model's range before a warning (the estimate's own spread).
TOLERANCE = 1.25
UNITS = {"ct": "HU", "mri": "SNR", "pet": "% CoV"}


@dataclass(frozen=True)
class NoiseEstimate:
    value: float  # in ``unit``; NaN when the scan has no flat region to measure in
    unit: str

    def __str__(self) -> str:
        if self.unit == "SNR":
            return f"SNR ~{self.value:.3g}"
        return f"noise ~{self.value:.3g} {self.unit}"


def estimate_noise(array: np.ndarray, modality: str) -> NoiseEstimate:
    """The noise level of a (z, y, x) scan in native units (HU for CT), in ``UNITS[modality]``."""
    array = np.asarray(array, dtype=np.float32)
    slices = estimated_slices(array.shape[0])
    if modality == "ct":
        low, high = CT_FLAT_HU
    else:
        reference = _foreground_median(array)
        low, high = FOREGROUND_SHARE * reference, np.inf
    means, stds = [], []
    for z in slices:
        mean, std = _local_mean_and_std(np.clip(array[z], -1024.0, None) if modality == "ct" else array[z])
        inside = ndimage.binary_erosion((mean > low) & (mean < high), iterations=WINDOW // 2)
        means.append(mean[inside])
        stds.append(std[inside])
    mean, std = np.concatenate(means), np.concatenate(stds)
    if std.size == 0:
        return NoiseEstimate(float("nan"), UNITS[modality])
    if modality == "ct":
        return NoiseEstimate(float(np.percentile(std, PERCENTILE)), "HU")
    if modality == "mri":
        noise = float(np.percentile(std, PERCENTILE))
        return NoiseEstimate(_foreground_median(array) / max(noise, 1e-12), "SNR")
    return NoiseEstimate(100.0 * float(np.percentile(std / mean, PERCENTILE)), "% CoV")


def noise_std_ratio(numerator: NoiseEstimate, denominator: NoiseEstimate) -> float:
    """How much noise one scan holds relative to another of the same modality, as a ratio of noise standard
    deviations (an SNR is inverse to the noise, HU and % CoV proportional)."""
    if numerator.unit == "SNR":
        return denominator.value / numerator.value
    return numerator.value / denominator.value


def estimated_slices(n_slices: int) -> np.ndarray:
    """The slices ``estimate_noise`` reads: at most ``MAX_SLICES``, evenly spread."""
    return np.unique(np.linspace(0, n_slices - 1, min(MAX_SLICES, n_slices)).astype(int))


def _local_mean_and_std(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = ndimage.uniform_filter(image, WINDOW, mode="reflect")
    square = ndimage.uniform_filter(image * image, WINDOW, mode="reflect")
    return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))


def _foreground_median(array: np.ndarray) -> float:
    """Median of the voxels at or above the mean: the tissue signal, robust to the air around the body."""
    return float(np.median(array[array >= array.mean()]))


def noise_outside_range(card_meta: dict, estimate: NoiseEstimate, name: str) -> str | None:
    """A warning naming the estimate and the trained range (``card.noise_range``) when the scan is clearly
    outside it; None inside it, when the card records no range, or when the scan had nowhere to measure."""
    trained = card_meta.get("card", {}).get("noise_range")
    if not isinstance(trained, dict) or trained.get("unit") != estimate.unit or np.isnan(estimate.value):
        return None
    low, high = trained["low"], trained["high"]
    # for SNR, a higher value is a cleaner scan; for HU and CoV a higher value is a noisier one
    cleaner = estimate.value > high * TOLERANCE if estimate.unit == "SNR" else estimate.value < low / TOLERANCE
    noisier = estimate.value < low / TOLERANCE if estimate.unit == "SNR" else estimate.value > high * TOLERANCE
    if not (cleaner or noisier):
        return None
    if noisier:
        effect = "it may leave much of the noise or invent detail"
    else:
        effect = "there is little noise to remove and it may smooth away fine detail"
    return (
        f"{estimate}, outside the {low:g}-{high:g} {estimate.unit} that '{name}' was trained on: {effect}; "
        "compare the result with the input before using it"
    )
