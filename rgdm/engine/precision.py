"""Mixed precision for training: the network runs under bf16 autocast and hands float32 back.

Only the network's matrix products drop to bf16; the diffusion maths, the loss, the weights, the
optimizer and the EMA stay float32. On CPUs with bf16 instructions (AVX512-BF16, AMX) and on CUDA
the products run several times faster; ``rgdm bench precision`` measures the speed and how far the
gradients move from float32's on a run's own batches.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16"]


class AutocastNetwork(nn.Module):
    """``net`` called under bf16 autocast; its output (a tensor or a ``TensorDict``) comes back float32."""

    def __init__(self, net: nn.Module, device_type: str) -> None:
        super().__init__()
        self.net = net
        self.device_type = device_type

    def forward(self, x: Any, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            eps = self.net(x, t, cond, mask)
        return eps.to(torch.float32)


def with_precision(net: nn.Module, precision: Precision, device: str | torch.device) -> nn.Module:
    """``net`` as is for ``fp32``, wrapped in ``AutocastNetwork`` for ``bf16``."""
    return net if precision == "fp32" else AutocastNetwork(net, torch.device(device).type)
