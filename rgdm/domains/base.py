"""The base class through which a domain plugs into the engine, and the optional capabilities it may add.

A domain knows what a sample *is*. It must say five things (the abstract methods of ``Domain``): its
data, a prior batch to start sampling from, its denoiser, how a tensor becomes an object a reward can
score, and its named rewards. Everything else has a default: options validated by the class's
``Options`` model, no projection, a no-op prior refit, generic metrics, no files of its own and a
scatter plot. Optional capabilities are mixins the engine checks with ``isinstance``:
``SupportsTargets`` (class or value targets, ``--target``) and ``SupportsFiles`` (reading samples from the
domain's own file formats). ``docs/adding-a-domain.md`` walks through a complete minimal domain.

Algorithms never import a domain; the engine hands them a ``Batch`` of data, an ``EpsModel`` and a
``Scorer``, which ``Domain.scorer`` builds, so training, guidance and ``evaluate`` score a reward alike.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel
from tensordict import TensorDict
from torch import nn

from rgdm import registry
from rgdm.batch import Batch
from rgdm.diffusion.process import Part, Projection, identity_projection
from rgdm.rewards import BlackBoxReward, Reward, RewardCounter, Scorer, resolve_reward


def cache_folder() -> Path:
    """Where domains keep what they build once (converted data, trained reward models): ``$RGDM_CACHE``
    or ``~/.cache/rgdm``."""
    return Path(os.environ.get("RGDM_CACHE", Path.home() / ".cache" / "rgdm"))


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend: plots are written on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` as every domain's plots are written, and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


class Domain(ABC):
    """What the engine needs from a domain: five abstract methods, and defaults for the rest.

    ``Options`` is a pydantic model of the domain's options (its ``name`` field included); the default
    constructor validates them into ``self.options``, and ``config()`` dumps them back, so a saved
    model rebuilds its domain with ``DomainClass(config)``.
    """

    #: The domain's name (``domain.name`` in configs).
    name: ClassVar[str]
    #: The pydantic model of the domain's options.
    Options: ClassVar[type[BaseModel]]
    #: Projection onto the sample space and the dimensions it removes (see ``GaussianDiffusion``):
    #: none by default.
    project: Projection = staticmethod(identity_projection)
    dof_offset: int = 0
    #: A multi-part sample's parts (each with its kind and projection), or None for a single tensor.
    parts: Mapping[str, Part] | None = None

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = self.Options.model_validate(dict(options or {}))

    # What every domain must say.

    @abstractmethod
    def dataset(self, split: str = "train") -> Batch:
        """The domain's data as one batch."""

    @abstractmethod
    def prior_batch(self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None) -> Batch:
        """An all-zero batch of ``n`` samples with ``cond`` as targets, and masks drawn as the domain draws
        sample sizes (a molecule's atom count); sampling starts from its shape."""

    @abstractmethod
    def build_network(self, options: dict[str, Any]) -> nn.Module:
        """A fresh denoiser ``net(x_t, t / T, cond, mask) -> eps`` of the shape of ``x_t``."""

    @abstractmethod
    def decode(self, x: torch.Tensor, mask: torch.Tensor | None) -> Sequence[Any]:
        """Tensors to the objects rewards score (arrays, molecules, point clouds), one per row."""

    @abstractmethod
    def rewards(self) -> dict[str, Reward]:
        """The domain's named rewards."""

    # Defaults.

    def config(self) -> dict[str, Any]:
        """The options that rebuild this domain (saved with checkpoints)."""
        return self.options.model_dump()

    def build_regressor(self, options: dict[str, Any], outputs: int = 1) -> nn.Module:
        """A fresh noise-aware network ``f(x_t, t / T, cond, mask)`` (classifier guidance): a scalar ``(batch,)``,
        or ``(batch, outputs)`` logits of a noise-aware classifier when ``outputs > 1``."""
        raise NotImplementedError(f"the {self.name} domain has no noise-aware regressor, which classifier guidance "
                                  f"(rgdm train-guide) needs; give {type(self).__name__} a build_regressor")

    def refit_prior(self, mask: torch.Tensor, weights: torch.Tensor) -> None:
        """Refit the size distribution ``prior_batch`` draws from to weighted sample masks (a molecule's
        atom count), kept in ``config()``; by default samples have a fixed size and nothing is refitted."""
        return None

    def scorer(self, reward: str, counter: RewardCounter | None = None, *, floor: float = 0.0, workers: int = 0,
               timeout: float | None = None) -> Scorer:
        """The reward ``reward`` names (a domain or registered reward, ``NAME:ARG`` or a plugin ``FILE.py:FUNC``)
        on this domain's decoded samples, isolated, counted and run as ``BlackBoxReward`` says: what training,
        guidance and ``evaluate`` all score with."""
        spec = resolve_reward(reward, registry.rewards_for(self))
        counter = counter if counter is not None else RewardCounter()
        black_box = BlackBoxReward(spec.fn, name=reward, floor=floor, counter=counter, workers=workers,
                                   timeout=timeout)
        return Scorer(black_box, self.decode, counter, spec.gradient_fn)

    def evaluate(self, samples: Batch, reward: str | None, temperature: float | None,
                 generator: torch.Generator) -> dict[str, Any]:
        """The domain's ``quality_metrics`` of samples and, with a reward, ``mean_reward`` and ``reward_valid``.

        The reward scores through ``scorer``, as in training: a sample it fails on (it raises, or answers
        NaN or inf) is left out of ``mean_reward`` (None when every sample fails) and counts against
        ``reward_valid``, the share of samples scored. Domains override ``quality_metrics``, not this.
        """
        scorer = None if reward is None else self.scorer(reward)
        metrics = self.quality_metrics(samples, reward, temperature, generator)
        if scorer is not None:
            scored = scorer(samples.x, samples.mask, samples.cond)
            valid = scored.values[scored.valid]
            metrics["mean_reward"] = float(valid.mean()) if len(valid) else None
            metrics["reward_valid"] = len(valid) / max(len(samples), 1)
        return metrics

    def quality_metrics(self, samples: Batch, reward: str | None, temperature: float | None,
                        generator: torch.Generator) -> dict[str, Any]:
        """Metrics of samples besides the mean reward (the evaluation rules, docs/design.md §4): by default their
        number and the share whose values are all finite. ``reward`` and ``temperature`` are the run's, for
        metrics that depend on them (the toy domain's distance to the exact pay-off distribution)."""
        values = samples.x.values() if isinstance(samples.x, TensorDict) else [samples.x]
        finite = torch.stack([value.flatten(1).isfinite().all(1) for value in values]).all(0)
        return {"n": len(samples), "finite": float(finite.float().mean()) if len(samples) else 0.0}

    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """Write samples in the domain's own file formats and return the files written; none by default
        (``rgdm sample`` always writes ``samples.npz``). A domain that writes files implements
        ``SupportsFiles`` to read them back."""
        return []

    def plot(self, panels: dict[str, Batch], path: Path) -> Path:
        """A PNG with one scatter plot per named batch: each sample's first two coordinates (a 2-D point as
        it is). Override it to draw samples as they look."""
        if any(isinstance(batch.x, TensorDict) or batch.x[0].numel() < 2 for batch in panels.values()):
            raise NotImplementedError(f"the default plot draws two coordinates of a single-tensor sample; "
                                      f"give {type(self).__name__} a plot")
        plt = pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        for ax, (title, batch) in zip(axes[0], panels.items(), strict=True):
            xy = batch.x.detach().float().cpu().flatten(1)[:, :2].numpy()
            ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5)
            ax.set(title=title, aspect="equal")
        return save_figure(fig, path)


