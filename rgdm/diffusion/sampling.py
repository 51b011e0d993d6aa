"""DDPM and DDIM sampling with a pluggable transition (where reward guidance hooks in).

One loop serves both samplers: DDPM is every step with ``eta = 1``; DDIM is a strided subset of
steps, usually with ``eta = 0``. At each step a *transition* turns the reverse Gaussian into the next
state. The default draws from it; guided transitions (``rgdm.algorithms.guided_sampling``) choose
among candidates or nudge the draw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tensordict import TensorDict
from torch import nn
from tqdm.auto import tqdm

from rgdm.diffusion.process import GaussianDiffusion, ReverseStep, Sample, elements_per_row
from rgdm.diffusion.self_conditioning import is_self_conditioned

#: Input elements per network call on the CPU outside autograd: larger calls run in row chunks of about this
#: size. Activations of a bigger call spill out of the cache and every row gets slower. The K candidates of
#: guided sampling and step-wise values are such calls: chunked, a step-wise K = 8 step on 64 QM9 molecules
#: went from 1.51 s to 0.54 s (``rgdm bench perf``, ``benchmarks/results/perf-before.json`` and ``perf.json``).
CPU_CHUNK_ELEMENTS = 16384


class EpsModel:
    """A noise-prediction network bound to a diffusion, with masking, projection and an NFE count.

    The wrapped network is called as ``net(x_t, t / T, cond, mask)`` and predicts the noise (of every
    part, for a multi-part sample); the prediction is put on the sample space like the noise itself.
    A self-conditioned network runs twice at the same ``(x_t, t)``, the second pass hinted by the
    first's ``x_0`` estimate (``rgdm.diffusion.self_conditioning``).
    ``evaluations`` counts network evaluations per sample row, the budget unit of comparisons.
    Calls outside autograd on the CPU run in chunks of ``chunk_elements`` input elements (rows are
    independent, so the result is the same); calls that build a graph run whole, as distributed
    training expects one forward per backward.
    """

    def __init__(self, net: nn.Module, diffusion: GaussianDiffusion,
                 chunk_elements: int | None = CPU_CHUNK_ELEMENTS) -> None:
        self.net = net
        self.diffusion = diffusion
        self.chunk_elements = chunk_elements
        self.evaluations = 0
        self.self_conditioned = is_self_conditioned(net)

    def __call__(
        self,
        x: Sample,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        hinted: torch.Tensor | None = None,
    ) -> Sample:
        """``eps_theta(x_t, t)``; ``hinted`` picks the rows whose second pass gets the hint (all by
        default; the training loss hints half of them)."""
        scaled = t.to(x.dtype) / self.diffusion.timesteps
        if not self.self_conditioned:
            self.evaluations += x.shape[0]
            return self.diffusion.onto_sample_space(self._network(x, scaled, cond, mask), mask)
        self.evaluations += 2 * x.shape[0]
        training = torch.is_grad_enabled()  # the first pass of a training step runs whole, as the second does
        with torch.no_grad():
            first = self.diffusion.onto_sample_space(self._network(x, scaled, cond, mask, whole=training), mask)
            hint = self.diffusion.x0_from_eps(x, t, first)
        if hinted is None:
            hinted = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return self.diffusion.onto_sample_space(self._network(x, scaled, cond, mask, hint, hinted), mask)

    def _network(self, x: Sample, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor | None,
                 hint: Sample | None = None, hinted: torch.Tensor | None = None, whole: bool = False) -> Sample:
        """The network on every row: whole, or in cache-sized chunks (see ``CPU_CHUNK_ELEMENTS``)."""

        def call(rows: slice) -> Sample:
            part = (x[rows], t[rows], None if cond is None else cond[rows], None if mask is None else mask[rows])
            if hint is None:
                return self.net(*part)
            return self.net(*part, hint=hint[rows], hinted=hinted[rows])

        rows = x.shape[0]
        chunk = rows if self.chunk_elements is None else max(1, self.chunk_elements // max(1, elements_per_row(x)))
        if whole or chunk >= rows or x.device.type != "cpu" or torch.is_grad_enabled():
            return call(slice(None))
        return torch.cat([call(slice(start, start + chunk)) for start in range(0, rows, chunk)])


@dataclass
class StepContext:
    """Everything a transition may use to choose ``x_s`` from the reverse step at ``t``."""

    model: EpsModel
    x: Sample
    t: torch.Tensor
    s: torch.Tensor
    step: ReverseStep
    cond: torch.Tensor | None
    mask: torch.Tensor | None
    generator: torch.Generator | None
    eta: float = 1.0


@dataclass
class TransitionResult:
    """The next state, and optionally the network's noise prediction there (saves one evaluation)."""

    x: Sample
    eps: Sample | None = None


class Transition(Protocol):
    def __call__(self, ctx: StepContext) -> TransitionResult: ...


def ancestral_transition(ctx: StepContext) -> TransitionResult:
    """Draw ``x_s ~ N(mean, std^2 I)``: plain DDPM/DDIM sampling."""
    noise = ctx.model.diffusion.noise_like(ctx.x, ctx.mask, ctx.generator)
    return TransitionResult(ctx.step.mean + ctx.step.std * noise)


