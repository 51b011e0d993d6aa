"""The three RGDM fine-tuning algorithms: where the pay-off samples come from (DESIGN.md §1.3).

* ``DataPayoff`` (offline): score the training data once; draw minibatches with probability
  ``softmax(r / tau)`` (importance resampling of the weighted log-likelihood).
* ``ModelPayoff`` (online): the current model is the proposal. Each round samples a buffer, scores
  it and resamples it with ``softmax(r / (R tau))``: after ``R`` rounds the tempering adds up to
  exactly ``exp(r / tau)``, so the target stays ``p_ref exp(r / tau)`` while every round's weights
  stay close to uniform.
* ``StepwiseExploration`` (the paper's core): candidate transitions valued by the reward of their
  Tweedie estimate (``rgdm.algorithms.rgdm.stepwise_loss``).

All three add the optional KL anchor on unweighted data.
"""

from __future__ import annotations

import torch

from rgdm.algorithms.base import Algorithm, TrainingContext, anchor_loss, score_data_rows
from rgdm.algorithms.rgdm import (
    ValueEstimate,
    check_value_estimate,
    conditional_payoff_weights,
    effective_sample_size,
    payoff_weights,
    stepwise_loss,
    weighted_denoising_loss,
)
from rgdm.batch import Batch
from rgdm.diffusion.sampling import sample


class DataPayoff(Algorithm):
    """Weighted likelihood on the data itself (one weight vector per conditional target)."""

    name = "rgdm-data"

    def __init__(self, temperature: float, anchor: float = 0.0, scored_size: int | None = None) -> None:
        self.temperature = temperature
        self.anchor = anchor
        self.scored_size = scored_size
        self.rows = torch.zeros(0, dtype=torch.long)
        self.weights = torch.zeros(0)

    def setup(self, ctx: TrainingContext, generator: torch.Generator) -> None:
        self.rows, rewards = score_data_rows(ctx, self.name, self.scored_size, generator)
        self.weights = payoff_weights(rewards, self.temperature, dim=1)
        if not ctx.targets and ctx.data.mask is not None:  # conditional runs keep p(M | c) from the data
            ctx.refit_sizes(ctx.data.mask[self.rows.to(ctx.data.mask.device)], self.weights[0])

    def loss(self, ctx: TrainingContext, step: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        cond = ctx.draw_targets(ctx.batch_size, generator)
        index = torch.multinomial(self.weights[0], ctx.batch_size, replacement=True, generator=generator)
        if cond is not None:
            for row, target in enumerate(ctx.targets):
                chosen = cond == target
                if not chosen.any():  # a small batch need not draw every target
                    continue
                index[chosen] = torch.multinomial(self.weights[row], int(chosen.sum()), replacement=True,
                                                  generator=generator)
        picked = ctx.data.select(self.rows[index].to(ctx.data.x.device))
        batch = Batch(picked.x, picked.mask, None if cond is None else cond.to(picked.x.device))
        loss = weighted_denoising_loss(ctx.model, batch, generator, ctx.shard)
        return loss + anchor_loss(ctx, self.anchor, generator), {"ess": effective_sample_size(self.weights[0])}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"rows": self.rows, "weights": self.weights}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.rows, self.weights = tensors["rows"], tensors["weights"]


class ModelPayoff(Algorithm):
    """Weighted likelihood on the model's own samples, tempered over rounds towards ``exp(r / tau)``."""

    name = "rgdm-model"

    def __init__(self, temperature: float, total_steps: int, rounds: int = 4, buffer_size: int = 4096,
                 sample_steps: int | None = None, anchor: float = 0.0) -> None:
        if rounds < 1 or total_steps < rounds:
            raise ValueError(f"rounds must be in 1..steps ({total_steps}), got {rounds}")
        self.temperature = temperature
        self.rounds = rounds
        self.steps_per_round = total_steps // rounds
        self.buffer_size = buffer_size
        self.sample_steps = sample_steps
        self.anchor = anchor
        self.round = -1
        self.buffer = Batch(torch.zeros(0))
        self.weights = torch.zeros(0)

    def _refresh(self, ctx: TrainingContext, generator: torch.Generator) -> None:
        """Sample a buffer from the current (EMA) model, score it and temper its weights.

        Every process samples the same buffer (one seed), so data-parallel runs stay in step.
        """
        prior = ctx.prior(self.buffer_size, generator, ctx.draw_targets(self.buffer_size, generator))
        x = sample(ctx.ema, prior.x, steps=self.sample_steps, cond=prior.cond, mask=prior.mask,
                   generator=generator, device=prior.x.device, progress=ctx.progress, interrupt=ctx.interrupt).x0
        self.buffer = Batch(x, prior.mask, prior.cond)
        self.weights = self.round_weights(ctx.score(self.name, x, prior.mask, prior.cond), prior.cond)
        if prior.cond is None:  # drawn from the previous round's sizes: the refits compound like the weights
            ctx.refit_sizes(prior.mask, self.weights)

    def round_weights(self, rewards: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """One round's share of the tempering: ``softmax(r / (R tau))``, per target if any."""
        return conditional_payoff_weights(rewards, self.temperature * self.rounds, cond)

    def loss(self, ctx: TrainingContext, step: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        round_index = min(step // self.steps_per_round, self.rounds - 1)
        if round_index != self.round:
            self._refresh(ctx, generator)
            self.round = round_index
        batch = self.buffer.sample(ctx.batch_size, generator, self.weights).to(ctx.data.x.device)
        loss = weighted_denoising_loss(ctx.model, batch, generator, ctx.shard)
        loss = loss + anchor_loss(ctx, self.anchor, generator)
        return loss, {"ess": effective_sample_size(self.weights), "round": float(self.round)}

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


class StepwiseExploration(Algorithm):
    """Step-wise guided exploration with ``K`` candidates inside the exploration radius."""

    name = "rgdm-stepwise"

    def __init__(self, temperature: float, candidates: int = 8, radius: float = 0.5, anchor: float = 0.0,
                 center: str = "reference", value_model: str = "frozen", start: int | None = None,
                 value: ValueEstimate = "exact") -> None:
        check_value_estimate(value)
        if value_model not in ("frozen", "ema"):
            raise ValueError(f"value_model must be 'frozen' or 'ema', got {value_model!r}")
        if start is not None and start < 0:
            raise ValueError(f"the exploration start is a diffusion time (0 = the data), got {start}")
        self.temperature = temperature
        self.candidates = candidates
        self.radius = radius
        self.anchor = anchor
        self.center = center
        self.value_model = value_model
        self.start = start
        self.value = value

    def loss(self, ctx: TrainingContext, step: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        scorer = ctx.require_scorer(self.name)
        value_model = ctx.reference if self.value_model == "frozen" and ctx.reference is not None else ctx.ema
        batch = ctx.data.sample(ctx.batch_size, generator)
        cond = ctx.draw_targets(ctx.batch_size, generator)
        if cond is not None:
            batch = Batch(batch.x, batch.mask, cond.to(batch.x.device))
        loss, stats = stepwise_loss(ctx.model, value_model, scorer, batch, generator,
                                    candidates=self.candidates, radius=self.radius,
                                    temperature=self.temperature, center=self.center, start=self.start,
                                    value=self.value, shard=ctx.shard, charge=ctx.charge)
        loss = loss + anchor_loss(ctx, self.anchor, generator)
        if stats is None:
            return loss, {}
        return loss, {"value": stats.mean_value, "value_spread": stats.value_spread,
                      "ess_candidates": stats.effective_candidates}
