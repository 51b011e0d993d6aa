"""What an ``rgdm-data`` molecule fine-tune's pay-off weights favour: atoms per molecule by element, and bonds
per molecule by order, over draws of its scored rows uniformly and by their weights.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/tilt_composition.py RUN STEP --draws 3000

Prints one JSON line with both compositions.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from model_arguments import checkpoint_path

from rgdm.domains import build_domain
from rgdm.domains.molecules.chemistry import Molecule
from rgdm.engine import load_config
from rgdm.engine.checkpoint import read_checkpoint


def composition(molecules: Sequence[Molecule]) -> dict[str, float]:
    """Mean atoms of each element and bonds of each order per molecule."""
    counts: Counter[str] = Counter()
    for mol in molecules:
        counts.update(mol.symbols)
        orders = np.asarray(mol.bonds)[np.triu_indices(len(mol), 1)]
        counts.update(f"bond order {int(order)}" for order in orders if order)
    return {key: round(value / len(molecules), 3) for key, value in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("step", type=int)
    parser.add_argument("--draws", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tensors = read_checkpoint(checkpoint_path(args.run, args.step))[0]
    rows, weights = tensors["algorithm.rows"], tensors["algorithm.weights"][0].double()
    domain = build_domain(load_config(Path(args.run) / "config.yaml").domain)
    data = domain.dataset("train")
    generator = torch.Generator().manual_seed(args.seed)
    draws = {"uniform": torch.randint(len(rows), (args.draws,), generator=generator),
             "tilted": torch.multinomial(weights, args.draws, replacement=True, generator=generator)}
    result = {}
    for name, picked in draws.items():
        chosen = data.select(rows[picked])
        result[name] = composition(domain.decode(chosen.x, chosen.mask))
    print(json.dumps({"run": args.run, "step": args.step, "draws": args.draws, "seed": args.seed, **result}))


if __name__ == "__main__":
    main()
