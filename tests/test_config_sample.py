"""``SampleConfig``: the options of ``rgdm sample``, their checks, the sampler they build, and ``sample.json``."""

from __future__ import annotations

import json
from typing import Any

import pytest

import rgdm
from rgdm.algorithms import GradientStep, GreedySelection, SequentialMonteCarlo
from rgdm.cli import main
from rgdm.diffusion import LangevinCorrector, ancestral_transition
from rgdm.engine.config import ConfigError, SampleConfig, validated
from rgdm.engine.generate import make_transition
from rgdm.rewards import BlackBoxReward, RewardCounter, Scorer


def scorer() -> Scorer:
    counter = RewardCounter()
    return Scorer(BlackBoxReward(lambda x: x[:, 0], counter=counter), lambda x, mask: x.numpy(), counter)


def test_defaults_and_the_value_estimate_of_the_guidance_that_takes_one():
    assert SampleConfig() == SampleConfig(n=1000, seed=0, guidance="none", temperature=0.1, candidates=8,
                                          particles=16, eta=1.0, radius=0.5)
    assert SampleConfig().value is None
    for guidance in ("select", "smc"):
        assert SampleConfig(guidance=guidance, reward="r").value == "exact"
    assert SampleConfig(guidance="select", reward="r", value="reuse").value == "reuse"


@pytest.mark.parametrize(("options", "match"), [
    ({"guidance": "gradient", "reward": "r", "guidance_start": 10}, "candidate selection"),
    ({"guidance_start": 10}, "candidate selection"),
    ({"guidance": "gradient", "reward": "r", "value": "reuse"}, "value estimate"),
    ({"guide": "somewhere"}, "a guide steers guidance 'regressor', not 'none'"),
    ({"guidance": "regressor"}, "guidance 'regressor' needs a guide"),
    ({"guidance": "select"}, r"guidance 'select' needs a reward \(--reward"),
    ({"guidance": "smc", "reward": "r", "temperature": 0}, "divides by the temperature"),
    ({"guidance": "select", "reward": "r", "candidates": 3}, "candidates must be even"),
    ({"n": 0}, r"n: Input should be greater than or equal to 1 \(got 0\)"),
    ({"particles": 1, "guidanse": "smc"}, "guidanse: unknown key; did you mean 'guidance'?"),
    ({"corrector_steps": 2}, "corrector steps and start need a corrector signal-to-noise ratio"),
    ({"corrector_start": 500}, "corrector steps and start need a corrector signal-to-noise ratio"),
    ({"corrector_snr": 0.3, "corrector_start": 0}, r"corrector_start: Input should be greater than or equal to 1"),
    ({"guidance": "smc", "reward": "r", "corrector_snr": 0.2}, "a corrector applies to the other samplers"),
    ({"corrector_snr": 0}, r"corrector_snr: Input should be greater than 0"),
])
def test_options_the_guidance_does_not_take_are_clear_errors(options: dict[str, Any], match: str):
    with pytest.raises(ConfigError, match=match) as info:
        validated(SampleConfig, options, "sampling options")
    assert str(info.value).startswith("invalid sampling options:\n  ")


def test_the_config_builds_its_sampler():
    assert make_transition(SampleConfig()) is ancestral_transition
    selection = make_transition(SampleConfig(guidance="select", reward="r", value="reuse", candidates=4), scorer())
    assert isinstance(selection, GreedySelection) and (selection.value, selection.candidates) == ("reuse", 4)
    smc = make_transition(SampleConfig(guidance="smc", reward="r", guidance_start=5, particles=4), scorer())
    assert isinstance(smc, SequentialMonteCarlo) and (smc.particles, smc.start, smc.value) == (4, 5, "exact")
    gradient = make_transition(SampleConfig(guidance="gradient", reward="r", radius=0.2), scorer())
    assert isinstance(gradient, GradientStep) and gradient.radius == 0.2
    corrected = make_transition(SampleConfig(guidance="select", reward="r", corrector_snr=0.3, corrector_steps=2,
                                             corrector_start=500), scorer())
    assert isinstance(corrected, LangevinCorrector)
    assert (corrected.snr, corrected.steps, corrected.start) == (0.3, 2, 500)
    assert isinstance(corrected.inner, GreedySelection), "the corrector follows the guided step"


def test_sample_records_its_config_in_its_meta_and_sample_json(tmp_path):
    samples = rgdm.sample("toy-ring-pretrained", 4, steps=3, guidance="select", reward="region", candidates=2,
                          target="3")
    config = SampleConfig.model_validate({key: samples.meta[key] for key in SampleConfig.model_fields})
    assert config == SampleConfig(n=4, steps=3, guidance="select", reward="region", candidates=2, target=3)
    assert samples.meta["reward_calls"] == 4 * 2 * 2  # the last of the 3 steps is deterministic
    out = tmp_path / "plain"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "3", "--steps", "2", "--seed", "4",
                 "--out", str(out)]) == 0
    written = json.loads((out / "sample.json").read_text())
    assert SampleConfig.model_validate({key: written[key] for key in SampleConfig.model_fields}) == SampleConfig(
        n=3, steps=2, seed=4)
    assert written["checkpoint"] == "toy-ring-pretrained"
    corrected = tmp_path / "corrected"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "3", "--steps", "2",
                 "--corrector-snr", "0.2", "--corrector-steps", "2", "--out", str(corrected)]) == 0
    written = json.loads((corrected / "sample.json").read_text())
    assert (written["corrector_snr"], written["corrector_steps"]) == (0.2, 2)
    assert written["network_evaluations"] == 3 * (2 + 2), "two corrector steps after the first of two steps"
    late = tmp_path / "late"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "3", "--steps", "5",
                 "--corrector-snr", "0.2", "--corrector-start", "500", "--out", str(late)]) == 0
    written = json.loads((late / "sample.json").read_text())
    assert written["corrector_start"] == 500
    assert written["network_evaluations"] == 3 * (5 + 2), "of the steps landing at 800..0, 400 and 200 are corrected"


def test_rgdm_sample_names_an_option_its_guidance_does_not_take(tmp_path, capsys):
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "--guidance-start", "5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "a guidance start applies to greedy candidate selection (select) and smc, not to 'none'" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()
