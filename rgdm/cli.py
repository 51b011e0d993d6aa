"""The ``rgdm`` command line: train, finetune, export, sample, evaluate, train-guide, bench, demo, checkpoints,
list, and the commands the domains add (the molecules' train-predictor)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from rgdm import api, registry
from rgdm.algorithms.classifier_guidance import OBJECTIVES
from rgdm.algorithms.exploration import VALUE_ESTIMATES
from rgdm.batch import Batch, flatten_parts, unflatten_parts
from rgdm.benchmarks import demo
from rgdm.benchmarks.cli import add_bench_command
from rgdm.domains import build_domain
from rgdm.domains.base import SupportsFiles
from rgdm.engine import (
    ConfigError,
    Trainer,
    TrainingInterrupted,
    load_config,
    load_trained,
    make_scorer,
)
from rgdm.engine.builder import seeded_generator
from rgdm.engine.config import Guidance, RewardConfig, SampleConfig, UsageError, preset_or_path
from rgdm.engine.distributed import leave_process_group
from rgdm.engine.guide import save_guide, train_guide
from rgdm.engine.registry import resolve_model, shipped_models
from rgdm.io import CheckpointError, read_json, save_arrays, write_json
from rgdm.registry import RegistryError
from rgdm.rewards import BudgetExhausted, Reward, RewardCounter, RewardPluginError

log = logging.getLogger("rgdm.cli")


def fresh_run_dir(out: str) -> Path:
    path = Path(out)
    if (path / "config.yaml").exists():
        raise UsageError(f"{path} already holds a run; continue it with --resume {path} or choose a new --out")
    return path


def resume(run_dir: str) -> Trainer:
    trainer = Trainer.resume(run_dir)
    print(f"resuming {run_dir} at step {trainer.step} of {trainer.config.train.steps}")
    return trainer


def cmd_train(args: argparse.Namespace) -> None:
    if args.resume:
        trainer = resume(args.resume)
    else:
        if not (args.config and args.out):
            raise UsageError("train needs --config and --out (or --resume DIR)")
        trainer = Trainer(load_config(preset_or_path(args.config), args.set), fresh_run_dir(args.out))
    run_dir = trainer.fit(progress=not args.quiet)
    print(f"trained {trainer.step} steps; final weights in {run_dir / 'final.safetensors'}")


def cmd_finetune(args: argparse.Namespace) -> None:
    if args.resume:
        trainer = resume(args.resume)
        trainer.fit(progress=not args.quiet)
        algorithm, calls = trainer.config.algorithm.name, trainer.counter.calls
    else:
        if not (((args.checkpoint and args.reward) or args.config) and args.out):
            raise UsageError("finetune needs --checkpoint, --reward and --out, or a recipe (--config NAME) and --out "
                             "(or --resume DIR)")
        flags = {"train.checkpoint_every": args.checkpoint_every, "algorithm.targets": args.targets}
        overrides = [f"{key}={value}" for key, value in flags.items() if value is not None] + args.set
        training = api.finetune(args.checkpoint, reward=args.reward, algorithm=args.algorithm,
                                temperature=args.temperature, steps=args.steps, seed=args.seed, config=args.config,
                                overrides=overrides, out=fresh_run_dir(args.out), progress=not args.quiet
                                ).meta["training"]
        algorithm, calls = training["algorithm"], training["reward_calls"]
    print(f"fine-tuned with {algorithm}: {calls} reward calls; "
          f"final weights in {Path(args.resume or args.out) / 'final.safetensors'}")


def cmd_export(args: argparse.Namespace) -> None:
    run, out = Path(args.run), Path(args.out)
    if out.resolve() == run.resolve() or (out / "config.yaml").exists():
        raise UsageError(f"--out {out} is a run folder; export to a new folder")
    trainer = Trainer.resume(run)
    weights = trainer.export(out)
    print(f"{run} at step {trainer.step} of {trainer.config.train.steps}: EMA weights in {weights}; "
          f"sample them with rgdm sample --checkpoint {out}")


def write_samples(model: Any, samples: Batch, out: Path, meta: dict[str, Any]) -> list[Path]:
    """``samples.npz`` (array ``samples``, or ``samples/PART`` per part of a multi-part sample, plus ``mask``
    and ``targets``), ``sample.json``, a PNG."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = {name: value.numpy() for name, value in flatten_parts({"samples": samples.x}).items()}
    if samples.mask is not None:
        arrays["mask"] = samples.mask.numpy()
    if samples.cond is not None:
        arrays["targets"] = samples.cond.numpy()
    save_arrays(out / "samples.npz", arrays)
    write_json(out / "sample.json", meta)
    files = [out / "samples.npz", out / "sample.json", model.domain.plot({"samples": samples}, out / "samples.png")]
    return files + model.domain.save_samples(samples, out)


