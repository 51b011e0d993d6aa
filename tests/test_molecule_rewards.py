"""The molecules domain's registered rewards: declared largest values, the parametrised SMARTS reward, the
property reward's one prediction per molecule for every target, and evaluation through the runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rgdm.domains import build_domain
from rgdm.domains.molecules.chemistry import Molecule, molecule_from_smiles
from rgdm.domains.molecules.rewards import MOLECULE_REWARDS, PropertyReward
from rgdm.rewards import BlackBoxReward, resolve_reward


def test_every_reward_declares_its_largest_value():
    expected = {"qed": 1.0, "sa": 1.0, "logp": None, "smarts": 1.0, "xtb-strain": 0.0}
    for name, reward in MOLECULE_REWARDS.items():
        assert reward.max_value == expected[name.removesuffix("-closed-shell")], name


def test_smarts_is_reachable_by_a_parametrised_name():
    benzene, methane, ethanol = (molecule_from_smiles(s) for s in ("c1ccccc1", "C", "CCO"))
    ring = resolve_reward("smarts:c1ccccc1", MOLECULE_REWARDS)
    assert ring.fn([methane, benzene, ethanol]) == [0.0, 1.0, 0.0] and ring.max_value == 1.0
    aromatic_bond = resolve_reward("smarts:c:c", MOLECULE_REWARDS)
    assert aromatic_bond.fn([methane, benzene]) == [0.0, 1.0], "a pattern keeps its own colons"
    with pytest.raises(ValueError, match="invalid SMARTS pattern"):
        resolve_reward("smarts:C(((", MOLECULE_REWARDS)
    with pytest.raises(ValueError, match="smarts:ARG"):
        resolve_reward("smarts", MOLECULE_REWARDS)


def test_the_property_reward_predicts_each_molecule_once_for_every_target():
    predicted: list[int] = []

    def predict(molecules):
        predicted.append(len(molecules))
        return torch.tensor([float(len(m.atomic_numbers)) for m in molecules]), np.array([True, True, False])

    reward = PropertyReward(predict, scale=2.0)  # -|f(x) - c| / s, in the property's standard deviations
    molecules = [molecule_from_smiles(s) for s in ("C", "CC", "CCC")]  # 5, 8 and 11 atoms
    grid = reward.score_targets(molecules, [0.0, 6.0])
    assert predicted == [3]
    np.testing.assert_allclose(grid, [[-2.5, -4.0, np.nan], [-0.5, -1.0, np.nan]])
    for row, target in zip(grid, [0.0, 6.0], strict=True):
        np.testing.assert_allclose(reward(molecules, [target] * 3), row)
    with pytest.raises(ValueError, match="needs targets"):
        reward(molecules, None)
    predicted.clear()
    result = BlackBoxReward(reward, floor=-100.0).score_targets(molecules, [0.0, 6.0])
    assert predicted == [3], "one prediction for all targets through the runtime"
    assert result.valid.tolist() == [[True, True, False]] * 2


@pytest.fixture(scope="module")
def domain():
    return build_domain({"name": "molecules", "subset": 50})


def encoded(domain, molecules: list[Molecule]):
    width = max(len(m.atomic_numbers) for m in molecules)
    numbers = np.zeros((len(molecules), width), np.int64)
    positions = np.zeros((len(molecules), width, 3))
    for row, mol in enumerate(molecules):
        numbers[row, : len(mol.atomic_numbers)] = mol.atomic_numbers
        positions[row, : len(mol.atomic_numbers)] = mol.positions
    return domain.encode(numbers, positions)


def test_evaluate_takes_a_parametrised_reward_and_survives_a_raising_one(domain, tmp_path):
    batch = encoded(domain, [molecule_from_smiles(s) for s in ("c1ccccc1", "C", "CCO", "Cc1ccccc1")])
    metrics = domain.evaluate(batch, "smarts:c1ccccc1", None, torch.Generator())
    assert metrics["mean_reward"] == pytest.approx(0.5) and metrics["reward_valid"] == 1.0
    (tmp_path / "broken.py").write_text("def score(samples):\n    raise RuntimeError('no licence')\n")
    metrics = domain.evaluate(batch, f"{tmp_path / 'broken.py'}:score", None, torch.Generator())
    assert metrics["mean_reward"] is None and metrics["reward_valid"] == 0.0
    assert math.isfinite(metrics["validity"]), "the other metrics are still measured"


def test_evaluate_averages_over_the_valid_molecules_only(domain):
    benzene, methane = molecule_from_smiles("c1ccccc1"), molecule_from_smiles("C")
    radical = Molecule(methane.atomic_numbers[:4], methane.positions[:4])  # CH3: scored only by plain QED
    metrics = domain.evaluate(encoded(domain, [benzene, radical]), "qed-closed-shell", None, torch.Generator())
    assert metrics["reward_valid"] == 0.5
    assert metrics["mean_reward"] == pytest.approx(MOLECULE_REWARDS["qed"].fn([benzene])[0], rel=1e-6)
