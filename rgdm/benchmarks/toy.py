"""``rgdm bench toy``: every method against the exact pay-off distribution of a Gaussian mixture.

Each method starts from the same pre-trained ring model and is measured on the same scale:
mean reward and energy distance of its samples to exact pay-off samples (rejection sampling), the
reward calls it spent (the shared ``RewardCounter``), wall time, and ``calls_to_90pct``: the reward
calls spent when its evaluated mean reward first reached 90% of the exact pay-off mean reward.
Measurement uses the reward function directly and never charges the training budget.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rgdm.algorithms import CandidateSelection
from rgdm.domains.toy import ToyDomain, energy_distance
from rgdm.engine import LoadedModel, Trainer, generate, load_config, load_trained, make_scorer
from rgdm.engine.builder import seeded_generator
from rgdm.engine.config import RewardConfig
from rgdm.engine.registry import resolve_model
from rgdm.rewards import RewardCounter

PRETRAINED = "toy-ring-pretrained"


@dataclass(frozen=True)
class ToyTask:
    """A pay-off problem: a mixture, a reward on it, a temperature."""

    name: str
    mixture: str
    reward: str
    temperature: float
    checkpoint: str


@dataclass
class Budget:
    """What each method may spend; ``quick`` shrinks everything so every method runs in minutes."""

    finetune_steps: int
    eval_every: int
    eval_samples: int
    data_scored: int
    model_rounds: int
    model_buffer: int
    stepwise_batch: int
    guided_samples: int


FULL = Budget(finetune_steps=1500, eval_every=150, eval_samples=2000, data_scored=4000,
              model_rounds=4, model_buffer=2048, stepwise_batch=64, guided_samples=2000)
QUICK = Budget(finetune_steps=600, eval_every=150, eval_samples=1000, data_scored=2000,
               model_rounds=3, model_buffer=1024, stepwise_batch=32, guided_samples=1000)

RING = ToyTask("ring", "ring8", "region", 0.3, PRETRAINED)


@dataclass
class MethodRun:
    mean_reward: float
    energy_distance: float
    reward_calls: int
    calls_to_90pct: int | None
    wall_s: float
    curve: list[tuple[int, float]] = field(default_factory=list)


def _measure(domain: ToyDomain, samples: torch.Tensor, exact: torch.Tensor, reward_fn: Callable) -> tuple[float, float]:
    mean_reward = float(reward_fn(samples.numpy()).mean())
    return mean_reward, energy_distance(samples, exact)


def _first_reaching(curve: list[tuple[int, float]], goal: float) -> int | None:
    return next((calls for calls, value in curve if value >= goal), None)


def _finetune(task: ToyTask, algorithm: dict[str, Any], budget: Budget, seed: int, exact: torch.Tensor,
              goal: float, workdir: Path, progress: bool) -> MethodRun:
    overrides = [f"init={task.checkpoint}", f"reward.name={task.reward}", f"train.seed={seed}",
                 f"train.steps={budget.finetune_steps}", f"algorithm.temperature={task.temperature}",
                 f"train.checkpoint_every={budget.finetune_steps}"]
    overrides += [f"algorithm.{key}={value}" for key, value in algorithm.items()]
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "finetune-toy.yaml", overrides)
    trainer = Trainer(config, workdir / f"{algorithm['name']}-{seed}")
    reward_fn = trainer.domain.rewards()[task.reward].fn
    eval_generator = seeded_generator(10_000 + seed)
    curve: list[tuple[int, float]] = []
    wall = [0.0]
    started = [time.perf_counter()]

    def evaluate(trainer: Trainer, step: int) -> None:
        if step % budget.eval_every and step != config.train.steps:
            return
        wall[0] += time.perf_counter() - started[0]
        model = LoadedModel(trainer.domain, trainer.diffusion, trainer.ema.module, {})
        samples = generate(model, budget.eval_samples, eval_generator).x
        curve.append((trainer.counter.calls, float(reward_fn(samples.numpy()).mean())))
        started[0] = time.perf_counter()

    trainer.fit(on_step=evaluate, progress=progress)
    wall[0] += time.perf_counter() - started[0]
    model = LoadedModel(trainer.domain, trainer.diffusion, trainer.ema.module, {})
    mean_reward, distance = _measure(trainer.domain, generate(model, len(exact), eval_generator).x, exact,
                                     reward_fn)
    return MethodRun(mean_reward, distance, trainer.counter.calls, _first_reaching(curve, goal), wall[0], curve)


def _sampling_only(model: LoadedModel, task: ToyTask, guided: bool, budget: Budget, seed: int,
                   exact: torch.Tensor, goal: float) -> MethodRun:
    counter = RewardCounter()
    scorer = make_scorer(RewardConfig(name=task.reward), model.domain, counter)
    transition = CandidateSelection(scorer, candidates=8, temperature=task.temperature) if guided else None
    start = time.perf_counter()
    kwargs = {} if transition is None else {"transition": transition}
    samples = generate(model, len(exact), seeded_generator(20_000 + seed), **kwargs).x
    wall = time.perf_counter() - start
    reward_fn = model.domain.rewards()[task.reward].fn
    mean_reward, distance = _measure(model.domain, samples, exact, reward_fn)
    reached = counter.calls if mean_reward >= goal else None
    return MethodRun(mean_reward, distance, counter.calls, reached, wall, [(counter.calls, mean_reward)])


def _summarise(runs: list[MethodRun], seeds: list[int]) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    reached = [r.calls_to_90pct for r in runs]
    return {
        "mean_reward": mean([r.mean_reward for r in runs]),
        "mean_reward_std": spread([r.mean_reward for r in runs]),
        "energy_distance": mean([r.energy_distance for r in runs]),
        "energy_distance_std": spread([r.energy_distance for r in runs]),
        "reward_calls": mean([r.reward_calls for r in runs]),
        "calls_to_90pct": None if None in reached else mean([float(c) for c in reached]),
        "wall_s": mean([r.wall_s for r in runs]),
        "seeds": seeds,
        "per_seed": [{"mean_reward": r.mean_reward, "energy_distance": r.energy_distance,
                      "reward_calls": r.reward_calls, "calls_to_90pct": r.calls_to_90pct,
                      "wall_s": r.wall_s, "curve": r.curve} for r in runs],
    }


def rgdm_methods(budget: Budget) -> dict[str, dict[str, Any]]:
    """The RGDM fine-tuning variants and their settings under a budget."""
    return {
        "rgdm-data": {"name": "rgdm-data", "scored_size": budget.data_scored},
        "rgdm-model": {"name": "rgdm-model", "rounds": budget.model_rounds, "buffer_size": budget.model_buffer},
        "rgdm-stepwise": {"name": "rgdm-stepwise"},
    }


def run_toy_benchmark(quick: bool = False, seeds: int = 3, progress: bool = True,
                      task: ToyTask = RING) -> dict[str, Any]:
    """Run every method on ``task`` for ``seeds`` seeds; returns the JSON-ready result."""
    budget = QUICK if quick else FULL
    seed_list = list(range(seeds))
    pretrained = load_trained(resolve_model(task.checkpoint))
    domain = pretrained.domain
    reward = domain.rewards()[task.reward]
    exact_generator = seeded_generator(123)
    reference = domain.exact_payoff(reward, task.temperature, 20_000, exact_generator)
    target_reward = float(reward.fn(reference.numpy()).mean())
    floor_sets = [domain.exact_payoff(reward, task.temperature, 2 * budget.eval_samples, exact_generator)
                  for _ in seed_list]
    floor = statistics.fmean(energy_distance(s[: budget.eval_samples], s[budget.eval_samples:]) for s in floor_sets)
    goal = 0.9 * target_reward
    runs: dict[str, list[MethodRun]] = {}
    with tempfile.TemporaryDirectory(prefix="rgdm-bench-") as tmp:
        for seed, exact_set in zip(seed_list, floor_sets, strict=True):
            exact = exact_set[: budget.eval_samples]
            runs.setdefault("pretrained", []).append(
                _sampling_only(pretrained, task, False, budget, seed, exact, goal))
            for name, algorithm in rgdm_methods(budget).items():
                if name == "rgdm-stepwise":
                    algorithm = algorithm | {"__batch__": budget.stepwise_batch}
                runs.setdefault(name, []).append(
                    _finetune(task, algorithm, budget, seed, exact, goal, Path(tmp), progress))
            runs.setdefault("rgdm-guided-sampling", []).append(
                _sampling_only(pretrained, task, True, budget, seed, exact, goal))
    return {
        "task": {"name": task.name, "mixture": task.mixture, "reward": task.reward,
                 "temperature": task.temperature, "checkpoint": task.checkpoint, "quick": quick},
        "target": {"mean_reward": target_reward, "noise_floor": floor},
        "budget": budget.__dict__,
        "methods": {name: _summarise(method_runs, seed_list) for name, method_runs in runs.items()},
    }
