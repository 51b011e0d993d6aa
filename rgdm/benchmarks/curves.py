"""Quality curves of a model: against training time (a run's checkpoints) and against sampling steps.

``learning_curve`` samples the EMA weights of every checkpoint a run kept and evaluates them with the
domain's own metrics, next to the training wall time recorded in the checkpoint; a JSON written before
is extended, so the curve can follow a run across working stretches. ``steps_curve`` evaluates one
model at several numbers of sampling steps (network evaluations per sample) over seeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rgdm.diffusion import LangevinCorrector, ancestral_transition
from rgdm.domains import build_domain
from rgdm.engine.builder import LoadedModel, load_trained, make_diffusion, seeded_generator
from rgdm.engine.checkpoint import checkpoint_paths, read_checkpoint
from rgdm.engine.config import RunConfig, load_config
from rgdm.engine.generate import generate
from rgdm.io import read_json

#: The metrics the plots show, where the domain reports them.
PLOTTED = ("validity", "fragmented", "molecule_stability", "atom_stability", "uniqueness", "mean_reward")
EMA_PREFIX = "ema.module."
RAW_PREFIX = "model."


def sample_metrics(model: LoadedModel, n: int, steps: int, seed: int, reward: str | None = None,
                   corrector: LangevinCorrector | None = None) -> dict[str, Any]:
    """Sample ``n`` with ``steps`` sampling steps (each followed by the ``corrector``'s, where given) and seed
    ``seed``; the domain's metrics (with ``reward``'s mean, when one is named) and the budget."""
    started = time.perf_counter()
    evaluations = model.eps_model.evaluations
    samples = generate(model, n, seeded_generator(seed), steps=steps,
                       transition=ancestral_transition if corrector is None else corrector)
    wall_s = time.perf_counter() - started
    metrics = model.domain.evaluate(samples, reward, None, seeded_generator(seed))
    return {**metrics, "sampling_wall_s": round(wall_s, 1),
            "network_evaluations_per_sample": (model.eps_model.evaluations - evaluations) / n}


def checkpoint_model(meta_path: Path, config: RunConfig | None = None, raw: bool = False) -> LoadedModel:
    """The EMA weights of one checkpoint of a run (its ``step-*.json``) as a model, or with ``raw`` the
    optimiser's own weights; ``config`` is the run's ``config.yaml``, read when not given."""
    tensors, meta = read_checkpoint(meta_path)
    config = config or load_config(meta_path.parent.parent / "config.yaml")
    domain = build_domain(meta.get("domain", config.domain))
    net = domain.build_network(config.network)
    prefix = RAW_PREFIX if raw else EMA_PREFIX
    net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return LoadedModel(domain, make_diffusion(config.diffusion, domain), net.eval(), {})


def learning_curve(run_dir: Path, n: int, steps: int, seed: int = 0, previous: dict[str, Any] | None = None,
                   progress: bool = True, every: int = 1, reward: str | None = None,
                   until: int | None = None) -> dict[str, Any]:
    """Metrics of every kept checkpoint of ``run_dir`` (EMA weights), with its step and training hours, and
    ``reward``'s mean where one is named (a fine-tune's reward, or an independent measure of it).

    Checkpoints already in ``previous`` (an earlier result with the same ``n``, ``steps``, ``seed`` and
    ``reward``) are not sampled again. ``every`` keeps the cost of a long run down: only steps that are multiples
    of it are sampled, and the last checkpoint always is. ``until`` ends the curve at that step's checkpoint
    (where a later stage took over), which must exist.
    """
    settings = {"run": str(run_dir), "n": n, "sampling_steps": steps, "seed": seed, "reward": reward}
    done = {}
    if previous is not None and all(previous.get(k) == v for k, v in settings.items() if k != "run"):
        done = {point["step"]: point for point in previous["points"]}
    config = load_config(run_dir / "config.yaml")
    points = []
    metas = {path: read_json(path) for path in sorted(checkpoint_paths(run_dir))}
    if until is not None:
        metas = {path: meta for path, meta in metas.items() if meta["step"] <= until}
        if not metas or list(metas.values())[-1]["step"] != until:
            raise ValueError(f"{run_dir} has no checkpoint at step {until} to end its stage at")
    paths = list(metas)
    for meta_path in tqdm(paths, desc="checkpoints", disable=not progress):
        meta = metas[meta_path]
        if meta["step"] % every and meta_path != paths[-1] and meta["step"] not in done:
            continue
        if meta["step"] in done:
            points.append(done[meta["step"]])
            continue
        model = checkpoint_model(meta_path, config)
        points.append({"step": meta["step"], "training_hours": round(meta.get("wall_s", 0.0) / 3600, 3),
                       **sample_metrics(model, n, steps, seed, reward)})
    return {**settings, "points": points}


def chained_curve(stages: Sequence[tuple[Path, int | None]], n: int, steps: int, seed: int = 0,
                  previous: dict[str, Any] | None = None, progress: bool = True, every: int = 1,
                  reward: str | None = None) -> dict[str, Any]:
    """The learning curve of a model trained in stages, each run started from the weights of the one before
    at its ``until`` step (``None``: its last checkpoint): ``learning_curve`` per stage, its hours added to the
    stages' before, each point named by its ``stage``. A later stage's step 0 is the earlier stage's last
    point again and is left out. ``previous`` (an earlier chain's result) spares its stages' sampled points."""
    earlier = {stage["run"]: stage for stage in (previous or {}).get("stages", [])}
    results, points, hours = [], [], 0.0
    for index, (run_dir, until) in enumerate(stages):
        curve = learning_curve(run_dir, n, steps, seed, earlier.get(str(run_dir)), progress, every, reward, until)
        results.append(curve | {"until": until, "start_hours": round(hours, 3)})
        points += [point | {"stage": run_dir.name, "training_hours": round(hours + point["training_hours"], 3)}
                   for point in curve["points"] if not (index and point["step"] == 0)]
        hours += curve["points"][-1]["training_hours"]
    chain = ",".join(f"{run_dir}" + (f":{until}" if until is not None else "") for run_dir, until in stages)
    return {"run": chain, "n": n, "sampling_steps": steps, "seed": seed, "reward": reward, "stages": results,
            "points": points}


def parse_stages(text: str) -> list[tuple[Path, int | None]]:
    """``RUN[:STEP],RUN[:STEP],...`` (``bench curve --run``) as ``(run folder, until)`` stages."""
    stages = []
    for part in text.split(","):
        run, colon, until = part.rpartition(":")
        if not (colon and until.isdigit()):
            run, until = part, ""
        stages.append((Path(run), int(until) if until else None))
    return stages


def steps_curve(checkpoint: str, n: int, steps: Sequence[int], seeds: int = 3, progress: bool = True,
                reward: str | None = None, corrector: LangevinCorrector | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` (and ``reward``'s mean, where named) at each number of sampling steps, each
    step followed by the ``corrector``'s where one is given, per seed and as mean and spread."""
    model = load_trained(checkpoint)
    points = []
    for count in tqdm(steps, desc="step counts", disable=not progress):
        runs = [sample_metrics(model, n, count, seed, reward, corrector) for seed in range(seeds)]
        summary = {key: {"mean": float(np.mean([r[key] for r in runs])), "std": float(np.std([r[key] for r in runs]))}
                   for key in runs[0] if isinstance(runs[0][key], int | float) and not isinstance(runs[0][key], bool)}
        points.append({"sampling_steps": count, "seeds": runs, "summary": summary})
    return {"checkpoint": checkpoint, "n": n, "seeds": seeds, "reward": reward,
            "corrector": None if corrector is None else {"snr": corrector.snr, "steps": corrector.steps,
                                                         "start": corrector.start},
            "points": points}


def plot_curve(result: dict[str, Any], path: Path) -> Path:
    """A PNG of the plotted metrics against training hours (learning curve) or sampling steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learning = "training_hours" in (result["points"] or [{}])[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for metric in PLOTTED:
        if learning:
            points = [p for p in result["points"] if p.get(metric) is not None]
            if points:
                ax.plot([p["training_hours"] for p in points], [p[metric] for p in points], marker="o", label=metric)
            continue
        points = [p for p in result["points"] if metric in p["summary"]]
        if points:
            ax.errorbar([p["summary"]["network_evaluations_per_sample"]["mean"] for p in points],
                        [p["summary"][metric]["mean"] for p in points],
                        yerr=[p["summary"][metric]["std"] for p in points], marker="o", capsize=3, label=metric)
    for stage in result.get("stages", [])[1:]:
        ax.axvline(stage["start_hours"], color="grey", linestyle=":", linewidth=1)
        ax.annotate(Path(stage["run"]).name, (stage["start_hours"], 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=7, color="grey")
    if learning:
        title = " → ".join(Path(s["run"]).name for s in result["stages"]) if "stages" in result else result["run"]
        ax.set(xlabel="training hours (wall time of the run)", title=f"learning curve: {title}")
    else:
        corrector = result.get("corrector")
        sampler = "" if corrector is None else f"\n{corrector['steps']} corrector step(s) at snr {corrector['snr']}"
        if corrector is not None and corrector.get("start") is not None:
            sampler += f" after each step landing at t <= {corrector['start']}"
        ax.set(xscale="log", xlabel="network evaluations per sample",
               title=f"quality against steps: {result['checkpoint']}{sampler}")
    shares = all(np.min(line.get_ydata()) >= 0 and np.max(line.get_ydata()) <= 1 for line in ax.get_lines()
                 if len(line.get_ydata()))
    ax.set(ylim=(0, 1.02) if shares else None, ylabel="share" if shares else "share, mean reward")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(result: dict[str, Any]) -> str:
    """The curve's points as a Markdown table."""
    learning = "training_hours" in (result["points"] or [{}])[0]
    rows = []
    for point in result["points"]:
        values = point if learning else {k: v["mean"] for k, v in point["summary"].items()}
        cells = [f"{values[m]:.3f}" if isinstance(values.get(m), float) else "-" for m in PLOTTED]
        step = f"{point['stage']} {point['step']}" if "stage" in point else str(point.get("step"))
        first = (f"{step} | {point['training_hours']:.2f}" if learning else
                 f"{point['sampling_steps']} | {values['network_evaluations_per_sample']:.0f}")
        rows.append(f"| {first} | " + " | ".join(cells) + " |")
    head = "| step | hours | " if learning else "| sampling steps | network evaluations per sample | "
    return "\n".join([head + " | ".join(PLOTTED) + " |", "|" + "---|" * (len(PLOTTED) + 2), *rows])


def read_previous(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
