"""Sequential Monte Carlo towards the pay-off, reused Tweedie values, and greedy selection's budget."""

from __future__ import annotations

import json
import math

import matplotlib.image as plt_image
import numpy as np
import pytest
import torch
from test_multipart import MASK, assert_on_the_sample_space, atom_sum, graph_context, zeros
from toolkit import make_scorer, stepwise_loss
from torch import nn

from rgdm.algorithms import GreedySelection, SequentialMonteCarlo
from rgdm.algorithms.exploration import tweedie_estimate
from rgdm.algorithms.smc import populations_of, residual_resampling, systematic_resampling
from rgdm.batch import Batch
from rgdm.benchmarks.toy import Budget, ToyTask, plot_curves, run_task
from rgdm.diffusion import EpsModel, GaussianDiffusion, NoiseSchedule, sample
from rgdm.diffusion.sampling import timestep_pairs
from rgdm.domains.toy import ToyDomain
from rgdm.engine import generate, load_trained
from rgdm.engine.builder import make_algorithm, seeded_generator
from rgdm.engine.config import AlgorithmConfig, SampleConfig
from rgdm.engine.generate import make_transition
from rgdm.rewards import RewardCounter

TIMESTEPS, STEPS = 100, 25


class GaussianEps(nn.Module):
    """The exact noise prediction of data ``N(0, I)``: ``eps = sqrt(1 - abar_t) x_t`` (linear in ``x_t``)."""

    def __init__(self, alpha_bar: torch.Tensor) -> None:
        super().__init__()
        self.alpha_bar = alpha_bar.float()

    def forward(self, x, t, cond=None, mask=None):
        abar = self.alpha_bar[(t * len(self.alpha_bar[1:])).round().long()].view(-1, 1)
        return (1 - abar).sqrt() * x


def gaussian_model() -> EpsModel:
    diffusion = GaussianDiffusion(NoiseSchedule.create("linear", TIMESTEPS))
    return EpsModel(GaussianEps(diffusion.schedule.alpha_bar), diffusion)


def reference_moments(model: EpsModel) -> tuple[float, float]:
    """Mean and variance of the model's own samples (``STEPS`` DDIM steps, eta 1), exactly: each step is
    ``x_s = a x_t + sigma z`` with the linear noise prediction, so the moments propagate in closed form."""
    mean, variance = 0.0, 1.0
    for t_int, s_int in timestep_pairs(TIMESTEPS, STEPS):
        t, s = torch.tensor([t_int, t_int]), torch.tensor([s_int, s_int])
        x = torch.tensor([[0.0], [1.0]])
        step = model.diffusion.reverse_step(x, t, s, model(x, t), eta=1.0)
        slope = float(step.mean[1, 0] - step.mean[0, 0])
        mean, variance = slope * mean, slope**2 * variance + float(step.std.flatten()[0]) ** 2
    return mean, variance


@pytest.mark.parametrize(("resampling", "value"), [("systematic", "exact"), ("residual", "exact"),
                                                   ("systematic", "reuse")])
