"""Degradation simulators: noise statistics on synthetic phantoms, exact SR geometry, the spec registry."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sdenhance import degrade
from sdenhance.degrade import (
    low_dose_ct,
    make_degradation,
    mri_rician,
    pet_low_count,
    thick_slices,
)
from sdenhance.io import Volume, fine_grid, read_volume, sr_model_input

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def water_cylinder(size: int, pixel_mm: float, radius_mm: float, slices: int, outside: float = -1000.0):
    """(slices, size, size) HU: water inside a centred cylinder, ``outside`` elsewhere; and the radius map."""
    centre = (size - 1) / 2.0
    y, x = np.mgrid[:size, :size]
    radius = np.hypot(x - centre, y - centre) * pixel_mm
    slice_ = np.where(radius < radius_mm, 0.0, outside).astype(np.float32)
    return np.repeat(slice_[None], slices, axis=0), radius


def oblique_volume(shape=(11, 9, 13), spacing=(0.7, 1.3, 2.9)) -> Volume:
    """Random values on a grid rotated about two axes, anisotropic spacing, off-centre origin."""
    a, b = np.radians(30), np.radians(50)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = tuple((about_z @ about_x).ravel().tolist())
    array = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    return Volume(array=array, spacing=spacing, origin=(12.5, -30.25, 41.0), direction=direction)


# ------------------------------------------------------------------ low-dose CT


def test_ct_reconstruction_is_exact_up_to_the_hann_window():
    """The FBP that reconstructs the noise inverts the projector: what makes the noise HU figures right."""
    _, radius = water_cylinder(96, 1.0, 35.0, 1)
    disk = (radius < 35.0).astype(np.float32)[None]
    views = degrade._alias_free_views(96)
    recon = degrade._filtered_backprojection(degrade._project(disk, degrade._view_angles(views)), (96, 96))
    assert recon[0, 38:58, 38:58].mean() == pytest.approx(1.0, abs=0.01)
    assert np.abs(recon[0, :8, :8]).max() < 0.02


def test_ct_full_dose_returns_the_input_exactly_and_leaves_it_untouched():
    hu, _ = water_cylinder(48, 2.0, 40.0, 2)
    hu[:, 20:24, 20:24] = 900.0
    before = hu.copy()
    out = low_dose_ct(hu, 1.0, np.random.default_rng(0), spacing=(2.0, 2.0, 3.0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, before)
    np.testing.assert_array_equal(hu, before)


def test_ct_added_noise_grows_as_sqrt_of_one_minus_dose_over_dose():
    hu, radius = water_cylinder(64, 3.0, 80.0, 4)
    centre = radius < 35.0

    def added_std(dose):
        # One seed for both doses: the same normal draws, so the ratio shows the variance formula exactly.
        out = low_dose_ct(hu, dose, np.random.default_rng(1), spacing=(3.0, 3.0, 2.0), electronic_noise=0.0)
        return float((out - hu)[:, centre].std())

    expected = math.sqrt((1 - 0.125) / 0.125 / ((1 - 0.5) / 0.5))  # sqrt(7); 1/sqrt(dose) would give 2
    assert added_std(0.125) / added_std(0.5) == pytest.approx(expected, rel=1e-3)


def test_ct_electronic_noise_adds_noise():
    hu, radius = water_cylinder(64, 3.0, 80.0, 4)
    centre = radius < 35.0
    quiet = low_dose_ct(hu, 0.1, np.random.default_rng(1), spacing=(3.0, 3.0, 2.0), electronic_noise=0.0)
    loud = low_dose_ct(hu, 0.1, np.random.default_rng(1), spacing=(3.0, 3.0, 2.0), electronic_noise=60.0)
    assert (loud - hu)[:, centre].std() > 1.2 * (quiet - hu)[:, centre].std()


def test_ct_seeding_is_reproducible():
    hu, _ = water_cylinder(40, 2.0, 30.0, 2)
    run = [low_dose_ct(hu, 0.3, np.random.default_rng(seed), spacing=(2.0, 2.0, 2.0)) for seed in (7, 7, 8)]
    np.testing.assert_array_equal(run[0], run[1])
    assert not np.array_equal(run[0], run[2])


def test_ct_quarter_dose_noise_is_realistic_on_a_water_body():
    """300 mm water, 0.8 mm pixels, 5 mm slices: a quarter dose adds 15-30 HU (documented: ~20 HU)."""
    hu, radius = water_cylinder(400, 0.8, 150.0, 1)
    out = low_dose_ct(hu, 0.25, np.random.default_rng(0), spacing=(0.8, 0.8, 5.0))
    assert 15.0 < float((out - hu)[:, radius < 40].std()) < 30.0


def test_ct_air_and_outside_the_field_of_view_stay_sensible():
    hu, radius = water_cylinder(64, 3.0, 60.0, 3)
    hu[:, radius > 90] = -3024.0  # a GE scanner's padding outside the reconstruction circle
    out = low_dose_ct(hu, 0.1, np.random.default_rng(0), spacing=(3.0, 3.0, 2.0))
    assert np.all(np.isfinite(out))
    air = (radius > 70) & (radius < 85)
    assert float(out[:, air].mean()) == pytest.approx(-1000.0, abs=10.0)
    assert np.all(np.clip(out, -1024, 3071)[:, radius > 95] == -1024.0)


def test_sharper_reconstruction_filters_give_more_and_finer_noise():
    """Same rays, same draws: the plain ramp (a bone/lung kernel) leaves more, finer-grained noise than Hann."""
    hu, radius = water_cylinder(96, 2.0, 80.0, 2)
    centre = radius < 40.0
    stats = {}
    for window in ("ramp", "shepp-logan", "cosine", "hann"):
        noise = low_dose_ct(hu, 0.25, np.random.default_rng(0), spacing=(2.0, 2.0, 3.0), reconstruction_filter=window)
        noise = noise - hu
        neighbours = float(np.mean(noise[:, 1:, :] * noise[:, :-1, :])) / float(np.mean(noise**2))
        stats[window] = (float(noise[:, centre].std()), neighbours)
    stds, correlations = zip(*(stats[w] for w in ("ramp", "shepp-logan", "cosine", "hann")), strict=True)
    assert list(stds) == sorted(stds, reverse=True) and stds[0] > 1.5 * stds[-1]
    assert list(correlations) == sorted(correlations)  # smoother kernels correlate neighbours more
    assert correlations[0] < 0.2 < 0.5 < correlations[-1]  # ramp noise is nearly white from pixel to pixel


# ------------------------------------------------------------------ CT noise textures in the image domain


def _ring_power(noise: np.ndarray) -> np.ndarray:
    """Mean in-plane power of ``noise`` in rings 0.05 cycles/pixel wide, from the lowest frequencies up."""
    power = np.abs(np.fft.rfft2(noise)) ** 2
    f = np.hypot(np.fft.fftfreq(noise.shape[1])[:, None], np.fft.rfftfreq(noise.shape[2])[None, :])
    return np.array([power[:, (f > lo) & (f <= lo + 0.05)].mean() for lo in np.arange(0.0, 0.5, 0.05)])


@pytest.mark.parametrize("texture", degrade.CT_TEXTURES)
def test_each_ct_texture_has_unit_std_and_its_own_spectrum(texture):
    noise = degrade.ct_texture_noise((8, 96, 96), np.random.default_rng(1), texture)
    assert noise.dtype == np.float32 and noise.shape == (8, 96, 96)
    assert float(noise.std()) == pytest.approx(1.0, rel=1e-4) and abs(float(noise.mean())) < 0.05
    rings = _ring_power(noise)
    if texture == "white":
        assert rings.min() > 0.6 * rings.max()
    elif texture == "gaussian":
        assert rings.argmax() == 0 and rings[-1] < 0.2 * rings[0]
    else:  # filtered back-projection: noise power ~ |f| vanishes at the lowest frequencies
        assert rings.argmax() > 0 and rings[0] < 0.7 * rings.max()


def test_fbp_textures_vanish_above_their_cut_off_and_vary_smoothly_in_amplitude():
    rng = np.random.default_rng(2)
    for _ in range(5):
        gain = degrade._in_plane_gain((64, 64), "hann", rng)
        f = np.hypot(np.fft.fftfreq(64)[:, None], np.fft.rfftfreq(64)[None, :])
        assert np.all(gain[f > 0.5] == 0.0) and gain[0, 0] == 0.0
    amplitude = degrade._smooth_amplitude((8, 64, 64), 0.5, rng)
    assert amplitude.min() > 0 and amplitude.std() > 0.1
    assert np.abs(np.diff(np.log(amplitude), axis=2)).max() < 0.2  # smooth: no jumps between neighbours


def test_ct_image_noise_has_the_requested_std_and_leaves_the_input_untouched():
    hu, _ = water_cylinder(64, 1.0, 30.0, 6)
    before = hu.copy()
    runs = [degrade.ct_image_noise(hu, 40.0, np.random.default_rng(seed), ("ramp", "white")) for seed in (3, 3, 4)]
    np.testing.assert_array_equal(hu, before)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert float((runs[0] - hu).std()) == pytest.approx(40.0, rel=1e-3)


# ------------------------------------------------------------------ PET


def three_activity_blocks() -> tuple[np.ndarray, list[tuple[slice, slice, slice]], list[float]]:
    """(32, 40, 96) activity: blocks of 1, 4 and 16 along x, with interiors clear of the filter's reach."""
    levels = [1.0, 4.0, 16.0]
    activity = np.repeat(np.array(levels, dtype=np.float32), 32)[None, None, :] * np.ones((32, 40, 1), np.float32)
    interiors = [(slice(4, 28), slice(4, 36), slice(32 * i + 4, 32 * i + 28)) for i in range(3)]
    return activity, interiors, levels


