"""Sequential Monte Carlo with twisted potentials: guided sampling that targets the pay-off distribution.

DESIGN.md §1.4, after Feynman-Kac steering (Singhal et al., 2025) and the twisted diffusion sampler (Wu et
al., 2023). The proposal is the model's own reverse transition, so any black-box reward and any domain work
(multi-part samples included), and a step costs one network evaluation per particle, as unguided sampling
of as many rows does.

``n`` requested samples run as ``n * P`` particles (``P`` per sample, copy-major as ``repeat_rows`` lays them
out: particle ``p`` of sample ``i`` is row ``p * n + i``). The potential of a state is its tempered Tweedie
value ``v_t = abar_t r(x0_hat(x_t))``, and after the step ``t -> s`` a particle's weight is multiplied by
``exp((v_s - v_t) / tau)``. Along a path the increments telescope to ``exp((v_0 - v_T) / tau)``:

* the start is untwisted, ``v_T = 0``: the Tweedie estimate at pure noise is the network's least reliable,
  twisting there would add variance, not accuracy, and costs no reward calls this way. The first guided step
  therefore weighs by ``exp(v_s / tau)``, not by ``exp((v_s - v_T) / tau)``, whose telescoped product would
  leave a spurious ``exp(-v_T(x_T) / tau)`` in the target;
* at ``s = 0`` the state is the sample and ``abar_0 = 1``, so ``v_0 = r(x_0)``: the last weight uses the
  true reward.

So the weighted paths target ``p_ref(x_{0:T}) exp(r(x_0) / tau)``, whose ``x_0`` marginal is the pay-off
distribution ``p_ref(x_0) exp(r(x_0) / tau)``. The potentials in between only steer the particles (they change
the variance, never the target); so does ``start``, above which ``v = 0`` and no reward is called. The
tempering by the signal fraction ``abar_t`` is what keeps the steering sane: ``x0_hat`` carries the error of
the noise prediction times ``sqrt((1 - abar_t) / abar_t)``, so an untempered potential of an unbounded
reward (a coordinate of the sample) rewards the network's extrapolation at high noise, and the particles
follow it off the data. Tempered, a Lipschitz reward's potential moves by at most half its Lipschitz
constant times the prediction's error, at every noise level.

A population is every particle of the samples that share a node mask and a target (a sample's size and
condition cannot change by resampling): for unconditional fixed-size samples, all ``n * P`` particles. When
a population's effective sample size falls below ``ess_threshold`` times its size, it is resampled within
itself (systematic or residual resampling) and its weights reset. Its samples are then drawn from its final
weights by systematic resampling (importance resampling). Self-normalised SMC is exact as the population
grows, with a bias of order one over its size: pooling the samples' particles makes that ``1 / (n P)``
rather than ``1 / P``, at the price that the samples of one run are not independent draws.

``value=exact`` (the default) values a particle with the network's prediction at the particle itself, which
the next step needs anyway, so it costs no extra evaluation. ``value=reuse`` takes the prediction at the
particle's parent (``tweedie_estimate``): for SMC it saves nothing and is a cruder twist, offered for
comparison with greedy selection, where it does save ``K - 1`` evaluations a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from rgdm.algorithms.exploration import ValueEstimate, check_value_estimate, tweedie_estimate
from rgdm.algorithms.guided_sampling import check_start
from rgdm.batch import Batch
from rgdm.diffusion.process import Sample
from rgdm.diffusion.sampling import EpsModel, StepContext, TransitionResult, ancestral_transition, sample
from rgdm.rewards.scorer import Scorer

Resampling = Literal["systematic", "residual"]
RESAMPLINGS: tuple[Resampling, ...] = get_args(Resampling)


def _on(generator: torch.Generator | None, like: torch.Tensor) -> torch.device:
    """Where random numbers for ``like`` are drawn: the generator's device, else ``like``'s."""
    return generator.device if generator is not None else like.device


def systematic_resampling(weights: torch.Tensor, generator: torch.Generator | None = None,
                          draws: int | None = None) -> torch.Tensor:
    """``draws`` (default: as many as weights) ancestor indices from normalised ``weights`` of shape ``(P,)``:
    one uniform offset and evenly spaced points through the cumulative weights, so particle ``j`` is drawn
    ``floor`` or ``ceil`` of ``draws * w_j`` times (the lowest-variance of the standard schemes)."""
    draws = len(weights) if draws is None else draws
    offset = torch.rand(1, generator=generator, device=_on(generator, weights)).to(weights.device)
    points = (offset + torch.arange(draws, device=weights.device)) / draws
    cumulative = weights.cumsum(0)
    cumulative[-1] = 1.0  # rounding must not leave a point above the last bin
    return torch.searchsorted(cumulative, points).clamp(max=len(weights) - 1)


def residual_resampling(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``P`` ancestor indices from normalised ``weights`` of shape ``(P,)``: ``floor(P w_j)`` copies of particle
    ``j`` for certain, the remaining ones drawn multinomially from the residual weights ``P w_j - floor(P w_j)``
    (Liu and Chen, 1998)."""
    particles = len(weights)
    expected = weights * particles
    copies = expected.floor()
    remainder = particles - int(copies.sum().round())
    if remainder > 0:
        residual = (expected - copies).clamp(min=0).to(_on(generator, weights))
        drawn = torch.multinomial(residual, remainder, replacement=True, generator=generator).to(weights.device)
        copies = copies + torch.bincount(drawn, minlength=particles).to(copies.dtype)
    return torch.repeat_interleave(torch.arange(particles, device=weights.device), copies.long())


