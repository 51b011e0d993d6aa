"""Reward evaluation in worker processes, with a timeout per call (pebble's process pool).

A black-box reward may hang (a simulator that never returns) or crash its process (a segfault in
a C extension). Threads cannot be stopped, so the reward runs in worker processes: each call is
split into one chunk per worker, each chunk has ``timeout`` seconds, and pebble kills and replaces
a worker that overruns or dies. Workers are forked after the reward is loaded, so plugin modules
and closures need no pickling; only samples, targets and values cross the process boundary.
"""

from __future__ import annotations

import itertools
import multiprocessing
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
from pebble import ProcessExpired, ProcessPool

from rgdm.rewards.base import ScoredChunk, score_isolated

_worker_call: Callable[[Sequence[Any], Sequence[Any] | None], Any] | None = None


def _install(call: Callable[[Sequence[Any], Sequence[Any] | None], Any]) -> None:
    global _worker_call
    _worker_call = call


def _score_in_worker(samples: Sequence[Any], targets: Sequence[Any] | None) -> ScoredChunk:
    assert _worker_call is not None, "worker started without a reward"
    return score_isolated(_worker_call, samples, targets)


class RewardPool:
    """``workers`` forked processes scoring chunks of a batch, each chunk within ``timeout`` seconds."""

    def __init__(self, call: Callable[[Sequence[Any], Sequence[Any] | None], Any], workers: int,
                 timeout: float | None) -> None:
        if workers < 1:
            raise ValueError(f"a reward pool needs at least one worker, got {workers}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"reward timeout must be positive seconds, got {timeout}")
        self.workers = workers
        self.timeout = timeout
        self.pool = ProcessPool(max_workers=workers, initializer=_install, initargs=(call,),
                                context=multiprocessing.get_context("fork"))
        weakref.finalize(self, self.pool.stop)

    def score(self, samples: Sequence[Any], targets: Sequence[Any] | None) -> ScoredChunk:
        bounds = np.linspace(0, len(samples), min(self.workers, len(samples)) + 1).astype(int)
        futures = [(stop - start, self.pool.schedule(
            _score_in_worker, args=(samples[start:stop], None if targets is None else targets[start:stop]),
            timeout=self.timeout)) for start, stop in itertools.pairwise(bounds) if stop > start]
        chunks = []
        for size, future in futures:
            try:
                chunks.append(future.result())
            except FutureTimeout:
                chunks.append(ScoredChunk.all_failed(size, "timeout", f"took longer than {self.timeout} s"))
            except ProcessExpired as error:
                chunks.append(ScoredChunk.all_failed(size, "crash", f"killed its worker process ({error})"))
            except Exception as error:  # e.g. an answer that cannot be sent back
                chunks.append(ScoredChunk.all_failed(size, "exception", f"{type(error).__name__}: {error}"))
        return ScoredChunk.concatenate(chunks)

    def close(self) -> None:
        self.pool.stop()
        self.pool.join()
