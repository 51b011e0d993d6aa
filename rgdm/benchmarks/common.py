"""What the method benchmarks share (``rgdm bench toy``, ``rgdm bench molecules``): fine-tuning a shipped model
while measuring it against the reward calls spent, the training-free samplers that spend reward calls, and
the mean and spread over seeds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rgdm.algorithms import GreedySelection, SequentialMonteCarlo, best_of_n, svdd
from rgdm.batch import Batch
from rgdm.engine import LoadedModel, Trainer, generate
from rgdm.engine.config import RunConfig
from rgdm.engine.generate import Sampler
from rgdm.rewards import Scorer


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def spread(values: Sequence[float]) -> float:
    """The standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class FinetuneRun:
    """A finished fine-tune: its EMA model (and the arguments that sample it), the curve of measurements
    ``(reward calls, *point)``, and what it spent; ``wall_s`` excludes the measuring."""

    model: LoadedModel
    generate_args: dict[str, Any]
    curve: list[tuple[Any, ...]]
    reward_calls: int
    network_evaluations: int
    wall_s: float


def _trained_model(trainer: Trainer) -> tuple[LoadedModel, dict[str, Any]]:
    """The trainer's EMA model on its own domain (with any refitted sizes); a cfg model samples its top class."""
    meta = {"guidance_condition": getattr(trainer.algorithm, "top_class", None)}
    model = LoadedModel(trainer.domain, trainer.diffusion, trainer.ema.module, meta)
    return model, {"cfg_scale": 1.0} if trainer.config.algorithm.name == "cfg" else {}


def finetune(config: RunConfig, run_dir: Path, point: Callable[[LoadedModel, dict[str, Any]], tuple[Any, ...]],
             eval_every: int, progress: bool) -> FinetuneRun:
    """Fine-tune as ``config`` says, measuring ``point(model, generate_args)`` every ``eval_every`` steps, at the
    last step and where a reward budget stopped the run early; the clock stops while it measures."""
    trainer = Trainer(config, run_dir)
    curve: list[tuple[Any, ...]] = []
    measured = -1
    paused = 0.0

    def measure(trainer: Trainer, step: int) -> None:
        nonlocal paused, measured
        if step % eval_every and step != config.train.steps:
            return
        start = time.perf_counter()
        curve.append((trainer.counter.calls, *point(*_trained_model(trainer))))
        measured = step
        paused += time.perf_counter() - start

    start = time.perf_counter()
    trainer.fit(on_step=measure, progress=progress)
    wall = time.perf_counter() - start - paused
    if trainer.step != measured:
        measure(trainer, config.train.steps)
    context = trainer.context
    models = {id(m): m for m in (context.model, context.ema, context.reference) if m is not None}
    model, args = _trained_model(trainer)
    return FinetuneRun(model, args, curve, trainer.counter.calls, sum(m.evaluations for m in models.values()), wall)


class SamplerBudget(Protocol):
    """What a guided sampler takes from a benchmark's budget."""

    candidates: int
    particles: int


#: Guided samplers by name: greedy selection with exact and reused Tweedie values, SMC with both, SVDD. Each
#: draws its samples in one batch: SMC's are one population of ``n * particles`` particles.
GUIDED_SAMPLERS: dict[str, Callable[[Scorer, SamplerBudget, float], Sampler]] = {
    "rgdm-guided-sampling": lambda scorer, budget, tau: GreedySelection(scorer, budget.candidates, tau,
                                                                        value="exact"),
    "rgdm-guided-sampling-reuse": lambda scorer, budget, tau: GreedySelection(scorer, budget.candidates, tau,
                                                                              value="reuse"),
    "rgdm-smc": lambda scorer, budget, tau: SequentialMonteCarlo(scorer, budget.particles, tau, value="exact"),
    "rgdm-smc-reuse": lambda scorer, budget, tau: SequentialMonteCarlo(scorer, budget.particles, tau, value="reuse"),
    "svdd": lambda scorer, budget, tau: svdd(scorer, budget.candidates),
}


def sample_with_reward(model: LoadedModel, name: str, scorer: Scorer, n: int, generator: torch.Generator,
                       budget: SamplerBudget, temperature: float, steps: int, best_of: int) -> Batch:
    """``n`` samples of a training-free method that spends reward calls through ``scorer``: a guided sampler
    (``GUIDED_SAMPLERS``) or best-of-N with ``best_of`` candidates per sample."""
    if name == "best-of-n":
        return best_of_n(lambda count: generate(model, count, generator, steps=steps), scorer, n, best_of, generator)
    transition = GUIDED_SAMPLERS[name](scorer, budget, temperature)
    particles = transition.particles if isinstance(transition, SequentialMonteCarlo) else 1
    return generate(model, n, generator, transition=transition, batch_size=n * particles, steps=steps)
