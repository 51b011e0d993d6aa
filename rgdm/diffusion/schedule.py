"""Noise schedules for discrete-time Gaussian diffusion.

Every schedule is stored as ``alpha_bar[t]`` for ``t = 0..T`` with ``alpha_bar[0] = 1`` (the clean
sample), so ``q(x_t | x_0) = N(sqrt(alpha_bar[t]) x_0, (1 - alpha_bar[t]) I)`` indexes directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

ScheduleName = Literal["linear", "cosine", "polynomial"]


def linear_alpha_bar(timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """DDPM's linear betas (Ho et al., 2020), rescaled so any ``T`` spans the same noise range.

    Betas are clipped at 0.999 so that very short schedules (``T <= 20``) stay valid.
    """
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])


def cosine_alpha_bar(timesteps: int, offset: float = 8e-3, max_beta: float = 0.999) -> torch.Tensor:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal, 2021), betas clipped at ``max_beta``."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - betas, 0)])


def polynomial_alpha_bar(
    timesteps: int, power: float = 2.0, precision: float = 1e-5, clip: float = 1e-3
) -> torch.Tensor:
    """EDM's polynomial schedule (Hoogeboom et al., 2022): ``(1 - (t/T)^p)^2``, step ratios clipped.

    The clip keeps every per-step ``alpha_t >= clip`` and ``precision`` keeps ``alpha_bar`` inside
    ``[precision, 1 - precision]``, exactly as EDM does for molecules. Here ``alpha_bar[0]`` is set to
    1 afterwards so that index 0 is the clean sample.
    """
    steps = timesteps + 1
    x = torch.linspace(0, steps, steps, dtype=torch.float64)
    alpha_bar = (1 - (x / steps) ** power) ** 2
    alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar])
    step_ratio = (alpha_bar[1:] / alpha_bar[:-1]).clamp(min=clip, max=1.0)
    alpha_bar = torch.cumprod(step_ratio, 0)
    alpha_bar = (1 - 2 * precision) * alpha_bar + precision
    alpha_bar[0] = 1.0
    return alpha_bar


_SCHEDULES = {"linear": linear_alpha_bar, "cosine": cosine_alpha_bar, "polynomial": polynomial_alpha_bar}


@dataclass(frozen=True)
class NoiseSchedule:
    """``alpha_bar[0..T]`` plus the per-step quantities derived from it (float64 buffers)."""

    alpha_bar: torch.Tensor

    @classmethod
    def create(cls, name: ScheduleName, timesteps: int) -> NoiseSchedule:
        if name not in _SCHEDULES:
            raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(_SCHEDULES)}")
        if timesteps < 2:
            raise ValueError(f"timesteps must be at least 2, got {timesteps}")
        return cls(_SCHEDULES[name](timesteps))

    @property
    def timesteps(self) -> int:
        return self.alpha_bar.numel() - 1

    @property
    def betas(self) -> torch.Tensor:
        """``beta[t] = 1 - alpha_bar[t] / alpha_bar[t-1]`` with ``beta[0] = 0``."""
        return torch.cat([torch.zeros(1, dtype=torch.float64), 1 - self.alpha_bar[1:] / self.alpha_bar[:-1]])

    def at(self, table: torch.Tensor, t: torch.Tensor, like: Any) -> torch.Tensor:
        """Gather ``table[t]`` and shape it to broadcast against a batch ``like`` (batch dim first).

        ``like`` is a tensor, or a ``TensorDict`` whose one batch dimension a ``(batch,)`` vector
        broadcasts over every part.
        """
        values = table.to(like.device)[t.long()].to(like.dtype)
        return values.view(-1, *([1] * (like.dim() - 1)))
