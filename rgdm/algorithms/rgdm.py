"""The RGDM loss: fit the model to the pay-off distribution ``p* ∝ p_ref exp(r / tau)``.

Minimising ``KL(p* || p_theta)`` is a weighted log-likelihood, and the diffusion ELBO turns it into a
weighted denoising loss (DESIGN.md §1.2). Every estimator below produces self-normalised weights
``w ∝ exp(r / tau)`` and minimises that one loss:

* data and model pay-off: the weights sit on whole samples (``weighted_denoising_loss``);
* step-wise guided exploration: the weights sit on ``K`` candidate transitions ``x_{t-1}^k`` inside
  the exploration radius, valued by the reward of their Tweedie estimate (``stepwise_loss``).

Losses use the noise-prediction parametrisation with Ho et al.'s "simple" weighting: the transition
loss ``||mu_theta - x_{t-1}^k||^2 / (2 sigma_t^2)`` equals ``c_t ||eps_theta - eps_k||^2`` with a
per-step constant ``c_t``, which is dropped exactly as in plain DDPM training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from rgdm.batch import Batch, Shard
from rgdm.diffusion.process import GaussianDiffusion, Sample, per_row, repeat_rows
from rgdm.diffusion.sampling import EpsModel
from rgdm.rewards.scorer import Scorer

WHOLE = Shard()


def payoff_weights(rewards: torch.Tensor, temperature: float, dim: int = 0) -> torch.Tensor:
    """Self-normalised pay-off weights ``softmax(r / tau)`` along ``dim``."""
    return torch.softmax(rewards / temperature, dim=dim)


def conditional_payoff_weights(rewards: torch.Tensor, temperature: float, cond: torch.Tensor | None
                               ) -> torch.Tensor:
    """``softmax(r / tau)`` within each target's rows, each target keeping its share of the rows.

    The pay-off distribution ``p_ref(x | c) exp(r(x, c) / tau) / Z(c)`` is normalised per target:
    one softmax over a buffer of mixed targets would also reweight the targets themselves, towards
    those whose rewards are easiest to earn. Without targets this is ``payoff_weights``.
    """
    if cond is None:
        return payoff_weights(rewards, temperature)
    cond = cond.to(rewards.device)
    weights = torch.empty_like(rewards)
    for target in cond.unique():
        rows = cond == target
        weights[rows] = payoff_weights(rewards[rows], temperature) * rows.sum() / len(rewards)
    return weights


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of importance weights."""
    return float(weights.sum() ** 2 / (weights**2).sum())


def denoising_loss(model: EpsModel, batch: Batch, generator: torch.Generator, shard: Shard = WHOLE
                   ) -> torch.Tensor:
    """Per-sample denoising loss ``||eps_theta(x_t, t) - eps||^2 / d`` at uniform ``t`` in 1..T.

    Times and noise are drawn for the whole batch, the loss computed on ``shard``'s rows only.
    """
    diffusion = model.diffusion
    t = torch.randint(1, diffusion.timesteps + 1, (len(batch),), generator=generator,
                      device=generator.device).to(batch.x.device)
    noise = diffusion.noise_like(batch.x, batch.mask, generator)
    batch, t, noise = shard(batch), shard(t), shard(noise)
    xt = diffusion.q_sample(batch.x, t, noise)
    error = model(xt, t, batch.cond, batch.mask) - noise
    return diffusion.sum_per_sample(error**2, batch.mask) / diffusion.dof(batch.x, batch.mask)


def weighted_denoising_loss(model: EpsModel, batch: Batch, generator: torch.Generator, shard: Shard = WHOLE
                            ) -> torch.Tensor:
    """The weighted log-likelihood bound: ``sum_i w_i L_i / sum_i w_i`` (plain mean without weights)."""
    losses = denoising_loss(model, batch, generator, shard)
    if batch.weight is None:
        return shard.mean(losses, len(batch))
    return shard.mean(shard(batch.weight) * losses, 1) / batch.weight.sum()


