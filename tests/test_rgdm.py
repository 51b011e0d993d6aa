"""The RGDM loss and its estimators: reductions, weights, the exploration radius, guidance."""

from __future__ import annotations

import math

import pytest
import torch
from toolkit import denoising_losses, make_model, make_scorer, right_half, right_half_shares, stepwise_loss

from rgdm.algorithms import (
    DataPayoff,
    GradientStep,
    GreedySelection,
    ModelPayoff,
    StepwiseExploration,
    TrainingContext,
)
from rgdm.algorithms.base import score_data_rows
from rgdm.algorithms.exploration import explore
from rgdm.algorithms.rgdm import conditional_payoff_weights, payoff_weights
from rgdm.algorithms.rgdm_stepwise import StepwiseLoss
from rgdm.batch import Batch
from rgdm.diffusion import GaussianDiffusion, NoiseSchedule, sample
from rgdm.engine.config import SampleConfig
from rgdm.rewards import BlackBoxReward, RewardCounter, Scorer


def constant_reward(samples):
    return [0.7] * len(samples)


def test_stepwise_loss_is_plain_denoising_loss_for_a_constant_reward():
    model = make_model()
    batch = Batch(torch.randn(64, 2))
    expected = denoising_losses(model, batch, torch.Generator().manual_seed(3)).mean()
    loss, stats = stepwise_loss(model, model, make_scorer(constant_reward), batch, torch.Generator().manual_seed(3),
                                candidates=8, radius=0.5, temperature=0.3, center="posterior")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert stats.effective_candidates == pytest.approx(8.0)

    grads = []
    for compute in (lambda: denoising_losses(model, batch, torch.Generator().manual_seed(3)).mean(),
                    lambda: stepwise_loss(model, model, make_scorer(constant_reward), batch,
                                          torch.Generator().manual_seed(3), candidates=8, radius=0.5,
                                          temperature=0.3, center="posterior")[0]):
        model.net.zero_grad()
        compute().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_stepwise_loss_with_the_reference_centre_distils_the_reference_for_a_constant_reward():
    model, reference = make_model(seed=0), make_model(seed=1)
    batch = Batch(torch.randn(64, 2))
    loss, _ = stepwise_loss(model, reference, make_scorer(constant_reward), batch, torch.Generator().manual_seed(3),
                            candidates=8, radius=0.5, temperature=0.3, center="reference")
    generator = torch.Generator().manual_seed(3)
    t = torch.randint(1, 51, (64,), generator=generator)
    xt = model.diffusion.q_sample(batch.x, t, model.diffusion.noise_like(batch.x, None, generator))
    expected = ((model(xt, t) - reference(xt, t)) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    same, _ = stepwise_loss(reference, reference, make_scorer(constant_reward), batch,
                            torch.Generator().manual_seed(3), candidates=8, radius=0.5, temperature=0.3,
                            center="reference")
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-10)


def first_times(seed: int, rows: int = 64, timesteps: int = 50) -> torch.Tensor:
    """The training times ``stepwise_loss`` draws first from a generator seeded ``seed``."""
    return torch.randint(1, timesteps + 1, (rows,), generator=torch.Generator().manual_seed(seed))


def test_stepwise_exploration_start_scores_only_the_pairs_landing_at_or_below_it():
    model, reference = make_model(seed=0), make_model(seed=1)
    batch = Batch(torch.randn(64, 2))
    t = first_times(3)
    start = int(t.median())
    counter = RewardCounter()
    loss = StepwiseLoss(candidates=8, radius=0.5, temperature=0.3, center="reference", start=start)
    rows = loss.draw(batch, model.diffusion, torch.Generator().manual_seed(3))  # the engine charges rows.reward_calls
    _, stats = loss(model, reference, make_scorer(right_half, counter), rows)
    explored = int((t - 1 <= start).sum())
    assert 0 < explored < 64
    assert counter.calls == rows.reward_calls == 8 * explored
    assert stats is not None and 1.0 <= stats.effective_candidates <= 8.0

    everything = [stepwise_loss(model, reference, make_scorer(right_half), batch, torch.Generator().manual_seed(3),
                                candidates=8, radius=0.5, temperature=0.3, center="reference", start=limit)[0]
                  for limit in (None, 49)]
    torch.testing.assert_close(everything[0], everything[1])


