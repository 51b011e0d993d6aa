"""Gaussian mixtures in n dimensions: the toy data whose pay-off distribution is known exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian components ``N(means[k], std^2 I)`` with mixture ``weights``."""

    means: torch.Tensor
    std: float
    weights: torch.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_modes(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples and the index of the component each came from."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator)
        return self.means[component] + self.std * noise, component

    def nearest_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the closest mean: the Voronoi cell a point lies in."""
        return torch.cdist(x.to(self.means.dtype), self.means).argmin(dim=1)


def ring(num_modes: int = 8, radius: float = 2.0, std: float = 0.2, rare_weight: float | None = None
         ) -> GaussianMixture:
    """Modes evenly spaced on a circle in 2-D; ``rare_weight`` gives mode 0 that share of the mass."""
    angles = torch.arange(num_modes, dtype=torch.float32) * (2 * math.pi / num_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = torch.full((num_modes,), 1.0 / num_modes)
    if rare_weight is not None:
        weights = torch.full((num_modes,), (1 - rare_weight) / (num_modes - 1))
        weights[0] = rare_weight
    return GaussianMixture(means, std, weights)


def random_modes(dim: int = 16, num_modes: int = 8, radius: float = 3.0, std: float = 0.3, seed: int = 0
                 ) -> GaussianMixture:
    """Modes at seeded random directions on a sphere of ``radius`` in ``dim`` dimensions."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(num_modes, dim, generator=generator)
    means = radius * directions / directions.norm(dim=1, keepdim=True)
    return GaussianMixture(means, std, torch.full((num_modes,), 1.0 / num_modes))


MIXTURES = {
    "ring8": lambda: ring(),
    "rare-ring8": lambda: ring(rare_weight=0.01),
    "gmm16": lambda: random_modes(),
}
