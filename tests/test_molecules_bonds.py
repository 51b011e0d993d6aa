"""Bonds and formal charges of molecules from their geometry and SMILES, their cache, and the inverse."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from rgdm.domains.molecules import bonds as bonds_module
from rgdm.domains.molecules.bonds import (
    BOND_TYPES,
    CLOSE_CONTACT,
    MISSING_BONDS,
    OTHER_ATOMS,
    OTHER_HYDROGENS,
    UNPARSABLE,
    molecule_bonds,
    qm9_bonds,
)
from rgdm.domains.molecules.chemistry import Molecule, canonicalize_smiles, molecule_from_smiles, to_rdkit
from rgdm.domains.molecules.data import CACHE_NAME, MAX_ATOMS, PREVIOUS_CACHE_NAME, PROPERTIES, QM9, load_qm9
from rgdm.io import save_arrays

SINGLE, DOUBLE = BOND_TYPES.index("single"), BOND_TYPES.index("double")
#: Neutral, aromatic (with an [nH]), net-charged, zwitterions (the last two as in QM9: xyz2mol gives them
#: another resonance form, so their bonds come from the SMILES template), and strained cages whose
#: bridgeheads connect-the-dots joins (in the last, only the hydrogen tells the C=O carbon from the C-OH one).
SMILES = ("C", "c1ccccc1", "c1cc[nH]c1", "N#CC=O", "C[NH3+]", "[NH3+]CC(=O)[O-]", "CC(=N[O-])C#CC(N)=[NH2+]",
          "N=c1[n-]c(=[NH2+])nc(N)o1", "C1C2CC1C2", "O=C1C2CC1C2O")


def canonical(smiles: str) -> str:
    result = canonicalize_smiles(smiles)
    assert result is not None
    return result


def shuffled(smiles: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D molecule with hydrogens, its atoms in random order (hydrogens among the heavy atoms)."""
    mol = molecule_from_smiles(smiles)
    order = np.random.default_rng(seed).permutation(len(mol))
    return mol.atomic_numbers[order], mol.positions[order]


@pytest.fixture(scope="module")
def geometries() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {smiles: shuffled(smiles) for smiles in SMILES}


def smiles_of(mol: Chem.Mol | None) -> str | None:
    return None if mol is None else canonicalize_smiles(Chem.MolToSmiles(Chem.RemoveAllHs(mol)))


def bonds_to_rdkit(numbers: np.ndarray, positions: np.ndarray, bonds: np.ndarray, charges: np.ndarray,
                   implicit_hydrogens: bool = False) -> Chem.Mol | None:
    """The RDKit molecule the (possibly padded) arrays describe, as generated molecules are checked."""
    real = np.flatnonzero(numbers > 0)
    return to_rdkit(Molecule(numbers[real], positions[real], bonds[np.ix_(real, real)], charges[real],
                             implicit_hydrogens))


def test_methane_has_four_single_carbon_hydrogen_bonds():
    mol = molecule_from_smiles("C")
    bonds, charges = molecule_bonds(mol.atomic_numbers, mol.positions, "C")
    expected = np.zeros((5, 5), np.int8)
    expected[0, 1:] = expected[1:, 0] = SINGLE
    assert bonds.dtype == np.int8 and charges.dtype == np.int8
    assert np.array_equal(bonds, expected) and not charges.any()


def test_benzene_bonds_are_in_a_kekule_form(geometries):
    numbers, positions = geometries["c1ccccc1"]
    bonds, charges = molecule_bonds(numbers, positions, "c1ccccc1")
    carbons, hydrogens = numbers == 6, numbers == 1
    ring = bonds[np.ix_(carbons, carbons)]
    assert (ring == SINGLE).sum(1).tolist() == [1] * 6 and (ring == DOUBLE).sum(1).tolist() == [1] * 6
    assert smiles_of(bonds_to_rdkit(numbers, positions, bonds, charges)) == "c1ccccc1", "aromatic again in RDKit"
    assert (bonds[np.ix_(carbons, hydrogens)] == SINGLE).sum() == 6
    assert not charges.any() and bonds[np.ix_(hydrogens, hydrogens)].max() == 0


