"""Rewards in the training process, in worker processes and on Ray: the same isolation, budget and
timeouts everywhere, and a hang or a crash costs only its samples, never the run."""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from rgdm.rewards import (
    BlackBoxReward,
    BudgetExhausted,
    Executor,
    InProcess,
    RayExecutor,
    RewardCounter,
    WorkerPool,
    load_reward_function,
)

# The rewards live in a plugin file, as a user's would: Ray ships such a file's functions by value, and
# the worker pool forks with them loaded.
REWARDS = """
    import os
    import time

    def square(samples):
        return [float(s) ** 2 for s in samples]

    def targeted(samples, targets):
        return [float(s == t) for s, t in zip(samples, targets, strict=True)]

    def fragile(samples, targets):
        if any(s < 0 for s in samples):
            raise RuntimeError("negative sample")
        return [float("nan") if s == 0 else float(s * t) for s, t in zip(samples, targets, strict=True)]

    def hangs_on_negative(samples):
        if any(s < 0 for s in samples):
            time.sleep(600)
        return [float(s) for s in samples]

    def dies_on_seven(samples):
        if 7 in list(samples):
            os._exit(1)  # a crash in native code looks like this to the parent
        return [float(s) for s in samples]

    class Offset:
        def __call__(self, samples, targets):
            return [float(s - t) for s, t in zip(samples, targets, strict=True)]

        def score_targets(self, samples, targets):
            return [[float(s - t) for s in samples] for t in targets]

    offset = Offset()
"""


