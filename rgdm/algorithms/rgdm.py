"""The RGDM loss: fit the model to the pay-off distribution ``p* ∝ p_ref exp(r / tau)``.

Minimising ``KL(p* || p_theta)`` is a weighted log-likelihood, and the diffusion ELBO turns it into the
weighted denoising loss ``sum_i w_i L_i / sum_i w_i`` (docs/design.md §1.2), where ``L_i`` is a row's
denoising loss (``rgdm.diffusion.loss``) and ``w ∝ exp(r / tau)`` are self-normalised pay-off weights
(``payoff_weights``). The three estimators (``rgdm.algorithms.payoff``) minimise that one loss:

* ``rgdm-data`` and ``rgdm-model``: the weights sit on whole samples, the data's or the model's own.
  Rows are drawn with probability ``w`` (importance resampling), so the loss is the plain mean of ``L_i``.
* ``rgdm-stepwise``: the weights sit on ``K`` candidate transitions ``x_{t-1}^k`` inside the exploration
  radius, valued by the reward of their Tweedie estimate (``StepwiseLoss``).

Losses give one value per row of the rows they are handed and know nothing of processes: the engine
shares a minibatch's rows among them, reduces the losses and charges the reward budget
(``rgdm.engine.distributed``). They use the noise-prediction parametrisation with Ho et al.'s "simple"
weighting: the transition loss ``||mu_theta - x_{t-1}^k||^2 / (2 sigma_t^2)`` equals
``c_t ||eps_theta - eps_k||^2`` with a per-step constant ``c_t``, dropped exactly as in plain DDPM training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

import torch

from rgdm.algorithms.base import DenoisingRows
from rgdm.batch import Batch
from rgdm.diffusion.loss import draw_training_noise, noise_error
from rgdm.diffusion.process import GaussianDiffusion, Sample, per_row, repeat_rows
from rgdm.diffusion.sampling import EpsModel
from rgdm.rewards.scorer import Scorer


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
    centre's own, or one more evaluation with the posterior centre) for all of them.
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
        losses = noise_error(diffusion, model(xt, t, batch.cond, batch.mask), eps_center - shift / c_t, batch.mask)
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


# Exploration and values, which guided sampling (``rgdm.algorithms.guided_sampling``, SMC) shares.


def check_candidates(candidates: int) -> None:
    """Candidates come in antithetic pairs: an even number, at least 2."""
    if candidates < 2 or candidates % 2:
        raise ValueError(f"the number of candidates must be even and at least 2, got {candidates}")


def exploration_normals(diffusion: GaussianDiffusion, candidates: int, like: Sample,
                        generator: torch.Generator | None) -> Sample:
    """Standard normals for ``candidates / 2`` antithetic pairs around each row of ``like``, shape
    ``(rows, K / 2, ...)``; drawn as one ``(K / 2, rows)`` block, so any rows of it can be taken."""
    check_candidates(candidates)
    return diffusion.standard_normal((candidates // 2, like.shape[0]), like, generator).transpose(0, 1)


def explore_around(diffusion: GaussianDiffusion, center: Sample, std: torch.Tensor, normals: Sample,
                   radius: float | None, mask: torch.Tensor | None) -> Sample:
    """``K`` candidates ``center + std z_k`` inside the feasible set ``||z_k|| <= radius sqrt(d)``.

    The ``normals`` (``exploration_normals``) become antithetic pairs ``(z, -z)`` on the sample space, so
    the candidates' mean is exactly the centre, and any draw outside the ball is pulled back radially
    onto it (``radius=None``: no limit, each candidate is a plain draw of the transition). Returns shape
    ``(K * rows, ...)``, copy-major.
    """
    pairs = normals.shape[1]
    mask_half = None if mask is None else mask.repeat(pairs, 1)
    z = diffusion.onto_sample_space(normals.transpose(0, 1).flatten(0, 1), mask_half)
    if radius is not None:
        limit = radius * diffusion.dof(z, mask_half).sqrt()
        norm = diffusion.sum_per_sample(z**2, mask_half).sqrt()
        z = z * per_row((limit / norm.clamp(min=1e-12)).clamp(max=1.0), z)
    z = torch.cat([z, -z])
    return repeat_rows(center, 2 * pairs) + repeat_rows(std, 2 * pairs) * z


def explore(diffusion: GaussianDiffusion, center: Sample, std: torch.Tensor, candidates: int, radius: float | None,
            mask: torch.Tensor | None, generator: torch.Generator | None) -> Sample:
    """``candidates`` candidates around ``center`` with fresh normals (``explore_around``)."""
    normals = exploration_normals(diffusion, candidates, center, generator)
    return explore_around(diffusion, center, std, normals, radius, mask)


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