def test_smc_lands_on_the_mean_of_a_tilted_gaussian(resampling, value):
    """``p_ref = N(m, v)`` (exact), ``r(x) = a x``: the pay-off is ``N(m + a v / tau, v)``. The tolerance is four
    standard errors of ``n`` exact draws plus the self-normalised bias of order ``1 / (n P)``."""
    model = gaussian_model()
    mean, variance = reference_moments(model)
    slope, tau, n, particles = 1.0, 0.5, 1000, 4
    target = mean + slope * variance / tau
    tolerance = 4 * math.sqrt(variance / n) + math.sqrt(variance) / (n * particles) ** 0.5
    assert target - mean > 10 * tolerance  # a tilt the test can see
    counter = RewardCounter()
    smc = SequentialMonteCarlo(make_scorer(lambda x: slope * x[:, 0], counter), particles=particles,
                               temperature=tau, value=value, resampling=resampling)
    x = smc.draw(model, Batch(torch.zeros(n, 1)), steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert float(x.mean()) == pytest.approx(target, abs=tolerance)
    assert float(x.var()) == pytest.approx(variance, rel=0.2)
    assert smc.stats.as_dict()["resampled_share"] > 0, "the tilt is strong enough to make the weights resample"
    assert counter.calls == n * particles * STEPS  # every step is valued, the last by the true reward


def test_smc_that_never_resamples_draws_its_samples_by_the_final_weights():
    """Sequential importance sampling (no resampling): the tilt reaches the samples through the last draw only."""
    model = gaussian_model()
    mean, variance = reference_moments(model)
    slope, tau, n = 0.5, 1.0, 2000
    smc = SequentialMonteCarlo(make_scorer(lambda x: slope * x[:, 0]), particles=4, temperature=tau,
                               ess_threshold=0.0)
    x = smc.draw(model, Batch(torch.zeros(n, 1)), steps=STEPS, generator=torch.Generator().manual_seed(3))
    assert smc.stats.as_dict()["resampled_share"] == 0
    assert float(x.mean()) == pytest.approx(mean + slope * variance / tau, abs=5 * math.sqrt(variance / n))


def test_smc_without_a_reward_tilt_is_plain_sampling_of_its_particles():
    model = gaussian_model()
    mean, variance = reference_moments(model)
    smc = SequentialMonteCarlo(make_scorer(lambda x: np.zeros(len(x))), particles=2, temperature=0.1)
    x = smc.draw(model, Batch(torch.zeros(2000, 1)), steps=STEPS, generator=torch.Generator().manual_seed(1))
    assert float(x.mean()) == pytest.approx(mean, abs=4 * math.sqrt(variance / 2000))
    assert smc.stats.as_dict()["resampled_share"] == 0
    assert smc.stats.as_dict()["final_ess_share"] == pytest.approx(1.0)


@pytest.mark.parametrize("resample", [systematic_resampling, residual_resampling])
def test_resampling_keeps_the_expected_copies(resample):
    weights = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    counts = torch.bincount(resample(weights, torch.Generator().manual_seed(0)), minlength=8)
    assert counts.tolist() == [4, 2, 1, 1, 0, 0, 0, 0]  # P w is whole: both schemes are exact
    uneven = torch.tensor([0.45, 0.3, 0.2, 0.05], dtype=torch.float64)
    for seed in range(20):
        counts = torch.bincount(resample(uneven, torch.Generator().manual_seed(seed)), minlength=4)
        assert counts.sum() == 4 and (counts >= (4 * uneven).floor()).all()
        if resample is systematic_resampling:
            assert (counts <= (4 * uneven).ceil()).all()


def test_systematic_resampling_draws_as_many_survivors_as_asked():
    weights = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    survivors = systematic_resampling(weights, torch.Generator().manual_seed(0), draws=10)
    assert torch.bincount(survivors, minlength=3).tolist() == [1, 6, 3]


def test_populations_group_the_samples_by_mask_and_target():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    cond = torch.tensor([0, 0, 0, 1])
    groups = populations_of(Batch(torch.zeros(4, 3), mask, cond))
    assert sorted(group.tolist() for group in groups) == [[0, 2], [1], [3]]
    assert [group.tolist() for group in populations_of(Batch(torch.zeros(3, 2)))] == [[0, 1, 2]]


class ConstantEps(nn.Module):
    """A noise prediction that depends on neither the state nor the time (a learnable constant)."""

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.linspace(-0.5, 0.7, dim))

    def forward(self, x, t, cond=None, mask=None):
        return self.value.expand_as(x)


def test_the_reused_tweedie_estimate_is_the_exact_one_when_the_prediction_ignores_the_state():
    model = EpsModel(ConstantEps(), GaussianDiffusion(NoiseSchedule.create("linear", 50)))
    parent = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((6,), 30)
    child = parent + 0.3 * torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([29, 29, 10, 10, 0, 0])
    exact, eps = tweedie_estimate(model, child, s)
    evaluations = model.evaluations
    reused, none = tweedie_estimate(model, child, s, parent_eps=model(parent, t))
    torch.testing.assert_close(reused, exact)
    assert eps is None and none is None  # rows at s = 0 need no prediction: none is handed on
    torch.testing.assert_close(exact[4:], child[4:])  # s = 0: the state is the sample
    assert model.evaluations == evaluations + 6  # the parent's prediction only


