"""Noise-aware guides for classifier guidance: train, save and load one for a trained model.

A guide is the network of ``rgdm.algorithms.classifier_guidance``: a regressor ``f(x_t, t, c)``
(objective ``mse``) or a classifier over the targets (objective ``cross-entropy``). It is fitted to
reward values of the model's training data, scored once against each target (so its reward calls
are a budget like RGDM's), and steers the fixed model at sampling time with ``grad f / tau`` or
``grad log p(c | x_t) / tau``. It lives in its own folder: ``guide.safetensors`` (weights) and
``guide.json`` (what rebuilds it, its budget).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgdm.algorithms import ClassifierGuidance, train_regressor
from rgdm.batch import Batch
from rgdm.engine.builder import LoadedModel
from rgdm.io import CheckpointError, clear_training_state, load_tensors, read_json, save_tensors, write_json
from rgdm.rewards.scorer import Scorer

GUIDE_FORMAT = "rgdm-guide/1"
WEIGHTS, META = "guide.safetensors", "guide.json"


@dataclass
class Guide:
    """A loaded guide: its network, for a classifier the targets its logits stand for, and its ``guide.json``."""

    network: nn.Module
    classes: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def transition(self, temperature: float) -> ClassifierGuidance:
        return ClassifierGuidance(self.network, scale=1.0 / temperature, classes=self.classes)


def scored_rows(model: LoadedModel, scorer: Scorer, targets: list[int] | list[float] | None, rows: int,
                generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """``rows`` random training rows scored against each target: the batch (targets as ``cond``) and rewards.
    Each row is decoded once and scored against every target at once (``Scorer.score_targets``)."""
    data = model.domain.dataset()
    picked = data.select(torch.randperm(len(data), generator=generator)[: min(rows, len(data))])
    if not targets:
        return picked, scorer(picked.x, picked.mask).values.float().cpu()
    tiled = picked.repeat(len(targets))  # copy-major: copy k is scored against targets[k]
    cond = torch.as_tensor(targets).repeat_interleave(len(picked))  # classes (int64) or values (float32)
    rewards = scorer.score_targets(picked.x, picked.mask, targets).values  # (targets, rows): copy-major flat
    return Batch(tiled.x, tiled.mask, cond), rewards.float().cpu().reshape(-1)


def train_guide(model: LoadedModel, scorer: Scorer, targets: list[int] | list[float] | None, *, rows: int, steps: int,
                batch_size: int, lr: float, seed: int, objective: str = "mse",
                progress: bool = True, folder: Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Fit a noise-aware guide on ``rows`` scored training rows (per target).

    ``mse`` regresses each (row, target) reward; ``cross-entropy`` fits a classifier over the targets
    with each row's rewards as soft labels. Returns the network and its metadata; reward calls are
    ``rows * len(targets)``; ``train_s`` is the wall time of scoring them and of the fit. With ``folder``
    (where ``save_guide`` will keep it) the fit checkpoints there and a stopped fit continues where it was:
    its rows are scored again (the same rows, counted once in ``train_s``), and ``train_s`` counts the fit's
    every stretch.
    """
    if objective == "cross-entropy" and len(targets or []) < 2:
        raise ValueError("a cross-entropy guide classifies among targets; give --targets with two or more")
    if objective == "cross-entropy" and any(isinstance(target, float) for target in targets or []):
        raise ValueError("a cross-entropy guide classifies among class targets; value targets need the mse guide")
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    data, rewards = scored_rows(model, scorer, targets, rows, generator)
    scoring = time.perf_counter() - start
    outputs = 1
    if objective == "cross-entropy":
        outputs = len(targets)
        rewards = rewards.view(outputs, -1).T  # copy-major: column k holds the rewards against targets[k]
        first_copy = data.select(torch.arange(len(rewards)))
        data = Batch(first_copy.x, first_copy.mask)  # a classifier takes no condition
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        regressor = model.domain.build_regressor(model.meta["network"], outputs)
    meta = {"network": model.meta["network"], "domain": model.domain.config(), "targets": targets,
            "objective": objective, "reward_calls": rewards.numel(), "rows": rewards.numel() // len(targets or [None]),
            "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
    fit = train_regressor(regressor, model.diffusion, data, rewards, steps=steps, batch_size=batch_size, lr=lr,
                          generator=generator, progress=progress, objective=objective, state_folder=folder, run=meta)
    tail = fit.losses[-max(1, steps // 10):]
    return regressor.eval(), meta | {"final_loss": sum(tail) / len(tail), "train_s": scoring + fit.seconds}


def save_guide(folder: Path, regressor: nn.Module, meta: dict[str, Any]) -> Path:
    """Keep a fitted guide in ``folder``; the state of its fit there, now finished, is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = save_tensors(folder / WEIGHTS, regressor.state_dict())
    write_json(folder / META, {"format": GUIDE_FORMAT, "weights": WEIGHTS, "sha256": digest, **meta})
    clear_training_state(folder)
    return folder


def load_guide(folder: str | Path, model: LoadedModel) -> Guide:
    """A saved guide, checked against the model it will steer (same domain and network options)."""
    folder = Path(folder)
    if not (folder / META).is_file():
        raise CheckpointError(f"{folder} holds no {META}; train a guide with rgdm train-guide")
    meta = read_json(folder / META)
    if meta.get("format") != GUIDE_FORMAT:
        raise CheckpointError(f"{folder / META} has format {meta.get('format')!r}, expected {GUIDE_FORMAT!r}")
    if meta["domain"] != model.domain.config():
        raise CheckpointError(f"the guide in {folder} was trained for another domain "
                              f"({meta['domain'].get('name')}, {meta['domain']}); train one for this model")
    classes = meta["targets"] if meta.get("objective") == "cross-entropy" else None
    regressor = model.domain.build_regressor(meta["network"], len(classes) if classes else 1)
    try:
        regressor.load_state_dict(load_tensors(folder / WEIGHTS, meta["sha256"]))
    except RuntimeError as error:
        raise CheckpointError(f"weights in {folder} do not fit the regressor its {META} describes: {error}") from None
    return Guide(regressor.eval(), classes, meta)
