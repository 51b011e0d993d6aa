"""Forward noising, posterior, Tweedie estimate, reverse steps and their Gaussian log-probabilities.

A sample is a tensor with the batch first, or a structure of named tensors (a ``TensorDict`` with
batch size ``[batch]``: a molecule's positions, atom features and bonds), every part diffused by the
same Gaussian process. Samples of varying size (molecules with different atom counts) carry a
``mask`` of shape ``(batch, nodes)``; padded entries stay zero and do not count in norms,
log-probabilities or dimensions. A domain may add a ``project`` hook per part that maps noise and
states onto its sample space (zero centre of mass for molecules); it must be linear and idempotent,
like an orthogonal projection, so that Gaussians stay Gaussians.

Edge parts (``(batch, nodes, nodes, ...)``: bonds) are symmetric with a zero diagonal. Their free
coordinates are the strict upper triangle: noise is drawn there and mirrored, norms and degrees of
freedom count it once, and the projection onto the sample space symmetrises.

``tensordict`` is the structure because its arithmetic, indexing, ``cat``, ``repeat`` and ``clone``
act on every part at once and broadcast a per-sample ``(batch,)`` coefficient over each part, so the
maths below and every algorithm read the same for one tensor and for many.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict

from rgdm.diffusion.schedule import NoiseSchedule

Projection = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
#: One sample batch: a single tensor, or named parts sharing the batch (and node) dimensions.
Sample = torch.Tensor | TensorDict


def identity_projection(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class Part:
    """How one named tensor of a multi-part sample sits on the node mask.

    ``nodes``: shape ``(batch, nodes, ...)``, masked per node. ``edges``: shape
    ``(batch, nodes, nodes, features)``, symmetric, zero on the diagonal, masked per pair of real nodes.
    ``project`` (linear, idempotent) and ``dof_offset`` (the dimensions it removes) as for a single
    tensor: zero centre of mass and 3 for positions.
    """

    kind: Literal["nodes", "edges"] = "nodes"
    project: Projection = identity_projection
    dof_offset: int = 0


def parts_sample(parts: Mapping[str, torch.Tensor], batch_size: Sequence[int]) -> TensorDict:
    """Named parts as one multi-part sample, on the device of its parts (every TensorDict the library makes
    comes from here, so ``x.device`` is never unset)."""
    device = next(iter(parts.values())).device
    return TensorDict(dict(parts), batch_size=list(batch_size), device=device)


def per_row(values: torch.Tensor, like: Sample) -> torch.Tensor:
    """A per-sample vector ``(batch,)`` shaped to broadcast against ``like`` (a TensorDict takes it as is)."""
    return values if isinstance(like, TensorDict) else values.view(-1, *([1] * (like.dim() - 1)))


def repeat_rows(x: Sample, copies: int) -> Sample:
    """``copies`` copies of every row stacked along the batch, copy-major (candidate evaluation)."""
    return x.repeat(copies, *([1] * (x.dim() - 1)))


def sample_gradient(fn: Callable[[Sample], torch.Tensor], x: Sample) -> Sample:
    """The gradient of the scalar ``fn(x)`` with respect to ``x`` (every part of a TensorDict; zero for a
    part ``fn`` does not read)."""
    with torch.enable_grad():
        x = x.detach().clone()
        leaves = list(x.values()) if isinstance(x, TensorDict) else [x]
        for leaf in leaves:
            leaf.requires_grad_(True)
        grads = torch.autograd.grad(fn(x), leaves, allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads, strict=True)]
    if isinstance(x, TensorDict):
        return parts_sample(dict(zip(x.keys(), grads, strict=True)), x.batch_size)
    return grads[0]


def elements_per_row(x: Sample) -> int:
    """Entries of one sample row, over all its parts."""
    if isinstance(x, TensorDict):
        return sum(value[0].numel() for value in x.values())
    return x[0].numel()


def _edge_mask(mask: torch.Tensor | None, value: torch.Tensor, upper: bool) -> torch.Tensor:
    """Pairs of real nodes off the diagonal (only ``i < j`` when ``upper``), shaped to broadcast on ``value``."""
    nodes = value.shape[1]
    pairs = torch.ones(nodes, nodes, dtype=torch.bool, device=value.device)
    pairs = torch.triu(pairs, diagonal=1) if upper else pairs & ~torch.eye(nodes, dtype=torch.bool,
                                                                          device=value.device)
    if mask is not None:
        real = mask.bool()
        pairs = pairs & real[:, :, None] & real[:, None, :]
    else:
        pairs = pairs.expand(value.shape[0], nodes, nodes)
    return pairs.to(value.dtype)[..., None]


def _part_mask(part: Part, mask: torch.Tensor | None, value: torch.Tensor, counted: bool) -> torch.Tensor | None:
    """Where a part may be non-zero (``counted=False``), or its free coordinates (``counted=True``)."""
    if part.kind == "edges":
        return _edge_mask(mask, value, upper=counted)
    return expand_mask(mask, value)


def expand_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Broadcast a ``(batch, nodes)`` mask to the shape of ``like`` ``(batch, nodes, ...)``."""
    if mask is None:
        return None
    return mask.to(like.dtype).view(*mask.shape, *([1] * (like.dim() - mask.dim())))


