"""How a molecule becomes a sample and back: EDM's point cloud, or a graph with generated bonds.

* ``PointCloudEncoding`` (EDM, the ``qm9-edm-small`` model): one tensor ``(atoms, 3 + F)``, positions in Å
  then the one-hot element scaled by 0.25 and, with charges, the atomic number / 10. Bonds are
  perceived from distances afterwards.
* ``GraphEncoding`` (bond-aware models): three parts diffused jointly, as JODO does. ``positions``
  ``(atoms, 3)``; ``atoms``, the one-hot element and one-hot formal charge (-1, 0, +1), each scaled by
  0.25; ``bonds`` ``(atoms, atoms, 4)``, the one-hot bond type (none, single, double, triple) at
  scale 1. With JODO's scales the bonds are settled early in the reverse process, together with the
  geometry, and the elements late. Aromatic rings are written in a Kekulé form, as JODO does for QM9
  (``include_aromatic = False``): integer orders make every valence exact, and RDKit perceives the
  aromaticity again when it sanitises a generated molecule, so nothing is lost.

Both zero the centre of mass of the positions (``remove_center_of_mass``) and mask padding atoms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDict
from torch import nn

from rgdm.diffusion.process import Part, identity_projection, parts_sample
from rgdm.domains.molecules.chemistry import AROMATIC, Molecule, bond_orders
from rgdm.domains.molecules.data import ATOMIC_NUMBERS

ONE_HOT_SCALE = 0.25
CHARGE_SCALE = 0.1
#: The formal charges a graph encoding represents, in one-hot order.
FORMAL_CHARGES = (-1, 0, 1)
GRAPH_ATOM_SCALE = 0.25
GRAPH_CHARGE_SCALE = 0.25
GRAPH_BOND_SCALE = 1.0


def remove_center_of_mass(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Project positions (the first three features) onto the zero-centre-of-mass subspace.

    Linear and idempotent, as ``GaussianDiffusion`` requires; atom features pass unchanged.
    """
    positions = x[..., :3]
    if mask is None:
        center = positions.mean(1, keepdim=True)
    else:
        weights = mask.to(x.dtype)[..., None]
        center = (positions * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        center = center * weights
    return torch.cat([positions - center, x[..., 3:]], dim=-1)


def element_indices(atomic_numbers: np.ndarray | torch.Tensor, elements: Sequence[str]) -> torch.Tensor:
    """Each atom's index in ``elements`` (0 at padding, where the atomic number is 0); a clear error for
    an element outside them."""
    numbers = torch.as_tensor(atomic_numbers, dtype=torch.long)
    lookup = torch.full((max(ATOMIC_NUMBERS.values()) + 1,), -1, dtype=torch.long)
    for index, symbol in enumerate(elements):
        lookup[ATOMIC_NUMBERS[symbol]] = index
    types = lookup[numbers.clamp(0, len(lookup) - 1)]
    if bool(((types < 0) & (numbers > 0)).any() | (numbers >= len(lookup)).any()):
        raise ValueError(f"molecules hold elements outside {', '.join(elements)}")
    return types.clamp(min=0)


class PointCloudEncoding:
    """EDM's molecule: a tensor of positions and scaled atom features; bonds are perceived afterwards."""

    parts = None
    project = staticmethod(remove_center_of_mass)
    dof_offset = 3

    def __init__(self, elements: Sequence[str], charges: bool) -> None:
        self.elements = tuple(elements)
        self.charges = charges
        self.atom_features = len(self.elements) + int(charges)

    def encode(self, atomic_numbers: np.ndarray, positions: np.ndarray, bonds: np.ndarray | None = None,
               formal_charges: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded arrays (0 = no atom) to centred positions and scaled features, and the atom mask.
        Bonds and formal charges are not part of this encoding and are ignored."""
        numbers = torch.as_tensor(atomic_numbers, dtype=torch.long)
        mask = numbers > 0
        types = element_indices(numbers, self.elements)
        features = [nn.functional.one_hot(types, len(self.elements)).float() * ONE_HOT_SCALE]
        if self.charges:
            features.append(numbers[..., None].float() * CHARGE_SCALE)
        x = torch.cat([torch.as_tensor(positions, dtype=torch.float32), *features], dim=-1) * mask[..., None]
        return remove_center_of_mass(x, mask), mask.float()

    def zeros(self, n: int, width: int) -> torch.Tensor:
        return torch.zeros(n, width, 3 + self.atom_features)

    def decode(self, x: torch.Tensor, mask: torch.Tensor) -> list[Molecule]:
        """Each row's atoms: the element is the arg-max of the one-hot block, positions as they are."""
        x = x.detach().float().cpu()
        numbers = torch.tensor([ATOMIC_NUMBERS[s] for s in self.elements])
        types = x[..., 3 : 3 + len(self.elements)].argmax(-1)
        implicit = "H" not in self.elements
        return [Molecule(numbers[types[i][mask[i]]].numpy(), x[i, mask[i], :3].numpy().astype(np.float64),
                         implicit_hydrogens=implicit) for i in range(len(x))]


class GraphEncoding:
    """A molecule as positions, atom features and bond features, each a part of the sample."""

    project = staticmethod(identity_projection)
    dof_offset = 0

    #: Bond codes 0 (none) to 3 (triple), one channel each.
    bond_types = AROMATIC

    def __init__(self, elements: Sequence[str]) -> None:
        self.elements = tuple(elements)
        self.atom_features = len(self.elements) + len(FORMAL_CHARGES)
        self.parts = {"positions": Part("nodes", remove_center_of_mass, 3), "atoms": Part("nodes"),
                      "bonds": Part("edges")}

    def encode(self, atomic_numbers: np.ndarray, positions: np.ndarray, bonds: np.ndarray,
               formal_charges: np.ndarray) -> tuple[TensorDict, torch.Tensor]:
        """Padded arrays (0 = no atom) with their bond codes ``(rows, atoms, atoms)`` and formal charges to
        a multi-part batch, and the atom mask. Aromatic bonds (code 4, from an SDF file say) are written
        in a Kekulé form; a charge outside ``FORMAL_CHARGES`` is an error."""
        numbers = torch.as_tensor(atomic_numbers, dtype=torch.long)
        mask = numbers > 0
        charges = torch.as_tensor(np.asarray(formal_charges), dtype=torch.long)
        if bool(((charges < min(FORMAL_CHARGES)) | (charges > max(FORMAL_CHARGES)))[mask].any()):
            raise ValueError(f"formal charges must lie in {FORMAL_CHARGES}")
        bonds = np.asarray(bonds)
        if (bonds == AROMATIC).any():
            bonds = self._kekulized(numbers.numpy(), bonds, np.asarray(formal_charges))
        pairs = (mask[:, :, None] & mask[:, None, :]).float()[..., None]
        atoms = torch.cat([
            nn.functional.one_hot(element_indices(numbers, self.elements), len(self.elements)) * GRAPH_ATOM_SCALE,
            nn.functional.one_hot(charges.clamp(-1, 1) + 1, len(FORMAL_CHARGES)) * GRAPH_CHARGE_SCALE,
        ], dim=-1).float() * mask[..., None]
        bond_codes = torch.as_tensor(bonds, dtype=torch.long)
        edges = nn.functional.one_hot(bond_codes, self.bond_types).float() * GRAPH_BOND_SCALE * pairs
        edges = edges * (1 - torch.eye(numbers.shape[1]))[None, :, :, None]
        positions = remove_center_of_mass(torch.as_tensor(positions, dtype=torch.float32) * mask[..., None], mask)
        x = parts_sample({"positions": positions, "atoms": atoms, "bonds": edges}, [len(numbers)])
        return x, mask.float()

    @staticmethod
    def _kekulized(numbers: np.ndarray, bonds: np.ndarray, charges: np.ndarray) -> np.ndarray:
        """Bond codes with every aromatic ring in a Kekulé form (rows without aromatic bonds pass as they are)."""
        result = bonds.copy()
        for row in np.flatnonzero((bonds == AROMATIC).any((1, 2))):
            n = int((numbers[row] > 0).sum())
            mol = Molecule(numbers[row, :n], np.zeros((n, 3)), bonds[row, :n, :n], charges[row, :n])
            orders = bond_orders(mol)
            if (orders % 1).any():
                raise ValueError(f"molecule {row} has aromatic bonds that admit no Kekulé form")
            result[row, :n, :n] = orders.astype(result.dtype)
        return result

    def zeros(self, n: int, width: int) -> TensorDict:
        return parts_sample({"positions": torch.zeros(n, width, 3), "atoms": torch.zeros(n, width, self.atom_features),
                             "bonds": torch.zeros(n, width, width, self.bond_types)}, [n])

    def decode(self, x: TensorDict, mask: torch.Tensor) -> list[Molecule]:
        """Each row's atoms, bonds and charges: the arg-max of each one-hot block, positions as they are."""
        x = x.detach().float().cpu()
        numbers = torch.tensor([ATOMIC_NUMBERS[s] for s in self.elements])
        elements = len(self.elements)
        types = x["atoms"][..., :elements].argmax(-1)
        charges = x["atoms"][..., elements:].argmax(-1) - 1
        bonds = x["bonds"].argmax(-1)
        molecules = []
        for i in range(len(types)):
            real = mask[i]
            molecules.append(Molecule(numbers[types[i][real]].numpy(),
                                      x["positions"][i, real].numpy().astype(np.float64),
                                      bonds[i][real][:, real].numpy(), charges[i][real].numpy(),
                                      implicit_hydrogens="H" not in self.elements))
        return molecules


def pad_bonds(molecules: Sequence[Molecule], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The bond codes ``(rows, width, width)`` and formal charges ``(rows, width)`` of molecules that carry
    them (``Molecule.bonds``), padded as ``data.pad_molecules`` pads their atoms."""
    bonds = np.zeros((len(molecules), width, width), np.int64)
    charges = np.zeros((len(molecules), width), np.int64)
    for row, mol in enumerate(molecules):
        if mol.bonds is None:
            raise ValueError(f"molecule {row} has no bonds")
        n = len(mol.atomic_numbers)
        bonds[row, :n, :n] = mol.bonds
        if mol.charges is not None:
            charges[row, :n] = mol.charges
    return bonds, charges
