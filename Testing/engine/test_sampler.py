import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from sdenhance.model import ModelConfig, SparseDiffusionUNet
from sdenhance.sampler import (
    PatchDenoiser,
    SamplerConfig,
    count_windows,
    ddim_step,
    heun_step,
    sample,
    sampling_pairs,
    window_slices,
)
from sdenhance.schedule import NoiseSchedule, ScheduleConfig, q_sample


def test_pairs_end_at_smallest_nonzero_timestep():
    assert sampling_pairs([0, 333, 666, 999]) == [(999, 666), (666, 333)]
    assert sampling_pairs([0, 999]) == []


def test_ddim_step_with_exact_x0_follows_the_noise_trajectory():
    torch.manual_seed(0)
    x0, eps = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 1, 4, 4, 4, dtype=torch.float64)
    abar = NoiseSchedule().alphas_cumprod
    x_t = q_sample(x0, eps, abar[800])
    torch.testing.assert_close(ddim_step(x_t, x0, float(abar[800]), float(abar[400])), q_sample(x0, eps, abar[400]))


#: x0 ~ N(0, S2) voxel by voxel: the posterior mean E[x0 | x_t] is then linear in x_t, known exactly.
S2 = 4.0


def _posterior_mean(x_t, abar):
    return math.sqrt(abar) * S2 / (abar * S2 + 1 - abar) * x_t


def _abar(sigma):
    return 1 / (1 + sigma**2)


def _ode_reference(x_t, sigma, sigma_next):
    """The probability-flow ODE dx~/dsigma = (x~ - E[x0 | x~]) / sigma in x~ = x / sqrt(abar), solved finely."""

    def slope(s, xs):
        return (xs - _posterior_mean(xs * math.sqrt(_abar(s)), _abar(s))) / s

    start = x_t.numpy() / math.sqrt(_abar(sigma))
    solution = solve_ivp(slope, (sigma, sigma_next), start, rtol=1e-12, atol=1e-12)
    return torch.from_numpy(solution.y[:, -1]) * math.sqrt(_abar(sigma_next))


def test_heun_step_is_second_order_on_a_gaussian_with_exact_posterior_mean():
    """Heun's local error shrinks as h^3 (halving the step divides it by ~8), Euler's (DDIM) as h^2; a corrector
    with other weights than 1/2, 1/2 is only first order and fails."""
    x, sigma = torch.linspace(-3, 3, 61, dtype=torch.float64), 2.0
    errors = {}
    for h in (0.4, 0.2, 0.1):
        a, a_next = _abar(sigma), _abar(sigma - h)
        reference = _ode_reference(x, sigma, sigma - h)
        heun = heun_step(x, _posterior_mean(x, a), a, a_next, lambda xn, a_next=a_next: _posterior_mean(xn, a_next))
        euler = ddim_step(x, _posterior_mean(x, a), a, a_next)
        errors[h] = (float((heun - reference).abs().max()), float((euler - reference).abs().max()))
    for h in (0.4, 0.2):
        assert errors[h][0] / errors[h / 2][0] > 6.5
        assert 3.0 < errors[h][1] / errors[h / 2][1] < 6.0
    assert errors[0.1][0] < errors[0.1][1] / 20


class CountingOracle(SparseDiffusionUNet):
    """A network that ignores x_t and returns a fixed function of y: every step's x0 is the same volume."""

    def __init__(self):
        super().__init__(ModelConfig(channels=(4, 8), time_dim=8, stm_dim=4, groups=2))
        self.calls, self.timesteps = 0, set()

    def forward(self, x_t, y, t, spacing=None, content=None):
        self.calls += x_t.shape[0]
        self.timesteps.update(t.tolist())
        return 2 * y + 1


#: y grows by these amounts per voxel along z, y and x: a window's first voxel tells where the window is.
RAMP = (0.01, 0.02, 0.03)


def _ramp(shape):
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    return RAMP[0] * z + RAMP[1] * y + RAMP[2] * x


class PositionOracle(CountingOracle):
    """x0 = x_t / 2 + y, with y rebuilt from the window's STM content code (its first voxel of the ramp) instead of
    read: a window given another place's x_t, y or cached code returns another value than the whole-volume oracle."""

    def encode_content(self, y):
        return y[:, :, 0, 0, 0]

    def forward(self, x_t, y, t, spacing=None, content=None):
        super().forward(x_t, y, t)
        local = torch.from_numpy(_ramp(x_t.shape[2:]))
        return 0.5 * x_t + content[:, :, None, None, None] + local


