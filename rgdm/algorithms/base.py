"""What every training algorithm sees, and the small interface the engine drives it through."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rgdm.algorithms.rgdm import WHOLE, weighted_denoising_loss
from rgdm.batch import Batch, Shard
from rgdm.diffusion.sampling import EpsModel
from rgdm.rewards.base import RewardCounter
from rgdm.rewards.scorer import Scorer

PriorFn = Callable[[int, torch.Generator, torch.Tensor | None], Batch]


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
    shard: Shard = WHOLE
    #: Under data parallelism, the reward budget over all processes: charged with each global batch
    #: before its rows are split, identically on every process, so all stop at the same step.
    ledger: RewardCounter | None = None
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

    def charge(self, calls: int) -> None:
        """Count ``calls`` global reward calls against the budget (a no-op in a single process, where
        the scorer's own counter holds the budget)."""
        if self.ledger is not None:
            self.ledger.charge(calls)

    def score(self, algorithm: str, x: torch.Tensor, mask: torch.Tensor | None = None,
              cond: torch.Tensor | None = None) -> torch.Tensor:
        """Reward values ``(n,)`` of a batch every process holds whole (data rows, a sampled buffer).

        Under data parallelism each process scores its own rows and the values are shared, so no
        sample is scored twice and every process ends with the same values. Samples the reward fails
        on carry the reward's floor (``rgdm.rewards.scorer``), which the weights take like any value.
        """
        scorer = self.require_scorer(algorithm)
        return self._shared(len(x), lambda own: scorer(own(x), own(mask), own(cond)).values)

    def score_targets(self, algorithm: str, x: torch.Tensor, mask: torch.Tensor | None,
                      targets: Sequence[int]) -> torch.Tensor:
        """Reward values ``(len(targets), n)`` of every row of a whole batch against every target, shared
        like ``score``; each row is decoded once, and a reward may predict it once for all targets."""
        scorer = self.require_scorer(algorithm)
        return self._shared(len(x) * len(targets), lambda own: scorer.score_targets(own(x), own(mask), targets).values)

    def _shared(self, calls: int, score: Callable[[Shard], torch.Tensor]) -> torch.Tensor:
        """Charge ``calls`` global reward calls, score this process's rows, and gather every process's values
        along the rows (the last dimension)."""
        self.charge(calls)
        own = score(self.shard).cpu()
        if self.shard.world == 1:
            return own
        parts: list[torch.Tensor | None] = [None] * self.shard.world
        torch.distributed.all_gather_object(parts, own)
        return torch.cat(parts, dim=-1)

    def draw_targets(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Uniform targets from ``targets`` for conditional training, ``None`` otherwise."""
        if not self.targets:
            return None
        choices = torch.as_tensor(self.targets, dtype=torch.long)
        return choices[torch.randint(len(choices), (n,), generator=generator, device=generator.device).cpu()]

    def require_scorer(self, algorithm: str) -> Scorer:
        if self.scorer is None:
            raise ValueError(f"algorithm {algorithm!r} needs a reward; pass --reward NAME or FILE.py:FUNC")
        return self.scorer


class Algorithm(ABC):
    """One training objective: it draws its own batches and returns a loss each step.

    ``setup`` runs once on a fresh start (it may spend reward calls); anything it or later steps
    compute that a resumed run must not recompute goes in ``state_tensors`` for exact resume.
    """

    name: str

    def setup(self, ctx: TrainingContext, generator: torch.Generator) -> None:  # noqa: B027 - optional hook
        """Optional work before the first step (scoring data, say)."""

    @abstractmethod
    def loss(self, ctx: TrainingContext, step: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss for training step ``step`` and scalar statistics to log."""

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


def anchor_loss(ctx: TrainingContext, weight: float, generator: torch.Generator) -> torch.Tensor:
    """The KL anchor ``lambda * L_DSM(data)`` on unweighted data, keeping the model near ``p_ref``."""
    if weight == 0:
        return torch.zeros((), device=ctx.data.x.device)
    batch = ctx.data.sample(ctx.batch_size, generator)
    return weight * weighted_denoising_loss(ctx.model, batch, generator, ctx.shard)
