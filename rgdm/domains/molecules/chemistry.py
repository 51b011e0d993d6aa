"""Molecules as atoms in 3-D: bond perception from distances, EDM stability, RDKit validity and metrics.

Bond orders follow EDM (Hoogeboom et al. 2022, ``qm9/bond_analyze.py``): a pair of atoms gets the highest
order k whose typical bond length plus a margin (10, 5, 3 pm for single, double, triple) exceeds their
distance. Thresholds alone cannot describe aromatic rings, whose bonds all have the same length (benzene's
1.39-1.40 Å C-C reads as single, leaving every carbon one bond short), so by default a Kekulé step assigns
alternating orders to such conjugated systems; ``kekulize=False`` gives EDM's numbers exactly.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rdkit import Chem, DataStructs
from rdkit.Chem import AllChem, rdDetermineBonds, rdFingerprintGenerator
from rdkit.Geometry import Point3D
from rdkit.rdBase import BlockLogs
from scipy.sparse.csgraph import connected_components

SYMBOL_TO_ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
ATOMIC_NUMBER_TO_SYMBOL = {z: symbol for symbol, z in SYMBOL_TO_ATOMIC_NUMBER.items()}
ALLOWED_VALENCE = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}

# Typical covalent bond lengths in pm (standard tables, e.g. CRC Handbook; the same values EDM uses).
SINGLE_BOND_PM = {
    ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
    ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135,
    ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136,
    ("O", "O"): 148, ("O", "F"): 142, ("F", "F"): 142,
}
DOUBLE_BOND_PM = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("N", "N"): 125, ("N", "O"): 121, ("O", "O"): 121}
TRIPLE_BOND_PM = {("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110}
# EDM's margins, tuned there to maximise the stability of QM9's own molecules.
BOND_MARGINS_PM = (10, 5, 3)

#: Bond codes of generated bonds (and of perceived ones, which never use 4), as RDKit bond types.
AROMATIC = 4
_BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE,
               AROMATIC: Chem.BondType.AROMATIC}
#: RDKit bond types as bond codes.
BOND_CODES = {bond_type: code for code, bond_type in _BOND_TYPES.items()}


def _pair_table(lengths_pm: dict[tuple[str, str], float], offset_pm: float = 0.0) -> np.ndarray:
    """A symmetric (10, 10) table indexed by atomic numbers, in Å; zero where the pair has no entry."""
    table = np.zeros((10, 10))
    for (a, b), length in lengths_pm.items():
        za, zb = SYMBOL_TO_ATOMIC_NUMBER[a], SYMBOL_TO_ATOMIC_NUMBER[b]
        table[za, zb] = table[zb, za] = (length + offset_pm) / 100.0
    return table


def _midpoint_table(longer_pm: dict[tuple[str, str], float], shorter_pm: dict[tuple[str, str], float]) -> np.ndarray:
    """Half-way between two bond orders' typical lengths (Å), for pairs that have both."""
    return _pair_table({pair: (longer_pm[pair] + length) / 2 for pair, length in shorter_pm.items()})


_SINGLE_LIMIT, _DOUBLE_LIMIT, _TRIPLE_LIMIT = (
    _pair_table(table, margin)
    for table, margin in zip((SINGLE_BOND_PM, DOUBLE_BOND_PM, TRIPLE_BOND_PM), BOND_MARGINS_PM, strict=True)
)
# A bond shorter than half-way to the next order may take that order in the Kekulé step.
_CONJUGATED_LIMIT = _midpoint_table(SINGLE_BOND_PM, DOUBLE_BOND_PM)
_TRIPLE_CAPABLE_LIMIT = _midpoint_table(DOUBLE_BOND_PM, TRIPLE_BOND_PM)
_VALENCE_BY_Z = np.zeros(10, dtype=np.int64)
for _symbol, _valence in ALLOWED_VALENCE.items():
    _VALENCE_BY_Z[SYMBOL_TO_ATOMIC_NUMBER[_symbol]] = _valence