def test_stepwise_pairs_above_the_exploration_start_distil_the_reference_whatever_the_reward():
    model, reference = make_model(seed=0), make_model(seed=1)
    batch = Batch(torch.randn(64, 2))
    t = first_times(10)
    assert int(t.min()) >= 2, "the seed must draw no pair at t = 1 for this check"
    counter = RewardCounter()
    loss, stats = stepwise_loss(model, reference, make_scorer(right_half, counter), batch,
                                torch.Generator().manual_seed(10), candidates=8, radius=0.5, temperature=0.3,
                                center="reference", start=int(t.min()) - 2)
    distilled, _ = stepwise_loss(model, reference, make_scorer(constant_reward), batch,
                                 torch.Generator().manual_seed(10), candidates=8, radius=0.5, temperature=0.3,
                                 center="reference")
    torch.testing.assert_close(loss, distilled, rtol=1e-5, atol=1e-6)
    assert counter.calls == 0 and stats is None


def test_weighted_loss_reduces_to_denoising_for_uniform_data_weights():
    model = make_model()
    x = torch.randn(32, 2)
    losses = denoising_losses(model, Batch(x), torch.Generator().manual_seed(1))
    plain, weights = losses.mean(), torch.full((32,), 5.0)
    weighted = (weights * losses).sum() / weights.sum()  # sum_i w_i L_i / sum_i w_i: a weighting is a product
    torch.testing.assert_close(plain, weighted)


def test_payoff_weights_follow_exp_reward_over_temperature():
    rewards = torch.tensor([0.0, 1.0, 2.0, -1.0])
    weights = payoff_weights(rewards, temperature=0.5)
    expected = torch.exp(rewards / 0.5) / torch.exp(rewards / 0.5).sum()
    torch.testing.assert_close(weights, expected)
    assert weights[2] / weights[1] == pytest.approx(math.exp(2.0))


def test_data_payoff_resamples_in_proportion_to_exp_reward():
    """rgdm-data draws data rows with frequency proportional to exp(r / tau)."""
    x = torch.tensor([[-1.0, 0.0], [1.0, 0.0]]).repeat(50, 1)
    model = make_model()
    context = TrainingContext(model=model, ema=model, reference=None, data=Batch(x),
                              scorer=make_scorer(right_half), batch_size=20_000, prior=None)
    algorithm = DataPayoff(temperature=0.5)
    generator = torch.Generator().manual_seed(0)
    algorithm.setup(context, generator)
    rewards = torch.as_tensor(right_half(x[algorithm.rows].numpy()), dtype=torch.float32)
    torch.testing.assert_close(algorithm.weights[0], torch.softmax(rewards / 0.5, 0))
    drawn = torch.multinomial(algorithm.weights[0], 20_000, replacement=True, generator=generator)
    share_right = (x[algorithm.rows[drawn], 0] > 0).float().mean()
    assert share_right == pytest.approx(math.exp(2) / (1 + math.exp(2)), abs=0.015)


def test_data_payoff_fits_its_weighted_rows_from_min_timestep_and_its_anchor_at_every_time():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    model = make_model()  # T = 50
    context = TrainingContext(model=model, ema=model, reference=None, data=Batch(x),
                              scorer=make_scorer(right_half), batch_size=512, prior=None)
    default, late = DataPayoff(temperature=0.5, anchor=1.0), DataPayoff(temperature=0.5, anchor=1.0, min_timestep=30)
    for algorithm in (default, late):
        algorithm.setup(context, torch.Generator().manual_seed(0))
    assert int(default.draw_rows(context, 0, torch.Generator().manual_seed(1)).rows.t.min()) == 1
    rows = late.draw_rows(context, 0, torch.Generator().manual_seed(1))
    assert int(rows.rows.t.min()) == 30 and int(rows.rows.t.max()) == 50
    assert int(rows.anchor.t.min()) < 30, "the anchor keeps p_ref at every noise level"
    beyond = DataPayoff(temperature=0.5, min_timestep=51)
    beyond.setup(context, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"min_timestep must be in 1\.\.50"):
        beyond.draw_rows(context, 0, torch.Generator().manual_seed(1))


