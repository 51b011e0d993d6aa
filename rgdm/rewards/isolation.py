"""Failure isolation: call a reward on a batch, and if the call raises, on each sample alone.

Pure functions of the reward and its inputs, so they run the same in the training process, a worker
process or a Ray actor: every executor scores through ``score_isolated``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgdm.rewards.base import RewardFn, accepts_targets


@dataclass
class ScoredChunk:
    """Raw values ``(rows, samples)`` of a call, which entries failed, and ``(kind, count, detail)`` records.

    A call with a target per sample (or none) has one row; a call against several targets at once has
    a row per target. Counts are entries: one per sample and target.
    """

    values: np.ndarray
    failed: np.ndarray
    failures: list[tuple[str, int, str]] = field(default_factory=list)

    @classmethod
    def all_failed(cls, rows: int, n: int, kind: str, detail: str) -> ScoredChunk:
        return cls(np.full((rows, n), np.nan), np.ones((rows, n), dtype=bool), [(kind, rows * n, detail)])

    @classmethod
    def concatenate(cls, chunks: Sequence[ScoredChunk], axis: int = 1) -> ScoredChunk:
        """Chunks side by side: along the samples (``axis=1``) or the targets (``axis=0``)."""
        return cls(np.concatenate([c.values for c in chunks], axis), np.concatenate([c.failed for c in chunks], axis),
                   [record for c in chunks for record in c.failures])


def score_isolated(fn: RewardFn, samples: Sequence[Any], targets: Sequence[Any] | None,
                   every_target: bool = False) -> ScoredChunk:
    """Score a batch and check the answer; if the call raises, score the samples one by one so that
    only the culprits are lost.

    With ``every_target`` the call is ``fn.score_targets(samples, targets)``, every sample against
    every target (``(len(targets), n)``); otherwise ``fn(samples, targets)`` with a target per sample,
    or ``fn(samples)`` for a function that takes none (``(1, n)``).
    """
    if every_target:
        call: Callable[[Sequence[Any], Sequence[Any] | None], Any] = fn.score_targets  # type: ignore[attr-defined]
    elif accepts_targets(fn):
        call = fn
    else:
        def call(batch: Sequence[Any], _: Sequence[Any] | None) -> Any:
            return fn(batch)
    rows = len(targets) if every_target and targets is not None else 1
    return _isolated(call, samples, targets, rows, every_target)


def _isolated(call: Callable[[Sequence[Any], Sequence[Any] | None], Any], samples: Sequence[Any],
              targets: Sequence[Any] | None, rows: int, every_target: bool) -> ScoredChunk:
    n = len(samples)
    try:
        out = call(samples, targets)
    except Exception as batch_error:
        if n <= 1:
            return ScoredChunk.all_failed(rows, n, "exception", f"raised {type(batch_error).__name__}: {batch_error}")
        return ScoredChunk.concatenate([
            _isolated(call, samples[i : i + 1], targets if every_target or targets is None else targets[i : i + 1],
                      rows, every_target)
            for i in range(n)
        ])
    try:
        if out is None or isinstance(out, str | bytes):
            raise TypeError("expected one float per sample")
        values = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as error:
        return ScoredChunk.all_failed(rows, n, "bad_type", f"returned {type(out).__name__}, not a sequence of "
                                                           f"floats ({error})")
    if every_target and values.shape != (rows, n):
        return ScoredChunk.all_failed(rows, n, "wrong_length", f"returned shape {values.shape} for {rows} targets "
                                                               f"and {n} samples")
    if not every_target and values.size != n:
        return ScoredChunk.all_failed(rows, n, "wrong_length", f"returned {values.size} values for {n} samples")
    return ScoredChunk(values.reshape(rows, n), np.zeros((rows, n), dtype=bool))