@pytest.fixture(scope="module")
def rewards(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    path = tmp_path_factory.mktemp("rewards") / "executor_rewards.py"
    path.write_text(textwrap.dedent(REWARDS))
    names = ["square", "targeted", "fragile", "hangs_on_negative", "dies_on_seven", "offset"]
    return SimpleNamespace(**{name: load_reward_function(f"{path}:{name}") for name in names})


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """A local Ray instance for this module, shut down after it (no processes stay behind)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # logical: two executors of two actors
    yield
    ray.shutdown()


EXECUTORS: dict[str, Callable[[float | None], Executor]] = {
    "in-process": lambda timeout: InProcess(),
    "worker-pool": lambda timeout: WorkerPool(2, timeout),
    "ray": lambda timeout: RayExecutor(2, timeout),
}


@pytest.fixture
def make_executor(request: pytest.FixtureRequest) -> Iterator[Callable[..., Executor]]:
    """Fresh executors of a kind (a local Ray instance for ``ray``), all closed after the test."""
    made: list[Executor] = []

    def make(kind: str, timeout: float | None = None) -> Executor:
        if kind == "ray":
            request.getfixturevalue("ray_instance")
        made.append(EXECUTORS[kind](timeout))
        return made[-1]

    yield make
    for executor in made:
        executor.close()


@pytest.mark.parametrize("kind", list(EXECUTORS))
def test_every_executor_isolates_failures_charges_the_budget_and_scores_every_target(kind, make_executor, rewards):
    counter = RewardCounter(limit=20)
    fragile = BlackBoxReward(rewards.fragile, floor=-1.0, counter=counter, executor=make_executor(kind))
    result = fragile([1, -2, 0, 3], [10, 10, 10, 10])
    assert result.values.tolist() == [10.0, -1.0, -1.0, 30.0]
    assert result.valid.tolist() == [True, False, False, True]
    assert dict(counter.failures) == {"exception": 1, "nan": 1} and counter.invalid == 2 and counter.calls == 4

    # every sample against every target: one call per target, or the function's own score_targets
    assert fragile.score_targets([1, 2, 3], [1, 2]).values.tolist() == [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]
    offset = BlackBoxReward(rewards.offset, counter=counter, executor=make_executor(kind))
    assert offset.score_targets([5, 6, 7], [1, 2]).values.tolist() == [[4.0, 5.0, 6.0], [3.0, 4.0, 5.0]]
    assert counter.calls == 16

    # the budget is charged before the executor runs anything
    scored: list[int] = []
    score = offset.executor.score
    offset.executor.score = lambda *args, **kwargs: scored.append(1) or score(*args, **kwargs)
    with pytest.raises(BudgetExhausted):
        offset([1, 2, 3, 4, 5], [0] * 5)
    assert scored == [] and counter.calls == 16
    assert offset([1, 2, 3, 4], [1] * 4).values.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert scored == [1] and counter.calls == 20
    assert offset([], []).values.tolist() == [] and fragile.score_targets([], [1, 2]).values.shape == (2, 0)


def test_pooled_scores_equal_in_process_scores(rewards):
    samples = np.arange(10)
    pooled = BlackBoxReward(rewards.square, workers=2)
    targeted = BlackBoxReward(rewards.targeted, workers=2)
    try:
        assert pooled(samples).values.tolist() == BlackBoxReward(rewards.square)(samples).values.tolist()
        assert pooled.counter.calls == 10
        assert targeted(np.arange(4), [0, 0, 2, 2]).values.tolist() == [1, 0, 1, 0]
    finally:
        pooled.close()
        targeted.close()


#: Seconds a one-second timeout may take to give back a ten-minute hang: a pool worker is replaced in
#: well under a second; a Ray actor takes seconds to start, and far more on a loaded machine.
TIMEOUT_BOUND = {"worker-pool": 10, "ray": 120}


@pytest.mark.parametrize("kind", ["worker-pool", "ray"])
def test_a_hanging_reward_times_out_and_marks_only_its_chunk(kind, make_executor, rewards):
    counter = RewardCounter()
    reward = BlackBoxReward(rewards.hangs_on_negative, counter=counter, floor=-5.0,
                            executor=make_executor(kind, timeout=1.0))
    start = time.perf_counter()
    result = reward(np.array([1, 2, -1, 3]))
    assert time.perf_counter() - start < TIMEOUT_BOUND[kind]
    assert result.valid.tolist() == [True, True, False, False]
    assert result.values.tolist() == [1.0, 2.0, -5.0, -5.0]
    assert counter.failures["timeout"] == 2
    assert reward(np.array([4, 5])).values.tolist() == [4.0, 5.0], "the killed worker is replaced"


@pytest.mark.parametrize("kind", ["worker-pool", "ray"])
def test_a_crashing_worker_is_counted_and_replaced(kind, make_executor, rewards):
    counter = RewardCounter()
    reward = BlackBoxReward(rewards.dies_on_seven, counter=counter, executor=make_executor(kind))
    result = reward(np.array([7, 1]))
    assert result.valid.tolist() == [False, True]
    assert counter.failures["crash"] == 1
    assert reward(np.array([2, 3])).valid.all()


def test_pooled_rewards_accept_the_workers_and_timeout_arguments(rewards):
    reward = BlackBoxReward(rewards.hangs_on_negative, workers=2, timeout=1.0, floor=-5.0)
    try:
        assert reward(np.array([1, 2, -1, 3])).values.tolist() == [1.0, 2.0, -5.0, -5.0]
    finally:
        reward.close()


@pytest.mark.parametrize("make", [lambda: WorkerPool(1, timeout=-1.0), lambda: RayExecutor(1, timeout=0.0),
                                  lambda: WorkerPool(0)])
def test_pool_settings_are_validated(make):
    with pytest.raises(ValueError, match=r"timeout|at least one worker"):
        make()
    with pytest.raises(ValueError, match="timeout"):
        BlackBoxReward(lambda samples: samples, timeout=-1.0)


def test_ray_actor_options_add_to_one_cpu_each():
    assert RayExecutor(2, options={"num_gpus": 1}).options == {"num_cpus": 1, "num_gpus": 1}
    assert RayExecutor(2, options={"num_cpus": 4}).options == {"num_cpus": 4}


def test_the_ray_executor_names_the_extra_when_ray_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'rgdm\[ray\]'"):
        RayExecutor()


def test_domain_rewards_run_in_workers_without_pickling_closures():
    from rgdm.domains.toy import ToyDomain
    from rgdm.engine import make_scorer
    from rgdm.engine.config import RewardConfig

    domain = ToyDomain()
    counter = RewardCounter()
    scorer = make_scorer(RewardConfig(name="region", workers=2, timeout=30), domain, counter)
    result = scorer(domain.mixture.means)
    assert result.values.tolist() == [1.0] + [0.0] * 7
    assert counter.calls == 8
    scorer.reward.close()
