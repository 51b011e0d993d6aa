"""The Python API: load a trained model, fine-tune it with a reward, sample it and measure the samples.

These are the verbs of the command line as functions (``rgdm finetune``, ``sample`` and ``evaluate`` and
the demos call them), re-exported from ``rgdm``::

    import rgdm

    model = rgdm.load("toy-ring-pretrained")
    tuned = rgdm.finetune("toy-ring-pretrained", reward="region", steps=200, out="runs/ring")
    metrics = rgdm.evaluate(rgdm.sample(tuned, 500), reward="region")

A reward is named as on the command line: a domain reward (``region``, ``qed``, ``smarts:c1ccccc1``), a
registered one, or a plugin ``FILE.py:FUNC`` or ``module:FUNC``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgdm import registry
from rgdm.algorithms import ClassifierGuidance, SequentialMonteCarlo
from rgdm.algorithms.exploration import ValueEstimate
from rgdm.batch import Batch
from rgdm.domains.base import SupportsTargets
from rgdm.engine import (
    LoadedModel,
    RunConfig,
    Trainer,
    generate,
    load_config,
    load_trained,
    make_scorer,
    make_transition,
)
from rgdm.engine.builder import seeded_generator
from rgdm.engine.config import Guidance, RewardConfig, SampleConfig, preset_or_path, validated
from rgdm.engine.distributed import barrier
from rgdm.engine.guide import load_guide
from rgdm.engine.registry import resolve_model
from rgdm.io import read_json
from rgdm.rewards import RewardCounter, find_registered


@dataclass(frozen=True)
class Samples:
    """Samples of a model: the tensors, the model they came from, and how they were drawn.

    ``meta`` is what ``rgdm sample`` records in ``sample.json`` (seed, guidance, reward and network
    evaluations, wall time); ``evaluate`` reads the guiding reward from it.
    """

    batch: Batch
    model: LoadedModel
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.batch)

    def decode(self) -> Sequence[Any]:
        """The samples as the objects rewards score: arrays, molecules, point clouds."""
        return self.model.domain.decode(self.batch.x, self.batch.mask)


def load(name_or_dir: str | Path, device: str = "cpu") -> LoadedModel:
    """A trained model, by shipped name (``toy-ring-pretrained``; ``rgdm checkpoints`` lists them) or by
    folder (a finished run, or one written by ``rgdm export``), ready to sample on ``device``."""
    return load_trained(name_or_dir, device)


def finetune(model_or_config: LoadedModel | str | Path | RunConfig | None = None, *, out: str | Path,
             reward: str | None = None, algorithm: str | None = None, temperature: float | None = None,
             steps: int | None = None, seed: int | None = None, config: str | Path | None = None,
             overrides: Sequence[str] = (), progress: bool = False) -> LoadedModel:
    """Fine-tune a trained model towards a reward, as ``rgdm finetune`` does, and return it trained.

    ``model_or_config`` is a model from ``load`` (or an earlier ``finetune``), a shipped name or model folder,
    fine-tuned from its saved weights with the recipe of its domain (the
    preset ``finetune-DOMAIN``, or ``config``: a preset name or YAML file), the keywords set and then
    ``overrides`` (``section.key=value``) on top; or ``None`` with a ``config`` that names its model and reward
    (the recipe of a shipped checkpoint, ``qm9-noh-rgdm-qed``); or a whole ``RunConfig``, run as it stands.
    ``algorithm`` is an RGDM estimator (``rgdm-data``, ``rgdm-model``, ``rgdm-stepwise``) or a training
    peer; ``temperature`` the tau of the pay-off ``exp(r / tau)``.

    ``out`` is the run folder. One that holds this same run continues it where it stopped (or returns
    it, finished), so a rerun costs nothing; one that holds another run is refused, and left as it is.
    """
    settings = {"reward.name": reward, "algorithm.name": algorithm, "algorithm.temperature": temperature,
                "train.steps": steps, "train.seed": seed}
    changes = [f"{key}={value}" for key, value in settings.items() if value is not None] + list(overrides)
    if isinstance(model_or_config, LoadedModel):
        if model_or_config.source is None:
            raise ValueError("this model was built in memory, not loaded from a name or folder: fine-tune a "
                             "shipped name or a model folder")
        model_or_config = model_or_config.source
    if isinstance(model_or_config, RunConfig):
        if changes or config is not None:
            raise ValueError("a RunConfig is run as it stands: set the reward, algorithm and the rest in it")
        run = model_or_config
    elif model_or_config is None:
        if config is None:
            raise ValueError("a fine-tune needs a model to start from, or a recipe (config) that names one")
        run = load_config(preset_or_path(config), changes)
    else:
        domain = read_json(resolve_model(model_or_config) / "model.json")["domain"]["name"]
        run = load_config(preset_or_path(config or f"finetune-{domain}"), [f"init={model_or_config}", *changes])
    if run.init is None or run.reward.name is None:
        raise ValueError("a fine-tune needs a model to start from and a reward (reward=NAME)")
    trainer = _open_run(run, Path(out))
    run_dir = trainer.fit(progress=progress)
    barrier(trainer.shard)  # under torchrun, every process loads the model once rank 0 has written it
    return load_trained(run_dir)


def _open_run(config: RunConfig, out: Path) -> Trainer:
    """A new run of ``config`` in ``out``, or the run there resumed if it has the same settings; a folder
    holding another run is refused with a message that names that run and how it differs."""
    if not (out / "config.yaml").is_file():
        return Trainer(config, out)
    held = load_config(out / "config.yaml")
    ours, theirs = _settings(config), _settings(held)
    differences = [f"{key}: {theirs.get(key, 'unset')!r} there, {ours.get(key, 'unset')!r} here"
                   for key in {**ours, **theirs} if ours.get(key, _UNSET) != theirs.get(key, _UNSET)]
    if differences:
        reward = f" for reward {held.reward.name!r}" if held.reward.name else ""
        more = f"; {len(differences) - 3} more" if len(differences) > 3 else ""
        raise ValueError(f"{out} holds another run, {held.algorithm.name} of {held.init or 'a new model'}{reward} "
                         f"({'; '.join(differences[:3])}{more}); write this one to another folder (--out)")
    return Trainer.resume(out)


#: A setting one run's algorithm has and the other's lacks (their configs are typed per algorithm).
_UNSET = object()


def _settings(config: RunConfig) -> dict[str, Any]:
    """What makes a run the same run: where it starts and its training, algorithm and reward settings."""
    sections = config.model_dump(mode="json", include={"train", "algorithm", "reward"})
    return {"init": config.init} | {f"{section}.{key}": value
                                    for section, values in sections.items() for key, value in values.items()}


def sample(model: LoadedModel | str | Path, n: int, *, reward: str | None = None, guidance: Guidance | None = None,
           seed: int | None = None, temperature: float | None = None, target: int | str | None = None,
           steps: int | None = None, eta: float | None = None, candidates: int | None = None,
           particles: int | None = None, value: ValueEstimate | None = None, guidance_start: int | None = None,
           radius: float | None = None, guide: str | Path | None = None, cfg_scale: float | None = None,
           corrector_snr: float | None = None, corrector_steps: int | None = None, corrector_start: int | None = None,
           progress: bool = False) -> Samples:
    """``n`` samples of a model (loaded, or a shipped name or folder), plain or reward-guided, as
    ``rgdm sample`` draws them.

    The options are those of ``SampleConfig``, which checks them and gives the default of each left ``None``
    (``rgdm sample --help`` shows them).
    ``guidance``: ``smc`` targets the pay-off ``p_ref exp(r / temperature)`` with ``particles`` per sample;
    ``select`` greedily picks among ``candidates`` each step; ``gradient`` steps along the reward's
    gradient within ``radius``; ``regressor`` follows a noise-aware ``guide`` (``rgdm train-guide``).
    ``target`` is a class index or name, or a property value (or ``"all"``: spread over every class, or
    values drawn from the data) for a conditional model;
    ``steps`` DDIM steps (default: every step, DDPM) with ``eta``; ``cfg_scale`` classifier-free guidance
    of a model fine-tuned with ``cfg``. ``guidance_start`` and ``value`` tune ``select`` and ``smc``.
    ``corrector_snr`` adds ``corrector_steps`` Langevin corrector steps after every step (predictor-corrector),
    or after those landing at diffusion time ``corrector_start`` or below.
    The samples' ``meta`` is the config (with the target resolved) and what the draw cost.
    """
    options = {"n": n, "seed": seed, "target": target, "steps": steps, "eta": eta, "guidance": guidance,
               "reward": reward, "temperature": temperature, "candidates": candidates, "particles": particles,
               "value": value, "guidance_start": guidance_start, "radius": radius,
               "guide": None if guide is None else str(guide), "cfg_scale": cfg_scale,
               "corrector_snr": corrector_snr, "corrector_steps": corrector_steps, "corrector_start": corrector_start}
    config = validated(SampleConfig, {key: option for key, option in options.items() if option is not None},
                       "sampling options")
    model = load(model) if isinstance(model, str | Path) else model
    value_domain = isinstance(model.domain, SupportsTargets) and model.domain.target_kind == "value"
    if (isinstance(config.target, str) or value_domain) and config.target not in (None, "all"):
        if not isinstance(model.domain, SupportsTargets):
            raise ValueError(f"target {config.target!r}: the {model.domain.name} domain has no targets")
        config = config.model_copy(update={"target": model.domain.parse_target(str(config.target))})
    counter = RewardCounter()
    scorer = make_scorer(RewardConfig(name=config.reward), model.domain, counter)
    transition = make_transition(config, scorer, None if config.guide is None else load_guide(config.guide, model))
    evaluations = model.eps_model.evaluations
    started = time.perf_counter()
    batch = generate(model, config.n, seeded_generator(config.seed), target=config.target, steps=config.steps,
                     eta=config.eta, transition=transition, cfg_scale=config.cfg_scale, progress=progress)
    meta = config.model_dump(mode="json") | {"network_evaluations": model.eps_model.evaluations - evaluations,
                                             **counter.as_dict(), "wall_s": round(time.perf_counter() - started, 1)}
    if isinstance(transition, ClassifierGuidance):
        meta["guide_evaluations"] = transition.evaluations
    if isinstance(transition, SequentialMonteCarlo):
        meta["smc"] = transition.stats.as_dict()
    return Samples(batch, model, meta)


def evaluate(model_or_samples: Samples | LoadedModel | str | Path, *, reward: str | None = None,
             temperature: float | None = None, n: int = 1000, seed: int = 0, progress: bool = False
             ) -> dict[str, Any]:
    """The metrics ``rgdm evaluate`` reports: the domain's quality metrics and, with a reward, its mean
    (and, on the toy domain, the distance to exact pay-off samples at ``temperature``).

    Given a model rather than samples, it draws ``n`` plain samples first (seed ``seed``). The reward is a
    domain or registered reward, by default the model's training reward or the one that guided the
    samples; the temperature defaults to the model's training one.
    """
    samples = (model_or_samples if isinstance(model_or_samples, Samples)
               else sample(model_or_samples, n, seed=seed, progress=progress))
    model = samples.model
    training = model.meta.get("training", {})
    named = registry.rewards_for(model.domain)
    defaults = [name for name in (training.get("reward"), samples.meta.get("reward"))
                if name and find_registered(name, named) is not None]
    reward = reward or next(iter(defaults), None)
    temperature = temperature or training.get("temperature")
    if reward is not None and find_registered(reward, named) is None:
        raise ValueError(f"evaluate measures with a domain or registered reward ({', '.join(sorted(named))}); "
                         f"got {reward!r}")
    metrics = model.domain.evaluate(samples.batch, reward, temperature if reward else None, seeded_generator(seed))
    return metrics | {"reward": reward, "temperature": temperature}
