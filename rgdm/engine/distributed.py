"""Data-parallel training through ``torchrun`` (DDP; gloo on CPU, NCCL on GPU).

Global-batch semantics: ``train.batch_size`` is the batch of one optimizer step across all
processes. Every process uses the same seed, so all draw the same minibatch and the same random
numbers (``Algorithm.draw_rows``); each computes the losses of its share of the rows
(``rgdm.batch.Shard``) and DDP averages the gradients, which equals single-process training on the
whole minibatch up to floating-point summation order (``step_loss``). Rewards are spent once: each
process scores its own rows, and the budget is charged with the whole minibatch's calls
(``DataParallelContext``). Rank 0 alone writes checkpoints, logs and the final model. Algorithms know
none of this.

    torchrun --nproc_per_node 2 -m rgdm.cli train --config toy-ring-pretrain --out runs/ddp
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from rgdm.algorithms import Algorithm, TrainingContext
from rgdm.algorithms.base import RowPicker
from rgdm.batch import Shard
from rgdm.rewards import RewardCounter


@dataclass
class DataParallelContext(TrainingContext):
    """The training context of process ``shard.rank`` of ``shard.world``.

    A whole batch's rewards (``score``, ``score_targets``) are scored once over all processes, each its
    share of the rows, and gathered. ``ledger`` is the reward budget over all processes under data
    parallelism: charged with a whole batch's calls before its rows are shared, identically on every
    process, so all stop at the same step. In one process it is ``None``, and the scorer's own counter
    holds the budget.
    """

    shard: Shard = field(default_factory=Shard)
    ledger: RewardCounter | None = None

    def charge(self, calls: int) -> None:
        """Count ``calls`` reward calls of all processes against the global budget."""
        if self.ledger is not None:
            self.ledger.charge(calls)

    def score_rows(self, calls: int, score: Callable[[RowPicker], torch.Tensor]) -> torch.Tensor:
        self.charge(calls)
        return torch.cat(gather(score(self.shard).cpu(), self.shard), dim=-1)


def step_loss(algorithm: Algorithm, ctx: DataParallelContext, step: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Training step ``step``'s loss on this process, and its statistics.

    The algorithm draws the minibatch alike on every process; its reward calls are charged before any is
    made; this process computes the losses of its rows; and ``world * sum / rows`` (``Shard.mean``) makes
    DDP's average of the gradients the one-process gradient of the mean loss over the whole minibatch.
    """
    rows = algorithm.draw_rows(ctx, step, generator)
    ctx.charge(rows.reward_calls)
    losses, stats = algorithm.row_losses(ctx, rows.select(ctx.shard.rows(len(rows))))
    return ctx.shard.mean(losses, len(rows)), stats


def join_process_group(device: str) -> tuple[Shard, str]:
    """This process's shard and device: joins torchrun's group when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard(), device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size()), device


def gather(value: Any, shard: Shard) -> list[Any]:
    """Every process's ``value``, in rank order."""
    if shard.world == 1:
        return [value]
    values: list[Any] = [None] * shard.world
    dist.all_gather_object(values, value)
    return values


def mean_over_processes(values: dict[str, float], shard: Shard) -> dict[str, float]:
    """Each value's mean over the processes that report it: a step's loss and statistics, for the log."""
    reported = gather(values, shard)
    names = dict.fromkeys(name for part in reported for name in part)
    return {name: statistics.fmean(part[name] for part in reported if name in part) for name in names}


def any_process(flag: bool, shard: Shard) -> bool:
    """True on every process if it is true on any (a stop request, say)."""
    if shard.world == 1:
        return flag
    tensor = torch.tensor([int(flag)])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(shard: Shard) -> None:
    if shard.world > 1:
        dist.barrier()


def leave_process_group() -> bool:
    """Wait for every process, then close the group: no process exits while another still talks.

    Returns whether there was a group to leave.
    """
    if not dist.is_initialized():
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True