def cmd_train_guide(args: argparse.Namespace) -> None:
    model = load_trained(args.checkpoint)
    targets = None if args.targets is None else [model.domain.parse_target(item)
                                                 for item in args.targets.strip("[] ").split(",")]
    counter = RewardCounter()
    scorer = make_scorer(RewardConfig(name=args.reward), model.domain, counter)
    regressor, meta = train_guide(model, scorer, targets, rows=args.rows, steps=args.steps,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed, objective=args.objective,
                                  progress=not args.quiet, folder=Path(args.out))
    folder = save_guide(Path(args.out), regressor, {**meta, "checkpoint": args.checkpoint, "reward": args.reward})
    print(f"guide for {args.checkpoint}: {counter.calls} reward calls, {args.steps} steps, final {args.objective} "
          f"loss {meta['final_loss']:.4f}; saved to {folder}. Sample with: rgdm sample --checkpoint "
          f"{args.checkpoint} --guidance regressor --guide {folder} --temperature T")


def cmd_sample(args: argparse.Namespace) -> None:
    samples = api.sample(args.checkpoint, args.n, reward=args.reward, guidance=args.guidance, seed=args.seed,
                         temperature=args.temperature, target=args.target, steps=args.steps, eta=args.eta,
                         candidates=args.candidates, particles=args.particles, value=args.value,
                         guidance_start=args.guidance_start, radius=args.radius, guide=args.guide,
                         cfg_scale=args.cfg_scale, corrector_snr=args.corrector_snr,
                         corrector_steps=args.corrector_steps, corrector_start=args.corrector_start,
                         progress=not args.quiet)
    files = write_samples(samples.model, samples.batch, Path(args.out),
                          {"checkpoint": str(args.checkpoint), **samples.meta})
    print(f"wrote {args.n} samples: " + describe_files(files, Path(args.out)))


def describe_files(files: list[Path], out: Path) -> str:
    """The files in ``out`` by path, and each subfolder (one PLY per shape, say) by its file count."""
    subfolders = Counter(f.parent for f in files if f.parent != out)
    return ", ".join([str(f) for f in files if f.parent == out]
                     + [f"{folder}/ ({count} files)" for folder, count in subfolders.items()])


def load_samples(folder: Path, domain: Any) -> Batch:
    """``samples.npz`` as written by ``rgdm sample``, else the domain's own files (XYZ, SDF, PLY)."""
    path = folder / "samples.npz"
    if not path.is_file():
        if isinstance(domain, SupportsFiles):
            return domain.read_samples(folder)
        raise UsageError(f"{folder} has no samples.npz; write one with: rgdm sample --out {folder}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = unflatten_parts({name: torch.as_tensor(data[name]) for name in data.files})
        x, mask, cond = arrays["samples"], arrays.get("mask"), arrays.get("targets")
    except (ValueError, OSError, KeyError) as error:
        raise UsageError(f"{path} is not a readable samples file with an array 'samples': {error}") from None
    return Batch(x, mask, cond)


def with_target(samples: Batch, target: int | float) -> Batch:
    """``samples`` marked as aimed at ``target`` (a class or a value): files of another model (PLY, XYZ)
    record no target."""
    if samples.cond is not None:
        raise UsageError("these samples already record their targets (samples.npz); drop --target")
    kind = torch.float32 if isinstance(target, float) else torch.long
    return Batch(samples.x, samples.mask, torch.full((len(samples),), target, dtype=kind))


def data_reference(domain: Any, split: str, n: int, seed: int) -> Batch:
    """``n`` rows of the domain's ``split`` drawn without replacement (seeded): real data measured by the same
    pipeline as samples, the reference a model's metrics are read against (a PoseBusters pass rate, say)."""
    try:
        data = domain.dataset(split)
    except (KeyError, ValueError) as error:
        raise UsageError(f"the domain has no data split {split!r}: {error}") from error
    rows = torch.randperm(len(data), generator=seeded_generator(seed))[:n]
    return data.select(rows)


def cmd_evaluate(args: argparse.Namespace) -> None:
    if (args.dir is None) == (args.data is None):
        raise UsageError("evaluate takes a folder of samples, or --data SPLIT (with --checkpoint) to measure the "
                         "domain's own data as the reference; give one of the two")
    folder = Path(args.dir) if args.dir is not None else None
    if folder is not None and not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; pass the --out folder of rgdm sample, or a folder of "
                         "samples.xyz / samples.sdf / *.ply files with --checkpoint")
    meta = read_json(folder / "sample.json") if folder is not None and (folder / "sample.json").is_file() else {}
    checkpoint = args.checkpoint or meta.get("checkpoint")
    if checkpoint is None:
        raise UsageError("no sample.json names the model; pass --checkpoint NAME|DIR")
    model = load_trained(checkpoint)
    if folder is None:
        samples = data_reference(model.domain, args.data, args.n, args.seed)
    else:
        samples = load_samples(folder, model.domain)
    if args.target is not None:
        samples = with_target(samples, model.domain.parse_target(args.target))
    metrics = api.evaluate(api.Samples(samples, model, meta), reward=args.reward, temperature=args.temperature,
                           seed=args.seed)
    metrics["checkpoint"] = str(checkpoint)
    if args.data is not None:
        metrics["data"] = args.data
    text = json.dumps(metrics, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)


