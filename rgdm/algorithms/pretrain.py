"""Plain denoising pre-training on the data: the reference model ``p_ref``."""

from __future__ import annotations

from typing import Literal

import torch

from rgdm.algorithms.base import Algorithm, DenoisingRows, TrainingContext
from rgdm.algorithms.config import AlgorithmConfig, InputPerturbation


class Pretrain(Algorithm):
    """The denoising loss on data rows, with input perturbation of strength ``input_perturbation``
    (``rgdm.diffusion.loss.denoising_loss``; 0: none)."""

    name = "pretrain"

    def __init__(self, input_perturbation: float = 0.0) -> None:
        self.input_perturbation = input_perturbation

    def draw_rows(self, ctx: TrainingContext, step: int, generator: torch.Generator) -> DenoisingRows:
        return DenoisingRows.draw(ctx.data.sample(ctx.batch_size, generator), ctx.model.diffusion, generator,
                                  self.input_perturbation)

    def row_losses(self, ctx: TrainingContext, rows: DenoisingRows) -> tuple[torch.Tensor, dict[str, float]]:
        return rows.losses(ctx.model), {}


class PretrainConfig(AlgorithmConfig):
    """``pretrain``: the shared settings (``targets`` trains a conditional model) and input perturbation."""

    name: Literal["pretrain"] = "pretrain"
    input_perturbation: InputPerturbation = 0.0

    def build(self, total_steps: int, num_targets: int) -> Pretrain:
        return Pretrain(self.input_perturbation)