@pytest.mark.parametrize("smiles", ["C[NH3+]", "[NH3+]CC(=O)[O-]", "CC(=N[O-])C#CC(N)=[NH2+]"])
def test_charged_molecules_get_their_smiles_charges(geometries, smiles):
    numbers, positions = geometries[smiles]
    bonds, charges = molecule_bonds(numbers, positions, canonical(smiles))
    reference = Chem.MolFromSmiles(smiles)
    assert sorted(charges[charges != 0].tolist()) == sorted(a.GetFormalCharge() for a in reference.GetAtoms()
                                                            if a.GetFormalCharge())
    assert set(numbers[charges > 0].tolist()) == {7}
    assert smiles_of(bonds_to_rdkit(numbers, positions, bonds, charges)) == canonical(smiles)


def test_the_smiles_template_alone_gives_the_same_molecules(geometries, monkeypatch):
    """Where xyz2mol fails, the template must stand in: force it for every molecule."""
    monkeypatch.setattr(bonds_module, "_perceived", lambda *_: None)
    for smiles, (numbers, positions) in geometries.items():
        bonds, charges = molecule_bonds(numbers, positions, canonical(smiles))
        assert smiles_of(bonds_to_rdkit(numbers, positions, bonds, charges)) == canonical(smiles), smiles


def test_the_template_picks_the_embedding_that_fits_a_symmetric_skeleton(monkeypatch):
    """Swapping the C=O and C-OH carbons of this cage keeps its heavy-atom graph: only the hydrogen and
    the bond lengths tell them apart, whatever the atom order."""
    monkeypatch.setattr(bonds_module, "_perceived", lambda *_: None)
    smiles = canonical("O=C1C2CC1C2O")
    for seed in range(6):
        numbers, positions = shuffled(smiles, seed)
        bonds, charges = molecule_bonds(numbers, positions, smiles)
        assert smiles_of(bonds_to_rdkit(numbers, positions, bonds, charges)) == smiles, seed


def test_geometries_that_disagree_with_the_smiles_are_rejected_with_a_reason(geometries):
    numbers, positions = shuffled("CCO")
    assert molecule_bonds(numbers, positions, "COC") == MISSING_BONDS  # same atoms, other graph
    assert molecule_bonds(numbers, positions, "CCN") == OTHER_ATOMS
    assert molecule_bonds(numbers, positions, "C1CC") == UNPARSABLE
    assert molecule_bonds(*shuffled("CC=O"), "C=CO") == OTHER_HYDROGENS  # tautomers
    assert molecule_bonds(numbers, positions, "") == UNPARSABLE
    stretched = positions.copy()
    first, second = np.flatnonzero(numbers == 6)
    stretched[second] += 2 * (positions[second] - positions[first])  # one carbon pulled off its neighbours
    assert molecule_bonds(numbers, stretched, "CCO") == MISSING_BONDS
    # Methane with two hydrogens 0.5 Å apart, both still 1.09 Å from the carbon.
    angle = 2 * np.arcsin(0.25 / 1.09)
    methane = np.array([[0, 0, 0], [1.09, 0, 0], [1.09 * np.cos(angle), 1.09 * np.sin(angle), 0],
                        [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89]])
    assert molecule_bonds(np.array([6, 1, 1, 1, 1]), methane, "C") == CLOSE_CONTACT
    assert isinstance(molecule_bonds(*geometries["C"], "C"), tuple)


