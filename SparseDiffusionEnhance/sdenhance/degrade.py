"""Degradation simulators that make training pairs and evaluation inputs.

Every simulator takes an explicit ``np.random.Generator``, works in the scan's native units (CT: HU, PET:
activity, MRI: scanner units), returns float32 and leaves its input untouched. ``make_degradation`` turns a
small dict spec into a ``degrade(volume, rng) -> (model_input, reference)`` callable for the trainer and the
evaluator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import scipy.sparse
from scipy import ndimage

from .io import AXIS_TO_NUMPY, Volume, centre_crop, crop, sr_model_input
from .normalize import CT_RANGE

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# ---------------------------------------------------------------------------------------------------------
# Low-dose CT: noise insertion in the projection domain (Yu et al., Med. Phys. 2012; Zeng et al., 2015)
# ---------------------------------------------------------------------------------------------------------

#: Linear attenuation of water at a typical effective energy (~70 keV), per mm.
MU_WATER_PER_MM = 0.0192
#: Full-dose photons per reference ray: 1 mm wide x 1 mm thick at the isocentre, one of REFERENCE_VIEWS views.
#: Chosen so that 25 % dose adds ~20 HU noise std at the centre of a 300 mm water cylinder (0.8 mm pixels,
#: 5 mm slices) and ~45 HU with 1 mm slices, in line with routine abdominal CT (see test_degrade.py).
INCIDENT_PHOTONS = 1.6e5
#: Electronic noise std per reference ray reading, in photons (the literature uses variances of ~10-100).
ELECTRONIC_NOISE = 5.0
#: Views per 180 degrees that INCIDENT_PHOTONS refers to (a clinical scanner's ~1000 views per rotation).
REFERENCE_VIEWS = 1000
#: Expected low-dose counts below this are raised to it, as a scanner's pre-log correction does; without it
#: rays through metal get unbounded log-domain variance.
MIN_LOW_DOSE_COUNTS = 5.0
#: Forward projections for the expected counts are taken on a grid binned to about this width (they only
#: set the noise variance, which varies slowly).
COARSE_WIDTH = 128
#: The backprojector looks up the filtered sinogram on a detector upsampled this many times (nearest
#: neighbour on it is as accurate as linear interpolation and three times faster).
DETECTOR_UPSAMPLING = 4
#: Slices processed together: bounds the memory of the noise sinograms (~30 MB per slice at 512 x 512).
SLICES_PER_CHUNK = 8


def low_dose_ct(
    hu: np.ndarray,
    dose_fraction: float,
    rng: np.random.Generator,
    *,
    spacing: tuple[float, float, float],
    incident_photons: float = INCIDENT_PHOTONS,
    electronic_noise: float = ELECTRONIC_NOISE,
    n_views: int | None = None,
    reconstruction_filter: str = "hann",
) -> np.ndarray:
    """The CT ``hu`` (z, y, x) as if scanned at ``dose_fraction`` of its dose: the input plus inserted noise.

    Each axial slice is forward projected (parallel beam, ``n_views`` over 180 degrees, default pi/2 x the
    slice width: alias-free noise texture) to get the full-dose expected counts N = I0 exp(-p). Going from
    full dose to fraction a adds, in the log domain, Gaussian noise of variance
    ``(1-a)/(a N) + s_e^2 (1-a^2)/(a N)^2`` (the low-dose minus the full-dose variance; ``s_e`` electronic
    noise). Only that noise sinogram is reconstructed (ramp filter with a Hann window, a soft-tissue-like
    kernel) and added, so ``dose_fraction=1`` returns the input exactly and the added std grows as
    sqrt((1-a)/a). ``spacing`` is (x, y, z) mm: the in-plane pixel size scales attenuation to the grid and
    the simulated ray's width and the slice spacing its thickness, so thin slices and small pixels get the
    larger noise they have on a real scanner. Values at or below -1024 HU are treated as air; the output
    there is air plus noise (callers clip to [-1024, 3071]). Slices must hold the whole cross-section: rays
    through anatomy cropped away are missed and get too little noise.

    Cost grows with slices x views x pixels (seconds per 512 x 512 slice on one core); memory is bounded by
    ``SLICES_PER_CHUNK``.
    """
    _check_fraction("dose_fraction", dose_fraction)
    window = _fbp_window(reconstruction_filter)
    hu = np.asarray(hu)
    pixel_mm = math.sqrt(spacing[0] * spacing[1])  # CT pixels are square; the mean guards rounding
    views = n_views or _alias_free_views(max(hu.shape[1:]))
    # Each simulated ray gathers this many reference rays' photons (and electronic-noise readings).
    gather = pixel_mm * spacing[2] * REFERENCE_VIEWS / views
    mu = MU_WATER_PER_MM * (1.0 + np.clip(hu.astype(np.float32), -1024.0, None) / 1000.0)
    noise_hu = np.empty(hu.shape, dtype=np.float32)
    for start in range(0, hu.shape[0], SLICES_PER_CHUNK):
        chunk = slice(start, start + SLICES_PER_CHUNK)
        line_integrals = _line_integrals(mu[chunk], pixel_mm, views)
        variance = _extra_log_variance(
            incident_photons * gather * np.exp(-line_integrals), dose_fraction, electronic_noise**2 * gather
        )
        noise_sinogram = np.sqrt(variance) * rng.standard_normal(variance.shape, dtype=np.float32)
        noise_mu = _filtered_backprojection(noise_sinogram, hu.shape[1:], window) / pixel_mm
        noise_hu[chunk] = noise_mu * (1000.0 / MU_WATER_PER_MM)
    return hu.astype(np.float32) + noise_hu


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")


def _alias_free_views(width: int) -> int:
    """Views over 180 degrees that sample the angular direction at Nyquist for a ``width``-pixel slice."""
    return math.ceil(math.pi / 2.0 * width)


def _view_angles(n_views: int) -> np.ndarray:
    return np.arange(n_views) * (np.pi / n_views)


def _detector_bins(shape: tuple[int, int]) -> int:
    """Detector bins (one pixel wide) covering the slice's diagonal, plus a margin for interpolation."""
    return math.ceil(math.hypot(*shape)) + 3


