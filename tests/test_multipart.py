"""Samples of several parts (positions, node features, symmetric edge features) through the diffusion core."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from toolkit import denoising_losses, hand_made_molecules, make_scorer, stepwise_loss
from torch import nn

from rgdm.algorithms import (
    DDPO,
    RWR,
    ConditionalFinetune,
    DataPayoff,
    GradientStep,
    GreedySelection,
    ModelPayoff,
    Pretrain,
    StepwiseExploration,
    TrainingContext,
)
from rgdm.algorithms.base import DenoisingRows
from rgdm.algorithms.classifier_guidance import ClassifierGuidance
from rgdm.algorithms.exploration import explore
from rgdm.algorithms.rgdm_stepwise import StepwiseLoss
from rgdm.algorithms.svdd import svdd
from rgdm.batch import Batch, Shard, flatten_parts, unflatten_parts
from rgdm.diffusion import (
    EpsModel,
    GaussianDiffusion,
    HintProjection,
    LangevinCorrector,
    NoiseSchedule,
    denoising_loss,
    noise_error,
    sample,
)
from rgdm.domains.molecules.data import ELEMENTS, pad_molecules
from rgdm.domains.molecules.encoding import GraphEncoding, pad_bonds, remove_center_of_mass
from rgdm.rewards import BlackBoxReward, RewardCounter, Scorer

#: Hand-made methane, benzene and a broken valence (5, 12 and 6 atoms), in the bond models' encoding.
ENCODING = GraphEncoding(ELEMENTS)
MOLECULES, MASK = ENCODING.encode(*pad_molecules(hand_made_molecules(), 12), *pad_bonds(hand_made_molecules(), 12))
MASK = MASK.bool()
ATOM_FEATURES, BOND_FEATURES = ENCODING.atom_features, ENCODING.bond_types
PARTS = ENCODING.parts


def diffusion(timesteps: int = 50) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.create("linear", timesteps), parts=PARTS)


def zeros(rows: int = 3) -> TensorDict:
    return ENCODING.zeros(rows, MASK.shape[1])


class PartwiseDenoiser(nn.Module):
    """A small per-part network whose outputs depend on every input part and on time (bounded, so that
    a random one samples finite values)."""

    def __init__(self) -> None:
        super().__init__()
        self.atoms = nn.Linear(ATOM_FEATURES + 2, ATOM_FEATURES)
        self.bonds = nn.Linear(BOND_FEATURES + 1, BOND_FEATURES)
        self.positions = nn.Linear(2, 1)
        self.target = nn.Embedding(4, ATOM_FEATURES)  # three targets and the null token
        for p in self.parameters():
            nn.init.normal_(p, std=0.3)

    def forward(self, x: TensorDict, t: torch.Tensor, cond=None, mask=None) -> TensorDict:
        nodes = x["atoms"].shape[1]
        time = t[:, None, None].expand(-1, nodes, 1)
        bond_sum = x["bonds"].sum((2, 3))[..., None]
        atoms = self.atoms(torch.cat([x["atoms"], time, bond_sum], -1))
        if cond is not None:
            atoms = atoms + self.target(cond)[:, None]
        pair_time = t[:, None, None, None].expand(-1, nodes, nodes, 1)
        bonds = self.bonds(torch.cat([x["bonds"], pair_time], -1))
        scale = self.positions(torch.cat([time, x["atoms"][..., :1]], -1))
        return TensorDict({"positions": x["positions"] * torch.tanh(scale), "atoms": torch.tanh(atoms),
                           "bonds": torch.tanh(bonds)}, batch_size=x.batch_size)


class HintedDenoiser(PartwiseDenoiser):
    """``PartwiseDenoiser`` with a self-conditioning hint on the atoms (``rgdm.diffusion.self_conditioning``),
    its hint weights random so that the hint matters."""

    self_conditioned = True

    def __init__(self) -> None:
        super().__init__()
        self.hint = HintProjection(ATOM_FEATURES + BOND_FEATURES, ATOM_FEATURES)
        nn.init.normal_(self.hint.weight, std=0.3)

    def forward(self, x: TensorDict, t: torch.Tensor, cond=None, mask=None, hint=None, hinted=None) -> TensorDict:
        out = super().forward(x, t, cond, mask)
        if hint is not None:
            features = torch.cat([hint["atoms"], hint["bonds"].sum(2)], -1).clamp(-3, 3)
            out["atoms"] = out["atoms"] + torch.tanh(self.hint(features)) * hinted[:, None, None]
        return out


def make_model(seed: int = 0, self_conditioned: bool = False) -> EpsModel:
    torch.manual_seed(seed)
    return EpsModel(HintedDenoiser() if self_conditioned else PartwiseDenoiser(), diffusion())


def noise(rows: int = 3, seed: int = 0) -> Batch:
    """Random samples on the sample space, with the masks of ``MASK`` repeated."""
    mask = MASK.repeat(math.ceil(rows / 3), 1)[:rows]
    return Batch(diffusion().noise_like(zeros(rows), mask, torch.Generator().manual_seed(seed)), mask)


def data(rows: int = 3) -> Batch:
    """The hand-made molecules, repeated to ``rows`` rows."""
    copies = math.ceil(rows / 3)
    return Batch(MOLECULES.repeat(copies)[:rows], MASK.repeat(copies, 1)[:rows])


def test_edge_noise_is_symmetric_with_a_zero_diagonal_and_no_padding():
    noise = diffusion().noise_like(zeros(), MASK, torch.Generator().manual_seed(0))
    bonds = noise["bonds"]
    assert torch.equal(bonds, bonds.transpose(1, 2))
    assert (bonds.diagonal(dim1=1, dim2=2) == 0).all()
    pairs = MASK[:, :, None] & MASK[:, None, :]
    off_diagonal = ~torch.eye(MASK.shape[1], dtype=torch.bool)
    assert (bonds[~pairs] == 0).all() and (bonds[pairs & off_diagonal] != 0).all()
    assert (noise["atoms"][~MASK] == 0).all() and (noise["positions"][~MASK] == 0).all()
    centre = noise["positions"].sum(1)
    torch.testing.assert_close(centre, torch.zeros_like(centre), atol=1e-6, rtol=0)


def test_every_free_edge_coordinate_is_one_standard_normal():
    noise = diffusion().noise_like(zeros(4000), MASK.repeat(1334, 1)[:4000], torch.Generator().manual_seed(1))
    upper = noise["bonds"][:, 0, 1]  # the pair (0, 1) is real in every molecule
    assert float(upper.var()) == pytest.approx(1.0, abs=0.05)
    assert float(noise["atoms"][:, 0].var()) == pytest.approx(1.0, abs=0.05)


def test_degrees_of_freedom_add_up_over_the_parts():
    atoms = MASK.sum(1)
    expected = (3 * atoms - 3) + ATOM_FEATURES * atoms + BOND_FEATURES * atoms * (atoms - 1) / 2
    torch.testing.assert_close(diffusion().dof(zeros(), MASK), expected.float())


def test_a_step_log_probability_is_the_sum_of_the_parts_log_probabilities():
    process = diffusion()
    x, mean = noise(3, seed=1).x, noise(3, seed=2).x
    std = torch.tensor([0.3, 0.5, 0.9])
    total = process.gaussian_log_prob(x, mean, std, MASK)
    positions = GaussianDiffusion(process.schedule, project=remove_center_of_mass, dof_offset=3)
    plain = GaussianDiffusion(process.schedule)
    upper = torch.triu(torch.ones(MASK.shape[1], MASK.shape[1], dtype=torch.bool), diagonal=1)
    edge_rows = [x["bonds"][row][upper & MASK[row][:, None] & MASK[row][None, :]] for row in range(3)]
    edge_means = [mean["bonds"][row][upper & MASK[row][:, None] & MASK[row][None, :]] for row in range(3)]
    edges = torch.stack([plain.gaussian_log_prob(value.flatten()[None], centre.flatten()[None], std[row:row + 1])[0]
                         for row, (value, centre) in enumerate(zip(edge_rows, edge_means, strict=True))])
    expected = (positions.gaussian_log_prob(x["positions"], mean["positions"], std, MASK)
                + plain.gaussian_log_prob(x["atoms"], mean["atoms"], std, MASK) + edges)
    torch.testing.assert_close(total, expected)


@pytest.mark.parametrize("corrector", [None, LangevinCorrector(0.3)])
def test_reverse_steps_keep_samples_on_the_sample_space(corrector):
    transition = {} if corrector is None else {"transition": corrector}
    out = sample(make_model(), zeros(), steps=10, mask=MASK, generator=torch.Generator().manual_seed(0), **transition)
    assert isinstance(out.x0, TensorDict)
    bonds = out.x0["bonds"]
    torch.testing.assert_close(bonds, bonds.transpose(1, 2))
    assert (bonds.diagonal(dim1=1, dim2=2) == 0).all() and (out.x0["atoms"][~MASK] == 0).all()
    positions = out.x0["positions"]
    scale = float(positions.abs().max())
    torch.testing.assert_close(positions.sum(1), torch.zeros(3, 3), atol=1e-6 * scale, rtol=0)


def test_candidates_of_every_part_stay_inside_the_radius_and_average_to_the_centre():
    process, centre = diffusion(), noise(3).x
    std = torch.tensor([0.2, 0.4, 0.8])
    candidates = explore(process, centre, std, 8, 0.5, MASK, torch.Generator().manual_seed(0))
    assert candidates.batch_size == torch.Size([24])
    offsets = (candidates - centre.repeat(8)) / std.repeat(8)
    norms = process.sum_per_sample(offsets**2, MASK.repeat(8, 1)).sqrt()
    assert (norms <= 0.5 * process.dof(centre, MASK).repeat(8).sqrt() * (1 + 1e-5)).all()
    torch.testing.assert_close(candidates.view(8, 3).mean(0), centre, atol=1e-6, rtol=0)


def constant_reward(samples):
    return [0.7] * len(samples)


@pytest.mark.parametrize("self_conditioned", [False, True])
def test_stepwise_loss_is_the_plain_denoising_loss_for_a_constant_reward(self_conditioned):
    model, batch = make_model(self_conditioned=self_conditioned), data(12)
    expected = denoising_losses(model, batch, torch.Generator().manual_seed(3)).mean()
    scorer = make_scorer(constant_reward, decode=lambda x, mask: list(range(x.shape[0])))
    loss, stats = stepwise_loss(model, model, scorer, batch, torch.Generator().manual_seed(3), candidates=8,
                                radius=0.5, temperature=0.3, center="posterior")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert stats.effective_candidates == pytest.approx(8.0)


def gradient(model: EpsModel, loss: torch.Tensor) -> torch.Tensor:
    parameters = list(model.net.parameters())
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(parameters, grads,
                                                                                       strict=True)])


def test_input_perturbation_noises_the_input_more_and_keeps_the_target():
    """DDPM-IP: at strength 0 nothing more is drawn (the plain rows, the same random stream after them); at
    gamma the input is ``q_sample(x, t, eps + gamma xi)`` with ``xi`` on the sample space, the target ``eps``."""
    model, batch = make_model(), data(6)
    plain_generator, zero_generator = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    plain = DenoisingRows.draw(batch, model.diffusion, plain_generator)
    zero = DenoisingRows.draw(batch, model.diffusion, zero_generator, input_perturbation=0.0)
    assert zero.perturbation is None and torch.equal(zero.t, plain.t) and (zero.noise == plain.noise).all()
    assert torch.equal(torch.rand(1, generator=zero_generator), torch.rand(1, generator=plain_generator))

    perturbed = DenoisingRows.draw(batch, model.diffusion, torch.Generator().manual_seed(2), input_perturbation=0.1)
    assert torch.equal(perturbed.t, plain.t) and (perturbed.noise == plain.noise).all()
    xi = perturbed.perturbation / 0.1
    assert_on_the_sample_space(xi, batch.mask)
    positions = xi["positions"] * batch.mask[..., None]
    torch.testing.assert_close(positions.sum(1), torch.zeros(6, 3), atol=1e-5, rtol=0)
    assert 0.5 < float(xi["atoms"][batch.mask].std()) < 1.5

    xt = model.diffusion.q_sample(batch.x, perturbed.t, plain.noise + perturbed.perturbation)
    expected = noise_error(model.diffusion, model(xt, perturbed.t, None, batch.mask), plain.noise, batch.mask)
    torch.testing.assert_close(perturbed.losses(model), expected)
    assert not torch.allclose(perturbed.losses(model), plain.losses(model))
    half = perturbed.select(slice(0, 3))
    assert torch.equal(half.perturbation["bonds"], perturbed.perturbation["bonds"][:3])


def test_pretraining_draws_its_rows_with_its_input_perturbation():
    ctx, generator = graph_context(), torch.Generator().manual_seed(0)
    assert Pretrain().draw_rows(ctx, 0, generator).perturbation is None
    rows = Pretrain(0.1).draw_rows(ctx, 0, generator)
    assert rows.perturbation is not None and len(rows.perturbation) == ctx.batch_size


@pytest.mark.parametrize("self_conditioned", [False, True])
@pytest.mark.parametrize("loss", ["denoising", "perturbed", "stepwise"])
def test_two_shards_add_up_to_the_whole_batch_gradient(loss, self_conditioned):
    """Data parallelism: each process's rows, scaled as ``Shard.mean`` does, sum to the one-process gradient."""
    model, batch = make_model(self_conditioned=self_conditioned), data(12)
    scorer = make_scorer(lambda samples: [float(i % 5) for i in samples],
                         decode=lambda x, mask: [int(v * 1e3) % 7 for v in x["atoms"].sum((1, 2)).tolist()])

    stepwise = StepwiseLoss(candidates=4, radius=0.5, temperature=0.3, center="reference")

    def compute(shard: Shard) -> torch.Tensor:
        generator = torch.Generator().manual_seed(4)
        if loss != "stepwise":
            rows = DenoisingRows.draw(batch, model.diffusion, generator, 0.1 if loss == "perturbed" else 0.0)
            return shard.mean(rows.select(shard.rows(len(rows))).losses(model), len(rows))
        rows = stepwise.draw(batch, model.diffusion, generator)
        return shard.mean(stepwise(model, model, scorer, rows.select(shard.rows(len(rows))))[0], len(rows))

    whole = gradient(model, compute(Shard()))
    parts = sum(gradient(model, compute(Shard(rank, 2))) for rank in range(2)) / 2
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-7)


