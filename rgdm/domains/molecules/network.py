"""An E(n)-equivariant graph network (EGNN, Satorras et al. 2021) in the EDM denoiser form.

Positions are updated equivariantly, atom features invariantly, so the predicted noise rotates with
the molecule and does not move when it is translated. The graph is complete within each molecule;
padding atoms are masked out of every message. Messages run over a flat edge list of real atom
pairs, so padding costs nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from rgdm.diffusion.conditioning import Conditioning


class EquivariantLayer(nn.Module):
    """One message-passing round (Satorras et al. eq. 3-6): invariant messages ``m_ij`` update the
    features, and move positions along the edges by a bounded amount (EDM's ``tanh * coords_range``).

    The first message layer acts on ``[h_i, h_j, |x_i - x_j|^2, |x_i^0 - x_j^0|^2]``; it is split
    into per-atom projections gathered onto each edge, which is the same map at a fraction of the cost.
    """

    def __init__(self, hidden: int, coords_range: float = 15.0) -> None:
        super().__init__()
        self.coords_range = coords_range
        self.own = nn.Linear(hidden, hidden)
        self.neighbour = nn.Linear(hidden, hidden, bias=False)
        self.distances = nn.Linear(2, hidden, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.attention = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.update = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.coord_weight = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.coord_weight.weight, gain=0.001)

    def forward(self, h: torch.Tensor, x: torch.Tensor, edges: tuple[torch.Tensor, torch.Tensor],
                initial: torch.Tensor, node_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h (nodes, hidden)`` and ``x (nodes, 3)``; messages flow along ``edges = (i, j)`` into ``i``."""
        i, j = edges
        diff = x[i] - x[j]
        squared = (diff**2).sum(-1, keepdim=True)
        first = self.own(h)[i] + self.neighbour(h)[j] + self.distances(torch.cat([squared, initial], dim=-1))
        messages = self.message(first)
        messages = messages * self.attention(messages)
        step = diff / (torch.sqrt(squared + 1e-8) + 1.0) * torch.tanh(self.coord_weight(messages)) * self.coords_range
        x = (x + torch.zeros_like(x).index_add_(0, i, step.to(x.dtype))) * node_mask
        aggregated = torch.zeros_like(h).index_add_(0, i, messages.to(h.dtype))
        h = (h + self.update(torch.cat([h, aggregated], dim=-1))) * node_mask
        return h, x


class EGNN(nn.Module):
    """Embeds per-atom features, runs ``layers`` equivariant rounds, returns features and positions.

    Every molecule is a complete graph over its real atoms; the batch is flattened into one edge
    list, so padding atoms cost nothing in the messages (QM9 molecules fill 18 of 29 slots on average).
    """

    def __init__(self, in_features: int, hidden: int, layers: int, coords_range: float = 15.0) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, hidden)
        self.layers = nn.ModuleList(EquivariantLayer(hidden, coords_range) for _ in range(layers))

    def forward(self, features: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, atoms = mask.shape
        mask = mask.bool()
        pairs = mask[:, :, None] & mask[:, None, :] & ~torch.eye(atoms, dtype=torch.bool, device=mask.device)
        molecule, i, j = pairs.nonzero(as_tuple=True)
        edges = (molecule * atoms + i, molecule * atoms + j)
        node_mask = mask.reshape(-1, 1).to(x.dtype)
        x = x.reshape(-1, 3) * node_mask
        initial = ((x[edges[0]] - x[edges[1]]) ** 2).sum(-1, keepdim=True)
        h = self.embed(features.reshape(batch * atoms, -1)) * node_mask
        for layer in self.layers:
            h, x = layer(h, x, edges, initial, node_mask)
        return h.reshape(batch, atoms, -1), x.reshape(batch, atoms, 3)


@torch.compiler.disable
def _trim(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop padding columns no molecule of the batch uses (attention cost is quadratic in them).

    Its width is data-dependent, so a compiled network calls it eagerly (a deliberate graph break).
    """
    if mask is None:
        mask = torch.ones(x.shape[:2], device=x.device, dtype=torch.bool)
    used = mask.any(0).nonzero()
    width = int(used.max()) + 1 if len(used) else 1
    return x[:, :width], mask[:, :width].bool()


class EGNNDenoiser(nn.Module):
    """``eps_theta(x_t, t, c, mask)`` for molecules ``x = [positions (3), atom features (F)]``.

    The position noise is the EGNN's displacement ``x_out - x_in`` (equivariant; ``EpsModel``
    removes its centre of mass), the feature noise a linear read-out of the invariant features.
    Targets are class indices with ``num_targets`` as the unconditional token, as in every domain.
    """

    def __init__(self, atom_features: int, num_targets: int = 0, hidden: int = 128, layers: int = 6,
                 coords_range: float = 15.0, target_features: int = 16) -> None:
        super().__init__()
        self.target = Conditioning(num_targets, target_features)
        self.egnn = EGNN(atom_features + 1 + target_features, hidden, layers, coords_range)
        self.read_out = nn.Linear(hidden, atom_features)

    def _inputs(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor
                ) -> torch.Tensor:
        batch, atoms = mask.shape
        per_molecule = torch.cat([t.to(x.dtype)[:, None], self.target(cond, batch)], dim=1)
        return torch.cat([x[..., 3:], per_molecule[:, None].expand(-1, atoms, -1)], dim=-1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        full_width = x.shape[1]
        x, mask = _trim(x, mask)
        h, positions = self.egnn(self._inputs(x, t, cond, mask), x[..., :3], mask)
        eps = torch.cat([positions - x[..., :3], self.read_out(h)], dim=-1) * mask[..., None]
        return nn.functional.pad(eps, (0, 0, 0, full_width - eps.shape[1]))


class EGNNRegressor(EGNNDenoiser):
    """A scalar per molecule ``f(x_t, t, c, mask)``: the sum of invariant per-atom read-outs
    (``(b, outputs)`` logits when ``outputs > 1``).

    Serves as the noise-aware regressor of classifier guidance and, at ``t = 0``, as a property
    predictor (alpha, gap, ...) trained on one half of QM9. Output ``dipole_output``, if set, is instead
    the norm of a dipole ``|sum_i q_i x_i|`` over per-atom charges (SchNet's and PaiNN's dipole read-out):
    a molecule's dipole moment is a vector sum, which a sum of invariant scalars cannot express.
    """

    def __init__(self, atom_features: int, num_targets: int = 0, hidden: int = 128, layers: int = 6,
                 coords_range: float = 15.0, outputs: int = 1, dipole_output: int | None = None) -> None:
        super().__init__(atom_features, num_targets, hidden, layers, coords_range)
        self.read_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, outputs))
        if dipole_output is not None and not 0 <= dipole_output < outputs:
            raise ValueError(f"dipole_output must be one of the {outputs} outputs, got {dipole_output}")
        self.dipole_output = dipole_output
        if dipole_output is not None:
            self.charges = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
            self.dipole_offset = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x, mask = _trim(x, mask)
        h, _ = self.egnn(self._inputs(x, t, cond, mask), x[..., :3], mask)
        out = (self.read_out(h) * mask[..., None]).sum(1)
        if self.dipole_output is not None:
            k = self.dipole_output
            out = torch.cat([out[:, :k], self._dipole(h, x[..., :3], mask)[:, None], out[:, k + 1:]], dim=1)
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def _dipole(self, h: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``|sum_i q_i x_i| + offset`` with the charges made neutral per molecule, so that it does not
        depend on where the molecule sits (invariant, as its norm is under rotation)."""
        weight = mask.to(h.dtype)[..., None]
        charges = self.charges(h) * weight
        charges = (charges - weight * charges.sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp(min=1.0))
        vector = (charges * positions).sum(1)
        return torch.sqrt((vector**2).sum(-1) + 1e-8) + self.dipole_offset
