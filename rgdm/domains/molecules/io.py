"""Molecule files: multi-frame XYZ (every molecule), SDF (valid molecules, via RDKit) and PNG grids of drawings.

The readers are strict: any malformed input raises ``MoleculeFileError`` naming the file, where the problem
is, what is wrong and how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rdkit import Chem
from rdkit.Chem import AllChem, Draw
from rdkit.rdBase import BlockLogs

from rgdm.domains.molecules.chemistry import BOND_CODES, SYMBOL_TO_ATOMIC_NUMBER, Molecule, valid_rdkit

_SUPPORTED = " ".join(SYMBOL_TO_ATOMIC_NUMBER)
# Longest atom count accepted; longer digit strings cannot be real counts (and Python limits int parsing).
_MAX_COUNT_DIGITS = 9


class MoleculeFileError(ValueError):
    """A molecule file that cannot be read; the message says where, what is wrong and how to fix it."""


def write_xyz(mols: Sequence[Molecule], path: str | Path, comments: Sequence[str] | None = None) -> Path:
    """Write every molecule as one frame of a multi-frame XYZ file (coordinates in Å, 6 decimals)."""
    path = Path(path)
    if not mols:
        raise ValueError("write_xyz needs at least one molecule (an empty XYZ file cannot be read back)")
    if comments is None:
        comments = [""] * len(mols)
    if len(comments) != len(mols):
        raise ValueError(f"got {len(comments)} comments for {len(mols)} molecules; give one per molecule")
    lines: list[str] = []
    for index, (mol, comment) in enumerate(zip(mols, comments, strict=True)):
        if len(mol) == 0:
            raise ValueError(f"molecule {index} has no atoms; an XYZ frame needs at least one")
        if len(comment.splitlines()) > 1:
            raise ValueError(f"comment {index} spans several lines; an XYZ comment must be one line")
        lines += [str(len(mol)), comment.strip("\r\n")]
        lines += [f"{symbol} {x:.6f} {y:.6f} {z:.6f}"
                  for symbol, (x, y, z) in zip(mol.symbols, mol.positions, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise MoleculeFileError(f"{path}: no such file; check the path") from error
    except OSError as error:
        raise MoleculeFileError(f"{path}: cannot be read ({error.strerror}); check the path and permissions") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        raise MoleculeFileError(f"{path}: line {line_number}: not UTF-8 text ({error.reason}); "
                                "an XYZ file must be plain text") from error


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut short when long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _parse_atom_count(path: Path, line_number: int, line: str) -> int:
    text = line.strip()
    is_count = text.isascii() and text.isdigit() and len(text) <= _MAX_COUNT_DIGITS
    if not is_count or int(text) == 0:
        raise MoleculeFileError(f"{path}: line {line_number}: expected the atom count of a frame as a positive "
                                f"integer, got {_shown(text)}; each frame starts with its number of atoms")
    return int(text)


def _parse_coordinate(path: Path, line_number: int, token: str, axis: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = None
    if value is None or not token.isascii():
        raise MoleculeFileError(f"{path}: line {line_number}: {axis} coordinate {_shown(token)} is not a number; "
                                "write coordinates as decimal numbers in Å, e.g. 1.234567")
    if not math.isfinite(value):
        raise MoleculeFileError(f"{path}: line {line_number}: {axis} coordinate {_shown(token)} is not finite; "
                                "replace NaN or infinite coordinates with real positions")
    return value


def _parse_atom(path: Path, line_number: int, line: str) -> tuple[int, list[float]]:
    fields = line.split()
    if len(fields) != 4:
        raise MoleculeFileError(f"{path}: line {line_number}: expected 4 fields 'symbol x y z', got {len(fields)}; "
                                "check the frame's atom count matches its atom lines")
    symbol = fields[0]
    if symbol not in SYMBOL_TO_ATOMIC_NUMBER:
        raise MoleculeFileError(f"{path}: line {line_number}: unknown element symbol {_shown(symbol)}; "
                                f"supported symbols are {_SUPPORTED}")
    position = [_parse_coordinate(path, line_number, token, axis)
                for token, axis in zip(fields[1:], "xyz", strict=True)]
    return SYMBOL_TO_ATOMIC_NUMBER[symbol], position


def read_xyz(path: str | Path) -> list[Molecule]:
    """Every frame of a multi-frame XYZ file; trailing blank lines are allowed, nothing else out of place."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise MoleculeFileError(f"{path}: line 1: empty file; an XYZ file holds frames of an atom count line, "
                                "a comment line and one 'symbol x y z' line per atom")
    mols: list[Molecule] = []
    start = 0
    while start < len(lines):
        count = _parse_atom_count(path, start + 1, lines[start])
        first_atom = start + 2
        if first_atom + count > len(lines):
            raise MoleculeFileError(f"{path}: line {len(lines)}: file ends inside the frame starting at line "
                                    f"{start + 1}, which promises {count} atoms but has "
                                    f"{max(len(lines) - first_atom, 0)}; complete the frame or fix its atom count")
        atoms = [_parse_atom(path, number + 1, lines[number]) for number in range(first_atom, first_atom + count)]
        mols.append(Molecule(np.array([z for z, _ in atoms]), np.array([position for _, position in atoms])))
        start = first_atom + count
    return mols