def atom_sum(x: TensorDict, mask=None) -> list[float]:
    """The decoded 'object' of a sample: the sum of its atom features (a black-box reward reads it)."""
    return x["atoms"].sum((1, 2)).tolist()


def graph_context(counter: RewardCounter | None = None, targets: list[int] | None = None,
                  self_conditioned: bool = False) -> TrainingContext:
    model, reference = make_model(0, self_conditioned), make_model(1, self_conditioned)
    counter = counter or RewardCounter()
    scorer = Scorer(BlackBoxReward(lambda values: values, counter=counter), atom_sum, counter,
                    lambda x, cond: x["atoms"].sum((1, 2)))
    prior = lambda n, generator, cond: Batch(zeros(n), MASK.repeat(n, 1)[:n], cond)  # noqa: E731
    return TrainingContext(model=model, ema=model, reference=reference, data=data(24), scorer=scorer, batch_size=6,
                           prior=prior, targets=targets)


ALGORITHMS = {
    "rgdm-data": lambda: DataPayoff(0.3, anchor=0.5),
    "rgdm-model": lambda: ModelPayoff(0.3, total_steps=4, rounds=2, buffer_size=8, sample_steps=5, anchor=0.5),
    "rgdm-stepwise": lambda: StepwiseExploration(0.3, candidates=4, anchor=0.5),
    "rwr": lambda: RWR(0.3, total_steps=4, rounds=2, buffer_size=8, sample_steps=5),
    "ddpo": lambda: DDPO(batch_trajectories=4, sample_steps=4, minibatch=4),
    "cfg": lambda: ConditionalFinetune(num_classes=3, null_token=3),
}


