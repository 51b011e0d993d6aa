"""Bond lengths of a bond model's own valid samples against its training molecules', per kind of bond: whether
the buffers an own-sample fine-tune fits (``rgdm-model``) carry geometric errors the data does not.

Fitting its own samples fragments ``qm9-pretrained`` where fitting as many data rows does not
(docs/results/molecules.md#xtb). If the sampler's valid molecules held stretched bonds, a fit would learn
molecules near the edge of falling apart; this measures it. ``--corrector-snr`` samples as the corrector
buffers do (``--corrector-steps 2 --corrector-start 500`` as the shipped xTB recipe).

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/own_sample_geometry.py qm9-pretrained -n 256 --steps 50
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/own_sample_geometry.py qm9-pretrained -n 256 --steps 50 \
        --corrector-snr 0.3

Prints one JSON line: per kind of bond (elements and order, e.g. ``C-H 1``) with at least 20 bonds in
each set, the count, median and standard deviation of its lengths in Å in the samples and the data, and
the share of the samples' bonds outside the data's 1st to 99th percentile.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from model_arguments import add_model_arguments, model_of

from rgdm.diffusion.sampling import LangevinCorrector, ancestral_transition
from rgdm.domains.molecules.chemistry import ATOMIC_NUMBER_TO_SYMBOL, Molecule, valid_rdkit
from rgdm.engine import generate
from rgdm.engine.builder import seeded_generator

#: The fewest bonds of a kind, in either set, for the kind to be reported.
MIN_BONDS = 20


def bond_lengths(mols: Sequence[Molecule]) -> tuple[dict[str, list[float]], int]:
    """The lengths of every bond of the valid molecules by kind (``"C-H 1"``: sorted elements, order), and
    how many molecules were valid."""
    lengths: dict[str, list[float]] = defaultdict(list)
    valid = 0
    for mol in mols:
        if mol.bonds is None or valid_rdkit(mol) is None:
            continue
        valid += 1
        first, second = np.nonzero(np.triu(mol.bonds, 1))
        distances = np.linalg.norm(mol.positions[first] - mol.positions[second], axis=-1)
        for i, j, distance in zip(first, second, distances, strict=True):
            pair = sorted(ATOMIC_NUMBER_TO_SYMBOL[int(z)] for z in mol.atomic_numbers[[i, j]])
            lengths[f"{'-'.join(pair)} {int(mol.bonds[i, j])}"].append(float(distance))
    return lengths, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, n=256, steps=50)
    parser.add_argument("--corrector-snr", type=float, help="Langevin corrector steps after the sampler's steps")
    parser.add_argument("--corrector-steps", type=int, default=2)
    parser.add_argument("--corrector-start", type=int, default=500)
    parser.add_argument("--data", type=int, default=512, help="training molecules to compare with")
    args = parser.parse_args()
    model = model_of(args)
    transition = ancestral_transition if args.corrector_snr is None else LangevinCorrector(
        args.corrector_snr, args.corrector_steps, start=args.corrector_start)
    samples = generate(model, args.n, seeded_generator(args.seed), steps=args.steps, transition=transition)
    data = model.domain.dataset("train").select(slice(0, args.data))
    own, own_valid = bond_lengths(model.domain.decode(samples.x, samples.mask))
    reference, _ = bond_lengths(model.domain.decode(data.x, data.mask))
    kinds = {}
    for kind in sorted(set(own) & set(reference)):
        got, ref = np.array(own[kind]), np.array(reference[kind])
        if min(len(got), len(ref)) < MIN_BONDS:
            continue
        low, high = np.percentile(ref, [1, 99])
        kinds[kind] = {"n": len(got), "median": round(float(np.median(got)), 4), "sd": round(float(got.std()), 4),
                       "data_n": len(ref), "data_median": round(float(np.median(ref)), 4),
                       "data_sd": round(float(ref.std()), 4),
                       "outside_data_1_99": round(float(np.mean((got < low) | (got > high))), 4)}
    print(json.dumps({"run": args.run, "step": args.step, "n": args.n, "valid": own_valid, "sampling_steps": args.steps,
                      "corrector_snr": args.corrector_snr, "corrector_steps": args.corrector_steps,
                      "corrector_start": args.corrector_start, "seed": args.seed, "data": args.data,
                      "bonds": kinds}))


if __name__ == "__main__":
    main()
