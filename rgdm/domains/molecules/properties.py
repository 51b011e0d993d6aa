"""Property predictors (the oracles): EGNN regressors of QM9 properties (alpha, gap, ...) from a clean molecule.

The EDM protocol splits QM9's training set in two halves. A predictor trained on ``train_a`` scores
the reward of property-targeted fine-tuning; one trained on ``train_b`` *measures* the result, so a
generator that fools its reward model is not counted as a success (docs/design.md §4).

A predictor may regress several properties at once (one z-scored output each). Training is resumable:
with an output folder it checkpoints the weights, the optimiser and the random state atomically, and a
rerun continues bit for bit. The network is the library's own EGNN rather than schnetpack's PaiNN:
schnetpack 2.0.4 and 2.1.1 fail to import under this project's torch 2.13 (their data loader imports
``torch.utils.data.dataloader.T_co``, which torch removed), and 2.1.1 pins ``sympy<=1.12``, which torch
2.13 does not accept.
"""

from __future__ import annotations

import contextlib
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
from rgdm.io import (
    STATE_META,
    CheckpointError,
    clear_training_state,
    load_tensors,
    load_training_state,
    read_json,
    save_tensors,
    save_training_state,
    write_json,
)
from rgdm.stopping import StopRequests, TrainingInterrupted

WEIGHTS, META = "predictor.safetensors", "predictor.json"
SHIPPED_PREDICTORS = Path(__file__).resolve().parent.parent.parent / "checkpoints" / "predictors"
#: The test MAE a measuring oracle may have (issue 33): three times the error of EDM's own property
#: classifiers (its "L-bound"), in the units of ``PROPERTIES`` (D, bohr^3, cal/mol K, meV).
MAE_LIMITS = {"mu": 0.13, "alpha": 0.3, "Cv": 0.12, "homo": 120.0, "lumo": 110.0, "gap": 200.0}
#: What a resumed training must share with the run it continues.
_RUN_KEYS = ("properties", "split", "steps", "batch_size", "lr", "seed", "hidden", "layers", "domain",
             "dipole_output")


