"""Exploration around a reverse step, and the Tweedie values of its candidates.

What RGDM's step-wise loss (``rgdm.algorithms.rgdm_stepwise``) and reward-guided sampling
(``rgdm.algorithms.guided_sampling``, ``rgdm.algorithms.smc``) share: antithetic candidates inside the
exploration radius, and each candidate valued by the reward of its Tweedie estimate ``x0_hat``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from rgdm.batch import Batch
from rgdm.diffusion.process import GaussianDiffusion, Sample, per_row, repeat_rows
from rgdm.diffusion.sampling import EpsModel
from rgdm.rewards.scorer import Scorer


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