def cmd_demo(args: argparse.Namespace) -> None:
    chosen = demo.demos()[args.domain]
    out = Path(args.out) / args.domain  # each demo its own folder: a second demo never meets the first one's run
    print(json.dumps(chosen.run(out, progress=not args.quiet), indent=2))
    print(f"demo written to {out}: {chosen.files}")


def catalogue() -> dict[str, Any]:
    """What this installation offers, plugins included: domains with their rewards (of a domain built with
    default options), algorithms, and the shipped checkpoints."""
    domains: dict[str, Any] = {}
    for name in registry.domains.names():
        entry: dict[str, Any] = {"source": registry.domains.source(name)}
        try:
            domain = build_domain({"name": name})
            own = domain.rewards()
            entry["rewards"] = {reward_name: describe_reward(reward, "domain" if reward_name in own
                                                             else registry.rewards.source(reward_name))
                                for reward_name, reward in sorted(registry.rewards_for(domain).items())}
        except Exception as error:  # a plugin's domain may need options: list it, and say why it has no rewards
            entry["error"] = f"{type(error).__name__}: {error}"
        domains[name] = entry
    algorithms = {name: {"source": registry.algorithms.source(name)} for name in registry.algorithms.names()}
    checkpoints = {}
    for name in shipped_models():
        meta = read_json(resolve_model(name) / "model.json")
        training = meta.get("training", {})
        checkpoints[name] = {"domain": meta["domain"]["name"], "algorithm": training.get("algorithm"),
                             "steps": training.get("steps")}
    return {"domains": domains, "algorithms": algorithms, "checkpoints": checkpoints}


def describe_reward(reward: Reward, source: str) -> dict[str, Any]:
    """A reward as ``rgdm list`` shows it: what it measures and what the engine may rely on."""
    return {"description": reward.description, "max_value": reward.max_value, "argument": reward.parse is not None,
            "differentiable": reward.gradient_fn is not None, "source": source}


def cmd_list(args: argparse.Namespace) -> None:
    listing = catalogue()
    if args.json:
        print(json.dumps(listing, indent=2))
        return
    print("domains (rewards of the domain with default options):")
    for name, domain in listing["domains"].items():
        print(f"  {name} [{domain['source']}]")
        if "error" in domain:
            print(f"    rewards not listed: {domain['error']}")
        for reward_name, reward in domain.get("rewards", {}).items():
            extra = "" if reward["source"] == "domain" else f" [{reward['source']}]"
            print(f"    {reward_name}{':ARG' if reward['argument'] else ''}{extra}: {reward['description']}")
    print("algorithms:")
    for name, algorithm in listing["algorithms"].items():
        print(f"  {name} [{algorithm['source']}]")
    print("checkpoints:")
    for name, checkpoint in listing["checkpoints"].items():
        print(f"  {name}: domain {checkpoint['domain']}, {checkpoint['algorithm']} {checkpoint['steps']} steps")


