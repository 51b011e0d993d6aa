"""A minimal domain: points on the unit circle in 2-D.

``docs/adding-a-domain.md`` is built on this file, and ``tests/test_domain_contract.py`` checks it as it
checks every shipped domain, then trains and samples it through the engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rgdm.batch import Batch
from rgdm.domains.base import Domain
from rgdm.registry import register_domain
from rgdm.rewards import Reward


class CircleOptions(BaseModel):
    """The domain's options, saved with every model so that a checkpoint rebuilds the same domain."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["circle"] = "circle"
    train_size: int = Field(1024, ge=16)
    data_seed: int = 0


class CircleDenoiser(nn.Module):
    """``eps(x_t, t)``: a small MLP on the noisy point and the diffusion time ``t`` in [0, 1]."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([x, t[:, None]], dim=1))


def height(points: np.ndarray) -> np.ndarray:
    """The reward: each point's height ``y``, 1 at the top of the circle."""
    return np.asarray(points)[:, 1]


@register_domain("circle")
class CircleDomain(Domain):
    """Points on the unit circle: a sample is a 2-D vector, and rewards see a batch as an ``(n, 2)`` array."""

    name = "circle"
    Options = CircleOptions
    options: CircleOptions

    def dataset(self, split: str = "train") -> Batch:
        generator = torch.Generator().manual_seed(self.options.data_seed)
        angle = 2 * math.pi * torch.rand(self.options.train_size, generator=generator)
        return Batch(torch.stack([angle.cos(), angle.sin()], dim=1))

    def prior_batch(self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None) -> Batch:
        return Batch(torch.zeros(n, 2), cond=cond)

    def build_network(self, options: dict[str, Any]) -> nn.Module:
        return CircleDenoiser(**options)

    def decode(self, x: torch.Tensor, mask: torch.Tensor | None) -> Sequence[Any]:
        return x.detach().float().cpu().numpy()

    def rewards(self) -> dict[str, Reward]:
        return {"height": Reward(height, "the point's height y, 1 at the top of the circle", max_value=1.0)}
