"""Molecule files: XYZ and SDF round trips, strict readers with helpful errors, and PNG grids."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rdkit import Chem
from rdkit.Chem import AllChem

from rgdm.domains.molecules.chemistry import Molecule, canonical_smiles, molecule_from_smiles
from rgdm.domains.molecules.io import MoleculeFileError, draw_grid, read_sdf, read_xyz, write_sdf, write_xyz

ELEMENTS = [1, 6, 7, 8, 9]


@pytest.fixture(scope="module")
def valid_mols() -> list[Molecule]:
    return [molecule_from_smiles(s) for s in ["CCO", "c1ccccc1", "N#CC(=O)F"]]


@pytest.fixture(scope="module")
def disconnected(valid_mols) -> Molecule:
    ethanol = valid_mols[0]
    return Molecule(np.concatenate([ethanol.atomic_numbers] * 2),
                    np.concatenate([ethanol.positions, ethanol.positions + np.array([8.0, 0.0, 0.0])]))


def assert_same_molecules(read: list[Molecule], written: list[Molecule], atol: float) -> None:
    assert len(read) == len(written)
    for got, expected in zip(read, written, strict=True):
        assert np.array_equal(got.atomic_numbers, expected.atomic_numbers)
        assert np.allclose(got.positions, expected.positions, atol=atol, rtol=0)


def test_xyz_round_trip_keeps_every_molecule(tmp_path, valid_mols, disconnected):
    mols = [*valid_mols, disconnected]
    path = write_xyz(mols, tmp_path / "samples.xyz", comments=["ethanol", "benzene", "cyanide", "two"])
    lines = path.read_text().splitlines()
    assert lines[:3] == ["9", "ethanol", "C " + " ".join(f"{v:.6f}" for v in valid_mols[0].positions[0])]
    assert_same_molecules(read_xyz(path), mols, atol=1e-5)


def test_write_xyz_rejects_what_it_could_not_read_back(tmp_path, valid_mols):
    with pytest.raises(ValueError, match="one per molecule"):
        write_xyz(valid_mols, tmp_path / "a.xyz", comments=["only one"])
    with pytest.raises(ValueError, match="one line"):
        write_xyz(valid_mols[:1], tmp_path / "a.xyz", comments=["two\nlines"])
    with pytest.raises(ValueError, match="no atoms"):
        write_xyz([Molecule(np.zeros(0, dtype=int), np.zeros((0, 3)))], tmp_path / "a.xyz")
    with pytest.raises(ValueError, match="at least one"):
        write_xyz([], tmp_path / "a.xyz")


VALID_FRAME = "2\nwater fragment\nO 0.0 0.0 0.0\nH 0.0 0.0 0.96\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "empty file"),
        ("  \n\n", 1, "empty file"),
        ("two\ncomment\nH 0 0 0\nH 0 0 0.74\n", 1, "positive integer, got 'two'"),
        ("0\ncomment\n", 1, "positive integer, got '0'"),
        ("-2\ncomment\nH 0 0 0\nH 0 0 0.74\n", 1, "positive integer, got '-2'"),
        ("2.0\ncomment\nH 0 0 0\nH 0 0 0.74\n", 1, "positive integer"),
        ("9" * 5000 + "\ncomment\n", 1, "positive integer"),
        ("2\ncomment\nH 0 0 0\nH 0 0\n", 4, "expected 4 fields 'symbol x y z', got 3"),
        ("2\ncomment\nH 0 0 0 1.0\nH 0 0 0.74\n", 3, "expected 4 fields 'symbol x y z', got 5"),
        ("1\ncomment\nXx 0 0 0\n", 3, "unknown element symbol 'Xx'; supported symbols are H C N O F"),
        ("1\ncomment\nc 0 0 0\n", 3, "unknown element symbol 'c'"),
        ("1\ncomment\nC 0 nan 0\n", 3, "y coordinate 'nan' is not finite"),
        ("1\ncomment\nC 0 0 -inf\n", 3, "z coordinate '-inf' is not finite"),
        ("1\ncomment\nC 1e999 0 0\n", 3, "x coordinate '1e999' is not finite"),
        ("1\ncomment\nC 1.0.0 0 0\n", 3, "x coordinate '1.0.0' is not a number"),
        ("3\ncomment\nC 0 0 0\n", 3, "promises 3 atoms but has 1"),
        ("3\n", 1, "promises 3 atoms but has 0"),
        (VALID_FRAME + "x\n", 5, "positive integer, got 'x'"),
        (VALID_FRAME + "\n" + VALID_FRAME, 5, "positive integer, got ''"),
        (VALID_FRAME.replace("2\n", "3\n", 1) + VALID_FRAME, 5, "expected 4 fields 'symbol x y z', got 1"),
    ],
)
def test_malformed_xyz_names_the_line_and_the_problem(tmp_path, text, line, message):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(MoleculeFileError) as error:
        read_xyz(path)
    assert f"{path}: line {line}: " in str(error.value)
    assert message in str(error.value)


def test_unreadable_xyz_files_raise_molecule_file_errors(tmp_path):
    with pytest.raises(MoleculeFileError, match="no such file"):
        read_xyz(tmp_path / "missing.xyz")
    binary = tmp_path / "binary.xyz"
    binary.write_bytes(b"1\n\xff\xfe\nC 0 0 0\n")
    with pytest.raises(MoleculeFileError, match="line 2: not UTF-8"):
        read_xyz(binary)


def test_xyz_reader_accepts_windows_newlines_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "water.xyz"
    path.write_bytes((VALID_FRAME + "\n\n").replace("\n", "\r\n").encode())
    [water] = read_xyz(path)
    assert water.symbols == ("O", "H") and water.positions[1, 2] == 0.96


# Nearly valid XYZ text: frames whose counts, symbols and coordinates are mostly right and sometimes broken.
symbol_tokens = st.sampled_from(["H", "C", "N", "O", "F", "C", "H", "Xx", "c", ""])
number_tokens = st.one_of(st.floats(-100, 100).map(repr), st.floats().map(repr),
                          st.sampled_from(["1.0.0", "", "٣", "1e999", "0x1"]))
atom_lines = st.tuples(symbol_tokens, st.lists(number_tokens, min_size=3, max_size=3) | st.lists(number_tokens)).map(
    lambda atom: " ".join([atom[0], *atom[1]]))
frames = st.lists(atom_lines, min_size=1, max_size=4).flatmap(
    lambda atoms: st.sampled_from([str(len(atoms))] * 3 + [str(len(atoms) + 1), "0", "x"]).map(
        lambda count: "\n".join([count, "comment", *atoms])))
xyz_like_text = st.lists(frames, min_size=1, max_size=3).map("\n".join)


def fuzz_file(tmp_path_factory, name: str, content: str | bytes):
    """A fresh file ``name`` holding ``content``, as text or as raw bytes."""
    path = tmp_path_factory.mktemp("fuzz") / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@settings(max_examples=100, deadline=None)
@given(content=st.one_of(st.text(), xyz_like_text, st.binary()))
def test_read_xyz_returns_molecules_or_raises_molecule_file_error(tmp_path_factory, content):
    path = fuzz_file(tmp_path_factory, "any.xyz", content)
    try:
        mols = read_xyz(path)
    except MoleculeFileError as error:
        assert str(path) in str(error)
    else:
        assert mols and all(isinstance(mol, Molecule) and len(mol) > 0 for mol in mols)
        assert all(np.isfinite(mol.positions).all() for mol in mols)


random_molecule = st.integers(min_value=1, max_value=10).flatmap(
    lambda n: st.builds(
        Molecule,
        st.lists(st.sampled_from(ELEMENTS), min_size=n, max_size=n).map(np.array),
        st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=3 * n, max_size=3 * n).map(
            lambda values: np.reshape(values, (-1, 3))),
    )
)


@settings(max_examples=100, deadline=None)
@given(mols=st.lists(random_molecule, min_size=1, max_size=4))
def test_xyz_round_trip_of_random_molecules(tmp_path_factory, mols):
    path = write_xyz(mols, tmp_path_factory.mktemp("round_trip") / "random.xyz")
    assert_same_molecules(read_xyz(path), mols, atol=1e-5)


def test_sdf_round_trip_writes_only_valid_molecules(tmp_path, valid_mols, disconnected):
    five_bond_directions = np.vstack([np.eye(3), -np.eye(3)[:2]])
    overvalent = Molecule(np.array([6, 1, 1, 1, 1, 1]), np.vstack([np.zeros(3), 1.09 * five_bond_directions]))
    path = tmp_path / "samples.sdf"
    assert write_sdf([valid_mols[0], disconnected, overvalent, *valid_mols[1:]], path) == 3
    read = read_sdf(path)
    assert_same_molecules(read, valid_mols, atol=1e-4)  # SDF keeps four decimals
    assert [canonical_smiles(mol) for mol in read] == [canonical_smiles(mol) for mol in valid_mols]
    assert write_sdf([disconnected], tmp_path / "none.sdf") == 0
    assert read_sdf(tmp_path / "none.sdf") == []


def sdf_block(smiles: str, embed: bool = True) -> str:
    rdkit_mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if embed:
        AllChem.EmbedMolecule(rdkit_mol, randomSeed=0)
    else:
        AllChem.Compute2DCoords(rdkit_mol)
    return Chem.MolToMolBlock(rdkit_mol) + "$$$$\n"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([sdf_block("CO"), sdf_block("CCl")], "record 2: unsupported elements ['Cl']"),
        ([sdf_block("CO", embed=False)], "record 1: no 3-D coordinates"),
        ([sdf_block("CO"), "garbage\n\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\nnot an atom line\nM  END\n$$$$\n"],
         "record 2: RDKit cannot parse"),
        (["\n     RDKit          3D\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n"], "record 1: no atoms"),
    ],
)
def test_malformed_sdf_names_the_record(tmp_path, records, message):
    path = tmp_path / "bad.sdf"
    path.write_text("".join(records))
    with pytest.raises(MoleculeFileError) as error:
        read_sdf(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_read_sdf_of_missing_file_raises(tmp_path):
    with pytest.raises(MoleculeFileError, match="no such file"):
        read_sdf(tmp_path / "missing.sdf")


def test_draw_grid_lays_out_valid_molecules_only(tmp_path, valid_mols, disconnected):
    path = draw_grid([*valid_mols, disconnected], tmp_path / "grid.png", per_row=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 500)  # three valid molecules, two per row
    with Image.open(draw_grid(valid_mols, tmp_path / "one.png", max_mols=1)) as image:
        assert image.size == (250, 250)
    with pytest.raises(ValueError, match="legends"):
        draw_grid(valid_mols, tmp_path / "bad.png", legends=["one"])


def test_draw_grid_without_valid_molecules_still_writes_a_png(tmp_path, disconnected):
    path = draw_grid([disconnected], tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.format == "PNG"


def _damaged_sdf(seed: int, cut: int, junk: str) -> str:
    """A valid SDF record of a small molecule with a slice replaced by junk text."""
    from io import StringIO

    from rdkit import Chem

    buffer = StringIO()
    writer = Chem.SDWriter(buffer)
    writer.write(Chem.AddHs(Chem.MolFromSmiles(["CCO", "c1ccccc1", "C#N"][seed % 3])))
    writer.close()
    text = buffer.getvalue()
    return text[:cut] + junk + text[cut + len(junk):]


@settings(max_examples=100, deadline=None)
@given(content=st.one_of(st.text(), st.binary(),
                         st.builds(_damaged_sdf, st.integers(0, 2), st.integers(0, 400), st.text(max_size=12))))
def test_read_sdf_returns_molecules_or_raises_molecule_file_error(tmp_path_factory, content):
    path = fuzz_file(tmp_path_factory, "any.sdf", content)
    try:
        mols = read_sdf(path)
    except MoleculeFileError as error:
        assert str(path) in str(error) or "record" in str(error)
    else:
        assert all(isinstance(mol, Molecule) and np.isfinite(mol.positions).all() for mol in mols)
