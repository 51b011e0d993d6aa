"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically with a checksum.

Nothing is ever unpickled. A training checkpoint is a pair ``step-XXXXXXXX.safetensors`` (weights,
optimizer moments, RNG states, algorithm buffers) and ``step-XXXXXXXX.json`` (step, SHA-256 of the
tensor file, scalar state). The JSON is written last, so a checkpoint exists only once both are
complete. A model for sampling is ``final.safetensors`` plus ``model.json`` in a run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger("rgdm.checkpoint")

MODEL_FORMAT = "rgdm-model/1"
CHECKPOINT_FORMAT = "rgdm-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or incompatible; the message says what to do."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(tmp_path)`` into a temporary file beside ``path``, then rename over it.

    The temporary name is unique, so concurrent writers of the same file never collide.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True)))


def save_arrays(path: Path, arrays: dict[str, Any]) -> None:
    """Atomically write NumPy ``arrays`` to an ``.npz`` file (read back with ``allow_pickle=False``)."""

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a handle, so numpy does not append ".npz" to the name
            np.savez(handle, **arrays)

    atomic_write(path, write)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the file is corrupt") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Atomically write ``tensors`` to a safetensors file; returns its SHA-256."""
    owned = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    atomic_write(path, lambda tmp: save_file(owned, str(tmp)))
    return sha256(path)


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file, checking its SHA-256 first when one is given."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise CheckpointError(f"{path} does not match its recorded SHA-256: the file is corrupt or truncated")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None


def flatten_state(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested state (dicts, lists) into ``tensors``; return the JSON rest."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[key, flatten_state(f"{prefix}.{key}", value, tensors)]
                             for key, value in state.items()]}
    if isinstance(state, list | tuple):
        return [flatten_state(f"{prefix}.{i}", value, tensors) for i, value in enumerate(state)]
    return state


def unflatten_state(layout: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten_state``."""
    if isinstance(layout, dict) and "__tensor__" in layout:
        return tensors[layout["__tensor__"]]
    if isinstance(layout, dict) and "__dict__" in layout:
        return {key: unflatten_state(value, tensors) for key, value in layout["__dict__"]}
    if isinstance(layout, list):
        return [unflatten_state(value, tensors) for value in layout]
    return layout


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


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The newest intact checkpoint; a corrupt newer one is reported and skipped, never deleted."""
    candidates = checkpoint_paths(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {run_dir / 'checkpoints'}; nothing to resume "
                              "(start the run afresh without --resume)")
    problems = []
    for meta_path in candidates:
        try:
            meta = read_json(meta_path)
            tensors = load_tensors(meta_path.parent / meta["tensors"], meta["sha256"])
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
