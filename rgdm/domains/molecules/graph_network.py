"""An E(3)-equivariant graph network with bond features that denoises positions, atoms and bonds jointly.

A sample is a ``TensorDict`` of ``positions (B, N, 3)``, invariant ``atoms (B, N, F)`` and symmetric
``bonds (B, N, N, E)``; the network predicts the noise of each part. Atoms carry features ``h_i``,
every unordered pair of real atoms an edge state ``e_ij``, and positions move as in EGNN/EDM
(``x_i += sum_j (x_i - x_j) / (|x_i - x_j| + 1) * tanh(w_ij) * range``).

Sources (ideas only, no code): JODO (GRAPH-0/JODO) gives the edge state refreshed from the atom
pair and distance features in every layer, and the time-modulated layer norm (adaLN) of the atoms;
SemlaFlow (rssrwn/semla-flow) the cheapness: pair inputs from per-atom projections (``A h_i + A h_j``)
instead of an MLP on concatenated pairs, one message per pair reused for the atom, edge and
coordinate updates, and a narrow edge width; EQGAT-diff / MiDi the symmetrised bond read-out from
the edge state and the atom pair (``e_ij``, ``h_i + h_j``; the product ``h_i * h_j`` is ours).
Our own CPU choice: edges live on the *unordered* pairs ``i < j`` of real atoms in a flat list
(half a directed graph, nothing spent on padding), and the symmetric message ``m_ij`` is made
directed by cheap per-atom gates (``m_ij * V h_j`` into atom ``i``, ``<K m_ij, Q h_i>`` for the
step of ``x_i`` along ``x_i - x_j``).

With ``self_condition``, the network also takes its own first estimate of the molecule (see
``rgdm.diffusion.self_conditioning``), as JODO does, and the connectivity of that estimate's bonds:
how much of the molecule each atom's bonded fragment holds, and whether two atoms are in one
fragment. Message passing cannot count fragments; the sampled molecules of the model without it
split off small molecules (docs/results/molecules.md#fragmentation), so the network is told.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict
from torch import nn

from rgdm.diffusion.conditioning import Conditioning
from rgdm.diffusion.process import parts_sample
from rgdm.diffusion.self_conditioning import HintProjection
from rgdm.domains.molecules.network import _trim


def _time_features(t: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``[t, sin(2^k pi t), cos(2^k pi t)]`` for ``k < frequencies``: ``(B, 1 + 2 * frequencies)``."""
    angles = t[:, None] * (math.pi * 2.0 ** torch.arange(frequencies, device=t.device, dtype=t.dtype))
    return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


class RadialBasis(nn.Module):
    """Gaussians of a distance on ``count`` centres evenly spaced in ``[0, cutoff]`` Å."""

    def __init__(self, count: int, cutoff: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, cutoff, count), persistent=False)
        self.gamma = 0.5 * (count - 1) ** 2 / cutoff**2 if count > 1 else 1.0

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (distance[:, None] - self.centres.to(distance.dtype)) ** 2)


@torch.compiler.disable
def bonded_together(bonds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, W, W)``: whether atoms ``i`` and ``j`` are joined by a path of bonds (an atom by itself).

    A pair is bonded where its largest bond channel is not channel 0 ("none"). The closure is
    ``ceil(log2 W)`` squarings of the reachability matrix, batched: for molecules of up to 29 atoms a
    handful of small matrix products, where a graph library would loop over the molecules. Its loop
    count depends on the width, so a compiled network runs it eagerly.
    """
    pair = mask[:, :, None] & mask[:, None, :]
    reach = ((bonds.argmax(-1) != 0) & pair) | torch.diag_embed(mask)
    for _ in range(max(1, math.ceil(math.log2(max(mask.shape[1] - 1, 1))))):
        reach = torch.bmm(reach.float(), reach.float()) > 0
    return reach


class Pairs:
    """The unordered pairs ``i < j`` of real atoms of a trimmed batch, as flat atom indices.

    ``mol`` is each pair's molecule, ``i``/``j`` its atom columns, ``a``/``b`` its flat atom indices
    (``mol * width + column``) into ``(B * width, ·)`` tensors.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        batch, width = mask.shape
        upper = torch.ones(width, width, dtype=torch.bool, device=mask.device).triu(1)
        self.mol, self.i, self.j = (mask[:, :, None] & mask[:, None, :] & upper).nonzero(as_tuple=True)
        self.a, self.b = self.mol * width + self.i, self.mol * width + self.j
        self.batch, self.width = batch, width

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """``(B, W, W, C)`` to ``(pairs, C)``, averaging both triangles (exactly symmetric inputs pass as is)."""
        return 0.5 * (dense[self.mol, self.i, self.j] + dense[self.mol, self.j, self.i])

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """``(pairs, C)`` to a symmetric ``(B, W, W, C)``, zero on the diagonal and at padding."""
        dense = values.new_zeros(self.batch, self.width, self.width, values.shape[-1])
        dense = dense.index_put((self.mol, self.i, self.j), values)
        return dense.index_put((self.mol, self.j, self.i), values)

    def add(self, into_a: torch.Tensor, into_b: torch.Tensor, atoms: int) -> torch.Tensor:
        """Sum per-pair values onto atoms: ``into_a`` onto each pair's ``a``, ``into_b`` onto its ``b``."""
        out = into_a.new_zeros(atoms, into_a.shape[-1])
        return out.index_add_(0, self.a, into_a).index_add_(0, self.b, into_b.to(into_a.dtype))


