"""How the trained network runs: bf16 autocast (it hands float32 back), and ``torch.compile``.

Only the network's matrix products drop to bf16; the diffusion maths, the loss, the weights, the
optimizer and the EMA stay float32. On CPUs with bf16 instructions (AVX512-BF16, AMX) and on CUDA
the products run several times faster; ``rgdm bench precision`` measures the speed and how far the
gradients move from float32's on a run's own batches.

``torch.compile`` fuses the many small element-wise operations of a graph network's step (the
products, sums and gathers over atom pairs) into a few kernels; with ``dynamic=True`` one compiled
graph serves every batch, whatever its atom and pair counts.
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
                mask: torch.Tensor | None = None, **hint: Any) -> Any:
        """``hint``: a self-conditioned network's ``hint`` and ``hinted`` keywords, passed on."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            eps = self.net(x, t, cond, mask, **hint)
        return eps.to(torch.float32)


def with_precision(net: nn.Module, precision: Precision, device: str | torch.device) -> nn.Module:
    """``net`` as is for ``fp32``, wrapped in ``AutocastNetwork`` for ``bf16``."""
    return net if precision == "fp32" else AutocastNetwork(net, torch.device(device).type)


def for_training(net: nn.Module, precision: Precision, device: str | torch.device, compile: bool = False
                 ) -> nn.Module:
    """``net`` as a training step calls it: compiled first if ``compile``, then in ``precision``."""
    if compile:
        net = torch.compile(net, dynamic=True)
    return with_precision(net, precision, device)
