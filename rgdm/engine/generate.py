"""Sampling a trained model, plainly or with reward guidance, in batches with a progress bar."""

from __future__ import annotations

from typing import Literal

import torch

from rgdm.algorithms import GradientStep, GreedySelection, GuidedEpsModel, SequentialMonteCarlo
from rgdm.batch import Batch
from rgdm.diffusion import LangevinCorrector, Transition, ancestral_transition, sample
from rgdm.domains.base import SupportsTargets
from rgdm.engine.builder import LoadedModel
from rgdm.engine.config import SampleConfig
from rgdm.engine.guide import Guide
from rgdm.rewards import Scorer

#: What ``make_transition`` returns: a step transition, or SMC, which runs populations of particles.
Sampler = Transition | SequentialMonteCarlo


def make_transition(config: SampleConfig, scorer: Scorer | None = None, guide: Guide | None = None) -> Sampler:
    """The sampler of ``config.guidance``: plain, greedy selection among ``candidates``, sequential Monte Carlo
    over ``particles`` per sample (both from ``guidance_start`` on, valued by ``value``), a reward gradient
    within ``radius``, or classifier guidance by a noise-aware ``guide`` at scale ``1 / temperature``; with
    ``corrector_snr``, each step (landing at or below ``corrector_start``) followed by ``corrector_steps``
    Langevin corrector steps.

    ``SampleConfig`` has checked that the guidance takes its options (and set ``value`` where it applies);
    ``scorer`` (the config's reward) and ``guide`` (loaded from ``config.guide``) are the objects it names."""
    transition = _guided_transition(config, scorer, guide)
    if config.corrector_snr is None or config.corrector_steps is None:
        return transition
    return LangevinCorrector(config.corrector_snr, config.corrector_steps, transition, config.corrector_start)


def _guided_transition(config: SampleConfig, scorer: Scorer | None, guide: Guide | None) -> Sampler:
    if config.guidance == "none":
        return ancestral_transition
    if config.guidance == "regressor":
        if guide is None:
            raise ValueError("guidance 'regressor' needs the loaded guide (rgdm.engine.guide.load_guide)")
        return guide.transition(config.temperature)
    if scorer is None:
        raise ValueError(f"guidance {config.guidance!r} needs the reward's scorer (make_scorer)")
    if config.guidance == "select":
        return GreedySelection(scorer, candidates=config.candidates, temperature=config.temperature,
                               start=config.guidance_start, value=config.value)
    if config.guidance == "smc":
        return SequentialMonteCarlo(scorer, particles=config.particles, temperature=config.temperature,
                                    start=config.guidance_start, value=config.value)
    return GradientStep(scorer, temperature=config.temperature, radius=config.radius)


def generate(
    model: LoadedModel,
    n: int,
    generator: torch.Generator,
    *,
    target: int | float | Literal["all"] | None = None,
    steps: int | None = None,
    eta: float = 1.0,
    transition: Sampler = ancestral_transition,
    cfg_scale: float | None = None,
    batch_size: int = 4096,
    device: str = "cpu",
    progress: bool = False,
) -> Batch:
    """``n`` samples (with masks and targets as the domain draws them), ``batch_size`` at a time.

    ``target="all"`` spreads the samples evenly over every class of a conditional model (sample ``i``
    aims at class ``i mod num_targets``); for a value domain (a property target) it draws each sample's
    target from the data, with its atom count from ``p(M | c)``, as EDM's protocol does. A float
    ``target`` asks a value domain for that value.

    ``cfg_scale`` samples a model fine-tuned with ``cfg`` under classifier-free guidance; its
    condition is ``target`` if given, else the top reward class recorded in the model.

    ``transition`` is a step transition, or ``SequentialMonteCarlo``, which samples each batch as its
    populations of particles: ``batch_size // particles`` samples at a time, so that it holds as many rows
    as unguided sampling does.
    """
    domain = model.domain
    num_targets = domain.num_targets if isinstance(domain, SupportsTargets) else 0
    values = isinstance(domain, SupportsTargets) and domain.target_kind == "value"
    if target == "all" and num_targets == 0 and not values:
        raise ValueError("target 'all' needs a conditional model; this one has no targets")
    if isinstance(target, float) and not values:
        raise ValueError(f"target {target} is a value, but this model's targets are classes 0..{num_targets - 1}")
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
        if condition == "all" and values:
            cond = domain.draw_target_values(size, generator)
        else:
            cond = _conditions(condition, start, size, num_targets)
        prior = domain.prior_batch(size, generator, cond).to(device)
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


def _conditions(condition: int | float | Literal["all"] | None, start: int, size: int, num_targets: int
                ) -> torch.Tensor | None:
    """The condition of samples ``start .. start + size``: one class or value, or every class in turn."""
    if condition is None:
        return None
    if condition == "all":
        return torch.arange(start, start + size) % num_targets
    return torch.full((size,), condition, dtype=torch.float32 if isinstance(condition, float) else torch.long)
