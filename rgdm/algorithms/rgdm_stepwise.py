"""``rgdm-stepwise`` (the paper's core): the step-wise loss and its estimator (docs/design.md §1.3, item 3).

Candidate transitions inside the exploration radius (``rgdm.algorithms.exploration``) are valued by the
reward of their Tweedie estimate and weighted with RGDM's pay-off weights (``rgdm.algorithms.rgdm``):
``StepwiseLoss`` gives each training pair's loss, and ``StepwiseExploration`` draws the pairs from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch
from pydantic import Field

from rgdm.algorithms.base import Algorithm, Anchored, DenoisingRows, TrainingContext
from rgdm.algorithms.config import AlgorithmConfig, Anchor, Candidates
from rgdm.algorithms.exploration import (
    ValueEstimate,
    check_candidates,
    check_value_estimate,
    exploration_normals,
    explore_around,
    tweedie_values,
)
from rgdm.algorithms.rgdm import payoff_weights
from rgdm.batch import Batch
from rgdm.diffusion.loss import draw_training_noise, noise_error
from rgdm.diffusion.process import GaussianDiffusion, Sample, per_row, repeat_rows
from rgdm.diffusion.sampling import EpsModel
from rgdm.diffusion.self_conditioning import hinted_for_training
from rgdm.rewards.scorer import Scorer

#: The centre ``m`` of the step-wise candidates: the posterior mean of ``q(x_{t-1} | x_t, x_0)``, or the
#: reference model's transition mean.
Center = Literal["reference", "posterior"]


@dataclass(frozen=True)
class StepwiseStats:
    """Over the explored pairs: the candidates' mean value, their spread within a pair, and the mean
    effective number of candidates ``1 / sum_k w_k^2``."""

    mean_value: float
    value_spread: float
    effective_candidates: float


@dataclass(frozen=True)
class StepwiseRows(DenoisingRows):
    """Training pairs ``(x_0, t)`` with their noise, the standard normals of their candidates
    (``exploration_normals``, ``(rows, K / 2, ...)``) and whether each pair is explored."""

    normals: Sample
    explored: torch.Tensor

    @property
    def reward_calls(self) -> int:
        """``K`` reward calls per explored pair."""
        return 2 * self.normals.shape[1] * int(self.explored.sum())

    def select(self, index: slice) -> StepwiseRows:
        return replace(super().select(index), normals=self.normals[index], explored=self.explored[index])


@dataclass(frozen=True)
class StepwiseLoss:
    """Step-wise guided exploration (docs/design.md §1.3, item 3): ``K = candidates`` candidates inside the
    exploration radius ``rho = radius``, weighted ``softmax(value / tau)`` with ``tau = temperature``.

    For each ``(x_0, t)`` build ``x_t``; around the transition centre ``m`` (``center``: the posterior
    mean of ``q(x_{t-1} | x_t, x_0)``, or the reference model's mean) draw ``K`` feasible candidates,
    weight them by ``softmax(r(x0_hat(x_{t-1}^k)) / tau)`` and regress ``mu_theta(x_t, t)`` on them. Since
    ``mu`` is affine in ``eps`` (``mu = a_t x_t - c_t eps``), candidate ``k`` corresponds to the noise
    ``eps_k = eps_m - (x_{t-1}^k - m) / c_t``, and ``sum_k w_k ||eps_theta - eps_k||^2`` equals
    ``||eps_theta - sum_k w_k eps_k||^2`` up to a constant, which is what is minimised. With a
    constant reward the antithetic candidates average back to ``m``: with the posterior centre this
    is the plain denoising loss exactly, with the reference centre it is distillation of the
    reference. Both have the same expected target; the reference centre has far less variance (the
    data noise ``eps`` drops out of the target), which is why it is the default.

    ``start`` explores only the pairs whose transition lands at ``t - 1 <= start`` (``explored_pairs``);
    the others keep uniform weights, so their target is the centre, and spend no reward calls. As with
    guided sampling's ``start``, it is meant for the times where every candidate's Tweedie estimate
    scores the same (a molecule so noisy that none is valid).

    ``value`` is how the candidates' Tweedie estimates are made (``tweedie_estimate``): ``exact`` evaluates
    the value model on all ``K`` candidates; ``reuse`` takes its noise prediction at ``x_t`` (the reference
    centre's own, or one more evaluation with the posterior centre) for all of them. Reuse is cheaper and
    wrong here: a reused estimate moves by a candidate's offset over ``sqrt(abar_{t-1})``, so the farthest
    candidate wins, and on the toy the model it trains leaves the data (energy distance 100-175 against
    0.007-0.03 exact; docs/results/toy.md).
    """

    candidates: int
    radius: float | None
    temperature: float
    center: Center = "reference"
    start: int | None = None
    value: ValueEstimate = "exact"

    def __post_init__(self) -> None:
        check_candidates(self.candidates)
        check_value_estimate(self.value)
        if self.center not in get_args(Center):
            raise ValueError(f"center must be 'posterior' or 'reference', got {self.center!r}")
        if self.start is not None and self.start < 0:
            raise ValueError(f"the exploration start is a diffusion time (0 = the data), got {self.start}")

    def draw(self, batch: Batch, diffusion: GaussianDiffusion, generator: torch.Generator) -> StepwiseRows:
        """Every row's time and noise, then its candidates' normals: all the step's random numbers."""
        t, noise = draw_training_noise(diffusion, batch.x, batch.mask, generator)
        normals = exploration_normals(diffusion, self.candidates, batch.x, generator)
        return StepwiseRows(batch, t, noise, normals, explored_pairs(t, self.start))

    def __call__(self, model: EpsModel, value_model: EpsModel, scorer: Scorer, rows: StepwiseRows
                 ) -> tuple[torch.Tensor, StepwiseStats | None]:
        """Each row's loss ``||eps_theta(x_t, t) - sum_k w_k eps_k||^2 / d``, and the stats of the explored
        pairs (``None`` when there are none). ``value_model`` gives the reference centre and the values."""
        diffusion, batch, t = model.diffusion, rows.batch, rows.t
        xt = diffusion.q_sample(batch.x, t, rows.noise)
        if self.center == "posterior":
            eps_center = rows.noise
        else:
            with torch.no_grad():
                eps_center = value_model(xt, t, batch.cond, batch.mask)
        step = diffusion.reverse_step(xt, t, t - 1, eps_center, eta=1.0)
        proposals = explore_around(diffusion, step.mean, step.std, rows.normals, self.radius, batch.mask)
        values = self._values(value_model, scorer, rows, xt, eps_center, proposals)
        weights = payoff_weights(values, self.temperature, dim=0)
        # c_t = beta_t / (sqrt(alpha_t) sqrt(1 - abar_t)): how far mu moves per unit of eps.
        betas = diffusion.schedule.betas
        c_t = diffusion.schedule.at(betas / ((1 - betas).sqrt() * (1 - diffusion.schedule.alpha_bar).sqrt()
                                             .clamp(min=1e-12)), t, xt)
        offsets = proposals - repeat_rows(step.mean, self.candidates)
        shift = (per_row(weights.reshape(-1), offsets) * offsets).view(self.candidates, *xt.shape).sum(0)
        hinted = hinted_for_training(t) if model.self_conditioned else None
        losses = noise_error(diffusion, model(xt, t, batch.cond, batch.mask, hinted), eps_center - shift / c_t,
                             batch.mask)
        if not rows.explored.any():
            return losses, None
        explored_values = values[:, rows.explored]
        ess = (1.0 / (weights[:, rows.explored] ** 2).sum(0)).mean()
        return losses, StepwiseStats(float(explored_values.mean()), float(explored_values.std(0).mean()), float(ess))

    def _values(self, value_model: EpsModel, scorer: Scorer, rows: StepwiseRows, xt: Sample, eps_center: Sample,
                proposals: Sample) -> torch.Tensor:
        """``r(x0_hat(x_{t-1}^k))`` of the explored pairs' candidates, ``(K, rows)``; 0 for the other pairs."""
        k, batch = self.candidates, rows.batch
        scored = rows.explored.repeat(k)
        values = torch.zeros(k * len(rows), device=xt.device)
        if scored.any():
            parent_eps = None
            if self.value == "reuse":
                with torch.no_grad():
                    value_eps = eps_center if self.center == "reference" else value_model(xt, rows.t, batch.cond,
                                                                                          batch.mask)
                parent_eps = repeat_rows(value_eps, k)[scored]
            values[scored] = tweedie_values(value_model, scorer, proposals[scored], (rows.t - 1).repeat(k)[scored],
                                            batch.repeat(k).select(scored), parent_eps).to(xt.device)
        return values.view(k, len(rows))


def explored_pairs(t: torch.Tensor, start: int | None) -> torch.Tensor:
    """Which training pairs at times ``t`` step-wise exploration scores: those landing at ``t - 1 <= start``."""
    return torch.ones_like(t, dtype=torch.bool) if start is None else t - 1 <= start


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
                                                      "noise prediction at each candidate (exact, K evaluations) "
                                                      "or at x_t (reuse, no evaluation; diverged on the toy)")

    def build(self, total_steps: int, num_targets: int) -> StepwiseExploration:
        return StepwiseExploration(self.temperature, self.candidates, self.radius, self.anchor, self.center,
                                   self.value_model, self.explore_start, self.value)
