"""The policy peers: DDPO (PPO-clip on the reverse-process log-probabilities) and reward-weighted regression."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from toolkit import make_scorer, right_half, right_half_shares
from torch import nn

from rgdm.algorithms.base import TrainingContext
from rgdm.algorithms.ddpo import DDPO, clipped_surrogate
from rgdm.algorithms.rgdm_model import ModelPayoff
from rgdm.algorithms.rwr import RWR
from rgdm.batch import Batch
from rgdm.diffusion import EpsModel, GaussianDiffusion, NoiseSchedule
from rgdm.domains.toy.network import MLPDenoiser
from rgdm.rewards import RewardCounter


def first_node_x(samples):
    return [float(s[0, 0]) for s in samples]


def toy_model(seed: int = 0) -> EpsModel:
    torch.manual_seed(seed)
    net = MLPDenoiser(2, num_targets=3, width=32, depth=2)
    for p in net.parameters():  # the zero-initialised output layer would hide differences
        nn.init.normal_(p, std=0.1)
    return EpsModel(net, GaussianDiffusion(NoiseSchedule.create("linear", 20)))


class SetNet(nn.Module):
    """A tiny per-node network for masked, variable-size samples ``(batch, nodes, 3)`` with targets."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.embed = nn.Embedding(3, 3)

    def forward(self, x, t, cond, mask):
        h = torch.cat([x, t.view(-1, 1, 1).expand(*x.shape[:2], 1)], -1)
        return self.linear(h) + self.embed(cond)[:, None]


def zero_centre(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero centre of mass over the unmasked nodes (linear and idempotent)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return x - (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True) * m


def set_model(seed: int = 0) -> EpsModel:
    torch.manual_seed(seed)
    diffusion = GaussianDiffusion(NoiseSchedule.create("linear", 20), project=zero_centre, dof_offset=3)
    return EpsModel(SetNet(), diffusion)


def set_prior(n: int, generator: torch.Generator, cond: torch.Tensor | None) -> Batch:
    counts = torch.randint(2, 5, (n,), generator=generator)
    return Batch(torch.zeros(n, 4, 3), torch.arange(4) < counts[:, None], cond)


def make_context(kind: str, model: EpsModel, counter: RewardCounter | None = None) -> TrainingContext:
    """A toy 2-D problem (unconditional) or a masked, conditional set problem with a projection."""
    if kind == "toy":
        return TrainingContext(model=model, ema=model, reference=None, data=Batch(torch.zeros(4, 2)),
                               scorer=make_scorer(right_half, counter), batch_size=8,
                               prior=lambda n, g, cond: Batch(torch.zeros(n, 2), cond=cond))
    decode = lambda x, mask: [x[i, mask[i]].numpy() for i in range(len(x))]  # noqa: E731
    return TrainingContext(model=model, ema=model, reference=None, data=Batch(torch.zeros(4, 4, 3)),
                           scorer=make_scorer(first_node_x, counter, decode), batch_size=8,
                           prior=set_prior, targets=[0, 1, 2])


MAKE_MODEL = {"toy": toy_model, "set": set_model}


def train(algorithm, context, optimizer, generator, steps):
    losses = []
    for step in steps:
        loss, _ = algorithm.loss(context, step, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().clone())
    return losses


@pytest.mark.parametrize(("make_algorithm", "steps"), [
    (lambda: DDPO(batch_trajectories=64, sample_steps=10, minibatch=64), 36),
    (lambda: RWR(temperature=0.3, total_steps=100, rounds=2, buffer_size=500, sample_steps=20), 100),
], ids=["ddpo", "rwr"])
def test_each_policy_peer_raises_the_reward(pretrained_gaussian, make_algorithm, steps):
    before, after = right_half_shares(pretrained_gaussian, make_algorithm(), steps)
    assert after > before + 0.15


@pytest.mark.parametrize("kind", ["toy", "set"])
def test_ddpo_ratio_is_exactly_one_on_the_first_update_after_each_refresh(kind):
    model = MAKE_MODEL[kind]()
    context = make_context(kind, model)
    algorithm = DDPO(batch_trajectories=12, sample_steps=4, minibatch=10)  # 36 pairs: 4 updates an epoch
    optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    first_updates = 0
    for step in range(20):
        refreshes = algorithm.cursor >= algorithm.order.numel()
        loss, stats = algorithm.loss(context, step, generator)
        if refreshes:
            first_updates += 1
            first = algorithm.order[:10]
            assert stats["approx_kl"] == 0.0 and stats["clip_fraction"] == 0.0
            # ratio 1 makes the surrogate -A exactly, reduced as the shard reduces it (sum times 1/n)
            assert torch.equal(loss.detach(), (-algorithm.advantages[first % 12]).sum() * (1 / 10))
        else:
            assert stats["approx_kl"] > 0  # the weights have moved since the refresh
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first_updates == 3


def test_clipped_surrogate_has_no_gradient_once_the_ratio_left_the_range_along_its_advantage():
    ratios = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5, 0.5, 0.9, 1.0, 1.1, 1.5])
    advantages = torch.tensor([1.0] * 5 + [-1.0] * 5)
    old = torch.randn(10)
    log_probs = (old + ratios.log()).requires_grad_()
    clipped_surrogate(log_probs, old, advantages, clip=0.2).sum().backward()
    # A > 0 above 1.2 and A < 0 below 0.8 are clipped; everything else gets -ratio * A
    outside = torch.tensor([False, False, False, False, True, True, False, False, False, False])
    assert (log_probs.grad[outside] == 0).all()
    torch.testing.assert_close(log_probs.grad[~outside], -(ratios * advantages)[~outside])