@pytest.mark.parametrize("self_conditioned", [False, True])
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_training_algorithm_trains_on_multi_part_samples_and_keeps_its_state(name, self_conditioned):
    ctx = graph_context(self_conditioned=self_conditioned)
    algorithm = ALGORITHMS[name]()
    generator = torch.Generator().manual_seed(0)
    algorithm.setup(ctx, generator)
    for step in range(4):
        loss, _ = algorithm.loss(ctx, step, generator)
        grads = torch.autograd.grad(loss, list(ctx.model.net.parameters()), allow_unused=True)
        assert torch.isfinite(loss) and any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    state = algorithm.state_tensors()
    restored = ALGORITHMS[name]()
    restored.load_state_tensors(unflatten_parts(flatten_parts(state)))
    for key, value in restored.state_tensors().items():
        assert (value == state[key]).all(), f"{name}: {key} survives a checkpoint"


def assert_on_the_sample_space(x: TensorDict, mask: torch.Tensor) -> None:
    bonds = x["bonds"]
    assert torch.isfinite(bonds).all() and torch.equal(bonds, bonds.transpose(1, 2))
    assert (bonds.diagonal(dim1=1, dim2=2) == 0).all() and (x["atoms"][~mask] == 0).all()


class AtomSumRegressor(nn.Module):
    """A noise-aware regressor of the reward (the atom-feature sum) for classifier guidance."""

    def forward(self, x: TensorDict, t, cond=None, mask=None) -> torch.Tensor:
        return x["atoms"].sum((1, 2)) * (1 - t)


