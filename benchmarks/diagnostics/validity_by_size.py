"""Validity and fragmentation of a molecule model's samples by atom count, optionally at another checkpoint's
atom counts ``p(M)``: whether a fine-tune loses validity because its refitted ``p(M)`` asks for larger
molecules, or at every size.

``--atom-counts-of RUN:STEP`` samples the model at that checkpoint's ``p(M)`` (a pay-off fine-tune refits
it to its tilt) instead of its own; nothing else changes.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/validity_by_size.py MODEL -n 1024 --steps 100
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/validity_by_size.py RUN STEP --atom-counts-of RUN2:STEP2

Prints one JSON line: the totals, and per atom count the samples, validity and fragmented share.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict

from model_arguments import add_model_arguments, checkpoint_path, model_of

from rgdm.domains import build_domain
from rgdm.domains.molecules.chemistry import chemistry_metrics
from rgdm.engine import generate
from rgdm.engine.builder import seeded_generator
from rgdm.io import read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, n=1024, steps=100)
    parser.add_argument("--atom-counts-of", metavar="RUN:STEP", help="sample at this checkpoint's p(M)")
    args = parser.parse_args()
    model = model_of(args)
    if args.atom_counts_of:
        run, step = args.atom_counts_of.rsplit(":", 1)
        counts = read_json(checkpoint_path(run, int(step)))["domain"]["atom_counts"]
        model = dataclasses.replace(model, domain=build_domain({**model.domain.config(), "atom_counts": counts}))
    samples = generate(model, args.n, seeded_generator(args.seed), steps=args.steps)
    by_size = defaultdict(list)
    for mol in model.domain.decode(samples.x, samples.mask):
        by_size[len(mol)].append(mol)
    rows = {size: chemistry_metrics(mols) for size, mols in sorted(by_size.items())}
    shares = {key: sum(row[key] * row["n"] for row in rows.values()) / args.n for key in ("validity", "fragmented")}
    print(json.dumps({
        "run": args.run, "step": args.step, "atom_counts_of": args.atom_counts_of, "n": args.n,
        "sampling_steps": args.steps, "seed": args.seed,
        "mean_atoms": sum(size * row["n"] for size, row in rows.items()) / args.n, **shares,
        "by_atoms": {size: {"n": int(row["n"]), "validity": row["validity"], "fragmented": row["fragmented"]}
                     for size, row in rows.items()},
    }))


if __name__ == "__main__":
    main()
