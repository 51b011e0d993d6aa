"""The molecules domain: QM9, a denoiser, chemistry metrics and RDKit rewards.

Two encodings (``encoding.py``): EDM's point cloud with an EGNN, bonds perceived from distances
afterwards; or, with ``bonds: true``, positions, atom features and bonds generated jointly by a
bond-aware graph network. Padding atoms are masked out. The atom count of a new sample is drawn from
the training histogram, or from a fine-tuned model's own (``atom_counts``: the pay-off
distribution's, refitted by the pay-off fine-tunes).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator
from tensordict import TensorDict
from torch import nn

from rgdm.batch import Batch
from rgdm.diffusion.conditioning import conditioning_of
from rgdm.domains.base import Domain, SupportsFiles, SupportsTargets, pyplot, save_figure
from rgdm.domains.molecules.chemistry import (
    Molecule,
    chemistry_metrics,
    oracle_metrics,
    posebusters_metrics,
    split_off_fragments,
    stability_metrics,
    valid_rdkit,
)
from rgdm.domains.molecules.data import (
    ELEMENTS,
    MAX_ATOMS,
    MAX_HEAVY_ATOMS,
    QM9,
    SPLITS,
    load_qm9,
    pad_molecules,
    split_indices,
)
from rgdm.domains.molecules.encoding import FORMAL_CHARGES, GraphEncoding, PointCloudEncoding, pad_bonds
from rgdm.domains.molecules.graph_network import BondGraphDenoiser, BondGraphRegressor
from rgdm.domains.molecules.network import EGNNDenoiser, EGNNRegressor
from rgdm.domains.molecules.rewards import MOLECULE_REWARDS, PropertyReward
from rgdm.io import CheckpointError
from rgdm.rewards import Reward

#: Equal-mass bins of a target property over which ``p(M | c)`` is tabulated.
VALUE_BINS = 20
#: Molecules of the rewarding half on which EDM's reference errors are computed.
REFERENCE_MOLECULES = 5000


def mean_by_atom_count(values: np.ndarray, sizes: np.ndarray) -> dict[int, float]:
    """The mean property value of the molecules of each atom count: EDM's "#Atoms" predictor."""
    return {int(m): float(values[sizes == m].mean()) for m in np.unique(sizes)}