def explore(
    diffusion: GaussianDiffusion,
    center: Sample,
    std: torch.Tensor,
    candidates: int,
    radius: float | None,
    mask: torch.Tensor | None,
    generator: torch.Generator | None,
    shard: Shard = WHOLE,
    global_rows: int | None = None,
) -> Sample:
    """``K`` candidates ``center + std z_k`` inside the feasible set ``||z_k|| <= radius sqrt(d)``.

    Draws come in antithetic pairs ``(z, -z)`` so their mean is exactly the centre, and any draw
    outside the ball is pulled back radially onto it (``radius=None``: no limit, each candidate is
    a plain draw of the transition). Under data parallelism ``center`` holds ``shard``'s rows of a
    batch of ``global_rows``: the draws are made for all of them and sliced. Returns shape
    ``(K * rows, ...)``, copy-major.
    """
    if candidates < 2 or candidates % 2:
        raise ValueError(f"the number of candidates must be even and at least 2, got {candidates}")
    rows = center.shape[0] if global_rows is None else global_rows
    raw = diffusion.standard_normal((candidates // 2, rows), center, generator)
    mask_half = None if mask is None else mask.repeat(candidates // 2, 1)
    z = diffusion.onto_sample_space(raw[:, shard.rows(rows)].flatten(0, 1), mask_half)
    if radius is not None:
        limit = radius * diffusion.dof(z, mask_half).sqrt()
        norm = diffusion.sum_per_sample(z**2, mask_half).sqrt()
        z = z * per_row((limit / norm.clamp(min=1e-12)).clamp(max=1.0), z)
    z = torch.cat([z, -z])
    return repeat_rows(center, candidates) + repeat_rows(std, candidates) * z


@dataclass
class StepwiseStats:
    mean_value: float
    value_spread: float
    effective_candidates: float


def explored_pairs(t: torch.Tensor, start: int | None) -> torch.Tensor:
    """Which training pairs at times ``t`` step-wise exploration scores: those landing at ``t - 1 <= start``."""
    return torch.ones_like(t, dtype=torch.bool) if start is None else t - 1 <= start


#: How a candidate's Tweedie estimate is made: ``exact`` evaluates the network at the candidate; ``reuse`` takes
#: the noise the network predicted at the state the candidate was drawn from, at no network evaluation.
ValueEstimate = Literal["reuse", "exact"]
VALUE_ESTIMATES: tuple[ValueEstimate, ...] = get_args(ValueEstimate)


def check_value_estimate(value: str) -> None:
    """Reject anything but ``reuse`` and ``exact``, naming both."""
    if value not in VALUE_ESTIMATES:
        raise ValueError(f"value must be one of {', '.join(VALUE_ESTIMATES)}, got {value!r}")


def tweedie_estimate(model: EpsModel, x: Sample, s: torch.Tensor, cond: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, parent_eps: Sample | None = None
                     ) -> tuple[Sample, Sample | None]:
    """``x0_hat(x_s)``, and the network's noise prediction at ``x_s`` when every row needed one.

    Without ``parent_eps`` (``value=exact``) the network is evaluated at ``x_s`` for the rows with ``s > 0``;
    at ``s = 0`` the state is the sample. With ``parent_eps``, the noise predicted at the state ``x_t`` that
    ``x_s`` was drawn from (``value=reuse``), ``x0_hat ≈ (x_s - sqrt(1 - abar_s) eps(x_t)) / sqrt(abar_s)``
    costs no evaluation; it is exact at ``s = 0`` and wherever the prediction does not depend on the state.
    """
    diffusion = model.diffusion
    if parent_eps is not None:
        return diffusion.x0_from_eps(x, s, parent_eps), None
    rows = s > 0
    if bool(rows.all()):
        eps = model(x, s, cond, mask)
        return diffusion.x0_from_eps(x, s, eps), eps
    x0_hat = x.clone()
    if bool(rows.any()):
        eps = model(x[rows], s[rows], None if cond is None else cond[rows], None if mask is None else mask[rows])
        x0_hat[rows] = diffusion.x0_from_eps(x[rows], s[rows], eps)
    return x0_hat, None


def tweedie_values(
    value_model: EpsModel, scorer: Scorer, x: Sample, s: torch.Tensor, batch: Batch,
    parent_eps: Sample | None = None,
) -> torch.Tensor:
    """``r(x0_hat(x_s))`` with ``x0_hat`` from ``value_model`` (``tweedie_estimate``: exact, or reusing
    ``parent_eps``); at ``s = 0`` the state is the sample."""
    with torch.no_grad():
        x0_hat, _ = tweedie_estimate(value_model, x, s, batch.cond, batch.mask, parent_eps)
        return scorer(x0_hat, batch.mask, batch.cond).values


def stepwise_loss(
    model: EpsModel,
    value_model: EpsModel,
    scorer: Scorer,
    batch: Batch,
    generator: torch.Generator,
    *,
    candidates: int,
    radius: float,
    temperature: float,
    center: str,
    start: int | None = None,
    value: ValueEstimate = "exact",
    shard: Shard = WHOLE,
    charge: Callable[[int], None] = lambda calls: None,
) -> tuple[torch.Tensor, StepwiseStats | None]:
    """Step-wise guided exploration (DESIGN.md §1.3, item 3).

    For each ``(x_0, t)`` build ``x_t``; around the transition centre ``m`` (the posterior mean of
    ``q(x_{t-1} | x_t, x_0)``, or the reference model's mean) draw ``K`` feasible candidates, weight
    them by ``softmax(r(x0_hat(x_{t-1}^k)) / tau)`` and regress ``mu_theta(x_t, t)`` on them. Since
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
    scores the same (a molecule so noisy that none is valid). ``charge`` is told the global reward
    calls before any is made (the budget under data parallelism). The stats cover the explored pairs;
    they are ``None`` when there are none.

    ``value`` is how the candidates' Tweedie estimates are made (``tweedie_estimate``): ``exact`` evaluates
    ``value_model`` on all ``K`` candidates; ``reuse`` takes ``value_model``'s noise prediction at ``x_t``
    (the reference centre's own, or one more evaluation with the posterior centre) for all of them.
    """
    check_value_estimate(value)
    diffusion = model.diffusion
    global_rows = len(batch)
    t = torch.randint(1, diffusion.timesteps + 1, (global_rows,), generator=generator,
                      device=generator.device).to(batch.x.device)
    explored = explored_pairs(t, start)
    charge(candidates * int(explored.sum()))
    noise = diffusion.noise_like(batch.x, batch.mask, generator)
    batch, t, noise, explored = shard(batch), shard(t), shard(noise), shard(explored)
    n = len(batch)
    xt = diffusion.q_sample(batch.x, t, noise)
    if center == "posterior":
        eps_center = noise
    elif center == "reference":
        with torch.no_grad():
            eps_center = value_model(xt, t, batch.cond, batch.mask)
    else:
        raise ValueError(f"center must be 'posterior' or 'reference', got {center!r}")
    step = diffusion.reverse_step(xt, t, t - 1, eps_center, eta=1.0)
    # Candidates and their rewards are computed for this process's rows only.
    proposals = explore(diffusion, step.mean, step.std, candidates, radius, batch.mask, generator, shard,
                        global_rows)
    scored = explored.repeat(candidates)
    values = torch.zeros(candidates * n, device=xt.device)
    if scored.any():
        parent_eps = None
        if value == "reuse":
            with torch.no_grad():
                value_eps = eps_center if center == "reference" else value_model(xt, t, batch.cond, batch.mask)
            parent_eps = repeat_rows(value_eps, candidates)[scored]
        values[scored] = tweedie_values(value_model, scorer, proposals[scored], (t - 1).repeat(candidates)[scored],
                                        batch.repeat(candidates).select(scored), parent_eps).to(xt.device)
    weights = payoff_weights(values.view(candidates, n), temperature, dim=0)
    # c_t = beta_t / (sqrt(alpha_t) sqrt(1 - abar_t)): how far mu moves per unit of eps.
    betas = diffusion.schedule.betas
    c_t = diffusion.schedule.at(betas / ((1 - betas).sqrt() * (1 - diffusion.schedule.alpha_bar).sqrt()
                                         .clamp(min=1e-12)), t, xt)
    offsets = proposals - repeat_rows(step.mean, candidates)
    shift = (per_row(weights.reshape(-1), offsets) * offsets).view(candidates, *xt.shape).sum(0)
    target = eps_center - shift / c_t
    error = model(xt, t, batch.cond, batch.mask) - target
    loss = shard.mean(diffusion.sum_per_sample(error**2, batch.mask) / diffusion.dof(xt, batch.mask), global_rows)
    if not explored.any():
        return loss, None
    explored_values = values.view(candidates, n)[:, explored]
    ess = (1.0 / (weights[:, explored] ** 2).sum(0)).mean()
    stats = StepwiseStats(float(explored_values.mean()), float(explored_values.std(0).mean()), float(ess))
    return loss, stats
