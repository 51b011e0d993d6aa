"""Self-conditioning within one step: the network sees its own first estimate of ``x_0`` (docs/design.md §1.7).

Chen et al.'s self-conditioning ("Analog Bits", 2022; JODO uses it) feeds a diffusion network the ``x_0``
it estimated at the previous step. That makes the reverse transition depend on more than ``x_t``, and
RGDM's step-wise exploration and DDPO need ``p(x_{t-1} | x_t)`` to be a Gaussian of ``x_t`` alone. So
here both passes run at the same ``(x_t, t)``: the first without a hint, the second with the first's
Tweedie estimate as the hint. ``eps_theta(x_t, t)`` is the second pass, a function of ``x_t`` alone,
and the transition stays a Gaussian with a known mean and variance, at two network evaluations.

A self-conditioned network says so with ``self_conditioned = True`` and takes keywords ``hint`` (an
``x_0`` estimate shaped as ``x``) and ``hinted`` (the ``(B,)`` rows that have one; the others get no hint).
Its hint inputs are ``HintProjection`` layers: zero at initialisation and without bias, so the network
answers exactly as one without them until training moves them, and a model trained without
self-conditioning can be its parent (``parent_weights``).
"""

from __future__ import annotations

import torch
from torch import nn


class HintProjection(nn.Linear):
    """A bias-free linear map of hint features, all zero at initialisation (see the module docstring).
    It draws no random numbers, so every other weight of a network draws as it would without it."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


def is_self_conditioned(net: nn.Module) -> bool:
    """Whether ``net``, or the network inside a wrapper (DDP, ``torch.compile``, autocast), is self-conditioned."""
    return any(getattr(module, "self_conditioned", False) for module in net.modules())


def hinted_for_training(t: torch.Tensor) -> torch.Tensor:
    """The rows of a training batch that get the hint: those of even ``t``.

    Half the rows train the first pass (no hint), which the second pass depends on; the other half the
    second. The parity of the drawn time is a fair coin that the batch's own draw decides, so the
    choice is shared by every process of a distributed step and replayed by an exact resume, without
    another random stream; neighbouring times have almost the same noise level, so no noise level
    is left out of either half.
    """
    return t % 2 == 0
