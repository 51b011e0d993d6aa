"""Reward-weighted regression (RWR; Peters & Schaal 2007, Lee et al. 2023) on the model's own samples.

Each round samples a buffer from the current (EMA) model, scores it and fits the model to it with
weights ``softmax(r / tau)``: the full temperature every round. Iterated, the rounds compound to
``p_ref exp(R r / tau)`` after ``R`` rounds, drifting ever further from the reference, unlike
``ModelPayoff`` whose per-round temperature ``R tau`` is tempered to land on ``p_ref exp(r / tau)``.
There is no KL anchor and no exploration radius. Everything else (rounds, buffer, sampler) is
``ModelPayoff``'s, so the two differ only in that one weighting.
"""

from __future__ import annotations

from typing import Literal

import torch

from rgdm.algorithms.rgdm import conditional_payoff_weights
from rgdm.algorithms.rgdm_model import ModelPayoff, RoundsConfig
from rgdm.diffusion.sampling import Transition, ancestral_transition


class RWR(ModelPayoff):
    """Weighted likelihood on the model's own samples with ``softmax(r / tau)`` every round.

    Args:
        temperature: ``tau`` of the weights ``softmax(r / tau)``, the same in every round.
        total_steps: training steps of the whole run, split evenly into ``rounds``.
        rounds: how many times the buffer is resampled from the model and rescored.
        buffer_size: samples per round; each costs one reward call.
        sample_steps: sampler steps for the buffer (``None``: every step of the schedule).
        transition: the buffer sampler's transition (plain, or with corrector steps).
    """

    name = "rwr"

    def __init__(self, temperature: float, total_steps: int, rounds: int = 4, buffer_size: int = 4096,
                 sample_steps: int | None = None, transition: Transition = ancestral_transition) -> None:
        super().__init__(temperature, total_steps, rounds=rounds, buffer_size=buffer_size,
                         sample_steps=sample_steps, anchor=0.0, transition=transition)

    def round_weights(self, rewards: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The full temperature every round: ``softmax(r / tau)``, per target if any."""
        return conditional_payoff_weights(rewards, self.temperature, cond)


class RWRConfig(RoundsConfig):
    """``rwr``: reward-weighted regression's rounds of the model's own samples (no anchor)."""

    name: Literal["rwr"] = "rwr"

    def build(self, total_steps: int, num_targets: int) -> RWR:
        return RWR(self.temperature, total_steps, self.rounds, self.buffer_size, self.sample_steps,
                   self.buffer_transition())