RESAMPLERS = {"systematic": systematic_resampling, "residual": residual_resampling}


def effective_size(weights: torch.Tensor) -> float:
    """Kish's effective sample size of normalised weights."""
    return float(1.0 / (weights**2).sum())


def populations_of(prior: Batch) -> list[torch.Tensor]:
    """The prior's rows grouped by node mask and target: the samples whose particles may swap places."""
    n = len(prior)
    keys = [torch.zeros(n, 1, dtype=torch.double)]  # doubles: a target may be a class or a value
    if prior.mask is not None:
        keys.append(prior.mask.double().cpu())
    if prior.cond is not None:
        keys.append(prior.cond.double().cpu().view(n, -1))
    _, group = torch.unique(torch.cat(keys, 1), dim=0, return_inverse=True)
    return [torch.nonzero(group == g).flatten() for g in range(int(group.max()) + 1)]


@dataclass
class SMCStats:
    """What the populations went through, summed over every ``draw``: the share of their guided steps before
    the last on which they were resampled, and their final effective sample size as a share of their size."""

    populations: int = 0
    population_steps: int = 0
    resamplings: int = 0
    final_ess_share: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"populations": self.populations,
                "resampled_share": self.resamplings / max(self.population_steps, 1),
                "final_ess_share": self.final_ess_share / max(self.populations, 1)}


@dataclass
class SequentialMonteCarlo:
    """Twisted SMC with ``particles`` particles per sample, tilting towards ``p_ref exp(r / temperature)``."""

    scorer: Scorer
    particles: int = 16
    temperature: float = 0.1
    value: ValueEstimate = "exact"
    ess_threshold: float = 0.5
    resampling: Resampling = "systematic"
    start: int | None = None
    stats: SMCStats = field(default_factory=SMCStats)

    def __post_init__(self) -> None:
        if self.particles < 1:
            raise ValueError(f"sequential Monte Carlo needs at least 1 particle a sample, got {self.particles}")
        if not self.temperature > 0:
            raise ValueError(f"the pay-off temperature must be positive for SMC weights, got {self.temperature}")
        if not 0 <= self.ess_threshold <= 1:
            raise ValueError(f"the ESS threshold is a share of the particles in 0..1, got {self.ess_threshold}")
        if self.resampling not in RESAMPLINGS:
            raise ValueError(f"resampling must be one of {', '.join(RESAMPLINGS)}, got {self.resampling!r}")
        check_value_estimate(self.value)
        check_start(self.start)

    def draw(self, model: EpsModel, prior: Batch, *, steps: int | None = None, eta: float = 1.0,
             generator: torch.Generator | None = None, progress: bool = False,
             device: torch.device | str = "cpu") -> Sample:
        """One sample per row of ``prior`` (its template, masks and targets), drawn from its population."""
        n = len(prior)
        groups = populations_of(prior)
        copies = torch.arange(self.particles)[:, None] * n
        population = prior.repeat(self.particles)
        run = PopulationRun(self, [(copies + rows[None]).flatten().to(device) for rows in groups], len(population),
                            device)
        x0 = sample(model, population.x, steps=steps, eta=eta, cond=population.cond, mask=population.mask,
                    generator=generator, transition=run, progress=progress, device=device).x0
        return x0[run.survivors([rows.to(device) for rows in groups], n, generator)]


