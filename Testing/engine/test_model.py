import torch
from sdenhance.model import ModelConfig, SparseDiffusionUNet, count_parameters

SMALL = ModelConfig(channels=(8, 16, 32), time_dim=16, stm_dim=8, groups=4)


def _inputs(b=2, shape=(8, 16, 16)):
    torch.manual_seed(0)
    y = torch.randn(b, 1, *shape)
    return torch.randn(b, 1, *shape), y, torch.tensor([100, 900][:b]), torch.ones(b, 3)


def test_fresh_model_returns_degraded_input():
    """x0_hat = y + f with f's last layer zero: training starts from the identity."""
    x_t, y, t, spacing = _inputs()
    model = SparseDiffusionUNet(SMALL)
    torch.testing.assert_close(model(x_t, y, t, spacing), y)


def test_default_model_is_cpu_sized():
    assert count_parameters(SparseDiffusionUNet()) < 3_000_000


def test_stm_modulates_with_content_and_can_be_switched_off():
    x_t, y, t, spacing = _inputs()
    model = SparseDiffusionUNet(SMALL)
    for p in model.parameters():  # break the zero initialisation so every path matters
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    other_content = model.encode_content(torch.randn_like(y))
    assert not torch.allclose(model(x_t, y, t, spacing), model(x_t, y, t, spacing, content=other_content))
    plain = SparseDiffusionUNet(ModelConfig(channels=(8, 16), stm=False, time_dim=16, groups=4))
    assert plain.encode_content(y) is None
    assert not any("stm" in name for name, _ in plain.named_parameters())


def test_every_parameter_learns_within_three_steps_from_the_zero_initialised_start():
    """At the start only the head's last layer has a gradient (everything else feeds it through zeros); each
    optimiser step opens one more stage: head, then the body and the zero-initialised STM and spacing layers, then
    the layers before those. Three backward passes must reach every parameter with a non-zero gradient."""
    x_t, y, t, _ = _inputs()
    spacing = torch.tensor([[2.5, 0.8, 0.8], [1.0, 0.5, 0.5]])  # log(1 mm) = 0 would give its first layer no input
    target = torch.randn_like(y)
    model = SparseDiffusionUNet(SMALL)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimiser.zero_grad()
        (model(x_t, y, t, spacing) - target).square().mean().backward()
        optimiser.step()
    still = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not still, f"no gradient reaches {still}"
