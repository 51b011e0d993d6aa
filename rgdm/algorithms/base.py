"""What every training algorithm sees, and the small interface the engine drives it through.

A training step has two halves. ``Algorithm.draw_rows`` draws the step's minibatch and every random number
its loss will use, for all rows at once and alike on every process; ``Algorithm.row_losses`` gives the
loss of each of any of those rows. The engine does the rest (``rgdm.engine.distributed``): under data
parallelism each process evaluates a share of the rows, the losses are reduced over all processes, and
the reward calls are charged to the global budget first. ``Algorithm.loss`` is the same step in one process.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Self, TypeVar

import torch
from tqdm.auto import tqdm

from rgdm.batch import Batch
from rgdm.diffusion.loss import denoising_loss, draw_training_noise
from rgdm.diffusion.process import GaussianDiffusion, Sample
from rgdm.diffusion.sampling import EpsModel
from rgdm.rewards.scorer import Scorer

PriorFn = Callable[[int, torch.Generator, torch.Tensor | None], Batch]
#: Picks the rows one process computes from a whole batch's tensor (or ``None``).
RowPicker = Callable[[Any], Any]


@dataclass
class TrainingContext:
    """The trained model, its EMA and frozen reference copies, the data, and the reward."""

    model: EpsModel
    ema: EpsModel
    reference: EpsModel | None
    data: Batch
    scorer: Scorer | None
    batch_size: int
    prior: PriorFn
    targets: list[int] | None = None
    #: Whether long set-up work (scoring the data) shows a progress bar.
    progress: bool = False
    #: The domain's ``refit_prior``. The network learns ``p(x | size)`` only, so pay-off algorithms
    #: hand it the masks and weights of the samples their loss fits whenever those change, and
    #: samples follow the pay-off distribution over sizes (a molecule's atom count) too.
    refit_prior: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    #: Whether a stop was requested: sampling loops inside a step (a buffer, DDPO's trajectories)
    #: check it between steps and raise ``SamplingInterrupted``, so the engine stops promptly.
    interrupt: Callable[[], bool] | None = None

    def refit_sizes(self, mask: torch.Tensor | None, weights: torch.Tensor) -> None:
        """Refit the domain's size distribution to weighted samples (a no-op for fixed-size samples)."""
        if self.refit_prior is not None and mask is not None:
            self.refit_prior(mask, weights)

    def score(self, algorithm: str, x: torch.Tensor, mask: torch.Tensor | None = None,
              cond: torch.Tensor | None = None) -> torch.Tensor:
        """Reward values ``(n,)`` of a batch every process holds whole (data rows, a sampled buffer).

        Every process ends with the same values, and no sample is scored twice (``score_rows``). Samples
        the reward fails on carry the reward's floor (``rgdm.rewards.scorer``), which the weights take like
        any value.
        """
        scorer = self.require_scorer(algorithm)
        return self.score_rows(len(x), lambda own: scorer(own(x), own(mask), own(cond)).values)

    def score_targets(self, algorithm: str, x: torch.Tensor, mask: torch.Tensor | None,
                      targets: Sequence[int]) -> torch.Tensor:
        """Reward values ``(len(targets), n)`` of every row of a whole batch against every target, shared
        like ``score``; each row is decoded once, and a reward may predict it once for all targets."""
        scorer = self.require_scorer(algorithm)
        return self.score_rows(len(x) * len(targets), lambda own: scorer.score_targets(own(x), own(mask),
                                                                                       targets).values)

    def score_rows(self, calls: int, score: Callable[[RowPicker], torch.Tensor]) -> torch.Tensor:
        """The values ``score(own)`` gives for the rows (last dimension) of a whole batch, on the CPU, where
        ``own`` picks the rows to score from each of its tensors: all of them in one process. The engine's
        data-parallel context has each process score its share and gather the rest, charging the
        ``calls`` of the whole batch to the global budget (``rgdm.engine.distributed``)."""
        return score(lambda value: value).cpu()

    def draw_targets(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Uniform targets from ``targets`` for conditional training, ``None`` otherwise."""
        if not self.targets:
            return None
        choices = torch.as_tensor(self.targets)  # int64 classes, or float32 values
        return choices[torch.randint(len(choices), (n,), generator=generator, device=generator.device).cpu()]

    def require_scorer(self, algorithm: str) -> Scorer:
        if self.scorer is None:
            raise ValueError(f"algorithm {algorithm!r} needs a reward; pass --reward NAME or FILE.py:FUNC")
        return self.scorer


class Rows(ABC):
    """A step's minibatch as ``Algorithm.draw_rows`` gives it: fields aligned on their first dimension.

    ``select`` takes some rows of every field: that is how the engine shares the rows among processes. All
    the loss's random numbers are drawn beforehand, for every row, so a row's loss does not depend on which
    rows are computed with it.
    """

    @property
    def reward_calls(self) -> int:
        """The reward calls evaluating every row costs, charged to the budget before any is made."""
        return 0

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def select(self, index: slice) -> Self:
        """Rows ``index`` of every field."""


@dataclass(frozen=True)
class DenoisingRows(Rows):
    """Samples with the times and noise of their denoising loss (``rgdm.diffusion.loss``), and the input
    perturbation of each row's input (``None``: none)."""

    batch: Batch
    t: torch.Tensor
    noise: Sample
    perturbation: Sample | None = field(default=None, kw_only=True)

    @classmethod
    def draw(cls, batch: Batch, diffusion: GaussianDiffusion, generator: torch.Generator,
             input_perturbation: float = 0.0, min_timestep: int = 1) -> DenoisingRows:
        """``batch`` with a time (from ``min_timestep`` on) and noise drawn for every row, and
        ``input_perturbation`` times more standard noise added to the input only (none drawn at 0, so the
        random stream is unchanged)."""
        t, noise = draw_training_noise(diffusion, batch.x, batch.mask, generator, min_timestep)
        perturbation = None
        if input_perturbation:
            perturbation = input_perturbation * diffusion.noise_like(batch.x, batch.mask, generator)
        return cls(batch, t, noise, perturbation=perturbation)

    def __len__(self) -> int:
        return len(self.batch)

    def select(self, index: slice) -> Self:
        return replace(self, batch=self.batch.select(index), t=self.t[index], noise=self.noise[index],
                       perturbation=None if self.perturbation is None else self.perturbation[index])

    def losses(self, model: EpsModel) -> torch.Tensor:
        """Each row's denoising loss ``||eps_theta(x_t, t) - eps||^2 / d``."""
        return denoising_loss(model, self.batch.x, self.t, self.noise, self.batch.cond, self.batch.mask,
                              self.perturbation)


R = TypeVar("R", bound=Rows)


@dataclass(frozen=True)
class Anchored(Rows, Generic[R]):
    """An estimator's rows, each paired with a data row for the KL anchor ``weight * L_DSM(data)``: the
    plain denoising loss of unweighted data, which keeps the model near ``p_ref`` (docs/design.md §1.3)."""

    rows: R
    #: ``None`` at weight 0.
    anchor: DenoisingRows | None
    weight: float

    @classmethod
    def draw(cls, rows: R, ctx: TrainingContext, weight: float, generator: torch.Generator) -> Anchored[R]:
        """``rows`` and as many data rows drawn uniformly, with their times and noise (none at weight 0)."""
        if weight == 0:
            return cls(rows, None, weight)
        data = ctx.data.sample(len(rows), generator)
        return cls(rows, DenoisingRows.draw(data, ctx.model.diffusion, generator), weight)

    @property
    def reward_calls(self) -> int:
        return self.rows.reward_calls

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index: slice) -> Self:
        return replace(self, rows=self.rows.select(index),
                       anchor=None if self.anchor is None else self.anchor.select(index))

    def plus_anchor(self, losses: torch.Tensor, model: EpsModel) -> torch.Tensor:
        """``losses``, those of ``rows``, plus ``weight`` times each paired data row's denoising loss."""
        return losses if self.anchor is None else losses + self.weight * self.anchor.losses(model)