class PopulationRun:
    """The ``Transition`` of one ``SequentialMonteCarlo.draw``: the rows of each population, and the particles'
    log-weights and values, which start at ``x_T`` uniform and untwisted (``v_T = 0``)."""

    def __init__(self, smc: SequentialMonteCarlo, populations: list[torch.Tensor], particles: int,
                 device: torch.device | str) -> None:
        self.smc = smc
        self.populations = populations
        self.log_weights = torch.zeros(particles, dtype=torch.float64, device=device)
        self.values = torch.zeros_like(self.log_weights)
        smc.stats.populations += len(populations)

    def __call__(self, ctx: StepContext) -> TransitionResult:
        smc, s = self.smc, int(ctx.s[0])
        x = ancestral_transition(ctx).x
        if smc.start is not None and s > smc.start:
            return TransitionResult(x)
        parent_eps = ctx.step.eps if smc.value == "reuse" else None
        x0_hat, eps = tweedie_estimate(ctx.model, x, ctx.s, ctx.cond, ctx.mask, parent_eps)
        signal = ctx.model.diffusion.schedule.alpha_bar[s].item()
        values = signal * smc.scorer(x0_hat, ctx.mask, ctx.cond).values.to(self.log_weights)
        self.log_weights += (values - self.values) / smc.temperature
        self.values = values
        if s == 0:
            return TransitionResult(x, eps)
        smc.stats.population_steps += len(self.populations)
        source = self._resample(ctx.generator)
        if source is None:
            return TransitionResult(x, eps)
        self.values = self.values[source]
        return TransitionResult(x[source], None if eps is None else eps[source])

    def _weights(self, rows: torch.Tensor) -> torch.Tensor:
        """The normalised weights of one population's particles."""
        return torch.softmax(self.log_weights[rows], dim=0)

    def _resample(self, generator: torch.Generator | None) -> torch.Tensor | None:
        """Resample the populations whose ESS fell below the threshold (their weights restart uniform): the row
        every particle now copies, or ``None`` when no population was resampled."""
        source = None
        for rows in self.populations:
            weights = self._weights(rows)
            if effective_size(weights) >= self.smc.ess_threshold * len(rows):
                continue
            if source is None:
                source = torch.arange(len(self.log_weights), device=rows.device)
            source[rows] = rows[RESAMPLERS[self.smc.resampling](weights, generator)]
            self.log_weights[rows] = 0.0
            self.smc.stats.resamplings += 1
        return source

    def survivors(self, requested: list[torch.Tensor], samples: int, generator: torch.Generator | None
                  ) -> torch.Tensor:
        """For every sample, a row of its population drawn by the final weights (systematic resampling of as
        many rows as the population has samples: importance resampling)."""
        chosen = torch.empty(samples, dtype=torch.long, device=requested[0].device)
        for rows, wanted in zip(self.populations, requested, strict=True):
            weights = self._weights(rows)
            self.smc.stats.final_ess_share += effective_size(weights) / len(rows)
            chosen[wanted] = rows[systematic_resampling(weights, generator, draws=len(wanted))]
        return chosen