@dataclass
class PropertyPredictor:
    """A regressor ``f(molecule) -> properties`` (in the properties' units), trained on z-scores."""

    net: EGNNRegressor
    properties: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    meta: dict[str, Any]

    @torch.no_grad()
    def predict_all(self, batch: Batch, chunk: int = 512) -> torch.Tensor:
        """``(molecules, properties)`` predictions for a batch in the point-cloud encoding (``point_cloud``)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        parts = []
        for i in range(0, len(batch), chunk):
            rows = batch.select(slice(i, i + chunk)).to(device)
            out = self.net(rows.x, torch.zeros(len(rows), device=device), None, rows.mask)
            parts.append(out.reshape(len(rows), -1).cpu())
        return torch.cat(parts) * self.std + self.mean

    def predict(self, batch: Batch, chunk: int = 512, property_name: str | None = None) -> torch.Tensor:
        """Predicted ``property_name`` of each molecule (default: the predictor's only property)."""
        if property_name is None:
            if len(self.properties) > 1:
                raise ValueError(f"this predictor regresses {', '.join(self.properties)}; name one")
            property_name = self.properties[0]
        if property_name not in self.properties:
            raise ValueError(f"this predictor regresses {', '.join(self.properties)}, not {property_name!r}")
        return self.predict_all(batch, chunk)[:, self.properties.index(property_name)]

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        digest = save_tensors(folder / WEIGHTS, {k: v.cpu() for k, v in self.net.state_dict().items()})
        write_json(folder / META, {**self.meta, "properties": self.properties, "mean": self.mean.tolist(),
                                   "std": self.std.tolist(), "sha256": digest})
        return folder

    @staticmethod
    def find(name: str | Path) -> Path | None:
        """The folder of a saved predictor: ``name`` itself, else the shipped one of that name; None if neither."""
        for folder in (Path(name), SHIPPED_PREDICTORS / str(name)):
            if (folder / META).is_file():
                return folder
        return None

    @classmethod
    def load(cls, folder: str | Path) -> PropertyPredictor:
        """A saved predictor from its folder, or a shipped one by name (``qm9-all-a``). Predictors saved
        before several properties were possible (``property``, scalar ``mean`` and ``std``) load as one."""
        found = cls.find(folder)
        if found is None:
            raise CheckpointError(f"{folder} holds no {META}; train a predictor with rgdm train-predictor")
        folder = found
        meta = read_json(folder / META)
        properties = meta.pop("properties", None) or [meta.pop("property")]
        mean, std = (torch.as_tensor(meta.pop(key), dtype=torch.float32).reshape(-1) for key in ("mean", "std"))
        net = EGNNRegressor(meta["atom_features"], 0, meta["hidden"], meta["layers"], outputs=len(properties),
                            dipole_output=meta.get("dipole_output"))
        net.load_state_dict(load_tensors(folder / WEIGHTS, meta.get("sha256")))
        return cls(net.eval(), properties, mean, std, meta)


def parse_properties(text: str) -> list[str]:
    """``alpha``, ``alpha,gap`` or ``all`` as a list of QM9 property names."""
    names = list(PROPERTIES) if text.strip() == "all" else [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in PROPERTIES]
    if unknown or not names:
        raise ValueError(f"unknown QM9 property {', '.join(unknown) or text!r}; choose from "
                         f"{', '.join(PROPERTIES)} or all")
    return names


def train_property_predictor(domain: Any, properties: str | Sequence[str], split: str, steps: int,
                             batch_size: int = 128, lr: float = 5e-4, hidden: int = 96, layers: int = 4,
                             seed: int = 0, progress: bool = True, device: str = "cpu", out: Path | None = None,
                             checkpoint_every: int = 1000, dipole: bool = True, compile: bool = False
                             ) -> PropertyPredictor:
    """Fit an EGNN regressor of ``properties`` on the molecules of ``split`` with an L1 loss on z-scores
    (as EDM's property classifiers) and cosine learning-rate decay; report its MAE on the validation and
    test sets against ``MAE_LIMITS``. ``dipole``: regress ``mu`` as the norm of a dipole of per-atom charges
    (``EGNNRegressor``'s dipole read-out) rather than as a sum of scalars. ``compile``: the training
    passes go through ``torch.compile`` (dynamic shapes; the weights, and so the predictor, are the same).

    With ``out``, the training state is written there every ``checkpoint_every`` steps and a rerun with
    the same settings resumes from it (another run's state is refused); the finished predictor is saved
    to ``out`` and the state removed.
    """
    names = parse_properties(properties if isinstance(properties, str) else ",".join(properties))
    data = domain.molecules(split)
    batch = point_cloud(domain, data.atomic_numbers, data.positions).to(device)
    values = torch.stack([torch.as_tensor(data.properties[name], dtype=torch.float32) for name in names], 1)
    mean, std = values.mean(0), values.std(0)
    scores = ((values - mean) / std).to(device)
    generator = torch.Generator().manual_seed(seed)
    dipole_output = names.index("mu") if dipole and "mu" in names else None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = EGNNRegressor(domain.points.atom_features, 0, hidden, layers, outputs=len(names),
                            dipole_output=dipole_output).to(device)
    trained = torch.compile(net, dynamic=True) if compile else net
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    meta = {"properties": names, "split": split, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
            "hidden": hidden, "layers": layers, "atom_features": domain.points.atom_features,
            "domain": domain.config()} | ({} if dipole_output is None else {"dipole_output": dipole_output})
    start = 0 if out is None else _resume(out, meta, net, optimizer, schedule, generator)
    bar = tqdm(range(start, steps), desc=f"{','.join(names)} predictor ({split})", disable=not progress,
               initial=start, total=steps, dynamic_ncols=True)
    with StopRequests() if out is not None else contextlib.nullcontext() as stops:
        for step in bar:
            rows = torch.randint(len(batch), (batch_size,), generator=generator).to(device)
            picked = batch.select(rows)
            prediction = trained(picked.x, torch.zeros(batch_size, device=device), None, picked.mask)
            loss = (prediction.reshape(batch_size, -1) - scores[rows]).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if out is None or step + 1 == steps:
                continue
            if stops.signal is not None or (step + 1) % checkpoint_every == 0:
                save_training_state(out, step + 1, meta, net, optimizer, generator, schedule)
            if stops.signal is not None:
                bar.close()
                raise TrainingInterrupted(f"stopped by signal {stops.signal} at step {step + 1}; training state "
                                          f"saved in {out}. Rerun the same command to continue")
    predictor = PropertyPredictor(net.eval(), names, mean, std, meta)
    for split_name in ("val", "test"):
        predictor.meta[f"{split_name}_mae"] = property_errors(predictor, domain, split_name)
    predictor.meta["mae_limits"] = {name: MAE_LIMITS[name] for name in names}
    if out is not None:
        predictor.save(out)
        clear_training_state(out)
    return predictor


def property_errors(predictor: PropertyPredictor, domain: Any, split: str) -> dict[str, float]:
    """The predictor's mean absolute error per property on QM9's ``split``, in the properties' units."""
    molecules = domain.molecules(split)
    predicted = predictor.predict_all(point_cloud(domain, molecules.atomic_numbers, molecules.positions))
    return {name: float((predicted[:, i] - torch.as_tensor(molecules.properties[name])).abs().mean())
            for i, name in enumerate(predictor.properties)}


def _resume(out: Path, meta: dict[str, Any], net: torch.nn.Module, optimizer: torch.optim.Optimizer,
            schedule: Any, generator: torch.Generator) -> int:
    """The step a saved training state in ``out`` reached (0 without one), restored into the objects."""
    if not (out / STATE_META).is_file() and (out / META).is_file():
        raise CheckpointError(f"{out} already holds a finished predictor; choose another --out")
    return load_training_state(out, meta, _RUN_KEYS, net, optimizer, generator, schedule)[0]


def encode_molecules(domain: Any, molecules: Sequence[Molecule]) -> tuple[Batch, np.ndarray]:
    """Decoded molecules back to an encoded batch; rows with no atoms (or too many) are flagged ``False``."""
    usable = np.array([0 < len(mol.atomic_numbers) <= MAX_ATOMS for mol in molecules])
    return point_cloud(domain, *pad_molecules(molecules, MAX_ATOMS)), usable


def point_cloud(domain: Any, atomic_numbers: np.ndarray, positions: np.ndarray) -> Batch:
    """Padded molecules in the predictors' encoding, EDM's point cloud (``domain.points``), whatever the
    encoding of the domain's generator."""
    return Batch(*domain.points.encode(atomic_numbers, positions))