def _volume(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_whole_volume_sampling_is_seamless_and_uses_sparse_timesteps():
    """Patches of a voxel-wise oracle that depends on x_t and on the content code, blended, must give what the
    oracle gives on the whole volume as one window: no seams, no misaligned windows, no stale content codes."""
    oracle, y = PositionOracle(), _ramp((20, 37, 29))
    schedule = NoiseSchedule(ScheduleConfig(steps=4))
    config = SamplerConfig(steps=4, patch_size=(8, 16, 16), overlap=0.25, sw_batch_size=3)
    out = sample(oracle, schedule, y, (2.0, 1.0, 1.0), config)
    assert oracle.timesteps == set(schedule.sparse_timesteps(4)[1:])
    assert oracle.calls == 4 * count_windows(y.shape, config.patch_size, config.overlap)
    whole = sample(PositionOracle(), schedule, y, (2.0, 1.0, 1.0), replace(config, patch_size=y.shape))
    assert not np.allclose(whole, y, atol=1e-2)  # x_t matters: the chain does not just return y
    np.testing.assert_allclose(out, whole, atol=1e-5)


def test_content_codes_are_encoded_once_per_window_and_equal_direct_encoding():
    torch.manual_seed(0)
    model = SparseDiffusionUNet(ModelConfig(channels=(4, 8), time_dim=8, stm_dim=4, groups=2)).eval()
    y = torch.from_numpy(_volume((12, 40, 24)))[None, None]
    config = SamplerConfig(patch_size=(8, 16, 16), overlap=0.25, sw_batch_size=2)
    encoded = []

    def counting_encoder(patches):
        encoded.append(len(patches))
        return SparseDiffusionUNet.encode_content(model, patches)

    model.encode_content = counting_encoder
    denoiser = PatchDenoiser(model, y, (1.0, 1.0, 1.0), config, torch.device("cpu"))
    with torch.inference_mode():
        for t in (999, 500):
            denoiser(torch.randn_like(y), t)
    windows = window_slices((12, 40, 24), config.patch_size, config.overlap)
    assert sum(encoded) == len(windows)  # once per window, reused at the second step
    assert set(denoiser.content_cache) == {tuple(s.start for s in window) for window in windows}
    with torch.inference_mode():
        for window in windows:
            direct = SparseDiffusionUNet.encode_content(model, y[(slice(None), slice(None), *window)])[0]
            torch.testing.assert_close(denoiser.content_cache[tuple(s.start for s in window)], direct)


def test_volume_smaller_than_patch_is_padded_and_cropped_back():
    oracle, y = CountingOracle(), _volume((3, 10, 40))
    out = sample(
        oracle,
        NoiseSchedule(ScheduleConfig(steps=2)),
        y,
        (1.0, 1.0, 1.0),
        SamplerConfig(steps=2, patch_size=(8, 16, 16)),
    )
    np.testing.assert_allclose(out, 2 * y + 1, atol=1e-5)


def test_background_windows_are_skipped():
    oracle = CountingOracle()
    y = np.full((8, 32, 32), -1.0, dtype=np.float32)
    y[:, :16, :16] = 0.5  # one window of foreground out of four
    config = SamplerConfig(steps=1, patch_size=(8, 16, 16), overlap=0.0, background=-0.9)
    out = sample(oracle, NoiseSchedule(ScheduleConfig(steps=1)), y, (1.0, 1.0, 1.0), config)
    assert oracle.calls == 1
    np.testing.assert_allclose(out[:, :16, :16], 2.0)
    np.testing.assert_allclose(out[:, 16:, 16:], -1.0)


def test_real_model_run_is_reproducible_and_seed_dependent():
    torch.manual_seed(0)
    model = SparseDiffusionUNet(ModelConfig(channels=(4, 8), time_dim=8, stm_dim=4, groups=2))
    for p in model.head[-1].parameters():
        torch.nn.init.normal_(p, std=0.1)
    y = _volume((8, 24, 24))
    schedule = NoiseSchedule(ScheduleConfig(steps=3))
    run = lambda seed, heun=False: sample(  # noqa: E731
        model, schedule, y, (1.0, 1.0, 1.0), SamplerConfig(steps=3, heun=heun, patch_size=(8, 16, 16), seed=seed)
    )
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    assert not np.allclose(run(0), run(0, heun=True))


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_window_count_matches_monai(overlap):
    oracle, y = CountingOracle(), _volume((17, 33, 20))
    config = SamplerConfig(steps=1, patch_size=(8, 16, 16), overlap=overlap, sw_batch_size=1)
    sample(oracle, NoiseSchedule(ScheduleConfig(steps=1)), y, (1.0, 1.0, 1.0), config)
    assert oracle.calls == count_windows(y.shape, (8, 16, 16), overlap)
