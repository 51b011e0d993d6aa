"""How well a model already fits the molecules a reward tilt favours: its denoising loss on the ``n``
highest-reward of ``pool`` training molecules against ``n`` random ones, per band of noise levels.

A tilt of the data (``rgdm-data``) asks a model to make its favoured molecules more often. If the model
fits them as well as any others (a loss ratio near 1), the fine-tune reweights what it can already make;
if it fits them worse, it must first learn them. Both sets see the same times.

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/tilted_row_loss.py MODEL --reward qed

Prints one JSON line: per band ``[lo, hi)`` of ``t``, the mean loss of the favoured and the random rows.
"""

from __future__ import annotations

import argparse
import json

import torch

from rgdm.diffusion.loss import denoising_loss
from rgdm.engine import load_trained
from rgdm.engine.builder import seeded_generator

#: Lower edges of the bands of ``t``; the last band runs to the model's T.
BAND_STARTS = (1, 100, 300, 500, 700)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model's name or folder")
    parser.add_argument("--reward", default="qed")
    parser.add_argument("-n", type=int, default=512)
    parser.add_argument("--pool", type=int, default=6000)
    parser.add_argument("--draws", type=int, default=4, help="times and noise drawn per row and band")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    model = load_trained(args.model)
    generator = seeded_generator(args.seed)
    pool = model.domain.dataset("train").sample(args.pool, generator)
    scored = model.domain.scorer(args.reward)(pool.x, pool.mask, None)
    values = torch.where(scored.valid, scored.values, torch.tensor(float("-inf")))
    favoured = pool.select(values.topk(args.n).indices)
    random = pool.select(torch.randperm(args.pool, generator=generator)[:args.n])
    diffusion = model.diffusion
    result: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for lo, hi in zip(BAND_STARTS, (*BAND_STARTS[1:], diffusion.timesteps + 1), strict=True):
            losses = {"favoured": [], "random": []}
            for _ in range(args.draws):
                t = torch.randint(lo, hi, (args.n,), generator=generator)
                for name, rows in (("favoured", favoured), ("random", random)):
                    noise = diffusion.noise_like(rows.x, rows.mask, generator)
                    losses[name].append(denoising_loss(model.eps_model, rows.x, t, noise, mask=rows.mask))
            favoured_loss, random_loss = (float(torch.cat(losses[key]).mean()) for key in ("favoured", "random"))
            result[f"{lo}-{hi}"] = {"favoured": round(favoured_loss, 5), "random": round(random_loss, 5),
                                    "ratio": round(favoured_loss / random_loss, 3)}
    print(json.dumps({"model": args.model, "reward": args.reward, "n": args.n, "pool": args.pool,
                      "favoured_mean_reward": round(float(values.topk(args.n).values.mean()), 4),
                      "bands": result}))


if __name__ == "__main__":
    main()
