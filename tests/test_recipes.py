"""Every shipped checkpoint names its recipe, a preset in ``rgdm/configs/`` that rebuilds it
(``rgdm train --config RECIPE``), and the recipe's config is the one its ``model.json`` records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rgdm.cli import main
from rgdm.engine.config import PRESETS, dump_config, load_config
from rgdm.engine.registry import resolve_model, shipped_models
from rgdm.engine.trainer import Trainer
from rgdm.io import read_json

#: Checkpoints exported from a run before its end: their steps are the snapshot's, not the recipe's.
SNAPSHOTS = {"qm9-noh-pretrained"}


@pytest.mark.parametrize("name", shipped_models())
def test_a_shipped_checkpoint_names_a_recipe_whose_config_it_records(name):
    meta = read_json(resolve_model(name) / "model.json")
    recipe = PRESETS / f"{meta.get('recipe')}.yaml"
    assert recipe.is_file(), f"{name}'s model.json names no recipe in rgdm/configs/ (key 'recipe')"
    config = load_config(recipe)
    training = meta["training"]
    assert training["algorithm"] == config.algorithm.name
    assert training["seed"] == config.train.seed
    assert training["reward"] == config.reward.name
    assert meta["targets"] == config.algorithm.targets
    if config.reward.name is not None:
        assert training["temperature"] == config.algorithm.temperature
    if name in SNAPSHOTS:
        assert training["steps"] < config.train.steps
    else:
        assert training["steps"] == config.train.steps
    if config.init in shipped_models() or config.init is None:  # not a stage of a run folder's chain
        assert meta["parent"] == config.init
    if "domain" in config.model_fields_set:  # a fine-tune keeps its parent's domain but for the options it sets
        assert {key: meta["domain"][key] for key in config.domain} == config.domain
    if config.network:  # pre-training: the recipe describes the network; a fine-tune's is its parent's
        assert meta["network"] == config.network
        assert meta["diffusion"] == config.diffusion.model_dump()


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_preset_loads_and_its_algorithm_takes_every_key_it_sets(preset: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="rgdm.config"):
        load_config(preset)
    assert "ignores" not in caplog.text


def test_rgdm_train_runs_a_fine_tuning_recipe_that_extends_a_preset(tmp_path: Path):
    recipe = tmp_path / "ring-upper.yaml"
    recipe.write_text("extends: finetune-toy\ninit: toy-ring-pretrained\nreward: {name: region}\n"
                      "train: {steps: 2, checkpoint_every: 2}\nalgorithms: {rgdm-data: {scored_size: 64}}\n")
    assert main(["-q", "train", "--config", str(recipe), "--out", str(tmp_path / "run")]) == 0
    meta = read_json(tmp_path / "run" / "model.json")
    assert meta["parent"] == "toy-ring-pretrained"
    assert (meta["training"]["algorithm"], meta["training"]["reward_calls"]) == ("rgdm-data", 64)


def test_a_preset_read_unchanged_names_itself_the_recipe_of_the_model_it_trains(tmp_path: Path):
    preset = PRESETS / "toy-ring-pretrain.yaml"
    assert load_config(preset).recipe == "toy-ring-pretrain"
    assert load_config(preset, ["train.steps=2"]).recipe is None  # changed: no longer the recipe
    copy = tmp_path / "toy-ring-pretrain.yaml"
    copy.write_text(preset.read_text())
    assert load_config(copy).recipe is None  # a user's file is not a shipped recipe
    trainer = Trainer(load_config(preset), tmp_path / "run")
    assert trainer.model_meta(reward_calls=0, network_evaluations=0)["recipe"] == "toy-ring-pretrain"
    edited = tmp_path / "edited.yaml"
    edited.write_text(dump_config(load_config(preset)))  # a run's config.yaml, copied to start another run
    assert "recipe: toy-ring-pretrain" in edited.read_text() and load_config(edited).recipe is None
    short = load_config(preset, ["train.steps=2", "train.checkpoint_every=1"]).model_copy(
        update={"recipe": "toy-ring-pretrain"})  # the preset's run, shortened
    Trainer(short, tmp_path / "short").fit(progress=False)
    assert Trainer.resume(tmp_path / "short").config.recipe == "toy-ring-pretrain", "a resumed run keeps its recipe"