def test_data_payoff_perturbs_its_weighted_rows_inputs_only_when_asked():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    model = make_model()
    context = TrainingContext(model=model, ema=model, reference=None, data=Batch(x),
                              scorer=make_scorer(right_half), batch_size=32, prior=None)
    plain, perturbed = DataPayoff(temperature=0.5), DataPayoff(temperature=0.5, input_perturbation=0.1)
    for algorithm in (plain, perturbed):
        algorithm.setup(context, torch.Generator().manual_seed(0))
    assert plain.draw_rows(context, 0, torch.Generator().manual_seed(1)).rows.perturbation is None
    rows = perturbed.draw_rows(context, 0, torch.Generator().manual_seed(1)).rows
    assert rows.perturbation is not None and rows.perturbation.shape == rows.noise.shape
    assert 0.05 < float(rows.perturbation.std() / rows.noise.std()) < 0.2, "gamma times a standard noise"


def test_data_rows_are_scored_in_chunks_exactly_once_per_target():
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    model = make_model()
    counter = RewardCounter()
    context = TrainingContext(model=model, ema=model, reference=None, data=Batch(x),
                              scorer=make_scorer(right_half, counter), batch_size=4, prior=None, targets=[0, 1],
                              progress=True)
    rows, rewards = score_data_rows(context, "rgdm-data", None, torch.Generator().manual_seed(0), chunk=7)
    assert sorted(rows.tolist()) == list(range(20)) and counter.calls == 40
    expected = torch.as_tensor(right_half(x[rows].numpy()), dtype=torch.float32)
    torch.testing.assert_close(rewards, expected.repeat(2, 1))


def test_data_payoff_with_more_targets_than_a_small_batch_draws():
    """A batch of 1 over 3 targets leaves two targets undrawn at every step."""
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    model = make_model()
    context = TrainingContext(model=model, ema=model, reference=None, data=Batch(x),
                              scorer=make_scorer(right_half), batch_size=1, prior=None, targets=[0, 1, 2])
    algorithm = DataPayoff(temperature=0.5)
    generator = torch.Generator().manual_seed(0)
    algorithm.setup(context, generator)
    assert algorithm.weights.shape == (3, 40)
    for step in range(10):
        loss, _ = algorithm.loss(context, step, generator)
        assert torch.isfinite(loss)


def test_model_payoff_tempers_to_exactly_one_over_tau_across_rounds():
    model = make_model(timesteps=10)
    counter = RewardCounter()
    context = TrainingContext(model=model, ema=model, reference=None, data=Batch(torch.zeros(4, 2)),
                              scorer=make_scorer(right_half, counter), batch_size=8,
                              prior=lambda n, g, cond: Batch(torch.zeros(n, 2), cond=cond))
    algorithm = ModelPayoff(temperature=0.25, total_steps=8, rounds=4, buffer_size=16, sample_steps=5)
    generator = torch.Generator().manual_seed(0)
    for step in range(8):
        algorithm.loss(context, step, generator)
    assert counter.calls == 4 * 16
    rewards = torch.as_tensor(right_half(algorithm.buffer.x.numpy()), dtype=torch.float32)
    torch.testing.assert_close(algorithm.weights, torch.softmax(rewards / (0.25 * 4), 0))


def test_conditional_payoff_weights_normalise_within_each_target():
    rewards = torch.tensor([0.0, 1.0, 5.0, 6.0, 7.0, 0.5])
    cond = torch.tensor([0, 0, 1, 1, 1, 2])
    weights = conditional_payoff_weights(rewards, 0.5, cond)
    # each target keeps its share of the buffer, however much easier its rewards are to earn
    shares = torch.stack([weights[cond == c].sum() for c in range(3)])
    torch.testing.assert_close(shares, torch.tensor([2 / 6, 3 / 6, 1 / 6]))
    torch.testing.assert_close(weights[:2] / weights[:2].sum(), torch.softmax(rewards[:2] / 0.5, 0))
    torch.testing.assert_close(conditional_payoff_weights(rewards, 0.5, None), torch.softmax(rewards / 0.5, 0))


@pytest.mark.parametrize("radius", [0.1, 0.5, 2.0])
def test_candidates_stay_inside_the_exploration_radius(radius):
    diffusion = GaussianDiffusion(NoiseSchedule.create("linear", 10))
    center = torch.randn(5, 16)
    std = torch.rand(5, 1) + 0.1
    candidates = explore(diffusion, center, std, 8, radius, None, torch.Generator().manual_seed(0))
    offsets = (candidates - center.repeat(8, 1)) / std.repeat(8, 1)
    assert (offsets.norm(dim=1) <= radius * math.sqrt(16) * (1 + 1e-5)).all()
    # antithetic pairs average back to the centre exactly
    torch.testing.assert_close(candidates.view(8, 5, 16).mean(0), center)


