"""Sampling a trained model, plainly or with reward guidance, in batches with a progress bar."""

from __future__ import annotations

from typing import Literal

import torch

from rgdm.algorithms import GradientStep, GreedySelection, GuidedEpsModel, SequentialMonteCarlo
from rgdm.algorithms.rgdm import ValueEstimate
from rgdm.batch import Batch
from rgdm.diffusion import Transition, ancestral_transition, sample
from rgdm.domains.base import SupportsTargets
from rgdm.engine.builder import LoadedModel
from rgdm.engine.guide import Guide
from rgdm.rewards import Scorer

Guidance = Literal["none", "select", "smc", "gradient", "regressor"]
#: What ``make_transition`` returns: a step transition, or SMC, which runs populations of particles.
Sampler = Transition | SequentialMonteCarlo


def make_transition(guidance: Guidance, scorer: Scorer | None, temperature: float, candidates: int,
                    radius: float, guide: Guide | None = None, start: int | None = None, *,
                    particles: int = 16, value: ValueEstimate | None = None) -> Sampler:
    """The sampler of ``rgdm sample --guidance``: plain, greedy selection among ``candidates``, sequential
    Monte Carlo over ``particles`` per sample (both need ``scorer``), a reward gradient, or classifier
    guidance by a noise-aware ``guide`` at scale ``1 / tau``.

    ``start`` (selection and SMC) is the diffusion time below which the reward guides; ``value`` (selection
    and SMC) how candidates and particles are valued, ``exact`` by default (see their modules)."""
    if start is not None and guidance not in ("select", "smc"):
        raise ValueError(f"a guidance start applies to greedy candidate selection (select) and smc, not to "
                         f"{guidance!r}")
    if value is not None and guidance not in ("select", "smc"):
        raise ValueError(f"a value estimate applies to greedy candidate selection (select) and smc, not to "
                         f"{guidance!r}")
    if guidance == "none":
        return ancestral_transition
    if guidance == "regressor":
        if guide is None:
            raise ValueError("guidance 'regressor' needs a guide (--guide DIR, trained with rgdm train-guide)")
        return guide.transition(temperature)
    if scorer is None:
        raise ValueError(f"guidance {guidance!r} needs a reward (--reward NAME or FILE.py:FUNC)")
    if guidance == "select":
        return GreedySelection(scorer, candidates=candidates, temperature=temperature, start=start,
                               value=value or "exact")
    if guidance == "smc":
        return SequentialMonteCarlo(scorer, particles=particles, temperature=temperature, start=start,
                                    value=value or "exact")
    if guidance == "gradient":
        return GradientStep(scorer, temperature=temperature, radius=radius)
    raise ValueError(f"unknown guidance {guidance!r}; choose none, select, smc, gradient or regressor")


def generate(
    model: LoadedModel,
    n: int,
    generator: torch.Generator,
    *,
    target: int | Literal["all"] | None = None,
    steps: int | None = None,
    eta: float = 1.0,
    transition: Sampler = ancestral_transition,
    cfg_scale: float | None = None,
    batch_size: int = 4096,
    device: str = "cpu",
    progress: bool = False,
) -> Batch:
    """``n`` samples (with masks and targets as the domain draws them), ``batch_size`` at a time.

    ``target="all"`` spreads the samples evenly over every target of a conditional model (sample
    ``i`` aims at target ``i mod num_targets``), as a property-target evaluation needs.

    ``cfg_scale`` samples a model fine-tuned with ``cfg`` under classifier-free guidance; its
    condition is ``target`` if given, else the top reward class recorded in the model.

    ``transition`` is a step transition, or ``SequentialMonteCarlo``, which samples each batch as its
    populations of particles: ``batch_size // particles`` samples at a time, so that it holds as many rows
    as unguided sampling does.
    """
    num_targets = model.domain.num_targets if isinstance(model.domain, SupportsTargets) else 0
    if target == "all" and num_targets == 0:
        raise ValueError("target 'all' needs a conditional model; this one has no targets")
    if isinstance(target, int) and not 0 <= target < num_targets:
        raise ValueError(f"target {target} is out of range 0..{num_targets - 1}")
    eps_model, condition = model.eps_model, target
    if cfg_scale is not None:
        condition = model.meta.get("guidance_condition") if target is None else target
        if condition is None:
            raise ValueError("cfg_scale needs a model fine-tuned with the cfg algorithm, or a --target")
        eps_model = GuidedEpsModel(model.eps_model, cfg_scale, null_token=num_targets)
    if isinstance(transition, SequentialMonteCarlo):
        batch_size = max(1, batch_size // transition.particles)
    parts = []
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        cond = _conditions(condition, start, size, num_targets)
        prior = model.domain.prior_batch(size, generator, cond).to(device)
        if isinstance(transition, SequentialMonteCarlo):
            x = transition.draw(eps_model, prior, steps=steps, eta=eta, generator=generator, progress=progress,
                                device=device)
        else:
            x = sample(eps_model, prior.x, steps=steps, eta=eta, cond=prior.cond, mask=prior.mask,
                       generator=generator, transition=transition, progress=progress, device=device).x0
        # A reward class is a condition of the network, not a target of the samples.
        targets = None if target is None else cond
        parts.append(Batch(x.cpu(), None if prior.mask is None else prior.mask.cpu(), targets))
    return Batch(torch.cat([p.x for p in parts]),
                 None if parts[0].mask is None else torch.cat([p.mask for p in parts]),
                 None if parts[0].cond is None else torch.cat([p.cond for p in parts]))


def _conditions(condition: int | Literal["all"] | None, start: int, size: int, num_targets: int
                ) -> torch.Tensor | None:
    """The condition of samples ``start .. start + size``: one class, or every target in turn."""
    if condition is None:
        return None
    if condition == "all":
        return torch.arange(start, start + size) % num_targets
    return torch.full((size,), condition, dtype=torch.long)
