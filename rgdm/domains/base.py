"""The protocol through which a domain plugs into the engine.

A domain knows what a sample *is*: its data, its network, how a tensor becomes an object a reward
can score, its named rewards, its metrics and how to save and draw samples. Algorithms never import
a domain; the engine hands them a ``Batch`` of data, an ``EpsModel`` and a ``Scorer``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from rgdm.batch import Batch
from rgdm.diffusion.process import Part, Projection
from rgdm.rewards.base import Reward


def cache_folder() -> Path:
    """Where domains keep what they build once (converted data, trained reward models): ``$RGDM_CACHE``
    or ``~/.cache/rgdm``."""
    return Path(os.environ.get("RGDM_CACHE", Path.home() / ".cache" / "rgdm"))


class Domain(Protocol):
    """What the engine needs from a domain."""

    name: str
    #: Number of discrete targets (classes) a conditional network accepts; 0 if none.
    num_targets: int
    #: Projection onto the sample space and the dimensions it removes (see ``GaussianDiffusion``).
    project: Projection
    dof_offset: int
    #: A multi-part sample's parts (a ``TensorDict`` of them, each with its kind and projection), or None
    #: for a single tensor.
    parts: Mapping[str, Part] | None

    def config(self) -> dict[str, Any]:
        """The options that rebuild this domain (saved with checkpoints)."""
        ...

    def build_network(self, options: dict[str, Any]) -> nn.Module:
        """A fresh denoiser ``net(x_t, t / T, cond, mask) -> eps``."""
        ...

    def build_regressor(self, options: dict[str, Any], outputs: int = 1) -> nn.Module:
        """A fresh noise-aware network ``f(x_t, t / T, cond, mask)`` (guidance): a scalar ``(batch,)``,
        or ``(batch, outputs)`` logits of a noise-aware classifier when ``outputs > 1``."""
        ...

    def dataset(self, split: str = "train") -> Batch:
        """The domain's data as one batch."""
        ...

    def prior_batch(self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None) -> Batch:
        """An all-zero batch of ``n`` samples with masks drawn as the domain does (atom counts)."""
        ...

    def refit_prior(self, mask: torch.Tensor, weights: torch.Tensor) -> None:
        """Refit the size distribution ``prior_batch`` draws from to weighted sample masks (a molecule's
        atom count), kept in ``config()``; a no-op for fixed-size samples."""
        ...

    def decode(self, x: torch.Tensor, mask: torch.Tensor | None) -> Sequence[Any]:
        """Tensors to the objects rewards score (arrays, molecules, point clouds)."""
        ...

    def rewards(self) -> dict[str, Reward]:
        """The domain's named rewards."""
        ...

    def parse_target(self, text: str) -> int:
        """A user's target (``--target``) as a class index."""
        ...

    def evaluate(self, samples: Batch, reward: str | None, temperature: float | None,
                 generator: torch.Generator) -> dict[str, Any]:
        """Quality metrics of samples, and with a named reward its mean (the measuring side of §4)."""
        ...

    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """Write samples in the domain's file formats; returns the files written."""
        ...

    def plot(self, panels: dict[str, Batch], path: Path) -> Path:
        """A PNG with one panel per named batch of samples."""
        ...

