"""Bond orders and formal charges of QM9 molecules that agree with both their DFT geometry and their SMILES.

QM9 gives atoms, DFT positions and a SMILES string, but no bonds; a model that generates bonds jointly with
atoms needs them as arrays: ``bond_types (n, n)`` coded by ``BOND_TYPES`` and ``formal_charges (n,)``.
They are first read off the geometry (RDKit's xyz2mol: connectivity from distances, then the bond orders and
charges that fill every valence, given the SMILES' total charge) and kept where the molecule they describe
has the SMILES' canonical form. Where that fails (connect-the-dots joins non-bonded atoms across small
strained rings, or xyz2mol picks another resonance form of a zwitterion), the SMILES' bonds and charges are
mapped onto the geometry's connectivity instead. Either way the bonds must be the geometry's shortest
contacts: every bonded pair closer, relative to its covalent radii, than every non-bonded pair. A molecule
that fails is rejected with a reason.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds
from rdkit.rdBase import BlockLogs
from tqdm.auto import tqdm

from rgdm.domains.molecules.chemistry import BOND_CODES, canonicalize_smiles

#: Bond type codes: the index is the code stored in bond arrays. Aromatic rings are stored in a Kekulé
#: form (integer orders; RDKit perceives the aromaticity again when it sanitises), which, unlike aromatic
#: codes, also tells which ring atom of a molecule without its hydrogens carries one ([nH]).
BOND_TYPES = ("none", "single", "double", "triple")
#: Formal charges beyond this are garbage (and would overflow RDKit's integers).
_COVALENT_RADII = np.array([Chem.GetPeriodicTable().GetRcovalent(z) for z in range(119)])

#: Why a molecule was rejected.
UNPARSABLE = "SMILES unparsable"
OTHER_ATOMS = "atoms differ from the SMILES"
MISSING_BONDS = "SMILES bonds missing from the geometry"
OTHER_HYDROGENS = "hydrogens bonded elsewhere than in the SMILES"
CLOSE_CONTACT = "a non-bonded pair closer than a bond"


class QM9Bonds(NamedTuple):
    """Bonds of every molecule (zero where rejected) and the count of rejections by reason."""

    bonds: np.ndarray  # (M, 29, 29) int8, codes of BOND_TYPES
    formal_charges: np.ndarray  # (M, 29) int8
    agrees: np.ndarray  # (M,) bool: geometry and SMILES agree, bonds are set
    rejected: Counter[str]


def _geometry(atomic_numbers: np.ndarray, positions: np.ndarray) -> Chem.RWMol:
    """Bare atoms at their positions; hydrogens are explicit atoms, so no atom gets implicit ones."""
    mol = Chem.RWMol()
    for z in atomic_numbers:
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    conformer = Chem.Conformer(len(atomic_numbers))
    conformer.SetPositions(np.asarray(positions, dtype=np.float64))
    conformer.Set3D(True)
    mol.AddConformer(conformer, assignId=True)
    return mol


def _distance_ratios(atomic_numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Distances over the sum of covalent radii (about 1 for a bond), infinite on the diagonal."""
    positions = np.asarray(positions, dtype=np.float64)
    radii = _COVALENT_RADII[atomic_numbers]
    ratios = np.linalg.norm(positions[:, None] - positions[None], axis=-1) / (radii[:, None] + radii[None])
    np.fill_diagonal(ratios, np.inf)
    return ratios


def _gap(bonded: np.ndarray, ratios: np.ndarray) -> float:
    """Closest non-bonded ratio minus farthest bonded one: positive when the bonds are the shortest contacts."""
    off_diagonal = ~np.eye(len(ratios), dtype=bool)
    farthest = ratios[bonded].max(initial=0.0)
    closest = ratios[~bonded & off_diagonal].min(initial=np.inf)
    return float(closest - farthest)


def _canonical(mol: Chem.Mol) -> str | None:
    """The canonical SMILES of a sanitised molecule, in the form of ``canonicalize_smiles``."""
    return canonicalize_smiles(Chem.MolToSmiles(Chem.RemoveAllHs(mol)))


def _perceived(connected: Chem.Mol, charge: int) -> Chem.Mol | None:
    """xyz2mol's bond orders and charges on the geometry's connectivity, sanitised; None if it finds none."""
    mol = Chem.Mol(connected)
    try:
        rdDetermineBonds.DetermineBondOrders(mol, charge=charge, embedChiral=False)
        Chem.SanitizeMol(mol)
    except ValueError:
        return None
    return mol


