"""Black-box toy rewards on the mixture's geometry, and exact pay-off samples by rejection.

Each reward takes ``samples`` (an array of shape ``(n, dim)``) and optional ``targets`` (mode indices;
mode 0 when none) and returns one float per sample, like any user reward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rgdm.domains.toy.mixtures import GaussianMixture
from rgdm.rewards import Reward


def _target_modes(targets: Sequence[int] | None, n: int) -> torch.Tensor:
    if targets is None:
        return torch.zeros(n, dtype=torch.long)
    return torch.as_tensor(list(targets), dtype=torch.long)


def toy_rewards(mixture: GaussianMixture) -> dict[str, Reward]:
    """Region indicator, piecewise-constant cell scores, and (differentiable) distance to a mode."""
    cell_scores = torch.linspace(0.0, 1.0, mixture.num_modes)

    def region(samples: Sequence, targets: Sequence[int] | None = None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
        inside = mixture.nearest_mode(x) == _target_modes(targets, len(x))
        return inside.float().numpy()

    def piecewise(samples: Sequence, targets: Sequence[int] | None = None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
        cell = mixture.nearest_mode(x)
        shift = _target_modes(targets, len(x))
        return cell_scores[(cell - shift) % mixture.num_modes].numpy()

    def distance_tensor(x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        modes = torch.zeros(len(x), dtype=torch.long) if targets is None else targets.long().cpu()
        return -(x - mixture.means[modes].to(x)).norm(dim=1)

    def distance(samples: Sequence, targets: Sequence[int] | None = None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
        return distance_tensor(x, _target_modes(targets, len(x))).numpy()

    return {
        "region": Reward(region, "1 inside the target mode's Voronoi cell (mode 0 by default), else 0",
                              max_value=1.0),
        "piecewise": Reward(piecewise, "cell scores 0..1 rising around the ring from the target mode",
                                 max_value=1.0),
        "distance": Reward(distance, "minus the distance to the target mode's centre (differentiable)",
                                gradient_fn=distance_tensor, max_value=0.0),
    }


def exact_payoff_samples(
    mixture: GaussianMixture,
    reward: Reward,
    temperature: float,
    n: int,
    generator: torch.Generator,
    target: int | None = None,
) -> torch.Tensor:
    """Exact samples of ``p*(x) ∝ p(x) exp(r(x) / tau)`` by rejection from the mixture.

    The acceptance probability ``exp((r(x) - r_max) / tau)`` is at most one because ``r <= r_max``.
    """
    if reward.max_value is None:
        raise ValueError("exact pay-off samples need a reward with a known maximum")
    accepted: list[torch.Tensor] = []
    total = 0
    while total < n:
        x, _ = mixture.sample(max(4 * n, 1024), generator)
        targets = None if target is None else [target] * len(x)
        r = torch.as_tensor(reward.fn(x.numpy(), targets), dtype=torch.float32)
        accept = torch.rand(len(x), generator=generator) < torch.exp((r - reward.max_value) / temperature)
        accepted.append(x[accept])
        total += int(accept.sum())
    return torch.cat(accepted)[:n]
