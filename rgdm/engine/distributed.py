"""Data-parallel training through ``torchrun`` (DDP; gloo on CPU, NCCL on GPU).

Global-batch semantics: ``train.batch_size`` is the batch of one optimizer step across all
processes. Every process uses the same seed, so all draw the same batch and the same random numbers;
each computes its share of the rows (``rgdm.batch.Shard``) and DDP averages the gradients, which
equals single-process training on the whole batch up to floating-point summation order. Rewards
are spent once: each process scores its own rows. Rank 0 alone writes checkpoints, logs and the
final model.

    torchrun --nproc_per_node 2 -m rgdm.cli train --config toy-ring-pretrain --out runs/ddp
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from rgdm.batch import Shard


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
