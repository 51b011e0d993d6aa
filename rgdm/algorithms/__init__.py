"""Training objectives and guided samplers; they see tensors, never a domain."""

from rgdm.algorithms.base import Algorithm, TrainingContext
from rgdm.algorithms.guided_sampling import CandidateSelection, GradientStep
from rgdm.algorithms.payoff import DataPayoff, ModelPayoff, StepwiseExploration
from rgdm.algorithms.pretrain import Pretrain

__all__ = [
    "Algorithm",
    "CandidateSelection",
    "DataPayoff",
    "GradientStep",
    "ModelPayoff",
    "Pretrain",
    "StepwiseExploration",
    "TrainingContext",
]