@dataclass(frozen=True, eq=False)
class Molecule:
    """Atoms of H, C, N, O, F (``atomic_numbers``, shape (n,)) at ``positions`` (shape (n, 3), Å).

    ``bonds`` (shape (n, n): 0 none, 1-3 single to triple, 4 aromatic; symmetric, zero diagonal) and
    ``charges`` (formal charges, shape (n,)) are the molecule's own, as a bond-aware model generates
    them or an SDF file states them; without ``bonds``, bonds are perceived from the distances.
    ``implicit_hydrogens`` marks a molecule of heavy atoms whose hydrogens fill the free valences.
    Equality is identity (arrays have no single truth value); the arrays are stored read-only.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    bonds: np.ndarray | None = None
    charges: np.ndarray | None = None
    implicit_hydrogens: bool = False

    def __post_init__(self) -> None:
        atomic_numbers = np.array(self.atomic_numbers)
        positions = np.array(self.positions, dtype=np.float64)
        integer_typed = atomic_numbers.size == 0 or np.issubdtype(atomic_numbers.dtype, np.integer)
        if atomic_numbers.ndim != 1 or not integer_typed:
            raise ValueError(f"atomic_numbers must be a 1-D integer array, got dtype {atomic_numbers.dtype} "
                             f"and shape {atomic_numbers.shape}")
        if positions.shape != (len(atomic_numbers), 3):
            raise ValueError(f"positions must have shape (n, 3) = ({len(atomic_numbers)}, 3) to match "
                             f"atomic_numbers, got {positions.shape}")
        unsupported = sorted({int(z) for z in atomic_numbers} - set(ATOMIC_NUMBER_TO_SYMBOL))
        if unsupported:
            raise ValueError(f"unsupported atomic numbers {unsupported}; supported: H=1 C=6 N=7 O=8 F=9")
        atomic_numbers = atomic_numbers.astype(np.int64)
        for name, value in (("atomic_numbers", atomic_numbers), ("positions", positions),
                            ("bonds", self._checked_bonds(len(atomic_numbers))),
                            ("charges", self._checked_charges(len(atomic_numbers)))):
            if value is not None:
                value.setflags(write=False)
            object.__setattr__(self, name, value)

    def _checked_bonds(self, n: int) -> np.ndarray | None:
        if self.bonds is None:
            return None
        bonds = np.array(self.bonds)
        if bonds.shape != (n, n) or not (bonds.size == 0 or np.issubdtype(bonds.dtype, np.integer)):
            raise ValueError(f"bonds must be an integer ({n}, {n}) matrix of bond codes, got dtype {bonds.dtype} "
                             f"and shape {bonds.shape}")
        if not np.array_equal(bonds, bonds.T):
            i, j = np.argwhere(bonds != bonds.T)[0]
            raise ValueError(f"bonds must be symmetric: atoms {i}-{j} have bond {bonds[i, j]} but {j}-{i} has "
                             f"{bonds[j, i]}")
        if np.diagonal(bonds).any() or ((bonds < 0) | (bonds > AROMATIC)).any():
            raise ValueError("bonds must have a zero diagonal and codes 0 (none) .. 3 (triple), 4 (aromatic)")
        return bonds.astype(np.int64)

    def _checked_charges(self, n: int) -> np.ndarray | None:
        if self.charges is None:
            return None
        charges = np.array(self.charges)
        if charges.shape != (n,) or not (charges.size == 0 or np.issubdtype(charges.dtype, np.integer)):
            raise ValueError(f"charges must be {n} integer formal charges, got dtype {charges.dtype} and shape "
                             f"{charges.shape}")
        return charges.astype(np.int64)

    @property
    def symbols(self) -> tuple[str, ...]:
        """Element symbols in atom order."""
        return tuple(ATOMIC_NUMBER_TO_SYMBOL[int(z)] for z in self.atomic_numbers)

    def __len__(self) -> int:
        return len(self.atomic_numbers)


def _distances(mol: Molecule) -> np.ndarray:
    return np.linalg.norm(mol.positions[:, None, :] - mol.positions[None, :, :], axis=-1)


def _pair_values(table: np.ndarray, mol: Molecule) -> np.ndarray:
    z = mol.atomic_numbers
    return table[z[:, None], z[None, :]]


def _edm_bond_orders(mol: Molecule, distances: np.ndarray) -> np.ndarray:
    orders = np.where(
        distances < _pair_values(_TRIPLE_LIMIT, mol), 3,
        np.where(distances < _pair_values(_DOUBLE_LIMIT, mol), 2,
                 np.where(distances < _pair_values(_SINGLE_LIMIT, mol), 1, 0)),
    ).astype(np.int64)
    np.fill_diagonal(orders, 0)
    return orders


def _distribute_extra_orders(edges: list[tuple[int, int, int]], deficits: np.ndarray) -> list[int] | None:
    """Extra bond orders (at most each edge's capacity) that use up every atom's deficit exactly, or None.

    A depth-first search over the edges; an atom must be satisfied once its last edge is decided.
    """
    last_edge = {atom: index for index, (a, b, _) in enumerate(edges) for atom in (a, b)}
    if any(deficit != 0 and atom not in last_edge for atom, deficit in enumerate(deficits)):
        return None
    residual = deficits.copy()
    extras = [0] * len(edges)

    def search(index: int) -> bool:
        if index == len(edges):
            return True
        a, b, capacity = edges[index]
        for extra in range(min(capacity, residual[a], residual[b]), -1, -1):
            residual[a] -= extra
            residual[b] -= extra
            settled = all(residual[atom] == 0 for atom in (a, b) if last_edge[atom] == index)
            if settled and search(index + 1):
                extras[index] = extra
                return True
            residual[a] += extra
            residual[b] += extra
        return False

    return extras if search(0) else None


def _kekulize(mol: Molecule, distances: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Re-assign orders within conjugated systems that hold an unstable atom, when that makes them all stable.

    A conjugated system is a connected set of bonds shorter than half-way between their single and double
    lengths; its bonds are reset to single and raised (to triple where short enough) to fill valences.
    """
    valence = _VALENCE_BY_Z[mol.atomic_numbers]
    unstable = orders.sum(axis=1) != valence
    if not unstable.any():
        return orders
    conjugated = (orders > 0) & (distances < _pair_values(_CONJUGATED_LIMIT, mol))
    triple_capable = distances < _pair_values(_TRIPLE_CAPABLE_LIMIT, mol)
    _, component_of = connected_components(conjugated, directed=False)
    result = orders.copy()
    for component in np.unique(component_of[unstable]):
        atoms = np.flatnonzero(component_of == component)
        pairs = [(i, j) for i in range(len(atoms)) for j in range(i + 1, len(atoms))
                 if conjugated[atoms[i], atoms[j]]]
        if not pairs:
            continue
        trial = result.copy()
        for i, j in pairs:
            trial[atoms[i], atoms[j]] = trial[atoms[j], atoms[i]] = 1
        deficits = valence[atoms] - trial[atoms].sum(axis=1)
        if (deficits < 0).any():
            continue
        edges = [(i, j, 2 if triple_capable[atoms[i], atoms[j]] else 1) for i, j in pairs]
        extras = _distribute_extra_orders(edges, deficits)
        if extras is None:
            continue
        for (i, j), extra in zip(pairs, extras, strict=True):
            trial[atoms[i], atoms[j]] = trial[atoms[j], atoms[i]] = 1 + extra
        result = trial
    return result


def perceive_bonds(mol: Molecule, kekulize: bool = True) -> np.ndarray:
    """Bond-order matrix (n, n) from interatomic distances: symmetric, zero diagonal, orders 0-3.

    ``kekulize=False`` is EDM's table look-up alone; the default also resolves aromatic rings (see module).
    """
    distances = _distances(mol)
    orders = _edm_bond_orders(mol, distances)
    return _kekulize(mol, distances, orders) if kekulize else orders


def _rdkit_graph(mol: Molecule, orders: np.ndarray) -> Chem.RWMol:
    """Atoms (with their formal charges, and implicit hydrogens only where the molecule has them) joined by
    bonds of ``orders``; unsanitised."""
    editable = Chem.RWMol()
    charges = np.zeros(len(mol), np.int64) if mol.charges is None else mol.charges
    for z, charge in zip(mol.atomic_numbers, charges, strict=True):
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(not mol.implicit_hydrogens)
        atom.SetFormalCharge(int(charge))
        editable.AddAtom(atom)
    for i, j in zip(*np.nonzero(np.triu(orders)), strict=True):
        editable.AddBond(int(i), int(j), _BOND_TYPES[int(orders[i, j])])
        if orders[i, j] == AROMATIC:
            editable.GetBondBetweenAtoms(int(i), int(j)).SetIsAromatic(True)
            editable.GetAtomWithIdx(int(i)).SetIsAromatic(True)
            editable.GetAtomWithIdx(int(j)).SetIsAromatic(True)
    return editable


def _with_conformer(editable: Chem.RWMol, mol: Molecule) -> Chem.Mol:
    """The RDKit molecule with ``mol``'s positions as its 3-D conformer."""
    conformer = Chem.Conformer(len(mol))
    for index, (x, y, z) in enumerate(mol.positions):
        conformer.SetAtomPosition(index, Point3D(float(x), float(y), float(z)))
    conformer.Set3D(True)
    editable.AddConformer(conformer, assignId=True)
    return editable.GetMol()


def bond_orders(mol: Molecule, kekulize: bool = True) -> np.ndarray:
    """Integer bond orders (n, n): the molecule's own bonds with aromatic rings in a Kekulé form, or, without
    bonds, those perceived from distances (``perceive_bonds``). Aromatic bonds that admit no Kekulé form
    count 1.5, which no valence matches."""
    if mol.bonds is None:
        return perceive_bonds(mol, kekulize).astype(np.float64)
    orders = mol.bonds.astype(np.float64)
    aromatic = mol.bonds == AROMATIC
    if aromatic.any():
        graph = _rdkit_graph(mol, mol.bonds)
        try:
            with BlockLogs():
                Chem.Kekulize(graph, clearAromaticFlags=True)
        except Chem.KekulizeException:
            orders[aromatic] = 1.5
        else:
            for bond in graph.GetBonds():
                i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
                orders[i, j] = orders[j, i] = bond.GetBondTypeAsDouble()
    return orders


def allowed_valence(atomic_numbers: np.ndarray, charges: np.ndarray | None = None) -> np.ndarray:
    """The valence each atom must have: H 1, C 4, N 3, O 2, F 1, shifted by a formal charge (N+ 4, O- 1,
    C+ and C- 3)."""
    valence = _VALENCE_BY_Z[atomic_numbers]
    if charges is None:
        return valence
    carbon_like = np.isin(atomic_numbers, (1, 6))
    return np.where(carbon_like, valence - np.abs(charges), valence + charges)


def atom_stability(mol: Molecule, kekulize: bool = True) -> np.ndarray:
    """Per atom, whether its bond orders sum to its allowed valence (``allowed_valence``); with implicit
    hydrogens, whether they stay within it (hydrogens fill the rest).

    The bonds are the molecule's own where it has them, else perceived from distances; ``kekulize``
    applies to perception only.
    """
    valence, allowed = bond_orders(mol, kekulize).sum(axis=1), allowed_valence(mol.atomic_numbers, mol.charges)
    return valence <= allowed if mol.implicit_hydrogens else valence == allowed


def is_stable(mol: Molecule, kekulize: bool = True) -> bool:
    """Whether every atom is stable (EDM's molecule stability)."""
    return bool(atom_stability(mol, kekulize).all())


def to_rdkit(mol: Molecule) -> Chem.Mol | None:
    """The sanitised RDKit molecule with its bonds and charges and a 3-D conformer, or None if it does not
    sanitise. The bonds are the molecule's own, or perceived from distances where it has none.

    Atoms get no implicit hydrogens unless the molecule is marked ``implicit_hydrogens``: the molecule
    holds exactly the atoms given (an atom short of bonds becomes a radical). Stereochemistry is not
    assigned, so SMILES carry none.
    """
    rdkit_mol = _with_conformer(_rdkit_graph(mol, perceive_bonds(mol) if mol.bonds is None else mol.bonds), mol)
    with BlockLogs():
        failed = Chem.SanitizeMol(rdkit_mol, catchErrors=True)
    return None if failed != Chem.SanitizeFlags.SANITIZE_NONE else rdkit_mol


def valid_rdkit(mol: Molecule, keep_hydrogens: bool = False) -> Chem.Mol | None:
    """The sanitised RDKit molecule if ``mol`` is valid (sanitises and is one connected fragment), else None.

    Hydrogens become implicit unless ``keep_hydrogens``; this is the one definition of validity.
    """
    return _valid_of_sanitised(to_rdkit(mol), keep_hydrogens)


def _valid_of_sanitised(rdkit_mol: Chem.Mol | None, keep_hydrogens: bool = False) -> Chem.Mol | None:
    """``valid_rdkit`` of a molecule ``to_rdkit`` has already built (None if it did not sanitise)."""
    if rdkit_mol is None or len(Chem.GetMolFrags(rdkit_mol)) != 1:
        return None
    return rdkit_mol if keep_hydrogens else Chem.RemoveHs(rdkit_mol)


def is_closed_shell(rdkit_mol: Chem.Mol | None) -> bool:
    """Whether a (valid) RDKit molecule has no unpaired electrons; False for None."""
    return rdkit_mol is not None and all(atom.GetNumRadicalElectrons() == 0 for atom in rdkit_mol.GetAtoms())


def canonical_smiles(mol: Molecule) -> str | None:
    """Canonical SMILES (hydrogens implicit, no stereo) of a valid molecule, else None."""
    rdkit_mol = valid_rdkit(mol)
    return None if rdkit_mol is None else Chem.MolToSmiles(rdkit_mol)


def canonicalize_smiles(smiles: str) -> str | None:
    """A SMILES string in the form ``canonical_smiles`` produces (no stereo), or None if RDKit cannot parse it.

    Use it on training-set SMILES before passing them to ``chemistry_metrics`` so novelty compares like with like.
    """
    with BlockLogs():
        rdkit_mol = Chem.MolFromSmiles(smiles)
    return None if rdkit_mol is None else Chem.MolToSmiles(rdkit_mol, isomericSmiles=False)


def _fraction(count: int, total: int) -> float:
    return count / total if total else 0.0


def stability_metrics(mols: Sequence[Molecule], prefix: str = "", suffix: str = "", kekulize: bool = True
                      ) -> dict[str, float | None]:
    """The share of stable atoms and of molecules whose every atom is stable (``atom_stability``), under
    ``{prefix}atom_stability{suffix}`` and ``{prefix}molecule_stability{suffix}``.

    Molecules with implicit hydrogens have no such measure (any atom short of bonds could be filled up
    with hydrogens, so a cloud of lone atoms would count as stable): both are None; validity judges them.
    """
    if any(mol.implicit_hydrogens for mol in mols):
        return {f"{prefix}atom_stability{suffix}": None, f"{prefix}molecule_stability{suffix}": None}
    stable_atoms = [atom_stability(mol, kekulize) for mol in mols]
    return {f"{prefix}atom_stability{suffix}": _fraction(sum(int(s.sum()) for s in stable_atoms),
                                                         sum(len(s) for s in stable_atoms)),
            f"{prefix}molecule_stability{suffix}": _fraction(sum(bool(s.all()) for s in stable_atoms), len(mols))}


def chemistry_metrics(
    mols: Sequence[Molecule], training_smiles: set[str] | None = None, kekulize: bool = True
) -> dict[str, float]:
    """Atom and molecule stability, validity, uniqueness and (given training SMILES) novelty of samples.

    Stability is None for molecules with implicit hydrogens (``stability_metrics``).

    Uniqueness is unique valid SMILES over valid molecules; novelty is unique valid SMILES outside
    ``training_smiles`` (canonicalised with ``canonicalize_smiles``) over unique valid SMILES.
    ``closed_shell`` is the share of molecules that are valid and have no unpaired electrons (validity
    admits radicals). ``fragmented`` is the share that sanitise but fall into several fragments: invalid
    for being disconnected, not for their chemistry, so it says which of the two a validity gap is.
    ``kekulize`` applies to the stability metrics only (``False`` reproduces EDM's numbers).
    """
    sanitised = [to_rdkit(mol) for mol in mols]
    valid = [_valid_of_sanitised(rdkit_mol) for rdkit_mol in sanitised]
    smiles = [Chem.MolToSmiles(m) for m in valid if m is not None]
    unique = set(smiles)
    fragmented = sum(m is not None and len(Chem.GetMolFrags(m)) > 1 for m in sanitised)
    metrics = {
        **stability_metrics(mols, kekulize=kekulize),
        "validity": _fraction(len(smiles), len(mols)),
        "fragmented": _fraction(fragmented, len(mols)),
        "closed_shell": _fraction(sum(map(is_closed_shell, valid)), len(mols)),
        "uniqueness": _fraction(len(unique), len(smiles)),
        "n": float(len(mols)),
    }
    if training_smiles is not None:
        metrics["novelty"] = _fraction(len(unique - training_smiles), len(unique))
    return metrics



def split_off_fragments(mols: Sequence[Molecule], top: int = 10) -> dict[str, int]:
    """The ``top`` commonest fragments that ``fragmented`` samples carry beside their largest one, as
    canonical SMILES (hydrogens implicit where RDKit can: H2 stays ``[H][H]``) with their counts: what a
    model adds to fill a molecule's atom count when it fails to connect it (methane, H2, water, ...)."""
    counts: Counter[str] = Counter()
    for mol in mols:
        rdkit_mol = to_rdkit(mol)
        if rdkit_mol is None:
            continue
        fragments = sorted(Chem.GetMolFrags(rdkit_mol, asMols=True), key=lambda f: f.GetNumAtoms(), reverse=True)
        with BlockLogs():  # a lone hydrogen fragment makes RemoveHs warn on stderr
            counts.update(Chem.MolToSmiles(Chem.RemoveHs(f), isomericSmiles=False) for f in fragments[1:])
    return dict(counts.most_common(top))

#: Conformers of PoseBusters' internal-energy reference ensemble (its default is 50, which takes minutes for
#: a thousand odd generated molecules on a CPU core); the check is the same, with a noisier reference mean.
ENERGY_CONFORMERS = 10


def _point_rdkit_log_at_live_stderr() -> None:
    """PoseBusters' log capture leaves RDKit's Python log handler on whatever ``sys.stderr`` was when it last
    ran, and flushes that stream when it next captures. If the stream has been closed since (pytest's
    ``capsys``, a notebook's redirected cell), the flush raises inside the InChI check, and every molecule
    fails ``inchi_convertible``. Pointing the handler at the current ``sys.stderr`` first avoids that."""
    import rdkit

    rdkit.log_handler.stream = sys.stderr


def _posebusters() -> Any:
    """PoseBusters' "mol" checks with ``ENERGY_CONFORMERS``; its config lists the energy module twice
    (once without a reported test), so the duplicate goes."""
    from posebusters import PoseBusters

    buster = PoseBusters(config="mol")
    modules = []
    for module in buster.config["modules"]:
        if module["function"] == "energy_ratio":
            if "chosen_binary_test_output" not in module:
                continue
            module["parameters"]["ensemble_number_conformations"] = ENERGY_CONFORMERS
        modules.append(module)
    buster.config["modules"] = modules
    return buster


def posebusters_metrics(mols: Sequence[Molecule]) -> dict[str, Any]:
    """PoseBusters' checks of 3-D plausibility ("mol": sanitisation, connectivity, radicals, bond lengths
    and angles, internal clashes, ring and double-bond flatness, internal energy) on the valid molecules:
    the share of them passing every check, each check's pass rate, and how many were checked."""
    valid = [m for m in (valid_rdkit(mol, keep_hydrogens=True) for mol in mols) if m is not None]
    if not valid:
        return {"posebusters_pass": 0.0, "posebusters_checked": 0, "posebusters_checks": {}}
    logging.getLogger("posebusters").setLevel(logging.ERROR)  # one warning per molecule it cannot embed
    _point_rdkit_log_at_live_stderr()
    with BlockLogs():
        passed = _posebusters().bust(valid, None, None).eq(True)  # a check it could not run (NaN) is no pass
    return {"posebusters_pass": float(passed.all(axis=1).mean()), "posebusters_checked": len(valid),
            "posebusters_checks": {column: float(passed[column].mean()) for column in passed.columns}}


def molecule_from_smiles(smiles: str, seed: int = 0, with_bonds: bool = False) -> Molecule:
    """A 3-D molecule with explicit hydrogens from SMILES (ETKDG embedding, MMFF optimisation); for tests and demos.

    ``with_bonds`` keeps the SMILES' bonds (aromatic ones as such) and formal charges in the molecule.
    """
    rdkit_mol = Chem.MolFromSmiles(smiles)
    if rdkit_mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    rdkit_mol = Chem.AddHs(rdkit_mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(rdkit_mol, params) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r} in 3-D; try another seed")
    if AllChem.MMFFOptimizeMolecule(rdkit_mol) == -1:
        raise ValueError(f"MMFF has no parameters for {smiles!r}")
    bonds = charges = None
    if with_bonds:
        bonds = np.zeros((rdkit_mol.GetNumAtoms(),) * 2, np.int64)
        for bond in rdkit_mol.GetBonds():
            i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            bonds[i, j] = bonds[j, i] = BOND_CODES[bond.GetBondType()]
        charges = np.array([atom.GetFormalCharge() for atom in rdkit_mol.GetAtoms()])
    return Molecule(np.array([atom.GetAtomicNum() for atom in rdkit_mol.GetAtoms()]),
                    rdkit_mol.GetConformer().GetPositions(), bonds, charges)


#: Morgan fingerprints of ``diversity``: radius 2 (ECFP4), 2048 bits.
_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
#: A bound on xyz2mol's search for bond orders (a garbled geometry could make it search at length).
PERCEPTION_ITERATIONS = 10_000


def diversity(rdkit_mols: Sequence[Chem.Mol]) -> float:
    """Mean pairwise Tanimoto distance of Morgan fingerprints over distinct pairs: 0 when every molecule is the
    same, 1 when no two share a substructure; 0.0 for fewer than two molecules. Unlike uniqueness, it falls
    when molecules collapse onto a few scaffolds."""
    fingerprints = [_MORGAN.GetFingerprint(m) for m in rdkit_mols]
    pairs = len(fingerprints) * (len(fingerprints) - 1) // 2
    if not pairs:
        return 0.0
    similarity = sum(sum(DataStructs.BulkTanimotoSimilarity(fingerprint, fingerprints[index + 1:]))
                     for index, fingerprint in enumerate(fingerprints[:-1]))
    return 1.0 - similarity / pairs


def _rdkit_connectivity(mol: Molecule) -> Chem.Mol:
    """The atoms at their positions, without the molecule's bonds or charges, joined by RDKit's connectivity
    (covalent radii); unsanitised."""
    atoms_only = Molecule(mol.atomic_numbers, mol.positions, implicit_hydrogens=mol.implicit_hydrogens)
    rdkit_mol = _with_conformer(_rdkit_graph(atoms_only, np.zeros((len(mol), len(mol)), np.int64)), atoms_only)
    rdDetermineBonds.DetermineConnectivity(rdkit_mol)
    for atom in rdkit_mol.GetAtoms():  # the connectivity marks every atom's hydrogens as all explicit
        atom.SetNoImplicit(not mol.implicit_hydrogens)
    return rdkit_mol


def _rdkit_reading(connected: Chem.Mol, implicit_hydrogens: bool) -> Chem.Mol | None:
    """A copy of ``connected`` with xyz2mol's bond orders for a neutral molecule (single bonds, hydrogens
    filling valences, where hydrogens are implicit), if it sanitises into one fragment, else None."""
    rdkit_mol = Chem.Mol(connected)
    with BlockLogs():
        try:
            if not implicit_hydrogens:
                rdDetermineBonds.DetermineBondOrders(rdkit_mol, charge=0, embedChiral=False,
                                                     maxIterations=PERCEPTION_ITERATIONS)
            Chem.SanitizeMol(rdkit_mol)
        except (ValueError, RuntimeError):
            return None
    return rdkit_mol if len(Chem.GetMolFrags(rdkit_mol)) == 1 else None


def rdkit_reading(mol: Molecule) -> Chem.Mol | None:
    """The molecule RDKit reads from the atoms and positions alone (as from an XYZ file), or None if it reads
    none: a measure independent of the molecule's own bonds and of EDM's distance table."""
    return _rdkit_reading(_rdkit_connectivity(mol), mol.implicit_hydrogens)


def oracle_metrics(mols: Sequence[Molecule]) -> dict[str, float | None]:
    """Measures no reward is computed from, for catching reward hacking: ``diversity`` of the valid molecules;
    ``rdkit_validity``, the share of molecules valid as RDKit reads them from positions alone
    (``rdkit_reading``); and, for molecules with their own bonds, ``rdkit_agreement``, the share valid by
    those bonds whose bond graph (which atoms are bonded, whatever the order) is the one RDKit reads from
    the positions (None for point clouds, whose bonds are read from positions anyway)."""
    valid = [valid_rdkit(mol) for mol in mols]
    connected = [_rdkit_connectivity(mol) for mol in mols]
    readable = sum(_rdkit_reading(graph, mol.implicit_hydrogens) is not None
                   for mol, graph in zip(mols, connected, strict=True))
    agreement = None
    if mols and all(mol.bonds is not None for mol in mols):
        agreement = _fraction(sum(
            rdkit_mol is not None and np.array_equal(Chem.GetAdjacencyMatrix(graph) > 0, mol.bonds > 0)
            for mol, rdkit_mol, graph in zip(mols, valid, connected, strict=True)), len(mols))
    return {"diversity": diversity([m for m in valid if m is not None]),
            "rdkit_validity": _fraction(readable, len(mols)), "rdkit_agreement": agreement}