def write_sdf(mols: Sequence[Molecule], path: str | Path) -> int:
    """Write the valid molecules (with hydrogens and 3-D coordinates) to an SDF file; returns how many."""
    written = 0
    with Chem.SDWriter(str(path)) as writer:
        for mol in mols:
            rdkit_mol = valid_rdkit(mol, keep_hydrogens=True)
            if rdkit_mol is None:
                continue
            rdkit_mol.SetProp("_Name", Chem.MolToSmiles(Chem.RemoveHs(rdkit_mol)))
            writer.write(rdkit_mol)
            written += 1
    return written


def _bonds(path: Path, index: int, rdkit_mol: Chem.Mol, require_bonds: bool) -> np.ndarray | None:
    """A record's bond codes (n, n); None for a record without bonds unless ``require_bonds``."""
    if rdkit_mol.GetNumBonds() == 0 and rdkit_mol.GetNumAtoms() > 1:
        if require_bonds:
            raise MoleculeFileError(f"{path}: record {index}: no bonds; this model generates bonds, so its SDF "
                                    "input must state them in the bond block (write it with RDKit from a molecule "
                                    "that has bonds)")
        return None
    bonds = np.zeros((rdkit_mol.GetNumAtoms(),) * 2, np.int64)
    for bond in rdkit_mol.GetBonds():
        if bond.GetBondType() not in BOND_CODES:
            raise MoleculeFileError(f"{path}: record {index}: bond {bond.GetIdx() + 1} is of type "
                                    f"{bond.GetBondType()}; supported: single, double, triple, aromatic")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = BOND_CODES[bond.GetBondType()]
    return bonds


def read_sdf(path: str | Path, require_bonds: bool = False) -> list[Molecule]:
    """Every record of an SDF file as a molecule (elements H C N O F, 3-D coordinates, hydrogens kept),
    with the file's bonds and formal charges; a record without bonds has them perceived from distances
    later, or is an error with ``require_bonds`` (a bond-aware model reads bonds from its input)."""
    path = Path(path)
    if not path.is_file():
        raise MoleculeFileError(f"{path}: no such file; check the path")
    if not path.read_bytes().strip():
        return []  # what write_sdf leaves when no molecule is valid; RDKit refuses empty files
    with BlockLogs():
        records = list(Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False))
    mols: list[Molecule] = []
    for index, rdkit_mol in enumerate(records, start=1):
        if rdkit_mol is None:
            raise MoleculeFileError(f"{path}: record {index}: RDKit cannot parse this record; "
                                    "check its atom and bond blocks and the '$$$$' separator")
        if rdkit_mol.GetNumAtoms() == 0:
            raise MoleculeFileError(f"{path}: record {index}: no atoms; remove the empty record")
        symbols = [atom.GetSymbol() for atom in rdkit_mol.GetAtoms()]
        unsupported = sorted(set(symbols) - set(SYMBOL_TO_ATOMIC_NUMBER))
        if unsupported:
            raise MoleculeFileError(f"{path}: record {index}: unsupported elements {unsupported}; "
                                    f"only {_SUPPORTED} are supported, remove such molecules first")
        if rdkit_mol.GetNumConformers() == 0 or not rdkit_mol.GetConformer().Is3D():
            raise MoleculeFileError(f"{path}: record {index}: no 3-D coordinates; "
                                    "embed the molecule in 3-D (e.g. RDKit EmbedMolecule) before writing it")
        mols.append(Molecule(np.array([SYMBOL_TO_ATOMIC_NUMBER[s] for s in symbols]),
                             rdkit_mol.GetConformer().GetPositions(), _bonds(path, index, rdkit_mol, require_bonds),
                             np.array([atom.GetFormalCharge() for atom in rdkit_mol.GetAtoms()])))
    return mols


def _placeholder_png(path: Path, message: str) -> None:
    image = Image.new("RGB", (400, 120), "white")
    ImageDraw.Draw(image).text((20, 50), message, fill="black")
    image.save(path, format="PNG")


def draw_grid(
    mols: Sequence[Molecule],
    path: str | Path,
    legends: Sequence[str] | None = None,
    per_row: int = 6,
    max_mols: int = 48,
) -> Path:
    """A PNG grid of 2-D drawings of the first ``max_mols`` valid molecules (legends default to SMILES).

    Invalid molecules are skipped; with none valid the PNG says so, so callers always get a file.
    """
    path = Path(path)
    if legends is not None and len(legends) != len(mols):
        raise ValueError(f"got {len(legends)} legends for {len(mols)} molecules; give one per molecule")
    drawings: list[Chem.Mol] = []
    kept_legends: list[str] = []
    for index, mol in enumerate(mols):
        if len(drawings) == max_mols:
            break
        rdkit_mol = valid_rdkit(mol)
        if rdkit_mol is None:
            continue
        AllChem.Compute2DCoords(rdkit_mol)
        drawings.append(rdkit_mol)
        kept_legends.append(Chem.MolToSmiles(rdkit_mol) if legends is None else legends[index])
    if not drawings:
        _placeholder_png(path, f"no valid molecules among {len(mols)}")
        return path
    png = Draw.MolsToGridImage(drawings, molsPerRow=min(per_row, len(drawings)), subImgSize=(250, 250),
                               legends=kept_legends, returnPNG=True)
    path.write_bytes(png)
    return path

