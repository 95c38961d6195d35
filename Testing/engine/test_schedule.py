import pytest
import torch
from sdenhance.schedule import NoiseSchedule, ScheduleConfig, eps_from_x0, q_sample, v_space_loss, velocity


def test_sparse_set_is_uniform_and_includes_both_ends():
    schedule = NoiseSchedule(ScheduleConfig(timesteps=1000, steps=5))
    ts = schedule.sparse_timesteps()
    assert ts[0] == 0 and ts[-1] == 999 and len(ts) == 6
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
    assert max(gaps) - min(gaps) <= 1


def test_training_draws_only_evaluated_timesteps():
    schedule = NoiseSchedule(ScheduleConfig(steps=5))
    sparse = schedule.training_timesteps().tolist()
    assert sparse == schedule.sparse_timesteps()[1:]
    assert len(schedule.training_timesteps(dense=True)) == 999


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_is_monotone_from_clean_to_noise(kind):
    abar = NoiseSchedule(ScheduleConfig(kind=kind)).alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1])
    assert abar[0] > 0.99 and abar[-1] < 0.01


def test_identities_round_trip():
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 1, 4, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, 4, dtype=torch.float64)
    schedule = NoiseSchedule()
    abar = schedule.abar(torch.tensor([10, 700]), like=x0)
    x_t = q_sample(x0, eps, abar)
    torch.testing.assert_close(eps_from_x0(x_t, x0, abar), eps)
    # x_t, v is a rotation of (x0, eps): norms are preserved
    v = velocity(x0, eps, abar)
    torch.testing.assert_close(x_t**2 + v**2, x0**2 + eps**2)


def test_v_loss_equals_weighted_x0_error_with_true_noise():
    torch.manual_seed(1)
    x0, eps, x0_hat = (torch.randn(3, 1, 4, 4, 4, dtype=torch.float64) for _ in range(3))
    abar = NoiseSchedule().abar(torch.tensor([1, 400, 999]), like=x0)
    expected = torch.mean((1 - abar) * (x0_hat - x0) ** 2)
    torch.testing.assert_close(v_space_loss(x0_hat, x0, eps, abar), expected)


def test_bad_step_count_is_refused():
    with pytest.raises(ValueError, match="steps"):
        NoiseSchedule().sparse_timesteps(0)
