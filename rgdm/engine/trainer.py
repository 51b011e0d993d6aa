"""The training loop: EMA, periodic atomic checkpoints, exact resume, logs and a progress bar.

All randomness of a run flows from one ``torch.Generator`` seeded by ``train.seed``; its state is
checkpointed with the weights, the optimizer, the EMA, the algorithm's buffers and the reward
counter, so a resumed run on CPU repeats the uninterrupted one bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from rgdm.batch import Batch, flatten_parts, unflatten_parts
from rgdm.diffusion import EpsModel, SamplingInterrupted
from rgdm.diffusion.conditioning import conditioning_of
from rgdm.domains import build_domain
from rgdm.domains.base import SupportsTargets
from rgdm.engine.builder import (
    LoadedModel,
    load_trained,
    make_algorithm,
    make_diffusion,
    make_scorer,
    network_holding,
    tie_targets_to_null,
    trained_with_conditions,
)
from rgdm.engine.checkpoint import load_checkpoint, save_checkpoint, save_model
from rgdm.engine.config import DiffusionConfig, RunConfig, TrainConfig, dump_config, parse_config, read_config_file
from rgdm.engine.distributed import (
    DataParallelContext,
    any_process,
    barrier,
    gather,
    join_process_group,
    mean_over_processes,
    step_loss,
)
from rgdm.engine.logging import RunLogger
from rgdm.engine.precision import for_training
from rgdm.io import CheckpointError, flatten_state, unflatten_state, write_json
from rgdm.rewards import BudgetExhausted, RewardCounter
from rgdm.stopping import StopRequests, TrainingInterrupted

StepCallback = Callable[["Trainer", int], None]
log = logging.getLogger("rgdm.train")


def learning_rate_schedule(optimizer: torch.optim.Optimizer, train: TrainConfig) -> LRScheduler | None:
    """The rate over ``train.steps``: a linear warm-up from ``lr / warmup_steps`` to ``lr``, then a cosine
    decay to 0 over the remaining steps where ``lr_decay`` asks for it (``None``: a constant rate)."""
    phases: list[LRScheduler] = []
    if train.warmup_steps:
        phases.append(LinearLR(optimizer, start_factor=1 / train.warmup_steps, total_iters=train.warmup_steps))
    if train.lr_decay == "cosine":
        phases.append(CosineAnnealingLR(optimizer, T_max=train.steps - train.warmup_steps))
    if len(phases) < 2:
        return phases[0] if phases else None
    return SequentialLR(optimizer, phases, milestones=[train.warmup_steps])


def parameter_groups(net: nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: every parameter at ``lr``, those of the conditioning module at ``lr *
    condition_lr_scale`` (one group when the scale is 1 or the network has no conditioning)."""
    conditioning = conditioning_of(net)
    if conditioning is None or train.condition_lr_scale == 1:
        return [{"params": list(net.parameters())}]
    own = {id(parameter) for parameter in conditioning.parameters()}
    return [{"params": [parameter for parameter in net.parameters() if id(parameter) not in own]},
            {"params": list(conditioning.parameters()), "lr": train.lr * train.condition_lr_scale}]


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value for key, value in state.items()}


def _unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {key[start:]: value for key, value in tensors.items() if key.startswith(prefix + ".")}


