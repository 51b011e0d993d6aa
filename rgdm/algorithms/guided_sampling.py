"""Reward-guided sampling (DESIGN.md §1.4): the pay-off transition applied while sampling.

Both are transitions for ``rgdm.diffusion.sample`` and work with or without RGDM training:

* ``CandidateSelection`` (black-box rewards): draw ``K`` candidates of ``p_theta(x_s | x_t)``, value
  each by the reward of its Tweedie estimate, keep one with probability ``softmax(v / tau)``
  (``tau = 0``: the best one, which is SVDD's greedy decoding). The
  network's noise prediction at the kept candidate is reused by the next step, so guidance costs
  ``K`` evaluations a step instead of ``K + 1``. ``start`` limits selection to the steps that land at
  diffusion time ``s <= start``: where every candidate's Tweedie estimate scores the same (molecules
  so noisy that none is valid), a uniform pick among ``K`` draws is just an ancestral draw, so skipping
  those steps leaves the samples' distribution unchanged and saves their ``K`` evaluations and calls.
* ``GradientStep`` (differentiable rewards): draw ``x_s``, then move it along the gradient of the
  value, ``sigma^2 grad V / tau`` (the mean shift of the soft-optimal transition), clipped to the
  exploration radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgdm.algorithms.rgdm import explore, payoff_weights
from rgdm.batch import Batch
from rgdm.diffusion.process import Sample, per_row, sample_gradient
from rgdm.diffusion.sampling import StepContext, TransitionResult, ancestral_transition
from rgdm.rewards.scorer import Scorer


@dataclass
class CandidateSelection:
    scorer: Scorer
    candidates: int = 8
    temperature: float = 0.1
    radius: float | None = None
    start: int | None = None

    def __post_init__(self) -> None:
        if self.start is not None and self.start < 0:
            raise ValueError(f"the guidance start is a diffusion time (0 = the data), got {self.start}")

    def __call__(self, ctx: StepContext) -> TransitionResult:
        unguided = self.start is not None and int(ctx.s[0]) > self.start
        if unguided or float(ctx.step.std.max()) == 0.0:
            return ancestral_transition(ctx)
        diffusion, k, n = ctx.model.diffusion, self.candidates, ctx.x.shape[0]
        proposals = explore(diffusion, ctx.step.mean, ctx.step.std, k, self.radius, ctx.mask, ctx.generator)
        tiled = Batch(ctx.x, ctx.mask, ctx.cond).repeat(k)
        s = ctx.s.repeat(k)
        eps = None
        x0_hat = proposals
        if int(ctx.s[0]) > 0:
            eps = ctx.model(proposals, s, tiled.cond, tiled.mask)
            x0_hat = diffusion.x0_from_eps(proposals, s, eps)
        values = self.scorer(x0_hat, tiled.mask, tiled.cond).values.view(k, n)
        if self.temperature == 0:
            choice = values.argmax(dim=0)
        else:
            weights = payoff_weights(values, self.temperature, dim=0)
            device = ctx.generator.device if ctx.generator is not None else weights.device
            choice = torch.multinomial(weights.T.to(device), 1, generator=ctx.generator).squeeze(1)
        choice = choice.to(values.device)
        rows = choice * n + torch.arange(n, device=values.device)
        return TransitionResult(proposals[rows], None if eps is None else eps[rows])


@dataclass
class GradientStep:
    scorer: Scorer
    temperature: float = 0.1
    radius: float = 0.5

    def __call__(self, ctx: StepContext) -> TransitionResult:
        drawn = ancestral_transition(ctx).x
        if float(ctx.step.std.max()) == 0.0:
            return TransitionResult(drawn)
        diffusion = ctx.model.diffusion
        def value(x: Sample) -> torch.Tensor:
            x0_hat = x
            if int(ctx.s[0]) > 0:
                x0_hat = diffusion.x0_from_eps(x, ctx.s, ctx.model(x, ctx.s, ctx.cond, ctx.mask))
            return self.scorer.differentiable(x0_hat, ctx.cond).sum()

        grad = sample_gradient(value, drawn)
        std = ctx.step.std.reshape(len(ctx.s), -1)[:, 0]
        shift = diffusion.onto_sample_space(per_row(std**2, grad) * grad / self.temperature, ctx.mask)
        limit = self.radius * std * diffusion.dof(drawn, ctx.mask).sqrt()
        norm = diffusion.sum_per_sample(shift**2, ctx.mask).sqrt()
        return TransitionResult(drawn + per_row((limit / norm.clamp(min=1e-12)).clamp(max=1.0), shift) * shift)
