"""Classifier guidance from the command line: train a noise-aware guide, then sample a fixed model with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rgdm.algorithms import classifier_guidance
from rgdm.cli import main
from rgdm.engine import load_trained
from rgdm.engine.guide import load_guide, save_guide, train_guide
from rgdm.io import CheckpointError
from rgdm.rewards import RewardCounter
from rgdm.stopping import TrainingInterrupted


@pytest.fixture(scope="module")
def guide(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("guide") / "region-guide"
    assert main(["-q", "train-guide", "--checkpoint", "toy-ring-pretrained", "--reward", "region", "--rows", "1500",
                 "--steps", "300", "--batch-size", "256", "--out", str(folder)]) == 0
    return folder


def mean_region_reward(folder: Path) -> float:
    report = folder / "metrics.json"
    assert main(["-q", "evaluate", str(folder), "--reward", "region", "--json", str(report)]) == 0
    return json.loads(report.read_text())["mean_reward"]


def test_the_guide_records_its_budget_and_steers_the_fixed_model(guide, tmp_path):
    meta = json.loads((guide / "guide.json").read_text())
    assert meta["reward_calls"] == 1500 and meta["rows"] == 1500 and meta["targets"] is None
    plain, guided = tmp_path / "plain", tmp_path / "guided"
    common = ["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "400", "--steps", "50", "--seed", "3"]
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--guidance", "regressor", "--guide", str(guide), "--temperature", "0.05",
                 "--out", str(guided)]) == 0
    sample_meta = json.loads((guided / "sample.json").read_text())
    assert sample_meta["guide_evaluations"] == 400 * 50 and sample_meta["reward_calls"] == 0
    assert mean_region_reward(guided) > mean_region_reward(plain) + 0.3, "mode 0 holds 1/8 of the mass unguided"


def test_targets_are_scored_one_copy_each(tmp_path):
    folder = tmp_path / "targeted"
    assert main(["-q", "train-guide", "--checkpoint", "toy-ring-pretrained", "--reward", "region", "--targets",
                 "[2,5]", "--rows", "100", "--steps", "2", "--out", str(folder)]) == 0
    meta = json.loads((folder / "guide.json").read_text())
    assert meta["targets"] == [2, 5] and meta["reward_calls"] == 200


def test_guide_mistakes_are_named(guide, tmp_path, capsys):
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "2", "--guidance", "regressor",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--guidance regressor and --guide DIR go together" in capsys.readouterr().err
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "2", "--guidance", "regressor",
                 "--guide", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "holds no guide.json" in capsys.readouterr().err
    with pytest.raises(Exception, match="another domain"):
        load_guide(guide, load_trained("toy-rare-ring-pretrained"))


@pytest.fixture(scope="module")
def classifier_guide(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("guide") / "region-classifier"
    assert main(["-q", "train-guide", "--checkpoint", "toy-ring-pretrained", "--reward", "region", "--targets",
                 "[0,1,2,3,4,5,6,7]", "--objective", "cross-entropy", "--rows", "1000", "--steps", "300",
                 "--batch-size", "256", "--out", str(folder)]) == 0
    return folder


@pytest.mark.parametrize("target", [0, 5])
def test_a_cross_entropy_guide_steers_the_fixed_model_to_each_target(classifier_guide, tmp_path, target):
    meta = json.loads((classifier_guide / "guide.json").read_text())
    assert meta["objective"] == "cross-entropy" and meta["reward_calls"] == 8000 and meta["rows"] == 1000
    assert meta["final_loss"] < 0.8 * math.log(8), "log 8 is a uniform guess; at large t no guess does better"
    guided = tmp_path / "guided"
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "400", "--steps", "50", "--seed", "3",
                 "--target", str(target), "--guidance", "regressor", "--guide", str(classifier_guide),
                 "--temperature", "0.5", "--out", str(guided)]) == 0
    assert mean_region_reward(guided) > 0.7, "each mode holds 1/8 of the mass unguided"


def test_classifier_guide_mistakes_are_named(classifier_guide, tmp_path, capsys):
    assert main(["-q", "train-guide", "--checkpoint", "toy-ring-pretrained", "--reward", "region", "--objective",
                 "cross-entropy", "--rows", "10", "--steps", "1", "--out", str(tmp_path / "g")]) == 2
    assert "two or more" in capsys.readouterr().err
    assert main(["-q", "sample", "--checkpoint", "toy-ring-pretrained", "-n", "2", "--steps", "2", "--guidance",
                 "regressor", "--guide", str(classifier_guide), "--out", str(tmp_path / "x")]) == 2
    assert "sample with --target" in capsys.readouterr().err


def test_a_stopped_guide_fit_continues_bit_for_bit_and_the_kept_guide_drops_its_state(tmp_path, monkeypatch,
                                                                                     signal_at_step):
    model = load_trained("toy-ring-pretrained")
    settings = {"rows": 64, "steps": 6, "batch_size": 16, "lr": 1e-3, "seed": 0, "progress": False}

    def fit(folder: Path | None, **changed):
        return train_guide(model, model.domain.scorer("region", RewardCounter()), None, folder=folder,
                           **(settings | changed))

    straight, straight_meta = fit(None)

    folder = tmp_path / "guide"
    signal_at_step(classifier_guidance, 2)
    with pytest.raises(TrainingInterrupted, match="at step 3; the guide's state is saved in"):
        fit(folder)
    monkeypatch.undo()
    state_path = folder / "training-state.json"
    state = json.loads(state_path.read_text())
    assert state["step"] == 3
    state["extra"]["seconds"] = 1000.0  # as if the first stretch had fitted for 1000 s
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="differs in lr"):
        fit(folder, lr=1e-2)
    resumed, resumed_meta = fit(folder)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert 1000 < resumed_meta.pop("train_s") < 1000 + 60, "the earlier stretch's fit counts, once"
    assert straight_meta.pop("train_s") > 0
    assert resumed_meta == straight_meta, "the same losses, so the same final loss"
    save_guide(folder, resumed, resumed_meta)
    assert not (folder / "training-state.json").exists() and load_guide(folder, model).meta["steps"] == 6