@pytest.mark.parametrize("self_conditioned", [False, True])
@pytest.mark.parametrize("guidance", ["select", "svdd", "gradient", "classifier"])
def test_guided_sampling_keeps_multi_part_samples_on_the_sample_space_and_raises_the_reward(guidance,
                                                                                         self_conditioned):
    ctx = graph_context(self_conditioned=self_conditioned)
    transition = {"select": lambda: GreedySelection(ctx.scorer, candidates=4, temperature=0.05),
                  "svdd": lambda: svdd(ctx.scorer, candidates=4),
                  "gradient": lambda: GradientStep(ctx.scorer, temperature=0.05, radius=0.5),
                  "classifier": lambda: ClassifierGuidance(AtomSumRegressor(), scale=5.0)}[guidance]()
    mask = MASK.repeat(20, 1)

    def draw(transition_or_none):
        extra = {} if transition_or_none is None else {"transition": transition_or_none}
        return sample(ctx.model, zeros(60), steps=10, mask=mask, generator=torch.Generator().manual_seed(0),
                      **extra).x0

    guided, plain = draw(transition), draw(None)
    assert_on_the_sample_space(guided, mask)
    assert sum(atom_sum(guided)) > sum(atom_sum(plain))


def test_a_self_conditioned_model_runs_twice_and_hints_the_second_pass_with_the_first_estimate():
    """``eps_theta(x_t, t)`` of a self-conditioned network: a first pass without a hint, then a second
    hinted by the first's Tweedie estimate at the same ``(x_t, t)``; training hints the rows of even ``t``."""
    model = make_model(self_conditioned=True)
    calls, forward = [], model.net.forward

    def recording(x, t, cond=None, mask=None, hint=None, hinted=None):
        out = forward(x, t, cond, mask, hint, hinted)
        calls.append((hint, hinted, out))
        return out

    model.net.forward = recording
    batch, t = noise(6), torch.tensor([3, 4, 10, 11, 20, 49])
    with torch.no_grad():
        eps = model(batch.x, t, None, batch.mask)
    assert model.evaluations == 12 and len(calls) == 2 and calls[0][0] is None
    first = model.diffusion.onto_sample_space(calls[0][2], batch.mask)
    hint, hinted, _ = calls[1]
    assert hinted.all()
    for part in ("positions", "atoms", "bonds"):
        torch.testing.assert_close(hint[part], model.diffusion.x0_from_eps(batch.x, t, first)[part])
    calls.clear()
    model.chunk_elements = 1  # one row a call: the same predictions
    with torch.no_grad():
        chunked = model(batch.x, t, None, batch.mask)
    assert len(calls) == 12
    for part in ("positions", "atoms", "bonds"):
        torch.testing.assert_close(chunked[part], eps[part], rtol=0, atol=0)
    calls.clear()
    denoising_loss(model, batch.x, t, noise(6, seed=1).x, None, batch.mask)
    assert calls[-1][1].tolist() == [False, True, True, False, True, False]
