"""The condition input every denoiser shares: a class (``0..K-1``, the null token ``K`` for "no target"),
or a value (a float, NaN for "no target")."""

from __future__ import annotations

import torch
from torch import nn

from rgdm.diffusion.self_conditioning import HintProjection

#: Frequencies of the value path's Fourier features of a standardised value (about -3..3): from a quarter
#: turn over the whole range to a period of about 0.8 standard deviations.
VALUE_FREQUENCIES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class Conditioning(nn.Embedding):
    """An embedding of ``num_targets`` classes plus the null token (index ``num_targets``), which stands for
    "no target" (``cond=None``): one network serves unconditional and targeted sampling, and classifier-free
    guidance mixes the two.

    With ``enable_values`` the same module also takes a *value* (a float condition, such as a property
    target in its own units): the null embedding plus a linear map of Fourier features of the
    standardised value. NaN is "no target". The type of ``cond`` picks the input: integers are classes,
    floats are values.

    A subclass of ``nn.Embedding``, so a network's weights keep the name ``target.weight``. The engine
    finds it with ``conditioning_of(net)``, never by attribute name.
    """

    def __init__(self, num_targets: int, features: int) -> None:
        super().__init__(num_targets + 1, features)
        self.value: nn.Linear | None = None

    @property
    def null_token(self) -> int:
        return self.num_embeddings - 1

    def enable_values(self, mean: float, std: float) -> None:
        """Add the value path, standardising values by ``mean`` and ``std``. Its map starts at zero, so the
        network answers any value as it answers the null token until it is trained with values: a
        fine-tune for a property target starts from its unconditional parent exactly."""
        if std <= 0:
            raise ValueError(f"the values' standard deviation must be positive, got {std}")
        features = 1 + 2 * len(VALUE_FREQUENCIES)
        self.value = nn.Linear(features, self.embedding_dim, bias=False, device=self.weight.device,
                               dtype=self.weight.dtype)
        nn.init.zeros_(self.value.weight)
        self.register_buffer("value_scale", torch.tensor([mean, std], dtype=self.weight.dtype,
                                                         device=self.weight.device))

    def forward(self, cond: torch.Tensor | None, rows: int | None = None) -> torch.Tensor:
        """Embeddings of ``cond`` ``(rows,)``, or of the null token for ``rows`` rows when ``cond`` is None."""
        if cond is None:
            if rows is None:
                raise ValueError("an unconditional call needs the number of rows")
            cond = torch.full((rows,), self.null_token, device=self.weight.device, dtype=torch.long)
        if not cond.is_floating_point():
            return super().forward(cond.long())
        if self.value is None:
            raise ValueError("this network takes class targets (integers), not values; a property target "
                             "needs a model whose domain names the property")
        known = ~torch.isnan(cond)
        standard = (torch.nan_to_num(cond).to(self.weight.dtype) - self.value_scale[0]) / self.value_scale[1]
        angles = standard[:, None] * torch.tensor(VALUE_FREQUENCIES, dtype=standard.dtype, device=standard.device)
        features = torch.cat([standard[:, None], angles.sin(), angles.cos()], 1) * known[:, None]
        return self.weight[-1] + self.value(features)

    def tie_to_null(self) -> None:
        """Make every class and value answer as the null token: a network never trained with targets then
        predicts its unconditional noise for any of them."""
        with torch.no_grad():
            self.weight[:-1] = self.weight[-1]
            if self.value is not None:
                self.value.weight.zero_()


def null_condition(cond: torch.Tensor, null_token: int) -> torch.Tensor:
    """"No target" in the kind of ``cond``: the null token for classes, NaN for values."""
    return torch.full_like(cond, float("nan") if cond.is_floating_point() else null_token)


def is_null(cond: torch.Tensor, null_token: int) -> torch.Tensor:
    """Which rows of ``cond`` ask for no target."""
    return torch.isnan(cond) if cond.is_floating_point() else cond == null_token


def parent_weights(net: nn.Module, parent: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The weights of a parent ``state_dict`` that a fine-tune's ``net`` takes, and the keys of ``net`` they
    may lack. Those are its value path, which starts at zero (every value answered as the null token) when
    the parent has none, or had one standardised for another quantity, whose weights mean nothing here;
    and its self-conditioning hint inputs (``HintProjection``), which start at zero, so a parent trained
    without self-conditioning answers as before."""
    optional = {f"{name}.weight" for name, module in net.named_modules() if isinstance(module, HintProjection)}
    for name, module in net.named_modules():
        if isinstance(module, Conditioning) and module.value is not None:
            prefix = f"{name}." if name else ""
            keys = {f"{prefix}value.weight", f"{prefix}value_scale"}
            scale = parent.get(f"{prefix}value_scale")
            if scale is None or not torch.equal(scale.to(module.value_scale), module.value_scale):
                parent = {key: value for key, value in parent.items() if key not in keys}
            optional |= keys
    return parent, optional


def conditioning_of(net: nn.Module) -> Conditioning | None:
    """The network's conditioning module, or None for a network without one."""
    found = [module for module in net.modules() if isinstance(module, Conditioning)]
    if len(found) > 1:
        raise ValueError(f"{type(net).__name__} has {len(found)} conditioning modules; a denoiser has one")
    return found[0] if found else None
