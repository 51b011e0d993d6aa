"""The condition input every denoiser shares: targets ``0..K-1`` and a null token for "no target"."""

from __future__ import annotations

import torch
from torch import nn


class Conditioning(nn.Embedding):
    """An embedding of ``num_targets`` targets plus the null token (index ``num_targets``), which stands for
    "no target" (``cond=None``): one network serves unconditional and targeted sampling, and classifier-free
    guidance mixes the two.

    A subclass of ``nn.Embedding``, so a network's weights keep the name ``target.weight``. The engine
    finds it with ``conditioning_of(net)``, never by attribute name.
    """

    def __init__(self, num_targets: int, features: int) -> None:
        super().__init__(num_targets + 1, features)

    @property
    def null_token(self) -> int:
        return self.num_embeddings - 1

    def forward(self, cond: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """Embeddings of ``cond`` ``(rows,)``, or of the null token for ``rows`` rows when ``cond`` is None."""
        if cond is None:
            if rows is None:
                raise ValueError("an unconditional call needs the number of rows")
            cond = torch.full((rows,), self.null_token, device=self.weight.device, dtype=torch.long)
        return super().forward(cond.long())

    def tie_to_null(self) -> None:
        """Copy the null token's embedding onto every target: a network never trained with targets then
        predicts its unconditional noise for any of them."""
        with torch.no_grad():
            self.weight[:-1] = self.weight[-1]


def conditioning_of(net: nn.Module) -> Conditioning | None:
    """The network's conditioning module, or None for a network without one."""
    found = [module for module in net.modules() if isinstance(module, Conditioning)]
    if len(found) > 1:
        raise ValueError(f"{type(net).__name__} has {len(found)} conditioning modules; a denoiser has one")
    return found[0] if found else None
