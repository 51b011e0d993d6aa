"""A physics reward: the GFN2-xTB strain of a generated geometry, through ``tblite``.

``xtb_strain`` scores each molecule by ``-(E_generated - E_relaxed) / n_atoms`` in **eV per atom**: the
GFN2-xTB energy (Bannwarth, Ehlert & Grimme 2019) of the geometry as generated, minus that of the same
atoms after a short relaxation, negated so that higher is better. A geometry at a minimum scores 0; every
other scores below 0 (the relaxed energy is the lowest one met, so the strain is never negative). The
relaxation is bounded in steps and wall time, so the strain is at most the strain to the minimum it heads
for, and the reward a cheap, smooth signal of how physical a geometry is. A geometry that relaxes into
another molecule (a bond breaks or forms) is charged the whole energy drop: the reward never asks whether
the relaxed atoms are still the molecule sampled.

The energy sees atoms and positions only; the molecule's bonds and charges matter twice: the molecule must
be valid (``chemistry.valid_rdkit``, the domain's one rule), and its total charge is the sum of the formal
charges and its unpaired electrons RDKit's radical electrons (all spins parallel).

A model without hydrogens (``implicit_hydrogens``) generates a heavy-atom skeleton, whose energy alone is
meaningless. RDKit places its hydrogens (``AddHs(addCoords=True)``), and a first relaxation moves only
them, the skeleton held as generated: the generated energy is the lowest of that stage, so RDKit's rough
placement costs nothing and the strain is the skeleton's alone. The full relaxation then starts there.

NaN, which the scorer puts at the reward floor, marks a molecule that is

* invalid;
* one whose SCF does not converge, at the generated geometry or during a relaxation, or whose charge and
  spin do not fit its electrons;
* over its ``time_limit``.

Cost, one thread, molecules of QM9's size (about 12 ms of CPU per energy and gradient): 0.1 s for a DFT
geometry (10 energies), 0.8 s median and 1.6 s at most for valid samples of ``qm9-edm-small`` (50-100
L-BFGS steps; 100 converge every one of them, 50 come within 0.015 eV/atom), a few ms for an invalid
molecule. The worker pool's chunk timeout should exceed a chunk's molecules times ``time_limit``, so that
a slow molecule costs only itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from rgdm.domains.molecules.chemistry import Molecule, valid_rdkit

#: CODATA 2018 conversions, as tblite uses atomic units (Hartree, Bohr).
HARTREE_TO_EV = 27.211386245988
BOHR_TO_ANGSTROM = 0.529177210903
#: Relaxation defaults: at most this many L-BFGS steps, and this much wall time per molecule in all.
MAX_STEPS = 100
TIME_LIMIT_S = 10.0
#: Converged when no gradient component exceeds 0.05 eV/Å (as ASE's customary ``fmax``), in Hartree/Bohr.
FORCE_TOLERANCE = 0.05 / HARTREE_TO_EV * BOHR_TO_ANGSTROM


class _OutOfTime(Exception):
    """The molecule's wall-time budget ran out during its relaxation."""


def _tblite() -> tuple[type, type, tuple[type[Exception], ...]]:
    """tblite's ``Calculator``, ``Result`` and errors, imported on first use so that rgdm imports without it."""
    try:
        from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError
        from tblite.interface import Calculator, Result
    except ImportError as error:  # the wheel also needs the system's libgomp
        raise ImportError("the xtb-strain reward needs tblite: pip install tblite (and libgomp1 on Linux)") from error
    return Calculator, Result, (TBLiteRuntimeError, TBLiteValueError)


def charge_and_spin(rdkit_mol: Chem.Mol) -> tuple[int, int]:
    """Total formal charge and number of unpaired electrons (RDKit's radical electrons) of a sanitised molecule."""
    return Chem.GetFormalCharge(rdkit_mol), sum(atom.GetNumRadicalElectrons() for atom in rdkit_mol.GetAtoms())


