"""The toy domain: Gaussian mixtures, whose exact pay-off distribution every method is measured against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rgdm.batch import Batch
from rgdm.domains.base import Domain, SupportsTargets, pyplot, save_figure
from rgdm.domains.toy.mixtures import MIXTURES
from rgdm.domains.toy.network import MLPDenoiser, MLPRegressor
from rgdm.domains.toy.rewards import exact_payoff_samples, toy_rewards
from rgdm.rewards import Reward


def _mean_distance(x: torch.Tensor, y: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Mean Euclidean distance over all pairs, in row chunks so large sets fit in memory."""
    total = sum(torch.cdist(x[i : i + chunk], y).sum() for i in range(0, len(x), chunk))
    return total / (len(x) * len(y))


def energy_distance(x: torch.Tensor, y: torch.Tensor, y_spread: float | None = None) -> float:
    """Energy distance ``2E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic), written on ``torch.cdist``.

    ``y_spread`` is ``E|Y-Y'|`` if already known (a fixed reference set compared many times).
    Hand-written because it is a few lines here; the libraries that offer it in n dimensions
    (``dcor``) pull in numba for no gain.
    """
    x, y = x.double(), y.double()
    if y_spread is None:
        y_spread = float(_mean_distance(y, y))
    return float(2 * _mean_distance(x, y) - _mean_distance(x, x)) - y_spread


REFERENCE_SIZE = 20_000
REFERENCE_SEED = 2023
FLOOR_REPEATS = 10


class ToyOptions(BaseModel):
    """Options of the toy domain."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["toy"] = "toy"
    mixture: Literal["ring8", "rare-ring8", "gmm16"] = "ring8"
    train_size: int = Field(20_000, ge=16)
    data_seed: int = 0


class NetworkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(256, ge=8)
    depth: int = Field(4, ge=1)


class ToyDomain(SupportsTargets, Domain):
    """Mixture data, an MLP denoiser, geometric rewards, energy-distance metrics and scatter plots."""

    name = "toy"
    Options = ToyOptions
    options: ToyOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.mixture = MIXTURES[self.options.mixture]()
        self.num_targets = self.mixture.num_modes
        self._rewards = toy_rewards(self.mixture)
        self._data: Batch | None = None
        self._references: dict[tuple[str, float, int | None], tuple[torch.Tensor, float]] = {}

    def build_network(self, options: dict[str, Any]) -> nn.Module:
        net = NetworkOptions.model_validate(options)
        return MLPDenoiser(self.mixture.dim, self.num_targets, width=net.width, depth=net.depth)

    def build_regressor(self, options: dict[str, Any], outputs: int = 1) -> nn.Module:
        net = NetworkOptions.model_validate(options)
        return MLPRegressor(self.mixture.dim, self.num_targets, width=net.width, depth=net.depth, outputs=outputs)

    def dataset(self, split: str = "train") -> Batch:
        if self._data is None:
            generator = torch.Generator().manual_seed(self.options.data_seed)
            x, _ = self.mixture.sample(self.options.train_size, generator)
            self._data = Batch(x)
        return self._data

    def prior_batch(self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None) -> Batch:
        return Batch(torch.zeros(n, self.mixture.dim), cond=cond)

    def decode(self, x: torch.Tensor, mask: torch.Tensor | None) -> Sequence[Any]:
        return x.float().numpy()

    def rewards(self) -> dict[str, Reward]:
        return self._rewards

    def parse_target(self, text: str) -> int:
        try:
            target = int(text)
        except ValueError:
            raise ValueError(f"toy targets are mode indices 0..{self.num_targets - 1}, got {text!r}") from None
        if not 0 <= target < self.num_targets:
            raise ValueError(f"toy target {target} is out of range 0..{self.num_targets - 1}")
        return target

    def exact_payoff(self, reward: Reward, temperature: float, n: int, generator: torch.Generator,
                     target: int | None = None) -> torch.Tensor:
        return exact_payoff_samples(self.mixture, reward, temperature, n, generator, target)

    def _exact_reference(self, reward_name: str, temperature: float, target: int | None
                         ) -> tuple[torch.Tensor, float]:
        """A fixed large exact pay-off set and its spread ``E|Y-Y'|``, computed once per problem."""
        key = (reward_name, temperature, target)
        if key not in self._references:
            generator = torch.Generator().manual_seed(REFERENCE_SEED)
            reference = self.exact_payoff(self._rewards[reward_name], temperature, REFERENCE_SIZE, generator,
                                          target)
            self._references[key] = (reference, float(_mean_distance(reference.double(), reference.double())))
        return self._references[key]

    def payoff_distance(self, x: torch.Tensor, reward: str, temperature: float, target: int | None = None
                        ) -> float:
        """Energy distance of samples ``x`` to the exact pay-off distribution (fixed reference set)."""
        reference, spread = self._exact_reference(reward, temperature, target)
        return energy_distance(x.float(), reference, spread)

    def quality_metrics(self, samples: Batch, reward: str | None, temperature: float | None,
                        generator: torch.Generator) -> dict[str, Any]:
        """Mode shares, and with a toy reward and a temperature the distance to the exact pay-off distribution.

        The distance is measured against a fixed large exact reference set (``REFERENCE_SIZE``
        samples). ``noise_floor`` is what a perfect sampler scores: the mean distance of
        ``FLOOR_REPEATS`` independent exact sets of the same size as ``samples`` to that reference.
        """
        x = samples.x.float()
        shares = torch.bincount(self.mixture.nearest_mode(x), minlength=self.num_targets) / len(x)
        metrics: dict[str, Any] = {"n": len(x), "mode_shares": [round(float(s), 4) for s in shares]}
        if temperature is None or reward not in self._rewards:
            return metrics
        named = self._rewards[reward]
        groups = [None] if samples.cond is None else sorted(set(samples.cond.tolist()))
        distances, floors, payoff_rewards = [], [], []
        for target in groups:
            rows = x if target is None else x[samples.cond == target]
            distances.append(self.payoff_distance(rows, reward, temperature, target))
            floors.append(np.mean([
                self.payoff_distance(self.exact_payoff(named, temperature, len(rows), generator, target), reward,
                                     temperature, target)
                for _ in range(FLOOR_REPEATS)]))
            reference, _ = self._exact_reference(reward, temperature, target)
            payoff_targets = None if target is None else [target] * len(reference)
            payoff_rewards.append(float(np.mean(named.fn(reference.numpy(), payoff_targets))))
        metrics |= {
            "payoff_mean_reward": float(np.mean(payoff_rewards)),
            "energy_distance": float(np.mean(distances)),
            "noise_floor": float(np.mean(floors)),
        }
        return metrics

    def plot(self, panels: dict[str, Batch], path: Path) -> Path:
        """Scatter plots side by side; 16-D points are shown on the two main axes of the mode means."""
        plt = pyplot()
        means = self.mixture.means
        if self.mixture.dim == 2:
            axes_2d = torch.eye(2)
        else:
            axes_2d = torch.linalg.svd(means - means.mean(0), full_matrices=False).Vh[:2].T
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        limit = float((means @ axes_2d).abs().max()) * 1.6
        for ax, (title, batch) in zip(axes[0], panels.items(), strict=True):
            xy = (batch.x.float() @ axes_2d).numpy()
            color = None if batch.cond is None else batch.cond.numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.4, c=color, cmap="tab10" if color is not None else None)
            ax.scatter(*(means @ axes_2d).T.numpy(), marker="x", c="k", s=20)
            ax.set(title=title, xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
        return save_figure(fig, path)
