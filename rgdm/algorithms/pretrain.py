"""Plain denoising pre-training on the data: the reference model ``p_ref``."""

from __future__ import annotations

from typing import Literal

import torch

from rgdm.algorithms.base import Algorithm, DenoisingRows, TrainingContext
from rgdm.algorithms.config import AlgorithmConfig


class Pretrain(Algorithm):
    name = "pretrain"

    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> DenoisingRows:
        return DenoisingRows.draw(ctx.data.sample(ctx.batch_size, generator), ctx.model.diffusion, generator)

    def row_losses(self, ctx: TrainingContext, rows: DenoisingRows) -> tuple[torch.Tensor, dict[str, float]]:
        return rows.losses(ctx.model), {}


class PretrainConfig(AlgorithmConfig):
    """``pretrain``: no settings beyond the shared ones (``targets`` trains a conditional model)."""

    name: Literal["pretrain"] = "pretrain"

    def build(self, total_steps: int, num_targets: int) -> Pretrain:
        return Pretrain()