def test_exploration_radius_counts_only_unmasked_nodes():
    diffusion = GaussianDiffusion(NoiseSchedule.create("linear", 10))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    center = torch.zeros(2, 4, 3)
    candidates = explore(diffusion, center, torch.ones(2, 1, 1), 4, 0.3, mask, torch.Generator().manual_seed(0))
    candidates = candidates.view(4, 2, 4, 3)
    assert (candidates[:, 0, 2:] == 0).all()
    assert (candidates[:, 0].flatten(1).norm(dim=1) <= 0.3 * math.sqrt(6) * (1 + 1e-5)).all()
    assert (candidates[:, 1].flatten(1).norm(dim=1) <= 0.3 * math.sqrt(12) * (1 + 1e-5)).all()


@pytest.mark.parametrize("algorithm", [
    DataPayoff(temperature=0.3),
    ModelPayoff(temperature=0.3, total_steps=150, rounds=2, buffer_size=1000, sample_steps=20),
    StepwiseExploration(temperature=0.3, candidates=8, radius=1.0),
], ids=lambda a: a.name)
def test_every_rgdm_variant_raises_the_reward(pretrained_gaussian, algorithm):
    before, after = right_half_shares(pretrained_gaussian, algorithm, steps=150)
    assert after > before + 0.08


def test_candidate_selection_raises_the_reward_of_samples(pretrained_gaussian):
    model = pretrained_gaussian
    generator = torch.Generator().manual_seed(0)
    plain = sample(model, (400, 2), generator=generator).x0
    counter = RewardCounter()
    guided = sample(model, (400, 2), generator=generator,
                    transition=GreedySelection(make_scorer(right_half, counter), candidates=8,
                                                  temperature=0.05)).x0
    assert right_half(guided.numpy()).mean() > right_half(plain.numpy()).mean() + 0.2
    assert counter.calls == 8 * 400 * 39  # the last step is deterministic and costs nothing


def test_candidate_selection_with_a_start_selects_only_below_it(pretrained_gaussian):
    model = pretrained_gaussian
    plain = sample(model, (400, 2), generator=torch.Generator().manual_seed(0)).x0
    counter = RewardCounter()
    never = GreedySelection(make_scorer(right_half, counter), candidates=8, temperature=0.05, start=0)
    assert torch.equal(sample(model, (400, 2), generator=torch.Generator().manual_seed(0), transition=never).x0,
                       plain)
    assert counter.calls == 0
    late = GreedySelection(make_scorer(right_half, counter), candidates=8, temperature=0.05, start=19)
    guided = sample(model, (400, 2), generator=torch.Generator().manual_seed(0), transition=late).x0
    assert counter.calls == 8 * 400 * 19  # the steps landing at s = 19 .. 1
    assert right_half(guided.numpy()).mean() > right_half(plain.numpy()).mean() + 0.1


def test_a_guidance_start_is_a_diffusion_time_of_candidate_selection():
    with pytest.raises(ValueError, match="diffusion time"):
        GreedySelection(make_scorer(right_half), start=-1)
    with pytest.raises(ValueError, match="candidate selection"):
        SampleConfig(guidance="gradient", reward="r", guidance_start=10)
    with pytest.raises(ValueError, match="candidate selection"):
        SampleConfig(guidance_start=10)


def test_gradient_step_moves_samples_up_the_reward_within_the_radius(pretrained_gaussian):
    model = pretrained_gaussian
    counter = RewardCounter()
    scorer = Scorer(BlackBoxReward(constant_reward, counter=counter), lambda x, m: x.numpy(), counter,
                    gradient_fn=lambda x, targets: x[:, 0])
    generator = torch.Generator().manual_seed(0)
    plain = sample(model, (400, 2), generator=torch.Generator().manual_seed(0)).x0
    guided = sample(model, (400, 2), generator=generator,
                    transition=GradientStep(scorer, temperature=0.1, radius=0.5)).x0
    assert guided[:, 0].mean() > plain[:, 0].mean() + 0.1


def test_gradient_guidance_needs_a_differentiable_reward():
    scorer = make_scorer(right_half)
    with pytest.raises(ValueError, match="no differentiable form"):
        scorer.differentiable(torch.zeros(2, 2))
