"""``rgdm bench``: the benchmark suites, each writing JSON with its Markdown tables (and plots) beside it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rgdm.engine.config import UsageError


def add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rgdm bench SUITE`` to the command line."""
    bench = commands.add_parser("bench", help="benchmarks with JSON output")
    bench.add_argument("suite", choices=["toy", "molecules", "properties", "perf", "profile", "curve", "steps",
                                          "precision"],
                       help="toy: every method on the toy tasks; molecules: every method on a molecule reward at "
                            "equal reward calls; properties: property targets by EDM's protocol, RGDM against "
                            "CFG and classifier guidance; perf: speed and memory of sampling, training steps "
                            "and rewards; profile: torch.profiler operator tables of the step-wise and guided paths; "
                            "curve: quality of every checkpoint of a run (--run) against training hours; steps: "
                            "quality of a model (--checkpoint) against sampling steps; precision: fp32 against bf16 "
                            "autocast on a run's (--run) own batches, gradients and step time")
    bench.add_argument("--json", required=True)
    bench.add_argument("--quick", action="store_true",
                       help="smaller budgets (toy: one seed, every method, < 10 min; perf: a few minutes)")
    bench.add_argument("--seeds", type=int, help="seeds per method (default 3, or 1 with --quick)")
    bench.add_argument("--seed", type=int, help="molecules: run this seed alone (instead of --seeds), so that "
                       "processes may share a work folder, each with its own seed")
    bench.add_argument("--methods", help="comma-separated subset, e.g. pretrained,rgdm-data")
    bench.add_argument("--jobs", type=int, default=1, help="2: run the two tasks side by side, one thread each")
    bench.add_argument("--domains", help="perf: comma-separated subset of toy,molecules,shapes")
    bench.add_argument("--device", default="cpu", help="perf: cpu or cuda[:N]")
    bench.add_argument("--bf16", action="store_true", help="perf: bf16 autocast of the networks; properties: the "
                       "fine-tunes train in bf16 (train.precision)")
    bench.add_argument("--compile", action="store_true",
                       help="perf: torch.compile the networks (CUDA only); precision: add compiled bf16 "
                       "(train.compile) to the modes; properties: the fine-tunes train compiled (train.compile)")
    bench.add_argument("--run", help="curve, precision: the training run folder; curve: or a model's stages, "
                       "RUN:STEP,RUN:STEP,RUN (each run started from the one before at its STEP)")
    bench.add_argument("--batches", type=int, default=8, help="precision: batches compared, and steps timed per "
                       "mode")
    bench.add_argument("--every", type=int, default=1, metavar="STEPS",
                       help="curve: sample only checkpoints at multiples of this step (and the last one)")
    bench.add_argument("--checkpoint", help="steps, molecules, properties: shipped name or model folder (default "
                       "molecules: qm9-noh-pretrained; properties: qm9-pretrained)")
    bench.add_argument("--properties", help="properties: comma-separated subset of mu,alpha,Cv,homo,lumo,gap")
    bench.add_argument("--reward", help="molecules: the reward (default qed; or xtb-strain, a physics reward); "
                       "curve, steps: also report this reward's mean (default: none)")
    bench.add_argument("--temperature", type=float, help="molecules, properties: tau of the pay-off (default 0.02; "
                       "properties: 0.05)")
    bench.add_argument("--floor", type=float, help="molecules: reward of invalid molecules (default 0; below the "
                       "reward's range for xtb-strain, e.g. -1)")
    bench.add_argument("--no-posebusters", action="store_true", help="molecules: skip PoseBusters (slow)")
    bench.add_argument("--reward-calls", type=int, help="molecules: each method's reward-call budget instead of "
                       "12,288 (128 with --quick), for an expensive reward such as xtb-strain")
    bench.add_argument("--cfg-classes", type=int, help="properties: the CFG peer pairs each target with the top "
                       "1/K of its labelled rows (default: the model's classes, 8; the number of targets, 16, pairs "
                       "each row with about one target, its nearest); a work folder is bound to it")
    bench.add_argument("--condition-lr-scale", type=float, default=1.0, help="properties: every fine-tune's "
                       "conditioning path (target embeddings, value path) trains at this multiple of the rate; a work "
                       "folder is bound to it")
    bench.add_argument("--curve-points", type=int, default=0, help="properties: also measure each fine-tune this "
                       "many times along the way (MAE against steps, on the final measure's samples)")
    bench.add_argument("--train-steps", type=int, help="properties: fine-tune and guide steps of every trained method "
                       "instead of 3,000 (20 with --quick); a work folder is bound to its steps")
    bench.add_argument("--work-dir", type=Path, help="molecules, properties: keep every run here; the same command "
                       "again continues a stopped benchmark: finished runs are read back, a stopped fine-tune resumes "
                       "from its newest checkpoint (default: a temporary folder)")
    bench.add_argument("-n", type=int, default=200, help="curve, steps: samples per point")
    bench.add_argument("--sampling-steps", type=lambda text: [int(v) for v in text.split(",")], default=[100],
                       help="curve: sampling steps (default 100); steps: comma-separated counts, e.g. 25,50,100")
    bench.add_argument("--corrector-snr", type=float, metavar="R", help="steps: each step followed by Langevin "
                       "corrector steps at signal-to-noise ratio R (as rgdm sample --corrector-snr); molecules: so "
                       "are the steps of the own-sample buffers (rgdm-model, rwr), while every measure samples "
                       "plainly; a work folder is bound to it")
    bench.add_argument("--corrector-steps", type=int, default=1, help="steps, molecules: corrector steps after "
                       "every step (with --corrector-snr; default %(default)s)")
    bench.add_argument("--corrector-start", type=int, metavar="T", help="steps, molecules: correct only the steps "
                       "landing at diffusion time <= T (as rgdm sample --corrector-start)")
    bench.add_argument("--anchor", type=float, help="molecules: rgdm-model's KL anchor weight on unweighted data "
                       "rows instead of 0.5; a work folder is bound to it")
    bench.add_argument("--buffer-steps", type=int, help="molecules: sampler steps of the own-sample buffers "
                       "(rgdm-model, rwr) instead of 100 (20 with --quick); a work folder is bound to them")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    if args.suite == "perf":
        cmd_bench_perf(args)
        return
    if args.suite == "profile":
        cmd_bench_profile(args)
        return
    if args.suite == "precision":
        cmd_bench_precision(args)
        return
    if args.suite in ("curve", "steps"):
        cmd_bench_curves(args)
        return
    if args.suite == "molecules":
        cmd_bench_molecules(args)
        return
    if args.suite == "properties":
        cmd_bench_properties(args)
        return
    from rgdm.benchmarks.toy import markdown_table, plot_curves, run_toy_benchmark

    methods = args.methods.split(",") if args.methods else None
    result = run_toy_benchmark(quick=args.quick, seeds=args.seeds, progress=not args.quiet, methods=methods,
                               jobs=args.jobs)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    picture = plot_curves(result, path.with_suffix(".png"))
    print(markdown_table(result) + "\n\n" + markdown_table(result["rare_mode"]))
    print(f"results in {path}, reward-against-calls plot in {picture}")


