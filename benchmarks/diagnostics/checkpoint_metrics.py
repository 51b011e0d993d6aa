"""Metrics of one checkpoint of a run (its EMA weights), as ``rgdm bench curve`` computes them, without
sampling the run's other checkpoints; ``--told-whole`` replaces a self-conditioned bond model's
fragment inputs by "every molecule is in one piece", to see whether the network uses them.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/checkpoint_metrics.py RUN STEP -n 128 --steps 50 [--told-whole]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import rgdm.domains.molecules.graph_network as graph_network
from rgdm.benchmarks.curves import checkpoint_model, sample_metrics

KEYS = ("validity", "fragmented", "molecule_stability", "atom_stability", "uniqueness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("step", type=int)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--told-whole", action="store_true")
    args = parser.parse_args()
    model = checkpoint_model(args.run / "checkpoints" / f"step-{args.step:08d}.json")
    if args.told_whole:
        graph_network.bonded_together = lambda bonds, mask: mask[:, :, None] & mask[:, None, :]
    metrics = sample_metrics(model, args.n, args.steps, args.seed)
    print(json.dumps({"run": str(args.run), "step": args.step, "n": args.n, "sampling_steps": args.steps,
                      "seed": args.seed, "told_whole": args.told_whole,
                      "network_evaluations_per_sample": metrics["network_evaluations_per_sample"],
                      **{key: metrics[key] for key in KEYS}}))


if __name__ == "__main__":
    main()
