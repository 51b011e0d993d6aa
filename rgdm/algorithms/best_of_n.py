"""Best-of-N: draw ``N`` samples per output from the model and keep the best-scoring one.

The rejection baseline: ``N`` reward calls per output sample, no training. With ``temperature > 0``
it keeps one of the ``N`` with probability ``softmax(r / tau)`` instead, which is importance
resampling towards the pay-off distribution (exact as ``N`` grows).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rgdm.algorithms.rgdm import payoff_weights
from rgdm.batch import Batch
from rgdm.rewards.scorer import Scorer


def best_of_n(draw: Callable[[int], Batch], scorer: Scorer, n: int, candidates: int,
              generator: torch.Generator, temperature: float = 0.0) -> Batch:
    """``n`` outputs, each chosen among ``candidates`` fresh draws of ``draw(count) -> Batch``."""
    if candidates < 1:
        raise ValueError(f"best-of-N needs N >= 1 candidates, got {candidates}")
    pool = draw(n * candidates)
    values = scorer(pool.x, pool.mask, pool.cond).values.view(candidates, n).cpu()
    if temperature == 0:
        choice = values.argmax(dim=0)
    else:
        weights = payoff_weights(values, temperature, dim=0)
        choice = torch.multinomial(weights.T, 1, generator=generator).squeeze(1)
    return pool.select((choice * n + torch.arange(n)).to(pool.x.device))
