"""The bond-graph denoiser: E(3) and permutation equivariance, padding, bond symmetry, conditioning.

Hand-made molecules (methane, benzene with aromatic bonds, a carbon with five hydrogens) are
batched with padding; every weight is random and the network runs in float64, so a broken
symmetry shows up far above rounding (EDM's near-zero coordinate head would hide it otherwise).
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from rgdm.domains.molecules.graph_network import BondGraphDenoiser, BondGraphRegressor, bonded_together

ELEMENTS = ("H", "C", "N", "O", "F")
CHARGES = (-1, 0, 1)
BOND_TYPES = ("none", "single", "double", "triple", "aromatic")
ATOM_FEATURES, BOND_FEATURES = len(ELEMENTS) + len(CHARGES), len(BOND_TYPES)
WIDTH = 14  # benzene's 12 atoms and two padding columns
TOLERANCE = 1e-9


def methane() -> tuple[list[str], torch.Tensor, dict[tuple[int, int], str]]:
    corners = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) * (1.09 / math.sqrt(3))
    return ["C", "H", "H", "H", "H"], torch.cat([torch.zeros(1, 3), corners]), {(0, k): "single" for k in range(1, 5)}


def benzene() -> tuple[list[str], torch.Tensor, dict[tuple[int, int], str]]:
    angles = torch.arange(6) * math.pi / 3
    ring = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(6)], dim=1)
    bonds = {(k, (k + 1) % 6): "aromatic" for k in range(6)} | {(k, k + 6): "single" for k in range(6)}
    return ["C"] * 6 + ["H"] * 6, torch.cat([1.39 * ring, 2.47 * ring]), bonds


def pentavalent_carbon() -> tuple[list[str], torch.Tensor, dict[tuple[int, int], str]]:
    """A carbon with five single-bonded hydrogens (trigonal bipyramid): a broken valence."""
    angles = torch.arange(3) * 2 * math.pi / 3
    equator = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(3)], dim=1)
    poles = torch.tensor([[0.0, 0, 1], [0, 0, -1]])
    return ["C"] + ["H"] * 5, torch.cat([torch.zeros(1, 3), 1.1 * equator, 1.1 * poles]), {
        (0, k): "single" for k in range(1, 6)}


def encode(molecules, width: int = WIDTH) -> tuple[TensorDict, torch.Tensor]:
    """Scaled one-hot atoms (element, formal charge 0) and bonds ("none" between unbonded real atoms)."""
    batch = len(molecules)
    positions = torch.zeros(batch, width, 3, dtype=torch.float64)
    atoms = torch.zeros(batch, width, ATOM_FEATURES, dtype=torch.float64)
    bonds = torch.zeros(batch, width, width, BOND_FEATURES, dtype=torch.float64)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for row, (elements, coordinates, bonded) in enumerate(molecules):
        n = len(elements)
        mask[row, :n] = True
        positions[row, :n] = coordinates.double() - coordinates.double().mean(0)
        for k, element in enumerate(elements):
            atoms[row, k, ELEMENTS.index(element)] = 0.25
            atoms[row, k, len(ELEMENTS) + CHARGES.index(0)] = 0.25
        for i in range(n):
            for j in range(n):
                if i != j:
                    kind = bonded.get((min(i, j), max(i, j)), "none")
                    bonds[row, i, j, BOND_TYPES.index(kind)] = 0.5
    return TensorDict({"positions": positions, "atoms": atoms, "bonds": bonds}, batch_size=[batch]), mask


@pytest.fixture(scope="module")
def batch() -> tuple[TensorDict, torch.Tensor, torch.Tensor]:
    """The three molecules with diffusion-like noise on every part (bond noise symmetric, zero diagonal)."""
    x, mask = encode([benzene(), methane(), pentavalent_carbon()])
    generator = torch.Generator().manual_seed(0)
    pair_mask = (mask[:, :, None] & mask[:, None, :] & ~torch.eye(WIDTH, dtype=torch.bool))[..., None]
    noise = torch.randn(x["bonds"].shape, generator=generator, dtype=torch.float64)
    x["bonds"] = (x["bonds"] + 0.3 * (noise + noise.transpose(1, 2))) * pair_mask
    x["atoms"] = (x["atoms"] + 0.3 * torch.randn(x["atoms"].shape, generator=generator, dtype=torch.float64)
                  ) * mask[..., None]
    x["positions"] = x["positions"] + 0.2 * torch.randn(x["positions"].shape, generator=generator,
                                                        dtype=torch.float64) * mask[..., None]
    return x, mask, torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return net.double()


def small(cls=BondGraphDenoiser, **options):
    return randomised(cls(ATOM_FEATURES, BOND_FEATURES, num_targets=3, hidden=16, edge_hidden=8, layers=2, **options))


def orthogonal(generator: torch.Generator, reflect: bool) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def moved(x: TensorDict, mask: torch.Tensor, rotation: torch.Tensor, shift: torch.Tensor) -> TensorDict:
    out = x.clone()
    out["positions"] = (x["positions"] @ rotation.T + shift) * mask[..., None]
    return out


def permuted(x: TensorDict, mask: torch.Tensor, order: torch.Tensor) -> tuple[TensorDict, torch.Tensor]:
    """Reorder the atom columns of each molecule by its own row of ``order`` (padding moves too)."""
    rows = torch.arange(len(order))[:, None]
    out = x.clone()
    out["positions"], out["atoms"] = x["positions"][rows, order], x["atoms"][rows, order]
    out["bonds"] = x["bonds"][rows[..., None], order[:, :, None], order[:, None, :]]
    return out, mask[rows, order]


def assert_close(actual: TensorDict, expected: TensorDict, keys=("positions", "atoms", "bonds")) -> None:
    for key in keys:
        assert torch.allclose(actual[key], expected[key], atol=TOLERANCE), key


def test_outputs_have_the_input_shapes_and_vanish_at_padding(batch):
    x, mask, t = batch
    out = small()(x, t, None, mask)
    assert set(out.keys()) == {"positions", "atoms", "bonds"} and out.batch_size == x.batch_size
    for key in ("positions", "atoms", "bonds"):
        assert out[key].shape == x[key].shape and out[key].dtype == torch.float64
        assert out[key].abs().amax() > 1e-3, f"{key} output is trivially zero"
    assert out["positions"][~mask].abs().max() == 0 and out["atoms"][~mask].abs().max() == 0
    pair_mask = mask[:, :, None] & mask[:, None, :]
    assert out["bonds"][~pair_mask].abs().max() == 0


@pytest.mark.parametrize("reflect", [False, True])
def test_positions_rotate_and_features_are_invariant_under_rotation_reflection_translation(batch, reflect):
    x, mask, t = batch
    net = small()
    generator = torch.Generator().manual_seed(1 + reflect)
    rotation, shift = orthogonal(generator, reflect), torch.randn(3, generator=generator, dtype=torch.float64)
    out, out_moved = net(x, t, None, mask), net(moved(x, mask, rotation, shift), t, None, mask)
    assert torch.allclose(out_moved["positions"], out["positions"] @ rotation.T, atol=TOLERANCE)
    assert_close(out_moved, out, keys=("atoms", "bonds"))


def test_outputs_are_permutation_equivariant(batch):
    x, mask, t = batch
    net = small()
    generator = torch.Generator().manual_seed(3)
    order = torch.stack([torch.randperm(WIDTH, generator=generator) for _ in range(len(mask))])
    shuffled, shuffled_mask = permuted(x, mask, order)
    out = net(x, t, None, mask)
    expected, _ = permuted(out, mask, order)
    assert_close(net(shuffled, t, None, shuffled_mask), expected)


def test_padding_columns_and_garbage_at_padding_change_nothing(batch):
    x, mask, t = batch
    net = small()
    out = net(x, t, None, mask)
    extra = 5
    wide = TensorDict({
        "positions": torch.nn.functional.pad(x["positions"], (0, 0, 0, extra)),
        "atoms": torch.nn.functional.pad(x["atoms"], (0, 0, 0, extra)),
        "bonds": torch.nn.functional.pad(x["bonds"], (0, 0, 0, extra, 0, extra)),
    }, batch_size=x.batch_size)
    wide_mask = torch.nn.functional.pad(mask, (0, extra))
    generator = torch.Generator().manual_seed(4)
    pad_pairs = ~(wide_mask[:, :, None] & wide_mask[:, None, :])
    for key, where in (("positions", ~wide_mask), ("atoms", ~wide_mask), ("bonds", pad_pairs)):
        garbage = 1e3 * torch.randn(wide[key].shape, generator=generator, dtype=torch.float64)
        garbage[..., 0] = float("nan")
        wide[key] = torch.where(where[..., None], garbage, wide[key])
    out_wide = net(wide, t, None, wide_mask.float())
    for key in ("positions", "atoms"):
        assert torch.allclose(out_wide[key][:, :WIDTH], out[key], atol=TOLERANCE), key
        assert out_wide[key][~wide_mask].abs().max() == 0, key
    assert torch.allclose(out_wide["bonds"][:, :WIDTH, :WIDTH], out["bonds"], atol=TOLERANCE)
    assert out_wide["bonds"][pad_pairs].abs().max() == 0


def test_bond_output_is_exactly_symmetric_with_zero_diagonal(batch):
    x, mask, t = batch
    net = small()
    lopsided = x.clone()  # one triangle off: the output must still be exactly symmetric
    upper = torch.ones(WIDTH, WIDTH, dtype=torch.float64).triu(1)[None, :, :, None]
    lopsided["bonds"] = x["bonds"] + 0.1 * upper * (mask[:, :, None] & mask[:, None, :])[..., None]
    for sample in (x, lopsided):
        bonds = net(sample, t, None, mask)["bonds"]
        assert torch.equal(bonds, bonds.transpose(1, 2))
        assert torch.diagonal(bonds, dim1=1, dim2=2).abs().max() == 0


def test_condition_changes_the_output_and_none_is_the_null_token(batch):
    x, mask, t = batch
    net = small()
    unconditional = net(x, t, None, mask)
    null = net(x, t, torch.full((3,), 3), mask)
    assert_close(null, unconditional)
    first, second = net(x, t, torch.zeros(3, dtype=torch.long), mask), net(x, t, torch.ones(3, dtype=torch.long), mask)
    for key in ("positions", "atoms", "bonds"):
        assert (first[key] - second[key]).abs().amax() > 1e-4, key
    later = net(x, t + 0.05, None, mask)
    assert (later["atoms"] - unconditional["atoms"]).abs().amax() > 1e-4, "time must enter the network"


def cut(sample: TensorDict, width: int) -> TensorDict:
    return TensorDict({key: value[:, :width] if key != "bonds" else value[:, :width, :width]
                       for key, value in sample.items()}, batch_size=sample.batch_size)


def test_mask_none_means_every_atom_is_real(batch):
    x, mask, t = batch
    net = small()
    alone = net(cut(x[1:2], 5), t[1:2], None, None)  # methane, without its padding
    assert_close(alone, cut(net(x, t, None, mask)[1:2], 5))


def test_regressor_is_invariant_to_rigid_motion_permutation_and_padding(batch):
    x, mask, t = batch
    net = small(BondGraphRegressor)
    generator = torch.Generator().manual_seed(5)
    value = net(x, t, None, mask)
    assert value.shape == (3,) and value.abs().min() > 1e-6
    rotation, shift = orthogonal(generator, reflect=True), torch.randn(3, generator=generator, dtype=torch.float64)
    assert torch.allclose(net(moved(x, mask, rotation, shift), t, None, mask), value, atol=TOLERANCE)
    order = torch.stack([torch.randperm(WIDTH, generator=generator) for _ in range(len(mask))])
    shuffled, shuffled_mask = permuted(x, mask, order)
    assert torch.allclose(net(shuffled, t, None, shuffled_mask), value, atol=TOLERANCE)
    assert not torch.allclose(net(x, t, torch.zeros(3, dtype=torch.long), mask), value)
    several = randomised(BondGraphRegressor(ATOM_FEATURES, BOND_FEATURES, num_targets=3, hidden=16, edge_hidden=8,
                                            layers=2, outputs=4))
    assert several(x, t, None, mask).shape == (3, 4)


def test_gradients_reach_every_denoiser_parameter_and_bf16_autocast_runs(batch):
    x, mask, t = batch
    net = BondGraphDenoiser(ATOM_FEATURES, BOND_FEATURES, num_targets=3, hidden=16, edge_hidden=8, layers=2)
    x32 = x.float()
    out = net(x32, t.float(), torch.tensor([0, 1, 3]), mask)
    sum(value.square().sum() for value in out.values()).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        approximate = net(x32, t.float(), None, mask)
    exact = net(x32, t.float(), None, mask)
    for key in ("positions", "atoms", "bonds"):
        assert torch.isfinite(approximate[key]).all()
        assert (approximate[key].float() - exact[key]).norm() <= 0.05 * exact[key].norm() + 1e-6, key


def test_the_compiled_network_gives_the_eager_outputs_and_gradients(batch):
    """``train.compile``: one dynamic-shape graph for every batch, the same maths as the eager network."""
    x, mask, t = batch
    net = small()
    compiled = torch.compile(net, dynamic=True)
    for rows in (slice(0, 3), slice(1, 3)):  # a second batch of another width and pair count
        eager_out = net(x[rows], t[rows], mask=mask[rows])
        compiled_out = compiled(x[rows], t[rows], mask=mask[rows])
        for part in ("positions", "atoms", "bonds"):
            torch.testing.assert_close(compiled_out[part], eager_out[part], rtol=1e-9, atol=1e-9)
        eager_grads = torch.autograd.grad(sum(v.sum() for v in eager_out.values()), list(net.parameters()))
        compiled_grads = torch.autograd.grad(sum(v.sum() for v in compiled_out.values()), list(net.parameters()))
        for eager_grad, compiled_grad in zip(eager_grads, compiled_grads, strict=True):
            torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-7, atol=1e-9)


# Self-conditioning: the network's own first estimate and its bonded fragments as a hint.

def hint_for(x: TensorDict, mask: torch.Tensor, seed: int = 7) -> TensorDict:
    """A made-up first estimate: the batch moved a little, every part."""
    generator = torch.Generator().manual_seed(seed)
    hint = x.clone()
    for key in ("positions", "atoms"):
        hint[key] = x[key] + 0.1 * torch.randn(x[key].shape, generator=generator, dtype=torch.float64)
    noise = torch.randn(x["bonds"].shape, generator=generator, dtype=torch.float64)
    hint["bonds"] = x["bonds"] + 0.05 * (noise + noise.transpose(1, 2))
    return hint


def hinted_net() -> BondGraphDenoiser:
    return small(self_condition=True)


def test_self_conditioned_outputs_are_equivariant_with_the_hint_moved_and_permuted_alike(batch):
    x, mask, t = batch
    net, hint = hinted_net(), hint_for(x, mask)
    out = net(x, t, None, mask, hint=hint)
    assert (out["atoms"] - net(x, t, None, mask)["atoms"]).abs().amax() > 1e-4, "the hint must enter"
    generator = torch.Generator().manual_seed(8)
    rotation, shift = orthogonal(generator, reflect=True), torch.randn(3, generator=generator, dtype=torch.float64)
    out_moved = net(moved(x, mask, rotation, shift), t, None, mask, hint=moved(hint, mask, rotation, -shift))
    assert torch.allclose(out_moved["positions"], out["positions"] @ rotation.T, atol=TOLERANCE)
    assert_close(out_moved, out, keys=("atoms", "bonds"))
    order = torch.stack([torch.randperm(WIDTH, generator=generator) for _ in range(len(mask))])
    shuffled, shuffled_mask = permuted(x, mask, order)
    expected, _ = permuted(out, mask, order)
    assert_close(net(shuffled, t, None, shuffled_mask, hint=permuted(hint, mask, order)[0]), expected)


def test_a_self_conditioned_network_ignores_padding_in_the_hint_and_rows_without_one(batch):
    x, mask, t = batch
    net, hint = hinted_net(), hint_for(x, mask)
    out = net(x, t, None, mask, hint=hint)
    garbage = hint.clone()
    pad_pairs = ~(mask[:, :, None] & mask[:, None, :])
    garbage["positions"] = torch.where(mask[..., None], hint["positions"], float("nan"))
    garbage["atoms"] = torch.where(mask[..., None], hint["atoms"], 1e3)
    garbage["bonds"] = torch.where(pad_pairs[..., None], float("nan"), hint["bonds"])
    assert_close(net(x, t, None, mask, hint=garbage), out)
    partly = net(x, t, None, mask, hint=hint, hinted=torch.tensor([True, False, True]))
    unhinted = net(x, t, None, mask)
    assert_close(partly[[0, 2]], out[[0, 2]])
    assert_close(partly[[1]], unhinted[[1]])


def test_hint_inputs_start_at_zero_so_the_network_answers_as_its_parent(batch):
    x, mask, t = batch
    parent = small()
    child = BondGraphDenoiser(ATOM_FEATURES, BOND_FEATURES, num_targets=3, hidden=16, edge_hidden=8, layers=2,
                              self_condition=True).double()
    missing = child.load_state_dict(parent.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["hint_atoms.weight", "hint_bonds.weight"]
    assert_close(child(x, t, None, mask, hint=hint_for(x, mask)), parent(x, t, None, mask))


def test_bonded_together_finds_the_fragments_of_hand_made_molecules():
    x, mask = encode([benzene(), methane()])
    together = bonded_together(x["bonds"], mask)
    assert together[0, :12, :12].all() and together[1, :5, :5].all() and together.sum() == 12**2 + 5**2
    # benzene's C0-H6 bond and methane's C-H4 bond removed: each hydrogen is a fragment by itself.
    x["bonds"][0, 0, 6] = x["bonds"][0, 6, 0] = x["bonds"][1, 0, 4] = x["bonds"][1, 4, 0] = torch.tensor(
        [0.5, 0, 0, 0, 0], dtype=torch.float64)
    together = bonded_together(x["bonds"], mask)
    assert together[0, 6, :12].sum() == 1 and together[0, 0, :12].sum() == 11
    assert together[1, 4, :5].sum() == 1 and together[1, 0, :5].sum() == 4
    assert not together[~mask].any() and torch.equal(together, together.transpose(1, 2))


def test_the_fragment_features_change_the_output(batch):
    """Two hints that differ only in one bond that splits off a hydrogen give different outputs, with the
    hint's bond values themselves unread: the fragment share and same-fragment flag carry it."""
    x, mask, t = batch
    net, hint = hinted_net(), hint_for(x, mask)
    with torch.no_grad():
        net.hint_bonds.weight[:, :BOND_FEATURES] = 0.0
    hint["bonds"] = encode([benzene(), methane(), pentavalent_carbon()])[0]["bonds"]
    split = hint.clone()
    split["bonds"][1, 0, 4] = split["bonds"][1, 4, 0] = torch.tensor([0.5, 0, 0, 0, 0], dtype=torch.float64)
    assert bonded_together(hint["bonds"], mask)[1, 0, 4] and not bonded_together(split["bonds"], mask)[1, 0, 4]
    difference = net(x, t, None, mask, hint=split)["atoms"] - net(x, t, None, mask, hint=hint)["atoms"]
    assert difference[1].abs().amax() > 1e-4 and difference[[0, 2]].abs().amax() == 0


def test_a_self_conditioned_network_draws_every_other_weight_as_a_plain_one():
    torch.manual_seed(3)
    plain = BondGraphDenoiser(ATOM_FEATURES, BOND_FEATURES, hidden=16, edge_hidden=8, layers=2)
    torch.manual_seed(3)
    hinted = BondGraphDenoiser(ATOM_FEATURES, BOND_FEATURES, hidden=16, edge_hidden=8, layers=2, self_condition=True)
    for name, value in plain.state_dict().items():
        assert torch.equal(hinted.state_dict()[name], value), name