def cmd_checkpoints(args: argparse.Namespace) -> None:
    for name in shipped_models():
        meta = read_json(resolve_model(name) / "model.json")
        training = meta.get("training", {})
        print(f"{name}: domain {meta['domain']['name']}, {training.get('algorithm')} "
              f"{training.get('steps')} steps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgdm", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model from a config (pre-training)")
    train.add_argument("--config", help="YAML file or preset name (e.g. toy-ring-pretrain)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    train.add_argument("--out", help="run folder")
    train.add_argument("--resume", metavar="DIR", help="continue an interrupted run exactly")
    train.set_defaults(func=cmd_train)

    finetune = commands.add_parser("finetune", help="RGDM fine-tuning of a trained model with a reward")
    finetune.add_argument("--checkpoint", help="shipped name or run folder to start from")
    finetune.add_argument("--reward", help="domain reward name, FILE.py:FUNC or module:FUNC")
    finetune.add_argument("--algorithm", choices=registry.algorithms.names(),
                          help="an RGDM estimator (default rgdm-data for toys), a training peer or a plugin's "
                               "algorithm (rgdm list)")
    finetune.add_argument("--temperature", type=float, help="tau of exp(r / tau)")
    finetune.add_argument("--steps", type=int)
    finetune.add_argument("--checkpoint-every", type=int)
    finetune.add_argument("--seed", type=int)
    finetune.add_argument("--targets", help="conditional targets, e.g. [0,1,2]: the network learns each")
    finetune.add_argument("--config", help="YAML file or preset (default: finetune-DOMAIN); a shipped checkpoint's "
                          "recipe (qm9-noh-rgdm-qed) names its own model and reward")
    finetune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    finetune.add_argument("--out", help="run folder")
    finetune.add_argument("--resume", metavar="DIR", help="continue an interrupted run exactly")
    finetune.set_defaults(func=cmd_finetune)

    export = commands.add_parser("export", help="a run's newest checkpoint (running or interrupted) as a model "
                                 "folder that sample and evaluate take")
    export.add_argument("run", help="run folder")
    export.add_argument("--out", required=True, help="new model folder")
    export.set_defaults(func=cmd_export)

    sample = commands.add_parser("sample", help="draw samples from a trained model (sample.json records the "
                                 "options)")
    options = SampleConfig.model_fields  # the defaults and checks of every option
    sample.add_argument("--checkpoint", required=True, help="shipped name or run folder")
    sample.add_argument("-n", type=int, default=options["n"].default, help="number of samples (default %(default)s)")
    sample.add_argument("--seed", type=int, default=options["seed"].default,
                        help="random seed of the draw (default %(default)s)")
    sample.add_argument("--target", help="condition for a conditional model (a class, or a property value for "
                        "molecules); 'all' spreads the samples evenly over every target")
    sample.add_argument("--steps", type=int, help="DDIM steps (default: every step, DDPM)")
    sample.add_argument("--eta", type=float, default=options["eta"].default,
                        help="DDIM eta (1: ancestral, 0: deterministic; default %(default)s)")
    sample.add_argument("--guidance", choices=get_args(Guidance), default=options["guidance"].default,
                        help="reward-guided sampling: smc targets the pay-off p_ref exp(r / T) (sequential Monte "
                             "Carlo); select is greedy selection among candidates (over-shoots it); gradient steps "
                             "(default %(default)s)")
    sample.add_argument("--reward", help="reward for guidance")
    sample.add_argument("--temperature", type=float, default=options["temperature"].default,
                        help="tau of the pay-off p_ref exp(r / tau) that guidance aims at (default %(default)s)")
    sample.add_argument("--candidates", type=int, default=options["candidates"].default,
                        help="select: candidates a step, even (default %(default)s)")
    sample.add_argument("--particles", type=int, default=options["particles"].default,
                        help="smc: particles per sample (default %(default)s)")
    sample.add_argument("--value", choices=VALUE_ESTIMATES,
                        help="select, smc: Tweedie values from the noise predicted at each candidate (exact, the "
                             "default) or at the state it was drawn from (reuse: select then costs one network "
                             "evaluation a step instead of K, and over-shoots the pay-off further)")
    sample.add_argument("--guidance-start", type=int, metavar="T",
                        help="select, smc: guide only the steps landing at diffusion time <= T (of the model's "
                             "timesteps); noisier steps are plain draws, saving their evaluations and reward calls")
    sample.add_argument("--radius", type=float, default=options["radius"].default,
                        help="exploration radius of gradient steps (default %(default)s)")
    sample.add_argument("--guide", metavar="DIR", help="noise-aware guide of --guidance regressor (rgdm train-guide)")
    sample.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (models trained with cfg)")
    sample.add_argument("--corrector-snr", type=float, metavar="R",
                        help="Langevin corrector steps after every step at signal-to-noise ratio R (predictor-"
                             "corrector sampling; each costs one network evaluation a sample)")
    sample.add_argument("--corrector-steps", type=int, help="with --corrector-snr: corrector steps after every "
                        "step (default 1)")
    sample.add_argument("--corrector-start", type=int, metavar="T",
                        help="with --corrector-snr: correct only the steps landing at diffusion time <= T (of the "
                             "model's timesteps), where the budget does most (default: every step)")
    sample.add_argument("--out", required=True)
    sample.set_defaults(func=cmd_sample)

    evaluate = commands.add_parser("evaluate", help="metrics of a folder written by rgdm sample, or of the "
                                   "domain's own data (--data) as their reference")
    evaluate.add_argument("dir", nargs="?", help="the --out folder of rgdm sample, or a folder of sample files")
    evaluate.add_argument("--data", metavar="SPLIT", help="measure N rows of the model domain's data split "
                          "(e.g. test) instead of samples: the reference (needs --checkpoint)")
    evaluate.add_argument("-n", type=int, default=1000, help="rows of --data (default 1000)")
    evaluate.add_argument("--checkpoint", help="model the samples came from (default: from sample.json)")
    evaluate.add_argument("--reward", help="domain reward to measure (default: the model's training reward)")
    evaluate.add_argument("--temperature", type=float, help="tau of the exact pay-off distribution")
    evaluate.add_argument("--target", help="the class every sample was aimed at, for files that record none "
                          "(e.g. the PLY files of a class-specific model measured against a conditional one)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", help="write the metrics here")
    evaluate.set_defaults(func=cmd_evaluate)

    add_bench_command(commands)
    guide = commands.add_parser("train-guide", help="a noise-aware regressor of a reward, for classifier guidance "
                                "of a fixed model (rgdm sample --guidance regressor)")
    guide.add_argument("--checkpoint", required=True, help="shipped name or run folder the guide will steer")
    guide.add_argument("--reward", required=True, help="reward whose values on the training data it regresses")
    guide.add_argument("--targets", help="conditional targets, e.g. [0,1,2] or [airplane,chair]: each row is "
                       "scored against each (reward calls: rows x targets)")
    guide.add_argument("--objective", choices=OBJECTIVES, default="mse",
                       help="mse: regress each target's reward; cross-entropy: a classifier over the targets, "
                            "the rewards (class probabilities) as soft labels, guiding with grad log p(c | x_t)")
    guide.add_argument("--rows", type=int, default=2000, help="training rows scored")
    guide.add_argument("--steps", type=int, default=2000)
    guide.add_argument("--batch-size", type=int, default=32)
    guide.add_argument("--lr", type=float, default=1e-3)
    guide.add_argument("--seed", type=int, default=0)
    guide.add_argument("--out", required=True, help="the guide's folder; the fit checkpoints there, and the same "
                       "command continues a stopped fit")
    guide.set_defaults(func=cmd_train_guide)

    demo_command = commands.add_parser("demo", help="the main job on the embedded default: toy ring RGDM")
    demo_command.add_argument("domain", nargs="?", default="toy", choices=list(demo.demos()))
    demo_command.add_argument("--out", default="rgdm-demo", help="parent folder: each demo writes OUT/DOMAIN")
    demo_command.set_defaults(func=cmd_demo)

    checkpoints = commands.add_parser("checkpoints", help="list the shipped checkpoints")
    checkpoints.set_defaults(func=cmd_checkpoints)

    listing = commands.add_parser("list", help="the registered domains with their rewards, algorithms (plugins "
                                  "included) and the shipped checkpoints")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)
    add_domain_commands(commands)
    return parser


def add_domain_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands the domains add (``rgdm.registry.commands``); a plugin's that fails to load is left
    out with a warning, so that the engine's commands still run."""
    for domain in registry.commands.names():
        try:
            registry.commands.get(domain)(commands)
        except RegistryError as error:
            log.warning("the commands of domain %r are left out: %s", domain, error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
        if leave_process_group():
            # Every file is written and the group is closed. Skip interpreter teardown, where gloo's
            # worker threads intermittently abort the process ("terminate called without an active
            # exception"; see pytorch/pytorch#179291), which would fail a finished run.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    except TrainingInterrupted as stop:
        print(f"rgdm: {stop}", file=sys.stderr)
        return 130
    except (UsageError, ConfigError, CheckpointError, RewardPluginError, BudgetExhausted, ValueError) as error:
        print(f"rgdm: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
