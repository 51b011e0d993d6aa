"""Bond perception, stability, validity, metrics and rewards of the QM9 molecules domain on hand-made molecules."""

import math

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import QED, Crippen

from rgdm.domains.molecules.chemistry import (
    Molecule,
    atom_stability,
    canonical_smiles,
    canonicalize_smiles,
    chemistry_metrics,
    is_stable,
    molecule_from_smiles,
    perceive_bonds,
    split_off_fragments,
    to_rdkit,
)
from rgdm.domains.molecules.rewards import (
    MOLECULE_REWARDS,
    logp,
    qed,
    qm9_qed_percentile,
    sa_score,
    substructure,
)
from rgdm.rewards import resolve_reward

CARBON, HYDROGEN = 6, 1


@pytest.fixture(scope="module")
def methane() -> Molecule:
    return molecule_from_smiles("C")


@pytest.fixture(scope="module")
def benzene() -> Molecule:
    return molecule_from_smiles("c1ccccc1")


@pytest.fixture(scope="module")
def ch3_radical(methane) -> Molecule:
    """Methane with its last hydrogen removed: the carbon is one bond short."""
    return Molecule(methane.atomic_numbers[:4], methane.positions[:4])


@pytest.fixture(scope="module")
def two_methanes(methane) -> Molecule:
    """Two methanes 10 Å apart in one molecule: every atom stable, but two fragments."""
    return Molecule(np.concatenate([methane.atomic_numbers] * 2),
                    np.concatenate([methane.positions, methane.positions + np.array([10.0, 0.0, 0.0])]))


def ideal_benzene(carbon_carbon: float, carbon_hydrogen: float = 1.09) -> Molecule:
    """A regular hexagon of carbons (side ``carbon_carbon`` Å) with radial hydrogens, as in DFT geometries."""
    angles = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
    return Molecule(np.array([CARBON] * 6 + [HYDROGEN] * 6),
                    np.concatenate([ring * carbon_carbon, ring * (carbon_carbon + carbon_hydrogen)]))


def carbon_carbon_orders(mol: Molecule, kekulize: bool = True) -> list[int]:
    orders = perceive_bonds(mol, kekulize)
    carbons = np.flatnonzero(mol.atomic_numbers == CARBON)
    return sorted(int(orders[i, j]) for i in carbons for j in carbons if i < j and orders[i, j] > 0)