@pytest.mark.parametrize("center", ["reference", "posterior"])
def test_stepwise_training_with_reused_values_matches_exact_values_when_the_prediction_ignores_the_state(center):
    model = EpsModel(ConstantEps(), GaussianDiffusion(NoiseSchedule.create("linear", 50)))
    batch = Batch(torch.randn(32, 2, generator=torch.Generator().manual_seed(0)))
    scorer = make_scorer(lambda x: np.sin(3 * x[:, 0]) + x[:, 1])
    losses = {}
    for value in ("exact", "reuse"):
        before = model.evaluations
        losses[value], _ = stepwise_loss(model, model, scorer, batch, torch.Generator().manual_seed(2), candidates=4,
                                         radius=1.0, temperature=0.2, center=center, value=value)
        losses[value + " evaluations"] = model.evaluations - before
    torch.testing.assert_close(losses["reuse"], losses["exact"])
    assert losses["reuse evaluations"] == 32 * 2  # one prediction at x_t and the fit: the values cost nothing
    assert losses["exact evaluations"] > 32 * 2 + 4 * 16  # and K more per pair landing above t = 0


def test_the_value_option_reaches_step_wise_training_and_is_validated():
    algorithm = make_algorithm(AlgorithmConfig(name="rgdm-stepwise", value="reuse"), total_steps=10,
                               domain=ToyDomain())
    assert algorithm.stepwise.value == "reuse"
    with pytest.raises(ValueError, match="value"):
        AlgorithmConfig(name="rgdm-stepwise", value="approximate")


@pytest.mark.parametrize("value", ["exact", "reuse"])
def test_greedy_selection_costs_what_its_value_estimate_says(value):
    model = gaussian_model()
    counter = RewardCounter()
    selection = GreedySelection(make_scorer(lambda x: x[:, 0], counter), candidates=8, temperature=0.1, value=value)
    x = sample(model, (50, 1), steps=STEPS, generator=torch.Generator().manual_seed(0), transition=selection).x0
    assert counter.calls == 8 * 50 * (STEPS - 1)  # the last step is deterministic
    per_step = 8 if value == "exact" else 1
    assert model.evaluations == 50 * (1 + per_step * (STEPS - 1))
    assert float(x.mean()) > 0.5