def test_ddpo_update_has_no_gradient_when_every_pair_is_clipped_along_its_advantage():
    model = toy_model()
    context = make_context("toy", model)
    algorithm = DDPO(batch_trajectories=16, sample_steps=5, minibatch=32)
    algorithm.refresh(context, torch.Generator().manual_seed(0))
    advantages = algorithm.advantages.repeat(algorithm.steps.numel())
    assert (advantages != 0).all()
    # log ratio +1 where A > 0, -1 where A < 0: every ratio is outside [0.8, 1.2] along its advantage
    algorithm.old_log_probs = algorithm.old_log_probs - advantages.sign()
    loss, stats = algorithm.loss(context, 0, torch.Generator().manual_seed(1))
    loss.backward()
    assert stats["clip_fraction"] == 1.0
    assert all((p.grad == 0).all() for p in model.net.parameters())


def test_ddpo_charges_one_reward_call_per_trajectory_and_trains_only_stochastic_steps():
    counter = RewardCounter()
    model = toy_model()
    context = make_context("toy", model, counter)
    algorithm = DDPO(batch_trajectories=16, sample_steps=5, inner_epochs=2, minibatch=24)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    updates_per_refresh = 2 * math.ceil(16 * 4 / 24)  # 4 stochastic steps, the last one is deterministic
    for step in range(3 * updates_per_refresh):
        loss, stats = algorithm.loss(context, step, generator)
        assert counter.calls == 16 * (step // updates_per_refresh + 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert algorithm.timesteps.tolist() == [20, 16, 12, 8, 4, 0]
    assert algorithm.steps.tolist() == [0, 1, 2, 3]
    assert stats["reward"] == pytest.approx(right_half(algorithm.states[-16:].numpy()).mean())
    assert counter.calls == 3 * 16


@pytest.mark.parametrize("kind", ["toy", "set"])
@pytest.mark.parametrize("split", [3, 8])  # inside a buffer, and right at a refresh
def test_ddpo_resumes_exactly(tmp_path, kind, split):
    total = 14

    def build():
        model = MAKE_MODEL[kind]()
        optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-2)
        return model, make_context(kind, model), optimizer, DDPO(batch_trajectories=12, sample_steps=4,
                                                                 minibatch=9)  # 8 updates a buffer

    straight_model, context, optimizer, algorithm = build()
    generator = torch.Generator().manual_seed(0)
    straight = train(algorithm, context, optimizer, generator, range(total))

    model, context, optimizer, algorithm = build()
    generator = torch.Generator().manual_seed(0)
    first = train(algorithm, context, optimizer, generator, range(split))
    save_file(algorithm.state_tensors(), tmp_path / "algorithm.safetensors")
    saved = (copy.deepcopy(model.net.state_dict()), copy.deepcopy(optimizer.state_dict()), generator.get_state())

    model, context, optimizer, algorithm = build()
    model.net.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    generator = torch.Generator()
    generator.set_state(saved[2])
    algorithm.load_state_tensors(load_file(tmp_path / "algorithm.safetensors"))
    resumed = first + train(algorithm, context, optimizer, generator, range(split, total))

    assert len(set(map(float, straight))) > 1
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    for name, value in straight_model.net.state_dict().items():
        assert torch.equal(value, model.net.state_dict()[name]), name


def test_rwr_weights_are_softmax_at_the_full_temperature_every_round():
    counter = RewardCounter()
    model = toy_model()
    context = make_context("toy", model, counter)
    algorithm = RWR(temperature=0.25, total_steps=8, rounds=4, buffer_size=32, sample_steps=5)
    assert isinstance(algorithm, ModelPayoff) and algorithm.anchor == 0.0
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    for step in range(8):
        loss, _ = algorithm.loss(context, step, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rewards = torch.as_tensor(right_half(algorithm.buffer.x.numpy()), dtype=torch.float32)
        assert 0 < rewards.mean() < 1
        torch.testing.assert_close(algorithm.weights, torch.softmax(rewards / 0.25, 0))
        assert not torch.allclose(algorithm.weights, torch.softmax(rewards / (0.25 * 4), 0))
        assert counter.calls == 32 * (step // 2 + 1)
