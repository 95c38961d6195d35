"""3D UNet denoiser with Structure-aware Trajectory Modulation (STM).

The network predicts x0 as a correction to the degraded input, ``x0_hat = y + f(x_t, y, t)``, with f's last
layer zero-initialised: training starts from the identity and only has to learn the residual, which on a
CPU budget is decisive (far ahead of direct x0 prediction after the same few hundred steps).

STM: a light encoder turns the degraded patch y into a content code c; every residual block has its own
small MLP giving (gamma, beta), last layer zero-initialised, and uses Emb' = Emb * (1 + gamma(c)) + beta(c)
instead of the plain time embedding, so the denoising trajectory adapts to the structure it is restoring.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    channels: tuple[int, ...] = (16, 32, 64)  # width per resolution level
    time_dim: int = 64
    stm: bool = True
    stm_dim: int = 32
    spacing_embedding: bool = True  # voxel spacing (mm) added to the time embedding
    groups: int = 8

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        values = dict(values)
        values["channels"] = tuple(values.get("channels", cls.channels))
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self) | {"channels": list(self.channels)}

    @property
    def size_multiple(self) -> int:
        """Patch sides must be multiples of this (one halving per level below the top)."""
        return 2 ** (len(self.channels) - 1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ContentEncoder(nn.Module):
    """Degraded patch (B, 1, D, H, W) -> content code c (B, dim), by strided convs and global pooling."""

    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(1, dim // 2, 3, stride=2, padding=1),
            _norm(dim // 2, groups),
            nn.SiLU(),
            nn.Conv3d(dim // 2, dim, 3, stride=2, padding=1),
            _norm(dim, groups),
            nn.SiLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block whose second norm is scaled/shifted by the (modulated) embedding.

    With STM, the block's own MLP maps the content code c to (gamma, beta) and the block uses
    Emb' = Emb * (1 + gamma) + beta; the MLP's last layer is zero so a fresh block sees the plain Emb.
    """

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int, stm_dim: int | None):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1)
        self.emb_to_film = nn.Linear(time_dim, 2 * cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()
        self.stm = (
            nn.Sequential(nn.Linear(stm_dim, time_dim), nn.SiLU(), _zero(nn.Linear(time_dim, 2 * time_dim)))
            if stm_dim
            else None
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, content: torch.Tensor | None) -> torch.Tensor:
        if self.stm is not None:
            gamma, beta = self.stm(content).chunk(2, dim=1)
            emb = emb * (1 + gamma) + beta
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.emb_to_film(self.act(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.conv2(self.act(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class SparseDiffusionUNet(nn.Module):
    """x0 predictor: ``forward(x_t, y, t, spacing, content) -> x0_hat``, volumes shaped (B, 1, D, H, W).

    ``spacing`` (B, 3) is the voxel size (z, y, x) in mm; ``content`` is the STM code of y, computed here when
    not given (the sampler computes it once per patch and reuses it at every step).
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        c, g, td = config.channels, config.groups, config.time_dim
        stm_dim = config.stm_dim if config.stm else None
        self.time_mlp = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        self.spacing_mlp = (
            nn.Sequential(nn.Linear(3, td), nn.SiLU(), _zero(nn.Linear(td, td))) if config.spacing_embedding else None
        )
        self.content_encoder = ContentEncoder(config.stm_dim, g) if config.stm else None
        self.stem = nn.Conv3d(2, c[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(ResBlock(a, b, td, g, stm_dim) for a, b in zip(c, c[1:], strict=False))
        self.first_block = ResBlock(c[0], c[0], td, g, stm_dim)
        self.downsamples = nn.ModuleList(nn.Conv3d(ch, ch, 3, stride=2, padding=1) for ch in c[:-1])
        self.middle = ResBlock(c[-1], c[-1], td, g, stm_dim)
        self.upsamples = nn.ModuleList(nn.ConvTranspose3d(ch, ch, 2, stride=2) for ch in c[1:])
        self.up_blocks = nn.ModuleList(ResBlock(2 * lo, lo, td, g, stm_dim) for lo in c[:-1])
        # up path: after upsampling level i+1 to level i, project channels c[i+1] -> c[i] before concat
        self.up_proj = nn.ModuleList(nn.Conv3d(hi, lo, 1) for lo, hi in zip(c[:-1], c[1:], strict=False))
        self.head = nn.Sequential(_norm(c[0], g), nn.SiLU(), _zero(nn.Conv3d(c[0], 1, 3, padding=1)))

    def encode_content(self, y: torch.Tensor) -> torch.Tensor | None:
        return self.content_encoder(y) if self.content_encoder is not None else None

    def forward(
        self,
        x_t: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor,
        spacing: torch.Tensor | None = None,
        content: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        if self.spacing_mlp is not None:
            emb = emb + self.spacing_mlp(torch.log(spacing.to(emb.dtype)))
        if content is None:
            content = self.encode_content(y)
        h = self.first_block(self.stem(torch.cat([x_t, y], dim=1)), emb, content)
        skips = []
        for down, block in zip(self.downsamples, self.down_blocks, strict=True):
            skips.append(h)
            h = block(down(h), emb, content)
        h = self.middle(h, emb, content)
        for i in reversed(range(len(self.up_blocks))):
            h = self.up_proj[i](self.upsamples[i](h))
            h = self.up_blocks[i](torch.cat([h, skips[i]], dim=1), emb, content)
        return y + self.head(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
