"""The one data structure every layer shares: a batch of samples with optional masks and targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """Samples ``x`` (batch first), a node mask for variable-size samples, targets, loss weights."""

    x: torch.Tensor
    mask: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, index: torch.Tensor) -> Batch:
        """Rows ``index`` of every field."""
        def pick(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value[index]
        return Batch(self.x[index], pick(self.mask), pick(self.cond), pick(self.weight))

    def repeat(self, k: int) -> Batch:
        """Stack ``k`` copies along the batch (copy-major), for candidate evaluation."""
        def tile(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.repeat(k, *([1] * (value.dim() - 1)))
        return Batch(tile(self.x), tile(self.mask), tile(self.cond), tile(self.weight))

    def to(self, device: torch.device | str) -> Batch:
        def move(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.to(device)
        return Batch(self.x.to(device), move(self.mask), move(self.cond), move(self.weight))

    def sample(self, size: int, generator: torch.Generator, weights: torch.Tensor | None = None) -> Batch:
        """``size`` rows drawn uniformly, or with probability proportional to ``weights``."""
        if weights is None:
            index = torch.randint(len(self), (size,), generator=generator, device=generator.device)
        else:
            index = torch.multinomial(weights.to(generator.device), size, replacement=True, generator=generator)
        return self.select(index.to(self.x.device))
