"""Molecules with their own bonds: the graph encoding, chemistry on generated bonds, SDF bonds, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem
from toolkit import broken_valence

from rgdm.api import sample
from rgdm.diffusion import EpsModel
from rgdm.domains.molecules.chemistry import (
    Molecule,
    atom_stability,
    bond_orders,
    molecule_from_smiles,
    posebusters_metrics,
    stability_metrics,
    to_rdkit,
    valid_rdkit,
)
from rgdm.domains.molecules.data import ELEMENTS, pad_molecules
from rgdm.domains.molecules.domain import MoleculeDomain
from rgdm.domains.molecules.encoding import GraphEncoding, pad_bonds
from rgdm.domains.molecules.io import MoleculeFileError, read_sdf, write_sdf
from rgdm.engine.builder import load_trained
from rgdm.engine.config import RunConfig
from rgdm.engine.trainer import Trainer
from rgdm.io import CheckpointError

#: Methane, benzene (aromatic), a zwitterion (glycine's) and a carbon with five hydrogens.
SMILES = ("C", "c1ccccc1", "[NH3+]CC(=O)[O-]")


def bonded(smiles: str) -> Molecule:
    return molecule_from_smiles(smiles, with_bonds=True)


def canonical(mol: Molecule) -> str:
    rdkit_mol = valid_rdkit(mol)
    assert rdkit_mol is not None
    return Chem.MolToSmiles(rdkit_mol)


def test_generated_bonds_decide_stability_and_validity():
    methane, benzene, zwitterion = (bonded(s) for s in SMILES)
    for mol in (methane, benzene, zwitterion):
        assert atom_stability(mol).all(), "aromatic rings count in a Kekulé form, charges shift the valence"
    assert canonical(zwitterion) == Chem.CanonSmiles("[NH3+]CC(=O)[O-]")
    assert canonical(benzene) == "c1ccccc1"
    broken = broken_valence()
    assert not atom_stability(broken)[0] and atom_stability(broken)[1:].all()
    assert to_rdkit(broken) is None, "a pentavalent carbon does not sanitise"


def test_the_molecules_own_bonds_win_over_distances():
    methane = bonded("C")
    unbonded = Molecule(methane.atomic_numbers, methane.positions, np.zeros((5, 5), np.int64), methane.charges)
    assert atom_stability(Molecule(methane.atomic_numbers, methane.positions)).all(), "distances alone: bonded"
    assert not atom_stability(unbonded).any(), "its own (empty) bonds: five lone atoms"
    assert valid_rdkit(unbonded) is None, "five fragments are not one molecule"


def test_a_bond_matrix_that_is_not_symmetric_is_refused_by_name():
    methane = bonded("C")
    bonds = methane.bonds.copy()
    bonds[0, 1] = 2
    with pytest.raises(ValueError, match="symmetric: atoms 0-1 have bond 2 but 1-0 has 1"):
        Molecule(methane.atomic_numbers, methane.positions, bonds)
    with pytest.raises(ValueError, match="zero diagonal"):
        Molecule(methane.atomic_numbers, methane.positions, np.eye(5, dtype=np.int64))


def graph_batch(molecules, width: int = 12):
    numbers, positions = pad_molecules(molecules, width)
    bonds, charges = pad_bonds(molecules, width)
    return GraphEncoding(ELEMENTS).encode(numbers, positions, bonds, charges)


def test_the_graph_encoding_round_trips_kekulized_bonds_charges_and_padding():
    molecules = [bonded(s) for s in SMILES]
    x, mask = graph_batch(molecules)
    bonds = x["bonds"]
    assert torch.equal(bonds, bonds.transpose(1, 2)) and (bonds.diagonal(dim1=1, dim2=2) == 0).all()
    assert bonds.shape[-1] == 4, "none, single, double, triple: aromatic rings are written in a Kekulé form"
    assert (bonds[~mask.bool()] == 0).all() and (x["atoms"][~mask.bool()] == 0).all()
    torch.testing.assert_close(x["positions"].sum(1), torch.zeros(3, 3), atol=1e-5, rtol=0)
    decoded = GraphEncoding(ELEMENTS).decode(x, mask.bool())
    for original, back in zip(molecules, decoded, strict=True):
        assert canonical(back) == canonical(original)
        np.testing.assert_array_equal(back.charges, original.charges)
    assert (decoded[1].bonds[:6, :6] > 0).sum() == 12 and set(decoded[1].bonds[:6, :6].flatten()) == {0, 1, 2}


def test_a_charge_the_encoding_cannot_hold_is_an_error():
    methane = bonded("C")
    numbers, positions = pad_molecules([methane], 6)
    bonds, charges = pad_bonds([methane], 6)
    charges[0, 0] = 2
    with pytest.raises(ValueError, match="formal charges must lie in"):
        GraphEncoding(ELEMENTS).encode(numbers, positions, bonds, charges)


def test_sdf_files_carry_the_generated_bonds_and_charges(tmp_path):
    molecules = [bonded(s) for s in SMILES]
    assert write_sdf(molecules, tmp_path / "samples.sdf") == 3
    back = read_sdf(tmp_path / "samples.sdf", require_bonds=True)
    for original, read in zip(molecules, back, strict=True):
        assert canonical(read) == canonical(original)
        np.testing.assert_array_equal(read.charges, original.charges)
        np.testing.assert_array_equal(read.bonds > 0, original.bonds > 0)


def test_an_sdf_without_bonds_is_refused_where_bonds_are_needed(tmp_path):
    methane = bonded("C")
    editable = Chem.RWMol(to_rdkit(methane))
    for bond in list(editable.GetBonds()):
        editable.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    with Chem.SDWriter(str(tmp_path / "samples.sdf")) as writer:
        writer.write(editable.GetMol())
    assert read_sdf(tmp_path / "samples.sdf")[0].bonds is None, "without a bond model: perceived later"
    with pytest.raises(MoleculeFileError, match="record 1: no bonds; this model generates bonds"):
        read_sdf(tmp_path / "samples.sdf", require_bonds=True)
    domain = MoleculeDomain({"bonds": True})
    with pytest.raises(MoleculeFileError, match="no bonds"):
        domain.read_samples(tmp_path)


def test_xyz_input_to_a_bond_model_asks_for_sdf(tmp_path):
    (tmp_path / "samples.xyz").write_text("1\n\nC 0 0 0\n")
    with pytest.raises(MoleculeFileError, match=r"reads molecules with their bonds from samples\.sdf"):
        MoleculeDomain({"bonds": True}).read_samples(tmp_path)


def test_a_bond_model_reads_sdf_samples_into_its_graph_encoding(tmp_path):
    write_sdf([bonded(s) for s in SMILES], tmp_path / "samples.sdf")
    domain = MoleculeDomain({"bonds": True})
    batch = domain.read_samples(tmp_path)
    assert [canonical(m) for m in domain.decode(batch.x, batch.mask)] == [
        canonical(bonded(s)) for s in SMILES]


def test_a_point_cloud_model_fine_tuned_as_a_bond_model_is_refused_by_name(tmp_path):
    config = RunConfig.model_validate({"init": "qm9-edm-small", "domain": {"name": "molecules", "bonds": True},
                                       "algorithm": {"name": "pretrain"}})
    with pytest.raises(CheckpointError,
                       match=r"do not fit a molecules network of these options \(its domain options bonds"):
        Trainer(config, tmp_path / "run")


def heavy_atoms(mol: Molecule) -> Molecule:
    """The molecule without its hydrogens, which become implicit (a model without hydrogens)."""
    heavy = mol.atomic_numbers > 1
    return Molecule(mol.atomic_numbers[heavy], mol.positions[heavy], mol.bonds[np.ix_(heavy, heavy)],
                    mol.charges[heavy], implicit_hydrogens=True)


def test_implicit_hydrogens_fill_free_valences_of_heavy_atom_molecules():
    pyrrole = bonded("c1cc[nH]c1")
    kekule = Molecule(pyrrole.atomic_numbers, pyrrole.positions, bond_orders(pyrrole).astype(np.int64), pyrrole.charges)
    without = heavy_atoms(kekule)
    assert canonical(without) == canonical(pyrrole) == "c1cc[nH]c1"
    assert atom_stability(without).all()
    assert stability_metrics([without]) == {"atom_stability": None, "molecule_stability": None}, \
        "hydrogens could fill anything: no stability measure"
    explicit = Molecule(without.atomic_numbers, without.positions, without.bonds, without.charges)
    assert valid_rdkit(explicit) is not None and not atom_stability(explicit).all(), "no hydrogens: radicals"
    crowded = without.bonds.copy()
    crowded[0, 2] = crowded[2, 0] = 2  # a carbon with a fifth bond
    assert valid_rdkit(Molecule(without.atomic_numbers, without.positions, crowded, without.charges,
                                implicit_hydrogens=True)) is None



def test_posebusters_passes_a_relaxed_molecule_and_fails_a_squashed_one():
    good = bonded("c1ccccc1O")
    squashed = Molecule(good.atomic_numbers, good.positions * np.array([1.0, 1.0, 0.0]) * 0.6, good.bonds,
                        good.charges)
    report = posebusters_metrics([good, squashed, broken_valence()])
    assert report["posebusters_checked"] == 2, "only valid molecules are checked"
    assert report["posebusters_pass"] == 0.5, report["posebusters_checks"]  # a failure names the checks
    assert report["posebusters_checks"]["bond_lengths"] == 0.5


def test_posebusters_survives_a_closed_stderr_left_behind_by_an_earlier_capture(monkeypatch):
    """PoseBusters flushes the stream RDKit's log handler held since its last run; a closed one (pytest's
    capsys, a notebook cell's redirect) used to fail every molecule's InChI check."""
    import tempfile

    import rdkit

    with tempfile.TemporaryFile("w+") as closed:  # unlike a StringIO, a closed file raises on flush, as capsys's
        pass
    monkeypatch.setattr(rdkit.log_handler, "stream", closed)
    assert posebusters_metrics([bonded("c1ccccc1O")])["posebusters_checks"]["inchi_convertible"] == 1.0


TINY_BOND_MODEL = {"domain": {"name": "molecules", "hydrogens": False, "bonds": True, "subset": 32},
                   "network": {"hidden": 16, "edge_hidden": 8, "layers": 1},
                   "diffusion": {"schedule": "cosine", "timesteps": 20},
                   "train": {"steps": 3, "batch_size": 8, "checkpoint_every": 3, "log_every": 1, "seed": 2},
                   "algorithm": {"name": "pretrain"}}


def test_a_plain_bond_model_continues_self_conditioned_from_where_it_stands(tmp_path):
    """``network.self_condition`` on top of a parent without it: the hint inputs start at zero, so the
    first prediction is the parent's; training moves them, and the model samples at two evaluations a step."""
    Trainer(RunConfig.model_validate(TINY_BOND_MODEL), tmp_path / "plain").fit(progress=False)
    parent = load_trained(tmp_path / "plain")
    config = RunConfig.model_validate({"init": str(tmp_path / "plain"), "network": {"self_condition": True},
                                       "train": TINY_BOND_MODEL["train"], "algorithm": {"name": "pretrain"}})
    trainer = Trainer(config, tmp_path / "hinted")
    prior = parent.domain.prior_batch(4, torch.Generator().manual_seed(0))
    x = parent.diffusion.noise_like(prior.x, prior.mask, torch.Generator().manual_seed(1))
    t = torch.full((4,), 12)
    child = EpsModel(trainer.net.eval(), trainer.diffusion)
    with torch.no_grad():
        expected, actual = EpsModel(parent.net, parent.diffusion)(x, t, None, prior.mask), child(x, t, None, prior.mask)
    assert child.self_conditioned and child.evaluations == 2 * 4
    for part in ("positions", "atoms", "bonds"):
        torch.testing.assert_close(actual[part], expected[part], rtol=0, atol=0)
    trainer.net.train()
    trainer.fit(progress=False)
    tuned = load_trained(tmp_path / "hinted")
    assert tuned.meta["network"]["self_condition"] is True
    assert tuned.net.hint_atoms.weight.abs().sum() > 0 and tuned.net.hint_bonds.weight.abs().sum() > 0
    samples = sample(tuned, 3, steps=5, seed=0)
    assert samples.meta["network_evaluations"] == 2 * 5 * 3


def test_network_options_that_the_parent_weights_do_not_fit_are_refused(tmp_path):
    Trainer(RunConfig.model_validate(TINY_BOND_MODEL), tmp_path / "plain").fit(progress=False)
    wider = RunConfig.model_validate({"init": str(tmp_path / "plain"), "network": {"hidden": 32},
                                      "algorithm": {"name": "pretrain"}})
    refusal = r"do not fit a molecules network of these options \(its network options hidden differ"
    with pytest.raises(CheckpointError, match=refusal):
        Trainer(wider, tmp_path / "wider")
    with pytest.raises(ValueError, match="self_condition needs the bond graph network"):
        MoleculeDomain({"bonds": False}).build_network({"self_condition": True})
