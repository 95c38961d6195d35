import numpy as np
import pytest
import torch
from sdenhance.model import ModelConfig, SparseDiffusionUNet
from sdenhance.sampler import SamplerConfig, count_windows, ddim_step, heun_step, sample, sampling_pairs
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


def test_heun_with_exact_denoiser_matches_ddim():
    torch.manual_seed(0)
    x0, eps = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 1, 4, 4, 4, dtype=torch.float64)
    abar = NoiseSchedule().alphas_cumprod
    x_t = q_sample(x0, eps, abar[800])
    a, b = float(abar[800]), float(abar[400])
    torch.testing.assert_close(heun_step(x_t, x0, a, b, lambda _: x0), ddim_step(x_t, x0, a, b))


class CountingOracle(SparseDiffusionUNet):
    """A network that ignores x_t and returns a fixed function of y: every step's x0 is the same volume."""

    def __init__(self):
        super().__init__(ModelConfig(channels=(4, 8), time_dim=8, stm_dim=4, groups=2))
        self.calls, self.timesteps = 0, set()

    def forward(self, x_t, y, t, spacing=None, content=None):
        self.calls += x_t.shape[0]
        self.timesteps.update(t.tolist())
        return 2 * y + 1


def _volume(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_whole_volume_sampling_is_seamless_and_uses_sparse_timesteps():
    """With an x0 oracle, patch blending must reproduce the oracle exactly everywhere (no seams)."""
    oracle, y = CountingOracle(), _volume((20, 37, 29))
    schedule = NoiseSchedule(ScheduleConfig(steps=4))
    config = SamplerConfig(steps=4, patch_size=(8, 16, 16), overlap=0.25, sw_batch_size=3)
    out = sample(oracle, schedule, y, (2.0, 1.0, 1.0), config)
    assert out.shape == y.shape
    np.testing.assert_allclose(out, 2 * y + 1, atol=1e-5)
    assert oracle.timesteps == set(schedule.sparse_timesteps(4)[1:])
    assert oracle.calls == 4 * count_windows(y.shape, config.patch_size, config.overlap)


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
