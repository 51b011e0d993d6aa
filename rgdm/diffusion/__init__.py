"""Domain-agnostic diffusion maths: schedules, the Gaussian process, samplers and the denoising loss."""

from rgdm.diffusion.loss import denoising_loss, draw_training_noise, noise_error
from rgdm.diffusion.process import (
    GaussianDiffusion,
    Part,
    ReverseStep,
    Sample,
    identity_projection,
    sum_per_sample,
)
from rgdm.diffusion.sampling import (
    EpsModel,
    LangevinCorrector,
    SampleOutput,
    SamplingInterrupted,
    StepContext,
    Transition,
    TransitionResult,
    ancestral_transition,
    sample,
    timestep_pairs,
)
from rgdm.diffusion.schedule import NoiseSchedule
from rgdm.diffusion.self_conditioning import HintProjection

__all__ = [
    "EpsModel",
    "GaussianDiffusion",
    "HintProjection",
    "LangevinCorrector",
    "NoiseSchedule",
    "Part",
    "ReverseStep",
    "Sample",
    "SampleOutput",
    "SamplingInterrupted",
    "StepContext",
    "Transition",
    "TransitionResult",
    "ancestral_transition",
    "denoising_loss",
    "draw_training_noise",
    "identity_projection",
    "noise_error",
    "sample",
    "sum_per_sample",
    "timestep_pairs",
]
