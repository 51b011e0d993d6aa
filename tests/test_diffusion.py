"""Schedules, the Gaussian process maths and the samplers of ``rgdm.diffusion``.

Each closed form is checked against an independent computation (cumulative products, Bayes' rule
for Gaussians, ``torch.distributions.Normal``), in float64 where precision matters.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rgdm.diffusion import (
    EpsModel,
    GaussianDiffusion,
    LangevinCorrector,
    NoiseSchedule,
    sample,
    timestep_pairs,
)
from rgdm.diffusion.schedule import cosine_alpha_bar, linear_alpha_bar, polynomial_alpha_bar

SCHEDULES = ("linear", "cosine", "polynomial")
F64 = torch.float64


def make_diffusion(name: str = "cosine", timesteps: int = 100, dof_offset: int = 0) -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.create(name, timesteps), dof_offset=dof_offset)


# --------------------------------------------------------------------------------------------------
# schedules


@pytest.mark.parametrize("timesteps", [50, 100, 1000])
def test_linear_alpha_bar_is_cumprod_of_documented_betas(timesteps: int) -> None:
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 2e-2, timesteps, dtype=F64)
    expected = torch.cat([torch.ones(1, dtype=F64), torch.cumprod(1 - betas, 0)])
    schedule = NoiseSchedule.create("linear", timesteps)
    torch.testing.assert_close(schedule.alpha_bar, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.betas[1:], betas, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(linear_alpha_bar(timesteps), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("timesteps", [2, 10, 100, 1000])
def test_cosine_alpha_bar_matches_closed_form_where_unclipped(timesteps: int) -> None:
    offset, max_beta = 8e-3, 0.999

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t / timesteps + offset) / (1 + offset) * math.pi / 2) ** 2

    t = torch.arange(timesteps + 1, dtype=F64)
    closed = f(t) / f(torch.zeros(1, dtype=F64))
    raw_betas = 1 - f(t[1:]) / f(t[:-1])
    # alpha_bar[t] follows the closed form while no beta up to t has been clipped.
    unclipped = torch.cat([torch.ones(1, dtype=torch.bool), torch.cumprod(raw_betas <= max_beta, 0).bool()])
    assert unclipped[: timesteps // 2 + 1].all()
    alpha_bar = NoiseSchedule.create("cosine", timesteps).alpha_bar
    torch.testing.assert_close(alpha_bar[unclipped], closed[unclipped], rtol=1e-10, atol=1e-14)
    assert alpha_bar[0] == 1.0
    # where clipping happened the beta is exactly the clip value
    betas = NoiseSchedule(alpha_bar).betas[1:]
    clipped = raw_betas > max_beta
    torch.testing.assert_close(betas[clipped], torch.full_like(betas[clipped], max_beta))
    torch.testing.assert_close(cosine_alpha_bar(timesteps), alpha_bar)


@pytest.mark.parametrize("timesteps", [2, 3, 10, 100, 1000])
def test_polynomial_alpha_bar_is_clean_at_zero_decreasing_and_bounded(timesteps: int) -> None:
    precision = 1e-5
    alpha_bar = NoiseSchedule.create("polynomial", timesteps).alpha_bar
    assert alpha_bar.shape == (timesteps + 1,)
    assert alpha_bar.dtype == F64
    assert alpha_bar[0] == 1.0
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert (alpha_bar >= precision).all()
    assert (alpha_bar <= 1).all()
    torch.testing.assert_close(polynomial_alpha_bar(timesteps, precision=precision), alpha_bar)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("timesteps", [25, 50, 100, 1000])
def test_betas_are_in_open_unit_interval(name: str, timesteps: int) -> None:
    schedule = NoiseSchedule.create(name, timesteps)
    betas = schedule.betas
    assert betas.shape == (timesteps + 1,)
    assert betas[0] == 0
    assert ((betas[1:] > 0) & (betas[1:] < 1)).all(), betas
    assert ((schedule.alpha_bar > 0) & (schedule.alpha_bar <= 1)).all()
    assert schedule.timesteps == timesteps


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["cosine", "polynomial"]), timesteps=st.integers(2, 3000))
def test_betas_in_unit_interval_for_any_length(name: str, timesteps: int) -> None:
    betas = NoiseSchedule.create(name, timesteps).betas[1:]
    assert ((betas > 0) & (betas < 1)).all()


@pytest.mark.parametrize("timesteps", [2, 10, 20])
def test_linear_betas_valid_for_short_schedules(timesteps: int) -> None:
    schedule = NoiseSchedule.create("linear", timesteps)
    betas = schedule.betas[1:]
    assert ((betas > 0) & (betas < 1)).all(), betas
    assert (schedule.alpha_bar > 0).all(), schedule.alpha_bar


def test_unknown_schedule_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="sigmoid") as info:
        NoiseSchedule.create("sigmoid", 100)  # type: ignore[arg-type]
    for name in SCHEDULES:
        assert name in str(info.value)


def test_too_few_timesteps_rejected() -> None:
    with pytest.raises(ValueError, match="timesteps"):
        NoiseSchedule.create("cosine", 1)


def test_schedule_at_broadcasts_over_batch() -> None:
    schedule = NoiseSchedule.create("cosine", 10)
    like = torch.zeros(3, 4, 5)
    t = torch.tensor([0, 5, 10])
    out = schedule.at(schedule.alpha_bar, t, like)
    assert out.shape == (3, 1, 1)
    assert out.dtype == like.dtype
    torch.testing.assert_close(out.flatten(), schedule.alpha_bar[t].float())


# --------------------------------------------------------------------------------------------------
# forward process, posterior, reverse steps


def bayes_posterior(
    abar: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: int, s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """q(x_s | x_t, x_0) by Bayes: prior N(sqrt(abar_s) x0, 1-abar_s), likelihood N(sqrt(a) x_s, 1-a)."""
    a = abar[t] / abar[s]  # alpha_{t|s}; for s = t-1 this is alpha_t = 1 - beta_t
    var = 1 / (1 / (1 - abar[s]) + a / (1 - a))
    mean = var * (abar[s].sqrt() * x0 / (1 - abar[s]) + a.sqrt() * xt / (1 - a))
    return mean, var


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_matches_bayes(name: str) -> None:
    diffusion = make_diffusion(name, 50)
    abar = diffusion.schedule.alpha_bar
    gen = torch.Generator().manual_seed(0)
    for t_int in (2, 3, 17, 49, 50):
        x0 = torch.randn(4, 6, dtype=F64, generator=gen)
        xt = torch.randn(4, 6, dtype=F64, generator=gen)
        t = torch.full((4,), t_int)
        mean, var = diffusion.posterior(x0, xt, t)
        exp_mean, exp_var = bayes_posterior(abar, x0, xt, t_int, t_int - 1)
        torch.testing.assert_close(mean, exp_mean, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(var.flatten(), exp_var.expand(4), rtol=1e-9, atol=1e-14)


def test_posterior_at_t1_is_the_clean_sample() -> None:
    diffusion = make_diffusion("cosine", 20)
    x0, xt = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    mean, var = diffusion.posterior(x0, xt, torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()


def test_tweedie_inverts_q_sample() -> None:
    diffusion = make_diffusion("cosine", 100)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, 2, dtype=F64, generator=gen)
    eps = torch.randn(8, 3, 2, dtype=F64, generator=gen)
    t = torch.randint(1, 101, (8,), generator=gen)
    xt = diffusion.q_sample(x0, t, eps)
    torch.testing.assert_close(diffusion.x0_from_eps(xt, t, eps), x0, rtol=1e-9, atol=1e-9)
    abar = diffusion.schedule.alpha_bar[t].view(-1, 1, 1)
    torch.testing.assert_close(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)


@pytest.mark.parametrize("name", SCHEDULES)
def test_ddpm_reverse_step_with_true_noise_is_the_posterior(name: str) -> None:
    diffusion = make_diffusion(name, 50)
    gen = torch.Generator().manual_seed(2)
    for t_int in (1, 2, 10, 33, 50):
        x0 = torch.randn(5, 4, dtype=F64, generator=gen)
        eps = torch.randn(5, 4, dtype=F64, generator=gen)
        t = torch.full((5,), t_int)
        xt = diffusion.q_sample(x0, t, eps)
        step = diffusion.reverse_step(xt, t, t - 1, eps, eta=1.0)
        mean, var = diffusion.posterior(x0, xt, t)
        torch.testing.assert_close(step.mean, mean, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(step.std**2, var, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(step.x0_hat, x0, rtol=1e-8, atol=1e-8)
        assert step.eps is eps


def test_strided_reverse_step_eta1_is_bayes_posterior_of_the_skip() -> None:
    diffusion = make_diffusion("cosine", 100)
    abar = diffusion.schedule.alpha_bar
    gen = torch.Generator().manual_seed(3)
    for t_int, s_int in ((100, 80), (57, 3), (10, 1)):
        x0 = torch.randn(3, 5, dtype=F64, generator=gen)
        eps = torch.randn(3, 5, dtype=F64, generator=gen)
        t, s = torch.full((3,), t_int), torch.full((3,), s_int)
        xt = diffusion.q_sample(x0, t, eps)
        step = diffusion.reverse_step(xt, t, s, eps, eta=1.0)
        mean, var = bayes_posterior(abar, x0, xt, t_int, s_int)
        torch.testing.assert_close(step.mean, mean, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(step.std.flatten() ** 2, var.expand(3), rtol=1e-8, atol=1e-12)


def test_ddim_eta0_is_deterministic_and_hits_x0_at_s0() -> None:
    diffusion = make_diffusion("linear", 100)
    x0, eps = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    t = torch.full((4,), 60)
    xt = diffusion.q_sample(x0, t, eps)
    step = diffusion.reverse_step(xt, t, torch.full((4,), 20), eps, eta=0.0)
    assert (step.std == 0).all()
    # with the true noise the DDIM step lands exactly on q_sample(x0, s, eps)
    torch.testing.assert_close(step.mean, diffusion.q_sample(x0, torch.full((4,), 20), eps))
    last = diffusion.reverse_step(xt, t, torch.zeros(4, dtype=torch.long), eps, eta=0.0)
    torch.testing.assert_close(last.mean, x0)


# --------------------------------------------------------------------------------------------------
# Gaussian log-probabilities


def test_gaussian_log_prob_matches_torch_normal() -> None:
    diffusion = make_diffusion()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, 3, dtype=F64, generator=gen)
    mean = torch.randn(6, 4, 3, dtype=F64, generator=gen)
    std = torch.rand(6, dtype=F64, generator=gen) + 0.1
    expected = torch.distributions.Normal(mean, std.view(6, 1, 1)).log_prob(x).sum((1, 2))
    for std_shape in ((6,), (6, 1, 1), (6, 1)):
        out = diffusion.gaussian_log_prob(x, mean, std.view(std_shape))
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert diffusion.gaussian_log_prob(x, mean, std).shape == (6,)


def test_gaussian_log_prob_with_mask_ignores_padding() -> None:
    diffusion = make_diffusion()
    gen = torch.Generator().manual_seed(5)
    batch, nodes = 4, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    x = torch.randn(batch, nodes, 3, dtype=F64, generator=gen)
    mean = torch.randn(batch, nodes, 3, dtype=F64, generator=gen)
    std = torch.rand(batch, 1, 1, dtype=F64, generator=gen) + 0.2
    terms = torch.distributions.Normal(mean, std).log_prob(x) * mask.unsqueeze(-1)
    expected = terms.sum((1, 2))
    out = diffusion.gaussian_log_prob(x, mean, std, mask)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)

    # garbage in padded entries changes nothing
    pad = (1 - mask).unsqueeze(-1).to(F64)
    x_garbage = x + 1e3 * pad * torch.randn(x.shape, dtype=F64, generator=gen)
    mean_garbage = mean - 7.0 * pad
    torch.testing.assert_close(diffusion.gaussian_log_prob(x_garbage, mean_garbage, std, mask), out)

    # the dimension count is the masked count: x == mean leaves only the normalising constant
    at_mean = diffusion.gaussian_log_prob(mean, mean, std, mask)
    count = 3 * mask.sum(1).to(F64)
    torch.testing.assert_close(diffusion.dof(x, mask), count)
    torch.testing.assert_close(at_mean, -count * (std.flatten().log() + 0.5 * math.log(2 * math.pi)))


def test_gaussian_log_prob_dof_offset_shrinks_the_constant() -> None:
    plain, offset = make_diffusion(dof_offset=0), make_diffusion(dof_offset=3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    x, mean = torch.randn(2, 4, 3, dtype=F64), torch.randn(2, 4, 3, dtype=F64)
    std = torch.tensor([0.3, 1.7], dtype=F64)
    torch.testing.assert_close(offset.dof(x, mask), torch.tensor([6.0, 9.0], dtype=F64))
    difference = offset.gaussian_log_prob(x, mean, std, mask) - plain.gaussian_log_prob(x, mean, std, mask)
    torch.testing.assert_close(difference, 3 * (std.log() + 0.5 * math.log(2 * math.pi)))


# --------------------------------------------------------------------------------------------------
# timestep pairs


@pytest.mark.parametrize("timesteps", [2, 7, 100])
def test_ddpm_pairs_are_every_step(timesteps: int) -> None:
    expected = [(t, t - 1) for t in range(timesteps, 0, -1)]
    assert timestep_pairs(timesteps) == expected
    assert timestep_pairs(timesteps, timesteps) == expected


@settings(max_examples=100, deadline=None)
@given(data=st.data(), timesteps=st.integers(1, 5000))
def test_ddim_pairs_are_strided_from_T_to_0(data: st.DataObject, timesteps: int) -> None:
    steps = data.draw(st.integers(1, timesteps))
    pairs = timestep_pairs(timesteps, steps)
    assert len(pairs) == steps
    assert pairs[0][0] == timesteps
    assert pairs[-1][1] == 0
    flat = [pairs[0][0]] + [s for _, s in pairs]
    assert all(a > b for a, b in itertools.pairwise(flat)), pairs
    assert all(pairs[i][1] == pairs[i + 1][0] for i in range(steps - 1))
    assert all(isinstance(v, int) for pair in pairs for v in pair)


@pytest.mark.parametrize("steps", [0, -1, 11, 1000])
def test_invalid_step_counts_raise(steps: int) -> None:
    with pytest.raises(ValueError, match="steps"):
        timestep_pairs(10, steps)


# --------------------------------------------------------------------------------------------------
# sampling


class ZeroNet(nn.Module):
    """Predicts zero noise; records the arguments of its last call."""

    def __init__(self) -> None:
        super().__init__()
        self.last_t: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor | None):
        self.last_t = t
        return torch.zeros_like(x)


class GaussianEpsNet(nn.Module):
    """The exact noise predictor for data N(mu, s^2) in every coordinate."""

    def __init__(self, schedule: NoiseSchedule, mu: float, s: float) -> None:
        super().__init__()
        self.alpha_bar = schedule.alpha_bar
        self.timesteps = schedule.timesteps
        self.mu, self.s = mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor | None):
        index = (t.to(F64) * self.timesteps).round().long()
        abar = self.alpha_bar[index].view(-1, *([1] * (x.dim() - 1)))
        x64 = x.to(F64)
        eps = (1 - abar).sqrt() * (x64 - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)
        return eps.to(x.dtype)


def test_sample_shape_determinism_and_records() -> None:
    diffusion = make_diffusion("cosine", 20)
    model = EpsModel(ZeroNet(), diffusion)
    out = sample(model, (3, 2), generator=torch.Generator().manual_seed(0))
    assert out.x0.shape == (3, 2)
    assert out.trajectory is None
    assert torch.isfinite(out.x0).all()
    assert model.evaluations == 3 * 20

    again = sample(model, (3, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.x0, out.x0, rtol=0, atol=0)
    other = sample(model, (3, 2), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.x0, out.x0)

    recorded = sample(model, (3, 2), generator=torch.Generator().manual_seed(0), record=True)
    trajectory = recorded.trajectory
    assert trajectory is not None
    assert len(trajectory.states) == 21
    assert trajectory.timesteps == list(range(20, -1, -1))
    assert all(state.shape == (3, 2) for state in trajectory.states)
    torch.testing.assert_close(trajectory.states[-1], recorded.x0)
    torch.testing.assert_close(recorded.x0, out.x0, rtol=0, atol=0)


def test_ddim_sample_counts_strided_evaluations() -> None:
    diffusion = make_diffusion("linear", 50)
    net = ZeroNet()
    model = EpsModel(net, diffusion)
    out = sample(model, (4, 3), steps=5, eta=0.0, generator=torch.Generator().manual_seed(0), record=True)
    assert model.evaluations == 4 * 5
    assert out.trajectory is not None
    assert out.trajectory.timesteps == [50, 40, 30, 20, 10, 0]
    assert len(out.trajectory.states) == 6
    # the network sees t / T, here for the last step t = 10
    assert net.last_t is not None
    torch.testing.assert_close(net.last_t, torch.full((4,), 10 / 50))


def test_sample_from_a_noisy_state_denoises_from_its_time() -> None:
    diffusion = make_diffusion("cosine", 50)
    model = EpsModel(ZeroNet(), diffusion)
    noisy = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    out = sample(model, noisy, start=20, steps=4, generator=torch.Generator().manual_seed(1), record=True)
    assert out.trajectory is not None
    assert out.trajectory.timesteps == [20, 15, 10, 5, 0]
    torch.testing.assert_close(out.trajectory.states[0], noisy, rtol=0, atol=0)
    assert model.evaluations == 4 * 4
    with pytest.raises(ValueError, match="start"):
        sample(model, noisy, start=51)
    with pytest.raises(ValueError, match="start"):
        sample(model, (4, 3), start=10)


def test_sample_with_mask_keeps_padding_zero() -> None:
    diffusion = make_diffusion("cosine", 10)
    model = EpsModel(ZeroNet(), diffusion)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = sample(model, (2, 4, 3), mask=mask, generator=torch.Generator().manual_seed(0), record=True)
    assert out.x0.shape == (2, 4, 3)
    assert out.trajectory is not None
    for state in out.trajectory.states:
        assert (state[0, 2:] == 0).all()
    assert (out.x0[0, :2] != 0).all()


def test_eps_model_counts_rows_and_masks() -> None:
    diffusion = make_diffusion("cosine", 10)

    class OnesNet(nn.Module):
        def forward(self, x, t, cond, mask):
            return torch.ones_like(x)

    model = EpsModel(OnesNet(), diffusion)
    mask = torch.tensor([[1, 0], [1, 1], [0, 0]])
    eps = model(torch.randn(3, 2, 3), torch.full((3,), 4), None, mask)
    assert model.evaluations == 3
    torch.testing.assert_close(eps, mask.unsqueeze(-1).float().expand(3, 2, 3))
    model(torch.randn(5, 2, 3), torch.full((5,), 4))
    assert model.evaluations == 8


def sampler_moments(
    schedule: NoiseSchedule, mu: float, s: float, steps: int | None, eta: float
) -> tuple[float, float]:
    """Exact mean and std of the sampler's x_0 for N(mu, s^2) data with the exact eps, from x_T ~ N(0, 1).

    Every step is affine in x_t plus independent noise, so the moments follow a scalar recursion
    (written out here from Song et al., eq. 12, independently of ``reverse_step``).
    """
    ab = schedule.alpha_bar.tolist()
    mean, var = 0.0, 1.0
    for t, u in timestep_pairs(schedule.timesteps, steps):
        at, au = ab[t], ab[u]
        c = math.sqrt(1 - at) / (at * s**2 + 1 - at)  # eps = c (x - sqrt(at) mu)
        sigma2 = eta**2 * (1 - au) / (1 - at) * (1 - at / au)
        g = math.sqrt(max(1 - au - sigma2, 0.0))
        # x0_hat = (x - sqrt(1 - at) eps) / sqrt(at);  next = sqrt(au) x0_hat + g eps + sigma z
        gain = math.sqrt(au) * (1 - math.sqrt(1 - at) * c) / math.sqrt(at) + g * c
        shift = math.sqrt(au) * math.sqrt(1 - at) * c * mu - g * c * math.sqrt(at) * mu
        mean, var = gain * mean + shift, gain**2 * var + sigma2
    return mean, math.sqrt(var)


@pytest.mark.parametrize(
    ("name", "steps", "eta", "bias"),
    [("cosine", None, 1.0, 0.04), ("linear", None, 1.0, 0.07), ("cosine", 25, 0.0, 0.07)],
)
def test_exact_eps_sampling_reproduces_gaussian(
    name: str, steps: int | None, eta: float, bias: float
) -> None:
    mu, s, n = 1.5, 0.5, 4000
    diffusion = make_diffusion(name, 100)
    model = EpsModel(GaussianEpsNet(diffusion.schedule, mu, s), diffusion)
    out = sample(model, (n, 1), steps=steps, eta=eta, generator=torch.Generator().manual_seed(0))
    x = out.x0.to(F64).flatten()
    # 1) the data distribution, up to the sampler's discretisation bias (100 steps shrink the std a little)
    assert abs(x.mean().item() - mu) < 0.01 * mu
    assert abs(x.std().item() - s) < bias * s
    # 2) the exact moments of this discretised sampler, to Monte Carlo precision (4 standard errors)
    exp_mean, exp_std = sampler_moments(diffusion.schedule, mu, s, steps, eta)
    assert abs(exp_mean - mu) < 1e-3
    assert abs(x.mean().item() - exp_mean) < 4 * exp_std / math.sqrt(n)
    assert abs(x.std().item() - exp_std) < 4 * exp_std / math.sqrt(2 * n)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_langevin_correctors_undo_the_few_step_samplers_shrinkage_with_the_exact_eps(name: str) -> None:
    """Ten ancestral steps shrink N(mu, s^2) data's spread; corrector steps towards each level's marginal
    restore at least a third of it and keep the mean, and each costs one evaluation (none after the last step)."""
    mu, s, n, steps = 1.5, 0.5, 4000, 10
    diffusion = make_diffusion(name, 100)
    spreads = {}
    for snr in (None, 0.3):
        model = EpsModel(GaussianEpsNet(diffusion.schedule, mu, s), diffusion)
        transition = {} if snr is None else {"transition": LangevinCorrector(snr, steps=2)}
        x = sample(model, (n, 1), steps=steps, generator=torch.Generator().manual_seed(0), **transition).x0
        x = x.to(F64).flatten()
        assert abs(x.mean().item() - mu) < 0.01 * mu
        spreads[snr] = x.std().item()
        assert model.evaluations == n * (steps if snr is None else steps + 2 * (steps - 1))
    assert spreads[None] < 0.9 * s, "the plain sampler's shrinkage this test is about"
    assert abs(spreads[0.3] - s) < 2 / 3 * abs(spreads[None] - s)


def test_a_corrector_with_a_start_corrects_only_the_steps_landing_at_or_below_it() -> None:
    diffusion = make_diffusion("cosine", 100)
    model = EpsModel(GaussianEpsNet(diffusion.schedule, 1.5, 0.5), diffusion)
    corrector = LangevinCorrector(0.3, steps=2, start=50)
    sample(model, (8, 1), steps=10, generator=torch.Generator().manual_seed(0), transition=corrector)
    assert [t for t in range(0, 101, 10) if corrector.corrects(t)] == [10, 20, 30, 40, 50]
    assert model.evaluations == 8 * (10 + 2 * 5), "ten steps, and two corrector steps after those landing at 50..10"


def test_a_corrector_needs_a_positive_snr_a_step_and_a_start_in_time() -> None:
    for snr, steps in ((0.0, 1), (0.1, 0)):
        with pytest.raises(ValueError, match="a corrector needs snr > 0 and at least one step"):
            LangevinCorrector(snr, steps)
    with pytest.raises(ValueError, match="a corrector's start is a diffusion time >= 1, got 0"):
        LangevinCorrector(0.3, start=0)


class CountingNet(torch.nn.Module):
    """A per-row network that records the rows of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.calls: list[int] = []

    def forward(self, x, t, cond=None, mask=None):
        self.calls.append(x.shape[0])
        return self.linear(x) * t[:, None]


def test_cpu_calls_outside_autograd_run_in_chunks_with_the_same_result():
    diffusion = GaussianDiffusion(NoiseSchedule.create("linear", 10))
    net = CountingNet()
    chunked, whole = EpsModel(net, diffusion, chunk_elements=30), EpsModel(net, diffusion, chunk_elements=None)
    x, t = torch.randn(25, 3), torch.randint(1, 11, (25,))
    with torch.no_grad():
        expected = whole(x, t)
        net.calls.clear()
        torch.testing.assert_close(chunked(x, t), expected)
    assert net.calls == [10, 10, 5], "30 elements of rows of 3 make chunks of 10 rows"
    assert chunked.evaluations == 25
    net.calls.clear()
    chunked(x, t).sum().backward()
    assert net.calls == [25], "a call that builds a graph runs whole"
