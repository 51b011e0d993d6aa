"""Black-box rewards on molecules: QED, Crippen logP, synthetic accessibility, substructure matches and
the distance of a predicted property to its target.

Each reward maps a sequence of ``Molecule`` to one float per molecule, ``nan`` for a molecule that is not
valid (see ``chemistry.valid_rdkit``); the caller replaces NaN by a floor value and counts it. Scores are
computed on the sanitised molecule with hydrogens implicit, as its SMILES describes it.

Validity lets radicals through (no hydrogens are invented for an atom short of bonds), and on QM9 models
most valid samples are radicals whose missing hydrogens raise QED. The ``-closed-shell`` variants score
only molecules without unpaired electrons, so a reward cannot be earned by dropping hydrogens.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from rdkit import Chem, RDConfig
from rdkit.Chem import QED, Crippen

from rgdm.domains.molecules.chemistry import Molecule, is_closed_shell, valid_rdkit
from rgdm.domains.molecules.xtb import xtb_strain
from rgdm.rewards.base import Reward

MoleculeReward = Callable[[Sequence[Molecule]], list[float]]


def _score_valid(samples: Sequence[Molecule], score: Callable[[Chem.Mol], float], closed_shell: bool = False
                 ) -> list[float]:
    """``score`` of each valid molecule's RDKit form; NaN for invalid ones (and radicals if ``closed_shell``)."""
    scores = []
    for mol in samples:
        rdkit_mol = valid_rdkit(mol)
        scored = rdkit_mol is not None and (not closed_shell or is_closed_shell(rdkit_mol))
        scores.append(float(score(rdkit_mol)) if scored else float("nan"))
    return scores


def qed(samples: Sequence[Molecule], *, closed_shell: bool = False) -> list[float]:
    """Quantitative estimate of drug-likeness (Bickerton et al. 2012), in [0, 1]."""
    return _score_valid(samples, QED.qed, closed_shell)


def logp(samples: Sequence[Molecule], *, closed_shell: bool = False) -> list[float]:
    """Crippen's octanol-water partition coefficient (Wildman & Crippen 1999)."""
    return _score_valid(samples, Crippen.MolLogP, closed_shell)


@functools.cache
def _sascorer() -> ModuleType:
    """RDKit's Contrib implementation of the SA score (it ships with the RDKit wheel, outside the package)."""
    source = Path(RDConfig.RDContribDir) / "SA_Score" / "sascorer.py"
    if not source.is_file():
        raise ImportError(f"RDKit's SA_Score contribution is missing (looked for {source}); "
                          "install an RDKit build that includes Contrib")
    spec = importlib.util.spec_from_file_location("sascorer", source)
    assert spec is not None and spec.loader is not None, "a .py file always has a loader"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sa_score(samples: Sequence[Molecule], *, closed_shell: bool = False) -> list[float]:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009) rescaled so higher is better: ``(10 - SA) / 9``.

    RDKit's SA score runs from 1 (easy to make) to 10 (hard), so the reward runs from 1 (easy) to 0 (hard).
    """
    calculate = _sascorer().calculateScore
    return _score_valid(samples, lambda rdkit_mol: (10.0 - calculate(rdkit_mol)) / 9.0, closed_shell)


def substructure(smarts: str) -> MoleculeReward:
    """A reward that is 1.0 for molecules containing the SMARTS pattern, 0.0 for the others (NaN if invalid).

    The pattern is matched against the hydrogen-suppressed molecule, as in its SMILES.
    """
    pattern = Chem.MolFromSmarts(smarts)
    if pattern is None:
        raise ValueError(f"invalid SMARTS pattern {smarts!r}; check its syntax (e.g. 'c1ccccc1', '[OX2H]')")

    def matches(samples: Sequence[Molecule]) -> list[float]:
        return _score_valid(samples, lambda rdkit_mol: float(rdkit_mol.HasSubstructMatch(pattern)))

    matches.__doc__ = f"1.0 when the molecule contains the SMARTS pattern {smarts!r}, else 0.0 (NaN if invalid)."
    return matches


@dataclass(frozen=True)
class PropertyReward:
    """``-|predicted property - target| / scale`` per molecule, NaN where the predictor cannot use it.

    Targets are values in the property's units; ``scale`` is the property's standard deviation, so a
    temperature means the same for every property. ``predict`` gives each molecule's predicted property
    and whether it is usable. ``score_targets`` predicts each molecule once and compares it with every
    target (scoring data rows for every conditional target).
    """

    predict: Callable[[Sequence[Molecule]], tuple[torch.Tensor, np.ndarray]]
    scale: float

    def __call__(self, samples: Sequence[Molecule], targets: Sequence[float] | None) -> np.ndarray:
        if targets is None:
            raise ValueError("the property reward needs targets: fine-tune with --targets, sample with --target")
        return self._reward(samples, torch.as_tensor(list(targets), dtype=torch.float32))

    def score_targets(self, samples: Sequence[Molecule], targets: Sequence[float]) -> np.ndarray:
        """``(len(targets), len(samples))`` rewards, each molecule predicted once."""
        return self._reward(samples, torch.as_tensor(list(targets), dtype=torch.float32)[:, None])

    def _reward(self, samples: Sequence[Molecule], values: torch.Tensor) -> np.ndarray:
        predicted, usable = self.predict(samples)
        return -np.where(usable, ((predicted - values).abs() / self.scale).numpy(), np.nan)


_PLAIN_REWARDS = {
    "qed": Reward(qed, "drug-likeness QED in [0, 1] (RDKit), NaN for invalid molecules", max_value=1.0),
    "logp": Reward(logp, "Crippen logP (RDKit), unbounded, NaN for invalid molecules"),
    "sa": Reward(sa_score, "synthetic accessibility rescaled to [0, 1] as (10 - SA) / 9, higher is easier to make; "
                           "NaN for invalid molecules", max_value=1.0),
}
MOLECULE_REWARDS: dict[str, Reward] = _PLAIN_REWARDS | {
    f"{name}-closed-shell": replace(reward, fn=functools.partial(reward.fn, closed_shell=True),
                                    description=f"{reward.description} and for radicals")
    for name, reward in _PLAIN_REWARDS.items()
} | {
    "smarts": Reward(None, "1 for molecules containing the SMARTS pattern, else 0; NaN for invalid molecules",
                     max_value=1.0, parse=substructure),
    "xtb-strain": Reward(xtb_strain, "-(GFN2-xTB energy of the generated geometry - after a short relaxation) per "
                         "atom, in eV/atom (tblite), at most 0; a model without hydrogens gets RDKit's, relaxed "
                         "first with its skeleton held; NaN for invalid molecules, failed SCF and timeouts",
                         max_value=0.0),
}


def qm9_qed_percentile(smiles: Sequence[str], q: float = 90) -> float:
    """The ``q``-th percentile of QED over the given SMILES (e.g. QM9's training set, for a QED target).

    Every SMILES must parse; a silently skipped one would shift the percentile.
    """
    if not smiles:
        raise ValueError("qm9_qed_percentile needs at least one SMILES")
    scores = []
    for index, text in enumerate(smiles):
        rdkit_mol = Chem.MolFromSmiles(text)
        if rdkit_mol is None:
            raise ValueError(f"SMILES {index} ({text!r}) cannot be parsed by RDKit; remove or fix it")
        scores.append(QED.qed(rdkit_mol))
    return float(np.percentile(scores, q))
