"""``rgdm bench toy``: every method against the exact pay-off distribution of a Gaussian mixture.

Two tasks, each from its own shipped pre-trained model: ``ring`` (8 equal modes, reward 1 inside
mode 0's cell, tau 0.3) and ``rare-mode`` (the same with mode 0 holding 1% of the data: exploration,
not just reweighting). Every method is measured on the same scale: mean reward and energy
distance of fresh samples to exact pay-off samples, the reward calls it spent (the shared
``RewardCounter``), its network evaluations, wall time without evaluation, and ``calls_to_90pct``:
the reward calls spent when its mean reward first reached 90% of the exact pay-off mean reward.
Measurement calls the reward function directly and never charges a method's budget.
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rgdm.algorithms import ClassifierGuidance
from rgdm.batch import Batch
from rgdm.benchmarks.common import GUIDED_SAMPLERS, finetune, mean, sample_with_reward, spread
from rgdm.domains.toy import ToyDomain
from rgdm.engine import LoadedModel, generate, load_config, load_trained, make_scorer
from rgdm.engine.builder import seeded_generator
from rgdm.engine.config import RewardConfig
from rgdm.engine.guide import train_guide
from rgdm.rewards import RewardCounter, Scorer

FINETUNE_PRESET = Path(__file__).resolve().parent.parent / "configs" / "finetune-toy.yaml"
BUDGET_MARKS = (1_000, 10_000, 100_000)


@dataclass(frozen=True)
class ToyTask:
    """A pay-off problem: a shipped pre-trained model, a reward on its domain, a temperature."""

    name: str
    checkpoint: str
    reward: str = "region"
    temperature: float = 0.3


TASKS = (ToyTask("ring", "toy-ring-pretrained"), ToyTask("rare-mode", "toy-rare-ring-pretrained"))


@dataclass(frozen=True)
class Budget:
    """What each method may spend; ``QUICK`` shrinks it so that every method runs in minutes."""

    finetune_steps: int
    eval_every: int
    eval_samples: int
    curve_steps: int
    data_scored: int
    model_rounds: int
    model_buffer: int
    stepwise_batch: int
    ddpo_trajectories: int
    candidates: int
    sampling_steps: int
    regressor_steps: int
    particles: int = 8


FULL = Budget(finetune_steps=3000, eval_every=500, eval_samples=2000, curve_steps=100, data_scored=8000,
              model_rounds=3, model_buffer=4096, stepwise_batch=64, ddpo_trajectories=256, candidates=8,
              sampling_steps=200, regressor_steps=2000)
QUICK = Budget(finetune_steps=600, eval_every=150, eval_samples=1000, curve_steps=50, data_scored=4000,
               model_rounds=2, model_buffer=2048, stepwise_batch=32, ddpo_trajectories=128, candidates=8,
               sampling_steps=100, regressor_steps=600)


def training_methods(budget: Budget) -> dict[str, list[str]]:
    """Fine-tuning methods as overrides of the ``finetune-toy`` preset (RGDM's estimators, then peers).

    ``rgdm-data@1k`` scores only 1000 data rows: the sample-efficient end of the same estimator.
    rgdm-model and rwr keep a constant learning rate so late rounds still fit their buffer;
    rgdm-stepwise uses the exploration radius 1.5 found by a sweep over {0.5, 1, 1.25, 1.5, 2} on
    the ring (README): with a 0/1 reward the Tweedie value under-tilts at small radii and
    over-tilts unclipped. ``rgdm-stepwise-reuse`` values its candidates with the reference's noise
    prediction at ``x_t`` instead of one evaluation per candidate.
    """
    rounds = [f"algorithm.rounds={budget.model_rounds}", f"algorithm.buffer_size={budget.model_buffer}",
              f"algorithm.sample_steps={budget.sampling_steps}", "train.lr_decay=none"]
    stepwise = ["algorithm.name=rgdm-stepwise", f"train.batch_size={budget.stepwise_batch}",
                "algorithm.center=reference", "algorithm.radius=1.5", "algorithm.value=exact"]
    return {
        "rgdm-data": ["algorithm.name=rgdm-data", f"algorithm.scored_size={budget.data_scored}"],
        "rgdm-data@1k": ["algorithm.name=rgdm-data", "algorithm.scored_size=1000"],
        "rgdm-model": ["algorithm.name=rgdm-model", *rounds],
        "rgdm-stepwise": stepwise,
        "rgdm-stepwise-reuse": [*stepwise, "algorithm.value=reuse"],
        "cfg": ["algorithm.name=cfg", f"algorithm.scored_size={budget.data_scored}", "algorithm.num_classes=2"],
        "rwr": ["algorithm.name=rwr", *rounds],
        "ddpo": ["algorithm.name=ddpo", f"algorithm.trajectories={budget.ddpo_trajectories}",
                 "algorithm.sample_steps=20", "train.lr=3.0e-4", "train.lr_decay=none"],
    }


@dataclass
class MethodRun:
    """One method, one seed: final metrics, budget spent and the reward-against-calls curve."""

    metrics: dict[str, Any]
    reward_calls: int
    network_evaluations: int
    calls_to_90pct: int | None
    wall_s: float
    curve: list[tuple[int, float, float]] = field(default_factory=list)


class Measure:
    """Evaluation on one task: fresh samples scored against the exact pay-off, never charged."""

    def __init__(self, task: ToyTask, domain: ToyDomain, budget: Budget, goal: float) -> None:
        self.task, self.domain, self.budget, self.goal = task, domain, budget, goal

    def final(self, model: LoadedModel, seed: int, **generate_args: Any) -> dict[str, Any]:
        generator = seeded_generator(10_000 + seed)
        samples = generate(model, self.budget.eval_samples, generator, **generate_args)
        return self.domain.evaluate(samples, self.task.reward, self.task.temperature, generator)

    def point(self, model: LoadedModel, generator: Any, **generate_args: Any) -> tuple[float, float]:
        """Mean reward and energy distance on the curve (DDIM ``curve_steps`` for speed, no floor)."""
        x = generate(model, self.budget.eval_samples, generator, steps=self.budget.curve_steps,
                     **generate_args).x
        reward = float(self.domain.rewards()[self.task.reward].fn(x.numpy()).mean())
        return reward, self.domain.payoff_distance(x, self.task.reward, self.task.temperature)

    def first_reaching(self, curve: list[tuple[int, float, float]]) -> int | None:
        return next((calls for calls, reward, _ in curve if reward >= self.goal), None)


def _finetune(measure: Measure, overrides: list[str], seed: int, run_dir: Path, progress: bool) -> MethodRun:
    task, budget = measure.task, measure.budget
    config = load_config(FINETUNE_PRESET, [
        f"init={task.checkpoint}", f"reward.name={task.reward}", f"train.seed={seed}",
        f"train.steps={budget.finetune_steps}", f"algorithm.temperature={task.temperature}",
        f"train.checkpoint_every={budget.finetune_steps}", *overrides])
    curve_generator = seeded_generator(30_000 + seed)
    run = finetune(config, run_dir, lambda model, args: measure.point(model, curve_generator, **args),
                   budget.eval_every, progress)
    return MethodRun(measure.final(run.model, seed, **run.generate_args), run.reward_calls, run.network_evaluations,
                     measure.first_reaching(run.curve), run.wall_s, run.curve)


def _sampling_method(measure: Measure, pretrained: LoadedModel, name: str, seed: int) -> MethodRun:
    """A training-free method: plain sampling, a guided sampler (greedy selection, SMC, SVDD), best-of-N or
    classifier guidance."""
    task, budget = measure.task, measure.budget
    model = LoadedModel(pretrained.domain, pretrained.diffusion, pretrained.net, pretrained.meta)
    counter = RewardCounter()
    scorer = make_scorer(RewardConfig(name=task.reward), model.domain, counter)
    generator = seeded_generator(10_000 + seed)
    start = time.perf_counter()
    extra_evaluations = 0
    if name == "pretrained":
        samples = generate(model, budget.eval_samples, generator)
    elif name in (*GUIDED_SAMPLERS, "best-of-n"):
        samples = sample_with_reward(model, name, scorer, budget.eval_samples, generator, budget, task.temperature,
                                     budget.sampling_steps, budget.candidates)
    else:
        samples, extra_evaluations = _classifier_guidance(measure, model, scorer, generator, seed)
    wall = time.perf_counter() - start
    metrics = model.domain.evaluate(samples, task.reward, task.temperature, generator)
    reached = counter.calls if metrics["mean_reward"] >= measure.goal else None
    return MethodRun(metrics, counter.calls, model.eps_model.evaluations + extra_evaluations, reached, wall,
                     [(counter.calls, metrics["mean_reward"], metrics["energy_distance"])])


def _classifier_guidance(measure: Measure, model: LoadedModel, scorer: Scorer, generator: Any, seed: int
                         ) -> tuple[Batch, int]:
    """Train a noise-aware regressor on scored data as ``rgdm train-guide`` does (its initial weights
    seeded, so the result does not depend on the methods run before), then sample guided by
    ``grad f / tau``."""
    budget = measure.budget
    regressor, _ = train_guide(model, scorer, None, rows=budget.data_scored, steps=budget.regressor_steps,
                               batch_size=256, lr=1e-3, seed=20_000 + seed, progress=False)
    guidance = ClassifierGuidance(regressor, scale=1.0 / measure.task.temperature)
    samples = generate(model, budget.eval_samples, generator, transition=guidance,
                       steps=budget.sampling_steps)
    return samples, guidance.evaluations + budget.regressor_steps * 256


SAMPLING_METHODS = ("pretrained", *GUIDED_SAMPLERS, "best-of-n", "classifier-guidance")


def _summarise(runs: list[MethodRun], seeds: list[int]) -> dict[str, Any]:
    def at_budget(run: MethodRun, calls: int) -> tuple[float, float] | None:
        within = [(reward, distance) for spent, reward, distance in run.curve if spent <= calls]
        return within[-1] if within else None

    reached = [r.calls_to_90pct for r in runs]
    budgets = {}
    for mark in BUDGET_MARKS:
        points = [at_budget(r, mark) for r in runs]
        budgets[str(mark)] = None if None in points else {
            "mean_reward": mean([p[0] for p in points]), "energy_distance": mean([p[1] for p in points])}
    return {
        "mean_reward": mean([r.metrics["mean_reward"] for r in runs]),
        "mean_reward_std": spread([r.metrics["mean_reward"] for r in runs]),
        "energy_distance": mean([r.metrics["energy_distance"] for r in runs]),
        "energy_distance_std": spread([r.metrics["energy_distance"] for r in runs]),
        "noise_floor": mean([r.metrics["noise_floor"] for r in runs]),
        "reward_calls": mean([r.reward_calls for r in runs]),
        "network_evaluations": mean([r.network_evaluations for r in runs]),
        "calls_to_90pct": None if None in reached else mean([float(c) for c in reached]),
        "wall_s": mean([r.wall_s for r in runs]),
        "seeds": seeds,
        "at_budget": budgets,
        "per_seed": [{"mean_reward": r.metrics["mean_reward"], "energy_distance": r.metrics["energy_distance"],
                      "mode_shares": r.metrics["mode_shares"], "reward_calls": r.reward_calls,
                      "calls_to_90pct": r.calls_to_90pct, "wall_s": r.wall_s, "curve": r.curve} for r in runs],
    }


def run_task(task: ToyTask, budget: Budget, seeds: list[int], progress: bool,
             methods: list[str] | None = None) -> dict[str, Any]:
    """Every method (or ``methods``) on one task for every seed."""
    pretrained = load_trained(task.checkpoint)
    reward = pretrained.domain.rewards()[task.reward]
    reference = pretrained.domain.exact_payoff(reward, task.temperature, 100_000, seeded_generator(123))
    target_reward = float(reward.fn(reference.numpy()).mean())
    measure = Measure(task, pretrained.domain, budget, 0.9 * target_reward)
    chosen = methods or [*SAMPLING_METHODS[:1], *training_methods(budget), *SAMPLING_METHODS[1:]]
    runs: dict[str, list[MethodRun]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="rgdm-bench-") as tmp:
        for seed in seeds:
            for name in chosen:
                if name in SAMPLING_METHODS:
                    run = _sampling_method(measure, pretrained, name, seed)
                else:
                    run = _finetune(measure, training_methods(budget)[name], seed, Path(tmp) / f"{name}-{seed}",
                                    progress)
                runs[name].append(run)
    floors = [run.metrics["noise_floor"] for method_runs in runs.values() for run in method_runs]
    return {
        "task": {"name": task.name, "checkpoint": task.checkpoint, "reward": task.reward,
                 "temperature": task.temperature, "eval_samples": budget.eval_samples},
        "target": {"mean_reward": target_reward, "noise_floor": statistics.fmean(floors)},
        "methods": {name: _summarise(method_runs, seeds) for name, method_runs in runs.items()},
    }


def _run_task_alone(task: ToyTask, budget: Budget, seeds: list[int], methods: list[str] | None) -> dict[str, Any]:
    """``run_task`` in a worker process with one thread (the tasks share the machine's cores)."""
    torch.set_num_threads(1)
    return run_task(task, budget, seeds, False, methods)


def run_toy_benchmark(quick: bool = False, seeds: int | None = None, progress: bool = True,
                      methods: list[str] | None = None, jobs: int = 1) -> dict[str, Any]:
    """Both tasks; the ring task's ``target`` and ``methods`` sit at the top, the rare mode beside.

    ``jobs = 2`` runs the two tasks side by side in worker processes of one thread each.
    """
    budget = QUICK if quick else FULL
    seed_list = list(range(seeds if seeds is not None else (1 if quick else 3)))
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_run_task_alone, task, budget, seed_list, methods) for task in TASKS]
            ring, rare = (future.result() for future in futures)
    else:
        ring, rare = (run_task(task, budget, seed_list, progress, methods) for task in TASKS)
    return {**ring, "quick": quick, "jobs": jobs, "budget": budget.__dict__, "rare_mode": rare}


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """Against reward calls, one column per task: mean reward (top; the exact pay-off's dashed), and the energy
    distance to exact pay-off samples (bottom; the noise floor dashed), where over-tilting shows as a miss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = {"ring": result, "rare-mode": result["rare_mode"]}
    fig, axes = plt.subplots(2, len(tasks), figsize=(7 * len(tasks), 10), squeeze=False)
    for column, (name, task) in enumerate(tasks.items()):
        for method, summary in task["methods"].items():
            curve = summary["per_seed"][0]["curve"]
            calls = [max(point[0], 1) for point in curve]
            style = "o" if len(curve) == 1 else ".-"
            for row, metric in enumerate((1, 2)):
                means = [statistics.fmean(run["curve"][i][metric] for run in summary["per_seed"])
                         for i in range(len(curve))]
                axes[row][column].plot(calls, means, style, label=method)
        axes[0][column].axhline(task["target"]["mean_reward"], color="k", ls="--", lw=1, label="exact pay-off")
        axes[1][column].axhline(task["target"]["noise_floor"], color="k", ls="--", lw=1, label="noise floor")
        axes[0][column].set(xscale="log", xlabel="reward calls", ylabel="mean reward", title=f"toy {name} (tau 0.3)")
        axes[1][column].set(xscale="log", yscale="log", xlabel="reward calls",
                            ylabel="energy distance to the exact pay-off", title=f"toy {name} (tau 0.3)")
        for row in range(2):
            axes[row][column].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(task: dict[str, Any]) -> str:
    """One task as a Markdown table (mean ± std over seeds), as quoted in the README."""
    target, info = task["target"], task["task"]
    seeds = next(iter(task["methods"].values()))["seeds"]
    lines = [
        f"Task `{info['name']}`: exact pay-off mean reward {target['mean_reward']:.3f}; energy-distance noise "
        f"floor {target['noise_floor']:.5f} ({info['eval_samples']} samples; seeds {seeds}).",
        "",
        "| method | mean reward | energy distance | reward calls | network evals | calls to 90% | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in task["methods"].items():
        reached = "never" if m["calls_to_90pct"] is None else f"{m['calls_to_90pct']:,.0f}"
        lines.append(
            f"| {name} | {m['mean_reward']:.3f} ± {m['mean_reward_std']:.3f} | "
            f"{m['energy_distance']:.4f} ± {m['energy_distance_std']:.4f} | {m['reward_calls']:,.0f} | "
            f"{m['network_evaluations']:,.0f} | {reached} | {m['wall_s']:.1f} |")
    return "\n".join(lines)
