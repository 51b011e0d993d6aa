"""Training-free peers (best-of-N, SVDD) and the wiring of every algorithm and the benchmark."""

from __future__ import annotations

import pytest
import torch

from rgdm import registry
from rgdm.algorithms import Algorithm, best_of_n, svdd
from rgdm.batch import Batch
from rgdm.benchmarks.toy import Budget, ToyTask, markdown_table, run_task
from rgdm.domains.toy import ToyDomain
from rgdm.engine import generate, load_trained
from rgdm.engine.builder import make_algorithm, seeded_generator
from rgdm.engine.config import AlgorithmConfig
from rgdm.rewards import BlackBoxReward, RewardCounter, Scorer


@pytest.fixture(scope="module")
def ring_model():
    return load_trained("toy-ring-pretrained")


def region_scorer(model, counter: RewardCounter) -> Scorer:
    reward = model.domain.rewards()["region"]
    return Scorer(BlackBoxReward(reward.fn, counter=counter), model.domain.decode, counter)


def test_best_of_n_keeps_the_best_of_each_group_and_raises_the_reward(ring_model):
    counter = RewardCounter()
    scorer = region_scorer(ring_model, counter)
    generator = seeded_generator(0)

    def draw(count: int) -> Batch:
        return generate(ring_model, count, generator, steps=50)

    plain = draw(300)
    best = best_of_n(draw, scorer, 300, 8, generator)
    reward = ring_model.domain.rewards()["region"].fn
    assert counter.calls == 300 * 8
    assert reward(best.x.numpy()).mean() > reward(plain.x.numpy()).mean() + 0.4


def test_best_of_n_choice_is_per_output():
    counter = RewardCounter()
    scorer = Scorer(BlackBoxReward(lambda s: list(s[:, 0]), counter=counter), lambda x, m: x.numpy(), counter)
    pool = torch.tensor([[0.0], [5.0], [3.0], [1.0]])  # candidate-major: outputs 0,1 then 0,1 again
    chosen = best_of_n(lambda count: Batch(pool[:count]), scorer, 2, 2, seeded_generator(0))
    assert chosen.x.flatten().tolist() == [3.0, 5.0]


def test_svdd_raises_the_reward_over_plain_sampling(ring_model):
    counter = RewardCounter()
    transition = svdd(region_scorer(ring_model, counter), candidates=8)
    guided = generate(ring_model, 300, seeded_generator(1), steps=50, transition=transition)
    plain = generate(ring_model, 300, seeded_generator(1), steps=50)
    reward = ring_model.domain.rewards()["region"].fn
    assert reward(guided.x.numpy()).mean() > reward(plain.x.numpy()).mean() + 0.5
    assert counter.calls == 300 * 8 * 49


@pytest.mark.parametrize("name", registry.algorithms.names())
def test_every_configured_algorithm_builds(name):
    algorithm = make_algorithm(AlgorithmConfig(name=name), total_steps=100, domain=ToyDomain())
    assert isinstance(algorithm, Algorithm) and algorithm.name == name


def test_the_exploration_start_reaches_the_step_wise_algorithm_and_must_be_a_time():
    algorithm = make_algorithm(AlgorithmConfig(name="rgdm-stepwise", explore_start=20), total_steps=100,
                               domain=ToyDomain())
    assert algorithm.stepwise.start == 20
    with pytest.raises(ValueError, match="explore_start"):
        AlgorithmConfig(name="rgdm-stepwise", explore_start=-1)


def test_cfg_scale_needs_a_guidance_condition(ring_model):
    with pytest.raises(ValueError, match="cfg algorithm"):
        generate(ring_model, 4, seeded_generator(0), cfg_scale=2.0)


def test_target_all_spreads_the_samples_over_every_target(ring_model):
    count = ring_model.domain.num_targets + 3
    batch = generate(ring_model, count, seeded_generator(0), target="all", steps=2, batch_size=4)
    assert batch.cond.tolist() == [i % ring_model.domain.num_targets for i in range(count)]


def test_benchmark_runs_and_reports_the_schema():
    tiny = Budget(finetune_steps=20, eval_every=10, eval_samples=64, curve_steps=10, data_scored=256,
                  model_rounds=2, model_buffer=64, stepwise_batch=8, ddpo_trajectories=8, candidates=2,
                  sampling_steps=10, regressor_steps=10)
    result = run_task(ToyTask("ring", "toy-ring-pretrained"), tiny, [0], progress=False,
                      methods=["pretrained", "rgdm-data", "best-of-n"])
    assert set(result["target"]) == {"mean_reward", "noise_floor"}
    for method in result["methods"].values():
        assert {"mean_reward", "energy_distance", "reward_calls", "calls_to_90pct", "wall_s", "seeds",
                "at_budget", "network_evaluations"} <= set(method)
    assert result["methods"]["rgdm-data"]["reward_calls"] == 256
    assert len(result["methods"]["rgdm-data"]["per_seed"][0]["curve"]) == 2
    assert "| rgdm-data |" in markdown_table(result)
