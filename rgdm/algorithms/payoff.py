"""The three RGDM fine-tuning algorithms: where the pay-off samples come from (docs/design.md §1.3).

* ``DataPayoff`` (offline): score the training data once; draw minibatches with probability
  ``softmax(r / tau)`` (importance resampling of the weighted log-likelihood).
* ``ModelPayoff`` (online): the current model is the proposal. Each round samples a buffer, scores
  it and resamples it with ``softmax(r / (R tau))``: after ``R`` rounds the tempering adds up to
  exactly ``exp(r / tau)``, so the target stays ``p_ref exp(r / tau)`` while every round's weights
  stay close to uniform.
* ``StepwiseExploration`` (the paper's core): candidate transitions valued by the reward of their
  Tweedie estimate (``rgdm.algorithms.rgdm.StepwiseLoss``).

All three add the optional KL anchor on unweighted data. The loss they share is ``rgdm.algorithms.rgdm``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rgdm.algorithms.base import Algorithm, Anchored, DenoisingRows, TrainingContext, score_data_rows
from rgdm.algorithms.config import AlgorithmConfig, Anchor, Candidates, ScoredSize
from rgdm.algorithms.rgdm import (
    StepwiseLoss,
    StepwiseRows,
    ValueEstimate,
    conditional_payoff_weights,
    effective_sample_size,
    payoff_weights,
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

    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> Anchored[DenoisingRows]:
        """Scored data rows drawn with probability ``w`` (their target's weights), and the anchor's rows."""
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
        return Anchored.draw(DenoisingRows.draw(batch, ctx.model.diffusion, generator), ctx, self.anchor, generator)

    def row_losses(self, ctx: TrainingContext, rows: Anchored[DenoisingRows]) -> tuple[torch.Tensor, dict[str, float]]:
        return rows.plus_anchor(rows.rows.losses(ctx.model), ctx.model), {"ess": effective_sample_size(self.weights[0])}

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


class StepwiseExploration(Algorithm):
    """Step-wise guided exploration with ``K`` candidates inside the exploration radius."""

    name = "rgdm-stepwise"

    def __init__(self, temperature: float, candidates: int = 8, radius: float = 0.5, anchor: float = 0.0,
                 center: str = "reference", value_model: str = "frozen", start: int | None = None,
                 value: ValueEstimate = "exact") -> None:
        if value_model not in ("frozen", "ema"):
            raise ValueError(f"value_model must be 'frozen' or 'ema', got {value_model!r}")
        self.stepwise = StepwiseLoss(candidates, radius, temperature, center, start, value)
        self.anchor = anchor
        self.value_model = value_model

    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> Anchored[StepwiseRows]:
        """Data rows (with drawn targets, if any) as training pairs, and the anchor's rows."""
        ctx.require_scorer(self.name)  # a run without a reward fails before its first draw
        batch = ctx.data.sample(ctx.batch_size, generator)
        cond = ctx.draw_targets(ctx.batch_size, generator)
        if cond is not None:
            batch = Batch(batch.x, batch.mask, cond.to(batch.x.device))
        return Anchored.draw(self.stepwise.draw(batch, ctx.model.diffusion, generator), ctx, self.anchor, generator)

    def row_losses(self, ctx: TrainingContext, rows: Anchored[StepwiseRows]) -> tuple[torch.Tensor, dict[str, float]]:
        value_model = ctx.reference if self.value_model == "frozen" and ctx.reference is not None else ctx.ema
        losses, stats = self.stepwise(ctx.model, value_model, ctx.require_scorer(self.name), rows.rows)
        logged = {} if stats is None else {"value": stats.mean_value, "value_spread": stats.value_spread,
                                           "ess_candidates": stats.effective_candidates}
        return rows.plus_anchor(losses, ctx.model), logged


class DataPayoffConfig(AlgorithmConfig):
    """``rgdm-data``: RGDM's pay-off weights on ``scored_size`` data rows, scored once."""

    name: Literal["rgdm-data"] = "rgdm-data"
    anchor: Anchor = 0.0
    scored_size: ScoredSize = None

    def build(self, total_steps: int, num_targets: int) -> DataPayoff:
        return DataPayoff(self.temperature, self.anchor, self.scored_size)


class RoundsConfig(AlgorithmConfig):
    """The settings of an algorithm that fits rounds of the model's own samples (``rgdm-model``, ``rwr``)."""

    rounds: int = Field(4, ge=1, description="rounds, each on a fresh buffer sampled from the model")
    buffer_size: int = Field(4096, ge=1, description="samples per round; each costs one reward call")
    sample_steps: int | None = Field(None, ge=1, description="sampler steps of a buffer (null: every step)")


class ModelPayoffConfig(RoundsConfig):
    """``rgdm-model``: RGDM's pay-off weights on rounds of the model's own samples, tempered across rounds."""

    name: Literal["rgdm-model"] = "rgdm-model"
    anchor: Anchor = 0.0

    def build(self, total_steps: int, num_targets: int) -> ModelPayoff:
        return ModelPayoff(self.temperature, total_steps, self.rounds, self.buffer_size, self.sample_steps,
                           self.anchor)


class StepwiseConfig(AlgorithmConfig):
    """``rgdm-stepwise``: RGDM's step-wise exploration among ``candidates`` antithetic transitions."""

    name: Literal["rgdm-stepwise"] = "rgdm-stepwise"
    anchor: Anchor = 0.0
    candidates: Candidates = 8
    radius: float = Field(0.5, gt=0, allow_inf_nan=False, description="exploration radius rho")
    explore_start: int | None = Field(None, ge=0, description="explore only transitions landing at t <= this "
                                                              "(the rest cost no reward calls; null: all)")
    center: Literal["posterior", "reference"] = "reference"
    value_model: Literal["frozen", "ema"] = "frozen"
    value: ValueEstimate = Field("exact", description="candidates' Tweedie estimates from the value model's "
                                                      "noise prediction at x_t (reuse, no evaluation) or at "
                                                      "each candidate (exact, K evaluations)")

    def build(self, total_steps: int, num_targets: int) -> StepwiseExploration:
        return StepwiseExploration(self.temperature, self.candidates, self.radius, self.anchor, self.center,
                                   self.value_model, self.explore_start, self.value)
