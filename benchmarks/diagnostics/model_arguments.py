"""The arguments the diagnostics share to name a model (a run's checkpoint, or a model) and to sample it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rgdm.benchmarks.curves import checkpoint_model
from rgdm.engine import LoadedModel, load_trained


def checkpoint_path(run: str | Path, step: int) -> Path:
    """The JSON half of a run's checkpoint at ``step``."""
    return Path(run) / "checkpoints" / f"step-{step:08d}.json"


def add_model_arguments(parser: argparse.ArgumentParser, n: int, steps: int) -> None:
    """``RUN [STEP]`` (or a model's name or folder), ``-n``, ``--steps`` and ``--seed``."""
    parser.add_argument("run", help="a run folder (with STEP), or a model's name or folder")
    parser.add_argument("step", type=int, nargs="?")
    parser.add_argument("-n", type=int, default=n)
    parser.add_argument("--steps", type=int, default=steps, help="sampling steps")
    parser.add_argument("--seed", type=int, default=0)


def model_of(args: argparse.Namespace, raw: bool = False) -> LoadedModel:
    """The model ``add_model_arguments`` named: a checkpoint's EMA weights (its optimiser's with ``raw``)."""
    if args.step is None:
        return load_trained(args.run)
    return checkpoint_model(checkpoint_path(args.run, args.step), raw=raw)
