"""Conditional diffusion with classifier-free guidance: the "conditional representation" peer (docs/design.md §2).

The reward enters as a *label*, not as a weight. ``ConditionalFinetune`` scores a subset of the
data once, turns the rewards into ``num_classes`` ordered classes (``reward_classes``: the top
class holds the best rewards) and fine-tunes the network conditioned on the class, dropping the
label for the null token with probability ``uncond_prob`` so that the same network also stays an
unconditional model. At sampling time ``GuidedEpsModel`` mixes the two predictions,

    eps = eps_null + w * (eps_cond - eps_null)

which targets ``p(x) p(c | x)^w`` (Ho & Salimans, 2022): ``w = 1`` is the conditional model,
``w = 0`` the unconditional one, ``w > 1`` sharpens towards the class.

Conditional targets (docs/design.md §1.5). The network has one condition slot, and a target must occupy
it, so a target cannot also carry a reward class. With ``ctx.targets`` every scored row is scored
against every target (as ``DataPayoff`` does) and classed per target; the condition is then the
*target* ``c``, paired with rows drawn from the top reward class for ``c`` (the rows that best
honour ``c``); the null token is paired with rows drawn uniformly, so it stays the data model. The
user samples with ``cond = c`` and a guidance scale; ``sampling_condition`` gives the condition for
either case.

Sizes. The network learns ``p(x | size, c)``; like EDM's conditional model, the sizes come from
``p(size | c)``. Untargeted, the model is sampled at its top class, so set-up refits the domain's
size distribution to the top class's rows; a targeted run keeps the domain's ``p(size | c)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from rgdm.algorithms.base import Algorithm, DenoisingRows, TrainingContext, score_data_rows
from rgdm.algorithms.config import AlgorithmConfig, ScoredSize
from rgdm.batch import Batch
from rgdm.diffusion.conditioning import is_null, null_condition
from rgdm.diffusion.sampling import EpsModel


def reward_classes(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer classes ``0..num_classes-1`` of rewards ``values`` (1-D), ordered: higher reward, higher class.

    With at most ``num_classes`` distinct values, a value's class is its rank among the distinct
    values counted from the top, so the best reward is always class ``num_classes - 1``. Otherwise
    the classes are equal-mass quantile bins:
    the class of ``v`` is ``floor(num_classes * #{values < v} / n)``, so tied values share a class
    and the bins hold ``n / num_classes`` rows each when the values are distinct.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    values = values.detach().flatten()
    distinct = torch.unique(values)  # sorted ascending
    if len(distinct) <= num_classes:
        return torch.searchsorted(distinct, values) + (num_classes - len(distinct))
    below = torch.searchsorted(torch.sort(values).values, values)  # rows strictly below each value
    return torch.div(below * num_classes, len(values), rounding_mode="floor")


class ConditionalFinetune(Algorithm):
    """Fine-tune on reward classes as the condition, with label dropout for classifier-free guidance."""

    name = "cfg"

    def __init__(self, num_classes: int, null_token: int, scored_size: int | None = None,
                 uncond_prob: float = 0.1) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if not 0.0 <= uncond_prob <= 1.0:
            raise ValueError(f"uncond_prob must be in [0, 1], got {uncond_prob}")
        self.num_classes = num_classes
        self.null_token = null_token
        self.scored_size = scored_size
        self.uncond_prob = uncond_prob
        self.rows = torch.zeros(0, dtype=torch.long)
        #: ``(targets or 1, scored rows)``: each scored row's reward class, per target.
        self.labels = torch.zeros(1, 0, dtype=torch.long)

    @property
    def top_class(self) -> int:
        """The class holding the best rewards (untargeted): sample with it to ask for high reward."""
        return self.num_classes - 1

    def sampling_condition(self, n: int, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The condition to sample with: the targets themselves if given, else the top class."""
        if targets is not None:
            return targets
        return torch.full((n,), self.top_class, dtype=torch.long)

    def setup(self, ctx: TrainingContext, generator: torch.Generator) -> None:
        """Score the rows and class them. Untargeted, the classes are the condition and must not reach the null
        token; with targets they only rank each target's rows, so there may be more of them."""
        if ctx.targets and any(isinstance(t, int) and t == self.null_token for t in ctx.targets):
            raise ValueError(f"the null token {self.null_token} is also a conditional target")
        if not ctx.targets and 0 <= self.null_token < self.num_classes:
            raise ValueError(f"the null token {self.null_token} collides with the classes 0..{self.num_classes - 1}")
        self.rows, rewards = score_data_rows(ctx, self.name, self.scored_size, generator)
        self.labels = torch.stack([reward_classes(row, self.num_classes) for row in rewards])
        if not ctx.targets and ctx.data.mask is not None:  # sampled at the top class: p(M | top class), as EDM
            top_class_rows = (self.labels[0] == self.top_class).double()
            ctx.refit_sizes(ctx.data.mask[self.rows.to(ctx.data.mask.device)], top_class_rows)

    def minibatch(self, ctx: TrainingContext, generator: torch.Generator) -> Batch:
        """``ctx.batch_size`` scored rows with their condition (a class, a target or the null token)."""
        size = ctx.batch_size
        index = torch.randint(len(self.rows), (size,), generator=generator, device=generator.device).cpu()
        targets = ctx.draw_targets(size, generator)
        drop = torch.rand(size, generator=generator, device=generator.device).cpu() < self.uncond_prob
        if targets is None:
            cond = self.labels[0, index]
        else:  # condition on the target, with rows from its top reward class (null rows stay uniform)
            cond = targets.clone()
            for row, target in enumerate(ctx.targets):
                chosen = (targets == target) & ~drop
                pool = torch.nonzero(self.labels[row] == self.labels[row].max()).squeeze(1)
                pick = torch.randint(len(pool), (int(chosen.sum()),), generator=generator, device=generator.device)
                index[chosen] = pool[pick.cpu()]
        cond = torch.where(drop, null_condition(cond, self.null_token), cond)
        picked = ctx.data.select(self.rows[index].to(ctx.data.x.device))
        return Batch(picked.x, picked.mask, cond.to(picked.x.device))

    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> DenoisingRows:
        return DenoisingRows.draw(self.minibatch(ctx, generator), ctx.model.diffusion, generator)

    def row_losses(self, ctx: TrainingContext, rows: DenoisingRows) -> tuple[torch.Tensor, dict[str, float]]:
        uncond = float(is_null(rows.batch.cond, self.null_token).float().mean())
        return rows.losses(ctx.model), {"uncond_share": uncond}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"rows": self.rows, "labels": self.labels}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.rows, self.labels = tensors["rows"], tensors["labels"]


