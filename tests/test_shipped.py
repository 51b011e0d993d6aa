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
                                     "airplanes-pretrained", "qm9-noh-rgdm-qed", "qm9-edm-small-rgdm-qed"}


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_checkpoint_loads_and_samples(name):
    model = load_trained(name)
    batch = generate(model, 2, seeded_generator(0), steps=2)
    assert len(batch) == 2 and torch.isfinite(batch.x).all()


@pytest.mark.parametrize(("half", "split"), [("a", "train_a"), ("b", "train_b")])
def test_the_shipped_alpha_predictors_predict_held_out_molecules(half, split):
    from rgdm.domains import build_domain
    from rgdm.domains.molecules.properties import PropertyPredictor

    predictor = PropertyPredictor.load(f"qm9-alpha-{half}")
    assert predictor.meta["split"] == split, "one predictor rewards (train_a), the other measures (train_b)"
    domain = build_domain({"name": "molecules"})
    test = domain.molecules("test")
    rows = slice(0, 200)
    predicted = predictor.predict(domain.encode(test.atomic_numbers[rows], test.positions[rows]))
    error = (predicted - torch.as_tensor(test.properties["alpha"][rows])).abs().mean()
    assert float(error) < 1.5, "far below the 'naive' error of about 6 bohr^3 (the spread of alpha)"


def test_the_shipped_six_property_predictor_with_hydrogens_is_within_twice_its_limits_on_test_molecules():
    """``qm9-all-b`` measures property targets with hydrogens: on 200 test molecules every property's error
    stays within twice the oracle limit (its full test MAE is within the limit itself)."""
    from rgdm.domains import build_domain
    from rgdm.domains.molecules.properties import MAE_LIMITS, PropertyPredictor

    predictor = PropertyPredictor.load("qm9-all-b")
    assert predictor.meta["split"] == "train_b" and predictor.meta["domain"]["hydrogens"]
    domain = build_domain({"name": "molecules"})
    test = domain.molecules("test")
    rows = slice(0, 200)
    batch = domain.encode(test.atomic_numbers[rows], test.positions[rows])
    for name in MAE_LIMITS:
        error = (predictor.predict(batch, property_name=name) - torch.as_tensor(test.properties[name][rows])).abs()
        assert float(error.mean()) < 2 * MAE_LIMITS[name], name