def padded(molecules: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    numbers = np.zeros((len(molecules), MAX_ATOMS), np.int8)
    positions = np.zeros((len(molecules), MAX_ATOMS, 3), np.float32)
    for row, (z, x) in enumerate(molecules):
        numbers[row, : len(z)], positions[row, : len(z)] = z, x
    return numbers, positions


@pytest.fixture(scope="module")
def dataset(geometries) -> QM9:
    """A small QM9 of the hand-made molecules plus one whose SMILES disagrees (last)."""
    numbers, positions = padded([*geometries.values(), geometries["c1ccccc1"]])
    canonicals = np.array([canonical(s) for s in SMILES] + ["C1CCCCC1"])
    found = qm9_bonds(numbers, positions, canonicals, progress=False)
    assert found.rejected == {OTHER_ATOMS: 1}
    properties = {name: np.arange(len(canonicals), dtype=np.float64) for name in PROPERTIES}
    return QM9(numbers, positions, canonicals, canonicals, properties, found.bonds, found.formal_charges,
               found.agrees)


def test_dataset_arrays_are_symmetric_with_zero_diagonal_and_padding(dataset):
    assert dataset.bonds.shape == (len(dataset), MAX_ATOMS, MAX_ATOMS) and dataset.bonds.dtype == np.int8
    assert np.array_equal(dataset.bonds, dataset.bonds.transpose(0, 2, 1))
    assert not np.diagonal(dataset.bonds, axis1=1, axis2=2).any()
    padding = dataset.atomic_numbers == 0
    assert not dataset.bonds[padding].any() and not dataset.formal_charges[padding].any()
    assert dataset.agrees.tolist() == [True] * len(SMILES) + [False]
    assert not dataset.bonds[-1].any()
    for row in range(len(SMILES)):
        n = dataset.num_atoms[row]
        mol = bonds_to_rdkit(dataset.atomic_numbers[row], dataset.positions[row], dataset.bonds[row],
                             dataset.formal_charges[row])
        assert mol is not None and mol.GetNumAtoms() == n and smiles_of(mol) == dataset.canonical[row]


def test_subset_and_without_hydrogens_keep_the_heavy_atom_bonds(dataset):
    picked = dataset.subset(np.array([6, 1, 7]))
    assert picked.canonical.tolist() == [dataset.canonical[i] for i in (6, 1, 7)]
    assert np.array_equal(picked.bonds, dataset.bonds[[6, 1, 7]])
    assert np.array_equal(picked.formal_charges, dataset.formal_charges[[6, 1, 7]])
    heavy = dataset.without_hydrogens()
    width = heavy.atomic_numbers.shape[1]
    assert heavy.bonds.shape == (len(dataset), width, width) and heavy.formal_charges.shape == (len(dataset), width)
    for row in range(len(dataset)):
        kept = np.flatnonzero(dataset.atomic_numbers[row] > 1)  # the atoms were shuffled: H among them
        k = len(kept)
        assert np.array_equal(heavy.atomic_numbers[row, :k], dataset.atomic_numbers[row, kept])
        assert np.array_equal(heavy.bonds[row, :k, :k], dataset.bonds[row][np.ix_(kept, kept)])
        assert np.array_equal(heavy.formal_charges[row, :k], dataset.formal_charges[row, kept])
        assert not heavy.bonds[row, k:].any() and not heavy.bonds[row, :, k:].any()
    for smiles in ("CC(=N[O-])C#CC(N)=[NH2+]", "c1cc[nH]c1"):  # Kekulé bonds tell which ring N holds the H
        row = SMILES.index(smiles)
        mol = bonds_to_rdkit(heavy.atomic_numbers[row], heavy.positions[row], heavy.bonds[row],
                             heavy.formal_charges[row], implicit_hydrogens=True)
        assert smiles_of(mol) == dataset.canonical[row], smiles


def test_a_previous_cache_is_upgraded_with_bonds(tmp_path, geometries):
    numbers, positions = padded([geometries["C"], geometries["[NH3+]CC(=O)[O-]"], geometries["C"]])
    canonicals = np.array(["C", canonical("[NH3+]CC(=O)[O-]"), "N"])
    save_arrays(tmp_path / PREVIOUS_CACHE_NAME, {
        "atomic_numbers": numbers, "positions": positions, "smiles": canonicals, "canonical": canonicals,
        **{f"property_{name}": np.zeros(3) for name in PROPERTIES}})
    data = load_qm9(tmp_path)
    assert (tmp_path / CACHE_NAME).is_file()
    assert data.agrees.tolist() == [True, True, False]
    carbon = int(np.flatnonzero(numbers[0] == 6)[0])
    hydrogens = np.flatnonzero(numbers[0] == 1)
    assert (data.bonds[0, carbon, hydrogens] == SINGLE).all() and data.bonds[0].sum() == 8 * SINGLE
    assert sorted(data.formal_charges[1][data.formal_charges[1] != 0].tolist()) == [-1, 1]
    assert np.array_equal(load_qm9(tmp_path).bonds, data.bonds)  # read back from the new cache