class Algorithm(ABC):
    """One training objective: each step it draws its rows (``draw_rows``) and gives each row's loss
    (``row_losses``); the step's loss is their mean.

    ``setup`` runs once on a fresh start (it may spend reward calls); anything it or later steps
    compute that a resumed run must not recompute goes in ``state_tensors`` for exact resume.
    """

    name: str

    def setup(self, ctx: TrainingContext, generator: torch.Generator) -> None:  # noqa: B027 - optional hook
        """Optional work before the first step (scoring data, say)."""

    @abstractmethod
    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> Rows:
        """Training step ``step``'s minibatch with every random number its loss uses, alike on every process."""

    @abstractmethod
    def row_losses(self, ctx: TrainingContext, rows: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of each of ``rows`` (``draw_rows``'s, or some of them) and scalar statistics to log."""

    def loss(self, ctx: TrainingContext, step: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training step ``step``'s loss in one process, the mean row loss, and the statistics."""
        rows = self.draw_rows(ctx, step, generator)
        losses, stats = self.row_losses(ctx, rows)
        return losses.sum() * (1 / len(rows)), stats

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_tensors`` saved."""


def score_data_rows(ctx: TrainingContext, algorithm: str, scored_size: int | None, generator: torch.Generator,
                    chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Score ``scored_size`` random data rows once, against every conditional target if any.

    Rows are scored ``chunk`` at a time under a progress bar, each chunk against all targets at once
    (``Scorer.score_targets``). Returns the row indices and the rewards, shape ``(targets or 1, rows)``.
    """
    n = len(ctx.data) if scored_size is None else min(scored_size, len(ctx.data))
    rows = torch.randperm(len(ctx.data), generator=generator, device=generator.device)[:n].cpu()
    scored = ctx.data.select(rows.to(ctx.data.x.device))
    bar = tqdm(total=n * len(ctx.targets or [None]), desc=f"{algorithm}: scoring data", unit="row",
               disable=not ctx.progress or n <= chunk, leave=False, dynamic_ncols=True)
    rewards = []
    for start in range(0, n, chunk):
        part = scored.select(slice(start, start + chunk))
        if ctx.targets:
            rewards.append(ctx.score_targets(algorithm, part.x, part.mask, ctx.targets))
        else:
            rewards.append(ctx.score(algorithm, part.x, part.mask)[None])
        bar.update(rewards[-1].numel())
    bar.close()
    return rows, torch.cat(rewards, dim=1)
