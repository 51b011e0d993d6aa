"""Classifier guidance with a noise-aware regressor: the test-time gradient peer (docs/design.md §2).

Dhariwal & Nichol (2021) steer a fixed diffusion model with the gradient of a classifier trained
on *noisy* inputs. Here the classifier is a regressor ``f(x_t, t)`` of the reward: it is fitted by
``train_regressor`` on data noised by ``q(x_t | x_0)`` (so the reward itself needs no gradient, but
needs labels on data), and ``ClassifierGuidance`` shifts the noise prediction at every step,

    eps' = eps - scale * sqrt(1 - abar_t) * grad_x f(x_t, t),

which adds ``scale * grad f`` to the score, i.e. samples ``p_t(x) exp(scale * f(x, t))``. With
``scale = 1 / tau`` and ``f`` close to the reward this tilts towards the pay-off distribution
``p(x) exp(r / tau)`` (up to the approximation ``E[exp(r/tau) | x_t] ~ exp(f(x_t)/tau)``).

When the rewards of K targets are class probabilities, the guide can instead be Dhariwal & Nichol's
noise-aware *classifier*: K logits fitted by cross-entropy to the rewards as soft labels, guiding with
``grad log p(c | x_t)``, i.e. sampling ``p(x) p(c | x)^scale``. Log-probabilities keep their gradient
where ``p(c | x_t)`` is small, which is where a regressor of the probability itself is flat.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rgdm.batch import Batch
from rgdm.diffusion.process import GaussianDiffusion, sample_gradient
from rgdm.diffusion.sampling import StepContext, TransitionResult
from rgdm.io import load_training_state, save_training_state
from rgdm.stopping import StopRequests, TrainingInterrupted

OBJECTIVES = ("mse", "cross-entropy")


@dataclass
class RegressorFit:
    """What ``train_regressor`` did: every step's loss, and the fit's seconds over all its stretches."""

    losses: list[float]
    seconds: float


def train_regressor(
    regressor: nn.Module,
    diffusion: GaussianDiffusion,
    data: Batch,
    rewards: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    progress: bool = False,
    objective: str = "mse",
    state_folder: Path | None = None,
    run: dict[str, Any] | None = None,
    checkpoint_every: int = 500,
) -> RegressorFit:
    """Fit ``regressor(x_t, t / T, cond, mask)`` to the rewards of the clean rows; returns every step's loss and
    the fit's wall time.

    Each step draws ``batch_size`` rows of ``data`` uniformly (with ``data.cond`` as the condition, so
    targeted rewards train a targeted regressor), a uniform ``t`` in ``1..T`` and ``x_t ~ q(x_t | x_0)``.

    - ``mse``: ``rewards`` is ``(n,)`` and the output ``(batch,)`` regresses it as it is (not
      standardised, so the guidance scale stays in reward units).
    - ``cross-entropy``: ``rewards`` is ``(n, K)``, each row's non-negative rewards against K targets
      (class probabilities), normalised into soft labels for the ``(batch, K)`` logits. A row that no
      target rewards gets the uniform label.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown guide objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if len(rewards) != len(data):
        raise ValueError(f"got {len(rewards)} rewards for {len(data)} data rows")
    device = data.x.device
    rewards = rewards.to(device=device, dtype=data.x.dtype)
    if objective == "cross-entropy":
        if rewards.ndim != 2 or rewards.shape[1] < 2:
            raise ValueError(f"cross-entropy needs rewards of shape (rows, targets >= 2), got {tuple(rewards.shape)}")
        if bool((rewards < 0).any()):
            raise ValueError("cross-entropy needs non-negative rewards (class probabilities); use objective 'mse'")
        rewards = (rewards + 1e-6) / (rewards + 1e-6).sum(dim=1, keepdim=True)
    optimizer = torch.optim.Adam(regressor.parameters(), lr=lr)
    run = run or {}
    start, kept = (0, {}) if state_folder is None else load_training_state(
        state_folder, run, tuple(run), regressor, optimizer, generator)
    was_training = regressor.training
    regressor.train()
    losses: list[float] = kept.get("losses", [])
    clock = time.perf_counter() - kept.get("seconds", 0.0)  # the earlier stretches' time counts
    stops = StopRequests() if state_folder is not None else contextlib.nullcontext()
    with stops, tqdm(range(start, steps), desc="guide", disable=not progress, initial=start, total=steps) as bar:
        for step in bar:
            losses.append(_regressor_step(regressor, optimizer, diffusion, data, rewards, batch_size, generator,
                                          objective))
            if state_folder is None or step + 1 == steps:
                continue
            signal = stops.signal
            if signal is not None or (step + 1) % checkpoint_every == 0:
                save_training_state(state_folder, step + 1, run, regressor, optimizer, generator,
                                    extra={"losses": losses, "seconds": time.perf_counter() - clock})
            if signal is not None:
                raise TrainingInterrupted(f"stopped by signal {signal} at step {step + 1}; the guide's state is "
                                          f"saved in {state_folder}. Rerun the same command to continue")
    regressor.train(was_training)
    return RegressorFit(losses, time.perf_counter() - clock)


