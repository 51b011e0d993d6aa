"""QM9 from the ``qm9pack`` package, converted once into a cached array file, with EDM-style splits.

``qm9pack`` ships QM9 as three CSV files (DFT coordinates, elements, SMILES, properties). Parsing them
takes about half a minute and finding every molecule's bonds (``bonds.qm9_bonds``) about a minute more, so the
first use writes ``qm9-v3.npz`` in the cache folder (``$RGDM_CACHE`` or ``~/.cache/rgdm``) and every later
use loads that file (``allow_pickle=False``: plain arrays only). A ``qm9-v2.npz`` there (the same arrays
without bonds) spares the parsing.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgdm.domains.base import cache_folder
from rgdm.io import save_arrays

#: Elements of QM9 in the one-hot order of EDM.
ELEMENTS = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
MAX_ATOMS = 29
MAX_HEAVY_ATOMS = 9
HARTREE_TO_MEV = 27211.386
#: Property name -> (CSV column, factor to EDM's units).
PROPERTIES = {
    "alpha": ("Polarizability_bohr3", 1.0),  # Bohr^3
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_MEV),  # meV
    "homo": ("HOMO_au", HARTREE_TO_MEV),  # meV
    "lumo": ("LUMO_au", HARTREE_TO_MEV),  # meV
    "mu": ("Dipole_debye", 1.0),  # Debye
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0),  # cal / (mol K)
}
CACHE_NAME = "qm9-v3.npz"
#: The cache before bonds were added: upgraded to ``CACHE_NAME`` without parsing the CSVs again.
PREVIOUS_CACHE_NAME = "qm9-v2.npz"
#: The cache stores each symmetric bond matrix as its upper triangle.
_UPPER = np.triu_indices(MAX_ATOMS, 1)
CSV_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
#: EDM's split sizes: 100k training molecules, 10% test, the rest validation (seed 0 permutation).
TRAIN_SIZE = 100_000
TEST_FRACTION = 0.1
SPLITS = ("train", "val", "test", "train_a", "train_b")
log = logging.getLogger("rgdm.molecules")


class QM9DataError(ValueError):
    """QM9 is missing or unreadable; the message says how to fix it."""


@dataclass(frozen=True)
class QM9:
    """Molecules as padded arrays: atomic numbers (0 = padding), positions in Å, SMILES, properties, bonds.

    ``canonical`` holds each SMILES in the stereo-free canonical form samples are compared in
    (novelty), empty where RDKit cannot parse it. ``bonds`` (codes of ``bonds.BOND_TYPES``) and
    ``formal_charges`` agree with both the geometry and the SMILES; they are zero for the few molecules
    whose geometry and SMILES disagree (``agrees`` False), which a model of bonds should leave out.
    """

    atomic_numbers: np.ndarray  # (M, 29) int8
    positions: np.ndarray  # (M, 29, 3) float32
    smiles: np.ndarray  # (M,) str
    canonical: np.ndarray  # (M,) str
    properties: dict[str, np.ndarray]  # name -> (M,) float64
    bonds: np.ndarray  # (M, 29, 29) int8, symmetric, zero diagonal
    formal_charges: np.ndarray  # (M, 29) int8
    agrees: np.ndarray  # (M,) bool

    def __len__(self) -> int:
        return len(self.smiles)

    @property
    def num_atoms(self) -> np.ndarray:
        return (self.atomic_numbers > 0).sum(1)

    def subset(self, index: np.ndarray) -> QM9:
        return QM9(self.atomic_numbers[index], self.positions[index], self.smiles[index], self.canonical[index],
                   {name: values[index] for name, values in self.properties.items()},
                   self.bonds[index], self.formal_charges[index], self.agrees[index])

    def without_hydrogens(self) -> QM9:
        """Heavy atoms only, moved to the front of each row (at most 9 atoms), with the bonds among them."""
        heavy = self.atomic_numbers > 1
        width = int(heavy.sum(1).max())
        order = np.argsort(~heavy, axis=1, kind="stable")[:, :width]
        kept = np.take_along_axis(heavy, order, axis=1)
        numbers = np.take_along_axis(self.atomic_numbers, order, axis=1) * kept
        positions = np.take_along_axis(self.positions, order[..., None], axis=1) * kept[..., None]
        charges = np.take_along_axis(self.formal_charges, order, axis=1) * kept
        bonds = self.bonds[np.arange(len(self))[:, None, None], order[:, :, None], order[:, None, :]]
        bonds = bonds * (kept[:, :, None] & kept[:, None, :])
        return QM9(numbers, positions.astype(np.float32), self.smiles, self.canonical, self.properties, bonds,
                   charges, self.agrees)


def qm9pack_folder() -> Path:
    """The folder of ``qm9pack``'s CSV files, found without importing the package.

    Importing ``qm9pack`` needs ``pkg_resources``, which recent setuptools no longer provides; its
    data files are all we use.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise QM9DataError("QM9 needs the package qm9pack: pip install qm9pack==1.0.3")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in CSV_PARTS if not (folder / name).is_file()]
    if missing:
        raise QM9DataError(f"qm9pack at {folder} lacks {', '.join(missing)}; reinstall it: "
                           "pip install --force-reinstall qm9pack==1.0.3")
    return folder


#: The CSVs write some numbers Mathematica-style with a trailing dot (``1.``), which JSON rejects.
_TRAILING_DOT = re.compile(r"\.(?=[,\]])")


