"""Where a reward function runs: in the training process, in local worker processes, or on a Ray cluster.

Every executor scores through ``score_isolated``, so a sample the reward raises on costs only itself,
and the caller charges the budget before any executor runs, so isolation and the budget are the same
everywhere. The worker executors split a batch into one chunk per worker and give each chunk
``timeout`` seconds: a chunk that overruns, or whose worker dies, is marked failed (kinds ``timeout``
and ``crash``) and its worker is replaced. ``InProcess`` cannot stop a call that hangs, so it takes no
timeout.

* ``InProcess()``: no copies, no processes; for cheap rewards and debugging.
* ``WorkerPool(workers, timeout)``: forked local processes (pebble). Workers fork after the reward
  is installed, so plugin modules and closures need no pickling.
* ``RayExecutor(workers, timeout)``: Ray actors (``pip install 'rgdm[ray]'``), for an expensive reward
  (xTB, docking, a simulator) fanned out over a cluster, also from every process under torchrun. It
  joins the running Ray instance, else the cluster that ``RAY_ADDRESS`` names, else starts a local
  one (under torchrun, ``ray start --head`` first and export ``RAY_ADDRESS``, so every process joins
  one cluster). The reward travels to the actors once, by cloudpickle: a ``FILE.py:FUNC`` plugin by
  value; a function from an importable module by reference, so that module (and rgdm) must be
  installed on the cluster. Numpy samples reach the actors read-only (Ray's zero-copy transfer), so a
  reward must not write into its input.
"""

from __future__ import annotations

import itertools
import multiprocessing
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
from pebble import ProcessExpired, ProcessPool

from rgdm.rewards.base import RewardFn
from rgdm.rewards.isolation import ScoredChunk, score_isolated
from rgdm.rewards.plugin import file_plugin_modules

#: A chunk's outcome: its scores, or the ``(kind, detail)`` of why it has none.
Outcome = ScoredChunk | tuple[str, str]


class Executor(ABC):
    """Runs one reward function: ``start`` installs it, ``score`` scores batches through ``score_isolated``."""

    _fn: RewardFn | None = None

    def start(self, fn: RewardFn) -> None:
        """Install the reward; an executor serves one reward for its whole life."""
        if self._fn is not None:
            raise RuntimeError(f"this {type(self).__name__} already runs a reward; make one executor per reward")
        self._fn = fn
        self._launch(fn)

    @abstractmethod
    def _launch(self, fn: RewardFn) -> None: ...

    @abstractmethod
    def score(self, samples: Sequence[Any], targets: Sequence[Any] | None, every_target: bool = False
              ) -> ScoredChunk:
        """``score_isolated`` of the batch, wherever this executor runs it."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Stop the workers, if any."""


class InProcess(Executor):
    """The reward runs in the calling process: no copies, no timeout."""

    def _launch(self, fn: RewardFn) -> None:
        pass

    def score(self, samples: Sequence[Any], targets: Sequence[Any] | None, every_target: bool = False
              ) -> ScoredChunk:
        assert self._fn is not None, "start the executor first"
        return score_isolated(self._fn, samples, targets, every_target)


