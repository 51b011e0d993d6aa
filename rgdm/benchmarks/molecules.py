"""``rgdm bench molecules``: RGDM's estimators against the peers on a molecule reward, from one shipped base, at
equal reward calls.

Every training method fine-tunes the same shipped model (default ``qm9-noh-pretrained``) through overrides of
the ``finetune-molecules`` preset, set to spend the budget's ``reward_calls`` and held to them by the trainer's
``RewardCounter`` limit (``reward.budget``): a method that asks for more stops there. Best-of-N spends the same
calls at sampling time (``N = reward_calls / eval_samples``). The guided samplers (greedy selection, SMC, SVDD)
spend theirs at sampling time, as many as they take: they are reported apart, and the table says so.

Measuring calls the reward directly and never charges a method:

* curves against the reward calls spent: the mean reward of fresh samples, invalid molecules at the floor,
  and their validity;
* the final table over ``eval_samples`` samples per method and seed (mean ± spread over seeds): mean reward,
  mean QED of the valid molecules, and the domain's ``quality_metrics`` (validity, molecule stability,
  uniqueness, novelty, diversity, closed-shell share, PoseBusters), with the oracles no reward sees: RDKit's
  reading of the positions alone, and EDM's distance-table rule where hydrogens exist.

A method whose mean reward rises over the base's while its validity, RDKit's validity or its diversity falls
is flagged in the ``hacking`` column.
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rgdm.algorithms.rgdm_model import BufferCorrector
from rgdm.batch import Batch
from rgdm.benchmarks.common import bound_work_folder, finetune, kept, mean, over_seeds, sample_with_reward
from rgdm.domains.base import pyplot, save_figure
from rgdm.domains.molecules.chemistry import valid_rdkit
from rgdm.domains.molecules.domain import MoleculeDomain
from rgdm.domains.molecules.rewards import qed
from rgdm.engine import LoadedModel, generate, load_config, load_trained
from rgdm.engine.builder import seeded_generator
from rgdm.rewards import RewardCounter
from rgdm.stopping import TrainingInterrupted

FINETUNE_PRESET = Path(__file__).resolve().parent.parent / "configs" / "finetune-molecules.yaml"


@dataclass(frozen=True)
class MoleculeTask:
    """The shipped base every method starts from, the reward, its temperature, and the reward of an invalid
    molecule (``floor``: 0 suits QED; a reward at most 0, such as ``xtb-strain``, needs one below its range)."""

    checkpoint: str = "qm9-noh-pretrained"
    reward: str = "qed"
    temperature: float = 0.02
    floor: float = 0.0


@dataclass(frozen=True)
class Budget:
    """What each method may spend and how it is measured; ``QUICK`` shrinks it so that every method runs in
    minutes on a CPU. ``posebusters``: PoseBusters checks the first that many samples (None: all; 0: none)."""

    reward_calls: int
    finetune_steps: int
    batch_size: int
    curve_points: int
    curve_samples: int
    eval_samples: int
    sampling_steps: int
    model_rounds: int
    model_sample_steps: int
    stepwise_batch: int
    stepwise_start: int
    ddpo_trajectories: int
    ddpo_sample_steps: int
    ddpo_minibatch: int
    candidates: int
    particles: int
    posebusters: int | None


#: 12,288 calls: the shipped ``qm9-edm-small-rgdm-qed`` recipe (3 rounds of 4096), at which DDPO was compared before.
FULL = Budget(reward_calls=12_288, finetune_steps=1500, batch_size=64, curve_points=6, curve_samples=200,
              eval_samples=1000, sampling_steps=100, model_rounds=3, model_sample_steps=100,
              stepwise_batch=64, stepwise_start=100, ddpo_trajectories=256, ddpo_sample_steps=100,
              ddpo_minibatch=256, candidates=8, particles=8, posebusters=None)
QUICK = Budget(reward_calls=128, finetune_steps=30, batch_size=16, curve_points=2, curve_samples=12, eval_samples=32,
               sampling_steps=20, model_rounds=2, model_sample_steps=20, stepwise_batch=8, stepwise_start=200,
               ddpo_trajectories=16, ddpo_sample_steps=10, ddpo_minibatch=48, candidates=4, particles=4,
               posebusters=4)

#: The base, sampled plainly: the reference of every row and the first point of every curve.
BASE = "pretrained"
#: Training-free methods that spend reward calls at sampling time, as many as they take (reported apart).
SAMPLING_TIME = ("rgdm-guided-sampling", "rgdm-smc", "svdd")
#: The final table's metrics, mean ± spread over seeds.
FINAL_METRICS = ("mean_reward", "mean_qed_valid", "validity", "molecule_stability", "edm_molecule_stability",
                 "uniqueness", "novelty", "diversity", "closed_shell", "posebusters_pass", "rdkit_validity",
                 "rdkit_agreement")
#: Falls that flag a method whose reward rose: each against the base, by more than the seeds' spread and this.
HACKING_SIGNS = ("validity", "rdkit_validity", "diversity")
TOLERANCE = 0.02
#: Checkpoints per fine-tune: a stopped benchmark loses at most this fraction of a run (DDPO at the full budget:
#: 95 updates, under two minutes of a CPU core).
CHECKPOINTS = 50


#: rgdm-model's KL anchor in the benchmark: the shipped recipe's.
MODEL_ANCHOR = 0.5


def training_methods(budget: Budget, timesteps: int, buffer_corrector: BufferCorrector | None = None,
                     anchor: float = MODEL_ANCHOR) -> dict[str, list[str]]:
    """Fine-tuning methods as overrides of the ``finetune-molecules`` preset, each set to spend
    ``reward_calls``: RGDM's estimators, then the peers.

    rgdm-data and cfg score that many data rows; rgdm-model (with the KL anchor ``anchor``) and rwr
    sample that many over their rounds, in ``model_sample_steps`` steps each followed by the
    ``buffer_corrector``'s, if any; rgdm-stepwise explores the transitions landing at
    ``t <= stepwise_start``, ``candidates`` calls each, for as many steps as the calls last on average (the
    budget stops it if it draws more); ddpo refreshes ``reward_calls / ddpo_trajectories`` times, one update per
    minibatch of (trajectory, step) pairs, at the learning rate of its earlier QM9 run.
    """
    calls = budget.reward_calls
    rounds = [f"algorithm.rounds={budget.model_rounds}", f"algorithm.buffer_size={calls // budget.model_rounds}",
              f"algorithm.sample_steps={budget.model_sample_steps}"]
    if buffer_corrector is not None:
        rounds += [f"algorithm.corrector.{key}={value}" for key, value in buffer_corrector.model_dump().items()
                   if value is not None]
    explored = budget.candidates * budget.stepwise_batch * (budget.stepwise_start + 1) / timesteps
    pairs = budget.ddpo_trajectories * (budget.ddpo_sample_steps - 1)
    ddpo_steps = calls // budget.ddpo_trajectories * math.ceil(pairs / budget.ddpo_minibatch)
    return {
        "rgdm-data": ["algorithm.name=rgdm-data", f"algorithm.scored_size={calls}"],
        "rgdm-model": ["algorithm.name=rgdm-model", *rounds, f"algorithm.anchor={anchor}"],
        "rgdm-stepwise": ["algorithm.name=rgdm-stepwise", f"train.batch_size={budget.stepwise_batch}",
                          f"algorithm.candidates={budget.candidates}",
                          f"algorithm.explore_start={budget.stepwise_start}", f"train.steps={int(calls / explored)}"],
        "ddpo": ["algorithm.name=ddpo", f"algorithm.trajectories={budget.ddpo_trajectories}",
                 f"algorithm.sample_steps={budget.ddpo_sample_steps}", f"algorithm.minibatch={budget.ddpo_minibatch}",
                 "algorithm.inner_epochs=1", f"train.steps={ddpo_steps}", "train.lr=1.0e-5"],
        "rwr": ["algorithm.name=rwr", *rounds],
        "cfg": ["algorithm.name=cfg", f"algorithm.scored_size={calls}"],
    }


#: Every method, in the tables' order: the base, the fine-tunes of ``training_methods``, best-of-N, then the
#: sampling-time methods.
TRAINING = ("rgdm-data", "rgdm-model", "rgdm-stepwise", "ddpo", "rwr", "cfg")
METHODS = (BASE, *TRAINING, "best-of-n", *SAMPLING_TIME)


@dataclass
class MethodRun:
    """One method, one seed: final metrics, what it spent, and its curve ``(reward calls, mean reward,
    validity)``."""

    metrics: dict[str, Any]
    reward_calls: int
    network_evaluations: int
    wall_s: float
    curve: list[tuple[int, float, float]]


class Measure:
    """Fresh samples of a model, scored and judged; never charged to a method's budget."""

    def __init__(self, task: MoleculeTask, budget: Budget, domain: MoleculeDomain) -> None:
        self.task, self.budget, self.domain = task, budget, domain
        self.scorer = domain.scorer(task.reward, floor=task.floor)

    def point(self, model: LoadedModel, seed: int, **generate_args: Any) -> tuple[float, float]:
        """Mean reward (invalid at the floor) and validity of ``curve_samples`` fresh samples. Every point of a
        seed starts from the same noise: the curve compares models, not draws, and a resumed run measures a
        point as the uninterrupted run did."""
        samples = generate(model, self.budget.curve_samples, seeded_generator(30_000 + seed),
                           steps=self.budget.sampling_steps, **generate_args)
        molecules = self.domain.decode(samples.x, samples.mask)
        validity = mean([valid_rdkit(m) is not None for m in molecules])
        return float(self.scorer(samples.x, samples.mask).values.mean()), validity

    def final(self, samples: Batch) -> dict[str, Any]:
        """The table's metrics of ``samples``: the domain's quality metrics, the mean reward with invalid
        molecules at the floor, and the mean QED of the valid ones."""
        metrics = self.domain.quality_metrics(samples, self.task.reward, self.task.temperature, seeded_generator(0),
                                              posebusters=self.budget.posebusters)
        # A point cloud's own stability is EDM's distance-table rule; a bond model reports the rule beside it.
        metrics.setdefault("edm_molecule_stability", metrics["molecule_stability"])
        scores = np.array(qed(self.domain.decode(samples.x, samples.mask)), dtype=float)
        valid_qed = scores[~np.isnan(scores)]
        return {**metrics, "mean_reward": float(self.scorer(samples.x, samples.mask).values.mean()),
                "mean_qed_valid": float(valid_qed.mean()) if len(valid_qed) else None}


