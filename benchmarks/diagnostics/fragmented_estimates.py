"""How often the network's estimate of the clean molecule is in pieces, at a given noise level, when
``x_t`` is a noised training molecule and when it is the sampler's own state: the self-conditioning
fragment inputs can only learn from pieces that training shows.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/fragmented_estimates.py MODEL -n 200 --seed 11

Prints one JSON line: for each t, the share of estimates whose bonds form more than one fragment.
"""

from __future__ import annotations

import argparse
import json

import torch

from rgdm.diffusion.sampling import ancestral_transition
from rgdm.domains.molecules.graph_network import bonded_together
from rgdm.engine import generate, load_trained
from rgdm.engine.builder import seeded_generator

TIMES = (500, 400, 300, 200, 100)


def in_pieces(x0: dict, mask: torch.Tensor) -> torch.Tensor:
    """Per row: whether the estimate's bonds leave some real atom unreachable from the first."""
    together = bonded_together(x0["bonds"], mask)
    return (together[:, 0] != mask).any(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    model = load_trained(args.model)
    diffusion, eps_model = model.diffusion, model.eps_model
    generator = seeded_generator(args.seed)
    data = model.domain.dataset("train").sample(args.n, generator)
    training = {}
    with torch.no_grad():
        for t in TIMES:
            times = torch.full((args.n,), t)
            xt = diffusion.q_sample(data.x, times, diffusion.noise_like(data.x, data.mask, generator))
            x0 = diffusion.x0_from_eps(xt, times, eps_model(xt, times, None, data.mask))
            training[t] = in_pieces(x0, data.mask.bool()).float().mean().item()
    sampling = {}

    def recording(ctx):
        t = int(ctx.t.flatten()[0])
        if t in TIMES:
            sampling[t] = in_pieces(ctx.step.x0_hat, ctx.mask.bool()).float().mean().item()
        return ancestral_transition(ctx)

    generate(model, args.n, seeded_generator(args.seed), steps=100, transition=recording)
    print(json.dumps({"model": args.model, "n": args.n, "seed": args.seed, "sampling_steps": 100,
                      "in_pieces_training": training, "in_pieces_sampling": sampling}))


if __name__ == "__main__":
    main()