class BondGraphLayer(nn.Module):
    """One round: a symmetric message per pair updates atoms, edges and positions.

    ``m_ij = MLP(A h_i + A h_j + C e_ij + D [rbf(d_ij), rbf(d0_ij)] + G c)`` with ``h``
    layer-normed and modulated by the molecule's conditioning ``c`` (time and target). Then
    ``h_i += MLP([h_i, sum_j m_ij * V h_j / norm])``, ``e_ij += W m_ij`` (symmetric, as ``m_ij``) and
    ``x_i += sum_j (x_i - x_j) / (d_ij + 1) * tanh(<K m_ij, Q h_i>) * range``: ``d0`` is the input
    geometry's distance, ``norm`` a constant (about the neighbour count).
    """

    def __init__(self, hidden: int, edge_hidden: int, radial: int, coords_range: float, normalisation: float,
                 coord_channels: int = 16) -> None:
        super().__init__()
        self.coords_range, self.normalisation, self.coord_channels = coords_range, normalisation, coord_channels
        self.node_norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Linear(hidden, 2 * hidden)
        self.edge_norm = nn.LayerNorm(edge_hidden)
        # Per-atom projections gathered onto the pairs: pair sum, value and coordinate query.
        self.project = nn.Linear(hidden, 2 * hidden + coord_channels)
        self.edge_in = nn.Linear(edge_hidden, hidden, bias=False)
        self.geometry = nn.Linear(2 * radial, hidden, bias=False)
        self.edge_condition = nn.Linear(hidden, hidden, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.update = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.edge_update = nn.Linear(hidden, edge_hidden)
        self.coord_key = nn.Linear(hidden, coord_channels, bias=False)
        # EDM's near-zero coordinate head: positions barely move at initialisation.
        nn.init.xavier_uniform_(self.coord_key.weight, gain=0.001)

    def forward(self, h: torch.Tensor, e: torch.Tensor, x: torch.Tensor, pairs: Pairs, radial: nn.Module,
                initial: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``h (B, W, H)``, ``e (pairs, He)``, ``x (B * W, 3)``, ``initial (pairs, R)``, ``condition (B, H)``."""
        batch, width, hidden = h.shape
        shift, scale = self.modulation(condition)[:, None].chunk(2, dim=-1)
        normed = self.node_norm(h) * (1 + scale) + shift
        total, value, query = self.project(normed).flatten(0, 1).split([hidden, hidden, self.coord_channels], -1)
        a, b = pairs.a, pairs.b
        diff = x.index_select(0, a) - x.index_select(0, b)
        distance = torch.sqrt((diff**2).sum(-1) + 1e-8)
        first = (total.index_select(0, a) + total.index_select(0, b) + self.edge_in(self.edge_norm(e))
                 + self.geometry(torch.cat([radial(distance), initial], dim=-1))
                 + self.edge_condition(condition).index_select(0, pairs.mol))
        m = self.message(first)
        aggregated = pairs.add(m * value.index_select(0, b), m * value.index_select(0, a), batch * width)
        update = self.update(torch.cat([normed, aggregated.reshape(batch, width, hidden) / self.normalisation], -1))
        h = (h + update) * mask[..., None]
        key = self.coord_key(m)
        weight_a = torch.tanh((key * query.index_select(0, a)).sum(-1, keepdim=True))
        weight_b = torch.tanh((key * query.index_select(0, b)).sum(-1, keepdim=True))
        direction = diff / (distance[:, None] + 1.0) * self.coords_range
        x = x + pairs.add(direction * weight_a, -direction * weight_b, batch * width).to(x.dtype)
        e = e + self.edge_update(m)
        return h, e, x


class BondGraphDenoiser(nn.Module):
    """``eps_theta(x_t, t, c, mask)`` for molecules with bonds: ``TensorDict`` in, ``TensorDict`` out.

    The position noise is the displacement ``x_out - x_in`` (equivariant, translation-invariant),
    the atom noise a read-out of ``h_i``, the bond noise a symmetric read-out of
    ``(e_ij, h_i + h_j, h_i * h_j)`` scattered to both triangles. Targets are class indices with
    ``num_targets`` as the unconditional token (``cond=None``); time and target condition the atom
    and edge embeddings and modulate every layer.
    """

    def __init__(self, atom_features: int, bond_features: int, num_targets: int = 0, hidden: int = 96,
                 edge_hidden: int = 32, layers: int = 4, coords_range: float = 15.0, target_features: int = 16,
                 radial: int = 12, time_frequencies: int = 6, normalisation: float = 8.0,
                 self_condition: bool = False) -> None:
        super().__init__()
        self.time_frequencies = time_frequencies
        self.self_conditioned = self_condition
        if self_condition:
            # Hint inputs: the estimate's atoms and fragment share; its bonds, distance and same-fragment flag.
            self.hint_atoms = HintProjection(atom_features + 1, hidden)
            self.hint_bonds = HintProjection(bond_features + radial + 1, edge_hidden)
        self.target = Conditioning(num_targets, target_features)
        self.condition = nn.Sequential(nn.Linear(1 + 2 * time_frequencies + target_features, hidden), nn.SiLU(),
                                       nn.Linear(hidden, hidden))
        self.radial = RadialBasis(radial)
        self.atom_embed = nn.Linear(atom_features, hidden)
        self.atom_condition = nn.Linear(hidden, hidden, bias=False)
        self.bond_embed = nn.Linear(bond_features + radial, edge_hidden)
        self.bond_condition = nn.Linear(hidden, edge_hidden, bias=False)
        self.layers = nn.ModuleList(BondGraphLayer(hidden, edge_hidden, radial, coords_range, normalisation)
                                    for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.atom_read_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, atom_features))
        self.bond_pair = nn.Linear(hidden, 2 * hidden)
        self.bond_edge = nn.Linear(edge_hidden, hidden, bias=False)
        self.bond_read_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, bond_features))

    def _trunk(self, x: TensorDict, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor | None,
               hint: TensorDict | None = None, hinted: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Pairs, torch.Tensor]:
        """Embed and run the layers on the trimmed batch: ``(h, e, x_out, x_in, pairs, mask)``."""
        positions, mask = _trim(x["positions"], mask)
        batch, width = mask.shape
        dtype = positions.dtype
        positions = torch.where(mask[..., None], positions, 0.0).reshape(batch * width, 3)
        atoms = torch.where(mask[..., None], x["atoms"][:, :width], 0.0)
        pairs = Pairs(mask)
        t = torch.as_tensor(t, dtype=dtype, device=positions.device).expand(batch)
        condition = self.condition(torch.cat([_time_features(t, self.time_frequencies),
                                              self.target(cond, batch).to(dtype)], dim=1))
        h = (self.atom_embed(atoms) + self.atom_condition(condition)[:, None]) * mask[..., None]
        difference = positions.index_select(0, pairs.a) - positions.index_select(0, pairs.b)
        initial = self.radial(torch.sqrt((difference**2).sum(-1) + 1e-8))
        bonds = pairs.gather(x["bonds"][:, :width, :width])
        e = self.bond_embed(torch.cat([bonds, initial], -1)) + self.bond_condition(condition).index_select(0, pairs.mol)
        if hint is not None:
            hint_atoms, hint_bonds = self._hint_features(hint, hinted, pairs, mask)
            h = h + self.hint_atoms(hint_atoms) * mask[..., None]
            e = e + self.hint_bonds(hint_bonds)
        out = positions
        for layer in self.layers:
            h, e, out = layer(h, e, out, pairs, self.radial, initial, condition, mask)
        return self.final_norm(h), e, out, positions, pairs, mask

    def _hint_features(self, hint: TensorDict, hinted: torch.Tensor | None, pairs: Pairs, mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per atom ``[atoms, fragment share]`` ``(B, W, F + 1)``, per pair ``[bonds, rbf(distance), same
        fragment]`` ``(pairs, E + R + 1)``, from the trimmed hint; zero for rows not ``hinted``. Estimates
        far outside the data's range (early in the reverse process) are clipped."""
        batch, width = mask.shape
        if hinted is None:
            hinted = torch.ones(batch, dtype=torch.bool, device=mask.device)
        keep = mask & hinted[:, None]
        atoms = torch.where(keep[..., None], hint["atoms"][:, :width].clamp(-1.0, 1.0), 0.0)
        bonds = hint["bonds"][:, :width, :width]
        together = bonded_together(bonds, keep)
        share = together.sum(-1) / keep.sum(-1, keepdim=True).clamp(min=1)
        atom_features = torch.cat([atoms, share[..., None].to(atoms.dtype)], -1)
        positions = torch.where(mask[..., None], hint["positions"][:, :width], 0.0).reshape(batch * width, 3)
        difference = positions.index_select(0, pairs.a) - positions.index_select(0, pairs.b)
        pair_features = torch.cat([pairs.gather(bonds.clamp(-1.0, 2.0)),
                                   self.radial(torch.sqrt((difference**2).sum(-1) + 1e-8)),
                                   together[pairs.mol, pairs.i, pairs.j, None].to(atoms.dtype)], -1)
        return atom_features, pair_features * hinted[pairs.mol, None].to(atoms.dtype)

    def forward(self, x: TensorDict, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, hint: TensorDict | None = None,
                hinted: torch.Tensor | None = None) -> TensorDict:
        """The noise of every part; ``hint`` and ``hinted`` as ``rgdm.diffusion.self_conditioning`` says."""
        batch, full = x["positions"].shape[:2]
        h, e, out, positions, pairs, mask = self._trunk(x, t, cond, mask, hint, hinted)
        width = mask.shape[1]
        keep = mask[..., None]
        eps_positions = (out - positions).reshape(batch, width, 3) * keep
        eps_atoms = self.atom_read_out(h) * keep
        total, product = self.bond_pair(h).flatten(0, 1).chunk(2, dim=-1)
        a, b = pairs.a, pairs.b
        bond_hidden = (total.index_select(0, a) + total.index_select(0, b)
                       + product.index_select(0, a) * product.index_select(0, b) + self.bond_edge(e))
        eps_bonds = pairs.scatter(self.bond_read_out(bond_hidden))
        pad = full - width
        return parts_sample({
            "positions": nn.functional.pad(eps_positions, (0, 0, 0, pad)),
            "atoms": nn.functional.pad(eps_atoms, (0, 0, 0, pad)),
            "bonds": nn.functional.pad(eps_bonds, (0, 0, 0, pad, 0, pad)),
        }, [batch])


class BondGraphRegressor(BondGraphDenoiser):
    """A scalar per molecule ``f(x_t, t, c, mask)``: the sum of invariant per-atom read-outs
    (``(B, outputs)`` when ``outputs > 1``), as ``EGNNRegressor`` but on the bond graph."""

    def __init__(self, atom_features: int, bond_features: int, num_targets: int = 0, hidden: int = 96,
                 edge_hidden: int = 32, layers: int = 4, coords_range: float = 15.0, outputs: int = 1,
                 **options) -> None:
        super().__init__(atom_features, bond_features, num_targets, hidden, edge_hidden, layers, coords_range,
                         **options)
        self.atom_read_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, outputs))
        self.bond_pair = self.bond_edge = self.bond_read_out = None

    def forward(self, x: TensorDict, t: torch.Tensor, cond: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h, _, _, _, _, mask = self._trunk(x, t, cond, mask)
        out = (self.atom_read_out(h) * mask[..., None]).sum(1)
        return out.squeeze(-1) if out.shape[-1] == 1 else out
