"""Plain denoising pre-training on the data: the reference model ``p_ref``."""

from __future__ import annotations

import torch

from rgdm.algorithms.base import Algorithm, TrainingContext
from rgdm.algorithms.rgdm import weighted_denoising_loss


class Pretrain(Algorithm):
    name = "pretrain"

    def loss(self, ctx: TrainingContext, step: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, dict[str, float]]:
        batch = ctx.data.sample(ctx.batch_size, generator)
        return weighted_denoising_loss(ctx.model, batch, generator, ctx.shard), {}
