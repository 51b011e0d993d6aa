"""The RGDM loss: fit the model to the pay-off distribution ``p* ∝ p_ref exp(r / tau)``.

Minimising ``KL(p* || p_theta)`` is a weighted log-likelihood, and the diffusion ELBO turns it into the
weighted denoising loss ``sum_i w_i L_i / sum_i w_i`` (docs/design.md §1.2), where ``L_i`` is a row's
denoising loss (``rgdm.diffusion.loss``) and ``w ∝ exp(r / tau)`` are self-normalised pay-off weights
(``payoff_weights``). The three estimators, each in the module of its registered name
(``rgdm.algorithms.rgdm_data``, ``rgdm_model``, ``rgdm_stepwise``), minimise that one loss, each with an
optional KL anchor on unweighted data:

* ``rgdm-data`` and ``rgdm-model``: the weights sit on whole samples, the data's or the model's own.
  Rows are drawn with probability ``w`` (importance resampling), so the loss is the plain mean of ``L_i``.
* ``rgdm-stepwise``: the weights sit on ``K`` candidate transitions ``x_{t-1}^k`` inside the exploration
  radius, valued by the reward of their Tweedie estimate (``rgdm_stepwise.StepwiseLoss``).

Losses give one value per row of the rows they are handed and know nothing of processes: the engine
shares a minibatch's rows among them, reduces the losses and charges the reward budget
(``rgdm.engine.distributed``). They use the noise-prediction parametrisation with Ho et al.'s "simple"
weighting: the transition loss ``||mu_theta - x_{t-1}^k||^2 / (2 sigma_t^2)`` equals
``c_t ||eps_theta - eps_k||^2`` with a per-step constant ``c_t``, dropped exactly as in plain DDPM training.
"""

from __future__ import annotations

import torch


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