class Trainer:
    """Trains one run folder from a ``RunConfig``; ``config.init`` names the model to fine-tune, whose
    network options the config's own ``network`` options go on top of (``self_condition: true``)."""

    def __init__(self, config: RunConfig, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.shard, self.device = join_process_group(config.train.device)
        self.main = self.shard.rank == 0
        parent: LoadedModel | None = None
        if config.init is not None and not (self.run_dir / "config.yaml").exists():
            parent = load_trained(config.init, self.device, tie_untrained_targets=False)
            config = config.model_copy(update={"domain": self._fine_tuning_domain(parent.meta["domain"], config),
                                               "network": parent.meta["network"] | config.network,
                                               "diffusion": DiffusionConfig.model_validate(
                                                   parent.meta["diffusion"])})
        self.config = config
        self.domain = build_domain(config.domain)
        self.diffusion = make_diffusion(config.diffusion, self.domain)
        if parent is not None:
            self.net = network_holding(self.domain, config.network, parent)
        else:
            with torch.random.fork_rng():
                torch.manual_seed(config.train.seed)
                self.net = self.domain.build_network(config.network)
        self.net = self.net.to(self.device).train()
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(config.train.ema_decay),
                                 use_buffers=True)
        #: Kept in checkpoints: a resumed run does not reload its parent.
        self.parent_conditional = parent is not None and trained_with_conditions(parent.meta)
        reference = None
        if config.init is not None:
            reference_net = copy.deepcopy(self.net).eval().requires_grad_(False)
            if parent is not None and not self.parent_conditional:
                tie_targets_to_null(reference_net)
            reference = EpsModel(reference_net, self.diffusion)
        distributed = self.shard.world > 1
        self.counter = RewardCounter(limit=None if distributed else config.reward.budget)
        ledger = RewardCounter(limit=config.reward.budget) if distributed else None
        self.algorithm = make_algorithm(config.algorithm, config.train.steps, self.domain)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.net, config.train), lr=config.train.lr,
                                           weight_decay=0.0)
        self.scheduler = learning_rate_schedule(self.optimizer, config.train)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        data = self.domain.dataset("train").to(self.device)
        trained = self.net if self.shard.world == 1 else DistributedDataParallel(self.net)
        self.context = DataParallelContext(
            model=EpsModel(for_training(trained, config.train.precision, self.device, config.train.compile),
                           self.diffusion),
            ema=EpsModel(self.ema.module, self.diffusion),
            reference=reference,
            data=data,
            scorer=make_scorer(config.reward, self.domain, self.counter),
            batch_size=config.train.batch_size,
            prior=self._prior_on_device,
            refit_prior=self.domain.refit_prior,
            targets=self._targets(config.algorithm.targets),
            shard=self.shard,
            ledger=ledger,
        )
        self.step = 0
        #: Seconds spent in ``fit`` up to the newest checkpoint, summed over resumes.
        self.wall_s = 0.0
        #: This process's network evaluations before the loaded checkpoint's run was resumed.
        self._evaluations_before = 0
        self._clock: tuple[float, float] | None = None  # (perf_counter at fit start, wall_s then)
        self._stops = StopRequests()
        self.context.interrupt = lambda: any_process(self._stops.signal is not None, self.shard)

    def _targets(self, targets: list[int] | list[float] | None) -> list[int] | list[float] | None:
        """The run's targets in the domain's kind: a value domain's ``[70, 75]`` are values, not classes."""
        if targets is not None and isinstance(self.domain, SupportsTargets) and self.domain.target_kind == "value":
            return [float(target) for target in targets]
        return targets

    def _prior_on_device(self, n: int, generator: torch.Generator, cond: torch.Tensor | None) -> Batch:
        """The domain's prior batch (atom counts, targets) on the training device."""
        return self.domain.prior_batch(n, generator, cond).to(self.device)

    @staticmethod
    def _fine_tuning_domain(parent: dict[str, Any], config: RunConfig) -> dict[str, Any]:
        """The parent's domain options, with those the fine-tuning config sets explicitly on top."""
        if "domain" not in config.model_fields_set:
            return parent
        if config.domain.get("name", parent["name"]) != parent["name"]:
            raise ValueError(f"domain.name {config.domain['name']!r} differs from the parent model's "
                             f"{parent['name']!r}; a fine-tuned model keeps its parent's domain")
        return parent | config.domain

    @classmethod
    def resume(cls, run_dir: str | Path) -> Trainer:
        """Rebuild a run from its ``config.yaml`` and load its newest intact checkpoint.

        The domain comes from the checkpoint where it holds one: what training fitted into it (a
        pay-off fine-tune's atom counts) is state like the weights.
        """
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir} has no config.yaml: it is not an rgdm run folder")
        tensors, meta = load_checkpoint(run_dir)
        config = parse_config(read_config_file(run_dir / "config.yaml"))  # its recipe included
        if "domain" in meta:
            config = config.model_copy(update={"domain": meta["domain"]})
        trainer = cls(config, run_dir)
        trainer._load(tensors, meta)
        return trainer

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        tensors |= _prefixed("model", self.net.state_dict())
        tensors |= _prefixed("ema", self.ema.state_dict())
        if self.context.reference is not None:
            tensors |= _prefixed("reference", self.context.reference.net.state_dict())
        tensors |= _prefixed("algorithm", flatten_parts(self.algorithm.state_tensors()))
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        optimizer_layout = flatten_state("optimizer", self.optimizer.state_dict(), tensors)
        scheduler = None if self.scheduler is None else self.scheduler.state_dict()
        counters = gather({"calls": self.counter.calls, "invalid": self.counter.invalid,
                           "failures": dict(self.counter.failures), "evaluations": self._own_evaluations()},
                          self.shard)
        meta = {"optimizer": optimizer_layout, "scheduler": scheduler, "counters": counters, "wall_s": self.wall_s,
                "domain": self.domain.config(), "parent_conditional": self.parent_conditional}
        return tensors, meta

    def _load(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.net.load_state_dict(_unprefixed("model", tensors))
        self.ema.load_state_dict(_unprefixed("ema", tensors))
        if self.context.reference is not None:
            self.context.reference.net.load_state_dict(_unprefixed("reference", tensors))
        self.algorithm.load_state_tensors(unflatten_parts(_unprefixed("algorithm", tensors)))
        self.generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        self.optimizer.load_state_dict(unflatten_state(meta["optimizer"], tensors))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        counters = meta["counters"]  # one per process; a run resumed on fewer keeps rank 0's
        counter = counters[self.shard.rank] if self.shard.rank < len(counters) else {
            "calls": 0, "invalid": 0, "failures": {}}
        self.counter.calls, self.counter.invalid = counter["calls"], counter["invalid"]
        self._evaluations_before = counter.get("evaluations", 0)
        self.counter.failures.clear()
        self.counter.failures.update(counter["failures"])
        if self.context.ledger is not None:
            self.context.ledger.calls = sum(c["calls"] for c in counters)
        self.parent_conditional = bool(meta.get("parent_conditional", False))
        self.wall_s = float(meta.get("wall_s", 0.0))
        self.step = int(meta["step"])

    def save_checkpoint(self) -> None:
        """Every process takes part (the reward counters are gathered); rank 0 writes."""
        if self._clock is not None:
            started, before = self._clock
            self.wall_s = before + time.perf_counter() - started
        tensors, meta = self._state()
        if self.main:
            save_checkpoint(self.run_dir, self.step, tensors, meta, keep=self.config.train.keep_checkpoints)

    def _evaluations_since_start(self) -> int:
        context = self.context
        models = {id(m): m for m in (context.model, context.ema, context.reference) if m is not None}
        return sum(model.evaluations for model in models.values())

    def _own_evaluations(self) -> int:
        """This process's network evaluations (per sample row) over the whole run, resumes included."""
        return self._evaluations_before + self._evaluations_since_start()

    def network_evaluations(self) -> int:
        """Network evaluations of every process over the whole run: the compute unit of comparisons."""
        return sum(gather(self._own_evaluations(), self.shard))

    def reward_counts(self) -> dict[str, int]:
        """Reward calls and failures summed over every process."""
        total: Counter[str] = Counter()
        for counts in gather(self.counter.as_dict(), self.shard):
            total.update(counts)
        return dict(total)

    def model_meta(self, reward_calls: int, network_evaluations: int) -> dict[str, Any]:
        config = self.config
        return {
            "domain": self.domain.config(),
            "network": config.network,
            "diffusion": config.diffusion.model_dump(),
            "targets": config.algorithm.targets,
            "parent": config.init,
            "recipe": config.recipe,
            "training": {"algorithm": config.algorithm.name, "steps": self.step, "seed": config.train.seed,
                         "reward": config.reward.name,
                         "temperature": config.algorithm.temperature if config.reward.name else None,
                         "reward_calls": reward_calls, "network_evaluations": network_evaluations,
                         "wall_s": round(self.wall_s, 1)},
            "guidance_condition": getattr(self.algorithm, "top_class", None),
            "conditional": self._conditional(),
        }

    def _conditional(self) -> bool:
        """Whether the trained network has learnt conditions: here (targets, CFG classes) or in its parent."""
        here = self.config.algorithm.targets is not None or getattr(self.algorithm, "top_class", None) is not None
        return here or self.parent_conditional

    def _stop_and_save(self) -> None:
        """Checkpoint the current step after a stop request and raise ``TrainingInterrupted``."""
        self.save_checkpoint()
        command = "train" if self.config.algorithm.name == "pretrain" else "finetune"
        raise TrainingInterrupted(f"stopped by signal {self._stops.signal} at step {self.step}; checkpoint saved. "
                                  f"Continue with: rgdm {command} --resume {self.run_dir}")

    def fit(self, on_step: StepCallback | None = None, progress: bool = True) -> Path:
        """Train to ``train.steps``; returns the run folder holding ``final.safetensors``."""
        train = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fresh = not (self.run_dir / "checkpoints").exists()
        self._clock = (time.perf_counter(), self.wall_s)
        barrier(self.shard)  # every process has looked before rank 0 writes
        if fresh:
            if self.main:
                (self.run_dir / "config.yaml").write_text(dump_config(self.config))
            self.context.progress = progress and self.main
            self.algorithm.setup(self.context, self.generator)
            self.save_checkpoint()
        logger = RunLogger(self.run_dir, resume_step=None if fresh else self.step) if self.main else None
        with self._stops, contextlib.ExitStack() as cleanup:
            if logger is not None:
                cleanup.callback(logger.close)
            bar = tqdm(total=train.steps, initial=self.step, desc=self.config.algorithm.name,
                       disable=not (progress and self.main), dynamic_ncols=True)
            while self.step < train.steps:
                rng_state = self.generator.get_state()
                try:
                    loss, stats = step_loss(self.algorithm, self.context, self.step, self.generator)
                except BudgetExhausted as spent:
                    log.warning("%s; stopping at step %d and saving the model", spent, self.step)
                    self.save_checkpoint()
                    break
                except SamplingInterrupted:
                    self.generator.set_state(rng_state)  # the step never happened: resume redraws it exactly
                    self._stop_and_save()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if train.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), train.grad_clip)
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.ema.update_parameters(self.net)
                self.step += 1
                bar.update(1)
                if self.step % train.log_every == 0 or self.step == train.steps:
                    counts = self.reward_counts()
                    logged = mean_over_processes({"loss": loss.item(), **stats}, self.shard)  # as DDP averages
                    if logger is not None:
                        logger.log(self.step, {**logged, **counts})
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", reward_calls=counts["reward_calls"])
                if on_step is not None:
                    on_step(self, self.step)
                if self.step % train.checkpoint_every == 0 or self.step == train.steps:
                    self.save_checkpoint()
                if self.context.interrupt():
                    self._stop_and_save()
            bar.close()
        self.export(self.run_dir)
        return self.run_dir

    def export(self, folder: Path) -> Path:
        """The EMA weights at the current step as a model folder (``final.safetensors``, ``model.json``,
        ``reward_counter.json``): what a finished run writes, and what ``rgdm export`` writes from a
        run's newest checkpoint.

        Every process calls it (the reward counts are gathered once); rank 0 writes.
        """
        counts = self.reward_counts()
        evaluations = self.network_evaluations()
        if self.main:
            save_model(folder, self.ema.module.state_dict(), self.model_meta(counts["reward_calls"], evaluations))
            write_json(folder / "reward_counter.json", counts)
        return folder / "final.safetensors"