def sum_per_sample(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over every non-batch dimension of a tensor, ignoring padded entries."""
    m = expand_mask(mask, x)
    if m is not None:
        x = x * m
    return x.flatten(1).sum(1)


@dataclass(frozen=True)
class ReverseStep:
    """One reverse transition ``p(x_s | x_t) = N(mean, std^2 I)`` from ``t`` to ``s < t``."""

    mean: Sample
    std: torch.Tensor
    x0_hat: Sample
    eps: Sample


class GaussianDiffusion:
    """The DDPM/DDIM maths for one noise schedule, independent of what a sample is.

    ``dof(mask)`` counts the free dimensions of each sample (degrees of freedom), which the
    exploration radius and log-probabilities use; a domain with a projection passes ``dof_offset``
    for the dimensions the projection removes (``3`` for zero centre of mass in 3-D). Multi-part
    samples pass ``parts`` instead: each part's kind, projection and offset; everything per sample
    (norms, degrees of freedom, log-probabilities) is then the sum over the parts.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        project: Projection = identity_projection,
        dof_offset: int = 0,
        parts: Mapping[str, Part] | None = None,
    ) -> None:
        if parts is not None and (project is not identity_projection or dof_offset):
            raise ValueError("a multi-part diffusion takes its projections and offsets per part")
        if parts is not None and not parts:
            raise ValueError("parts must name at least one part")
        self.schedule = schedule
        self.project = project
        self.dof_offset = dof_offset
        self.parts = None if parts is None else dict(parts)
        self._sqrt_alpha_bar = schedule.alpha_bar.sqrt()
        self._sqrt_one_minus_alpha_bar = (1 - schedule.alpha_bar).sqrt()

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def _parts(self, x: Sample) -> dict[str, Part]:
        """The parts of ``x``, checked against the layout this diffusion was built with."""
        if self.parts is None:
            raise TypeError("this diffusion has a single-tensor sample space; got a TensorDict")
        if not isinstance(x, TensorDict):
            raise TypeError(f"this diffusion's samples have parts {sorted(self.parts)}; got a tensor")
        if set(x.keys()) != set(self.parts):
            raise ValueError(f"sample parts {sorted(x.keys())} differ from the diffusion's {sorted(self.parts)}")
        return self.parts

    def sum_per_sample(self, x: Sample, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over every free coordinate of each sample (edge parts: the upper triangle once)."""
        if self.parts is None and not isinstance(x, TensorDict):
            return sum_per_sample(x, mask)
        total = 0
        for name, part in self._parts(x).items():
            value = x[name]
            counted = _part_mask(part, mask, value, counted=True)
            total = total + (value if counted is None else value * counted).flatten(1).sum(1)
        return total

    def dof(self, like: Sample, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Free dimensions per sample: entries under the mask minus what the projection removes."""
        if self.parts is None and not isinstance(like, TensorDict):
            return sum_per_sample(torch.ones_like(like), mask) - self.dof_offset
        offset = sum(part.dof_offset for part in self._parts(like).values())
        return self.sum_per_sample(like.apply(torch.ones_like), mask) - offset

    def standard_normal(self, batch_shape: tuple[int, ...], like: Sample,
                        generator: torch.Generator | None = None) -> Sample:
        """Draws of shape ``batch_shape`` + one row of ``like``, unmasked; edge parts mirrored from their
        upper triangle, so that every free coordinate is one standard normal."""
        device = like.device if generator is None else generator.device

        def draw(row: torch.Size, dtype: torch.dtype) -> torch.Tensor:
            return torch.randn((*batch_shape, *row), generator=generator, device=device, dtype=dtype).to(like.device)

        if self.parts is None and not isinstance(like, TensorDict):
            return draw(like.shape[1:], like.dtype)
        parts = {}
        for name, part in self._parts(like).items():
            value = draw(like[name].shape[1:], like[name].dtype)
            if part.kind == "edges":
                nodes = value.shape[-2]
                upper = value * torch.ones(nodes, nodes, device=value.device, dtype=value.dtype).triu(1)[:, :, None]
                value = upper + upper.transpose(-3, -2)
            parts[name] = value
        return parts_sample(parts, batch_shape)

    def noise_like(self, x: Sample, mask: torch.Tensor | None = None, generator: torch.Generator | None = None
                   ) -> Sample:
        """Standard Gaussian noise on the sample space (masked and projected)."""
        return self.onto_sample_space(self.standard_normal(tuple(x.shape[:1]), x, generator), mask)

    def onto_sample_space(self, x: Sample, mask: torch.Tensor | None = None) -> Sample:
        """Zero the padded entries and apply the domain projection (edge parts: symmetrised first)."""
        if self.parts is None and not isinstance(x, TensorDict):
            m = expand_mask(mask, x)
            if m is not None:
                x = x * m
            return self.project(x, mask)
        parts = {}
        for name, part in self._parts(x).items():
            value = x[name]
            if part.kind == "edges":
                value = (value + value.transpose(-3, -2)) / 2
            support = _part_mask(part, mask, value, counted=False)
            parts[name] = part.project(value if support is None else value * support, mask)
        return parts_sample(parts, x.batch_size)

    def sqrt_alpha_bar(self, t: torch.Tensor, like: Sample) -> torch.Tensor:
        return self.schedule.at(self._sqrt_alpha_bar, t, like)

    def sqrt_one_minus_alpha_bar(self, t: torch.Tensor, like: Sample) -> torch.Tensor:
        return self.schedule.at(self._sqrt_one_minus_alpha_bar, t, like)

    def q_sample(self, x0: Sample, t: torch.Tensor, noise: Sample) -> Sample:
        """Draw from ``q(x_t | x_0)`` given standard noise."""
        return self.sqrt_alpha_bar(t, x0) * x0 + self.sqrt_one_minus_alpha_bar(t, x0) * noise

    def x0_from_eps(self, xt: Sample, t: torch.Tensor, eps: Sample) -> Sample:
        """Tweedie estimate ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        return (xt - self.sqrt_one_minus_alpha_bar(t, xt) * eps) / self.sqrt_alpha_bar(t, xt)

    def posterior(
        self, x0: Sample, xt: Sample, t: torch.Tensor
    ) -> tuple[Sample, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` (closed form, Ho et al. eq. 7)."""
        abar, betas = self.schedule.alpha_bar, self.schedule.betas
        abar_t, abar_prev = self.schedule.at(abar, t, xt), self.schedule.at(abar, t - 1, xt)
        beta_t = self.schedule.at(betas, t, xt)
        coef_x0 = abar_prev.sqrt() * beta_t / (1 - abar_t)
        coef_xt = (1 - beta_t).sqrt() * (1 - abar_prev) / (1 - abar_t)
        variance = beta_t * (1 - abar_prev) / (1 - abar_t)
        return coef_x0 * x0 + coef_xt * xt, variance

    def reverse_step(
        self, xt: Sample, t: torch.Tensor, s: torch.Tensor, eps: Sample, eta: float = 1.0
    ) -> ReverseStep:
        """The DDIM transition from ``t`` to ``s < t`` (Song et al., 2021, eq. 12).

        ``eta = 1`` with ``s = t - 1`` is exactly the DDPM ancestral step with the posterior variance;
        ``eta = 0`` is the deterministic DDIM step.
        """
        x0_hat = self.x0_from_eps(xt, t, eps)
        abar = self.schedule.alpha_bar
        abar_t, abar_s = self.schedule.at(abar, t, xt), self.schedule.at(abar, s, xt)
        variance = eta**2 * (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
        mean = abar_s.sqrt() * x0_hat + (1 - abar_s - variance).clamp(min=0).sqrt() * eps
        return ReverseStep(mean=mean, std=variance.sqrt(), x0_hat=x0_hat, eps=eps)

    def gaussian_log_prob(
        self, x: Sample, mean: Sample, std: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log N(x; mean, std^2 I)`` per sample over its free dimensions (DDPO's per-step log-prob).

        ``std`` holds one value per sample (any shape that flattens to ``(batch, ...)``).
        """
        std = std.reshape(std.shape[0], -1)[:, 0]
        dof = self.dof(x, mask)
        squared = self.sum_per_sample((x - mean) ** 2, mask) / std**2
        return -0.5 * squared - dof * (torch.log(std) + 0.5 * math.log(2 * math.pi))
