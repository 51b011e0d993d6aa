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
from rgdm.domains import build_domain
from rgdm.engine.builder import LoadedModel, make_diffusion, seeded_generator
from rgdm.engine.config import load_config
from rgdm.engine.generate import generate
from rgdm.io import load_tensors, read_json

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
    meta = read_json(args.run / "checkpoints" / f"step-{args.step:08d}.json")
    config = load_config(args.run / "config.yaml")
    domain = build_domain(meta["domain"])
    net = domain.build_network(config.network)
    tensors = load_tensors(args.run / "checkpoints" / meta["tensors"], meta["sha256"])
    net.load_state_dict({key.removeprefix("ema.module."): value for key, value in tensors.items()
                         if key.startswith("ema.module.")})
    model = LoadedModel(domain, make_diffusion(config.diffusion, domain), net.eval(), {})
    if args.told_whole:
        graph_network.bonded_together = lambda bonds, mask: mask[:, :, None] & mask[:, None, :]
    samples = generate(model, args.n, seeded_generator(args.seed), steps=args.steps)
    metrics = domain.evaluate(samples, None, None, seeded_generator(args.seed))
    print(json.dumps({"run": str(args.run), "step": args.step, "n": args.n, "sampling_steps": args.steps,
                      "seed": args.seed, "told_whole": args.told_whole,
                      "network_evaluations_per_sample": model.eps_model.evaluations / args.n,
                      **{key: metrics[key] for key in KEYS}}))


if __name__ == "__main__":
    main()