def test_pet_noise_variance_is_proportional_to_the_mean_and_to_the_count_odds():
    activity, interiors, levels = three_activity_blocks()
    spacing = (2.0, 2.0, 2.0)
    reference_counts = 2000.0
    # Median of the voxels above the mean (7) is the top level, 16: the documented count scale.
    counts_per_unit = reference_counts * 8.0 / 64.0 / 16.0
    for seed, fraction in enumerate((0.1, 0.4)):
        out = pet_low_count(
            activity, fraction, np.random.default_rng(seed), spacing=spacing, reference_counts=reference_counts
        )
        for level, inside in zip(levels, interiors, strict=True):
            expected_variance = level * (1 - fraction) / fraction / counts_per_unit
            assert float(out[inside].var()) == pytest.approx(expected_variance, rel=0.1)
            # Mean within 4 standard errors. The default 3.5 mm correlation on 2 mm voxels leaves one
            # independent value per (2 sqrt(pi) sigma)^3 ~ 18 voxels.
            standard_error = math.sqrt(expected_variance * 18 / out[inside].size)
            assert float(out[inside].mean()) == pytest.approx(level, abs=4 * standard_error)


def test_pet_noise_is_correlated_like_the_requested_gaussian():
    activity = np.full((24, 48, 48), 10.0, dtype=np.float32)
    out = pet_low_count(activity, 0.2, np.random.default_rng(0), spacing=(2.0, 2.0, 2.0), fwhm_mm=(6.0, 6.0, 2.0))
    noise = out - 10.0
    neighbour_x = np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1]
    neighbour_z = np.corrcoef(noise[:-1].ravel(), noise[1:].ravel())[0, 1]
    # Gaussian-filtered white noise: lag-1 correlation exp(-1 / (4 sigma^2)), sigma in voxels.
    sigma_x = 3.0 / degrade.FWHM_PER_SIGMA
    assert neighbour_x == pytest.approx(math.exp(-1.0 / (4 * sigma_x**2)), abs=0.03)
    assert neighbour_z < neighbour_x - 0.2


