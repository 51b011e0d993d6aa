"""One typed config per algorithm: the union on ``name`` through the registry, its checks and errors, a plugin's
own config, and a preset's per-algorithm settings (``algorithms:``)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
from typing import Literal

import pytest
from pydantic import Field

from rgdm import registry
from rgdm.algorithms import DDPO, Algorithm, Pretrain
from rgdm.algorithms.config import AlgorithmConfig, config_class
from rgdm.algorithms.ddpo import DDPOConfig
from rgdm.algorithms.rgdm_data import DataPayoffConfig
from rgdm.algorithms.rgdm_stepwise import StepwiseConfig
from rgdm.diffusion import LangevinCorrector, ancestral_transition
from rgdm.domains.toy import ToyDomain
from rgdm.engine.builder import make_algorithm
from rgdm.engine.config import ConfigError, dump_config, load_config, parse_config
from rgdm.registry import register_algorithm

BUILTIN = ["cfg", "ddpo", "pretrain", "rgdm-data", "rgdm-model", "rgdm-stepwise", "rwr"]


class ScaledPretrainConfig(AlgorithmConfig):
    """A plugin's algorithm with a setting of its own."""

    name: Literal["scaled-pretrain"] = "scaled-pretrain"
    scale: float = Field(1.0, gt=0)

    def build(self, total_steps: int, num_targets: int) -> Algorithm:
        return Pretrain()


@pytest.fixture
def fresh(monkeypatch) -> None:
    monkeypatch.setattr(registry, "algorithms", dataclasses.replace(registry.algorithms))


def config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


@pytest.mark.parametrize("name", BUILTIN)
def test_each_algorithm_is_configured_by_its_own_class_which_builds_it(name):
    config = AlgorithmConfig(name=name)
    assert type(config) is config_class(name) is registry.algorithms.get(name)
    assert type(load_config(None, [f"algorithm.name={name}"]).algorithm) is type(config)
    assert make_algorithm(config, 100, ToyDomain()).name == name
    assert type(copy.deepcopy(config)) is type(pickle.loads(pickle.dumps(config))) is type(config)


def test_a_config_dumps_only_its_algorithms_keys_and_reloads_the_same(tmp_path):
    config = load_config(None, ["algorithm.name=rgdm-data", "algorithm.scored_size=500", "algorithm.anchor=0.5"])
    assert isinstance(config.algorithm, DataPayoffConfig)
    assert config.algorithm.model_dump() == {"name": "rgdm-data", "targets": None, "temperature": 0.3,
                                             "anchor": 0.5, "scored_size": 500, "min_timestep": 1,
                                             "input_perturbation": 0.0}
    path = tmp_path / "run.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_an_unknown_key_names_the_algorithm_and_its_keys():
    message = config_error(["algorithm.name=rgdm-data", "algorithm.scored=5"])
    assert ("algorithm.scored: unknown key of algorithm 'rgdm-data'; did you mean 'scored_size'? valid keys: "
            "name, targets, temperature, anchor, scored_size, min_timestep, input_perturbation") in message


def test_a_key_only_other_algorithms_take_is_dropped_with_a_warning_naming_them(caplog):
    with caplog.at_level(logging.WARNING, logger="rgdm.config"):
        config = load_config(None, ["algorithm.name=pretrain", "algorithm.rounds=3", "algorithm.candidates=4"])
    assert config.algorithm == AlgorithmConfig(name="pretrain")
    assert ("algorithm pretrain ignores rounds (a key of rgdm-model, rwr); candidates (a key of rgdm-stepwise)"
            in caplog.text)


