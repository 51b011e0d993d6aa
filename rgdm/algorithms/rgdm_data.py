"""``rgdm-data`` (offline): RGDM's pay-off weights on the training data (docs/design.md §1.3).

Score the training data once; draw minibatches with probability ``softmax(r / tau)`` (importance
resampling of the weighted log-likelihood, ``rgdm.algorithms.rgdm``). ``min_timestep`` fits the tilted
rows only at the noise levels from it on, where a sample's identity is still open (docs/design.md §1.9);
``input_perturbation`` keeps a base trained with it (DDPM-IP, §1.8) in its own training condition.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rgdm.algorithms.base import Algorithm, Anchored, DenoisingRows, TrainingContext, score_data_rows
from rgdm.algorithms.config import AlgorithmConfig, Anchor, InputPerturbation, ScoredSize
from rgdm.algorithms.rgdm import effective_sample_size, payoff_weights
from rgdm.batch import Batch


class DataPayoff(Algorithm):
    """Weighted likelihood on the data itself (one weight vector per conditional target)."""

    name = "rgdm-data"

    def __init__(self, temperature: float, anchor: float = 0.0, scored_size: int | None = None,
                 min_timestep: int = 1, input_perturbation: float = 0.0) -> None:
        self.temperature = temperature
        self.anchor = anchor
        self.scored_size = scored_size
        self.min_timestep = min_timestep
        self.input_perturbation = input_perturbation
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
        rows = DenoisingRows.draw(batch, ctx.model.diffusion, generator, self.input_perturbation, self.min_timestep)
        return Anchored.draw(rows, ctx, self.anchor, generator)

    def row_losses(self, ctx: TrainingContext, rows: Anchored[DenoisingRows]) -> tuple[torch.Tensor, dict[str, float]]:
        return rows.plus_anchor(rows.rows.losses(ctx.model), ctx.model), {"ess": effective_sample_size(self.weights[0])}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"rows": self.rows, "weights": self.weights}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.rows, self.weights = tensors["rows"], tensors["weights"]


class DataPayoffConfig(AlgorithmConfig):
    """``rgdm-data``: RGDM's pay-off weights on ``scored_size`` data rows, scored once."""

    name: Literal["rgdm-data"] = "rgdm-data"
    anchor: Anchor = 0.0
    scored_size: ScoredSize = None
    min_timestep: int = Field(1, ge=1, description="fit the weighted rows at t from this on (1: every t); the "
                              "anchor's rows keep every t")
    input_perturbation: InputPerturbation = 0.0

    def build(self, total_steps: int, num_targets: int) -> DataPayoff:
        return DataPayoff(self.temperature, self.anchor, self.scored_size, self.min_timestep, self.input_perturbation)