def test_molecule_validates_its_arrays():
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        Molecule(np.array([6, 1]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unsupported atomic numbers \\[17\\]"):
        Molecule(np.array([6, 17]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="1-D integer"):
        Molecule(np.array([6.0, 1.0]), np.zeros((2, 3)))
    mol = Molecule([8, 1, 1], np.zeros((3, 3)))
    assert mol.symbols == ("O", "H", "H")
    assert len(mol) == 3
    with pytest.raises(ValueError, match="read-only"):
        mol.positions[0, 0] = 1.0


def test_methane_has_four_single_bonds_and_is_valid(methane):
    orders = perceive_bonds(methane)
    assert len(methane) == 5
    assert np.array_equal(orders, orders.T) and not orders.diagonal().any()
    carbon = int(np.flatnonzero(methane.atomic_numbers == CARBON)[0])
    assert sorted(orders[carbon].tolist()) == [0, 1, 1, 1, 1]
    assert int(np.triu(orders).sum()) == 4  # no hydrogen-hydrogen bonds
    assert atom_stability(methane).all() and is_stable(methane)
    assert canonical_smiles(methane) == "C"


def test_benzene_is_stable_and_aromatic_after_kekulization(benzene):
    carbons = np.flatnonzero(benzene.atomic_numbers == CARBON)
    distances = np.linalg.norm(benzene.positions[carbons][:, None] - benzene.positions[carbons][None], axis=-1)
    ring_bonds = distances[(distances > 0) & (distances < 1.5)]
    assert np.allclose(ring_bonds, 1.395, atol=0.01)  # MMFF's aromatic C-C length
    # EDM's tables alone read every 1.395 Å C-C as single (double needs < 134 + 5 pm): carbons one bond short.
    assert carbon_carbon_orders(benzene, kekulize=False) == [1] * 6
    assert not is_stable(benzene, kekulize=False)
    assert carbon_carbon_orders(benzene) == [1, 1, 1, 2, 2, 2]
    orders = perceive_bonds(benzene)
    assert all(sorted(orders[c][carbons].tolist()).count(2) == 1 for c in carbons)  # alternating
    assert is_stable(benzene)
    assert canonical_smiles(benzene) == "c1ccccc1"


@pytest.mark.parametrize("carbon_carbon", [1.39, 1.40])
def test_dft_like_benzene_geometries_are_stable(carbon_carbon):
    mol = ideal_benzene(carbon_carbon)
    assert is_stable(mol)
    assert carbon_carbon_orders(mol) == [1, 1, 1, 2, 2, 2]
    assert canonical_smiles(mol) == "c1ccccc1"


@pytest.mark.parametrize("smiles", ["c1ccncc1", "c1cc[nH]c1", "c1ccoc1", "c1ccc2ccccc2c1", "CC#N", "O=CO", "C=C=O"])
def test_conjugated_and_multiple_bonds_are_stable_and_round_trip(smiles):
    mol = molecule_from_smiles(smiles)
    assert is_stable(mol)
    assert canonical_smiles(mol) == canonicalize_smiles(smiles)


def test_kekulization_leaves_unfixable_atoms_alone(ch3_radical):
    assert np.array_equal(perceive_bonds(ch3_radical), perceive_bonds(ch3_radical, kekulize=False))


def test_carbon_one_bond_short_is_unstable_radical(ch3_radical):
    stable = atom_stability(ch3_radical)
    assert stable.tolist() == [False, True, True, True]  # the carbon comes first
    assert not is_stable(ch3_radical)
    # It sanitises as a radical (no hydrogens are invented), so it is valid but distinct from methane.
    assert canonical_smiles(ch3_radical) == "[CH3]"


def test_carbon_with_five_neighbours_is_unstable_and_invalid(methane):
    carbon = methane.positions[0]
    extra_hydrogen = carbon - (methane.positions[1] - carbon)  # opposite the first hydrogen, 1.09 Å away
    mol = Molecule(np.append(methane.atomic_numbers, HYDROGEN), np.vstack([methane.positions, extra_hydrogen]))
    assert perceive_bonds(mol)[0].sum() == 5
    assert atom_stability(mol).tolist() == [False] + [True] * 5
    assert not is_stable(mol)
    assert to_rdkit(mol) is None and canonical_smiles(mol) is None


def test_disconnected_molecules_are_invalid(two_methanes):
    assert is_stable(two_methanes)
    assert to_rdkit(two_methanes) is not None  # sanitises ...
    assert canonical_smiles(two_methanes) is None  # ... but is two fragments


def test_to_rdkit_keeps_positions_and_hydrogens(benzene):
    rdkit_mol = to_rdkit(benzene)
    assert rdkit_mol.GetNumAtoms() == 12
    assert rdkit_mol.GetConformer().Is3D()
    assert np.allclose(rdkit_mol.GetConformer().GetPositions(), benzene.positions)


def test_canonicalize_smiles_matches_canonical_smiles_and_drops_stereo():
    assert canonicalize_smiles("OCC") == canonical_smiles(molecule_from_smiles("OCC")) == "CCO"
    assert canonicalize_smiles("C[C@H](O)F") == "CC(O)F"
    assert canonicalize_smiles("C1CC") is None


def test_molecule_from_smiles_rejects_bad_input():
    with pytest.raises(ValueError, match="cannot parse"):
        molecule_from_smiles("C1CC")
    with pytest.raises(ValueError, match="unsupported atomic numbers"):
        molecule_from_smiles("CCl")


def test_chemistry_metrics_counts_exactly(methane, benzene, ch3_radical, two_methanes):
    other_methane = molecule_from_smiles("C", seed=1)
    mols = [methane, other_methane, benzene, ch3_radical, two_methanes]
    metrics = chemistry_metrics(mols, training_smiles={"C"})
    # 36 atoms; only the radical's carbon is unstable. Valid: C, C, c1ccccc1, [CH3]; the fifth sanitises but is
    # two fragments; closed-shell: all valid but [CH3]; unique: 3; novel: 2.
    assert metrics == pytest.approx({"atom_stability": 35 / 36, "molecule_stability": 4 / 5, "validity": 4 / 5,
                                     "fragmented": 1 / 5, "closed_shell": 3 / 5, "uniqueness": 3 / 4,
                                     "novelty": 2 / 3, "n": 5.0})
    edm = chemistry_metrics(mols, training_smiles=None, kekulize=False)
    assert "novelty" not in edm
    assert edm["atom_stability"] == pytest.approx(29 / 36)  # benzene's six carbons are short of a bond
    assert edm["molecule_stability"] == pytest.approx(3 / 5)


def test_the_fragments_split_off_a_main_molecule_are_counted_by_smiles(methane, benzene, two_methanes):
    water = molecule_from_smiles("O")
    water_beside_benzene = Molecule(np.concatenate([benzene.atomic_numbers, water.atomic_numbers]),
                                    np.concatenate([benzene.positions, water.positions + np.array([10.0, 0.0, 0.0])]))
    assert split_off_fragments([methane, benzene, two_methanes, water_beside_benzene, two_methanes]) == {"C": 2, "O": 1}
    assert split_off_fragments([methane, benzene]) == {}


def test_chemistry_metrics_without_valid_molecules_reports_zeros(two_methanes):
    assert chemistry_metrics([], training_smiles=set()) == {
        "atom_stability": 0.0, "molecule_stability": 0.0, "validity": 0.0, "fragmented": 0.0, "closed_shell": 0.0,
        "uniqueness": 0.0, "novelty": 0.0, "n": 0.0}
    metrics = chemistry_metrics([two_methanes], training_smiles=set())
    assert metrics["validity"] == metrics["uniqueness"] == metrics["novelty"] == 0.0
    assert metrics["fragmented"] == 1.0
    assert metrics["molecule_stability"] == 1.0


def test_qed_and_logp_match_rdkit_on_the_smiles(benzene):
    reference = Chem.MolFromSmiles("c1ccccc1")
    assert qed([benzene]) == pytest.approx([QED.qed(reference)], abs=1e-9)
    assert logp([benzene]) == pytest.approx([Crippen.MolLogP(reference)], abs=1e-9)


@pytest.mark.parametrize("reward", [qed, logp, sa_score, substructure("C")])
def test_rewards_are_nan_for_invalid_molecules(reward, benzene, two_methanes):
    scores = reward([benzene, two_methanes])
    assert len(scores) == 2 and math.isfinite(scores[0]) and math.isnan(scores[1])


def test_sa_score_is_rescaled_to_unit_interval_and_prefers_simple_molecules(benzene):
    cage = molecule_from_smiles("C1C2C3C1C1CC=C3C21")  # a strained polycycle from QM9
    easy, hard = sa_score([benzene, cage])
    assert 0.0 <= hard < easy <= 1.0
    assert easy == pytest.approx(1.0, abs=0.01)  # benzene's SA score is about 1, the easiest


def test_substructure_reward_matches_smarts(methane, benzene):
    ethanol = molecule_from_smiles("CCO")
    assert substructure("c1ccccc1")([methane, benzene, ethanol]) == [0.0, 1.0, 0.0]
    assert substructure("[OX2H]")([methane, benzene, ethanol]) == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"'C\(\(\('"):
        substructure("C(((")


def test_closed_shell_rewards_score_radicals_as_failures(methane, ch3_radical, two_methanes):
    # The radical is valid, so the plain reward scores it; its closed-shell variant does not.
    for name in ("qed", "logp", "sa"):
        plain = MOLECULE_REWARDS[name].fn
        closed = MOLECULE_REWARDS[f"{name}-closed-shell"].fn
        methane_score, radical_score, fragments = plain([methane, ch3_radical, two_methanes])
        assert math.isfinite(radical_score) and math.isnan(fragments)
        scores = closed([methane, ch3_radical, two_methanes])
        assert scores[0] == methane_score and math.isnan(scores[1]) and math.isnan(scores[2])


def test_named_rewards_are_listed_with_descriptions(benzene):
    assert set(MOLECULE_REWARDS) == {"qed", "logp", "sa", "qed-closed-shell", "logp-closed-shell", "sa-closed-shell",
                                     "smarts", "xtb-strain"}
    for name, reward in MOLECULE_REWARDS.items():
        fn = resolve_reward(f"{name}:c1ccccc1" if reward.parse else name, MOLECULE_REWARDS).fn
        assert reward.description and len(fn([benzene, benzene])) == 2


def test_qed_percentile_over_smiles():
    smiles = ["C", "CCO", "c1ccccc1", "OC(=O)c1ccccc1", "CC(=O)Nc1ccc(O)cc1"]
    scores = [QED.qed(Chem.MolFromSmiles(s)) for s in smiles]
    assert qm9_qed_percentile(smiles, q=90) == pytest.approx(float(np.percentile(scores, 90)))
    assert qm9_qed_percentile(smiles, q=0) == pytest.approx(min(scores))
    with pytest.raises(ValueError, match="SMILES 1"):
        qm9_qed_percentile(["C", "C1CC"])
    with pytest.raises(ValueError, match="at least one"):
        qm9_qed_percentile([])
