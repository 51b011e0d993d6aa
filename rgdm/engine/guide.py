"""Noise-aware guides for classifier guidance: train, save and load one for a trained model.

A guide is the regressor ``f(x_t, t, c)`` of ``rgdm.algorithms.classifier_guidance``: it is fitted to
reward values of the model's training data, scored once against each target (so its reward calls
are a budget like RGDM's), and steers the fixed model at sampling time with ``grad f / tau``. It lives
in its own folder: ``guide.safetensors`` (weights) and ``guide.json`` (what rebuilds it, its budget).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rgdm.algorithms import train_regressor
from rgdm.batch import Batch
from rgdm.engine.builder import LoadedModel
from rgdm.engine.checkpoint import CheckpointError, load_tensors, read_json, save_tensors, write_json
from rgdm.rewards.scorer import Scorer

GUIDE_FORMAT = "rgdm-guide/1"
WEIGHTS, META = "guide.safetensors", "guide.json"


def scored_rows(model: LoadedModel, scorer: Scorer, targets: list[int] | None, rows: int,
                generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """``rows`` random training rows scored against each target: the batch (targets as ``cond``) and rewards."""
    data = model.domain.dataset()
    picked = data.select(torch.randperm(len(data), generator=generator)[: min(rows, len(data))])
    if not targets:
        return picked, scorer(picked.x, picked.mask).values.float().cpu()
    tiled = picked.repeat(len(targets))  # copy-major: copy k is scored against targets[k]
    cond = torch.as_tensor(targets, dtype=torch.long).repeat_interleave(len(picked))
    scored = Batch(tiled.x, tiled.mask, cond)
    return scored, scorer(scored.x, scored.mask, cond).values.float().cpu()


def train_guide(model: LoadedModel, scorer: Scorer, targets: list[int] | None, *, rows: int, steps: int,
                batch_size: int, lr: float, seed: int, progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Fit a noise-aware regressor of the reward on ``rows`` scored training rows (per target).

    Returns the regressor and its metadata; reward calls are ``rows * len(targets)``.
    """
    generator = torch.Generator().manual_seed(seed)
    data, rewards = scored_rows(model, scorer, targets, rows, generator)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        regressor = model.domain.build_regressor(model.meta["network"])
    losses = train_regressor(regressor, model.diffusion, data, rewards, steps=steps, batch_size=batch_size,
                             lr=lr, generator=generator, progress=progress)
    tail = losses[-max(1, steps // 10):]
    meta = {"network": model.meta["network"], "domain": model.domain.config(), "targets": targets,
            "reward_calls": len(rewards), "rows": len(data) // len(targets or [None]), "steps": steps,
            "batch_size": batch_size, "lr": lr, "seed": seed, "final_mse": sum(tail) / len(tail)}
    return regressor.eval(), meta


def save_guide(folder: Path, regressor: nn.Module, meta: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    digest = save_tensors(folder / WEIGHTS, regressor.state_dict())
    write_json(folder / META, {"format": GUIDE_FORMAT, "weights": WEIGHTS, "sha256": digest, **meta})
    return folder


def load_guide(folder: str | Path, model: LoadedModel) -> nn.Module:
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
    regressor = model.domain.build_regressor(meta["network"])
    try:
        regressor.load_state_dict(load_tensors(folder / WEIGHTS, meta["sha256"]))
    except RuntimeError as error:
        raise CheckpointError(f"weights in {folder} do not fit the regressor its {META} describes: {error}") from None
    return regressor.eval()
