"""Reward-guided sampling (DESIGN.md §1.4): the pay-off transition applied while sampling.

Transitions for ``rgdm.diffusion.sample`` that work with or without RGDM training (sequential Monte
Carlo, the one that targets the pay-off distribution itself, is in ``rgdm.algorithms.smc``):

* ``GreedySelection`` (black-box rewards): draw ``K`` candidates of ``p_theta(x_s | x_t)``, value
  each by the reward of its Tweedie estimate, keep one with probability ``softmax(v / tau)``
  (``tau = 0``: the best one, which is SVDD's greedy decoding). It is greedy, not the pay-off: every
  step tilts by ``exp(v / tau)`` again, the tilts compound and the samples over-shoot
  ``p_ref exp(r / tau)``. ``value=exact`` (the default) evaluates the network on every candidate and
  reuses the kept one's prediction in the next step (``K`` evaluations a step); ``value=reuse`` values
  the candidates with the noise predicted at ``x_t`` (``tweedie_estimate``), so a step costs one network
  evaluation per sample, as unguided sampling does, but its values are cruder: on the toy it
  over-shoots the pay-off further (``rgdm bench toy``, row ``rgdm-guided-sampling-reuse``). ``start``
  limits selection to the steps that land at diffusion time ``s <= start``: where every candidate's
  Tweedie estimate scores the same (molecules so noisy that none is valid), a uniform pick among ``K``
  draws is just an ancestral draw, so skipping those steps leaves the samples' distribution unchanged
  and saves their evaluations and calls.
* ``GradientStep`` (differentiable rewards): draw ``x_s``, then move it along the gradient of the
  value, ``sigma^2 grad V / tau`` (the mean shift of the soft-optimal transition), clipped to the
  exploration radius.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rgdm.algorithms.exploration import ValueEstimate, check_value_estimate, explore, tweedie_estimate
from rgdm.algorithms.rgdm import payoff_weights
from rgdm.batch import Batch
from rgdm.diffusion.process import Sample, per_row, repeat_rows, sample_gradient
from rgdm.diffusion.sampling import StepContext, TransitionResult, ancestral_transition
from rgdm.rewards.scorer import Scorer


def check_start(start: int | None) -> None:
    """A guidance start is a diffusion time: ``None`` (every step) or at least 0."""
    if start is not None and start < 0:
        raise ValueError(f"the guidance start is a diffusion time (0 = the data), got {start}")


@dataclass
class GreedySelection:
    """Keep one of ``K`` candidate transitions a step, by ``softmax(v / tau)`` of their Tweedie values."""

    scorer: Scorer
    candidates: int = 8
    temperature: float = 0.1
    radius: float | None = None
    start: int | None = None
    value: ValueEstimate = "exact"

    def __post_init__(self) -> None:
        check_start(self.start)
        check_value_estimate(self.value)

    def __call__(self, ctx: StepContext) -> TransitionResult:
        unguided = self.start is not None and int(ctx.s[0]) > self.start
        if unguided or float(ctx.step.std.max()) == 0.0:
            return ancestral_transition(ctx)
        k, n = self.candidates, ctx.x.shape[0]
        proposals = explore(ctx.model.diffusion, ctx.step.mean, ctx.step.std, k, self.radius, ctx.mask,
                            ctx.generator)
        tiled = Batch(ctx.x, ctx.mask, ctx.cond).repeat(k)
        parent_eps = repeat_rows(ctx.step.eps, k) if self.value == "reuse" else None
        x0_hat, eps = tweedie_estimate(ctx.model, proposals, ctx.s.repeat(k), tiled.cond, tiled.mask, parent_eps)
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
