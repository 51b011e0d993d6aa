"""``rgdm-model`` (online): RGDM's pay-off weights on the model's own samples (docs/design.md §1.3).

The current model is the proposal. Each round samples a buffer, scores it and resamples it with
``softmax(r / (R tau))`` (``rgdm.algorithms.rgdm``): after ``R`` rounds the tempering adds up to exactly
``exp(r / tau)``, so the target stays ``p_ref exp(r / tau)`` while every round's weights stay close to
uniform.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from rgdm.algorithms.base import Algorithm, Anchored, DenoisingRows, TrainingContext
from rgdm.algorithms.config import AlgorithmConfig, Anchor
from rgdm.algorithms.rgdm import conditional_payoff_weights, effective_sample_size
from rgdm.batch import Batch
from rgdm.diffusion.sampling import LangevinCorrector, Transition, ancestral_transition, sample


class ModelPayoff(Algorithm):
    """Weighted likelihood on the model's own samples, tempered over rounds towards ``exp(r / tau)``."""

    name = "rgdm-model"

    def __init__(self, temperature: float, total_steps: int, rounds: int = 4, buffer_size: int = 4096,
                 sample_steps: int | None = None, anchor: float = 0.0,
                 transition: Transition = ancestral_transition) -> None:
        if rounds < 1 or total_steps < rounds:
            raise ValueError(f"rounds must be in 1..steps ({total_steps}), got {rounds}")
        self.temperature = temperature
        self.rounds = rounds
        self.steps_per_round = total_steps // rounds
        self.buffer_size = buffer_size
        self.sample_steps = sample_steps
        self.anchor = anchor
        self.transition = transition
        self.round = -1
        self.buffer = Batch(torch.zeros(0))
        self.weights = torch.zeros(0)

    def _refresh(self, ctx: TrainingContext, generator: torch.Generator) -> None:
        """Sample a buffer from the current (EMA) model (by ``transition``), score it and temper its weights.

        Every process samples the same buffer (one seed), so data-parallel runs stay in step.
        """
        prior = ctx.prior(self.buffer_size, generator, ctx.draw_targets(self.buffer_size, generator))
        x = sample(ctx.ema, prior.x, steps=self.sample_steps, cond=prior.cond, mask=prior.mask,
                   generator=generator, transition=self.transition, device=prior.x.device, progress=ctx.progress,
                   interrupt=ctx.interrupt).x0
        self.buffer = Batch(x, prior.mask, prior.cond)
        self.weights = self.round_weights(ctx.score(self.name, x, prior.mask, prior.cond), prior.cond)
        if prior.cond is None:  # drawn from the previous round's sizes: the refits compound like the weights
            ctx.refit_sizes(prior.mask, self.weights)

    def round_weights(self, rewards: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """One round's share of the tempering: ``softmax(r / (R tau))``, per target if any."""
        return conditional_payoff_weights(rewards, self.temperature * self.rounds, cond)

    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> Anchored[DenoisingRows]:
        """Buffer rows drawn with probability ``w`` (a new buffer each round), and the anchor's rows."""
        round_index = min(step // self.steps_per_round, self.rounds - 1)
        if round_index != self.round:
            self._refresh(ctx, generator)
            self.round = round_index
        batch = self.buffer.sample(ctx.batch_size, generator, self.weights).to(ctx.data.x.device)
        return Anchored.draw(DenoisingRows.draw(batch, ctx.model.diffusion, generator), ctx, self.anchor, generator)

    def row_losses(self, ctx: TrainingContext, rows: Anchored[DenoisingRows]) -> tuple[torch.Tensor, dict[str, float]]:
        losses = rows.plus_anchor(rows.rows.losses(ctx.model), ctx.model)
        return losses, {"ess": effective_sample_size(self.weights), "round": float(self.round)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"round": torch.tensor(self.round), "x": self.buffer.x, "weights": self.weights}
        for field in ("mask", "cond"):
            value = getattr(self.buffer, field)
            if value is not None:
                tensors[field] = value
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.round = int(tensors["round"])
        self.buffer = Batch(tensors["x"], tensors.get("mask"), tensors.get("cond"))
        self.weights = tensors["weights"]


class BufferCorrector(BaseModel):
    """Langevin corrector steps after the buffer sampler's steps (predictor-corrector, as ``rgdm sample
    --corrector-snr``), so that a run fits own samples nearer the model's marginals than its plain sampler
    draws: fitted to plain samples, a fine-tune learns their errors too (docs/results/molecules.md#xtb)."""

    model_config = ConfigDict(extra="forbid")

    snr: float = Field(gt=0, allow_inf_nan=False, description="the corrector's signal-to-noise ratio")
    steps: int = Field(1, ge=1, description="corrector steps after every step; each costs a network evaluation")
    start: int | None = Field(None, ge=1, description="correct only the steps landing at diffusion time <= this")

    def transition(self) -> LangevinCorrector:
        return LangevinCorrector(self.snr, self.steps, start=self.start)


class RoundsConfig(AlgorithmConfig):
    """The settings of an algorithm that fits rounds of the model's own samples (``rgdm-model``, ``rwr``)."""

    rounds: int = Field(4, ge=1, description="rounds, each on a fresh buffer sampled from the model")
    buffer_size: int = Field(4096, ge=1, description="samples per round; each costs one reward call")
    sample_steps: int | None = Field(None, ge=1, description="sampler steps of a buffer (null: every step)")
    corrector: BufferCorrector | None = Field(None, description="corrector steps of the buffer sampler (null: "
                                                                "plain ancestral sampling)")

    def buffer_transition(self) -> Transition:
        """The transition that samples a buffer: plain, or followed by the ``corrector``'s steps."""
        return ancestral_transition if self.corrector is None else self.corrector.transition()


class ModelPayoffConfig(RoundsConfig):
    """``rgdm-model``: RGDM's pay-off weights on rounds of the model's own samples, tempered across rounds."""

    name: Literal["rgdm-model"] = "rgdm-model"
    anchor: Anchor = 0.0

    def build(self, total_steps: int, num_targets: int) -> ModelPayoff:
        return ModelPayoff(self.temperature, total_steps, self.rounds, self.buffer_size, self.sample_steps,
                           self.anchor, self.buffer_transition())
