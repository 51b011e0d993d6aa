"""The xtb-strain reward: GFN2-xTB strain per atom of a generated geometry against its short relaxation."""

from __future__ import annotations

import math
import pickle
import time

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

pytest.importorskip("tblite.interface")

from rgdm.domains.molecules.chemistry import Molecule, to_rdkit
from rgdm.domains.molecules.xtb import HARTREE_TO_EV, charge_and_spin, xtb_energies, xtb_strain
from rgdm.rewards import BlackBoxReward, WorkerPool


def relaxed(smiles: str, seed: int = 0) -> Molecule:
    """An ETKDG conformer relaxed by MMFF, with its hydrogens, bonds and charges."""
    rdkit_mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(rdkit_mol, randomSeed=seed) == 0
    assert AllChem.MMFFOptimizeMolecule(rdkit_mol, maxIters=2000) == 0
    n = rdkit_mol.GetNumAtoms()
    bonds = np.zeros((n, n), dtype=np.int64)
    for bond in rdkit_mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = int(bond.GetBondTypeAsDouble())
    return Molecule(np.array([atom.GetAtomicNum() for atom in rdkit_mol.GetAtoms()]),
                    rdkit_mol.GetConformer().GetPositions(), bonds=bonds,
                    charges=np.array([atom.GetFormalCharge() for atom in rdkit_mol.GetAtoms()]))


def moved(mol: Molecule, atom: int, anchor: int, factor: float) -> Molecule:
    """``mol`` with ``atom`` moved along its bond to ``anchor`` to ``factor`` times the bond length (bonds kept)."""
    positions = mol.positions.copy()
    positions[atom] = positions[anchor] + factor * (positions[atom] - positions[anchor])
    return Molecule(mol.atomic_numbers, positions, mol.bonds, mol.charges)


@pytest.fixture(scope="module")
def ethanol() -> Molecule:
    mol = relaxed("CCO")
    assert mol.symbols[:3] == ("C", "C", "O")
    return mol


def test_a_relaxed_molecule_has_almost_no_strain_and_beats_a_stretched_one(ethanol: Molecule) -> None:
    stretched = moved(ethanol, atom=2, anchor=1, factor=1.25)  # C-O from 1.42 to 1.78 Å, the bond kept
    calm, strained = xtb_strain([ethanol, stretched])
    # MMFF's minimum is not GFN2-xTB's, but close: a few meV per atom.
    assert -0.01 < calm <= 0.0
    assert strained < calm - 0.05


def test_the_strain_grows_with_the_distortion(ethanol: Molecule) -> None:
    rewards = xtb_strain([moved(ethanol, 2, 1, factor) for factor in (1.0, 1.1, 1.25)])
    assert rewards[0] > rewards[1] > rewards[2]


def test_molecules_without_bonds_are_perceived_like_the_domain_does(ethanol: Molecule) -> None:
    positions_only = Molecule(ethanol.atomic_numbers, ethanol.positions)
    assert xtb_strain([positions_only]) == pytest.approx(xtb_strain([ethanol]), abs=1e-9)


def test_the_first_energy_is_the_generated_geometrys(ethanol: Molecule) -> None:
    from tblite.interface import Calculator

    calculator = Calculator("GFN2-xTB", ethanol.atomic_numbers, ethanol.positions / 0.529177210903,
                            logger=lambda _: None)
    calculator.set("verbosity", 0)
    single_point = calculator.singlepoint().get("energy") * HARTREE_TO_EV
    energies = xtb_energies(ethanol.atomic_numbers, ethanol.positions)
    assert energies is not None
    generated, relaxed_energy = energies
    assert generated == pytest.approx(single_point, abs=1e-6)
    assert relaxed_energy <= generated


def two_fragments(mol: Molecule) -> Molecule:
    far = mol.positions.copy()
    far[2] += 10.0  # the oxygen leaves
    return Molecule(mol.atomic_numbers, far)


def skeleton(mol: Molecule) -> Molecule:
    """The heavy atoms of ``mol`` with their bonds, hydrogens implicit: what a model without hydrogens makes."""
    heavy = mol.atomic_numbers > 1
    return Molecule(mol.atomic_numbers[heavy], mol.positions[heavy], mol.bonds[np.ix_(heavy, heavy)],
                    implicit_hydrogens=True)