def _templated(geometry: Chem.RWMol, connected: Chem.Mol, reference: Chem.Mol, ratios: np.ndarray) -> Chem.Mol | str:
    """The SMILES' bonds and charges mapped onto the geometry's connectivity, each hydrogen bonded to its
    closest mapped atom, sanitised; or why not.

    The SMILES graph must embed in the connectivity (which may hold extra contacts). Of several embeddings,
    the one taken puts the SMILES' hydrogen count on every atom, then separates bonds from non-bonded pairs
    best, then (among symmetric embeddings) puts the higher bond orders on the shorter bonds.
    """
    kekule = Chem.Mol(reference)
    Chem.Kekulize(kekule, clearAromaticFlags=True)
    query = Chem.Mol(kekule)
    for bond in query.GetBonds():
        bond.SetBondType(Chem.BondType.SINGLE)
    for atom in query.GetAtoms():
        atom.SetFormalCharge(0)
    matches = [np.array(m) for m in connected.GetSubstructMatches(query, uniquify=False, maxMatches=10_000)]
    if not matches:
        return MISSING_BONDS
    hydrogens = np.setdiff1d(np.arange(len(ratios)), matches[0])
    hydrogen_counts = np.array([atom.GetTotalNumHs() for atom in kekule.GetAtoms()])
    bonds = np.array([(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond.GetBondTypeAsDouble())
                      for bond in kekule.GetBonds()]).reshape(-1, 3)
    begin, end, orders = bonds[:, 0].astype(int), bonds[:, 1].astype(int), bonds[:, 2]

    def owners(match: np.ndarray) -> np.ndarray:
        """For each hydrogen, the index in ``match`` of its closest mapped atom."""
        return ratios[np.ix_(hydrogens, match)].argmin(1)

    def fit(match: np.ndarray) -> tuple[bool, float, float]:
        owner = owners(match)
        table = np.zeros(ratios.shape, bool)
        table[match[begin], match[end]] = table[hydrogens, match[owner]] = True
        return (np.array_equal(np.bincount(owner, minlength=len(match)), hydrogen_counts),
                _gap(table | table.T, ratios), -float(orders @ ratios[match[begin], match[end]]))

    match = max(matches, key=fit)
    if not fit(match)[0]:
        return OTHER_HYDROGENS
    mol = Chem.RWMol(geometry)
    for atom in kekule.GetAtoms():
        mol.GetAtomWithIdx(int(match[atom.GetIdx()])).SetFormalCharge(atom.GetFormalCharge())
    for bond in kekule.GetBonds():
        mol.AddBond(int(match[bond.GetBeginAtomIdx()]), int(match[bond.GetEndAtomIdx()]), bond.GetBondType())
    for hydrogen, owner in zip(hydrogens, match[owners(match)], strict=True):
        mol.AddBond(int(hydrogen), int(owner), Chem.BondType.SINGLE)
    Chem.SanitizeMol(mol)
    return mol.GetMol()


def _arrays(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Bond codes in a Kekulé form and formal charges of a sanitised molecule."""
    mol = Chem.Mol(mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    bonds = np.zeros((mol.GetNumAtoms(),) * 2, np.int8)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = BOND_CODES[bond.GetBondType()]
    return bonds, np.array([atom.GetFormalCharge() for atom in mol.GetAtoms()], np.int8)


def molecule_bonds(
    atomic_numbers: np.ndarray, positions: np.ndarray, canonical: str
) -> tuple[np.ndarray, np.ndarray] | str:
    """Bond types ``(n, n)`` (int8 codes of ``BOND_TYPES``, symmetric, zero diagonal) and formal charges
    ``(n,)`` (int8) of one molecule with hydrogens, agreeing with its geometry and its SMILES ``canonical``;
    or the reason they disagree.
    """
    atomic_numbers = np.asarray(atomic_numbers, dtype=np.int64)
    with BlockLogs():
        reference = Chem.MolFromSmiles(canonical) if canonical else None
        if reference is None:
            return UNPARSABLE
        atoms = Counter(atom.GetAtomicNum() for atom in Chem.AddHs(reference).GetAtoms())
        if atoms != Counter(atomic_numbers.tolist()):
            return OTHER_ATOMS
        target = Chem.MolToSmiles(reference, isomericSmiles=False)
        ratios = _distance_ratios(atomic_numbers, positions)
        geometry = _geometry(atomic_numbers, positions)
        connected = Chem.Mol(geometry)
        rdDetermineBonds.DetermineConnectivity(connected)
        mol = _perceived(connected, Chem.GetFormalCharge(reference))
        if mol is None or _canonical(mol) != target:
            mol = _templated(geometry, connected, reference, ratios)
            if isinstance(mol, str):
                return mol
            if _canonical(mol) != target:
                return OTHER_HYDROGENS
    bonds, charges = _arrays(mol)
    if _gap(bonds > 0, ratios) <= 0:
        return CLOSE_CONTACT
    return bonds, charges


def qm9_bonds(
    atomic_numbers: np.ndarray, positions: np.ndarray, canonical: np.ndarray, progress: bool = True
) -> QM9Bonds:
    """``molecule_bonds`` of every molecule of a ``QM9`` (its padded ``atomic_numbers``, ``positions`` and
    ``canonical``, with hydrogens) as padded arrays; about a minute for all of QM9."""
    size, width = atomic_numbers.shape
    bonds = np.zeros((size, width, width), np.int8)
    charges = np.zeros((size, width), np.int8)
    agrees = np.zeros(size, bool)
    rejected: Counter[str] = Counter()
    counts = (atomic_numbers > 0).sum(1)
    for index in tqdm(range(size), desc="QM9 bonds", unit="mol", disable=not progress, mininterval=1.0):
        n = counts[index]
        result = molecule_bonds(atomic_numbers[index, :n], positions[index, :n], str(canonical[index]))
        if isinstance(result, str):
            rejected[result] += 1
        else:
            bonds[index, :n, :n], charges[index, :n] = result
            agrees[index] = True
    return QM9Bonds(bonds, charges, agrees, rejected)
