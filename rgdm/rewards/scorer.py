"""Scoring tensors: decode them into objects, then ask the reward.

Algorithms work with tensors and never import a domain; a ``Scorer`` carries the domain's decoder
and the reward together, so an algorithm only calls ``scorer(x, mask, targets)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgdm.rewards.base import Decoder, Reward, RewardCounter, RewardResult, TensorRewardFn


@dataclass
class Scorer:
    """A reward bound to a decoder; ``gradient_fn`` is a differentiable tensor form, if one exists."""

    reward: Reward
    decode: Decoder
    counter: RewardCounter
    gradient_fn: TensorRewardFn | None = None

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> RewardResult:
        samples = self.decode(x.detach().cpu(), None if mask is None else mask.cpu())
        target_list = None if targets is None else targets.detach().cpu().tolist()
        result = self.reward(samples, target_list)
        return RewardResult(result.values.to(x.device), result.valid.to(x.device))

    def differentiable(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Reward values with gradients, for gradient guidance; charged to the same budget."""
        if self.gradient_fn is None:
            raise ValueError("this reward is a black box with no differentiable form; "
                             "use candidate selection (guidance: select) instead of a gradient step")
        self.counter.charge(x.shape[0])
        return self.gradient_fn(x, targets)