def test_checks_live_in_the_config_and_reach_the_algorithm():
    assert DDPOConfig().sample_steps == 20
    algorithm = make_algorithm(DDPOConfig(advantage_clip=2.0, trajectories=4), 10, ToyDomain())
    assert isinstance(algorithm, DDPO) and (algorithm.advantage_clip, algorithm.batch_trajectories) == (2.0, 4)
    with pytest.raises(ValueError, match="candidates must be even"):
        StepwiseConfig(candidates=5)
    assert "algorithm.trajectories:" in config_error(["algorithm.name=ddpo", "algorithm.trajectories=1"])
    assert "algorithm.uncond_prob:" in config_error(["algorithm.name=cfg", "algorithm.uncond_prob=1"])
    perturbed = load_config(None, ["algorithm.name=pretrain", "algorithm.input_perturbation=0.1"]).algorithm
    assert make_algorithm(perturbed, 10, ToyDomain()).input_perturbation == 0.1
    tilted = load_config(None, ["algorithm.name=rgdm-data", "algorithm.input_perturbation=0.1"]).algorithm
    assert make_algorithm(tilted, 10, ToyDomain()).input_perturbation == 0.1
    assert "algorithm.input_perturbation:" in config_error(["algorithm.name=pretrain",
                                                            "algorithm.input_perturbation=-0.1"])
    late = load_config(None, ["algorithm.name=rgdm-data", "algorithm.min_timestep=300"]).algorithm
    assert make_algorithm(late, 10, ToyDomain()).min_timestep == 300
    assert "algorithm.min_timestep:" in config_error(["algorithm.name=rgdm-data", "algorithm.min_timestep=0"])


@pytest.mark.parametrize("name", ["rgdm-model", "rwr"])
def test_own_sample_buffers_take_a_corrector_from_the_config(name):
    plain = load_config(None, [f"algorithm.name={name}"]).algorithm
    assert make_algorithm(plain, 10, ToyDomain()).transition is ancestral_transition
    corrected = load_config(None, [f"algorithm.name={name}", "algorithm.corrector.snr=0.2",
                                   "algorithm.corrector.steps=2", "algorithm.corrector.start=400"]).algorithm
    assert make_algorithm(corrected, 10, ToyDomain()).transition == LangevinCorrector(0.2, 2, start=400)
    assert "algorithm.corrector.snr:" in config_error([f"algorithm.name={name}", "algorithm.corrector.snr=0"])


def test_a_plugin_registers_its_own_config_with_its_keys_defaults_and_checks(fresh):
    register_algorithm("scaled-pretrain", ScaledPretrainConfig)
    config = load_config(None, ["algorithm.name=scaled-pretrain", "algorithm.scale=2"]).algorithm
    assert isinstance(config, ScaledPretrainConfig) and config.scale == 2
    assert AlgorithmConfig(name="scaled-pretrain") == ScaledPretrainConfig()
    assert isinstance(make_algorithm(config, 10, ToyDomain()), Pretrain)
    assert "algorithm.scale:" in config_error(["algorithm.name=scaled-pretrain", "algorithm.scale=0"])
    assert "unknown key of algorithm 'scaled-pretrain'; did you mean 'scale'?" in config_error(
        ["algorithm.name=scaled-pretrain", "algorithm.scal=1"])


def test_a_bare_factory_plugin_is_configured_by_the_shared_keys(fresh):
    register_algorithm("bare", lambda config, total_steps, domain: Pretrain())
    config = load_config(None, ["algorithm.name=bare", "algorithm.targets=[0, 1]"]).algorithm
    assert type(config) is AlgorithmConfig and config.targets == [0, 1]
    assert isinstance(make_algorithm(config, 10, ToyDomain()), Pretrain)


def test_a_presets_algorithm_settings_apply_to_the_chosen_algorithm_only():
    data = {"domain": {"name": "toy"}, "algorithm": {"name": "rgdm-model", "rounds": 2},
            "algorithms": {"rgdm-model": {"rounds": 5, "buffer_size": 64}, "rgdm-data": {"scored_size": 10}}}
    algorithm = parse_config(data).algorithm
    assert (algorithm.rounds, algorithm.buffer_size) == (2, 64), "the algorithm section wins over the defaults"
    assert data["algorithms"]["rgdm-model"] == {"rounds": 5, "buffer_size": 64}, "the caller's data is left alone"
    with pytest.raises(ConfigError, match=r"algorithms\.rgdm-modle: unknown algorithm 'rgdm-modle'"):
        parse_config({**data, "algorithms": {"rgdm-modle": {}}})
    with pytest.raises(ConfigError, match=r"algorithms\.rgdm-data\.round: unknown key of algorithm 'rgdm-data'"):
        parse_config({**data, "algorithms": {"rgdm-data": {"round": 2}}})
    with pytest.raises(ConfigError, match="algorithms: must map algorithm names to their settings"):
        parse_config({**data, "algorithms": ["rgdm-data"]})
