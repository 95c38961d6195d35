"""Compare real PET noise with ``pet_low_count``'s: std/mean and noise autocorrelation width.

The NEMA IQ phantom in ``shared/data/pet`` was acquired once and reconstructed twice at two noise levels.
The average of the two, smoothed, stands in for the noise-free activity. In a uniform background region
(away from the spheres' plane and the edges) we measure each reconstruction's noise std/mean and the FWHM
of its noise autocorrelation along x, y and z, then fit the simulator's count fraction and correlation FWHM
so that, applied to the noise-free stand-in, it gives the same figures. Prints a table; ``--out`` writes JSON.

Run with the engine importable: ``pip install -e .`` or ``PYTHONPATH=SparseDiffusionEnhance``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from sdenhance.degrade import FWHM_PER_SIGMA, PET_NOISE_FWHM_MM, REFERENCE_COUNTS, pet_low_count
from sdenhance.io import Volume, read_volume

RECONSTRUCTIONS = {"recon1": "pet_nema_iq_phantom_recon1.nii.gz", "recon2": "pet_nema_iq_phantom_recon2.nii.gz"}
#: Smoothing of the averaged reconstructions that makes the noise-free stand-in.
TRUTH_FWHM_MM = 8.0
#: Local mean removed before measuring noise: slow non-uniformity (scatter, attenuation) is not noise.
LOCAL_MEAN_FWHM_MM = 20.0
#: The background region keeps this far from the spheres' plane and from any edge or insert.
SPHERE_CLEARANCE_MM = 30.0
EDGE_CLEARANCE_MM = 10.0
FIT_ITERATIONS = 4


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        recons = {name: read_volume(args.data / "pet" / file) for name, file in RECONSTRUCTIONS.items()}
    except (OSError, ValueError) as exc:
        print(f"cannot read the NEMA reconstructions under {args.data / 'pet'}: {exc}", file=sys.stderr)
        return 2
    first = next(iter(recons.values()))
    average = np.mean([volume.array for volume in recons.values()], axis=0)
    truth = first.with_array(_smooth(average, first.spacing, TRUTH_FWHM_MM))
    region = uniform_background(truth)
    rng = np.random.default_rng(args.seed)
    results = {"region_voxels": int(region.sum()), "reference_counts": REFERENCE_COUNTS, "recons": {}}
    for name, volume in recons.items():
        real = noise_texture(volume.array, region, volume.spacing)
        fraction, fwhm = fit_simulator(truth, region, real, rng)
        results["recons"][name] = {"real": real}
        # The default FWHM at the fitted fraction: same noise level, so only the texture differs.
        for source, widths in (("simulated_fitted", fwhm), ("simulated_default_fwhm", list(PET_NOISE_FWHM_MM))):
            simulated = noise_texture(_simulate(truth, fraction, widths, rng), region, volume.spacing)
            results["recons"][name][source] = {"count_fraction": fraction, "fwhm_mm": widths, **simulated}
    _print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "data"  # repo/../shared/data
    parser.add_argument("--data", type=Path, default=default_data, help=f"data folder (default {default_data})")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _smooth(array: np.ndarray, spacing: tuple[float, float, float], fwhm_mm: float) -> np.ndarray:
    sigmas_zyx = [fwhm_mm / FWHM_PER_SIGMA / step for step in spacing[::-1]]
    return ndimage.gaussian_filter(array.astype(np.float64), sigmas_zyx)


def uniform_background(truth: Volume) -> np.ndarray:
    """Voxels of the phantom's warm background, clear of the spheres' plane, the lung insert and edges."""
    level = np.median(truth.array[truth.array > truth.array.mean()])
    near_level = np.abs(truth.array - level) < 0.1 * level
    hottest_slice = int(np.argmax(truth.array.max(axis=(1, 2))))
    slice_mm = (np.arange(truth.array.shape[0]) - hottest_slice) * truth.spacing[2]
    away_from_spheres = (np.abs(slice_mm) >= SPHERE_CLEARANCE_MM)[:, None, None]
    return ndimage.binary_erosion(near_level & away_from_spheres, structure=_ball(truth.spacing, EDGE_CLEARANCE_MM))


def _ball(spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    radii = [int(radius_mm // step) for step in spacing[::-1]]
    grid = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    return sum((g * step / radius_mm) ** 2 for g, step in zip(grid, spacing[::-1], strict=True)) <= 1.0


def noise_texture(image: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Noise std/mean in ``region`` and the FWHM (mm) of the noise autocorrelation along x, y, z."""
    noise = image - _smooth(image, spacing, LOCAL_MEAN_FWHM_MM)
    correlation = _masked_autocorrelation(noise, region)
    return {
        "std_over_mean": float(noise[region].std() / image[region].mean()),
        "acf_fwhm_mm": [_acf_fwhm(correlation, axis, spacing) for axis in (2, 1, 0)],
    }


