"""``rgdm bench properties``: property targets by EDM's protocol, RGDM against conditional diffusion and
classifier guidance at equal label budgets, for QM9's six properties.

Per property and seed every method starts from one shipped base (default ``qm9-pretrained``, the bond
model with hydrogens, trained on ``train_a`` as the protocol asks) and may label the same ``labels``
training molecules with the rewarding predictor (``qm9-P-a``, trained on ``train_a``), each scored against
the same ``targets`` values of the property (its quantiles), so every method spends ``labels * targets``
reward calls:

* ``rgdm-data``: RGDM's pay-off weights ``exp(r(x, c) / tau)`` over the labelled rows, conditioned on ``c``;
* ``cfg``: the conditional-diffusion peer (the library's CFG fine-tune, sampled at scale 1, the plain
  conditional model): each ``c`` is paired with the labelled rows of its top reward class;
* ``classifier-guidance``: the base steered by a noise-aware regressor of ``r(x, c)`` fitted on the same
  rows, at scale ``1 / tau``, so it samples the same pay-off distribution ``p(x) exp(r(x, c) / tau)``;
* ``pretrained``: the base sampled plainly, blind to ``c``: what a method gains over it is conditioning;
* ``rgdm-smc``, the guided row, reported apart from the plainly sampled methods: the ``rgdm-data`` model (the
  same run) sampled by sequential Monte Carlo onto the same pay-off with ``particles`` per sample, scored by
  the rewarding predictor, so it spends reward calls at sampling time as well.

Each samples ``eval_samples`` molecules at targets ``c`` drawn from the data with atom counts from
``p(M | c)``, and the measuring predictor (``qm9-P-b``, trained on ``train_b``, never a reward) measures
``|f_b(x) - c|`` over all of them (EDM's number) and over the valid ones. EDM's reference rows (naive,
#Atoms and the L-bound, the measuring predictor's own error) are computed by this pipeline, and the table
sets EDM's published rows beside them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rgdm.algorithms import SequentialMonteCarlo
from rgdm.benchmarks.common import FinetuneRun, bound_work_folder, finetune, kept, mean, over_seeds
from rgdm.domains.base import pyplot, save_figure
from rgdm.domains.molecules.data import PROPERTIES
from rgdm.domains.molecules.domain import MoleculeDomain
from rgdm.engine import generate, load_config, load_trained
from rgdm.engine.builder import LoadedModel, retarget, seeded_generator
from rgdm.engine.config import RunConfig
from rgdm.engine.guide import META as GUIDE_META
from rgdm.engine.guide import Guide, load_guide, save_guide, train_guide
from rgdm.engine.precision import Precision
from rgdm.rewards import RewardCounter
from rgdm.stopping import TrainingInterrupted

FINETUNE_PRESET = Path(__file__).resolve().parent.parent / "configs" / "finetune-molecules.yaml"
log = logging.getLogger("rgdm.bench")
PROPERTY_ORDER = ("mu", "alpha", "Cv", "homo", "lumo", "gap")
UNITS = {"mu": "D", "alpha": "bohr³", "Cv": "cal/(mol K)", "homo": "meV", "lumo": "meV", "gap": "meV"}
METHODS = ("pretrained", "rgdm-data", "cfg", "classifier-guidance", "rgdm-smc")
#: The methods that spend reward calls while sampling: the table sets them apart.
GUIDED_METHODS = ("rgdm-smc",)
#: EDM's table (Hoogeboom et al., 2022, Table 3), MAE on QM9 in D, bohr^3, cal/(mol K) and meV.
PUBLISHED = {
    "naive (shuffled)": {"mu": 1.616, "alpha": 9.01, "Cv": 6.857, "homo": 645, "lumo": 1457, "gap": 1470},
    "#Atoms": {"mu": 1.053, "alpha": 3.86, "Cv": 1.971, "homo": 426, "lumo": 813, "gap": 866},
    "conditional EDM": {"mu": 1.111, "alpha": 2.76, "Cv": 1.101, "homo": 356, "lumo": 584, "gap": 655},
    "L-bound": {"mu": 0.043, "alpha": 0.10, "Cv": 0.040, "homo": 39, "lumo": 36, "gap": 64},
}
#: This pipeline's reference rows (``MoleculeDomain.edm_reference_errors``), named as EDM's.
REFERENCE_ROWS = {"naive (shuffled)": "edm_naive_mae", "#Atoms": "edm_atoms_mae", "L-bound": "edm_lbound_mae"}
#: The final table's metrics per method, mean ± spread over seeds.
FINAL_METRICS = ("property_mae", "property_mae_valid", "validity", "uniqueness")
#: What ``--curve-points`` measures along a fine-tune.
CURVE_METRICS = ("property_mae", "property_mae_valid", "validity")


@dataclass(frozen=True)
class PropertyTask:
    """The base every method starts from and the pay-off temperature of the scaled reward
    ``-|f_a(x) - c| / s`` (``s``: the property's standard deviation)."""

    checkpoint: str = "qm9-pretrained"
    temperature: float = 0.05


@dataclass(frozen=True)
class PropertyBudget:
    """What each method may spend per property and seed; ``QUICK`` runs every method in minutes on a CPU."""

    labels: int
    targets: int
    finetune_steps: int
    batch_size: int
    lr: float
    guide_steps: int
    eval_samples: int
    sampling_steps: int
    particles: int


FULL = PropertyBudget(labels=20_000, targets=16, finetune_steps=3000, batch_size=64, lr=3e-4, guide_steps=3000,
                      eval_samples=1000, sampling_steps=100, particles=4)
QUICK = PropertyBudget(labels=64, targets=4, finetune_steps=20, batch_size=16, lr=3e-4, guide_steps=20,
                       eval_samples=16, sampling_steps=10, particles=2)


def target_grid(domain: MoleculeDomain, count: int) -> list[float]:
    """``count`` values of the domain's property at the midpoints of equal-mass bins: the targets every
    method's labelled rows are scored against."""
    levels = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return [round(float(v), 6) for v in torch.quantile(domain.property_values.double(), levels)]


@dataclass(frozen=True)
class FinetuneExecution:
    """How the generator's fine-tunes run, not what they spend: bf16 autocast and ``torch.compile`` make a step
    about 1.85x faster on this CPU (``rgdm bench precision --compile`` on a finished HOMO fine-tune). The
    classifier guide's fit is not affected."""

    precision: Precision = "fp32"
    compile: bool = False

    def overrides(self) -> list[str]:
        return [f"train.precision={self.precision}", f"train.compile={str(self.compile).lower()}"]


class PropertyCase:
    """One property: the base on that property's domain, its targets, and the measure of samples."""

    def __init__(self, task: PropertyTask, budget: PropertyBudget, base: LoadedModel, name: str,
                 execution: FinetuneExecution = FinetuneExecution(), curve_points: int = 0,
                 cfg_classes: int | None = None, condition_lr_scale: float = 1.0) -> None:
        self.task, self.budget, self.name, self.execution = task, budget, name, execution
        self.curve_points, self.cfg_classes, self.condition_lr_scale = curve_points, cfg_classes, condition_lr_scale
        self.model = retarget(base, {"target_property": name})
        self.targets = target_grid(self.model.domain, budget.targets)

    def predictors(self) -> dict[str, Any]:
        """The property and its rewarding (``a``) and measuring (``b``) predictors by their weights' digests, which a
        work folder is bound to: runs rewarded or measured by other predictors are never read back."""
        return {"property": self.name,
                "predictors": {half: self.model.domain.predictor(half).meta.get("sha256") for half in ("a", "b")}}

    def measure(self, model: LoadedModel, seed: int, **generate_args: Any) -> tuple[dict[str, Any], float, int]:
        """``eval_samples`` samples at drawn ``(c, M)``, the same pairs for every method of a seed: their metrics,
        sampling seconds and network evaluations (the guide's included)."""
        before = model.eps_model.evaluations
        start = time.perf_counter()
        samples = generate(model, self.budget.eval_samples, seeded_generator(10_000 + seed), target="all",
                           steps=self.budget.sampling_steps, **generate_args)
        seconds = time.perf_counter() - start
        transition = generate_args.get("transition")
        evaluations = model.eps_model.evaluations - before + getattr(transition, "evaluations", 0)
        metrics = self.model.domain.quality_metrics(samples, None, None, seeded_generator(0), posebusters=0)
        return metrics, seconds, evaluations

    def finetune_config(self, algorithm: str, seed: int) -> RunConfig:
        budget = self.budget
        return load_config(FINETUNE_PRESET, [
            f"init={self.task.checkpoint}", f"domain.target_property={self.name}", "reward.name=property",
            f"algorithm.name={algorithm}", f"algorithm.temperature={self.task.temperature}",
            f"algorithm.scored_size={budget.labels}", f"algorithm.targets={self.targets}",
            f"train.steps={budget.finetune_steps}", f"train.batch_size={budget.batch_size}", f"train.lr={budget.lr}",
            f"train.seed={seed}", f"train.checkpoint_every={max(1, budget.finetune_steps // 20)}",
            *self.execution.overrides(),
            *([f"algorithm.num_classes={self.cfg_classes}"] if algorithm == "cfg" and self.cfg_classes else []),
            *([f"train.condition_lr_scale={self.condition_lr_scale}"] if self.condition_lr_scale != 1 else [])])

    def curve_steps(self) -> list[int]:
        """The fine-tune steps measured along the way: every ``finetune_steps // curve_points``, and the last."""
        steps = self.budget.finetune_steps
        if not self.curve_points:
            return [steps]
        every = steps // self.curve_points
        return sorted({*range(every, steps + 1, every), steps})

    def trained(self, algorithm: str, seed: int, run_dir: Path, progress: bool) -> FinetuneRun:
        """The method's fine-tune in ``run_dir``: trained, resumed, or (finished) loaded back; with
        ``curve_points``, measured (``measure``) at ``curve_steps`` on the final measure's samples (the clock
        stops)."""

        def point(model: LoadedModel, args: dict[str, Any]) -> tuple[Any, ...]:
            return self.measure(model, seed, **args) if self.curve_points else ()

        return finetune(self.finetune_config(algorithm, seed), run_dir, point, self.curve_steps()[0], progress)

    def fine_tuned(self, algorithm: str, seed: int, run_dir: Path, progress: bool) -> dict[str, Any]:
        """The fine-tune's final measure; with ``curve_points``, its curve, whose last point is that measure
        (the final model on the same samples), so it is not sampled twice."""
        run = self.trained(algorithm, seed, run_dir, progress)
        metrics, seconds, evaluations = run.curve[-1][1:] if self.curve_points else self.measure(
            run.model, seed, **run.generate_args)
        result = {"metrics": metrics, "reward_calls": run.reward_calls, "train_s": run.wall_s, "sample_s": seconds,
                  "network_evaluations": run.network_evaluations + evaluations}
        if self.curve_points:
            result["curve"] = [{"step": step, **{key: point[1][key] for key in CURVE_METRICS}}
                               for step, point in zip(self.curve_steps(), run.curve, strict=True)]
        return result

    def guided(self, seed: int, run_dir: Path, progress: bool) -> dict[str, Any]:
        """The ``rgdm-data`` model of ``run_dir`` sampled by SMC onto its pay-off: the training's costs plus the
        sampling's reward calls (``sampling_reward_calls``) and particles' network evaluations."""
        run = self.trained("rgdm-data", seed, run_dir, progress)
        counter = RewardCounter()
        smc = SequentialMonteCarlo(run.model.domain.scorer("property", counter), self.budget.particles,
                                   self.task.temperature)
        metrics, seconds, evaluations = self.measure(run.model, seed, transition=smc)
        return {"metrics": metrics, "reward_calls": run.reward_calls + counter.calls,
                "sampling_reward_calls": counter.calls, "train_s": run.wall_s, "sample_s": seconds,
                "network_evaluations": run.network_evaluations + evaluations}

    def classifier_guidance(self, seed: int, guide_dir: Path, progress: bool) -> dict[str, Any]:
        """The base steered by a guide fitted on the labelled rows; the guide is kept in ``guide_dir`` and read back
        from there, so a benchmark stopped while sampling does not fit it again, and one stopped while fitting
        continues the fit from its last checkpoint there."""
        if (guide_dir / GUIDE_META).is_file():
            guide = load_guide(guide_dir, self.model)
        else:
            counter = RewardCounter()
            regressor, meta = train_guide(self.model, self.model.domain.scorer("property", counter), self.targets,
                                          rows=self.budget.labels, steps=self.budget.guide_steps,
                                          batch_size=self.budget.batch_size, lr=1e-3, seed=seed, progress=progress,
                                          folder=guide_dir)
            meta["reward_calls"] = counter.calls
            save_guide(guide_dir, regressor, meta)
            guide = Guide(regressor, meta=meta)
        guidance = guide.transition(self.task.temperature)
        metrics, seconds, evaluations = self.measure(self.model, seed, transition=guidance)
        guide_evaluations = self.budget.guide_steps * self.budget.batch_size
        return {"metrics": metrics, "reward_calls": guide.meta["reward_calls"], "train_s": guide.meta["train_s"],
                "sample_s": seconds, "network_evaluations": evaluations + guide_evaluations}

    def plain(self, seed: int) -> dict[str, Any]:
        metrics, seconds, evaluations = self.measure(self.model, seed)
        return {"metrics": metrics, "reward_calls": 0, "train_s": 0.0, "sample_s": seconds,
                "network_evaluations": evaluations}

    def run(self, method: str, seed: int, folder: Path, progress: bool) -> dict[str, Any]:
        if method == "pretrained":
            return self.plain(seed)
        if method == "classifier-guidance":
            return self.classifier_guidance(seed, folder / f"{self.name}-{method}-seed{seed}", progress)
        if method == "rgdm-smc":
            return self.guided(seed, folder / f"{self.name}-rgdm-data-seed{seed}", progress)
        return self.fine_tuned(method, seed, folder / f"{self.name}-{method}-seed{seed}", progress)


def run_property_benchmark(task: PropertyTask | None = None, quick: bool = False, seeds: int | None = None,
                           properties: list[str] | None = None, methods: list[str] | None = None,
                           progress: bool = True, work_dir: Path | None = None,
                           train_steps: int | None = None, execution: FinetuneExecution = FinetuneExecution(),
                           curve_points: int = 0, cfg_classes: int | None = None,
                           condition_lr_scale: float = 1.0) -> dict[str, Any]:
    """Every method (or ``methods``) for every property (or ``properties``) and seed: the JSON of the
    benchmark. ``work_dir`` keeps every run, and the same call continues a stopped benchmark (finished runs
    are read back, a stopped fine-tune resumes from its checkpoint). ``train_steps`` replaces the budget's
    fine-tune and guide steps alike, so the trained methods still get equal compute. ``execution``: how the
    fine-tunes run (the same for every method). ``curve_points``: each fine-tune is also measured that many
    times along the way (MAE against steps), on the final measure's samples. ``cfg_classes``: the CFG peer
    pairs each target with the top ``1 / cfg_classes`` of its labelled rows (default: the domain's classes, 8
    for the shipped models; the number of targets pairs each row with about one target, its nearest).
    ``condition_lr_scale``: every fine-tune's conditioning path trains at that multiple of the rate
    (``train.condition_lr_scale``), the peer's as RGDM's."""
    task = task or PropertyTask()
    budget = QUICK if quick else FULL
    if train_steps is not None:
        if train_steps < 1:
            raise ValueError(f"train_steps must be at least 1, got {train_steps}")
        budget = replace(budget, finetune_steps=train_steps, guide_steps=train_steps)
    if cfg_classes is not None and cfg_classes < 1:
        raise ValueError(f"cfg_classes must be at least 1, got {cfg_classes}")
    if not condition_lr_scale > 0:
        raise ValueError(f"condition_lr_scale must be positive, got {condition_lr_scale}")
    if not 0 <= curve_points <= budget.finetune_steps:
        raise ValueError(f"curve_points must be in 0..{budget.finetune_steps} (the fine-tune steps), "
                         f"got {curve_points}")
    names = list(properties or PROPERTY_ORDER)
    for options, known, kind in ((names, PROPERTIES, "property"), (methods or [], METHODS, "method")):
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown {kind} {unknown}; choose among {', '.join(known)}")
    chosen = [method for method in METHODS if methods is None or method in methods]
    base = load_trained(task.checkpoint)
    if not isinstance(base.domain, MoleculeDomain):
        raise ValueError(f"{task.checkpoint} is a {base.domain.name} model; the property benchmark needs a QM9 model")
    base_split = base.meta["domain"].get("split", "train")
    if base_split != "train_a":
        log.warning("%s trained on %s, which holds the measuring predictor's half train_b: not EDM's protocol, "
                    "whose generator trains on train_a only", task.checkpoint, base_split)
    seed_list = list(range(seeds if seeds is not None else (1 if quick else 3)))
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        settings = {"task": asdict(task), "budget": asdict(budget), "base_sha256": base.meta.get("sha256")}
        optional = {"execution": asdict(execution) if execution != FinetuneExecution() else None,
                    "curve_points": curve_points or None, "cfg_classes": cfg_classes,
                    "condition_lr_scale": condition_lr_scale if condition_lr_scale != 1 else None}
        settings |= {key: value for key, value in optional.items() if value is not None}  # older folders lack them
        folder = bound_work_folder(work_dir, settings, "property") if work_dir is not None else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="rgdm-bench-properties-")))
        for name in names:
            case = PropertyCase(task, budget, base, name, execution, curve_points, cfg_classes, condition_lr_scale)
            if work_dir is not None:
                bound_work_folder(folder, case.predictors(), "property", record=f"{name}-predictors.json")
            runs: dict[str, list[dict[str, Any]]] = {method: [] for method in chosen}
            for seed in seed_list:
                for method in chosen:
                    try:
                        runs[method].append(kept(folder / f"{name}-{method}-seed{seed}.json",
                                                 functools.partial(case.run, method, seed, folder, progress)))
                    except TrainingInterrupted as stop:
                        raise TrainingInterrupted(f"the property benchmark stopped at {name}, {method}, seed {seed}; "
                                                  + (f"run the same command to continue from {work_dir}"
                                                     if work_dir is not None else "nothing is kept without --work-dir")
                                                  ) from stop
            reference = case.model.domain.edm_reference_errors
            results[name] = {"targets": case.targets, "unit": UNITS[name],
                             "reference": {row: reference[key] for row, key in REFERENCE_ROWS.items()},
                             "methods": {method: _summarise(method_runs, seed_list)
                                         for method, method_runs in runs.items()}}
    return {"task": asdict(task), "quick": quick, "budget": asdict(budget), "execution": asdict(execution),
            "curve_points": curve_points, "cfg_classes": cfg_classes or base.domain.num_targets,
            "condition_lr_scale": condition_lr_scale, "seeds": seed_list,
            "base_split": base_split, "edm_protocol": base_split == "train_a", "properties": results}


