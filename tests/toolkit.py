"""Small models, rewards and scorers shared by the algorithm tests."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from rgdm.algorithms.base import DenoisingRows, TrainingContext
from rgdm.algorithms.rgdm_stepwise import StepwiseLoss, StepwiseStats
from rgdm.batch import Batch
from rgdm.diffusion import EpsModel, GaussianDiffusion, NoiseSchedule, sample
from rgdm.domains.molecules.chemistry import Molecule, molecule_from_smiles
from rgdm.domains.toy.network import MLPDenoiser
from rgdm.rewards import BlackBoxReward, RewardCounter, Scorer


def make_model(dim: int = 2, timesteps: int = 50, seed: int = 0) -> EpsModel:
    """A small randomly initialised denoiser (every weight random, so outputs differ by input)."""
    torch.manual_seed(seed)
    net = MLPDenoiser(dim, num_targets=3, width=32, depth=2)
    for p in net.parameters():  # the zero-initialised output layer would hide differences
        nn.init.normal_(p, std=0.1)
    return EpsModel(net, GaussianDiffusion(NoiseSchedule.create("linear", timesteps)))


def make_scorer(fn, counter: RewardCounter | None = None, decode=lambda x, mask: x.numpy()) -> Scorer:
    counter = counter or RewardCounter()
    return Scorer(BlackBoxReward(fn, counter=counter), decode, counter)


def denoising_losses(model: EpsModel, batch: Batch, generator: torch.Generator) -> torch.Tensor:
    """Each row's denoising loss, its time and noise drawn from ``generator``."""
    return DenoisingRows.draw(batch, model.diffusion, generator).losses(model)


def stepwise_loss(model: EpsModel, value_model: EpsModel, scorer: Scorer, batch: Batch,
                       generator: torch.Generator, **options) -> tuple[torch.Tensor, StepwiseStats | None]:
    """The step-wise loss (``StepwiseLoss(**options)``) of ``batch`` in one process: the mean row loss, the stats."""
    loss = StepwiseLoss(**options)
    losses, stats = loss(model, value_model, scorer, loss.draw(batch, model.diffusion, generator))
    return losses.mean(), stats


def right_half(samples):
    """Reward 1 on the right half plane."""
    return (samples[:, 0] > 0).astype(float)


def train_gaussian_model() -> EpsModel:
    """A small model of N(0, I) in 2-D, trained briefly: the reference for fine-tuning tests."""
    torch.manual_seed(0)
    model = EpsModel(MLPDenoiser(2, width=64, depth=2), GaussianDiffusion(NoiseSchedule.create("linear", 40)))
    optimizer = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    data = Batch(torch.randn(4000, 2, generator=generator))
    for _ in range(400):
        loss = denoising_losses(model, data.sample(256, generator), generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def right_half_shares(reference: EpsModel, algorithm, steps: int) -> tuple[float, float]:
    """Fine-tune a copy of ``reference`` with ``algorithm`` on ``right_half`` for ``steps`` updates;
    return the right-half share of samples before and after (same seed)."""
    model = EpsModel(copy.deepcopy(reference.net), reference.diffusion)
    generator = torch.Generator().manual_seed(1)
    context = TrainingContext(model=model, ema=model, reference=reference,
                              data=Batch(torch.randn(4000, 2, generator=generator)),
                              scorer=make_scorer(right_half), batch_size=128,
                              prior=lambda n, g, cond: Batch(torch.zeros(n, 2), cond=cond))
    optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    algorithm.setup(context, generator)
    for step in range(steps):
        loss, _ = algorithm.loss(context, step, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    before = sample(reference, (2000, 2), generator=torch.Generator().manual_seed(2)).x0
    after = sample(model, (2000, 2), generator=torch.Generator().manual_seed(2)).x0
    return float(right_half(before.numpy()).mean()), float(right_half(after.numpy()).mean())


def broken_valence() -> Molecule:
    """A carbon bonded to five hydrogens: a hand-made molecule no valence table allows."""
    positions = np.array([[0, 0, 0], [1.1, 0, 0], [-1.1, 0, 0], [0, 1.1, 0], [0, -1.1, 0], [0, 0, 1.1]], float)
    bonds = np.zeros((6, 6), np.int64)
    bonds[0, 1:] = bonds[1:, 0] = 1
    return Molecule(np.array([6, 1, 1, 1, 1, 1]), positions, bonds, np.zeros(6, np.int64))


def hand_made_molecules() -> list[Molecule]:
    """Methane, benzene (aromatic bonds) and a broken valence, with their bonds and charges."""
    return [molecule_from_smiles("C", with_bonds=True), molecule_from_smiles("c1ccccc1", with_bonds=True),
            broken_valence()]