def _masked_autocorrelation(noise: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Autocorrelation of ``noise`` inside ``mask``, each lag normalised by its number of voxel pairs."""
    corner = [slice(s.min(), s.max() + 1) for s in np.nonzero(mask)]
    inside = (noise * mask)[tuple(corner)]
    weights = mask[tuple(corner)].astype(np.float64)
    padded = [2 * n for n in inside.shape]
    axes = (0, 1, 2)
    products = np.fft.irfftn(np.abs(np.fft.rfftn(inside, padded, axes)) ** 2, padded, axes)
    pairs = np.fft.irfftn(np.abs(np.fft.rfftn(weights, padded, axes)) ** 2, padded, axes)
    correlation = products / np.maximum(pairs, 1.0)
    return correlation / correlation[0, 0, 0]


def _acf_fwhm(correlation: np.ndarray, numpy_axis: int, spacing: tuple[float, float, float]) -> float:
    """Twice the lag (mm) where the autocorrelation along one axis first falls to 1/2, interpolated."""
    profile = np.moveaxis(correlation, numpy_axis, 0)[:, 0, 0]
    below = int(np.argmax(profile < 0.5))
    lag = below - 1 + (profile[below - 1] - 0.5) / (profile[below - 1] - profile[below])
    return float(2.0 * lag * spacing[2 - numpy_axis])


def _simulate(truth: Volume, fraction: float, fwhm_mm, rng: np.random.Generator) -> np.ndarray:
    return pet_low_count(truth.array, fraction, rng, spacing=truth.spacing, fwhm_mm=tuple(fwhm_mm))


def fit_simulator(truth: Volume, region: np.ndarray, real: dict, rng: np.random.Generator) -> tuple[float, list]:
    """Count fraction and FWHM (x, y, z) whose simulated noise matches ``real``'s std/mean and ACF width.

    Fixed-point iterations: the added variance is proportional to (1-f)/f, and the ACF of Gaussian-filtered
    white noise is sqrt(2) times as wide as the filter, so both are rescaled by the measured mismatch.
    """
    odds = 1.0  # (1 - f) / f
    fwhm = [width / np.sqrt(2.0) for width in real["acf_fwhm_mm"]]
    for _ in range(FIT_ITERATIONS):
        simulated = noise_texture(_simulate(truth, 1.0 / (1.0 + odds), fwhm, rng), region, truth.spacing)
        odds *= (real["std_over_mean"] / simulated["std_over_mean"]) ** 2
        fwhm = [f * r / s for f, r, s in zip(fwhm, real["acf_fwhm_mm"], simulated["acf_fwhm_mm"], strict=True)]
    return 1.0 / (1.0 + odds), [round(f, 2) for f in fwhm]


def _print_table(results: dict) -> None:
    scale = f"{results['reference_counts']:g} expected counts per (4 mm)^3 voxel at full count"
    print(f"uniform background region: {results['region_voxels']} voxels; simulator count scale: {scale}")
    header = ("recon", "source", "fraction", "filter FWHM x/y/z mm", "std/mean", "ACF FWHM x/y/z mm")
    line = "{:8} {:24} {:>8} {:>21} {:>9} {:>18}"
    print(line.format(*header))
    for name, rows in results["recons"].items():
        for source, row in rows.items():
            fraction = f"{row['count_fraction']:.3f}" if "count_fraction" in row else ""
            fwhm = "/".join(f"{f:.1f}" for f in row.get("fwhm_mm", []))
            acf = "/".join(f"{f:.2f}" for f in row["acf_fwhm_mm"])
            print(line.format(name, source, fraction, fwhm, f"{row['std_over_mean']:.3f}", acf))


if __name__ == "__main__":
    sys.exit(main())
