"""Training objectives and samplers: RGDM's estimators and the peers, on tensors, never a domain."""

from rgdm.algorithms.base import Algorithm, TrainingContext
from rgdm.algorithms.best_of_n import best_of_n
from rgdm.algorithms.cfg import ConditionalFinetune, GuidedEpsModel, reward_classes
from rgdm.algorithms.classifier_guidance import ClassifierGuidance, RegressorFit, train_regressor
from rgdm.algorithms.ddpo import DDPO
from rgdm.algorithms.guided_sampling import GradientStep, GreedySelection
from rgdm.algorithms.pretrain import Pretrain
from rgdm.algorithms.rgdm_data import DataPayoff
from rgdm.algorithms.rgdm_model import ModelPayoff
from rgdm.algorithms.rgdm_stepwise import StepwiseExploration
from rgdm.algorithms.rwr import RWR
from rgdm.algorithms.smc import SequentialMonteCarlo
from rgdm.algorithms.svdd import svdd

__all__ = [
    "DDPO",
    "RWR",
    "Algorithm",
    "ClassifierGuidance",
    "ConditionalFinetune",
    "DataPayoff",
    "GradientStep",
    "GreedySelection",
    "GuidedEpsModel",
    "ModelPayoff",
    "Pretrain",
    "RegressorFit",
    "SequentialMonteCarlo",
    "StepwiseExploration",
    "TrainingContext",
    "best_of_n",
    "reward_classes",
    "svdd",
    "train_regressor",
]
