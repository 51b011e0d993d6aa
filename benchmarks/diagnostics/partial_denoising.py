"""Where a fine-tune's tilt is lost: the highest-reward training molecules, noised to ``t0`` and denoised
by a model, keep their reward only as far up as the model has learnt the tilt.

The ``n`` best-scoring of ``pool`` random training molecules are noised to each ``t0`` and run through the
ancestral sampler from there (strides of 10 steps); the mean reward of the valid results and the valid
share are printed per ``t0``. At small ``t0`` the noisy state fixes the molecule and the reward survives
whatever the model; where it is lost, the model's own choice takes over.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/partial_denoising.py MODEL --reward qed
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/partial_denoising.py RUN/checkpoints/step-00012000.json

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rgdm.benchmarks.curves import checkpoint_model
from rgdm.diffusion.sampling import sample
from rgdm.engine import load_trained
from rgdm.engine.builder import seeded_generator

STARTS = (300, 500, 700, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model's name or folder, or a run's checkpoints/step-*.json")
    parser.add_argument("--reward", default="qed")
    parser.add_argument("-n", type=int, default=192)
    parser.add_argument("--pool", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    model = checkpoint_model(Path(args.model)) if args.model.endswith(".json") else load_trained(args.model)
    generator = seeded_generator(args.seed)
    scorer = model.domain.scorer(args.reward)
    pool = model.domain.dataset("train").sample(args.pool, generator)
    scored = scorer(pool.x, pool.mask, None)
    best = torch.where(scored.valid, scored.values, torch.tensor(float("-inf"))).topk(args.n).indices
    batch = pool.select(best)
    diffusion = model.diffusion
    result = {}
    for start in STARTS:
        noisy = diffusion.q_sample(batch.x, torch.full((args.n,), start),
                                   diffusion.noise_like(batch.x, batch.mask, generator))
        x = sample(model.eps_model, noisy, start=start, steps=start // 10, mask=batch.mask, generator=generator).x0
        out = scorer(x, batch.mask, None)
        result[start] = {"mean_reward_valid": float(out.values[out.valid].mean()),
                         "valid": float(out.valid.float().mean())}
    print(json.dumps({"model": args.model, "reward": args.reward, "n": args.n, "pool": args.pool, "seed": args.seed,
                      "data_mean_reward": float(scored.values[best].mean()), "denoised_from": result}))


if __name__ == "__main__":
    main()