def _line_integrals(mu: np.ndarray, pixel_mm: float, n_views: int) -> np.ndarray:
    """Line integrals (dimensionless) of ``mu`` (z, y, x, per mm) on the full-resolution sinogram grid.

    Projected on a binned grid at a fraction of the views, then interpolated: p only sets the noise
    variance, and this is ~20 times cheaper than projecting at full resolution.
    """
    height, width = mu.shape[1:]
    binning = max(1, min(height, width) // COARSE_WIDTH)
    coarse = _bin_slices(mu, binning)
    coarse_views = _view_angles(math.ceil(n_views / binning))
    coarse_p = _project(coarse, coarse_views) * (pixel_mm * binning)
    return _resample_sinogram(coarse_p, binning, n_views, _detector_bins((height, width)))


def _bin_slices(images: np.ndarray, binning: int) -> np.ndarray:
    """Average ``binning`` x ``binning`` pixel blocks, padding with edge values to a whole number of blocks."""
    if binning == 1:
        return images
    # Pad both sides alike so the binned slice stays centred on the original one.
    pad = [(0, 0)] + [((-n % binning) // 2, -n % binning - (-n % binning) // 2) for n in images.shape[1:]]
    padded = np.pad(images, pad, mode="edge")
    z, h, w = padded.shape
    return padded.reshape(z, h // binning, binning, w // binning, binning).mean(axis=(2, 4))


def _pixel_positions(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres relative to the slice centre, in pixels: (y column vector, x row vector)."""
    y = np.arange(shape[0], dtype=np.float32) - (shape[0] - 1) / 2.0
    x = np.arange(shape[1], dtype=np.float32) - (shape[1] - 1) / 2.0
    return y[:, None], x[None, :]


def _project(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Parallel-beam projections (z, views, bins) in pixel units; pixel-driven with linear splatting."""
    z, height, width = images.shape
    n_bins = _detector_bins((height, width))
    y, x = _pixel_positions((height, width))
    columns = images.reshape(z, -1).T  # (pixels, z): one sparse product per view serves every slice
    sinogram = np.empty((z, len(angles), n_bins), dtype=np.float32)
    pixel_index = np.arange(height * width)
    for view, angle in enumerate(angles):
        t = (x * np.cos(angle) + y * np.sin(angle)).ravel() + (n_bins - 1) / 2.0
        lower = np.floor(t).astype(np.intp)
        upper_weight = t - lower
        splat = scipy.sparse.csr_matrix(
            (
                np.concatenate([1.0 - upper_weight, upper_weight]),
                (np.concatenate([lower, lower + 1]), np.concatenate([pixel_index, pixel_index])),
            ),
            shape=(n_bins, height * width),
        )
        sinogram[:, view, :] = (splat @ columns).T
    return sinogram


def _resample_sinogram(coarse: np.ndarray, binning: int, n_views: int, n_bins: int) -> np.ndarray:
    """Bilinear interpolation of a coarse sinogram onto ``n_views`` views and one-pixel detector bins."""
    if binning == 1 and coarse.shape[1:] == (n_views, n_bins):
        return coarse
    coarse_views = coarse.shape[1]
    # The view at 180 degrees is the first view mirrored: append it so the last interval interpolates.
    closed = np.concatenate([coarse, coarse[:, :1, ::-1]], axis=1)
    view_coord = np.arange(n_views) * (coarse_views / n_views)
    bin_coord = (np.arange(n_bins) - (n_bins - 1) / 2.0) / binning + (coarse.shape[2] - 1) / 2.0
    grid = np.meshgrid(view_coord, bin_coord, indexing="ij")
    return np.stack([ndimage.map_coordinates(s, grid, order=1, mode="nearest") for s in closed]).astype(np.float32)


def _extra_log_variance(full_counts: np.ndarray, dose: float, electronic_variance: float) -> np.ndarray:
    """Log-domain variance that turns a full-dose measurement of ``full_counts`` into one at ``dose``."""
    low_counts = np.maximum(dose * full_counts, MIN_LOW_DOSE_COUNTS)
    full_counts = low_counts / dose
    low_variance = (low_counts + electronic_variance) / low_counts**2
    full_variance = (full_counts + electronic_variance) / full_counts**2
    return (low_variance - full_variance).astype(np.float32)


#: Apodisation windows of the ramp filter, as functions of u = frequency / Nyquist in [0, 1]: from the sharpest
#: (plain ramp, "bone/lung" kernels) to the smoothest (Hann, "soft tissue").
FBP_WINDOWS = {
    "ramp": lambda u: np.ones_like(u),
    "shepp-logan": lambda u: np.sinc(u / 2.0),
    "cosine": lambda u: np.cos(np.pi * u / 2.0),
    "hamming": lambda u: 0.54 + 0.46 * np.cos(np.pi * u),
    "hann": lambda u: 0.5 * (1.0 + np.cos(np.pi * u)),
}


def _fbp_window(name: str):
    if name not in FBP_WINDOWS:
        raise ValueError(f"unknown reconstruction filter '{name}'; choose one of {', '.join(FBP_WINDOWS)}")
    return FBP_WINDOWS[name]


def _ramp_filter(sinogram: np.ndarray, window=FBP_WINDOWS["hann"]) -> np.ndarray:
    """Filter each projection (last axis) with the band-limited ramp of Kak & Slaney times ``window``."""
    n_bins = sinogram.shape[-1]
    size = 2 ** math.ceil(math.log2(2 * n_bins))  # zero padding: no wrap-around between projection ends
    offsets = np.concatenate([np.arange(size // 2 + 1), np.arange(-(size // 2) + 1, 0)])
    kernel = np.zeros(size)
    kernel[0] = 0.25
    odd = offsets % 2 == 1
    kernel[odd] = -1.0 / (np.pi * offsets[odd]) ** 2
    frequency = np.fft.rfftfreq(size)
    response = np.real(np.fft.rfft(kernel)) * window(2.0 * frequency)
    spectrum = np.fft.rfft(sinogram, n=size, axis=-1) * response.astype(np.float32)
    return np.fft.irfft(spectrum, n=size, axis=-1)[..., :n_bins].astype(np.float32)


def _filtered_backprojection(sinogram: np.ndarray, shape: tuple[int, int], window=FBP_WINDOWS["hann"]) -> np.ndarray:
    """FBP of (z, views, bins) sinograms over 180 degrees onto (z, *shape) slices, in pixel units."""
    filtered = _ramp_filter(sinogram, window)
    n_views = filtered.shape[1]
    return _backproject(filtered, _view_angles(n_views), shape) * (np.pi / n_views)


def _backproject(sinogram: np.ndarray, angles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sum, over views, of each pixel's value on the (upsampled) detector; slices vectorised.

    Slices are the innermost axis of both the lookup table and the result, so every lookup copies one
    contiguous run of values: five times faster than looking up slice by slice.
    """
    z, _, n_bins = sinogram.shape
    fine = np.arange((n_bins - 1) * DETECTOR_UPSAMPLING + 1) / DETECTOR_UPSAMPLING
    lower = np.minimum(fine.astype(np.intp), n_bins - 2)
    upper_weight = (fine - lower).astype(np.float32)[:, None]
    y, x = _pixel_positions(shape)
    centre = (n_bins - 1) / 2.0
    result = np.zeros((shape[0] * shape[1], z), dtype=np.float32)
    for view, angle in enumerate(angles):
        projection = sinogram[:, view, :].T  # (bins, z)
        lookup = projection[lower] * (1.0 - upper_weight) + projection[lower + 1] * upper_weight
        t = (x * np.cos(angle) + y * np.sin(angle) + centre) * DETECTOR_UPSAMPLING + 0.5
        result += lookup.take(t.ravel().astype(np.intp), axis=0)
    return result.T.reshape(z, *shape)


# ---------------------------------------------------------------------------------------------------------
# CT noise textures drawn in the image domain: cheap enough to draw afresh for every training patch
# ---------------------------------------------------------------------------------------------------------

#: Noise textures: white, Gaussian-blurred, and FBP-like (noise power ~ |f| window(f / cutoff)^2 in-plane, the
#: shape filtered back-projection gives stationary noise) for each reconstruction window.
CT_TEXTURES = ("white", "gaussian", *FBP_WINDOWS)
#: Ranges each texture's parameters are drawn from (uniformly): FBP cut-off as a fraction of the in-plane
#: Nyquist frequency (covers 0.4-1 mm pixels under one kernel, or one pixel size under smooth to sharp kernels),
#: high-frequency boost of edge-enhancing "bone/lung" kernels, blur of the Gaussian texture in pixels.
FBP_CUTOFF = (0.35, 1.0)
FBP_BOOST = (0.0, 1.5)
GAUSSIAN_BLUR_PX = (0.4, 2.0)
#: Through-plane correlation (slices thicker than their spacing): Gaussian sigma in slices, drawn for half the
#: volumes.
Z_CORRELATION = (0.3, 1.2)
#: Spatial variation of the noise std (it follows the attenuation along the rays): a smooth log-normal field
#: whose log-std is drawn from this range.
NOISE_VARIATION = (0.0, 0.5)


def ct_texture_noise(shape: tuple[int, int, int], rng: np.random.Generator, texture: str) -> np.ndarray:
    """Zero-mean noise of unit std on a (z, y, x) grid with a random instance of ``texture`` (see ``CT_TEXTURES``):
    its in-plane spectrum, a through-plane correlation for half the draws and a smoothly varying amplitude."""
    if texture not in CT_TEXTURES:
        raise ValueError(f"unknown CT noise texture '{texture}'; choose one of {', '.join(CT_TEXTURES)}")
    white = rng.standard_normal(shape, dtype=np.float32)
    gain = _in_plane_gain(shape[1:], texture, rng)
    noise = np.fft.irfft2(np.fft.rfft2(white) * gain, s=shape[1:]).astype(np.float32)
    if rng.random() < 0.5 and shape[0] > 1:
        noise = ndimage.gaussian_filter1d(noise, rng.uniform(*Z_CORRELATION), axis=0, mode="wrap")
    noise *= _smooth_amplitude(shape, rng.uniform(*NOISE_VARIATION), rng)
    return noise / max(float(noise.std()), 1e-12)


def _in_plane_gain(shape: tuple[int, int], texture: str, rng: np.random.Generator) -> np.ndarray:
    """Amplitude response (rfft2 layout) that shapes white noise into ``texture``."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.hypot(fy, fx).astype(np.float32)  # cycles per pixel, Nyquist 0.5
    if texture == "white":
        return np.ones_like(f)
    if texture == "gaussian":
        sigma = rng.uniform(*GAUSSIAN_BLUR_PX)
        return np.exp(-2.0 * (np.pi * sigma * f) ** 2)
    u = f / (0.5 * rng.uniform(*FBP_CUTOFF))
    boost = 1.0 + rng.uniform(*FBP_BOOST) * u**2
    return np.where(u <= 1.0, np.sqrt(f) * FBP_WINDOWS[texture](np.minimum(u, 1.0)) * boost, 0.0)


def _smooth_amplitude(shape: tuple[int, int, int], log_std: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth positive field exp(g), g a Gaussian field of std ``log_std`` varying over ~a third of each side."""
    if log_std == 0.0:
        return np.ones(shape, dtype=np.float32)
    coarse = rng.standard_normal((4, 4, 4)) * log_std
    zoom = [n / 4 for n in shape]
    # trilinear: a cubic spline is ten times slower and the exponential hides the difference
    return np.exp(ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)).astype(np.float32)


def ct_image_noise(hu: np.ndarray, noise_hu: float, rng: np.random.Generator, textures=CT_TEXTURES) -> np.ndarray:
    """The CT ``hu`` plus noise of std ``noise_hu`` HU with a texture drawn from ``textures``."""
    texture = str(rng.choice(list(textures)))
    hu = np.asarray(hu, dtype=np.float32)
    return hu + np.float32(noise_hu) * ct_texture_noise(hu.shape, rng, texture)


# ---------------------------------------------------------------------------------------------------------
# PET: fewer counts, with the noise texture of a reconstructed image
# ---------------------------------------------------------------------------------------------------------

#: Count scale: a (4 mm)^3 voxel at the foreground median activity holds this many expected counts at full
#: count, i.e. 10 % noise there, typical of clinical FDG. Counts scale with voxel volume and activity.
REFERENCE_COUNTS = 100.0
REFERENCE_VOXEL_MM3 = 64.0
#: FWHM (x, y, z mm) of the Gaussian that gives the noise the correlation of reconstructed PET. Fitted by
#: scripts/pet_noise_check.py to the post-filtered NEMA IQ reconstruction (recon2: noise ACF FWHM 5.1 mm
#: in-plane, 4.1 mm axial); the unfiltered recon1 fits ~2-2.6 mm. Pass a wider one for smoother recons.
PET_NOISE_FWHM_MM = (3.5, 3.5, 3.5)


def pet_low_count(
    activity: np.ndarray,
    count_fraction: float,
    rng: np.random.Generator,
    *,
    spacing: tuple[float, float, float],
    reference_counts: float = REFERENCE_COUNTS,
    fwhm_mm: float | tuple[float, float, float] = PET_NOISE_FWHM_MM,
) -> np.ndarray:
    """The PET ``activity`` (z, y, x) plus the noise of keeping only ``count_fraction`` of its counts.

    The image is read as expected counts c = activity x scale, the scale putting ``reference_counts`` in
    a (4 mm)^3 voxel at the foreground median activity (median of voxels at or above the volume mean,
    which the air around the body pulls far below any tissue). A full-count realisation n ~ Poisson(c) is
    thinned binomially to k ~ Binomial(n, f), and k/f - n, of mean 0 and variance c (1-f)/f, is the extra
    noise, so ``count_fraction=1`` adds nothing and the noise variance is proportional to the local mean
    and to (1-f)/f (~1/f at low fractions). The noise is then smoothed by a Gaussian of ``fwhm_mm`` (one
    value or x, y, z; 0 keeps it white) and rescaled to keep its variance, giving it the correlation of
    reconstructed PET. Output may dip below zero in near-empty regions, where clipping would bias the mean.
    """
    _check_fraction("count_fraction", count_fraction)
    activity = np.asarray(activity, dtype=np.float32)
    reference = _foreground_median(activity)
    if reference <= 0:
        raise ValueError("the PET volume has no positive activity to scale counts from")
    voxel_mm3 = float(np.prod(spacing))
    counts_per_unit = reference_counts * voxel_mm3 / REFERENCE_VOXEL_MM3 / reference
    full_counts = rng.poisson(np.clip(activity, 0.0, None) * counts_per_unit)
    kept_counts = rng.binomial(full_counts, count_fraction)
    noise = (kept_counts / count_fraction - full_counts) / counts_per_unit
    return activity + _correlate_keeping_variance(noise, spacing, fwhm_mm)


def _foreground_median(image: np.ndarray) -> float:
    """Median of the voxels at or above the volume mean: a robust 'typical tissue' value for PET and MRI."""
    return float(np.median(image[image >= image.mean()]))


def _correlate_keeping_variance(
    noise: np.ndarray, spacing: tuple[float, float, float], fwhm_mm: float | tuple[float, float, float]
) -> np.ndarray:
    """Gaussian-smoothed ``noise`` rescaled so that white noise keeps its variance."""
    fwhm_xyz = np.broadcast_to(np.asarray(fwhm_mm, dtype=float), (3,))
    sigmas_zyx = [float(fwhm / FWHM_PER_SIGMA / step) for fwhm, step in zip(fwhm_xyz[::-1], spacing[::-1], strict=True)]
    smoothed = ndimage.gaussian_filter(noise.astype(np.float32), sigmas_zyx, mode="reflect")
    return smoothed / math.sqrt(_kernel_energy(sigmas_zyx))


def _kernel_energy(sigmas: list[float]) -> float:
    """Sum of squares of the (separable) discrete Gaussian kernel that gaussian_filter applies."""
    energy = 1.0
    for sigma in (s for s in sigmas if s > 0):  # gaussian_filter leaves sigma-0 axes alone
        radius = max(1, math.ceil(4.0 * sigma))
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        energy *= float(np.sum(ndimage.gaussian_filter1d(impulse, sigma, mode="constant") ** 2))
    return energy


# ---------------------------------------------------------------------------------------------------------
# MRI: Rician noise of a magnitude image
# ---------------------------------------------------------------------------------------------------------


def mri_rician(image: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """|image + complex Gaussian noise|, sigma = foreground median / ``snr`` in each channel.

    The foreground median (median of voxels at or above the volume mean) stands for the tissue signal and is
    robust to bright fat or vessels. Background ends with Rician mean sigma sqrt(pi/2); bright tissue gets
    noise std ~sigma. The input is taken as the real part (negative scanner values stay allowed).
    """
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    image = np.asarray(image, dtype=np.float32)
    sigma = _foreground_median(image) / snr
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imaginary)


#: Receive coils whose sum of squares makes a magnitude image (1 = Rician, more = non-central chi noise).
MRI_COILS = (1, 8)
#: Share of the phase-encoding lines acquired with partial Fourier (the rest zero-filled), when drawn.
PARTIAL_FOURIER = (0.6, 0.85)


def mri_noise(image: np.ndarray, snr: float, rng: np.random.Generator, coils=MRI_COILS) -> np.ndarray:
    """The magnitude ``image`` as a multi-coil scanner would record it at ``snr`` with a random noise instance.

    Drawn per call: the coil count L in ``coils`` (sum of squares of L equal channels, each with the signal
    ``image / sqrt(L)``: Rician for L = 1, non-central chi above, background mean ~sigma sqrt(2L)); a smooth
    spatial variation of sigma (coil sensitivities, parallel-imaging g-factor); and, for most draws, in-plane
    k-space correlation of the noise: a Hann/Tukey-like apodisation of random strength, or partial Fourier
    along one in-plane axis (the missing lines zero-filled). sigma = foreground median / ``snr`` before the
    variation, as in ``mri_rician``.
    """
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    image = np.asarray(image, dtype=np.float32)
    n_coils = int(rng.integers(coils[0], coils[1] + 1))
    sigma = _foreground_median(image) / snr * _smooth_amplitude(image.shape, rng.uniform(*NOISE_VARIATION), rng)
    gain = _kspace_noise_gain(image.shape[1:], rng)
    power = np.zeros(image.shape, dtype=np.float32)
    for _ in range(n_coils):
        real, imaginary = (_correlated(rng.standard_normal(image.shape, dtype=np.float32), gain) for _ in range(2))
        power += (image / math.sqrt(n_coils) + sigma * real) ** 2 + (sigma * imaginary) ** 2
    return np.sqrt(power)


def _kspace_noise_gain(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
    """In-plane k-space weighting of the noise (rfft2 layout), or None for white noise (a quarter of draws)."""
    choice = rng.random()
    if choice < 0.25:
        return None
    fy = np.abs(np.fft.fftfreq(shape[0]))[:, None] * 2.0  # 0 at the centre of k-space, 1 at its edge
    fx = np.fft.rfftfreq(shape[1])[None, :] * 2.0
    if choice < 0.75:  # apodisation: flat to a random radius, then a cosine roll-off to zero at the edge
        flat = rng.uniform(0.0, 0.8)
        radius = np.minimum(np.hypot(fy, fx), 1.0)
        roll = np.clip((radius - flat) / (1.0 - flat), 0.0, 1.0)
        return (0.5 * (1.0 + np.cos(np.pi * roll))).astype(np.float32)
    kept = rng.uniform(*PARTIAL_FOURIER)  # lines past this share of the phase-encoding axis were never acquired
    signed = np.fft.fftfreq(shape[0])[:, None] * 2.0
    return np.broadcast_to((signed <= 2.0 * kept - 1.0).astype(np.float32), (shape[0], fx.shape[1])).copy()


def _correlated(white: np.ndarray, gain: np.ndarray | None) -> np.ndarray:
    """``white`` noise shaped in-plane by ``gain``, rescaled to unit std."""
    if gain is None:
        return white
    shaped = np.fft.irfft2(np.fft.rfft2(white) * gain, s=white.shape[1:]).astype(np.float32)
    return shaped / max(float(shaped.std()), 1e-12)


# ---------------------------------------------------------------------------------------------------------
# Through-plane super-resolution: thick slices and the network's input grid
# ---------------------------------------------------------------------------------------------------------

SLICE_PROFILES = ("box", "gaussian")


def thick_slices(volume: Volume, factor: int, axis: str, profile: str = "box", in_plane_factor: int = 1) -> Volume:
    """A low-resolution volume whose slices along ``axis`` are ``factor`` thin slices thick.

    ``box`` averages each run of ``factor`` thin slices; ``gaussian`` weights the thin slices by a
    Gaussian slice profile of FWHM = the thick-slice thickness centred on the thick slice (truncated and
    renormalised at the volume ends). Trailing thin slices that do not fill a whole thick slice are
    dropped. ``in_plane_factor`` also box-averages the two other axes. Geometry is exact: each thick
    voxel is centred on the thin voxels it averages, so ``fine_grid(low, factor, axis)`` is the covered
    part of the original grid.
    """
    _check_axis(axis)
    if profile not in SLICE_PROFILES:
        raise ValueError(f"unknown slice profile '{profile}'; choose one of {', '.join(SLICE_PROFILES)}")
    low = _coarsen_axis(volume, factor, axis, profile)
    for other in (name for name in AXIS_TO_NUMPY if name != axis):
        low = _coarsen_axis(low, in_plane_factor, other, "box")
    return low


def slab_phase(spec: dict, rng: np.random.Generator) -> int:
    """The thin slice where a ``thick_slices`` spec's first slab starts: 0, or with ``random_phase`` a random one
    of the first ``factor`` (a scanner's slabs need not start where the volume does)."""
    return int(rng.integers(spec["factor"])) if spec.get("random_phase", False) else 0


def thick_slice_pair(volume: Volume, spec: dict, phase: int) -> tuple[Volume, Volume]:
    """(thick-slice volume with its first slab starting at thin slice ``phase``, the original cropped to the thin
    slices the slabs cover, which is exactly ``fine_grid`` of the thick volume)."""
    factor, axis = spec["factor"], spec["axis"]
    numpy_axis = AXIS_TO_NUMPY[axis]
    n_thin = volume.array.shape[numpy_axis]
    thick = thick_slices(_slab(volume, numpy_axis, phase, n_thin - phase), factor, axis, spec.get("profile", "box"))
    reference = _slab(volume, numpy_axis, phase, thick.array.shape[numpy_axis] * factor)
    return thick, reference.with_array(reference.array.astype(np.float32))


def _common_span(n_thin: int, factor: int) -> tuple[int, int]:
    """[start, stop) of the thin slices that the slabs of every phase cover."""
    return factor - 1, min(p + (n_thin - p) // factor * factor for p in range(factor))


def _slab(volume: Volume, numpy_axis: int, start: int, count: int) -> Volume:
    """``count`` slices from ``start`` along one axis, geometry kept exact."""
    starts, sizes = [0, 0, 0], list(volume.array.shape)
    starts[numpy_axis], sizes[numpy_axis] = start, count
    return crop(volume, starts, sizes)


def _check_axis(axis: str) -> None:
    if axis not in AXIS_TO_NUMPY:
        raise ValueError(f"unknown axis '{axis}'; choose one of {', '.join(AXIS_TO_NUMPY)}")


def _coarsen_axis(volume: Volume, factor: int, axis: str, profile: str) -> Volume:
    """``volume`` with runs of ``factor`` voxels along ``axis`` merged, and its geometry moved to match."""
    if factor == 1:
        return volume
    numpy_axis = AXIS_TO_NUMPY[axis]
    n_thin = volume.array.shape[numpy_axis]
    if n_thin < factor:
        raise ValueError(f"{n_thin} voxels along {axis} cannot make a single {factor}x thicker voxel")
    weights = _slice_weights(n_thin, factor, profile)
    merged = np.tensordot(weights, np.moveaxis(volume.array.astype(np.float32), numpy_axis, 0), axes=1)
    itk_axis = 2 - numpy_axis
    spacing = list(volume.spacing)
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    # The first thick voxel is centred on the middle of thin voxels 0 .. factor-1.
    origin = np.asarray(volume.origin) + 0.5 * (factor - 1) * spacing[itk_axis] * direction[:, itk_axis]
    spacing[itk_axis] *= factor
    return replace(
        volume,
        array=np.moveaxis(merged, 0, numpy_axis).astype(np.float32),
        spacing=tuple(spacing),
        origin=tuple(origin.tolist()),
    )


def _slice_weights(n_thin: int, factor: int, profile: str) -> np.ndarray:
    """(n_thick, n_thin) weights, rows summing to 1, of thin slices in each thick slice."""
    n_thick = n_thin // factor
    thin = np.arange(n_thin)
    centres = np.arange(n_thick) * factor + 0.5 * (factor - 1)
    if profile == "box":
        weights = (thin[None, :] // factor == np.arange(n_thick)[:, None]).astype(np.float64)
    else:
        sigma = factor / FWHM_PER_SIGMA
        weights = np.exp(-0.5 * ((thin[None, :] - centres[:, None]) / sigma) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Registry: a degradation from a small dict spec, for the trainer and the evaluator
# ---------------------------------------------------------------------------------------------------------

Degrade = Callable[[Volume, np.random.Generator], tuple[Volume, Volume]]


def _ct_low_dose(volume: Volume, dose: float, rng: np.random.Generator, reconstruction_filter="hann", **options):
    window = _draw_choice(reconstruction_filter, rng)
    return low_dose_ct(volume.array, dose, rng, spacing=volume.spacing, reconstruction_filter=window, **options)


def _ct_image_noise(volume: Volume, noise_hu: float, rng: np.random.Generator, textures=CT_TEXTURES) -> np.ndarray:
    return ct_image_noise(volume.array, noise_hu, rng, textures)


def _pet_low_count(volume: Volume, fraction: float, rng: np.random.Generator, fwhm_range_mm=None, **options):
    if fwhm_range_mm is not None:  # reconstructions differ in how much they smooth: one width per realisation
        options["fwhm_mm"] = _draw_level(fwhm_range_mm, rng)
    return pet_low_count(volume.array, fraction, rng, spacing=volume.spacing, **options)


def _mri_rician(volume: Volume, snr: float, rng: np.random.Generator) -> np.ndarray:
    return mri_rician(volume.array, snr, rng)


def _mri_noise(volume: Volume, snr: float, rng: np.random.Generator, coils=MRI_COILS) -> np.ndarray:
    return mri_noise(volume.array, snr, rng, tuple(coils))


#: Denoising kinds: (the level's key, its upper bound or None, optional keys, simulator).
DENOISING = {
    "ct_low_dose": ("dose", 1.0, ("incident_photons", "electronic_noise", "reconstruction_filter"), _ct_low_dose),
    "ct_image_noise": ("noise_hu", None, ("textures",), _ct_image_noise),
    "pet_low_count": ("fraction", 1.0, ("reference_counts", "fwhm_mm", "fwhm_range_mm"), _pet_low_count),
    "mri_rician": ("snr", None, (), _mri_rician),
    "mri_noise": ("snr", None, ("coils",), _mri_noise),
}
#: Every kind's (required keys, optional keys).
SPEC_KEYS = {kind: ((level,), optional) for kind, (level, _, optional, _) in DENOISING.items()} | {
    "thick_slices": (("factor", "axis"), ("profile", "random_phase"))
}


def make_degradation(spec: dict) -> Degrade:
    """``degrade(volume, rng) -> (model_input, reference)`` on the same grid, from a spec such as
    ``{"kind": "ct_low_dose", "dose": [0.1, 0.5]}`` or ``{"kind": "thick_slices", "factor": 4, "axis": "z"}``.

    Denoising returns (noisy, the original); super-resolution returns (the B-spline upsampled thick-slice
    volume, the original cropped to the slices it covers). A [low, high] level is drawn per call
    log-uniformly: noise variance scales as 1/dose, 1/fraction and 1/snr^2, so equal odds per octave give
    as many hard (low-dose) as easy examples, where a uniform draw would rarely visit the low end.
    """
    _check_spec(spec)
    kind = spec["kind"]
    if kind == "thick_slices":
        return _super_resolution(spec)
    level_key, _, optional, simulate = DENOISING[kind]
    options = {key: spec[key] for key in optional if key in spec}

    def degrade(volume: Volume, rng: np.random.Generator) -> tuple[Volume, Volume]:
        noisy = simulate(volume, _draw_level(spec[level_key], rng), rng, **options)
        return volume.with_array(noisy), volume.with_array(volume.array.astype(np.float32))

    return degrade


def _check_spec(spec: dict) -> None:
    """Raise ValueError, listing what is valid, unless ``spec`` names a known kind with valid keys and values."""
    if not isinstance(spec, dict) or spec.get("kind") not in SPEC_KEYS:
        raise ValueError(f"degradation spec needs 'kind', one of {', '.join(SPEC_KEYS)}; got {spec!r}")
    kind = spec["kind"]
    required, optional = SPEC_KEYS[kind]
    given = set(spec) - {"kind"}
    missing, unknown = set(required) - given, given - set(required) - set(optional)
    if missing or unknown:
        problems = [f"missing {', '.join(sorted(missing))}"] if missing else []
        problems += [f"unknown {', '.join(sorted(unknown))}"] if unknown else []
        valid = ", ".join(required) + (f" (optional: {', '.join(optional)})" if optional else "")
        raise ValueError(f"'{kind}' spec: {'; '.join(problems)}. Valid keys: {valid}")
    if kind == "thick_slices":
        _check_sr_spec(spec)
    else:
        level_key, upper, _, _ = DENOISING[kind]
        _check_level(level_key, spec[level_key], upper)
        for key, valid in CHOICES.items():
            if key in spec:
                _check_choice(key, spec[key], valid)
        if "fwhm_range_mm" in spec:
            _check_level("fwhm_range_mm", spec["fwhm_range_mm"], None)
        if "coils" in spec:
            _check_coils(spec["coils"])


def _check_level(name: str, level, upper: float | None) -> None:
    bounds = level if isinstance(level, list | tuple) else [level, level]
    ok = (
        len(bounds) == 2
        and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        and 0 < bounds[0] <= bounds[1]
        and (upper is None or bounds[1] <= upper)
    )
    if not ok:
        allowed = "positive" if upper is None else f"in (0, {upper:g}]"
        raise ValueError(f"'{name}' must be a number or a [low, high] range, {allowed}, low <= high; got {level!r}")


#: Spec keys that name one option, or a list drawn from per realisation, and the options they accept.
CHOICES = {"reconstruction_filter": tuple(FBP_WINDOWS), "textures": CT_TEXTURES}


def _check_choice(name: str, value, valid: tuple[str, ...]) -> None:
    names = value if isinstance(value, list | tuple) else [value]
    if not names or any(n not in valid for n in names):
        raise ValueError(f"'{name}' must name one or a list of {', '.join(valid)}; got {value!r}")


def _check_coils(coils) -> None:
    whole = isinstance(coils, list | tuple) and len(coils) == 2 and all(isinstance(c, int) for c in coils)
    if not whole or not 1 <= coils[0] <= coils[1]:
        raise ValueError(f"'coils' must be [low, high] whole numbers, 1 <= low <= high; got {coils!r}")


def _check_sr_spec(spec: dict) -> None:
    factor = spec["factor"]
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 2:
        raise ValueError(f"'factor' must be an integer >= 2 (e.g. 2 or 4); got {factor!r}")
    _check_axis(spec["axis"])
    if spec.get("profile", "box") not in SLICE_PROFILES:
        raise ValueError(f"'profile' must be one of {', '.join(SLICE_PROFILES)}; got {spec['profile']!r}")
    if not isinstance(spec.get("random_phase", False), bool):
        raise ValueError(f"'random_phase' must be true or false; got {spec['random_phase']!r}")


def _draw_choice(option, rng: np.random.Generator):
    """A single value as is; one of a list, uniformly."""
    return str(rng.choice(option)) if isinstance(option, list | tuple) else option


def _draw_level(level, rng: np.random.Generator) -> float:
    """A fixed level as is; a [low, high] range log-uniformly."""
    if not isinstance(level, list | tuple):
        return float(level)
    low, high = level
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _super_resolution(spec: dict) -> Degrade:
    axis = AXIS_TO_NUMPY[spec["axis"]]

    def degrade(volume: Volume, rng: np.random.Generator) -> tuple[Volume, Volume]:
        phase = slab_phase(spec, rng)
        thick, reference = thick_slice_pair(volume, spec, phase)
        model_input = reference.with_array(sr_model_input(thick, spec["factor"], spec["axis"]).array)
        if not spec.get("random_phase", False):
            return model_input, reference
        # every phase is cut to the span all phases cover, so the realisations of a scan share one grid
        start, stop = _common_span(volume.array.shape[axis], spec["factor"])
        common = (start - phase, stop - start)
        return _slab(model_input, axis, *common), _slab(reference, axis, *common)

    return degrade


def as_reference(volume: Volume, modality: str) -> Volume:
    """A scan as every path (training pairs, validation, evaluation) takes it before degrading: float32, and CT
    clipped to [-1024, 3071] HU, so that a scanner's -3024 padding outside the reconstruction circle is plain air
    (thick slices then average air, not padding)."""
    array = volume.array.astype(np.float32)
    return volume.with_array(np.clip(array, *CT_RANGE) if modality == "ct" else array)


def scored_denoising_case(
    volume: Volume, spec: dict, modality: str, rng: np.random.Generator, size: tuple[int, int, int] | None = None
) -> tuple[Volume, Volume, Volume]:
    """(degraded, reference) centre-cropped to ``size``, and the degraded volume before that crop (the scan a
    normaliser is fitted on, as it would be for a whole-scan run): how evaluation and the trainer's validation
    prepare a denoising case. CT degrades only the crop's slices (the simulator works slice by slice, each from its
    whole cross-section) and is then clipped to the CT range, so that a scanner's -3024 padding is plain air for
    every method, as it is for the model."""
    if size is not None and modality == "ct":
        volume = centre_crop(volume, (size[0], *volume.array.shape[1:]))
    noisy, reference = make_degradation(spec)(as_reference(volume, modality), rng)
    if modality == "ct":
        noisy, reference = (v.with_array(np.clip(v.array, *CT_RANGE)) for v in (noisy, reference))
    if size is None:
        return noisy, reference, noisy
    return centre_crop(noisy, size), centre_crop(reference, size), noisy