def xtb_energies(atomic_numbers: np.ndarray, positions: np.ndarray, charge: int = 0, unpaired: int = 0,
                 max_steps: int = MAX_STEPS, time_limit: float = TIME_LIMIT_S, held: np.ndarray | None = None
                 ) -> tuple[float, float] | None:
    """GFN2-xTB energies (eV) at ``positions`` (Å) and after at most ``max_steps`` relaxation steps, or None
    if an SCF fails, the charge and spin do not fit, or ``time_limit`` seconds pass.

    The relaxation is scipy's L-BFGS-B on tblite's energy and gradient: a well-kept optimiser already among
    rgdm's dependencies (ASE's would add one) whose ``maxiter`` and ``maxfun`` bound the work; each energy
    call checks the wall time. The relaxed energy is the lowest one evaluated. With ``held`` (a boolean mask
    of atoms), a first relaxation of at most ``max_steps`` moves only the other atoms, and the first energy
    returned is the lowest of that stage instead of the one at ``positions``.
    """
    calculator_type, result_type, errors = _tblite()
    if (int(np.sum(atomic_numbers)) - charge - unpaired) % 2:  # tblite would smear an odd electron silently
        return None
    deadline = time.perf_counter() + time_limit
    start = np.asarray(positions, dtype=np.float64) / BOHR_TO_ANGSTROM
    energies: list[float] = []  # Hartree, in the order evaluated; the first is at the generated geometry
    lowest = [math.inf, start]  # the lowest energy met and its geometry

    def energy_and_gradient(geometry: np.ndarray) -> tuple[float, np.ndarray]:
        if energies and time.perf_counter() > deadline:
            raise _OutOfTime
        calculator.update(geometry)
        calculator.singlepoint(result)  # in place: each SCF starts from the last density
        energies.append(float(result.get("energy")))
        if energies[-1] < lowest[0]:
            lowest[:] = energies[-1], geometry.copy()
        return energies[-1], np.array(result.get("gradient"), dtype=np.float64)

    def relax(geometry: np.ndarray, moving: np.ndarray) -> None:
        """L-BFGS-B over the ``moving`` atoms' coordinates; it evaluates its start first."""

        def on_moving(flat: np.ndarray) -> tuple[float, np.ndarray]:
            trial = geometry.copy()
            trial[moving] = flat.reshape(-1, 3)
            energy, gradient = energy_and_gradient(trial)
            return energy, gradient[moving].ravel()

        minimize(on_moving, geometry[moving].ravel(), jac=True, method="L-BFGS-B",
                 options={"maxiter": max_steps, "maxfun": 2 * max_steps, "gtol": FORCE_TOLERANCE})

    everything = np.ones(len(start), dtype=bool)
    try:
        calculator = calculator_type("GFN2-xTB", np.asarray(atomic_numbers, dtype=np.int32), start,
                                     charge=float(charge), uhf=int(unpaired), logger=lambda _: None)
        calculator.set("verbosity", 0)
        result = result_type()
        generated = None  # without a first stage: the full relaxation's first energy, at ``positions``
        if held is not None and not np.all(held):
            relax(start, ~np.asarray(held, dtype=bool))
            generated = lowest[0]
        relax(lowest[1], everything)
    except (_OutOfTime, *errors):
        return None
    return (energies[0] if generated is None else generated) * HARTREE_TO_EV, lowest[0] * HARTREE_TO_EV


def xtb_strain(samples: Sequence[Molecule], *, max_steps: int = MAX_STEPS, time_limit: float = TIME_LIMIT_S,
               threads: int | None = 1) -> list[float]:
    """``-(E_generated - E_relaxed) / n_atoms`` in eV/atom by GFN2-xTB, at most 0; NaN for invalid molecules,
    failed SCF and timeouts (see the module). A molecule without hydrogens gets RDKit's, relaxed first.

    ``time_limit`` (seconds) holds per molecule. ``threads`` caps OpenMP threads during the call (one per
    worker process suits the reward pool, and keeps forking safe); None leaves them as they are.
    """
    if max_steps < 1:
        raise ValueError(f"xtb-strain needs at least one relaxation step, got max_steps={max_steps}")
    with threadpool_limits(limits=threads, user_api="openmp"):
        return [_strain(mol, max_steps, time_limit) for mol in samples]


def _strain(mol: Molecule, max_steps: int, time_limit: float) -> float:
    rdkit_mol = valid_rdkit(mol, keep_hydrogens=True)
    if rdkit_mol is None:
        return float("nan")
    charge, unpaired = charge_and_spin(rdkit_mol)
    numbers, positions, held = mol.atomic_numbers, mol.positions, None
    if mol.implicit_hydrogens:  # RDKit's hydrogens after the skeleton's atoms, relaxed first with it held
        rdkit_mol = Chem.AddHs(rdkit_mol, addCoords=True)
        numbers = np.array([atom.GetAtomicNum() for atom in rdkit_mol.GetAtoms()])
        positions = rdkit_mol.GetConformer().GetPositions()
        held = np.arange(len(numbers)) < len(mol)
    energies = xtb_energies(numbers, positions, charge, unpaired, max_steps, time_limit, held)
    if energies is None:
        return float("nan")
    generated, relaxed = energies
    return -(generated - relaxed) / len(numbers)
