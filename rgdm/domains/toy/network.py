"""A residual MLP denoiser for vectors, conditioned on time and an optional class target."""

from __future__ import annotations

import math

import torch
from torch import nn

from rgdm.diffusion.conditioning import Conditioning


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style features of ``t`` in [0, 1] (scaled to 0..1000 as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class MLPDenoiser(nn.Module):
    """``eps_theta(x_t, t, c)`` for flat vectors.

    Targets are class indices ``0..num_targets-1``; index ``num_targets`` (or ``cond=None``) is the
    unconditional token, so one network serves unconditional and targeted sampling.
    """

    def __init__(self, dim: int, num_targets: int = 0, width: int = 256, depth: int = 4,
                 time_features: int = 64, out_features: int | None = None) -> None:
        super().__init__()
        self.time_features = time_features
        self.input = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(time_features, width), nn.SiLU(), nn.Linear(width, width))
        self.target = Conditioning(num_targets, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(depth)])
        self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, out_features or dim))
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.input(x) + self.time(sinusoidal_embedding(t, self.time_features)) + self.target(cond, x.shape[0])
        return self.output(self.blocks(h))


class MLPRegressor(MLPDenoiser):
    """A noise-aware head ``f(x_t, t, c)`` on the same trunk (classifier guidance): a scalar ``(b,)``,
    or ``(b, outputs)`` logits when ``outputs > 1``."""

    def __init__(self, dim: int, num_targets: int = 0, width: int = 256, depth: int = 4, outputs: int = 1) -> None:
        super().__init__(dim, num_targets, width, depth, out_features=outputs)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x, t, cond, mask)
        return out.squeeze(-1) if out.shape[-1] == 1 else out
