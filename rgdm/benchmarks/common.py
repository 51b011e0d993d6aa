"""What the method benchmarks share (``rgdm bench toy``, ``rgdm bench molecules``): fine-tuning a shipped model
while measuring it against the reward calls spent, the training-free samplers that spend reward calls, and
the mean and spread over seeds."""

from __future__ import annotations

import logging
import shutil
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
from rgdm.io import read_json, write_json
from rgdm.rewards import Scorer

log = logging.getLogger("rgdm.bench")


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def spread(values: Sequence[float]) -> float:
    """The standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def over_seeds(per_seed: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float | None]:
    """Each metric's mean over the seeds' metric dicts and its spread (``METRIC_std``); None where a seed lacks
    it (a model without hydrogens has no stability)."""
    summary: dict[str, float | None] = {}
    for metric in metrics:
        values = [seed.get(metric) for seed in per_seed]
        known = None not in values
        summary[metric] = mean(values) if known else None
        summary[f"{metric}_std"] = spread(values) if known else None
    return summary


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


#: A fine-tune's measured points, kept in its run folder so that a resumed run keeps them.
CURVE_FILE = "bench-curve.json"


def finetune(config: RunConfig, run_dir: Path, point: Callable[[LoadedModel, dict[str, Any]], tuple[Any, ...]],
             eval_every: int, progress: bool) -> FinetuneRun:
    """Fine-tune as ``config`` says, measuring ``point(model, generate_args)`` every ``eval_every`` steps, at the
    last step and where a reward budget stopped the run early; the clock stops while it measures.

    A ``run_dir`` holding a checkpoint is resumed from it (a folder without one starts again): the points
    measured up to the checkpoint come back from ``CURVE_FILE``, and those after it are measured again, so
    the ``point`` of a run that may be resumed must depend on the model alone. Network evaluations and wall
    time are the whole run's.
    """
    if run_dir.exists() and not (run_dir / "checkpoints").is_dir():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume
    resumed = run_dir.exists()
    trainer = Trainer.resume(run_dir) if resumed else Trainer(config, run_dir)
    saved = read_json(run_dir / CURVE_FILE)["points"] if (run_dir / CURVE_FILE).is_file() else []
    points = [p for p in saved if p["step"] <= trainer.step] if resumed else []

    def measure(trainer: Trainer, step: int, in_fit: bool = True) -> None:
        start = time.perf_counter()
        value = (trainer.counter.calls, *point(*_trained_model(trainer)))
        points.append({"step": step, "point": value, "seconds": time.perf_counter() - start, "in_fit": in_fit})
        write_json(run_dir / CURVE_FILE, {"points": points})

    trainer.fit(on_step=lambda trainer, step: None if step % eval_every and step != config.train.steps
                else measure(trainer, step), progress=progress)
    if not points or points[-1]["step"] != trainer.step:
        measure(trainer, trainer.step, in_fit=False)  # a budget stopped the run early
    measuring = sum(p["seconds"] for p in points if p["in_fit"])  # inside the trainer's clock
    model, args = _trained_model(trainer)
    return FinetuneRun(model, args, [tuple(p["point"]) for p in points], trainer.counter.calls,
                       trainer.network_evaluations(), trainer.wall_s - measuring)


def bound_work_folder(folder: Path, settings: dict[str, Any], suite: str, record: str = "benchmark.json") -> Path:
    """``folder``, bound to ``settings`` on first use (the JSON ``record``): a benchmark's runs of other settings
    are never mixed in. Settings name the base by its weights' digest: a base re-shipped under the same name is
    another base."""
    path = folder / record
    if path.is_file() and read_json(path) != settings:
        raise ValueError(f"{folder} holds a {suite} benchmark of other settings ({read_json(path)}); continue it "
                         "with those, or give another --work-dir")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)
    return folder


def kept(path: Path, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The finished run recorded at ``path`` (JSON), or ``run()`` recorded there."""
    if path.is_file():
        log.info("read back %s", path)
        return read_json(path)
    finished = run()
    write_json(path, finished)
    return finished


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