def _parse_row(row: dict[str, str], where: str) -> tuple[list[int], list[list[float]]]:
    try:
        symbols = json.loads(row["Elements"].replace("'", '"'))
        positions = json.loads(_TRAILING_DOT.sub(".0", row["XYZ_Ang"]))
        numbers = [ATOMIC_NUMBERS[s] for s in symbols]
    except (KeyError, ValueError) as error:
        raise QM9DataError(f"{where}: malformed QM9 row ({error!r}); reinstall qm9pack") from None
    if len(numbers) != len(positions) or not 0 < len(numbers) <= MAX_ATOMS:
        raise QM9DataError(f"{where}: {len(numbers)} elements but {len(positions)} positions; reinstall qm9pack")
    return numbers, positions


def convert_qm9(source: Path, destination: Path) -> Path:
    """Parse the CSV files in ``source`` into one ``.npz`` at ``destination`` (written atomically).

    Takes about two minutes: RDKit canonicalises the SMILES once for every later novelty check, and finds
    every molecule's bonds.
    """
    from rgdm.domains.molecules.chemistry import canonicalize_smiles

    numbers, positions, smiles = [], [], []
    properties: dict[str, list[float]] = {name: [] for name in PROPERTIES}
    for part in CSV_PARTS:
        with open(source / part, newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), start=2):
                atoms, xyz = _parse_row(row, f"{source / part}:{line}")
                padded = np.zeros(MAX_ATOMS, np.int8)
                padded[: len(atoms)] = atoms
                coordinates = np.zeros((MAX_ATOMS, 3), np.float32)
                coordinates[: len(atoms)] = xyz
                numbers.append(padded)
                positions.append(coordinates)
                smiles.append(row["SMILES"])
                for name, (column, factor) in PROPERTIES.items():
                    properties[name].append(float(row[column]) * factor)
    arrays = {"atomic_numbers": np.stack(numbers), "positions": np.stack(positions),
              "smiles": np.array(smiles, dtype=str),
              "canonical": np.array([canonicalize_smiles(s) or "" for s in smiles]),
              **{f"property_{k}": np.array(v) for k, v in properties.items()}}
    save_arrays(destination, _with_bonds(arrays))
    return destination


def _with_bonds(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cache's arrays plus every molecule's bonds (upper triangles), formal charges and whether they agree."""
    from rgdm.domains.molecules.bonds import qm9_bonds

    found = qm9_bonds(arrays["atomic_numbers"], arrays["positions"], arrays["canonical"])
    log.info("QM9 bonds: %d of %d molecules agree with their SMILES; left out: %s", found.agrees.sum(),
             len(found.agrees), dict(found.rejected) or "none")
    return {**arrays, "bonds_upper": found.bonds[:, _UPPER[0], _UPPER[1]],
            "formal_charges": found.formal_charges, "agrees": found.agrees}


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise QM9DataError(f"the QM9 cache {path} is unreadable ({error}); delete it and it is rebuilt "
                           "from qm9pack on the next run") from None


def load_qm9(cache: Path | None = None) -> QM9:
    """All of QM9 (130,831 molecules, with hydrogens and bonds), converting ``qm9pack``'s CSVs on first use."""
    folder = cache or cache_folder()
    path = folder / CACHE_NAME
    if not path.is_file():
        if (folder / PREVIOUS_CACHE_NAME).is_file():
            save_arrays(path, _with_bonds(_read_arrays(folder / PREVIOUS_CACHE_NAME)))
        else:
            convert_qm9(qm9pack_folder(), path)
    arrays = _read_arrays(path)
    try:
        upper = arrays["bonds_upper"]
        bonds = np.zeros((len(upper), MAX_ATOMS, MAX_ATOMS), np.int8)
        bonds[:, _UPPER[0], _UPPER[1]] = bonds[:, _UPPER[1], _UPPER[0]] = upper
        data = QM9(arrays["atomic_numbers"], arrays["positions"], arrays["smiles"], arrays["canonical"],
                   {name: arrays[f"property_{name}"] for name in PROPERTIES}, bonds, arrays["formal_charges"],
                   arrays["agrees"])
    except (KeyError, ValueError) as error:
        raise QM9DataError(f"the QM9 cache {path} is incomplete or malformed ({error}); delete it to rebuild "
                           "it") from None
    shapes = {"atomic_numbers": (MAX_ATOMS,), "positions": (MAX_ATOMS, 3), "formal_charges": (MAX_ATOMS,),
              "agrees": ()}
    if any(getattr(data, name).shape != (len(data), *shape) for name, shape in shapes.items()):
        raise QM9DataError(f"the QM9 cache {path} has arrays of the wrong shape; delete it to rebuild it")
    return data


def split_indices(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """EDM-style splits of ``size`` molecules: train (100k), test (10%), val (the rest: 17,748 of QM9).

    ``train_a`` and ``train_b`` are the two disjoint halves of train used by the property-predictor
    protocol: one half trains the predictor that rewards, the other the one that measures.
    """
    permutation = np.random.default_rng(seed).permutation(size)
    test_size = int(size * TEST_FRACTION)
    train_size = min(TRAIN_SIZE, size - 2 * test_size)
    train = permutation[:train_size]
    half = len(train) // 2
    return {
        "train": train,
        "test": permutation[train_size : train_size + test_size],
        "val": permutation[train_size + test_size :],
        "train_a": train[:half],
        "train_b": train[half:],
    }


def pad_molecules(molecules: Sequence[Any], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Molecules (with ``atomic_numbers`` and ``positions``) as padded arrays of ``width`` atoms
    (0 = no atom); a molecule with more atoms than ``width`` is left empty for the caller to flag."""
    numbers = np.zeros((len(molecules), width), np.int64)
    positions = np.zeros((len(molecules), width, 3))
    for row, mol in enumerate(molecules):
        if len(mol.atomic_numbers) <= width:
            numbers[row, : len(mol.atomic_numbers)] = mol.atomic_numbers
            positions[row, : len(mol.atomic_numbers)] = mol.positions
    return numbers, positions