@pytest.mark.parametrize("value", ["exact", "reuse"])
def test_smc_costs_one_evaluation_and_one_reward_call_per_particle_and_step(value):
    model = gaussian_model()
    counter = RewardCounter()
    smc = SequentialMonteCarlo(make_scorer(lambda x: x[:, 0], counter), particles=3, temperature=0.5, value=value)
    smc.draw(model, Batch(torch.zeros(20, 1)), steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert model.evaluations == 20 * 3 * STEPS == counter.calls


def test_smc_guides_only_below_its_start():
    model = gaussian_model()
    counter = RewardCounter()
    smc = SequentialMonteCarlo(make_scorer(lambda x: x[:, 0], counter), particles=3, temperature=0.5, start=20)
    smc.draw(model, Batch(torch.zeros(20, 1)), steps=STEPS, generator=torch.Generator().manual_seed(0))
    landing = [s for _, s in timestep_pairs(TIMESTEPS, STEPS) if s <= 20]
    assert counter.calls == 20 * 3 * len(landing)


def test_smc_keeps_multi_part_samples_on_the_sample_space_and_raises_the_reward():
    ctx = graph_context()
    mask = MASK.repeat(20, 1)
    smc = SequentialMonteCarlo(ctx.scorer, particles=4, temperature=0.05)
    prior = Batch(zeros(60), mask)
    guided = smc.draw(ctx.model, prior, steps=10, generator=torch.Generator().manual_seed(0))
    plain = sample(ctx.model, zeros(60), steps=10, mask=mask, generator=torch.Generator().manual_seed(0)).x0
    assert_on_the_sample_space(guided, mask)  # a particle never moves into a sample of another size
    assert smc.stats.populations == 3
    assert sum(atom_sum(guided)) > sum(atom_sum(plain))


@pytest.fixture(scope="module")
def ring_model():
    return load_trained("toy-ring-pretrained")


@pytest.mark.parametrize("value", ["exact", "reuse"])
def test_smc_stays_on_the_data_for_an_unbounded_reward(ring_model, value):
    """A coordinate of the sample is finite everywhere and unbounded: the pay-off ``p_ref exp(x_0 / 0.3)``
    stays on the ring (radius 2, mode width 0.2), and so must the sampler."""
    scorer = make_scorer(lambda x: x[:, 0].astype(float))
    smc = SequentialMonteCarlo(scorer, particles=8, temperature=0.3, value=value)
    x = generate(ring_model, 300, seeded_generator(0), steps=50, transition=smc).x
    radius = x.norm(dim=1)
    assert torch.isfinite(x).all() and radius.max() < 3.0 and (radius - 2).abs().median() < 0.3
    assert float(x[:, 0].mean()) > 1.5  # the tilt is there: the exact pay-off's mean is 2.0


def test_rgdm_sample_with_smc_records_its_budget(tmp_path):
    from rgdm.cli import main

    out = tmp_path / "smc"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "40", "--steps", "10",
                 "--guidance", "smc", "--particles", "4", "--reward", "region", "--temperature", "0.3",
                 "--out", str(out)]) == 0
    meta = json.loads((out / "sample.json").read_text())
    assert meta["particles"] == 4 and meta["value"] == "exact" and meta["guidance"] == "smc"
    assert meta["reward_calls"] == meta["network_evaluations"] == 40 * 4 * 10
    assert meta["smc"]["populations"] == 1 and 0 < meta["smc"]["final_ess_share"] <= 1
    with np.load(out / "samples.npz") as data:
        assert data["samples"].shape == (40, 2)
    out = tmp_path / "greedy"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "20", "--steps", "10",
                 "--guidance", "select", "--value", "reuse", "--reward", "region", "--out", str(out)]) == 0
    meta = json.loads((out / "sample.json").read_text())
    assert meta["value"] == "reuse" and meta["network_evaluations"] == 20 * 10 and "smc" not in meta


def test_the_toy_benchmark_runs_the_guided_rows_and_plots_distance_against_calls(tmp_path):
    tiny = Budget(finetune_steps=20, eval_every=10, eval_samples=64, curve_steps=10, data_scored=256,
                  model_rounds=2, model_buffer=64, stepwise_batch=8, ddpo_trajectories=8, candidates=2,
                  sampling_steps=10, regressor_steps=10, particles=2)
    names = ["rgdm-smc", "rgdm-smc-reuse", "rgdm-guided-sampling", "rgdm-guided-sampling-reuse"]
    result = run_task(ToyTask("ring", "toy-ring-pretrained"), tiny, [0], progress=False, methods=names)
    methods = result["methods"]
    assert list(methods) == names
    for name in ("rgdm-smc", "rgdm-smc-reuse"):
        assert methods[name]["reward_calls"] == methods[name]["network_evaluations"] == 64 * 2 * 10
    assert methods["rgdm-guided-sampling"]["network_evaluations"] == 64 * (1 + 2 * 9)
    assert methods["rgdm-guided-sampling-reuse"]["network_evaluations"] == 64 * 10
    path = plot_curves({**result, "rare_mode": result}, tmp_path / "toy.png")
    height, width, _ = plt_image.imread(path).shape
    assert height > 0.6 * width  # two rows of panels: mean reward, and energy distance


def test_value_and_start_are_options_of_selection_and_smc_only():
    scorer = make_scorer(lambda x: x[:, 0])
    assert make_transition(SampleConfig(guidance="select", reward="r", value="reuse"), scorer).value == "reuse"
    smc = SampleConfig(guidance="smc", reward="r", guidance_start=5, particles=4)
    assert make_transition(smc, scorer).particles == 4
    with pytest.raises(ValueError, match="value estimate"):
        SampleConfig(guidance="gradient", reward="r", value="reuse")
    with pytest.raises(ValueError, match="value must be"):
        GreedySelection(scorer, value="cheap")
    with pytest.raises(ValueError, match="particle"):
        SequentialMonteCarlo(scorer, particles=0)
