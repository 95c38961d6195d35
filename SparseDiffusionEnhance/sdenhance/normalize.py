"""Per-modality intensity normalisation to the model range, with an exact inverse.

- CT: Hounsfield units clipped to [-1024, 3071], then HU / 1000 (air -1.024, water 0, dense bone ~1-3).
  Fixed, so a model sees the same units on every scanner.
- MRI: scanner units are arbitrary, so robust percentiles of the input map linearly: p0.5 -> 0, p99.5 -> 1.
- PET: activity a (Bq/mL, SUV or counts) is divided by the mean activity of the body (voxels above 5 % of
  the 99.9th percentile; an SUV-like scale that needs no injected dose), then log1p compresses the hot spots:
  x = log1p(a / scale). Uptake equal to the body mean maps to log 2 ~ 0.69, ten times it to ~2.4.

The statistics are fitted on the volume the model receives (the degraded one), both in training and in use,
so the two agree. ``Normalizer`` is a small frozen record that can be stored in JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CT_RANGE = (-1024.0, 3071.0)


@dataclass(frozen=True)
class Normalizer:
    modality: str
    offset: float = 0.0
    scale: float = 1.0

    @classmethod
    def fit(cls, array: np.ndarray, modality: str) -> Normalizer:
        if modality == "ct":
            return cls("ct", 0.0, 1000.0)
        if modality == "mri":
            lo, hi = np.percentile(array, [0.5, 99.5])
            return cls("mri", float(lo), float(max(hi - lo, 1e-6)))
        if modality == "pet":
            body = array[array > 0.05 * np.percentile(array, 99.9)]
            return cls("pet", 0.0, float(body.mean()) if body.size else 1.0)
        raise ValueError(f"unknown modality '{modality}' (use ct, mri or pet)")

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Native units -> model range (float32)."""
        a = np.asarray(array, dtype=np.float32)
        if self.modality == "ct":
            return (np.clip(a, *CT_RANGE) - self.offset) / self.scale
        if self.modality == "pet":
            return np.log1p(np.maximum(a, 0.0) / self.scale)
        return (a - self.offset) / self.scale

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Model range -> native units (float32)."""
        a = np.asarray(array, dtype=np.float32)
        if self.modality == "ct":
            return np.clip(a * self.scale + self.offset, *CT_RANGE)
        if self.modality == "pet":
            return np.expm1(np.maximum(a, 0.0)) * self.scale
        return a * self.scale + self.offset

    def to_dict(self) -> dict:
        return asdict(self)


def output_dtype(input_dtype: np.dtype, modality: str) -> np.dtype:
    """Keep integer CT in int16 (HU are integers); everything else becomes float32 so no precision is lost."""
    if modality == "ct" and np.issubdtype(input_dtype, np.integer):
        return np.dtype(np.int16)
    return np.dtype(np.float32)
