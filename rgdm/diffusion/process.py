"""Forward noising, posterior, Tweedie estimate, reverse steps and their Gaussian log-probabilities.

Samples are tensors with the batch first. Samples of varying size (molecules with different atom
counts) carry a ``mask`` of shape ``(batch, nodes)`` over the second dimension; padded entries stay
zero and do not count in norms, log-probabilities or dimensions. A domain may add a ``project`` hook
that maps noise and states onto its sample space (zero centre of mass for molecules); it must be
linear and idempotent, like an orthogonal projection, so that Gaussians stay Gaussians.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rgdm.diffusion.schedule import NoiseSchedule

Projection = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def identity_projection(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x


def expand_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Broadcast a ``(batch, nodes)`` mask to the shape of ``like`` ``(batch, nodes, ...)``."""
    if mask is None:
        return None
    return mask.to(like.dtype).view(*mask.shape, *([1] * (like.dim() - mask.dim())))


def sum_per_sample(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over every non-batch dimension, ignoring padded entries."""
    m = expand_mask(mask, x)
    if m is not None:
        x = x * m
    return x.flatten(1).sum(1)


@dataclass(frozen=True)
class ReverseStep:
    """One reverse transition ``p(x_s | x_t) = N(mean, std^2 I)`` from ``t`` to ``s < t``."""

    mean: torch.Tensor
    std: torch.Tensor
    x0_hat: torch.Tensor
    eps: torch.Tensor


class GaussianDiffusion:
    """The DDPM/DDIM maths for one noise schedule, independent of what a sample is.

    ``dof(mask)`` counts the free dimensions of each sample (degrees of freedom), which the
    exploration radius and log-probabilities use; a domain with a projection passes ``dof_offset``
    for the dimensions the projection removes (``3`` for zero centre of mass in 3-D).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        project: Projection = identity_projection,
        dof_offset: int = 0,
    ) -> None:
        self.schedule = schedule
        self.project = project
        self.dof_offset = dof_offset
        self._sqrt_alpha_bar = schedule.alpha_bar.sqrt()
        self._sqrt_one_minus_alpha_bar = (1 - schedule.alpha_bar).sqrt()

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def dof(self, like: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Free dimensions per sample: entries under the mask minus what the projection removes."""
        return sum_per_sample(torch.ones_like(like), mask) - self.dof_offset

    def noise_like(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Standard Gaussian noise on the sample space (masked and projected)."""
        device = x.device if generator is None else generator.device
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
        return self.onto_sample_space(noise, mask)

    def onto_sample_space(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Zero the padded entries and apply the domain projection."""
        m = expand_mask(mask, x)
        if m is not None:
            x = x * m
        return self.project(x, mask)

    def sqrt_alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.schedule.at(self._sqrt_alpha_bar, t, like)

    def sqrt_one_minus_alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.schedule.at(self._sqrt_one_minus_alpha_bar, t, like)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw from ``q(x_t | x_0)`` given standard noise."""
        return self.sqrt_alpha_bar(t, x0) * x0 + self.sqrt_one_minus_alpha_bar(t, x0) * noise

    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Tweedie estimate ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        return (xt - self.sqrt_one_minus_alpha_bar(t, xt) * eps) / self.sqrt_alpha_bar(t, xt)

    def posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` (closed form, Ho et al. eq. 7)."""
        abar, betas = self.schedule.alpha_bar, self.schedule.betas
        abar_t, abar_prev = self.schedule.at(abar, t, xt), self.schedule.at(abar, t - 1, xt)
        beta_t = self.schedule.at(betas, t, xt)
        coef_x0 = abar_prev.sqrt() * beta_t / (1 - abar_t)
        coef_xt = (1 - beta_t).sqrt() * (1 - abar_prev) / (1 - abar_t)
        variance = beta_t * (1 - abar_prev) / (1 - abar_t)
        return coef_x0 * x0 + coef_xt * xt, variance

    def reverse_step(
        self, xt: torch.Tensor, t: torch.Tensor, s: torch.Tensor, eps: torch.Tensor, eta: float = 1.0
    ) -> ReverseStep:
        """The DDIM transition from ``t`` to ``s < t`` (Song et al., 2021, eq. 12).

        ``eta = 1`` with ``s = t - 1`` is exactly the DDPM ancestral step with the posterior variance;
        ``eta = 0`` is the deterministic DDIM step.
        """
        x0_hat = self.x0_from_eps(xt, t, eps)
        abar = self.schedule.alpha_bar
        abar_t, abar_s = self.schedule.at(abar, t, xt), self.schedule.at(abar, s, xt)
        variance = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        mean = abar_s.sqrt() * x0_hat + (1 - abar_s - variance).clamp(min=0).sqrt() * eps
        return ReverseStep(mean=mean, std=variance.sqrt(), x0_hat=x0_hat, eps=eps)

    def gaussian_log_prob(
        self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log N(x; mean, std^2 I)`` per sample over its free dimensions (DDPO's per-step log-prob).

        ``std`` holds one value per sample (any shape that flattens to ``(batch, ...)``).
        """
        std = std.reshape(std.shape[0], -1)[:, 0]
        dof = self.dof(x, mask)
        squared = sum_per_sample((x - mean) ** 2, mask) / std**2
        return -0.5 * squared - dof * (torch.log(std) + 0.5 * math.log(2 * math.pi))