def _summarise(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    summary: dict[str, Any] = over_seeds([run["metrics"] for run in runs], FINAL_METRICS)
    for cost in ("reward_calls", "network_evaluations", "train_s", "sample_s"):
        summary[cost] = mean([run[cost] for run in runs])
    summary["sampling_reward_calls"] = mean([run.get("sampling_reward_calls", 0) for run in runs])
    if runs and all("curve" in run for run in runs):
        summary["curve"] = [{"step": points[0]["step"], **over_seeds(points, CURVE_METRICS)}
                            for points in zip(*(run["curve"] for run in runs), strict=True)]
    return {**summary, "seeds": seeds, "per_seed": runs}


def _number(value: float | None, spread_value: float | None = None) -> str:
    if value is None:
        return "–"
    digits = 0 if abs(value) >= 100 else 3 if abs(value) < 10 else 2
    text = f"{value:.{digits}f}"
    return text if not spread_value else f"{text} ± {spread_value:.{digits}f}"


def _execution_note(result: dict[str, Any]) -> str:
    """How the fine-tunes ran, where not in float32 and eager (reports that predate the key ran so)."""
    execution = FinetuneExecution(**result.get("execution", {}))
    if execution == FinetuneExecution():
        return ""
    return f" (fine-tunes in {execution.precision}{', compiled' if execution.compile else ''})"


def _condition_rate_note(result: dict[str, Any]) -> str:
    """The conditioning path's rate, where not the rest's (reports that predate the key trained it so)."""
    scale = result.get("condition_lr_scale", 1.0)
    return "" if scale == 1 else f"conditioning paths at {scale:g}× the rate; "


def _peer_note(result: dict[str, Any]) -> str:
    """Which rows the CFG peer pairs with each target (reports that predate the key do not say)."""
    classes = result.get("cfg_classes")
    return f"CFG pairs each target with the top 1/{classes} of its rows; " if classes else ""


def markdown_table(result: dict[str, Any]) -> str:
    """MAE per property (columns) and method (rows): this run's methods over all samples (EDM's measure),
    this pipeline's reference rows, then EDM's published rows; and the costs and validity per method."""
    names = list(result["properties"])
    task, budget = result["task"], result["budget"]
    header = "| MAE | " + " | ".join(names) + " |"
    lines = [f"`{task['checkpoint']}`, τ {task['temperature']}; {budget['labels']:,} labelled molecules × "
             f"{budget['targets']} targets per method, {budget['finetune_steps']:,} fine-tune or guide steps of "
             f"batch {budget['batch_size']}{_execution_note(result)}; "
             f"{_condition_rate_note(result)}{_peer_note(result)}"
             f"{budget['eval_samples']} samples per method, "
             f"property and seed at {budget['sampling_steps']} steps, seeds {result['seeds']}; MAE by the measuring "
             "predictor over all samples (EDM's measure).", "",
             f"The base trained on `{result['base_split']}`: " + (
                 "EDM's protocol (the measuring predictor's half `train_b` unseen)." if result["edm_protocol"] else
                 "**not EDM's protocol**, since that holds the measuring predictor's half `train_b`."),
             "", header, "|" + "---|" * (len(names) + 1)]
    methods = list(next(iter(result["properties"].values()))["methods"]) if names else []
    for method in methods:
        cells = [_number(result["properties"][n]["methods"][method]["property_mae"],
                         result["properties"][n]["methods"][method]["property_mae_std"]) for n in names]
        label = f"{method} (guided sampling: reward calls while sampling)" if method in GUIDED_METHODS else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for row in REFERENCE_ROWS:
        lines.append(f"| {row}, this pipeline | " + " | ".join(_number(result["properties"][n]["reference"][row])
                                                             for n in names) + " |")
    for row, values in PUBLISHED.items():
        lines.append(f"| {row}, EDM's table | " + " | ".join(_number(values[n]) for n in names) + " |")
    lines += ["", "| property | method | MAE of the valid | validity | uniqueness | reward calls | of them while "
                  "sampling | network evals | train s | sample s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        for method, m in result["properties"][n]["methods"].items():
            lines.append(f"| {n} | {method} | {_number(m['property_mae_valid'], m['property_mae_valid_std'])} | "
                         f"{_number(m['validity'], m['validity_std'])} | {_number(m['uniqueness'])} | "
                         f"{m['reward_calls']:,.0f} | {m.get('sampling_reward_calls', 0):,.0f} | "
                         f"{m['network_evaluations']:,.0f} | {m['train_s']:.0f} | {m['sample_s']:.0f} |")
    return "\n".join(lines + _curve_table(result))


def _curve_table(result: dict[str, Any]) -> list[str]:
    """MAE over all samples along each fine-tune measured with ``curve_points`` (none without)."""
    curves = [(n, method, m["curve"]) for n, entry in result["properties"].items()
              for method, m in entry["methods"].items() if "curve" in m]
    if not curves:
        return []
    steps = [point["step"] for point in curves[0][2]]
    lines = ["", "MAE over all samples along the fine-tunes (the final measure's samples):", "",
             "| property | method | " + " | ".join(f"step {step:,}" for step in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for name, method, curve in curves:
        lines.append(f"| {name} | {method} | " + " | ".join(_number(point["property_mae"], point["property_mae_std"])
                                                           for point in curve) + " |")
    return lines


def plot_errors(result: dict[str, Any], path: Path) -> Path:
    """One panel per property: this run's MAE per method (bars, with the seeds' spread; guided sampling
    hatched), this pipeline's #Atoms and L-bound (dashed), and EDM's published conditional EDM (dotted)."""
    plt = pyplot()
    names = list(result["properties"])
    columns = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        entry = result["properties"][name]
        methods = list(entry["methods"])
        heights = [entry["methods"][m]["property_mae"] or np.nan for m in methods]
        errors = [entry["methods"][m]["property_mae_std"] or 0.0 for m in methods]
        ax.bar(range(len(methods)), heights, yerr=errors, color=[f"C{i}" for i in range(len(methods))],
               hatch=["//" if m in GUIDED_METHODS else "" for m in methods])
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.axhline(entry["reference"]["#Atoms"], ls="--", color="grey", label="#Atoms (this pipeline)")
        ax.axhline(entry["reference"]["L-bound"], ls="--", color="black", label="L-bound (this pipeline)")
        ax.axhline(PUBLISHED["conditional EDM"][name], ls=":", color="red", label="conditional EDM (published)")
        ax.set(title=name, ylabel="MAE")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(result: dict[str, Any], path: Path) -> Path | None:
    """One panel per property with curves: each fine-tune's MAE against its steps (the seeds' spread shaded),
    beside this pipeline's #Atoms (dashed); None when no fine-tune was measured along the way."""
    names = [n for n, entry in result["properties"].items() if any("curve" in m for m in entry["methods"].values())]
    if not names:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=True):
        entry = result["properties"][name]
        for index, (method, m) in enumerate(entry["methods"].items()):
            if "curve" not in m:
                continue
            steps = np.array([point["step"] for point in m["curve"]])
            mae = np.array([point["property_mae"] for point in m["curve"]], dtype=float)
            std = np.array([point["property_mae_std"] or 0.0 for point in m["curve"]], dtype=float)
            ax.plot(steps, mae, marker="o", color=f"C{index}", label=method)
            ax.fill_between(steps, mae - std, mae + std, color=f"C{index}", alpha=0.2)
        ax.axhline(entry["reference"]["#Atoms"], ls="--", color="grey", label="#Atoms (this pipeline)")
        ax.set(title=name, xlabel="fine-tune steps", ylabel=f"MAE ({entry['unit']})")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)

