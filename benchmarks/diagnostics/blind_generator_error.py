"""What a generator blind to the target scores on EDM's property protocol, from the data alone.

EDM's "#Atoms" row predicts a target ``c`` by the mean property of the molecules with its atom count ``M``.
A generator sampled at that ``M`` but blind to ``c`` makes a molecule of that size, not the size's mean:
even a perfect one scores the error of a *random* training molecule of the same size, about sqrt(2) times
#Atoms for a symmetric spread. So a conditional model beats #Atoms only when its conditioning removes
about a third of a blind generator's error. This prints both errors per property, on the data's own
values (no predictor), for the targets and sizes of every training molecule (``--split``).

    python benchmarks/diagnostics/blind_generator_error.py [--split train_a] [--seed 0]

Prints one JSON line per property, in its reported units (meV for the orbital energies).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from rgdm.domains import build_domain
from rgdm.domains.molecules.data import PROPERTIES
from rgdm.domains.molecules.domain import mean_by_atom_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="train_a", help="the half whose molecules give targets and sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    molecules = build_domain({"name": "molecules"}).molecules(args.split)
    sizes = np.asarray(molecules.num_atoms)
    rng = np.random.default_rng(args.seed)
    partner = np.empty(len(sizes), dtype=int)
    for size in np.unique(sizes):
        same = np.flatnonzero(sizes == size)
        partner[same] = rng.choice(same, len(same))
    for name in PROPERTIES:
        values = np.asarray(molecules.properties[name], dtype=float)
        mean_by_size = mean_by_atom_count(values, sizes)
        atoms = np.abs(np.array([mean_by_size[int(size)] for size in sizes]) - values).mean()
        blind = np.abs(values[partner] - values).mean()
        print(json.dumps({"property": name, "split": args.split, "molecules": len(values),
                          "atoms_mae": round(float(atoms), 6), "blind_generator_mae": round(float(blind), 6),
                          "ratio": round(float(blind / atoms), 3)}))


if __name__ == "__main__":
    main()
