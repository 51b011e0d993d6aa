"""Shipped checkpoints, addressable by name (``toy-ring-pretrained``) or by folder path."""

from __future__ import annotations

from pathlib import Path

from rgdm.io import CheckpointError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


def shipped_models() -> list[str]:
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "model.json").is_file()) \
        if SHIPPED_DIR.is_dir() else []


def resolve_model(name_or_dir: str | Path) -> Path:
    """A model folder (holding ``model.json``) from a shipped name or a path."""
    path = Path(name_or_dir)
    if (path / "model.json").is_file():
        return path
    shipped = SHIPPED_DIR / str(name_or_dir)
    if (shipped / "model.json").is_file():
        return shipped
    if path.is_dir():
        raise CheckpointError(f"{path} has no model.json: it is not a finished rgdm run "
                              "(an interrupted run can be continued with --resume)")
    raise CheckpointError(f"unknown checkpoint {str(name_or_dir)!r}: not a folder, and not a shipped name "
                          f"({', '.join(shipped_models()) or 'none shipped'})")