class _Workers(Executor):
    """Chunks a batch over ``workers`` workers, each chunk within ``timeout`` seconds."""

    def __init__(self, workers: int, timeout: float | None) -> None:
        if workers < 1:
            raise ValueError(f"a reward executor needs at least one worker, got {workers}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"reward timeout must be positive seconds, got {timeout}")
        self.workers = workers
        self.timeout = timeout

    def score(self, samples: Sequence[Any], targets: Sequence[Any] | None, every_target: bool = False
              ) -> ScoredChunk:
        n = len(samples)
        rows = len(targets) if every_target and targets is not None else 1
        bounds = [(int(a), int(b)) for a, b in itertools.pairwise(np.linspace(0, n, min(self.workers, n) + 1))]
        if not bounds:
            return ScoredChunk(np.empty((rows, 0)), np.zeros((rows, 0), dtype=bool))
        chunks = [(samples[a:b], targets if every_target or targets is None else targets[a:b]) for a, b in bounds]
        outcomes = self._run(chunks, every_target)
        return ScoredChunk.concatenate([
            outcome if isinstance(outcome, ScoredChunk) else ScoredChunk.all_failed(rows, b - a, *outcome)
            for outcome, (a, b) in zip(outcomes, bounds, strict=True)
        ])

    @abstractmethod
    def _run(self, chunks: list[tuple[Sequence[Any], Sequence[Any] | None]], every_target: bool) -> list[Outcome]:
        """Score the chunks at once, one per worker."""


_worker_fn: RewardFn | None = None


def _install(fn: RewardFn) -> None:
    global _worker_fn
    _worker_fn = fn


def _score_in_worker(samples: Sequence[Any], targets: Sequence[Any] | None, every_target: bool) -> ScoredChunk:
    assert _worker_fn is not None, "worker started without a reward"
    return score_isolated(_worker_fn, samples, targets, every_target)


class WorkerPool(_Workers):
    """``workers`` forked local processes (pebble's process pool); a worker that overruns or dies is replaced."""

    def __init__(self, workers: int = 1, timeout: float | None = None) -> None:
        super().__init__(workers, timeout)
        self.pool: ProcessPool | None = None

    def _launch(self, fn: RewardFn) -> None:
        self.pool = ProcessPool(max_workers=self.workers, initializer=_install, initargs=(fn,),
                                context=multiprocessing.get_context("fork"))
        weakref.finalize(self, self.pool.stop)

    def _run(self, chunks: list[tuple[Sequence[Any], Sequence[Any] | None]], every_target: bool) -> list[Outcome]:
        assert self.pool is not None, "start the executor first"
        futures = [self.pool.schedule(_score_in_worker, args=(samples, targets, every_target), timeout=self.timeout)
                   for samples, targets in chunks]
        outcomes: list[Outcome] = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except FutureTimeout:
                outcomes.append(("timeout", f"took longer than {self.timeout} s"))
            except ProcessExpired as error:
                outcomes.append(("crash", f"killed its worker process ({error})"))
            except Exception as error:  # e.g. an answer that cannot be sent back
                outcomes.append(("exception", f"{type(error).__name__}: {error}"))
        return outcomes

    def close(self) -> None:
        if self.pool is not None:
            self.pool.stop()
            self.pool.join()


class _Actor:
    """A Ray actor holding the reward; ``RayExecutor`` makes it remote."""

    def __init__(self, fn: RewardFn) -> None:
        self.fn = fn

    def ready(self) -> None:
        """Returns once the actor is up and holds the reward."""

    def score(self, samples: Sequence[Any], targets: Sequence[Any] | None, every_target: bool) -> ScoredChunk:
        return score_isolated(self.fn, samples, targets, every_target)


class RayExecutor(_Workers):
    """``workers`` Ray actors, each with ``options`` (``ray.remote`` resources; default one CPU each).

    Actors hold their resources while the executor lives, and ``start`` waits until all are placed,
    so the cluster needs ``workers`` free CPUs per reward (and per process under torchrun). A chunk's
    ``timeout`` counts from its submission to an idle actor, as a worker pool's counts from its start.
    An actor that overruns is killed; one that dies is a crash; both are replaced before the next
    batch, and a replacement is waited for, so start-up never counts against a timeout.
    """

    def __init__(self, workers: int = 1, timeout: float | None = None, options: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__(workers, timeout)
        try:
            import ray
        except ImportError as error:
            raise ImportError("the Ray executor needs Ray: pip install 'rgdm[ray]'") from error
        self.ray = ray
        self.options = {"num_cpus": 1} | dict(options or {})
        self.actors: list[Any] = []
        self._remote: Any = None
        self._reward: Any = None

    def _launch(self, fn: RewardFn) -> None:
        if not self.ray.is_initialized():
            self.ray.init()
        for module in file_plugin_modules():
            self.ray.cloudpickle.register_pickle_by_value(module)
        self._remote = self.ray.remote(_Actor).options(**self.options)
        self._reward = self.ray.put(fn)
        self.actors = [self._remote.remote(self._reward) for _ in range(self.workers)]
        self.ray.get([actor.ready.remote() for actor in self.actors])

    def _replace(self, index: int) -> None:
        self.ray.kill(self.actors[index])
        self.actors[index] = self._remote.remote(self._reward)
        self.ray.get(self.actors[index].ready.remote())

    def _run(self, chunks: list[tuple[Sequence[Any], Sequence[Any] | None]], every_target: bool) -> list[Outcome]:
        refs = [actor.score.remote(samples, targets, every_target)
                for actor, (samples, targets) in zip(self.actors, chunks, strict=False)]
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=self.timeout)
        outcomes: list[Outcome] = []
        for index, ref in enumerate(refs):
            if ref not in done:
                outcomes.append(("timeout", f"took longer than {self.timeout} s"))
                self._replace(index)
                continue
            try:
                outcomes.append(self.ray.get(ref))
            except self.ray.exceptions.RayActorError as error:
                outcomes.append(("crash", f"killed its Ray actor ({type(error).__name__})"))
                self._replace(index)
            except Exception as error:  # e.g. an answer that cannot be sent back
                outcomes.append(("exception", f"{type(error).__name__}: {error}"))
        return outcomes

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
