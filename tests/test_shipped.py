"""Every shipped checkpoint loads (weights against their checksum) and samples finite values."""

from __future__ import annotations

import pytest
import torch

from rgdm.engine import generate, load_trained
from rgdm.engine.builder import seeded_generator
from rgdm.engine.registry import shipped_models


def test_the_shipped_checkpoints_are_the_documented_ones():
    assert set(shipped_models()) >= {"toy-ring-pretrained", "toy-rare-ring-pretrained", "qm9-pretrained",
                                     "shapes-pretrained", "shapes-rgdm", "airplanes-pretrained"}


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_checkpoint_loads_and_samples(name):
    model = load_trained(name)
    batch = generate(model, 2, seeded_generator(0), steps=2)
    assert len(batch) == 2 and torch.isfinite(batch.x).all()