def _finetune(measure: Measure, overrides: list[str], seed: int, run_dir: Path, base_point: tuple[int, float, float],
              progress: bool) -> MethodRun:
    task, budget = measure.task, measure.budget
    config = load_config(FINETUNE_PRESET, [
        f"init={task.checkpoint}", f"reward.name={task.reward}", f"reward.floor={task.floor}",
        f"reward.budget={budget.reward_calls}", f"train.seed={seed}", f"train.steps={budget.finetune_steps}",
        f"train.batch_size={budget.batch_size}", f"algorithm.temperature={task.temperature}", *overrides])
    every = max(1, config.train.steps // CHECKPOINTS)
    config = config.model_copy(update={"train": config.train.model_copy(update={"checkpoint_every": every})})
    run = finetune(config, run_dir, lambda model, args: measure.point(model, seed, **args),
                   max(1, config.train.steps // budget.curve_points), progress)
    generator = seeded_generator(10_000 + seed)
    samples = generate(run.model, budget.eval_samples, generator, steps=budget.sampling_steps, **run.generate_args)
    return MethodRun(measure.final(samples), run.reward_calls, run.network_evaluations, run.wall_s,
                     [base_point, *run.curve])


def _sample(measure: Measure, base: LoadedModel, name: str, seed: int) -> MethodRun:
    """The base sampled plainly, by best-of-N at the benchmark's calls, or by a guided sampler; a base run's
    curve is its single point at 0 calls, measured as the fine-tunes' points are."""
    task, budget = measure.task, measure.budget
    model = LoadedModel(base.domain, base.diffusion, base.net, base.meta)
    counter = RewardCounter(limit=budget.reward_calls if name == "best-of-n" else None)
    scorer = base.domain.scorer(task.reward, counter, floor=task.floor)
    generator = seeded_generator(10_000 + seed)
    start = time.perf_counter()
    if name == BASE:
        samples = generate(model, budget.eval_samples, generator, steps=budget.sampling_steps)
    else:
        samples = sample_with_reward(model, name, scorer, budget.eval_samples, generator, budget, task.temperature,
                                     budget.sampling_steps, max(1, budget.reward_calls // budget.eval_samples))
    wall = time.perf_counter() - start
    evaluations = model.eps_model.evaluations
    metrics = measure.final(samples)
    point = (0, *measure.point(model, seed)) if name == BASE else (
        counter.calls, metrics["mean_reward"], metrics["validity"])
    return MethodRun(metrics, counter.calls, evaluations, wall, [point])


def _summarise(runs: list[MethodRun], seeds: list[int], spent_at: str) -> dict[str, Any]:
    summary = {"calls_spent_at": spent_at, **over_seeds([run.metrics for run in runs], FINAL_METRICS)}
    return {**summary, "reward_calls": mean([r.reward_calls for r in runs]),
            "network_evaluations": mean([r.network_evaluations for r in runs]),
            "wall_s": mean([r.wall_s for r in runs]), "seeds": seeds, "per_seed": [asdict(run) for run in runs]}


def hacking(summary: dict[str, Any], base: dict[str, Any], samples: int) -> list[str]:
    """The falls (``HACKING_SIGNS``) that came with a rise of the mean reward over ``samples`` samples (all
    seeds'); a change counts beyond ``TOLERANCE``, the seeds' spread and ``1 / sqrt(samples)``, two standard
    errors of a mean of values in [0, 1]. Empty when the reward did not rise or nothing fell."""
    noise = max(TOLERANCE, 1 / math.sqrt(samples))

    def change(metric: str) -> float | None:
        if summary[metric] is None or base[metric] is None:
            return None
        delta = summary[metric] - base[metric]
        return delta if abs(delta) > max(noise, summary[f"{metric}_std"] + base[f"{metric}_std"]) else 0.0

    rise = change("mean_reward")
    if not rise or rise < 0:
        return []
    falls = {metric: change(metric) for metric in HACKING_SIGNS}
    return [f"{metric} {delta:+.3f}" for metric, delta in falls.items() if delta is not None and delta < 0]


def run_molecule_benchmark(task: MoleculeTask | None = None, quick: bool = False, seeds: int | None = None,
                           methods: list[str] | None = None, posebusters: bool = True, progress: bool = True,
                           work_dir: Path | None = None, reward_calls: int | None = None,
                           buffer_steps: int | None = None, buffer_corrector: BufferCorrector | None = None,
                           anchor: float = MODEL_ANCHOR, only_seed: int | None = None) -> dict[str, Any]:
    """Every method (or ``methods``, the base always with them) for every seed (or ``only_seed``), at the
    ``QUICK`` or ``FULL`` budget (with ``reward_calls`` instead of its own, for an expensive reward): the JSON
    of the benchmark.
    ``posebusters=False`` skips PoseBusters. The own-sample methods (rgdm-model, rwr) draw their buffers in
    ``buffer_steps`` steps instead of the budget's, each followed by the ``buffer_corrector``'s steps if one
    is given; the measures always sample plainly. ``anchor`` is rgdm-model's KL anchor weight.

    ``work_dir`` keeps every run: a finished (method, seed) is read back from its JSON, and a stopped
    fine-tune resumes from its newest checkpoint, so the same call continues a benchmark that a working
    stretch cut short. Without it the runs live in a temporary folder. ``only_seed`` runs that seed alone, so
    that processes may share a work folder, each with its own seed; a later call with every seed reads them back.
    """
    task = task or MoleculeTask()
    budget = QUICK if quick else FULL
    if not posebusters:
        budget = replace(budget, posebusters=0)
    if reward_calls is not None:
        if reward_calls < budget.ddpo_trajectories:
            raise ValueError(f"reward_calls must be at least {budget.ddpo_trajectories} (one DDPO refresh), "
                             f"got {reward_calls}")
        budget = replace(budget, reward_calls=reward_calls)
    if buffer_steps is not None:
        budget = replace(budget, model_sample_steps=buffer_steps)
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown molecule benchmark methods {unknown}; choose among {', '.join(METHODS)}")
    chosen = [name for name in METHODS if name == BASE or methods is None or name in methods]
    base = load_trained(task.checkpoint)
    if not isinstance(base.domain, MoleculeDomain):
        raise ValueError(f"{task.checkpoint} is a {base.domain.name} model; the molecule benchmark needs a molecule "
                         "model such as qm9-noh-pretrained")
    if not anchor >= 0:
        raise ValueError(f"anchor must be at least 0, got {anchor}")
    trainings = training_methods(budget, base.diffusion.timesteps, buffer_corrector, anchor)
    measure = Measure(task, budget, base.domain)
    if only_seed is not None and seeds is not None:
        raise ValueError(f"give seeds (a count) or only_seed (one seed), not both; got {seeds} and {only_seed}")
    if only_seed is not None and only_seed < 0:
        raise ValueError(f"only_seed must be at least 0, got {only_seed}")
    count = seeds if seeds is not None else (1 if quick else 3)
    seed_list = [only_seed] if only_seed is not None else list(range(count))
    runs: dict[str, list[MethodRun]] = {name: [] for name in chosen}
    with contextlib.ExitStack() as stack:
        settings = {"task": asdict(task), "budget": asdict(budget), "base_sha256": base.meta.get("sha256")}
        if buffer_corrector is not None:  # older folders lack these
            settings["buffer_corrector"] = buffer_corrector.model_dump()
        if anchor != MODEL_ANCHOR:
            settings["anchor"] = anchor
        folder = bound_work_folder(work_dir, settings, "molecule") if work_dir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rgdm-bench-molecules-")))

        def run(name: str, seed: int) -> MethodRun:
            if name in trainings:
                return _finetune(measure, trainings[name], seed, folder / f"{name}-seed{seed}",
                                 runs[BASE][-1].curve[0], progress)
            return _sample(measure, base, name, seed)

        for seed in seed_list:
            for name in chosen:
                try:
                    runs[name].append(_kept(folder / f"{name}-seed{seed}.json", functools.partial(run, name, seed)))
                except TrainingInterrupted as stop:
                    where = (f"finished runs and the newest checkpoint are kept in {work_dir}: run the same command "
                             "to continue") if work_dir is not None else "nothing is kept without --work-dir"
                    raise TrainingInterrupted(f"the molecule benchmark stopped at {name}, seed {seed}; {where}"
                                              ) from stop
    spent_at = {BASE: "none", "best-of-n": "sampling"} | dict.fromkeys(TRAINING, "training") | dict.fromkeys(
        SAMPLING_TIME, "sampling, unbudgeted")
    summaries = {name: _summarise(method_runs, seed_list, spent_at[name]) for name, method_runs in runs.items()}
    for name, summary in summaries.items():
        summary["hacking"] = [] if name == BASE else hacking(summary, summaries[BASE],
                                                             budget.eval_samples * len(seed_list))
    return {"task": asdict(task), "quick": quick, "budget": asdict(budget), "seeds": seed_list,
            "buffer_corrector": None if buffer_corrector is None else buffer_corrector.model_dump(), "anchor": anchor,
            "methods": summaries}


def _kept(path: Path, run: Callable[[], MethodRun]) -> MethodRun:
    recorded = kept(path, lambda: asdict(run()))
    return MethodRun(**{**recorded, "curve": [tuple(point) for point in recorded["curve"]]})


def _cell(summary: dict[str, Any], metric: str) -> str:
    value = summary[metric]
    return "–" if value is None else f"{value:.3f} ± {summary[f'{metric}_std']:.3f}"


def markdown_table(result: dict[str, Any]) -> str:
    """The final table (mean ± spread over seeds): the methods at equal reward calls, then the sampling-time
    methods, whose calls are their own."""
    task, budget, methods = result["task"], result["budget"], result["methods"]
    posebusters = {None: "on every valid molecule", 0: "off"}.get(
        budget["posebusters"], f"on the valid molecules among the first {budget['posebusters']} samples")
    header = ("| method | reward calls (spent at) | network evals | wall s | mean reward | QED (valid) | validity | "
              "mol. stab. | EDM rule | uniqueness | novelty | diversity | closed shell | PoseBusters | "
              "RDKit validity | RDKit agreement | hacking |")

    def rows(names: list[str]) -> list[str]:
        lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
        for name in names:
            m = methods[name]
            cells = " | ".join(_cell(m, metric) for metric in FINAL_METRICS)
            lines.append(f"| {name} | {m['reward_calls']:,.0f} ({m['calls_spent_at']}) | "
                         f"{m['network_evaluations']:,.0f} | {m['wall_s']:.1f} | {cells} | "
                         f"{', '.join(m['hacking']) or '–'} |")
        return lines

    equal = [name for name in methods if methods[name]["calls_spent_at"] != "sampling, unbudgeted"]
    sampling = [name for name in methods if name not in equal]
    lines = [f"`{task['checkpoint']}`, reward `{task['reward']}` (invalid molecules at {task['floor']}), "
             f"τ {task['temperature']}; {budget['eval_samples']} samples per method and seed with "
             f"{budget['sampling_steps']} sampling steps, seeds {result['seeds']}; PoseBusters {posebusters}. "
             "hacking: a fall beside a rising mean reward. rgdm-model's KL anchor: "
             f"{result.get('anchor', MODEL_ANCHOR)}.",
             *_buffer_sampler(result), "",
             f"At equal reward calls ({budget['reward_calls']:,} each; best-of-N spends them at sampling time):", "",
             *rows(equal)]
    if sampling:
        lines += ["", f"Sampling-time methods: their reward calls are spent at sampling time, as many as they take "
                      f"for {budget['eval_samples']} samples (not the budget above):", "", *rows(sampling)]
    return "\n".join(lines)


def _buffer_sampler(result: dict[str, Any]) -> list[str]:
    """The own-sample buffers' sampler, where it is not the measures' plain one."""
    corrector, steps = result.get("buffer_corrector"), result["budget"]["model_sample_steps"]
    if corrector is None:
        return []
    start = "" if corrector["start"] is None else f" landing at t ≤ {corrector['start']}"
    return [f"Own-sample buffers (rgdm-model, rwr): {steps} steps, those{start} each followed by "
            f"{corrector['steps']} Langevin corrector step(s) at snr {corrector['snr']}."]


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """Against reward calls (symmetric log scale, 0 = the base): mean reward with invalid molecules at the floor
    (left), and validity (right); training methods as curves, the others as single points. Each point is the
    mean over seeds of that point."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.get_cmap("tab20").colors
    for ax in axes:
        ax.set_prop_cycle(color=colours[::2] + colours[1::2])  # ten distinct hues, then their light shades
    for name, summary in result["methods"].items():
        curves = [run["curve"] for run in summary["per_seed"]]
        length = min(len(curve) for curve in curves)
        points = np.array([[curve[i] for curve in curves] for i in range(length)], dtype=float).mean(axis=1)
        for ax, column in zip(axes, (1, 2), strict=True):
            ax.plot(points[:, 0], points[:, column], "o" if length == 1 else ".-", label=name)
    task = result["task"]
    for ax, label in zip(axes, (f"mean {task['reward']} (invalid at {task['floor']})", "validity"), strict=True):
        ax.set(xscale="symlog", xlabel="reward calls", ylabel=label, title=f"{task['checkpoint']}: {label}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)
