"""Rewards in worker processes: a hang or a crash costs only its samples, never the run."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from rgdm.rewards import BlackBoxReward, RewardCounter


def square(samples):
    return [float(s) ** 2 for s in samples]


def hangs_on_negative(samples):
    if any(s < 0 for s in samples):
        time.sleep(60)
    return [float(s) for s in samples]


def dies_on_seven(samples):
    if 7 in list(samples):
        os._exit(1)  # a crash in native code looks like this to the parent
    return [float(s) for s in samples]


def targeted(samples, targets):
    return [float(s == t) for s, t in zip(samples, targets, strict=True)]


def test_pooled_scores_equal_in_process_scores():
    samples = np.arange(10)
    pooled = BlackBoxReward(square, workers=2)
    local = BlackBoxReward(square)
    assert pooled(samples).values.tolist() == local(samples).values.tolist()
    assert pooled.counter.calls == 10
    assert BlackBoxReward(targeted, workers=2)(np.arange(4), [0, 0, 2, 2]).values.tolist() == [1, 0, 1, 0]


def test_a_hanging_reward_times_out_and_marks_only_its_chunk():
    counter = RewardCounter()
    reward = BlackBoxReward(hangs_on_negative, counter=counter, workers=2, timeout=1.0, floor=-5.0)
    start = time.perf_counter()
    result = reward(np.array([1, 2, -1, 3]))
    assert time.perf_counter() - start < 10
    assert result.valid.tolist() == [True, True, False, False]
    assert result.values.tolist() == [1.0, 2.0, -5.0, -5.0]
    assert counter.failures["timeout"] == 2
    assert reward(np.array([4, 5])).values.tolist() == [4.0, 5.0], "the killed worker is replaced"


def test_a_crashing_worker_is_counted_and_replaced():
    counter = RewardCounter()
    reward = BlackBoxReward(dies_on_seven, counter=counter, workers=2)
    result = reward(np.array([7, 1]))
    assert result.valid.tolist() == [False, True]
    assert counter.failures["crash"] == 1
    assert reward(np.array([2, 3])).valid.all()


def test_pool_settings_are_validated():
    with pytest.raises(ValueError, match="timeout"):
        BlackBoxReward(square, timeout=-1.0)


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