def test_invalid_and_failed_molecules_score_nan(ethanol: Molecule) -> None:
    overlapping = ethanol.positions.copy()
    overlapping[3] = overlapping[0]  # a hydrogen on its carbon: tblite refuses the geometry
    collapsed = Molecule(ethanol.atomic_numbers, overlapping, ethanol.bonds)
    assert all(math.isnan(value) for value in xtb_strain([two_fragments(ethanol), collapsed]))


def test_a_skeleton_without_hydrogens_is_scored_on_its_own_geometry(ethanol: Molecule) -> None:
    """RDKit's hydrogens are relaxed first with the skeleton held, so a relaxed skeleton scores about as its
    molecule with hydrogens does, and a stretched skeleton pays for its stretched bond alone."""
    stretched = moved(ethanol, atom=2, anchor=1, factor=1.25)  # the hydroxyl hydrogen stays behind
    calm, strained, calm_h, strained_h = xtb_strain([skeleton(ethanol), skeleton(stretched), ethanol, stretched])
    assert calm == pytest.approx(calm_h, abs=0.005)
    assert strained_h < strained < calm - 0.05, "the molecule with hydrogens also pays for its stranded hydrogen"
    co2 = (np.array([6, 8, 8]), np.array([[0, 0, 0], [1.16, 0, 0], [-1.16, 0, 0]]),
           np.array([[0, 2, 2], [2, 0, 0], [2, 0, 0]]))
    implicit, explicit = xtb_strain([Molecule(*co2, implicit_hydrogens=True), Molecule(*co2)])
    assert implicit == explicit < 0, "no hydrogens to place: the one relaxation of the molecule as it is"


def test_an_scf_that_fails_during_the_relaxation_scores_nan(ethanol: Molecule, monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from tblite.exceptions import TBLiteRuntimeError
    from tblite.interface import Calculator

    calls = []
    single_point = Calculator.singlepoint

    def fails_third(self: Calculator, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise TBLiteRuntimeError("SCF not converged in 250 cycles")
        return single_point(self, *args, **kwargs)

    monkeypatch.setattr(Calculator, "singlepoint", fails_third)
    assert math.isnan(xtb_strain([moved(ethanol, 2, 1, 1.25)])[0])
    assert len(calls) == 3


def test_charge_and_radicals_reach_xtb() -> None:
    ammonium = relaxed("[NH4+]")
    methyl = Molecule(np.array([6, 1, 1, 1]), [[0, 0, 0], [1.08, 0, 0], [-0.54, 0.935, 0], [-0.54, -0.935, 0]])
    rdkit_methyl = to_rdkit(methyl)
    assert rdkit_methyl is not None
    assert charge_and_spin(rdkit_methyl) == (0, 1)
    ammonium_rdkit = to_rdkit(ammonium)
    assert ammonium_rdkit is not None
    assert charge_and_spin(ammonium_rdkit) == (1, 0)
    # Planar methyl is near the radical's minimum; its 9 electrons cannot all pair up.
    assert all(-0.05 < value <= 0.0 for value in xtb_strain([ammonium, methyl]))
    assert xtb_energies(methyl.atomic_numbers, methyl.positions, unpaired=0) is None
    assert xtb_energies(ammonium.atomic_numbers, ammonium.positions, charge=0) is None


def test_time_is_bounded(ethanol: Molecule) -> None:
    stretched = moved(ethanol, 2, 1, 1.5)
    assert math.isnan(xtb_strain([stretched], time_limit=0.0)[0])  # one energy, then out of time
    start = time.perf_counter()
    xtb_strain([stretched], time_limit=0.2)
    assert time.perf_counter() - start < 2.0
    start = time.perf_counter()
    assert not math.isnan(xtb_strain([stretched], max_steps=3)[0])
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ValueError, match="max_steps"):
        xtb_strain([ethanol], max_steps=0)


def test_tblite_prints_nothing(ethanol: Molecule, capfd: pytest.CaptureFixture[str]) -> None:
    xtb_strain([ethanol, moved(ethanol, 2, 1, 1.25)])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_it_runs_in_the_worker_pool_with_nan_at_the_floor(ethanol: Molecule) -> None:
    assert pickle.loads(pickle.dumps(xtb_strain)) is xtb_strain
    samples = [ethanol, two_fragments(ethanol)]
    reward = BlackBoxReward(xtb_strain, name="xtb-strain", floor=-5.0, executor=WorkerPool(1, timeout=60.0))
    try:
        result = reward(samples)
    finally:
        reward.close()
    assert result.valid.tolist() == [True, False]
    assert result.values[0].item() == pytest.approx(xtb_strain([ethanol])[0], abs=1e-9)
    assert result.values[1].item() == -5.0
