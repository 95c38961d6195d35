"""Noise schedule, the sparse timestep set, and the x0 / epsilon / velocity identities.

Every relation between x0, epsilon, v and x_t used by training and sampling is written here once:

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    v   = sqrt(abar_t) eps - sqrt(1 - abar_t) x0

The training loss compares v built from the *predicted* x0 and the *true* eps with v built from the true
x0 and eps, which equals (1 - abar_t) |x0_hat - x0|^2. Rebuilding v_hat from x_t and x0_hat instead would
weight t ~ 0 by 1 / (1 - abar_t) ~ 1e4 and spend every gradient there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScheduleConfig:
    timesteps: int = 1000  # T
    steps: int = 5  # K: the sparse set has K + 1 uniformly spaced timesteps, both ends included
    kind: str = "linear"  # "linear" (beta 1e-4 .. 2e-2) or "cosine"
    beta_start: float = 1e-4
    beta_end: float = 2e-2


class NoiseSchedule:
    """Cumulative signal rates abar_t for t = 0 .. T-1 (float64 for exact identities, cast on use)."""

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        self.alphas_cumprod = _alphas_cumprod(config)

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """abar_t broadcastable against ``like`` (batch dimension first)."""
        values = self.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]
        values = values.to(device=like.device, dtype=like.dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1))) if values.ndim else values

    def sparse_timesteps(self, steps: int | None = None) -> list[int]:
        """K + 1 uniformly spaced timesteps from 0 to T - 1 inclusive, ascending."""
        k = self.config.steps if steps is None else steps
        if not 1 <= k <= self.timesteps - 1:
            raise ValueError(f"steps must be between 1 and {self.timesteps - 1}, got {k}")
        return sorted({round(i * (self.timesteps - 1) / k) for i in range(k + 1)})

    def training_timesteps(self, dense: bool = False) -> torch.Tensor:
        """Timesteps the trainer draws from: the non-zero members of the sparse set (the sampler never
        evaluates the model at t = 0), or every t >= 1 for the dense ablation."""
        if dense:
            return torch.arange(1, self.timesteps)
        return torch.tensor(self.sparse_timesteps()[1:])


def _alphas_cumprod(config: ScheduleConfig) -> torch.Tensor:
    t = config.timesteps
    if config.kind == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, t, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)
    if config.kind == "cosine":  # Nichol & Dhariwal 2021, with their clipping of beta at 0.999
        s = 0.008
        x = torch.linspace(0, t, t + 1, dtype=torch.float64)
        f = torch.cos(((x / t) + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clip(1 - f[1:] / f[:-1], 0, 0.999)
        return torch.cumprod(1.0 - betas, dim=0)
    raise ValueError(f"unknown schedule kind '{config.kind}' (use 'linear' or 'cosine')")


def q_sample(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Forward diffusion: x_t from x0 and noise."""
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The noise implied by x_t and an estimate of x0."""
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def velocity(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def v_space_loss(x0_hat: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error with the true noise; equals mean((1 - abar) (x0_hat - x0)^2)."""
    return torch.mean((velocity(x0_hat, eps, abar) - velocity(x0, eps, abar)) ** 2)