def _regressor_step(regressor: nn.Module, optimizer: torch.optim.Optimizer, diffusion: GaussianDiffusion,
                    data: Batch, rewards: torch.Tensor, batch_size: int, generator: torch.Generator,
                    objective: str) -> float:
    """One step of ``train_regressor``: a batch of noised rows, its loss, an optimiser step."""
    device = data.x.device
    index = torch.randint(len(data), (batch_size,), generator=generator, device=generator.device).to(device)
    batch = data.select(index)
    t = torch.randint(1, diffusion.timesteps + 1, (batch_size,), generator=generator,
                      device=generator.device).to(device)
    xt = diffusion.q_sample(batch.x, t, diffusion.noise_like(batch.x, batch.mask, generator))
    prediction = regressor(xt, t.to(xt.dtype) / diffusion.timesteps, batch.cond, batch.mask)
    if objective == "mse":
        loss = ((prediction - rewards[index]) ** 2).mean()
    else:
        loss = -(rewards[index] * torch.log_softmax(prediction, dim=-1)).sum(dim=-1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


class ClassifierGuidance:
    """A sampling transition: the reverse step rebuilt from the guide-shifted noise prediction.

    ``classes`` is None for a regressor guide (``grad f``), or the targets whose logits a classifier
    guide outputs, in order (``grad log p(c | x_t)`` for each row's target ``c``).
    ``evaluations`` counts guide evaluations (rows, each with a backward pass).
    """

    def __init__(self, regressor: nn.Module, scale: float, classes: list[int] | None = None) -> None:
        self.regressor = regressor
        self.scale = float(scale)
        self.classes = classes
        if classes is not None:  # target id -> its logit's column (-1: a target the classifier does not know)
            self.columns = torch.full((max(classes) + 1,), -1, dtype=torch.long)
            self.columns[torch.as_tensor(classes)] = torch.arange(len(classes))
        self.evaluations = 0

    def _value(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
               mask: torch.Tensor | None) -> torch.Tensor:
        if self.classes is None:
            return self.regressor(x, t, cond, mask).sum()
        if cond is None:
            raise ValueError("a classifier guide steers towards a target; sample with --target")
        cond = cond.long()
        known = cond < len(self.columns)
        columns = torch.where(known, self.columns.to(cond.device)[cond.clamp(max=len(self.columns) - 1)], -1)
        if bool((columns < 0).any()):
            missing = sorted(set(cond[columns < 0].tolist()))
            raise ValueError(f"this classifier guide knows the targets {self.classes}, not {missing}")
        log_probs = torch.log_softmax(self.regressor(x, t, None, mask), dim=-1)
        return log_probs.gather(1, columns[:, None]).sum()

    def gradient(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
                 mask: torch.Tensor | None, diffusion: GaussianDiffusion) -> torch.Tensor:
        """``grad_x f(x_t, t)`` (or ``grad_x log p(c | x_t)``) per row, masked and projected onto the sample space."""
        self.evaluations += x.shape[0]
        grad = sample_gradient(lambda x: self._value(x, t.to(x.dtype) / diffusion.timesteps, cond, mask), x)
        return diffusion.onto_sample_space(grad, mask)

    def __call__(self, ctx: StepContext) -> TransitionResult:
        diffusion = ctx.model.diffusion
        grad = self.gradient(ctx.x, ctx.t, ctx.cond, ctx.mask, diffusion)
        eps = ctx.step.eps - self.scale * diffusion.sqrt_one_minus_alpha_bar(ctx.t, ctx.x) * grad
        step = diffusion.reverse_step(ctx.x, ctx.t, ctx.s, eps, ctx.eta)
        noise = diffusion.noise_like(ctx.x, ctx.mask, ctx.generator)
        return TransitionResult(step.mean + step.std * noise)

