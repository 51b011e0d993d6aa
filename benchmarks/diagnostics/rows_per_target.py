"""How many scored rows a targeted fine-tune fits for each target: Kish's effective sample size of an
``rgdm-data`` run's pay-off weights, or the size of a ``cfg`` run's top reward class (its rows drawn uniformly).
Equal sizes mean both methods learn each target from as much data, so any gap between them is not the
amount of data each target sees.

    python benchmarks/diagnostics/rows_per_target.py RUN STEP [RUN STEP ...]

Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json

from model_arguments import checkpoint_path

from rgdm.algorithms.rgdm import effective_sample_size
from rgdm.engine.checkpoint import read_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN STEP pairs")
    args = parser.parse_args()
    if len(args.runs) % 2:
        parser.error("give each run folder with its checkpoint step")
    for run, step in zip(args.runs[::2], args.runs[1::2], strict=True):
        tensors = read_checkpoint(checkpoint_path(run, int(step)))[0]
        if "algorithm.weights" in tensors:
            weights = tensors["algorithm.weights"].double()
            kind, sizes = "effective sample size", [effective_sample_size(row) for row in weights]
        elif "algorithm.labels" in tensors:
            labels = tensors["algorithm.labels"]
            kind, sizes = "top class", [float((row == row.max()).sum()) for row in labels]
        else:
            raise SystemExit(f"{run} has neither pay-off weights (rgdm-data) nor reward classes (cfg)")
        print(json.dumps({"run": run, "step": int(step), "rows": len(tensors["algorithm.rows"]), "kind": kind,
                          "per_target": [round(size) for size in sizes]}))


if __name__ == "__main__":
    main()