class SupportsTargets(ABC):
    """A domain whose networks take targets: classes ``0..num_targets-1`` (modes, categories, reward classes)
    with the null token ``num_targets`` for no target, or, with ``target_kind = "value"``, values of a
    quantity (a molecule property) as float conditions, NaN for no target. ``--target``, conditional
    fine-tunes and CFG need it; one ``Conditioning`` module in the network takes either kind."""

    #: Number of class rows a conditional network holds (the null token is the next index).
    num_targets: int
    #: ``class``: targets are indices; ``value``: targets are values of a quantity, in its units.
    target_kind: Literal["class", "value"] = "class"

    @abstractmethod
    def parse_target(self, text: str) -> int | float:
        """A user's target (``--target``): a class index, or a value for a value domain."""

    def draw_target_values(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` target values drawn as the data holds them (value domains; ``--target all``)."""
        raise ValueError(f"{type(self).__name__} has class targets, not values to draw")


class SupportsFiles(ABC):
    """A domain with file formats of its own (XYZ and SDF, PLY), which ``save_samples`` writes: ``read_samples``
    reads them back, so ``rgdm evaluate`` measures samples made elsewhere."""

    @abstractmethod
    def read_samples(self, folder: Path) -> Batch:
        """The samples in ``folder``'s files, encoded as ``dataset`` encodes data; a clear error when there
        are none or they do not fit the domain."""
