"""Rewards: the user's function, the registered spec that names it, and the runtime that scores it.

A user meets three names: a reward function ``fn(samples[, targets]) -> floats`` (``RewardFn``), a
registered ``Reward`` (a domain's named reward, or a parametrised family such as ``smarts:PATTERN``),
and the ``Scorer`` that decodes tensors and scores them through a ``BlackBoxReward``: failure
isolation, the shared budget and an executor (``InProcess``, ``WorkerPool``, ``RayExecutor``).
"""

from rgdm.rewards.base import BudgetExhausted, Reward, RewardCounter, RewardFn, RewardResult
from rgdm.rewards.executors import Executor, InProcess, RayExecutor, WorkerPool
from rgdm.rewards.plugin import RewardPluginError, find_registered, load_reward_function, resolve_reward
from rgdm.rewards.scorer import BlackBoxReward, Scorer

__all__ = [
    "BlackBoxReward",
    "BudgetExhausted",
    "Executor",
    "InProcess",
    "RayExecutor",
    "Reward",
    "RewardCounter",
    "RewardFn",
    "RewardPluginError",
    "RewardResult",
    "Scorer",
    "WorkerPool",
    "find_registered",
    "load_reward_function",
    "resolve_reward",
]
