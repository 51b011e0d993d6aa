"""The toy domain: exact pay-off samples, rewards, metrics and the shipped ring model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rgdm.batch import Batch
from rgdm.domains.toy import ToyDomain, energy_distance
from rgdm.engine import generate, load_trained
from rgdm.engine.builder import seeded_generator


@pytest.fixture(scope="module")
def ring() -> ToyDomain:
    return ToyDomain({"mixture": "ring8"})


def test_exact_payoff_matches_the_closed_form_mode_share(ring):
    reward = ring.rewards()["region"]
    samples = ring.exact_payoff(reward, 0.3, 40_000, seeded_generator(0))
    share = math.exp(1 / 0.3) / (math.exp(1 / 0.3) + 7)
    assert reward.fn(samples.numpy()).mean() == pytest.approx(share, abs=0.01)


def test_exact_payoff_of_a_rare_mode(tmp_path):
    rare = ToyDomain({"mixture": "rare-ring8"})
    reward = rare.rewards()["region"]
    samples = rare.exact_payoff(reward, 0.3, 40_000, seeded_generator(0))
    tilted = 0.01 * math.exp(1 / 0.3)
    assert reward.fn(samples.numpy()).mean() == pytest.approx(tilted / (tilted + 0.99), abs=0.01)


def test_rewards_follow_targets(ring):
    means = ring.mixture.means.numpy()
    region = ring.rewards()["region"].fn
    assert list(region(means)) == [1.0] + [0.0] * 7
    assert list(region(means, [3] * 8)) == [0, 0, 0, 1, 0, 0, 0, 0]
    piecewise = ring.rewards()["piecewise"].fn(means)
    assert np.all(np.diff(piecewise) > 0)
    distance = ring.rewards()["distance"]
    assert distance.fn(means[:1])[0] == pytest.approx(0.0)
    x = torch.tensor([[1.0, 1.0]], requires_grad=True)
    distance.gradient_fn(x, None).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_energy_distance_is_zero_for_identical_sets_and_grows_with_shift():
    x = torch.randn(500, 2, generator=seeded_generator(0))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x + 1.0) > energy_distance(x, x + 0.1) > 0.0


def test_evaluate_reports_a_noise_floor_a_perfect_sampler_meets(ring):
    reward = ring.rewards()["region"]
    generator = seeded_generator(1)
    perfect = Batch(ring.exact_payoff(reward, 0.3, 1000, generator))
    metrics = ring.evaluate(perfect, "region", 0.3, generator)
    assert metrics["energy_distance"] < 3 * metrics["noise_floor"]
    data = ring.evaluate(ring.dataset().select(torch.arange(1000)), "region", 0.3, generator)
    assert data["energy_distance"] > 100 * data["noise_floor"]


def test_evaluate_groups_targets(ring):
    reward = ring.rewards()["region"]
    generator = seeded_generator(2)
    parts = [ring.exact_payoff(reward, 0.3, 300, generator, target) for target in (1, 5)]
    cond = torch.tensor([1] * 300 + [5] * 300)
    metrics = ring.evaluate(Batch(torch.cat(parts), cond=cond), "region", 0.3, generator)
    assert metrics["mean_reward"] == pytest.approx(0.8, abs=0.06)
    assert metrics["energy_distance"] < 3 * metrics["noise_floor"]


def test_shipped_ring_model_covers_every_mode():
    model = load_trained("toy-ring-pretrained")
    samples = generate(model, 2000, seeded_generator(0))
    shares = model.domain.evaluate(samples, None, None, seeded_generator(0))["mode_shares"]
    assert min(shares) > 0.09 and max(shares) < 0.16


def test_plot_writes_a_png(ring, tmp_path):
    path = ring.plot({"data": ring.dataset().select(torch.arange(200))}, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_targets_are_clear_errors(ring):
    with pytest.raises(ValueError, match=r"0\.\.7"):
        ring.parse_target("9")
    with pytest.raises(ValueError, match="mode indices"):
        ring.parse_target("left")
