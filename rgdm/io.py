"""Atomic, pickle-free file helpers every layer uses: JSON, NumPy arrays and safetensors with a checksum.

Every write goes to a temporary file beside the target and is renamed over it, so a reader never
sees half a file; nothing is ever unpickled (``allow_pickle=False``, safetensors).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


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


STATE_TENSORS, STATE_META = "training-state.safetensors", "training-state.json"


def save_training_state(folder: Path, step: int, run: dict[str, Any], net: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, schedule: Any = None,
                        extra: dict[str, Any] | None = None) -> None:
    """A hand-written training loop's state at ``step`` in ``folder``: weights, optimiser moments and the
    random state in safetensors, then the JSON that seals them, with ``run`` (the settings a resume must
    share), the schedule's state and ``extra`` (JSON the loop keeps, such as its losses)."""
    tensors = {f"net.{key}": value for key, value in net.state_dict().items()}
    layout = flatten_state("optimizer", optimizer.state_dict(), tensors)
    tensors["generator"] = generator.get_state()
    digest = save_tensors(folder / STATE_TENSORS, tensors)
    write_json(folder / STATE_META, {"step": step, "run": run, "optimizer": layout, "sha256": digest,
                                     "schedule": None if schedule is None else schedule.state_dict(),
                                     "extra": extra or {}})


def load_training_state(folder: Path, run: dict[str, Any], keys: tuple[str, ...], net: torch.nn.Module,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, schedule: Any = None
                        ) -> tuple[int, dict[str, Any]]:
    """The step a state saved in ``folder`` reached and its ``extra``, restored into the objects; ``(0, {})``
    without one. A state whose ``run`` differs in ``keys`` belongs to another run and is refused."""
    if not (folder / STATE_META).is_file():
        return 0, {}
    state = read_json(folder / STATE_META)
    run = json.loads(json.dumps(run))  # as the saved state reads it back: tuples as lists
    differs = [key for key in keys if state["run"].get(key) != run.get(key)]
    if differs:
        raise CheckpointError(f"{folder} holds the training state of another run (it differs in "
                              f"{', '.join(differs)}); choose another folder or repeat that run's settings")
    tensors = load_tensors(folder / STATE_TENSORS, state["sha256"])
    net.load_state_dict({key[len("net."):]: value for key, value in tensors.items() if key.startswith("net.")})
    optimizer.load_state_dict(unflatten_state(state["optimizer"], tensors))  # it moves moments to the weights
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    generator.set_state(tensors["generator"])
    return int(state["step"]), state.get("extra", {})


def clear_training_state(folder: Path) -> None:
    """Remove a finished training's state from ``folder``."""
    for name in (STATE_TENSORS, STATE_META):
        (folder / name).unlink(missing_ok=True)


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