class CFGConfig(AlgorithmConfig):
    """``cfg``: classifier-free guidance trained on ``num_classes`` reward classes of ``scored_size`` data rows;
    the null token is the domain's (``num_targets``), and the classes default to one per domain target. With
    targets, each target is paired with the top ``1 / num_classes`` of its rows."""

    name: Literal["cfg"] = "cfg"
    scored_size: ScoredSize = None
    num_classes: int | None = Field(None, ge=1, description="reward classes (null: one per domain target)")
    uncond_prob: float = Field(0.1, ge=0, lt=1, description="label dropout for guidance")

    def build(self, total_steps: int, num_targets: int) -> ConditionalFinetune:
        return ConditionalFinetune(self.num_classes or num_targets, null_token=num_targets,
                                   scored_size=self.scored_size, uncond_prob=self.uncond_prob)


class GuidedEpsModel:
    """Classifier-free guidance: ``eps_null + scale * (eps_cond - eps_null)`` from one batched pass.

    A drop-in ``EpsModel`` for ``rgdm.diffusion.sample`` and the guided transitions: same call
    ``(x, t, cond, mask)``, same ``diffusion``. Both predictions come from one forward pass over
    ``2B`` rows (the condition, then the null token), and ``evaluations`` counts those network rows
    (two per sample row and step). At the ends one prediction is the answer, so one pass of ``B``
    rows gives it: ``scale = 1`` is the conditional model and ``scale = 0`` the unconditional one.
    Without a condition (``cond=None``) there is nothing to guide: the unconditional prediction.
    """

    def __init__(self, model: EpsModel, scale: float, null_token: int) -> None:
        self.model = model
        self.scale = float(scale)
        self.null_token = null_token
        self.diffusion = model.diffusion

    @property
    def net(self) -> torch.nn.Module:
        return self.model.net

    @property
    def evaluations(self) -> int:
        """Network rows evaluated, counted once by the wrapped model."""
        return self.model.evaluations

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cond is not None and self.scale == 1.0:
            return self.model(x, t, cond, mask)
        if cond is None or self.scale == 0.0:
            return self.model(x, t, torch.full((x.shape[0],), self.null_token, device=x.device, dtype=torch.long),
                              mask)
        null = null_condition(cond, self.null_token)
        eps = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]),
                         None if mask is None else torch.cat([mask, mask]))
        eps_cond, eps_null = eps.chunk(2)
        return torch.lerp(eps_null, eps_cond, self.scale)
