"""The Python API exported from ``rgdm``: load, finetune, sample, evaluate, and what a run folder accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import rgdm
from rgdm.domains.base import Domain
from rgdm.engine import LoadedModel, load_config
from rgdm.rewards.base import Reward

#: A fine-tune of a few seconds: five steps on 500 scored rows.
QUICK = ["algorithm.scored_size=500"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, LoadedModel]:
    out = tmp_path_factory.mktemp("api") / "run"
    return out, rgdm.finetune("toy-ring-pretrained", reward="region", steps=5, overrides=QUICK, out=out)


@pytest.fixture(scope="module")
def tuned(run) -> LoadedModel:
    return run[1]


def test_import_rgdm_is_light_and_every_public_name_resolves():
    light = subprocess.run([sys.executable, "-c", "import sys, rgdm; assert 'torch' not in sys.modules"],
                           capture_output=True, text=True)
    assert light.returncode == 0, light.stderr
    assert {"load", "finetune", "sample", "evaluate", "Domain", "Reward"} <= set(rgdm.__all__)
    for name in rgdm.__all__:
        assert getattr(rgdm, name) is not None, name
    assert rgdm.Domain is Domain and rgdm.Reward is Reward
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rgdm.nothing  # noqa: B018


def test_finetune_returns_the_trained_model_and_its_counts(tuned):
    training = tuned.meta["training"]
    assert (training["algorithm"], training["reward"], training["steps"]) == ("rgdm-data", "region", 5)
    assert training["reward_calls"] == 500 and tuned.meta["parent"] == "toy-ring-pretrained"


def test_a_rerun_returns_the_same_run_and_other_settings_are_refused(run):
    out, tuned = run
    again = rgdm.finetune("toy-ring-pretrained", reward="region", steps=5, overrides=QUICK, out=out)
    assert again.meta["training"] == tuned.meta["training"]
    with pytest.raises(ValueError, match=r"holds another run, rgdm-data of toy-ring-pretrained for reward "
                                         r"'region' \(train.steps: 5 there, 6 here\); .*--out"):
        rgdm.finetune("toy-ring-pretrained", reward="region", steps=6, overrides=QUICK, out=out)


def test_finetune_takes_a_whole_config_as_it_stands(tmp_path):
    config = load_config(rgdm.api.preset_or_path("finetune-toy"),
                         ["init=toy-ring-pretrained", "reward.name=region", "train.steps=2", *QUICK])
    assert rgdm.finetune(config, out=tmp_path / "run").meta["training"]["steps"] == 2
    with pytest.raises(ValueError, match="as it stands"):
        rgdm.finetune(config, steps=3, out=tmp_path / "other")
    with pytest.raises(ValueError, match="needs a model to start from and a reward"):
        rgdm.finetune("toy-ring-pretrained", out=tmp_path / "no-reward")


def test_finetune_takes_a_loaded_model_and_chains_from_the_one_it_returned(tmp_path):
    base = rgdm.load("toy-ring-pretrained")
    assert base.source == "toy-ring-pretrained"
    first = rgdm.finetune(base, reward="region", steps=2, overrides=QUICK, out=tmp_path / "first")
    assert first.meta["parent"] == "toy-ring-pretrained" and first.source == str(tmp_path / "first")
    second = rgdm.finetune(first, reward="region", steps=2, overrides=QUICK, out=tmp_path / "second")
    assert second.meta["parent"] == str(tmp_path / "first")
    in_memory = LoadedModel(base.domain, base.diffusion, base.net, base.meta)
    with pytest.raises(ValueError, match="built in memory"):
        rgdm.finetune(in_memory, reward="region", out=tmp_path / "third")


def test_sample_draws_decodes_and_counts_each_call_alone():
    model = rgdm.load("toy-ring-pretrained")
    first = rgdm.sample(model, 6, steps=4, seed=1)
    second = rgdm.sample(model, 6, steps=4, seed=1)
    assert len(first) == 6 and first.decode().shape == (6, 2)
    assert (first.batch.x == second.batch.x).all(), "a seed draws the same samples"
    assert first.meta["network_evaluations"] == second.meta["network_evaluations"] > 0
    targeted = rgdm.sample("toy-ring-pretrained", 4, steps=4, target="3")
    assert targeted.batch.cond.tolist() == [3] * 4 and targeted.meta["target"] == 3
    guided = rgdm.sample(model, 4, steps=4, guidance="select", reward="region")
    assert guided.meta["reward_calls"] > 0 and guided.meta["value"] == "exact"
    with pytest.raises(ValueError, match="a guide steers guidance 'regressor'"):
        rgdm.sample(model, 4, guide="somewhere")


def test_evaluate_measures_samples_or_draws_them_with_the_training_reward(tuned):
    metrics = rgdm.evaluate(tuned, n=50, seed=3)
    assert (metrics["n"], metrics["reward"], metrics["temperature"]) == (50, "region", 0.3)
    assert 0 <= metrics["mean_reward"] <= 1 and "energy_distance" in metrics
    plain = rgdm.evaluate(rgdm.sample("toy-ring-pretrained", 20, steps=4))
    assert plain["reward"] is None and "mean_reward" not in plain
    with pytest.raises(ValueError, match="domain or registered reward"):
        rgdm.evaluate(rgdm.sample(tuned, 4, steps=4), reward="my_reward.py:f")