class MoleculeOptions(BaseModel):
    """Options of the molecules domain."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["molecules"] = "molecules"
    hydrogens: bool = True
    charges: bool = True
    bonds: bool = Field(False, description="generate bonds and formal charges jointly with the atoms (a graph)")
    split: Literal["train", "train_a", "train_b"] = Field("train", description="the generator's training split")
    subset: int | None = Field(None, ge=1, description="use only this many molecules of the split")
    property_bins: int = Field(8, ge=0, le=64, description="class rows of the condition (CFG's reward classes)")
    target_property: Literal["alpha", "gap", "homo", "lumo", "mu", "Cv"] | None = Field(
        None, description="the property whose values are the targets (set when fine-tuning for it)")
    atom_counts: list[NonNegativeFloat] | None = Field(
        None, description="p(M), index M: a fine-tuned model's atom-count histogram (default: the training data's)")

    @field_validator("atom_counts")
    @classmethod
    def _some_mass(cls, counts: list[float] | None) -> list[float] | None:
        if counts is not None and sum(counts) <= 0:
            raise ValueError("atom_counts must put weight on some atom count")
        return counts


class NetworkOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(96, ge=8)
    layers: int = Field(4, ge=1)
    coords_range: float = Field(15.0, gt=0)
    edge_hidden: int = Field(32, ge=4, description="the bond graph network's edge width (bonds: true)")
    self_condition: bool = Field(False, description="the bond graph network also sees its own first estimate "
                                 "and that estimate's bonded fragments: two network evaluations a step (bonds: true)")


class MoleculeDomain(SupportsTargets, SupportsFiles, Domain):
    """QM9 molecules with or without hydrogens, as point clouds or as graphs with bonds."""

    name = "molecules"
    Options = MoleculeOptions
    options: MoleculeOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.elements = ELEMENTS if self.options.hydrogens else ELEMENTS[1:]
        #: EDM's point cloud: the encoding of the property predictors, and of point-cloud models.
        self.points = PointCloudEncoding(self.elements, self.options.charges)
        self.encoding = GraphEncoding(self.elements) if self.options.bonds else self.points
        self.atom_features = self.encoding.atom_features
        self.project, self.dof_offset, self.parts = self.encoding.project, self.encoding.dof_offset, self.encoding.parts
        #: Class rows of the condition (CFG's reward classes); with ``target_property`` the targets are
        #: values of that property, in its own units, which the network's conditioning standardises.
        self.num_targets = self.options.property_bins
        self.target_kind = "class" if self.options.target_property is None else "value"
        self._datasets: dict[str, Batch] = {}
        self._predictors: dict[str, Any] = {}

    @cached_property
    def _qm9(self) -> QM9:
        data = load_qm9()
        return data if self.options.hydrogens else data.without_hydrogens()

    def molecules(self, split: str) -> QM9:
        """The QM9 molecules of ``split`` (one of ``SPLITS``), cut to ``subset`` if set."""
        if split not in SPLITS:
            raise ValueError(f"unknown QM9 split {split!r}; choose one of {', '.join(SPLITS)}")
        index = split_indices(len(self._qm9))[split]
        if self.options.bonds:
            index = index[self._qm9.agrees[index]]
        return self._qm9.subset(index[: self.options.subset])

    def encode(self, atomic_numbers: np.ndarray, positions: np.ndarray, bonds: np.ndarray | None = None,
               formal_charges: np.ndarray | None = None) -> Batch:
        """Padded arrays (0 = no atom) to a batch of this domain's encoding; a graph needs the bond codes
        ``(rows, atoms, atoms)`` and formal charges too."""
        if self.options.bonds and (bonds is None or formal_charges is None):
            raise ValueError("this molecule model generates bonds: its molecules need bonds and formal charges "
                             "(an SDF file states them; XYZ files have none)")
        x, mask = self.encoding.encode(atomic_numbers, positions, bonds, formal_charges)
        return Batch(x, mask)

    def build_network(self, options: dict[str, Any]) -> nn.Module:
        net = NetworkOptions.model_validate(options)
        if self.options.bonds:
            return self._with_value_path(BondGraphDenoiser(
                self.atom_features, self.encoding.bond_types, self.num_targets, net.hidden, net.edge_hidden,
                net.layers, net.coords_range, self_condition=net.self_condition))
        if net.self_condition:
            raise ValueError("network.self_condition needs the bond graph network (domain.bonds: true)")
        return self._with_value_path(EGNNDenoiser(self.atom_features, self.num_targets, net.hidden, net.layers,
                                                  net.coords_range))

    def build_regressor(self, options: dict[str, Any], outputs: int = 1) -> nn.Module:
        net = NetworkOptions.model_validate(options)
        if self.options.bonds:
            return self._with_value_path(BondGraphRegressor(
                self.atom_features, self.encoding.bond_types, self.num_targets, net.hidden, net.edge_hidden,
                net.layers, net.coords_range, outputs))
        return self._with_value_path(EGNNRegressor(self.atom_features, self.num_targets, net.hidden, net.layers,
                                                   net.coords_range, outputs))

    def _with_value_path(self, net: nn.Module) -> nn.Module:
        """With ``target_property``, give the network's conditioning its value path, standardised by the
        property's mean and spread over the training molecules."""
        conditioning = conditioning_of(net)
        if self.target_kind == "value" and conditioning is not None:
            values = self.property_values
            conditioning.enable_values(float(values.mean()), float(values.std()))
        return net

    def dataset(self, split: str = "train") -> Batch:
        split = self.options.split if split == "train" else split
        if split not in self._datasets:
            data = self.molecules(split)
            graph = (data.bonds, data.formal_charges) if self.options.bonds else ()
            self._datasets[split] = self.encode(data.atomic_numbers, data.positions, *graph)
        return self._datasets[split]

    @cached_property
    def atom_count_histogram(self) -> torch.Tensor:
        """``p(M)``, index ``M``: ``atom_counts`` if set, else the share of training molecules with ``M`` atoms."""
        width = self.dataset().mask.shape[1]
        if self.options.atom_counts is not None:
            if len(self.options.atom_counts) != width + 1:
                raise ValueError(f"atom_counts has {len(self.options.atom_counts)} entries; a molecule of this "
                                 f"domain has 0..{width} atoms, so it needs {width + 1}")
            histogram = torch.tensor(self.options.atom_counts, dtype=torch.float64)
            return histogram / histogram.sum()
        counts = self.dataset().mask.sum(1).long()
        return torch.bincount(counts, minlength=width + 1).double() / len(counts)

    def refit_prior(self, mask: torch.Tensor, weights: torch.Tensor) -> None:
        """``p(M) = sum_i w_i [M_i = M] / sum_i w_i``: the atom counts of weighted samples."""
        counts = mask.sum(1).long().cpu()
        histogram = torch.bincount(counts, weights=weights.detach().double().cpu(),
                                   minlength=self.dataset().mask.shape[1] + 1)
        self.options = self.options.model_copy(update={"atom_counts": (histogram / histogram.sum()).tolist()})
        self.__dict__.pop("atom_count_histogram", None)

    @cached_property
    def property_values(self) -> torch.Tensor:
        """``target_property`` of the generator's training molecules: what targets are drawn from."""
        return torch.as_tensor(self.molecules(self.options.split).properties[self._require_target_property()],
                               dtype=torch.float32)

    def _require_target_property(self) -> str:
        if self.options.target_property is None:
            raise ValueError("this molecule model has no target property; fine-tune it for one with "
                             "--set domain.target_property=alpha")
        return self.options.target_property

    def draw_target_values(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` targets drawn from the training molecules' values of ``target_property`` (EDM's protocol
        samples its targets, with their atom counts, from the data)."""
        values = self.property_values
        return values[torch.randint(len(values), (n,), generator=generator, device=generator.device).cpu()]

    def _atom_counts(self, n: int, generator: torch.Generator, cond: torch.Tensor | None) -> torch.Tensor:
        """``M ~ p(M)``, or ``M ~ p(M | c)`` for property targets (EDM's conditional atom counts)."""
        if cond is None or not cond.is_floating_point() or self.target_kind != "value":
            return torch.multinomial(self.atom_count_histogram.to(generator.device), n, replacement=True,
                                     generator=generator).cpu()
        edges, table = self.atom_counts_given_value
        rows = table[torch.bucketize(torch.nan_to_num(cond.float(), nan=float(self.property_values.median())),
                                     edges)]
        return torch.multinomial(rows.to(generator.device), 1, generator=generator).cpu()[:, 0]

    @cached_property
    def atom_counts_given_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``p(M | c)`` as a table: the inner edges of ``VALUE_BINS`` equal-mass bins of the property over
        the training molecules, and each bin's histogram of atom counts (up to normalisation)."""
        values = self.property_values
        counts = self.dataset(self.options.split).mask.sum(1).long()
        edges = torch.quantile(values, torch.linspace(0, 1, VALUE_BINS + 1))[1:-1]
        bins = torch.bucketize(values, edges)
        table = torch.stack([torch.bincount(counts[bins == k], minlength=len(self.atom_count_histogram)).double()
                             for k in range(VALUE_BINS)])
        return edges, table

    def prior_batch(self, n: int, generator: torch.Generator, cond: torch.Tensor | None = None) -> Batch:
        counts = self._atom_counts(n, generator, cond)
        width = self.dataset().mask.shape[1]
        mask = (torch.arange(width)[None] < counts[:, None]).float()
        return Batch(self.encoding.zeros(n, width), mask, cond)

    def decode(self, x: torch.Tensor | TensorDict, mask: torch.Tensor | None) -> Sequence[Molecule]:
        """Each row as a molecule (its atoms, and with a graph encoding its bonds and formal charges)."""
        rows, width = (x["positions"] if isinstance(x, TensorDict) else x).shape[:2]
        mask = torch.ones(rows, width, dtype=torch.bool) if mask is None else mask.bool().cpu()
        return self.encoding.decode(x, mask)

    def rewards(self) -> dict[str, Reward]:
        named = dict(MOLECULE_REWARDS)
        if self.options.target_property is not None:
            named["property"] = Reward(
                self.property_reward("a"), f"-|{self.options.target_property} - target| by the predictor trained on "
                "train_a (the one on train_b measures)", max_value=0.0)
        return named

    def predictor(self, half: Literal["a", "b"]) -> Any:
        """The shipped predictor of ``target_property`` trained on ``train_a`` (rewards) or ``train_b`` (measures),
        on molecules encoded as this domain's are: a single-property ``qm9-alpha-a`` (``qm9-noh-alpha-a`` without
        hydrogens) where one is saved, or else the multi-task predictor of the same half (``qm9-all-a``,
        ``qm9-noh-all-a``)."""
        from rgdm.domains.molecules.properties import PropertyPredictor

        hydrogens = self.options.hydrogens
        prefix, target = f"qm9-{'' if hydrogens else 'noh-'}", self._require_target_property()
        name = f"{prefix}{target}-{half}"
        if name not in self._predictors:
            candidate = next((c for c in (name, f"{prefix}all-{half}") if PropertyPredictor.find(c)), None)
            if candidate is None:
                raise CheckpointError(
                    f"no predictor {name} (nor {prefix}all-{half}) for this {'' if hydrogens else 'hydrogen-free '}"
                    f"model's property target: train one with rgdm train-predictor --property {target} --split "
                    f"train_{half}{'' if hydrogens else ' --no-hydrogens'} and save it as "
                    f"rgdm/checkpoints/predictors/{name}")
            predictor = PropertyPredictor.load(candidate)  # a damaged one fails here, never skipped
            if predictor.meta["domain"]["hydrogens"] != hydrogens:
                raise CheckpointError(f"{candidate} was trained on molecules {'without' if hydrogens else 'with'} "
                                      "hydrogens; it cannot score this model's")
            if target not in predictor.properties or predictor.meta.get("split") != f"train_{half}":
                raise CheckpointError(f"{candidate} regresses {', '.join(predictor.properties)} on "
                                      f"{predictor.meta.get('split')}, not {target} on train_{half}")
            self._predictors[name] = predictor
        return self._predictors[name]

    def property_reward(self, half: Literal["a", "b"]) -> PropertyReward:
        """``-|predicted target_property - target| / std`` by the predictor trained on ``train_a`` (the reward)
        or ``train_b`` (the measure), with the property's standard deviation over the training molecules."""
        return PropertyReward(partial(self._predict, half=half), float(self.property_values.std()))

    def _predict(self, molecules: Sequence[Molecule], half: Literal["a", "b"]) -> tuple[torch.Tensor, np.ndarray]:
        """Predicted ``target_property`` and usability (it has atoms) per molecule."""
        from rgdm.domains.molecules.properties import encode_molecules

        batch, usable = encode_molecules(self, molecules)
        return self.predictor(half).predict(batch, property_name=self.options.target_property), usable

    def parse_target(self, text: str) -> float:
        """A property value in the property's units (``--target 75``)."""
        name = self._require_target_property()
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise ValueError(f"a molecule target is a value of {name}, e.g. --target 75.0; got {text!r}")
        return value

    @cached_property
    def training_smiles(self) -> set[str]:
        """Canonical SMILES of the training molecules (for novelty), without stereo tags."""
        return {str(s) for s in self.molecules("train").canonical if s}

    def quality_metrics(self, samples: Batch, reward: str | None, temperature: float | None,
                        generator: torch.Generator, *, posebusters: int | None = None) -> dict[str, Any]:
        """Stability, validity, uniqueness, novelty, diversity, RDKit's reading of the positions alone
        (``oracle_metrics``), the fragments split off the ``fragmented`` ones (``split_off_fragments``) and the
        PoseBusters pass rate of the valid molecules; for targeted samples, the
        property's error by the measuring predictor. PoseBusters, which is slow, checks only the first
        ``posebusters`` samples if set (0: none, and no ``posebusters_*`` keys).

        A bond model's ``atom_stability``, ``molecule_stability`` and validity use its generated bonds;
        ``edm_atom_stability`` and ``edm_molecule_stability`` beside them are EDM's distance-table rule
        on the same positions. A point-cloud model's stability is EDM's rule itself, comparable to
        published numbers, and its ``_kekule`` variants add the Kekulé pass for aromatic rings.
        """
        molecules = self.decode(samples.x, samples.mask)
        metrics: dict[str, Any] = chemistry_metrics(molecules, self.training_smiles, kekulize=False)
        metrics["split_off_fragments"] = split_off_fragments(molecules)
        metrics |= oracle_metrics(molecules)
        if posebusters != 0:
            metrics |= posebusters_metrics(molecules[:posebusters])
        if self.options.bonds:
            positions_only = [Molecule(m.atomic_numbers, m.positions, implicit_hydrogens=m.implicit_hydrogens)
                              for m in molecules]
            metrics |= stability_metrics(positions_only, "edm_", kekulize=False)
        else:
            metrics |= stability_metrics(molecules, suffix="_kekule", kekulize=True)
        if samples.cond is not None and self.options.target_property is not None:
            metrics |= self._property_metrics(molecules, samples.cond)
        return metrics

    def _property_metrics(self, molecules: Sequence[Molecule], cond: torch.Tensor) -> dict[str, Any]:
        """The MAE of targeted samples by the *measuring* predictor (train_b), over all of them as EDM
        reports it and over the valid ones, beside EDM's baselines on the same targets: "#Atoms" predicts
        the property from the atom count alone (the mean over training molecules of that size); "naive"
        ignores the molecule (the training mean)."""
        name = self._require_target_property()
        targets = cond.double().numpy()
        predicted, usable = self._predict(molecules, "b")
        measured = np.where(usable, np.abs(predicted.double().numpy() - targets), np.nan)
        counts = np.array([len(m.atomic_numbers) for m in molecules])
        train = self.molecules("train")
        values, sizes = train.properties[name], train.num_atoms
        by_size = mean_by_atom_count(values, sizes)
        atoms_guess = np.array([by_size.get(int(m), values.mean()) for m in counts])
        valid = np.array([valid_rdkit(m) is not None for m in molecules]) & np.isfinite(measured)
        return {"property": name, "property_mae": float(np.nanmean(measured)),
                "property_mae_valid": float(measured[valid].mean()) if valid.any() else None,
                "atoms_baseline_mae": float(np.abs(atoms_guess - targets).mean()),
                "naive_baseline_mae": float(np.abs(values.mean() - targets).mean()), **self.edm_reference_errors}

    @cached_property
    def edm_reference_errors(self) -> dict[str, float]:
        """EDM's reference rows, computed by this pipeline on ``REFERENCE_MOLECULES`` molecules of the
        rewarding half (``train_a``), which the measuring predictor never saw: its own error there
        (``edm_lbound_mae``, EDM's "L-bound"), its error against shuffled targets (``edm_naive_mae``,
        "naive") and the error of the property predicted from the atom count alone (``edm_atoms_mae``,
        "#Atoms": the mean over that half's molecules of each size)."""
        from rgdm.domains.molecules.properties import point_cloud

        name = self._require_target_property()
        half = self.molecules("train_a")
        rows = slice(0, REFERENCE_MOLECULES)
        values = np.asarray(half.properties[name], dtype=float)
        sizes = np.asarray(half.num_atoms)
        predicted = self.predictor("b").predict(point_cloud(self, half.atomic_numbers[rows], half.positions[rows]),
                                                property_name=name).double().numpy()
        shuffled = values[rows][np.random.default_rng(0).permutation(len(predicted))]
        by_size = mean_by_atom_count(values, sizes)
        from_size = np.array([by_size[int(m)] for m in sizes[rows]])
        return {"edm_lbound_mae": float(np.abs(predicted - values[rows]).mean()),
                "edm_naive_mae": float(np.abs(predicted - shuffled).mean()),
                "edm_atoms_mae": float(np.abs(from_size - values[rows]).mean())}

    def read_samples(self, folder: Path) -> Batch:
        """Molecules from a folder's ``samples.xyz`` (or ``samples.sdf``), so files made elsewhere can be
        evaluated; every malformed file raises ``MoleculeFileError`` naming the problem."""
        from rgdm.domains.molecules.io import MoleculeFileError, read_sdf, read_xyz

        if (folder / "samples.xyz").is_file() and not self.options.bonds:
            path, molecules = folder / "samples.xyz", read_xyz(folder / "samples.xyz")
        elif (folder / "samples.sdf").is_file():
            path, molecules = folder / "samples.sdf", read_sdf(folder / "samples.sdf", require_bonds=self.options.bonds)
        elif self.options.bonds and (folder / "samples.xyz").is_file():
            raise MoleculeFileError(f"{folder} holds samples.xyz but no samples.sdf; this model generates bonds, so "
                                    "it reads molecules with their bonds from samples.sdf")
        else:
            raise MoleculeFileError(f"{folder} holds no samples.npz, samples.xyz or samples.sdf; write samples with "
                                    "rgdm sample, or put your molecules in samples.xyz (multi-frame XYZ)")
        width = MAX_ATOMS if self.options.hydrogens else MAX_HEAVY_ATOMS
        if not molecules:
            raise MoleculeFileError(f"{path} holds no molecules")
        for row, mol in enumerate(molecules):
            if len(mol.atomic_numbers) > width:
                raise MoleculeFileError(f"{path}: molecule {row} has {len(mol.atomic_numbers)} atoms; this model "
                                        f"generates at most {width} (QM9's largest)")
        numbers, positions = pad_molecules(molecules, width)
        if not self.options.hydrogens and (numbers == 1).any():
            raise MoleculeFileError(f"{path} holds hydrogens but this model has none; remove the H atoms")
        if not self.options.bonds:
            return self.encode(numbers, positions)
        bonds, charges = pad_bonds(molecules, width)
        outside = sorted({int(c) for c in charges.flatten()} - set(FORMAL_CHARGES))
        if outside:
            raise MoleculeFileError(f"{path} holds formal charges {outside}; this model represents {FORMAL_CHARGES}")
        return self.encode(numbers, positions, bonds, charges)

    def save_samples(self, samples: Batch, out_dir: Path) -> list[Path]:
        """Every sample to ``samples.xyz``; the valid ones to ``samples.sdf``; a grid to ``molecules.png``."""
        from rgdm.domains.molecules.io import draw_grid, write_sdf, write_xyz

        molecules = self.decode(samples.x, samples.mask)
        written = [out_dir / "samples.xyz", out_dir / "samples.sdf", out_dir / "molecules.png"]
        write_xyz(molecules, written[0])
        write_sdf(molecules, written[1])
        draw_grid(molecules, written[2])
        return written

    def plot(self, panels: dict[str, Batch], path: Path) -> Path:
        """One molecule grid per panel, stacked with its title."""
        from rgdm.domains.molecules.io import draw_grid

        plt = pyplot()
        fig, axes = plt.subplots(len(panels), 1, figsize=(12, 5 * len(panels)), squeeze=False)
        for ax, (title, batch) in zip(axes[:, 0], panels.items(), strict=True):
            with tempfile.TemporaryDirectory() as folder:
                grid = draw_grid(self.decode(batch.x, batch.mask), Path(folder) / "grid.png", max_mols=18)
                ax.imshow(plt.imread(grid))
            ax.set(title=title)
            ax.axis("off")
        return save_figure(fig, path)