@dataclass
class LangevinCorrector:
    """A predictor-corrector sampler (Song et al., ICLR 2021): the ``inner`` transition's step to ``s``, then
    ``steps`` Langevin steps at the level ``s`` that move the state towards that level's marginal ``p_s``,
    which undoes some of the drift the sampler's own errors build up (exposure bias).

    A Langevin step is ``x <- x + delta * score + sqrt(2 delta) z`` with the score ``-eps(x, s) / sigma_s``
    (``sigma_s = sqrt(1 - abar_s)``) and the size ``delta = 2 (snr |z| / |score|)^2``, their signal-to-noise
    rule, with both norms averaged over the batch's rows (one row's ratio is heavy-tailed: a small
    sample's score can be near zero); ``z`` is the process's own noise (masked, projected, edges mirrored). Each step
    costs one network evaluation and is a Gaussian given the state it starts from; none runs at ``s = 0``,
    nor, with ``start``, after the steps landing above diffusion time ``start`` (the budget goes where the
    sample's structure is settled: for molecules, their connectivity below t = 500).
    Trajectories record the corrected states only, so policy gradients (DDPO) keep the plain transition.
    """

    snr: float
    steps: int = 1
    inner: Transition = ancestral_transition
    start: int | None = None

    def __post_init__(self) -> None:
        if not self.snr > 0 or self.steps < 1:
            raise ValueError(f"a corrector needs snr > 0 and at least one step, got snr {self.snr}, "
                             f"steps {self.steps}")
        if self.start is not None and self.start < 1:
            raise ValueError(f"a corrector's start is a diffusion time >= 1, got {self.start}")

    def corrects(self, level: int) -> bool:
        """Whether a step landing at diffusion time ``level`` is followed by corrector steps."""
        return level > 0 and (self.start is None or level <= self.start)

    def __call__(self, ctx: StepContext) -> TransitionResult:
        x = self.inner(ctx).x
        level = int(ctx.s[0])
        if not self.corrects(level):
            return TransitionResult(x)
        diffusion = ctx.model.diffusion
        sigma = float((1 - diffusion.schedule.alpha_bar[level]).sqrt())
        for _ in range(self.steps):
            eps = ctx.model(x, ctx.s, ctx.cond, ctx.mask)
            noise = diffusion.noise_like(x, ctx.mask, ctx.generator)
            ratio = (diffusion.sum_per_sample(noise**2, ctx.mask).sqrt().mean()
                     / diffusion.sum_per_sample(eps**2, ctx.mask).sqrt().mean())
            delta = float(2 * (self.snr * ratio * sigma) ** 2)
            x = x - (delta / sigma) * eps + math.sqrt(2 * delta) * noise
        return TransitionResult(x)


@dataclass
class Trajectory:
    """The states ``x_T, ..., x_0`` of a sampling run and their timesteps, for policy gradients."""

    states: list[Sample] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)


class SamplingInterrupted(RuntimeError):
    """Raised by ``sample`` when its ``interrupt`` callback asks it to stop (a training run's SIGTERM)."""


@dataclass
class SampleOutput:
    x0: Sample
    trajectory: Trajectory | None = None


def timestep_pairs(timesteps: int, steps: int | None = None) -> list[tuple[int, int]]:
    """``(t, s)`` pairs from ``T`` down to 0: every step, or ``steps`` evenly strided ones (DDIM)."""
    steps = timesteps if steps is None else steps
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be in 1..{timesteps}, got {steps}")
    grid = torch.linspace(timesteps, 0, steps + 1).round().long().tolist()
    return list(itertools.pairwise(grid))


@torch.no_grad()
def sample(
    model: EpsModel,
    shape: Sequence[int] | Sample,
    *,
    steps: int | None = None,
    eta: float = 1.0,
    cond: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    transition: Transition = ancestral_transition,
    record: bool = False,
    progress: bool = False,
    device: torch.device | str = "cpu",
    interrupt: Callable[[], bool] | None = None,
    start: int | None = None,
) -> SampleOutput:
    """Run the reverse process from pure noise to ``x_0``.

    ``shape`` is the shape of a single-tensor batch, or an all-zero sample to take the shape of
    (a domain's ``prior_batch(...).x``, which a multi-part sample needs). With ``start`` = ``t0``,
    ``shape`` is instead a noisy state at ``t0`` (``diffusion.q_sample``), denoised from there in ``steps``
    strides (SDEdit-style partial denoising).
    ``record=True`` keeps every state (DDPO re-scores the steps with ``gaussian_log_prob``);
    ``progress`` shows a progress bar over the steps. ``interrupt`` is asked before every step and
    ``SamplingInterrupted`` raised when it returns true, so a long buffer does not delay a stop.
    """
    diffusion = model.diffusion
    if start is None:
        template = shape if isinstance(shape, torch.Tensor | TensorDict) else torch.zeros(tuple(shape), device=device)
        x = diffusion.noise_like(template.to(device), mask, generator)
    elif isinstance(shape, torch.Tensor | TensorDict) and 1 <= start <= diffusion.timesteps:
        x = shape.to(device)
    else:
        raise ValueError(f"start needs a noisy state and a time in 1..{diffusion.timesteps}, got {start}")
    first = diffusion.timesteps if start is None else start
    trajectory = Trajectory(states=[x], timesteps=[first]) if record else None
    eps = None
    pairs = timestep_pairs(first, steps)
    for t_int, s_int in tqdm(pairs, desc="sampling", disable=not progress, leave=False):
        if interrupt is not None and interrupt():
            raise SamplingInterrupted(f"sampling stopped at t = {t_int}")
        t = torch.full((x.shape[0],), t_int, device=x.device, dtype=torch.long)
        s = torch.full_like(t, s_int)
        if eps is None:
            eps = model(x, t, cond, mask)
        step = diffusion.reverse_step(x, t, s, eps, eta)
        result = transition(StepContext(model, x, t, s, step, cond, mask, generator, eta))
        if trajectory is not None:
            trajectory.states.append(result.x)
            trajectory.timesteps.append(s_int)
        x, eps = result.x, result.eps
    return SampleOutput(x0=x, trajectory=trajectory)