def cmd_bench_curves(args: argparse.Namespace) -> None:
    from rgdm.benchmarks.curves import (
        chained_curve,
        learning_curve,
        markdown_table,
        parse_stages,
        plot_curve,
        read_previous,
        steps_curve,
    )
    from rgdm.diffusion import LangevinCorrector

    path = Path(args.json)
    if args.suite == "curve":
        if args.run is None:
            raise UsageError("bench curve needs --run RUN (a training run folder with checkpoints)")
        stages = parse_stages(args.run)
        if len(stages) == 1 and stages[0][1] is None:
            result = learning_curve(stages[0][0], args.n, args.sampling_steps[0], previous=read_previous(path),
                                    progress=not args.quiet, every=args.every, reward=args.reward)
        else:
            result = chained_curve(stages, args.n, args.sampling_steps[0], previous=read_previous(path),
                                   progress=not args.quiet, every=args.every, reward=args.reward)
    else:
        if args.checkpoint is None:
            raise UsageError("bench steps needs --checkpoint NAME|DIR")
        settings = corrector_settings(args)
        corrector = None if settings is None else LangevinCorrector(**settings)
        result = steps_curve(args.checkpoint, args.n, args.sampling_steps, seeds=args.seeds or 3,
                             progress=not args.quiet, reward=args.reward, corrector=corrector)
    write_report(path, result, markdown_table(result))
    print(f"plot in {plot_curve(result, path.with_suffix('.png'))}")


