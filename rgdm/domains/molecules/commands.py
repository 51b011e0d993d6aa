"""The molecules domain's own ``rgdm`` subcommand: ``rgdm train-predictor``, an EGNN property predictor on
one half of QM9 (``rgdm.domains.molecules.properties``).

``rgdm.registry.BUILTIN_COMMANDS`` names ``add_commands``, which the command line calls on every run to
build its parser: this module stays light, and the domain is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train-predictor`` to the ``rgdm`` subcommands."""
    predictor = commands.add_parser(
        "train-predictor", help="an EGNN predictor of QM9 properties on one half of QM9 (resumable: rerun it)")
    predictor.add_argument("--property", required=True,
                           help="alpha, gap, homo, lumo, mu or Cv; several comma-separated, or all (one model)")
    predictor.add_argument("--split", required=True, choices=["train_a", "train_b"],
                           help="train_a: the rewarding predictor; train_b: the measuring one")
    predictor.add_argument("--steps", type=int, default=6000)
    predictor.add_argument("--batch-size", type=int, default=128)
    predictor.add_argument("--lr", type=float, default=1e-3)
    predictor.add_argument("--hidden", type=int, default=96)
    predictor.add_argument("--layers", type=int, default=4)
    predictor.add_argument("--seed", type=int, default=0)
    predictor.add_argument("--subset", type=int, help="use only this many molecules of the split")
    predictor.add_argument("--no-hydrogens", action="store_true")
    predictor.add_argument("--scalar-mu", action="store_true",
                           help="regress mu as a sum of per-atom scalars, not as the norm of a dipole of "
                                "per-atom charges")
    predictor.add_argument("--compile", action="store_true",
                           help="torch.compile the training passes: faster steps after a compile of a minute or so")
    predictor.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    predictor.add_argument("--checkpoint-every", type=int, default=1000,
                           help="steps between training states in --out; rerunning the command resumes")
    predictor.add_argument("--out", required=True)
    predictor.set_defaults(func=train_predictor)


def train_predictor(args: argparse.Namespace) -> None:
    """``rgdm train-predictor``: fit the predictor (resuming a state in ``--out``), save it, print its errors."""
    from rgdm.domains.molecules.domain import MoleculeDomain
    from rgdm.domains.molecules.properties import train_property_predictor

    domain = MoleculeDomain({"hydrogens": not args.no_hydrogens, "subset": args.subset})
    predictor = train_property_predictor(domain, args.property, args.split, args.steps, args.batch_size, args.lr,
                                         hidden=args.hidden, layers=args.layers, seed=args.seed,
                                         progress=not args.quiet, device=args.device, out=Path(args.out),
                                         checkpoint_every=args.checkpoint_every, dipole=not args.scalar_mu,
                                         compile=args.compile)
    meta = predictor.meta
    for name in predictor.properties:
        verdict = "within" if meta["test_mae"][name] <= meta["mae_limits"][name] else "above"
        print(f"{name} predictor on {args.split}: validation MAE {meta['val_mae'][name]:.4f}, test MAE "
              f"{meta['test_mae'][name]:.4f} ({verdict} the limit {meta['mae_limits'][name]:g})")
    print(f"saved to {args.out}")
