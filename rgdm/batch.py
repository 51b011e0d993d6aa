"""The one data structure every layer shares: a batch of samples with optional masks and targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from rgdm.diffusion.process import parts_sample

#: Separates a sample's name from its part's name in flat tensor files (``x/positions``).
PART_SEPARATOR = "/"


@dataclass(frozen=True)
class Batch:
    """Samples ``x`` (batch first), a node mask for variable-size samples, targets, loss weights.

    ``x`` is a tensor, or a ``TensorDict`` of named parts sharing the batch dimension (a molecule's
    positions, atom features and bonds); every method acts on all parts alike.
    """

    x: torch.Tensor | TensorDict
    mask: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, index: torch.Tensor | slice) -> Batch:
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
        """Every field on ``device``."""
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


@dataclass(frozen=True)
class Shard:
    """This process's rows of a global batch under data parallelism: rank ``rank`` of ``world``.

    Every process draws the same global batch and the same random numbers (one seed), then
    computes only on its rows; losses are written as ``world * (sum over own rows) / global rows``
    so that DDP's gradient average equals the single-process gradient of the global batch. Rows
    split as evenly as possible (``numpy.array_split`` order), so any batch size works.
    """

    rank: int = 0
    world: int = 1

    def rows(self, n: int) -> slice:
        size, extra = divmod(n, self.world)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def __call__(self, value: Any) -> Any:
        """Own rows of a tensor or a ``Batch`` (``None`` passes through)."""
        if value is None or self.world == 1:
            return value
        rows = self.rows(len(value))
        return value.select(rows) if isinstance(value, Batch) else value[rows]

    def mean(self, per_row: torch.Tensor, global_rows: int) -> torch.Tensor:
        """``world * sum(own rows) / global_rows``: the global mean once DDP averages the gradients."""
        return per_row.sum() * (self.world / global_rows)


def flatten_parts(tensors: dict[str, torch.Tensor | TensorDict]) -> dict[str, torch.Tensor]:
    """Tensors as a flat dict for a safetensors file: a TensorDict ``x`` becomes ``x/part`` entries."""
    flat = {}
    for name, value in tensors.items():
        if isinstance(value, TensorDict):
            flat |= {f"{name}{PART_SEPARATOR}{part}": leaf for part, leaf in value.items()}
        else:
            flat[name] = value
    return flat


def unflatten_parts(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | TensorDict]:
    """The inverse of ``flatten_parts``: ``x/part`` entries back into one TensorDict ``x``."""
    tensors: dict[str, Any] = {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, separator, part = key.partition(PART_SEPARATOR)
        if separator:
            grouped.setdefault(name, {})[part] = value
        else:
            tensors[key] = value
    for name, parts in grouped.items():
        rows = {leaf.shape[0] for leaf in parts.values()}
        if len(rows) != 1:
            raise ValueError(f"the parts of {name!r} disagree on the number of rows: {sorted(rows)}")
        tensors[name] = parts_sample(parts, [rows.pop()])
    return tensors
