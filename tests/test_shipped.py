"""Every shipped checkpoint loads (weights against their checksum) and samples finite values."""

from __future__ import annotations

import pytest
import torch

from rgdm.engine import generate, load_trained
from rgdm.engine.builder import seeded_generator
from rgdm.engine.registry import shipped_models


def test_the_shipped_checkpoints_are_the_documented_ones():
    assert set(shipped_models()) >= {"toy-ring-pretrained", "toy-rare-ring-pretrained", "qm9-pretrained",
                                     "qm9-noh-pretrained", "qm9-edm-small", "shapes-pretrained", "shapes-rgdm",
                                     "airplanes-pretrained", "qm9-noh-rgdm-qed", "qm9-edm-small-rgdm-qed",
                                     "qm9-noh-rgdm-xtb", "qm9-rgdm-xtb"}


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_checkpoint_loads_and_samples(name):
    model = load_trained(name)
    batch = generate(model, 2, seeded_generator(0), steps=2)
    assert len(batch) == 2 and torch.isfinite(batch.x).all()


@pytest.mark.parametrize("half", ["a", "b"])
def test_the_shipped_six_property_predictors_with_hydrogens_are_within_twice_their_limits_on_test_molecules(half):
    """``qm9-all-a`` rewards and ``qm9-all-b`` measures property targets with hydrogens: on 200 test molecules
    every property's error stays within twice the oracle limit (their full test MAEs are within the limits)."""
    from rgdm.domains import build_domain
    from rgdm.domains.molecules.properties import MAE_LIMITS, PropertyPredictor

    predictor = PropertyPredictor.load(f"qm9-all-{half}")
    assert predictor.meta["split"] == f"train_{half}" and predictor.meta["domain"]["hydrogens"]
    domain = build_domain({"name": "molecules"})
    test = domain.molecules("test")
    rows = slice(0, 200)
    batch = domain.encode(test.atomic_numbers[rows], test.positions[rows])
    for name in MAE_LIMITS:
        error = (predictor.predict(batch, property_name=name) - torch.as_tensor(test.properties[name][rows])).abs()
        assert float(error.mean()) < 2 * MAE_LIMITS[name], name
