"""Metrics of one checkpoint of a run (its EMA weights), as ``rgdm bench curve`` computes them, without
sampling the run's other checkpoints, or of a model (a shipped name or an exported folder, no STEP).

``--raw`` takes the checkpoint's optimiser weights instead of its EMA. ``--told-whole`` replaces a
self-conditioned bond model's fragment inputs by "every molecule is in one piece", to see whether the
network uses them. ``--eps-scale L`` divides every noise prediction by ``L``
while sampling: epsilon scaling (Ning et al., ICLR 2024), a sampling-time correction of exposure bias.
``--corrector-snr R`` follows every step with Langevin corrector steps (``rgdm sample --corrector-snr``).

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/checkpoint_metrics.py RUN STEP -n 128 --steps 50 [--told-whole]
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/checkpoint_metrics.py MODEL -n 256 --steps 100 --eps-scale 1.01
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/checkpoint_metrics.py RUN STEP -n 256 --steps 100 --reward qed
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/checkpoint_metrics.py MODEL -n 256 --steps 50 --corrector-snr 0.2

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from model_arguments import add_model_arguments, model_of
from torch import nn

import rgdm.domains.molecules.graph_network as graph_network
from rgdm.benchmarks.curves import sample_metrics
from rgdm.diffusion import LangevinCorrector

KEYS = ("validity", "fragmented", "molecule_stability", "atom_stability", "uniqueness")


class ScaledNoise(nn.Module):
    """``net``'s noise prediction divided by ``scale``, every part alike."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs) / self.scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, n=128, steps=50)
    parser.add_argument("--raw", action="store_true", help="the optimiser's weights, not the EMA")
    parser.add_argument("--told-whole", action="store_true")
    parser.add_argument("--eps-scale", type=float, default=1.0)
    parser.add_argument("--reward", help="also the mean of this reward over the samples it scores (e.g. qed)")
    parser.add_argument("--corrector-snr", type=float)
    parser.add_argument("--corrector-steps", type=int, default=1)
    parser.add_argument("--corrector-start", type=int)
    args = parser.parse_args()
    model = model_of(args, raw=args.raw)
    if args.eps_scale != 1.0:
        model = dataclasses.replace(model, net=ScaledNoise(model.net, args.eps_scale))
    if args.told_whole:
        graph_network.bonded_together = lambda bonds, mask: mask[:, :, None] & mask[:, None, :]
    corrector = None if args.corrector_snr is None else LangevinCorrector(args.corrector_snr, args.corrector_steps,
                                                                          start=args.corrector_start)
    metrics = sample_metrics(model, args.n, args.steps, args.seed, args.reward, corrector)
    print(json.dumps({"run": str(args.run), "step": args.step, "n": args.n, "sampling_steps": args.steps,
                      "seed": args.seed, "raw": args.raw, "told_whole": args.told_whole, "eps_scale": args.eps_scale,
                      "corrector_snr": args.corrector_snr,
                      "corrector_steps": None if corrector is None else args.corrector_steps,
                      "corrector_start": None if corrector is None else args.corrector_start,
                      "network_evaluations_per_sample": metrics["network_evaluations_per_sample"],
                      **{key: metrics[key] for key in KEYS},
                      **{key: metrics[key] for key in ("mean_reward", "reward_valid") if key in metrics}}))


if __name__ == "__main__":
    main()
