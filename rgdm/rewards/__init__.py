"""Rewards: the black-box protocol, failure isolation, the shared budget, plugins and scoring."""

from rgdm.rewards.base import (
    BlackBoxReward,
    BudgetExhausted,
    Reward,
    RewardCounter,
    RewardResult,
)
from rgdm.rewards.plugin import RewardPluginError, load_reward_function
from rgdm.rewards.scorer import Scorer

__all__ = [
    "BlackBoxReward",
    "BudgetExhausted",
    "Reward",
    "RewardCounter",
    "RewardPluginError",
    "RewardResult",
    "Scorer",
    "load_reward_function",
]
