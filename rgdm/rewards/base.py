"""What a reward is: the user's function, the registered spec that names it, its result and the call budget.

Three names matter to a user:

* a **reward function** (``RewardFn``): ``fn(samples) -> floats`` or ``fn(samples, targets) -> floats``
  over decoded samples (molecules, point clouds, arrays), one float per sample. It may also offer
  ``fn.score_targets(samples, targets)``, an array ``(len(targets), len(samples))`` of every sample
  against every target, when work that does not depend on the target (a property prediction) can be
  done once per sample;
* a **registered reward** (``Reward``): a function with its description, its largest value and its
  differentiable form if it has one, under a name a domain ships (``qed``), or a family of them under a
  parametrised name (``smarts:c1ccccc1``);
* the **scorer** (``rgdm.rewards.scorer``): the runtime that decodes tensors, isolates failures,
  enforces the budget and runs the function where its executor says (``rgdm.rewards.executors``).
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

RewardFn = Callable[..., Sequence[float]]
Decoder = Callable[[torch.Tensor, torch.Tensor | None], Sequence[Any]]
TensorRewardFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Reward:
    """A registered reward: its function, what it measures, and what the engine may rely on.

    ``gradient_fn`` is the differentiable form on tensors (for gradient guidance), if one exists.
    ``max_value`` (per target, or overall) lets a domain draw exact pay-off samples by rejection.
    A parametrised reward has ``parse`` instead of ``fn``: the name ``NAME:ARG`` gets the function
    ``parse(ARG)`` (``smarts:c1ccccc1``), with this description and largest value. ``resolve_reward``
    finds a reward by its name.
    """

    fn: RewardFn | None
    description: str
    gradient_fn: TensorRewardFn | None = None
    max_value: float | None = None
    parse: Callable[[str], RewardFn] | None = None

    def __post_init__(self) -> None:
        if (self.fn is None) == (self.parse is None):
            raise ValueError(f"reward {self.description!r} needs exactly one of fn (a reward) and parse "
                             "(a parametrised reward)")


@dataclass(frozen=True)
class RewardResult:
    """Reward values and the validity mask, both ``(batch,)`` or ``(targets, batch)``.

    Invalid values carry the reward's floor (the policy is stated in ``rgdm.rewards.scorer``).
    """

    values: torch.Tensor
    valid: torch.Tensor


class BudgetExhausted(RuntimeError):
    """Raised when an algorithm asks for more reward calls than its budget allows."""


@dataclass
class RewardCounter:
    """Reward calls (one per sample scored, per target) and failures, shared by everything that scores.

    ``limit`` caps the calls: an algorithm that would exceed it gets ``BudgetExhausted`` before
    the reward runs, so comparisons at equal budgets are enforced, not trusted.
    """

    limit: int | None = None
    calls: int = 0
    invalid: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def charge(self, n: int) -> None:
        if self.limit is not None and self.calls + n > self.limit:
            raise BudgetExhausted(
                f"reward budget of {self.limit} calls exhausted ({self.calls} used, {n} more requested)"
            )
        self.calls += n

    def as_dict(self) -> dict[str, int]:
        return {"reward_calls": self.calls, "reward_invalid": self.invalid} | {
            f"reward_fail_{kind}": n for kind, n in sorted(self.failures.items())
        }


def accepts_targets(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes the targets: a second positional parameter named ``targets`` or without
    a default (so ``fn(samples, scale=2.0)`` keeps its default), or ``*args``."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2:
        second = positional[1]
        return second.name == "targets" or second.default is second.empty
    return any(p.kind == p.VAR_POSITIONAL for p in params)
