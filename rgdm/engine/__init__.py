"""Engine: configs, checkpoints, the training loop, logging and sampling of trained models."""

from rgdm.engine.builder import LoadedModel, load_trained, make_scorer
from rgdm.engine.config import ConfigError, RunConfig, load_config
from rgdm.engine.generate import generate, make_transition
from rgdm.engine.trainer import Trainer
from rgdm.stopping import TrainingInterrupted

__all__ = [
    "ConfigError",
    "LoadedModel",
    "RunConfig",
    "Trainer",
    "TrainingInterrupted",
    "generate",
    "load_config",
    "load_trained",
    "make_scorer",
    "make_transition",
]