def corrector_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The corrector that ``--corrector-snr``, ``--corrector-steps`` and ``--corrector-start`` ask for (None:
    none)."""
    if args.corrector_start is not None and args.corrector_snr is None:
        raise UsageError("--corrector-start needs --corrector-snr R (the corrector it starts)")
    if args.corrector_snr is None:
        return None
    return {"snr": args.corrector_snr, "steps": args.corrector_steps, "start": args.corrector_start}


def cmd_bench_precision(args: argparse.Namespace) -> None:
    from rgdm.benchmarks.precision import compare_precisions, markdown_table

    if args.run is None:
        raise UsageError("bench precision needs --run RUN (a training run folder with checkpoints)")
    if args.batches < 2:
        raise UsageError("bench precision needs --batches 2 or more (consecutive batches are compared)")
    result = compare_precisions(Path(args.run), args.batches, progress=not args.quiet, compile=args.compile)
    write_report(Path(args.json), result, markdown_table(result))


def cmd_bench_molecules(args: argparse.Namespace) -> None:
    from rgdm.algorithms.rgdm_model import BufferCorrector
    from rgdm.benchmarks.molecules import (
        MODEL_ANCHOR,
        MoleculeTask,
        markdown_table,
        plot_curves,
        run_molecule_benchmark,
    )

    settings = corrector_settings(args)
    given = {"checkpoint": args.checkpoint, "reward": args.reward, "temperature": args.temperature,
             "floor": args.floor}
    result = run_molecule_benchmark(MoleculeTask(**{k: v for k, v in given.items() if v is not None}),
                                    quick=args.quick, seeds=args.seeds, posebusters=not args.no_posebusters,
                                    methods=args.methods.split(",") if args.methods else None, progress=not args.quiet,
                                    work_dir=args.work_dir, reward_calls=args.reward_calls,
                                    buffer_steps=args.buffer_steps,
                                    anchor=MODEL_ANCHOR if args.anchor is None else args.anchor,
                                    buffer_corrector=None if settings is None else BufferCorrector(**settings),
                                    only_seed=args.seed)
    path = Path(args.json)
    write_report(path, result, markdown_table(result))
    print(f"curves in {plot_curves(result, path.with_suffix('.png'))}")


def cmd_bench_properties(args: argparse.Namespace) -> None:
    from rgdm.benchmarks.properties import (
        FinetuneExecution,
        PropertyTask,
        markdown_table,
        plot_curves,
        plot_errors,
        run_property_benchmark,
    )

    given = {"checkpoint": args.checkpoint, "temperature": args.temperature}
    result = run_property_benchmark(PropertyTask(**{k: v for k, v in given.items() if v is not None}),
                                    quick=args.quick, seeds=args.seeds,
                                    properties=args.properties.split(",") if args.properties else None,
                                    methods=args.methods.split(",") if args.methods else None,
                                    progress=not args.quiet, work_dir=args.work_dir, train_steps=args.train_steps,
                                    execution=FinetuneExecution("bf16" if args.bf16 else "fp32", args.compile),
                                    curve_points=args.curve_points, cfg_classes=args.cfg_classes,
                                    condition_lr_scale=args.condition_lr_scale)
    path = Path(args.json)
    write_report(path, result, markdown_table(result))
    print(f"errors per property in {plot_errors(result, path.with_suffix('.png'))}")
    curves = plot_curves(result, path.with_name(f"{path.stem}-steps.png"))
    if curves is not None:
        print(f"errors against fine-tune steps in {curves}")


def cmd_bench_perf(args: argparse.Namespace) -> None:
    from rgdm.benchmarks.perf import markdown_table, run_perf_benchmark

    domains = args.domains.split(",") if args.domains else None
    result = run_perf_benchmark(quick=args.quick, domains=domains, device=args.device, bf16=args.bf16,
                                compile_network=args.compile)
    write_report(Path(args.json), result, markdown_table(result))


def cmd_bench_profile(args: argparse.Namespace) -> None:
    from rgdm.benchmarks.perf import operator_profile, profile_table

    result = operator_profile(args.domains.split(",") if args.domains else None)
    write_report(Path(args.json), result, profile_table(result))


def write_report(path: Path, result: dict[str, Any], table: str) -> None:
    """A benchmark's JSON at ``path`` and its Markdown tables beside it (``.md``), the tables also printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"results in {path}, tables in {path.with_suffix('.md')}")
