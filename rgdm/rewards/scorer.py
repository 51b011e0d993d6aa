"""The runtime of a reward: the budget, failure isolation and the executor over decoded samples
(``BlackBoxReward``), and decoding tensors into those samples (``Scorer``).

Algorithms work with tensors and never import a domain; a ``Scorer`` carries the domain's decoder
and the reward together, so an algorithm only calls ``scorer(x, mask, targets)``, or
``scorer.score_targets(x, mask, targets)`` for every sample against each of several targets.

Invalid samples, the one policy: a sample the reward fails on (it raises, times out, crashes its
worker, or answers NaN, inf, the wrong length or no number) scores ``floor``, is counted
(``RewardCounter.invalid`` and ``failures``) and logged, and never stops training. Algorithms weight
the floor value like any other, so with a floor below the reward's range a failure is simply a poor
sample; the validity mask beside the values lets a measurement leave failures out (the mean reward
over valid samples).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rgdm.rewards.base import Decoder, RewardCounter, RewardFn, RewardResult, TensorRewardFn
from rgdm.rewards.executors import Executor, InProcess, WorkerPool
from rgdm.rewards.isolation import ScoredChunk

log = logging.getLogger("rgdm.rewards")


class BlackBoxReward:
    """A reward function made safe to train against, run by an executor.

    The budget is charged before the function runs, one call per sample and target. ``executor``
    says where it runs (``InProcess``, ``WorkerPool``, ``RayExecutor``); ``workers > 0`` or a
    ``timeout`` without one mean ``WorkerPool(max(workers, 1), timeout)``.
    """

    def __init__(
        self, fn: RewardFn, name: str = "reward", floor: float = 0.0, counter: RewardCounter | None = None,
        workers: int = 0, timeout: float | None = None, executor: Executor | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"reward {name!r} is not callable: got {type(fn).__name__}")
        if not math.isfinite(floor):
            raise ValueError(f"reward floor must be a finite number, got {floor}")
        if executor is not None and (workers or timeout is not None):
            raise ValueError("give a reward either an executor or workers and timeout, not both")
        if executor is None:
            executor = WorkerPool(max(workers, 1), timeout) if workers > 0 or timeout is not None else InProcess()
        self.fn = fn
        self.name = name
        self.floor = floor
        self.counter = counter if counter is not None else RewardCounter()
        self.executor = executor
        executor.start(fn)

    def __call__(self, samples: Sequence[Any], targets: Sequence[Any] | None = None) -> RewardResult:
        """Values ``(n,)`` of the samples, each against its own target if any."""
        n = len(samples)
        if targets is not None and len(targets) != n:
            raise ValueError(f"got {len(targets)} targets for {n} samples")
        self.counter.charge(n)
        result = self._checked(self.executor.score(samples, targets))
        return RewardResult(result.values[0], result.valid[0])

    def score_targets(self, samples: Sequence[Any], targets: Sequence[Any]) -> RewardResult:
        """Values ``(len(targets), n)``: every sample against every target, in one call of the function's
        ``score_targets`` if it has one, else one call per target."""
        self.counter.charge(len(targets) * len(samples))
        if hasattr(self.fn, "score_targets"):
            scored = self.executor.score(samples, list(targets), every_target=True)
        else:
            scored = ScoredChunk.concatenate([self.executor.score(samples, [target] * len(samples))
                                              for target in targets], axis=0)
        return self._checked(scored)

    def close(self) -> None:
        """Stop the executor's workers, if any."""
        self.executor.close()

    def _checked(self, scored: ScoredChunk) -> RewardResult:
        """Failures counted and logged, NaN and inf too, and every invalid value replaced by the floor."""
        for kind, count, detail in scored.failures:
            self._fail(kind, count, detail)
        values = scored.values
        for kind, bad in (("nan", np.isnan(values) & ~scored.failed), ("inf", np.isinf(values))):
            if bad.any():
                self._fail(kind, int(bad.sum()), f"returned {kind}")
        valid = np.isfinite(values)
        self.counter.invalid += int((~valid).sum())
        values = np.where(valid, values, self.floor)
        return RewardResult(torch.as_tensor(values, dtype=torch.float32), torch.as_tensor(valid))

    def _fail(self, kind: str, count: int, detail: str) -> None:
        self.counter.failures[kind] += count
        if self.counter.failures[kind] <= count or self.counter.failures[kind] % 1000 < count:
            log.warning("reward %r: %s on %d sample(s) (%d so far); scored as invalid with floor %g",
                        self.name, detail, count, self.counter.failures[kind], self.floor)


@dataclass
class Scorer:
    """A reward bound to a decoder; ``gradient_fn`` is a differentiable tensor form, if one exists."""

    reward: BlackBoxReward
    decode: Decoder
    counter: RewardCounter
    gradient_fn: TensorRewardFn | None = None

    def __call__(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> RewardResult:
        """Values ``(n,)`` of the samples ``x`` (a tensor or a ``TensorDict``), each against its own target."""
        target_list = None if targets is None else targets.detach().cpu().tolist()
        return self._on(x, self.reward(self._decoded(x, mask), target_list))

    def score_targets(self, x: torch.Tensor, mask: torch.Tensor | None, targets: Sequence[int]) -> RewardResult:
        """Values ``(len(targets), n)`` of every sample against every target, each sample decoded once."""
        return self._on(x, self.reward.score_targets(self._decoded(x, mask), list(targets)))

    def differentiable(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Reward values with gradients, for gradient guidance; charged to the same budget."""
        if self.gradient_fn is None:
            raise ValueError("this reward is a black box with no differentiable form; "
                             "use candidate selection (guidance: select) instead of a gradient step")
        self.counter.charge(x.shape[0])
        return self.gradient_fn(x, targets)

    def _decoded(self, x: torch.Tensor, mask: torch.Tensor | None) -> Sequence[Any]:
        return self.decode(x.detach().cpu(), None if mask is None else mask.cpu())

    @staticmethod
    def _on(x: torch.Tensor, result: RewardResult) -> RewardResult:
        return RewardResult(result.values.to(x.device), result.valid.to(x.device))
