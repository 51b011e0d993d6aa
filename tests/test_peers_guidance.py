"""The guidance peers: conditional diffusion with classifier-free guidance, and classifier guidance."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from toolkit import make_model, make_scorer
from torch import nn

from rgdm.algorithms.base import TrainingContext
from rgdm.algorithms.cfg import ConditionalFinetune, GuidedEpsModel, reward_classes
from rgdm.algorithms.classifier_guidance import ClassifierGuidance, train_regressor
from rgdm.batch import Batch
from rgdm.diffusion import EpsModel, sample
from rgdm.domains.toy.network import MLPRegressor
from rgdm.engine import load_trained
from rgdm.rewards import RewardCounter, Scorer


def first_coordinate(samples):
    return samples[:, 0].astype(float)


def sign_matches_target(samples, targets):
    """1 where the sign of the first coordinate is the target (0: negative, 1: positive)."""
    return ((samples[:, 0] > 0).astype(int) == torch.as_tensor(targets).numpy()).astype(float)


def toward_target(samples, targets):
    """The first coordinate, signed by the target (0: the lower the better, 1: the higher)."""
    return samples[:, 0].astype(float) * (2 * torch.as_tensor(targets).numpy() - 1)


# --- reward classes -------------------------------------------------------------------------------


def test_reward_classes_rank_few_distinct_values_with_ties():
    values = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.1])
    assert reward_classes(values, 8).tolist() == [6, 5, 6, 7, 5], "ranked from the top: best is class 7"
    assert reward_classes(values, 3).tolist() == [1, 0, 1, 2, 0]
    assert reward_classes(torch.full((4,), 2.0), 5).tolist() == [4, 4, 4, 4]


def test_reward_classes_are_equal_mass_quantile_bins():
    values = torch.randperm(100, generator=torch.Generator().manual_seed(0)).float()
    classes = reward_classes(values, 4)
    assert classes.tolist() == (values // 25).long().tolist()
    assert torch.bincount(classes).tolist() == [25, 25, 25, 25]
    # ties share a class; here the four tied lowest values all land in class 0
    tied = torch.tensor([0.0, 0.0, 0.0, 0.0, 1, 2, 3, 4, 5, 6])
    assert reward_classes(tied, 2).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def test_reward_classes_are_monotone_in_the_reward():
    values = torch.randint(0, 30, (500,), generator=torch.Generator().manual_seed(1)).float()
    classes = reward_classes(values, 8)
    order = torch.argsort(values)
    assert (classes[order].diff() >= 0).all()
    assert classes.min() == 0 and classes.max() == 7


# --- conditional fine-tuning ----------------------------------------------------------------------


def cfg_context(scorer: Scorer, targets: list[int] | None = None, n: int = 200, batch_size: int = 512
                ) -> TrainingContext:
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    model = make_model()
    return TrainingContext(model=model, ema=model, reference=None, data=Batch(x), scorer=scorer,
                           batch_size=batch_size, prior=None, targets=targets)


def test_cfg_scores_once_and_conditions_on_reward_classes():
    counter = RewardCounter()
    ctx = cfg_context(make_scorer(first_coordinate, counter))
    algorithm = ConditionalFinetune(num_classes=3, null_token=3, scored_size=120, uncond_prob=0.25)
    generator = torch.Generator().manual_seed(0)
    algorithm.setup(ctx, generator)
    assert counter.calls == 120
    rewards = torch.as_tensor(first_coordinate(ctx.data.x[algorithm.rows].numpy()))
    assert algorithm.labels[0].tolist() == reward_classes(rewards, 3).tolist()
    assert algorithm.top_class == 2

    batch = algorithm.minibatch(ctx, generator)
    dropped = batch.cond == 3
    assert 0.15 < float(dropped.float().mean()) < 0.35
    # each kept label is the class of its row: the quantile bin of its first coordinate
    edges = torch.quantile(rewards.float(), torch.tensor([1 / 3, 2 / 3]))
    expected = torch.bucketize(batch.x[:, 0].contiguous(), edges, right=True)
    assert (batch.cond[~dropped] == expected[~dropped]).float().mean() > 0.99
    loss, stats = algorithm.loss(ctx, 0, generator)
    assert loss.dim() == 0 and loss.requires_grad and 0.15 < stats["uncond_share"] < 0.35
    assert counter.calls == 120  # no reward calls after setup


def test_cfg_resumes_exactly_from_its_state_tensors():
    ctx = cfg_context(make_scorer(first_coordinate))
    algorithm = ConditionalFinetune(num_classes=3, null_token=3, scored_size=100)
    algorithm.setup(ctx, torch.Generator().manual_seed(0))
    resumed = ConditionalFinetune(num_classes=3, null_token=3, scored_size=100)
    resumed.load_state_tensors({k: v.clone() for k, v in algorithm.state_tensors().items()})
    a = algorithm.minibatch(ctx, torch.Generator().manual_seed(5))
    b = resumed.minibatch(ctx, torch.Generator().manual_seed(5))
    assert torch.equal(a.x, b.x) and torch.equal(a.cond, b.cond)


def test_cfg_with_targets_conditions_on_the_target_with_its_best_rows():
    counter = RewardCounter()
    ctx = cfg_context(make_scorer(sign_matches_target, counter), targets=[0, 1])
    algorithm = ConditionalFinetune(num_classes=2, null_token=3, uncond_prob=0.2)
    algorithm.setup(ctx, torch.Generator().manual_seed(0))
    assert counter.calls == 2 * 200 and algorithm.labels.shape == (2, 200)
    batch = algorithm.minibatch(ctx, torch.Generator().manual_seed(1))
    positive = batch.x[:, 0] > 0
    assert (positive[batch.cond == 1]).all() and (~positive[batch.cond == 0]).all()
    null = batch.cond == 3
    assert 0.1 < float(null.float().mean()) < 0.3

    one_target = cfg_context(make_scorer(sign_matches_target), targets=[1])
    algorithm.setup(one_target, torch.Generator().manual_seed(0))
    batch = algorithm.minibatch(one_target, torch.Generator().manual_seed(1))
    positive, null = batch.x[:, 0] > 0, batch.cond == 3
    assert positive[~null].all()
    assert 0.3 < float(positive[null].float().mean()) < 0.7  # the null token sees all the data
    assert torch.equal(algorithm.sampling_condition(3, torch.tensor([1, 0, 1])), torch.tensor([1, 0, 1]))
    # Ranking classes are not conditions: with targets there may be more of them than the null token's index,
    # and each target's top class holds the top 1/num_classes of its rows.
    finer = ConditionalFinetune(num_classes=8, null_token=3)
    finer.setup(cfg_context(make_scorer(toward_target), targets=[0, 1]), torch.Generator().manual_seed(0))
    assert [int((row == row.max()).sum()) for row in finer.labels] == [25, 25], "the top eighth of 200 rows"
    batch = finer.minibatch(cfg_context(make_scorer(toward_target), targets=[0, 1]), torch.Generator().manual_seed(1))
    sharp = batch.x[:, 0][batch.cond == 1]
    assert float(sharp.min()) > 1.0, "the 25 largest of 200 standard normals (the top half would reach 0)"
    with pytest.raises(ValueError, match=r"the null token 1 collides with the classes 0\.\.1"):
        ConditionalFinetune(num_classes=2, null_token=1).setup(cfg_context(make_scorer(sign_matches_target)),
                                                                torch.Generator().manual_seed(0))


# --- classifier-free guidance ---------------------------------------------------------------------


def test_guided_eps_model_interpolates_between_unconditional_and_conditional():
    model = make_model()
    x, t = torch.randn(16, 2), torch.randint(1, 51, (16,))
    cond = torch.randint(0, 3, (16,))
    conditional, unconditional = model(x, t, cond), model(x, t, torch.full((16,), 3))
    one, zero = GuidedEpsModel(model, 1.0, null_token=3), GuidedEpsModel(model, 0.0, null_token=3)
    # at the ends, one pass of the 16 rows gives the answer bit for bit
    counted = model.evaluations
    assert torch.equal(one(x, t, cond), conditional) and torch.equal(zero(x, t, cond), unconditional)
    assert model.evaluations - counted == 2 * 16
    three = GuidedEpsModel(model, 3.0, null_token=3)
    counted = model.evaluations
    torch.testing.assert_close(three(x, t, cond), unconditional + 3 * (conditional - unconditional))
    assert three.evaluations - counted == 2 * 16 and three.diffusion is model.diffusion
    torch.testing.assert_close(three(x, t, None), unconditional)  # nothing to guide without a condition


@pytest.fixture(scope="module")
def ring_cfg():
    """The shipped ring model fine-tuned on piecewise-reward classes (8 distinct values, 8 classes)."""
    loaded = load_trained("toy-ring-pretrained", tie_untrained_targets=False)  # as the trainer loads a parent
    domain = loaded.domain
    reward = domain.rewards()["piecewise"].fn
    model = EpsModel(loaded.net.train(), loaded.diffusion)
    ctx = TrainingContext(model=model, ema=model, reference=None, data=domain.dataset(),
                          scorer=make_scorer(reward), batch_size=256, prior=None)
    algorithm = ConditionalFinetune(num_classes=8, null_token=8, scored_size=4000, uncond_prob=0.2)
    generator = torch.Generator().manual_seed(0)
    algorithm.setup(ctx, generator)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    for step in range(200):
        loss, _ = algorithm.loss(ctx, step, generator)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.net.parameters(), 1.0)
        optimizer.step()
    model.net.eval()
    return model, algorithm, reward


def cfg_samples(model: EpsModel, scale: float, cond: torch.Tensor, seed: int = 1) -> torch.Tensor:
    guided = GuidedEpsModel(model, scale, null_token=8)
    return sample(guided, (len(cond), 2), steps=50, cond=cond, generator=torch.Generator().manual_seed(seed)).x0


@pytest.mark.parametrize("k", [0, 3])
def test_cfg_samples_land_in_the_cell_of_the_requested_reward_rank(ring_cfg, k):
    model, _, reward = ring_cfg
    x = cfg_samples(model, 2.0, torch.full((200,), k))
    rank = torch.as_tensor(reward(x.numpy()) * 7).round().long()  # piecewise scores are 0, 1/7, ..., 1
    assert (rank == k).float().mean() > 0.8


def test_cfg_top_class_raises_the_mean_reward_over_the_unconditional_model(ring_cfg):
    model, algorithm, reward = ring_cfg
    cond = algorithm.sampling_condition(200)
    assert algorithm.top_class == 7 and (cond == 7).all()
    unconditional = reward(cfg_samples(model, 0.0, cond).numpy()).mean()
    guided = reward(cfg_samples(model, 2.0, cond).numpy()).mean()
    assert unconditional < 0.65 and guided > unconditional + 0.3


# --- classifier guidance --------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_classifier_guidance_at_scale_zero_is_plain_sampling(eta):
    model = make_model(timesteps=20)
    torch.manual_seed(0)
    regressor = MLPRegressor(2, 3, width=16, depth=1)
    plain = sample(model, (32, 2), eta=eta, generator=torch.Generator().manual_seed(3)).x0
    guidance = ClassifierGuidance(regressor, scale=0.0)
    guided = sample(model, (32, 2), eta=eta, generator=torch.Generator().manual_seed(3), transition=guidance).x0
    torch.testing.assert_close(guided, plain)
    assert guidance.evaluations == 20 * 32


def test_classifier_guidance_with_a_trained_regressor_raises_the_reward():
    loaded = load_trained("toy-ring-pretrained")
    domain = loaded.domain
    reward = domain.rewards()["region"].fn  # 1 inside mode 0's cell: one eighth of the data
    data = domain.dataset().select(torch.arange(5000))
    rewards = torch.as_tensor(reward(data.x.numpy()), dtype=torch.float32)
    torch.manual_seed(0)
    regressor = MLPRegressor(2, domain.num_targets, width=64, depth=2)
    losses = train_regressor(regressor, loaded.diffusion, data, rewards, steps=300, batch_size=256, lr=2e-3,
                             generator=torch.Generator().manual_seed(0)).losses
    assert len(losses) == 300
    early, late = sum(losses[:10]) / 10, sum(losses[-50:]) / 50
    assert late < 0.9 * early and late < float(rewards.var())
    # at low noise the regressor knows the cell: far better than the best constant
    t = torch.full((len(data),), 5)
    xt = loaded.diffusion.q_sample(data.x, t, torch.randn(data.x.shape, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        error = ((regressor(xt, t / loaded.diffusion.timesteps) - rewards) ** 2).mean()
    assert error < 0.5 * rewards.var()

    model = EpsModel(loaded.net, loaded.diffusion)
    plain = sample(model, (300, 2), steps=50, generator=torch.Generator().manual_seed(1)).x0
    guidance = ClassifierGuidance(regressor, scale=5.0)
    guided = sample(model, (300, 2), steps=50, generator=torch.Generator().manual_seed(1), transition=guidance).x0
    assert reward(guided.numpy()).mean() > reward(plain.numpy()).mean() + 0.3
    assert guidance.evaluations == 50 * 300


def test_cross_entropy_guides_need_non_negative_rewards_per_target():
    loaded = load_trained("toy-ring-pretrained")
    data = loaded.domain.dataset().select(torch.arange(8))
    classifier = MLPRegressor(2, 0, width=8, depth=1, outputs=3)
    fit = partial(train_regressor, classifier, loaded.diffusion, data, steps=1, batch_size=4, lr=1e-3,
                  generator=torch.Generator().manual_seed(0), objective="cross-entropy")
    with pytest.raises(ValueError, match="shape"):
        fit(torch.ones(8))
    with pytest.raises(ValueError, match="non-negative"):
        fit(-torch.ones(8, 3))
    assert len(fit(torch.rand(8, 3)).losses) == 1
    with pytest.raises(ValueError, match="unknown guide objective"):
        train_regressor(classifier, loaded.diffusion, data, torch.rand(8, 3), steps=1, batch_size=4, lr=1e-3,
                        generator=torch.Generator(), objective="hinge")


def test_a_classifier_guide_takes_each_rows_target_log_probability_and_names_unknown_targets():
    model = make_model(timesteps=20)
    torch.manual_seed(0)
    classifier = MLPRegressor(2, 0, width=8, depth=1, outputs=2)
    nn.init.normal_(classifier.output[-1].weight)  # the head starts at zero: give the logits a gradient
    guidance = ClassifierGuidance(classifier, scale=1.0, classes=[2, 5])
    x, t = torch.randn(3, 2), torch.full((3,), 10)
    grad = guidance.gradient(x, t, torch.tensor([2, 5, 2]), None, model.diffusion)
    with torch.enable_grad():
        leaf = x.clone().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(leaf, t / model.diffusion.timesteps), dim=-1)
        (expected,) = torch.autograd.grad(log_probs[[0, 1, 2], [0, 1, 0]].sum(), leaf)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(grad, model.diffusion.project(expected, None))
    with pytest.raises(ValueError, match=r"knows the targets \[2, 5\], not \[0, 9\]"):
        guidance.gradient(x, t, torch.tensor([2, 9, 0]), None, model.diffusion)
