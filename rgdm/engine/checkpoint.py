"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically with a checksum.

Nothing is ever unpickled. A training checkpoint is a pair ``step-XXXXXXXX.safetensors`` (weights,
optimizer moments, RNG states, algorithm buffers) and ``step-XXXXXXXX.json`` (step, SHA-256 of the
tensor file, scalar state). The JSON is written last, so a checkpoint exists only once both are
complete. A model for sampling is ``final.safetensors`` plus ``model.json`` in a run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from rgdm.io import CheckpointError, load_tensors, read_json, save_tensors, write_json

log = logging.getLogger("rgdm.checkpoint")

MODEL_FORMAT = "rgdm-model/1"
CHECKPOINT_FORMAT = "rgdm-checkpoint/1"


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The JSON halves of the training checkpoints in ``run_dir``, newest first."""
    return sorted((run_dir / "checkpoints").glob("step-*.json"), reverse=True)


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` (tensors first, then the JSON that seals it); keep the newest ``keep``."""
    stem = run_dir / "checkpoints" / f"step-{step:08d}"
    digest = save_tensors(stem.with_suffix(".safetensors"), tensors)
    write_json(stem.with_suffix(".json"), {"format": CHECKPOINT_FORMAT, "step": step,
                                           "tensors": stem.name + ".safetensors", "sha256": digest, **meta})
    for old in checkpoint_paths(run_dir)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return stem.with_suffix(".json")


def read_checkpoint(meta_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One checkpoint's tensors (their digest checked) and metadata, from its ``step-*.json``."""
    meta = read_json(meta_path)
    return load_tensors(meta_path.parent / meta["tensors"], meta["sha256"]), meta


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest intact checkpoint; a corrupt newer one is reported and skipped, never deleted."""
    candidates = checkpoint_paths(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}; nothing to resume "
                              "(start the run afresh without --resume)")
    problems = []
    for meta_path in candidates:
        try:
            tensors, meta = read_checkpoint(meta_path)
        except (CheckpointError, KeyError) as error:
            problems.append(f"{meta_path.name}: {error}")
            log.warning("skipping checkpoint %s: %s", meta_path.name, error)
            continue
        return tensors, meta
    raise CheckpointError("every checkpoint in " f"{run_dir / 'checkpoints'} is corrupt:\n  " + "\n  ".join(problems))


def save_model(run_dir: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write sampling weights ``final.safetensors`` and ``model.json`` (how to rebuild the model)."""
    digest = save_tensors(run_dir / "final.safetensors", state_dict)
    write_json(run_dir / "model.json", {"format": MODEL_FORMAT, "weights": "final.safetensors",
                                        "sha256": digest, **meta})
    return run_dir / "final.safetensors"


def load_model(model_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta = read_json(model_dir / "model.json")
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{model_dir / 'model.json'} has format {meta.get('format')!r}, "
                              f"expected {MODEL_FORMAT!r}; is this an rgdm model folder?")
    return load_tensors(model_dir / meta["weights"], meta.get("sha256")), meta
