"""The denoising loss, one value per row: ``||eps_theta(x_t, t) - eps||^2 / d`` (docs/design.md §1.2).

Ho et al.'s "simple" loss in the noise parametrisation at a uniform time ``t`` in 1..T, divided by each
row's degrees of freedom ``d``: its free coordinates, without padding nodes, over every part of a
multi-part sample (an edge part's upper triangle once). Nothing is reduced: a weighted loss is a
multiplication, and the mean over the rows is the caller's. Drawing (``draw_training_noise``) is apart
from evaluating, so that the times and noise of a whole batch are drawn at once and any of its rows
evaluates to the same value (the engine shares a batch's rows among processes).
"""

from __future__ import annotations

import torch

from rgdm.diffusion.process import GaussianDiffusion, Sample
from rgdm.diffusion.sampling import EpsModel
from rgdm.diffusion.self_conditioning import hinted_for_training


def draw_training_noise(diffusion: GaussianDiffusion, x: Sample, mask: torch.Tensor | None,
                        generator: torch.Generator, min_timestep: int = 1) -> tuple[torch.Tensor, Sample]:
    """Times ``t`` uniform in ``min_timestep``..T (1..T by default), then standard noise on the sample
    space, for every row of ``x``."""
    if not 1 <= min_timestep <= diffusion.timesteps:
        raise ValueError(f"min_timestep must be in 1..{diffusion.timesteps}, got {min_timestep}")
    t = torch.randint(min_timestep, diffusion.timesteps + 1, (x.shape[0],), generator=generator,
                      device=generator.device).to(x.device)
    return t, diffusion.noise_like(x, mask, generator)


def noise_error(diffusion: GaussianDiffusion, predicted: Sample, target: Sample,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """``||predicted - target||^2 / d`` per row, over the free coordinates of every part."""
    return diffusion.sum_per_sample((predicted - target) ** 2, mask) / diffusion.dof(predicted, mask)


def denoising_loss(model: EpsModel, x: Sample, t: torch.Tensor, noise: Sample, cond: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, perturbation: Sample | None = None) -> torch.Tensor:
    """Per-row ``||eps_theta(x_t, t) - eps||^2 / d`` with ``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps``.

    ``perturbation`` is input perturbation (DDPM-IP, Ning et al. 2023; docs/design.md §1.8): the input is
    noised by ``eps + perturbation`` while the target stays ``eps``, so training also sees inputs a little
    off the forward process, as the sampler's own states are. A self-conditioned model trains its hinted
    second pass on half the rows and its first pass on the others (``hinted_for_training``)."""
    xt = model.diffusion.q_sample(x, t, noise if perturbation is None else noise + perturbation)
    hinted = hinted_for_training(t) if model.self_conditioned else None
    return noise_error(model.diffusion, model(xt, t, cond, mask, hinted), noise, mask)
