"""Property predictors: EGNN regressors of one QM9 property (alpha, gap, ...) from a clean molecule.

The EDM protocol splits QM9's training set in two halves. A predictor trained on ``train_a`` scores
the reward of property-targeted fine-tuning; one trained on ``train_b`` *measures* the result, so a
generator that fools its reward model is not counted as a success (docs/design.md §4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from rgdm.batch import Batch
from rgdm.domains.molecules.chemistry import Molecule
from rgdm.domains.molecules.data import MAX_ATOMS, PROPERTIES, pad_molecules
from rgdm.domains.molecules.network import EGNNRegressor
from rgdm.io import CheckpointError, load_tensors, read_json, save_tensors, write_json

WEIGHTS, META = "predictor.safetensors", "predictor.json"
SHIPPED_PREDICTORS = Path(__file__).resolve().parent.parent.parent / "checkpoints" / "predictors"


@dataclass
class PropertyPredictor:
    """A regressor ``f(molecule) -> property`` (in the property's units), trained on z-scores."""

    net: EGNNRegressor
    property: str
    mean: float
    std: float
    meta: dict[str, Any]

    @torch.no_grad()
    def predict(self, batch: Batch, chunk: int = 512) -> torch.Tensor:
        """Predicted property of each molecule of a batch in the point-cloud encoding (``point_cloud``)."""
        self.net.eval()
        t = torch.zeros(len(batch))
        parts = [self.net(batch.x[i : i + chunk], t[i : i + chunk], None, batch.mask[i : i + chunk])
                 for i in range(0, len(batch), chunk)]
        return torch.cat(parts) * self.std + self.mean

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        digest = save_tensors(folder / WEIGHTS, self.net.state_dict())
        write_json(folder / META, {**self.meta, "property": self.property, "mean": self.mean, "std": self.std,
                                   "sha256": digest})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PropertyPredictor:
        """A saved predictor from its folder, or a shipped one by name (``qm9-alpha-a``)."""
        folder = Path(folder)
        if not (folder / META).is_file() and (SHIPPED_PREDICTORS / str(folder) / META).is_file():
            folder = SHIPPED_PREDICTORS / str(folder)
        if not (folder / META).is_file():
            raise CheckpointError(f"{folder} holds no {META}; train a predictor with rgdm train-predictor")
        meta = read_json(folder / META)
        net = EGNNRegressor(meta["atom_features"], 0, meta["hidden"], meta["layers"])
        net.load_state_dict(load_tensors(folder / WEIGHTS, meta.get("sha256")))
        return cls(net.eval(), meta["property"], meta["mean"], meta["std"], meta)


def train_property_predictor(domain: Any, property_name: str, split: str, steps: int, batch_size: int = 128,
                             lr: float = 5e-4, hidden: int = 96, layers: int = 4, seed: int = 0,
                             progress: bool = True) -> PropertyPredictor:
    """Fit an EGNN regressor of ``property_name`` on the molecules of ``split`` with an L1 loss on z-scores
    (as EDM's property classifiers), cosine learning-rate decay, and report its MAE on the validation set."""
    if property_name not in PROPERTIES:
        raise ValueError(f"unknown QM9 property {property_name!r}; choose one of {', '.join(PROPERTIES)}")
    data = domain.molecules(split)
    batch = point_cloud(domain, data.atomic_numbers, data.positions)
    values = torch.as_tensor(data.properties[property_name], dtype=torch.float32)
    mean, std = float(values.mean()), float(values.std())
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = EGNNRegressor(domain.points.atom_features, 0, hidden, layers)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in tqdm(range(steps), desc=f"{property_name} predictor ({split})", disable=not progress):
        rows = torch.randint(len(batch), (batch_size,), generator=generator)
        picked = batch.select(rows)
        prediction = net(picked.x, torch.zeros(batch_size), None, picked.mask)
        loss = (prediction - (values[rows] - mean) / std).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    meta = {"split": split, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "hidden": hidden,
            "layers": layers, "atom_features": domain.points.atom_features, "domain": domain.config()}
    predictor = PropertyPredictor(net.eval(), property_name, mean, std, meta)
    validation = domain.molecules("val")
    predicted = predictor.predict(point_cloud(domain, validation.atomic_numbers, validation.positions))
    predictor.meta["val_mae"] = float((predicted - torch.as_tensor(validation.properties[property_name])).abs().mean())
    return predictor


def encode_molecules(domain: Any, molecules: Sequence[Molecule]) -> tuple[Batch, np.ndarray]:
    """Decoded molecules back to an encoded batch; rows with no atoms (or too many) are flagged ``False``."""
    usable = np.array([0 < len(mol.atomic_numbers) <= MAX_ATOMS for mol in molecules])
    return point_cloud(domain, *pad_molecules(molecules, MAX_ATOMS)), usable


def point_cloud(domain: Any, atomic_numbers: np.ndarray, positions: np.ndarray) -> Batch:
    """Padded molecules in the predictors' encoding, EDM's point cloud (``domain.points``), whatever the
    encoding of the domain's generator."""
    return Batch(*domain.points.encode(atomic_numbers, positions))
