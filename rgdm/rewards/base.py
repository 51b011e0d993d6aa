"""The reward protocol: batched black-box scores with a validity mask and a shared call budget.

A reward is any function ``fn(samples) -> floats`` or ``fn(samples, targets) -> floats`` over decoded
samples (molecules, point clouds, arrays). ``BlackBoxReward`` makes such a function safe to train
against: an exception, NaN, inf or a wrong-length answer turns the affected samples invalid, gives
them the floor value, and is counted and logged, but never stops training.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

log = logging.getLogger("rgdm.rewards")

RewardFn = Callable[..., Sequence[float]]
Decoder = Callable[[torch.Tensor, torch.Tensor | None], Sequence[Any]]
TensorRewardFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class RewardResult:
    """Reward values ``(batch,)`` (the floor where invalid) and the validity mask ``(batch,)``."""

    values: torch.Tensor
    valid: torch.Tensor


class Reward(Protocol):
    """Batched, black-box reward over decoded samples, with optional per-sample targets."""

    def __call__(self, samples: Sequence[Any], targets: Sequence[Any] | None = None) -> RewardResult: ...


class BudgetExhausted(RuntimeError):
    """Raised when an algorithm asks for more reward calls than its budget allows."""


@dataclass
class RewardCounter:
    """Reward calls (one per sample scored) and failures, shared by everything that scores.

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


@dataclass
class ScoredChunk:
    """Raw values of a call, which samples it failed on, and ``(kind, count, detail)`` failure records."""

    values: np.ndarray
    failed: np.ndarray
    failures: list[tuple[str, int, str]] = field(default_factory=list)

    @classmethod
    def all_failed(cls, n: int, kind: str, detail: str) -> ScoredChunk:
        return cls(np.full(n, np.nan), np.ones(n, dtype=bool), [(kind, n, detail)])

    @classmethod
    def concatenate(cls, chunks: Sequence[ScoredChunk]) -> ScoredChunk:
        return cls(np.concatenate([c.values for c in chunks]), np.concatenate([c.failed for c in chunks]),
                   [record for c in chunks for record in c.failures])


def score_isolated(call: Callable[[Sequence[Any], Sequence[Any] | None], Any], samples: Sequence[Any],
                   targets: Sequence[Any] | None) -> ScoredChunk:
    """Call a reward on a batch and check its answer; if the call raises, score the samples one by
    one so that only the culprits are lost. Pure: it runs the same in a worker process."""
    n = len(samples)
    try:
        out = call(samples, targets)
    except Exception as batch_error:
        if n == 1:
            return ScoredChunk.all_failed(1, "exception", f"raised {type(batch_error).__name__}: {batch_error}")
        return ScoredChunk.concatenate([
            score_isolated(call, samples[i : i + 1], None if targets is None else targets[i : i + 1])
            for i in range(n)
        ])
    try:
        if out is None or isinstance(out, str | bytes):
            raise TypeError("expected one float per sample")
        values = np.asarray(out, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as error:
        return ScoredChunk.all_failed(n, "bad_type", f"returned {type(out).__name__}, not a sequence of floats "
                                                     f"({error})")
    if values.shape != (n,):
        return ScoredChunk.all_failed(n, "wrong_length", f"returned {values.size} values for {n} samples")
    return ScoredChunk(values, np.zeros(n, dtype=bool))


class BlackBoxReward:
    """Wraps a plain reward function into the ``Reward`` protocol, isolating its failures.

    With ``workers > 0`` or a ``timeout`` the function runs in a pool of worker processes
    (``rgdm.rewards.pool``): a call that outlives ``timeout`` seconds, or a worker that dies, marks
    its samples invalid (kinds ``timeout`` and ``crash``) and the worker is replaced.
    """

    def __init__(
        self, fn: RewardFn, name: str = "reward", floor: float = 0.0, counter: RewardCounter | None = None,
        workers: int = 0, timeout: float | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"reward {name!r} is not callable: got {type(fn).__name__}")
        if not math.isfinite(floor):
            raise ValueError(f"reward floor must be a finite number, got {floor}")
        self.fn = fn
        self.name = name
        self.floor = floor
        self.counter = counter if counter is not None else RewardCounter()
        self.takes_targets = accepts_targets(fn)
        self.pool = None
        if workers > 0 or timeout is not None:
            from rgdm.rewards.pool import RewardPool

            self.pool = RewardPool(self._call, max(workers, 1), timeout)

    def _call(self, samples: Sequence[Any], targets: Sequence[Any] | None) -> Any:
        return self.fn(samples, targets) if self.takes_targets else self.fn(samples)

    def _fail(self, kind: str, count: int, detail: str) -> None:
        self.counter.failures[kind] += count
        if self.counter.failures[kind] <= count or self.counter.failures[kind] % 1000 < count:
            log.warning("reward %r: %s on %d sample(s) (%d so far); scored as invalid with floor %g",
                        self.name, detail, count, self.counter.failures[kind], self.floor)

    def __call__(self, samples: Sequence[Any], targets: Sequence[Any] | None = None) -> RewardResult:
        n = len(samples)
        if targets is not None and len(targets) != n:
            raise ValueError(f"got {len(targets)} targets for {n} samples")
        self.counter.charge(n)
        if self.pool is None:
            scored = score_isolated(self._call, samples, targets)
        else:
            scored = self.pool.score(samples, targets)
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