def test_pet_full_count_and_input_are_untouched_and_seeding_reproduces():
    activity, _, _ = three_activity_blocks()
    before = activity.copy()
    np.testing.assert_array_equal(pet_low_count(activity, 1.0, np.random.default_rng(0), spacing=(2, 2, 2)), before)
    first, again = (pet_low_count(activity, 0.3, np.random.default_rng(5), spacing=(2, 2, 2)) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(activity, before)
    assert first.dtype == np.float32


# ------------------------------------------------------------------ MRI


def test_mri_rician_background_bias_and_bright_noise():
    image = np.zeros((16, 64, 64), dtype=np.float32)
    image[:, :, 32:] = 200.0  # median of voxels above the mean is 200, so sigma = 200 / snr
    snr = 20.0
    sigma = 200.0 / snr
    out = mri_rician(image, snr, np.random.default_rng(0))
    background, bright = out[:, :, :32], out[:, :, 32:]
    assert float(background.mean()) == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    assert float(background.std()) == pytest.approx(sigma * math.sqrt(2 - math.pi / 2), rel=0.03)
    assert float(bright.std()) == pytest.approx(sigma, rel=0.03)
    assert float(bright.mean()) == pytest.approx(math.hypot(200.0, sigma), rel=0.005)
    assert np.all(image[:, :, :32] == 0)


def test_mri_rician_seeding_is_reproducible():
    image = np.random.default_rng(0).uniform(0, 100, (4, 8, 8)).astype(np.float32)
    a, b = (mri_rician(image, 10.0, np.random.default_rng(2)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, mri_rician(image, 10.0, np.random.default_rng(3)))


def test_mri_multicoil_background_follows_the_non_central_chi_mean():
    """Zero signal: the sum of squares of L coils has mean sigma sqrt(2) Gamma(L + 1/2) / Gamma(L)."""
    image = np.zeros((8, 64, 64), dtype=np.float32)
    image[:, :8, :8] = 100.0  # foreground whose median sets sigma = 100 / snr
    for n_coils in (1, 4):
        out = degrade.mri_noise(image, 10.0, np.random.default_rng(n_coils), coils=(n_coils, n_coils))
        expected = math.sqrt(2.0) * math.gamma(n_coils + 0.5) / math.gamma(n_coils) * 10.0
        background = out[:, 16:, 16:]
        # the sigma map varies smoothly by up to exp(+-0.5); the mean over the volume stays within ~25 %
        assert float(background.mean()) == pytest.approx(expected, rel=0.25)
    np.testing.assert_array_equal(image[:, :8, :8], 100.0)  # input untouched


def test_mri_kspace_weightings_correlate_the_noise_in_plane_only():
    rng = np.random.default_rng(0)
    correlations = []
    for _ in range(40):
        gain = degrade._kspace_noise_gain((64, 64), rng)
        noise = degrade._correlated(rng.standard_normal((4, 64, 64), dtype=np.float32), gain)
        assert float(noise.std()) == pytest.approx(1.0, rel=0.02)
        correlations.append(float(np.mean(noise[:, 1:] * noise[:, :-1])))
        assert abs(float(np.mean(noise[1:] * noise[:-1]))) < 0.05  # slices stay independent
    assert min(correlations) < 0.05 and max(correlations) > 0.3  # white for some draws, correlated for others


# ------------------------------------------------------------------ thick slices / SR input


def voxel_centres(volume: Volume) -> np.ndarray:
    """Physical centres (z, y, x, 3) of every voxel."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in volume.array.shape), indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    return volume.index_to_physical(index).reshape(*volume.array.shape, 3)


@pytest.mark.parametrize("axis", ["x", "y", "z"])
@pytest.mark.parametrize("factor", [2, 4])
def test_fine_grid_of_thick_slices_is_the_covered_original_grid(axis, factor):
    original = oblique_volume()
    low = thick_slices(original, factor, axis)
    grid = fine_grid(low, factor, axis)
    numpy_axis = degrade.AXIS_TO_NUMPY[axis]
    assert low.array.shape[numpy_axis] == original.array.shape[numpy_axis] // factor  # trailing slices dropped
    expected_shape = list(original.array.shape)
    expected_shape[numpy_axis] = low.array.shape[numpy_axis] * factor
    assert grid.array.shape == tuple(expected_shape)
    np.testing.assert_allclose(grid.origin, original.origin, atol=1e-9)
    np.testing.assert_allclose(grid.spacing, original.spacing, rtol=1e-12)
    assert grid.direction == original.direction


@pytest.mark.parametrize("profile", ["box", "gaussian"])
def test_each_thick_voxel_is_centred_on_the_thin_voxels_it_averages(profile):
    original = oblique_volume(shape=(13, 10, 9))
    low = thick_slices(original, 2, "y", profile=profile, in_plane_factor=3)
    assert low.array.shape == (4, 5, 3)
    thin = voxel_centres(original)[:12, :10, :9].reshape(4, 3, 5, 2, 3, 3, 3)
    np.testing.assert_allclose(voxel_centres(low), thin.mean(axis=(1, 3, 5)), atol=1e-9)


def test_box_profile_averages_consecutive_slices():
    original = oblique_volume(shape=(10, 4, 5))
    low = thick_slices(original, 4, "z")
    np.testing.assert_allclose(low.array, original.array[:8].reshape(2, 4, 4, 5).mean(axis=1), atol=1e-6)
    assert low.array.dtype == np.float32


def test_gaussian_profile_is_centred_and_as_wide_as_the_thick_slice():
    ramp = np.arange(24, dtype=np.float32)[:, None, None] * np.ones((1, 3, 3), np.float32)
    original = Volume(array=ramp, spacing=(1.0, 1.0, 1.0))
    low = thick_slices(original, 4, "z", profile="gaussian")
    # A symmetric profile returns a linear ramp at each thick slice's centre, away from the truncated ends.
    np.testing.assert_allclose(low.array[1:-1, 0, 0], np.arange(1, 5) * 4 + 1.5, atol=0.005)
    spike = np.zeros((24, 1, 1), np.float32)
    spike[10] = 1.0  # thin slice 10 sits 0.5 thin slices from thick slice 2's centre (9.5)
    weights = thick_slices(Volume(array=spike, spacing=(1.0, 1.0, 1.0)), 4, "z", "gaussian").array[:, 0, 0]
    sigma = 4.0 / degrade.FWHM_PER_SIGMA
    assert weights[2] / weights[3] == pytest.approx(math.exp(-(0.5**2 - 3.5**2) / (2 * sigma**2)), rel=1e-4)


def test_sr_model_input_is_on_the_fine_grid_and_recovers_smooth_content():
    z = np.arange(32, dtype=np.float32)
    smooth = np.sin(z / 5.0)[:, None, None] * np.ones((1, 6, 6), np.float32)
    original = Volume(array=smooth, spacing=(1.0, 1.0, 1.5), origin=(3.0, -2.0, 7.0))
    low = thick_slices(original, 2, "z")
    upsampled = sr_model_input(low, 2, "z")
    assert upsampled.array.shape == original.array.shape
    np.testing.assert_allclose(upsampled.origin, original.origin, atol=1e-9)
    # B-spline with edge clamping is loose over the last two thick slices; the interior is close.
    np.testing.assert_allclose(upsampled.array[4:-4], smooth[4:-4], atol=0.01)


@pytest.mark.parametrize("factor", [2, 4])
def test_each_slab_phase_starts_the_thick_slices_at_its_thin_slice(factor):
    original = oblique_volume(shape=(19, 9, 13))
    spec = {"kind": "thick_slices", "factor": factor, "axis": "z", "random_phase": True}
    rng = np.random.default_rng(0)
    assert {degrade.slab_phase(spec, rng) for _ in range(40)} == set(range(factor))
    thin = voxel_centres(original)
    for phase in range(factor):
        thick, reference = degrade.thick_slice_pair(original, spec, phase)
        np.testing.assert_allclose(voxel_centres(thick)[0], thin[phase : phase + factor].mean(axis=0), atol=1e-9)
        covered = thick.array.shape[0] * factor
        np.testing.assert_array_equal(reference.array, original.array[phase : phase + covered])
        grid = fine_grid(thick, factor, "z")  # where every method's output lands in the evaluator
        assert grid.array.shape == reference.array.shape
        np.testing.assert_allclose(grid.origin, reference.origin, atol=1e-9)


@pytest.mark.parametrize(("factor", "span"), [(2, (1, 18)), (4, (3, 16))])
def test_random_phase_realisations_share_the_span_every_phase_covers(factor, span):
    original = oblique_volume(shape=(19, 9, 13))
    spec = {"kind": "thick_slices", "factor": factor, "axis": "z", "random_phase": True}
    start, stop = span
    inputs = set()
    for seed in range(12):
        model_input, reference = make_degradation(spec)(original, np.random.default_rng(seed))
        np.testing.assert_array_equal(reference.array, original.array[start:stop])
        np.testing.assert_allclose(reference.origin, voxel_centres(original)[start, 0, 0], atol=1e-9)
        assert model_input.origin == reference.origin
        # the input is the fine-grid upsampling of that realisation's slabs, cut to the span
        phase = degrade.slab_phase(spec, np.random.default_rng(seed))
        thick, _ = degrade.thick_slice_pair(original, spec, phase)
        upsampled = sr_model_input(thick, factor, "z").array[start - phase : stop - phase]
        np.testing.assert_array_equal(model_input.array, upsampled)
        inputs.add(model_input.array.tobytes())
    assert len(inputs) == factor  # each phase averages different runs of thin slices


# ------------------------------------------------------------------ registry


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "ct_low_dose", "dose": [0.1, 0.5]},
        {"kind": "ct_low_dose", "dose": 0.2, "reconstruction_filter": ["ramp", "cosine"]},
        {"kind": "ct_image_noise", "noise_hu": [5, 50]},
        {"kind": "pet_low_count", "fraction": 0.2, "fwhm_mm": 4.0},
        {"kind": "pet_low_count", "fraction": [0.02, 0.5], "fwhm_range_mm": [1.0, 6.0]},
        {"kind": "mri_rician", "snr": [5, 20]},
        {"kind": "mri_noise", "snr": [3, 50], "coils": [1, 8]},
        {"kind": "thick_slices", "factor": 4, "axis": "x", "profile": "gaussian"},
    ],
)
def test_degradations_return_input_and_reference_on_the_same_grid(spec):
    original = oblique_volume(shape=(6, 33, 30))
    original = original.with_array(np.abs(original.array) * 100.0)
    model_input, reference = make_degradation(spec)(original, np.random.default_rng(0))
    assert model_input.array.shape == reference.array.shape
    assert (model_input.spacing, model_input.origin, model_input.direction) == (
        reference.spacing,
        reference.origin,
        reference.direction,
    )
    assert model_input.array.dtype == reference.array.dtype == np.float32
    assert not np.array_equal(model_input.array, reference.array)
    # Denoising keeps the whole volume; SR keeps the 28 columns that seven 4x thick slices cover.
    covered = original.array[..., :28] if spec["kind"] == "thick_slices" else original.array
    np.testing.assert_array_equal(reference.array, covered)
    assert (reference.spacing, reference.origin) == (original.spacing, original.origin)


def test_fixed_level_is_used_as_is_and_ranges_are_log_uniform():
    assert degrade._draw_level(0.3, np.random.default_rng(0)) == 0.3
    rng = np.random.default_rng(0)
    draws = np.array([degrade._draw_level([0.01, 1.0], rng) for _ in range(4000)])
    assert draws.min() >= 0.01 and draws.max() <= 1.0
    assert float(np.median(draws)) == pytest.approx(0.1, rel=0.1)  # a uniform draw's median would be 0.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "blur"}, "ct_low_dose, ct_image_noise, pet_low_count, mri_rician, mri_noise, thick_slices"),
        ({"kind": "ct_image_noise", "noise_hu": 20, "textures": ["white", "bumpy"]}, "white, gaussian, ramp"),
        ({"kind": "ct_low_dose", "dose": 0.5, "reconstruction_filter": "sinc"}, "ramp, shepp-logan"),
        ({"dose": 0.5}, "needs 'kind'"),
        ({"kind": "ct_low_dose"}, "missing dose. Valid keys: dose"),
        ({"kind": "ct_low_dose", "dose": 0.5, "snr": 3}, "unknown snr"),
        ({"kind": "ct_low_dose", "dose": [0.5, 0.1]}, "low <= high"),
        ({"kind": "pet_low_count", "fraction": 1.5}, r"in \(0, 1\]"),
        ({"kind": "mri_rician", "snr": -2}, "positive"),
        ({"kind": "mri_noise", "snr": 5, "coils": [4, 2]}, "1 <= low <= high"),
        ({"kind": "pet_low_count", "fraction": 0.1, "fwhm_range_mm": [6, 1]}, "low <= high"),
        ({"kind": "mri_rician", "snr": [1, 2, 3]}, "range"),
        ({"kind": "thick_slices", "factor": 1, "axis": "z"}, "integer >= 2"),
        ({"kind": "thick_slices", "factor": 2, "axis": "w"}, "x, y, z"),
        ({"kind": "thick_slices", "factor": 2, "axis": "z", "profile": "sinc"}, "box, gaussian"),
        ({"kind": "thick_slices", "factor": 2, "axis": "z", "random_phase": "yes"}, "true or false"),
    ],
)
def test_invalid_specs_are_refused_with_what_is_valid(spec, message):
    with pytest.raises(ValueError, match=message):
        make_degradation(spec)


# ------------------------------------------------------------------ real data


def test_ct_low_dose_on_a_real_abdomen_adds_plausible_noise():
    path = DATA / "ct" / "ct_crlm1004_abdomen.nii.gz"
    if not path.is_file():
        pytest.skip(f"real data not available at {path}")
    volume = read_volume(path)
    hu = np.clip(volume.array[20:22].astype(np.float32), -1024, 3071)
    out = low_dose_ct(hu, 0.25, np.random.default_rng(0), spacing=volume.spacing)
    soft_tissue = (hu > 20) & (hu < 80)
    assert 8.0 < float((out - hu)[soft_tissue].std()) < 40.0
    assert float(np.clip(out, -1024, 3071)[hu <= -1024].mean()) < -950.0
